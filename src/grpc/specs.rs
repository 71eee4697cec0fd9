//! The validated trigger of every ScaledObject that calls, so that a call after the first does no
//! parsing and no SQL-guard work: KEDA sends the same `scalerMetadata` on every call.
//!
//! The key is the ScaledObject's name, namespace and metadata map, hashed without depending on
//! the map's iteration order. A hit is confirmed by comparing the stored map with the request's,
//! so a changed map (KEDA always sends the current one) is never answered from a stale entry: it
//! misses and is parsed. Only valid triggers are kept (bad metadata is parsed, and refused with
//! the same INVALID_ARGUMENT, on every call).
//!
//! A hit takes no lock and writes nothing another core reads unless it changed (its use time,
//! once a millisecond; its LRU rank, when another entry took one since): each shard publishes a
//! copy of its entries that readers load ([`ArcSwap`]); writers take the shard's lock and
//! publish a new copy.
//!
//! Bounded in bytes, not only in count (`--max-spec-cache-bytes`): every entry is charged its
//! map copy and parsed strings, and what the poller entries it remembers can keep. The cache is split into shards by ScaledObject; a shard past its
//! share of the budget drops its least recently used entries, under its own lock only, so a
//! flood of large maps never stalls the triggers in other shards, and never empties the cache.
//! An edited trigger replaces its old entry: a new map for a ScaledObject drops the object's
//! entries that have not been used for [`REPLACE_AFTER`] (KEDA never sends an edited-away map
//! again; a sibling trigger of the same object dropped that way is parsed once more on its next
//! call). A dropped entry tells its poller that this ScaledObject no longer uses it
//! ([`crate::engine::EntryCache::released`]), so the poller's metric series stop naming it.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use arc_swap::ArcSwap;
// Tokio's clock, as the handlers': a hit judged at the handler's clock reading and a miss
// at its own are on one clock, also under a test's paused time.
use tokio::time::Instant;

use crate::engine::poller::Origin;
use crate::metadata::{self, Context, MetadataError, ScalerSpec};

/// One ScaledObject's trigger, parsed. There is one per calling ScaledObject (and so per open
/// stream), so it is kept compact: its name and namespace live only in `origin`.
#[derive(Debug)]
pub struct Parsed {
    /// The map it was parsed from: a hit must match it exactly.
    metadata: MapCopy,
    pub spec: ScalerSpec,
    /// Who asks, for the poller's log lines and per-poller metrics.
    pub origin: Origin,
    /// The trigger's poller as last found, so later calls skip the registry lookup.
    pub cached_poller: crate::engine::EntryCache,
    /// The trigger's target poller (`targetQuery`) as last found, likewise.
    pub cached_target: crate::engine::EntryCache,
    /// `orascale_sample_age_seconds` for GetMetrics and IsActive, made on first use.
    ages: [std::sync::OnceLock<metrics::Histogram>; 2],
    /// Milliseconds since the cache's epoch of the latest call that used this entry.
    last_used_ms: AtomicU64,
    /// The cache's use count at the latest use: the LRU order (milliseconds tie too often).
    recency: AtomicU64,
    /// The hash of the ScaledObject's name and namespace (its shard, its siblings).
    who: u64,
    /// What this entry is charged against the byte budget.
    bytes: usize,
}

impl Parsed {
    /// The sample-age histogram of this trigger's connection and `method`.
    pub fn sample_age(&self, method: &'static str) -> &metrics::Histogram {
        let i = usize::from(method != "GetMetrics");
        self.ages[i].get_or_init(|| {
            let connection = crate::trigger::connection_label(&self.spec.poller.connection);
            crate::telemetry::metrics::sample_age_series(connection, method)
        })
    }
}

/// A copy of a metadata map in two allocations: every key and value, sorted by key, in one
/// string, and where each ends. One per calling ScaledObject, so it is kept small.
#[derive(Debug)]
struct MapCopy {
    text: Box<str>,
    /// End offsets in `text`: key 0, value 0, key 1, value 1, …
    ends: Box<[u32]>,
}

