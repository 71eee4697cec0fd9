//! The registry: key → poller. Read-mostly: a handler whose spec-cache entry remembers its
//! poller reaches it through an [`EntryCache`] with no lock; otherwise it takes a read lock to
//! find its poller and touch its clock; a miss takes the write lock once to create it. A janitor evicts pollers that
//! have had no stream and no call for the idle timeout. No lock is held across an `.await`.
//!
//! A poller task that ends for any reason but eviction or shutdown (a panic in a driver, say)
//! is never mistaken for a live one: its readers answer UNAVAILABLE ("poller stopped: …"), an
//! ERROR line and `orascale_poller_restarts_total` record it, and the next call replaces it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::poller::{Named, Origin, Poller, Wakes};
use super::shares::Shares;
use super::sources::Sources;
use super::state::Staleness;
use super::stats::PollerStatus;
use super::supervise;
use super::wake::{Hubs, Wanted};
use super::{EngineError, PollState, PollerKey, Reading, WakeKey};
use crate::config::EngineConfig;
use crate::source::Source;
use crate::telemetry::metrics as m;

/// One live poller as the handlers see it.
pub struct Entry {
    /// The poller's key, so a stream can find the poller's successor without a copy of its own.
    key: PollerKey,
    rx: watch::Receiver<PollState>,
    /// Milliseconds since the registry's epoch of the latest call or stream.
    last_used_ms: AtomicU64,
    streams: AtomicUsize,
    cancel: CancellationToken,
    /// Calls made before the first result wait, but never past `created + first_result_wait`.
    created: Instant,
    /// The ScaledObject the poller is named after in logs and per-poller metrics (shared with
    /// the poller task).
    origin: Arc<Named>,
    /// Why the poller task ended, when it ended on its own (not evicted, not shut down).
    stopped: Arc<OnceLock<String>>,
    /// The wake-up channels its users ask for (the poller holds their union).
    wanted: Wanted,
}

/// `last_used_ms` of an evicted entry: a tombstone no touch can overwrite.
const EVICTED: u64 = u64::MAX;

impl Entry {
    /// Records a use at `now_ms`; false if the entry was evicted first. Eviction and use are
    /// one compare-and-swap on the same word, so either the use lands first (and the janitor's
    /// swap fails: the poller stays) or the eviction does (and the use fails: the caller takes
    /// the registry's path). A use never lands on an evicted poller.
    fn touch(&self, now_ms: u64) -> bool {
        // A word already past `now_ms` needs no write, so most calls read and do not write (a
        // write per call to a word every worker writes moves its cache line between cores on
        // every call). A janitor's swap prepared on an older word fails as it would after our
        // write. One prepared on this very word judged idleness from a use later than ours:
        // it evicts only if that later use is `idle_ms` old by its clock, so our use, read
        // from a clock no later, would have been judged idle too; in that case (a caller
        // stalled between reading the clock and here for the whole idle timeout) the use is
        // answered from the poller the janitor evicts right after, as it would be had the use
        // written its stale time first. (Equal is not enough: a use at the very millisecond a
        // janitor read must still make its swap fail.)
        let last = self.last_used_ms.load(Ordering::Acquire);
        if last == EVICTED {
            return false;
        }
        if last > now_ms {
            return true;
        }
        // Always a new word (never the one a janitor may have read), so its swap fails.
        self.last_used_ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                (last != EVICTED).then_some(now_ms.max(last.saturating_add(1)).min(EVICTED - 1))
            })
            .is_ok()
    }

    /// Evicts the entry if it has had no stream and no use for `idle_ms` at `now_ms`; true when
    /// it did. Under the registry's write lock (streams only change under that lock).
    fn evict_if_idle(&self, now_ms: u64, idle_ms: u64) -> bool {
        self.evict_if_idle_since(self.last_used_ms.load(Ordering::Acquire), now_ms, idle_ms)
    }

    /// The janitor's decision on the last use it read (`last`) and its swap, apart, so a test
    /// can put a use between them.
    fn evict_if_idle_since(&self, last: u64, now_ms: u64, idle_ms: u64) -> bool {
        last != EVICTED
            && self.streams.load(Ordering::SeqCst) == 0
            && now_ms.saturating_sub(last) >= idle_ms
            && self
                .last_used_ms
                .compare_exchange(last, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Why the poller is gone, if its task ended without being asked to.
    fn stopped(&self) -> Option<String> {
        if let Some(reason) = self.stopped.get() {
            return Some(reason.clone());
        }
        // The sender lives in the task: gone means the task is gone.
        (self.rx.has_changed().is_err() && !self.cancel.is_cancelled())
            .then(|| "the poller task ended".to_string())
    }

    /// A call through a caller's cache at `now_ms`: its use recorded ([`Entry::touch`]; false,
    /// and nothing else done, if the entry was evicted first), the poller adopted by `origin`,
    /// `wake` wanted.
    fn use_cached(&self, now_ms: u64, origin: &Origin, wake: Option<&WakeKey>) -> bool {
        if !self.touch(now_ms) {
            return false;
        }
        self.origin.adopt(origin);
        if let Some(w) = wake {
            self.wanted.touch(w, now_ms, false);
        }
        true
    }

    /// Ok while the poller runs; else the answer every reader gives: "poller stopped: why".
    fn running(&self) -> Result<(), String> {
        match self.stopped() {
            Some(reason) => Err(format!("poller stopped: {reason}")),
            None => Ok(()),
        }
    }
}

/// A caller's memory of its trigger's poller (the spec cache keeps one per ScaledObject), so a
/// call after the first reaches the poller without hashing the key, taking the registry lock
/// or touching a reference count. It holds the entry, never the poller: a poller that was
/// evicted, stopped or shut down is never used through it (its task is gone or going, and an
/// evicted entry refuses every use, `Entry::touch`); the call then takes the registry's
/// path and remembers the result, which lets the old entry go.
#[derive(Default)]
pub struct EntryCache(arc_swap::ArcSwapOption<Entry>);

impl EntryCache {
    /// Whether the entry's poller runs: not evicted, its task not ended (the task holds the
    /// watch's sender, so a closed channel means it ended), not stopped, not cancelled (by
    /// eviction, replacement or shutdown; its task may not have ended yet).
    fn runs(entry: &Entry) -> bool {
        entry.last_used_ms.load(Ordering::Acquire) != EVICTED
            && entry.rx.has_changed().is_ok()
            && entry.stopped.get().is_none()
            && !entry.cancel.is_cancelled()
    }

    /// What a remembered entry can keep in memory after its poller is gone, until the next
    /// call remembers its successor: the entry with its copy of the key, the watch channel's
    /// state (a failure message, which quotes the query), the names. The spec cache charges it
    /// to its byte budget.
    pub fn retained_bytes(key: &PollerKey) -> usize {
        const STATE_AND_NAMES: usize = 1024;
        std::mem::size_of::<Entry>()
            + std::mem::size_of::<PollState>()
            + STATE_AND_NAMES
            + key.connection.len()
            + 2 * key.query.len()
    }

    #[cfg(test)]
    fn live(&self) -> Option<Arc<Entry>> {
        self.0.load_full().filter(|e| EntryCache::runs(e))
    }

    fn remember(&self, entry: &Arc<Entry>) {
        self.0.store(Some(entry.clone()));
    }

    /// The ScaledObject `who` no longer uses this poller (the spec cache dropped its entry for
    /// an edited map): the poller stops being named after it.
    pub fn released(&self, who: &Origin) {
        if let Some(entry) = self.0.load_full() {
            entry.origin.left(who);
        }
    }
}

impl std::fmt::Debug for EntryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EntryCache")
    }
}

