//! A trigger's `scalerMetadata` map → a typed [`ScalerSpec`]. Pure: no I/O, no clock.
//!
//! Every error names the key and, where it is not a secret, the value, and says what to write
//! instead. Unknown keys are errors with a "did you mean" hint, because a misspelt optional key
//! (say `pollingInterval`) would otherwise be silently ignored.

//!
//! - `keys`: the keys we know, KEDA's own, and the "did you mean" hints.
//! - `poller`: the settings that make a trigger's poller (interval, timeout, nulls).
//! - `credentials`: connections made from per-ScaledObject credentials.
//! - `naming`: metric names, given or derived.

use std::collections::BTreeMap;
use std::collections::HashMap;

use crate::config::{ConnectionConfig, ConnectionUrl, EngineConfig};
use crate::guard::{self, Dialect};
use crate::trigger::PollerKey;
pub use crate::trigger::ScalerSpec;

mod credentials;
mod keys;
mod naming;
mod poller;

pub use crate::trigger::{DYNAMIC_PREFIX, is_dynamic_name};
use credentials::{METADATA_POOL_SIZE, dynamic_name};
pub use keys::*;
use keys::{CREDENTIAL_KEYS, hint_for};
pub use naming::default_metric_name;
use poller::finish;

/// Longest value quoted back in an error message.
pub const QUOTE_MAX: usize = 120;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata key {key:?} is required: {what}")]
    Missing {
        key: &'static str,
        what: &'static str,
    },
    #[error("metadata key {key:?}: value {value:?} {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("metadata key {key:?} is not known to orascale{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    UnknownKey { key: String, hint: Option<String> },
    #[error(
        "metadata key \"connection\": value {name:?} is not a connection of this server; configured: {}",
        list(known)
    )]
    UnknownConnection { name: String, known: Vec<String> },
    #[error(
        "metadata key \"connection\" is required: this server has connections {}",
        list(known)
    )]
    ConnectionRequired { known: Vec<String> },
    #[error("this server has no connections configured: start it with --connection NAME=URL")]
    NoConnections,
    #[error("connection {connection:?} may not be used from namespace {namespace:?}")]
    Forbidden {
        connection: String,
        namespace: String,
    },
    #[error("metadata {what} (limit {limit})")]
    TooLarge { what: String, limit: usize },
    #[error("metadata key \"query\" is rejected by the SQL guard: {0}")]
    Guard(#[from] guard::Rejection),
    /// The SQL guard's refusal of another query key (`targetQuery`).
    #[error("metadata key {key:?} is rejected by the SQL guard: {rejection}")]
    GuardOn {
        key: &'static str,
        rejection: guard::Rejection,
    },
    #[error(
        "metadata key {key:?}: credentials in metadata are disabled on this server (it needs --allow-metadata-credentials and TLS); use \"connection\" with a server-side connection"
    )]
    CredentialsDisabled { key: &'static str },
}

pub(super) fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

/// `value`, cut to [`QUOTE_MAX`] characters with "…" when longer: every error that echoes what
/// a caller sent stays small, however much was sent. Stops reading at the cut.
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_MAX) {
        None => value.to_string(),
        Some((cut, _)) => format!("{}…", &value[..cut]),
    }
}

pub(super) fn invalid(key: &'static str, value: &str, reason: impl Into<String>) -> MetadataError {
    MetadataError::Invalid {
        key,
        value: quote(value),
        reason: reason.into(),
    }
}

/// The `query` value as the server takes it: present, trimmed and within
/// `--max-query-length`; the SQL guard runs once the connection (and so the dialect) is known.
fn query_text<'a>(
    value: Option<&'a str>,
    limits: &crate::config::Limits,
) -> Result<&'a str, MetadataError> {
    match value.map(str::trim) {
        None | Some("") => Err(MetadataError::Missing {
            key: QUERY,
            what: "one SELECT returning one row and one column: the metric",
        }),
        Some(q) => within_limit(QUERY, q, limits),
    }
}

/// A query key's value within `--max-query-length`.
pub(super) fn within_limit<'a>(
    key: &'static str,
    q: &'a str,
    limits: &crate::config::Limits,
) -> Result<&'a str, MetadataError> {
    if q.len() > limits.max_query_length {
        return Err(MetadataError::TooLarge {
            what: format!("key {key:?} is {} bytes long", q.len()),
            limit: limits.max_query_length,
        });
    }
    Ok(q)
}

/// The query a trigger on `conn` would run, or the error the server would answer for it: the
/// same length limit, the same SQL guard and the same message as [`parse`]. `orascale check
/// --query` uses it, so the doctor refuses exactly what the server refuses, before connecting.
pub fn guarded_query(
    query: &str,
    conn: &ConnectionConfig,
    limits: &crate::config::Limits,
) -> Result<String, MetadataError> {
    guarded(query_text(Some(query), limits)?, conn)
}

/// The SQL guard with the connection's dialect and database-link policy.
pub(super) fn guarded(query: &str, conn: &ConnectionConfig) -> Result<String, MetadataError> {
    Ok(guard::screen(
        query,
        dialect(&conn.url),
        conn.allow_dblinks,
    )?)
}

/// What the parser needs from the server: its connections (with their policies), engine
/// defaults and limits.
#[derive(Debug, Clone)]
pub struct Context {
    pub connections: BTreeMap<String, ConnectionConfig>,
    pub engine: EngineConfig,
    /// `--allow-metadata-credentials`.
    pub allow_credentials: bool,
}

