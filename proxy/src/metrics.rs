//! Prometheus metrics, served on the admin listener at `/metrics`.
//!
//! Hot-path counters are resolved once at start (method × status class), so that counting a
//! request is a couple of atomic increments, never a label lookup. Token gauges are computed at
//! scrape time from the [`TokenSource`].

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::{Duration, Instant};

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::token::TokenSource;

/// Methods counted under their own label; everything else is `other`.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    credential: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    backend: String,
    deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    backend: String,
    deployment: String,
    gen_ai_token_type: &'static str,
}

/// One backend's counters, resolved once.
#[derive(Clone)]
pub struct BackendMeters {
    /// Requests sent to it (each attempt of a failover counts where it went).
    pub requests: Counter,
    /// 429 answers from it.
    pub throttled: Counter,
    /// Requests that went on from it to another backend.
    pub failovers: Counter,
    /// Times it was ejected.
    pub ejections: Counter,
    /// The waits its 429 answers asked for (as honoured: capped at the maximum).
    pub throttle_wait: Histogram,
}

/// One deployment's token-usage meters on one backend, resolved once.
#[derive(Clone)]
pub struct DeploymentMeters {
    pub input: Counter,
    pub output: Counter,
    pub total: Counter,
    pub time_to_first_token: Histogram,
}

/// Upstream failure kinds (the `kind` label of `aoai_proxy_upstream_errors_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// TCP or TLS connection failed.
    Connect,
    /// No response headers within the timeout.
    Timeout,
    /// The connection broke before the response headers.
    Failed,
    /// The response body broke off mid-stream.
    Reset,
}

impl UpstreamError {
    fn label(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Failed => "failed",
            UpstreamError::Reset => "reset",
        }
    }
}

