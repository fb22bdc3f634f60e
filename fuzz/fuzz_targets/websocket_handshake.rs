//! A WebSocket handshake both ways: whatever the caller offers, no key carried as a subprotocol
//! reaches the upstream; whatever the upstream answers, the caller's 101 carries the upgrade
//! headers and no other hop-by-hop one; never a panic. Header lines, the request's before an
//! empty line, the answer's after it.
#![no_main]
use aoai_proxy::headers::{rewrite_request, rewrite_response};
use aoai_proxy::{is_upgrade, restore_upgrade_headers};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fn headers(lines: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in lines.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii())) {
            map.append(name, value);
        }
    }
    map
}

fuzz_target!(|data: &[u8]| {
    let split = data.windows(2).position(|w| w == b"\n\n").unwrap_or(data.len());
    let mut request = headers(&data[..split]);
    let mut answer = headers(data.get(split + 2..).unwrap_or_default());
    let _ = is_upgrade(&request);
    rewrite_request(&mut request, HeaderValue::from_static("Bearer fuzz-token"));
    restore_upgrade_headers(&mut request);
    for value in request.get_all("sec-websocket-protocol") {
        let text = String::from_utf8_lossy(value.as_bytes());
        assert!(!text.split(',').any(|p| p.trim().starts_with("openai-insecure-api-key.")), "a key reached the upstream: {text}");
    }
    assert!(is_upgrade(&request));
    rewrite_response(&mut answer);
    restore_upgrade_headers(&mut answer);
    assert!(is_upgrade(&answer));
    for name in ["keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"] {
        assert!(!answer.contains_key(name), "{name} reached the caller");
    }
});
