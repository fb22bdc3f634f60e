//! The second engine on a real kube-apiserver (skipped unless `KUBEBUILDER_ASSETS` is set), with
//! no operator and no webhook at all: the MutatingAdmissionPolicy alone injects every golden pod
//! exactly as the webhook would (the pod it stores equals the one `inject` decides, created
//! beside it), an AzureOpenAIProxy created a moment before works (no operator has seen it; the
//! pod then carries no config hash), and every pod the webhook would refuse is left alone for the
//! webhook to answer.

use std::time::Duration;

use aoai_e2e::control_plane::{ControlPlane, apply, install_crd};
use aoai_e2e::manifests::pods_in;
use aoai_e2e::wait;
use aoai_operator::annotations::{CONFIG_HASH, STATUS, STATUS_INJECTED};
use aoai_operator::crd::{AzureOpenAIProxy, config_hash};
use aoai_operator::inject::{parse, proxies_in};
use aoai_operator::mutate::{CONTAINER_NAME, InjectOptions, Outcome, decide};
use aoai_operator::policy;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const IMAGE: &str = "aoai-proxy:policy";
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../operator/tests/golden");

/// A stored pod as compared: without what the server generates for each object, and without the
/// service-account token volume (added before either engine runs, so only its place differs).
fn comparable(pod: &Pod) -> Value {
    let mut value = serde_json::to_value(pod).unwrap();
    let meta = value["metadata"].as_object_mut().unwrap();
    for field in [
        "name",
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
        "generation",
    ] {
        meta.remove(field);
    }
    value.as_object_mut().unwrap().remove("status");
    let spec = &mut value["spec"];
    let token = |v: &Value| {
        v["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kube-api-access-"))
    };
    if let Some(volumes) = spec["volumes"].as_array_mut() {
        volumes.retain(|v| !token(v));
    }
    for list in ["containers", "initContainers"] {
        for container in spec[list].as_array_mut().into_iter().flatten() {
            if let Some(mounts) = container["volumeMounts"].as_array_mut() {
                mounts.retain(|m| !token(m));
                if mounts.is_empty() {
                    container.as_object_mut().unwrap().remove("volumeMounts");
                }
            }
        }
    }
    value
}

async fn create_pod(pods: &Api<Pod>, name: &str, meta: &ObjectMeta, spec: &PodSpec) -> Pod {
    let mut meta = meta.clone();
    meta.name = Some(name.into());
    meta.namespace = None;
    let pod = Pod {
        metadata: meta,
        spec: Some(spec.clone()),
        status: None,
    };
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"))
}

fn has_sidecar(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .any(|c| c.name == CONTAINER_NAME)
}

