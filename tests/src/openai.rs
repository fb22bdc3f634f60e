//! A mock Azure OpenAI upstream that records what it receives.
//!
//! Behaviour is steered per request by `x-mock-*` headers, which the proxy forwards unchanged:
//! - `x-mock-status: 401` answers that status with an Azure-style error body;
//! - `x-mock-delay-ms: N` waits before sending the response headers;
//! - `x-mock-chunks: N`, `x-mock-chunk-delay-ms: D` shape a streamed chat completion;
//! - `x-mock-reset-after: K` aborts the connection after K streamed chunks.
//!
//! `POST .../chat/completions` answers a chat completion (SSE when the body asks `"stream": true`);
//! `POST .../responses` a Responses API answer (SSE events when streamed); `GET .../models` a model
//! list; `POST .../embeddings` an embedding; a multipart `POST .../files` a file object;
//! `POST .../audio/transcriptions` (multipart) a transcription; `GET .../content` with
//! `x-mock-download-bytes: N` a streamed download of N bytes; anything else a JSON echo of method,
//! path, query and body size. Every response carries
//! end-to-end headers Azure sends (request ids, rate limits) and hop-by-hop ones that must not pass.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::server::{MockBody, MockServer, channel_body, full, handler, json};
use crate::tokens::TokenLedger;

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path_and_query: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    streams_finished: AtomicUsize,
    /// When set, a request whose bearer token this ledger does not hold as valid gets 401.
    ledger: Option<Arc<TokenLedger>>,
    invalid_tokens: AtomicUsize,
}

/// The running mock.
pub struct MockOpenAi {
    pub server: MockServer,
    state: Arc<State>,
}

/// The text the mock's completions carry.
pub const COMPLETION_TEXT: &str = "Hello from the mock Azure OpenAI";

impl MockOpenAi {
    /// Over plain HTTP.
    pub async fn start() -> Self {
        let state = Arc::new(State::default());
        let server = MockServer::http(Self::handler(state.clone())).await;
        Self { server, state }
    }

    /// Over plain HTTP, answering 401 (as Azure does) to any token `ledger` does not hold as valid
    /// at the moment the request arrives.
    pub async fn start_checking(ledger: Arc<TokenLedger>) -> Self {
        let state = Arc::new(State {
            ledger: Some(ledger),
            ..State::default()
        });
        let server = MockServer::http(Self::handler(state.clone())).await;
        Self { server, state }
    }

    /// Requests refused because their token was not valid at that moment.
    pub fn invalid_tokens(&self) -> usize {
        self.state.invalid_tokens.load(Ordering::SeqCst)
    }

