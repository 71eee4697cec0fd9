//! One number per query: a query that returns more than one row, or more than one column, is an
//! error on every source, never its first cell read as the metric — and detecting it never reads
//! the rest of the result. Against the real server over gRPC (SQLite and a real PostgreSQL) and
//! the real binary's `check`.

use crate::support;

use std::time::Duration;

use support::pg::{self, Pg, SCALER_USER};
use support::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(120);

/// The advice every many-rows error carries.
fn assert_advice(message: &str, query: &str, first_row: &str) {
    for part in [
        "more than one row",
        "select count(*) from (",
        "an aggregate",
        first_row,
        query,
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

/// The advice every many-columns error carries, naming the columns seen.
fn assert_columns(message: &str, query: &str, count: usize, names: &[&str]) {
    assert!(
        message.contains(&format!("the query returns {count} columns (")),
        "{message}"
    );
    for name in names {
        let quoted = format!("{name:?}");
        assert!(
            message.contains(&quoted),
            "{quoted} missing from: {message}"
        );
    }
    for part in ["one column", "select count(*) from", "an aggregate", query] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    assert!(!message.contains("more than one row"), "{message}");
}

/// Queries of more than one column are UNAVAILABLE naming the columns, whatever their rows
/// (one, many, none), for GetMetrics and IsActive alike, with or without `ignoreNullValues`.
async fn expect_many_columns(
    c: &mut orascale::grpc::proto::external_scaler_client::ExternalScalerClient<
        tonic::transport::Channel,
    >,
    cases: &[(&str, &[&str])],
) {
    for (q, names) in cases {
        for ignore in ["false", "true"] {
            let obj = object(
                "columns",
                &[
                    ("query", q),
                    ("targetQueryValue", "5"),
                    ("ignoreNullValues", ignore),
                ],
            );
            let e = c
                .get_metrics(deadline(metrics_request(&obj, "")))
                .await
                .expect_err("many columns is an error");
            assert_eq!(e.code(), Code::Unavailable, "{q}: {e:?}");
            assert_columns(e.message(), q, names.len(), names);
            let e = c.is_active(deadline(obj.clone())).await.unwrap_err();
            assert_eq!(e.code(), Code::Unavailable, "IsActive too: {e:?}");
        }
    }
}

/// Each one-row query answers its value.
async fn expect_values(
    c: &mut orascale::grpc::proto::external_scaler_client::ExternalScalerClient<
        tonic::transport::Channel,
    >,
    cases: &[(&str, f64)],
) {
    for (q, want) in cases {
        let obj = object("ok", &[("query", q), ("targetQueryValue", "5")]);
        let got = c.get_metrics(deadline(metrics_request(&obj, ""))).await;
        assert_eq!(
            value(got.unwrap_or_else(|e| panic!("{q}: {e}"))),
            *want,
            "{q}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_row_or_an_error_that_says_what_to_write() {
    guard(LIMIT, async {
        let db = TestDb::new();
        db.set_queued(5);
        let server = start(vec![connection("jobs", &db.url())], engine()).await;
        let mut c = client(server.grpc_addr).await;

        // The demo walkthrough's query and the other one-row shapes keep working.
        let cases = [
            (QUEUED, 5.0),
            ("select max(id) from jobs", 5.0),
            ("select id from jobs order by id limit 1", 1.0),
            (
                "select count(*) from (select * from jobs where status = 'queued')",
                5.0,
            ),
        ];
        expect_values(&mut c, &cases).await;

        // The shapes from the issue: an id would have been read as the metric.
        for q in [
            "select id from jobs where status = 'queued'",
            "select id from jobs",
        ] {
            for ignore in ["false", "true"] {
                let obj = object(
                    "many",
                    &[
                        ("query", q),
                        ("targetQueryValue", "5"),
                        ("ignoreNullValues", ignore),
                    ],
                );
                let e = c
                    .get_metrics(deadline(metrics_request(&obj, "")))
                    .await
                    .expect_err("many rows is an error");
                assert_eq!(e.code(), Code::Unavailable, "{q}: {e:?}");
                assert_advice(e.message(), q, "limit 1");
                let e = c.is_active(deadline(obj.clone())).await.unwrap_err();
                assert_eq!(e.code(), Code::Unavailable, "IsActive too: {e:?}");
            }
        }

        // One row and one column: `select *` over exactly one matching row used to answer its
        // id (issue 18); now it is the same clear error as over many rows, or none.
        let jobs_columns: &[&str] = &["id", "status"];
        expect_many_columns(
            &mut c,
            &[
                ("select * from jobs where id = 3", jobs_columns),
                ("select * from jobs where status = 'queued'", jobs_columns),
                ("select id, status from jobs where id = 0", jobs_columns),
                (
                    "select count(*), max(id) from jobs",
                    &["count(*)", "max(id)"],
                ),
            ],
        )
        .await;

        // The other ScaledObjects on the connection are untouched.
        let good = object("good", &[("query", QUEUED), ("targetQueryValue", "5")]);
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&good, "")))
                    .await
                    .unwrap()
            ),
            5.0
        );
        server.stop().await;
    })
    .await;
}

