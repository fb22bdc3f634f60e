//! The webhook against a real kube-apiserver (skipped unless `KUBEBUILDER_ASSETS` is set): the
//! self-managed CA goes into the MutatingWebhookConfiguration (URL on 127.0.0.1), an annotated Pod
//! is created and read back with the sidecar, and a bad annotation is denied with its message.

use std::sync::Arc;

use aoai_e2e::control_plane::{ControlPlane, install_crd};
use aoai_operator::certs::{self, SelfManaged, ServingCert};
use aoai_operator::crd::AzureOpenAIProxy;
use aoai_operator::metrics::Metrics;
use aoai_operator::mutate::InjectOptions;
use aoai_operator::webhook::{self, Webhook};
use futures_util::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

const NS: &str = "aoai-e2e-webhook";

async fn create<K>(api: &Api<K>, value: serde_json::Value) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(
        &PostParams::default(),
        &serde_json::from_value(value).unwrap(),
    )
    .await
}

#[tokio::test]
async fn an_annotated_pod_is_created_with_the_sidecar_and_a_bad_one_is_denied() {
    let Some(plane) =
        ControlPlane::start("an_annotated_pod_is_created_with_the_sidecar_and_a_bad_one_is_denied")
            .await
    else {
        return;
    };
    let client = plane.client();
    install_crd(&client).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in [NS, "aoai-system"] {
        create(
            &namespaces,
            json!({"metadata": {"name": name, "labels": {"aoai-e2e": "yes"}}}),
        )
        .await
        .unwrap();
    }
    let proxies: Api<AzureOpenAIProxy> = Api::namespaced(client.clone(), NS);
    create(&proxies, json!({
        "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
        "metadata": {"name": "openai", "namespace": NS},
        "spec": {"endpoint": "https://r.openai.azure.com", "credential": {"managedIdentity": {}}},
    }))
    .await
    .unwrap();

    // The webhook, served from this process on 127.0.0.1.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    create(&configurations, json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "aoai-operator"},
        "webhooks": [{
            "name": "pods.aoai-proxy.io",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate")},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}},
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded",
            "matchPolicy": "Equivalent",
            "timeoutSeconds": 10,
        }],
    }))
    .await
    .unwrap();
    let config = SelfManaged {
        namespace: "aoai-system".into(),
        secret_name: "aoai-operator-webhook-tls".into(),
        service_name: "aoai-operator-webhook".into(),
        webhook_configuration: "aoai-operator".into(),
        extra_names: vec!["127.0.0.1".into()],
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let data = certs::ensure(&client, &config, now).await.unwrap();
    let configuration = configurations.get("aoai-operator").await.unwrap();
    let bundle = &configuration.webhooks.as_ref().unwrap()[0]
        .client_config
        .ca_bundle;
    assert_eq!(
        bundle.as_ref().map(|b| &b.0),
        Some(&data[certs::CA_CERT].0),
        "caBundle patched"
    );
    let cert = Arc::new(ServingCert::default());
    let text = |key: &str| String::from_utf8(data[key].0.clone()).unwrap();
    cert.set(&text(certs::TLS_CERT), &text(certs::TLS_KEY))
        .unwrap();

    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(
            Api::<AzureOpenAIProxy>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    tokio::spawn(stream.for_each(|_| async {}));
    store.wait_until_ready().await.unwrap();
    let hook = Arc::new(Webhook {
        proxies: store,
        options: InjectOptions {
            default_image: "aoai-proxy:e2e".into(),
            native_sidecars_supported: true,
        },
        metrics: Arc::new(Metrics::new()),
        events: None,
    });
    tokio::spawn(webhook::serve(
        listener,
        certs::server_config(cert),
        hook,
        std::future::pending(),
        std::time::Duration::ZERO,
    ));

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "annotations": {"aoai-proxy.io/inject": "openai"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    });
    create(&pods, pod.clone())
        .await
        .expect("the annotated pod is admitted");
    let stored = pods.get("app").await.unwrap();
    let spec = stored.spec.as_ref().unwrap();
    let sidecar = &spec.init_containers.as_ref().expect("an init container")[0];
    assert_eq!(sidecar.name, "aoai-proxy");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    let host = sidecar
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "HOST")
        .unwrap();
    assert_eq!(host.value.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        stored.metadata.labels.as_ref().unwrap()["aoai-proxy.io/proxy"],
        "openai"
    );
    assert_eq!(
        stored.metadata.annotations.as_ref().unwrap()["aoai-proxy.io/status"],
        "injected"
    );

    let mut bad = pod;
    bad["metadata"]["name"] = json!("bad");
    bad["metadata"]["annotations"]["aoai-proxy.io/log-level"] = json!("loud");
    let error = create(&pods, bad)
        .await
        .expect_err("the bad annotation is denied");
    assert!(
        error.to_string().contains(
            "annotation aoai-proxy.io/log-level=\"loud\": must be error, warn, info or debug"
        ),
        "{error}"
    );
}
