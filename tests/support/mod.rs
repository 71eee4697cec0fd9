//! Test fixtures: a real SQLite file the tests change, the server in-process or as the real
//! binary on 127.0.0.1:0, a KEDA-like client, and a timeout guard for every async test.
#![allow(dead_code)]

pub mod logs;
pub mod pg;
pub mod pki;

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orascale::app::{self, Running};
use orascale::config::{ConnectionConfig, ConnectionUrl, EngineConfig, LogFormat, SqliteTarget};
use orascale::grpc::proto::external_scaler_client::ExternalScalerClient;
use orascale::grpc::proto::{GetMetricsRequest, ScaledObjectRef};
use tonic::transport::Channel;

/// Prints a SKIP line that `cargo test` shows even for passing tests (it writes to the real
/// stderr, not the captured one): one per skipped test, so `scripts/test` can name and count
/// every one (with all integration tests in one binary, a line per cause would hide the rest).
pub fn skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP test {test}: {reason}");
}

/// A loopback port nothing listens on (the OS picked it free a moment ago).
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every async test runs under this bound, so a hang fails instead of stalling CI.
pub async fn guard<F: Future>(limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"))
}

/// A SQLite database file with a `jobs` table, changed by the test as an application would.
pub struct TestDb {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TestDb {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "wal").unwrap();
        conn.execute_batch(
            "create table jobs (id integer primary key, status text not null);
             create table secrets (v text); insert into secrets values ('keep me');",
        )
        .unwrap();
        TestDb { dir, path }
    }

    pub fn url(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    /// Sets the number of queued jobs to `n`.
    pub fn set_queued(&self, n: usize) {
        let mut conn = rusqlite::Connection::open(&self.path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute("delete from jobs", []).unwrap();
        for _ in 0..n {
            tx.execute("insert into jobs(status) values ('queued')", [])
                .unwrap();
        }
        tx.commit().unwrap();
    }

    /// Every row of every table, to prove a batch of inputs changed nothing.
    pub fn dump(&self) -> Vec<String> {
        let conn = rusqlite::Connection::open(&self.path).unwrap();
        let mut out = Vec::new();
        let tables: Vec<String> = conn
            .prepare("select name from sqlite_master order by name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for t in &tables {
            out.push(format!("table {t}"));
            let mut stmt = conn.prepare(&format!("select * from \"{t}\"")).unwrap();
            let cols = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    Ok((0..cols)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap();
            out.extend(rows.map(Result::unwrap));
        }
        out
    }
}

pub const QUEUED: &str = "select count(*) from jobs where status = 'queued'";

/// Engine settings for tests: a 1 s minimum so tests can poll fast.
pub fn engine() -> EngineConfig {
    EngineConfig {
        min_poll_interval: Duration::from_millis(100),
        default_poll_interval: Duration::from_secs(1),
        ..EngineConfig::default()
    }
}

pub fn connection(name: &str, url: &str) -> ConnectionConfig {
    ConnectionConfig::new(name, orascale::config::parse_url(url).unwrap())
}

pub fn memory(name: &str) -> ConnectionConfig {
    ConnectionConfig::new(name, ConnectionUrl::Sqlite(SqliteTarget::Memory))
}

/// Starts the server in this process on loopback ports chosen by the OS.
pub async fn start(connections: Vec<ConnectionConfig>, engine: EngineConfig) -> Running {
    app::start(config(connections, engine))
        .await
        .expect("server starts")
}

/// The configuration `start` uses, to adjust before `app::start`.
pub fn config(
    connections: Vec<ConnectionConfig>,
    engine: EngineConfig,
) -> orascale::config::Config {
    orascale::config::Config {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        connections: connections
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect(),
        engine,
        log_format: LogFormat::Text,
        tls: None,
        tls_reload_interval: std::time::Duration::from_secs(10),
        allow_metadata_credentials: false,
        demo_db: None,
    }
}

/// One HTTP/2 connection, like KEDA's.
pub async fn client(addr: SocketAddr) -> ExternalScalerClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the scaler");
    ExternalScalerClient::new(channel)
}

pub fn object(name: &str, meta: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.into(),
        namespace: "test".into(),
        scaler_metadata: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    }
}

