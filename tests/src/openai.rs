//! A mock Azure OpenAI upstream that records what it receives.
//!
//! Behaviour is steered per request by `x-mock-*` headers, which the proxy forwards unchanged:
//! - `x-mock-status: 401` answers that status with an Azure-style error body;
//! - `x-mock-delay-ms: N` waits before sending the response headers;
//! - `x-mock-chunks: N`, `x-mock-chunk-delay-ms: D` shape a streamed chat completion;
//! - `x-mock-reset-after: K` aborts the connection after K streamed chunks.
//!
//! [`MockOpenAi::set_fault`] makes every request get a 429 (with one of Azure's header forms), a
//! status, or no answer at all; [`ResetBackend`] resets each connection before any answer. A
//! streamed chat completion asked for with `stream_options.include_usage` ends with a usage
//! chunk, as Azure's does.
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
    /// When it arrived.
    pub at: std::time::Instant,
}

/// How a throttled mock says how long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleHeader {
    /// `retry-after-ms: <ms>` (Azure OpenAI).
    RetryAfterMs,
    /// `retry-after: <seconds>`.
    RetryAfter,
    /// `x-ratelimit-reset-tokens: <seconds>` with `x-ratelimit-remaining-tokens: 0`.
    ResetTokens,
    /// `x-ratelimit-reset-requests: <seconds>` with `x-ratelimit-remaining-requests: 0`.
    ResetRequests,
}

/// What the mock does with every request while it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429 with the wait in `header`.
    Throttle {
        header: ThrottleHeader,
        wait: Duration,
    },
    /// This status with an Azure-style error body.
    Status(u16),
    /// Never answers.
    Hang,
}

/// Prompt tokens the mock reports for a streamed chat completion (completion tokens: one per
/// chunk).
pub const STREAM_PROMPT_TOKENS: u64 = 9;

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    streams_finished: AtomicUsize,
    /// When set, a request whose bearer token this ledger does not hold as valid gets 401.
    ledger: Option<Arc<TokenLedger>>,
    invalid_tokens: AtomicUsize,
    fault: Mutex<Option<Fault>>,
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

    /// Over HTTPS on `ip` (the node tests' bridge gateway), answering 401 to any token `ledger`
    /// does not hold as valid, as [`MockOpenAi::start_checking`] does.
    pub async fn start_tls_at(
        ip: std::net::IpAddr,
        tls: rustls::ServerConfig,
        ledger: Arc<TokenLedger>,
    ) -> Self {
        let state = Arc::new(State {
            ledger: Some(ledger),
            ..State::default()
        });
        let server = MockServer::https_at(ip, Self::handler(state.clone()), tls).await;
        Self { server, state }
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

    /// From now on, every request gets `fault` (or a normal answer with `None`).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *self.state.fault.lock().unwrap() = fault;
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
        at: arrived,
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

    let fault = *state.fault.lock().unwrap();
    match fault {
        Some(Fault::Throttle { header, wait }) => return throttled(header, wait),
        Some(Fault::Status(status)) => {
            return json(
                status,
                &serde_json::json!({"error": {"code": status.to_string(), "message": "mock fault"}}),
            );
        }
        Some(Fault::Hang) => std::future::pending::<()>().await,
        None => {}
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
            let usage = request_json["stream_options"]["include_usage"] == true;
            stream_completion(state, &parts.headers, usage)
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

/// A 429 as Azure sends it, with the wait in `header`.
fn throttled(header: ThrottleHeader, wait: Duration) -> Response<MockBody> {
    let mut response = json(
        429,
        &serde_json::json!({"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current tier. Please retry after a while."}}),
    );
    let seconds = wait.as_secs_f64().ceil() as u64;
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        headers.insert(name, value.parse().unwrap());
    };
    match header {
        ThrottleHeader::RetryAfterMs => set("retry-after-ms", wait.as_millis().to_string()),
        ThrottleHeader::RetryAfter => set("retry-after", seconds.to_string()),
        ThrottleHeader::ResetTokens => {
            set("x-ratelimit-remaining-tokens", "0".into());
            set(
                "x-ratelimit-reset-tokens",
                format!("{}", wait.as_secs_f64()),
            );
            set("x-ratelimit-remaining-requests", "10".into());
            set("x-ratelimit-reset-requests", "60".into());
        }
        ThrottleHeader::ResetRequests => {
            set("x-ratelimit-remaining-requests", "0".into());
            set(
                "x-ratelimit-reset-requests",
                format!("{}", wait.as_secs_f64()),
            );
        }
    }
    response
}

/// Resets every connection before answering (after reading the request head), counting them.
pub struct ResetBackend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ResetBackend {
    pub async fn start() -> Self {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    let _ = stream.read(&mut buffer).await;
                    // Linger 0: close with a RST, as a broken load balancer does.
                    let _ = stream.set_zero_linger();
                    drop(stream);
                });
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted (each reset).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for ResetBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn stream_completion(state: Arc<State>, headers: &HeaderMap, usage: bool) -> Response<MockBody> {
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
            let mut event = chunk_event(&format!("part{i} "));
            if usage {
                event = event.replace("}\n\n", ",\"usage\":null}\n\n");
            }
            if tx.send(Ok(Bytes::from(event))).await.is_err() {
                return;
            }
        }
        if usage {
            let chunk = serde_json::json!({
                "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                "model": "gpt-4o-mini", "choices": [],
                "usage": {"prompt_tokens": STREAM_PROMPT_TOKENS, "completion_tokens": chunks,
                          "total_tokens": STREAM_PROMPT_TOKENS + chunks as u64},
            });
            if tx
                .send(Ok(Bytes::from(format!("data: {chunk}\n\n"))))
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
