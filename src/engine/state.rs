//! The value a poller publishes, and the one rule that turns it into an answer:
//! the last good value is served while it is younger than the staleness limit, whether the
//! poll after it failed or is still running (a hung query is no fresher than a failed one);
//! after that — and when there never was a good value — the answer is the error, or that the
//! value is too old. Never 0 and never `false` in place of an error.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// A successful poll.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub value: f64,
    pub at: Instant,
}

/// The latest failed poll, while failures last.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub message: Arc<str>,
    pub at: Instant,
    /// Consecutive failed polls.
    pub streak: u64,
}

/// How old a last good value may be when it is served.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Staleness {
    /// The trigger's `pollInterval`.
    pub interval: Duration,
    /// `stale_after_polls × pollInterval`, after a failed poll.
    pub limit: Duration,
}

impl Staleness {
    pub fn new(poll_interval: Duration, stale_after_polls: u32) -> Self {
        Staleness {
            interval: poll_interval,
            limit: poll_interval.saturating_mul(stale_after_polls),
        }
    }

    /// The allowance while no poll has failed since the value (the next one is still
    /// running): the limit, but never under two intervals (so at `stale_after_polls = 1` a
    /// healthy poller's value does not lapse while its next query runs), nor under the
    /// interval plus twice `last_took`, the last successful poll's duration (a query that
    /// takes 4 s at a 1 s interval is slow, not hung; one that usually takes milliseconds and
    /// has run past the allowance is hung).
    pub fn in_flight(&self, last_took: Duration) -> Duration {
        self.limit
            .max(self.interval.saturating_mul(2))
            .max(self.interval.saturating_add(last_took.saturating_mul(2)))
    }
}

/// Everything a handler needs to answer, copied out of the watch channel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PollState {
    /// The last successful poll, however old.
    pub good: Option<Reading>,
    /// Set when the latest poll failed; cleared by the next success.
    pub failure: Option<Failure>,
    /// Polls completed so far.
    pub polls: u64,
    /// How long the last successful poll took: a query that always takes longer than the
    /// staleness allowance is slow, not hung (see [`PollState::value`]).
    pub last_took: Duration,
}

impl PollState {
    /// Whether any poll has completed.
    pub fn has_outcome(&self) -> bool {
        self.polls > 0
    }

    /// The value to serve now, or why there is none ([`Staleness`]).
    pub fn value(&self, now: Instant, max_age: Staleness) -> Result<Reading, String> {
        let age = |good: &Reading| now.saturating_duration_since(good.at);
        let in_flight = max_age.in_flight(self.last_took);
        match (&self.good, &self.failure) {
            (Some(good), None) if age(good) < in_flight => Ok(*good),
            (Some(good), None) => Err(format!(
                "no poll has finished for {}: the next one is still running (waiting for a \
                 database session or for the database), and the last value is older than the \
                 {} staleness limit (queryTimeout ends the wait)",
                humantime::format_duration(round_secs(age(good))),
                humantime::format_duration(in_flight)
            )),
            (Some(good), Some(_)) if age(good) < max_age.limit => Ok(*good),
            (Some(good), Some(f)) => Err(format!(
                "{} (last good value is {} old, older than the {} staleness limit)",
                f.message,
                humantime::format_duration(round_secs(age(good))),
                humantime::format_duration(max_age.limit)
            )),
            (None, Some(f)) => Err(f.message.to_string()),
            (None, None) => Err("no result yet: the first query has not finished".into()),
        }
    }

    /// The latest poll's value when that poll succeeded; `None` while the latest poll failed
    /// or before the first one. No staleness allowance: a metric spec target served from a
    /// query falls back to its static value at the first failure (`grpc::push::SpecChanges`).
    pub fn latest_good(&self) -> Option<Reading> {
        self.good.filter(|_| self.failure.is_none())
    }

