//! AdmissionReview decoding and the mutation: any body gets a response (200 with a review, or 400),
//! never a panic; when a patch comes back it applies to the request's object.
#![no_main]
use std::sync::{Arc, OnceLock};

use aoai_operator::metrics::Metrics;
use aoai_operator::mutate::InjectOptions;
use aoai_operator::webhook::Webhook;
use kube::runtime::{reflector, watcher};
use libfuzzer_sys::fuzz_target;

fn webhook() -> &'static Webhook {
    static WEBHOOK: OnceLock<Webhook> = OnceLock::new();
    WEBHOOK.get_or_init(|| {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
                "metadata": {"name": "my-proxy", "namespace": "wh-test"},
                "spec": {"endpoint": "https://r.openai.azure.com", "credential": {"managedIdentity": {}},
                         "inboundKeys": {"secretName": "k"}},
            }))
            .unwrap(),
        ));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        std::mem::forget(writer);
        Webhook {
            proxies: store,
            options: InjectOptions { default_image: "aoai-proxy:fuzz".into(), native_sidecars_supported: true },
            metrics: Arc::new(Metrics::new()),
            events: None,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let response = webhook().review(data);
    let status = response.status().as_u16();
    assert!(status == 200 || status == 400, "status {status}");
    if status != 200 {
        return;
    }
    let body = futures_body(response);
    let review: serde_json::Value = serde_json::from_slice(&body).expect("the answer is JSON");
    if let Some(patch) = review["response"]["patch"].as_str() {
        // The webhook reads only the fields it needs; the rest may even hold invalid UTF-8
        // (found by this target), which a whole-document parse rejects.
        let Ok(request) = serde_json::from_slice::<serde_json::Value>(data) else { return };
        let decoded = base64_decode(patch);
        let patch: json_patch::Patch = serde_json::from_slice(&decoded).expect("a JSON Patch");
        let mut object = request["request"]["object"].clone();
        json_patch::patch(&mut object, &patch).expect("the patch applies to the request's object");
    }
});

fn futures_body(response: http::Response<http_body_util::Full<bytes::Bytes>>) -> Vec<u8> {
    use http_body_util::BodyExt;
    let collected = futures_executor(response.into_body().collect());
    collected.map(|c| c.to_bytes().to_vec()).unwrap_or_default()
}

fn futures_executor<F: std::future::Future>(future: F) -> F::Output {
    // Full bodies are ready at once: one poll with a no-op waker resolves them.
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => unreachable!("a Full body is always ready"),
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).expect("base64 patch")
}
