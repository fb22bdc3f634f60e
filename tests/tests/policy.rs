//! The second engine on a real kube-apiserver (skipped unless `KUBEBUILDER_ASSETS` is set), with
//! no operator and no webhook at all: the admission policies alone inject every golden pod
//! exactly as the webhook would (the pod they store equals the one `inject` decides, created
//! beside it, with the same warnings), refuse every pod the webhook refuses with the webhook's
//! message (the golden refusals and a table of bad annotations, ports and orders), refuse a pod
//! they leave to the absent webhook, and an AzureOpenAIProxy created a moment before works (no
//! operator has seen it; the pod then carries no config hash).

use std::sync::Arc;
use std::time::Duration;

use aoai_e2e::control_plane::{Admission, ControlPlane, apply, create_with_warnings, install_crd};
use aoai_e2e::manifests::pods_in;
use aoai_e2e::wait;
use aoai_operator::annotations::{
    ADMIN_PORT, CONFIG_HASH, CPU_LIMIT, CPU_REQUEST, INJECT, LOG_LEVEL, MEMORY_LIMIT,
    MEMORY_REQUEST, NATIVE_SIDECAR, PORT, STATUS, STATUS_INJECTED,
};
use aoai_operator::crd::{AzureOpenAIProxy, config_hash};
use aoai_operator::inject::{parse, proxies_in};
use aoai_operator::mutate::text::REFUSAL_PREFIX;
use aoai_operator::mutate::{CONTAINER_NAME, InjectOptions, Outcome, decide};
use aoai_operator::policy;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{Pod, PodSpec, ServiceAccount};
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
    match admit(pods, name, meta, spec).await {
        Admission::Created(pod, _) => pod,
        Admission::Refused(message) => panic!("create pod {name}: {message}"),
    }
}

/// Creates a pod from `meta` and `spec` named `name`, keeping the warnings.
async fn admit(pods: &Api<Pod>, name: &str, meta: &ObjectMeta, spec: &PodSpec) -> Admission<Pod> {
    let mut meta = meta.clone();
    meta.name = Some(name.into());
    let namespace = meta
        .namespace
        .take()
        .unwrap_or_else(|| pods.namespace().unwrap().to_string());
    let pod = Pod {
        metadata: meta,
        spec: Some(spec.clone()),
        status: None,
    };
    create_with_warnings(&pods.clone().into_client(), &namespace, &pod).await
}

fn has_hash(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CONFIG_HASH))
}

fn has_sidecar(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .any(|c| c.name == CONTAINER_NAME)
}

/// The text of a warning the warning policy sent.
fn policy_warning(warning: &str) -> &str {
    let prefix = format!(
        "Validation failed for ValidatingAdmissionPolicy '{0}' with binding '{0}': ",
        policy::WARNING_NAME
    );
    warning.strip_prefix(&prefix).unwrap_or(warning)
}

