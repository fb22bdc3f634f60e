//! An OTLP/HTTP traces receiver on 127.0.0.1: decodes what an exporter sends (protobuf or JSON)
//! into plain spans a test can check. It can also hang, to play a collector that never answers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::Value;

use crate::server::{MockServer, full, handler};

/// One span as received.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// The protocol's `SpanKind` number (3 is client).
    pub kind: i32,
    pub attributes: BTreeMap<String, Value>,
    /// The protocol's status code (2 is error).
    pub status_code: i32,
    pub resource: BTreeMap<String, Value>,
}

/// One export request: how it came, besides its spans.
#[derive(Debug, Clone)]
pub struct ReceivedExport {
    pub content_type: String,
    pub headers: http::HeaderMap,
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    exports: Vec<ReceivedExport>,
    count: usize,
}

pub struct Collector {
    server: MockServer,
    received: Arc<Mutex<Received>>,
}

impl Collector {
    /// A collector that takes every export.
    pub async fn start() -> Self {
        Self::with(false, true).await
    }

    /// A collector that reads each export and never answers.
    pub async fn hanging() -> Self {
        Self::with(true, true).await
    }

    /// A collector that takes every export and only counts the spans (a benchmark's millions).
    pub async fn counting() -> Self {
        Self::with(false, false).await
    }

    async fn with(hang: bool, keep: bool) -> Self {
        let received = Arc::new(Mutex::new(Received::default()));
        let store = received.clone();
        let server = MockServer::http(handler(move |request, _| {
            let store = store.clone();
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let decoded = match content_type.as_str() {
                    "application/x-protobuf" => ExportTraceServiceRequest::decode(bytes).ok(),
                    "application/json" => serde_json::from_slice(&bytes).ok(),
                    _ => None,
                };
                if parts.uri.path() != "/v1/traces" || decoded.is_none() {
                    return http::Response::builder()
                        .status(400)
                        .body(full("not an OTLP traces export"))
                        .unwrap();
                }
                {
                    let spans = spans_of(decoded.unwrap());
                    let mut received = store.lock().unwrap();
                    received.count += spans.len();
                    if keep {
                        received.spans.extend(spans);
                        received.exports.push(ReceivedExport {
                            content_type: content_type.clone(),
                            headers: parts.headers,
                        });
                    }
                }
                if hang {
                    std::future::pending::<()>().await;
                }
                let answer = ExportTraceServiceResponse::default();
                let body = if content_type == "application/json" {
                    serde_json::to_vec(&answer).unwrap()
                } else {
                    answer.encode_to_vec()
                };
                http::Response::builder()
                    .header(http::header::CONTENT_TYPE, content_type)
                    .body(full(body))
                    .unwrap()
            }
        }))
        .await;
        Self { server, received }
    }

    /// The base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Spans received, kept or not.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().count
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.lock().unwrap().spans.clone()
    }

    pub fn exports(&self) -> Vec<ReceivedExport> {
        self.received.lock().unwrap().exports.clone()
    }

    /// Waits until the spans received satisfy `done`; panics with what came after `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if Instant::now() > deadline {
                panic!("the spans expected did not arrive within {within:?}; received: {spans:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn spans_of(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(r.attributes))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: attributes(span.attributes),
                    status_code: span.status.map_or(0, |s| s.code),
                    resource: resource.clone(),
                });
            }
        }
    }
    out
}

fn attributes(list: Vec<KeyValue>) -> BTreeMap<String, Value> {
    list.into_iter()
        .map(|kv| (kv.key, kv.value.map_or(Value::Null, value)))
        .collect()
}

fn value(value: AnyValue) -> Value {
    match value.value {
        Some(any_value::Value::StringValue(s)) => Value::from(s),
        Some(any_value::Value::BoolValue(b)) => Value::from(b),
        Some(any_value::Value::IntValue(i)) => Value::from(i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.into_iter().map(self::value).collect())
        }
        _ => Value::Null,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
