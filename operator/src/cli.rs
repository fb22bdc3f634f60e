//! The `aoai-operator` command line: controller + webhook (`run`), CRD printer (`crdgen`),
//! offline injection (`inject`). A library function, so that the end-to-end tests run the very
//! same program as a process.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::admin::{self, Admin};
use crate::crd::AzureOpenAIProxy;
use crate::lease::{self, LeaseConfig};
use crate::metrics::Metrics;
use crate::mutate::InjectOptions;
use crate::{certs, controller, status, webhook};
use aoai_proxy_contract::config::LogFormat;
use aoai_proxy_contract::units::parse_duration;
use aoai_runtime::shutdown_signal;
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
    Run(Box<RunArgs>),
    /// Print the AzureOpenAIProxy CustomResourceDefinition as YAML.
    Crdgen,
    /// Inject the sidecar into the pod templates of manifests (like `linkerd inject`): YAML in,
    /// YAML out; objects left alone pass through unchanged, with the reason on stderr.
    Inject(InjectArgs),
}

#[derive(Args)]
struct InjectArgs {
    /// Manifests to read (multi-document YAML, List kinds too); `-` for stdin.
    #[arg(default_value = "-", conflicts_with = "filename")]
    file: String,
    /// The same, as kubectl users type it: `-f deployment.yaml`.
    #[arg(short = 'f', long)]
    filename: Option<String>,
    /// A file with the AzureOpenAIProxy objects to use (repeatable). AzureOpenAIProxy objects in
    /// the input are used too; with neither, they are read from the cluster.
    #[arg(long = "proxy")]
    proxies: Vec<std::path::PathBuf>,
    /// Namespace of objects that name none.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// Sidecar image when an AzureOpenAIProxy names none (must match the operator's to get the
    /// same config hash).
    #[arg(long, env = "AOAI_OPERATOR_PROXY_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    /// Inject regular containers where the mode is Auto (clusters older than Kubernetes 1.29).
    #[arg(long)]
    no_native_sidecars: bool,
}

const DEFAULT_PROXY_IMAGE: &str =
    concat!("ghcr.io/aoai-proxy/aoai-proxy:", env!("CARGO_PKG_VERSION"));

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum CertMode {
    SelfManaged,
    Files,
}

#[derive(Clone, Copy, ValueEnum)]
enum NativeSidecars {
    Detect,
    Yes,
    No,
}

