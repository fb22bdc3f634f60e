//! The controller: reconciles each `AzureOpenAIProxy`, re-run when it changes, when a Secret it
//! references changes, and when a pod injected with it comes or goes.
//!
//! Memory does not grow with the cluster's unrelated objects. Secrets are watched by metadata
//! only, to learn that a referenced one changed; reconcile reads the ones its proxy references,
//! and only those. Injected pods are cached (one watch, by label). Reconcile is
//! [`status::assess`] (pure) plus the writes it implies: the status by server-side apply, Events
//! for transitions, and with `rollout: Restart` a restart of stale workloads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::annotations;
use crate::crd::{AzureOpenAIProxy, AzureOpenAIProxyStatus, RolloutPolicy};
use crate::metrics::Metrics;
use crate::proxy_watch;
use crate::status::{self, Options, Read, SecretRead, stale_owners};

/// The field manager of every write the controller makes.
pub const FIELD_MANAGER: &str = "aoai-operator";

/// Why a reconcile failed. Each variant is a metric label ([`Error::reason`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("AzureOpenAIProxy has no namespace")]
    NoNamespace,
    #[error("cannot read Secret {name}: {source}")]
    SecretRead {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot apply the status: {0}")]
    StatusApply(#[source] kube::Error),
    #[error("cannot restart {kind} {name}: {source}")]
    Rollout {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NoNamespace => "no_namespace",
            Error::SecretRead { .. } => "secret_read",
            Error::StatusApply(_) => "status_apply",
            Error::Rollout { .. } => "rollout",
        }
    }
}

/// Where the operator may read Secrets: every namespace, or only those the platform lists
/// (`--secret-namespaces`, the chart's `rbac.secretNamespaces`, which grants Roles there only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SecretNamespaces {
    #[default]
    All,
    Only(Vec<String>),
}

impl SecretNamespaces {
    /// From the flag's list: empty means every namespace.
    pub fn from_list(namespaces: Vec<String>) -> Self {
        let namespaces: Vec<String> = namespaces
            .into_iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        if namespaces.is_empty() {
            Self::All
        } else {
            Self::Only(namespaces)
        }
    }

    pub fn allows(&self, namespace: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(namespaces) => namespaces.iter().any(|n| n == namespace),
        }
    }
}

/// What reconcile needs: the client, the pod cache and the options.
pub struct Context {
    pub client: Client,
    pub secret_namespaces: SecretNamespaces,
    pub pods: Store<Pod>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub options: Options,
    /// True once the pod cache holds every injected pod. Reconciles read this flag rather than
    /// await `Store::wait_until_ready`: kube-runtime's readiness future wakes only the task that
    /// polled it last, so concurrent reconciles waiting on it never woke (the status was never
    /// written and graceful shutdown waited on them forever).
    pub caches_synced: Arc<AtomicBool>,
    /// Consecutive failures per object, for the error policy's backoff.
    failures: Mutex<HashMap<ObjectRef<AzureOpenAIProxy>, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        secret_namespaces: SecretNamespaces,
        pods: Store<Pod>,
        metrics: Arc<Metrics>,
        options: Options,
        caches_synced: Arc<AtomicBool>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            secret_namespaces,
            pods,
            metrics,
            options,
            caches_synced,
            failures: Mutex::default(),
        }
    }
}

