//! A fast mock Azure OpenAI upstream for benchmarks: a fixed ~1 KB chat completion, or with
//! `x-bench-sse: N,D` a Server-Sent-Events stream of N chunks D milliseconds apart. It records
//! nothing, so it stays flat under millions of requests.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The non-streamed answer: a chat completion padded to about 1 KB.
pub fn completion() -> Bytes {
    let content = "Paris is the capital of France. ".repeat(22);
    Bytes::from(
        serde_json::json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000,
            "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 150, "total_tokens": 162},
        })
        .to_string(),
    )
}

fn chunk(index: usize) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"part{index} \"}}}}]}}\n\n"
    ))
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(request: Request<Incoming>, body: Bytes) -> Response<Body> {
    let sse = request
        .headers()
        .get("x-bench-sse")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(','))
        .and_then(|(n, d)| Some((n.parse::<usize>().ok()?, d.parse::<u64>().ok()?)));
    // Read the request body fully, as Azure OpenAI does before answering.
    let _ = request.into_body().collect().await;
    match sse {
        None => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-request-id", "bench")
            .body(Full::new(body).boxed())
            .expect("a valid response"),
        Some((chunks, delay_ms)) => {
            let stream = futures_util::stream::unfold(0usize, move |index| async move {
                if index > chunks {
                    return None;
                }
                if index > 0 && delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                let data = if index == chunks {
                    Bytes::from_static(b"data: [DONE]\n\n")
                } else {
                    chunk(index)
                };
                Some((Ok::<_, Infallible>(Frame::data(data)), index + 1))
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(StreamBody::new(stream).boxed())
                .expect("a valid response")
        }
    }
}

/// Serves on `listener` forever.
pub async fn serve(listener: TcpListener) {
    let body = completion();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, body.clone()));
    }
}

/// Serves HTTPS on `listener` forever: HTTP/2 or HTTP/1.1, as `tls`'s ALPN list allows.
pub async fn serve_tls(listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let body = completion();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, body) = (acceptor.clone(), body.clone());
        tokio::spawn(async move {
            if let Ok(stream) = acceptor.accept(stream).await {
                serve_connection(stream, body).await;
            }
        });
    }
}

async fn serve_connection<S>(stream: S, body: Bytes)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let body = body.clone();
        async move { Ok::<_, Infallible>(answer(request, body).await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
