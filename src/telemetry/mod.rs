//! Logs, metrics and the admin HTTP endpoints.
//!
//! - [`metrics`]: every metric name, its description, and the functions that record it.
//! - [`http`]: `/metrics`, `/healthz` and `/readyz` on `--metrics-listen`.

pub mod http;
pub mod metrics;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global `tracing` subscriber: `RUST_LOG` filtering (default `info`), text or
/// JSON lines on stderr. Safe to call more than once (later calls are no-ops).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
