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
pub mod wake;

pub use registry::{EntryCache, PollerStatus, Registry, Subscription};
pub use sample::{Reading, Sample};

/// What makes two triggers share one poller: what determines the value. Thresholds, metric
/// names and wake-ups are not part of it: thresholds and names stay per ScaledObject, and a
/// poller waits on the union of its users' wake-up channels ([`wake::Wanted`]), so adding
/// `notifyChannel` to one of many identical triggers adds no poller and no query.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PollerKey {
    pub connection: String,
    pub query: String,
    pub poll_interval: Duration,
    pub query_timeout: Duration,
    pub ignore_nulls: bool,
}

impl PollerKey {
    /// A short id of everything in the key, the same on every replica and release: the
    /// `poller` label that keeps per-poller series distinct.
    pub fn id(&self) -> String {
        let text = format!(
            "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            self.connection,
            self.query,
            self.poll_interval.as_nanos(),
            self.query_timeout.as_nanos(),
            self.ignore_nulls
        );
        format!("{:012x}", stable_hash(text.as_bytes()) >> 16)
    }
}

/// FNV-1a 64: stable across Rust versions, platforms and processes, unlike `DefaultHasher`, so
/// names derived from it agree across replicas and restarts.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
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
