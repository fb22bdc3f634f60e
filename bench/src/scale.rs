//! `aoai-bench scale`: the operator in a cluster of production size, on the real control plane of
//! `KUBEBUILDER_ASSETS` (`scripts/bench-scale` sets it up). The chart is installed by Helm, the
//! operator runs as its Deployment would (its ServiceAccount, its environment); the cluster holds
//! N AzureOpenAIProxy objects, M unrelated 64 KiB Secrets and P unrelated pods. Printed: time
//! until every object has a status for its generation, time for a spec change to reach the
//! status, status writes while nothing changes, the operator's peak RSS, and the admission
//! latency of pods through the webhook beside pods it does not cover.

use std::time::{Duration, Instant, SystemTime};

use aoai_e2e::ca::{fixture_key_pem, self_signed_client_cert, tls_secret};
use aoai_e2e::control_plane::{ControlPlane, apply};
use aoai_e2e::operator::{OperatorProcess, install_chart};
use aoai_operator::annotations::INJECT;
use aoai_operator::crd::AzureOpenAIProxy;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use serde_json::{Value, json};

use crate::{median, percentile, proc_stats};

#[derive(clap::Args)]
pub struct ScaleArgs {
    /// The aoai-operator binary to run (scripts/bench-scale builds the release one).
    #[arg(long, value_name = "PATH", value_parser = crate::existing_file)]
    pub operator: std::path::PathBuf,
    /// AzureOpenAIProxy objects (half with a client certificate, half with a client secret).
    #[arg(long, default_value_t = 1000)]
    pub proxies: usize,
    /// Unrelated Secrets of 64 KiB.
    #[arg(long, default_value_t = 5000)]
    pub secrets: usize,
    /// Unrelated pods (not annotated).
    #[arg(long, default_value_t = 2000)]
    pub pods: usize,
    /// Namespaces the objects are spread over.
    #[arg(long, default_value_t = 20)]
    pub namespaces: usize,
    /// Pods created one after the other for the admission latency, per kind.
    #[arg(long, default_value_t = 100)]
    pub admissions: usize,
    /// Spec changes timed one after the other.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Seconds of quiet during which status writes are counted.
    #[arg(long, default_value_t = 30)]
    pub quiet: u64,
}

const CONCURRENCY: usize = 32;

fn namespace(i: usize, count: usize) -> String {
    format!("team-{:02}", i % count)
}

/// Runs `count` creations, `CONCURRENCY` at a time.
async fn create_all<F, Fut>(what: &str, count: usize, create: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    futures_util::stream::iter(0..count)
        .for_each_concurrent(CONCURRENCY, create)
        .await;
    eprintln!(
        "created {count} {what} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Half the objects use a client secret of their own, the others their namespace's certificate.
fn uses_client_secret(i: usize) -> bool {
    !i.is_multiple_of(2)
}

fn proxy_object(name: &str, namespace: &str, i: usize, log_level: &str) -> Value {
    let credential = if uses_client_secret(i) {
        json!({"clientSecret": {"secretName": format!("{name}-secret")}})
    } else {
        json!({"clientCertificate": {"secretName": "client-cert"}})
    };
    json!({
        "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"endpoint": "https://r.openai.azure.com", "tenantId": "contoso.onmicrosoft.com",
                 "clientId": "11111111-2222-3333-4444-555555555555", "credential": credential,
                 "sidecar": {"logLevel": log_level}},
    })
}

/// How many AzureOpenAIProxy objects have a status for their generation.
async fn with_current_status(client: &Client) -> usize {
    let api: Api<AzureOpenAIProxy> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .expect("list proxies");
    list.items
        .iter()
        .filter(|p| {
            p.status.as_ref().and_then(|s| s.observed_generation) == p.metadata.generation
                && p.metadata.generation.is_some()
        })
        .count()
}

fn pod(name: &str, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }))
    .unwrap()
}

