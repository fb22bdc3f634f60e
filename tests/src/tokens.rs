//! The tokens the mock identity endpoints issued, so that the mock upstream can tell whether a
//! request carried a token that was valid at that moment.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct TokenLedger {
    issued: Mutex<HashMap<String, (Instant, Instant)>>,
    counter: AtomicU64,
}

impl TokenLedger {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Issues a new token valid for `lifetime` from now.
    pub fn issue(&self, prefix: &str, lifetime: Duration) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("{prefix}-token-{n}-{:016x}", fastrand_u64());
        let now = Instant::now();
        self.issued
            .lock()
            .unwrap()
            .insert(token.clone(), (now, now + lifetime));
        token
    }

    /// True when `token` was issued here and has not expired at `at`.
    pub fn valid_at(&self, token: &str, at: Instant) -> bool {
        self.issued
            .lock()
            .unwrap()
            .get(token)
            .is_some_and(|(issued, expires)| *issued <= at && at < *expires)
    }

    /// How many tokens were issued.
    pub fn count(&self) -> u64 {
        self.counter.load(Ordering::SeqCst)
    }

    /// Every token issued (to check that none reached a log).
    pub fn tokens(&self) -> Vec<String> {
        self.issued.lock().unwrap().keys().cloned().collect()
    }

    /// Issue and expiry of `token`.
    pub fn lifetime_of(&self, token: &str) -> Option<(Instant, Instant)> {
        self.issued.lock().unwrap().get(token).copied()
    }
}

/// Random bits without a dependency: good enough to make tokens unguessable in a log search.
fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish()
}
