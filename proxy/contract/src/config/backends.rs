//! The Azure OpenAI backends a request may go to, and how it fails over between them.
//!
//! `API_BASE_URL` (or `TARGET_URL`) names one backend. `AOAI_PROXY_BACKENDS` names several, as a
//! JSON list of [`BackendEntry`]: the operator writes that list from `spec.backends`, so the entry
//! type is the contract between the two.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Upstream;
use super::vars::names;
use super::{ConfigError, error, parsed, positive_duration, positive_number};
use crate::sidecar_env::{FailoverEnv, UpstreamEnv};
use crate::units::parse_bytes;

/// At most this many backends: each keeps its own connection pool.
pub const MAX_BACKENDS: usize = 16;
/// Weights run from 1 to this.
pub const MAX_WEIGHT: u32 = 1000;

/// One backend in `AOAI_PROXY_BACKENDS`, as JSON: `{"endpoint": "https://...", "priority": 0,
/// "weight": 1, "deployments": {"<name the app uses>": "<name on this resource>"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendEntry {
    /// The Azure OpenAI endpoint, as `API_BASE_URL` takes it.
    pub endpoint: String,
    /// Lower first: a request goes to priority 1 only when every priority-0 backend is throttled,
    /// ejected or failed for it.
    #[serde(default)]
    pub priority: u32,
    /// Share of requests among the backends of the same priority.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Deployment names that differ on this resource: the name in the request path → this
    /// resource's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deployments: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    1
}

/// A validated backend.
#[derive(Debug, Clone)]
pub struct Backend {
    pub upstream: Upstream,
    pub priority: u32,
    pub weight: u32,
    pub deployments: BTreeMap<String, String>,
}

impl Backend {
    /// The backend of a plain `API_BASE_URL`.
    pub fn single(upstream: Upstream) -> Self {
        Self {
            upstream,
            priority: 0,
            weight: default_weight(),
            deployments: BTreeMap::new(),
        }
    }
}

/// How requests fail over between backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    /// Request bodies up to this size are kept while they stream, so that a request can go to
    /// the next backend; larger ones stream once, to one backend.
    pub replay_body_limit: u64,
    /// Consecutive faults (connection failure, reset, 500/502/503/504, timeout) that eject a
    /// backend.
    pub eject_after: u32,
    /// How long an ejected backend is skipped.
    pub eject_for: Duration,
    /// The longest cool-down a 429 may ask for, and the longest wait callers are told.
    pub max_throttle_wait: Duration,
}

impl Failover {
    /// Checks the failover settings; the operator checks what it injects with this too.
    pub fn from_env(env: &FailoverEnv) -> Result<Self, ConfigError> {
        Ok(Self {
            replay_body_limit: parsed(
                names::AOAI_PROXY_RETRY_BODY_LIMIT,
                &env.retry_body_limit,
                parse_bytes,
            )?,
            eject_after: parsed(
                names::AOAI_PROXY_EJECT_AFTER,
                &env.eject_after,
                positive_number,
            )?,
            eject_for: positive_duration(names::AOAI_PROXY_EJECT_FOR, &env.eject_for)?,
            max_throttle_wait: positive_duration(
                names::AOAI_PROXY_MAX_THROTTLE_WAIT,
                &env.max_throttle_wait,
            )?,
        })
    }
}

impl Default for Failover {
    /// The defaults of [`super::ENV_VARS`].
    fn default() -> Self {
        Self::from_env(&FailoverEnv::default()).expect("every default in ENV_VARS parses")
    }
}

/// The backends of `AOAI_PROXY_BACKENDS`, or the one of `API_BASE_URL` / `TARGET_URL`.
pub(super) fn backends_from(env: &UpstreamEnv) -> Result<Vec<Backend>, ConfigError> {
    match env {
        UpstreamEnv::Backends(list) => {
            parse_backends(list).map_err(|m| error(names::AOAI_PROXY_BACKENDS, m))
        }
        UpstreamEnv::Endpoint(base) => {
            let upstream = Upstream::parse(&base.value)
                .map_err(|m| error(base.variable(names::API_BASE_URL, names::TARGET_URL), m))?;
            Ok(vec![Backend::single(upstream)])
        }
    }
}

