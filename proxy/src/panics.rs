//! A bug confined to the request that met it. The release build unwinds (see the README's
//! "Reliability"): a panic while answering a request becomes that request's 500, a panic while a
//! body streams ends that connection, and every other request and stream of the pod goes on.
//! Each panic is logged once, without its payload's secrets (our messages carry none), and counted
//! in `aoai_proxy_panics_total`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{
    LazyLock, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

use futures_util::FutureExt;
use http::Response;
use prometheus_client::metrics::counter::Counter;

use crate::error::ProxyError;

/// Panics since start, process-wide (the hook has no other way to reach the metrics).
pub(crate) static PANICS: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Replaces the default panic message on stderr with one log line (JSON too when the logs are
/// JSON) and counts the panic. Idempotent.
pub fn install_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            PANICS.inc();
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::error!(
                location,
                "internal error (a bug): {message}; only the request or connection it happened in is affected"
            );
        }));
    });
}

/// The response `handling` gives, or a JSON 500 when it panics.
pub(crate) async fn contain<B: From<String>>(
    handling: impl Future<Output = Response<B>>,
) -> Response<B> {
    AssertUnwindSafe(handling)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| ProxyError::Internal.into_response())
}

/// The data behind a mutex, even after a panic while it was held: every critical section of the
/// proxy leaves its data consistent at each step, so the data stays usable and one bug does not
/// become a panic for every later request.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_while_answering_is_that_request_s_500() {
        let answer: Response<String> = contain(async { panic!("a bug") }).await;
        assert_eq!(answer.status(), 500);
        let body: serde_json::Value = serde_json::from_str(answer.body()).unwrap();
        assert_eq!(body["error"]["code"], "internal_error");
        let fine: Response<String> = contain(async { Response::new("ok".to_string()) }).await;
        assert_eq!(fine.status(), 200);
    }

    #[test]
    fn a_lock_held_during_a_panic_stays_usable() {
        let mutex = Mutex::new(1);
        let _ = std::panic::catch_unwind(|| {
            let _guard = mutex.lock().unwrap();
            panic!("while holding the lock");
        });
        assert!(mutex.is_poisoned());
        *lock(&mutex) += 1;
        assert_eq!(*lock(&mutex), 2);
    }
}
