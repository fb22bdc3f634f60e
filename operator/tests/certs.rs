//! The webhook's self-managed certificate: issuing, rotation decisions, a real TLS handshake with
//! what was issued, and the leader's writes against a mocked API server (Secret, caBundle).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

mod common;

use aoai_operator::certs::{
    self, CA_CERT, CA_KEY, SelfManaged, ServingCert, TLS_CERT, TLS_KEY, plan,
};
use base64::Engine;
use common::{api_server, next, respond};
use http::Method;
use k8s_openapi::ByteString;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::net::TcpStream;

const DAY: i64 = 86_400;
const NOW: i64 = 1_800_000_000;

fn config() -> SelfManaged {
    SelfManaged {
        namespace: "aoai-system".into(),
        secret_name: "aoai-operator-webhook-tls".into(),
        service_name: "aoai-operator-webhook".into(),
        webhook_configuration: "aoai-operator".into(),
        extra_names: vec!["127.0.0.1".into()],
    }
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> String {
    String::from_utf8(data[key].0.clone()).unwrap()
}

fn not_after(pem: &str) -> i64 {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.validity().not_after.timestamp()
}

/// A TLS handshake to a server presenting `serving`, by a client that trusts only `bundle` and
/// asks for `server_name`: the leaf certificate the server presented, or the handshake's error.
async fn presented_to(
    serving: Arc<ServingCert>,
    bundle: &str,
    server_name: &str,
) -> Result<Vec<u8>, String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(certs::server_config(serving));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(stream).await;
    });
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let client = aoai_e2e::ca::client_config(roots);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(server_name.to_string().try_into().unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tls
        .get_ref()
        .1
        .peer_certificates()
        .ok_or("no certificate")?[0]
        .to_vec())
}

/// The handshake with a server presenting the issued certificate in `data`.
async fn handshake(
    data: &BTreeMap<String, ByteString>,
    bundle: &str,
    server_name: &str,
) -> Result<(), String> {
    let serving = Arc::new(ServingCert::default());
    serving.set(&text(data, TLS_CERT), &text(data, TLS_KEY))?;
    presented_to(serving, bundle, server_name).await.map(|_| ())
}

