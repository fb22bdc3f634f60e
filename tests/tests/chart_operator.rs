//! The operator as a platform team runs it, on a real control plane with kube-controller-manager
//! (skipped unless `KUBEBUILDER_ASSETS` is set): the Helm chart installed by Helm, `aoai-operator
//! run` authenticated as the chart's ServiceAccount (so the chart's RBAC is what is exercised),
//! a Deployment's and a Job's pods injected through the chart's webhook configuration and counted,
//! `rollout: Restart` producing a new ReplicaSet with the new configuration, a workload-identity
//! pod whose projected token the sidecar exchanges, and, with the operator stopped, pods that did
//! not ask for the sidecar still created while those that did are refused.

use std::collections::HashMap;
use std::time::Duration;

use aoai_e2e::ca::{tls_secret, valid_client_cert};
use aoai_e2e::control_plane::{ControlPlane, SERVICE_ACCOUNT_ISSUER, apply, free_port};
use aoai_e2e::entra::{App, MockEntra};
use aoai_e2e::openai::MockOpenAi;
use aoai_e2e::operator::{OperatorProcess, install_chart};
use aoai_e2e::tokens::TokenLedger;
use aoai_e2e::wait;
use aoai_operator::annotations::{
    CONFIG_HASH, Format, INJECT, PROXY_LABEL, STATUS, STATUS_INJECTED,
};
use aoai_operator::crd::AzureOpenAIProxy;
use aoai_operator::mutate::text::REFUSAL_PREFIX;
use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingWebhookConfiguration, ValidatingAdmissionPolicy,
};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const OPERATOR: &str = env!("CARGO_BIN_EXE_aoai-e2e-operator");
const NS: &str = "team-a";
const RELEASE: &str = "aoai-proxy-operator";
const OPERATOR_NS: &str = "aoai-system";
const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";

fn annotated_template(proxy: &str, restart_policy: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": "chat"}, "annotations": {INJECT: proxy}},
        "spec": {
            "restartPolicy": restart_policy,
            "containers": [{"name": "app", "image": "registry.example/chat:1"}],
        },
    })
}

async fn status_of(proxies: &Api<AzureOpenAIProxy>, name: &str) -> Result<Value, String> {
    let object = proxies.get(name).await.map_err(|e| e.to_string())?;
    Ok(serde_json::to_value(&object.status).unwrap_or_default())
}

