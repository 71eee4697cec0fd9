//! Identical triggers share one poller: 50 ScaledObjects cause one query per interval.
//!
//! Counted, never timed by the test: the server's own counters say how many pollers exist and
//! how many polls ran, and its last-success timestamps say how much poll time passed between
//! two scrapes, so a slow machine changes how long the test takes, not what it asserts.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const CONNECTION: &str = "connection=\"share50\"";

/// What the server says about the connection's pollers: how many exist, how many polls they
/// ran, and the (server's) Unix time of the latest successful one.
struct Counts {
    pollers: usize,
    polls: f64,
    last_success: f64,
}

async fn counts(addr: SocketAddr) -> Counts {
    let text = scrape(addr).await;
    let pollers = text
        .lines()
        .filter(|l| {
            l.starts_with("orascale_poller_consecutive_failures{") && l.contains(CONNECTION)
        })
        .count();
    Counts {
        pollers,
        polls: metric_value(&text, "orascale_polls_total", &[CONNECTION]).unwrap_or(0.0),
        last_success: metric_value(
            &text,
            "orascale_last_success_timestamp_seconds",
            &[CONNECTION],
        )
        .unwrap_or(0.0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_scaled_objects_with_one_trigger_cause_one_query_per_interval() {
    guard(Duration::from_secs(120), async {
        let db = TestDb::new();
        db.set_queued(5);
        // A connection name no other test in this binary uses: the polls counter is per connection.
        let server = start(vec![connection("share50", &db.url())], engine()).await;
        let c = client(server.grpc_addr).await;
        let objects: Vec<_> = (0..50)
            .map(|i| {
                // Thresholds differ per ScaledObject; the poller is shared anyway.
                let activation = (i % 10).to_string();
                object(
                    &format!("so-{i}"),
                    &[
                        ("query", QUEUED),
                        ("targetQueryValue", "1"),
                        ("activationTargetQueryValue", &activation),
                        ("pollInterval", "1s"),
                    ],
                )
            })
            .collect();
        // One round: GetMetrics and IsActive for each of the 50, concurrently.
        let round = || {
            futures::future::join_all(objects.iter().enumerate().map(|(i, o)| {
                let mut c = c.clone();
                let o = o.clone();
                async move {
                    let m = c
                        .get_metrics(deadline(metrics_request(&o, "")))
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(m.metric_values[0].metric_value_float, 5.0);
                    let active = c.is_active(deadline(o)).await.unwrap().into_inner().result;
                    assert_eq!(active, 5 > i % 10, "threshold of so-{i} is its own");
                }
            }))
        };
        round().await;
        let first = counts(server.metrics_addr).await;
        assert_eq!(
            first.pollers, 1,
            "50 ScaledObjects, one trigger: one poller"
        );
        assert!(first.polls >= 1.0 && first.last_success > 0.0);
        // Keep KEDA-like traffic going (100 calls a round) for at least ten rounds and until
        // the poller has polled three more times, however long that takes on this machine.
        let mut calls = 100;
        let mut rounds = 1;
        let last = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            round().await;
            calls += 100;
            rounds += 1;
            let now = counts(server.metrics_addr).await;
            if rounds >= 10 && now.polls >= first.polls + 3.0 {
                break now;
            }
        };
        assert_eq!(last.pollers, 1, "still one poller");
        // Polls after the first scrape are at least one interval apart (the one right after
        // the very first poll excepted: the random phase), so between the two last-success
        // instants, by the server's clock, there is room for at most elapsed/1s + 1 of them;
        // one more allows for query times that vary. Unshared, 50 pollers would poll ~50 times
        // a second; one poll per call would be one per call.
        let polled = last.polls - first.polls;
        let elapsed = last.last_success - first.last_success;
        assert!(
            polled <= elapsed + 2.0,
            "{polled} polls in {elapsed:.3} s of poll time for {calls} calls"
        );
        assert!(polled >= 3.0, "{polled}");
        server.stop().await;
    })
    .await;
}
