//! OpenTelemetry traces: one span per forwarded request with the GenAI semantic conventions'
//! attributes, continuing the caller's W3C trace context and passing it on to Azure, and one span
//! per token acquisition. Spans are exported over OTLP/HTTP by the SDK's batch processor on its own
//! thread, through our hyper client: a request only ever hands its ended span to a bounded queue,
//! so a slow or absent collector costs dropped spans, never a slower request.

mod export;
mod fields;

use std::borrow::Cow;
use std::time::Duration;

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span};

use crate::config::{self, OtlpProtocol, RootSampler, Traces};
use crate::upstream::Connector;
use crate::usage::Usage;
pub use fields::{FieldScanner, ResponseFields};

/// `gen_ai.provider.name` of Azure OpenAI.
const PROVIDER: &str = "azure.ai.openai";
/// How long the last spans may take to leave at shutdown.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

/// The tracer and the provider that exports its spans.
#[derive(Clone)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

#[derive(Debug, thiserror::Error)]
#[error("OTEL_EXPORTER_OTLP_ENDPOINT: the exporter could not be built: {0}")]
pub struct TracesError(String);

impl Tracing {
    /// Starts the exporter (its batch thread included). Must run inside the tokio runtime, which
    /// carries the exports.
    pub fn start(config: &Traces, connector: Connector) -> Result<Self, TracesError> {
        let client = export::ExportClient::new(connector, config.timeout, config.endpoint.clone());
        let headers = config
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.expose().to_string()))
            .collect();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(config.endpoint.to_string())
            .with_protocol(match config.protocol {
                OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
                OtlpProtocol::HttpJson => Protocol::HttpJson,
            })
            .with_timeout(config.timeout)
            .with_headers(headers)
            .build()
            .map_err(|e| TracesError(e.to_string()))?;
        let resource = Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_attributes(
                config
                    .resource_attributes
                    .iter()
                    .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_sampler(sampler(config.sampler))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("aoai-proxy");
        tracing::info!(endpoint = %config.endpoint, "exporting traces over OTLP");
        Ok(Self {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// The span of a caller's request (`None` for health checks), child of the caller's trace
    /// context when it sent one.
    pub fn request_span(
        &self,
        method: &http::Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<RequestSpan> {
        if path == "/health" {
            return None;
        }
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let operation = Operation::of(path);
        let model = crate::backends::deployment_in(path);
        let name: Cow<'static, str> = match (operation, model) {
            (Some(operation), Some(model)) => format!("{} {model}", operation.name()).into(),
            (Some(operation), None) => operation.name().into(),
            (None, _) => method.as_str().to_string().into(),
        };
        let mut attributes = vec![KeyValue::new(
            "http.request.method",
            method.as_str().to_string(),
        )];
        if let Some(operation) = operation {
            attributes.push(KeyValue::new("gen_ai.operation.name", operation.name()));
            attributes.push(KeyValue::new("gen_ai.provider.name", PROVIDER));
            attributes.push(KeyValue::new("openai.api.type", operation.api_type()));
        }
        if let Some(model) = model {
            attributes.push(KeyValue::new("gen_ai.request.model", model.to_string()));
        }
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let fields = span.is_recording().then(Box::<FieldScanner>::default);
        Some(RequestSpan { span, fields })
    }

    /// Writes `span`'s context as the outgoing `traceparent` (and `tracestate`): Azure sees this
    /// hop as the parent.
    pub fn inject(&self, span: &RequestSpan, headers: &mut HeaderMap) {
        let context = Context::new().with_remote_span_context(span.context().clone());
        self.propagator
            .inject_context(&context, &mut HeaderInjector(headers));
    }

    /// The span of one token acquisition (a root: refreshes run on their own schedule).
    pub fn acquisition_span(&self, credential: &'static str) -> Span {
        self.tracer
            .span_builder("acquire_token")
            .with_kind(SpanKind::Client)
            .with_attributes([KeyValue::new("aoai_proxy.credential", credential)])
            .start(&self.tracer)
    }

    /// Exports what is still queued, for a bounded time; then the exporter stops.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_FLUSH))
                .await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!("the last spans may not have been exported: {error}");
        }
    }
}

/// Ends an acquisition span with its outcome.
pub fn end_acquisition(mut span: Span, failure: Option<(&'static str, String)>) {
    if let Some((kind, message)) = failure {
        span.set_attribute(KeyValue::new("error.type", kind));
        span.set_status(Status::error(message));
    }
    span.end();
}

fn sampler(sampler: config::Sampler) -> Sampler {
    let root = |root: RootSampler| match root {
        RootSampler::AlwaysOn => Sampler::AlwaysOn,
        RootSampler::AlwaysOff => Sampler::AlwaysOff,
        RootSampler::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
    };
    match sampler {
        config::Sampler::AlwaysOn => Sampler::AlwaysOn,
        config::Sampler::AlwaysOff => Sampler::AlwaysOff,
        config::Sampler::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
        config::Sampler::ParentBased(r) => Sampler::ParentBased(Box::new(root(r))),
    }
}

/// The GenAI operation a request path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    ChatCompletions,
    Responses,
    Completions,
    Embeddings,
}

