//! What a team would deploy instead, on the same mocks: the LiteLLM proxy and agentgateway as
//! targets, an open-loop load at fixed request rates, and the summary table and CSV that
//! `scripts/bench --peers` turns into the README's table and plot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;

use crate::{BODY, PATH, percentile, pinned};

/// The LiteLLM proxy's configuration: one Azure OpenAI deployment at `upstream_url`, called with an
/// Entra ID token from workload identity (`oidc/azure/...`: the federated token in
/// `AZURE_FEDERATED_TOKEN_FILE` exchanged at `AZURE_AUTHORITY_HOST`, the variables
/// azure-workload-identity's webhook sets; see `start_litellm`), and the master key it requires,
/// which every request of the harness sends.
pub fn litellm_config(dir: &Path, upstream_url: &str) -> PathBuf {
    let path = dir.join("litellm.yaml");
    std::fs::write(
        &path,
        format!(
            "model_list:
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o
      api_base: {upstream_url}
      api_version: \"2024-10-21\"
      azure_ad_token: oidc/azure/api://AzureADTokenExchange
general_settings:
  master_key: {key}
litellm_settings:
  telemetry: false
  drop_params: true
",
            key = crate::WRK_API_KEY
        ),
    )
    .unwrap();
    path
}

/// The LiteLLM proxy on `port`, one worker, on `core`; offline (the model cost map it would
/// download at start is the one it ships). `identity`: the workload identity environment.
pub fn start_litellm(
    core: Option<usize>,
    litellm: &Path,
    config: &Path,
    port: u16,
    identity: &[(&str, String)],
) -> Command {
    let mut command = pinned(core, litellm);
    command
        .envs(identity.iter().map(|(name, value)| (name, value)))
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_TELEMETRY", "False")
        .env("LITELLM_LOG", "ERROR")
        .env("NO_DOCS", "True")
        .arg("--config")
        .arg(config)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--num_workers", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// agentgateway's configuration (its local file, as `agentgateway -f` reads it): one listener on
/// `port` whose one route sends everything to an Azure OpenAI backend at `upstream` (`host:port`,
/// in place of `<resource>.openai.azure.com`) as it arrives, with an Entra ID token from workload
/// identity (`backendAuth.azure`, the variables of azure-workload-identity's webhook; see
/// `start_agentgateway`). `route_type`: `detect` (the path kept, the model and the token usage
/// read from the exchange, as aoai-proxy reads them) or `passthrough` (nothing read). Its admin,
/// stats and readiness listeners on 127.0.0.1; its access log on, to stdout. Written in `dir`.
/// `upstream_ca`: the upstream speaks HTTPS with a certificate for `localhost` from this CA, which
/// agentgateway verifies.
pub fn agentgateway_config(
    dir: &Path,
    port: u16,
    upstream: &str,
    upstream_ca: Option<&Path>,
    route_type: &str,
    ports: [u16; 3],
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("agentgateway.yaml");
    let [admin, stats, readiness] = ports;
    let backend_tls = upstream_ca
        .map(|ca| {
            format!(
                "
            backendTLS:
              root: {}
              hostname: localhost",
                ca.display()
            )
        })
        .unwrap_or_default();
    std::fs::write(
        &path,
        format!(
            "config:
  adminAddr: 127.0.0.1:{admin}
  statsAddr: 127.0.0.1:{stats}
  readinessAddr: 127.0.0.1:{readiness}
  workerThreads: 1
binds:
- port: {port}
  listeners:
  - name: default
    protocol: HTTP
    routes:
    - name: azure-openai
      policies:
        backendAuth:
          azure:
            explicitConfig:
              workloadIdentity: {{}}
      backends:
      - ai:
          name: azure-openai
          hostOverride: {upstream}
          policies:
            ai:
              routes:
                \"*\": {route_type}{backend_tls}
          provider:
            azure:
              resourceName: bench
              resourceType: openAI
"
        ),
    )
    .unwrap();
    path
}

/// agentgateway on `core` with the configuration `config`. `identity`: the workload identity
/// environment. Its listener binds every address (agentgateway has no setting for it); the harness
/// calls it on 127.0.0.1.
pub fn start_agentgateway(
    core: Option<usize>,
    agentgateway: &Path,
    config: &Path,
    log: std::fs::File,
    identity: &[(&str, String)],
) -> Command {
    let mut command = pinned(core, agentgateway);
    command
        .env_clear()
        .envs(identity.iter().map(|(name, value)| (name, value)))
        .env("IPV6_ENABLED", "false")
        .arg("-f")
        .arg(config)
        .stdout(log)
        .stderr(Stdio::null());
    command
}

/// How many tokens `entra` has given for `federated_token` so far.
pub fn exchanges(entra: &aoai_e2e::entra::MockEntra, federated_token: &str) -> usize {
    entra
        .requests()
        .iter()
        .filter(|r| {
            r.outcome.is_ok()
                && r.form.get("client_assertion").map(String::as_str) == Some(federated_token)
        })
        .count()
}

/// Fails the run unless one request through the peer `name` at `url` is answered 200 and the peer
/// got its token from `entra` by presenting `federated_token` (the exchanges counted before it
/// started were `exchanged_before`): the figures must be those of the peer with Entra ID, not of
/// a fallback.
pub async fn check_entra_id(
    name: &str,
    url: &str,
    entra: &aoai_e2e::entra::MockEntra,
    federated_token: &str,
    exchanged_before: usize,
) {
    let mut sender = connect(url)
        .await
        .unwrap_or_else(|| panic!("connect to {name}"));
    let request = Request::post(PATH)
        .header("host", url.trim_start_matches("http://"))
        .header("content-type", "application/json")
        .header("api-key", crate::WRK_API_KEY)
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .unwrap_or_else(|e| panic!("an answer from {name}: {e}"));
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    assert_eq!(
        status,
        200,
        "{name} answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    assert!(
        exchanges(entra, federated_token) > exchanged_before,
        "{name} answered without exchanging its federated token at the mock Entra ID"
    );
}

/// Latency at a fixed request rate: one run, or the median of several.
#[derive(Clone, Copy, Default)]
pub struct RateResult {
    pub rate: u64,
    pub achieved: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub failures: u64,
    /// Requests still unsent when the run's time was up: the target could not keep the rate.
    pub unsent: u64,
    /// How many runs this stands for, and the lowest and highest p99 among them.
    pub runs: usize,
    pub p99_min_us: f64,
    pub p99_max_us: f64,
}

impl RateResult {
    /// The median run of several at one rate (by p99, a run that could not keep the rate counting
    /// as the slowest), with the spread of their p99: one run's tail swings more than the server
    /// does.
    pub fn median(mut runs: Vec<RateResult>) -> RateResult {
        assert!(!runs.is_empty(), "at least one run");
        runs.sort_by(|a, b| {
            (a.unsent > 0)
                .cmp(&(b.unsent > 0))
                .then(a.p99_us.total_cmp(&b.p99_us))
        });
        let kept: Vec<f64> = runs
            .iter()
            .filter(|r| r.unsent == 0)
            .map(|r| r.p99_us)
            .collect();
        let spread =
            |pick: fn(f64, f64) -> f64| kept.iter().copied().reduce(pick).unwrap_or(f64::NAN);
        RateResult {
            runs: runs.len(),
            p99_min_us: spread(f64::min),
            p99_max_us: spread(f64::max),
            ..runs[(runs.len() - 1) / 2]
        }
    }
}

async fn connect(url: &str) -> Option<SendRequest<Full<Bytes>>> {
    let authority = url.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(authority).await.ok()?;
    tcp.set_nodelay(true).ok()?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// Waits for a request's `scheduled` time; returns the time its latency counts from: the scheduled
/// time when the connection is behind (so a slow answer delays the next ones and is counted), the
/// wake-up otherwise (Tokio's timer fires up to 1 ms late: the load generator's lateness, not the
/// server's).
pub async fn turn(scheduled: Instant) -> Instant {
    if Instant::now() >= scheduled {
        scheduled
    } else {
        tokio::time::sleep_until(tokio::time::Instant::from_std(scheduled)).await;
        Instant::now()
    }
}

/// Open loop: `rate` requests/s for `seconds` over `connections` keep-alive connections, each
/// sending on its own schedule. A request's latency counts from its scheduled time whenever its
/// connection is behind, so a server that cannot keep up shows it (no coordinated omission). A
/// target that falls more than half the run behind is stopped there; what it did not send is
/// counted as unsent.
pub async fn fixed_rate(url: &str, rate: u64, seconds: u64, connections: u64) -> RateResult {
    let interval = Duration::from_nanos(1_000_000_000 * connections / rate);
    let start = Instant::now() + Duration::from_millis(200);
    let deadline = start + Duration::from_millis(1500 * seconds);
    let body = Bytes::from_static(BODY.as_bytes());
    let host: Arc<str> = url.trim_start_matches("http://").into();
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let url = url.to_string();
        let body = body.clone();
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            let count = rate * seconds / connections;
            let Some(mut sender) = connect(&url).await else {
                return (latencies, count, 0);
            };
            let offset = interval * connection as u32 / connections as u32;
            for i in 0..count {
                if Instant::now() > deadline {
                    return (latencies, failures, count - i);
                }
                let sent = turn(start + offset + interval * i as u32).await;
                let request = Request::post(PATH)
                    .header("host", &*host)
                    .header("content-type", "application/json")
                    .header("api-key", crate::WRK_API_KEY)
                    .body(Full::new(body.clone()))
                    .unwrap();
                let ok = match sender.send_request(request).await {
                    Ok(response) => {
                        response.status().is_success()
                            && response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                if ok {
                    latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                } else {
                    failures += 1;
                    match connect(&url).await {
                        Some(fresh) => sender = fresh,
                        None => break,
                    }
                }
            }
            (latencies, failures, 0)
        }));
    }
    let began = Instant::now();
    let mut latencies = Vec::new();
    let (mut failures, mut unsent) = (0, 0);
    for task in tasks {
        let (l, f, u) = task.await.unwrap();
        latencies.extend(l);
        failures += f;
        unsent += u;
    }
    let elapsed = began.elapsed().as_secs_f64().max(1e-9);
    let p99_us = percentile(&mut latencies.clone(), 0.99);
    RateResult {
        rate,
        achieved: latencies.len() as f64 / elapsed,
        p50_us: percentile(&mut latencies, 0.50),
        p99_us,
        failures,
        unsent,
        runs: 1,
        p99_min_us: p99_us,
        p99_max_us: p99_us,
    }
}

