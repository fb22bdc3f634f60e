//! The forwarding path: one caller request in, one upstream request out, bodies streamed.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::backends::{self, Backend, Backends, DEFAULT_THROTTLE, Plan, throttle_wait};
use crate::body::{PendingLine, RequestBody, RequestBodyError, ResponseBody};
use crate::error::{ProxyError, error_chain, find_cause, set_retry_after};
use crate::headers;
use crate::health;
use crate::inbound_auth::{Decision, InboundAuth};
use crate::logging;
use crate::metrics::{InFlight, Metrics, UpstreamError};
use crate::replay::Replay;
use crate::token::TokenSource;
use crate::traces::{Outcome, RequestSpan, Tracing};
use crate::units::format_duration;
use crate::upstream::{PooledBody, RequestError};
use crate::usage::{self, UsageMeter};
use crate::websocket::{self, Sessions};

/// Everything a request needs, shared by all connections.
pub struct Forwarder {
    pub backends: Backends,
    pub token: Arc<TokenSource>,
    pub auth: Option<Arc<InboundAuth>>,
    pub metrics: Arc<Metrics>,
    pub upstream_timeout: Duration,
    pub max_request_body: Option<u64>,
    /// Open WebSocket sessions, which outlive their handshake request.
    pub sessions: Arc<Sessions>,
    /// Span export, when configured.
    pub traces: Option<Tracing>,
}

