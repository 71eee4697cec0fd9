//! Process configuration: command-line flags (each with an environment variable) layered over an
//! optional TOML file, resolved into a typed [`Config`]. Flags override the file; typed defaults
//! fill what neither sets. Every error names the flag or key and the offending value, with
//! credentials redacted, so `main` can print it and exit with status 64.
//!
//! - `flags`: the command line (clap), each flag with its environment variable.
//! - `resolve`: the resolver: the TOML file, and how flags + file + defaults resolve into a [`Config`].
//! - `url`: connection URLs, parsed and shown without passwords.
//! - `validate`: the startup range checks every duration and count goes through.
//! - [`defaults`]: every default in one place.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub mod defaults;
mod flags;
mod resolve;
mod url;
mod validate;

pub use flags::*;

/// The files the server's TLS is made of (loaded and checked by `tls`).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// With it, clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<std::path::PathBuf>,
}

/// The prefix of connections made from metadata credentials; reserved (configured connection
/// names may not start with it).
pub const DYNAMIC_PREFIX: &str = "meta-";

/// Whether a connection name is one made for metadata credentials.
pub fn is_dynamic_name(name: &str) -> bool {
    name.starts_with(DYNAMIC_PREFIX)
}
pub use url::{ConnectionUrl, SqliteTarget, parse_url, redact_url};

/// humantime with a hint for the most common mistake, a bare number.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}: expected a duration with a unit, e.g. 15s, 1m30s, 500ms"))
}

/// The resolved configuration of `orascale serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub connections: BTreeMap<String, ConnectionConfig>,
    pub engine: EngineConfig,
    pub log_format: LogFormat,
    /// TLS on the gRPC port, when configured.
    pub tls: Option<TlsFiles>,
    pub tls_reload_interval: Duration,
    /// Per-ScaledObject credentials in metadata (only with TLS).
    pub allow_metadata_credentials: bool,
    /// Set by `--demo`: the demo database to create before serving.
    pub demo_db: Option<PathBuf>,
}

/// The settings of the polling engine and the push stream.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub default_poll_interval: Duration,
    pub min_poll_interval: Duration,
    pub max_poll_interval: Duration,
    /// The smallest `minWakeInterval` a trigger may ask for.
    pub min_wake_interval: Duration,
    /// Percent (1–100) of each connection's `pool_size` that wake polls may use at once.
    pub wake_poll_share: u8,
    /// Percent (1–100) of each connection's sessions one namespace's interval polls may hold.
    pub namespace_pool_share: u8,
    pub default_query_timeout: Duration,
    pub max_query_timeout: Duration,
    pub idle_timeout: Duration,
    pub stream_resend_interval: Duration,
    pub stale_after_polls: u32,
    pub first_result_wait: Duration,
    pub max_concurrent_streams: u32,
    /// Between readiness going NOT_SERVING and the servers stopping, on SIGTERM.
    pub shutdown_delay: Duration,
    pub limits: Limits,
}

/// Bounds on what ScaledObjects can make the server hold; each is an error past its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_pollers: usize,
    pub max_pollers_per_namespace: usize,
    pub max_streams: usize,
    pub max_query_length: usize,
    /// Bytes of parsed triggers the spec cache may hold.
    pub max_spec_cache_bytes: usize,
    pub max_metadata_entries: usize,
    pub max_metadata_key_length: usize,
    pub max_metadata_value_length: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pollers: defaults::MAX_POLLERS,
            max_pollers_per_namespace: defaults::MAX_POLLERS_PER_NAMESPACE,
            max_streams: defaults::MAX_STREAMS,
            max_query_length: defaults::MAX_QUERY_LENGTH,
            max_spec_cache_bytes: defaults::MAX_SPEC_CACHE_BYTES,
            max_metadata_entries: defaults::MAX_METADATA_ENTRIES,
            max_metadata_key_length: defaults::MAX_METADATA_KEY_LENGTH,
            max_metadata_value_length: defaults::MAX_METADATA_VALUE_LENGTH,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            default_poll_interval: defaults::POLL_INTERVAL,
            min_poll_interval: defaults::MIN_POLL_INTERVAL,
            max_poll_interval: defaults::MAX_POLL_INTERVAL,
            min_wake_interval: defaults::MIN_WAKE_INTERVAL,
            wake_poll_share: defaults::WAKE_POLL_SHARE,
            namespace_pool_share: defaults::NAMESPACE_POOL_SHARE,
            default_query_timeout: defaults::QUERY_TIMEOUT,
            max_query_timeout: defaults::MAX_QUERY_TIMEOUT,
            idle_timeout: defaults::IDLE_TIMEOUT,
            stream_resend_interval: defaults::STREAM_RESEND_INTERVAL,
            stale_after_polls: defaults::STALE_AFTER_POLLS,
            first_result_wait: defaults::FIRST_RESULT_WAIT,
            max_concurrent_streams: defaults::MAX_CONCURRENT_STREAMS,
            shutdown_delay: defaults::SHUTDOWN_DELAY,
            limits: Limits::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionConfig {
    pub name: String,
    pub url: ConnectionUrl,
    /// Queries of this connection that may run at once.
    pub pool_size: usize,
    /// The longest a poll waits for a free session (never past its query timeout).
    pub pool_timeout: Option<Duration>,
    /// A file holding the password (a mounted Kubernetes Secret); re-read for every new
    /// database session, so a rotated secret is picked up without a restart.
    pub password_file: Option<PathBuf>,
    /// PEM file of extra CA certificates to trust for TLS to the database.
    pub ca_file: Option<PathBuf>,
    /// Namespaces whose ScaledObjects may use this connection (`None`: all). An entry ending in
    /// `*` is a prefix.
    pub namespaces: Option<Vec<String>>,
    /// Overrides the server's minimum `pollInterval` for this connection.
    pub min_poll_interval: Option<Duration>,
    /// The largest `queryTimeout` a trigger may ask for on this connection.
    pub max_query_timeout: Option<Duration>,
    /// Oracle: allow `table@dblink` in queries.
    pub allow_dblinks: bool,
}

impl ConnectionConfig {
    /// A connection with default settings.
    pub fn new(name: impl Into<String>, url: ConnectionUrl) -> Self {
        ConnectionConfig {
            name: name.into(),
            url,
            pool_size: defaults::POOL_SIZE,
            pool_timeout: None,
            password_file: None,
            ca_file: None,
            namespaces: None,
            min_poll_interval: None,
            max_query_timeout: None,
            allow_dblinks: false,
        }
    }

    /// Whether ScaledObjects of `namespace` may use this connection.
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        match &self.namespaces {
            None => true,
            Some(list) => list.iter().any(|n| match n.strip_suffix('*') {
                Some(prefix) => namespace.starts_with(prefix),
                None => n == namespace,
            }),
        }
    }

    /// `ORASCALE_<NAME>_PASSWORD`: the environment variable that may hold this connection's
    /// password (name upper-cased, other characters as `_`).
    pub fn password_env(&self) -> String {
        let name: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("ORASCALE_{name}_PASSWORD")
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}
