//! A private CA for the upstream (`SSL_CERT_FILE`), on 127.0.0.1: an upstream whose certificate
//! the bundle does not cover is refused; once the bundle file is rewritten (as the kubelet updates
//! a mounted ConfigMap) new connections trust it, without a restart; a bundle that stops parsing
//! leaves the roots read before in place. And the protocol versions, cipher suites and key
//! exchange groups the README's security considerations name are each offered, the groups in its
//! order.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aoai_e2e::ca::TestCa;
use aoai_e2e::openai::MockOpenAi;
use common::{TestProxy, fixed_token};
use http::StatusCode;
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::{cipher_suite, kx_group};

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

/// An upstream that allows one protocol version, one cipher suite and one key exchange group, as a
/// gateway pinned to a narrow policy would, is reached with an ECDSA and with an RSA certificate
/// (Azure's): the proxy offers each one the README names.
#[tokio::test]
async fn each_tls_version_suite_and_group_the_readme_names_is_offered() {
    use rustls::version::{TLS12, TLS13};
    let ca = TestCa::new();
    let (ecdsa, rsa) = (ca.server_cert(), ca.server_cert_rsa());
    let cases = [
        (
            "TLS 1.3, AES-128-GCM, X25519, ECDSA",
            &TLS13,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            kx_group::X25519,
            &ecdsa,
        ),
        (
            "TLS 1.3, AES-256-GCM, P-256, RSA",
            &TLS13,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            kx_group::SECP256R1,
            &rsa,
        ),
        (
            "TLS 1.3, ChaCha20-Poly1305, P-384, ECDSA",
            &TLS13,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            kx_group::SECP384R1,
            &ecdsa,
        ),
        (
            "TLS 1.2, ECDHE-ECDSA AES-128-GCM, P-256",
            &TLS12,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            kx_group::SECP256R1,
            &ecdsa,
        ),
        (
            "TLS 1.2, ECDHE-RSA AES-256-GCM, X25519",
            &TLS12,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            kx_group::X25519,
            &rsa,
        ),
        (
            "TLS 1.2, ECDHE-RSA ChaCha20-Poly1305, P-384",
            &TLS12,
            cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            kx_group::SECP384R1,
            &rsa,
        ),
    ];
    for (case, version, suite, group, (chain, key)) in cases {
        let provider = CryptoProvider {
            cipher_suites: vec![suite],
            kx_groups: vec![group],
            ..aoai_runtime::crypto_provider()
        };
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .expect(case)
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .expect(case);
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let upstream = MockOpenAi::start_tls(server).await;
        let proxy = TestProxy::start(
            &[
                ("API_BASE_URL", &upstream.url()),
                ("SSL_CERT_FILE", ca.root_pem_path().to_str().unwrap()),
            ],
            fixed_token(),
        )
        .await;
        assert_eq!(models(&proxy.url).await, StatusCode::OK, "{case}");
        proxy.stop().await;
    }
}

/// The key exchange groups the README names, in its order: the first is the one the proxy's
/// ClientHello carries a key share for.
#[test]
fn the_key_exchange_groups_are_offered_in_the_readme_order() {
    use rustls::NamedGroup;
    let groups: Vec<NamedGroup> = aoai_runtime::crypto_provider()
        .kx_groups
        .iter()
        .map(|group| group.name())
        .collect();
    assert_eq!(
        groups,
        [
            NamedGroup::X25519,
            NamedGroup::secp256r1,
            NamedGroup::secp384r1
        ]
    );
}