/// The benchmarks' GetMetrics (`unary`, `handler`): ScaledObject `name` in namespace `bench`,
/// counting the queued rows of `jobs`.
pub fn bench_request(name: &str) -> GetMetricsRequest {
    GetMetricsRequest {
        scaled_object_ref: Some(ScaledObjectRef {
            name: name.into(),
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
    }
}

/// What each of the four unary-or-opening RPCs a ScaledObject's calls go through answers for
/// `obj` (a stream counts as answered once it opens), named: for checks that a refusal is
/// the same whichever way KEDA asks.
pub async fn each_rpc(
    c: &mut ExternalScalerClient<Channel>,
    obj: &ScaledObjectRef,
) -> [(&'static str, Result<(), tonic::Status>); 4] {
    [
        (
            "GetMetricSpec",
            c.get_metric_spec(deadline(obj.clone())).await.map(drop),
        ),
        (
            "GetMetrics",
            c.get_metrics(deadline(metrics_request(obj, "")))
                .await
                .map(drop),
        ),
        (
            "IsActive",
            c.is_active(deadline(obj.clone())).await.map(drop),
        ),
        (
            "StreamIsActive",
            c.stream_is_active(obj.clone()).await.map(drop),
        ),
    ]
}

pub fn metrics_request(obj: &ScaledObjectRef, metric_name: &str) -> GetMetricsRequest {
    GetMetricsRequest {
        scaled_object_ref: Some(obj.clone()),
        metric_name: metric_name.into(),
    }
}

/// The one value of a GetMetrics answer.
pub fn value(r: tonic::Response<orascale::grpc::proto::GetMetricsResponse>) -> f64 {
    r.into_inner().metric_values[0].metric_value_float
}

/// Calls GetMetrics every 20 ms until it answers `want`; fails with `what` after `limit`.
pub async fn wait_value(
    c: &mut ExternalScalerClient<Channel>,
    obj: &ScaledObjectRef,
    want: f64,
    limit: std::time::Duration,
    what: &str,
) {
    let started = std::time::Instant::now();
    while value(
        c.get_metrics(deadline(metrics_request(obj, "")))
            .await
            .unwrap(),
    ) != want
    {
        assert!(started.elapsed() < limit, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// GetMetrics for a trigger whose poller may be new: while the answer is "no result yet" (the
/// first query still running after the server's own 2 s wait, as on a loaded machine) it asks
/// again, up to `limit`; any other answer is returned as it is.
pub async fn first_value(
    c: &mut ExternalScalerClient<Channel>,
    obj: &ScaledObjectRef,
    limit: std::time::Duration,
) -> Result<f64, tonic::Status> {
    let started = std::time::Instant::now();
    loop {
        match c.get_metrics(deadline(metrics_request(obj, ""))).await {
            Err(s) if s.message().starts_with("no result yet") && started.elapsed() < limit => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            other => return other.map(value),
        }
    }
}

/// Held by the tests that measure this process's own memory and by those that allocate much
/// of it in-process, so that, with every integration test in one binary (tests/suite), the two
/// never run side by side (an async lock: a test that panicked while holding it does not
/// poison the rest).
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// `/metrics` of a server, from an async test.
pub async fn scrape(addr: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || http_get(addr, "/metrics").1)
        .await
        .unwrap()
}

/// Resident memory of this process, in KiB (0 where /proc is missing).
pub fn rss_kib() -> u64 {
    rss_of("self")
}

/// Resident memory of process `pid` (or `self`), in KiB (0 where /proc is missing).
pub fn rss_of(pid: impl std::fmt::Display) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A unary request with KEDA's 3 s deadline.
pub fn deadline<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(Duration::from_secs(3));
    r
}

/// GET an admin path, blocking (run it in spawn_blocking from async tests).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let status = body
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one Prometheus sample line whose name and labels contain all of `parts`.
pub fn metric_value(text: &str, name: &str, parts: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .reduce(|a, b| a + b)
}

/// p50, p99 and max of milliseconds, as benches print them.
pub fn percentiles_ms(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    serde_json::json!({"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": v.last().copied().unwrap_or(0.0), "trials": v.len()})
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_orascale")
}

/// Runs the real binary to completion, without the caller's ORASCALE_* configuration:
/// (exit code, stdout, stderr).
pub fn run_bin(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env_remove("ORASCALE_CONNECTIONS")
        .env_remove("ORASCALE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The real binary, started with `orascale serve ARGS` on loopback ports it picks itself.
pub struct Binary {
    pub child: Child,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Binary {
    pub fn start(args: &[&str], cwd: &Path) -> Binary {
        Binary::start_with_env(args, cwd, &[])
    }

    pub fn start_with_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Binary {
        match Binary::try_start(args, cwd, env) {
            Ok(b) => b,
            Err((code, log)) => panic!("orascale did not become ready (exit {code:?}): {log}"),
        }
    }

    /// Starts `orascale serve ARGS`; `Err((exit code, log))` when it exits instead of
    /// becoming ready.
    pub fn try_start(
        args: &[&str],
        cwd: &Path,
        env: &[(&str, &str)],
    ) -> Result<Binary, (Option<i32>, String)> {
        Binary::try_start_program(bin(), args, cwd, env)
    }

    /// As [`Binary::start`], with the program named as given (a path relative to `cwd`, as
    /// `cargo run` starts it), not by the absolute path cargo built it at.
    pub fn start_program(program: &str, args: &[&str], cwd: &Path) -> Binary {
        match Binary::try_start_program(program, args, cwd, &[]) {
            Ok(b) => b,
            Err((code, log)) => panic!("orascale did not become ready (exit {code:?}): {log}"),
        }
    }

    fn try_start_program(
        program: &str,
        args: &[&str],
        cwd: &Path,
        env: &[(&str, &str)],
    ) -> Result<Binary, (Option<i32>, String)> {
        let mut child = Command::new(program)
            .arg("serve")
            .args([
                "--grpc-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .current_dir(cwd)
            .env("RUST_LOG", "info")
            .env_remove("ORASCALE_CONNECTIONS")
            .env_remove("ORASCALE_CONFIG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn orascale");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains("orascale ready")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let ready = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let code = child.wait().ok().and_then(|s| s.code());
                // The reader thread may still be appending the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Err((code, log.lock().unwrap().join("\n")));
            }
        };
        // Text (`grpc=ADDR`) or JSON (`"grpc":"ADDR"`) log lines.
        let field = |name: &str| -> SocketAddr {
            if ready.trim_start().starts_with('{') {
                let v: serde_json::Value = serde_json::from_str(&ready).unwrap();
                return v[name].as_str().unwrap().parse().unwrap();
            }
            let start = ready.find(&format!("{name}=")).unwrap() + name.len() + 1;
            ready[start..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        Ok(Binary {
            grpc: field("grpc"),
            metrics: field("metrics"),
            child,
            log,
        })
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for exit; returns the exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits up to `limit` for a log line containing `fragment`; returns the whole log.
    pub fn wait_log(&self, fragment: &str, limit: Duration) -> String {
        let started = std::time::Instant::now();
        loop {
            let log = self.log_text();
            if log.contains(fragment) || started.elapsed() > limit {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
