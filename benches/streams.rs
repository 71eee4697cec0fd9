//! 10,000 StreamIsActive streams over one HTTP/2 connection, as KEDA multiplexes every
//! ScaledObject over one, on 100 triggers (pollers). The server is the real binary in its own
//! process, so its memory per open stream is measured apart from the client's. After the rows
//! change, each trigger's poll pushes `true` to its 100 streams: the fan-out delay is each
//! stream's arrival minus the first arrival on the same trigger (p50/p99/max), and the total is
//! the change → last `true`. Prints one JSON line.
//!
//! `cargo bench --bench streams` (ORASCALE_BENCH_STREAMS to change the count; under
//! `cargo test` 2,000 streams).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::time::{Duration, Instant};

use orascale::grpc::proto::ScaledObjectRef;
use orascale::grpc::proto::external_scaler_client::ExternalScalerClient;
use tonic::transport::Channel;

/// Resident memory of process `pid`, in KiB.
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let streams: usize = std::env::var("ORASCALE_BENCH_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 10_000 } else { 2_000 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(streams));
}

async fn run(count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.pragma_update(None, "journal_mode", "wal").unwrap();
    db.execute_batch("create table jobs(id integer primary key, status text);")
        .unwrap();
    let server = support::Binary::start(
        &[
            "--connection",
            &format!("bench=sqlite:{}", path.display()),
            "--min-poll-interval",
            "100ms",
            "--max-streams",
            "200000",
            "--max-pollers-per-namespace",
            "100000",
        ],
        dir.path(),
    );
    let pid = server.child.id();
    let channel = Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = ExternalScalerClient::new(channel);
    let rss_before = rss_of(pid);

    let opening = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let mut c = client.clone();
        // 100 distinct triggers (pollers), each shared by count/100 ScaledObjects.
        let obj = ScaledObjectRef {
            name: format!("so-{i}"),
            namespace: format!("ns-{}", i % 50),
            scaler_metadata: [
                (
                    "query".to_string(),
                    format!(
                        "select count(*) from jobs where status = 'queued' and {} >= 0",
                        i % 100
                    ),
                ),
                ("targetQueryValue".to_string(), "1".to_string()),
                ("pollInterval".to_string(), "1s".to_string()),
            ]
            .into_iter()
            .collect(),
        };
        tasks.push(tokio::spawn(async move {
            c.stream_is_active(obj)
                .await
                .expect("stream opens")
                .into_inner()
        }));
    }
    let mut streams = Vec::with_capacity(count);
    for t in tasks {
        streams.push(t.await.unwrap());
    }
    let open_secs = opening.elapsed().as_secs_f64();
    // Let every poller publish its first (inactive) result.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_open = rss_of(pid);

    db.execute("insert into jobs(status) values ('queued')", [])
        .unwrap();
    let flipped = Instant::now();
    let waits = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| async move {
            let m = tokio::time::timeout(Duration::from_secs(60), s.message()).await;
            let ok = matches!(m, Ok(Ok(Some(ref r))) if r.result);
            (i % 100, ok, Instant::now(), s)
        });
    let results = futures::future::join_all(waits).await;
    let received = results.iter().filter(|r| r.1).count();
    let last = results.iter().map(|r| r.2).max().unwrap();
    // Fan-out: each stream's arrival after the first arrival on its trigger.
    let mut first = [None::<Instant>; 100];
    for (t, ok, at, _) in &results {
        if *ok {
            first[*t] = Some(first[*t].map_or(*at, |f: Instant| f.min(*at)));
        }
    }
    let mut fan: Vec<f64> = results
        .iter()
        .filter(|r| r.1)
        .map(|(t, _, at, _)| (*at - first[*t].unwrap()).as_secs_f64() * 1000.0)
        .collect();
    fan.sort_by(f64::total_cmp);
    let pct = |p: f64| fan[((fan.len() as f64 * p) as usize).min(fan.len() - 1)];
    drop(results);
    println!(
        "{}",
        serde_json::json!({
            "bench": "streams_one_connection", "streams": count, "pollers": 100,
            "open_secs": (open_secs * 100.0).round() / 100.0,
            "received_true": received,
            "change_to_last_true_secs": ((last - flipped).as_secs_f64() * 1000.0).round() / 1000.0,
            "fanout_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
            "server_rss_kib_before": rss_before, "server_rss_kib_open": rss_open,
            "server_kib_per_stream": ((rss_open.saturating_sub(rss_before)) as f64 / count as f64 * 10.0).round() / 10.0,
        })
    );
    assert_eq!(received, count, "every stream received true");
    let log = server.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
