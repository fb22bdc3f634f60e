//! The upstream connection pool, seen from a raw HTTP/1.1 upstream on 127.0.0.1 that counts the
//! connections it accepts and the ones the proxy closes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aoai_e2e::client::{self, body, get};
use common::{TestProxy, fixed_token};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the raw upstream does after answering a request.
#[derive(Clone, Copy, PartialEq)]
enum AfterAnswer {
    KeepAlive,
    /// Closes the connection without a `Connection: close` header, as an idle-closing server does.
    Close,
}

struct RawUpstream {
    url: String,
    accepted: Arc<AtomicUsize>,
    /// Connections the proxy closed (the upstream read end-of-file).
    closed_by_proxy: Arc<AtomicUsize>,
}

impl RawUpstream {
    /// `GET /stream` gets a chunked answer whose first chunk comes at once and whose end never
    /// comes; `GET /slow` gets `{}` after 300 ms; any other request gets `{}` at once.
    async fn start(after: AfterAnswer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_proxy = Arc::new(AtomicUsize::new(0));
        let (counter, closed) = (accepted.clone(), closed_by_proxy.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, after, closed.clone()));
            }
        });
        Self {
            url,
            accepted,
            closed_by_proxy,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    async fn wait_closed_by_proxy(&self, expected: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.closed_by_proxy.load(Ordering::SeqCst) >= expected {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

async fn serve(mut stream: TcpStream, after: AfterAnswer, closed_by_proxy: Arc<AtomicUsize>) {
    let mut buffer = Vec::new();
    loop {
        // One request head (the proxy's GETs carry no body).
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    closed_by_proxy.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        buffer.drain(..head_end);
        if head.starts_with("GET /stream ") {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n7\r\ndata: 1\r\n")
                .await;
            // Never ends the stream: waits for the proxy to close the connection.
            let mut rest = [0u8; 1024];
            while let Ok(n) = stream.read(&mut rest).await {
                if n == 0 {
                    break;
                }
            }
            closed_by_proxy.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if head.starts_with("GET /slow ") {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if stream.write_all(answer).await.is_err() {
            return;
        }
        if after == AfterAnswer::Close {
            return;
        }
    }
}

#[tokio::test]
async fn concurrent_requests_open_connections_that_all_return_to_the_pool() {
    let upstream = RawUpstream::start(AfterAnswer::KeepAlive).await;
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url)], fixed_token()).await;
    let url = format!("{}/openai/models", proxy.url);
    all_ok_at_once(&url, 16).await;
    let opened = upstream.accepted();
    assert!((1..=16).contains(&opened), "{opened} connections");
    for _ in 0..32 {
        assert_eq!(get(&url, &[]).await.status, StatusCode::OK);
    }
    assert_eq!(
        upstream.accepted(),
        opened,
        "sequential requests after the wave opened new connections instead of reusing the pooled ones"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_reused() {
    let upstream = RawUpstream::start(AfterAnswer::Close).await;
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url)], fixed_token()).await;
    for round in 1..=5 {
        let answer = get(&format!("{}/openai/models", proxy.url), &[]).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "round {round}: {}",
            answer.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream.accepted(), 5);
    proxy.stop().await;
}

#[tokio::test]
async fn an_abandoned_stream_closes_its_upstream_connection() {
    let upstream = RawUpstream::start(AfterAnswer::KeepAlive).await;
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url)], fixed_token()).await;
    let request = Request::get(format!("{}/stream", proxy.url))
        .body(body(""))
        .unwrap();
    let response = client::send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body();
    let first = stream.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: 1");
    drop(stream);
    assert!(
        upstream
            .wait_closed_by_proxy(1, Duration::from_secs(5))
            .await,
        "the upstream connection of an abandoned stream stayed open"
    );
    // The next request gets a fresh connection and its answer.
    assert_eq!(
        get(&format!("{}/openai/models", proxy.url), &[])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(upstream.accepted(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn idle_upstream_connections_close_after_the_pool_idle_timeout() {
    let upstream = RawUpstream::start(AfterAnswer::KeepAlive).await;
    let proxy = TestProxy::start(
        &[
            ("API_BASE_URL", &upstream.url),
            ("AOAI_PROXY_POOL_IDLE_TIMEOUT", "1s"),
        ],
        fixed_token(),
    )
    .await;
    let answer = get(&format!("{}/openai/models", proxy.url), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        upstream
            .wait_closed_by_proxy(1, Duration::from_secs(5))
            .await,
        "an idle upstream connection outlived AOAI_PROXY_POOL_IDLE_TIMEOUT=1s by 4 s"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn after_a_burst_the_pool_keeps_at_most_its_idle_cap() {
    let upstream = RawUpstream::start(AfterAnswer::KeepAlive).await;
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url)], fixed_token()).await;
    let url = format!("{}/slow", proxy.url);
    let burst = aoai_proxy::UPSTREAM_MAX_IDLE + 36;
    all_ok_at_once(&url, burst).await;
    assert_eq!(
        upstream.accepted(),
        burst,
        "every request of the burst had a connection"
    );
    assert!(
        upstream
            .wait_closed_by_proxy(36, Duration::from_secs(5))
            .await,
        "the pool kept more than {} idle connections",
        aoai_proxy::UPSTREAM_MAX_IDLE
    );
    proxy.stop().await;
}

/// `count` GETs of `url` at once, each answered 200.
async fn all_ok_at_once(url: &str, count: usize) {
    let wave: Vec<_> = (0..count)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move { get(&url, &[]).await.status })
        })
        .collect();
    for request in wave {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
}
