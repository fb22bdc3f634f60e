//! Pod → injected pod: the one pure function shared by the webhook and `aoai-operator inject`.
//!
//! [`inject`] edits a pod's metadata and spec (a Pod, or the template of a workload) in place and
//! says what it did: injected (with warnings), skipped (with a reason), or denied (with a reason
//! and a message). The reasons are constants that label metrics and Events.

use std::collections::BTreeMap;
use std::sync::Arc;

use aoai_proxy_contract::config::{Secret, UserAssignedId};
use aoai_proxy_contract::sidecar_env::{
    Aliased, AppEnv, ClientSecretEnv, CredentialEnv, EgressEnv, EnvValue, FailoverEnv, InboundEnv,
    LimitsEnv, ListenerEnv, LogEnv, ManagedIdentityEnv, SecretValue, SidecarEnv, TracesEnv,
    UpstreamEnv,
};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, PodSpec, SecretKeySelector, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use crate::annotations::{self, Overrides};
use crate::crd::{
    AzureOpenAIProxy, AzureOpenAIProxySpec, CredentialSource, FailoverSpec, LogLevel,
    NativeSidecarMode, TracingSpec, config_hash,
};

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
    /// The AzureOpenAIProxy names no endpoint or no single credential (its schema refuses both).
    pub const INVALID_PROXY: &str = "invalid_proxy";
    /// The AdmissionReview could not be read.
    pub const MALFORMED_REQUEST: &str = "malformed_request";
}

/// The texts of refusals and warnings, written once: the webhook fills them with values, the
/// admission policies (`policy`) with CEL expressions. Arguments named `quoted_*` come quoted.
pub mod text {
    use crate::annotations::{ADMIN_PORT, INJECT, PORT};

    pub const HOST_NETWORK: &str = "aoai-proxy cannot be injected into a hostNetwork pod: its forwarding port would be shared with the whole node";

    pub fn proxy_not_found(quoted_name: &str, quoted_namespace: &str) -> String {
        format!(
            "AzureOpenAIProxy {quoted_name} does not exist in namespace {quoted_namespace} (annotation {INJECT})"
        )
    }

    pub fn same_ports(port: &str) -> String {
        format!(
            "the sidecar's port and admin port are both {port}: set {PORT} or {ADMIN_PORT} to another port"
        )
    }

    pub fn port_conflict(
        quoted_container: &str,
        declared: &str,
        port: &str,
        admin: &str,
    ) -> String {
        format!(
            "container {quoted_container} declares port {declared}, which the aoai-proxy sidecar needs: set annotation {PORT} (forwarding, now {port}) or {ADMIN_PORT} (admin, now {admin}) to a free port"
        )
    }

    pub fn invalid_proxy(quoted_name: &str) -> String {
        format!(
            "AzureOpenAIProxy {quoted_name} names no endpoint or no single credential; see its status"
        )
    }

    pub fn not_ready(quoted_name: &str, reason: &str, message: &str) -> String {
        format!(
            "AzureOpenAIProxy {quoted_name} is not Ready ({reason}: {message}); the sidecar will not become healthy until it is"
        )
    }

    pub fn not_checked(quoted_name: &str) -> String {
        format!("AzureOpenAIProxy {quoted_name} has not been checked by the operator yet")
    }

    /// The prefix of every refusal the webhook and the refusing policy send.
    pub const REFUSAL_PREFIX: &str = "aoai-proxy: ";
}

/// `value` quoted as the texts quote names.
fn quoted(value: &str) -> String {
    format!("{value:?}")
}

/// The sidecar container's name.
pub const CONTAINER_NAME: &str = "aoai-proxy";
/// The name of the sidecar's admin port (health and metrics), which the chart's PodMonitor scrapes.
pub const ADMIN_PORT_NAME: &str = "aoai-admin";
/// Where the sidecar binary lives in the image (the regular sidecar's postStart hook runs it).
pub const BINARY: &str = "/usr/local/bin/aoai-proxy";
/// The mode of the volumes only the sidecar mounts (see where they are built).
const SIDECAR_READABLE: i32 = 0o444;