/// Every metric of the proxy. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    requests: Vec<Counter>,
    duration: Histogram,
    upstream_errors: Family<KindLabels, Counter>,
    request_bytes: Counter,
    response_bytes: Counter,
    in_flight: Gauge,
    token_expiry: Gauge<f64, AtomicU64>,
    token_age: Gauge<f64, AtomicU64>,
    token_valid: Gauge<i64, AtomicI64>,
    refreshes: Family<RefreshLabels, Counter>,
    auth_failures: Family<ReasonLabels, Counter>,
    websocket_sessions: Counter,
    websocket_open: Gauge,
    backend_requests: Family<BackendLabels, Counter>,
    backend_throttled: Family<BackendLabels, Counter>,
    backend_failovers: Family<BackendLabels, Counter>,
    backend_ejections: Family<BackendLabels, Counter>,
    backend_throttle_wait: Family<BackendLabels, Histogram, fn() -> Histogram>,
    tokens: Family<TokenLabels, Counter>,
    time_to_first_token: Family<DeploymentLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aoai_proxy");
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );

        let requests_family = Family::<RequestLabels, Counter>::default();
        let requests = METHODS
            .iter()
            .flat_map(|method| {
                CLASSES.iter().map(|class| {
                    requests_family.get_or_create_owned(&RequestLabels {
                        method,
                        status_class: class,
                    })
                })
            })
            .collect();
        registry.register(
            "requests",
            "Requests answered, by method and status class (proxy-made errors included)",
            requests_family,
        );

        // 250 µs .. ~65 s: covers both the proxy's own answers and slow completions.
        let duration = Histogram::new([
            0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            5.0, 10.0, 30.0, 60.0,
        ]);
        registry.register(
            "request_duration_seconds",
            "Time from request received to response headers sent",
            duration.clone(),
        );

        let upstream_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream failures by kind: connect, timeout, failed (before headers), reset (mid-stream)",
            upstream_errors.clone(),
        );
        let request_bytes = Counter::default();
        registry.register(
            "request_body_bytes",
            "Request body bytes forwarded upstream",
            request_bytes.clone(),
        );
        let response_bytes = Counter::default();
        registry.register(
            "response_body_bytes",
            "Response body bytes returned to callers",
            response_bytes.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Requests being handled, streams included",
            in_flight.clone(),
        );
        let token_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "token_expiry_seconds",
            "Seconds until the current access token expires (negative once expired)",
            token_expiry.clone(),
        );
        let token_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "token_age_seconds",
            "Seconds since the current access token was acquired",
            token_age.clone(),
        );
        let token_valid = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "token_valid",
            "1 while a usable access token is held, else 0",
            token_valid.clone(),
        );
        let refreshes = Family::<RefreshLabels, Counter>::default();
        registry.register(
            "token_refreshes",
            "Token acquisitions by credential kind and result (success, failure)",
            refreshes.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "inbound_auth_failures",
            "Rejected callers by reason: missing_key, invalid_key, locked_out",
            auth_failures.clone(),
        );

        let websocket_sessions = Counter::default();
        registry.register(
            "websocket_sessions",
            "WebSocket sessions opened (upstream answered 101), e.g. the Realtime API",
            websocket_sessions.clone(),
        );
        let websocket_open = Gauge::default();
        registry.register(
            "websocket_sessions_open",
            "WebSocket sessions open now",
            websocket_open.clone(),
        );

        registry.register(
            "panics",
            "Internal errors (bugs) caught: each ended only the request or connection it happened in",
            crate::panics::PANICS.clone(),
        );

        let backend_family = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<BackendLabels, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let backend_requests = backend_family(
            &mut registry,
            "backend_requests",
            "Requests sent to each backend (a failed-over request counts at every backend it went to)",
        );
        let backend_throttled = backend_family(
            &mut registry,
            "backend_throttled",
            "429 answers from each backend",
        );
        let backend_failovers = backend_family(
            &mut registry,
            "backend_failovers",
            "Requests that went on from this backend to the next (after a 429 or a fault)",
        );
        let backend_ejections = backend_family(
            &mut registry,
            "backend_ejections",
            "Times each backend was ejected after consecutive faults",
        );
        let backend_throttle_wait: Family<BackendLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| {
                Histogram::new([0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0])
            });
        registry.register(
            "backend_throttle_wait_seconds",
            "The waits each backend's 429 answers asked for (retry-after-ms, Retry-After, x-ratelimit-reset-*), as honoured",
            backend_throttle_wait.clone(),
        );
        // OpenTelemetry GenAI: gen_ai.client.token.usage, by gen_ai.token.type (input, output;
        // and total, which the convention leaves to the sum).
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "gen_ai_client_token_usage",
            "Tokens used, from the usage of JSON answers and of streams, by backend, deployment and gen_ai_token_type (input, output, total)",
            tokens.clone(),
        );
        // OpenTelemetry GenAI: gen_ai.server.time_to_first_token.
        let time_to_first_token: Family<DeploymentLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| {
                Histogram::new([
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
                ])
            });
        registry.register(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from the request to the first chunk of a streamed answer, by backend and deployment",
            time_to_first_token.clone(),
        );

        Self {
            registry,
            requests,
            duration,
            upstream_errors,
            request_bytes,
            response_bytes,
            in_flight,
            token_expiry,
            token_age,
            token_valid,
            refreshes,
            auth_failures,
            websocket_sessions,
            websocket_open,
            backend_requests,
            backend_throttled,
            backend_failovers,
            backend_ejections,
            backend_throttle_wait,
            tokens,
            time_to_first_token,
        }
    }

    /// The counters of the backend labelled `backend`.
    pub fn backend(&self, backend: &str) -> BackendMeters {
        let labels = BackendLabels {
            backend: backend.to_string(),
        };
        BackendMeters {
            requests: self.backend_requests.get_or_create_owned(&labels),
            throttled: self.backend_throttled.get_or_create_owned(&labels),
            failovers: self.backend_failovers.get_or_create_owned(&labels),
            ejections: self.backend_ejections.get_or_create_owned(&labels),
            throttle_wait: self.backend_throttle_wait.get_or_create_owned(&labels),
        }
    }

    /// The token-usage meters of `deployment` on `backend`.
    pub fn deployment(&self, backend: &str, deployment: &str) -> DeploymentMeters {
        let tokens = |gen_ai_token_type| {
            self.tokens.get_or_create_owned(&TokenLabels {
                backend: backend.to_string(),
                deployment: deployment.to_string(),
                gen_ai_token_type,
            })
        };
        DeploymentMeters {
            input: tokens("input"),
            output: tokens("output"),
            total: tokens("total"),
            time_to_first_token: self
                .time_to_first_token
                .get_or_create_owned(&DeploymentLabels {
                    backend: backend.to_string(),
                    deployment: deployment.to_string(),
                }),
        }
    }

    /// Counts one answered request and its time to response headers.
    pub fn record_request(&self, method: &Method, status: u16, duration: Duration) {
        let method_index = match *method {
            Method::GET => 0,
            Method::POST => 1,
            Method::PUT => 2,
            Method::PATCH => 3,
            Method::DELETE => 4,
            Method::HEAD => 5,
            Method::OPTIONS => 6,
            _ => 7,
        };
        let class_index = usize::from((status / 100).clamp(1, 5) - 1);
        self.requests[method_index * CLASSES.len() + class_index].inc();
        self.duration.observe(duration.as_secs_f64());
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors
            .get_or_create(&KindLabels { kind: kind.label() })
            .inc();
    }

    pub fn request_bytes(&self, n: u64) {
        self.request_bytes.inc_by(n);
    }

    pub fn response_bytes(&self, n: u64) {
        self.response_bytes.inc_by(n);
    }

    /// Marks a request in flight until the returned guard drops.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Counts a WebSocket session and marks it open until the returned guard drops.
    pub fn websocket_session(&self) -> InFlight {
        self.websocket_sessions.inc();
        self.websocket_open.inc();
        InFlight(self.websocket_open.clone())
    }

    pub fn token_refresh(&self, credential: &'static str, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.refreshes
            .get_or_create(&RefreshLabels { credential, result })
            .inc();
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The text exposition, with token gauges brought up to date.
    pub fn encode(&self, token: &TokenSource) -> String {
        let now = Instant::now();
        match token.current() {
            Some(t) => {
                let expiry = if t.expires_at() >= now {
                    (t.expires_at() - now).as_secs_f64()
                } else {
                    -(now - t.expires_at()).as_secs_f64()
                };
                self.token_expiry.set(expiry);
                self.token_age.set((now - t.acquired_at()).as_secs_f64());
                self.token_valid.set(i64::from(t.is_usable(now)));
            }
            None => {
                self.token_expiry.set(0.0);
                self.token_age.set(0.0);
                self.token_valid.set(0);
            }
        }
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Decrements its gauge (requests in flight, open sessions) when dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family_and_no_token() {
        let metrics = Metrics::new();
        metrics.record_request(&Method::POST, 200, Duration::from_millis(3));
        metrics.record_request(
            &Method::from_bytes(b"PROPFIND").unwrap(),
            502,
            Duration::from_millis(5),
        );
        metrics.upstream_error(UpstreamError::Connect);
        metrics.token_refresh("secret", true);
        metrics.auth_failure("invalid_key");
        let _guard = metrics.in_flight();
        let source = TokenSource::fixed("very-secret-token", Duration::from_secs(60)).unwrap();
        let text = metrics.encode(&source);
        for needle in [
            "aoai_proxy_requests_total{method=\"POST\",status_class=\"2xx\"} 1",
            "aoai_proxy_requests_total{method=\"other\",status_class=\"5xx\"} 1",
            "aoai_proxy_request_duration_seconds_count 2",
            "aoai_proxy_upstream_errors_total{kind=\"connect\"} 1",
            "aoai_proxy_in_flight_requests 1",
            "aoai_proxy_token_valid 1",
            "aoai_proxy_token_refreshes_total{credential=\"secret\",result=\"success\"} 1",
            "aoai_proxy_inbound_auth_failures_total{reason=\"invalid_key\"} 1",
            "aoai_proxy_build_info{version=",
            "aoai_proxy_token_expiry_seconds 5",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(!text.contains("very-secret-token"));
        drop(_guard);
        assert!(
            metrics
                .encode(&source)
                .contains("aoai_proxy_in_flight_requests 0")
        );
    }
}
