//! No input panics the real binary. Every metadata key × extreme values × every RPC answers OK
//! or INVALID_ARGUMENT; every TOML key × extreme values either starts the server (which then
//! stops cleanly on SIGTERM) or exits 64 naming the key. The server's log never says "panicked".

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use orascale::grpc::proto::ScaledObjectRef;
use orascale::metadata;
use support::*;
use tonic::Code;

/// Extreme values for any key: zero, negative, the largest u64 in every humantime unit, huge
/// and tiny numbers, 10k characters, NUL, emoji, bidi controls, NaN and infinities.
fn extreme_values() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        " ",
        "0",
        "-0",
        "-1",
        "-5s",
        "0s",
        "1ns",
        "200000000000y",
        "1e400",
        "-1e400",
        "1.5e308",
        "NaN",
        "nan",
        "inf",
        "-inf",
        "infinity",
        "0.0000001",
        "\0",
        "a\0b",
        "10s\0",
        "🚀",
        "🚀s",
        "1🚀",
        "\u{202e}1s",
        "true",
        "TRUE",
        "null",
        "{}",
        "'",
        "\"",
        "--",
        ";",
        "\\",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for unit in [
        "ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y", "nsec", "years",
    ] {
        v.push(format!("18446744073709551615{unit}"));
        v.push(format!("9223372036854775807{unit}"));
    }
    v.push("18446744073709551616".into());
    v.push("x".repeat(10_000));
    v.push("🚀".repeat(2_500));
    v
}

fn with(base: &[(&str, &str)], key: &str, value: &str) -> ScaledObjectRef {
    let mut meta: HashMap<String, String> = base
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    meta.insert(key.to_string(), value.to_string());
    ScaledObjectRef {
        name: "extreme".into(),
        namespace: "extremes".into(),
        scaler_metadata: meta,
    }
}

fn acceptable(code: Code) -> bool {
    matches!(code, Code::Ok | Code::InvalidArgument)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metadata_key_and_rpc_survives_extreme_values() {
    let db = TestDb::new();
    db.set_queued(3);
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(
        &[
            "--connection",
            &format!("jobs={}", db.url()),
            "--min-poll-interval",
            "100ms",
        ],
        dir.path(),
    );
    let addr = server.grpc;
    guard(Duration::from_secs(240), async move {
        let mut c = client(addr).await;
        let base = [
            ("query", QUEUED),
            ("targetQueryValue", "1"),
            ("pollInterval", "10s"),
        ];
        let mut keys: Vec<&str> = metadata::KEYS.to_vec();
        keys.extend_from_slice(metadata::KEDA_KEYS);
        keys.extend_from_slice(&[
            metadata::CONNECTION_FROM_ENV,
            metadata::USER_FROM_ENV,
            metadata::PASSWORD_FROM_ENV,
            "someUnknownKey",
            "🚀",
            "",
        ]);
        let values = extreme_values();
        let mut calls = 0;
        let mut unexpected = Vec::new();
        for key in &keys {
            for value in &values {
                let obj = with(&base, key, value);
                let shown = format!("{key}={:?}", value.chars().take(30).collect::<String>());
                let spec = c.get_metric_spec(deadline(obj.clone())).await;
                let metrics = c.get_metrics(deadline(metrics_request(&obj, ""))).await;
                let active = c.is_active(deadline(obj.clone())).await;
                let codes = [
                    ("GetMetricSpec", spec.map(|_| ()).err()),
                    ("GetMetrics", metrics.map(|_| ()).err()),
                    ("IsActive", active.map(|_| ()).err()),
                ];
                for (rpc, err) in codes {
                    calls += 1;
                    if let Some(s) = err
                        && !acceptable(s.code())
                    {
                        unexpected.push(format!("{rpc} {shown}: {:?} {}", s.code(), s.message()));
                    }
                }
                calls += 1;
                match c.stream_is_active(obj.clone()).await {
                    Ok(r) => {
                        let mut stream = r.into_inner();
                        // Either a message soon or silence; never a broken stream.
                        if let Ok(Some(Err(s))) =
                            tokio::time::timeout(Duration::from_millis(5), stream.message())
                                .await
                                .map(|m| m.transpose())
                        {
                            unexpected.push(format!("StreamIsActive {shown}: {s:?}"));
                        }
                    }
                    Err(s) if !acceptable(s.code()) => {
                        unexpected.push(format!(
                            "StreamIsActive {shown}: {:?} {}",
                            s.code(),
                            s.message()
                        ));
                    }
                    Err(_) => {}
                }
            }
        }
        assert!(calls > 3000, "{calls}");
        assert!(
            unexpected.is_empty(),
            "{} unexpected answers:\n{}",
            unexpected.len(),
            unexpected.join("\n")
        );
        // Still serving, and the other triggers are undisturbed.
        let obj = with(&base, "metricName", "after-the-storm");
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&obj, "")))
                    .await
                    .unwrap()
            ),
            3.0
        );
    })
    .await;
    let log = server.log_text();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

