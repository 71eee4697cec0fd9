//! StreamMetricSpec with targets read from the database, against the real binary (its own
//! process):
//!
//! 1. Change latency, polling: the time from a committed change of the target row (SQLite) to
//!    the new spec on an open StreamMetricSpec, with `targetPollInterval: 200ms`. Each trial
//!    waits a spread over 0–250 ms first, so the change lands at every phase of the interval.
//! 2. Change latency, woken: the same on PostgreSQL with `targetPollInterval: 1h` and
//!    `notifyChannel` (a statement trigger on the target table notifies): only the wake-up can
//!    bring the change. Skipped without PostgreSQL server binaries.
//! 0. Every stream is opened as KEDA opens it, with no GetMetricSpec first: its open message
//!    must already be the queried target (one message, no fallback first); the time from the
//!    open to it on a new target poller is `open_to_first_message_ms`.
//! 3. Quiet window: an open stream, the target unchanged, `targetPollInterval: 200ms`, for the
//!    window: the messages after the first (must be 0) and the target polls in that time,
//!    extrapolated to messages and polls per hour.
//!
//! `cargo bench --bench metric_spec` (100 trials, a 60 s window). Under `cargo test` a short
//! run (5 trials, a 2 s window) checks the path works. Prints JSON on the last line.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::time::{Duration, Instant};

use futures::FutureExt;
use orascale::grpc::proto::external_scaler_client::ExternalScalerClient;
use orascale::grpc::proto::{GetMetricSpecResponse, ScaledObjectRef};
use serde_json::json;
use support::*;
use tonic::Streaming;
use tonic::transport::Channel;

const TARGET: &str = "select target from targets where name = 'jobs'";

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (trials, window) = if bench {
        (100, Duration::from_secs(60))
    } else {
        (5, Duration::from_secs(2))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(trials, window));
}

fn trigger(name: &str, connection: &str, interval: &str, channel: Option<&str>) -> ScaledObjectRef {
    let mut meta = vec![
        ("connection", connection),
        ("query", "select count(*) from jobs"),
        ("targetQueryValue", "1"),
        ("pollInterval", "1h"),
        ("targetQuery", TARGET),
        ("targetPollInterval", interval),
    ];
    if let Some(c) = channel {
        meta.push(("notifyChannel", c));
    }
    object(name, &meta)
}

fn target_of(msg: &GetMetricSpecResponse) -> f64 {
    assert_eq!(msg.metric_specs.len(), 1, "never empty");
    msg.metric_specs[0].target_size_float
}

async fn next_target(stream: &mut Streaming<GetMetricSpecResponse>) -> f64 {
    let msg = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("a message within 30 s")
        .unwrap()
        .expect("open");
    target_of(&msg)
}

/// Opens the stream as KEDA does (no GetMetricSpec loop first) and reads the open message: one
/// message, already the queried target `first` (the stream waits for a new target poller's
/// first poll).
async fn open(
    c: &mut ExternalScalerClient<Channel>,
    obj: &ScaledObjectRef,
    first: f64,
) -> (Streaming<GetMetricSpecResponse>, f64) {
    let opened = Instant::now();
    let mut stream = c
        .stream_metric_spec(obj.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_target(&mut stream).await, first, "the open message");
    (stream, opened.elapsed().as_secs_f64() * 1000.0)
}

/// A spread over 0–250 ms from a trial's index (no RNG dependency; a fixed, even spread).
fn spread(i: usize) -> Duration {
    Duration::from_millis(((i * 37) % 251) as u64)
}

