//! `aoai-bench`: measures aoai-proxy against a direct call and a plain nginx hop on 127.0.0.1, and
//! the webhook's `/mutate`. Run it through `scripts/bench`, which installs wrk and nginx and builds
//! in release mode. Everything it starts, it stops; nothing leaves 127.0.0.1.
//!
//! `aoai-bench --help` lists its flags; `aoai-bench upstream` and `aoai-bench webhook` run one
//! part on its own.

mod scale;
mod train;
mod upstream;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aoai_e2e::ca::TestCa;
use aoai_e2e::entra::{App, MockEntra};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

const PATH: &str = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
/// Started with `--python`.
const PYTHON_SIDECAR: &str = include_str!("../python_sidecar.py");
const BODY: &str =
    r#"{"messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":150}"#;

/// A process the harness started; killed when dropped.
struct Process(Child);

/// The processes started and not yet stopped, for [`stop_started_on_panic`].
static STARTED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn started() -> std::sync::MutexGuard<'static, Vec<u32>> {
    STARTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Process {
    fn new(child: Child) -> Self {
        started().push(child.id());
        Process(child)
    }
}

impl Drop for Process {
    /// SIGTERM first, so that a server ends as it does when deployed (and an instrumented
    /// aoai-proxy writes its profile, see `train`); SIGKILL if it is still there after 5 s.
    fn drop(&mut self) {
        started().retain(|&pid| pid != self.0.id());
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The release profile aborts on panic, so no `Drop` runs: kill what the harness started before
/// the panic ends it, or the servers would outlive it.
fn stop_started_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        for pid in started().iter() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        report(info);
    }));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `taskset -c CORE program args...` where several cores exist, else the program alone.
