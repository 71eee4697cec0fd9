//! Process configuration: command-line flags (each with an environment variable) layered over an
//! optional TOML file, resolved into a typed [`Config`]. Flags override the file; typed defaults
//! fill what neither sets. Every error names the flag or key and the offending value, with
//! credentials redacted, so `main` can print it and exit with status 64.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

/// Defaults, in one place so `--help`, docs and code agree.
pub mod defaults {
    use std::time::Duration;
    pub const GRPC_LISTEN: &str = "0.0.0.0:9090";
    pub const METRICS_LISTEN: &str = "0.0.0.0:9464";
    pub const POLL_INTERVAL: Duration = Duration::from_secs(10);
    pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
    pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
    pub const STREAM_RESEND_INTERVAL: Duration = Duration::from_secs(30);
    pub const STALE_AFTER_POLLS: u32 = 3;
    pub const FIRST_RESULT_WAIT: Duration = Duration::from_secs(2);
    pub const POOL_SIZE: usize = 4;
    pub const MAX_CONCURRENT_STREAMS: u32 = 100_000;
    pub const SHUTDOWN_DELAY: Duration = Duration::ZERO;
    pub const MAX_POLLERS: usize = 10_000;
    pub const MAX_POLLERS_PER_NAMESPACE: usize = 1_000;
    pub const MAX_STREAMS: usize = 50_000;
    pub const MAX_QUERY_LENGTH: usize = 8 * 1024;
    pub const MAX_METADATA_ENTRIES: usize = 32;
    pub const MAX_METADATA_KEY_LENGTH: usize = 128;
    pub const MAX_METADATA_VALUE_LENGTH: usize = 16 * 1024;
    pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
    /// The longest `pollInterval` a trigger may ask for.
    pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(24 * 3600);
    /// The longest `queryTimeout` a trigger may ask for.
    pub const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(300);
    /// No duration setting may exceed this (a year): every deadline the process computes from
    /// one stays far inside what `Instant` can hold.
    pub const DURATION_CEILING: Duration = Duration::from_secs(365 * 24 * 3600);
    /// No poll interval, timeout or delay of the server's own may exceed a day.
    pub const SERVER_DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
    /// Most sessions per connection pool.
    pub const MAX_POOL_SIZE: usize = 1_000;
    /// Most poll intervals a failed poller's last good value may be served for.
    pub const MAX_STALE_AFTER_POLLS: u32 = 1_000;
    pub const DEMO_DB: &str = "orascale-demo.db";
}

