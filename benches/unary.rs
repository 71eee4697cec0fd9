//! GetMetrics on a warm cache — the hot path KEDA hits every HPA sync — against orascale (the
//! real binary) and against a bare tonic server that answers a constant with the same proto and
//! the same HTTP/2 settings (this bench binary, `--serve-bare`), each in its own process, the
//! load from this one. Alternating orascale / bare / orascale / bare in one run: at saturation
//! over 1 and 16 connections, then at a fixed rate (ORASCALE_BENCH_RATE calls/s over
//! ORASCALE_BENCH_RATE_CONNECTIONS connections, 5,000 on 1 by default; latency counted from
//! each call's scheduled time, so queueing shows). The ratio orascale ÷ bare is the overhead
//! orascale adds to the gRPC stack. Prints one JSON line per run and a summary line last.
//!
//! Every run also reports the CPU time each side spent per answered call: the server's from
//! `/proc/<pid>/stat` of its own process (utime + stime over the run's window; stime, the
//! kernel's part, also alone), the load
//! generator's from `/proc/self/stat`. Throughput alone hides what a call costs: at saturation
//! the servers share two cores with the client, so a server that costs more CPU per call also
//! leaves the client less, and the throughput ratio mixes both.
//!
//! `cargo bench --bench unary` (ORASCALE_BENCH_SECS per run, ORASCALE_BENCH_CONCURRENCY calls
//! in flight, spread over the connections). ORASCALE_BENCH_REQUESTS=N makes each worker send
//! exactly N calls to orascale only (one connection): run under `valgrind --tool=callgrind` at
//! two N, the difference in instructions divided by the difference in calls is the cost of one
//! GetMetrics (client and server), repeatably.
#![allow(deprecated)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use orascale::config::{
    Config, ConnectionConfig, ConnectionUrl, EngineConfig, LogFormat, SqliteTarget,
};
use orascale::grpc::proto::external_scaler_client::ExternalScalerClient;
use orascale::grpc::proto::external_scaler_server::{ExternalScaler, ExternalScalerServer};
use orascale::grpc::proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricValue,
    ScaledObjectRef,
};
use serde_json::json;

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--serve-bare") {
        return serve_bare();
    }
    // `cargo bench` passes `--bench`; under `cargo test` this runs as a short smoke test.
    let bench = std::env::args().any(|a| a == "--bench");
    // Issue 19's reference point: 5,000 calls/s on one connection.
    let rate: u64 = env_or("ORASCALE_BENCH_RATE", if bench { 5_000 } else { 1_000 });
    let rate_connections: usize = env_or("ORASCALE_BENCH_RATE_CONNECTIONS", 1);
    let secs: f64 = env_or("ORASCALE_BENCH_SECS", if bench { 5.0 } else { 0.3 });
    let concurrency: usize = env_or("ORASCALE_BENCH_CONCURRENCY", 64);
    let requests: Option<u64> = std::env::var("ORASCALE_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(
        Duration::from_secs_f64(secs),
        concurrency,
        requests,
        (rate, rate_connections),
    ));
}

/// The bare server as a process of its own: prints its address, serves until killed.
fn serve_bare() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = start_bare().await;
        println!("{addr}");
        futures::future::pending::<()>().await;
    });
}

/// Linux's USER_HZ, the unit of `/proc/<pid>/stat`'s times (100 on every mainstream
/// architecture; asked of `getconf` rather than assumed).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU time (utime + stime) the process `pid` ("self" for this one) has used so far: all its
/// threads, exited ones included (tokio's blocking threads come and go).
fn cpu_time(pid: &str) -> Duration {
    let (user, system) = cpu_times(pid);
    user + system
}

/// [`cpu_time`] in its two parts, (utime, stime): time in the process's own code and time in
/// the kernel on its behalf (its reads, writes, epoll waits and wake-ups).
fn cpu_times(pid: &str) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
    // Field 2, the command name, may hold spaces and parentheses: count from its last ')'.
    // After it, field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        let n: u64 = fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("/proc/{pid}/stat: no field {}: {stat:?}", i + 3));
        Duration::from_secs_f64(n as f64 / clock_ticks())
    };
    (ticks(11), ticks(12))
}

