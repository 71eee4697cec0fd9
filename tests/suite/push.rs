//! StreamIsActive as KEDA's external-push trigger uses it: edges pushed, never `false`,
//! thousands of streams over one HTTP/2 connection, streams ended with OK on shutdown.

use crate::support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use support::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactive_stream_gets_true_within_one_poll_interval_of_the_insert() {
    guard(LIMIT, async {
        let db = TestDb::new();
        let server = start(vec![connection("jobs", &db.url())], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let obj = object(
            "w",
            &[
                ("query", QUEUED),
                ("targetQueryValue", "1"),
                ("pollInterval", "1s"),
            ],
        );
        let mut stream = c.stream_is_active(obj.clone()).await.unwrap().into_inner();
        // Inactive: nothing arrives (never `false`).
        assert!(
            tokio::time::timeout(Duration::from_millis(2500), stream.message())
                .await
                .is_err(),
            "an inactive stream stays silent"
        );
        db.set_queued(3);
        let inserted = Instant::now();
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("true arrives")
            .unwrap()
            .unwrap();
        assert!(msg.result);
        let took = inserted.elapsed();
        // One 1 s interval, plus scheduling slack for a loaded CI machine.
        assert!(took < Duration::from_millis(2500), "true took {took:?}");

        // Back to inactive: no `false`; then active again: a new edge.
        db.set_queued(0);
        assert!(
            tokio::time::timeout(Duration::from_millis(2500), stream.message())
                .await
                .is_err()
        );
        db.set_queued(2);
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(msg.result);
        server.stop().await;
        assert!(
            stream.message().await.unwrap().is_none(),
            "ends with OK on shutdown"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_active_stream_gets_true_at_once_and_resends_while_active() {
    guard(LIMIT, async {
        let db = TestDb::new();
        db.set_queued(5);
        let mut e = engine();
        e.stream_resend_interval = Duration::from_millis(500);
        let server = start(vec![connection("jobs", &db.url())], e).await;
        let mut c = client(server.grpc_addr).await;
        let obj = object(
            "w",
            &[
                ("query", QUEUED),
                ("targetQueryValue", "1"),
                ("pollInterval", "1s"),
            ],
        );
        let mut stream = c.stream_is_active(obj.clone()).await.unwrap().into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(first.result);
        // Re-sent at the resend interval while still active.
        let started = Instant::now();
        let mut count = 0;
        while started.elapsed() < Duration::from_millis(2600) {
            if let Ok(m) = tokio::time::timeout(Duration::from_millis(200), stream.message()).await
            {
                assert!(m.unwrap().unwrap().result, "never false");
                count += 1;
            }
        }
        assert!(
            (3..=7).contains(&count),
            "about one re-send per 500 ms, got {count}"
        );
        // Once inactive, re-sends stop.
        db.set_queued(0);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        while tokio::time::timeout(Duration::from_millis(50), stream.message())
            .await
            .is_ok()
        {}
        assert!(
            tokio::time::timeout(Duration::from_millis(1500), stream.message())
                .await
                .is_err(),
            "no re-send while inactive"
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_stay_open_through_database_errors_and_never_send_false() {
    guard(LIMIT, async {
        let db = TestDb::new();
        let server = start(vec![connection("jobs", &db.url())], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let obj = object(
            "w",
            &[
                ("query", QUEUED),
                ("targetQueryValue", "1"),
                ("pollInterval", "200ms"),
            ],
        );
        let mut stream = c.stream_is_active(obj.clone()).await.unwrap().into_inner();
        let conn = rusqlite::Connection::open(&db.path).unwrap();
        conn.execute("alter table jobs rename to jobs_gone", [])
            .unwrap();
        // Several failed polls: the stream neither ends nor sends anything.
        assert!(
            tokio::time::timeout(Duration::from_secs(2), stream.message())
                .await
                .is_err()
        );
        assert_eq!(
            c.get_metrics(deadline(metrics_request(&obj, "")))
                .await
                .unwrap_err()
                .code(),
            Code::Unavailable
        );
        // The database recovers with work queued: the stream pushes true.
        conn.execute("alter table jobs_gone rename to jobs", [])
            .unwrap();
        db.set_queued(1);
        let m = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(m.result);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_on_one_connection_all_get_true() {
    guard(LIMIT, streams_on_one_connection(1000, 10)).await;
}

/// KEDA reconnects every ScaledObject at once after a scaler restart, over one connection:
/// h2's flood protection must not answer the burst with GOAWAY (see CONNECTION_WINDOW).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_ten_thousand_streams_on_one_connection_all_get_true() {
    // Thousands of in-process streams: not beside a test that measures this process's memory
    // (taken before the time limit starts).
    let _alone = exclusive().await;
    guard(LIMIT, streams_on_one_connection(10_000, 100)).await;
}

async fn streams_on_one_connection(count: usize, triggers: usize) {
    let db = TestDb::new();
    let server = start(vec![connection("jobs", &db.url())], engine()).await;
    // One client = one HTTP/2 connection, as KEDA multiplexes every ScaledObject over one.
    let c = client(server.grpc_addr).await;
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        // `triggers` distinct triggers (pollers), each shared by count/triggers ScaledObjects.
        let q = format!("{QUEUED} and {} >= 0", i % triggers);
        let obj = object(
            &format!("so-{i}"),
            &[
                ("query", &q),
                ("targetQueryValue", "1"),
                ("pollInterval", "1s"),
            ],
        );
        let mut c = c.clone();
        streams.push(tokio::spawn(async move {
            c.stream_is_active(obj)
                .await
                .expect("stream opens")
                .into_inner()
        }));
    }
    let mut opened = Vec::with_capacity(count);
    for s in streams {
        opened.push(s.await.unwrap());
    }
    db.set_queued(1);
    let waits = opened.into_iter().map(|mut s| async move {
        let m = tokio::time::timeout(Duration::from_secs(30), s.message()).await;
        (m, s)
    });
    let results = futures::future::join_all(waits).await;
    let mut kept = Vec::new();
    for (m, s) in results {
        let m = m.expect("every stream gets true").unwrap().unwrap();
        assert!(m.result);
        kept.push(s);
    }
    assert_eq!(kept.len(), count);
    // On shutdown every stream ends with OK.
    server.shutdown_token().cancel();
    let ends = futures::stream::iter(kept)
        .map(
            |mut s| async move { tokio::time::timeout(Duration::from_secs(10), s.message()).await },
        )
        .buffer_unordered(count)
        .collect::<Vec<_>>()
        .await;
    for end in ends {
        assert!(end.expect("stream ends").expect("ends with OK").is_none());
    }
    server.wait().await;
}