#[derive(Debug, Parser)]
#[command(
    name = "orascale",
    version,
    about = "KEDA external scaler: scale Kubernetes workloads on the result of a SQL query",
    long_about = "KEDA external scaler: scale Kubernetes workloads on the result of a SQL query \
                  against Oracle Database (and PostgreSQL or SQLite).\n\n\
                  Run `orascale serve --demo` to try it on an embedded SQLite database."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve KEDA's ExternalScaler gRPC API.
    Serve(ServeArgs),
    /// Call a running scaler like KEDA does and print what it answers.
    Probe(ProbeArgs),
    /// Check every configured connection: driver, connect, server version, round-trip.
    Check(CheckArgs),
    /// Change the rows of the --demo database, to watch the scaler react.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The same configuration as `serve` (flags, environment, --config file)
    #[command(flatten)]
    pub serve: ServeArgs,

    /// Also run this query and print the value a trigger would report
    #[arg(long, value_name = "SQL")]
    pub query: Option<String>,

    /// Check only this connection
    #[arg(long, value_name = "NAME")]
    pub only: Option<String>,

    /// Print one JSON document instead of a table
    #[arg(long)]
    pub json: bool,

    /// Time allowed for each step (connect, version, query)
    #[arg(long, default_value = "10s", value_parser = parse_duration_arg)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// Address of the gRPC server KEDA calls [default: 0.0.0.0:9090]
    #[arg(long, env = "ORASCALE_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc_listen: Option<SocketAddr>,

    /// Address of the admin HTTP server: /metrics, /healthz, /readyz [default: 0.0.0.0:9464]
    #[arg(long, env = "ORASCALE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// A database connection, NAME=URL; repeatable. URL: sqlite:PATH, sqlite::memory:,
    /// postgres://…, oracle://USER@HOST[:PORT]/SERVICE. The environment form is comma-separated.
    #[arg(
        long = "connection",
        env = "ORASCALE_CONNECTIONS",
        value_name = "NAME=URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub connections: Vec<String>,

    /// TOML file with any of these settings and per-connection tables; flags override it.
    #[arg(long, env = "ORASCALE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Poll interval of triggers without pollInterval [default: 10s]
    #[arg(long, env = "ORASCALE_DEFAULT_POLL_INTERVAL", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub default_poll_interval: Option<Duration>,

    /// Smallest pollInterval a trigger may ask for [default: 1s]
    #[arg(long, env = "ORASCALE_MIN_POLL_INTERVAL", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub min_poll_interval: Option<Duration>,

    /// Longest pollInterval a trigger may ask for; above it is INVALID_ARGUMENT [default: 24h]
    #[arg(long, env = "ORASCALE_MAX_POLL_INTERVAL", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub max_poll_interval: Option<Duration>,

    /// Longest queryTimeout a trigger may ask for; above it is INVALID_ARGUMENT [default: 5m]
    #[arg(long, env = "ORASCALE_MAX_QUERY_TIMEOUT", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub max_query_timeout: Option<Duration>,

    /// Query timeout of triggers without queryTimeout; enforced by the database [default: 5s]
    #[arg(long, env = "ORASCALE_DEFAULT_QUERY_TIMEOUT", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub default_query_timeout: Option<Duration>,

    /// A poller with no open stream and no call for this long is stopped [default: 10m]
    #[arg(long, env = "ORASCALE_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub idle_timeout: Option<Duration>,

    /// While active, StreamIsActive re-sends `true` this often [default: 30s]
    #[arg(long, env = "ORASCALE_STREAM_RESEND_INTERVAL", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub stream_resend_interval: Option<Duration>,

    /// After a failed poll, the last good value is served while younger than this many poll
    /// intervals; then GetMetrics/IsActive answer UNAVAILABLE [default: 3]
    #[arg(long, env = "ORASCALE_STALE_AFTER_POLLS", value_name = "N")]
    pub stale_after_polls: Option<u32>,

    /// On SIGTERM, stay up this long after readiness turns NOT_SERVING, so endpoints update
    /// before streams end; the exit then follows within 5 s [default: 0s]
    #[arg(long, env = "ORASCALE_SHUTDOWN_DELAY", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub shutdown_delay: Option<Duration>,

    /// Most pollers (distinct triggers) in total; past it new triggers get RESOURCE_EXHAUSTED [default: 10000]
    #[arg(long, env = "ORASCALE_MAX_POLLERS", value_name = "N")]
    pub max_pollers: Option<usize>,

    /// Most pollers created by ScaledObjects of one namespace [default: 1000]
    #[arg(long, env = "ORASCALE_MAX_POLLERS_PER_NAMESPACE", value_name = "N")]
    pub max_pollers_per_namespace: Option<usize>,

    /// Most open StreamIsActive streams [default: 50000]
    #[arg(long, env = "ORASCALE_MAX_STREAMS", value_name = "N")]
    pub max_streams: Option<usize>,

    /// Longest `query`, in bytes [default: 8192]
    #[arg(long, env = "ORASCALE_MAX_QUERY_LENGTH", value_name = "BYTES")]
    pub max_query_length: Option<usize>,

    /// Accept per-ScaledObject credentials (connectionFromEnv, userFromEnv, passwordFromEnv
    /// metadata keys); requires TLS, since they travel in every request [default: off]
    #[arg(long, env = "ORASCALE_ALLOW_METADATA_CREDENTIALS")]
    pub allow_metadata_credentials: bool,

    /// PEM certificate chain for TLS on the gRPC port (re-read when the file changes)
    #[arg(
        long,
        env = "ORASCALE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert
    #[arg(
        long,
        env = "ORASCALE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: clients must present a certificate it signed (mTLS)
    #[arg(long, env = "ORASCALE_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the TLS files are checked for changes [default: 10s]
    #[arg(long, env = "ORASCALE_TLS_RELOAD_INTERVAL", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub tls_reload_interval: Option<Duration>,

    /// Log format [default: text]
    #[arg(long, env = "ORASCALE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Create ./orascale-demo.db (SQLite, table `jobs`) if missing and serve it as connection `demo`.
    #[arg(long)]
    pub demo: bool,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Scaler address, host:port or http://host:port
    #[arg(
        long,
        env = "ORASCALE_PROBE_ADDR",
        default_value = "http://127.0.0.1:9090"
    )]
    pub addr: String,

    /// ScaledObject name sent with each call
    #[arg(long, default_value = "probe")]
    pub name: String,

    /// ScaledObject namespace sent with each call
    #[arg(long, default_value = "default")]
    pub namespace: String,

    /// Trigger metadata KEY=VALUE; repeatable (the trigger's `metadata:` map)
    #[arg(short = 'm', long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,

    /// Keep StreamIsActive open and print each message with a timestamp
    #[arg(long)]
    pub watch: bool,

    /// Deadline of each unary call (KEDA uses 3s on its HPA path)
    #[arg(long, default_value = "3s", value_parser = parse_duration_arg)]
    pub timeout: Duration,

    /// Also print what KEDA and the HPA would do with the value at this many replicas
    #[arg(long, value_name = "N")]
    pub current_replicas: Option<u32>,

    /// The trigger's metricType, for --current-replicas (KEDA's default: AverageValue)
    #[arg(long, value_enum, default_value = "average-value")]
    pub metric_type: MetricType,
}

