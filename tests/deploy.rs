//! Everything under deploy/ is tested, so it cannot drift from the code:
//! - kustomize renders the base and every overlay (`kubectl kustomize`);
//! - the output validates against the Kubernetes schemas (`kubernetes-validate --strict`), and
//!   KEDA, cert-manager and Prometheus Operator kinds carry their required fields (checked here);
//! - checkov's Dockerfile and Kubernetes checks pass, every skip with its reason inline;
//! - the Dockerfile agrees with the manifests and the code (user id, ports, paths, TNS_ADMIN);
//! - every trigger in deploy/examples/ is accepted by the real binary (GetMetricSpec) against the
//!   shipped configuration, and names a connection that exists there.
//!
//! Tools: kubectl (on the machine image; without it a visible SKIP), and from PyPI
//! kubernetes-validate and checkov, which `.ci/run` installs and then requires
//! (ORASCALE_REQUIRE_DEPLOY_TOOLS=1); elsewhere their absence is a visible SKIP.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;
use support::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const KUSTOMIZATIONS: &[&str] = &[
    "deploy/kubernetes/base",
    "deploy/kubernetes/overlays/tls",
    "deploy/kubernetes/overlays/monitoring",
];

/// Whether `tool --version`-like `probe` runs; else a visible SKIP, or a failure when required.
/// kubectl comes with the machine image, not from a registry: its absence is a SKIP, never a
/// failure; the PyPI tools are required under ORASCALE_REQUIRE_DEPLOY_TOOLS=1.
fn have(test: &str, tool: &str, probe: &[&str]) -> bool {
    let ok = Command::new(tool)
        .args(probe)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if tool != "kubectl" && std::env::var("ORASCALE_REQUIRE_DEPLOY_TOOLS").as_deref() == Ok("1")
        {
            panic!("{test}: ORASCALE_REQUIRE_DEPLOY_TOOLS=1 but {tool} is not usable");
        }
        skip(test, &format!("{tool} is not installed"));
    }
    ok
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn render(dir: &str) -> String {
    let out = Command::new("kubectl")
        .args(["kustomize", &root().join(dir).to_string_lossy()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

fn find<'a>(all: &'a [Value], k: &str) -> Vec<&'a Value> {
    all.iter().filter(|v| kind(v) == k).collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// Required fields of the custom kinds kubernetes-validate has no schema for.
fn check_custom_kinds(all: &[Value], dir: &str) {
    for v in all {
        let name = format!(
            "{dir}: {} {}",
            kind(v),
            v["metadata"]["name"].as_str().unwrap_or("?")
        );
        let spec = &v["spec"];
        match kind(v) {
            "Certificate" => {
                assert!(spec["secretName"].is_string(), "{name}: spec.secretName");
                assert!(
                    spec["issuerRef"]["name"].is_string(),
                    "{name}: spec.issuerRef.name"
                );
                assert!(
                    spec["dnsNames"].is_sequence() || spec["commonName"].is_string(),
                    "{name}: dnsNames or commonName"
                );
            }
            "ClusterIssuer" | "Issuer" => assert!(
                ["selfSigned", "ca", "acme", "vault"]
                    .iter()
                    .any(|k| !spec[*k].is_null()),
                "{name}: one issuer type"
            ),
            "ClusterTriggerAuthentication" | "TriggerAuthentication" => {
                let refs = spec["secretTargetRef"]
                    .as_sequence()
                    .expect("secretTargetRef");
                let params: BTreeSet<&str> = refs.iter().map(|r| s(&r["parameter"])).collect();
                for r in refs {
                    assert!(
                        r["name"].is_string() && r["key"].is_string(),
                        "{name}: {r:?}"
                    );
                }
                // KEDA's own TLS parameters for external scalers.
                for p in ["caCert", "tlsClientCert", "tlsClientKey"] {
                    assert!(params.contains(p), "{name}: {p}");
                }
            }
            "ServiceMonitor" => {
                assert!(spec["selector"].is_mapping(), "{name}: selector");
                assert!(
                    spec["endpoints"][0]["port"].is_string(),
                    "{name}: endpoints"
                );
            }
            "PrometheusRule" => assert!(spec["groups"].is_sequence(), "{name}: groups"),
            _ => {}
        }
    }
}

#[test]
fn kustomize_renders_valid_hardened_manifests() {
    let test = "kustomize_renders_valid_hardened_manifests";
    if !have(test, "kubectl", &["version", "--client"]) {
        return;
    }
    let validate = have(test, "kubernetes-validate", &["--version"]);
    let dir = tempfile::tempdir().unwrap();
    for k in KUSTOMIZATIONS {
        let text = render(k);
        let all = docs(&text);
        let kinds: BTreeSet<&str> = all.iter().map(kind).collect();
        for want in [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ] {
            assert!(kinds.contains(want), "{k}: no {want}: {kinds:?}");
        }
        check_custom_kinds(&all, k);
        let deployment = find(&all, "Deployment")[0];
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(deployment["spec"]["replicas"], 2, "{k}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{k}");
        assert!(pod["topologySpreadConstraints"].is_sequence(), "{k}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{k}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let c = &pod["containers"][0];
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{k}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{k}");
        assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{k}");
        for r in ["requests", "limits"] {
            assert!(c["resources"][r]["memory"].is_string(), "{k}: {r}");
        }
        let sa = find(&all, "ServiceAccount")[0];
        assert_eq!(sa["automountServiceAccountToken"], false);
        if *k == "deploy/kubernetes/overlays/monitoring" {
            assert!(kinds.contains("ServiceMonitor") && kinds.contains("PrometheusRule"));
        }
        if *k == "deploy/kubernetes/overlays/tls" {
            let args: Vec<&str> = c["args"].as_sequence().unwrap().iter().map(s).collect();
            for flag in ["--tls-cert", "--tls-key", "--tls-client-ca"] {
                assert!(args.contains(&flag), "{k}: {flag} in {args:?}");
            }
            // The kubelet's gRPC probes cannot speak TLS: HTTP probes on the admin port.
            assert!(c["readinessProbe"]["grpc"].is_null(), "{k}");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        }
        if validate {
            let file = dir.path().join(format!("{}.yaml", k.replace('/', "_")));
            std::fs::write(&file, &text).unwrap();
            let out = Command::new("kubernetes-validate")
                .args(["--strict", "--quiet", &file.to_string_lossy()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{k} does not validate:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    if validate {
        // The validator is not a rubber stamp: an unknown field fails.
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {portz: []}\n",
        )
        .unwrap();
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", &bad.to_string_lossy()])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "a broken manifest must fail validation"
        );
    }
}

/// checkov's failed-check count and the skipped checks, from its JSON output.
fn checkov(path: &Path, framework: &str) -> (u64, Vec<String>, String) {
    let out = Command::new("checkov")
        .args([
            "--skip-download",
            "--quiet",
            "--compact",
            "-o",
            "json",
            "--framework",
            framework,
            "-f",
        ])
        .arg(path)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("checkov JSON ({e}): {text}"));
    let v = if v.is_array() { v[0].clone() } else { v };
    let failed = v["summary"]["failed"].as_u64().unwrap_or(0);
    let skipped = v["results"]["skipped_checks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    format!(
                        "{} {}",
                        c["check_id"].as_str().unwrap_or(""),
                        c["check_result"]["suppress_comment"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (failed, skipped, text)
}

#[test]
fn checkov_passes_with_every_skip_justified() {
    let test = "checkov_passes_with_every_skip_justified";
    if !have(test, "checkov", &["--version"]) || !have(test, "kubectl", &["version", "--client"]) {
        return;
    }
    let (failed, skipped, text) = checkov(&root().join("deploy/Dockerfile"), "dockerfile");
    assert_eq!(failed, 0, "Dockerfile: {text}");
    let dir = tempfile::tempdir().unwrap();
    let mut all_skips = skipped;
    for k in KUSTOMIZATIONS {
        let file = dir.path().join(format!("{}.yaml", k.replace('/', "_")));
        std::fs::write(&file, render(k)).unwrap();
        let (failed, skipped, text) = checkov(&file, "kubernetes");
        assert_eq!(failed, 0, "{k}: {text}");
        all_skips.extend(skipped);
    }
    for skip in &all_skips {
        // "CHECK_ID reason": a reason of a few words at least.
        let reason = skip.split_once(' ').map(|(_, r)| r.trim()).unwrap_or("");
        assert!(
            reason.split_whitespace().count() >= 4,
            "skip without a reason: {skip:?}"
        );
    }
}

/// The Dockerfile's instructions, continuation lines joined.
fn dockerfile() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

fn instruction<'a>(lines: &'a [String], word: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(word).map(str::trim))
        .collect()
}

#[test]
fn the_dockerfile_agrees_with_the_manifests_and_the_code() {
    let lines = dockerfile();
    let manifest = |name: &str| {
        docs(&std::fs::read_to_string(root().join("deploy/kubernetes/base").join(name)).unwrap())
            .remove(0)
    };
    let deployment = manifest("deployment.yaml");
    let service = manifest("service.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];

    // The user: numeric, and the one the pod runs as.
    let user = *instruction(&lines, "USER ").last().expect("USER");
    let uid: i64 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric USER");
    assert_eq!(pod["securityContext"]["runAsUser"].as_i64(), Some(uid));
    assert_eq!(c["securityContext"]["runAsUser"].as_i64(), Some(uid));
    assert!(lines.iter().any(|l| l.contains(&format!("--uid {uid}"))));

    // The ports: EXPOSE = container ports = Service target ports = the probes' = the config's.
    let exposed: BTreeSet<i64> = instruction(&lines, "EXPOSE ")
        .iter()
        .flat_map(|l| l.split_whitespace().map(|p| p.parse::<i64>().unwrap()))
        .collect();
    let container: BTreeSet<i64> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    assert_eq!(exposed, container);
    let by_name = |n: &str| {
        c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .unwrap()["containerPort"]
            .as_i64()
            .unwrap()
    };
    for p in service["spec"]["ports"].as_sequence().unwrap() {
        let target = s(&p["targetPort"]);
        assert_eq!(
            p["port"].as_i64(),
            Some(by_name(target)),
            "Service port {target}"
        );
        assert!(
            p["appProtocol"].is_string(),
            "Service port {target}: appProtocol"
        );
    }
    assert_eq!(
        c["readinessProbe"]["grpc"]["port"].as_i64(),
        Some(by_name("grpc"))
    );
    assert_eq!(
        c["livenessProbe"]["grpc"]["port"].as_i64(),
        Some(by_name("grpc"))
    );
    // …on the health service names orascale serves.
    let app = std::fs::read_to_string(root().join("src/app.rs")).unwrap();
    for probe in ["readinessProbe", "livenessProbe"] {
        let svc = s(&c[probe]["grpc"]["service"]);
        assert!(
            app.contains(&format!("\"{svc}\"")),
            "health service {svc:?} is not served"
        );
    }
    let toml: toml::Table = toml::from_str(
        &std::fs::read_to_string(root().join("deploy/kubernetes/base/orascale.toml")).unwrap(),
    )
    .unwrap();
    for (key, port) in [("grpc_listen", "grpc"), ("metrics_listen", "metrics")] {
        let listen = toml[key].as_str().unwrap();
        assert!(
            listen.ends_with(&format!(":{}", by_name(port))),
            "{key} {listen}"
        );
    }

    // The config path: the CMD's, the Deployment's, and the ConfigMap's mount.
    let cmd = *instruction(&lines, "CMD ").last().expect("CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    let config_path = cmd[cmd.iter().position(|a| a == "--config").unwrap() + 1].clone();
    let args: Vec<&str> = c["args"].as_sequence().unwrap().iter().map(s).collect();
    assert_eq!(args, cmd.iter().map(String::as_str).collect::<Vec<_>>());
    let mount = |volume: &str| {
        c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("no mount of {volume}"))["mountPath"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let volume = |name: &str| {
        pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(config_path, format!("{}/orascale.toml", mount("config")));
    assert_eq!(volume("config")["configMap"]["name"], "orascale-config");
    let kustomization =
        std::fs::read_to_string(root().join("deploy/kubernetes/base/kustomization.yaml")).unwrap();
    assert!(kustomization.contains("- orascale.toml"));

    // TNS_ADMIN is the wallet volume's mount; /tmp is the writable one.
    let tns = lines
        .iter()
        .find_map(|l| l.strip_prefix("ENV TNS_ADMIN="))
        .expect("ENV TNS_ADMIN");
    assert_eq!(tns, mount("oracle-wallet"));
    assert_eq!(volume("oracle-wallet")["secret"]["optional"], true);
    assert_eq!(mount("tmp"), "/tmp");
    assert!(volume("tmp")["emptyDir"].is_mapping());
    assert!(lines.iter().any(|l| l == "VOLUME [\"/tmp\"]"));

    // Passwords: each password_file is a key of the mounted Secret.
    let secret = manifest("secret.example.yaml");
    let secrets_dir = mount("db-credentials");
    assert_eq!(
        volume("db-credentials")["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    for (name, conn) in toml["connections"].as_table().unwrap() {
        let Some(file) = conn.get("password_file") else {
            continue;
        };
        let key = file
            .as_str()
            .unwrap()
            .strip_prefix(&format!("{secrets_dir}/"))
            .unwrap_or_else(|| panic!("{name}: password_file outside {secrets_dir}"));
        assert!(
            secret["stringData"][key].is_string(),
            "{name}: no key {key} in the Secret"
        );
    }

    // Termination grace outlasts the drain: shutdown_delay + 5 s.
    let delay = humantime::parse_duration(toml["shutdown_delay"].as_str().unwrap()).unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > delay.as_secs() + 5,
        "grace {grace}s, drain {}s",
        delay.as_secs() + 5
    );

    // Both variants; Instant Client version and checksum pinned by build arguments, verified.
    assert!(lines.iter().any(|l| l.starts_with("ARG WITH_ORACLE=")));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ARG INSTANT_CLIENT_URL=") && l.contains("basiclite"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ARG INSTANT_CLIENT_SHA256"))
    );
    assert!(lines.iter().any(|l| l.contains("sha256sum -c")));
    assert!(lines.iter().any(|l| l.contains("ld.so.conf.d")));
    assert!(lines.iter().any(|l| l.contains("libaio.so.1")));
    for label in ["title", "source", "licenses", "version"] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("org.opencontainers.image.{label}="))),
            "OCI label {label}"
        );
    }
}

/// Every external trigger of deploy/examples/: (file, namespace, metadata).
/// A trigger of an example: its file, namespace and metadata.
type ExampleTrigger = (String, String, Vec<(String, String)>);

fn example_triggers() -> Vec<ExampleTrigger> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for d in docs(&std::fs::read_to_string(&f).unwrap()) {
            assert!(
                matches!(kind(&d), "ScaledObject" | "ScaledJob"),
                "{name}: unexpected {}",
                kind(&d)
            );
            let ns = s(&d["metadata"]["namespace"]).to_string();
            if kind(&d) == "ScaledObject" {
                assert!(d["spec"]["scaleTargetRef"]["name"].is_string(), "{name}");
            } else {
                assert!(d["spec"]["jobTargetRef"]["template"].is_mapping(), "{name}");
            }
            for t in d["spec"]["triggers"].as_sequence().unwrap() {
                let ty = s(&t["type"]);
                assert!(ty == "external" || ty == "external-push", "{name}: {ty}");
                if kind(&d) == "ScaledJob" {
                    assert_eq!(ty, "external", "{name}: KEDA does not push to ScaledJobs");
                }
                let meta = t["metadata"]
                    .as_mapping()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (s(k).to_string(), s(v).to_string()))
                    .collect();
                out.push((name.clone(), ns.clone(), meta));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_trigger_is_accepted_by_the_real_binary() {
    let config = root().join("deploy/kubernetes/base/orascale.toml");
    let toml: toml::Table = toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let connections = toml["connections"].as_table().unwrap();
    let triggers = example_triggers();
    assert!(triggers.len() >= 6, "{}", triggers.len());
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(&["--config", &config.to_string_lossy()], dir.path());
    guard(std::time::Duration::from_secs(60), async {
        let mut c = client(server.grpc).await;
        for (file, ns, meta) in &triggers {
            let get = |k: &str| {
                meta.iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
            };
            let conn = get("connection").unwrap_or_else(|| panic!("{file}: no connection"));
            assert!(
                connections.contains_key(conn),
                "{file}: connection {conn} is not in orascale.toml"
            );
            let address = get("scalerAddress").unwrap();
            assert!(
                address == "orascale.orascale.svc.cluster.local:9090"
                    || address == "orascale.orascale.svc:9090",
                "{file}: scalerAddress {address} is not the Service"
            );
            let pairs: Vec<(&str, &str)> =
                meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut obj = object("example", &pairs);
            obj.namespace = ns.clone();
            let spec = c
                .get_metric_spec(deadline(obj))
                .await
                .unwrap_or_else(|e| panic!("{file} ({ns}): {e:?}"))
                .into_inner();
            assert_eq!(spec.metric_specs.len(), 1, "{file}");
        }
    })
    .await;
    assert!(!server.log_text().contains("panicked"));
}
