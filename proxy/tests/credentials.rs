//! The four credentials and the token lifecycle, with the real binary against loopback mocks of
//! Entra ID (HTTPS, test CA, verifying assertions for real), managed identity and Azure OpenAI.
//! Every test ends by checking that nothing secret reached the proxy's output.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aoai_e2e::ca::{TestCa, fixture_key_pem, fixtures_dir, self_signed_client_cert};
use aoai_e2e::client::chat;
use aoai_e2e::client::{get, post_json};
use aoai_e2e::entra::{App, MockEntra};
use aoai_e2e::managed_identity::MockManagedIdentity;
use aoai_e2e::openai::{MockOpenAi, STREAM_PROMPT_TOKENS};
use aoai_e2e::tokens::TokenLedger;
use common::process::{ProxyProcess, assert_no_secrets, run_to_exit};
use http::StatusCode;
use ring::digest::{SHA256, digest};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "client-secret-value-7Q~abcdefghijklmnop";
const FEDERATED: &str = "eyJhbGciOiJSUzI1NiJ9.service-account-token-one.signature";
const FEDERATED_2: &str = "eyJhbGciOiJSUzI1NiJ9.service-account-token-two.signature";
const IDENTITY_HEADER: &str = "identity-header-secret-1234";
const YEAR: i64 = 365 * 24 * 3600;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The mocks of one test, and the files it writes.
struct World {
    ca: TestCa,
    ledger: Arc<TokenLedger>,
    entra: MockEntra,
    upstream: MockOpenAi,
    dir: tempfile::TempDir,
    cert_a: String,
    cert_b: String,
}

impl World {
    async fn new(app: impl FnOnce(&mut App), lifetime: Duration) -> Self {
        let ca = TestCa::new();
        let ledger = TokenLedger::new();
        let cert_a =
            self_signed_client_cert(&fixture_key_pem("client-a"), now() - 3600, now() + YEAR);
        let cert_b =
            self_signed_client_cert(&fixture_key_pem("client-b"), now() - 3600, now() + YEAR);
        let mut registration = App {
            tenant_id: TENANT.into(),
            client_id: CLIENT.into(),
            ..App::default()
        };
        app(&mut registration);
        let entra =
            MockEntra::start(registration, ca.server_config(), lifetime, ledger.clone()).await;
        let upstream = MockOpenAi::start_checking(ledger.clone()).await;
        Self {
            ca,
            ledger,
            entra,
            upstream,
            dir: tempfile::tempdir().unwrap(),
            cert_a,
            cert_b,
        }
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Variables common to every Entra ID credential.
    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars = vec![
            ("API_BASE_URL".to_string(), self.upstream.url()),
            ("AZURE_TENANT_ID".into(), TENANT.into()),
            ("AZURE_CLIENT_ID".into(), CLIENT.into()),
            ("AZURE_AUTHORITY_HOST".into(), self.entra.authority()),
            (
                "SSL_CERT_FILE".into(),
                self.ca.root_pem_path().display().to_string(),
            ),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        vars
    }

    /// Everything that must never be printed: issued tokens, assertions, secrets, key material.
    fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![
            SECRET.to_string(),
            FEDERATED.into(),
            FEDERATED_2.into(),
            IDENTITY_HEADER.into(),
        ];
        for request in self.entra.requests() {
            if let Ok(token) = request.outcome {
                secrets.push(token);
            }
            secrets.extend(request.form.get("client_assertion").cloned());
        }
        for key in ["client-a", "client-b"] {
            secrets.extend(
                fixture_key_pem(key)
                    .lines()
                    .filter(|l| l.len() == 64)
                    .map(String::from),
            );
        }
        secrets
    }
}

/// An app registration that accepts `SECRET`, its tokens valid for `lifetime`, and a healthy
/// proxy holding that secret.
async fn client_secret_proxy(lifetime: Duration) -> (World, ProxyProcess) {
    let world = World::new(|app| app.secret = Some(SECRET.into()), lifetime).await;
    let mut proxy = ProxyProcess::spawn(&vars(&world.env(&[("AZURE_CLIENT_SECRET", SECRET)])));
    proxy.wait_healthy(Duration::from_secs(15)).await;
    (world, proxy)
}