/// A trigger's `metricType` (a ScaledObject field, so the probe has to be told).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricType {
    /// desiredReplicas = ceil(value / target)
    AverageValue,
    /// desiredReplicas = ceil(currentReplicas × value / target)
    Value,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The demo database file
    #[arg(long, default_value = defaults::DEMO_DB)]
    pub db: PathBuf,

    #[command(subcommand)]
    pub action: DemoAction,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum DemoAction {
    /// Insert N queued jobs
    Enqueue { n: u32 },
    /// Mark every queued job done
    Drain,
    /// Print the number of queued jobs
    Count,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

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
    pub tls: Option<crate::tls::TlsFiles>,
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

/// A parsed connection URL. `Debug` and `Display` never show a password.
#[derive(Clone, PartialEq)]
pub enum ConnectionUrl {
    Sqlite(SqliteTarget),
    Postgres {
        url: String,
    },
    Oracle {
        user: String,
        password: Option<String>,
        /// EZConnect `//host:port/service`.
        connect_string: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum SqliteTarget {
    File(PathBuf),
    Memory,
}

impl ConnectionUrl {
    /// The source kind, as used in logs, metrics and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectionUrl::Sqlite(_) => "sqlite",
            ConnectionUrl::Postgres { .. } => "postgres",
            ConnectionUrl::Oracle { .. } => "oracle",
        }
    }
}

impl ConnectionUrl {
    /// The same database with other credentials (per-ScaledObject credentials). `None` keeps
    /// what the URL has.
    pub fn with_credentials(&self, user: Option<&str>, password: Option<&str>) -> ConnectionUrl {
        match self {
            ConnectionUrl::Oracle {
                user: u,
                password: p,
                connect_string,
            } => ConnectionUrl::Oracle {
                user: user.map_or_else(|| u.clone(), str::to_string),
                password: password.map(str::to_string).or_else(|| p.clone()),
                connect_string: connect_string.clone(),
            },
            ConnectionUrl::Postgres { url } => {
                let Some((scheme, rest)) = url.split_once("://") else {
                    return self.clone();
                };
                let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                let (authority, tail) = rest.split_at(authority_end);
                let (userinfo, host) = match authority.rsplit_once('@') {
                    Some((ui, h)) => (Some(ui), h),
                    None => (None, authority),
                };
                let (old_user, old_pw) = match userinfo {
                    Some(ui) => match ui.split_once(':') {
                        Some((u, p)) => (percent_decode(u).unwrap_or_default(), percent_decode(p)),
                        None => (percent_decode(ui).unwrap_or_default(), None),
                    },
                    None => (String::new(), None),
                };
                let user = user.map_or(old_user, str::to_string);
                let password = password.map(str::to_string).or(old_pw);
                let userinfo = match password {
                    Some(p) => format!("{}:{}@", percent_encode(&user), percent_encode(&p)),
                    None if user.is_empty() => String::new(),
                    None => format!("{}@", percent_encode(&user)),
                };
                ConnectionUrl::Postgres {
                    url: format!("{scheme}://{userinfo}{host}{tail}"),
                }
            }
            ConnectionUrl::Sqlite(_) => self.clone(),
        }
    }

    /// Everything that identifies the database and its credentials, for keyed hashing only:
    /// never print it.
    pub fn identity_for_hashing(&self) -> String {
        match self {
            ConnectionUrl::Sqlite(SqliteTarget::Memory) => "sqlite::memory:".into(),
            ConnectionUrl::Sqlite(SqliteTarget::File(p)) => format!("sqlite:{}", p.display()),
            ConnectionUrl::Postgres { url } => url.clone(),
            ConnectionUrl::Oracle {
                user,
                password,
                connect_string,
            } => {
                format!(
                    "oracle\u{0}{user}\u{0}{}\u{0}{connect_string}",
                    password.as_deref().unwrap_or("")
                )
            }
        }
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl fmt::Display for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionUrl::Sqlite(SqliteTarget::Memory) => f.write_str("sqlite::memory:"),
            ConnectionUrl::Sqlite(SqliteTarget::File(p)) => write!(f, "sqlite:{}", p.display()),
            ConnectionUrl::Postgres { url } => f.write_str(&redact_url(url)),
            ConnectionUrl::Oracle {
                user,
                password,
                connect_string,
            } => {
                let pw = if password.is_some() { ":***" } else { "" };
                write!(
                    f,
                    "oracle://{user}{pw}@{}",
                    connect_string.trim_start_matches('/')
                )
            }
        }
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionUrl({self})")
    }
}

/// Replaces the password of `scheme://user:password@host…` with `***`; other text is kept.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        // Not a URL we understand: if anything could be credentials, hide all of it.
        return match (url.split_once(':'), url.rfind('@')) {
            (Some((scheme, _)), Some(at)) => format!("{scheme}:***{}", &url[at..]),
            _ => url.to_string(),
        };
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    let masked = if userinfo.contains(':') {
        format!("{user}:***")
    } else {
        user.to_string()
    };
    format!("{}://{masked}{}", &url[..scheme_end], &rest[at..])
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

/// The TOML file. Unknown keys are errors, so a typo does not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    grpc_listen: Option<String>,
    metrics_listen: Option<String>,
    default_poll_interval: Option<String>,
    min_poll_interval: Option<String>,
    max_poll_interval: Option<String>,
    default_query_timeout: Option<String>,
    max_query_timeout: Option<String>,
    idle_timeout: Option<String>,
    stream_resend_interval: Option<String>,
    stale_after_polls: Option<u32>,
    shutdown_delay: Option<String>,
    max_pollers: Option<usize>,
    max_pollers_per_namespace: Option<usize>,
    max_streams: Option<usize>,
    max_query_length: Option<usize>,
    max_metadata_entries: Option<usize>,
    max_metadata_key_length: Option<usize>,
    max_metadata_value_length: Option<usize>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_reload_interval: Option<String>,
    allow_metadata_credentials: Option<bool>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    connections: BTreeMap<String, FileConnection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConnection {
    url: Option<String>,
    /// Instead of `url` for Oracle: `kind = "oracle"`, `user`, `connect_string` (EZConnect, a
    /// TNS alias or a full descriptor).
    kind: Option<String>,
    user: Option<String>,
    connect_string: Option<String>,
    pool_size: Option<usize>,
    pool_timeout: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    namespaces: Option<Vec<String>>,
    min_poll_interval: Option<String>,
    max_query_timeout: Option<String>,
    allow_dblinks: Option<bool>,
}