#[tokio::test]
async fn the_admission_policy_alone_injects_as_the_webhook_does() {
    let Some(plane) =
        ControlPlane::start("the_admission_policy_alone_injects_as_the_webhook_does").await
    else {
        return;
    };
    let client = plane.client();
    install_crd(&client).await;
    let policies: Api<MutatingAdmissionPolicy> = Api::all(client.clone());
    apply(&policies, policy::NAME, policy::mutating_policy(IMAGE)).await;
    let bindings: Api<MutatingAdmissionPolicyBinding> = Api::all(client.clone());
    apply(&bindings, policy::NAME, policy::binding()).await;

    let options = InjectOptions {
        default_image: IMAGE.into(),
        native_sidecars_supported: true,
    };
    let mut files: Vec<_> = std::fs::read_dir(GOLDEN)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    files.sort();
    let (mut agreed, mut left_alone) = (Vec::new(), Vec::new());
    for (index, file) in files.iter().enumerate() {
        let case = file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".in.yaml", "");
        let ns = format!("policy-{index}");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        apply(
            &namespaces,
            &ns,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await;
        let documents = parse(&std::fs::read_to_string(file).unwrap()).unwrap();
        let templates: Vec<_> = documents.iter().flat_map(pods_in).collect();
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let mut names: Vec<String> = templates
            .iter()
            .filter_map(|(_, spec)| spec.service_account_name.clone())
            .collect();
        names.push("default".into());
        for name in names {
            apply(
                &accounts,
                &name,
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
            )
            .await;
        }

        // The AzureOpenAIProxies, with the status an operator would write (the config hash of
        // the spec as stored, for its generation); one the schema refuses is left out.
        let proxies: Api<AzureOpenAIProxy> = Api::namespaced(client.clone(), &ns);
        let mut stored = Vec::new();
        for mut proxy in proxies_in(&documents) {
            proxy.metadata.namespace = Some(ns.clone());
            proxy.status = None;
            let Ok(created) = proxies.create(&PostParams::default(), &proxy).await else {
                continue;
            };
            let name = created.metadata.name.clone().unwrap();
            let status = json!({"status": {
                "configHash": config_hash(&created.spec, IMAGE),
                "observedGeneration": created.metadata.generation,
            }});
            let updated = proxies
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .unwrap();
            stored.push(std::sync::Arc::new(updated));
        }

        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        for (number, (meta, spec)) in templates.iter().enumerate() {
            let what = format!("{case} pod {number} ({:?})", meta.name);
            let lookup = |name: &str| {
                stored
                    .iter()
                    .find(|p| p.metadata.name.as_deref() == Some(name))
                    .cloned()
            };
            let outcome = decide(meta, spec, &ns, lookup, &options);
            // The policy takes a moment to be in force: the first pod is tried until it is.
            let by_policy = if agreed.is_empty() && matches!(outcome, Outcome::Injected(_)) {
                wait::until(
                    &format!("{what}: injected by the policy"),
                    Duration::from_secs(30),
                    || {
                        let pods = pods.clone();
                        async move {
                            let pod =
                                create_pod(&pods, &format!("policy-{number}"), meta, spec).await;
                            if has_sidecar(&pod) {
                                Ok(pod)
                            } else {
                                pods.delete(&format!("policy-{number}"), &Default::default())
                                    .await
                                    .unwrap();
                                wait::until("deleted", Duration::from_secs(10), || {
                                    let pods = pods.clone();
                                    async move {
                                        match pods
                                            .get_opt(&format!("policy-{number}"))
                                            .await
                                            .unwrap()
                                        {
                                            None => Ok(()),
                                            Some(_) => Err("still there".to_string()),
                                        }
                                    }
                                })
                                .await;
                                Err("no sidecar yet".to_string())
                            }
                        }
                    },
                )
                .await
            } else {
                create_pod(&pods, &format!("policy-{number}"), meta, spec).await
            };
            match outcome {
                Outcome::Injected(injection) => {
                    let (mut meta, mut spec) = (meta.clone(), spec.clone());
                    injection.apply(&mut meta, &mut spec);
                    let by_webhook =
                        create_pod(&pods, &format!("webhook-{number}"), &meta, &spec).await;
                    assert_eq!(
                        comparable(&by_policy),
                        comparable(&by_webhook),
                        "{what}: the policy's pod differs from the webhook's"
                    );
                    agreed.push(what);
                }
                Outcome::Denied { .. } | Outcome::Skipped(_) => {
                    let before = meta.annotations.clone().unwrap_or_default();
                    let after = by_policy.metadata.annotations.clone().unwrap_or_default();
                    assert_eq!(
                        after.get(STATUS),
                        before.get(STATUS),
                        "{what}: the policy must leave this pod to the webhook"
                    );
                    let containers = |s: &PodSpec| {
                        s.containers.len() + s.init_containers.as_ref().map_or(0, Vec::len)
                    };
                    assert_eq!(
                        containers(by_policy.spec.as_ref().unwrap()),
                        containers(spec),
                        "{what}"
                    );
                    left_alone.push(what);
                }
            }
        }
    }
    assert!(
        agreed.len() >= 7,
        "only {} golden pods compared: {agreed:?}",
        agreed.len()
    );
    assert!(left_alone.len() >= 5, "{left_alone:?}");

    // An AzureOpenAIProxy no operator has seen (no status): its pods are injected at once,
    // without a config hash (the controller rolls them once it catches up).
    let ns = "policy-0";
    let proxies: Api<AzureOpenAIProxy> = Api::namespaced(client.clone(), ns);
    proxies
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
                "metadata": {"name": "brand-new"},
                "spec": {"endpoint": "https://r.openai.azure.com", "credential": {"managedIdentity": {}}},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let meta: ObjectMeta =
        serde_json::from_value(json!({"annotations": {"aoai-proxy.io/inject": "brand-new"}}))
            .unwrap();
    let spec: PodSpec =
        serde_json::from_value(json!({"containers": [{"name": "app", "image": "app:1"}]})).unwrap();
    let pod = create_pod(&pods, "fresh", &meta, &spec).await;
    assert!(
        has_sidecar(&pod),
        "a new AzureOpenAIProxy injects before any operator saw it"
    );
    let annotations = pod.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get(STATUS).map(String::as_str),
        Some(STATUS_INJECTED)
    );
    assert_eq!(annotations.get(CONFIG_HASH), None);
}
