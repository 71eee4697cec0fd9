//! The settings that make a trigger's poller: connection, guarded query, interval, timeout,
//! nulls. Identical settings share one poller.

use std::collections::HashMap;
use std::time::Duration;

use super::naming::parse_metric_name;
use super::*;
use crate::config::parse_duration;
use crate::trigger::WakeKey;

/// `targetPollInterval` when not given: targets are tuned by people, not by the load, so a
/// longer interval than the metric's serves them (a `notifyChannel` wake-up polls at once).
pub const TARGET_POLL_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);

/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
const PG_CHANNEL_MAX: usize = 63;
/// Oracle's `DBMS_ALERT` name limit.
const ORACLE_CHANNEL_MAX: usize = 30;

/// The rest of the parse, once the connection is known. `label` names the connection in the
/// default metric name (stable across replicas).
#[allow(clippy::too_many_arguments)]
pub(super) fn finish(
    meta: &HashMap<String, String>,
    query: &str,
    target: f64,
    activation: f64,
    label: &str,
    conn: ConnectionConfig,
    dynamic: bool,
    ctx: &Context,
) -> Result<ScalerSpec, MetadataError> {
    let get = |key: &'static str| meta.get(key).map(|v| v.trim());
    let connection = conn.name.clone();
    let query = guarded(query, &conn)?;
    let min_poll_interval = conn
        .min_poll_interval
        .unwrap_or(ctx.engine.min_poll_interval);

    let poll_interval = match get(POLL_INTERVAL) {
        None | Some("") => ctx.engine.default_poll_interval,
        Some(v) => bounded_interval(POLL_INTERVAL, v, min_poll_interval, ctx)?,
    };
    // The server default may itself be below a connection's minimum.
    let poll_interval = poll_interval.max(min_poll_interval);

    let query_timeout = match get(QUERY_TIMEOUT) {
        None | Some("") => ctx.engine.default_query_timeout,
        Some(v) => {
            let d = parse_duration(v)
                .map_err(|e| invalid(QUERY_TIMEOUT, v, format!("is not a duration: {e}")))?;
            if d < Duration::from_millis(1) {
                return Err(invalid(QUERY_TIMEOUT, v, "must be at least 1ms"));
            }
            if d > ctx.engine.max_query_timeout {
                return Err(invalid(
                    QUERY_TIMEOUT,
                    v,
                    format!(
                        "is above the server maximum query timeout {} (--max-query-timeout)",
                        humantime::format_duration(ctx.engine.max_query_timeout)
                    ),
                ));
            }
            if let Some(max) = conn.max_query_timeout
                && d > max
            {
                return Err(invalid(
                    QUERY_TIMEOUT,
                    v,
                    format!(
                        "is above the maximum query timeout {} of connection {connection:?}",
                        humantime::format_duration(max)
                    ),
                ));
            }
            d
        }
    };
    let query_timeout = conn
        .max_query_timeout
        .map_or(query_timeout, |max| query_timeout.min(max));

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

    let wake = wake(&get, &conn, poll_interval, ctx)?;
    let target_poller = target_poller(&get, &conn, min_poll_interval, query_timeout, ctx)?;

    let metric_name = match get(METRIC_NAME) {
        None | Some("") => default_metric_name(label, &query),
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
        target_poller,
        wake,
        target,
        activation,
        metric_name,
        dynamic: dynamic.then(|| Box::new(conn)),
    })
}

