//! A real Kubernetes node on this machine, beside a [`ControlPlane`]: containerd (its own
//! configuration, directories and socket), the kubelet, kube-scheduler and kube-proxy from
//! `../shared/node`, and a pod network of its own: the `bridge` CNI plugin on a private /24 whose
//! gateway is this machine, no masquerade, no route out. Pods run for real: images unpacked by
//! containerd, containers started by runc, probes run and volumes mounted by the kubelet.
//!
//! [`Node::start`] returns `None`, after one line saying why, when `AOAI_E2E_NODE` does not name
//! the folder `../shared/node/install` prints, when the control-plane binaries are missing, or
//! when not running as root (a node needs cgroups, mounts and network namespaces). Once started,
//! every failure is fatal. Dropping the node stops every process it started and every container
//! it ran, unmounts what they mounted, removes the network namespaces, links and addresses it
//! added, and restores the kernel settings and the iptables rules as they were, also when a test
//! failed.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node as NodeObject, Pod};
use kube::api::{Api, DeleteParams, ListParams};

use crate::control_plane::{ControlPlane, free_port, spawn, tail};

/// The pod bridge's gateway: this machine, as pods see it. Mocks the pods call listen here.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 213, 7, 1);
/// The pod network.
pub const POD_CIDR: &str = "10.213.7.0/24";
/// The bridge the pods' interfaces join.
const BRIDGE: &str = "aoaie2e0";
/// The node's name.
pub const NODE_NAME: &str = "aoai-e2e-node";
/// containerd's namespace for Kubernetes.
const K8S_NAMESPACE: &str = "k8s.io";
/// The sandbox (pause) image, assembled from `../shared/node/pause`.
const PAUSE_IMAGE: &str = "registry.local/aoai-e2e/pause:1";

/// Kernel settings the kubelet and kube-proxy change at start; put back afterwards.
const SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/conf/all/route_localnet",
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
];