pub(crate) const CREDENTIAL_VOLUME: &str = "aoai-proxy-credential";
pub(crate) const CREDENTIAL_DIR: &str = "/var/run/secrets/aoai-proxy/credential";
pub(crate) const INBOUND_KEYS_VOLUME: &str = "aoai-proxy-inbound-keys";
pub(crate) const INBOUND_KEYS_DIR: &str = "/var/run/secrets/aoai-proxy/inbound-keys";
pub(crate) const AZURE_TOKEN_VOLUME: &str = "aoai-proxy-azure-token";
pub(crate) const AZURE_TOKEN_DIR: &str = "/var/run/secrets/azure/tokens";
pub(crate) const AZURE_TOKEN_FILE: &str = "azure-identity-token";
pub(crate) const TRUST_VOLUME: &str = "aoai-proxy-trust";
pub(crate) const TRUST_DIR: &str = "/etc/aoai-proxy/trust";
/// The bundle's file in TRUST_DIR, whatever its key in the ConfigMap or Secret.
pub(crate) const TRUST_FILE: &str = "ca.crt";
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

/// The result of [`decide`] and [`inject`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The sidecar is added, as described.
    Injected(Box<Injection>),
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

/// What an injection adds to a pod, decided once: [`Injection::apply`] adds it to typed values
/// (`aoai-operator inject`), [`Injection::patch`] writes it as the webhook's JSON Patch. Nothing
/// already in the pod is replaced or moved, except the one sidecar put first.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    /// Labels and annotations to set.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// For each application container, by its index in the pod as it came: the variables to
    /// append (those it does not set itself).
    pub app_env: Vec<Vec<EnvVar>>,
    /// Volumes to append.
    pub volumes: Vec<Volume>,
    /// The sidecar, first of the init containers (native) or of the containers.
    pub sidecar: Container,
    pub native: bool,
    /// For the user (admission warnings, stderr).
    pub warnings: Vec<String>,
}