/// Installs the three policies and their bindings, and waits until the API server applies them:
/// a probe pod is injected with the warning, another refused.
async fn install_policies(client: &kube::Client) {
    let policies: Api<MutatingAdmissionPolicy> = Api::all(client.clone());
    apply(&policies, policy::NAME, policy::mutating_policy(IMAGE)).await;
    let bindings: Api<MutatingAdmissionPolicyBinding> = Api::all(client.clone());
    apply(&bindings, policy::NAME, policy::binding()).await;
    let validating: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    apply(&validating, policy::REFUSAL_NAME, policy::refusal_policy()).await;
    apply(&validating, policy::WARNING_NAME, policy::warning_policy()).await;
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    apply(&bindings, policy::REFUSAL_NAME, policy::refusal_binding()).await;
    apply(&bindings, policy::WARNING_NAME, policy::warning_binding()).await;

    let ns = "policy-probe";
    namespace(client, ns).await;
    let proxies: Api<AzureOpenAIProxy> = Api::namespaced(client.clone(), ns);
    apply(&proxies, "probe", json!({
        "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
        "metadata": {"name": "probe"},
        "spec": {"endpoint": "https://r.openai.azure.com", "credential": {"managedIdentity": {}}},
    }))
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let spec: PodSpec =
        serde_json::from_value(json!({"containers": [{"name": "app", "image": "app:1"}]})).unwrap();
    let mut attempt = 0;
    wait::until(
        "the admission policies in force",
        Duration::from_secs(30),
        || {
            attempt += 1;
            let (pods, spec) = (pods.clone(), spec.clone());
            async move {
                let asks = |name: &str| -> ObjectMeta {
                    serde_json::from_value(json!({"annotations": {"aoai-proxy.io/inject": name}}))
                        .unwrap()
                };
                let injected =
                    match admit(&pods, &format!("injected-{attempt}"), &asks("probe"), &spec).await
                    {
                        Admission::Created(pod, warnings) => {
                            has_sidecar(&pod) && !warnings.is_empty()
                        }
                        Admission::Refused(_) => false,
                    };
                let refused = matches!(
                    admit(&pods, &format!("refused-{attempt}"), &asks("nope"), &spec).await,
                    Admission::Refused(_)
                );
                if injected && refused {
                    Ok(())
                } else {
                    Err(format!("injected: {injected}, refused: {refused}"))
                }
            }
        },
    )
    .await;
}

async fn namespace(client: &kube::Client, name: &str) {
    aoai_e2e::control_plane::namespace(client, name).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    apply(
        &accounts,
        "default",
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
    )
    .await;
}

/// What became of one pod.
enum Checked {
    Injected,
    Refused,
    LeftAlone,
}

/// Creates the pod `meta`/`spec` through the policies in `pods`' namespace and checks the answer
/// against what the webhook decides with `stored` as the namespace's AzureOpenAIProxies.
async fn check(
    pods: &Api<Pod>,
    number: usize,
    what: &str,
    (meta, spec): (&ObjectMeta, &PodSpec),
    stored: &[Arc<AzureOpenAIProxy>],
) -> Checked {
    let ns = pods.namespace().unwrap().to_string();
    let lookup = |name: &str| {
        stored
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .cloned()
    };
    let outcome = decide(meta, spec, &ns, lookup, &options());
    let admission = admit(pods, &format!("policy-{number}"), meta, spec).await;
    match (outcome, admission) {
        (Outcome::Injected(injection), Admission::Created(mut by_policy, mut warnings)) => {
            let (policy_meta, policy_spec) = (meta, spec);
            let (mut meta, mut spec) = (meta.clone(), spec.clone());
            injection.apply(&mut meta, &mut spec);
            let by_webhook = create_pod(pods, &format!("webhook-{number}"), &meta, &spec).await;
            // The API server reads AzureOpenAIProxies for the policies from its own cache: one
            // whose status was just written can still be seen there without it (no config hash,
            // "not checked yet") for a moment. The next try, as a ReplicaSet's would, sees it.
            let mut attempt = 0;
            while has_hash(&by_webhook) && !has_hash(&by_policy) && attempt < 50 {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let name = format!("policy-{number}-{attempt}");
                match admit(pods, &name, policy_meta, policy_spec).await {
                    Admission::Created(pod, again) => (by_policy, warnings) = (pod, again),
                    Admission::Refused(refusal) => panic!("{what}: refused on a retry: {refusal}"),
                }
            }
            assert_eq!(
                comparable(&by_policy),
                comparable(&by_webhook),
                "{what}: the policy's pod differs from the webhook's"
            );
            let warnings: Vec<&str> = warnings.iter().map(|w| policy_warning(w)).collect();
            assert_eq!(warnings, injection.warnings, "{what}: warnings");
            Checked::Injected
        }
        (Outcome::Denied { message, .. }, Admission::Refused(refusal)) => {
            let expected = format!("{REFUSAL_PREFIX}{message}");
            assert!(
                refusal.ends_with(&format!(": {expected}")),
                "{what}: refused with\n  {refusal}\nwhere the webhook says\n  {expected}"
            );
            Checked::Refused
        }
        (Outcome::Skipped(_), Admission::Created(by_policy, _)) => {
            let before = meta.annotations.clone().unwrap_or_default();
            let after = by_policy.metadata.annotations.clone().unwrap_or_default();
            assert_eq!(
                after, before,
                "{what}: the policy must leave this pod alone"
            );
            let containers =
                |s: &PodSpec| s.containers.len() + s.init_containers.as_ref().map_or(0, Vec::len);
            assert_eq!(
                containers(by_policy.spec.as_ref().unwrap()),
                containers(spec),
                "{what}"
            );
            Checked::LeftAlone
        }
        (outcome, Admission::Created(..)) => {
            panic!("{what}: created, where the webhook decides {outcome:?}")
        }
        (outcome, Admission::Refused(refusal)) => {
            panic!("{what}: refused ({refusal}), where the webhook decides {outcome:?}")
        }
    }
}

