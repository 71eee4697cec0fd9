//! Database-driven wake-ups: a database says "the answer may have changed" and the pollers on
//! that channel poll at once instead of at their next tick.
//!
//! The part a database implements is small (`source::wake`): a [`Listener`] opens one dedicated
//! session and a [`ListenSession`] listens, unlistens, pings and reports its loss. Everything
//! else is the engine's, here, in [`Hub`] (one per connection, owned by the registry): one listening session per connection for the union of the
//! channels live pollers use, channels added and removed as pollers come and go, a ping
//! [`PING_EVERY`] after the last one however often the channels change, reconnection with a
//! jittered backoff, a wake of every channel whenever a LISTEN (re)starts (notifications sent
//! before it are lost and a poll covers them; after an outage those wakes are spread over
//! [`REARM_WINDOW`] so a database restart is not answered by a synchronised query burst), and a
//! supervisor that restarts the session task if it panics, reporting the listener down meanwhile.
//!
//! A wake is a counter in a `watch` channel: however many notifications arrive while a poller
//! is busy, it sees one change. The poller decides when to poll (`minWakeInterval`); the hub
//! never queries anything but its own session.
//!
//! A hub also holds its connection's wake budget: the sessions of the pool that polls caused
//! by wakes may use at once (`--wake-poll-share`, half by default, at least one, of the sessions
//! the pool's gate lets polls have now: `pool_size`, or fewer while the server refuses more). A
//! wake poll beyond it waits for a slot, its later wakes coalesced into it, and counts as
//! deferred; interval polls never take a slot, so a busy channel cannot starve them.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::WakeKey;
use crate::source::wake::{Deliver, ListenSession, Listener};
use crate::source::{Slots, Source};

/// Shortest wait before reconnecting (or restarting the session task).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait before reconnecting.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A session that lived this long was healthy: the next loss starts the backoff again.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Connecting, and each LISTEN/UNLISTEN/ping, may take this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// A session is pinged this long after its previous ping (or its connect), so a silently cut
/// link is noticed; channel changes do not postpone it.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// After an outage each re-LISTENed channel is woken at a random offset within this window,
/// not all in the same millisecond.
pub const REARM_WINDOW: Duration = Duration::from_secs(1);

/// A hub's state, for the metrics rendered at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WakeStatus {
    /// Channels live pollers wait on.
    pub channels: usize,
    /// Whether a session is listening on all of them now.
    pub listening: bool,
    pub notifications: u64,
    /// Sessions re-established after one was lost or could not be opened, or after the
    /// session task was restarted.
    pub reconnects: u64,
    /// Polls run because of a wake.
    pub wake_polls: u64,
    /// Wake polls that found the connection's wake budget spent and waited for a slot.
    pub deferred: u64,
}

/// The sessions of a pool of `pool_size` that wake polls may use at once: `share` percent of
/// it, rounded down, at least one.
pub fn wake_budget(pool_size: usize, share: u8) -> usize {
    (pool_size.saturating_mul(usize::from(share)) / 100).max(1)
}

/// A connection's wake budget: the slots wake polls may hold at once. It is [`wake_budget`] of
/// the sessions the pool's gate lets polls have *now* ([`Slots::capacity`]: `pool_size`, less
/// the sessions the server refused), not of `pool_size`: with a connection limit below
/// `pool_size` the share is of the sessions that exist, so wake polls still leave the rest to
/// interval polls. The semaphore follows the gate lazily: it grows at once, and shrinks by
/// retiring free slots, or slots as wake polls hand them back.
pub struct Budget {
    gate: Arc<Semaphore>,
    /// Slots in the semaphore, free or taken.
    size: Mutex<usize>,
    limit: Limit,
}

enum Limit {
    /// A fixed number of slots.
    Fixed(usize),
    /// `share` percent of the sessions `slots` lets polls have now.
    Share { share: u8, slots: Arc<Slots> },
}

impl Budget {
    /// A budget of exactly `slots` slots.
    pub fn fixed(slots: usize) -> Arc<Budget> {
        Budget::with(Limit::Fixed(slots))
    }

    /// `share` percent of the sessions the pool's gate `slots` lets polls have, as it changes.
    pub fn share_of(slots: Arc<Slots>, share: u8) -> Arc<Budget> {
        Budget::with(Limit::Share { share, slots })
    }

    fn with(limit: Limit) -> Arc<Budget> {
        let budget = Budget {
            gate: Arc::new(Semaphore::new(0)),
            size: Mutex::new(0),
            limit,
        };
        budget.sync(None);
        Arc::new(budget)
    }

    /// The slots wake polls may hold at once now.
    pub fn limit(&self) -> usize {
        let n = match &self.limit {
            Limit::Fixed(n) => *n,
            Limit::Share { share, slots } => wake_budget(slots.capacity(), *share),
        };
        n.clamp(1, Semaphore::MAX_PERMITS)
    }

    /// Brings the semaphore to [`Budget::limit`], retiring `returned` (a slot handed back)
    /// first if there is one too many.
    fn sync(&self, returned: Option<OwnedSemaphorePermit>) {
        let want = self.limit();
        let mut size = self.size.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(permit) = returned {
            if *size > want {
                permit.forget();
                *size -= 1;
            } else {
                drop(permit);
            }
        }
        if want > *size {
            self.gate.add_permits(want - *size);
            *size = want;
        } else if want < *size {
            *size -= self.gate.forget_permits(*size - want);
        }
    }

    /// A slot if one is free now.
    pub fn try_take(self: &Arc<Self>) -> Option<WakeSlot> {
        self.sync(None);
        let permit = self.gate.clone().try_acquire_owned().ok()?;
        Some(WakeSlot {
            permit: Some(permit),
            budget: self.clone(),
        })
    }

    /// Waits for a slot (FIFO among the waiters).
    pub async fn take(self: &Arc<Self>) -> WakeSlot {
        self.sync(None);
        let permit = self
            .gate
            .clone()
            .acquire_owned()
            .await
            .expect("the budget's semaphore is never closed");
        WakeSlot {
            permit: Some(permit),
            budget: self.clone(),
        }
    }
}

