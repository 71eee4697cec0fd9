//! The real binary: flags, exit codes, the probe, the demo, and shutdown on signals.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn version_and_help_show_env_names() {
    let (code, out, _) = run_bin(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("orascale {}", env!("CARGO_PKG_VERSION"))
    );

    let (code, out, _) = run_bin(&["serve", "--help"]);
    assert_eq!(code, 0);
    for env in [
        "ORASCALE_GRPC_LISTEN",
        "ORASCALE_METRICS_LISTEN",
        "ORASCALE_CONNECTIONS",
        "ORASCALE_CONFIG",
        "ORASCALE_DEFAULT_POLL_INTERVAL",
        "ORASCALE_MIN_POLL_INTERVAL",
        "ORASCALE_DEFAULT_QUERY_TIMEOUT",
        "ORASCALE_IDLE_TIMEOUT",
        "ORASCALE_STREAM_RESEND_INTERVAL",
        "ORASCALE_MIN_WAKE_INTERVAL",
    ] {
        assert!(
            out.contains(&format!("env: {env}")),
            "serve --help lacks {env}:\n{out}"
        );
    }
    for flag in [
        "--grpc-listen",
        "--metrics-listen",
        "--connection",
        "--config",
        "--default-poll-interval",
        "--min-poll-interval",
        "--default-query-timeout",
        "--idle-timeout",
        "--stream-resend-interval",
        "--min-wake-interval",
        "--demo",
    ] {
        assert!(out.contains(flag), "serve --help lacks {flag}");
    }
    let (code, out, _) = run_bin(&["probe", "--help"]);
    assert_eq!(code, 0);
    for flag in ["--addr", "--name", "--namespace", "--metadata", "--watch"] {
        assert!(out.contains(flag), "probe --help lacks {flag}");
    }
    let (code, _, _) = run_bin(&["--help"]);
    assert_eq!(code, 0);
}

