//! `aoai-proxy`: configured by environment variables only (see `--help`), like the sidecars it
//! replaces.

use std::process::ExitCode;

use aoai_proxy::config::{Config, ENV_VARS};
use aoai_proxy::server::shutdown_signal;
use aoai_proxy::{Proxy, logging};
use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Forwards every request to Azure OpenAI with an Entra ID token (client certificate, client secret, workload identity or managed identity).",
    long_about = None,
    after_help = environment_help(),
    term_width = 0,
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Wait until the proxy on this host answers /health with 200 on its admin port
    /// (AOAI_PROXY_ADMIN_PORT), then exit 0; exit 1 after the timeout. A regular (non-native)
    /// sidecar runs this as its postStart hook so that the application starts after the proxy.
    WaitReady {
        /// How long to wait.
        #[arg(long, default_value = "120s", value_parser = aoai_proxy::units::parse_duration)]
        timeout: std::time::Duration,
    },
}

fn environment_help() -> String {
    let mut text = String::from("Environment variables (an empty value counts as unset):\n");
    for var in ENV_VARS {
        text.push_str(&format!("  {}\n      {}", var.name, var.help));
        if let Some(default) = var.default {
            text.push_str(&format!(" [default: {default}]"));
        }
        text.push('\n');
    }
    text
}

fn main() -> ExitCode {
    if let Some(Command::WaitReady { timeout }) = Cli::parse().command {
        return wait_ready(timeout);
    }
    let config = match Config::from_process_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("aoai-proxy: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = logging::init("AOAI_PROXY_LOG_LEVEL", &config.log_level, config.log_format) {
        eprintln!("aoai-proxy: configuration error: {e}");
        return ExitCode::from(2);
    }
    aoai_proxy::panics::install_hook();
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("aoai-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match Proxy::build(&config).await {
            Ok(proxy) => {
                proxy.serve(shutdown_signal()).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("cannot start: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// One thread when one CPU is available (`available_parallelism`: a CPU limit below 2 cores, or
/// `taskset`), where tokio's multi-threaded scheduler would only add cross-thread hand-offs to
/// every request; else one worker per CPU.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let worker_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if worker_threads > 1 {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(worker_threads);
        builder
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build()
}

/// Polls `GET /health` on the local admin port with a bare HTTP/1.0 request (no runtime needed).
fn wait_ready(timeout: std::time::Duration) -> ExitCode {
    use std::io::{Read, Write};
    let port = std::env::var("AOAI_PROXY_ADMIN_PORT")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "8081".into());
    let address = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let healthy = std::net::TcpStream::connect(&address).is_ok_and(|mut stream| {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let mut answer = [0u8; 12];
            stream
                .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .and_then(|()| stream.read_exact(&mut answer))
                .is_ok_and(|()| answer.ends_with(b" 200"))
        });
        if healthy {
            return ExitCode::SUCCESS;
        }
        if std::time::Instant::now() >= deadline {
            eprintln!("aoai-proxy: {address}/health did not answer 200 within {timeout:?}");
            return ExitCode::FAILURE;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