/// Reconnect waits with "equal jitter": half of the current ceiling fixed, half random, the
/// ceiling doubling from 200 ms to [`BACKOFF_MAX`]; so every wait is within 100 ms ..= 10 s,
/// and replicas that lost the same database at the same moment do not return in step.
#[derive(Debug)]
struct Backoff {
    ceiling: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            ceiling: BACKOFF_MIN * 2,
        }
    }

    /// The next wait, from a random `fraction` in [0, 1]; the one after may be twice as long.
    fn next(&mut self, fraction: f64) -> Duration {
        let half = self.ceiling / 2;
        let wait = half + half.mul_f64(fraction.clamp(0.0, 1.0));
        self.ceiling = (self.ceiling * 2).min(BACKOFF_MAX);
        wait.clamp(BACKOFF_MIN, BACKOFF_MAX)
    }

    fn reset(&mut self) {
        *self = Backoff::new();
    }
}

/// A random number in [0, 1): `RandomState` is seeded per thread and moved on per instance,
/// which is random enough to spread waits (no crate needed for it).
fn random_fraction() -> f64 {
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let h = std::collections::hash_map::RandomState::new()
        .hash_one(DRAWS.fetch_add(1, Ordering::Relaxed));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// One connection's wake-ups. Dropping the hub ends its session task.
pub struct Hub {
    inner: Arc<Inner>,
    listener: Arc<dyn Listener>,
    started: AtomicBool,
    spawn: Box<dyn Fn(BoxFuture<'static, ()>) + Send + Sync>,
    /// Ends the session task: cancelled when the hub is dropped (its connection is gone).
    stop: CancellationToken,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Inner {
    /// The connection's name, for log lines.
    connection: String,
    channels: Mutex<HashMap<String, Channel>>,
    /// The set of wanted channels changed.
    changed: Notify,
    listening: AtomicBool,
    notifications: AtomicU64,
    reconnects: AtomicU64,
    wake_polls: AtomicU64,
    /// Slots for wake polls on this connection (see [`Budget`]).
    budget: Arc<Budget>,
    deferred: AtomicU64,
}

struct Channel {
    users: usize,
    tx: watch::Sender<u64>,
}

impl Hub {
    /// A hub that runs its session task with `spawn` once the first poller subscribes; the
    /// task ends when `stop` is cancelled or the hub is dropped.
    pub fn new(
        connection: &str,
        listener: Arc<dyn Listener>,
        stop: CancellationToken,
        spawn: impl Fn(BoxFuture<'static, ()>) + Send + Sync + 'static,
    ) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                connection: connection.to_string(),
                channels: Mutex::new(HashMap::new()),
                changed: Notify::new(),
                listening: AtomicBool::new(false),
                notifications: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
                wake_polls: AtomicU64::new(0),
                budget: Budget::fixed(Semaphore::MAX_PERMITS),
                deferred: AtomicU64::new(0),
            }),
            listener,
            started: AtomicBool::new(false),
            spawn: Box::new(spawn),
            stop,
        }
    }

    /// Lets at most what `budget` allows of wake polls run at once on this connection
    /// (before any subscribe).
    pub fn with_wake_budget(mut self, budget: Arc<Budget>) -> Hub {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.budget = budget;
        }
        self
    }

    /// Starts waiting for notifications on `channel`; listening stops once every [`Wake`] of
    /// the channel is dropped. Never blocks: the session task does the I/O.
    pub fn subscribe(&self, channel: &str) -> Wake {
        let rx = {
            let mut channels = self.inner.lock();
            let c = channels
                .entry(channel.to_string())
                .or_insert_with(|| Channel {
                    users: 0,
                    tx: watch::channel(0).0,
                });
            c.users += 1;
            c.tx.subscribe()
        };
        self.inner.changed.notify_one();
        if !self.started.swap(true, Ordering::SeqCst) {
            let stop = self.stop.clone();
            let task = supervise(self.inner.clone(), self.listener.clone());
            (self.spawn)(Box::pin(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = task => {}
                }
            }));
        }
        Wake {
            channel: channel.to_string(),
            rx,
            inner: self.inner.clone(),
        }
    }

    pub fn status(&self) -> WakeStatus {
        let i = &self.inner;
        WakeStatus {
            channels: i.lock().len(),
            listening: i.listening.load(Ordering::Relaxed),
            notifications: i.notifications.load(Ordering::Relaxed),
            reconnects: i.reconnects.load(Ordering::Relaxed),
            wake_polls: i.wake_polls.load(Ordering::Relaxed),
            deferred: i.deferred.load(Ordering::Relaxed),
        }
    }
}

/// The hubs of every connection that has wake-ups in use: made on a poller's first
/// subscription from its source's [`Listener`], dropped (ending their session task) with the
/// connection. The engine owns them; a source only offers a listener.
pub struct Hubs {
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Percent of each pool that wake polls may use at once (`--wake-poll-share`).
    share: u8,
}

impl Hubs {
    pub fn new(shutdown: CancellationToken, tracker: TaskTracker, share: u8) -> Hubs {
        Hubs {
            hubs: Mutex::default(),
            shutdown,
            tracker,
            share,
        }
    }

    /// Waits for notifications on `channel` of `connection`, whose database is `source`.
    /// Never blocks: the hub's session task does the I/O.
    pub fn subscribe(
        &self,
        connection: &str,
        source: &dyn Source,
        channel: &str,
    ) -> Result<Wake, String> {
        let hub = {
            let mut hubs = self.hubs.lock().unwrap_or_else(PoisonError::into_inner);
            match hubs.get(connection) {
                Some(h) => h.clone(),
                None => {
                    let listener = source.listener().ok_or_else(|| {
                        format!(
                            "{} connections have no wake-ups (notifyChannel)",
                            source.kind()
                        )
                    })?;
                    let tracker = self.tracker.clone();
                    let hub = Arc::new(
                        Hub::new(
                            connection,
                            listener,
                            self.shutdown.child_token(),
                            move |f| {
                                tracker.spawn(f);
                            },
                        )
                        // The share of the sessions the pool's gate enforces now, so a
                        // connection limit below pool_size shrinks the budget with it.
                        .with_wake_budget(match source.slots() {
                            Some(slots) => Budget::share_of(slots, self.share),
                            None => Budget::fixed(wake_budget(source.pool().max, self.share)),
                        }),
                    );
                    hubs.insert(connection.to_string(), hub.clone());
                    hub
                }
            }
        };
        Ok(hub.subscribe(channel))
    }