/// `targetQuery` and `targetPollInterval`: the poller whose value is the metric spec's target.
/// The same connection, guard, query timeout and one-row rule as `query`; NULL or no rows read
/// as 0, which the handlers serve as the static fallback (a target is never an error).
fn target_poller<'a>(
    get: &impl Fn(&'static str) -> Option<&'a str>,
    conn: &ConnectionConfig,
    min_poll_interval: Duration,
    query_timeout: Duration,
    ctx: &Context,
) -> Result<Option<PollerKey>, MetadataError> {
    let interval_value = get(TARGET_POLL_INTERVAL).filter(|v| !v.is_empty());
    let query = match get(TARGET_QUERY).filter(|v| !v.is_empty()) {
        Some(q) => q,
        None => {
            if let Some(v) = interval_value {
                return Err(invalid(
                    TARGET_POLL_INTERVAL,
                    v,
                    "has no effect without targetQuery: set both, or remove targetPollInterval",
                ));
            }
            return Ok(None);
        }
    };
    let query = within_limit(TARGET_QUERY, query, &ctx.engine.limits)?;
    let query =
        guard::screen(query, dialect(&conn.url), conn.allow_dblinks).map_err(|rejection| {
            MetadataError::GuardOn {
                key: TARGET_QUERY,
                rejection,
            }
        })?;
    let default = TARGET_POLL_INTERVAL_DEFAULT.min(ctx.engine.max_poll_interval);
    let interval = match interval_value {
        None => default,
        Some(v) => bounded_interval(TARGET_POLL_INTERVAL, v, min_poll_interval, ctx)?,
    };
    Ok(Some(PollerKey {
        connection: conn.name.clone(),
        query,
        poll_interval: interval.max(min_poll_interval),
        query_timeout,
        ignore_nulls: true,
    }))
}

/// A poll interval key's value: a duration between the connection's (or server's) minimum and
/// `--max-poll-interval`.
fn bounded_interval(
    key: &'static str,
    v: &str,
    min: Duration,
    ctx: &Context,
) -> Result<Duration, MetadataError> {
    let d = parse_duration(v).map_err(|e| invalid(key, v, format!("is not a duration: {e}")))?;
    if d < min {
        return Err(invalid(
            key,
            v,
            format!(
                "is below the server minimum poll interval {}",
                humantime::format_duration(min)
            ),
        ));
    }
    if d > ctx.engine.max_poll_interval {
        return Err(invalid(
            key,
            v,
            format!(
                "is above the server maximum poll interval {} (--max-poll-interval)",
                humantime::format_duration(ctx.engine.max_poll_interval)
            ),
        ));
    }
    Ok(d)
}

/// `notifyChannel` and `minWakeInterval`: wake-ups on a PostgreSQL (LISTEN/NOTIFY) or Oracle
/// (`DBMS_ALERT`) connection.
fn wake<'a>(
    get: &impl Fn(&'static str) -> Option<&'a str>,
    conn: &ConnectionConfig,
    poll_interval: Duration,
    ctx: &Context,
) -> Result<Option<WakeKey>, MetadataError> {
    let channel = match get(NOTIFY_CHANNEL) {
        None | Some("") => {
            if let Some(v) = get(MIN_WAKE_INTERVAL).filter(|v| !v.is_empty()) {
                return Err(invalid(
                    MIN_WAKE_INTERVAL,
                    v,
                    "has no effect without notifyChannel: set both, or remove minWakeInterval",
                ));
            }
            return Ok(None);
        }
        Some(v) => v,
    };
    if let ConnectionUrl::Sqlite(_) = &conn.url {
        return Err(invalid(
            NOTIFY_CHANNEL,
            channel,
            format!(
                "needs a postgres connection (LISTEN/NOTIFY) or an oracle connection (DBMS_ALERT); connection {:?} is SQLite, which has no notifications",
                conn.name
            ),
        ));
    }
    let dialect = dialect(&conn.url);
    channel_rule(dialect, channel).map_err(|reason| invalid(NOTIFY_CHANNEL, channel, reason))?;
    // DBMS_ALERT names are case-insensitive and WAITANY answers with the name as registered,
    // in uppercase; the hub keys channels by exact string, so `jobs` and `JOBS` must be one.
    let channel = match dialect {
        Dialect::Oracle => channel.to_ascii_uppercase(),
        _ => channel.to_string(),
    };
    let floor = ctx.engine.min_wake_interval;
    let min_interval = match get(MIN_WAKE_INTERVAL) {
        None | Some("") => crate::config::defaults::WAKE_INTERVAL.max(floor),
        Some(v) => {
            let d = parse_duration(v)
                .map_err(|e| invalid(MIN_WAKE_INTERVAL, v, format!("is not a duration: {e}")))?;
            if d < floor {
                return Err(invalid(
                    MIN_WAKE_INTERVAL,
                    v,
                    format!(
                        "is below the server minimum {} (--min-wake-interval): a storm of notifications must not become a query storm",
                        humantime::format_duration(floor)
                    ),
                ));
            }
            if d > poll_interval {
                return Err(invalid(
                    MIN_WAKE_INTERVAL,
                    v,
                    format!(
                        "is above the pollInterval {}: wake-ups would never poll sooner than the interval",
                        humantime::format_duration(poll_interval)
                    ),
                ));
            }
            d
        }
    };
    Ok(Some(WakeKey {
        channel,
        min_interval: min_interval.min(poll_interval),
    }))
}

