//! Telemetry from the outside: /metrics after real traffic, health and reflection, the shutdown
//! order, structured logs and lifecycle lines, and that no secret leaks into any of them.

use crate::support;

use std::time::Duration;

use futures::StreamExt;
use orascale::telemetry::metrics as m;
use support::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_real_traffic_have_every_family_label_and_move() {
    guard(LIMIT, async {
        let db = TestDb::new();
        db.set_queued(4);
        let server = start(vec![connection("obs", &db.url())], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let good = object("worker", &[("query", QUEUED), ("targetQueryValue", "1"), ("pollInterval", "200ms"), ("metricName", "obs-queued")]);
        let bad = object("broken", &[("query", "select count(*) from nope"), ("targetQueryValue", "1"), ("pollInterval", "200ms")]);
        let mut stream = c.stream_is_active(good.clone()).await.unwrap().into_inner();
        assert!(stream.message().await.unwrap().unwrap().result);
        c.get_metric_spec(deadline(good.clone())).await.unwrap();
        c.get_metrics(deadline(metrics_request(&good, ""))).await.unwrap();
        c.is_active(deadline(good.clone())).await.unwrap();
        assert!(c.get_metrics(deadline(metrics_request(&bad, ""))).await.is_err());
        assert!(c.get_metric_spec(deadline(object("x", &[("query", "select 1")]))).await.is_err());
        tokio::time::sleep(Duration::from_millis(700)).await;
        let before = scrape(server.metrics_addr).await;

        for family in m::ALL {
            assert!(before.contains(&format!("# TYPE {family} ")), "family {family} missing:\n{before}");
            assert!(before.contains(&format!("# HELP {family} ")), "HELP for {family} missing");
        }
        let v = |text: &str, name: &str, parts: &[&str]| metric_value(text, name, parts).unwrap_or_else(|| panic!("{name} {parts:?}:\n{text}"));
        assert!(v(&before, "orascale_polls_total", &["connection=\"obs\"", "result=\"ok\""]) >= 2.0);
        assert!(v(&before, "orascale_polls_total", &["connection=\"obs\"", "result=\"error\""]) >= 2.0);
        assert!(v(&before, "orascale_poll_duration_seconds_bucket", &["connection=\"obs\"", "outcome=\"ok\"", "le=\"0.001\""]) >= 0.0);
        assert!(v(&before, "orascale_poll_duration_seconds_count", &["connection=\"obs\"", "outcome=\"ok\""]) >= 2.0);
        assert!(before.contains("le=\"30\""), "buckets reach 30 s");
        assert!(v(&before, "orascale_grpc_requests_total", &["method=\"GetMetrics\"", "code=\"OK\""]) >= 1.0);
        assert!(v(&before, "orascale_grpc_requests_total", &["method=\"GetMetrics\"", "code=\"UNAVAILABLE\""]) >= 1.0);
        assert!(v(&before, "orascale_grpc_requests_total", &["method=\"GetMetricSpec\"", "code=\"INVALID_ARGUMENT\""]) >= 1.0);
        assert!(v(&before, "orascale_grpc_request_duration_seconds_count", &["method=\"IsActive\"", "code=\"OK\""]) >= 1.0);
        assert!(v(&before, "orascale_sample_age_seconds_count", &["connection=\"obs\"", "method=\"GetMetrics\""]) >= 1.0);
        assert!(v(&before, "orascale_stream_messages_total", &[]) >= 1.0);
        assert!(v(&before, "orascale_streams", &[]) >= 1.0);
        let labels = ["connection=\"obs\"", "namespace=\"test\"", "scaledobject=\"worker\"", "metric=\"obs-queued\""];
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let last = v(&before, "orascale_last_success_timestamp_seconds", &labels);
        assert!((now - last).abs() < 10.0, "last success {last} vs now {now}");
        assert_eq!(v(&before, "orascale_poller_consecutive_failures", &labels), 0.0);
        assert_eq!(v(&before, "orascale_poller_streams", &labels), 1.0);
        assert!(v(&before, "orascale_poller_consecutive_failures", &["scaledobject=\"broken\""]) >= 2.0);
        assert!(!before.contains("orascale_last_success_timestamp_seconds{connection=\"obs\",namespace=\"test\",scaledobject=\"broken\""));
        assert_eq!(v(&before, "orascale_pool_max_sessions", &["connection=\"obs\""]), 4.0);
        assert!(v(&before, "orascale_pool_sessions", &["connection=\"obs\""]) >= 1.0);

        // Values move with traffic.
        c.get_metrics(deadline(metrics_request(&good, ""))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = scrape(server.metrics_addr).await;
        assert!(v(&after, "orascale_polls_total", &["connection=\"obs\"", "result=\"ok\""]) > v(&before, "orascale_polls_total", &["connection=\"obs\"", "result=\"ok\""]));
        assert!(v(&after, "orascale_grpc_requests_total", &["method=\"GetMetrics\"", "code=\"OK\""]) > v(&before, "orascale_grpc_requests_total", &["method=\"GetMetrics\"", "code=\"OK\""]));
        drop(stream);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_services_and_reflection_answer() {
    guard(LIMIT, async {
        let server = start(vec![memory("mem")], engine()).await;
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let mut health = HealthClient::new(channel.clone());
        for service in ["", "liveness", "readiness", "externalscaler.ExternalScaler"] {
            let r = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
        }
        // What `grpcurl -plaintext host:9090 list` asks.
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = reflection
            .server_reflection_info(futures::stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let response = responses.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("{response:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in ["externalscaler.ExternalScaler", "grpc.health.v1.Health"] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_readiness_flips_first_while_serving_continues() {
    guard(LIMIT, async {
        let mut e = engine();
        e.shutdown_delay = Duration::from_millis(1500);
        let server = start(vec![memory("mem")], e).await;
        let grpc = server.grpc_addr;
        let admin = server.metrics_addr;
        let mut c = client(grpc).await;
        let obj = object("w", &[("query", "select 3"), ("targetQueryValue", "1")]);
        let mut stream = c.stream_is_active(obj.clone()).await.unwrap().into_inner();
        assert!(stream.message().await.unwrap().unwrap().result);
        let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel);

        server.shutdown_token().cancel();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // During the delay: not ready, still alive, still serving KEDA.
        let (status, _) = tokio::task::spawn_blocking(move || http_get(admin, "/readyz"))
            .await
            .unwrap();
        assert_eq!(status, 503);
        let (status, _) = tokio::task::spawn_blocking(move || http_get(admin, "/healthz"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let ready = health
            .check(HealthCheckRequest {
                service: "readiness".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ready.status, ServingStatus::NotServing as i32);
        let live = health
            .check(HealthCheckRequest {
                service: "liveness".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(live.status, ServingStatus::Serving as i32);
        let v = c
            .get_metrics(deadline(metrics_request(&obj, "")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.metric_values[0].metric_value_float, 3.0);
        // Then the stream ends with OK and the server stops.
        let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("stream ends");
        assert!(end.expect("with OK").is_none());
        server.wait().await;
    })
    .await;
}

#[test]
fn json_logs_and_poller_lifecycle_lines() {
    let db = TestDb::new();
    db.set_queued(1);
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(
        &[
            "--log-format",
            "json",
            "--idle-timeout",
            "1s",
            "--min-poll-interval",
            "100ms",
            "--connection",
            &format!("jobs={}", db.url()),
        ],
        dir.path(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let grpc = server.grpc;
    let path = db.path.clone();
    rt.block_on(async move {
        let mut c = client(grpc).await;
        let obj = object(
            "worker",
            &[
                ("query", QUEUED),
                ("targetQueryValue", "1"),
                ("pollInterval", "200ms"),
                ("metricName", "life"),
            ],
        );
        c.get_metrics(deadline(metrics_request(&obj, "")))
            .await
            .unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("alter table jobs rename to gone", []).unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        conn.execute("alter table gone rename to jobs", []).unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        c.get_metrics(deadline(metrics_request(&obj, "")))
            .await
            .unwrap();
    });
    // No call for the idle timeout: the poller is evicted.
    let log = server.wait_log("poller evicted", Duration::from_secs(10));
    let mut messages = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        messages.push((v["message"].as_str().unwrap_or_default().to_string(), v));
    }
    let find = |m: &str| {
        messages
            .iter()
            .find(|(msg, _)| msg == m)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {m:?} line in:\n{log}"))
    };
    let ready = find("orascale ready");
    assert!(ready["grpc"].as_str().unwrap().starts_with("127.0.0.1:"));
    for event in [
        "poller created",
        "poller first result",
        "poller query failed",
        "poller recovered",
        "poller evicted",
    ] {
        let v = find(event);
        assert_eq!(v["connection"], "jobs", "{event}: {v}");
        assert_eq!(v["namespace"], "test", "{event}: {v}");
        assert_eq!(v["scaledobject"], "worker", "{event}: {v}");
        assert_eq!(v["metric"], "life", "{event}: {v}");
    }
    assert!(
        find("poller query failed")["error"]
            .as_str()
            .unwrap()
            .contains("no such table: jobs")
    );
    // One line per lifecycle event, not one per poll.
    assert_eq!(
        messages
            .iter()
            .filter(|(m, _)| m == "poller query failed")
            .count(),
        1,
        "{log}"
    );
    assert!(
        messages
            .iter()
            .all(|(m, v)| m != "poller first result" || v["level"] == "INFO")
    );
}

#[test]
fn no_secret_in_logs_metrics_help_or_errors() {
    let secret = "Hunter2-Very-Secret";
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Binary::start_with_env(
        &[
            "--connection",
            &format!("pg=postgres://app:{secret}@127.0.0.1:{port}/db?sslmode=disable"),
            "--connection",
            &format!("ora=oracle://app:{secret}@127.0.0.1:{port}/SVC"),
            // Every other place tokio-postgres reads a password from: the query, and a
            // password holding a raw `/`, `#` or `@` (it runs to the `@` before the host).
            "--connection",
            &format!("pq=postgres://app@127.0.0.1:{port}/db?sslmode=disable&password={secret}"),
            "--connection",
            &format!("pu=postgresql://127.0.0.1:{port}/db?user=app&password={secret}"),
            "--connection",
            &format!("ps=postgres://app:a/{secret}@127.0.0.1:{port}/db"),
            "--connection",
            &format!("ph=postgres://app:a#{secret}@127.0.0.1:{port}/db"),
        ],
        dir.path(),
        &[("RUST_LOG", "debug"), ("ORASCALE_OTHER_PASSWORD", secret)],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let grpc = server.grpc;
    let errors = rt.block_on(async move {
        let mut c = client(grpc).await;
        let mut errors = String::new();
        for conn in ["pg", "ora", "pq", "pu", "ps", "ph"] {
            let obj = object(
                "x",
                &[
                    ("query", "select 1"),
                    ("targetQueryValue", "1"),
                    ("connection", conn),
                ],
            );
            let e = c
                .get_metrics(deadline(metrics_request(&obj, "")))
                .await
                .unwrap_err();
            errors.push_str(e.message());
        }
        errors
    });
    let metrics = http_get(server.metrics, "/metrics").1;
    let help = std::process::Command::new(bin())
        .args(["serve", "--help"])
        .env(
            "ORASCALE_CONNECTIONS",
            format!("pg=postgres://app:{secret}@h/db"),
        )
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(help.contains("ORASCALE_CONNECTIONS"));
    // The doctor names each connection's URL in its report, text and JSON.
    let mut check = String::new();
    for json in [false, true] {
        for form in [
            format!("pq=postgres://app@127.0.0.1:{port}/db?password={secret}"),
            format!("ps=postgres://app:a/{secret}@127.0.0.1:{port}/db"),
        ] {
            let mut args = vec!["check", "--connection", &form, "--timeout", "2s"];
            if json {
                args.push("--json");
            }
            let out = std::process::Command::new(bin())
                .args(&args)
                .output()
                .unwrap();
            check.push_str(&String::from_utf8_lossy(&out.stdout));
            check.push_str(&String::from_utf8_lossy(&out.stderr));
        }
    }
    assert!(check.contains("app@127.0.0.1"), "{check}");
    let log = server.log_text();
    for (what, text) in [
        ("log", &log),
        ("metrics", &metrics),
        ("errors", &errors),
        ("--help", &help),
        ("check", &check),
    ] {
        assert!(
            !text.contains(secret),
            "the password leaked into {what}:\n{text}"
        );
    }
    assert!(
        log.contains("app:***@127.0.0.1"),
        "URLs are logged redacted: {log}"
    );
}

#[test]
fn a_database_error_with_a_newline_stays_on_one_text_log_line() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(
        &[
            "--min-poll-interval",
            "100ms",
            "--connection",
            &format!("jobs={}", db.url()),
        ],
        dir.path(),
    );
    let grpc = server.grpc;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(guard(Duration::from_secs(30), async move {
        let mut c = client(grpc).await;
        // SQLite's error names the missing table, newline and all.
        let obj = object(
            "forger",
            &[
                (
                    "query",
                    "select count(*) from \"jobs\nERROR orascale::engine::poller: poller stopped\"",
                ),
                ("targetQueryValue", "1"),
                ("pollInterval", "10s"),
            ],
        );
        let err = c
            .get_metrics(deadline(metrics_request(&obj, "")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    }));
    let log = server.wait_log("poller query failed", Duration::from_secs(10));
    let line = log
        .lines()
        .find(|l| l.contains("poller query failed"))
        .unwrap_or_else(|| panic!("no failure logged:\n{log}"));
    assert!(
        line.contains("no such table: jobs\\nERROR orascale::engine::poller: poller stopped"),
        "{line}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("ERROR")),
        "a forged line:\n{log}"
    );
}

/// A call the client gives up on before the answer (KEDA's deadline while a new poller's slow
/// first query runs) is counted, as CANCELLED, not lost from orascale_grpc_requests_total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_the_client_gives_up_on_are_counted_as_cancelled() {
    guard(LIMIT, async {
        let server = start(vec![memory("slow")], engine()).await;
        let mut c = client(server.grpc_addr).await;
        // Seconds of work in SQLite: the first GetMetrics waits for it (up to 2 s).
        let slow = object(
            "gives-up",
            &[
                ("query", "with recursive c(x) as (select 1 union all select x + 1 from c where x < 200000000) select count(*) from c"),
                ("targetQueryValue", "1"),
                ("queryTimeout", "20s"),
            ],
        );
        let mut request = tonic::Request::new(metrics_request(&slow, ""));
        request.set_timeout(Duration::from_millis(300));
        let e = c.get_metrics(request).await.unwrap_err();
        // tonic's client reports its own timeout as CANCELLED ("Timeout expired").
        assert!(
            matches!(e.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded),
            "{e:?}"
        );
        let started = std::time::Instant::now();
        loop {
            let text = scrape(server.metrics_addr).await;
            if metric_value(&text, "orascale_grpc_requests_total", &["method=\"GetMetrics\"", "code=\"CANCELLED\""]) >= Some(1.0) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "not counted:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.stop().await;
    })
    .await;
}
