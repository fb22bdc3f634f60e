//! Optional authentication of callers by key, with per-IP lockout.
//!
//! A caller presents a key as `api-key: K` (Azure SDKs, LiteLLM) or `Authorization: Bearer K`
//! (OpenAI SDKs). Keys are kept as SHA-256 digests and compared without early exit, so neither the
//! key nor its length leaks through timing, and never appear in logs. Keys come from variables and
//! from a file that is re-read when it changes (a rotated Kubernetes Secret). After
//! `max_failures` failures within `failure_window`, an IP is locked out for `lockout` (429 with
//! `Retry-After`), as llm-interactive-proxy does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use ring::digest::{SHA256, digest};

use crate::config::InboundAuthConfig;
use crate::headers::API_KEY;

type KeyDigest = [u8; 32];

fn key_digest(key: &[u8]) -> KeyDigest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key).as_ref());
    out
}

/// True when `candidate` equals one of `keys`; examines every key whatever the outcome.
fn matches_any(candidate: &KeyDigest, keys: &[KeyDigest]) -> bool {
    let mut found = 0u8;
    for key in keys {
        let diff = key
            .iter()
            .zip(candidate)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        found |= u8::from(std::hint::black_box(diff) == 0);
    }
    found == 1
}

/// The outcome of checking one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// No key presented.
    Missing,
    /// A key was presented and is not accepted.
    Invalid,
    /// Too many failures from this IP; retry after the given time.
    LockedOut {
        retry_after: Duration,
    },
}

impl Decision {
    /// Label for `aoai_proxy_inbound_auth_failures_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Missing => "missing_key",
            Decision::Invalid => "invalid_key",
            Decision::LockedOut { .. } => "locked_out",
        }
    }
}

/// The key a request presents, if any: `api-key` first, then `Authorization: Bearer`.
fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(API_KEY) {
        return Some(value.as_bytes());
    }
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at(value.iter().position(|b| *b == b' ')?);
    if scheme.eq_ignore_ascii_case(b"bearer") {
        Some(rest.trim_ascii())
    } else {
        None
    }
}

struct FailureEntry {
    failures: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

/// Upper bound on tracked IPs, so a flood of addresses cannot grow memory without limit.
const MAX_TRACKED_IPS: usize = 10_000;

struct Lockout {
    max_failures: u32,
    window: Duration,
    duration: Duration,
    entries: Mutex<HashMap<IpAddr, FailureEntry>>,
    /// Number of entries; lets the common case (no failures at all) skip the mutex.
    tracked: AtomicUsize,
}

impl Lockout {
    fn locked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let until = entries.get(&ip)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a failure; returns the lockout it triggered, if any.
    fn record_failure(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_TRACKED_IPS && !entries.contains_key(&ip) {
            let (window, duration) = (self.window, self.duration);
            entries.retain(|_, e| {
                now.duration_since(e.window_start) < window.max(duration)
                    || e.locked_until.is_some_and(|u| u > now)
            });
            if entries.len() >= MAX_TRACKED_IPS {
                return None;
            }
        }
        let entry = entries.entry(ip).or_insert(FailureEntry {
            failures: 0,
            window_start: now,
            locked_until: None,
        });
        if now.duration_since(entry.window_start) > self.window {
            entry.failures = 0;
            entry.window_start = now;
            entry.locked_until = None;
        }
        entry.failures += 1;
        let locked = if entry.failures >= self.max_failures {
            entry.locked_until = Some(now + self.duration);
            Some(self.duration)
        } else {
            None
        };
        self.tracked.store(entries.len(), Ordering::Relaxed);
        locked
    }

    fn record_success(&self, ip: IpAddr) {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(&ip);
        self.tracked.store(entries.len(), Ordering::Relaxed);
    }
}

/// The inbound key check, shared by all connections.
pub struct InboundAuth {
    /// Keys from variables, fixed for the process lifetime.
    fixed: Vec<KeyDigest>,
    /// Keys from the file, swapped when the file changes.
    from_file: ArcSwap<Vec<KeyDigest>>,
    file: Option<PathBuf>,
    lockout: Lockout,
}

/// Reading the keys file failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot read inbound keys file {path}: {source}")]
pub struct KeysFileError {
    path: PathBuf,
    source: std::io::Error,
}

fn parse_keys_file(content: &str) -> Vec<KeyDigest> {
    content
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|key| key_digest(key.as_bytes()))
        .collect()
}

fn read_keys_file(path: &Path) -> Result<String, KeysFileError> {
    std::fs::read_to_string(path).map_err(|source| KeysFileError {
        path: path.to_path_buf(),
        source,
    })
}

/// How often the keys file is checked for changes.
pub const KEYS_FILE_POLL: Duration = Duration::from_secs(2);

impl InboundAuth {
    /// Builds the check; reads the keys file once (a missing file is a start-up error).
    pub fn new(config: &InboundAuthConfig) -> Result<Self, KeysFileError> {
        let from_file = match &config.keys_file {
            Some(path) => parse_keys_file(&read_keys_file(path)?),
            None => Vec::new(),
        };
        Ok(Self {
            fixed: config
                .keys
                .iter()
                .map(|k| key_digest(k.expose().as_bytes()))
                .collect(),
            from_file: ArcSwap::from_pointee(from_file),
            file: config.keys_file.clone(),
            lockout: Lockout {
                max_failures: config.max_failures,
                window: config.failure_window,
                duration: config.lockout,
                entries: Mutex::new(HashMap::new()),
                tracked: AtomicUsize::new(0),
            },
        })
    }