impl MapCopy {
    fn len(&self) -> usize {
        self.ends.len() / 2
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    fn key(&self, pair: usize) -> &str {
        self.part(2 * pair)
    }

    fn value(&self, pair: usize) -> &str {
        self.part(2 * pair + 1)
    }
}

fn sorted(meta: &HashMap<String, String>) -> MapCopy {
    let mut pairs: Vec<(&String, &String)> = meta.iter().collect();
    pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut text = String::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len()).sum());
    let mut ends = Vec::with_capacity(2 * pairs.len());
    for (k, v) in pairs {
        for part in [k, v] {
            text.push_str(part);
            // Metadata is bounded far below 4 GiB (entries × value length limits).
            ends.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
        }
    }
    MapCopy {
        text: text.into_boxed_str(),
        ends: ends.into_boxed_slice(),
    }
}

/// Whether `meta` is exactly the stored map: same size, and each of its pairs stored.
fn same_map(stored: &MapCopy, meta: &HashMap<String, String>) -> bool {
    let n = stored.len();
    n == meta.len()
        && meta.iter().all(|(k, v)| {
            let (mut lo, mut hi) = (0, n);
            while lo < hi {
                let mid = (lo + hi) / 2;
                match stored.key(mid).cmp(k.as_str()) {
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid,
                    std::cmp::Ordering::Equal => return stored.value(mid) == v,
                }
            }
            false
        })
}

/// Shards of the cache: a ScaledObject's entries all live in one.
const SHARDS: usize = 16;

/// A new map for a ScaledObject drops the object's entries unused for this long. KEDA asks for
/// every trigger of an object in one pass (each HPA sync and each polling round), so a live
/// sibling is touched within milliseconds of the others; an edited-away map is never touched
/// again.
pub const REPLACE_AFTER: Duration = Duration::from_secs(1);

pub struct Specs {
    shards: Box<[ShardCell]>,
    /// Per-process random seed of the key hash.
    seed: u64,
    /// Each shard's share of `--max-spec-cache-bytes`.
    shard_budget: usize,
    epoch: Instant,
}

/// Keyed by [`Specs::key`], which is already a hash: not hashed again.
type Entries = HashMap<u64, Arc<Parsed>, BuildHasherDefault<KeyHasher>>;

/// One shard: its writers' state behind a lock, and a copy of its entries that readers load
/// without one. A hit takes no lock and writes nothing another core reads (a read lock is a
/// write to the lock's word: with every worker answering calls, that line moved between
/// cores on every call); a miss, an edit or an eviction, rare next to hits, publishes a new
/// copy.
#[derive(Default)]
struct ShardCell {
    state: Mutex<Shard>,
    published: ArcSwap<Entries>,
    /// Uses so far in this shard (hits and inserts): the logical clock of
    /// [`Parsed::recency`], never tied. A shard's own: eviction orders a shard's entries only,
    /// and triggers in other shards never write it.
    clock: AtomicU64,
}

impl ShardCell {
    /// The shard's writers' state; [`ShardCell::publish`] makes what they changed visible.
    fn lock(&self) -> std::sync::MutexGuard<'_, Shard> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, shard: &Shard) {
        self.published.store(Arc::new(shard.entries.clone()));
    }
}

#[derive(Default)]
struct Shard {
    entries: Entries,
    bytes: usize,
}

impl Shard {
    fn remove(&mut self, key: u64) -> Option<Arc<Parsed>> {
        let gone = self.entries.remove(&key)?;
        self.bytes = self.bytes.saturating_sub(gone.bytes);
        Some(gone)
    }
}

