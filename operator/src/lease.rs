//! Leader election on a `coordination.k8s.io/v1` Lease, so that replicas run side by side and one
//! reconciles. Every replica serves the webhook; only the leader runs the controller.
//!
//! Writes use the Lease's resourceVersion (optimistic concurrency): two candidates racing for an
//! expired Lease cannot both win. A leader that cannot renew before its Lease expires gives up;
//! the operator then exits so that Kubernetes restarts it as a candidate, as controller-runtime
//! does.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::{Client, Error};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub duration: Duration,
    /// How often the leader renews and candidates retry.
    pub retry: Duration,
}

/// Whether `identity` may take the Lease at `now`: it holds it already, nobody does, or the
/// holder stopped renewing more than the lease duration ago.
pub fn can_take(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == identity => true,
        Some(_) => {
            let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
                return true;
            };
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15).max(1));
            now > renewed.0 + SignedDuration::from_secs(duration)
        }
    }
}

/// The Lease spec after `identity` takes or renews it at `now`.
pub fn taken(
    spec: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    duration: Duration,
) -> LeaseSpec {
    let previous = spec.cloned().unwrap_or_default();
    let same_holder = previous.holder_identity.as_deref() == Some(identity);
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(duration.as_secs().max(1) as i32),
        acquire_time: if same_holder {
            previous.acquire_time.clone()
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(
            previous.lease_transitions.unwrap_or(0)
                + i32::from(!same_holder && previous.holder_identity.is_some()),
        ),
        ..previous
    }
}

/// One attempt to take or renew the Lease. `Ok(true)` when this replica holds it now.
pub async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, Error> {
    let now = Timestamp::now();
    match api.get_opt(&config.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(taken(None, &config.identity, now, config.duration)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            if !can_take(lease.spec.as_ref(), &config.identity, now) {
                return Ok(false);
            }
            lease.spec = Some(taken(
                lease.spec.as_ref(),
                &config.identity,
                now,
                config.duration,
            ));
            // replace carries metadata.resourceVersion: a concurrent writer makes this a 409.
            match api
                .replace(&config.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

fn is_conflict(e: &Error) -> bool {
    matches!(e, Error::Api(status) if status.code == 409)
}

/// Waits until this replica holds the Lease.
pub async fn acquire(api: &Api<Lease>, config: &LeaseConfig) {
    let mut announced = false;
    loop {
        match try_acquire(api, config).await {
            Ok(true) => {
                tracing::info!(lease = %config.name, identity = %config.identity, "became leader");
                return;
            }
            Ok(false) if !announced => {
                tracing::info!(lease = %config.name, "another replica leads; standing by");
                announced = true;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(lease = %config.name, "cannot read or write the lease: {e}"),
        }
        tokio::time::sleep(config.retry).await;
    }
}

/// Renews the Lease until renewal fails for longer than the lease duration (or another replica
/// took it); returns then: leadership is lost.
pub async fn hold(api: &Api<Lease>, config: &LeaseConfig) {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(config.retry).await;
        match try_acquire(api, config).await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!(lease = %config.name, "another replica took the lease");
                return;
            }
            Err(e) => tracing::warn!(lease = %config.name, "cannot renew the lease: {e}"),
        }
        if last_renewed.elapsed() >= config.duration {
            tracing::error!(lease = %config.name, "could not renew the lease in time");
            return;
        }
    }
}

/// Gives the Lease up on shutdown so that a standby takes over without waiting for expiry.
pub async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!(lease = %config.name, "released the lease"),
        Err(e) => tracing::warn!(lease = %config.name, "cannot release the lease: {e}"),
    }
}

pub fn api(client: Client, config: &LeaseConfig) -> Api<Lease> {
    Api::namespaced(client, &config.namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            acquire_time: Some(MicroTime(at(renewed - 100))),
            lease_transitions: Some(2),
            ..Default::default()
        }
    }

    #[test]
    fn a_live_lease_of_another_replica_cannot_be_taken() {
        let spec = held_by("a", 1000);
        assert!(!can_take(Some(&spec), "b", at(1010)));
        assert!(can_take(Some(&spec), "a", at(1010)));
        assert!(can_take(Some(&spec), "b", at(1016)));
        assert!(can_take(None, "b", at(0)));
        let released = LeaseSpec {
            holder_identity: None,
            ..spec
        };
        assert!(can_take(Some(&released), "b", at(1001)));
    }

    #[test]
    fn taking_counts_transitions_and_renewing_keeps_the_acquire_time() {
        let spec = held_by("a", 1000);
        let renewed = taken(Some(&spec), "a", at(1005), Duration::from_secs(15));
        assert_eq!(renewed.acquire_time, spec.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(at(1005))));
        assert_eq!(renewed.lease_transitions, Some(2));
        let stolen = taken(Some(&spec), "b", at(1020), Duration::from_secs(15));
        assert_eq!(stolen.holder_identity.as_deref(), Some("b"));
        assert_eq!(stolen.acquire_time, Some(MicroTime(at(1020))));
        assert_eq!(stolen.lease_transitions, Some(3));
        let fresh = taken(None, "a", at(5), Duration::from_secs(15));
        assert_eq!(fresh.lease_transitions, Some(0));
        assert_eq!(fresh.lease_duration_seconds, Some(15));
    }
}
