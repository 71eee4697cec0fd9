//! The TOML file, and how flags + file + defaults resolve into a [`Config`]. Flags override the
//! file; unknown file keys are errors, so a typo does not silently fall back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::validate::{in_range, validate_engine, validate_name};
use super::*;

/// The TOML file. Unknown keys are errors, so a typo does not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    grpc_listen: Option<String>,
    metrics_listen: Option<String>,
    default_poll_interval: Option<String>,
    min_poll_interval: Option<String>,
    max_poll_interval: Option<String>,
    min_wake_interval: Option<String>,
    wake_poll_share: Option<u8>,
    namespace_pool_share: Option<u8>,
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
    max_spec_cache_bytes: Option<usize>,
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
            min_wake_interval: duration(
                self.min_wake_interval,
                &file.min_wake_interval,
                "min_wake_interval",
                defaults::MIN_WAKE_INTERVAL,
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
            wake_poll_share: self
                .wake_poll_share
                .or(file.wake_poll_share)
                .unwrap_or(defaults::WAKE_POLL_SHARE),
            namespace_pool_share: self
                .namespace_pool_share
                .or(file.namespace_pool_share)
                .unwrap_or(defaults::NAMESPACE_POOL_SHARE),
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
                max_spec_cache_bytes: self
                    .max_spec_cache_bytes
                    .or(file.max_spec_cache_bytes)
                    .unwrap_or(defaults::MAX_SPEC_CACHE_BYTES),
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
        let mut flagged = std::collections::BTreeSet::new();
        for raw in self
            .connections
            .iter()
            .flat_map(|v| split_connection_list(v))
        {
            let (name, url) = parse_connection_flag(raw)?;
            if !flagged.insert(name.clone()) {
                return Err(invalid(
                    "--connection",
                    format!(
                        "connection name {name:?} is given twice (in --connection or \
                         ORASCALE_CONNECTIONS); each connection needs its own name"
                    ),
                ));
            }
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

        let grpc_listen = addr(
            self.grpc_listen,
            &file.grpc_listen,
            "grpc_listen",
            defaults::GRPC_LISTEN,
        )?;
        let metrics_listen = addr(
            self.metrics_listen,
            &file.metrics_listen,
            "metrics_listen",
            defaults::METRICS_LISTEN,
        )?;
        if overlap(grpc_listen, metrics_listen) {
            return Err(invalid(
                "--metrics-listen",
                format!(
                    "value {metrics_listen} takes the port of --grpc-listen {grpc_listen}; \
                     the two servers need different ports"
                ),
            ));
        }
        Ok(Config {
            grpc_listen,
            metrics_listen,
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

/// Whether two listen addresses would take the same port (port 0 picks a free one): the same
/// address, or a wildcard of the other's family (`[::]` also takes IPv4 on Linux).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |w: SocketAddr, o: SocketAddr| {
        w.ip().is_unspecified() && (w.is_ipv6() || w.is_ipv4() == o.is_ipv4())
    };
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
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
    fn tls_files(&self, file: &FileConfig) -> Result<Option<super::TlsFiles>, ConfigError> {
        let cert = self.tls_cert.clone().or_else(|| file.tls_cert.clone());
        let key = self.tls_key.clone().or_else(|| file.tls_key.clone());
        let client_ca = self
            .tls_client_ca
            .clone()
            .or_else(|| file.tls_client_ca.clone());
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(super::TlsFiles {
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

/// The entries of one `--connection` value or of `ORASCALE_CONNECTIONS`: a comma starts a new
/// entry only where `NAME=SCHEME:` follows it, so a comma inside a URL (a multi-host PostgreSQL
/// URL `postgres://h1,h2/db`, a password) stays in that URL.
fn split_connection_list(list: &str) -> Vec<&str> {
    let starts_entry = |rest: &str| {
        let Some((name, url)) = rest.split_once('=') else {
            return false;
        };
        let scheme = url.split_once(':').map_or("", |(s, _)| s);
        let name = name.trim();
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && super::url::is_scheme(scheme)
    };
    let mut entries = Vec::new();
    let mut start = 0;
    for (i, _) in list.match_indices(',') {
        // A trailing comma ends the list with an empty entry (refused as not NAME=URL).
        if starts_entry(&list[i + 1..]) || list[i + 1..].trim().is_empty() {
            entries.push(&list[start..i]);
            start = i + 1;
        }
    }
    entries.push(&list[start..]);
    entries
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
    if name.contains([':', '/', '@']) {
        // A URL without its name, cut at an `=` inside it (a base64 password): not echoed.
        return Err(invalid(
            "--connection",
            format!(
                "value {:?} must be NAME=URL, e.g. orders=sqlite:/data/orders.db: the text \
                 before the first `=` is not a name",
                redact_url(raw)
            ),
        ));
    }
    validate_name(name).map_err(|m| invalid("--connection", m))?;
    let url = parse_url(url.trim()).map_err(|m| invalid(format!("--connection {name}"), m))?;
    Ok((name.to_string(), url))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why `a` with no file is refused.
    fn refusal(a: &ServeArgs) -> String {
        a.resolve_with(FileConfig::default())
            .unwrap_err()
            .to_string()
    }

    fn args(connections: &[&str]) -> ServeArgs {
        ServeArgs {
            connections: connections.iter().map(|s| s.to_string()).collect(),
            ..ServeArgs::default()
        }
    }

    #[test]
    fn a_comma_starts_an_entry_only_before_name_equals_scheme() {
        let c = args(&[
            "a=sqlite::memory:,ha=postgres://u:p,w@h1:5432,h2:5433/db?target_session_attrs=read-write",
            "b=sqlite:/data/b.db",
        ])
        .resolve_with(FileConfig::default())
        .unwrap();
        assert_eq!(
            c.connections.keys().collect::<Vec<_>>(),
            ["a", "b", "ha"],
            "{c:?}"
        );
        let ConnectionUrl::Postgres { url } = &c.connections["ha"].url else {
            panic!()
        };
        assert!(url.ends_with("h1:5432,h2:5433/db?target_session_attrs=read-write"));
        let cfg: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(cfg.get_hosts().len(), 2);
        assert_eq!(cfg.get_password(), Some(&b"p,w"[..]));
    }

    #[test]
    fn a_url_without_its_name_or_a_trailing_comma_is_refused_without_secrets() {
        let e = refusal(&args(&["postgres://app:c2VjcmV0cGFzcw==@db:5432/shop"]));
        assert!(e.contains("not a name") && !e.contains("c2VjcmV0"), "{e}");
        let e = refusal(&args(&["a=sqlite::memory:,"]));
        assert!(e.contains("must be NAME=URL"), "{e}");
    }

    #[test]
    fn listen_addresses_overlap_only_where_the_kernel_would_refuse() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlap(a("127.0.0.1:9"), a("127.0.0.1:9")));
        assert!(overlap(a("0.0.0.0:9"), a("127.0.0.1:9")));
        assert!(overlap(a("[::]:9"), a("127.0.0.1:9")));
        assert!(!overlap(a("0.0.0.0:9"), a("[::1]:9")));
        assert!(!overlap(a("127.0.0.1:9"), a("127.0.0.2:9")));
        assert!(!overlap(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }

    #[test]
    fn a_connection_name_given_twice_is_refused() {
        for list in [
            &["jobs=sqlite:/a.db", "jobs=sqlite:/b.db"][..],
            &["jobs=sqlite:/a.db,jobs=postgres://u:s3cret@h/db"][..],
        ] {
            let e = refusal(&args(list));
            assert!(
                e.contains("--connection") && e.contains("\"jobs\" is given twice"),
                "{e}"
            );
            assert!(!e.contains("s3cret"), "{e}");
        }
        // A flag for a name the file also has still overrides the file's URL.
        let file: FileConfig =
            toml::from_str("[connections.jobs]\nurl = \"sqlite:/file.db\"\npool_size = 2\n")
                .unwrap();
        let c = args(&["jobs=sqlite:/flag.db"]).resolve_with(file).unwrap();
        assert_eq!(c.connections["jobs"].url.to_string(), "sqlite:/flag.db");
        assert_eq!(c.connections["jobs"].pool_size, 2);
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
        let err = refusal(&args(&[&format!("postgres://app:{secret}@h/db")]));
        assert!(!err.contains(secret), "{err}");
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
                "--min-poll-interval / min_poll_interval: value 0s must be greater than 0",
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
                "tls_reload_interval: value 0s must be greater than 0",
            ),
            (
                "tls_reload_interval = \"200000000000y\"",
                "tls_reload_interval: value",
            ),
            (
                "stream_resend_interval = \"0s\"",
                "stream_resend_interval: value 0s must be greater than 0",
            ),
            (
                "idle_timeout = \"18446744073709551615s\"",
                "idle_timeout: value",
            ),
            (
                "max_poll_interval = \"0s\"",
                "max_poll_interval: value 0s must be",
            ),
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
                "--stale-after-polls / stale_after_polls: value 4294967295",
            ),
            (
                "namespace_pool_share = 101",
                "--namespace-pool-share / namespace_pool_share: value 101 must be a percent from 1 to 100",
            ),
            (
                "wake_poll_share = 0",
                "wake_poll_share: value 0 must be a percent from 1 to 100",
            ),
            (
                "wake_poll_share = 101",
                "wake_poll_share: value 101 must be a percent from 1 to 100",
            ),
            (
                "[connections.x]\nurl = \"sqlite::memory:\"\nmin_poll_interval = \"0s\"",
                "connections.x.min_poll_interval: value 0s must be greater than 0",
            ),
            (
                "[connections.x]\nurl = \"sqlite::memory:\"\nmin_poll_interval = \"1000d\"",
                "connections.x.min_poll_interval: value",
            ),
            (
                "[connections.x]\nurl = \"sqlite::memory:\"\nmax_query_timeout = \"0s\"",
                "connections.x.max_query_timeout: value 0s must be greater than 0",
            ),
            (
                "[connections.x]\nurl = \"sqlite::memory:\"\npool_timeout = \"0s\"",
                "connections.x.pool_timeout: value 0s must be greater than 0",
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
        let err = refusal(&args(&["justaname"]));
        assert!(err.contains("must be NAME=URL"), "{err}");
        assert!(toml::from_str::<FileConfig>("typo_key = 1").is_err());
    }

    #[test]
    fn metadata_credentials_need_tls() {
        let mut a = args(&[]);
        a.allow_metadata_credentials = true;
        let err = refusal(&a);
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
