//! kv-node's top-level modules form no import circle, and the shared node state sits
//! below everything that serves a connection.
//!
//! The check reads `src/` with std only: every `crate::<module>` path in code
//! (comments stripped, `use crate::{a, b::c}` groups expanded) is an edge from the
//! top-level module whose files contain it (a directory module's files all count as
//! that module). A cycle fails the test and names its modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Top-level module name -> the source files that make it up.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("src/ is readable") {
        let path = entry.expect("directory entry").path();
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .expect("UTF-8 file name")
            .to_string();
        if path.is_dir() {
            out.insert(name, rs_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" {
            out.insert(name, vec![path]);
        }
    }
    out
}

fn rs_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("module directory is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            out.extend(rs_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Source without `//` comments (doc comments included): whole comment lines, and
/// trailing comments after code (a `//` preceded by whitespace outside a string).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        let mut in_string = false;
        let mut code_end = line.len();
        let bytes = line.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            match b {
                b'"' if i == 0 || bytes[i - 1] != b'\\' => in_string = !in_string,
                b'/' if !in_string
                    && bytes.get(i + 1) == Some(&b'/')
                    && i > 0
                    && bytes[i - 1].is_ascii_whitespace() =>
                {
                    code_end = i;
                    break;
                }
                _ => {}
            }
        }
        out.push_str(&line[..code_end]);
        out.push('\n');
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules named by `crate::` paths in `code`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        // `crate::` inside a longer identifier (e.g. `my_crate::`) is not ours.
        if code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let rest = code[i + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{c, d}, e}`: the first segment of each top-level item.
            let mut depth = 1;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => start = true,
                    c if start && depth == 1 && !c.is_whitespace() => {
                        let name = ident(&group[j..]);
                        if !name.is_empty() {
                            out.insert(name.to_string());
                        }
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name.to_string());
            }
        }
    }
    out
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let mut g = Graph::new();
    for (name, files) in &mods {
        let deps = g.entry(name.clone()).or_default();
        for f in files {
            let text = std::fs::read_to_string(f).expect("source is readable");
            for dep in crate_paths(&strip_comments(&text)) {
                if dep != *name && mods.contains_key(&dep) {
                    deps.insert(dep);
                }
            }
        }
    }
    g
}

/// A cycle as a path `a -> b -> ... -> a`, if any.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        g: &Graph,
        node: &str,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack
                    .iter()
                    .position(|m| m == node)
                    .expect("open is on the stack");
                let mut cycle = stack[from..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        stack.push(node.to_string());
        for dep in g.get(node).into_iter().flatten() {
            if let Some(c) = visit(g, dep, marks, stack) {
                return Some(c);
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in g.keys() {
        if let Some(c) = visit(g, node, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

fn describe(g: &Graph) -> String {
    g.iter()
        .map(|(m, deps)| {
            format!(
                "  {m} -> {}",
                deps.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let g = graph();
    // The parser must actually see edges, or the check proves nothing.
    for (from, to) in [("session", "state"), ("node", "session"), ("dcp", "state")] {
        assert!(
            g.get(from).is_some_and(|d| d.contains(to)),
            "expected edge {from} -> {to} not found; graph:\n{}",
            describe(&g)
        );
    }
    if let Some(cycle) = find_cycle(&g) {
        panic!(
            "import cycle between kv-node modules: {}\ngraph:\n{}",
            cycle.join(" -> "),
            describe(&g)
        );
    }
}

#[test]
fn node_state_imports_nothing_that_serves_connections() {
    let g = graph();
    let above = ["node", "session", "dcp", "admin", "stats"];
    for low in ["state", "dcp_registry"] {
        let deps = g.get(low).expect("module exists");
        let bad: Vec<_> = above.iter().filter(|m| deps.contains(**m)).collect();
        assert!(
            bad.is_empty(),
            "{low} imports {bad:?}; graph:\n{}",
            describe(&g)
        );
    }
}

#[test]
fn the_checker_sees_grouped_imports_and_finds_cycles() {
    let code = strip_comments(
        "use crate::{a, b::{c, d}, e::f};\n    /// [`crate::doc`]\nx(crate::g::h()); // crate::trailing\nlet u = \"http://x\"; crate::k::l();",
    );
    let found: Vec<_> = crate_paths(&code).into_iter().collect();
    assert_eq!(found, ["a", "b", "e", "g", "k"]);
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
