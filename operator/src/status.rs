//! Spec → status: what the controller concludes about one `AzureOpenAIProxy` from its spec, the
//! Secrets it references and the pods injected with it. Pure: no I/O, the clock is an argument.
//!
//! Messages name Secrets and keys, never their content.

use std::collections::BTreeMap;
use std::time::Duration;

use aoai_proxy_contract::certificate::ClientCertificate;
use aoai_proxy_contract::config::{Failover, Traces, names, parse_backends};
use aoai_proxy_contract::egress::{NoProxy, ProxyUrl};
use aoai_proxy_contract::sidecar_env::SecretValue;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::annotations;
use crate::crd::{
    AzureOpenAIProxy, AzureOpenAIProxySpec, AzureOpenAIProxyStatus, CredentialSource,
    EgressProxySpec, InboundKeysSpec, TracingSpec, TrustSpec, config_hash,
};
use crate::mutate::{failover_env, traces_env};

/// Condition types.
pub const READY: &str = "Ready";
pub const CREDENTIALS_VALID: &str = "CredentialsValid";
pub const INBOUND_KEYS_VALID: &str = "InboundKeysValid";
pub const CERTIFICATE_EXPIRING: &str = "CertificateExpiring";
pub const TRUST_VALID: &str = "TrustValid";
pub const EGRESS_PROXY_VALID: &str = "EgressProxyValid";
pub const BACKENDS_VALID: &str = "BackendsValid";
pub const TRACING_VALID: &str = "TracingValid";

/// How long to wait before looking again when nothing is due sooner (Secrets and pods trigger
/// reconciles on their own; this only bounds drift).
pub const RESYNC: Duration = Duration::from_secs(3600);

/// What the controller needs beyond the objects.
#[derive(Clone, Debug)]
pub struct Options {
    /// Image injected when the spec names none; part of the config hash.
    pub default_image: String,
    /// `CertificateExpiring` turns True this long before the certificate's notAfter.
    pub expiry_window: Duration,
}

/// What reading a referenced object (a Secret, a ConfigMap) gave.
#[derive(Clone, Copy, Debug)]
pub enum Read<'a, T> {
    Found(&'a T),
    NotFound,
    /// The operator may not read it: the platform restricted its RBAC to other namespaces.
    Forbidden,
}

pub type SecretRead<'a> = Read<'a, Secret>;

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Check {
    ok: bool,
    reason: &'static str,
    message: String,
}

impl Check {
    fn pass(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason,
            message: message.into(),
        }
    }
    fn fail(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason,
            message: message.into(),
        }
    }
}

/// A status transition worth an Event on the `AzureOpenAIProxy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    /// CamelCase, as Kubernetes Event reasons are.
    pub reason: &'static str,
    pub message: String,
}

/// The status to apply, the Events to emit and when to look again.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    pub status: AzureOpenAIProxyStatus,
    pub transitions: Vec<Transition>,
    pub requeue_after: Duration,
}

/// Assesses `proxy` at `now`. `secret` and `config_map` read an object by name in the proxy's
/// namespace; `pods` are the pods labelled with the proxy's name.
pub fn assess<'a, 'b>(
    proxy: &AzureOpenAIProxy,
    secret: impl Fn(&str) -> SecretRead<'a>,
    config_map: impl Fn(&str) -> Read<'b, ConfigMap>,
    pods: &[&Pod],
    now: Timestamp,
    options: &Options,
) -> Assessment {
    let spec = &proxy.spec;
    let previous = proxy.status.clone().unwrap_or_default();
    let hash = config_hash(spec, &options.default_image);

    let credential = credential_check(spec, &secret, now, options);
    let checks = Checks {
        credentials: credential.check,
        inbound: spec
            .inbound_keys
            .as_ref()
            .map(|keys| inbound_check(keys, &secret)),
        expiring: credential.expiring,
        trust: spec
            .trust
            .as_ref()
            .map(|trust| trust_check(trust, &secret, &config_map)),
        egress: spec
            .egress_proxy
            .as_ref()
            .map(|egress| egress_check(egress, &secret)),
        backends: backends_check(spec),
        tracing: spec
            .tracing
            .as_ref()
            .map(|tracing| tracing_check(tracing, &secret)),
    };
    let generation = proxy.metadata.generation;
    let (live, current) = pod_counts(pods, &hash);
    let status = AzureOpenAIProxyStatus {
        observed_generation: generation,
        conditions: checks.conditions(&previous, generation, now),
        credential: spec.credential.kind().map(|k| k.as_str().to_string()),
        certificate_not_after: credential.certificate_not_after,
        config_hash: Some(hash),
        injected_pods: Some(live),
        current_pods: Some(current),
        rolled_out_hash: previous.rolled_out_hash.clone(),
    };
    let transitions = transitions(&previous, &status);
    Assessment {
        status,
        transitions,
        requeue_after: credential.requeue_after,
    }
}

/// What was found, one check per condition (`None`: the condition does not apply).
struct Checks {
    credentials: Check,
    inbound: Option<Check>,
    expiring: Option<Check>,
    trust: Option<Check>,
    egress: Option<Check>,
    backends: Option<Check>,
    tracing: Option<Check>,
}

impl Checks {
    /// Ready when every check that applies passes; else the first failure says why.
    fn ready(&self) -> Check {
        let failed = [
            Some(&self.credentials),
            self.inbound.as_ref(),
            self.trust.as_ref(),
            self.egress.as_ref(),
            self.backends.as_ref(),
            self.tracing.as_ref(),
        ]
        .into_iter()
        .flatten()
        .find(|c| !c.ok);
        match failed {
            Some(failed) => Check::fail(failed.reason, failed.message.clone()),
            None => Check::pass(
                "Ready",
                "the configuration is valid; pods annotated with it get the sidecar",
            ),
        }
    }