/// Passes a `u64` key through: the map's keys are seeded hashes already.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A word-at-a-time hash of `bytes` from `state`, its length mixed in so `("ab", "c")` and
/// `("a", "bc")` differ. Cheap; the per-process seed in `state` makes it unpredictable from
/// outside. A collision only makes two ScaledObjects share a slot (each confirms its own map),
/// never answers for the wrong one.
fn word_hash(mut state: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        state = (state ^ w).wrapping_mul(K).rotate_left(29);
    }
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    let last = u64::from_le_bytes(last) ^ ((bytes.len() as u64) << 56);
    (state ^ last).wrapping_mul(K).rotate_left(29)
}

/// A final avalanche (splitmix64's), so nearby states spread over the map.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Specs {
    /// A cache of at most `max_bytes` of parsed triggers (`--max-spec-cache-bytes`).
    pub fn new(max_bytes: usize) -> Self {
        Specs {
            shards: (0..SHARDS).map(|_| ShardCell::default()).collect(),
            seed: std::collections::hash_map::RandomState::new().hash_one(0x6f72_6173_u64),
            shard_budget: (max_bytes / SHARDS).max(1),
            epoch: Instant::now(),
        }
    }

    /// The cached trigger, when the same ScaledObject sent the same metadata before. The name
    /// and namespace of a hit are the ones [`Specs::get`] was given, exactly.
    pub fn cached(
        &self,
        name: &str,
        namespace: &str,
        meta: &HashMap<String, String>,
    ) -> Option<Arc<Parsed>> {
        self.with_cached(name, namespace, meta, Instant::now(), Arc::clone)
    }

    /// `f` of the cached trigger, when the same ScaledObject sent the same metadata before,
    /// without taking a reference to it (a reference count is a write every worker makes):
    /// for an answer made whole inside `f`. `now` is the call's clock reading.
    pub(crate) fn with_cached<R>(
        &self,
        name: &str,
        namespace: &str,
        meta: &HashMap<String, String>,
        now: Instant,
        f: impl FnOnce(&Arc<Parsed>) -> R,
    ) -> Option<R> {
        let who = self.who(name, namespace);
        let now = self.ms_at(now);
        self.hit(who, self.key(who, meta), name, namespace, meta, now, f)
    }

    #[allow(clippy::too_many_arguments)]
    fn hit<R>(
        &self,
        who: u64,
        key: u64,
        name: &str,
        namespace: &str,
        meta: &HashMap<String, String>,
        now: u64,
        f: impl FnOnce(&Arc<Parsed>) -> R,
    ) -> Option<R> {
        let cell = self.shard(who);
        let entries = cell.published.load();
        let hit = entries.get(&key)?;
        if hit.origin.name != name
            || hit.origin.namespace != namespace
            || !same_map(&hit.metadata, meta)
        {
            return None;
        }
        // Written only when they change: a write per call to words every worker writes
        // moves their cache lines between cores on every call. The use time moves once a
        // millisecond (forward only); the LRU rank only when another entry of the shard took a
        // rank since this one's (holding the newest rank, taking a newer one changes no order).
        if hit.last_used_ms.load(Ordering::Relaxed) < now {
            hit.last_used_ms.fetch_max(now, Ordering::Relaxed);
        }
        if hit.recency.load(Ordering::Relaxed) != cell.clock.load(Ordering::Relaxed) {
            hit.recency.store(
                cell.clock.fetch_add(1, Ordering::Relaxed) + 1,
                Ordering::Relaxed,
            );
        }
        Some(f(hit))
    }

    /// The parsed trigger for this call, from the cache when the same ScaledObject sent the same
    /// metadata before.
    pub fn get(
        &self,
        name: &str,
        namespace: &str,
        meta: &HashMap<String, String>,
        ctx: &Context,
    ) -> Result<Arc<Parsed>, MetadataError> {
        let who = self.who(name, namespace);
        let key = self.key(who, meta);
        let cell = self.shard(who);
        let now = self.now_ms();
        if let Some(hit) = self.hit(who, key, name, namespace, meta, now, Arc::clone) {
            return Ok(hit);
        }
        let spec = metadata::parse(meta, namespace, ctx)?;
        let metadata = sorted(meta);
        let bytes = std::mem::size_of::<Parsed>()
            + metadata.text.len()
            + 4 * metadata.ends.len()
            + spec_bytes(&spec)
            // The pollers' entries it remembers, and its place in the shard's published copy.
            + crate::engine::EntryCache::retained_bytes(&spec.poller)
            + spec.target_poller.as_ref().map_or(0, crate::engine::EntryCache::retained_bytes)
            + 2 * std::mem::size_of::<(u64, Arc<Parsed>)>()
            + name.len()
            + namespace.len()
            + spec.metric_name.len();
        let parsed = Arc::new(Parsed {
            metadata,
            origin: Origin {
                namespace: namespace.to_string(),
                name: name.to_string(),
                metric: spec.metric_name.clone(),
            },
            spec,
            ages: Default::default(),
            cached_poller: Default::default(),
            cached_target: Default::default(),
            last_used_ms: AtomicU64::new(now),
            recency: AtomicU64::new(cell.clock.fetch_add(1, Ordering::Relaxed) + 1),
            who,
            bytes,
        });
        if bytes > self.shard_budget {
            return Ok(parsed); // answered, never kept: it alone would fill its shard
        }
        let released = {
            let mut shard = cell.lock();
            let mut released = Vec::new();
            // The same key (a collision, or a concurrent miss) and the object's entries that
            // have gone unused: an edited trigger's old map.
            let stale_before = now.saturating_sub(REPLACE_AFTER.as_millis() as u64);
            let replaced: Vec<u64> = shard
                .entries
                .iter()
                .filter(|(k, e)| {
                    **k == key
                        || (e.who == who
                            && e.origin.name == name
                            && e.origin.namespace == namespace
                            && e.last_used_ms.load(Ordering::Relaxed) < stale_before)
                })
                .map(|(k, _)| *k)
                .collect();
            for k in replaced {
                released.extend(shard.remove(k));
            }
            if shard.bytes + bytes > self.shard_budget {
                self.evict(&mut shard, bytes);
            }
            shard.bytes += bytes;
            shard.entries.insert(key, parsed.clone());
            cell.publish(&shard);
            released
        };
        // Outside the shard's lock: the pollers this object's old maps used, and its new map
        // does not, learn that it left them. Each poller on its own: an edit of only the
        // query leaves the target poller in use, an edit of only targetQuery the metric one.
        for old in released {
            if old.spec.poller != parsed.spec.poller {
                old.cached_poller.released(&old.origin);
            }
            if old.spec.target_poller != parsed.spec.target_poller {
                old.cached_target.released(&old.origin);
            }
        }
        Ok(parsed)
    }

    /// Drops the shard's least recently used entries until `incoming` more bytes fit with a
    /// quarter of the budget to spare, so eviction runs once per many inserts, not on each.
    fn evict(&self, shard: &mut Shard, incoming: usize) {
        let target = (self.shard_budget / 4 * 3).saturating_sub(incoming);
        let mut by_age: Vec<(u64, u64)> = shard
            .entries
            .iter()
            .map(|(k, e)| (e.recency.load(Ordering::Relaxed), *k))
            .collect();
        by_age.sort_unstable();
        for (_, key) in by_age {
            if shard.bytes <= target {
                break;
            }
            shard.remove(key);
        }
    }

    /// Triggers held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.published.load().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged to the entries held now.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The shard of the ScaledObject `who`: all its entries live there.
    fn shard(&self, who: u64) -> &ShardCell {
        &self.shards[(who % SHARDS as u64) as usize]
    }

    /// The ScaledObject's name and namespace.
    fn who(&self, name: &str, namespace: &str) -> u64 {
        mix(word_hash(
            word_hash(self.seed, name.as_bytes()),
            namespace.as_bytes(),
        ))
    }

    /// The object (`who`) and the map's entries, independent of the map's iteration order.
    fn key(&self, who: u64, meta: &HashMap<String, String>) -> u64 {
        // Each pair hashed alone and summed: the map's iteration order does not matter.
        let entries = meta
            .iter()
            .map(|(k, v)| mix(word_hash(word_hash(self.seed, k.as_bytes()), v.as_bytes())))
            .fold(meta.len() as u64, u64::wrapping_add);
        mix(who ^ entries.rotate_left(17))
    }
}

