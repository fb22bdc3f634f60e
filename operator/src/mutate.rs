//! Pod → injected pod: the one pure function shared by the webhook and `aoai-operator inject`.
//!
//! [`inject`] edits a pod's metadata and spec (a Pod, or the template of a workload) in place and
//! says what it did: injected (with warnings), skipped (with a reason), or denied (with a reason
//! and a message). The reasons are constants that label metrics and Events.

use std::collections::BTreeMap;
use std::sync::Arc;

use aoai_proxy::config::names;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use crate::annotations::{self, Overrides};
use crate::crd::{AzureOpenAIProxy, CredentialKind, FailoverSpec, NativeSidecarMode, config_hash};

/// Why a pod was left alone.
pub mod skip {
    /// The pod has no `aoai-proxy.io/inject` annotation.
    pub const NOT_ANNOTATED: &str = "not_annotated";
    /// The pod carries `aoai-proxy.io/status: injected` (reinvocation, or an injected manifest).
    pub const ALREADY_INJECTED: &str = "already_injected";
    /// The webhook was asked about something other than a Pod CREATE.
    pub const NOT_A_POD_CREATE: &str = "not_a_pod_create";
}

/// Why a pod was refused.
pub mod deny {
    /// The named AzureOpenAIProxy does not exist in the pod's namespace.
    pub const PROXY_NOT_FOUND: &str = "proxy_not_found";
    /// An `aoai-proxy.io/` annotation has a bad value.
    pub const INVALID_ANNOTATION: &str = "invalid_annotation";
    /// The sidecar's port is a port an application container declares.
    pub const PORT_CONFLICT: &str = "port_conflict";
    /// `hostNetwork` pods share the node's ports: the forwarding port would be open on the node.
    pub const HOST_NETWORK: &str = "host_network";
    /// The AdmissionReview could not be read.
    pub const MALFORMED_REQUEST: &str = "malformed_request";
}

/// The sidecar container's name.
pub const CONTAINER_NAME: &str = "aoai-proxy";
/// Where the sidecar binary lives in the image (the regular sidecar's postStart hook runs it).
pub const BINARY: &str = "/usr/local/bin/aoai-proxy";
/// The mode of the volumes only the sidecar mounts (see where they are built).
const SIDECAR_READABLE: i32 = 0o444;

const CREDENTIAL_VOLUME: &str = "aoai-proxy-credential";
const CREDENTIAL_DIR: &str = "/var/run/secrets/aoai-proxy/credential";
const INBOUND_KEYS_VOLUME: &str = "aoai-proxy-inbound-keys";
const INBOUND_KEYS_DIR: &str = "/var/run/secrets/aoai-proxy/inbound-keys";
const AZURE_TOKEN_VOLUME: &str = "aoai-proxy-azure-token";
const AZURE_TOKEN_DIR: &str = "/var/run/secrets/azure/tokens";
const AZURE_TOKEN_FILE: &str = "azure-identity-token";
const TRUST_VOLUME: &str = "aoai-proxy-trust";
const TRUST_DIR: &str = "/etc/aoai-proxy/trust";
/// The bundle's file in TRUST_DIR, whatever its key in the ConfigMap or Secret.
const TRUST_FILE: &str = "ca.crt";
/// The UID of the distroless `nonroot` user the image runs as.
const NONROOT_UID: i64 = 65532;

/// What the operator brings to an injection.
#[derive(Clone, Debug)]
pub struct InjectOptions {
    /// Image when the AzureOpenAIProxy names none (also part of the config hash).
    pub default_image: String,
    /// Whether the cluster runs native sidecars (Kubernetes 1.29 and later).
    pub native_sidecars_supported: bool,
}

/// The result of [`inject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added; warnings are for the user (admission warnings, stderr).
    Injected {
        warnings: Vec<String>,
    },
    Skipped(&'static str),
    Denied {
        reason: &'static str,
        message: String,
    },
}

fn denied(reason: &'static str, message: impl Into<String>) -> Outcome {
    Outcome::Denied {
        reason,
        message: message.into(),
    }
}