/// Parses and checks the JSON list; the message names the entry at fault.
pub fn parse_backends(text: &str) -> Result<Vec<Backend>, String> {
    let entries: Vec<BackendEntry> = serde_json::from_str(text).map_err(|e| {
        format!(
            "is not a JSON list of backends ({e}); example: [{{\"endpoint\":\"https://a.openai.azure.com\",\"priority\":0}}]"
        )
    })?;
    if entries.is_empty() {
        return Err("lists no backend".into());
    }
    if entries.len() > MAX_BACKENDS {
        return Err(format!(
            "lists {} backends; at most {MAX_BACKENDS}",
            entries.len()
        ));
    }
    let mut backends: Vec<Backend> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let at = |message: String| format!("backend {index}: {message}");
        let upstream = Upstream::parse(&entry.endpoint).map_err(at)?;
        if backends
            .iter()
            .any(|b| b.upstream.to_string() == upstream.to_string())
        {
            return Err(at(format!("{} is listed twice", entry.endpoint)));
        }
        if !(1..=MAX_WEIGHT).contains(&entry.weight) {
            return Err(at(format!(
                "weight {} is out of range (1-{MAX_WEIGHT})",
                entry.weight
            )));
        }
        for (from, to) in &entry.deployments {
            for name in [from, to] {
                if !is_deployment_name(name) {
                    return Err(at(format!(
                        "{name:?} is not a deployment name (letters, digits, '-', '_', '.')"
                    )));
                }
            }
        }
        backends.push(Backend {
            upstream,
            priority: entry.priority,
            weight: entry.weight,
            deployments: entry.deployments,
        });
    }
    Ok(backends)
}

/// What Azure accepts as a deployment name, and what can stand in a path segment unescaped.
pub fn is_deployment_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_parses_with_its_defaults() {
        let backends = parse_backends(
            r#"[{"endpoint":"https://ptu.openai.azure.com","deployments":{"gpt-4o":"gpt-4o-ptu"}},
                {"endpoint":"https://paygo.openai.azure.com/openai","priority":1,"weight":3}]"#,
        )
        .unwrap();
        assert_eq!(backends.len(), 2);
        assert_eq!((backends[0].priority, backends[0].weight), (0, 1));
        assert_eq!(backends[0].deployments["gpt-4o"], "gpt-4o-ptu");
        assert_eq!((backends[1].priority, backends[1].weight), (1, 3));
        assert_eq!(backends[1].upstream.path_prefix, "/openai");
    }

    #[test]
    fn each_mistake_gets_its_own_message() {
        for (text, wanted) in [
            ("not json", "is not a JSON list of backends"),
            ("[]", "lists no backend"),
            (
                r#"[{"endpoint":"ftp://x"}]"#,
                "backend 0: \"ftp://x\" must start with https://",
            ),
            (
                r#"[{"endpoint":"https://a","wieght":2}]"#,
                "unknown field `wieght`",
            ),
            (
                r#"[{"endpoint":"https://a"},{"endpoint":"https://a/"}]"#,
                "backend 1: https://a/ is listed twice",
            ),
            (
                r#"[{"endpoint":"https://a","weight":0}]"#,
                "backend 0: weight 0 is out of range (1-1000)",
            ),
            (
                r#"[{"endpoint":"https://a","deployments":{"x":"a/b"}}]"#,
                "backend 0: \"a/b\" is not a deployment name",
            ),
            (
                r#"[{"endpoint":"https://a","priority":-1}]"#,
                "is not a JSON list",
            ),
        ] {
            let message = parse_backends(text).unwrap_err();
            assert!(message.contains(wanted), "{text}: {message}");
        }
        let many = format!(
            "[{}]",
            (0..17)
                .map(|i| format!(r#"{{"endpoint":"https://r{i}.openai.azure.com"}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(
            parse_backends(&many).unwrap_err(),
            "lists 17 backends; at most 16"
        );
    }

    #[test]
    fn the_entry_round_trips_as_the_operator_writes_it() {
        let entry = BackendEntry {
            endpoint: "https://a.openai.azure.com".into(),
            priority: 2,
            weight: 5,
            deployments: BTreeMap::from([("app".into(), "theirs".into())]),
        };
        let text = serde_json::to_string(&vec![entry.clone()]).unwrap();
        let parsed = parse_backends(&text).unwrap();
        assert_eq!(parsed[0].upstream.to_string(), entry.endpoint);
        assert_eq!(
            (parsed[0].priority, parsed[0].weight, &parsed[0].deployments),
            (2, 5, &entry.deployments)
        );
    }
}