    fn conditions(
        &self,
        previous: &AzureOpenAIProxyStatus,
        generation: Option<i64>,
        now: Timestamp,
    ) -> Vec<Condition> {
        let ready = self.ready();
        [
            (READY, Some(&ready)),
            (CREDENTIALS_VALID, Some(&self.credentials)),
            (INBOUND_KEYS_VALID, self.inbound.as_ref()),
            (CERTIFICATE_EXPIRING, self.expiring.as_ref()),
            (TRUST_VALID, self.trust.as_ref()),
            (EGRESS_PROXY_VALID, self.egress.as_ref()),
            (BACKENDS_VALID, self.backends.as_ref()),
            (TRACING_VALID, self.tracing.as_ref()),
        ]
        .into_iter()
        .filter_map(|(type_, check)| {
            check.map(|check| condition(previous, type_, check, generation, now))
        })
        .collect()
    }
}

/// The injected pods still running, and how many of them carry the current config hash.
fn pod_counts(pods: &[&Pod], hash: &str) -> (i32, i32) {
    let live: Vec<&&Pod> = pods.iter().filter(|p| !is_finished(p)).collect();
    let current = live
        .iter()
        .filter(|p| pod_config_hash(p) == Some(hash))
        .count();
    (live.len() as i32, current as i32)
}

/// The credential's check, and for a client certificate its expiry and when to look again.
struct CredentialCheck {
    check: Check,
    certificate_not_after: Option<String>,
    expiring: Option<Check>,
    requeue_after: Duration,
}

fn credential_check<'a>(
    spec: &AzureOpenAIProxySpec,
    secret: &impl Fn(&str) -> SecretRead<'a>,
    now: Timestamp,
    options: &Options,
) -> CredentialCheck {
    let only = |check: Check| CredentialCheck {
        check,
        certificate_not_after: None,
        expiring: None,
        requeue_after: RESYNC,
    };
    match spec.credential.source() {
        None => only(Check::fail(
            "InvalidSpec",
            "set exactly one credential: clientCertificate, clientSecret, workloadIdentity or managedIdentity",
        )),
        Some(CredentialSource::ClientCertificate(cert)) => match certificate_from(
            secret,
            &cert.secret_name,
            &cert.certificate_key,
            &cert.private_key_key,
        ) {
            Err(check) => only(check),
            Ok(certificate) => certificate_check(&cert.secret_name, &certificate, now, options),
        },
        Some(CredentialSource::ClientSecret(s)) => {
            only(match secret_value(secret, &s.secret_name, &s.key) {
                Err(check) => check,
                Ok(value) if value.iter().all(u8::is_ascii_whitespace) => Check::fail(
                    "SecretKeyEmpty",
                    format!("Secret {} key {} is empty", s.secret_name, s.key),
                ),
                Ok(_) => Check::pass(
                    "SecretPresent",
                    format!("Secret {} holds key {}", s.secret_name, s.key),
                ),
            })
        }
        Some(CredentialSource::WorkloadIdentity(_)) => only(Check::pass(
            "WorkloadIdentity",
            "pods exchange their projected service-account token; the federated credential is checked by Entra ID at the first exchange",
        )),
        Some(CredentialSource::ManagedIdentity(_)) => only(Check::pass(
            "ManagedIdentity",
            "pods use the node's or pod's managed identity; it is checked by Entra ID at the first token request",
        )),
    }
}

/// A readable client certificate: valid now, expiring within the window or not, and when to look
/// again (when it enters the window, or when it expires).
fn certificate_check(
    secret_name: &str,
    certificate: &ClientCertificate,
    now: Timestamp,
    options: &Options,
) -> CredentialCheck {
    let now_unix = now.as_second();
    let window = options.expiry_window.as_secs() as i64;
    let expiring_from = certificate.not_after_unix - window;
    let check = match certificate.check_validity(now_unix) {
        Err(e) => Check::fail(
            "CertificateInvalid",
            format!("Secret {secret_name}: certificate {e}"),
        ),
        Ok(()) => Check::pass(
            "CertificateValid",
            format!(
                "Secret {secret_name} holds a certificate ({}) and its matching key, valid until {}",
                certificate.subject, certificate.not_after
            ),
        ),
    };
    let (expiring, requeue_after) = if now_unix >= certificate.not_after_unix {
        let expired = Check::pass(
            "Expired",
            format!(
                "the client certificate expired at {}",
                certificate.not_after
            ),
        );
        (expired, RESYNC)
    } else if now_unix >= expiring_from {
        let soon = Check::pass(
            "ExpiresSoon",
            format!(
                "the client certificate expires at {} (in {} days): renew Secret {secret_name}",
                certificate.not_after,
                (certificate.not_after_unix - now_unix) / 86_400,
            ),
        );
        (
            soon,
            RESYNC.min(secs(certificate.not_after_unix - now_unix)),
        )
    } else {
        let not_yet = Check::fail(
            "NotExpiring",
            format!(
                "the client certificate expires at {}",
                certificate.not_after
            ),
        );
        (not_yet, RESYNC.min(secs(expiring_from - now_unix)))
    };
    CredentialCheck {
        check,
        certificate_not_after: Some(certificate.not_after.clone()),
        expiring: Some(expiring),
        requeue_after,
    }
}

/// The inbound keys' Secret holds accepted keys, and exactly one for the application containers.
fn inbound_check<'a>(keys: &InboundKeysSpec, secret: &impl Fn(&str) -> SecretRead<'a>) -> Check {
    let accepted = match secret_value(secret, &keys.secret_name, &keys.key) {
        Err(check) => return check,
        Ok(value) => key_lines(value),
    };
    if accepted == 0 {
        return Check::fail(
            "SecretKeyEmpty",
            format!("Secret {} key {} holds no key", keys.secret_name, keys.key),
        );
    }
    let client_key = keys.client_key.as_deref().unwrap_or(&keys.key);
    let client_lines = match secret_value(secret, &keys.secret_name, client_key) {
        Err(check) => return check,
        Ok(value) => key_lines(value),
    };
    if client_lines != 1 {
        return Check::fail(
            "ClientKeyNotSingle",
            format!(
                "Secret {} key {client_key} must hold exactly one key for application containers (it holds {client_lines}); set inboundKeys.clientKey during a rotation",
                keys.secret_name
            ),
        );
    }
    Check::pass(
        "KeysPresent",
        format!(
            "Secret {} holds {accepted} accepted key(s)",
            keys.secret_name
        ),
    )
}