    /// Drops the hubs of connections `keep` says are gone.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.hubs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, _| keep(name));
    }

    /// Every hub's state, by connection name.
    pub fn status(&self) -> Vec<(String, WakeStatus)> {
        self.hubs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, hub)| (name.clone(), hub.status()))
            .collect()
    }
}

/// The wake-ups a poller's users ask for: each `(notifyChannel, minWakeInterval)` with when a
/// call last asked for it and how many open streams hold it. The poller waits on the union of
/// the channels, never sooner than the least interval among them; a wake-up nobody asked for
/// within the idle timeout (and no stream holds) is dropped by the janitor, as idle pollers are.
#[derive(Debug)]
pub struct Wanted {
    uses: Mutex<HashMap<WakeKey, Use>>,
    tx: watch::Sender<Vec<WakeKey>>,
}

#[derive(Debug, Clone, Copy)]
struct Use {
    last_ms: u64,
    streams: usize,
}

impl Default for Wanted {
    fn default() -> Self {
        Wanted {
            uses: Mutex::default(),
            tx: watch::channel(Vec::new()).0,
        }
    }
}

impl Wanted {
    /// A call (or, with `stream`, an opening stream) asks for `key` at `now_ms`.
    pub fn touch(&self, key: &WakeKey, now_ms: u64, stream: bool) {
        let mut uses = self.uses.lock().unwrap_or_else(PoisonError::into_inner);
        let added = match uses.get_mut(key) {
            Some(u) => {
                u.last_ms = now_ms;
                u.streams += usize::from(stream);
                false
            }
            None => {
                uses.insert(
                    key.clone(),
                    Use {
                        last_ms: now_ms,
                        streams: usize::from(stream),
                    },
                );
                true
            }
        };
        if added {
            self.publish(&uses);
        }
    }

    /// A stream that asked for `key` closed at `now_ms` (the key then idles like a call's).
    pub fn stream_closed(&self, key: &WakeKey, now_ms: u64) {
        let mut uses = self.uses.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(u) = uses.get_mut(key) {
            u.streams = u.streams.saturating_sub(1);
            u.last_ms = now_ms;
        }
    }

    /// Drops the keys no stream holds and no call asked for since `before_ms`.
    pub fn expire(&self, before_ms: u64) {
        let mut uses = self.uses.lock().unwrap_or_else(PoisonError::into_inner);
        let n = uses.len();
        uses.retain(|_, u| u.streams > 0 || u.last_ms >= before_ms);
        if uses.len() != n {
            self.publish(&uses);
        }
    }

    /// The wanted keys, now and on every change.
    pub fn watch(&self) -> watch::Receiver<Vec<WakeKey>> {
        self.tx.subscribe()
    }

    fn publish(&self, uses: &HashMap<WakeKey, Use>) {
        let mut keys: Vec<WakeKey> = uses.keys().cloned().collect();
        keys.sort_by(|a, b| (&a.channel, a.min_interval).cmp(&(&b.channel, b.min_interval)));
        self.tx.send_replace(keys);
    }
}

/// A poller's holds on the channels its users want, and the least `minWakeInterval` among them.
pub struct Subscribed {
    wakes: Vec<Wake>,
    /// `None` without wake-ups.
    pub min_interval: Option<Duration>,
}

impl Subscribed {
    pub fn none() -> Subscribed {
        Subscribed {
            wakes: Vec::new(),
            min_interval: None,
        }
    }

    /// Holds exactly the channels of `wanted` (keeping the holds it has, so a kept channel's
    /// pending wake is not lost); `subscribe` makes a new hold, and says why it cannot.
    pub fn update(
        &mut self,
        wanted: &[WakeKey],
        mut subscribe: impl FnMut(&str) -> Result<Wake, String>,
    ) -> Result<(), String> {
        self.min_interval = wanted.iter().map(|w| w.min_interval).min();
        self.wakes
            .retain(|w| wanted.iter().any(|k| k.channel == w.channel));
        let mut failure = Ok(());
        for key in wanted {
            if self.wakes.iter().any(|w| w.channel == key.channel) {
                continue;
            }
            match subscribe(&key.channel) {
                // A new hold starts from now: what the channel saw before is not its news.
                Ok(mut w) => {
                    w.mark_seen();
                    self.wakes.push(w);
                }
                Err(e) => failure = Err(e),
            }
        }
        failure
    }

    /// The next wake on any held channel; pending forever without any.
    pub async fn notified(&mut self) {
        if self.wakes.is_empty() {
            return std::future::pending().await;
        }
        let waits = self.wakes.iter_mut().map(|w| Box::pin(w.notified()));
        futures::future::select_all(waits).await;
    }

    /// Everything delivered so far is covered by the poll about to start.
    pub fn mark_seen(&mut self) {
        for w in &mut self.wakes {
            w.mark_seen();
        }
    }

    /// Counts a poll run because of a wake (once: all holds are on the poller's one hub).
    pub fn record_poll(&self) {
        if let Some(w) = self.wakes.first() {
            w.record_poll();
        }
    }

    /// The connection's wake budget, for the wake poll about to run: a slot at once, or
    /// after `record_deferred` was called and the budget had room again. `None` without
    /// wake-ups.
    pub fn budget(&self) -> Option<Arc<Budget>> {
        self.wakes.first().map(|w| w.inner.budget.clone())
    }

