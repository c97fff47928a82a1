//! Checks the durability rule (docs/durability.md) on a trace written with `LEAFD_IO_TRACE`.
//!
//! The trace is leafd's own record of every logical change and flush, by device and inode; the
//! checker replays it over a model of which files and folders have changes not yet flushed:
//!
//! 1. a rename must not move anything with unflushed changes (a file's data, length, mode,
//!    flags or attributes; a folder's entries), itself or anywhere under it;
//! 2. after a rename both folders are flushed (they count as changed until then);
//! 3. when an operation's journal is removed, and at the end, nothing changed is unflushed;
//! 4. once a file is published under `Bases/<name>/`, it is never written, truncated, opened
//!    for writing, given write permission or an extended attribute.
//!
//! leafd's private lock files (`.leafd/locks/`) and the trace's own bookkeeping are not data and
//! are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

type Id = [u64; 2];

/// One line of the trace.
#[derive(Debug, Clone)]
pub struct Op {
    pub n: u64,
    pub armed: u64,
    pub pid: u64,
    pub op: String,
    pub path: PathBuf,
    pub to: Option<PathBuf>,
    pub id: Option<Id>,
    pub dir: Option<Id>,
    pub to_dir: Option<Id>,
    pub mode: Option<u32>,
    pub kind: Option<String>,
}

fn id(v: &Value) -> Option<Id> {
    let a = v.as_array()?;
    Some([a.first()?.as_u64()?, a.get(1)?.as_u64()?])
}

/// Reads a trace file; an absent file is an empty trace.
pub fn read(path: &Path) -> Vec<Op> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("bad trace line {l}: {e}"));
            Op {
                n: v["n"].as_u64().unwrap(),
                armed: v["armed"].as_u64().unwrap(),
                pid: v["pid"].as_u64().unwrap(),
                op: v["op"].as_str().unwrap().to_string(),
                path: PathBuf::from(v["path"].as_str().unwrap()),
                to: v["to"].as_str().map(PathBuf::from),
                id: id(&v["id"]),
                dir: id(&v["dir"]),
                to_dir: id(&v["to_dir"]),
                mode: v["mode"].as_u64().map(|m| m as u32),
                kind: v["kind"].as_str().map(str::to_string),
            }
        })
        .collect()
}

/// The number of calls an operation made after its journal was written (for `LEAFD_FAULT=io:N`).
pub fn armed_calls(ops: &[Op]) -> u64 {
    ops.iter().map(|o| o.armed).max().unwrap_or(0)
}

fn excluded(p: &Path) -> bool {
    p.components().collect::<Vec<_>>().windows(2).any(|w| w[0].as_os_str() == ".leafd" && w[1].as_os_str() == "locks")
}

/// Whether `p` is a file of a published base: under `<root>/Bases/<visible name>/`, outside the
/// store's own records.
fn published_base_file(root: &Path, p: &Path) -> bool {
    let Ok(rest) = p.strip_prefix(root.join("Bases")) else { return false };
    let parts: Vec<_> = rest.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    parts.len() >= 2 && !parts[0].starts_with('.') && parts[1] != ".leafd"
}