/// TOML keys by kind: (key, is it inside a connection table, kind).
#[derive(Clone, Copy)]
enum Kind {
    Duration,
    Integer,
    Text,
    Bool,
    List,
}

const TOML_KEYS: &[(&str, bool, Kind)] = &[
    ("grpc_listen", false, Kind::Text),
    ("metrics_listen", false, Kind::Text),
    ("default_poll_interval", false, Kind::Duration),
    ("min_poll_interval", false, Kind::Duration),
    ("max_poll_interval", false, Kind::Duration),
    ("min_wake_interval", false, Kind::Duration),
    ("wake_poll_share", false, Kind::Integer),
    ("namespace_pool_share", false, Kind::Integer),
    ("default_query_timeout", false, Kind::Duration),
    ("max_query_timeout", false, Kind::Duration),
    ("idle_timeout", false, Kind::Duration),
    ("stream_resend_interval", false, Kind::Duration),
    ("stale_after_polls", false, Kind::Integer),
    ("shutdown_delay", false, Kind::Duration),
    ("max_pollers", false, Kind::Integer),
    ("max_pollers_per_namespace", false, Kind::Integer),
    ("max_streams", false, Kind::Integer),
    ("max_query_length", false, Kind::Integer),
    ("max_spec_cache_bytes", false, Kind::Integer),
    ("max_metadata_entries", false, Kind::Integer),
    ("max_metadata_key_length", false, Kind::Integer),
    ("max_metadata_value_length", false, Kind::Integer),
    ("tls_cert", false, Kind::Text),
    ("tls_key", false, Kind::Text),
    ("tls_client_ca", false, Kind::Text),
    ("tls_reload_interval", false, Kind::Duration),
    ("allow_metadata_credentials", false, Kind::Bool),
    ("log_format", false, Kind::Text),
    ("url", true, Kind::Text),
    ("kind", true, Kind::Text),
    ("user", true, Kind::Text),
    ("connect_string", true, Kind::Text),
    ("pool_size", true, Kind::Integer),
    ("pool_timeout", true, Kind::Duration),
    ("password_file", true, Kind::Text),
    ("ca_file", true, Kind::Text),
    ("namespaces", true, Kind::List),
    ("min_poll_interval", true, Kind::Duration),
    ("max_query_timeout", true, Kind::Duration),
    ("allow_dblinks", true, Kind::Bool),
];

/// A TOML string literal (JSON's escapes are TOML's).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn toml_values(kind: Kind) -> Vec<String> {
    let texts = |v: &[&str]| v.iter().map(|s| toml_str(s)).collect::<Vec<_>>();
    match kind {
        Kind::Duration => texts(&[
            "0s",
            "1ns",
            "18446744073709551615s",
            "200000000000y",
            "-1s",
            "",
            "🚀",
            "\0",
        ]),
        Kind::Integer => vec![
            "0".into(),
            "-1".into(),
            "9223372036854775807".into(),
            "1e400".into(),
        ],
        Kind::Text => {
            let mut v = texts(&["", "\0", "🚀"]);
            v.push(toml_str(&"x".repeat(10_000)));
            v
        }
        Kind::Bool => vec!["true".into(), "\"yes\"".into()],
        Kind::List => vec!["[]".into(), "[\"\"]".into(), "[\"🚀\", \"\\u0000\"]".into()],
    }
}

