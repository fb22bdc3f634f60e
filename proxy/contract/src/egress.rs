//! Egress settings, as every Azure SDK reads them: `HTTPS_PROXY` (or `https_proxy`) for https
//! targets, `HTTP_PROXY` (or `http_proxy`) for http ones, and `NO_PROXY` (or `no_proxy`) for the
//! hosts reached directly. The Instance Metadata Service (169.254.169.254) and every link-local
//! address are never proxied, as the Azure SDKs do. Parsing and matching only; the proxy's
//! connector opens the tunnels.

use std::fmt;
use std::net::IpAddr;

use base64::Engine;
use http::Uri;

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

    /// The `Proxy-Authorization` value, when the URL carried credentials; send it only to the
    /// proxy.
    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
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
pub(crate) fn percent_decode(text: &str) -> Vec<u8> {
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
            proxy.authorization(),
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
}
