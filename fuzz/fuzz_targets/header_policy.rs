//! The header policy: whatever headers a caller sends, none of the hop-by-hop ones, the caller's
//! api-key or Authorization reach the upstream, and the proxy's token does.
#![no_main]
use aoai_proxy::headers::{rewrite_request, rewrite_response};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "proxy-authorization", "proxy-authenticate"];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(&line[colon + 1..])) else {
            continue;
        };
        headers.append(name, value);
    }
    let named_by_connection: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .collect();
    let mut response = headers.clone();
    let token = HeaderValue::from_static("Bearer fuzz-token");
    rewrite_request(&mut headers, token.clone());
    for name in HOP.iter().copied().chain(["api-key"]) {
        assert!(!headers.contains_key(name), "{name} reached the upstream");
    }
    for name in &named_by_connection {
        if !name.is_empty() && !name.eq_ignore_ascii_case("authorization") {
            assert!(!headers.contains_key(name.as_str()), "{name} (named in Connection) reached the upstream");
        }
    }
    assert_eq!(headers.get_all("authorization").iter().collect::<Vec<_>>(), vec![&token]);
    rewrite_response(&mut response);
    for name in HOP {
        assert!(!response.contains_key(*name), "{name} reached the caller");
    }
});
