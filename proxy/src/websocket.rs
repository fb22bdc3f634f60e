//! WebSocket (RFC 6455) over HTTP/1.1 Upgrade, for Azure OpenAI's Realtime API.
//!
//! The handshake is an ordinary forwarded request (callers' keys checked, `api-key` and
//! `Authorization` replaced by the Entra ID token, hop-by-hop headers dropped) that keeps
//! `Upgrade: websocket` and `Connection: Upgrade`. When the upstream answers 101, both connections
//! become one byte tunnel, copied both ways without buffering until either side closes; any other
//! answer goes back as it came. The token is checked at the handshake only, so a session outlives
//! token refreshes. Open sessions are tracked so that shutdown waits for them within its grace
//! period, then closes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, watch};

use crate::metrics::Metrics;

/// A subprotocol some clients (browsers, which cannot set headers) use to carry their API key:
/// `openai-insecure-api-key.<key>`. Removed, like `api-key`: the key must never reach Azure.
const KEY_SUBPROTOCOL: &str = "openai-insecure-api-key.";

/// Whether `headers` ask to upgrade the connection to a WebSocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has_token(header::UPGRADE, "websocket") && has_token(header::CONNECTION, "upgrade")
}

/// Puts back the two hop-by-hop headers an upgrade needs (after the usual rewrite removed them),
/// and drops a key carried as a subprotocol.
pub fn restore_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // As bytes: a value that is not visible ASCII must not hide a key from this check.
    let offered: Vec<Vec<u8>> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|p| p.trim_ascii().to_vec())
        .filter(|p| !p.is_empty())
        .collect();
    let carries_key = |p: &Vec<u8>| p.starts_with(KEY_SUBPROTOCOL.as_bytes());
    if offered.iter().any(carries_key) {
        headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
        let kept: Vec<&[u8]> = offered
            .iter()
            .filter(|p| !carries_key(p))
            .map(Vec::as_slice)
            .collect();
        if let Ok(value) = HeaderValue::from_bytes(&kept.join(&b", "[..]))
            && !kept.is_empty()
        {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
    }
}

/// The open sessions: counted, and told to close when shutdown's grace period is over.
#[derive(Debug)]
pub struct Sessions {
    open: AtomicUsize,
    all_closed: Notify,
    close: watch::Sender<bool>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            open: AtomicUsize::new(0),
            all_closed: Notify::new(),
            close: watch::Sender::new(false),
        }
    }
}

impl Sessions {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves once no session is open.
    pub async fn closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Closes every open session (both of its connections).
    pub fn close_all(&self) {
        self.close.send_replace(true);
    }
}

/// Copies bytes both ways between the caller's and the upstream's upgraded connections until
/// either closes (or `sessions` closes them all), then shuts both down.
pub fn spawn_tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
) {
    sessions.open.fetch_add(1, Ordering::AcqRel);
    let _open = metrics.websocket_session();
    let mut close = sessions.close.subscribe();
    tokio::spawn(async move {
        let _open = _open;
        let tunnel = async {
            let (client, upstream) =
                tokio::try_join!(client, upstream).map_err(std::io::Error::other)?;
            let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
            let (mut upstream_read, mut upstream_write) = tokio::io::split(TokioIo::new(upstream));
            // A WebSocket closes in-band (Close frames), then over TCP: once either side's
            // connection ends, the session is over, and the other side is closed too.
            let ended = tokio::select! {
                sent = tokio::io::copy(&mut client_read, &mut upstream_write) => sent.map(|n| ("caller", n)),
                received = tokio::io::copy(&mut upstream_read, &mut client_write) => received.map(|n| ("upstream", n)),
            };
            let _ = tokio::join!(client_write.shutdown(), upstream_write.shutdown());
            ended
        };
        tokio::select! {
            result = tunnel => match result {
                Ok((side, bytes)) => tracing::debug!(closed_by = side, bytes, "websocket session closed"),
                Err(e) => tracing::debug!("websocket session ended: {e}"),
            },
            _ = close.wait_for(|close| *close) => tracing::info!("websocket session closed at shutdown"),
        }
        if sessions.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            sessions.all_closed.notify_waiters();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::map;

    #[test]
    fn an_upgrade_needs_both_headers_in_any_case() {
        assert!(is_upgrade(&map(&[
            ("upgrade", "websocket"),
            ("connection", "Upgrade")
        ])));
        assert!(is_upgrade(&map(&[
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, upgrade")
        ])));
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&map(&[
            ("upgrade", "h2c"),
            ("connection", "upgrade")
        ])));
    }

    #[test]
    fn the_handshake_keeps_upgrade_and_drops_a_key_subprotocol() {
        let mut headers = map(&[(
            "sec-websocket-protocol",
            "realtime, openai-insecure-api-key.sk-123, openai-beta.realtime-v1",
        )]);
        restore_upgrade_headers(&mut headers);
        assert_eq!(headers["connection"], "Upgrade");
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(
            headers["sec-websocket-protocol"],
            "realtime, openai-beta.realtime-v1"
        );
        let mut only_key = map(&[("sec-websocket-protocol", "openai-insecure-api-key.sk-123")]);
        restore_upgrade_headers(&mut only_key);
        assert!(!only_key.contains_key("sec-websocket-protocol"));
        let mut plain = map(&[("sec-websocket-protocol", "realtime")]);
        restore_upgrade_headers(&mut plain);
        assert_eq!(plain["sec-websocket-protocol"], "realtime");
    }

    /// Found by the fuzz target `websocket_handshake`: a byte that is not visible ASCII anywhere
    /// in the header made the whole value unreadable as text, and the key went upstream with it.
    #[test]
    fn a_key_is_dropped_beside_bytes_that_are_not_text() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_bytes(b"realtime, openai-insecure-api-key.sk-122, x\xff\xfe")
                .unwrap(),
        );
        restore_upgrade_headers(&mut headers);
        assert_eq!(
            headers[header::SEC_WEBSOCKET_PROTOCOL].as_bytes(),
            b"realtime, x\xff\xfe"
        );
    }
}
