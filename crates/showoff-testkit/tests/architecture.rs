//! The architecture, checked on the source itself (docs/architecture.md, "Layers of the
//! server"): in `showoff-server` no module imports a module of a higher layer; in every crate
//! the module import graph has no cycle; no source file outgrows its job, and no function
//! outside tests and tables grows past the length where it does several jobs.
//!
//! Imports are the `crate::`, `super::` and `self::` paths of each file with comments and the
//! trailing `#[cfg(test)]` module (or the helpers tests and fuzz targets share) removed; a path
//! names the longest module it starts with. A module naming its own children (declaring and re-exporting them) is structure, not an
//! import, and is not an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers of `showoff-server`, lowest first: a module may import its own rank or lower.
const SERVER_LAYERS: &[(&str, u8)] = &[
    ("config", 0),
    ("stats", 1),
    ("audit", 1),
    ("limits", 1),
    ("tls", 1),
    ("auth", 1),
    ("listen", 1),
    ("drain", 1),
    ("state", 2),
    ("transport", 3),
    ("control", 4),
    ("edge", 5),
    ("ops", 6),
    ("server", 7),
    // The fuzz targets' entry points drive every layer, like the composition root.
    ("fuzzing", 7),
];

/// Rank of the crate root (`lib.rs`): it re-exports everything, so nothing below may use it.
const ROOT_RANK: u8 = 7;

/// Longest a source file's non-test part may be.
const MAX_FILE_LINES: usize = 500;
/// Longest a function outside tests may be.
const MAX_FN_LINES: usize = 80;
/// Files that are one table (a const array of settings), allowed past [`MAX_FILE_LINES`].
const TABLE_FILES: &[&str] = &["showoff/src/settings/table.rs"];
/// Tables written as one function, allowed past [`MAX_FN_LINES`]: (file, function).
const TABLES: &[(&str, &str)] = &[
    ("showoff-server/src/edge/error.rs", "page"),
    ("showoff-server/src/stats.rs", "register"),
];

type Module = Vec<String>;

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every source file of a crate by module path; the code without comments and tests.
fn modules(src: &Path) -> BTreeMap<Module, (PathBuf, String)> {
    let mut found = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("source directory") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path
                .strip_prefix(src)
                .expect("inside src")
                .with_extension("");
            let mut module: Module = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module == ["lib"] || module == ["main"] {
                module.clear();
            }
            let text = std::fs::read_to_string(&path).expect("source");
            found.insert(module, (path, code_of(&text)));
        }
    }
    assert!(!found.is_empty(), "no source files under {}", src.display());
    found
}

/// The non-test code of a file with line comments removed.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        // Test modules, and the in-memory contexts tests and fuzz targets share, end a file.
        if line.starts_with("#[cfg(test)]")
            || line.starts_with("#[cfg(any(test, feature = \"fuzzing\"))]")
        {
            break;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        let line = line.find(" // ").map_or(line, |at| &line[..at]);
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// The module paths a file's code refers to, as written (`crate::a::b`, `super::c`).
fn paths(code: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for anchor in ["crate::", "super::", "self::"] {
        let mut rest = code;
        while let Some(at) = rest.find(anchor) {
            let before = rest[..at].chars().last();
            let after = &rest[at + anchor.len()..];
            rest = after;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            for path in expand(after) {
                out.push((anchor.trim_end_matches(':').to_string(), path));
            }
        }
    }
    out
}

/// `a::b::Item` → [[a, b, Item]]; `{a::X, b}` → [[a, X], [b]] (one level of braces).
fn expand(after: &str) -> Vec<Vec<String>> {
    if let Some(group) = after.strip_prefix('{') {
        let inner = &group[..group.find('}').unwrap_or(group.len())];
        return inner
            .split(',')
            .map(|item| segments(item.trim()))
            .filter(|p| !p.is_empty())
            .collect();
    }
    vec![segments(after)]
}

fn segments(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        out.push(rest[..end].to_string());
        match rest[end..].strip_prefix("::") {
            Some(next) if !next.starts_with('{') => rest = next,
            Some(next) => {
                // `a::{b, c}` inside a path: the module is `a`.
                let _ = next;
                break;
            }
            None => break,
        }
    }
    out
}

/// The import edges of a crate: module → modules it names (itself and its children excluded).
fn edges(mods: &BTreeMap<Module, (PathBuf, String)>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, (_, code)) in mods {
        let targets = graph.entry(module.clone()).or_default();
        for (anchor, path) in paths(code) {
            let mut full = match anchor.as_str() {
                "crate" => Vec::new(),
                "self" => module.clone(),
                _ => module[..module.len().saturating_sub(1)].to_vec(),
            };
            let mut path = path.as_slice();
            while path.first().is_some_and(|s| s == "super") {
                full.pop();
                path = &path[1..];
            }
            full.extend(path.iter().cloned());
            let target = (0..=full.len())
                .rev()
                .map(|n| full[..n].to_vec())
                .find(|m| mods.contains_key(m))
                .unwrap_or_default();
            if target.starts_with(module) {
                continue;
            }
            targets.insert(target);
        }
    }
    graph
}

