//! 10,000 StreamIsActive streams over one HTTP/2 connection, as KEDA multiplexes every
//! ScaledObject over one: how long opening them takes, how much memory they cost, and how
//! long until every one has received `true` after the rows change. Prints one JSON line.
//!
//! `cargo bench --bench streams` (ORASCALE_BENCH_STREAMS to change the count).

use std::time::{Duration, Instant};

use orascale::config::{
    Config, ConnectionConfig, ConnectionUrl, EngineConfig, LogFormat, SqliteTarget,
};
use orascale::grpc::proto::ScaledObjectRef;
use orascale::grpc::proto::external_scaler_client::ExternalScalerClient;
use tonic::transport::Channel;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    if std::env::var("RUST_LOG").is_ok() {
        orascale::telemetry::init_logging(orascale::config::LogFormat::Text);
    }
    let streams: usize = std::env::var("ORASCALE_BENCH_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
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
    let conn = ConnectionConfig::new(
        "bench",
        ConnectionUrl::Sqlite(SqliteTarget::File(path.clone())),
    );
    let config = Config {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        connections: [("bench".to_string(), conn)].into_iter().collect(),
        engine: EngineConfig {
            min_poll_interval: Duration::from_millis(100),
            ..EngineConfig::default()
        },
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
    let rss_before = rss_kib();

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
    let rss_open = rss_kib();

    db.execute("insert into jobs(status) values ('queued')", [])
        .unwrap();
    let flipped = Instant::now();
    let waits = streams.into_iter().map(|mut s| async move {
        let m = tokio::time::timeout(Duration::from_secs(60), s.message()).await;
        let ok = matches!(m, Ok(Ok(Some(ref r))) if r.result);
        (ok, flipped.elapsed(), s)
    });
    let results = futures::future::join_all(waits).await;
    let received = results.iter().filter(|(ok, _, _)| *ok).count();
    let mut lat: Vec<Duration> = results
        .iter()
        .filter(|(ok, _, _)| *ok)
        .map(|(_, d, _)| *d)
        .collect();
    lat.sort();
    let all_secs = lat.last().map(|d| d.as_secs_f64()).unwrap_or(f64::NAN);
    drop(results);
    println!(
        "{{\"bench\":\"streams_one_connection\",\"streams\":{count},\"pollers\":100,\"open_secs\":{open_secs:.2},\"received_true\":{received},\"all_true_within_secs\":{all_secs:.2},\"rss_kib_before\":{rss_before},\"rss_kib_open\":{rss_open},\"kib_per_stream\":{:.1}}}",
        (rss_open.saturating_sub(rss_before)) as f64 / count as f64
    );
    assert_eq!(received, count, "every stream received true");
    server.stop().await;
}
