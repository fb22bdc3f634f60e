//! A real Kubernetes control plane on 127.0.0.1, as envtest starts it: etcd and kube-apiserver,
//! and on request kube-controller-manager (Deployments → ReplicaSets → Pods, Jobs → Pods).
//!
//! [`ControlPlane::start`] returns `None`, after printing one line saying why, when
//! `KUBEBUILDER_ASSETS` does not name a folder holding `etcd` and `kube-apiserver`. Once the
//! binaries are there, every failure is explicit and fatal: a test that asked for a control plane
//! and got a broken one must fail, not skip. The admin client authenticates with a client
//! certificate in `system:masters`; other identities use service-account tokens from the
//! TokenRequest API, as pods do. Every process started here is killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::ca::TestCa;

pub struct ControlPlane {
    processes: Vec<(&'static str, Child)>,
    pub url: String,
    pub ca: TestCa,
    /// The key that verifies the service-account tokens this control plane signs (ES256, P-256,
    /// uncompressed), as its OIDC discovery document would publish it.
    pub service_account_public_key: Vec<u8>,
    dir: tempfile::TempDir,
}

/// The project's CRD, `crds/`.
const CRD_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crds/aoai-proxy.io_azureopenaiproxies.yaml"
);

/// Creates the AzureOpenAIProxy CRD from `crds/` and waits until it is established.
pub async fn install_crd(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crd: CustomResourceDefinition =
        serde_saphyr::from_str(&std::fs::read_to_string(CRD_FILE).unwrap()).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("the apiserver accepts crds/ (a structural schema with valid CEL)");
    let established = kube::runtime::wait::await_condition(
        crds,
        "azureopenaiproxies.aoai-proxy.io",
        kube::runtime::wait::conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(30), established)
        .await
        .expect("the CRD is established in time")
        .unwrap();
}

/// The issuer of the service-account tokens this control plane signs.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://127.0.0.1/aoai-e2e";

/// Creates or updates `name` to `object` by server-side apply (field manager `aoai-e2e`), as
/// `kubectl apply --server-side` does; fails the caller on any error.
pub async fn apply<K>(api: &Api<K>, name: &str, object: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply("aoai-e2e").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"))
}

/// The Service network; the `kubernetes` Service takes its first address.
pub const SERVICE_CIDR: &str = "10.0.0.0/24";
const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";

/// Creates (or keeps) the namespace `name`.
pub async fn namespace(client: &kube::Client, name: &str) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    apply(
        &namespaces,
        name,
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .await;
}

/// What the API server answered to a create: the object stored and the warnings it sent, or the
/// refusal's message.
pub enum Admission<K> {
    Created(K, Vec<String>),
    Refused(String),
}

/// Creates `object` in `namespace` (a namespaced kind), keeping the `Warning` headers that
/// `Api::create` drops.
pub async fn create_with_warnings<K>(
    client: &kube::Client,
    namespace: &str,
    object: &K,
) -> Admission<K>
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
{
    let url = K::url_path(&(), Some(namespace));
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(kube::client::Body::from(
            serde_json::to_vec(object).unwrap(),
        ))
        .unwrap();
    let response = client.send(request).await.expect("the API server answers");
    let warnings = response
        .headers()
        .get_all(http::header::WARNING)
        .iter()
        .map(|v| warning_text(v.to_str().unwrap_or_default()))
        .collect();
    let ok = response.status().is_success();
    let body = response.into_body().collect_bytes().await.unwrap();
    if ok {
        Admission::Created(serde_json::from_slice(&body).unwrap(), warnings)
    } else {
        let status: kube::core::Status = serde_json::from_slice(&body).unwrap();
        Admission::Refused(status.message)
    }
}

