//! The command line: subcommands and flags, each flag with its environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::{defaults, parse_duration};

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

/// Defined by `telemetry`, which writes the logs; parsed here.
pub use crate::telemetry::LogFormat;

#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// Address of the gRPC server KEDA calls [default: 0.0.0.0:9090]
    #[arg(long, env = "ORASCALE_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc_listen: Option<SocketAddr>,

    /// Address of the admin HTTP server: /metrics, /healthz, /readyz [default: 0.0.0.0:9464]
    #[arg(long, env = "ORASCALE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    // `[:PORT]` is help text (clap prints this comment), not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// A database connection, NAME=URL; repeatable. URL: sqlite:PATH, sqlite::memory:,
    /// postgres://…, oracle://USER@HOST[:PORT]/SERVICE. The environment form is comma-separated (a comma starts an entry only before NAME=SCHEME:).
    #[arg(
        long = "connection",
        env = "ORASCALE_CONNECTIONS",
        value_name = "NAME=URL",
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

    /// Smallest minWakeInterval a trigger may ask for: the most often a database notification
    /// (notifyChannel) may make one trigger poll [default: 100ms]
    #[arg(long, env = "ORASCALE_MIN_WAKE_INTERVAL", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub min_wake_interval: Option<Duration>,

    /// Percent of each connection's pool sessions that polls caused by notifications
    /// (notifyChannel) may use at once, at least one: of pool_size, or of fewer while the
    /// database refuses more sessions; more wake polls wait (coalesced) so interval polls never
    /// queue behind them [default: 50]
    #[arg(long, env = "ORASCALE_WAKE_POLL_SHARE", value_name = "PERCENT")]
    pub wake_poll_share: Option<u8>,

    /// Where a connection serves several namespaces: percent of its sessions (of those the
    /// pool's gate allows now) that one namespace's interval polls may hold at once, at least
    /// one; past it that namespace's polls wait, so its slow queries never take the sessions
    /// other namespaces need. 100 turns it off [default: 50]
    #[arg(long, env = "ORASCALE_NAMESPACE_POOL_SHARE", value_name = "PERCENT")]
    pub namespace_pool_share: Option<u8>,

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

    /// After a failed poll, or while the next one is still running, the last good value is
    /// served while younger than this many poll intervals (while running: at least 2); then
    /// GetMetrics/IsActive answer UNAVAILABLE [default: 3]
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

    /// Most open server streams (StreamIsActive and StreamMetricSpec) [default: 50000]
    #[arg(long, env = "ORASCALE_MAX_STREAMS", value_name = "N")]
    pub max_streams: Option<usize>,

    /// Longest `query`, in bytes [default: 8192]
    #[arg(long, env = "ORASCALE_MAX_QUERY_LENGTH", value_name = "BYTES")]
    pub max_query_length: Option<usize>,

    /// Memory for parsed triggers, so that later calls skip parsing; past it the least recently
    /// used are dropped (and parsed again if they return) [default: 33554432 (32 MiB)]
    #[arg(long, env = "ORASCALE_MAX_SPEC_CACHE_BYTES", value_name = "BYTES")]
    pub max_spec_cache_bytes: Option<usize>,

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

    /// Keep StreamIsActive open and print each message with a timestamp; IsActive is also
    /// called every second and printed when it changes (the stream never sends `false`)
    #[arg(long)]
    pub watch: bool,

    /// Keep StreamMetricSpec open (KEDA main, for v2.21) and print each metric spec it sends,
    /// with a timestamp: the spec at open, then one line per change of the target
    #[arg(long, conflicts_with = "watch")]
    pub watch_spec: bool,

    /// Deadline of each unary call (KEDA uses 3s on its HPA path)
    #[arg(long, default_value = "3s", value_parser = parse_duration_arg)]
    pub timeout: Duration,

    /// Also print what KEDA and the HPA would do with the value at this many replicas
    #[arg(long, value_name = "N")]
    pub current_replicas: Option<u32>,

    /// The trigger's metricType, for --current-replicas: AverageValue (KEDA's default) or
    /// Value, as written in the ScaledObject (any case; average-value also works)
    #[arg(long, value_enum, ignore_case = true, default_value = "AverageValue")]
    pub metric_type: MetricType,

    /// The ScaledObject's minReplicaCount, for --current-replicas
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub min_replica_count: u32,

    /// The ScaledObject's maxReplicaCount, for --current-replicas
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_replica_count: u32,

    /// PEM CA bundle that signed the scaler's certificate: connect with TLS (KEDA's `caCert`)
    #[arg(long, value_name = "FILE", env = "ORASCALE_PROBE_CA")]
    pub ca: Option<PathBuf>,

    /// PEM client certificate for mTLS (KEDA's `tlsClientCert`); needs --key
    #[arg(
        long,
        value_name = "FILE",
        requires = "key",
        env = "ORASCALE_PROBE_CERT"
    )]
    pub cert: Option<PathBuf>,

    /// PEM private key of --cert (KEDA's `tlsClientKey`)
    #[arg(
        long,
        value_name = "FILE",
        requires = "cert",
        env = "ORASCALE_PROBE_KEY"
    )]
    pub key: Option<PathBuf>,

    /// Name to check the server certificate against, when it differs from the --addr host
    /// (e.g. the Service's DNS name while probing through a port-forward)
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
}

