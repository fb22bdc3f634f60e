//! The forwarding path over real HTTP on 127.0.0.1: header policy, path joining, streaming both
//! ways, upstream failures, health and metrics.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aoai_e2e::client::{self, Body, body, fetch, get, post_json};
use aoai_e2e::openai::MockOpenAi;
use aoai_e2e::server::{MockServer, handler, json};
use aoai_proxy::token::TokenSource;
use bytes::Bytes;
use common::{TOKEN, TestProxy, closed_port_url, fixed_token};
use http::{Request, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};

#[tokio::test]
async fn forwards_with_the_token_and_the_header_policy() {
    let upstream = MockOpenAi::start().await;
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url())], fixed_token()).await;

    let request = Request::post(format!(
        "{}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21&x=a%2Fb",
        proxy.url
    ))
    .header("api-key", "caller-azure-key")
    .header("authorization", "Bearer caller-openai-key")
    .header("connection", "keep-alive, x-hop-by-name")
    .header("x-hop-by-name", "dropped")
    .header("keep-alive", "timeout=5")
    .header("proxy-authorization", "Basic eDp5")
    .header("te", "trailers")
    .header("upgrade", "websocket")
    .header("content-type", "application/json")
    .header("x-ms-client-request-id", "client-req-1")
    .header("openai-organization", "org-1")
    .header("x-request-id", "req-1")
    .header(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .header("tracestate", "congo=t61rcWkgMzE")
    .body(body(r#"{"messages":[{"role":"user","content":"hi"}]}"#))
    .unwrap();
    let answer = fetch(request).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());

    let received = upstream.requests();
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(
        got.path_and_query,
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21&x=a%2Fb"
    );
    assert_eq!(
        got.headers["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );
    assert_eq!(got.headers.get_all("authorization").iter().count(), 1);
    assert_eq!(
        got.headers["host"],
        upstream.server.addr.to_string().as_str()
    );
    for dropped in [
        "api-key",
        "x-hop-by-name",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(
            !got.headers.contains_key(dropped),
            "{dropped} reached the upstream"
        );
    }
    assert_eq!(got.headers["x-ms-client-request-id"], "client-req-1");
    assert_eq!(got.headers["openai-organization"], "org-1");
    assert_eq!(got.headers["x-request-id"], "req-1");
    // The caller's W3C trace context goes on to Azure as it came.
    assert_eq!(
        got.headers["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(got.headers["tracestate"], "congo=t61rcWkgMzE");
    assert_eq!(got.headers["content-type"], "application/json");
    assert_eq!(
        &got.body[..],
        br#"{"messages":[{"role":"user","content":"hi"}]}"#
    );

    // Upstream response headers come back, hop-by-hop ones do not.
    assert_eq!(answer.headers["x-request-id"], "mock-request-id");
    assert_eq!(answer.headers["apim-request-id"], "mock-apim-id");
    assert_eq!(answer.headers["x-ms-region"], "Sweden Central");
    assert_eq!(answer.headers["x-ratelimit-remaining-requests"], "99");
    assert!(!answer.headers.contains_key("x-upstream-hop"));
    assert!(!answer.headers.contains_key("keep-alive"));
    assert_eq!(
        answer.json()["choices"][0]["message"]["content"],
        aoai_e2e::openai::COMPLETION_TEXT
    );
    proxy.stop().await;
}

#[tokio::test]
async fn every_method_path_and_query_reaches_a_prefixed_upstream() {
    let upstream = MockOpenAi::start().await;
    let base = format!("{}/openai/", upstream.url());
    let proxy = TestProxy::start(&[("TARGET_URL", &base)], fixed_token()).await;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let request = Request::builder()
            .method(method)
            .uri(format!(
                "{}/deployments/d/files/f-1?api-version=2024-10-21&a=1&a=2",
                proxy.url
            ))
            .body(body("x"))
            .unwrap();
        let answer = fetch(request).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json()["method"], method);
    }
    let head = fetch(
        Request::head(format!("{}/models", proxy.url))
            .body(body(""))
            .unwrap(),
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    let paths: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert_eq!(
        paths[0],
        "/openai/deployments/d/files/f-1?api-version=2024-10-21&a=1&a=2"
    );
    assert!(paths.iter().take(6).all(|p| p == &paths[0]));
    assert_eq!(paths[6], "/openai/models");
    proxy.stop().await;
}

#[tokio::test]
async fn sse_chunks_reach_the_client_as_the_upstream_sends_them() {
    let upstream = MockOpenAi::start().await;
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url())], fixed_token()).await;
    let request = Request::post(format!(
        "{}/openai/deployments/d/chat/completions",
        proxy.url
    ))
    .header("x-mock-chunks", "5")
    .header("x-mock-chunk-delay-ms", "300")
    .body(body(r#"{"stream":true,"messages":[]}"#))
    .unwrap();
    let started = Instant::now();
    let response = client::send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(
        !response.headers().contains_key("content-length"),
        "a stream must not carry Content-Length"
    );
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("part0"));
    assert_eq!(
        upstream.streams_finished(),
        0,
        "first chunk arrived only after the upstream finished"
    );
    assert!(
        first_at < Duration::from_millis(600),
        "first chunk took {first_at:?}"
    );

    let mut rest = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            rest.push((started.elapsed(), data));
        }
    }
    let text: String = rest
        .iter()
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .collect();
    for i in 1..5 {
        assert!(text.contains(&format!("part{i}")), "{text}");
    }
    assert!(text.ends_with("data: [DONE]\n\n"));
    // Chunks arrived spread over time, not all at once at the end.
    let spread = rest.last().unwrap().0 - first_at;
    assert!(
        spread >= Duration::from_millis(1000),
        "chunks arrived within {spread:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_large_upload_streams_while_the_client_still_writes() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 100;
    let (first_seen_tx, first_seen_rx) = oneshot::channel::<()>();
    let first_seen_tx = Arc::new(std::sync::Mutex::new(Some(first_seen_tx)));
    let upstream = MockServer::http(handler(
        move |request: http::Request<hyper::body::Incoming>, _| {
            let first_seen_tx = first_seen_tx.clone();
            async move {
                let mut body = request.into_body();
                let mut total = 0u64;
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        total += data.len() as u64;
                        if let Some(tx) = first_seen_tx.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                    }
                }
                json(200, &serde_json::json!({ "received": total }))
            }
        },
    ))
    .await;
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url())], fixed_token()).await;

    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let request_body: Body =
        http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(http_body::Frame::data(b)), rx))
        }))
        .boxed();
    let request = Request::post(format!("{}/openai/files", proxy.url))
        .body(request_body)
        .unwrap();
    let response = tokio::spawn(client::fetch(request));

    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    tx.send(chunk.clone()).await.unwrap();
    // The upstream must see the first megabyte before the client sends the second.
    tokio::time::timeout(Duration::from_secs(10), first_seen_rx)
        .await
        .expect("upstream received data while the upload was still in progress")
        .unwrap();
    for _ in 1..CHUNKS {
        tx.send(chunk.clone()).await.unwrap();
    }
    drop(tx);
    let answer = response.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["received"], (CHUNK * CHUNKS) as u64);
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_down_is_a_json_502() {
    let proxy = TestProxy::start(&[("API_BASE_URL", &closed_port_url())], fixed_token()).await;
    let answer = post_json(
        &format!("{}/openai/x", proxy.url),
        &[],
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    let json = answer.json();
    assert_eq!(json["error"]["code"], "upstream_unreachable");
    assert_eq!(json["error"]["type"], "upstream_error");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{json}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn slow_upstream_is_a_json_504() {
    let upstream = MockOpenAi::start().await;
    let proxy = TestProxy::start(
        &[
            ("API_BASE_URL", &upstream.url()),
            ("AOAI_PROXY_UPSTREAM_TIMEOUT", "300ms"),
        ],
        fixed_token(),
    )
    .await;
    let started = Instant::now();
    let answer = get(
        &format!("{}/openai/models", proxy.url),
        &[("x-mock-delay-ms", "3000")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.json()["error"]["code"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
    proxy.stop().await;
}

#[tokio::test]
async fn an_upstream_reset_mid_stream_cuts_the_client_stream_off_after_what_came() {
    let upstream = MockOpenAi::start().await;
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url())], fixed_token()).await;
    let request = Request::post(format!(
        "{}/openai/deployments/d/chat/completions",
        proxy.url
    ))
    .header("x-mock-chunks", "5")
    .header("x-mock-reset-after", "2")
    .body(body(r#"{"stream":true}"#))
    .unwrap();
    let response = client::send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    // Everything the upstream sent arrives, then the stream breaks off instead of ending as if
    // it were whole.
    let mut body = response.into_body();
    let mut collected = Vec::new();
    let ended = loop {
        match body.frame().await {
            Some(Ok(frame)) => collected.extend_from_slice(&frame.into_data().unwrap_or_default()),
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        }
    };
    assert!(
        ended.is_err(),
        "the truncated stream ended as if it were whole"
    );
    let text = String::from_utf8_lossy(&collected);
    assert!(text.contains("part0") && text.contains("part1"), "{text}");
    assert!(!text.contains("[DONE]"));
    // The proxy keeps serving.
    let answer = get(&format!("{}/openai/models", proxy.url), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let metrics = get(&format!("{}/metrics", proxy.admin_url), &[])
        .await
        .text();
    assert!(
        metrics.contains("aoai_proxy_upstream_errors_total{kind=\"reset\"} 1"),
        "{metrics}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let upstream = MockOpenAi::start().await;
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url())], fixed_token()).await;
    for _ in 0..20 {
        let answer = get(&format!("{}/openai/models", proxy.url), &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let peers: std::collections::HashSet<_> = upstream.requests().iter().map(|r| r.peer).collect();
    assert_eq!(
        peers.len(),
        1,
        "20 sequential requests used {} upstream connections",
        peers.len()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn without_a_token_nothing_is_forwarded_and_health_says_why() {
    let upstream = MockOpenAi::start().await;
    let token = Arc::new(TokenSource::new());
    token.set_problem("AADSTS7000215: Invalid client secret provided");
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url())], token.clone()).await;

    let answer = post_json(
        &format!("{}/openai/deployments/d/chat/completions", proxy.url),
        &[],
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let json = answer.json();
    assert_eq!(json["error"]["code"], "token_unavailable");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("AADSTS7000215")
    );
    assert!(
        upstream.requests().is_empty(),
        "a request went upstream without a token"
    );

    for url in [
        format!("{}/health", proxy.url),
        format!("{}/health", proxy.admin_url),
    ] {
        let health = get(&url, &[]).await;
        assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(health.json()["status"], "unavailable");
        assert!(
            health.json()["reason"]
                .as_str()
                .unwrap()
                .contains("AADSTS7000215")
        );
    }

    token.set(aoai_proxy::token::Token::bearer("now-valid", Duration::from_secs(600)).unwrap());
    for url in [
        format!("{}/health", proxy.url),
        format!("{}/health", proxy.admin_url),
    ] {
        let health = get(&url, &[]).await;
        assert_eq!(health.status, StatusCode::OK);
        assert_eq!(health.text(), r#"{"status":"ok"}"#);
    }
    assert!(upstream.requests().is_empty(), "/health was forwarded");
    proxy.stop().await;
}

#[tokio::test]
async fn admin_listener_serves_probes_and_metrics_and_never_forwards() {
    let upstream = MockOpenAi::start().await;
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url())], fixed_token()).await;
    let _ = post_json(
        &format!("{}/openai/deployments/d/chat/completions", proxy.url),
        &[],
        &serde_json::json!({}),
    )
    .await;

    assert_eq!(
        get(&format!("{}/livez", proxy.admin_url), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&format!("{}/readyz", proxy.admin_url), &[])
            .await
            .status,
        StatusCode::OK
    );
    let metrics = get(&format!("{}/metrics", proxy.admin_url), &[]).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.text();
    for needle in [
        "aoai_proxy_requests_total{method=\"POST\",status_class=\"2xx\"} 1",
        "aoai_proxy_request_duration_seconds_bucket",
        "aoai_proxy_in_flight_requests 0",
        "aoai_proxy_token_valid 1",
        "aoai_proxy_token_expiry_seconds",
        "aoai_proxy_response_body_bytes_total",
        "aoai_proxy_request_body_bytes_total 2",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
    assert!(!text.contains(TOKEN));
    let unknown = get(&format!("{}/openai/models", proxy.admin_url), &[]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(
        upstream.requests().len(),
        1,
        "the admin listener forwarded a request"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_an_open_stream_finish() {
    let upstream = MockOpenAi::start().await;
    let mut proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url())], fixed_token()).await;
    let request = Request::post(format!(
        "{}/openai/deployments/d/chat/completions",
        proxy.url
    ))
    .header("x-mock-chunks", "5")
    .header("x-mock-chunk-delay-ms", "200")
    .body(body(r#"{"stream":true}"#))
    .unwrap();
    let response = client::send(request).await;
    let mut body = response.into_body();
    let _first = body.frame().await.unwrap().unwrap();

    proxy.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are refused once shutdown began.
    let refused = tokio::net::TcpStream::connect(proxy.url.trim_start_matches("http://")).await;
    assert!(
        refused.is_err(),
        "the proxy still accepts connections during shutdown"
    );

    let rest = body.collect().await.expect("stream completes").to_bytes();
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
    proxy.wait_stopped(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn https_upstream_trusted_through_ssl_cert_file_speaks_http2() {
    let ca = aoai_e2e::ca::TestCa::new();
    let upstream = MockOpenAi::start_tls(ca.server_config()).await;
    let ca_path = ca.root_pem_path();
    let proxy = TestProxy::start(
        &[
            ("API_BASE_URL", &upstream.url()),
            ("SSL_CERT_FILE", ca_path.to_str().unwrap()),
        ],
        fixed_token(),
    )
    .await;
    for _ in 0..3 {
        let answer = post_json(
            &format!("{}/openai/deployments/d/chat/completions", proxy.url),
            &[],
            &serde_json::json!({"stream": false}),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
    // Concurrent requests share the one HTTP/2 connection.
    let concurrent: Vec<_> = (0..8)
        .map(|_| {
            let url = format!("{}/openai/models", proxy.url);
            tokio::spawn(async move { get(&url, &[]).await.status })
        })
        .collect();
    for request in concurrent {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    let received = upstream.requests();
    assert!(
        received.iter().all(|r| r.version == Version::HTTP_2),
        "ALPN did not pick h2"
    );
    let peers: std::collections::HashSet<_> = received.iter().map(|r| r.peer).collect();
    assert_eq!(
        peers.len(),
        1,
        "11 requests over {} HTTP/2 connections",
        peers.len()
    );
    assert_eq!(
        received[0].headers["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );
    proxy.stop().await;

    let http1 = MockOpenAi::start_tls(ca.server_config_http1()).await;
    let proxy = TestProxy::start(
        &[
            ("API_BASE_URL", &http1.url()),
            ("SSL_CERT_FILE", ca_path.to_str().unwrap()),
        ],
        fixed_token(),
    )
    .await;
    let answer = get(&format!("{}/openai/models", proxy.url), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(http1.requests()[0].version, Version::HTTP_11);
    assert_eq!(
        http1.requests()[0].headers["host"],
        http1.server.addr.to_string().as_str()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_a_502() {
    let ca = aoai_e2e::ca::TestCa::new();
    let upstream = MockOpenAi::start_tls(ca.server_config()).await;
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url())], fixed_token()).await;
    let answer = get(&format!("{}/openai/models", proxy.url), &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("certificate"),
        "{}",
        answer.text()
    );
    assert!(upstream.requests().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn request_body_limit_gives_413() {
    let upstream = MockOpenAi::start().await;
    let proxy = TestProxy::start(
        &[
            ("API_BASE_URL", &upstream.url()),
            ("AOAI_PROXY_MAX_REQUEST_BODY", "1Ki"),
        ],
        fixed_token(),
    )
    .await;
    let big = vec![b'x'; 2048];
    // Declared length over the limit: refused before anything is sent upstream.
    let answer = fetch(
        Request::post(format!("{}/openai/files", proxy.url))
            .body(body(big.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.json()["error"]["code"], "request_too_large");
    // Chunked body without a length: cut off when it crosses the limit.
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let stream = futures_util::stream::iter((0..4).map(move |_| {
        counter.fetch_add(512, Ordering::SeqCst);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(Bytes::from(
            vec![b'y'; 512],
        )))
    }));
    let answer = fetch(
        Request::post(format!("{}/openai/files", proxy.url))
            .body(http_body_util::StreamBody::new(stream).boxed())
            .unwrap(),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.text()
    );
    // Under the limit passes.
    let answer = fetch(
        Request::post(format!("{}/openai/files", proxy.url))
            .body(body(vec![b'z'; 1024]))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["body_bytes"], 1024);
    proxy.stop().await;
}
