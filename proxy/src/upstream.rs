//! The HTTP clients: hyper + rustls, HTTP/1.1 or HTTP/2 by ALPN, connect timeout.
//!
//! [`UpstreamClient`] carries every forwarded request to the one upstream. It keeps its own small
//! pool instead of hyper-util's general-purpose client: with a single origin there is no pool key
//! to hash, no connector to clone per request, and an HTTP/1.1 connection goes back to the pool
//! when its response body ends instead of through a task spawned per request. Measured with
//! `scripts/bench --instructions`, that removed 11–15 % of the proxy's instructions per request.
//! [`client`] (hyper-util's pooled client) serves the identity calls, which go to several hosts.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::Scheme;
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use tower_service::Service;

use crate::config::Upstream;
use crate::egress::{Egress, EgressConnector};

pub type Connector = HttpsConnector<EgressConnector>;

/// An https-or-http connector with TCP_NODELAY and a connect timeout (TCP and TLS together are
/// bounded by the caller's request timeout), through the egress proxy where `egress` says.
/// ALPN offers h2 and http/1.1 (the server picks).
pub fn connector(tls: ClientConfig, connect_timeout: Duration, egress: Arc<Egress>) -> Connector {
    build_connector(tls, connect_timeout, egress, true)
}

/// The same, offering http/1.1 only: a WebSocket handshake is an HTTP/1.1 Upgrade.
pub fn http1_connector(
    tls: ClientConfig,
    connect_timeout: Duration,
    egress: Arc<Egress>,
) -> Connector {
    build_connector(tls, connect_timeout, egress, false)
}

fn build_connector(
    tls: ClientConfig,
    connect_timeout: Duration,
    egress: Arc<Egress>,
    http2: bool,
) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    let http = EgressConnector::new(http, egress);
    if http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.wrap_connector(http)
    }
}

/// A pooled client for any host over `connector`; idle connections close after `idle_timeout`.
pub fn client<B>(connector: Connector, idle_timeout: Duration) -> Client<Connector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// Idle HTTP/1.1 connections kept for the upstream at most (a sidecar's app rarely runs more
/// calls at once; each connection idles until `AOAI_PROXY_POOL_IDLE_TIMEOUT` anyway).
pub const MAX_IDLE: usize = 64;

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No connection could be opened (TCP or TLS).
    #[error("cannot connect to the upstream")]
    Connect(#[source] BoxError),
    /// The connection failed while sending the request or reading the response head.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// The client for the one upstream: pooled keep-alive HTTP/1.1 connections, or one shared
/// HTTP/2 connection when the upstream's ALPN picks h2.
pub struct UpstreamClient<B> {
    pool: Arc<Pool<B>>,
}

struct Pool<B> {
    connector: Connector,
    /// HTTP/1.1 only, for WebSocket handshakes.
    upgrade_connector: Connector,
    /// Scheme and authority: what the connector dials, and the base of HTTP/2 request URIs.
    origin: Uri,
    /// The `Host` header of HTTP/1.1 requests (the default port left out).
    host: HeaderValue,
    idle_timeout: Duration,
    /// Idle HTTP/1.1 connections; the most recently used last.
    idle: Mutex<Vec<Idle<B>>>,
    http2: Mutex<Option<http2::SendRequest<B>>>,
}

struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

enum Sender<B> {
    Http1(http1::SendRequest<B>),
    Http2(http2::SendRequest<B>),
}

impl<B> UpstreamClient<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Must be called within a Tokio runtime: it starts the task that closes idle connections.
    pub fn new(
        connector: Connector,
        upgrade_connector: Connector,
        upstream: &Upstream,
        idle_timeout: Duration,
    ) -> Self {
        let origin = Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query("/")
            .build()
            .expect("a parsed upstream is a valid URI");
        let pool = Arc::new(Pool {
            connector,
            upgrade_connector,
            host: host_header(&origin),
            origin,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            http2: Mutex::new(None),
        });
        tokio::spawn(close_idle(Arc::downgrade(&pool)));
        Self { pool }
    }

    /// Sends `request` (its URI the upstream path and query) and returns the response head; the body
    /// streams as the caller reads it. A request that a pooled connection closed before sending
    /// is retried once on a new connection.
    ///
    /// The request comes boxed and goes down boxed: each future on the way (this one, the
    /// connection's, the caller's) would otherwise hold a copy of it, and hyper moves the caller's
    /// future, with all of them inside, several times per request.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps a second copy of its arguments in its future"
    )]
    pub fn send(
        &self,
        mut request: Box<Request<B>>,
    ) -> impl Future<Output = Result<Response<PooledBody<B>>, RequestError>> + Send + '_ {
        async move {
            let (sender, reused) = self.pool.checkout().await?;
            match self.pool.try_send(sender, request).await {
                Err(SendFailure::Unsent(back, _)) if reused => {
                    request = back;
                    // Back to the path alone, which HTTP/2 turned into an absolute URI.
                    let path = request.uri().path_and_query().cloned();
                    *request.uri_mut() = path.map_or_else(Uri::default, Uri::from);
                }
                outcome => return outcome.map_err(SendFailure::into_error),
            }
            let sender = self.pool.connect().await?;
            self.pool
                .try_send(sender, request)
                .await
                .map_err(SendFailure::into_error)
        }
    }
}