/// Replays `ops` (one process's, in order) and returns every breach of the rule, described.
pub fn check(root: &Path, ops: &[Op]) -> Vec<String> {
    let mut dirty: BTreeMap<Id, (PathBuf, String)> = BTreeMap::new();
    let mut problems = Vec::new();
    // Where each known id is now (updated as folders are renamed).
    let mut place: BTreeMap<Id, PathBuf> = BTreeMap::new();
    let mut published: BTreeSet<Id> = BTreeSet::new();
    let end_check = |dirty: &BTreeMap<Id, (PathBuf, String)>, at: &str, problems: &mut Vec<String>| {
        for (p, what) in dirty.values() {
            if !excluded(p) {
                problems.push(format!("{at}: {} has an unflushed {what}", p.display()));
            }
        }
    };
    for o in ops {
        if let Some(i) = o.id {
            place.insert(i, o.to.clone().unwrap_or_else(|| o.path.clone()));
        }
        let base_file = o.id.is_some_and(|i| published.contains(&i)) || published_base_file(root, &o.path);
        match o.op.as_str() {
            "write" | "truncate" | "times" | "chmod" | "lock" | "xattr" | "rmxattr" | "open-write" => {
                let adds_write = o.op == "chmod" && o.mode.is_some_and(|m| m & 0o222 != 0);
                let forbidden = matches!(o.op.as_str(), "write" | "truncate" | "open-write") || adds_write;
                if base_file && (forbidden || (o.op == "xattr" && published_base_file(root, &o.path))) {
                    problems.push(format!("#{}: {} of published base file {}", o.n, o.op, o.path.display()));
                }
                if o.op != "open-write"
                    && let Some(i) = o.id
                {
                    dirty.insert(i, (o.path.clone(), o.op.clone()));
                }
            }
            "create" | "mkdir" | "link" | "symlink" => {
                if let Some(i) = o.id {
                    dirty.insert(i, (o.path.clone(), format!("new {}", o.op)));
                }
                if let Some(d) = o.dir {
                    dirty.insert(d, (o.path.parent().unwrap().to_path_buf(), "entry".into()));
                }
            }
            "unlink" | "rmdir" => {
                if let Some(i) = o.id {
                    dirty.remove(&i);
                    place.remove(&i);
                }
                if let Some(d) = o.dir {
                    dirty.insert(d, (o.path.parent().unwrap().to_path_buf(), "entry".into()));
                }
                if o.path.parent().is_some_and(|p| p.ends_with(".leafd/journal")) && o.op == "unlink" {
                    // The operation ends: what it left must be flushed, but the journal folder
                    // itself is flushed right after this.
                    let mut rest = dirty.clone();
                    if let Some(d) = o.dir {
                        rest.remove(&d);
                    }
                    end_check(&rest, &format!("#{} (journal removed)", o.n), &mut problems);
                }
            }
            "rename" => {
                let to = o.to.clone().expect("rename has a target");
                for (p, what) in dirty.values() {
                    if (p == &o.path || p.starts_with(&o.path)) && !excluded(p) {
                        problems.push(format!(
                            "#{}: rename of {} to {} while {} has an unflushed {what}",
                            o.n,
                            o.path.display(),
                            to.display(),
                            p.display()
                        ));
                    }
                }
                for p in place.values_mut().chain(dirty.values_mut().map(|(p, _)| p)) {
                    if let Ok(rest) = p.strip_prefix(&o.path) {
                        *p = if rest.as_os_str().is_empty() { to.clone() } else { to.join(rest) };
                    }
                }
                for d in [o.dir, o.to_dir].into_iter().flatten() {
                    let at = if Some(d) == o.dir { o.path.parent() } else { to.parent() };
                    dirty.insert(d, (at.unwrap().to_path_buf(), "entry (rename)".into()));
                }
                if published_base_file(root, &to.join("x")) && to.parent() == Some(&root.join("Bases")) {
                    for (i, p) in &place {
                        if published_base_file(root, p) {
                            published.insert(*i);
                        }
                    }
                }
            }
            "flush" => {
                if let Some(i) = o.id {
                    dirty.remove(&i);
                }
            }
            other => problems.push(format!("#{}: unknown trace operation {other}", o.n)),
        }
    }
    end_check(&dirty, "at the end", &mut problems);
    problems
}

/// The trace split by process, in order (an operation's CLI process, the recovery after it...).
pub fn by_process(ops: &[Op]) -> BTreeMap<u64, Vec<Op>> {
    let mut out: BTreeMap<u64, Vec<Op>> = BTreeMap::new();
    for o in ops {
        out.entry(o.pid).or_default().push(o.clone());
    }
    out
}
