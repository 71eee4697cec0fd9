//! What a database implements for database-driven wake-ups: [`Listener`] opens one dedicated
//! session (never a pooled one) and [`ListenSession`] listens, unlistens, pings and reports its
//! loss. Everything else — one session per connection for the union of the channels live
//! pollers use, reconnects, pings, re-arming, supervision — is the engine's (`engine::wake`).
//!
//! Every listener follows one rule, [`PollsFirst`]: the listening session is one more session
//! beside the pool, so it connects only once the pool holds a session, and gives its slot up
//! when the server refuses the pool a session while the pool holds none. Its mirror: when the
//! server refuses the listener while the pool holds two sessions or more (a burst took every
//! slot first), the pool retires a slot and closes an idle session, so the listener's next
//! attempt has it and the pool polls on the rest. PostgreSQL's and Oracle's listeners share it
//! here rather than each keeping a copy.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

use super::{Slots, SourceError};

/// Called with the channel name of every notification a session receives.
pub type Deliver = Arc<dyn Fn(&str) + Send + Sync>;

/// How a database opens its dedicated notification session.
pub trait Listener: Send + Sync + 'static {
    /// Connects a new session; it calls `deliver` for every notification it receives.
    fn connect(
        &self,
        deliver: Deliver,
    ) -> BoxFuture<'_, Result<Box<dyn ListenSession>, SourceError>>;
}

/// One dedicated notification session.
pub trait ListenSession: Send + 'static {
    fn listen<'a>(&'a mut self, channel: &'a str) -> BoxFuture<'a, Result<(), SourceError>>;
    fn unlisten<'a>(&'a mut self, channel: &'a str) -> BoxFuture<'a, Result<(), SourceError>>;
    /// A round-trip that proves the session is alive.
    fn ping(&mut self) -> BoxFuture<'_, Result<(), SourceError>>;
    /// Resolves, with the reason, once the session is gone. Cancel-safe.
    fn lost(&mut self) -> BoxFuture<'_, String>;
}

/// How long a connect waits for the pool to hold its first session (inside the hub's own
/// connect timeout); past it, the connect fails and the hub retries with its backoff.
pub const POOL_FIRST_WAIT: Duration = Duration::from_secs(5);
/// How often that wait looks at the pool.
const POOL_CHECK_EVERY: Duration = Duration::from_millis(20);

/// Why a listening session ended when the pool needed its slot (`lost()`'s reason).
pub const GAVE_SLOT_UP: &str = "the server refused the pool a session while it held none: the listening session gave its slot up (polls come first)";

/// "Polls come first" for one connection's listener: with a connection limit below
/// `pool_size + 1` the slots go to polling, and wake-ups are what degrades.
pub struct PollsFirst {
    /// The pool's gate, which says when the pool was refused a session while holding none.
    slots: Arc<Slots>,
    /// Sessions the pool holds now.
    held: Arc<dyn Fn() -> usize + Send + Sync>,
    /// Closes one idle session of the pool; false when none is idle.
    close_idle: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

/// Resolves once the pool needs the listening session's slot; see [`PollsFirst::admit`].
pub struct SlotWanted(watch::Receiver<u64>);

impl PollsFirst {
    /// The rule for a pool behind `slots` that holds `held()` sessions now.
    pub fn new(slots: Arc<Slots>, held: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        PollsFirst {
            slots,
            held: Arc::new(held),
            close_idle: None,
        }
    }

    /// The same rule, able to make room for a refused listener by closing one idle session of
    /// the pool with `close_idle` (false when none is idle); see [`PollsFirst::refused`].
    pub fn closing_idle(mut self, close_idle: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.close_idle = Some(Arc::new(close_idle));
        self
    }

    /// Waits, at most [`POOL_FIRST_WAIT`], until the pool holds a session, so the pool's first
    /// session comes before the listener's; `kind` (`postgres`, `oracle`) starts the error.
    /// Then says, from now on, when the pool needs the slot back: call it before connecting,
    /// so a refusal during the connect is seen too.
    pub async fn admit(&self, kind: &str) -> Result<SlotWanted, SourceError> {
        let waiting = tokio::time::Instant::now();
        while (self.held)() == 0 {
            if waiting.elapsed() >= POOL_FIRST_WAIT {
                return Err(SourceError::Connect(format!(
                    "{kind}: the pool holds no session yet; the listening session opens after the pool's first (polls come first)"
                )));
            }
            tokio::time::sleep(POOL_CHECK_EVERY).await;
        }
        let mut starved = self.slots.starved();
        starved.borrow_and_update();
        Ok(SlotWanted(starved))
    }

    /// A refused connect as the hub logs it: one refused for want of a slot
    /// ([`SourceError::is_session_limit`]) names the sizing rule. When the pool holds two
    /// sessions or more then, it gives one up (a slot retired, an idle session closed) so
    /// the listener's next attempt has a slot: a limit of 2..`pool_size` keeps wake-ups even
    /// when a burst of polls took every slot before the listener connected.
    pub fn refused(&self, e: SourceError) -> SourceError {
        match e {
            SourceError::Connect(m) if e.is_session_limit() => {
                let held = (self.held)();
                if held >= 2
                    && let Some(close) = &self.close_idle
                    && self.slots.make_room(held, || close())
                {
                    tracing::info!(
                        sessions = held,
                        "the database refused the listening session while the pool held two or more: the pool closed one so the listener can connect"
                    );
                }
                SourceError::Connect(format!(
                    "{m}; the server has no slot for the listening session beside the pool's: wake-ups need a connection limit of at least pool_size + 1"
                ))
            }
            e => e,
        }
    }
}

impl SlotWanted {
    /// Resolves with [`GAVE_SLOT_UP`] once the server refused the pool a session while it
    /// held none. Cancel-safe; never resolves once the source is gone (and then the
    /// session is gone too).
    pub async fn wanted(&mut self) -> String {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        GAVE_SLOT_UP.to_string()
    }
}