/// The text of a `Warning` header (`299 - "text"`).
fn warning_text(header: &str) -> String {
    let quoted = header.splitn(3, ' ').nth(2).unwrap_or(header);
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(quoted)
        .replace("\\\"", "\"")
        .replace("\\\\", "\\")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Starts `binary` with `args`, its output in `log`.
pub(crate) fn spawn(binary: &Path, args: &[String], log: &Path) -> Child {
    let log_file = std::fs::File::create(log).expect("create log file");
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("clone log file"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
}

/// The last `lines` lines of the file at `path`.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A kubeconfig for `server`, trusting `ca_file`, authenticating with `user` (a YAML mapping).
fn kubeconfig(server: &str, ca_file: &Path, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: e2e\n  user:\n{user}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: e2e\n    namespace: default\ncurrent-context: e2e\n",
        ca_file.display()
    )
}

impl ControlPlane {
    /// The folder named by `KUBEBUILDER_ASSETS` when it holds `binaries`, or the reason not.
    pub fn assets(binaries: &[&str]) -> Result<PathBuf, String> {
        let dir = std::env::var_os("KUBEBUILDER_ASSETS")
            .map(PathBuf::from)
            .ok_or("KUBEBUILDER_ASSETS is not set")?;
        for binary in binaries {
            if !dir.join(binary).is_file() {
                return Err(format!(
                    "KUBEBUILDER_ASSETS={} holds no {binary}",
                    dir.display()
                ));
            }
        }
        Ok(dir)
    }

    /// Starts etcd and kube-apiserver, or prints why not and returns `None`.
    pub async fn start(test: &str) -> Option<Self> {
        Self::start_with(test, &[]).await
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager (the Deployment, ReplicaSet, Job,
    /// ServiceAccount and garbage-collector controllers; no scheduler or kubelet exists, so the
    /// pods they create stay Pending), or prints why not and returns `None` (setup-envtest's
    /// assets, for one, hold no kube-controller-manager).
    pub async fn start_with_controller_manager(test: &str) -> Option<Self> {
        let mut plane = Self::start_with(test, &["kube-controller-manager"]).await?;
        plane.start_controller_manager();
        Some(plane)
    }

    /// The control plane of a real node ([`crate::node`]): the apiserver listens on the pod
    /// bridge's gateway (pods reach it through the `kubernetes` Service), authorizes kubelets as
    /// nodes, gives pods service-account tokens and calls webhooks at their pods' addresses; the
    /// controller manager also runs the endpoint, namespace and root-CA controllers. `None` when
    /// `KUBEBUILDER_ASSETS` lacks the binaries, as for [`ControlPlane::start`].
    pub async fn start_for_node(test: &str) -> Option<Self> {
        let mut plane = Self::start_as(
            test,
            &["kube-controller-manager"],
            Some(crate::node::GATEWAY),
        )
        .await?;
        plane.start_controller_manager();
        Some(plane)
    }

    async fn start_with(test: &str, more: &[&str]) -> Option<Self> {
        Self::start_as(test, more, None).await
    }

    async fn start_as(test: &str, more: &[&str], node: Option<std::net::Ipv4Addr>) -> Option<Self> {
        let required: Vec<&str> = ["etcd", "kube-apiserver"]
            .iter()
            .chain(more)
            .copied()
            .collect();
        let assets = match Self::assets(&required) {
            Ok(assets) => assets,
            Err(why) => {
                println!(
                    "skipped {test}: {why} (it needs a real control plane: {})",
                    required.join(", ")
                );
                return None;
            }
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name);
        let ca = TestCa::new();
        // The `kubernetes` Service's address, as pods reach the apiserver.
        let (serving_cert, serving_key) = ca.server_cert_pem_for(&[KUBERNETES_SERVICE_IP]);
        let (admin_cert, admin_key) = ca.client_cert_pem("aoai-e2e-admin", "system:masters");
        let (kubelet_client_cert, kubelet_client_key) =
            ca.client_cert_pem("kube-apiserver-kubelet-client", "system:masters");
        let service_account_key = rcgen::KeyPair::generate().expect("service account key");
        for (name, content) in [
            ("serving.crt", serving_cert),
            ("serving.key", serving_key),
            ("admin.crt", admin_cert),
            ("admin.key", admin_key),
            ("kubelet-client.crt", kubelet_client_cert),
            ("kubelet-client.key", kubelet_client_key),
            // The apiserver verifies tokens with the public key and signs them with the private one.
            ("sa.pub", service_account_key.public_key_pem()),
            ("sa.key", service_account_key.serialize_pem()),
        ] {
            std::fs::write(path(name), content).expect("write control plane file");
        }

        let etcd_url = format!("http://127.0.0.1:{}", free_port());
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let etcd = spawn(
            &assets.join("etcd"),
            &[
                format!("--data-dir={}", path("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--name=default".into(),
                "--unsafe-no-fsync=true".into(),
            ],
            &path("etcd.log"),
        );

        let port = free_port();
        let address = node.map_or("127.0.0.1".to_string(), |ip| ip.to_string());
        let mut args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--cert-dir={}", dir.path().display()),
            format!("--tls-cert-file={}", path("serving.crt").display()),
            format!("--tls-private-key-file={}", path("serving.key").display()),
            format!("--client-ca-file={}", ca.root_pem_path().display()),
            format!("--service-account-key-file={}", path("sa.pub").display()),
            format!(
                "--service-account-signing-key-file={}",
                path("sa.key").display()
            ),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--secure-port={port}"),
            format!("--bind-address={address}"),
            format!("--advertise-address={address}"),
            // Address ranges the apiserver allocates from; no traffic leaves this machine.
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--allow-privileged=true".into(),
        ];
        if node.is_some() {
            args.extend([
                "--authorization-mode=Node,RBAC".to_string(),
                "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
                format!(
                    "--kubelet-client-certificate={}",
                    path("kubelet-client.crt").display()
                ),
                format!(
                    "--kubelet-client-key={}",
                    path("kubelet-client.key").display()
                ),
                // Webhooks and other Services are called at their pods' addresses.
                "--enable-aggregator-routing=true".into(),
            ]);
        } else {
            args.extend([
                "--authorization-mode=RBAC".to_string(),
                // Pods name no ServiceAccount that must exist first, and get no API token volume.
                "--disable-admission-plugins=ServiceAccount".into(),
            ]);
        }
        let apiserver = spawn(
            &assets.join("kube-apiserver"),
            &args,
            &path("kube-apiserver.log"),
        );
        let url = format!("https://{address}:{port}");
        let admin_user = format!(
            "    client-certificate: {}\n    client-key: {}\n",
            path("admin.crt").display(),
            path("admin.key").display()
        );
        std::fs::write(
            path("admin.kubeconfig"),
            kubeconfig(&url, &ca.root_pem_path(), &admin_user),
        )
        .expect("write the admin kubeconfig");
        let mut plane = Self {
            processes: vec![("etcd", etcd), ("kube-apiserver", apiserver)],
            url,
            ca,
            service_account_public_key: service_account_key.public_key_raw().to_vec(),
            dir,
        };
        plane.wait_ready().await;
        Some(plane)
    }

    fn start_controller_manager(&mut self) {
        let binary = Self::assets(&["kube-controller-manager"])
            .expect("checked at start")
            .join("kube-controller-manager");
        let path = |name: &str| self.dir.path().join(name);
        let (cert, key) = self.ca.client_cert_pem(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
        );
        std::fs::write(path("kcm.crt"), cert).expect("write");
        std::fs::write(path("kcm.key"), key).expect("write");
        let user = format!(
            "    client-certificate: {}\n    client-key: {}\n",
            path("kcm.crt").display(),
            path("kcm.key").display()
        );
        std::fs::write(
            path("kcm.kubeconfig"),
            kubeconfig(&self.url, &self.ca.root_pem_path(), &user),
        )
        .expect("write the controller manager's kubeconfig");
        let child = spawn(
            &binary,
            &[
                format!("--kubeconfig={}", path("kcm.kubeconfig").display()),
                "--use-service-account-credentials=true".into(),
                format!(
                    "--service-account-private-key-file={}",
                    path("sa.key").display()
                ),
                format!("--root-ca-file={}", self.ca.root_pem_path().display()),
                "--controllers=deployment,replicaset,job,garbagecollector,serviceaccount,serviceaccount-token,endpoints-controller,endpointslice-controller,namespace-controller,root-ca-certificate-publisher-controller".into(),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()),
            ],
            &path("kube-controller-manager.log"),
        );
        self.processes.push(("kube-controller-manager", child));
    }

    /// A client authenticated as a cluster admin.
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url.parse().expect("apiserver URL"));
        config.root_cert = Some(vec![self.ca.root_der().to_vec()]);
        config.auth_info.client_certificate = Some(self.file("admin.crt"));
        config.auth_info.client_key = Some(self.file("admin.key"));
        config.default_namespace = "default".into();
        kube::Client::try_from(config).expect("a client for the control plane")
    }

    /// A kubeconfig file for a client certificate (the node's components), named `name`.
    pub fn write_kubeconfig(&self, name: &str, cert_pem: &str, key_pem: &str) -> PathBuf {
        let (cert, key) = (
            self.file(&format!("{name}.crt")),
            self.file(&format!("{name}.key")),
        );
        std::fs::write(&cert, cert_pem).expect("write a client certificate");
        std::fs::write(&key, key_pem).expect("write a client key");
        let user = format!("    client-certificate: {cert}\n    client-key: {key}\n");
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        std::fs::write(
            &path,
            kubeconfig(&self.url, &self.ca.root_pem_path(), &user),
        )
        .expect("write a kubeconfig");
        path
    }

    /// The admin kubeconfig file (for processes: the operator, Helm).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// A kubeconfig file that authenticates with `token` (a service account's, as in a pod).
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        let user = format!("    token: {token}\n");
        std::fs::write(
            &path,
            kubeconfig(&self.url, &self.ca.root_pem_path(), &user),
        )
        .expect("write a token kubeconfig");
        path
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest API (what the kubelet
    /// projects into a pod), for `audiences` (the apiserver's own when empty).
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
        lifetime: Duration,
    ) -> String {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
                expiration_seconds: Some(lifetime.as_secs() as i64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let answer: TokenRequest = accounts
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"));
        answer
            .status
            .and_then(|s| s.token)
            .expect("the TokenRequest answer holds a token")
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The last lines of a process's log (`etcd`, `kube-apiserver`, `kube-controller-manager`).
    pub fn log_tail(&self, process: &str) -> String {
        tail(&self.dir.path().join(format!("{process}.log")), 30)
    }

    async fn wait_ready(&mut self) {
        let _ = aoai_runtime::crypto_provider().install_default();
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("request");
            let last = match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return,
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            for (name, child) in &mut self.processes {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{name} exited with {status}; its log ends:\n{}",
                        tail(&self.dir.path().join(format!("{name}.log")), 30)
                    );
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "kube-apiserver was not ready after 90 s (last answer: {last}); its log ends:\n{}",
                    self.log_tail("kube-apiserver")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The controller manager first, etcd last.
        for (_, child) in self.processes.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
