//! The backends at run time: which ones a request may go to and in what order, their cool-downs
//! after a 429 (for as long as Azure asks) and their ejection after repeated faults.
//!
//! A 429 cools down the deployment named in the request path on that backend, or the whole
//! backend when the path names none (the v1 API carries the deployment in the body). A fault
//! counts against the backend; `eject_after` in a row eject it for `eject_for`, after which its
//! first fault ejects it again (a circuit breaker's half-open state).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use http::uri::PathAndQuery;
use http::{HeaderMap, Uri};

use crate::body::RequestBody;
use crate::config::{self, Failover, Upstream};
use crate::metrics::{BackendMeters, DeploymentMeters, Metrics};
use crate::upstream::UpstreamClient;

/// The wait after a 429 that names none (Azure always does).
pub const DEFAULT_THROTTLE: Duration = Duration::from_secs(1);

/// One backend: its client, its settings, its health and its meters.
pub struct Backend {
    pub upstream: Upstream,
    pub client: UpstreamClient<RequestBody>,
    /// `host[:port]`, the `backend` label of its metrics and the name in logs.
    pub label: Arc<str>,
    priority: u32,
    weight: u32,
    deployments: BTreeMap<String, String>,
    health: Mutex<Health>,
    pub meters: BackendMeters,
    /// Token-usage meters by deployment, resolved once each.
    usage: RwLock<HashMap<String, Arc<DeploymentMeters>>>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Health {
    /// The whole backend is throttled until then.
    throttled_until: Option<Instant>,
    /// Deployments throttled on this backend, until when.
    deployments: HashMap<String, Instant>,
    consecutive_faults: u32,
    ejected_until: Option<Instant>,
    /// Back from an ejection: the first fault ejects again.
    probation: bool,
}

impl Health {
    /// How long `deployment` (or the whole backend) stays throttled, if it is.
    fn throttled(&self) -> bool {
        self.throttled_until.is_some() || !self.deployments.is_empty()
    }

    fn throttled_for(&mut self, deployment: Option<&str>, now: Instant) -> Option<Duration> {
        let backend = self.throttled_until.filter(|until| *until > now);
        if backend.is_none() {
            self.throttled_until = None;
        }
        let deployment = deployment
            .and_then(|name| self.deployments.get(name))
            .copied()
            .filter(|until| *until > now);
        backend.max(deployment).map(|until| until - now)
    }

    fn ejected(&mut self, now: Instant) -> bool {
        match self.ejected_until {
            Some(until) if until > now => true,
            Some(_) => {
                self.ejected_until = None;
                self.probation = true;
                false
            }
            None => false,
        }
    }
}

impl Backend {
    pub fn new(
        spec: &config::Backend,
        client: UpstreamClient<RequestBody>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let label: Arc<str> = spec.upstream.authority.as_str().into();
        Self {
            meters: metrics.backend(&label),
            upstream: spec.upstream.clone(),
            client,
            label,
            priority: spec.priority,
            weight: spec.weight,
            deployments: spec.deployments.clone(),
            health: Mutex::default(),
            usage: RwLock::default(),
            metrics,
        }
    }

    /// The upstream path and query for the caller's target, with the deployment renamed where
    /// this backend calls it otherwise.
    pub fn target(
        &self,
        target: &Uri,
        deployment: Option<&str>,
    ) -> Result<PathAndQuery, http::uri::InvalidUri> {
        if let Some(app_name) = deployment
            && let Some(ours) = self.deployments.get(app_name)
        {
            let text = target.path_and_query().map_or("/", PathAndQuery::as_str);
            let renamed = rename_deployment(text, app_name, ours);
            return self.upstream.path_for(&Uri::try_from(renamed)?);
        }
        self.upstream.path_for(target)
    }

    /// This backend's name for the deployment the caller names.
    pub fn deployment_name<'a>(&'a self, app_name: &'a str) -> &'a str {
        self.deployments
            .get(app_name)
            .map_or(app_name, String::as_str)
    }

