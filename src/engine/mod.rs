//! The polling engine: one poller task per distinct trigger, each publishing its latest
//! [`PollState`] into a watch channel that the gRPC handlers read without touching the database.
//!
//! - [`registry`]: the map key → poller, created on first use and evicted when idle.
//! - [`poller`]: the task that runs one query on its interval.
//! - [`state`]: the cached value and how its age and errors become an answer.
//! - [`stats`]: the engine's state as plain data, rendered as metric families at scrape time.
//! - [`shares`]: namespace shares of each pool (one team's slow queries never take them all).
//! - [`sources`]: the databases (configured and made from credentials) and their wake-up hubs.
//! - [`supervise`]: tasks that end on their own are recorded and reported, never mistaken for
//!   live ones.
//! - [`wake`]: database-driven wake-ups (one hub per connection; the channels pollers want).

pub mod poller;
pub mod registry;
pub mod shares;
pub mod sources;
pub mod state;
pub mod stats;
pub mod supervise;
pub mod wake;

pub use crate::source::deadline_after;
pub use crate::trigger::{PollerKey, WakeKey};

/// A database the engine polls, as callers outside the engine hold one (the source of a
/// connection made from a trigger's own credentials, between preparing and polling it).
pub type SourceRef = std::sync::Arc<dyn crate::source::Source>;
pub use registry::{EntryCache, Registry, StreamSlot, Subscription};
pub use state::{PollState, Reading, Staleness};
pub use stats::PollerStatus;

/// Why the engine has no value to give.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The database failed (or has not answered yet); carries its message.
    #[error("{0}")]
    Unavailable(String),
    /// A limit on pollers or streams was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server is shutting down.
    #[error("orascale is shutting down")]
    ShuttingDown,
}
