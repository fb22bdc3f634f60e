//! aoai-proxy in this process, configured by an environment exactly as a container's would be
//! (its real credential, its real parser), for the tests that check what the operator injects.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Sidecar {
    /// The forwarding listener, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The admin listener (`/health`, `/metrics`), `http://127.0.0.1:PORT`.
    pub admin_url: String,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<()>,
}

impl Sidecar {
    /// Parses `env` with the proxy's own `Config::from_lookup`, starts it, and waits until it
    /// holds a token (`/health` answers 200).
    pub async fn start(env: &HashMap<String, String>) -> Self {
        let config = aoai_proxy::config::Config::from_lookup(|name| env.get(name).cloned())
            .unwrap_or_else(|e| panic!("the environment does not configure the proxy: {e}"));
        let proxy = aoai_proxy::Proxy::build(&config)
            .await
            .expect("the sidecar starts");
        let url = format!("http://{}", proxy.forward_addr());
        let admin_url = format!("http://{}", proxy.admin_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(proxy.serve(async {
            let _ = stopped.await;
        }));
        let health = format!("{url}/health");
        crate::wait::until(
            "the sidecar holds a token",
            Duration::from_secs(15),
            || async {
                let answer = crate::client::get(&health, &[]).await;
                if answer.status == 200 {
                    Ok(())
                } else {
                    Err(answer.text())
                }
            },
        )
        .await;
        Self {
            url,
            admin_url,
            stop,
            serving,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.serving.await;
    }
}
