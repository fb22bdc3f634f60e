//! `aoai-operator`: controller + webhook (`run`), CRD printer (`crdgen`), offline injection (`inject`).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aoai_operator::admin::{self, Admin};
use aoai_operator::crd::AzureOpenAIProxy;
use aoai_operator::lease::{self, LeaseConfig};
use aoai_operator::metrics::Metrics;
use aoai_operator::{controller, status};
use aoai_proxy::config::LogFormat;
use aoai_proxy::units::parse_duration;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::CustomResourceExt;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (on the elected leader) and the admin listener.
    Run(RunArgs),
    /// Print the AzureOpenAIProxy CustomResourceDefinition as YAML.
    Crdgen,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Args)]
struct RunArgs {
    /// Address of the admin listener: /metrics, /healthz, /readyz.
    #[arg(long, env = "AOAI_OPERATOR_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: std::net::SocketAddr,
    /// Sidecar image injected when an AzureOpenAIProxy names none.
    #[arg(long, env = "AOAI_OPERATOR_PROXY_IMAGE", default_value = concat!("ghcr.io/aoai-proxy/aoai-proxy:", env!("CARGO_PKG_VERSION")))]
    proxy_image: String,
    /// CertificateExpiring turns True this long before a client certificate expires.
    #[arg(long, env = "AOAI_OPERATOR_CERTIFICATE_EXPIRY_WINDOW", default_value = "30d", value_parser = parse_duration)]
    certificate_expiry_window: Duration,
    /// Namespace of the operator (its leader Lease lives there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "aoai-system")]
    namespace: String,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "AOAI_OPERATOR_LEASE_NAME",
        default_value = "aoai-operator"
    )]
    lease_name: String,
    /// How long a leader's Lease holds without renewal.
    #[arg(long, env = "AOAI_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// Log level or tracing filter.
    #[arg(long, env = "AOAI_OPERATOR_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(
        long,
        env = "AOAI_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: Format,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crdgen => match serde_saphyr::to_string(&AzureOpenAIProxy::crd()) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("aoai-operator: cannot serialize the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => run(args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let format = match args.log_format {
        Format::Text => LogFormat::Text,
        Format::Json => LogFormat::Json,
    };
    if let Err(e) = aoai_proxy::logging::init("AOAI_OPERATOR_LOG_LEVEL", &args.log_level, format) {
        eprintln!("aoai-operator: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("aoai-operator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args))
}

async fn serve(args: RunArgs) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!("cannot configure the Kubernetes client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = Arc::new(Metrics::new());
    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        ready: Default::default(),
    });
    let listener = match tokio::net::TcpListener::bind(args.admin_addr).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("cannot listen on {} (--admin-addr): {e}", args.admin_addr);
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(admin::serve(listener, admin.clone()));
    // Standbys are ready too: the webhook is served by every replica.
    admin.ready.store(true, Ordering::Relaxed);

    let identity = args.identity.clone().unwrap_or_else(hostname);
    let lease_config = LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.namespace.clone(),
        identity,
        duration: args.lease_duration,
        retry: args.lease_duration / 3,
    };
    let leases = lease::api(client.clone(), &lease_config);
    tracing::info!("aoai-operator {} starting", env!("CARGO_PKG_VERSION"));

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = shutdown_tx.send(true);
    });
    let shutdown = move || {
        let mut rx = shutdown_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    tokio::select! {
        () = lease::acquire(&leases, &lease_config) => {}
        () = shutdown() => return ExitCode::SUCCESS,
    }
    metrics.leader.set(1);
    let options = status::Options {
        default_image: args.proxy_image.clone(),
        expiry_window: args.certificate_expiry_window,
    };
    // On SIGTERM the controller finishes its in-flight reconciles, then the Lease is released so
    // that a standby takes over at once.
    let controller = controller::run(client.clone(), metrics.clone(), options, shutdown());
    tokio::select! {
        () = controller => {
            lease::release(&leases, &lease_config).await;
            ExitCode::SUCCESS
        }
        () = lease::hold(&leases, &lease_config) => {
            tracing::error!("leadership lost: exiting so that a fresh replica stands for election");
            ExitCode::FAILURE
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| format!("aoai-operator-{}", std::process::id()))
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