/// The CA bundle of `spec.trust` exists and holds at least one PEM certificate.
fn trust_check<'a, 'b>(
    trust: &TrustSpec,
    secret: &impl Fn(&str) -> SecretRead<'a>,
    config_map: &impl Fn(&str) -> Read<'b, ConfigMap>,
) -> Check {
    let (what, key, bytes) = match (&trust.config_map, &trust.secret) {
        (Some(map), _) => {
            let what = format!("ConfigMap {}", map.name);
            let bytes = match config_map(&map.name) {
                Read::Found(found) => found
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&map.key))
                    .map(|v| v.as_bytes().to_vec())
                    .or_else(|| {
                        let binary = found.binary_data.as_ref()?;
                        binary.get(&map.key).map(|v| v.0.clone())
                    }),
                Read::NotFound => {
                    return Check::fail(
                        "ConfigMapNotFound",
                        format!("{what} does not exist in this namespace"),
                    );
                }
                Read::Forbidden => {
                    return Check::fail(
                        "ConfigMapUnreadable",
                        format!("the operator may not read {what}"),
                    );
                }
            };
            (what, &map.key, bytes)
        }
        (None, Some(reference)) => {
            let what = format!("Secret {}", reference.name);
            match secret_value(secret, &reference.name, &reference.key) {
                Ok(bytes) => (what, &reference.key, Some(bytes.to_vec())),
                Err(check) => return check,
            }
        }
        (None, None) => {
            return Check::fail("InvalidSpec", "set exactly one of configMap and secret");
        }
    };
    let Some(bytes) = bytes else {
        return Check::fail("BundleKeyMissing", format!("{what} has no key {key}"));
    };
    use rustls_pki_types::pem::PemObject;
    let certificates =
        rustls_pki_types::CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>();
    match certificates {
        Ok(certificates) if !certificates.is_empty() => Check::pass(
            "BundleValid",
            format!(
                "{what} key {key} holds {} CA certificate(s), trusted by the sidecar beside the system roots",
                certificates.len()
            ),
        ),
        Ok(_) => Check::fail(
            "BundleInvalid",
            format!("{what} key {key} holds no PEM certificate"),
        ),
        Err(e) => Check::fail(
            "BundleInvalid",
            format!("{what} key {key} is not a PEM bundle: {e}"),
        ),
    }
}

/// A proxy URL from a Secret (`httpsProxyFrom`) exists and parses as the sidecar reads it.
fn egress_check<'a>(egress: &EgressProxySpec, secret: &impl Fn(&str) -> SecretRead<'a>) -> Check {
    let (what, url) = match (&egress.https_proxy, &egress.https_proxy_from) {
        (Some(url), _) => ("httpsProxy".to_string(), url.as_bytes().to_vec()),
        (None, Some(from)) => match secret_value(secret, &from.secret_name, &from.key) {
            Ok(url) => (
                format!("Secret {} key {}", from.secret_name, from.key),
                url.to_vec(),
            ),
            Err(check) => return check,
        },
        (None, None) => {
            return Check::fail(
                "InvalidSpec",
                "set exactly one of httpsProxy and httpsProxyFrom",
            );
        }
    };
    let url = String::from_utf8_lossy(&url);
    if let Err(e) = ProxyUrl::parse(url.trim()) {
        // The parse error names what is wrong, never the credentials.
        return Check::fail("EgressProxyInvalid", format!("{what}: the proxy URL {e}"));
    }
    if let Some(entry) = egress
        .no_proxy
        .iter()
        .find(|entry| NoProxy::parse(entry).is_err())
    {
        return Check::fail(
            "EgressProxyInvalid",
            format!("noProxy entry {entry:?} is not a host, an IP address or a CIDR range"),
        );
    }
    Check::pass(
        "EgressProxyValid",
        format!("the sidecar reaches Azure through the proxy in {what}"),
    )
}

/// `spec.tracing`, its headers Secret included, reads as the sidecar reads what is injected. The
/// message names the field at fault, never a header value.
fn tracing_check<'a>(tracing: &TracingSpec, secret: &impl Fn(&str) -> SecretRead<'a>) -> Check {
    let mut env = traces_env(Some(tracing));
    if let Some(from) = &tracing.headers_from {
        match secret_value(secret, &from.secret_name, &from.key) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(bytes).trim().to_string();
                env.headers = Some(SecretValue::Inline(
                    aoai_proxy_contract::config::Secret::new(text),
                ));
            }
            Err(check) => return check,
        }
    }
    if let Err(e) = Traces::from_env(&env) {
        let field = match e.variable {
            names::OTEL_EXPORTER_OTLP_HEADERS => {
                let from = tracing
                    .headers_from
                    .as_ref()
                    .expect("headers come from a Secret");
                format!(
                    "tracing.headersFrom (Secret {} key {})",
                    from.secret_name, from.key
                )
            }
            names::OTEL_TRACES_SAMPLER_ARG => "tracing.samplerRatio".to_string(),
            names::OTEL_RESOURCE_ATTRIBUTES => "tracing.resourceAttributes".to_string(),
            _ => "tracing.endpoint".to_string(),
        };
        return Check::fail("TracingInvalid", format!("{field}: {}", e.message));
    }
    Check::pass(
        "TracingValid",
        format!("the sidecar exports spans to {}", tracing.endpoint),
    )
}

