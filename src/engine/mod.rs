//! The polling engine: one poller task per distinct trigger, each publishing its latest
//! [`Sample`] into a watch channel that the gRPC handlers read without touching the database.
//!
//! - [`registry`]: the map key → poller, created on first use and evicted when idle.
//! - [`poller`]: the task that runs one query on its interval.
//! - [`sample`]: the cached value and how its age and errors become an answer.

use std::time::Duration;

pub mod poller;
pub mod registry;
pub mod sample;

pub use registry::{EntryCache, PollerStatus, Registry, Subscription};
pub use sample::{Reading, Sample};

/// What makes two triggers share one poller. Thresholds and metric names are not part of it:
/// they stay per ScaledObject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PollerKey {
    pub connection: String,
    pub query: String,
    pub poll_interval: Duration,
    pub query_timeout: Duration,
    pub ignore_nulls: bool,
    /// Database wake-ups (`notifyChannel`): poll at once on a notification as well.
    pub wake: Option<WakeKey>,
}

/// A poller's wake-up channel and how often a wake may make it poll.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WakeKey {
    pub channel: String,
    /// `minWakeInterval`: the least time between the starts of two polls caused by wakes.
    pub min_interval: Duration,
}

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