/// Names of the Secrets a proxy references.
pub fn referenced_secrets(proxy: &AzureOpenAIProxy) -> Vec<&str> {
    let credential = &proxy.spec.credential;
    [
        credential
            .client_certificate
            .as_ref()
            .map(|c| c.secret_name.as_str()),
        credential
            .client_secret
            .as_ref()
            .map(|c| c.secret_name.as_str()),
        proxy
            .spec
            .inbound_keys
            .as_ref()
            .map(|k| k.secret_name.as_str()),
        proxy
            .spec
            .trust
            .as_ref()
            .and_then(|t| t.secret.as_ref())
            .map(|s| s.name.as_str()),
        proxy
            .spec
            .egress_proxy
            .as_ref()
            .and_then(|e| e.https_proxy_from.as_ref())
            .map(|s| s.secret_name.as_str()),
        proxy
            .spec
            .tracing
            .as_ref()
            .and_then(|t| t.headers_from.as_ref())
            .map(|s| s.secret_name.as_str()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The ConfigMap a proxy references (its trusted CA bundle), if any.
pub fn referenced_config_map(proxy: &AzureOpenAIProxy) -> Option<&str> {
    let trust = proxy.spec.trust.as_ref()?;
    trust.config_map.as_ref().map(|m| m.name.as_str())
}

/// Pods injected with `name` in `namespace`, from the cache.
fn injected_pods(store: &Store<Pod>, namespace: &str, name: &str) -> Vec<Arc<Pod>> {
    store.state_filter(|pod| {
        pod.metadata.namespace.as_deref() == Some(namespace)
            && pod
                .labels()
                .get(annotations::PROXY_LABEL)
                .map(String::as_str)
                == Some(name)
    })
}

pub async fn reconcile(proxy: Arc<AzureOpenAIProxy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&proxy, &ctx).await;
    ctx.metrics.reconciled(started.elapsed());
    let key = ObjectRef::from_obj(proxy.as_ref());
    if result.is_ok() {
        ctx.failures.lock().expect("not poisoned").remove(&key);
    }
    result
}

/// How long a rollout waits after the new config hash is written to the status, so that the API
/// server's admission policy has seen it before the restarted pods are created.
const PUBLISH_BEFORE_RESTART: Duration = Duration::from_secs(2);

async fn reconcile_inner(proxy: &AzureOpenAIProxy, ctx: &Context) -> Result<Action, Error> {
    let namespace = proxy.namespace().ok_or(Error::NoNamespace)?;
    let name = proxy.name_any();
    // Before the cache holds every pod, the counts would be wrong: come back once it does. The
    // controller drives the cache's watch meanwhile.
    if !ctx.caches_synced.load(Ordering::Acquire) {
        return Ok(Action::requeue(CACHE_SYNC_RETRY));
    }
    let secrets = read_secrets(ctx, &namespace, &referenced_secrets(proxy)).await?;
    let config_map = match referenced_config_map(proxy) {
        Some(name) => Some(read_config_map(ctx, &namespace, name).await?),
        None => None,
    };
    let pods = injected_pods(&ctx.pods, &namespace, &name);
    let pod_refs: Vec<&Pod> = pods.iter().map(Arc::as_ref).collect();
    let mut assessment = status::assess(
        proxy,
        |wanted| match secrets.iter().find(|(name, _)| name == wanted) {
            Some((_, Some(secret))) => SecretRead::Found(secret),
            Some((_, None)) => SecretRead::NotFound,
            None => SecretRead::Forbidden,
        },
        |_| match &config_map {
            Some(Some(Some(found))) => Read::Found(found),
            Some(Some(None)) => Read::NotFound,
            Some(None) | None => Read::Forbidden,
        },
        &pod_refs,
        Timestamp::now(),
        &ctx.options,
    );

    let hash = assessment.status.config_hash.clone().unwrap_or_default();
    // Pods that the admission policy injects copy the hash from the stored status: restart only
    // once the stored status carries the new hash (the status is written below; the restart
    // comes at the next reconcile), so that the restarted pods get it.
    let published = proxy.status.as_ref().and_then(|s| s.config_hash.as_deref()) == Some(&hash);
    let rollout_due = proxy.spec.rollout == RolloutPolicy::Restart
        && assessment.status.rolled_out_hash.as_deref() != Some(hash.as_str());
    if rollout_due && !published {
        assessment.requeue_after = assessment.requeue_after.min(PUBLISH_BEFORE_RESTART);
    } else if rollout_due {
        let restarted = restart_stale_workloads(ctx, &namespace, &pod_refs, &hash).await?;
        if !restarted.is_empty() {
            assessment.transitions.push(status::Transition {
                warning: false,
                reason: "RolloutRestarted",
                message: format!(
                    "restarted {} to pick up configuration {hash}",
                    restarted.join(", ")
                ),
            });
        }
        assessment.status.rolled_out_hash = Some(hash);
    }

    if proxy.status.as_ref() != Some(&assessment.status) {
        apply_status(&ctx.client, &namespace, &name, &assessment.status).await?;
    }
    let reference = proxy.object_ref(&());
    for transition in &assessment.transitions {
        let event = Event {
            type_: if transition.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: transition.reason.into(),
            note: Some(transition.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        // Events are best effort: a failure to record one must not fail the reconcile.
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(%namespace, %name, reason = transition.reason, "cannot record event: {e}");
        }
    }
    Ok(Action::requeue(assessment.requeue_after))
}

/// Reads the Secrets `names` in `namespace`: (name, the Secret or `None` when it does not exist).
/// A Secret the operator may not read is left out (RBAC restricted to other namespaces); any
/// other failure is an error, retried with backoff.
async fn read_secrets(
    ctx: &Context,
    namespace: &str,
    names: &[&str],
) -> Result<Vec<(String, Option<Secret>)>, Error> {
    if !ctx.secret_namespaces.allows(namespace) {
        return Ok(Vec::new());
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut read = Vec::with_capacity(names.len());
    for name in names {
        match api.get_opt(name).await {
            Ok(secret) => read.push((name.to_string(), secret)),
            Err(kube::Error::Api(status)) if status.code == 403 => {}
            Err(source) => {
                return Err(Error::SecretRead {
                    name: name.to_string(),
                    source,
                });
            }
        }
    }
    Ok(read)
}

/// Reads ConfigMap `name` in `namespace`: `None` when the operator may not read it, else the
/// ConfigMap or `None` when it does not exist.
async fn read_config_map(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<Option<ConfigMap>>, Error> {
    if !ctx.secret_namespaces.allows(namespace) {
        return Ok(None);
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(found) => Ok(Some(found)),
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(None),
        Err(source) => Err(Error::SecretRead {
            name: format!("ConfigMap {name}"),
            source,
        }),
    }
}

/// Applies `status` with the controller's field manager (server-side apply on the subresource).
pub async fn apply_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &AzureOpenAIProxyStatus,
) -> Result<(), Error> {
    let api: Api<AzureOpenAIProxy> = Api::namespaced(client.clone(), namespace);
    let patch = json!({
        "apiVersion": "aoai-proxy.io/v1alpha1",
        "kind": "AzureOpenAIProxy",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::StatusApply)?;
    Ok(())
}

/// Restarts (as `kubectl rollout restart`) the workloads whose pods run an older configuration.
/// Returns "kind/name" of each restarted workload.
async fn restart_stale_workloads(
    ctx: &Context,
    namespace: &str,
    pods: &[&Pod],
    hash: &str,
) -> Result<Vec<String>, Error> {
    let mut restarted = Vec::new();
    for (kind, name) in stale_owners(pods, hash) {
        let (kind, name) = if kind == "ReplicaSet" {
            let replica_sets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), namespace);
            let owner = replica_sets
                .get_opt(&name)
                .await
                .map_err(|source| Error::Rollout {
                    kind: kind.clone(),
                    name: name.clone(),
                    source,
                })?
                .and_then(|rs| {
                    rs.owner_references()
                        .iter()
                        .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                        .map(|o| o.name.clone())
                });
            match owner {
                Some(deployment) => ("Deployment".to_string(), deployment),
                // A bare ReplicaSet (or one already gone) has no template to restart.
                None => continue,
            }
        } else {
            (kind, name)
        };
        let label = format!("{}/{name}", kind.to_lowercase());
        if restarted.contains(&label) {
            continue;
        }
        let restart = |source| Error::Rollout {
            kind: kind.clone(),
            name: name.clone(),
            source,
        };
        match kind.as_str() {
            "Deployment" => patch_restart::<Deployment>(ctx, namespace, &name).await,
            "StatefulSet" => patch_restart::<StatefulSet>(ctx, namespace, &name).await,
            "DaemonSet" => patch_restart::<DaemonSet>(ctx, namespace, &name).await,
            _ => continue,
        }
        .map_err(restart)?;
        tracing::info!(%namespace, workload = %label, "restarted to pick up configuration {hash}");
        restarted.push(label);
    }
    Ok(restarted)
}

async fn patch_restart<K>(ctx: &Context, namespace: &str, name: &str) -> Result<(), kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        annotations::RESTARTED_AT: Timestamp::now().to_string(),
    }}}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// Reconciles run at once. Unbounded, a start with many configurations opens as many API
