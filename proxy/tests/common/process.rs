//! Runs the real `aoai-proxy` binary with a clean environment and captures everything it prints.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn capture(child: &mut Child) -> Arc<Mutex<String>> {
    let output = Arc::new(Mutex::new(String::new()));
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let output = output.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                output
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
    }
    output
}

/// A running proxy process; killed when dropped.
pub struct ProxyProcess {
    child: Child,
    output: Arc<Mutex<String>>,
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
        let mut child = command_on(cpu_list, &all)
            .spawn()
            .expect("start aoai-proxy");
        let output = capture(&mut child);
        Self {
            url: format!("http://127.0.0.1:{port}"),
            admin_url: format!("http://127.0.0.1:{admin_port}"),
            child,
            output,
        }
    }

    /// The process's threads, from `/proc/<pid>/task`.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .map_or(0, |tasks| tasks.count())
    }

    /// Waits until `/health` answers 200 on the admin port.
    pub async fn wait_healthy(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
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
        self.output.lock().unwrap().clone()
    }

    /// Waits until the output contains `needle`.
    pub async fn wait_for_output(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.output().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in output within {within:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "aoai-proxy did not exit after SIGTERM:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let mut child = command(&all).spawn().expect("start aoai-proxy");
    let output = capture(&mut child);
    let deadline = Instant::now() + within;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "aoai-proxy kept running with {vars:?}:\n{}",
                output.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let the reader threads drain the pipes.
    std::thread::sleep(Duration::from_millis(50));
    let text = output.lock().unwrap().clone();
    (status, text)
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