#[derive(Args)]
struct RunArgs {
    /// Address of the admin listener: /metrics, /healthz, /readyz.
    #[arg(long, env = "AOAI_OPERATOR_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: std::net::SocketAddr,
    /// Sidecar image injected when an AzureOpenAIProxy names none.
    #[arg(long, env = "AOAI_OPERATOR_PROXY_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
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
    /// Address of the webhook's HTTPS listener (POST /mutate).
    #[arg(
        long,
        env = "AOAI_OPERATOR_WEBHOOK_ADDR",
        default_value = "0.0.0.0:9443"
    )]
    webhook_addr: std::net::SocketAddr,
    /// Where the webhook's certificate comes from: `self-managed` (the operator keeps a CA and a
    /// certificate in --webhook-secret and patches the caBundle) or `files` (cert-manager or a
    /// Secret mounted at --webhook-cert-file/--webhook-key-file, reloaded when they change).
    #[arg(
        long,
        env = "AOAI_OPERATOR_WEBHOOK_CERT_MODE",
        value_enum,
        default_value = "self-managed"
    )]
    webhook_cert_mode: CertMode,
    /// Certificate file of the webhook (chain first) in `files` mode.
    #[arg(
        long,
        env = "AOAI_OPERATOR_WEBHOOK_CERT_FILE",
        default_value = "/etc/aoai-operator/tls/tls.crt"
    )]
    webhook_cert_file: std::path::PathBuf,
    /// Private key file of the webhook in `files` mode.
    #[arg(
        long,
        env = "AOAI_OPERATOR_WEBHOOK_KEY_FILE",
        default_value = "/etc/aoai-operator/tls/tls.key"
    )]
    webhook_key_file: std::path::PathBuf,
    /// Secret holding the self-managed CA and certificate (in --namespace).
    #[arg(
        long,
        env = "AOAI_OPERATOR_WEBHOOK_SECRET",
        default_value = "aoai-operator-webhook-tls"
    )]
    webhook_secret: String,
    /// The webhook's Service: the self-managed certificate is valid for its DNS names.
    #[arg(
        long,
        env = "AOAI_OPERATOR_WEBHOOK_SERVICE",
        default_value = "aoai-operator-webhook"
    )]
    webhook_service: String,
    /// More DNS names or IP addresses for the self-managed certificate (comma-separated), for a
    /// webhook reached by URL rather than through its Service.
    #[arg(long, env = "AOAI_OPERATOR_WEBHOOK_EXTRA_NAMES", value_delimiter = ',')]
    webhook_extra_names: Vec<String>,
    /// The MutatingWebhookConfiguration whose caBundle the self-managed mode keeps current.
    #[arg(
        long,
        env = "AOAI_OPERATOR_WEBHOOK_CONFIGURATION",
        default_value = "aoai-operator"
    )]
    webhook_configuration: String,
    /// Namespaces whose Secrets the controller reads (comma-separated); every namespace when
    /// empty. The chart's `rbac.secretNamespaces` sets it and grants Roles there only; a proxy
    /// elsewhere that references a Secret reports `SecretUnreadable`.
    #[arg(long, env = "AOAI_OPERATOR_SECRET_NAMESPACES", value_delimiter = ',')]
    secret_namespaces: Vec<String>,
    /// Native sidecars for `nativeSidecar: Auto`: detected from the API server's version
    /// (Kubernetes 1.29 and later) unless forced.
    #[arg(
        long,
        env = "AOAI_OPERATOR_NATIVE_SIDECARS",
        value_enum,
        default_value = "detect"
    )]
    native_sidecars: NativeSidecars,
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

/// Parses the process's arguments and runs the subcommand.
pub fn main() -> ExitCode {
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
        Command::Run(args) => run(*args),
        Command::Inject(args) => inject(args),
    }
}

fn inject(args: InjectArgs) -> ExitCode {
    use crate::inject::{inject_documents, parse, proxies_in};
    use std::io::Read;
    let fail = |message: String| {
        eprintln!("aoai-operator inject: {message}");
        ExitCode::FAILURE
    };
    let file = args.filename.as_deref().unwrap_or(&args.file);
    let mut input = String::new();
    let read = if file == "-" {
        std::io::stdin().read_to_string(&mut input).map(|_| ())
    } else {
        std::fs::read_to_string(file).map(|text| input = text)
    };
    if let Err(e) = read {
        return fail(format!("cannot read {file}: {e}"));
    }
    let documents = match parse(&input) {
        Ok(documents) => documents,
        Err(e) => return fail(format!("{file}: {e}")),
    };
    let mut proxies = proxies_in(&documents);
    for path in &args.proxies {
        match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| parse(&t))
        {
            Ok(found) => proxies.extend(proxies_in(&found)),
            Err(e) => return fail(format!("--proxy {}: {e}", path.display())),
        }
    }
    if proxies.is_empty() {
        match fetch_proxies() {
            Ok(found) => proxies = found,
            Err(e) => {
                return fail(format!(
                    "no AzureOpenAIProxy in the input or --proxy, and none could be read from the cluster: {e}"
                ));
            }
        }
    }
    let options = crate::mutate::InjectOptions {
        default_image: args.proxy_image,
        native_sidecars_supported: !args.no_native_sidecars,
    };
    let report = inject_documents(documents, &proxies, &args.namespace, &options);
    print!("{}", report.yaml);
    for note in &report.notes {
        eprintln!("{note}");
    }
    if report.denied > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Every AzureOpenAIProxy the current kubeconfig can list.
