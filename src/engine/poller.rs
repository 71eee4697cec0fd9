//! One poller: runs its query at once, then on its interval, and publishes every outcome into
//! its watch channel. At most one query is in flight (the loop awaits it); a tick missed because
//! a query ran long is delayed, not bunched; pollers created together spread out, because each
//! picks a random phase within its interval after the first poll.
//!
//! With wake-ups (`notifyChannel`), a notification makes the poller poll at once too, but never
//! sooner than `minWakeInterval` after the previous poll started. Notifications that arrive
//! during a poll are coalesced into one more poll after it: a burst costs at most the poll in
//! flight plus one. A poll caused by a wake restarts the interval, which stays the safety net.
//! Wake polls of one connection share a budget of its pool (`engine::wake`): one that finds it
//! spent waits, and its tick, if that comes first, makes it an interval poll, which never waits.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::WakeKey;
use super::shares::Member;
use super::wake::{Budget, Subscribed, Wake, WakeSlot};
use super::{PollState, PollerKey};
use crate::source::{Cell, Source, SourceError};
use crate::telemetry::metrics as m;

/// Extra time the engine grants a source past the query timeout before giving up on it: the
/// source cancels on the database at the timeout, this only guards against a source that hangs.
/// Deadlines have one owner: the sources' own last resorts (Oracle's break after 2 s, a
/// PostgreSQL cancel request bounded at 2 s) run inside this, so they always get to act and
/// report (Oracle's "call did not return" line) before the engine stops waiting.
pub const SOURCE_GRACE: Duration = Duration::from_secs(5);

/// Longest wait between polls whose credentials keep being refused.
const AUTH_BACKOFF_MAX: Duration = Duration::from_secs(600);

/// Longest query text quoted in an error message.
const QUERY_QUOTE_MAX: usize = 200;

/// A ScaledObject's trigger, as a poller's log lines and per-poller series name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub namespace: String,
    pub name: String,
    pub metric: String,
}

/// The ScaledObject a poller is named after: the one that created it, until that object stops
/// using it (its trigger was edited, so its map moved to another poller); then the next object
/// that calls. Until one does, the poller is named after nobody and renders no per-poller series,
/// so a series never names an object that has left its poller.
#[derive(Debug)]
pub struct Named {
    current: std::sync::RwLock<Arc<Origin>>,
    left: AtomicBool,
}

impl Named {
    pub fn new(origin: Origin) -> Self {
        Named {
            current: std::sync::RwLock::new(Arc::new(origin)),
            left: AtomicBool::new(false),
        }
    }

    pub fn get(&self) -> Arc<Origin> {
        self.current.read().expect("named lock").clone()
    }

    /// `who` no longer uses the poller: if it is the one named, the next caller takes its place.
    pub fn left(&self, who: &Origin) {
        let current = self.current.read().expect("named lock");
        if **current == *who {
            self.left.store(true, Ordering::Release);
        }
    }

    /// A call from `who`: it becomes the name if the named object has left. One atomic load
    /// on every call; the lock only when the name changes.
    pub fn adopt(&self, who: &Origin) {
        if self.left.load(Ordering::Acquire) {
            let mut current = self.current.write().expect("named lock");
            if self.left.swap(false, Ordering::AcqRel) {
                *current = Arc::new(who.clone());
            }
        }
    }

    /// Whether the named object has left and no other has called since.
    pub fn orphaned(&self) -> bool {
        self.left.load(Ordering::Acquire)
    }
}

/// The wake-ups of a poller: what its users want ([`super::wake::Wanted`]) and how to hold a
/// channel on its connection's hub.
pub struct Wakes {
    pub wanted: watch::Receiver<Vec<WakeKey>>,
    pub subscribe: HoldChannel,
}

/// Makes a poller's hold on one channel of its connection's hub, or says why it cannot.
pub type HoldChannel = Box<dyn Fn(&str) -> Result<Wake, String> + Send + Sync>;

impl Wakes {
    /// No wake-ups, ever.
    pub fn none() -> Wakes {
        Wakes {
            wanted: watch::channel(Vec::new()).1,
            subscribe: Box::new(|_| Err("no wake-ups".into())),
        }
    }
}

pub struct Poller {
    pub key: PollerKey,
    pub source: Arc<dyn Source>,
    pub tx: watch::Sender<PollState>,
    /// Who the log lines name (shared with the registry's entry).
    pub origin: Arc<Named>,
    /// The wake-up channels this poller's users want, and how to hold one.
    pub wakes: Wakes,
    /// This poller's poll metrics.
    pub series: m::PollSeries,
    /// Its namespace's membership of the connection's pool shares: interval polls take a slot
    /// of its share where the connection serves several namespaces.
    pub share: Member,
}

