//! The five RPCs KEDA calls (see ../shared/KEDA.md for the call pattern).
//!
//! - GetMetricSpec: a function of the metadata and, with `targetQuery`, of the target poller's
//!   cached state ([`super::target`]); it never touches the database, never waits for a poll
//!   and never fails because of the target query (the static target is the fallback), so it
//!   keeps succeeding during an outage and KEDA's fallback can fire.
//! - GetMetrics / IsActive: read the poller's cached sample; only the very first call for a new
//!   poller waits (briefly) for its first result.
//! - StreamIsActive: pushes `true` on inactive→active edges, once at open if already active,
//!   and again every resend interval while active; never `false`; stays open through database
//!   errors; ends with OK when the server shuts down. The state machine is [`super::push`]'s,
//!   with its [`ActiveEdges`] policy.
//! - StreamMetricSpec (KEDA main, for v2.21): the spec GetMetricSpec gives, at open (on a new
//!   target poller, once its first poll is in, within the first-result wait), then once per
//!   real change of it ([`SpecChanges`]); never a repeat, never an empty list; ends with OK on
//!   shutdown; counts against `--max-streams` like StreamIsActive; with a poller limit reached,
//!   the static spec rather than an error.
//! - A trigger's target poller is admitted only after its own poller (`--max-pollers`).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::proto::external_scaler_server::ExternalScaler;
use super::proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricValue,
    ScaledObjectRef,
};
use super::push::{ActiveEdges, LatestPoll, NoPoller, Push, SpecChanges};
use super::specs::{Parsed, Specs};
use super::status::Error;
use super::target::{Origin, Target, to_metric_spec};
use crate::config::ConnectionConfig;
use crate::engine::{EngineError, Reading, Registry};
use crate::metadata::Context;
use crate::telemetry::metrics as m;
use tokio::time::Instant;

/// The service: shared by every connection and request.
#[derive(Clone)]
pub struct Scaler {
    registry: Arc<Registry>,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    /// Each calling ScaledObject's parsed trigger: later calls skip parsing.
    specs: Arc<Specs>,
}

impl Scaler {
    pub fn new(
        registry: Arc<Registry>,
        connections: BTreeMap<String, ConnectionConfig>,
        allow_credentials: bool,
        shutdown: CancellationToken,
    ) -> Self {
        let ctx = Context {
            connections,
            engine: registry.config().clone(),
            allow_credentials,
        };
        let specs = Arc::new(Specs::new(ctx.engine.limits.max_spec_cache_bytes));
        Scaler {
            registry,
            ctx: Arc::new(ctx),
            shutdown,
            specs,
        }
    }

    /// The parsed trigger (with who asks), and the trigger's own source when it carries
    /// credentials.
    async fn spec(&self, r: &ScaledObjectRef) -> Result<Trigger, Error> {
        let parsed = self.parsed(r)?;
        let source = self.source(&parsed).await?;
        Ok((parsed, source))
    }

    /// The trigger's own source when it carries credentials.
    async fn source(&self, parsed: &Parsed) -> Result<Option<crate::engine::SourceRef>, Error> {
        Ok(match &parsed.spec.dynamic {
            Some(conn) => Some(self.registry.prepare_source(conn).await?),
            None => None,
        })
    }

    /// The parsed trigger. A cache hit's name and namespace are those of a call that passed
    /// the check below, byte for byte, so only a miss is checked that Kubernetes could have
    /// sent them (before anything is parsed, cached or kept): the check costs more than the hit.
    fn parsed(&self, r: &ScaledObjectRef) -> Result<Arc<Parsed>, Error> {
        let (name, namespace, meta) = (&r.name, &r.namespace, &r.scaler_metadata);
        if let Some(hit) = self.specs.cached(name, namespace, meta) {
            return Ok(hit);
        }
        check_object(r)?;
        Ok(self.specs.get(name, namespace, meta, &self.ctx)?)
    }

    /// The trigger's current value: the poller's cached sample (the first call for a new
    /// poller waits briefly for its first result).
    async fn value(
        &self,
        r: &ScaledObjectRef,
        method: &'static str,
    ) -> Result<(Arc<Parsed>, f64), Error> {
        let parsed = self.parsed(r)?;
        let (parsed, value, _) = self.value_of(parsed, method).await?;
        Ok((parsed, value))
    }