fn fetch_proxies() -> Result<Vec<AzureOpenAIProxy>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let _ = aoai_runtime::crypto_provider().install_default();
        let client = kube::Client::try_default()
            .await
            .map_err(|e| e.to_string())?;
        let api: kube::Api<AzureOpenAIProxy> = kube::Api::all(client);
        let list = api
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(list.items)
    })
}

/// Installs the log subscriber, writing to stdout; a malformed level or filter is an error naming
/// its variable.
fn init_logging(level: &str, format: LogFormat) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| {
        format!("AOAI_OPERATOR_LOG_LEVEL: {level:?} is not a log level or filter: {e}")
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(std::io::stdout);
    // Already installed (tests running the operator in-process) keeps the first.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

fn run(args: RunArgs) -> ExitCode {
    let format = match args.log_format {
        Format::Text => LogFormat::Text,
        Format::Json => LogFormat::Json,
    };
    if let Err(e) = init_logging(&args.log_level, format) {
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
    let listeners = Listeners::default();
    let code = operate(&args, &listeners).await;
    listeners.drain().await;
    code
}

/// How long requests in flight on the admin and webhook listeners may run once the operator is
/// done.
const LISTENER_GRACE: Duration = Duration::from_secs(5);

/// The operator's HTTP listeners (admin, webhook). They serve until the operator is done, so that
/// the API server keeps being answered while reconciles drain; then each stops accepting and
/// its requests in flight get [`LISTENER_GRACE`] to finish.
struct Listeners {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            stop: tokio::sync::watch::channel(false).0,
            tasks: Default::default(),
        }
    }
}

impl Listeners {
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    }

    fn spawn(&self, listener: impl std::future::Future<Output = ()> + Send + 'static) {
        let task = tokio::spawn(listener);
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(task);
    }

    async fn drain(self) {
        let _ = self.stop.send(true);
        let tasks = self
            .tasks
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for task in tasks {
            let _ = task.await;
        }
    }
}