impl Poller {
    /// Polls until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        let interval = self.key.poll_interval;
        let mut last_start = Instant::now();
        let mut subs = Subscribed::none();
        let mut wanted = self.wakes.wanted.clone();
        let mut wanted_open = true;
        self.hold(&mut subs, &mut wanted);
        subs.mark_seen();
        // Refused credentials from metadata back off (a guessing channel otherwise); a
        // configured connection's password file is re-read on every connect, so a rotation
        // there is picked up at the next interval.
        let mut refused = Refused {
            applies: crate::trigger::is_dynamic_name(&self.key.connection),
            ..Refused::default()
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            auth_failed = self.poll(true) => refused.record(auth_failed, last_start, interval),
        }
        let phase = interval.mul_f64(random_fraction(&self.key)).min(interval);
        let start = crate::source::deadline_after(Instant::now(), phase);
        // `interval_at` panics on a zero period; configuration forbids one, this cannot.
        let period = interval.max(Duration::from_millis(1));
        let mut ticks = tokio::time::interval_at(start, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let mut woken = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticks.tick() => false,
                changed = wanted.changed(), if wanted_open => {
                    match changed {
                        Ok(()) => self.hold(&mut subs, &mut wanted),
                        Err(_) => wanted_open = false,
                    }
                    continue;
                }
                _ = subs.notified() => true,
            };
            // A wake poll's slot of the connection's wake budget, held until the poll is done.
            let mut _wake_slot = None;
            if woken {
                // Never sooner than the least minWakeInterval after the last poll began; what
                // arrives while waiting is covered by this poll.
                let min_wake = subs.min_interval.unwrap_or(interval);
                let earliest = crate::source::deadline_after(last_start, min_wake);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep_until(earliest) => {}
                }
                // Wake polls take at most their budget of the pool, so interval polls never
                // queue behind a busy channel's: beyond it this one waits (counted deferred),
                // later wakes coalescing into it, and becomes an interval poll if its tick
                // comes first (interval polls need no slot).
                if let Some(budget) = subs.budget() {
                    match budget.try_take() {
                        Some(slot) => _wake_slot = Some(slot),
                        None => {
                            subs.record_deferred();
                            tokio::select! {
                                _ = cancel.cancelled() => return,
                                slot = budget.take() => _wake_slot = Some(slot),
                                _ = ticks.tick() => woken = false,
                            }
                        }
                    }
                }
                subs.mark_seen();
            }
            if refused.holds() {
                continue;
            }
            if woken {
                subs.record_poll();
            }
            last_start = Instant::now();
            tokio::select! {
                _ = cancel.cancelled() => return,
                auth_failed = self.poll(!woken) => refused.record(auth_failed, last_start, interval),
            }
            if woken {
                ticks.reset();
            }
        }
    }

    /// The query, bounded by its timeout plus the sources' grace.
    async fn query(&self, timeout: Duration) -> Result<Cell, SourceError> {
        match tokio::time::timeout(
            timeout.saturating_add(SOURCE_GRACE),
            self.source.query(&self.key.query, timeout),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(SourceError::Timeout(timeout)),
        }
    }

    /// A slot of this poller's namespace share, and the time left of the query's timeout; or,
    /// when the namespace's other polls hold its share past (nearly all of) that timeout, why
    /// there is none — a pool wait that names the share (not the namespace: an identical
    /// trigger of another namespace may share this poller and read the error).
    async fn share_slot(
        &self,
        budget: &Arc<Budget>,
        started: Instant,
    ) -> Result<(WakeSlot, Duration), SourceError> {
        let timeout = self.key.query_timeout;
        if let Some(slot) = budget.try_take() {
            return Ok((slot, timeout));
        }
        let slot = tokio::time::timeout(timeout, budget.take()).await.ok();
        let waited = started.elapsed();
        let left = timeout.saturating_sub(waited);
        match slot {
            // Nearly nothing left: a query started now would be cut at once.
            Some(slot) if left >= timeout / 10 => Ok((slot, left)),
            _ => Err(SourceError::NamespaceShare {
                waited: Duration::from_millis(waited.as_millis() as u64),
                share: budget.limit(),
                percent: self.share.percent(),
            }),
        }
    }

    /// Holds exactly the channels the users want now.
    fn hold(&self, subs: &mut Subscribed, wanted: &mut watch::Receiver<Vec<WakeKey>>) {
        let keys = wanted.borrow_and_update().clone();
        if let Err(e) = subs.update(&keys, |c| (self.wakes.subscribe)(c)) {
            let origin = self.origin.get();
            tracing::warn!(connection = %self.key.connection, namespace = %origin.namespace,
                scaledobject = %origin.name, metric = %origin.metric, error = %e,
                "wake-ups unavailable for this poller; interval polling goes on");
        }
    }

    /// One query, its metrics, its lifecycle log line, and the publish; true when the database
    /// refused the credentials. An interval poll first takes a slot of its namespace's share of
    /// the pool (`engine::shares`), within the query's timeout.
    async fn poll(&self, interval_poll: bool) -> bool {
        let key = &self.key;
        let started = Instant::now();
        let share = interval_poll
            .then(|| self.source.slots())
            .flatten()
            .and_then(|slots| self.share.budget(slots));
        let outcome = match share {
            None => self.query(key.query_timeout).await,
            Some(budget) => match self.share_slot(&budget, started).await {
                Ok((_slot, left)) => self.query(left).await,
                Err(e) => Err(e),
            },
        };
        let finished = Instant::now();
        let mut auth_failed = false;
        let (value, result_label) = match outcome {
            Ok(Cell::Number(v)) => match finite(v) {
                Ok(v) => (Ok(v), "ok"),
                Err(e) => (Err(e), "error"),
            },
            Ok(Cell::Null | Cell::NoRows) if key.ignore_nulls => (Ok(0.0), "null"),
            Ok(Cell::Null) => (
                Err("query returned NULL; set ignoreNullValues: \"true\" to read it as 0, or use COALESCE".to_string()),
                "null",
            ),
            Ok(Cell::NoRows) => (
                Err("query returned no rows; set ignoreNullValues: \"true\" to read it as 0".to_string()),
                "null",
            ),
            Err(e) => {
                auth_failed = e.is_auth_failure();
                let label = e.result_label();
                (Err(e.to_string()), label)
            }
        };
        let elapsed = finished - started;
        self.series.record(result_label, value.is_ok(), elapsed);

        // What the log lines need from the previous sample; nothing is cloned.
        let (had_good, failed_streak) = {
            let before = self.tx.borrow();
            (
                before.good.is_some(),
                before.failure.as_ref().map(|f| f.streak),
            )
        };
        match value {
            Ok(v) => {
                // Readers borrow the latest state whenever they answer; only a change wakes the
                // waiters (streams judge activity, first calls wait for a first outcome), so a
                // steady value costs no wake-up per stream per poll.
                self.tx.send_if_modified(|s| {
                    // A value older than two intervals may have been judged stale while this
                    // poll ran (`PollState::value`): its return is news for the streams even
                    // when the value is the same.
                    let news = s.polls == 0
                        || s.failure.is_some()
                        || s.good.is_none_or(|g| {
                            g.value != v
                                || finished.saturating_duration_since(g.at)
                                    >= key.poll_interval.saturating_mul(2)
                        });
                    s.record_ok(v, finished);
                    s.last_took = elapsed;
                    news
                });
                if !had_good {
                    let origin = self.origin.get();
                    tracing::info!(connection = %key.connection, namespace = %origin.namespace,
                        scaledobject = %origin.name, metric = %origin.metric,
                        value = v, elapsed_ms = elapsed.as_millis() as u64, "poller first result");
                } else if let Some(streak) = failed_streak {
                    let origin = self.origin.get();
                    tracing::info!(connection = %key.connection, namespace = %origin.namespace,
                        scaledobject = %origin.name, metric = %origin.metric,
                        failed_polls = streak, value = v, "poller recovered");
                }
            }
            Err(e) => {
                let message = format!(
                    "connection {:?}: {e} (query: {})",
                    key.connection,
                    quote_query(&key.query)
                );
                if failed_streak.is_none() {
                    let origin = self.origin.get();
                    tracing::warn!(connection = %key.connection, namespace = %origin.namespace,
                        scaledobject = %origin.name, metric = %origin.metric,
                        error = %message, "poller query failed");
                } else {
                    tracing::debug!(connection = %key.connection, error = %message, "poller query failed again");
                }
                self.tx.send_modify(|s| s.record_err(message, finished));
            }
        }
        auth_failed
    }
}

