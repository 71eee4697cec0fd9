//! The engine's state as plain data, and its per-poller, per-pool and wake-up metric families
//! rendered from it at scrape time, here where the state lives (telemetry only spells the
//! names and writes the text format).

use std::time::Duration;

use super::wake::WakeStatus;
use crate::source::PoolStatus;
use crate::telemetry::metrics as m;

/// One poller's state, for the per-poller metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct PollerStatus {
    pub connection: String,
    pub namespace: String,
    pub scaledobject: String,
    pub metric: String,
    /// Unix time of the last successful poll.
    pub last_success_unix: Option<f64>,
    /// Age of the last good value.
    pub sample_age: Option<Duration>,
    pub consecutive_failures: u64,
    pub streams: usize,
    /// A short stable id of the poller's key ([`crate::trigger::PollerKey::id`]): pollers of
    /// one trigger that differ only in interval, timeout or null policy are distinct series.
    pub poller: String,
}

/// Every family of the engine's state, in Prometheus' text format.
pub fn render_registry(registry: &super::Registry) -> String {
    render(
        &registry.snapshot(),
        &registry.sources().pools(),
        &registry.sources().wakes(),
    )
}

/// The per-poller and per-pool families, written at scrape time from live state so that an
/// evicted poller's series disappear with it. One series per poller: bounded by the number of
/// pollers (distinct triggers), labelled with the ScaledObject that created the poller.
pub fn render(
    pollers: &[PollerStatus],
    pools: &[(String, PoolStatus)],
    wakes: &[(String, WakeStatus)],
) -> String {
    let mut out = String::new();
    let mut typed = |kind: &str, name: &str, help: &str, lines: Vec<(String, f64)>| {
        m::write_family(&mut out, kind, name, help, &lines)
    };
    let mut family =
        |name: &str, help: &str, lines: Vec<(String, f64)>| typed("gauge", name, help, lines);
    let poller_labels = |p: &PollerStatus| {
        format!(
            "connection=\"{}\",namespace=\"{}\",scaledobject=\"{}\",metric=\"{}\",poller=\"{}\"",
            m::escape(&crate::trigger::connection_label(&p.connection)),
            m::escape(&p.namespace),
            m::escape(&p.scaledobject),
            m::escape(&p.metric),
            m::escape(&p.poller)
        )
    };
    family(
        m::LAST_SUCCESS,
        "Unix time of each poller's last successful poll (absent until one succeeds).",
        pollers
            .iter()
            .filter_map(|p| p.last_success_unix.map(|t| (poller_labels(p), t)))
            .collect(),
    );
    family(
        m::POLLER_SAMPLE_AGE,
        "Age of each poller's last good value, in seconds.",
        pollers
            .iter()
            .filter_map(|p| p.sample_age.map(|a| (poller_labels(p), a.as_secs_f64())))
            .collect(),
    );
    family(
        m::POLLER_FAILURES,
        "Consecutive failed polls of each poller (0 when the latest poll succeeded).",
        pollers
            .iter()
            .map(|p| (poller_labels(p), p.consecutive_failures as f64))
            .collect(),
    );
    family(
        m::POLLER_STREAMS,
        "Open server streams (StreamIsActive and StreamMetricSpec) on each poller.",
        pollers
            .iter()
            .map(|p| (poller_labels(p), p.streams as f64))
            .collect(),
    );
    let pool = |f: fn(&PoolStatus) -> usize| {
        pools
            .iter()
            .map(|(c, s)| (format!("connection=\"{}\"", m::escape(c)), f(s) as f64))
            .collect::<Vec<_>>()
    };
    family(
        m::POOL_MAX,
        "Most database sessions (concurrent queries) a connection may use.",
        pool(|s| s.max),
    );
    family(
        m::POOL_SIZE,
        "Database sessions open now, per connection.",
        pool(|s| s.size),
    );
    family(
        m::POOL_IN_USE,
        "Database sessions running a query now, per connection.",
        pool(|s| s.in_use),
    );
    family(
        m::POOL_WAITING,
        "Polls waiting for a free database session, per connection.",
        pool(|s| s.waiting),
    );
    let wake = |f: fn(&WakeStatus) -> f64| {
        wakes
            .iter()
            .map(|(c, s)| (format!("connection=\"{}\"", m::escape(c)), f(s)))
            .collect::<Vec<_>>()
    };
    family(
        m::WAKE_CHANNELS,
        "Notification channels (notifyChannel) live pollers wait on, per connection.",
        wake(|s| s.channels as f64),
    );
    family(
        m::WAKE_LISTENER_UP,
        "1 while the connection's notification session listens on every wanted channel; 0 while it is down (wake-ups degraded, interval polling goes on) or not needed.",
        wake(|s| f64::from(u8::from(s.listening))),
    );
    typed(
        "counter",
        m::WAKE_NOTIFICATIONS,
        "Database notifications received, per connection.",
        wake(|s| s.notifications as f64),
    );
    typed(
        "counter",
        m::WAKE_POLLS,
        "Polls run at once because of a notification or a listener reconnect, per connection.",
        wake(|s| s.wake_polls as f64),
    );
    typed(
        "counter",
        m::WAKE_DEFERRED,
        "Wake polls that found the connection's wake budget (--wake-poll-share of the sessions the pool may use: pool_size, or fewer while the database refuses more) spent and waited for a slot, coalescing later wakes, so interval polls keep their sessions; per connection.",
        wake(|s| s.deferred as f64),
    );
    typed(
        "counter",
        m::WAKE_RECONNECTS,
        "Notification sessions re-established after one was lost or could not be opened (or after the listener task was restarted), per connection.",
        wake(|s| s.reconnects as f64),
    );
    out
}
