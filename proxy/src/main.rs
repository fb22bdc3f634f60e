//! `aoai-proxy`: configured by environment variables only (see `--help`), like the sidecars it
//! replaces.

use std::process::ExitCode;

use aoai_proxy::config::{Config, ENV_VARS};
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
struct Cli {}

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
    Cli::parse();
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
