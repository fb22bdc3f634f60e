//! Replicas of `aoai-operator run` side by side on a real control plane (skipped unless
//! `KUBEBUILDER_ASSETS` is set), each started as the chart's Deployment starts it: only the Lease
//! holder reconciles; when it is killed the standby takes over within the lease duration and
//! reconciles the next change; SIGTERM ends leader and standby within their grace period and the
//! leader releases the Lease; a replica restarted under the same pod name reconciles at once.

use std::time::{Duration, Instant};

use aoai_e2e::control_plane::ControlPlane;
use aoai_e2e::operator::{OperatorProcess, install_chart};
use aoai_e2e::wait;
use aoai_operator::crd::AzureOpenAIProxy;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

const OPERATOR: &str = env!("CARGO_BIN_EXE_aoai-e2e-operator");
const NS: &str = "team-b";
const RELEASE: &str = "aoai-proxy-operator";
const OPERATOR_NS: &str = "aoai-system";
/// Shorter than the chart's 15 s so that a takeover is quick to wait for.
const LEASE: Duration = Duration::from_secs(4);
/// SIGTERM must end a replica well within Kubernetes' default 30 s grace period.
const GRACE: Duration = Duration::from_secs(15);

fn proxy(log_level: &str) -> Value {
    json!({
        "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
        "metadata": {"name": "p", "namespace": NS},
        "spec": {"endpoint": "https://r.openai.azure.com", "credential": {"managedIdentity": {}},
                 "sidecar": {"logLevel": log_level}},
    })
}

/// Applies `log_level` and waits until some replica has written the status for that generation.
async fn change_and_wait(
    proxies: &Api<AzureOpenAIProxy>,
    log_level: &str,
    who: &[&OperatorProcess],
) {
    let applied = proxies
        .patch(
            "p",
            &PatchParams::apply("aoai-e2e").force(),
            &Patch::Apply(proxy(log_level)),
        )
        .await
        .unwrap();
    let generation = applied.metadata.generation;
    let what = format!("the status of generation {generation:?} (sidecar.logLevel {log_level})");
    wait::until(&what, Duration::from_secs(10), || async {
        let object = proxies.get("p").await.map_err(|e| e.to_string())?;
        let observed = object.status.as_ref().and_then(|s| s.observed_generation);
        if observed == generation {
            Ok(())
        } else {
            let logs: Vec<String> = who
                .iter()
                .map(|o| format!("{}:\n{}", o.identity, o.output()))
                .collect();
            Err(format!(
                "observedGeneration {observed:?}; {}",
                logs.join("\n")
            ))
        }
    })
    .await;
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(RELEASE)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

#[tokio::test]
async fn one_replica_leads_a_killed_leader_is_replaced_and_sigterm_releases_the_lease() {
    let test = "one_replica_leads_a_killed_leader_is_replaced_and_sigterm_releases_the_lease";
    let Some(plane) = ControlPlane::start(test).await else {
        return;
    };
    let client = plane.client();
    let chart = install_chart(&plane, RELEASE, OPERATOR_NS, json!({})).await;
    // As on a first install where the webhook configuration is not there yet: the operator
    // must reconcile regardless.
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    configurations
        .delete(RELEASE, &DeleteParams::default())
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            NS,
            &PatchParams::apply("aoai-e2e"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
            ),
        )
        .await
        .unwrap();
    let proxies: Api<AzureOpenAIProxy> = Api::namespaced(client.clone(), NS);
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    proxies
        .patch(
            "p",
            &PatchParams::apply("aoai-e2e").force(),
            &Patch::Apply(proxy("info")),
        )
        .await
        .unwrap();

    let lease = format!("{}s", LEASE.as_secs());
    let overrides = [("AOAI_OPERATOR_LEASE_DURATION", lease.as_str())];
    let mut a = OperatorProcess::start(OPERATOR, &chart, "replica-a", false, &overrides);
    change_and_wait(&proxies, "info", &[&a]).await;
    assert_eq!(holder(&leases).await.as_deref(), Some("replica-a"));
    let mut b = OperatorProcess::start(OPERATOR, &chart, "replica-b", false, &overrides);
    b.wait_ready(Duration::from_secs(30)).await;

    // Only the leader reconciles.
    change_and_wait(&proxies, "debug", &[&a, &b]).await;
    assert_eq!(a.metric("aoai_operator_leader").await, Some(1.0));
    assert_eq!(b.metric("aoai_operator_leader").await, Some(0.0));
    assert!(a.metric("aoai_operator_reconciles_total").await > Some(0.0));
    assert_eq!(
        b.metric("aoai_operator_reconciles_total").await,
        Some(0.0),
        "the standby reconciled"
    );

    // The leader dies without a word: the standby takes the Lease once it expires.
    a.kill();
    let killed = Instant::now();
    wait::until("replica-b takes the Lease", LEASE * 3, || async {
        match holder(&leases).await {
            Some(h) if h == "replica-b" => Ok(()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    let takeover = killed.elapsed();
    assert!(
        takeover <= LEASE + LEASE / 3 + Duration::from_secs(2),
        "takeover after {takeover:?}"
    );
    change_and_wait(&proxies, "warn", &[&b]).await;
    assert_eq!(b.metric("aoai_operator_leader").await, Some(1.0));

    // A standby ends at once on SIGTERM and leaves the Lease to the leader.
    let mut c = OperatorProcess::start(OPERATOR, &chart, "replica-c", false, &overrides);
    c.wait_ready(Duration::from_secs(30)).await;
    let exit = c.terminate(GRACE);
    assert!(exit.success(), "{exit}:\n{}", c.output());
    assert_eq!(holder(&leases).await.as_deref(), Some("replica-b"));

    // SIGTERM on the leader: it exits in time and releases the Lease; restarted under the same
    // pod name (a rollout, a node drain), it leads and reconciles the next change at once. Several
    // times over: this once failed in half the runs.
    for (round, level) in ["error", "info", "debug"].into_iter().enumerate() {
        let stopped = Instant::now();
        let exit = b.terminate(GRACE);
        assert!(exit.success(), "round {round}: {exit}:\n{}", b.output());
        assert!(
            b.output().contains("released the lease"),
            "round {round}:\n{}",
            b.output()
        );
        assert_eq!(
            holder(&leases).await,
            None,
            "round {round}: the Lease is released"
        );
        assert!(stopped.elapsed() < GRACE);
        b = OperatorProcess::start(OPERATOR, &chart, "replica-b", false, &overrides);
        change_and_wait(&proxies, level, &[&b]).await;
    }
    let exit = b.terminate(GRACE);
    assert!(exit.success(), "{exit}:\n{}", b.output());
}