impl Forwarder {
    /// Answers one request: health, a proxy-made error, or the upstream's streamed response. Never
    /// an error: the `Result` is what hyper's service takes, so this future is the service's own
    /// and is not wrapped (and copied) once more.
    ///
    /// hyper copies the whole future at least twice per request, so it is kept small: the checks
    /// and rewrites run before it is made, and only what lives across the upstream call is in it.
    pub fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        client_ip: IpAddr,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static {
        let started = Instant::now();
        let method = request.method().clone();
        let in_flight = self.metrics.in_flight();
        // Boxed: a span is large, and this future (copied by hyper) carries it even when off.
        let span = self.traces.as_ref().and_then(|traces| {
            traces
                .request_span(request.method(), request.uri().path(), request.headers())
                .map(Box::new)
        });
        let prepared = self.prepare(request, client_ip, span.as_deref());
        async move {
            let (mut response, original_uri) = match prepared {
                Prepared::Answered(response, original_uri) => (*response, original_uri),
                Prepared::Forward(upstream_request, original_uri) => {
                    // The one backend: no failover, but its 429s are honoured all the same.
                    let backend = self.backends.get(0);
                    backend.meters.requests.inc();
                    let sent = backend.client.send(upstream_request);
                    let result = tokio::time::timeout(self.upstream_timeout, sent).await;
                    let deployment = backends::deployment_in(original_uri.path());
                    let response = match result {
                        Ok(Ok(response))
                            if response.status() == StatusCode::SWITCHING_PROTOCOLS =>
                        {
                            self.unasked_switch(backend).into_response()
                        }
                        Ok(Ok(response)) => {
                            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                                backend.throttled(deployment, self.wait_asked(response.headers()));
                            }
                            self.respond(backend, deployment, started, response, in_flight)
                        }
                        Ok(Err(error)) => self.upstream_failure(&error).into_response(),
                        Err(_) => self.upstream_timeout().into_response(),
                    };
                    (response, original_uri)
                }
                Prepared::Failover(request) => {
                    // Boxed: it would otherwise grow every request's future, single backend too.
                    Box::pin(self.failover(*request, started, in_flight)).await
                }
                Prepared::Upgrade(upgrade) => {
                    let (request, client, original_uri, backend) = *upgrade;
                    // Boxed: rare, and it would otherwise grow every request's future.
                    let response =
                        Box::pin(self.upgrade(backend, request, client, in_flight)).await;
                    (response, original_uri)
                }
            };
            let status = response.status().as_u16();
            let elapsed = started.elapsed();
            self.metrics.record_request(&method, status, elapsed);
            let log = logging::access_enabled();
            match response.body_mut() {
                // Its line and span wait for the end of the body, and the tokens it says it used.
                ResponseBody::Upstream(body) if log || span.is_some() => {
                    body.finish_when_done(PendingLine {
                        method,
                        uri: original_uri,
                        status,
                        started,
                        log,
                        span,
                    })
                }
                ResponseBody::Upstream(_) => {}
                ResponseBody::Local(_) => {
                    logging::access(&logging::Exchange {
                        method: &method,
                        path: original_uri.path(),
                        status,
                        duration: elapsed,
                        backend: None,
                        deployment: backends::deployment_in(original_uri.path()),
                        usage: None,
                    });
                    if let Some(span) = span {
                        span.end(Outcome {
                            status,
                            backend: None,
                            usage: None,
                            broken_off: false,
                        });
                    }
                }
            }
            Ok(response)
        }
    }

    /// Checks the caller's request and rewrites it for the upstream, or answers it.
    fn prepare(
        &self,
        request: Request<Incoming>,
        client_ip: IpAddr,
        span: Option<&RequestSpan>,
    ) -> Prepared {
        let (mut parts, body) = request.into_parts();
        let authorization = match self.check(&parts, client_ip) {
            Ok(Some(authorization)) => authorization,
            Ok(None) => return Prepared::answered(health::health(&self.token), parts.uri),
            Err(error) => return Prepared::answered(error.into_response(), parts.uri),
        };
        let deployment = backends::deployment_in(parts.uri.path());
        let order = match self.backends.single() {
            Some(backend) => match backend.throttled_for(deployment) {
                Some(retry_after) => {
                    let refused = ProxyError::Throttled { retry_after }.into_response();
                    return Prepared::answered(refused, parts.uri);
                }
                None => None,
            },
            None => match self.backends.plan(deployment) {
                Plan::Try(order) => Some(order),
                Plan::Throttled(retry_after) => {
                    let refused = ProxyError::Throttled { retry_after }.into_response();
                    return Prepared::answered(refused, parts.uri);
                }
            },
        };
        let first = order.as_ref().map_or(0, |order| order[0]);
        let target = match self.backends.get(first).target(&parts.uri, deployment) {
            Ok(path_and_query) => http::Uri::from(path_and_query),
            Err(_) => {
                let refused =
                    ProxyError::BadRequest("the request target cannot be forwarded".into());
                return Prepared::answered(refused.into_response(), parts.uri);
            }
        };
        let original_uri = std::mem::replace(&mut parts.uri, target);
        let upgrade = (parts.method == Method::GET && websocket::is_upgrade(&parts.headers))
            .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
            .flatten();
        headers::rewrite_request(&mut parts.headers, authorization);
        if let (Some(traces), Some(span)) = (&self.traces, span) {
            traces.inject(span, &mut parts.headers);
        }
        // The client picks HTTP/1.1 or HTTP/2 per upstream connection (ALPN), whatever the caller
        // used.
        parts.version = Version::HTTP_11;
        if let Some(client) = upgrade {
            // A WebSocket session goes to the first backend; it is not failed over.
            websocket::restore_upgrade_headers(&mut parts.headers);
            let body = RequestBody::new(body, self.max_request_body, self.metrics.clone());
            let request = Request::from_parts(parts, body);
            return Prepared::Upgrade(Box::new((request, client, original_uri, first)));
        }
        match order {
            None => {
                let body = RequestBody::new(body, self.max_request_body, self.metrics.clone());
                Prepared::Forward(Box::new(Request::from_parts(parts, body)), original_uri)
            }
            Some(order) => Prepared::Failover(Box::new(FailoverRequest {
                method: parts.method,
                headers: parts.headers,
                body,
                order,
                original_uri,
            })),
        }
    }

    /// A request with several backends to go to: each in the planned order, at most once, until
    /// one answers with neither a 429 nor a fault, or the body cannot be sent again.
    async fn failover(
        &self,
        request: FailoverRequest,
        started: Instant,
        in_flight: InFlight,
    ) -> (Response<ResponseBody>, http::Uri) {
        let FailoverRequest {
            method,
            headers,
            body,
            order,
            original_uri,
        } = request;
        let deployment = backends::deployment_in(original_uri.path());
        let failover = &self.backends.failover;
        let replay = Replay::new(body, failover.replay_body_limit);
        let mut last: Option<Attempt> = None;
        let mut previous: Option<&Backend> = None;
        for &index in &order {
            let backend = self.backends.get(index);
            if let Some(previous) = previous {
                if !replay.can_replay() {
                    tracing::info!(
                        backend = %previous.label,
                        "not failing over: the request body was larger than AOAI_PROXY_RETRY_BODY_LIMIT"
                    );
                    break;
                }
                previous.meters.failovers.inc();
                tracing::info!(from = %previous.label, to = %backend.label, "failing over");
            }
            previous = Some(backend);
            let Ok(path_and_query) = backend.target(&original_uri, deployment) else {
                let refused =
                    ProxyError::BadRequest("the request target cannot be forwarded".into());
                return (refused.into_response(), original_uri);
            };
            let mut attempt = Request::new(RequestBody::replay(
                &replay,
                self.max_request_body,
                self.metrics.clone(),
            ));
            *attempt.method_mut() = method.clone();
            *attempt.uri_mut() = http::Uri::from(path_and_query);
            *attempt.headers_mut() = headers.clone();
            backend.meters.requests.inc();
            let sent = backend.client.send(Box::new(attempt));
            match tokio::time::timeout(self.upstream_timeout, sent).await {
                Ok(Ok(response)) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                    backend.throttled(deployment, self.wait_asked(response.headers()));
                    last = Some(Attempt::Answered(index, response));
                }
                Ok(Ok(response)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    backend.fault(failover);
                    last = Some(Attempt::Failed(self.unasked_switch(backend)));
                }
                Ok(Ok(response)) if is_fault(response.status()) => {
                    tracing::warn!(backend = %backend.label, status = response.status().as_u16(), "backend answered with a fault");
                    backend.fault(failover);
                    last = Some(Attempt::Answered(index, response));
                }
                Ok(Ok(response)) => {
                    backend.answered();
                    let response = self.respond(backend, deployment, started, response, in_flight);
                    return (response, original_uri);
                }
                Ok(Err(error)) => {
                    // The caller's body failed (too large, or the caller went away): not the
                    // backend's fault, and nothing to send again.
                    if find_cause::<RequestBodyError>(&error).is_some() {
                        return (self.upstream_failure(&error).into_response(), original_uri);
                    }
                    backend.fault(failover);
                    last = Some(Attempt::Failed(self.upstream_failure(&error)));
                }
                Err(_) => {
                    backend.fault(failover);
                    last = Some(Attempt::Failed(self.upstream_timeout()));
                }
            }
        }
        let response = match last.expect("a plan has at least one backend") {
            Attempt::Answered(index, response) => self.respond(
                self.backends.get(index),
                deployment,
                started,
                response,
                in_flight,
            ),
            Attempt::Failed(error) => error.into_response(),
        };
        (response, original_uri)
    }

    /// A WebSocket handshake: on the upstream's 101, the caller gets 101 and both connections
    /// become one tunnel; any other answer goes back as it came.
    async fn upgrade(
        &self,
        backend: usize,
        request: Request<RequestBody>,
        client: hyper::upgrade::OnUpgrade,
        in_flight: InFlight,
    ) -> Response<ResponseBody> {
        let backend = self.backends.get(backend);
        backend.meters.requests.inc();
        let started = Instant::now();
        let sent = backend.client.send_upgrade(request);
        let result = tokio::time::timeout(self.upstream_timeout, sent).await;
        let mut response = match result {
            Ok(Ok(response)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => response,
            Ok(Ok(response)) => {
                let response = response.map(PooledBody::unpooled);
                return self.respond(backend, None, started, response, in_flight);
            }
            Ok(Err(error)) => return self.upstream_failure(&error).into_response(),
            Err(_) => return self.upstream_timeout().into_response(),
        };
        let upstream = hyper::upgrade::on(&mut response);
        websocket::spawn_tunnel(
            client,
            upstream,
            self.sessions.clone(),
            self.metrics.clone(),
        );
        let (mut parts, _) = response.into_parts();
        headers::rewrite_response(&mut parts.headers);
        websocket::restore_upgrade_headers(&mut parts.headers);
        Response::from_parts(parts, ResponseBody::empty())
    }

    /// `Ok(None)` for a health check; otherwise the `Authorization` to send, or why the request
    /// is refused.
    fn check(
        &self,
        parts: &http::request::Parts,
        client_ip: IpAddr,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        if parts.uri.path() == "/health" && matches!(parts.method, Method::GET | Method::HEAD) {
            return Ok(None);
        }

        if let Some(auth) = &self.auth {
            let decision = auth.check(&parts.headers, client_ip);
            let refused = match decision {
                Decision::Allowed => None,
                Decision::Missing => Some(ProxyError::MissingKey),
                Decision::Invalid => Some(ProxyError::InvalidKey),
                Decision::LockedOut { retry_after } => Some(ProxyError::LockedOut { retry_after }),
            };
            if let Some(error) = refused {
                self.metrics.auth_failure(decision.reason());
                return Err(error);
            }
        }

        let authorization = self
            .token
            .authorization()
            .map_err(|reason| ProxyError::TokenUnavailable(reason.to_string()))?;

        if let Some(limit) = self.max_request_body {
            let declared = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|len| len > limit) {
                return Err(ProxyError::BodyTooLarge { limit });
            }
        }

        Ok(Some(authorization))
    }

    /// The caller's response from a backend's: headers rewritten, the body streamed and metered.
    /// A 429 carries both `Retry-After` and `retry-after-ms`, set to the shortest wait for a
    /// backend (this one's own when another could take the request now).
    fn respond(
        &self,
        backend: &Backend,
        deployment: Option<&str>,
        started: Instant,
        response: Response<PooledBody<RequestBody>>,
        in_flight: InFlight,
    ) -> Response<ResponseBody> {
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            self.token.report_rejected();
        }
        let (mut parts, body) = response.into_parts();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = self
                .backends
                .shortest_wait(deployment)
                .unwrap_or_else(|| self.wait_asked(&parts.headers));
            set_retry_after(&mut parts.headers, wait);
        }
        headers::rewrite_response(&mut parts.headers);
        parts.version = Version::HTTP_11;
        let usage = status
            .is_success()
            .then(|| parts.headers.get(CONTENT_TYPE))
            .flatten()
            .and_then(|value| usage::metered(value.as_bytes()))
            .map(|stream| {
                let name = deployment.map_or("", |d| backend.deployment_name(d));
                Box::new(UsageMeter::new(
                    backend.usage_meters(name),
                    stream.then_some(started),
                ))
            });
        let body = ResponseBody::upstream(
            body,
            self.metrics.clone(),
            in_flight,
            usage,
            backend.label.clone(),
        );
        Response::from_parts(parts, body)
    }

    /// How long a 429 asks to wait, within the configured maximum.
    fn wait_asked(&self, headers: &http::HeaderMap) -> Duration {
        let max = self.backends.failover.max_throttle_wait;
        throttle_wait(headers, SystemTime::now(), max).unwrap_or(DEFAULT_THROTTLE.min(max))
    }

    /// `101 Switching Protocols` to a request that asked for no upgrade: a protocol violation
    /// the caller could not handle, so a 502 instead.
    fn unasked_switch(&self, backend: &Backend) -> ProxyError {
        self.metrics.upstream_error(UpstreamError::Failed);
        tracing::warn!(backend = %backend.label, "upstream answered 101 Switching Protocols to a request that asked for no upgrade");
        ProxyError::UpstreamFailed("the upstream switched protocols without being asked".into())
    }

    fn upstream_timeout(&self) -> ProxyError {
        self.metrics.upstream_error(UpstreamError::Timeout);
        ProxyError::UpstreamTimeout(format!(
            "no response headers within {}",
            format_duration(self.upstream_timeout)
        ))
    }

    fn upstream_failure(&self, error: &RequestError) -> ProxyError {
        if let Some(limit) = find_cause::<RequestBodyError>(error).and_then(|e| match e {
            RequestBodyError::TooLarge { limit } => Some(*limit),
            RequestBodyError::Client(_) => None,
        }) {
            return ProxyError::BodyTooLarge { limit };
        }
        let reason = error_chain(error);
        if let RequestError::Connect(_) = error {
            let timed_out = find_cause::<std::io::Error>(error)
                .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut);
            if timed_out {
                self.metrics.upstream_error(UpstreamError::Timeout);
                tracing::warn!("upstream connect timeout: {reason}");
                return ProxyError::UpstreamTimeout(reason);
            }
            self.metrics.upstream_error(UpstreamError::Connect);
            tracing::warn!("upstream unreachable: {reason}");
            return ProxyError::UpstreamUnreachable(reason);
        }
        self.metrics.upstream_error(UpstreamError::Failed);
        tracing::warn!("upstream request failed: {reason}");
        ProxyError::UpstreamFailed(reason)
    }
}

