//! Inbound keys over HTTP: accepted, rejected, locked out with Retry-After, health exempt, and a
//! keys file rotated the way Kubernetes rotates Secret volumes (a symlink swap).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use aoai_e2e::client::get;
use aoai_e2e::openai::MockOpenAi;
use common::{TestProxy, fixed_token};
use http::StatusCode;

#[tokio::test]
async fn keys_are_checked_and_repeated_failures_lock_the_client_out() {
    let upstream = MockOpenAi::start().await;
    let proxy = TestProxy::start(
        &[
            ("API_BASE_URL", &upstream.url()),
            ("EXPECTED_KEY", "right-key"),
            ("AOAI_PROXY_AUTH_MAX_FAILURES", "3"),
            ("AOAI_PROXY_AUTH_LOCKOUT", "2m"),
        ],
        fixed_token(),
    )
    .await;
    let url = format!("{}/openai/models", proxy.url);

    assert_eq!(
        get(&url, &[("api-key", "right-key")]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&url, &[("authorization", "Bearer right-key")])
            .await
            .status,
        StatusCode::OK
    );

    let missing = get(&url, &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.json()["error"]["code"], "missing_api_key");
    let wrong = get(&url, &[("api-key", "wrong-key")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json()["error"]["code"], "invalid_api_key");
    assert!(
        !wrong.text().contains("wrong-key"),
        "the error echoes the key"
    );

    let locked = get(&url, &[("api-key", "wrong-again")]).await;
    assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(locked.json()["error"]["code"], "too_many_failed_attempts");
    let retry_after: u64 = locked.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (110..=120).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    // Locked out even with the right key.
    assert_eq!(
        get(&url, &[("api-key", "right-key")]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Health is never behind the key check.
    assert_eq!(
        get(&format!("{}/health", proxy.url), &[]).await.status,
        StatusCode::OK
    );

    // Only the two authenticated requests reached the upstream.
    assert_eq!(upstream.requests().len(), 2);
    let metrics = get(&format!("{}/metrics", proxy.admin_url), &[])
        .await
        .text();
    assert!(
        metrics.contains("aoai_proxy_inbound_auth_failures_total{reason=\"locked_out\"} 2"),
        "{metrics}"
    );
    proxy.stop().await;
}

/// Lays out `dir` as the kubelet does: `keys -> ..data/keys`, `..data -> ..<version>`.
fn write_secret_volume(dir: &Path, version: &str, content: &str) {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("keys"), content).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("keys").exists() {
        std::os::unix::fs::symlink("..data/keys", dir.join("keys")).unwrap();
    }
}

#[tokio::test]
async fn a_rotated_keys_file_takes_effect_without_restart() {
    let upstream = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_secret_volume(dir.path(), "v1", "# inbound keys\nkey-one\n");
    let keys_file = dir.path().join("keys");
    let proxy = TestProxy::start(
        &[
            ("API_BASE_URL", &upstream.url()),
            ("AOAI_PROXY_INBOUND_KEYS_FILE", keys_file.to_str().unwrap()),
            ("AOAI_PROXY_AUTH_MAX_FAILURES", "1000"),
        ],
        fixed_token(),
    )
    .await;
    let url = format!("{}/openai/models", proxy.url);
    assert_eq!(
        get(&url, &[("api-key", "key-one")]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&url, &[("api-key", "key-two")]).await.status,
        StatusCode::UNAUTHORIZED
    );

    write_secret_volume(dir.path(), "v2", "key-two\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if get(&url, &[("api-key", "key-two")]).await.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the new key was not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get(&url, &[("api-key", "key-one")]).await.status,
        StatusCode::UNAUTHORIZED
    );
    proxy.stop().await;
}