    /// How long the deployment (or the backend) is still throttled, if it is.
    pub fn throttled_for(&self, deployment: Option<&str>) -> Option<Duration> {
        let mut health = crate::panics::lock(&self.health);
        // The clock is read only when something is throttled: the usual case costs a lock.
        if !health.throttled() {
            return None;
        }
        health.throttled_for(deployment, Instant::now())
    }

    /// A 429: out of rotation for `wait`.
    pub fn throttled(&self, deployment: Option<&str>, wait: Duration) {
        self.meters.throttled.inc();
        self.meters.throttle_wait.observe(wait.as_secs_f64());
        let now = Instant::now();
        let until = later(now, wait);
        let mut health = crate::panics::lock(&self.health);
        // Waits that are over go: request paths name deployments, the map must not grow.
        health.deployments.retain(|_, until| *until > now);
        match deployment {
            Some(name) => {
                let entry = health.deployments.entry(name.to_string()).or_insert(until);
                *entry = (*entry).max(until);
            }
            None => health.throttled_until = health.throttled_until.max(Some(until)),
        }
        tracing::info!(
            backend = %self.label,
            deployment = deployment.unwrap_or(""),
            wait_ms = wait.as_millis() as u64,
            "backend throttled the request; out of rotation for the wait it asked"
        );
    }

    /// A fault; ejects the backend after `failover.eject_after` in a row.
    pub fn fault(&self, failover: &Failover) {
        let now = Instant::now();
        let mut health = crate::panics::lock(&self.health);
        health.consecutive_faults += 1;
        if health.probation || health.consecutive_faults >= failover.eject_after {
            health.ejected_until = Some(later(now, failover.eject_for));
            health.consecutive_faults = 0;
            health.probation = false;
            drop(health);
            self.meters.ejections.inc();
            tracing::warn!(
                backend = %self.label,
                "backend ejected for {} after repeated faults",
                crate::units::format_duration(failover.eject_for)
            );
        }
    }

    /// An answer that is not a fault.
    pub fn answered(&self) {
        let mut health = crate::panics::lock(&self.health);
        health.consecutive_faults = 0;
        health.probation = false;
    }

    /// The token-usage meters of one of this backend's deployments ("" when the path names none).
    pub fn usage_meters(&self, deployment: &str) -> Arc<DeploymentMeters> {
        if let Some(meters) = crate::panics::read(&self.usage).get(deployment) {
            return meters.clone();
        }
        let meters = Arc::new(self.metrics.deployment(&self.label, deployment));
        crate::panics::write(&self.usage)
            .entry(deployment.to_string())
            .or_insert(meters)
            .clone()
    }
}

/// Every backend, lowest priority first (in the listed order within a priority).
pub struct Backends {
    list: Vec<Backend>,
    pub failover: Failover,
}

/// Where a request may go.
pub enum Plan {
    /// The backends to try, in order; each at most once.
    Try(Vec<usize>),
    /// Every backend is throttled for this request: the shortest wait.
    Throttled(Duration),
}

impl Backends {
    pub fn new(mut list: Vec<Backend>, failover: Failover) -> Self {
        assert!(
            !list.is_empty(),
            "the configuration has at least one backend"
        );
        list.sort_by_key(|b| b.priority);
        Self { list, failover }
    }

    /// The one backend when there is only one: the path without failover.
    pub fn single(&self) -> Option<&Backend> {
        match self.list.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }

    pub fn get(&self, index: usize) -> &Backend {
        &self.list[index]
    }

