//! The forwarding path: one caller request in, one upstream request out, bodies streamed.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::time::error::Elapsed;

use crate::body::{RequestBody, RequestBodyError, ResponseBody};
use crate::config::Upstream;
use crate::error::{ProxyError, error_chain, find_cause};
use crate::headers;
use crate::health;
use crate::inbound_auth::{Decision, InboundAuth};
use crate::logging;
use crate::metrics::{InFlight, Metrics, UpstreamError};
use crate::token::TokenSource;
use crate::units::format_duration;
use crate::upstream::{PooledBody, RequestError, UpstreamClient};
use crate::websocket::{self, Sessions};

/// Everything a request needs, shared by all connections.
pub struct Forwarder {
    pub upstream: Upstream,
    pub client: UpstreamClient<RequestBody>,
    pub token: Arc<TokenSource>,
    pub auth: Option<Arc<InboundAuth>>,
    pub metrics: Arc<Metrics>,
    pub upstream_timeout: Duration,
    pub max_request_body: Option<u64>,
    /// Open WebSocket sessions, which outlive their handshake request.
    pub sessions: Arc<Sessions>,
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
        let prepared = self.prepare(request, client_ip);
        async move {
            let (response, original_uri) = match prepared {
                Prepared::Answered(response, original_uri) => (response, original_uri),
                Prepared::Forward(upstream_request, original_uri) => {
                    let sent = self.client.send(upstream_request);
                    let result = tokio::time::timeout(self.upstream_timeout, sent).await;
                    (self.finish(result, in_flight), original_uri)
                }
                Prepared::Upgrade(upgrade) => {
                    let (request, client, original_uri) = *upgrade;
                    // Boxed: rare, and it would otherwise grow every request's future.
                    let response = Box::pin(self.upgrade(request, client, in_flight)).await;
                    (response, original_uri)
                }
            };
            let status = response.status().as_u16();
            let elapsed = started.elapsed();
            self.metrics.record_request(&method, status, elapsed);
            logging::access(&method, original_uri.path(), status, elapsed);
            Ok(response)
        }
    }

    /// Checks the caller's request and rewrites it for the upstream, or answers it.
    fn prepare(&self, request: Request<Incoming>, client_ip: IpAddr) -> Prepared {
        let (mut parts, body) = request.into_parts();
        let (target, authorization) = match self.check(&parts, client_ip) {
            Ok(Some(checked)) => checked,
            Ok(None) => return Prepared::Answered(health::health(&self.token), parts.uri),
            Err(error) => return Prepared::Answered(error.into_response(), parts.uri),
        };
        let original_uri = std::mem::replace(&mut parts.uri, target);
        let upgrade = (parts.method == Method::GET && websocket::is_upgrade(&parts.headers))
            .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
            .flatten();
        headers::rewrite_request(&mut parts.headers, authorization);
        // The client picks HTTP/1.1 or HTTP/2 per upstream connection (ALPN), whatever the caller
        // used.
        parts.version = Version::HTTP_11;
        let body = RequestBody::new(body, self.max_request_body, self.metrics.clone());
        match upgrade {
            Some(client) => {
                websocket::restore_upgrade_headers(&mut parts.headers);
                let request = Request::from_parts(parts, body);
                Prepared::Upgrade(Box::new((request, client, original_uri)))
            }
            None => Prepared::Forward(Request::from_parts(parts, body), original_uri),
        }
    }

    /// A WebSocket handshake: on the upstream's 101, the caller gets 101 and both connections
    /// become one tunnel; any other answer goes back as it came.
    async fn upgrade(
        &self,
        request: Request<RequestBody>,
        client: hyper::upgrade::OnUpgrade,
        in_flight: InFlight,
    ) -> Response<ResponseBody> {
        let sent = self.client.send_upgrade(request);
        let result = tokio::time::timeout(self.upstream_timeout, sent).await;
        let mut response = match result {
            Ok(Ok(response)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => response,
            Ok(Ok(response)) => {
                return self.finish(Ok(Ok(response.map(PooledBody::unpooled))), in_flight);
            }
            Ok(Err(error)) => return self.finish(Ok(Err(error)), in_flight),
            Err(elapsed) => return self.finish(Err(elapsed), in_flight),
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

    /// `Ok(None)` for a health check; otherwise the upstream target and the `Authorization` to
    /// send, or why the request is refused.
    fn check(
        &self,
        parts: &http::request::Parts,
        client_ip: IpAddr,
    ) -> Result<Option<(http::Uri, HeaderValue)>, ProxyError> {
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

        match self.upstream.path_for(&parts.uri) {
            Ok(path_and_query) => Ok(Some((http::Uri::from(path_and_query), authorization))),
            Err(_) => Err(ProxyError::BadRequest(
                "the request target cannot be forwarded".into(),
            )),
        }
    }

    /// The caller's response from the upstream's, or the proxy's error when there is none.
    fn finish(
        &self,
        result: Result<Result<Response<PooledBody<RequestBody>>, RequestError>, Elapsed>,
        in_flight: InFlight,
    ) -> Response<ResponseBody> {
        let response = match result {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return self.upstream_failure(&error).into_response(),
            Err(_) => {
                self.metrics.upstream_error(UpstreamError::Timeout);
                return ProxyError::UpstreamTimeout(format!(
                    "no response headers within {}",
                    format_duration(self.upstream_timeout)
                ))
                .into_response();
            }
        };
        if response.status() == StatusCode::UNAUTHORIZED {
            self.token.report_rejected();
        }
        let (mut parts, body) = response.into_parts();
        headers::rewrite_response(&mut parts.headers);
        parts.version = Version::HTTP_11;
        let body = ResponseBody::upstream(body, self.metrics.clone(), in_flight);
        Response::from_parts(parts, body)
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
enum Prepared {
    /// To send upstream.
    Forward(Request<RequestBody>, http::Uri),
    /// A WebSocket handshake to send upstream, with the caller's side of the upgrade.
    Upgrade(Box<(Request<RequestBody>, hyper::upgrade::OnUpgrade, http::Uri)>),
    /// Answered by the proxy: health, or a refusal.
    Answered(Response<ResponseBody>, http::Uri),
}
