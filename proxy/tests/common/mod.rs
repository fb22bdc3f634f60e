//! Runs the proxy in-process on 127.0.0.1 with ephemeral ports, or as a process (see `process`).
#![allow(dead_code)]

pub mod process;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aoai_proxy::Proxy;
use aoai_proxy::config::Config;
use aoai_proxy::token::TokenSource;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "proxy-access-token";

pub struct TestProxy {
    pub url: String,
    pub admin_url: String,
    pub token: Arc<TokenSource>,
    stop: Option<oneshot::Sender<()>>,
    done: JoinHandle<()>,
}

pub fn config(vars: &[(&str, &str)]) -> Config {
    let mut map: HashMap<String, String> = HashMap::from([
        ("HOST".into(), "127.0.0.1".into()),
        ("AOAI_PROXY_ADMIN_HOST".into(), "127.0.0.1".into()),
    ]);
    map.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut config =
        Config::from_lookup(|name| map.get(name).cloned()).expect("valid test configuration");
    config.listen.set_port(0);
    config.admin_listen.set_port(0);
    config
}

/// A token source holding a fixed one-hour token.
pub fn fixed_token() -> Arc<TokenSource> {
    Arc::new(TokenSource::fixed(TOKEN, Duration::from_secs(3600)).unwrap())
}

impl TestProxy {
    pub async fn start(vars: &[(&str, &str)], token: Arc<TokenSource>) -> Self {
        Self::start_with(config(vars), token).await
    }

    pub async fn start_with(config: Config, token: Arc<TokenSource>) -> Self {
        let proxy = Proxy::with_token_source(&config, token.clone())
            .await
            .expect("proxy starts");
        let url = format!("http://{}", proxy.forward_addr());
        let admin_url = format!("http://{}", proxy.admin_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(proxy.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            url,
            admin_url,
            token,
            stop: Some(stop),
            done,
        }
    }

    /// Signals shutdown (as SIGTERM does) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Signals shutdown and waits until the proxy has finished serving.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(30), &mut self.done)
            .await
            .expect("proxy stops within 30 s")
            .expect("serve task ends cleanly");
    }

    pub async fn wait_stopped(&mut self, within: Duration) {
        tokio::time::timeout(within, &mut self.done)
            .await
            .expect("proxy stops in time")
            .expect("serve task ends cleanly");
    }
}

/// An address on 127.0.0.1 where nothing listens.
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Asserts that a 429 tells, in both of its headers, what is left of a wait of `asked` that the
/// proxy started while the request was under way (the request took `took`): never more than
/// asked, and less only by what had passed when the answer was written, so a caller that waits
/// as told comes back when the proxy lets requests through again.
pub fn assert_wait_told(
    answer: &aoai_e2e::client::Answer,
    asked: Duration,
    took: Duration,
    case: &str,
) {
    let header = |name: &str| -> u64 {
        answer.headers[name]
            .to_str()
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{case}: {name}: {:?}", answer.headers[name]))
    };
    let asked_ms = u64::try_from(asked.as_millis()).unwrap();
    let took_ms = u64::try_from(took.as_micros().div_ceil(1000)).unwrap();
    let told_ms = header("retry-after-ms");
    assert!(
        (asked_ms.saturating_sub(took_ms)..=asked_ms).contains(&told_ms),
        "{case}: retry-after-ms {told_ms}: the {asked_ms} ms asked, less at most the request's {took_ms} ms"
    );
    assert_eq!(
        header("retry-after"),
        told_ms.div_ceil(1000),
        "{case}: whole seconds, rounded up"
    );
}
