//! Header policy, both directions (pure functions over a `HeaderMap`).
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1: `Connection`, the headers it names, and the classic list)
//! are dropped. On requests the caller's `api-key` and `Authorization` are removed and replaced by
//! the proxy's bearer token, and the caller's `Host` is removed so that the HTTP client sets the
//! upstream's (`Host` on HTTP/1.1, `:authority` on HTTP/2). Every other header passes unchanged.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that only concern one connection (RFC 9110 §7.6.1 and RFC 9112), never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// Non-standard but widespread hop-by-hop header (sent by some clients and old proxies).
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Azure OpenAI's key header, which the caller may send and which must never reach Azure.
pub const API_KEY: HeaderName = HeaderName::from_static("api-key");

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over their few names costs less than nine removals,
    // each of which hashes its name.
    if !headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(name) || name == PROXY_CONNECTION)
    {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    // With Transfer-Encoding the body's length is the encoding's, and a Content-Length beside it
    // means nothing (RFC 9112 §6.3); passed on, it would make the next hop cut the body short
    // and read the rest as the next message.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(PROXY_CONNECTION);
}

/// Rewrites a caller's request headers for the upstream.
pub fn rewrite_request(headers: &mut HeaderMap, authorization: HeaderValue) {
    strip_hop_by_hop(headers);
    headers.remove(API_KEY);
    headers.remove(header::HOST);
    headers.insert(header::AUTHORIZATION, authorization);
}

/// Rewrites the upstream's response headers for the caller.
pub fn rewrite_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

/// A header map from (name, value) pairs, for the tests of the header rules.
#[cfg(test)]
pub(crate) fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(headers: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = headers.keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_length_beside_a_transfer_encoding_is_dropped() {
        let mut headers = map(&[
            ("content-length", "3"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
        ]);
        rewrite_response(&mut headers);
        assert_eq!(names(&headers), ["content-type"]);
        let mut alone = map(&[("content-length", "3")]);
        rewrite_response(&mut alone);
        assert_eq!(names(&alone), ["content-length"]);
    }

    #[test]
    fn request_loses_caller_credentials_and_hop_by_hop() {
        let mut headers = map(&[
            ("api-key", "caller-key"),
            ("authorization", "Bearer caller-token"),
            ("host", "127.0.0.1:8080"),
            ("connection", "keep-alive, X-Custom-Hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-type", "application/json"),
            ("x-ms-client-request-id", "abc"),
            ("openai-organization", "org"),
            ("x-request-id", "r1"),
        ]);
        rewrite_request(&mut headers, HeaderValue::from_static("Bearer proxy-token"));
        assert_eq!(
            names(&headers),
            [
                "authorization",
                "content-type",
                "openai-organization",
                "x-ms-client-request-id",
                "x-request-id"
            ]
        );
        assert_eq!(headers[header::AUTHORIZATION], "Bearer proxy-token");
        assert_eq!(headers.get_all(header::AUTHORIZATION).iter().count(), 1);
    }

    #[test]
    fn each_hop_by_hop_header_is_removed_on_its_own() {
        for name in HOP_BY_HOP.iter().chain([&PROXY_CONNECTION]) {
            let mut headers = map(&[("content-type", "application/json"), (name.as_str(), "x")]);
            strip_hop_by_hop(&mut headers);
            assert_eq!(names(&headers), ["content-type"], "{name}");
        }
        let mut none = map(&[("content-type", "application/json"), ("x-request-id", "1")]);
        strip_hop_by_hop(&mut none);
        assert_eq!(names(&none), ["content-type", "x-request-id"]);
    }

    #[test]
    fn repeated_connection_headers_and_odd_tokens() {
        let mut headers = map(&[
            ("connection", "close"),
            ("connection", " X-A ,,x-b, bad token"),
            ("x-a", "1"),
            ("x-b", "1"),
            ("x-c", "1"),
        ]);
        strip_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["x-c"]);
    }

    #[test]
    fn response_keeps_end_to_end_headers() {
        let mut headers = map(&[
            ("content-type", "text/event-stream"),
            ("te", "trailers"),
            ("connection", "keep-alive"),
            ("x-ratelimit-remaining-requests", "99"),
            ("apim-request-id", "id"),
            ("x-ms-region", "swedencentral"),
            ("content-length", "12"),
        ]);
        rewrite_response(&mut headers);
        assert_eq!(
            names(&headers),
            [
                "apim-request-id",
                "content-length",
                "content-type",
                "x-ms-region",
                "x-ratelimit-remaining-requests"
            ]
        );
    }
}
