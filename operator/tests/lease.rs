//! Leader election against a mocked API server: create, respect a live holder, take an expired
//! Lease with optimistic concurrency, and lose a race cleanly.

use std::time::Duration;

mod common;

use aoai_operator::lease::{self, LeaseConfig};
use common::{api_server, next, respond, status};
use http::Method;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/aoai-system/leases/aoai-operator";

fn config() -> LeaseConfig {
    LeaseConfig {
        name: "aoai-operator".into(),
        namespace: "aoai-system".into(),
        identity: "replica-a".into(),
        duration: Duration::from_secs(15),
        retry: Duration::from_secs(5),
    }
}

fn held_by(holder: &str, renewed_ago: i64) -> Value {
    let renewed = Timestamp::now() - SignedDuration::from_secs(renewed_ago);
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "aoai-operator", "namespace": "aoai-system", "resourceVersion": "7"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "renewTime": renewed.to_string(), "leaseTransitions": 1},
    })
}

#[tokio::test]
async fn the_first_candidate_creates_the_lease() {
    let (client, mut handle) = api_server();
    let api = lease::api(client, &config());
    let attempt = tokio::spawn(async move { lease::try_acquire(&api, &config()).await });
    let (parts, _, send) = next(&mut handle).await;
    let (method, path) = (parts.method, parts.uri.path().to_string());
    assert_eq!((method, path.as_str()), (Method::GET, LEASE));
    respond(send, 404, &status(404, "NotFound"));
    let (parts, body, send) = next(&mut handle).await;
    let (method, path) = (parts.method, parts.uri.path().to_string());
    assert_eq!(method, Method::POST);
    assert_eq!(
        path,
        "/apis/coordination.k8s.io/v1/namespaces/aoai-system/leases"
    );
    assert_eq!(body["spec"]["holderIdentity"], "replica-a");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    respond(send, 201, &body);
    assert!(attempt.await.unwrap().unwrap());
}

#[tokio::test]
async fn a_live_holder_keeps_the_lease() {
    let (client, mut handle) = api_server();
    let api = lease::api(client, &config());
    let attempt = tokio::spawn(async move { lease::try_acquire(&api, &config()).await });
    let (_, _, send) = next(&mut handle).await;
    respond(send, 200, &held_by("replica-b", 3));
    assert!(!attempt.await.unwrap().unwrap());
}

#[tokio::test]
async fn an_expired_lease_is_taken_with_its_resource_version_and_a_lost_race_is_no_error() {
    for (answer, won) in [(200, true), (409, false)] {
        let (client, mut handle) = api_server();
        let api = lease::api(client, &config());
        let attempt = tokio::spawn(async move { lease::try_acquire(&api, &config()).await });
        let (_, _, send) = next(&mut handle).await;
        respond(send, 200, &held_by("replica-b", 60));
        let (parts, body, send) = next(&mut handle).await;
        let (method, path) = (parts.method, parts.uri.path().to_string());
        assert_eq!((method, path.as_str()), (Method::PUT, LEASE));
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(body["spec"]["holderIdentity"], "replica-a");
        assert_eq!(body["spec"]["leaseTransitions"], 2);
        if answer == 200 {
            respond(send, 200, &body);
        } else {
            respond(send, 409, &status(409, "Conflict"));
        }
        assert_eq!(attempt.await.unwrap().unwrap(), won);
    }
}