/// A caller's request once checked, with its original URI (for the access log; never its query).
/// Small (what is large is boxed): the request's future holds it until the answer is complete.
enum Prepared {
    /// To send upstream.
    Forward(Box<Request<RequestBody>>, http::Uri),
    /// To send to one of several backends.
    Failover(Box<FailoverRequest>),
    /// A WebSocket handshake to send upstream, with the caller's side of the upgrade and the
    /// backend it goes to.
    Upgrade(
        Box<(
            Request<RequestBody>,
            hyper::upgrade::OnUpgrade,
            http::Uri,
            usize,
        )>,
    ),
    /// Answered by the proxy: health, or a refusal.
    Answered(Box<Response<ResponseBody>>, http::Uri),
}

impl Prepared {
    fn answered(response: Response<ResponseBody>, original_uri: http::Uri) -> Self {
        Prepared::Answered(Box::new(response), original_uri)
    }
}

/// A request checked and rewritten, with the backends it may go to.
struct FailoverRequest {
    method: Method,
    headers: http::HeaderMap,
    body: Incoming,
    order: Vec<usize>,
    original_uri: http::Uri,
}

/// What the last attempt of a failover got.
enum Attempt {
    /// A 429 or a fault status, passed on when no other backend is left.
    Answered(usize, Response<PooledBody<RequestBody>>),
    /// No answer.
    Failed(ProxyError),
}

/// 500, 502, 503 and 504: the answers another backend may not give.
fn is_fault(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}
