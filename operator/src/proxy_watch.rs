//! Every AzureOpenAIProxy, read one object at a time. A typed watch fails as a whole when a
//! single object does not deserialize (say a CRD from another chart version, or an object stored
//! under an older schema), and then holds back every other object of the cluster, for the
//! controller and the webhook alike. This watch receives them untyped, reads each on its own, and
//! hands the unreadable ones to whoever reports them (the controller, in their status).

use futures_util::{Stream, StreamExt};
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use crate::crd::AzureOpenAIProxy;

/// An object this operator cannot read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub reason: String,
}

/// The watch events of every AzureOpenAIProxy, typed. An object that cannot be read is sent to
/// `unreadable` (when given) and leaves the caches: nothing is injected or reconciled from a spec
/// that is no longer the object's.
pub fn watch(
    client: Client,
    unreadable: Option<mpsc::UnboundedSender<Unreadable>>,
) -> impl Stream<Item = Result<watcher::Event<AzureOpenAIProxy>, watcher::Error>> + Send + 'static {
    let gvk = GroupVersionKind::gvk(
        &AzureOpenAIProxy::group(&()),
        &AzureOpenAIProxy::version(&()),
        &AzureOpenAIProxy::kind(&()),
    );
    let resource = ApiResource::from_gvk_with_plural(&gvk, &AzureOpenAIProxy::plural(&()));
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |event| event.map(|event| typed(event, unreadable.as_ref())))
}

fn typed(
    event: watcher::Event<DynamicObject>,
    unreadable: Option<&mpsc::UnboundedSender<Unreadable>>,
) -> watcher::Event<AzureOpenAIProxy> {
    let read = |object: DynamicObject, applied: fn(AzureOpenAIProxy) -> _| match read(&object) {
        Ok(proxy) => applied(proxy),
        Err(reason) => {
            let found = Unreadable {
                namespace: object.namespace().unwrap_or_default(),
                name: object.name_any(),
                generation: object.metadata.generation,
                reason,
            };
            tracing::warn!(
                namespace = found.namespace,
                name = found.name,
                "cannot read this AzureOpenAIProxy: {}",
                found.reason
            );
            if let Some(unreadable) = unreadable {
                let _ = unreadable.send(found);
            }
            watcher::Event::Delete(stand_in(object))
        }
    };
    match event {
        watcher::Event::Apply(object) => read(object, watcher::Event::Apply),
        watcher::Event::InitApply(object) => read(object, watcher::Event::InitApply),
        watcher::Event::Delete(object) => watcher::Event::Delete(stand_in(object)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// The object as this operator's type, or why not (serde's message, which names the field).
pub fn read(object: &DynamicObject) -> Result<AzureOpenAIProxy, String> {
    let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| format!("the spec cannot be read: {e}"))
}

/// An object with `object`'s identity only, to take it out of a cache (which keys by name and
/// namespace): its spec may be unreadable, or the object gone.
fn stand_in(object: DynamicObject) -> AzureOpenAIProxy {
    let mut proxy = AzureOpenAIProxy::new(&object.name_any(), minimal_spec());
    proxy.metadata = object.metadata;
    proxy
}

fn minimal_spec() -> crate::crd::AzureOpenAIProxySpec {
    serde_json::from_value(serde_json::json!({"credential": {"managedIdentity": {}}}))
        .expect("a spec with only a credential reads")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
            "metadata": {"name": "p", "namespace": "team", "generation": 3},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn each_object_is_read_on_its_own_and_the_unreadable_leave_the_cache() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let good = object(
            json!({"endpoint": "https://r.openai.azure.com", "credential": {"managedIdentity": {}}}),
        );
        let watcher::Event::InitApply(proxy) = typed(watcher::Event::InitApply(good), Some(&tx))
        else {
            panic!("a readable object is applied");
        };
        assert_eq!(
            proxy.spec.endpoint.as_deref(),
            Some("https://r.openai.azure.com")
        );
        assert!(rx.try_recv().is_err());

        let bad = object(json!({"endpoint": 5, "credential": "certificate"}));
        let watcher::Event::Delete(gone) = typed(watcher::Event::Apply(bad), Some(&tx)) else {
            panic!("an unreadable object leaves the caches");
        };
        assert_eq!(
            (gone.name_any(), gone.namespace()),
            ("p".into(), Some("team".into()))
        );
        let reported = rx.try_recv().unwrap();
        assert_eq!(
            (
                reported.namespace.as_str(),
                reported.name.as_str(),
                reported.generation
            ),
            ("team", "p", Some(3))
        );
        assert!(
            reported
                .reason
                .starts_with("the spec cannot be read: invalid type"),
            "{}",
            reported.reason
        );
    }
}