impl Injection {
    /// Adds the injection to the pod it was decided for.
    pub fn apply(&self, meta: &mut ObjectMeta, spec: &mut PodSpec) {
        for (map, added) in [
            (&mut meta.labels, &self.labels),
            (&mut meta.annotations, &self.annotations),
        ] {
            map.get_or_insert_with(BTreeMap::new)
                .extend(added.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for (container, vars) in spec.containers.iter_mut().zip(&self.app_env) {
            if !vars.is_empty() {
                container
                    .env
                    .get_or_insert_with(Vec::new)
                    .extend(vars.iter().cloned());
            }
        }
        if !self.volumes.is_empty() {
            spec.volumes
                .get_or_insert_with(Vec::new)
                .extend(self.volumes.iter().cloned());
        }
        if self.native {
            spec.init_containers
                .get_or_insert_with(Vec::new)
                .insert(0, self.sidecar.clone());
        } else {
            spec.containers.insert(0, self.sidecar.clone());
        }
    }

    /// The JSON Patch that makes [`Self::apply`]'s change to the pod it was decided for: only
    /// `add` operations, so that fields of the pod this build of the API types does not know
    /// are kept. The sidecar is inserted last, so that the application containers' indexes
    /// hold until then.
    pub fn patch(&self, meta: &ObjectMeta, spec: &PodSpec) -> json_patch::Patch {
        let mut ops: Vec<serde_json::Value> = Vec::new();
        let mut add = |path: String, value: serde_json::Value| {
            ops.push(json!({"op": "add", "path": path, "value": value}));
        };
        for (field, existing, added) in [
            ("labels", &meta.labels, &self.labels),
            ("annotations", &meta.annotations, &self.annotations),
        ] {
            match existing {
                None if !added.is_empty() => add(format!("/metadata/{field}"), json!(added)),
                None => {}
                Some(_) => {
                    for (key, value) in added {
                        add(
                            format!("/metadata/{field}/{}", pointer_key(key)),
                            json!(value),
                        );
                    }
                }
            }
        }
        for (index, (container, vars)) in spec.containers.iter().zip(&self.app_env).enumerate() {
            match &container.env {
                _ if vars.is_empty() => {}
                None => add(format!("/spec/containers/{index}/env"), json!(vars)),
                Some(_) => {
                    for var in vars {
                        add(format!("/spec/containers/{index}/env/-"), json!(var));
                    }
                }
            }
        }
        match &spec.volumes {
            _ if self.volumes.is_empty() => {}
            None => add("/spec/volumes".into(), json!(self.volumes)),
            Some(_) => {
                for volume in &self.volumes {
                    add("/spec/volumes/-".into(), json!(volume));
                }
            }
        }
        match (self.native, &spec.init_containers) {
            (true, None) => add("/spec/initContainers".into(), json!([self.sidecar])),
            (true, Some(_)) => add("/spec/initContainers/0".into(), json!(self.sidecar)),
            (false, _) => add("/spec/containers/0".into(), json!(self.sidecar)),
        }
        serde_json::from_value(serde_json::Value::Array(ops))
            .expect("add operations form a JSON Patch")
    }
}

/// Injects the sidecar configured by the AzureOpenAIProxy the pod names into `meta` and `spec`:
/// [`decide`], then [`Injection::apply`]. Leaves them untouched unless the outcome is `Injected`.
pub fn inject(
    meta: &mut ObjectMeta,
    spec: &mut PodSpec,
    namespace: &str,
    lookup: impl FnOnce(&str) -> Option<Arc<AzureOpenAIProxy>>,
    options: &InjectOptions,
) -> Outcome {
    let outcome = decide(meta, spec, namespace, lookup, options);
    if let Outcome::Injected(injection) = &outcome {
        injection.apply(meta, spec);
    }
    outcome
}

/// Decides what injecting the sidecar configured by the AzureOpenAIProxy the pod names, found by
/// `lookup` in `namespace`, adds to the pod (`meta`, `spec`); or why it is left alone or refused.
pub fn decide(
    meta: &ObjectMeta,
    spec: &PodSpec,
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
        return denied(deny::HOST_NETWORK, text::HOST_NETWORK);
    }
    let Some(proxy) = lookup(&name) else {
        return denied(
            deny::PROXY_NOT_FOUND,
            text::proxy_not_found(&quoted(&name), &quoted(namespace)),
        );
    };
    let proxy = proxy.as_ref();
    let sidecar = &proxy.spec.sidecar;
    let port = overrides.port.unwrap_or(sidecar.port);
    let admin_port = overrides.admin_port.unwrap_or(sidecar.admin_port);
    if port == admin_port {
        return denied(
            deny::INVALID_ANNOTATION,
            text::same_ports(&port.to_string()),
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
                text::port_conflict(
                    &quoted(container),
                    &declared_port.to_string(),
                    &port.to_string(),
                    &admin_port.to_string(),
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
        Some(c) => warnings.push(text::not_ready(&quoted(&name), &c.reason, &c.message)),
        None => warnings.push(text::not_checked(&quoted(&name))),
    }

    let mode = overrides.native_sidecar.unwrap_or(sidecar.native_sidecar);
    let native = match mode {
        NativeSidecarMode::Always => true,
        NativeSidecarMode::Never => false,
        NativeSidecarMode::Auto => options.native_sidecars_supported,
    };
    let log_level = overrides.log_level.unwrap_or(sidecar.log_level);
    let Some(env) = sidecar_env(&proxy.spec, port, admin_port, log_level) else {
        return denied(deny::INVALID_PROXY, text::invalid_proxy(&quoted(&name)));
    };
    let hash = config_hash(&proxy.spec, &options.default_image);
    let (container, volumes) =
        sidecar_container(proxy, &env, &overrides, admin_port, native, options);
    let mut added = BTreeMap::from([
        (
            annotations::STATUS.to_string(),
            annotations::STATUS_INJECTED.to_string(),
        ),
        (annotations::CONFIG_HASH.to_string(), hash),
    ]);
    let scraped = annotations::PROMETHEUS_ANNOTATIONS
        .iter()
        .any(|a| annotations.contains_key(*a));
    if sidecar.scrape_annotations && !scraped {
        let values = [
            "true".to_string(),
            admin_port.to_string(),
            annotations::METRICS_PATH.into(),
        ];
        added.extend(
            annotations::PROMETHEUS_ANNOTATIONS
                .iter()
                .map(|a| a.to_string())
                .zip(values),
        );
    }

    Outcome::Injected(Box::new(Injection {
        labels: BTreeMap::from([(annotations::PROXY_LABEL.to_string(), name)]),
        annotations: added,
        app_env: spec
            .containers
            .iter()
            .map(|app| app_env(app, proxy, port))
            .collect(),
        volumes,
        sidecar: container,
        native,
        warnings,
    }))
}

/// The sidecar's failover settings from `spec.failover`, as written there (unset: the sidecar's
/// defaults).
pub fn failover_env(failover: Option<&FailoverSpec>) -> FailoverEnv {
    let Some(failover) = failover else {
        return FailoverEnv::default();
    };
    FailoverEnv {
        retry_body_limit: failover.retry_body_limit.clone(),
        eject_after: failover.eject_after.map(|n| n.to_string()),
        eject_for: failover.eject_for.clone(),
        max_throttle_wait: failover.max_throttle_wait.clone(),
    }
}

/// The trace-export variables `spec.tracing` sets (none when unset).
pub fn traces_env(tracing: Option<&TracingSpec>) -> TracesEnv {
    let Some(tracing) = tracing else {
        return TracesEnv::default();
    };
    TracesEnv {
        endpoint: Some(tracing.endpoint.clone()),
        protocol: Some(tracing.protocol.as_str().to_string()),
        headers: tracing
            .headers_from
            .as_ref()
            .map(|from| SecretValue::SecretKey {
                secret: from.secret_name.clone(),
                key: from.key.clone(),
            }),
        sampler: Some(tracing.sampler.as_str().to_string()),
        sampler_arg: tracing.sampler_ratio.clone(),
        resource_attributes: tracing.resource_attributes.clone(),
        traces_endpoint: None,
        timeout: None,
        service_name: None,
        disabled: None,
    }
}

/// Where the sidecar finds a file the kubelet mounts for it.
fn file_in(dir: &str, key: &str) -> String {
    format!("{dir}/{key}")
}

/// Every setting of the sidecar for this AzureOpenAIProxy, as one exhaustive value: a setting
/// the proxy gains is a compile error here until the operator decides it. `None` when the spec
/// names no endpoint or no single credential (the schema refuses both).
pub fn sidecar_env(
    spec: &AzureOpenAIProxySpec,
    port: i32,
    admin_port: i32,
    log_level: LogLevel,
) -> Option<SidecarEnv> {
    let upstream = match (&spec.endpoint, spec.backends_json()) {
        (_, Some(backends)) => UpstreamEnv::Backends(backends),
        (Some(endpoint), None) => UpstreamEnv::Endpoint(Aliased::new(endpoint.clone())),
        (None, None) => return None,
    };
    let app = || AppEnv {
        tenant_id: spec.tenant_id.clone().unwrap_or_default(),
        client_id: spec.client_id.clone().unwrap_or_default(),
    };
    let credential = match spec.credential.source()? {
        CredentialSource::ClientCertificate(c) => CredentialEnv::Certificate {
            app: app(),
            path: Aliased::new(file_in(CREDENTIAL_DIR, &c.certificate_key)),
            key_path: (c.private_key_key != c.certificate_key)
                .then(|| file_in(CREDENTIAL_DIR, &c.private_key_key)),
            password: None,
            send_chain: c.send_certificate_chain.then(|| "true".to_string()),
        },
        // A file, not a variable: a rotated Secret is picked up at the next refresh.
        CredentialSource::ClientSecret(c) => CredentialEnv::Secret {
            app: app(),
            secret: ClientSecretEnv::File(file_in(CREDENTIAL_DIR, &c.key)),
        },
        CredentialSource::WorkloadIdentity(_) => CredentialEnv::WorkloadIdentity {
            app: app(),
            token_file: file_in(AZURE_TOKEN_DIR, AZURE_TOKEN_FILE),
        },
        CredentialSource::ManagedIdentity(m) => CredentialEnv::ManagedIdentity {
            endpoint: ManagedIdentityEnv::Imds { host: None },
            id: match (&m.client_id, &m.object_id, &m.resource_id) {
                (Some(id), _, _) => Some(UserAssignedId::ClientId(id.clone())),
                (None, Some(id), _) => Some(UserAssignedId::ObjectId(id.clone())),
                (None, None, Some(id)) => Some(UserAssignedId::ResourceId(id.clone())),
                (None, None, None) => None,
            },
        },
    };
    let egress = spec.egress_proxy.as_ref();
    Some(SidecarEnv {
        upstream,
        failover: failover_env(spec.failover.as_ref()),
        // Forwarding on loopback only: whoever reaches this port gets Azure-authenticated calls.
        listener: ListenerEnv {
            host: Some("127.0.0.1".into()),
            port: Some(port.to_string()),
        },
        // The admin listener (health, metrics; never forwarded) is reachable for the kubelet.
        admin: ListenerEnv {
            host: Some("0.0.0.0".into()),
            port: Some(admin_port.to_string()),
        },
        credential,
        authority_host: Some(spec.authority_host().to_string()),
        scope: Some(Aliased::new(spec.scope().to_string())),
        trust_bundle: spec.trust.as_ref().map(|_| file_in(TRUST_DIR, TRUST_FILE)),
        egress: EgressEnv {
            https_proxy: egress.and_then(|e| match (&e.https_proxy, &e.https_proxy_from) {
                (Some(url), _) => Some(Aliased::new(SecretValue::Inline(Secret::new(url.clone())))),
                (None, Some(from)) => Some(Aliased::new(SecretValue::SecretKey {
                    secret: from.secret_name.clone(),
                    key: from.key.clone(),
                })),
                (None, None) => None,
            }),
            http_proxy: None,
            no_proxy: egress
                .filter(|e| !e.no_proxy.is_empty())
                .map(|e| Aliased::new(e.no_proxy.join(","))),
        },
        inbound: InboundEnv {
            expected_key: None,
            keys: None,
            keys_file: spec
                .inbound_keys
                .as_ref()
                .map(|keys| file_in(INBOUND_KEYS_DIR, &keys.key)),
            max_failures: None,
            failure_window: None,
            lockout: None,
        },
        limits: LimitsEnv {
            connect_timeout: None,
            identity_timeout: None,
            upstream_timeout: None,
            pool_idle_timeout: None,
            header_read_timeout: None,
            max_request_body: None,
            shutdown_grace: None,
        },
        log: LogEnv {
            level: Some(log_level.as_str().to_string()),
            format: None,
        },
        traces: traces_env(spec.tracing.as_ref()),
    })
}

/// The container variables of `env`.
fn container_env(env: &SidecarEnv) -> Vec<EnvVar> {
    env.to_env()
        .into_iter()
        .map(|(name, value)| match value {
            EnvValue::Text(text) => EnvVar {
                name: name.to_string(),
                value: Some(text),
                value_from: None,
            },
            EnvValue::SecretKey { secret, key } => secret_key_env(name, &secret, &key),
        })
        .collect()
}

fn secret_key_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                optional: None,
            }),
            ..Default::default()
        }),
    }
}