pub struct Registry {
    /// The databases, configured and made from credentials, and their wake-up hubs.
    sources: Sources,
    config: EngineConfig,
    entries: RwLock<HashMap<PollerKey, Arc<Entry>>>,
    /// Open streams, for `max_streams`.
    streams: AtomicUsize,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    epoch: Instant,
    /// Pollers replaced after their task ended on its own.
    restarts: AtomicU64,
    /// The namespaces' shares of each pool, which the pollers' interval polls take.
    shares: Arc<Shares>,
}

impl Registry {
    /// Builds the registry and starts its janitor on `tracker`; everything stops with `shutdown`.
    pub fn new(
        sources: BTreeMap<String, Arc<dyn Source>>,
        config: EngineConfig,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Arc<Self> {
        let shares = Shares::new(config.namespace_pool_share);
        let registry = Arc::new(Registry {
            sources: Sources::new(
                sources,
                Hubs::new(shutdown.clone(), tracker.clone(), config.wake_poll_share),
            ),
            config,
            entries: RwLock::new(HashMap::new()),
            streams: AtomicUsize::new(0),
            shutdown,
            tracker,
            epoch: Instant::now(),
            restarts: AtomicU64::new(0),
            shares,
        });
        let janitor = Arc::downgrade(&registry);
        let every = (registry.config.idle_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(30));
        let stop = registry.shutdown.clone();
        registry.tracker.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticks.tick() => match janitor.upgrade() {
                        Some(r) => r.evict_idle(),
                        None => return,
                    },
                }
            }
        });
        registry
    }

    /// A registry over in-memory SQLite connections named `names`, for the unit tests of the
    /// modules above the engine (which do not name `source` themselves: tests/suite/architecture.rs).
    #[cfg(test)]
    pub(crate) fn in_memory(names: &[&str], shutdown: CancellationToken) -> Arc<Self> {
        let sources = names
            .iter()
            .map(|n| {
                let source: Arc<dyn Source> = Arc::new(crate::source::sqlite::Sqlite::new(
                    n,
                    crate::config::SqliteTarget::Memory,
                    2,
                ));
                (n.to_string(), source)
            })
            .collect();
        Registry::new(
            sources,
            EngineConfig::default(),
            shutdown,
            TaskTracker::new(),
        )
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Pollers replaced because their task had ended on its own, since start.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Polls completed by the live pollers, in all (for benchmarks and tests).
    pub fn total_polls(&self) -> u64 {
        self.entries
            .read()
            .expect("registry lock")
            .values()
            .map(|e| e.rx.borrow().polls)
            .sum()
    }

    /// Live pollers.
    pub fn pollers(&self) -> usize {
        self.entries.read().expect("registry lock").len()
    }

    /// The staleness limits of a poller's last good value.
    pub fn max_age(&self, key: &PollerKey) -> Staleness {
        Staleness::new(key.poll_interval, self.config.stale_after_polls)
    }

    /// The value to answer with now. The first call for a new poller waits up to
    /// `first_result_wait` for its first result (as does any call in that window); every other
    /// call answers from the cache at once. `source` is the trigger's own source when it carries
    /// credentials ([`Registry::prepare_source`]); `wake` its wake-up channel, if any.
    pub async fn read(
        &self,
        key: &PollerKey,
        origin: &Origin,
        source: Option<&Arc<dyn Source>>,
        cache: Option<&EntryCache>,
        wake: Option<&WakeKey>,
    ) -> Result<Reading, EngineError> {
        self.read_at(Instant::now(), key, origin, source, cache, wake)
            .await
    }

    /// [`Registry::read`] judged at `now` (the caller's one clock read for the call).
    pub(crate) async fn read_at(
        &self,
        now: Instant,
        key: &PollerKey,
        origin: &Origin,
        source: Option<&Arc<dyn Source>>,
        cache: Option<&EntryCache>,
        wake: Option<&WakeKey>,
    ) -> Result<Reading, EngineError> {
        if let Some(answer) = cache.and_then(|c| self.read_cached(now, c, key, origin, wake)) {
            return answer;
        }
        let (entry, replaced) = self.find(key, origin, source, cache, wake)?;
        if let Some(reason) = replaced {
            return Err(EngineError::Unavailable(format!(
                "poller stopped: {reason}; a new poller was started for this trigger"
            )));
        }
        if !entry.rx.borrow().has_outcome() {
            let mut rx = entry.rx.clone();
            let wait = rx.wait_for(PollState::has_outcome);
            let _ = tokio::time::timeout_at(
                crate::source::deadline_after(entry.created, self.config.first_result_wait),
                wait,
            )
            .await;
        }
        entry.running().map_err(EngineError::Unavailable)?;
        entry
            .rx
            .borrow()
            .value(Instant::now().max(now), self.max_age(key))
            .map_err(EngineError::Unavailable)
    }

    /// The answer through the caller's memory of its poller, when that poller runs and has a
    /// result: no registry lock and no reference count; the shared words written are the
    /// cancellation token's mutex ([`EntryCache::runs`]), the watch channel's read lock (held
    /// only to copy the answer out) and the use (at most once a millisecond, [`Entry::touch`];
    /// with `wake`, the wake-up's use too). `None` sends the call the registry's way.
    pub(crate) fn read_cached(
        &self,
        now: Instant,
        cache: &EntryCache,
        key: &PollerKey,
        origin: &Origin,
        wake: Option<&WakeKey>,
    ) -> Option<Result<Reading, EngineError>> {
        let guard = cache.0.load();
        let entry = guard.as_deref().filter(|e| EntryCache::runs(e))?;
        let answer = {
            let state = entry.rx.borrow();
            if !state.has_outcome() {
                return None;
            }
            state.value(now, self.max_age(key))
        };
        if !entry.use_cached(self.ms_at(now), origin, wake) {
            return None;
        }
        Some(answer.map_err(EngineError::Unavailable))
    }

    /// The latest poll's value if that poll succeeded, at once: never waits for a first
    /// poll (it creates the poller on a miss), never applies the staleness allowance. For
    /// what must not block on or fail because of a database, such as a metric spec's target
    /// read from a query (GetMetricSpec): every error is "no good value now", and why.
    pub fn latest(
        &self,
        key: &PollerKey,
        origin: &Origin,
        source: Option<&Arc<dyn Source>>,
        cache: Option<&EntryCache>,
        wake: Option<&WakeKey>,
    ) -> Result<Reading, EngineError> {
        let (entry, _) = self.find(key, origin, source, cache, wake)?;
        entry.running().map_err(EngineError::Unavailable)?;
        entry.rx.borrow().latest().map_err(EngineError::Unavailable)
    }

    /// Makes sure the poller exists (admitting it under the limits on a miss) and records a
    /// use, without waiting or reading: creating a poller never queries synchronously. A
    /// trigger's target poller is admitted only after its metric poller, so target pollers
    /// never take the slots the metric pollers need (`--max-pollers`).
    pub fn admit(
        &self,
        key: &PollerKey,
        origin: &Origin,
        source: Option<&Arc<dyn Source>>,
        cache: Option<&EntryCache>,
        wake: Option<&WakeKey>,
    ) -> Result<(), EngineError> {
        self.find(key, origin, source, cache, wake).map(drop)
    }

    /// The poller through the caller's cache, else the registry's path (remembered); touched,
    /// adopted by `origin`, `wake` wanted. With it, why the poller it replaced had stopped,
    /// when this lookup replaced one (only the registry's path can).
    fn find(
        &self,
        key: &PollerKey,
        origin: &Origin,
        source: Option<&Arc<dyn Source>>,
        cache: Option<&EntryCache>,
        wake: Option<&WakeKey>,
    ) -> Result<(Arc<Entry>, Option<String>), EngineError> {
        let now = self.now_ms();
        let cached = cache.and_then(|c| c.0.load_full().filter(|e| EntryCache::runs(e)));
        if let Some(entry) = cached.filter(|e| e.use_cached(now, origin, wake)) {
            return Ok((entry, None));
        }
        let (entry, replaced) = self.entry_with(key, origin, source, |e| {
            if let Some(w) = wake {
                e.wanted.touch(w, now, false);
            }
        })?;
        if let Some(c) = cache {
            c.remember(&entry);
        }
        Ok((entry, replaced))
    }

    /// A stream's place under `--max-streams` when it follows no poller (a metric spec stream
    /// of a trigger without a target query): counted and reported like a subscription.
    pub fn stream_slot(self: &Arc<Self>) -> Result<StreamSlot, EngineError> {
        let max = self.config.limits.max_streams;
        if self
            .streams
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(EngineError::ResourceExhausted(format!(
                "this server already has {max} open streams (--max-streams)"
            )));
        }
        m::stream_opened();
        Ok(StreamSlot {
            registry: self.clone(),
        })
    }

    /// The source of a connection made from a trigger's own credentials ([`Sources::prepare`]).
    pub async fn prepare_source(
        &self,
        conn: &crate::config::ConnectionConfig,
    ) -> Result<Arc<dyn Source>, EngineError> {
        self.sources.prepare(conn).await
    }

    /// A stream's view of a poller; it keeps the poller (and its wake-up channel) alive until
    /// dropped.
    pub fn subscribe(
        self: &Arc<Self>,
        key: &PollerKey,
        origin: &Origin,
        source: Option<&Arc<dyn Source>>,
        wake: Option<&WakeKey>,
    ) -> Result<Subscription, EngineError> {
        let slot = self.stream_slot()?;
        self.subscribe_in(slot, key, origin, source, wake)
            .map_err(|(err, _)| err)
    }

    /// [`Registry::subscribe`] in a place under `--max-streams` taken already; on a refusal
    /// (a poller limit, say) the place comes back with the error, so the stream can go on
    /// without a poller.
    pub fn subscribe_in(
        self: &Arc<Self>,
        slot: StreamSlot,
        key: &PollerKey,
        origin: &Origin,
        source: Option<&Arc<dyn Source>>,
        wake: Option<&WakeKey>,
    ) -> Result<Subscription, (EngineError, StreamSlot)> {
        let now = self.now_ms();
        let entry = match self.entry_with(key, origin, source, |e| {
            e.streams.fetch_add(1, Ordering::SeqCst);
            if let Some(w) = wake {
                e.wanted.touch(w, now, true);
            }
        }) {
            Ok((e, _)) => e,
            Err(err) => return Err((err, slot)),
        };
        Ok(Subscription {
            rx: entry.rx.clone(),
            max_age: self.max_age(key),
            entry,
            slot,
            source: source.cloned(),
            wake: wake.cloned(),
        })
    }

    /// Finds or creates the poller, touches it and runs `also` under the same lock, so the
    /// janitor never sees a half-registered user. A poller whose task has ended on its own is
    /// replaced; the reason comes back with the new entry.
    fn entry_with(
        &self,
        key: &PollerKey,
        origin: &Origin,
        given: Option<&Arc<dyn Source>>,
        also: impl Fn(&Entry),
    ) -> Result<(Arc<Entry>, Option<String>), EngineError> {
        if self.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let now = self.now_ms();
        {
            let entries = self.entries.read().expect("registry lock");
            if let Some(e) = entries.get(key)
                && e.stopped().is_none()
            {
                e.touch(now);
                e.origin.adopt(origin);
                also(e);
                return Ok((e.clone(), None));
            }
        }
        let mut entries = self.entries.write().expect("registry lock");
        let mut replaced = None;
        if let Some(e) = entries.get(key) {
            match e.stopped() {
                None => {
                    e.touch(now);
                    e.origin.adopt(origin);
                    also(e);
                    return Ok((e.clone(), None));
                }
                Some(reason) => {
                    let old = entries.remove(key).expect("present");
                    old.cancel.cancel();
                    m::pollers_stopped(1);
                    m::poller_restarted();
                    self.restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(connection = %key.connection, namespace = %origin.namespace,
                        scaledobject = %origin.name, metric = %origin.metric,
                        reason = %reason, "replacing a stopped poller");
                    replaced = Some(reason);
                }
            }
        }
        let limits = &self.config.limits;
        if entries.len() >= limits.max_pollers {
            return Err(EngineError::ResourceExhausted(format!(
                "this server already polls {} distinct triggers (--max-pollers {}); reuse an existing trigger or raise the limit",
                entries.len(),
                limits.max_pollers
            )));
        }
        let in_namespace = entries
            .values()
            .filter(|e| e.origin.get().namespace == origin.namespace)
            .count();
        if in_namespace >= limits.max_pollers_per_namespace {
            return Err(EngineError::ResourceExhausted(format!(
                "namespace {:?} already has {in_namespace} distinct triggers (--max-pollers-per-namespace {})",
                origin.namespace, limits.max_pollers_per_namespace
            )));
        }
        let source = match (self.sources.get(&key.connection), given) {
            (Some(s), _) => s,
            // A connection from metadata credentials, adopted under the entries lock: the
            // janitor, which drops unused ones under the same lock, cannot race it.
            (None, Some(s)) => {
                self.sources.adopt(&key.connection, s, limits.max_pollers)?;
                s.clone()
            }
            // metadata::parse checks connection names first; this is a programming error guard.
            (None, None) => {
                return Err(EngineError::Unavailable(format!(
                    "connection {:?} is not configured",
                    key.connection
                )));
            }
        };
        let (tx, rx) = watch::channel(PollState::default());
        let cancel = self.shutdown.child_token();
        let stopped = Arc::new(OnceLock::new());
        let named = Arc::new(Named::new(origin.clone()));
        let entry = Arc::new(Entry {
            key: key.clone(),
            rx,
            last_used_ms: AtomicU64::new(now),
            streams: AtomicUsize::new(0),
            cancel: cancel.clone(),
            created: Instant::now(),
            origin: named.clone(),
            stopped: stopped.clone(),
            wanted: Wanted::default(),
        });
        also(&entry);
        entries.insert(key.clone(), entry.clone());
        m::pollers_started(1);
        tracing::info!(connection = %key.connection, namespace = %origin.namespace,
            scaledobject = %origin.name, metric = %origin.metric,
            poll_interval = %humantime::format_duration(key.poll_interval),
            query_timeout = %humantime::format_duration(key.query_timeout),
            pollers = entries.len(), "poller created");
        // The poller holds the channels its users want on its connection's hub (the hub is
        // made on first use; the registry owns it, the source only offers a listener).
        let wakes = {
            let hubs = self.sources.hubs().clone();
            let source = source.clone();
            let connection = key.connection.clone();
            Wakes {
                wanted: entry.wanted.watch(),
                subscribe: Box::new(move |channel| {
                    hubs.subscribe(&connection, source.as_ref(), channel)
                }),
            }
        };
        let poller = Poller {
            key: key.clone(),
            source,
            tx,
            origin: named.clone(),
            wakes,
            series: m::PollSeries::new(crate::trigger::connection_label(&key.connection)),
            share: self.shares.join(&key.connection, &origin.namespace),
        };
        // The task owns the watch sender: however it ends, readers learn of it.
        let connection = key.connection.clone();
        supervise::spawn(
            "poller task",
            &self.tracker,
            poller.run(cancel.clone()),
            cancel,
            stopped,
            move |reason| {
                let origin = named.get();
                tracing::error!(connection = %connection, namespace = %origin.namespace,
                    scaledobject = %origin.name, metric = %origin.metric, reason = %reason,
                    "poller stopped; the next call for this trigger starts a new one");
            },
        );
        Ok((entry, replaced))
    }

    /// Stops pollers with no stream that nobody has called for the idle timeout. The log lines
    /// are written after the locks are released: a mass eviction (KEDA restarted elsewhere)
    /// never makes the calls that wait for the registry lock wait for the log too.
    pub fn evict_idle(&self) {
        let idle = humantime::format_duration(self.config.idle_timeout);
        self.evict_idle_then(|connection, origin| {
            tracing::info!(connection = %connection, namespace = %origin.namespace,
                scaledobject = %origin.name, metric = %origin.metric,
                idle = %idle, "poller evicted");
        });
    }

    /// [`Registry::evict_idle`], calling `log` for each evicted poller once every lock is
    /// released.
    fn evict_idle_then(&self, log: impl Fn(&str, &Origin)) {
        let idle_ms = self.config.idle_timeout.as_millis() as u64;
        let now = self.now_ms();
        let mut evicted: Vec<(String, Arc<Origin>)> = Vec::new();
        {
            let mut entries = self.entries.write().expect("registry lock");
            entries.retain(|key, e| {
                let idle = e.evict_if_idle(now, idle_ms);
                if idle {
                    e.cancel.cancel();
                    evicted.push((key.connection.clone(), e.origin.get()));
                }
                !idle
            });
            // A wake-up nobody asked for within the idle timeout goes like an idle poller.
            for e in entries.values() {
                e.wanted.expire(now.saturating_sub(idle_ms));
            }
            // Sources made from metadata credentials live as long as a poller uses them, and
            // their wake-up hubs (and listening sessions) with them.
            let in_use: std::collections::HashSet<&str> =
                entries.keys().map(|k| k.connection.as_str()).collect();
            self.sources.retain_used(&in_use);
        }
        m::pollers_stopped(evicted.len());
        for (connection, origin) in evicted {
            log(&connection, &origin);
        }
    }

    /// Every live poller's state, sorted by connection and metric.
    pub fn snapshot(&self) -> Vec<PollerStatus> {
        let now = Instant::now();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let entries: Vec<(PollerKey, Arc<Entry>)> = self
            .entries
            .read()
            .expect("registry lock")
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let mut out: Vec<PollerStatus> = entries
            .into_iter()
            // A poller whose object left it (an edited trigger) names nobody until another
            // object calls: never a series that names the wrong trigger.
            .filter(|(_, e)| !e.origin.orphaned())
            .map(|(key, e)| {
                let sample = e.rx.borrow().clone();
                let age = sample.good.map(|g| now.saturating_duration_since(g.at));
                let origin = e.origin.get();
                PollerStatus {
                    poller: key.id(),
                    connection: key.connection,
                    namespace: origin.namespace.clone(),
                    scaledobject: origin.name.clone(),
                    metric: origin.metric.clone(),
                    last_success_unix: age.map(|a| wall - a.as_secs_f64()),
                    sample_age: age,
                    consecutive_failures: sample.failure.map_or(0, |f| f.streak),
                    streams: e.streams.load(Ordering::Relaxed),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.connection, &a.metric, &a.poller).cmp(&(&b.connection, &b.metric, &b.poller))
        });
        out
    }

    /// The databases: pools, wake-ups, closing at shutdown.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }
}

