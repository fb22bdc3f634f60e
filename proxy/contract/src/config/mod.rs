//! Configuration from environment variables, validated once at start.
//!
//! Every variable the proxy reads is listed in [`ENV_VARS`] (`vars`); `aoai-proxy --help` prints
//! that table and a test checks that the README documents each entry. What is set is read into a
//! [`SidecarEnv`] (see `sidecar_env`); here each value is checked: the credential in `credential`,
//! the backends and failover in `backends`, the timeouts and limits in `limits`. Parsing is a pure
//! function of a lookup closure so that tests never touch the process environment.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};

use crate::egress::{Egress, NoProxy, ProxyUrl};
use crate::units::parse_duration;

mod backends;
mod credential;
mod limits;
mod traces;
mod vars;

pub use crate::sidecar_env::CredentialKind;
use crate::sidecar_env::{Aliased, SecretValue, SidecarEnv};
pub use backends::{
    Backend, BackendEntry, Failover, MAX_BACKENDS, MAX_WEIGHT, is_deployment_name, parse_backends,
};
use credential::credential_from;
pub use credential::{
    Credential, EntraApp, ManagedIdentityEndpoint, SecretSource, UserAssignedId, is_guid,
};
pub use limits::Limits;
pub use traces::{OtlpProtocol, RootSampler, Sampler, Traces};
pub use vars::{DEFAULT_AUTHORITY_HOST, DEFAULT_IMDS_HOST, DEFAULT_SCOPE, ENV_VARS, EnvVar, names};

/// A configuration error: which variable, and what is wrong with it. Displayed as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A message can quote what was set (a JSON key, a path).
        write!(f, "{}: {}", self.variable, OneLine(&self.message))
    }
}

/// Text that came from outside (a value that was set, an endpoint's answer) written on one line:
/// its control characters (line breaks, terminal escapes) escaped, the rest as it is.
pub struct OneLine<'a>(pub &'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

pub(crate) fn error(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        message: message.into(),
    }
}

/// A value that must never be printed: Debug and Display show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is sent or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The upstream (Azure OpenAI) base URL, split for cheap per-request joining.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix without a trailing slash: "" or e.g. "/openai".
    pub path_prefix: String,
}

impl Upstream {
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: Uri = text.parse().map_err(|_| {
            format!("{text:?} is not a URL (example: https://my-resource.openai.azure.com)")
        })?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("{text:?} has no scheme; use https://..."))?;
        if scheme != Scheme::HTTPS && scheme != Scheme::HTTP {
            return Err(format!("{text:?} must start with https:// (or http://)"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{text:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{text:?} must not carry credentials"));
        }
        if uri.query().is_some() || text.contains('#') {
            return Err(format!("{text:?} must not carry a query or fragment"));
        }
        let path_prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Self {
            scheme,
            authority,
            path_prefix,
        })
    }

    /// The upstream's path and query for a caller's request target: the prefix joined with
    /// exactly one slash. Without a prefix, the caller's own (already parsed) path is reused.
    pub fn path_for(&self, target: &Uri) -> Result<PathAndQuery, http::uri::InvalidUri> {
        let path_and_query = target.path_and_query().map_or("/", |pq| pq.as_str());
        if self.path_prefix.is_empty()
            && path_and_query.starts_with('/')
            && let Some(pq) = target.path_and_query()
        {
            return Ok(pq.clone());
        }
        let mut joined = String::with_capacity(self.path_prefix.len() + path_and_query.len() + 1);
        joined.push_str(&self.path_prefix);
        if !path_and_query.starts_with('/') {
            joined.push('/');
        }
        joined.push_str(path_and_query);
        PathAndQuery::try_from(joined)
    }

    pub fn is_loopback(&self) -> bool {
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme, self.authority, self.path_prefix
        )
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Inbound (caller) authentication settings.
#[derive(Debug, Clone)]
pub struct InboundAuthConfig {
    pub keys: Vec<Secret>,
    pub keys_file: Option<PathBuf>,
    pub max_failures: u32,
    pub failure_window: Duration,
    pub lockout: Duration,
}

impl InboundAuthConfig {
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty() || self.keys_file.is_some()
    }
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Never empty; the first of the lowest priority is the primary.
    pub backends: Vec<Backend>,
    pub failover: Failover,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub credential: Credential,
    pub authority_host: String,
    pub scope: String,
    pub extra_roots: Option<PathBuf>,
    pub egress: Egress,
    pub inbound: InboundAuthConfig,
    pub limits: Limits,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Trace export; `None` when off.
    pub traces: Option<Traces>,
}

