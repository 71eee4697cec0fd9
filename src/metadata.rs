//! A trigger's `scalerMetadata` map → a typed [`ScalerSpec`]. Pure: no I/O, no clock.
//!
//! Every error names the key and, where it is not a secret, the value, and says what to write
//! instead. Unknown keys are errors with a "did you mean" hint, because a misspelt optional key
//! (say `pollingInterval`) would otherwise be silently ignored.

use std::collections::HashMap;
use std::time::Duration;

use crate::config::{EngineConfig, parse_duration};
use crate::engine::PollerKey;

pub const QUERY: &str = "query";
pub const TARGET_QUERY_VALUE: &str = "targetQueryValue";
pub const ACTIVATION_TARGET_QUERY_VALUE: &str = "activationTargetQueryValue";
pub const CONNECTION: &str = "connection";
pub const POLL_INTERVAL: &str = "pollInterval";
pub const QUERY_TIMEOUT: &str = "queryTimeout";
pub const METRIC_NAME: &str = "metricName";
pub const IGNORE_NULL_VALUES: &str = "ignoreNullValues";

/// Our keys, for the "did you mean" hint.
const KEYS: &[&str] = &[
    QUERY,
    TARGET_QUERY_VALUE,
    ACTIVATION_TARGET_QUERY_VALUE,
    CONNECTION,
    POLL_INTERVAL,
    QUERY_TIMEOUT,
    METRIC_NAME,
    IGNORE_NULL_VALUES,
];

/// KEDA's own keys: they arrive in scalerMetadata (KEDA.md) and are accepted and ignored.
const KEDA_KEYS: &[&str] = &[
    "scalerAddress",
    "enableTLS",
    "unsafeSsl",
    "caCert",
    "tlsClientCert",
    "tlsClientKey",
];

/// Keys users bring from elsewhere, with what to write instead.
const HINTS: &[(&str, &str)] = &[
    (
        "pollingInterval",
        "pollInterval; pollingInterval is a ScaledObject field",
    ),
    (
        "cooldownPeriod",
        "nothing here; cooldownPeriod is a ScaledObject field",
    ),
    (
        "metricType",
        "nothing here; metricType is a trigger field, not metadata",
    ),
    ("timeout", "queryTimeout"),
    ("sql", "query"),
    ("threshold", "targetQueryValue"),
    ("targetValue", "targetQueryValue"),
    ("activationThreshold", "activationTargetQueryValue"),
    ("activationValue", "activationTargetQueryValue"),
    (
        "connectionString",
        "connection, the name of a connection configured on the orascale server",
    ),
    (
        "connectionStringFromEnv",
        "connection, the name of a connection configured on the orascale server",
    ),
    (
        "host",
        "connection, the name of a connection configured on the orascale server",
    ),
];

/// Longest value quoted back in an error message.
const QUOTE_MAX: usize = 120;

/// What one trigger asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalerSpec {
    /// Which poller serves this trigger: identical keys share one.
    pub poller: PollerKey,
    pub target: f64,
    pub activation: f64,
    pub metric_name: String,
}

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
    #[error("metadata key {key:?} is not known to orascale{}", hint.as_ref().map(|h| format!(" (did you mean {h})")).unwrap_or_default())]
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
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

fn quote(value: &str) -> String {
    if value.chars().count() <= QUOTE_MAX {
        value.to_string()
    } else {
        let cut: String = value.chars().take(QUOTE_MAX).collect();
        format!("{cut}…")
    }
}

fn invalid(key: &'static str, value: &str, reason: impl Into<String>) -> MetadataError {
    MetadataError::Invalid {
        key,
        value: quote(value),
        reason: reason.into(),
    }
}

/// What the parser needs from the server: its connections and engine defaults.
#[derive(Debug, Clone)]
pub struct Context {
    /// Sorted connection names.
    pub connections: Vec<String>,
    pub engine: EngineConfig,
}

