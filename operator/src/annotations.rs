//! Every label and annotation the operator reads or writes on pods, defined once, each with its
//! meaning and default. [`ANNOTATIONS`] feeds the README's annotation reference (a test keeps the
//! two equal); [`Overrides::parse`] reads the per-pod overrides strictly: a bad value or an unknown
//! `aoai-proxy.io/` annotation is an error naming it, never silently ignored.

use std::collections::BTreeMap;

use crate::crd::{LogLevel, NativeSidecarMode};

/// The prefix every annotation of ours shares.
pub const PREFIX: &str = "aoai-proxy.io/";

/// Opt-in, set by the application team on a pod (template): the name of the `AzureOpenAIProxy` in
/// the pod's namespace whose sidecar to inject. No default: pods without it are left alone.
pub const INJECT: &str = "aoai-proxy.io/inject";
/// Per-pod override of `spec.sidecar.port`: the port the sidecar forwards on (127.0.0.1 only).
pub const PORT: &str = "aoai-proxy.io/port";
/// Per-pod override of `spec.sidecar.adminPort`: the port of the sidecar's health and metrics.
pub const ADMIN_PORT: &str = "aoai-proxy.io/admin-port";
/// Per-pod override of the sidecar's CPU request (a Kubernetes quantity such as `50m`).
pub const CPU_REQUEST: &str = "aoai-proxy.io/cpu-request";
/// Per-pod override of the sidecar's CPU limit.
pub const CPU_LIMIT: &str = "aoai-proxy.io/cpu-limit";
/// Per-pod override of the sidecar's memory request (such as `64Mi`).
pub const MEMORY_REQUEST: &str = "aoai-proxy.io/memory-request";
/// Per-pod override of the sidecar's memory limit.
pub const MEMORY_LIMIT: &str = "aoai-proxy.io/memory-limit";
/// Per-pod override of `spec.sidecar.logLevel`: `error`, `warn`, `info` or `debug`.
pub const LOG_LEVEL: &str = "aoai-proxy.io/log-level";
/// Per-pod override of `spec.sidecar.nativeSidecar`: `Auto`, `Always` or `Never`.
pub const NATIVE_SIDECAR: &str = "aoai-proxy.io/native-sidecar";

/// Written by the webhook on an injected pod: `injected`. Makes injection idempotent.
pub const STATUS: &str = "aoai-proxy.io/status";
/// The value of [`STATUS`] on an injected pod.
pub const STATUS_INJECTED: &str = "injected";
/// Written by the webhook: the `AzureOpenAIProxy` config hash the sidecar was built from, so the
/// controller can count pods that run an older configuration.
pub const CONFIG_HASH: &str = "aoai-proxy.io/config-hash";

/// Label written by the webhook on an injected pod: the `AzureOpenAIProxy` name, so the controller
/// can watch exactly the pods injected with a configuration.
pub const PROXY_LABEL: &str = "aoai-proxy.io/proxy";

/// Written on an injected pod when its AzureOpenAIProxy sets `spec.sidecar.scrapeAnnotations` and
/// the pod sets none of the three: the conventional annotations of annotation-based scraping.
pub const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
pub const PROMETHEUS_PORT: &str = "prometheus.io/port";
pub const PROMETHEUS_PATH: &str = "prometheus.io/path";
/// The three, in the order they are written.
pub const PROMETHEUS_ANNOTATIONS: [&str; 3] = [PROMETHEUS_SCRAPE, PROMETHEUS_PORT, PROMETHEUS_PATH];
/// The sidecar's metrics, on its admin port.
pub const METRICS_PATH: &str = "/metrics";

/// Written by the admission policy on a pod it refuses, with the webhook's refusal; the refusing
/// policy then refuses the pod with it, so it is never stored.
pub const POLICY_REFUSAL: &str = "admission.aoai-proxy.io/refusal";
/// Written by the admission policy on a pod it leaves to the webhook, with why (CEL cannot do
/// what that pod needs); stays on the pod the webhook then injects.
pub const LEFT_TO_WEBHOOK: &str = "admission.aoai-proxy.io/left-to-webhook";