pub struct Node {
    processes: Vec<(&'static str, Child)>,
    pub plane: ControlPlane,
    /// Restored last, once every process is gone.
    _machine: Machine,
    dir: tempfile::TempDir,
    assets: PathBuf,
}

/// What the node changes on the machine outside its folder, as it was before: restored on drop.
/// The kernel settings, and the rules of `iptables` and `ip6tables`, before the first run.
type Baseline = (Vec<(String, String)>, Vec<String>);

struct Machine {
    sysctls: Vec<(String, String)>,
    /// `iptables-save` and `ip6tables-save` before.
    firewall: [(&'static str, String); 2],
    netns_before: BTreeSet<String>,
}

/// Puts the rules of `family` (`iptables` or `ip6tables`) back as `saved` had them: the tables it
/// holds restored, the others (created since) emptied.
fn restore_firewall(family: &str, saved: &str) {
    for table in ["filter", "nat", "mangle", "raw"] {
        if !saved.contains(&format!("*{table}\n")) {
            let _ = run(family, &["-t", table, "-F"]);
            let _ = run(family, &["-t", table, "-X"]);
        }
    }
    if saved.trim().is_empty() {
        return;
    }
    if let Ok(mut restore) = Command::new(format!("{family}-restore"))
        .stdin(Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        if let Some(mut stdin) = restore.stdin.take() {
            let _ = stdin.write_all(saved.as_bytes());
        }
        let _ = restore.wait();
    }
}

/// What a run that was killed before it could clean up left: its processes, containers, mounts,
/// folders, network namespaces, pod bridge and iptables rules.
fn clean_leftovers(assets: &Path) {
    let mut stale = processes_mentioning("/aoai-node-");
    stale.extend(pod_processes());
    for pid in &stale {
        kill(*pid);
    }
    if !stale.is_empty() {
        std::thread::sleep(Duration::from_millis(300));
    }
    remove_pod_cgroups();
    for entry in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("aoai-node-")
        {
            for point in mounts_under(&entry.path()) {
                let _ = run("umount", &["-l", &point]);
            }
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    if run("ip", &["link", "show", BRIDGE]).is_ok() {
        for name in netns().into_iter().filter(|n| n.starts_with("cni-")) {
            let _ = run("ip", &["netns", "delete", &name]);
        }
        let _ = run("ip", &["link", "delete", BRIDGE]);
        let _ = run(
            &assets.join("kube-proxy").display().to_string(),
            &["--cleanup"],
        );
        while run(
            "iptables",
            &[
                "-D", "FORWARD", "-s", POD_CIDR, "!", "-d", POD_CIDR, "-j", "DROP",
            ],
        )
        .is_ok()
        {}
    }
}

impl Machine {
    /// Records the machine's state and adds the pod bridge with the gateway's address.
    fn prepare() -> Self {
        // The state before the first run: a run that was killed could not restore it, and the
        // machine as it left it is not the state to come back to.
        let baseline = std::env::temp_dir().join("aoai-node-baseline.json");
        let saved: Option<Baseline> = std::fs::read(&baseline)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let (sysctls, firewall) = saved.unwrap_or_else(|| {
            let sysctls: Vec<(String, String)> = SYSCTLS
                .iter()
                .filter_map(|name| {
                    let value = std::fs::read_to_string(format!("/proc/sys/{name}")).ok()?;
                    Some((name.to_string(), value.trim().to_string()))
                })
                .collect();
            let firewall: Vec<String> = ["iptables", "ip6tables"]
                .iter()
                .map(|family| run(&format!("{family}-save"), &[]).unwrap_or_default())
                .collect();
            let _ = std::fs::write(
                &baseline,
                serde_json::to_vec(&(&sysctls, &firewall)).unwrap_or_default(),
            );
            (sysctls, firewall)
        });
        let machine = Self {
            sysctls,
            firewall: [
                ("iptables", firewall.first().cloned().unwrap_or_default()),
                ("ip6tables", firewall.get(1).cloned().unwrap_or_default()),
            ],
            netns_before: netns(),
        };
        must("ip", &["link", "add", BRIDGE, "type", "bridge"]);
        must(
            "ip",
            &["addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE],
        );
        must("ip", &["link", "set", BRIDGE, "up"]);
        // Pods reach this machine (their default gateway) and each other, nothing beyond: no
        // masquerade, and nothing from the pod network is forwarded elsewhere.
        must(
            "iptables",
            &[
                "-I", "FORWARD", "-s", POD_CIDR, "!", "-d", POD_CIDR, "-j", "DROP",
            ],
        );
        machine
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        for name in netns().difference(&self.netns_before) {
            let _ = run("ip", &["netns", "delete", name]);
        }
        // Pods' host-side interfaces first, then the bridge (and its address with it).
        if let Ok(links) = run("ip", &["-o", "link", "show", "master", BRIDGE]) {
            for line in links.lines() {
                let name = line.split(':').nth(1).unwrap_or("").trim();
                let name = name.split('@').next().unwrap_or("");
                if !name.is_empty() {
                    let _ = run("ip", &["link", "delete", name]);
                }
            }
        }
        let _ = run("ip", &["link", "delete", BRIDGE]);
        for (family, saved) in &self.firewall {
            restore_firewall(family, saved);
        }
        for (name, value) in &self.sysctls {
            let _ = std::fs::write(format!("/proc/sys/{name}"), value);
        }
        let _ = std::fs::remove_file(std::env::temp_dir().join("aoai-node-baseline.json"));
    }
}

fn note_skip(test: &str, why: &str) {
    println!("skipped {test}: {why} (it needs a real node: ../shared/node, as root)");
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn must(program: &str, args: &[&str]) -> String {
    run(program, args).unwrap_or_else(|e| panic!("{e}"))
}

fn netns() -> BTreeSet<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The mount points under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(String::from)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points
}

/// Processes whose command line mentions `needle` (containerd's shims name its socket).
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) && pid != std::process::id() as i32 {
            found.push(pid);
        }
    }
    found
}

/// Every process in the kubelet's pod cgroups (cgroup v1 and v2 layouts).
fn pod_processes() -> Vec<i32> {
    let mut pids = Vec::new();
    for root in [
        "/sys/fs/cgroup/pids/kubepods",
        "/sys/fs/cgroup/memory/kubepods",
        "/sys/fs/cgroup/kubepods",
    ] {
        let mut stack = vec![PathBuf::from(root)];
        while let Some(dir) = stack.pop() {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn kill(pid: i32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// Removes the kubelet's pod cgroups, deepest first (they are empty once their processes died).
fn remove_pod_cgroups() {
    for controller in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let root = controller.path().join("kubepods");
        let mut dirs = Vec::new();
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            if !dir.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
            dirs.push(dir);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The apiserver of `../shared/kube` is built from OpenShift's fork of Kubernetes, whose
/// ServiceAccount admission also projects the ConfigMap `openshift-service-ca.crt` into every
/// pod's API-access volume; OpenShift's service-CA operator publishes it in each namespace, and a
/// pod waits for it before it starts. This publishes it as that operator would (with the test CA),
/// the way kube-controller-manager publishes `kube-root-ca.crt`.
async fn publish_service_ca(client: kube::Client, ca_file: PathBuf) {
    use futures_util::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let ca = std::fs::read_to_string(ca_file).unwrap_or_default();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut changes = watcher(namespaces, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(change) = changes.next().await {
        let Ok(namespace) = change else { continue };
        let Some(name) = namespace.metadata.name else {
            continue;
        };
        let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(client.clone(), &name);
        let map = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "openshift-service-ca.crt"},
            "data": {"service-ca.crt": ca},
        });
        let _ = maps
            .patch(
                "openshift-service-ca.crt",
                &kube::api::PatchParams::apply("aoai-e2e-node").force(),
                &kube::api::Patch::Apply(map),
            )
            .await;
    }
}

impl Node {
    /// The folder of the node's binaries (`AOAI_E2E_NODE`), or why not.
    pub fn assets() -> Result<PathBuf, String> {
        let dir = std::env::var_os("AOAI_E2E_NODE")
            .map(PathBuf::from)
            .ok_or("AOAI_E2E_NODE is not set")?;
        for binary in ["kubelet", "kube-scheduler", "kube-proxy", "pause"] {
            if !dir.join(binary).is_file() {
                return Err(format!("AOAI_E2E_NODE={} holds no {binary}", dir.display()));
            }
        }
        for program in ["containerd", "runc", "ctr", "ip", "iptables-save"] {
            if run("sh", &["-c", &format!("command -v {program}")]).is_err() {
                return Err(format!(
                    "{program} is not installed (../shared/node/install adds it)"
                ));
            }
        }
        Ok(dir)
    }

    /// Starts a control plane and a node, or prints why not and returns `None`.
    pub async fn start(test: &str) -> Option<Self> {
        let assets = match Self::assets() {
            Ok(assets) => assets,
            Err(why) => {
                note_skip(test, &why);
                return None;
            }
        };
        if run("id", &["-u"]).map(|u| u.trim() == "0") != Ok(true) {
            note_skip(test, "not running as root");
            return None;
        }
        if let Err(why) =
            ControlPlane::assets(&["etcd", "kube-apiserver", "kube-controller-manager"])
        {
            note_skip(test, &why);
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("aoai-node-")
            .tempdir()
            .expect("temp dir");
        clean_leftovers(&assets);
        let machine = Machine::prepare();
        let plane = ControlPlane::start_for_node(test)
            .await
            .expect("the control-plane binaries were checked");
        let mut node = Self {
            processes: Vec::new(),
            plane,
            _machine: machine,
            dir,
            assets,
        };
        tokio::spawn(publish_service_ca(
            node.plane.client(),
            node.plane.ca.root_pem_path(),
        ));
        node.start_containerd();
        node.import_image(&node.pause_image(), PAUSE_IMAGE);
        node.start_kubelet();
        node.start_scheduler_and_proxy();
        node.wait_ready().await;
        Some(node)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn socket(&self) -> String {
        self.path("containerd/containerd.sock")
            .display()
            .to_string()
    }

    fn start_containerd(&mut self) {
        for d in [
            "containerd",
            "containerd/root",
            "containerd/state",
            "cni",
            "cni-ipam",
            "runc",
        ] {
            std::fs::create_dir_all(self.path(d)).expect("create a node folder");
        }
        let cni = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "aoai-e2e",
            "plugins": [{
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY.to_string()}]],
                    "dataDir": self.path("cni-ipam").display().to_string(),
                },
            }],
        });
        std::fs::write(self.path("cni/10-aoai-e2e.conflist"), cni.to_string())
            .expect("write the CNI configuration");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
            root = self.path("containerd/root").display(),
            state = self.path("containerd/state").display(),
            socket = self.socket(),
            runc = self.path("runc").display(),
            cni = self.path("cni").display(),
        );
        std::fs::write(self.path("containerd/config.toml"), config)
            .expect("write containerd's config");
        let child = spawn(
            Path::new("containerd"),
            &[
                "--config".into(),
                self.path("containerd/config.toml").display().to_string(),
            ],
            &self.path("containerd.log"),
        );
        self.processes.push(("containerd", child));
        let deadline = Instant::now() + Duration::from_secs(30);
        while run("ctr", &["--address", &self.socket(), "version"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 30 s:\n{}",
                tail(&self.path("containerd.log"), 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The sandbox image: `pause` alone.
    fn pause_image(&self) -> PathBuf {
        let archive = self.path("pause.tar");
        let stage = crate::image::FinalStage {
            base: "scratch".into(),
            copies: vec![("pause".into(), "/pause".into())],
            user: "65535:65535".into(),
            exposed: Vec::new(),
            entrypoint: vec!["/pause".into()],
            cmd: Vec::new(),
            labels: Default::default(),
        };
        crate::image::assemble(&stage, |_| self.assets.join("pause"), PAUSE_IMAGE, &archive);
        archive
    }

    /// `ctr` on the node's containerd, in the Kubernetes namespace.
    fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let socket = self.socket();
        let mut all = vec!["--address", &socket, "-n", K8S_NAMESPACE];
        all.extend_from_slice(args);
        run("ctr", &all)
    }

    /// Imports an image archive into the node's containerd, as `reference`.
    pub fn import_image(&self, archive: &Path, reference: &str) {
        let archive = archive.display().to_string();
        self.ctr(&["images", "import", "--no-unpack", &archive])
            .unwrap_or_else(|e| panic!("{e}"));
        let listed = self
            .ctr(&["images", "ls", "-q"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            listed
                .lines()
                .any(|l| l == reference || l.ends_with(&format!("/{reference}"))),
            "{reference} is not among the imported images:\n{listed}"
        );
    }

    fn start_kubelet(&mut self) {
        let kubelet_dir = self.path("kubelet");
        std::fs::create_dir_all(kubelet_dir.join("pki")).expect("create the kubelet's folder");
        let (cert, key) = self
            .plane
            .ca
            .client_cert_pem(&format!("system:node:{NODE_NAME}"), "system:nodes");
        let kubeconfig = self.plane.write_kubeconfig("kubelet", &cert, &key);
        let port = free_port();
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {GATEWAY}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{socket}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: {ca}
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
resolvConf: ""
staticPodPath: ""
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 4s
shutdownGracePeriod: 0s
"#,
            healthz = free_port(),
            socket = self.socket(),
            ca = self.plane.ca.root_pem_path().display(),
        );
        std::fs::write(kubelet_dir.join("config.yaml"), config)
            .expect("write the kubelet's config");
        let child = spawn(
            &self.assets.join("kubelet"),
            &[
                format!("--config={}", kubelet_dir.join("config.yaml").display()),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--root-dir={}", kubelet_dir.join("root").display()),
                format!("--cert-dir={}", kubelet_dir.join("pki").display()),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={GATEWAY}"),
                "--v=2".into(),
            ],
            &self.path("kubelet.log"),
        );
        self.processes.push(("kubelet", child));
    }

    fn start_scheduler_and_proxy(&mut self) {
        let (cert, key) = self
            .plane
            .ca
            .client_cert_pem("system:kube-scheduler", "system:kube-scheduler");
        let kubeconfig = self.plane.write_kubeconfig("scheduler", &cert, &key);
        let child = spawn(
            &self.assets.join("kube-scheduler"),
            &[
                format!("--kubeconfig={}", kubeconfig.display()),
                "--leader-elect=false".into(),
                "--v=2".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()),
            ],
            &self.path("kube-scheduler.log"),
        );
        self.processes.push(("kube-scheduler", child));

        let (cert, key) = self
            .plane
            .ca
            .client_cert_pem("system:kube-proxy", "system:node-proxier");
        let kubeconfig = self.plane.write_kubeconfig("kube-proxy", &cert, &key);
        let config = format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
mode: iptables
clusterCIDR: {POD_CIDR}
hostnameOverride: {NODE_NAME}
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
nodePortAddresses: ["{GATEWAY}/32"]
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
            kubeconfig = kubeconfig.display(),
            healthz = free_port(),
            metrics = free_port(),
        );
        std::fs::write(self.path("kube-proxy.yaml"), config).expect("write kube-proxy's config");
        let child = spawn(
            &self.assets.join("kube-proxy"),
            &[format!(
                "--config={}",
                self.path("kube-proxy.yaml").display()
            )],
            &self.path("kube-proxy.log"),
        );
        self.processes.push(("kube-proxy", child));
    }