/// Parses one trigger's metadata.
pub fn parse(meta: &HashMap<String, String>, ctx: &Context) -> Result<ScalerSpec, MetadataError> {
    // Report unknown keys first, in a stable order, so the answer does not depend on map order.
    let mut unknown: Vec<&String> = meta
        .keys()
        .filter(|k| !KEYS.contains(&k.as_str()) && !KEDA_KEYS.contains(&k.as_str()))
        .collect();
    unknown.sort();
    if let Some(key) = unknown.first() {
        return Err(MetadataError::UnknownKey {
            key: quote(key),
            hint: hint_for(key),
        });
    }

    let get = |key: &'static str| meta.get(key).map(|v| v.trim());

    let query = match get(QUERY) {
        None | Some("") => {
            return Err(MetadataError::Missing {
                key: QUERY,
                what: "one SELECT whose first column of the first row is the metric",
            });
        }
        Some(q) => parse_query(q)?,
    };

    let target = match get(TARGET_QUERY_VALUE) {
        None | Some("") => {
            return Err(MetadataError::Missing {
                key: TARGET_QUERY_VALUE,
                what: "the value one replica handles, a number ≥ 0.001",
            });
        }
        Some(v) => {
            let t = parse_number(TARGET_QUERY_VALUE, v)?;
            if t < 0.001 {
                return Err(invalid(
                    TARGET_QUERY_VALUE,
                    v,
                    "must be at least 0.001 (KEDA rounds targets to 3 decimals; 0 breaks the HPA)",
                ));
            }
            t
        }
    };

    let activation = match get(ACTIVATION_TARGET_QUERY_VALUE) {
        None | Some("") => 0.0,
        Some(v) => parse_number(ACTIVATION_TARGET_QUERY_VALUE, v)?,
    };

    let connection = match get(CONNECTION) {
        Some(name) if !name.is_empty() => {
            if !ctx.connections.iter().any(|c| c == name) {
                return Err(MetadataError::UnknownConnection {
                    name: quote(name),
                    known: ctx.connections.clone(),
                });
            }
            name.to_string()
        }
        _ => match ctx.connections.as_slice() {
            [only] => only.clone(),
            [] => return Err(MetadataError::NoConnections),
            many => {
                return Err(MetadataError::ConnectionRequired {
                    known: many.to_vec(),
                });
            }
        },
    };

    let poll_interval = match get(POLL_INTERVAL) {
        None | Some("") => ctx.engine.default_poll_interval,
        Some(v) => {
            let d = parse_duration(v)
                .map_err(|e| invalid(POLL_INTERVAL, v, format!("is not a duration: {e}")))?;
            if d < ctx.engine.min_poll_interval {
                return Err(invalid(
                    POLL_INTERVAL,
                    v,
                    format!(
                        "is below the server minimum poll interval {}",
                        humantime::format_duration(ctx.engine.min_poll_interval)
                    ),
                ));
            }
            d
        }
    };

    let query_timeout = match get(QUERY_TIMEOUT) {
        None | Some("") => ctx.engine.default_query_timeout,
        Some(v) => {
            let d = parse_duration(v)
                .map_err(|e| invalid(QUERY_TIMEOUT, v, format!("is not a duration: {e}")))?;
            if d < Duration::from_millis(1) {
                return Err(invalid(QUERY_TIMEOUT, v, "must be at least 1ms"));
            }
            d
        }
    };

    let ignore_nulls = match get(IGNORE_NULL_VALUES) {
        None | Some("") => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(invalid(
                IGNORE_NULL_VALUES,
                v,
                "must be \"true\" or \"false\"",
            ));
        }
    };

    let metric_name = match get(METRIC_NAME) {
        None | Some("") => default_metric_name(&connection, &query),
        Some(v) => parse_metric_name(v)?,
    };

    Ok(ScalerSpec {
        poller: PollerKey {
            connection,
            query,
            poll_interval,
            query_timeout,
            ignore_nulls,
        },
        target,
        activation,
        metric_name,
    })
}

