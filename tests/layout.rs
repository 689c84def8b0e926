//! The driver's modules depend on each other in layers: at every level of the tree,
//! no two sibling modules reach each other, directly or through others. A reader can
//! then learn a module by reading downwards only. This reads `src/` as text (every
//! `use`, `super::` and `crate::` path), projects each reference onto the siblings
//! it connects, and fails on any circle, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path of a source file: `src/controller/family.rs` is `controller::family`,
/// `src/controller/mod.rs` is `controller`, `src/lib.rs` is the root (empty).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module paths a file refers to, resolved against the known modules: the
/// longest known prefix of each `crate::`/`super::`/`self::` path.
fn references(
    module: &[String],
    is_dir_module: bool,
    text: &str,
    known: &BTreeSet<Vec<String>>,
) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    // `super` of a file module is its directory's module; of a mod.rs, the parent.
    let parent: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
    let here: Vec<String> = module.to_vec();
    let code: String =
        text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
    let mut rest = code.as_str();
    while let Some(i) = rest.find(['c', 's']) {
        let tail = &rest[i..];
        let boundary = i == 0 || !rest[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        let (base, after) = if boundary && tail.starts_with("crate::") {
            (Vec::new(), &tail[7..])
        } else if boundary && tail.starts_with("super::") {
            (parent.clone(), &tail[7..])
        } else if boundary && tail.starts_with("self::") && is_dir_module {
            (here.clone(), &tail[6..])
        } else {
            rest = &tail[1..];
            continue;
        };
        let mut path = base;
        let mut best = None;
        for seg in after.split("::") {
            let name: String = seg.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if name.is_empty() || name == "super" {
                break;
            }
            path.push(name.clone());
            if known.contains(&path) {
                best = Some(path.clone());
            }
            if name.len() != seg.len() {
                break;
            }
        }
        if let Some(b) = best {
            out.insert(b);
        }
        rest = &tail[1..];
    }
    out
}

#[test]
fn no_two_sibling_modules_reach_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> =
        files.iter().map(|f| (module_of(&src, f), f.clone())).collect();
    let known: BTreeSet<Vec<String>> = modules.keys().cloned().collect();
    // Edges between siblings: a reference from a to b counts between the children of
    // their deepest common ancestor that contain them (parent-child references are how
    // a module is built from its parts, not a layer crossing).
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (m, f) in &modules {
        let text = std::fs::read_to_string(f).unwrap();
        let dir_module = matches!(f.file_stem().and_then(|s| s.to_str()), Some("mod" | "lib" | "main"));
        for r in references(m, dir_module, &text, &known) {
            let common = m.iter().zip(&r).take_while(|(a, b)| a == b).count();
            if common >= m.len() || common >= r.len() {
                continue;
            }
            edges.entry(m[..=common].to_vec()).or_default().insert(r[..=common].to_vec());
        }
    }
    // Every circle, found by a depth-first search from each module.
    let mut circles = BTreeSet::new();
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, path)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    let mut c: Vec<String> = path.iter().map(|m| m.join("::")).collect();
                    let min = c.iter().enumerate().min_by_key(|(_, n)| n.to_string()).unwrap().0;
                    c.rotate_left(min);
                    circles.insert(c.join(" -> "));
                } else if !path.contains(next) && path.len() < 6 {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "sibling modules reach each other (move what both need below them):\n{}",
        circles.into_iter().collect::<Vec<_>>().join("\n")
    );
}
