//! Supervision: a task that ends without being asked to (a panic in a driver, a bug) is never
//! mistaken for a live one. The reason is recorded where its readers look, and logged.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs `task` (`what`, e.g. "poller task") on `tracker`. If it ends (or panics) while `cancel`
/// was not cancelled, the reason goes into `stopped` after `report` has been called with it.
pub fn spawn(
    what: &'static str,
    tracker: &TaskTracker,
    task: impl Future<Output = ()> + Send + 'static,
    cancel: CancellationToken,
    stopped: Arc<OnceLock<String>>,
    report: impl FnOnce(&str) + Send + 'static,
) {
    tracker.spawn(async move {
        let ended = AssertUnwindSafe(task).catch_unwind().await;
        if cancel.is_cancelled() {
            return; // evicted or shutting down: asked to stop
        }
        let reason = match ended {
            Ok(()) => format!("the {what} ended"),
            Err(panic) => format!("the {what} panicked: {}", panic_message(&*panic)),
        };
        report(&reason);
        let _ = stopped.set(reason);
    });
}

/// The text of a panic payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".into())
}