fn vars(owned: &[(String, String)]) -> Vec<(&str, &str)> {
    owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn sha256(der_pem: &str) -> Vec<u8> {
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(der_pem.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap();
    digest(&SHA256, &der).as_ref().to_vec()
}

fn der(cert_pem: &str) -> Vec<u8> {
    let cert: rustls_pki_types::CertificateDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes()).unwrap();
    cert.to_vec()
}

#[tokio::test]
async fn certificate_credential_in_every_file_format() {
    let world = World::new(|_| {}, Duration::from_secs(3600)).await;
    world
        .entra
        .update_app(|app| app.certificates = vec![der(&world.cert_a)]);
    let pem = world.write(
        "a.pem",
        &format!("{}{}", world.cert_a, fixture_key_pem("client-a")),
    );
    let key_first = world.write(
        "a-key-first.pem",
        &format!("{}{}", fixture_key_pem("client-a-pkcs1"), world.cert_a),
    );
    // A kubernetes.io/tls Secret mounted as files: tls.crt and tls.key.
    let crt_only = world.write("tls.crt", &world.cert_a);
    let key_only = world.write("tls.key", &fixture_key_pem("client-a"));
    let p12 = fixtures_dir().join("keys/client-a.p12");
    // The PKCS#12 fixture carries its own certificate: register it too.
    let p12_cert = {
        let content = std::fs::read(&p12).unwrap();
        let store = p12_keystore::KeyStore::from_pkcs12(
            &content,
            "test-password",
            p12_keystore::Pkcs12ImportPolicy::Relaxed,
        )
        .unwrap();
        store.private_key_chain().unwrap().1.certs()[0]
            .as_der()
            .to_vec()
    };
    world
        .entra
        .update_app(|app| app.certificates.push(p12_cert));

    let cases: Vec<Vec<(String, String)>> = vec![
        world.env(&[("AZURE_CERTIFICATE_PATH", pem.to_str().unwrap())]),
        world.env(&[
            ("AZURE_CLIENT_CERTIFICATE_PATH", key_first.to_str().unwrap()),
            ("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", "true"),
        ]),
        world.env(&[
            ("AZURE_CERTIFICATE_PATH", crt_only.to_str().unwrap()),
            (
                "AOAI_PROXY_CERTIFICATE_KEY_PATH",
                key_only.to_str().unwrap(),
            ),
        ]),
        world.env(&[
            ("AZURE_CLIENT_CERTIFICATE_PATH", p12.to_str().unwrap()),
            ("AZURE_CLIENT_CERTIFICATE_PASSWORD", "test-password"),
        ]),
    ];
    for (index, case) in cases.iter().enumerate() {
        let mut proxy = ProxyProcess::spawn(&vars(case));
        proxy.wait_healthy(Duration::from_secs(15)).await;
        let answer = chat(&proxy.url).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "case {index}: {}\n{}",
            answer.text(),
            proxy.output()
        );
        let last = world.entra.requests().pop().unwrap();
        assert!(last.outcome.is_ok(), "case {index}: {:?}", last.outcome);
        assert_eq!(
            last.form["client_assertion_type"],
            aoai_e2e::entra::JWT_BEARER
        );
        assert_eq!(
            last.form["scope"],
            "https://cognitiveservices.azure.com/.default"
        );
        let output = proxy.output();
        assert!(output.contains("using client certificate"), "{output}");
        assert!(output.contains("access token acquired"), "{output}");
        let metrics = get(&format!("{}/metrics", proxy.admin_url), &[])
            .await
            .text();
        assert!(
            metrics.contains(
                "aoai_proxy_token_refreshes_total{credential=\"certificate\",result=\"success\"} 1"
            ),
            "{metrics}"
        );
        assert_no_secrets(&output, &world.secrets());
    }
    assert_eq!(world.upstream.invalid_tokens(), 0);
}

