//! The PostgreSQL source against a real server: conversions, read-only sessions, passwords.

use crate::support;

use std::time::Duration;

use support::pg::{self, Pg};
use support::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_numeric_type_converts_without_casts() {
    let Some(pg) = Pg::start_or_skip("every_numeric_type_converts_without_casts") else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        pg::set_queued(&admin, 3).await;
        let server = start(vec![connection("pgtypes", &pg.scaler_url())], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let cases: &[(&str, Option<f64>)] = &[
            ("select count(*) from jobs", Some(3.0)), // int8
            ("select 7::int2", Some(7.0)),
            ("select 7::int4", Some(7.0)),
            ("select 9000000000::int8", Some(9e9)),
            ("select 1.5::float4", Some(1.5)),
            ("select 2.25::float8", Some(2.25)),
            ("select 12345.678::numeric", Some(12345.678)),
            ("select sum(id)::numeric / 2 from jobs", Some(3.0)), // numeric from an aggregate
            ("select -0.0012::numeric", Some(-0.0012)),
            ("select '42'", Some(42.0)), // unknown/text literal
            ("select ' 3.5 '::text", Some(3.5)),
            ("select '7'::varchar", Some(7.0)),
            ("select 'abc'::text", None),
            ("select true", None),
            ("select 'NaN'::numeric", None),
            ("select null::int", None),
            ("select id from jobs where id < 0", None),
        ];
        for (q, want) in cases {
            let obj = object("t", &[("query", q), ("targetQueryValue", "1")]);
            let got = c.get_metrics(deadline(metrics_request(&obj, ""))).await;
            match want {
                Some(v) => assert_eq!(value(got.unwrap_or_else(|e| panic!("{q}: {e}"))), *v, "{q}"),
                None => {
                    let e = got.unwrap_err();
                    assert_eq!(e.code(), Code::Unavailable, "{q}: {e:?}");
                    assert!(
                        e.message().contains(q),
                        "the error names the query: {}",
                        e.message()
                    );
                }
            }
        }
        let obj = object(
            "t",
            &[
                ("query", "select null::int"),
                ("targetQueryValue", "1"),
                ("ignoreNullValues", "true"),
            ],
        );
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&obj, "")))
                    .await
                    .unwrap()
            ),
            0.0
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_read_only_and_nothing_changes() {
    let Some(pg) = Pg::start_or_skip("sessions_are_read_only_and_nothing_changes") else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        pg::set_queued(&admin, 2).await;
        // Even a role that may write cannot through orascale: the session is read-only.
        admin
            .batch_execute(&format!("grant all on jobs to {}", pg::SCALER_USER))
            .await
            .unwrap();
        let server = start(vec![connection("pgro", &pg.scaler_url())], engine()).await;
        let mut c = client(server.grpc_addr).await;
        // The guard stops what it can see…
        for q in [
            "with d as (delete from jobs returning 1) select count(*) from d",
            "select count(*) from jobs; delete from jobs",
            "select 1 from jobs for update",
        ] {
            let obj = object("h", &[("query", q), ("targetQueryValue", "1")]);
            let e = c.get_metrics(deadline(metrics_request(&obj, ""))).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{q}");
        }
        // …and the read-only session stops what it cannot: writes hidden in functions.
        admin
            .batch_execute(&format!(
                "create function purge() returns bigint language sql as 'delete from jobs returning 1';
                 grant execute on function purge() to {0};
                 grant usage, update on sequence jobs_id_seq to {0};",
                pg::SCALER_USER
            ))
            .await
            .unwrap();
        for q in ["select purge()", "select nextval('jobs_id_seq')"] {
            let obj = object("h", &[("query", q), ("targetQueryValue", "1")]);
            let e = c.get_metrics(deadline(metrics_request(&obj, ""))).await.unwrap_err();
            assert_eq!(e.code(), Code::Unavailable, "{q}");
            assert!(e.message().contains("read-only transaction"), "{q}: {}", e.message());
        }
        // And a table the role may not read stays unread.
        let obj = object("h", &[("query", "select count(*) from secrets"), ("targetQueryValue", "1")]);
        let e = c.get_metrics(deadline(metrics_request(&obj, ""))).await.unwrap_err();
        assert!(e.message().contains("permission denied"), "{}", e.message());
        let n: i64 = admin
            .query_one("select count(*) from jobs", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2, "no row changed");
        let seq: i64 = admin.query_one("select last_value from jobs_id_seq", &[]).await.unwrap().get(0);
        assert_eq!(seq, 2, "the sequence did not move");
        let v: String = admin
            .query_one("select v from secrets", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, "keep me");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_from_file_is_reread_for_new_sessions_and_never_shown() {
    let Some(pg) =
        Pg::start_or_skip("password_from_file_is_reread_for_new_sessions_and_never_shown")
    else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        pg::set_queued(&admin, 1).await;
        let pwfile = pg.dir.path().join("scaler-password");
        std::fs::write(&pwfile, format!("{}\n", pg::SCALER_PASSWORD)).unwrap();
        let mut conn = connection("pgfile", &pg.url(pg::SCALER_USER, None));
        conn.password_file = Some(pwfile.clone());
        let server = start(vec![conn], engine()).await;
        let mut c = client(server.grpc_addr).await;
        let obj = object(
            "p",
            &[
                ("query", "select count(*) from jobs"),
                ("targetQueryValue", "1"),
                ("pollInterval", "200ms"),
            ],
        );
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&obj, "")))
                    .await
                    .unwrap()
            ),
            1.0
        );

        // Rotate: new password in the database and the file; kill the session so a new one is made.
        let rotated = "R0tated-secret-value";
        admin
            .batch_execute(&format!(
                "alter role {} password '{rotated}'",
                pg::SCALER_USER
            ))
            .await
            .unwrap();
        std::fs::write(&pwfile, rotated).unwrap();
        admin
            .batch_execute(&format!(
                "select pg_terminate_backend(pid) from pg_stat_activity where usename = '{}'",
                pg::SCALER_USER
            ))
            .await
            .unwrap();
        pg::set_queued(&admin, 4).await;
        let started = std::time::Instant::now();
        loop {
            if let Ok(r) = c.get_metrics(deadline(metrics_request(&obj, ""))).await
                && value(r) == 4.0
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the rotated password is picked up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A wrong password: an error that names the connection, never the password.
        std::fs::write(&pwfile, "wrong-password-value").unwrap();
        admin
            .batch_execute(&format!(
                "select pg_terminate_backend(pid) from pg_stat_activity where usename = '{}'",
                pg::SCALER_USER
            ))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let err = loop {
            match c.get_metrics(deadline(metrics_request(&obj, ""))).await {
                Err(e) => break e,
                Ok(_) => {
                    assert!(
                        started.elapsed() < Duration::from_secs(20),
                        "the wrong password is reported"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(err.code(), Code::Unavailable);
        assert!(
            err.message().contains("password authentication failed"),
            "{}",
            err.message()
        );
        for secret in [pg::SCALER_PASSWORD, rotated, "wrong-password-value"] {
            assert!(!err.message().contains(secret), "{}", err.message());
        }
        server.stop().await;
    })
    .await;
}

#[test]
fn password_from_env_and_no_secret_in_logs_of_the_real_binary() {
    let Some(pg) = Pg::start_or_skip("password_from_env_and_no_secret_in_logs_of_the_real_binary")
    else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = rt.block_on(pg.setup());
    rt.block_on(pg::set_queued(&admin, 5));
    let dir = tempfile::tempdir().unwrap();
    // The password only in ORASCALE_<NAME>_PASSWORD; the URL has none.
    let server = Binary::start_with_env(
        &[
            "--connection",
            &format!("orders-db={}", pg.url(pg::SCALER_USER, None)),
        ],
        dir.path(),
        &[
            ("ORASCALE_ORDERS_DB_PASSWORD", pg::SCALER_PASSWORD),
            ("RUST_LOG", "debug"),
        ],
    );
    let addr = server.grpc.to_string();
    let out = std::process::Command::new(bin())
        .args([
            "probe",
            "--addr",
            &addr,
            "-m",
            "query=select count(*) from jobs",
            "-m",
            "targetQueryValue=1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("metricValueFloat=5"), "{stdout}");
    let metrics = http_get(server.metrics, "/metrics").1;
    let log = server.log_text();
    assert!(!log.contains(pg::SCALER_PASSWORD), "password in the log");
    assert!(
        !metrics.contains(pg::SCALER_PASSWORD),
        "password in metrics"
    );
}
