//! Several backends (AOAI_PROXY_BACKENDS): priority order, 429 cool-downs read from each of
//! Azure's header forms, one 429 with the shortest wait when every backend is throttled, failover
//! on faults with ejection, never a retry after the first streamed byte or of a body too large to
//! keep, and token usage counted by backend and deployment. Mock backends on 127.0.0.1; the
//! `async-openai` crate drives the proxy where an SDK's view matters.

mod common;

use std::time::{Duration, Instant};

use aoai_e2e::client::{body, fetch, get, post_json, send};
use aoai_e2e::openai::{
    COMPLETION_TEXT, Fault, MockOpenAi, ResetBackend, STREAM_PROMPT_TOKENS, ThrottleHeader,
};
use async_openai::Client;
use async_openai::config::AzureConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions,
    CreateChatCompletionRequestArgs,
};
use common::{TestProxy, assert_wait_told, fixed_token};
use futures_util::StreamExt;
use http::Request;
use http_body_util::BodyExt;

const CHAT: &str = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";

fn backends(list: &[(&str, u32)]) -> String {
    let entries: Vec<serde_json::Value> = list
        .iter()
        .map(|(url, priority)| serde_json::json!({"endpoint": url, "priority": priority}))
        .collect();
    serde_json::Value::from(entries).to_string()
}

async fn proxy_with(backends: &str, extra: &[(&str, &str)]) -> TestProxy {
    let mut vars = vec![("AOAI_PROXY_BACKENDS", backends)];
    vars.extend_from_slice(extra);
    TestProxy::start(&vars, fixed_token()).await
}

async fn chat(proxy: &TestProxy) -> aoai_e2e::client::Answer {
    post_json(
        &format!("{}{CHAT}", proxy.url),
        &[],
        &serde_json::json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
}

async fn metrics(proxy: &TestProxy) -> String {
    get(&format!("{}/metrics", proxy.admin_url), &[])
        .await
        .text()
}

/// The value of the sample `name{labels}` (labels as written), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn label(mock: &MockOpenAi) -> String {
    mock.url().trim_start_matches("http://").to_string()
}

fn azure_client(proxy: &TestProxy) -> Client<AzureConfig> {
    let _ = aoai_runtime::crypto_provider().install_default();
    Client::with_config(
        AzureConfig::new()
            .with_api_base(&proxy.url)
            .with_deployment_id("gpt-4o")
            .with_api_version("2024-10-21")
            .with_api_key("unused"),
    )
}

fn chat_request(stream: bool) -> async_openai::types::chat::CreateChatCompletionRequest {
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model("gpt-4o")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Say hello")
            .build()
            .unwrap()
            .into()]);
    if stream {
        args.stream(true)
            .stream_options(ChatCompletionStreamOptions {
                include_usage: Some(true),
                include_obfuscation: None,
            });
    }
    args.build().unwrap()
}