#[tokio::test]
async fn client_secret_inline_and_from_a_rotated_file() {
    let (world, proxy) = client_secret_proxy(Duration::from_secs(3)).await;
    assert_eq!(chat(&proxy.url).await.status, StatusCode::OK);
    assert_eq!(world.entra.requests()[0].form["client_secret"], SECRET);
    // The request line: method, path without its query, status, duration, then the backend, the
    // deployment and the tokens the answer used.
    proxy
        .wait_for_output(
            " INFO request method=POST path=/openai/deployments/gpt-4o/chat/completions status=200 duration_ms=",
            Duration::from_secs(5),
        )
        .await;
    let backend = world.upstream.url().replace("http://", "");
    proxy
        .wait_for_output(
            &format!(" backend={backend} deployment=gpt-4o input_tokens=5 output_tokens=7 total_tokens=12\n"),
            Duration::from_secs(5),
        )
        .await;
    assert!(!proxy.output().contains("api-version"));
    assert_no_secrets(&proxy.output(), &world.secrets());
    drop(proxy);

    let file = world.write("secret", &format!("{SECRET}\n"));
    let mut proxy = ProxyProcess::spawn(&vars(&world.env(&[
        ("AOAI_PROXY_CLIENT_SECRET_FILE", file.to_str().unwrap()),
        ("AOAI_PROXY_LOG_FORMAT", "json"),
    ])));
    proxy.wait_healthy(Duration::from_secs(15)).await;
    // Rotate: the app now accepts only the new secret, and the file holds it.
    const NEW_SECRET: &str = "rotated-secret-value-8R~qrstuvwxyz012";
    world
        .entra
        .update_app(|app| app.secret = Some(NEW_SECRET.into()));
    std::fs::write(&file, NEW_SECRET).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !world.entra.requests().iter().any(|r| {
        r.form.get("client_secret").map(String::as_str) == Some(NEW_SECRET) && r.outcome.is_ok()
    }) {
        assert!(
            Instant::now() < deadline,
            "the rotated secret was not used:\n{}",
            proxy.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(chat(&proxy.url).await.status, StatusCode::OK);
    proxy
        .wait_for_output("\"message\":\"request\"", Duration::from_secs(5))
        .await;
    let output = proxy.output();
    let line = output
        .lines()
        .find(|l| l.contains("\"message\":\"request\""))
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/openai/deployments/gpt-4o/chat/completions");
    assert_eq!(line["status"], 200);
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(line["backend"], world.upstream.url().replace("http://", ""));
    assert_eq!(line["deployment"], "gpt-4o");
    assert_eq!(
        (
            &line["input_tokens"],
            &line["output_tokens"],
            &line["total_tokens"]
        ),
        (
            &serde_json::json!(5),
            &serde_json::json!(7),
            &serde_json::json!(12)
        )
    );

    // A stream's line is written when it ends: its whole duration, and the usage its last
    // event carried.
    let streamed = post_json(
        &format!(
            "{}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            proxy.url
        ),
        &[("x-mock-chunks", "4"), ("x-mock-chunk-delay-ms", "100")],
        &serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "stream": true,
                            "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(streamed.status, StatusCode::OK);
    proxy
        .wait_for_output("\"output_tokens\":4", Duration::from_secs(5))
        .await;
    let output = proxy.output();
    let line: serde_json::Value = serde_json::from_str(
        output
            .lines()
            .find(|l| l.contains("\"output_tokens\":4"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (&line["input_tokens"], &line["total_tokens"]),
        (
            &serde_json::json!(STREAM_PROMPT_TOKENS),
            &serde_json::json!(STREAM_PROMPT_TOKENS + 4)
        )
    );
    assert!(line["duration_ms"].as_f64().unwrap() >= 300.0, "{line}");
    let mut secrets = world.secrets();
    secrets.push(NEW_SECRET.into());
    assert_no_secrets(&proxy.output(), &secrets);
}

#[tokio::test]
async fn request_lines_are_written_within_a_second_and_none_is_lost_at_shutdown() {
    let (_world, mut proxy) = client_secret_proxy(Duration::from_secs(3600)).await;
    let lines = |output: &str| output.matches(" INFO request method=POST ").count();

    // Buffered, then written by the next tick although no other request comes.
    assert_eq!(chat(&proxy.url).await.status, StatusCode::OK);
    proxy
        .wait_for_output(" INFO request method=POST ", Duration::from_millis(2500))
        .await;

    // Still buffered when SIGTERM arrives: written before the exit.
    assert_eq!(chat(&proxy.url).await.status, StatusCode::OK);
    assert!(proxy.terminate(Duration::from_secs(10)).success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while lines(&proxy.output()) < 2 {
        assert!(
            Instant::now() < deadline,
            "a request line was lost at shutdown:\n{}",
            proxy.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines(&proxy.output()), 2, "{}", proxy.output());
}

#[tokio::test]
async fn workload_identity_reads_the_federated_token_at_each_exchange() {
    let world = World::new(
        |app| app.federated_token = Some(FEDERATED.into()),
        Duration::from_secs(3),
    )
    .await;
    let token_file = world.write("token", FEDERATED);
    let mut proxy = ProxyProcess::spawn(&vars(
        &world.env(&[("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str().unwrap())]),
    ));
    proxy.wait_healthy(Duration::from_secs(15)).await;
    assert_eq!(chat(&proxy.url).await.status, StatusCode::OK);
    let first = &world.entra.requests()[0];
    assert_eq!(first.form["client_assertion"], FEDERATED);
    assert_eq!(
        first.form["client_assertion_type"],
        aoai_e2e::entra::JWT_BEARER
    );

    // The kubelet rotates the projected token; Entra now expects the new one.
    world
        .entra
        .update_app(|app| app.federated_token = Some(FEDERATED_2.into()));
    std::fs::write(&token_file, FEDERATED_2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !world
        .entra
        .requests()
        .iter()
        .any(|r| r.form["client_assertion"] == FEDERATED_2 && r.outcome.is_ok())
    {
        assert!(
            Instant::now() < deadline,
            "the rotated federated token was not used:\n{}",
            proxy.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(chat(&proxy.url).await.status, StatusCode::OK);
    assert_no_secrets(&proxy.output(), &world.secrets());
}

#[tokio::test]
async fn managed_identity_imds_and_app_service() {
    let ledger = TokenLedger::new();
    let mi =
        MockManagedIdentity::start(IDENTITY_HEADER, Duration::from_secs(86400), ledger.clone())
            .await;
    let upstream = MockOpenAi::start_checking(ledger.clone()).await;
    let base = upstream.url();
    let imds = mi.imds_base();
    let app_service = mi.app_service_endpoint();
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, Option<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            vec![("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.as_str())],
            "/metadata/identity/oauth2/token",
            None,
        ),
        (
            vec![
                ("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.as_str()),
                ("AZURE_CLIENT_ID", CLIENT),
            ],
            "/metadata/identity/oauth2/token",
            Some(("client_id", CLIENT)),
        ),
        (
            vec![
                ("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.as_str()),
                (
                    "AOAI_PROXY_MANAGED_IDENTITY_RESOURCE_ID",
                    "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i",
                ),
            ],
            "/metadata/identity/oauth2/token",
            Some((
                "msi_res_id",
                "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i",
            )),
        ),
        (
            vec![
                ("IDENTITY_ENDPOINT", app_service.as_str()),
                ("IDENTITY_HEADER", IDENTITY_HEADER),
                ("AOAI_PROXY_MANAGED_IDENTITY_OBJECT_ID", TENANT),
            ],
            "/msi/token",
            Some(("object_id", TENANT)),
        ),
    ];
    for (index, (extra, path, id)) in cases.into_iter().enumerate() {
        let mut all = vec![("API_BASE_URL", base.as_str())];
        all.extend(extra);
        let mut proxy = ProxyProcess::spawn(&all);
        proxy.wait_healthy(Duration::from_secs(15)).await;
        assert_eq!(
            chat(&proxy.url).await.status,
            StatusCode::OK,
            "case {index}"
        );
        let request = mi.requests().pop().unwrap();
        assert_eq!(request.path, path);
        assert_eq!(
            request.query["resource"],
            "https://cognitiveservices.azure.com"
        );
        for key in ["client_id", "object_id", "msi_res_id", "mi_res_id"] {
            assert_eq!(
                request.query.get(key).map(String::as_str),
                id.filter(|(k, _)| *k == key).map(|(_, v)| v),
                "case {index}: {key}"
            );
        }
        let output = proxy.output();
        assert!(output.contains("using managed identity"), "{output}");
        assert_no_secrets(&output, &[IDENTITY_HEADER.to_string()]);
    }
    assert_eq!(upstream.invalid_tokens(), 0);
    // Never the real IMDS address.
    assert!(mi.requests().len() >= 4);
}

#[tokio::test]
async fn a_refused_credential_is_logged_with_azure_code_and_the_proxy_keeps_trying() {
    let world = World::new(
        |app| app.secret = Some("the-right-secret-value".into()),
        Duration::from_secs(3600),
    )
    .await;
    let mut proxy = ProxyProcess::spawn(&vars(&world.env(&[("AZURE_CLIENT_SECRET", SECRET)])));
    proxy
        .wait_for_output("AADSTS7000215", Duration::from_secs(10))
        .await;
    let output = proxy.output();
    let line = output
        .lines()
        .find(|l| l.contains("AADSTS7000215"))
        .unwrap();
    assert!(
        line.contains("WARN")
            && line.contains("invalid_client")
            && line.contains("Invalid client secret provided"),
        "{line}"
    );
    assert!(
        !line.contains("Trace ID"),
        "only the first line of Azure's description is kept: {line}"
    );

    let health = get(&format!("{}/health", proxy.admin_url), &[]).await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        health.json()["reason"]
            .as_str()
            .unwrap()
            .contains("AADSTS7000215")
    );
    let answer = chat(&proxy.url).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(world.upstream.requests().is_empty());
    assert!(proxy.is_running(), "the proxy must keep retrying, not exit");

    // The secret is fixed in Entra ID: the proxy recovers on its own.
    world
        .entra
        .update_app(|app| app.secret = Some(SECRET.into()));
    proxy.wait_healthy(Duration::from_secs(20)).await;
    assert_eq!(chat(&proxy.url).await.status, StatusCode::OK);
    assert_no_secrets(&proxy.output(), &world.secrets());
}

#[tokio::test]
async fn tokens_refresh_before_expiry_under_continuous_load() {
    let (world, proxy) = client_secret_proxy(Duration::from_secs(4)).await;

    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let stop_at = Instant::now() + Duration::from_secs(12);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (url, failures, sent) = (proxy.url.clone(), failures.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            while Instant::now() < stop_at {
                let answer = chat(&url).await;
                sent.fetch_add(1, Ordering::SeqCst);
                if answer.status != StatusCode::OK {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let sent = sent.load(Ordering::SeqCst);
    assert!(sent > 100, "only {sent} requests");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "failed requests during refreshes:\n{}",
        proxy.output()
    );
    assert_eq!(
        world.upstream.invalid_tokens(),
        0,
        "a request carried a token that was not valid at that moment"
    );

    // Each token was replaced before it expired.
    let issued: Vec<String> = world
        .entra
        .requests()
        .into_iter()
        .filter_map(|r| r.outcome.ok())
        .collect();
    assert!(
        issued.len() >= 4,
        "only {} refreshes in 12 s of 4 s tokens",
        issued.len()
    );
    for pair in issued.windows(2) {
        let (_, old_expiry) = world.ledger.lifetime_of(&pair[0]).unwrap();
        let (new_issue, _) = world.ledger.lifetime_of(&pair[1]).unwrap();
        assert!(
            new_issue < old_expiry,
            "a token was refreshed only after it expired"
        );
    }
    assert_no_secrets(&proxy.output(), &world.secrets());
}

#[tokio::test]
async fn identity_outage_serves_the_cached_token_then_503_then_recovers() {
    let (mut world, mut proxy) = client_secret_proxy(Duration::from_secs(4)).await;
    let acquired = world.entra.requests().last().unwrap().at;
    world.entra.stop();

    // Still valid: requests succeed.
    assert_eq!(chat(&proxy.url).await.status, StatusCode::OK);
    // After expiry (4 s from acquisition): 503 with the reason, health 503.
    let expired_at = acquired + Duration::from_secs(4);
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        expired_at + Duration::from_millis(300),
    ))
    .await;
    let answer = chat(&proxy.url).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.text()
    );
    let message = answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("cannot reach"), "{message}");
    assert_eq!(
        get(&format!("{}/health", proxy.admin_url), &[])
            .await
            .status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(proxy.output().contains("serving_with_cached_token"));

    world.entra.restart().await;
    proxy.wait_healthy(Duration::from_secs(20)).await;
    assert_eq!(chat(&proxy.url).await.status, StatusCode::OK);
    assert_eq!(world.upstream.invalid_tokens(), 0);
    assert_no_secrets(&proxy.output(), &world.secrets());
}

#[tokio::test]
async fn an_upstream_401_triggers_one_early_refresh() {
    let (world, proxy) = client_secret_proxy(Duration::from_secs(30)).await;
    assert_eq!(world.entra.requests().len(), 1);
    // Early refreshes are rate-limited to one per min(30 s, lifetime / 10) = 3 s.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let answer = aoai_e2e::client::get(
        &format!("{}/openai/models", proxy.url),
        &[("x-mock-status", "401")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let deadline = Instant::now() + Duration::from_secs(3);
    while world.entra.requests().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no early refresh after a 401:\n{}",
            proxy.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A second 401 right away does not cause another refresh.
    let _ = aoai_e2e::client::get(
        &format!("{}/openai/models", proxy.url),
        &[("x-mock-status", "401")],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        world.entra.requests().len(),
        2,
        "early refreshes are not rate-limited"
    );
    assert!(proxy.output().contains("refreshing early"));
    assert_no_secrets(&proxy.output(), &world.secrets());
}

/// Points `link` at `target` atomically, as the kubelet swaps Secret volume contents.
fn swap_symlink(link: &Path, target: &Path) {
    let tmp = link.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

#[tokio::test]
async fn a_rotated_certificate_signs_the_next_assertion() {
    let world = World::new(|_| {}, Duration::from_secs(3)).await;
    world
        .entra
        .update_app(|app| app.certificates = vec![der(&world.cert_a), der(&world.cert_b)]);
    let a = world.write(
        "a.pem",
        &format!("{}{}", world.cert_a, fixture_key_pem("client-a")),
    );
    let b = world.write(
        "b.pem",
        &format!("{}{}", world.cert_b, fixture_key_pem("client-b")),
    );
    let link = world.dir.path().join("tls.pem");
    swap_symlink(&link, &a);
    let mut proxy = ProxyProcess::spawn(&vars(
        &world.env(&[("AZURE_CERTIFICATE_PATH", link.to_str().unwrap())]),
    ));
    proxy.wait_healthy(Duration::from_secs(15)).await;
    assert_eq!(
        world.entra.requests()[0].signed_with.as_deref(),
        Some(sha256(&world.cert_a).as_slice())
    );

    swap_symlink(&link, &b);
    let swapped = Instant::now();
    let deadline = swapped + Duration::from_secs(10);
    loop {
        let requests = world.entra.requests();
        let after: Vec<_> = requests.iter().filter(|r| r.at > swapped).collect();
        if let Some(first) = after.first() {
            assert_eq!(
                first.signed_with.as_deref(),
                Some(sha256(&world.cert_b).as_slice()),
                "the next assertion was not signed with the new key"
            );
            assert!(first.outcome.is_ok());
            break;
        }
        assert!(Instant::now() < deadline, "no refresh after the rotation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(proxy.output().contains("client certificate file changed"));
    assert_eq!(chat(&proxy.url).await.status, StatusCode::OK);
    assert_no_secrets(&proxy.output(), &world.secrets());
}

#[tokio::test]
async fn bad_configurations_stop_the_start_with_one_clear_line() {
    let world = World::new(|_| {}, Duration::from_secs(3600)).await;
    let good = world.write(
        "good.pem",
        &format!("{}{}", world.cert_a, fixture_key_pem("client-a")),
    );
    let mismatch = world.write(
        "mismatch.pem",
        &format!("{}{}", world.cert_a, fixture_key_pem("client-b")),
    );
    let expired_cert =
        self_signed_client_cert(&fixture_key_pem("client-a"), now() - 2 * YEAR, now() - YEAR);
    let expired = world.write(
        "expired.pem",
        &format!("{expired_cert}{}", fixture_key_pem("client-a")),
    );
    let garbage = world.write("garbage.pem", "not a certificate\n");
    let no_key = world.write("nokey.pem", &world.cert_a);
    let encrypted = world.write(
        "enc.pem",
        &format!(
            "{}-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
            world.cert_a
        ),
    );
    let crt_only = world.write("tls.crt", &world.cert_a);
    let p12 = fixtures_dir().join("keys/client-a.p12");
    let empty = world.write("empty-token", "");
    let ca = world.ca.root_pem_path();

    let cert = |path: &Path| -> Vec<(String, String)> {
        world.env(&[("AZURE_CERTIFICATE_PATH", path.to_str().unwrap())])
    };
    let cases: Vec<(Vec<(String, String)>, &str)> = vec![
        (
            cert(Path::new("/nonexistent/cert.pem")),
            "AZURE_CERTIFICATE_PATH: /nonexistent/cert.pem: cannot read the file",
        ),
        (cert(&garbage), "neither a PEM file"),
        (cert(&no_key), "holds no private key"),
        (
            world.env(&[
                ("AZURE_CERTIFICATE_PATH", crt_only.to_str().unwrap()),
                ("AOAI_PROXY_CERTIFICATE_KEY_PATH", "/nonexistent/tls.key"),
            ]),
            "AOAI_PROXY_CERTIFICATE_KEY_PATH: /nonexistent/tls.key: cannot read the file",
        ),
        (cert(&encrypted), "encrypted PEM private key"),
        (cert(&mismatch), "matches none of its certificates"),
        (cert(&expired), "expired at"),
        (
            world.env(&[
                ("AZURE_CLIENT_CERTIFICATE_PATH", p12.to_str().unwrap()),
                ("AZURE_CLIENT_CERTIFICATE_PASSWORD", "wrong"),
            ]),
            "not a readable PKCS#12 file (wrong password?)",
        ),
        (
            world.env(&[("AZURE_FEDERATED_TOKEN_FILE", "/nonexistent/token")]),
            "AZURE_FEDERATED_TOKEN_FILE: /nonexistent/token",
        ),
        (
            world.env(&[("AZURE_FEDERATED_TOKEN_FILE", empty.to_str().unwrap())]),
            "the file is empty",
        ),
        (
            world.env(&[("AOAI_PROXY_CLIENT_SECRET_FILE", "/nonexistent/secret")]),
            "AOAI_PROXY_CLIENT_SECRET_FILE",
        ),
        (
            world.env(&[
                ("AZURE_CERTIFICATE_PATH", good.to_str().unwrap()),
                ("AZURE_CLIENT_SECRET", SECRET),
            ]),
            "AOAI_PROXY_CREDENTIAL: several credentials are configured",
        ),
        (
            world.env(&[("AZURE_CLIENT_SECRET", SECRET), ("PORT", "eighty")]),
            "PORT: \"eighty\" is not a port number",
        ),
        (
            world.env(&[
                ("AZURE_CLIENT_SECRET", SECRET),
                ("AZURE_CLIENT_ID", "not-a-guid"),
            ]),
            "AZURE_CLIENT_ID",
        ),
        (
            vec![
                ("AZURE_CLIENT_SECRET".into(), SECRET.into()),
                ("AZURE_TENANT_ID".into(), TENANT.into()),
                ("AZURE_CLIENT_ID".into(), CLIENT.into()),
            ],
            "API_BASE_URL: is required",
        ),
        (
            world.env(&[
                ("AZURE_CLIENT_SECRET", SECRET),
                ("SSL_CERT_FILE", "/nonexistent/ca.pem"),
            ]),
            "SSL_CERT_FILE: cannot read /nonexistent/ca.pem",
        ),
        (
            world.env(&[
                ("AZURE_CLIENT_SECRET", SECRET),
                ("AOAI_PROXY_LOG_LEVEL", "verbose=maybe"),
            ]),
            "AOAI_PROXY_LOG_LEVEL",
        ),
    ];
    let _ = ca;
    for (env, expected) in cases {
        let (status, output) = run_to_exit(&vars(&env), Duration::from_secs(10));
        assert!(!status.success(), "{expected}: exited successfully");
        let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "{expected}: expected one line, got:\n{output}"
        );
        assert!(
            lines[0].contains(expected),
            "expected {expected:?} in {:?}",
            lines[0]
        );
        assert_no_secrets(&output, &world.secrets());
    }
}

/// One CPU available (a CPU limit below 2 cores, or `taskset`): the proxy runs on one thread;
/// otherwise one worker per CPU. The serving line says which, the process has exactly those
/// threads, and both serve.
#[tokio::test]
async fn runs_one_worker_thread_per_available_cpu() {
    let world = World::new(
        |app| app.secret = Some(SECRET.into()),
        Duration::from_secs(3600),
    )
    .await;
    let env = world.env(&[("AZURE_CLIENT_SECRET", SECRET)]);
    // The first CPU this test may run on: `taskset -c` must name an allowed one.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    let first_cpu: String = allowed
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let cpus = std::thread::available_parallelism().unwrap().get();
    for (cpu_list, expected) in [(Some(first_cpu.as_str()), 1), (None, cpus)] {
        let mut proxy = ProxyProcess::spawn_on(cpu_list, &vars(&env));
        proxy.wait_healthy(Duration::from_secs(15)).await;
        let answer = chat(&proxy.url).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", proxy.output());
        let line = format!(" worker_threads={expected}\n");
        // One thread runs everything, or the main thread blocks while the workers serve.
        let threads = if expected == 1 { 1 } else { 1 + expected };
        assert_eq!(proxy.threads(), threads, "{cpu_list:?}: threads");
        assert!(
            proxy.output().contains(&line),
            "{cpu_list:?}: expected {line:?} in\n{}",
            proxy.output()
        );
    }
}

/// `aoai-proxy wait-ready`, the regular sidecar's postStart hook: exit 0 once the proxy holds a
/// token, exit 1 when nothing answers within the timeout.
#[tokio::test]
async fn wait_ready_exits_once_the_proxy_holds_a_token() {
    let wait_ready = |admin_port: &str, timeout: &str| {
        let admin_port = admin_port.to_string();
        let timeout = timeout.to_string();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_aoai-proxy"))
                .args(["wait-ready", "--timeout", &timeout])
                .env_clear()
                .env("AOAI_PROXY_ADMIN_PORT", admin_port)
                .output()
                .unwrap()
        })
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = wait_ready(&closed.to_string(), "500ms").await.unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("did not answer 200"));

    let world = World::new(|_| {}, Duration::from_secs(3600)).await;
    world
        .entra
        .update_app(|app| app.certificates = vec![der(&world.cert_a)]);
    let pem = world.write(
        "a.pem",
        &format!("{}{}", world.cert_a, fixture_key_pem("client-a")),
    );
    let mut proxy = ProxyProcess::spawn(&vars(
        &world.env(&[("AZURE_CERTIFICATE_PATH", pem.to_str().unwrap())]),
    ));
    let admin_port = proxy.admin_url.rsplit(':').next().unwrap().to_string();
    let ready = wait_ready(&admin_port, "15s");
    proxy.wait_healthy(Duration::from_secs(15)).await;
    assert!(ready.await.unwrap().status.success(), "{}", proxy.output());
}

/// Token endpoint faults (5xx, a hang, malformed JSON, `expires_in: 0`): while the cached token is
/// valid every request succeeds, the refresher backs off and logs Azure's failure, and a new token
/// comes as soon as the endpoint answers properly again.
#[tokio::test]
async fn token_endpoint_faults_never_fail_a_request_while_the_token_is_valid() {
    use aoai_e2e::entra::Fault;
    for fault in [
        Fault::Status(500),
        Fault::Hang,
        Fault::MalformedJson,
        Fault::ExpiresInZero,
    ] {
        let world = World::new(
            |app| app.secret = Some(SECRET.into()),
            Duration::from_secs(8),
        )
        .await;
        let mut proxy = ProxyProcess::spawn(&vars(&world.env(&[
            ("AZURE_CLIENT_SECRET", SECRET),
            ("AOAI_PROXY_IDENTITY_TIMEOUT", "1s"),
        ])));
        proxy.wait_healthy(Duration::from_secs(15)).await;
        world.entra.set_fault(fault.clone());
        // The refresh is due after 4 s of the 8 s lifetime; keep calling through the failures.
        let started = std::time::Instant::now();
        let mut answered = 0;
        while started.elapsed() < Duration::from_millis(6500) {
            let answer = chat(&proxy.url).await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{fault:?}: {}\n{}",
                answer.text(),
                proxy.output()
            );
            answered += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let output = proxy.output();
        assert!(
            output.contains("token acquisition failed"),
            "{fault:?}: no failure logged:\n{output}"
        );
        assert!(
            output.contains("serving_with_cached_token=true"),
            "{fault:?}:\n{output}"
        );
        // Retries 1 s, 2 s ... apart (with jitter), not in a loop.
        let attempts = output.matches("token acquisition failed").count();
        assert!(
            (1..=4).contains(&attempts),
            "{fault:?}: {attempts} failed attempts in 2.5 s: no backoff?"
        );

        world.entra.set_fault(Fault::None);
        proxy
            .wait_for_output("identity endpoint answered again", Duration::from_secs(10))
            .await;
        assert_eq!(chat(&proxy.url).await.status, StatusCode::OK);
        assert!(answered > 30);
        assert_eq!(
            world.upstream.invalid_tokens(),
            0,
            "{fault:?}: an expired token reached the upstream"
        );
        assert_no_secrets(&proxy.output(), &world.secrets());
    }
}
