//! `orascale probe`: calls a scaler the way KEDA does — GetMetricSpec, then GetMetrics and
//! IsActive — and prints the answers, with the age of the served value and the trigger's poll
//! interval; with `--watch` it keeps StreamIsActive open and prints each message with a
//! timestamp, and calls IsActive every second to print when it changes (the stream never sends
//! `false`, so without it a drained queue would look like silence). GetMetricSpec's target is
//! shown with where it came from: the static `targetQueryValue`, the `targetQuery` (and how
//! old its poll is), or the static value as the target query's fallback (and why);
//! `--watch-spec` keeps StreamMetricSpec open and prints each spec it sends. `--ca`, `--cert`, `--key`
//! and `--server-name` reach a TLS or mTLS scaler with the files KEDA's TriggerAuthentication
//! uses. On an error it prints the gRPC status (with a hint when TLS is the likely cause) and
//! fails.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tonic::Request;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::ProbeArgs;
use crate::grpc::proto::external_scaler_client::ExternalScalerClient;
use crate::grpc::proto::{GetMetricsRequest, ScaledObjectRef};
use crate::grpc::service::{
    POLL_INTERVAL_HEADER, SAMPLE_AGE_HEADER, TARGET_AGE_HEADER, TARGET_REASON_HEADER,
    TARGET_SOURCE_HEADER,
};

/// How often `--watch` calls IsActive, as KEDA's polling loop would (more often: it is cheap).
const WATCH_IS_ACTIVE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("{method}: {code:?}: {message}")]
    Call {
        method: &'static str,
        code: tonic::Code,
        message: String,
    },
}

impl ProbeError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ProbeError::Usage(_) => 64,
            _ => 1,
        }
    }
}

/// Parses repeated `KEY=VALUE` arguments; the value may itself contain `=`.
pub fn parse_metadata(pairs: &[String]) -> Result<HashMap<String, String>, ProbeError> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(ProbeError::Usage(format!("-m {p:?}: expected KEY=VALUE"))),
        })
        .collect()
}

/// How the probe talks to the scaler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plaintext,
    Tls,
    /// TLS with a client certificate.
    Mtls,
}

/// What to add to a connection or call error when TLS is the likely cause: the messages a
/// plaintext client gets from a TLS port, and a TLS client from a plaintext one or from a
/// server that refuses its certificate, name HTTP/2 or rustls internals ("transport error",
/// "broken pipe") rather than the missing flag.
pub fn tls_hint(message: &str, transport: Transport) -> Option<&'static str> {
    let m = message.to_ascii_lowercase();
    if m.contains("connection refused") || m.contains("dns error") {
        return None; // nobody listens there: TLS is not the question
    }
    let dropped = [
        "h2 protocol error",
        "frame with invalid size",
        "connection reset",
        "broken pipe",
        // What tonic reports when a TLS server drops a plaintext HTTP/2 preface.
        "transport error",
        "operation was canceled",
    ]
    .iter()
    .any(|f| m.contains(f));
    match transport {
        Transport::Plaintext if dropped => Some(
            "if the scaler serves TLS, pass --ca FILE (and --cert FILE --key FILE for mTLS), as KEDA's TriggerAuthentication does",
        ),
        Transport::Plaintext => None,
        _ if m.contains("certificaterequired") || m.contains("certificate required") => {
            Some("the scaler requires a client certificate (mTLS): pass --cert FILE --key FILE")
        }
        _ if m.contains("unknownissuer") || m.contains("unknown issuer") => {
            Some("the scaler's certificate is not signed by --ca")
        }
        _ if m.contains("notvalidforname") || m.contains("not valid for name") => Some(
            "the scaler's certificate does not name the --addr host: pass --server-name with a name it has",
        ),
        _ if m.contains("invalidcontenttype")
            || m.contains("corrupt message")
            || m.contains("wrong version number") =>
        {
            Some("the scaler does not seem to serve TLS: drop --ca/--cert/--key")
        }
        // TLS 1.3: the server checks the client's certificate after the client finished its
        // handshake, so a refusal arrives as a dropped connection.
        Transport::Tls if dropped => {
            Some("the scaler may require a client certificate (mTLS): pass --cert FILE --key FILE")
        }
        Transport::Mtls if dropped => {
            Some("the scaler may have refused the client certificate: its log says why")
        }
        _ => None,
    }
}

fn with_hint(message: String, transport: Transport) -> String {
    match tls_hint(&message, transport) {
        Some(h) => format!("{message} (hint: {h})"),
        None => message,
    }
}

