//! StreamMetricSpec and targets read from the database (`targetQuery`), against the real binary
//! over gRPC: the spec at open, one message per real change of it and none while it holds
//! (counted over target polls, not waited for), never an empty list, GetMetricSpec equal to the
//! last streamed spec, the static `targetQueryValue` as the fallback while the target query
//! fails, and streams that end with OK on shutdown. PostgreSQL: a `notifyChannel` wake-up
//! brings a new target at once, and a stopped server is the fallback until it is back.
//!
//! Only GetMetricSpec and StreamMetricSpec are called here. They admit the trigger's own poller
//! before its target poller, but with a `pollInterval` of an hour that poller polls once, when
//! it is created: every later poll on the connection (`orascale_polls_total`) is a target poll.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use futures::FutureExt;
use orascale::grpc::proto::external_scaler_client::ExternalScalerClient;
use orascale::grpc::proto::{GetMetricSpecResponse, ScaledObjectRef};
use support::pg::Pg;
use support::*;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const LIMIT: Duration = Duration::from_secs(120);
const TARGET: &str = "select target from targets where name = 'jobs'";
/// Much longer than any wait here: a trigger poll would never land in a test's window.
const HOUR: &str = "1h";

/// A SQLite file with the DBA's target table, in rollback-journal mode, so that a test can
/// hold an exclusive lock that keeps the scaler's reads out.
fn targets_db(dir: &Path, target: Option<f64>) -> std::path::PathBuf {
    let path = dir.join("targets.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "create table jobs (id integer primary key, status text not null);
         create table targets (name text primary key, target real);",
    )
    .unwrap();
    set_target(&path, target);
    path
}

fn set_target(path: &Path, target: Option<f64>) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute(
        "insert into targets(name, target) values ('jobs', ?1)
         on conflict(name) do update set target = excluded.target",
        [target],
    )
    .unwrap();
}

fn serve(db: &Path, dir: &Path, extra: &[&str]) -> Binary {
    let url = format!("db=sqlite:{}", db.display());
    let mut args = vec!["--connection", &url, "--min-poll-interval", "100ms"];
    args.extend_from_slice(extra);
    Binary::start(&args, dir)
}

/// A server over a new targets database whose target is `target`, and a client of it. The
/// directory holds the database: keep it for the test's length.
async fn scene(
    target: f64,
    extra: &[&str],
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Binary,
    ExternalScalerClient<Channel>,
) {
    let dir = tempfile::tempdir().unwrap();
    let db = targets_db(dir.path(), Some(target));
    let server = serve(&db, dir.path(), extra);
    let c = client(server.grpc).await;
    (dir, db, server, c)
}

/// The tests' trigger: the keys below, each of `extra` replacing or adding one (an empty value
/// removes it).
fn trigger(name: &str, extra: &[(&str, &str)]) -> ScaledObjectRef {
    let mut meta = vec![
        ("query", QUEUED),
        ("targetQueryValue", "5"),
        ("metricName", "jobs-backlog"),
        ("pollInterval", HOUR),
        ("targetQuery", TARGET),
        // The default queryTimeout (5 s): a shorter one can expire on a loaded machine, and a
        // failed target poll is a (correct) fallback message these tests do not expect.
        ("targetPollInterval", "200ms"),
    ];
    for (k, v) in extra {
        meta.retain(|(key, _)| key != k);
        if !v.is_empty() {
            meta.push((k, v));
        }
    }
    object(name, &meta)
}

/// The one spec of a message: never empty, never more than one, our unprefixed name.
#[allow(deprecated)]
fn target_of(msg: &GetMetricSpecResponse) -> f64 {
    assert_eq!(msg.metric_specs.len(), 1, "exactly one spec: {msg:?}");
    let spec = &msg.metric_specs[0];
    assert_eq!(spec.metric_name, "jobs-backlog");
    assert_eq!(
        spec.target_size,
        (spec.target_size_float.round() as i64).max(1)
    );
    spec.target_size_float
}

/// GetMetricSpec's target and where it came from (asked for as `orascale probe` asks).
async fn spec_now(c: &mut ExternalScalerClient<Channel>, obj: &ScaledObjectRef) -> (f64, String) {
    let mut req = deadline(obj.clone());
    req.metadata_mut()
        .insert("orascale-freshness", "1".parse().unwrap());
    let r = c
        .get_metric_spec(req)
        .await
        .expect("GetMetricSpec never fails");
    let source = r
        .metadata()
        .get("orascale-target-source")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (target_of(r.get_ref()), source)
}

