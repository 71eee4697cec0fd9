//! What a ScaledObject may do, from the outside: the SQL guard over gRPC, connections scoped to
//! namespaces, and the limits that keep a flood of ScaledObjects from exhausting the server.

use crate::support;

use std::time::Duration;

use support::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_guard_refuses_with_invalid_argument_and_changes_nothing() {
    guard(LIMIT, async {
        let db = TestDb::new();
        db.set_queued(2);
        let before = db.dump();
        let server = start(vec![connection("jobs", &db.url())], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let cases = [
            ("delete from jobs", "must be a SELECT"),
            ("select 1; delete from jobs", "exactly one statement"),
            (
                "select count(*) from jobs /* ; */ ; drop table jobs",
                "exactly one statement",
            ),
            (
                "with d as (delete from jobs returning 1) select count(*) from d",
                "only reading",
            ),
            ("select * into copy from jobs", "INTO"),
            ("select count(*) from jobs for update", "row locks"),
            (
                "select count(*) from jobs where load_extension('/tmp/x.so') is null",
                "the network) are not allowed (load_extension)",
            ),
        ];
        for (q, rule) in cases {
            let obj = object("h", &[("query", q), ("targetQueryValue", "1")]);
            for (method, r) in each_rpc(&mut c, &obj).await {
                let e = r.expect_err(q);
                assert_eq!(e.code(), Code::InvalidArgument, "{method} {q}");
                assert!(
                    e.message().contains("SQL guard") && e.message().contains(rule),
                    "{method} {q}: {}",
                    e.message()
                );
            }
        }
        // Credentials in metadata are refused unless the server allows them (it does not here).
        let creds = object(
            "c",
            &[
                ("query", "select 1"),
                ("targetQueryValue", "1"),
                ("passwordFromEnv", "hunter2"),
            ],
        );
        let e = c.get_metric_spec(deadline(creds)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("--allow-metadata-credentials")
                && !e.message().contains("hunter2"),
            "{}",
            e.message()
        );
        // A string literal or comment mentioning DML is fine.
        let ok = object(
            "ok",
            &[
                (
                    "query",
                    "select count(*) from jobs where status <> 'delete; drop' -- update",
                ),
                ("targetQueryValue", "1"),
            ],
        );
        let v = c
            .get_metrics(deadline(metrics_request(&ok, "")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.metric_values[0].metric_value_float, 2.0);
        assert_eq!(db.dump(), before);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_scoped_to_namespaces_and_never_reveal_their_url() {
    guard(LIMIT, async {
        let db = TestDb::new();
        db.set_queued(1);
        // The URL carries something secret-looking; it must never be shown.
        let secret_dir = db.dir.path().join("s3cret-path");
        std::fs::create_dir(&secret_dir).unwrap();
        std::fs::copy(&db.path, secret_dir.join("jobs.db")).unwrap();
        let mut orders = connection(
            "orders",
            &format!("sqlite:{}", secret_dir.join("jobs.db").display()),
        );
        orders.namespaces = Some(vec!["shop".into(), "team-*".into()]);
        let open = memory("open");
        let server = start(vec![orders, open], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let meta = [
            ("query", "select count(*) from jobs"),
            ("targetQueryValue", "1"),
            ("connection", "orders"),
        ];
        let in_ns = |ns: &str| {
            let mut o = object("w", &meta);
            o.namespace = ns.to_string();
            o
        };
        for ns in ["shop", "team-a"] {
            let v = c
                .get_metrics(deadline(metrics_request(&in_ns(ns), "")))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(v.metric_values[0].metric_value_float, 1.0, "{ns}");
        }
        for ns in ["default", "shopping", "kube-system"] {
            let obj = in_ns(ns);
            for (method, r) in each_rpc(&mut c, &obj).await {
                let e = r.expect_err(method);
                assert_eq!(e.code(), Code::PermissionDenied, "{method} {ns}");
                assert_eq!(
                    e.message(),
                    format!("connection \"orders\" may not be used from namespace \"{ns}\"")
                );
                assert!(!e.message().contains("s3cret"), "{}", e.message());
            }
        }
        // An unrestricted connection serves every namespace.
        let mut o = object(
            "w",
            &[
                ("query", "select 9"),
                ("targetQueryValue", "1"),
                ("connection", "open"),
            ],
        );
        o.namespace = "anything".into();
        assert!(
            c.get_metrics(deadline(metrics_request(&o, "")))
                .await
                .is_ok()
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_scaled_objects_is_bounded() {
    guard(LIMIT, async {
        let db = TestDb::new();
        db.set_queued(1);
        let mut e = engine();
        e.limits.max_pollers = 50;
        e.limits.max_pollers_per_namespace = 30;
        let mut conn = connection("flood", &db.url());
        conn.pool_size = 2;
        let server = start(vec![conn], e).await;
        let c = client(server.grpc_addr).await;
        // 400 distinct triggers from two namespaces (three in four from "a"), all at once.
        let calls = (0..400).map(|i| {
            let mut c = c.clone();
            async move {
                let mut o = object(
                    &format!("so-{i}"),
                    &[
                        ("query", &format!("select count(*) + {i} - {i} from jobs")),
                        ("targetQueryValue", "1"),
                    ],
                );
                o.namespace = if i % 4 == 0 { "b".into() } else { "a".into() };
                c.get_metrics(deadline(metrics_request(&o, "")))
                    .await
                    .map(|_| ())
                    .map_err(|s| (s.code(), s.message().to_string()))
            }
        });
        let results = futures::future::join_all(calls).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let exhausted: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            exhausted
                .iter()
                .all(|(code, _)| *code == Code::ResourceExhausted),
            "{exhausted:?}"
        );
        assert!(
            exhausted
                .iter()
                .any(|(_, m)| m.contains("--max-pollers-per-namespace 30")),
            "per-namespace limit named"
        );
        // Each namespace is capped at 30, the server at 50.
        assert_eq!(ok, 50, "{ok} pollers created");
        let text = tokio::task::spawn_blocking({
            let addr = server.metrics_addr;
            move || http_get(addr, "/metrics").1
        })
        .await
        .unwrap();
        let pollers = text
            .lines()
            .filter(|l| l.starts_with("orascale_poller_consecutive_failures{"))
            .count();
        assert_eq!(pollers, 50);
        // The gauge counts connections really open; one goes back to the idle list before its
        // slot frees, so it can never read more than the pool (the deterministic proof is
        // source::sqlite's open_connections_never_exceed_the_pool).
        let sessions =
            metric_value(&text, "orascale_pool_sessions", &["connection=\"flood\""]).unwrap();
        let max = metric_value(
            &text,
            "orascale_pool_max_sessions",
            &["connection=\"flood\""],
        )
        .unwrap();
        assert_eq!(max, 2.0);
        assert!(
            sessions <= max,
            "database sessions bounded by the pool: {sessions} of {max}"
        );
        // The pollers that exist keep working; an existing trigger is still served.
        let mut c2 = c.clone();
        let mut o = object(
            "so-0",
            &[
                ("query", "select count(*) + 0 - 0 from jobs"),
                ("targetQueryValue", "1"),
            ],
        );
        o.namespace = "a".into();
        assert!(
            c2.get_metrics(deadline(metrics_request(&o, "")))
                .await
                .is_ok()
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_are_bounded() {
    guard(LIMIT, async {
        let mut e = engine();
        e.limits.max_streams = 3;
        let server = start(vec![memory("mem")], e).await;
        let mut c = client(server.grpc_addr).await;
        let obj = object("s", &[("query", "select 1"), ("targetQueryValue", "1")]);
        let mut open = Vec::new();
        for _ in 0..3 {
            open.push(c.stream_is_active(obj.clone()).await.unwrap().into_inner());
        }
        let e = c.stream_is_active(obj.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("--max-streams"), "{}", e.message());
        // Closing one frees its slot.
        drop(open.pop());
        let started = std::time::Instant::now();
        loop {
            match c.stream_is_active(obj.clone()).await {
                Ok(s) => {
                    open.push(s.into_inner());
                    break;
                }
                Err(e) => assert_eq!(e.code(), Code::ResourceExhausted),
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the slot is freed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.stop().await;
    })
    .await;
}