/// Context switches (voluntary + involuntary) of the threads `pid` has now. A thread that
/// exits takes its count with it, so this undercounts a process whose threads come and go;
/// the servers' runtime workers live for the whole run.
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Read- and write-family system calls `pid` has made so far (`syscr` + `syscw` of
/// `/proc/<pid>/io`: `read`, `write`, `readv`, `writev` — the responses' `writev`, the
/// runtime's eventfd — but not the sockets' `recvfrom`/`sendto`). With the context switches,
/// it says whether a server's kernel time per call comes from more calls into the kernel
/// (smaller batches of responses) or from dearer ones.
fn syscalls(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .filter(|l| l.starts_with("syscr:") || l.starts_with("syscw:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// CPU used by the server process (when it is not this one) and by this process, the load
/// generator, from [`CpuMeter::start`] to [`CpuMeter::stop`]; and the server's context
/// switches, which say how often its threads slept and were woken.
struct CpuMeter {
    /// The server's pid, (utime, stime), context switches and read/write calls at the start.
    server: Option<(u32, (Duration, Duration), u64, u64)>,
    client: Duration,
}

impl CpuMeter {
    fn start(server_pid: Option<u32>) -> Self {
        CpuMeter {
            server: server_pid.map(|pid| {
                (
                    pid,
                    cpu_times(&pid.to_string()),
                    switches(pid),
                    syscalls(pid),
                )
            }),
            client: cpu_time("self"),
        }
    }

    /// (server CPU, context switches, the kernel's part of that CPU and read/write calls;
    /// client CPU) over the window.
    fn stop(&self) -> (Option<(Duration, u64, Duration, u64)>, Duration) {
        let server = self.server.map(|(pid, (user, system), sw, calls)| {
            let (user_now, system_now) = cpu_times(&pid.to_string());
            let system = system_now.saturating_sub(system);
            (
                user_now.saturating_sub(user) + system,
                switches(pid).saturating_sub(sw),
                system,
                syscalls(pid).saturating_sub(calls),
            )
        });
        (server, cpu_time("self").saturating_sub(self.client))
    }
}

/// This binary again, with `--serve-bare`; killed when dropped.
struct BareProcess {
    child: std::process::Child,
    addr: SocketAddr,
}

impl BareProcess {
    fn start() -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--serve-bare")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        BareProcess {
            addr: line.trim().parse().expect("the bare server's address"),
            child,
        }
    }
}

impl Drop for BareProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open loop at `rate` calls/s over `connections`: every millisecond, that millisecond's calls
/// are started; latency is counted from when each was due.
async fn fixed_rate(
    (addr, server_pid): (SocketAddr, Option<u32>),
    connections: usize,
    rate: u64,
    duration: Duration,
    request: &GetMetricsRequest,
) -> Stats {
    let clients = connect(addr, connections).await;
    let cpu = CpuMeter::start(server_pid);
    let started = tokio::time::Instant::now();
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let mut client = clients[i as usize % connections].clone();
        let request = request.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let ok = client.get_metrics(request).await.is_ok();
            let _ = tx.send((ok, due.elapsed().as_micros() as u32));
        });
    }
    drop(tx);
    let mut stats = Stats::default();
    while let Some((ok, us)) = rx.recv().await {
        if ok {
            stats.latencies.push(us);
        } else {
            stats.errors += 1;
        }
    }
    stats.seconds = started.elapsed().as_secs_f64();
    let (server, client) = cpu.stop();
    (
        stats.server_cpu,
        stats.server_switches,
        stats.server_system,
        stats.server_syscalls,
    ) = (
        server.map(|s| s.0),
        server.map(|s| s.1),
        server.map(|s| s.2),
        server.map(|s| s.3),
    );
    stats.client_cpu = client;
    stats.requests = stats.latencies.len();
    stats.latencies.sort_unstable();
    stats
}

/// A server that answers GetMetrics with a constant: the gRPC stack alone.
struct Bare;

#[tonic::async_trait]
impl ExternalScaler for Bare {
    async fn is_active(
        &self,
        _: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        Ok(Response::new(IsActiveResponse { result: true }))
    }
    type StreamIsActiveStream =
        Pin<Box<dyn futures::Stream<Item = Result<IsActiveResponse, Status>> + Send>>;
    async fn stream_is_active(
        &self,
        _: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn get_metric_spec(
        &self,
        _: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    type StreamMetricSpecStream =
        Pin<Box<dyn futures::Stream<Item = Result<GetMetricSpecResponse, Status>> + Send>>;
    async fn stream_metric_spec(
        &self,
        _: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn get_metrics(
        &self,
        _: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: "bare".into(),
                metric_value: 1000,
                metric_value_float: 1000.0,
            }],
        }))
    }
}

/// The bare server, with orascale's HTTP/2 settings (app.rs).
async fn start_bare() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .max_concurrent_streams(Some(EngineConfig::default().max_concurrent_streams))
            .initial_connection_window_size(Some(16 * 1024 * 1024))
            .add_service(ExternalScalerServer::new(Bare))
            .serve_with_incoming(incoming),
    );
    addr
}

