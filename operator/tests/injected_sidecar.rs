//! The sidecar exactly as the operator injects it, run for real on 127.0.0.1: the golden output
//! of `deployment-egress-proxy-private-ca` (an API Management gateway signed by the company's CA,
//! reached through an egress proxy whose URL is in a Secret) is started as a kubelet would start
//! it: its volumes written from the referenced Secrets and ConfigMaps into a scratch folder, its
//! `valueFrom` resolved, then its environment given to the proxy's own parser. Only where Azure
//! is changes: the upstream and Entra ID are loopback mocks whose certificates come from the
//! private CA, so the call succeeds only if the mounted bundle is trusted, and goes through the
//! egress proxy only if the injected HTTPS_PROXY is read. Its spans reach a loopback OTLP
//! receiver in the encoding, with the credentials and the sampler the AzureOpenAIProxy names.

use std::collections::HashMap;
use std::time::Duration;

use aoai_e2e::ca::TestCa;
use aoai_e2e::control_plane::free_port;
use aoai_e2e::egress_proxy::MockEgressProxy;
use aoai_e2e::entra::{App, MockEntra};
use aoai_e2e::kubelet::{self, Source};
use aoai_e2e::openai::MockOpenAi;
use aoai_e2e::otlp::Collector;
use aoai_e2e::sidecar::Sidecar;
use aoai_e2e::tokens::TokenLedger;
use k8s_openapi::api::apps::v1::Deployment;

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/deployment-egress-proxy-private-ca.out.yaml"
);
const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "client-secret-from-the-mounted-file";

#[tokio::test]
async fn the_injected_sidecar_trusts_the_private_ca_and_goes_through_the_egress_proxy() {
    let _ = aoai_runtime::crypto_provider().install_default();
    let private_ca = TestCa::new();
    let ledger = TokenLedger::new();
    let app = App {
        tenant_id: TENANT.into(),
        client_id: CLIENT.into(),
        secret: Some(SECRET.into()),
        ..App::default()
    };
    let entra = MockEntra::start(
        app,
        private_ca.server_config(),
        Duration::from_secs(3600),
        ledger,
    )
    .await;
    let gateway = MockOpenAi::start_tls(private_ca.server_config()).await;
    let egress = MockEgressProxy::start(Some("team-a:egress-pw")).await;
    let collector = Collector::start().await;

    let text = std::fs::read_to_string(GOLDEN).unwrap();
    let deployment: Deployment = serde_saphyr::from_str(
        text.split("\n---\n")
            .find(|d| d.contains("kind: Deployment"))
            .unwrap(),
    )
    .unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let sidecar = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "aoai-proxy")
        .expect("the injected sidecar")
        .clone();
    let objects = HashMap::from([
        (
            (Source::Secret, "openai-client-secret", "client-secret"),
            SECRET.to_string(),
        ),
        (
            (Source::Secret, "egress-proxy", "url"),
            egress.url(Some("team-a:egress-pw")),
        ),
        (
            (Source::Secret, "otlp-auth", "headers"),
            "authorization=Bearer%20otlp-pw".to_string(),
        ),
        (
            (Source::ConfigMap, "corp-ca", "bundle.pem"),
            std::fs::read_to_string(private_ca.root_pem_path()).unwrap(),
        ),
    ]);
    let content = |kind, name: &str, key: &str| {
        objects
            .get(&(kind, name, key))
            .unwrap_or_else(|| panic!("the test holds no {kind:?} {name} key {key}"))
            .clone()
    };
    let root = tempfile::tempdir().unwrap();
    let mut env = kubelet::environment(&pod, &sidecar, &content, "", root.path());
    assert!(env["SSL_CERT_FILE"].starts_with(&root.path().display().to_string()));
    for (name, value) in [
        ("API_BASE_URL", format!("{}/openai-gw", gateway.url())),
        ("AZURE_AUTHORITY_HOST", entra.authority()),
        ("PORT", free_port().to_string()),
        ("AOAI_PROXY_ADMIN_HOST", "127.0.0.1".into()),
        ("AOAI_PROXY_ADMIN_PORT", free_port().to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ] {
        env.insert(name.to_string(), value);
    }
    let sidecar = Sidecar::start(&env).await;
    let url = sidecar.url.clone();
    // A sampled caller: the parent-based ratio sampler keeps its decision.
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let answer = aoai_e2e::client::post_json(
        &format!("{url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"),
        &[("traceparent", &format!("00-{trace_id}-b7ad6b7169203331-01"))],
        &serde_json::json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        gateway.requests()[0].path_and_query,
        "/openai-gw/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    );
    assert!(
        egress.tunnels_to(gateway.server.addr) >= 1,
        "{:?}",
        egress.tunnels()
    );
    let entra_addr = entra
        .authority()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    assert!(egress.tunnels_to(entra_addr) >= 1, "{:?}", egress.tunnels());
    let spans = collector
        .wait_for(Duration::from_secs(15), |spans| {
            spans.iter().any(|s| s.trace_id == trace_id)
        })
        .await;
    let span = spans.iter().find(|s| s.trace_id == trace_id).unwrap();
    assert_eq!(span.name, "chat gpt-4o");
    assert_eq!(span.resource["k8s.cluster.name"], "prod-weu");
    let export = &collector.exports()[0];
    assert_eq!(export.content_type, "application/json");
    assert_eq!(export.headers["authorization"], "Bearer otlp-pw");
    sidecar.stop().await;
}