    /// The order to try the backends in for a request naming `deployment`: by priority, by
    /// weighted chance within a priority, throttled ones left out, ejected ones last.
    pub fn plan(&self, deployment: Option<&str>) -> Plan {
        let now = Instant::now();
        let mut order = Vec::with_capacity(self.list.len());
        let mut ejected = Vec::new();
        let mut shortest: Option<Duration> = None;
        let mut start = 0;
        while start < self.list.len() {
            let priority = self.list[start].priority;
            let end = self.list[start..]
                .iter()
                .position(|b| b.priority != priority)
                .map_or(self.list.len(), |n| start + n);
            let mut group = Vec::new();
            for index in start..end {
                let mut health = crate::panics::lock(&self.list[index].health);
                if let Some(wait) = health.throttled_for(deployment, now) {
                    shortest = Some(shortest.map_or(wait, |s| s.min(wait)));
                } else if health.ejected(now) {
                    ejected.push(index);
                } else {
                    group.push(index);
                }
            }
            self.weighted_order(&mut group, &mut order);
            start = end;
        }
        order.extend(ejected);
        match shortest {
            Some(wait) if order.is_empty() => Plan::Throttled(wait),
            _ => Plan::Try(order),
        }
    }

    /// Moves `group` into `order`, each next pick drawn with a chance proportional to its weight.
    fn weighted_order(&self, group: &mut Vec<usize>, order: &mut Vec<usize>) {
        while !group.is_empty() {
            let total: u32 = group.iter().map(|&i| self.list[i].weight).sum();
            let mut draw = fastrand::u32(0..total);
            let pick = group
                .iter()
                .position(|&i| {
                    let weight = self.list[i].weight;
                    if draw < weight {
                        true
                    } else {
                        draw -= weight;
                        false
                    }
                })
                .expect("the draw falls within the total");
            order.push(group.remove(pick));
        }
    }

    /// The shortest time until one of the backends takes `deployment` again; `None` when one
    /// takes it now.
    pub fn shortest_wait(&self, deployment: Option<&str>) -> Option<Duration> {
        let now = Instant::now();
        let mut shortest = None;
        for backend in &self.list {
            let wait = crate::panics::lock(&backend.health).throttled_for(deployment, now)?;
            shortest = Some(shortest.map_or(wait, |s: Duration| s.min(wait)));
        }
        shortest
    }
}

/// `now + wait`, or a time beyond any wait when the clock cannot hold that sum.
fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// The deployment a request path names: the segment after `/deployments/`.
pub fn deployment_in(path: &str) -> Option<&str> {
    // Azure OpenAI's own paths first (read three times per request); then from slash to slash
    // (memchr): a substring search would set up a searcher on each call.
    let rest = match path.strip_prefix("/openai/deployments/") {
        Some(rest) => rest,
        None => {
            let bytes = path.as_bytes();
            let at = memchr::memchr_iter(b'/', bytes)
                .find(|&at| bytes[at + 1..].starts_with(b"deployments/"))?;
            &path[at + "/deployments/".len()..]
        }
    };
    let name = &rest[..memchr::memchr(b'/', rest.as_bytes()).unwrap_or(rest.len())];
    (!name.is_empty()).then_some(name)
}

/// `path_and_query` with its deployment segment `from` replaced by `to`.
fn rename_deployment(path_and_query: &str, from: &str, to: &str) -> String {
    let marker = format!("/deployments/{from}");
    match path_and_query.find(&marker) {
        Some(at) => {
            let start = at + "/deployments/".len();
            format!(
                "{}{to}{}",
                &path_and_query[..start],
                &path_and_query[start + from.len()..]
            )
        }
        None => path_and_query.to_string(),
    }
}

/// How long a 429 asks to wait, at most `max`: `retry-after-ms`, else `Retry-After` (seconds or
/// an HTTP date), else the `x-ratelimit-reset-*` header of the exhausted limit (the longer one when
/// neither `x-ratelimit-remaining-*` says which). A value that is not a finite, non-negative
/// number is ignored as if absent; a longer one is cut to `max`: the header comes from the
/// network (a gateway in front of Azure, or a bug in either), the cool-down must not.
pub fn throttle_wait(headers: &HeaderMap, now: SystemTime, max: Duration) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let seconds = |text: &str| text.parse::<f64>().ok().and_then(seconds_to_duration);
    if let Some(ms) = text("retry-after-ms").and_then(|t| t.parse::<f64>().ok())
        && let Some(wait) = seconds_to_duration(ms / 1000.0)
    {
        return Some(wait.min(max));
    }
    if let Some(value) = text("retry-after") {
        if let Some(wait) = seconds(value) {
            return Some(wait.min(max));
        }
        if let Ok(date) = httpdate(value) {
            return Some(date.duration_since(now).unwrap_or(Duration::ZERO).min(max));
        }
    }
    let exhausted = |limit: &str| {
        text(&format!("x-ratelimit-remaining-{limit}"))
            .and_then(|t| t.parse::<f64>().ok())
            .is_some_and(|left| left <= 0.0)
    };
    let reset = |limit: &str| text(&format!("x-ratelimit-reset-{limit}")).and_then(reset_duration);
    let (tokens, requests) = (reset("tokens"), reset("requests"));
    let wait = match (exhausted("tokens"), exhausted("requests")) {
        (true, false) if tokens.is_some() => tokens,
        (false, true) if requests.is_some() => requests,
        _ => tokens.max(requests),
    };
    wait.map(|wait| wait.min(max))
}

