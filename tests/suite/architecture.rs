//! The layout's rule, checked: dependencies between the top-level modules of `src/` point one
//! way (no cycle), the edges the architecture forbids do not come back, and `telemetry` is a
//! leaf (docs/architecture.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the other top-level modules its files name as `crate::<module>`.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut files = Vec::new();
        let mut stack = vec![path.clone()];
        while let Some(p) = stack.pop() {
            if p.is_dir() {
                stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if p.extension().is_some_and(|e| e == "rs") {
                files.push(p);
            }
        }
        let deps = out.entry(name.clone()).or_default();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + 7..];
                // `crate::{a, b::c}` names several modules at once.
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => top_level_items(group),
                    None => vec![rest],
                };
                for n in names {
                    let module: String = n
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !module.is_empty() && module != name {
                        deps.insert(module);
                    }
                }
            }
        }
    }
    out
}

/// The items of a `{…}` group up to its closing brace, split at its own commas only, so that
/// `crate::{engine::{A, B}, telemetry}` names both `engine` and `telemetry`.
fn top_level_items(group: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0usize, 0usize, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                out.push(group[start..i].trim());
                return out;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(group[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(group[start..].trim());
    out
}

#[test]
fn groups_are_split_at_their_own_commas() {
    assert_eq!(
        top_level_items("engine::{A, B}, telemetry} more"),
        vec!["engine::{A, B}", "telemetry"]
    );
}

#[test]
fn top_level_modules_form_no_cycle_and_forbidden_edges_stay_gone() {
    let edges = edges();
    // Depth-first search for a cycle, reporting its path.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == m) {
            panic!("dependency cycle: {} -> {m}", path[i..].join(" -> "));
        }
        path.push(m.to_string());
        for d in edges.get(m).into_iter().flatten() {
            visit(d, edges, path, done);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        visit(m, &edges, &mut Vec::new(), &mut done);
    }
    for (from, to) in [
        ("config", "tls"),
        ("config", "metadata"),
        ("config", "trigger"),
        ("trigger", "metadata"),
        ("trigger", "engine"),
        ("metadata", "engine"),
        ("telemetry", "engine"),
        ("telemetry", "metadata"),
        ("telemetry", "source"),
        ("grpc", "source"),
        ("source", "engine"),
        // The library's server never names the CLI: `serve --demo` is prepared by main.rs.
        ("app", "cli"),
    ] {
        assert!(
            !edges.get(from).is_some_and(|d| d.contains(to)),
            "{from} must not depend on {to}: {:?}",
            edges[from]
        );
    }
    // Telemetry is a leaf: names, buckets, the exporter and logging. Components are given
    // their series (with their labels) at construction; nothing in it calls up.
    assert_eq!(
        edges.get("telemetry").cloned().unwrap_or_default(),
        BTreeSet::new(),
        "telemetry must not depend on another module of the crate"
    );
}
