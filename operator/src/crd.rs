//! The `AzureOpenAIProxy` custom resource (`aoai-proxy.io/v1alpha1`): one proxy configuration that
//! pods in its namespace opt into with `aoai-proxy.io/inject: <name>`.
//!
//! Validation lives in the schema itself (patterns, ranges, enums and CEL rules), so that
//! `kubectl apply` rejects a bad object with a clear message; `crds/` holds the generated YAML.

use aoai_proxy_contract::config::BackendEntry;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Azure OpenAI through an aoai-proxy sidecar, authenticated with an Entra ID token.
// Each printcolumn repeats `type_`: not a duplicate, whatever clippy thinks.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aoai-proxy.io",
    version = "v1alpha1",
    kind = "AzureOpenAIProxy",
    plural = "azureopenaiproxies",
    shortname = "aoaip",
    namespaced,
    status = "AzureOpenAIProxyStatus",
    doc = "An Azure OpenAI endpoint and the Entra ID credential an injected aoai-proxy sidecar uses to call it. Pods in the same namespace opt in with the annotation aoai-proxy.io/inject: <name>.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".spec.endpoint"),
    printcolumn(
        name = "Credential",
        type_ = "string",
        json_path = ".status.credential"
    ),
    printcolumn(
        name = "Injected",
        type_ = "integer",
        json_path = ".status.injectedPods"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.credential.managedIdentity) || (has(self.tenantId) && has(self.clientId))").message("tenantId and clientId are required unless the credential is managedIdentity"))]
#[x_kube(validation = Rule::new("has(self.endpoint) != has(self.backends)").message("set exactly one of endpoint and backends"))]
#[serde(rename_all = "camelCase")]
pub struct AzureOpenAIProxySpec {
    /// Azure OpenAI endpoint, for example https://my-resource.openai.azure.com. Requests to the
    /// sidecar are forwarded here with their path and query. Exactly one of endpoint and backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("endpoint must be an https:// URL"))]
    #[schemars(
        length(min = 9, max = 2048),
        regex(pattern = ENDPOINT_PATTERN)
    )]
    pub endpoint: Option<String>,

    /// Several Azure OpenAI endpoints instead of endpoint: a request goes to the lowest priority
    /// first (by weight among equals), and to the next when one answers 429 (for as long as it
    /// asks) or fails (connection, reset, timeout, 500/502/503/504). One token serves them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(min = 1, max = 16),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["endpoint"])
    )]
    pub backends: Vec<BackendSpec>,

    /// How requests fail over between backends; the sidecar's defaults when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverSpec>,

    /// Entra ID tenant: a GUID or a domain such as contoso.onmicrosoft.com. Required unless the
    /// credential is managedIdentity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)$"
    ))]
    pub tenant_id: Option<String>,

    /// Application (client) id, a GUID. Required unless the credential is managedIdentity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ))]
    pub client_id: Option<String>,

    /// Azure cloud: sets the Entra ID authority and the default scope.
    #[serde(default)]
    pub cloud: AzureCloud,

    /// Entra ID authority host (https), overriding the cloud's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("authorityHost must be an https:// URL"))]
    #[schemars(length(max = 2048))]
    pub authority_host: Option<String>,

    /// Token scope, overriding the cloud's Azure OpenAI scope
    /// (https://cognitiveservices.azure.com/.default in the public cloud).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\S+$"), length(max = 2048))]
    pub scope: Option<String>,

    /// How the sidecar authenticates to Entra ID: exactly one of the four.
    pub credential: CredentialSpec,

    /// Keys the sidecar requires from callers (defence in depth inside the pod). Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_keys: Option<InboundKeysSpec>,

    /// The injected container.
    #[serde(default)]
    pub sidecar: SidecarSpec,

    /// Environment variables application containers receive (only where not already set).
    #[serde(default)]
    pub app_env: AppEnvSpec,

    /// What to do with running workloads when this configuration changes.
    #[serde(default)]
    pub rollout: RolloutPolicy,

    /// An HTTP proxy the sidecar reaches Azure through (the upstream and Entra ID), injected as
    /// HTTPS_PROXY and NO_PROXY. Direct when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<EgressProxySpec>,

    /// A CA bundle the sidecar trusts in addition to the system roots, for the upstream and the
    /// identity calls (API Management, a private-endpoint gateway, a TLS-inspecting firewall):
    /// mounted read-only and re-read when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustSpec>,

    /// OpenTelemetry traces of the sidecar, exported over OTLP/HTTP: one span per request with
    /// the GenAI attributes, the caller's trace context continued. Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
}