impl<B> UpstreamClient<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Sends a WebSocket handshake on a connection of its own (HTTP/1.1, never pooled: after a
    /// 101 it carries the session). The response's upgrade, when it is 101, is that connection.
    pub async fn send_upgrade(
        &self,
        mut request: Request<B>,
    ) -> Result<Response<Incoming>, RequestError> {
        let mut connector = self.pool.upgrade_connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(RequestError::Connect)?;
        let stream = connector
            .call(self.pool.origin.clone())
            .await
            .map_err(RequestError::Connect)?;
        let (mut sender, connection) = http1::Builder::new().handshake(stream).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!("upstream WebSocket connection ended: {e}");
            }
        });
        request
            .headers_mut()
            .entry(HOST)
            .or_insert(self.pool.host.clone());
        *request.version_mut() = Version::HTTP_11;
        Ok(sender.send_request(request).await?)
    }
}

enum SendFailure<B> {
    /// The connection closed before the request was written: it can go on another connection.
    Unsent(Box<Request<B>>, hyper::Error),
    Failed(hyper::Error),
}

impl<B> SendFailure<B> {
    fn into_error(self) -> RequestError {
        match self {
            SendFailure::Unsent(_, error) | SendFailure::Failed(error) => RequestError::Http(error),
        }
    }
}

impl<B> Pool<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// A ready connection: the shared HTTP/2 one, the most recent idle HTTP/1.1 one, or a new one.
    async fn checkout(self: &Arc<Self>) -> Result<(Sender<B>, bool), RequestError> {
        if let Some(sender) = crate::panics::lock(&self.http2).as_ref()
            && !sender.is_closed()
        {
            return Ok((Sender::Http2(sender.clone()), true));
        }
        loop {
            let idle = crate::panics::lock(&self.idle).pop();
            let Some(Idle { mut sender, since }) = idle else {
                break;
            };
            if !usable(&sender, since, self.idle_timeout) {
                continue;
            }
            // Back in the pool once its response body ended, so ready almost at once.
            if sender.ready().await.is_ok() {
                return Ok((Sender::Http1(sender), true));
            }
        }
        Ok((self.connect().await?, false))
    }

    /// Boxed: the connect future (TCP, TLS, handshake) is several kilobytes, and every request's
    /// future would otherwise carry, and move, that much.
    fn connect(
        self: &Arc<Self>,
    ) -> Pin<Box<dyn Future<Output = Result<Sender<B>, RequestError>> + Send + '_>> {
        Box::pin(self.connect_new())
    }

    async fn connect_new(self: &Arc<Self>) -> Result<Sender<B>, RequestError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(RequestError::Connect)?;
        let stream = connector
            .call(self.origin.clone())
            .await
            .map_err(RequestError::Connect)?;
        if stream.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(stream)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("upstream HTTP/2 connection ended: {e}");
                }
            });
            *crate::panics::lock(&self.http2) = Some(sender.clone());
            Ok(Sender::Http2(sender))
        } else {
            // One buffer and one `write`, as on the server side (`server::Server::bind`).
            let (sender, connection) = http1::Builder::new()
                .writev(false)
                .handshake(stream)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("upstream connection ended: {e}");
                }
            });
            Ok(Sender::Http1(sender))
        }
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps a second copy of its arguments in its future"
    )]
    fn try_send(
        self: &Arc<Self>,
        sender: Sender<B>,
        mut request: Box<Request<B>>,
    ) -> impl Future<Output = Result<Response<PooledBody<B>>, SendFailure<B>>> + Send + '_ {
        async move {
            let (result, give_back) = match sender {
                Sender::Http1(mut sender) => {
                    request
                        .headers_mut()
                        .entry(HOST)
                        .or_insert(self.host.clone());
                    *request.version_mut() = Version::HTTP_11;
                    let result = sender.try_send_request(*request).await;
                    (
                        result,
                        Some(GiveBack {
                            sender,
                            pool: Arc::downgrade(self),
                        }),
                    )
                }
                Sender::Http2(mut sender) => {
                    *request.version_mut() = Version::HTTP_2;
                    *request.uri_mut() = self.absolute(request.uri());
                    (sender.try_send_request(*request).await, None)
                }
            };
            match result {
                Ok(response) => Ok(response.map(|inner| PooledBody::new(inner, give_back))),
                Err(mut error) => match error.take_message() {
                    Some(request) => {
                        Err(SendFailure::Unsent(Box::new(request), error.into_error()))
                    }
                    None => Err(SendFailure::Failed(error.into_error())),
                },
            }
        }
    }
}

