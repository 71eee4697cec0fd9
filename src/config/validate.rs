//! Startup checks: every duration and count the server takes is bounded, and an error names
//! the key and the bound.

use std::time::Duration;

use super::{ConfigError, EngineConfig, defaults, invalid};

/// `d` must be above zero and at most `max` (named `max_name` in the message).
pub(super) fn in_range(
    d: Duration,
    key: &str,
    max: Duration,
    max_name: &str,
) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(invalid(key, "value 0s must be greater than 0"));
    }
    at_most(d, key, max, max_name)
}

/// `d` must be at most `max` (named `max_name` in the message).
pub(super) fn at_most(
    d: Duration,
    key: &str,
    max: Duration,
    max_name: &str,
) -> Result<(), ConfigError> {
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

/// The engine's settings in range; an error names the flag and the TOML key
/// (`--min-poll-interval / min_poll_interval: …`), as either may have set it.
pub(super) fn validate_engine(e: &EngineConfig) -> Result<(), ConfigError> {
    check_engine(e).map_err(|err| match err {
        // The `max_metadata_*` limits are file-only: no flag to name.
        ConfigError::Invalid { key, message } if !key.starts_with("max_metadata_") => {
            ConfigError::Invalid {
                key: format!("--{} / {key}", key.replace('_', "-")),
                message,
            }
        }
        other => other,
    })
}

fn check_engine(e: &EngineConfig) -> Result<(), ConfigError> {
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
        e.min_wake_interval,
        "min_wake_interval",
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
    for (key, percent) in [
        ("wake_poll_share", e.wake_poll_share),
        ("namespace_pool_share", e.namespace_pool_share),
    ] {
        if !(1..=100).contains(&percent) {
            return Err(invalid(
                key,
                format!("value {percent} must be a percent from 1 to 100"),
            ));
        }
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
        ("max_spec_cache_bytes", l.max_spec_cache_bytes),
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
pub(super) fn validate_name(name: &str) -> Result<(), String> {
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
    if super::is_dynamic_name(name) {
        return Err(format!(
            "connection name {name:?} starts with {:?}, which is reserved for connections made from metadata credentials",
            super::DYNAMIC_PREFIX
        ));
    }
    Ok(())
}