impl ServeArgs {
    /// Reads the config file (if any) and resolves flags + file + defaults into a [`Config`].
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        self.resolve_with(file)
    }

    fn resolve_with(&self, file: FileConfig) -> Result<Config, ConfigError> {
        let addr =
            |flag: Option<SocketAddr>, file: &Option<String>, key: &str, default: &str| match (
                flag, file,
            ) {
                (Some(a), _) => Ok(a),
                (None, Some(s)) => s.trim().parse().map_err(|e| {
                    invalid(
                        key,
                        format!("value {s:?} is not a socket address ({e}), e.g. 0.0.0.0:9090"),
                    )
                }),
                (None, None) => Ok(default.parse().expect("default address parses")),
            };
        let duration = |flag: Option<Duration>,
                        file: &Option<String>,
                        key: &str,
                        default: Duration| match (flag, file) {
            (Some(d), _) => Ok(d),
            (None, Some(s)) => parse_duration(s)
                .map_err(|e| invalid(key, format!("value {s:?} is not a duration: {e}"))),
            (None, None) => Ok(default),
        };

        let engine = EngineConfig {
            default_poll_interval: duration(
                self.default_poll_interval,
                &file.default_poll_interval,
                "default_poll_interval",
                defaults::POLL_INTERVAL,
            )?,
            min_poll_interval: duration(
                self.min_poll_interval,
                &file.min_poll_interval,
                "min_poll_interval",
                defaults::MIN_POLL_INTERVAL,
            )?,
            max_poll_interval: duration(
                self.max_poll_interval,
                &file.max_poll_interval,
                "max_poll_interval",
                defaults::MAX_POLL_INTERVAL,
            )?,
            default_query_timeout: duration(
                self.default_query_timeout,
                &file.default_query_timeout,
                "default_query_timeout",
                defaults::QUERY_TIMEOUT,
            )?,
            max_query_timeout: duration(
                self.max_query_timeout,
                &file.max_query_timeout,
                "max_query_timeout",
                defaults::MAX_QUERY_TIMEOUT,
            )?,
            idle_timeout: duration(
                self.idle_timeout,
                &file.idle_timeout,
                "idle_timeout",
                defaults::IDLE_TIMEOUT,
            )?,
            stream_resend_interval: duration(
                self.stream_resend_interval,
                &file.stream_resend_interval,
                "stream_resend_interval",
                defaults::STREAM_RESEND_INTERVAL,
            )?,
            shutdown_delay: duration(
                self.shutdown_delay,
                &file.shutdown_delay,
                "shutdown_delay",
                defaults::SHUTDOWN_DELAY,
            )?,
            stale_after_polls: self
                .stale_after_polls
                .or(file.stale_after_polls)
                .unwrap_or(defaults::STALE_AFTER_POLLS),
            limits: Limits {
                max_pollers: self
                    .max_pollers
                    .or(file.max_pollers)
                    .unwrap_or(defaults::MAX_POLLERS),
                max_pollers_per_namespace: self
                    .max_pollers_per_namespace
                    .or(file.max_pollers_per_namespace)
                    .unwrap_or(defaults::MAX_POLLERS_PER_NAMESPACE),
                max_streams: self
                    .max_streams
                    .or(file.max_streams)
                    .unwrap_or(defaults::MAX_STREAMS),
                max_query_length: self
                    .max_query_length
                    .or(file.max_query_length)
                    .unwrap_or(defaults::MAX_QUERY_LENGTH),
                max_metadata_entries: file
                    .max_metadata_entries
                    .unwrap_or(defaults::MAX_METADATA_ENTRIES),
                max_metadata_key_length: file
                    .max_metadata_key_length
                    .unwrap_or(defaults::MAX_METADATA_KEY_LENGTH),
                max_metadata_value_length: file
                    .max_metadata_value_length
                    .unwrap_or(defaults::MAX_METADATA_VALUE_LENGTH),
            },
            ..EngineConfig::default()
        };
        validate_engine(&engine)?;

        let mut connections = BTreeMap::new();
        for (name, conn) in &file.connections {
            let key = format!("connections.{name}");
            validate_name(name).map_err(|m| invalid(&key, m))?;
            let url = file_connection_url(&key, conn)?;
            let pool_size = conn.pool_size.unwrap_or(defaults::POOL_SIZE);
            if !(1..=defaults::MAX_POOL_SIZE).contains(&pool_size) {
                return Err(invalid(
                    format!("{key}.pool_size"),
                    format!(
                        "value {pool_size} must be between 1 and {}",
                        defaults::MAX_POOL_SIZE
                    ),
                ));
            }
            let per_conn = |value: &Option<String>, field: &str| {
                value
                    .as_deref()
                    .map(|v| {
                        parse_duration(v).map_err(|e| {
                            invalid(
                                format!("{key}.{field}"),
                                format!("value {v:?} is not a duration: {e}"),
                            )
                        })
                    })
                    .transpose()
            };
            let min_poll_interval = per_conn(&conn.min_poll_interval, "min_poll_interval")?;
            let max_query_timeout = per_conn(&conn.max_query_timeout, "max_query_timeout")?;
            let pool_timeout = per_conn(&conn.pool_timeout, "pool_timeout")?;
            let within = |d: Option<Duration>, field: &str, max: Duration, max_name: &str| match d {
                Some(d) => in_range(d, &format!("{key}.{field}"), max, max_name),
                None => Ok(()),
            };
            within(
                min_poll_interval,
                "min_poll_interval",
                engine.max_poll_interval,
                "max_poll_interval",
            )?;
            within(
                max_query_timeout,
                "max_query_timeout",
                engine.max_query_timeout,
                "max_query_timeout",
            )?;
            within(
                pool_timeout,
                "pool_timeout",
                engine.max_query_timeout,
                "max_query_timeout",
            )?;
            if let Some(list) = &conn.namespaces
                && list.iter().any(|n| n.trim().is_empty())
            {
                return Err(invalid(
                    format!("{key}.namespaces"),
                    "contains an empty name",
                ));
            }
            connections.insert(
                name.clone(),
                ConnectionConfig {
                    pool_size,
                    pool_timeout,
                    password_file: conn.password_file.clone(),
                    ca_file: conn.ca_file.clone(),
                    namespaces: conn.namespaces.clone(),
                    min_poll_interval,
                    max_query_timeout,
                    allow_dblinks: conn.allow_dblinks.unwrap_or(false),
                    ..ConnectionConfig::new(name.clone(), url)
                },
            );
        }
        for raw in &self.connections {
            let (name, url) = parse_connection_flag(raw)?;
            // A flag for a name the file also has overrides only its URL.
            let entry = connections
                .entry(name.clone())
                .or_insert_with(|| ConnectionConfig::new(name.clone(), url.clone()));
            entry.url = url;
        }

        let tls = self.tls_files(&file)?;
        let allow_metadata_credentials =
            self.allow_metadata_credentials || file.allow_metadata_credentials.unwrap_or(false);
        if allow_metadata_credentials && tls.is_none() {
            return Err(invalid(
                "--allow-metadata-credentials",
                "needs TLS (--tls-cert and --tls-key): the credentials travel in every request",
            ));
        }
        let demo_db = self.demo.then(|| PathBuf::from(defaults::DEMO_DB));
        if let Some(path) = &demo_db {
            if connections.contains_key("demo") {
                return Err(invalid(
                    "--demo",
                    "a connection named \"demo\" is already configured; --demo adds its own",
                ));
            }
            connections.insert(
                "demo".into(),
                ConnectionConfig::new(
                    "demo",
                    ConnectionUrl::Sqlite(SqliteTarget::File(path.clone())),
                ),
            );
        }

        let tls_reload_interval = duration(
            self.tls_reload_interval,
            &file.tls_reload_interval,
            "tls_reload_interval",
            defaults::TLS_RELOAD_INTERVAL,
        )?;
        in_range(
            tls_reload_interval,
            "tls_reload_interval",
            defaults::SERVER_DURATION_MAX,
            "a day",
        )?;

        Ok(Config {
            grpc_listen: addr(
                self.grpc_listen,
                &file.grpc_listen,
                "grpc_listen",
                defaults::GRPC_LISTEN,
            )?,
            metrics_listen: addr(
                self.metrics_listen,
                &file.metrics_listen,
                "metrics_listen",
                defaults::METRICS_LISTEN,
            )?,
            connections,
            engine,
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            tls: tls.clone(),
            tls_reload_interval,
            allow_metadata_credentials,
            demo_db,
        })
    }
}

