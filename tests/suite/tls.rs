//! TLS and mTLS on the gRPC port, with certificates generated at test time: a KEDA-like client
//! with and without a client certificate, a wrong CA, an expired certificate, ALPN h2, and a
//! certificate rotation that does not drop an open stream.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use orascale::grpc::proto::external_scaler_client::ExternalScalerClient;
use orascale::tls::TlsFiles;
use support::pki::{Pki, ca, leaf};
use support::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const LIMIT: Duration = Duration::from_secs(60);

async fn start_tls(files: TlsFiles, reload: Duration) -> orascale::app::Running {
    let mut config = config(vec![memory("mem")], engine());
    config.tls = Some(files);
    config.tls_reload_interval = reload;
    orascale::app::start(config)
        .await
        .expect("TLS server starts")
}

async fn tls_client(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> Result<ExternalScalerClient<Channel>, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(ExternalScalerClient::new(channel))
}

/// A full KEDA-like exchange; Err when the connection or the call is refused.
async fn exchange(client: Result<ExternalScalerClient<Channel>, String>) -> Result<f64, String> {
    let mut c = client?;
    let obj = object("tls", &[("query", "select 5"), ("targetQueryValue", "1")]);
    let r = c
        .get_metrics(deadline(metrics_request(&obj, "")))
        .await
        .map_err(|s| format!("{s:?}"))?;
    Ok(r.into_inner().metric_values[0].metric_value_float)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_h2_and_refuses_plaintext_and_wrong_ca() {
    guard(LIMIT, async {
        let pki = Pki::new();
        let server = start_tls(pki.server_files(false), Duration::from_secs(10)).await;
        let addr = server.grpc_addr;
        assert_eq!(
            exchange(tls_client(addr, &pki.ca.cert_pem, None).await).await,
            Ok(5.0)
        );

        // Plaintext gRPC to a TLS port fails.
        let plain = async {
            let ch = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_timeout(Duration::from_secs(3))
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let mut c = ExternalScalerClient::new(ch);
            let obj = object("tls", &[("query", "select 5"), ("targetQueryValue", "1")]);
            c.get_metrics(deadline(metrics_request(&obj, "")))
                .await
                .map_err(|e| e.to_string())
                .map(|_| ())
        };
        assert!(plain.await.is_err(), "plaintext must not work");

        // A client that trusts another CA refuses the server.
        let other = ca("some other CA");
        assert!(
            exchange(tls_client(addr, &other.cert_pem, None).await)
                .await
                .is_err()
        );

        // ALPN h2 and TLS 1.2+, as KEDA's gRPC client requires.
        let (alpn, version) = rustls_probe(addr, &pki.ca.cert_pem, None)
            .await
            .expect("handshake");
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        assert!(matches!(
            version,
            rustls::ProtocolVersion::TLSv1_3 | rustls::ProtocolVersion::TLSv1_2
        ));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_valid_client_certificate() {
    guard(LIMIT, async {
        let pki = Pki::new();
        let server = start_tls(pki.server_files(true), Duration::from_secs(10)).await;
        let addr = server.grpc_addr;
        let good = leaf(&pki.ca, "keda-operator", &["keda-operator"], false);
        assert_eq!(
            exchange(tls_client(addr, &pki.ca.cert_pem, Some(good)).await).await,
            Ok(5.0)
        );

        // No client certificate.
        assert!(
            exchange(tls_client(addr, &pki.ca.cert_pem, None).await)
                .await
                .is_err()
        );
        // A client certificate from another CA.
        let other = ca("rogue CA");
        let rogue = leaf(&other, "keda-operator", &["keda-operator"], false);
        assert!(
            exchange(tls_client(addr, &pki.ca.cert_pem, Some(rogue)).await)
                .await
                .is_err()
        );
        // An expired client certificate from the right CA.
        let expired = leaf(&pki.ca, "keda-operator", &["keda-operator"], true);
        assert!(
            exchange(tls_client(addr, &pki.ca.cert_pem, Some(expired)).await)
                .await
                .is_err()
        );
        // And the server still serves good clients afterwards.
        let good = leaf(&pki.ca, "keda-operator", &["keda-operator"], false);
        assert_eq!(
            exchange(tls_client(addr, &pki.ca.cert_pem, Some(good)).await).await,
            Ok(5.0)
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_picked_up_without_dropping_streams() {
    guard(LIMIT, async {
        let pki = Pki::new();
        let files = pki.server_files(false);
        let server = start_tls(files.clone(), Duration::from_millis(200)).await;
        let addr = server.grpc_addr;
        let first_serial = peer_serial(addr, &pki.ca.cert_pem).await;

        // A stream open across the rotation.
        let mut c = tls_client(addr, &pki.ca.cert_pem, None).await.unwrap();
        let obj = object("tls", &[("query", "select 5"), ("targetQueryValue", "1")]);
        let mut stream = c.stream_is_active(obj.clone()).await.unwrap().into_inner();
        assert!(stream.message().await.unwrap().unwrap().result);

        // Rotate: a new certificate and key, written in place.
        let (cert, key) = leaf(&pki.ca, "orascale-rotated", &["localhost"], false);
        pki.write("tls.key", &key);
        pki.write("tls.crt", &cert);
        let started = std::time::Instant::now();
        loop {
            if peer_serial(addr, &pki.ca.cert_pem).await != first_serial {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "new connections get the new certificate"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The stream opened before the rotation is still open, and its connection still serves.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), stream.message())
                .await
                .is_err(),
            "still open, silent"
        );
        let v = c
            .get_metrics(deadline(metrics_request(&obj, "")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.metric_values[0].metric_value_float, 5.0);

        // A broken rotation (garbage key) keeps the previous certificate in force.
        pki.write("tls.key", "not a key");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            exchange(tls_client(addr, &pki.ca.cert_pem, None).await).await,
            Ok(5.0)
        );
        server.stop().await;
        assert!(
            stream.message().await.unwrap().is_none(),
            "ends with OK on shutdown"
        );
    })
    .await;
}

/// Per-ScaledObject credentials: only over TLS, with `--allow-metadata-credentials`; pools keyed
/// by credentials, never shared; passwords never shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_credentials_get_their_own_pools_over_tls() {
    let Some(pg) =
        support::pg::Pg::start_or_skip("metadata_credentials_get_their_own_pools_over_tls")
    else {
        return;
    };
    guard(Duration::from_secs(120), async {
        let admin = pg.setup().await;
        support::pg::set_queued(&admin, 6).await;
        admin
            .batch_execute("create role alice login password 'Alice-Pw-123'; grant select on jobs to alice;")
            .await
            .unwrap();
        let pki = Pki::new();
        let mut config = config(vec![connection("orders", &pg.scaler_url())], engine());
        config.tls = Some(pki.server_files(false));
        config.allow_metadata_credentials = true;
        let server = orascale::app::start(config).await.unwrap();
        let mut c = tls_client(server.grpc_addr, &pki.ca.cert_pem, None).await.unwrap();
        let q = ("query", "select count(*) from jobs");
        let t = ("targetQueryValue", "1");
        let alice_url = pg.url("alice", None);
        let alice = object("alice-so", &[q, t, ("connectionFromEnv", &alice_url), ("passwordFromEnv", "Alice-Pw-123")]);
        let wrong = object("wrong-so", &[q, t, ("connectionFromEnv", &alice_url), ("passwordFromEnv", "Not-Her-Password")]);
        let server_creds = object("server-so", &[q, t, ("connection", "orders")]);
        assert_eq!(value(c.get_metrics(deadline(metrics_request(&alice, ""))).await.unwrap()), 6.0);
        assert_eq!(value(c.get_metrics(deadline(metrics_request(&server_creds, ""))).await.unwrap()), 6.0);
        let e = c.get_metrics(deadline(metrics_request(&wrong, ""))).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains("password authentication failed for user \"alice\""), "{}", e.message());
        assert!(!e.message().contains("Not-Her-Password") && !e.message().contains("Alice-Pw-123"));
        // Alice's ScaledObject is undisturbed by the wrong one, and runs as alice.
        assert_eq!(value(c.get_metrics(deadline(metrics_request(&alice, ""))).await.unwrap()), 6.0);
        let users: Vec<String> = admin
            .query("select distinct usename::text from pg_stat_activity where usename in ('alice', 'scaler')", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(users.contains(&"alice".to_string()) && users.contains(&"scaler".to_string()), "{users:?}");
        let metrics = tokio::task::spawn_blocking({
            let addr = server.metrics_addr;
            move || http_get(addr, "/metrics").1
        })
        .await
        .unwrap();
        assert!(!metrics.contains("Alice-Pw-123") && !metrics.contains("Not-Her-Password"));

        // Wake-ups through alice's own connection: her own listening session, as alice. A
        // first poller opens that session; the poller under test joins its channel after the
        // LISTEN, so it gets no LISTEN wake, and with a 1 h interval only a notification heard
        // by alice's session can make it poll again.
        support::pg::notify_trigger(&admin).await;
        let watched = |name: &str, query: &'static str| {
            object(
                name,
                &[
                    ("query", query),
                    t,
                    ("connectionFromEnv", &alice_url),
                    ("passwordFromEnv", "Alice-Pw-123"),
                    ("pollInterval", "1h"),
                    ("notifyChannel", "jobs_changed"),
                ],
            )
        };
        let opener = watched("alice-opener", "select count(*) + 1 from jobs");
        let alice_wake = watched("alice-wake", "select count(*) + 0 from jobs");
        let label = "connection=\"metadata-credentials\"";
        let wake_count = |text: &str, name: &str| metric_value(text, name, &[label]).unwrap_or(0.0);
        assert_eq!(value(c.get_metrics(deadline(metrics_request(&opener, ""))).await.unwrap()), 7.0);
        let started = std::time::Instant::now();
        loop {
            let text = scrape(server.metrics_addr).await;
            if metric_value(&text, "orascale_wake_listener_up", &[label]) == Some(1.0) {
                assert_eq!(metric_value(&text, "orascale_wake_channels", &[label]), Some(1.0));
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "alice's listener is up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(value(c.get_metrics(deadline(metrics_request(&alice_wake, ""))).await.unwrap()), 6.0);
        let listeners: Vec<String> = admin
            .query("select usename::text from pg_stat_activity where application_name = 'orascale-listener'", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(listeners, ["alice"], "one listening session, alice's");
        let before = scrape(server.metrics_addr).await;
        support::pg::set_queued(&admin, 9).await;
        wait_value(&mut c, &alice_wake, 9.0, Duration::from_secs(3), "woken through alice's session").await;
        let after = scrape(server.metrics_addr).await;
        for name in ["orascale_wake_notifications_total", "orascale_wake_polls_total"] {
            assert!(
                wake_count(&after, name) > wake_count(&before, name),
                "{name} rose on alice's connection:\n{after}"
            );
        }
        server.stop().await;
    })
    .await;
}

#[test]
fn bad_tls_configuration_exits_64_naming_the_file() {
    let pki = Pki::new();
    let files = pki.server_files(false);
    let missing = Path::new("/nonexistent/tls.crt");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--tls-cert".into(),
                missing.display().to_string(),
                "--tls-key".into(),
                files.key.display().to_string(),
            ],
            "/nonexistent/tls.crt",
        ),
        (
            vec!["--tls-cert".into(), files.cert.display().to_string()],
            "--tls-key",
        ),
        (
            vec!["--tls-client-ca".into(), files.cert.display().to_string()],
            "--tls-client-ca",
        ),
        (
            vec![
                "--tls-cert".into(),
                files.key.display().to_string(),
                "--tls-key".into(),
                files.key.display().to_string(),
            ],
            "--tls-cert",
        ),
        (vec!["--allow-metadata-credentials".into()], "needs TLS"),
    ];
    for (args, frag) in cases {
        let out = std::process::Command::new(bin())
            .args([
                "serve",
                "--grpc-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--connection",
                "m=sqlite::memory:",
            ])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(frag), "{args:?}: {err}");
    }
}

/// Handshakes with rustls directly: the negotiated ALPN and protocol version.
async fn rustls_probe(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    _identity: Option<()>,
) -> Result<(Option<Vec<u8>>, rustls::ProtocolVersion), String> {
    let conn = handshake(addr, ca_pem).await?;
    let (_, session) = conn.get_ref();
    Ok((
        session.alpn_protocol().map(<[u8]>::to_vec),
        session.protocol_version().unwrap(),
    ))
}

async fn peer_serial(addr: std::net::SocketAddr, ca_pem: &str) -> Vec<u8> {
    let conn = handshake(addr, ca_pem).await.unwrap();
    let (_, session) = conn.get_ref();
    session.peer_certificates().unwrap()[0].as_ref().to_vec()
}

async fn handshake(
    addr: std::net::SocketAddr,
    ca_pem: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unfinished_handshakes_is_bounded_and_keda_is_still_served() {
    // It measures this process's memory: nothing that allocates much runs beside it.
    let _alone = exclusive().await;
    guard(LIMIT, async {
        let pki = Pki::new();
        let server = start_tls(pki.server_files(false), Duration::from_secs(10)).await;
        let addr = server.grpc_addr;
        assert_eq!(
            exchange(tls_client(addr, &pki.ca.cert_pem, None).await).await,
            Ok(5.0)
        );
        let metrics = tokio::runtime::Handle::current().metrics();
        let tasks_before = metrics.num_alive_tasks();
        let rss_before = rss_kib();

        // 2,000 connections from another loopback address that never say a word.
        let mut flood = Vec::new();
        for _ in 0..2000 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            flood.push(socket.connect(addr).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;

        let tasks = metrics.num_alive_tasks();
        assert!(
            tasks <= tasks_before + 100,
            "handshake tasks are bounded per peer: {tasks_before} → {tasks}"
        );
        let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
        assert!(grown_mib < 64, "memory grew by {grown_mib} MiB");
        // KEDA, from its own address, is served while the flood holds its connections.
        let started = std::time::Instant::now();
        assert_eq!(
            exchange(tls_client(addr, &pki.ca.cert_pem, None).await).await,
            Ok(5.0)
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "within KEDA's deadline"
        );
        drop(flood);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_metadata_credentials_leaves_no_series_and_no_sessions_behind() {
    let Some(pg) = support::pg::Pg::start_or_skip(
        "rotating_metadata_credentials_leaves_no_series_and_no_sessions_behind",
    ) else {
        return;
    };
    guard(Duration::from_secs(120), async {
        let admin = pg.setup().await;
        support::pg::set_queued(&admin, 2).await;
        admin
            .batch_execute(
                "create role bob login password 'Bob-Pw-0'; grant select on jobs to bob;",
            )
            .await
            .unwrap();
        let pki = Pki::new();
        let mut e = engine();
        e.idle_timeout = Duration::from_millis(300);
        // Each rotation's first poll opens a new pool (a SCRAM login, slow in a debug build on a
        // loaded machine): what is tested here is the cleanup, not the first answer's latency.
        e.first_result_wait = Duration::from_secs(15);
        let mut config = config(vec![connection("orders", &pg.scaler_url())], e);
        config.tls = Some(pki.server_files(false));
        config.allow_metadata_credentials = true;
        let server = orascale::app::start(config).await.unwrap();
        let mut c = tls_client(server.grpc_addr, &pki.ca.cert_pem, None)
            .await
            .unwrap();
        let bob_url = pg.url("bob", None);
        // 100 password rotations: each new password is a new pool, used, then left idle.
        for i in 1..=100 {
            let pw = format!("Bob-Pw-{i}");
            admin
                .batch_execute(&format!("alter role bob password '{pw}'"))
                .await
                .unwrap();
            let so = object(
                "bob-so",
                &[
                    ("query", "select count(*) from jobs"),
                    ("targetQueryValue", "1"),
                    ("connectionFromEnv", &bob_url),
                    ("passwordFromEnv", &pw),
                ],
            );
            let got = first_value(&mut c, &so, Duration::from_secs(30)).await;
            assert_eq!(got.unwrap(), 2.0, "rotation {i}");
        }
        // Idle pollers are evicted with their pools; their sessions close.
        let started = std::time::Instant::now();
        let bob_sessions = || async {
            admin
                .query_one(
                    "select count(*) from pg_stat_activity where usename = 'bob'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        };
        while bob_sessions().await > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "bob's sessions outlive their evicted pools: {}",
                bob_sessions().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = scrape(server.metrics_addr).await;
        let meta_series = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("connection=\"meta-"))
            .count();
        assert_eq!(meta_series, 0, "per-credential series remain:\n{text}");
        assert!(
            text.contains("connection=\"metadata-credentials\""),
            "their polls are counted under one label"
        );
        assert!(!text.contains("Bob-Pw-"), "no password in /metrics");
        server.stop().await;
    })
    .await;
}

/// A client certificate as `openssl x509 -req` makes it without extensions: X.509 v1.
fn openssl_v1_client_cert(pki: &Pki) -> Option<(String, String)> {
    let dir = pki.dir.path();
    let ca_key = pki.write("ca.key", &pki.ca.key_pem);
    let ca_crt = pki.write("ca-for-openssl.crt", &pki.ca.cert_pem);
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ok = run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "v1.key",
        "-subj",
        "/CN=keda-operator",
        "-out",
        "v1.csr",
    ]) && run(&[
        "x509",
        "-req",
        "-in",
        "v1.csr",
        "-CA",
        ca_crt.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-CAcreateserial",
        "-out",
        "v1.crt",
        "-days",
        "30",
    ]);
    ok.then(|| {
        (
            std::fs::read_to_string(dir.join("v1.crt")).unwrap(),
            std::fs::read_to_string(dir.join("v1.key")).unwrap(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_certificate_is_logged_and_check_judges_the_files() {
    let pki = Pki::new();
    let Some((v1_cert, v1_key)) = openssl_v1_client_cert(&pki) else {
        skip(
            "a_refused_client_certificate_is_logged_and_check_judges_the_files",
            "openssl is not installed",
        );
        return;
    };
    let files = pki.server_files(true);
    let (cert, key, ca) = (
        files.cert.to_str().unwrap(),
        files.key.to_str().unwrap(),
        files.client_ca.as_ref().unwrap().to_str().unwrap(),
    );
    let server = Binary::start(
        &[
            "--connection",
            "m=sqlite::memory:",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--tls-client-ca",
            ca,
        ],
        pki.dir.path(),
    );
    // The client presents its v1 certificate (openssl s_client: a TLS stack of its own that, unlike
    // rustls, sends such a certificate; what KEDA's Go client does with one).
    let v1 = pki.write("v1-client.crt", &v1_cert);
    let v1k = pki.write("v1-client.key", &v1_key);
    let ca_file = pki.write("ca-client-side.crt", &pki.ca.cert_pem);
    let _ = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &server.grpc.to_string(),
            "-alpn",
            "h2",
            "-cert",
        ])
        .arg(&v1)
        .arg("-key")
        .arg(&v1k)
        .arg("-CAfile")
        .arg(&ca_file)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let log = server.wait_log("TLS handshake failed", Duration::from_secs(10));
    let line = log
        .lines()
        .find(|l| l.contains("TLS handshake failed"))
        .unwrap_or_else(|| panic!("the refusal is logged:\n{log}"));
    assert!(
        line.contains("WARN") && line.contains("127.0.0.1"),
        "{line}"
    );
    assert!(line.to_lowercase().contains("cert"), "the reason: {line}");
    // Named in words (it used to read `invalid peer certificate:
    // Other(OtherError(UnsupportedCertVersion))`), with what to run.
    assert!(
        line.contains("X.509 v1: rustls accepts v3 only")
            && line.contains("orascale check --tls-client-ca"),
        "{line}"
    );
    assert!(!line.contains("OtherError"), "{line}");
    assert!(!log.contains("PRIVATE KEY"), "no key material in the log");

    // `orascale check` judges the same files before deploying.
    let check = |cert: &str, key: &str| {
        run_bin(&[
            "check",
            "--connection",
            "m=sqlite::memory:",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--tls-client-ca",
            ca,
        ])
    };
    let (code, out, err) = check(cert, key);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("TLS") && out.contains("OK, v3") && out.contains("matches the certificate"),
        "{out}"
    );
    let v1 = pki.write("v1-server.crt", &v1_cert);
    let v1k = pki.write("v1-server.key", &v1_key);
    let (code, out, _) = check(v1.to_str().unwrap(), v1k.to_str().unwrap());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("X.509 v1") && out.contains("FAILED"), "{out}");
    let (code, out, _) = check(cert, v1k.to_str().unwrap());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not match"), "{out}");
}

/// Issue 24: `orascale probe` reaches the TLS overlay with the files KEDA's
/// TriggerAuthentication uses (`--ca`, `--cert`, `--key`, `--server-name`), against the real
/// binary with mTLS; without them it says which flag is missing, and the server names why it
/// refused a client in words.
#[test]
fn probe_reaches_an_mtls_scaler_with_kedas_files_and_refusals_are_named() {
    let pki = Pki::new();
    let files = pki.server_files(true);
    // Failed handshakes are logged at WARN once a second: a server for each refusal whose
    // log line is checked.
    let mtls_server = || {
        Binary::start(
            &[
                "--connection",
                "m=sqlite::memory:",
                "--tls-cert",
                files.cert.to_str().unwrap(),
                "--tls-key",
                files.key.to_str().unwrap(),
                "--tls-client-ca",
                files.client_ca.as_ref().unwrap().to_str().unwrap(),
            ],
            pki.dir.path(),
        )
    };
    let server = mtls_server();
    let (cert, key) = leaf(&pki.ca, "keda-operator", &[], false);
    let cert = pki.write("keda.crt", &cert);
    let key = pki.write("keda.key", &key);
    let ca_file = pki.write("keda-ca.crt", &pki.ca.cert_pem);
    let port = server.grpc.port();
    let probe = |addr: String, extra: &[&str]| {
        let mut args = vec![
            "probe".to_string(),
            "--addr".into(),
            addr,
            "-m".into(),
            "query=select 5".into(),
            "-m".into(),
            "targetQueryValue=1".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        run_bin(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (ca_s, cert_s, key_s) = (
        ca_file.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let mtls = ["--ca", ca_s, "--cert", cert_s, "--key", key_s];

    // The certificate names localhost and 127.0.0.1: both reach it, with and without a scheme.
    for addr in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("https://127.0.0.1:{port}"),
    ] {
        let (code, out, err) = probe(addr.clone(), &mtls);
        assert_eq!(code, 0, "{addr}: {err}");
        assert!(
            out.contains("metricValueFloat=5") && out.contains("IsActive: result=true"),
            "{addr}: {out}"
        );
    }
    // --server-name: the name checked against the certificate, whatever --addr says.
    let mut named = mtls.to_vec();
    named.extend(["--server-name", "localhost"]);
    let (code, _, err) = probe(format!("127.0.0.1:{port}"), &named);
    assert_eq!(code, 0, "{err}");
    let mut wrong = mtls.to_vec();
    wrong.extend(["--server-name", "orascale.example"]);
    let (code, _, err) = probe(format!("127.0.0.1:{port}"), &wrong);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--server-name"), "a hint: {err}");

    // Plaintext to the TLS port: the hint names --ca.
    let (code, _, err) = probe(format!("127.0.0.1:{port}"), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("hint") && err.contains("--ca FILE"), "{err}");
    // TLS without a client certificate: refused by the server, which says why in words; the
    // probe's hint names --cert and --key.
    let (code, _, err) = probe(format!("127.0.0.1:{port}"), &["--ca", ca_s]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--cert FILE --key FILE"), "{err}");
    let fresh = mtls_server();
    let (code, _, err) = probe(format!("127.0.0.1:{}", fresh.grpc.port()), &["--ca", ca_s]);
    assert_eq!(code, 1, "{err}");
    let log = fresh.wait_log("presented no certificate", Duration::from_secs(10));
    assert!(
        log.contains("the client presented no certificate"),
        "in words: {log}"
    );
    // A client certificate from another CA.
    let stranger = ca("not the client CA");
    let (other_cert, other_key) = leaf(&stranger, "intruder", &[], false);
    let other_cert = pki.write("other.crt", &other_cert);
    let other_key = pki.write("other.key", &other_key);
    let fresh = mtls_server();
    let (code, _, err) = probe(
        format!("127.0.0.1:{}", fresh.grpc.port()),
        &[
            "--ca",
            ca_s,
            "--cert",
            other_cert.to_str().unwrap(),
            "--key",
            other_key.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refused the client certificate"), "{err}");
    let log = fresh.wait_log("not signed by a CA", Duration::from_secs(10));
    assert!(
        log.contains("the client certificate is not signed by a CA in --tls-client-ca")
            && log.contains("orascale check --tls-client-ca"),
        "{log}"
    );
    assert!(!log.contains("PRIVATE KEY"), "no key material in the log");
    // Files that are not what the flag needs: a usage error naming the file.
    let (code, _, err) = probe(
        format!("127.0.0.1:{port}"),
        &["--ca", key_s, "--cert", cert_s, "--key", key_s],
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("--ca") && err.contains("not a PEM certificate"),
        "{err}"
    );
}
