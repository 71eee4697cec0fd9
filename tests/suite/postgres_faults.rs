//! Fault tolerance proven against a real PostgreSQL server that the tests stop, restart, slow
//! down and kill. Each test asserts what KEDA would see.

use crate::support;

use std::time::{Duration, Instant};

use orascale::grpc::proto::ScaledObjectRef;
use orascale::grpc::proto::external_scaler_client::ExternalScalerClient;
use support::pg::{self, Pg};
use support::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(180);

async fn polls(addr: std::net::SocketAddr, connection: &str, result: &str) -> f64 {
    let text = scrape(addr).await;
    metric_value(
        &text,
        "orascale_polls_total",
        &[
            &format!("connection=\"{connection}\""),
            &format!("result=\"{result}\""),
        ],
    )
    .unwrap_or(0.0)
}

/// GetMetrics answers `last` (never 0) until it answers an error, which it returns; that
/// happens within 6 s of `since` (the staleness limit of 3 × 1 s polls, and margin), and
/// GetMetricSpec succeeds throughout.
async fn last_value_until_unavailable(
    c: &mut ExternalScalerClient<tonic::transport::Channel>,
    obj: &ScaledObjectRef,
    last: f64,
    since: Instant,
) -> tonic::Status {
    loop {
        assert!(
            c.get_metric_spec(deadline(obj.clone())).await.is_ok(),
            "GetMetricSpec never fails"
        );
        match c.get_metrics(deadline(metrics_request(obj, ""))).await {
            Ok(r) => {
                assert_eq!(value(r), last, "the last good value, never 0");
                assert!(
                    since.elapsed() < Duration::from_secs(6),
                    "served {:?} past the staleness limit",
                    since.elapsed()
                );
            }
            Err(s) => break s,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server on `conn`, and its trigger `name` counting `jobs` every second (with `extra`
/// metadata): GetMetrics answers `want`, and a StreamIsActive opened on it says `true` first.
async fn watched(
    conn: orascale::config::ConnectionConfig,
    e: orascale::config::EngineConfig,
    name: &str,
    extra: &[(&str, &str)],
    want: f64,
) -> (
    orascale::app::Running,
    ExternalScalerClient<tonic::transport::Channel>,
    ScaledObjectRef,
    tonic::Streaming<orascale::grpc::proto::IsActiveResponse>,
) {
    let server = start(vec![conn], e).await;
    let mut c = client(server.grpc_addr).await;
    let mut meta = vec![
        ("query", "select count(*) from jobs"),
        ("targetQueryValue", "1"),
        ("pollInterval", "1s"),
    ];
    meta.extend_from_slice(extra);
    let obj = object(name, &meta);
    let got = c.get_metrics(deadline(metrics_request(&obj, ""))).await;
    assert_eq!(value(got.unwrap()), want);
    let mut stream = c.stream_is_active(obj.clone()).await.unwrap().into_inner();
    assert!(
        stream.message().await.unwrap().unwrap().result,
        "active at open"
    );
    (server, c, obj, stream)
}

/// 1 and 2: the server stops, then comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_then_restarted() {
    let Some(pg) = Pg::start_or_skip("server_stopped_then_restarted") else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        pg::set_queued(&admin, 5).await;
        drop(admin);
        let mut e = engine();
        e.stale_after_polls = 3;
        let (server, mut c, obj, mut stream) =
            watched(connection("pgstop", &pg.scaler_url()), e, "w", &[], 5.0).await;

        pg.stop();
        let stopped = Instant::now();
        // 1. While the last good value is younger than 3 × 1 s it is served; then UNAVAILABLE
        // with the database error; never 0; GetMetricSpec keeps succeeding.
        let unavailable = last_value_until_unavailable(&mut c, &obj, 5.0, stopped).await;
        assert_eq!(unavailable.code(), Code::Unavailable);
        assert!(
            stopped.elapsed() >= Duration::from_secs(2),
            "stale value was served for a while"
        );
        assert!(
            unavailable.message().contains("connection \"pgstop\""),
            "{}",
            unavailable.message()
        );
        assert!(
            unavailable.message().contains("cannot connect")
                || unavailable.message().contains("closed"),
            "carries the database error: {}",
            unavailable.message()
        );
        assert!(!unavailable.message().contains(pg::SCALER_PASSWORD));
        let e = c.is_active(deadline(obj.clone())).await.unwrap_err();
        assert_eq!(
            e.code(),
            Code::Unavailable,
            "never false in place of an error"
        );
        // The stream stays open and sends nothing (never false) during the outage.
        match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
            Err(_) => {}
            Ok(m) => panic!("the stream must stay silent and open during the outage, got {m:?}"),
        }

        // 2. Restart: values are served again within one poll interval, no orascale restart.
        pg.start();
        let restarted = Instant::now();
        loop {
            if let Ok(r) = c.get_metrics(deadline(metrics_request(&obj, ""))).await {
                assert_eq!(value(r), 5.0);
                break;
            }
            assert!(
                restarted.elapsed() < Duration::from_secs(10),
                "recovers after the restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = restarted.elapsed();
        // One 1 s poll interval plus scheduling slack.
        assert!(
            took < Duration::from_millis(2500),
            "recovered after {took:?}"
        );
        // The stream, still open, pushes true again: the value is active.
        let m = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(m.result);
        server.stop().await;
    })
    .await;
}

/// 3. A slow query is cut by queryTimeout and cancelled on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_query_is_cancelled_on_the_server_and_delays_nobody() {
    let Some(pg) = Pg::start_or_skip("slow_query_is_cancelled_on_the_server_and_delays_nobody")
    else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        pg::set_queued(&admin, 2).await;
        let server = start(vec![connection("pgslow", &pg.scaler_url())], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let slow = object("slow", &[("query", "select count(*) from (select pg_sleep(30)) s"), ("targetQueryValue", "1"),
            ("pollInterval", "1s"), ("queryTimeout", "500ms")]);
        let fast = object("fast", &[("query", "select count(*) from jobs"), ("targetQueryValue", "1"), ("pollInterval", "1s")]);
        let err = c.get_metrics(deadline(metrics_request(&slow, ""))).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("timed out after 500ms"), "{}", err.message());
        assert_eq!(value(c.get_metrics(deadline(metrics_request(&fast, ""))).await.unwrap()), 2.0);

        let timeouts_before = polls(server.metrics_addr, "pgslow", "timeout").await;
        let ok_before = polls(server.metrics_addr, "pgslow", "ok").await;
        let window = Instant::now();
        let mut oldest_sleep = 0.0f64;
        while window.elapsed() < Duration::from_secs(5) {
            // No pg_sleep ever runs much longer than the 500 ms timeout: each is cancelled.
            let age: Option<f64> = admin
                .query_one(
                    "select max(extract(epoch from now() - query_start))::float8 from pg_stat_activity \
                     where usename = $1 and state = 'active' and query like '%pg_sleep%'",
                    &[&pg::SCALER_USER],
                )
                .await
                .unwrap()
                .get(0);
            oldest_sleep = oldest_sleep.max(age.unwrap_or(0.0));
            // The other poller's ScaledObject answers at once, with its fresh value.
            let t = Instant::now();
            assert_eq!(value(c.get_metrics(deadline(metrics_request(&fast, ""))).await.unwrap()), 2.0);
            assert!(t.elapsed() < Duration::from_secs(1), "GetMetrics waited {:?}", t.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(oldest_sleep < 1.5, "a timed-out query lived {oldest_sleep:.2}s on the server");
        let timeouts = polls(server.metrics_addr, "pgslow", "timeout").await - timeouts_before;
        let oks = polls(server.metrics_addr, "pgslow", "ok").await - ok_before;
        // Both pollers keep their 1 s schedule over 5 s.
        assert!((3.0..=7.0).contains(&timeouts), "slow poller ran {timeouts} times in 5 s");
        assert!((3.0..=7.0).contains(&oks), "fast poller ran {oks} times in 5 s");
        // Stop the slow poller's successors and check nothing is left running: the last
        // pg_sleep(30) is cancelled within a few seconds however busy the machine, not left to
        // run out its 30 s.
        server.stop().await;
        let stopped = Instant::now();
        loop {
            let left = pg::scaler_sessions(&admin).await;
            if !left.iter().any(|(state, q)| state == "active" && q.contains("pg_sleep")) {
                break;
            }
            assert!(stopped.elapsed() < Duration::from_secs(5), "{left:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// 3b. A query that hangs (here: waiting for a lock another session holds) keeps the last
/// value only for the staleness limit, as a failed one does: then UNAVAILABLE, saying the query
/// is still running, never the old value as if fresh; when the lock goes, the new value at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_query_does_not_keep_an_old_value_fresh() {
    let Some(pg) = Pg::start_or_skip("a_hung_query_does_not_keep_an_old_value_fresh") else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        pg::set_queued(&admin, 4).await;
        let mut e = engine();
        e.stale_after_polls = 3;
        e.stream_resend_interval = Duration::from_secs(1);
        let (server, mut c, obj, mut stream) = watched(
            connection("pghung", &pg.scaler_url()),
            e,
            "hung",
            &[("queryTimeout", "2m")],
            4.0,
        )
        .await;
        admin
            .batch_execute("begin; lock table jobs in access exclusive mode")
            .await
            .unwrap();
        let locked = Instant::now();
        let err = last_value_until_unavailable(&mut c, &obj, 4.0, locked).await;
        assert!(
            locked.elapsed() >= Duration::from_secs(2),
            "{:?}",
            locked.elapsed()
        );
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("still running"), "{}", err.message());
        let active = c.is_active(deadline(obj.clone())).await.unwrap_err();
        assert_eq!(active.code(), Code::Unavailable, "{}", active.message());
        // The stream's re-sends stop while the value is stale (what was sent before is read
        // here, then a quiet second).
        while tokio::time::timeout(Duration::from_millis(1500), stream.message())
            .await
            .is_ok()
        {}
        // The lock goes with the value unchanged: the waiting query returns it, it is served,
        // and the stream sends `true` again (the same value is news after a stale spell).
        admin.batch_execute("rollback").await.unwrap();
        let back = Instant::now();
        loop {
            if let Ok(r) = c.get_metrics(deadline(metrics_request(&obj, ""))).await {
                assert_eq!(value(r), 4.0);
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(10),
                "no value after the lock went"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let again = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream speaks again after the hang")
            .unwrap()
            .unwrap();
        assert!(again.result);
        server.stop().await;
    })
    .await;
}

/// 3c. One namespace's slow queries hold at most its share of the pool (half of 4 sessions by
/// default): another namespace's trigger on the same connection keeps its sessions and its
/// answers, and the slow namespace is told that its own polls hold its share (without naming
/// it: the error may reach another namespace's identical trigger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_namespaces_slow_queries_leave_the_others_their_sessions() {
    let Some(pg) = Pg::start_or_skip("one_namespaces_slow_queries_leave_the_others_their_sessions")
    else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        pg::set_queued(&admin, 3).await;
        let conn = connection("pgshared", &pg.scaler_url());
        assert_eq!(conn.pool_size, 4);
        // (With `namespace_pool_share = 100` "calm" fails within 3 s: its polls wait for a
        // session the slow queries hold.)
        let server = start(vec![conn], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let in_ns = |ns: &str, name: &str, meta: &[(&str, &str)]| {
            let mut o = object(name, meta);
            o.namespace = ns.to_string();
            o
        };
        let calm = in_ns(
            "calm",
            "steady",
            &[
                ("query", "select count(*) from jobs"),
                ("targetQueryValue", "1"),
                ("pollInterval", "1s"),
            ],
        );
        // Two namespaces use the connection from here on: "calm" is answered.
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&calm, "")))
                    .await
                    .unwrap()
            ),
            3.0
        );
        // Six slow triggers in "greedy": more than the whole pool if nothing held them back.
        let greedy: Vec<_> = (0..6)
            .map(|i| {
                let q = format!("select count(*) from (select pg_sleep(20), {i}) s");
                in_ns(
                    "greedy",
                    &format!("slow-{i}"),
                    &[
                        ("query", &q),
                        ("targetQueryValue", "1"),
                        ("pollInterval", "1s"),
                        ("queryTimeout", "3s"),
                    ],
                )
            })
            .collect();
        futures::future::join_all(greedy.iter().map(|o| {
            let mut c = c.clone();
            async move { c.get_metrics(deadline(metrics_request(o, ""))).await }
        }))
        .await;
        let window = Instant::now();
        let mut most_sleeping = 0;
        let mut told = None;
        while window.elapsed() < Duration::from_secs(8) {
            // "calm" is served every time, its value fresh: its polls find their sessions.
            let r = c.get_metrics(deadline(metrics_request(&calm, ""))).await;
            assert_eq!(value(r.unwrap_or_else(|s| panic!("calm: {s:?}"))), 3.0);
            let sleeping = pg::scaler_sessions(&admin)
                .await
                .iter()
                .filter(|(state, q)| state == "active" && q.contains("pg_sleep"))
                .count();
            most_sleeping = most_sleeping.max(sleeping);
            for o in &greedy {
                if let Err(s) = c.get_metrics(deadline(metrics_request(o, ""))).await
                    && s.message().contains("--namespace-pool-share")
                {
                    told = Some(s.message().to_string());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            most_sleeping <= 2,
            "greedy held {most_sleeping} of the 4 sessions"
        );
        assert!(most_sleeping >= 1, "the slow queries ran");
        let told = told.expect("greedy's waits say why");
        assert!(!told.contains("greedy"), "{told}");
        assert!(
            told.contains("--namespace-pool-share 50%") && told.contains("2 sessions"),
            "{told}"
        );
        assert!(polls(server.metrics_addr, "pgshared", "pool_timeout").await >= 1.0);
        server.stop().await;
    })
    .await;
}

