//! The contract between what the operator injects and what the proxy reads, checked on real
//! injections: the sidecar's environment, as the kubelet would give it, must read back as exactly
//! the `SidecarEnv` the operator decided (every setting), and the proxy's own `Config` from it
//! must be what the AzureOpenAIProxy asks for. A variable renamed, dropped or mis-mounted on
//! either side fails here.

use aoai_operator::annotations;
use aoai_operator::annotations::Overrides;
use aoai_operator::crd::AzureOpenAIProxy;
use aoai_operator::mutate::{CONTAINER_NAME, sidecar_env};
use aoai_proxy::config::{Config, Secret, Upstream};
use aoai_proxy_contract::sidecar_env::{SecretValue, SidecarEnv};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::ca::{fixture_key_pem, self_signed_client_cert};
use crate::kubelet::{self, Source};

/// What a referenced Secret key holds, plausibly: a certificate and its key for the certificate
/// keys, a value otherwise.
fn content(_: Source, _: &str, key: &str) -> String {
    let pem = || {
        let key_pem = fixture_key_pem("client-a");
        let now = 1_800_000_000;
        self_signed_client_cert(&key_pem, now - 3600, now + 86_400) + &key_pem
    };
    match key {
        k if k.ends_with(".crt") || k.ends_with(".key") || k.ends_with(".pem") => pem(),
        "headers" => "authorization=Bearer%20value-of-headers".to_string(),
        _ => format!("value-of-{key}"),
    }
}

