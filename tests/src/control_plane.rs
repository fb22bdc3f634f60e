//! A real Kubernetes control plane (etcd + kube-apiserver) on 127.0.0.1, as envtest starts it.
//!
//! [`ControlPlane::start`] returns `None`, after printing one line saying why, when
//! `KUBEBUILDER_ASSETS` does not name a folder holding `etcd` and `kube-apiserver`. Once the
//! binaries are there, every failure is explicit and fatal: a test that asked for a control plane
//! and got a broken one must fail, not skip. The admin client authenticates with a client
//! certificate in `system:masters`; the serving certificate comes from a throw-away CA.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ca::TestCa;

pub struct ControlPlane {
    etcd: Child,
    apiserver: Child,
    pub url: String,
    pub ca: TestCa,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn spawn(binary: &Path, args: &[String], log: &Path) -> Child {
    let log_file = std::fs::File::create(log).expect("create log file");
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("clone log file"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl ControlPlane {
    /// The folder named by `KUBEBUILDER_ASSETS`, or the reason there is none.
    pub fn assets() -> Result<PathBuf, String> {
        let dir = std::env::var_os("KUBEBUILDER_ASSETS")
            .map(PathBuf::from)
            .ok_or("KUBEBUILDER_ASSETS is not set")?;
        for binary in ["etcd", "kube-apiserver"] {
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
        let assets = match Self::assets() {
            Ok(assets) => assets,
            Err(why) => {
                println!(
                    "skipped {test}: {why} (it needs a real control plane: etcd and kube-apiserver)"
                );
                return None;
            }
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name);
        let ca = TestCa::new();
        let (serving_cert, serving_key) = ca.server_cert_pem();
        let (admin_cert, admin_key) = ca.client_cert_pem("aoai-e2e-admin", "system:masters");
        let service_account_key = rcgen::KeyPair::generate().expect("service account key");
        for (name, content) in [
            ("serving.crt", serving_cert),
            ("serving.key", serving_key),
            ("admin.crt", admin_cert),
            ("admin.key", admin_key),
            // The apiserver verifies with the public key and signs with the private one.
            ("sa.pub", service_account_key.public_key_pem()),
            ("sa.key", service_account_key.serialize_pem()),
        ] {
            std::fs::write(path(name), content).expect("write control plane file");
        }

        let etcd_port = free_port();
        let peer_port = free_port();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
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
        let apiserver = spawn(
            &assets.join("kube-apiserver"),
            &[
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
                "--service-account-issuer=https://127.0.0.1/aoai-e2e".into(),
                format!("--secure-port={port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                // Address ranges the apiserver allocates from; no traffic goes there.
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--authorization-mode=RBAC".into(),
                "--allow-privileged=true".into(),
                // Without a controller manager no ServiceAccount "default" exists to admit pods.
                "--disable-admission-plugins=ServiceAccount".into(),
            ],
            &path("kube-apiserver.log"),
        );
        let mut plane = Self {
            etcd,
            apiserver,
            url: format!("https://127.0.0.1:{port}"),
            ca,
            dir,
        };
        plane.wait_ready().await;
        Some(plane)
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

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    async fn wait_ready(&mut self) {
        let _ = rustls::crypto::ring::default_provider().install_default();
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
            for (name, child) in [
                ("etcd", &mut self.etcd),
                ("kube-apiserver", &mut self.apiserver),
            ] {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{name} exited with {status}; its log ends:\n{}",
                        tail(&self.dir.path().join(format!("{name}.log")))
                    );
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "kube-apiserver was not ready after 90 s (last answer: {last}); its log ends:\n{}",
                    tail(&self.dir.path().join("kube-apiserver.log"))
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
