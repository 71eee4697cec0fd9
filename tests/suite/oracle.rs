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