    /// The value and its age (the clock read once: it is on every call's path).
    async fn value_of(
        &self,
        parsed: Arc<Parsed>,
        method: &'static str,
    ) -> Result<(Arc<Parsed>, f64, Duration), Error> {
        let source = self.source(&parsed).await?;
        let now = Instant::now();
        let reading = self
            .registry
            .read_at(
                now,
                &parsed.spec.poller,
                &parsed.origin,
                source.as_ref(),
                Some(&parsed.cached_poller),
                parsed.spec.wake.as_ref(),
            )
            .await?;
        let age = served_age(&parsed, method, now, &reading);
        Ok((parsed, reading.value, age))
    }

    /// The trigger's metric spec target now: the target poller's latest good value, else the
    /// static one. Never waits for a poll (a new target poller is created and polls in the
    /// background) and never fails: any trouble, the poller limit included, is the fallback.
    /// The trigger's metric poller is admitted first, and the target poller only once it is:
    /// a target poller never takes the slot its metric poller needs (`--max-pollers`).
    async fn target(&self, parsed: &Parsed) -> Target {
        let Some(key) = &parsed.spec.target_poller else {
            return Target::resolve(parsed.spec.target, None);
        };
        let latest = match self.source(parsed).await {
            Ok(source) => self
                .admit_metric_poller(parsed, source.as_ref())
                .and_then(|()| {
                    self.registry.latest(
                        key,
                        &parsed.origin,
                        source.as_ref(),
                        Some(&parsed.cached_target),
                        parsed.spec.wake.as_ref(),
                    )
                })
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        Target::resolve(parsed.spec.target, Some(latest))
    }

    /// Creates (or touches) the trigger's own poller without waiting for it: the condition
    /// for its target poller.
    fn admit_metric_poller(
        &self,
        parsed: &Parsed,
        source: Option<&crate::engine::SourceRef>,
    ) -> Result<(), crate::engine::EngineError> {
        self.registry.admit(
            &parsed.spec.poller,
            &parsed.origin,
            source,
            Some(&parsed.cached_poller),
            parsed.spec.wake.as_ref(),
        )
    }

    /// GetMetrics as most calls are: a cached trigger (without credentials of its own) whose
    /// poller runs and has a good value. Answered at once, with no spec-cache or registry lock
    /// and no reference counted: the hit and the entry are borrowed. What a call still writes
    /// to shared memory: the poller's watch read lock (to copy the value out) and its
    /// cancellation token's mutex (reading whether it was cancelled locks it), its metrics, its
    /// use (at most once a millisecond), its shard's rank counter when another entry of the
    /// shard was used since, and with `notifyChannel` its wake-up's use.
    /// `None` for anything else, which [`Scaler::get_metrics_inner`] then answers the general
    /// way (the same checks in the same order, so the same answer; an error is looked up twice).
    fn get_metrics_cached(
        &self,
        req: &GetMetricsRequest,
        now: Instant,
    ) -> Option<(GetMetricsResponse, Freshness)> {
        let r = req.scaled_object_ref.as_ref()?;
        let meta = &r.scaler_metadata;
        let answer = self
            .specs
            .with_cached(&r.name, &r.namespace, meta, now, |p| {
                if p.spec.dynamic.is_some()
                    || !metric_name_matches(&req.metric_name, &p.spec.metric_name)
                {
                    return None;
                }
                let reading = self
                    .registry
                    .read_cached(
                        now,
                        &p.cached_poller,
                        &p.spec.poller,
                        &p.origin,
                        p.spec.wake.as_ref(),
                    )?
                    .ok()?;
                let age = served_age(p, "GetMetrics", now, &reading);
                Some(metrics_answer(p, reading.value, age))
            });
        answer.flatten()
    }

    async fn get_metrics_inner(
        &self,
        req: GetMetricsRequest,
    ) -> Result<(GetMetricsResponse, Freshness), Error> {
        if let Some(answer) = self.get_metrics_cached(&req, Instant::now()) {
            return Ok(answer);
        }
        let r = req
            .scaled_object_ref
            .ok_or_else(|| Error::Request("scaledObjectRef is required".into()))?;
        // The name is checked before the trigger's poller is looked up: a request that will be
        // refused must not start (or keep alive) a poller that queries the database.
        let parsed = self.parsed(&r)?;
        if !metric_name_matches(&req.metric_name, &parsed.spec.metric_name) {
            return Err(Error::Request(format!(
                "metricName {:?} is not this trigger's metric {:?}",
                quote(&req.metric_name),
                parsed.spec.metric_name
            )));
        }
        let (parsed, value, age) = self.value_of(parsed, "GetMetrics").await?;
        Ok(metrics_answer(&parsed, value, age))
    }
}

/// How old the value `reading` serves is at `now`, recorded in the trigger's sample-age
/// series for `method`.
fn served_age(p: &Parsed, method: &'static str, now: Instant, reading: &Reading) -> Duration {
    let age = now.saturating_duration_since(reading.at);
    p.sample_age(method).record(age.as_secs_f64());
    age
}

/// GetMetrics' answer: the trigger's metric at `value`, and how fresh it is.
fn metrics_answer(p: &Parsed, value: f64, age: Duration) -> (GetMetricsResponse, Freshness) {
    let response = GetMetricsResponse {
        metric_values: vec![to_metric_value(&p.spec.metric_name, value)],
    };
    let freshness = Freshness {
        age,
        poll_interval: p.spec.poller.poll_interval,
    };
    (response, freshness)
}

// Every echo of a request's value is quoted and cut by the metadata errors' own rule: a
// `grpc-message` is a header, large ones are refused by clients, and a refused 4 MB value must
// not become a 4 MB answer. Format the result with `{:?}`, so control characters are escaped.
use crate::metadata::quote;

/// Kubernetes object names (RFC 1123 subdomains) are at most 253 bytes; namespaces (RFC 1123
/// labels) at most 63.
const NAME_MAX: usize = 253;
const NAMESPACE_MAX: usize = 63;

/// Refuses a ScaledObject name or namespace that Kubernetes could never have sent: KEDA sends
/// both from the object's metadata, so anything else is not KEDA, and would otherwise be kept
/// (in the spec cache, a poller's labels and log lines) at whatever size it came in.
fn check_object(r: &ScaledObjectRef) -> Result<(), Error> {
    let checks = [
        ("scaledObjectRef.name", &r.name, NAME_MAX, true),
        (
            "scaledObjectRef.namespace",
            &r.namespace,
            NAMESPACE_MAX,
            false,
        ),
    ];
    for (field, value, max, dots) in checks {
        if let Some(reason) = k8s_name_error(value, max, dots) {
            return Err(Error::Request(format!(
                "{field} {:?} is not a Kubernetes name: {reason}",
                quote(value)
            )));
        }
    }
    Ok(())
}

/// Why `value` is not an RFC 1123 name (a label, or with `dots` a subdomain: labels joined by
/// '.'), as Kubernetes validates ScaledObject names and namespaces: lowercase letters, digits
/// and '-', each label starting and ending with a letter or digit.
fn k8s_name_error(value: &str, max: usize, dots: bool) -> Option<String> {
    if value.is_empty() {
        return Some("it is empty".into());
    }
    if value.len() > max {
        return Some(format!("{} bytes, the limit is {max}", value.len()));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if let Some(c) = value.chars().find(|&c| !(allowed(c) || (dots && c == '.'))) {
        let set = if dots { "[a-z0-9.-]" } else { "[a-z0-9-]" };
        return Some(format!("{c:?} is not in {set}"));
    }
    let labels = if dots {
        value.split('.').collect::<Vec<_>>()
    } else {
        vec![value]
    };
    if labels
        .iter()
        .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-'))
    {
        let what = if dots {
            "each '.'-separated part"
        } else {
            "it"
        };
        return Some(format!("{what} must start and end with a letter or digit"));
    }
    None
}

/// KEDA sends our own name back; the HPA may have lowercased it and some KEDA versions send
/// the `s<index>-` prefixed HPA name. An empty name means "the trigger's metric".
fn metric_name_matches(requested: &str, ours: &str) -> bool {
    if requested.is_empty() || requested.eq_ignore_ascii_case(ours) {
        return true;
    }
    match requested.split_once('-') {
        Some((prefix, rest)) => {
            prefix.len() > 1
                && prefix.starts_with(['s', 'S'])
                && prefix[1..].chars().all(|c| c.is_ascii_digit())
                && rest.eq_ignore_ascii_case(ours)
        }
        None => false,
    }
}

/// Both the deprecated int64 field (read by KEDA < 2.17) and the double.
#[allow(deprecated)]
fn to_metric_value(name: &str, value: f64) -> MetricValue {
    MetricValue {
        metric_name: name.to_string(),
        // `as` saturates; NaN cannot occur (the engine refuses non-finite values).
        metric_value: value.round() as i64,
        metric_value_float: value,
    }
}

type Trigger = (Arc<Parsed>, Option<crate::engine::SourceRef>);

type ActiveStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

type SpecStream = Pin<Box<dyn Stream<Item = Result<GetMetricSpecResponse, Status>> + Send>>;

/// Request metadata that asks GetMetrics for the freshness headers below (and GetMetricSpec
/// for the target's origin): `orascale probe` sends it, KEDA does not, so KEDA's calls pay
/// nothing for them (formatting them and their
/// HPACK entries cost ~12,000 instructions a call).
pub const FRESHNESS_REQUEST_HEADER: &str = "orascale-freshness";
/// Response metadata of GetMetrics when asked for, for people (`orascale probe`). The age of
/// the served value, in seconds with millisecond precision ...
pub const SAMPLE_AGE_HEADER: &str = "orascale-sample-age";
/// ... and the trigger's poll interval, as humantime (`2s`): together they say how old a
/// value can be, which the bare number cannot.
pub const POLL_INTERVAL_HEADER: &str = "orascale-poll-interval";

/// Response metadata of GetMetricSpec when asked for (the freshness request header): where the
/// target came from, `static`, `query` or `fallback` ...
pub const TARGET_SOURCE_HEADER: &str = "orascale-target-source";
/// ... the age of a queried target, in seconds with millisecond precision ...
pub const TARGET_AGE_HEADER: &str = "orascale-target-age";
/// ... and why a target query's value is not served (a fallback), cut like every echo.
pub const TARGET_REASON_HEADER: &str = "orascale-target-reason";

/// Attaches where `target` came from to a GetMetricSpec answer.
fn attach_target<T>(target: &Target, response: &mut Response<T>) {
    let md = response.metadata_mut();
    let (source, age, reason) = match &target.origin {
        Origin::Static => ("static", None, None),
        Origin::Query { .. } => ("query", target.age(), None),
        Origin::Fallback(reason) => ("fallback", None, Some(reason)),
    };
    md.insert(
        TARGET_SOURCE_HEADER,
        tonic::metadata::MetadataValue::from_static(source),
    );
    if let Some(age) = age
        && let Ok(v) = format!("{:.3}", age.as_secs_f64()).parse()
    {
        md.insert(TARGET_AGE_HEADER, v);
    }
    if let Some(reason) = reason {
        // A header value is visible ASCII: anything else (a database's message may hold any
        // text) becomes '?'.
        let text: String = quote(reason)
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(v) = text.parse() {
            md.insert(TARGET_REASON_HEADER, v);
        }
    }
}

/// How old a served value is, and how often it is refreshed.
#[derive(Debug)]
struct Freshness {
    age: Duration,
    poll_interval: Duration,
}

impl Freshness {
    fn attach<T>(&self, response: &mut Response<T>) {
        let md = response.metadata_mut();
        let age = format!("{:.3}", self.age.as_secs_f64());
        let interval = humantime::format_duration(self.poll_interval).to_string();
        // Both are ASCII digits and units, always valid header values.
        if let (Ok(age), Ok(interval)) = (age.parse(), interval.parse()) {
            md.insert(SAMPLE_AGE_HEADER, age);
            md.insert(POLL_INTERVAL_HEADER, interval);
        }
    }
}

/// A handler's answer on the wire (counted and timed by method and code in [`super::calls`]).
fn answer<T>(result: Result<T, Error>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let r = request.into_inner();
        let result = self
            .value(&r, "IsActive")
            .await
            .map(|(parsed, value)| IsActiveResponse {
                result: value > parsed.spec.activation,
            });
        answer(result)
    }

    type StreamIsActiveStream = ActiveStream;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let r = request.into_inner();
        let opened = self.spec(&r).await.and_then(|(parsed, source)| {
            let sub = self.registry.subscribe(
                &parsed.spec.poller,
                &parsed.origin,
                source.as_ref(),
                parsed.spec.wake.as_ref(),
            )?;
            Ok((parsed, sub))
        });
        let (parsed, sub) = match opened {
            Ok(v) => v,
            Err(e) => return answer::<ActiveStream>(Err(e)),
        };
        let push = Push::new(
            sub,
            ActiveEdges::new(parsed.spec.activation),
            self.registry.config().stream_resend_interval,
            parsed.spec.poller.poll_interval,
            self.shutdown.clone(),
        );
        let stream = push.into_stream().map(|msg| {
            m::stream_message();
            Ok(msg)
        });
        answer::<ActiveStream>(Ok(Box::pin(stream)))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let wants_source = request.metadata().contains_key(FRESHNESS_REQUEST_HEADER);
        let r = request.into_inner();
        let parsed = match self.parsed(&r) {
            Ok(p) => p,
            Err(e) => return answer(Err(e)),
        };
        let target = self.target(&parsed).await;
        let mut response = Response::new(GetMetricSpecResponse {
            metric_specs: vec![to_metric_spec(&parsed.spec.metric_name, target.value)],
        });
        if wants_source {
            attach_target(&target, &mut response);
        }
        Ok(response)
    }