fn file_connection_url(key: &str, conn: &FileConnection) -> Result<ConnectionUrl, ConfigError> {
    match (&conn.url, conn.kind.as_deref()) {
        (Some(url), None) => parse_url(url).map_err(|m| invalid(format!("{key}.url"), m)),
        (Some(_), Some(_)) => Err(invalid(
            format!("{key}.kind"),
            "give either url or kind (with user and connect_string), not both",
        )),
        (None, Some("oracle")) => {
            let connect_string = conn
                .connect_string
                .clone()
                .filter(|c| !c.trim().is_empty())
                .ok_or_else(|| {
                    invalid(
                        format!("{key}.connect_string"),
                        "is required with kind = \"oracle\"",
                    )
                })?;
            Ok(ConnectionUrl::Oracle {
                user: conn.user.clone().unwrap_or_default(),
                password: None,
                connect_string,
            })
        }
        (None, Some(other)) => Err(invalid(
            format!("{key}.kind"),
            format!("value {other:?} is not supported here; use kind = \"oracle\" or a url"),
        )),
        (None, None) => Err(invalid(format!("{key}.url"), "is required")),
    }
}

impl ServeArgs {
    fn tls_files(&self, file: &FileConfig) -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
        let cert = self.tls_cert.clone().or_else(|| file.tls_cert.clone());
        let key = self.tls_key.clone().or_else(|| file.tls_key.clone());
        let client_ca = self
            .tls_client_ca
            .clone()
            .or_else(|| file.tls_client_ca.clone());
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(crate::tls::TlsFiles {
                cert,
                key,
                client_ca,
            })),
            (None, None) if client_ca.is_some() => Err(invalid(
                "--tls-client-ca",
                "needs --tls-cert and --tls-key: mTLS is on top of TLS",
            )),
            (None, None) => Ok(None),
            (Some(_), None) => Err(invalid("--tls-key", "is required with --tls-cert")),
            (None, Some(_)) => Err(invalid("--tls-cert", "is required with --tls-key")),
        }
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        // toml's message quotes the offending line; a password would be in a URL value, so
        // drop the quoted source when it might hold one.
        message: if text.contains("://") {
            e.message().to_string()
        } else {
            e.to_string()
        },
    })
}

/// `d` must be above zero and at most `max` (named `max_name` in the message).
fn in_range(d: Duration, key: &str, max: Duration, max_name: &str) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(invalid(key, "must be greater than 0"));
    }
    at_most(d, key, max, max_name)
}

