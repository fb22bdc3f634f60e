//! The mutating admission webhook: HTTPS `POST /mutate`, AdmissionReview v1.
//!
//! [`Webhook::review`] turns a request body into a response (status and JSON) without I/O: it reads
//! AzureOpenAIProxy objects from a reflector cache, never from the API server, and calls
//! [`mutate::inject`]. [`serve`] puts it behind TLS with a certificate that can change while it
//! runs (see `certs`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::crd::AzureOpenAIProxy;
use crate::metrics::Metrics;
use crate::mutate::{self, InjectOptions, Outcome, deny, skip};

/// Largest AdmissionReview body read (the API server's own request limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Outcome labels of `aoai_operator_admissions_total`.
pub mod result {
    pub const INJECTED: &str = "injected";
    pub const SKIPPED: &str = "skipped";
    pub const DENIED: &str = "denied";
    pub const INVALID: &str = "invalid";
}

pub struct Webhook {
    pub proxies: Store<AzureOpenAIProxy>,
    pub options: InjectOptions,
    pub metrics: Arc<Metrics>,
    /// Records an Event on the pod's owner (or the AzureOpenAIProxy) for each injection and
    /// denial, as linkerd does; none for dry runs.
    pub events: Option<Recorder>,
}

/// The object an admission Event is about: the pod's controller (ReplicaSet, Job, StatefulSet...),
/// else the AzureOpenAIProxy it named. A bare pod does not exist yet, so it cannot be one.
fn event_subject(pod: &Pod, namespace: &str) -> Option<ObjectReference> {
    if let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        return Some(ObjectReference {
            api_version: Some(owner.api_version.clone()),
            kind: Some(owner.kind.clone()),
            name: Some(owner.name.clone()),
            namespace: Some(namespace.to_string()),
            uid: Some(owner.uid.clone()),
            ..Default::default()
        });
    }
    let name = pod
        .metadata
        .annotations
        .as_ref()?
        .get(crate::annotations::INJECT)?;
    Some(ObjectReference {
        api_version: Some("aoai-proxy.io/v1alpha1".into()),
        kind: Some("AzureOpenAIProxy".into()),
        name: Some(name.clone()),
        namespace: Some(namespace.to_string()),
        ..Default::default()
    })
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The response as the API server reads it: `patch` is a `[]byte`, which Go's JSON writes as
/// base64 (kube-core serializes it as an array of numbers).
fn encode_review(response: AdmissionResponse) -> Vec<u8> {
    let patch = response.patch.clone();
    let mut review = serde_json::to_value(response.into_review()).unwrap_or_default();
    if let Some(patch) = patch {
        review["response"]["patch"] =
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    serde_json::to_vec(&review).unwrap_or_default()
}

fn bad_request(message: &str) -> Response<Full<Bytes>> {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::to_vec(&serde_json::json!({"error": message})).unwrap_or_default(),
    )
}

