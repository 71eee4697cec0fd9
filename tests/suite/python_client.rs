//! An independent client: Python grpcio (a different HTTP/2 and protobuf stack than tonic)
//! generates its stubs from our proto and plays KEDA's call pattern against the real binary.
//! A second one, grpcio-reflection, speaks only reflection v1alpha and runs the grpcurl command
//! lines of docs/operations.md against the real binary, in plaintext and over mTLS.
//! Needs python3 with grpcio, grpcio-tools and grpcio-reflection; `.ci/run` installs them and
//! sets ORASCALE_REQUIRE_PYTHON_GRPC=1, under which their absence is a failure, not a skip.

use crate::support;

use std::process::Command;

use support::*;

/// Whether python3 can import `modules`; without them the test SKIPs visibly, or fails when
/// ORASCALE_REQUIRE_PYTHON_GRPC=1.
fn python_has(test: &str, modules: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("ORASCALE_REQUIRE_PYTHON_GRPC").as_deref() == Ok("1") {
            panic!("ORASCALE_REQUIRE_PYTHON_GRPC=1 but python3 cannot import {modules}");
        }
        skip(
            test,
            &format!(
                "python3 cannot import {modules} (pip install grpcio grpcio-tools grpcio-reflection)"
            ),
        );
    }
    ok
}

fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

#[test]
fn grpcio_client_speaks_kedas_protocol_with_the_real_binary() {
    if !python_has(
        "grpcio_client_speaks_kedas_protocol_with_the_real_binary",
        "grpc, grpc_tools",
    ) {
        return;
    }
    let db = TestDb::new();
    db.set_queued(7);
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(&["--connection", &format!("jobs={}", db.url())], dir.path());
    let out = Command::new("python3")
        .arg(script("keda_client.py"))
        .arg(server.grpc.to_string())
        .arg(QUEUED)
        .arg("py-queued")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(r["specs"][0]["name"], "py-queued");
    assert_eq!(r["specs"][0]["targetSize"], 2);
    assert_eq!(r["specs"][0]["targetSizeFloat"], 2.0);
    assert_eq!(r["values"].as_array().unwrap().len(), 1);
    assert_eq!(r["values"][0]["value"], 7);
    assert_eq!(r["values"][0]["valueFloat"], 7.0);
    assert_eq!(r["active"], true);
    assert_eq!(r["pushed"], true);
    assert_eq!(r["bad"], "INVALID_ARGUMENT");
    assert!(
        r["bad_message"]
            .as_str()
            .unwrap()
            .contains("targetQueryValue"),
        "{r}"
    );
}

#[test]
fn grpcio_client_plays_keda_mains_push_sequence_with_stream_metric_spec() {
    if !python_has(
        "grpcio_client_plays_keda_mains_push_sequence_with_stream_metric_spec",
        "grpc, grpc_tools",
    ) {
        return;
    }
    let db = TestDb::new();
    db.set_queued(3);
    let conn = rusqlite::Connection::open(&db.path).unwrap();
    conn.execute_batch(
        "create table targets (name text primary key, target real);
         insert into targets values ('jobs', 10);",
    )
    .unwrap();
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
    let out = Command::new("python3")
        .arg(script("keda_main_client.py"))
        .arg(server.grpc.to_string())
        .arg(&db.path)
        // One targetPollInterval (500ms), with room for a loaded machine's scheduling.
        .arg("1.5")
        .arg(server.metrics.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let spec = |t: f64| serde_json::json!([{"name": "py-jobs", "targetSize": t as i64, "targetSizeFloat": t}]);
    // GetMetricSpec never waits: on a new server its first answer may be the fallback; the
    // stream opened right after (no GetMetricSpec loop) opens on the queried target.
    let first = &r["first_spec"];
    assert!(*first == spec(5.0) || *first == spec(10.0), "{r}");
    assert_eq!(r["on_open"], spec(10.0), "the queried spec at open: {r}");
    assert_eq!(r["active"], true, "{r}");
    assert_eq!(r["changed"], spec(25.0), "{r}");
    assert_eq!(r["within"], true, "within one targetPollInterval: {r}");
    assert_eq!(r["get_after_change"], r["changed"], "{r}");
    assert_eq!(r["extra"], serde_json::Value::Null, "{r}");
}

/// The grpcurl lines of docs/operations.md (the block after the `grpcurl-commands` marker).
fn documented_grpcurl_commands() -> Vec<String> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"),
    )
    .unwrap();
    let after = &doc[doc.find("<!-- grpcurl-commands").expect("the marked block")..];
    let block = after
        .split("```")
        .nth(1)
        .expect("a fenced block after the marker");
    let lines: Vec<String> = block
        .lines()
        .filter(|l| l.starts_with("grpcurl "))
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines.len(),
        4,
        "list, describe, a call, a health check: {lines:?}"
    );
    lines
}