/// 4. A terminated backend costs one failed poll at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connection_costs_at_most_one_failed_poll() {
    let Some(pg) = Pg::start_or_skip("killed_connection_costs_at_most_one_failed_poll") else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        pg::set_queued(&admin, 3).await;
        let server = start(vec![connection("pgkill", &pg.scaler_url())], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let obj = object("k", &[("query", "select count(*) from jobs"), ("targetQueryValue", "1"), ("pollInterval", "200ms")]);
        assert_eq!(value(c.get_metrics(deadline(metrics_request(&obj, ""))).await.unwrap()), 3.0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        for round in 0..3 {
            let errors_before = polls(server.metrics_addr, "pgkill", "error").await;
            let ok_before = polls(server.metrics_addr, "pgkill", "ok").await;
            let killed: i64 = admin
                .query_one(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity where usename = $1",
                    &[&pg::SCALER_USER],
                )
                .await
                .unwrap()
                .get(0);
            assert!(killed >= 1, "round {round}: a session to kill");
            tokio::time::sleep(Duration::from_secs(2)).await;
            let errors = polls(server.metrics_addr, "pgkill", "error").await - errors_before;
            let oks = polls(server.metrics_addr, "pgkill", "ok").await - ok_before;
            assert!(errors <= 1.0, "round {round}: {errors} failed polls");
            assert!(oks >= 5.0, "round {round}: recovered ({oks} good polls in 2 s)");
            assert_eq!(value(c.get_metrics(deadline(metrics_request(&obj, ""))).await.unwrap()), 3.0);
        }
        server.stop().await;
    })
    .await;
}