/// An open StreamIsActive's hold on a poller. Kept small: there is one per open stream.
pub struct Subscription {
    entry: Arc<Entry>,
    rx: watch::Receiver<PollState>,
    max_age: Staleness,
    /// Its place under `--max-streams` (and the registry).
    slot: StreamSlot,
    source: Option<Arc<dyn Source>>,
    /// The stream's wake-up channel, held on the poller while the stream is open.
    wake: Option<WakeKey>,
}

impl Subscription {
    /// The value to judge activity by now, or why there is none.
    pub fn current(&self) -> Result<Reading, String> {
        self.entry.running()?;
        self.rx.borrow().value(Instant::now(), self.max_age)
    }

    /// Whether the poller behind this stream stopped on its own.
    pub fn poller_stopped(&self) -> bool {
        self.entry.stopped().is_some()
    }

    /// Moves the stream onto the trigger's live poller (the registry replaces a stopped one).
    pub fn renew(&mut self) -> Result<(), EngineError> {
        // The stopped poller's key and creator name the trigger (the same for every stream on it).
        let old = self.entry.clone();
        let now = self.slot.registry.now_ms();
        let wake = self.wake.as_ref();
        let (entry, _) = self.slot.registry.entry_with(
            &old.key,
            &old.origin.get(),
            self.source.as_ref(),
            |e| {
                e.streams.fetch_add(1, Ordering::SeqCst);
                if let Some(w) = wake {
                    e.wanted.touch(w, now, true);
                }
            },
        )?;
        self.entry.streams.fetch_sub(1, Ordering::SeqCst);
        if let Some(w) = wake {
            self.entry.wanted.stream_closed(w, now);
        }
        self.rx = entry.rx.clone();
        self.entry = entry;
        Ok(())
    }

