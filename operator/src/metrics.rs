//! The operator's Prometheus metrics, served on its admin listener at `/metrics`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

use crate::crd::AzureOpenAIProxy;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    result: &'static str,
    reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Family<ReasonLabels, Counter>,
    reconcile_duration: Histogram,
    pub leader: Gauge,
    admissions: Family<AdmissionLabels, Counter>,
    admission_duration: Histogram,
    fleet: Arc<Fleet>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyLabels {
    proxy_namespace: String,
    proxy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    proxy_namespace: String,
    proxy: String,
    condition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    proxy_namespace: String,
    proxy: String,
    state: &'static str,
}

/// Every AzureOpenAIProxy's status as metrics, read from the cache at each scrape (so a deleted
/// one leaves no series behind), by the leader only (so that replicas do not repeat them).
#[derive(Debug)]
struct Fleet {
    proxies: OnceLock<Store<AzureOpenAIProxy>>,
    leader: Gauge,
}

impl Collector for Fleet {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(proxies) = self.proxies.get().filter(|_| self.leader.get() == 1) else {
            return Ok(());
        };
        let mut proxies = proxies.state();
        proxies.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
        let statuses: Vec<_> = proxies
            .iter()
            .filter_map(|p| {
                Some((
                    p.metadata.namespace.as_deref()?,
                    p.metadata.name.as_deref()?,
                    p.status.as_ref()?,
                ))
            })
            .collect();
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "proxy_condition",
            "1 while the AzureOpenAIProxy's status condition is True, else 0 (the operator's checks; Ready among them)",
            None,
            gauge.metric_type(),
        )?;
        for (proxy_namespace, proxy, status) in &statuses {
            for condition in &status.conditions {
                let labels = ConditionLabels {
                    proxy_namespace: proxy_namespace.to_string(),
                    proxy: proxy.to_string(),
                    condition: condition.type_.clone(),
                };
                ConstGauge::new(i64::from(condition.status == "True"))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "proxy_certificate_expiry_timestamp_seconds",
            "When the AzureOpenAIProxy's client certificate expires (Unix time)",
            None,
            gauge.metric_type(),
        )?;
        for (proxy_namespace, proxy, status) in &statuses {
            let not_after = status
                .certificate_not_after
                .as_deref()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
            if let Some(not_after) = not_after {
                let labels = ProxyLabels {
                    proxy_namespace: proxy_namespace.to_string(),
                    proxy: proxy.to_string(),
                };
                ConstGauge::new(not_after.as_second()).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "proxy_pods",
            "Pods injected with the AzureOpenAIProxy: all of them (injected) and those on its current configuration (current)",
            None,
            gauge.metric_type(),
        )?;
        for (proxy_namespace, proxy, status) in &statuses {
            for (state, count) in [
                ("injected", status.injected_pods),
                ("current", status.current_pods),
            ] {
                let labels = PodLabels {
                    proxy_namespace: proxy_namespace.to_string(),
                    proxy: proxy.to_string(),
                    state,
                };
                ConstGauge::new(i64::from(count.unwrap_or(0)))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aoai_operator");
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let reconciles = Counter::default();
        registry.register(
            "reconciles",
            "AzureOpenAIProxy reconciliations started",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by reason (the controller's Error variants)",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took",
            reconcile_duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease and runs the controller",
            leader.clone(),
        );
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admissions",
            "Admission requests by result (injected, skipped, denied, invalid) and reason",
            admissions.clone(),
        );
        let admission_duration =
            Histogram::new([0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05]);
        registry.register(
            "admission_duration_seconds",
            "Time to answer one admission request, from body read to response",
            admission_duration.clone(),
        );
        let fleet = Arc::new(Fleet {
            proxies: OnceLock::new(),
            leader: leader.clone(),
        });
        registry.register_collector(Box::new(fleet.clone()));
        Self {
            fleet,
            admissions,
            admission_duration,
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            leader,
        }
    }

    /// Exports the status of the AzureOpenAIProxies in `proxies` (while leading).
    pub fn export_fleet(&self, proxies: Store<AzureOpenAIProxy>) {
        let _ = self.fleet.proxies.set(proxies);
    }

    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    pub fn reconcile_failed(&self, reason: &'static str) {
        self.reconcile_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn admitted(&self, result: &'static str, reason: &'static str, took: Duration) {
        self.admissions
            .get_or_create(&AdmissionLabels { result, reason })
            .inc();
        self.admission_duration.observe(took.as_secs_f64());
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::{reflector, watcher};

    use super::*;

    #[test]
    fn the_leader_exports_each_azure_openai_proxys_status() {
        let proxy: AzureOpenAIProxy = serde_json::from_value(serde_json::json!({
            "apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
            "metadata": {"name": "openai", "namespace": "team-a"},
            "spec": {"endpoint": "https://r.openai.azure.com", "credential": {"managedIdentity": {}}},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "R", "message": "m", "lastTransitionTime": "2026-12-06T00:00:00Z"},
                    {"type": "CertificateExpiring", "status": "True", "reason": "R", "message": "m", "lastTransitionTime": "2026-12-06T00:00:00Z"},
                ],
                "certificateNotAfter": "2027-01-01T00:00:00Z",
                "injectedPods": 3, "currentPods": 2,
            },
        }))
        .unwrap();
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(proxy));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let metrics = Metrics::new();
        metrics.export_fleet(store);
        let labels = "proxy_namespace=\"team-a\",proxy=\"openai\"";
        let series = [
            format!("aoai_operator_proxy_condition{{{labels},condition=\"Ready\"}} 0"),
            format!(
                "aoai_operator_proxy_condition{{{labels},condition=\"CertificateExpiring\"}} 1"
            ),
            format!(
                "aoai_operator_proxy_certificate_expiry_timestamp_seconds{{{labels}}} 1798761600"
            ),
            format!("aoai_operator_proxy_pods{{{labels},state=\"injected\"}} 3"),
            format!("aoai_operator_proxy_pods{{{labels},state=\"current\"}} 2"),
        ];
        let text = metrics.encode();
        assert!(!text.contains("aoai_operator_proxy_condition{"), "{text}");
        metrics.leader.set(1);
        let text = metrics.encode();
        for line in &series {
            assert!(text.contains(line.as_str()), "{line} not in\n{text}");
        }
    }
}