#[tokio::test]
async fn requests_go_in_priority_order_and_a_throttled_backend_rests_for_exactly_its_wait() {
    for header in [
        ThrottleHeader::RetryAfterMs,
        ThrottleHeader::RetryAfter,
        ThrottleHeader::ResetTokens,
        ThrottleHeader::ResetRequests,
    ] {
        let first = MockOpenAi::start().await;
        let second = MockOpenAi::start().await;
        let third = MockOpenAi::start().await;
        let proxy = proxy_with(
            &backends(&[(&third.url(), 2), (&first.url(), 0), (&second.url(), 1)]),
            &[],
        )
        .await;
        let client = azure_client(&proxy);

        // Healthy: every request goes to priority 0.
        for _ in 0..3 {
            client.chat().create(chat_request(false)).await.unwrap();
        }
        assert_eq!((first.requests().len(), second.requests().len()), (3, 0));

        // Priority 0 throttles: the SDK still sees success, from priority 1.
        let wait = if header == ThrottleHeader::RetryAfterMs {
            Duration::from_millis(600)
        } else {
            Duration::from_secs(1)
        };
        first.set_fault(Some(Fault::Throttle { header, wait }));
        let answer = client.chat().create(chat_request(false)).await.unwrap();
        assert_eq!(
            answer.choices[0].message.content.as_deref(),
            Some(COMPLETION_TEXT)
        );
        let throttled_at = first.requests().last().unwrap().at;
        assert_eq!((first.requests().len(), second.requests().len()), (4, 1));
        first.set_fault(None);

        // While its wait runs, priority 0 gets nothing; then it is back at once.
        while throttled_at.elapsed() < wait - Duration::from_millis(50) {
            client.chat().create(chat_request(false)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            first.requests().len(),
            4,
            "{header:?}: no request during the wait"
        );
        tokio::time::sleep(wait.saturating_sub(throttled_at.elapsed()) + Duration::from_millis(5))
            .await;
        client.chat().create(chat_request(false)).await.unwrap();
        let back = first.requests();
        assert_eq!(back.len(), 5, "{header:?}: back in rotation after the wait");
        let rested = back[4].at - throttled_at;
        assert!(
            rested >= wait && rested < wait + Duration::from_millis(150),
            "{header:?}: rested {rested:?} for a wait of {wait:?}"
        );
        assert!(third.requests().is_empty(), "priority 2 never needed");

        let text = metrics(&proxy).await;
        let first_label = label(&first);
        assert_eq!(
            sample(
                &text,
                &format!("aoai_proxy_backend_throttled_total{{backend=\"{first_label}\"}}")
            ),
            1.0
        );
        assert_eq!(
            sample(
                &text,
                &format!("aoai_proxy_backend_failovers_total{{backend=\"{first_label}\"}}")
            ),
            1.0
        );
        // The wait it asked for, within a second (the reset headers carry whole seconds).
        let asked = sample(
            &text,
            &format!("aoai_proxy_backend_throttle_wait_seconds_sum{{backend=\"{first_label}\"}}"),
        );
        assert!(
            (asked - wait.as_secs_f64()).abs() < 1.0,
            "{header:?}: a wait of {asked} s recorded for {wait:?}"
        );
        proxy.stop().await;
    }
}

#[tokio::test]
async fn every_backend_throttled_gives_one_429_with_the_shortest_wait_and_no_storm() {
    let first = MockOpenAi::start().await;
    let second = MockOpenAi::start().await;
    let proxy = proxy_with(&backends(&[(&first.url(), 0), (&second.url(), 1)]), &[]).await;
    first.set_fault(Some(Fault::Throttle {
        header: ThrottleHeader::RetryAfterMs,
        wait: Duration::from_millis(2500),
    }));
    second.set_fault(Some(Fault::Throttle {
        header: ThrottleHeader::RetryAfter,
        wait: Duration::from_secs(1),
    }));

    let answer = chat(&proxy).await;
    assert_eq!(answer.status, 429);
    let wait_ms: u64 = answer.headers["retry-after-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (900..=1000).contains(&wait_ms),
        "the shorter wait: {wait_ms} ms"
    );
    assert_eq!(answer.headers["retry-after"], "1");
    assert!(
        answer.text().contains("exceeded token rate limit"),
        "Azure's own message passes"
    );
    assert_eq!((first.requests().len(), second.requests().len()), (1, 1));

    // During the wait, callers get the proxy's 429 at once: no backend is called.
    for _ in 0..20 {
        let answer = chat(&proxy).await;
        assert_eq!(answer.status, 429);
        let left: u64 = answer.headers["retry-after-ms"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(left <= wait_ms, "{left}");
        assert_eq!(answer.json()["error"]["type"], "rate_limit_error");
    }
    assert_eq!((first.requests().len(), second.requests().len()), (1, 1));

    // Waiting as told is enough.
    second.set_fault(None);
    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    let answer = chat(&proxy).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!((first.requests().len(), second.requests().len()), (1, 2));
    proxy.stop().await;
}

#[tokio::test]
async fn a_single_backend_429_carries_both_headers_and_holds_callers_back() {
    let upstream = MockOpenAi::start().await;
    let url = upstream.url();
    let proxy = TestProxy::start(&[("API_BASE_URL", &url)], fixed_token()).await;
    upstream.set_fault(Some(Fault::Throttle {
        header: ThrottleHeader::ResetTokens,
        wait: Duration::from_millis(700),
    }));
    let sent = Instant::now();
    let answer = chat(&proxy).await;
    assert_eq!(answer.status, 429);
    assert_wait_told(
        &answer,
        Duration::from_millis(700),
        sent.elapsed(),
        "one backend",
    );
    let again = chat(&proxy).await;
    assert_eq!(again.status, 429);
    assert_eq!(upstream.requests().len(), 1, "held back during the wait");
    // Another deployment on the same resource is not throttled.
    let other = post_json(
        &format!("{}/openai/deployments/other/chat/completions", proxy.url),
        &[],
        &serde_json::json!({"messages": []}),
    )
    .await;
    assert_eq!(upstream.requests().len(), 2, "{}", other.text());
    proxy.stop().await;
}

#[tokio::test]
async fn faults_fail_over_and_a_broken_backend_is_ejected() {
    let broken = MockOpenAi::start().await;
    let healthy = MockOpenAi::start().await;
    let proxy = proxy_with(
        &backends(&[(&broken.url(), 0), (&healthy.url(), 1)]),
        &[
            ("AOAI_PROXY_EJECT_AFTER", "3"),
            ("AOAI_PROXY_EJECT_FOR", "1s"),
        ],
    )
    .await;
    let client = azure_client(&proxy);
    for status in [500, 502, 503] {
        broken.set_fault(Some(Fault::Status(status)));
        client
            .chat()
            .create(chat_request(false))
            .await
            .unwrap_or_else(|e| panic!("{status}: {e}"));
    }
    assert_eq!((broken.requests().len(), healthy.requests().len()), (3, 3));
    // Ejected: skipped without a try.
    for _ in 0..5 {
        client.chat().create(chat_request(false)).await.unwrap();
    }
    assert_eq!(
        broken.requests().len(),
        3,
        "ejected after 3 faults in a row"
    );
    let text = metrics(&proxy).await;
    let broken_label = label(&broken);
    assert_eq!(
        sample(
            &text,
            &format!("aoai_proxy_backend_ejections_total{{backend=\"{broken_label}\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                "aoai_proxy_backend_requests_total{{backend=\"{}\"}}",
                label(&healthy)
            )
        ),
        8.0
    );
    // After the ejection, it is tried again; its first fault ejects it again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.chat().create(chat_request(false)).await.unwrap();
    assert_eq!(broken.requests().len(), 4);
    client.chat().create(chat_request(false)).await.unwrap();
    assert_eq!(
        broken.requests().len(),
        4,
        "ejected again at its first fault"
    );
    // Healthy again after the next ejection: back as priority 0.
    broken.set_fault(None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        client.chat().create(chat_request(false)).await.unwrap();
    }
    assert_eq!(broken.requests().len(), 7);
    proxy.stop().await;
}

#[tokio::test]
async fn a_refused_connection_a_reset_or_a_hang_fails_over_with_the_whole_body() {
    // A port nothing listens on: the connection is refused.
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let reset = ResetBackend::start().await;
    let hanging = MockOpenAi::start().await;
    hanging.set_fault(Some(Fault::Hang));
    let healthy = MockOpenAi::start().await;
    let proxy = proxy_with(
        &backends(&[
            (&refused, 0),
            (&reset.url(), 1),
            (&hanging.url(), 2),
            (&healthy.url(), 3),
        ]),
        &[("AOAI_PROXY_UPSTREAM_TIMEOUT", "300ms")],
    )
    .await;
    // 256 KiB: the reset backend reads part of it before cutting the connection.
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    let answer = fetch(
        Request::post(format!("{}/openai/deployments/gpt-4o/files", proxy.url))
            .header("content-type", "application/octet-stream")
            .body(body(payload.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the hang was waited out"
    );
    assert_eq!(reset.accepted(), 1);
    assert_eq!(hanging.requests().len(), 1);
    let received = healthy.requests();
    assert_eq!(received.len(), 1);
    assert!(
        received[0].body == payload,
        "the third backend got the whole body, byte for byte"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn no_failover_after_the_first_streamed_byte() {
    let first = MockOpenAi::start().await;
    let second = MockOpenAi::start().await;
    let proxy = proxy_with(&backends(&[(&first.url(), 0), (&second.url(), 1)]), &[]).await;
    let response = send(
        Request::post(format!("{}{CHAT}", proxy.url))
            .header("content-type", "application/json")
            .header("x-mock-reset-after", "2")
            .body(body(r#"{"stream":true,"messages":[]}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut text = Vec::new();
    // What came, then the break: the caller's stream is cut where the backend's was.
    while let Some(Ok(frame)) = body.frame().await {
        text.extend_from_slice(&frame.into_data().unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("part1") && !text.contains("part2"), "{text}");
    assert_eq!(first.requests().len(), 1);
    assert!(second.requests().is_empty(), "a stream is never sent twice");
    proxy.stop().await;
}

#[tokio::test]
async fn a_body_over_the_retry_limit_streams_once_to_one_backend() {
    let first = MockOpenAi::start().await;
    let second = MockOpenAi::start().await;
    first.set_fault(Some(Fault::Status(503)));
    let proxy = proxy_with(
        &backends(&[(&first.url(), 0), (&second.url(), 1)]),
        &[("AOAI_PROXY_RETRY_BODY_LIMIT", "16Ki")],
    )
    .await;
    let large = vec![b'x'; 64 * 1024];
    let answer = fetch(
        Request::post(format!("{}/openai/deployments/gpt-4o/files", proxy.url))
            .body(body(large.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(
        answer.status, 503,
        "the first backend's answer, not a second send"
    );
    assert_eq!(first.requests()[0].body.len(), large.len());
    assert!(second.requests().is_empty());

    let small = fetch(
        Request::post(format!("{}/openai/deployments/gpt-4o/files", proxy.url))
            .body(body(vec![b'y'; 8 * 1024]))
            .unwrap(),
    )
    .await;
    assert_eq!(small.status, 200);
    assert_eq!(second.requests()[0].body.len(), 8 * 1024);
    proxy.stop().await;
}

#[tokio::test]
async fn token_usage_is_counted_by_backend_and_deployment_streams_included() {
    let first = MockOpenAi::start().await;
    let second = MockOpenAi::start().await;
    let list = serde_json::json!([
        {"endpoint": first.url()},
        {"endpoint": second.url(), "priority": 1, "deployments": {"gpt-4o": "gpt-4o-paygo"}},
    ]);
    let proxy = proxy_with(&list.to_string(), &[]).await;
    let client = azure_client(&proxy);

    client.chat().create(chat_request(false)).await.unwrap();
    client.chat().create(chat_request(false)).await.unwrap();
    let mut stream = client
        .chat()
        .create_stream(chat_request(true))
        .await
        .unwrap();
    let mut usage = None;
    while let Some(chunk) = stream.next().await {
        if let Some(u) = chunk.unwrap().usage {
            usage = Some(u);
        }
    }
    let usage = usage.expect("the SDK saw the usage chunk");
    assert_eq!(usage.prompt_tokens as u64, STREAM_PROMPT_TOKENS);

    // The second backend, under its own name for the deployment.
    first.set_fault(Some(Fault::Status(503)));
    client.chat().create(chat_request(false)).await.unwrap();
    assert!(
        second.requests()[0]
            .path_and_query
            .starts_with("/openai/deployments/gpt-4o-paygo/")
    );

    let text = metrics(&proxy).await;
    let series = |backend: &MockOpenAi, deployment: &str, kind: &str| {
        sample(
            &text,
            &format!(
                "aoai_proxy_gen_ai_client_token_usage_total{{backend=\"{}\",deployment=\"{deployment}\",gen_ai_token_type=\"{kind}\"}}",
                label(backend)
            ),
        )
    };
    // Two JSON answers (5 + 7) and one stream (9 + 5 chunks).
    assert_eq!(
        series(&first, "gpt-4o", "input"),
        (2 * 5 + STREAM_PROMPT_TOKENS) as f64
    );
    assert_eq!(series(&first, "gpt-4o", "output"), (2 * 7 + 5) as f64);
    assert_eq!(
        series(&first, "gpt-4o", "total"),
        (2 * 12 + STREAM_PROMPT_TOKENS + 5) as f64
    );
    assert_eq!(series(&second, "gpt-4o-paygo", "total"), 12.0);
    assert_eq!(series(&second, "gpt-4o-paygo", "input"), 5.0);
    assert_eq!(
        series(&second, "gpt-4o", "total"),
        0.0,
        "counted under the backend's name"
    );
    let ttft = format!(
        "aoai_proxy_gen_ai_server_time_to_first_token_seconds_count{{backend=\"{}\",deployment=\"gpt-4o\"}}",
        label(&first)
    );
    assert_eq!(
        sample(&text, &ttft),
        1.0,
        "one stream, one time to first token"
    );
    assert!(!text.contains(common::TOKEN));
    proxy.stop().await;
}

#[tokio::test]
async fn weights_share_the_requests_within_a_priority() {
    let heavy = MockOpenAi::start().await;
    let light = MockOpenAi::start().await;
    let list = serde_json::json!([
        {"endpoint": heavy.url(), "weight": 3},
        {"endpoint": light.url(), "weight": 1},
    ]);
    let proxy = proxy_with(&list.to_string(), &[]).await;
    for _ in 0..400 {
        assert_eq!(chat(&proxy).await.status, 200);
    }
    let (heavy, light) = (heavy.requests().len(), light.requests().len());
    assert_eq!(heavy + light, 400, "each request sent once");
    // 3:1 expects 300; ±60 is about seven standard deviations.
    assert!((240..=360).contains(&heavy), "heavy {heavy}, light {light}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_body_over_the_request_limit_is_the_callers_error_not_a_backend_fault() {
    let first = MockOpenAi::start().await;
    let second = MockOpenAi::start().await;
    let proxy = proxy_with(
        &backends(&[(&first.url(), 0), (&second.url(), 1)]),
        &[("AOAI_PROXY_MAX_REQUEST_BODY", "1Ki")],
    )
    .await;
    // Chunked, so that only the streamed bytes show it is too large.
    let chunks = (0..4).map(|_| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(
            bytes::Bytes::from(vec![b'z'; 1024]),
        ))
    });
    let streamed = BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        chunks,
    )));
    let answer = fetch(
        Request::post(format!("{}/openai/deployments/gpt-4o/files", proxy.url))
            .body(streamed)
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert!(second.requests().is_empty(), "not sent to another backend");
    let text = metrics(&proxy).await;
    assert_eq!(
        sample(
            &text,
            &format!(
                "aoai_proxy_backend_failovers_total{{backend=\"{}\"}}",
                label(&first)
            )
        ),
        0.0
    );
    proxy.stop().await;
}

#[tokio::test]
async fn callers_that_go_away_mid_upload_do_not_eject_a_backend() {
    use tokio::io::AsyncWriteExt;
    let first = MockOpenAi::start().await;
    let second = MockOpenAi::start().await;
    let proxy = proxy_with(
        &backends(&[(&first.url(), 0), (&second.url(), 1)]),
        &[("AOAI_PROXY_EJECT_AFTER", "2")],
    )
    .await;
    let address = proxy.url.trim_start_matches("http://").to_string();
    for _ in 0..4 {
        let mut caller = tokio::net::TcpStream::connect(&address).await.unwrap();
        caller
            .write_all(b"POST /openai/deployments/gpt-4o/files HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\npartial")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(caller);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = metrics(&proxy).await;
    assert_eq!(
        sample(
            &text,
            &format!(
                "aoai_proxy_backend_ejections_total{{backend=\"{}\"}}",
                label(&first)
            )
        ),
        0.0,
        "{text}"
    );
    assert!(second.requests().is_empty());
    assert_eq!(chat(&proxy).await.status, 200);
    assert!(
        second.requests().is_empty(),
        "the first backend still takes requests"
    );
    proxy.stop().await;
}