/// connections at the same moment, and memory peaks with them; a small bound is as quick.
const MAX_CONCURRENT_RECONCILES: u16 = 16;

/// How soon a reconcile that found the caches still loading runs again.
const CACHE_SYNC_RETRY: Duration = Duration::from_millis(500);

/// Retries a failed reconcile with exponential backoff per object: 5 s, 10 s ... up to 5 minutes.
pub fn error_policy(proxy: Arc<AzureOpenAIProxy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.reason());
    let key = ObjectRef::from_obj(proxy.as_ref());
    let mut failures = ctx.failures.lock().expect("not poisoned");
    let count = failures.entry(key).or_insert(0);
    *count = count.saturating_add(1);
    let delay = backoff(*count);
    tracing::warn!(
        namespace = proxy.namespace().unwrap_or_default(),
        name = proxy.name_any(),
        reason = error.reason(),
        retry_in = ?delay,
        "reconcile failed: {error}"
    );
    Action::requeue(delay)
}

pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(10);
    (Duration::from_secs(5) * 2u32.pow(exponent)).min(Duration::from_secs(300))
}

/// Runs the controller until `shutdown` resolves: watches AzureOpenAIProxies, Secrets (metadata
/// only, in `secret_namespaces`) and injected pods (cached, by label), and reconciles.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    options: Options,
    secret_namespaces: SecretNamespaces,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (unreadable_tx, unreadable_rx) = tokio::sync::mpsc::unbounded_channel();
    let (proxy_cache, proxy_writer) = reflector::store();
    let proxy_changes = reflector::reflector(
        proxy_writer,
        proxy_watch::watch(client.clone(), Some(unreadable_tx)),
    )
    .touched_objects();
    let secret_changes = metadata_changes::<Secret>(&client, &secret_namespaces);
    let config_map_changes = metadata_changes::<ConfigMap>(&client, &secret_namespaces);
    let (pods, pods_writer) = reflector::store();
    let context = Arc::new(Context::new(
        client.clone(),
        secret_namespaces.clone(),
        pods.clone(),
        metrics,
        options,
        Arc::new(AtomicBool::new(false)),
    ));
    let (recorder, known) = (context.recorder.clone(), pods.clone());
    let pod_stream = reflector::reflector(
        pods_writer,
        watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(annotations::PROXY_LABEL),
        )
        .default_backoff()
        .modify(keep_what_reconcile_reads)
        .inspect(move |event| {
            if let Ok(watcher::Event::Apply(pod)) = event {
                announce_if_new(&recorder, &known, pod);
            }
        }),
    )
    .touched_objects();

    let controller = Controller::for_stream(proxy_changes, proxy_cache)
        .with_config(controller::Config::default().concurrency(MAX_CONCURRENT_RECONCILES));
    let proxy_store = controller.store();
    let config_map_proxies = proxy_store.clone();
    let caches_synced = context.caches_synced.clone();
    let report = report_unreadable(client, unreadable_rx);
    let controller = controller
        .watches_stream(secret_changes, move |secret: PartialObjectMeta<Secret>| {
            let namespace = secret.namespace();
            let name = secret.name_any();
            proxy_store
                .state()
                .into_iter()
                .filter(|p| {
                    p.namespace() == namespace && referenced_secrets(p).contains(&name.as_str())
                })
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches_stream(
            config_map_changes,
            move |map: PartialObjectMeta<ConfigMap>| {
                let namespace = map.namespace();
                let name = map.name_any();
                config_map_proxies
                    .state()
                    .into_iter()
                    .filter(|p| {
                        p.namespace() == namespace
                            && referenced_config_map(p) == Some(name.as_str())
                    })
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches_stream(pod_stream, |pod: Pod| {
            let namespace = pod.namespace()?;
            let name = pod.labels().get(annotations::PROXY_LABEL)?.clone();
            Some(ObjectRef::new(&name).within(&namespace))
        })
        .graceful_shutdown_on(shutdown);

    // The only task that awaits the cache's readiness (see `Context::caches_synced`).
    let caches = async {
        let _ = pods.wait_until_ready().await;
        caches_synced.store(true, Ordering::Release);
        tracing::info!("caches synced");
    };
    let run = controller
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("controller: {e}");
            }
        });
    tokio::join!(caches, run, report);
}

