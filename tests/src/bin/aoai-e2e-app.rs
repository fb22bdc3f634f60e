//! The application of the real-node tests, run in a container beside the injected sidecar. It
//! knows the sidecar only from the environment the webhook wrote (`AZURE_OPENAI_ENDPOINT`), as a
//! real application does.
//!
//! - `aoai-e2e-app call`: one chat completion through the sidecar; prints the answer; exits 0 on
//!   200 (a Job).
//! - `aoai-e2e-app serve`: first prints whether the sidecar held a token when the app started,
//!   then serves on :8080 `GET /healthz`, `GET /chat` (a chat completion through the sidecar) and
//!   `GET /stream?chunks=N&delay_ms=M` (a streamed completion passed on chunk by chunk). On
//!   SIGTERM it stops accepting, lets the requests in flight finish, and exits 0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use aoai_e2e::client::{self, body};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;

type AppBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn endpoint() -> String {
    std::env::var("AZURE_OPENAI_ENDPOINT")
        .expect("AZURE_OPENAI_ENDPOINT is set by the webhook")
        .trim_end_matches('/')
        .to_string()
}

fn chat_request(stream: bool, headers: &[(&str, String)]) -> Request<client::Body> {
    let mut request = Request::post(format!(
        "{}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        endpoint()
    ))
    .header("content-type", "application/json")
    // What an SDK sends; the sidecar replaces it.
    .header(
        "api-key",
        std::env::var("AZURE_OPENAI_API_KEY").unwrap_or_default(),
    );
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request
        .body(body(
            serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "stream": stream})
                .to_string(),
        ))
        .expect("a valid request")
}

fn full(status: StatusCode, text: impl Into<Bytes>) -> Response<AppBody> {
    Response::builder()
        .status(status)
        .body(
            Full::new(text.into())
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a valid response")
}

async fn handle(request: Request<Incoming>) -> Result<Response<AppBody>, Infallible> {
    let query: Vec<(String, String)> =
        form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    Ok(match request.uri().path() {
        "/healthz" => full(StatusCode::OK, "ok"),
        "/chat" => match client::http_client()
            .request(chat_request(false, &[]))
            .await
        {
            Ok(answer) => {
                let status = answer.status();
                let text = answer.into_body().collect().await.map(|b| b.to_bytes());
                full(status, text.unwrap_or_default())
            }
            Err(e) => full(StatusCode::BAD_GATEWAY, format!("the sidecar: {e}")),
        },
        "/stream" => {
            let headers = [
                ("x-mock-chunks", param("chunks").unwrap_or("5".into())),
                (
                    "x-mock-chunk-delay-ms",
                    param("delay_ms").unwrap_or("0".into()),
                ),
            ];
            match client::http_client()
                .request(chat_request(true, &headers))
                .await
            {
                Ok(answer) => {
                    let status = answer.status();
                    let stream = answer.into_body().map_err(|e| e.into()).boxed();
                    Response::builder()
                        .status(status)
                        .header("content-type", "text/event-stream")
                        .body(stream)
                        .expect("a valid response")
                }
                Err(e) => full(StatusCode::BAD_GATEWAY, format!("the sidecar: {e}")),
            }
        }
        _ => full(StatusCode::NOT_FOUND, "not found"),
    })
}

async fn serve() {
    // Whether the sidecar held a token before this container started: with a native sidecar
    // and its startup probe, it must have.
    let health = client::http_client()
        .request(
            Request::get(format!("{}/health", endpoint()))
                .body(body(""))
                .expect("a valid request"),
        )
        .await
        .map(|r| r.status().as_u16());
    println!("app: sidecar /health at app start: {health:?}");

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], 8080)))
        .await
        .expect("listen on :8080");
    let graceful = GracefulShutdown::new();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let connection = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .into_owned();
                let watched = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = watched.await;
                });
            }
        }
    }
    println!("app: SIGTERM; finishing the requests in flight");
    let _ = tokio::time::timeout(Duration::from_secs(60), graceful.shutdown()).await;
    println!("app: done");
}

async fn call() -> bool {
    match client::http_client()
        .request(chat_request(false, &[]))
        .await
    {
        Ok(answer) => {
            let status = answer.status();
            let text = answer.into_body().collect().await.map(|b| b.to_bytes());
            println!(
                "app: {status} {}",
                String::from_utf8_lossy(&text.unwrap_or_default())
            );
            status == StatusCode::OK
        }
        Err(e) => {
            println!("app: the sidecar: {e}");
            false
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("call") => {
            if call().await {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Some("serve") => {
            serve().await;
            std::process::ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: aoai-e2e-app call|serve");
            std::process::ExitCode::from(2)
        }
    }
}
