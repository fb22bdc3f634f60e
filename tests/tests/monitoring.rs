//! What a platform team's Prometheus and Grafana get from the chart, checked with a real
//! Prometheus (Debian's, unpacked by `scripts/python-env`): the alert rules pass `promtool test
//! rules`; on a real control plane (skipped unless `KUBEBUILDER_ASSETS` is set) `helm install`
//! with every monitoring value on creates the PodMonitor, PrometheusRule and dashboard ConfigMap
//! from the chart's files, and every query of every dashboard panel, run by a Prometheus that
//! scraped a real sidecar under load (two backends failing over, a third ejected) and the
//! operator, parses and returns series.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aoai_e2e::ca::{tls_secret, valid_client_cert};
use aoai_e2e::control_plane::{ControlPlane, apply, free_port};
use aoai_e2e::managed_identity::MockManagedIdentity;
use aoai_e2e::openai::{Fault, MockOpenAi, ThrottleHeader};
use aoai_e2e::operator::{OperatorProcess, install_chart};
use aoai_e2e::process::Process;
use aoai_e2e::sidecar::Sidecar;
use aoai_e2e::tokens::TokenLedger;
use aoai_e2e::{client, wait};
use aoai_operator::crd::AzureOpenAIProxy;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

const OPERATOR: &str = env!("CARGO_BIN_EXE_aoai-e2e-operator");
const RELEASE: &str = "aoai-proxy-operator";
const OPERATOR_NS: &str = "aoai-system";
const NS: &str = "team-a";
const IDENTITY_HEADER: &str = "identity-header-monitoring";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart_file(name: &str) -> PathBuf {
    root().join("charts/aoai-proxy-operator/files").join(name)
}

/// `program` from PATH, where `scripts/python-env` puts Debian's Prometheus.
fn tool(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH: run the tests through scripts/test, or `. scripts/python-env` first"))
}

#[test]
fn each_alert_fires_on_its_series_and_stays_silent_otherwise() {
    let output = Command::new(tool("promtool"))
        .args(["test", "rules"])
        .arg(root().join("tests/monitoring/alerts-test.yaml"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Stands in for the Prometheus Operator's CRDs, so that the API server stores what the chart
/// renders as it is.
async fn monitoring_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (kind, plural) in [
        ("ServiceMonitor", "servicemonitors"),
        ("PodMonitor", "podmonitors"),
        ("PrometheusRule", "prometheusrules"),
    ] {
        let name = format!("{plural}.monitoring.coreos.com");
        apply(&crds, &name, json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": "monitoring.coreos.com", "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                }}}],
            },
        }))
        .await;
        wait::until(
            &format!("{kind} served"),
            Duration::from_secs(30),
            || async {
                let crd = crds.get(&name).await.map_err(|e| e.to_string())?;
                let established = crd
                    .status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    Ok(())
                } else {
                    Err("not established".into())
                }
            },
        )
        .await;
    }
}

async fn get_monitoring(client: &kube::Client, kind: &str, name: &str) -> Value {
    let resource =
        ApiResource::from_gvk(&GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), OPERATOR_NS, &resource);
    serde_json::to_value(
        api.get(name)
            .await
            .unwrap_or_else(|e| panic!("{kind} {name}: {e}")),
    )
    .unwrap()
}

/// The chart's monitoring objects, as Helm rendered them and the API server stored them.
async fn the_chart_renders_its_files(client: &kube::Client) {
    let rule = get_monitoring(client, "PrometheusRule", RELEASE).await;
    let alerts: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart_file("alerts.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        rule["spec"], alerts,
        "the PrometheusRule holds files/alerts.yaml as it is"
    );

    let monitor = get_monitoring(client, "PodMonitor", &format!("{RELEASE}-sidecars")).await;
    assert_eq!(
        monitor["spec"]["selector"]["matchExpressions"][0]["key"],
        aoai_operator::annotations::PROXY_LABEL
    );
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(
        endpoint["port"],
        aoai_operator::mutate::ADMIN_PORT_NAME,
        "the port name injection gives the admin port"
    );
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["relabelings"][0]["targetLabel"], "proxy");

    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), OPERATOR_NS);
    let dashboard = maps.get(&format!("{RELEASE}-dashboard")).await.unwrap();
    assert_eq!(dashboard.metadata.labels.unwrap()["grafana_dashboard"], "1");
    let stored: Value = serde_json::from_str(&dashboard.data.unwrap()["aoai-proxy.json"]).unwrap();
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_file("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stored, shipped);
}

