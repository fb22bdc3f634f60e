//! `aoai-bench train`: the traffic that records aoai-proxy's profile-guided optimisation (PGO)
//! profile. `scripts/pgo-profile` builds an instrumented aoai-proxy and runs this against it.
//!
//! The compiler lays out and inlines for the paths this traffic takes, and treats the others as
//! cold, so it covers what runs in production as well as what the benchmark measures: the
//! upstream over TLS with HTTP/2 (what Azure OpenAI's ALPN picks) and with HTTP/1.1, cleartext
//! HTTP/1.1 (the benchmark's), callers' keys checked, JSON answers at 1, 16 and 64 connections,
//! SSE streams, and the admin port's health and metrics.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use aoai_e2e::ca::TestCa;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

use crate::{
    Process, WRK_API_KEY, free_port, mock_entra, pinned, proxy_env, sse_timing, upstream, wait_for,
    wrk, wrk_script,
};

/// Runs each upstream's traffic through `proxy` (an aoai-proxy binary built with
/// `-Cprofile-generate`), `seconds` per wrk run. Each proxy ends with SIGTERM, as in a pod, and
/// writes its counters as it exits.
pub async fn run(proxy: &Path, seconds: u64) {
    let _ = aoai_runtime::crypto_provider().install_default();
    let scratch = std::env::temp_dir().join(format!("aoai-bench-train-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let script = wrk_script(&scratch);
    let ca = TestCa::new();
    let entra = mock_entra(&ca).await;
    // The benchmark's run pinned to one core, where aoai-proxy runs Tokio's single-threaded
    // scheduler (a sidecar with a CPU limit below 2); the others on every core, with the
    // multi-threaded one.
    let one_core = (std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2).then_some(1);
    let upstreams = [
        (
            "HTTPS, HTTP/2",
            start_upstream(Some(ca.server_config())).await,
            None,
        ),
        (
            "HTTPS, HTTP/1.1",
            start_upstream(Some(ca.server_config_http1())).await,
            None,
        ),
        ("cleartext HTTP/1.1", start_upstream(None).await, one_core),
    ];
    let mut client_connector = HttpConnector::new();
    client_connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(client_connector);
    for (name, upstream_url, core) in upstreams {
        let (port, admin_port) = (free_port(), free_port());
        let child = pinned(core, proxy)
            .env_clear()
            .envs(proxy_env(&upstream_url, port, admin_port, &entra, &ca))
            .envs([
                // The key every request sends, so that each passes the check.
                ("AOAI_PROXY_INBOUND_KEYS", WRK_API_KEY.to_string()),
                ("AOAI_PROXY_SHUTDOWN_GRACE", "1s".into()),
            ])
            .stdout(std::fs::File::create(scratch.join("aoai-proxy.log")).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the instrumented aoai-proxy");
        let process = Process::new(child);
        let admin = format!("http://127.0.0.1:{admin_port}");
        wait_for(&format!("{admin}/health")).await;
        let url = format!("http://127.0.0.1:{port}");
        // Traffic that fails would train the error paths instead: one request must succeed first.
        let request = http::Request::post(format!("{url}{}", crate::PATH))
            .header("api-key", WRK_API_KEY)
            .body(Full::new(Bytes::from_static(crate::BODY.as_bytes())))
            .unwrap();
        let response = client.request(request).await.expect("aoai-proxy answers");
        assert_eq!(
            response.status(),
            200,
            "through aoai-proxy to the upstream over {name}"
        );
        let _ = response.into_body().collect().await;
        let mut requests = 0.0;
        for concurrency in [1, 16, 64] {
            requests += wrk(&url, concurrency, seconds, None, &script).requests;
        }
        let (_, _, streamed) = sse_timing(&client, &url, 20).await;
        for path in ["/metrics", "/health"] {
            let response = client
                .get(format!("{admin}{path}").parse().unwrap())
                .await
                .expect("the admin port answers");
            assert!(
                response.status().is_success(),
                "{path}: {}",
                response.status()
            );
            let _ = response.into_body().collect().await;
        }
        drop(process);
        println!(
            "trained: upstream over {name}, {}: {requests:.0} requests, 20 SSE streams ({})",
            if core.is_some() {
                "one core"
            } else {
                "every core"
            },
            if streamed { "streamed" } else { "BUFFERED" }
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The mock upstream on a free port, over TLS with `tls`'s ALPN list when given; its base URL.
async fn start_upstream(tls: Option<rustls::ServerConfig>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    match tls {
        Some(tls) => {
            tokio::spawn(upstream::serve_tls(listener, Arc::new(tls)));
            format!("https://localhost:{port}")
        }
        None => {
            tokio::spawn(upstream::serve(listener));
            format!("http://127.0.0.1:{port}")
        }
    }
}