/// `n` HTTP/2 connections to `addr`.
async fn connect(addr: SocketAddr, n: usize) -> Vec<ExternalScalerClient<Channel>> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        clients.push(ExternalScalerClient::new(channel));
    }
    clients
}

#[derive(Default)]
struct Stats {
    requests: usize,
    errors: u64,
    seconds: f64,
    latencies: Vec<u32>,
    /// CPU of the server's process over the run; `None` when it is this process.
    server_cpu: Option<Duration>,
    /// The kernel's part of `server_cpu` (stime).
    server_system: Option<Duration>,
    /// Context switches of the server's threads over the run (see [`switches`]).
    server_switches: Option<u64>,
    /// Read and write system calls of the server over the run (see [`syscalls`]).
    server_syscalls: Option<u64>,
    /// CPU of this process (the load generator, and the server when in-process).
    client_cpu: Duration,
}

impl Stats {
    fn per_sec(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    fn server_cpu_us_per_request(&self) -> Option<f64> {
        self.server_cpu
            .map(|c| c.as_secs_f64() * 1e6 / self.requests as f64)
    }
    fn pct(&self, p: f64) -> u32 {
        let l = &self.latencies;
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    }
}

/// `concurrency` callers spread over `connections` HTTP/2 connections, for `duration` (or
/// `requests` calls each).
async fn load(
    (addr, server_pid): (SocketAddr, Option<u32>),
    connections: usize,
    concurrency: usize,
    duration: Duration,
    requests: Option<u64>,
    request: &GetMetricsRequest,
) -> Stats {
    let clients = connect(addr, connections).await;
    let cpu = CpuMeter::start(server_pid);
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|i| {
            let mut client = clients[i % connections].clone();
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
    let mut stats = Stats::default();
    for w in workers {
        let (l, e) = w.await.unwrap();
        stats.latencies.extend(l);
        stats.errors += e;
    }
    stats.seconds = started.elapsed().as_secs_f64();
    let (server, client) = cpu.stop();
    (
        stats.server_cpu,
        stats.server_switches,
        stats.server_system,
        stats.server_syscalls,
    ) = (
        server.map(|s| s.0),
        server.map(|s| s.1),
        server.map(|s| s.2),
        server.map(|s| s.3),
    );
    stats.client_cpu = client;
    stats.requests = stats.latencies.len();
    stats.latencies.sort_unstable();
    stats
}

async fn run(
    duration: Duration,
    concurrency: usize,
    requests: Option<u64>,
    (rate, rate_connections): (u64, usize),
) {
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
    // Callgrind mode measures orascale in this process; otherwise each server has its own.
    let (in_process, binary, bare_process) = if requests.is_some() {
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
        (
            Some(orascale::app::start(config).await.unwrap()),
            None,
            None,
        )
    } else {
        let binary = support::Binary::start(
            &["--connection", &format!("bench=sqlite:{}", path.display())],
            dir.path(),
        );
        (None, Some(binary), Some(BareProcess::start()))
    };
    let ours = in_process
        .as_ref()
        .map(|s| s.grpc_addr)
        .or(binary.as_ref().map(|b| b.grpc))
        .unwrap();
    let request = support::bench_request("bench");
    // Warm the cache: the first call creates the poller and waits for its first result.
    let mut warm = connect(ours, 1).await.remove(0);
    let first = warm
        .get_metrics(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.metric_values[0].metric_value_float, 1000.0);

    let mut summary = serde_json::Map::new();
    // (name, (address, the server's pid when it is another process))
    let ours = ("orascale", (ours, binary.as_ref().map(|b| b.child.id())));
    let mut targets = vec![ours];
    if let Some(bare) = &bare_process {
        let bare = ("bare", (bare.addr, Some(bare.child.id())));
        targets = vec![ours, bare, ours, bare];
    }
    let plan: &[usize] = if requests.is_some() { &[1] } else { &[1, 16] };
    for &connections in plan {
        let mut totals = [Totals::default(), Totals::default()]; // orascale, bare
        for &(which, target) in &targets {
            let s = load(
                target,
                connections,
                concurrency,
                duration,
                requests,
                &request,
            )
            .await;
            report(which, "saturation", connections, &s);
            totals[usize::from(which == "bare")].add(&s);
        }
        if totals[1].runs > 0 {
            summary.insert(
                format!("saturation_connections_{connections}"),
                Totals::compare(&totals, "per_sec", Totals::per_sec),
            );
        }
    }
    if bare_process.is_some() {
        let mut totals = [Totals::default(), Totals::default()];
        for &(which, target) in &targets {
            let s = fixed_rate(target, rate_connections, rate, duration, &request).await;
            report(which, "fixed_rate", rate_connections, &s);
            totals[usize::from(which == "bare")].add(&s);
        }
        let mut line = Totals::compare(&totals, "p99_us", Totals::p99);
        line["calls_per_sec"] = json!(rate);
        line["connections"] = json!(rate_connections);
        summary.insert("fixed_rate".into(), line);
    }
    println!(
        "{}",
        json!({"bench": "unary_summary", "concurrency": concurrency, "runs": summary})
    );
    if let Some(server) = in_process {
        server.stop().await;
    }
    if let Some(binary) = &binary {
        assert!(!binary.log_text().contains("panicked"));
    }
}

/// One server's runs in one mode, summed.
#[derive(Default)]
struct Totals {
    runs: u32,
    per_sec: f64,
    p99: f64,
    requests: usize,
    server_cpu: Duration,
    server_system: Duration,
}

impl Totals {
    fn add(&mut self, s: &Stats) {
        self.runs += 1;
        self.per_sec += s.per_sec();
        self.p99 += f64::from(s.pct(0.99));
        self.requests += s.requests;
        self.server_cpu += s.server_cpu.unwrap_or_default();
        self.server_system += s.server_system.unwrap_or_default();
    }
    fn per_sec(&self) -> f64 {
        self.per_sec / f64::from(self.runs)
    }
    fn p99(&self) -> f64 {
        self.p99 / f64::from(self.runs)
    }
    /// Over all runs: CPU seconds ÷ calls, not a mean of per-run ratios.
    fn cpu_us_per_request(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.requests as f64
    }
    /// The summary of `[orascale, bare]`: `figure` (the mean of the runs) and the server CPU
    /// per call of each, and the ratios orascale ÷ bare (`ratio` is `figure`'s).
    fn compare(t: &[Totals; 2], name: &str, figure: fn(&Totals) -> f64) -> serde_json::Value {
        let ratio = |a: f64, b: f64| (a / b * 1000.0).round() / 1000.0;
        let cpu = [t[0].cpu_us_per_request(), t[1].cpu_us_per_request()];
        let system = |t: &Totals| {
            (t.server_system.as_secs_f64() * 1e6 / t.requests as f64 * 10.0).round() / 10.0
        };
        json!({
            format!("orascale_{name}"): figure(&t[0]).round(),
            format!("bare_{name}"): figure(&t[1]).round(),
            "ratio": ratio(figure(&t[0]), figure(&t[1])),
            "orascale_cpu_us_per_request": (cpu[0] * 10.0).round() / 10.0,
            "bare_cpu_us_per_request": (cpu[1] * 10.0).round() / 10.0,
            "cpu_ratio": ratio(cpu[0], cpu[1]),
            "orascale_system_us_per_request": system(&t[0]),
            "bare_system_us_per_request": system(&t[1]),
        })
    }
}

fn report(which: &str, mode: &str, connections: usize, s: &Stats) {
    // A benchmark of failures measures nothing: every call must have been answered.
    assert_eq!(
        s.errors, 0,
        "{which}: GetMetrics calls failed during the benchmark"
    );
    assert!(s.requests > 0, "{which}: no call completed");
    println!(
        "{}",
        json!({"bench": "unary_get_metrics", "server": which, "mode": mode,
            "connections": connections, "seconds": (s.seconds * 100.0).round() / 100.0,
            "requests": s.requests, "errors": s.errors,
            "requests_per_sec": s.per_sec().round(), "p50_us": s.pct(0.50),
            "p99_us": s.pct(0.99), "p999_us": s.pct(0.999),
            "max_us": s.latencies.last().copied().unwrap_or(0),
            "server_cpu_us_per_request": s.server_cpu_us_per_request().map(|c| (c * 10.0).round() / 10.0),
            "server_system_us_per_request": s.server_system.map(|c| (c.as_secs_f64() * 1e6 / s.requests as f64 * 10.0).round() / 10.0),
            "server_switches_per_request": s.server_switches.map(|n| (n as f64 / s.requests as f64 * 100.0).round() / 100.0),
            "server_syscalls_per_request": s.server_syscalls.map(|n| (n as f64 / s.requests as f64 * 100.0).round() / 100.0),
            "server_cores": s.server_cpu.map(|c| (c.as_secs_f64() / s.seconds * 100.0).round() / 100.0),
            "client_cpu_us_per_request":
                (s.client_cpu.as_secs_f64() * 1e6 / s.requests as f64 * 10.0).round() / 10.0})
    );
}
