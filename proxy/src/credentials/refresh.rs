//! Keeps a fresh token in the [`TokenSource`]: acquire, refresh well before expiry, retry with
//! capped exponential backoff and jitter, renew early when the upstream rejects the token.
//!
//! The schedule is computed by pure functions ([`refresh_after`], [`backoff`]) tested directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{AcquireError, Credential, IdentityHttp};
use crate::metrics::Metrics;
use crate::token::{Token, TokenSource};
use crate::traces::{self, Tracing};

/// Refresh at least this long before expiry (when the lifetime allows).
const MIN_MARGIN: Duration = Duration::from_secs(300);
/// First retry delay after a failure, doubled per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An upstream 401 triggers an early refresh at most this often (or every tenth of the token's
/// lifetime, for short-lived tokens).
pub const EARLY_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(30);

/// How long after acquisition to refresh a token of `lifetime`: at `refresh_in` when the endpoint
/// gives it, else leaving a margin of the larger of a third of the lifetime and
/// min(5 minutes, half the lifetime).
pub fn refresh_after(lifetime: Duration, refresh_in: Option<Duration>) -> Duration {
    if let Some(refresh_in) = refresh_in.filter(|r| *r < lifetime) {
        return refresh_in;
    }
    let margin = (lifetime / 3).max(MIN_MARGIN.min(lifetime / 2));
    lifetime - margin
}

/// Delay before retry number `attempt` (1-based): 1 s, 2 s, 4 s ... capped at 30 s.
pub fn backoff(attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    (FIRST_BACKOFF * 2u32.pow(exponent)).min(MAX_BACKOFF)
}

/// Spreads `delay` over its last 10 % (refreshes) so that many pods do not refresh in step.
fn jitter_down(delay: Duration, fraction: f64) -> Duration {
    delay.mul_f64(1.0 - fraction * fastrand::f64())
}

/// Runs forever: keeps `token` fresh using `credential`.
pub async fn run(
    credential: Arc<Credential>,
    http: IdentityHttp,
    token: Arc<TokenSource>,
    metrics: Arc<Metrics>,
    tracing: Option<Tracing>,
) {
    let kind = credential.kind();
    let mut failures: u32 = 0;
    loop {
        let span = tracing.as_ref().map(|t| t.acquisition_span(kind));
        let result = credential.acquire(&http).await.and_then(|acquired| {
            Token::bearer(&acquired.access_token, acquired.lifetime)
                .map(|t| (t, acquired))
                .map_err(|e| AcquireError::Malformed {
                    endpoint: "the identity endpoint".into(),
                    message: e.to_string(),
                })
        });
        if let Some(span) = span {
            let failure = result.as_ref().err().map(|e| (e.kind(), e.to_string()));
            traces::end_acquisition(span, failure);
        }
        match result {
            Ok((new_token, acquired)) => {
                let acquired_at = Instant::now();
                token.set(new_token);
                metrics.token_refresh(kind, true);
                let wait = jitter_down(refresh_after(acquired.lifetime, acquired.refresh_in), 0.1);
                if failures > 0 {
                    tracing::info!(
                        credential = kind,
                        after_failures = failures,
                        "identity endpoint answered again"
                    );
                }
                failures = 0;
                tracing::info!(
                    credential = kind,
                    expires_in_s = acquired.lifetime.as_secs(),
                    next_refresh_in_s = wait.as_secs(),
                    "access token acquired"
                );
                warn_if_certificate_expires_soon(&credential);
                let min_interval = EARLY_REFRESH_MIN_INTERVAL.min(acquired.lifetime / 10);
                wait_for_refresh(&token, acquired_at, wait, min_interval).await;
            }
            Err(error) => {
                failures += 1;
                metrics.token_refresh(kind, false);
                let delay = jitter_down(backoff(failures), 0.5);
                let still_valid = token.authorization().is_ok();
                tracing::warn!(
                    credential = kind,
                    attempt = failures,
                    retry_in_ms = delay.as_millis() as u64,
                    serving_with_cached_token = still_valid,
                    "token acquisition failed: {error}"
                );
                token.set_problem(error.to_string());
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Sleeps until the planned refresh, or until the upstream rejects the token (401) when the token
/// is older than `min_interval`.
async fn wait_for_refresh(
    token: &TokenSource,
    acquired_at: Instant,
    wait: Duration,
    min_interval: Duration,
) {
    let deadline = tokio::time::Instant::from_std(acquired_at + wait);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return,
            () = token.rejected() => {
                if acquired_at.elapsed() >= min_interval {
                    tracing::info!("the upstream rejected the access token (401); refreshing early");
                    return;
                }
            }
        }
    }
}

/// Certificates are renewed by people: warn every refresh during their last two weeks.
fn warn_if_certificate_expires_soon(credential: &Credential) {
    const WARN_WITHIN: i64 = 14 * 24 * 3600;
    if let Some(not_after) = credential.certificate_not_after() {
        let left = not_after - super::certificate::unix_now();
        if left < WARN_WITHIN {
            tracing::warn!(
                expires_in_days = left / 86400,
                "the client certificate expires soon; rotate it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn refresh_in_wins_when_given() {
        assert_eq!(refresh_after(secs(3599), Some(secs(1799))), secs(1799));
        // A refresh_in beyond the lifetime is ignored.
        assert_eq!(refresh_after(secs(600), Some(secs(900))), secs(300));
    }

    #[test]
    fn margin_scales_with_lifetime() {
        // One hour: a third (20 min) before expiry.
        assert_eq!(refresh_after(secs(3600), None), secs(2400));
        // 24 h (managed identity): 8 h before expiry.
        assert_eq!(refresh_after(secs(86400), None), secs(57600));
        // 10 minutes: 5 minutes before (the 5-minute floor beats a third).
        assert_eq!(refresh_after(secs(600), None), secs(300));
        // Very short tokens: half-way, never immediately.
        assert_eq!(refresh_after(secs(4), None), secs(2));
        assert!(refresh_after(Duration::from_millis(10), None) > Duration::ZERO);
    }

    #[test]
    fn refresh_always_happens_before_the_token_becomes_unusable() {
        for lifetime in [1u64, 4, 30, 299, 300, 301, 599, 3599, 86399] {
            let lifetime = secs(lifetime);
            let token_margin = (lifetime / 20).min(secs(30));
            assert!(
                refresh_after(lifetime, None) < lifetime - token_margin,
                "{lifetime:?}"
            );
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let delays: Vec<u64> = (1..=8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let d = jitter_down(secs(100), 0.1);
            assert!(d <= secs(100) && d >= secs(90));
        }
    }
}