/// 5. More slow pollers than pool slots: waiting is bounded, nobody's answers block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_exhaustion_queues_with_a_bound_and_blocks_no_answer() {
    let Some(pg) = Pg::start_or_skip("pool_exhaustion_queues_with_a_bound_and_blocks_no_answer")
    else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        pg::set_queued(&admin, 1).await;
        let mut conn = connection("pgpool", &pg.scaler_url());
        conn.pool_size = 2;
        let server = start(vec![conn], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let objects: Vec<_> = (0..6)
            .map(|i| {
                let q = format!("select count(*) from (select pg_sleep(1.5), {i}) s");
                object(
                    &format!("slow-{i}"),
                    &[
                        ("query", &q),
                        ("targetQueryValue", "1"),
                        ("pollInterval", "1s"),
                        ("queryTimeout", "2s"),
                    ],
                )
            })
            .collect();
        // Create the six pollers; only calls in a poller's first 2 s may wait for its result.
        let first = objects.iter().map(|o| {
            let mut c = c.clone();
            let o = o.clone();
            async move { c.get_metrics(deadline(metrics_request(&o, ""))).await }
        });
        futures::future::join_all(first).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let window = Instant::now();
        let mut max_sessions = 0;
        let mut answered = 0;
        while window.elapsed() < Duration::from_secs(8) {
            for obj in &objects {
                let t = Instant::now();
                // KEDA's 3 s deadline: an answer (value or UNAVAILABLE), never a hang.
                match c.get_metrics(deadline(metrics_request(obj, ""))).await {
                    Ok(r) => assert_eq!(value(r), 1.0),
                    Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
                }
                match c.is_active(deadline(obj.clone())).await {
                    Ok(r) => assert!(r.into_inner().result),
                    Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
                }
                assert!(
                    t.elapsed() < Duration::from_secs(1),
                    "an answer took {:?}",
                    t.elapsed()
                );
                answered += 1;
            }
            max_sessions = max_sessions.max(pg::scaler_sessions(&admin).await.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(answered > 30);
        assert!(
            max_sessions <= 2,
            "the pool bounds sessions: saw {max_sessions}"
        );
        let waits = polls(server.metrics_addr, "pgpool", "pool_timeout").await;
        assert!(
            waits >= 3.0,
            "waiting for a slot times out as an error ({waits})"
        );
        let text = scrape(server.metrics_addr).await;
        assert!(text.contains("connection=\"pgpool\""));
        // The error says why.
        let mut saw_pool_message = false;
        for obj in &objects {
            if let Err(s) = c.get_metrics(deadline(metrics_request(obj, ""))).await
                && s.message().contains("free database session")
            {
                saw_pool_message = true;
            }
        }
        assert!(
            saw_pool_message,
            "time lost waiting for the pool is reported as such"
        );
        server.stop().await;
    })
    .await;
}