/// What `kubectl rollout restart` sets on a pod template; the controller sets it the same way when
/// `spec.rollout: Restart`.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// One annotation, for the reference: name, who sets it, default, meaning.
pub struct AnnotationDoc {
    pub name: &'static str,
    pub set_by: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

const fn doc(
    name: &'static str,
    set_by: &'static str,
    default: &'static str,
    meaning: &'static str,
) -> AnnotationDoc {
    AnnotationDoc {
        name,
        set_by,
        default,
        meaning,
    }
}

/// Every annotation and label, in the README's order.
pub const ANNOTATIONS: &[AnnotationDoc] = &[
    doc(
        INJECT,
        "you",
        "—",
        "Name of the AzureOpenAIProxy in the pod's namespace whose sidecar to inject (a DNS-1123 name).",
    ),
    doc(
        PORT,
        "you",
        "spec.sidecar.port (15080)",
        "Port the sidecar forwards on, bound to 127.0.0.1 (1024-65535).",
    ),
    doc(
        ADMIN_PORT,
        "you",
        "spec.sidecar.adminPort (15081)",
        "Port of the sidecar's /health, /livez and /metrics (1024-65535).",
    ),
    doc(
        CPU_REQUEST,
        "you",
        "spec.sidecar.resources, else 10m",
        "CPU request of the sidecar (a quantity: 50m, 0.1).",
    ),
    doc(
        CPU_LIMIT,
        "you",
        "spec.sidecar.resources, else none",
        "CPU limit of the sidecar.",
    ),
    doc(
        MEMORY_REQUEST,
        "you",
        "spec.sidecar.resources, else 32Mi",
        "Memory request of the sidecar (a quantity: 64Mi, 1Gi).",
    ),
    doc(
        MEMORY_LIMIT,
        "you",
        "spec.sidecar.resources, else 128Mi",
        "Memory limit of the sidecar.",
    ),
    doc(
        LOG_LEVEL,
        "you",
        "spec.sidecar.logLevel (info)",
        "Log level of the sidecar: error, warn, info or debug.",
    ),
    doc(
        NATIVE_SIDECAR,
        "you",
        "spec.sidecar.nativeSidecar (Auto)",
        "Auto (native sidecar where the cluster supports it), Always or Never.",
    ),
    doc(
        STATUS,
        "webhook",
        "—",
        "`injected` once the sidecar is in the pod; injection never runs twice.",
    ),
    doc(
        CONFIG_HASH,
        "webhook",
        "—",
        "The AzureOpenAIProxy configHash the sidecar was built from.",
    ),
    doc(
        PROXY_LABEL,
        "webhook (label)",
        "—",
        "The AzureOpenAIProxy name; the controller counts injected pods by it.",
    ),
    doc(
        PROMETHEUS_SCRAPE,
        "webhook, with spec.sidecar.scrapeAnnotations",
        "—",
        "`\"true\"`, with `prometheus.io/port` (the admin port) and `prometheus.io/path` (`/metrics`); only where the pod sets none of the three.",
    ),
    doc(
        LEFT_TO_WEBHOOK,
        "admission policy",
        "—",
        "Why the admission policy left the pod to the webhook (a pod shape its CEL does not cover).",
    ),
    doc(
        POLICY_REFUSAL,
        "admission policy",
        "—",
        "The refusal the refusing policy gives; only on pods refused, so never stored.",
    ),
];

/// A bad annotation: which one and why. Displays as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidAnnotation {
    pub name: String,
    pub value: String,
    pub message: String,
}

impl std::fmt::Display for InvalidAnnotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&invalid_text(
            &self.name,
            &format!("{:?}", self.value),
            &self.message,
        ))
    }
}

impl std::error::Error for InvalidAnnotation {}

/// The refusal of a bad annotation, its value already quoted (the admission policy fills the
/// same text with CEL expressions).
pub fn invalid_text(name: &str, quoted_value: &str, message: &str) -> String {
    format!("annotation {name}={quoted_value}: {message}")
}

/// What an override annotation's value must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A port number from 1024 to 65535.
    Port,
    /// A Kubernetes quantity: digits, an optional fraction, one of these suffixes.
    Quantity(&'static [&'static str]),
    /// One of these words, exactly.
    OneOf(&'static [&'static str]),
}