fn call_err(method: &'static str, transport: Transport) -> impl Fn(tonic::Status) -> ProbeError {
    move |s| ProbeError::Call {
        method,
        code: s.code(),
        message: with_hint(status_text(&s), transport),
    }
}

/// A status's message and, for transport failures, its causes: "transport error" alone does
/// not say that the server wanted a client certificate.
fn status_text(s: &tonic::Status) -> String {
    let mut text = s.message().to_string();
    let mut cause = std::error::Error::source(s);
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    text
}

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, ProbeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bytes = std::fs::read(path)
        .map_err(|e| ProbeError::Usage(format!("{flag} {}: {e}", path.display())))?;
    // Checked here so a wrong file is named now, not as a handshake failure later.
    let ok = if flag == "--key" {
        PrivateKeyDer::from_pem_slice(&bytes).is_ok()
    } else {
        CertificateDer::pem_slice_iter(&bytes)
            .next()
            .is_some_and(|c| c.is_ok())
    };
    if !ok {
        let what = if flag == "--key" {
            "a PEM private key"
        } else {
            "a PEM certificate"
        };
        return Err(ProbeError::Usage(format!(
            "{flag} {}: not {what}",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The endpoint `--addr` and the TLS flags describe; true when it uses TLS.
fn endpoint(args: &ProbeArgs) -> Result<(Endpoint, Transport), ProbeError> {
    let wants_tls = args.ca.is_some() || args.cert.is_some() || args.server_name.is_some();
    let addr = if args.addr.contains("://") {
        args.addr.clone()
    } else if wants_tls {
        format!("https://{}", args.addr)
    } else {
        format!("http://{}", args.addr)
    };
    let tls = addr.starts_with("https://");
    if wants_tls && !tls {
        return Err(ProbeError::Usage(format!(
            "--addr {:?}: --ca, --cert, --key and --server-name need https:// (or no scheme)",
            args.addr
        )));
    }
    let mut endpoint = Endpoint::from_shared(addr)
        .map_err(|e| ProbeError::Usage(format!("--addr {:?}: {e}", args.addr)))?
        .connect_timeout(args.timeout);
    if tls {
        let Some(ca) = &args.ca else {
            return Err(ProbeError::Usage(format!(
                "--addr {:?}: TLS needs --ca FILE, the CA that signed the scaler's certificate",
                args.addr
            )));
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("--ca", ca)?));
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            config = config.identity(Identity::from_pem(
                read_pem("--cert", cert)?,
                read_pem("--key", key)?,
            ));
        }
        if let Some(name) = &args.server_name {
            config = config.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| ProbeError::Usage(format!("TLS: {}", error_chain(&e))))?;
    }
    let transport = match (tls, args.cert.is_some()) {
        (false, _) => Transport::Plaintext,
        (true, false) => Transport::Tls,
        (true, true) => Transport::Mtls,
    };
    Ok((endpoint, transport))
}

fn request<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// Runs the probe, printing to stdout.
#[allow(deprecated)]
pub async fn run(args: ProbeArgs) -> Result<(), ProbeError> {
    let metadata = parse_metadata(&args.metadata)?;
    let (endpoint, transport) = endpoint(&args)?;
    let addr = endpoint.uri().to_string();
    let channel: Channel = endpoint.connect().await.map_err(|e| ProbeError::Connect {
        addr: addr.clone(),
        message: with_hint(error_chain(&e), transport),
    })?;
    let mut client = ExternalScalerClient::new(channel);
    let object = ScaledObjectRef {
        name: args.name.clone(),
        namespace: args.namespace.clone(),
        scaler_metadata: metadata,
    };
    let timeout = args.timeout;

    let mut ask = request(object.clone(), timeout);
    ask.metadata_mut().insert(
        crate::grpc::service::FRESHNESS_REQUEST_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    let spec = client
        .get_metric_spec(ask)
        .await
        .map_err(call_err("GetMetricSpec", transport))?;
    let origin = target_origin(spec.metadata());
    let spec = spec.into_inner();
    let mut metric_name = String::new();
    for s in &spec.metric_specs {
        println!(
            "GetMetricSpec: metricName={} targetSize={} targetSizeFloat={}",
            s.metric_name, s.target_size, s.target_size_float
        );
        metric_name = s.metric_name.clone();
    }
    if let Some(line) = origin {
        println!("{line}");
    }

    if args.watch {
        return watch(&mut client, &object, timeout, transport).await;
    }
    if args.watch_spec {
        return watch_spec(&mut client, &object, transport).await;
    }

    let mut ask = request(
        GetMetricsRequest {
            scaled_object_ref: Some(object.clone()),
            metric_name,
        },
        timeout,
    );
    ask.metadata_mut().insert(
        crate::grpc::service::FRESHNESS_REQUEST_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    let metrics = client
        .get_metrics(ask)
        .await
        .map_err(call_err("GetMetrics", transport))?;
    let freshness = freshness(metrics.metadata());
    let metrics = metrics.into_inner();
    for v in &metrics.metric_values {
        println!(
            "GetMetrics: metricName={} metricValue={} metricValueFloat={}",
            v.metric_name, v.metric_value, v.metric_value_float
        );
    }
    if let Some(line) = freshness {
        println!("{line}");
    }
    let active = client
        .is_active(request(object, timeout))
        .await
        .map_err(call_err("IsActive", transport))?
        .into_inner();
    println!("IsActive: result={}", active.result);
    if let (Some(current), Some(spec), Some(value)) = (
        args.current_replicas,
        spec.metric_specs.first(),
        metrics.metric_values.first(),
    ) {
        let d = decide(
            current,
            value.metric_value_float,
            spec.target_size_float,
            active.result,
            args.metric_type,
            Bounds {
                min: args.min_replica_count,
                max: args.max_replica_count,
            },
        );
        println!("Scaling: {}", d.explain);
    }
    Ok(())
}

/// The line that says how old the value is, from GetMetrics' response metadata (absent when
/// the scaler is older than this probe).
fn freshness(md: &tonic::metadata::MetadataMap) -> Option<String> {
    let age = md.get(SAMPLE_AGE_HEADER)?.to_str().ok()?;
    let interval = md.get(POLL_INTERVAL_HEADER)?.to_str().ok()?;
    Some(format!(
        "Sample: polled {age}s ago; pollInterval {interval} (the scaler serves its last poll: a change shows within one interval)"
    ))
}

/// The line that says where GetMetricSpec's target came from, from its response metadata
/// (absent when the scaler is older than this probe).
fn target_origin(md: &tonic::metadata::MetadataMap) -> Option<String> {
    let source = md.get(TARGET_SOURCE_HEADER)?.to_str().ok()?;
    let text = |name: &str| md.get(name).and_then(|v| v.to_str().ok());
    Some(match source {
        "query" => format!(
            "Target: from targetQuery, polled {}s ago (StreamMetricSpec pushes a change; GetMetricSpec returns the same)",
            text(TARGET_AGE_HEADER).unwrap_or("?")
        ),
        "fallback" => format!(
            "Target: static targetQueryValue, the fallback: the targetQuery has no good value ({})",
            text(TARGET_REASON_HEADER).unwrap_or("no reason given")
        ),
        _ => "Target: static targetQueryValue (no targetQuery)".to_string(),
    })
}

/// `--watch-spec`: StreamMetricSpec's messages as they come, until the stream ends.
async fn watch_spec(
    client: &mut ExternalScalerClient<Channel>,
    object: &ScaledObjectRef,
    transport: Transport,
) -> Result<(), ProbeError> {
    let mut stream = client
        .stream_metric_spec(Request::new(object.clone()))
        .await
        .map_err(call_err("StreamMetricSpec", transport))?
        .into_inner();
    println!("{} StreamMetricSpec: open", now());
    loop {
        match stream.next().await {
            Some(Ok(m)) => {
                let specs: Vec<String> = m
                    .metric_specs
                    .iter()
                    .map(|s| {
                        format!(
                            "metricName={} targetSize={} targetSizeFloat={}",
                            s.metric_name, s.target_size, s.target_size_float
                        )
                    })
                    .collect();
                println!("{} StreamMetricSpec: {}", now(), specs.join("; "));
            }
            None => {
                println!("{} StreamMetricSpec: ended OK", now());
                return Ok(());
            }
            Some(Err(s)) => return Err(call_err("StreamMetricSpec", transport)(s)),
        }
    }
}

/// `--watch`: the stream's messages as they come, and IsActive whenever its answer changes.
async fn watch(
    client: &mut ExternalScalerClient<Channel>,
    object: &ScaledObjectRef,
    timeout: Duration,
    transport: Transport,
) -> Result<(), ProbeError> {
    let mut stream = client
        .stream_is_active(Request::new(object.clone()))
        .await
        .map_err(call_err("StreamIsActive", transport))?
        .into_inner();
    println!("{} StreamIsActive: open", now());
    let mut ticks = tokio::time::interval(WATCH_IS_ACTIVE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<String> = None;
    loop {
        tokio::select! {
            // `next` is cancel-safe: a message that arrives during an IsActive call waits.
            m = stream.next() => match m {
                Some(Ok(m)) => println!("{} StreamIsActive: result={}", now(), m.result),
                None => {
                    println!("{} StreamIsActive: ended OK", now());
                    return Ok(());
                }
                Some(Err(s)) => return Err(call_err("StreamIsActive", transport)(s)),
            },
            _ = ticks.tick() => {
                let state = match client.is_active(request(object.clone(), timeout)).await {
                    Ok(r) => format!("result={}", r.into_inner().result),
                    Err(s) => format!("{:?}: {}", s.code(), s.message()),
                };
                if last.as_deref() != Some(state.as_str()) {
                    println!("{} IsActive: {state}{}", now(), watch_note(&state));
                    last = Some(state);
                }
            }
        }
    }
}

/// What a changed IsActive answer means for scaling, for `--watch`.
fn watch_note(state: &str) -> &'static str {
    if state == "result=false" {
        " (the stream never sends false: KEDA's polling loop sees this and, after cooldownPeriod, scales to minReplicaCount)"
    } else {
        ""
    }
}

/// A ScaledObject's `minReplicaCount` and `maxReplicaCount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
}

impl Default for Bounds {
    /// KEDA's defaults.
    fn default() -> Self {
        Bounds { min: 0, max: 100 }
    }
}

/// What KEDA and the HPA would do with one trigger's value.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The replicas KEDA and the HPA together set now (`minReplicaCount`/`maxReplicaCount`
    /// applied, and the HPA's floor of 1 while the workload is scaled out).
    pub desired: u32,
    pub explain: String,
}

/// KEDA's activation rule in front of the HPA's rule for an external metric (tolerance 10 %,
/// kube-controller-manager's default). At 0 replicas only IsActive matters (active → KEDA
/// scales to max(minReplicaCount, 1)). Above 0 the HPA decides, never below
/// max(minReplicaCount, 1) nor above maxReplicaCount: an HPA cannot scale to 0, only KEDA can,
/// after cooldownPeriod once IsActive is false and minReplicaCount is 0.
pub fn decide(
    current: u32,
    value: f64,
    target: f64,
    active: bool,
    metric_type: crate::config::MetricType,
    bounds: Bounds,
) -> Decision {
    use crate::config::MetricType;
    let floor = bounds.min.max(1);
    let ceiling = bounds.max.max(floor);
    if current == 0 {
        return if active {
            let desired = floor.min(ceiling);
            Decision {
                desired,
                explain: format!(
                    "currentReplicas=0, IsActive=true: KEDA scales to max(minReplicaCount, 1) = {desired}, then the HPA takes over (value {value} vs target {target})"
                ),
            }
        } else {
            Decision {
                desired: bounds.min,
                explain: format!(
                    "currentReplicas=0, IsActive=false: KEDA keeps the workload at {} (minReplicaCount; the HPA is not consulted at 0)",
                    bounds.min
                ),
            }
        };
    }
    let (raw, formula) = match metric_type {
        MetricType::AverageValue => (value / target, format!("ceil({value} / {target})")),
        MetricType::Value => (
            f64::from(current) * value / target,
            format!("ceil({current} × {value} / {target})"),
        ),
    };
    let ratio = raw / f64::from(current);
    let within_tolerance = (ratio - 1.0).abs() <= 0.1;
    let hpa = if within_tolerance {
        current
    } else {
        raw.ceil().clamp(0.0, f64::from(u32::MAX)) as u32
    };
    let desired = hpa.clamp(floor, ceiling);
    let mut note = String::new();
    if within_tolerance {
        note.push_str(", within the HPA's 10% tolerance: no change");
    }
    if desired > hpa {
        note.push_str(&format!(
            " = {hpa}, raised to max(minReplicaCount, 1) = {floor}: the HPA never goes below that"
        ));
    } else if desired < hpa {
        note.push_str(&format!(" = {hpa}, capped at maxReplicaCount = {ceiling}"));
    }
    let mut explain = format!(
        "currentReplicas={current}, metricType={metric_type:?}: desiredReplicas={desired} ({formula}{note})"
    );
    if !active {
        if bounds.min == 0 {
            explain
                .push_str("; IsActive=false: after cooldownPeriod KEDA scales the workload to 0");
        } else {
            explain.push_str(&format!(
                "; IsActive=false, but minReplicaCount={} keeps it scaled out",
                bounds.min
            ));
        }
    }
    Decision { desired, explain }
}

fn now() -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_millis(SystemTime::now())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_follow_keda_and_the_hpa() {
        use crate::config::MetricType::{AverageValue, Value};
        let keda = Bounds::default();
        let cases = [
            // (current, value, target, active, type, bounds, desired)
            (0, 12.0, 5.0, true, AverageValue, keda, 1),
            (
                0,
                12.0,
                5.0,
                true,
                AverageValue,
                Bounds { min: 2, max: 10 },
                2,
            ),
            (0, 0.0, 5.0, false, AverageValue, keda, 0),
            (2, 12.0, 5.0, true, AverageValue, keda, 3),
            (3, 12.0, 5.0, true, AverageValue, keda, 3),
            (2, 12.0, 5.0, true, Value, keda, 5),
            (4, 21.0, 5.0, true, AverageValue, keda, 4), // 5 % off: tolerance
            // The HPA's floor: never 0 while scaled out (KEDA scales to 0, after cooldown).
            (4, 0.0, 5.0, false, AverageValue, keda, 1),
            (
                4,
                0.0,
                5.0,
                false,
                AverageValue,
                Bounds { min: 3, max: 10 },
                3,
            ),
            (
                2,
                120.0,
                5.0,
                true,
                AverageValue,
                Bounds { min: 0, max: 10 },
                10,
            ),
        ];
        for (current, value, target, active, ty, bounds, want) in cases {
            let d = decide(current, value, target, active, ty, bounds);
            assert_eq!(
                d.desired, want,
                "{current} {value} {target} {active} {ty:?} {bounds:?}: {}",
                d.explain
            );
        }
        let idle = decide(4, 0.0, 5.0, false, AverageValue, keda).explain;
        assert!(
            idle.contains(
                "desiredReplicas=1 (ceil(0 / 5) = 0, raised to max(minReplicaCount, 1) = 1"
            ) && idle.contains("after cooldownPeriod KEDA scales the workload to 0"),
            "{idle}"
        );
        assert!(
            decide(2, 12.0, 5.0, true, Value, keda)
                .explain
                .contains("desiredReplicas=5 (ceil(2 × 12 / 5))")
        );
        assert!(
            decide(
                2,
                120.0,
                5.0,
                true,
                AverageValue,
                Bounds { min: 0, max: 10 }
            )
            .explain
            .contains("capped at maxReplicaCount = 10")
        );
        assert!(
            decide(4, 0.0, 5.0, false, AverageValue, Bounds { min: 3, max: 10 })
                .explain
                .contains("minReplicaCount=3 keeps it scaled out")
        );
    }

    #[test]
    fn tls_hints_name_the_missing_flag() {
        use Transport::{Mtls, Plaintext, Tls};
        for plaintext_to_tls in [
            "transport error: h2 protocol error: http2 error",
            "transport error",
            "operation was canceled",
        ] {
            let h = tls_hint(plaintext_to_tls, Plaintext).unwrap();
            assert!(h.contains("--ca") && h.contains("--cert"), "{h}");
        }
        let dropped = "transport error: connection error: stream closed because of a broken pipe";
        assert!(
            tls_hint(dropped, Tls)
                .unwrap()
                .contains("--cert FILE --key FILE")
        );
        assert!(
            tls_hint(dropped, Mtls)
                .unwrap()
                .contains("refused the client certificate")
        );
        let alert = "transport error: received fatal alert: CertificateRequired";
        assert!(
            tls_hint(alert, Tls)
                .unwrap()
                .contains("--cert FILE --key FILE")
        );
        assert!(tls_hint("invalid peer certificate: UnknownIssuer", Tls).is_some());
        let refused = "transport error: tcp connect error: Connection refused (os error 111)";
        for t in [Plaintext, Tls, Mtls] {
            assert_eq!(tls_hint(refused, t), None);
            assert_eq!(tls_hint("no such table: nope", t), None);
        }
    }

    #[test]
    fn metadata_pairs() {
        let m = parse_metadata(&["query=select a=1".into(), " k =v".into()]).unwrap();
        assert_eq!(m["query"], "select a=1");
        assert_eq!(m["k"], "v");
        assert!(parse_metadata(&["novalue".into()]).is_err());
        assert!(parse_metadata(&["=v".into()]).is_err());
    }
}
