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
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;

use crate::forward::Forwarder;
use crate::health;
use crate::logging;
use crate::panics;

pub use aoai_runtime::{serve, shutdown_signal};

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

    /// Serves until `shutdown` resolves, then lets open requests, streams and WebSocket sessions
    /// finish within the grace period (sessions still open then are closed).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let grace = self.shutdown_grace;
        let forwarder = self.forwarder.clone();
        let forward = serve(
            "forward",
            self.forward,
            None,
            &self.builder,
            move |peer: SocketAddr| {
                let forwarder = forwarder.clone();
                let client_ip = peer.ip();
                service_fn(move |request: Request<Incoming>| {
                    let forwarder = forwarder.clone();
                    panics::contain(move || forwarder.handle(request, client_ip))
                })
            },
            stopped(),
            grace,
        );
        let forwarder = self.forwarder.clone();
        let admin = serve(
            "admin",
            self.admin,
            None,
            &self.builder,
            move |_| {
                let forwarder = forwarder.clone();
                service_fn(move |request: Request<Incoming>| {
                    let response = health::admin(&request, &forwarder.token, &forwarder.metrics);
                    async move { Ok::<_, Infallible>(response) }
                })
            },
            stopped(),
            grace,
        );
        let sessions = self.forwarder.sessions.clone();
        let sessions_end = async {
            stopped().await;
            if tokio::time::timeout(grace, sessions.closed())
                .await
                .is_err()
            {
                tracing::warn!(
                    websocket_sessions = sessions.open(),
                    "grace period over; closing the open WebSocket sessions"
                );
                sessions.close_all();
            }
        };
        let servers = async {
            tokio::join!(forward, admin, sessions_end);
        };
        tokio::pin!(servers, shutdown);
        let mut tick = timer_tick();
        let mut stopping = false;
        loop {
            tokio::select! {
                () = &mut servers => break,
                () = &mut shutdown, if !stopping => {
                    stopping = true;
                    tracing::info!(websocket_sessions = sessions.open(), grace = ?grace, "shutting down: no new connections; waiting for open requests and sessions");
                    let _ = stop_tx.send(true);
                }
                _ = tick.tick() => logging::flush_access_log(),
            }
        }
        logging::flush_access_log();
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
