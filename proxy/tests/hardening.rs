//! Hostile clients and failing upstreams: slow headers are cut off without delaying others,
//! oversized or malformed requests get 431/400, and thousands of upstream failures leave no file
//! descriptor behind.

mod common;

use std::time::{Duration, Instant};

use aoai_e2e::client::{self, body, get};
use aoai_e2e::openai::MockOpenAi;
use common::{TestProxy, closed_port_url, fixed_token};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn address(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Sends `request` raw and returns what the proxy answered before closing (or within 5 s).
async fn raw(url: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address(url)).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).to_string()
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_and_does_not_delay_others() {
    let upstream = MockOpenAi::start().await;
    let proxy = TestProxy::start(
        &[
            ("API_BASE_URL", &upstream.url()),
            ("AOAI_PROXY_HEADER_READ_TIMEOUT", "1s"),
        ],
        fixed_token(),
    )
    .await;
    // Ten clients trickle their headers a byte every 100 ms.
    let mut slow = Vec::new();
    for _ in 0..10 {
        let target = address(&proxy.url);
        slow.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut stream = TcpStream::connect(target).await.unwrap();
            for byte in
                b"GET /openai/models HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                    .iter()
            {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut rest = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
            (
                started.elapsed(),
                String::from_utf8_lossy(&rest).to_string(),
            )
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile a normal client is served at once.
    let started = Instant::now();
    let answer = get(&format!("{}/openai/models", proxy.url), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    for client in slow {
        let (took, answer) = client.await.unwrap();
        // Cut off by the 1 s header timeout, long before the 7 s the trickle would take.
        assert!(
            took < Duration::from_millis(2500),
            "slow client held for {took:?}"
        );
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn oversized_headers_get_431_and_a_malformed_request_line_400() {
    let upstream = MockOpenAi::start().await;
    let proxy = TestProxy::start(&[("API_BASE_URL", &upstream.url())], fixed_token()).await;
    let huge = format!(
        "GET /openai/models HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let answer = raw(&proxy.url, huge.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:.200}");
    assert!(
        answer.contains("\r\nconnection: close\r\ncontent-length: 0\r\n"),
        "{answer:.200}"
    );
    for garbage in [
        &b"NOT A REQUEST LINE\r\n\r\n"[..],
        b"GET /x HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        // Refused by the HTTP layer, before the proxy's code: a bare 400 that closes the
        // connection (the README says so).
        let answer = raw(&proxy.url, garbage).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(
            answer.contains("\r\nconnection: close\r\ncontent-length: 0\r\n"),
            "{answer}"
        );
    }
    // Nothing reached the upstream, and the proxy still serves.
    assert!(upstream.requests().is_empty());
    assert_eq!(
        get(&format!("{}/openai/models", proxy.url), &[])
            .await
            .status,
        StatusCode::OK
    );
    proxy.stop().await;
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Refused connections, resets mid-stream and hung upstreams, 10,000 requests in all: each gets a
/// JSON error or a stream cut off where the upstream's was, and the open file descriptors return
/// to their baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_upstream_failures_leak_no_file_descriptor() {
    let upstream = MockOpenAi::start().await;
    let working = TestProxy::start(&[("API_BASE_URL", &upstream.url())], fixed_token()).await;
    let impatient = TestProxy::start(
        &[
            ("API_BASE_URL", &upstream.url()),
            ("AOAI_PROXY_UPSTREAM_TIMEOUT", "50ms"),
        ],
        fixed_token(),
    )
    .await;
    let refusing = TestProxy::start(&[("API_BASE_URL", &closed_port_url())], fixed_token()).await;
    // Warm up (pools, lazily created state), then take the baseline.
    for proxy in [&working, &impatient, &refusing] {
        for _ in 0..5 {
            get(&format!("{}/openai/models", proxy.url), &[]).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = open_fds();

    let kinds = ["refused", "reset", "hang"];
    let mut requests = FuturesUnordered::new();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for index in 0..10_000usize {
        let kind = kinds[index % kinds.len()];
        let (working, impatient, refusing) = (
            working.url.clone(),
            impatient.url.clone(),
            refusing.url.clone(),
        );
        requests.push(async move {
            let outcome = match kind {
                "refused" => {
                    let answer = get(&format!("{refusing}/openai/models"), &[]).await;
                    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
                    assert_eq!(answer.json()["error"]["code"], "upstream_unreachable");
                    "502"
                }
                "reset" => {
                    let request =
                        Request::post(format!("{working}/openai/deployments/d/chat/completions"))
                            .header("x-mock-chunks", "3")
                            .header("x-mock-reset-after", "1")
                            .body(body(r#"{"stream":true}"#))
                            .unwrap();
                    let response = client::send(request).await;
                    assert_eq!(response.status(), StatusCode::OK);
                    let cut = response.into_body().collect().await;
                    assert!(
                        cut.is_err(),
                        "the truncated stream ended as if it were whole"
                    );
                    "cut"
                }
                _ => {
                    let answer = get(
                        &format!("{impatient}/openai/models"),
                        &[("x-mock-delay-ms", "2000")],
                    )
                    .await;
                    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
                    "504"
                }
            };
            outcome.to_string()
        });
        // At most 64 in flight.
        if requests.len() >= 64 {
            let outcome = requests.next().await.unwrap();
            *outcomes.entry(outcome).or_default() += 1;
        }
    }
    while let Some(outcome) = requests.next().await {
        *outcomes.entry(outcome).or_default() += 1;
    }
    assert_eq!(outcomes.values().sum::<usize>(), 10_000, "{outcomes:?}");

    // Connections close as clients and upstreams go away; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut now_open = open_fds();
    while now_open > baseline + 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        now_open = open_fds();
    }
    assert!(
        now_open <= baseline + 8,
        "file descriptors: {baseline} before, {now_open} after"
    );
    for proxy in [working, impatient, refusing] {
        proxy.stop().await;
    }
}
