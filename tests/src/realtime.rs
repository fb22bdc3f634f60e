//! A mock of Azure OpenAI's Realtime API: WebSocket on `GET /openai/realtime` over plain HTTP on
//! 127.0.0.1. The handshake is refused (401) unless it carries `Authorization: Bearer <token>`
//! and no `api-key`, as Azure with Entra ID expects. Once open, the mock sends `session.created`
//! and answers each text event `{"type": T, ...}` with `{"type": "echo", "of": T, "event": ...}`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

/// What the handshakes looked like.
#[derive(Clone, Debug)]
pub struct Handshake {
    pub path_and_query: String,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct State {
    handshakes: Mutex<Vec<Handshake>>,
    /// When set, every handshake is refused with this status.
    refuse_with: Mutex<Option<u16>>,
    events: Mutex<Vec<String>>,
}

pub struct MockRealtime {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl MockRealtime {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(State::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, shared.clone()));
            }
        });
        Self { addr, state, task }
    }

    /// The base URL to give the proxy (`API_BASE_URL`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn refuse_with(&self, status: u16) {
        *self.state.refuse_with.lock().unwrap() = Some(status);
    }

    pub fn handshakes(&self) -> Vec<Handshake> {
        self.state.handshakes.lock().unwrap().clone()
    }

    /// The client events received, as text.
    pub fn events(&self) -> Vec<String> {
        self.state.events.lock().unwrap().clone()
    }
}

impl Drop for MockRealtime {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn refusal(status: u16, message: &str) -> ErrorResponse {
    let body = serde_json::json!({"error": {"code": status.to_string(), "message": message}});
    let mut response = ErrorResponse::new(Some(body.to_string()));
    *response.status_mut() = http::StatusCode::from_u16(status).expect("a status");
    response
}

#[allow(clippy::result_large_err, reason = "tungstenite's callback type")]
async fn session(stream: tokio::net::TcpStream, state: Arc<State>) {
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let headers = request.headers().clone();
        state.handshakes.lock().unwrap().push(Handshake {
            path_and_query: request
                .uri()
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default(),
            headers: headers.clone(),
        });
        if let Some(status) = *state.refuse_with.lock().unwrap() {
            return Err(refusal(status, "refused by the mock"));
        }
        if !request.uri().path().starts_with("/openai/realtime") {
            return Err(refusal(404, "no such path"));
        }
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7);
        if !bearer || headers.contains_key("api-key") {
            return Err(refusal(
                401,
                "an Entra ID bearer token and no api-key are required",
            ));
        }
        // Azure picks the first subprotocol the client offers.
        let mut response = response;
        if let Some(first) = headers
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|p| p.trim().parse().ok())
        {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", first);
        }
        Ok(response)
    };
    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
        return;
    };
    let created = serde_json::json!({"type": "session.created", "session": {"id": "sess_mock"}});
    if socket
        .send(Message::text(created.to_string()))
        .await
        .is_err()
    {
        return;
    }
    while let Some(Ok(message)) = socket.next().await {
        match message {
            Message::Text(text) => {
                state.events.lock().unwrap().push(text.to_string());
                let event: serde_json::Value =
                    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                let echo = serde_json::json!({"type": "echo", "of": event["type"], "event": event});
                if socket.send(Message::text(echo.to_string())).await.is_err() {
                    return;
                }
            }
            Message::Binary(bytes) => {
                // Echoed as it came.
                let sent = socket.send(Message::binary(bytes)).await;
                if sent.is_err() {
                    return;
                }
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}