/// 6. Bad SQL is that ScaledObject's error only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sql_fails_only_its_own_scaled_object() {
    let Some(pg) = Pg::start_or_skip("bad_sql_fails_only_its_own_scaled_object") else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        pg::set_queued(&admin, 4).await;
        let server = start(vec![connection("pgbad", &pg.scaler_url())], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let good = object(
            "good",
            &[
                ("query", "select count(*) from jobs"),
                ("targetQueryValue", "1"),
                ("pollInterval", "1s"),
            ],
        );
        let mut stream = c.stream_is_active(good.clone()).await.unwrap().into_inner();
        let cases = [
            ("select count(* from jobs", "42601", "syntax error"),
            (
                "select count(*) from missing_table",
                "42P01",
                "does not exist",
            ),
            ("select count(*) from secrets", "42501", "permission denied"),
            ("select 1/0", "22012", "division by zero"),
        ];
        for (q, code, text) in cases {
            let obj = object("bad", &[("query", q), ("targetQueryValue", "1")]);
            assert!(c.get_metric_spec(deadline(obj.clone())).await.is_ok());
            let e = c
                .get_metrics(deadline(metrics_request(&obj, "")))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::Unavailable, "{q}");
            for frag in [code, text, q] {
                assert!(
                    e.message().contains(frag),
                    "{q}: {:?} lacks {frag:?}",
                    e.message()
                );
            }
            assert_eq!(
                value(
                    c.get_metrics(deadline(metrics_request(&good, "")))
                        .await
                        .unwrap()
                ),
                4.0
            );
        }
        assert!(
            stream.message().await.unwrap().unwrap().result,
            "the good stream got its true"
        );
        let n: i64 = admin
            .query_one("select count(*) from jobs", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 4);
        server.stop().await;
    })
    .await;
}

