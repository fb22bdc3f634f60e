//! The operator as a platform team installs it, on a [`ControlPlane`]: the Helm chart installed by
//! Helm itself, and `aoai-operator run` started as a process with the chart's environment,
//! authenticated as the chart's ServiceAccount. Only the webhook's address differs from a
//! cluster: the chart's MutatingWebhookConfiguration is pointed at the process on 127.0.0.1 by URL
//! (there is no Service network here).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::control_plane::{ControlPlane, free_port};
use crate::process::Process;

/// What `helm install` put in the cluster, and how to run the operator as its Deployment would.
pub struct InstalledChart {
    pub release: String,
    pub namespace: String,
    /// The operator container's environment from the chart's Deployment (the downward-API
    /// variables POD_NAME and POD_NAMESPACE are set per process).
    pub env: Vec<(String, String)>,
    /// A kubeconfig holding a TokenRequest token of the chart's ServiceAccount.
    pub kubeconfig: PathBuf,
    /// The port the chart's webhook configuration now calls on 127.0.0.1.
    pub webhook_port: u16,
}

fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        python.is_file(),
        "the chart is installed with Helm from the project's Python environment, and {} is \
         missing: run `. scripts/python-env` (scripts/test does) first",
        python.display()
    );
    python
}

/// `helm install <release> charts/aoai-proxy-operator -n <namespace> --create-namespace` with
/// `values`, through Helm's own library; returns the release's manifest.
pub fn helm_install(
    plane: &ControlPlane,
    release: &str,
    namespace: &str,
    values: &serde_json::Value,
) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/install.py");
    let output = Command::new(python())
        .arg(script)
        .arg(plane.admin_kubeconfig())
        .args([release, namespace, &values.to_string()])
        .output()
        .expect("run helm install");
    assert!(
        output.status.success(),
        "helm install failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `helm install <release> charts/aoai-proxy-operator -n <namespace> --create-namespace` with
/// `values`, then the webhook configuration pointed at 127.0.0.1.
pub async fn install_chart(
    plane: &ControlPlane,
    release: &str,
    namespace: &str,
    values: serde_json::Value,
) -> InstalledChart {
    helm_install(plane, release, namespace, &values);
    let client = plane.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = deployments
        .list(&Default::default())
        .await
        .expect("list the chart's Deployment")
        .items
        .into_iter()
        .next()
        .expect("the chart installs a Deployment");
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("a pod template");
    let service_account = pod
        .service_account_name
        .clone()
        .expect("the chart names its ServiceAccount");
    let env = pod.containers[0]
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();

    // Before any pod in a selected namespace is created: the chart's Service has no endpoints here.
    let webhook_port = free_port();
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client);
    let name = configurations
        .list(&Default::default())
        .await
        .expect("list webhook configurations")
        .items
        .into_iter()
        .find_map(|c| c.metadata.name.filter(|n| n.starts_with(release)))
        .expect("the chart installs a MutatingWebhookConfiguration");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "remove", "path": "/webhooks/0/clientConfig/service"},
        {"op": "add", "path": "/webhooks/0/clientConfig/url",
         "value": format!("https://127.0.0.1:{webhook_port}/mutate")},
    ]))
    .expect("a JSON patch");
    configurations
        .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .expect("point the webhook at 127.0.0.1");

    let token = plane
        .service_account_token(namespace, &service_account, &[], Duration::from_secs(3600))
        .await;
    InstalledChart {
        release: release.to_string(),
        namespace: namespace.to_string(),
        env,
        kubeconfig: plane.token_kubeconfig(&service_account, &token),
        webhook_port,
    }
}

/// One `aoai-operator run` process.
pub struct OperatorProcess {
    process: Process,
    pub identity: String,
    pub admin_url: String,
}

impl OperatorProcess {
    /// Starts `binary` (the test's `env!("CARGO_BIN_EXE_aoai-e2e-operator")`) as a replica named
    /// `identity` with the chart's environment, then `overrides`. `serve_webhook`: listen on the
    /// port the webhook configuration calls (one replica at a time can), else on a free one.
    pub fn start(
        binary: &str,
        chart: &InstalledChart,
        identity: &str,
        serve_webhook: bool,
        overrides: &[(&str, &str)],
    ) -> Self {
        let admin_port = free_port();
        let webhook_port = if serve_webhook {
            chart.webhook_port
        } else {
            free_port()
        };
        let mut command = Command::new(binary);
        command
            .arg("run")
            .env_clear()
            .envs(chart.env.iter().cloned());
        command
            .env("POD_NAME", identity)
            .env("POD_NAMESPACE", &chart.namespace)
            .env("KUBECONFIG", &chart.kubeconfig)
            .env(
                "AOAI_OPERATOR_ADMIN_ADDR",
                format!("127.0.0.1:{admin_port}"),
            )
            .env(
                "AOAI_OPERATOR_WEBHOOK_ADDR",
                format!("127.0.0.1:{webhook_port}"),
            )
            .env("AOAI_OPERATOR_WEBHOOK_EXTRA_NAMES", "127.0.0.1")
            .envs(overrides.iter().copied());
        Self {
            process: Process::spawn(&format!("aoai-operator {identity}"), &mut command),
            identity: identity.to_string(),
            admin_url: format!("http://127.0.0.1:{admin_port}"),
        }
    }

    pub fn output(&self) -> String {
        self.process.output()
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Peak resident memory (VmHWM) so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.process.peak_rss_kib()
    }

    /// Waits until `/readyz` answers 200: the webhook has its cache and a certificate.
    pub async fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.process.exited() {
                panic!(
                    "aoai-operator {} exited ({status}) before it was ready:\n{}",
                    self.identity,
                    self.output()
                );
            }
            if self
                .get("/readyz")
                .await
                .is_some_and(|(status, _)| status == 200)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "aoai-operator {} not ready within {within:?}:\n{}",
                self.identity,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of a metric on the admin listener, `name` with its labels as the exposition
    /// writes them (`None` while it does not answer or has no such series).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// The admin listener's whole `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .map(|(_, text)| text)
            .unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let request = http::Request::get(format!("{}{path}", self.admin_url))
            .body(crate::client::body(""))
            .ok()?;
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            crate::client::http_client().request(request),
        )
        .await
        .ok()?
        .ok()?;
        let status = answer.status().as_u16();
        let body = http_body_util::BodyExt::collect(answer.into_body())
            .await
            .ok()?
            .to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }

    pub async fn wait_for_output(&self, needle: &str, within: Duration) {
        self.process.wait_for_output(needle, within).await
    }

    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.process.terminate(within)
    }

    pub fn kill(&mut self) {
        self.process.kill()
    }
}
