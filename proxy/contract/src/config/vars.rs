//! Every variable the proxy reads, stated once: its name, its default and its help. `--help`, the
//! README's table and the parser's defaults all come from [`ENV_VARS`].

/// One environment variable: its name, its default (if any) and what it does.
pub struct EnvVar {
    pub name: &'static str,
    pub default: Option<&'static str>,
    pub help: &'static str,
}

const fn var(name: &'static str, default: Option<&'static str>, help: &'static str) -> EnvVar {
    EnvVar {
        name,
        default,
        help,
    }
}

/// Default scope: Azure OpenAI (Cognitive Services) in every public and sovereign cloud.
pub const DEFAULT_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// Default Entra ID authority (Azure public cloud).
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// The Azure Instance Metadata Service, the managed-identity endpoint on VMs and AKS nodes.
pub const DEFAULT_IMDS_HOST: &str = "http://169.254.169.254";

/// The variable names, one constant each: the operator writes these into the containers it
/// injects, so that a renamed variable fails to compile there instead of going unread.
pub mod names {
    pub const API_BASE_URL: &str = "API_BASE_URL";
    pub const TARGET_URL: &str = "TARGET_URL";
    pub const AOAI_PROXY_BACKENDS: &str = "AOAI_PROXY_BACKENDS";
    pub const AOAI_PROXY_RETRY_BODY_LIMIT: &str = "AOAI_PROXY_RETRY_BODY_LIMIT";
    pub const AOAI_PROXY_EJECT_AFTER: &str = "AOAI_PROXY_EJECT_AFTER";
    pub const AOAI_PROXY_EJECT_FOR: &str = "AOAI_PROXY_EJECT_FOR";
    pub const AOAI_PROXY_MAX_THROTTLE_WAIT: &str = "AOAI_PROXY_MAX_THROTTLE_WAIT";
    pub const HOST: &str = "HOST";
    pub const PORT: &str = "PORT";
    pub const AOAI_PROXY_ADMIN_HOST: &str = "AOAI_PROXY_ADMIN_HOST";
    pub const AOAI_PROXY_ADMIN_PORT: &str = "AOAI_PROXY_ADMIN_PORT";
    pub const AOAI_PROXY_CREDENTIAL: &str = "AOAI_PROXY_CREDENTIAL";
    pub const AZURE_TENANT_ID: &str = "AZURE_TENANT_ID";
    pub const AZURE_CLIENT_ID: &str = "AZURE_CLIENT_ID";
    pub const AZURE_CERTIFICATE_PATH: &str = "AZURE_CERTIFICATE_PATH";
    pub const AZURE_CLIENT_CERTIFICATE_PATH: &str = "AZURE_CLIENT_CERTIFICATE_PATH";
    pub const AOAI_PROXY_CERTIFICATE_KEY_PATH: &str = "AOAI_PROXY_CERTIFICATE_KEY_PATH";
    pub const AZURE_CLIENT_CERTIFICATE_PASSWORD: &str = "AZURE_CLIENT_CERTIFICATE_PASSWORD";
    pub const AZURE_CLIENT_SEND_CERTIFICATE_CHAIN: &str = "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN";
    pub const AZURE_CLIENT_SECRET: &str = "AZURE_CLIENT_SECRET";
    pub const AOAI_PROXY_CLIENT_SECRET_FILE: &str = "AOAI_PROXY_CLIENT_SECRET_FILE";
    pub const AZURE_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
    pub const AZURE_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";
    pub const IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";
    pub const IDENTITY_HEADER: &str = "IDENTITY_HEADER";
    pub const AZURE_POD_IDENTITY_AUTHORITY_HOST: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
    pub const AOAI_PROXY_MANAGED_IDENTITY_OBJECT_ID: &str = "AOAI_PROXY_MANAGED_IDENTITY_OBJECT_ID";
    pub const AOAI_PROXY_MANAGED_IDENTITY_RESOURCE_ID: &str =
        "AOAI_PROXY_MANAGED_IDENTITY_RESOURCE_ID";
    pub const AZURE_SCOPE: &str = "AZURE_SCOPE";
    pub const AZURE_OPENAI_SCOPE: &str = "AZURE_OPENAI_SCOPE";
    pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";
    pub const HTTPS_PROXY: &str = "HTTPS_PROXY";
    pub const HTTPS_PROXY_LOWERCASE: &str = "https_proxy";
    pub const HTTP_PROXY: &str = "HTTP_PROXY";
    pub const HTTP_PROXY_LOWERCASE: &str = "http_proxy";
    pub const NO_PROXY: &str = "NO_PROXY";
    pub const NO_PROXY_LOWERCASE: &str = "no_proxy";
    pub const EXPECTED_KEY: &str = "EXPECTED_KEY";
    pub const AOAI_PROXY_INBOUND_KEYS: &str = "AOAI_PROXY_INBOUND_KEYS";
    pub const AOAI_PROXY_INBOUND_KEYS_FILE: &str = "AOAI_PROXY_INBOUND_KEYS_FILE";
    pub const AOAI_PROXY_AUTH_MAX_FAILURES: &str = "AOAI_PROXY_AUTH_MAX_FAILURES";
    pub const AOAI_PROXY_AUTH_FAILURE_WINDOW: &str = "AOAI_PROXY_AUTH_FAILURE_WINDOW";
    pub const AOAI_PROXY_AUTH_LOCKOUT: &str = "AOAI_PROXY_AUTH_LOCKOUT";
    pub const AOAI_PROXY_CONNECT_TIMEOUT: &str = "AOAI_PROXY_CONNECT_TIMEOUT";
    pub const AOAI_PROXY_IDENTITY_TIMEOUT: &str = "AOAI_PROXY_IDENTITY_TIMEOUT";
    pub const AOAI_PROXY_UPSTREAM_TIMEOUT: &str = "AOAI_PROXY_UPSTREAM_TIMEOUT";
    pub const AOAI_PROXY_POOL_IDLE_TIMEOUT: &str = "AOAI_PROXY_POOL_IDLE_TIMEOUT";
    pub const AOAI_PROXY_HEADER_READ_TIMEOUT: &str = "AOAI_PROXY_HEADER_READ_TIMEOUT";
    pub const AOAI_PROXY_MAX_REQUEST_BODY: &str = "AOAI_PROXY_MAX_REQUEST_BODY";
    pub const AOAI_PROXY_SHUTDOWN_GRACE: &str = "AOAI_PROXY_SHUTDOWN_GRACE";
    pub const AOAI_PROXY_LOG_LEVEL: &str = "AOAI_PROXY_LOG_LEVEL";
    pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
    pub const OTEL_EXPORTER_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
    pub const OTEL_EXPORTER_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
    pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
    pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
    pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
    pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
    pub const AOAI_PROXY_LOG_FORMAT: &str = "AOAI_PROXY_LOG_FORMAT";
}