/// The sidecar container and the volumes it mounts.
fn sidecar_container(
    proxy: &AzureOpenAIProxy,
    env: &SidecarEnv,
    overrides: &Overrides,
    admin_port: i32,
    native: bool,
    options: &InjectOptions,
) -> (Container, Vec<Volume>) {
    let spec = &proxy.spec;
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let items = |keys: &[&str]| {
        let mut items: Vec<serde_json::Value> = keys.iter().map(|k| item(json!(k))).collect();
        items.dedup();
        json!(items)
    };
    match spec.credential.source() {
        Some(CredentialSource::ClientCertificate(c)) => {
            volumes.push(secret_volume(
                CREDENTIAL_VOLUME,
                json!(c.secret_name),
                items(&[&c.certificate_key, &c.private_key_key]),
            ));
            mounts.push(mount(CREDENTIAL_VOLUME, CREDENTIAL_DIR));
        }
        Some(CredentialSource::ClientSecret(c)) => {
            volumes.push(secret_volume(
                CREDENTIAL_VOLUME,
                json!(c.secret_name),
                items(&[&c.key]),
            ));
            mounts.push(mount(CREDENTIAL_VOLUME, CREDENTIAL_DIR));
        }
        Some(CredentialSource::WorkloadIdentity(w)) => {
            volumes.push(token_volume(json!(w.audience), json!(w.expiration_seconds)));
            mounts.push(mount(AZURE_TOKEN_VOLUME, AZURE_TOKEN_DIR));
        }
        Some(CredentialSource::ManagedIdentity(_)) | None => {}
    }
    if let Some(keys) = &spec.inbound_keys {
        volumes.push(secret_volume(
            INBOUND_KEYS_VOLUME,
            json!(keys.secret_name),
            items(&[&keys.key]),
        ));
        mounts.push(mount(INBOUND_KEYS_VOLUME, INBOUND_KEYS_DIR));
    }
    if let Some(trust) = &spec.trust {
        match (&trust.config_map, &trust.secret) {
            (Some(map), _) => volumes.push(trust_volume(false, json!(map.name), json!(map.key))),
            (None, Some(secret)) => {
                volumes.push(trust_volume(true, json!(secret.name), json!(secret.key)))
            }
            (None, None) => {}
        }
        mounts.push(mount(TRUST_VOLUME, TRUST_DIR));
    }

    let mut container = container_base(
        json!(
            spec.sidecar
                .image
                .as_deref()
                .unwrap_or(&options.default_image)
        ),
        json!(container_env(env)),
        json!(admin_port),
        resources(spec.sidecar.resources.as_ref(), overrides),
    );
    if !mounts.is_empty() {
        container["volumeMounts"] = json!(mounts);
    }
    let start = if native {
        native_fields(json!(admin_port))
    } else {
        regular_fields()
    };
    for (field, value) in start {
        container[field] = value;
    }
    let container: Container =
        serde_json::from_value(container).expect("the sidecar template is a Container");
    let volumes = volumes
        .into_iter()
        .map(|v| serde_json::from_value(v).expect("the sidecar volumes are Volumes"))
        .collect();
    (container, volumes)
}

