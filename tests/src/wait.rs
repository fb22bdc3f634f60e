//! Polling for what a control plane does eventually.

use std::future::Future;
use std::time::{Duration, Instant};

/// Calls `check` every 200 ms until it returns `Ok`, and returns that; fails after `within` with
/// `what` and the last `Err` (the state seen, to say how far it got).
pub async fn until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
