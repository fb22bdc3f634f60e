//! The floor under aoai-proxy's costs: hyper's HTTP/1 server and client, set up as aoai-proxy sets
//! them up (one `write` per message, TCP_NODELAY, a header-read timeout, a one-thread runtime, a
//! keep-alive pool for the one upstream), forwarding every request with a fixed `Authorization`
//! header and nothing else: no token, checks, usage, logs, metrics, timeouts or shutdown.
//! `aoai-bench --floor` measures it beside aoai-proxy and nginx, so that what aoai-proxy executes
//! beyond it is what aoai-proxy's own work costs.
//!
//! Reads `HOST`, `PORT` and `API_BASE_URL` (`http://host:port`), as aoai-proxy does.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderValue};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

/// aoai-proxy's default `AOAI_PROXY_HEADER_READ_TIMEOUT`.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

struct Pool {
    upstream: String,
    idle: Mutex<Vec<SendRequest<Incoming>>>,
}

/// The upstream's response body; its connection goes back to the pool when the body is dropped.
struct Pooled {
    inner: Incoming,
    sender: Option<SendRequest<Incoming>>,
    pool: Arc<Pool>,
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.idle.lock().unwrap().push(sender);
        }
    }
}

async fn forward(
    pool: Arc<Pool>,
    mut request: Request<Incoming>,
) -> Result<Response<Pooled>, hyper::Error> {
    let mut sender = loop {
        let idle = pool.idle.lock().unwrap().pop();
        match idle {
            Some(mut sender) => {
                if sender.ready().await.is_ok() {
                    break sender;
                }
            }
            None => {
                let stream = TcpStream::connect(&pool.upstream)
                    .await
                    .expect("connect to the upstream");
                stream.set_nodelay(true).unwrap();
                let (sender, connection) = hyper::client::conn::http1::Builder::new()
                    .writev(false)
                    .handshake(TokioIo::new(stream))
                    .await?;
                tokio::spawn(connection);
                break sender;
            }
        }
    };
    request
        .headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static("Bearer floor"));
    let response = sender.send_request(request).await?;
    Ok(response.map(|inner| Pooled {
        inner,
        sender: Some(sender),
        pool,
    }))
}

fn main() {
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let upstream = env("API_BASE_URL");
    let upstream = upstream
        .strip_prefix("http://")
        .expect("API_BASE_URL is http://host:port")
        .trim_end_matches('/')
        .to_string();
    let listen = format!("{}:{}", env("HOST"), env("PORT"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let pool = Arc::new(Pool {
            upstream,
            idle: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind(&listen).await.expect("bind HOST:PORT");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // A caller gone before this is the connection's error to meet, not the floor's.
            let _ = stream.set_nodelay(true);
            let pool = pool.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| forward(pool.clone(), request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .writev(false)
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
