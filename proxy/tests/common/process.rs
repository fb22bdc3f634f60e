//! Runs the real `aoai-proxy` binary with a clean environment and captures everything it prints.
#![allow(dead_code)]

use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use aoai_e2e::process::Process;

/// A free port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn command(vars: &[(&str, &str)]) -> Command {
    command_on(None, vars)
}

/// The binary, limited to the CPUs in `cpu_list` (`taskset -c`) when one is given.
fn command_on(cpu_list: Option<&str>, vars: &[(&str, &str)]) -> Command {
    let binary = env!("CARGO_BIN_EXE_aoai-proxy");
    let mut command = match cpu_list {
        Some(cpus) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", cpus, binary]);
            taskset
        }
        None => Command::new(binary),
    };
    command.env_clear();
    for (name, value) in vars {
        command.env(name, value);
    }
    command
}

/// A running proxy process; killed when dropped.
pub struct ProxyProcess {
    process: Process,
    pub url: String,
    pub admin_url: String,
}

impl ProxyProcess {
    /// Starts the binary on free loopback ports with exactly `vars` (plus HOST/PORT/admin).
    pub fn spawn(vars: &[(&str, &str)]) -> Self {
        Self::spawn_on(None, vars)
    }

    /// Like [`ProxyProcess::spawn`], limited to the CPUs in `cpu_list` (`taskset -c`) if given.
    pub fn spawn_on(cpu_list: Option<&str>, vars: &[(&str, &str)]) -> Self {
        let port = free_port().to_string();
        let admin_port = free_port().to_string();
        let mut all: Vec<(&str, &str)> = vec![
            ("HOST", "127.0.0.1"),
            ("PORT", &port),
            ("AOAI_PROXY_ADMIN_HOST", "127.0.0.1"),
            ("AOAI_PROXY_ADMIN_PORT", &admin_port),
            ("AOAI_PROXY_LOG_LEVEL", "debug"),
        ];
        all.extend_from_slice(vars);
        Self {
            process: Process::spawn("aoai-proxy", &mut command_on(cpu_list, &all)),
            url: format!("http://127.0.0.1:{port}"),
            admin_url: format!("http://127.0.0.1:{admin_port}"),
        }
    }

    /// The process's threads, from `/proc/<pid>/task`.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.process.id()))
            .map_or(0, |tasks| tasks.count())
    }

    /// Waits until `/health` answers 200 on the admin port.
    pub async fn wait_healthy(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.process.exited() {
                panic!(
                    "aoai-proxy exited ({status}) before becoming healthy:\n{}",
                    self.output()
                );
            }
            if let Ok(answer) = tokio::time::timeout(
                Duration::from_secs(2),
                try_get(&format!("{}/health", self.admin_url)),
            )
            .await
                && answer == Some(200)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "aoai-proxy not healthy within {within:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.process.output()
    }

    /// Peak resident memory (VmHWM) so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.process.peak_rss_kib()
    }

    /// Waits until the output contains `needle`.
    pub async fn wait_for_output(&self, needle: &str, within: Duration) {
        self.process.wait_for_output(needle, within).await
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.process.terminate(within)
    }
}

async fn try_get(url: &str) -> Option<u16> {
    let client = aoai_e2e::client::http_client();
    let request = http::Request::get(url)
        .body(aoai_e2e::client::body(""))
        .ok()?;
    client
        .request(request)
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Runs the binary with `vars` until it exits (it must, within `within`); returns status and output.
pub fn run_to_exit(vars: &[(&str, &str)], within: Duration) -> (ExitStatus, String) {
    let port = free_port().to_string();
    let admin_port = free_port().to_string();
    let mut all: Vec<(&str, &str)> = vec![
        ("HOST", "127.0.0.1"),
        ("PORT", &port),
        ("AOAI_PROXY_ADMIN_HOST", "127.0.0.1"),
        ("AOAI_PROXY_ADMIN_PORT", &admin_port),
    ];
    all.extend_from_slice(vars);
    let mut process = Process::spawn("aoai-proxy", &mut command(&all));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = process.exited() {
            break status;
        }
        if Instant::now() > deadline {
            panic!(
                "aoai-proxy kept running with {vars:?}:\n{}",
                process.output()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let the reader threads drain the pipes.
    std::thread::sleep(Duration::from_millis(50));
    (status, process.output())
}

/// Fails when `output` contains any of `secrets` (tokens, keys, assertions, key material).
pub fn assert_no_secrets(output: &str, secrets: &[String]) {
    for secret in secrets {
        if secret.len() >= 8 {
            assert!(
                !output.contains(secret.as_str()),
                "a secret leaked into the logs: {}…",
                &secret[..8]
            );
        }
    }
}