/// Checks the sidecar of the pod (`meta`, `spec`) injected with `proxy`; returns what was checked,
/// for the caller's message.
pub fn assert_sidecar_configures(
    what: &str,
    meta: &ObjectMeta,
    spec: &PodSpec,
    proxy: &AzureOpenAIProxy,
) -> String {
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == CONTAINER_NAME)
        .unwrap_or_else(|| panic!("{what}: no {CONTAINER_NAME} container"));
    let root = tempfile::tempdir().expect("a scratch folder");
    let env = kubelet::environment(
        spec,
        sidecar,
        &content,
        "service-account-token",
        root.path(),
    );
    // The kubelet above wrote the mounted files under `root`: each path must name a file it
    // wrote, and reads back as the path in the container.
    let root_text = root.path().to_string_lossy().to_string();
    let env: std::collections::HashMap<String, String> = env
        .into_iter()
        .map(|(name, value)| match value.strip_prefix(&root_text) {
            Some(in_container) => {
                assert!(
                    std::path::Path::new(&value).is_file(),
                    "{what}: {name}={in_container} names no file the pod mounts"
                );
                (name, in_container.to_string())
            }
            None => (name, value),
        })
        .collect();
    let read = SidecarEnv::from_lookup(|name| env.get(name).cloned()).unwrap_or_else(|e| {
        panic!("{what}: the injected environment does not configure the proxy: {e}")
    });
    let annotations = meta.annotations.clone().unwrap_or_default();
    let overrides = Overrides::parse(&annotations).expect("valid overrides");
    let port = overrides.port.unwrap_or(proxy.spec.sidecar.port);
    let admin_port = overrides
        .admin_port
        .unwrap_or(proxy.spec.sidecar.admin_port);
    let log_level = overrides.log_level.unwrap_or(proxy.spec.sidecar.log_level);
    let decided = sidecar_env(&proxy.spec, port, admin_port, log_level).expect("a valid spec");
    assert_eq!(
        read,
        resolved(decided),
        "{what}: the sidecar reads other settings than the operator decided"
    );
    let config = Config::from_sidecar_env(&read).unwrap_or_else(|e| {
        panic!("{what}: the injected environment does not configure the proxy: {e}")
    });

    let wanted_kind = proxy
        .spec
        .credential
        .kind()
        .expect("a valid spec")
        .proxy_kind();
    assert_eq!(
        config.credential.credential_kind(),
        wanted_kind,
        "{what}: credential"
    );
    let port_override = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::PORT))
        .and_then(|p| p.parse::<u16>().ok());
    let wanted_port = port_override.unwrap_or(proxy.spec.sidecar.port as u16);
    assert_eq!(config.listen.port(), wanted_port, "{what}: port");
    assert!(
        config.listen.ip().is_loopback(),
        "{what}: the forwarding port must be loopback only"
    );
    let got: Vec<BackendView> = config
        .backends
        .iter()
        .map(|b| {
            (
                b.upstream.to_string(),
                b.priority,
                b.weight,
                b.deployments.clone().into_iter().collect(),
            )
        })
        .collect();
    let wanted: Vec<BackendView> = match &proxy.spec.endpoint {
        Some(endpoint) => vec![(upstream(endpoint), 0, 1, Vec::new())],
        None => proxy
            .spec
            .backends
            .iter()
            .map(|b| {
                let mut renames: Vec<(String, String)> = b
                    .deployments
                    .iter()
                    .map(|d| (d.name.clone(), d.backend_name.clone()))
                    .collect();
                renames.sort();
                (upstream(&b.endpoint), b.priority, b.weight, renames)
            })
            .collect(),
    };
    assert_eq!(got, wanted, "{what}: backends");
    if let Some(failover) = &proxy.spec.failover {
        let f = &config.failover;
        if let Some(after) = failover.eject_after {
            assert_eq!(f.eject_after, after, "{what}: failover.ejectAfter");
        }
        if let Some(limit) = &failover.retry_body_limit {
            let wanted = aoai_proxy::units::parse_bytes(limit).expect("a valid limit");
            assert_eq!(
                f.replay_body_limit, wanted,
                "{what}: failover.retryBodyLimit"
            );
        }
        if let Some(duration) = &failover.eject_for {
            let wanted = aoai_proxy::units::parse_duration(duration).expect("a valid duration");
            assert_eq!(f.eject_for, wanted, "{what}: failover.ejectFor");
        }
        if let Some(duration) = &failover.max_throttle_wait {
            let wanted = aoai_proxy::units::parse_duration(duration).expect("a valid duration");
            assert_eq!(
                f.max_throttle_wait, wanted,
                "{what}: failover.maxThrottleWait"
            );
        }
    }
    let spec = &proxy.spec;
    assert_eq!(
        config.admin_listen.port() as i32,
        admin_port,
        "{what}: admin port"
    );
    assert_eq!(
        config.authority_host,
        spec.authority_host(),
        "{what}: authority"
    );
    assert_eq!(config.scope, spec.scope(), "{what}: scope");
    assert_eq!(config.log_level, log_level.as_str(), "{what}: log level");
    assert_eq!(
        config.inbound.keys_file.is_some(),
        spec.inbound_keys.is_some(),
        "{what}: inbound keys"
    );
    assert_eq!(
        config.extra_roots.is_some(),
        spec.trust.is_some(),
        "{what}: trust bundle"
    );
    assert_eq!(
        config.egress.https.is_some(),
        spec.egress_proxy.is_some(),
        "{what}: egress proxy"
    );
    format!(
        "{what}: {} on port {wanted_port} to {}",
        wanted_kind.as_str(),
        proxy.spec.endpoints().join(", ")
    )
}

/// `env` as the sidecar reads it: a value the kubelet takes from a Secret arrives as its text.
fn resolved(mut env: SidecarEnv) -> SidecarEnv {
    for value in env.secret_values_mut() {
        if let SecretValue::SecretKey { secret, key } = value {
            *value = SecretValue::Inline(Secret::new(content(Source::Secret, secret, key)));
        }
    }
    env
}

/// A backend as compared: endpoint, priority, weight, deployment renames (sorted).
type BackendView = (String, u32, u32, Vec<(String, String)>);

/// An endpoint as the proxy displays it once parsed.
fn upstream(endpoint: &str) -> String {
    Upstream::parse(endpoint)
        .expect("a valid endpoint")
        .to_string()
}