pub async fn run(args: ScaleArgs) {
    let _ = aoai_runtime::crypto_provider().install_default();
    let Some(plane) = ControlPlane::start("aoai-bench scale").await else {
        eprintln!(
            "aoai-bench scale needs a control plane: run it through scripts/bench-scale, or set KUBEBUILDER_ASSETS"
        );
        std::process::exit(2);
    };
    let client = plane.client();
    let chart = install_chart(&plane, "aoai-proxy-operator", "aoai-system", json!({})).await;

    // The cluster, before the operator starts (as when it is installed into a running cluster).
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in 0..args.namespaces {
        let name = namespace(n, args.namespaces);
        apply(
            &namespaces,
            &name,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        )
        .await;
    }
    let filler = "x".repeat(64 * 1024);
    create_all("unrelated 64 KiB Secrets", args.secrets, |i| {
        let (client, filler) = (client.clone(), filler.clone());
        let namespace = namespace(i, args.namespaces);
        async move {
            let secrets: Api<Secret> = Api::namespaced(client, &namespace);
            let name = format!("sh.helm.release.v1.app-{i}.v1");
            apply(
                &secrets,
                &name,
                json!({
                    "apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
                    "metadata": {"name": name, "namespace": namespace},
                    "stringData": {"release": filler},
                }),
            )
            .await;
        }
    })
    .await;
    create_all("unrelated pods", args.pods, |i| {
        let client = client.clone();
        let namespace = namespace(i, args.namespaces);
        async move {
            let pods: Api<Pod> = Api::namespaced(client, &namespace);
            pods.create(
                &PostParams::default(),
                &pod(&format!("unrelated-{i}"), json!({})),
            )
            .await
            .expect("create an unrelated pod");
        }
    })
    .await;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs() as i64;
    let cert = self_signed_client_cert(&fixture_key_pem("client-a"), now - 3600, now + 90 * 86_400);
    for n in 0..args.namespaces {
        let name = namespace(n, args.namespaces);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &name);
        apply(
            &secrets,
            "client-cert",
            tls_secret("client-cert", &name, &cert, "client-a"),
        )
        .await;
    }
    create_all(
        "AzureOpenAIProxy objects (and the client secrets of half)",
        args.proxies,
        |i| {
            let client = client.clone();
            let namespace = namespace(i, args.namespaces);
            async move {
                let name = format!("proxy-{i}");
                if uses_client_secret(i) {
                    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
                    apply(
                        &secrets,
                        &format!("{name}-secret"),
                        json!({
                            "apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": format!("{name}-secret"), "namespace": namespace},
                            "stringData": {"client-secret": format!("secret-{i}")},
                        }),
                    )
                    .await;
                }
                let proxies: Api<AzureOpenAIProxy> = Api::namespaced(client, &namespace);
                apply(&proxies, &name, proxy_object(&name, &namespace, i, "info")).await;
            }
        },
    )
    .await;

    // The operator, timed from its start.
    let started = Instant::now();
    let mut operator = OperatorProcess::start(
        args.operator.to_str().expect("a UTF-8 path"),
        &chart,
        "aoai-proxy-operator-0",
        true,
        &[],
    );
    let all_statuses = loop {
        let done = with_current_status(&client).await;
        if done == args.proxies {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(300) {
            panic!(
                "{done} of {} statuses after 300 s; operator output:\n{}",
                args.proxies,
                operator.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    operator.wait_ready(Duration::from_secs(60)).await;

    // Nothing changes: count the status writes the watch sees.
    let proxies: Api<AzureOpenAIProxy> = Api::all(client.clone());
    let quiet = Duration::from_secs(args.quiet);
    let writes = count_modifications(&proxies, quiet).await;

    // One spec change at a time, until its status is written.
    let mut change_ms = Vec::new();
    for c in 0..args.changes {
        let i = c * args.proxies / args.changes.max(1);
        let namespace = namespace(i, args.namespaces);
        let name = format!("proxy-{i}");
        let api: Api<AzureOpenAIProxy> = Api::namespaced(client.clone(), &namespace);
        let level = if c % 2 == 0 { "debug" } else { "warn" };
        let changed = Instant::now();
        let applied = api
            .patch(
                &name,
                &PatchParams::apply("aoai-bench").force(),
                &Patch::Apply(proxy_object(&name, &namespace, i, level)),
            )
            .await
            .expect("change a spec");
        loop {
            let object = api.get(&name).await.expect("get the proxy");
            if object.status.as_ref().and_then(|s| s.observed_generation)
                == applied.metadata.generation
            {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(60),
                "{name}: the change never reached the status"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        change_ms.push(changed.elapsed().as_secs_f64() * 1000.0);
    }

    // Admission latency: pods through the webhook (annotated), and pods it never sees.
    let admission_namespace = namespace(0, args.namespaces);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &admission_namespace);
    let mut injected_ms = Vec::new();
    let mut plain_ms = Vec::new();
    for i in 0..args.admissions {
        for (annotated, into) in [(true, &mut injected_ms), (false, &mut plain_ms)] {
            let annotations = if annotated {
                json!({INJECT: "proxy-0"})
            } else {
                json!({})
            };
            let name = format!("{}-{i}", if annotated { "injected" } else { "plain" });
            let before = Instant::now();
            let created = pods
                .create(&PostParams::default(), &pod(&name, annotations))
                .await
                .unwrap_or_else(|e| panic!("create {name}: {e}"));
            into.push(before.elapsed().as_secs_f64() * 1000.0);
            if annotated {
                assert!(
                    created
                        .annotations()
                        .contains_key(aoai_operator::annotations::STATUS),
                    "{name} was not injected"
                );
            }
        }
    }
    let stats = proc_stats(operator.pid());
    let exit = operator.terminate(Duration::from_secs(30));
    assert!(exit.success(), "the operator exited with {exit}");

    report(
        &args,
        all_statuses,
        writes,
        quiet,
        &mut change_ms,
        stats.peak_rss,
        &mut injected_ms,
        &mut plain_ms,
    );
}

/// Changes to any AzureOpenAIProxy (status writes included) seen by a watch during `quiet`,
/// after its initial listing.
async fn count_modifications(proxies: &Api<AzureOpenAIProxy>, quiet: Duration) -> usize {
    let mut stream = std::pin::pin!(watcher(proxies.clone(), watcher::Config::default()));
    let deadline = tokio::time::Instant::now() + quiet;
    let (mut listed, mut writes) = (false, 0);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, stream.next()).await {
        match event {
            Ok(watcher::Event::InitDone) => listed = true,
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) if listed => writes += 1,
            _ => {}
        }
    }
    writes
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &ScaleArgs,
    all_statuses: Duration,
    writes: usize,
    quiet: Duration,
    change_ms: &mut [f64],
    peak_rss: f64,
    injected_ms: &mut [f64],
    plain_ms: &mut [f64],
) {
    println!(
        "\n### Operator at scale: {} AzureOpenAIProxy, {} unrelated 64 KiB Secrets, {} unrelated pods, {} namespaces\n",
        args.proxies, args.secrets, args.pods, args.namespaces
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| every object has a status for its generation, from the operator's start | {:.1} s |",
        all_statuses.as_secs_f64()
    );
    let median_change = median(change_ms);
    let max_change = change_ms.iter().copied().fold(0.0, f64::max);
    println!(
        "| one spec change in its status ({} changes) | median {median_change:.0} ms, max {max_change:.0} ms |",
        change_ms.len()
    );
    println!(
        "| status writes while nothing changed ({} s) | {writes} |",
        quiet.as_secs()
    );
    println!("| operator peak RSS (VmHWM) | {peak_rss:.1} MiB |");
    println!(
        "| pod creation through the webhook ({} pods) | p50 {:.1} ms, p99 {:.1} ms |",
        injected_ms.len(),
        percentile(injected_ms, 0.5),
        percentile(injected_ms, 0.99)
    );
    println!(
        "| pod creation the webhook does not see ({} pods) | p50 {:.1} ms, p99 {:.1} ms |",
        plain_ms.len(),
        percentile(plain_ms, 0.5),
        percentile(plain_ms, 0.99)
    );
}