fn quote_query(q: &str) -> String {
    let one_line: String = q.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= QUERY_QUOTE_MAX {
        one_line
    } else {
        let cut: String = one_line.chars().take(QUERY_QUOTE_MAX).collect();
        format!("{cut}…")
    }
}

/// Polls whose credentials from metadata the database refused, and when the next may start:
/// the interval doubling per refusal up to [`AUTH_BACKOFF_MAX`] (never shorter than the
/// interval), reset by any other outcome. The answers stay the error (UNAVAILABLE) meanwhile.
#[derive(Debug, Default)]
struct Refused {
    /// Only connections made from metadata credentials back off.
    applies: bool,
    streak: u32,
    not_before: Option<Instant>,
}

impl Refused {
    fn record(&mut self, auth_failed: bool, started: Instant, interval: Duration) {
        if !auth_failed || !self.applies {
            self.streak = 0;
            self.not_before = None;
            return;
        }
        self.streak = self.streak.saturating_add(1);
        let wait = interval
            .saturating_mul(1 << (self.streak - 1).min(16))
            .clamp(interval, AUTH_BACKOFF_MAX.max(interval));
        self.not_before = Some(crate::source::deadline_after(started, wait));
    }

    /// Whether a poll now would come too soon after a refusal.
    fn holds(&self) -> bool {
        self.not_before.is_some_and(|at| Instant::now() < at)
    }
}

