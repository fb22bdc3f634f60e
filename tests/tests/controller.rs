//! The controller against a real kube-apiserver (skipped unless `KUBEBUILDER_ASSETS` is set):
//! the CRD from `crds/` is accepted, a valid AzureOpenAIProxy gets `Ready` and its certificate
//! date, a broken Secret turns `CredentialsValid` False, the schema rejects bad objects, and an
//! object the operator cannot read (a CRD from another version) is reported without holding
//! back the others.

use std::sync::Arc;
use std::time::Duration;

use aoai_e2e::ca::valid_client_cert;
use aoai_e2e::control_plane::{ControlPlane, install_crd};
use aoai_operator::controller;
use aoai_operator::crd::AzureOpenAIProxy;
use aoai_operator::metrics::Metrics;
use aoai_operator::status::Options;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const NS: &str = "aoai-e2e";

fn tls_secret(key: &str) -> Value {
    aoai_e2e::ca::tls_secret("cert", NS, &valid_client_cert(), key)
}

fn proxy(spec: Value) -> Value {
    json!({
        "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
        "metadata": {"name": "p", "namespace": NS},
        "spec": spec,
    })
}

/// Polls the AzureOpenAIProxy until `check` accepts its status (or 30 s pass).
async fn wait_status(
    api: &Api<AzureOpenAIProxy>,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..120 {
        if let Ok(object) = api.get("p").await {
            last = serde_json::to_value(&object.status).unwrap();
            if check(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("status never showed {what}; last status: {last:#}");
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

#[tokio::test]
async fn the_controller_reports_ready_then_a_broken_secret_and_the_schema_rejects_bad_objects() {
    let Some(plane) = ControlPlane::start(
        "the_controller_reports_ready_then_a_broken_secret_and_the_schema_rejects_bad_objects",
    )
    .await
    else {
        return;
    };
    // The controller's log, shown when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("aoai_operator=debug,kube_runtime=debug")
        .with_test_writer()
        .try_init();
    let client = plane.client();
    install_crd(&client).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
        )
        .await
        .unwrap();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let apply = PatchParams::apply("aoai-e2e").force();
    secrets
        .patch("cert", &apply, &Patch::Apply(tls_secret("client-a")))
        .await
        .unwrap();
    let proxies: Api<AzureOpenAIProxy> = Api::namespaced(client.clone(), NS);
    let spec = json!({
        "endpoint": "https://r.openai.azure.com",
        "tenantId": "contoso.onmicrosoft.com",
        "clientId": "11111111-2222-3333-4444-555555555555",
        "credential": {"clientCertificate": {"secretName": "cert"}},
    });
    proxies
        .patch("p", &apply, &Patch::Apply(proxy(spec)))
        .await
        .unwrap();
    let created = proxies.get("p").await.unwrap();
    assert_eq!(
        created.spec.sidecar.port, 15080,
        "schema defaults are applied"
    );

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(controller::run(
        client.clone(),
        Arc::new(Metrics::new()),
        Options {
            default_image: "aoai-proxy:e2e".into(),
            expiry_window: Duration::from_secs(30 * 86_400),
        },
        controller::SecretNamespaces::All,
        async {
            let _ = stopped.await;
        },
    ));

    let status = wait_status(&proxies, "Ready=True", |s| {
        condition(s, "Ready").is_some_and(|c| c["status"] == "True")
    })
    .await;
    assert!(
        status["certificateNotAfter"]
            .as_str()
            .is_some_and(|d| d.ends_with('Z')),
        "{status:#}"
    );
    assert_eq!(status["credential"], "ClientCertificate");
    assert_eq!(
        status["observedGeneration"],
        created.metadata.generation.unwrap()
    );
    let object = proxies.get("p").await.unwrap();
    assert!(
        object
            .managed_fields()
            .iter()
            .any(|f| f.manager.as_deref() == Some("aoai-operator")
                && f.subresource.as_deref() == Some("status")),
        "the status is owned by the controller's field manager"
    );

    // A key that does not match the certificate: the Secret watch triggers a reconcile.
    secrets
        .patch("cert", &apply, &Patch::Apply(tls_secret("client-b")))
        .await
        .unwrap();
    let status = wait_status(&proxies, "CredentialsValid=False", |s| {
        condition(s, "CredentialsValid").is_some_and(|c| c["status"] == "False")
    })
    .await;
    let message = condition(&status, "CredentialsValid").unwrap()["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("matches none of its certificates"),
        "{message}"
    );
    assert!(!status.to_string().contains("PRIVATE KEY"));

    // The schema rejects what the CEL rules forbid, with their messages.
    for (spec, message) in [
        (
            json!({"endpoint": "https://r", "tenantId": "t.example", "clientId": "11111111-2222-3333-4444-555555555555",
                   "credential": {"clientSecret": {"secretName": "s"}, "workloadIdentity": {}}}),
            "set exactly one credential",
        ),
        (
            json!({"endpoint": "http://r.openai.azure.com", "credential": {"managedIdentity": {}}}),
            "endpoint must be an https:// URL",
        ),
        (
            json!({"endpoint": "https://r.openai.azure.com", "backends": [{"endpoint": "https://a.openai.azure.com"}],
                   "credential": {"managedIdentity": {}}}),
            "set exactly one of endpoint and backends",
        ),
        (
            json!({"credential": {"managedIdentity": {}}}),
            "set exactly one of endpoint and backends",
        ),
        (
            json!({"backends": [{"endpoint": "https://a.openai.azure.com"}, {"endpoint": "https://a.openai.azure.com", "priority": 1}],
                   "credential": {"managedIdentity": {}}}),
            "spec.backends[1]: Duplicate value",
        ),
        (
            json!({"backends": [{"endpoint": "https://a.openai.azure.com", "deployments": [{"name": "gpt-4o", "backendName": "not/a/name"}]}],
                   "credential": {"managedIdentity": {}}}),
            "spec.backends[0].deployments[0].backendName",
        ),
        (
            json!({"backends": [{"endpoint": "https://a.openai.azure.com", "weight": 0}],
                   "credential": {"managedIdentity": {}}}),
            "spec.backends[0].weight",
        ),
        (
            json!({"endpoint": "https://r.openai.azure.com", "failover": {"ejectFor": "soon"},
                   "credential": {"managedIdentity": {}}}),
            "spec.failover.ejectFor",
        ),
    ] {
        let mut bad = proxy(spec);
        bad["metadata"]["name"] = json!("bad");
        let error = proxies
            .create(
                &PostParams::default(),
                &serde_json::from_value(bad).unwrap(),
            )
            .await
            .expect_err("the apiserver rejects the object");
        assert!(error.to_string().contains(message), "{error}");
    }

    // What the schema cannot see, the controller reports: the sidecar's own parser finds the
    // same endpoint listed under two spellings.
    let spec = json!({
        "backends": [{"endpoint": "https://a.openai.azure.com"}, {"endpoint": "https://a.openai.azure.com/"}],
        "credential": {"managedIdentity": {}},
    });
    proxies
        .patch("p", &apply, &Patch::Apply(proxy(spec)))
        .await
        .unwrap();
    let status = wait_status(&proxies, "BackendsValid=False", |s| {
        condition(s, "BackendsValid").is_some_and(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(
        condition(&status, "Ready").unwrap()["reason"],
        "BackendsInvalid"
    );
    assert!(
        condition(&status, "BackendsValid").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("is listed twice"),
        "{status:#}"
    );
    let spec = json!({
        "backends": [{"endpoint": "https://a.openai.azure.com"},
                     {"endpoint": "https://b.openai.azure.com", "priority": 1, "deployments": [{"name": "gpt-4o", "backendName": "gpt-4o-b"}]}],
        "failover": {"ejectAfter": 5},
        "credential": {"managedIdentity": {}},
    });
    proxies
        .patch("p", &apply, &Patch::Apply(proxy(spec)))
        .await
        .unwrap();
    wait_status(&proxies, "BackendsValid=True and Ready=True", |s| {
        condition(s, "BackendsValid").is_some_and(|c| c["status"] == "True")
            && condition(s, "Ready").is_some_and(|c| c["status"] == "True")
    })
    .await;

    // A CRD from another version of the chart lets in an object this operator cannot read: it
    // is reported in its own status, and every other object goes on being reconciled.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crd =
        serde_json::to_value(crds.get("azureopenaiproxies.aoai-proxy.io").await.unwrap()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] =
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    crds.replace(
        "azureopenaiproxies.aoai-proxy.io",
        &PostParams::default(),
        &serde_json::from_value(crd).unwrap(),
    )
    .await
    .unwrap();
    let resource = kube::api::ApiResource::erase::<AzureOpenAIProxy>(&());
    let untyped: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &resource);
    let mut unreadable = proxy(json!({"endpoint": 5, "credential": {"managedIdentity": {}}}));
    unreadable["metadata"]["name"] = json!("unreadable");
    let unreadable: kube::api::DynamicObject = serde_json::from_value(unreadable).unwrap();
    // The apiserver takes a moment to serve the replaced schema.
    aoai_e2e::wait::until(
        "the permissive CRD is served",
        Duration::from_secs(30),
        || async {
            untyped
                .create(&PostParams::default(), &unreadable)
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    let mut reported = Value::Null;
    for _ in 0..120 {
        reported = untyped.get("unreadable").await.unwrap().data["status"].clone();
        if condition(&reported, "Ready").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ready = condition(&reported, "Ready").unwrap_or_else(|| panic!("{reported:#}"));
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("SpecUnreadable")),
        "{reported:#}"
    );
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("invalid type: integer `5`, expected a string"),
        "{reported:#}"
    );
    let spec = json!({"endpoint": "https://r.openai.azure.com", "failover": {"ejectAfter": 6},
                      "credential": {"managedIdentity": {}}});
    proxies
        .patch("p", &apply, &Patch::Apply(proxy(spec)))
        .await
        .unwrap();
    let generation = proxies.get("p").await.unwrap().metadata.generation.unwrap();
    wait_status(&proxies, "the next generation reconciled", |s| {
        s["observedGeneration"] == generation
            && condition(s, "Ready").is_some_and(|c| c["status"] == "True")
    })
    .await;

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), controller)
        .await
        .expect("the controller stops on shutdown")
        .unwrap();
}
