//! The crate's modules form layers, with no cycle (issue 13: "no module cycle inside a crate"; the
//! layers are listed at the top of `src/lib.rs`). Read from the source text, so a `use` or a call
//! that points back up fails here with the cycle named.
//!
//! A module is a top-level file of `src/` with its children (`service/*.rs` count as `service`,
//! `tls/*.rs` as `tls`, `admin_model.rs`, `admin_governance.rs` and `admin_evaluations.rs` —
//! children of `admin` — as `admin`). Module A depends on B
//! when A's code (comments left out)
//! - names `crate::B` (`use crate::B::…`, `crate::B::f()`, `use crate::{B::…}`), or
//! - calls a method of `Shared` that B defines (`self.end_job(…)`, `shared.drive(…)`): the logic
//!   of the coordinator lives in `impl Shared` blocks spread over modules, and a call is a
//!   dependency even though no path names the module.
//!
//! `super::` is not counted: in this crate it only ever names the module itself (a `tests` child)
//! or the parent of a child file, which is the same module here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Source files of the crate and the module each belongs to.
fn files() -> Vec<(String, PathBuf)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&src).expect("src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            let module = path.file_name().unwrap().to_string_lossy().into_owned();
            for child in std::fs::read_dir(&path).expect("module dir") {
                out.push((module.clone(), child.expect("dir entry").path()));
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let module = match stem.as_str() {
                "admin_model" | "admin_governance" | "admin_registry" | "admin_evaluations" => {
                    "admin".to_owned()
                }
                _ => stem,
            };
            out.push((module, path));
        }
    }
    out.sort();
    out
}

/// The code of a file without its comments (line comments; the crate has no block comments).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("source file");
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string literal ("https://…") would cut the line short; only the
            // crate's paths matter here and none follows a URL on the same line.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Modules named as `crate::m` (or inside `crate::{…}`) in `code`.
fn named_modules(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for part in group.split(',') {
                let name = ident_at(part.trim());
                if modules.contains(name) {
                    out.insert(name.to_owned());
                }
            }
        } else {
            let name = ident_at(rest);
            // Anything else is an item of the crate root (`crate::Limits`): the root is the top
            // layer, so naming it from a module is a cycle too.
            out.insert(if modules.contains(name) {
                name.to_owned()
            } else {
                "lib".to_owned()
            });
        }
    }
    out
}

/// Names of the methods each module defines in its `impl Shared` blocks.
fn shared_methods(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in code.lines() {
        if line.starts_with("impl Shared {") {
            inside = true;
        } else if inside && line.starts_with('}') {
            inside = false;
        } else if inside
            && let Some(t) = line.strip_prefix("    ")
            && !t.starts_with(' ')
        {
            // A method: `fn`, `pub fn`, `pub(crate) async fn`, … at the block's indentation.
            let t = t
                .strip_prefix("pub(crate) ")
                .or_else(|| t.strip_prefix("pub "))
                .unwrap_or(t);
            let t = t.strip_prefix("async ").unwrap_or(t);
            if let Some(f) = t.strip_prefix("fn ") {
                out.push(ident_at(f).to_owned());
            }
        }
    }
    out
}

/// Module → modules it depends on.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = files();
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let codes: Vec<(String, String)> = files.iter().map(|(m, p)| (m.clone(), code(p))).collect();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for (m, c) in &codes {
        for f in shared_methods(c) {
            if let Some(other) = owner.insert(f.clone(), m.clone()) {
                assert_eq!(&other, m, "Shared::{f} is defined in two modules");
            }
        }
    }
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, c) in &codes {
        let deps = g.entry(m.clone()).or_default();
        deps.extend(named_modules(c, &modules));
        for (f, def) in &owner {
            let called = ["self.", "shared."]
                .iter()
                .any(|recv| c.contains(&format!("{recv}{f}(")));
            if called {
                deps.insert(def.clone());
            }
        }
        deps.remove(m);
    }
    g
}

/// A cycle through `node`, if there is one (depth-first search).
fn find_cycle(
    g: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|p| p == node) {
        let mut cycle = path[i..].to_vec();
        cycle.push(node.to_owned());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_owned());
    for dep in g.get(node).into_iter().flatten() {
        if let Some(c) = find_cycle(g, dep, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(node.to_owned());
    None
}

#[test]
fn the_modules_form_layers_without_a_cycle() {
    let g = graph();
    // Printed for `--nocapture`: the dependency list the layering in lib.rs is read from.
    for (m, deps) in &g {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!("{m} -> {}", deps.join(", "));
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(cycle) = find_cycle(&g, m, &mut Vec::new(), &mut done) {
            panic!("module cycle: {}", cycle.join(" -> "));
        }
    }
    // The bottom of the layers stays at the bottom: the shared state names no logic module.
    let state = &g["state"];
    for logic in [
        "jobs", "job_end", "heal", "recovery", "submit", "service", "admin",
    ] {
        assert!(!state.contains(logic), "state depends on {logic}");
    }
}

#[test]
fn the_check_sees_paths_and_calls() {
    let modules: BTreeSet<String> = ["jobs", "state"].map(String::from).into();
    let named = named_modules(
        "use crate::{jobs::X, state::Y};\nlet t = crate::Limits::default();",
        &modules,
    );
    assert_eq!(named, ["jobs", "lib", "state"].map(String::from).into());
    let methods = shared_methods(
        "impl Shared {\n    pub async fn drive(&self) {}\n    fn halt(&self) {\n        let f = |x| x;\n    }\n}\nfn outside() {}\n",
    );
    assert_eq!(methods, ["drive", "halt"]);
}