fn is_ready(status: &Value) -> bool {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

async fn injected_pods(client: &Client, proxy: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.list(&ListParams::default().labels(&format!("{PROXY_LABEL}={proxy}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn sidecar(pod: &Pod) -> &k8s_openapi::api::core::v1::Container {
    let spec = pod.spec.as_ref().expect("a pod spec");
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == "aoai-proxy")
        .unwrap_or_else(|| panic!("pod {} has no aoai-proxy container", pod.name_any()))
}

/// The names of the cluster's `K`s, sorted.
async fn names<K>(client: &Client) -> Vec<String>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let mut names: Vec<String> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    names.sort();
    names
}

fn config_hash(pod: &Pod) -> Option<&str> {
    pod.annotations().get(CONFIG_HASH).map(String::as_str)
}

/// The application team's namespace, once its default ServiceAccount exists, with the client
/// certificate Secret `openai-client-cert`; its AzureOpenAIProxies.
async fn team_namespace(client: &Client) -> Api<AzureOpenAIProxy> {
    aoai_e2e::control_plane::namespace(client, NS).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    wait::until(
        "the namespace's default ServiceAccount",
        Duration::from_secs(30),
        || async {
            match accounts.get_opt("default").await {
                Ok(Some(_)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let cert = valid_client_cert();
    apply(
        &secrets,
        "openai-client-cert",
        tls_secret("openai-client-cert", NS, &cert, "client-a"),
    )
    .await;
    Api::namespaced(client.clone(), NS)
}

#[tokio::test]
async fn the_chart_installed_operator_injects_counts_rolls_out_and_fails_closed_only_for_opted_in_pods()
 {
    let test = "the_chart_installed_operator_injects_counts_rolls_out_and_fails_closed_only_for_opted_in_pods";
    let Some(plane) = ControlPlane::start_with_controller_manager(test).await else {
        return;
    };
    let client = plane.client();
    // The webhook engine: every admission goes through the operator (the policy's own test is
    // below).
    let chart = install_chart(
        &plane,
        RELEASE,
        OPERATOR_NS,
        json!({"injection": {"engine": "webhook"}}),
    )
    .await;
    assert!(
        names::<MutatingAdmissionPolicy>(&client).await.is_empty()
            && names::<ValidatingAdmissionPolicy>(&client).await.is_empty(),
        "engine webhook installs no admission policy"
    );

    let proxies = team_namespace(&client).await;
    let openai = |log_level: &str| {
        json!({
            "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
            "metadata": {"name": "openai", "namespace": NS},
            "spec": {
                "endpoint": "https://r.openai.azure.com",
                "tenantId": TENANT, "clientId": CLIENT_ID,
                "credential": {"clientCertificate": {"secretName": "openai-client-cert"}},
                "sidecar": {"logLevel": log_level},
                "rollout": "Restart",
            },
        })
    };
    apply(&proxies, "openai", openai("info")).await;

    // The operator, as the chart's Deployment runs it: its ServiceAccount, its environment.
    let mut operator = OperatorProcess::start(OPERATOR, &chart, "aoai-proxy-operator-0", true, &[]);
    operator.wait_ready(Duration::from_secs(60)).await;
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    wait::until(
        "the operator writes its CA into the chart's webhook configuration",
        Duration::from_secs(30),
        || async {
            let configuration = configurations
                .get(RELEASE)
                .await
                .map_err(|e| e.to_string())?;
            let webhook = &configuration.webhooks.unwrap_or_default()[0];
            match &webhook.client_config.ca_bundle {
                Some(bundle) if !bundle.0.is_empty() => Ok(()),
                _ => Err(format!(
                    "caBundle unset; operator output:\n{}",
                    operator.output()
                )),
            }
        },
    )
    .await;
    let status = wait::until("openai is Ready", Duration::from_secs(30), || async {
        let status = status_of(&proxies, "openai").await?;
        if is_ready(&status) {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    })
    .await;
    assert_eq!(status["credential"], "ClientCertificate", "{status:#}");

    // A Deployment and a Job: kube-controller-manager creates their pods through the webhook.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), NS);
    apply(&deployments, "chat", json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "chat", "namespace": NS},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "chat"}}, "template": annotated_template("openai", "Always")},
    }))
    .await;
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), NS);
    apply(
        &jobs,
        "batch",
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "batch", "namespace": NS},
            "spec": {"template": annotated_template("openai", "Never")},
        }),
    )
    .await;
    let first_hash = status["configHash"].as_str().unwrap().to_string();
    let pods = wait::until(
        "3 injected pods (2 of the Deployment, 1 of the Job)",
        Duration::from_secs(60),
        || async {
            let pods = injected_pods(&client, "openai").await;
            if pods.len() == 3 {
                Ok(pods)
            } else {
                Err(format!(
                    "{} pods; operator:\n{}",
                    pods.len(),
                    operator.output()
                ))
            }
        },
    )
    .await;
    for pod in &pods {
        let sidecar = sidecar(pod);
        assert_eq!(
            sidecar.restart_policy.as_deref(),
            Some("Always"),
            "a native sidecar"
        );
        assert_eq!(
            config_hash(pod),
            Some(first_hash.as_str()),
            "{}",
            pod.name_any()
        );
    }
    let owners: Vec<String> = pods
        .iter()
        .flat_map(|p| p.owner_references().iter().map(|o| o.kind.clone()))
        .collect();
    assert!(
        owners.contains(&"ReplicaSet".to_string()) && owners.contains(&"Job".to_string()),
        "{owners:?}"
    );
    wait::until(
        "the status counts 3 injected pods, all current",
        Duration::from_secs(30),
        || async {
            let status = status_of(&proxies, "openai").await?;
            if status["injectedPods"] == 3 && status["currentPods"] == 3 {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;

    // A new configuration: rollout: Restart restarts the Deployment, whose new ReplicaSet's pods
    // carry the new hash (a Job's pods cannot be restarted: they stay as they are).
    apply(&proxies, "openai", openai("debug")).await;
    let second_hash = wait::until(
        "a new config hash, rolled out",
        Duration::from_secs(30),
        || async {
            let status = status_of(&proxies, "openai").await?;
            match status["configHash"].as_str() {
                Some(hash) if hash != first_hash && status["rolledOutHash"] == hash => {
                    Ok(hash.to_string())
                }
                _ => Err(status.to_string()),
            }
        },
    )
    .await;
    let old_replica_sets: Vec<String> = pods
        .iter()
        .flat_map(|p| p.owner_references().iter())
        .filter(|o| o.kind == "ReplicaSet")
        .map(|o| o.name.clone())
        .collect();
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    let new_pods = wait::until(
        "pods of a new ReplicaSet with the new hash",
        Duration::from_secs(60),
        || async {
            let pods = injected_pods(&client, "openai").await;
            let new: Vec<Pod> = pods
                .into_iter()
                .filter(|p| {
                    p.owner_references()
                        .iter()
                        .any(|o| o.kind == "ReplicaSet" && !old_replica_sets.contains(&o.name))
                })
                .collect();
            if !new.is_empty()
                && new
                    .iter()
                    .all(|p| config_hash(p) == Some(second_hash.as_str()))
            {
                Ok(new)
            } else {
                let sets: Vec<String> = replica_sets
                    .list(&Default::default())
                    .await
                    .map(|l| l.items.iter().map(|r| r.name_any()).collect())
                    .unwrap_or_default();
                Err(format!("{} new pods; ReplicaSets {sets:?}", new.len()))
            }
        },
    )
    .await;
    wait::until(
        "the status counts the new pods as current",
        Duration::from_secs(30),
        || async {
            let pods = injected_pods(&client, "openai").await;
            let current = pods
                .iter()
                .filter(|p| config_hash(p) == Some(second_hash.as_str()))
                .count();
            let status = status_of(&proxies, "openai").await?;
            if status["currentPods"] == current
                && status["injectedPods"] == pods.len()
                && current >= new_pods.len()
            {
                Ok(())
            } else {
                Err(format!(
                    "{current} current of {} listed; status {status}",
                    pods.len()
                ))
            }
        },
    )
    .await;

    workload_identity_token_reaches_entra_as_the_sidecar_reads_it(&plane, &client).await;

    // A pod that does not ask for the sidecar never reaches the webhook: no admission is counted.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod = |name: &str, annotations: Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
        }))
        .unwrap()
    };
    let admissions = operator.metrics().await;
    pods.create(&PostParams::default(), &pod("plain-up", json!({})))
        .await
        .expect("a pod without the annotation is created");
    let counted = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("aoai_operator_admissions_total{"))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        counted(&operator.metrics().await),
        counted(&admissions),
        "an un-annotated pod was sent to the webhook"
    );
    assert!(
        counted(&admissions)
            .iter()
            .any(|l| l.contains("result=\"injected\"")),
        "{admissions}"
    );

    // SIGTERM: the operator exits within the grace period and releases its Lease.
    let exit = operator.terminate(Duration::from_secs(20));
    assert!(exit.success(), "{exit}:\n{}", operator.output());
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    let lease = leases.get(RELEASE).await.expect("the operator's Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        None,
        "the Lease is released"
    );

    // With the operator down, a pod that did not ask for the sidecar is created without any call
    // to the webhook; one that asked is refused (failurePolicy: Fail), never created without it.
    pods.create(&PostParams::default(), &pod("plain", json!({})))
        .await
        .expect("a pod without the annotation is created while the operator is down");
    let refused = pods
        .create(
            &PostParams::default(),
            &pod("wants-sidecar", json!({INJECT: "openai"})),
        )
        .await
        .expect_err("a pod that asked for the sidecar is refused while the operator is down");
    assert!(
        refused.to_string().contains("failed calling webhook"),
        "{refused}"
    );
    assert!(pods.get_opt("wants-sidecar").await.unwrap().is_none());
    // A pod that already has the sidecar (a copy of an injected pod) is not sent to the webhook.
    pods.create(
        &PostParams::default(),
        &pod(
            "has-sidecar",
            json!({INJECT: "openai", STATUS: STATUS_INJECTED}),
        ),
    )
    .await
    .expect("a pod that is already injected is created while the operator is down");
}