/// Injects the sidecar configured by the AzureOpenAIProxy the pod names, found by `lookup` in
/// `namespace`, into `meta` and `spec`. Leaves them untouched unless the outcome is `Injected`.
pub fn inject(
    meta: &mut ObjectMeta,
    spec: &mut PodSpec,
    namespace: &str,
    lookup: impl FnOnce(&str) -> Option<Arc<AzureOpenAIProxy>>,
    options: &InjectOptions,
) -> Outcome {
    let annotations = meta.annotations.clone().unwrap_or_default();
    if annotations.get(annotations::STATUS).map(String::as_str)
        == Some(annotations::STATUS_INJECTED)
    {
        return Outcome::Skipped(skip::ALREADY_INJECTED);
    }
    let name = match annotations::requested_proxy(&annotations) {
        None => return Outcome::Skipped(skip::NOT_ANNOTATED),
        Some(Err(e)) => return denied(deny::INVALID_ANNOTATION, e.to_string()),
        Some(Ok(name)) => name.to_string(),
    };
    let overrides = match Overrides::parse(&annotations) {
        Ok(overrides) => overrides,
        Err(e) => return denied(deny::INVALID_ANNOTATION, e.to_string()),
    };
    if spec.host_network == Some(true) {
        return denied(
            deny::HOST_NETWORK,
            "aoai-proxy cannot be injected into a hostNetwork pod: its forwarding port would be shared with the whole node",
        );
    }
    let Some(proxy) = lookup(&name) else {
        return denied(
            deny::PROXY_NOT_FOUND,
            format!(
                "AzureOpenAIProxy {name:?} does not exist in namespace {namespace:?} (annotation {})",
                annotations::INJECT
            ),
        );
    };
    let proxy = proxy.as_ref();
    let sidecar = &proxy.spec.sidecar;
    let port = overrides.port.unwrap_or(sidecar.port);
    let admin_port = overrides.admin_port.unwrap_or(sidecar.admin_port);
    if port == admin_port {
        return denied(
            deny::INVALID_ANNOTATION,
            format!(
                "the sidecar's port and admin port are both {port}: set {} or {} to another port",
                annotations::PORT,
                annotations::ADMIN_PORT
            ),
        );
    }
    let declared = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| {
            c.ports
                .iter()
                .flatten()
                .map(move |p| (c.name.as_str(), p.container_port))
        });
    for (container, declared_port) in declared {
        if declared_port == port || declared_port == admin_port {
            return denied(
                deny::PORT_CONFLICT,
                format!(
                    "container {container:?} declares port {declared_port}, which the aoai-proxy sidecar needs: set annotation {} (forwarding, now {port}) or {} (admin, now {admin_port}) to a free port",
                    annotations::PORT,
                    annotations::ADMIN_PORT
                ),
            );
        }
    }

    let mut warnings = Vec::new();
    let ready = proxy
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => {}
        Some(c) => warnings.push(format!(
            "AzureOpenAIProxy {name:?} is not Ready ({}: {}); the sidecar will not become healthy until it is",
            c.reason, c.message
        )),
        None => warnings.push(format!(
            "AzureOpenAIProxy {name:?} has not been checked by the operator yet"
        )),
    }

    let mode = overrides.native_sidecar.unwrap_or(sidecar.native_sidecar);
    let native = match mode {
        NativeSidecarMode::Always => true,
        NativeSidecarMode::Never => false,
        NativeSidecarMode::Auto => options.native_sidecars_supported,
    };
    let hash = config_hash(&proxy.spec, &options.default_image);
    let (container, volumes) =
        sidecar_container(proxy, &overrides, port, admin_port, native, options);

    for app in &mut spec.containers {
        add_app_env(app, proxy, port);
    }
    spec.volumes.get_or_insert_with(Vec::new).extend(volumes);
    if native {
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, container);
    } else {
        spec.containers.insert(0, container);
    }
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(annotations::PROXY_LABEL.into(), name);
    let written = meta.annotations.get_or_insert_with(BTreeMap::new);
    written.insert(
        annotations::STATUS.into(),
        annotations::STATUS_INJECTED.into(),
    );
    written.insert(annotations::CONFIG_HASH.into(), hash);
    Outcome::Injected { warnings }
}

