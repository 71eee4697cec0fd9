//! Wires config → sources → engine → gRPC and admin servers, and owns shutdown, in three
//! steps: decide (a signal or the caller's token), tell (readiness off, one token cancelled:
//! the gRPC server stops accepting, every stream ends with OK, pollers stop), wait (a bounded
//! drain, so an open stream or a stuck client can never keep the process alive).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::config::Config;
use crate::engine::Registry;
use crate::grpc::Scaler;
use crate::source::{self, Source};
use crate::telemetry;

/// The gRPC server's drain after the shutdown signal; the total stays under 5 s.
const GRPC_DRAIN: Duration = Duration::from_secs(3);
/// Pollers and the admin server, after the gRPC drain.
const TASK_DRAIN: Duration = Duration::from_secs(1);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 connection receive window. h2 bounds the small DATA frames it buffers per connection
/// at half this window and answers more with GOAWAY(ENHANCE_YOUR_CALM): each StreamIsActive
/// request is one small frame, so the window sets how many ScaledObjects can (re)open their
/// streams in one burst over KEDA's single connection. 16 MiB allows ~80,000.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot be served (exit 64, like a bad flag).
    #[error("{0}")]
    Config(String),
    #[error(
        "cannot listen on {what} address {addr}: {source}{}",
        bind_hint(source, flag)
    )]
    Bind {
        what: &'static str,
        /// The flag that sets this address.
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    /// 64 (EX_USAGE) for configuration that cannot be served, 69 (EX_UNAVAILABLE) for an
    /// address that cannot be bound (in use, or not permitted).
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 64,
            StartError::Bind { .. } => 69,
        }
    }
}

/// What to do about a listen address that cannot be bound.
fn bind_hint(e: &std::io::Error, flag: &str) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            " (another process listens there, perhaps another orascale: stop it, or choose \
             another address with {flag})"
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!(" (ports below 1024 need privileges: choose another with {flag})")
        }
        std::io::ErrorKind::AddrNotAvailable => {
            format!(" (no interface has this address: choose another with {flag})")
        }
        _ => String::new(),
    }
}

/// A started server.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    shutdown: CancellationToken,
    /// Cancelled to cut the shutdown delay short (a second signal).
    hurry: CancellationToken,
    done: JoinHandle<()>,
}

impl Running {
    /// Cancelling this token ends the shutdown delay at once (the drain still runs).
    pub fn hurry_token(&self) -> CancellationToken {
        self.hurry.clone()
    }

    /// Cancelling this token shuts the server down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Shuts down and waits for the drain to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }

    /// Waits until the server has shut down (after its token is cancelled).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Serves until `signal` completes, then shuts down gracefully. `on_ready` runs once the
/// listeners are bound (the demo prints its instructions there).
pub async fn run(
    config: Config,
    signal: impl Future<Output = ()>,
    on_ready: impl FnOnce(&Running),
) -> Result<(), StartError> {
    let running = start(config).await?;
    on_ready(&running);
    let token = running.shutdown_token();
    let hurry = running.hurry_token();
    tokio::select! {
        _ = signal => tracing::info!("shutdown signal received: draining"),
        _ = token.cancelled() => {}
    }
    // A second SIGTERM/SIGINT while stopping (an operator's second Ctrl-C, a kubelet that
    // gave up waiting) skips what is left of --shutdown-delay.
    let stopping = running.stop();
    tokio::pin!(stopping);
    tokio::select! {
        _ = &mut stopping => {}
        _ = shutdown_signal() => {
            hurry.cancel();
            stopping.await;
        }
    }
    tracing::info!("orascale stopped");
    Ok(())
}

/// Binds both listeners, starts the engine and the servers, and returns at once.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let mut sources: BTreeMap<String, Arc<dyn Source>> = BTreeMap::new();
    for (name, conn) in &config.connections {
        let src = source::open(conn).map_err(|e| StartError::Config(e.to_string()))?;
        match src.driver() {
            Ok(driver) => tracing::info!(connection = %name, kind = src.kind(), url = %conn.url,
                pool_size = conn.pool_size, driver = %driver, "connection configured"),
            // Keep serving: GetMetricSpec works, and GetMetrics/IsActive carry this error.
            Err(e) => tracing::warn!(connection = %name, kind = src.kind(), url = %conn.url,
                error = %e, "connection configured, but its driver cannot be used"),
        }
        sources.insert(name.clone(), src);
    }
    if sources.is_empty() {
        tracing::warn!(
            "no connections configured: every trigger will be refused; add --connection NAME=URL"
        );
    }

