//! The webhook's JSON Patch and `aoai-operator inject` come from one decision: applying the patch
//! to a pod gives exactly the pod `inject` writes, for every golden case and for generated pods
//! (labels, annotations, env lists, volumes and init containers absent, empty or present; keys
//! that need escaping; native and regular sidecars; port overrides; variables the app already
//! sets). And a pod injected once is left alone the second time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use aoai_operator::crd::AzureOpenAIProxy;
use aoai_operator::inject::{parse, proxies_in};
use aoai_operator::mutate::{InjectOptions, Outcome, decide, skip};
use k8s_openapi::api::core::v1::{Container, ContainerPort, EnvVar, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

fn options() -> InjectOptions {
    InjectOptions {
        default_image: "ghcr.io/aoai-proxy/aoai-proxy:patch".into(),
        native_sidecars_supported: true,
    }
}

/// Checks the property on one pod; returns whether it was injected.
fn check(what: &str, meta: &ObjectMeta, spec: &PodSpec, proxy: &Arc<AzureOpenAIProxy>) -> bool {
    let lookup = |_: &str| Some(proxy.clone());
    let injection = match decide(meta, spec, "default", lookup, &options()) {
        Outcome::Injected(injection) => injection,
        _ => return false,
    };
    let (mut meta_after, mut spec_after) = (meta.clone(), spec.clone());
    injection.apply(&mut meta_after, &mut spec_after);

    let mut patched = json!({"metadata": meta, "spec": spec});
    json_patch::patch(&mut patched, &injection.patch(meta, spec))
        .unwrap_or_else(|e| panic!("{what}: the patch does not apply: {e}"));
    let applied = json!({"metadata": meta_after, "spec": spec_after});
    assert_eq!(
        patched, applied,
        "{what}: the patched pod differs from the injected one"
    );

    let again = decide(&meta_after, &spec_after, "default", lookup, &options());
    assert_eq!(
        again,
        Outcome::Skipped(skip::ALREADY_INJECTED),
        "{what}: a second injection"
    );
    true
}

/// A golden pod: where it comes from, the pod, the AzureOpenAIProxy it names.
type Case = (String, ObjectMeta, PodSpec, Arc<AzureOpenAIProxy>);

/// The golden inputs' pods, each with the AzureOpenAIProxy it names; and every AzureOpenAIProxy.
fn golden() -> (Vec<Case>, Vec<Arc<AzureOpenAIProxy>>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases = Vec::new();
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".in.yaml") {
            continue;
        }
        let documents = parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let proxies: Vec<Arc<AzureOpenAIProxy>> =
            proxies_in(&documents).into_iter().map(Arc::new).collect();
        for (meta, spec) in documents.iter().flat_map(aoai_e2e::manifests::pods_in) {
            let named = meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(aoai_operator::annotations::INJECT));
            if let Some(proxy) = proxies.iter().find(|p| p.metadata.name.as_ref() == named) {
                let what = format!("{} {:?}", path.display(), meta.name);
                cases.push((what, meta, spec, proxy.clone()));
            }
        }
        all.extend(proxies);
    }
    (cases, all)
}

#[test]
fn the_patch_gives_the_injected_pod_for_every_golden_case() {
    let (cases, _) = golden();
    let injected = cases
        .iter()
        .filter(|(what, meta, spec, proxy)| check(what, meta, spec, proxy))
        .count();
    assert!(injected >= 7, "only {injected} golden pods were injected");
}

/// A pod drawn from `rng`, annotated for injection.
fn generated(rng: &mut fastrand::Rng) -> (ObjectMeta, PodSpec) {
    let mut pick = |n: usize| rng.usize(..n);
    let mut annotations = BTreeMap::from([(
        aoai_operator::annotations::INJECT.to_string(),
        "any".to_string(),
    )]);
    match pick(4) {
        0 => {
            annotations.insert("team.example/owner~id".into(), "a/b".into());
        }
        1 => {
            annotations.insert(
                aoai_operator::annotations::NATIVE_SIDECAR.into(),
                ["always", "never", "auto"][pick(3)].into(),
            );
        }
        2 => {
            annotations.insert(aoai_operator::annotations::PORT.into(), "18080".into());
            annotations.insert(
                aoai_operator::annotations::ADMIN_PORT.into(),
                "18081".into(),
            );
        }
        _ => {}
    }
    let labels = match pick(4) {
        0 => None,
        1 => Some(BTreeMap::new()),
        2 => Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
        _ => Some(BTreeMap::from([(
            aoai_operator::annotations::PROXY_LABEL.to_string(),
            "stale".to_string(),
        )])),
    };
    let var = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    };
    let containers = (0..1 + pick(3))
        .map(|i| Container {
            name: format!("app-{i}"),
            image: Some("app:1".into()),
            env: match pick(4) {
                0 => None,
                1 => Some(Vec::new()),
                2 => Some(vec![var("OPENAI_API_KEY", "mine"), var("MODE", "x")]),
                _ => Some(vec![var("AZURE_OPENAI_ENDPOINT", "http://elsewhere")]),
            },
            ports: (pick(2) == 0).then(|| {
                vec![ContainerPort {
                    container_port: 3000 + i as i32,
                    ..Default::default()
                }]
            }),
            ..Default::default()
        })
        .collect();
    let init_containers = match pick(3) {
        0 => None,
        1 => Some(Vec::new()),
        _ => Some(vec![Container {
            name: "migrate".into(),
            image: Some("migrate:1".into()),
            ..Default::default()
        }]),
    };
    let volumes = match pick(3) {
        0 => None,
        1 => Some(Vec::new()),
        _ => Some(vec![Volume {
            name: "data".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        }]),
    };
    (
        ObjectMeta {
            name: Some("generated".into()),
            labels,
            annotations: Some(annotations),
            ..Default::default()
        },
        PodSpec {
            containers,
            init_containers,
            volumes,
            ..Default::default()
        },
    )
}

#[test]
fn the_patch_gives_the_injected_pod_for_generated_pods() {
    let (_, proxies) = golden();
    assert!(proxies.len() >= 6);
    let mut injected = 0;
    for seed in 0..2000 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (meta, spec) = generated(&mut rng);
        let proxy = &proxies[rng.usize(..proxies.len())];
        if check(&format!("seed {seed}"), &meta, &spec, proxy) {
            injected += 1;
        }
    }
    // The rest are refused (a port clash, the golden AzureOpenAIProxy without a credential).
    assert!(
        injected > 1000,
        "only {injected} generated pods were injected"
    );
}