/// A workload-identity AzureOpenAIProxy: the injected pod projects a service-account token with
/// the audience Entra ID expects, at the path the sidecar reads. That token (as the kubelet would
/// write it, from the TokenRequest API) is what the sidecar, configured by the injected
/// environment, presents to (mock) Entra ID.
async fn workload_identity_token_reaches_entra_as_the_sidecar_reads_it(
    plane: &ControlPlane,
    client: &Client,
) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    apply(&accounts, "chat-wi", json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "chat-wi", "namespace": NS}})).await;
    let proxies: Api<AzureOpenAIProxy> = Api::namespaced(client.clone(), NS);
    apply(&proxies, "wi", json!({
        "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
        "metadata": {"name": "wi", "namespace": NS},
        "spec": {"endpoint": "https://r.openai.azure.com", "tenantId": TENANT, "clientId": CLIENT_ID,
                 "credential": {"workloadIdentity": {}}},
    }))
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mut template = annotated_template("wi", "Always");
    template["metadata"]["name"] = json!("wi-app");
    template["spec"]["serviceAccountName"] = json!("chat-wi");
    let template: Pod = serde_json::from_value(template).unwrap();
    // The webhook reads AzureOpenAIProxies from its cache: a pod created in the same instant as
    // its AzureOpenAIProxy may be refused as naming one that does not exist, and the next try (a
    // ReplicaSet's, here this loop's) gets the sidecar.
    let pod = wait::until(
        "the workload-identity pod is admitted",
        Duration::from_secs(10),
        || async {
            match pods.create(&PostParams::default(), &template).await {
                Ok(pod) => Ok(pod),
                Err(e) if e.to_string().contains("does not exist") => Err(e.to_string()),
                Err(e) => panic!("the workload-identity pod is refused: {e}"),
            }
        },
    )
    .await;

    let sidecar = sidecar(&pod);
    let env: HashMap<String, String> = sidecar
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    let token_file = env["AZURE_FEDERATED_TOKEN_FILE"].clone();
    let mount = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| token_file.starts_with(&format!("{}/", m.mount_path)))
        .unwrap_or_else(|| panic!("no mount holds {token_file}"));
    let relative = &token_file[mount.mount_path.len() + 1..];
    let volume = pod
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    let projection = volume
        .projected
        .as_ref()
        .and_then(|p| {
            p.sources
                .iter()
                .flatten()
                .find_map(|s| s.service_account_token.clone())
        })
        .expect("a projected service-account token");
    assert_eq!(
        projection.path, relative,
        "the token is projected at the file the sidecar reads"
    );
    let audience = projection.audience.clone().expect("an audience");
    assert_eq!(audience, "api://AzureADTokenExchange");

    // What the kubelet would write there, from the same API.
    let lifetime = Duration::from_secs(projection.expiration_seconds.unwrap_or(3600) as u64);
    let token = plane
        .service_account_token(NS, "chat-wi", &[&audience], lifetime)
        .await;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).expect("a JWT"))
            .expect("base64url claims"),
    )
    .expect("JSON claims");
    // Entra ID's federated credential matches exactly these three.
    assert_eq!(claims["aud"], json!([audience]));
    assert_eq!(claims["sub"], format!("system:serviceaccount:{NS}:chat-wi"));
    assert_eq!(claims["iss"], SERVICE_ACCOUNT_ISSUER);
    let dir = tempfile::tempdir().unwrap();
    let written = dir.path().join(relative);
    std::fs::write(&written, &token).unwrap();

    // The sidecar, configured by exactly what was injected, but for where Azure is.
    let ca = aoai_e2e::ca::TestCa::new();
    let ledger = TokenLedger::new();
    let app = App {
        tenant_id: env["AZURE_TENANT_ID"].clone(),
        client_id: env["AZURE_CLIENT_ID"].clone(),
        federated_token: Some(token.clone()),
        ..App::default()
    };
    let entra = MockEntra::start(
        app,
        ca.server_config(),
        Duration::from_secs(3600),
        ledger.clone(),
    )
    .await;
    let upstream = MockOpenAi::start_checking(ledger).await;
    let mut vars = env.clone();
    for (name, value) in [
        ("AZURE_FEDERATED_TOKEN_FILE", written.display().to_string()),
        ("AZURE_AUTHORITY_HOST", entra.authority()),
        ("SSL_CERT_FILE", ca.root_pem_path().display().to_string()),
        ("API_BASE_URL", upstream.url()),
        ("PORT", free_port().to_string()),
        ("AOAI_PROXY_ADMIN_HOST", "127.0.0.1".into()),
        ("AOAI_PROXY_ADMIN_PORT", free_port().to_string()),
    ] {
        vars.insert(name.to_string(), value);
    }
    let sidecar = aoai_e2e::sidecar::Sidecar::start(&vars).await;
    let request = &entra.requests()[0];
    assert_eq!(
        request.form["client_assertion"], token,
        "the projected token is the assertion"
    );
    assert!(request.outcome.is_ok(), "{:?}", request.outcome);
    sidecar.stop().await;
}

