//! Fair shares between wake-ups and polling (issue 20), against a real PostgreSQL server and
//! the real binary: polls come first for connection slots (a role limited to one or two
//! connections still answers every GetMetrics, the listener takes only a slot the pool does not
//! need), a poll that waited for a session says so, and a busy notification channel never
//! starves the interval polls of unrelated triggers.

use crate::support;

use std::time::{Duration, Instant};

use orascale::grpc::proto::ScaledObjectRef;
use orascale::grpc::proto::external_scaler_client::ExternalScalerClient;
use support::pg::{self, Pg};
use support::*;
use tokio_postgres::Client;
use tonic::transport::Channel;

const LIMIT: Duration = Duration::from_secs(240);

/// The test's database (the scaler role limited to `limit` connections, `jobs` and its notify
/// trigger) and orascale serving it as connection `pg` with `pool_size`, after `extra`
/// top-level TOML lines.
async fn serve(
    pg: &Pg,
    limit: Option<u32>,
    pool_size: usize,
    extra: &str,
) -> (
    Client,
    tempfile::TempDir,
    Binary,
    ExternalScalerClient<Channel>,
) {
    let admin = pg.setup().await;
    pg::notify_trigger(&admin).await;
    if let Some(n) = limit {
        admin
            .batch_execute(&format!(
                "alter role {} connection limit {n}",
                pg::SCALER_USER
            ))
            .await
            .unwrap();
    }
    pg::set_queued(&admin, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orascale.toml");
    std::fs::write(
        &file,
        format!(
            "{extra}\n[connections.pg]\nurl = \"{}\"\npool_size = {pool_size}\n",
            pg.scaler_url()
        ),
    )
    .unwrap();
    let server = Binary::start(&["--config", file.to_str().unwrap()], dir.path());
    let c = client(server.grpc).await;
    (admin, dir, server, c)
}

/// A distinct query per `i` that takes 50 ms, so polls of different triggers overlap and the
/// pool wants more than one session.
fn slow_count(i: usize) -> String {
    format!("select count(*) + {i} - {i} from jobs, pg_sleep(0.05) where status = 'queued'")
}

fn trigger(name: &str, query: &str, interval: &str, channel: Option<&str>) -> ScaledObjectRef {
    let mut meta = vec![
        ("connection", "pg"),
        ("query", query),
        ("targetQueryValue", "1"),
        ("pollInterval", interval),
    ];
    if let Some(c) = channel {
        meta.push(("notifyChannel", c));
        meta.push(("minWakeInterval", "100ms"));
    }
    object(name, &meta)
}

async fn metric(server: &Binary, name: &str, parts: &[&str]) -> f64 {
    let text = scrape(server.metrics).await;
    metric_value(&text, name, parts).unwrap_or(0.0)
}

/// At least `min` polls succeeded and none failed: a refused session is waited for, not a
/// failed poll.
async fn assert_polls_ok(server: &Binary, min: f64) {
    let text = scrape(server.metrics).await;
    let polls = |result: &str| {
        metric_value(
            &text,
            "orascale_polls_total",
            &["connection=\"pg\"", &format!("result=\"{result}\"")],
        )
        .unwrap_or(0.0)
    };
    assert!(polls("ok") >= min, "{} polls ok:\n{text}", polls("ok"));
    for result in ["error", "timeout", "pool_timeout"] {
        assert_eq!(polls(result), 0.0, "{result}:\n{}", server.log_text());
    }
}

/// Sessions of the scaler's role PostgreSQL holds now.
async fn scaler_sessions(admin: &Client) -> usize {
    pg::scaler_sessions(admin).await.len()
}

/// The scaler role's sessions now, told apart by `application_name`: (the pool's, the
/// listener's). A connect the server refuses never shows in `pg_stat_activity`.
async fn pool_and_listener(admin: &Client) -> (usize, usize) {
    let names: Vec<String> = admin
        .query(
            "select coalesce(application_name, '') from pg_stat_activity where usename = $1",
            &[&pg::SCALER_USER],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let count = |name: &str| names.iter().filter(|n| *n == name).count();
    assert_eq!(
        count("orascale") + count("orascale-listener"),
        names.len(),
        "{names:?}"
    );
    (count("orascale"), count("orascale-listener"))
}

/// Asks every trigger for its value, `rounds` times, `every` apart, while `admin` commits a
/// change to `jobs` (a NOTIFY) every fifth round. Returns the role's sessions (the pool's,
/// the listener's) after each round and every call that did not answer with a value, so a
/// test can look at who held the slots before it looks at what KEDA saw.
async fn calls_and_sessions(
    c: &mut ExternalScalerClient<Channel>,
    admin: &Client,
    triggers: &[ScaledObjectRef],
    rounds: usize,
    every: Duration,
) -> (Vec<(usize, usize)>, Vec<String>) {
    let mut sessions = Vec::new();
    let mut failures = Vec::new();
    for round in 0..rounds {
        if round % 5 == 0 {
            admin
                .batch_execute("update jobs set status = 'queued' where id = 1")
                .await
                .unwrap();
        }
        for t in triggers {
            match c.get_metrics(deadline(metrics_request(t, ""))).await {
                Ok(r) => assert!(value(r) >= 0.0),
                Err(e) => failures.push(format!(
                    "round {round}: {} answered {:?}: {}",
                    t.name,
                    e.code(),
                    e.message()
                )),
            }
        }
        sessions.push(pool_and_listener(admin).await);
        tokio::time::sleep(every).await;
    }
    (sessions, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_connection_role_keeps_polling_and_wakeups_degrade() {
    let Some(pg) = Pg::start_or_skip("a_one_connection_role_keeps_polling_and_wakeups_degrade")
    else {
        return;
    };
    guard(LIMIT, async {
        // The default pool of 4 on a role allowed one connection, three triggers with a channel.
        let (admin, _dir, server, mut c) = serve(&pg, Some(1), 4, "").await;
        let triggers: Vec<ScaledObjectRef> = (0..4)
            .map(|i| {
                trigger(
                    &format!("t{i}"),
                    &slow_count(i),
                    "1s",
                    (i < 3).then_some("jobs_changed"),
                )
            })
            .collect();
        let (sessions, failures) =
            calls_and_sessions(&mut c, &admin, &triggers, 40, Duration::from_millis(200)).await;
        // Polls come first: after every round the role's one connection is the pool's
        // session, never the listener's.
        assert!(
            sessions.iter().all(|&s| s == (1, 0)),
            "(pool, listener) sessions per round: {sessions:?}\n{}",
            server.log_text()
        );
        assert!(failures.is_empty(), "{failures:#?}\n{}", server.log_text());
        assert_eq!(
            metric(&server, "orascale_wake_listener_up", &["connection=\"pg\""]).await,
            0.0,
            "no slot for the listener: wake-ups are down and say so"
        );
        let log = server.log_text();
        assert_eq!(
            log.matches("notification listener down").count(),
            1,
            "WARN once per outage:\n{log}"
        );
        assert!(log.contains("53300"), "{log}");
        assert_polls_ok(&server, 20.0).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_limit_of_pool_size_keeps_the_listener_and_polls_on_the_rest() {
    let Some(pg) = Pg::start_or_skip(
        "a_connection_limit_of_pool_size_keeps_the_listener_and_polls_on_the_rest",
    ) else {
        return;
    };
    guard(LIMIT, async {
        // A limit between 2 and pool_size (here 2 = pool_size): the pool's first session, then
        // the listener's, which keeps its slot; the pool runs on the limit less one.
        let (admin, _dir, server, mut c) = serve(&pg, Some(2), 2, "").await;
        let triggers: Vec<ScaledObjectRef> = (0..6)
            .map(|i| {
                trigger(
                    &format!("t{i}"),
                    &slow_count(i),
                    "1s",
                    (i % 2 == 0).then_some("jobs_changed"),
                )
            })
            .collect();
        // The first trigger alone, until its listener listens: from here the slots are
        // settled (the pool asks for its second session only when polls overlap).
        value(
            c.get_metrics(deadline(metrics_request(&triggers[0], "")))
                .await
                .unwrap(),
        );
        let started = Instant::now();
        while metric(&server, "orascale_wake_listener_up", &["connection=\"pg\""]).await < 1.0 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{}",
                server.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (sessions, failures) =
            calls_and_sessions(&mut c, &admin, &triggers, 40, Duration::from_millis(200)).await;
        // The listener keeps its slot while the pool, refused a second session, polls on one.
        assert!(
            sessions.iter().all(|&s| s == (1, 1)),
            "(pool, listener) sessions per round: {sessions:?}\n{}",
            server.log_text()
        );
        assert!(failures.is_empty(), "{failures:#?}\n{}", server.log_text());
        assert_polls_ok(&server, 30.0).await;
        assert_eq!(
            metric(&server, "orascale_wake_listener_up", &["connection=\"pg\""]).await,
            1.0
        );
        assert!(
            metric(&server, "orascale_wake_polls_total", &["connection=\"pg\""]).await > 0.0,
            "wake-ups still work"
        );
        // The pool did ask for its second session (polls overlapped) and was told no.
        assert!(
            server
                .log_text()
                .contains("the database refused another session"),
            "{}",
            server.log_text()
        );
    })
    .await;
}

/// The source of connection `pg` as the engine gets it, with `pool_size`.
fn source(pg: &Pg, pool_size: usize) -> std::sync::Arc<dyn orascale::source::Source> {
    let mut conn = connection("pg", &pg.scaler_url());
    conn.pool_size = pool_size;
    orascale::source::open(&conn).unwrap()
}

fn deliver_nothing() -> orascale::source::wake::Deliver {
    std::sync::Arc::new(|_: &str| {})
}

async fn limit_role(admin: &Client, n: u32) {
    admin
        .batch_execute(&format!(
            "alter role {} connection limit {n}",
            pg::SCALER_USER
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_opens_only_after_the_pool_holds_a_session() {
    let Some(pg) = Pg::start_or_skip("the_listener_opens_only_after_the_pool_holds_a_session")
    else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        limit_role(&admin, 1).await;
        let src = source(&pg, 4);
        let listener = src.listener().expect("postgres listens");
        // The listener asks first: it must leave the one slot to the poll that follows.
        let listening = tokio::spawn(async move { listener.connect(deliver_nothing()).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            scaler_sessions(&admin).await,
            0,
            "no listener before the pool"
        );
        let cell = src
            .query("select count(*) from jobs", Duration::from_secs(5))
            .await;
        assert!(cell.is_ok(), "{cell:?}");
        let refused = listening
            .await
            .unwrap()
            .err()
            .expect("no slot for the listener");
        assert!(refused.is_session_limit(), "{refused}");
        assert!(
            refused.to_string().contains("at least pool_size + 1"),
            "{refused}"
        );
        // And polls go on on the pool's one session.
        for _ in 0..5 {
            let cell = src
                .query("select count(*) from jobs", Duration::from_secs(5))
                .await;
            assert!(cell.is_ok(), "{cell:?}");
        }
        src.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_gives_its_slot_up_when_the_pool_holds_none() {
    let Some(pg) = Pg::start_or_skip("the_listener_gives_its_slot_up_when_the_pool_holds_none")
    else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        limit_role(&admin, 2).await;
        let src = source(&pg, 1);
        assert!(
            src.query("select count(*) from jobs", Duration::from_secs(5))
                .await
                .is_ok()
        );
        let mut session = src
            .listener()
            .unwrap()
            .connect(deliver_nothing())
            .await
            .expect("a second slot for the listener");
        // As the hub does: the session is dropped once it reports its loss.
        let (gone_tx, gone) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let why = session.lost().await;
            drop(session);
            let _ = gone_tx.send(why);
        });
        // Now only one slot, held by the listener, and the pool's session is gone.
        limit_role(&admin, 1).await;
        admin
            .batch_execute(
                "select pg_terminate_backend(pid) from pg_stat_activity \
                 where application_name = 'orascale'",
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cell = src
            .query("select count(*) from jobs", Duration::from_secs(5))
            .await;
        assert!(cell.is_ok(), "the poll got the listener's slot: {cell:?}");
        let why = tokio::time::timeout(Duration::from_secs(5), gone)
            .await
            .expect("the listener let go")
            .unwrap();
        assert!(why.contains("polls come first"), "{why}");
        src.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_that_waited_for_a_session_says_so() {
    let Some(pg) = Pg::start_or_skip("a_poll_that_waited_for_a_session_says_so") else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        pg::set_queued(&admin, 1).await;
        let mut conn = connection("pgwait", &pg.scaler_url());
        conn.pool_size = 1;
        let server = start(vec![conn], engine()).await;
        let mut c = client(server.grpc_addr).await;
        // The pool's one session is taken by a query that runs for 3 s, poll after poll.
        let hog = object(
            "hog",
            &[
                ("query", "select count(*) from (select pg_sleep(5)) s"),
                ("targetQueryValue", "1"),
                ("pollInterval", "1s"),
                ("queryTimeout", "3s"),
            ],
        );
        let _ = c.get_metrics(deadline(metrics_request(&hog, ""))).await;
        // A fresh hog query (at most 1 s old): the next poller's first poll cannot have it.
        let started = std::time::Instant::now();
        loop {
            let young: bool = admin
                .query_one(
                    "select coalesce(bool_or(now() - query_start < interval '1 second'), false) \
                     from pg_stat_activity where usename = $1 and state = 'active' \
                     and query like '%pg_sleep(5)%'",
                    &[&pg::SCALER_USER],
                )
                .await
                .unwrap()
                .get(0);
            if young {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let fast = object(
            "fast",
            &[
                ("query", "select count(*) from jobs"),
                ("targetQueryValue", "1"),
                ("pollInterval", "10s"),
                ("queryTimeout", "300ms"),
            ],
        );
        let err = c
            .get_metrics(deadline(metrics_request(&fast, "")))
            .await
            .expect_err("its only poll waited for the pool");
        let m = err.message();
        assert!(
            m.contains("no free database session within 300ms (all 1 of the pool busy)"),
            "{m}"
        );
        assert!(!m.contains("query timed out"), "not a slow query: {m}");
        assert!(m.contains("raise the connection's pool_size"), "{m}");
        let text = scrape(server.metrics_addr).await;
        let polls = |result: &str| {
            metric_value(
                &text,
                "orascale_polls_total",
                &["connection=\"pgwait\"", &format!("result=\"{result}\"")],
            )
            .unwrap_or(0.0)
        };
        assert_eq!(polls("pool_timeout"), 1.0, "{text}");
        server.stop().await;
    })
    .await;
}

/// 50 triggers on one busy channel (each query 200 ms) and 5 unrelated triggers polling every
/// second share a pool of 2, under a steady NOTIFY stream; `share` is `wake_poll_share`. Returns
/// (the unrelated triggers' oldest sample age seen, GetMetrics calls that failed for them,
/// deferred wake polls, wake polls).
async fn busy_channel(pg: &Pg, share: u8) -> (f64, Vec<String>, f64, f64) {
    let (admin, _dir, server, mut c) =
        serve(pg, None, 2, &format!("wake_poll_share = {share}")).await;
    let fresh: Vec<ScaledObjectRef> = (0..5)
        .map(|i| {
            trigger(
                &format!("fresh-{i}"),
                &format!("select count(*) + {i} - {i} from jobs"),
                "1s",
                None,
            )
        })
        .collect();
    for t in &fresh {
        value(
            c.get_metrics(deadline(metrics_request(t, "")))
                .await
                .unwrap(),
        );
    }
    let busy: Vec<ScaledObjectRef> = (0..50)
        .map(|i| {
            trigger(
                &format!("busy-{i}"),
                &format!(
                    "select count(*) + {i} - {i} from jobs, pg_sleep(0.2) where status = 'queued'"
                ),
                "1h",
                Some("jobs_changed"),
            )
        })
        .collect();
    // Their first polls (10 s of queries on 2 sessions) may outlast KEDA's first-call wait.
    for t in &busy {
        let _ = c.get_metrics(deadline(metrics_request(t, ""))).await;
    }
    // The NOTIFY stream: a commit every 20 ms, for the whole window.
    let stop = tokio_util::sync::CancellationToken::new();
    let notifier = {
        let stop = stop.clone();
        let admin = pg.admin().await;
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                admin
                    .batch_execute("update jobs set status = 'queued' where id = 1")
                    .await
                    .unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };
    // Let the busy pollers' first polls drain; from here the fresh ones must stay fresh.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let deferred_before = metric(&server, "orascale_wake_polls_deferred_total", &[]).await;
    let wakes_before = metric(&server, "orascale_wake_polls_total", &[]).await;
    let mut oldest = 0.0f64;
    let mut failures = Vec::new();
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(12) {
        for t in &fresh {
            if let Err(e) = c.get_metrics(deadline(metrics_request(t, ""))).await {
                failures.push(format!("{}: {:?} {}", t.name, e.code(), e.message()));
            }
        }
        let text = scrape(server.metrics).await;
        for t in &fresh {
            let age = metric_value(
                &text,
                "orascale_poller_sample_age_seconds",
                &[&format!("scaledobject=\"{}\"", t.name)],
            )
            .unwrap_or(f64::INFINITY);
            oldest = oldest.max(age);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.cancel();
    let commits = notifier.await.unwrap();
    let deferred =
        metric(&server, "orascale_wake_polls_deferred_total", &[]).await - deferred_before;
    let wakes = metric(&server, "orascale_wake_polls_total", &[]).await - wakes_before;
    eprintln!(
        "wake_poll_share {share}: {commits} commits, {wakes} wake polls, {deferred} deferred; \
         unrelated triggers' oldest sample {oldest:.2} s, {} failed calls",
        failures.len()
    );
    drop(admin);
    (oldest, failures, deferred, wakes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_channel_never_starves_interval_polls() {
    let Some(pg) = Pg::start_or_skip("a_busy_channel_never_starves_interval_polls") else {
        return;
    };
    guard(LIMIT, async {
        // The default share: half of the pool of 2, so one session is always left to the
        // interval polls.
        let (oldest, failures, deferred, wakes) = busy_channel(&pg, 50).await;
        assert!(failures.is_empty(), "{failures:#?}");
        // Polled every second; a poll may queue behind at most one 200 ms wake poll. (Without
        // the budget, 50 wake polls queue ahead of it: 5 s on 2 sessions.)
        assert!(
            oldest < 2.0,
            "an unrelated trigger's sample was {oldest:.2} s old"
        );
        assert!(deferred > 0.0, "the budget deferred wake polls: {deferred}");
        assert!(wakes > 0.0, "the busy channel was still served: {wakes}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_waiting_for_the_pool_show_in_pool_waiting() {
    let Some(pg) = Pg::start_or_skip("polls_waiting_for_the_pool_show_in_pool_waiting") else {
        return;
    };
    guard(LIMIT, async {
        // A pool of one, held 3 s poll after poll by a hog: the other trigger's polls wait at
        // the pool's gate, and the gauge behind OrascalePoolSaturated must say so.
        let (_admin, _dir, server, c) = serve(&pg, None, 1, "").await;
        let hog = object(
            "hog",
            &[
                ("connection", "pg"),
                ("query", "select count(*) from (select pg_sleep(5)) s"),
                ("targetQueryValue", "1"),
                ("pollInterval", "1s"),
                ("queryTimeout", "3s"),
            ],
        );
        let waiter = object(
            "waiter",
            &[
                ("connection", "pg"),
                ("query", "select count(*) from jobs"),
                ("targetQueryValue", "1"),
                ("pollInterval", "1s"),
                ("queryTimeout", "4s"),
            ],
        );
        for t in [hog, waiter] {
            let mut c = c.clone();
            tokio::spawn(async move { c.get_metrics(deadline(metrics_request(&t, ""))).await });
        }
        // Scraped every 50 ms for 8 s: the waiter's polls wait up to 3 s at a time, so the
        // gauge reads 1 for many scrapes in a row (a connect, which deadpool alone counts as
        // waiting, lasts milliseconds), and never 2 (one poller waits, the other connects or
        // queries).
        let started = Instant::now();
        let (mut most, mut run, mut longest) = (0.0f64, 0, 0);
        while started.elapsed() < Duration::from_secs(8) {
            let waiting = metric(&server, "orascale_pool_waiting", &["connection=\"pg\""]).await;
            most = most.max(waiting);
            run = if waiting >= 1.0 { run + 1 } else { 0 };
            longest = longest.max(run);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text = scrape(server.metrics).await;
        assert!(
            longest >= 10,
            "the waiting poll is counted while it waits: {longest} scrapes in a row\n{text}"
        );
        assert_eq!(most, 1.0, "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_poll_out_of_budget_is_a_pool_wait() {
    let Some(pg) = Pg::start_or_skip("a_refused_poll_out_of_budget_is_a_pool_wait") else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        limit_role(&admin, 1).await;
        // Another session of the role (as the listener's would) has the one slot.
        let (other, conn) = tokio_postgres::connect(&pg.scaler_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let src = source(&pg, 4);
        // Refused, with less budget left than the pause before the retry: the poll spent its
        // budget waiting for a session, so it is a pool wait, not a slow query.
        let e = src
            .query("select count(*) from jobs", Duration::from_millis(150))
            .await
            .expect_err("no slot for the pool");
        assert_eq!(e.result_label(), "pool_timeout", "{e}");
        let m = e.to_string();
        assert!(
            m.starts_with("no free database session within 150ms"),
            "{m}"
        );
        assert!(m.contains("raise the connection's pool_size"), "{m}");
        // With time to retry, a pool that holds nothing fails with the server's refusal.
        let e = src
            .query("select count(*) from jobs", Duration::from_secs(2))
            .await
            .expect_err("still no slot");
        assert!(e.is_session_limit(), "{e}");
        drop(other);
        src.close().await;
    })
    .await;
}

/// A connection limit between 2 and `pool_size` (2, pool of 4) and a burst of 30 triggers
/// streamed at once: the burst lets the pool take both slots before the listener connects. The
/// listener's refused connect makes the pool give one up (a slot retired, an idle session
/// closed), so wake-ups come up and stay up, and no poll fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_at_a_limit_below_pool_size_still_lets_the_listener_in() {
    let Some(pg) =
        Pg::start_or_skip("a_burst_at_a_limit_below_pool_size_still_lets_the_listener_in")
    else {
        return;
    };
    guard(LIMIT, async {
        let (admin, _dir, server, c) = serve(&pg, Some(2), 4, "").await;
        // 20 ms each: 30 triggers polled every second keep one session well under full.
        let triggers: Vec<ScaledObjectRef> = (0..30)
            .map(|i| {
                trigger(
                    &format!("t{i}"),
                    &format!(
                        "select count(*) + {i} - {i} from jobs, pg_sleep(0.02) where status = 'queued'"
                    ),
                    "1s",
                    Some("jobs_changed"),
                )
            })
            .collect();
        let opened = futures::future::join_all(triggers.iter().map(|t| {
            let (mut c, t) = (c.clone(), t.clone());
            async move { c.stream_is_active(t).await.unwrap().into_inner() }
        }))
        .await;
        let started = Instant::now();
        while metric(&server, "orascale_wake_listener_up", &["connection=\"pg\""]).await < 1.0 {
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "the listener never got a slot: {:?}\n{}",
                pool_and_listener(&admin).await,
                server.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Up for good: the pool polls on the other slot, the listener keeps its own.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                metric(&server, "orascale_wake_listener_up", &["connection=\"pg\""]).await,
                1.0,
                "{}",
                server.log_text()
            );
        }
        assert_eq!(pool_and_listener(&admin).await, (1, 1));
        assert_polls_ok(&server, 30.0).await;
        drop(opened);
    })
    .await;
}