/// The heap bytes of a parsed trigger's strings.
fn spec_bytes(spec: &ScalerSpec) -> usize {
    let key = &spec.poller;
    let wake = spec.wake.as_ref().map_or(0, |w| w.channel.len());
    let dynamic = spec.dynamic.as_ref().map_or(0, |c| {
        std::mem::size_of::<crate::config::ConnectionConfig>()
            + c.name.len()
            + c.url.identity_for_hashing().len()
    });
    let target = spec.target_poller.as_ref().map_or(0, |t| {
        std::mem::size_of::<crate::trigger::PollerKey>() + t.connection.len() + t.query.len()
    });
    key.connection.len() + key.query.len() + spec.metric_name.len() + wake + dynamic + target
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConnectionConfig, ConnectionUrl, EngineConfig, SqliteTarget};

    fn ctx() -> Context {
        Context {
            connections: [(
                "db".to_string(),
                ConnectionConfig::new("db", ConnectionUrl::Sqlite(SqliteTarget::Memory)),
            )]
            .into_iter()
            .collect(),
            engine: EngineConfig::default(),
            allow_credentials: false,
        }
    }

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A hit writes its use time once a millisecond and its LRU rank only when another entry
    /// took a rank since: the LRU order is the one a write on every hit would give.
    #[test]
    fn a_hit_writes_only_what_changed() {
        let specs = Specs::new(1 << 20);
        let ctx = ctx();
        let a = meta(&[("query", "select 1"), ("targetQueryValue", "1")]);
        let b = meta(&[("query", "select 2"), ("targetQueryValue", "1")]);
        let first = specs.get("a", "ns", &a, &ctx).unwrap();
        let rank = first.recency.load(Ordering::Relaxed);
        for _ in 0..100 {
            specs.cached("a", "ns", &a).unwrap();
        }
        assert_eq!(
            first.recency.load(Ordering::Relaxed),
            rank,
            "still the newest"
        );
        let shard = specs.shard(first.who);
        assert_eq!(shard.clock.load(Ordering::Relaxed), rank);
        // A trigger of another shard takes its own shard's ranks.
        let elsewhere = (0..)
            .map(|i| format!("other-{i}"))
            .find(|n| !std::ptr::eq(specs.shard(specs.who(n, "ns")), shard))
            .unwrap();
        specs.get(&elsewhere, "ns", &b, &ctx).unwrap();
        assert_eq!(shard.clock.load(Ordering::Relaxed), rank);
        specs.cached("a", "ns", &a).unwrap();
        assert_eq!(first.recency.load(Ordering::Relaxed), rank);
        // The same object's second trigger: the same shard.
        let second = specs.get("a", "ns", &b, &ctx).unwrap();
        assert!(second.recency.load(Ordering::Relaxed) > rank);
        specs.cached("a", "ns", &a).unwrap();
        let again = first.recency.load(Ordering::Relaxed);
        assert!(
            again > second.recency.load(Ordering::Relaxed),
            "newest again"
        );
        let later = specs.epoch + Duration::from_secs(5);
        specs.with_cached("a", "ns", &a, later, |_| ()).unwrap();
        assert_eq!(first.last_used_ms.load(Ordering::Relaxed), 5_000);
        assert_eq!(first.recency.load(Ordering::Relaxed), again);
    }

    #[test]
    fn hits_only_for_the_same_map_and_never_hides_a_change() {
        let specs = Specs::new(1 << 20);
        let ctx = ctx();
        let a = meta(&[("query", "select 1"), ("targetQueryValue", "5")]);
        let first = specs.get("so", "ns", &a, &ctx).unwrap();
        // The same map built in another order: a hit, the very same entry.
        let mut reordered = HashMap::new();
        reordered.insert("targetQueryValue".to_string(), "5".to_string());
        reordered.insert("query".to_string(), "select 1".to_string());
        assert!(Arc::ptr_eq(
            &first,
            &specs.get("so", "ns", &reordered, &ctx).unwrap()
        ));
        // A changed value is parsed again, and its error is the parser's.
        let bad = meta(&[("query", "select 1"), ("targetQueryValue", "x")]);
        let err = specs.get("so", "ns", &bad, &ctx).unwrap_err().to_string();
        assert!(
            err.contains("targetQueryValue") && err.contains("\"x\""),
            "{err}"
        );
        let changed = meta(&[("query", "select 2"), ("targetQueryValue", "7")]);
        let now = specs.get("so", "ns", &changed, &ctx).unwrap();
        assert_eq!(now.spec.target, 7.0);
        assert_eq!(now.spec.poller.query, "select 2");
        // Another ScaledObject or namespace with the same map is its own entry.
        let other = specs.get("other", "ns", &a, &ctx).unwrap();
        assert_eq!(other.origin.name, "other");
        assert!(!Arc::ptr_eq(&first, &other));
        let elsewhere = specs.get("so", "ns2", &a, &ctx).unwrap();
        assert_eq!(elsewhere.origin.namespace, "ns2");
    }

    #[test]
    fn same_map_is_exact() {
        let m = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let stored = sorted(&m(&[("query", "select 1"), ("a", "1"), ("z", "")]));
        assert!(same_map(
            &stored,
            &m(&[("z", ""), ("a", "1"), ("query", "select 1")])
        ));
        for other in [
            m(&[("query", "select 1"), ("a", "1")]),
            m(&[("query", "select 1"), ("a", "1"), ("z", ""), ("b", "")]),
            m(&[("query", "select 2"), ("a", "1"), ("z", "")]),
            m(&[("query", "select 1"), ("b", "1"), ("z", "")]),
            m(&[("query", "select 1"), ("a", "1"), ("z", " ")]),
        ] {
            assert!(!same_map(&stored, &other), "{other:?}");
        }
        // Where a key ends and its value begins is part of the copy.
        let stored = sorted(&m(&[("ab", "c")]));
        assert!(same_map(&stored, &m(&[("ab", "c")])));
        assert!(!same_map(&stored, &m(&[("a", "bc")])));
        assert!(same_map(&sorted(&m(&[])), &m(&[])));
    }

    #[test]
    fn bounded_in_bytes_keeping_what_is_in_use() {
        let budget = 256 * 1024;
        let specs = Specs::new(budget);
        let ctx = ctx();
        let hot = meta(&[("query", "select 1"), ("targetQueryValue", "1")]);
        let first = specs.get("hot", "ns", &hot, &ctx).unwrap();
        let padding = "x".repeat(2000);
        for i in 0..2000 {
            let m = meta(&[
                ("query", &format!("select {i}")),
                ("targetQueryValue", "1"),
                ("scalerAddress", &padding),
            ]);
            specs.get(&format!("so-{i}"), "ns", &m, &ctx).unwrap();
            assert!(specs.bytes() <= budget, "{} > {budget}", specs.bytes());
            // A trigger in use stays cached however many others come and go.
            assert!(Arc::ptr_eq(
                &first,
                &specs.get("hot", "ns", &hot, &ctx).unwrap()
            ));
        }
        assert!(
            specs.len() > 16,
            "eviction drops some, never all: {}",
            specs.len()
        );
        // An entry larger than a shard's share is answered and never kept.
        let tiny = Specs::new(16 * 1024);
        let big = meta(&[
            ("query", "select 1"),
            ("targetQueryValue", "1"),
            ("caCert", &"c".repeat(4000)),
        ]);
        assert_eq!(tiny.get("big", "ns", &big, &ctx).unwrap().spec.target, 1.0);
        assert_eq!(tiny.len(), 0);
    }

    /// The pollers a registry shows (orphaned ones, which an object left, are not shown), by
    /// query.
    fn shown(registry: &crate::engine::Registry) -> Vec<String> {
        let mut keys: Vec<String> = registry.snapshot().into_iter().map(|p| p.poller).collect();
        keys.sort();
        keys
    }

    #[tokio::test]
    async fn an_edit_releases_only_the_pollers_the_new_map_no_longer_uses() {
        let cancel = tokio_util::sync::CancellationToken::new();
        let registry = crate::engine::Registry::in_memory(&["db"], cancel.clone());
        let specs = Specs::new(1 << 20);
        let ctx = ctx();
        // Both pollers of a parsed trigger, found through its caches (as the handlers do).
        let use_both = |p: &Parsed| {
            registry
                .admit(
                    &p.spec.poller,
                    &p.origin,
                    None,
                    Some(&p.cached_poller),
                    None,
                )
                .unwrap();
            let key = p.spec.target_poller.as_ref().unwrap();
            let _ = registry.latest(key, &p.origin, None, Some(&p.cached_target), None);
            (p.spec.poller.id(), key.id())
        };
        let map = |query: &str, target: &str| {
            meta(&[
                ("query", query),
                ("targetQueryValue", "1"),
                ("targetQuery", target),
                // One name throughout: a poller is named after one (namespace, object, metric).
                ("metricName", "jobs"),
            ])
        };
        let v1 = specs
            .get("so", "ns", &map("select 1", "select 10"), &ctx)
            .unwrap();
        let (q1, t1) = use_both(&v1);
        assert_eq!(shown(&registry), sorted_ids(&[&q1, &t1]));

        // Only the query edited: the old metric poller is left; the target poller, still
        // used by the new map, is not.
        tokio::time::sleep(REPLACE_AFTER + Duration::from_millis(200)).await;
        let v2 = specs
            .get("so", "ns", &map("select 2", "select 10"), &ctx)
            .unwrap();
        assert_eq!(shown(&registry), sorted_ids(&[&t1]));
        let (q2, _) = use_both(&v2);

        // Only targetQuery edited: the old target poller is left, the metric poller is not.
        tokio::time::sleep(REPLACE_AFTER + Duration::from_millis(200)).await;
        specs
            .get("so", "ns", &map("select 2", "select 20"), &ctx)
            .unwrap();
        assert_eq!(shown(&registry), sorted_ids(&[&q2]));
        cancel.cancel();
    }

    fn sorted_ids(ids: &[&String]) -> Vec<String> {
        let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn an_edited_trigger_replaces_its_old_entry() {
        let specs = Specs::new(1 << 20);
        let ctx = ctx();
        let v1 = meta(&[("query", "select 1"), ("targetQueryValue", "1")]);
        let sibling = meta(&[("query", "select 9"), ("targetQueryValue", "1")]);
        specs.get("so", "ns", &v1, &ctx).unwrap();
        specs.get("so", "ns", &sibling, &ctx).unwrap();
        specs.get("other", "ns", &v1, &ctx).unwrap();
        assert_eq!(specs.len(), 3);
        std::thread::sleep(REPLACE_AFTER + Duration::from_millis(200));
        // KEDA's next pass: the sibling first, then the edited trigger's new map.
        specs.get("so", "ns", &sibling, &ctx).unwrap();
        let v2 = meta(&[("query", "select 2"), ("targetQueryValue", "1")]);
        specs.get("so", "ns", &v2, &ctx).unwrap();
        assert_eq!(
            specs.len(),
            3,
            "v1 of so replaced; its sibling and the other object kept"
        );
        let before = specs.bytes();
        specs.get("so", "ns", &v2, &ctx).unwrap();
        specs.get("so", "ns", &sibling, &ctx).unwrap();
        assert_eq!(
            (specs.len(), specs.bytes()),
            (3, before),
            "hits change nothing"
        );
    }
}