/// Runs grpcurl command lines through the v1alpha-only reflection client against `addr`.
fn reflect(addr: std::net::SocketAddr, lines: &[String]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("commands");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = Command::new("python3")
        .arg(script("reflection_client.py"))
        .arg(addr.to_string())
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON array")
}

/// What the four documented commands must show.
fn assert_documented_answers(results: &[serde_json::Value], how: &str) {
    let services: Vec<&str> = results[0]["services"]
        .as_array()
        .unwrap_or_else(|| panic!("{how}: list failed: {}", results[0]))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for want in [
        "externalscaler.ExternalScaler",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.contains(&want),
            "{how}: {want} not listed: {services:?}"
        );
    }
    let methods = results[1]["methods"]
        .as_object()
        .unwrap_or_else(|| panic!("{how}: describe failed: {}", results[1]));
    let mut names: Vec<&String> = methods.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "GetMetricSpec",
            "GetMetrics",
            "IsActive",
            "StreamIsActive",
            "StreamMetricSpec"
        ],
        "{how}"
    );
    assert_eq!(
        methods["GetMetrics"]["input"],
        "externalscaler.GetMetricsRequest"
    );
    assert_eq!(methods["StreamIsActive"]["server_streaming"], true, "{how}");
    assert_eq!(
        methods["StreamMetricSpec"]["server_streaming"], true,
        "{how}"
    );
    assert_eq!(
        methods["StreamMetricSpec"]["output"], "externalscaler.GetMetricSpecResponse",
        "{how}"
    );
    let spec = &results[2]["response"]["metricSpecs"][0];
    assert!(
        spec["metricName"]
            .as_str()
            .unwrap_or_else(|| panic!("{how}: GetMetricSpec failed: {}", results[2]))
            .starts_with("orascale-jobs-"),
        "{how}: {spec}"
    );
    assert_eq!(spec["targetSizeFloat"], 5.0, "{how}: {spec}");
    assert_eq!(
        spec["targetSize"], "5",
        "{how}: int64 is a JSON string: {spec}"
    );
    assert_eq!(
        results[3]["response"]["status"], "SERVING",
        "{how}: {}",
        results[3]
    );
}

#[test]
fn reflection_v1alpha_client_runs_the_documented_grpcurl_commands() {
    let test = "reflection_v1alpha_client_runs_the_documented_grpcurl_commands";
    if !python_has(test, "grpc, grpc_reflection") {
        return;
    }
    let db = TestDb::new();
    db.set_queued(7);
    let jobs = format!("jobs={}", db.url());
    let lines = documented_grpcurl_commands();

    let dir = tempfile::tempdir().unwrap();
    let plain = Binary::start(&["--connection", &jobs], dir.path());
    assert_documented_answers(&reflect(plain.grpc, &lines), "plaintext");
    drop(plain);

    // The same lines over mTLS, as the docs say: -plaintext → -cacert/-cert/-key/-authority.
    let pki = support::pki::Pki::new();
    let files = pki.server_files(true);
    let (cert, key) = support::pki::leaf(&pki.ca, "keda-operator", &["keda-operator"], false);
    let ca = pki.write("ca.crt", &pki.ca.cert_pem);
    let client_cert = pki.write("client.crt", &cert);
    let client_key = pki.write("client.key", &key);
    let tls = Binary::start(
        &[
            "--connection",
            &jobs,
            "--tls-cert",
            files.cert.to_str().unwrap(),
            "--tls-key",
            files.key.to_str().unwrap(),
            "--tls-client-ca",
            files.client_ca.as_ref().unwrap().to_str().unwrap(),
        ],
        dir.path(),
    );
    let tls_flags = format!(
        "-cacert {} -cert {} -key {} -authority localhost",
        ca.display(),
        client_cert.display(),
        client_key.display()
    );
    let tls_lines: Vec<String> = lines
        .iter()
        .map(|l| l.replace("-plaintext", &tls_flags))
        .collect();
    assert_documented_answers(&reflect(tls.grpc, &tls_lines), "mTLS");
    // Without a client certificate the mTLS port refuses even reflection.
    let no_cert: Vec<String> = lines[..1]
        .iter()
        .map(|l| {
            l.replace(
                "-plaintext",
                &format!("-cacert {} -authority localhost", ca.display()),
            )
        })
        .collect();
    let refused = reflect(tls.grpc, &no_cert);
    assert!(refused[0]["error"].is_string(), "{refused:?}");
}
