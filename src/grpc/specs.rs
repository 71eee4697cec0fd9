//! The validated trigger of every ScaledObject that calls, so that a call after the first does no
//! parsing and no SQL-guard work: KEDA sends the same `scalerMetadata` on every call.
//!
//! The key is the ScaledObject's name, namespace and metadata map, hashed without depending on
//! the map's iteration order. A hit is confirmed by comparing the stored map with the request's,
//! so a changed map (KEDA always sends the current one) is never answered from a stale entry: it
//! misses, is parsed, and replaces the entry. Only valid triggers are kept (bad metadata is
//! parsed, and refused with the same INVALID_ARGUMENT, on every call). The cache is bounded: at
//! its limit it is emptied and refills with the triggers still in use.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, RwLock};

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
    pub poller: crate::engine::EntryCache,
    /// `orascale_sample_age_seconds` for GetMetrics and IsActive, made on first use.
    ages: [std::sync::OnceLock<metrics::Histogram>; 2],
}

impl Parsed {
    /// The sample-age histogram of this trigger's connection and `method`.
    pub fn sample_age(&self, method: &'static str) -> &metrics::Histogram {
        let i = usize::from(method != "GetMetrics");
        self.ages[i].get_or_init(|| {
            crate::telemetry::metrics::sample_age_series(&self.spec.poller.connection, method)
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

pub struct Specs {
    /// Keyed by [`Specs::key`], which is already a hash: not hashed again.
    entries: RwLock<HashMap<u64, Arc<Parsed>, BuildHasherDefault<KeyHasher>>>,
    /// Per-process random seed of the key hash.
    seed: u64,
    limit: usize,
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
    pub fn new(limit: usize) -> Self {
        Specs {
            entries: RwLock::new(HashMap::default()),
            seed: std::collections::hash_map::RandomState::new().hash_one(0x6f72_6173_u64),
            limit: limit.max(1),
        }
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
        let key = self.key(name, namespace, meta);
        if let Some(hit) = self.entries.read().expect("specs lock").get(&key)
            && hit.origin.name == name
            && hit.origin.namespace == namespace
            && same_map(&hit.metadata, meta)
        {
            return Ok(hit.clone());
        }
        let spec = metadata::parse(meta, namespace, ctx)?;
        let parsed = Arc::new(Parsed {
            metadata: sorted(meta),
            origin: Origin {
                namespace: namespace.to_string(),
                name: name.to_string(),
                metric: spec.metric_name.clone(),
            },
            spec,
            ages: Default::default(),
            poller: Default::default(),
        });
        let mut entries = self.entries.write().expect("specs lock");
        if entries.len() >= self.limit {
            entries.clear();
        }
        entries.insert(key, parsed.clone());
        Ok(parsed)
    }

    /// Triggers held now.
    pub fn len(&self) -> usize {
        self.entries.read().expect("specs lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Name, namespace and the map's entries, independent of the map's iteration order.
    fn key(&self, name: &str, namespace: &str, meta: &HashMap<String, String>) -> u64 {
        let who = word_hash(word_hash(self.seed, name.as_bytes()), namespace.as_bytes());
        // Each pair hashed alone and summed: the map's iteration order does not matter.
        let entries = meta
            .iter()
            .map(|(k, v)| mix(word_hash(word_hash(self.seed, k.as_bytes()), v.as_bytes())))
            .fold(meta.len() as u64, u64::wrapping_add);
        mix(who ^ entries.rotate_left(17))
    }
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

    #[test]
    fn hits_only_for_the_same_map_and_never_hides_a_change() {
        let specs = Specs::new(100);
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
    fn bounded() {
        let specs = Specs::new(10);
        let ctx = ctx();
        for i in 0..1000 {
            let m = meta(&[("query", &format!("select {i}")), ("targetQueryValue", "1")]);
            specs.get("so", "ns", &m, &ctx).unwrap();
            assert!(specs.len() <= 10);
        }
    }
}
