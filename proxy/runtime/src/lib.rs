//! What both programs run their listeners with: the one serve loop (HTTP/1.1 and h2, optional
//! TLS, graceful shutdown with a grace period), the TLS crypto provider, the shutdown signal, the
//! watching of mounted files, and how their metrics are served.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::rustls::crypto::CryptoProvider;

pub mod file_watch;

/// The content type of `/metrics`: prometheus-client writes OpenMetrics (`info` metrics,
/// `# EOF`), which Prometheus reads only when told so; as `text/plain` it refuses the scrape.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The TLS crypto provider of both programs, their tests and the benchmark: *ring*. Every TLS
/// configuration starts from this one, so that moving to another provider (aws-lc-rs, for a
/// post-quantum key exchange; see the README's security considerations) is a change here and in
/// the workspace's features, nowhere else.
// rustls deprecates its ring provider because ring has no post-quantum key exchange; the project
// keeps ring for its smaller build and footprint (README, security considerations), so the
// deprecation is acknowledged here, once.
#[allow(deprecated)]
pub fn crypto_provider() -> CryptoProvider {
    use tokio_rustls::rustls::crypto::ring::{default_provider, kx_group};
    CryptoProvider {
        // X25519 first, as OpenSSL, Go and browsers send it (rustls's ring default puts P-384
        // first): a ClientHello carries a key share for its first group only, and ring computes a
        // P-384 one at several times X25519's cost, on every new upstream connection.
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..default_provider()
    }
}

/// How long a TLS client has to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The serve loop of every listener of both programs (the proxy's forwarding and admin ports,
/// the operator's webhook and admin ports): accepts on `listener` until `shutdown`, serving each
/// connection with `builder` (HTTP/1.1 or h2, upgrades allowed; the builder carries the header
/// read timeout) and the service `make_service` makes for its peer, over TLS when `tls` is given.
/// Accept errors (out of file descriptors) back off instead of spinning. On shutdown the listener
/// closes and open connections get `grace` to finish; then they are dropped.
pub async fn serve<M, S, B>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: &Builder<TokioExecutor>,
    make_service: M,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    M: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let service = make_service(peer);
                    let watcher = graceful.watcher();
                    match &tls {
                        None => {
                            let connection = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .into_owned();
                            tokio::spawn(async move {
                                if let Err(e) = watcher.watch(connection).await {
                                    tracing::debug!(listener = name, client = %peer, "connection ended: {e}");
                                }
                            });
                        }
                        Some(acceptor) => {
                            let (acceptor, builder) = (acceptor.clone(), builder.clone());
                            tokio::spawn(async move {
                                let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                                let stream = match handshake.await {
                                    Ok(Ok(stream)) => stream,
                                    Ok(Err(e)) => {
                                        tracing::debug!(listener = name, client = %peer, "TLS handshake failed: {e}");
                                        return;
                                    }
                                    Err(_) => return,
                                };
                                let connection = builder
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .into_owned();
                                if let Err(e) = watcher.watch(connection).await {
                                    tracing::debug!(listener = name, client = %peer, "connection ended: {e}");
                                }
                            });
                        }
                    }
                }
                Err(e) => accept_failed(e).await,
            },
        }
    }
    drop(listener);
    let open = graceful.count();
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "grace period over; closing the remaining connections"
        );
    } else if open > 0 {
        tracing::info!(
            listener = name,
            open_connections = open,
            "all connections closed"
        );
    }
}

/// Accept fails when the process runs out of file descriptors: back off instead of spinning.
/// (The operator's listeners use it too.)
async fn accept_failed(error: std::io::Error) {
    tracing::warn!("accept failed: {error}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
