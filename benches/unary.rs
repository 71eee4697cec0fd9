//! GetMetrics at saturation over one HTTP/2 connection, on a warm cache: the hot path KEDA
//! hits every HPA sync. The real server runs in-process on SQLite. Prints one JSON line.
//!
//! `cargo bench --bench unary` (ORASCALE_BENCH_SECS, ORASCALE_BENCH_CONCURRENCY to change).
//! ORASCALE_BENCH_REQUESTS=N makes each worker send exactly N calls instead of running for a
//! time: run under `valgrind --tool=callgrind` at two N, the difference in instructions divided
//! by the difference in calls is the cost of one GetMetrics (client and server), repeatably.
#![allow(deprecated)]

use std::time::{Duration, Instant};

use orascale::config::{
    Config, ConnectionConfig, ConnectionUrl, EngineConfig, LogFormat, SqliteTarget,
};
use orascale::grpc::proto::external_scaler_client::ExternalScalerClient;
use orascale::grpc::proto::{GetMetricsRequest, ScaledObjectRef};
use tonic::transport::Channel;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test` this runs as a short smoke test.
    let bench = std::env::args().any(|a| a == "--bench");
    let secs: f64 = env_or("ORASCALE_BENCH_SECS", if bench { 5.0 } else { 0.5 });
    let concurrency: usize = env_or("ORASCALE_BENCH_CONCURRENCY", 64);
    let requests: Option<u64> = std::env::var("ORASCALE_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(Duration::from_secs_f64(secs), concurrency, requests));
}

async fn run(duration: Duration, concurrency: usize, requests: Option<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "create table jobs(id integer primary key, status text);
             insert into jobs(status) select 'queued' from (with recursive n(x) as (select 1 union all select x+1 from n where x < 1000) select x from n);",
        )
        .unwrap();
    }
    let conn = ConnectionConfig::new("bench", ConnectionUrl::Sqlite(SqliteTarget::File(path)));
    let config = Config {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        connections: [("bench".to_string(), conn)].into_iter().collect(),
        engine: EngineConfig::default(),
        log_format: LogFormat::Text,
        tls: None,
        tls_reload_interval: std::time::Duration::from_secs(10),
        allow_metadata_credentials: false,
        demo_db: None,
    };
    let server = orascale::app::start(config).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = ExternalScalerClient::new(channel);
    let request = GetMetricsRequest {
        scaled_object_ref: Some(ScaledObjectRef {
            name: "bench".into(),
            namespace: "bench".into(),
            scaler_metadata: [
                ("query", "select count(*) from jobs where status = 'queued'"),
                ("targetQueryValue", "10"),
                ("scalerAddress", "orascale.keda:9090"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        }),
        metric_name: String::new(),
    };
    // Warm the cache: the first call creates the poller and waits for its first result.
    let warm = client
        .clone()
        .get_metrics(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(warm.metric_values[0].metric_value_float, 1000.0);

    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            let request = request.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                let mut sent = 0u64;
                while requests.map_or(Instant::now() < deadline, |n| sent < n) {
                    sent += 1;
                    let t = Instant::now();
                    match client.get_metrics(request.clone()).await {
                        Ok(_) => latencies.push(t.elapsed().as_micros() as u32),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"bench\":\"unary_get_metrics\",\"connections\":1,\"concurrency\":{concurrency},\"seconds\":{elapsed:.2},\"requests\":{},\"errors\":{errors},\"requests_per_sec\":{:.0},\"p50_us\":{},\"p99_us\":{},\"max_us\":{}}}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        all.last().copied().unwrap_or(0),
    );
    // A benchmark of failures measures nothing: every call must have been answered.
    assert_eq!(errors, 0, "GetMetrics calls failed during the benchmark");
    assert!(!all.is_empty(), "no call completed");
    server.stop().await;
}
