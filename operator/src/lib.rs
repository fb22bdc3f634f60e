//! aoai-operator: the `AzureOpenAIProxy` CRD, its controller, the mutating webhook that injects the
//! aoai-proxy sidecar, and the offline `inject` command.

pub mod admin;
pub mod annotations;
pub mod certs;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod inject;
pub mod lease;
pub mod metrics;
pub mod mutate;
pub mod policy;
pub mod proxy_watch;
pub mod rbac;
pub mod status;
pub mod webhook;

/// How the operator's listeners (webhook, admin) serve a connection: HTTP/1.1 or h2, and a client
/// that has not sent its request head within 10 s is cut off (as the proxy's listeners do).
pub(crate) fn connection_builder()
-> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    builder
}