    type StreamMetricSpecStream = SpecStream;

    async fn stream_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        let r = request.into_inner();
        let (parsed, source) = match self.spec(&r).await {
            Ok(v) => v,
            Err(e) => return answer::<SpecStream>(Err(e)),
        };
        // Counted under --max-streams like StreamIsActive, with or without a target poller.
        let slot = match self.registry.stream_slot() {
            Ok(slot) => slot,
            Err(e) => return answer::<SpecStream>(Err(e.into())),
        };
        let spec = &parsed.spec;
        let resend = self.registry.config().stream_resend_interval;
        let shutdown = self.shutdown.clone();
        // The target poller, as a stream on it: it keeps the poller alive and hears the
        // trigger's wake-ups like any stream of its poller. Admitted only after the trigger's
        // metric poller; refused (a poller limit), the stream serves the static spec, as
        // GetMetricSpec does, rather than failing.
        let followed = match &spec.target_poller {
            None => Err(slot),
            Some(key) => {
                let subscribed = match self.admit_metric_poller(&parsed, source.as_ref()) {
                    Ok(()) => self.registry.subscribe_in(
                        slot,
                        key,
                        &parsed.origin,
                        source.as_ref(),
                        spec.wake.as_ref(),
                    ),
                    Err(e) => Err((e, slot)),
                };
                match subscribed {
                    Ok(sub) => Ok((key, sub)),
                    Err((EngineError::ShuttingDown, _)) => {
                        return answer::<SpecStream>(Err(EngineError::ShuttingDown.into()));
                    }
                    Err((e, slot)) => {
                        tracing::warn!(namespace = %parsed.origin.namespace,
                            scaledobject = %parsed.origin.name, metric = %parsed.origin.metric,
                            reason = %e, "no target poller for this StreamMetricSpec; it serves the static targetQueryValue");
                        Err(slot)
                    }
                }
            }
        };
        let stream: SpecStream = match followed {
            Ok((key, sub)) => {
                let policy = SpecChanges::new(spec.metric_name.clone(), spec.target, true);
                let interval = key.poll_interval;
                // A new target poller's first outcome is waited for (up to the first-result
                // wait, as GetMetrics waits) before the open message: otherwise every restart
                // would send the fallback, then the queried target a moment later — two
                // reconciles, and an HPA carrying the fallback in between.
                let opened = async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = sub.first_outcome() => {}
                    }
                    Push::new(LatestPoll(sub), policy, resend, interval, shutdown)
                };
                Box::pin(
                    futures::stream::once(opened)
                        .flat_map(Push::into_stream)
                        .map(|msg| {
                            m::stream_message();
                            Ok(msg)
                        }),
                )
            }
            // No target query (or no target poller): the static spec once, then nothing until
            // shutdown.
            Err(slot) => {
                let policy = SpecChanges::new(spec.metric_name.clone(), spec.target, false);
                let push = Push::new(
                    NoPoller(slot),
                    policy,
                    resend,
                    spec.poller.poll_interval,
                    shutdown,
                );
                Box::pin(push.into_stream().map(|msg| {
                    m::stream_message();
                    Ok(msg)
                }))
            }
        };
        answer::<SpecStream>(Ok(stream))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        // A key made once: looking a `&str` up parses it into a header name on every call.
        static WANTS_FRESHNESS: std::sync::LazyLock<tonic::metadata::AsciiMetadataKey> =
            std::sync::LazyLock::new(|| {
                tonic::metadata::AsciiMetadataKey::from_static(FRESHNESS_REQUEST_HEADER)
            });
        let wants_freshness = request.metadata().contains_key(&*WANTS_FRESHNESS);
        let (response, freshness) = match self.get_metrics_inner(request.into_inner()).await {
            Ok(pair) => pair,
            Err(e) => return answer(Err(e)),
        };
        let mut response = Response::new(response);
        if wants_freshness {
            freshness.attach(&mut response);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_match_like_keda_sends_them() {
        let ours = "orascale-db-0123abcd";
        for req in [
            "",
            ours,
            "ORASCALE-DB-0123ABCD",
            "s0-orascale-db-0123abcd",
            "S12-Orascale-db-0123abcd",
        ] {
            assert!(metric_name_matches(req, ours), "{req}");
        }
        for req in [
            "other",
            "s-orascale-db-0123abcd",
            "x0-orascale-db-0123abcd",
            "s0-other",
        ] {
            assert!(!metric_name_matches(req, ours), "{req}");
        }
    }

    #[test]
    fn only_names_kubernetes_could_send_pass() {
        let long_name = "a".repeat(NAME_MAX);
        let long_label = "a".repeat(NAMESPACE_MAX);
        for (value, max, dots) in [
            ("worker", NAME_MAX, true),
            ("so-1.v2", NAME_MAX, true),
            ("0", NAME_MAX, true),
            (long_name.as_str(), NAME_MAX, true),
            ("team-a", NAMESPACE_MAX, false),
            (long_label.as_str(), NAMESPACE_MAX, false),
        ] {
            assert_eq!(k8s_name_error(value, max, dots), None, "{value}");
        }
        let too_long_name = "a".repeat(NAME_MAX + 1);
        let too_long_label = "a".repeat(NAMESPACE_MAX + 1);
        for (value, max, dots, want) in [
            ("", NAME_MAX, true, "empty"),
            (
                too_long_name.as_str(),
                NAME_MAX,
                true,
                "254 bytes, the limit is 253",
            ),
            (
                too_long_label.as_str(),
                NAMESPACE_MAX,
                false,
                "64 bytes, the limit is 63",
            ),
            (
                "a\nERROR forged",
                NAME_MAX,
                true,
                "'\\n' is not in [a-z0-9.-]",
            ),
            ("a\u{1b}[31m", NAME_MAX, true, "'\\u{1b}' is not in"),
            ("Worker", NAME_MAX, true, "'W' is not in"),
            ("a_b", NAME_MAX, true, "'_' is not in"),
            ("a.b", NAMESPACE_MAX, false, "'.' is not in [a-z0-9-]"),
            ("🚀", NAME_MAX, true, "'🚀' is not in"),
            ("-a", NAME_MAX, true, "start and end"),
            ("a.", NAME_MAX, true, "start and end"),
            ("a..b", NAME_MAX, true, "start and end"),
            ("a.-b", NAME_MAX, true, "start and end"),
            ("a-", NAMESPACE_MAX, false, "start and end"),
        ] {
            let err = k8s_name_error(value, max, dots).unwrap_or_else(|| panic!("{value:?}"));
            assert!(err.contains(want), "{value:?}: {err}");
        }
    }

    #[test]
    fn refusals_name_the_field_and_cut_the_value() {
        let mut r = ScaledObjectRef {
            name: "x".repeat(1 << 20),
            namespace: "ns".into(),
            scaler_metadata: Default::default(),
        };
        let err = check_object(&r).unwrap_err().to_string();
        assert!(err.starts_with("scaledObjectRef.name \"xxx"), "{err}");
        assert!(err.contains("…\" is not a Kubernetes name"), "{err}");
        assert!(err.len() < 400, "{}", err.len());
        r.name = "ok".into();
        r.namespace = "a\nb".into();
        let err = check_object(&r).unwrap_err().to_string();
        assert!(
            err.starts_with("scaledObjectRef.namespace \"a\\nb\""),
            "{err}"
        );
        r.namespace = "ns".into();
        assert!(check_object(&r).is_ok());
    }

    #[test]
    #[allow(deprecated)]
    fn wire_values_fill_both_fields() {
        let v = to_metric_value("m", 12.6);
        assert_eq!((v.metric_value, v.metric_value_float), (13, 12.6));
        let v = to_metric_value("m", 1e300);
        assert_eq!(v.metric_value, i64::MAX);
        let s = to_metric_spec("m", 0.25);
        assert_eq!((s.target_size, s.target_size_float), (1, 0.25));
    }

    fn request(query: &str, metric_name: &str) -> GetMetricsRequest {
        GetMetricsRequest {
            scaled_object_ref: Some(ScaledObjectRef {
                name: "worker".into(),
                namespace: "jobs".into(),
                scaler_metadata: [("query", query), ("targetQueryValue", "5")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            metric_name: metric_name.into(),
        }
    }

    /// The at-once path answers exactly when the general one would answer a value, and leaves
    /// everything else to it: a miss, a wrong metric name, a failing poller, a shutdown.
    #[tokio::test]
    async fn the_cached_path_answers_only_what_the_general_path_would() {
        let shutdown = CancellationToken::new();
        let registry = Registry::in_memory(&["db"], shutdown.clone());
        let connections = [(
            "db".to_string(),
            ConnectionConfig::new(
                "db",
                crate::config::ConnectionUrl::Sqlite(crate::config::SqliteTarget::Memory),
            ),
        )]
        .into_iter()
        .collect();
        let scaler = Scaler::new(registry, connections, false, shutdown.clone());
        let now = tokio::time::Instant::now;

        let good = request("select 7", "");
        assert!(
            scaler.get_metrics_cached(&good, now()).is_none(),
            "a miss: never parsed, no poller"
        );
        let (general, _) = scaler.get_metrics_inner(good.clone()).await.unwrap();
        let (cached, freshness) = scaler
            .get_metrics_cached(&good, now())
            .expect("a hit with a running poller and a result");
        assert_eq!(cached, general);
        assert_eq!(cached.metric_values[0].metric_value, 7);
        assert_eq!(freshness.poll_interval, Duration::from_secs(10));

        // A metric name that is not the trigger's: refused, by the general path.
        let wrong = request("select 7", "other");
        assert!(scaler.get_metrics_cached(&wrong, now()).is_none());
        let err = scaler.get_metrics_inner(wrong).await.unwrap_err();
        assert!(
            err.to_string().contains("is not this trigger's metric"),
            "{err}"
        );

        // A poller whose query fails: the error, never a value, by the general path.
        let failing = request("select n from missing", "");
        let first = scaler.get_metrics_inner(failing.clone()).await.unwrap_err();
        assert!(scaler.get_metrics_cached(&failing, now()).is_none());
        let again = scaler.get_metrics_inner(failing).await.unwrap_err();
        assert_eq!(again.to_string(), first.to_string());
        assert!(again.to_string().contains("missing"), "{again}");

        // Shut down: the poller is cancelled at once, whether or not its task has ended.
        shutdown.cancel();
        assert!(scaler.get_metrics_cached(&good, now()).is_none());
        let err = scaler.get_metrics_inner(good).await.unwrap_err();
        assert_eq!(Status::from(err).code(), tonic::Code::Unavailable);
    }
}