/// Publishes an `Injected` Event on a pod the watch sees for the first time since it began
/// (pods listed at its start are not new): the pod exists by then, whichever admission engine
/// injected it, and the webhook answers only the pods the admission policy leaves to it.
fn announce_if_new(recorder: &Recorder, known: &Store<Pod>, pod: &Pod) {
    if known.get(&ObjectRef::from_obj(pod)).is_some() {
        return;
    }
    let proxy = pod
        .labels()
        .get(annotations::PROXY_LABEL)
        .cloned()
        .unwrap_or_default();
    let event = Event {
        type_: EventType::Normal,
        reason: "Injected".into(),
        note: Some(format!(
            "aoai-proxy sidecar injected, configured by AzureOpenAIProxy {proxy:?}"
        )),
        action: "injected".into(),
        secondary: None,
    };
    let (recorder, reference) = (recorder.clone(), pod.object_ref(&()));
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::debug!("cannot record the injection event: {e}");
        }
    });
}

/// Writes the status of each object the watch could not read (once per generation and reason):
/// its spec is not what this operator knows, and nothing else would say so.
async fn report_unreadable(
    client: Client,
    mut found: tokio::sync::mpsc::UnboundedReceiver<proxy_watch::Unreadable>,
) {
    let mut reported = HashMap::new();
    while let Some(object) = found.recv().await {
        let key = (object.namespace.clone(), object.name.clone());
        let what = (object.generation, object.reason.clone());
        if reported.get(&key) == Some(&what) {
            continue;
        }
        let status = status::unreadable(object.generation, &object.reason, Timestamp::now());
        // Untyped: the typed API would fail to read the object that comes back.
        let resource = kube::api::ApiResource::erase::<AzureOpenAIProxy>(&());
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), &object.namespace, &resource);
        let patch = json!({
            "apiVersion": "aoai-proxy.io/v1alpha1",
            "kind": "AzureOpenAIProxy",
            "status": status,
        });
        let applied = api
            .patch_status(
                &object.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await;
        match applied {
            Ok(_) => {
                reported.insert(key, what);
            }
            Err(e) => tracing::warn!(
                namespace = object.namespace,
                name = object.name,
                "cannot write the status of an unreadable AzureOpenAIProxy: {e}"
            ),
        }
    }
}

/// Every change to a `K` (a Secret, a ConfigMap) in `namespaces`, by metadata only:
/// `Api<PartialObjectMeta<_>>` makes metadata-only requests, so no object's data is ever sent here.
fn metadata_changes<K>(
    client: &Client,
    namespaces: &SecretNamespaces,
) -> impl futures_util::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + use<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let apis: Vec<Api<PartialObjectMeta<K>>> = match namespaces {
        SecretNamespaces::All => vec![Api::all(client.clone())],
        SecretNamespaces::Only(namespaces) => namespaces
            .iter()
            .map(|n| Api::namespaced(client.clone(), n))
            .collect(),
    };
    futures_util::stream::select_all(apis.into_iter().map(|api| {
        watcher(api, watcher::Config::default())
            .default_backoff()
            .touched_objects()
            .boxed()
    }))
}

/// An injected pod as the cache keeps it: its name, labels, config hash and owners, and its phase
/// (what the counts and rollouts read); the rest of a pod is several KiB that nothing reads.
fn keep_what_reconcile_reads(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        annotations.retain(|key, _| key == annotations::CONFIG_HASH);
    }
    pod.spec = None;
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        ..Default::default()
    });
}