#[test]
fn check_reports_many_rows_with_the_same_advice() {
    let db = TestDb::new();
    db.set_queued(3);
    let jobs = format!("jobs={}", db.url());
    let (code, out, err) = run_bin(&[
        "check",
        "--connection",
        &jobs,
        "--query",
        "select id from jobs",
    ]);
    assert_eq!(code, 1, "a many-rows query fails the check: {out}{err}");
    assert!(out.contains("FAILED"), "{out}");
    assert!(out.contains("more than one row"), "{out}");
    assert!(out.contains("select count(*) from ("), "{out}");
    assert!(out.contains("limit 1"), "{out}");

    // One matching row of two columns: check refuses it like the server, naming the columns.
    let (code, out, err) = run_bin(&[
        "check",
        "--connection",
        &jobs,
        "--query",
        "select * from jobs where id = 2",
    ]);
    assert_eq!(code, 1, "a many-columns query fails the check: {out}{err}");
    assert!(out.contains("FAILED"), "{out}");
    assert!(
        out.contains(r#"the query returns 2 columns ("id", "status")"#),
        "{out}"
    );

    let (code, out, err) = run_bin(&[
        "check",
        "--connection",
        &jobs,
        "--query",
        "select id from jobs order by id desc limit 1",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines().nth(1).unwrap().trim_end().ends_with(" 3"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_many_rows_is_an_error_and_the_rest_is_never_read() {
    let Some(pg) = Pg::start_or_skip("postgres_many_rows_is_an_error_and_the_rest_is_never_read")
    else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        pg::set_queued(&admin, 5).await;
        // A million rows; row 1000 divides by zero if anyone ever evaluates it.
        admin
            .batch_execute(&format!(
                "create table big as select g as id from generate_series(1, 1000000) g;
                 grant select on big to {SCALER_USER};"
            ))
            .await
            .unwrap();
        let server = start(vec![connection("pg", &pg.scaler_url())], engine()).await;
        let mut c = client(server.grpc_addr).await;

        let cases = [
            (QUEUED, 5.0),
            ("select id from jobs order by id limit 1", 1.0),
            ("select count(*) from (select * from big) b", 1e6),
        ];
        expect_values(&mut c, &cases).await;
        for q in [
            "select id from jobs where status = 'queued'",
            "select id from jobs",
            "select * from big",
            // Evaluated past the second row, this would fail with "division by zero" instead.
            "select 1 / (1000 - id) from big",
        ] {
            let obj = object(
                "many",
                &[
                    ("query", q),
                    ("targetQueryValue", "5"),
                    ("queryTimeout", "20s"),
                ],
            );
            let e = c
                .get_metrics(deadline(metrics_request(&obj, "")))
                .await
                .expect_err("many rows is an error");
            assert_eq!(e.code(), Code::Unavailable, "{q}: {e:?}");
            assert_advice(e.message(), q, "limit 1");
            assert!(!e.message().contains("division by zero"), "{}", e.message());
        }
        // One row and one column: refused from the prepared statement's description, before it
        // runs (row 1000 would divide by zero), for one row, many rows and none alike.
        let jobs_columns: &[&str] = &["id", "status"];
        expect_many_columns(
            &mut c,
            &[
                ("select * from jobs where id = 3", jobs_columns),
                ("select * from jobs where status = 'queued'", jobs_columns),
                ("select id, status from jobs where id = 0", jobs_columns),
                (
                    "select id, 1 / (1000 - id) as ratio from big",
                    &["id", "ratio"],
                ),
                ("select count(*), max(id) from jobs", &["count", "max"]),
            ],
        )
        .await;
        // The session went back to the pool clean: no transaction left open, the next query works.
        let good = object("good", &[("query", QUEUED), ("targetQueryValue", "5")]);
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&good, "")))
                    .await
                    .unwrap()
            ),
            5.0
        );
        // The rollback is sent when the poll ends, not awaited: allow it a moment to land.
        let mut open = Vec::new();
        for _ in 0..50 {
            open = pg::scaler_sessions(&admin)
                .await
                .into_iter()
                .filter(|(state, _)| state.starts_with("idle in transaction"))
                .collect();
            if open.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(open.is_empty(), "sessions left in a transaction: {open:?}");
        assert_eq!(
            admin
                .query_one("select count(*) from big", &[])
                .await
                .unwrap()
                .get::<_, i64>(0),
            1_000_000,
            "nothing changed"
        );
        server.stop().await;
    })
    .await;
}
