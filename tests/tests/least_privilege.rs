//! The operator's reach into Secrets, on a real control plane (skipped unless
//! `KUBEBUILDER_ASSETS` is set). With the chart's `rbac.secretNamespaces`, the operator (as the
//! chart's ServiceAccount) watches and reads Secrets in the listed namespaces only: configurations
//! there are checked and follow their Secret's changes, one elsewhere that references a Secret
//! reports `SecretUnreadable`, and one that needs no Secret is Ready. Hundreds of large unrelated
//! Secrets in a watched namespace neither stall the statuses nor land in the operator's memory.

use std::time::Duration;

use aoai_e2e::ca::valid_client_cert;
use aoai_e2e::control_plane::{ControlPlane, apply};
use aoai_e2e::operator::{OperatorProcess, install_chart};
use aoai_e2e::wait;
use aoai_operator::crd::AzureOpenAIProxy;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;
use serde_json::{Value, json};

const OPERATOR: &str = env!("CARGO_BIN_EXE_aoai-e2e-operator");
const ALLOWED: &str = "team-a";
const OTHER: &str = "team-b";
/// Unrelated Secrets in the watched namespace, as Helm's release records are (48 KiB each).
const UNRELATED: usize = 300;
const CONFIGURATIONS: usize = 50;

fn proxy(namespace: &str, name: &str, credential: Value) -> Value {
    json!({
        "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"endpoint": "https://r.openai.azure.com", "tenantId": "contoso.onmicrosoft.com",
                 "clientId": "11111111-2222-3333-4444-555555555555", "credential": credential},
    })
}

/// A kubernetes.io/tls Secret with client-a's certificate and the private key `key`.
fn tls_secret(key: &str) -> Value {
    aoai_e2e::ca::tls_secret("cert", ALLOWED, &valid_client_cert(), key)
}

/// The CredentialsValid condition's (status, reason), once the status is for the current spec.
async fn credentials(
    proxies: &Api<AzureOpenAIProxy>,
    name: &str,
) -> Result<(String, String), String> {
    let object = proxies.get(name).await.map_err(|e| e.to_string())?;
    let status = object.status.ok_or("no status")?;
    if status.observed_generation != object.metadata.generation {
        return Err(format!(
            "observedGeneration {:?}",
            status.observed_generation
        ));
    }
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "CredentialsValid")
        .ok_or("no CredentialsValid")?;
    Ok((condition.status.clone(), condition.reason.clone()))
}

#[tokio::test]
async fn secrets_are_read_only_where_the_platform_allows_and_unrelated_ones_are_not_held() {
    let test = "secrets_are_read_only_where_the_platform_allows_and_unrelated_ones_are_not_held";
    let Some(plane) = ControlPlane::start(test).await else {
        return;
    };
    let client = plane.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for namespace in [ALLOWED, OTHER] {
        apply(
            &namespaces,
            namespace,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
        )
        .await;
    }
    let chart = install_chart(
        &plane,
        "aoai-proxy-operator",
        "aoai-system",
        json!({"rbac": {"secretNamespaces": [ALLOWED]}}),
    )
    .await;

    let filler = "x".repeat(48 * 1024);
    futures_util::stream::iter(0..UNRELATED)
        .for_each_concurrent(16, |i| {
            let (client, filler) = (client.clone(), filler.clone());
            async move {
                let name = format!("sh.helm.release.v1.app.v{i}");
                let secrets: Api<Secret> = Api::namespaced(client, ALLOWED);
                apply(
                    &secrets,
                    &name,
                    json!({
                        "apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
                        "metadata": {"name": name, "namespace": ALLOWED},
                        "stringData": {"release": filler},
                    }),
                )
                .await;
            }
        })
        .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ALLOWED);
    let allowed: Api<AzureOpenAIProxy> = Api::namespaced(client.clone(), ALLOWED);
    let other: Api<AzureOpenAIProxy> = Api::namespaced(client.clone(), OTHER);
    apply(&secrets, "cert", tls_secret("client-a")).await;
    for i in 0..CONFIGURATIONS {
        let name = format!("p{i}");
        apply(
            &allowed,
            &name,
            proxy(
                ALLOWED,
                &name,
                json!({"clientCertificate": {"secretName": "cert"}}),
            ),
        )
        .await;
    }
    apply(&Api::<Secret>::namespaced(client.clone(), OTHER), "client-secret", json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "client-secret", "namespace": OTHER},
        "stringData": {"client-secret": "not-for-the-operator"},
    }))
    .await;
    apply(
        &other,
        "secret",
        proxy(
            OTHER,
            "secret",
            json!({"clientSecret": {"secretName": "client-secret"}}),
        ),
    )
    .await;
    apply(
        &other,
        "managed",
        proxy(OTHER, "managed", json!({"managedIdentity": {}})),
    )
    .await;

    let mut operator = OperatorProcess::start(OPERATOR, &chart, "replica-0", false, &[]);
    wait::until(
        "every configuration in team-a is checked",
        Duration::from_secs(30),
        || async {
            for i in 0..CONFIGURATIONS {
                let found = credentials(&allowed, &format!("p{i}")).await?;
                if found != ("True".into(), "CertificateValid".into()) {
                    return Err(format!("p{i}: {found:?}; operator:\n{}", operator.output()));
                }
            }
            Ok(())
        },
    )
    .await;
    wait::until(
        "team-b: the Secret is unreadable, managed identity is valid",
        Duration::from_secs(10),
        || async {
            let secret = credentials(&other, "secret").await?;
            let managed = credentials(&other, "managed").await?;
            if secret == ("False".into(), "SecretUnreadable".into()) && managed.0 == "True" {
                Ok(())
            } else {
                Err(format!("{secret:?} {managed:?}"))
            }
        },
    )
    .await;

    // A change of the referenced Secret (a key that does not match) reaches the configurations.
    apply(&secrets, "cert", tls_secret("client-b")).await;
    wait::until(
        "the broken Secret shows in p0's status",
        Duration::from_secs(10),
        || async {
            match credentials(&allowed, "p0").await? {
                (status, _) if status == "False" => Ok(()),
                found => Err(format!("{found:?}; operator:\n{}", operator.output())),
            }
        },
    )
    .await;

    // 300 × 48 KiB of unrelated Secrets is 14 MiB: none of it is held.
    let peak_kib = operator.peak_rss_kib();
    println!("operator peak RSS: {} KiB", peak_kib);
    assert!(peak_kib < 48 * 1024, "peak RSS {} MiB", peak_kib / 1024);
    let output = operator.output();
    assert!(
        !output.contains("forbidden"),
        "the operator tried to read beyond its Roles:\n{output}"
    );
    assert!(!output.contains("not-for-the-operator"));
    let exit = operator.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{exit}:\n{}", operator.output());
}
