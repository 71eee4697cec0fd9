//! Fault test 7, the soak: 200 pollers at 1 s for 2 minutes against a real PostgreSQL server that is stopped
//! and started twice. In a test binary of its own, so the process-wide counts it compares
//! (tasks, file descriptors, memory) are not disturbed by other tests running beside it.

mod support;

use std::time::{Duration, Instant};

use support::pg::{self, Pg};
use support::*;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_two_hundred_pollers_through_two_outages_leaks_nothing() {
    let Some(pg) = Pg::start_or_skip("soak_two_hundred_pollers_through_two_outages_leaks_nothing")
    else {
        return;
    };
    guard(Duration::from_secs(300), async {
        let admin = pg.setup().await;
        pg::set_queued(&admin, 3).await;
        let server = start(vec![connection("pgsoak", &pg.scaler_url())], engine()).await;
        let c = client(server.grpc_addr).await;
        let objects: Vec<_> = (0..200)
            .map(|i| {
                let q = format!("select count(*) from jobs where id > {}", -i);
                object(&format!("so-{i}"), &[("query", &q), ("targetQueryValue", "1"), ("pollInterval", "1s")])
            })
            .collect();
        // A stream per ScaledObject keeps every poller alive, as external-push triggers do.
        let mut streams = Vec::new();
        for o in &objects {
            streams.push(c.clone().stream_is_active(o.clone()).await.unwrap().into_inner());
        }
        let all_ok = |c: &orascale::grpc::proto::external_scaler_client::ExternalScalerClient<tonic::transport::Channel>| {
            let c = c.clone();
            let objects = objects.clone();
            async move {
                let calls = objects.into_iter().map(|o| {
                    let mut c = c.clone();
                    async move { c.get_metrics(deadline(metrics_request(&o, ""))).await.map(value) }
                });
                futures::future::join_all(calls).await.into_iter().all(|r| matches!(r, Ok(v) if v == 3.0))
            }
        };
        let wait_all_ok = |label: &'static str| {
            let all_ok = &all_ok;
            let c = &c;
            async move {
                let t = Instant::now();
                while !all_ok(c).await {
                    assert!(t.elapsed() < Duration::from_secs(20), "{label}: all 200 recover");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        wait_all_ok("warm-up").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let tasks_before = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        let fds_before = open_fds();
        let rss_before = rss_kib();

        let soak = Instant::now();
        for outage in 0..2 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            pg.stop();
            tokio::time::sleep(Duration::from_secs(20)).await;
            // Streams stay open through the outage and never say false.
            for s in streams.iter_mut().take(20) {
                while let Ok(m) = tokio::time::timeout(Duration::from_millis(10), s.message()).await {
                    let m = m.unwrap_or_else(|e| panic!("outage {outage}: stream failed: {e}"));
                    let m = m.unwrap_or_else(|| panic!("outage {outage}: stream ended"));
                    assert!(m.result, "outage {outage}: false pushed");
                }
            }
            pg.start();
            wait_all_ok("after restart").await;
        }
        while soak.elapsed() < Duration::from_secs(110) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        wait_all_ok("end").await;
        // Let connections that failed during the outage finish closing.
        tokio::time::sleep(Duration::from_secs(3)).await;

        let tasks_after = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        let fds_after = open_fds();
        let rss_after = rss_kib();
        // The setup session died with the server: ask over a new one.
        let admin = pg.admin().await;
        let sessions = pg::scaler_sessions(&admin).await.len();
        eprintln!(
            "soak: tasks {tasks_before}→{tasks_after}, fds {fds_before}→{fds_after}, rss {rss_before}→{rss_after} KiB, sessions {sessions}"
        );
        assert!(tasks_after <= tasks_before + 5, "task leak: {tasks_before} → {tasks_after}");
        assert!(fds_after <= fds_before + 5, "fd leak: {fds_before} → {fds_after}");
        assert!(sessions <= 4, "at most the pool's 4 sessions: {sessions}");
        assert!(rss_after < rss_before + 32 * 1024, "memory grew {rss_before} → {rss_after} KiB");
        let pollers = metric_value(&scrape(server.metrics_addr).await, "orascale_pollers", &[]).unwrap();
        assert!(pollers >= 200.0, "{pollers}");
        drop(streams);
        server.stop().await;
    })
    .await;
}