#[test]
fn every_toml_key_survives_extreme_values_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for (key, in_connection, kind) in TOML_KEYS {
        for value in toml_values(*kind) {
            let text = if *in_connection {
                let url = if *key == "url" {
                    String::new()
                } else {
                    "url = \"sqlite::memory:\"\n".to_string()
                };
                format!("[connections.db]\n{url}{key} = {value}\n")
            } else {
                format!("{key} = {value}\n[connections.db]\nurl = \"sqlite::memory:\"\n")
            };
            cases.push((key.to_string(), text));
        }
    }
    assert!(cases.len() > 150, "{}", cases.len());
    let failures = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some((key, text)) = cases.get(i) else { return };
                    let file = dir.path().join(format!("case-{i}.toml"));
                    std::fs::write(&file, text).unwrap();
                    let outcome = startup(&file, dir.path());
                    let shown = text.chars().take(120).collect::<String>();
                    match outcome {
                        Startup::Served { code: Some(0), log } if !log.contains("panicked") => {}
                        Startup::Served { code, log } => failures.lock().unwrap().push(format!(
                            "{shown}: served, then exit {code:?} after SIGTERM (want 0, no panic):\n{log}"
                        )),
                        // Named as in the file or as its flag (`tls_cert` / `--tls-cert`).
                        Startup::Refused(64, log)
                            if (log.contains(key.as_str())
                                || log.contains(&format!("--{}", key.replace('_', "-"))))
                                && !log.contains("panicked") => {}
                        Startup::Refused(code, log) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{shown}: exit {code}, want 64 naming {key:?}:\n{log}")),
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} cases:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

enum Startup {
    /// Became ready, served briefly; its exit code after SIGTERM and its log.
    Served { code: Option<i32>, log: String },
    /// Exited before ready: exit code and log.
    Refused(i32, String),
}

fn startup(file: &std::path::Path, cwd: &std::path::Path) -> Startup {
    match Binary::try_start(&["--config", file.to_str().unwrap()], cwd, &[]) {
        Ok(mut b) => {
            std::thread::sleep(Duration::from_millis(300));
            b.signal("TERM");
            let code = b.wait_exit(Duration::from_secs(10));
            Startup::Served {
                code,
                log: b.log_text(),
            }
        }
        Err((code, log)) => Startup::Refused(code.unwrap_or(-1), log),
    }
}

/// A server (the real binary, so its metrics are its own) on a SQLite file with 3 queued jobs.
fn jobs_server() -> (TestDb, tempfile::TempDir, Binary) {
    let db = TestDb::new();
    db.set_queued(3);
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(
        &[
            "--connection",
            &format!("jobs={}", db.url()),
            "--min-poll-interval",
            "100ms",
        ],
        dir.path(),
    );
    (db, dir, server)
}

fn jobs_object(name: &str, namespace: &str) -> ScaledObjectRef {
    let mut o = object(name, &[("query", QUEUED), ("targetQueryValue", "1")]);
    o.namespace = namespace.into();
    o
}

