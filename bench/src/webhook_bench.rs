//! The webhook's `/mutate` over HTTPS with keep-alive, fed a recorded AdmissionReview: latency at
//! a fixed 500 requests/s, and the most it answers with 16 connections. At the fixed rate, latency
//! counts from each request's scheduled time whenever its connection is behind schedule, so a
//! stall is not hidden.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoai_e2e::ca::TestCa;
use aoai_operator::certs::{ServingCert, server_config};
use aoai_operator::metrics::Metrics;
use aoai_operator::mutate::InjectOptions;
use aoai_operator::webhook::{self, Webhook};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use kube::runtime::{reflector, watcher};

use crate::percentile;

const FIXTURE: &str = "../shared/fixtures/admission/pod-annotated.json";

async fn connect(port: u16, roots: &rustls::RootCertStore) -> SendRequest<Full<Bytes>> {
    let config = aoai_e2e::ca::client_config(roots.clone());
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

async fn mutate(sender: &mut SendRequest<Full<Bytes>>, body: &Bytes) -> bool {
    let request = Request::post("/mutate")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .unwrap();
    match sender.send_request(request).await {
        Ok(response) => {
            response.status().is_success() && response.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

pub async fn run(_core: Option<usize>) {
    let Ok(review) = std::fs::read(Path::new(FIXTURE)) else {
        println!(
            "webhook: {FIXTURE} not found (run from the repository root, with ../shared beside it): skipped"
        );
        return;
    };
    let review = Bytes::from(review);
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitApply(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
            "metadata": {"name": "my-proxy", "namespace": "wh-test"},
            "spec": {"endpoint": "https://r.openai.azure.com", "tenantId": "contoso.onmicrosoft.com",
                     "clientId": "11111111-2222-3333-4444-555555555555",
                     "credential": {"clientCertificate": {"secretName": "cert"}}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "ok",
                                        "lastTransitionTime": "2026-11-01T00:00:00Z"}]},
        }))
        .unwrap(),
    ));
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let ca = TestCa::new();
    let cert = Arc::new(ServingCert::default());
    let (crt, key) = ca.server_cert_pem();
    cert.set(&crt, &key).unwrap();
    let hook = Arc::new(Webhook {
        proxies: store,
        options: InjectOptions {
            default_image: "aoai-proxy:bench".into(),
            native_sidecars_supported: true,
        },
        metrics: Arc::new(Metrics::new()),
        events: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(webhook::serve(
        listener,
        server_config(cert),
        hook,
        std::future::pending(),
        std::time::Duration::ZERO,
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root_der().clone()).unwrap();

    // Fixed rate: 500 requests/s for 10 s over 8 keep-alive connections.
    let (rate, seconds, connections) = (500u64, 10u64, 8u64);
    let interval = Duration::from_micros(1_000_000 * connections / rate);
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let mut sender = connect(port, &roots).await;
        let review = review.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0;
            let offset = interval * connection as u32 / connections as u32;
            let count = rate * seconds / connections;
            for i in 0..count {
                let sent = crate::peers::turn(start + offset + interval * i as u32).await;
                if mutate(&mut sender, &review).await {
                    latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                } else {
                    failures += 1;
                }
            }
            (latencies, failures)
        }));
    }
    let (mut latencies, mut failures) = (Vec::new(), 0);
    for task in tasks {
        let (l, f) = task.await.unwrap();
        latencies.extend(l);
        failures += f;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let achieved = latencies.len() as f64 / elapsed;
    let (p50, p99) = (
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99),
    );

    // Closed loop: as fast as 16 connections go, for 5 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut sender = connect(port, &roots).await;
        let review = review.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                if mutate(&mut sender, &review).await {
                    latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                }
            }
            latencies
        }));
    }
    let mut max_latencies = Vec::new();
    for task in tasks {
        max_latencies.extend(task.await.unwrap());
    }
    println!(
        "Webhook POST /mutate over HTTPS, keep-alive, recorded pod-annotated.json (the webhook runs in the harness process):"
    );
    println!();
    println!("| load | requests/s | p50 µs | p99 µs | failures |");
    println!("|---|---|---|---|---|");
    println!(
        "| fixed 500/s, 8 connections, 10 s | {achieved:.0} | {p50:.0} | {p99:.0} | {failures} |"
    );
    let max_rps = max_latencies.len() as f64 / 5.0;
    println!(
        "| closed loop, 16 connections, 5 s | {max_rps:.0} | {:.0} | {:.0} | — |",
        percentile(&mut max_latencies, 0.5),
        percentile(&mut max_latencies, 0.99)
    );
}