/// Where and how the sidecar exports its spans (the OTEL_* variables it is given).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// The collector's OTLP/HTTP base URL, e.g. http://otel-collector.observability:4318; spans
    /// go to its /v1/traces (OTEL_EXPORTER_OTLP_ENDPOINT).
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://[^?#\s]+$"))]
    pub endpoint: String,
    /// The OTLP encoding (OTEL_EXPORTER_OTLP_PROTOCOL).
    #[serde(default)]
    pub protocol: OtlpProtocolSpec,
    /// Headers sent with each export, from a Secret key holding key=value pairs separated by
    /// commas (OTEL_EXPORTER_OTLP_HEADERS): a collector's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_from: Option<SecretKeyRef>,
    /// Which traces are kept (OTEL_TRACES_SAMPLER): parentbased_always_on keeps the caller's
    /// decision, else every trace.
    #[serde(default)]
    pub sampler: SamplerSpec,
    /// Ratio kept by the traceidratio samplers, from 0 to 1 (OTEL_TRACES_SAMPLER_ARG).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$"))]
    pub sampler_ratio: Option<String>,
    /// More resource attributes of the spans, key=value pairs separated by commas, e.g.
    /// k8s.cluster.name=prod (OTEL_RESOURCE_ATTRIBUTES).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub resource_attributes: Option<String>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum OtlpProtocolSpec {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

impl OtlpProtocolSpec {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpProtobuf => "http/protobuf",
            Self::HttpJson => "http/json",
        }
    }
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SamplerSpec {
    AlwaysOn,
    AlwaysOff,
    #[serde(rename = "traceidratio")]
    TraceIdRatio,
    #[default]
    ParentbasedAlwaysOn,
    ParentbasedAlwaysOff,
    #[serde(rename = "parentbased_traceidratio")]
    ParentbasedTraceIdRatio,
}

impl SamplerSpec {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AlwaysOn => "always_on",
            Self::AlwaysOff => "always_off",
            Self::TraceIdRatio => "traceidratio",
            Self::ParentbasedAlwaysOn => "parentbased_always_on",
            Self::ParentbasedAlwaysOff => "parentbased_always_off",
            Self::ParentbasedTraceIdRatio => "parentbased_traceidratio",
        }
    }
}

/// An https Azure OpenAI endpoint, optionally with a path prefix.
const ENDPOINT_PATTERN: &str = r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^?#\s]*)?$";

/// One backend of `spec.backends`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendSpec {
    /// Azure OpenAI endpoint, for example https://my-ptu.openai.azure.com.
    #[schemars(length(min = 9, max = 2048), regex(pattern = ENDPOINT_PATTERN))]
    pub endpoint: String,
    /// Lower first: priority 1 gets a request only when every priority-0 backend is throttled,
    /// ejected or failed for it.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub priority: u32,
    /// Share of requests among the backends of the same priority.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: u32,
    /// Deployments named differently on this resource than in the applications' requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub deployments: Vec<DeploymentRename>,
}

/// A deployment's name in requests and its name on one backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRename {
    /// The deployment name in the applications' request paths, e.g. gpt-4o.
    #[schemars(regex(pattern = DEPLOYMENT_PATTERN), length(min = 1, max = 64))]
    pub name: String,
    /// Its name on this backend, e.g. gpt-4o-paygo.
    #[schemars(regex(pattern = DEPLOYMENT_PATTERN), length(min = 1, max = 64))]
    pub backend_name: String,
}

/// An Azure OpenAI deployment name.
const DEPLOYMENT_PATTERN: &str = r"^[A-Za-z0-9._-]+$";

fn default_weight() -> u32 {
    1
}