/// The lowest port an annotation may name (below are privileged ports).
pub const MIN_PORT: i32 = 1024;
const CPU_SUFFIXES: &[&str] = &["", "m"];
const MEMORY_SUFFIXES: &[&str] = &["", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"];
const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug"];
const NATIVE_SIDECAR_MODES: &[&str] = &["Auto", "Always", "Never"];

/// Every per-pod override and the format of its value: [`Overrides::parse`] reads them, the
/// admission policies check them (`policy`) with the same messages.
pub const OVERRIDES: &[(&str, Format)] = &[
    (PORT, Format::Port),
    (ADMIN_PORT, Format::Port),
    (CPU_REQUEST, Format::Quantity(CPU_SUFFIXES)),
    (CPU_LIMIT, Format::Quantity(CPU_SUFFIXES)),
    (MEMORY_REQUEST, Format::Quantity(MEMORY_SUFFIXES)),
    (MEMORY_LIMIT, Format::Quantity(MEMORY_SUFFIXES)),
    (LOG_LEVEL, Format::OneOf(LOG_LEVELS)),
    (NATIVE_SIDECAR, Format::OneOf(NATIVE_SIDECAR_MODES)),
];

/// Annotations of ours that are neither the opt-in nor an override: written by injection.
pub const WRITTEN_BY_INJECTION: &[&str] = &[STATUS, CONFIG_HASH];

impl Format {
    /// Why a value is refused.
    pub fn message(self) -> String {
        match self {
            Format::Port => format!("must be a port number from {MIN_PORT} to 65535"),
            Format::Quantity(suffixes) => format!(
                "must be a quantity such as 100{} (units: {})",
                suffixes[1],
                suffixes[1..].join(", ")
            ),
            Format::OneOf(words) => format!(
                "must be {} or {}",
                words[..words.len() - 1].join(", "),
                words[words.len() - 1]
            ),
        }
    }

    /// A regular expression (RE2 syntax, for CEL) of the values [`Format::check`] accepts,
    /// except a port's range, which the policy checks as a number.
    pub fn pattern(self) -> String {
        match self {
            // Leading zeros are accepted by Rust's integer parsing; at most five digits follow.
            Format::Port => "^0*[0-9]{1,5}$".into(),
            Format::Quantity(suffixes) => {
                format!("^[0-9]+(\\.[0-9]+)?({})?$", suffixes[1..].join("|"))
            }
            Format::OneOf(words) => format!("^({})$", words.join("|")),
        }
    }

    /// Whether `value` has this format.
    pub fn check(self, value: &str) -> bool {
        match self {
            Format::Port => value
                .parse::<i32>()
                .is_ok_and(|p| (MIN_PORT..=65535).contains(&p) && !value.starts_with('+')),
            Format::Quantity(suffixes) => {
                let number_end = value
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .unwrap_or(value.len());
                let (number, suffix) = value.split_at(number_end);
                !number.is_empty()
                    && number.matches('.').count() <= 1
                    && !number.starts_with('.')
                    && !number.ends_with('.')
                    && suffixes.contains(&suffix)
            }
            Format::OneOf(words) => words.contains(&value),
        }
    }
}

/// Why an `aoai-proxy.io/` annotation that is not ours is refused.
pub fn unknown_message() -> String {
    let known: Vec<&str> = ANNOTATIONS
        .iter()
        .map(|a| a.name)
        .filter(|n| n.starts_with(PREFIX) && *n != PROXY_LABEL)
        .collect();
    format!(
        "is not an aoai-proxy annotation (known: {})",
        known.join(", ")
    )
}

/// Why the opt-in annotation's value is refused.
pub const INJECT_MESSAGE: &str = "must name an AzureOpenAIProxy (a lowercase DNS-1123 name)";

/// A DNS-1123 subdomain, as a regular expression (RE2, for CEL); the length limit of 253 is
/// checked apart.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";

/// Per-pod overrides of the AzureOpenAIProxy's sidecar settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub port: Option<i32>,
    pub admin_port: Option<i32>,
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
    pub log_level: Option<LogLevel>,
    pub native_sidecar: Option<NativeSidecarMode>,
}

/// The `AzureOpenAIProxy` name a pod asks for, checked as a DNS-1123 subdomain.
pub fn requested_proxy(
    annotations: &BTreeMap<String, String>,
) -> Option<Result<&str, InvalidAnnotation>> {
    let value = annotations.get(INJECT)?;
    Some(if is_dns_subdomain(value) {
        Ok(value.as_str())
    } else {
        Err(invalid(INJECT, value, INJECT_MESSAGE.into()))
    })
}