/// The sidecar variables of `spec.failover`: only the fields set (the sidecar has the defaults).
pub fn failover_env(failover: &FailoverSpec) -> Vec<(&'static str, String)> {
    let mut vars = Vec::new();
    if let Some(limit) = &failover.retry_body_limit {
        vars.push((names::AOAI_PROXY_RETRY_BODY_LIMIT, limit.clone()));
    }
    if let Some(after) = failover.eject_after {
        vars.push((names::AOAI_PROXY_EJECT_AFTER, after.to_string()));
    }
    if let Some(duration) = &failover.eject_for {
        vars.push((names::AOAI_PROXY_EJECT_FOR, duration.clone()));
    }
    if let Some(duration) = &failover.max_throttle_wait {
        vars.push((names::AOAI_PROXY_MAX_THROTTLE_WAIT, duration.clone()));
    }
    vars
}

fn env(name: &str, value: impl Into<String>) -> serde_json::Value {
    json!({"name": name, "value": value.into()})
}

/// The sidecar container and the volumes it mounts.
fn sidecar_container(
    proxy: &AzureOpenAIProxy,
    overrides: &Overrides,
    port: i32,
    admin_port: i32,
    native: bool,
    options: &InjectOptions,
) -> (Container, Vec<Volume>) {
    let spec = &proxy.spec;
    let upstream = match (&spec.endpoint, spec.backends_json()) {
        (_, Some(backends)) => env(names::AOAI_PROXY_BACKENDS, backends),
        (Some(endpoint), None) => env(names::API_BASE_URL, endpoint),
        // Refused by the schema; the sidecar would stop at start naming API_BASE_URL.
        (None, None) => env(names::API_BASE_URL, ""),
    };
    let mut vars = vec![
        upstream,
        // Forwarding on loopback only: whoever reaches this port gets Azure-authenticated calls.
        env(names::HOST, "127.0.0.1"),
        env(names::PORT, port.to_string()),
        // The admin listener (health, metrics; never forwarded) is reachable for the kubelet.
        env(names::AOAI_PROXY_ADMIN_HOST, "0.0.0.0"),
        env(names::AOAI_PROXY_ADMIN_PORT, admin_port.to_string()),
        env(names::AZURE_AUTHORITY_HOST, spec.authority_host()),
        env(names::AZURE_SCOPE, spec.scope()),
        env(
            names::AOAI_PROXY_LOG_LEVEL,
            overrides
                .log_level
                .unwrap_or(spec.sidecar.log_level)
                .as_str(),
        ),
    ];
    if let Some(failover) = &spec.failover {
        vars.extend(
            failover_env(failover)
                .into_iter()
                .map(|(name, value)| env(name, value)),
        );
    }
    let kind = spec.credential.kind();
    if let Some(kind) = kind {
        vars.push(env(
            names::AOAI_PROXY_CREDENTIAL,
            kind.proxy_kind().as_str(),
        ));
    }
    if kind != Some(CredentialKind::ManagedIdentity) {
        for (name, value) in [
            (names::AZURE_TENANT_ID, &spec.tenant_id),
            (names::AZURE_CLIENT_ID, &spec.client_id),
        ] {
            if let Some(value) = value {
                vars.push(env(name, value));
            }
        }
    }
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    // The kubelet writes Secret and projected files owned by root (or by the pod's fsGroup, which
    // is the application's to choose) with the volume's mode: readable by all is what lets the
    // sidecar, UID 65532, read them whatever the pod's securityContext. Only the sidecar mounts
    // these volumes, so no other container of the pod sees them.
    let secret_volume = |name: &str, secret: &str, keys: &[&str]| -> serde_json::Value {
        let mut items: Vec<serde_json::Value> =
            keys.iter().map(|k| json!({"key": k, "path": k})).collect();
        items.dedup();
        json!({"name": name, "secret": {"secretName": secret, "items": items, "defaultMode": SIDECAR_READABLE}})
    };
    let credential = &spec.credential;
    match kind {
        Some(CredentialKind::ClientCertificate) => {
            let c = credential
                .client_certificate
                .as_ref()
                .expect("kind checked");
            volumes.push(secret_volume(
                CREDENTIAL_VOLUME,
                &c.secret_name,
                &[&c.certificate_key, &c.private_key_key],
            ));
            mounts.push(
                json!({"name": CREDENTIAL_VOLUME, "mountPath": CREDENTIAL_DIR, "readOnly": true}),
            );
            vars.push(env(
                names::AZURE_CERTIFICATE_PATH,
                format!("{CREDENTIAL_DIR}/{}", c.certificate_key),
            ));
            if c.private_key_key != c.certificate_key {
                vars.push(env(
                    names::AOAI_PROXY_CERTIFICATE_KEY_PATH,
                    format!("{CREDENTIAL_DIR}/{}", c.private_key_key),
                ));
            }
            if c.send_certificate_chain {
                vars.push(env(names::AZURE_CLIENT_SEND_CERTIFICATE_CHAIN, "true"));
            }
        }
        Some(CredentialKind::ClientSecret) => {
            let c = credential.client_secret.as_ref().expect("kind checked");
            volumes.push(secret_volume(CREDENTIAL_VOLUME, &c.secret_name, &[&c.key]));
            mounts.push(
                json!({"name": CREDENTIAL_VOLUME, "mountPath": CREDENTIAL_DIR, "readOnly": true}),
            );
            // A file, not an env var: a rotated Secret is picked up at the next refresh.
            vars.push(env(
                names::AOAI_PROXY_CLIENT_SECRET_FILE,
                format!("{CREDENTIAL_DIR}/{}", c.key),
            ));
        }
        Some(CredentialKind::WorkloadIdentity) => {
            let w = credential.workload_identity.as_ref().expect("kind checked");
            volumes.push(json!({"name": AZURE_TOKEN_VOLUME, "projected": {"defaultMode": SIDECAR_READABLE, "sources": [
                {"serviceAccountToken": {"audience": w.audience, "expirationSeconds": w.expiration_seconds, "path": AZURE_TOKEN_FILE}}
            ]}}));
            mounts.push(
                json!({"name": AZURE_TOKEN_VOLUME, "mountPath": AZURE_TOKEN_DIR, "readOnly": true}),
            );
            vars.push(env(
                names::AZURE_FEDERATED_TOKEN_FILE,
                format!("{AZURE_TOKEN_DIR}/{AZURE_TOKEN_FILE}"),
            ));
        }
        Some(CredentialKind::ManagedIdentity) => {
            let m = credential.managed_identity.as_ref().expect("kind checked");
            if let Some(id) = &m.client_id {
                vars.push(env(names::AZURE_CLIENT_ID, id));
            }
            if let Some(id) = &m.object_id {
                vars.push(env(names::AOAI_PROXY_MANAGED_IDENTITY_OBJECT_ID, id));
            }
            if let Some(id) = &m.resource_id {
                vars.push(env(names::AOAI_PROXY_MANAGED_IDENTITY_RESOURCE_ID, id));
            }
        }
        None => {}
    }
    if let Some(keys) = &spec.inbound_keys {
        volumes.push(secret_volume(
            INBOUND_KEYS_VOLUME,
            &keys.secret_name,
            &[&keys.key],
        ));
        mounts.push(
            json!({"name": INBOUND_KEYS_VOLUME, "mountPath": INBOUND_KEYS_DIR, "readOnly": true}),
        );
        vars.push(env(
            names::AOAI_PROXY_INBOUND_KEYS_FILE,
            format!("{INBOUND_KEYS_DIR}/{}", keys.key),
        ));
    }

    if let Some(egress) = &spec.egress_proxy {
        match (&egress.https_proxy, &egress.https_proxy_from) {
            (Some(url), _) => vars.push(env(names::HTTPS_PROXY, url)),
            (None, Some(from)) => vars.push(json!({"name": names::HTTPS_PROXY, "valueFrom": {
                "secretKeyRef": {"name": from.secret_name, "key": from.key}}})),
            (None, None) => {}
        }
        if !egress.no_proxy.is_empty() {
            vars.push(env(names::NO_PROXY, egress.no_proxy.join(",")));
        }
    }
    if let Some(trust) = &spec.trust {
        // Mounted as a directory (no subPath), so that the kubelet updates the file in place and
        // the sidecar re-reads it.
        let items = |key: &str| json!([{"key": key, "path": TRUST_FILE}]);
        match (&trust.config_map, &trust.secret) {
            (Some(map), _) => volumes.push(json!({"name": TRUST_VOLUME, "configMap": {
                "name": map.name, "items": items(&map.key), "defaultMode": 0o444}})),
            (None, Some(secret)) => volumes.push(json!({"name": TRUST_VOLUME, "secret": {
                "secretName": secret.name, "items": items(&secret.key), "defaultMode": 0o444}})),
            (None, None) => {}
        }
        mounts.push(json!({"name": TRUST_VOLUME, "mountPath": TRUST_DIR, "readOnly": true}));
        vars.push(env(
            names::SSL_CERT_FILE,
            format!("{TRUST_DIR}/{TRUST_FILE}"),
        ));
    }

    let probe = |path: &str, period: i32, failures: i32| json!({"httpGet": {"path": path, "port": admin_port}, "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 2});
    let mut container = json!({
        "name": CONTAINER_NAME,
        "image": spec.sidecar.image.as_deref().unwrap_or(&options.default_image),
        "env": vars,
        "ports": [{"name": "aoai-admin", "containerPort": admin_port, "protocol": "TCP"}],
        "readinessProbe": probe("/health", 5, 2),
        "livenessProbe": probe("/livez", 10, 3),
        "resources": resources(spec.sidecar.resources.as_ref(), overrides),
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": NONROOT_UID,
            "runAsGroup": NONROOT_UID,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    });
    if !mounts.is_empty() {
        container["volumeMounts"] = json!(mounts);
    }
    if native {
        // The application starts once the proxy holds a token; Jobs complete, since the kubelet
        // stops native sidecars when the main containers end.
        container["restartPolicy"] = json!("Always");
        container["startupProbe"] = probe("/health", 1, 300);
    } else {
        // Containers start in order and the kubelet waits for a postStart hook: the application
        // (after this container) starts once the proxy holds a token.
        container["lifecycle"] = json!({"postStart": {"exec": {"command": [BINARY, "wait-ready", "--timeout", "300s"]}}});
    }
    let container: Container =
        serde_json::from_value(container).expect("the sidecar template is a Container");
    let volumes = volumes
        .into_iter()
        .map(|v| serde_json::from_value(v).expect("the sidecar volumes are Volumes"))
        .collect();
    (container, volumes)
}

/// The CR's resources (or the defaults), with the annotations' overrides on top.
fn resources(
    from_spec: Option<&k8s_openapi::api::core::v1::ResourceRequirements>,
    overrides: &Overrides,
) -> serde_json::Value {
    let mut resources = match from_spec {
        Some(r) => serde_json::to_value(r).unwrap_or_default(),
        None => {
            json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}})
        }
    };
    for (section, key, value) in [
        ("requests", "cpu", &overrides.cpu_request),
        ("limits", "cpu", &overrides.cpu_limit),
        ("requests", "memory", &overrides.memory_request),
        ("limits", "memory", &overrides.memory_limit),
    ] {
        if let Some(value) = value {
            if !resources[section].is_object() {
                resources[section] = json!({});
            }
            resources[section][key] = json!(value);
        }
    }
    resources
}