/// A first, cheap check that the query is a single SELECT; the database enforces the rest
/// (sources open read-only sessions).
fn parse_query(q: &str) -> Result<String, MetadataError> {
    // Oracle rejects a trailing `;`, so strip exactly one.
    let q = q.strip_suffix(';').unwrap_or(q).trim_end();
    let first_word: String = q
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    if !(first_word.eq_ignore_ascii_case("select") || first_word.eq_ignore_ascii_case("with")) {
        return Err(invalid(
            QUERY,
            q,
            "must be a single SELECT (or WITH … SELECT) statement",
        ));
    }
    Ok(q.to_string())
}

fn parse_number(key: &'static str, v: &str) -> Result<f64, MetadataError> {
    match v.parse::<f64>() {
        Ok(n) if n.is_finite() => Ok(n),
        _ => Err(invalid(key, v, "is not a number")),
    }
}

fn parse_metric_name(v: &str) -> Result<String, MetadataError> {
    let valid_chars = v
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if v.len() > 100 {
        return Err(invalid(METRIC_NAME, v, "is longer than 100 characters"));
    }
    if !valid_chars {
        let lowered = sanitize(v);
        return Err(invalid(
            METRIC_NAME,
            v,
            format!(
                "must be lowercase [a-z0-9-] (the HPA lowercases metric names){}",
                if lowered.is_empty() {
                    String::new()
                } else {
                    format!(": did you mean {lowered:?}?")
                }
            ),
        ));
    }
    if v.starts_with('-') || v.ends_with('-') {
        return Err(invalid(METRIC_NAME, v, "must not start or end with '-'"));
    }
    Ok(v.to_string())
}

/// Lowercase `[a-z0-9-]`, runs of other characters as one `-`, no leading/trailing `-`.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// `orascale-<connection>-<hash of the query>`: deterministic across replicas and restarts,
/// so every replica behind a Service answers for the same name.
pub fn default_metric_name(connection: &str, query: &str) -> String {
    let conn = sanitize(connection);
    let conn: String = conn.chars().take(40).collect();
    let conn = conn.trim_end_matches('-');
    format!("orascale-{conn}-{:012x}", fnv1a(query.as_bytes()) >> 16)
}

/// FNV-1a 64: stable across Rust versions and platforms, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn hint_for(key: &str) -> Option<String> {
    if let Some((_, h)) = HINTS.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
        return Some((*h).to_string());
    }
    KEYS.iter()
        .map(|k| {
            (
                k,
                distance(&k.to_ascii_lowercase(), &key.to_ascii_lowercase()),
            )
        })
        .filter(|(k, d)| *d <= 3.max(k.len() / 5))
        .min_by_key(|(_, d)| *d)
        .map(|(k, _)| (*k).to_string())
}

/// Levenshtein distance, for short keys.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().take(200).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx(conns: &[&str]) -> Context {
        Context {
            connections: conns.iter().map(|s| s.to_string()).collect(),
            engine: EngineConfig::default(),
        }
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
                &["\"query\"", "delete from jobs", "SELECT"],
            ),
            (
                &[("query", "update jobs set x=1"), T],
                &["\"query\"", "SELECT"],
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
    fn default_metric_name_is_stable_and_valid() {
        let a = default_metric_name("Orders_DB", "select 1");
        assert_eq!(a, default_metric_name("Orders_DB", "select 1"));
        assert_ne!(a, default_metric_name("Orders_DB", "select 2"));
        assert!(a.starts_with("orascale-orders-db-"), "{a}");
        assert!(parse_metric_name(&a).is_ok());
        // Pinned: replicas and restarts must agree on the name KEDA asks for.
        assert_eq!(
            default_metric_name("db", "select 1"),
            "orascale-db-02fb785a1a5a"
        );
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