impl Overrides {
    /// The overrides, or the first bad `aoai-proxy.io/` annotation in name order.
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Self, InvalidAnnotation> {
        let mut overrides = Self::default();
        for (name, value) in annotations.iter().filter(|(k, _)| k.starts_with(PREFIX)) {
            if name == INJECT || WRITTEN_BY_INJECTION.contains(&name.as_str()) {
                continue;
            }
            let Some(&(_, format)) = OVERRIDES.iter().find(|(n, _)| n == name) else {
                return Err(invalid(name, value, unknown_message()));
            };
            if !format.check(value) {
                return Err(invalid(name, value, format.message()));
            }
            let text = Some(value.clone());
            match name.as_str() {
                PORT => overrides.port = value.parse().ok(),
                ADMIN_PORT => overrides.admin_port = value.parse().ok(),
                CPU_REQUEST => overrides.cpu_request = text,
                CPU_LIMIT => overrides.cpu_limit = text,
                MEMORY_REQUEST => overrides.memory_request = text,
                MEMORY_LIMIT => overrides.memory_limit = text,
                // The words of Format::OneOf are the values' serde names (a test holds them).
                LOG_LEVEL => overrides.log_level = word(value),
                _ => overrides.native_sidecar = word(value),
            }
        }
        Ok(overrides)
    }
}

fn word<T: serde::de::DeserializeOwned>(value: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(value.to_string())).ok()
}

fn invalid(name: &str, value: &str, message: String) -> InvalidAnnotation {
    InvalidAnnotation {
        name: name.to_string(),
        value: value.to_string(),
        message,
    }
}

fn is_dns_subdomain(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overrides_are_parsed() {
        let o = Overrides::parse(&map(&[
            (INJECT, "p"),
            (PORT, "16000"),
            (ADMIN_PORT, "16001"),
            (CPU_REQUEST, "50m"),
            (CPU_LIMIT, "0.5"),
            (MEMORY_REQUEST, "64Mi"),
            (MEMORY_LIMIT, "1G"),
            (LOG_LEVEL, "debug"),
            (NATIVE_SIDECAR, "Never"),
            ("other.io/x", "anything"),
        ]))
        .unwrap();
        assert_eq!(o.port, Some(16000));
        assert_eq!(o.admin_port, Some(16001));
        assert_eq!(o.cpu_request.as_deref(), Some("50m"));
        assert_eq!(o.cpu_limit.as_deref(), Some("0.5"));
        assert_eq!(o.memory_limit.as_deref(), Some("1G"));
        assert_eq!(o.log_level, Some(LogLevel::Debug));
        assert_eq!(o.native_sidecar, Some(NativeSidecarMode::Never));
        assert_eq!(Overrides::parse(&map(&[])).unwrap(), Overrides::default());
    }

    #[test]
    fn bad_values_are_errors_naming_the_annotation() {
        for (name, value, expected) in [
            (PORT, "80", "must be a port number from 1024 to 65535"),
            (PORT, "15080x", "must be a port number"),
            (PORT, "+15080", "must be a port number"),
            (CPU_REQUEST, "50Mi", "must be a quantity such as 100m"),
            (CPU_REQUEST, "", "must be a quantity"),
            (MEMORY_LIMIT, "1.2.3Gi", "must be a quantity such as 100k"),
            (MEMORY_LIMIT, "-1Gi", "must be a quantity"),
            (LOG_LEVEL, "INFO", "must be error, warn, info or debug"),
            (NATIVE_SIDECAR, "always", "must be Auto, Always or Never"),
            (
                "aoai-proxy.io/prot",
                "15080",
                "is not an aoai-proxy annotation (known: aoai-proxy.io/inject,",
            ),
        ] {
            let e = Overrides::parse(&map(&[(name, value)])).unwrap_err();
            assert_eq!(e.name, name);
            assert!(
                e.to_string()
                    .starts_with(&format!("annotation {name}={value:?}: ")),
                "{e}"
            );
            assert!(e.message.contains(expected), "{name}={value}: {e}");
        }
    }

    #[test]
    fn every_word_a_format_accepts_is_read() {
        for (name, format) in OVERRIDES {
            if let Format::OneOf(words) = format {
                for w in *words {
                    let o = Overrides::parse(&map(&[(name, w)])).unwrap();
                    assert!(
                        o.log_level.is_some() || o.native_sidecar.is_some(),
                        "{name}={w}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_requested_proxy_is_a_dns_name() {
        assert_eq!(requested_proxy(&map(&[])), None);
        assert_eq!(
            requested_proxy(&map(&[(INJECT, "my-proxy")])),
            Some(Ok("my-proxy"))
        );
        for bad in ["", "My-Proxy", "-x", "a_b", "a..b"] {
            assert!(
                requested_proxy(&map(&[(INJECT, bad)])).unwrap().is_err(),
                "{bad:?}"
            );
        }
    }
}
