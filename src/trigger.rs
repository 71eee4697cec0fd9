//! The domain: what a trigger asks for ([`ScalerSpec`]), what makes triggers share a poller
//! ([`PollerKey`]), a trigger's wake-ups ([`WakeKey`]) and the names of connections made from
//! metadata credentials. `metadata` makes these from a ScaledObject's map and `engine` serves
//! them; both import this module, and it imports neither.

use std::time::Duration;

use crate::config::ConnectionConfig;

/// The least target a metric spec may carry: KEDA rounds targets to 3 decimals, and 0 breaks
/// the HPA.
pub const MIN_TARGET: f64 = 0.001;

/// The greatest target a metric spec may carry: some KEDA versions compute
/// `int64(target * 1000)`, which overflows past about 9.2e15, so 9e15 leaves room.
pub const MAX_TARGET: f64 = 9e15;

/// Whether a target may be served: finite, at least [`MIN_TARGET`] and at most
/// [`MAX_TARGET`]. A target query's value that is not serves the static `targetQueryValue`.
pub fn valid_target(value: f64) -> bool {
    value.is_finite() && (MIN_TARGET..=MAX_TARGET).contains(&value)
}

/// A target as KEDA uses it: rounded to 0.001 (KEDA rounds targets to 3 decimals), so two
/// targets that KEDA cannot tell apart are one spec, never a message of their own.
pub fn round_target(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// What one trigger asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalerSpec {
    /// Which poller serves this trigger: identical keys share one.
    pub poller: PollerKey,
    /// The static target (`targetQueryValue`); with a target query, the fallback target.
    pub target: f64,
    /// `targetQuery`: a second poller, on the same connection, whose last good value is the
    /// metric spec's target (pushed by StreamMetricSpec). Shared by identical triggers like
    /// any poller; its nulls read as 0, which is below the least target: the fallback.
    pub target_poller: Option<PollerKey>,
    pub activation: f64,
    pub metric_name: String,
    /// Database wake-ups (`notifyChannel`): the poller also polls on a notification. Not part
    /// of the poller key: identical triggers share one poller whatever their wake-ups.
    pub wake: Option<WakeKey>,
    /// A connection made from the trigger's own credentials; `poller.connection` is its name.
    /// Boxed: most triggers have none, and a spec is kept per calling ScaledObject.
    pub dynamic: Option<Box<ConnectionConfig>>,
}

/// What makes two triggers share one poller: what determines the value. Thresholds, metric
/// names and wake-ups are not part of it: thresholds and names stay per ScaledObject, and a
/// poller waits on the union of its users' wake-up channels (the engine's `wake::Wanted`), so adding
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

pub use crate::config::{DYNAMIC_PREFIX, is_dynamic_name};

/// The `connection` label of every connection made from metadata credentials in metrics: their
/// names are per-credential hashes, which would grow the label set with every rotated password.
pub const METADATA_CONNECTIONS: &str = "metadata-credentials";

/// The bounded `connection` label for a connection name.
pub fn connection_label(name: &str) -> String {
    if is_dynamic_name(name) {
        METADATA_CONNECTIONS.to_string()
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_bounded_on_both_sides() {
        for ok in [MIN_TARGET, 1.0, 12.5, MAX_TARGET] {
            assert!(valid_target(ok), "{ok}");
        }
        for bad in [
            0.0,
            0.0009,
            -1.0,
            9.000_000_000_000_1e15,
            1e300,
            f64::NAN,
            f64::INFINITY,
        ] {
            assert!(!valid_target(bad), "{bad}");
        }
    }

    #[test]
    fn targets_are_rounded_as_keda_rounds_them() {
        assert_eq!(round_target(3.0000001), 3.0);
        assert_eq!(round_target(3.0000002), 3.0);
        assert_eq!(round_target(2.0005), 2.001);
        assert_eq!(round_target(0.0014), 0.001);
        assert_eq!(round_target(12.5), 12.5);
        assert_eq!(round_target(MAX_TARGET), MAX_TARGET);
    }
}
