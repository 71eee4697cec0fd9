//! A poller that stops must never look alive. A source that panics on its first query kills
//! the poller task on purpose; then, through KEDA's service: GetMetrics/IsActive answer
//! UNAVAILABLE "poller stopped: …" (never the last value as if fresh), the open stream stays open
//! and silent, the registry replaces the poller on the next call, the restart is counted and an
//! ERROR line names it — and the stream moves to the new poller and pushes again.

use crate::support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use orascale::config::EngineConfig;
use orascale::engine::Registry;
use orascale::grpc::Scaler;
use orascale::grpc::proto::external_scaler_server::ExternalScaler;
use orascale::source::{Cell, PoolStatus, ServerInfo, Source, SourceError};
use support::logs::Lines;
use support::*;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Code, Request};

/// Answers 5; panics on the queries whose numbers are in `panic_on` (1-based).
struct Flaky {
    calls: AtomicU32,
    panic_on: Vec<u32>,
}

impl Source for Flaky {
    fn kind(&self) -> &'static str {
        "sqlite"
    }
    fn driver(&self) -> Result<String, SourceError> {
        Ok("flaky".into())
    }
    fn pool(&self) -> PoolStatus {
        PoolStatus::default()
    }
    fn server_info<'a>(&'a self, _: Duration) -> BoxFuture<'a, Result<ServerInfo, SourceError>> {
        async { Err(SourceError::Unsupported("flaky".into())) }.boxed()
    }
    fn query<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<Cell, SourceError>> {
        async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if self.panic_on.contains(&n) {
                panic!("flaky driver blew up on query {n}");
            }
            Ok(Cell::Number(5.0))
        }
        .boxed()
    }
}

/// KEDA's service over a registry whose only connection, `flaky`, is a [`Flaky`] source.
struct Fixture {
    flaky: Arc<Flaky>,
    registry: Arc<Registry>,
    scaler: Scaler,
    shutdown: CancellationToken,
}

fn fixture(panic_on: Vec<u32>) -> Fixture {
    let flaky = Arc::new(Flaky {
        calls: AtomicU32::new(0),
        panic_on,
    });
    let mut sources: BTreeMap<String, Arc<dyn Source>> = BTreeMap::new();
    sources.insert("flaky".into(), flaky.clone());
    let shutdown = CancellationToken::new();
    let engine = EngineConfig {
        min_poll_interval: Duration::from_millis(100),
        ..EngineConfig::default()
    };
    let registry = Registry::new(sources, engine, shutdown.clone(), TaskTracker::new());
    let scaler = Scaler::new(
        registry.clone(),
        [("flaky".to_string(), memory("flaky"))]
            .into_iter()
            .collect(),
        false,
        shutdown.clone(),
    );
    Fixture {
        flaky,
        registry,
        scaler,
        shutdown,
    }
}

#[tokio::test]
async fn a_stopped_poller_answers_unavailable_and_is_replaced() {
    // Single-threaded runtime: every task logs on this thread.
    let log = Lines::capture();

    guard(Duration::from_secs(30), async {
        let Fixture {
            flaky: _,
            registry,
            scaler,
            shutdown,
        } = fixture(vec![1]);
        let obj = object(
            "w",
            &[
                ("query", "select count(*) from jobs"),
                ("targetQueryValue", "1"),
                ("pollInterval", "1s"),
            ],
        );

        // The stream creates the poller, whose first query panics.
        let mut stream = scaler
            .stream_is_active(Request::new(obj.clone()))
            .await
            .unwrap()
            .into_inner();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !log.text().contains("poller stopped") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("an ERROR line names the stopped poller");
        let line = log
            .text()
            .lines()
            .find(|l| l.contains("poller stopped"))
            .unwrap()
            .to_string();
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains("flaky driver blew up on query 1"), "{line}");
        assert!(line.contains("scaledobject=w"), "{line}");

        // The next call finds it stopped: UNAVAILABLE naming why, and a new poller replaces it.
        let e = scaler
            .get_metrics(Request::new(metrics_request(&obj, "")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("poller stopped"), "{}", e.message());
        assert!(e.message().contains("panicked"), "{}", e.message());
        assert_eq!(registry.restarts(), 1);
        assert_eq!(registry.pollers(), 1, "replaced, not added");
        let r = scaler
            .get_metrics(Request::new(metrics_request(&obj, "")))
            .await
            .expect("the new poller answers");
        assert_eq!(r.into_inner().metric_values[0].metric_value_float, 5.0);
        assert!(
            scaler
                .is_active(Request::new(obj.clone()))
                .await
                .unwrap()
                .into_inner()
                .result
        );

        // The stream stayed open and silent; it moves to the new poller and pushes `true`.
        let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream pushes after moving to the new poller")
            .expect("the stream is still open")
            .unwrap();
        assert!(first.result);
        assert_eq!(registry.restarts(), 1, "one restart in all");
        shutdown.cancel();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .unwrap()
                .is_none(),
            "ends with OK at shutdown"
        );
    })
    .await;
}

#[tokio::test]
async fn a_stopped_poller_never_serves_its_last_value() {
    guard(Duration::from_secs(30), async {
        // Good on the first query, panics on the second: the last good value must not be served.
        let Fixture {
            flaky,
            registry: _,
            scaler,
            shutdown,
        } = fixture(vec![2]);
        let obj = object(
            "w",
            &[
                ("query", "select count(*) from jobs"),
                ("targetQueryValue", "1"),
                ("pollInterval", "100ms"),
            ],
        );
        let ok = scaler
            .get_metrics(Request::new(metrics_request(&obj, "")))
            .await
            .unwrap();
        assert_eq!(ok.into_inner().metric_values[0].metric_value_float, 5.0);
        while flaky.calls.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = scaler
            .is_active(Request::new(obj.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("poller stopped"), "{}", e.message());
        shutdown.cancel();
    })
    .await;
}
