//! The one serve loop of every listener (`aoai_proxy::server::serve`: the proxy's two ports and
//! the operator's webhook and admin ports), on 127.0.0.1: a client that does not send its request
//! head in time is cut off; at shutdown the listener closes, a request in flight finishes, and one
//! that outlives the grace period is dropped when it ends.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn builder(header_read_timeout: Duration) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder
}

/// Answers 200 after the delay the request's path gives in milliseconds.
async fn slow(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let delay: u64 = request
        .uri()
        .path()
        .trim_start_matches('/')
        .parse()
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    Ok(Response::new(Full::new(Bytes::from_static(b"done"))))
}

/// Starts the loop; returns its address, the trigger of its shutdown and its task.
async fn start(
    grace: Duration,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        aoai_proxy::server::serve(
            "test",
            listener,
            None,
            &builder(Duration::from_millis(300)),
            |_| service_fn(slow),
            async {
                let _ = stopped.await;
            },
            grace,
        )
        .await
    });
    (addr, stop, task)
}

async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}

#[tokio::test]
async fn a_client_that_sends_no_head_in_time_is_cut_off() {
    let (addr, _stop, _task) = start(Duration::from_secs(5)).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\n").await.unwrap(); // and nothing more
    let mut buffer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut buffer)).await;
    assert!(closed.is_ok(), "the slow client is still connected");
    assert!(
        get(addr, "/0").await.unwrap().starts_with("HTTP/1.1 200"),
        "others are served"
    );
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_lets_a_request_in_flight_finish() {
    let (addr, stop, task) = start(Duration::from_secs(5)).await;
    let in_flight = tokio::spawn(get(addr, "/500"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    let answer = in_flight.await.unwrap().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
        "{answer}"
    );
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop ends")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn a_request_that_outlives_the_grace_period_does_not_hold_the_shutdown() {
    let (addr, stop, task) = start(Duration::from_millis(200)).await;
    let in_flight = tokio::spawn(get(addr, "/60000"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop ends after the grace period")
        .unwrap();
    assert!(
        stopping.elapsed() >= Duration::from_millis(200),
        "the grace period was not given"
    );
    in_flight.abort();
}
