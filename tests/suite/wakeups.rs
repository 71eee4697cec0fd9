//! Database-driven wake-ups (notifyChannel) against a real PostgreSQL server and the real
//! binary: a committed change reaches an open stream at once with a 1 h poll interval; a
//! NOTIFY storm stays a trickle of polls; the listening session survives being terminated and
//! the server restarting; channels follow the pollers; no session is leaked.
//!
//! Wake-up pollers here poll every hour, so a poll the test sees is a wake, never a tick that
//! the random poll phase happened to put in the test's window; what a test claims about wakes
//! it checks on `orascale_wake_polls_total` / `orascale_wake_notifications_total` deltas.

use crate::support;

use std::time::{Duration, Instant};

use orascale::grpc::proto::ScaledObjectRef;
use orascale::grpc::proto::external_scaler_client::ExternalScalerClient;
use support::pg::{self, Pg};
use support::*;
use tokio_postgres::Client;
use tonic::transport::Channel;

const LIMIT: Duration = Duration::from_secs(240);
const QUEUED: &str = "select count(*) from jobs where status = 'queued'";

async fn insert(admin: &Client, n: i64) {
    admin
        .batch_execute(&format!(
            "insert into jobs(status) select 'queued' from generate_series(1, {n})"
        ))
        .await
        .unwrap();
}