/// Every environment variable the proxy reads, in the order `--help` and the README list them.
pub const ENV_VARS: &[EnvVar] = &[
    // Upstream and listener (seed sidecar names first, then aliases).
    var(
        names::API_BASE_URL,
        None,
        "Azure OpenAI endpoint to forward to, e.g. https://my-resource.openai.azure.com. May carry a path prefix. Required (or TARGET_URL).",
    ),
    var(
        names::TARGET_URL,
        None,
        "Alias of API_BASE_URL (the Go managed-identity proxy's name), e.g. https://my-resource.openai.azure.com/openai/.",
    ),
    var(
        names::AOAI_PROXY_BACKENDS,
        None,
        r#"Several Azure OpenAI endpoints instead of API_BASE_URL, as a JSON list: [{"endpoint":"https://ptu.openai.azure.com","priority":0,"weight":1,"deployments":{"gpt-4o":"gpt-4o-ptu"}}, ...]. Lower priority first, weight shares requests within a priority (default 1), deployments maps the name in the request path to this resource's. One token (AZURE_SCOPE) serves them all."#,
    ),
    var(
        names::AOAI_PROXY_RETRY_BODY_LIMIT,
        Some("4Mi"),
        "With several backends: request bodies up to this size are kept while they stream, so the request can go to the next backend on a 429 or a fault; larger bodies stream once, without failover.",
    ),
    var(
        names::AOAI_PROXY_EJECT_AFTER,
        Some("3"),
        "With several backends: consecutive faults (connection failure, reset, timeout, 500/502/503/504) after which a backend is skipped for AOAI_PROXY_EJECT_FOR.",
    ),
    var(
        names::AOAI_PROXY_EJECT_FOR,
        Some("30s"),
        "With several backends: how long an ejected backend is skipped (it is tried again only when no other is left); its first fault after that ejects it again.",
    ),
    var(
        names::AOAI_PROXY_MAX_THROTTLE_WAIT,
        Some("1m"),
        "Longest wait a 429 may impose: a backend's cool-down, and the Retry-After callers are told, are cut to this (a longer retry-after-ms, Retry-After or x-ratelimit-reset-* is taken as this; a value that is not a number is ignored). Applies to one backend too.",
    ),
    var(
        names::HOST,
        Some("0.0.0.0"),
        "Address the forwarding listener binds. Use 127.0.0.1 in a pod: whoever reaches this port gets Azure-authenticated calls.",
    ),
    var(
        names::PORT,
        Some("8080"),
        "Port of the forwarding listener.",
    ),
    var(
        names::AOAI_PROXY_ADMIN_HOST,
        Some("0.0.0.0"),
        "Address of the admin listener (/health, /livez, /readyz, /metrics; never forwarded).",
    ),
    var(
        names::AOAI_PROXY_ADMIN_PORT,
        Some("8081"),
        "Port of the admin listener.",
    ),
    // Credential selection.
    var(
        names::AOAI_PROXY_CREDENTIAL,
        None,
        "Credential to use: certificate, secret, workload-identity or managed-identity. Inferred from the variables below when unset.",
    ),
    var(
        names::AZURE_TENANT_ID,
        None,
        "Entra ID tenant (GUID or domain). Required for certificate, secret and workload-identity credentials.",
    ),
    var(
        names::AZURE_CLIENT_ID,
        None,
        "Application (client) id. Required for certificate, secret and workload identity; for managed identity, selects a user-assigned identity.",
    ),
    var(
        names::AZURE_CERTIFICATE_PATH,
        None,
        "PEM file with the client certificate and its private key (the seed sidecar's name). Selects the certificate credential.",
    ),
    var(
        names::AZURE_CLIENT_CERTIFICATE_PATH,
        None,
        "Azure SDK name for the certificate file: PEM, or PKCS#12 when AZURE_CLIENT_CERTIFICATE_PASSWORD is set.",
    ),
    var(
        names::AOAI_PROXY_CERTIFICATE_KEY_PATH,
        None,
        "PEM private key file, when the certificate file holds only the certificate (tls.key of a kubernetes.io/tls Secret).",
    ),
    var(
        names::AZURE_CLIENT_CERTIFICATE_PASSWORD,
        None,
        "Password of a PKCS#12 certificate file.",
    ),
    var(
        names::AZURE_CLIENT_SEND_CERTIFICATE_CHAIN,
        Some("false"),
        "Send the certificate chain (x5c) in the client assertion, for subject-name/issuer authentication.",
    ),
    var(
        names::AZURE_CLIENT_SECRET,
        None,
        "Client secret. Selects the secret credential.",
    ),
    var(
        names::AOAI_PROXY_CLIENT_SECRET_FILE,
        None,
        "File holding the client secret, re-read at each token refresh (a rotated Kubernetes Secret needs no restart). Selects the secret credential.",
    ),
    var(
        names::AZURE_FEDERATED_TOKEN_FILE,
        None,
        "Projected service-account token for workload identity, read at each exchange. Selects the workload-identity credential.",
    ),
    var(
        names::AZURE_AUTHORITY_HOST,
        Some(DEFAULT_AUTHORITY_HOST),
        "Entra ID authority: https://login.microsoftonline.us (US Government), https://login.chinacloudapi.cn (China), or any https host.",
    ),
    var(
        names::IDENTITY_ENDPOINT,
        None,
        "App Service style managed-identity endpoint (with IDENTITY_HEADER). Selects the managed-identity credential.",
    ),
    var(
        names::IDENTITY_HEADER,
        None,
        "Secret header value for IDENTITY_ENDPOINT.",
    ),
    var(
        names::AZURE_POD_IDENTITY_AUTHORITY_HOST,
        Some(DEFAULT_IMDS_HOST),
        "Base URL of the Instance Metadata Service used for managed identity (the Azure SDKs' override).",
    ),
    var(
        names::AOAI_PROXY_MANAGED_IDENTITY_OBJECT_ID,
        None,
        "User-assigned managed identity by object (principal) id.",
    ),
    var(
        names::AOAI_PROXY_MANAGED_IDENTITY_RESOURCE_ID,
        None,
        "User-assigned managed identity by Azure resource id.",
    ),
    var(
        names::AZURE_SCOPE,
        Some(DEFAULT_SCOPE),
        "Scope of the token the proxy requests.",
    ),
    var(
        names::AZURE_OPENAI_SCOPE,
        None,
        "Alias of AZURE_SCOPE (the Go managed-identity proxy's name).",
    ),
    var(
        names::SSL_CERT_FILE,
        None,
        "PEM bundle trusted in addition to the system roots, for the upstream and the identity endpoints; re-read when it changes.",
    ),
    // Egress through an HTTP proxy, as the Azure SDKs read it.
    var(
        names::HTTPS_PROXY,
        None,
        "HTTP proxy for https targets (the upstream and Entra ID), as http://[user:password@]host:port; connections are CONNECT tunnels. The credentials are never logged.",
    ),
    var(names::HTTPS_PROXY_LOWERCASE, None, "Same as HTTPS_PROXY."),
    var(
        names::HTTP_PROXY,
        None,
        "HTTP proxy for http targets (an http upstream or identity endpoint), CONNECT tunnels too.",
    ),
    var(names::HTTP_PROXY_LOWERCASE, None, "Same as HTTP_PROXY."),
    var(
        names::NO_PROXY,
        None,
        "Hosts reached without the proxy, comma-separated: * (all), a host name (with its subdomains; .corp and *.corp alike), an IP address or a CIDR range, each optionally with :port. 169.254.169.254 (IMDS) and other link-local addresses never use the proxy.",
    ),
    var(names::NO_PROXY_LOWERCASE, None, "Same as NO_PROXY."),
    // Inbound authentication.
    var(
        names::EXPECTED_KEY,
        None,
        "A key callers must present (api-key: K or Authorization: Bearer K). Inbound authentication is off when no key is configured.",
    ),
    var(
        names::AOAI_PROXY_INBOUND_KEYS,
        None,
        "Comma-separated keys callers may present, in addition to EXPECTED_KEY.",
    ),
    var(
        names::AOAI_PROXY_INBOUND_KEYS_FILE,
        None,
        "File with one accepted key per line, re-read when it changes (a rotated Kubernetes Secret needs no restart).",
    ),
    var(
        names::AOAI_PROXY_AUTH_MAX_FAILURES,
        Some("10"),
        "Failed key checks from one client IP, within the window, that lock that IP out.",
    ),
    var(
        names::AOAI_PROXY_AUTH_FAILURE_WINDOW,
        Some("1m"),
        "Window in which failed key checks are counted.",
    ),
    var(
        names::AOAI_PROXY_AUTH_LOCKOUT,
        Some("5m"),
        "How long a locked-out IP gets 429 with Retry-After.",
    ),
    // Timeouts and limits.
    var(
        names::AOAI_PROXY_CONNECT_TIMEOUT,
        Some("10s"),
        "Timeout to connect to the upstream (TCP and TLS).",
    ),
    var(
        names::AOAI_PROXY_IDENTITY_TIMEOUT,
        Some("30s"),
        "Timeout of one call to the identity endpoint (Entra ID or managed identity); a hung endpoint is retried after it.",
    ),
    var(
        names::AOAI_PROXY_UPSTREAM_TIMEOUT,
        Some("10m"),
        "Timeout for the upstream's response headers; a streamed body may last longer. Exceeded: 504.",
    ),
    var(
        names::AOAI_PROXY_POOL_IDLE_TIMEOUT,
        Some("90s"),
        "How long an idle upstream connection stays in the pool.",
    ),
    var(
        names::AOAI_PROXY_HEADER_READ_TIMEOUT,
        Some("10s"),
        "Time a client has to send its request headers (cuts off slow clients).",
    ),
    var(
        names::AOAI_PROXY_MAX_REQUEST_BODY,
        None,
        "Largest request body accepted (e.g. 25Mi); larger gets 413. Unlimited when unset.",
    ),
    var(
        names::AOAI_PROXY_SHUTDOWN_GRACE,
        Some("25s"),
        "On SIGTERM/SIGINT, how long in-flight requests and streams may run before the proxy exits.",
    ),
    // Logs.
    var(
        names::AOAI_PROXY_LOG_LEVEL,
        Some("info"),
        "Log level or tracing filter (error, warn, info, debug, or e.g. info,aoai_proxy=debug). Request lines are at info.",
    ),
    var(
        names::AOAI_PROXY_LOG_FORMAT,
        Some("text"),
        "Log format: text or json.",
    ),
    // Traces (OpenTelemetry's own names).
    var(
        names::OTEL_EXPORTER_OTLP_ENDPOINT,
        None,
        "OTLP/HTTP collector base URL, e.g. http://otel-collector.observability:4318; spans go to its /v1/traces. Traces are exported only when this or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set.",
    ),
    var(
        names::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
        None,
        "Full OTLP/HTTP traces URL, used as written (takes precedence over OTEL_EXPORTER_OTLP_ENDPOINT).",
    ),
    var(
        names::OTEL_EXPORTER_OTLP_PROTOCOL,
        Some("http/protobuf"),
        "http/protobuf or http/json. grpc is not supported: use the collector's OTLP/HTTP port.",
    ),
    var(
        names::OTEL_EXPORTER_OTLP_HEADERS,
        None,
        "Headers sent with each export, key=value pairs separated by commas, values percent-encoded (e.g. a collector's authorization). Secret: never logged.",
    ),
    var(
        names::OTEL_EXPORTER_OTLP_TIMEOUT,
        Some("10000"),
        "Milliseconds one export may take; spans that cannot be sent are dropped, requests never wait for them.",
    ),
    var(
        names::OTEL_TRACES_SAMPLER,
        Some("parentbased_always_on"),
        "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio.",
    ),
    var(
        names::OTEL_TRACES_SAMPLER_ARG,
        Some("1.0"),
        "Ratio of traces kept by the traceidratio samplers, from 0 to 1.",
    ),
    var(
        names::OTEL_SERVICE_NAME,
        Some("aoai-proxy"),
        "service.name of the spans.",
    ),
    var(
        names::OTEL_RESOURCE_ATTRIBUTES,
        None,
        "More resource attributes of the spans, key=value pairs separated by commas, values percent-encoded (e.g. k8s.namespace.name=shop).",
    ),
    var(
        names::OTEL_SDK_DISABLED,
        Some("false"),
        "true turns trace export off whatever else is set.",
    ),
];
