//! The real binary: flags, exit codes, the probe, the demo, and shutdown on signals.

use crate::support;

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
    for flag in [
        "--addr",
        "--name",
        "--namespace",
        "--metadata",
        "--watch",
        "--ca",
        "--cert",
        "--key",
        "--server-name",
        "--min-replica-count",
        "--max-replica-count",
        "AverageValue",
    ] {
        assert!(out.contains(flag), "probe --help lacks {flag}");
    }
    let (code, out, _) = run_bin(&["check", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--timeout"), "{out}");
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
        (
            vec![
                "--connection".into(),
                "jobs=sqlite:/a.db".into(),
                "--connection".into(),
                "jobs=postgres://app:hunter2@db/x".into(),
            ],
            "connection name \"jobs\" is given twice",
        ),
        (
            vec![
                "--grpc-listen".into(),
                "127.0.0.1:39091".into(),
                "--metrics-listen".into(),
                "127.0.0.1:39091".into(),
            ],
            "--metrics-listen: value 127.0.0.1:39091 takes the port of --grpc-listen",
        ),
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
            if !args.contains(&"--metrics-listen".to_string()) {
                full.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
            }
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

/// A second SIGTERM during `--shutdown-delay` skips the rest of the delay: the drain runs and
/// the process exits 0 at once instead of a minute later.
#[test]
fn a_second_signal_skips_the_shutdown_delay() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Binary::start(
        &[
            "--connection",
            &format!("jobs={}", db.url()),
            "--shutdown-delay",
            "60s",
        ],
        dir.path(),
    );
    server.signal("TERM");
    let waiting = Instant::now();
    while !server
        .log_text()
        .contains("serving until the shutdown delay has passed")
    {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        server.wait_exit(Duration::from_secs(1)),
        None,
        "the first signal keeps serving through the delay"
    );
    let sent = Instant::now();
    server.signal("TERM");
    let code = server.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", server.log_text());
    assert!(
        sent.elapsed() < Duration::from_secs(6),
        "{:?}",
        sent.elapsed()
    );
    assert!(
        server
            .log_text()
            .contains("the rest of the shutdown delay is skipped"),
        "{}",
        server.log_text()
    );
}

/// `orascale probe --addr addr` with each of `meta` as a `-m` pair.
fn probe_meta(addr: &str, meta: &[&str]) -> (i32, String, String) {
    let mut args = vec!["probe", "--addr", addr];
    for m in meta {
        args.extend(["-m", m]);
    }
    run_bin(&args)
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

    let (code, _, err) = probe_meta(
        &addr,
        &["query=select count(*) from nope", "targetQueryValue=4"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("GetMetrics")
            && err.contains("Unavailable")
            && err.contains("no such table: nope"),
        "{err}"
    );

    let (code, _, err) = probe_meta(
        &addr,
        &["query=select 1", "targetQueryValue=4", "pollingInterval=5s"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("InvalidArgument") && err.contains("pollingInterval"),
        "{err}"
    );

    let (code, _, err) = probe_meta("127.0.0.1:1", &["query=select 1", "targetQueryValue=1"]);
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
    let log = server.wait_log("  add work:", Duration::from_secs(10));
    assert!(
        log.contains(" demo --db ") && log.contains(" enqueue 12"),
        "the demo prints how to use it: {log}"
    );
    let db = dir.path().join("orascale-demo.db");
    let db = db.to_str().unwrap();
    let (code, out, _) = run_bin(&["demo", "--db", db, "enqueue", "3"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("3 queued"), "{out}");
    let addr = server.grpc.to_string();
    let (code, out, err) = probe_meta(
        &addr,
        &[
            "query=select count(*) from jobs where status = 'queued'",
            "targetQueryValue=5",
            "connection=demo",
        ],
    );
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
    let (code, out, err) = probe_meta(
        &addr,
        &[
            &format!("query={QUEUED}"),
            "targetQueryValue=1",
            "connection=jobs",
            "pollInterval=5s",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("metricValueFloat=4"), "{out}");
    // The file's min_poll_interval (5s) applies.
    let (code, _, err) = probe_meta(
        &addr,
        &[
            "query=select 1",
            "targetQueryValue=1",
            "connection=jobs",
            "pollInterval=1s",
        ],
    );
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

    // ORASCALE_CONNECTIONS: comma-separated NAME=URL pairs; a multi-host PostgreSQL URL's
    // commas stay in it.
    let other = TestDb::new();
    other.set_queued(9);
    let server = Binary::start_with_env(
        &[],
        dir.path(),
        &[(
            "ORASCALE_CONNECTIONS",
            &format!(
                "a={},ha=postgres://app@127.0.0.1:1,127.0.0.1:2/db?target_session_attrs=read-write,b={}",
                db.url(),
                other.url()
            ),
        )],
    );
    let log = server.log_text();
    assert!(
        log.contains("connection=ha")
            && log.contains("127.0.0.1:1,127.0.0.1:2/db?target_session_attrs=read-write"),
        "{log}"
    );
    let addr = server.grpc.to_string();
    for (conn, want) in [("a", "metricValueFloat=4"), ("b", "metricValueFloat=9")] {
        let (code, out, err) = probe_meta(
            &addr,
            &[
                &format!("query={QUEUED}"),
                "targetQueryValue=1",
                &format!("connection={conn}"),
            ],
        );
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(want), "{conn}: {out}");
    }
    let (code, _, err) = probe_meta(&addr, &["query=select 1", "targetQueryValue=1"]);
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

/// The lines `serve --demo` prints, by label: (watch, values, add work, drain).
fn walkthrough(log: &str) -> [String; 4] {
    ["watch:", "values:", "add work:", "drain:"].map(|label| {
        log.lines()
            .find_map(|l| l.strip_prefix("  ")?.strip_prefix(label))
            .unwrap_or_else(|| panic!("the demo prints {label:?}:\n{log}"))
            .trim()
            .to_string()
    })
}

/// Runs a printed command line with sh in `cwd`: (exit code, stdout, stderr).
fn sh(line: &str, cwd: &std::path::Path) -> (i32, String, String) {
    let out = Command::new("sh")
        .args(["-c", line])
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Stdout lines of a running child, as they come.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits up to `limit` for a line containing `fragment`; the lines seen on the way.
fn wait_line(rx: &std::sync::mpsc::Receiver<String>, fragment: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut seen = String::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(fragment);
                seen.push_str(&line);
                seen.push('\n');
                if hit {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {fragment:?} within {limit:?}:\n{seen}");
}

/// Issue 24: the demo's printed commands failed under `cargo run` (exit 127), `demo enqueue`
/// elsewhere made a second database, `values` had its own 10 s poller, and `drain` showed
/// nothing. Here each printed line runs as printed, from another directory, with the server
/// started by an absolute path and by a relative `target/debug/orascale` (as cargo runs it).
#[test]
fn the_demo_walkthrough_runs_as_printed_from_anywhere() {
    for relative in [false, true] {
        let home = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let mut server = if relative {
            let dir = home.path().join("target/debug");
            std::fs::create_dir_all(&dir).unwrap();
            std::os::unix::fs::symlink(bin(), dir.join("orascale")).unwrap();
            Binary::start_program("target/debug/orascale", &["--demo"], home.path())
        } else {
            Binary::start(&["--demo"], home.path())
        };
        let log = server.wait_log("  drain:", Duration::from_secs(10));
        let [watch, values, add, drain] = walkthrough(&log);
        assert_eq!(watch, format!("{values} --watch"), "one trigger for both");
        let db = home.path().join("orascale-demo.db");

        let (code, out, err) = sh(&add, elsewhere.path());
        assert_eq!(code, 0, "{add}: {out}{err}");
        assert_eq!(out.trim(), format!("12 queued jobs in {}", db.display()));
        assert!(
            std::fs::read_dir(elsewhere.path())
                .unwrap()
                .next()
                .is_none(),
            "no second database where the command ran"
        );

        let (code, out, err) = sh(&values, elsewhere.path());
        assert_eq!(code, 0, "{values}: {out}{err}");
        assert!(out.contains("GetMetrics: metricName="), "{out}");
        assert!(
            out.contains("Sample: polled ") && out.contains("pollInterval 2s"),
            "the value's age and the poll interval: {out}"
        );

        let mut watching = Command::new("sh")
            .args(["-c", &format!("exec {watch}")])
            .current_dir(elsewhere.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_of(&mut watching);
        wait_line(
            &lines,
            "StreamIsActive: result=true",
            Duration::from_secs(15),
        );
        wait_line(&lines, "IsActive: result=true", Duration::from_secs(15));
        let (code, out, err) = sh(&drain, elsewhere.path());
        assert_eq!(code, 0, "{drain}: {out}{err}");
        assert_eq!(out.trim(), format!("0 queued jobs in {}", db.display()));
        // The stream never sends false: the watch says so when IsActive turns false.
        let after = wait_line(&lines, "IsActive: result=false", Duration::from_secs(15));
        assert!(after.contains("never sends false"), "{after}");
        assert!(!after.contains("StreamIsActive: result=false"), "{after}");
        server.signal("TERM");
        wait_line(&lines, "StreamIsActive: ended OK", Duration::from_secs(10));
        assert_eq!(watching.wait().unwrap().code(), Some(0));
        assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    }
}

/// Runs the real binary in `cwd`: (exit code, stdout, stderr).
fn run_in(cwd: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .current_dir(cwd)
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

#[test]
fn demo_actions_never_create_the_database_and_check_demo_does() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orascale-demo.db");
    let (code, out, err) = run_in(dir.path(), &["demo", "enqueue", "3"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("orascale-demo.db") && err.contains("no demo database there"),
        "{err}"
    );
    assert!(err.contains("--db"), "says how to name it: {err}");
    assert!(!db.exists(), "no database made by a demo action");

    let (code, out, err) = run_in(dir.path(), &["check", "--demo"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(db.exists(), "check --demo creates it, as its help says");
    assert!(
        out.contains("demo") && out.contains("all connections OK"),
        "{out}"
    );
    let (code, out, err) = run_in(dir.path(), &["demo", "enqueue", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("3 queued jobs in"), "{out}");
}

#[test]
fn a_busy_port_is_reported_once_with_the_flag_and_exits_69() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    for (flag, other) in [
        ("--grpc-listen", "--metrics-listen"),
        ("--metrics-listen", "--grpc-listen"),
    ] {
        let (code, _, err) = run_bin(&[
            "serve",
            "--connection",
            "m=sqlite::memory:",
            flag,
            &addr,
            other,
            "127.0.0.1:0",
        ]);
        assert_eq!(code, 69, "{flag}: {err}");
        assert_eq!(
            err.matches("cannot listen").count(),
            1,
            "{flag}: printed once: {err}"
        );
        assert!(
            err.contains(&addr) && err.contains("in use") && err.contains(flag),
            "{flag}: {err}"
        );
    }
}

#[test]
fn probe_takes_kedas_spelling_and_shows_what_keda_and_the_hpa_do() {
    let db = TestDb::new();
    db.set_queued(6);
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(&["--connection", &format!("jobs={}", db.url())], dir.path());
    let addr = server.grpc.to_string();
    let probe = |query: &str, extra: &[&str]| {
        let mut args = vec![
            "probe",
            "--addr",
            &addr,
            "-m",
            query,
            "-m",
            "targetQueryValue=4",
        ];
        args.extend_from_slice(extra);
        run_bin(&args)
    };
    let queued = format!("query={QUEUED}");
    // 6 queued, 4 per replica; KEDA's spelling (as probe prints it), any case, and kebab.
    for (current, kind, want) in [
        (
            "1",
            "AverageValue",
            "metricType=AverageValue: desiredReplicas=2 (ceil(6 / 4))",
        ),
        ("1", "averagevalue", "desiredReplicas=2 (ceil(6 / 4))"),
        ("1", "average-value", "desiredReplicas=2 (ceil(6 / 4))"),
        (
            "3",
            "Value",
            "metricType=Value: desiredReplicas=5 (ceil(3 × 6 / 4))",
        ),
        ("3", "VALUE", "desiredReplicas=5"),
    ] {
        let (code, out, err) = probe(
            &queued,
            &["--current-replicas", current, "--metric-type", kind],
        );
        assert_eq!(code, 0, "{kind}: {err}");
        assert!(out.contains(want), "{kind}: {out}");
    }
    let (code, out, err) = probe(
        &queued,
        &["--current-replicas", "1", "--max-replica-count", "1"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("desiredReplicas=1") && out.contains("capped at maxReplicaCount = 1"),
        "{out}"
    );
    // Nothing queued, 4 replicas: the HPA's floor is 1; scaling to 0 is KEDA's, after cooldown.
    let idle = "query=select count(*) from jobs where status = 'none'";
    let (code, out, err) = probe(idle, &["--current-replicas", "4"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("IsActive: result=false"), "{out}");
    assert!(
        out.contains("desiredReplicas=1 (ceil(0 / 4) = 0, raised to max(minReplicaCount, 1) = 1")
            && out.contains("after cooldownPeriod KEDA scales the workload to 0"),
        "{out}"
    );
    assert!(!out.contains("desiredReplicas=0"), "{out}");
    let (code, out, err) = probe(
        idle,
        &["--current-replicas", "4", "--min-replica-count", "2"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("desiredReplicas=2") && out.contains("minReplicaCount=2 keeps it"),
        "{out}"
    );
    // The value's age and the poll interval (the server's default, 10s).
    assert!(
        out.contains("Sample: polled ") && out.contains("pollInterval 10s"),
        "{out}"
    );

    // Keys from elsewhere: hints in words.
    for (key, want) in [
        ("metricType=AverageValue", "a field of the trigger itself"),
        ("tlsCertFile=/certs/tls.crt", "removed in KEDA 2.17"),
    ] {
        let (code, _, err) = probe(&queued, &["-m", key]);
        assert_eq!(code, 1, "{key}");
        assert!(
            err.contains("InvalidArgument") && err.contains(want),
            "{key}: {err}"
        );
        assert!(!err.contains("did you mean nothing"), "{err}");
    }
    let (code, _, err) = probe(&queued, &["--metric-type", "Utilization"]);
    assert_eq!(code, 64, "{err}");
}
