//! The one way files are watched, by both programs: mounted Secrets and ConfigMaps (inbound keys,
//! the trusted CA bundle, the webhook's certificate) change in place when the kubelet updates
//! them. Polling what is read, rather than inotify, follows the kubelet's symlink swaps and costs a
//! few small reads a second.

use std::time::Duration;

/// Every `every`, calls `read`; when what it reads differs from what was applied last, calls
/// `apply` with it. An error (from either) is logged once, with `what`, until something succeeds
/// again; what was applied before stays in force meanwhile. `applied` is what is in force at the
/// start. Runs until its task is dropped.
pub async fn watch<T: PartialEq>(
    what: &str,
    every: Duration,
    mut applied: Option<T>,
    mut read: impl FnMut() -> Result<T, String>,
    mut apply: impl FnMut(&T) -> Result<(), String>,
) {
    let mut failed = None;
    loop {
        tokio::time::sleep(every).await;
        let result = read().and_then(|content| {
            if applied.as_ref() != Some(&content) {
                apply(&content)?;
                applied = Some(content);
            }
            Ok(())
        });
        match result {
            Ok(()) => failed = None,
            Err(e) if failed.as_ref() != Some(&e) => {
                tracing::warn!("{what}: {e}; keeping what was read before");
                failed = Some(e);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn applies_changes_once_and_keeps_the_last_good_one() {
        let reads = RefCell::new(vec![
            Ok("b"),
            Ok("b"),
            Err("gone".to_string()),
            Ok("bad"),
            Ok("c"),
        ]);
        let applied = RefCell::new(Vec::new());
        let watching = watch(
            "test",
            Duration::from_millis(1),
            Some("a"),
            || {
                let mut reads = reads.borrow_mut();
                if reads.is_empty() {
                    Ok("c")
                } else {
                    reads.remove(0)
                }
            },
            |content| {
                if *content == "bad" {
                    return Err("does not parse".into());
                }
                applied.borrow_mut().push(*content);
                Ok(())
            },
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), watching).await;
        assert_eq!(*applied.borrow(), ["b", "c"]);
    }
}
