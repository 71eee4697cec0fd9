//! 10,000 distinct pollers at 1 s: CPU per poll, tick lateness and memory per idle poller.
//!
//! 1. An instant in-process source (answers at once, records when each query arrived): the
//!    engine's own cost. CPU per poll = process CPU time over the run ÷ polls; lateness = the gap
//!    between a poller's consecutive queries minus its interval (p50/p99/max).
//! 2. The same against a real SQLite file (`select count(*) from jobs where id = N`).
//! 3. Memory: RSS growth for 10,000 pollers at 1 h (idle after their first poll) ÷ 10,000.
//!
//! `cargo bench --bench pollers`; under `cargo test` a 1,000-poller, 3 s smoke run. One JSON line
//! per part.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use orascale::config::{EngineConfig, SqliteTarget};
use orascale::engine::poller::Origin;
use orascale::engine::{PollerKey, Registry};
use orascale::source::{Cell, PoolStatus, ServerInfo, Source, SourceError};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Answers 1 at once and notes when each query came.
#[derive(Default)]
struct Instant0 {
    seen: Mutex<HashMap<String, Vec<Instant>>>,
}

impl Source for Instant0 {
    fn kind(&self) -> &'static str {
        "sqlite"
    }
    fn driver(&self) -> Result<String, SourceError> {
        Ok("instant".into())
    }
    fn pool(&self) -> PoolStatus {
        PoolStatus::default()
    }
    fn server_info<'a>(&'a self, _: Duration) -> BoxFuture<'a, Result<ServerInfo, SourceError>> {
        async { Err(SourceError::Unsupported("instant".into())) }.boxed()
    }
    fn query<'a>(&'a self, sql: &'a str, _: Duration) -> BoxFuture<'a, Result<Cell, SourceError>> {
        let now = Instant::now();
        self.seen
            .lock()
            .unwrap()
            .entry(sql.to_string())
            .or_default()
            .push(now);
        async { Ok(Cell::Number(1.0)) }.boxed()
    }
}

/// User + system CPU time of this process.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12] // utime, stime (after the command name)
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10) // USER_HZ = 100 on Linux
}

fn key(connection: &str, query: String, interval: Duration) -> PollerKey {
    PollerKey {
        connection: connection.into(),
        query,
        poll_interval: interval,
        query_timeout: Duration::from_secs(5),
        ignore_nulls: false,
    }
}

fn registry(
    sources: BTreeMap<String, Arc<dyn Source>>,
    pollers: usize,
) -> (Arc<Registry>, CancellationToken) {
    let shutdown = CancellationToken::new();
    let mut engine = EngineConfig::default();
    engine.limits.max_pollers = pollers + 10;
    engine.limits.max_pollers_per_namespace = pollers + 10;
    (
        Registry::new(sources, engine, shutdown.clone(), TaskTracker::new()),
        shutdown,
    )
}

fn origin() -> Origin {
    Origin {
        namespace: "bench".into(),
        name: "bench".into(),
        metric: "m".into(),
    }
}

/// Creates `n` pollers on `connection`, then lets them run for `run`: polls and CPU.
async fn steady(
    registry: &Registry,
    connection: &str,
    n: usize,
    query: impl Fn(usize) -> String,
    run: Duration,
) -> (u64, Duration) {
    for i in 0..n {
        registry
            .read(
                &key(connection, query(i), Duration::from_secs(1)),
                &origin(),
                None,
                None,
                None,
            )
            .await
            .unwrap();
    }
    // Let the random phases settle, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let polls_before = polls(registry);
    let cpu_before = cpu();
    tokio::time::sleep(run).await;
    (polls(registry) - polls_before, cpu() - cpu_before)
}

/// Polls completed by every poller so far (from the per-poller state).
fn polls(registry: &Registry) -> u64 {
    registry.total_polls()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize = if bench { 10_000 } else { 1_000 };
    let run = Duration::from_secs(if bench { 20 } else { 3 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The Prometheus recorder, as `orascale serve` installs it: every poll records its
        // histogram and counter for real.
        let _metrics = orascale::telemetry::metrics::install();
        // 1. The instant source.
        let instant = Arc::new(Instant0::default());
        let mut sources: BTreeMap<String, Arc<dyn Source>> = BTreeMap::new();
        sources.insert("instant".into(), instant.clone());
        let (reg, stop) = registry(sources, n);
        let (done, used) = steady(&reg, "instant", n, |i| format!("select {i}"), run).await;
        let mut lateness = Vec::new();
        for times in instant.seen.lock().unwrap().values() {
            for w in times.windows(2).skip(1) {
                lateness.push(((w[1] - w[0]).as_secs_f64() - 1.0).max(0.0) * 1000.0);
            }
        }
        println!(
            "{}",
            json!({"bench": "pollers", "source": "instant", "pollers": n, "seconds": run.as_secs(),
                "polls": done, "cpu_ms": used.as_millis() as u64,
                "cpu_us_per_poll": (used.as_secs_f64() * 1e6 / done.max(1) as f64 * 10.0).round() / 10.0,
                "tick_lateness": support::percentiles_ms(lateness)})
        );
        assert!(done as f64 >= n as f64 * run.as_secs_f64() * 0.8, "pollers keep their interval: {done}");
        stop.cancel();

        // 2. A real SQLite file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "create table jobs(id integer primary key, status text);
                 insert into jobs(status) select 'queued' from (with recursive n(x) as (select 1 union all select x+1 from n where x < 1000) select x from n);",
            )
            .unwrap();
        let mut sources: BTreeMap<String, Arc<dyn Source>> = BTreeMap::new();
        sources.insert(
            "lite".into(),
            Arc::new(orascale::source::sqlite::Sqlite::new("lite", SqliteTarget::File(path), 4)),
        );
        let (reg, stop) = registry(sources, n);
        let (done, used) = steady(&reg, "lite", n, |i| format!("select count(*) from jobs where id = {i}"), run).await;
        println!(
            "{}",
            json!({"bench": "pollers", "source": "sqlite", "pollers": n, "seconds": run.as_secs(),
                "polls": done, "cpu_ms": used.as_millis() as u64,
                "cpu_us_per_poll": (used.as_secs_f64() * 1e6 / done.max(1) as f64 * 10.0).round() / 10.0})
        );
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(500)).await;

        // 3. Memory per idle poller.
        let idle = Arc::new(Instant0::default());
        let mut sources: BTreeMap<String, Arc<dyn Source>> = BTreeMap::new();
        sources.insert("idle".into(), idle.clone());
        let (reg, stop) = registry(sources, n);
        let before = support::rss_kib();
        for i in 0..n {
            reg.read(&key("idle", format!("select {i}"), Duration::from_secs(3600)), &origin(), None, None, None)
                .await
                .unwrap();
        }
        let grown = support::rss_kib().saturating_sub(before);
        println!(
            "{}",
            json!({"bench": "pollers", "part": "idle_memory", "pollers": n, "rss_growth_kib": grown,
                "kib_per_idle_poller": (grown as f64 / n as f64 * 100.0).round() / 100.0})
        );
        assert_eq!(reg.pollers(), n);
        stop.cancel();
    });
}
