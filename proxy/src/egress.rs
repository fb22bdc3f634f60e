//! Egress through an HTTP proxy, configured as every Azure SDK reads it: `HTTPS_PROXY` (or
//! `https_proxy`) for https targets, `HTTP_PROXY` (or `http_proxy`) for http ones, and `NO_PROXY`
//! (or `no_proxy`) for the hosts reached directly. Connections through the proxy are CONNECT
//! tunnels (TLS to the target runs inside, end to end), with `Proxy-Authorization: Basic` when the
//! proxy URL carries `user:password@`. The Instance Metadata Service (169.254.169.254) and every
//! link-local address are never proxied, as the Azure SDKs do.
//!
//! Parsing and matching are pure; [`tunnel`] does the CONNECT on a connected stream, and
//! [`EgressConnector`] is the TCP connector every outbound client uses.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

/// The egress settings: a proxy per scheme, and the hosts that bypass them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Egress {
    pub https: Option<ProxyUrl>,
    pub http: Option<ProxyUrl>,
    pub no_proxy: NoProxy,
}

/// An HTTP proxy: where to connect, and its credentials (never displayed).
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    /// `Basic <base64(user:password)>`, when the URL carried credentials.
    authorization: Option<String>,
}

impl fmt::Display for ProxyUrl {
    /// `http://host:port`: the credentials are left out, so that the URL can be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}", self.host, self.port)
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

impl ProxyUrl {
    /// `http://[user:password@]host[:port]` (a bare `host:port` counts as http). The error names
    /// what is wrong, never the credentials.
    pub fn parse(value: &str) -> Result<Self, String> {
        let with_scheme = if value.contains("://") {
            value.to_string()
        } else {
            format!("http://{value}")
        };
        let (scheme, rest) = with_scheme.split_once("://").expect("a scheme was added");
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(format!(
                "must be an http:// proxy URL (the tunnel to the target is TLS already), not {scheme}://"
            ));
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let uri: Uri = format!("http://{host_port}")
            .parse()
            .map_err(|_| "is not a valid proxy URL (expected http://host:port)".to_string())?;
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or("names no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let authorization = userinfo.map(|userinfo| {
            let decoded = percent_decode(userinfo);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(decoded)
            )
        });
        Ok(Self {
            host,
            port: uri.port_u16().unwrap_or(80),
            authorization,
        })
    }

    /// The `host:port` to connect to.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `%XX` escapes in the userinfo of a URL (a password may hold `@` or `:`).
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        if bytes[i] == b'%'
            && let (Some(Some(high)), Some(Some(low))) = (
                bytes.get(i + 1).map(|b| hex(*b)),
                bytes.get(i + 2).map(|b| hex(*b)),
            )
        {
            out.push(high * 16 + low);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// `NO_PROXY`: comma-separated entries, each `*` (everything), a host name (that host and its
/// subdomains; a leading `.` or `*.` is the same), an IP address, or a CIDR range; any of them
/// optionally with `:port`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoProxy {
    everything: bool,
    entries: Vec<NoProxyEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Matcher {
    Domain(String),
    Ip(IpAddr),
    Cidr(IpAddr, u8),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct NoProxyEntry {
    matcher: Matcher,
    port: Option<u16>,
}

impl NoProxy {
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut no_proxy = Self::default();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                no_proxy.everything = true;
                continue;
            }
            no_proxy.entries.push(parse_entry(entry)?);
        }
        Ok(no_proxy)
    }

    /// Whether `host` (a name or an IP address, without brackets) at `port` is reached directly.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.everything {
            return true;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ip: Option<IpAddr> = host.parse().ok();
        self.entries.iter().any(|entry| {
            entry.port.is_none_or(|p| p == port)
                && match (&entry.matcher, ip) {
                    (Matcher::Domain(domain), None) => {
                        host == *domain || host.ends_with(&format!(".{domain}"))
                    }
                    (Matcher::Ip(address), Some(ip)) => *address == ip,
                    (Matcher::Cidr(network, bits), Some(ip)) => in_cidr(ip, *network, *bits),
                    _ => false,
                }
        })
    }
}

fn parse_entry(entry: &str) -> Result<NoProxyEntry, String> {
    let bad = || format!("NO_PROXY entry {entry:?} is not a host, an IP address or a CIDR range");
    // A CIDR range (its own `/`), an IPv6 address (bracketed when it has a port), or host[:port].
    if let Some((network, bits)) = entry.split_once('/') {
        let network: IpAddr = network.parse().map_err(|_| bad())?;
        let bits: u8 = bits.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err(bad());
        }
        return Ok(NoProxyEntry {
            matcher: Matcher::Cidr(network, bits),
            port: None,
        });
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(NoProxyEntry {
            matcher: Matcher::Ip(ip),
            port: None,
        });
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = after.strip_prefix(':').map(str::parse::<u16>);
        (ip, port)
    } else {
        match entry.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse::<u16>())),
            None => (entry, None),
        }
    };
    let port = port.transpose().map_err(|_| bad())?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(NoProxyEntry {
            matcher: Matcher::Ip(ip),
            port,
        });
    }
    let domain = host
        .trim_start_matches("*.")
        .trim_start_matches('.')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let valid = !domain.is_empty()
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !valid {
        return Err(bad());
    }
    Ok(NoProxyEntry {
        matcher: Matcher::Domain(domain),
        port,
    })
}

