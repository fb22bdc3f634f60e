//! Egress through an HTTP proxy (the settings and their matching are the contract crate's
//! [`Egress`]). Connections through the proxy are CONNECT tunnels (TLS to the target runs inside,
//! end to end), with `Proxy-Authorization: Basic` when the proxy URL carries `user:password@`.
//! [`tunnel`] does the CONNECT on a connected stream, and [`EgressConnector`] is the TCP connector
//! every outbound client uses.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

use aoai_proxy_contract::config::OneLine;
pub use aoai_proxy_contract::egress::{Egress, NoProxy, ProxyUrl};

/// Why a tunnel could not be opened; names the proxy, never its credentials.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot reach the egress proxy {proxy}: {source}")]
    Unreachable {
        proxy: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the egress proxy {proxy} refused CONNECT {target}: {}", OneLine(.status))]
    Refused {
        proxy: String,
        target: String,
        status: String,
    },
    #[error("the egress proxy {proxy} answered CONNECT {target} with something that is not HTTP")]
    Malformed { proxy: String, target: String },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// TCP connections for the outbound clients: direct, or through a CONNECT tunnel of the egress
/// proxy that [`Egress::proxy_for`] picks (TLS, when the target is https, then runs inside it).
#[derive(Clone)]
pub struct EgressConnector {
    http: HttpConnector,
    egress: Arc<Egress>,
}

impl EgressConnector {
    pub fn new(http: HttpConnector, egress: Arc<Egress>) -> Self {
        Self { http, egress }
    }
}

impl Service<Uri> for EgressConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: Uri) -> Self::Future {
        let Some(proxy) = self.egress.proxy_for(&target).cloned() else {
            let connect = self.http.call(target);
            return Box::pin(async move { connect.await.map_err(Into::into) });
        };
        let mut http = self.http.clone();
        Box::pin(async move {
            let https = target.scheme() == Some(&http::uri::Scheme::HTTPS);
            let host = target
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = target.port_u16().unwrap_or(if https { 443 } else { 80 });
            let proxy_uri: Uri = format!("http://{}", proxy.address())
                .parse()
                .map_err(|e| Box::new(e) as BoxError)?;
            let stream = http
                .call(proxy_uri)
                .await
                .map_err(|e| TunnelError::Unreachable {
                    proxy: proxy.to_string(),
                    source: std::io::Error::other(e),
                })?;
            let mut stream = stream.into_inner();
            tunnel(&mut stream, &proxy, &host, port).await?;
            tracing::debug!(proxy = %proxy, target = %format!("{host}:{port}"), "tunnel open");
            Ok(TokioIo::new(stream))
        })
    }
}

/// Largest CONNECT response head read.
const MAX_CONNECT_RESPONSE: usize = 16 * 1024;

/// Asks `proxy` (already connected on `stream`) for a tunnel to `host:port` and reads its answer;
/// on `200` the stream is the tunnel.
pub async fn tunnel<S>(
    stream: &mut S,
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
) -> Result<(), TunnelError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let unreachable = |source| TunnelError::Unreachable {
        proxy: proxy.to_string(),
        source,
    };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(authorization) = proxy.authorization() {
        request.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(unreachable)?;
    // Read byte by byte up to the end of the head: nothing of the tunnel may be consumed here.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_CONNECT_RESPONSE {
            return Err(TunnelError::Malformed {
                proxy: proxy.to_string(),
                target,
            });
        }
        let byte = stream.read_u8().await.map_err(unreachable)?;
        head.push(byte);
    }
    let status_line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let mut words = status_line.splitn(3, ' ');
    let (version, code) = (words.next().unwrap_or_default(), words.next());
    if !version.starts_with("HTTP/1.") || code.is_none() {
        return Err(TunnelError::Malformed {
            proxy: proxy.to_string(),
            target,
        });
    }
    if code == Some("200") {
        return Ok(());
    }
    Err(TunnelError::Refused {
        proxy: proxy.to_string(),
        target,
        status: status_line
            .split_once(' ')
            .map(|(_, status)| status.to_string())
            .unwrap_or_default(),
    })
}
#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tunnel_sends_connect_with_credentials_and_reads_only_the_head() {
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        let proxy = ProxyUrl::parse("http://u:p@proxy:3128").unwrap();
        let server = tokio::spawn(async move {
            let mut buffer = vec![0; 1024];
            let n = theirs.read(&mut buffer).await.unwrap();
            theirs
                .write_all(b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\nTLS")
                .await
                .unwrap();
            String::from_utf8_lossy(&buffer[..n]).to_string()
        });
        tunnel(&mut ours, &proxy, "r.openai.azure.com", 443)
            .await
            .unwrap();
        let mut rest = [0u8; 3];
        ours.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"TLS", "the tunnel's first bytes are left for TLS");
        let sent = server.await.unwrap();
        assert_eq!(
            sent,
            "CONNECT r.openai.azure.com:443 HTTP/1.1\r\nHost: r.openai.azure.com:443\r\nProxy-Authorization: Basic dTpw\r\n\r\n"
        );

        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut buffer = vec![0; 1024];
            let _ = theirs.read(&mut buffer).await;
            let _ = theirs
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                .await;
        });
        let error = tunnel(&mut ours, &proxy, "r.openai.azure.com", 443)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "the egress proxy http://proxy:3128 refused CONNECT r.openai.azure.com:443: 407 Proxy Authentication Required"
        );
    }

    #[tokio::test]
    async fn a_refusal_with_control_characters_stays_one_line() {
        let proxy = ProxyUrl::parse("http://proxy:3128").unwrap();
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        theirs
            .write_all(b"HTTP/1.1 403 Forbidden\rforged line\x1b[2J\r\n\r\n")
            .await
            .unwrap();
        let error = tunnel(&mut ours, &proxy, "r.openai.azure.com", 443)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with(r"CONNECT r.openai.azure.com:443: 403 Forbidden\rforged line\u{1b}[2J"),
            "{error:?}"
        );
    }
}