/// The channel names a database's wake-ups accept, per dialect. PostgreSQL: an unquoted
/// identifier, so lowercase (a NOTIFY without quotes folds to lowercase; a mixed-case channel
/// would never match). Oracle `DBMS_ALERT`: a case-insensitive name of at most 30 bytes, not
/// starting with the reserved `ORA$`. SQLite has none.
pub(super) fn channel_rule(dialect: Dialect, channel: &str) -> Result<(), String> {
    match dialect {
        Dialect::Postgres => {
            if channel.len() > PG_CHANNEL_MAX {
                return Err(format!(
                    "is longer than {PG_CHANNEL_MAX} bytes, PostgreSQL's identifier limit"
                ));
            }
            let first_ok = channel
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
            let rest_ok = channel
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
            if first_ok && rest_ok {
                return Ok(());
            }
            let hint = if channel.chars().any(|c| c.is_ascii_uppercase()) {
                " (PostgreSQL folds an unquoted NOTIFY name to lowercase, so a mixed-case channel would never match: use lowercase)"
            } else {
                ""
            };
            Err(format!(
                "must be a lowercase PostgreSQL identifier: a-z or _ first, then a-z, 0-9, _ or ${hint}"
            ))
        }
        Dialect::Oracle => {
            if channel.len() > ORACLE_CHANNEL_MAX {
                return Err(format!(
                    "is longer than {ORACLE_CHANNEL_MAX} bytes, Oracle's DBMS_ALERT name limit"
                ));
            }
            let first_ok = channel
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic());
            let rest_ok = channel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '#'));
            if !first_ok || !rest_ok {
                return Err(
                    "must be an Oracle DBMS_ALERT name: a letter first, then letters, digits, _, $ or # (case-insensitive, at most 30 bytes)".into(),
                );
            }
            if channel.to_ascii_uppercase().starts_with("ORA$") {
                return Err("starts with ORA$, which Oracle reserves".into());
            }
            Ok(())
        }
        Dialect::Sqlite => Err("SQLite has no notifications".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_follow_each_database() {
        for (dialect, ok, bad) in [
            (
                Dialect::Postgres,
                vec!["jobs", "_q$1", "jobs_changed"],
                vec!["Jobs", "1jobs", "jobs changed", "a\"b", ""],
            ),
            (
                Dialect::Oracle,
                vec!["JOBS", "jobs_changed", "Q$1", "A#B"],
                vec!["ORA$X", "ora$x", "1jobs", "jobs changed", "a'b", ""],
            ),
            (Dialect::Sqlite, vec![], vec!["jobs"]),
        ] {
            for c in ok {
                assert_eq!(channel_rule(dialect, c), Ok(()), "{dialect:?} {c}");
            }
            for c in bad {
                assert!(channel_rule(dialect, c).is_err(), "{dialect:?} {c}");
            }
        }
        assert!(channel_rule(Dialect::Postgres, &"x".repeat(64)).is_err());
        assert!(channel_rule(Dialect::Oracle, &"X".repeat(31)).is_err());
        assert_eq!(channel_rule(Dialect::Oracle, &"X".repeat(30)), Ok(()));
    }

    fn ctx() -> Context {
        let conn = |name: &str, url: &str| {
            (
                name.to_string(),
                ConnectionConfig::new(name, crate::config::parse_url(url).unwrap()),
            )
        };
        Context {
            connections: [
                conn("ora", "oracle://scott@db:1521/ORDERS"),
                conn("pg", "postgres://u@h/db"),
                conn("lite", "sqlite::memory:"),
            ]
            .into_iter()
            .collect(),
            engine: crate::config::EngineConfig::default(),
            allow_credentials: true,
        }
    }

    fn parse(pairs: &[(&str, &str)], ctx: &Context) -> Result<ScalerSpec, MetadataError> {
        let mut meta: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        meta.insert("query".into(), "select count(*) from jobs".into());
        meta.insert("targetQueryValue".into(), "10".into());
        super::super::parse(&meta, "ns", ctx)
    }

    #[test]
    fn oracle_connections_take_alert_names_in_uppercase() {
        let c = ctx();
        let ora = ("connection", "ora");
        for given in [
            "jobs_changed",
            "JOBS_CHANGED",
            "Jobs_Changed",
            " jobs_changed ",
        ] {
            let wake = parse(&[ora, ("notifyChannel", given)], &c)
                .unwrap()
                .wake
                .unwrap();
            // One channel for the hub, spelled as WAITANY answers it.
            assert_eq!(wake.channel, "JOBS_CHANGED", "{given:?}");
            assert_eq!(wake.min_interval, Duration::from_millis(100));
        }
        let spec = parse(
            &[
                ora,
                ("notifyChannel", "q$1#a"),
                ("minWakeInterval", "2s"),
                ("pollInterval", "60s"),
            ],
            &c,
        )
        .unwrap();
        let wake = spec.wake.unwrap();
        assert_eq!(wake.channel, "Q$1#A");
        assert_eq!(wake.min_interval, Duration::from_secs(2));
        // PostgreSQL channels keep their exact (lowercase) spelling.
        let pg = parse(&[("connection", "pg"), ("notifyChannel", "jobs")], &c).unwrap();
        assert_eq!(pg.wake.unwrap().channel, "jobs");
        // Not part of the poller: the same query with and without wake-ups is one poller.
        let none = parse(&[ora], &c).unwrap();
        let with = parse(&[ora, ("notifyChannel", "jobs")], &c).unwrap();
        assert_eq!(none.poller, with.poller);
    }

    #[test]
    fn oracle_alert_names_are_refused_with_what_is_accepted() {
        let c = ctx();
        let ora = ("connection", "ora");
        let long = "J".repeat(31);
        for (pairs, key, fragments) in [
            (
                vec![ora, ("notifyChannel", "1jobs")],
                "notifyChannel",
                vec!["\"1jobs\"", "a letter first", "at most 30 bytes"],
            ),
            (
                vec![ora, ("notifyChannel", "jobs changed")],
                "notifyChannel",
                vec!["DBMS_ALERT name", "_, $ or #"],
            ),
            (
                vec![ora, ("notifyChannel", "x'); drop table t; --")],
                "notifyChannel",
                vec!["DBMS_ALERT name"],
            ),
            (
                vec![ora, ("notifyChannel", "ora$alert")],
                "notifyChannel",
                vec!["ORA$", "reserves"],
            ),
            (
                vec![ora, ("notifyChannel", &long)],
                "notifyChannel",
                vec!["30 bytes"],
            ),
            (
                vec![ora, ("minWakeInterval", "1s")],
                "minWakeInterval",
                vec!["without notifyChannel"],
            ),
            (
                vec![ora, ("notifyChannel", "j"), ("minWakeInterval", "10ms")],
                "minWakeInterval",
                vec!["--min-wake-interval"],
            ),
            (
                vec![ora, ("notifyChannel", "j"), ("minWakeInterval", "1m")],
                "minWakeInterval",
                vec!["above the pollInterval"],
            ),
            (
                vec![("connection", "lite"), ("notifyChannel", "jobs")],
                "notifyChannel",
                vec!["is SQLite", "postgres", "oracle"],
            ),
        ] {
            let e = parse(&pairs, &c).unwrap_err().to_string();
            assert!(e.contains(&format!("{key:?}")), "{pairs:?}: {e}");
            for f in fragments {
                assert!(e.contains(f), "{pairs:?}: {f:?} in {e}");
            }
        }
    }

    #[test]
    fn oracle_connections_from_metadata_credentials_take_alert_names() {
        let c = ctx();
        let spec = parse(
            &[
                ("connection", "ora"),
                ("userFromEnv", "reporter"),
                ("passwordFromEnv", "pw"),
                ("notifyChannel", "jobs"),
            ],
            &c,
        );
        match spec {
            Ok(spec) => {
                assert!(spec.dynamic.is_some(), "a connection of its own");
                assert_eq!(spec.wake.unwrap().channel, "JOBS");
            }
            Err(e) => panic!("{e}"),
        }
    }
}