/// Calls GetMetricSpec until its target is `want`.
async fn wait_spec(c: &mut ExternalScalerClient<Channel>, obj: &ScaledObjectRef, want: f64) {
    let started = Instant::now();
    loop {
        let (t, _) = spec_now(c, obj).await;
        if t == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "GetMetricSpec still says {t}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// StreamMetricSpec opened for `obj`.
async fn open(
    c: &mut ExternalScalerClient<Channel>,
    obj: &ScaledObjectRef,
) -> Streaming<GetMetricSpecResponse> {
    c.stream_metric_spec(obj.clone())
        .await
        .expect("StreamMetricSpec opens")
        .into_inner()
}

/// The stream's next message, which must come within 10 s.
async fn next_target(stream: &mut Streaming<GetMetricSpecResponse>) -> f64 {
    let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
        .expect("the stream is healthy")
        .expect("the stream is open");
    target_of(&msg)
}

/// A message already waiting on the stream, if any (no waiting).
fn pending(stream: &mut Streaming<GetMetricSpecResponse>) -> Option<f64> {
    stream
        .message()
        .now_or_never()
        .map(|m| target_of(&m.unwrap().unwrap()))
}

async fn polls(server: &Binary) -> f64 {
    let text = scrape(server.metrics).await;
    metric_value(&text, "orascale_polls_total", &["connection=\"db\""]).unwrap_or(0.0)
}

/// Waits until the connection has completed `n` more polls than `from`.
async fn wait_polls(server: &Binary, from: f64, n: f64) {
    let started = Instant::now();
    while polls(server).await < from + n {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "fewer than {n} polls:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM, then every message left on the stream until it ends: it must end with OK.
async fn stop_and_drain(
    mut server: Binary,
    stream: &mut Streaming<GetMetricSpecResponse>,
) -> Vec<f64> {
    server.signal("TERM");
    let mut rest = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream ends within 10 s of SIGTERM")
        {
            Ok(Some(m)) => rest.push(target_of(&m)),
            Ok(None) => break,
            Err(status) => panic!("the stream ended with {status:?}, not OK"),
        }
    }
    let code = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    rest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_per_target_change_none_while_it_holds_and_the_static_fallback_on_failure() {
    guard(LIMIT, async {
        let (_dir, db, server, mut c) = scene(10.0, &[]).await;
        let obj = trigger("worker", &[]);

        // GetMetricSpec creates the target poller without waiting for it; once it has polled,
        // the queried target is served.
        wait_spec(&mut c, &obj, 10.0).await;
        assert_eq!(spec_now(&mut c, &obj).await.1, "query");

        // On open: the current spec at once.
        let mut stream = open(&mut c, &obj).await;
        assert_eq!(next_target(&mut stream).await, 10.0);

        // Unchanged for five target polls: not one message.
        let before = polls(&server).await;
        wait_polls(&server, before, 5.0).await;
        assert_eq!(
            pending(&mut stream),
            None,
            "no repeat while the target holds"
        );

        // A DBA changes the target: one message, and GetMetricSpec agrees with it.
        set_target(&db, Some(20.0));
        assert_eq!(next_target(&mut stream).await, 20.0);
        assert_eq!(spec_now(&mut c, &obj).await, (20.0, "query".into()));
        let before = polls(&server).await;
        wait_polls(&server, before, 5.0).await;
        assert_eq!(pending(&mut stream), None, "one message per change");

        // Not a target (0, then NULL): the static fallback, once.
        set_target(&db, Some(0.0));
        assert_eq!(next_target(&mut stream).await, 5.0);
        assert_eq!(spec_now(&mut c, &obj).await, (5.0, "fallback".into()));
        set_target(&db, None);
        let before = polls(&server).await;
        wait_polls(&server, before, 5.0).await;
        assert_eq!(pending(&mut stream), None, "NULL is the same fallback");

        // The target query fails (its table is gone): the fallback; back: the queried target.
        set_target(&db, Some(30.0));
        assert_eq!(next_target(&mut stream).await, 30.0);
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute("alter table targets rename to targets_gone", [])
            .unwrap();
        assert_eq!(next_target(&mut stream).await, 5.0);
        assert_eq!(spec_now(&mut c, &obj).await, (5.0, "fallback".into()));
        let before = polls(&server).await;
        wait_polls(&server, before, 5.0).await;
        assert_eq!(pending(&mut stream), None, "a failure streak is one change");
        conn.execute("alter table targets_gone rename to targets", [])
            .unwrap();
        assert_eq!(next_target(&mut stream).await, 30.0);
        assert_eq!(spec_now(&mut c, &obj).await, (30.0, "query".into()));

        // Every call was counted under its own method.
        let text = scrape(server.metrics).await;
        let opened = metric_value(
            &text,
            "orascale_grpc_requests_total",
            &["method=\"StreamMetricSpec\"", "code=\"OK\""],
        );
        assert_eq!(opened, Some(1.0), "{text}");

        // Shutdown ends the stream with OK, with nothing more sent.
        assert_eq!(stop_and_drain(server, &mut stream).await, Vec::<f64>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_on_a_new_server_sends_the_queried_target_once_never_the_fallback_first() {
    guard(LIMIT, async {
        let (_dir, _db, server, mut c) = scene(10.0, &[]).await;
        // As KEDA after a restart or a rollout: the stream opens first, on a server that has
        // no poller yet. Its open message waits for the new target poller's first poll.
        let obj = trigger("restarted", &[]);
        let mut stream = open(&mut c, &obj).await;
        assert_eq!(
            next_target(&mut stream).await,
            10.0,
            "the queried target at open"
        );
        let before = polls(&server).await;
        wait_polls(&server, before, 3.0).await;
        assert_eq!(
            pending(&mut stream),
            None,
            "exactly one message: no fallback first"
        );
        assert_eq!(spec_now(&mut c, &obj).await, (10.0, "query".into()));
        assert_eq!(stop_and_drain(server, &mut stream).await, Vec::<f64>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_pollers_never_take_the_slots_metric_pollers_need() {
    guard(LIMIT, async {
        let (_dir, _db, server, mut c) = scene(10.0, &["--max-pollers", "3"]).await;
        let a = trigger("a", &[]);
        let b = trigger(
            "b",
            &[
                ("query", "select count(*) from jobs where status = 'b'"),
                (
                    "targetQuery",
                    "select target + 1 from targets where name = 'jobs'",
                ),
            ],
        );
        // KEDA's first calls: GetMetricSpec for each trigger. A costs two pollers (its own and
        // its target poller); B's own is admitted, its target poller no longer fits: B's spec
        // is the static fallback, and says why.
        wait_spec(&mut c, &a, 10.0).await;
        let mut req = deadline(b.clone());
        req.metadata_mut()
            .insert("orascale-freshness", "1".parse().unwrap());
        let r = c
            .get_metric_spec(req)
            .await
            .expect("GetMetricSpec never fails");
        assert_eq!(target_of(r.get_ref()), 5.0);
        let reason = r.metadata().get("orascale-target-reason").unwrap();
        assert!(
            reason.to_str().unwrap().contains("--max-pollers 3"),
            "{reason:?}"
        );
        // Then GetMetrics for both: their pollers were admitted first, so both answer.
        for obj in [&a, &b] {
            let v = c
                .get_metrics(deadline(metrics_request(obj, "jobs-backlog")))
                .await
                .unwrap_or_else(|e| panic!("{}: {e:?}", obj.name));
            assert_eq!(value(v), 0.0);
        }
        // StreamMetricSpec at the limit: the static spec, as GetMetricSpec, never an error.
        let mut stream = open(&mut c, &b).await;
        assert_eq!(next_target(&mut stream).await, 5.0);
        let text = scrape(server.metrics).await;
        assert_eq!(
            metric_value(&text, "orascale_pollers", &[]),
            Some(3.0),
            "{text}"
        );
        assert_eq!(stop_and_drain(server, &mut stream).await, Vec::<f64>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_poller_without_an_outcome_within_the_first_result_wait_opens_on_the_fallback() {
    guard(LIMIT, async {
        let (_dir, db, server, mut c) = scene(12.0, &[]).await;
        // An exclusive lock keeps every read out: the target poller cannot have a value when
        // the stream opens, whatever the machine's speed.
        let lock = rusqlite::Connection::open(&db).unwrap();
        lock.execute_batch("begin exclusive").unwrap();
        let obj = trigger("early", &[]);
        let mut stream = open(&mut c, &obj).await;
        // The open waits for the first poll's outcome no longer than the first-result wait.
        assert_eq!(
            next_target(&mut stream).await,
            5.0,
            "the static spec, at the latest after the first-result wait"
        );
        assert_eq!(spec_now(&mut c, &obj).await, (5.0, "fallback".into()));
        lock.execute_batch("commit").unwrap();
        assert_eq!(next_target(&mut stream).await, 12.0, "then the queried one");
        assert_eq!(spec_now(&mut c, &obj).await, (12.0, "query".into()));
        assert_eq!(stop_and_drain(server, &mut stream).await, Vec::<f64>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_target_query_the_static_spec_is_sent_once_and_nothing_more() {
    guard(LIMIT, async {
        let (_dir, _db, server, mut c) = scene(12.0, &["--max-streams", "2"]).await;
        let obj = trigger(
            "plain",
            &[
                ("targetQuery", ""),
                ("targetPollInterval", ""),
                ("pollInterval", "200ms"),
            ],
        );
        let mut stream = open(&mut c, &obj).await;
        assert_eq!(next_target(&mut stream).await, 5.0);
        assert_eq!(spec_now(&mut c, &obj).await, (5.0, "static".into()));

        // The stream holds a place under --max-streams like StreamIsActive's.
        let _active = c.stream_is_active(obj.clone()).await.unwrap().into_inner();
        let refused = c.stream_metric_spec(obj.clone()).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("--max-streams"), "{refused:?}");

        // Bad metadata: INVALID_ARGUMENT naming the key, like the other RPCs.
        let bad = trigger("bad", &[("targetQueryValue", "")]);
        let err = c.stream_metric_spec(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("\"targetQueryValue\" is required"),
            "{err:?}"
        );
        let bad = trigger("bad", &[("targetPollInterval", "10")]);
        let err = c.stream_metric_spec(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("\"targetPollInterval\""), "{err:?}");

        // Up to shutdown, not one message more: the stream ends with OK.
        assert_eq!(stop_and_drain(server, &mut stream).await, Vec::<f64>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_target_queries_share_one_poller_and_every_stream_gets_each_change() {
    guard(LIMIT, async {
        let (_dir, db, server, mut c) = scene(10.0, &[]).await;
        let a = trigger("a", &[]);
        let b = trigger("b", &[("targetQueryValue", "7")]);
        wait_spec(&mut c, &a, 10.0).await;
        let mut sa = open(&mut c, &a).await;
        let mut sb = open(&mut c, &b).await;
        assert_eq!(next_target(&mut sa).await, 10.0);
        assert_eq!(next_target(&mut sb).await, 10.0);
        let text = scrape(server.metrics).await;
        // One poller for both triggers' identical queries, one for their target query.
        assert_eq!(
            metric_value(&text, "orascale_pollers", &[]),
            Some(2.0),
            "{text}"
        );
        set_target(&db, Some(40.0));
        assert_eq!(next_target(&mut sa).await, 40.0);
        assert_eq!(next_target(&mut sb).await, 40.0);
        // Each trigger keeps its own fallback.
        set_target(&db, None);
        assert_eq!(next_target(&mut sa).await, 5.0);
        assert_eq!(next_target(&mut sb).await, 7.0);
    })
    .await;
}

/// The target table on PostgreSQL, readable by the scaler, with a trigger that notifies
/// `targets_changed` on every change (the user's side of wake-ups, as in docs/wakeups.md).
async fn pg_targets(admin: &tokio_postgres::Client, target: f64) {
    admin
        .batch_execute(&format!(
            "create table targets (name text primary key, target numeric);
             insert into targets values ('jobs', {target});
             grant select on targets to scaler;
             create function targets_notify() returns trigger language plpgsql as $$
             begin perform pg_notify('targets_changed', ''); return null; end $$;
             create trigger targets_notify after insert or update or delete on targets
               for each statement execute function targets_notify();"
        ))
        .await
        .expect("targets table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_notify_brings_the_new_target_at_once_and_an_outage_is_the_fallback() {
    let Some(pg) = Pg::start_or_skip(
        "postgres_a_notify_brings_the_new_target_at_once_and_an_outage_is_the_fallback",
    ) else {
        return;
    };
    guard(Duration::from_secs(240), async {
        let admin = pg.setup().await;
        pg_targets(&admin, 10.0).await;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("pg={}", pg.scaler_url());
        let server = Binary::start(
            &["--connection", &url, "--min-poll-interval", "100ms"],
            dir.path(),
        );
        let mut c = client(server.grpc).await;
        let obj = trigger(
            "pg-worker",
            &[
                ("connection", "pg"),
                ("targetPollInterval", HOUR),
                ("notifyChannel", "targets_changed"),
            ],
        );
        wait_spec(&mut c, &obj, 10.0).await;
        let mut stream = open(&mut c, &obj).await;
        assert_eq!(next_target(&mut stream).await, 10.0);

        // With a 1 h targetPollInterval only the notification can bring the new target.
        let started = Instant::now();
        admin
            .batch_execute("update targets set target = 25 where name = 'jobs'")
            .await
            .unwrap();
        assert_eq!(next_target(&mut stream).await, 25.0);
        eprintln!("commit → new target on the stream: {:?}", started.elapsed());
        assert_eq!(spec_now(&mut c, &obj).await, (25.0, "query".into()));

        // PostgreSQL stops: the next target poll fails, the spec falls back; it comes back:
        // the queried target again. A short interval here, so the polls come without wakes.
        let obj = trigger("pg-outage", &[("connection", "pg")]);
        wait_spec(&mut c, &obj, 25.0).await;
        let mut outage = open(&mut c, &obj).await;
        assert_eq!(next_target(&mut outage).await, 25.0);
        drop(admin);
        pg.stop();
        assert_eq!(next_target(&mut outage).await, 5.0, "the static fallback");
        let (t, source) = spec_now(&mut c, &obj).await;
        assert_eq!(
            (t, source.as_str()),
            (5.0, "fallback"),
            "GetMetricSpec still answers"
        );
        pg.start();
        assert_eq!(
            next_target(&mut outage).await,
            25.0,
            "the queried target again"
        );
    })
    .await;
}

#[test]
fn probe_shows_where_the_target_came_from_and_watches_the_spec_stream() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let db = targets_db(dir.path(), Some(10.0));
    let server = serve(&db, dir.path(), &[]);
    let addr = server.grpc.to_string();
    let meta = [
        format!("query={QUEUED}"),
        "targetQueryValue=5".into(),
        "metricName=jobs-backlog".into(),
        format!("targetQuery={TARGET}"),
        "targetPollInterval=200ms".into(),
    ];
    let mut args = vec!["probe".to_string(), "--addr".into(), addr.clone()];
    for m in &meta {
        args.extend(["-m".to_string(), m.clone()]);
    }
    // The first call creates the target poller: until its first poll the static fallback.
    let started = Instant::now();
    let out = loop {
        let (code, out, err) = run_bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 0, "{out}{err}");
        if out.contains("targetSizeFloat=10") {
            break out;
        }
        assert!(
            out.contains("Target: static targetQueryValue, the fallback"),
            "{out}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{out}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(out.contains("Target: from targetQuery, polled "), "{out}");
    assert!(out.contains("s ago"), "{out}");
    // Without a target query: static.
    let (code, out, _) = run_bin(&[
        "probe",
        "--addr",
        &addr,
        "-m",
        &format!("query={QUEUED}"),
        "-m",
        "targetQueryValue=3",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Target: static targetQueryValue (no targetQuery)"),
        "{out}"
    );

    // --watch and --watch-spec cannot be combined (one would be silently ignored).
    let mut both = args.iter().map(String::as_str).collect::<Vec<_>>();
    both.extend(["--watch", "--watch-spec"]);
    let (code, _, err) = run_bin(&both);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("'--watch' cannot be used with '--watch-spec'"),
        "{err}"
    );

    // --watch-spec: the spec at open, one line per change, "ended OK" at shutdown.
    args.push("--watch-spec".into());
    let mut child = std::process::Command::new(bin())
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_spec = || loop {
        let line = lines.next().expect("a line").unwrap();
        if line.contains("StreamMetricSpec: metricName") || line.contains("ended OK") {
            return line;
        }
    };
    let first = next_spec();
    assert!(first.contains("targetSizeFloat=10"), "{first}");
    assert!(
        first.starts_with("20") && first.as_bytes()[10] == b'T',
        "{first}"
    );
    set_target(&db, Some(15.0));
    let changed = next_spec();
    assert!(
        changed.contains("metricName=jobs-backlog targetSize=15 targetSizeFloat=15"),
        "{changed}"
    );
    server.signal("TERM");
    let end = next_spec();
    assert!(end.contains("StreamMetricSpec: ended OK"), "{end}");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