fn in_cidr(ip: IpAddr, network: IpAddr, bits: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(network)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(network) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(network)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(network) & mask
        }
        _ => false,
    }
}

/// Link-local addresses (IMDS is 169.254.169.254) are on the node itself: never through a proxy.
fn is_link_local(host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_link_local(),
        Ok(IpAddr::V6(ip)) => ip.segments()[0] & 0xffc0 == 0xfe80,
        Err(_) => false,
    }
}

impl Egress {
    /// The proxy that a connection to `target` goes through, if any.
    pub fn proxy_for(&self, target: &Uri) -> Option<&ProxyUrl> {
        let host = target.host()?.trim_start_matches('[').trim_end_matches(']');
        let https = target.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = target.port_u16().unwrap_or(if https { 443 } else { 80 });
        if is_link_local(host) || self.no_proxy.matches(host, port) {
            return None;
        }
        if https {
            self.https.as_ref()
        } else {
            self.http.as_ref()
        }
    }

    pub fn is_configured(&self) -> bool {
        self.https.is_some() || self.http.is_some()
    }
}

/// Why a tunnel could not be opened; names the proxy, never its credentials.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot reach the egress proxy {proxy}: {source}")]
    Unreachable {
        proxy: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the egress proxy {proxy} refused CONNECT {target}: {status}")]
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
    if let Some(authorization) = &proxy.authorization {
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

    fn egress(https: &str, no_proxy: &str) -> Egress {
        Egress {
            https: Some(ProxyUrl::parse(https).unwrap()),
            http: None,
            no_proxy: NoProxy::parse(no_proxy).unwrap(),
        }
    }

    fn via(egress: &Egress, uri: &str) -> Option<String> {
        egress
            .proxy_for(&uri.parse().unwrap())
            .map(ToString::to_string)
    }

    #[test]
    fn proxy_urls_parse_and_never_show_their_credentials() {
        let proxy = ProxyUrl::parse("http://alice:s3cr%40t@proxy.corp:3128").unwrap();
        assert_eq!(proxy.to_string(), "http://proxy.corp:3128");
        assert_eq!(format!("{proxy:?}"), "ProxyUrl(http://proxy.corp:3128)");
        assert_eq!(
            proxy.authorization.as_deref(),
            Some("Basic YWxpY2U6czNjckB0") // alice:s3cr@t
        );
        assert_eq!(
            ProxyUrl::parse("proxy:8080").unwrap().address(),
            "proxy:8080"
        );
        assert_eq!(
            ProxyUrl::parse("http://[::1]:3128").unwrap().address(),
            "[::1]:3128"
        );
        assert_eq!(ProxyUrl::parse("http://proxy.corp").unwrap().port, 80);
        let error = ProxyUrl::parse("https://alice:pw@proxy:443").unwrap_err();
        assert!(
            error.contains("http://") && !error.contains("pw"),
            "{error}"
        );
        assert!(ProxyUrl::parse("http://").is_err());
    }

    #[test]
    fn no_proxy_matches_hosts_suffixes_ips_cidrs_ports_and_star() {
        let e = egress(
            "http://proxy:3128",
            "internal.corp, .svc, *.cluster.local, 10.0.0.0/8, 192.168.1.7, api.example:8443, [::1]:9000",
        );
        assert_eq!(
            via(&e, "https://r.openai.azure.com/"),
            Some("http://proxy:3128".into())
        );
        for direct in [
            "https://internal.corp/",
            "https://a.b.internal.corp/",
            "https://kube-dns.kube-system.svc/",
            "https://x.cluster.local/",
            "https://10.1.2.3/",
            "https://192.168.1.7/",
            "https://api.example:8443/",
            "https://[::1]:9000/",
        ] {
            assert_eq!(via(&e, direct), None, "{direct}");
        }
        for proxied in [
            "https://notinternal.corp/",
            "https://11.0.0.1/",
            "https://api.example/",
            "https://[::1]:9001/",
        ] {
            assert!(via(&e, proxied).is_some(), "{proxied}");
        }
        assert_eq!(
            via(&egress("proxy:1", "*"), "https://r.openai.azure.com/"),
            None
        );
    }

    #[test]
    fn imds_and_link_local_are_never_proxied_and_http_needs_http_proxy() {
        let e = egress("http://proxy:3128", "");
        assert_eq!(via(&e, "http://169.254.169.254/metadata/identity"), None);
        assert_eq!(via(&e, "https://169.254.1.1/"), None);
        assert_eq!(via(&e, "https://[fe80::1]/"), None);
        assert_eq!(via(&e, "http://example.com/"), None, "no HTTP_PROXY set");
    }

    #[test]
    fn bad_no_proxy_entries_are_errors() {
        for bad in ["10.0.0.0/33", "a b", "host:port", "[::1"] {
            assert!(NoProxy::parse(bad).is_err(), "{bad}");
        }
    }

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
}
