//! KEDA's call pattern against the real server over loopback gRPC, on a real SQLite file.
#![allow(deprecated)] // KEDA's int64 fields are deprecated in the proto but part of the contract.

use crate::support;

use std::time::Duration;

use support::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_pattern_fills_both_fields_and_matches_names_case_insensitively() {
    guard(LIMIT, async {
        let db = TestDb::new();
        db.set_queued(7);
        let server = start(vec![connection("jobs", &db.url())], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let obj = object(
            "worker",
            &[
                ("query", QUEUED),
                ("targetQueryValue", "2.5"),
                ("activationTargetQueryValue", "3"),
                ("metricName", "jobs-queued"),
                ("scalerAddress", "orascale.keda.svc:9090"),
            ],
        );

        // GetMetricSpec → GetMetrics → IsActive, each under KEDA's 3 s deadline.
        let spec = c
            .get_metric_spec(deadline(obj.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(spec.metric_specs.len(), 1);
        let s = &spec.metric_specs[0];
        assert_eq!(s.metric_name, "jobs-queued");
        assert_eq!(s.target_size_float, 2.5);
        assert_eq!(s.target_size, 3, "int64 target filled for KEDA < 2.17");

        for name in ["jobs-queued", "JOBS-QUEUED", "s0-jobs-queued", ""] {
            let m = c
                .get_metrics(deadline(metrics_request(&obj, name)))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .into_inner();
            assert_eq!(m.metric_values.len(), 1, "exactly one value");
            assert_eq!(m.metric_values[0].metric_value_float, 7.0);
            assert_eq!(m.metric_values[0].metric_value, 7);
            assert_eq!(m.metric_values[0].metric_name, "jobs-queued");
        }
        let err = c
            .get_metrics(deadline(metrics_request(&obj, "another-metric")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        assert!(
            c.is_active(deadline(obj.clone()))
                .await
                .unwrap()
                .into_inner()
                .result
        );

        // Activation is strict: value 3 with activation 3 is inactive.
        db.set_queued(3);
        let inactive = object(
            "worker",
            &[
                ("query", QUEUED),
                ("targetQueryValue", "2.5"),
                ("activationTargetQueryValue", "3"),
                ("pollInterval", "200ms"),
            ],
        );
        c.get_metrics(deadline(metrics_request(&inactive, "")))
            .await
            .unwrap();
        let value = c
            .get_metrics(deadline(metrics_request(&inactive, "")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(value.metric_values[0].metric_value_float, 3.0);
        assert!(
            !c.is_active(deadline(inactive))
                .await
                .unwrap()
                .into_inner()
                .result
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_metric_name_is_lowercase_and_stable_across_servers() {
    guard(LIMIT, async {
        let obj = object("a", &[("query", "select 1"), ("targetQueryValue", "1")]);
        let mut names = Vec::new();
        for _ in 0..2 {
            let server = start(vec![memory("mem")], engine()).await;
            let mut c = client(server.grpc_addr).await;
            let spec = c
                .get_metric_spec(deadline(obj.clone()))
                .await
                .unwrap()
                .into_inner();
            names.push(spec.metric_specs[0].metric_name.clone());
            server.stop().await;
        }
        assert_eq!(
            names[0], names[1],
            "every replica must answer for the same name"
        );
        assert!(
            names[0]
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_metadata_is_invalid_argument_naming_the_key_on_every_rpc() {
    guard(LIMIT, async {
        let server = start(vec![memory("a"), memory("b")], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("targetQueryValue", "1"), ("connection", "a")],
                "\"query\"",
            ),
            (
                &[("query", "select 1"), ("connection", "a")],
                "\"targetQueryValue\"",
            ),
            (
                &[
                    ("query", "select 1"),
                    ("targetQueryValue", "x"),
                    ("connection", "a"),
                ],
                "\"targetQueryValue\": value \"x\"",
            ),
            (
                &[("query", "select 1"), ("targetQueryValue", "1")],
                "\"connection\" is required",
            ),
            (
                &[
                    ("query", "select 1"),
                    ("targetQueryValue", "1"),
                    ("connection", "zzz"),
                ],
                "\"zzz\" is not a connection of this server; configured: a, b",
            ),
            (
                &[
                    ("query", "select 1"),
                    ("targetQueryValue", "1"),
                    ("connection", "a"),
                    ("pollingInterval", "5s"),
                ],
                "pollInterval; pollingInterval is a ScaledObject field",
            ),
            (
                &[
                    ("query", "select 1"),
                    ("targetQueryValue", "1"),
                    ("connection", "a"),
                    ("pollInterval", "5"),
                ],
                "\"pollInterval\": value \"5\"",
            ),
            (
                &[
                    ("query", "select 1"),
                    ("targetQueryValue", "1"),
                    ("connection", "a"),
                    ("pollInterval", "10ms"),
                ],
                "minimum poll interval",
            ),
            (
                &[
                    ("query", "delete from jobs"),
                    ("targetQueryValue", "1"),
                    ("connection", "a"),
                ],
                "\"query\"",
            ),
        ];
        for (meta, frag) in cases {
            let obj = object("bad", meta);
            let results = each_rpc(&mut c, &obj).await;
            for (method, r) in results {
                let err = r.expect_err(method);
                assert_eq!(err.code(), Code::InvalidArgument, "{method} {meta:?}");
                assert!(
                    err.message().contains(frag),
                    "{method}: {:?} lacks {frag:?}",
                    err.message()
                );
            }
        }
        let no_ref = orascale::grpc::proto::GetMetricsRequest {
            scaled_object_ref: None,
            metric_name: String::new(),
        };
        assert_eq!(
            c.get_metrics(deadline(no_ref)).await.unwrap_err().code(),
            Code::InvalidArgument
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_are_unavailable_spec_stays_ok_and_others_keep_working() {
    guard(LIMIT, async {
        let db = TestDb::new();
        db.set_queued(4);
        let before = db.dump();
        let server = start(vec![connection("jobs", &db.url())], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let good = object("good", &[("query", QUEUED), ("targetQueryValue", "1")]);
        assert_eq!(
            c.get_metrics(deadline(metrics_request(&good, "")))
                .await
                .unwrap()
                .into_inner()
                .metric_values[0]
                .metric_value_float,
            4.0
        );

        let broken = object(
            "broken",
            &[
                ("query", "select count(*) from missing_table"),
                ("targetQueryValue", "1"),
            ],
        );
        let spec = c.get_metric_spec(deadline(broken.clone())).await;
        assert!(spec.is_ok(), "GetMetricSpec never depends on the database");
        let err = c
            .get_metrics(deadline(metrics_request(&broken, "")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(
            err.message().contains("no such table: missing_table"),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains("select count(*) from missing_table"),
            "names the query: {}",
            err.message()
        );
        let err = c.is_active(deadline(broken.clone())).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::Unavailable,
            "never false in place of an error"
        );

        // Values that are not numbers, NULL and no rows are errors too, unless ignoreNullValues.
        let cases: &[(&str, &str, Option<f64>)] = &[
            ("select 'abc'", "false", None),
            ("select null", "false", None),
            ("select id from jobs where id < 0", "false", None),
            ("select null", "true", Some(0.0)),
            ("select id from jobs where id < 0", "true", Some(0.0)),
            ("select '12.5'", "false", Some(12.5)),
            ("select 2.25", "false", Some(2.25)),
        ];
        for (q, ignore, want) in cases {
            let obj = object(
                "v",
                &[
                    ("query", q),
                    ("targetQueryValue", "1"),
                    ("ignoreNullValues", ignore),
                ],
            );
            let got = c.get_metrics(deadline(metrics_request(&obj, ""))).await;
            match want {
                Some(v) => assert_eq!(
                    got.unwrap().into_inner().metric_values[0].metric_value_float,
                    *v,
                    "{q}"
                ),
                None => assert_eq!(got.unwrap_err().code(), Code::Unavailable, "{q}"),
            }
        }

        // A batch of hostile and broken inputs changes no row.
        for q in [
            "delete from jobs",
            "select 1; delete from jobs",
            "with x as (select 1) delete from jobs",
            "select count(*) from jobs; drop table jobs",
            "select * from jobs where 1=1; update secrets set v = 'gone'",
            "select load_extension('x')",
            "select writefile('x', 'y')",
        ] {
            let obj = object("hostile", &[("query", q), ("targetQueryValue", "1")]);
            let _ = c.get_metric_spec(deadline(obj.clone())).await;
            let r = c.get_metrics(deadline(metrics_request(&obj, ""))).await;
            assert!(r.is_err(), "{q} must not produce a value");
        }
        assert_eq!(db.dump(), before, "the database is unchanged");

        // The good ScaledObject is undisturbed.
        assert!(
            c.is_active(deadline(good.clone()))
                .await
                .unwrap()
                .into_inner()
                .result
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_poll_serves_the_last_good_value_until_stale_then_unavailable() {
    guard(LIMIT, async {
        let db = TestDb::new();
        db.set_queued(5);
        let mut e = engine();
        e.stale_after_polls = 3;
        // Its own connection name: the metrics recorder is shared by every test of this binary.
        let server = start(vec![connection("stale", &db.url())], e).await;
        let mut c = client(server.grpc_addr).await;
        let obj = object(
            "s",
            &[
                ("query", QUEUED),
                ("targetQueryValue", "1"),
                ("pollInterval", "300ms"),
            ],
        );
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&obj, "")))
                    .await
                    .unwrap()
            ),
            5.0
        );

        // Break the table under the scaler: the next polls fail.
        let conn = rusqlite::Connection::open(&db.path).unwrap();
        conn.execute("alter table jobs rename to jobs_gone", [])
            .unwrap();
        // Wait for the first failed poll (counted on /metrics)…
        let failed = |text: &str| {
            metric_value(
                text,
                "orascale_polls_total",
                &["connection=\"stale\"", "result=\"error\""],
            )
            .unwrap_or(0.0)
        };
        let started = std::time::Instant::now();
        while failed(&scrape(server.metrics_addr).await) < 1.0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no poll failed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // …then, within the 900 ms staleness limit, the last good value is still served, and
        // only after it the error is reported.
        let mut stale_served = 0;
        let mut saw_unavailable = false;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            match c.get_metrics(deadline(metrics_request(&obj, ""))).await {
                Ok(r) => {
                    assert_eq!(value(r), 5.0, "the last good value, never 0");
                    stale_served += 1;
                }
                Err(s) => {
                    assert_eq!(s.code(), Code::Unavailable);
                    assert!(
                        s.message().contains("no such table: jobs"),
                        "{}",
                        s.message()
                    );
                    assert!(s.message().contains("staleness limit"), "{}", s.message());
                    saw_unavailable = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            stale_served >= 1,
            "a failed poll first serves the last good value while it is fresh enough"
        );
        assert!(
            saw_unavailable,
            "after the staleness limit the error is reported"
        );
        conn.execute("alter table jobs_gone rename to jobs", [])
            .unwrap();
        let started = std::time::Instant::now();
        loop {
            if let Ok(r) = c.get_metrics(deadline(metrics_request(&obj, ""))).await {
                assert_eq!(value(r), 5.0);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "recovers after the table is back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer() {
    guard(LIMIT, async {
        let server = start(vec![memory("mem")], engine()).await;
        let addr = server.metrics_addr;
        let (status, body) = tokio::task::spawn_blocking(move || http_get(addr, "/healthz"))
            .await
            .unwrap();
        assert_eq!((status, body.trim()), (200, "ok"));
        let (status, _) = tokio::task::spawn_blocking(move || http_get(addr, "/readyz"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let (status, body) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("orascale_build_info"), "{body}");

        // gRPC health for Kubernetes probes.
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        for service in ["", "liveness", "readiness"] {
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                r.status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                "{service:?}"
            );
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parsed_trigger_never_hides_a_changed_map() {
    guard(LIMIT, async {
        let db = TestDb::new();
        db.set_queued(4);
        let server = start(vec![connection("jobs", &db.url())], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let call = |meta: Vec<(&'static str, &'static str)>| object("same-so", &meta);
        let first = call(vec![("query", QUEUED), ("targetQueryValue", "2")]);
        for _ in 0..3 {
            assert_eq!(
                value(
                    c.get_metrics(deadline(metrics_request(&first, "")))
                        .await
                        .unwrap()
                ),
                4.0
            );
        }
        // KEDA sends the current map every call: an edit shows at once, errors included.
        let bad = call(vec![("query", QUEUED), ("targetQueryValue", "x")]);
        for _ in 0..2 {
            let e = c.get_metric_spec(deadline(bad.clone())).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(
                e.message().contains("targetQueryValue") && e.message().contains("\"x\""),
                "{}",
                e.message()
            );
        }
        let edited = call(vec![
            ("query", "select count(*) + 100 from jobs"),
            ("targetQueryValue", "3"),
        ]);
        let spec = c
            .get_metric_spec(deadline(edited.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(spec.metric_specs[0].target_size_float, 3.0);
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&edited, "")))
                    .await
                    .unwrap()
            ),
            104.0
        );
        // And back: the first map still answers as before.
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&first, "")))
                    .await
                    .unwrap()
            ),
            4.0
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_metric_name_starts_no_poller() {
    let db = TestDb::new();
    db.set_queued(4);
    let dir = tempfile::tempdir().unwrap();
    // The real binary: its metrics are its own, not shared with the other tests here.
    let server = Binary::start(
        &[
            "--connection",
            &format!("jobs={}", db.url()),
            "--min-poll-interval",
            "100ms",
        ],
        dir.path(),
    );
    let (addr, metrics) = (server.grpc, server.metrics);
    guard(LIMIT, async move {
        let mut c = client(addr).await;
        let obj = object(
            "w",
            &[
                ("query", QUEUED),
                ("targetQueryValue", "1"),
                ("metricName", "jobs"),
                ("pollInterval", "100ms"),
            ],
        );
        let pollers = |text: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix("orascale_pollers "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        for _ in 0..2 {
            // KEDA retries a failed call once.
            let err = c
                .get_metrics(deadline(metrics_request(&obj, "not-jobs")))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
            assert!(err.message().contains("\"not-jobs\""), "{}", err.message());
        }
        // Refused before the registry: no poller, and so no poll ever.
        let text = scrape(metrics).await;
        assert_eq!(pollers(&text), Some(0.0), "{text}");
        assert_eq!(
            metric_value(&text, "orascale_polls_total", &[]),
            None,
            "{text}"
        );
        // The right name starts the trigger's poller, which these counts do see.
        let m = c
            .get_metrics(deadline(metrics_request(&obj, "jobs")))
            .await
            .unwrap();
        assert_eq!(value(m), 4.0);
        let text = scrape(metrics).await;
        assert_eq!(pollers(&text), Some(1.0), "{text}");
        assert!(metric_value(&text, "orascale_polls_total", &[]).unwrap_or(0.0) >= 1.0);
    })
    .await;
}
