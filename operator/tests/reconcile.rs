//! Reconcile against a mocked API server (tower-test): the requests the controller makes, in
//! order, and the status it applies.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

mod common;

use aoai_e2e::ca::{fixture_key_pem, self_signed_client_cert};
use aoai_operator::annotations;
use aoai_operator::controller::{self, Context, Error, SecretNamespaces};
use aoai_operator::crd::{AzureOpenAIProxy, config_hash};
use aoai_operator::metrics::Metrics;
use aoai_operator::status::Options;
use common::{ApiHandle, api_server, expect_no_request, next, respond, status};
use http::Method;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::{Value, json};

const PROXY_PATH: &str = "/apis/aoai-proxy.io/v1alpha1/namespaces/ns/azureopenaiproxies/p";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";
const IMAGE: &str = "aoai-proxy:test";

fn store<K>(objects: Vec<K>) -> Store<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    // The store stays readable after its writer is gone.
    store
}

fn context(client: Client, pods: Vec<Pod>) -> Arc<Context> {
    context_reading(client, SecretNamespaces::All, pods)
}

fn context_reading(
    client: Client,
    secret_namespaces: SecretNamespaces,
    pods: Vec<Pod>,
) -> Arc<Context> {
    Arc::new(Context::new(
        client,
        secret_namespaces,
        store(pods),
        Arc::new(Metrics::new()),
        Options {
            default_image: IMAGE.into(),
            expiry_window: Duration::from_secs(30 * 86_400),
        },
        Arc::new(AtomicBool::new(true)),
    ))
}

fn proxy(spec: Value) -> AzureOpenAIProxy {
    serde_json::from_value(json!({
        "apiVersion": "aoai-proxy.io/v1alpha1",
        "kind": "AzureOpenAIProxy",
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "generation": 2},
        "spec": spec,
    }))
    .unwrap()
}

fn certificate_spec() -> Value {
    json!({
        "endpoint": "https://r.openai.azure.com",
        "tenantId": "contoso.onmicrosoft.com",
        "clientId": "11111111-2222-3333-4444-555555555555",
        "credential": {"clientCertificate": {"secretName": "cert"}},
    })
}

fn tls_secret() -> Secret {
    let key = fixture_key_pem("client-a");
    let now = Timestamp::now().as_second();
    let cert = self_signed_client_cert(&key, now - 3600, now + 90 * 86_400);
    serde_json::from_value(json!({
        "metadata": {"name": "cert", "namespace": "ns"},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64(&cert),
            "tls.key": base64(&key),
        }
    }))
    .unwrap()
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Expects the GET of Secret `name` in namespace ns and answers `secret` (404 when `None`).
async fn expect_secret_get(handle: &mut ApiHandle, name: &str, secret: Option<Secret>) {
    let (parts, _, send) = next(handle).await;
    assert_eq!(
        (parts.method.clone(), parts.uri.path()),
        (
            Method::GET,
            format!("/api/v1/namespaces/ns/secrets/{name}").as_str()
        )
    );
    match secret {
        Some(secret) => respond(send, 200, &serde_json::to_value(secret).unwrap()),
        None => respond(send, 404, &status(404, "NotFound")),
    }
}

/// Expects the status apply; answers with the object carrying that status. Returns the status.
async fn expect_status_apply(handle: &mut ApiHandle, spec: &Value) -> Value {
    let (parts, body, send) = next(handle).await;
    assert_eq!(parts.method, Method::PATCH);
    assert_eq!(parts.uri.path(), format!("{PROXY_PATH}/status"));
    let query = parts.uri.query().unwrap_or_default();
    assert!(query.contains("fieldManager=aoai-operator"), "{query}");
    assert!(query.contains("force=true"), "{query}");
    assert_eq!(
        parts.headers[http::header::CONTENT_TYPE],
        "application/apply-patch+yaml"
    );
    assert_eq!(body["kind"], "AzureOpenAIProxy");
    let status = body["status"].clone();
    let mut object = serde_json::to_value(proxy(spec.clone())).unwrap();
    object["status"] = status.clone();
    respond(send, 200, &object);
    status
}

/// Expects one Event with `reason`; returns its note.
async fn expect_event(handle: &mut ApiHandle, reason: &str, type_: &str) -> String {
    let (parts, body, send) = next(handle).await;
    assert_eq!(
        (parts.method.clone(), parts.uri.path()),
        (Method::POST, EVENTS_PATH)
    );
    assert_eq!(body["reason"], reason, "{body}");
    assert_eq!(body["type"], type_);
    assert_eq!(body["regarding"]["name"], "p");
    assert_eq!(body["reportingController"], "aoai-operator");
    respond(send, 201, &body);
    body["note"].as_str().unwrap_or_default().to_string()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} in {status}"))
}

