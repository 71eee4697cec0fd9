//! The parsed-trigger cache is bounded in bytes (`--max-spec-cache-bytes`): a flood of large,
//! distinct, valid metadata maps through GetMetricSpec (which no poller limit covers) keeps the
//! real binary's memory under a stated bound, and real triggers are answered throughout.

use crate::support;

use std::time::Duration;

use futures::StreamExt;
use support::*;

/// The flood: 2,500 distinct maps of ~96 KiB (six KEDA keys near the 16 KiB value limit), ~240
/// MiB in all. Unbounded (or bounded only in entries, as before) the server kept all of them.
const MAPS: usize = 2_500;
/// The cache's budget for this test, and the bound on the server's growth: the budget plus
/// request buffers and allocator slack.
const CACHE_BYTES: usize = 8 << 20;
const GROWTH_MAX_KIB: u64 = 96 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_distinct_maps_stays_within_the_byte_bound() {
    let db = TestDb::new();
    db.set_queued(7);
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(
        &[
            "--connection",
            &format!("jobs={}", db.url()),
            "--max-spec-cache-bytes",
            &CACHE_BYTES.to_string(),
        ],
        dir.path(),
    );
    let pid = server.child.id();
    guard(Duration::from_secs(240), async {
        let c = client(server.grpc).await;
        let real = object("real", &[("query", QUEUED), ("targetQueryValue", "1")]);
        assert_eq!(value(c.clone().get_metrics(deadline(metrics_request(&real, ""))).await.unwrap()), 7.0);
        let before = rss_of(pid);
        let pad = "p".repeat(16_000);
        let mut peak = before;
        let flood = futures::stream::iter(0..MAPS)
            .map(|i| {
                let mut c = c.clone();
                let pad = pad.clone();
                async move {
                    let tag = format!("{i:06}");
                    let pairs: Vec<(&str, String)> = ["scalerAddress", "caCert", "tlsClientCert", "tlsClientKey", "enableTLS", "unsafeSsl"]
                        .iter()
                        .map(|k| (*k, format!("{tag}{pad}")))
                        .collect();
                    let mut meta: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    meta.extend([("query", QUEUED), ("targetQueryValue", "1")]);
                    let o = object(&format!("flood-{i}"), &meta);
                    c.get_metric_spec(deadline(o)).await.map(|_| ())
                }
            })
            .buffer_unordered(8);
        futures::pin_mut!(flood);
        let mut done = 0;
        while let Some(r) = flood.next().await {
            r.expect("a valid map is answered");
            done += 1;
            if done % 250 == 0 {
                // The real trigger is answered from its cache entry and poller throughout.
                let v = value(c.clone().get_metrics(deadline(metrics_request(&real, ""))).await.unwrap());
                assert_eq!(v, 7.0);
                peak = peak.max(rss_of(pid));
            }
        }
        peak = peak.max(rss_of(pid));
        let grown = peak.saturating_sub(before);
        eprintln!("spec cache flood: {MAPS} maps of ~96 KiB, RSS {before} KiB -> peak {peak} KiB (+{grown} KiB)");
        assert!(grown < GROWTH_MAX_KIB, "RSS grew by {grown} KiB (bound {GROWTH_MAX_KIB} KiB)");
    })
    .await;
    let log = server.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