/// Points an application container at the sidecar: each variable only where the container does
/// not set it already.
fn add_app_env(container: &mut Container, proxy: &AzureOpenAIProxy, port: i32) {
    let app = &proxy.spec.app_env;
    let base = format!("http://127.0.0.1:{port}");
    let mut wanted: Vec<EnvVar> = Vec::new();
    for name in &app.endpoint_variables {
        wanted.push(EnvVar {
            name: name.clone(),
            value: Some(base.clone()),
            value_from: None,
        });
    }
    for name in &app.openai_base_url_variables {
        wanted.push(EnvVar {
            name: name.clone(),
            value: Some(format!("{base}/openai/v1")),
            value_from: None,
        });
    }
    for name in &app.api_key_variables {
        let var = match &proxy.spec.inbound_keys {
            Some(keys) => {
                serde_json::from_value(json!({"name": name, "valueFrom": {"secretKeyRef": {
                    "name": keys.secret_name,
                    "key": keys.client_key.as_deref().unwrap_or(&keys.key),
                }}}))
                .expect("a secretKeyRef EnvVar")
            }
            None => EnvVar {
                name: name.clone(),
                value: Some(app.api_key_placeholder.clone()),
                value_from: None,
            },
        };
        wanted.push(var);
    }
    let env = container.env.get_or_insert_with(Vec::new);
    for var in wanted {
        if !env.iter().any(|e| e.name == var.name) {
            env.push(var);
        }
    }
}

