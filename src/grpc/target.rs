//! Where a trigger's metric spec target comes from, and the spec on the wire.
//!
//! Without `targetQuery` the target is the static `targetQueryValue`. With it, the target is the
//! target poller's value when that poller's latest poll succeeded with a valid target (finite,
//! ≥ 0.001); before its first good value, and whenever its latest poll failed or read NULL, no
//! rows or a value below 0.001, the static value is the fallback. GetMetricSpec and every
//! StreamMetricSpec message are made by the same [`Target::resolve`] from the same poller state,
//! so the two never diverge (the proto's second rule for StreamMetricSpec).

use std::time::Duration;

use super::proto::MetricSpec;
use crate::engine::Reading;
use crate::trigger::{MAX_TARGET, MIN_TARGET, round_target, valid_target};

/// A resolved target and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub value: f64,
    pub origin: Origin,
}

/// Where a served target came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// `targetQueryValue`: the trigger has no target query.
    Static,
    /// `targetQueryValue` as the fallback of a target query that has no good value now; why.
    Fallback(String),
    /// The target query's latest poll, taken at `at`.
    Query { at: tokio::time::Instant },
}

impl Target {
    /// The target of a trigger whose static target is `fallback`: `latest` is the target
    /// poller's latest poll (`None` without a target query).
    pub fn resolve(fallback: f64, latest: Option<Result<Reading, String>>) -> Target {
        let origin = match latest {
            None => Origin::Static,
            Some(Ok(r)) if valid_target(r.value) => {
                return Target {
                    value: r.value,
                    origin: Origin::Query { at: r.at },
                };
            }
            Some(Ok(r)) => Origin::Fallback(format!(
                "the target query read {}, not a target (between {MIN_TARGET} and {MAX_TARGET:e})",
                r.value
            )),
            Some(Err(reason)) => Origin::Fallback(reason),
        };
        Target {
            value: fallback,
            origin,
        }
    }

    /// The age of a queried target.
    pub fn age(&self) -> Option<Duration> {
        match self.origin {
            Origin::Query { at } => Some(at.elapsed()),
            _ => None,
        }
    }
}

/// Both target fields; the int64 one is at least 1, because 0 breaks the HPA on old KEDA. The
/// target is rounded to 0.001 as KEDA rounds it, here, where GetMetricSpec and every
/// StreamMetricSpec message are made: both agree, and a change KEDA could not see (3.0000001 →
/// 3.0000002) is no change of the spec, so it sends nothing.
#[allow(deprecated)]
pub fn to_metric_spec(name: &str, target: f64) -> MetricSpec {
    let target = round_target(target);
    MetricSpec {
        metric_name: name.to_string(),
        target_size: (target.round() as i64).max(1),
        target_size_float: target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn read(value: f64) -> Option<Result<Reading, String>> {
        Some(Ok(Reading {
            value,
            at: Instant::now(),
        }))
    }

    #[test]
    fn a_queried_target_is_served_only_when_valid() {
        assert_eq!(Target::resolve(5.0, None).origin, Origin::Static);
        let t = Target::resolve(5.0, read(12.5));
        assert_eq!(t.value, 12.5);
        assert!(matches!(t.origin, Origin::Query { .. }));
        assert_eq!(Target::resolve(5.0, read(0.001)).value, 0.001);
        for bad in [0.0, 0.0009, -3.0, 9.1e15, f64::NAN, f64::INFINITY] {
            let t = Target::resolve(5.0, read(bad));
            assert_eq!(t.value, 5.0, "{bad}");
            assert!(matches!(t.origin, Origin::Fallback(_)), "{bad}");
        }
        let t = Target::resolve(5.0, Some(Err("no such table: targets".into())));
        assert_eq!(
            (t.value, t.origin),
            (5.0, Origin::Fallback("no such table: targets".into()))
        );
    }

    #[test]
    #[allow(deprecated)]
    fn the_spec_fills_both_fields() {
        let s = to_metric_spec("m", 0.25);
        assert_eq!((s.target_size, s.target_size_float), (1, 0.25));
        let s = to_metric_spec("m", 12.6);
        assert_eq!((s.metric_name.as_str(), s.target_size), ("m", 13));
        // Rounded to 0.001 as KEDA rounds it: changes below that are no change of the spec.
        assert_eq!(
            to_metric_spec("m", 3.0000001),
            to_metric_spec("m", 3.0000002)
        );
        assert_eq!(to_metric_spec("m", 2.0004).target_size_float, 2.0);
        assert_eq!(to_metric_spec("m", 9e15).target_size, 9_000_000_000_000_000);
    }
}