fn options() -> InjectOptions {
    InjectOptions {
        default_image: IMAGE.into(),
        native_sidecars_supported: true,
    }
}

#[tokio::test]
async fn the_admission_policies_alone_inject_and_refuse_as_the_webhook_does() {
    let Some(plane) =
        ControlPlane::start("the_admission_policies_alone_inject_and_refuse_as_the_webhook_does")
            .await
    else {
        return;
    };
    let client = plane.client();
    install_crd(&client).await;
    install_policies(&client).await;

    let mut files: Vec<_> = std::fs::read_dir(GOLDEN)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    files.sort();
    let (mut injected, mut refused, mut left_alone) = (Vec::new(), Vec::new(), Vec::new());
    for (index, file) in files.iter().enumerate() {
        let case = file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".in.yaml", "");
        let ns = format!("policy-{index}");
        namespace(&client, &ns).await;
        let documents = parse(&std::fs::read_to_string(file).unwrap()).unwrap();
        let templates: Vec<_> = documents.iter().flat_map(pods_in).collect();
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        for name in templates
            .iter()
            .filter_map(|(_, spec)| spec.service_account_name.clone())
        {
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
            stored.push(Arc::new(operator_status(&proxies, &created, None).await));
        }

        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        for (number, (meta, spec)) in templates.iter().enumerate() {
            let what = format!("{case} pod {number} ({:?})", meta.name);
            match check(&pods, number, &what, (meta, spec), &stored).await {
                Checked::Injected => injected.push(what),
                Checked::Refused => refused.push(what),
                Checked::LeftAlone => left_alone.push(what),
            }
        }
    }
    assert!(
        injected.len() >= 7,
        "only {} golden pods injected: {injected:?}",
        injected.len()
    );
    assert!(refused.len() >= 5, "{refused:?}");
    assert!(left_alone.len() >= 2, "{left_alone:?}");

    the_webhooks_refusals_word_for_word(&client).await;
    an_azure_openai_proxy_no_operator_saw_injects(&client).await;
}

