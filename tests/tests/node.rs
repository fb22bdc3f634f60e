//! The README's quick start, executed on a real node (skipped unless `AOAI_E2E_NODE` names
//! `../shared/node`'s binaries, `KUBEBUILDER_ASSETS` the control plane's, and the tests run as
//! root): the shipped images, the chart installed by Helm, the operator running as two pods
//! (leader election, the webhook served through its Service with its own certificate), the
//! examples applied, and injected pods that really run, with their sidecar calling a mock Entra ID
//! and a mock Azure OpenAI served on the pod bridge's gateway over HTTPS signed by a private CA
//! (`spec.trust`); with the operator scaled to zero, the chart's admission policy still injects
//! and the pod runs with its sidecar.
//!
//! One test function: one node per test binary, its scenarios in order.

use std::time::{Duration, Instant};

use aoai_e2e::ca::{fixture_key_pem, tls_secret, valid_client_cert};
use aoai_e2e::control_plane::{SERVICE_ACCOUNT_ISSUER, apply};
use aoai_e2e::entra::{App, FederatedIssuer, MockEntra};
use aoai_e2e::image::{self, FinalStage};
use aoai_e2e::node::{GATEWAY, Node};
use aoai_e2e::openai::{COMPLETION_TEXT, MockOpenAi};
use aoai_e2e::operator::helm_install;
use aoai_e2e::tokens::TokenLedger;
use aoai_e2e::wait;
use aoai_operator::crd::AzureOpenAIProxy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const PROXY_IMAGE: &str = "registry.local/aoai-proxy";
const OPERATOR_IMAGE: &str = "registry.local/aoai-operator";
const APP_IMAGE: &str = "registry.local/aoai-e2e-app:e2e";
const TAG: &str = "e2e";
const NS: &str = "team-a";
const OPERATOR_NS: &str = "aoai-system";
const RELEASE: &str = "aoai-proxy-operator";
/// The chart's label on the operator's pods.
const OPERATOR_PODS: &str = "app.kubernetes.io/name=aoai-proxy-operator";
const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const WORKLOAD_CLIENT_ID: &str = "22222222-3333-4444-5555-666666666666";

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A YAML file of the checkout, as JSON.
fn example(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Builds the three images and imports them into the node: the proxy's and the operator's from
/// their Dockerfiles and the binaries `scripts/test` built, the test application's from this
/// crate's binary.
fn images(node: &Node) {
    let dir = tempfile::tempdir().unwrap();
    for (dockerfile, repository) in [
        ("Dockerfile.proxy", PROXY_IMAGE),
        ("Dockerfile.operator", OPERATOR_IMAGE),
    ] {
        let archive = dir.path().join("image.tar");
        let reference = format!("{repository}:{TAG}");
        image::from_dockerfile(dockerfile, &reference, &archive);
        node.import_image(&archive, &reference);
    }
    let app = FinalStage {
        base: "gcr.io/distroless/cc-debian12:nonroot".into(),
        copies: vec![(
            env!("CARGO_BIN_EXE_aoai-e2e-app").into(),
            "/usr/local/bin/aoai-e2e-app".into(),
        )],
        user: "65532:65532".into(),
        exposed: vec!["8080".into()],
        entrypoint: vec!["/usr/local/bin/aoai-e2e-app".into()],
        cmd: vec!["serve".into()],
        labels: Default::default(),
    };
    let archive = dir.path().join("app.tar");
    image::assemble(
        &app,
        |source| std::path::PathBuf::from(source),
        APP_IMAGE,
        &archive,
    );
    node.import_image(&archive, APP_IMAGE);
}

async fn pods_of(client: &Client, namespace: &str, selector: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Every container of `pod` (init containers included) ready or, for init containers that are
/// not sidecars, completed.
fn all_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .container_statuses
            .iter()
            .flatten()
            .chain(status.init_container_statuses.iter().flatten())
            .all(|c| {
                c.ready
                    || c.state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .is_some_and(|t| t.exit_code == 0)
            })
}

/// Why pods are not ready yet: their phase and each container's state, for the failure message.
fn describe(pods: &[Pod]) -> String {
    pods.iter()
        .map(|p| {
            let status = p.status.clone().unwrap_or_default();
            let containers: Vec<String> = status
                .init_container_statuses
                .iter()
                .flatten()
                .chain(status.container_statuses.iter().flatten())
                .map(|c| {
                    format!(
                        "{}: ready={} restarts={} {:?}",
                        c.name, c.ready, c.restart_count, c.state
                    )
                })
                .collect();
            format!(
                "{} {:?} [{}]",
                p.name_any(),
                status.phase,
                containers.join("; ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn wait_pods_ready(
    node: &mut Node,
    namespace: &str,
    selector: &str,
    count: usize,
    within: Duration,
) -> Vec<Pod> {
    let client = node.plane.client();
    let deadline = Instant::now() + within;
    loop {
        let pods = pods_of(&client, namespace, selector).await;
        let live: Vec<Pod> = pods
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        if live.len() == count && live.iter().all(all_ready) {
            return live;
        }
        node.check_running();
        if Instant::now() > deadline {
            let mut logged = String::new();
            for pod in &live {
                let spec = pod.spec.clone().unwrap_or_default();
                for container in spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(spec.containers.iter())
                {
                    let log = logs(&client, namespace, &pod.name_any(), &container.name).await;
                    let lines: Vec<&str> = log.lines().collect();
                    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                    logged.push_str(&format!(
                        "--- {}/{}:\n{tail}\n",
                        pod.name_any(),
                        container.name
                    ));
                }
            }
            panic!(
                "{count} pods {selector} in {namespace} not ready within {within:?}:\n{}\n{logged}kubelet:\n{}\nkube-proxy:\n{}",
                describe(&live),
                node.log_tail("kubelet"),
                node.log_tail("kube-proxy")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn logs(client: &Client, namespace: &str, pod: &str, container: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.logs(
        pod,
        &LogParams {
            container: Some(container.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| format!("(no logs: {e})"))
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a running pod has an address")
}

fn is_ready(status: &Value) -> bool {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

async fn wait_proxy_ready(client: &Client, name: &str) {
    let proxies: Api<AzureOpenAIProxy> = Api::namespaced(client.clone(), NS);
    wait::until(
        &format!("AzureOpenAIProxy {name} Ready"),
        Duration::from_secs(60),
        || async {
            let status = proxies
                .get(name)
                .await
                .map(|p| serde_json::to_value(&p.status).unwrap_or_default());
            match status {
                Ok(status) if is_ready(&status) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_on_a_real_node() {
    let Some(mut node) = Node::start("the_quick_start_on_a_real_node").await else {
        return;
    };
    let client = node.plane.client();
    images(&node);

    // Mocks of Entra ID and Azure OpenAI on the bridge gateway, HTTPS signed by the test CA.
    let ledger = std::sync::Arc::new(TokenLedger::default());
    let certificate = valid_client_cert();
    let certificate_der = x509_parser::pem::parse_x509_pem(certificate.as_bytes())
        .unwrap()
        .1
        .contents;
    let entra = MockEntra::start_at(
        GATEWAY.into(),
        App {
            tenant_id: TENANT.into(),
            client_id: CLIENT_ID.into(),
            certificates: vec![certificate_der],
            ..App::default()
        },
        node.plane.ca.server_config(),
        Duration::from_secs(3600),
        ledger.clone(),
    )
    .await;
    let openai = MockOpenAi::start_tls_at(
        GATEWAY.into(),
        node.plane.ca.server_config(),
        ledger.clone(),
    )
    .await;

    // 1. The operator, as the README installs it (with the images of this checkout).
    helm_install(
        &node.plane,
        RELEASE,
        OPERATOR_NS,
        &json!({
            "image": {"repository": OPERATOR_IMAGE, "tag": TAG, "pullPolicy": "Never"},
            "proxyImage": {"repository": PROXY_IMAGE, "tag": TAG},
        }),
    );
    wait_pods_ready(
        &mut node,
        OPERATOR_NS,
        OPERATOR_PODS,
        2,
        Duration::from_secs(120),
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    let holder = wait::until(
        "a replica holds the leader Lease",
        Duration::from_secs(60),
        || async {
            lease_holder(&leases)
                .await
                .ok_or_else(|| "no Lease held yet".to_string())
        },
    )
    .await;
    assert!(holder.starts_with(RELEASE), "{holder}");
    // The leader's pod deleted: the other replica takes the Lease over.
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    operator_pods
        .delete(&holder, &DeleteParams::default())
        .await
        .unwrap();
    let successor = wait::until(
        "another replica takes the Lease over",
        Duration::from_secs(90),
        || async {
            match lease_holder(&leases).await {
                Some(now) if now != holder => Ok(now),
                other => Err(format!("held by {other:?}")),
            }
        },
    )
    .await;
    println!("leader {holder} deleted; {successor} leads");

    // 2. A credential and a configuration, from the examples, pointed at the mocks.
    aoai_e2e::control_plane::namespace(&client, NS).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    apply(
        &secrets,
        "openai-client-cert",
        tls_secret("openai-client-cert", NS, &certificate, "client-a"),
    )
    .await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    apply(
        &maps,
        "private-ca",
        json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "private-ca", "namespace": NS},
            "data": {"ca.crt": std::fs::read_to_string(node.plane.ca.root_pem_path()).unwrap()},
        }),
    )
    .await;
    let mut configuration = example("examples/client-certificate.yaml");
    configuration["spec"]["endpoint"] = json!(openai.url());
    configuration["spec"]["authorityHost"] = json!(entra.authority());
    configuration["spec"]["trust"] = json!({"configMap": {"name": "private-ca", "key": "ca.crt"}});
    let proxies: Api<AzureOpenAIProxy> = Api::namespaced(client.clone(), NS);
    apply(&proxies, "openai", configuration).await;
    wait_proxy_ready(&client, "openai").await;

    // 3. An annotated Deployment: its pods run with all containers ready, the sidecar started
    // first and held a token before the app started.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    apply(&accounts, "chat", json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "chat", "namespace": NS}})).await;
    let mut deployment = example("examples/deployment.yaml");
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = json!(APP_IMAGE);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    apply(&deployments, "chat", deployment).await;
    let pods = wait_pods_ready(&mut node, NS, "app=chat", 2, Duration::from_secs(120)).await;
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        let sidecar = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == "aoai-proxy");
        assert!(
            sidecar.is_some_and(|c| c.restart_policy.as_deref() == Some("Always")),
            "a native sidecar"
        );
        let app_log = logs(&client, NS, &pod.name_any(), "app").await;
        assert!(
            app_log.contains("sidecar /health at app start: Ok(200)"),
            "{app_log}"
        );
        let answer = aoai_e2e::client::get(&format!("http://{}:8080/chat", pod_ip(pod)), &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(answer.text().contains(COMPLETION_TEXT), "{}", answer.text());
    }
    assert_eq!(openai.invalid_tokens(), 0);

    // 4. An annotated Job completes: its native sidecar stops when the app is done.
    let mut job = example("examples/job.yaml");
    let container = &mut job["spec"]["template"]["spec"]["containers"][0];
    container["image"] = json!(APP_IMAGE);
    container["args"] = json!(["call"]);
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    apply(&jobs, "summarize", job).await;
    wait::until("the Job completes", Duration::from_secs(120), || async {
        let job = jobs.get("summarize").await.map_err(|e| e.to_string())?;
        let status = job.status.unwrap_or_default();
        if status.succeeded == Some(1) {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;

    // 5. Workload identity: the kubelet-projected token, checked by the mock Entra ID as Entra
    // checks a federated credential (the issuer's signature, subject and audience).
    let subject = format!("system:serviceaccount:{NS}:chat-wi");
    let federated = MockEntra::start_at(
        GATEWAY.into(),
        App {
            tenant_id: TENANT.into(),
            client_id: WORKLOAD_CLIENT_ID.into(),
            federated_issuer: Some(FederatedIssuer {
                issuer: SERVICE_ACCOUNT_ISSUER.into(),
                subject,
                audience: "api://AzureADTokenExchange".into(),
                public_key: node.plane.service_account_public_key.clone(),
            }),
            ..App::default()
        },
        node.plane.ca.server_config(),
        Duration::from_secs(3600),
        ledger.clone(),
    )
    .await;
    let documents: Vec<Value> = {
        let text = std::fs::read_to_string(root().join("examples/workload-identity.yaml")).unwrap();
        serde_saphyr::from_str_multiple(&text).unwrap()
    };
    let mut account = documents[0].clone();
    account["metadata"]["name"] = json!("chat-wi");
    apply(&accounts, "chat-wi", account).await;
    let mut configuration = documents[1].clone();
    configuration["spec"]["clientId"] = json!(WORKLOAD_CLIENT_ID);
    configuration["spec"]["endpoint"] = json!(openai.url());
    configuration["spec"]["authorityHost"] = json!(federated.authority());
    configuration["spec"]["trust"] = json!({"configMap": {"name": "private-ca"}});
    apply(&proxies, "openai-wi", configuration).await;
    wait_proxy_ready(&client, "openai-wi").await;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let wi_pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "chat-wi", "labels": {"app": "chat-wi"}, "annotations": {"aoai-proxy.io/inject": "openai-wi"}},
        "spec": {"serviceAccountName": "chat-wi", "containers": [{"name": "app", "image": APP_IMAGE}]},
    }))
    .unwrap();
    pods_api
        .create(&PostParams::default(), &wi_pod)
        .await
        .unwrap();
    let wi = wait_pods_ready(&mut node, NS, "app=chat-wi", 1, Duration::from_secs(120)).await;
    let answer = aoai_e2e::client::get(&format!("http://{}:8080/chat", pod_ip(&wi[0])), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        federated.requests().iter().any(|r| r.outcome.is_ok()),
        "the projected token was exchanged"
    );

    // 6. A hundred streams open through one sidecar: under its injected memory limit, never
    // restarted.
    let target = pods[0].clone();
    let address = pod_ip(&target);
    let streams: Vec<_> = (0..100)
        .map(|_| {
            let url = format!("http://{address}:8080/stream?chunks=20&delay_ms=200");
            tokio::spawn(async move { aoai_e2e::client::get(&url, &[]).await })
        })
        .collect();
    for stream in streams {
        let answer = stream.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(answer.text().contains("[DONE]"), "{}", answer.text());
    }
    let sidecar_status = |pod: &Pod| {
        pod.status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref())
            .and_then(|all| all.iter().find(|c| c.name == "aoai-proxy").cloned())
            .expect("the sidecar's status")
    };
    let now = pods_api.get(&target.name_any()).await.unwrap();
    let status = sidecar_status(&now);
    assert_eq!(status.restart_count, 0, "{status:?}");
    let container_id = status.container_id.clone().unwrap_or_default();
    let peak = node.memory_peak(container_id.trim_start_matches("containerd://"));
    let limit = now
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "aoai-proxy")
        .and_then(|c| {
            c.resources
                .as_ref()?
                .limits
                .as_ref()?
                .get("memory")
                .cloned()
        })
        .expect("the sidecar has a memory limit");
    println!(
        "sidecar peak memory with 100 streams: {} KiB (limit {})",
        peak / 1024,
        limit.0
    );
    assert!(
        peak > 0 && peak < quantity_bytes(&limit.0),
        "{peak} bytes against {}",
        limit.0
    );

    // 7. No secret in the sidecars' logs.
    let mut secrets_seen = ledger.tokens();
    secrets_seen.extend(
        fixture_key_pem("client-a")
            .lines()
            .filter(|l| l.len() == 64)
            .map(String::from),
    );
    for request in entra.requests().iter().chain(federated.requests().iter()) {
        secrets_seen.extend(request.form.get("client_assertion").cloned());
    }
    for pod in pods.iter().chain(wi.iter()) {
        let log = logs(&client, NS, &pod.name_any(), "aoai-proxy").await;
        assert!(log.contains("access token acquired"), "{log}");
        for secret in &secrets_seen {
            assert!(
                !log.contains(secret.as_str()),
                "a secret in the logs of {}",
                pod.name_any()
            );
        }
    }

    // 8. A pod deleted while it streams: the stream ends normally; the app ends first, the
    // sidecar after it.
    let url = format!("http://{address}:8080/stream?chunks=20&delay_ms=200");
    let streaming = tokio::spawn(async move {
        let response = aoai_e2e::client::send(
            http::Request::get(url)
                .body(aoai_e2e::client::body(""))
                .unwrap(),
        )
        .await;
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .map(|b| b.to_bytes())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deletion = Instant::now();
    pods_api
        .delete(&target.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    let body = streaming.await.unwrap().expect("the stream ends normally");
    assert!(
        String::from_utf8_lossy(&body).contains("[DONE]"),
        "the whole stream arrived"
    );
    assert!(
        deletion.elapsed() > Duration::from_secs(2),
        "the stream went on after the deletion"
    );
    // The kubelet's own account of the termination: the app first, and the sidecar only once the
    // app had finished its stream.
    let name = target.name_any();
    let killed = wait::until(
        "the kubelet stops both containers",
        Duration::from_secs(30),
        || async {
            let log = node.log("kubelet");
            let at = |container: &str| {
                log.lines()
                    .find(|l| {
                        l.contains("Killing container with a grace period")
                            && l.contains(&name)
                            && l.contains(&format!("containerName=\"{container}\""))
                    })
                    .map(klog_seconds)
            };
            match (at("app"), at("aoai-proxy")) {
                (Some(app), Some(sidecar)) => Ok((app, sidecar)),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let (app, sidecar) = killed;
    println!(
        "deleted while streaming: the app stopped at {app:.3} s, the sidecar {:.3} s later",
        sidecar - app
    );
    assert!(
        sidecar - app > 1.5,
        "the sidecar was stopped {:.3} s after the app",
        sidecar - app
    );

    // 9. The operator down: the chart's admission policies (the default engine on 1.36) still
    // inject, and the pod runs with its sidecar; a pod the webhook would refuse is refused in the
    // webhook's words, never created without its sidecar; others are created. The webhook is back
    // when a replica returns, and refuses the same pod in the same words.
    let operator: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NS);
    let scale = |replicas: i32| json!({"spec": {"replicas": replicas}});
    operator
        .patch(
            RELEASE,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(scale(0)),
        )
        .await
        .unwrap();
    wait::until(
        "the operator's pods are gone",
        Duration::from_secs(60),
        || async {
            match pods_of(
                &client,
                OPERATOR_NS,
                "app.kubernetes.io/name=aoai-proxy-operator",
            )
            .await
            .len()
            {
                0 => Ok(()),
                n => Err(format!("{n} left")),
            }
        },
    )
    .await;
    let pod = |name: &str, annotations: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations, "labels": {"scenario": name}},
            "spec": {"containers": [{"name": "app", "image": APP_IMAGE}]},
        }))
        .unwrap()
    };
    pods_api
        .create(
            &PostParams::default(),
            &pod("while-down", json!({"aoai-proxy.io/inject": "openai"})),
        )
        .await
        .expect("the admission policy injects while the operator is down");
    let running = wait_pods_ready(
        &mut node,
        NS,
        "scenario=while-down",
        1,
        Duration::from_secs(120),
    )
    .await;
    assert!(
        running[0]
            .spec
            .as_ref()
            .unwrap()
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == "aoai-proxy"),
        "the pod injected while the operator was down runs with its sidecar"
    );
    let refused = pods_api
        .create(
            &PostParams::default(),
            &pod(
                "refused",
                json!({"aoai-proxy.io/inject": "openai", "aoai-proxy.io/port": "80"}),
            ),
        )
        .await;
    let refusal = "aoai-proxy: annotation aoai-proxy.io/port=\"80\": must be a port number from 1024 to 65535";
    let error = refused
        .expect_err("a pod the webhook would refuse is refused while no webhook answers")
        .to_string();
    assert!(
        error.contains("ValidatingAdmissionPolicy") && error.contains(refusal),
        "{error}"
    );
    pods_api
        .create(&PostParams::default(), &pod("plain", json!({})))
        .await
        .expect("other pods are created");
    operator
        .patch(
            RELEASE,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(scale(2)),
        )
        .await
        .unwrap();
    wait_pods_ready(
        &mut node,
        OPERATOR_NS,
        OPERATOR_PODS,
        2,
        Duration::from_secs(120),
    )
    .await;
    // The webhook answers again: it refuses the pod first, in the same words.
    wait::until(
        "the webhook answers again",
        Duration::from_secs(60),
        || async {
            match pods_api
                .create(
                    &PostParams::default(),
                    &pod(
                        "refused",
                        json!({"aoai-proxy.io/inject": "openai", "aoai-proxy.io/port": "80"}),
                    ),
                )
                .await
            {
                Err(e)
                    if e.to_string().contains("admission webhook")
                        && e.to_string().contains(refusal) =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    node.stop().await;
}

/// Who holds the operator's leader Lease, if anyone.
async fn lease_holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .list(&ListParams::default())
        .await
        .ok()?
        .items
        .into_iter()
        .find_map(|l| l.spec?.holder_identity)
}

/// The time of day of a klog line (`I1205 03:14:43.204377 ...`), in seconds.
fn klog_seconds(line: &str) -> f64 {
    let time = line.split_whitespace().nth(1).unwrap_or_default();
    let parts: Vec<f64> = time.split(':').filter_map(|p| p.parse().ok()).collect();
    match parts.as_slice() {
        [h, m, s] => h * 3600.0 + m * 60.0 + s,
        _ => panic!("not a klog line: {line}"),
    }
}

/// Bytes of a Kubernetes memory quantity such as `128Mi`.
fn quantity_bytes(quantity: &str) -> u64 {
    let (number, unit) = quantity.split_at(
        quantity
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(quantity.len()),
    );
    let factor = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "K" | "k" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        other => panic!("unknown unit {other}"),
    };
    number.parse::<u64>().unwrap() * factor
}

/// The README's quick start names what the node test runs: the same release, namespaces,
/// Secret and examples. (What differs is said there: the images come from this checkout, and
/// the examples' endpoint and authority point at the mocks.)
#[test]
fn the_quick_start_is_what_the_node_test_runs() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme.find("## Quick start in a cluster").unwrap();
    let section = &readme[start..start + readme[start..].find("\n## Run the proxy").unwrap()];
    for command in [
        format!(
            "helm install {RELEASE} charts/aoai-proxy-operator -n {OPERATOR_NS} --create-namespace"
        ),
        format!("kubectl create namespace {NS}"),
        format!("kubectl -n {NS} create secret tls openai-client-cert"),
        "kubectl apply -f examples/client-certificate.yaml".into(),
        "kubectl apply -f examples/deployment.yaml".into(),
        format!("kubectl -n {NS} get aoaip openai"),
    ] {
        assert!(
            section.contains(&command),
            "the quick start lacks `{command}`"
        );
    }
    assert!(
        section.contains("tests/tests/node.rs"),
        "the quick start says the test runs it"
    );
}