/// `spec.backends` and `spec.failover` parse as the sidecar reads what the webhook injects
/// (beyond the schema: an endpoint listed twice under two spellings, for one).
fn backends_check(spec: &AzureOpenAIProxySpec) -> Option<Check> {
    let backends = spec.backends_json();
    if backends.is_none() && spec.failover.is_none() {
        return None;
    }
    let mut count = 1;
    if let Some(json) = &backends {
        match parse_backends(json) {
            Ok(parsed) => count = parsed.len(),
            Err(e) => return Some(Check::fail("BackendsInvalid", format!("backends: {e}"))),
        }
    }
    if let Err(e) = Failover::from_env(&failover_env(spec.failover.as_ref())) {
        let field = match e.variable {
            names::AOAI_PROXY_RETRY_BODY_LIMIT => "failover.retryBodyLimit",
            names::AOAI_PROXY_EJECT_AFTER => "failover.ejectAfter",
            names::AOAI_PROXY_MAX_THROTTLE_WAIT => "failover.maxThrottleWait",
            _ => "failover.ejectFor",
        };
        return Some(Check::fail(
            "BackendsInvalid",
            format!("{field}: {}", e.message),
        ));
    }
    Some(Check::pass(
        "BackendsValid",
        format!("{count} backend(s); requests fail over between them by priority"),
    ))
}

fn secs(seconds: i64) -> Duration {
    Duration::from_secs(seconds.max(1) as u64)
}

/// The bytes of `key` in Secret `name`, or the failed check that says what is missing.
fn secret_value<'a>(
    secret: &impl Fn(&str) -> SecretRead<'a>,
    name: &str,
    key: &str,
) -> Result<&'a [u8], Check> {
    let found = match secret(name) {
        SecretRead::Found(found) => found,
        SecretRead::NotFound => {
            return Err(Check::fail(
                "SecretNotFound",
                format!("Secret {name} does not exist in this namespace"),
            ));
        }
        SecretRead::Forbidden => {
            return Err(Check::fail(
                "SecretUnreadable",
                format!(
                    "the operator may not read Secret {name}: it reads Secrets only in the namespaces the platform allows (the chart's rbac.secretNamespaces)"
                ),
            ));
        }
    };
    found
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|v| v.0.as_slice())
        .ok_or_else(|| {
            let mut keys: Vec<&str> = found
                .data
                .iter()
                .flat_map(|d| d.keys().map(String::as_str))
                .collect();
            keys.sort_unstable();
            Check::fail(
                "SecretKeyMissing",
                format!(
                    "Secret {name} has no key {key} (it has: {})",
                    keys.join(", ")
                ),
            )
        })
}

/// The certificate and key from the Secret, checked as the sidecar checks them.
fn certificate_from<'a>(
    secret: &impl Fn(&str) -> SecretRead<'a>,
    name: &str,
    certificate_key: &str,
    private_key_key: &str,
) -> Result<ClientCertificate, Check> {
    let mut pem = secret_value(secret, name, certificate_key)?.to_vec();
    if private_key_key != certificate_key {
        pem.push(b'\n');
        pem.extend_from_slice(secret_value(secret, name, private_key_key)?);
    }
    ClientCertificate::parse(&pem, None).map_err(|e| {
        Check::fail(
            "CertificateInvalid",
            format!("Secret {name} keys {certificate_key}/{private_key_key}: {e}"),
        )
    })
}