/// `Some(code)` of each RPC's answer for `obj` (a stream: its opening), OK as `Code::Ok`.
async fn codes_of_every_rpc(
    c: &mut orascale::grpc::proto::external_scaler_client::ExternalScalerClient<
        tonic::transport::Channel,
    >,
    obj: &ScaledObjectRef,
) -> Vec<(&'static str, Code, String)> {
    let code = |r: Result<(), tonic::Status>| match r {
        Ok(()) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    };
    let mut out = Vec::new();
    let (c1, m1) = code(c.get_metric_spec(deadline(obj.clone())).await.map(|_| ()));
    out.push(("GetMetricSpec", c1, m1));
    let (c2, m2) = code(
        c.get_metrics(deadline(metrics_request(obj, "")))
            .await
            .map(|_| ()),
    );
    out.push(("GetMetrics", c2, m2));
    let (c3, m3) = code(c.is_active(deadline(obj.clone())).await.map(|_| ()));
    out.push(("IsActive", c3, m3));
    let (c4, m4) = code(c.stream_is_active(obj.clone()).await.map(|_| ()));
    out.push(("StreamIsActive", c4, m4));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_kubernetes_could_never_send_are_refused_on_every_rpc() {
    let (_db, _dir, server) = jobs_server();
    let addr = server.grpc;
    let pid = server.child.id();
    let metrics = server.metrics;
    guard(Duration::from_secs(120), async move {
        let mut c = client(addr).await;
        // As long as the request limit allows (a 1 MiB one is refused before a handler runs).
        let mib = "x".repeat(400 * 1024);
        let cases: Vec<(ScaledObjectRef, &str)> = vec![
            (jobs_object(&mib, "ns"), "scaledObjectRef.name \"xxxx"),
            (
                jobs_object(&"a".repeat(254), "ns"),
                "scaledObjectRef.name \"aaaa",
            ),
            (
                jobs_object("so", &"a".repeat(64)),
                "scaledObjectRef.namespace \"aaaa",
            ),
            (jobs_object("so", &mib), "scaledObjectRef.namespace \"xxxx"),
            (
                jobs_object("so\nERROR orascale: poller stopped", "ns"),
                "scaledObjectRef.name \"so\\nERROR",
            ),
            (jobs_object("so\u{1b}[2K", "ns"), "scaledObjectRef.name"),
            (jobs_object("So", "ns"), "scaledObjectRef.name \"So\""),
            (
                jobs_object("so", "n.s"),
                "scaledObjectRef.namespace \"n.s\"",
            ),
            (jobs_object("", "ns"), "scaledObjectRef.name \"\""),
            (jobs_object("so", ""), "scaledObjectRef.namespace \"\""),
        ];
        for (obj, want) in &cases {
            for (rpc, code, msg) in codes_of_every_rpc(&mut c, obj).await {
                let shown = format!("{rpc} {:?}", obj.name.chars().take(40).collect::<String>());
                assert_eq!(code, Code::InvalidArgument, "{shown}: {msg}");
                assert!(msg.starts_with(want), "{shown}: {msg}");
                assert!(msg.contains("is not a Kubernetes name"), "{shown}: {msg}");
                assert!(msg.len() < 400, "{shown}: {} bytes", msg.len());
            }
        }
        // The longest names Kubernetes allows are served.
        let longest = jobs_object(&format!("{}.b", "a".repeat(251)), &"n".repeat(63));
        for (rpc, code, msg) in codes_of_every_rpc(&mut c, &longest).await {
            assert_eq!(code, Code::Ok, "{rpc}: {msg}");
        }

        // Refused before anything is kept: 150 calls with 1 MiB names grew the server by more
        // than 150 MiB when each was parsed and cached (400 KiB names: 60 MiB).
        let before = rss_of(pid);
        for i in 0..150 {
            let obj = jobs_object(&format!("{mib}{i}"), "ns");
            let err = c.get_metric_spec(deadline(obj)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
        }
        let grown = rss_of(pid).saturating_sub(before);
        assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
        // Only the one valid trigger left any state: the scrape stays small.
        let text = scrape(metrics).await;
        assert!(text.len() < 64 * 1024, "{} bytes", text.len());
    })
    .await;
    let log = server.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_metric_name_is_echoed_cut() {
    let (_db, _dir, server) = jobs_server();
    let addr = server.grpc;
    guard(Duration::from_secs(60), async move {
        let mut c = client(addr).await;
        let obj = jobs_object("so", "ns");
        // 500 KB, just under the request limit (a 4 MB one is refused before a handler runs):
        // echoed whole and escaped, it made a grpc-message over 4 times its size, which
        // HTTP/2 clients refuse as a header.
        let huge = "\n".repeat(500_000);
        let err = c
            .get_metrics(deadline(metrics_request(&obj, &huge)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        let want = format!(
            "metricName \"{}…\" is not this trigger's metric",
            "\\n".repeat(120)
        );
        assert!(err.message().starts_with(&want), "{}", err.message());
        assert!(err.message().len() < 400, "{}", err.message().len());
        // A short one is echoed whole.
        let err = c
            .get_metrics(deadline(metrics_request(&obj, "other")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with("metricName \"other\" is not"),
            "{}",
            err.message()
        );
    })
    .await;
}

/// Sends whatever bytes it is given as the request message, and reads the answer as bytes.
mod raw {
    use prost::bytes::{Buf, BufMut};
    use tonic::Status;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Debug, Clone, Default)]
    pub struct Raw;

    pub struct Bytes;

    impl Encoder for Bytes {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for Bytes {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
        }
    }

    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Bytes;
        type Decoder = Bytes;
        fn encoder(&mut self) -> Bytes {
            Bytes
        }
        fn decoder(&mut self) -> Bytes {
            Bytes
        }
    }
}

/// `bytes` as the request of `method`: the answer's code and message (a stream: its opening).
async fn raw_call(addr: std::net::SocketAddr, method: &str, bytes: Vec<u8>) -> (Code, String) {
    use tonic::codegen::http::uri::PathAndQuery;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path: PathAndQuery = format!("/externalscaler.ExternalScaler/{method}")
        .parse()
        .unwrap();
    let request = deadline(bytes);
    let result = if method == "StreamIsActive" {
        grpc.server_streaming(request, path, raw::Raw)
            .await
            .map(|_| ())
    } else {
        grpc.unary(request, path, raw::Raw).await.map(|_| ())
    };
    match result {
        Ok(()) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_clear_codes_and_are_counted() {
    let (_db, _dir, server) = jobs_server();
    let addr = server.grpc;
    let metrics = server.metrics;
    guard(Duration::from_secs(60), async move {
        let methods = [
            ("GetMetricSpec", "ScaledObjectRef"),
            ("GetMetrics", "GetMetricsRequest"),
            ("IsActive", "ScaledObjectRef"),
            ("StreamIsActive", "ScaledObjectRef"),
        ];
        // An invalid varint, and a name field that is not UTF-8.
        let garbage: [Vec<u8>; 2] = [vec![0xff; 11], vec![0x0a, 0x02, 0xc3, 0x28]];
        let limit = orascale::grpc::calls::max_request(&orascale::config::Limits::default());
        let too_large = vec![0u8; 1024 * 1024];
        for (method, message) in methods {
            for bytes in &garbage {
                let (code, msg) = raw_call(addr, method, bytes.clone()).await;
                assert_eq!(code, Code::InvalidArgument, "{method}: {msg}");
                let want = format!("the request is not a valid {message} protobuf: ");
                assert!(msg.starts_with(&want), "{method}: {msg}");
            }
            let (code, msg) = raw_call(addr, method, too_large.clone()).await;
            assert_eq!(code, Code::ResourceExhausted, "{method}: {msg}");
            assert_eq!(
                msg,
                format!("the request message (1048576 bytes) is over the limit of {limit} bytes (what the metadata limits allow)"),
                "{method}"
            );
        }
        // Each counted once under its method and code.
        let text = scrape(metrics).await;
        for (method, _) in methods {
            let count = |code: &str| {
                metric_value(
                    &text,
                    "orascale_grpc_requests_total",
                    &[&format!("method=\"{method}\""), &format!("code=\"{code}\"")],
                )
            };
            assert_eq!(count("INVALID_ARGUMENT"), Some(2.0), "{method}\n{text}");
            assert_eq!(count("RESOURCE_EXHAUSTED"), Some(1.0), "{method}\n{text}");
            assert_eq!(count("INTERNAL"), None, "{method}");
            assert_eq!(count("OUT_OF_RANGE"), None, "{method}");
            assert_eq!(count("OTHER"), None, "{method}");
        }
        // Still serving.
        let mut c = client(addr).await;
        let obj = jobs_object("after", "ns");
        assert_eq!(
            value(
                c.get_metrics(deadline(metrics_request(&obj, "")))
                    .await
                    .unwrap()
            ),
            3.0
        );
    })
    .await;
}

/// The request limit follows the metadata limits (~530 KiB), not tonic's 4 MiB: 128 concurrent
/// requests on one connection carrying a 4 MiB value are refused from their length prefix, and
/// the server does not grow by hundreds of MiB buffering them (it did: +600 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_oversized_requests_cannot_take_the_servers_memory() {
    let (_db, _dir, server) = jobs_server();
    let pid = server.child.id();
    let addr = server.grpc;
    guard(Duration::from_secs(120), async move {
        let c = client(addr).await;
        let before = rss_of(pid);
        let big = "y".repeat(4 * 1024 * 1024 - 200);
        let calls = (0..128).map(|i| {
            let mut c = c.clone();
            let o = object(
                &format!("big-{i}"),
                &[("query", QUEUED), ("targetQueryValue", "1"), ("x", &big)],
            );
            async move { c.get_metric_spec(o).await.unwrap_err().code() }
        });
        let codes = futures::future::join_all(calls).await;
        assert!(
            codes.iter().all(|c| *c == Code::ResourceExhausted),
            "{codes:?}"
        );
        let grown = rss_of(pid).saturating_sub(before);
        eprintln!("128 concurrent 4 MiB requests: RSS +{grown} KiB");
        assert!(grown < 96 * 1024, "RSS grew by {grown} KiB");
    })
    .await;
}
