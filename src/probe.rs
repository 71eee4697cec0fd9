//! `orascale probe`: calls a scaler the way KEDA does — GetMetricSpec, then GetMetrics and
//! IsActive — and prints the answers; with `--watch` it keeps StreamIsActive open and prints
//! each message with a timestamp. On an error it prints the gRPC status and fails.

use std::collections::HashMap;
use std::time::SystemTime;

use tonic::Request;
use tonic::transport::{Channel, Endpoint};

use crate::config::ProbeArgs;
use crate::grpc::proto::external_scaler_client::ExternalScalerClient;
use crate::grpc::proto::{GetMetricsRequest, ScaledObjectRef};

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

fn call_err(method: &'static str) -> impl Fn(tonic::Status) -> ProbeError {
    move |s| ProbeError::Call {
        method,
        code: s.code(),
        message: s.message().to_string(),
    }
}

/// Runs the probe, printing to stdout.
#[allow(deprecated)]
pub async fn run(args: ProbeArgs) -> Result<(), ProbeError> {
    let metadata = parse_metadata(&args.metadata)?;
    let addr = if args.addr.contains("://") {
        args.addr.clone()
    } else {
        format!("http://{}", args.addr)
    };
    let endpoint = Endpoint::from_shared(addr.clone())
        .map_err(|e| ProbeError::Usage(format!("--addr {:?}: {e}", args.addr)))?
        .connect_timeout(args.timeout);
    let channel: Channel = endpoint.connect().await.map_err(|e| ProbeError::Connect {
        addr: addr.clone(),
        message: error_chain(&e),
    })?;
    let mut client = ExternalScalerClient::new(channel);
    let object = ScaledObjectRef {
        name: args.name.clone(),
        namespace: args.namespace.clone(),
        scaler_metadata: metadata,
    };
    let timeout = args.timeout;
    fn request<T>(msg: T, timeout: std::time::Duration) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(timeout);
        r
    }

    let spec = client
        .get_metric_spec(request(object.clone(), timeout))
        .await
        .map_err(call_err("GetMetricSpec"))?
        .into_inner();
    let mut metric_name = String::new();
    for s in &spec.metric_specs {
        println!(
            "GetMetricSpec: metricName={} targetSize={} targetSizeFloat={}",
            s.metric_name, s.target_size, s.target_size_float
        );
        metric_name = s.metric_name.clone();
    }

    if args.watch {
        let mut stream = client
            .stream_is_active(Request::new(object.clone()))
            .await
            .map_err(call_err("StreamIsActive"))?
            .into_inner();
        println!("{} StreamIsActive: open", now());
        loop {
            match stream.message().await {
                Ok(Some(m)) => println!("{} StreamIsActive: result={}", now(), m.result),
                Ok(None) => {
                    println!("{} StreamIsActive: ended OK", now());
                    return Ok(());
                }
                Err(s) => return Err(call_err("StreamIsActive")(s)),
            }
        }
    }

    let metrics = client
        .get_metrics(request(
            GetMetricsRequest {
                scaled_object_ref: Some(object.clone()),
                metric_name,
            },
            timeout,
        ))
        .await
        .map_err(call_err("GetMetrics"))?
        .into_inner();
    for v in &metrics.metric_values {
        println!(
            "GetMetrics: metricName={} metricValue={} metricValueFloat={}",
            v.metric_name, v.metric_value, v.metric_value_float
        );
    }
    let active = client
        .is_active(request(object, timeout))
        .await
        .map_err(call_err("IsActive"))?
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
        );
        println!("Scaling: {}", d.explain);
    }
    Ok(())
}

/// What KEDA and the HPA would do with one trigger's value.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The replicas this trigger asks for (before min/max replica counts apply).
    pub desired: u32,
    pub explain: String,
}

/// The HPA's rule for an external metric (tolerance 10 %, as kube-controller-manager's default),
/// behind KEDA's activation rule: at 0 replicas only IsActive matters (active → 1, then the
/// HPA); above 0 an inactive trigger lets KEDA scale to zero after `cooldownPeriod`.
pub fn decide(
    current: u32,
    value: f64,
    target: f64,
    active: bool,
    metric_type: crate::config::MetricType,
) -> Decision {
    use crate::config::MetricType;
    if current == 0 {
        return if active {
            Decision {
                desired: 1,
                explain: format!(
                    "currentReplicas=0, IsActive=true: KEDA scales to max(minReplicaCount, 1), then the HPA takes over (value {value} vs target {target})"
                ),
            }
        } else {
            Decision {
                desired: 0,
                explain: "currentReplicas=0, IsActive=false: KEDA keeps the workload at 0 (the HPA is not consulted at 0)".into(),
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
    let desired = if (ratio - 1.0).abs() <= 0.1 {
        current
    } else {
        raw.ceil().clamp(0.0, f64::from(u32::MAX)) as u32
    };
    let mut explain = format!(
        "currentReplicas={current}, metricType={metric_type:?}: desiredReplicas={desired} ({formula}{})",
        if desired == current && (ratio - 1.0).abs() <= 0.1 {
            ", within the HPA's 10% tolerance: no change"
        } else {
            ""
        }
    );
    if !active {
        explain.push_str(
            "; IsActive=false: after cooldownPeriod KEDA scales to minReplicaCount (0 if so set)",
        );
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
        let cases = [
            // (current, value, target, active, type, desired)
            (0, 12.0, 5.0, true, AverageValue, 1),
            (0, 0.0, 5.0, false, AverageValue, 0),
            (2, 12.0, 5.0, true, AverageValue, 3),
            (3, 12.0, 5.0, true, AverageValue, 3),
            (2, 12.0, 5.0, true, Value, 5),
            (4, 21.0, 5.0, true, AverageValue, 4), // 5 % off: tolerance
            (4, 0.0, 5.0, false, AverageValue, 0),
        ];
        for (current, value, target, active, ty, want) in cases {
            let d = decide(current, value, target, active, ty);
            assert_eq!(
                d.desired, want,
                "{current} {value} {target} {active} {ty:?}: {}",
                d.explain
            );
        }
        assert!(
            decide(4, 0.0, 5.0, false, AverageValue)
                .explain
                .contains("cooldownPeriod")
        );
        assert!(
            decide(2, 12.0, 5.0, true, Value)
                .explain
                .contains("ceil(2 × 12 / 5)")
        );
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