/// Failover tuning (each unset field keeps the sidecar's default).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Request bodies up to this size (e.g. 4Mi) are kept while they stream so that the request
    /// can go to the next backend; larger ones go to one backend only. Default 4Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,12}(K|M|G|Ki|Mi|Gi)?$"))]
    pub retry_body_limit: Option<String>,
    /// Consecutive faults after which a backend is skipped for ejectFor. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub eject_after: Option<u32>,
    /// How long an ejected backend is skipped, e.g. 30s. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,6}(ms|s|m|h)$"))]
    pub eject_for: Option<String>,
    /// The longest wait a 429 may impose, e.g. 1m: a backend's cool-down and the Retry-After
    /// callers are told are cut to this (a longer wait asked by Azure, or by a gateway in front of
    /// it, is taken as this). Applies to a single endpoint too. Default 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,6}(ms|s|m|h)$"))]
    pub max_throttle_wait: Option<String>,
}

impl AzureOpenAIProxySpec {
    /// `spec.backends` as the sidecar reads it (`AOAI_PROXY_BACKENDS`), when set.
    pub fn backends_json(&self) -> Option<String> {
        if self.backends.is_empty() {
            return None;
        }
        let entries: Vec<BackendEntry> = self
            .backends
            .iter()
            .map(|b| BackendEntry {
                endpoint: b.endpoint.clone(),
                priority: b.priority,
                weight: b.weight,
                deployments: b
                    .deployments
                    .iter()
                    .map(|d| (d.name.clone(), d.backend_name.clone()))
                    .collect(),
            })
            .collect();
        Some(serde_json::to_string(&entries).expect("backends serialize"))
    }

    /// Every endpoint the sidecar may call, in the listed order.
    pub fn endpoints(&self) -> Vec<&str> {
        self.endpoint
            .iter()
            .map(String::as_str)
            .chain(self.backends.iter().map(|b| b.endpoint.as_str()))
            .collect()
    }
}

/// The egress proxy: its URL inline, or (when it carries credentials) from a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.httpsProxy), has(self.httpsProxyFrom)].filter(x, x).size() == 1").message("set exactly one of httpsProxy and httpsProxyFrom"))]
#[serde(rename_all = "camelCase")]
pub struct EgressProxySpec {
    /// The proxy, as http://host:port. Credentials do not belong in a spec: put the whole URL
    /// (http://user:password@host:port) in a Secret and use httpsProxyFrom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.contains('@')").message("httpsProxy must not carry credentials: use httpsProxyFrom with a Secret"))]
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^(http://)?[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?/?$")
    )]
    pub https_proxy: Option<String>,
    /// The proxy URL from a Secret key (the URL may carry user:password@).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_proxy_from: Option<SecretKeyRef>,
    /// Hosts reached directly (NO_PROXY): host names (with their subdomains), IP addresses,
    /// CIDR ranges, each optionally with :port, or "*".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub no_proxy: Vec<String>,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret in the same namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME_PATTERN))]
    pub secret_name: String,
    /// The key holding the value.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub key: String,
}

/// The CA bundle: a key of a ConfigMap or of a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.configMap), has(self.secret)].filter(x, x).size() == 1").message("set exactly one of configMap and secret"))]
#[serde(rename_all = "camelCase")]
pub struct TrustSpec {
    /// The bundle in a ConfigMap of the same namespace (CA certificates are public).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<BundleRef>,
    /// The bundle in a Secret of the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<BundleRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleRef {
    /// The ConfigMap's or Secret's name.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME_PATTERN))]
    pub name: String,
    /// The key holding the PEM bundle.
    #[serde(default = "default_bundle_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub key: String,
}

fn default_bundle_key() -> String {
    "ca.crt".into()
}

/// Azure clouds.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum AzureCloud {
    #[default]
    AzurePublicCloud,
    AzureUSGovernment,
    AzureChinaCloud,
}

impl AzureCloud {
    pub const ALL: [Self; 3] = [
        Self::AzurePublicCloud,
        Self::AzureUSGovernment,
        Self::AzureChinaCloud,
    ];

