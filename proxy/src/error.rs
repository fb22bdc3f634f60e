//! Answers the proxy makes itself, as JSON in the OpenAI error shape that SDKs already parse:
//! `{"error":{"message":"...","type":"...","code":"..."}}`, and the text of an error's chain. A
//! leaf: it knows no body type of the crate (any body made from a `String` will do).

use std::error::Error as StdError;
use std::time::Duration;

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

/// Every error the proxy answers with, never carrying a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// No key presented while inbound authentication is on.
    MissingKey,
    /// The presented key is not accepted.
    InvalidKey,
    /// Too many failed key checks from this client.
    LockedOut { retry_after: Duration },
    /// No usable Entra ID token (with the reason).
    TokenUnavailable(String),
    /// The request body is over the configured limit.
    BodyTooLarge { limit: u64 },
    /// The request target cannot be joined to the upstream URL.
    BadRequest(String),
    /// The upstream could not be reached.
    UpstreamUnreachable(String),
    /// The upstream did not answer in time.
    UpstreamTimeout(String),
    /// The upstream connection failed after connecting, before the response headers.
    UpstreamFailed(String),
    /// Every backend is throttled for this request (429 from each, its wait not over).
    Throttled { retry_after: Duration },
    /// A bug met while answering (a caught panic).
    Internal,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingKey | ProxyError::InvalidKey => StatusCode::UNAUTHORIZED,
            ProxyError::LockedOut { .. } | ProxyError::Throttled { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::TokenUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UpstreamUnreachable(_) | ProxyError::UpstreamFailed(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI `type` field.
    fn kind(&self) -> &'static str {
        match self {
            ProxyError::MissingKey | ProxyError::InvalidKey => "authentication_error",
            ProxyError::LockedOut { .. } | ProxyError::Throttled { .. } => "rate_limit_error",
            ProxyError::TokenUnavailable(_) => "service_unavailable",
            ProxyError::BodyTooLarge { .. } | ProxyError::BadRequest(_) => "invalid_request_error",
            ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::UpstreamFailed(_) => "upstream_error",
            ProxyError::Internal => "internal_error",
        }
    }

    /// The OpenAI `code` field: stable, for callers and dashboards.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::MissingKey => "missing_api_key",
            ProxyError::InvalidKey => "invalid_api_key",
            ProxyError::LockedOut { .. } => "too_many_failed_attempts",
            ProxyError::TokenUnavailable(_) => "token_unavailable",
            ProxyError::BodyTooLarge { .. } => "request_too_large",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::UpstreamUnreachable(_) => "upstream_unreachable",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::UpstreamFailed(_) => "upstream_failed",
            ProxyError::Throttled { .. } => "429",
            ProxyError::Internal => "internal_error",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ProxyError::MissingKey => {
                "no API key presented: send it as the api-key header or as Authorization: Bearer <key>".into()
            }
            ProxyError::InvalidKey => "the API key presented is not accepted by this proxy".into(),
            ProxyError::LockedOut { retry_after } => format!(
                "too many failed API key checks from this client; retry in {} seconds",
                retry_after.as_secs().max(1)
            ),
            ProxyError::TokenUnavailable(reason) => {
                format!("aoai-proxy holds no valid Entra ID token: {reason}")
            }
            ProxyError::BodyTooLarge { limit } => {
                format!("the request body exceeds this proxy's limit of {limit} bytes")
            }
            ProxyError::BadRequest(reason) => reason.clone(),
            ProxyError::UpstreamUnreachable(reason) => {
                format!("cannot reach Azure OpenAI: {reason}")
            }
            ProxyError::UpstreamTimeout(reason) => format!("Azure OpenAI did not answer in time: {reason}"),
            ProxyError::UpstreamFailed(reason) => {
                format!("the connection to Azure OpenAI failed: {reason}")
            }
            ProxyError::Throttled { retry_after } => format!(
                "every Azure OpenAI backend is throttled for this request; retry after {} ms",
                retry_after.as_millis().max(1)
            ),
            ProxyError::Internal => {
                "aoai-proxy met an internal error on this request (logged, and counted in aoai_proxy_panics_total)".into()
            }
        }
    }

    pub fn into_response<B: From<String>>(self) -> Response<B> {
        let mut response = json_error(self.status(), self.kind(), self.code(), &self.message());
        match self {
            ProxyError::LockedOut { retry_after } => {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
            }
            ProxyError::Throttled { retry_after } => {
                set_retry_after(response.headers_mut(), retry_after);
            }
            _ => {}
        }
        response
    }
}

/// Sets `Retry-After` (whole seconds, rounded up) and `retry-after-ms` to `wait`, so that an SDK
/// waits exactly that long, whichever of the two it reads.
pub fn set_retry_after(headers: &mut http::HeaderMap, wait: Duration) {
    // Rounded up: a caller back a fraction of a millisecond early would be throttled again.
    let ms = wait.as_micros().div_ceil(1000).max(1);
    headers.insert(RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000) as u64));
    headers.insert("retry-after-ms", HeaderValue::from(ms as u64));
}

/// A JSON error response in the OpenAI shape.
pub fn json_error<B: From<String>>(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: &str,
) -> Response<B> {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "code": code }
    });
    json_response(status, body.to_string())
}

/// A response with a JSON body.
pub fn json_response<B: From<String>>(status: StatusCode, body: String) -> Response<B> {
    let mut response = Response::new(B::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The first error of type `T` in `error`'s source chain.
pub fn find_cause<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(response: Response<String>) -> serde_json::Value {
        serde_json::from_str(response.body()).unwrap()
    }

    #[tokio::test]
    async fn openai_error_shape() {
        let response: Response<String> =
            ProxyError::UpstreamTimeout("no response headers within 10s".into()).into_response();
        assert_eq!(response.status(), 504);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let json = body_json(response).await;
        assert_eq!(json["error"]["type"], "upstream_error");
        assert_eq!(json["error"]["code"], "upstream_timeout");
        assert!(json["error"]["message"].as_str().unwrap().contains("10s"));
    }

    #[tokio::test]
    async fn lockout_carries_retry_after() {
        let response: Response<String> = ProxyError::LockedOut {
            retry_after: Duration::from_secs(42),
        }
        .into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[RETRY_AFTER], "42");
    }

    #[test]
    fn statuses() {
        assert_eq!(ProxyError::MissingKey.status(), 401);
        assert_eq!(ProxyError::TokenUnavailable(String::new()).status(), 503);
        assert_eq!(ProxyError::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(ProxyError::UpstreamUnreachable(String::new()).status(), 502);
        assert_eq!(ProxyError::UpstreamFailed(String::new()).status(), 502);
    }
}
