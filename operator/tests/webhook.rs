//! The webhook over real HTTPS on 127.0.0.1, fed the AdmissionReview requests a real
//! kube-apiserver sent (`../shared/fixtures/admission/`): the returned patch applies to the
//! request's pod, and the result is a Pod with a working, hardened sidecar.

use std::path::PathBuf;
use std::sync::Arc;

use aoai_e2e::ca::TestCa;
use aoai_operator::certs::{ServingCert, server_config};
use aoai_operator::crd::AzureOpenAIProxy;
use aoai_operator::metrics::Metrics;
use aoai_operator::mutate::InjectOptions;
use aoai_operator::webhook::{self, Webhook};
use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::net::TcpStream;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/admission")
}

fn fixture(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn proxies() -> Vec<AzureOpenAIProxy> {
    let ready = json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                                        "message": "ok", "lastTransitionTime": "2026-11-01T00:00:00Z"}]});
    vec![
        serde_json::from_value(json!({
            "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
            "metadata": {"name": "my-proxy", "namespace": "wh-test"},
            "spec": {"endpoint": "https://r.openai.azure.com", "tenantId": "contoso.onmicrosoft.com",
                     "clientId": "11111111-2222-3333-4444-555555555555",
                     "credential": {"clientCertificate": {"secretName": "cert"}}},
            "status": ready,
        }))
        .unwrap(),
        serde_json::from_value(json!({
            "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
            "metadata": {"name": "wi-proxy", "namespace": "wh-test"},
            "spec": {"endpoint": "https://r.openai.azure.com", "tenantId": "contoso.onmicrosoft.com",
                     "clientId": "11111111-2222-3333-4444-555555555555",
                     "credential": {"workloadIdentity": {}},
                     "inboundKeys": {"secretName": "keys"}},
        }))
        .unwrap(),
    ]
}

struct Server {
    url_port: u16,
    ca: TestCa,
    metrics: Arc<Metrics>,
    /// Stops the listener (as the operator does when it is done).
    stop: Arc<tokio::sync::Notify>,
}

