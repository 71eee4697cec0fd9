//! The admin HTTP server on `--metrics-listen`: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive) and `/readyz` (this process can serve: started and not shutting
//! down — deliberately not "the database is up", see docs/operations.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Renders the families computed from live state at scrape time.
pub type StateRenderer = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct Admin {
    metrics: PrometheusHandle,
    state: StateRenderer,
    ready: Arc<AtomicBool>,
}

/// Serves until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    state: StateRenderer,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Admin {
            metrics,
            state,
            ready,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn render(State(admin): State<Admin>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        {
            let mut text = admin.metrics.render();
            text.push_str(&(admin.state)());
            text
        },
    )
}

async fn readyz(State(admin): State<Admin>) -> (StatusCode, &'static str) {
    if admin.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
