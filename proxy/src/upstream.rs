//! The HTTP client towards Azure: hyper + rustls, HTTP/1.1 or HTTP/2 by ALPN, pooled keep-alive
//! connections, connect timeout. Shared by the forwarding path and the identity calls.

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;

pub type Connector = HttpsConnector<HttpConnector>;

/// An https-or-http connector with TCP_NODELAY and a connect timeout (TCP and TLS together are
/// bounded by the caller's request timeout).
pub fn connector(tls: ClientConfig, connect_timeout: Duration) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

/// A pooled client over `connector`; idle connections close after `idle_timeout`.
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
