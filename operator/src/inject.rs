//! `aoai-operator inject`: the webhook's mutation applied offline to manifests, like
//! `linkerd inject`. Pure: YAML in, YAML out, with a note per object on what happened.

use std::sync::Arc;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::crd::AzureOpenAIProxy;
use crate::mutate::{InjectOptions, Outcome, inject};

/// The result of injecting a stream of manifests.
#[derive(Debug, Default)]
pub struct Report {
    /// The manifests, injected where asked, as multi-document YAML.
    pub yaml: String,
    /// One line per object that was not injected, or injected with warnings.
    pub notes: Vec<String>,
    /// How many objects were denied (left unchanged).
    pub denied: usize,
}

/// Where a kind keeps its pod template.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// AzureOpenAIProxy objects among `documents` (so one file can carry both).
pub fn proxies_in(documents: &[Value]) -> Vec<AzureOpenAIProxy> {
    let mut found = Vec::new();
    for document in documents {
        if document["kind"] == "List" {
            found.extend(proxies_in(
                document["items"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
            ));
        } else if document["kind"] == "AzureOpenAIProxy"
            && let Ok(proxy) = serde_json::from_value(document.clone())
        {
            found.push(proxy);
        }
    }
    found
}

/// Parses multi-document YAML.
pub fn parse(input: &str) -> Result<Vec<Value>, String> {
    let documents: Vec<Value> = serde_saphyr::from_str_multiple(input)
        .map_err(|e| format!("the input is not YAML: {e}"))?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

/// Injects every pod template that asks for it. `proxies` are looked up by namespace and name;
/// objects without a namespace are in `default_namespace`.
pub fn inject_documents(
    documents: Vec<Value>,
    proxies: &[AzureOpenAIProxy],
    default_namespace: &str,
    options: &InjectOptions,
) -> Report {
    let mut report = Report::default();
    let documents: Vec<Value> = documents
        .into_iter()
        .map(|d| inject_value(d, proxies, default_namespace, options, &mut report))
        .collect();
    report.yaml = serde_saphyr::to_string_multiple(&documents).unwrap_or_default();
    report
}

fn inject_value(
    mut document: Value,
    proxies: &[AzureOpenAIProxy],
    default_namespace: &str,
    options: &InjectOptions,
    report: &mut Report,
) -> Value {
    let kind = document["kind"].as_str().unwrap_or_default().to_string();
    if kind == "List" {
        if let Some(items) = document.get_mut("items").and_then(Value::as_array_mut) {
            let taken = std::mem::take(items);
            *items = taken
                .into_iter()
                .map(|item| inject_value(item, proxies, default_namespace, options, report))
                .collect();
        }
        return document;
    }
    let name = document["metadata"]["name"]
        .as_str()
        .unwrap_or("<unnamed>")
        .to_string();
    let label = format!("{}/{name}", kind.to_lowercase());
    let Some(path) = template_path(&kind) else {
        return document;
    };
    let namespace = document["metadata"]["namespace"]
        .as_str()
        .unwrap_or(default_namespace)
        .to_string();
    let mut template = &mut document;
    for key in path {
        template = &mut template[*key];
    }
    let meta: ObjectMeta = serde_json::from_value(template["metadata"].clone()).unwrap_or_default();
    let spec: Result<PodSpec, _> = serde_json::from_value(template["spec"].clone());
    let Ok(mut spec) = spec else {
        report
            .notes
            .push(format!("{label}: skipped: its pod spec cannot be read"));
        return document;
    };
    let mut meta = meta;
    let lookup = |wanted: &str| {
        proxies
            .iter()
            .find(|p| {
                p.metadata.name.as_deref() == Some(wanted)
                    && p.metadata.namespace.as_deref().unwrap_or(default_namespace) == namespace
            })
            .cloned()
            .map(Arc::new)
    };
    match inject(&mut meta, &mut spec, &namespace, lookup, options) {
        Outcome::Injected(injection) => {
            template["metadata"] = serde_json::to_value(&meta).unwrap_or_default();
            template["spec"] = serde_json::to_value(&spec).unwrap_or_default();
            for warning in injection.warnings {
                report
                    .notes
                    .push(format!("{label}: injected, with a warning: {warning}"));
            }
        }
        Outcome::Skipped(reason) => report.notes.push(format!("{label}: skipped: {reason}")),
        Outcome::Denied { reason, message } => {
            report.denied += 1;
            report
                .notes
                .push(format!("{label}: not injected ({reason}): {message}"));
        }
    }
    document
}