async fn sqlite(trials: usize, window: Duration) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.pragma_update(None, "journal_mode", "wal").unwrap();
    db.execute_batch(
        "create table jobs(id integer primary key, status text);
         create table targets(name text primary key, target real);
         insert into targets values ('jobs', 1000);",
    )
    .unwrap();
    let server = Binary::start(
        &[
            "--connection",
            &format!("db=sqlite:{}", path.display()),
            "--min-poll-interval",
            "100ms",
        ],
        dir.path(),
    );
    let mut c = client(server.grpc).await;

    let obj = trigger("latency", "db", "200ms", None);
    let (mut stream, open_ms) = open(&mut c, &obj, 1000.0).await;
    let mut ms = Vec::with_capacity(trials);
    for i in 0..trials {
        tokio::time::sleep(spread(i)).await;
        let want = 1001.0 + i as f64;
        db.execute("update targets set target = ?1 where name = 'jobs'", [want])
            .unwrap();
        let changed = Instant::now();
        assert_eq!(next_target(&mut stream).await, want);
        ms.push(changed.elapsed().as_secs_f64() * 1000.0);
    }
    drop(stream);

    // The quiet window: a second trigger (its own poller), the target steady.
    let quiet = trigger("quiet", "db", "200ms", None);
    let (mut stream, _) = open(&mut c, &quiet, want_last(trials)).await;
    let polls_before = polls(&server, "db").await;
    tokio::time::sleep(window).await;
    let polls_in_window = polls(&server, "db").await - polls_before;
    let mut messages = 0u64;
    while let Some(m) = stream.message().now_or_never() {
        m.unwrap().expect("open");
        messages += 1;
    }
    let per_hour = |n: f64| (n * 3600.0 / window.as_secs_f64()).round();
    json!({
        "open_to_first_message_ms": open_ms,
        "polling_200ms": percentiles_ms(ms),
        "quiet": {
            "window_s": window.as_secs_f64(),
            "messages_after_open": messages,
            "messages_per_hour": per_hour(messages as f64),
            "target_polls": polls_in_window,
            "target_polls_per_hour": per_hour(polls_in_window),
        },
    })
}

/// The target the latency trials leave in the table.
fn want_last(trials: usize) -> f64 {
    1000.0 + trials as f64
}

async fn polls(server: &Binary, connection: &str) -> f64 {
    let text = scrape(server.metrics).await;
    metric_value(
        &text,
        "orascale_polls_total",
        &[&format!("connection=\"{connection}\"")],
    )
    .unwrap_or(0.0)
}

async fn postgres(trials: usize) -> serde_json::Value {
    let Some(pg) = support::pg::Pg::start_or_skip("metric_spec bench") else {
        return json!("skipped: no PostgreSQL server binaries");
    };
    let admin = pg.setup().await;
    admin
        .batch_execute(
            "create table targets (name text primary key, target numeric);
             insert into targets values ('jobs', 1000);
             grant select on targets to scaler;
             create function targets_notify() returns trigger language plpgsql as $$
             begin perform pg_notify('targets_changed', ''); return null; end $$;
             create trigger targets_notify after insert or update or delete on targets
               for each statement execute function targets_notify();",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(
        &[
            "--connection",
            &format!("pg={}", pg.scaler_url()),
            "--min-poll-interval",
            "100ms",
        ],
        dir.path(),
    );
    let mut c = client(server.grpc).await;
    let obj = trigger("woken", "pg", "1h", Some("targets_changed"));
    let (mut stream, _) = open(&mut c, &obj, 1000.0).await;
    let mut ms = Vec::with_capacity(trials);
    for i in 0..trials {
        // Past minWakeInterval (100 ms by default) since the previous wake poll.
        tokio::time::sleep(Duration::from_millis(150) + spread(i)).await;
        let want = 1001.0 + i as f64;
        let sent = Instant::now();
        admin
            .batch_execute(&format!(
                "update targets set target = {want} where name = 'jobs'"
            ))
            .await
            .unwrap();
        assert_eq!(next_target(&mut stream).await, want);
        ms.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    json!({"notify_poll_1h": percentiles_ms(ms)})
}

async fn run(trials: usize, window: Duration) {
    let sqlite = sqlite(trials, window).await;
    let postgres = postgres(trials).await;
    assert_eq!(sqlite["quiet"]["messages_after_open"], 0, "{sqlite}");
    println!(
        "{}",
        json!({"bench": "metric_spec", "trials": trials, "sqlite": sqlite, "postgres": postgres})
    );
}