impl Context {
    fn names(&self) -> Vec<String> {
        self.connections.keys().cloned().collect()
    }
}

pub(super) fn dialect(url: &ConnectionUrl) -> Dialect {
    match url {
        ConnectionUrl::Oracle { .. } => Dialect::Oracle,
        ConnectionUrl::Postgres { .. } => Dialect::Postgres,
        ConnectionUrl::Sqlite(_) => Dialect::Sqlite,
    }
}

/// Parses one trigger's metadata, sent for a ScaledObject in `namespace`.
pub fn parse(
    meta: &HashMap<String, String>,
    namespace: &str,
    ctx: &Context,
) -> Result<ScalerSpec, MetadataError> {
    let limits = &ctx.engine.limits;
    if meta.len() > limits.max_metadata_entries {
        return Err(MetadataError::TooLarge {
            what: format!("has {} entries", meta.len()),
            limit: limits.max_metadata_entries,
        });
    }
    for (k, v) in meta {
        if k.len() > limits.max_metadata_key_length {
            return Err(MetadataError::TooLarge {
                what: format!("key {:?} is {} bytes long", quote(k), k.len()),
                limit: limits.max_metadata_key_length,
            });
        }
        if v.len() > limits.max_metadata_value_length {
            return Err(MetadataError::TooLarge {
                what: format!("value of key {:?} is {} bytes long", quote(k), v.len()),
                limit: limits.max_metadata_value_length,
            });
        }
    }
    // Report unknown keys first, in a stable order, so the answer does not depend on map order.
    if !ctx.allow_credentials
        && let Some(key) = CREDENTIAL_KEYS.iter().find(|k| meta.contains_key(**k))
    {
        return Err(MetadataError::CredentialsDisabled { key });
    }
    let mut unknown: Vec<&String> = meta
        .keys()
        .filter(|k| {
            !KEYS.contains(&k.as_str())
                && !KEDA_KEYS.contains(&k.as_str())
                && !CREDENTIAL_KEYS.contains(&k.as_str())
        })
        .collect();
    unknown.sort();
    if let Some(key) = unknown.first() {
        return Err(MetadataError::UnknownKey {
            key: quote(key),
            hint: hint_for(key),
        });
    }

    let get = |key: &'static str| meta.get(key).map(|v| v.trim());

    let query = query_text(get(QUERY), limits)?;

    let target = match get(TARGET_QUERY_VALUE) {
        None | Some("") => {
            let what = if get(TARGET_QUERY).is_some_and(|q| !q.is_empty()) {
                "with targetQuery it is the fallback target, served until the target query's first good value and whenever it fails or reads NULL or a value below 0.001: a number ≥ 0.001"
            } else {
                "the value one replica handles, a number ≥ 0.001"
            };
            return Err(MetadataError::Missing {
                key: TARGET_QUERY_VALUE,
                what,
            });
        }
        Some(v) => {
            let t = parse_number(TARGET_QUERY_VALUE, v)?;
            if t < crate::trigger::MIN_TARGET {
                return Err(invalid(
                    TARGET_QUERY_VALUE,
                    v,
                    "must be at least 0.001 (KEDA rounds targets to 3 decimals; 0 breaks the HPA)",
                ));
            }
            if t > crate::trigger::MAX_TARGET {
                return Err(invalid(
                    TARGET_QUERY_VALUE,
                    v,
                    "must be at most 9e15 (some KEDA versions compute int64(target * 1000))",
                ));
            }
            t
        }
    };

    let activation = match get(ACTIVATION_TARGET_QUERY_VALUE) {
        None | Some("") => 0.0,
        Some(v) => parse_number(ACTIVATION_TARGET_QUERY_VALUE, v)?,
    };

    let user = get(USER_FROM_ENV).filter(|u| !u.is_empty());
    // Passwords are taken as sent: spaces may be part of them.
    let password = meta
        .get(PASSWORD_FROM_ENV)
        .map(String::as_str)
        .filter(|p| !p.is_empty());
    if let Some(url) = get(CONNECTION_FROM_ENV).filter(|u| !u.is_empty()) {
        let parsed = crate::config::parse_url(url).map_err(|reason| MetadataError::Invalid {
            key: CONNECTION_FROM_ENV,
            value: "(not shown: it may hold a password)".into(),
            reason,
        })?;
        if matches!(parsed, ConnectionUrl::Sqlite(_)) {
            return Err(MetadataError::Invalid {
                key: CONNECTION_FROM_ENV,
                value: "(not shown)".into(),
                reason: "must be a postgres:// or oracle:// URL: files on the scaler's host are not reachable from metadata".into(),
            });
        }
        // The ScaledObject's own URL, completed by its own keys: all of it comes from metadata.
        let url = parsed.with_credentials(user, password);
        credentials::checked(&url, CONNECTION_FROM_ENV, true, &ctx.connections)?;
        let mut conn = ConnectionConfig::new(dynamic_name(&url), url);
        conn.pool_size = METADATA_POOL_SIZE;
        return finish(meta, query, target, activation, "meta", conn, true, ctx);
    }

    let connection = match get(CONNECTION) {
        Some(name) if !name.is_empty() => {
            if !ctx.connections.contains_key(name) {
                return Err(MetadataError::UnknownConnection {
                    name: quote(name),
                    known: ctx.names(),
                });
            }
            name.to_string()
        }
        _ => match ctx.names().as_slice() {
            [only] => only.clone(),
            [] => return Err(MetadataError::NoConnections),
            many => {
                return Err(MetadataError::ConnectionRequired {
                    known: many.to_vec(),
                });
            }
        },
    };
    let conn = &ctx.connections[&connection];
    if !conn.allows_namespace(namespace) {
        return Err(MetadataError::Forbidden {
            connection,
            namespace: quote(namespace),
        });
    }
    if user.is_some() || password.is_some() {
        if matches!(conn.url, ConnectionUrl::Sqlite(_)) {
            return Err(MetadataError::Invalid {
                key: if user.is_some() {
                    USER_FROM_ENV
                } else {
                    PASSWORD_FROM_ENV
                },
                value: "(not shown)".into(),
                reason: format!("connection {connection:?} is SQLite, which has no credentials"),
            });
        }
        // The server's connection, with the ScaledObject's own user AND password: its own
        // pool. Never one of them with the server's other half (a borrowed password, or
        // guesses against the server's account).
        let (user, password) = credentials::both(user, password)?;
        let url = conn.url.with_credentials(Some(user), Some(password));
        credentials::checked(&url, USER_FROM_ENV, false, &ctx.connections)?;
        let mut own = conn.clone();
        own.name = dynamic_name(&url);
        own.url = url;
        own.pool_size = METADATA_POOL_SIZE;
        own.password_file = None;
        return finish(meta, query, target, activation, &connection, own, true, ctx);
    }
    finish(
        meta,
        query,
        target,
        activation,
        &connection,
        conn.clone(),
        false,
        ctx,
    )
}