#[test]
fn bad_configuration_exits_64_naming_the_value_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        "grpc_listen = \"127.0.0.1:0\"\npoll_intervall = \"5s\"\n",
    )
    .unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--connection".into(), "x=mysql://app:hunter2@db/x".into()],
            "\"mysql\" is not built in",
        ),
        (vec!["--connection".into(), "nourl".into()], "NAME=URL"),
        (vec!["--default-poll-interval".into(), "10".into()], "unit"),
        (
            vec!["--min-wake-interval".into(), "0s".into()],
            "min_wake_interval",
        ),
        (
            vec!["--min-wake-interval".into(), "2d".into()],
            "min_wake_interval",
        ),
        (
            vec!["--grpc-listen".into(), "nowhere".into()],
            "--grpc-listen",
        ),
        (
            vec!["--config".into(), typo.display().to_string()],
            "poll_intervall",
        ),
        (
            vec!["--config".into(), "/nonexistent/orascale.toml".into()],
            "/nonexistent/orascale.toml",
        ),
    ];
    for (args, frag) in cases {
        let mut full = vec![
            "serve".to_string(),
            "--grpc-listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ];
        if args[0] == "--grpc-listen" {
            full.truncate(1);
            full.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
        }
        full.extend(args.iter().cloned());
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let (code, _, err) = run_bin(&refs);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(err.contains(frag), "{args:?}: {err:?} lacks {frag:?}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

#[test]
fn sigterm_ends_open_streams_with_ok_and_exits_zero_within_five_seconds() {
    for sig in ["TERM", "INT"] {
        let db = TestDb::new();
        db.set_queued(2);
        let dir = tempfile::tempdir().unwrap();
        let mut server =
            Binary::start(&["--connection", &format!("jobs={}", db.url())], dir.path());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let grpc = server.grpc;
        let streams = rt.block_on(async {
            let c = client(grpc).await;
            let mut streams = Vec::new();
            for i in 0..20 {
                let mut c = c.clone();
                let obj = object(
                    &format!("so-{i}"),
                    &[
                        ("query", QUEUED),
                        ("targetQueryValue", "1"),
                        ("pollInterval", "1s"),
                    ],
                );
                let mut s = c.stream_is_active(obj).await.unwrap().into_inner();
                let first = tokio::time::timeout(Duration::from_secs(10), s.message())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                assert!(first.result, "active at open: true at once");
                streams.push(s);
            }
            streams
        });
        let sent = Instant::now();
        server.signal(sig);
        rt.block_on(async {
            for mut s in streams {
                let end = tokio::time::timeout(Duration::from_secs(5), s.message())
                    .await
                    .expect("stream ends");
                assert!(
                    end.expect("with OK").is_none(),
                    "SIG{sig}: stream ends with OK, not an error"
                );
            }
        });
        let code = server.wait_exit(Duration::from_secs(10));
        let took = sent.elapsed();
        assert_eq!(
            code,
            Some(0),
            "SIG{sig}: exit code; log:\n{}",
            server.log_text()
        );
        assert!(
            took < Duration::from_secs(5),
            "SIG{sig}: exited after {took:?}"
        );
    }
}

#[test]
fn probe_prints_answers_and_fails_with_the_status_message() {
    let db = TestDb::new();
    db.set_queued(6);
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(&["--connection", &format!("jobs={}", db.url())], dir.path());
    let addr = server.grpc.to_string();
    let (code, out, err) = run_bin(&[
        "probe",
        "--addr",
        &addr,
        "--name",
        "w",
        "--namespace",
        "n",
        "-m",
        &format!("query={QUEUED}"),
        "-m",
        "targetQueryValue=4",
        "-m",
        "metricName=jobs",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("GetMetricSpec: metricName=jobs targetSize=4 targetSizeFloat=4"),
        "{out}"
    );
    assert!(
        out.contains("GetMetrics: metricName=jobs metricValue=6 metricValueFloat=6"),
        "{out}"
    );
    assert!(out.contains("IsActive: result=true"), "{out}");
    assert!(
        !out.contains("Scaling:"),
        "only with --current-replicas: {out}"
    );

    // The scaling decision, not just a number: 6 queued, 4 per replica.
    for (current, kind, want) in [
        (
            "0",
            "average-value",
            "KEDA scales to max(minReplicaCount, 1)",
        ),
        ("1", "average-value", "desiredReplicas=2 (ceil(6 / 4))"),
        ("3", "value", "desiredReplicas=5 (ceil(3 × 6 / 4))"),
    ] {
        let (code, out, err) = run_bin(&[
            "probe",
            "--addr",
            &addr,
            "-m",
            &format!("query={QUEUED}"),
            "-m",
            "targetQueryValue=4",
            "--current-replicas",
            current,
            "--metric-type",
            kind,
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("Scaling: ") && out.contains(want),
            "{want}: {out}"
        );
    }

    let (code, _, err) = run_bin(&[
        "probe",
        "--addr",
        &addr,
        "-m",
        "query=select count(*) from nope",
        "-m",
        "targetQueryValue=4",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("GetMetrics")
            && err.contains("Unavailable")
            && err.contains("no such table: nope"),
        "{err}"
    );

    let (code, _, err) = run_bin(&[
        "probe",
        "--addr",
        &addr,
        "-m",
        "query=select 1",
        "-m",
        "targetQueryValue=4",
        "-m",
        "pollingInterval=5s",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("InvalidArgument") && err.contains("pollingInterval"),
        "{err}"
    );

    let (code, _, err) = run_bin(&[
        "probe",
        "--addr",
        "127.0.0.1:1",
        "-m",
        "query=select 1",
        "-m",
        "targetQueryValue=1",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn probe_watch_prints_timestamped_messages_until_the_stream_ends() {
    let db = TestDb::new();
    db.set_queued(1);
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(&["--connection", &format!("jobs={}", db.url())], dir.path());
    let addr = server.grpc.to_string();
    let child = Command::new(bin())
        .args([
            "probe",
            "--addr",
            &addr,
            "-m",
            &format!("query={QUEUED}"),
            "-m",
            "targetQueryValue=1",
            "--watch",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    server.signal("TERM");
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let pushed = lines
        .iter()
        .find(|l| l.contains("StreamIsActive: result=true"))
        .expect(&text);
    // An RFC 3339 timestamp first.
    assert!(
        pushed.starts_with("20") && pushed.as_bytes()[10] == b'T',
        "{pushed}"
    );
    assert!(text.contains("StreamIsActive: ended OK"), "{text}");
}

#[test]
fn demo_creates_its_database_and_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(&["--demo"], dir.path());
    assert!(dir.path().join("orascale-demo.db").exists());
    let log = server.wait_log("demo enqueue", Duration::from_secs(10));
    assert!(
        log.contains("demo enqueue"),
        "the demo logs how to use it: {log}"
    );
    let db = dir.path().join("orascale-demo.db");
    let db = db.to_str().unwrap();
    let (code, out, _) = run_bin(&["demo", "--db", db, "enqueue", "3"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("3 queued"), "{out}");
    let addr = server.grpc.to_string();
    let (code, out, err) = run_bin(&[
        "probe",
        "--addr",
        &addr,
        "-m",
        "query=select count(*) from jobs where status = 'queued'",
        "-m",
        "targetQueryValue=5",
        "-m",
        "connection=demo",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("metricValueFloat=3"), "{out}");
    assert!(out.contains("IsActive: result=true"), "{out}");
}

#[test]
fn connections_from_the_environment_and_the_config_file() {
    let db = TestDb::new();
    db.set_queued(4);
    let dir = tempfile::tempdir().unwrap();
    // The shipped example configuration loads (with its listeners moved to free ports).
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes/base/orascale.toml");
    let text = std::fs::read_to_string(&shipped).unwrap();
    let mine = dir.path().join("orascale.toml");
    std::fs::write(
        &mine,
        format!(
            "{text}\n[connections.jobs]\nurl = \"{}\"\npool_size = 2\nnamespaces = [\"default\"]\n",
            db.url()
        ),
    )
    .unwrap();
    let server = Binary::start_with_env(&["--config", mine.to_str().unwrap()], dir.path(), &[]);
    let addr = server.grpc.to_string();
    let (code, out, err) = run_bin(&[
        "probe",
        "--addr",
        &addr,
        "-m",
        &format!("query={QUEUED}"),
        "-m",
        "targetQueryValue=1",
        "-m",
        "connection=jobs",
        "-m",
        "pollInterval=5s",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("metricValueFloat=4"), "{out}");
    // The file's min_poll_interval (5s) applies.
    let (code, _, err) = run_bin(&[
        "probe",
        "--addr",
        &addr,
        "-m",
        "query=select 1",
        "-m",
        "targetQueryValue=1",
        "-m",
        "connection=jobs",
        "-m",
        "pollInterval=1s",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("minimum poll interval 5s"), "{err}");
    // The file's namespace scope applies.
    let (code, _, err) = run_bin(&[
        "probe",
        "--addr",
        &addr,
        "--namespace",
        "other",
        "-m",
        "query=select 1",
        "-m",
        "targetQueryValue=1",
        "-m",
        "connection=jobs",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("PermissionDenied") && err.contains("\"jobs\""),
        "{err}"
    );
    drop(server);

    // ORASCALE_CONNECTIONS: comma-separated NAME=URL pairs.
    let other = TestDb::new();
    other.set_queued(9);
    let server = Binary::start_with_env(
        &[],
        dir.path(),
        &[(
            "ORASCALE_CONNECTIONS",
            &format!("a={},b={}", db.url(), other.url()),
        )],
    );
    let addr = server.grpc.to_string();
    for (conn, want) in [("a", "metricValueFloat=4"), ("b", "metricValueFloat=9")] {
        let (code, out, err) = run_bin(&[
            "probe",
            "--addr",
            &addr,
            "-m",
            &format!("query={QUEUED}"),
            "-m",
            "targetQueryValue=1",
            "-m",
            &format!("connection={conn}"),
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(want), "{conn}: {out}");
    }
    let (code, _, err) = run_bin(&[
        "probe",
        "--addr",
        &addr,
        "-m",
        "query=select 1",
        "-m",
        "targetQueryValue=1",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("\"connection\" is required") && err.contains("a, b"),
        "{err}"
    );
}

/// `orascale check --query` refuses exactly what the server refuses (length limit, SQL guard),
/// with the server's message, and before any connection is made: an Oracle connection to a
/// port nobody listens on (and no Instant Client here) reports the guard, not a connect error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_what_the_server_refuses_before_connecting() {
    guard(Duration::from_secs(60), async {
        let db = TestDb::new();
        let server = start(vec![connection("jobs", &db.url())], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let jobs = format!("jobs={}", db.url());
        let ora = format!(
            "ora=oracle://scott:tiger@127.0.0.1:{}/FREEPDB1",
            unused_port()
        );
        let long = format!("select {}1", "1 + ".repeat(3000));
        for query in [
            "pragma page_count",
            "select count(*) from jobs for update",
            "select 1; select 2",
            "delete from jobs",
            long.as_str(),
        ] {
            let refused = c
                .get_metric_spec(deadline(object(
                    "so",
                    &[("query", query), ("targetQueryValue", "1")],
                )))
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{query}");
            let (code, out, err) = tokio::task::spawn_blocking({
                let args = [
                    "check".to_string(),
                    "--connection".into(),
                    jobs.clone(),
                    "--query".into(),
                    query.to_string(),
                ];
                move || run_bin(&args.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .await
            .unwrap();
            assert_eq!(code, 1, "{query}: {out}{err}");
            assert!(
                out.contains(refused.message()),
                "check says what the server says ({:?}): {out}",
                refused.message()
            );
        }
        for (query, rule) in [
            ("select count(*) from jobs@remote", "database links"),
            ("select id from jobs for update", "FOR UPDATE"),
        ] {
            let (code, out, err) = tokio::task::spawn_blocking({
                let args = [
                    "check".to_string(),
                    "--connection".into(),
                    ora.clone(),
                    "--query".into(),
                    query.to_string(),
                    "--timeout".into(),
                    "3s".into(),
                ];
                move || run_bin(&args.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .await
            .unwrap();
            assert_eq!(code, 1, "{query}: {out}{err}");
            assert!(
                out.contains("rejected by the SQL guard") && out.contains(rule),
                "{query}: {out}"
            );
            assert!(
                !out.contains("DPI-") && !out.contains("connect failed"),
                "no connection is attempted for a refused query: {out}"
            );
        }
        server.stop().await;
    })
    .await;
}

fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// check judges a value by the server's rule: a non-finite number is an error, not `inf`.
#[test]
fn check_refuses_a_non_finite_value_like_the_server() {
    let db = TestDb::new();
    let jobs = format!("jobs={}", db.url());
    for query in ["select 1e999", "select -1e999"] {
        let (code, out, err) = run_bin(&["check", "--connection", &jobs, "--query", query]);
        assert_eq!(code, 1, "{query}: {out}{err}");
        assert!(out.contains("not a finite number"), "{query}: {out}");
    }
}
