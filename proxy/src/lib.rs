//! aoai-proxy: a sidecar that forwards every request to Azure OpenAI with an Entra ID token.
//!
//! The binary reads its [`config::Config`] from the environment and calls [`Proxy::build`], then
//! [`Proxy::serve`]. Tests and benchmarks build the same [`Proxy`] in-process, on port 0.

pub(crate) mod backends;
pub(crate) mod body;
pub mod credentials;
pub mod egress;
pub(crate) mod error;
pub(crate) mod forward;
pub mod headers;
pub(crate) mod health;
pub mod inbound_auth;
pub mod logging;
pub(crate) mod metrics;
pub mod panics;
pub(crate) mod replay;
pub mod server;
pub mod tls;
pub mod token;
pub mod traces;
pub(crate) mod upstream;
pub(crate) mod usage;
pub(crate) mod websocket;

/// The configuration and its units live in the contract crate, which the operator shares.
pub use aoai_proxy_contract::{config, units};
pub use aoai_runtime::file_watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::config::Config;
use crate::credentials::{AcquireError, Credential, IdentityHttp};
use crate::forward::Forwarder;
use crate::inbound_auth::{InboundAuth, KeysFileError};
use crate::metrics::Metrics;
use crate::server::{BindError, Server};
use crate::tls::TlsError;
use crate::token::TokenSource;

/// Why the proxy could not start. Each displays as one line naming the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("AOAI_PROXY_INBOUND_KEYS_FILE: {0}")]
    KeysFile(#[from] KeysFileError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Credential(#[from] AcquireError),
    #[error(transparent)]
    Traces(#[from] traces::TracesError),
}

/// A proxy with its listeners bound, ready to serve.
pub struct Proxy {
    server: Server,
    connector: upstream::Connector,
    /// Background work (keys-file watcher, token refresher), stopped when serving ends.
    tasks: Vec<JoinHandle<()>>,
    pub token: Arc<TokenSource>,
    pub(crate) metrics: Arc<Metrics>,
    traces: Option<traces::Tracing>,
}

impl Proxy {
    /// Builds the proxy from its configuration: checks the credential's local material (a bad
    /// certificate stops the start), binds the listeners and starts the token refresher. The first
    /// token is acquired in the background; `/health` answers 503 until it is held.
    pub async fn build(config: &Config) -> Result<Self, StartError> {
        let credential = Arc::new(Credential::from_config(config)?);
        let token = Arc::new(TokenSource::new());
        let mut proxy = Self::with_token_source(config, token.clone()).await?;
        tracing::info!(
            credential = credential.kind(),
            "using {}",
            credential.describe()
        );
        let http = IdentityHttp::new(proxy.connector.clone(), config.limits.identity_timeout);
        proxy.tasks.push(tokio::spawn(credentials::refresh::run(
            credential,
            http,
            token,
            proxy.metrics.clone(),
            proxy.traces.clone(),
        )));
        Ok(proxy)
    }

    /// Builds the proxy around an existing token source (tests, benchmarks), without a refresher.
    pub async fn with_token_source(
        config: &Config,
        token: Arc<TokenSource>,
    ) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let trust = tls::Trust::load(config.extra_roots.as_deref())?;
        let egress = Arc::new(config.egress.clone());
        let connect_timeout = config.limits.connect_timeout;
        let tls = tls::client_config(trust.clone());
        let connector = upstream::connector(tls.clone(), connect_timeout, egress.clone());
        let upgrade_connector = upstream::http1_connector(tls, connect_timeout, egress);
        if let Some(proxy) = &config.egress.https {
            tracing::info!(proxy = %proxy, "https connections go through the egress proxy (NO_PROXY aside)");
        }
        let traces = config
            .traces
            .as_ref()
            .map(|traces| traces::Tracing::start(traces, connector.clone()))
            .transpose()?;
        let mut tasks = vec![tokio::spawn(trust.watch())];
        let auth = if config.inbound.enabled() {
            let auth = Arc::new(InboundAuth::new(&config.inbound)?);
            if auth.key_count() == 0 {
                tracing::warn!(
                    "inbound authentication is on but no key is configured: every request will be rejected"
                );
            }
            tasks.push(tokio::spawn(auth.clone().watch_file()));
            Some(auth)
        } else {
            None
        };
        let backends = config
            .backends
            .iter()
            .map(|spec| {
                let client = upstream::UpstreamClient::new(
                    connector.clone(),
                    upgrade_connector.clone(),
                    &spec.upstream,
                    config.limits.pool_idle_timeout,
                );
                backends::Backend::new(spec, client, metrics.clone())
            })
            .collect();
        let forwarder = Arc::new(Forwarder {
            backends: backends::Backends::new(backends, config.failover.clone()),
            token: token.clone(),
            auth,
            metrics: metrics.clone(),
            upstream_timeout: config.limits.upstream_timeout,
            max_request_body: config.limits.max_request_body,
            sessions: Default::default(),
            traces: traces.clone(),
        });
        let server = Server::bind(
            config.listen,
            config.admin_listen,
            forwarder,
            config.limits.header_read_timeout,
            config.limits.shutdown_grace,
        )
        .await?;
        warn_about_exposure(config);
        Ok(Self {
            server,
            connector,
            tasks,
            token,
            metrics,
            traces,
        })
    }

    pub fn forward_addr(&self) -> SocketAddr {
        self.server.forward_addr()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.server.admin_addr()
    }

    /// Serves until `shutdown` resolves and open requests have finished (or the grace period ends).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        tracing::info!(
            listen = %self.forward_addr(),
            admin = %self.admin_addr(),
            worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            "aoai-proxy {} serving",
            env!("CARGO_PKG_VERSION")
        );
        self.server.serve(shutdown).await;
        for task in self.tasks {
            task.abort();
        }
        if let Some(traces) = self.traces {
            traces.shutdown().await;
        }
    }
}

/// Idle upstream connections the pool keeps at most.
pub use upstream::MAX_IDLE as UPSTREAM_MAX_IDLE;

/// The parsers of what the upstream sends, for the fuzz targets.
pub use backends::throttle_wait;
pub use usage::{Usage, UsageScanner};
pub use websocket::{is_upgrade, restore_upgrade_headers};

/// Whoever reaches the forwarding port gets Azure-authenticated calls: say so when it is open.
fn warn_about_exposure(config: &Config) {
    if !config.listen.ip().is_loopback() && !config.inbound.enabled() {
        tracing::warn!(
            listen = %config.listen,
            "the forwarding port is reachable beyond this host and no inbound key is configured: anyone who can connect gets Azure OpenAI calls made with this identity. Set HOST=127.0.0.1 (as in a pod) or configure EXPECTED_KEY / AOAI_PROXY_INBOUND_KEYS_FILE"
        );
    }
    for backend in &config.backends {
        let upstream = &backend.upstream;
        if upstream.scheme == http::uri::Scheme::HTTP && !upstream.is_loopback() {
            tracing::warn!(upstream = %upstream, "the upstream is plain http: the access token travels unencrypted");
        }
    }
}