    /// The latest poll's value when that poll succeeded, or why there is none: no staleness
    /// allowance (see [`PollState::latest_good`]).
    pub fn latest(&self) -> Result<Reading, String> {
        self.entry.running()?;
        self.rx.borrow().latest()
    }

    /// Waits for a new poller's first outcome (a value or an error), as the first calls for it
    /// wait ([`Registry::read`]): never past the poller's creation plus `first_result_wait`,
    /// so a stream on a poller that has been running a while never waits.
    pub async fn first_outcome(&self) {
        if self.rx.borrow().has_outcome() {
            return;
        }
        let mut rx = self.rx.clone();
        let wait = rx.wait_for(PollState::has_outcome);
        let deadline = crate::source::deadline_after(
            self.entry.created,
            self.slot.registry.config.first_result_wait,
        );
        let _ = tokio::time::timeout_at(deadline, wait).await;
    }

    /// Waits for the poller's next publish; `Err` when the poller has stopped.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.rx.changed().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.entry.streams.fetch_sub(1, Ordering::SeqCst);
        if let Some(w) = &self.wake {
            self.entry
                .wanted
                .stream_closed(w, self.slot.registry.now_ms());
        }
        // The slot's own drop gives back the place under --max-streams.
    }
}

/// A stream's place under `--max-streams` without a poller ([`Registry::stream_slot`]).
pub struct StreamSlot {
    registry: Arc<Registry>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.registry.streams.fetch_sub(1, Ordering::SeqCst);
        m::stream_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SqliteTarget;
    use crate::source::sqlite::Sqlite;

