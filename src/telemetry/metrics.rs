//! Metric names, descriptions and recording functions: the one place a metric is spelled.
//! Labels are bounded: per connection (configured, so few; every connection made from
//! per-ScaledObject credentials shares one value, which the callers give: `trigger`'s
//! `connection_label`), per gRPC method and code, per poll result. Series that carry a
//! connection label are made by their owners with the label they hold, so this module names
//! no other module of the crate.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const POLL_DURATION: &str = "orascale_poll_duration_seconds";
pub const POLLS: &str = "orascale_polls_total";
pub const POLLERS: &str = "orascale_pollers";
pub const STREAMS: &str = "orascale_streams";
pub const STREAM_MESSAGES: &str = "orascale_stream_messages_total";
pub const GRPC_REQUESTS: &str = "orascale_grpc_requests_total";
pub const GRPC_DURATION: &str = "orascale_grpc_request_duration_seconds";
pub const SAMPLE_AGE: &str = "orascale_sample_age_seconds";
pub const BUILD_INFO: &str = "orascale_build_info";
pub const POLLER_RESTARTS: &str = "orascale_poller_restarts_total";

// Rendered at scrape time where the state lives (`engine::stats`).
pub const LAST_SUCCESS: &str = "orascale_last_success_timestamp_seconds";
pub const POLLER_SAMPLE_AGE: &str = "orascale_poller_sample_age_seconds";
pub const POLLER_FAILURES: &str = "orascale_poller_consecutive_failures";
pub const POLLER_STREAMS: &str = "orascale_poller_streams";
pub const POOL_MAX: &str = "orascale_pool_max_sessions";
pub const POOL_SIZE: &str = "orascale_pool_sessions";
pub const POOL_IN_USE: &str = "orascale_pool_sessions_in_use";
pub const POOL_WAITING: &str = "orascale_pool_waiting";
pub const WAKE_CHANNELS: &str = "orascale_wake_channels";
pub const WAKE_LISTENER_UP: &str = "orascale_wake_listener_up";
pub const WAKE_NOTIFICATIONS: &str = "orascale_wake_notifications_total";
pub const WAKE_POLLS: &str = "orascale_wake_polls_total";
pub const WAKE_RECONNECTS: &str = "orascale_wake_listener_reconnects_total";
pub const WAKE_DEFERRED: &str = "orascale_wake_polls_deferred_total";

/// Every metric family orascale exports (for tests and the monitoring files' validation).
pub const ALL: &[&str] = &[
    POLL_DURATION,
    POLLS,
    POLLERS,
    STREAMS,
    STREAM_MESSAGES,
    GRPC_REQUESTS,
    GRPC_DURATION,
    SAMPLE_AGE,
    BUILD_INFO,
    POLLER_RESTARTS,
    LAST_SUCCESS,
    POLLER_SAMPLE_AGE,
    POLLER_FAILURES,
    POLLER_STREAMS,
    POOL_MAX,
    POOL_SIZE,
    POOL_IN_USE,
    POOL_WAITING,
    WAKE_CHANNELS,
    WAKE_LISTENER_UP,
    WAKE_NOTIFICATIONS,
    WAKE_POLLS,
    WAKE_RECONNECTS,
    WAKE_DEFERRED,
];

/// Database round-trips: 1 ms … 30 s.
const POLL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// gRPC handling time: 100 µs … 3 s (KEDA's deadline).
const GRPC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0,
];

/// Age of the value behind an answer: 100 ms … 10 min.
const AGE_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(POLL_DURATION.into()), POLL_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(GRPC_DURATION.into()), GRPC_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(SAMPLE_AGE.into()), AGE_BUCKETS)
                })
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed (e.g. by an embedding program).
            let _ = metrics::set_global_recorder(recorder);
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets: the exporter's own default.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Folds the histograms' pending samples into their buckets every `every` until `shutdown`.
/// The recorder keeps every sample recorded since the last fold, and without this task only a
/// scrape folds them: about 40 bytes a call (two histograms per GetMetrics) that piled up
/// unbounded when nothing scraped, and between scrapes otherwise (3.8 MB after 100,000 calls).
pub async fn upkeep(
    handle: PrometheusHandle,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    run_every(every, shutdown, || handle.run_upkeep()).await;
}

/// Calls `f` every `every` (first after one interval) until `shutdown` is cancelled.
async fn run_every(
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    mut f: impl FnMut(),
) {
    let start = tokio::time::Instant::now() + every;
    let mut ticks = tokio::time::interval_at(start, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => f(),
        }
    }
}

