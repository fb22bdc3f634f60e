//! The exporter's HTTP client: the proxy's own connector (same trust, same egress proxy), each
//! export run on the tokio runtime and awaited from the SDK's batch thread.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use opentelemetry_http::{HttpClient, HttpError};

use crate::error::error_chain;
use crate::upstream::Connector;

/// A collector's answer larger than this is not read.
const MAX_ANSWER: usize = 64 * 1024;

pub struct ExportClient {
    client: Client<Connector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    endpoint: Uri,
    /// The last export failed: said once, and once more when exports work again.
    failing: AtomicBool,
}

impl fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportClient")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl ExportClient {
    pub fn new(connector: Connector, timeout: Duration, endpoint: Uri) -> Self {
        Self {
            client: crate::upstream::client(connector, Duration::from_secs(90)),
            runtime: tokio::runtime::Handle::current(),
            timeout,
            endpoint,
            failing: AtomicBool::new(false),
        }
    }

    fn outcome(&self, failure: Option<String>) {
        match failure {
            Some(reason) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(endpoint = %self.endpoint, "exporting spans failed: {reason}; spans are dropped until the collector takes them again");
                }
            }
            None => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "exporting spans works again");
                }
            }
        }
    }
}

impl HttpClient for ExportClient {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.client.clone();
        let timeout = self.timeout;
        let sent = self.runtime.spawn(async move {
            let exchange = async {
                let response = client
                    .request(request.map(Full::new))
                    .await
                    .map_err(|e| error_chain(&e))?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                Ok::<_, String>(Response::from_parts(parts, body))
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
        });
        Box::pin(async move {
            let answer = sent.await.unwrap_or_else(|e| Err(e.to_string()));
            let failure = match &answer {
                Ok(response) if response.status().is_success() => None,
                Ok(response) => Some(format!("the collector answered {}", response.status())),
                Err(reason) => Some(reason.clone()),
            };
            self.outcome(failure);
            answer.map_err(HttpError::from)
        })
    }
}
