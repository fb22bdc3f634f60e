//! A private CA for the upstream (`SSL_CERT_FILE`), on 127.0.0.1: an upstream whose certificate
//! the bundle does not cover is refused; once the bundle file is rewritten (as the kubelet updates
//! a mounted ConfigMap) new connections trust it, without a restart; a bundle that stops parsing
//! leaves the roots read before in place.

mod common;

use std::time::{Duration, Instant};

use aoai_e2e::ca::TestCa;
use aoai_e2e::openai::MockOpenAi;
use common::{TestProxy, fixed_token};
use http::StatusCode;

async fn models(url: &str) -> StatusCode {
    aoai_e2e::client::get(&format!("{url}/openai/v1/models"), &[])
        .await
        .status
}

#[tokio::test]
async fn the_bundle_is_re_read_when_it_changes() {
    let (old_ca, private_ca) = (TestCa::new(), TestCa::new());
    // HTTP/1.1: connections are not shared, so each request makes a new one.
    let upstream = MockOpenAi::start_tls(private_ca.server_config_http1()).await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca.crt");
    std::fs::copy(old_ca.root_pem_path(), &bundle).unwrap();
    let proxy = TestProxy::start(
        &[
            ("API_BASE_URL", &upstream.url()),
            ("SSL_CERT_FILE", bundle.to_str().unwrap()),
            // A new connection per request, so that each one checks the certificate anew.
            ("AOAI_PROXY_POOL_IDLE_TIMEOUT", "1ms"),
        ],
        fixed_token(),
    )
    .await;
    assert_eq!(
        models(&proxy.url).await,
        StatusCode::BAD_GATEWAY,
        "not trusted yet"
    );

    std::fs::copy(private_ca.root_pem_path(), &bundle).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while models(&proxy.url).await != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "the rewritten bundle was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    std::fs::write(&bundle, "not a certificate").unwrap();
    tokio::time::sleep(aoai_proxy::tls::TRUST_FILE_POLL * 2).await;
    assert_eq!(
        models(&proxy.url).await,
        StatusCode::OK,
        "a broken bundle keeps the roots read before"
    );
    proxy.stop().await;
}
