//! Identical triggers share one poller: 50 ScaledObjects cause one query per interval.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_scaled_objects_with_one_trigger_cause_one_query_per_interval() {
    guard(Duration::from_secs(60), async {
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
        let window = std::time::Instant::now();
        let mut calls = 0;
        while window.elapsed() < Duration::from_millis(4000) {
            let rounds = objects.iter().enumerate().map(|(i, o)| {
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
            });
            futures::future::join_all(rounds).await;
            calls += 100;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let elapsed = window.elapsed();
        let addr = server.metrics_addr;
        let (_, text) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
            .await
            .unwrap();
        let polls =
            metric_value(&text, "orascale_polls_total", &["connection=\"share50\""]).unwrap();
        // First poll at once, then one per 1 s interval (with a random phase): at most
        // elapsed/1s + 2 polls, whatever the number of ScaledObjects and calls.
        let max = elapsed.as_secs_f64().ceil() + 2.0;
        assert!(
            polls >= 2.0 && polls <= max,
            "{polls} polls in {elapsed:?} for {calls} calls"
        );
        assert!(calls >= 1000, "{calls}");
        server.stop().await;
    })
    .await;
}
