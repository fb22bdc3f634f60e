//! hyper-floor is only a fair floor if it does a proxy's whole job: each request reaches the
//! upstream with its body and the added header, the answer comes back, and the upstream
//! connection is kept for the next request (a floor that dialled anew per request would cost more
//! than aoai-proxy does).

use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::AUTHORIZATION;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

struct Floor(Child);

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Answers each request with the `Authorization` header it got and its body; counts connections.
async fn echo_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: Request<hyper::body::Incoming>| async move {
                        let authorization = request.headers()[AUTHORIZATION]
                            .to_str()
                            .unwrap()
                            .to_owned();
                        let body = request.into_body().collect().await?.to_bytes();
                        let answer = format!("{authorization} {}", String::from_utf8_lossy(&body));
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(answer))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{address}"), connections)
}

#[tokio::test]
async fn the_floor_forwards_with_its_header_over_one_kept_upstream_connection() {
    let (upstream, upstream_connections) = echo_upstream().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _floor = Floor(
        Command::new(env!("CARGO_BIN_EXE_hyper-floor"))
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("API_BASE_URL", &upstream)
            .spawn()
            .unwrap(),
    );
    let stream = async {
        loop {
            match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(stream) => return stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    let stream = tokio::time::timeout(Duration::from_secs(10), stream)
        .await
        .expect("hyper-floor listens");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);

    for n in 0..3 {
        let request = Request::post("/openai/v1/chat/completions")
            .header("host", "127.0.0.1")
            .body(Full::new(Bytes::from(format!("request {n}"))))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("Bearer floor request {n}"));
    }
    assert_eq!(upstream_connections.load(Ordering::SeqCst), 1);
}
