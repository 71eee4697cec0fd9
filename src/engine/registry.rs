//! The registry: key → poller. Read-mostly: handlers take a read lock to find their poller and
//! touch its clock; a miss takes the write lock once to create it. A janitor evicts pollers that
//! have had no stream and no call for the idle timeout. No lock is held across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::poller::{Origin, Poller};
use super::{EngineError, PollerKey, Reading, Sample};
use crate::config::EngineConfig;
use crate::source::Source;
use crate::telemetry::metrics as m;

/// One live poller as the handlers see it.
pub struct Entry {
    rx: watch::Receiver<Sample>,
    /// Milliseconds since the registry's epoch of the latest call or stream.
    last_used_ms: AtomicU64,
    streams: AtomicUsize,
    cancel: CancellationToken,
    /// Calls made before the first result wait, but never past `created + first_result_wait`.
    created: Instant,
    /// The ScaledObject that created the poller: its labels in logs and per-poller metrics.
    origin: Origin,
}

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
}

pub struct Registry {
    sources: BTreeMap<String, Arc<dyn Source>>,
    /// Sources made from per-ScaledObject credentials, by their keyed-hash name; dropped by the
    /// janitor once no poller uses them.
    dynamic: RwLock<HashMap<String, Arc<dyn Source>>>,
    config: EngineConfig,
    entries: RwLock<HashMap<PollerKey, Arc<Entry>>>,
    /// Open streams, for `max_streams`.
    streams: AtomicUsize,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    epoch: Instant,
}