fn describe() {
    describe_histogram!(
        POLL_DURATION,
        metrics::Unit::Seconds,
        "Duration of one poll (query round-trip) by connection and outcome (ok, error)."
    );
    describe_counter!(
        POLLS,
        "Polls completed, by connection and result (ok, error, timeout, null)."
    );
    describe_gauge!(POLLERS, "Live pollers (distinct triggers being polled).");
    describe_gauge!(
        STREAMS,
        "Open server streams (StreamIsActive and StreamMetricSpec)."
    );
    describe_counter!(
        STREAM_MESSAGES,
        "Messages pushed on server streams (StreamIsActive and StreamMetricSpec)."
    );
    describe_counter!(
        GRPC_REQUESTS,
        "gRPC requests answered, by method and status code."
    );
    describe_histogram!(
        GRPC_DURATION,
        metrics::Unit::Seconds,
        "Time to answer a gRPC request (for a server stream: to open it), by method and status code; CANCELLED: the client gave up first."
    );
    describe_histogram!(
        SAMPLE_AGE,
        metrics::Unit::Seconds,
        "Age of the value behind each GetMetrics/IsActive answer, by connection and method."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs."
    );
    describe_counter!(
        POLLER_RESTARTS,
        "Pollers replaced because their task had stopped on its own (a panic or a bug): should stay 0."
    );
    // Unlabelled families exist from the start, at 0, so dashboards and alerts see them.
    gauge!(POLLERS).increment(0.0);
    gauge!(STREAMS).increment(0.0);
    counter!(STREAM_MESSAGES).increment(0);
    counter!(POLLER_RESTARTS).increment(0);
}

/// The `result` labels of `orascale_polls_total`.
const POLL_RESULTS: [&str; 5] = ["ok", "error", "timeout", "null", "pool_timeout"];

/// One poller's poll series, looked up once each (a label lookup per poll costs more than the
/// rest of the bookkeeping) and only when first used, so no series exists before it happens.
#[derive(Debug)]
pub struct PollSeries {
    /// The `connection` label, as the poller's owner gives it.
    connection: String,
    /// `outcome` ok, error.
    duration: [OnceLock<Histogram>; 2],
    /// By [`POLL_RESULTS`].
    polls: [OnceLock<Counter>; 5],
}

impl PollSeries {
    /// The series of a poller whose connection is labelled `connection` (bounded by the
    /// caller: per-ScaledObject connections share one label).
    pub fn new(connection: String) -> Self {
        PollSeries {
            connection,
            duration: Default::default(),
            polls: Default::default(),
        }
    }

    pub fn record(&self, result: &'static str, ok: bool, elapsed: Duration) {
        let connection = &self.connection;
        let outcome = usize::from(!ok);
        self.duration[outcome]
            .get_or_init(|| {
                histogram!(POLL_DURATION, "connection" => connection.clone(),
                    "outcome" => ["ok", "error"][outcome])
            })
            .record(elapsed.as_secs_f64());
        match POLL_RESULTS.iter().position(|r| *r == result) {
            Some(i) => self.polls[i]
                .get_or_init(|| {
                    counter!(POLLS, "connection" => connection.clone(), "result" => POLL_RESULTS[i])
                })
                .increment(1),
            None => counter!(POLLS, "connection" => connection.clone(), "result" => result)
                .increment(1),
        }
    }
}

pub fn pollers_started(n: usize) {
    gauge!(POLLERS).increment(n as f64);
}

pub fn pollers_stopped(n: usize) {
    gauge!(POLLERS).decrement(n as f64);
}

pub fn poller_restarted() {
    counter!(POLLER_RESTARTS).increment(1);
}

pub fn stream_opened() {
    gauge!(STREAMS).increment(1.0);
}

pub fn stream_closed() {
    gauge!(STREAMS).decrement(1.0);
}

pub fn stream_message() {
    counter!(STREAM_MESSAGES).increment(1);
}

/// The ExternalScaler methods, each the index of its row in the per-call series table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcMethod {
    GetMetricSpec,
    GetMetrics,
    IsActive,
    StreamIsActive,
    StreamMetricSpec,
}

impl GrpcMethod {
    /// The `method` label.
    pub fn label(self) -> &'static str {
        match self {
            GrpcMethod::GetMetricSpec => "GetMetricSpec",
            GrpcMethod::GetMetrics => "GetMetrics",
            GrpcMethod::IsActive => "IsActive",
            GrpcMethod::StreamIsActive => "StreamIsActive",
            GrpcMethod::StreamMetricSpec => "StreamMetricSpec",
        }
    }
}

