//! The layout's rule, checked: dependencies between the top-level modules of `src/` point one
//! way (no cycle), the edges the architecture forbids do not come back, and `telemetry` is a
//! leaf (docs/architecture.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the other top-level modules its files name, as `crate::<module>` or
/// through enough `super::` to climb to the crate's root (inline modules such as `mod tests`
/// count as a level). `use crate as …` would hide names from this scan, so it is refused.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut tops = BTreeSet::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib" || name == "main" {
            continue;
        }
        tops.insert(name.clone());
        let mut stack = vec![path.clone()];
        while let Some(p) = stack.pop() {
            if p.is_dir() {
                stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if p.extension().is_some_and(|e| e == "rs") {
                files.push((name.clone(), p));
            }
        }
    }
    let mut out: BTreeMap<String, BTreeSet<String>> =
        tops.iter().map(|t| (t.clone(), BTreeSet::new())).collect();
    for (name, f) in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text.contains("crate as "),
            "{}: `crate as …` hides module names from this check",
            f.display()
        );
        let depth = file_depth(&src, &f);
        let deps = out.get_mut(&name).unwrap();
        let mut named = |rest: &str| {
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
                if tops.contains(&module) && module != name {
                    deps.insert(module);
                }
            }
        };
        for (i, _) in text.match_indices("crate::") {
            named(&text[i + 7..]);
        }
        for (i, supers) in super_chains(&text) {
            if supers >= depth + inline_depth(&text[..i]) {
                named(&text[i + supers * 7..]);
            }
        }
    }
    out
}

/// How many levels below the crate's root the module of file `f` is: `src/engine/mod.rs` 1,
/// `src/engine/registry.rs` 2, `src/grpc.rs` 1.
fn file_depth(src: &Path, f: &Path) -> usize {
    let rel = f.strip_prefix(src).unwrap();
    let parts = rel.components().count();
    if rel.file_name().is_some_and(|n| n == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

/// Each run of `super::` (not part of a longer name), with where it starts and how many.
fn super_chains(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("super::") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut n = 0;
        while text[i + n * 7..].starts_with("super::") {
            n += 1;
        }
        out.push((i, n));
    }
    out
}

/// How many inline modules (`mod name {`) are open at the end of `text`: braces counted
/// outside comments and string literals (raw strings aside, which hold no braces here).
fn inline_depth(text: &str) -> usize {
    let (mut depth, mut open) = (0usize, Vec::<usize>::new());
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let trimmed = code.trim_start();
        let opens_mod = ["mod ", "pub mod ", "pub(crate) mod ", "pub(super) mod "]
            .iter()
            .any(|p| trimmed.starts_with(p))
            && code.trim_end().ends_with('{');
        let mut in_str = false;
        let mut prev = ' ';
        for c in code.chars() {
            match c {
                '"' if prev != '\\' && prev != '\'' => in_str = !in_str,
                '{' if !in_str => depth += 1,
                '}' if !in_str => {
                    depth = depth.saturating_sub(1);
                    while open.last().is_some_and(|&d| d > depth) {
                        open.pop();
                    }
                }
                _ => {}
            }
            prev = c;
        }
        if opens_mod {
            open.push(depth);
        }
    }
    open.len()
}

#[test]
fn super_paths_that_climb_to_the_root_count_as_crate_paths() {
    let text = "mod tests {\n    fn f() { super::super::x(); }\n}\nfn g() { super::y(); }";
    let chains = super_chains(text);
    assert_eq!(chains.iter().map(|c| c.1).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(inline_depth(&text[..chains[0].0]), 1, "inside mod tests");
    assert_eq!(inline_depth(&text[..chains[1].0]), 0, "after it closed");
    let src = Path::new("/x/src");
    assert_eq!(file_depth(src, Path::new("/x/src/engine/mod.rs")), 1);
    assert_eq!(file_depth(src, Path::new("/x/src/engine/registry.rs")), 2);
    assert_eq!(file_depth(src, Path::new("/x/src/grpc.rs")), 1);
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