impl Operation {
    fn of(path: &str) -> Option<Self> {
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Some(Self::ChatCompletions)
        } else if path.ends_with("/completions") {
            Some(Self::Completions)
        } else if path.ends_with("/embeddings") {
            Some(Self::Embeddings)
        } else if path.ends_with("/responses") {
            Some(Self::Responses)
        } else {
            None
        }
    }

    /// `gen_ai.operation.name`.
    fn name(self) -> &'static str {
        match self {
            Self::ChatCompletions | Self::Responses => "chat",
            Self::Completions => "text_completion",
            Self::Embeddings => "embeddings",
        }
    }

    /// `openai.api.type`.
    fn api_type(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Responses => "responses",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
        }
    }
}

/// A request's span, from its arrival until its answer's last byte.
pub struct RequestSpan {
    span: Span,
    /// Reads the answer's model, id and finish reasons; only for a sampled span.
    fields: Option<Box<FieldScanner>>,
}

/// How a request ended, besides what its body said.
pub struct Outcome<'a> {
    pub status: u16,
    /// `host[:port]` of the backend that answered.
    pub backend: Option<&'a str>,
    pub usage: Option<Usage>,
    /// The upstream's answer broke off mid-stream.
    pub broken_off: bool,
}

impl RequestSpan {
    fn context(&self) -> &SpanContext {
        self.span.span_context()
    }

    /// A chunk of the answer's body.
    pub fn chunk(&mut self, data: &[u8]) {
        if let Some(fields) = &mut self.fields {
            fields.feed(data);
        }
    }

    pub fn end(mut self: Box<Self>, outcome: Outcome<'_>) {
        if !self.span.is_recording() {
            return;
        }
        let span = &mut self.span;
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(outcome.status),
        ));
        if let Some(backend) = outcome.backend {
            let (host, port) = split_host_port(backend);
            span.set_attribute(KeyValue::new("server.address", host.to_string()));
            if let Some(port) = port {
                span.set_attribute(KeyValue::new("server.port", i64::from(port)));
            }
        }
        if let Some(usage) = outcome.usage {
            span.set_attribute(KeyValue::new(
                "gen_ai.usage.input_tokens",
                usage.input as i64,
            ));
            span.set_attribute(KeyValue::new(
                "gen_ai.usage.output_tokens",
                usage.output as i64,
            ));
        }
        if let Some(fields) = self.fields.take() {
            let ResponseFields {
                model,
                id,
                finish_reasons,
            } = fields.fields().clone();
            if let Some(model) = model {
                span.set_attribute(KeyValue::new("gen_ai.response.model", model));
            }
            if let Some(id) = id {
                span.set_attribute(KeyValue::new("gen_ai.response.id", id));
            }
            if !finish_reasons.is_empty() {
                let reasons: Vec<opentelemetry::StringValue> =
                    finish_reasons.into_iter().map(Into::into).collect();
                span.set_attribute(KeyValue::new(
                    "gen_ai.response.finish_reasons",
                    opentelemetry::Value::Array(reasons.into()),
                ));
            }
        }
        let error = if outcome.broken_off {
            Some("upstream_reset".to_string())
        } else {
            (outcome.status >= 400).then(|| outcome.status.to_string())
        };
        if let Some(error) = error {
            span.set_attribute(KeyValue::new("error.type", error));
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

/// `host[:port]` (an IPv6 host in brackets) as the semantic conventions want it: the host
/// without brackets, the port as a number.
fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port))
            if !host.ends_with(':') && (host.starts_with('[') == host.ends_with(']')) =>
        {
            (host, port.parse().ok())
        }
        _ => (authority, None),
    };
    match port {
        Some(port) => (
            host.trim_start_matches('[').trim_end_matches(']'),
            Some(port),
        ),
        None => (
            authority.trim_start_matches('[').trim_end_matches(']'),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_by_path() {
        for (path, operation) in [
            (
                "/openai/deployments/gpt-4o/chat/completions",
                Some(Operation::ChatCompletions),
            ),
            (
                "/openai/v1/chat/completions",
                Some(Operation::ChatCompletions),
            ),
            (
                "/openai/deployments/d/completions",
                Some(Operation::Completions),
            ),
            (
                "/openai/deployments/e/embeddings",
                Some(Operation::Embeddings),
            ),
            ("/openai/v1/responses", Some(Operation::Responses)),
            ("/openai/v1/responses/resp_1", None),
            ("/openai/deployments/d/images/generations", None),
            ("/openai/v1/models", None),
        ] {
            assert_eq!(Operation::of(path), operation, "{path}");
        }
    }

    #[test]
    fn server_address_and_port() {
        assert_eq!(
            split_host_port("r.openai.azure.com"),
            ("r.openai.azure.com", None)
        );
        assert_eq!(split_host_port("127.0.0.1:8443"), ("127.0.0.1", Some(8443)));
        assert_eq!(split_host_port("[::1]:8443"), ("::1", Some(8443)));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
    }
}
