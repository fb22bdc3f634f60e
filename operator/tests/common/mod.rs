//! A mocked API server (tower-test) for the operator's scenarios: each request the operator makes
//! is checked against the chart's RBAC (`rbac::PERMISSIONS`) before the test answers it.
#![allow(dead_code)]

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;
use tower_test::mock::{self, Handle, SendResponse};

pub type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// A client whose requests the returned handle receives.
pub fn api_server() -> (kube::Client, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// The next request the operator sends, with its JSON body (Null when empty).
pub async fn next(
    handle: &mut ApiHandle,
) -> (http::request::Parts, Value, SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("the operator sent a request in time")
        .expect("the client is alive");
    let (parts, body) = request.into_parts();
    assert!(
        aoai_operator::rbac::allows(&parts.method, &parts.uri),
        "the chart's RBAC does not allow {} {}",
        parts.method,
        parts.uri
    );
    let bytes = body.collect_bytes().await.unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts, value, send)
}

pub fn respond(send: SendResponse<Response<Body>>, status: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

/// A Kubernetes Status error body.
pub fn status(code: u16, reason: &str) -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                       "message": reason, "code": code})
}

/// Fails if the operator sends anything more within 200 ms (a gone client counts as nothing).
pub async fn expect_no_request(handle: &mut ApiHandle) {
    let more = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
    assert!(
        !matches!(more, Ok(Some(_))),
        "unexpected request: {:?}",
        more.unwrap().map(|(r, _)| r.uri().clone())
    );
}