impl Webhook {
    /// Answers one AdmissionReview body: the HTTP status and the JSON to send.
    pub fn review(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
            Ok(review) => review,
            Err(e) => {
                self.metrics
                    .admitted(result::INVALID, deny::MALFORMED_REQUEST, started.elapsed());
                return bad_request(&format!("the body is not an AdmissionReview: {e}"));
            }
        };
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(request) => request,
            Err(e) => {
                self.metrics
                    .admitted(result::INVALID, deny::MALFORMED_REQUEST, started.elapsed());
                return bad_request(&format!("the AdmissionReview has no usable request: {e}"));
            }
        };
        let (response, result, reason) = self.admit(&request);
        self.metrics.admitted(result, reason, started.elapsed());
        if !request.dry_run && (result == result::INJECTED || result == result::DENIED) {
            self.record(&request, &response, result, reason);
        }
        if result == result::DENIED {
            tracing::info!(
                namespace = request.namespace.as_deref().unwrap_or_default(),
                pod = request.name,
                reason,
                "denied: {}",
                response.result.message
            );
        }
        json(StatusCode::OK, encode_review(response))
    }

    /// Publishes the admission Event in the background: admission never waits for it.
    fn record(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        response: &AdmissionResponse,
        result: &'static str,
        reason: &'static str,
    ) {
        let Some(recorder) = self.events.clone() else {
            return;
        };
        let namespace = request.namespace.clone().unwrap_or_default();
        let pod: Option<Pod> = request
            .object
            .as_ref()
            .and_then(|o| serde_json::to_value(o).ok())
            .and_then(|v| serde_json::from_value(v).ok());
        let Some(pod) = pod else { return };
        let Some(subject) = event_subject(&pod, &namespace) else {
            return;
        };
        let pod_name = pod
            .metadata
            .name
            .clone()
            .or(pod.metadata.generate_name.clone().map(|g| format!("{g}*")))
            .unwrap_or_default();
        let event = if result == result::INJECTED {
            Event {
                type_: EventType::Normal,
                reason: "Injected".into(),
                note: Some(format!("aoai-proxy sidecar injected into pod {pod_name}")),
                action: reason.into(),
                secondary: None,
            }
        } else {
            Event {
                type_: EventType::Warning,
                reason: "InjectionDenied".into(),
                note: Some(format!("pod {pod_name}: {}", response.result.message)),
                action: reason.into(),
                secondary: None,
            }
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &subject).await {
                tracing::debug!("cannot record the admission event: {e}");
            }
        });
    }

    fn admit(
        &self,
        request: &AdmissionRequest<DynamicObject>,
    ) -> (AdmissionResponse, &'static str, &'static str) {
        let allowed = AdmissionResponse::from(request);
        let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
        let (true, Operation::Create, Some(object)) = (is_pod, &request.operation, &request.object)
        else {
            return (allowed, result::SKIPPED, skip::NOT_A_POD_CREATE);
        };
        let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
            Ok(pod) => pod,
            Err(e) => {
                return (
                    allowed.deny(format!("aoai-proxy: the pod cannot be read: {e}")),
                    result::DENIED,
                    deny::MALFORMED_REQUEST,
                );
            }
        };
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_default();
        let Some(spec) = pod.spec.clone() else {
            return (
                allowed.deny("aoai-proxy: the pod has no spec"),
                result::DENIED,
                deny::MALFORMED_REQUEST,
            );
        };
        let (mut meta, mut new_spec) = (pod.metadata.clone(), spec.clone());
        let lookup = |name: &str| self.proxies.get(&ObjectRef::new(name).within(&namespace));
        match mutate::inject(&mut meta, &mut new_spec, &namespace, lookup, &self.options) {
            Outcome::Skipped(reason) => (allowed, result::SKIPPED, reason),
            Outcome::Denied { reason, message } => (
                allowed.deny(format!("aoai-proxy: {message}")),
                result::DENIED,
                reason,
            ),
            Outcome::Injected { warnings } => {
                let patch = mutate::pod_patch(&pod.metadata, &spec, &meta, &new_spec);
                match allowed.with_patch(patch) {
                    Ok(mut response) => {
                        if !warnings.is_empty() {
                            response.warnings = Some(warnings);
                        }
                        (response, result::INJECTED, "injected")
                    }
                    Err(e) => (
                        AdmissionResponse::from(request).deny(format!("aoai-proxy: {e}")),
                        result::DENIED,
                        deny::MALFORMED_REQUEST,
                    ),
                }
            }
        }
    }

    async fn handle(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::POST, "/mutate") => {}
            (_, "/mutate") => {
                return json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    br#"{"error":"POST an AdmissionReview"}"#.to_vec(),
                );
            }
            _ => return json(StatusCode::NOT_FOUND, br#"{"error":"not found"}"#.to_vec()),
        }
        match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(body) => self.review(&body.to_bytes()),
            Err(e) => {
                self.metrics
                    .admitted(result::INVALID, deny::MALFORMED_REQUEST, Default::default());
                bad_request(&format!(
                    "cannot read the body (at most {MAX_BODY} bytes): {e}"
                ))
            }
        }
    }
}

/// Serves the webhook over TLS on `listener` until the task is dropped. `tls` is consulted at
/// each handshake, so a rotated certificate is used without a restart.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, webhook: Arc<Webhook>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                aoai_proxy::server::accept_failed(e).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!("webhook TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |request| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(webhook.handle(request).await) }
            });
            let _ = crate::connection_builder()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