    /// [`PollState::latest_good`], or why there is none.
    pub fn latest(&self) -> Result<Reading, String> {
        match (self.latest_good(), &self.failure) {
            (Some(r), _) => Ok(r),
            (None, Some(f)) => Err(f.message.to_string()),
            (None, None) => Err("no result yet: the first query has not finished".into()),
        }
    }

    pub fn record_ok(&mut self, value: f64, at: Instant) {
        self.good = Some(Reading { value, at });
        self.failure = None;
        self.polls += 1;
    }

    pub fn record_err(&mut self, message: impl Into<Arc<str>>, at: Instant) {
        let streak = self.failure.as_ref().map_or(0, |f| f.streak) + 1;
        self.failure = Some(Failure {
            message: message.into(),
            at,
            streak,
        });
        self.polls += 1;
    }
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 s polls, stale after 3.
    const LIMIT: Staleness = Staleness {
        interval: Duration::from_secs(10),
        limit: Duration::from_secs(30),
    };

    #[test]
    fn serving_rules() {
        let t0 = Instant::now();
        let mut s = PollState::default();
        assert!(s.value(t0, LIMIT).unwrap_err().contains("no result yet"));

        s.record_err("no such table: jobs", t0);
        assert_eq!(s.value(t0, LIMIT).unwrap_err(), "no such table: jobs");

        s.record_ok(7.0, t0);
        assert_eq!(
            s.value(t0 + Duration::from_secs(29), LIMIT).unwrap().value,
            7.0,
            "a success is served while its next poll runs"
        );
        let hung = s.value(t0 + Duration::from_secs(3600), LIMIT).unwrap_err();
        assert!(
            hung.contains("still running") && hung.contains("1h"),
            "a hung poll does not keep an old value fresh: {hung}"
        );

        s.record_err("connection refused", t0 + Duration::from_secs(10));
        assert_eq!(
            s.value(t0 + Duration::from_secs(29), LIMIT).unwrap().value,
            7.0
        );
        let err = s.value(t0 + Duration::from_secs(30), LIMIT).unwrap_err();
        assert!(err.starts_with("connection refused"), "{err}");
        assert!(err.contains("30s old"), "{err}");
        s.record_err("connection refused", t0 + Duration::from_secs(20));
        assert_eq!(s.failure.as_ref().unwrap().streak, 2);

        assert_eq!(
            s.latest_good(),
            None,
            "a failed latest poll has no latest value"
        );
        assert_eq!(s.latest().unwrap_err(), "connection refused");

        s.record_ok(0.0, t0 + Duration::from_secs(40));
        assert_eq!(s.latest().unwrap().value, 0.0);
        assert_eq!(
            s.value(t0 + Duration::from_secs(40), LIMIT).unwrap().value,
            0.0
        );
        assert!(s.failure.is_none());
        assert_eq!(s.polls, 5);
    }

    #[test]
    fn a_running_poll_gets_at_least_two_intervals() {
        let one = Staleness::new(Duration::from_secs(10), 1);
        assert_eq!(one.limit, Duration::from_secs(10));
        assert_eq!(one.in_flight(Duration::ZERO), Duration::from_secs(20));
        assert_eq!(Staleness::new(Duration::from_secs(10), 3), LIMIT);
        assert_eq!(LIMIT.in_flight(Duration::ZERO), Duration::from_secs(30));
        let t0 = Instant::now();
        let mut s = PollState::default();
        s.record_ok(1.0, t0);
        assert!(s.value(t0 + Duration::from_secs(15), one).is_ok());
        assert!(s.value(t0 + Duration::from_secs(20), one).is_err());
        // A query that takes 30 s at a 10 s interval is slow, not hung.
        s.last_took = Duration::from_secs(30);
        assert!(s.value(t0 + Duration::from_secs(60), one).is_ok());
        assert!(s.value(t0 + Duration::from_secs(70), one).is_err());
        s.record_err("refused", t0 + Duration::from_secs(11));
        assert!(
            s.value(t0 + Duration::from_secs(11), one).is_err(),
            "a failure gets no more than the limit"
        );
    }
}