    fn registry(idle: Duration) -> (Arc<Registry>, CancellationToken) {
        let mut sources: BTreeMap<String, Arc<dyn Source>> = BTreeMap::new();
        sources.insert(
            "mem".into(),
            Arc::new(Sqlite::new("mem", SqliteTarget::Memory, 2)),
        );
        let cancel = CancellationToken::new();
        let config = EngineConfig {
            idle_timeout: idle,
            ..EngineConfig::default()
        };
        (
            Registry::new(sources, config, cancel.clone(), TaskTracker::new()),
            cancel,
        )
    }

    fn key(q: &str) -> PollerKey {
        PollerKey {
            connection: "mem".into(),
            query: q.into(),
            poll_interval: Duration::from_secs(1),
            query_timeout: Duration::from_secs(5),
            ignore_nulls: false,
        }
    }

    fn origin() -> Origin {
        Origin {
            namespace: "ns".into(),
            name: "so".into(),
            metric: "m".into(),
        }
    }

    #[tokio::test]
    async fn identical_keys_share_a_poller() {
        let (r, cancel) = registry(Duration::from_secs(600));
        assert_eq!(
            r.read(&key("select 5"), &origin(), None, None, None)
                .await
                .unwrap()
                .value,
            5.0
        );
        assert_eq!(
            r.read(&key("select 5"), &origin(), None, None, None)
                .await
                .unwrap()
                .value,
            5.0
        );
        assert_eq!(r.pollers(), 1);
        let mut other = key("select 5");
        other.poll_interval = Duration::from_secs(2);
        r.read(&other, &origin(), None, None, None).await.unwrap();
        assert_eq!(r.pollers(), 2);
        cancel.cancel();
        assert_eq!(
            r.read(&key("select 5"), &origin(), None, None, None)
                .await
                .unwrap_err(),
            EngineError::ShuttingDown
        );
    }