// The shapes below are shared by both engines: the webhook fills them with values, the admission
// policy (`policy`) with CEL expressions.

/// The sidecar container but its mounts and start-up fields.
pub(crate) fn container_base(
    image: serde_json::Value,
    env: serde_json::Value,
    admin_port: serde_json::Value,
    resources: serde_json::Value,
) -> serde_json::Value {
    json!({
        "name": CONTAINER_NAME,
        "image": image,
        "env": env,
        "ports": [{"name": ADMIN_PORT_NAME, "containerPort": admin_port, "protocol": "TCP"}],
        "readinessProbe": probe("/health", admin_port.clone(), 5, 2),
        "livenessProbe": probe("/livez", admin_port, 10, 3),
        "resources": resources,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": NONROOT_UID,
            "runAsGroup": NONROOT_UID,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    })
}

fn probe(path: &str, port: serde_json::Value, period: i32, failures: i32) -> serde_json::Value {
    json!({"httpGet": {"path": path, "port": port}, "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 2})
}

/// A native sidecar: the application starts once the proxy holds a token; Jobs complete, since
/// the kubelet stops native sidecars when the main containers end.
pub(crate) fn native_fields(
    admin_port: serde_json::Value,
) -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("restartPolicy", json!("Always")),
        ("startupProbe", probe("/health", admin_port, 1, 300)),
    ]
}