    /// Number of keys currently accepted.
    pub fn key_count(&self) -> usize {
        self.fixed.len() + self.from_file.load().len()
    }

    /// Checks a request's key for a caller at `ip`.
    pub fn check(&self, headers: &HeaderMap, ip: IpAddr) -> Decision {
        let now = Instant::now();
        if let Some(retry_after) = self.lockout.locked(ip, now) {
            return Decision::LockedOut { retry_after };
        }
        let Some(key) = presented_key(headers) else {
            return self.fail(ip, now, Decision::Missing);
        };
        let candidate = key_digest(key);
        let fixed = matches_any(&candidate, &self.fixed);
        let from_file = matches_any(&candidate, &self.from_file.load());
        if fixed | from_file {
            self.lockout.record_success(ip);
            Decision::Allowed
        } else {
            self.fail(ip, now, Decision::Invalid)
        }
    }

    fn fail(&self, ip: IpAddr, now: Instant, decision: Decision) -> Decision {
        match self.lockout.record_failure(ip, now) {
            Some(retry_after) => {
                tracing::warn!(client = %ip, "too many failed key checks; client locked out for {}s", retry_after.as_secs());
                Decision::LockedOut { retry_after }
            }
            None => decision,
        }
    }

    /// Re-reads the keys file when its content changes, until the task is dropped.
    pub async fn watch_file(self: Arc<Self>) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let what = format!("inbound keys file {}", path.display());
        crate::file_watch::watch(
            &what,
            KEYS_FILE_POLL,
            read_keys_file(&path).ok(),
            || read_keys_file(&path).map_err(|e| e.to_string()),
            |content| {
                let keys = parse_keys_file(content);
                tracing::info!(file = %path.display(), keys = keys.len(), "inbound keys file changed; keys reloaded");
                if keys.is_empty() && self.fixed.is_empty() {
                    tracing::warn!(file = %path.display(), "inbound keys file holds no key: every request will be rejected");
                }
                self.from_file.store(Arc::new(keys));
                Ok(())
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use http::HeaderValue;

    fn auth(keys: &[&str], max_failures: u32) -> InboundAuth {
        InboundAuth::new(&InboundAuthConfig {
            keys: keys.iter().map(|k| Secret::new(*k)).collect(),
            keys_file: None,
            max_failures,
            failure_window: Duration::from_secs(60),
            lockout: Duration::from_secs(300),
        })
        .unwrap()
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn both_header_styles_are_accepted() {
        let a = auth(&["k1", "k2"], 5);
        assert_eq!(a.check(&headers("api-key", "k1"), IP), Decision::Allowed);
        assert_eq!(
            a.check(&headers("authorization", "Bearer k2"), IP),
            Decision::Allowed
        );
        assert_eq!(
            a.check(&headers("authorization", "bearer  k2 "), IP),
            Decision::Allowed
        );
        assert_eq!(
            a.check(&headers("authorization", "Basic k2"), IP),
            Decision::Missing
        );
        assert_eq!(a.check(&headers("api-key", "k3"), IP), Decision::Invalid);
        assert_eq!(a.check(&headers("api-key", "k"), IP), Decision::Invalid);
        assert_eq!(a.check(&HeaderMap::new(), IP), Decision::Missing);
    }

    #[test]
    fn lockout_after_failures_then_other_ips_unaffected() {
        let a = auth(&["good"], 3);
        let bad = headers("api-key", "bad");
        assert_eq!(a.check(&bad, IP), Decision::Invalid);
        assert_eq!(a.check(&bad, IP), Decision::Invalid);
        assert!(matches!(a.check(&bad, IP), Decision::LockedOut { .. }));
        // Even the right key is refused while locked out.
        match a.check(&headers("api-key", "good"), IP) {
            Decision::LockedOut { retry_after } => assert!(retry_after <= Duration::from_secs(300)),
            other => panic!("{other:?}"),
        }
        let other: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(
            a.check(&headers("api-key", "good"), other),
            Decision::Allowed
        );
    }

    #[test]
    fn success_resets_the_count() {
        let a = auth(&["good"], 2);
        assert_eq!(a.check(&headers("api-key", "bad"), IP), Decision::Invalid);
        assert_eq!(a.check(&headers("api-key", "good"), IP), Decision::Allowed);
        assert_eq!(a.check(&headers("api-key", "bad"), IP), Decision::Invalid);
    }

    #[test]
    fn constant_time_match_checks_all_keys() {
        let keys = [key_digest(b"a"), key_digest(b"b"), key_digest(b"c")];
        assert!(matches_any(&key_digest(b"c"), &keys));
        assert!(matches_any(&key_digest(b"a"), &keys));
        assert!(!matches_any(&key_digest(b"d"), &keys));
        assert!(!matches_any(&key_digest(b"a"), &[]));
    }

    #[test]
    fn keys_file_format() {
        let keys = parse_keys_file("# comment\n k1 \n\nk2\r\n");
        assert_eq!(keys, vec![key_digest(b"k1"), key_digest(b"k2")]);
    }

    #[test]
    fn missing_keys_file_is_an_error() {
        let e = InboundAuth::new(&InboundAuthConfig {
            keys: vec![],
            keys_file: Some("/nonexistent/keys".into()),
            max_failures: 1,
            failure_window: Duration::from_secs(1),
            lockout: Duration::from_secs(1),
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("/nonexistent/keys"));
    }
}
