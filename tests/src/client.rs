//! Plain HTTP helpers for tests: send a request to a loopback server, read the answer.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A keep-alive HTTP client (HTTP/1.1, no TLS).
pub fn http_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Wraps bytes as a request body.
pub fn body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A collected answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` and returns the response with its body still streaming.
pub async fn send(request: Request<Body>) -> Response<Incoming> {
    http_client()
        .request(request)
        .await
        .expect("request reaches the server")
}

/// Sends `request` and collects the whole answer.
pub async fn fetch(request: Request<Body>) -> Answer {
    let response = send(request).await;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `GET url` with the given headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut builder = Request::get(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    fetch(builder.body(body(Bytes::new())).expect("valid request")).await
}

/// `POST url` with a JSON body and the given headers.
pub async fn post_json(url: &str, headers: &[(&str, &str)], json: &serde_json::Value) -> Answer {
    let mut builder = Request::post(url).header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    fetch(builder.body(body(json.to_string())).expect("valid request")).await
}

/// A chat completion request, as an Azure OpenAI SDK sends it, to the service at `url`.
pub async fn chat(url: &str) -> Answer {
    post_json(
        &format!("{url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"),
        &[],
        &serde_json::json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
}