/// The one rule every source's value passes (here, where a poll is published, and in
/// `orascale check`): KEDA turns NaN and ±Inf into 0, so a non-finite value is an error,
/// whichever driver let it through.
pub fn finite(v: f64) -> Result<f64, String> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!(
            "first column is not a finite number: {v}; orascale scales on a finite number"
        ))
    }
}

/// A per-process random number in [0, 1), different for each key.
fn random_fraction(key: &PollerKey) -> f64 {
    let h = std::collections::hash_map::RandomState::new().hash_one(key);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::engine::state::Staleness;
    use futures::FutureExt;
    use futures::future::BoxFuture;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A scripted source for timing tests under a paused clock; real databases are tested in
    /// the source modules and in tests/. The registry's tests use it too.
    pub(in crate::engine) struct Script {
        calls: AtomicU32,
        /// When each query started.
        starts: Mutex<Vec<Instant>>,
        delay: Duration,
        cells: Mutex<Vec<Result<Cell, SourceError>>>,
    }

    impl Source for Script {
        fn kind(&self) -> &'static str {
            "script"
        }
        fn driver(&self) -> Result<String, SourceError> {
            Ok("script".into())
        }
        fn pool(&self) -> crate::source::PoolStatus {
            crate::source::PoolStatus::default()
        }
        fn server_info<'a>(
            &'a self,
            _: Duration,
        ) -> BoxFuture<'a, Result<crate::source::ServerInfo, SourceError>> {
            async { Err(SourceError::Unsupported("script".into())) }.boxed()
        }
        fn query<'a>(
            &'a self,
            _: &'a str,
            _: Duration,
        ) -> BoxFuture<'a, Result<Cell, SourceError>> {
            async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.starts.lock().unwrap().push(Instant::now());
                tokio::time::sleep(self.delay).await;
                let mut cells = self.cells.lock().unwrap();
                if cells.len() > 1 {
                    cells.remove(0)
                } else {
                    cells[0].clone()
                }
            }
            .boxed()
        }
    }

    fn key(ignore_nulls: bool) -> PollerKey {
        PollerKey {
            connection: "c".into(),
            query: "select 1".into(),
            poll_interval: Duration::from_secs(10),
            query_timeout: Duration::from_secs(5),
            ignore_nulls,
        }
    }

    fn start(
        key: PollerKey,
        script: Arc<Script>,
    ) -> (watch::Receiver<PollState>, CancellationToken) {
        start_with(key, script, Wakes::none())
    }

    /// Wake-ups on manual channels: `wanted` says which the users want; each channel's hold
    /// comes from `holds` (once).
    fn manual_wakes(wanted: watch::Receiver<Vec<WakeKey>>, holds: Vec<Wake>) -> Wakes {
        let holds = std::sync::Mutex::new(holds);
        Wakes {
            wanted,
            subscribe: Box::new(move |channel| {
                let mut holds = holds.lock().unwrap();
                let i = holds
                    .iter()
                    .position(|w| w.channel() == channel)
                    .ok_or_else(|| format!("no hold for {channel}"))?;
                Ok(holds.remove(i))
            }),
        }
    }

    fn wake_key(channel: &str, ms: u64) -> WakeKey {
        WakeKey {
            channel: channel.into(),
            min_interval: Duration::from_millis(ms),
        }
    }

    fn start_with(
        key: PollerKey,
        script: Arc<Script>,
        wakes: Wakes,
    ) -> (watch::Receiver<PollState>, CancellationToken) {
        let (tx, rx) = watch::channel(PollState::default());
        let cancel = CancellationToken::new();
        let series = m::PollSeries::new(key.connection.clone());
        let poller = Poller {
            key,
            source: script,
            tx,
            origin: Arc::new(Named::new(Origin {
                namespace: "ns".into(),
                name: "so".into(),
                metric: "m".into(),
            })),
            wakes,
            series,
            share: crate::engine::shares::Shares::new(100).join("c", "ns"),
        };
        tokio::spawn(poller.run(cancel.clone()));
        (rx, cancel)
    }

    /// Answers `cells` in turn, each after `delay`; the last one for ever.
    pub(in crate::engine) fn script(
        delay: Duration,
        cells: Vec<Result<Cell, SourceError>>,
    ) -> Arc<Script> {
        Arc::new(Script {
            calls: AtomicU32::new(0),
            starts: Mutex::new(Vec::new()),
            delay,
            cells: Mutex::new(cells),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn first_poll_at_once_then_on_interval() {
        let s = script(Duration::from_millis(5), vec![Ok(Cell::Number(3.0))]);
        let (mut rx, cancel) = start(key(false), s.clone());
        rx.wait_for(|s| s.has_outcome()).await.unwrap();
        assert_eq!(s.calls.load(Ordering::SeqCst), 1);
        assert_eq!(rx.borrow().good.unwrap().value, 3.0);
        // Over 100 s at a 10 s interval: 10 more polls, give or take the random phase.
        tokio::time::sleep(Duration::from_secs(100)).await;
        let calls = s.calls.load(Ordering::SeqCst);
        assert!((10..=11).contains(&calls), "{calls}");
        cancel.cancel();
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(
            s.calls.load(Ordering::SeqCst),
            calls,
            "no poll after cancel"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wake_polls_beyond_the_budget_wait_and_interval_polls_never_do() {
        // Three "busy" pollers woken by one channel whose connection lets one wake poll run at
        // once; each query takes 1 s and they poll on wakes only (1 h interval). Later three
        // "steady" pollers on the same channel and budget poll every 2 s (100 ms queries).
        let (mut holds, fire, status) = crate::engine::wake::manual_budget("jobs", 6, 1);
        let mut start_poller = |i: usize, delay: Duration, interval: Duration| {
            let s = script(delay, vec![Ok(Cell::Number(1.0))]);
            let mut k = key(false);
            k.query = format!("select {i}");
            k.poll_interval = interval;
            let (users, wanted) = watch::channel(vec![wake_key("jobs", 100)]);
            let wake = holds.pop().unwrap();
            let (rx, cancel) = start_with(k, s.clone(), manual_wakes(wanted, vec![wake]));
            (s, rx, cancel, users)
        };
        let mut busy = Vec::new();
        for i in 0..3 {
            let mut p = start_poller(i, Duration::from_secs(1), Duration::from_secs(3600));
            p.1.wait_for(|s| s.has_outcome()).await.unwrap();
            busy.push(p);
        }
        let calls = |p: &Vec<(Arc<Script>, _, _, _)>| -> Vec<u32> {
            p.iter()
                .map(|(s, ..)| s.calls.load(Ordering::SeqCst))
                .collect()
        };
        assert_eq!(calls(&busy), vec![1, 1, 1]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        fire();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // One wake poll runs; the two others wait for its slot, counted once each.
        assert_eq!(calls(&busy).iter().sum::<u32>(), 4);
        assert_eq!(status().deferred, 2);
        // A burst of wakes while they wait costs nothing more: they are coalesced.
        for _ in 0..50 {
            fire();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Each waiting poll runs in turn (1 s each), then each poller's burst wakes are one
        // more poll, still one at a time; never two wake polls at once.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = calls(&busy);
        assert!(after.iter().all(|&c| (2..=3).contains(&c)), "{after:?}");
        assert_eq!(
            status().wake_polls,
            u64::from(after.iter().sum::<u32>() - 3)
        );

        // Now the budget saturated for good: a wake every 20 ms keeps the busy pollers'
        // wake polls queued for its one slot. The steady pollers are woken too, and their
        // wake polls wait with the others; their interval polls must not.
        let mut steady = Vec::new();
        for i in 3..6 {
            let mut p = start_poller(i, Duration::from_millis(100), Duration::from_secs(2));
            p.1.wait_for(|s| s.has_outcome()).await.unwrap();
            steady.push(p);
        }
        let window = Instant::now();
        let (busy_before, wakes_before, deferred_before) = (
            calls(&busy).iter().sum::<u32>(),
            status().wake_polls,
            status().deferred,
        );
        for _ in 0..1000 {
            fire();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let end = Instant::now();
        // Every steady poller polled at least once per interval (2 s, plus its 100 ms query
        // and the 100 ms minWakeInterval a wake poll waits) for the whole 20 s window.
        for (s, ..) in &steady {
            let starts: Vec<Instant> = s
                .starts
                .lock()
                .unwrap()
                .iter()
                .copied()
                .filter(|t| *t >= window)
                .collect();
            let mut gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
            gaps.push(starts[0] - window);
            gaps.push(end - starts[starts.len() - 1]);
            let longest = gaps.iter().max().unwrap();
            assert!(
                *longest <= Duration::from_millis(2200),
                "a steady poller waited {longest:?} between polls"
            );
        }
        // And the budget held: the busy channel kept deferring, the busy pollers' polls
        // (all wake polls) ran one at a time at most, and the steady pollers' polls that were
        // not wake polls are their interval polls, about one per 2 s each.
        let busy_polls = calls(&busy).iter().sum::<u32>() - busy_before;
        let wake_polls = status().wake_polls - wakes_before;
        assert!(status().deferred - deferred_before > 0);
        assert!(
            busy_polls <= 20,
            "{busy_polls} 1 s wake polls in 20 s on one slot"
        );
        let steady_polls: u32 = steady
            .iter()
            .map(|(s, ..)| {
                s.starts
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|t| **t >= window)
                    .count() as u32
            })
            .sum();
        let steady_wake_polls = wake_polls - u64::from(busy_polls);
        let interval_polls = u64::from(steady_polls) - steady_wake_polls;
        assert!(
            interval_polls >= 3 * 8,
            "{interval_polls} interval polls of 3 pollers at 2 s in 20 s ({steady_wake_polls} wake polls)"
        );
        for (.., cancel, _) in busy.iter().chain(&steady) {
            cancel.cancel();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deferred_wake_poll_becomes_the_interval_poll_when_its_tick_comes() {
        // The budget's one slot is taken (by another poller's long wake poll, here held by the
        // test): this poller's wake waits, and its 10 s tick polls anyway. The first tick's
        // phase is random (anywhere in the interval): a poller whose tick came within the
        // first half second (about 1 in 20) polled before its wake could be deferred, so the
        // scene is played again with a new poller.
        for _attempt in 0..20 {
            let (mut holds, fire, status) = crate::engine::wake::manual_budget("jobs", 1, 1);
            let budget = holds[0].budget_for_test();
            let _taken = budget.try_take().unwrap();
            let s = script(Duration::from_millis(10), vec![Ok(Cell::Number(1.0))]);
            let (_users, wanted) = watch::channel(vec![wake_key("jobs", 100)]);
            let (mut rx, cancel) = start_with(
                key(false),
                s.clone(),
                manual_wakes(wanted, vec![holds.pop().unwrap()]),
            );
            rx.wait_for(|s| s.has_outcome()).await.unwrap();
            fire();
            tokio::time::sleep(Duration::from_millis(500)).await;
            if s.calls.load(Ordering::SeqCst) > 1 {
                cancel.cancel();
                continue; // the tick came first
            }
            assert_eq!(status().deferred, 1);
            // Within one interval the tick polls: interval polls never wait for a wake slot.
            // (9.9 s: the tick, past 0.5 s, lands inside, and its next one does not.)
            tokio::time::sleep(Duration::from_millis(9_900)).await;
            assert_eq!(s.calls.load(Ordering::SeqCst), 2);
            assert_eq!(status().wake_polls, 0, "it ran as the interval poll");
            cancel.cancel();
            return;
        }
        panic!("a second poll within half a second, 20 times: the wake poll did not wait");
    }

    #[tokio::test(start_paused = true)]
    async fn wakes_poll_at_once_but_never_faster_than_min_wake_interval() {
        let s = script(Duration::from_millis(50), vec![Ok(Cell::Number(1.0))]);
        let (wake, fire) = crate::engine::wake::manual("jobs");
        let mut k = key(false);
        k.poll_interval = Duration::from_secs(60);
        // Two users of the poller want the channel, at 2 s and at 100 ms: the least holds.
        let (_users, wanted) = watch::channel(vec![wake_key("jobs", 2000), wake_key("jobs", 100)]);
        let (mut rx, cancel) = start_with(k, s.clone(), manual_wakes(wanted, vec![wake]));
        rx.wait_for(|s| s.has_outcome()).await.unwrap();
        assert_eq!(s.calls.load(Ordering::SeqCst), 1);
        // A wake long after the last poll: polled at once.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = Instant::now();
        fire();
        // The value is the same, so the watch is not notified: count the queries.
        while s.calls.load(Ordering::SeqCst) < 2 || rx.borrow().polls < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            before.elapsed() <= Duration::from_millis(60),
            "{:?}",
            before.elapsed()
        );
        // A storm of 1,000 wakes over 2 s: at most one poll per 100 ms (plus the one queued).
        let storm = Instant::now();
        for _ in 0..1000 {
            fire();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let during = s.calls.load(Ordering::SeqCst) - 2;
        let secs = storm.elapsed().as_secs_f64();
        assert!(
            (during as f64) <= secs * 10.0 + 1.0,
            "{during} polls in {secs} s of storm"
        );
        assert!(during >= 10, "the storm is served, not ignored: {during}");
        // After the storm: the last wake is covered by one more poll, then quiet until the
        // interval (60 s after that wake poll).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let settled = s.calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(50)).await;
        assert_eq!(
            s.calls.load(Ordering::SeqCst),
            settled,
            "no poll without wakes before the interval"
        );
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(
            s.calls.load(Ordering::SeqCst),
            settled + 1,
            "the interval stays the safety net"
        );
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn slow_queries_are_never_concurrent_nor_bunched() {
        // Each query takes 25 s at a 10 s interval: one in flight at a time.
        let s = script(Duration::from_secs(25), vec![Ok(Cell::Number(1.0))]);
        let (_rx, cancel) = start(key(false), s.clone());
        tokio::time::sleep(Duration::from_secs(101)).await;
        let calls = s.calls.load(Ordering::SeqCst);
        // The engine's own timeout (5 s + grace) cuts each one at 7 s, so about 100 / 10.
        assert!((5..=11).contains(&calls), "{calls}");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn nulls_follow_ignore_null_values() {
        for (ignore, want_ok) in [(true, true), (false, false)] {
            for cell in [Cell::Null, Cell::NoRows] {
                let s = script(Duration::ZERO, vec![Ok(cell)]);
                let (mut rx, cancel) = start(key(ignore), s);
                let sample = rx.wait_for(|s| s.has_outcome()).await.unwrap().clone();
                let got = sample.value(Instant::now(), Staleness::new(Duration::from_secs(10), 3));
                assert_eq!(got.is_ok(), want_ok, "{cell:?} ignore={ignore}: {got:?}");
                if ignore {
                    assert_eq!(got.unwrap().value, 0.0);
                } else {
                    assert!(got.unwrap_err().contains("ignoreNullValues"));
                }
                cancel.cancel();
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_poller_holds_exactly_the_channels_its_users_want() {
        let s = script(Duration::ZERO, vec![Ok(Cell::Number(1.0))]);
        let (a, fire_a) = crate::engine::wake::manual("a");
        let (b, fire_b) = crate::engine::wake::manual("b");
        let mut k = key(false);
        k.poll_interval = Duration::from_secs(3600);
        let (users, wanted) = watch::channel(Vec::new());
        let (mut rx, cancel) = start_with(k, s.clone(), manual_wakes(wanted, vec![a, b]));
        rx.wait_for(|s| s.has_outcome()).await.unwrap();
        let polls = |n| {
            let s = s.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                assert_eq!(s.calls.load(Ordering::SeqCst), n);
            }
        };
        // Nobody wants a wake-up yet: a notification on a does nothing.
        fire_a();
        polls(1).await;
        // A user asks for a: its notifications poll.
        users.send_replace(vec![wake_key("a", 100)]);
        polls(1).await;
        fire_a();
        polls(2).await;
        fire_b();
        polls(2).await;
        // Another user asks for b too.
        users.send_replace(vec![wake_key("a", 100), wake_key("b", 100)]);
        polls(2).await;
        fire_b();
        polls(3).await;
        // a's user is gone: a no longer polls, b still does.
        users.send_replace(vec![wake_key("b", 100)]);
        polls(3).await;
        fire_a();
        polls(3).await;
        fire_b();
        polls(4).await;
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn refused_credentials_back_off_other_errors_do_not() {
        let refused = SourceError::Connect(
            "postgres: FATAL 28P01: password authentication failed for user \"bob\"".into(),
        );
        assert!(refused.is_auth_failure());
        for (connection, error, min, max) in [
            // Metadata credentials, 1 s interval over 130 s: polls at 0, 1, 3, 7, 15, 31, 63, 127 s.
            ("meta-0123456789abcdef", refused.clone(), 6, 9),
            (
                "meta-0123456789abcdef",
                SourceError::Query("no such table".into()),
                120,
                132,
            ),
            // A configured connection: its rotated password file is read on the next interval.
            ("orders", refused, 120, 132),
        ] {
            let s = script(Duration::ZERO, vec![Err(error.clone())]);
            let mut k = key(false);
            k.connection = connection.into();
            k.poll_interval = Duration::from_secs(1);
            let (rx, cancel) = start(k, s.clone());
            tokio::time::sleep(Duration::from_secs(130)).await;
            let calls = s.calls.load(Ordering::SeqCst);
            assert!(
                (min..=max).contains(&calls),
                "{error}: {calls} polls in 130 s"
            );
            assert!(
                rx.borrow()
                    .value(Instant::now(), Staleness::new(Duration::from_secs(1), 3))
                    .is_err()
            );
            cancel.cancel();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_change_wakes_the_waiters() {
        let cells = [3.0, 3.0, 3.0, 5.0, 5.0]
            .into_iter()
            .map(|v| Ok(Cell::Number(v)))
            .chain([
                Err(SourceError::Query("down".into())),
                Err(SourceError::Query("down".into())),
                Ok(Cell::Number(5.0)),
                Ok(Cell::Number(5.0)),
            ])
            .collect();
        let s = script(Duration::ZERO, cells);
        let mut k = key(false);
        k.poll_interval = Duration::from_secs(1);
        let (mut rx, cancel) = start(k, s.clone());
        let mut woken = Vec::new();
        while s.calls.load(Ordering::SeqCst) < 9 {
            tokio::select! {
                changed = rx.changed() => {
                    changed.unwrap();
                    let now = rx.borrow_and_update().clone();
                    woken.push((now.good.map(|g| g.value), now.failure.is_some()));
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if rx.has_changed().unwrap() {
            let now = rx.borrow_and_update().clone();
            woken.push((now.good.map(|g| g.value), now.failure.is_some()));
        }
        // The first outcome, the change to 5, each failure, the recovery; no repeat of a value.
        assert_eq!(
            woken,
            [
                (Some(3.0), false),
                (Some(5.0), false),
                (Some(5.0), true),
                (Some(5.0), true),
                (Some(5.0), false),
            ]
        );
        assert_eq!(rx.borrow().polls, 9, "every poll is recorded, woken or not");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_sources_own_last_resort_finishes_inside_the_engines_guard() {
        // A source that answers 2.5 s past the query timeout (its break/cancel took that long):
        // its answer is recorded, not cut off by the engine's guard.
        let mut k = key(false);
        let s = script(
            k.query_timeout + Duration::from_millis(2500),
            vec![Ok(Cell::Number(7.0))],
        );
        k.poll_interval = Duration::from_secs(60);
        let (mut rx, cancel) = start(k, s.clone());
        let sample = rx.wait_for(|s| s.has_outcome()).await.unwrap().clone();
        assert_eq!(s.calls.load(Ordering::SeqCst), 1);
        assert_eq!(sample.good.map(|g| g.value), Some(7.0), "{sample:?}");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn non_finite_values_are_errors_never_published() {
        for v in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            let s = script(Duration::ZERO, vec![Ok(Cell::Number(v))]);
            let (mut rx, cancel) = start(key(true), s);
            let sample = rx.wait_for(|s| s.has_outcome()).await.unwrap().clone();
            assert!(sample.good.is_none(), "{v}");
            let err = sample
                .value(Instant::now(), Staleness::new(Duration::from_secs(10), 3))
                .unwrap_err();
            assert!(err.contains("not a finite number"), "{v}: {err}");
            cancel.cancel();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn errors_name_connection_and_query_and_keep_last_good() {
        let s = script(
            Duration::ZERO,
            vec![
                Ok(Cell::Number(4.0)),
                Err(SourceError::Query("no such table: x".into())),
            ],
        );
        let (mut rx, cancel) = start(key(false), s);
        rx.wait_for(|s| s.polls >= 2).await.unwrap();
        let sample = rx.borrow().clone();
        assert_eq!(sample.good.unwrap().value, 4.0);
        let msg = sample.failure.unwrap().message;
        assert!(msg.contains("connection \"c\""), "{msg}");
        assert!(msg.contains("no such table: x"), "{msg}");
        assert!(msg.contains("query: select 1"), "{msg}");
        cancel.cancel();
    }
}
