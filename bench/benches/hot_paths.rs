//! The pure hot spots: the header policy applied to every forwarded request and response, and the
//! mutation applied to every annotated pod. `cargo bench -p aoai-bench`.

use std::hint::black_box;
use std::sync::Arc;

use aoai_operator::crd::AzureOpenAIProxy;
use aoai_operator::mutate::{InjectOptions, Outcome, decide};
use aoai_proxy::headers::{rewrite_request, rewrite_response};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use k8s_openapi::api::core::v1::Pod;

fn request_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "127.0.0.1:15080"),
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("api-key", "client-key-the-proxy-removes"),
        ("user-agent", "AzureOpenAI/Python 1.54.0"),
        ("x-stainless-lang", "python"),
        (
            "x-ms-client-request-id",
            "8a1f7c8e-1b2c-4d5e-8f90-123456789abc",
        ),
        ("connection", "keep-alive"),
        ("content-length", "97"),
        ("accept-encoding", "gzip, deflate"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

fn response_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("content-type", "application/json"),
        ("content-length", "1032"),
        ("apim-request-id", "5e8b1c7a-0000-4000-8000-000000000000"),
        ("x-ratelimit-remaining-requests", "99"),
        ("x-ratelimit-remaining-tokens", "99850"),
        ("x-request-id", "req_1234"),
        ("openai-processing-ms", "412"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

fn headers(c: &mut Criterion) {
    let token = HeaderValue::from_static("Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.benchmark");
    let request = request_headers();
    let response = response_headers();
    c.bench_function("rewrite_request (10 headers)", |b| {
        b.iter_batched(
            || request.clone(),
            |mut h| rewrite_request(black_box(&mut h), token.clone()),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("rewrite_response (9 headers)", |b| {
        b.iter_batched(
            || response.clone(),
            |mut h| rewrite_response(black_box(&mut h)),
            criterion::BatchSize::SmallInput,
        )
    });
}

fn mutation(c: &mut Criterion) {
    let review: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/admission/pod-workload-identity.json"
        ))
        .expect("the recorded fixtures beside the repository"),
    )
    .unwrap();
    let pod: Pod = serde_json::from_value(review["request"]["object"].clone()).unwrap();
    let proxy: Arc<AzureOpenAIProxy> = Arc::new(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
            "metadata": {"name": "wi-proxy", "namespace": "wh-test"},
            "spec": {"endpoint": "https://r.openai.azure.com", "tenantId": "contoso.onmicrosoft.com",
                     "clientId": "11111111-2222-3333-4444-555555555555", "credential": {"workloadIdentity": {}},
                     "inboundKeys": {"secretName": "keys"}},
        }))
        .unwrap(),
    );
    let options = InjectOptions {
        default_image: "aoai-proxy:bench".into(),
        native_sidecars_supported: true,
    };
    c.bench_function("decide + patch (2-container pod)", |b| {
        b.iter(|| {
            let spec = pod.spec.as_ref().unwrap();
            match decide(
                &pod.metadata,
                spec,
                "wh-test",
                |_| Some(proxy.clone()),
                &options,
            ) {
                Outcome::Injected(injection) => black_box(injection.patch(&pod.metadata, spec)),
                other => panic!("{other:?}"),
            }
        })
    });
}

criterion_group!(benches, headers, mutation);
criterion_main!(benches);
