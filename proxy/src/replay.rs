//! A caller's request body kept while it streams, so that the same bytes can go to another
//! backend when the first one throttles or fails before answering.
//!
//! Nothing waits for the whole body: the first attempt streams it as it arrives and keeps a copy
//! of each chunk (at most `limit` bytes in all; beyond that the copy is dropped and the request
//! cannot fail over). A later attempt replays the copy, then goes on reading the caller where the
//! previous one stopped. Attempts never overlap.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The caller's body and the copy of what has been read of it.
struct Shared {
    /// The caller's body; `None` once it has ended.
    caller: Option<Incoming>,
    kept: Vec<Bytes>,
    kept_len: u64,
    /// Bytes read from the caller so far.
    read: u64,
    limit: u64,
    /// The copy was dropped (over the limit) or the caller's body failed: no more attempts.
    spent: bool,
}

/// The handle a request keeps between attempts.
#[derive(Clone)]
pub struct Replay(Arc<Mutex<Shared>>);

impl Replay {
    pub fn new(caller: Incoming, limit: u64) -> Self {
        Self(Arc::new(Mutex::new(Shared {
            caller: Some(caller),
            kept: Vec::new(),
            kept_len: 0,
            read: 0,
            limit,
            spent: false,
        })))
    }

    /// Whether another attempt can be sent the whole body.
    pub fn can_replay(&self) -> bool {
        !crate::panics::lock(&self.0).spent
    }

    /// The body of the next attempt.
    pub fn body(&self) -> ReplayBody {
        ReplayBody {
            shared: self.0.clone(),
            next: 0,
        }
    }
}

/// One attempt's body: the kept chunks, then the rest from the caller.
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    next: usize,
}

/// A frame and whether it was read from the caller just now (not a copy), with the caller's bytes
/// read so far.
pub struct ReplayFrame {
    pub frame: Frame<Bytes>,
    pub fresh: bool,
    pub read: u64,
}

impl ReplayBody {
    pub fn poll_replay(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<ReplayFrame, hyper::Error>>> {
        let mut shared = crate::panics::lock(&self.shared);
        if let Some(chunk) = shared.kept.get(self.next) {
            let frame = Frame::data(chunk.clone());
            self.next += 1;
            return Poll::Ready(Some(Ok(ReplayFrame {
                frame,
                fresh: false,
                read: shared.read,
            })));
        }
        let Some(caller) = shared.caller.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(caller).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.caller = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                shared.spent = true;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    shared.read += len;
                    if !shared.spent {
                        if shared.kept_len + len <= shared.limit {
                            shared.kept_len += len;
                            let copy = data.clone();
                            shared.kept.push(copy);
                            self.next = shared.kept.len();
                        } else {
                            shared.spent = true;
                            shared.kept = Vec::new();
                        }
                    }
                }
                Poll::Ready(Some(Ok(ReplayFrame {
                    frame,
                    fresh: true,
                    read: shared.read,
                })))
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        let shared = crate::panics::lock(&self.shared);
        self.next >= shared.kept.len() && shared.caller.is_none()
    }

    pub fn size_hint(&self) -> SizeHint {
        let shared = crate::panics::lock(&self.shared);
        match &shared.caller {
            // Nothing read yet: the caller's own hint (its Content-Length).
            Some(caller) if shared.read == 0 => caller.size_hint(),
            Some(_) => SizeHint::default(),
            None if !shared.spent => SizeHint::with_exact(shared.kept_len),
            None => SizeHint::default(),
        }
    }
}
