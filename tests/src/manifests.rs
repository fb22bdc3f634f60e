//! Pods in manifests: the golden files' inputs hold pods and workloads of every kind.

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

/// Every pod or pod template (an object with `metadata` and a `spec` with `containers`) in
/// `value`, at any depth (Lists, workloads, CronJobs' job templates), in document order.
pub fn pods_in(value: &Value) -> Vec<(ObjectMeta, PodSpec)> {
    let mut found = Vec::new();
    collect(value, &mut found);
    found
}

fn collect(value: &Value, found: &mut Vec<(ObjectMeta, PodSpec)>) {
    if let Some(object) = value.as_object() {
        if let (Some(meta), Some(spec)) = (object.get("metadata"), object.get("spec"))
            && spec.get("containers").is_some()
        {
            found.push((
                serde_json::from_value(meta.clone()).expect("pod metadata"),
                serde_json::from_value(spec.clone()).expect("a pod spec"),
            ));
        }
        object.values().for_each(|v| collect(v, found));
    } else if let Some(items) = value.as_array() {
        items.iter().for_each(|v| collect(v, found));
    }
}