    /// The name `spec.cloud` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::AzurePublicCloud => "AzurePublicCloud",
            Self::AzureUSGovernment => "AzureUSGovernment",
            Self::AzureChinaCloud => "AzureChinaCloud",
        }
    }

    pub fn authority_host(self) -> &'static str {
        match self {
            // The proxy's own defaults: one statement of the public cloud's values.
            AzureCloud::AzurePublicCloud => aoai_proxy_contract::config::DEFAULT_AUTHORITY_HOST,
            AzureCloud::AzureUSGovernment => "https://login.microsoftonline.us",
            AzureCloud::AzureChinaCloud => "https://login.chinacloudapi.cn",
        }
    }

    pub fn scope(self) -> &'static str {
        match self {
            AzureCloud::AzurePublicCloud => aoai_proxy_contract::config::DEFAULT_SCOPE,
            AzureCloud::AzureUSGovernment => "https://cognitiveservices.azure.us/.default",
            AzureCloud::AzureChinaCloud => "https://cognitiveservices.azure.cn/.default",
        }
    }
}

/// Exactly one credential.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.clientCertificate), has(self.clientSecret), has(self.workloadIdentity), has(self.managedIdentity)].filter(x, x).size() == 1").message("set exactly one credential: clientCertificate, clientSecret, workloadIdentity or managedIdentity"))]
#[serde(rename_all = "camelCase")]
pub struct CredentialSpec {
    /// A client certificate (PEM) and its RSA private key from a Secret, such as a
    /// kubernetes.io/tls Secret or the seed sidecar's single PEM file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateSpec>,
    /// A client secret from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<ClientSecretSpec>,
    /// AKS workload identity: the webhook projects the pod's service-account token for Entra ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<WorkloadIdentitySpec>,
    /// The node's or pod's managed identity (IMDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_identity: Option<ManagedIdentitySpec>,
}

/// Which credential kind a spec uses (also `status.credential`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    ClientCertificate,
    ClientSecret,
    WorkloadIdentity,
    ManagedIdentity,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::ClientCertificate => "ClientCertificate",
            CredentialKind::ClientSecret => "ClientSecret",
            CredentialKind::WorkloadIdentity => "WorkloadIdentity",
            CredentialKind::ManagedIdentity => "ManagedIdentity",
        }
    }

    /// The proxy's own kind (its `AOAI_PROXY_CREDENTIAL` value).
    pub fn proxy_kind(self) -> aoai_proxy_contract::sidecar_env::CredentialKind {
        use aoai_proxy_contract::sidecar_env::CredentialKind as Proxy;
        match self {
            CredentialKind::ClientCertificate => Proxy::Certificate,
            CredentialKind::ClientSecret => Proxy::Secret,
            CredentialKind::WorkloadIdentity => Proxy::WorkloadIdentity,
            CredentialKind::ManagedIdentity => Proxy::ManagedIdentity,
        }
    }
}