    crate::tls::install_crypto_provider();
    let tls = match &config.tls {
        Some(files) => Some(
            crate::tls::Reloading::new(files.clone())
                .map_err(|e| StartError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let grpc_listener = TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "gRPC",
            flag: "--grpc-listen",
            addr: config.grpc_listen,
            source,
        })?;
    let metrics_listener = TcpListener::bind(config.metrics_listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "metrics",
            flag: "--metrics-listen",
            addr: config.metrics_listen,
            source,
        })?;
    let grpc_addr = grpc_listener
        .local_addr()
        .expect("bound listener has an address");
    let metrics_addr = metrics_listener
        .local_addr()
        .expect("bound listener has an address");

    // Everything that can fail is done before the first task starts: a failed start leaves
    // nothing running.
    // Reflection in both versions: grpcurl before 1.9, grpcui and Python's grpcio-reflection
    // still ask `grpc.reflection.v1alpha`; newer tools ask `v1`.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::grpc::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Each version lists only itself by default; list both from either.
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| StartError::Config(format!("gRPC reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| StartError::Config(format!("gRPC reflection: {e}")))?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let metrics = telemetry::metrics::install();
    tracker.spawn(telemetry::metrics::upkeep(
        metrics.clone(),
        telemetry::metrics::UPKEEP_INTERVAL,
        shutdown.clone(),
    ));
    let registry = Registry::new(
        sources,
        config.engine.clone(),
        shutdown.clone(),
        tracker.clone(),
    );
    let scaler = Scaler::new(
        registry.clone(),
        config.connections.clone(),
        config.allow_metadata_credentials,
        shutdown.clone(),
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    for service in ["", "liveness", "readiness", "externalscaler.ExternalScaler"] {
        health
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
    let ready = Arc::new(AtomicBool::new(true));

    let state: telemetry::http::StateRenderer = {
        let registry = registry.clone();
        Arc::new(move || crate::engine::stats::render_registry(&registry))
    };
    tracker.spawn(telemetry::http::serve(
        metrics_listener,
        metrics,
        state,
        ready.clone(),
        shutdown.clone(),
    ));

    let router = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(config.engine.max_concurrent_streams))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(crate::grpc::calls::server(
            scaler,
            crate::grpc::calls::max_request(&config.engine.limits),
        ));
    let server = match tls {
        Some(tls) => {
            tls.clone()
                .watch(config.tls_reload_interval, shutdown.clone(), &tracker);
            let incoming = crate::tls::incoming(grpc_listener, tls, shutdown.clone(), &tracker);
            tokio::spawn(
                router.serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned()),
            )
        }
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        )),
    };

    // Decide: `stop` is cancelled by a signal or the caller; `shutdown` tells everything else.
    let stop = CancellationToken::new();
    let decided = stop.clone();
    let hurry = CancellationToken::new();
    let skip_delay = hurry.clone();
    let delay = config.engine.shutdown_delay;
    let closing = registry.clone();
    let done = tokio::spawn(async move {
        decided.cancelled().await;
        // Tell: readiness first, so Kubernetes stops routing new connections here; keep
        // serving through the optional delay while endpoints update.
        ready.store(false, Ordering::SeqCst);
        for service in ["", "readiness", "externalscaler.ExternalScaler"] {
            health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        if !delay.is_zero() {
            tracing::info!(delay = %humantime::format_duration(delay), "not ready; serving until the shutdown delay has passed (a second signal skips it)");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = skip_delay.cancelled() => tracing::info!("second shutdown signal: the rest of the shutdown delay is skipped"),
            }
        }
        shutdown.cancel();
        // Wait, bounded: streams end themselves on the token; a client that does not read
        // its stream's end cannot hold us.
        let mut server = server;
        match tokio::time::timeout(GRPC_DRAIN, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
            Err(_) => {
                // Dropping a JoinHandle detaches the task: abort it, so no connection outlives us.
                server.abort();
                tracing::warn!("gRPC drain took longer than {GRPC_DRAIN:?}; connections closed");
            }
        }
        tracker.close();
        if tokio::time::timeout(TASK_DRAIN, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("pollers did not stop within {TASK_DRAIN:?}; exiting anyway");
        }
        // Then the sources' own tasks (database connection drivers), also bounded.
        let all = closing.sources().all();
        let sources = futures::future::join_all(all.iter().map(|s| s.close()));
        if tokio::time::timeout(TASK_DRAIN, sources).await.is_err() {
            tracing::warn!(
                "database connections did not close within {TASK_DRAIN:?}; exiting anyway"
            );
        }
    });

    tracing::info!(grpc = %grpc_addr, metrics = %metrics_addr, tls = config.tls.is_some(),
        mtls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()), "orascale ready");
    Ok(Running {
        grpc_addr,
        metrics_addr,
        shutdown: stop,
        hurry,
        done,
    })
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