const METHODS: usize = 5;
/// The `code` labels, in the order of [`code_index`].
const CODES: [&str; 10] = [
    "OK",
    "INVALID_ARGUMENT",
    "UNAVAILABLE",
    "NOT_FOUND",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "INTERNAL",
    "OTHER",
];

/// One method × code's series, made on first use.
struct GrpcSeries {
    requests: Counter,
    duration: Histogram,
}

static GRPC_SERIES: [OnceLock<GrpcSeries>; METHODS * CODES.len()] =
    [const { OnceLock::new() }; METHODS * CODES.len()];

/// Counts and times one answered call. The series is found by index (the method's and the
/// code's), not by comparing label strings: this runs on every call.
pub fn grpc_request(method: GrpcMethod, code: tonic::Code, elapsed: Duration) {
    let c = code_index(code);
    let series = GRPC_SERIES[method as usize * CODES.len() + c].get_or_init(|| {
        let (method, code) = (method.label(), CODES[c]);
        GrpcSeries {
            requests: counter!(GRPC_REQUESTS, "method" => method, "code" => code),
            duration: histogram!(GRPC_DURATION, "method" => method, "code" => code),
        }
    });
    series.requests.increment(1);
    series.duration.record(elapsed.as_secs_f64());
}

/// The `orascale_sample_age_seconds` series of a connection (its bounded label, as the caller
/// holds it) and method, for callers that keep it.
pub fn sample_age_series(connection: String, method: &'static str) -> Histogram {
    histogram!(SAMPLE_AGE, "connection" => connection, "method" => method)
}

/// Writes one metric family in Prometheus' text format: its HELP and TYPE lines and a sample
/// line per `(labels, value)`; `labels` is already `name="value",…` ([`escape`] the values).
pub fn write_family(out: &mut String, kind: &str, name: &str, help: &str, lines: &[(String, f64)]) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in lines {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
    out.push('\n');
}

/// Prometheus label-value escaping.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The index in [`CODES`] of a code's `code` label: the codes orascale answers have their
/// own, every other one is `OTHER`.
fn code_index(code: tonic::Code) -> usize {
    use tonic::Code::*;
    match code {
        Ok => 0,
        InvalidArgument => 1,
        Unavailable => 2,
        NotFound => 3,
        PermissionDenied => 4,
        ResourceExhausted => 5,
        DeadlineExceeded => 6,
        Cancelled => 7,
        Internal => 8,
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn upkeep_runs_every_interval_until_shutdown() {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = runs.clone();
        let task = tokio::spawn(run_every(UPKEEP_INTERVAL, shutdown.clone(), move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        let runs_after = |t: Duration| {
            let runs = runs.clone();
            async move {
                tokio::time::sleep(t).await;
                runs.load(std::sync::atomic::Ordering::SeqCst)
            }
        };
        assert_eq!(runs_after(UPKEEP_INTERVAL / 2).await, 0);
        assert_eq!(runs_after(UPKEEP_INTERVAL).await, 1);
        assert_eq!(runs_after(UPKEEP_INTERVAL * 3).await, 4);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("ends on shutdown")
            .unwrap();
        assert_eq!(runs_after(UPKEEP_INTERVAL * 3).await, 4);
    }

    #[test]
    fn every_code_has_its_label_and_every_method_its_row() {
        use tonic::Code;
        let labels: Vec<&str> = [
            Code::Ok,
            Code::InvalidArgument,
            Code::Unavailable,
            Code::NotFound,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Internal,
            Code::Unknown,
            Code::Unimplemented,
            Code::OutOfRange,
        ]
        .into_iter()
        .map(|c| CODES[code_index(c)])
        .collect();
        assert_eq!(
            labels,
            [
                "OK",
                "INVALID_ARGUMENT",
                "UNAVAILABLE",
                "NOT_FOUND",
                "PERMISSION_DENIED",
                "RESOURCE_EXHAUSTED",
                "DEADLINE_EXCEEDED",
                "CANCELLED",
                "INTERNAL",
                "OTHER",
                "OTHER",
                "OTHER"
            ]
        );
        let methods = [
            GrpcMethod::GetMetricSpec,
            GrpcMethod::GetMetrics,
            GrpcMethod::IsActive,
            GrpcMethod::StreamIsActive,
            GrpcMethod::StreamMetricSpec,
        ];
        assert_eq!(methods.len(), METHODS);
        for (i, m) in methods.into_iter().enumerate() {
            assert_eq!(m as usize, i, "{}", m.label());
        }
    }
}
