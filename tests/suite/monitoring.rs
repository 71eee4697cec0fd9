//! deploy/monitoring: the PrometheusRule and the Grafana dashboard parse, and every metric they
//! reference is one orascale exports (orascale::telemetry::metrics::ALL, which the observability
//! test checks against a live /metrics).

use std::collections::BTreeSet;

use orascale::telemetry::metrics::ALL;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `orascale_*` identifiers in a PromQL expression, histogram suffixes removed.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("orascale_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        out.insert(base.to_string());
        rest = &tail[end..];
    }
    out
}

fn balanced(expr: &str) -> bool {
    let mut stack = Vec::new();
    let mut in_string = false;
    for c in expr.chars() {
        if c == '"' {
            in_string = !in_string;
            continue;
        }
        if in_string {
            continue;
        }
        let open = match c {
            '(' | '[' | '{' => {
                stack.push(c);
                continue;
            }
            ')' => '(',
            ']' => '[',
            '}' => '{',
            _ => continue,
        };
        if stack.pop() != Some(open) {
            return false;
        }
    }
    stack.is_empty() && !in_string
}

#[test]
fn prometheus_rules_parse_and_reference_only_exported_metrics() {
    let text =
        std::fs::read_to_string(root().join("deploy/monitoring/prometheusrule.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    assert_eq!(doc["kind"], "PrometheusRule");
    assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
    let operations = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let groups = doc["spec"]["groups"].as_sequence().expect("groups");
    let mut alerts = 0;
    let mut referenced = BTreeSet::new();
    for g in groups {
        for rule in g["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name");
            let expr = rule["expr"].as_str().expect("expr");
            assert!(balanced(expr), "{name}: unbalanced expression {expr}");
            assert!(rule["for"].as_str().is_some(), "{name}: for");
            assert!(
                ["critical", "warning", "info"]
                    .contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
                "{name}: severity"
            );
            for key in ["summary", "description", "runbook_url"] {
                assert!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{name}: {key}"
                );
            }
            // The runbook anchor exists in docs/operations.md.
            let anchor = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap()
                .rsplit('#')
                .next()
                .unwrap();
            assert_eq!(anchor, name.to_lowercase());
            assert!(
                operations.contains(&format!("### {name}\n")),
                "{name}: no runbook section in docs/operations.md"
            );
            let used = metrics_in(expr);
            assert!(
                !used.is_empty() || expr.contains("up{"),
                "{name}: references no metric"
            );
            referenced.extend(used);
            alerts += 1;
        }
    }
    assert!(alerts >= 5, "{alerts}");
    for m in &referenced {
        assert!(
            ALL.contains(&m.as_str()),
            "the rules reference {m}, which orascale does not export"
        );
    }
    // The alerts are covered: down, database errors, stale samples, latency near timeout.
    for needed in [
        "OrascaleDown",
        "OrascaleDatabaseErrors",
        "OrascaleStaleSamples",
        "OrascalePollLatencyNearTimeout",
    ] {
        assert!(text.contains(&format!("alert: {needed}")), "{needed}");
    }
}

#[test]
fn grafana_dashboard_parses_and_references_only_exported_metrics() {
    let text =
        std::fs::read_to_string(root().join("deploy/monitoring/grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dash["uid"], "orascale");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    let mut referenced = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_i64().expect("panel id")),
            "duplicate panel id"
        );
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            assert!(balanced(expr), "{expr}");
            let used = metrics_in(expr);
            assert!(!used.is_empty(), "{expr}");
            referenced.extend(used);
        }
    }
    for m in &referenced {
        assert!(
            ALL.contains(&m.as_str()),
            "the dashboard references {m}, which orascale does not export"
        );
    }
    // The headline metrics are on it.
    for m in [
        "orascale_poll_duration_seconds",
        "orascale_polls_total",
        "orascale_sample_age_seconds",
        "orascale_pool_waiting",
    ] {
        assert!(referenced.contains(m), "{m} not on the dashboard");
    }
}

#[test]
fn the_extractor_finds_names() {
    let got = metrics_in(
        "histogram_quantile(0.9, rate(orascale_poll_duration_seconds_bucket[5m])) / orascale_pollers",
    );
    assert_eq!(
        got,
        ["orascale_poll_duration_seconds", "orascale_pollers"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert!(!balanced("sum(rate(x[5m])"));
}
