//! The Oracle source on a machine without Oracle Instant Client (like this project's CI): the
//! real binary starts, warns once with the install hint, keeps serving GetMetricSpec and answers
//! GetMetrics/IsActive with UNAVAILABLE carrying that hint. Where a client is installed the
//! same calls must fail with a connect error instead (nothing listens on the port used).

mod support;

use std::time::Duration;

use support::*;
use tonic::Code;

const HINT: &str = "Oracle Instant Client not found: install instantclient-basic(lite) and set LD_LIBRARY_PATH, see docs/oracle.md";
const PASSWORD: &str = "t1ger-Secret-Pw";

fn client_present() -> bool {
    orascale::source::oracle::client_status().is_ok()
}

fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