#[tokio::test]
async fn a_fresh_issue_is_trusted_through_the_ca_bundle_for_the_service_names() {
    let names = config().dns_names();
    let data = plan(None, &names, NOW).expect("nothing there: issue");
    for key in [CA_CERT, CA_KEY, TLS_CERT, TLS_KEY] {
        assert!(data.contains_key(key), "{key}");
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let data = plan(None, &names, now).unwrap();
    let bundle = text(&data, CA_CERT);
    handshake(&data, &bundle, "aoai-operator-webhook.aoai-system.svc")
        .await
        .unwrap();
    handshake(&data, &bundle, "127.0.0.1").await.unwrap();
    let wrong = handshake(&data, &bundle, "elsewhere.example")
        .await
        .unwrap_err();
    assert!(wrong.contains("not valid for name"), "{wrong}");
    let other_ca = plan(None, &names, now).unwrap();
    assert!(
        handshake(
            &data,
            &text(&other_ca, CA_CERT),
            "aoai-operator-webhook.aoai-system.svc"
        )
        .await
        .is_err()
    );
}

#[test]
fn good_material_is_kept_and_the_serving_certificate_rotates_30_days_before_expiry() {
    let names = config().dns_names();
    let data = plan(None, &names, NOW).unwrap();
    assert_eq!(plan(Some(&data), &names, NOW + 300 * DAY), None);
    let serving_expiry = not_after(&text(&data, TLS_CERT));
    assert_eq!(serving_expiry, NOW + 365 * DAY);

    let rotated = plan(Some(&data), &names, serving_expiry - 29 * DAY).expect("rotate");
    assert_eq!(rotated[CA_KEY], data[CA_KEY], "the CA stays");
    assert_eq!(rotated[CA_CERT], data[CA_CERT]);
    assert_ne!(rotated[TLS_CERT], data[TLS_CERT]);
    assert!(not_after(&text(&rotated, TLS_CERT)) > serving_expiry);

    // A new Service name needs a certificate that names it.
    let mut renamed = names.clone();
    renamed.push("other.aoai-system.svc".into());
    assert!(plan(Some(&data), &renamed, NOW + DAY).is_some());
}

#[test]
fn a_ca_near_expiry_is_replaced_and_the_old_one_stays_in_the_bundle_until_it_expires() {
    let names = config().dns_names();
    let data = plan(None, &names, NOW).unwrap();
    let ca_expiry = not_after(&text(&data, CA_CERT));
    let later = ca_expiry - 300 * DAY;
    let rotated = plan(Some(&data), &names, later).expect("new CA");
    assert_ne!(rotated[CA_KEY], data[CA_KEY]);
    let bundle = text(&rotated, CA_CERT);
    assert_eq!(
        bundle.matches("BEGIN CERTIFICATE").count(),
        2,
        "new CA first, old CA kept"
    );
    assert!(bundle.ends_with(&text(&data, CA_CERT)));
    // Once the old CA has expired it leaves the bundle.
    let after_expiry = plan(Some(&rotated), &names, ca_expiry + DAY);
    let bundle = after_expiry.map(|d| text(&d, CA_CERT)).unwrap_or(bundle);
    assert!(
        !bundle.contains(text(&data, CA_CERT).trim()),
        "expired CA still bundled"
    );
}

#[test]
fn garbage_in_the_secret_is_replaced() {
    let names = config().dns_names();
    let garbage = BTreeMap::from([
        (CA_CERT.to_string(), ByteString(b"nope".to_vec())),
        (CA_KEY.to_string(), ByteString(b"nope".to_vec())),
    ]);
    assert!(plan(Some(&garbage), &names, NOW).is_some());
}

const SECRET: &str = "/api/v1/namespaces/aoai-system/secrets/aoai-operator-webhook-tls";
const WEBHOOK: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/aoai-operator";

fn webhook_configuration(ca_bundle: Option<&str>) -> Value {
    let client_config = match ca_bundle {
        Some(bundle) => {
            json!({"service": {"name": "aoai-operator-webhook", "namespace": "aoai-system"}, "caBundle": bundle})
        }
        None => json!({"service": {"name": "aoai-operator-webhook", "namespace": "aoai-system"}}),
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "aoai-operator", "resourceVersion": "3"},
        "webhooks": [
            {"name": "pods.aoai-proxy.io", "clientConfig": client_config, "admissionReviewVersions": ["v1"], "sideEffects": "None"},
            {"name": "pods-dry-run.aoai-proxy.io", "clientConfig": client_config, "admissionReviewVersions": ["v1"], "sideEffects": "None"},
        ],
    })
}

#[tokio::test]
async fn the_leader_creates_the_secret_then_patches_every_ca_bundle() {
    let (client, mut handle) = api_server();
    let ensure = tokio::spawn(async move { certs::ensure(&client, &config(), NOW).await });

    let (parts, _, send) = next(&mut handle).await;
    let (method, path) = (parts.method, parts.uri.path().to_string());
    assert_eq!((method, path.as_str()), (Method::GET, SECRET));
    respond(
        send,
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
    );
    let (parts, secret, send) = next(&mut handle).await;
    let (method, path) = (parts.method, parts.uri.path().to_string());
    assert_eq!(
        (method, path.as_str()),
        (Method::POST, "/api/v1/namespaces/aoai-system/secrets")
    );
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["metadata"]["name"], "aoai-operator-webhook-tls");
    for key in [CA_CERT, CA_KEY, TLS_CERT, TLS_KEY] {
        assert!(secret["data"][key].is_string(), "{key}");
    }
    let ca_bundle = secret["data"][CA_CERT].as_str().unwrap().to_string();
    respond(send, 201, &secret);

    let (parts, _, send) = next(&mut handle).await;
    let (method, path) = (parts.method, parts.uri.path().to_string());
    assert_eq!((method, path.as_str()), (Method::GET, WEBHOOK));
    respond(send, 200, &webhook_configuration(None));
    let (parts, patch, send) = next(&mut handle).await;
    let (method, path) = (parts.method, parts.uri.path().to_string());
    assert_eq!((method, path.as_str()), (Method::PATCH, WEBHOOK));
    assert_eq!(
        patch,
        json!([
            {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": ca_bundle},
            {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": ca_bundle},
        ])
    );
    respond(send, 200, &webhook_configuration(Some(&ca_bundle)));
    let data = ensure.await.unwrap().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&ca_bundle)
        .unwrap();
    assert_eq!(data[CA_CERT].0, decoded);
}

