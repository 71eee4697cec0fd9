//! The Oracle source on a machine without Oracle Instant Client (like this project's CI): the
//! real binary starts, warns once with the install hint, keeps serving GetMetricSpec and answers
//! GetMetrics/IsActive with UNAVAILABLE carrying that hint. Where a client is installed the
//! same calls must fail with a connect error instead (nothing listens on the port used).
//! And connects that hang (a black-holed host), through the source's connect seam: they cannot
//! pile up threads and starve the process's other blocking work.

use crate::support;

use std::time::Duration;

use support::*;
use tonic::Code;

const HINT: &str = "Oracle Instant Client not found: install instantclient-basic(lite) and set LD_LIBRARY_PATH, see docs/oracle.md";
const PASSWORD: &str = "t1ger-Secret-Pw";

fn client_present() -> bool {
    orascale::source::oracle::client_status().is_ok()
}

#[test]
fn without_instant_client_the_binary_serves_specs_and_reports_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "oracle://scott:{PASSWORD}@127.0.0.1:{}/FREEPDB1",
        unused_port()
    );
    let server = Binary::start(&["--connection", &format!("ora={url}")], dir.path());
    let present = client_present();
    let log = server.wait_log("connection=ora", Duration::from_secs(10));
    if !present {
        let warning = log
            .lines()
            .find(|l| l.contains("WARN") && l.contains("connection=ora"))
            .unwrap_or_else(|| panic!("one startup warning: {log}"));
        assert!(warning.contains(HINT), "{warning}");
        assert_eq!(
            log.matches(HINT).count(),
            1,
            "warned once at startup: {log}"
        );
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let grpc = server.grpc;
    rt.block_on(guard(Duration::from_secs(60), async move {
        let mut c = client(grpc).await;
        let obj = object(
            "orders",
            &[
                (
                    "query",
                    "select count(*) from app.jobs where status = 'QUEUED'",
                ),
                ("targetQueryValue", "10"),
            ],
        );
        let spec = c
            .get_metric_spec(deadline(obj.clone()))
            .await
            .expect("GetMetricSpec works without a client")
            .into_inner();
        assert_eq!(spec.metric_specs[0].target_size_float, 10.0);
        let mut stream = c
            .stream_is_active(obj.clone())
            .await
            .expect("the stream opens")
            .into_inner();
        for _ in 0..2 {
            let e = c
                .get_metrics(deadline(metrics_request(&obj, "")))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::Unavailable);
            if present {
                assert!(e.message().contains("cannot connect"), "{}", e.message());
            } else {
                assert!(e.message().contains(HINT), "{}", e.message());
                assert!(e.message().contains("DPI-1047"), "{}", e.message());
            }
            assert!(!e.message().contains(PASSWORD));
            let e = c.is_active(deadline(obj.clone())).await.unwrap_err();
            assert_eq!(
                e.code(),
                Code::Unavailable,
                "never false in place of an error"
            );
        }
        assert!(
            tokio::time::timeout(Duration::from_secs(2), stream.message())
                .await
                .is_err(),
            "the stream stays open and silent"
        );
    }));
    assert!(
        !server.log_text().contains(PASSWORD),
        "no password in the log"
    );
}