/// The error polls of a connection so far.
async fn errors(addr: std::net::SocketAddr, connection: &str) -> f64 {
    polls(addr, connection, "error").await
}

/// Calls GetMetrics until it answers `want` (errors included, they are what a stale session
/// gives); panics with the last answer after `limit`.
async fn until_value(
    c: &mut orascale::grpc::proto::external_scaler_client::ExternalScalerClient<
        tonic::transport::Channel,
    >,
    obj: &orascale::grpc::proto::ScaledObjectRef,
    want: f64,
    limit: Duration,
) {
    let started = Instant::now();
    loop {
        let got = c.get_metrics(deadline(metrics_request(obj, ""))).await;
        if matches!(&got, Ok(r) if r.get_ref().metric_values[0].metric_value_float == want) {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{:?} never answered {want} within {limit:?}; last answer: {got:?}",
            obj.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 7. Cached prepared statements that the server invalidated heal on the same poll: a column's
/// type changed under a live poller ("cached plan must not change result type", 0A000), and
/// the session's statements deallocated behind its back (what a pooler's `DISCARD ALL` does,
/// 26000). One pooled session, so every poll reuses the stale statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_prepared_statements_are_prepared_again() {
    let Some(pg) = Pg::start_or_skip("stale_prepared_statements_are_prepared_again") else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        admin
            .batch_execute(&format!(
                "create table sizes (n integer); insert into sizes values (1);
                 grant select on sizes to {scaler};
                 -- What DISCARD ALL in a pooler does to the session's prepared statements,
                 -- run from inside that session by a trigger's query.
                 create function forget_statements() returns integer language plpgsql as $$
                 begin execute 'deallocate all'; return 1; end $$;",
                scaler = pg::SCALER_USER
            ))
            .await
            .unwrap();
        let mut conn = connection("pgstale", &pg.scaler_url());
        conn.pool_size = 1;
        let server = start(vec![conn], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let sizes = object(
            "sizes",
            &[
                ("query", "select max(n) from sizes"),
                ("targetQueryValue", "1"),
                ("pollInterval", "200ms"),
            ],
        );
        until_value(&mut c, &sizes, 1.0, Duration::from_secs(10)).await;
        // A few polls on the cached statement before the change.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = errors(server.metrics_addr, "pgstale").await;

        // integer → numeric changes the statement's result type.
        admin
            .batch_execute(
                "alter table sizes alter column n type numeric; update sizes set n = 2.5;",
            )
            .await
            .unwrap();
        until_value(&mut c, &sizes, 2.5, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        until_value(&mut c, &sizes, 2.5, Duration::from_secs(1)).await;
        assert_eq!(
            errors(server.metrics_addr, "pgstale").await - before,
            0.0,
            "the stale plan healed within its poll"
        );

        // Another trigger on the same (only) session deallocates every prepared statement on
        // each of its polls: both keep answering, each poll re-preparing what it lost.
        let forget = object(
            "forget",
            &[
                ("query", "select forget_statements()"),
                ("targetQueryValue", "1"),
                ("pollInterval", "200ms"),
            ],
        );
        until_value(&mut c, &forget, 1.0, Duration::from_secs(10)).await;
        admin
            .batch_execute("update sizes set n = 7;")
            .await
            .unwrap();
        until_value(&mut c, &sizes, 7.0, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        until_value(&mut c, &sizes, 7.0, Duration::from_secs(1)).await;
        until_value(&mut c, &forget, 1.0, Duration::from_secs(1)).await;
        assert_eq!(
            errors(server.metrics_addr, "pgstale").await - before,
            0.0,
            "statements deallocated behind the session's back are prepared again"
        );
        let log = pg.log();
        assert!(
            log.contains("cached plan must not change result type"),
            "the server did invalidate the plan"
        );
        assert!(
            log.lines()
                .any(|l| l.contains("prepared statement \"s") && l.contains("does not exist")),
            "the server did forget the statements"
        );
        server.stop().await;
    })
    .await;
}
