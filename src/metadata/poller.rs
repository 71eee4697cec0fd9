//! The settings that make a trigger's poller: connection, guarded query, interval, timeout,
//! nulls. Identical settings share one poller.

use std::collections::HashMap;
use std::time::Duration;

use super::naming::parse_metric_name;
use super::*;
use crate::config::parse_duration;
use crate::engine::WakeKey;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
const CHANNEL_MAX: usize = 63;

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
        Some(v) => {
            let d = parse_duration(v)
                .map_err(|e| invalid(POLL_INTERVAL, v, format!("is not a duration: {e}")))?;
            if d < min_poll_interval {
                return Err(invalid(
                    POLL_INTERVAL,
                    v,
                    format!(
                        "is below the server minimum poll interval {}",
                        humantime::format_duration(min_poll_interval)
                    ),
                ));
            }
            if d > ctx.engine.max_poll_interval {
                return Err(invalid(
                    POLL_INTERVAL,
                    v,
                    format!(
                        "is above the server maximum poll interval {} (--max-poll-interval)",
                        humantime::format_duration(ctx.engine.max_poll_interval)
                    ),
                ));
            }
            d
        }
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
            wake,
        },
        target,
        activation,
        metric_name,
        dynamic: dynamic.then(|| Box::new(conn)),
    })
}

/// `notifyChannel` and `minWakeInterval`: wake-ups on a PostgreSQL connection.
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
    match &conn.url {
        ConnectionUrl::Postgres { .. } => {}
        ConnectionUrl::Sqlite(_) => {
            return Err(invalid(
                NOTIFY_CHANNEL,
                channel,
                format!(
                    "needs a postgres connection (LISTEN/NOTIFY); connection {:?} is SQLite, which has no notifications",
                    conn.name
                ),
            ));
        }
        ConnectionUrl::Oracle { .. } => {
            return Err(invalid(
                NOTIFY_CHANNEL,
                channel,
                format!(
                    "needs a postgres connection (LISTEN/NOTIFY); connection {:?} is Oracle, whose wake-ups are not available yet (docs/oracle.md, \"Wake-ups\")",
                    conn.name
                ),
            ));
        }
    }
    let first_ok = channel
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = channel
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if channel.len() > CHANNEL_MAX {
        return Err(invalid(
            NOTIFY_CHANNEL,
            channel,
            format!("is longer than {CHANNEL_MAX} bytes, PostgreSQL's identifier limit"),
        ));
    }
    if !first_ok || !rest_ok {
        let hint = if channel.chars().any(|c| c.is_ascii_uppercase()) {
            " (PostgreSQL folds an unquoted NOTIFY name to lowercase, so a mixed-case channel would never match: use lowercase)"
        } else {
            ""
        };
        return Err(invalid(
            NOTIFY_CHANNEL,
            channel,
            format!(
                "must be a lowercase PostgreSQL identifier: a-z or _ first, then a-z, 0-9, _ or ${hint}"
            ),
        ));
    }
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
                        "is below the server minimum {} (--min-wake-interval): a NOTIFY storm must not become a query storm",
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
        channel: channel.to_string(),
        min_interval: min_interval.min(poll_interval),
    }))
}