/// The default of `name` in [`ENV_VARS`]. A variable read with a default must have one there.
fn default_of(name: &str) -> &'static str {
    ENV_VARS
        .iter()
        .find(|v| v.name == name)
        .and_then(|v| v.default)
        .unwrap_or_else(|| panic!("{name} has no default in ENV_VARS"))
}

/// The value of `name`, or else its default in [`ENV_VARS`] (the one statement of each default,
/// which `--help` and the README print), through `parse`.
fn parsed<T>(
    name: &'static str,
    value: &Option<String>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    parse(value.as_deref().unwrap_or_else(|| default_of(name))).map_err(|m| error(name, m))
}

/// The value of `name` through `parse`, or `None` for a variable without a default.
fn optional<T>(
    name: &'static str,
    value: &Option<String>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    value
        .as_deref()
        .map(|text| parse(text).map_err(|m| error(name, m)))
        .transpose()
}

fn duration(name: &'static str, value: &Option<String>) -> Result<Duration, ConfigError> {
    parsed(name, value, parse_duration)
}

fn positive_duration(name: &'static str, value: &Option<String>) -> Result<Duration, ConfigError> {
    let duration = duration(name, value)?;
    if duration.is_zero() {
        return Err(error(name, "must be greater than zero"));
    }
    Ok(duration)
}

fn positive_number(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{text:?} is not a positive whole number")),
    }
}

fn bool(name: &'static str, value: &Option<String>) -> Result<bool, ConfigError> {
    parsed(name, value, |text| {
        match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(format!("{text:?} is not a boolean (use true or false)")),
        }
    })
}

/// A secret's text. A reference to a Kubernetes Secret is the kubelet's to resolve: the sidecar
/// never sees one, but a `SidecarEnv` built by hand can hold it.
fn inline(name: &'static str, value: &SecretValue) -> Result<Secret, ConfigError> {
    value.inline().map(Secret::new).ok_or_else(|| {
        error(
            name,
            "names a Kubernetes Secret, which only the kubelet resolves",
        )
    })
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{text:?} is not a port number (1-65535)")),
    }
}

fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address (examples: 0.0.0.0, 127.0.0.1, ::)"))
}

