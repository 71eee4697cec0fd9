//! Per-poller metric series: every series a scrape returns is unique, and names the trigger
//! that uses the poller — also after a ScaledObject edits its trigger away from a poller it
//! shared with another object.

use crate::support;

use std::collections::HashSet;
use std::time::Duration;

use support::*;

/// Every sample line of a per-poller family, with its label set, from one scrape.
fn poller_lines(text: &str, family: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
        .collect()
}

fn assert_unique(text: &str) {
    for family in [
        "orascale_poller_consecutive_failures",
        "orascale_poller_streams",
        "orascale_poller_sample_age_seconds",
        "orascale_last_success_timestamp_seconds",
    ] {
        let lines = poller_lines(text, family);
        let set: HashSet<&String> = lines.iter().collect();
        assert_eq!(
            set.len(),
            lines.len(),
            "duplicate series in {family}: {lines:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_is_unique_and_names_the_trigger_using_the_poller() {
    guard(Duration::from_secs(60), async {
        let db = TestDb::new();
        db.set_queued(2);
        let server = start(vec![connection("series", &db.url())], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let t = ("targetQueryValue", "1");

        // One ScaledObject, two triggers that differ only in pollInterval / queryTimeout /
        // ignoreNullValues: distinct pollers with the same default metric name.
        for extra in [
            ("pollInterval", "1s"),
            ("pollInterval", "2s"),
            ("queryTimeout", "3s"),
            ("ignoreNullValues", "true"),
        ] {
            let o = object("twins", &[("query", QUEUED), t, extra]);
            assert_eq!(
                value(
                    c.get_metrics(deadline(metrics_request(&o, "")))
                        .await
                        .unwrap()
                ),
                2.0
            );
        }
        let text = scrape(server.metrics_addr).await;
        assert_unique(&text);
        let twins = poller_lines(&text, "orascale_poller_consecutive_failures")
            .into_iter()
            .filter(|l| l.contains("scaledobject=\"twins\""))
            .count();
        assert_eq!(twins, 4, "{text}");

        // A and B share one trigger; A (its creator) then edits its query.
        let shared = [
            ("query", "select count(*) + 1 from jobs"),
            t,
            ("pollInterval", "1s"),
        ];
        let a = object("a", &shared);
        let b = object("b", &shared);
        for o in [&a, &b] {
            assert_eq!(
                value(
                    c.get_metrics(deadline(metrics_request(o, "")))
                        .await
                        .unwrap()
                ),
                3.0
            );
        }
        let named = |text: &str, who: &str| {
            poller_lines(text, "orascale_poller_consecutive_failures")
                .into_iter()
                .filter(|l| l.contains(&format!("scaledobject=\"{who}\"")))
                .collect::<Vec<_>>()
        };
        let text = scrape(server.metrics_addr).await;
        let before = named(&text, "a");
        assert_eq!(
            before.len(),
            1,
            "the shared poller is named after its creator: {text}"
        );
        assert!(named(&text, "b").is_empty());
        // KEDA's next pass after the edit, more than a second later.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let edited = object(
            "a",
            &[
                ("query", "select count(*) + 2 from jobs"),
                t,
                ("pollInterval", "1s"),
            ],
        );
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&edited, "")))
                    .await
                    .unwrap()
            ),
            4.0
        );
        let text = scrape(server.metrics_addr).await;
        assert_unique(&text);
        let now_a = named(&text, "a");
        assert_eq!(now_a.len(), 1, "only a's new poller names a: {now_a:#?}");
        assert!(
            !now_a.contains(&before[0]),
            "the old poller no longer names a: {now_a:#?}"
        );
        // B still uses the old poller: from its next call on, the poller names B.
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&b, "")))
                    .await
                    .unwrap()
            ),
            3.0
        );
        let text = scrape(server.metrics_addr).await;
        assert_unique(&text);
        let now_b = named(&text, "b");
        assert_eq!(now_b.len(), 1, "{text}");
        let poller_of = |line: &str| line.rsplit_once("poller=").unwrap().1.to_string();
        assert_eq!(
            poller_of(&now_b[0]),
            poller_of(&before[0]),
            "the same poller, renamed"
        );
        server.stop().await;
    })
    .await;
}