impl<B> Pool<B> {
    /// `path`'s absolute URI on the upstream: HTTP/2 carries scheme and authority as
    /// pseudo-headers, taken from the URI.
    fn absolute(&self, path: &Uri) -> Uri {
        let mut uri = self.origin.clone().into_parts();
        uri.path_and_query = path.path_and_query().cloned();
        Uri::from_parts(uri).expect("origin plus a parsed path")
    }
}

/// Every `idle_timeout`, closes the connections idle longer than that; ends with the pool.
async fn close_idle<B>(pool: Weak<Pool<B>>) {
    let period = match pool.upgrade() {
        Some(pool) => pool.idle_timeout.max(Duration::from_secs(1)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = crate::panics::lock(&pool.idle);
        idle.retain(|c| usable(&c.sender, c.since, pool.idle_timeout));
    }
}

/// Whether an idle connection may carry another request: still open and not idle too long.
fn usable<B>(sender: &http1::SendRequest<B>, since: Instant, idle_timeout: Duration) -> bool {
    !sender.is_closed() && since.elapsed() <= idle_timeout
}

/// `Host` for `origin`: the host, and the port unless it is the scheme's default.
fn host_header(origin: &Uri) -> HeaderValue {
    let host = origin.host().unwrap_or_default();
    let default_port = if origin.scheme() == Some(&Scheme::HTTPS) {
        443
    } else {
        80
    };
    let text = match origin.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_string(),
    };
    HeaderValue::from_str(&text).expect("an authority is a valid header value")
}

/// An HTTP/1.1 connection waiting for the end of its response body to go back to the pool.
struct GiveBack<B> {
    sender: http1::SendRequest<B>,
    pool: Weak<Pool<B>>,
}

impl<B> GiveBack<B> {
    /// Back to the pool, unless it already holds [`MAX_IDLE`] idle connections (then this one
    /// closes: after a burst, the pool shrinks back instead of keeping every connection open).
    fn give_back(self) {
        if let Some(pool) = self.pool.upgrade() {
            let mut idle = crate::panics::lock(&pool.idle);
            if idle.len() < MAX_IDLE {
                idle.push(Idle {
                    sender: self.sender,
                    since: Instant::now(),
                });
            }
        }
    }
}

/// The upstream's response body. When it has been read to its end, its HTTP/1.1 connection goes
/// back to the pool; dropped before that, the connection closes with it.
pub struct PooledBody<B> {
    inner: Incoming,
    give_back: Option<GiveBack<B>>,
}

impl<B> PooledBody<B> {
    /// A body that goes back to no pool (a WebSocket handshake's connection is its own).
    pub fn unpooled(inner: Incoming) -> Self {
        Self::new(inner, None)
    }

    fn new(inner: Incoming, give_back: Option<GiveBack<B>>) -> Self {
        let mut body = Self { inner, give_back };
        if body.inner.is_end_stream() {
            body.ended();
        }
        body
    }

    fn ended(&mut self) {
        if let Some(give_back) = self.give_back.take() {
            give_back.give_back();
        }
    }
}

impl<B> Body for PooledBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.ended(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.ended(),
            Some(Err(_)) => this.give_back = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_leaves_out_default_ports() {
        let host = |uri: &str| host_header(&uri.parse().unwrap());
        assert_eq!(
            host("https://x.openai.azure.com:443/"),
            "x.openai.azure.com"
        );
        assert_eq!(host("https://x.openai.azure.com/"), "x.openai.azure.com");
        assert_eq!(host("https://127.0.0.1:8443/"), "127.0.0.1:8443");
        assert_eq!(host("http://127.0.0.1:80/"), "127.0.0.1");
        assert_eq!(host("http://[::1]:9000/"), "[::1]:9000");
    }
}
