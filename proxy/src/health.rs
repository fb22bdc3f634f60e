//! Health endpoints and the admin listener's routes.
//!
//! `/health` answers 200 `{"status":"ok"}` only while a usable token is held, 503 with the reason
//! otherwise: it is the readiness (and startup) signal. `/livez` answers 200 while the process
//! serves, so that an identity outage makes the pod unready but never restarts it.

use http::{Method, Request, Response, StatusCode};

use crate::body::ResponseBody;
use crate::error::{json_error, json_response};
use crate::metrics::Metrics;
use crate::token::TokenSource;

/// The `/health` answer (forwarding and admin listeners alike).
pub fn health(token: &TokenSource) -> Response<ResponseBody> {
    match token.authorization() {
        Ok(_) => json_response(StatusCode::OK, r#"{"status":"ok"}"#.to_string()),
        Err(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "unavailable", "reason": reason.to_string() })
                .to_string(),
        ),
    }
}

/// Routes of the admin listener: `/health`, `/readyz`, `/livez`, `/metrics`. Never forwarded.
pub fn admin<B>(
    request: &Request<B>,
    token: &TokenSource,
    metrics: &Metrics,
) -> Response<ResponseBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            "the admin listener answers GET only",
        );
    }
    match request.uri().path() {
        "/health" | "/readyz" => health(token),
        "/livez" => json_response(StatusCode::OK, r#"{"status":"ok"}"#.to_string()),
        "/metrics" => {
            let mut response = Response::new(ResponseBody::local(metrics.encode(token)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(aoai_runtime::METRICS_CONTENT_TYPE),
            );
            response
        }
        _ => json_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            "the admin listener serves /health, /readyz, /livez and /metrics; requests to Azure OpenAI go to the forwarding port",
        ),
    }
}