#[tokio::test]
async fn a_valid_certificate_gets_ready_status_and_one_event_then_no_more_writes() {
    let (client, mut handle) = api_server();
    let ctx = context(client, vec![]);
    let spec = certificate_spec();

    let run = tokio::spawn(controller::reconcile(
        Arc::new(proxy(spec.clone())),
        ctx.clone(),
    ));
    // One Secret for both reconciles: each call of tls_secret() signs a new certificate.
    let secret = tls_secret();
    expect_secret_get(&mut handle, "cert", Some(secret.clone())).await;
    let status = expect_status_apply(&mut handle, &spec).await;
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(
        condition(&status, "CredentialsValid")["reason"],
        "CertificateValid"
    );
    assert_eq!(condition(&status, "CertificateExpiring")["status"], "False");
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(status["credential"], "ClientCertificate");
    assert!(
        status["certificateNotAfter"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(status["injectedPods"], 0);
    let key_line = fixture_key_pem("client-a")
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    assert!(!status.to_string().contains(&key_line) && !status.to_string().contains("BEGIN"));
    let note = expect_event(&mut handle, "Ready", "Normal").await;
    assert!(note.contains("valid"), "{note}");
    let action = run.await.unwrap().expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(aoai_operator::status::RESYNC));
    expect_no_request(&mut handle).await;

    // The next reconcile reads the Secret again and sees its own status: nothing to write,
    // nothing to announce.
    let mut applied = proxy(spec);
    applied.status = Some(serde_json::from_value(status).unwrap());
    let run = tokio::spawn(controller::reconcile(Arc::new(applied), ctx));
    expect_secret_get(&mut handle, "cert", Some(secret)).await;
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the second reconcile writes nothing more")
        .unwrap()
        .unwrap();
    expect_no_request(&mut handle).await;
}

#[tokio::test]
async fn a_missing_secret_is_credentials_invalid_with_a_warning() {
    let (client, mut handle) = api_server();
    let ctx = context(client, vec![]);
    let spec = certificate_spec();
    let run = tokio::spawn(controller::reconcile(Arc::new(proxy(spec.clone())), ctx));
    expect_secret_get(&mut handle, "cert", None).await;
    let status = expect_status_apply(&mut handle, &spec).await;
    let invalid = condition(&status, "CredentialsValid");
    assert_eq!(invalid["status"], "False");
    assert_eq!(invalid["reason"], "SecretNotFound");
    assert_eq!(condition(&status, "Ready")["status"], "False");
    let note = expect_event(&mut handle, "CredentialInvalid", "Warning").await;
    assert_eq!(note, "Secret cert does not exist in this namespace");
    run.await.unwrap().unwrap();
}

fn pod(name: &str, hash: &str, owner_kind: &str, owner: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": "ns",
            "labels": {annotations::PROXY_LABEL: "p"},
            "annotations": {annotations::CONFIG_HASH: hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind, "name": owner,
                                 "uid": "o", "controller": true}],
        },
        "status": {"phase": "Running"},
    }))
    .unwrap()
}

#[tokio::test]
async fn rollout_restart_restarts_each_stale_workload_once() {
    let (client, mut handle) = api_server();
    let spec = json!({
        "endpoint": "https://r.openai.azure.com",
        "credential": {"managedIdentity": {}},
        "rollout": "Restart",
    });
    let current = config_hash(&proxy(spec.clone()).spec, IMAGE);
    let pods = vec![
        pod("web-1", "old", "ReplicaSet", "web-5d"),
        pod("web-2", "old", "ReplicaSet", "web-5d"),
        pod("db-0", "old", "StatefulSet", "db"),
        pod("api-1", &current, "ReplicaSet", "api-7f"),
        // A pod of another AzureOpenAIProxy is none of this one's business.
        {
            let mut other = pod("x-1", "old", "DaemonSet", "x");
            other.metadata.labels =
                Some([(annotations::PROXY_LABEL.to_string(), "q".to_string())].into());
            other
        },
    ];
    let ctx = context(client, pods);
    // First the new hash is published in the status (pods the admission policy injects copy it
    // from there); nothing is restarted yet, and the reconcile comes back soon.
    let run = tokio::spawn(controller::reconcile(
        Arc::new(proxy(spec.clone())),
        ctx.clone(),
    ));
    let published = expect_status_apply(&mut handle, &spec).await;
    assert_eq!(published["configHash"], current.as_str());
    assert!(published["rolledOutHash"].is_null(), "{published}");
    expect_event(&mut handle, "Ready", "Normal").await;
    assert_eq!(
        run.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(2))
    );

    // Then each stale workload is restarted, once.
    let mut stored = proxy(spec.clone());
    stored.status = Some(serde_json::from_value(published).unwrap());
    let run = tokio::spawn(controller::reconcile(Arc::new(stored), ctx.clone()));
    let (parts, _, send) = next(&mut handle).await;
    assert_eq!(
        (parts.method.clone(), parts.uri.path()),
        (
            Method::GET,
            "/apis/apps/v1/namespaces/ns/replicasets/web-5d"
        )
    );
    respond(
        send,
        200,
        &json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-5d", "namespace": "ns", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d", "controller": true}]},
        }),
    );
    for (kind, path) in [
        ("Deployment", "/apis/apps/v1/namespaces/ns/deployments/web"),
        ("StatefulSet", "/apis/apps/v1/namespaces/ns/statefulsets/db"),
    ] {
        let (parts, body, send) = next(&mut handle).await;
        assert_eq!(
            (parts.method.clone(), parts.uri.path()),
            (Method::PATCH, path)
        );
        assert_eq!(
            parts.headers[http::header::CONTENT_TYPE],
            "application/merge-patch+json"
        );
        let restarted_at =
            &body["spec"]["template"]["metadata"]["annotations"][annotations::RESTARTED_AT];
        assert!(restarted_at.as_str().unwrap().ends_with('Z'), "{body}");
        respond(
            send,
            200,
            &json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "x"}}),
        );
    }
    let status = expect_status_apply(&mut handle, &spec).await;
    assert_eq!(status["rolledOutHash"], current.as_str());
    assert_eq!(status["configHash"], current.as_str());
    assert_eq!(
        (
            status["injectedPods"].as_i64(),
            status["currentPods"].as_i64()
        ),
        (Some(4), Some(1))
    );
    let note = expect_event(&mut handle, "RolloutRestarted", "Normal").await;
    assert_eq!(
        note,
        format!("restarted deployment/web, statefulset/db to pick up configuration {current}")
    );
    run.await.unwrap().unwrap();

    // Once per change: with the rollout recorded, the same stale pods restart nothing.
    let mut applied = proxy(spec);
    applied.status = Some(serde_json::from_value(status).unwrap());
    controller::reconcile(Arc::new(applied), ctx).await.unwrap();
    expect_no_request(&mut handle).await;
}