/// Escapes a map key for a JSON Pointer (RFC 6901).
fn pointer_key(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The JSON Patch that turns the pod (`before_*`) into the injected one (`after_*`), written as
/// insertions at known places (never replacements of what the API server sent, which may carry
/// fields this build of the API types does not know).
pub fn pod_patch(
    before_meta: &ObjectMeta,
    before_spec: &PodSpec,
    after_meta: &ObjectMeta,
    after_spec: &PodSpec,
) -> json_patch::Patch {
    let mut ops: Vec<serde_json::Value> = Vec::new();
    let add = |ops: &mut Vec<serde_json::Value>, path: String, value: serde_json::Value| {
        ops.push(json!({"op": "add", "path": path, "value": value}));
    };
    for (field, before, after) in [
        ("labels", &before_meta.labels, &after_meta.labels),
        (
            "annotations",
            &before_meta.annotations,
            &after_meta.annotations,
        ),
    ] {
        let after = after.clone().unwrap_or_default();
        match before {
            None if !after.is_empty() => add(&mut ops, format!("/metadata/{field}"), json!(after)),
            None => {}
            Some(before) => {
                for (key, value) in &after {
                    if before.get(key) != Some(value) {
                        add(
                            &mut ops,
                            format!("/metadata/{field}/{}", pointer_key(key)),
                            json!(value),
                        );
                    }
                }
            }
        }
    }
    // Application containers keep their index until the sidecar is inserted (last).
    let offset = after_spec.containers.len() - before_spec.containers.len();
    for (index, before) in before_spec.containers.iter().enumerate() {
        let after = &after_spec.containers[index + offset];
        let (before_env, after_env) = (
            before.env.as_deref().unwrap_or_default(),
            after.env.as_deref().unwrap_or_default(),
        );
        if before.env.is_none() && !after_env.is_empty() {
            add(
                &mut ops,
                format!("/spec/containers/{index}/env"),
                json!(after_env),
            );
        } else {
            for var in &after_env[before_env.len()..] {
                add(
                    &mut ops,
                    format!("/spec/containers/{index}/env/-"),
                    json!(var),
                );
            }
        }
    }
    let before_volumes = before_spec.volumes.as_deref().unwrap_or_default();
    let after_volumes = after_spec.volumes.as_deref().unwrap_or_default();
    if before_spec.volumes.is_none() && !after_volumes.is_empty() {
        add(&mut ops, "/spec/volumes".into(), json!(after_volumes));
    } else {
        for volume in &after_volumes[before_volumes.len()..] {
            add(&mut ops, "/spec/volumes/-".into(), json!(volume));
        }
    }
    let before_init = before_spec.init_containers.as_deref().unwrap_or_default();
    let after_init = after_spec.init_containers.as_deref().unwrap_or_default();
    if after_init.len() > before_init.len() {
        if before_spec.init_containers.is_none() {
            add(&mut ops, "/spec/initContainers".into(), json!(after_init));
        } else {
            add(
                &mut ops,
                "/spec/initContainers/0".into(),
                json!(after_init[0]),
            );
        }
    }
    if offset == 1 {
        add(
            &mut ops,
            "/spec/containers/0".into(),
            json!(after_spec.containers[0]),
        );
    }
    serde_json::from_value(serde_json::Value::Array(ops)).expect("add operations form a JSON Patch")
}
