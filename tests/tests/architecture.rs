//! The crate graph ARCHITECTURE.md draws, checked over `cargo metadata`, and
//! no import circle between the modules of a library crate.
//!
//! Target graph: core ← kafka ← {consumer, publisher, subscriber};
//! core ← trainer ← checkpoint; the `freshet` binary (and these tests) on top.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Per library crate: the workspace crates it may depend on (normal
/// dependencies), and the external crates it must not link.
const RULES: [(&str, &[&str], &[&str]); 7] = [
    ("freshet-core", &[], &["rdkafka", "rocksdb", "tokio", "axum"]),
    ("freshet-kafka", &["freshet-core"], &["rocksdb", "axum"]),
    ("freshet-consumer", &["freshet-core", "freshet-kafka"], &["rocksdb", "axum"]),
    ("freshet-publisher", &["freshet-core", "freshet-kafka"], &["rocksdb", "axum"]),
    ("freshet-subscriber", &["freshet-core", "freshet-kafka"], &["rocksdb"]),
    ("freshet-trainer", &["freshet-core"], &["rdkafka", "rocksdb", "tokio", "axum"]),
    ("freshet-checkpoint", &["freshet-core", "freshet-trainer"], &["rdkafka", "tokio", "axum"]),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate sits in the workspace").to_path_buf()
}

/// `cargo metadata` of the workspace (no registry access: `--no-deps`).
fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

/// Per workspace package: its normal (not dev, not build) dependencies.
fn normal_dependencies(metadata: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let packages = metadata["packages"].as_array().expect("packages");
    packages
        .iter()
        .map(|package| {
            let name = package["name"].as_str().expect("name").to_owned();
            let deps = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|dep| dep["kind"].is_null())
                .map(|dep| dep["name"].as_str().expect("dependency name").to_owned())
                .collect();
            (name, deps)
        })
        .collect()
}

#[test]
fn every_library_crate_depends_only_on_what_the_architecture_allows() {
    let graph = normal_dependencies(&metadata());
    let workspace: BTreeSet<&str> = graph.keys().map(String::as_str).collect();
    let mut broken = Vec::new();
    for (name, allowed, forbidden) in RULES {
        let deps = graph.get(name).unwrap_or_else(|| panic!("{name} is a workspace member"));
        for dep in deps {
            if workspace.contains(dep.as_str()) && !allowed.contains(&dep.as_str()) {
                broken.push(format!("{name} depends on {dep}"));
            }
            if forbidden.contains(&dep.as_str()) {
                broken.push(format!("{name} links {dep}"));
            }
        }
    }
    let ruled: BTreeSet<&str> = RULES.iter().map(|(name, _, _)| *name).collect();
    for name in &workspace {
        if !ruled.contains(name) && !["freshet", "freshet-e2e"].contains(name) {
            broken.push(format!("{name} is not in the architecture's rules"));
        }
    }
    assert!(broken.is_empty(), "the crate graph drifted from ARCHITECTURE.md: {broken:#?}");
}

/// The top-level modules of `src` each file refers to through `crate::`.
fn module_references(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut references = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("src") {
        let path = entry.expect("entry").path();
        let Some(module) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
        if path.extension().is_none_or(|e| e != "rs") || module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source");
        // Test modules may reach anywhere: only the code above them counts.
        // Doc links (`[`crate::X`]`) are no imports: comment lines are skipped.
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut used = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && name != module {
                used.insert(name);
            }
        }
        // `use crate::{a::X, b::Y}` groups.
        for (at, _) in code.match_indices("use crate::{") {
            let group = &code[at + "use crate::{".len()..];
            let group = &group[..group.find("};").unwrap_or(group.len())];
            for part in group.split(',') {
                let name: String = part.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() && name != module {
                    used.insert(name);
                }
            }
        }
        references.insert(module, used);
    }
    references
}

/// A circle of modules that refer to each other, if any.
fn find_circle(references: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        module: &str,
        references: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == module) {
            let mut circle = path[start..].to_vec();
            circle.push(module.to_owned());
            return Some(circle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for next in references.get(module).into_iter().flatten() {
            if references.contains_key(next)
                && let Some(circle) = visit(next, references, path, done)
            {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    references.keys().find_map(|module| visit(module, references, &mut Vec::new(), &mut done))
}

#[test]
fn the_circle_finder_finds_circles() {
    let graph = |edges: &[(&str, &str)]| {
        let mut references: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            references.entry((*from).to_owned()).or_default().insert((*to).to_owned());
            references.entry((*to).to_owned()).or_default();
        }
        references
    };
    assert_eq!(find_circle(&graph(&[("a", "b"), ("b", "c")])), None);
    let circle = find_circle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])).expect("a circle");
    assert_eq!(circle.first(), circle.last());
    assert_eq!(circle.len(), 4);
}

#[test]
fn no_library_crate_has_an_import_circle_between_its_modules() {
    let root = workspace_root();
    let mut circles = Vec::new();
    for (name, _, _) in RULES {
        let src = root.join("crates").join(name).join("src");
        if let Some(circle) = find_circle(&module_references(&src)) {
            circles.push(format!("{name}: {}", circle.join(" -> ")));
        }
    }
    assert!(circles.is_empty(), "modules that import each other: {circles:#?}");
}