/// orascale's listening sessions, as PostgreSQL sees them.
async fn listener_sessions(admin: &Client) -> i64 {
    admin
        .query_one(
            "select count(*) from pg_stat_activity where application_name = 'orascale-listener'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn wake_metric(server: &Binary, name: &str) -> f64 {
    let text = scrape(server.metrics).await;
    metric_value(&text, name, &["connection=\"pg\""]).unwrap_or(-1.0)
}

async fn wait_metric(server: &Binary, name: &str, ok: impl Fn(f64) -> bool, limit: Duration) {
    let started = Instant::now();
    loop {
        let v = wake_metric(server, name).await;
        if ok(v) {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{name} is {v} after {limit:?}:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pid of orascale's one listening session, as PostgreSQL sees it.
async fn listener_pid(admin: &Client) -> i32 {
    admin
        .query_one(
            "select pid from pg_stat_activity where application_name = 'orascale-listener'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until `want` wake polls were counted, giving up quietly after `limit`: each channel's
/// first LISTEN wakes its poller once, unless that LISTEN landed before the poller's task
/// started (its first poll then covers it and no wake poll follows). Returns the count.
async fn settle_listen_wakes(server: &Binary, want: f64, limit: Duration) -> f64 {
    let started = Instant::now();
    loop {
        let v = wake_metric(server, "orascale_wake_polls_total").await;
        if v >= want || started.elapsed() >= limit {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_sessions(admin: &Client, want: i64, limit: Duration) {
    let started = Instant::now();
    loop {
        let n = listener_sessions(admin).await;
        if n == want {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{n} listening sessions, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The test's database (the scaler role and `jobs`; with `notify`, the jobs trigger) and
/// orascale serving it as connection `pg`, with a client connected. Keep the directory alive.
async fn serve(
    pg: &Pg,
    notify: bool,
    extra: &[&str],
) -> (
    Client,
    tempfile::TempDir,
    Binary,
    ExternalScalerClient<Channel>,
) {
    let admin = pg.setup().await;
    if notify {
        pg::notify_trigger(&admin).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!("pg={}", pg.scaler_url());
    let mut args = vec!["--connection", &url];
    args.extend_from_slice(extra);
    let server = Binary::start(&args, dir.path());
    let c = client(server.grpc).await;
    (admin, dir, server, c)
}

fn watched(name: &str, query: &str, channel: &str, interval: &str) -> ScaledObjectRef {
    object(
        name,
        &[
            ("connection", "pg"),
            ("query", query),
            ("targetQueryValue", "1"),
            ("pollInterval", interval),
            ("notifyChannel", channel),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_an_open_stream_and_a_storm_stays_a_trickle() {
    let Some(pg) = Pg::start_or_skip("a_commit_wakes_an_open_stream_and_a_storm_stays_a_trickle")
    else {
        return;
    };
    guard(LIMIT, async {
        let (admin, _dir, server, mut c) = serve(&pg, true, &[]).await;
        let obj = watched("worker", QUEUED, "jobs_changed", "1h");
        let mut stream = c.stream_is_active(obj.clone()).await.unwrap().into_inner();
        wait_metric(
            &server,
            "orascale_wake_listener_up",
            |v| v == 1.0,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(wake_metric(&server, "orascale_wake_channels").await, 1.0);
        assert_eq!(listener_sessions(&admin).await, 1, "one dedicated session");
        // Nothing queued: the stream is silent.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), stream.message())
                .await
                .is_err()
        );

        // A commit → true on the stream; with a 1 h interval only its notification can poll.
        let wakes_before = wake_metric(&server, "orascale_wake_polls_total").await;
        let notes_before = wake_metric(&server, "orascale_wake_notifications_total").await;
        let committed = Instant::now();
        insert(&admin, 3).await;
        let m = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("woken within 5 s with a 1 h poll interval")
            .unwrap()
            .unwrap();
        assert!(m.result);
        eprintln!("commit → true: {:?}", committed.elapsed());
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&obj, "")))
                    .await
                    .unwrap()
            ),
            3.0
        );
        assert!(
            wake_metric(&server, "orascale_wake_notifications_total").await > notes_before,
            "the commit was heard"
        );
        assert!(
            wake_metric(&server, "orascale_wake_polls_total").await > wakes_before,
            "the change was seen by a wake poll"
        );

        // A storm: 400 commits, each notifying, over about two seconds. At most one poll per
        // minWakeInterval (100 ms) plus one queued.
        let polls = |text: &str| {
            metric_value(text, "orascale_polls_total", &["connection=\"pg\""]).unwrap_or(0.0)
        };
        let before = polls(&scrape(server.metrics).await);
        let notes_before = wake_metric(&server, "orascale_wake_notifications_total").await;
        let storm = Instant::now();
        for i in 0..400 {
            admin
                .batch_execute(&format!(
                    "update jobs set status = 'queued' where id = {}",
                    i % 3 + 1
                ))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = storm.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let during = polls(&scrape(server.metrics).await) - before;
        let notes = wake_metric(&server, "orascale_wake_notifications_total").await - notes_before;
        eprintln!("storm: {notes} notifications in {secs:.2} s → {during} polls");
        assert!(notes >= 400.0, "every commit notified: {notes}");
        assert!(
            during <= (secs + 0.5) * 10.0 + 2.0,
            "{during} polls for {notes} notifications in {secs:.2} s"
        );
        assert!(during >= 2.0, "the storm was served: {during}");
        assert_eq!(listener_sessions(&admin).await, 1);
        drop(stream);
        drop(c);
        server.signal("TERM");
        let mut server = server;
        assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
        wait_sessions(&admin, 0, Duration::from_secs(5)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_survives_termination_and_a_server_restart() {
    let Some(pg) = Pg::start_or_skip("the_listener_survives_termination_and_a_server_restart")
    else {
        return;
    };
    guard(LIMIT, async {
        let (admin, _dir, server, mut c) =
            serve(&pg, true, &["--min-poll-interval", "100ms"]).await;
        let slow = watched("slow", QUEUED, "jobs_changed", "1h");
        // Same channel, its own poller at 1 s: shows interval polling never stops.
        let fast = watched("fast", "select count(*) + 0 from jobs", "jobs_changed", "1s");
        let mut stream = c.stream_is_active(slow.clone()).await.unwrap().into_inner();
        c.get_metrics(deadline(metrics_request(&fast, ""))).await.unwrap();
        wait_metric(&server, "orascale_wake_listener_up", |v| v == 1.0, Duration::from_secs(10)).await;
        assert_eq!(listener_sessions(&admin).await, 1, "one session for both pollers");

        // 1. The listening session is terminated, and a change is committed at once, before
        // any reconnect could hear it: the poll after re-LISTEN covers it.
        let killed: i64 = admin
            .query_one(
                "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'orascale-listener') t",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(killed, 1);
        insert(&admin, 2).await;
        let m = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the change made while the listener was away is seen after it returns")
            .unwrap()
            .unwrap();
        assert!(m.result);
        wait_metric(&server, "orascale_wake_listener_reconnects_total", |v| v >= 1.0, Duration::from_secs(10)).await;
        wait_sessions(&admin, 1, Duration::from_secs(5)).await;
        let log = server.wait_log("wake-ups degraded", Duration::from_secs(5));
        assert!(log.contains("wake-ups resumed"), "{log}");

        // 2. The server stops: wake-ups are degraded, calls never block, interval polling
        // goes on (and fails, as it should, with UNAVAILABLE after the stale limit).
        admin.batch_execute("delete from jobs").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(admin);
        let polls = |text: &str| {
            metric_value(text, "orascale_polls_total", &["connection=\"pg\""]).unwrap_or(0.0)
        };
        pg.stop();
        wait_metric(&server, "orascale_wake_listener_up", |v| v == 0.0, Duration::from_secs(20)).await;
        let before = polls(&scrape(server.metrics).await);
        for _ in 0..10 {
            let asked = Instant::now();
            let _ = c.get_metrics(deadline(metrics_request(&fast, ""))).await;
            assert!(asked.elapsed() < Duration::from_secs(1), "a call blocked on the outage");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            polls(&scrape(server.metrics).await) - before >= 1.0,
            "interval polling goes on while the listener is down"
        );
        pg.start();
        wait_metric(&server, "orascale_wake_listener_up", |v| v == 1.0, Duration::from_secs(30)).await;
        let admin = pg.admin().await;
        wait_sessions(&admin, 1, Duration::from_secs(5)).await;
        assert!(
            wake_metric(&server, "orascale_wake_listener_reconnects_total").await >= 2.0
        );
        // Woken again: a commit after the restart reaches the stream.
        let committed = Instant::now();
        insert(&admin, 4).await;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .expect("woken after the restart")
                .unwrap()
                .unwrap();
            if m.result {
                break;
            }
        }
        assert!(committed.elapsed() < Duration::from_secs(5));
        assert!(!server.log_text().contains(pg::SCALER_PASSWORD));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_follow_the_pollers_and_no_session_is_leaked() {
    let Some(pg) = Pg::start_or_skip("channels_follow_the_pollers_and_no_session_is_leaked") else {
        return;
    };
    guard(LIMIT, async {
        let (admin, _dir, server, mut c) = serve(&pg, false, &["--idle-timeout", "1s"]).await;
        let a = watched("a", "select count(*) from jobs", "chan_a", "1h");
        let b = watched("b", "select count(*) + 0 from jobs", "chan_b", "1h");
        let stream_a = c.stream_is_active(a.clone()).await.unwrap().into_inner();
        let stream_b = c.stream_is_active(b.clone()).await.unwrap().into_inner();
        wait_metric(
            &server,
            "orascale_wake_channels",
            |v| v == 2.0,
            Duration::from_secs(10),
        )
        .await;
        wait_metric(
            &server,
            "orascale_wake_listener_up",
            |v| v == 1.0,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            listener_sessions(&admin).await,
            1,
            "one session for two channels"
        );
        let pid = listener_pid(&admin).await;

        let reader = c.clone();
        let value_of = |obj: ScaledObjectRef| {
            let mut c = reader.clone();
            async move {
                value(
                    c.get_metrics(deadline(metrics_request(&obj, "")))
                        .await
                        .unwrap(),
                )
            }
        };
        let count = |name: &'static str| wake_metric(&server, name);
        const WAKE_POLLS: &str = "orascale_wake_polls_total";
        const NOTES: &str = "orascale_wake_notifications_total";
        let polls = || async {
            metric_value(
                &scrape(server.metrics).await,
                "orascale_polls_total",
                &["connection=\"pg\""],
            )
            .unwrap_or(0.0)
        };
        // Both pollers have polled (their streams are open); let the LISTEN wake polls land.
        value_of(a.clone()).await;
        value_of(b.clone()).await;
        settle_listen_wakes(&server, 2.0, Duration::from_secs(5)).await;
        let wakes = count(WAKE_POLLS).await;
        // A wake poll is counted as it starts, a poll as it ends: wait for the last to end
        // (the two first polls and each wake poll).
        let started = Instant::now();
        let mut polled = polls().await;
        while polled < 2.0 + wakes {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{polled} polls, {wakes} wakes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            polled = polls().await;
        }
        assert_eq!(polled, 2.0 + wakes);
        // Rows without a trigger on the table: nothing notifies, and with a 1 h interval
        // nothing else polls either.
        insert(&admin, 2).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(value_of(b.clone()).await, 0.0, "no wake, no poll");
        assert_eq!(count(WAKE_POLLS).await, wakes, "no wake, no poll");
        assert_eq!(polls().await, polled, "no wake, no poll");

        // NOTIFY chan_b wakes b only: one wake poll. A second NOTIFY chan_b is the barrier:
        // b's second wake poll waits minWakeInterval, a wake of a would not have waited.
        let notes = count(NOTES).await;
        admin.batch_execute("notify chan_b").await.unwrap();
        wait_value(&mut c, &b, 2.0, Duration::from_secs(3), "b is woken").await;
        assert_eq!(count(WAKE_POLLS).await, wakes + 1.0, "one wake poll, b's");
        admin.batch_execute("notify chan_b").await.unwrap();
        wait_metric(
            &server,
            WAKE_POLLS,
            |v| v >= wakes + 2.0,
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(count(NOTES).await, notes + 2.0);
        assert_eq!(
            count(WAKE_POLLS).await,
            wakes + 2.0,
            "a is not woken by chan_b"
        );
        assert_eq!(value_of(a.clone()).await, 0.0, "a is not woken by chan_b");

        // a's stream closes and its poller is evicted: chan_a is dropped from the session,
        // which stays for b.
        drop(stream_a);
        wait_metric(
            &server,
            "orascale_wake_channels",
            |v| v == 1.0,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(listener_sessions(&admin).await, 1);
        assert_eq!(
            listener_pid(&admin).await,
            pid,
            "the same listening session stays for b"
        );
        // Probe that session: NOTIFY chan_a, then chan_b. PostgreSQL delivers them to a
        // listener in commit order, so once chan_b's wake poll ran, chan_a's notification
        // would have been counted before it if the session still listened on chan_a.
        let notes = count(NOTES).await;
        let wakes = count(WAKE_POLLS).await;
        insert(&admin, 1).await;
        admin.batch_execute("notify chan_a").await.unwrap();
        admin.batch_execute("notify chan_b").await.unwrap();
        wait_value(&mut c, &b, 3.0, Duration::from_secs(3), "b is still woken").await;
        assert_eq!(count(WAKE_POLLS).await, wakes + 1.0);
        assert_eq!(
            count(NOTES).await,
            notes + 1.0,
            "the listening session no longer listens on chan_a"
        );
        // The last channel goes: the listening session closes.
        drop(stream_b);
        drop(c);
        wait_metric(
            &server,
            "orascale_wake_channels",
            |v| v == 0.0,
            Duration::from_secs(10),
        )
        .await;
        wait_sessions(&admin, 0, Duration::from_secs(10)).await;
        assert_eq!(wake_metric(&server, "orascale_wake_listener_up").await, 0.0);
        // And a new poller on a channel opens one again.
        let mut c = client(server.grpc).await;
        let _again = c.stream_is_active(a.clone()).await.unwrap().into_inner();
        wait_sessions(&admin, 1, Duration::from_secs(10)).await;
    })
    .await;
}

/// Wake-ups are not part of what makes a poller: 49 identical triggers and a 50th that adds
/// `notifyChannel` share one poller (adding the channel adds no query), and that one poller
/// polls on the channel's notifications for all 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_channel_on_one_of_fifty_identical_triggers_adds_no_query() {
    let Some(pg) =
        Pg::start_or_skip("a_notify_channel_on_one_of_fifty_identical_triggers_adds_no_query")
    else {
        return;
    };
    guard(LIMIT, async {
        let (admin, _dir, server, c) = serve(&pg, true, &[]).await;
        let plain = |i: usize| {
            object(
                &format!("so-{i}"),
                &[
                    ("connection", "pg"),
                    ("query", QUEUED),
                    ("targetQueryValue", "1"),
                    ("pollInterval", "1h"),
                ],
            )
        };
        let mut objects: Vec<ScaledObjectRef> = (0..49).map(plain).collect();
        objects.push(watched("so-49", QUEUED, "jobs_changed", "1h"));
        let read_all = |want: f64| {
            let objects = objects.clone();
            let c = c.clone();
            async move {
                for o in &objects {
                    let mut c = c.clone();
                    let v = value(
                        c.get_metrics(deadline(metrics_request(o, "")))
                            .await
                            .unwrap(),
                    );
                    assert_eq!(v, want, "{}", o.name);
                }
            }
        };
        read_all(0.0).await;
        wait_metric(
            &server,
            "orascale_wake_listener_up",
            |v| v == 1.0,
            Duration::from_secs(10),
        )
        .await;
        let settled = settle_listen_wakes(&server, 1.0, Duration::from_secs(5)).await;
        let text = scrape(server.metrics).await;
        assert_eq!(
            metric_value(&text, "orascale_pollers", &[]),
            Some(1.0),
            "one poller for all 50"
        );
        let polls = metric_value(&text, "orascale_polls_total", &["connection=\"pg\""]).unwrap();
        // The first poll, and at most the one wake poll that follows the channel's LISTEN.
        assert_eq!(polls, 1.0 + settled, "{text}");
        // A commit: the shared poller polls once more, and all 50 see the new value.
        insert(&admin, 4).await;
        wait_metric(
            &server,
            "orascale_wake_polls_total",
            |v| v >= settled + 1.0,
            Duration::from_secs(10),
        )
        .await;
        // The wake poll is counted as it starts: wait for its result, then every trigger has it.
        let mut c1 = c.clone();
        wait_value(
            &mut c1,
            objects.last().unwrap(),
            4.0,
            Duration::from_secs(10),
            "the wake poll's result",
        )
        .await;
        read_all(4.0).await;
        let text = scrape(server.metrics).await;
        assert_eq!(metric_value(&text, "orascale_pollers", &[]), Some(1.0));
        let after = metric_value(&text, "orascale_polls_total", &["connection=\"pg\""]).unwrap();
        assert_eq!(after, polls + 1.0, "one query per notification, for all 50");
    })
    .await;
}
