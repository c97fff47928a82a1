//! The layers of the `leafd` crate, which one crate cannot make the compiler keep: every import
//! in `src/` (a `use` of `crate::`, `super::` or `self::`, and every such path written out in the
//! code) must reach down, to a layer listed before the importing module's in the `layers` block
//! of docs/architecture.md; every module must be placed there; and no modules import each other
//! in a circle. Test code (`#[cfg(test)]`) may use what it likes.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

/// A module's path in the crate, `library::ops::make_base`; the crate root is "".
type Module = String;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The layers as docs/architecture.md lists them, bottom first: each line one layer, of one or
/// more modules (siblings in one layer may not import each other).
fn layers() -> Vec<Vec<Module>> {
    let doc = fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let start = doc.find("```layers\n").expect("docs/architecture.md has a ```layers block") + "```layers\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let layers: Vec<Vec<Module>> = doc[start..end]
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert!(layers.len() > 5, "the layers block lists {} layers", layers.len());
    layers
}

/// Every `.rs` file of `src/` (the library crate: `main.rs` is the binary) with its module.
fn modules() -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let src = root().join("src");
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") || p == src.join("main.rs") {
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into()).collect();
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            out.insert(parts.join("::"), p);
        }
    }
    out
}

/// The code of a file without comments, string and character literals (so that paths in
/// messages and documentation are not taken for imports).
fn code(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = text[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            out.extend(text[i..end].chars().filter(|&c| c == '\n'));
            i = end;
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) && !ident(b, i) {
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let from = i + 1 + hashes + 1;
            let end = text[from..].find(&close).map_or(b.len(), |e| from + e + close.len());
            out.push_str("\"\"");
            out.extend(text[i..end].chars().filter(|&c| c == '\n'));
            i = end;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i += 1;
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            out.push_str("' '");
            i += 3;
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            let end = text[i + 2..].find('\'').map_or(b.len(), |e| i + 2 + e + 1);
            out.push_str("' '");
            i = end;
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Whether the byte before `i` continues an identifier (`for"` is not a raw string's `r"`).
fn ident(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// `code` without its `#[cfg(test)]` items; the modules declared so (`mod tests;`) are listed in
/// `test_modules`, relative to `module`.
fn without_tests(code: &str, module: &str, test_modules: &mut BTreeSet<Module>) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at + "#[cfg(test)]".len()..];
        let semi = item.find(';');
        let brace = item.find('{');
        let end = match (semi, brace) {
            (Some(s), b) if b.is_none_or(|b| s < b) => {
                let decl = item[..s].trim();
                if let Some(name) = decl.strip_prefix("mod ").or_else(|| decl.strip_prefix("pub(crate) mod ")) {
                    test_modules.insert(join(module, name.trim()));
                }
                s + 1
            }
            (_, Some(b)) => {
                let mut depth = 0;
                let mut end = item.len();
                for (i, c) in item[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            _ => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn join(a: &str, b: &str) -> Module {
    if a.is_empty() { b.to_string() } else { format!("{a}::{b}") }
}

fn parent(m: &str) -> Module {
    m.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_string())
}

/// The paths a `use` tree names, `a::{b, c::{d, e}}` being `a::b`, `a::c::d` and `a::c::e` (a
/// renaming `as` left out).
fn use_paths(tree: &str) -> Vec<String> {
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut kept = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "as" {
            i += 2;
        } else {
            kept.push(words[i]);
            i += 1;
        }
    }
    let tree = kept.concat();
    let Some(open) = tree.find('{') else { return vec![tree] };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.len() - 1];
    let mut parts = Vec::new();
    let (mut depth, mut from) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[from..]);
    parts.into_iter().filter(|p| !p.is_empty()).flat_map(|p| use_paths(&format!("{prefix}{p}"))).collect()
}

/// `path` (as written in `module`) as a path from the crate root; `None` for other crates.
fn absolute(path: &str, module: &str, known: &BTreeMap<Module, PathBuf>) -> Option<String> {
    let mut parts = path.split("::");
    let mut at = match parts.next()? {
        "crate" | "$crate" => String::new(),
        "self" => module.to_string(),
        "super" => parent(module),
        // A child module named as it is in scope (`use open::open_regular;`).
        child if known.contains_key(&join(module, child)) => join(module, child),
        _ => return None,
    };
    let mut rest: Vec<&str> = parts.collect();
    while rest.first() == Some(&"super") {
        at = parent(&at);
        rest.remove(0);
    }
    Some(rest.iter().fold(at, |m, p| join(&m, p)))
}

/// The modules `code` (of `module`) imports, by `use` and by paths written out.
fn imports(code: &str, module: &str, known: &BTreeMap<Module, PathBuf>) -> BTreeSet<Module> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let starts_word = at == 0 || !ident(rest.as_bytes(), at);
        let end = rest[at..].find(';').map_or(rest.len(), |e| at + e);
        if starts_word {
            paths.extend(use_paths(&rest[at + 4..end]));
        }
        rest = &rest[if starts_word { end } else { at + 4 }..];
    }
    // Paths written out in the code: `crate::fsutil::walk(…)`, and those starting at a child
    // module or at a name a `use … as` gave one (`os::flush(…)` after `use linux as os`).
    let b = code.as_bytes();
    let mut anchors: Vec<String> = ["crate::", "super::", "self::"].map(String::from).to_vec();
    let prefix = if module.is_empty() { String::new() } else { format!("{module}::") };
    for m in known.keys() {
        if let Some(child) = m.strip_prefix(&prefix).filter(|c| !c.is_empty() && !c.contains("::")) {
            anchors.push(format!("{child}::"));
        }
    }
    let mut aliases = Vec::new();
    for words in code.split(';').map(|stmt| stmt.split_whitespace().collect::<Vec<_>>()) {
        if let [.., "use", from, "as", alias] = words[..]
            && absolute(from, module, known).is_some()
        {
            aliases.push((format!("{alias}::"), from.to_string()));
            anchors.push(format!("{alias}::"));
        }
    }
    for anchor in &anchors {
        for (at, _) in code.match_indices(anchor.as_str()) {
            let dollar = at > 0 && b[at - 1] == b'$';
            if (ident(b, at) || (at > 0 && b[at - 1] == b':')) && !dollar {
                continue;
            }
            let from = if dollar { at - 1 } else { at };
            let len =
                code[from..].find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '$')).unwrap_or(0);
            let path = code[from..from + len].trim_end_matches(':').to_string();
            match aliases.iter().find(|(alias, _)| path.starts_with(alias.as_str())) {
                Some((alias, real)) => paths.push(format!("{real}::{}", &path[alias.len()..])),
                None => paths.push(path),
            }
        }
    }
    paths
        .iter()
        .filter_map(|p| absolute(p, module, known))
        .filter_map(|p| {
            // The longest module the path starts with: `library::ops::make_base::Plan` is in
            // `library::ops::make_base`.
            let mut m = p.clone();
            loop {
                if known.contains_key(&m) {
                    return Some(m);
                }
                if m.is_empty() {
                    return None;
                }
                m = parent(&m);
            }
        })
        .filter(|m| m != module && !m.is_empty())
        .collect()
}