/// A regular sidecar: containers start in order and the kubelet waits for a postStart hook, so
/// the application (after this container) starts once the proxy holds a token.
pub(crate) fn regular_fields() -> Vec<(&'static str, serde_json::Value)> {
    vec![(
        "lifecycle",
        json!({"postStart": {"exec": {"command": [BINARY, "wait-ready", "--timeout", "300s"]}}}),
    )]
}

/// A Secret volume only the sidecar mounts. The kubelet writes Secret and projected files owned
/// by root (or by the pod's fsGroup, which is the application's to choose) with the volume's
/// mode: readable by all is what lets the sidecar, UID 65532, read them whatever the pod's
/// securityContext. Only the sidecar mounts these volumes, so no other container sees them.
pub(crate) fn secret_volume(
    name: &str,
    secret_name: serde_json::Value,
    items: serde_json::Value,
) -> serde_json::Value {
    json!({"name": name, "secret": {"secretName": secret_name, "items": items, "defaultMode": SIDECAR_READABLE}})
}

/// One key of a Secret, as a file of that name.
pub(crate) fn item(key: serde_json::Value) -> serde_json::Value {
    json!({"key": key.clone(), "path": key})
}

/// The projected service-account token for workload identity.
pub(crate) fn token_volume(
    audience: serde_json::Value,
    expiration_seconds: serde_json::Value,
) -> serde_json::Value {
    json!({"name": AZURE_TOKEN_VOLUME, "projected": {"defaultMode": SIDECAR_READABLE, "sources": [
        {"serviceAccountToken": {"audience": audience, "expirationSeconds": expiration_seconds, "path": AZURE_TOKEN_FILE}}
    ]}})
}

