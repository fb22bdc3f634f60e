//! A fast mock Azure OpenAI upstream for benchmarks: a fixed ~1 KB chat completion, or with
//! `"user":"sse-N-D"` in the request body a Server-Sent-Events stream of N chunks D milliseconds
//! apart (in the body, which every proxy passes on, where a header might not be). It records
//! nothing, so it stays flat under millions of requests.

use std::convert::Infallible;
use std::path::Path;
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
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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

/// `"user":"sse-N-D"` in `request`: N chunks, D ms apart.
fn sse_asked(request: &[u8]) -> Option<(usize, u64)> {
    const MARK: &[u8] = b"\"user\":\"sse-";
    let at = memchr::memmem::find(request, MARK)? + MARK.len();
    let rest = &request[at..];
    let end = rest.iter().position(|&b| b == b'"')?;
    let text = std::str::from_utf8(&rest[..end]).ok()?;
    let (n, d) = text.split_once('-')?;
    Some((n.parse().ok()?, d.parse().ok()?))
}

/// The body that asks for `chunks` SSE chunks `delay_ms` apart.
pub fn sse_request(chunks: usize, delay_ms: u64) -> String {
    format!(
        r#"{{"messages":[{{"role":"user","content":"What is the capital of France?"}}],"stream":true,"user":"sse-{chunks}-{delay_ms}"}}"#
    )
}

async fn answer(request: Request<Incoming>, body: Bytes) -> Response<Body> {
    // Read the request body fully, as Azure OpenAI does before answering.
    let asked = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match sse_asked(&asked) {
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

/// A TLS server configuration offering HTTP/1.1 only (what nginx speaks to an upstream), from a
/// PEM certificate chain and key.
pub fn http1_tls_config(certificate: &Path, key: &Path) -> rustls::ServerConfig {
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .expect("read the upstream's certificate");
    let key = PrivateKeyDer::from_pem_file(key).expect("read the upstream's key");
    let mut config = aoai_e2e::ca::server_config(chain, key);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
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