/// Issue 22, on a machine without Instant Client (the DPI-1047 path): a trigger with
/// `notifyChannel` on an Oracle connection is accepted, answers UNAVAILABLE with the install
/// hint (never 0 or false), and its listener degrades with one WARN and a backing-off retry:
/// no panic, no spin, and the process still stops on SIGTERM.
#[test]
fn without_instant_client_oracle_wake_ups_degrade_without_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "oracle://scott:{PASSWORD}@127.0.0.1:{}/FREEPDB1",
        unused_port()
    );
    let mut server = Binary::start_with_env(
        &["--connection", &format!("ora={url}")],
        dir.path(),
        &[("RUST_LOG", "info,orascale::engine::wake=debug")],
    );
    let present = client_present();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (grpc, metrics) = (server.grpc, server.metrics);
    rt.block_on(guard(Duration::from_secs(60), async move {
        let mut c = client(grpc).await;
        let obj = object(
            "orders",
            &[
                (
                    "query",
                    "select count(*) from app.jobs where status = 'QUEUED'",
                ),
                ("targetQueryValue", "10"),
                ("pollInterval", "60s"),
                ("notifyChannel", "jobs_changed"),
                ("minWakeInterval", "250ms"),
            ],
        );
        let _stream = c
            .stream_is_active(obj.clone())
            .await
            .expect("accepted: Oracle takes notifyChannel")
            .into_inner();
        let e = c
            .get_metrics(deadline(metrics_request(&obj, "")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        if !present {
            assert!(e.message().contains(HINT), "{}", e.message());
        }
        let e = c.is_active(deadline(obj.clone())).await.unwrap_err();
        assert_eq!(
            e.code(),
            Code::Unavailable,
            "never false in place of an error"
        );
        // The channel is wanted and nothing listens: that is what the metrics say.
        loop {
            let text = scrape(metrics).await;
            let channels = metric_value(&text, "orascale_wake_channels", &["connection=\"ora\""]);
            let up = metric_value(&text, "orascale_wake_listener_up", &["connection=\"ora\""]);
            if channels == Some(1.0) && up == Some(0.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }));
    let first = server.wait_log("notification listener down", Duration::from_secs(10));
    assert!(first.contains("notification listener down"), "{first}");
    // A window of a few seconds: the retries back off (100 ms doubling to 10 s), so a handful
    // of attempts, where a spinning listener would make thousands.
    std::thread::sleep(Duration::from_secs(4));
    let log = server.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("notification listener down"))
        .collect();
    assert_eq!(warnings.len(), 1, "one WARN per outage: {log}");
    if !present {
        // Polls come first: with no Instant Client the pool never holds a session, so the
        // listener never logs on (the polls' UNAVAILABLE above carries the install hint).
        assert!(
            warnings[0].contains("the pool holds no session yet"),
            "{}",
            warnings[0]
        );
    }
    let retries = log.matches("notification listener still down").count();
    assert!(retries <= 12, "{retries} retries in about 4 s: {log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains(PASSWORD), "no password in the log");
    server.signal("TERM");
    assert_eq!(
        server.wait_exit(Duration::from_secs(20)),
        Some(0),
        "stops with the listener down: {}",
        server.log_text()
    );
}

fn check(args: &[&str]) -> (i32, String, String) {
    let mut full = vec!["check"];
    full.extend_from_slice(args);
    run_bin(&full)
}

#[test]
fn check_reports_each_connection_and_fails_when_one_fails() {
    let db = TestDb::new();
    db.set_queued(3);
    let ora = format!(
        "ora=oracle://scott:{PASSWORD}@127.0.0.1:{}/FREEPDB1",
        unused_port()
    );
    let jobs = format!("jobs={}", db.url());

    let (code, out, err) = check(&["--connection", &jobs, "--query", QUEUED]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("jobs") && out.contains("SQLite") && out.contains(" ms"),
        "{out}"
    );
    assert!(
        out.lines().nth(1).unwrap().trim_end().ends_with(" 3"),
        "the query's value: {out}"
    );
    assert!(out.contains("all connections OK"), "{out}");

    let (code, out, _) = check(&[
        "--connection",
        &jobs,
        "--connection",
        &ora,
        "--timeout",
        "3s",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED"), "{out}");
    if !client_present() {
        assert!(out.contains(HINT), "{out}");
    }
    assert!(!out.contains(PASSWORD), "{out}");

    let (code, out, _) = check(&[
        "--connection",
        &jobs,
        "--connection",
        &ora,
        "--json",
        "--timeout",
        "3s",
    ]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(report["ok"], false);
    let conns = report["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2);
    let jobs_report = conns.iter().find(|c| c["name"] == "jobs").unwrap();
    assert!(
        jobs_report["driver"]["ok"]
            .as_str()
            .unwrap()
            .contains("SQLite")
    );
    assert!(jobs_report["round_trip_ms"].as_f64().is_some());
    let ora_report = conns.iter().find(|c| c["name"] == "ora").unwrap();
    assert_eq!(ora_report["kind"], "oracle");
    assert!(ora_report.to_string().contains("failed"), "{ora_report}");
    assert!(!out.contains(PASSWORD));

    let (code, _, err) = check(&["--connection", &jobs, "--only", "nope"]);
    assert_eq!(code, 64);
    assert!(err.contains("\"nope\"") && err.contains("jobs"), "{err}");

    let (code, out, _) = check(&[
        "--connection",
        &jobs,
        "--query",
        "select count(*) from missing",
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("no such table: missing"), "{out}");
}

/// A connect that hangs like one to a black-holed host (SYN sent, nothing ever answers) until
/// released, counting the blocking threads inside it.
#[derive(Default)]
struct BlackHole {
    inside: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
    calls: std::sync::atomic::AtomicUsize,
    connect_strings: std::sync::Mutex<Vec<String>>,
    released: std::sync::Mutex<bool>,
    wake: std::sync::Condvar,
}

impl BlackHole {
    fn release(&self) {
        *self.released.lock().unwrap() = true;
        self.wake.notify_all();
    }
}

impl orascale::source::oracle::Connect for BlackHole {
    fn connect(
        &self,
        logon: &orascale::source::oracle::Logon,
    ) -> Result<oracle::Connection, oracle::Error> {
        use std::sync::atomic::Ordering::SeqCst;
        self.calls.fetch_add(1, SeqCst);
        let now = self.inside.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now, SeqCst);
        self.connect_strings
            .lock()
            .unwrap()
            .push(logon.connect_string.clone());
        let released = self.released.lock().unwrap();
        // Bounded, so a failing test still ends.
        let _ = self
            .wake
            .wait_timeout_while(released, Duration::from_secs(60), |r| !*r)
            .unwrap();
        self.inside.fetch_sub(1, SeqCst);
        Err(oracle::Error::new(
            oracle::ErrorKind::Other,
            "ORA-12170: TNS:Connect timeout occurred",
        ))
    }
}

/// A connect refused at once (nothing listens), like a healthy network to a stopped listener.
struct Refused;

impl orascale::source::oracle::Connect for Refused {
    fn connect(
        &self,
        _: &orascale::source::oracle::Logon,
    ) -> Result<oracle::Connection, oracle::Error> {
        Err(oracle::Error::new(
            oracle::ErrorKind::Other,
            "ORA-12541: TNS:no listener",
        ))
    }
}

/// Releases the black hole however the test ends, so its threads end and the runtime can stop.
struct ReleaseOnDrop(std::sync::Arc<BlackHole>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Issue 18: a poll that gives up on a hanging connect leaves its blocking thread running; the
/// next poll used to start another, until tokio's blocking-thread cap was reached and SQLite
/// queries, other Oracle connections and password-file reads waited behind them. Now at most
/// `CONNECTS_IN_FLIGHT` connects of a connection are in flight (an abandoned one still counts),
/// and the connect string carries Oracle Net's connect timeout.
#[test]
fn a_black_holed_host_cannot_take_the_blocking_threads() {
    use orascale::source::oracle::{CONNECTS_IN_FLIGHT, Oracle};
    use orascale::source::sqlite::Sqlite;
    use orascale::source::{Cell, Source};
    use std::sync::Arc;
    use std::sync::atomic::Ordering::SeqCst;

    // A small cap stands in for tokio's 512: the pile-up reaches it in a few polls.
    const BLOCKING_THREADS: usize = 8;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
        .unwrap();
    let hole = Arc::new(BlackHole::default());
    let _release = ReleaseOnDrop(hole.clone());
    let db = TestDb::new();
    db.set_queued(3);
    rt.block_on(guard(Duration::from_secs(60), async {
        let url = "oracle://scott@10.255.255.1:1521/FREEPDB1";
        let mut conn = connection("blackholed", url);
        conn.pool_size = 4;
        let blackholed = Oracle::with_connect(
            &conn,
            "scott",
            Some(PASSWORD),
            "//10.255.255.1:1521/FREEPDB1",
            hole.clone(),
        )
        .unwrap();
        let refused = Oracle::with_connect(
            &connection("refused", url),
            "scott",
            Some(PASSWORD),
            "//127.0.0.1:1/FREEPDB1",
            Arc::new(Refused),
        )
        .unwrap();
        let sqlite = Sqlite::new(
            "jobs",
            orascale::config::SqliteTarget::File(db.path.clone()),
            2,
        );
        // Four pollers on the black-holed connection give up after 50 ms, round after round,
        // while the SQLite source and another Oracle connection are polled beside them.
        for round in 0..10 {
            let polls = (0..4)
                .map(|_| blackholed.query("select count(*) from jobs", Duration::from_millis(50)));
            let (polls, local, other) = tokio::join!(
                futures::future::join_all(polls),
                sqlite.query(QUEUED, Duration::from_secs(5)),
                refused.query("select 1 from dual", Duration::from_secs(5)),
            );
            for p in polls {
                let e = p.expect_err("a black-holed host never answers");
                assert_eq!(e.result_label(), "timeout", "round {round}: {e}");
            }
            assert_eq!(
                local,
                Ok(Cell::Number(3.0)),
                "round {round}: SQLite is served"
            );
            let e = other.expect_err("nothing listens");
            assert!(e.to_string().contains("ORA-12541"), "round {round}: {e}");
        }
        let peak = hole.peak.load(SeqCst);
        assert!(hole.calls.load(SeqCst) >= 1, "the connects were attempted");
        assert!(
            peak <= CONNECTS_IN_FLIGHT,
            "{peak} connect threads at once (bound {CONNECTS_IN_FLIGHT})"
        );
        assert!(hole.inside.load(SeqCst) <= CONNECTS_IN_FLIGHT);
        for s in hole.connect_strings.lock().unwrap().iter() {
            assert!(
                s.ends_with("?connect_timeout=10&transport_connect_timeout=10"),
                "{s}"
            );
            assert!(!s.contains(PASSWORD));
        }
    }));

    // Process-wide: connections made from metadata credentials are one per credential, so 40
    // black-holed connections (two connect slots each) must still stay within the process's
    // bound, and SQLite on the same blocking pool keeps answering.
    use orascale::source::oracle::CONNECTS_IN_FLIGHT_PROCESS;
    const WIDE_THREADS: usize = 48;
    let wide_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(WIDE_THREADS)
        .enable_all()
        .build()
        .unwrap();
    let wide = Arc::new(BlackHole::default());
    let _release_wide = ReleaseOnDrop(wide.clone());
    wide_rt.block_on(guard(Duration::from_secs(60), async {
        let sources: Vec<Oracle> = (0..40)
            .map(|i| {
                let mut conn = connection(&format!("meta-{i}"), "oracle://u@10.255.255.1:1521/S");
                conn.pool_size = 2;
                Oracle::with_connect(
                    &conn,
                    &format!("u{i}"),
                    Some(PASSWORD),
                    "//10.255.255.1:1521/S",
                    wide.clone(),
                )
                .unwrap()
            })
            .collect();
        let sqlite = Sqlite::new(
            "jobs",
            orascale::config::SqliteTarget::File(db.path.clone()),
            2,
        );
        for round in 0..3 {
            let polls = sources.iter().flat_map(|s| {
                (0..2).map(move |_| s.query("select 1 from dual", Duration::from_millis(50)))
            });
            let (polls, local) = tokio::join!(
                futures::future::join_all(polls),
                sqlite.query(QUEUED, Duration::from_secs(5)),
            );
            assert!(polls.iter().all(Result::is_err), "round {round}");
            assert_eq!(
                local,
                Ok(Cell::Number(3.0)),
                "round {round}: SQLite is served"
            );
        }
        let peak = wide.peak.load(SeqCst);
        assert!(
            peak <= CONNECTS_IN_FLIGHT_PROCESS,
            "{peak} connect threads at once across connections (bound {CONNECTS_IN_FLIGHT_PROCESS})"
        );
        assert!(peak >= 8, "the connects did pile up to the bound: {peak}");
    }));
    wide.release();
    hole.release();
    wide_rt.shutdown_timeout(Duration::from_secs(10));
    rt.shutdown_timeout(Duration::from_secs(10));
}

/// Oracle wake-ups (issue 22) without an Oracle: the engine's hub with the real Oracle listener
/// (its thread, command loop and close), and a scripted `DBMS_ALERT` session below it that
/// records REGISTER/REMOVE/REMOVEALL, delivers signalled alerts to sessions registered for
/// them, and injects kills, errors and hangs. The clock is paused; the listener's thread
/// (spawn_blocking) holds tokio's auto-advance, so the tests move time themselves in steps and,
/// after each, wait (on real time, bounded) until every listener thread is parked in a
/// scripted wait with nothing due: what happens at a virtual instant is then settled before
/// the clock moves on, whatever the machine's speed.
///
/// "Polls come first" (issue 20) is tested with a scripted `SESSIONS_PER_USER`: a limit on the
/// sessions of the listener and of a pool of scripted sessions together, polled through the
/// real pool gate (`source::checkout`, the path every pooled source takes).
mod alert_wakeups {
    use std::collections::{BTreeSet, HashMap, HashSet};
    use std::sync::{Arc, Condvar, Mutex, MutexGuard};
    use std::time::Duration;

    use crate::support::logs::Lines;
    use futures::FutureExt;
    use orascale::engine::wake::{Hub, PING_EVERY, REARM_WINDOW, Wake};
    use orascale::source::oracle::listen::{
        AlertConnect, AlertSession, Breaker, COMMAND_GRACE, OracleListener, WAIT,
    };
    use orascale::source::wake::{GAVE_SLOT_UP, POOL_FIRST_WAIT, PollsFirst};
    use orascale::source::{Slots, SourceError, checkout, deadline_after};
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::support::guard;

    const KILLED: &str = "ORA-00028: your session has been killed";
    const LIMIT: &str = "ORA-02391: exceeded simultaneous SESSIONS_PER_USER limit";
    const NO_GRANT: &str = "ORA-06550: line 1, column 7: PLS-00201: identifier 'DBMS_ALERT' must be declared ORA-06550: line 1, column 7: PL/SQL: Statement ignored";
    /// The hub's bounds (engine::wake): a command or connect may take this long.
    const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
    const BACKOFF_MAX: Duration = Duration::from_secs(10);

    #[derive(Default)]
    struct State {
        log: Vec<String>,
        next_id: u64,
        /// Open sessions: what each registered, and its alerts not yet waited for.
        sessions: HashMap<u64, (BTreeSet<String>, BTreeSet<String>)>,
        /// Threads blocked in a scripted wait, with when it ends (`None`: until released).
        parked: HashMap<u64, Option<Instant>>,
        broken: HashSet<u64>,
        opens: usize,
        open_error: Option<String>,
        register_error: Option<String>,
        hang_open: bool,
        hanging_opens: usize,
        peak_hanging_opens: usize,
        /// The next WAITANY fails with KILLED.
        kill: bool,
        /// The next WAITANY ignores its timeout until broken.
        hang_wait: bool,
        /// The test is over (maybe failed): every scripted wait ends, so the runtime can stop.
        over: bool,
        /// SESSIONS_PER_USER: logons past it (listener's and pool's together) get [`LIMIT`].
        limit: Option<usize>,
        /// Sessions the scripted pool holds.
        pool_sessions: usize,
        /// A REGISTER that sweeps orphaned pipes (`cleanup => TRUE`) outlasts its call timeout.
        slow_sweep: bool,
        /// Like `slow_sweep`, for the next sweep only.
        slow_sweep_once: bool,
        /// An Oracle before 12.2: REGISTER has no `cleanup` parameter (PLS-00306).
        no_cleanup_parameter: bool,
        /// REMOVEALL starts only once a break reached the session, or after 200 ms (real
        /// time): a break in flight when the session closes lands on it.
        remove_all_waits_for_break: bool,
        /// WAITANY returns the alert's name in lowercase.
        lowercase: bool,
    }

    impl State {
        /// Whether one more logon would pass SESSIONS_PER_USER.
        fn full(&self) -> bool {
            self.limit
                .is_some_and(|l| self.sessions.len() + self.pool_sessions >= l)
        }
    }

    #[derive(Default)]
    struct Script {
        state: Mutex<State>,
        changed: Condvar,
    }

    impl Script {
        fn lock(&self) -> MutexGuard<'_, State> {
            // A failed assertion elsewhere must not turn into a second panic here.
            self.state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        fn set(&self, f: impl FnOnce(&mut State)) {
            f(&mut self.lock());
            self.changed.notify_all();
        }

        /// DBMS_ALERT.SIGNAL committed: every session registered for `name` has it pending
        /// (signals before a wait collapse into one).
        fn signal(&self, name: &str) {
            self.signal_many(name, 1);
        }

        /// `n` commits signalling `name` before the listener's next wait.
        fn signal_many(&self, name: &str, n: usize) {
            self.set(|s| {
                for _ in 0..n {
                    for (registered, pending) in s.sessions.values_mut() {
                        if registered.contains(name) {
                            pending.insert(name.to_string());
                        }
                    }
                }
            })
        }

        fn log(&self) -> Vec<String> {
            std::mem::take(&mut self.lock().log)
        }

        /// The REGISTER lines of [`Self::log`] (which it takes, as `log` does).
        fn registers(&self) -> Vec<String> {
            let mut log = self.log();
            log.retain(|l| l.starts_with("register "));
            log
        }

        /// Every listener thread is parked in a scripted wait that nothing ends now.
        fn quiet(&self, threads: usize) -> bool {
            let s = self.lock();
            let now = Instant::now();
            s.parked.len() == threads
                && s.parked.iter().all(|(id, until)| match until {
                    // A hung WAITANY until broken; a hung open until released.
                    None if s.sessions.contains_key(id) => !s.broken.contains(id),
                    None => s.hang_open,
                    Some(at) => {
                        *at > now
                            && !s.kill
                            && !s.broken.contains(id)
                            && s.sessions.get(id).is_none_or(|(_, p)| p.is_empty())
                    }
                })
        }

        /// Waits (bounded, real time) for the listener's threads to settle at this instant.
        async fn quiesce(&self, listener: &OracleListener) {
            let started = std::time::Instant::now();
            let mut calm = 0;
            while calm < 2 {
                for _ in 0..20 {
                    tokio::task::yield_now().await;
                }
                if self.quiet(listener.threads()) {
                    calm += 1;
                } else {
                    calm = 0;
                    std::thread::sleep(Duration::from_micros(200));
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the listener's threads never settled: {} threads, {:?}",
                    listener.threads(),
                    self.lock().parked
                );
            }
        }

        /// Moves the clock by `d` in steps of 100 ms, settling after each.
        async fn run_for(&self, listener: &OracleListener, d: Duration) {
            let step = Duration::from_millis(100);
            let end = Instant::now() + d;
            self.quiesce(listener).await;
            while Instant::now() < end {
                tokio::time::advance(step.min(end - Instant::now())).await;
                self.quiesce(listener).await;
            }
        }
    }

    struct Scripted(Arc<Script>);

    impl AlertConnect for Scripted {
        fn open(&self) -> Result<Box<dyn AlertSession>, String> {
            let script = &self.0;
            let mut s = script.lock();
            s.opens += 1;
            s.next_id += 1;
            let id = s.next_id;
            if let Some(e) = s.open_error.clone() {
                s.log.push("open refused".into());
                return Err(e);
            }
            if s.full() {
                s.log.push("open refused: limit".into());
                return Err(LIMIT.into());
            }
            if s.hang_open {
                s.hanging_opens += 1;
                s.peak_hanging_opens = s.peak_hanging_opens.max(s.hanging_opens);
                s.parked.insert(id, None);
                while s.hang_open && !s.over {
                    s = script
                        .changed
                        .wait_timeout(s, Duration::from_millis(1))
                        .unwrap()
                        .0;
                }
                s.parked.remove(&id);
                s.hanging_opens -= 1;
            }
            s.log.push("open".into());
            s.sessions.insert(id, Default::default());
            Ok(Box::new(Session {
                script: script.clone(),
                id,
            }))
        }
    }

    struct Session {
        script: Arc<Script>,
        id: u64,
    }

    impl Session {
        fn call(
            &self,
            what: String,
            fail: Option<String>,
        ) -> Result<MutexGuard<'_, State>, String> {
            let mut s = self.script.lock();
            // A break that came between calls hits the next one.
            if s.broken.remove(&self.id) {
                return Err("ORA-01013: user requested cancel of current operation".into());
            }
            s.log.push(what);
            match fail {
                Some(e) => Err(e),
                None => Ok(s),
            }
        }
    }

    impl AlertSession for Session {
        fn register(&mut self, name: &str, cleanup: bool) -> Result<(), String> {
            let (fail, what) = {
                let mut s = self.script.lock();
                let slow = s.slow_sweep || cleanup && std::mem::take(&mut s.slow_sweep_once);
                match (cleanup, slow) {
                    (true, true) => (
                        Some("DPI-1067: call timeout of 5000 ms exceeded with ORA-3156".into()),
                        format!("register {name}: sweep timed out"),
                    ),
                    (true, false) => (s.register_error.clone(), format!("register {name}")),
                    (false, _) if s.no_cleanup_parameter => (
                        Some("ORA-06550: line 1, column 7:\nPLS-00306: wrong number or types of arguments in call to 'REGISTER'".into()),
                        format!("register {name} without sweep: PLS-00306"),
                    ),
                    (false, _) => (
                        s.register_error.clone(),
                        format!("register {name} without sweep"),
                    ),
                }
            };
            let mut s = self.call(what, fail)?;
            s.sessions
                .get_mut(&self.id)
                .unwrap()
                .0
                .insert(name.to_string());
            Ok(())
        }

        fn remove(&mut self, name: &str) -> Result<(), String> {
            let mut s = self.call(format!("remove {name}"), None)?;
            let (registered, pending) = s.sessions.get_mut(&self.id).unwrap();
            registered.remove(name);
            pending.remove(name);
            Ok(())
        }

        fn remove_all(&mut self) -> Result<(), String> {
            {
                let script = self.script.clone();
                let mut s = script.lock();
                let until = std::time::Instant::now() + Duration::from_millis(200);
                while s.remove_all_waits_for_break
                    && !s.broken.contains(&self.id)
                    && std::time::Instant::now() < until
                {
                    s = script
                        .changed
                        .wait_timeout(s, Duration::from_millis(1))
                        .unwrap()
                        .0;
                }
            }
            let mut s = self.call("remove_all".into(), None)?;
            s.sessions.get_mut(&self.id).unwrap().0.clear();
            Ok(())
        }

        fn ping(&mut self) -> Result<(), String> {
            self.call("ping".into(), None).map(drop)
        }

        fn wait_any(&mut self, timeout: Duration) -> Result<Option<String>, String> {
            let script = self.script.clone();
            let mut s = script.lock();
            let deadline = Instant::now() + timeout;
            let hang = std::mem::take(&mut s.hang_wait);
            s.parked.insert(self.id, (!hang).then_some(deadline));
            let out = loop {
                if s.broken.remove(&self.id) {
                    s.log.push("broken".into());
                    break Err("ORA-01013: user requested cancel of current operation".into());
                }
                if s.over {
                    break Err("ORA-03113: end-of-file on communication channel".into());
                }
                if !hang {
                    if std::mem::take(&mut s.kill) {
                        break Err(KILLED.to_string());
                    }
                    let pending = &mut s.sessions.get_mut(&self.id).unwrap().1;
                    if let Some(name) = pending.pop_first() {
                        let lowercase = s.lowercase;
                        break Ok(Some(if lowercase { name.to_lowercase() } else { name }));
                    }
                    if Instant::now() >= deadline {
                        break Ok(None);
                    }
                }
                s = script
                    .changed
                    .wait_timeout(s, Duration::from_millis(1))
                    .unwrap()
                    .0;
            };
            s.parked.remove(&self.id);
            out
        }

        fn breaker(&self) -> Breaker {
            let (script, id) = (self.script.clone(), self.id);
            Arc::new(move || {
                script.set(|s| {
                    s.broken.insert(id);
                })
            })
        }
    }

    impl Drop for Session {
        fn drop(&mut self) {
            self.script.set(|s| {
                s.sessions.remove(&self.id);
                s.broken.remove(&self.id);
                s.log.push("close".into());
            });
        }
    }

    /// The pool's sessions, logged on under the same SESSIONS_PER_USER as the listener's.
    struct PoolLogons(Arc<Script>);

    struct PoolSession(Arc<Script>);

    impl Drop for PoolSession {
        fn drop(&mut self) {
            self.0.set(|s| {
                s.pool_sessions -= 1;
                s.log.push("pool close".into());
            });
        }
    }

    impl deadpool::managed::Manager for PoolLogons {
        type Type = PoolSession;
        type Error = SourceError;

        async fn create(&self) -> Result<PoolSession, SourceError> {
            let mut s = self.0.lock();
            if s.full() {
                s.log.push("pool open refused: limit".into());
                // As the Oracle source reports a refused logon.
                return Err(SourceError::Connect(format!("oracle: {LIMIT}")));
            }
            s.pool_sessions += 1;
            s.log.push("pool open".into());
            Ok(PoolSession(self.0.clone()))
        }

        async fn recycle(
            &self,
            _: &mut PoolSession,
            _: &deadpool::managed::Metrics,
        ) -> deadpool::managed::RecycleResult<SourceError> {
            Ok(())
        }
    }

    struct Rig {
        script: Arc<Script>,
        listener: Arc<OracleListener>,
        hub: Hub,
        stop: CancellationToken,
        pool: deadpool::managed::Pool<PoolLogons>,
        slots: Arc<Slots>,
    }

    impl Rig {
        /// A listener beside a pool that always holds a session: nothing holds it back.
        fn new(connect_slots: usize) -> Rig {
            Rig::build(connect_slots, 1, None, false, COMMAND_GRACE)
        }

        /// As [`Rig::new`], with the thread waiting `grace` (real time) for the hub's next
        /// command after each answer.
        fn with_grace(grace: Duration) -> Rig {
            Rig::build(2, 1, None, false, grace)
        }

        /// A listener beside a scripted pool of `pool_size` that starts empty, under a
        /// SESSIONS_PER_USER of `limit` for both.
        fn with_pool(pool_size: usize, limit: usize) -> Rig {
            Rig::build(2, pool_size, Some(limit), true, COMMAND_GRACE)
        }

        fn build(
            connect_slots: usize,
            pool_size: usize,
            limit: Option<usize>,
            real: bool,
            grace: Duration,
        ) -> Rig {
            let script = Arc::new(Script::default());
            script.set(|s| s.limit = limit);
            let pool: deadpool::managed::Pool<PoolLogons> =
                deadpool::managed::Pool::builder(PoolLogons(script.clone()))
                    .max_size(pool_size)
                    .build()
                    .unwrap();
            let slots = Arc::new(Slots::new(pool_size));
            let polls_first = if real {
                let pool = pool.clone();
                PollsFirst::new(slots.clone(), move || pool.status().size)
            } else {
                PollsFirst::new(slots.clone(), || 1)
            };
            let listener = Arc::new(
                OracleListener::new(
                    Arc::new(Scripted(script.clone())),
                    "scott",
                    Arc::new(tokio::sync::Semaphore::new(connect_slots)),
                    // Its own process-wide slots: another test of this binary black-holes the real ones.
                    Arc::new(tokio::sync::Semaphore::new(32)),
                    polls_first,
                )
                .with_command_grace(grace),
            );
            let stop = CancellationToken::new();
            let hub = Hub::new("ora", listener.clone(), stop.clone(), |f| {
                tokio::spawn(f);
            });
            Rig {
                script,
                listener,
                hub,
                stop,
                pool,
                slots,
            }
        }

        /// One poll's checkout through the pool's gate (5 s budget), the clock moved in steps
        /// meanwhile: `Ok` once it had a session, which goes back to the pool.
        async fn poll(&self) -> Result<(), SourceError> {
            let (pool, slots) = (self.pool.clone(), self.slots.clone());
            let poll = tokio::spawn(async move {
                let started = Instant::now();
                let deadline = deadline_after(started, Duration::from_secs(5));
                checkout(&pool, &slots, started, deadline, None, "oracle")
                    .await
                    .map(drop)
            });
            while !poll.is_finished() {
                self.run_for(Duration::from_millis(100)).await;
            }
            poll.await.unwrap()
        }

        async fn run_for(&self, d: Duration) {
            self.script.run_for(&self.listener, d).await;
        }

        async fn settle(&self) {
            self.script.quiesce(&self.listener).await;
        }

        fn listening(&self) -> bool {
            self.hub.status().listening
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            self.script.set(|s| s.over = true);
        }
    }

    fn woken(w: &mut Wake) -> bool {
        let yes = w.notified().now_or_never().is_some();
        w.mark_seen();
        yes
    }

    #[tokio::test(start_paused = true)]
    async fn registration_follows_pollers_and_an_alert_wakes_exactly_its_channel() {
        guard(Duration::from_secs(600), async {
            let rig = Rig::new(2);
            let mut jobs1 = rig.hub.subscribe("JOBS");
            let mut jobs2 = rig.hub.subscribe("JOBS");
            let mut orders = rig.hub.subscribe("ORDERS");
            // REGISTER is answered at the end of a WAITANY: within WAIT per command.
            rig.run_for(WAIT * 3).await;
            let mut got = rig.script.log();
            got.sort();
            assert_eq!(got, ["open", "register JOBS", "register ORDERS"]);
            assert!(rig.listening());
            assert_eq!(rig.listener.threads(), 1, "one thread for the connection");
            assert_eq!(rig.script.lock().sessions.len(), 1, "one session");
            // A channel's first REGISTER wakes it once (what changed before it is polled).
            for w in [&mut jobs1, &mut jobs2, &mut orders] {
                assert!(woken(w));
            }
            // Three commits before the next wait are one alert, and wake only JOBS's pollers,
            // without the clock moving: WAITANY returns as the alert comes.
            rig.script.signal_many("JOBS", 3);
            rig.settle().await;
            assert!(woken(&mut jobs1) && woken(&mut jobs2));
            assert!(!woken(&mut orders), "ORDERS is not woken by JOBS");
            assert_eq!(rig.hub.status().notifications, 1);
            rig.run_for(WAIT * 2).await;
            assert!(!woken(&mut jobs1), "one alert, one wake");
            rig.script.signal("ORDERS");
            rig.settle().await;
            assert!(woken(&mut orders) && !woken(&mut jobs1));
            // A signal for a name nobody registered is not delivered.
            rig.script.signal("OTHER");
            rig.settle().await;
            assert_eq!(rig.hub.status().notifications, 2);
            // REMOVE goes with the last poller on a channel, not before.
            drop(jobs1);
            rig.run_for(WAIT * 2).await;
            assert!(rig.script.log().is_empty());
            drop(jobs2);
            rig.run_for(WAIT * 2).await;
            assert_eq!(rig.script.log(), ["remove JOBS"]);
            rig.script.signal("JOBS");
            rig.settle().await;
            assert!(!woken(&mut orders));
            assert_eq!(
                rig.hub.status().notifications,
                2,
                "JOBS is no longer registered"
            );
            // No channel left: REMOVEALL and close, at once (the WAITANY is broken, not
            // waited out), and the thread ends.
            drop(orders);
            rig.settle().await;
            assert_eq!(rig.script.log(), ["broken", "remove_all", "close"]);
            assert_eq!(rig.listener.threads(), 0);
            assert!(!rig.listening());
            assert_eq!(rig.hub.status().reconnects, 0);
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_killed_session_reconnects_with_backoff_and_re_registers() {
        guard(Duration::from_secs(600), async {
            let rig = Rig::new(2);
            let mut a = rig.hub.subscribe("A");
            let mut b = rig.hub.subscribe("B");
            rig.run_for(WAIT * 3).await;
            assert!(rig.listening());
            woken(&mut a);
            woken(&mut b);
            rig.script.log();
            // ALTER SYSTEM KILL SESSION, while the database refuses new sessions for a while.
            rig.script.set(|s| {
                s.kill = true;
                s.open_error = Some("ORA-12541: TNS:no listener".into());
            });
            rig.settle().await;
            assert!(!rig.listening(), "down as soon as WAITANY fails");
            assert_eq!(
                rig.script.log(),
                ["close"],
                "a killed session is closed without REMOVEALL"
            );
            // Retries back off (equal jitter, 100 ms doubling to 10 s): in 30 s a handful of
            // attempts, never a spin.
            rig.run_for(Duration::from_secs(30)).await;
            let attempts = rig.script.lock().opens;
            assert!((4..=12).contains(&attempts), "{attempts} connects in 30 s");
            assert!(!rig.listening());
            assert_eq!(rig.listener.threads(), 0, "failed connects leave no thread");
            rig.script.log();
            rig.script.set(|s| s.open_error = None);
            rig.run_for(BACKOFF_MAX + WAIT * 3).await;
            let mut got = rig.script.log();
            got.sort();
            assert_eq!(got, ["open", "register A", "register B"]);
            let status = rig.hub.status();
            assert!(status.listening);
            assert_eq!(status.reconnects, 1);
            // Every channel is polled once after the outage (spread over the re-arm window).
            rig.run_for(REARM_WINDOW).await;
            assert!(woken(&mut a) && woken(&mut b));
            rig.script.signal("B");
            rig.settle().await;
            assert!(woken(&mut b) && !woken(&mut a), "alerts flow again");
            drop((a, b));
            rig.settle().await;
            assert_eq!(rig.listener.threads(), 0);
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_grant_degrades_with_one_warning_naming_it() {
        let lines = Lines::capture();
        guard(Duration::from_secs(600), async {
            let rig = Rig::new(2);
            rig.script.set(|s| s.register_error = Some(NO_GRANT.into()));
            let _a = rig.hub.subscribe("JOBS");
            rig.run_for(Duration::from_secs(60)).await;
            assert!(!rig.listening());
            let text = lines.text();
            let warnings: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("WARN") && l.contains("notification listener down"))
                .collect();
            assert_eq!(warnings.len(), 1, "one WARN per outage: {text}");
            assert!(
                warnings[0].contains("GRANT EXECUTE ON SYS.DBMS_ALERT TO SCOTT"),
                "{}",
                warnings[0]
            );
            assert!(
                warnings[0].contains("interval polling goes on"),
                "{}",
                warnings[0]
            );
            // The hub's words are the database's neither: REGISTER is no LISTEN.
            assert!(
                warnings[0].contains("subscribe to channel JOBS: oracle:"),
                "{}",
                warnings[0]
            );
            assert!(!warnings[0].contains("LISTEN"), "{}", warnings[0]);
            assert!(!text.contains("panicked"), "{text}");
            // Retried with the backoff; each refused session is closed, never kept.
            let opens = rig.script.lock().opens;
            assert!((5..=15).contains(&opens), "{opens} sessions in 60 s");
            assert!(rig.listener.threads() <= 1);
            // The DBA grants it: the next attempt listens.
            rig.script.set(|s| s.register_error = None);
            rig.run_for(BACKOFF_MAX + WAIT * 3).await;
            assert!(rig.listening());
            let text = lines.text();
            assert!(text.contains("notification listener back"), "{text}");
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_waitany_is_broken_and_the_session_replaced() {
        guard(Duration::from_secs(600), async {
            let rig = Rig::new(2);
            let _a = rig.hub.subscribe("A");
            rig.run_for(WAIT * 3).await;
            assert!(rig.listening());
            rig.script.log();
            // The network goes silent: WAITANY does not return (its call timeout does not fire).
            rig.script.set(|s| s.hang_wait = true);
            let hung_at = Instant::now();
            rig.run_for(WAIT * 2).await;
            assert!(rig.listening(), "nothing can tell yet");
            // The hub's ping (every PING_EVERY) goes unanswered for COMMAND_TIMEOUT: the
            // session is dropped, its WAITANY broken, its thread ended, a new one connected.
            rig.run_for(PING_EVERY + COMMAND_TIMEOUT + Duration::from_secs(1))
                .await;
            let log = rig.script.log();
            let down_by = hung_at.elapsed();
            assert!(
                log.starts_with(&["broken".to_string(), "remove_all".into(), "close".into()]),
                "{log:?}"
            );
            assert!(log.contains(&"open".to_string()), "{log:?}");
            rig.run_for(WAIT * 3).await;
            let status = rig.hub.status();
            assert!(status.listening);
            assert_eq!(status.reconnects, 1);
            assert_eq!(rig.listener.threads(), 1, "the hung thread ended");
            assert_eq!(rig.script.lock().sessions.len(), 1);
            assert!(
                down_by <= PING_EVERY + COMMAND_TIMEOUT + WAIT * 4,
                "{down_by:?}"
            );
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn hung_connects_are_bounded_in_time_and_threads() {
        guard(Duration::from_secs(600), async {
            let rig = Rig::new(2);
            rig.script.set(|s| s.hang_open = true);
            let _a = rig.hub.subscribe("A");
            // Each connect is given up after COMMAND_TIMEOUT; an abandoned one keeps its
            // thread (a connect cannot be cancelled) and its connect slot, so at most the
            // connection's slots (2 here) are ever blocked, however long the host is silent.
            for _ in 0..12 {
                rig.run_for(Duration::from_secs(5)).await;
                assert!(
                    rig.listener.threads() <= 2,
                    "{} threads",
                    rig.listener.threads()
                );
                assert!(!rig.listening());
            }
            assert_eq!(rig.script.lock().peak_hanging_opens, 2);
            // The host answers: the late sessions are closed (nobody waits for them), and the
            // next attempt listens.
            rig.script.set(|s| s.hang_open = false);
            rig.run_for(BACKOFF_MAX + COMMAND_TIMEOUT + WAIT * 3).await;
            assert!(rig.listening());
            assert_eq!(rig.listener.threads(), 1);
            assert_eq!(rig.script.lock().sessions.len(), 1);
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn many_alerts_register_in_one_wait_not_one_wait_each() {
        guard(Duration::from_secs(600), async {
            // The grace is real time while WAITANY waits on the paused clock: a whole second
            // (not 50 ms) so a runtime stalled on a busy machine still sends the next REGISTER
            // within it. What is counted is unchanged: 40 REGISTERs in a few WAITs.
            let rig = Rig::with_grace(Duration::from_secs(1));
            let wakes: Vec<Wake> = (0..40)
                .map(|i| rig.hub.subscribe(&format!("A{i}")))
                .collect();
            // The hub sends one REGISTER at a time; each after the first follows its answer at
            // once, so all 40 take about one WAIT, not 40.
            rig.run_for(WAIT * 5).await;
            assert_eq!(rig.script.registers().len(), 40);
            assert!(rig.listening());
            assert_eq!(rig.hub.status().channels, 40);
            drop(wakes);
            rig.settle().await;
            assert_eq!(rig.listener.threads(), 0);
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_listener_thread_at_once() {
        guard(Duration::from_secs(600), async {
            let rig = Rig::new(2);
            let _a = rig.hub.subscribe("A");
            let _b = rig.hub.subscribe("B");
            rig.run_for(WAIT * 3).await;
            assert!(rig.listening());
            assert_eq!(rig.listener.threads(), 1);
            rig.script.log();
            let at = Instant::now();
            rig.stop.cancel();
            // Settled without moving the clock: the WAITANY in progress is broken, REMOVEALL
            // runs, the session closes and the thread ends.
            rig.settle().await;
            assert_eq!(at.elapsed(), Duration::ZERO);
            assert_eq!(rig.script.log(), ["broken", "remove_all", "close"]);
            assert_eq!(rig.listener.threads(), 0);
            assert!(rig.script.lock().sessions.is_empty());
        })
        .await;
    }

    /// The listener's logon comes after the pool's first session: with notifyChannel set,
    /// the listener never takes a slot before polls have one.
    #[tokio::test(start_paused = true)]
    async fn the_listener_logs_on_only_after_the_pools_first_session() {
        guard(Duration::from_secs(600), async {
            let rig = Rig::with_pool(2, 3);
            let _a = rig.hub.subscribe("JOBS");
            // No poll yet: the listener waits (POOL_FIRST_WAIT per attempt, then the hub's
            // backoff), and never logs on.
            rig.run_for(POOL_FIRST_WAIT * 6).await;
            assert_eq!(rig.script.lock().opens, 0, "{:?}", rig.script.log());
            assert!(!rig.listening());
            assert_eq!(rig.listener.threads(), 0, "waiting takes no thread");
            // The first poll's session, then the listener's.
            rig.poll().await.unwrap();
            rig.run_for(BACKOFF_MAX + POOL_FIRST_WAIT + WAIT * 3).await;
            assert!(rig.listening());
            let log = rig.script.log();
            assert_eq!(log[..3], ["pool open", "open", "register JOBS"], "{log:?}");
            assert_eq!(rig.hub.status().reconnects, 1);
        })
        .await;
    }

    /// SESSIONS_PER_USER 1 with pool_size 2: the pool's session gets the one slot, the
    /// listener's logon is refused (ORA-02391) and wake-ups degrade with one WARN naming the
    /// sizing rule, while every poll goes on on the pool's session.
    #[tokio::test(start_paused = true)]
    async fn a_refused_listener_degrades_wake_ups_while_polls_go_on() {
        let lines = Lines::capture();
        guard(Duration::from_secs(600), async {
            let rig = Rig::with_pool(2, 1);
            let _a = rig.hub.subscribe("JOBS");
            // The listener is asked for before any poll runs: it must not win the slot.
            rig.run_for(Duration::from_millis(500)).await;
            for _ in 0..30 {
                rig.poll().await.expect("a poll on the pool's session");
                rig.run_for(Duration::from_secs(2)).await;
            }
            assert!(!rig.listening());
            assert_eq!(rig.listener.threads(), 0, "refused logons leave no thread");
            {
                let s = rig.script.lock();
                assert_eq!(s.pool_sessions, 1);
                assert!(s.sessions.is_empty(), "the listener holds no session");
                // Retried with the backoff (≤ 10 s apart), never a spin.
                assert!((5..=20).contains(&s.opens), "{} logons in 60 s", s.opens);
            }
            let text = lines.text();
            let warnings: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("WARN") && l.contains("notification listener down"))
                .collect();
            assert_eq!(warnings.len(), 1, "one WARN per outage: {text}");
            for want in [
                "ORA-02391",
                "wake-ups need a connection limit of at least pool_size + 1",
                "interval polling goes on",
            ] {
                assert!(warnings[0].contains(want), "{want}: {}", warnings[0]);
            }
            // The DBA raises the limit: the listener comes back beside the pool.
            rig.script.set(|s| s.limit = Some(2));
            rig.run_for(BACKOFF_MAX + WAIT * 3).await;
            assert!(rig.listening());
        })
        .await;
    }

    /// The listener holds the last slot when the pool's session is lost: the next poll is
    /// refused while the pool holds none, the listener closes its session (REMOVEALL, close)
    /// and the poll has the slot on its retry; the listener then stays down beside it.
    #[tokio::test(start_paused = true)]
    async fn a_starved_pool_makes_the_listener_give_its_slot_up() {
        let lines = Lines::capture();
        guard(Duration::from_secs(600), async {
            let rig = Rig::with_pool(1, 2);
            let _a = rig.hub.subscribe("JOBS");
            rig.poll().await.unwrap();
            rig.run_for(BACKOFF_MAX + WAIT * 3).await;
            assert!(rig.listening());
            assert_eq!(rig.script.log(), ["pool open", "open", "register JOBS"]);
            // The pool's session is killed and SESSIONS_PER_USER lowered to 1: the listener's
            // session holds the only slot.
            let session = rig.pool.get().await.unwrap();
            drop(deadpool::managed::Object::take(session));
            rig.script.set(|s| s.limit = Some(1));
            assert_eq!(rig.script.log(), ["pool close"]);
            rig.poll().await.expect("the poll has the listener's slot");
            let log = rig.script.log();
            assert_eq!(
                log[..5],
                [
                    "pool open refused: limit",
                    "broken",
                    "remove_all",
                    "close",
                    "pool open"
                ],
                "{log:?}"
            );
            {
                let s = rig.script.lock();
                assert_eq!((s.pool_sessions, s.sessions.len()), (1, 0));
            }
            // The listener stays down (refused beside the pool's session); polls go on.
            rig.run_for(Duration::from_secs(30)).await;
            assert!(!rig.listening());
            rig.poll().await.unwrap();
            let text = lines.text();
            assert!(text.contains(GAVE_SLOT_UP), "{text}");
            assert!(!rig.script.log().contains(&"open".to_string()));
        })
        .await;
    }

    /// The hub drops the session while the thread waits for its next command (not in
    /// WAITANY): no break is sent, so REMOVEALL runs and the registrations go with the session.
    #[tokio::test(start_paused = true)]
    async fn a_close_during_the_command_grace_removes_all_without_a_break() {
        guard(Duration::from_secs(600), async {
            // A grace long enough (real time) that the close surely falls inside it.
            let rig = Rig::with_grace(Duration::from_secs(2));
            let _a = rig.hub.subscribe("A");
            rig.run_for(WAIT * 3).await;
            assert!(rig.listening());
            rig.script.log();
            rig.script.set(|s| s.remove_all_waits_for_break = true);
            let _b = rig.hub.subscribe("B");
            // REGISTER B is answered at the end of the WAITANY; the thread then waits for the
            // next command.
            let started = std::time::Instant::now();
            while !rig.script.lock().log.contains(&"register B".to_string()) {
                tokio::time::advance(Duration::from_millis(10)).await;
                for _ in 0..20 {
                    tokio::task::yield_now().await;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "no REGISTER B");
            }
            assert_eq!(rig.listener.threads(), 1);
            rig.stop.cancel();
            rig.settle().await;
            assert_eq!(rig.script.log(), ["register B", "remove_all", "close"]);
            assert_eq!(rig.listener.threads(), 0);
            assert!(rig.script.lock().sessions.is_empty());
        })
        .await;
    }

    /// A session's first REGISTER sweeps orphaned pipes; when that sweep outlasts the call
    /// timeout (DPI-1067) the session is dropped as before, but the next one registers with
    /// `cleanup => FALSE` and listens, instead of timing out the same way forever.
    #[tokio::test(start_paused = true)]
    async fn a_sweep_that_times_out_is_skipped_by_the_next_session() {
        guard(Duration::from_secs(600), async {
            let rig = Rig::new(2);
            rig.script.set(|s| s.slow_sweep = true);
            let _a = rig.hub.subscribe("JOBS");
            rig.run_for(BACKOFF_MAX + WAIT * 5).await;
            assert!(rig.listening());
            let registers = rig.script.registers();
            assert_eq!(
                registers,
                [
                    "register JOBS: sweep timed out",
                    "register JOBS without sweep"
                ],
                "{registers:?}"
            );
            assert_eq!(rig.hub.status().reconnects, 1);
            // Later sessions skip the sweep too.
            rig.script.set(|s| s.kill = true);
            rig.run_for(BACKOFF_MAX + WAIT * 3).await;
            assert!(rig.listening());
            assert!(
                rig.script
                    .log()
                    .contains(&"register JOBS without sweep".to_string())
            );
        })
        .await;
    }

    /// An Oracle before 12.2 has no `cleanup` parameter: after a sweep timed out once, the
    /// next session's REGISTER without it fails with PLS-00306; the listener registers with the
    /// sweep (the only REGISTER such a server has) and later sessions do too, instead of
    /// failing that way until a restart.
    #[tokio::test(start_paused = true)]
    async fn a_server_without_the_cleanup_parameter_gets_the_sweep_back() {
        guard(Duration::from_secs(600), async {
            let rig = Rig::new(2);
            rig.script.set(|s| {
                s.slow_sweep_once = true;
                s.no_cleanup_parameter = true;
            });
            let _a = rig.hub.subscribe("JOBS");
            rig.run_for(BACKOFF_MAX + WAIT * 5).await;
            assert!(rig.listening());
            assert_eq!(
                rig.script.registers(),
                [
                    "register JOBS: sweep timed out",
                    "register JOBS without sweep: PLS-00306",
                    "register JOBS",
                ],
            );
            // Later sessions register with the sweep at once.
            rig.script.set(|s| s.kill = true);
            rig.run_for(BACKOFF_MAX + WAIT * 3).await;
            assert!(rig.listening());
            assert_eq!(rig.script.registers(), ["register JOBS"]);
        })
        .await;
    }

    /// On a server before 12.2 whose sweep stays too slow, REGISTER without the sweep is not
    /// tried again once it failed with PLS-00306: wake-ups stay down (there is no other
    /// REGISTER), but the listener does not alternate a PLS-00306 and a 5 s sweep on every
    /// session.
    #[tokio::test(start_paused = true)]
    async fn a_server_with_only_a_slow_sweep_is_not_asked_the_other_way_again() {
        guard(Duration::from_secs(600), async {
            let rig = Rig::new(2);
            rig.script.set(|s| {
                s.slow_sweep = true;
                s.no_cleanup_parameter = true;
            });
            let _a = rig.hub.subscribe("JOBS");
            rig.run_for(BACKOFF_MAX * 6).await;
            let log = rig.script.registers();
            let without = log.iter().filter(|l| l.contains("without sweep")).count();
            assert_eq!(without, 1, "{log:?}");
            assert!(
                log.iter()
                    .filter(|l| l.ends_with("sweep timed out"))
                    .count()
                    >= 4,
                "the sessions go on (with the sweep): {log:?}"
            );
            assert!(!rig.listening());
        })
        .await;
    }

    /// An alert's name comes back from WAITANY as the server spells it: `jobs` still wakes
    /// channel JOBS.
    #[tokio::test(start_paused = true)]
    async fn an_alert_named_in_lowercase_wakes_its_channel() {
        guard(Duration::from_secs(600), async {
            let rig = Rig::new(2);
            let mut jobs = rig.hub.subscribe("JOBS");
            let mut orders = rig.hub.subscribe("ORDERS");
            rig.run_for(WAIT * 3).await;
            assert!(rig.listening());
            woken(&mut jobs);
            woken(&mut orders);
            rig.script.set(|s| s.lowercase = true);
            rig.script.signal("JOBS");
            rig.settle().await;
            assert!(woken(&mut jobs), "jobs wakes JOBS");
            assert!(!woken(&mut orders));
            assert_eq!(rig.hub.status().notifications, 1);
        })
        .await;
    }
}
