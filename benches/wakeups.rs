//! Database-driven wake-ups against polling, on a real PostgreSQL server with the real binary
//! serving (its own process):
//!
//! 1. Activation latency: the time from sending a committed INSERT to `true` on an open
//!    StreamIsActive, for triggers with `pollInterval: 60s` + `notifyChannel`, next to triggers
//!    polling every 1 s and every 100 ms (no wake-ups). Each trial empties the table, waits
//!    until all four read 0, waits 200 ms plus a spread over 0–1 s (so the polling triggers
//!    are not measured at one phase of their interval), then inserts one row.
//! 2. Queries per minute, per trigger, while 50 commits/s land on the table, then while it is
//!    idle: counted by orascale per connection (`orascale_polls_total`; each poll is one
//!    query). A second wake-up trigger with `minWakeInterval: 1s` shows the knob that trades
//!    latency under load for queries.
//!
//! 3. Oracle (`DBMS_ALERT`), when `ORASCALE_BENCH_ORACLE_URL` names a database
//!    (`oracle://USER:PASSWORD@HOST:PORT/SERVICE`; the user needs CREATE TABLE, CREATE TRIGGER
//!    and EXECUTE ON SYS.DBMS_ALERT, and Instant Client must be installed): the same activation
//!    latency for one trigger with `pollInterval: 60s` + `notifyChannel`, its table's
//!    statement-level trigger signalling the alert. Without the variable the JSON's `oracle`
//!    entry says it was skipped.
//!
//! `cargo bench --bench wakeups` (120 trials, 60 s phases). Under `cargo test` a short run
//! (5 trials, 2 s phases) checks the path works. Prints JSON on the last line.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::time::{Duration, Instant};

use orascale::grpc::proto::{IsActiveResponse, ScaledObjectRef};
use serde_json::json;
use support::*;
use tokio_postgres::Client;

const TRIGGERS: [(&str, &str, &str, &str); 4] = [
    // (connection, pollInterval, notifyChannel, minWakeInterval)
    ("wake", "60s", "jobs_changed", "100ms"),
    ("wake1s", "60s", "jobs_changed", "1s"),
    ("poll1s", "1s", "", ""),
    ("poll100ms", "100ms", "", ""),
];

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (trials, phase) = if bench {
        (120, Duration::from_secs(60))
    } else {
        (5, Duration::from_secs(2))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut out = run(trials, phase).await;
        out.insert("oracle".into(), oracle_wakeups(trials).await);
        println!("{}", serde_json::Value::Object(out));
    });
}