/// Writes the status an operator would: the config hash of the spec as stored for its
/// generation, and a Ready condition when given (`(status, reason, message)`).
async fn operator_status(
    proxies: &Api<AzureOpenAIProxy>,
    created: &AzureOpenAIProxy,
    ready: Option<(&str, &str, &str)>,
) -> AzureOpenAIProxy {
    let mut status = json!({
        "configHash": config_hash(&created.spec, IMAGE),
        "observedGeneration": created.metadata.generation,
    });
    if let Some((ready, reason, message)) = ready {
        status["conditions"] = json!([{
            "type": "Ready", "status": ready, "reason": reason, "message": message,
            "lastTransitionTime": "2026-12-06T00:00:00Z",
        }]);
    }
    proxies
        .patch_status(
            created.metadata.name.as_deref().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .unwrap()
}

/// Every refusal of the webhook's, by the policies, word for word: bad annotations of each
/// format (the first by name when several are bad, a quote in a value), the port checks against
/// the AzureOpenAIProxy's ports, hostNetwork after the annotations, a missing AzureOpenAIProxy;
/// a not-Ready one warns; values the webhook accepts are injected. A pod the policy leaves to
/// the webhook is refused, since no webhook answers.
async fn the_webhooks_refusals_word_for_word(client: &kube::Client) {
    let ns = "policy-refusals";
    namespace(client, ns).await;
    let proxies: Api<AzureOpenAIProxy> = Api::namespaced(client.clone(), ns);
    let mut stored = Vec::new();
    for (name, ready) in [
        ("openai", ("True", "Ready", "ready")),
        ("scraped", ("True", "Ready", "ready")),
        (
            "not-ready",
            (
                "False",
                "CredentialInvalid",
                "Secret \"mi\" has no key \"id\"",
            ),
        ),
    ] {
        let created = apply(&proxies, name, json!({
            "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
            "metadata": {"name": name},
            "spec": {"endpoint": "https://r.openai.azure.com", "credential": {"managedIdentity": {}}},
        }))
        .await;
        stored.push(Arc::new(
            operator_status(&proxies, &created, Some(ready)).await,
        ));
    }
    let app = json!({"name": "app", "image": "app:1"});
    let cases = [
        (
            "bad name",
            json!({INJECT: "Open_AI"}),
            json!({"containers": [app]}),
        ),
        (
            "port below 1024",
            json!({INJECT: "openai", PORT: "80"}),
            json!({"containers": [app]}),
        ),
        (
            "port with a sign",
            json!({INJECT: "openai", PORT: "+15090"}),
            json!({"containers": [app]}),
        ),
        (
            "port too big",
            json!({INJECT: "openai", ADMIN_PORT: "99999"}),
            json!({"containers": [app]}),
        ),
        (
            "port with leading zeros",
            json!({INJECT: "openai", PORT: "0015090"}),
            json!({"containers": [app]}),
        ),
        (
            "cpu in bytes",
            json!({INJECT: "openai", CPU_REQUEST: "50Mi"}),
            json!({"containers": [app]}),
        ),
        (
            "two dots",
            json!({INJECT: "openai", MEMORY_LIMIT: "1.2.3Gi"}),
            json!({"containers": [app]}),
        ),
        (
            "fraction",
            json!({INJECT: "openai", CPU_LIMIT: "0.5", MEMORY_REQUEST: "64.5Mi"}),
            json!({"containers": [app]}),
        ),
        (
            "upper case level",
            json!({INJECT: "openai", LOG_LEVEL: "INFO"}),
            json!({"containers": [app]}),
        ),
        (
            "quote in a value",
            json!({INJECT: "openai", LOG_LEVEL: "de\"bug"}),
            json!({"containers": [app]}),
        ),
        (
            "lower case mode",
            json!({INJECT: "openai", NATIVE_SIDECAR: "always"}),
            json!({"containers": [app]}),
        ),
        (
            "typo",
            json!({INJECT: "openai", "aoai-proxy.io/prot": "9000"}),
            json!({"containers": [app]}),
        ),
        (
            "first bad by name",
            json!({INJECT: "openai", PORT: "80", CPU_LIMIT: "x"}),
            json!({"containers": [app]}),
        ),
        (
            "annotations before hostNetwork",
            json!({INJECT: "openai", PORT: "80"}),
            json!({"hostNetwork": true, "containers": [app]}),
        ),
        (
            "hostNetwork",
            json!({INJECT: "openai"}),
            json!({"hostNetwork": true, "containers": [app]}),
        ),
        (
            "missing",
            json!({INJECT: "nope"}),
            json!({"containers": [app]}),
        ),
        (
            "missing before ports",
            json!({INJECT: "nope", PORT: "15081"}),
            json!({"containers": [app]}),
        ),
        (
            "same ports",
            json!({INJECT: "openai", PORT: "15081"}),
            json!({"containers": [app]}),
        ),
        (
            "admin port taken by an init container",
            json!({INJECT: "openai"}),
            json!({
                "initContainers": [{"name": "setup", "image": "s:1", "ports": [{"containerPort": 15081}]}],
                "containers": [app],
            }),
        ),
        (
            "second container's second port",
            json!({INJECT: "openai", PORT: "16000"}),
            json!({
                "containers": [app, {"name": "web", "image": "w:1", "ports": [{"containerPort": 8080}, {"containerPort": 16000}]}],
            }),
        ),
        (
            "not Ready",
            json!({INJECT: "not-ready"}),
            json!({"containers": [app]}),
        ),
        (
            "someone else's annotation",
            json!({INJECT: "openai", "example.com/x": "y"}),
            json!({"containers": [app]}),
        ),
        (
            "scrape annotations",
            json!({INJECT: "scraped", ADMIN_PORT: "16001"}),
            json!({"containers": [app]}),
        ),
        (
            "the app's own scrape annotation",
            json!({INJECT: "scraped", "prometheus.io/port": "8080"}),
            json!({"containers": [app]}),
        ),
    ];
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (mut injected, mut refused) = (0, 0);
    for (number, (what, annotations, spec)) in cases.into_iter().enumerate() {
        let meta: ObjectMeta = serde_json::from_value(json!({"annotations": annotations})).unwrap();
        let spec: PodSpec = serde_json::from_value(spec).unwrap();
        match check(&pods, number, what, (&meta, &spec), &stored).await {
            Checked::Injected => injected += 1,
            Checked::Refused => refused += 1,
            Checked::LeftAlone => panic!("{what}: left alone"),
        }
    }
    assert_eq!((injected, refused), (6, 18));

    // More containers than the policy writes out: the webhook would inject it; without one, the
    // refusing policy says so.
    let containers: Vec<_> = (0..11)
        .map(|i| json!({"name": format!("c{i}"), "image": "app:1"}))
        .collect();
    let meta: ObjectMeta =
        serde_json::from_value(json!({"annotations": {INJECT: "openai"}})).unwrap();
    let spec: PodSpec = serde_json::from_value(json!({"containers": containers})).unwrap();
    match admit(&pods, "eleven", &meta, &spec).await {
        Admission::Refused(message) => assert!(
            message.ends_with(&format!(
                ": {REFUSAL_PREFIX}the admission policy leaves this pod to the operator's webhook (the pod has more than 10 containers), which did not answer: start the operator, or change the pod"
            )),
            "{message}"
        ),
        Admission::Created(..) => panic!("a pod left to an absent webhook was created"),
    }
}

/// An AzureOpenAIProxy no operator has seen (no status): its pods are injected at once, without
/// a config hash (the controller rolls them once it catches up).
async fn an_azure_openai_proxy_no_operator_saw_injects(client: &kube::Client) {
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
        serde_json::from_value(json!({"annotations": {INJECT: "brand-new"}})).unwrap();
    let spec: PodSpec =
        serde_json::from_value(json!({"containers": [{"name": "app", "image": "app:1"}]})).unwrap();
    // The API server reads params from its own cache: for a moment after the AzureOpenAIProxy is
    // created, the policies do not see it yet and refuse its pods as naming none (as the webhook
    // does before its informer catches up). A retry, as a ReplicaSet's, gets the sidecar.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let pod = loop {
        match admit(&pods, "fresh", &meta, &spec).await {
            Admission::Created(pod, _) => break pod,
            Admission::Refused(message)
                if message.contains("does not exist") && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Admission::Refused(message) => panic!("create pod fresh: {message}"),
        }
    };
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