pub(super) fn parse_number(key: &'static str, v: &str) -> Result<f64, MetadataError> {
    match v.parse::<f64>() {
        Ok(n) if n.is_finite() => Ok(n),
        _ => Err(invalid(key, v, "is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn ctx(conns: &[&str]) -> Context {
        Context {
            connections: conns
                .iter()
                .map(|s| {
                    let url = crate::config::parse_url("sqlite::memory:").unwrap();
                    (s.to_string(), ConnectionConfig::new(*s, url))
                })
                .collect(),
            engine: EngineConfig::default(),
            allow_credentials: false,
        }
    }

    fn parse(meta: &HashMap<String, String>, ctx: &Context) -> Result<ScalerSpec, MetadataError> {
        super::parse(meta, "ns", ctx)
    }

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const Q: (&str, &str) = ("query", "select count(*) from jobs");
    const T: (&str, &str) = ("targetQueryValue", "5");

    #[test]
    fn minimal_trigger_uses_defaults() {
        let spec = parse(&meta(&[Q, T]), &ctx(&["db"])).unwrap();
        assert_eq!(spec.poller.connection, "db");
        assert_eq!(spec.poller.poll_interval, Duration::from_secs(10));
        assert_eq!(spec.poller.query_timeout, Duration::from_secs(5));
        assert!(!spec.poller.ignore_nulls);
        assert_eq!(spec.target, 5.0);
        assert_eq!(spec.activation, 0.0);
        assert!(
            spec.metric_name.starts_with("orascale-db-"),
            "{}",
            spec.metric_name
        );
    }

    #[test]
    fn full_trigger() {
        let spec = parse(
            &meta(&[
                ("query", " SELECT 1 FROM dual; "),
                ("targetQueryValue", "2.5"),
                ("activationTargetQueryValue", "-1"),
                ("connection", "b"),
                ("pollInterval", "1m 30s"),
                ("queryTimeout", "250ms"),
                ("metricName", "orders-backlog"),
                ("ignoreNullValues", "TRUE"),
                ("scalerAddress", "orascale.keda:9090"),
                ("enableTLS", "false"),
                ("unsafeSsl", "true"),
                ("caCert", "-----BEGIN"),
                ("tlsClientCert", "x"),
                ("tlsClientKey", "y"),
            ]),
            &ctx(&["a", "b"]),
        )
        .unwrap();
        assert_eq!(spec.poller.query, "SELECT 1 FROM dual");
        assert_eq!(spec.poller.connection, "b");
        assert_eq!(spec.poller.poll_interval, Duration::from_secs(90));
        assert_eq!(spec.poller.query_timeout, Duration::from_millis(250));
        assert!(spec.poller.ignore_nulls);
        assert_eq!(spec.target, 2.5);
        assert_eq!(spec.activation, -1.0);
        assert_eq!(spec.metric_name, "orders-backlog");
    }

    /// Each invalid map, and a fragment its message must contain (the key, the value, the hint).
    #[test]
    fn invalid_cases_name_the_key() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (&[T], &["\"query\" is required"]),
            (&[("query", "  "), T], &["\"query\" is required"]),
            (&[Q], &["\"targetQueryValue\" is required"]),
            (
                &[("query", "delete from jobs"), T],
                &["\"query\"", "SQL guard", "starts with DELETE"],
            ),
            (
                &[("query", "update jobs set x=1"), T],
                &["\"query\"", "SELECT"],
            ),
            (
                &[("query", "select 1; delete from jobs"), T],
                &["\"query\"", "exactly one statement"],
            ),
            (
                &[("query", "select 1"), T, ("passwordFromEnv", "hunter2")],
                &["\"passwordFromEnv\"", "--allow-metadata-credentials"],
            ),
            (
                &[Q, ("targetQueryValue", "abc")],
                &["\"targetQueryValue\"", "\"abc\"", "not a number"],
            ),
            (
                &[Q, ("targetQueryValue", "0")],
                &["\"targetQueryValue\"", "\"0\"", "0.001"],
            ),
            (
                &[Q, ("targetQueryValue", "-3")],
                &["\"targetQueryValue\"", "0.001"],
            ),
            (
                &[Q, ("targetQueryValue", "NaN")],
                &["\"targetQueryValue\"", "not a number"],
            ),
            (
                &[Q, ("targetQueryValue", "inf")],
                &["\"targetQueryValue\"", "not a number"],
            ),
            (
                &[Q, ("targetQueryValue", "9.1e15")],
                &["\"targetQueryValue\"", "\"9.1e15\"", "at most 9e15"],
            ),
            (
                &[Q, ("targetQueryValue", "10000000000000000")],
                &[
                    "\"targetQueryValue\"",
                    "\"10000000000000000\"",
                    "at most 9e15",
                ],
            ),
            (
                &[Q, T, ("activationTargetQueryValue", "x")],
                &["\"activationTargetQueryValue\"", "\"x\""],
            ),
            (
                &[Q, T, ("pollInterval", "10")],
                &["\"pollInterval\"", "\"10\"", "unit"],
            ),
            (
                &[Q, T, ("pollInterval", "500ms")],
                &["\"pollInterval\"", "\"500ms\"", "minimum poll interval 1s"],
            ),
            (
                &[Q, T, ("queryTimeout", "soon")],
                &["\"queryTimeout\"", "\"soon\""],
            ),
            (
                &[Q, T, ("queryTimeout", "0s")],
                &["\"queryTimeout\"", "at least 1ms"],
            ),
            (
                &[Q, T, ("pollInterval", "18446744073709551615s")],
                &[
                    "\"pollInterval\"",
                    "\"18446744073709551615s\"",
                    "above the server maximum poll interval 1day",
                ],
            ),
            (
                &[Q, T, ("pollInterval", "200000000000y")],
                &["\"pollInterval\"", "\"200000000000y\""],
            ),
            (
                &[Q, T, ("queryTimeout", "200000000000y")],
                &["\"queryTimeout\"", "\"200000000000y\""],
            ),
            (
                &[Q, T, ("queryTimeout", "6m")],
                &[
                    "\"queryTimeout\"",
                    "\"6m\"",
                    "above the server maximum query timeout 5m",
                ],
            ),
            (
                &[Q, T, ("ignoreNullValues", "yes")],
                &["\"ignoreNullValues\"", "\"yes\""],
            ),
            (
                &[Q, T, ("metricName", "Orders_Backlog")],
                &["\"metricName\"", "lowercase", "orders-backlog"],
            ),
            (&[Q, T, ("metricName", "-x")], &["\"metricName\""]),
            (
                &[Q, T, ("connection", "nope")],
                &["\"connection\"", "\"nope\"", "db"],
            ),
            (
                &[Q, T, ("pollingInterval", "5s")],
                &[
                    "\"pollingInterval\"",
                    "pollInterval; pollingInterval is a ScaledObject field",
                ],
            ),
            (
                &[Q, T, ("targetqueryvalue", "5")],
                &["\"targetqueryvalue\"", "did you mean targetQueryValue"],
            ),
            (
                &[Q, T, ("querytimeout", "5s")],
                &["did you mean queryTimeout"],
            ),
            (
                &[Q, T, ("passwordx", "hunter2")],
                &["\"passwordx\" is not known"],
            ),
            (
                &[Q, T, ("connectionStringFromEnv", "x")],
                &["did you mean connection"],
            ),
        ];
        for (pairs, frags) in cases {
            let err = parse(&meta(pairs), &ctx(&["db"])).unwrap_err().to_string();
            for f in *frags {
                assert!(err.contains(f), "{pairs:?}: {err:?} lacks {f:?}");
            }
            assert!(
                !err.contains("hunter2"),
                "unknown values are not echoed: {err}"
            );
        }
    }

    #[test]
    fn connection_policies() {
        let mut c = ctx(&["a"]);
        let a = c.connections.get_mut("a").unwrap();
        a.namespaces = Some(vec!["team-*".into(), "ops".into()]);
        a.min_poll_interval = Some(Duration::from_secs(30));
        a.max_query_timeout = Some(Duration::from_secs(2));
        for ns in ["team-a", "team-", "ops"] {
            let spec = super::parse(&meta(&[Q, T]), ns, &c).unwrap();
            // The server default (10s) is raised to the connection's minimum.
            assert_eq!(spec.poller.poll_interval, Duration::from_secs(30));
            // The default timeout (5s) is capped at the connection's maximum.
            assert_eq!(spec.poller.query_timeout, Duration::from_secs(2));
        }
        for ns in ["ops2", "team", "default", ""] {
            let e = super::parse(&meta(&[Q, T]), ns, &c).unwrap_err();
            assert!(matches!(e, MetadataError::Forbidden { .. }), "{ns}: {e}");
            assert_eq!(
                e.to_string(),
                format!("connection \"a\" may not be used from namespace {ns:?}")
            );
        }
        let e = super::parse(&meta(&[Q, T, ("pollInterval", "10s")]), "ops", &c).unwrap_err();
        assert!(e.to_string().contains("minimum poll interval 30s"), "{e}");
        let e = super::parse(&meta(&[Q, T, ("queryTimeout", "3s")]), "ops", &c).unwrap_err();
        assert!(
            e.to_string()
                .contains("maximum query timeout 2s of connection \"a\""),
            "{e}"
        );
    }

    #[test]
    fn limits_on_size() {
        let c = ctx(&["db"]);
        let many: Vec<(String, String)> = (0..40)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        let many: HashMap<String, String> = many.into_iter().collect();
        assert!(
            parse(&many, &c)
                .unwrap_err()
                .to_string()
                .contains("has 40 entries (limit 32)")
        );
        let long_query = format!("select {}1", "1 + ".repeat(3000));
        let e = parse(&meta(&[("query", &long_query), T]), &c).unwrap_err();
        assert!(e.to_string().contains("(limit 8192)"), "{e}");
        let long_key = "k".repeat(200);
        let e = parse(&meta(&[Q, T, (&long_key, "v")]), &c).unwrap_err();
        assert!(e.to_string().contains("(limit 128)"), "{e}");
        let long_value = "v".repeat(20_000);
        let e = parse(&meta(&[Q, T, ("scalerAddress", &long_value)]), &c).unwrap_err();
        assert!(e.to_string().contains("(limit 16384)"), "{e}");
        assert!(e.to_string().len() < 400);
    }

    #[test]
    fn a_target_query_is_a_second_poller_on_the_same_connection() {
        let tq = (
            "targetQuery",
            " select target from scaling_targets where name = 'jobs'; ",
        );
        let spec = parse(&meta(&[Q, T, tq, ("queryTimeout", "2s")]), &ctx(&["db"])).unwrap();
        let t = spec.target_poller.expect("a target poller");
        assert_eq!(t.connection, "db");
        assert_eq!(
            t.query,
            "select target from scaling_targets where name = 'jobs'"
        );
        assert_eq!(t.poll_interval, Duration::from_secs(60), "the default");
        assert_eq!(t.query_timeout, Duration::from_secs(2), "the trigger's");
        assert!(t.ignore_nulls, "NULL reads as 0: the static fallback");
        assert_eq!(spec.target, 5.0, "targetQueryValue is the fallback");
        assert_ne!(t, spec.poller);

        let spec = parse(
            &meta(&[Q, T, tq, ("targetPollInterval", "1m 30s")]),
            &ctx(&["db"]),
        )
        .unwrap();
        assert_eq!(
            spec.target_poller.unwrap().poll_interval,
            Duration::from_secs(90)
        );
        // Identical triggers get identical keys (and so share the poller).
        let a = parse(&meta(&[Q, T, tq]), &ctx(&["db"])).unwrap();
        let b = parse(&meta(&[Q, ("targetQueryValue", "9"), tq]), &ctx(&["db"])).unwrap();
        assert_eq!(a.target_poller, b.target_poller);
        // Without targetQuery: none, and an empty one is none too.
        assert_eq!(
            parse(&meta(&[Q, T]), &ctx(&["db"])).unwrap().target_poller,
            None
        );
        let empty = parse(&meta(&[Q, T, ("targetQuery", " ")]), &ctx(&["db"])).unwrap();
        assert_eq!(empty.target_poller, None);
        // The default interval never exceeds the server's maximum.
        let mut c = ctx(&["db"]);
        c.engine.max_poll_interval = Duration::from_secs(20);
        let spec = parse(&meta(&[Q, T, tq]), &c).unwrap();
        assert_eq!(
            spec.target_poller.unwrap().poll_interval,
            Duration::from_secs(20)
        );
    }

    #[test]
    fn target_query_errors_name_the_key() {
        let tq = ("targetQuery", "select 3");
        let long = "x".repeat(EngineConfig::default().limits.max_query_length + 1);
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                &[Q, tq],
                &["\"targetQueryValue\" is required", "fallback target"],
            ),
            (
                &[Q, T, ("targetPollInterval", "5m")],
                &["\"targetPollInterval\"", "\"5m\"", "without targetQuery"],
            ),
            (
                &[Q, T, tq, ("targetPollInterval", "10")],
                &["\"targetPollInterval\"", "\"10\"", "not a duration"],
            ),
            (
                &[Q, T, tq, ("targetPollInterval", "10ms")],
                &["\"targetPollInterval\"", "below the server minimum"],
            ),
            (
                &[Q, T, tq, ("targetPollInterval", "400d")],
                &["\"targetPollInterval\"", "--max-poll-interval"],
            ),
            (
                &[Q, T, ("targetQuery", "delete from targets")],
                &["\"targetQuery\"", "SQL guard", "DELETE"],
            ),
            (
                &[Q, T, ("targetQuery", "select 1; select 2")],
                &["\"targetQuery\"", "exactly one statement"],
            ),
            (
                &[Q, T, ("targetQuery", long.as_str())],
                &["key \"targetQuery\" is", "bytes long"],
            ),
            (
                &[Q, T, tq, ("activationTargetQuery", "select 1")],
                &["\"activationTargetQuery\"", "not supported"],
            ),
            (
                &[Q, T, ("targetquery", "select 1")],
                &["did you mean targetQuery"],
            ),
        ];
        for (pairs, wants) in cases {
            let err = parse(&meta(pairs), &ctx(&["db"])).unwrap_err().to_string();
            for want in *wants {
                assert!(err.contains(want), "{pairs:?}: {err:?} lacks {want:?}");
            }
            assert!(err.len() < 600, "{err}");
        }
        // The target query gets the connection's guard: database links on Oracle.
        let mut c = ctx(&["ora"]);
        c.connections.get_mut("ora").unwrap().url =
            crate::config::parse_url("oracle://u@h:1521/S").unwrap();
        let e = parse(
            &meta(&[Q, T, ("targetQuery", "select t from targets@remote")]),
            &c,
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"targetQuery\""), "{e}");
        assert!(e.to_string().contains("database links"), "{e}");
    }

    #[test]
    fn dialect_follows_the_connection() {
        let mut c = ctx(&["ora"]);
        c.connections.get_mut("ora").unwrap().url =
            crate::config::parse_url("oracle://u@h:1521/S").unwrap();
        let q = ("query", "select count(*) from jobs@remote");
        let e = parse(&meta(&[q, T]), &c).unwrap_err();
        assert!(e.to_string().contains("database links"), "{e}");
        c.connections.get_mut("ora").unwrap().allow_dblinks = true;
        assert!(parse(&meta(&[q, T]), &c).is_ok());
    }

    #[test]
    fn wake_ups_need_postgres_or_oracle_and_a_valid_channel() {
        let mut c = ctx(&["pg", "lite", "ora"]);
        c.connections.get_mut("pg").unwrap().url =
            crate::config::parse_url("postgres://u@h/db").unwrap();
        c.connections.get_mut("ora").unwrap().url =
            crate::config::parse_url("oracle://u@h:1521/S").unwrap();
        let pg = ("connection", "pg");
        let spec = parse(&meta(&[Q, T, pg, ("notifyChannel", "jobs_changed")]), &c).unwrap();
        let wake = spec.wake.unwrap();
        assert_eq!(wake.channel, "jobs_changed");
        assert_eq!(wake.min_interval, Duration::from_millis(100));
        let spec = parse(
            &meta(&[
                Q,
                T,
                pg,
                ("notifyChannel", "_q$1"),
                ("minWakeInterval", "2s"),
            ]),
            &c,
        )
        .unwrap();
        assert_eq!(spec.wake.unwrap().min_interval, Duration::from_secs(2));
        assert_eq!(parse(&meta(&[Q, T, pg]), &c).unwrap().wake, None);
        // Wake-ups are not part of the poller key: the same query shares one poller, which
        // waits on every channel its users name.
        let a = parse(&meta(&[Q, T, pg, ("notifyChannel", "a")]), &c).unwrap();
        let b = parse(&meta(&[Q, T, pg, ("notifyChannel", "b")]), &c).unwrap();
        let none = parse(&meta(&[Q, T, pg]), &c).unwrap();
        assert_eq!(a.poller, b.poller);
        assert_eq!(a.poller, none.poller);
        assert_ne!(a.wake, b.wake);
        let long = "x".repeat(64);
        for (pairs, key, fragment) in [
            (
                vec![("connection", "lite"), ("notifyChannel", "jobs")],
                "notifyChannel",
                "is SQLite",
            ),
            (
                vec![("connection", "ora"), ("notifyChannel", "1jobs")],
                "notifyChannel",
                "DBMS_ALERT name",
            ),
            (
                vec![pg, ("notifyChannel", "Jobs")],
                "notifyChannel",
                "use lowercase",
            ),
            (
                vec![pg, ("notifyChannel", "1jobs")],
                "notifyChannel",
                "a-z or _ first",
            ),
            (
                vec![pg, ("notifyChannel", "jobs changed")],
                "notifyChannel",
                "identifier",
            ),
            (
                vec![pg, ("notifyChannel", "a\"; drop table x; --")],
                "notifyChannel",
                "identifier",
            ),
            (
                vec![pg, ("notifyChannel", &long)],
                "notifyChannel",
                "63 bytes",
            ),
            (
                vec![pg, ("minWakeInterval", "1s")],
                "minWakeInterval",
                "without notifyChannel",
            ),
            (
                vec![pg, ("notifyChannel", "j"), ("minWakeInterval", "10ms")],
                "minWakeInterval",
                "--min-wake-interval",
            ),
            (
                vec![pg, ("notifyChannel", "j"), ("minWakeInterval", "1m")],
                "minWakeInterval",
                "above the pollInterval",
            ),
            (
                vec![pg, ("notifyChannel", "j"), ("minWakeInterval", "5")],
                "minWakeInterval",
                "not a duration",
            ),
        ] {
            let mut pairs = pairs;
            pairs.extend([Q, T]);
            let e = parse(&meta(&pairs), &c).unwrap_err().to_string();
            assert!(e.contains(&format!("{key:?}")), "{pairs:?}: {e}");
            assert!(e.contains(fragment), "{pairs:?}: {e}");
        }
        // The server minimum is the operator's to lower.
        c.engine.min_wake_interval = Duration::from_millis(10);
        let spec = parse(
            &meta(&[
                Q,
                T,
                pg,
                ("notifyChannel", "j"),
                ("minWakeInterval", "10ms"),
            ]),
            &c,
        )
        .unwrap();
        assert_eq!(spec.wake.unwrap().min_interval, Duration::from_millis(10));
        // Extreme values never panic; an error names its key.
        let long = "y".repeat(100_000);
        for v in [
            "",
            " ",
            "\0",
            "🚀",
            "x\"y",
            "-1s",
            "0s",
            "1ns",
            "1e400",
            "18446744073709551615s",
            "99999999999999999999h",
            "NaN",
            &long,
        ] {
            for (key, pairs) in [
                ("notifyChannel", vec![pg, ("notifyChannel", v)]),
                (
                    "minWakeInterval",
                    vec![pg, ("notifyChannel", "j"), ("minWakeInterval", v)],
                ),
            ] {
                let mut pairs = pairs;
                pairs.extend([Q, T]);
                if let Err(e) = parse(&meta(&pairs), &c) {
                    let e = e.to_string();
                    assert!(e.contains(key) || e.contains("limit"), "{key}={v:?}: {e}");
                }
            }
        }
        assert!(
            parse(&meta(&[Q, T, ("notifyQueue", "x")]), &c)
                .unwrap_err()
                .to_string()
                .contains("notifyChannel")
        );
    }

    #[test]
    fn metadata_credentials_make_their_own_connection() {
        let mut c = ctx(&["orders"]);
        c.allow_credentials = true;
        c.connections.get_mut("orders").unwrap().url =
            crate::config::parse_url("postgres://srv:srvpw@db/shop").unwrap();
        c.connections.insert(
            "reports".into(),
            ConnectionConfig::new(
                "reports",
                crate::config::parse_url("postgres://rep_user:bobpw@db9/rep").unwrap(),
            ),
        );
        let so = |extra: &[(&str, &str)]| {
            let mut pairs = vec![Q, T];
            pairs.extend_from_slice(extra);
            parse(&meta(&pairs), &c)
        };
        let a = so(&[
            ("connectionFromEnv", "postgres://db2/shop"),
            ("userFromEnv", "alice"),
            ("passwordFromEnv", "pw-a"),
        ])
        .unwrap();
        let a2 = so(&[
            ("connectionFromEnv", "postgres://db2/shop"),
            ("userFromEnv", "alice"),
            ("passwordFromEnv", "pw-a"),
        ])
        .unwrap();
        let b = so(&[
            ("connectionFromEnv", "postgres://db2/shop"),
            ("userFromEnv", "alice"),
            ("passwordFromEnv", "pw-b"),
        ])
        .unwrap();
        assert!(
            a.poller.connection.starts_with("meta-"),
            "{}",
            a.poller.connection
        );
        assert_eq!(
            a.poller, a2.poller,
            "equal credentials share a poller and pool"
        );
        assert_ne!(
            a.poller.connection, b.poller.connection,
            "different credentials never share"
        );
        assert!(a.metric_name.starts_with("orascale-meta-"));
        let dynamic = a.dynamic.unwrap();
        assert_eq!(dynamic.pool_size, METADATA_POOL_SIZE);
        assert!(!format!("{dynamic:?}").contains("pw-a"));
        assert!(!a.poller.connection.contains("pw-a"));

        // The server's connection with the ScaledObject's own credentials.
        let own = so(&[
            ("connection", "orders"),
            ("userFromEnv", "bob"),
            ("passwordFromEnv", "pw-bob"),
        ])
        .unwrap();
        assert!(own.poller.connection.starts_with("meta-"));
        assert!(
            own.metric_name.starts_with("orascale-orders-"),
            "{}",
            own.metric_name
        );
        let plain = so(&[("connection", "orders")]).unwrap();
        assert_eq!(plain.poller.connection, "orders");
        assert!(plain.dynamic.is_none());

        for (extra, frag) in [
            (
                vec![("connectionFromEnv", "sqlite:/etc/passwd-ish.db")],
                "postgres:// or oracle://",
            ),
            (
                vec![("connectionFromEnv", "mysql://u:hunter2@h/db")],
                "not built in",
            ),
        ] {
            let e = so(&extra).unwrap_err().to_string();
            assert!(e.contains(frag), "{e}");
            assert!(!e.contains("hunter2") && !e.contains("passwd-ish"), "{e}");
        }
        // Both-or-nothing with a server connection; never the server's own user.
        for (extra, key, fragment) in [
            (
                vec![("connection", "orders"), ("userFromEnv", "bob")],
                "passwordFromEnv",
                "server's password is never used with another user",
            ),
            (
                vec![("connection", "orders"), ("passwordFromEnv", "guess-1")],
                "userFromEnv",
                "never tried against the server's own user",
            ),
            (
                vec![
                    ("connection", "orders"),
                    ("userFromEnv", "srv"),
                    ("passwordFromEnv", "guess-2"),
                ],
                "userFromEnv",
                "user of this server's connection",
            ),
            (
                vec![
                    ("connectionFromEnv", "postgres://db2:notaport/shop"),
                    ("userFromEnv", "alice"),
                    ("passwordFromEnv", "pw-a"),
                ],
                "connectionFromEnv",
                "not a valid PostgreSQL URL",
            ),
            (
                vec![
                    ("connectionFromEnv", "postgres://db2/shop"),
                    ("passwordFromEnv", "pw-a"),
                ],
                "userFromEnv",
                "needs a user",
            ),
            (
                vec![("connectionFromEnv", "postgres://alice@db2/shop")],
                "passwordFromEnv",
                "needs a password",
            ),
            (
                vec![("connectionFromEnv", "oracle://alice@db2:1521/S")],
                "passwordFromEnv",
                "needs a password",
            ),
        ] {
            let e = so(&extra).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(&format!("{key:?}")), "{extra:?}: {text}");
            assert!(text.contains(fragment), "{extra:?}: {text}");
            for secret in ["guess-1", "guess-2", "pw-a", "srvpw", "notaport"] {
                assert!(!text.contains(secret), "{extra:?}: {text}");
            }
        }
        // The user of any server-side connection of the kind, through any path; Unix sockets
        // on the scaler's host; names that are not plain names.
        for (extra, key, fragment) in [
            (
                vec![
                    ("connection", "orders"),
                    ("userFromEnv", "rep_user"),
                    ("passwordFromEnv", "g-3"),
                ],
                "userFromEnv",
                "connection \"reports\"",
            ),
            (
                vec![("connectionFromEnv", "postgres://srv:g-4@db/shop")],
                "userFromEnv",
                "connection \"orders\"",
            ),
            (
                vec![(
                    "connectionFromEnv",
                    "postgres://alice@db/shop?user=srv&password=g-5",
                )],
                "userFromEnv",
                "connection \"orders\"",
            ),
            (
                vec![
                    ("connectionFromEnv", "postgres://db2/shop"),
                    ("userFromEnv", "rep_user"),
                    ("passwordFromEnv", "g-6"),
                ],
                "userFromEnv",
                "connection \"reports\"",
            ),
            (
                vec![(
                    "connectionFromEnv",
                    "postgres://alice:g-7@localhost/shop?host=/run/pg&port=5432",
                )],
                "connectionFromEnv",
                "Unix socket",
            ),
            (
                vec![
                    ("connection", "orders"),
                    ("userFromEnv", "al\u{0}ice"),
                    ("passwordFromEnv", "g-8"),
                ],
                "userFromEnv",
                "plain user name",
            ),
        ] {
            let e = so(&extra).unwrap_err().to_string();
            assert!(e.contains(&format!("{key:?}")), "{extra:?}: {e}");
            assert!(e.contains(fragment), "{extra:?}: {e}");
            assert!(!e.contains("g-") && !e.contains("bobpw"), "{extra:?}: {e}");
        }
        // The URL's own credentials complete the keys (all of it is the ScaledObject's).
        let url_pw = so(&[
            ("connectionFromEnv", "postgres://alice:pw-url@db2/shop"),
            ("userFromEnv", "carol"),
        ])
        .unwrap();
        assert!(url_pw.dynamic.is_some());
        // Oracle folds unquoted user names: the server's SCOTT is scott too.
        let mut ora = ctx(&["ora"]);
        ora.allow_credentials = true;
        ora.connections.get_mut("ora").unwrap().url =
            crate::config::parse_url("oracle://SCOTT:tiger@db:1521/S").unwrap();
        let e = super::parse(
            &meta(&[Q, T, ("userFromEnv", "scott"), ("passwordFromEnv", "x1")]),
            "ns",
            &ora,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("user of this server's connection"), "{e}");
        for user in ["\"SCOTT\"", "APP[SCOTT]"] {
            let e = super::parse(
                &meta(&[Q, T, ("userFromEnv", user), ("passwordFromEnv", "x1")]),
                "ns",
                &ora,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("plain user name"), "{user}: {e}");
        }
        let other = super::parse(
            &meta(&[Q, T, ("userFromEnv", "app_ro"), ("passwordFromEnv", "x1")]),
            "ns",
            &ora,
        )
        .unwrap();
        match &other.dynamic.as_ref().unwrap().url {
            ConnectionUrl::Oracle { user, password, .. } => {
                assert_eq!((user.as_str(), password.as_deref()), ("app_ro", Some("x1")));
            }
            u => panic!("{u:?}"),
        }

        let mut lite = ctx(&["lite"]);
        lite.allow_credentials = true;
        let e = super::parse(&meta(&[Q, T, ("passwordFromEnv", "pw")]), "ns", &lite)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SQLite") && !e.contains("pw\""), "{e}");
    }

    #[test]
    fn connection_choice() {
        let e = parse(&meta(&[Q, T]), &ctx(&["a", "b"])).unwrap_err();
        assert!(e.to_string().contains("\"connection\" is required"), "{e}");
        assert!(e.to_string().contains("a, b"), "{e}");
        assert_eq!(
            parse(&meta(&[Q, T]), &ctx(&[])).unwrap_err(),
            MetadataError::NoConnections
        );
    }

    #[test]
    fn quotes_are_cut() {
        assert_eq!(quote("short"), "short");
        let exact = "é".repeat(QUOTE_MAX);
        assert_eq!(quote(&exact), exact);
        let long = "é".repeat(4 * 1024 * 1024);
        assert_eq!(quote(&long), format!("{}…", "é".repeat(QUOTE_MAX)));
    }

    #[test]
    fn long_values_are_truncated_in_errors() {
        let long = "x".repeat(5000);
        let err = parse(&meta(&[Q, ("targetQueryValue", &long)]), &ctx(&["db"]))
            .unwrap_err()
            .to_string();
        assert!(err.len() < 400, "{}", err.len());
    }

    proptest! {
        #[test]
        fn no_input_panics(map in proptest::collection::hash_map(
            prop_oneof![
                Just("query".to_string()), Just("targetQueryValue".to_string()),
                Just("activationTargetQueryValue".to_string()), Just("pollInterval".to_string()),
                Just("queryTimeout".to_string()), Just("metricName".to_string()),
                Just("ignoreNullValues".to_string()), Just("connection".to_string()),
                ".{0,20}",
            ],
            ".{0,40}",
            0..10,
        )) {
            let _ = parse(&map, &ctx(&["db", "other"]));
        }

        #[test]
        fn valid_numbers_round_trip(t in 0.001f64..1e12, a in -1e12f64..1e12) {
            let m = meta(&[Q, ("targetQueryValue", &t.to_string()), ("activationTargetQueryValue", &a.to_string())]);
            let spec = parse(&m, &ctx(&["db"])).unwrap();
            prop_assert_eq!(spec.target, t);
            prop_assert_eq!(spec.activation, a);
        }
    }
}