/// Accepts `https://host[:port]` (a trailing slash is dropped) or a bare host name.
fn parse_authority_host(text: &str) -> Result<String, String> {
    let url = if text.contains("://") {
        text.to_string()
    } else {
        format!("https://{text}")
    };
    let uri: Uri = url.parse().map_err(|_| {
        format!("{text:?} is not a URL (example: https://login.microsoftonline.com)")
    })?;
    if uri.scheme() != Some(&Scheme::HTTPS) {
        return Err(format!(
            "{text:?} must be https: the token request carries the credential"
        ));
    }
    if uri.authority().is_none() || uri.query().is_some() {
        return Err(format!("{text:?} must be https://host[:port]"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn parse_http_url(text: &str) -> Result<String, String> {
    let uri: Uri = text.parse().map_err(|_| format!("{text:?} is not a URL"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(text.trim_end_matches('/').to_string()),
        _ => Err(format!("{text:?} must be an http:// or https:// URL")),
    }
}

fn parse_scope(text: &str) -> Result<String, String> {
    if text.chars().any(char::is_whitespace) {
        return Err(format!("{text:?} must be one scope, without spaces"));
    }
    Ok(text.to_string())
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_process_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (name → value), validating every variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::from_sidecar_env(&SidecarEnv::from_lookup(lookup)?)
    }

    /// Checks every value of `env`; the error names the variable at fault.
    pub fn from_sidecar_env(env: &SidecarEnv) -> Result<Self, ConfigError> {
        let backends = backends::backends_from(&env.upstream)?;
        let failover = Failover::from_env(&env.failover)?;

        let host = parsed(names::HOST, &env.listener.host, parse_ip)?;
        let port = parsed(names::PORT, &env.listener.port, parse_port)?;
        let admin_host = parsed(names::AOAI_PROXY_ADMIN_HOST, &env.admin.host, parse_ip)?;
        let admin_port = parsed(names::AOAI_PROXY_ADMIN_PORT, &env.admin.port, parse_port)?;
        if admin_port == port {
            return Err(error(
                names::AOAI_PROXY_ADMIN_PORT,
                format!("{admin_port} is also PORT; the admin listener needs its own port"),
            ));
        }

        let credential = credential_from(&env.credential)?;
        let authority_host = parsed(
            names::AZURE_AUTHORITY_HOST,
            &env.authority_host,
            parse_authority_host,
        )?;
        let scope = match &env.scope {
            Some(scope) => parse_scope(&scope.value).map_err(|m| {
                error(
                    scope.variable(names::AZURE_SCOPE, names::AZURE_OPENAI_SCOPE),
                    m,
                )
            })?,
            None => default_of(names::AZURE_SCOPE).to_string(),
        };
        let extra_roots = env.trust_bundle.as_ref().map(PathBuf::from);
        let proxy = |value: &Option<Aliased<SecretValue>>, name, alias| match value {
            Some(value) => {
                let variable = value.variable(name, alias);
                let text = inline(variable, &value.value)?;
                ProxyUrl::parse(text.expose())
                    .map(Some)
                    .map_err(|message| error(variable, message))
            }
            None => Ok(None),
        };
        let egress = Egress {
            https: proxy(
                &env.egress.https_proxy,
                names::HTTPS_PROXY,
                names::HTTPS_PROXY_LOWERCASE,
            )?,
            http: proxy(
                &env.egress.http_proxy,
                names::HTTP_PROXY,
                names::HTTP_PROXY_LOWERCASE,
            )?,
            no_proxy: match &env.egress.no_proxy {
                Some(list) => NoProxy::parse(&list.value).map_err(|message| {
                    error(
                        list.variable(names::NO_PROXY, names::NO_PROXY_LOWERCASE),
                        message,
                    )
                })?,
                None => NoProxy::default(),
            },
        };

        let inbound = &env.inbound;
        let mut keys: Vec<Secret> = Vec::new();
        if let Some(key) = &inbound.expected_key {
            keys.push(inline(names::EXPECTED_KEY, key)?);
        }
        if let Some(list) = &inbound.keys {
            let list = inline(names::AOAI_PROXY_INBOUND_KEYS, list)?;
            keys.extend(
                list.expose()
                    .split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(Secret::new),
            );
        }
        let inbound = InboundAuthConfig {
            keys,
            keys_file: inbound.keys_file.as_ref().map(PathBuf::from),
            max_failures: parsed(
                names::AOAI_PROXY_AUTH_MAX_FAILURES,
                &inbound.max_failures,
                positive_number,
            )?,
            failure_window: duration(
                names::AOAI_PROXY_AUTH_FAILURE_WINDOW,
                &inbound.failure_window,
            )?,
            lockout: duration(names::AOAI_PROXY_AUTH_LOCKOUT, &inbound.lockout)?,
        };

        let limits = Limits::from_env(&env.limits)?;
        let log_level = parsed(names::AOAI_PROXY_LOG_LEVEL, &env.log.level, |t| {
            Ok(t.to_string())
        })?;
        let log_format = parsed(names::AOAI_PROXY_LOG_FORMAT, &env.log.format, |t| {
            match t.to_ascii_lowercase().as_str() {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err(format!("{t:?} is not a log format (use text or json)")),
            }
        })?;

        let traces = Traces::from_env(&env.traces)?;

        Ok(Config {
            backends,
            failover,
            listen: SocketAddr::new(host, port),
            admin_listen: SocketAddr::new(admin_host, admin_port),
            credential,
            authority_host,
            scope,
            extra_roots,
            egress,
            inbound,
            limits,
            log_level,
            log_format,
            traces,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    fn err(vars: &[(&str, &str)]) -> ConfigError {
        config(vars).expect_err("configuration should be rejected")
    }

    const BASE: (&str, &str) = ("API_BASE_URL", "https://res.openai.azure.com");

    #[test]
    fn seed_sidecar_environment() {
        let c = config(&[
            BASE,
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT),
            ("AZURE_CERTIFICATE_PATH", "/certs/cert.pem"),
        ])
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.admin_listen, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(c.scope, DEFAULT_SCOPE);
        assert_eq!(c.authority_host, DEFAULT_AUTHORITY_HOST);
        assert_eq!(
            c.backends[0].upstream.to_string(),
            "https://res.openai.azure.com"
        );
        assert!(!c.inbound.enabled());
        assert_eq!(c.log_format, LogFormat::Text);
        match c.credential {
            Credential::Certificate {
                path,
                path_variable,
                send_chain,
                password,
                ..
            } => {
                assert_eq!(path, PathBuf::from("/certs/cert.pem"));
                assert_eq!(path_variable, "AZURE_CERTIFICATE_PATH");
                assert!(!send_chain);
                assert!(password.is_none());
            }
            other => panic!("expected certificate, got {other:?}"),
        }
    }

    #[test]
    fn go_proxy_environment_means_managed_identity() {
        let c = config(&[
            ("TARGET_URL", "https://res.openai.azure.com/openai/"),
            ("EXPECTED_KEY", "k1"),
            (
                "AZURE_OPENAI_SCOPE",
                "https://cognitiveservices.azure.us/.default",
            ),
        ])
        .unwrap();
        assert_eq!(c.backends[0].upstream.path_prefix, "/openai");
        assert_eq!(c.scope, "https://cognitiveservices.azure.us/.default");
        assert_eq!(c.inbound.keys, vec![Secret::new("k1")]);
        assert_eq!(
            c.credential,
            Credential::ManagedIdentity {
                endpoint: ManagedIdentityEndpoint::Imds {
                    base: DEFAULT_IMDS_HOST.into()
                },
                id: None
            }
        );
    }

    #[test]
    fn aliases_must_agree() {
        let e = err(&[BASE, ("TARGET_URL", "https://other.openai.azure.com")]);
        assert_eq!(e.variable, "TARGET_URL");
        assert!(e.to_string().contains("contradicts API_BASE_URL"), "{e}");
        // The same value twice is fine.
        config(&[BASE, ("TARGET_URL", BASE.1)]).unwrap();
        let e = err(&[BASE, ("AZURE_SCOPE", "a"), ("AZURE_OPENAI_SCOPE", "b")]);
        assert_eq!(e.variable, "AZURE_OPENAI_SCOPE");
    }

    #[test]
    fn several_backends_replace_the_base_url() {
        let list = r#"[{"endpoint":"https://a.openai.azure.com"},{"endpoint":"https://b.openai.azure.com","priority":1}]"#;
        let c = config(&[
            ("AOAI_PROXY_BACKENDS", list),
            ("AOAI_PROXY_CREDENTIAL", "managed-identity"),
        ])
        .unwrap();
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.failover, Failover::default());
        let both = config(&[
            ("AOAI_PROXY_BACKENDS", list),
            BASE,
            ("AOAI_PROXY_CREDENTIAL", "managed-identity"),
        ])
        .unwrap_err();
        assert_eq!(both.variable, "AOAI_PROXY_BACKENDS");
        assert!(
            both.message.starts_with("contradicts API_BASE_URL"),
            "{both}"
        );
        for (name, value) in [
            ("AOAI_PROXY_BACKENDS", "[]"),
            ("AOAI_PROXY_EJECT_AFTER", "0"),
            ("AOAI_PROXY_EJECT_FOR", "0s"),
            ("AOAI_PROXY_RETRY_BODY_LIMIT", "lots"),
        ] {
            let e = config(&[
                ("AOAI_PROXY_BACKENDS", list),
                ("AOAI_PROXY_CREDENTIAL", "managed-identity"),
                (name, value),
            ])
            .unwrap_err();
            assert_eq!(e.variable, name, "{e}");
        }
    }

    #[test]
    fn missing_upstream_names_the_variable() {
        let e = err(&[]);
        assert_eq!(e.variable, "API_BASE_URL");
        assert!(
            e.to_string().starts_with("API_BASE_URL: is required"),
            "{e}"
        );
        // Empty counts as unset.
        assert_eq!(err(&[("API_BASE_URL", "  ")]).variable, "API_BASE_URL");
    }

    #[test]
    fn malformed_values_name_the_variable() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (
                &[("API_BASE_URL", "res.openai.azure.com")],
                "API_BASE_URL",
                "no scheme",
            ),
            (&[("API_BASE_URL", "ftp://x")], "API_BASE_URL", "https://"),
            (
                &[("API_BASE_URL", "https://x/?a=b")],
                "API_BASE_URL",
                "query",
            ),
            (
                &[("API_BASE_URL", "https://u:p@x")],
                "API_BASE_URL",
                "credentials",
            ),
            (&[BASE, ("PORT", "80a")], "PORT", "not a port"),
            (&[BASE, ("PORT", "0")], "PORT", "not a port"),
            (&[BASE, ("PORT", "70000")], "PORT", "not a port"),
            (&[BASE, ("HOST", "localhost:1")], "HOST", "not an IP"),
            (
                &[BASE, ("AOAI_PROXY_ADMIN_PORT", "8080")],
                "AOAI_PROXY_ADMIN_PORT",
                "own port",
            ),
            (
                &[BASE, ("AOAI_PROXY_CONNECT_TIMEOUT", "10 seconds")],
                "AOAI_PROXY_CONNECT_TIMEOUT",
                "unknown unit",
            ),
            (
                &[BASE, ("AOAI_PROXY_UPSTREAM_TIMEOUT", "0s")],
                "AOAI_PROXY_UPSTREAM_TIMEOUT",
                "greater than zero",
            ),
            (
                &[BASE, ("AOAI_PROXY_MAX_REQUEST_BODY", "lots")],
                "AOAI_PROXY_MAX_REQUEST_BODY",
                "byte size",
            ),
            (
                &[BASE, ("AOAI_PROXY_AUTH_MAX_FAILURES", "0")],
                "AOAI_PROXY_AUTH_MAX_FAILURES",
                "positive",
            ),
            (
                &[BASE, ("AOAI_PROXY_LOG_FORMAT", "xml")],
                "AOAI_PROXY_LOG_FORMAT",
                "text or json",
            ),
            (
                &[BASE, ("AZURE_AUTHORITY_HOST", "http://login.example")],
                "AZURE_AUTHORITY_HOST",
                "must be https",
            ),
            (&[BASE, ("AZURE_SCOPE", "a b")], "AZURE_SCOPE", "one scope"),
            (
                &[BASE, ("AOAI_PROXY_CREDENTIAL", "password")],
                "AOAI_PROXY_CREDENTIAL",
                "not a credential kind",
            ),
            // The JSON error quotes the unknown key, decoded: its line break stays escaped.
            (
                &[(
                    "AOAI_PROXY_BACKENDS",
                    r#"[{"endpoint":"https://a.openai.azure.com","prio\nrity":1}]"#,
                )],
                "AOAI_PROXY_BACKENDS",
                "unknown field `prio\\nrity`",
            ),
        ];
        for (vars, variable, fragment) in cases {
            let e = err(vars);
            assert_eq!(e.variable, *variable, "{vars:?} → {e}");
            assert!(e.to_string().contains(fragment), "{vars:?} → {e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn certificate_needs_tenant_and_guid_client() {
        let e = err(&[
            BASE,
            ("AZURE_CERTIFICATE_PATH", "/c.pem"),
            ("AZURE_CLIENT_ID", CLIENT),
        ]);
        assert_eq!(e.variable, "AZURE_TENANT_ID");
        let e = err(&[
            BASE,
            ("AZURE_CERTIFICATE_PATH", "/c.pem"),
            ("AZURE_TENANT_ID", "contoso/../x"),
            ("AZURE_CLIENT_ID", CLIENT),
        ]);
        assert_eq!(e.variable, "AZURE_TENANT_ID");
        let e = err(&[
            BASE,
            ("AZURE_CERTIFICATE_PATH", "/c.pem"),
            ("AZURE_TENANT_ID", "contoso.onmicrosoft.com"),
            ("AZURE_CLIENT_ID", "my-app"),
        ]);
        assert_eq!(e.variable, "AZURE_CLIENT_ID");
        assert!(e.message.contains("GUID"));
    }

    #[test]
    fn contradictory_credentials_are_refused_unless_chosen() {
        let vars = [
            BASE,
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT),
            ("AZURE_CERTIFICATE_PATH", "/c.pem"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"),
        ];
        let e = err(&vars);
        assert_eq!(e.variable, "AOAI_PROXY_CREDENTIAL");
        assert!(
            e.message
                .contains("AZURE_CERTIFICATE_PATH, AZURE_FEDERATED_TOKEN_FILE"),
            "{e}"
        );
        let mut chosen = vars.to_vec();
        chosen.push(("AOAI_PROXY_CREDENTIAL", "workload-identity"));
        assert_eq!(
            config(&chosen).unwrap().credential.kind(),
            "workload-identity"
        );
    }

    #[test]
    fn tenant_without_credential_is_an_error_not_managed_identity() {
        let e = err(&[
            BASE,
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT),
        ]);
        assert_eq!(e.variable, "AOAI_PROXY_CREDENTIAL");
    }

    #[test]
    fn secret_inline_or_file() {
        let base = [
            BASE,
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT),
        ];
        let mut inline = base.to_vec();
        inline.push(("AZURE_CLIENT_SECRET", "s3cr3t"));
        let c = config(&inline).unwrap();
        assert!(matches!(
            c.credential,
            Credential::Secret {
                secret: SecretSource::Inline(_),
                ..
            }
        ));
        assert!(
            !format!("{c:?}").contains("s3cr3t"),
            "Debug must redact secrets"
        );
        let mut both = inline.clone();
        both.push(("AOAI_PROXY_CLIENT_SECRET_FILE", "/s"));
        assert_eq!(err(&both).variable, "AOAI_PROXY_CLIENT_SECRET_FILE");
        let e = err(&[BASE, ("AOAI_PROXY_CREDENTIAL", "secret")]);
        assert_eq!(e.variable, "AZURE_CLIENT_SECRET");
    }

    #[test]
    fn managed_identity_variants() {
        let c = config(&[
            BASE,
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:41000/msi/token"),
            ("IDENTITY_HEADER", "hdr"),
        ])
        .unwrap();
        assert!(matches!(
            c.credential,
            Credential::ManagedIdentity {
                endpoint: ManagedIdentityEndpoint::AppService { .. },
                id: None
            }
        ));
        let e = err(&[
            BASE,
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:41000/msi/token"),
        ]);
        assert_eq!(e.variable, "IDENTITY_HEADER");
        let c = config(&[
            BASE,
            ("AOAI_PROXY_CREDENTIAL", "managed-identity"),
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9999/"),
            ("AOAI_PROXY_MANAGED_IDENTITY_RESOURCE_ID", "/subscriptions/x/resourceGroups/y/providers/Microsoft.ManagedIdentity/userAssignedIdentities/z"),
        ])
        .unwrap();
        match c.credential {
            Credential::ManagedIdentity {
                endpoint: ManagedIdentityEndpoint::Imds { base },
                id: Some(UserAssignedId::ResourceId(_)),
            } => {
                assert_eq!(base, "http://127.0.0.1:9999")
            }
            other => panic!("{other:?}"),
        }
        let e = err(&[
            BASE,
            ("AZURE_CLIENT_ID", CLIENT),
            ("AOAI_PROXY_MANAGED_IDENTITY_OBJECT_ID", CLIENT),
        ]);
        assert_eq!(e.variable, "AOAI_PROXY_MANAGED_IDENTITY_OBJECT_ID");
    }

    #[test]
    fn inbound_keys_from_all_sources() {
        let c = config(&[
            BASE,
            ("EXPECTED_KEY", "a"),
            ("AOAI_PROXY_INBOUND_KEYS", " b, ,c "),
            ("AOAI_PROXY_INBOUND_KEYS_FILE", "/keys"),
        ])
        .unwrap();
        assert_eq!(
            c.inbound.keys,
            vec![Secret::new("a"), Secret::new("b"), Secret::new("c")]
        );
        assert_eq!(c.inbound.keys_file, Some(PathBuf::from("/keys")));
        assert!(c.inbound.enabled());
    }

    #[test]
    fn authority_host_forms() {
        for (given, expected) in [
            (
                "login.microsoftonline.us",
                "https://login.microsoftonline.us",
            ),
            (
                "https://login.chinacloudapi.cn/",
                "https://login.chinacloudapi.cn",
            ),
            ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
        ] {
            let c = config(&[BASE, ("AZURE_AUTHORITY_HOST", given)]).unwrap();
            assert_eq!(c.authority_host, expected);
        }
    }

    #[test]
    fn url_join_has_exactly_one_slash() {
        let cases = [
            (
                "https://h",
                "/openai/deployments?api-version=1",
                "https://h/openai/deployments?api-version=1",
            ),
            ("https://h/", "/x", "https://h/x"),
            (
                "https://h/openai/",
                "/deployments/d/chat/completions?a=1&b=2",
                "https://h/openai/deployments/d/chat/completions?a=1&b=2",
            ),
            (
                "https://h/openai",
                "/v1/models",
                "https://h/openai/v1/models",
            ),
            ("https://h/openai", "/", "https://h/openai/"),
            ("https://h:8443/base//", "/a//b", "https://h:8443/base/a//b"),
            // An absolute-form target (a caller configured to use us as an HTTP proxy).
            ("https://h", "http://caller/x?y=1", "https://h/x?y=1"),
            ("https://h/p", "http://caller", "https://h/p/"),
        ];
        for (base, path, expected) in cases {
            let upstream = Upstream::parse(base).unwrap();
            let joined = upstream.path_for(&path.parse().unwrap()).unwrap();
            assert_eq!(
                format!("{}://{}{joined}", upstream.scheme, upstream.authority),
                expected,
                "{base} + {path}"
            );
        }
    }

    #[test]
    fn every_variable_read_is_documented() {
        let mut names: Vec<&str> = ENV_VARS.iter().map(|v| v.name).collect();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count, "duplicate entry in ENV_VARS");
        for v in ENV_VARS {
            assert!(!v.help.is_empty() && !v.help.contains('\n'), "{}", v.name);
        }
    }

    #[test]
    fn every_default_in_the_table_is_what_an_unset_variable_means() {
        let base = [("API_BASE_URL", "https://r.openai.azure.com")];
        let unset = format!("{:?}", config(&base).unwrap());
        let mut checked = 0;
        for var in ENV_VARS {
            let Some(default) = var.default else { continue };
            let set = config(&[base[0], (var.name, default)]).unwrap_or_else(|e| {
                panic!("{}'s default {default:?} does not parse: {e}", var.name)
            });
            assert_eq!(
                format!("{set:?}"),
                unset,
                "{} set to its default changes the configuration",
                var.name
            );
            checked += 1;
        }
        assert!(checked >= 15, "{checked}");
    }
}
