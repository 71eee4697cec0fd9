//! Per-ScaledObject credentials on a real PostgreSQL server: a trigger brings a user AND a
//! password, or neither; the server's password is never combined with another user, a metadata
//! password is never tried against the server's own account, and a malformed
//! `connectionFromEnv` is bad metadata (INVALID_ARGUMENT), not an outage.
//!
//! The server runs without TLS here: `--allow-metadata-credentials` requires TLS when the
//! configuration is loaded (tested in tests/tls.rs and src/config), and these rules are the same
//! with or without it.

use crate::support;

use std::time::Duration;

use support::pg::{self, Pg, SCALER_PASSWORD, SCALER_USER};
use support::*;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(90);
const BOB_PASSWORD: &str = "Bob-Own-Pw-42";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_credentials_never_borrow_or_probe_the_servers() {
    let Some(pg) = Pg::start_or_skip("metadata_credentials_never_borrow_or_probe_the_servers")
    else {
        return;
    };
    guard(LIMIT, async {
        let admin = pg.setup().await;
        pg::set_queued(&admin, 4).await;
        admin
            .batch_execute(&format!(
                "create role bob login password '{BOB_PASSWORD}'; grant select on jobs to bob;"
            ))
            .await
            .unwrap();
        let mut config = config(vec![connection("orders", &pg.scaler_url())], engine());
        config.allow_metadata_credentials = true;
        let server = orascale::app::start(config).await.unwrap();
        let mut c = client(server.grpc_addr).await;
        let q = ("query", "select count(*) from jobs");
        let t = ("targetQueryValue", "1");
        let orders = ("connection", "orders");

        // Both calls KEDA makes answer INVALID_ARGUMENT naming the missing key.
        let refused = |key: &'static str, fragment: &'static str| {
            move |e: tonic::Status| {
                assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
                assert!(e.message().contains(&format!("{key:?}")), "{}", e.message());
                assert!(e.message().contains(fragment), "{}", e.message());
                assert!(!e.message().contains(SCALER_PASSWORD));
            }
        };
        // userFromEnv alone (a missing Secret for the password): never the server's password.
        let bob_alone = object("bob-alone", &[q, t, orders, ("userFromEnv", "bob")]);
        refused("passwordFromEnv", "never used with another user")(
            c.get_metric_spec(deadline(bob_alone.clone()))
                .await
                .unwrap_err(),
        );
        refused("passwordFromEnv", "never used with another user")(
            c.get_metrics(deadline(metrics_request(&bob_alone, "")))
                .await
                .unwrap_err(),
        );
        // passwordFromEnv alone, 25 times with 25 guesses: none reaches the server's account.
        for i in 0..25 {
            let guess = format!("guess-{i}");
            let o = object(
                &format!("guess-{i}"),
                &[q, t, orders, ("passwordFromEnv", &guess)],
            );
            refused("userFromEnv", "never tried against the server's own user")(
                c.get_metrics(deadline(metrics_request(&o, "")))
                    .await
                    .unwrap_err(),
            );
        }
        // The server's own user with a guess: refused, whatever the password.
        for pw in ["wrong", SCALER_PASSWORD] {
            let o = object(
                "as-server",
                &[
                    q,
                    t,
                    orders,
                    ("userFromEnv", SCALER_USER),
                    ("passwordFromEnv", pw),
                ],
            );
            refused("userFromEnv", "user of this server's connection")(
                c.get_metrics(deadline(metrics_request(&o, "")))
                    .await
                    .unwrap_err(),
            );
        }
        // The server's user through connectionFromEnv, in the URL or as a parameter: refused
        // too, as is a Unix socket on the scaler's host (local trust authentication).
        let port = pg.port;
        for url in [
            format!("postgres://{SCALER_USER}:guess-u@127.0.0.1:{port}/postgres?sslmode=disable"),
            format!("postgres://bob@127.0.0.1:{port}/postgres?user={SCALER_USER}&password=guess-p&sslmode=disable"),
        ] {
            let o = object("via-url", &[q, t, ("connectionFromEnv", &url)]);
            refused("userFromEnv", "user of this server's connection")(
                c.get_metrics(deadline(metrics_request(&o, ""))).await.unwrap_err(),
            );
        }
        let socket = format!(
            "postgres://bob:{BOB_PASSWORD}@localhost/postgres?host={}&port={port}",
            pg.dir.path().display()
        );
        let o = object("via-socket", &[q, t, ("connectionFromEnv", &socket)]);
        refused("connectionFromEnv", "Unix socket")(
            c.get_metric_spec(deadline(o)).await.unwrap_err(),
        );
        // A libpq key=value string is not a URL, and is never echoed.
        let kv = object(
            "kv",
            &[q, t, ("connectionFromEnv", "host=127.0.0.1 user=bob password=Hidden-2 dbname=x")],
        );
        let e = c.get_metric_spec(deadline(kv)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(!e.message().contains("Hidden-2"), "{}", e.message());

        // A malformed connectionFromEnv is bad metadata, and the URL is never echoed.
        let broken = object(
            "broken-url",
            &[
                q,
                t,
                (
                    "connectionFromEnv",
                    "postgres://bob:Hidden-1@127.0.0.1:notaport/postgres",
                ),
            ],
        );
        let e = c.get_metric_spec(deadline(broken)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(
            e.message().contains("\"connectionFromEnv\""),
            "{}",
            e.message()
        );
        assert!(!e.message().contains("Hidden-1") && !e.message().contains("notaport"));

        // Both keys: bob's own pool, as bob.
        let bob = object(
            "bob",
            &[
                q,
                t,
                orders,
                ("userFromEnv", "bob"),
                ("passwordFromEnv", BOB_PASSWORD),
            ],
        );
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&bob, "")))
                    .await
                    .unwrap()
            ),
            4.0
        );
        // A wrong password for bob fails as bob: the server log records failed logins, so the
        // check below would see a guess against the server's account.
        let bob_wrong = object(
            "bob-wrong",
            &[
                q,
                t,
                orders,
                ("userFromEnv", "bob"),
                ("passwordFromEnv", "not-bobs"),
            ],
        );
        let e = c
            .get_metrics(deadline(metrics_request(&bob_wrong, "")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
        assert!(
            e.message()
                .contains("password authentication failed for user \"bob\""),
            "{}",
            e.message()
        );
        // The server's own trigger still works, and its account never saw a failed login.
        let own = object("own", &[q, t, orders]);
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&own, "")))
                    .await
                    .unwrap()
            ),
            4.0
        );
        let log = pg.log();
        assert!(
            log.contains("password authentication failed for user \"bob\""),
            "the server log records failed logins: {log}"
        );
        assert!(
            !log.contains(&format!(
                "password authentication failed for user \"{SCALER_USER}\""
            )),
            "a metadata password reached the server's account: {log}"
        );
        server.stop().await;
    })
    .await;
}
