//! Every variable the sidecar reads, as one typed value: [`SidecarEnv`].
//!
//! Reading the environment takes two steps. [`SidecarEnv::from_lookup`] finds what is set (an
//! empty value counts as unset, since templated manifests often render `value: ""`; an alias and
//! its name must agree; the credential is chosen and has the variables it requires). Then
//! `Config::from_sidecar_env` checks each value. The operator builds a `SidecarEnv` as one
//! exhaustive value and writes it with [`SidecarEnv::to_env`]; reading that back gives the same
//! value (the round-trip tests), so what the operator means is what the sidecar reads.
//!
//! Values stay as the text they are written with: the operator copies them from the
//! AzureOpenAIProxy unchanged, as an admission policy copying the same fields does, so both write
//! the same pod.

use std::fmt;

use crate::config::{ConfigError, Secret, UserAssignedId, error, names};

/// Every variable the sidecar reads. Unset (`None`) means the default in `ENV_VARS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarEnv {
    pub upstream: UpstreamEnv,
    pub failover: FailoverEnv,
    /// `HOST`, `PORT`: the forwarding listener.
    pub listener: ListenerEnv,
    /// `AOAI_PROXY_ADMIN_HOST`, `AOAI_PROXY_ADMIN_PORT`.
    pub admin: ListenerEnv,
    pub credential: CredentialEnv,
    /// `AZURE_AUTHORITY_HOST`.
    pub authority_host: Option<String>,
    /// `AZURE_SCOPE` (alias `AZURE_OPENAI_SCOPE`).
    pub scope: Option<Aliased<String>>,
    /// `SSL_CERT_FILE`: a PEM bundle trusted beside the system roots.
    pub trust_bundle: Option<String>,
    pub egress: EgressEnv,
    pub inbound: InboundEnv,
    pub limits: LimitsEnv,
    pub log: LogEnv,
    pub traces: TracesEnv,
}

/// Where requests go: one endpoint, or several backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamEnv {
    /// `API_BASE_URL` (alias `TARGET_URL`).
    Endpoint(Aliased<String>),
    /// `AOAI_PROXY_BACKENDS`: a JSON list of `BackendEntry`.
    Backends(String),
}

/// A value whose variable has an alias (an older sidecar's name): which of the two carried it,
/// so that a message names the variable the user wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aliased<T> {
    pub value: T,
    pub by_alias: bool,
}

impl<T> Aliased<T> {
    /// The value under the variable's own name (what the operator writes).
    pub fn new(value: T) -> Self {
        Self {
            value,
            by_alias: false,
        }
    }

    /// The variable that carries it: `name`, or `alias` when read from it.
    pub fn variable(&self, name: &'static str, alias: &'static str) -> &'static str {
        if self.by_alias { alias } else { name }
    }
}

/// How requests fail over between backends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailoverEnv {
    /// `AOAI_PROXY_RETRY_BODY_LIMIT`.
    pub retry_body_limit: Option<String>,
    /// `AOAI_PROXY_EJECT_AFTER`.
    pub eject_after: Option<String>,
    /// `AOAI_PROXY_EJECT_FOR`.
    pub eject_for: Option<String>,
    /// `AOAI_PROXY_MAX_THROTTLE_WAIT`.
    pub max_throttle_wait: Option<String>,
}

/// A listener's address and port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerEnv {
    pub host: Option<String>,
    pub port: Option<String>,
}

/// The Entra ID application the certificate, secret and workload-identity credentials sign in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppEnv {
    /// `AZURE_TENANT_ID`.
    pub tenant_id: String,
    /// `AZURE_CLIENT_ID`.
    pub client_id: String,
}

/// The credential, each kind with the variables it reads. `AOAI_PROXY_CREDENTIAL` names the kind
/// when written; when it is unset the kind is inferred from the variables present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialEnv {
    Certificate {
        app: AppEnv,
        /// `AZURE_CERTIFICATE_PATH` (alias `AZURE_CLIENT_CERTIFICATE_PATH`).
        path: Aliased<String>,
        /// `AOAI_PROXY_CERTIFICATE_KEY_PATH`.
        key_path: Option<String>,
        /// `AZURE_CLIENT_CERTIFICATE_PASSWORD`.
        password: Option<SecretValue>,
        /// `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`.
        send_chain: Option<String>,
    },
    Secret {
        app: AppEnv,
        secret: ClientSecretEnv,
    },
    WorkloadIdentity {
        app: AppEnv,
        /// `AZURE_FEDERATED_TOKEN_FILE`.
        token_file: String,
    },
    ManagedIdentity {
        endpoint: ManagedIdentityEnv,
        /// `AZURE_CLIENT_ID`, `AOAI_PROXY_MANAGED_IDENTITY_OBJECT_ID` or
        /// `AOAI_PROXY_MANAGED_IDENTITY_RESOURCE_ID`: one at most.
        id: Option<UserAssignedId>,
    },
}

/// Where the client secret is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSecretEnv {
    /// `AZURE_CLIENT_SECRET`.
    Inline(SecretValue),
    /// `AOAI_PROXY_CLIENT_SECRET_FILE`, re-read at each refresh.
    File(String),
}