#[tokio::test]
async fn a_failed_status_apply_is_an_error_retried_with_backoff() {
    let (client, mut handle) = api_server();
    let ctx = context(client, vec![]);
    let spec = json!({"endpoint": "https://r", "credential": {"managedIdentity": {}}});
    let object = Arc::new(proxy(spec));
    let run = tokio::spawn(controller::reconcile(object.clone(), ctx.clone()));
    let (parts, _, send) = next(&mut handle).await;
    assert_eq!(parts.uri.path(), format!("{PROXY_PATH}/status"));
    respond(
        send,
        500,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "message": "etcd is sad", "reason": "InternalError", "code": 500}),
    );
    let error = run.await.unwrap().expect_err("the apply failed");
    assert!(matches!(error, Error::StatusApply(_)));
    assert_eq!(error.reason(), "status_apply");
    assert_eq!(
        controller::error_policy(object.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        controller::error_policy(object.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    assert!(
        ctx.metrics
            .encode()
            .contains("aoai_operator_reconcile_errors_total{reason=\"status_apply\"} 2")
    );
}

#[tokio::test]
async fn secrets_the_operator_may_not_read_are_reported_not_retried() {
    // A namespace outside --secret-namespaces: not even asked for.
    let (client, mut handle) = api_server();
    let ctx = context_reading(client, SecretNamespaces::Only(vec!["other".into()]), vec![]);
    let spec = certificate_spec();
    let run = tokio::spawn(controller::reconcile(Arc::new(proxy(spec.clone())), ctx));
    let reported = expect_status_apply(&mut handle, &spec).await;
    assert_eq!(
        condition(&reported, "CredentialsValid")["reason"],
        "SecretUnreadable"
    );
    expect_event(&mut handle, "CredentialInvalid", "Warning").await;
    run.await.unwrap().unwrap();

    // RBAC that forbids it: the same status, no error loop.
    let (client, mut handle) = api_server();
    let ctx = context(client, vec![]);
    let run = tokio::spawn(controller::reconcile(Arc::new(proxy(spec.clone())), ctx));
    let (_, _, send) = next(&mut handle).await;
    respond(send, 403, &status(403, "Forbidden"));
    let reported = expect_status_apply(&mut handle, &spec).await;
    assert_eq!(
        condition(&reported, "CredentialsValid")["reason"],
        "SecretUnreadable"
    );
    expect_event(&mut handle, "CredentialInvalid", "Warning").await;
    run.await.unwrap().unwrap();

    // Any other failure is retried with backoff, and changes no status.
    let (client, mut handle) = api_server();
    let ctx = context(client, vec![]);
    let run = tokio::spawn(controller::reconcile(Arc::new(proxy(spec)), ctx));
    let (_, _, send) = next(&mut handle).await;
    respond(send, 500, &status(500, "InternalError"));
    let error = run.await.unwrap().expect_err("a failed read is an error");
    assert_eq!(error.reason(), "secret_read");
    expect_no_request(&mut handle).await;
}