fn rank(module: &Module) -> Option<u8> {
    let Some(top) = module.first() else {
        return Some(ROOT_RANK);
    };
    SERVER_LAYERS
        .iter()
        .find(|(name, _)| name == top)
        .map(|(_, rank)| *rank)
}

fn shown(module: &Module) -> String {
    if module.is_empty() {
        "crate root".into()
    } else {
        module.join("::")
    }
}

#[test]
fn no_server_module_imports_a_higher_layer() {
    let mods = modules(&crates_dir().join("showoff-server/src"));
    let mut upward = Vec::new();
    for (module, targets) in edges(&mods) {
        let from = rank(&module)
            .unwrap_or_else(|| panic!("{} has no layer in SERVER_LAYERS", shown(&module)));
        for target in targets {
            let to = rank(&target).expect("every target is a known module");
            if to > from {
                upward.push(format!(
                    "{} (rank {from}) imports {} (rank {to})",
                    shown(&module),
                    shown(&target)
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_layer_test_sees_an_upward_import() {
    // The check must be able to fail: a state module naming the edge is caught.
    let mut mods = BTreeMap::new();
    let module = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Module>();
    let code = "use crate::edge::http::Conn;\n".to_string();
    mods.insert(module(&["state"]), (PathBuf::new(), code));
    mods.insert(module(&["edge"]), (PathBuf::new(), String::new()));
    mods.insert(module(&["edge", "http"]), (PathBuf::new(), String::new()));
    let graph = edges(&mods);
    let targets = &graph[&module(&["state"])];
    assert!(targets.contains(&module(&["edge", "http"])));
    assert!(rank(&module(&["edge", "http"])) > rank(&module(&["state"])));
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a Module) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let Some((w, _)) = self.graph.get_key_value(w) else {
                    continue;
                };
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

fn crates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(crates_dir())
        .expect("crates")
        .map(|e| e.expect("entry").path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.push(crates_dir().join("../bench/src"));
    dirs.sort();
    assert!(dirs.len() >= 6, "found only {dirs:?}");
    dirs
}

#[test]
fn no_crate_has_an_import_cycle() {
    let mut found = Vec::new();
    for src in crates() {
        for component in cycles(&edges(&modules(&src))) {
            let names: Vec<String> = component.iter().map(shown).collect();
            found.push(format!("{}: {}", src.display(), names.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    let module = |m: &str| vec![m.to_string()];
    let mut graph = BTreeMap::new();
    graph.insert(module("a"), BTreeSet::from([module("b")]));
    graph.insert(module("b"), BTreeSet::from([module("a")]));
    graph.insert(module("c"), BTreeSet::from([module("a")]));
    let found = cycles(&graph);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].len(), 2);
}

/// Functions of `code` longer than `max` lines, as (name, lines).
fn long_functions(code: &str, max: usize) -> Vec<(String, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut long = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let signature = trimmed
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ")
            .trim_start_matches("const ")
            .trim_start_matches("async ");
        let Some(rest) = signature.strip_prefix("fn ") else {
            continue;
        };
        // One-line functions and bodiless trait items.
        if trimmed.trim_end().ends_with('}') || trimmed.trim_end().ends_with(';') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let closing = format!("{}}}", " ".repeat(indent));
        let end = lines[i..]
            .iter()
            .position(|l| l.trim_end() == closing)
            .unwrap_or(0);
        if end > max {
            long.push((name, end + 1));
        }
    }
    long
}

#[test]
fn files_and_functions_stay_small() {
    let mut found = Vec::new();
    for src in crates() {
        for (path, code) in modules(&src).into_values() {
            let shown = path.display().to_string();
            let lines = code.lines().count();
            if lines > MAX_FILE_LINES && !TABLE_FILES.iter().any(|t| shown.ends_with(t)) {
                found.push(format!("{shown}: {lines} lines"));
            }
            for (name, lines) in long_functions(&code, MAX_FN_LINES) {
                let table = TABLES
                    .iter()
                    .any(|(file, f)| shown.ends_with(file) && *f == name);
                if !table {
                    found.push(format!("{shown}: fn {name} has {lines} lines"));
                }
            }
        }
    }
    assert!(found.is_empty(), "too large:\n{}", found.join("\n"));
}

#[test]
fn the_size_check_sees_a_long_function() {
    let body = "    x();\n".repeat(MAX_FN_LINES + 1);
    let code = format!("fn short() {{}}\nfn long() {{\n{body}}}\n");
    assert_eq!(
        long_functions(&code, MAX_FN_LINES),
        vec![("long".to_string(), MAX_FN_LINES + 3)]
    );
}
