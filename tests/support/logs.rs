//! The log lines a test's own thread writes. One global subscriber (installed by the first
//! capture, at DEBUG) routes each line to the capture of the thread that writes it: a scoped
//! subscriber per test would race with the other tests' threads over tracing's cached
//! callsite interest, and only one global subscriber can exist in a process. A test whose
//! tasks run on its own thread (a current-thread runtime) sees all their lines.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

/// What the capturing thread logged since [`Lines::capture`].
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: RefCell<Option<Lines>> = const { RefCell::new(None) };
}

struct ToCapture;

impl std::io::Write for ToCapture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(lines) = &*c.borrow() {
                lines.0.lock().unwrap().extend_from_slice(b);
            }
        });
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    /// Starts capturing this thread's lines (replacing an earlier capture of the thread).
    pub fn capture() -> Lines {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| {
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(|| ToCapture)
                .init();
        });
        let lines = Lines::default();
        CAPTURE.with(|c| *c.borrow_mut() = Some(lines.clone()));
        lines
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
