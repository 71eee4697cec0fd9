//! Defaults, in one place so `--help`, docs and code agree.

use std::time::Duration;
pub const GRPC_LISTEN: &str = "0.0.0.0:9090";
pub const METRICS_LISTEN: &str = "0.0.0.0:9464";
pub const POLL_INTERVAL: Duration = Duration::from_secs(10);
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The smallest `minWakeInterval` a trigger may ask for (server side).
pub const MIN_WAKE_INTERVAL: Duration = Duration::from_millis(100);
/// `minWakeInterval` of triggers that set `notifyChannel` without it.
pub const WAKE_INTERVAL: Duration = Duration::from_millis(100);
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
pub const STREAM_RESEND_INTERVAL: Duration = Duration::from_secs(30);
pub const STALE_AFTER_POLLS: u32 = 3;
/// Percent of a connection's `pool_size` that polls caused by notifications may use at once
/// (at least one session): the rest is kept for interval polls.
pub const WAKE_POLL_SHARE: u8 = 50;
/// Percent of a connection's sessions one namespace's interval polls may hold at once (at
/// least one): the rest is kept for the other namespaces.
pub const NAMESPACE_POOL_SHARE: u8 = 50;
pub const FIRST_RESULT_WAIT: Duration = Duration::from_secs(2);
pub const POOL_SIZE: usize = 4;
pub const MAX_CONCURRENT_STREAMS: u32 = 100_000;
pub const SHUTDOWN_DELAY: Duration = Duration::ZERO;
pub const MAX_POLLERS: usize = 10_000;
pub const MAX_POLLERS_PER_NAMESPACE: usize = 1_000;
pub const MAX_STREAMS: usize = 50_000;
pub const MAX_QUERY_LENGTH: usize = 8 * 1024;
/// Bytes of parsed triggers kept so later calls skip parsing (`grpc::specs`).
pub const MAX_SPEC_CACHE_BYTES: usize = 32 * 1024 * 1024;
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