/// `d` must be at most `max` (named `max_name` in the message).
fn at_most(d: Duration, key: &str, max: Duration, max_name: &str) -> Result<(), ConfigError> {
    if d > max {
        return Err(invalid(
            key,
            format!(
                "value {} is above {max_name} ({})",
                humantime::format_duration(d),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(())
}

fn validate_engine(e: &EngineConfig) -> Result<(), ConfigError> {
    let day = defaults::SERVER_DURATION_MAX;
    let ceiling = defaults::DURATION_CEILING;
    in_range(e.max_poll_interval, "max_poll_interval", ceiling, "a year")?;
    in_range(e.max_query_timeout, "max_query_timeout", day, "a day")?;
    in_range(
        e.min_poll_interval,
        "min_poll_interval",
        e.max_poll_interval,
        "max_poll_interval",
    )?;
    in_range(
        e.default_poll_interval,
        "default_poll_interval",
        e.max_poll_interval,
        "max_poll_interval",
    )?;
    in_range(
        e.default_query_timeout,
        "default_query_timeout",
        e.max_query_timeout,
        "max_query_timeout",
    )?;
    in_range(e.idle_timeout, "idle_timeout", ceiling, "a year")?;
    in_range(
        e.stream_resend_interval,
        "stream_resend_interval",
        day,
        "a day",
    )?;
    at_most(e.shutdown_delay, "shutdown_delay", day, "a day")?;
    if e.default_poll_interval < e.min_poll_interval {
        return Err(invalid(
            "default_poll_interval",
            format!(
                "value {} is below min_poll_interval {}",
                humantime::format_duration(e.default_poll_interval),
                humantime::format_duration(e.min_poll_interval)
            ),
        ));
    }
    if e.stale_after_polls > defaults::MAX_STALE_AFTER_POLLS {
        return Err(invalid(
            "stale_after_polls",
            format!(
                "value {} must be at most {}",
                e.stale_after_polls,
                defaults::MAX_STALE_AFTER_POLLS
            ),
        ));
    }
    if e.stale_after_polls == 0 {
        return Err(invalid("stale_after_polls", "value 0 must be at least 1"));
    }
    let l = &e.limits;
    for (key, v) in [
        ("max_pollers", l.max_pollers),
        ("max_pollers_per_namespace", l.max_pollers_per_namespace),
        ("max_streams", l.max_streams),
        ("max_query_length", l.max_query_length),
        ("max_metadata_entries", l.max_metadata_entries),
        ("max_metadata_key_length", l.max_metadata_key_length),
        ("max_metadata_value_length", l.max_metadata_value_length),
    ] {
        if v == 0 {
            return Err(invalid(key, "value 0 must be at least 1"));
        }
    }
    Ok(())
}

/// Connection names appear in metadata, metric labels and logs.
fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !ok {
        return Err(format!(
            "connection name {name:?} must be 1-63 characters of [A-Za-z0-9._-]"
        ));
    }
    if crate::metadata::is_dynamic_name(name) {
        return Err(format!(
            "connection name {name:?} starts with {:?}, which is reserved for connections made from metadata credentials",
            crate::metadata::DYNAMIC_PREFIX
        ));
    }
    Ok(())
}

fn parse_connection_flag(raw: &str) -> Result<(String, ConnectionUrl), ConfigError> {
    let raw = raw.trim();
    let Some((name, url)) = raw.split_once('=') else {
        return Err(invalid(
            "--connection",
            format!(
                "value {:?} must be NAME=URL, e.g. orders=sqlite:/data/orders.db",
                redact_url(raw)
            ),
        ));
    };
    let name = name.trim();
    validate_name(name).map_err(|m| invalid("--connection", m))?;
    let url = parse_url(url.trim()).map_err(|m| invalid(format!("--connection {name}"), m))?;
    Ok((name.to_string(), url))
}

/// Parses a connection URL; the error message never contains the password.
pub fn parse_url(url: &str) -> Result<ConnectionUrl, String> {
    if url == "sqlite::memory:" {
        return Ok(ConnectionUrl::Sqlite(SqliteTarget::Memory));
    }
    let Some((scheme, rest)) = url.split_once(':') else {
        return Err(format!(
            "URL {:?} has no scheme; expected sqlite:PATH, sqlite::memory:, postgres://…, postgresql://… or oracle://…",
            redact_url(url)
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "sqlite" => {
            // Accept sqlite:PATH and sqlite://PATH (so sqlite:///abs/path is /abs/path).
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(
                    "sqlite URL has an empty path; expected sqlite:PATH or sqlite::memory:".into(),
                );
            }
            Ok(ConnectionUrl::Sqlite(SqliteTarget::File(PathBuf::from(
                path,
            ))))
        }
        "postgres" | "postgresql" => {
            if !rest.starts_with("//") {
                return Err(format!(
                    "URL {:?} must start with {scheme}://",
                    redact_url(url)
                ));
            }
            Ok(ConnectionUrl::Postgres {
                url: url.to_string(),
            })
        }
        "oracle" => parse_oracle(url, rest),
        other => Err(format!(
            "URL scheme {other:?} is not built in (supported: sqlite, postgres, postgresql, oracle)"
        )),
    }
}

fn parse_oracle(url: &str, rest: &str) -> Result<ConnectionUrl, String> {
    let bad = || {
        format!(
            "URL {:?} must be oracle://USER[:PASSWORD]@HOST[:PORT]/SERVICE or oracle://USER@TNS_ALIAS",
            redact_url(url)
        )
    };
    let rest = rest.strip_prefix("//").ok_or_else(bad)?;
    let (userinfo, target) = rest.rsplit_once('@').ok_or_else(bad)?;
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(percent_decode(p).ok_or_else(bad)?)),
        None => (userinfo, None),
    };
    let user = percent_decode(user).ok_or_else(bad)?;
    if target.is_empty() || (user.is_empty() && password.is_some()) {
        return Err(bad());
    }
    // HOST[:PORT]/SERVICE is EZConnect; a bare name is a TNS alias (tnsnames.ora in TNS_ADMIN).
    let connect_string = match target.split_once('/') {
        Some((host, service)) if !host.is_empty() && !service.is_empty() => format!("//{target}"),
        Some(_) => return Err(bad()),
        None => target.to_string(),
    };
    Ok(ConnectionUrl::Oracle {
        user,
        password,
        connect_string,
    })
}

/// `%XX` decoding for user and password in URLs; `None` on a malformed escape.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(connections: &[&str]) -> ServeArgs {
        ServeArgs {
            connections: connections.iter().map(|s| s.to_string()).collect(),
            ..ServeArgs::default()
        }
    }

    #[test]
    fn url_forms() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("sqlite::memory:", Ok("sqlite")),
            ("sqlite:/data/x.db", Ok("sqlite")),
            ("sqlite:///data/x.db", Ok("sqlite")),
            ("sqlite:rel.db", Ok("sqlite")),
            ("postgres://u:p@h:5432/db", Ok("postgres")),
            ("postgresql://h/db?sslmode=require", Ok("postgres")),
            (
                "oracle://scott:tiger@db.example.com:1521/FREEPDB1",
                Ok("oracle"),
            ),
            ("oracle://scott@db/ORCL", Ok("oracle")),
            ("mysql://u:p@h/db", Err("not built in")),
            ("sqlite:", Err("empty path")),
            ("nourl", Err("no scheme")),
            ("oracle://db:1521/ORCL", Err("oracle://USER")),
            ("oracle://scott@ORCL_ALIAS", Ok("oracle")),
            ("oracle://@WALLET_ALIAS", Ok("oracle")),
            ("oracle://scott@db/", Err("oracle://USER")),
            ("oracle://:pw@db/S", Err("oracle://USER")),
            ("postgres:h/db", Err("must start with")),
        ];
        for (url, want) in cases {
            match (parse_url(url), want) {
                (Ok(u), Ok(kind)) => assert_eq!(u.kind(), *kind, "{url}"),
                (Err(e), Err(frag)) => assert!(e.contains(frag), "{url}: {e}"),
                (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            parse_url("sqlite:///data/x.db").unwrap(),
            ConnectionUrl::Sqlite(SqliteTarget::File("/data/x.db".into()))
        );
        assert_eq!(
            parse_url("sqlite:rel/x.db").unwrap(),
            ConnectionUrl::Sqlite(SqliteTarget::File("rel/x.db".into()))
        );
    }

    #[test]
    fn oracle_url_parts_and_decoding() {
        let u = parse_url("oracle://app%40x:p%3Ass@db:1521/FREEPDB1").unwrap();
        assert_eq!(
            u,
            ConnectionUrl::Oracle {
                user: "app@x".into(),
                password: Some("p:ss".into()),
                connect_string: "//db:1521/FREEPDB1".into()
            }
        );
    }

    #[test]
    fn oracle_forms() {
        assert_eq!(
            parse_url("oracle://scott@ORCL_ALIAS").unwrap(),
            ConnectionUrl::Oracle {
                user: "scott".into(),
                password: None,
                connect_string: "ORCL_ALIAS".into()
            }
        );
        let file: FileConfig = toml::from_str(
            r#"
            [connections.ora]
            kind = "oracle"
            user = "scaler"
            connect_string = "(DESCRIPTION=(ADDRESS=(PROTOCOL=TCP)(HOST=db)(PORT=1521))(CONNECT_DATA=(SERVICE_NAME=X)))"
            password_file = "/run/secrets/pw"
            "#,
        )
        .unwrap();
        let c = args(&[]).resolve_with(file).unwrap();
        let ora = &c.connections["ora"];
        assert_eq!(ora.url.kind(), "oracle");
        assert_eq!(
            ora.password_file.as_deref(),
            Some(Path::new("/run/secrets/pw"))
        );
        for (text, frag) in [
            (
                "[connections.o]\nkind = \"oracle\"\nuser = \"u\"",
                "connections.o.connect_string: is required",
            ),
            (
                "[connections.o]\nkind = \"mysql\"",
                "connections.o.kind: value \"mysql\"",
            ),
            (
                "[connections.o]\nkind = \"oracle\"\nurl = \"sqlite::memory:\"",
                "not both",
            ),
        ] {
            let file: FileConfig = toml::from_str(text).unwrap();
            let err = args(&[]).resolve_with(file).unwrap_err().to_string();
            assert!(err.contains(frag), "{text}: {err}");
        }
    }

    #[test]
    fn secrets_never_shown() {
        let secret = "s3cr3t-pw";
        for url in [
            format!("postgres://app:{secret}@h/db"),
            format!("oracle://app:{secret}@h:1521/S"),
        ] {
            let parsed = parse_url(&url).unwrap();
            assert!(!format!("{parsed}").contains(secret));
            assert!(!format!("{parsed:?}").contains(secret));
        }
        for bad in [
            format!("mysql://app:{secret}@h/db"),
            format!("oracle://app:{secret}@h/"),
            format!("postgres:app:{secret}@h"),
        ] {
            let err = parse_url(&bad).unwrap_err();
            assert!(!err.contains(secret), "{err}");
        }
        let err = args(&[&format!("postgres://app:{secret}@h/db")])
            .resolve_with(FileConfig::default())
            .unwrap_err();
        assert!(!err.to_string().contains(secret), "{err}");
        let config = args(&[
            &format!("pg=postgres://app:{secret}@h/db"),
            &format!("ora=oracle://app:{secret}@h:1521/S"),
        ])
        .resolve_with(FileConfig::default())
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains(secret), "{debug}");
        assert!(debug.contains("app:***@h"), "{debug}");
        assert_eq!(
            redact_url("postgres://app:pw@h/db?x=1"),
            "postgres://app:***@h/db?x=1"
        );
    }

    #[test]
    fn defaults_apply() {
        let c = args(&[]).resolve_with(FileConfig::default()).unwrap();
        assert_eq!(c.grpc_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(c.metrics_listen.to_string(), "0.0.0.0:9464");
        assert_eq!(c.engine, EngineConfig::default());
        assert!(c.connections.is_empty());
    }

    #[test]
    fn flags_override_file() {
        let file: FileConfig = toml::from_str(
            r#"
            grpc_listen = "127.0.0.1:1"
            default_poll_interval = "20s"
            [connections.orders]
            url = "sqlite:/a.db"
            pool_size = 7
            pool_timeout = "250ms"
            namespaces = ["shop", "team-*"]
            min_poll_interval = "5s"
            max_query_timeout = "2s"
            allow_dblinks = true
            [connections.other]
            url = "sqlite::memory:"
            "#,
        )
        .unwrap();
        let mut a = args(&["orders=sqlite:/b.db"]);
        a.grpc_listen = Some("127.0.0.1:2".parse().unwrap());
        let c = a.resolve_with(file).unwrap();
        assert_eq!(c.grpc_listen.to_string(), "127.0.0.1:2");
        assert_eq!(c.engine.default_poll_interval, Duration::from_secs(20));
        let orders = &c.connections["orders"];
        assert_eq!(orders.url, parse_url("sqlite:/b.db").unwrap());
        assert_eq!(orders.pool_size, 7, "the flag overrides only the URL");
        assert_eq!(orders.pool_timeout, Some(Duration::from_millis(250)));
        assert_eq!(orders.min_poll_interval, Some(Duration::from_secs(5)));
        assert_eq!(orders.max_query_timeout, Some(Duration::from_secs(2)));
        assert!(orders.allow_dblinks);
        assert!(orders.allows_namespace("team-x") && !orders.allows_namespace("other"));
        assert!(c.connections.contains_key("other"));
    }

    #[test]
    fn errors_name_key_and_value() {
        let cases: &[(&str, &str)] = &[
            ("grpc_listen = \"nope\"", "grpc_listen: value \"nope\""),
            (
                "default_poll_interval = \"10\"",
                "default_poll_interval: value \"10\"",
            ),
            (
                "min_poll_interval = \"0s\"",
                "min_poll_interval: must be greater than 0",
            ),
            (
                "default_poll_interval = \"500ms\"",
                "below min_poll_interval",
            ),
            (
                "[connections.x]\npool_size = 2",
                "connections.x.url: is required",
            ),
            (
                "[connections.x]\nurl = \"ftp://h\"",
                "connections.x.url: URL scheme \"ftp\"",
            ),
            (
                "[connections.\"a b\"]\nurl = \"sqlite::memory:\"",
                "connection name \"a b\"",
            ),
            // Zero and huge values are refused here, not left to panic in a timer later.
            (
                "tls_reload_interval = \"0s\"",
                "tls_reload_interval: must be greater than 0",
            ),
            (
                "tls_reload_interval = \"200000000000y\"",
                "tls_reload_interval: value",
            ),
            (
                "stream_resend_interval = \"0s\"",
                "stream_resend_interval: must be greater than 0",
            ),
            (
                "idle_timeout = \"18446744073709551615s\"",
                "idle_timeout: value",
            ),
            ("max_poll_interval = \"0s\"", "max_poll_interval: must be"),
            (
                "max_poll_interval = \"2y\"",
                "max_poll_interval: value 2years",
            ),
            (
                "default_poll_interval = \"2d\"",
                "default_poll_interval: value 2days is above max_poll_interval",
            ),
            ("max_query_timeout = \"2d\"", "max_query_timeout: value"),
            (
                "default_query_timeout = \"10m\"",
                "default_query_timeout: value 10m is above max_query_timeout",
            ),
            ("shutdown_delay = \"1000d\"", "shutdown_delay: value"),
            (
                "stale_after_polls = 4294967295",
                "stale_after_polls: value 4294967295",
            ),
            (
                "[connections.x]\nurl = \"sqlite::memory:\"\nmin_poll_interval = \"0s\"",
                "connections.x.min_poll_interval: must be greater than 0",
            ),
            (
                "[connections.x]\nurl = \"sqlite::memory:\"\nmin_poll_interval = \"1000d\"",
                "connections.x.min_poll_interval: value",
            ),
            (
                "[connections.x]\nurl = \"sqlite::memory:\"\nmax_query_timeout = \"0s\"",
                "connections.x.max_query_timeout: must be greater than 0",
            ),
            (
                "[connections.x]\nurl = \"sqlite::memory:\"\npool_timeout = \"0s\"",
                "connections.x.pool_timeout: must be greater than 0",
            ),
            (
                "[connections.x]\nurl = \"sqlite::memory:\"\npool_size = 18446744073709551615",
                "connections.x.pool_size: value 18446744073709551615 must be between 1 and 1000",
            ),
            (
                "[connections.meta-1]\nurl = \"sqlite::memory:\"",
                "reserved for connections made from metadata credentials",
            ),
        ];
        for (toml_text, want) in cases {
            let file: FileConfig = toml::from_str(toml_text).unwrap();
            let err = args(&[]).resolve_with(file).unwrap_err().to_string();
            assert!(err.contains(want), "{toml_text}: {err}");
        }
        let err = args(&["justaname"])
            .resolve_with(FileConfig::default())
            .unwrap_err();
        assert!(err.to_string().contains("must be NAME=URL"), "{err}");
        assert!(toml::from_str::<FileConfig>("typo_key = 1").is_err());
    }

    #[test]
    fn credentials_are_replaced_in_urls() {
        let pg = parse_url("postgres://app:old@db:5432/shop?sslmode=require").unwrap();
        assert_eq!(
            pg.with_credentials(Some("so-user"), Some("p@ss:w/rd"))
                .identity_for_hashing(),
            "postgres://so-user:p%40ss%3Aw%2Frd@db:5432/shop?sslmode=require"
        );
        assert_eq!(
            pg.with_credentials(None, Some("x")).identity_for_hashing(),
            "postgres://app:x@db:5432/shop?sslmode=require"
        );
        let bare = parse_url("postgres://db/shop").unwrap();
        assert_eq!(
            bare.with_credentials(Some("u"), None)
                .identity_for_hashing(),
            "postgres://u@db/shop"
        );
        let ora = parse_url("oracle://app@db:1521/S").unwrap();
        assert_eq!(
            ora.with_credentials(Some("u"), Some("p")),
            ConnectionUrl::Oracle {
                user: "u".into(),
                password: Some("p".into()),
                connect_string: "//db:1521/S".into()
            }
        );
        // Parsed back, the new password round-trips and is hidden in Display.
        let round = parse_url(
            &pg.with_credentials(None, Some("s3cr3t"))
                .identity_for_hashing(),
        )
        .unwrap();
        assert!(!round.to_string().contains("s3cr3t"));
    }

    #[test]
    fn metadata_credentials_need_tls() {
        let mut a = args(&[]);
        a.allow_metadata_credentials = true;
        let err = a
            .resolve_with(FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--allow-metadata-credentials") && err.contains("TLS"),
            "{err}"
        );
        a.tls_cert = Some("/c".into());
        a.tls_key = Some("/k".into());
        assert!(
            a.resolve_with(FileConfig::default())
                .unwrap()
                .allow_metadata_credentials
        );
    }

    #[test]
    fn demo_adds_connection() {
        let mut a = args(&[]);
        a.demo = true;
        let c = a.resolve_with(FileConfig::default()).unwrap();
        assert_eq!(c.connections["demo"].url.kind(), "sqlite");
        let mut a = args(&["demo=sqlite::memory:"]);
        a.demo = true;
        assert!(a.resolve_with(FileConfig::default()).is_err());
    }
}