    async fn wait_ready(&mut self) {
        let nodes: Api<NodeObject> = Api::all(self.plane.client());
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(node) = nodes.get(NODE_NAME).await {
                let ready = node
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                if ready {
                    // The kubelet registers the node tainted not-ready; the node-lifecycle
                    // controller, which is not run here, would lift the taint now.
                    let untainted = serde_json::json!({"spec": {"taints": null}});
                    nodes
                        .patch(
                            NODE_NAME,
                            &kube::api::PatchParams::default(),
                            &kube::api::Patch::Merge(untainted),
                        )
                        .await
                        .expect("lift the node's not-ready taint");
                    return;
                }
            }
            self.check_running();
            assert!(
                Instant::now() < deadline,
                "the node was not Ready within 90 s; the kubelet's log ends:\n{}",
                tail(&self.path("kubelet.log"), 40)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Fails when a node process has exited, with its log.
    pub fn check_running(&mut self) {
        for (name, child) in &mut self.processes {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{name} exited with {status}; its log ends:\n{}",
                    tail(&self.dir.path().join(format!("{name}.log")), 40)
                );
            }
        }
    }

    /// The most memory the container `id` used so far, in bytes, as its cgroup counted it (what
    /// the kernel compares with its limit); 0 when its cgroup is not found.
    pub fn memory_peak(&self, id: &str) -> u64 {
        let mut stack = vec![
            PathBuf::from("/sys/fs/cgroup/memory/kubepods"),
            PathBuf::from("/sys/fs/cgroup/kubepods"),
        ];
        while let Some(dir) = stack.pop() {
            if dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(id))
            {
                for file in ["memory.max_usage_in_bytes", "memory.peak"] {
                    if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                        return text.trim().parse().unwrap_or(0);
                    }
                }
            }
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        0
    }

