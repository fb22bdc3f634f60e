//! Streaming bodies for both directions: chunks pass through as they arrive, nothing is buffered.
//!
//! [`RequestBody`] counts what the caller uploads and enforces the optional size limit.
//! [`ResponseBody`] is either the upstream's stream or a small answer made by the proxy; an
//! upstream stream that breaks off mid-way breaks off for the caller too (on HTTP/1.1 the
//! connection closes without the final chunk, on HTTP/2 the stream is reset), so that a truncated
//! answer is never taken for a whole one, and is counted as an upstream reset.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::logging::{self, Exchange};
use crate::metrics::{InFlight, Metrics, UpstreamError};
use crate::replay::{Replay, ReplayBody};
use crate::traces::{Outcome, RequestSpan};
use crate::upstream::PooledBody;
use crate::usage::UsageMeter;

/// Why a request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("reading the request body failed: {0}")]
    Client(#[from] hyper::Error),
    #[error("the request body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
}

/// The caller's request body on its way upstream: streamed once, or through a [`Replay`] that
/// keeps it for another backend.
pub struct RequestBody {
    inner: Source,
    limit: Option<u64>,
    /// Bytes this body read from the caller (not the replayed copies).
    seen: u64,
    metrics: Arc<Metrics>,
}

enum Source {
    Caller(Incoming),
    Replay(ReplayBody),
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: Option<u64>, metrics: Arc<Metrics>) -> Self {
        Self::from_source(Source::Caller(inner), limit, metrics)
    }

    /// One attempt's body from `replay`.
    pub(crate) fn replay(replay: &Replay, limit: Option<u64>, metrics: Arc<Metrics>) -> Self {
        Self::from_source(Source::Replay(replay.body()), limit, metrics)
    }

    fn from_source(inner: Source, limit: Option<u64>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            metrics,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let (frame, read) = match &mut this.inner {
            Source::Caller(caller) => match ready!(Pin::new(caller).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    this.seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                    (frame, this.seen)
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => return Poll::Ready(None),
            },
            Source::Replay(replay) => match ready!(replay.poll_replay(cx)) {
                Some(Ok(replayed)) => {
                    if replayed.fresh {
                        this.seen += replayed.frame.data_ref().map_or(0, |d| d.len() as u64);
                    }
                    (replayed.frame, replayed.read)
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => return Poll::Ready(None),
            },
        };
        if let Some(limit) = this.limit
            && read > limit
        {
            return Poll::Ready(Some(Err(RequestBodyError::TooLarge { limit })));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::Caller(caller) => caller.is_end_stream(),
            Source::Replay(replay) => replay.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Caller(caller) => caller.size_hint(),
            Source::Replay(replay) => replay.size_hint(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.metrics.request_bytes(self.seen);
    }
}

/// The upstream's response body on its way to the caller.
pub struct UpstreamBody {
    inner: PooledBody<RequestBody>,
    seen: u64,
    usage: Option<Box<UsageMeter>>,
    metrics: Arc<Metrics>,
    /// The backend that answered.
    backend: Arc<str>,
    /// The request line and span, finished when the body is done (with the usage it carried).
    line: Option<Box<PendingLine>>,
    /// Keeps the request counted as in flight until the stream ends.
    _in_flight: InFlight,
    done: bool,
    broken_off: bool,
}

/// What the proxy sends back.
pub enum ResponseBody {
    Upstream(UpstreamBody),
    /// An answer made by the proxy (health, errors, metrics).
    Local(Option<Bytes>),
}

impl From<String> for ResponseBody {
    fn from(text: String) -> Self {
        Self::local(text)
    }
}

/// What the request line and span of an upstream's answer say besides what its body knows.
pub struct PendingLine {
    pub method: Method,
    pub uri: Uri,
    pub status: u16,
    pub started: Instant,
    /// Whether the line is written.
    pub log: bool,
    pub span: Option<Box<RequestSpan>>,
}

impl UpstreamBody {
    /// Writes the line and ends the span once this body is done.
    pub fn finish_when_done(&mut self, line: PendingLine) {
        self.line = Some(Box::new(line));
    }
}

impl ResponseBody {
    pub fn upstream(
        inner: PooledBody<RequestBody>,
        metrics: Arc<Metrics>,
        in_flight: InFlight,
        usage: Option<Box<UsageMeter>>,
        backend: Arc<str>,
    ) -> Self {
        ResponseBody::Upstream(UpstreamBody {
            inner,
            seen: 0,
            usage,
            metrics,
            backend,
            line: None,
            _in_flight: in_flight,
            done: false,
            broken_off: false,
        })
    }

    pub fn local(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Local(Some(bytes.into()))
    }

    pub fn empty() -> Self {
        ResponseBody::Local(None)
    }
}

/// The upstream's answer broke off after its head: the caller's is cut off too.
#[derive(Debug, thiserror::Error)]
#[error("the upstream response broke off mid-stream")]
pub struct BrokenOff;

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BrokenOff;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BrokenOff>>> {
        match self.get_mut() {
            ResponseBody::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream(body) => {
                if body.done {
                    return Poll::Ready(None);
                }
                match ready!(Pin::new(&mut body.inner).poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            body.seen += data.len() as u64;
                            if let Some(usage) = &mut body.usage {
                                usage.chunk(data);
                            }
                            if let Some(span) = body.line.as_mut().and_then(|l| l.span.as_mut()) {
                                span.chunk(data);
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(e)) => {
                        body.done = true;
                        body.broken_off = true;
                        body.metrics.upstream_error(UpstreamError::Reset);
                        tracing::warn!(
                            bytes_sent = body.seen,
                            "upstream response broke off mid-stream: {e}; cutting the caller's off too"
                        );
                        Poll::Ready(Some(Err(BrokenOff)))
                    }
                    None => {
                        body.done = true;
                        Poll::Ready(None)
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Local(bytes) => bytes.is_none(),
            ResponseBody::Upstream(body) => body.done || body.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Upstream(body) => body.inner.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.metrics.response_bytes(self.seen);
        if let Some(line) = self.line.take() {
            let PendingLine {
                method,
                uri,
                status,
                started,
                log,
                span,
            } = *line;
            let usage = self.usage.as_ref().and_then(|meter| meter.usage());
            if log {
                let path = uri.path();
                logging::access(&Exchange {
                    method: &method,
                    path,
                    status,
                    duration: started.elapsed(),
                    backend: Some(&self.backend),
                    deployment: crate::backends::deployment_in(path),
                    usage,
                });
            }
            if let Some(span) = span {
                span.end(Outcome {
                    status,
                    backend: Some(&self.backend),
                    usage,
                    broken_off: self.broken_off,
                });
            }
        }
    }
}