/// A sidecar with three backends: the first throttles, the second refuses connections (and is
/// ejected), the third answers.
async fn sidecar_under_load(
    first: &MockOpenAi,
    last: &MockOpenAi,
    identity: &MockManagedIdentity,
) -> Sidecar {
    first.set_fault(Some(Fault::Throttle {
        header: ThrottleHeader::RetryAfterMs,
        wait: Duration::from_millis(300),
    }));
    let dead = format!("http://127.0.0.1:{}", free_port());
    let backends = json!([
        {"endpoint": first.url(), "priority": 0},
        {"endpoint": dead, "priority": 1},
        {"endpoint": last.url(), "priority": 2},
    ]);
    let env: HashMap<String, String> = [
        ("AOAI_PROXY_BACKENDS", backends.to_string()),
        ("AOAI_PROXY_EJECT_AFTER", "1".into()),
        ("IDENTITY_ENDPOINT", identity.app_service_endpoint()),
        ("IDENTITY_HEADER", IDENTITY_HEADER.into()),
        ("HOST", "127.0.0.1".into()),
        ("PORT", free_port().to_string()),
        ("AOAI_PROXY_ADMIN_HOST", "127.0.0.1".into()),
        ("AOAI_PROXY_ADMIN_PORT", free_port().to_string()),
        ("AOAI_PROXY_LOG_LEVEL", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Sidecar::start(&env).await
}

/// Requests of every kind the dashboard draws: plain and streamed completions (with usage), and
/// a path the backend does not know (a 404).
async fn load(sidecar: &Sidecar) {
    let chat = format!(
        "{}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        sidecar.url
    );
    client::chat(&sidecar.url).await;
    client::post_json(&chat, &[], &json!({"messages": [{"role": "user", "content": "hi"}], "stream": true, "stream_options": {"include_usage": true}})).await;
    client::get(
        &format!("{}/openai/unknown?api-version=2024-10-21", sidecar.url),
        &[],
    )
    .await;
}

/// A Prometheus scraping `targets` (`(job, base URL, labels)`) at `/metrics` every second.
fn prometheus(dir: &Path, targets: &[(&str, &str, Value)]) -> (Process, String) {
    let jobs: Vec<Value> = targets
        .iter()
        .map(|(job, url, labels)| {
            let url = url.strip_prefix("http://").unwrap();
            json!({"job_name": job, "scrape_interval": "1s", "metrics_path": "/metrics", "static_configs": [{"targets": [url], "labels": labels}]})
        })
        .collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        serde_json::to_string(
            &json!({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}),
        )
        .unwrap(),
    )
    .unwrap();
    let port = free_port();
    let process = Process::spawn(
        "prometheus",
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
    );
    (process, format!("http://127.0.0.1:{port}"))
}

async fn query(prometheus: &str, promql: &str) -> Value {
    let url = format!(
        "{prometheus}/api/v1/query?{}",
        form_urlencoded::Serializer::new(String::new())
            .append_pair("query", promql)
            .finish()
    );
    client::get(&url, &[]).await.json()
}

#[tokio::test]
async fn every_dashboard_query_returns_series_from_a_real_sidecar_and_operator() {
    let Some(plane) = ControlPlane::start(
        "every_dashboard_query_returns_series_from_a_real_sidecar_and_operator",
    )
    .await
    else {
        return;
    };
    let client = plane.client();
    monitoring_crds(&client).await;
    let on = json!({"enabled": true});
    let chart = install_chart(&plane, RELEASE, OPERATOR_NS, json!({
        "injection": {"engine": "webhook"},
        "metrics": {"serviceMonitor": on, "podMonitor": on, "prometheusRule": on, "grafanaDashboard": on},
    }))
    .await;
    the_chart_renders_its_files(&client).await;

    // The operator, leading, with an AzureOpenAIProxy whose client certificate it checks.
    let mut operator = OperatorProcess::start(OPERATOR, &chart, "aoai-proxy-operator-0", true, &[]);
    operator.wait_ready(Duration::from_secs(60)).await;
    aoai_e2e::control_plane::namespace(&client, NS).await;
    let cert = valid_client_cert();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    apply(
        &secrets,
        "openai-client-cert",
        tls_secret("openai-client-cert", NS, &cert, "client-a"),
    )
    .await;
    let proxies: Api<AzureOpenAIProxy> = Api::namespaced(client.clone(), NS);
    apply(&proxies, "openai", json!({
        "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
        "metadata": {"name": "openai", "namespace": NS},
        "spec": {
            "endpoint": "https://r.openai.azure.com",
            "tenantId": "contoso.onmicrosoft.com", "clientId": "11111111-2222-3333-4444-555555555555",
            "credential": {"clientCertificate": {"secretName": "openai-client-cert"}},
        },
    }))
    .await;
    wait::until(
        "the AzureOpenAIProxy's status",
        Duration::from_secs(60),
        || async {
            let proxy = proxies.get("openai").await.map_err(|e| e.to_string())?;
            match proxy.status.and_then(|s| s.certificate_not_after) {
                Some(_) => Ok(()),
                None => Err(format!("no status yet; operator:\n{}", operator.output())),
            }
        },
    )
    .await;

    let identity = MockManagedIdentity::start(
        IDENTITY_HEADER,
        Duration::from_secs(3600),
        TokenLedger::new(),
    )
    .await;
    let (first, last) = (MockOpenAi::start().await, MockOpenAi::start().await);
    let sidecar = sidecar_under_load(&first, &last, &identity).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut prometheus_process, prometheus) = prometheus(
        dir.path(),
        &[
            (
                "aoai-proxy",
                &sidecar.admin_url,
                json!({"namespace": NS, "pod": "chat-1", "proxy": "openai"}),
            ),
            (
                "aoai-operator",
                &operator.admin_url,
                json!({"namespace": OPERATOR_NS, "pod": "aoai-proxy-operator-0"}),
            ),
        ],
    );
    wait::until("Prometheus ready", Duration::from_secs(60), || async {
        let address = prometheus.strip_prefix("http://").unwrap();
        if tokio::net::TcpStream::connect(address).await.is_err() {
            return Err(prometheus_process.output());
        }
        let ready = client::get(&format!("{prometheus}/-/ready"), &[]).await;
        if ready.status == 200 {
            Ok(())
        } else {
            Err(ready.text())
        }
    })
    .await;
    // Load over several scrapes, so that every counter has a rate.
    for _ in 0..8 {
        load(&sidecar).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_file("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let queries: Vec<(String, String)> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| {
            panel["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |target| {
                    (
                        panel["title"].as_str().unwrap().to_string(),
                        target["expr"].as_str().unwrap().to_string(),
                    )
                })
        })
        .collect();
    assert!(queries.len() >= 13, "{queries:?}");
    wait::until(
        "every panel's query returns series",
        Duration::from_secs(60),
        || async {
            let mut empty = Vec::new();
            for (title, expr) in &queries {
                let promql = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$namespace", ".*");
                let answer = query(&prometheus, &promql).await;
                assert_eq!(answer["status"], "success", "{title}: {promql}: {answer}");
                if answer["data"]["result"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
                {
                    empty.push(format!("{title}: {promql}"));
                }
            }
            if empty.is_empty() {
                return Ok(());
            }
            let targets = client::get(&format!("{prometheus}/api/v1/targets"), &[])
                .await
                .text();
            Err(format!(
                "no series yet for\n{}\ntargets: {targets}",
                empty.join("\n")
            ))
        },
    )
    .await;
    let namespaces = client::get(
        &format!("{prometheus}/api/v1/label/namespace/values?match[]=aoai_proxy_build_info"),
        &[],
    )
    .await
    .json();
    assert_eq!(
        namespaces["data"],
        json!([NS]),
        "the dashboard's namespace variable"
    );
    prometheus_process.terminate(Duration::from_secs(10));
    sidecar.stop().await;
    let exit = operator.terminate(Duration::from_secs(20));
    assert!(exit.success(), "{exit}:\n{}", operator.output());
}
