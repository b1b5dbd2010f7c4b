//! The module graph of `src/` has no import cycles (issue 19). Each file is a node (`a/b.rs` is
//! `crate::a::b`, `a/mod.rs` is `crate::a`); an edge is a path the file names (`crate::x::y`,
//! `super::x`, and the names in `use crate::{...}` groups), resolved to the deepest module file it
//! reaches. A parent's edges to its own children are not counted: declaring and re-exporting
//! children is how Rust builds a module, not a dependency. Cycles are the strongly connected
//! components of more than one file (Tarjan).
//!
//! [`KNOWN`] may list a cycle being taken apart (it is empty): the test fails on any other cycle,
//! and on a listed one that is gone (so the list only shrinks).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Cycles being taken apart, each as its sorted module list; the test fails on any other cycle
/// and on a listed one that is gone. Issue 19 measured three; none is left.
const KNOWN: &[&[&str]] = &[];

fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    std::iter::once("crate".to_string())
        .chain(parts)
        .collect::<Vec<_>>()
        .join("::")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments and string contents (so prose never makes an edge).
fn code_only(text: &str) -> String {
    // Unit tests (at the end of a file, by convention) are not part of the module structure, and
    // their `use super::*` names the file itself.
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every module path the code names: `crate::a::b...`, `super::a...` (made absolute), and the
/// first names inside `crate::{...}` / `super::{...}` groups.
fn paths(code: &str, module: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // `super` of a mod.rs/plain file: the parent of the file's module.
    let parent: Vec<String> = {
        let mut p: Vec<String> = module.split("::").map(String::from).collect();
        p.pop();
        p
    };
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let start_ok = i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':';
        let rest: String = chars[i..chars.len().min(i + 7)].iter().collect();
        let (base, skip) = if start_ok && rest.starts_with("crate::") {
            (vec!["crate".to_string()], 7)
        } else if start_ok && rest.starts_with("super::") {
            (parent.clone(), 7)
        } else {
            i += 1;
            continue;
        };
        i += skip;
        let mut segs = base;
        loop {
            if chars.get(i) == Some(&'{') {
                // A group: each entry's first segments.
                let mut depth = 1;
                let mut j = i + 1;
                let mut entry = String::new();
                let mut entries = Vec::new();
                while j < chars.len() && depth > 0 {
                    match chars[j] {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 1 => entries.push(std::mem::take(&mut entry)),
                        c if depth >= 1 => entry.push(c),
                        _ => {}
                    }
                    j += 1;
                }
                entries.push(entry);
                for e in entries {
                    let mut p = segs.clone();
                    for s in e.split("::") {
                        let s: String = s.trim().chars().take_while(|c| is_ident(*c)).collect();
                        if s.is_empty() {
                            break;
                        }
                        p.push(s);
                    }
                    out.push(p);
                }
                i = j;
                break;
            }
            let ident: String = chars[i..].iter().take_while(|c| is_ident(**c)).collect();
            if ident.is_empty() {
                break;
            }
            i += ident.len();
            segs.push(ident);
            if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
                i += 2;
            } else {
                break;
            }
        }
        out.push(segs);
    }
    out
}

#[test]
fn there_is_no_import_cycle_in_src() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    all.retain(|f| !f.ends_with("main.rs"));
    let modules: BTreeMap<String, PathBuf> = all
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        // In a mod.rs, `super` is the parent of the directory's module; in a plain file too.
        for p in paths(&code, module) {
            // The deepest module file the path reaches.
            let mut target = None;
            for n in (1..=p.len()).rev() {
                let candidate = p[..n].join("::");
                if modules.contains_key(&candidate) {
                    target = Some(candidate);
                    break;
                }
            }
            let Some(t) = target else { continue };
            let own_child = t.starts_with(&format!("{module}::"));
            if t != *module && !own_child && t != "crate" {
                edges.entry(module.clone()).or_default().insert(t);
            }
        }
    }
    let cycles = strongly_connected(&modules.keys().cloned().collect::<Vec<_>>(), &edges);
    let found: BTreeSet<Vec<String>> = cycles.into_iter().filter(|c| c.len() > 1).collect();
    let known: BTreeSet<Vec<String>> = KNOWN
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect();
    let new: Vec<_> = found.difference(&known).collect();
    let gone: Vec<_> = known.difference(&found).collect();
    let show = |c: &Vec<String>| {
        let inside: Vec<String> = c
            .iter()
            .flat_map(|m| {
                edges
                    .get(m)
                    .into_iter()
                    .flatten()
                    .filter(|t| c.contains(t))
                    .map(move |t| format!("{m} -> {t}"))
            })
            .collect();
        format!("{c:?}\n    {}", inside.join("\n    "))
    };
    assert!(
        new.is_empty(),
        "import cycles in src/ (break them: move the shared part to a leaf module, or pass a \
         value or a channel instead of importing upward):\n{}",
        new.iter().map(|c| show(c)).collect::<Vec<_>>().join("\n")
    );
    assert!(
        gone.is_empty(),
        "these known cycles are gone: remove them from KNOWN in tests/import_cycles.rs: {gone:?}"
    );
}

/// Tarjan's strongly connected components, each sorted.
fn strongly_connected(
    nodes: &[String],
    edges: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on: BTreeSet<String>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit(t: &mut T<'_>, v: &str) {
        t.index.insert(v.to_string(), t.next);
        t.low.insert(v.to_string(), t.next);
        t.next += 1;
        t.stack.push(v.to_string());
        t.on.insert(v.to_string());
        let targets: Vec<String> = t.edges.get(v).into_iter().flatten().cloned().collect();
        for w in targets {
            if !t.index.contains_key(&w) {
                visit(t, &w);
                let l = t.low[v].min(t.low[&w]);
                t.low.insert(v.to_string(), l);
            } else if t.on.contains(&w) {
                let l = t.low[v].min(t.index[&w]);
                t.low.insert(v.to_string(), l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut c = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(&w);
                let done = w == v;
                c.push(w);
                if done {
                    break;
                }
            }
            c.sort();
            t.out.push(c);
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for n in nodes {
        if !t.index.contains_key(n) {
            visit(&mut t, n);
        }
    }
    t.out
}
