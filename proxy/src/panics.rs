//! A bug confined to the request that met it. The release build unwinds (see the README's
//! "Reliability"): a panic while answering a request becomes that request's 500, a panic while a
//! body streams ends that connection, and every other request and stream of the pod goes on.
//! Each panic is logged once, without its payload's secrets (our messages carry none), and counted
//! in `aoai_proxy_panics_total`.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{
    LazyLock, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

use futures_util::FutureExt;
use futures_util::future::Either;
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

/// The response of the future `handle` makes, or a JSON 500 when making it or running it panics.
/// A plain combinator, no `async` block: hyper moves this future several times per request, and
/// each `async` layer would hold (and copy) one more copy of the one inside.
pub(crate) fn contain<B, F>(
    handle: impl FnOnce() -> F,
) -> impl Future<Output = Result<Response<B>, Infallible>>
where
    B: From<String>,
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    let internal = || Ok(ProxyError::Internal.into_response());
    match std::panic::catch_unwind(AssertUnwindSafe(handle)) {
        Ok(handling) => Either::Left(
            AssertUnwindSafe(handling)
                .catch_unwind()
                .map(move |answer| answer.unwrap_or_else(|_| internal())),
        ),
        Err(_) => Either::Right(std::future::ready(internal())),
    }
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
        let Ok(answer) = contain(|| async { panic!("a bug") }).await;
        let answer: Response<String> = answer;
        assert_eq!(answer.status(), 500);
        let body: serde_json::Value = serde_json::from_str(answer.body()).unwrap();
        assert_eq!(body["error"]["code"], "internal_error");
        let fine = || async { Ok(Response::new("ok".to_string())) };
        let Ok(fine) = contain(fine).await;
        assert_eq!(fine.status(), 200);
    }

    #[tokio::test]
    async fn a_panic_before_the_answer_s_future_is_made_is_that_request_s_500_too() {
        let making = || -> std::future::Ready<Result<Response<String>, Infallible>> {
            panic!("a bug while checking the request")
        };
        let Ok(answer) = contain(making).await;
        assert_eq!(answer.status(), 500);
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