fn key_lines(value: &[u8]) -> usize {
    String::from_utf8_lossy(value)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// A condition that keeps its lastTransitionTime while its status does not change.
fn condition(
    previous: &AzureOpenAIProxyStatus,
    type_: &str,
    check: &Check,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if check.ok { "True" } else { "False" };
    let last_transition_time = previous
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: check.reason.to_string(),
        message: check.message.clone(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The status of an object whose spec this operator cannot read: not Ready, and why.
pub fn unreadable(generation: Option<i64>, reason: &str, now: Timestamp) -> AzureOpenAIProxyStatus {
    let check = Check::fail("SpecUnreadable", reason);
    AzureOpenAIProxyStatus {
        observed_generation: generation,
        conditions: vec![condition(
            &AzureOpenAIProxyStatus::default(),
            READY,
            &check,
            generation,
            now,
        )],
        ..AzureOpenAIProxyStatus::default()
    }
}

fn condition_status<'a>(status: &'a AzureOpenAIProxyStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Each condition's Events: its type, the status that is bad news, the Warning reason when it
/// turns bad (or stays bad for another reason), the Normal reason when it turns good again. Ready
/// raises no Warning of its own: whatever made it False raised one.
const CONDITION_EVENTS: [(&str, &str, Option<&str>, &str); 8] = [
    (READY, "False", None, "Ready"),
    (
        CREDENTIALS_VALID,
        "False",
        Some("CredentialInvalid"),
        "CredentialValid",
    ),
    (
        INBOUND_KEYS_VALID,
        "False",
        Some("InboundKeysInvalid"),
        "InboundKeysValid",
    ),
    (
        CERTIFICATE_EXPIRING,
        "True",
        Some("CertificateExpiring"),
        "CertificateRenewed",
    ),
    (TRUST_VALID, "False", Some("TrustInvalid"), "TrustValid"),
    (
        EGRESS_PROXY_VALID,
        "False",
        Some("EgressProxyInvalid"),
        "EgressProxyValid",
    ),
    (
        BACKENDS_VALID,
        "False",
        Some("BackendsInvalid"),
        "BackendsValid",
    ),
    (
        TRACING_VALID,
        "False",
        Some("TracingInvalid"),
        "TracingValid",
    ),
];

/// An Event for every condition that changed: a Warning when it turns bad or its reason for
/// being bad changes, a Normal one when it recovers (and for Ready, when first reached).
fn transitions(
    previous: &AzureOpenAIProxyStatus,
    next: &AzureOpenAIProxyStatus,
) -> Vec<Transition> {
    let mut events = Vec::new();
    for (type_, bad, bad_reason, good_reason) in CONDITION_EVENTS {
        let Some(now) = condition_status(next, type_) else {
            continue;
        };
        let before = condition_status(previous, type_);
        let unchanged = before.is_some_and(|b| b.status == now.status && b.reason == now.reason);
        if unchanged {
            continue;
        }
        let was_bad = before.is_some_and(|b| b.status == bad);
        if now.status == bad {
            events.extend(bad_reason.map(|reason| Transition {
                warning: true,
                reason,
                message: now.message.clone(),
            }));
        } else if was_bad || (type_ == READY && before.is_none_or(|b| b.status != now.status)) {
            events.push(Transition {
                warning: false,
                reason: good_reason,
                message: now.message.clone(),
            });
        }
    }
    events
}

/// The config hash an injected pod carries.
pub fn pod_config_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(annotations::CONFIG_HASH)
        .map(String::as_str)
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Workloads to restart for `spec.rollout: Restart`: the owners of running pods whose config hash
/// is not `current`, as (kind, name), deduplicated. A ReplicaSet stands for its Deployment, which
/// the controller resolves.
pub fn stale_owners(pods: &[&Pod], current: &str) -> Vec<(String, String)> {
    let mut owners = BTreeMap::new();
    for pod in pods.iter().filter(|p| !is_finished(p)) {
        if pod_config_hash(pod) == Some(current) {
            continue;
        }
        for owner in pod.metadata.owner_references.iter().flatten() {
            if owner.controller == Some(true)
                && matches!(
                    owner.kind.as_str(),
                    "ReplicaSet" | "StatefulSet" | "DaemonSet"
                )
            {
                owners.insert((owner.kind.clone(), owner.name.clone()), ());
            }
        }
    }
    owners.into_keys().collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aoai_e2e::ca::{fixture_key_pem, self_signed_client_cert};
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;

    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_800_000_000;

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    fn options() -> Options {
        Options {
            default_image: "aoai-proxy:1".into(),
            expiry_window: Duration::from_secs(30 * DAY as u64),
        }
    }

    fn proxy(credential: serde_json::Value) -> AzureOpenAIProxy {
        let mut proxy: AzureOpenAIProxy = serde_json::from_value(json!({
            "apiVersion": "aoai-proxy.io/v1alpha1",
            "kind": "AzureOpenAIProxy",
            "metadata": {"name": "p", "namespace": "ns", "generation": 3},
            "spec": {
                "endpoint": "https://r.openai.azure.com",
                "tenantId": "contoso.onmicrosoft.com",
                "clientId": "11111111-2222-3333-4444-555555555555",
                "credential": credential,
            }
        }))
        .unwrap();
        proxy.status = None;
        proxy
    }

    fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    fn run(proxy: &AzureOpenAIProxy, secrets: &[Secret], pods: &[Pod]) -> Assessment {
        let pods: Vec<&Pod> = pods.iter().collect();
        assess(
            proxy,
            |name| {
                secrets
                    .iter()
                    .find(|s| s.metadata.name.as_deref() == Some(name))
                    .map_or(SecretRead::NotFound, SecretRead::Found)
            },
            |_| Read::NotFound,
            &pods,
            now(),
            &options(),
        )
    }

    fn condition<'a>(a: &'a Assessment, type_: &str) -> &'a Condition {
        a.status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"))
    }

    fn tls_secret(key: &str, not_after: i64) -> Secret {
        let key_pem = fixture_key_pem(key);
        let cert = self_signed_client_cert(&fixture_key_pem("client-a"), NOW - DAY, not_after);
        secret("cert", &[("tls.crt", &cert), ("tls.key", &key_pem)])
    }

    fn cert_proxy() -> AzureOpenAIProxy {
        proxy(json!({"clientCertificate": {"secretName": "cert"}}))
    }

    #[test]
    fn a_valid_certificate_is_ready_with_its_expiry_and_requeues_before_the_window() {
        let a = run(
            &cert_proxy(),
            &[tls_secret("client-a", NOW + 90 * DAY)],
            &[],
        );
        assert_eq!(condition(&a, READY).status, "True");
        assert_eq!(condition(&a, CREDENTIALS_VALID).reason, "CertificateValid");
        assert_eq!(condition(&a, CERTIFICATE_EXPIRING).status, "False");
        assert_eq!(a.status.observed_generation, Some(3));
        assert_eq!(a.status.credential.as_deref(), Some("ClientCertificate"));
        let not_after = a.status.certificate_not_after.clone().unwrap();
        assert_eq!(not_after, "2027-04-15T08:00:00Z");
        // Crossing into the 30-day window is 60 days away; the resync is shorter.
        assert_eq!(a.requeue_after, RESYNC);
        assert_eq!(a.transitions[0].reason, "Ready");
        assert!(!a.transitions[0].warning);
    }

    #[test]
    fn requeues_when_the_certificate_enters_the_window() {
        let a = run(
            &cert_proxy(),
            &[tls_secret("client-a", NOW + 30 * DAY + 600)],
            &[],
        );
        assert_eq!(a.requeue_after, Duration::from_secs(600));
    }

    #[test]
    fn a_certificate_near_expiry_is_ready_but_expiring() {
        let a = run(
            &cert_proxy(),
            &[tls_secret("client-a", NOW + 10 * DAY)],
            &[],
        );
        assert_eq!(condition(&a, READY).status, "True");
        let expiring = condition(&a, CERTIFICATE_EXPIRING);
        assert_eq!(
            (expiring.status.as_str(), expiring.reason.as_str()),
            ("True", "ExpiresSoon")
        );
        assert!(
            expiring.message.contains("in 10 days"),
            "{}",
            expiring.message
        );
        assert!(
            a.transitions
                .iter()
                .any(|t| t.reason == "CertificateExpiring" && t.warning)
        );
        assert_eq!(a.requeue_after, RESYNC);
    }

    #[test]
    fn an_expired_certificate_is_not_ready() {
        let a = run(&cert_proxy(), &[tls_secret("client-a", NOW - 60)], &[]);
        assert_eq!(condition(&a, READY).status, "False");
        let valid = condition(&a, CREDENTIALS_VALID);
        assert_eq!(
            (valid.status.as_str(), valid.reason.as_str()),
            ("False", "CertificateInvalid")
        );
        assert!(valid.message.contains("expired"), "{}", valid.message);
        assert_eq!(condition(&a, CERTIFICATE_EXPIRING).reason, "Expired");
        assert!(
            a.transitions
                .iter()
                .any(|t| t.reason == "CredentialInvalid")
        );
    }

    #[test]
    fn a_key_that_does_not_match_is_reported_without_key_material() {
        let s = tls_secret("client-b", NOW + 90 * DAY);
        let a = run(&cert_proxy(), std::slice::from_ref(&s), &[]);
        let valid = condition(&a, CREDENTIALS_VALID);
        assert_eq!(valid.status, "False");
        assert!(valid.message.contains("matches none"), "{}", valid.message);
        let status = serde_json::to_string(&a.status).unwrap();
        for value in s.data.unwrap().values() {
            let text = String::from_utf8_lossy(&value.0).to_string();
            let body = text.lines().nth(1).unwrap();
            assert!(!status.contains(body), "status leaks secret material");
        }
    }

    #[test]
    fn garbage_missing_secrets_and_missing_keys_say_what_is_wrong() {
        let garbage = secret("cert", &[("tls.crt", "not a pem"), ("tls.key", "nope")]);
        let a = run(&cert_proxy(), &[garbage], &[]);
        assert_eq!(
            condition(&a, CREDENTIALS_VALID).reason,
            "CertificateInvalid"
        );

        let a = run(&cert_proxy(), &[], &[]);
        let c = condition(&a, CREDENTIALS_VALID);
        assert_eq!(c.reason, "SecretNotFound");
        assert_eq!(c.message, "Secret cert does not exist in this namespace");
        assert_eq!(condition(&a, READY).reason, "SecretNotFound");

        let forbidden = assess(
            &cert_proxy(),
            |_| SecretRead::Forbidden,
            |_| Read::NotFound,
            &[],
            now(),
            &options(),
        );
        let c = condition(&forbidden, CREDENTIALS_VALID);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SecretUnreadable")
        );
        assert!(c.message.contains("rbac.secretNamespaces"), "{}", c.message);

        let a = run(&cert_proxy(), &[secret("cert", &[("cert.pem", "x")])], &[]);
        let c = condition(&a, CREDENTIALS_VALID);
        assert_eq!(c.reason, "SecretKeyMissing");
        assert_eq!(
            c.message,
            "Secret cert has no key tls.crt (it has: cert.pem)"
        );
    }

    #[test]
    fn a_combined_pem_under_one_key_is_accepted() {
        let key = fixture_key_pem("client-a");
        let cert = self_signed_client_cert(&key, NOW - DAY, NOW + 90 * DAY);
        let combined = format!("{cert}\n{key}");
        let p = proxy(json!({"clientCertificate": {
            "secretName": "cert", "certificateKey": "cert.pem", "privateKeyKey": "cert.pem"}}));
        let a = run(&p, &[secret("cert", &[("cert.pem", &combined)])], &[]);
        assert_eq!(condition(&a, CREDENTIALS_VALID).status, "True");
    }

    #[test]
    fn client_secret_and_inbound_keys() {
        let mut p = proxy(json!({"clientSecret": {"secretName": "s"}}));
        let a = run(&p, &[secret("s", &[("client-secret", "  ")])], &[]);
        assert_eq!(condition(&a, CREDENTIALS_VALID).reason, "SecretKeyEmpty");
        let a = run(&p, &[secret("s", &[("client-secret", "hunter2")])], &[]);
        assert_eq!(condition(&a, READY).status, "True");
        assert!(
            !serde_json::to_string(&a.status)
                .unwrap()
                .contains("hunter2")
        );

        p.spec.inbound_keys = serde_json::from_value(json!({"secretName": "keys"})).unwrap();
        let good = secret("s", &[("client-secret", "hunter2")]);
        let a = run(&p, std::slice::from_ref(&good), &[]);
        assert_eq!(condition(&a, INBOUND_KEYS_VALID).reason, "SecretNotFound");
        assert_eq!(condition(&a, READY).status, "False");
        let a = run(
            &p,
            &[good.clone(), secret("keys", &[("api-key", "k1\nk2\n")])],
            &[],
        );
        assert_eq!(
            condition(&a, INBOUND_KEYS_VALID).reason,
            "ClientKeyNotSingle"
        );
        p.spec.inbound_keys.as_mut().unwrap().client_key = Some("current".into());
        let keys = secret("keys", &[("api-key", "k1\nk2\n"), ("current", "k2")]);
        let a = run(&p, &[good, keys], &[]);
        assert_eq!(condition(&a, INBOUND_KEYS_VALID).status, "True");
        assert_eq!(condition(&a, READY).status, "True");
    }

    #[test]
    fn identities_without_secrets_are_ready() {
        for credential in [
            json!({"workloadIdentity": {}}),
            json!({"managedIdentity": {}}),
        ] {
            let a = run(&proxy(credential), &[], &[]);
            assert_eq!(condition(&a, READY).status, "True");
            assert!(a.status.certificate_not_after.is_none());
        }
    }

    fn pod(hash: &str, owner: (&str, &str), phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("pod-{hash}-{}", owner.1),
                "annotations": {annotations::CONFIG_HASH: hash},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner.0, "name": owner.1,
                                     "uid": "u", "controller": true}],
            },
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn counts_injected_and_current_pods_and_finds_stale_owners() {
        let p = proxy(json!({"managedIdentity": {}}));
        let current = config_hash(&p.spec, &options().default_image);
        let pods = [
            pod(&current, ("ReplicaSet", "web-1"), "Running"),
            pod("old", ("ReplicaSet", "web-0"), "Running"),
            pod("old", ("ReplicaSet", "web-0"), "Pending"),
            pod("old", ("StatefulSet", "db"), "Running"),
            pod("old", ("Job", "batch"), "Running"),
            pod("old", ("ReplicaSet", "done"), "Succeeded"),
        ];
        let a = run(&p, &[], &pods);
        assert_eq!(a.status.injected_pods, Some(5));
        assert_eq!(a.status.current_pods, Some(1));
        assert_eq!(a.status.config_hash.as_deref(), Some(current.as_str()));
        let refs: Vec<&Pod> = pods.iter().collect();
        assert_eq!(
            stale_owners(&refs, &current),
            [
                ("ReplicaSet".to_string(), "web-0".to_string()),
                ("StatefulSet".to_string(), "db".to_string())
            ]
        );
    }

    #[test]
    fn every_condition_raises_an_event_when_it_turns_bad_and_when_it_recovers() {
        let with = |type_: &str, status: &str, reason: &str| AzureOpenAIProxyStatus {
            conditions: vec![Condition {
                type_: type_.into(),
                status: status.into(),
                reason: reason.into(),
                message: format!("{type_} is {status}"),
                observed_generation: Some(1),
                last_transition_time: Time(now()),
            }],
            ..Default::default()
        };
        for (type_, bad, bad_reason, good_reason) in CONDITION_EVENTS {
            let good = if bad == "True" { "False" } else { "True" };
            let (ok, failing) = (with(type_, good, "Fine"), with(type_, bad, "Broken"));
            let events = |before: &AzureOpenAIProxyStatus, after: &AzureOpenAIProxyStatus| {
                transitions(before, after)
                    .into_iter()
                    .map(|t| (t.reason, t.warning))
                    .collect::<Vec<_>>()
            };
            let warning: Vec<(&str, bool)> = bad_reason.map(|r| (r, true)).into_iter().collect();
            assert_eq!(events(&ok, &failing), warning, "{type_}");
            assert_eq!(events(&failing, &ok), [(good_reason, false)], "{type_}");
            assert_eq!(
                events(&failing, &with(type_, bad, "BrokenOtherwise")),
                warning,
                "{type_}: a new reason to be bad"
            );
            assert!(events(&ok, &ok).is_empty(), "{type_}");
            assert!(events(&failing, &failing).is_empty(), "{type_}");
        }
        // Every condition an assessment writes has its Events.
        let mut p = proxy(json!({"managedIdentity": {}}));
        p.spec = serde_json::from_value(json!({
            "backends": [{"endpoint": "https://a.openai.azure.com"}],
            "credential": {"clientCertificate": {"secretName": "cert"}},
            "inboundKeys": {"secretName": "keys"},
            "trust": {"configMap": {"name": "corp-ca"}},
            "egressProxy": {"httpsProxy": "http://proxy:3128"},
            "tracing": {"endpoint": "http://otel-collector:4318"},
        }))
        .unwrap();
        let a = run(&p, &[tls_secret("client-a", NOW + 90 * DAY)], &[]);
        let covered: Vec<&str> = CONDITION_EVENTS.iter().map(|(t, ..)| *t).collect();
        for c in &a.status.conditions {
            assert!(
                covered.contains(&c.type_.as_str()),
                "{} raises no Event",
                c.type_
            );
        }
        assert_eq!(a.status.conditions.len(), covered.len());
    }

    #[test]
    fn transition_times_and_events_are_kept_while_nothing_changes() {
        let mut p = cert_proxy();
        let secrets = [tls_secret("client-a", NOW + 90 * DAY)];
        let first = run(&p, &secrets, &[]);
        p.status = Some(first.status.clone());
        let pods: Vec<&Pod> = Vec::new();
        let later = Timestamp::from_second(NOW + 60).unwrap();
        let second = assess(
            &p,
            |name| {
                secrets
                    .iter()
                    .find(|s| s.metadata.name.as_deref() == Some(name))
                    .map_or(SecretRead::NotFound, SecretRead::Found)
            },
            |_| Read::NotFound,
            &pods,
            later,
            &options(),
        );
        assert_eq!(second.status, first.status);
        assert!(second.transitions.is_empty());
    }

    #[test]
    fn a_trust_bundle_and_an_egress_proxy_are_checked_without_showing_secrets() {
        let managed = |extra: serde_json::Value| {
            let mut spec = serde_json::json!({
                "endpoint": "https://r.openai.azure.com",
                "credential": {"managedIdentity": {}},
            });
            spec.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<AzureOpenAIProxy>(serde_json::json!({
                "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
                "metadata": {"name": "p", "namespace": "ns", "generation": 1},
                "spec": spec,
            }))
            .unwrap()
        };
        let ca = aoai_e2e::ca::TestCa::new();
        let pem = std::fs::read_to_string(ca.root_pem_path()).unwrap();
        let map = |data: &[(&str, &str)]| ConfigMap {
            metadata: ObjectMeta {
                name: Some("corp-ca".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        let check =
            |proxy: &AzureOpenAIProxy, secrets: &[Secret], maps: &[ConfigMap], type_: &str| {
                let a = assess(
                    proxy,
                    |name| {
                        secrets
                            .iter()
                            .find(|s| s.metadata.name.as_deref() == Some(name))
                            .map_or(Read::NotFound, Read::Found)
                    },
                    |name| {
                        maps.iter()
                            .find(|m| m.metadata.name.as_deref() == Some(name))
                            .map_or(Read::NotFound, Read::Found)
                    },
                    &[],
                    now(),
                    &options(),
                );
                let c = condition(&a, type_).clone();
                (
                    c.status,
                    c.reason,
                    c.message,
                    condition(&a, READY).status.clone(),
                )
            };
        let trusting = managed(serde_json::json!({"trust": {"configMap": {"name": "corp-ca"}}}));
        let (status, reason, message, ready) =
            check(&trusting, &[], &[map(&[("ca.crt", &pem)])], TRUST_VALID);
        assert_eq!(
            (status.as_str(), reason.as_str(), ready.as_str()),
            ("True", "BundleValid", "True"),
            "{message}"
        );
        assert!(message.contains("1 CA certificate"), "{message}");
        for (maps, expected) in [
            (vec![], "ConfigMapNotFound"),
            (vec![map(&[("other", &pem)])], "BundleKeyMissing"),
            (
                vec![map(&[("ca.crt", "not a certificate")])],
                "BundleInvalid",
            ),
        ] {
            let (status, reason, _, ready) = check(&trusting, &[], &maps, TRUST_VALID);
            assert_eq!(
                (status.as_str(), reason.as_str(), ready.as_str()),
                ("False", expected, "False")
            );
        }

        let proxied = managed(serde_json::json!({"egressProxy": {
            "httpsProxyFrom": {"secretName": "egress", "key": "url"}, "noProxy": [".svc"]}}));
        let good = secret("egress", &[("url", "http://user:hunter2@proxy.corp:3128")]);
        let (status, reason, message, _) = check(&proxied, &[good], &[], EGRESS_PROXY_VALID);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "EgressProxyValid"),
            "{message}"
        );
        let bad = secret("egress", &[("url", "https://user:hunter2@proxy.corp:3128")]);
        let (status, reason, message, ready) = check(&proxied, &[bad], &[], EGRESS_PROXY_VALID);
        assert_eq!(
            (status.as_str(), reason.as_str(), ready.as_str()),
            ("False", "EgressProxyInvalid", "False")
        );
        assert!(
            message.contains("http://") && !message.contains("hunter2"),
            "{message}"
        );
        let (_, reason, _, _) = check(&proxied, &[], &[], EGRESS_PROXY_VALID);
        assert_eq!(reason, "SecretNotFound");

        let traced = managed(serde_json::json!({"tracing": {
            "endpoint": "http://otel-collector.observability:4318",
            "headersFrom": {"secretName": "otlp", "key": "headers"}}}));
        let good = secret("otlp", &[("headers", "authorization=Bearer%20hunter2\n")]);
        let (status, reason, message, _) = check(&traced, &[good], &[], TRACING_VALID);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "TracingValid"),
            "{message}"
        );
        let bad = secret("otlp", &[("headers", "authorization Bearer hunter2")]);
        let (status, reason, message, ready) = check(&traced, &[bad], &[], TRACING_VALID);
        assert_eq!(
            (status.as_str(), reason.as_str(), ready.as_str()),
            ("False", "TracingInvalid", "False")
        );
        assert!(
            message.starts_with("tracing.headersFrom (Secret otlp key headers)")
                && !message.contains("hunter2"),
            "{message}"
        );
        let (_, reason, _, _) = check(&traced, &[], &[], TRACING_VALID);
        assert_eq!(reason, "SecretNotFound");
        let ratio = managed(serde_json::json!({"tracing": {
            "endpoint": "http://c:4318", "sampler": "traceidratio"}}));
        let (status, _, message, _) = check(&ratio, &[], &[], TRACING_VALID);
        assert_eq!(status, "True", "{message}");
    }

    #[test]
    fn backends_and_failover_are_checked_as_the_sidecar_reads_them() {
        let with = |spec: serde_json::Value| {
            let mut proxy: AzureOpenAIProxy = serde_json::from_value(serde_json::json!({
                "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
                "metadata": {"name": "p", "namespace": "ns", "generation": 1},
                "spec": spec,
            }))
            .unwrap();
            proxy.status = None;
            let a = assess(
                &proxy,
                |_| Read::NotFound,
                |_| Read::NotFound,
                &[],
                now(),
                &options(),
            );
            let backends = a
                .status
                .conditions
                .iter()
                .find(|c| c.type_ == BACKENDS_VALID)
                .cloned();
            (backends, condition(&a, READY).clone())
        };
        let managed = serde_json::json!({"managedIdentity": {}});

        let (none, _) = with(serde_json::json!({
            "endpoint": "https://r.openai.azure.com", "credential": managed}));
        assert!(none.is_none(), "no condition without backends or failover");

        let (valid, ready) = with(serde_json::json!({
            "backends": [{"endpoint": "https://a.openai.azure.com"},
                         {"endpoint": "https://b.openai.azure.com", "priority": 1}],
            "failover": {"ejectFor": "1m"},
            "credential": managed}));
        let valid = valid.unwrap();
        assert_eq!(
            (valid.status.as_str(), valid.reason.as_str()),
            ("True", "BackendsValid")
        );
        assert!(
            valid.message.starts_with("2 backend(s)"),
            "{}",
            valid.message
        );
        assert_eq!(ready.status, "True");

        // The same endpoint under two spellings passes the schema, not the sidecar's parser.
        let (twice, ready) = with(serde_json::json!({
            "backends": [{"endpoint": "https://a.openai.azure.com"},
                         {"endpoint": "https://a.openai.azure.com/"}],
            "credential": managed}));
        let twice = twice.unwrap();
        assert_eq!(
            (twice.status.as_str(), twice.reason.as_str()),
            ("False", "BackendsInvalid")
        );
        assert!(
            twice
                .message
                .contains("backend 1: https://a.openai.azure.com/ is listed twice"),
            "{}",
            twice.message
        );
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "BackendsInvalid")
        );

        let (zero, _) = with(serde_json::json!({
            "endpoint": "https://r.openai.azure.com",
            "failover": {"ejectFor": "0s"},
            "credential": managed}));
        let zero = zero.unwrap();
        assert_eq!(zero.reason, "BackendsInvalid");
        assert_eq!(zero.message, "failover.ejectFor: must be greater than zero");

        let (zero_wait, _) = with(serde_json::json!({
            "endpoint": "https://r.openai.azure.com",
            "failover": {"maxThrottleWait": "0ms"},
            "credential": managed}));
        assert_eq!(
            zero_wait.unwrap().message,
            "failover.maxThrottleWait: must be greater than zero"
        );
    }
}