    /// Counts a wake poll that found the budget spent.
    pub fn record_deferred(&self) {
        if let Some(w) = self.wakes.first() {
            w.inner.deferred.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A wake poll's slot of its connection's wake budget, handed back when the poll is done
/// (and retired then if the budget has shrunk meanwhile).
pub struct WakeSlot {
    permit: Option<OwnedSemaphorePermit>,
    budget: Arc<Budget>,
}

impl Drop for WakeSlot {
    fn drop(&mut self) {
        self.budget.sync(self.permit.take());
    }
}

/// A poller's hold on one channel.
pub struct Wake {
    channel: String,
    rx: watch::Receiver<u64>,
    inner: Arc<Inner>,
}

impl Wake {
    /// Waits for a notification not yet seen (or a reconnect). Pending forever if the hub is
    /// gone, so a poller falls back to its interval.
    pub async fn notified(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Everything delivered so far is covered by the poll about to start.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Counts a poll run because of a wake.
    pub fn record_poll(&self) {
        self.inner.wake_polls.fetch_add(1, Ordering::Relaxed);
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The connection's wake budget, for tests that take its slots.
    #[cfg(test)]
    pub(crate) fn budget_for_test(&self) -> Arc<Budget> {
        self.inner.budget.clone()
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        let mut channels = self.inner.lock();
        if let Some(c) = channels.get_mut(&self.channel) {
            c.users -= 1;
            if c.users == 0 {
                channels.remove(&self.channel);
                drop(channels);
                self.inner.changed.notify_one();
            }
        }
    }
}

impl Inner {
    /// The channel map. Poisoning is ignored: every critical section leaves the map whole, and
    /// a panicked session task must not take the pollers' subscriptions down with it.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wanted(&self) -> HashSet<String> {
        self.lock().keys().cloned().collect()
    }

    fn wake(&self, channel: &str) {
        if let Some(c) = self.lock().get(channel) {
            c.tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// A wake on `channel` with no session behind it, and the function that fires it: for tests of
/// what pollers do with wakes.
#[cfg(test)]
pub(crate) fn manual(channel: &str) -> (Wake, impl Fn() + use<>) {
    let (mut wakes, fire, _) = manual_budget(channel, 1, Semaphore::MAX_PERMITS);
    (wakes.pop().expect("one hold"), fire)
}

/// `holds` wakes on `channel` of one connection whose wake budget is `slots`, the function that
/// fires them, and the connection's status: for tests of the budget.
#[cfg(test)]
pub(crate) fn manual_budget(
    channel: &str,
    holds: usize,
    slots: usize,
) -> (
    Vec<Wake>,
    impl Fn() + use<>,
    impl Fn() -> WakeStatus + use<>,
) {
    let inner = Arc::new(Inner {
        connection: "test".into(),
        channels: Mutex::new(HashMap::new()),
        changed: Notify::new(),
        listening: AtomicBool::new(true),
        notifications: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        wake_polls: AtomicU64::new(0),
        budget: Budget::fixed(slots),
        deferred: AtomicU64::new(0),
    });
    let (tx, _) = watch::channel(0);
    let wakes = (0..holds)
        .map(|_| Wake {
            channel: channel.to_string(),
            rx: tx.subscribe(),
            inner: inner.clone(),
        })
        .collect();
    inner
        .channels
        .lock()
        .unwrap()
        .insert(channel.to_string(), Channel { users: holds, tx });
    let fire = {
        let inner = inner.clone();
        let channel = channel.to_string();
        move || inner.wake(&channel)
    };
    let status = move || WakeStatus {
        wake_polls: inner.wake_polls.load(Ordering::Relaxed),
        deferred: inner.deferred.load(Ordering::Relaxed),
        ..WakeStatus::default()
    };
    (wakes, fire, status)
}

/// Runs the session task and restarts it whenever it panics (or ends, which it should never
/// do): the listener is reported down meanwhile (`orascale_wake_listener_up` 0, so the
/// OrascaleWakeupsDegraded alert can fire) instead of looking up while nothing listens.
async fn supervise(inner: Arc<Inner>, listener: Arc<dyn Listener>) {
    let mut backoff = Backoff::new();
    let mut restarted = false;
    loop {
        let started = Instant::now();
        let ended = AssertUnwindSafe(run(inner.clone(), listener.clone(), restarted))
            .catch_unwind()
            .await;
        inner.listening.store(false, Ordering::Relaxed);
        let why = match ended {
            Ok(()) => "the session task ended".to_string(),
            Err(panic) => format!(
                "the session task panicked: {}",
                super::supervise::panic_message(&*panic)
            ),
        };
        if started.elapsed() >= STABLE_AFTER {
            backoff.reset();
        }
        let wait = backoff.next(random_fraction());
        tracing::error!(connection = %inner.connection, error = %why,
            restart_in_ms = wait.as_millis() as u64,
            "notification listener failed: wake-ups degraded, interval polling goes on; restarting it");
        tokio::time::sleep(wait).await;
        restarted = true;
    }
}

/// The session task: keeps one session listening on exactly the wanted channels. `restarted`
/// says the previous task died, so its first session counts (and re-arms) as a reconnect.
async fn run(inner: Arc<Inner>, listener: Arc<dyn Listener>, restarted: bool) {
    let deliver: Deliver = {
        let weak = Arc::downgrade(&inner);
        Arc::new(move |channel: &str| {
            if let Some(inner) = weak.upgrade() {
                inner.notifications.fetch_add(1, Ordering::Relaxed);
                inner.wake(channel);
            }
        })
    };
    let name = inner.connection.clone();
    let mut session: Option<Box<dyn ListenSession>> = None;
    let mut listening: HashSet<String> = HashSet::new();
    let mut backoff = Backoff::new();
    let mut connected_at = Instant::now();
    // When the session's next ping is due: set on connect and after each ping, never by a
    // channel change, so poller churn cannot postpone pings for ever.
    let mut ping_due = Instant::now() + PING_EVERY;
    // Wakes of channels re-LISTENed after an outage, each at its own instant (see `rearm_at`).
    let mut rearm: Vec<(Instant, String)> = Vec::new();
    // Whether the listener was ever down while channels were wanted (for the reconnect count).
    let mut was_down = restarted;
    loop {
        let wanted = inner.wanted();
        if wanted.is_empty() {
            if session.take().is_some() {
                tracing::debug!(connection = %name, "no poller waits for notifications: listening session closed");
            }
            listening.clear();
            rearm.clear();
            inner.listening.store(false, Ordering::Relaxed);
            inner.changed.notified().await;
            continue;
        }
        let s = match &mut session {
            Some(s) => s,
            None => match tokio::time::timeout(COMMAND_TIMEOUT, listener.connect(deliver.clone()))
                .await
            {
                Ok(Ok(s)) => {
                    listening.clear();
                    connected_at = Instant::now();
                    ping_due = connected_at + PING_EVERY;
                    session.insert(s)
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!(
                            "no session within {}",
                            humantime::format_duration(COMMAND_TIMEOUT)
                        ),
                    };
                    went_down(&inner, &name, &why, &mut was_down);
                    tokio::time::sleep(backoff.next(random_fraction())).await;
                    continue;
                }
            },
        };
        // LISTEN what is new, UNLISTEN what is gone. Every new LISTEN wakes its channel once:
        // what changed before it is covered by that poll. A channel's first LISTEN wakes it at
        // once (it closes the gap since its poller's first poll); after an outage every channel
        // comes back together, so their wakes are spread instead.
        let rearming = was_down;
        let mut failure = sync(s, &wanted, &mut listening, |c| {
            if rearming {
                rearm.push((rearm_at(Instant::now(), random_fraction()), c.to_string()));
            } else {
                inner.wake(c);
            }
        })
        .await
        .err();
        if failure.is_none() && !inner.listening.load(Ordering::Relaxed) {
            inner.listening.store(true, Ordering::Relaxed);
            if was_down {
                was_down = false;
                inner.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(connection = %name, channels = listening.len(),
                    rearm_window_ms = REARM_WINDOW.as_millis() as u64,
                    "notification listener back: wake-ups resumed, every channel polled once");
            } else {
                tracing::info!(connection = %name, channels = listening.len(), "listening for notifications");
            }
        }
        if failure.is_none() {
            let changed = inner.changed.notified();
            let next_rearm = rearm.iter().map(|(at, _)| *at).min();
            // Biased: a due ping goes first, so a stream of channel changes cannot starve it.
            tokio::select! {
                biased;
                why = s.lost() => failure = Some(why),
                _ = tokio::time::sleep_until(ping_due) => {
                    match tokio::time::timeout(COMMAND_TIMEOUT, s.ping()).await {
                        Ok(Ok(())) => ping_due = Instant::now() + PING_EVERY,
                        Ok(Err(e)) => failure = Some(format!("ping failed: {e}")),
                        Err(_) => failure = Some(format!("no answer to a ping within {}", humantime::format_duration(COMMAND_TIMEOUT))),
                    }
                }
                _ = sleep_until_some(next_rearm) => {
                    let now = Instant::now();
                    rearm.retain(|(at, channel)| {
                        let due = *at <= now;
                        if due {
                            inner.wake(channel);
                        }
                        !due
                    });
                }
                _ = changed => {}
            }
            if failure.is_none() {
                continue;
            }
        }
        // The session is gone or unusable: drop it (closing it), wait, reconnect. Pending
        // re-arm wakes go too: the next session re-LISTENs (and re-arms) every channel.
        let why = failure.expect("set on every path here");
        session = None;
        listening.clear();
        rearm.clear();
        went_down(&inner, &name, &why, &mut was_down);
        if connected_at.elapsed() >= STABLE_AFTER {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next(random_fraction())).await;
    }
}

/// When a channel re-LISTENed at `now` after an outage is woken: at `fraction` of
/// [`REARM_WINDOW`], so N channels cost about N / window polls a second, not N at once.
fn rearm_at(now: Instant, fraction: f64) -> Instant {
    now + REARM_WINDOW.mul_f64(fraction.clamp(0.0, 1.0))
}

/// Sleeps until `at`; pending for ever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// LISTENs what is wanted and not listened to (calling `listened` for each), UNLISTENs what
/// is listened to and no longer wanted; the first failure stops it.
async fn sync(
    s: &mut Box<dyn ListenSession>,
    wanted: &HashSet<String>,
    listening: &mut HashSet<String>,
    mut listened: impl FnMut(&str),
) -> Result<(), String> {
    let add: Vec<String> = wanted.difference(listening).cloned().collect();
    let remove: Vec<String> = listening.difference(wanted).cloned().collect();
    let steps = add
        .iter()
        .map(|c| (true, c))
        .chain(remove.iter().map(|c| (false, c)));
    for (adding, channel) in steps {
        // Database-neutral: the command is LISTEN on PostgreSQL, DBMS_ALERT.REGISTER on Oracle.
        let (verb, command) = if adding {
            ("subscribe to channel", s.listen(channel))
        } else {
            ("unsubscribe from channel", s.unlisten(channel))
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
            Ok(Ok(())) if adding => {
                listening.insert(channel.clone());
                listened(channel);
            }
            Ok(Ok(())) => {
                listening.remove(channel);
            }
            Ok(Err(e)) => return Err(format!("{verb} {channel}: {e}")),
            Err(_) => return Err(format!("{verb} {channel}: timed out")),
        }
    }
    Ok(())
}

/// The listener is down: say so once per outage (WARN), then at DEBUG per failed attempt.
fn went_down(inner: &Inner, name: &str, why: &str, was_down: &mut bool) {
    inner.listening.store(false, Ordering::Relaxed);
    if *was_down {
        tracing::debug!(connection = %name, error = %why, "notification listener still down");
    } else {
        *was_down = true;
        tracing::warn!(connection = %name, error = %why,
            "notification listener down: wake-ups degraded, interval polling goes on; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceError;
    use futures::FutureExt;

    use std::sync::atomic::AtomicU8;

    const PING_OK: u8 = 0;
    const PING_FAILS: u8 = 1;
    const PING_HANGS: u8 = 2;

    /// A scripted listener: records commands, delivers what the test sends, loses the session
    /// on demand, refuses to connect while `refuse` is set, counts pings and answers them as
    /// `ping` says, and panics in the next LISTEN once `panic_listen` is set.
    #[derive(Default)]
    struct Script {
        log: Mutex<Vec<String>>,
        refuse: AtomicBool,
        deliver: Mutex<Option<Deliver>>,
        lose: Notify,
        sessions: AtomicU64,
        pings: AtomicU64,
        ping: AtomicU8,
        panic_listen: AtomicBool,
    }

    struct ScriptSession(Arc<Script>);

    impl Listener for Arc<Script> {
        fn connect(
            &self,
            deliver: Deliver,
        ) -> BoxFuture<'_, Result<Box<dyn ListenSession>, SourceError>> {
            async move {
                if self.refuse.load(Ordering::SeqCst) {
                    return Err(SourceError::Connect("refused".into()));
                }
                self.sessions.fetch_add(1, Ordering::SeqCst);
                *self.deliver.lock().unwrap() = Some(deliver);
                self.log.lock().unwrap().push("connect".into());
                Ok(Box::new(ScriptSession(self.clone())) as Box<dyn ListenSession>)
            }
            .boxed()
        }
    }

    impl ListenSession for ScriptSession {
        fn listen<'a>(&'a mut self, c: &'a str) -> BoxFuture<'a, Result<(), SourceError>> {
            self.0.log.lock().unwrap().push(format!("listen {c}"));
            let panic = self.0.panic_listen.swap(false, Ordering::SeqCst);
            async move {
                assert!(!panic, "scripted panic in LISTEN");
                Ok(())
            }
            .boxed()
        }
        fn unlisten<'a>(&'a mut self, c: &'a str) -> BoxFuture<'a, Result<(), SourceError>> {
            self.0.log.lock().unwrap().push(format!("unlisten {c}"));
            async { Ok(()) }.boxed()
        }
        fn ping(&mut self) -> BoxFuture<'_, Result<(), SourceError>> {
            self.0.pings.fetch_add(1, Ordering::SeqCst);
            match self.0.ping.load(Ordering::SeqCst) {
                PING_OK => async { Ok(()) }.boxed(),
                PING_FAILS => async { Err(SourceError::Query("connection reset".into())) }.boxed(),
                _ => futures::future::pending().boxed(),
            }
        }
        fn lost(&mut self) -> BoxFuture<'_, String> {
            async move {
                self.0.lose.notified().await;
                "killed".to_string()
            }
            .boxed()
        }
    }

    impl Drop for ScriptSession {
        fn drop(&mut self) {
            self.0.sessions.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn hub(script: &Arc<Script>) -> Hub {
        Hub::new(
            "c",
            Arc::new(script.clone()),
            CancellationToken::new(),
            |f| {
                tokio::spawn(f);
            },
        )
    }

    fn deliver(script: &Script, channel: &str) {
        let d = script.deliver.lock().unwrap().clone().unwrap();
        d(channel);
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    fn log(script: &Script) -> Vec<String> {
        std::mem::take(&mut *script.log.lock().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn one_session_for_the_union_of_channels() {
        let script = Arc::new(Script::default());
        let hub = hub(&script);
        let mut a1 = hub.subscribe("a");
        let a2 = hub.subscribe("a");
        let mut b = hub.subscribe("b");
        settle().await;
        let mut got = log(&script);
        got.sort();
        assert_eq!(got, ["connect", "listen a", "listen b"]);
        assert_eq!(script.sessions.load(Ordering::SeqCst), 1);
        assert!(hub.status().listening);
        // Each new LISTEN wakes its channel once.
        a1.mark_seen();
        b.mark_seen();
        deliver(&script, "a");
        deliver(&script, "a");
        deliver(&script, "a");
        tokio::time::timeout(Duration::from_secs(1), a1.notified())
            .await
            .expect("a notification wakes a");
        a1.mark_seen();
        assert!(
            tokio::time::timeout(Duration::from_secs(1), a1.notified())
                .await
                .is_err(),
            "three notifications are one change"
        );
        assert!(
            tokio::time::timeout(Duration::from_secs(1), b.notified())
                .await
                .is_err(),
            "b is not woken by a"
        );
        // The channel stays while one user is left; goes with the last.
        drop(a2);
        settle().await;
        assert!(log(&script).is_empty());
        drop(a1);
        settle().await;
        assert_eq!(log(&script), ["unlisten a"]);
        drop(b);
        settle().await;
        // No channel left: the session is closed (which ends its LISTENs).
        assert!(log(&script).is_empty());
        assert_eq!(script.sessions.load(Ordering::SeqCst), 0);
        assert_eq!(hub.status().channels, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_session_reconnects_and_wakes_every_channel() {
        let script = Arc::new(Script::default());
        let hub = hub(&script);
        let mut a = hub.subscribe("a");
        let mut b = hub.subscribe("b");
        settle().await;
        a.mark_seen();
        b.mark_seen();
        log(&script);
        script.refuse.store(true, Ordering::SeqCst);
        script.lose.notify_one();
        settle().await;
        assert!(!hub.status().listening, "down while the database refuses");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(script.sessions.load(Ordering::SeqCst), 0);
        script.refuse.store(false, Ordering::SeqCst);
        // The next attempt comes within BACKOFF_MAX; the re-arm wakes within the window after it.
        tokio::time::sleep(BACKOFF_MAX + REARM_WINDOW + Duration::from_secs(1)).await;
        let mut got = log(&script);
        got.sort();
        assert_eq!(got, ["connect", "listen a", "listen b"]);
        let status = hub.status();
        assert!(status.listening);
        assert_eq!(status.reconnects, 1);
        for w in [&mut a, &mut b] {
            assert!(
                w.rx.has_changed().unwrap(),
                "every channel is woken after a reconnect"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pings_keep_their_cadence_while_channels_churn() {
        let script = Arc::new(Script::default());
        let hub = hub(&script);
        let _base = hub.subscribe("base");
        settle().await;
        let connected = Instant::now();
        // A channel added or removed every 3 s for a minute: far more often than PING_EVERY.
        let mut churn = None;
        for i in 0..20 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            churn = match churn {
                Some(_) => None,
                None => Some(hub.subscribe(&format!("c{i}"))),
            };
            settle().await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = log(&script);
        assert_eq!(got.iter().filter(|l| l.starts_with("listen c")).count(), 10);
        assert_eq!(
            got.iter().filter(|l| l.starts_with("unlisten c")).count(),
            10
        );
        // 60.5 s after the connect: pings at 15, 30, 45 and 60 s, none postponed by the churn.
        let due = (connected.elapsed().as_secs_f64() / PING_EVERY.as_secs_f64()).floor() as u64;
        assert_eq!(due, 4);
        assert_eq!(script.pings.load(Ordering::SeqCst), due);
        assert_eq!(got.iter().filter(|l| *l == "connect").count(), 1);
        assert!(hub.status().listening);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_or_unanswered_ping_brings_the_listener_down() {
        let margin = Duration::from_millis(10);
        for (mode, down_at) in [
            (PING_FAILS, PING_EVERY),
            (PING_HANGS, PING_EVERY + COMMAND_TIMEOUT),
        ] {
            let script = Arc::new(Script::default());
            script.ping.store(mode, Ordering::SeqCst);
            let hub = hub(&script);
            let _a = hub.subscribe("a");
            settle().await;
            assert!(hub.status().listening);
            tokio::time::sleep(down_at - margin).await;
            assert!(
                hub.status().listening,
                "mode {mode}: up until the ping's verdict"
            );
            // The first reconnect waits at least BACKOFF_MIN: the outage is visible meanwhile.
            tokio::time::sleep(margin * 2).await;
            settle().await;
            assert!(!hub.status().listening, "mode {mode}: down after the ping");
            assert_eq!(script.sessions.load(Ordering::SeqCst), 0, "mode {mode}");
            script.ping.store(PING_OK, Ordering::SeqCst);
            tokio::time::sleep(BACKOFF_MIN * 2 + margin).await;
            settle().await;
            let status = hub.status();
            assert!(status.listening, "mode {mode}: back");
            assert_eq!(status.reconnects, 1, "mode {mode}");
            assert_eq!(script.sessions.load(Ordering::SeqCst), 1, "mode {mode}");
        }
    }

    #[test]
    fn the_wake_budget_is_a_share_of_the_pool_and_at_least_one() {
        for (pool, share, want) in [
            (4, 50, 2),
            (2, 50, 1),
            (1, 50, 1),
            (1, 100, 1),
            (10, 25, 2),
            (10, 100, 10),
            (0, 50, 1),
            (usize::MAX, 100, usize::MAX / 100),
        ] {
            assert_eq!(wake_budget(pool, share), want, "pool {pool}, {share}%");
        }
    }

    #[test]
    fn the_wake_budget_follows_the_sessions_the_gate_allows() {
        let slots = Arc::new(Slots::new(4));
        let budget = Budget::share_of(slots.clone(), 50);
        assert_eq!(budget.limit(), 2);
        let a = budget.try_take().unwrap();
        let b = budget.try_take().unwrap();
        assert!(budget.try_take().is_none(), "2 of a pool of 4");
        // The server refuses the pool its third and fourth sessions: the gate lets polls
        // have 2, and wake polls may hold 1 of them, not 2 of pool_size.
        slots.retire_for_test(2);
        assert_eq!(slots.capacity(), 2);
        assert_eq!(budget.limit(), 1);
        // The wake polls already running finish; the slot over the budget is retired.
        drop(a);
        assert!(budget.try_take().is_none(), "b still holds the one slot");
        drop(b);
        let c = budget.try_take().unwrap();
        assert!(budget.try_take().is_none(), "one at a time now");
        drop(c);
        // Down to one session: still one wake poll (never none, or wakes would stop).
        slots.retire_for_test(1);
        assert_eq!(budget.limit(), 1);
        assert!(budget.try_take().is_some());
    }

    /// A pooled source behind `slots` with the scripted listener, for the hub's wiring.
    struct Gated {
        slots: Arc<Slots>,
        listener: Arc<Script>,
    }

    impl Source for Gated {
        fn kind(&self) -> &'static str {
            "gated"
        }
        fn driver(&self) -> Result<String, SourceError> {
            Ok("gated".into())
        }
        fn pool(&self) -> crate::source::PoolStatus {
            crate::source::PoolStatus {
                max: 8,
                ..Default::default()
            }
        }
        fn slots(&self) -> Option<Arc<Slots>> {
            Some(self.slots.clone())
        }
        fn listener(&self) -> Option<Arc<dyn Listener>> {
            Some(Arc::new(self.listener.clone()))
        }
        fn server_info<'a>(
            &'a self,
            _: Duration,
        ) -> BoxFuture<'a, Result<crate::source::ServerInfo, SourceError>> {
            async { Err(SourceError::Unsupported("gated".into())) }.boxed()
        }
        fn query<'a>(
            &'a self,
            _: &'a str,
            _: Duration,
        ) -> BoxFuture<'a, Result<crate::source::Cell, SourceError>> {
            async { Err(SourceError::Unsupported("gated".into())) }.boxed()
        }
    }

    #[tokio::test]
    async fn a_hubs_budget_is_a_share_of_the_gate_not_of_pool_size() {
        // pool_size 8, but the server let the pool have 3 sessions: 50 % is 1, not 4.
        let slots = Arc::new(Slots::new(8));
        slots.retire_for_test(5);
        let source = Gated {
            slots: slots.clone(),
            listener: Arc::new(Script::default()),
        };
        let hubs = Hubs::new(CancellationToken::new(), TaskTracker::new(), 50);
        let wake = hubs.subscribe("c", &source, "jobs").unwrap();
        let budget = wake.budget_for_test();
        assert_eq!(budget.limit(), 1);
        let _one = budget.try_take().unwrap();
        assert!(budget.try_take().is_none());
    }

    #[test]
    fn reconnect_waits_are_jittered_within_bounds() {
        // Whatever the random draw, each wait is between half and all of a ceiling that
        // doubles from 200 ms to BACKOFF_MAX: never below 100 ms, never above 10 s.
        for fraction in [0.0, 0.25, 0.5, 0.999, 1.0] {
            let mut backoff = Backoff::new();
            let mut ceiling = Duration::from_millis(200);
            for attempt in 0..20 {
                let wait = backoff.next(fraction);
                assert!(
                    wait >= ceiling / 2 && wait <= ceiling,
                    "fraction {fraction}, attempt {attempt}: {wait:?} for ceiling {ceiling:?}"
                );
                assert!((BACKOFF_MIN..=BACKOFF_MAX).contains(&wait));
                ceiling = (ceiling * 2).min(BACKOFF_MAX);
            }
            backoff.reset();
            assert!(backoff.next(fraction) <= Duration::from_millis(200));
        }
        let mut backoff = Backoff::new();
        assert_eq!(backoff.next(0.0), BACKOFF_MIN);
        for _ in 0..10 {
            backoff.next(0.5);
        }
        assert_eq!(backoff.next(1.0), BACKOFF_MAX);
        assert_eq!(backoff.next(0.0), BACKOFF_MAX / 2);
        // Real draws: spread, not one fixed value.
        let firsts: HashSet<Duration> = (0..1000)
            .map(|_| {
                let f = random_fraction();
                assert!((0.0..1.0).contains(&f));
                Backoff::new().next(f)
            })
            .collect();
        assert!(firsts.len() > 500, "{} distinct first waits", firsts.len());
        assert!(
            firsts
                .iter()
                .all(|w| (BACKOFF_MIN..=BACKOFF_MIN * 2).contains(w))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_reconnect_wakes_are_spread_over_the_rearm_window() {
        const N: usize = 200;
        let script = Arc::new(Script::default());
        let hub = hub(&script);
        let mut wakes: Vec<Wake> = (0..N).map(|i| hub.subscribe(&format!("ch{i}"))).collect();
        settle().await;
        // A channel's first LISTEN (no outage) wakes it at once.
        assert!(wakes.iter().all(|w| w.rx.has_changed().unwrap()));
        for w in &mut wakes {
            w.mark_seen();
        }
        script.lose.notify_one();
        settle().await;
        assert!(!hub.status().listening);
        // Step through the reconnect and the window 10 ms at a time, noting when each wakes.
        let step = Duration::from_millis(10);
        let window_steps = (REARM_WINDOW.as_millis() / step.as_millis()) as u32;
        let mut reconnected: Option<u32> = None;
        let mut woken: Vec<Option<u32>> = vec![None; N];
        for k in 0..(20 + window_steps + 10) {
            tokio::time::sleep(step).await;
            settle().await;
            if reconnected.is_none() && hub.status().listening {
                reconnected = Some(k);
            }
            for (w, at) in wakes.iter().zip(woken.iter_mut()) {
                if at.is_none() && w.rx.has_changed().unwrap() {
                    *at = Some(k);
                }
            }
        }
        let r = reconnected.expect("reconnected within the first backoff");
        assert_eq!(hub.status().reconnects, 1);
        let woken: Vec<u32> = woken
            .into_iter()
            .map(|k| k.expect("every channel is woken after a reconnect"))
            .collect();
        assert!(
            woken.iter().all(|&k| k >= r && k <= r + window_steps),
            "every channel woken within {REARM_WINDOW:?} of the reconnect (step {r}): {woken:?}"
        );
        let mut per_step: HashMap<u32, usize> = HashMap::new();
        for k in &woken {
            *per_step.entry(*k).or_default() += 1;
        }
        let busiest = per_step.values().max().copied().unwrap_or(0);
        assert!(
            busiest <= N / 10,
            "{busiest} of {N} channels woken in one 10 ms step"
        );
        assert!(
            per_step.len() >= window_steps as usize / 2,
            "wakes spread over only {} steps",
            per_step.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_session_task_is_reported_down_and_restarted() {
        let script = Arc::new(Script::default());
        let hub = hub(&script);
        let mut a = hub.subscribe("a");
        settle().await;
        assert!(hub.status().listening);
        a.mark_seen();
        log(&script);
        // The next LISTEN panics, inside the hub's task.
        script.panic_listen.store(true, Ordering::SeqCst);
        let mut b = hub.subscribe("b");
        b.mark_seen();
        settle().await;
        let status = hub.status();
        assert!(!status.listening, "listener_up is 0 once the task died");
        assert_eq!(
            script.sessions.load(Ordering::SeqCst),
            0,
            "the dead task's session is closed"
        );
        assert_eq!(log(&script), ["listen b"]);
        // Restarted after a jittered backoff (at most 200 ms the first time).
        tokio::time::sleep(BACKOFF_MIN * 2 + Duration::from_millis(10)).await;
        settle().await;
        let status = hub.status();
        assert!(status.listening, "the hub listens again after the restart");
        assert_eq!(status.reconnects, 1);
        assert_eq!(script.sessions.load(Ordering::SeqCst), 1);
        let mut got = log(&script);
        got.sort();
        assert_eq!(got, ["connect", "listen a", "listen b"]);
        // The restart re-arms like a reconnect: every channel is woken within the window, and
        // notifications reach the pollers again.
        tokio::time::sleep(REARM_WINDOW).await;
        for w in [&mut a, &mut b] {
            assert!(w.rx.has_changed().unwrap());
            w.mark_seen();
        }
        deliver(&script, "b");
        assert!(b.rx.has_changed().unwrap());
        assert!(!a.rx.has_changed().unwrap());
    }
}