fn pinned(core: Option<usize>, program: &Path) -> Command {
    match core {
        Some(core) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(core.to_string()).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// What `/proc` says of a process: memory in MiB, CPU time in seconds.
struct ProcStats {
    rss: f64,
    /// Peak RSS (VmHWM).
    peak_rss: f64,
    user_s: f64,
    system_s: f64,
}

fn proc_stats(pid: u32) -> ProcStats {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and
    // 13th after ") ", in clock ticks (100 per second on Linux).
    let after = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    ProcStats {
        rss: kib("VmRSS:") / 1024.0,
        peak_rss: kib("VmHWM:") / 1024.0,
        user_s: ticks(11) / 100.0,
        system_s: ticks(12) / 100.0,
    }
}

struct Target {
    name: &'static str,
    url: String,
    pid: Option<u32>,
    /// From start to the first answer of `ready_path`.
    ready_ms: Option<f64>,
    /// MiB, once ready.
    idle_rss: Option<f64>,
}

/// What a forwarding target answers once it forwards.
const MODELS: &str = "/openai/models";

/// A server under test listening on `port`, started at `spawned`, once `ready_path` answers.
async fn server_target(
    name: &'static str,
    port: u16,
    process: &Process,
    spawned: Instant,
    ready_path: &str,
) -> Target {
    let url = format!("http://127.0.0.1:{port}");
    wait_for(&format!("{url}{ready_path}")).await;
    let ready_ms = spawned.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Target {
        name,
        url,
        pid: Some(process.0.id()),
        ready_ms: Some(ready_ms),
        idle_rss: Some(proc_stats(process.0.id()).rss),
    }
}

#[derive(Default, Clone)]
struct WrkResult {
    rps: f64,
    /// Requests completed in the run.
    requests: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Every run of one target at one concurrency.
#[derive(Default)]
struct TargetRuns {
    results: Vec<WrkResult>,
    requests: f64,
    /// User-space instructions counted by callgrind during the runs (`--instructions`).
    instructions: f64,
    /// The server's CPU time in user space and in the kernel over the runs.
    user_s: f64,
    system_s: f64,
    peak_rss: f64,
}

/// One line of the table: medians over the rounds, CPU per request over all of them.
struct Row {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// The server's CPU time (user + system) over all the rounds.
    cpu_s: Option<f64>,
    /// CPU µs per request: user + system, user, system.
    cpu_us_per_request: Option<(f64, f64, f64)>,
    peak_rss: Option<f64>,
}

impl TargetRuns {
    fn row(&self) -> Row {
        let pick = |f: fn(&WrkResult) -> f64| {
            let mut values: Vec<f64> = self.results.iter().map(f).collect();
            median(&mut values)
        };
        let measured = self.peak_rss > 0.0;
        Row {
            rps: pick(|r| r.rps),
            p50_us: pick(|r| r.p50_us),
            p99_us: pick(|r| r.p99_us),
            cpu_s: measured.then_some(self.user_s + self.system_s),
            cpu_us_per_request: (measured && self.requests > 0.0).then(|| {
                let per_request = |seconds: f64| seconds * 1e6 / self.requests;
                (
                    per_request(self.user_s + self.system_s),
                    per_request(self.user_s),
                    per_request(self.system_s),
                )
            }),
            peak_rss: measured.then_some(self.peak_rss),
        }
    }
}

fn parse_latency(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        (text, 1.0)
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

fn wrk(
    url: &str,
    concurrency: u64,
    duration: u64,
    core: Option<usize>,
    script: &Path,
) -> WrkResult {
    let output = pinned(core, Path::new("wrk"))
        .args([
            "-t1",
            &format!("-c{concurrency}"),
            &format!("-d{duration}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("{url}{PATH}"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run wrk (scripts/bench installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut result = WrkResult::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rps] => result.rps = rps.parse().unwrap_or(0.0),
            [count, "requests", "in", ..] => result.requests = count.parse().unwrap_or(0.0),
            ["50%", value] => result.p50_us = parse_latency(value).unwrap_or(0.0),
            ["99%", value] => result.p99_us = parse_latency(value).unwrap_or(0.0),
            _ => {}
        }
    }
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("warning: wrk reported errors against {url}:\n{text}");
    }
    result
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The order of the targets in `round`: the direct call first, then the servers, in reverse order
/// every other round so that none always follows the direct run.
fn interleaved(targets: usize, round: u64) -> impl Iterator<Item = usize> {
    let mut servers: Vec<usize> = (1..targets).collect();
    if round % 2 == 1 {
        servers.reverse();
    }
    std::iter::once(0).chain(servers)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(index).copied().unwrap_or(0.0)
}

/// Time to the first and to the last SSE chunk (ms) of a 20-chunk stream, 5 ms apart.
async fn sse_timing(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    runs: usize,
) -> (f64, f64, bool) {
    let (mut first, mut last) = (Vec::new(), Vec::new());
    let mut streamed = true;
    for _ in 0..runs {
        let request = Request::post(format!("{url}{PATH}"))
            .header("content-type", "application/json")
            .header("api-key", WRK_API_KEY)
            .body(Full::new(Bytes::from(upstream::sse_request(20, 5))))
            .unwrap();
        let started = Instant::now();
        let mut response = client.request(request).await.expect("an SSE response");
        let mut arrivals = Vec::new();
        while let Some(frame) = response.body_mut().frame().await {
            if frame.expect("a chunk").data_ref().is_some() {
                arrivals.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        // Unbuffered: the chunks arrive spread over the ~100 ms the upstream takes.
        streamed &= arrivals.len() >= 20 && arrivals[arrivals.len() - 1] - arrivals[0] > 80.0;
        first.push(arrivals[0]);
        last.push(arrivals[arrivals.len() - 1]);
    }
    (median(&mut first), median(&mut last), streamed)
}

/// Proxy memory (MiB) while `streams` SSE streams are open through it at once.
async fn memory_with_open_streams(url: &str, pid: u32, streams: usize) -> (f64, usize) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let client = client.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let request = Request::post(format!("{url}{PATH}"))
                .header("content-type", "application/json")
                .header("api-key", WRK_API_KEY)
                .body(Full::new(Bytes::from(upstream::sse_request(20, 150))))
                .unwrap();
            match client.request(request).await {
                Ok(response) => response.into_body().collect().await.is_ok(),
                Err(_) => false,
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss = proc_stats(pid).rss;
    let mut completed = 0;
    for task in tasks {
        completed += usize::from(task.await.unwrap_or(false));
    }
    (rss, completed)
}

/// nginx as a plain reverse proxy to the upstream on port `upstream`: over HTTPS when
/// `upstream_ca` (the CA to verify it with) is given, with TLS sessions reused as nginx's
/// documentation advises for a keep-alive upstream.
fn nginx_config(
    dir: &Path,
    port: u16,
    upstream: u16,
    access_log: bool,
    upstream_ca: Option<&Path>,
) -> PathBuf {
    let (scheme, upstream_tls) = match upstream_ca {
        None => ("http", String::new()),
        Some(ca) => (
            "https",
            format!(
                "proxy_ssl_trusted_certificate {};\n            proxy_ssl_verify on;\n            proxy_ssl_name localhost;\n            proxy_ssl_server_name on;\n            proxy_ssl_session_reuse on;",
                ca.display()
            ),
        ),
    };
    let config = format!(
        r#"# One process (no master) so that its CPU time and memory are those measured.
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    {access_log}
    # Upstream connections kept for good: by default nginx closes one after 1,000 requests,
    # which over HTTPS costs a TLS handshake that aoai-proxy does not make.
    upstream backend {{ server 127.0.0.1:{upstream}; keepalive 128; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port};
        client_body_temp_path {dir}/body;
        proxy_temp_path {dir}/proxy;
        location / {{
            proxy_pass {scheme}://backend;
            {upstream_tls}
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer fixed-benchmark-token";
            proxy_set_header api-key "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"#,
        dir = dir.display(),
        // Buffered as aoai-proxy buffers its request lines: written at 64 KiB or every second.
        access_log = if access_log {
            format!(
                "access_log {}/access.log combined buffer=64k flush=1s;",
                dir.display()
            )
        } else {
            "access_log off;".to_string()
        }
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config).unwrap();
    path
}

async fn wait_for(url: &str) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    // The LiteLLM proxy takes many seconds to import itself.
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Ok(response) = client.get(url.parse().unwrap()).await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not come up");
}

mod peers;
mod webhook_bench;

/// Measures aoai-proxy against a direct call, a plain nginx hop and (with `--python`) a Python
/// sidecar on 127.0.0.1, and the webhook's `/mutate`. Run it through `scripts/bench`.
#[derive(clap::Parser)]
#[command(name = "aoai-bench")]
struct Options {
    #[command(subcommand)]
    only: Option<Only>,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
    /// Runs per target and concurrency (and with `--peers` per fixed rate), interleaved (direct,
    /// aoai-proxy, nginx, direct, ...) so that a noisy neighbour slows every target alike; the
    /// tables give medians.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Open connections per wrk run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64", value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: Vec<u64>,
    /// Only the requests/s table (skips SSE, memory and webhook figures).
    #[arg(long)]
    http_only: bool,
    /// Both servers without their per-request log line (aoai-proxy at warn, nginx `access_log
    /// off`); by default both log one line per request to a file, buffered (64 KiB or every
    /// second), as they do when deployed.
    #[arg(long)]
    no_access_log: bool,
    /// The aoai-proxy binary to measure (default: the one beside aoai-bench).
    #[arg(long, value_name = "PATH", value_parser = existing_file)]
    proxy: Option<PathBuf>,
    /// A second aoai-proxy binary measured beside `--proxy`, as the target `aoai-proxy-plain`:
    /// `scripts/bench` passes the plain release build (no PGO profile), the build most users get.
    #[arg(long, value_name = "PATH", value_parser = existing_file)]
    plain_proxy: Option<PathBuf>,
    /// Adds the target `hyper-floor` (built beside aoai-bench from `bench/src/bin/hyper-floor.rs`):
    /// hyper's HTTP/1 server and client set up as aoai-proxy sets them up, forwarding with a fixed
    /// header and nothing else. What aoai-proxy executes beyond it is its own work.
    #[arg(long)]
    floor: bool,
    /// The LiteLLM proxy's `litellm` program: adds it as a target, configured for the mock Azure
    /// OpenAI deployment with an Entra ID token from workload identity, exchanged at the mock
    /// Entra ID (not with `--instructions`).
    #[arg(long, value_name = "PATH", value_parser = existing_file)]
    litellm: Option<PathBuf>,
    /// agentgateway's binary (`agentgateway`, built from its source): adds it as two targets,
    /// configured for the mock Azure OpenAI deployment with an Entra ID token from workload
    /// identity, exchanged at the mock Entra ID: `agentgateway` reads the model and the token
    /// usage from each exchange, as aoai-proxy does, `agentgateway-passthrough` reads nothing
    /// (not with `--instructions`).
    #[arg(long, value_name = "PATH", value_parser = existing_file)]
    agentgateway: Option<PathBuf>,
    /// The comparison with the peers: after the tables, every target at fixed request rates
    /// (open loop), its memory with 1,000 open streams, and a summary against the direct call,
    /// also written as CSV to `--csv`.
    #[arg(long)]
    peers: bool,
    /// Request rates of `--peers`' open-loop runs, comma-separated (10 s each, 32 connections;
    /// `--rounds` runs per target and rate, interleaved; the summary takes the median run).
    #[arg(long, value_delimiter = ',', default_value = "1000,3000", value_parser = clap::value_parser!(u64).range(1..))]
    rates: Vec<u64>,
    /// Where `--peers` writes its CSV.
    #[arg(long, value_name = "PATH")]
    csv: Option<PathBuf>,
    /// A Python with aiohttp: adds `python_sidecar.py`, the kind of sidecar aoai-proxy replaces,
    /// as a target (not with `--instructions`).
    #[arg(long, value_name = "PATH", value_parser = existing_file)]
    python: Option<PathBuf>,
    /// Runs aoai-proxy and nginx under `valgrind --tool=callgrind` and reports the user-space
    /// instructions each executes per request: a figure that, unlike time, does not depend on
    /// what else the machine is doing. Implies `--http-only`; the dumps stay in the scratch
    /// directory it prints, for `callgrind_annotate`.
    #[arg(long)]
    instructions: bool,
    /// The mock upstream over HTTPS (HTTP/1.1, a certificate from a test CA that the servers
    /// trust), as Azure OpenAI is reached when deployed, instead of cleartext. Implies
    /// `--http-only`; not with `--floor`, `--litellm` or `--peers`.
    #[arg(long, conflicts_with_all = ["floor", "litellm", "peers"])]
    upstream_tls: bool,
    /// Adds a second aoai-proxy that exports a span for every request (sampler always_on, OTLP/HTTP
    /// protobuf) to a receiver in this process: the cost of tracing, beside the proxy without it.
    #[arg(long)]
    traces: bool,
}

fn existing_file(path: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(path);
    if path.is_file() {
        Ok(path)
    } else {
        Err("no such file".into())
    }
}

/// One part of the suite on its own.
#[derive(clap::Subcommand)]
enum Only {
    /// Only the mock upstream, on a free port printed on the first line (the suite starts it as
    /// its own process).
    Upstream {
        /// Serve HTTPS (HTTP/1.1) with this certificate chain (PEM) instead of cleartext.
        #[arg(long, value_name = "PATH", requires = "key", value_parser = existing_file)]
        certificate: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, value_name = "PATH", requires = "certificate", value_parser = existing_file)]
        key: Option<PathBuf>,
    },
    /// Only the webhook figures.
    Webhook,
    /// Drives the aoai-proxy given with `--proxy` (built with `-Cprofile-generate`) with the
    /// traffic its PGO profile is recorded from, `--duration` seconds per wrk run; run it through
    /// `scripts/pgo-profile`.
    Train,
    /// The operator in a cluster of production size, on the real control plane that
    /// `KUBEBUILDER_ASSETS` names; run it through `scripts/bench-scale`.
    Scale(scale::ScaleArgs),
}

fn main() {
    let options = <Options as clap::Parser>::parse();
    stop_started_on_panic();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match options.only {
        Some(Only::Upstream { certificate, key }) => runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            println!("{}", listener.local_addr().unwrap().port());
            match certificate.zip(key) {
                None => upstream::serve(listener).await,
                Some((certificate, key)) => {
                    let tls = upstream::http1_tls_config(&certificate, &key);
                    upstream::serve_tls(listener, std::sync::Arc::new(tls)).await
                }
            }
        }),
        Some(Only::Webhook) => runtime.block_on(webhook_bench::run(None)),
        Some(Only::Train) => {
            let Some(proxy) = options.proxy else {
                eprintln!(
                    "aoai-bench train: --proxy PATH is required (the instrumented aoai-proxy)"
                );
                std::process::exit(2);
            };
            runtime.block_on(train::run(&proxy, options.duration));
        }
        Some(Only::Scale(args)) => runtime.block_on(scale::run(args)),
        None => runtime.block_on(run(options)),
    }
}

async fn run(options: Options) {
    let _ = aoai_runtime::crypto_provider().install_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // The load generator and the mock upstream on core 0, the server under test on core 1.
    let (client_core, server_core) = if cores >= 2 {
        (Some(0), Some(1))
    } else {
        (None, None)
    };
    let exe = std::env::current_exe().unwrap();
    let bin_dir = exe.parent().unwrap().to_path_buf();
    let scratch = std::env::temp_dir().join(format!("aoai-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();

    let ca = TestCa::new();
    let mut upstream_command = pinned(client_core, &exe);
    upstream_command.arg("upstream");
    if options.upstream_tls {
        let (certificate, key) = ca.server_cert_pem();
        for (name, pem) in [("certificate", certificate), ("key", key)] {
            let path = scratch.join(format!("upstream-{name}.pem"));
            std::fs::write(&path, pem).unwrap();
            upstream_command.arg(format!("--{name}")).arg(path);
        }
    }
    let mut upstream_child = upstream_command.stdout(Stdio::piped()).spawn().unwrap();
    let mut port_line = String::new();
    {
        use std::io::BufRead;
        let stdout = upstream_child.stdout.take().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut port_line)
            .unwrap();
    }
    let _upstream = Process::new(upstream_child);
    let upstream_port: u16 = port_line.trim().parse().unwrap();
    // The servers reach an HTTPS upstream by name, as they reach Azure OpenAI; wrk's direct call
    // by address (it would try ::1 first, where nothing listens).
    let (upstream_url, direct_url) = if options.upstream_tls {
        (
            format!("https://localhost:{upstream_port}"),
            format!("https://127.0.0.1:{upstream_port}"),
        )
    } else {
        let url = format!("http://127.0.0.1:{upstream_port}");
        (url.clone(), url)
    };
    let entra = mock_entra(&ca).await;
    let proxy_port = free_port();
    let admin_port = free_port();
    let proxy_binary = options
        .proxy
        .clone()
        .unwrap_or_else(|| bin_dir.join("aoai-proxy"));
    let callgrind_out = |name: &str| {
        options
            .instructions
            .then(|| scratch.join(format!("callgrind.{name}")))
    };
    let start_proxy = |name: &str,
                       binary: &Path,
                       port: u16,
                       admin_port: u16,
                       extra: Vec<(&'static str, String)>| {
        let child = server_command(server_core, binary, callgrind_out(name))
            .env_clear()
            .envs(proxy_env(&upstream_url, port, admin_port, &entra, &ca))
            .envs(
                options
                    .no_access_log
                    .then(|| ("AOAI_PROXY_LOG_LEVEL", "warn".to_string())),
            )
            .envs(extra)
            // To a file, as nginx writes its access log.
            .stdout(std::fs::File::create(scratch.join(format!("{name}.log"))).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aoai-proxy (build it with: cargo build --release -p aoai-proxy)");
        Process::new(child)
    };
    // Each server is started and waited for before the next, so that its time to ready is its
    // own; its idle memory is read once it is ready.
    let mut servers: Vec<Process> = Vec::new();
    let mut targets = vec![Target {
        name: "direct",
        url: direct_url,
        pid: None,
        ready_ms: None,
        idle_rss: None,
    }];
    let spawned = Instant::now();
    let proxy = start_proxy(
        "aoai-proxy",
        &proxy_binary,
        proxy_port,
        admin_port,
        Vec::new(),
    );
    let proxy_pid = proxy.0.id();
    targets.push(server_target("aoai-proxy", proxy_port, &proxy, spawned, MODELS).await);
    servers.push(proxy);
    if let Some(binary) = &options.plain_proxy {
        let (port, admin_port) = (free_port(), free_port());
        let spawned = Instant::now();
        let process = start_proxy("aoai-proxy-plain", binary, port, admin_port, Vec::new());
        targets.push(server_target("aoai-proxy-plain", port, &process, spawned, MODELS).await);
        servers.push(process);
    }
    if options.floor {
        let port = free_port();
        let spawned = Instant::now();
        let child = server_command(
            server_core,
            &bin_dir.join("hyper-floor"),
            callgrind_out("hyper-floor"),
        )
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("API_BASE_URL", &upstream_url)
        .stderr(Stdio::null())
        .spawn()
        .expect("start hyper-floor (built with aoai-bench: cargo build --release -p aoai-bench)");
        let process = Process::new(child);
        targets.push(server_target("hyper-floor", port, &process, spawned, MODELS).await);
        servers.push(process);
    }
    let collector = if options.traces {
        Some(aoai_e2e::otlp::Collector::counting().await)
    } else {
        None
    };
    if let Some(collector) = &collector {
        let (port, admin_port) = (free_port(), free_port());
        let spawned = Instant::now();
        let process = start_proxy(
            "aoai-proxy+traces",
            &proxy_binary,
            port,
            admin_port,
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url()),
                ("OTEL_TRACES_SAMPLER", "always_on".into()),
            ],
        );
        targets.push(server_target("aoai-proxy+traces", port, &process, spawned, MODELS).await);
        servers.push(process);
    }
    let idle_rss = targets[1].idle_rss.unwrap_or_default();

    if let Some(nginx) = which("nginx") {
        let port = free_port();
        let config = nginx_config(
            &scratch,
            port,
            upstream_port,
            !options.no_access_log,
            options.upstream_tls.then(|| ca.root_pem_path()).as_deref(),
        );
        let spawned = Instant::now();
        let child = server_command(server_core, &nginx, callgrind_out("nginx"))
            .env_clear()
            .env("HOST", "127.0.0.1")
            .args(["-e", &scratch.join("error.log").display().to_string(), "-c"])
            .arg(&config)
            .args(["-g", "daemon off;"])
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let process = Process::new(child);
        targets.push(server_target("nginx", port, &process, spawned, MODELS).await);
        servers.push(process);
    } else {
        eprintln!(
            "nginx is not installed: the nginx column is left out (scripts/bench installs it)"
        );
    }
    if let Some(python) = options.python.as_ref().filter(|_| !options.instructions) {
        let port = free_port();
        let script = scratch.join("python_sidecar.py");
        std::fs::write(&script, PYTHON_SIDECAR).unwrap();
        let spawned = Instant::now();
        let child = pinned(server_core, python)
            .env_clear()
            // aiohttp's default TLS context trusts it, for `--upstream-tls`.
            .env("SSL_CERT_FILE", ca.root_pem_path())
            .arg(&script)
            .arg(port.to_string())
            .arg(&upstream_url)
            .args(
                (!options.no_access_log)
                    .then(|| scratch.join("python-access.log").display().to_string()),
            )
            .stderr(Stdio::null())
            .spawn()
            .expect("start the Python sidecar (scripts/bench installs aiohttp)");
        let process = Process::new(child);
        targets.push(server_target("python-aiohttp", port, &process, spawned, MODELS).await);
        servers.push(process);
    }
    // What azure-workload-identity's webhook gives a pod: the peers' Entra ID credential.
    let token_file = scratch.join("federated-token");
    std::fs::write(&token_file, FEDERATED_TOKEN).unwrap();
    let identity = [
        ("AZURE_TENANT_ID", TENANT_ID.to_string()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_string()),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("AZURE_AUTHORITY_HOST", entra.authority()),
        ("SSL_CERT_FILE", ca.root_pem_path().display().to_string()),
    ];
    if let Some(litellm) = options.litellm.as_ref().filter(|_| !options.instructions) {
        let port = free_port();
        let config = peers::litellm_config(&scratch, &upstream_url);
        let exchanged = peers::exchanges(&entra, FEDERATED_TOKEN);
        let spawned = Instant::now();
        let child = peers::start_litellm(server_core, litellm, &config, port, &identity)
            .spawn()
            .expect("start the LiteLLM proxy (scripts/bench --peers installs it)");
        let process = Process::new(child);
        let target = server_target("litellm", port, &process, spawned, "/health/liveliness").await;
        peers::check_entra_id("LiteLLM", &target.url, &entra, FEDERATED_TOKEN, exchanged).await;
        targets.push(target);
        servers.push(process);
    }
    if let Some(agentgateway) = options
        .agentgateway
        .as_ref()
        .filter(|_| !options.instructions)
    {
        // As close to aoai-proxy's work as its configuration comes (`detect`: usage read), and as
        // a bare hop (`passthrough`: nothing read).
        for (name, route_type) in [
            ("agentgateway", "detect"),
            ("agentgateway-passthrough", "passthrough"),
        ] {
            let port = free_port();
            let upstream = upstream_url
                .trim_start_matches("http://")
                .trim_start_matches("https://");
            let config = peers::agentgateway_config(
                &scratch.join(name),
                port,
                upstream,
                options.upstream_tls.then(|| ca.root_pem_path()).as_deref(),
                route_type,
                [free_port(), free_port(), free_port()],
            );
            // To a file, as the others write their access logs.
            let log = std::fs::File::create(scratch.join(format!("{name}.log"))).unwrap();
            let exchanged = peers::exchanges(&entra, FEDERATED_TOKEN);
            let spawned = Instant::now();
            let child =
                peers::start_agentgateway(server_core, agentgateway, &config, log, &identity)
                    .spawn()
                    .expect("start agentgateway");
            let process = Process::new(child);
            let target = server_target(name, port, &process, spawned, MODELS).await;
            peers::check_entra_id(name, &target.url, &entra, FEDERATED_TOKEN, exchanged).await;
            targets.push(target);
            servers.push(process);
        }
    }

    let script = wrk_script(&scratch);

    println!(
        "aoai-bench: {cores} cores; load generator and mock upstream on core {client_core:?}, server under test on core {server_core:?}; wrk -t1; {} rounds of {} s per target and concurrency, interleaved; medians; POST {PATH}, ~1 KB JSON answer; upstream {}; access logs {}",
        options.rounds,
        options.duration,
        if options.upstream_tls {
            "over HTTPS (HTTP/1.1, TLS sessions kept alive)"
        } else {
            "cleartext HTTP/1.1"
        },
        if options.no_access_log {
            "off"
        } else {
            "on (one line per request, to a file, buffered: 64 KiB or every second)"
        },
    );
    println!();
    println!(
        "| target | concurrency | requests/s | p50 µs | p99 µs | added p50 µs | added p99 µs | rps vs nginx | CPU s | CPU µs per request (user + system) | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut instruction_rows = Vec::new();
    let mut figures: Vec<peers::PeerFigures> = targets
        .iter()
        .map(|t| peers::PeerFigures {
            name: t.name.to_string(),
            idle_rss: t.idle_rss,
            ready_ms: t.ready_ms,
            ..Default::default()
        })
        .collect();
    for &concurrency in &options.concurrency {
        let mut runs: Vec<TargetRuns> = targets.iter().map(|_| TargetRuns::default()).collect();
        if options.instructions {
            // Connections to the upstream opened before counting, as a server that has run a
            // while has them: in a few thousand requests under callgrind, opening them (a TLS
            // handshake each, with `--upstream-tls`) would weigh as it never does in service.
            // One run as long as a counted one: callgrind makes each handshake slow.
            for target in targets.iter().filter(|t| t.pid.is_some()) {
                wrk(
                    &target.url,
                    concurrency,
                    options.duration,
                    client_core,
                    &script,
                );
            }
        }
        for round in 0..options.rounds {
            for index in interleaved(targets.len(), round) {
                let target = &targets[index];
                let before = target.pid.map(proc_stats);
                if let (true, Some(pid)) = (options.instructions, target.pid) {
                    callgrind_control("-z", pid);
                }
                let result = wrk(
                    &target.url,
                    concurrency,
                    options.duration,
                    client_core,
                    &script,
                );
                if let Some((pid, before)) = target.pid.zip(before) {
                    let after = proc_stats(pid);
                    runs[index].user_s += after.user_s - before.user_s;
                    runs[index].system_s += after.system_s - before.system_s;
                    runs[index].peak_rss = after.peak_rss;
                }
                if let (true, Some(pid)) = (options.instructions, target.pid) {
                    callgrind_control("-d", pid);
                    runs[index].instructions +=
                        last_dump_instructions(&scratch, target.name).unwrap_or(f64::NAN);
                }
                runs[index].requests += result.requests;
                runs[index].results.push(result);
            }
        }
        let rows: Vec<Row> = runs.iter().map(TargetRuns::row).collect();
        let direct = &rows[0];
        let nginx_rps = targets
            .iter()
            .position(|t| t.name == "nginx")
            .map(|i| rows[i].rps);
        if options.instructions {
            instruction_rows.extend(
                targets
                    .iter()
                    .zip(&runs)
                    .filter(|(t, _)| t.pid.is_some())
                    .map(|(t, r)| (t.name, concurrency, r.requests, r.instructions / r.requests)),
            );
        }
        for ((target, row), figures) in targets.iter().zip(&rows).zip(&mut figures) {
            let is_direct = target.pid.is_none();
            figures.closed.push(peers::ClosedLoop {
                concurrency,
                rps: row.rps,
                added_p50_us: row.p50_us - direct.p50_us,
                added_p99_us: row.p99_us - direct.p99_us,
                cpu_us_per_request: row.cpu_us_per_request.map(|c| c.0),
            });
            let added = |value: f64, base: f64| {
                if is_direct {
                    "—".to_string()
                } else {
                    format!("{:.0}", value - base)
                }
            };
            println!(
                "| {} | {concurrency} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |",
                target.name,
                row.rps,
                row.p50_us,
                row.p99_us,
                added(row.p50_us, direct.p50_us),
                added(row.p99_us, direct.p99_us),
                nginx_rps
                    .filter(|_| !is_direct)
                    .map_or("—".into(), |n| format!("{:.2}", row.rps / n)),
                row.cpu_s.map_or("—".into(), |c| format!("{c:.2}")),
                row.cpu_us_per_request
                    .map_or("—".into(), |(all, user, system)| {
                        format!("{all:.1} ({user:.1} + {system:.1})")
                    }),
                row.peak_rss.map_or("—".into(), |r| format!("{r:.1}")),
            );
        }
    }

    if options.instructions {
        println!();
        println!("User-space instructions per request (valgrind --tool=callgrind):");
        println!();
        println!("| target | concurrency | requests | instructions per request |");
        println!("|---|---|---|---|");
        for (name, concurrency, requests, per_request) in instruction_rows {
            println!("| {name} | {concurrency} | {requests:.0} | {per_request:.0} |");
        }
    }
    if let Some(collector) = &collector {
        // Spans still queued when the run ended are not counted.
        println!();
        println!(
            "aoai-proxy+traces: {} spans received by the OTLP receiver",
            collector.count()
        );
    }
    if options.peers && !options.instructions {
        println!();
        println!(
            "Open loop at fixed rates (10 s each, 32 connections, latency from each request's scheduled time; {} rounds, interleaved as above; the summary takes each rate's median run):",
            options.rounds
        );
        println!();
        println!(
            "| target | round | rate /s | achieved /s | p50 µs | p99 µs | failures | unsent |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        peers::pin_self(client_core);
        let mut runs = vec![vec![Vec::new(); options.rates.len()]; targets.len()];
        for round in 0..options.rounds {
            for t in interleaved(targets.len(), round) {
                for (at, &rate) in options.rates.iter().enumerate() {
                    let r = peers::fixed_rate(&targets[t].url, rate, 10, 32).await;
                    println!(
                        "| {} | {} | {rate} | {:.0} | {:.0} | {:.0} | {} | {} |",
                        targets[t].name,
                        round + 1,
                        r.achieved,
                        r.p50_us,
                        r.p99_us,
                        r.failures,
                        r.unsent
                    );
                    runs[t][at].push(r);
                }
            }
        }
        for (figures, runs) in figures.iter_mut().zip(runs) {
            figures.rates = runs.into_iter().map(peers::RateResult::median).collect();
        }
        for (target, figures) in targets.iter().zip(&mut figures) {
            if let Some(pid) = target.pid {
                figures.streams_rss = Some(memory_with_open_streams(&target.url, pid, 1000).await);
            }
        }
        let (table, csv) = peers::summary(&figures);
        println!();
        println!("Summary (requests/s as a ratio to the direct call; added latency over it):");
        println!();
        print!("{table}");
        if let Some(path) = &options.csv {
            std::fs::write(path, csv).expect("write the CSV");
        }
    }
    if options.instructions {
        // Kept for `callgrind_annotate --inclusive=yes DIR/callgrind.TARGET.N`: where the
        // instructions went (a binary built with symbols names the functions).
        println!();
        println!("callgrind dumps kept in {}", scratch.display());
        return;
    }
    if options.http_only || options.upstream_tls {
        let _ = std::fs::remove_dir_all(&scratch);
        return;
    }
    println!();
    println!("SSE, 20 chunks 5 ms apart (median of 30 streams, ms from request sent):");
    println!();
    println!(
        "| target | first chunk | last chunk | first over direct | last over direct | chunk by chunk |"
    );
    println!("|---|---|---|---|---|---|");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let mut direct_sse = (0.0, 0.0);
    for target in &targets {
        let (first, last, streamed) = sse_timing(&client, &target.url, 30).await;
        if target.name == "direct" {
            direct_sse = (first, last);
        }
        println!(
            "| {} | {first:.2} | {last:.2} | {:+.2} | {:+.2} | {} |",
            target.name,
            first - direct_sse.0,
            last - direct_sse.1,
            if streamed { "yes" } else { "NO (buffered)" }
        );
    }

    let (rss, completed) = memory_with_open_streams(&targets[1].url, proxy_pid, 1000).await;
    let peak = proc_stats(proxy_pid).peak_rss;
    println!();
    println!(
        "aoai-proxy memory: idle {idle_rss:.1} MiB; with 1,000 SSE streams open {rss:.1} MiB ({completed} of 1,000 completed); peak over the whole run {peak:.1} MiB"
    );

    println!();
    webhook_bench::run(client_core).await;
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The key every request sends in `api-key`, as the applications' SDKs do: aoai-proxy and nginx
/// drop it, the LiteLLM proxy checks it (its master key: it refuses to start without one).
const WRK_API_KEY: &str = "sk-bench-7f3c9a1e5b2d4f6a8c0e1b3d5f7a9c2e";

/// wrk's script in `dir`: a chat completion request with an `api-key`.
fn wrk_script(dir: &Path) -> PathBuf {
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"api-key\"] = \"{WRK_API_KEY}\"\n"
        ),
    )
    .unwrap();
    script
}

/// The app registration of the mock Entra ID.
const TENANT_ID: &str = "00000000-0000-0000-0000-000000000001";
const CLIENT_ID: &str = "00000000-0000-0000-0000-000000000002";
/// The service-account token the peers' workload identity presents.
const FEDERATED_TOKEN: &str = "bench-federated-service-account-token";

/// A mock Entra ID so that aoai-proxy runs exactly as deployed, with a client secret credential,
/// and the peers with workload identity (a federated token).
async fn mock_entra(ca: &TestCa) -> MockEntra {
    MockEntra::start(
        App {
            tenant_id: TENANT_ID.into(),
            client_id: CLIENT_ID.into(),
            secret: Some("bench-secret".into()),
            federated_token: Some(FEDERATED_TOKEN.into()),
            ..App::default()
        },
        ca.server_config(),
        Duration::from_secs(3600),
        aoai_e2e::tokens::TokenLedger::new(),
    )
    .await
}

/// aoai-proxy's whole environment: `upstream_url` with a client secret from `entra`, the test CA
/// trusted, both listeners on 127.0.0.1.
fn proxy_env(
    upstream_url: &str,
    port: u16,
    admin_port: u16,
    entra: &MockEntra,
    ca: &TestCa,
) -> Vec<(&'static str, String)> {
    vec![
        ("API_BASE_URL", upstream_url.to_string()),
        ("HOST", "127.0.0.1".into()),
        ("PORT", port.to_string()),
        ("AOAI_PROXY_ADMIN_HOST", "127.0.0.1".into()),
        ("AOAI_PROXY_ADMIN_PORT", admin_port.to_string()),
        ("AZURE_TENANT_ID", TENANT_ID.into()),
        ("AZURE_CLIENT_ID", CLIENT_ID.into()),
        ("AZURE_CLIENT_SECRET", "bench-secret".into()),
        ("AZURE_AUTHORITY_HOST", entra.authority()),
        ("SSL_CERT_FILE", ca.root_pem_path().display().to_string()),
    ]
}

/// The server under test, on its core, under callgrind when `callgrind_out` is given.
fn server_command(core: Option<usize>, program: &Path, callgrind_out: Option<PathBuf>) -> Command {
    match callgrind_out {
        None => pinned(core, program),
        Some(out) => {
            let mut command = pinned(core, Path::new("valgrind"));
            command
                .arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(program);
            command
        }
    }
}

/// Zeroes (`-z`) or dumps (`-d`) the counters of the callgrind process `pid`. callgrind names its
/// control pipe after the process's USER and HOST variables: both servers run with HOST=127.0.0.1
/// and no USER, and so does this.
fn callgrind_control(action: &str, pid: u32) {
    let status = Command::new("callgrind_control")
        .arg(action)
        .arg(pid.to_string())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOST", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run callgrind_control (Debian package valgrind)");
    assert!(status.success(), "callgrind_control {action} {pid} failed");
}

/// The instruction count of the newest `callgrind.NAME.N` dump in `dir`.
fn last_dump_instructions(dir: &Path, name: &str) -> Option<f64> {
    let prefix = format!("callgrind.{name}.");
    let newest = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| {
            let file = entry.ok()?.file_name().into_string().ok()?;
            let number: u32 = file.strip_prefix(&prefix)?.parse().ok()?;
            Some((number, file))
        })
        .max()?;
    let text = std::fs::read_to_string(dir.join(newest.1)).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("summary: "))
        .and_then(|n| n.trim().parse().ok())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn flags_have_their_documented_defaults_and_typos_are_refused() {
        Options::command().debug_assert();
        let defaults = Options::try_parse_from(["aoai-bench"]).unwrap();
        assert_eq!(
            (defaults.duration, defaults.rounds, defaults.concurrency),
            (5, 5, vec![1, 16, 64])
        );
        let chosen =
            Options::try_parse_from(["aoai-bench", "--concurrency", "4,32", "--instructions"])
                .unwrap();
        assert_eq!(chosen.concurrency, [4, 32]);
        // agentgateway reaches an HTTPS upstream too (`backendTLS`).
        let over_https = Options::try_parse_from([
            "aoai-bench",
            "--upstream-tls",
            "--agentgateway",
            "Cargo.toml",
        ])
        .unwrap();
        assert!(over_https.upstream_tls && over_https.agentgateway.is_some());
        for wrong in [
            &["--concurency", "4"][..],
            &["--rounds", "0"],
            &["--concurrency", "1,x"],
            &["--proxy", "/nonexistent/aoai-proxy"],
            // hyper-floor and LiteLLM reach only a cleartext upstream; the peers' open loop
            // needs them.
            &["--upstream-tls", "--floor"],
            &["--upstream-tls", "--peers"],
            &["upstream", "--certificate", "Cargo.toml"],
        ] {
            let args = std::iter::once("aoai-bench").chain(wrong.iter().copied());
            assert!(Options::try_parse_from(args).is_err(), "{wrong:?}");
        }
    }

    #[test]
    fn the_direct_call_goes_first_and_the_servers_alternate() {
        assert_eq!(interleaved(4, 0).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(interleaved(4, 1).collect::<Vec<_>>(), [0, 3, 2, 1]);
        assert_eq!(interleaved(4, 2).collect::<Vec<_>>(), [0, 1, 2, 3]);
    }

    #[test]
    fn a_rate_is_summed_up_by_its_median_run_with_the_spread_of_the_others() {
        let run = |p99_us, unsent| peers::RateResult {
            rate: 3000,
            achieved: if unsent > 0 { 1800.0 } else { 3000.0 },
            p50_us: p99_us / 2.0,
            p99_us,
            unsent,
            runs: 1,
            p99_min_us: p99_us,
            p99_max_us: p99_us,
            ..Default::default()
        };
        let median = peers::RateResult::median(vec![run(900.0, 0), run(9000.0, 0), run(700.0, 0)]);
        assert_eq!((median.p99_us, median.p50_us), (900.0, 450.0));
        assert_eq!(
            (median.runs, median.p99_min_us, median.p99_max_us),
            (3, 700.0, 9000.0)
        );
        // A run that fell behind counts as the slowest: it is the median only when most did.
        let one_behind =
            peers::RateResult::median(vec![run(800.0, 5), run(600.0, 0), run(700.0, 0)]);
        assert_eq!((one_behind.p99_us, one_behind.unsent), (700.0, 0));
        assert_eq!(
            (one_behind.p99_min_us, one_behind.p99_max_us),
            (600.0, 700.0)
        );
        let most_behind =
            peers::RateResult::median(vec![run(800.0, 5), run(900.0, 7), run(700.0, 0)]);
        assert!(most_behind.unsent > 0);
    }
}
