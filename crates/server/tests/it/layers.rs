//! The server's shape (ARCHITECTURE.md): three layers — front doors → services → foundation —
//! importing only downwards, no import cycle between its modules, and no HTTP type in a
//! service. Read from the source, so a change that breaks the shape fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module of `crates/server/src` and the `crate::…` modules its files name.
fn imports() -> BTreeMap<String, (BTreeSet<String>, String)> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut map: BTreeMap<String, (BTreeSet<String>, String)> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&root).unwrap().to_string_lossy().to_string();
        let module = rel.trim_end_matches(".rs").split('/').next().unwrap().to_string();
        let code: String = std::fs::read_to_string(&f)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let entry = map.entry(module.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if !name.is_empty() && name != module {
                entry.0.insert(name);
            }
        }
        entry.1.push_str(&code);
    }
    map
}

const FRONT_DOORS: &[&str] = &["http", "openapi", "mcp", "console", "reports"];
const SERVICES: &[&str] = &[
    "authority",
    "reporting",
    "siem",
    "facts",
    "pipeline",
    "approvals",
    "execution",
    "halt",
    "breaker",
    "explain",
    "tasks",
    "sweeper",
    "node",
    "admin",
    "policy_dir",
    "slack",
];
/// `notify` is here: its handle lives in the shared state, and it needs only the records.
const FOUNDATION: &[&str] =
    &["state", "identity", "auth", "session", "error", "input", "model", "metrics", "limits", "tls", "notify"];
/// What composes the layers: the crate root, building the state, serving.
const ROOTS: &[&str] = &["lib", "startup", "serve"];

fn layer(m: &str) -> usize {
    if FOUNDATION.contains(&m) {
        0
    } else if SERVICES.contains(&m) {
        1
    } else if FRONT_DOORS.contains(&m) {
        2
    } else if ROOTS.contains(&m) {
        3
    } else {
        panic!("module `{m}` is in no layer: add it to tests/it/layers.rs and ARCHITECTURE.md")
    }
}

#[test]
fn modules_import_only_their_own_layer_or_below() {
    let graph = imports();
    let mut wrong = Vec::new();
    for (m, (uses, _)) in &graph {
        // Names at the crate root (`crate::router`) are the root's re-exports, not modules.
        for u in uses.iter().filter(|u| graph.contains_key(u.as_str()) && layer(u) > layer(m)) {
            wrong.push(format!("{m} (layer {}) imports {u} (layer {})", layer(m), layer(u)));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn no_service_names_an_http_type() {
    for (m, (_, code)) in imports() {
        if SERVICES.contains(&m.as_str()) {
            assert!(!code.contains("axum"), "service `{m}` names axum");
        }
    }
}

#[test]
fn there_is_no_import_cycle() {
    let graph = imports();
    // Depth-first search for a back edge.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, (BTreeSet<String>, String)>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = path.iter().position(|p| *p == m) {
            panic!("import cycle: {} -> {m}", path[i..].join(" -> "));
        }
        path.push(m);
        for u in graph.get(m).map(|(u, _)| u.iter()).into_iter().flatten() {
            if graph.contains_key(u.as_str()) {
                visit(u, graph, path, done);
            }
        }
        path.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}
