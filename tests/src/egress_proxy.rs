//! A CONNECT proxy on 127.0.0.1, as enterprise egress proxies are: it counts the tunnels it
//! opens (by target), can require `Proxy-Authorization: Basic ...`, and can refuse every CONNECT.
//! It tunnels only to 127.0.0.1: nothing here reaches another address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    tunnels: Mutex<HashMap<String, usize>>,
    credentials: Option<String>,
    refuse: Mutex<bool>,
}

pub struct MockEgressProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl MockEgressProxy {
    /// `credentials`: `user:password` the proxy requires (407 without them), or none.
    pub async fn start(credentials: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(State {
            credentials: credentials.map(|c| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(c)
                )
            }),
            ..State::default()
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(connect(stream, shared.clone()));
            }
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:port`, with `user:password@` when given.
    pub fn url(&self, credentials: Option<&str>) -> String {
        match credentials {
            Some(c) => format!("http://{c}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    /// Tunnels opened, by `host:port`.
    pub fn tunnels(&self) -> HashMap<String, usize> {
        self.state.tunnels.lock().unwrap().clone()
    }

    pub fn tunnels_to(&self, target: SocketAddr) -> usize {
        self.tunnels()
            .get(&target.to_string())
            .copied()
            .unwrap_or(0)
    }

    /// From now on, every CONNECT is answered 403.
    pub fn refuse(&self) {
        *self.state.refuse.lock().unwrap() = true;
    }
}

impl Drop for MockEgressProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(mut stream: TcpStream, state: Arc<State>) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read_u8().await {
            Ok(byte) => head.push(byte),
            Err(_) => return,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let target = match request_line.split(' ').collect::<Vec<_>>().as_slice() {
        ["CONNECT", target, _] => target.to_string(),
        _ => {
            let _ = stream
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                .await;
            return;
        }
    };
    let authorization = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim().to_string())
    });
    if *state.refuse.lock().unwrap() {
        let _ = stream.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
        return;
    }
    if state.credentials.is_some() && authorization != state.credentials {
        let _ = stream
            .write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n",
            )
            .await;
        return;
    }
    let loopback = target.starts_with("127.0.0.1:") || target.starts_with("localhost:");
    let Some(port) = target
        .rsplit_once(':')
        .map(|(_, p)| p.to_string())
        .filter(|_| loopback)
    else {
        let _ = stream.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
        return;
    };
    let Ok(mut upstream) = TcpStream::connect(format!("127.0.0.1:{port}")).await else {
        let _ = stream.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    *state
        .tunnels
        .lock()
        .unwrap()
        .entry(format!("127.0.0.1:{port}"))
        .or_default() += 1;
    if stream
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
}
