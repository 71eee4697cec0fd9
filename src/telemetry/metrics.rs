//! Metric names, descriptions and recording functions: the one place a metric is spelled.
//! Labels are bounded: per connection (configured, so few), per gRPC method and code, per
//! poll result.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const POLL_DURATION: &str = "orascale_poll_duration_seconds";
pub const POLLS: &str = "orascale_polls_total";
pub const POLLERS: &str = "orascale_pollers";
pub const STREAMS: &str = "orascale_streams";
pub const STREAM_MESSAGES: &str = "orascale_stream_messages_total";
pub const GRPC_REQUESTS: &str = "orascale_grpc_requests_total";
pub const BUILD_INFO: &str = "orascale_build_info";

/// Database round-trips: 1 ms … 30 s.
const POLL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(POLL_DURATION.into()), POLL_BUCKETS)
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
    describe_gauge!(STREAMS, "Open StreamIsActive streams.");
    describe_counter!(
        STREAM_MESSAGES,
        "IsActive messages pushed on StreamIsActive streams."
    );
    describe_counter!(
        GRPC_REQUESTS,
        "gRPC requests answered, by method and status code."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs."
    );
}

pub fn record_poll(connection: &str, result: &'static str, ok: bool, elapsed: Duration) {
    let outcome = if ok { "ok" } else { "error" };
    histogram!(POLL_DURATION, "connection" => connection.to_string(), "outcome" => outcome)
        .record(elapsed.as_secs_f64());
    counter!(POLLS, "connection" => connection.to_string(), "result" => result).increment(1);
}

pub fn pollers_started(n: usize) {
    gauge!(POLLERS).increment(n as f64);
}

pub fn pollers_stopped(n: usize) {
    gauge!(POLLERS).decrement(n as f64);
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

pub fn grpc_request(method: &'static str, code: tonic::Code) {
    counter!(GRPC_REQUESTS, "method" => method, "code" => code_label(code)).increment(1);
}

fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        InvalidArgument => "INVALID_ARGUMENT",
        Unavailable => "UNAVAILABLE",
        NotFound => "NOT_FOUND",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        Cancelled => "CANCELLED",
        Internal => "INTERNAL",
        _ => "OTHER",
    }
}
