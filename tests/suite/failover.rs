//! Replicas and failover, as the manifests deploy them: two orascale processes behind one name,
//! and a client that, like KEDA's, keeps one connection to the first address that answers.
//! Only the serving replica polls; SIGKILL it, and the next GetMetrics and a reopened
//! StreamIsActive succeed on the other one (the first call within the first-poll wait), and the
//! still-active trigger gets its `true` again.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use orascale::grpc::proto::external_scaler_client::ExternalScalerClient;
use support::*;
use tonic::transport::Channel;

/// pick_first: the first address that accepts a connection.
async fn connect_first(addrs: &[SocketAddr]) -> (SocketAddr, ExternalScalerClient<Channel>) {
    for addr in addrs {
        let endpoint = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(1));
        if let Ok(ch) = endpoint.connect().await {
            return (*addr, ExternalScalerClient::new(ch));
        }
    }
    panic!("no replica answers: {addrs:?}");
}

fn pollers(metrics: SocketAddr) -> f64 {
    metric_value(&http_get(metrics, "/metrics").1, "orascale_pollers", &[]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_when_the_serving_replica_is_killed() {
    let db = TestDb::new();
    db.set_queued(3);
    let dir = tempfile::tempdir().unwrap();
    let jobs = format!("jobs={}", db.url());
    let args = [
        "--connection",
        jobs.as_str(),
        "--min-poll-interval",
        "100ms",
    ];
    let mut first = Binary::start(&args, dir.path());
    let second = Binary::start(&args, dir.path());
    let replicas = [first.grpc, second.grpc];
    guard(Duration::from_secs(60), async {
        let obj = object(
            "worker",
            &[
                ("query", QUEUED),
                ("targetQueryValue", "1"),
                ("pollInterval", "1s"),
            ],
        );
        let (serving, mut c) = connect_first(&replicas).await;
        assert_eq!(serving, first.grpc);
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&obj, "")))
                    .await
                    .unwrap()
            ),
            3.0
        );
        let mut stream = c.stream_is_active(obj.clone()).await.unwrap().into_inner();
        assert!(stream.message().await.unwrap().unwrap().result);
        // Active/standby: only the serving replica polls.
        assert_eq!(pollers(first.metrics), 1.0);
        assert_eq!(pollers(second.metrics), 0.0, "the standby polls nothing");

        first.child.kill().unwrap();
        first.child.wait().unwrap();
        // The old connection fails (KEDA counts an error and rebuilds its client)…
        assert!(
            c.get_metrics(deadline(metrics_request(&obj, "")))
                .await
                .is_err()
        );
        assert!(
            tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .expect("the stream notices")
                .is_err(),
            "the stream ends with an error when its server dies"
        );
        // …and reconnects: the first address that answers is now the standby.
        let started = Instant::now();
        let (serving, mut c) = connect_first(&replicas).await;
        assert_eq!(serving, second.grpc);
        let v = value(
            c.get_metrics(deadline(metrics_request(&obj, "")))
                .await
                .unwrap(),
        );
        assert_eq!(v, 3.0);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the first call on the standby answers within KEDA's deadline"
        );
        let mut stream = c.stream_is_active(obj.clone()).await.unwrap().into_inner();
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a reopened stream gets the still-active `true`")
            .unwrap()
            .unwrap();
        assert!(msg.result);
        assert_eq!(pollers(second.metrics), 1.0);
    })
    .await;
}
