//! Large bodies stream through the real aoai-proxy binary without being held: a 512 MiB download
//! (a file's content) reaches the client whole while the proxy's peak memory stays a small
//! fraction of it.

mod common;

use std::time::Duration;

use aoai_e2e::managed_identity::MockManagedIdentity;
use aoai_e2e::openai::MockOpenAi;
use aoai_e2e::tokens::TokenLedger;
use common::process::ProxyProcess;
use http_body_util::BodyExt;

const SIZE: u64 = 512 * 1024 * 1024;

#[tokio::test]
async fn a_512_mib_download_streams_through_in_bounded_memory() {
    let ledger = TokenLedger::new();
    let identity =
        MockManagedIdentity::start("identity-header-1234", Duration::from_secs(3600), ledger).await;
    let upstream = MockOpenAi::start().await;
    let endpoint = identity.app_service_endpoint();
    let mut proxy = ProxyProcess::spawn(&[
        ("API_BASE_URL", &upstream.url()),
        ("IDENTITY_ENDPOINT", &endpoint),
        ("IDENTITY_HEADER", "identity-header-1234"),
        ("AOAI_PROXY_LOG_LEVEL", "info"),
    ]);
    proxy.wait_healthy(Duration::from_secs(15)).await;
    let request = http::Request::get(format!(
        "{}/openai/files/file-abc/content?api-version=2024-10-21",
        proxy.url
    ))
    .header("x-mock-download-bytes", SIZE.to_string())
    .body(aoai_e2e::client::body(""))
    .unwrap();
    let response = aoai_e2e::client::send(request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-length"],
        SIZE.to_string().as_str()
    );
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame
            .expect("the stream goes on")
            .into_data()
            .map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, SIZE);
    let peak_kib = proxy.peak_rss_kib();
    assert!(
        peak_kib < 64 * 1024,
        "the proxy held the body: peak RSS {} MiB",
        peak_kib / 1024
    );
}
