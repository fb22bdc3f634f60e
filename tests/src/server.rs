//! A small hyper server for mocks: HTTP or HTTPS (test CA, ALPN h2 + http/1.1) on 127.0.0.1.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;

/// Body of mock responses. An `Err` frame aborts the connection (a reset mid-stream).
pub type MockBody = BoxBody<Bytes, std::io::Error>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// A request handler.
pub type Handler =
    Arc<dyn Fn(Request<Incoming>, SocketAddr) -> BoxFuture<Response<MockBody>> + Send + Sync>;

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<MockBody>> + Send + 'static,
{
    Arc::new(move |request, peer| Box::pin(f(request, peer)))
}

/// A body with the given bytes.
pub fn full(bytes: impl Into<Bytes>) -> MockBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A JSON response.
pub fn json(status: u16, value: &serde_json::Value) -> Response<MockBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(value.to_string()))
        .expect("valid response")
}

/// A body fed through a channel: send `Ok(bytes)` chunks, or `Err` to abort the connection.
pub fn channel_body() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, MockBody) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ChannelBody { rx }.boxed())
}

struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

/// A running mock server; stops when dropped.
pub struct MockServer {
    pub addr: SocketAddr,
    pub scheme: &'static str,
    _stop: oneshot::Sender<()>,
}

impl MockServer {
    /// Serves `handler` over plain HTTP (HTTP/1.1 and h2c) on 127.0.0.1.
    pub async fn http(handler: Handler) -> Self {
        Self::start(handler, None).await
    }

    /// Serves `handler` over HTTPS with `tls` (ALPN h2 and http/1.1) on 127.0.0.1.
    pub async fn https(handler: Handler, tls: rustls::ServerConfig) -> Self {
        Self::start(handler, Some(TlsAcceptor::from(Arc::new(tls)))).await
    }

    /// Serves `handler` over HTTPS on `ip` (the node tests serve pods on the bridge gateway).
    pub async fn https_at(
        ip: std::net::IpAddr,
        handler: Handler,
        tls: rustls::ServerConfig,
    ) -> Self {
        Self::bind(
            SocketAddr::new(ip, 0),
            handler,
            Some(TlsAcceptor::from(Arc::new(tls))),
        )
        .await
    }

    /// Serves `handler` on a given address (to restart a stopped mock where it was).
    pub async fn start_on(
        addr: SocketAddr,
        handler: Handler,
        tls: Option<rustls::ServerConfig>,
    ) -> Self {
        Self::bind(addr, handler, tls.map(|t| TlsAcceptor::from(Arc::new(t)))).await
    }

    async fn start(handler: Handler, tls: Option<TlsAcceptor>) -> Self {
        Self::bind("127.0.0.1:0".parse().unwrap(), handler, tls).await
    }

    async fn bind(addr: SocketAddr, handler: Handler, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind on {addr}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            // Connections live in this set: stopping the server cuts them too, as a crash would.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let (stream, peer) = tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let response = handler(request, peer);
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    let builder = Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            scheme,
            _stop: stop,
        }
    }

    /// Base URL such as `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }
}