/// The chart's default on Kubernetes 1.36 (`injection.engine: auto`) installs the admission
/// policies. With the operator not running, a new AzureOpenAIProxy works at once: a bare pod and
/// a Deployment's pod get the sidecar, without a config hash; a pod the webhook would refuse (an
/// unusual port) is refused by the refusing policy in the webhook's words, never created without
/// its sidecar. When the operator starts, the status catches up and, with `rollout: Restart`, the
/// Deployment whose pods carry no hash is restarted once: its new pods carry the hash; the webhook
/// refuses the unusual pod in the same words.
#[tokio::test]
async fn with_the_operator_down_the_admission_policy_injects_and_the_operator_catches_up() {
    let test = "with_the_operator_down_the_admission_policy_injects_and_the_operator_catches_up";
    let Some(plane) = ControlPlane::start_with_controller_manager(test).await else {
        return;
    };
    let client = plane.client();
    let chart = install_chart(&plane, RELEASE, OPERATOR_NS, json!({})).await;
    assert_eq!(
        names::<MutatingAdmissionPolicy>(&client).await,
        [format!("{RELEASE}-inject")],
        "auto chose the policies on 1.36"
    );
    assert_eq!(
        names::<ValidatingAdmissionPolicy>(&client).await,
        [format!("{RELEASE}-refuse"), format!("{RELEASE}-warn")]
    );
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let webhook = webhooks.get(RELEASE).await.unwrap().webhooks.unwrap();
    assert_eq!(
        webhook[0].failure_policy.as_deref(),
        Some("Ignore"),
        "with the policies, the refusing policy fails closed in the webhook's place"
    );

    let proxies = team_namespace(&client).await;
    apply(
        &proxies,
        "openai",
        json!({
            "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
            "metadata": {"name": "openai", "namespace": NS},
            "spec": {
                "endpoint": "https://r.openai.azure.com",
                "tenantId": TENANT, "clientId": CLIENT_ID,
                "credential": {"clientCertificate": {"secretName": "openai-client-cert"}},
                "rollout": "Restart",
            },
        }),
    )
    .await;

    // No operator: the policy injects (once the API server has loaded it; until then the webhook
    // is asked and, unreachable, refuses).
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod = |name: &str, annotations: Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "registry.example/chat:1"}]},
        }))
        .unwrap()
    };
    // Until the API server has loaded the policies (a moment after they are created) nothing
    // refuses or injects a pod while no operator answers: such a pod is deleted and tried again.
    let mut attempt = 0;
    let bare = wait::until(
        "a bare pod injected by the policy",
        Duration::from_secs(30),
        || {
            attempt += 1;
            let pods = pods.clone();
            let name = format!("bare-{attempt}");
            let bare = pod(&name, json!({INJECT: "openai"}));
            async move {
                let created = pods
                    .create(&PostParams::default(), &bare)
                    .await
                    .map_err(|e| e.to_string())?;
                if created.annotations().get(STATUS).map(String::as_str) == Some(STATUS_INJECTED) {
                    return Ok(created);
                }
                pods.delete(&name, &Default::default()).await.unwrap();
                Err("created before the policies were loaded".to_string())
            }
        },
    )
    .await;
    assert_eq!(sidecar(&bare).restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        config_hash(&bare),
        None,
        "no operator has written a hash yet"
    );
    // A pod the webhook would refuse is refused by the refusing policy, with the webhook's words.
    // The API server loads each policy on its own: the refusing one may come a moment after the
    // injecting one, and a pod it let through meanwhile is deleted and tried again.
    let unusual = |name: &str| pod(name, json!({INJECT: "openai", "aoai-proxy.io/port": "80"}));
    let refusal = format!(
        "{REFUSAL_PREFIX}annotation aoai-proxy.io/port=\"80\": {}",
        Format::Port.message()
    );
    let mut attempt = 0;
    let refused = wait::until(
        "a pod the webhook refuses is refused while the operator is down",
        Duration::from_secs(30),
        || {
            attempt += 1;
            let pods = pods.clone();
            let name = format!("unusual-{attempt}");
            let unusual = unusual(&name);
            async move {
                match pods.create(&PostParams::default(), &unusual).await {
                    Err(refused) => Ok(refused.to_string()),
                    Ok(_) => {
                        pods.delete(&name, &Default::default()).await.unwrap();
                        Err("created before the refusing policy was loaded".to_string())
                    }
                }
            }
        },
    )
    .await;
    assert!(
        refused.contains(&format!("ValidatingAdmissionPolicy '{RELEASE}-refuse'"))
            && refused.contains(&refusal),
        "{refused}"
    );

    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), NS);
    apply(&deployments, "chat", json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "chat", "namespace": NS},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "chat"}}, "template": annotated_template("openai", "Always")},
    }))
    .await;
    let owned = |pods: &[Pod]| -> Vec<Pod> {
        pods.iter()
            .filter(|p| p.owner_references().iter().any(|o| o.kind == "ReplicaSet"))
            .cloned()
            .collect()
    };
    let first = wait::until(
        "the Deployment's pod, injected",
        Duration::from_secs(60),
        || async {
            match owned(&injected_pods(&client, "openai").await).as_slice() {
                [one] => Ok(one.clone()),
                other => Err(format!("{} pods", other.len())),
            }
        },
    )
    .await;
    assert_eq!(config_hash(&first), None);

    // The operator starts: the status catches up, and the Deployment is restarted once.
    let mut operator = OperatorProcess::start(OPERATOR, &chart, "aoai-proxy-operator-0", true, &[]);
    operator.wait_ready(Duration::from_secs(60)).await;
    let hash = wait::until(
        "the status, Ready with a config hash",
        Duration::from_secs(60),
        || async {
            let status = status_of(&proxies, "openai").await?;
            match status["configHash"].as_str() {
                Some(hash) if is_ready(&status) => Ok(hash.to_string()),
                _ => Err(format!("{status}; operator:\n{}", operator.output())),
            }
        },
    )
    .await;
    wait::until(
        "the Deployment's new pod carries the hash",
        Duration::from_secs(60),
        || async {
            let pods = owned(&injected_pods(&client, "openai").await);
            if pods.iter().any(|p| config_hash(p) == Some(hash.as_str())) {
                Ok(())
            } else {
                Err(format!(
                    "hashes {:?}; operator:\n{}",
                    pods.iter().map(config_hash).collect::<Vec<_>>(),
                    operator.output()
                ))
            }
        },
    )
    .await;
    let deployment = deployments.get("chat").await.unwrap();
    assert!(
        deployment
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .is_some_and(|a| a.contains_key("kubectl.kubernetes.io/restartedAt")),
        "rollout: Restart restarted the Deployment whose pod had no hash"
    );
    // The controller announces each pod injected while it watches, whichever engine injected
    // it: this one by the policy (it runs before the webhook, which is then not asked).
    let announced = pod("announced", json!({INJECT: "openai"}));
    let announced = pods
        .create(&PostParams::default(), &announced)
        .await
        .unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    wait::until(
        "an Injected Event on the pod the policy injected",
        Duration::from_secs(30),
        || async {
            let events = events.list(&Default::default()).await.unwrap().items;
            events
                .iter()
                .find(|e| {
                    e.regarding.as_ref().and_then(|r| r.uid.as_deref())
                        == announced.metadata.uid.as_deref()
                        && e.reason.as_deref() == Some("Injected")
                })
                .map(|e| assert_eq!(e.type_.as_deref(), Some("Normal")))
                .ok_or_else(|| format!("{} events; operator:\n{}", events.len(), operator.output()))
        },
    )
    .await;

    // With the operator up, the webhook refuses the same pod in the same words.
    let refused = pods
        .create(&PostParams::default(), &unusual("unusual"))
        .await
        .expect_err("the webhook refuses it")
        .to_string();
    assert!(
        refused.contains("admission webhook") && refused.contains(&refusal),
        "{refused}"
    );
    let exit = operator.terminate(Duration::from_secs(20));
    assert!(exit.success(), "{exit}:\n{}", operator.output());
}