impl Registry {
    /// Builds the registry and starts its janitor on `tracker`; everything stops with `shutdown`.
    pub fn new(
        sources: BTreeMap<String, Arc<dyn Source>>,
        config: EngineConfig,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Arc<Self> {
        let registry = Arc::new(Registry {
            sources,
            dynamic: RwLock::new(HashMap::new()),
            config,
            entries: RwLock::new(HashMap::new()),
            streams: AtomicUsize::new(0),
            shutdown,
            tracker,
            epoch: Instant::now(),
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

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Live pollers.
    pub fn pollers(&self) -> usize {
        self.entries.read().expect("registry lock").len()
    }

    /// The staleness limit of a poller's last good value.
    pub fn max_age(&self, key: &PollerKey) -> Duration {
        key.poll_interval * self.config.stale_after_polls
    }

    /// The value to answer with now. The first call for a new poller waits up to
    /// `first_result_wait` for its first result (as does any call in that window); every other
    /// call answers from the cache at once.
    pub async fn read(&self, key: &PollerKey, origin: &Origin) -> Result<Reading, EngineError> {
        let entry = self.entry(key, origin)?;
        let mut rx = entry.rx.clone();
        if !rx.borrow().has_outcome() {
            let wait = rx.wait_for(Sample::has_outcome);
            let _ =
                tokio::time::timeout_at(entry.created + self.config.first_result_wait, wait).await;
        }
        let sample = rx.borrow().clone();
        sample
            .value(Instant::now(), self.max_age(key))
            .map_err(EngineError::Unavailable)
    }

    /// A stream's view of a poller; it keeps the poller alive until dropped.
    pub fn subscribe(
        self: &Arc<Self>,
        key: &PollerKey,
        origin: &Origin,
    ) -> Result<Subscription, EngineError> {
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
        let entry = match self.entry_with(key, origin, |e| {
            e.streams.fetch_add(1, Ordering::SeqCst);
        }) {
            Ok(e) => e,
            Err(err) => {
                self.streams.fetch_sub(1, Ordering::SeqCst);
                return Err(err);
            }
        };
        m::stream_opened();
        Ok(Subscription {
            rx: entry.rx.clone(),
            max_age: self.max_age(key),
            entry,
            registry: self.clone(),
        })
    }

    fn entry(&self, key: &PollerKey, origin: &Origin) -> Result<Arc<Entry>, EngineError> {
        self.entry_with(key, origin, |_| {})
    }

    /// Finds or creates the poller, touches it and runs `also` under the same lock, so the
    /// janitor never sees a half-registered user.
    fn entry_with(
        &self,
        key: &PollerKey,
        origin: &Origin,
        also: impl Fn(&Entry),
    ) -> Result<Arc<Entry>, EngineError> {
        if self.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let now = self.now_ms();
        {
            let entries = self.entries.read().expect("registry lock");
            if let Some(e) = entries.get(key) {
                e.last_used_ms.store(now, Ordering::Relaxed);
                also(e);
                return Ok(e.clone());
            }
        }
        let mut entries = self.entries.write().expect("registry lock");
        if let Some(e) = entries.get(key) {
            e.last_used_ms.store(now, Ordering::Relaxed);
            also(e);
            return Ok(e.clone());
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
            .filter(|e| e.origin.namespace == origin.namespace)
            .count();
        if in_namespace >= limits.max_pollers_per_namespace {
            return Err(EngineError::ResourceExhausted(format!(
                "namespace {:?} already has {in_namespace} distinct triggers (--max-pollers-per-namespace {})",
                origin.namespace, limits.max_pollers_per_namespace
            )));
        }
        let source = self.source(&key.connection).ok_or_else(|| {
            // metadata::parse checks connection names first; this is a programming error guard.
            EngineError::Unavailable(format!("connection {:?} is not configured", key.connection))
        })?;
        let (tx, rx) = watch::channel(Sample::default());
        let cancel = self.shutdown.child_token();
        let entry = Arc::new(Entry {
            rx,
            last_used_ms: AtomicU64::new(now),
            streams: AtomicUsize::new(0),
            cancel: cancel.clone(),
            created: Instant::now(),
            origin: origin.clone(),
        });
        also(&entry);
        entries.insert(key.clone(), entry.clone());
        m::pollers_started(1);
        tracing::info!(connection = %key.connection, namespace = %origin.namespace,
            scaledobject = %origin.name, metric = %origin.metric,
            poll_interval = %humantime::format_duration(key.poll_interval),
            query_timeout = %humantime::format_duration(key.query_timeout),
            pollers = entries.len(), "poller created");
        let poller = Poller {
            key: key.clone(),
            source,
            tx,
            origin: origin.clone(),
        };
        self.tracker.spawn(poller.run(cancel));
        Ok(entry)
    }

    /// Makes the source of a connection built from metadata credentials, once per name.
    pub fn ensure_source(&self, conn: &crate::config::ConnectionConfig) -> Result<(), EngineError> {
        if self
            .dynamic
            .read()
            .expect("registry lock")
            .contains_key(&conn.name)
        {
            return Ok(());
        }
        let mut dynamic = self.dynamic.write().expect("registry lock");
        if dynamic.contains_key(&conn.name) {
            return Ok(());
        }
        if dynamic.len() >= self.config.limits.max_pollers {
            return Err(EngineError::ResourceExhausted(format!(
                "this server already holds {} connections made from metadata credentials (--max-pollers)",
                dynamic.len()
            )));
        }
        let source =
            crate::source::open(conn).map_err(|e| EngineError::Unavailable(e.to_string()))?;
        tracing::info!(connection = %conn.name, kind = source.kind(), url = %conn.url, "connection made from metadata credentials");
        dynamic.insert(conn.name.clone(), source);
        Ok(())
    }

    fn source(&self, name: &str) -> Option<Arc<dyn Source>> {
        self.sources.get(name).cloned().or_else(|| {
            self.dynamic
                .read()
                .expect("registry lock")
                .get(name)
                .cloned()
        })
    }

    /// Stops pollers with no stream that nobody has called for the idle timeout.
    pub fn evict_idle(&self) {
        let idle_ms = self.config.idle_timeout.as_millis() as u64;
        let now = self.now_ms();
        let mut entries = self.entries.write().expect("registry lock");
        let before = entries.len();
        entries.retain(|key, e| {
            let idle = e.streams.load(Ordering::SeqCst) == 0
                && now.saturating_sub(e.last_used_ms.load(Ordering::Relaxed)) >= idle_ms;
            if idle {
                e.cancel.cancel();
                tracing::info!(connection = %key.connection, namespace = %e.origin.namespace,
                    scaledobject = %e.origin.name, metric = %e.origin.metric,
                    idle = %humantime::format_duration(self.config.idle_timeout), "poller evicted");
            }
            !idle
        });
        m::pollers_stopped(before - entries.len());
        // Sources made from metadata credentials live as long as a poller uses them.
        let in_use: std::collections::HashSet<&str> =
            entries.keys().map(|k| k.connection.as_str()).collect();
        self.dynamic
            .write()
            .expect("registry lock")
            .retain(|name, _| in_use.contains(name.as_str()));
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
            .map(|(key, e)| {
                let sample = e.rx.borrow().clone();
                let age = sample.good.map(|g| now.saturating_duration_since(g.at));
                PollerStatus {
                    connection: key.connection,
                    namespace: e.origin.namespace.clone(),
                    scaledobject: e.origin.name.clone(),
                    metric: e.origin.metric.clone(),
                    last_success_unix: age.map(|a| wall - a.as_secs_f64()),
                    sample_age: age,
                    consecutive_failures: sample.failure.map_or(0, |f| f.streak),
                    streams: e.streams.load(Ordering::Relaxed),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.connection, &a.metric).cmp(&(&b.connection, &b.metric)));
        out
    }

    /// Each connection's pool.
    pub fn pools(&self) -> Vec<(String, crate::source::PoolStatus)> {
        self.sources
            .iter()
            .map(|(name, s)| (name.clone(), s.pool()))
            .collect()
    }

    fn now_ms(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_millis() as u64
    }
}

/// An open StreamIsActive's hold on a poller.
pub struct Subscription {
    entry: Arc<Entry>,
    rx: watch::Receiver<Sample>,
    max_age: Duration,
    registry: Arc<Registry>,
}

impl Subscription {
    /// The value to judge activity by now, or why there is none.
    pub fn current(&self) -> Result<Reading, String> {
        self.rx.borrow().value(Instant::now(), self.max_age)
    }

    /// Whether the poller has completed a poll.
    pub fn has_outcome(&self) -> bool {
        self.rx.borrow().has_outcome()
    }

    /// Waits for the poller's next publish; `Err` when the poller has stopped.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.rx.changed().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.entry.streams.fetch_sub(1, Ordering::SeqCst);
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
            r.read(&key("select 5"), &origin()).await.unwrap().value,
            5.0
        );
        assert_eq!(
            r.read(&key("select 5"), &origin()).await.unwrap().value,
            5.0
        );
        assert_eq!(r.pollers(), 1);
        let mut other = key("select 5");
        other.poll_interval = Duration::from_secs(2);
        r.read(&other, &origin()).await.unwrap();
        assert_eq!(r.pollers(), 2);
        cancel.cancel();
        assert_eq!(
            r.read(&key("select 5"), &origin()).await.unwrap_err(),
            EngineError::ShuttingDown
        );
    }

    #[tokio::test]
    async fn idle_pollers_are_evicted_but_not_while_streamed() {
        let (r, cancel) = registry(Duration::from_millis(300));
        r.read(&key("select 1"), &origin()).await.unwrap();
        let sub = r.subscribe(&key("select 2"), &origin()).unwrap();
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
    async fn errors_are_unavailable_never_zero() {
        let (r, cancel) = registry(Duration::from_secs(600));
        let err = r
            .read(&key("select * from missing"), &origin())
            .await
            .unwrap_err();
        match err {
            EngineError::Unavailable(m) => assert!(m.contains("no such table: missing"), "{m}"),
            other => panic!("{other:?}"),
        }
        cancel.cancel();
    }
}