/// The trusted CA bundle, from a ConfigMap or a Secret, as the file TRUST_FILE. Mounted as a
/// directory (no subPath), so that the kubelet updates the file in place and the sidecar
/// re-reads it.
pub(crate) fn trust_volume(
    from_secret: bool,
    name: serde_json::Value,
    key: serde_json::Value,
) -> serde_json::Value {
    let items = json!([{"key": key, "path": TRUST_FILE}]);
    if from_secret {
        json!({"name": TRUST_VOLUME, "secret": {"secretName": name, "items": items, "defaultMode": SIDECAR_READABLE}})
    } else {
        json!({"name": TRUST_VOLUME, "configMap": {"name": name, "items": items, "defaultMode": SIDECAR_READABLE}})
    }
}

pub(crate) fn mount(volume: &str, dir: &str) -> serde_json::Value {
    json!({"name": volume, "mountPath": dir, "readOnly": true})
}

/// The sidecar's resources when the AzureOpenAIProxy sets none.
pub(crate) fn default_resources() -> serde_json::Value {
    json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}})
}

/// The CR's resources (or the defaults), with the annotations' overrides on top.
fn resources(
    from_spec: Option<&k8s_openapi::api::core::v1::ResourceRequirements>,
    overrides: &Overrides,
) -> serde_json::Value {
    let mut resources = match from_spec {
        Some(r) => serde_json::to_value(r).unwrap_or_default(),
        None => default_resources(),
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

/// The variables that point an application container at the sidecar: each only where the
/// container does not set it already.
fn app_env(container: &Container, proxy: &AzureOpenAIProxy, port: i32) -> Vec<EnvVar> {
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
            Some(keys) => secret_key_env(
                name,
                &keys.secret_name,
                keys.client_key.as_deref().unwrap_or(&keys.key),
            ),
            None => EnvVar {
                name: name.clone(),
                value: Some(app.api_key_placeholder.clone()),
                value_from: None,
            },
        };
        wanted.push(var);
    }
    let existing = container.env.as_deref().unwrap_or_default();
    let mut added: Vec<EnvVar> = Vec::new();
    for var in wanted {
        if !existing.iter().chain(&added).any(|e| e.name == var.name) {
            added.push(var);
        }
    }
    added
}

/// Escapes a map key for a JSON Pointer (RFC 6901).
pub(crate) fn pointer_key(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}