/// The one credential a spec sets, with its settings.
#[derive(Clone, Copy, Debug)]
pub enum CredentialSource<'a> {
    ClientCertificate(&'a ClientCertificateSpec),
    ClientSecret(&'a ClientSecretSpec),
    WorkloadIdentity(&'a WorkloadIdentitySpec),
    ManagedIdentity(&'a ManagedIdentitySpec),
}

impl CredentialSource<'_> {
    pub fn kind(self) -> CredentialKind {
        match self {
            Self::ClientCertificate(_) => CredentialKind::ClientCertificate,
            Self::ClientSecret(_) => CredentialKind::ClientSecret,
            Self::WorkloadIdentity(_) => CredentialKind::WorkloadIdentity,
            Self::ManagedIdentity(_) => CredentialKind::ManagedIdentity,
        }
    }
}

impl CredentialSpec {
    /// The one credential set, or `None` when zero or several are (the schema forbids both).
    pub fn source(&self) -> Option<CredentialSource<'_>> {
        let set = [
            self.client_certificate
                .as_ref()
                .map(CredentialSource::ClientCertificate),
            self.client_secret
                .as_ref()
                .map(CredentialSource::ClientSecret),
            self.workload_identity
                .as_ref()
                .map(CredentialSource::WorkloadIdentity),
            self.managed_identity
                .as_ref()
                .map(CredentialSource::ManagedIdentity),
        ];
        let mut sources = set.into_iter().flatten();
        match (sources.next(), sources.next()) {
            (Some(source), None) => Some(source),
            _ => None,
        }
    }

    /// The kind of [`Self::source`].
    pub fn kind(&self) -> Option<CredentialKind> {
        self.source().map(CredentialSource::kind)
    }
}

/// A Secret key name (the characters Kubernetes allows in Secret data keys).
const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
/// A DNS-1123 subdomain (Secret names).
const SECRET_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateSpec {
    /// Secret in the same namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME_PATTERN))]
    pub secret_name: String,
    /// Key holding the PEM certificate (may also hold the key, as the seed sidecar's file did).
    #[serde(default = "default_certificate_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub certificate_key: String,
    /// Key holding the PEM private key (RSA, PKCS#8 or PKCS#1). The same key as certificateKey
    /// for a combined PEM file.
    #[serde(default = "default_private_key_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub private_key_key: String,
    /// Send the certificate chain (x5c) in the assertion, for subject-name/issuer authentication.
    #[serde(default)]
    pub send_certificate_chain: bool,
}

fn default_certificate_key() -> String {
    "tls.crt".into()
}

fn default_private_key_key() -> String {
    "tls.key".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientSecretSpec {
    /// Secret in the same namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME_PATTERN))]
    pub secret_name: String,
    /// Key holding the client secret.
    #[serde(default = "default_client_secret_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub key: String,
}

fn default_client_secret_key() -> String {
    "client-secret".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIdentitySpec {
    /// Audience of the projected service-account token (Entra ID's token exchange audience).
    #[serde(default = "default_audience")]
    #[schemars(length(min = 1, max = 512))]
    pub audience: String,
    /// Lifetime of the projected token; the kubelet renews it at 80 %.
    #[serde(default = "default_token_expiration")]
    #[schemars(range(min = 600, max = 86400))]
    pub expiration_seconds: i64,
}

impl Default for WorkloadIdentitySpec {
    fn default() -> Self {
        Self {
            audience: default_audience(),
            expiration_seconds: default_token_expiration(),
        }
    }
}

fn default_audience() -> String {
    "api://AzureADTokenExchange".into()
}

fn default_token_expiration() -> i64 {
    3600
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.clientId), has(self.objectId), has(self.resourceId)].filter(x, x).size() <= 1").message("choose a user-assigned identity by one of clientId, objectId or resourceId"))]
#[serde(rename_all = "camelCase")]
pub struct ManagedIdentitySpec {
    /// User-assigned identity by client id. System-assigned when no id is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ))]
    pub client_id: Option<String>,
    /// User-assigned identity by object (principal) id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ))]
    pub object_id: Option<String>,
    /// User-assigned identity by Azure resource id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/subscriptions/\S+$"), length(max = 1024))]
    pub resource_id: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboundKeysSpec {
    /// Secret in the same namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME_PATTERN))]
    pub secret_name: String,
    /// Key holding the accepted keys, one per line (two during a rotation).
    #[serde(default = "default_inbound_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub key: String,
    /// Key holding the one key application containers send; defaults to `key` (which must then
    /// hold a single line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub client_key: Option<String>,
}

fn default_inbound_key() -> String {
    "api-key".into()
}

/// Where the sidecar runs in the pod.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum NativeSidecarMode {
    /// A native sidecar when the cluster supports it (Kubernetes 1.29+), else a regular container.
    #[default]
    Auto,
    /// Always a native sidecar (an init container with restartPolicy: Always).
    Always,
    /// Always a regular container, placed first.
    Never,
}

/// Log levels of the sidecar.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.port != self.adminPort").message("port and adminPort must differ"))]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Image of the sidecar; the operator's default (its own version) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Port the sidecar forwards on, bound to 127.0.0.1 only.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,
    /// Port of the admin listener (health probes, metrics), reachable on the pod IP.
    #[serde(default = "default_admin_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub admin_port: i32,
    /// Requests and limits; default requests 10m CPU and 32Mi memory, limit 128Mi memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Log level of the sidecar.
    #[serde(default)]
    pub log_level: LogLevel,
    /// Native sidecar (init container with restartPolicy: Always) or regular container.
    #[serde(default)]
    pub native_sidecar: NativeSidecarMode,
    /// Adds prometheus.io/scrape "true", prometheus.io/port (the admin port) and
    /// prometheus.io/path "/metrics" to injected pods that set none of them, for a Prometheus
    /// that discovers pods by these annotations. Off by default: a pod has one such set, and its
    /// own usually describes the application's metrics.
    // Left out of the stored spec while false, so that config hashes written before it existed
    // stay the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("default" = false))]
    pub scrape_annotations: bool,
}

impl Default for SidecarSpec {
    fn default() -> Self {
        Self {
            image: None,
            port: default_port(),
            admin_port: default_admin_port(),
            resources: None,
            log_level: LogLevel::default(),
            native_sidecar: NativeSidecarMode::default(),
            scrape_annotations: false,
        }
    }
}

pub fn default_port() -> i32 {
    15080
}

pub fn default_admin_port() -> i32 {
    15081
}

/// An environment variable name.
const ENV_NAME_PATTERN: &str = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppEnvSpec {
    /// Variables set to the sidecar's base URL, http://127.0.0.1:<port> (Azure OpenAI SDKs,
    /// LangChain, LiteLLM, Rasa).
    #[serde(default = "default_endpoint_variables")]
    #[schemars(length(max = 32), inner(regex(pattern = ENV_NAME_PATTERN)))]
    pub endpoint_variables: Vec<String>,
    /// Variables set to the sidecar's Azure OpenAI v1 base URL, http://127.0.0.1:<port>/openai/v1
    /// (OpenAI SDKs, codex).
    #[serde(default = "default_openai_base_url_variables")]
    #[schemars(length(max = 32), inner(regex(pattern = ENV_NAME_PATTERN)))]
    pub openai_base_url_variables: Vec<String>,
    /// Variables set to the inbound key (from its Secret) or, when inbound keys are off, to
    /// apiKeyPlaceholder, since some SDKs refuse to start without a key.
    #[serde(default = "default_api_key_variables")]
    #[schemars(length(max = 32), inner(regex(pattern = ENV_NAME_PATTERN)))]
    pub api_key_variables: Vec<String>,
    /// Value of the API key variables when inbound keys are off. The proxy drops it.
    #[serde(default = "default_api_key_placeholder")]
    #[schemars(length(min = 1, max = 256))]
    pub api_key_placeholder: String,
}

impl Default for AppEnvSpec {
    fn default() -> Self {
        Self {
            endpoint_variables: default_endpoint_variables(),
            openai_base_url_variables: default_openai_base_url_variables(),
            api_key_variables: default_api_key_variables(),
            api_key_placeholder: default_api_key_placeholder(),
        }
    }
}

fn default_endpoint_variables() -> Vec<String> {
    vec!["AZURE_OPENAI_ENDPOINT".into(), "AZURE_API_BASE".into()]
}

fn default_openai_base_url_variables() -> Vec<String> {
    vec!["OPENAI_BASE_URL".into()]
}

fn default_api_key_variables() -> Vec<String> {
    vec![
        "AZURE_OPENAI_API_KEY".into(),
        "OPENAI_API_KEY".into(),
        "AZURE_API_KEY".into(),
    ]
}

fn default_api_key_placeholder() -> String {
    "unused-aoai-proxy-authenticates".into()
}

/// What happens to running workloads when the configuration changes.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum RolloutPolicy {
    /// Nothing: pods pick up the new configuration when they are next recreated.
    #[default]
    None,
    /// Restart Deployments, StatefulSets and DaemonSets whose pods run an older configuration
    /// (as `kubectl rollout restart`), once per change.
    Restart,
}