/// Seconds as a duration; `None` for NaN, infinities and negative numbers, the longest duration
/// for numbers beyond it.
fn seconds_to_duration(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
}

/// A reset header: seconds (`"12"`, `"0.5"`) or a duration (`"1s"`, `"6m0s"`, `"20ms"`).
fn reset_duration(text: &str) -> Option<Duration> {
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds_to_duration(seconds);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => number / 1000.0,
            "s" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            _ => return None,
        };
        total = total.saturating_add(seconds_to_duration(seconds)?);
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form `Retry-After` dates take.
fn httpdate(text: &str) -> Result<SystemTime, ()> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let date = time::PrimitiveDateTime::parse(text, &format).map_err(|_| ())?;
    Ok(date.assume_utc().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn every_form_of_the_wait_is_read() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let wait = |pairs: &[(&str, &str)]| throttle_wait(&headers(pairs), now, Duration::MAX);
        let ms = Duration::from_millis;
        assert_eq!(
            wait(&[("retry-after-ms", "1500"), ("retry-after", "9")]),
            Some(ms(1500))
        );
        assert_eq!(
            wait(&[("retry-after-ms", "12.5")]),
            Some(Duration::from_micros(12_500))
        );
        assert_eq!(wait(&[("retry-after", "7")]), Some(ms(7000)));
        assert_eq!(
            wait(&[("retry-after", "Sun, 06 Nov 1994 08:49:47 GMT")]),
            Some(ms(10_000))
        );
        assert_eq!(wait(&[("x-ratelimit-reset-tokens", "3")]), Some(ms(3000)));
        assert_eq!(
            wait(&[("x-ratelimit-reset-requests", "6m0s")]),
            Some(ms(360_000))
        );
        assert_eq!(
            wait(&[("x-ratelimit-reset-requests", "20ms")]),
            Some(ms(20))
        );
        assert_eq!(
            wait(&[("x-ratelimit-reset-tokens", "1m30.5s")]),
            Some(ms(90_500))
        );
        // The limit that is exhausted decides; without a hint, the longer wait.
        let both = [
            ("x-ratelimit-reset-tokens", "4"),
            ("x-ratelimit-reset-requests", "1"),
        ];
        assert_eq!(wait(&both), Some(ms(4000)));
        let mut requests_out = both.to_vec();
        requests_out.push(("x-ratelimit-remaining-requests", "0"));
        requests_out.push(("x-ratelimit-remaining-tokens", "500"));
        assert_eq!(wait(&requests_out), Some(ms(1000)));
        assert_eq!(wait(&[]), None);
        assert_eq!(
            wait(&[("retry-after", "soon"), ("retry-after-ms", "-3")]),
            None
        );
        assert_eq!(wait(&[("x-ratelimit-reset-tokens", "1x")]), None);
    }

    /// What a backend, or a gateway in front of it, may send: never a panic, never a wait
    /// beyond the maximum, nonsense ignored.
    #[test]
    fn absurd_waits_are_ignored_or_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let max = Duration::from_secs(60);
        let wait = |pairs: &[(&str, &str)]| throttle_wait(&headers(pairs), now, max);
        for huge in [
            &[("retry-after-ms", "1e30")][..],
            &[("retry-after", "99999999999999999999")],
            &[("retry-after", "1e308")],
            &[("x-ratelimit-reset-tokens", "1e300")],
            &[("x-ratelimit-reset-requests", "99999999999h")],
            &[(
                "x-ratelimit-reset-requests",
                "99999999999999999999h99999999999999999999h",
            )],
            &[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")],
        ] {
            assert_eq!(wait(huge), Some(max), "{huge:?}");
        }
        for nonsense in [
            &[("retry-after-ms", "NaN")][..],
            &[("retry-after-ms", "inf")],
            &[("retry-after-ms", "-inf")],
            &[("retry-after", "-5")],
            &[("retry-after", "nan")],
            &[("x-ratelimit-reset-tokens", "-1")],
            &[("x-ratelimit-reset-tokens", "1e400")],
            &[("x-ratelimit-reset-tokens", "NaNs")],
            &[("x-ratelimit-reset-tokens", "-1s")],
        ] {
            assert_eq!(wait(nonsense), None, "{nonsense:?}");
        }
        // Nonsense in the first header leaves the next one to decide.
        assert_eq!(
            wait(&[("retry-after-ms", "NaN"), ("retry-after", "3")]),
            Some(Duration::from_secs(3))
        );
        // A date in the past is no wait.
        assert_eq!(
            wait(&[("retry-after", "Thu, 01 Jan 1970 00:00:00 GMT")]),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn a_wait_beyond_the_clock_is_a_time_beyond_any_wait() {
        let now = Instant::now();
        let until = later(now, Duration::MAX);
        assert!(until > later(now, Duration::from_secs(365 * 86_400)));
        let mut health = Health {
            throttled_until: Some(until),
            ..Health::default()
        };
        assert!(health.throttled_for(None, now).is_some());
    }

    #[test]
    fn both_retry_headers_are_written() {
        use crate::error::set_retry_after;
        let mut map = HeaderMap::new();
        set_retry_after(&mut map, Duration::from_millis(1200));
        assert_eq!(map["retry-after"], "2");
        assert_eq!(map["retry-after-ms"], "1200");
        set_retry_after(&mut map, Duration::from_micros(300));
        assert_eq!(
            (
                map["retry-after"].to_str().unwrap(),
                map["retry-after-ms"].to_str().unwrap()
            ),
            ("1", "1")
        );
    }

    #[test]
    fn the_deployment_is_found_and_renamed() {
        assert_eq!(
            deployment_in("/openai/deployments/gpt-4o/chat/completions"),
            Some("gpt-4o")
        );
        assert_eq!(deployment_in("/deployments/x"), Some("x"));
        assert_eq!(deployment_in("/openai/v1/chat/completions"), None);
        assert_eq!(deployment_in("/openai/deployments/"), None);
        assert_eq!(deployment_in("/openai/deployments"), None);
        assert_eq!(deployment_in("deployments/x"), None);
        assert_eq!(deployment_in("/openai/deployments//chat"), None);
        assert_eq!(
            deployment_in("/x/mydeployments/a/deployments/b/c"),
            Some("b")
        );
        assert_eq!(
            rename_deployment(
                "/openai/deployments/gpt-4o/chat/completions?api-version=1",
                "gpt-4o",
                "gpt-4o-ptu"
            ),
            "/openai/deployments/gpt-4o-ptu/chat/completions?api-version=1"
        );
    }
}