    /// A node process's whole log.
    pub fn log(&self, process: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{process}.log"))).unwrap_or_default()
    }

    /// The last lines of a node process's log (`containerd`, `kubelet`, `kube-scheduler`,
    /// `kube-proxy`), or of the control plane's.
    pub fn log_tail(&self, process: &str) -> String {
        let own = self.path(&format!("{process}.log"));
        if own.exists() {
            tail(&own, 40)
        } else {
            self.plane.log_tail(process)
        }
    }

    /// Deletes every pod outside kube-system at once and waits (up to `within`) until containerd
    /// runs no container: the kubelet then has torn down their sandboxes and network namespaces.
    async fn delete_all_pods(&self, within: Duration) {
        let client = self.plane.client();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        if let Ok(list) = namespaces.list(&ListParams::default()).await {
            for namespace in list.items {
                let name = namespace.metadata.name.unwrap_or_default();
                let pods: Api<Pod> = Api::namespaced(client.clone(), &name);
                let _ = pods
                    .delete_collection(
                        &DeleteParams::default().grace_period(0),
                        &ListParams::default(),
                    )
                    .await;
            }
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let listed = self.ctr(&["containers", "ls", "-q"]).unwrap_or_default();
            if listed.trim().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops every node process and what outlived them (containers in the pod cgroups,
    /// containerd's shims), and unmounts what they mounted. The machine's network and settings
    /// are restored after, when `machine` drops.
    fn teardown(&mut self) {
        for (_, child) in self.processes.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.processes.clear();
        for pid in pod_processes() {
            kill(pid);
        }
        for pid in processes_mentioning(&self.dir.path().display().to_string()) {
            kill(pid);
        }
        std::thread::sleep(Duration::from_millis(200));
        remove_pod_cgroups();
        for point in mounts_under(self.dir.path()) {
            let _ = run("umount", &["-l", &point]);
        }
    }

    /// Stops the node and restores the machine (what dropping it does), after deleting every
    /// pod so that the kubelet tears their sandboxes down itself.
    pub async fn stop(mut self) {
        self.delete_all_pods(Duration::from_secs(30)).await;
        self.teardown();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.teardown();
    }
}