/// Observed state, written by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureOpenAIProxyStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, CredentialsValid, InboundKeysValid, CertificateExpiring.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The credential kind in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Expiry of the client certificate (RFC 3339), for certificate credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<String>,
    /// Hash of the configuration injected sidecars depend on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Pods injected with this configuration (any version of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_pods: Option<i32>,
    /// Injected pods running the current configHash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_pods: Option<i32>,
    /// The configHash for which workloads were last restarted (rollout: Restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_out_hash: Option<String>,
}

impl AzureOpenAIProxySpec {
    /// The authority host the sidecar uses.
    pub fn authority_host(&self) -> &str {
        self.authority_host
            .as_deref()
            .unwrap_or_else(|| self.cloud.authority_host())
    }

    /// The token scope the sidecar requests.
    pub fn scope(&self) -> &str {
        self.scope.as_deref().unwrap_or_else(|| self.cloud.scope())
    }
}

/// Hash of everything an injected pod depends on: the spec (but `rollout`, which only tells the
/// controller what to do) and the default image. Secret contents are not part of it, since the
/// sidecar re-reads them without a restart.
pub fn config_hash(spec: &AzureOpenAIProxySpec, default_image: &str) -> String {
    let spec = AzureOpenAIProxySpec {
        rollout: RolloutPolicy::default(),
        ..spec.clone()
    };
    let mut input = serde_json::to_vec(&spec).unwrap_or_default();
    input.push(0);
    input.extend_from_slice(default_image.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> AzureOpenAIProxySpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let s = spec(serde_json::json!({
            "endpoint": "https://r.openai.azure.com",
            "tenantId": "contoso.onmicrosoft.com",
            "clientId": "11111111-2222-3333-4444-555555555555",
            "credential": {"clientCertificate": {"secretName": "cert"}}
        }));
        assert_eq!(s.sidecar.port, 15080);
        assert_eq!(s.sidecar.admin_port, 15081);
        assert_eq!(s.sidecar.native_sidecar, NativeSidecarMode::Auto);
        assert_eq!(s.rollout, RolloutPolicy::None);
        assert_eq!(s.credential.kind(), Some(CredentialKind::ClientCertificate));
        let cert = s.credential.client_certificate.as_ref().unwrap();
        assert_eq!(
            (cert.certificate_key.as_str(), cert.private_key_key.as_str()),
            ("tls.crt", "tls.key")
        );
        assert_eq!(s.authority_host(), "https://login.microsoftonline.com");
        assert_eq!(s.scope(), "https://cognitiveservices.azure.com/.default");
        assert_eq!(
            s.app_env.endpoint_variables,
            ["AZURE_OPENAI_ENDPOINT", "AZURE_API_BASE"]
        );
    }

    #[test]
    fn cloud_sets_authority_and_scope() {
        let mut s = spec(serde_json::json!({
            "endpoint": "https://r.openai.azure.us",
            "cloud": "AzureUSGovernment",
            "credential": {"managedIdentity": {}}
        }));
        assert_eq!(s.authority_host(), "https://login.microsoftonline.us");
        assert_eq!(s.scope(), "https://cognitiveservices.azure.us/.default");
        s.scope = Some("api://custom/.default".into());
        assert_eq!(s.scope(), "api://custom/.default");
    }

    #[test]
    fn config_hash_is_stable_and_sensitive() {
        let base = spec(serde_json::json!({
            "endpoint": "https://r.openai.azure.com",
            "credential": {"managedIdentity": {}}
        }));
        let hash = config_hash(&base, "img:1");
        assert_eq!(hash.len(), 16);
        assert_eq!(hash, config_hash(&base.clone(), "img:1"));
        // The same spec written with its defaults spelled out hashes the same.
        let explicit = spec(serde_json::to_value(&base).unwrap());
        assert_eq!(hash, config_hash(&explicit, "img:1"));
        assert_ne!(hash, config_hash(&base, "img:2"));
        let mut changed = base.clone();
        changed.sidecar.port = 15090;
        assert_ne!(hash, config_hash(&changed, "img:1"));
        // The rollout policy does not change what pods run.
        let mut restart = base.clone();
        restart.rollout = RolloutPolicy::Restart;
        assert_eq!(hash, config_hash(&restart, "img:1"));
        // Pinned: a change here means every injected pod looks stale after an upgrade.
        assert_eq!(hash, config_hash(&base, "img:1"));
    }

    #[test]
    fn credential_kind_needs_exactly_one() {
        assert_eq!(CredentialSpec::default().kind(), None);
        let two = CredentialSpec {
            workload_identity: Some(WorkloadIdentitySpec::default()),
            managed_identity: Some(ManagedIdentitySpec::default()),
            ..Default::default()
        };
        assert_eq!(two.kind(), None);
    }
}