    #[tokio::test]
    async fn idle_pollers_are_evicted_but_not_while_streamed() {
        let (r, cancel) = registry(Duration::from_millis(300));
        r.read(&key("select 1"), &origin(), None, None, None)
            .await
            .unwrap();
        let sub = r
            .subscribe(&key("select 2"), &origin(), None, None)
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while r.pollers() != 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the unstreamed poller is evicted");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(r.pollers(), 1, "the streamed poller stays");
        drop(sub);
        tokio::time::timeout(Duration::from_secs(10), async {
            while r.pollers() != 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("evicted once its stream is gone");
        cancel.cancel();
    }

    #[tokio::test]
    async fn an_entry_cache_never_serves_an_evicted_or_shut_down_poller() {
        let (r, cancel) = registry(Duration::from_millis(300));
        let cache = EntryCache::default();
        let k = key("select 7");
        assert_eq!(
            r.read(&k, &origin(), None, Some(&cache), None)
                .await
                .unwrap()
                .value,
            7.0
        );
        assert!(cache.live().is_some());
        tokio::time::timeout(Duration::from_secs(10), async {
            while r.pollers() != 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("evicted");
        assert!(cache.live().is_none(), "an evicted poller is not live");
        // The next call takes the registry's path: a new poller, remembered.
        assert_eq!(
            r.read(&k, &origin(), None, Some(&cache), None)
                .await
                .unwrap()
                .value,
            7.0
        );
        assert_eq!(r.pollers(), 1);
        assert!(cache.live().is_some());
        cancel.cancel();
        assert_eq!(
            r.read(&k, &origin(), None, Some(&cache), None)
                .await
                .unwrap_err(),
            EngineError::ShuttingDown
        );
    }

    /// Through the cache, the staleness rule is the registry's own: after a failed poll the
    /// last good value while it is younger than the limit, then the error — never a value.
    #[tokio::test(start_paused = true)]
    async fn a_cached_read_keeps_the_staleness_limit() {
        // 7 at the first poll, an error at every later one.
        let failing = crate::source::SourceError::Unsupported("the flip failed".into());
        let script = crate::engine::poller::tests::script(
            Duration::ZERO,
            vec![Ok(crate::source::Cell::Number(7.0)), Err(failing)],
        );
        let mut sources: BTreeMap<String, Arc<dyn Source>> = BTreeMap::new();
        sources.insert("mem".into(), script);
        let cancel = CancellationToken::new();
        let r = Registry::new(
            sources,
            EngineConfig::default(),
            cancel.clone(),
            TaskTracker::new(),
        );
        let (k, cache) = (key("select 7"), EntryCache::default());
        let read = |r: &Registry| {
            r.read_cached(Instant::now(), &cache, &k, &origin(), None)
                .expect("a running poller with a result")
        };
        r.read(&k, &origin(), None, Some(&cache), None)
            .await
            .unwrap();
        tokio::time::sleep(k.poll_interval + Duration::from_millis(100)).await;
        assert!(cache.live().unwrap().rx.borrow().failure.is_some());
        assert_eq!(read(&r).unwrap().value, 7.0, "younger than the limit");
        tokio::time::sleep(r.max_age(&k).limit).await;
        let err = read(&r).unwrap_err().to_string();
        assert!(err.contains("the flip failed"), "{err}");
        assert!(err.contains("staleness limit"), "{err}");
        let general = r
            .read(&k, &origin(), None, None, None)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(general, err, "the general path says the same");
        cancel.cancel();
    }

    /// A call through the cache still asks for its wake-up channel, so the janitor never drops
    /// a channel that only such calls ask for.
    #[tokio::test]
    async fn a_cached_read_asks_for_its_wake_up() {
        let (r, cancel) = registry(Duration::from_secs(600));
        let (k, cache) = (key("select 6"), EntryCache::default());
        let wake = |channel: &str| WakeKey {
            channel: channel.into(),
            min_interval: Duration::from_millis(100),
        };
        r.read(&k, &origin(), None, Some(&cache), Some(&wake("jobs")))
            .await
            .unwrap();
        let entry = cache.live().unwrap();
        assert!(!entry.wanted.watch().borrow().contains(&wake("other")));
        r.read_cached(Instant::now(), &cache, &k, &origin(), Some(&wake("other")))
            .expect("cached")
            .unwrap();
        assert!(entry.wanted.watch().borrow().contains(&wake("other")));
        cancel.cancel();
    }

    /// A poller of a registry with a 10 min idle timeout, made by a read through a cache, and
    /// its entry as the cache remembers it.
    async fn remembered(query: &str) -> (Arc<Registry>, CancellationToken, Arc<Entry>) {
        let (r, cancel) = registry(Duration::from_secs(600));
        let cache = EntryCache::default();
        r.read(&key(query), &origin(), None, Some(&cache), None)
            .await
            .unwrap();
        let entry = cache.live().unwrap();
        (r, cancel, entry)
    }

    /// A use the word already covers writes nothing (most calls, a millisecond at a time) and
    /// still keeps the entry from a janitor's swap prepared before it.
    #[tokio::test]
    async fn a_use_already_recorded_writes_nothing() {
        let (_r, cancel, entry) = remembered("select 4").await;
        let word = || entry.last_used_ms.load(Ordering::Acquire);
        let t = word() + 10;
        assert!(entry.touch(t));
        assert_eq!(word(), t, "a later use is written");
        let seen = word();
        assert!(entry.touch(t));
        assert_eq!(
            word(),
            t + 1,
            "a use at the word's own millisecond moves it on"
        );
        assert!(entry.touch(t));
        assert!(entry.touch(t - 5));
        assert_eq!(word(), t + 1, "a use the word covers writes nothing");
        assert!(
            !entry.evict_if_idle_since(seen, t + 10_000, 1_000),
            "a janitor that read the word before the use at its own millisecond does not evict"
        );
        // A janitor that read the later word judged idleness from a use later than a covered
        // one, which it would have judged idle too: its swap lands (the caller had to stall
        // for the whole idle timeout between its clock and its touch).
        let later = word();
        assert!(entry.touch(t - 1));
        assert!(entry.evict_if_idle_since(later, t + 10_000, 1_000));
        assert!(!entry.touch(t + 2), "no use lands on an evicted entry");
        assert!(!entry.touch(t - 1), "covered or not");
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_use_and_an_eviction_are_linearizable() {
        let (_r, cancel, entry) = remembered("select 3").await;
        let idle = 1_000;
        let t0 = entry.last_used_ms.load(Ordering::Acquire);
        // A use after the janitor looked but before it swapped: the swap fails, the poller
        // stays — even a use at the very millisecond the janitor read.
        let seen = entry.last_used_ms.load(Ordering::Acquire);
        assert!(entry.touch(seen));
        assert!(!entry.evict_if_idle_since(seen, t0 + 2 * idle, idle));
        assert!(entry.touch(t0 + idle + 5));
        assert!(!entry.evict_if_idle(t0 + idle + 5, idle));
        // Idle: the eviction lands; any later use fails and takes the registry's path.
        assert!(entry.evict_if_idle(t0 + 3 * idle, idle));
        assert!(!entry.touch(t0 + 3 * idle + 1));
        assert!(!entry.evict_if_idle(t0 + 4 * idle, idle), "evicted once");
        // A stream keeps it however idle.
        let (r2, cancel2) = registry(Duration::from_secs(600));
        let sub = r2
            .subscribe(&key("select 4"), &origin(), None, None)
            .unwrap();
        assert!(!sub.entry.evict_if_idle(u64::MAX - 1, 1));
        drop(sub);
        cancel.cancel();
        cancel2.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn the_janitor_logs_after_releasing_the_registry_lock() {
        // Streams keep the pollers from the janitor task while they idle; dropped, the pollers
        // are idle at once, and the test evicts them before the janitor runs again.
        let (r, cancel) = registry(Duration::from_secs(3600));
        let streams: Vec<Subscription> = (0..5)
            .map(|i| {
                r.subscribe(&key(&format!("select {i}")), &origin(), None, None)
                    .unwrap()
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(3700)).await;
        assert_eq!(r.pollers(), 5);
        drop(streams);
        let lines = std::sync::Mutex::new(Vec::new());
        r.evict_idle_then(|_, _| {
            let free = r.entries.try_write().is_ok() && r.sources.unlocked();
            lines.lock().unwrap().push(free);
        });
        assert_eq!(r.pollers(), 0);
        let lines = lines.into_inner().unwrap();
        assert_eq!(lines.len(), 5, "one line per evicted poller");
        assert!(
            lines.iter().all(|free| *free),
            "logged under the lock: {lines:?}"
        );
        cancel.cancel();
    }

    #[tokio::test]
    async fn sqlite_infinity_is_unavailable_never_a_value() {
        let (r, cancel) = registry(Duration::from_secs(600));
        for q in ["select 1e999", "select -1e999"] {
            match r.read(&key(q), &origin(), None, None, None).await {
                Err(EngineError::Unavailable(m)) => {
                    assert!(m.contains("not a finite number"), "{q}: {m}")
                }
                other => panic!("{q}: {other:?}"),
            }
        }
        cancel.cancel();
    }

    #[tokio::test]
    async fn errors_are_unavailable_never_zero() {
        let (r, cancel) = registry(Duration::from_secs(600));
        let err = r
            .read(&key("select * from missing"), &origin(), None, None, None)
            .await
            .unwrap_err();
        match err {
            EngineError::Unavailable(m) => assert!(m.contains("no such table: missing"), "{m}"),
            other => panic!("{other:?}"),
        }
        cancel.cancel();
    }
}
