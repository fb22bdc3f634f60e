//! OpenTelemetry traces from the real binary to a real OTLP/HTTP receiver on loopback: the spans,
//! their GenAI attributes and parent links, the trace context passed on to Azure, token
//! acquisitions as their own spans, both encodings, and requests untouched by a collector that is
//! down or never answers.

mod common;

use std::time::Duration;

use aoai_e2e::client::{chat, post_json};
use aoai_e2e::managed_identity::MockManagedIdentity;
use aoai_e2e::openai::{Fault, MockOpenAi, STREAM_PROMPT_TOKENS};
use aoai_e2e::otlp::{Collector, ReceivedSpan};
use aoai_e2e::tokens::TokenLedger;
use common::closed_port_url;
use common::process::{ProxyProcess, assert_no_secrets, run_to_exit};
use http::StatusCode;
use serde_json::{Value, json};

const COLLECTOR_SECRET: &str = "collector-secret-4f7a";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const SPAN_KIND_CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;
const WITHIN: Duration = Duration::from_secs(15);

/// Azure OpenAI and managed identity on loopback.
struct Azure {
    upstream: MockOpenAi,
    identity: MockManagedIdentity,
}

impl Azure {
    async fn start() -> Self {
        let ledger = TokenLedger::new();
        let identity =
            MockManagedIdentity::start("unused", Duration::from_secs(86400), ledger.clone()).await;
        let upstream = MockOpenAi::start_checking(ledger).await;
        Self { upstream, identity }
    }

    /// A proxy exporting to `endpoint`, with `extra` variables; ready when it returns.
    async fn proxy(&self, endpoint: &str, extra: &[(&str, &str)]) -> ProxyProcess {
        let base = self.upstream.url();
        let imds = self.identity.imds_base();
        let mut vars = vec![
            ("API_BASE_URL", base.as_str()),
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.as_str()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            // The SDK's batch delay, short so that the test need not wait for the default.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ];
        vars.extend_from_slice(extra);
        let mut proxy = ProxyProcess::spawn(&vars);
        proxy.wait_healthy(WITHIN).await;
        proxy
    }

    /// The `traceparent` the upstream received with its request number `index`.
    fn traceparent(&self, index: usize) -> String {
        let requests = self.upstream.requests();
        requests[index]
            .headers
            .get("traceparent")
            .expect("a traceparent reaches Azure")
            .to_str()
            .unwrap()
            .to_string()
    }
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn attribute<'a>(span: &'a ReceivedSpan, key: &str) -> &'a Value {
    span.attributes.get(key).unwrap_or(&Value::Null)
}