/// Each module's imports outside test code (test modules left out).
fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let known = modules();
    let mut tests = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (module, path) in &known {
        let code = without_tests(&code(&fs::read_to_string(path).unwrap()), module, &mut tests);
        out.insert(module.clone(), imports(&code, module, &known));
    }
    out.retain(|m, _| !tests.iter().any(|t| m == t || m.starts_with(&format!("{t}::"))));
    out
}

/// Where `module` is placed: the longest module named in the layers that it is, or is in, and
/// that one's layer.
fn layer_of<'a>(module: &str, layers: &'a [Vec<Module>]) -> Option<(usize, &'a str)> {
    let mut best: Option<(usize, &str)> = None;
    for (i, layer) in layers.iter().enumerate() {
        for m in layer {
            let covers = module == m || module.starts_with(&format!("{m}::"));
            if covers && best.is_none_or(|(_, b)| m.len() > b.len()) {
                best = Some((i, m));
            }
        }
    }
    best
}

#[test]
fn every_import_reaches_a_lower_layer() {
    let layers = layers();
    let graph = graph();
    let mut problems = Vec::new();
    for (module, imported) in &graph {
        if module.is_empty() {
            continue; // the crate root only declares modules and what is public
        }
        let Some((mine, unit)) = layer_of(module, &layers) else {
            problems.push(format!("{module} is in no layer of docs/architecture.md"));
            continue;
        };
        for m in imported {
            // Within one module of the list (platform and its files) only circles are wrong.
            let Some((theirs, their_unit)) = layer_of(m, &layers) else { continue };
            if theirs >= mine && their_unit != unit {
                problems.push(format!("{module} (layer {mine}, {unit}) imports {m} (layer {theirs}, {their_unit})"));
            }
        }
    }
    for layer in &layers {
        for m in layer {
            if !graph.contains_key(m) {
                problems.push(format!("docs/architecture.md lists {m}, which is no module"));
            }
        }
    }
    assert!(problems.is_empty(), "{} layering problems:\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let graph = graph();
    // Depth-first, three colours: a module met again while still open closes a circle.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        open: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        circles: &mut Vec<String>,
    ) {
        if let Some(at) = open.iter().position(|o| *o == m) {
            circles.push(format!("{} -> {m}", open[at..].join(" -> ")));
            return;
        }
        if !done.insert(m) {
            return;
        }
        open.push(m);
        for next in graph.get(m).into_iter().flatten() {
            visit(next, graph, open, done, circles);
        }
        open.pop();
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(circles.is_empty(), "modules import each other in a circle:\n{}", circles.join("\n"));
}

/// The checker itself: what it must see, and what it must not take for an import.
#[test]
fn the_checker_sees_imports_and_nothing_else() {
    let known: BTreeMap<Module, PathBuf> =
        ["a", "a::b", "a::b::c", "d", "e"].iter().map(|m| (m.to_string(), PathBuf::new())).collect();
    let text = r#"
        //! Uses crate::e in a comment.
        use super::b::{c::{self, X}, Y};
        use crate::d as dee;
        /* crate::e */
        fn f() { let s = "crate::e"; crate::d::g(); $crate::e::h(); }
        #[cfg(test)]
        mod tests { use crate::e; }
    "#;
    let mut tests = BTreeSet::new();
    let got = imports(&without_tests(&code(text), "a::x", &mut tests), "a::x", &known);
    assert_eq!(got, ["a::b", "a::b::c", "d", "e"].iter().map(|m| m.to_string()).collect());
    without_tests(&code("#[cfg(test)]\nmod tests;\n"), "a", &mut tests);
    assert!(tests.contains("a::tests"));
    assert_eq!(use_paths("a::{b, c::{d, e}}"), ["a::b", "a::c::d", "a::c::e"]);
    assert_eq!(layer_of("a::b::c", &[vec!["a".into()], vec!["a::b".into()]]), Some((1, "a::b")));
    let got = imports(&code("use b::c as see;\nuse std::fs;\nfn f() { e::g(); }\n"), "a", &known);
    assert_eq!(got, ["a::b::c".to_string()].into(), "a child named as in scope is imported");
    let got = imports(&code("use std::fs;\nfn f() { b::c::g(); }\n"), "a", &known);
    assert_eq!(got, ["a::b::c".to_string()].into(), "in a path written out too");
    let got = imports(&code("use b as bee;\nfn f() { bee::c::g(); }\n"), "a", &known);
    assert_eq!(got, ["a::b".to_string(), "a::b::c".to_string()].into(), "and under another name");
}
