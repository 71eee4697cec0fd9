//! Every ExternalScaler call, counted and timed by method and code where the answer leaves the
//! service: `orascale_grpc_requests_total` and `orascale_grpc_request_duration_seconds`.
//!
//! Counting here rather than in the handlers also counts what tonic answers before a handler
//! runs: a request body that is not the method's protobuf (INVALID_ARGUMENT, from the codec's
//! decoder) and a request over [`max_request`], which tonic refuses as OUT_OF_RANGE (a code
//! meant for reading past the end of a file); here it becomes RESOURCE_EXHAUSTED with a
//! message naming the limit, the code gRPC itself uses for an oversized message. For a stream,
//! the count is its opening: the response headers, OK or the refusal.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::time::Instant;

use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::{Code, Status};

use super::Scaler;
use super::proto::external_scaler_server::ExternalScalerServer;
use crate::telemetry::metrics::{self as m, GrpcMethod};

/// The largest request message a valid call can be, from the metadata limits: every entry at
/// its longest key and value (with protobuf's framing), the longest Kubernetes name and
/// namespace, and a metric name as long as a value. About 530 KiB with the default limits;
/// tonic's default (4 MiB) let a few dozen concurrent refused requests take hundreds of MiB.
pub fn max_request(limits: &crate::config::Limits) -> usize {
    const FRAMING: usize = 16;
    let entries = limits.max_metadata_entries.saturating_mul(
        limits.max_metadata_key_length + limits.max_metadata_value_length + FRAMING,
    );
    entries
        .saturating_add(253 + 63 + limits.max_metadata_value_length + 4 * FRAMING)
        .max(64 * 1024)
}

/// The ExternalScaler service as served: the generated server around [`Scaler`], with the
/// request limit ([`max_request`]), inside [`Calls`].
pub fn server(scaler: Scaler, max_request: usize) -> Calls<ExternalScalerServer<Scaler>> {
    Calls {
        inner: ExternalScalerServer::new(scaler).max_decoding_message_size(max_request),
        max_request,
    }
}

/// Counts every call of the service inside and rewrites tonic's size refusal.
#[derive(Debug, Clone)]
pub struct Calls<S> {
    inner: S,
    max_request: usize,
}

impl<S: NamedService> NamedService for Calls<S> {
    const NAME: &'static str = S::NAME;
}

/// The method of a request path, `None` for a path the service does not have (tonic answers
/// UNIMPLEMENTED; not counted, so no client can invent label values). One match on the whole
/// path: this runs on every call.
fn method(path: &str) -> Option<GrpcMethod> {
    Some(match path {
        "/externalscaler.ExternalScaler/GetMetricSpec" => GrpcMethod::GetMetricSpec,
        "/externalscaler.ExternalScaler/GetMetrics" => GrpcMethod::GetMetrics,
        "/externalscaler.ExternalScaler/IsActive" => GrpcMethod::IsActive,
        "/externalscaler.ExternalScaler/StreamIsActive" => GrpcMethod::StreamIsActive,
        "/externalscaler.ExternalScaler/StreamMetricSpec" => GrpcMethod::StreamMetricSpec,
        _ => return None,
    })
}

/// The answer's code: a refusal carries `grpc-status` in its headers (a trailers-only
/// response); a success sends headers without it and its status later, in the trailers.
fn code(response: &http::Response<Body>) -> Code {
    response
        .headers()
        .get(&Status::GRPC_STATUS) // a `HeaderName`: a `&str` would be parsed on every call
        .map_or(Code::Ok, |v| Code::from_bytes(v.as_bytes()))
}

/// Our handlers never answer OUT_OF_RANGE: on this service it is tonic's request size limit.
/// Takes the response's code, already read by the caller (one header lookup per call).
fn rewrite(
    response: http::Response<Body>,
    code: Code,
    max_request: usize,
) -> (http::Response<Body>, Code) {
    if code != Code::OutOfRange {
        return (response, code);
    }
    // tonic's message: "… found N bytes, the limit is: L bytes".
    let found = Status::from_header_map(response.headers()).and_then(|s| {
        let rest = s.message().split("found ").nth(1)?;
        rest.split(' ').next()?.parse::<u64>().ok()
    });
    let size = found.map_or_else(String::new, |n| format!(" ({n} bytes)"));
    let refusal = Status::resource_exhausted(format!(
        "the request message{size} is over the limit of {max_request} bytes (what the metadata limits allow)"
    ));
    (refusal.into_http(), Code::ResourceExhausted)
}

impl<S, B> Service<http::Request<B>> for Calls<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method(request.uri().path());
        Counted {
            started: method.map(|m| (m, Instant::now())),
            answer: self.inner.call(request),
            max_request: self.max_request,
        }
    }
}

/// A call's answer, counted when it is ready. A named future rather than a boxed `async`
/// block: the generated service's own future is already boxed (so `Unpin`), and a second
/// allocation per call is not needed to wrap it.
pub struct Counted<F> {
    answer: F,
    /// The method, and when the call arrived; `None` for a path the service does not have.
    started: Option<(GrpcMethod, Instant)>,
    max_request: usize,
}

impl<F> Future for Counted<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(Pin::new(&mut self.answer).poll(cx))?;
        let Some((method, started)) = self.started.take() else {
            return Poll::Ready(Ok(response));
        };
        let code = code(&response);
        let (response, code) = rewrite(response, code, self.max_request);
        m::grpc_request(method, code, started.elapsed());
        Poll::Ready(Ok(response))
    }
}

/// A call dropped before its answer was ready — the client gave up (KEDA's deadline) or reset
/// the stream — is counted too, as CANCELLED: those are the calls an operator most needs to see.
impl<F> Drop for Counted<F> {
    fn drop(&mut self) {
        if let Some((method, started)) = self.started.take() {
            m::grpc_request(method, Code::Cancelled, started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_the_services_own() {
        for m in [
            GrpcMethod::GetMetricSpec,
            GrpcMethod::GetMetrics,
            GrpcMethod::IsActive,
            GrpcMethod::StreamIsActive,
            GrpcMethod::StreamMetricSpec,
        ] {
            let path = format!("/externalscaler.ExternalScaler/{}", m.label());
            assert_eq!(method(&path), Some(m), "{path}");
        }
        assert_eq!(method("/externalscaler.ExternalScaler/Nope"), None);
        assert_eq!(method("/externalscaler.ExternalScaler/getmetrics"), None);
        assert_eq!(method("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn the_size_limit_becomes_resource_exhausted_naming_it() {
        let tonic = Status::out_of_range(
            "Error, decoded message length too large: found 5242880 bytes, the limit is: 4194304 bytes",
        )
        .into_http::<Body>();
        let (ours, code_after) = rewrite(tonic, Code::OutOfRange, 4194304);
        assert_eq!(code_after, Code::ResourceExhausted);
        let status = Status::from_header_map(ours.headers()).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "the request message (5242880 bytes) is over the limit of 4194304 bytes (what the metadata limits allow)"
        );
        // With the default limits a valid request is at most about 530 KiB.
        let default = max_request(&crate::config::Limits::default());
        assert!((520 * 1024..560 * 1024).contains(&default), "{default}");
        // Anything else passes unchanged.
        let other = Status::invalid_argument("x").into_http::<Body>();
        let (other, c) = rewrite(other, Code::InvalidArgument, 1);
        assert_eq!(
            (code(&other), c),
            (Code::InvalidArgument, Code::InvalidArgument)
        );
        assert_eq!(code(&http::Response::new(Body::default())), Code::Ok);
    }
}