/// Where managed-identity tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagedIdentityEnv {
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST`: the Instance Metadata Service's base URL.
    Imds { host: Option<String> },
    /// `IDENTITY_ENDPOINT` with `IDENTITY_HEADER` (App Service, Functions, Container Apps).
    AppService {
        endpoint: String,
        header: SecretValue,
    },
}

/// Egress through an HTTP proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressEnv {
    /// `HTTPS_PROXY` (alias `https_proxy`); may carry credentials.
    pub https_proxy: Option<Aliased<SecretValue>>,
    /// `HTTP_PROXY` (alias `http_proxy`); may carry credentials.
    pub http_proxy: Option<Aliased<SecretValue>>,
    /// `NO_PROXY` (alias `no_proxy`).
    pub no_proxy: Option<Aliased<String>>,
}

/// Inbound (caller) authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundEnv {
    /// `EXPECTED_KEY`.
    pub expected_key: Option<SecretValue>,
    /// `AOAI_PROXY_INBOUND_KEYS`: comma-separated.
    pub keys: Option<SecretValue>,
    /// `AOAI_PROXY_INBOUND_KEYS_FILE`.
    pub keys_file: Option<String>,
    /// `AOAI_PROXY_AUTH_MAX_FAILURES`.
    pub max_failures: Option<String>,
    /// `AOAI_PROXY_AUTH_FAILURE_WINDOW`.
    pub failure_window: Option<String>,
    /// `AOAI_PROXY_AUTH_LOCKOUT`.
    pub lockout: Option<String>,
}

/// Timeouts and limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsEnv {
    /// `AOAI_PROXY_CONNECT_TIMEOUT`.
    pub connect_timeout: Option<String>,
    /// `AOAI_PROXY_IDENTITY_TIMEOUT`.
    pub identity_timeout: Option<String>,
    /// `AOAI_PROXY_UPSTREAM_TIMEOUT`.
    pub upstream_timeout: Option<String>,
    /// `AOAI_PROXY_POOL_IDLE_TIMEOUT`.
    pub pool_idle_timeout: Option<String>,
    /// `AOAI_PROXY_HEADER_READ_TIMEOUT`.
    pub header_read_timeout: Option<String>,
    /// `AOAI_PROXY_MAX_REQUEST_BODY`.
    pub max_request_body: Option<String>,
    /// `AOAI_PROXY_SHUTDOWN_GRACE`.
    pub shutdown_grace: Option<String>,
}

/// Logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogEnv {
    /// `AOAI_PROXY_LOG_LEVEL`.
    pub level: Option<String>,
    /// `AOAI_PROXY_LOG_FORMAT`.
    pub format: Option<String>,
}

/// OpenTelemetry trace export, by the SDKs' own variable names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TracesEnv {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    pub traces_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: Option<String>,
    /// `OTEL_EXPORTER_OTLP_HEADERS`: often a collector's credentials.
    pub headers: Option<SecretValue>,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`.
    pub timeout: Option<String>,
    /// `OTEL_TRACES_SAMPLER`.
    pub sampler: Option<String>,
    /// `OTEL_TRACES_SAMPLER_ARG`.
    pub sampler_arg: Option<String>,
    /// `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource_attributes: Option<String>,
    /// `OTEL_SDK_DISABLED`.
    pub disabled: Option<String>,
}

/// A value that may be secret: written inline (never printed), or, in a pod, read by the kubelet
/// from a key of a Kubernetes Secret. The sidecar itself only ever sees `Inline`.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretValue {
    Inline(Secret),
    SecretKey { secret: String, key: String },
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("Inline([redacted])"),
            Self::SecretKey { secret, key } => write!(f, "SecretKey({secret}/{key})"),
        }
    }
}

impl SecretValue {
    /// The text the sidecar reads. A `SecretKey` is for the kubelet to resolve; here it has none.
    pub fn inline(&self) -> Option<&str> {
        match self {
            Self::Inline(secret) => Some(secret.expose()),
            Self::SecretKey { .. } => None,
        }
    }
}

/// One variable's value as written into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Text(String),
    /// `valueFrom.secretKeyRef`.
    SecretKey {
        secret: String,
        key: String,
    },
}

/// The credential kinds, as `AOAI_PROXY_CREDENTIAL` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    Certificate,
    Secret,
    WorkloadIdentity,
    ManagedIdentity,
}

impl CredentialKind {
    pub const ALL: [Self; 4] = [
        Self::Certificate,
        Self::Secret,
        Self::WorkloadIdentity,
        Self::ManagedIdentity,
    ];