async fn start(proxies: Vec<AzureOpenAIProxy>) -> Server {
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for proxy in proxies {
        writer.apply_watcher_event(&watcher::Event::InitApply(proxy));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let ca = TestCa::new();
    let cert = Arc::new(ServingCert::default());
    let (crt, key) = ca.server_cert_pem();
    assert!(cert.set(&crt, &key).unwrap());
    let metrics = Arc::new(Metrics::new());
    let hook = Arc::new(Webhook {
        proxies: store,
        options: InjectOptions {
            default_image: "aoai-proxy:test".into(),
            native_sidecars_supported: true,
        },
        metrics: metrics.clone(),
        events: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    tokio::spawn(webhook::serve(
        listener,
        server_config(cert),
        hook,
        async move { stopped.notified().await },
        std::time::Duration::from_secs(5),
    ));
    Server {
        url_port: port,
        ca,
        metrics,
        stop,
    }
}

/// One keep-alive HTTPS connection to the webhook, trusting only the test CA.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

/// A TLS connection to the webhook, trusting its CA.
async fn tls_to(server: &Server) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.ca.root_der().clone()).unwrap();
    let config = aoai_e2e::ca::client_config(roots);
    let tcp = TcpStream::connect(("127.0.0.1", server.url_port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .expect("the webhook's certificate is trusted")
}

impl Connection {
    async fn open(server: &Server) -> Self {
        let tls = tls_to(server).await;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(connection);
        Self { sender }
    }

    async fn post(&mut self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let request = Request::post(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// Applies the response's patch to the request's pod.
fn patched_pod(review: &Value, answer: &Value) -> Pod {
    let response = &answer["response"];
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], true, "{answer}");
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(
            response["patch"]
                .as_str()
                .unwrap_or_else(|| panic!("no patch in {answer}")),
        )
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut object = review["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).expect("the patch applies to the API server's pod");
    serde_json::from_value(object).expect("the patched object is a Pod")
}

fn env_of<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn sidecar(pod: &Pod) -> &Container {
    let init = pod
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .expect("init containers");
    assert_eq!(init[0].name, "aoai-proxy", "the sidecar comes first");
    &init[0]
}

/// The contract: the injected sidecar, started as the kubelet would, configures the proxy its
/// AzureOpenAIProxy describes.
fn assert_configures(what: &str, pod: &Pod) {
    let name = &pod.metadata.annotations.as_ref().unwrap()[aoai_operator::annotations::INJECT];
    let proxy = proxies()
        .into_iter()
        .find(|p| p.metadata.name.as_ref() == Some(name))
        .unwrap();
    aoai_e2e::contract::assert_sidecar_configures(
        what,
        &pod.metadata,
        pod.spec.as_ref().unwrap(),
        &proxy,
    );
}

#[tokio::test]
async fn recorded_pod_creates_come_back_with_a_hardened_native_sidecar() {
    let server = start(proxies()).await;
    let mut connection = Connection::open(&server).await;
    for name in [
        "pod-annotated.json",
        "pod-dry-run.json",
        "pod-init-container.json",
        "pod-native-sidecar.json",
        "job-pod.json",
        "deployment-replicaset-pod.json",
    ] {
        let review = fixture(name);
        let original: Pod = serde_json::from_value(review["request"]["object"].clone()).unwrap();
        let (status, answer) = connection
            .post("/mutate", serde_json::to_vec(&review).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK, "{name}");
        let pod = patched_pod(&review, &answer);
        let proxy = sidecar(&pod);
        assert_configures(name, &pod);

        // Forwarding on loopback only; probes and metrics on the admin port.
        assert_eq!(env_of(proxy, "HOST"), Some("127.0.0.1"), "{name}");
        assert_eq!(env_of(proxy, "PORT"), Some("15080"));
        assert_eq!(env_of(proxy, "AOAI_PROXY_ADMIN_PORT"), Some("15081"));
        assert_eq!(
            env_of(proxy, "API_BASE_URL"),
            Some("https://r.openai.azure.com")
        );
        assert_eq!(env_of(proxy, "AOAI_PROXY_CREDENTIAL"), Some("certificate"));
        assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
        let startup = proxy
            .startup_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(startup.path.as_deref(), Some("/health"));
        let security = proxy.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(
            security.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let mounts = proxy.volume_mounts.as_ref().unwrap();
        assert!(mounts.iter().all(|m| m.read_only == Some(true)));
        let volumes = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        let credential = volumes
            .iter()
            .find(|v| v.name == "aoai-proxy-credential")
            .unwrap();
        assert_eq!(
            credential.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("cert")
        );

        // Existing init containers keep their order after the sidecar.
        let before: Vec<String> = original
            .spec
            .as_ref()
            .unwrap()
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        let after: Vec<String> = pod
            .spec
            .as_ref()
            .unwrap()
            .init_containers
            .iter()
            .flatten()
            .skip(1)
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(before, after, "{name}");

        // The application points at the sidecar, keeping what it set itself.
        let original_app = &original.spec.as_ref().unwrap().containers[0];
        let app = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(app.name, original_app.name);
        for var in original_app.env.iter().flatten() {
            assert_eq!(
                env_of(app, &var.name),
                var.value.as_deref(),
                "{name}: {} changed",
                var.name
            );
        }
        if env_of(original_app, "OPENAI_BASE_URL").is_none() {
            assert_eq!(
                env_of(app, "OPENAI_BASE_URL"),
                Some("http://127.0.0.1:15080/openai/v1")
            );
        }
        assert_eq!(
            env_of(app, "AZURE_OPENAI_ENDPOINT"),
            Some("http://127.0.0.1:15080")
        );
        assert_eq!(
            env_of(app, "AZURE_OPENAI_API_KEY"),
            Some("unused-aoai-proxy-authenticates")
        );

        let meta = &pod.metadata;
        assert_eq!(
            meta.labels.as_ref().unwrap()["aoai-proxy.io/proxy"],
            "my-proxy"
        );
        assert_eq!(
            meta.annotations.as_ref().unwrap()["aoai-proxy.io/status"],
            "injected"
        );
        assert_eq!(
            meta.annotations.as_ref().unwrap()["aoai-proxy.io/config-hash"].len(),
            16
        );
        assert!(
            answer["response"]["warnings"].is_null(),
            "a Ready proxy gives no warning"
        );

        // Reinvocation (reinvocationPolicy: IfNeeded) changes nothing.
        let mut again = review.clone();
        again["request"]["object"] = serde_json::to_value(&pod).unwrap();
        let (_, answer) = connection
            .post("/mutate", serde_json::to_vec(&again).unwrap())
            .await;
        assert_eq!(answer["response"]["allowed"], true);
        assert!(
            answer["response"]["patch"].is_null(),
            "{name}: reinvocation patched again"
        );
    }
    let metrics = server.metrics.encode();
    assert!(
        metrics
            .contains(r#"aoai_operator_admissions_total{result="injected",reason="injected"} 6"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"aoai_operator_admissions_total{result="skipped",reason="already_injected"} 6"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn workload_identity_projects_the_token_and_inbound_keys_come_from_the_secret() {
    let server = start(proxies()).await;
    let mut connection = Connection::open(&server).await;
    let review = fixture("pod-workload-identity.json");
    let (_, answer) = connection
        .post("/mutate", serde_json::to_vec(&review).unwrap())
        .await;
    let warnings = answer["response"]["warnings"]
        .as_array()
        .expect("a soft problem is a warning");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("\"wi-proxy\" has not been checked"),
        "{warnings:?}"
    );
    let pod = patched_pod(&review, &answer);
    let proxy = sidecar(&pod);
    assert_configures("pod-workload-identity.json", &pod);
    assert_eq!(
        env_of(proxy, "AZURE_FEDERATED_TOKEN_FILE"),
        Some("/var/run/secrets/azure/tokens/azure-identity-token")
    );
    assert_eq!(
        env_of(proxy, "AOAI_PROXY_INBOUND_KEYS_FILE"),
        Some("/var/run/secrets/aoai-proxy/inbound-keys/api-key")
    );
    let spec = pod.spec.as_ref().unwrap();
    let token = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "aoai-proxy-azure-token")
        .unwrap();
    let source = &token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0];
    let sa_token = source.service_account_token.as_ref().unwrap();
    assert_eq!(
        sa_token.audience.as_deref(),
        Some("api://AzureADTokenExchange")
    );
    assert_eq!(sa_token.expiration_seconds, Some(3600));
    assert_eq!(spec.service_account_name.as_deref(), Some("rasa"));
    // Both application containers get the key from the Secret, never its value.
    for name in ["rasa", "action-server"] {
        let app = spec.containers.iter().find(|c| c.name == name).unwrap();
        let key = app
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "OPENAI_API_KEY")
            .unwrap();
        let reference = key
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (reference.name.as_str(), reference.key.as_str()),
            ("keys", "api-key")
        );
    }
    let rasa = spec.containers.iter().find(|c| c.name == "rasa").unwrap();
    assert!(
        env_of(rasa, "AZURE_API_VERSION").is_some(),
        "the app's own env stays"
    );
}

#[tokio::test]
async fn a_missing_proxy_is_denied_and_other_requests_pass_unchanged() {
    let server = start(Vec::new()).await;
    let mut connection = Connection::open(&server).await;

    let review = fixture("pod-annotated.json");
    let (status, answer) = connection
        .post("/mutate", serde_json::to_vec(&review).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(
        answer["response"]["status"]["message"],
        "aoai-proxy: AzureOpenAIProxy \"my-proxy\" does not exist in namespace \"wh-test\" (annotation aoai-proxy.io/inject)"
    );

    let plain = fixture("pod-no-annotations.json");
    let (_, answer) = connection
        .post("/mutate", serde_json::to_vec(&plain).unwrap())
        .await;
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"]["patch"].is_null());

    let mut update = review.clone();
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = update["request"]["object"].clone();
    let (_, answer) = connection
        .post("/mutate", serde_json::to_vec(&update).unwrap())
        .await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(answer["response"]["patch"].is_null());

    let mut config_map = review.clone();
    config_map["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    config_map["request"]["object"] =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let (_, answer) = connection
        .post("/mutate", serde_json::to_vec(&config_map).unwrap())
        .await;
    assert_eq!(answer["response"]["allowed"], true);

    for body in [
        b"{not json".to_vec(),
        br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#.to_vec(),
    ] {
        let (status, answer) = connection.post("/mutate", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("AdmissionReview"),
            "{answer}"
        );
    }
    let (status, _) = connection.post("/elsewhere", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let metrics = server.metrics.encode();
    assert!(
        metrics.contains(
            r#"aoai_operator_admissions_total{result="denied",reason="proxy_not_found"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"aoai_operator_admissions_total{result="invalid",reason="malformed_request"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"aoai_operator_admissions_total{result="skipped",reason="not_a_pod_create"} 2"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_annotations_port_conflicts_and_host_network_are_denied_with_one_message() {
    let server = start(proxies()).await;
    let mut connection = Connection::open(&server).await;
    type Change = Box<dyn Fn(&mut Value)>;
    let cases: [(&str, Change, &str); 4] = [
        (
            "invalid_annotation",
            Box::new(|o| o["metadata"]["annotations"]["aoai-proxy.io/port"] = json!("80")),
            "aoai-proxy: annotation aoai-proxy.io/port=\"80\": must be a port number from 1024 to 65535",
        ),
        (
            "invalid_annotation",
            Box::new(|o| {
                o["metadata"]["annotations"]["aoai-proxy.io/inject"] = json!("Not_A_Name")
            }),
            "aoai-proxy: annotation aoai-proxy.io/inject=\"Not_A_Name\": must name an AzureOpenAIProxy (a lowercase DNS-1123 name)",
        ),
        (
            "port_conflict",
            Box::new(|o| o["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(15081)),
            "aoai-proxy: container \"app\" declares port 15081, which the aoai-proxy sidecar needs: set annotation aoai-proxy.io/port (forwarding, now 15080) or aoai-proxy.io/admin-port (admin, now 15081) to a free port",
        ),
        (
            "host_network",
            Box::new(|o| o["spec"]["hostNetwork"] = json!(true)),
            "aoai-proxy: aoai-proxy cannot be injected into a hostNetwork pod: its forwarding port would be shared with the whole node",
        ),
    ];
    for (reason, change, message) in cases {
        let mut review = fixture("pod-annotated.json");
        change(&mut review["request"]["object"]);
        let (_, answer) = connection
            .post("/mutate", serde_json::to_vec(&review).unwrap())
            .await;
        assert_eq!(answer["response"]["allowed"], false, "{reason}");
        assert_eq!(answer["response"]["status"]["message"], message);
        assert!(
            server
                .metrics
                .encode()
                .contains(&format!("reason=\"{reason}\""))
        );
    }
}

/// Denials leave an Event on the pod's owner (dry runs and injections do not), with the reason
/// constant as the Event's action.
#[tokio::test]
async fn denials_are_recorded_as_events_on_the_owner() {
    use kube::client::Body;
    use kube::runtime::events::{Recorder, Reporter};
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, http::Response<Body>>();
    let client = kube::Client::new(service, "default");
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitApply(proxies().remove(0)));
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let hook = Webhook {
        proxies: store,
        options: InjectOptions {
            default_image: "aoai-proxy:test".into(),
            native_sidecars_supported: true,
        },
        metrics: Arc::new(Metrics::new()),
        events: Some(Recorder::new(
            client,
            Reporter {
                controller: "aoai-operator-webhook".into(),
                instance: None,
            },
        )),
    };
    let mut next_event = async || {
        let (request, send) =
            tokio::time::timeout(std::time::Duration::from_secs(5), handle.next_request())
                .await
                .expect("an event in time")
                .unwrap();
        let (parts, body) = request.into_parts();
        assert!(
            aoai_operator::rbac::allows(&parts.method, &parts.uri),
            "RBAC does not allow {}",
            parts.uri
        );
        let event: Value = serde_json::from_slice(&body.collect_bytes().await.unwrap()).unwrap();
        assert_eq!(
            parts.uri.path(),
            "/apis/events.k8s.io/v1/namespaces/wh-test/events"
        );
        send.send_response(
            http::Response::builder()
                .status(201)
                .body(Body::from(serde_json::to_vec(&event).unwrap()))
                .unwrap(),
        );
        event
    };

    // A dry run and an injection record nothing here (the controller announces injected pods).
    hook.review(&serde_json::to_vec(&fixture("pod-dry-run.json")).unwrap());
    hook.review(&serde_json::to_vec(&fixture("deployment-replicaset-pod.json")).unwrap());

    let mut job = fixture("job-pod.json");
    job["request"]["object"]["metadata"]["annotations"]["aoai-proxy.io/inject"] = json!("nope");
    hook.review(&serde_json::to_vec(&job).unwrap());
    let event = next_event().await;
    assert_eq!(
        (
            event["type"].as_str(),
            event["reason"].as_str(),
            event["action"].as_str()
        ),
        (
            Some("Warning"),
            Some("InjectionDenied"),
            Some("proxy_not_found")
        )
    );
    assert_eq!(
        (
            event["regarding"]["kind"].as_str(),
            event["regarding"]["name"].as_str()
        ),
        (Some("Job"), Some("batch"))
    );
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("AzureOpenAIProxy \"nope\" does not exist"),
        "{event}"
    );
    let more =
        tokio::time::timeout(std::time::Duration::from_millis(100), handle.next_request()).await;
    assert!(
        !matches!(more, Ok(Some(_))),
        "the dry run or the injection recorded an event"
    );
}

/// A burst of 1,000 admissions on 1,000 parallel connections all get their patch; a body over the
/// limit or nested beyond the parser's depth gets 400, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_thousand_admissions_all_answer_and_a_huge_body_is_refused() {
    let server = Arc::new(start(proxies()).await);
    let review = Arc::new(serde_json::to_vec(&fixture("pod-annotated.json")).unwrap());
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (server, review) = (server.clone(), review.clone());
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(&server).await;
            let (status, answer) = connection.post("/mutate", review.to_vec()).await;
            (status, answer["response"]["patch"].is_string())
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), (StatusCode::OK, true));
    }
    let metrics = server.metrics.encode();
    assert!(
        metrics.contains(
            r#"aoai_operator_admissions_total{result="injected",reason="injected"} 1000"#
        ),
        "{metrics}"
    );

    let mut connection = Connection::open(&server).await;
    let mut huge = fixture("pod-annotated.json");
    huge["request"]["object"]["metadata"]["labels"]["padding"] =
        json!("x".repeat(webhook::MAX_BODY));
    let (status, answer) = connection
        .post("/mutate", serde_json::to_vec(&huge).unwrap())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("at most 3145728 bytes"),
        "{answer}"
    );
    // Deeply nested JSON inside the object, within the size limit: skipped as the unknown field
    // it is, without following it down the stack; the pod is injected as usual.
    let text = serde_json::to_string(&fixture("pod-annotated.json")).unwrap();
    let deep = format!("{}{}", "[".repeat(500_000), "]".repeat(500_000));
    let nested = text.replacen(
        r#""metadata":{"#,
        &format!(r#""metadata":{{"deep":{deep},"#),
        1,
    );
    assert!(nested.len() < webhook::MAX_BODY && nested.contains("deep"));
    let mut connection = Connection::open(&server).await;
    let (status, answer) = connection.post("/mutate", nested.into_bytes()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(answer["response"]["patch"].is_string(), "{answer}");
    // Nested where a value is expected: one clear refusal.
    let nested = text.replacen(
        r#""metadata":{"#,
        &format!(r#""metadata":{{"labels":{deep},"#),
        1,
    );
    let mut connection = Connection::open(&server).await;
    let (status, answer) = connection.post("/mutate", nested.into_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("the body is not an AdmissionReview"),
        "{answer}"
    );
    // Still serving.
    let mut connection = Connection::open(&server).await;
    let (status, _) = connection.post("/mutate", review.to_vec()).await;
    assert_eq!(status, StatusCode::OK);
}

/// Inputs the fuzzer found (fuzz/seeds/admission_review/regression-*) are answered, never a panic.
#[tokio::test]
async fn fuzz_regressions_are_answered() {
    let server = start(proxies()).await;
    let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/admission_review");
    let mut found = 0;
    for entry in std::fs::read_dir(seeds).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("regression-")
        {
            continue;
        }
        found += 1;
        let mut connection = Connection::open(&server).await;
        let (status, _) = connection
            .post("/mutate", std::fs::read(&path).unwrap())
            .await;
        assert!(
            status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
            "{}: {status}",
            path.display()
        );
    }
    assert!(found > 0);
}

/// The webhook over `proxies`, without Events, as the tests that call `review` directly use it.
fn hook_over(proxies: Vec<AzureOpenAIProxy>, image: &str) -> Webhook {
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for proxy in proxies {
        writer.apply_watcher_event(&watcher::Event::InitApply(proxy));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    Webhook {
        proxies: store,
        options: InjectOptions {
            default_image: image.into(),
            native_sidecars_supported: true,
        },
        metrics: Arc::new(Metrics::new()),
        events: None,
    }
}

/// Golden files of the webhook's answers, as linkerd's injector keeps them: for each AdmissionReview
/// the real kube-apiserver recorded, `tests/golden/admission/NAME.json` holds the answer (allowed,
/// message, warnings) and the decoded JSON Patch. `UPDATE_GOLDEN=1` rewrites them; review the diff.
#[test]
fn the_answers_to_the_recorded_admission_reviews_match_their_golden_files() {
    let hook = hook_over(proxies(), "aoai-proxy:golden");
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/admission");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    let mut stale = Vec::new();
    for name in &names {
        let response = hook.review(&serde_json::to_vec(&fixture(name)).unwrap());
        let body = futures_util::FutureExt::now_or_never(response.into_body().collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        let answer: Value = serde_json::from_slice(&body).unwrap();
        let response = &answer["response"];
        let patch: Value = match response["patch"].as_str() {
            Some(patch) => serde_json::from_slice(
                &base64::engine::general_purpose::STANDARD
                    .decode(patch)
                    .unwrap(),
            )
            .unwrap(),
            None => Value::Null,
        };
        let actual = serde_json::to_string_pretty(&json!({
            "allowed": response["allowed"],
            "message": response["status"]["message"],
            "warnings": response["warnings"],
            "patch": patch,
        }))
        .unwrap()
            + "\n";
        let path = golden.join(name);
        if update {
            std::fs::create_dir_all(&golden).unwrap();
            std::fs::write(&path, &actual).unwrap();
        } else if std::fs::read_to_string(&path).unwrap_or_default() != actual {
            stale.push(format!("{}:\n{actual}", path.display()));
        }
    }
    assert!(
        names.len() >= 8,
        "the recorded fixtures are missing: {names:?}"
    );
    assert!(
        stale.is_empty(),
        "webhook answers differ (UPDATE_GOLDEN=1 to accept):\n{}",
        stale.join("\n")
    );
}

/// Every field of a Pod is optional, so another kind's object decodes as one: such a request is
/// still allowed unchanged, never denied as a pod without a spec.
#[test]
fn an_object_of_another_kind_is_allowed_unchanged() {
    let hook = hook_over(Vec::new(), "aoai-proxy:test");
    let mut review = fixture("pod-annotated.json");
    review["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    review["request"]["resource"] = json!({"group": "", "version": "v1", "resource": "configmaps"});
    review["request"]["object"] = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "annotations": {"aoai-proxy.io/inject": "x"}}, "data": {"a": "b"}});
    let response = hook.review(&serde_json::to_vec(&review).unwrap());
    let body = futures_util::FutureExt::now_or_never(response.into_body().collect())
        .unwrap()
        .unwrap()
        .to_bytes();
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(
        answer["response"].get("patch").is_none_or(Value::is_null),
        "{answer}"
    );
}

/// When the operator is done, the webhook stops accepting connections, and a review already in
/// flight (its body still arriving) is answered rather than cut off.
#[tokio::test]
async fn on_stop_a_review_in_flight_is_answered_and_new_connections_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(proxies()).await;
    let body = serde_json::to_vec(&fixture("pod-annotated.json")).unwrap();
    let mut tls = tls_to(&server).await;
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.split_at(body.len() / 2);
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(first).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    server.stop.notify_one();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(("127.0.0.1", server.url_port))
            .await
            .is_err(),
        "a stopped webhook must not accept connections"
    );

    tls.write_all(rest).await.unwrap();
    tls.flush().await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_end(&mut answer),
    )
    .await
    .expect("the answer comes before the grace period ends");
    // The connection closes after the answer (a TLS close_notify may be missing).
    let _ = read;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"allowed\":true"), "{answer}");
}