/// Puts every thread of this process on `core` (the load generator's), for the fixed-rate runs.
pub fn pin_self(core: Option<usize>) {
    if let Some(core) = core {
        let _ = Command::new("taskset")
            .args([
                "-a",
                "-p",
                "-c",
                &core.to_string(),
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null())
            .status();
    }
}

/// One target's closed-loop figures at one concurrency.
#[derive(Clone, Copy)]
pub struct ClosedLoop {
    pub concurrency: u64,
    pub rps: f64,
    pub added_p50_us: f64,
    pub added_p99_us: f64,
    pub cpu_us_per_request: Option<f64>,
}

/// One target's figures for the summary.
#[derive(Default, Clone)]
pub struct PeerFigures {
    pub name: String,
    pub closed: Vec<ClosedLoop>,
    pub rates: Vec<RateResult>,
    pub idle_rss: Option<f64>,
    pub streams_rss: Option<(f64, usize)>,
    pub ready_ms: Option<f64>,
}

/// The summary as a markdown table (ratios to the direct call) and as CSV rows.
pub fn summary(peers: &[PeerFigures]) -> (String, String) {
    let direct = &peers[0];
    let mut table = String::new();
    let mut csv = String::from("target,metric,concurrency_or_rate,value\n");
    let _ = writeln!(
        table,
        "| target | requests/s vs direct (1 / 16 / 64) | added p50 µs | added p99 µs | CPU µs per request | p99 µs at fixed rates | RSS idle / 1,000 streams MiB | ready ms |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|");
    for peer in peers {
        let join = |f: &dyn Fn(&ClosedLoop) -> String| {
            peer.closed.iter().map(f).collect::<Vec<_>>().join(" / ")
        };
        let base = |c: &ClosedLoop| {
            direct
                .closed
                .iter()
                .find(|d| d.concurrency == c.concurrency)
                .map_or(f64::NAN, |d| d.rps)
        };
        let ratio = join(&|c| format!("{:.2}", c.rps / base(c)));
        let is_direct = peer.name == direct.name;
        let added = |pick: fn(&ClosedLoop) -> f64| {
            if is_direct {
                "—".to_string()
            } else {
                join(&|c| format!("{:.0}", pick(c)))
            }
        };
        let cpu = join(&|c| {
            c.cpu_us_per_request
                .map_or("—".into(), |v| format!("{v:.1}"))
        });
        let rates = peer
            .rates
            .iter()
            .map(|r| {
                let failed = if r.failures > 0 {
                    format!(" ({} failed)", r.failures)
                } else {
                    String::new()
                };
                let spread = if r.runs > 1 {
                    format!(" ({:.0}–{:.0})", r.p99_min_us, r.p99_max_us)
                } else {
                    String::new()
                };
                if r.unsent > 0 {
                    format!("{}/s: cannot keep up ({:.0}/s)", r.rate, r.achieved)
                } else {
                    format!("{}/s: {:.0}{spread}{failed}", r.rate, r.p99_us)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let rss = match (peer.idle_rss, peer.streams_rss) {
            (Some(idle), Some((rss, done))) => format!("{idle:.1} / {rss:.1} ({done} done)"),
            (Some(idle), None) => format!("{idle:.1}"),
            _ => "—".into(),
        };
        let ready = peer.ready_ms.map_or("—".into(), |ms| format!("{ms:.0}"));
        let _ = writeln!(
            table,
            "| {} | {ratio} | {} | {} | {cpu} | {rates} | {rss} | {ready} |",
            peer.name,
            added(|c| c.added_p50_us),
            added(|c| c.added_p99_us)
        );
        for c in &peer.closed {
            let (name, n) = (&peer.name, c.concurrency);
            let _ = writeln!(csv, "{name},rps_vs_direct,{n},{:.4}", c.rps / base(c));
            let _ = writeln!(csv, "{name},added_p50_us,{n},{:.1}", c.added_p50_us);
            let _ = writeln!(csv, "{name},added_p99_us,{n},{:.1}", c.added_p99_us);
            if let Some(cpu) = c.cpu_us_per_request {
                let _ = writeln!(csv, "{name},cpu_us_per_request,{n},{cpu:.2}");
            }
        }
        for r in peer.rates.iter().filter(|r| r.unsent == 0) {
            let _ = writeln!(
                csv,
                "{},fixed_rate_p99_us,{},{:.1}",
                peer.name, r.rate, r.p99_us
            );
            let _ = writeln!(
                csv,
                "{},fixed_rate_p99_min_us,{},{:.1}",
                peer.name, r.rate, r.p99_min_us
            );
            let _ = writeln!(
                csv,
                "{},fixed_rate_p99_max_us,{},{:.1}",
                peer.name, r.rate, r.p99_max_us
            );
        }
    }
    (table, csv)
}
