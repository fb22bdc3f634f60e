//! The forwarding path: one caller request in, one upstream request out, bodies streamed.

use std::error::Error as StdError;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::CONTENT_LENGTH;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::body::{RequestBody, RequestBodyError, ResponseBody};
use crate::config::Upstream;
use crate::error::ProxyError;
use crate::headers;
use crate::health;
use crate::inbound_auth::{Decision, InboundAuth};
use crate::logging;
use crate::metrics::{InFlight, Metrics, UpstreamError};
use crate::token::TokenSource;
use crate::units::format_duration;
use crate::upstream::{RequestError, UpstreamClient};

/// Everything a request needs, shared by all connections.
pub struct Forwarder {
    pub upstream: Upstream,
    pub client: UpstreamClient<RequestBody>,
    pub token: Arc<TokenSource>,
    pub auth: Option<Arc<InboundAuth>>,
    pub metrics: Arc<Metrics>,
    pub upstream_timeout: Duration,
    pub max_request_body: Option<u64>,
}

impl Forwarder {
    /// Answers one request: health, a proxy-made error, or the upstream's streamed response.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client_ip: IpAddr,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let method = request.method().clone();
        let in_flight = self.metrics.in_flight();
        let (response, path) = self.respond(request, client_ip, in_flight).await;
        let status = response.status().as_u16();
        self.metrics.record_request(&method, status, started);
        let path = path.as_ref().map_or("", |u| u.path());
        logging::access(&method, path, status, started.elapsed());
        response
    }

    /// Returns the response and the caller's original URI (for the access log; never its query).
    async fn respond(
        &self,
        request: Request<Incoming>,
        client_ip: IpAddr,
        in_flight: InFlight,
    ) -> (Response<ResponseBody>, Option<http::Uri>) {
        let (mut parts, body) = request.into_parts();

        if parts.uri.path() == "/health" && matches!(parts.method, Method::GET | Method::HEAD) {
            return (health::health(&self.token), Some(parts.uri));
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
                return (error.into_response(), Some(parts.uri));
            }
        }

        let authorization = match self.token.authorization() {
            Ok(value) => value,
            Err(reason) => {
                return (
                    ProxyError::TokenUnavailable(reason.to_string()).into_response(),
                    Some(parts.uri),
                );
            }
        };

        if let Some(limit) = self.max_request_body {
            let declared = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|len| len > limit) {
                return (
                    ProxyError::BodyTooLarge { limit }.into_response(),
                    Some(parts.uri),
                );
            }
        }

        let target = match self.upstream.path_for(&parts.uri) {
            Ok(path_and_query) => http::Uri::from(path_and_query),
            Err(_) => {
                return (
                    ProxyError::BadRequest("the request target cannot be forwarded".into())
                        .into_response(),
                    Some(parts.uri),
                );
            }
        };
        let original_uri = std::mem::replace(&mut parts.uri, target);
        headers::rewrite_request(&mut parts.headers, authorization);
        // The client picks HTTP/1.1 or HTTP/2 per upstream connection (ALPN), whatever the caller used.
        parts.version = Version::HTTP_11;
        let body = RequestBody::new(body, self.max_request_body, self.metrics.clone());
        let upstream_request = Request::from_parts(parts, body);

        let result =
            tokio::time::timeout(self.upstream_timeout, self.client.send(upstream_request)).await;
        let response = match result {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                return (
                    self.upstream_failure(&error).into_response(),
                    Some(original_uri),
                );
            }
            Err(_) => {
                self.metrics.upstream_error(UpstreamError::Timeout);
                return (
                    ProxyError::UpstreamTimeout(format!(
                        "no response headers within {}",
                        format_duration(self.upstream_timeout)
                    ))
                    .into_response(),
                    Some(original_uri),
                );
            }
        };

        if response.status() == StatusCode::UNAUTHORIZED {
            self.token.report_rejected();
        }
        let (mut parts, body) = response.into_parts();
        headers::rewrite_response(&mut parts.headers);
        parts.version = Version::HTTP_11;
        let body = ResponseBody::upstream(body, self.metrics.clone(), in_flight);
        (Response::from_parts(parts, body), Some(original_uri))
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

/// The first error of type `T` in `error`'s source chain.
fn find_cause<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// `error` and its causes, joined with ": ", without repeats.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}
