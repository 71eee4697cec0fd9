//! An independent client: Python grpcio (a different HTTP/2 and protobuf stack than tonic)
//! generates its stubs from our proto and plays KEDA's call pattern against the real binary.
//! Needs python3 with grpcio and grpcio-tools; `.ci/run` installs them and sets
//! ORASCALE_REQUIRE_PYTHON_GRPC=1, under which their absence is a failure, not a skip.

mod support;

use std::process::Command;

use support::*;

fn python_grpc_available() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn grpcio_client_speaks_kedas_protocol_with_the_real_binary() {
    if !python_grpc_available() {
        if std::env::var("ORASCALE_REQUIRE_PYTHON_GRPC").as_deref() == Ok("1") {
            panic!("ORASCALE_REQUIRE_PYTHON_GRPC=1 but python3 cannot import grpc and grpc_tools");
        }
        skip(
            "grpcio_client_speaks_kedas_protocol_with_the_real_binary",
            "python3 with grpcio and grpcio-tools is not installed (pip install grpcio grpcio-tools)",
        );
        return;
    }
    let db = TestDb::new();
    db.set_queued(7);
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(&["--connection", &format!("jobs={}", db.url())], dir.path());
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/keda_client.py");
    let out = Command::new("python3")
        .arg(&script)
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
