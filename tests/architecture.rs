//! The house rules of docs/ARCHITECTURE.md, checked: which crate may depend on which, and
//! no import loops between the files of a crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace's own crates each member lists under `[dependencies]` (build-time
/// dependencies; tests may use more).
fn own_dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let Some(deps) = doc.get("dependencies").and_then(|d| d.as_table()) else {
        return BTreeSet::new();
    };
    deps.iter()
        .filter(|(_, spec)| spec.get("path").is_some())
        .map(|(name, _)| name.clone())
        .collect()
}

#[test]
fn crates_depend_only_on_what_the_map_allows() {
    // docs/ARCHITECTURE.md, "Crates and who may import whom".
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("federation", &[][..]),
        ("storage", &[][..]),
        ("service", &["federation", "storage"][..]),
        ("issuer", &["federation", "service", "storage"][..]),
        ("wallet", &["federation", "storage"][..]),
        ("gateway", &["federation", "service", "storage"][..]),
        ("visibility", &["federation", "service", "storage"][..]),
        (
            "test-support",
            &["federation", "storage", "wallet", "gateway", "synth"][..],
        ),
        ("synth", &[][..]),
    ]);
    let workspace: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    let members: Vec<String> = workspace["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    for member in &members {
        let rules = allowed
            .get(member.as_str())
            .unwrap_or_else(|| panic!("crate {member} is not on the map in this test"));
        let deps = own_dependencies(&root().join(member).join("Cargo.toml"));
        for dep in &deps {
            assert!(
                rules.contains(&dep.as_str()),
                "{member} depends on {dep}, which the crate map does not allow"
            );
        }
    }
    assert_eq!(
        members.len(),
        allowed.len(),
        "every crate on the map exists"
    );
}

/// The file a module path names inside `src`, if it is a file of its own.
fn module_file(src: &Path, segments: &[&str]) -> Option<PathBuf> {
    let mut found = None;
    for n in 1..=segments.len() {
        let rel: PathBuf = segments[..n].iter().collect();
        let as_file = src.join(&rel).with_extension("rs");
        let as_dir = src.join(&rel).join("mod.rs");
        if as_file.is_file() {
            found = Some(as_file);
        } else if as_dir.is_file() {
            found = Some(as_dir);
        } else {
            break;
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// What a file's code (up to its test module, comments left out) takes from other files
/// of its crate through `crate::` paths.
fn file_imports(src: &Path, file: &Path) -> BTreeSet<PathBuf> {
    let text = std::fs::read_to_string(file).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            // `use crate::{a, b::c}` names several modules at once.
            let groups: Vec<&str> = match after.strip_prefix('{') {
                Some(inner) => inner.split([',', '}']).map(str::trim).collect(),
                None => vec![after],
            };
            for group in groups {
                let path: Vec<&str> = group
                    .split("::")
                    .map(|s| s.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_')))
                    .take_while(|s| {
                        !s.is_empty()
                            && s.chars()
                                .all(|c| c.is_lowercase() || c == '_' || c.is_ascii_digit())
                    })
                    .collect();
                if let Some(target) = module_file(src, &path) {
                    if target != file {
                        out.insert(target);
                    }
                }
            }
            rest = after;
        }
    }
    out
}

#[test]
fn no_file_imports_another_that_imports_it_back() {
    let crates = [
        "federation",
        "storage",
        "service",
        "issuer",
        "wallet",
        "gateway",
        "visibility",
    ];
    let mut loops = Vec::new();
    for krate in crates {
        let src = root().join(krate).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let graph: BTreeMap<PathBuf, BTreeSet<PathBuf>> = files
            .iter()
            .map(|f| (f.clone(), file_imports(&src, f)))
            .collect();
        // Depth-first search for a path back to where it started.
        for start in graph.keys() {
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            let mut seen = BTreeSet::new();
            while let Some((at, trail)) = stack.pop() {
                for next in graph.get(&at).into_iter().flatten() {
                    if next == start {
                        let names: Vec<String> = trail
                            .iter()
                            .map(|p| p.strip_prefix(root()).unwrap().display().to_string())
                            .collect();
                        loops.push(names.join(" -> "));
                    } else if seen.insert(next.clone()) {
                        let mut longer = trail.clone();
                        longer.push(next.clone());
                        stack.push((next.clone(), longer));
                    }
                }
            }
        }
    }
    assert!(
        loops.is_empty(),
        "import loops between files:\n{}",
        loops.join("\n")
    );
}