    /// The value of `AOAI_PROXY_CREDENTIAL`; also the label in logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::Secret => "secret",
            Self::WorkloadIdentity => "workload-identity",
            Self::ManagedIdentity => "managed-identity",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

impl CredentialEnv {
    pub fn kind(&self) -> CredentialKind {
        match self {
            Self::Certificate { .. } => CredentialKind::Certificate,
            Self::Secret { .. } => CredentialKind::Secret,
            Self::WorkloadIdentity { .. } => CredentialKind::WorkloadIdentity,
            Self::ManagedIdentity { .. } => CredentialKind::ManagedIdentity,
        }
    }
}

/// Collects the variables [`SidecarEnv::to_env`] writes.
struct Writer(Vec<(&'static str, EnvValue)>);

impl Writer {
    fn text(&mut self, name: &'static str, value: impl Into<String>) {
        self.0.push((name, EnvValue::Text(value.into())));
    }

    fn optional(&mut self, name: &'static str, value: &Option<String>) {
        if let Some(value) = value {
            self.text(name, value.clone());
        }
    }

    fn secret(&mut self, name: &'static str, value: &SecretValue) {
        let value = match value {
            SecretValue::Inline(secret) => EnvValue::Text(secret.expose().to_string()),
            SecretValue::SecretKey { secret, key } => EnvValue::SecretKey {
                secret: secret.clone(),
                key: key.clone(),
            },
        };
        self.0.push((name, value));
    }

    fn app(&mut self, app: &AppEnv) {
        self.text(names::AZURE_TENANT_ID, app.tenant_id.clone());
        self.text(names::AZURE_CLIENT_ID, app.client_id.clone());
    }
}

impl SidecarEnv {
    /// The variables that configure the sidecar as this value says, unset ones left out.
    /// `AOAI_PROXY_CREDENTIAL` is always written, so that the kind never depends on inference.
    pub fn to_env(&self) -> Vec<(&'static str, EnvValue)> {
        let mut w = Writer(Vec::new());
        match &self.upstream {
            UpstreamEnv::Endpoint(url) => w.text(
                url.variable(names::API_BASE_URL, names::TARGET_URL),
                url.value.clone(),
            ),
            UpstreamEnv::Backends(list) => w.text(names::AOAI_PROXY_BACKENDS, list.clone()),
        }
        let f = &self.failover;
        w.optional(names::AOAI_PROXY_RETRY_BODY_LIMIT, &f.retry_body_limit);
        w.optional(names::AOAI_PROXY_EJECT_AFTER, &f.eject_after);
        w.optional(names::AOAI_PROXY_EJECT_FOR, &f.eject_for);
        w.optional(names::AOAI_PROXY_MAX_THROTTLE_WAIT, &f.max_throttle_wait);
        w.optional(names::HOST, &self.listener.host);
        w.optional(names::PORT, &self.listener.port);
        w.optional(names::AOAI_PROXY_ADMIN_HOST, &self.admin.host);
        w.optional(names::AOAI_PROXY_ADMIN_PORT, &self.admin.port);

        w.text(
            names::AOAI_PROXY_CREDENTIAL,
            self.credential.kind().as_str(),
        );
        match &self.credential {
            CredentialEnv::Certificate {
                app,
                path,
                key_path,
                password,
                send_chain,
            } => {
                w.app(app);
                w.text(
                    path.variable(
                        names::AZURE_CERTIFICATE_PATH,
                        names::AZURE_CLIENT_CERTIFICATE_PATH,
                    ),
                    path.value.clone(),
                );
                w.optional(names::AOAI_PROXY_CERTIFICATE_KEY_PATH, key_path);
                if let Some(password) = password {
                    w.secret(names::AZURE_CLIENT_CERTIFICATE_PASSWORD, password);
                }
                w.optional(names::AZURE_CLIENT_SEND_CERTIFICATE_CHAIN, send_chain);
            }
            CredentialEnv::Secret { app, secret } => {
                w.app(app);
                match secret {
                    ClientSecretEnv::Inline(value) => w.secret(names::AZURE_CLIENT_SECRET, value),
                    ClientSecretEnv::File(path) => {
                        w.text(names::AOAI_PROXY_CLIENT_SECRET_FILE, path.clone())
                    }
                }
            }
            CredentialEnv::WorkloadIdentity { app, token_file } => {
                w.app(app);
                w.text(names::AZURE_FEDERATED_TOKEN_FILE, token_file.clone());
            }
            CredentialEnv::ManagedIdentity { endpoint, id } => {
                match endpoint {
                    ManagedIdentityEnv::Imds { host } => {
                        w.optional(names::AZURE_POD_IDENTITY_AUTHORITY_HOST, host)
                    }
                    ManagedIdentityEnv::AppService { endpoint, header } => {
                        w.text(names::IDENTITY_ENDPOINT, endpoint.clone());
                        w.secret(names::IDENTITY_HEADER, header);
                    }
                }
                match id {
                    Some(UserAssignedId::ClientId(id)) => {
                        w.text(names::AZURE_CLIENT_ID, id.clone())
                    }
                    Some(UserAssignedId::ObjectId(id)) => {
                        w.text(names::AOAI_PROXY_MANAGED_IDENTITY_OBJECT_ID, id.clone())
                    }
                    Some(UserAssignedId::ResourceId(id)) => {
                        w.text(names::AOAI_PROXY_MANAGED_IDENTITY_RESOURCE_ID, id.clone())
                    }
                    None => {}
                }
            }
        }
        w.optional(names::AZURE_AUTHORITY_HOST, &self.authority_host);
        if let Some(scope) = &self.scope {
            w.text(
                scope.variable(names::AZURE_SCOPE, names::AZURE_OPENAI_SCOPE),
                scope.value.clone(),
            );
        }
        w.optional(names::SSL_CERT_FILE, &self.trust_bundle);

        let e = &self.egress;
        for (proxy, name, alias) in [
            (
                &e.https_proxy,
                names::HTTPS_PROXY,
                names::HTTPS_PROXY_LOWERCASE,
            ),
            (
                &e.http_proxy,
                names::HTTP_PROXY,
                names::HTTP_PROXY_LOWERCASE,
            ),
        ] {
            if let Some(proxy) = proxy {
                w.secret(proxy.variable(name, alias), &proxy.value);
            }
        }
        if let Some(no_proxy) = &e.no_proxy {
            w.text(
                no_proxy.variable(names::NO_PROXY, names::NO_PROXY_LOWERCASE),
                no_proxy.value.clone(),
            );
        }

        let i = &self.inbound;
        if let Some(key) = &i.expected_key {
            w.secret(names::EXPECTED_KEY, key);
        }
        if let Some(keys) = &i.keys {
            w.secret(names::AOAI_PROXY_INBOUND_KEYS, keys);
        }
        w.optional(names::AOAI_PROXY_INBOUND_KEYS_FILE, &i.keys_file);
        w.optional(names::AOAI_PROXY_AUTH_MAX_FAILURES, &i.max_failures);
        w.optional(names::AOAI_PROXY_AUTH_FAILURE_WINDOW, &i.failure_window);
        w.optional(names::AOAI_PROXY_AUTH_LOCKOUT, &i.lockout);

        let l = &self.limits;
        w.optional(names::AOAI_PROXY_CONNECT_TIMEOUT, &l.connect_timeout);
        w.optional(names::AOAI_PROXY_IDENTITY_TIMEOUT, &l.identity_timeout);
        w.optional(names::AOAI_PROXY_UPSTREAM_TIMEOUT, &l.upstream_timeout);
        w.optional(names::AOAI_PROXY_POOL_IDLE_TIMEOUT, &l.pool_idle_timeout);
        w.optional(
            names::AOAI_PROXY_HEADER_READ_TIMEOUT,
            &l.header_read_timeout,
        );
        w.optional(names::AOAI_PROXY_MAX_REQUEST_BODY, &l.max_request_body);
        w.optional(names::AOAI_PROXY_SHUTDOWN_GRACE, &l.shutdown_grace);
        w.optional(names::AOAI_PROXY_LOG_LEVEL, &self.log.level);
        w.optional(names::AOAI_PROXY_LOG_FORMAT, &self.log.format);

        let t = &self.traces;
        w.optional(names::OTEL_EXPORTER_OTLP_ENDPOINT, &t.endpoint);
        w.optional(
            names::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
            &t.traces_endpoint,
        );
        w.optional(names::OTEL_EXPORTER_OTLP_PROTOCOL, &t.protocol);
        if let Some(headers) = &t.headers {
            w.secret(names::OTEL_EXPORTER_OTLP_HEADERS, headers);
        }
        w.optional(names::OTEL_EXPORTER_OTLP_TIMEOUT, &t.timeout);
        w.optional(names::OTEL_TRACES_SAMPLER, &t.sampler);
        w.optional(names::OTEL_TRACES_SAMPLER_ARG, &t.sampler_arg);
        w.optional(names::OTEL_SERVICE_NAME, &t.service_name);
        w.optional(names::OTEL_RESOURCE_ATTRIBUTES, &t.resource_attributes);
        w.optional(names::OTEL_SDK_DISABLED, &t.disabled);
        w.0
    }

    /// Every value that may be secret, wherever it is: what a kubelet resolves from Secrets.
    pub fn secret_values_mut(&mut self) -> Vec<&mut SecretValue> {
        let mut values: Vec<&mut SecretValue> = Vec::new();
        match &mut self.credential {
            CredentialEnv::Certificate { password, .. } => values.extend(password.as_mut()),
            CredentialEnv::Secret {
                secret: ClientSecretEnv::Inline(value),
                ..
            } => values.push(value),
            CredentialEnv::ManagedIdentity {
                endpoint: ManagedIdentityEnv::AppService { header, .. },
                ..
            } => values.push(header),
            _ => {}
        }
        let egress = &mut self.egress;
        for proxy in [&mut egress.https_proxy, &mut egress.http_proxy]
            .into_iter()
            .flatten()
        {
            values.push(&mut proxy.value);
        }
        values.extend(self.inbound.expected_key.as_mut());
        values.extend(self.inbound.keys.as_mut());
        values.extend(self.traces.headers.as_mut());
        values
    }

    /// Reads the variables through `lookup` (name → value): what is set, which credential, and
    /// whether it has what it requires. The values themselves are checked by `Config`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Reader(lookup);
        let upstream = match (
            env.get(names::AOAI_PROXY_BACKENDS),
            env.aliased(names::API_BASE_URL, names::TARGET_URL)?,
        ) {
            (Some(_), Some(base)) => {
                return Err(error(
                    names::AOAI_PROXY_BACKENDS,
                    format!(
                        "contradicts {}; set only one of them (a single backend can be the list's one entry)",
                        base.variable(names::API_BASE_URL, names::TARGET_URL)
                    ),
                ));
            }
            (Some(list), None) => UpstreamEnv::Backends(list),
            (None, Some(base)) => UpstreamEnv::Endpoint(base),
            (None, None) => {
                return Err(error(
                    names::API_BASE_URL,
                    "is required: the Azure OpenAI endpoint, e.g. https://my-resource.openai.azure.com (or set TARGET_URL, or AOAI_PROXY_BACKENDS for several)",
                ));
            }
        };
        let secret = |name| env.get(name).map(|v| SecretValue::Inline(Secret::new(v)));
        let secret_aliased = |name, alias| -> Result<_, ConfigError> {
            Ok(env.aliased(name, alias)?.map(|a| Aliased {
                value: SecretValue::Inline(Secret::new(a.value)),
                by_alias: a.by_alias,
            }))
        };
        Ok(Self {
            upstream,
            failover: FailoverEnv {
                retry_body_limit: env.get(names::AOAI_PROXY_RETRY_BODY_LIMIT),
                eject_after: env.get(names::AOAI_PROXY_EJECT_AFTER),
                eject_for: env.get(names::AOAI_PROXY_EJECT_FOR),
                max_throttle_wait: env.get(names::AOAI_PROXY_MAX_THROTTLE_WAIT),
            },
            listener: ListenerEnv {
                host: env.get(names::HOST),
                port: env.get(names::PORT),
            },
            admin: ListenerEnv {
                host: env.get(names::AOAI_PROXY_ADMIN_HOST),
                port: env.get(names::AOAI_PROXY_ADMIN_PORT),
            },
            credential: credential_from(&env)?,
            authority_host: env.get(names::AZURE_AUTHORITY_HOST),
            scope: env.aliased(names::AZURE_SCOPE, names::AZURE_OPENAI_SCOPE)?,
            trust_bundle: env.get(names::SSL_CERT_FILE),
            egress: EgressEnv {
                https_proxy: secret_aliased(names::HTTPS_PROXY, names::HTTPS_PROXY_LOWERCASE)?,
                http_proxy: secret_aliased(names::HTTP_PROXY, names::HTTP_PROXY_LOWERCASE)?,
                no_proxy: env.aliased(names::NO_PROXY, names::NO_PROXY_LOWERCASE)?,
            },
            inbound: InboundEnv {
                expected_key: secret(names::EXPECTED_KEY),
                keys: secret(names::AOAI_PROXY_INBOUND_KEYS),
                keys_file: env.get(names::AOAI_PROXY_INBOUND_KEYS_FILE),
                max_failures: env.get(names::AOAI_PROXY_AUTH_MAX_FAILURES),
                failure_window: env.get(names::AOAI_PROXY_AUTH_FAILURE_WINDOW),
                lockout: env.get(names::AOAI_PROXY_AUTH_LOCKOUT),
            },
            limits: LimitsEnv {
                connect_timeout: env.get(names::AOAI_PROXY_CONNECT_TIMEOUT),
                identity_timeout: env.get(names::AOAI_PROXY_IDENTITY_TIMEOUT),
                upstream_timeout: env.get(names::AOAI_PROXY_UPSTREAM_TIMEOUT),
                pool_idle_timeout: env.get(names::AOAI_PROXY_POOL_IDLE_TIMEOUT),
                header_read_timeout: env.get(names::AOAI_PROXY_HEADER_READ_TIMEOUT),
                max_request_body: env.get(names::AOAI_PROXY_MAX_REQUEST_BODY),
                shutdown_grace: env.get(names::AOAI_PROXY_SHUTDOWN_GRACE),
            },
            log: LogEnv {
                level: env.get(names::AOAI_PROXY_LOG_LEVEL),
                format: env.get(names::AOAI_PROXY_LOG_FORMAT),
            },
            traces: TracesEnv {
                endpoint: env.get(names::OTEL_EXPORTER_OTLP_ENDPOINT),
                traces_endpoint: env.get(names::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
                protocol: env.get(names::OTEL_EXPORTER_OTLP_PROTOCOL),
                headers: secret(names::OTEL_EXPORTER_OTLP_HEADERS),
                timeout: env.get(names::OTEL_EXPORTER_OTLP_TIMEOUT),
                sampler: env.get(names::OTEL_TRACES_SAMPLER),
                sampler_arg: env.get(names::OTEL_TRACES_SAMPLER_ARG),
                service_name: env.get(names::OTEL_SERVICE_NAME),
                resource_attributes: env.get(names::OTEL_RESOURCE_ATTRIBUTES),
                disabled: env.get(names::OTEL_SDK_DISABLED),
            },
        })
    }
}

/// Reads variables through a lookup, treating empty values as unset.
struct Reader<F: Fn(&str) -> Option<String>>(F);

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    fn get(&self, name: &'static str) -> Option<String> {
        debug_assert!(
            crate::config::ENV_VARS.iter().any(|v| v.name == name),
            "{name} is not in ENV_VARS"
        );
        (self.0)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// A variable with an alias: either may be set; both set to different values is an error.
    fn aliased(
        &self,
        name: &'static str,
        alias: &'static str,
    ) -> Result<Option<Aliased<String>>, ConfigError> {
        match (self.get(name), self.get(alias)) {
            (Some(a), Some(b)) if a != b => Err(error(
                alias,
                format!("contradicts {name}; set only one of them"),
            )),
            (Some(value), _) => Ok(Some(Aliased::new(value))),
            (None, Some(value)) => Ok(Some(Aliased {
                value,
                by_alias: true,
            })),
            (None, None) => Ok(None),
        }
    }

    fn required(&self, name: &'static str, why: &str) -> Result<String, ConfigError> {
        self.get(name)
            .ok_or_else(|| error(name, format!("is required {why}")))
    }
}

const CREDENTIAL_KINDS: &str = "certificate, secret, workload-identity or managed-identity";

/// The credential kind: `AOAI_PROXY_CREDENTIAL` when set, otherwise the one kind whose variables
/// are present; managed identity when none is (as the Go managed-identity proxy did).
fn credential_kind<F: Fn(&str) -> Option<String>>(
    env: &Reader<F>,
) -> Result<CredentialKind, ConfigError> {
    if let Some(text) = env.get(names::AOAI_PROXY_CREDENTIAL) {
        return CredentialKind::parse(&text).ok_or_else(|| {
            error(
                names::AOAI_PROXY_CREDENTIAL,
                format!("{text:?} is not a credential kind (use {CREDENTIAL_KINDS})"),
            )
        });
    }
    let present: Vec<(CredentialKind, &str)> = [
        (CredentialKind::Certificate, names::AZURE_CERTIFICATE_PATH),
        (
            CredentialKind::Certificate,
            names::AZURE_CLIENT_CERTIFICATE_PATH,
        ),
        (CredentialKind::Secret, names::AZURE_CLIENT_SECRET),
        (CredentialKind::Secret, names::AOAI_PROXY_CLIENT_SECRET_FILE),
        (
            CredentialKind::WorkloadIdentity,
            names::AZURE_FEDERATED_TOKEN_FILE,
        ),
        (CredentialKind::ManagedIdentity, names::IDENTITY_ENDPOINT),
    ]
    .into_iter()
    .filter(|(_, name)| env.get(name).is_some())
    .collect();
    let mut kinds: Vec<&str> = present.iter().map(|(k, _)| k.as_str()).collect();
    kinds.dedup();
    match present.as_slice() {
        [] if env.get(names::AZURE_TENANT_ID).is_some() => Err(error(
            names::AOAI_PROXY_CREDENTIAL,
            "AZURE_TENANT_ID is set but no credential is: set AZURE_CERTIFICATE_PATH, AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE, or AOAI_PROXY_CREDENTIAL=managed-identity",
        )),
        [] => Ok(CredentialKind::ManagedIdentity),
        [(one, _), ..] if kinds.len() == 1 => Ok(*one),
        _ => {
            // Both certificate names set to one file count once, as the alias check allows.
            let variables: Vec<&str> = present.iter().map(|(_, n)| *n).collect();
            Err(error(
                names::AOAI_PROXY_CREDENTIAL,
                format!(
                    "several credentials are configured ({}); set AOAI_PROXY_CREDENTIAL to one of {}",
                    variables.join(", "),
                    kinds.join(", ")
                ),
            ))
        }
    }
}

/// The chosen credential with the variables it requires.
fn credential_from<F: Fn(&str) -> Option<String>>(
    env: &Reader<F>,
) -> Result<CredentialEnv, ConfigError> {
    let kind = credential_kind(env)?;
    let app = || -> Result<AppEnv, ConfigError> {
        let why = format!("for the {} credential", kind.as_str());
        Ok(AppEnv {
            tenant_id: env.required(names::AZURE_TENANT_ID, &why)?,
            client_id: env.required(names::AZURE_CLIENT_ID, &why)?,
        })
    };
    let secret = |name| env.get(name).map(|v| SecretValue::Inline(Secret::new(v)));
    match kind {
        CredentialKind::Certificate => {
            let path = env
                .aliased(
                    names::AZURE_CERTIFICATE_PATH,
                    names::AZURE_CLIENT_CERTIFICATE_PATH,
                )?
                .ok_or_else(|| {
                    error(
                        names::AZURE_CERTIFICATE_PATH,
                        "is required for the certificate credential (or AZURE_CLIENT_CERTIFICATE_PATH)",
                    )
                })?;
            Ok(CredentialEnv::Certificate {
                app: app()?,
                path,
                key_path: env.get(names::AOAI_PROXY_CERTIFICATE_KEY_PATH),
                password: secret(names::AZURE_CLIENT_CERTIFICATE_PASSWORD),
                send_chain: env.get(names::AZURE_CLIENT_SEND_CERTIFICATE_CHAIN),
            })
        }
        CredentialKind::Secret => {
            let secret = match (
                secret(names::AZURE_CLIENT_SECRET),
                env.get(names::AOAI_PROXY_CLIENT_SECRET_FILE),
            ) {
                (Some(_), Some(_)) => {
                    return Err(error(
                        names::AOAI_PROXY_CLIENT_SECRET_FILE,
                        "contradicts AZURE_CLIENT_SECRET; set only one of them",
                    ));
                }
                (Some(inline), None) => ClientSecretEnv::Inline(inline),
                (None, Some(file)) => ClientSecretEnv::File(file),
                (None, None) => {
                    return Err(error(
                        names::AZURE_CLIENT_SECRET,
                        "is required for the secret credential (or AOAI_PROXY_CLIENT_SECRET_FILE)",
                    ));
                }
            };
            Ok(CredentialEnv::Secret {
                app: app()?,
                secret,
            })
        }
        CredentialKind::WorkloadIdentity => {
            let token_file = env.required(
                names::AZURE_FEDERATED_TOKEN_FILE,
                "for the workload-identity credential",
            )?;
            Ok(CredentialEnv::WorkloadIdentity {
                app: app()?,
                token_file,
            })
        }
        CredentialKind::ManagedIdentity => {
            let ids: Vec<(&'static str, UserAssignedId)> = [
                (
                    names::AZURE_CLIENT_ID,
                    UserAssignedId::ClientId as fn(_) -> _,
                ),
                (
                    names::AOAI_PROXY_MANAGED_IDENTITY_OBJECT_ID,
                    UserAssignedId::ObjectId,
                ),
                (
                    names::AOAI_PROXY_MANAGED_IDENTITY_RESOURCE_ID,
                    UserAssignedId::ResourceId,
                ),
            ]
            .into_iter()
            .filter_map(|(name, id)| env.get(name).map(|value| (name, id(value))))
            .collect();
            if let [(first, _), (second, _), ..] = ids.as_slice() {
                return Err(error(
                    second,
                    format!(
                        "a user-assigned identity is chosen by one id only, but {first} and {second} are set"
                    ),
                ));
            }
            let endpoint = match env.get(names::IDENTITY_ENDPOINT) {
                Some(endpoint) => ManagedIdentityEnv::AppService {
                    endpoint,
                    header: SecretValue::Inline(Secret::new(
                        env.required(names::IDENTITY_HEADER, "with IDENTITY_ENDPOINT")?,
                    )),
                },
                None => ManagedIdentityEnv::Imds {
                    host: env.get(names::AZURE_POD_IDENTITY_AUTHORITY_HOST),
                },
            };
            Ok(CredentialEnv::ManagedIdentity {
                endpoint,
                id: ids.into_iter().next().map(|(_, id)| id),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;
    use crate::config::{Config, ENV_VARS};

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

    fn text(value: &str) -> Option<String> {
        Some(value.to_string())
    }

    fn secret(value: &str) -> SecretValue {
        SecretValue::Inline(Secret::new(value))
    }

    fn app() -> AppEnv {
        AppEnv {
            tenant_id: TENANT.into(),
            client_id: CLIENT.into(),
        }
    }

    /// A value with every field set (every alias taken), around `credential`.
    fn everything(credential: CredentialEnv, by_alias: bool) -> SidecarEnv {
        let aliased = |value: &str| Aliased {
            value: value.to_string(),
            by_alias,
        };
        let proxy = |value: &str| Aliased {
            value: secret(value),
            by_alias,
        };
        SidecarEnv {
            upstream: UpstreamEnv::Endpoint(aliased("https://r.openai.azure.com/openai")),
            failover: FailoverEnv {
                retry_body_limit: text("1Mi"),
                eject_after: text("5"),
                eject_for: text("90s"),
                max_throttle_wait: text("2m"),
            },
            listener: ListenerEnv {
                host: text("127.0.0.1"),
                port: text("9000"),
            },
            admin: ListenerEnv {
                host: text("0.0.0.0"),
                port: text("9001"),
            },
            credential,
            authority_host: text("https://login.microsoftonline.us"),
            scope: Some(aliased("https://cognitiveservices.azure.us/.default")),
            trust_bundle: text("/etc/trust/ca.crt"),
            egress: EgressEnv {
                https_proxy: Some(proxy("http://u:p@proxy.corp:3128")),
                http_proxy: Some(proxy("http://proxy.corp:3129")),
                no_proxy: Some(aliased(".svc,10.0.0.0/8")),
            },
            inbound: InboundEnv {
                expected_key: Some(secret("k1")),
                keys: Some(secret("k2,k3")),
                keys_file: text("/keys/keys"),
                max_failures: text("7"),
                failure_window: text("2m"),
                lockout: text("10m"),
            },
            limits: LimitsEnv {
                connect_timeout: text("3s"),
                identity_timeout: text("20s"),
                upstream_timeout: text("5m"),
                pool_idle_timeout: text("60s"),
                header_read_timeout: text("4s"),
                max_request_body: text("25Mi"),
                shutdown_grace: text("40s"),
            },
            log: LogEnv {
                level: text("debug"),
                format: text("json"),
            },
            traces: TracesEnv {
                endpoint: text("http://collector.observability:4318"),
                traces_endpoint: text("https://collector.observability:4318/v1/traces"),
                protocol: text("http/json"),
                headers: Some(secret("authorization=Bearer%20t0k3n")),
                timeout: text("2500"),
                sampler: text("parentbased_traceidratio"),
                sampler_arg: text("0.25"),
                service_name: text("shop-chat"),
                resource_attributes: text("k8s.namespace.name=shop,team=payments"),
                disabled: text("false"),
            },
        }
    }

    /// Every credential, in every form its variables can take.
    fn credentials() -> Vec<CredentialEnv> {
        let certificate = |by_alias| CredentialEnv::Certificate {
            app: app(),
            path: Aliased {
                value: "/c/tls.crt".into(),
                by_alias,
            },
            key_path: text("/c/tls.key"),
            password: Some(secret("pw")),
            send_chain: text("true"),
        };
        let managed = |id| CredentialEnv::ManagedIdentity {
            endpoint: ManagedIdentityEnv::Imds {
                host: text("http://127.0.0.1:9999"),
            },
            id,
        };
        vec![
            certificate(false),
            certificate(true),
            CredentialEnv::Secret {
                app: app(),
                secret: ClientSecretEnv::Inline(secret("s3cr3t")),
            },
            CredentialEnv::Secret {
                app: app(),
                secret: ClientSecretEnv::File("/c/secret".into()),
            },
            CredentialEnv::WorkloadIdentity {
                app: app(),
                token_file: "/t/token".into(),
            },
            managed(None),
            managed(Some(UserAssignedId::ClientId(CLIENT.into()))),
            managed(Some(UserAssignedId::ObjectId(CLIENT.into()))),
            managed(Some(UserAssignedId::ResourceId(
                "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i".into(),
            ))),
            CredentialEnv::ManagedIdentity {
                endpoint: ManagedIdentityEnv::AppService {
                    endpoint: "http://127.0.0.1:41000/msi/token".into(),
                    header: secret("hdr"),
                },
                id: None,
            },
        ]
    }

    fn read_back(env: &SidecarEnv) -> SidecarEnv {
        let written: HashMap<&str, String> = env
            .to_env()
            .into_iter()
            .map(|(name, value)| match value {
                EnvValue::Text(text) => (name, text),
                EnvValue::SecretKey { .. } => panic!("{name}: only inline values here"),
            })
            .collect();
        SidecarEnv::from_lookup(|name| written.get(name).cloned())
            .unwrap_or_else(|e| panic!("{env:?} does not read back: {e}"))
    }

    #[test]
    fn every_field_reads_back_as_written() {
        let mut written = BTreeSet::new();
        for credential in credentials() {
            for by_alias in [false, true] {
                let env = everything(credential.clone(), by_alias);
                assert_eq!(read_back(&env), env);
                Config::from_sidecar_env(&env)
                    .unwrap_or_else(|e| panic!("{env:?} is not a valid configuration: {e}"));
                written.extend(env.to_env().into_iter().map(|(name, _)| name));
            }
            let backends = SidecarEnv {
                upstream: UpstreamEnv::Backends(
                    r#"[{"endpoint":"https://a.openai.azure.com"}]"#.into(),
                ),
                ..everything(credential, false)
            };
            assert_eq!(read_back(&backends), backends);
            written.extend(backends.to_env().into_iter().map(|(name, _)| name));
        }
        let unwritten: Vec<&str> = ENV_VARS
            .iter()
            .map(|v| v.name)
            .filter(|name| !written.contains(name))
            .collect();
        assert!(
            unwritten.is_empty(),
            "variables the proxy reads that no SidecarEnv field writes: {unwritten:?}"
        );
    }

    #[test]
    fn unset_fields_are_not_written_and_read_back_unset() {
        let minimal = SidecarEnv {
            upstream: UpstreamEnv::Endpoint(Aliased::new("https://r.openai.azure.com".into())),
            failover: FailoverEnv::default(),
            listener: ListenerEnv::default(),
            admin: ListenerEnv::default(),
            credential: CredentialEnv::ManagedIdentity {
                endpoint: ManagedIdentityEnv::Imds { host: None },
                id: None,
            },
            authority_host: None,
            scope: None,
            trust_bundle: None,
            egress: EgressEnv::default(),
            inbound: InboundEnv::default(),
            limits: LimitsEnv::default(),
            log: LogEnv::default(),
            traces: TracesEnv::default(),
        };
        let names: Vec<&str> = minimal.to_env().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["API_BASE_URL", "AOAI_PROXY_CREDENTIAL"]);
        assert_eq!(read_back(&minimal), minimal);
    }

    #[test]
    fn secrets_are_written_by_reference_and_never_debug_printed() {
        let mut env = everything(credentials()[2].clone(), false);
        env.egress.https_proxy = Some(Aliased::new(SecretValue::SecretKey {
            secret: "egress".into(),
            key: "url".into(),
        }));
        let written = env.to_env();
        assert!(written.contains(&(
            names::HTTPS_PROXY,
            EnvValue::SecretKey {
                secret: "egress".into(),
                key: "url".into()
            }
        )));
        let debug = format!("{env:?}");
        for secret in ["s3cr3t", "k1", "k2", "u:p", "t0k3n"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        let e = Config::from_sidecar_env(&env).unwrap_err();
        assert_eq!(e.variable, names::HTTPS_PROXY);
    }
}