    /// Over HTTPS with a certificate from `tls` (ALPN h2 and http/1.1).
    pub async fn start_tls(tls: rustls::ServerConfig) -> Self {
        let state = Arc::new(State::default());
        let server = MockServer::https(Self::handler(state.clone()), tls).await;
        Self { server, state }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Number of streamed responses that have sent their last chunk.
    pub fn streams_finished(&self) -> usize {
        self.state.streams_finished.load(Ordering::SeqCst)
    }

    fn handler(state: Arc<State>) -> crate::server::Handler {
        handler(move |request: Request<Incoming>, peer| {
            let state = state.clone();
            async move { respond(state, request, peer).await }
        })
    }
}

fn header_number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

async fn respond(
    state: Arc<State>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<MockBody> {
    let arrived = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.clone(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|pq| pq.to_string())
            .unwrap_or_default(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
        peer,
    };
    state.requests.lock().unwrap().push(recorded);
    if let Some(ledger) = &state.ledger {
        let token = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !ledger.valid_at(token, arrived) {
            state.invalid_tokens.fetch_add(1, Ordering::SeqCst);
            return json(
                401,
                &serde_json::json!({"error": {"code": "401", "message": "Unauthorized. Access token is missing, invalid, audience is incorrect, or have expired."}}),
            );
        }
    }

    if let Some(delay) = header_number(&parts.headers, "x-mock-delay-ms") {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut response = if let Some(status) = header_number(&parts.headers, "x-mock-status") {
        json(
            status as u16,
            &serde_json::json!({"error": {"code": status.to_string(), "message": "mock error status"}}),
        )
    } else if parts.method == Method::POST && parts.uri.path().ends_with("/chat/completions") {
        let request_json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if request_json["stream"] == serde_json::Value::Bool(true) {
            stream_completion(state, &parts.headers)
        } else {
            json(200, &completion())
        }
    } else if let Some(answer) = other_api(&parts, &body) {
        answer
    } else {
        json(
            200,
            &serde_json::json!({
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "query": parts.uri.query(),
                "body_bytes": body.len(),
            }),
        )
    };
    let headers = response.headers_mut();
    headers.insert("x-request-id", "mock-request-id".parse().unwrap());
    headers.insert("apim-request-id", "mock-apim-id".parse().unwrap());
    headers.insert("x-ms-region", "Sweden Central".parse().unwrap());
    headers.insert("x-ratelimit-remaining-requests", "99".parse().unwrap());
    headers.insert("x-ratelimit-remaining-tokens", "9999".parse().unwrap());
    headers.insert("keep-alive", "timeout=5".parse().unwrap());
    headers.insert("connection", "keep-alive, x-upstream-hop".parse().unwrap());
    headers.insert("x-upstream-hop", "must-not-pass".parse().unwrap());
    response
}

/// The Azure OpenAI APIs beside chat completions, answered in the shapes the SDKs parse.
fn other_api(parts: &http::request::Parts, body: &Bytes) -> Option<Response<MockBody>> {
    let path = parts.uri.path();
    let post = parts.method == Method::POST;
    let answer = if post && path.ends_with("/responses") {
        let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        if request["stream"] == serde_json::Value::Bool(true) {
            return Some(stream_response());
        }
        json(200, &response_object("completed"))
    } else if parts.method == Method::GET && path.ends_with("/models") {
        json(
            200,
            &serde_json::json!({"object": "list", "data": [
                {"id": "gpt-4o", "object": "model", "created": 1_700_000_000, "owned_by": "system"},
                {"id": "text-embedding-3-small", "object": "model", "created": 1_700_000_000, "owned_by": "system"},
            ]}),
        )
    } else if post && path.ends_with("/embeddings") {
        json(
            200,
            &serde_json::json!({
                "object": "list", "model": "text-embedding-3-small",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}],
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }),
        )
    } else if post && path.ends_with("/files") && is_multipart(parts) {
        json(
            200,
            &serde_json::json!({
                "id": "file-mock", "object": "file", "bytes": body.len(), "created_at": 1_700_000_000,
                "filename": "upload.jsonl", "purpose": "batch", "status": "processed",
            }),
        )
    } else if post && path.ends_with("/audio/transcriptions") {
        json(
            200,
            &serde_json::json!({
                "text": format!("transcribed {} bytes", body.len()),
                "usage": {"type": "duration", "seconds": 1.5},
            }),
        )
    } else if parts.method == Method::GET && path.ends_with("/content") {
        let size = header_number(&parts.headers, "x-mock-download-bytes")?;
        return Some(download(size));
    } else {
        return None;
    };
    Some(answer)
}

fn is_multipart(parts: &http::request::Parts) -> bool {
    parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"))
}

fn response_object(status: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "resp_mock", "object": "response", "created_at": 1_700_000_000,
        "model": "gpt-4o", "status": status, "output": [],
    })
}

/// A streamed Responses API answer: created, five text deltas, completed.
fn stream_response() -> Response<MockBody> {
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        let mut events = vec![(
            "response.created",
            serde_json::json!({"type": "response.created", "sequence_number": 0, "response": response_object("in_progress")}),
        )];
        for i in 0..5u64 {
            events.push(("response.output_text.delta", serde_json::json!({
                "type": "response.output_text.delta", "sequence_number": i + 1, "item_id": "msg_mock",
                "output_index": 0, "content_index": 0, "delta": format!("part{i} "),
            })));
        }
        events.push((
            "response.completed",
            serde_json::json!({"type": "response.completed", "sequence_number": 6, "response": response_object("completed")}),
        ));
        for (name, event) in events {
            let frame = format!("event: {name}\ndata: {event}\n\n");
            if tx.send(Ok(Bytes::from(frame))).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .body(body)
        .expect("valid response")
}

/// `size` bytes, sent 64 KiB at a time as the reader takes them.
fn download(size: u64) -> Response<MockBody> {
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if tx.send(Ok(chunk.slice(..n))).await.is_err() {
                return;
            }
            left -= n as u64;
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/octet-stream")
        .header("content-length", size.to_string())
        .body(body)
        .expect("valid response")
}

fn completion() -> serde_json::Value {
    serde_json::json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": COMPLETION_TEXT},
            "finish_reason": "stop",
            "logprobs": null
        }],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    })
}

/// One SSE event of a streamed chat completion.
pub fn chunk_event(content: &str) -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
    });
    format!("data: {chunk}\n\n")
}

fn stream_completion(state: Arc<State>, headers: &HeaderMap) -> Response<MockBody> {
    let chunks = header_number(headers, "x-mock-chunks").unwrap_or(5) as usize;
    let delay = Duration::from_millis(header_number(headers, "x-mock-chunk-delay-ms").unwrap_or(0));
    let reset_after = header_number(headers, "x-mock-reset-after").map(|n| n as usize);
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for i in 0..chunks {
            if reset_after == Some(i) {
                // Let the chunks already sent leave the socket before the connection is cut.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tx
                    .send(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "mock reset",
                    )))
                    .await;
                return;
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx
                .send(Ok(Bytes::from(chunk_event(&format!("part{i} ")))))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
        state.streams_finished.fetch_add(1, Ordering::SeqCst);
    });
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
        .expect("valid response")
}

/// An empty 200 answer, for handlers that do not care.
pub fn ok_empty() -> Response<MockBody> {
    Response::new(full(Bytes::new()))
}
