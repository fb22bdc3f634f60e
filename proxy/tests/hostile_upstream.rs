//! Upstreams and identity endpoints that misbehave, as raw bytes on real sockets: the caller gets
//! a defined answer (the upstream's as it came, or a JSON error with a fitting status), the
//! process stays up with no panic counted, memory stays bounded and streams are not held back.
//! The proxy is the real binary, one process for every upstream case.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aoai_e2e::client::{self, Answer, body};
use common::assert_wait_told;
use common::process::ProxyProcess;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Script = Arc<dyn Fn(TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A server on 127.0.0.1 that reads each request and answers with whatever the current script
/// writes, then closes the connection.
struct RawServer {
    url: String,
    script: Arc<Mutex<Script>>,
}

impl RawServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let script: Arc<Mutex<Script>> = Arc::new(Mutex::new(answer_bytes(b"")));
        let current = script.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let script = current.lock().unwrap().clone();
                tokio::spawn(async move {
                    if read_request(&mut stream).await {
                        script(stream).await;
                    }
                });
            }
        });
        Self { url, script }
    }

    fn answer(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }

    fn answer_with(&self, bytes: impl Into<Vec<u8>>) {
        self.answer(answer_bytes(&bytes.into()));
    }
}

/// Reads a request head and its `Content-Length` body; false when the connection closed first.
async fn read_request(stream: &mut TcpStream) -> bool {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&seen[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while seen.len() < head_end + length {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
    }
    true
}

fn answer_bytes(bytes: &[u8]) -> Script {
    let bytes = bytes.to_vec();
    Arc::new(move |mut stream| {
        let bytes = bytes.clone();
        Box::pin(async move {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        })
    })
}

/// Writes `head`, then `chunks` each after `pause`, then closes.
fn drip(head: &'static str, chunks: Vec<Vec<u8>>, pause: Duration) -> Script {
    Arc::new(move |mut stream| {
        let chunks = chunks.clone();
        Box::pin(async move {
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for chunk in chunks {
                tokio::time::sleep(pause).await;
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = stream.shutdown().await;
        })
    })
}

/// Writes `head`, then `prefix`, then `filler` over and over, `total` bytes in all.
fn endless(head: &'static str, prefix: &'static [u8], filler: u8, total: usize) -> Script {
    Arc::new(move |mut stream| {
        Box::pin(async move {
            if stream.write_all(head.as_bytes()).await.is_err()
                || stream.write_all(prefix).await.is_err()
            {
                return;
            }
            let block = vec![filler; 64 * 1024];
            let mut sent = prefix.len();
            while sent < total {
                let n = block.len().min(total - sent);
                if stream.write_all(&block[..n]).await.is_err() {
                    return;
                }
                sent += n;
            }
            let _ = stream.shutdown().await;
        })
    })
}

/// A token answer as App Service's managed-identity endpoint gives it.
fn token_answer(json: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
        json.len()
    )
    .into_bytes()
}

const MAX_WAIT_MS: u64 = 2000;

struct World {
    upstream: RawServer,
    _identity: RawServer,
    proxy: ProxyProcess,
}

impl World {
    async fn start() -> Self {
        let identity = RawServer::start().await;
        identity.answer_with(token_answer(
            r#"{"access_token":"hostile-suite-token","expires_in":"3600","token_type":"Bearer"}"#,
        ));
        let upstream = RawServer::start().await;
        let mut proxy = ProxyProcess::spawn(&[
            ("API_BASE_URL", &upstream.url),
            ("IDENTITY_ENDPOINT", &format!("{}/msi/token", identity.url)),
            ("IDENTITY_HEADER", "hostile-suite-identity-header"),
            ("AOAI_PROXY_MAX_THROTTLE_WAIT", &format!("{MAX_WAIT_MS}ms")),
            ("AOAI_PROXY_UPSTREAM_TIMEOUT", "2s"),
            ("AOAI_PROXY_LOG_LEVEL", "info"),
        ]);
        proxy.wait_healthy(Duration::from_secs(15)).await;
        Self {
            upstream,
            _identity: identity,
            proxy,
        }
    }

    /// A chat completion to its own deployment (a 429 cools down only that one).
    async fn chat(&self, deployment: &str) -> Answer {
        tokio::time::timeout(
            Duration::from_secs(20),
            client::post_json(
                &format!(
                    "{}/openai/deployments/{deployment}/chat/completions?api-version=2024-10-21",
                    self.proxy.url
                ),
                &[],
                &serde_json::json!({"messages": [{"role": "user", "content": "hi"}]}),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("{deployment}: no answer within 20 s"))
    }

    /// The status and the body as far as it came, with whether it ended cleanly.
    async fn chat_streamed(&self, deployment: &str) -> (StatusCode, Vec<u8>, bool) {
        let request = Request::post(format!(
            "{}/openai/deployments/{deployment}/chat/completions",
            self.proxy.url
        ))
        .header("content-type", "application/json")
        .body(body(r#"{"stream":true}"#))
        .unwrap();
        let response = client::send(request).await;
        let status = response.status();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        let clean = loop {
            match tokio::time::timeout(Duration::from_secs(20), body.frame()).await {
                Err(_) => panic!("{deployment}: the body stalled"),
                Ok(None) => break true,
                Ok(Some(Err(_))) => break false,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        bytes.extend_from_slice(&data);
                    }
                }
            }
        };
        (status, bytes, clean)
    }

    fn assert_alive(&mut self, after: &str) {
        assert!(
            self.proxy.is_running(),
            "the proxy exited after {after}:\n{}",
            self.proxy.output()
        );
    }

    async fn metrics(&self) -> String {
        client::get(&format!("{}/metrics", self.proxy.admin_url), &[])
            .await
            .text()
    }
}

fn assert_json_error(answer: &Answer, status: u16, case: &str) {
    assert_eq!(answer.status, status, "{case}: {}", answer.text());
    let json = answer.json();
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{case}: {json}"
    );
    assert_eq!(answer.headers["content-type"], "application/json", "{case}");
}

#[tokio::test]
async fn no_upstream_answer_ends_or_freezes_the_proxy() {
    let mut world = World::start().await;

    // Throttling headers no finite wait can hold: capped at the configured maximum, told to
    // the caller in both headers.
    for (case, header) in [
        ("retry-after-ms-1e30", "retry-after-ms: 1e30"),
        ("retry-after-huge", "Retry-After: 99999999999999999999"),
        ("reset-tokens-1e300", "x-ratelimit-reset-tokens: 1e300"),
        (
            "reset-requests-hours",
            "x-ratelimit-reset-requests: 99999999999h",
        ),
    ] {
        world.upstream.answer_with(format!(
            "HTTP/1.1 429 Too Many Requests\r\n{header}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
        ));
        let sent = Instant::now();
        let answer = world.chat(case).await;
        let took = sent.elapsed();
        world.assert_alive(case);
        assert_eq!(answer.status, 429, "{case}");
        assert_wait_told(&answer, Duration::from_millis(MAX_WAIT_MS), took, case);
        // Held back for the capped wait only: the proxy answers for itself, then lets it through.
        let held = world.chat(case).await;
        assert_eq!(held.status, 429, "{case}");
        assert_wait_told(
            &held,
            Duration::from_millis(MAX_WAIT_MS),
            sent.elapsed(),
            case,
        );
    }
    tokio::time::sleep(Duration::from_millis(MAX_WAIT_MS + 100)).await;
    world
        .upstream
        .answer_with("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
    assert_eq!(world.chat("retry-after-ms-1e30").await.status, 200);

    // Nonsense waits are ignored: the default wait, within the maximum.
    world.upstream.answer_with(
        "HTTP/1.1 429 Too Many Requests\r\nretry-after-ms: NaN\r\nretry-after: -inf\r\ncontent-length: 0\r\n\r\n",
    );
    let sent = Instant::now();
    let answer = world.chat("nan").await;
    assert_eq!(answer.status, 429);
    assert_wait_told(&answer, Duration::from_secs(1), sent.elapsed(), "nan");

    // A 101 to a plain POST: a protocol violation the caller could not handle.
    world.upstream.answer_with(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    );
    assert_json_error(&world.chat("unasked-101").await, 502, "unasked 101");

    // Heads hyper cannot read, or will not: 502 with a JSON error.
    let many_headers: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let huge_header = format!("x-huge: {}\r\n", "a".repeat(2 * 1024 * 1024));
    for (case, answer) in [
        ("not-http", "SSH-2.0-OpenSSH_9.2\r\n\r\n".to_string()),
        ("garbage-status", "HTTP/1.1 abc Nope\r\n\r\n".to_string()),
        (
            "nul-in-header",
            "HTTP/1.1 200 OK\r\nx-bad: a\0b\r\ncontent-length: 0\r\n\r\n".into(),
        ),
        (
            "many-headers",
            format!("HTTP/1.1 200 OK\r\n{many_headers}content-length: 0\r\n\r\n"),
        ),
        (
            "huge-header",
            format!("HTTP/1.1 200 OK\r\n{huge_header}content-length: 0\r\n\r\n"),
        ),
        ("closed-at-once", String::new()),
        (
            "bad-content-length",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n".into(),
        ),
    ] {
        world.upstream.answer_with(answer);
        let answer = world.chat(case).await;
        world.assert_alive(case);
        assert_json_error(&answer, 502, case);
    }

    // An endless header line without a newline: cut off at hyper's buffer limit, not read forever.
    world.upstream.answer(endless(
        "HTTP/1.1 200 OK\r\nx-endless: ",
        b"",
        b'a',
        64 * 1024 * 1024,
    ));
    assert_json_error(&world.chat("endless-header").await, 502, "endless header");

    // A head that drips slower than the upstream timeout: 504.
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
    world.upstream.answer(drip(
        "",
        head.iter().map(|b| vec![*b]).collect(),
        Duration::from_millis(200),
    ));
    assert_json_error(&world.chat("dripping-head").await, 504, "dripping head");

    // Informational answers before the real one: the real one reaches the caller.
    world.upstream.answer_with(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
    );
    let answer = world.chat("informational").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), r#"{"ok":true}"#);

    // Both Content-Length and Transfer-Encoding: chunked wins (RFC 9112), the caller gets the
    // decoded body and no conflicting length.
    world.upstream.answer_with(
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    let answer = world.chat("length-and-chunked").await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (StatusCode::OK, "hello")
    );

    // Bodies that break after the head: the caller gets the head and a body that ends in an
    // error (a cut connection), never a hang and never a body that looks complete.
    for (case, answer) in [
        (
            "malformed-chunk",
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n5\r\ndata:\r\nzz\r\n",
        ),
        (
            "cut-short",
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"usage\":",
        ),
    ] {
        world.upstream.answer_with(answer);
        let (status, _, clean) = world.chat_streamed(case).await;
        world.assert_alive(case);
        assert_eq!(status, 200, "{case}");
        assert!(!clean, "{case}: the body ended as if complete");
    }

    // A slow stream passes chunk by chunk: the first event arrives long before the last is sent.
    let events: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("data: {{\"n\":{i}}}\n\n").into_bytes())
        .collect();
    world.upstream.answer(drip(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n",
        events,
        Duration::from_millis(300),
    ));
    let started = Instant::now();
    let request = Request::post(format!(
        "{}/openai/deployments/drip/chat/completions",
        world.proxy.url
    ))
    .body(body("{}"))
    .unwrap();
    let mut stream = client::send(request).await.into_body();
    let first = loop {
        let frame = stream.frame().await.unwrap().unwrap();
        if frame.is_data() {
            break started.elapsed();
        }
    };
    let rest = stream.collect().await.unwrap().to_bytes();
    let all = started.elapsed();
    assert!(
        first < Duration::from_millis(900),
        "first event after {first:?}"
    );
    assert!(
        all >= Duration::from_millis(1400),
        "the stream took {all:?}"
    );
    assert!(String::from_utf8_lossy(&rest).contains(r#"{"n":4}"#));

    // Where usage is expected: an endless line inside a usage object, deeply nested JSON, and
    // huge numbers. Streamed through as they came, in bounded memory, no usage counted.
    let nested: Vec<u8> = {
        let mut text = br#"{"usage":"#.to_vec();
        text.extend(std::iter::repeat_n(br#"{"a":"#.as_slice(), 600).flatten());
        text.extend(std::iter::repeat_n(b'}', 601));
        text
    };
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        nested.len()
    );
    let mut bytes = answer.into_bytes();
    bytes.extend_from_slice(&nested);
    world.upstream.answer_with(bytes);
    let answer = world.chat("nested-usage").await;
    assert_eq!(
        (answer.status, answer.body.len()),
        (StatusCode::OK, nested.len())
    );

    let huge = r#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":18446744073709551615,"extra":1e999}}"#;
    world.upstream.answer_with(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{huge}",
        huge.len()
    ));
    assert_eq!(world.chat("huge-usage").await.status, 200);

    const ENDLESS: usize = 200 * 1024 * 1024;
    world.upstream.answer(endless(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n",
        br#"data: {"usage":{"note":""#,
        b'x',
        ENDLESS,
    ));
    let (status, received, clean) = world.chat_streamed("endless-usage").await;
    assert_eq!(status, 200);
    assert!(clean);
    assert_eq!(received.len(), ENDLESS);
    let metrics = world.metrics().await;
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("aoai_proxy_gen_ai_client_token_usage_total") && !l.ends_with(" 0")
        })
        .collect();
    assert!(
        counted.is_empty(),
        "usage counted from nonsense: {counted:#?}"
    );

    // After all of it: still up, no panic, memory bounded, and a normal call still works.
    world.assert_alive("the whole suite");
    assert!(
        metrics.contains("aoai_proxy_panics_total 0"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("panics"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let peak = world.proxy.peak_rss_kib();
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    world.upstream.answer_with(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
    );
    assert_eq!(world.chat("after").await.status, 200);
    assert!(
        !world.proxy.output().contains("hostile-suite-token"),
        "the token reached the logs"
    );
}

/// Identity endpoints that answer with absurd or unusable tokens: the proxy stays up, takes an
/// absurd lifetime as its maximum, reports an unusable answer on `/health`, and counts no panic.
#[tokio::test]
async fn no_identity_answer_ends_the_proxy() {
    let upstream = RawServer::start().await;
    upstream.answer_with("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
    let usable = [
        r#"{"access_token":"t","expires_in":9223372036854775807}"#,
        r#"{"access_token":"t","expires_in":1e300}"#,
        r#"{"access_token":"t","expires_on":"18446744073709551615"}"#,
        r#"{"access_token":"t","expires_on":"12/31/2099 11:59:59 PM +00:00"}"#,
        r#"{"access_token":"t","expires_in":3600,"refresh_in":-1e300}"#,
    ];
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge = format!(r#"{{"access_token":"{}"}}"#, "a".repeat(4 * 1024 * 1024));
    let unusable = [
        (
            r#"{"access_token":"t","expires_in":"NaN"}"#,
            "neither expires_in nor expires_on",
        ),
        (
            r#"{"access_token":"t","expires_on":-9223372036854775808}"#,
            "expires immediately",
        ),
        (nested.as_str(), "not JSON"),
        (huge.as_str(), "larger than 1048576 bytes"),
        ("\u{0}\u{1}binary", "not JSON"),
    ];
    let identity = RawServer::start().await;
    let cases = usable
        .iter()
        .map(|json| (*json, None))
        .chain(unusable.iter().map(|(json, why)| (*json, Some(*why))));
    for (json, refused) in cases {
        identity.answer_with(token_answer(json));
        let mut proxy = ProxyProcess::spawn(&[
            ("API_BASE_URL", &upstream.url),
            ("IDENTITY_ENDPOINT", &format!("{}/msi/token", identity.url)),
            ("IDENTITY_HEADER", "hostile-suite-identity-header"),
        ]);
        let case = &json[..json.len().min(60)];
        match refused {
            None => {
                proxy.wait_healthy(Duration::from_secs(15)).await;
                let answer = client::chat(&proxy.url).await;
                assert_eq!(answer.status, 200, "{case}");
            }
            Some(why) => {
                let health = format!("{}/health", proxy.url);
                aoai_e2e::wait::until(case, Duration::from_secs(15), || async {
                    let request = Request::get(&health).body(body("")).unwrap();
                    let Ok(response) = client::http_client().request(request).await else {
                        return Err("not listening yet".to_string());
                    };
                    let status = response.status();
                    let text = response.into_body().collect().await.unwrap().to_bytes();
                    let text = String::from_utf8_lossy(&text);
                    if status == 503 && text.contains(why) {
                        Ok(())
                    } else {
                        Err(format!("{status} {text}"))
                    }
                })
                .await;
            }
        }
        assert!(proxy.is_running(), "{case}: exited:\n{}", proxy.output());
        let metrics = client::get(&format!("{}/metrics", proxy.admin_url), &[]).await;
        assert!(
            metrics.text().contains("aoai_proxy_panics_total 0"),
            "{case}:\n{}",
            proxy.output()
        );
    }
}
