//! Egress through an HTTP proxy (HTTPS_PROXY, NO_PROXY), on 127.0.0.1: the real aoai-proxy
//! binary reaches an HTTPS upstream and Entra ID through a CONNECT proxy that counts its tunnels
//! and requires credentials; NO_PROXY bypasses it; a proxy that refuses gives a JSON 502 naming
//! it; the proxy's password never appears in any log or answer.

mod common;

use std::time::Duration;

use aoai_e2e::ca::TestCa;
use aoai_e2e::client::chat;
use aoai_e2e::egress_proxy::MockEgressProxy;
use aoai_e2e::entra::{App, MockEntra};
use aoai_e2e::openai::MockOpenAi;
use aoai_e2e::tokens::TokenLedger;
use common::process::{ProxyProcess, assert_no_secrets};
use http::StatusCode;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "client-secret-value-7Q~abcdefghijklmnop";
const PROXY_CREDENTIALS: &str = "egress-user:proxy-pass-W0rd";

struct World {
    ca: TestCa,
    entra: MockEntra,
    upstream: MockOpenAi,
    egress: MockEgressProxy,
}

impl World {
    async fn new() -> Self {
        let ca = TestCa::new();
        let ledger = TokenLedger::new();
        let app = App {
            tenant_id: TENANT.into(),
            client_id: CLIENT.into(),
            secret: Some(SECRET.into()),
            ..App::default()
        };
        let entra =
            MockEntra::start(app, ca.server_config(), Duration::from_secs(3600), ledger).await;
        let upstream = MockOpenAi::start_tls(ca.server_config()).await;
        let egress = MockEgressProxy::start(Some(PROXY_CREDENTIALS)).await;
        Self {
            ca,
            entra,
            upstream,
            egress,
        }
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars = vec![
            ("API_BASE_URL".to_string(), self.upstream.url()),
            ("AZURE_TENANT_ID".into(), TENANT.into()),
            ("AZURE_CLIENT_ID".into(), CLIENT.into()),
            ("AZURE_CLIENT_SECRET".into(), SECRET.into()),
            ("AZURE_AUTHORITY_HOST".into(), self.entra.authority()),
            (
                "SSL_CERT_FILE".into(),
                self.ca.root_pem_path().display().to_string(),
            ),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        vars
    }
}

fn vars(owned: &[(String, String)]) -> Vec<(&str, &str)> {
    owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[tokio::test]
async fn the_upstream_and_entra_id_are_reached_through_the_proxy_with_its_credentials() {
    let world = World::new().await;
    let proxy_url = world.egress.url(Some(PROXY_CREDENTIALS));
    let env = world.env(&[("HTTPS_PROXY", &proxy_url)]);
    let mut proxy = ProxyProcess::spawn(&vars(&env));
    proxy.wait_healthy(Duration::from_secs(15)).await;
    let answer = chat(&proxy.url).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(
        world.egress.tunnels_to(world.upstream.server.addr) >= 1,
        "{:?}",
        world.egress.tunnels()
    );
    let entra_addr: std::net::SocketAddr = world
        .entra
        .authority()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    assert!(
        world.egress.tunnels_to(entra_addr) >= 1,
        "{:?}",
        world.egress.tunnels()
    );
    let output = proxy.output();
    assert!(
        output.contains(&format!("http://{}", world.egress.addr)),
        "the proxy is named:\n{output}"
    );
    assert_no_secrets(
        &output,
        &["proxy-pass-W0rd".to_string(), SECRET.to_string()],
    );
}

#[tokio::test]
async fn no_proxy_bypasses_it_and_the_lowercase_names_work_too() {
    let world = World::new().await;
    let proxy_url = world.egress.url(Some(PROXY_CREDENTIALS));
    let env = world.env(&[
        ("https_proxy", &proxy_url),
        ("no_proxy", "localhost,127.0.0.0/8"),
    ]);
    let mut proxy = ProxyProcess::spawn(&vars(&env));
    proxy.wait_healthy(Duration::from_secs(15)).await;
    assert_eq!(chat(&proxy.url).await.status, StatusCode::OK);
    assert!(
        world.egress.tunnels().is_empty(),
        "{:?}",
        world.egress.tunnels()
    );
}

#[tokio::test]
async fn a_proxy_that_refuses_gives_a_json_502_naming_it_and_never_its_password() {
    let world = World::new().await;
    let entra = world
        .entra
        .authority()
        .trim_start_matches("https://")
        .to_string();
    for (credentials, refuse, status) in [
        (
            Some("egress-user:wrong-pass-Xy"),
            false,
            "407 Proxy Authentication Required",
        ),
        (Some(PROXY_CREDENTIALS), true, "403 Forbidden"),
    ] {
        if refuse {
            world.egress.refuse();
        }
        let proxy_url = world.egress.url(credentials);
        // Entra ID directly (NO_PROXY by host:port), the upstream through the proxy.
        let env = world.env(&[("HTTPS_PROXY", &proxy_url), ("NO_PROXY", &entra)]);
        let mut proxy = ProxyProcess::spawn(&vars(&env));
        proxy.wait_healthy(Duration::from_secs(15)).await;
        let answer = chat(&proxy.url).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
        let message = answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        let named = format!(
            "the egress proxy http://{} refused CONNECT {}: {status}",
            world.egress.addr, world.upstream.server.addr
        );
        assert!(message.contains(&named), "{message}");
        let password = credentials.unwrap().split(':').nth(1).unwrap().to_string();
        assert!(!message.contains(&password));
        assert_no_secrets(&proxy.output(), &[password, SECRET.to_string()]);
    }
}

#[tokio::test]
async fn a_bad_proxy_setting_stops_the_proxy_at_start_naming_the_variable() {
    let world = World::new().await;
    for (name, value, message) in [
        (
            "HTTPS_PROXY",
            "https://user:secret-pw@proxy:3128",
            "HTTPS_PROXY: must be an http:// proxy URL",
        ),
        (
            "NO_PROXY",
            "10.0.0.0/99",
            "NO_PROXY: NO_PROXY entry \"10.0.0.0/99\"",
        ),
    ] {
        let env = world.env(&[(name, value)]);
        let (status, output) = common::process::run_to_exit(&vars(&env), Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{output}");
        assert!(output.contains(message), "{output}");
        assert!(!output.contains("secret-pw"), "{output}");
    }
}