async fn operate(args: &RunArgs, listeners: &Listeners) -> ExitCode {
    let _ = aoai_runtime::crypto_provider().install_default();
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
    listeners.spawn(admin::serve(
        listener,
        admin.clone(),
        listeners.stopped(),
        LISTENER_GRACE,
    ));
    let leading = Arc::new(AtomicBool::new(false));
    if let Err(e) = start_webhook(args, &client, &metrics, &admin, &leading, listeners).await {
        tracing::error!("{e}");
        return ExitCode::FAILURE;
    }

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
    let unready = admin.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        // Out of the Service's endpoints while the listeners still answer what is in flight.
        unready.ready.store(false, Ordering::Relaxed);
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
        () = shutdown() => {
            tracing::info!("stopped (standing by, no Lease held)");
            return ExitCode::SUCCESS;
        }
    }
    metrics.leader.set(1);
    leading.store(true, Ordering::Relaxed);
    let options = status::Options {
        default_image: args.proxy_image.clone(),
        expiry_window: args.certificate_expiry_window,
    };
    // On SIGTERM the controller finishes its in-flight reconciles (for at most SHUTDOWN_DRAIN),
    // then the Lease is released so that a standby takes over at once.
    let controller = controller::run(
        client.clone(),
        metrics.clone(),
        options,
        controller::SecretNamespaces::from_list(args.secret_namespaces.clone()),
        shutdown(),
    );
    let drain_deadline = async {
        shutdown().await;
        tokio::time::sleep(SHUTDOWN_DRAIN).await;
    };
    tokio::select! {
        () = controller => {}
        () = drain_deadline => {
            tracing::warn!("in-flight reconciles did not finish within {SHUTDOWN_DRAIN:?} of SIGTERM: exiting without them");
        }
        () = lease::hold(&leases, &lease_config) => {
            tracing::error!("leadership lost: exiting so that a fresh replica stands for election");
            return ExitCode::FAILURE;
        }
    }
    if tokio::time::timeout(SHUTDOWN_DRAIN, lease::release(&leases, &lease_config))
        .await
        .is_err()
    {
        tracing::warn!("the API server did not answer in time: the Lease expires on its own");
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// How long SIGTERM waits for in-flight reconciles, and then for the Lease's release: together
/// well within Kubernetes' default 30 s termination grace period.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// Starts the webhook on every replica: the AzureOpenAIProxy cache, the certificate (files or
/// self-managed) and the HTTPS listener. The replica is ready once it has both a certificate and
/// a synced cache.
async fn start_webhook(
    args: &RunArgs,
    client: &kube::Client,
    metrics: &Arc<Metrics>,
    admin: &Arc<Admin>,
    leading: &Arc<AtomicBool>,
    listeners: &Listeners,
) -> Result<(), String> {
    use futures_util::StreamExt;
    use kube::runtime::reflector;

    let native_sidecars_supported = match args.native_sidecars {
        NativeSidecars::Yes => true,
        NativeSidecars::No => false,
        NativeSidecars::Detect => match client.apiserver_version().await {
            Ok(info) => {
                let minor: u32 = info.minor.trim_end_matches('+').parse().unwrap_or(0);
                info.major == "1" && minor >= 29 || info.major.parse::<u32>().unwrap_or(0) > 1
            }
            Err(e) => {
                tracing::warn!(
                    "cannot read the API server version ({e}); assuming no native sidecars"
                );
                false
            }
        },
    };
    tracing::info!(
        native_sidecars_supported,
        "webhook injection mode for nativeSidecar: Auto"
    );

    let (proxies, writer) = reflector::store();
    let stream = reflector::reflector(writer, crate::proxy_watch::watch(client.clone(), None));
    tokio::spawn(stream.for_each(|_| async {}));

    let cert = Arc::new(certs::ServingCert::default());
    match args.webhook_cert_mode {
        CertMode::Files => {
            tokio::spawn(certs::watch_files(
                cert.clone(),
                args.webhook_cert_file.clone(),
                args.webhook_key_file.clone(),
                Duration::from_secs(10),
            ));
        }
        CertMode::SelfManaged => {
            let config = certs::SelfManaged {
                namespace: args.namespace.clone(),
                secret_name: args.webhook_secret.clone(),
                service_name: args.webhook_service.clone(),
                webhook_configuration: args.webhook_configuration.clone(),
                extra_names: args.webhook_extra_names.clone(),
            };
            let leading = leading.clone();
            tokio::spawn(certs::run_self_managed(
                client.clone(),
                config,
                cert.clone(),
                move || leading.load(Ordering::Relaxed),
                Duration::from_secs(300),
            ));
        }
    }
    let listener = tokio::net::TcpListener::bind(args.webhook_addr)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {} (--webhook-addr): {e}",
                args.webhook_addr
            )
        })?;
    metrics.export_fleet(proxies.clone());
    let webhook = Arc::new(webhook::Webhook {
        proxies: proxies.clone(),
        options: InjectOptions {
            default_image: args.proxy_image.clone(),
            native_sidecars_supported,
        },
        metrics: metrics.clone(),
        events: Some(kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "aoai-operator-webhook".into(),
                instance: args.identity.clone(),
            },
        )),
    });
    listeners.spawn(webhook::serve(
        listener,
        certs::server_config(cert.clone()),
        webhook,
        listeners.stopped(),
        LISTENER_GRACE,
    ));
    let admin = admin.clone();
    tokio::spawn(async move {
        let _ = proxies.wait_until_ready().await;
        while !cert.is_loaded() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!("webhook ready");
        admin.ready.store(true, Ordering::Relaxed);
    });
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| format!("aoai-operator-{}", std::process::id()))
}
