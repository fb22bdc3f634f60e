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
use crate::mutate::text::REFUSAL_PREFIX;
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
    /// Records an Event on the pod's owner (or the AzureOpenAIProxy) for each denial, as linkerd
    /// does; none for dry runs.
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

/// The request of an AdmissionReview body, its object decoded as `K`.
fn decode<K>(body: &[u8]) -> Result<AdmissionRequest<K>, String>
where
    K: kube::Resource + serde::de::DeserializeOwned,
{
    let review: AdmissionReview<K> = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an AdmissionReview: {e}"))?;
    review
        .try_into()
        .map_err(|e| format!("the AdmissionReview has no usable request: {e}"))
}

fn is_pod<K: kube::Resource>(request: &AdmissionRequest<K>) -> bool {
    request.kind.group.is_empty() && request.kind.kind == "Pod"
}

fn bad_request(message: &str) -> Response<Full<Bytes>> {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::to_vec(&serde_json::json!({"error": message})).unwrap_or_default(),
    )
}

/// What the webhook decided about one admission request.
enum Decision {
    Injected {
        patch: json_patch::Patch,
        warnings: Vec<String>,
    },
    Skipped(&'static str),
    Denied {
        reason: &'static str,
        message: String,
    },
}

impl Decision {
    /// The `result` label of `aoai_operator_admissions_total`.
    fn result(&self) -> &'static str {
        match self {
            Decision::Injected { .. } => result::INJECTED,
            Decision::Skipped(_) => result::SKIPPED,
            Decision::Denied { .. } => result::DENIED,
        }
    }

    /// The `reason` label, and the Event's action.
    fn reason(&self) -> &'static str {
        match self {
            Decision::Injected { .. } => "injected",
            Decision::Skipped(reason) | Decision::Denied { reason, .. } => reason,
        }
    }
}

fn denial(reason: &'static str, message: impl Into<String>) -> Decision {
    Decision::Denied {
        reason,
        message: message.into(),
    }
}

impl Webhook {
    /// Answers one AdmissionReview body: the HTTP status and the JSON to send. The body is
    /// decoded once, straight into a typed Pod; only what is not a pod goes through a generic
    /// object (and is allowed unchanged).
    pub fn review(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let request = match decode::<Pod>(body) {
            Ok(request) => request,
            Err(pod_error) => match decode::<DynamicObject>(body) {
                // Not a pod: nothing to inject.
                Ok(other) if !is_pod(&other) => {
                    self.metrics.admitted(
                        result::SKIPPED,
                        skip::NOT_A_POD_CREATE,
                        started.elapsed(),
                    );
                    return json(
                        StatusCode::OK,
                        encode_review(AdmissionResponse::from(&other)),
                    );
                }
                // A pod that is not one: refused, as the API server would not send it.
                Ok(other) => {
                    let response = AdmissionResponse::from(&other).deny(format!(
                        "{REFUSAL_PREFIX}the pod cannot be read: {pod_error}"
                    ));
                    self.metrics.admitted(
                        result::DENIED,
                        deny::MALFORMED_REQUEST,
                        started.elapsed(),
                    );
                    return json(StatusCode::OK, encode_review(response));
                }
                Err(e) => {
                    self.metrics.admitted(
                        result::INVALID,
                        deny::MALFORMED_REQUEST,
                        started.elapsed(),
                    );
                    return bad_request(&e);
                }
            },
        };
        let decision = self.decide(&request);
        self.metrics
            .admitted(decision.result(), decision.reason(), started.elapsed());
        if let Decision::Denied { reason, message } = &decision {
            tracing::info!(
                namespace = request.namespace.as_deref().unwrap_or_default(),
                pod = request.name,
                reason,
                "denied: {REFUSAL_PREFIX}{message}"
            );
        }
        if !request.dry_run {
            self.record(&request, &decision);
        }
        let allowed = AdmissionResponse::from(&request);
        let response = match decision {
            Decision::Skipped(_) => allowed,
            Decision::Denied { message, .. } => allowed.deny(format!("{REFUSAL_PREFIX}{message}")),
            Decision::Injected { patch, warnings } => match allowed.with_patch(patch) {
                Ok(mut response) => {
                    if !warnings.is_empty() {
                        response.warnings = Some(warnings);
                    }
                    response
                }
                Err(e) => AdmissionResponse::from(&request).deny(format!("{REFUSAL_PREFIX}{e}")),
            },
        };
        json(StatusCode::OK, encode_review(response))
    }

    /// Publishes the Event of a denial in the background: admission never waits for it. (An
    /// injection's Event comes from the controller's pod watch, whichever engine injected.)
    fn record(&self, request: &AdmissionRequest<Pod>, decision: &Decision) {
        let Decision::Denied { message, .. } = decision else {
            return;
        };
        let (Some(recorder), Some(pod)) = (self.events.clone(), request.object.as_ref()) else {
            return;
        };
        let namespace = request.namespace.clone().unwrap_or_default();
        let Some(subject) = event_subject(pod, &namespace) else {
            return;
        };
        let pod_name = pod
            .metadata
            .name
            .clone()
            .or(pod.metadata.generate_name.clone().map(|g| format!("{g}*")))
            .unwrap_or_default();
        let event = Event {
            type_: EventType::Warning,
            reason: "InjectionDenied".into(),
            note: Some(format!("pod {pod_name}: {REFUSAL_PREFIX}{message}")),
            action: decision.reason().into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &subject).await {
                tracing::debug!("cannot record the admission event: {e}");
            }
        });
    }

    fn decide(&self, request: &AdmissionRequest<Pod>) -> Decision {
        // Another kind's object may decode as a Pod (every field of a Pod is optional).
        let (true, Operation::Create, Some(pod)) =
            (is_pod(request), &request.operation, &request.object)
        else {
            return Decision::Skipped(skip::NOT_A_POD_CREATE);
        };
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_default();
        let Some(spec) = pod.spec.as_ref() else {
            return denial(deny::MALFORMED_REQUEST, "the pod has no spec");
        };
        let lookup = |name: &str| self.proxies.get(&ObjectRef::new(name).within(&namespace));
        match mutate::decide(&pod.metadata, spec, &namespace, lookup, &self.options) {
            Outcome::Skipped(reason) => Decision::Skipped(reason),
            Outcome::Denied { reason, message } => denial(reason, message),
            Outcome::Injected(injection) => Decision::Injected {
                patch: injection.patch(&pod.metadata, spec),
                warnings: injection.warnings,
            },
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

/// Serves the webhook over TLS on `listener` until `stop` resolves; then requests in flight get
/// `grace` to finish. `tls` is consulted at each handshake, so a rotated certificate is used
/// without a restart.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    webhook: Arc<Webhook>,
    stop: impl std::future::Future<Output = ()>,
    grace: std::time::Duration,
) {
    aoai_runtime::serve(
        "webhook",
        listener,
        Some(TlsAcceptor::from(tls)),
        &crate::connection_builder(),
        move |_| {
            let webhook = webhook.clone();
            service_fn(move |request| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(webhook.handle(request).await) }
            })
        },
        stop,
        grace,
    )
    .await
}
