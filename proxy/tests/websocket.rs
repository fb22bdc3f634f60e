//! The Realtime API's WebSocket through the proxy, on 127.0.0.1: a real WebSocket client
//! (tokio-tungstenite) exchanges events both ways with a mock that requires the Entra ID token and
//! no api-key; a refused handshake comes back as the upstream sent it; callers' keys are checked
//! before the upgrade; a session survives a token refresh; shutdown closes open sessions within
//! the grace period.

mod common;

use std::time::{Duration, Instant};

use aoai_e2e::realtime::MockRealtime;
use aoai_proxy::token::Token;
use common::{TOKEN, TestProxy, fixed_token};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PATH: &str = "/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-realtime";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    proxy: &TestProxy,
    headers: &[(&str, &str)],
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let url = format!("{}{PATH}", proxy.url.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

async fn next_json(socket: &mut Socket) -> serde_json::Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("an event in time")
            .expect("the session is open")
            .expect("a valid frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn a_realtime_session_opens_with_the_token_and_carries_events_both_ways() {
    let upstream = MockRealtime::start().await;
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url())], fixed_token()).await;
    let mut socket = connect(
        &proxy,
        &[
            ("api-key", "caller-key"),
            (
                "sec-websocket-protocol",
                "realtime, openai-insecure-api-key.caller-key",
            ),
        ],
    )
    .await
    .expect("the handshake succeeds through the proxy");

    assert_eq!(next_json(&mut socket).await["type"], "session.created");
    for i in 0..3 {
        let event =
            serde_json::json!({"type": "input_audio_buffer.append", "audio": format!("chunk-{i}")});
        socket.send(Message::text(event.to_string())).await.unwrap();
        let echo = next_json(&mut socket).await;
        assert_eq!(echo["of"], "input_audio_buffer.append");
        assert_eq!(echo["event"]["audio"], format!("chunk-{i}"));
    }
    // Binary frames pass as well, byte for byte.
    socket
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let binary = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(binary, Message::binary(vec![0u8, 1, 2, 255]));

    let handshake = &upstream.handshakes()[0];
    assert_eq!(handshake.path_and_query, PATH);
    assert_eq!(
        handshake.headers["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );
    assert!(!handshake.headers.contains_key("api-key"));
    assert_eq!(handshake.headers["upgrade"], "websocket");
    assert!(handshake.headers.contains_key("sec-websocket-key"));
    assert_eq!(handshake.headers["sec-websocket-protocol"], "realtime");

    let metrics = aoai_e2e::client::get(&format!("{}/metrics", proxy.admin_url), &[])
        .await
        .text();
    assert!(
        metrics.contains("aoai_proxy_websocket_sessions_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("aoai_proxy_websocket_sessions_open 1"),
        "{metrics}"
    );
    socket.close(None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = aoai_e2e::client::get(&format!("{}/metrics", proxy.admin_url), &[])
            .await
            .text();
        if metrics.contains("aoai_proxy_websocket_sessions_open 0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session is still counted open:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_refused_handshake_comes_back_as_the_upstream_sent_it() {
    let upstream = MockRealtime::start().await;
    upstream.refuse_with(403);
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url())], fixed_token()).await;
    match connect(&proxy, &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("refused by the mock"), "{body}");
        }
        other => panic!("expected the upstream's 403, got {:?}", other.map(|_| ())),
    }
    proxy.stop().await;
}

#[tokio::test]
async fn callers_keys_are_checked_before_the_upgrade() {
    let upstream = MockRealtime::start().await;
    let proxy = TestProxy::start(
        &[
            ("API_BASE_URL", &upstream.url()),
            ("EXPECTED_KEY", "the-key"),
        ],
        fixed_token(),
    )
    .await;
    match connect(&proxy, &[("api-key", "wrong")]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    assert!(
        upstream.handshakes().is_empty(),
        "a refused caller never reaches Azure"
    );
    let mut socket = connect(&proxy, &[("api-key", "the-key")])
        .await
        .expect("the right key opens a session");
    assert_eq!(next_json(&mut socket).await["type"], "session.created");
    socket.close(None).await.unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn a_session_outlives_a_token_refresh_and_shutdown_closes_it_within_the_grace_period() {
    let upstream = MockRealtime::start().await;
    let token = fixed_token();
    let mut proxy = TestProxy::start(
        &[
            ("API_BASE_URL", &upstream.url()),
            ("AOAI_PROXY_SHUTDOWN_GRACE", "2s"),
        ],
        token.clone(),
    )
    .await;
    let mut socket = connect(&proxy, &[]).await.unwrap();
    assert_eq!(next_json(&mut socket).await["type"], "session.created");

    // A new token: the open session goes on (it was authorised at its handshake).
    token.set(Token::bearer("a-newer-token", Duration::from_secs(3600)).unwrap());
    socket
        .send(Message::text(r#"{"type":"response.create"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await["of"], "response.create");

    // SIGTERM: no new sessions, the open one runs on for the grace period, then is closed.
    let stopping = Instant::now();
    proxy.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    socket
        .send(Message::text(r#"{"type":"still.here"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await["of"], "still.here");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the session was not closed at the end of the grace period"
    );
    proxy.wait_stopped(Duration::from_secs(5)).await;
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "shutdown took {took:?}"
    );
}