#[tokio::test]
async fn current_material_makes_no_write_and_a_stale_one_is_replaced_with_its_version() {
    let names = config().dns_names();
    let data = plan(None, &names, NOW).unwrap();
    let encoded: BTreeMap<&str, String> = data
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                base64::engine::general_purpose::STANDARD.encode(&v.0),
            )
        })
        .collect();
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                        "metadata": {"name": "aoai-operator-webhook-tls", "namespace": "aoai-system", "resourceVersion": "41"},
                        "data": encoded});
    for (now, rotates) in [(NOW + DAY, false), (NOW + 340 * DAY, true)] {
        let (client, mut handle) = api_server();
        let ensure = tokio::spawn(async move { certs::ensure(&client, &config(), now).await });
        let (parts, _, send) = next(&mut handle).await;
        let path = parts.uri.path().to_string();
        assert_eq!(path, SECRET);
        respond(send, 200, &secret);
        let mut bundle = encoded[CA_CERT].clone();
        if rotates {
            let (parts, replaced, send) = next(&mut handle).await;
            let (method, path) = (parts.method, parts.uri.path().to_string());
            assert_eq!((method, path.as_str()), (Method::PUT, SECRET));
            assert_eq!(replaced["metadata"]["resourceVersion"], "41");
            assert_ne!(replaced["data"][TLS_CERT], secret["data"][TLS_CERT]);
            assert_eq!(replaced["data"][CA_CERT], secret["data"][CA_CERT]);
            bundle = replaced["data"][CA_CERT].as_str().unwrap().to_string();
            respond(send, 200, &replaced);
        }
        let (parts, _, send) = next(&mut handle).await;
        let (method, path) = (parts.method, parts.uri.path().to_string());
        assert_eq!((method, path.as_str()), (Method::GET, WEBHOOK));
        respond(send, 200, &webhook_configuration(Some(&bundle)));
        ensure.await.unwrap().unwrap();
        let more = tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await;
        assert!(
            !matches!(more, Ok(Some(_))),
            "no write when the caBundle is current"
        );
    }
}

async fn presented(serving: Arc<ServingCert>, bundle: &str) -> Option<Vec<u8>> {
    presented_to(serving, bundle, "127.0.0.1").await.ok()
}

#[tokio::test]
async fn certificate_files_are_reloaded_when_they_change_and_a_bad_pair_keeps_the_last_good_one() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let names = config().dns_names();
    let (first, second) = (
        plan(None, &names, now).unwrap(),
        plan(None, &names, now).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let write = |data: &BTreeMap<String, ByteString>| {
        std::fs::write(&crt, &data[TLS_CERT].0).unwrap();
        std::fs::write(&key, &data[TLS_KEY].0).unwrap();
    };
    write(&first);
    let serving = Arc::new(ServingCert::default());
    tokio::spawn(certs::watch_files(
        serving.clone(),
        crt.clone(),
        key.clone(),
        Duration::from_millis(20),
    ));
    let leaf = |data: &BTreeMap<String, ByteString>| {
        CertificateDer::pem_slice_iter(&data[TLS_CERT].0)
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    };
    let until = |wanted: Vec<u8>, bundle: String| {
        let serving = serving.clone();
        async move {
            for _ in 0..100 {
                if serving.is_loaded()
                    && presented(serving.clone(), &bundle).await == Some(wanted.clone())
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("the expected certificate was never served");
        }
    };
    until(leaf(&first), text(&first, CA_CERT)).await;
    write(&second);
    until(leaf(&second), text(&second, CA_CERT)).await;
    // A key that does not match: the last good pair stays.
    std::fs::write(&key, &first[TLS_KEY].0).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        presented(serving.clone(), &text(&second, CA_CERT)).await,
        Some(leaf(&second))
    );
}