/// A trigger's `metricType` (a ScaledObject field, so the probe has to be told). Spelled as
/// KEDA spells it; the kebab-case forms are kept as aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricType {
    /// desiredReplicas = ceil(value / target)
    #[value(name = "AverageValue", alias = "average-value")]
    AverageValue,
    /// desiredReplicas = ceil(currentReplicas × value / target)
    #[value(name = "Value")]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(args: &[&str]) -> Result<ProbeArgs, clap::Error> {
        let cli = Cli::try_parse_from(["orascale", "probe"].iter().chain(args))?;
        match cli.command {
            Command::Probe(p) => Ok(p),
            _ => unreachable!(),
        }
    }

    /// The wake budget is a share of the sessions the pool's gate allows now
    /// (`engine::wake::Budget`), not of `pool_size`: the help says so.
    #[test]
    fn wake_poll_share_help_names_the_sessions_the_gate_allows() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let serve = cli.find_subcommand_mut("serve").expect("serve");
        let arg = serve
            .get_arguments()
            .find(|a| a.get_id() == "wake_poll_share")
            .expect("--wake-poll-share");
        let help = arg.get_help().expect("help").to_string();
        assert!(!help.contains("pool_size that"), "{help}");
        assert!(
            help.contains("or of fewer while the database refuses more sessions"),
            "{help}"
        );
    }

    #[test]
    fn metric_type_takes_kedas_spelling_in_any_case_and_the_kebab_forms() {
        for (given, want) in [
            ("AverageValue", MetricType::AverageValue),
            ("averagevalue", MetricType::AverageValue),
            ("AVERAGEVALUE", MetricType::AverageValue),
            ("average-value", MetricType::AverageValue),
            ("Value", MetricType::Value),
            ("value", MetricType::Value),
        ] {
            let p = probe(&["--metric-type", given]).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(p.metric_type, want, "{given}");
        }
        assert_eq!(probe(&[]).unwrap().metric_type, MetricType::AverageValue);
        assert!(probe(&["--metric-type", "Utilization"]).is_err());
    }

    #[test]
    fn probe_client_certificate_needs_its_key() {
        assert!(probe(&["--cert", "c.pem"]).is_err());
        assert!(probe(&["--key", "k.pem"]).is_err());
        let p = probe(&["--ca", "ca.pem", "--cert", "c.pem", "--key", "k.pem"]).unwrap();
        assert_eq!(p.ca.as_deref(), Some(std::path::Path::new("ca.pem")));
    }
}