/// The bench's Oracle entry: commit → `true` through DBMS_ALERT, or why it was skipped.
async fn oracle_wakeups(trials: usize) -> serde_json::Value {
    const VAR: &str = "ORASCALE_BENCH_ORACLE_URL";
    const TABLE: &str = "orascale_bench_jobs";
    let url = match std::env::var(VAR) {
        Ok(u) if !u.is_empty() => u,
        _ => {
            return json!({"skipped": format!("{VAR} is not set (oracle://USER:PASSWORD@HOST:PORT/SERVICE; needs Instant Client, CREATE TABLE, CREATE TRIGGER and EXECUTE ON SYS.DBMS_ALERT)")});
        }
    };
    let Ok(orascale::config::ConnectionUrl::Oracle {
        user,
        password,
        connect_string,
    }) = orascale::config::parse_url(&url)
    else {
        panic!("{VAR} must be an oracle:// URL");
    };
    let admin = oracle::Connection::connect(user, password.unwrap_or_default(), connect_string)
        .expect("an admin session to the bench database");
    let _ = admin.execute(&format!("drop table {TABLE} purge"), &[]);
    admin
        .execute(&format!("create table {TABLE} (id number)"), &[])
        .unwrap();
    // The documented trigger (docs/oracle.md §7): statement-level, signalled at commit.
    admin
        .execute(
            &format!(
                "create or replace trigger {TABLE}_signal after insert or update or delete on {TABLE} \
                 begin dbms_alert.signal('ORASCALE_BENCH_JOBS', ''); end;"
            ),
            &[],
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The URL (with its password) goes through the environment, not the command line.
    let server = Binary::start_with_env(
        &["--stream-resend-interval", "1h"],
        dir.path(),
        &[("ORASCALE_CONNECTIONS", &format!("ora={url}"))],
    );
    let mut c = client(server.grpc).await;
    let o = object(
        "ora",
        &[
            ("connection", "ora"),
            ("query", &format!("select count(*) from {TABLE}")),
            ("targetQueryValue", "1"),
            ("pollInterval", "60s"),
            ("notifyChannel", "orascale_bench_jobs"),
            ("minWakeInterval", "100ms"),
        ],
    );
    let mut stream = c.stream_is_active(o.clone()).await.unwrap().into_inner();
    let started = Instant::now();
    while metric_value(
        &scrape(server.metrics).await,
        "orascale_wake_listener_up",
        &["connection=\"ora\""],
    ) != Some(1.0)
    {
        assert!(started.elapsed() < Duration::from_secs(30), "listener up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut latencies = Vec::new();
    for trial in 0..trials {
        admin.execute(&format!("delete from {TABLE}"), &[]).unwrap();
        admin.commit().unwrap();
        let emptied = Instant::now();
        while value(
            c.get_metrics(deadline(metrics_request(&o, "")))
                .await
                .unwrap(),
        ) != 0.0
        {
            assert!(emptied.elapsed() < Duration::from_secs(5), "reads 0");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let jitter = (trial as u64 * 7919) % 1000;
        tokio::time::sleep(Duration::from_millis(200 + jitter)).await;
        let t0 = Instant::now();
        admin
            .execute(&format!("insert into {TABLE} values (1)"), &[])
            .unwrap();
        admin.commit().unwrap();
        let m: IsActiveResponse = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("true within 10 s")
            .unwrap()
            .unwrap();
        assert!(m.result);
        latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = admin.execute(&format!("drop table {TABLE} purge"), &[]);
    json!({
        "trigger": "pollInterval 60s + notifyChannel (DBMS_ALERT), minWakeInterval 100ms",
        "commit_to_true": percentiles_ms(latencies),
    })
}

fn obj(connection: &str, interval: &str, channel: &str, min_wake: &str) -> ScaledObjectRef {
    let mut meta = vec![
        ("connection", connection),
        ("query", "select count(*) from jobs"),
        ("targetQueryValue", "1"),
        ("pollInterval", interval),
    ];
    if !channel.is_empty() {
        meta.push(("notifyChannel", channel));
        meta.push(("minWakeInterval", min_wake));
    }
    object(connection, &meta)
}

async fn polls(server: &Binary) -> Vec<f64> {
    let text = scrape(server.metrics).await;
    TRIGGERS
        .iter()
        .map(|(c, _, _, _)| {
            metric_value(
                &text,
                "orascale_polls_total",
                &[&format!("connection=\"{c}\"")],
            )
            .unwrap_or(0.0)
        })
        .collect()
}

/// Queries per minute of each trigger over `phase`, `commits` per second. Each poll is one
/// query (the dbload bench checks that against PostgreSQL's own count).
async fn load(server: &Binary, admin: &Client, phase: Duration, commits: u32) -> serde_json::Value {
    let before = polls(server).await;
    let started = Instant::now();
    let mut sent = 0u64;
    if commits > 0 {
        let every = Duration::from_secs(1) / commits;
        let mut tick = tokio::time::interval(every);
        while started.elapsed() < phase {
            tick.tick().await;
            admin
                .batch_execute("insert into jobs(status) values ('queued')")
                .await
                .unwrap();
            sent += 1;
        }
    } else {
        tokio::time::sleep(phase).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let after = polls(server).await;
    let per_min = |n: f64| (n * 60.0 / secs).round();
    let mut out = serde_json::Map::new();
    for (i, (c, _, _, _)) in TRIGGERS.iter().enumerate() {
        out.insert(c.to_string(), json!(per_min(after[i] - before[i])));
    }
    out.insert("commits_per_s".into(), json!((sent as f64 / secs).round()));
    serde_json::Value::Object(out)
}

/// The PostgreSQL part: the JSON's top-level entries.
async fn run(trials: usize, phase: Duration) -> serde_json::Map<String, serde_json::Value> {
    let Some(pg) = support::pg::Pg::start_or_skip("wakeups bench") else {
        let skipped = json!({"bench": "wakeups", "skipped": "no PostgreSQL server binaries"});
        return skipped.as_object().cloned().unwrap_or_default();
    };
    let admin = pg.setup().await;
    support::pg::notify_trigger(&admin).await;
    let dir = tempfile::tempdir().unwrap();
    let url = pg.scaler_url();
    let mut args: Vec<String> = vec![
        "--min-poll-interval".into(),
        "100ms".into(),
        "--stream-resend-interval".into(),
        "1h".into(),
    ];
    for (c, _, _, _) in TRIGGERS {
        args.push("--connection".into());
        args.push(format!("{c}={url}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Binary::start(&args, dir.path());
    let mut c = client(server.grpc).await;
    let objects: Vec<ScaledObjectRef> = TRIGGERS
        .iter()
        .map(|(conn, interval, channel, min_wake)| obj(conn, interval, channel, min_wake))
        .collect();
    let mut streams = Vec::new();
    for o in &objects {
        streams.push(c.stream_is_active(o.clone()).await.unwrap().into_inner());
    }
    // The listener is up before the first trial.
    let started = Instant::now();
    while metric_value(
        &scrape(server.metrics).await,
        "orascale_wake_listener_up",
        &["connection=\"wake\""],
    ) != Some(1.0)
    {
        assert!(started.elapsed() < Duration::from_secs(10), "listener up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1. Activation latency.
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); TRIGGERS.len()];
    for trial in 0..trials {
        admin.batch_execute("delete from jobs").await.unwrap();
        let emptied = Instant::now();
        for o in &objects {
            loop {
                let v = value(
                    c.get_metrics(deadline(metrics_request(o, "")))
                        .await
                        .unwrap(),
                );
                if v == 0.0 {
                    break;
                }
                assert!(emptied.elapsed() < Duration::from_secs(5), "reads 0");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Spread the commit over a whole 1 s poll period, so the polling triggers are not
        // measured at one phase of their interval.
        let jitter = (trial as u64 * 7919) % 1000;
        tokio::time::sleep(Duration::from_millis(200 + jitter)).await;
        let t0 = Instant::now();
        admin
            .batch_execute("insert into jobs(status) values ('queued')")
            .await
            .unwrap();
        let waits = streams.iter_mut().map(|s| async move {
            let m: IsActiveResponse = tokio::time::timeout(Duration::from_secs(10), s.message())
                .await
                .expect("true within 10 s")
                .unwrap()
                .unwrap();
            assert!(m.result);
            t0.elapsed().as_secs_f64() * 1000.0
        });
        for (i, ms) in futures::future::join_all(waits)
            .await
            .into_iter()
            .enumerate()
        {
            latencies[i].push(ms);
        }
    }
    let mut latency = serde_json::Map::new();
    for (i, (conn, _, _, _)) in TRIGGERS.iter().enumerate() {
        latency.insert(conn.to_string(), percentiles_ms(latencies[i].clone()));
    }

    // 2. Queries per minute under 50 commits/s, then idle.
    let busy = load(&server, &admin, phase, 50).await;
    let idle = load(&server, &admin, phase, 0).await;
    let text = scrape(server.metrics).await;
    let wake_polls = metric_value(&text, "orascale_wake_polls_total", &["connection=\"wake\""]);
    let notifications = metric_value(
        &text,
        "orascale_wake_notifications_total",
        &["connection=\"wake\""],
    );
    json!({
            "bench": "wakeups",
            "triggers": {"wake": "pollInterval 60s + notifyChannel, minWakeInterval 100ms", "wake1s": "pollInterval 60s + notifyChannel, minWakeInterval 1s", "poll1s": "pollInterval 1s", "poll100ms": "pollInterval 100ms"},
            "commit_to_true": latency,
            "queries_per_min_at_50_commits_per_s": busy,
            "queries_per_min_idle": idle,
            "wake_polls": wake_polls,
            "notifications": notifications,
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}
