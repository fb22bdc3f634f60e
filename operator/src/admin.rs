//! The operator's admin listener (plain HTTP): `/metrics`, `/healthz`, `/readyz`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// What the admin listener reports.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Set once this replica can do its work (see `main`).
    pub ready: AtomicBool,
}

pub fn route<B>(admin: &Admin, request: &Request<B>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            aoai_runtime::METRICS_CONTENT_TYPE,
            admin.metrics.encode(),
        ),
        "/healthz" | "/livez" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if admin.ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, "text/plain", "ok\n".to_string())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// Serves until `stop` resolves; then requests in flight get `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    stop: impl std::future::Future<Output = ()>,
    grace: std::time::Duration,
) {
    aoai_runtime::serve(
        "admin",
        listener,
        None,
        &crate::connection_builder(),
        move |_| {
            let admin = admin.clone();
            service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = route(&admin, &request);
                async move { Ok::<_, Infallible>(response) }
            })
        },
        stop,
        grace,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(admin: &Admin, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(()).unwrap();
        let response = route(admin, &request);
        let status = response.status();
        let body = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(
            response.into_body(),
        ))
        .unwrap()
        .unwrap()
        .to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn probes_follow_readiness_and_metrics_are_prometheus_text() {
        let admin = Admin {
            metrics: Arc::new(Metrics::new()),
            ready: AtomicBool::new(false),
        };
        assert_eq!(get(&admin, "/healthz").0, StatusCode::OK);
        assert_eq!(get(&admin, "/readyz").0, StatusCode::SERVICE_UNAVAILABLE);
        admin.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(&admin, "/readyz").0, StatusCode::OK);
        let (status, text) = get(&admin, "/metrics");
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("aoai_operator_build_info{version="), "{text}");
        assert!(text.contains("aoai_operator_leader 0"), "{text}");
        assert_eq!(get(&admin, "/nope").0, StatusCode::NOT_FOUND);
    }
}
