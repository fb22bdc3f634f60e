//! An upstream's response head, as bytes off the socket: parsed as hyper parses it (httparse),
//! then read as the proxy reads it. Every throttling header form gives a wait within the maximum or
//! none; the head the caller gets carries no hop-by-hop header and no Content-Length beside a
//! Transfer-Encoding; never a panic.
#![no_main]
use std::time::{Duration, SystemTime};

use aoai_proxy::headers::rewrite_response;
use aoai_proxy::throttle_wait;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const MAX: Duration = Duration::from_secs(60);

fuzz_target!(|data: &[u8]| {
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut response = httparse::Response::new(&mut slots);
    let Ok(httparse::Status::Complete(_)) = response.parse(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for header in response.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(header.value),
        ) else {
            return; // hyper refuses such a head: the proxy answers 502
        };
        headers.append(name, value);
    }
    for now in [SystemTime::UNIX_EPOCH, SystemTime::now()] {
        if let Some(wait) = throttle_wait(&headers, now, MAX) {
            assert!(wait <= MAX, "{wait:?}");
        }
    }
    let had_encoding = headers.contains_key("transfer-encoding");
    rewrite_response(&mut headers);
    for name in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"] {
        assert!(!headers.contains_key(name), "{name} reached the caller");
    }
    if had_encoding {
        assert!(!headers.contains_key("content-length"), "a length beside an encoding");
    }
});
