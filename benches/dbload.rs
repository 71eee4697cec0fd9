//! Database load under KEDA's real call pattern (../shared/KEDA.md): 1,000 ScaledObjects over 50
//! distinct triggers for a minute. Each ScaledObject gets, from its own random phase,
//! GetMetricSpec → GetMetrics → IsActive every pollingInterval (KEDA's loop), the same every
//! 15 s (the HPA's sync), and keeps one StreamIsActive open (external-push). Queries are counted
//! on the database — `pg_stat_user_tables.seq_scan` of the table every trigger reads, on a real
//! PostgreSQL server — and set against the calls answered, which is what a query-per-call scaler
//! (KEDA's built-in SQL scalers) would issue for the same calls.
//!
//! `cargo bench --bench dbload`. Under `cargo test` a scaled-down run (100 ScaledObjects, 10
//! triggers, 4 s) asserts one query per distinct trigger per poll interval. Prints JSON.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use orascale::grpc::proto::GetMetricsRequest;
use serde_json::json;

struct Plan {
    scaled_objects: usize,
    triggers: usize,
    duration: Duration,
    poll_interval: Duration,
    keda_loop: Duration,
    hpa_sync: Duration,
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let plan = if bench {
        Plan {
            scaled_objects: 1000,
            triggers: 50,
            duration: Duration::from_secs(60),
            poll_interval: Duration::from_secs(10),
            keda_loop: Duration::from_secs(30),
            hpa_sync: Duration::from_secs(15),
        }
    } else {
        Plan {
            scaled_objects: 100,
            triggers: 10,
            duration: Duration::from_secs(4),
            poll_interval: Duration::from_secs(1),
            keda_loop: Duration::from_millis(500),
            hpa_sync: Duration::from_millis(250),
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(plan));
}

async fn run(plan: Plan) {
    let Some(pg) = support::pg::Pg::start_or_skip("dbload bench") else {
        println!(
            "{}",
            json!({"bench": "dbload", "skipped": "no PostgreSQL server binaries"})
        );
        return;
    };
    let admin = pg.setup().await;
    support::pg::set_queued(&admin, 5).await;
    let scans = || async {
        admin
            .query_one(
                "select coalesce(seq_scan, 0) + coalesce(idx_scan, 0) from pg_stat_user_tables where relname = 'jobs'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let mut engine = support::engine();
    engine.min_poll_interval = Duration::from_millis(100);
    let server = support::start(vec![support::connection("pg", &pg.scaler_url())], engine).await;
    // Every stat counted so far belongs to the setup.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = scans().await;

    let client = support::client(server.grpc_addr).await; // one HTTP/2 connection, like KEDA
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + plan.duration;
    let interval = humantime::format_duration(plan.poll_interval).to_string();
    let mut tasks = Vec::new();
    for i in 0..plan.scaled_objects {
        let trigger = i % plan.triggers;
        let query = format!("select count(*) + {trigger} from jobs where status = 'queued'");
        let obj = support::object(
            &format!("so-{i}"),
            &[
                ("query", query.as_str()),
                ("targetQueryValue", "5"),
                ("pollInterval", interval.as_str()),
            ],
        );
        let mut c = client.clone();
        // external-push: one long-lived stream per ScaledObject.
        let mut stream = c.stream_is_active(obj.clone()).await.unwrap().into_inner();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(_)) = stream.message().await {}
        }));
        for period in [plan.keda_loop, plan.hpa_sync] {
            let mut c = client.clone();
            let obj = obj.clone();
            let calls = calls.clone();
            let failures = failures.clone();
            let phase = period.mul_f64((i * 7919 % 1000) as f64 / 1000.0);
            tasks.push(tokio::spawn(async move {
                let mut next = tokio::time::Instant::now() + phase;
                loop {
                    tokio::time::sleep_until(next).await;
                    if Instant::now() >= end {
                        return;
                    }
                    next += period;
                    let _ = c.get_metric_spec(support::deadline(obj.clone())).await;
                    let request = GetMetricsRequest {
                        scaled_object_ref: Some(obj.clone()),
                        metric_name: String::new(),
                    };
                    for ok in [
                        c.get_metrics(support::deadline(request)).await.is_ok(),
                        c.is_active(support::deadline(obj.clone())).await.is_ok(),
                    ] {
                        calls.fetch_add(1, Ordering::Relaxed);
                        if !ok {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        end + Duration::from_millis(50),
    ))
    .await;
    let elapsed = started.elapsed();
    server.stop().await; // sessions close and flush their statistics
    for t in &tasks {
        t.abort();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let queries = (scans().await - before) as u64;
    let calls = calls.load(Ordering::Relaxed);
    let failures = failures.load(Ordering::Relaxed);
    let polls_per_trigger = elapsed.as_secs_f64() / plan.poll_interval.as_secs_f64();
    // Each poller polls once when created, then every interval from a random phase.
    let expected = plan.triggers as f64 * (polls_per_trigger + 0.5);
    println!(
        "{}",
        json!({
            "bench": "dbload",
            "scaled_objects": plan.scaled_objects,
            "distinct_triggers": plan.triggers,
            "seconds": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
            "poll_interval_s": plan.poll_interval.as_secs_f64(),
            "calls_answered": calls,
            "call_failures": failures,
            "queries_on_database": queries,
            "expected_one_per_trigger_per_interval": expected.round(),
            "query_per_call_scaler_would_issue": calls,
            "reduction": (calls as f64 / queries.max(1) as f64 * 10.0).round() / 10.0,
        })
    );
    assert_eq!(failures, 0, "every GetMetrics/IsActive answered");
    // One query per distinct trigger per interval, within one poll per trigger of the ideal.
    let slack = plan.triggers as f64;
    assert!(
        (queries as f64 - expected).abs() <= slack,
        "{queries} queries, expected {expected:.0} ± {slack}"
    );
}
