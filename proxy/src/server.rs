//! The two listeners and their connections: forwarding on `HOST:PORT`, admin (health, metrics) on
//! its own port; HTTP/1.1 and cleartext HTTP/2 on both; graceful shutdown with a grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::forward::Forwarder;
use crate::health;
use crate::logging;

/// Largest request head (request line and headers) accepted; larger gets 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: cannot listen on {address}: {source}")]
pub struct BindError {
    pub variable: &'static str,
    pub address: SocketAddr,
    pub source: std::io::Error,
}

/// Bound listeners, ready to serve.
pub struct Server {
    forward: TcpListener,
    admin: TcpListener,
    forwarder: Arc<Forwarder>,
    builder: Builder<TokioExecutor>,
    shutdown_grace: Duration,
}

async fn bind(variable: &'static str, address: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| BindError {
            variable,
            address,
            source,
        })
}

impl Server {
    pub async fn bind(
        forward: SocketAddr,
        admin: SocketAddr,
        forwarder: Arc<Forwarder>,
        header_read_timeout: Duration,
        shutdown_grace: Duration,
    ) -> Result<Self, BindError> {
        let forward = bind("PORT", forward).await?;
        let admin = bind("AOAI_PROXY_ADMIN_PORT", admin).await?;
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .max_buf_size(MAX_HEADER_BYTES)
            // Head and body copied into one buffer and sent with one `write`: for the small heads
            // and chunks of LLM calls that costs fewer instructions than hyper's queue of buffers
            // for `writev` (about 2 % of a request, with the upstream side's alike).
            .writev(false)
            .keep_alive(true);
        builder.http2().timer(TokioTimer::new());
        Ok(Self {
            forward,
            admin,
            forwarder,
            builder,
            shutdown_grace,
        })
    }

    pub fn forward_addr(&self) -> SocketAddr {
        self.forward
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then lets open requests and streams finish within the
    /// grace period.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        let mut tick = timer_tick();
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                _ = tick.tick() => logging::flush_access_log(),
                accepted = self.forward.accept() => match accepted {
                    Ok((stream, peer)) => self.spawn_forward(stream, peer, &graceful),
                    Err(e) => accept_failed(e).await,
                },
                accepted = self.admin.accept() => match accepted {
                    Ok((stream, _)) => self.spawn_admin(stream, &graceful),
                    Err(e) => accept_failed(e).await,
                },
            }
        }
        drop(self.forward);
        drop(self.admin);
        logging::flush_access_log();
        let open = graceful.count();
        let sessions = self.forwarder.sessions.clone();
        tracing::info!(open_connections = open, websocket_sessions = sessions.open(), grace = ?self.shutdown_grace, "shutting down: no new connections; waiting for open requests and sessions");
        let drained = async {
            graceful.shutdown().await;
            sessions.closed().await;
        };
        let grace_over = tokio::time::sleep(self.shutdown_grace);
        tokio::pin!(drained, grace_over);
        loop {
            tokio::select! {
                () = &mut drained => {
                    tracing::info!("all connections closed");
                    break;
                }
                () = &mut grace_over => {
                    tracing::warn!(websocket_sessions = sessions.open(), "grace period over; closing the remaining connections and sessions");
                    sessions.close_all();
                    break;
                }
                _ = tick.tick() => logging::flush_access_log(),
            }
        }
        logging::flush_access_log();
    }

    fn spawn_forward(&self, stream: TcpStream, peer: SocketAddr, graceful: &GracefulShutdown) {
        let _ = stream.set_nodelay(true);
        let forwarder = self.forwarder.clone();
        let client_ip = peer.ip();
        let service = service_fn(move |request: Request<Incoming>| {
            forwarder.clone().handle(request, client_ip)
        });
        // With upgrades: a WebSocket handshake hands its connection to a tunnel (`websocket`).
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(client = %peer, "connection ended: {e}");
            }
        });
    }

    fn spawn_admin(&self, stream: TcpStream, graceful: &GracefulShutdown) {
        let _ = stream.set_nodelay(true);
        let forwarder = self.forwarder.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let response = health::admin(&request, &forwarder.token, &forwarder.metrics);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = self
            .builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

/// A timer that is always due within a second; each tick writes the buffered request lines. Tokio
/// wakes its time driver (an eventfd write and one more `epoll_wait`, about 5 % of a request's
/// CPU) whenever a new timer is due before the driver's next wake-up, and hyper arms the
/// header-read timeout anew for every request: with this tick pending, the next wake-up is never
/// further than a second away and arming costs no syscall.
fn timer_tick() -> tokio::time::Interval {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick
}

/// Accept fails when the process runs out of file descriptors: back off instead of spinning.
/// (The operator's listeners use it too.)
pub async fn accept_failed(error: std::io::Error) {
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
