//! The GetMetrics handler alone (`Scaler::get_metrics`, no gRPC stack): nanoseconds per call on
//! a warm spec cache and a running poller, from one task and from two tasks on two runtime
//! workers calling at once — for the same trigger, and round-robin over 100 ScaledObjects
//! (KEDA asks for every object in turn). Two callers pay for every write both make to
//! shared memory (a lock word, a reference count, a use time): each moves a cache line from the
//! other core. With no shared writes, two callers cost what one does. The Prometheus recorder is
//! installed, as in the server, so the call's metrics are in the figure.
//!
//! `cargo bench --bench handler` (ORASCALE_BENCH_CALLS calls per task per round, 100,000 by
//! default; 3 rounds, the median printed); under `cargo test` a 20,000-call smoke run. One JSON
//! line per case and thread count; `request_drop_ns` is what building and dropping a request costs
//! alone (the requests are made before the clock starts, dropped inside the call).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use orascale::config::EngineConfig;
use orascale::engine::Registry;
use orascale::grpc::Scaler;
use orascale::grpc::proto::external_scaler_server::ExternalScaler;
use orascale::source::{Cell, PoolStatus, ServerInfo, Source, SourceError};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Request;

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

/// Answers 1000 at once.
struct Constant;

impl Source for Constant {
    fn kind(&self) -> &'static str {
        "sqlite"
    }
    fn driver(&self) -> Result<String, SourceError> {
        Ok("constant".into())
    }
    fn pool(&self) -> PoolStatus {
        PoolStatus::default()
    }
    fn server_info<'a>(&'a self, _: Duration) -> BoxFuture<'a, Result<ServerInfo, SourceError>> {
        async { Err(SourceError::Unsupported("constant".into())) }.boxed()
    }
    fn query<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<Cell, SourceError>> {
        async { Ok(Cell::Number(1000.0)) }.boxed()
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let calls: usize = std::env::var("ORASCALE_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 100_000 } else { 20_000 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(calls));
}

async fn run(calls: usize) {
    let _metrics = orascale::telemetry::metrics::install();
    let mut sources: BTreeMap<String, Arc<dyn Source>> = BTreeMap::new();
    sources.insert("bench".into(), Arc::new(Constant));
    let shutdown = CancellationToken::new();
    let registry = Registry::new(
        sources,
        EngineConfig::default(),
        shutdown.clone(),
        TaskTracker::new(),
    );
    let scaler = Scaler::new(
        registry,
        [("bench".to_string(), support::memory("bench"))]
            .into_iter()
            .collect(),
        false,
        shutdown.clone(),
    );
    let one = vec![support::bench_request("bench")];
    let hundred: Vec<_> = (0..100)
        .map(|i| support::bench_request(&format!("bench-{i}")))
        .collect();
    // The first call of each creates the poller (one: the query is the same) and caches its
    // trigger.
    for r in one.iter().chain(&hundred) {
        let first = scaler
            .get_metrics(Request::new(r.clone()))
            .await
            .expect("the first call answers")
            .into_inner();
        assert_eq!(first.metric_values[0].metric_value, 1000);
    }

    let drop_ns = {
        let requests: Vec<_> = (0..calls).map(|_| one[0].clone()).collect();
        let t = Instant::now();
        for r in requests {
            std::hint::black_box(Request::new(r));
        }
        t.elapsed().as_nanos() as f64 / calls as f64
    };
    for (case, set) in [("one_trigger", &one), ("hundred_triggers", &hundred)] {
        for threads in [1, 2] {
            let mut rounds = Vec::new();
            let mut overlaps = Vec::new();
            for _ in 0..3 {
                let round = Instant::now();
                let mut tasks = Vec::new();
                for t in 0..threads {
                    let (scaler, set) = (scaler.clone(), set.clone());
                    tasks.push(tokio::spawn(async move {
                        // The two tasks walk the objects from different places.
                        let requests: Vec<_> = (0..calls)
                            .map(|i| set[(i + t * 50) % set.len()].clone())
                            .collect();
                        let started = Instant::now();
                        for r in requests {
                            let answer = scaler.get_metrics(Request::new(r)).await;
                            std::hint::black_box(answer.expect("GetMetrics answers"));
                        }
                        started.elapsed()
                    }));
                }
                let mut busy = Duration::ZERO;
                for t in tasks {
                    busy += t.await.unwrap();
                }
                rounds.push(busy.as_nanos() as f64 / (calls * threads) as f64);
                // The tasks' busy time over the round's wall time: 2 when two really ran at
                // once (a hit never yields, so two tasks on one worker take turns and read 1).
                let wall = round.elapsed().as_secs_f64();
                overlaps.push((busy.as_secs_f64() / wall * 100.0).round() / 100.0);
            }
            rounds.sort_by(f64::total_cmp);
            println!(
                "{}",
                json!({
                    "bench": "handler",
                    "method": "GetMetrics",
                    "case": case,
                    "threads": threads,
                    "calls_per_thread": calls,
                    "ns_per_call": rounds[1].round(),
                    "rounds_ns": rounds.iter().map(|r| r.round()).collect::<Vec<_>>(),
                    "busy_over_wall": overlaps,
                    "request_drop_ns": drop_ns.round(),
                })
            );
        }
    }
    shutdown.cancel();
}