#[tokio::test]
async fn each_request_is_a_client_span_of_the_callers_trace_with_the_genai_attributes() {
    let azure = Azure::start().await;
    let collector = Collector::start().await;
    let headers = format!("authorization=Bearer%20{COLLECTOR_SECRET}");
    let proxy = azure
        .proxy(
            &collector.url(),
            &[
                ("OTEL_EXPORTER_OTLP_HEADERS", headers.as_str()),
                ("OTEL_SERVICE_NAME", "shop-chat"),
                ("OTEL_RESOURCE_ATTRIBUTES", "k8s.namespace.name=shop"),
            ],
        )
        .await;
    let url = &proxy.url;
    let chat_url =
        format!("{url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21");
    let caller = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");

    // A JSON answer, in the caller's trace.
    let answer = post_json(
        &chat_url,
        &[("traceparent", caller.as_str()), ("tracestate", "vendor=1")],
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let expected = answer.json();
    // A stream with its usage, in no trace: the proxy starts one.
    let answer = post_json(
        &chat_url,
        &[("x-mock-chunks", "4")],
        &json!({"messages": [], "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    // An error from Azure.
    azure.upstream.set_fault(Some(Fault::Status(500)));
    let failed = post_json(
        &format!("{url}/openai/v1/embeddings"),
        &[],
        &json!({"model": "text-embedding-3-small", "input": "x"}),
    )
    .await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    azure.upstream.set_fault(None);

    let spans = collector
        .wait_for(WITHIN, |spans| {
            named(spans, "chat gpt-4o").len() == 2
                && named(spans, "embeddings").len() == 1
                && !named(spans, "acquire_token").is_empty()
        })
        .await;

    let first = named(&spans, "chat gpt-4o")
        .into_iter()
        .find(|s| s.trace_id == TRACE_ID)
        .expect("the first request's span continues the caller's trace");
    assert_eq!(first.parent_span_id, CALLER_SPAN);
    assert_eq!(first.kind, SPAN_KIND_CLIENT);
    assert_eq!(
        azure.traceparent(0),
        format!("00-{TRACE_ID}-{}-01", first.span_id),
        "Azure sees the proxy's span as the parent"
    );
    assert_eq!(
        azure.upstream.requests()[0].headers["tracestate"],
        "vendor=1"
    );
    let usage = &expected["usage"];
    for (key, value) in [
        ("gen_ai.operation.name", json!("chat")),
        ("gen_ai.provider.name", json!("azure.ai.openai")),
        ("openai.api.type", json!("chat_completions")),
        ("gen_ai.request.model", json!("gpt-4o")),
        ("gen_ai.response.model", expected["model"].clone()),
        ("gen_ai.response.id", expected["id"].clone()),
        ("gen_ai.response.finish_reasons", json!(["stop"])),
        ("gen_ai.usage.input_tokens", usage["prompt_tokens"].clone()),
        (
            "gen_ai.usage.output_tokens",
            usage["completion_tokens"].clone(),
        ),
        ("server.address", json!("127.0.0.1")),
        ("http.request.method", json!("POST")),
        ("http.response.status_code", json!(200)),
    ] {
        assert_eq!(attribute(first, key), &value, "{key}");
    }
    assert_eq!(first.status_code, 0);
    assert_eq!(first.resource["service.name"], "shop-chat");
    assert_eq!(first.resource["k8s.namespace.name"], "shop");

    let stream = named(&spans, "chat gpt-4o")
        .into_iter()
        .find(|s| s.trace_id != TRACE_ID)
        .unwrap();
    assert!(
        stream.parent_span_id.is_empty(),
        "no caller context: a root span"
    );
    assert_eq!(
        azure.traceparent(1),
        format!("00-{}-{}-01", stream.trace_id, stream.span_id)
    );
    assert_eq!(
        attribute(stream, "gen_ai.usage.input_tokens"),
        &json!(STREAM_PROMPT_TOKENS)
    );
    assert_eq!(attribute(stream, "gen_ai.usage.output_tokens"), &json!(4));

    let embeddings = named(&spans, "embeddings")[0];
    assert_eq!(attribute(embeddings, "error.type"), &json!("500"));
    assert_eq!(embeddings.status_code, STATUS_ERROR);
    assert_eq!(attribute(embeddings, "gen_ai.request.model"), &Value::Null);

    let acquisition = named(&spans, "acquire_token")[0];
    assert_eq!(
        attribute(acquisition, "aoai_proxy.credential"),
        &json!("managed-identity")
    );
    assert!(acquisition.parent_span_id.is_empty());
    assert_eq!(attribute(acquisition, "error.type"), &Value::Null);

    let export = &collector.exports()[0];
    assert_eq!(export.content_type, "application/x-protobuf");
    assert_eq!(
        export.headers["authorization"],
        format!("Bearer {COLLECTOR_SECRET}").as_str()
    );
    assert_no_secrets(&proxy.output(), &[COLLECTOR_SECRET.to_string()]);
}

#[tokio::test]
async fn http_json_is_spoken_when_asked_and_an_unsampled_caller_stays_unsampled() {
    let azure = Azure::start().await;
    let collector = Collector::start().await;
    let proxy = azure
        .proxy(
            &collector.url(),
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
        )
        .await;
    // The caller decided not to sample: no span, but the trace goes on to Azure, unsampled.
    let unsampled = format!("00-{TRACE_ID}-{CALLER_SPAN}-00");
    let answer = post_json(
        &format!("{}/openai/deployments/gpt-4o/chat/completions", proxy.url),
        &[("traceparent", unsampled.as_str())],
        &json!({"messages": []}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let passed_on = azure.traceparent(0);
    assert!(
        passed_on.starts_with(&format!("00-{TRACE_ID}-")) && passed_on.ends_with("-00"),
        "{passed_on}"
    );
    assert_ne!(passed_on, unsampled, "the proxy's own span id");
    assert_eq!(chat(&proxy.url).await.status, StatusCode::OK);

    let spans = collector
        .wait_for(WITHIN, |spans| !named(spans, "chat gpt-4o").is_empty())
        .await;
    assert!(spans.iter().all(|s| s.trace_id != TRACE_ID), "{spans:#?}");
    assert_eq!(collector.exports()[0].content_type, "application/json");
}

#[tokio::test]
async fn a_collector_down_or_never_answering_changes_nothing_for_requests() {
    let azure = Azure::start().await;
    let hanging = Collector::hanging().await;
    let closed = closed_port_url();
    for (endpoint, what) in [
        (closed.as_str(), "down"),
        (hanging.url().as_str(), "hanging"),
    ] {
        let mut proxy = azure
            .proxy(
                endpoint,
                &[
                    ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000"),
                    ("OTEL_BSP_MAX_QUEUE_SIZE", "8"),
                    ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4"),
                ],
            )
            .await;
        // Far more spans than the queue holds, streams among them, while exports fail or hang.
        let requests = (0..200).map(|i| {
            let url = proxy.url.clone();
            async move {
                if i % 4 == 0 {
                    post_json(
                        &format!("{url}/openai/deployments/gpt-4o/chat/completions"),
                        &[],
                        &json!({"messages": [], "stream": true}),
                    )
                    .await
                    .status
                } else {
                    chat(&url).await.status
                }
            }
        });
        let statuses = futures_util::future::join_all(requests).await;
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "collector {what}: {statuses:?}"
        );
        if what == "down" {
            proxy
                .wait_for_output("exporting spans failed", WITHIN)
                .await;
        } else {
            let deadline = std::time::Instant::now() + WITHIN;
            while hanging.exports().is_empty() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                !hanging.exports().is_empty(),
                "an export reached the hanging collector"
            );
        }
        // Shutting down waits a bounded time for the spans still queued.
        let status = proxy.terminate(Duration::from_secs(15));
        assert!(status.success(), "collector {what}: {status:?}");
    }
}

#[test]
fn a_wrong_trace_variable_stops_the_start_with_its_name() {
    let (status, output) = run_to_exit(
        &[
            ("API_BASE_URL", "http://127.0.0.1:9"),
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
        Duration::from_secs(10),
    );
    assert!(!status.success());
    assert!(
        output.contains("OTEL_EXPORTER_OTLP_PROTOCOL: grpc is not supported"),
        "{output}"
    );
}
