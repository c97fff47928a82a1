//! Checks the durability rule (docs/durability.md) on a trace written with `LEAFD_IO_TRACE`.
//!
//! The trace is leafd's own record of every logical change and flush, by device and inode; the
//! checker replays it over a model of which files and folders have changes not yet flushed:
//!
//! 1. a rename must not move anything with unflushed changes (a file's data, length, mode,
//!    flags or attributes; a folder's entries, mode or attributes), itself or anywhere under it;
//! 2. after a rename both folders are flushed, before anything else changes (a later change,
//!    say the removal of a copied source, must never reach the disk before the rename did);
//! 3. when an operation's journal is removed, and at the end, nothing changed is unflushed;
//! 4. once a file is published under `Bases/<name>/`, it is never written, truncated, opened
//!    for writing, given write permission, unlocked, or given or stripped of an extended
//!    attribute.
//!
//! The model: a new file is changed until it is flushed itself; a new folder (or symbolic link)
//! is whole once the folder holding it is flushed (its inode is made with the entry: there is
//! nothing else to flush, and a link cannot be opened to flush), and is changed again by what is
//! then done to it. A file removed takes its changes with it (hard links are not counted: the
//! only ones leafd makes, promote's, are flushed before either name is removed).
//!
//! leafd's private lock files (`.leafd/locks/`) and progress records (`.leafd/progress/`,
//! written unflushed and removed by recovery) are not data and are left out. A base's records
//! (`Bases/<name>/.leafd/`), its working stamp (`.leafd-stamp`) and files leafd made in it after
//! it was published are not base files.
//!
//! A process killed on purpose leaves what it had not flushed to the process that recovers after
//! it: [`Checker::replay`] both traces in order, then [`Checker::end`] once.

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
    /// `lock`: set (true) or cleared.
    pub on: Option<bool>,
    /// `fault`: the call that `LEAFD_FAULT=io:N` made fail (it changed nothing).
    pub of: Option<String>,
    /// `write`: bytes written; `truncate`: the new length.
    pub len: Option<u64>,
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
                on: v["on"].as_bool(),
                of: v["of"].as_str().map(str::to_string),
                len: v["len"].as_u64(),
            }
        })
        .collect()
}

/// The number of calls an operation made after its journal was written (for `LEAFD_FAULT=io:N`).
pub fn armed_calls(ops: &[Op]) -> u64 {
    ops.iter().map(|o| o.armed).max().unwrap_or(0)
}

/// The call `LEAFD_FAULT=io:N` made fail, if it was reached.
pub fn fault(ops: &[Op]) -> Option<&Op> {
    ops.iter().find(|o| o.op == "fault")
}

/// leafd's lock files and progress records (`.leafd/locks/`, `.leafd/progress/`): not data.
fn excluded(p: &Path) -> bool {
    p.components()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| w[0].as_os_str() == ".leafd" && (w[1].as_os_str() == "locks" || w[1].as_os_str() == "progress"))
}

/// Whether `p` is a file of a published base by its place: under `<root>/Bases/<visible name>/`,
/// outside the store's own records and its working stamp.
fn published_base_file(root: &Path, p: &Path) -> bool {
    let Ok(rest) = p.strip_prefix(root.join("Bases")) else { return false };
    let parts: Vec<_> = rest.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    parts.len() >= 2
        && !parts[0].starts_with('.')
        && parts[1] != ".leafd"
        && parts[1] != ".leafd-stamp"
        && !parts[1].starts_with("..leafd-stamp.tmp-")
}

/// Replays traces over the model of what is not flushed yet.
#[derive(Default)]
pub struct Checker {
    root: PathBuf,
    /// What has changes not flushed yet: where it is now, and what changed.
    dirty: BTreeMap<Id, (PathBuf, String)>,
    /// Where each known id is now (updated as folders are renamed).
    place: BTreeMap<Id, PathBuf>,
    /// Files that were in a base when it was published.
    published: BTreeSet<Id>,
    /// Files and folders made by the traced processes.
    made: BTreeSet<Id>,
    /// Folders of the last rename not flushed yet, with the rename's number.
    renamed: BTreeMap<Id, (PathBuf, u64)>,
    /// Paths whose flush `LEAFD_FAULT=io:N` made fail: they may stay unflushed (nothing can
    /// flush them for sure), but must still not be published unflushed.
    flush_failed: BTreeSet<PathBuf>,
    pub problems: Vec<String>,
}

impl Checker {
    pub fn new(root: &Path) -> Checker {
        Checker { root: root.to_path_buf(), ..Checker::default() }
    }

    fn unflushed(&mut self, at: &str, except: Option<Id>) {
        for (i, (p, what)) in &self.dirty {
            if Some(*i) != except && !excluded(p) && !self.flush_failed.contains(p) {
                self.problems.push(format!("{at}: {} has an unflushed {what}", p.display()));
            }
        }
    }

    fn is_base_file(&self, o: &Op) -> bool {
        let made_here = o.id.is_some_and(|i| self.made.contains(&i));
        o.id.is_some_and(|i| self.published.contains(&i)) || (published_base_file(&self.root, &o.path) && !made_here)
    }

    /// Replays one process's trace, in order, continuing from what earlier traces left.
    pub fn replay(&mut self, ops: &[Op]) {
        for o in ops {
            let at = format!("#{} (pid {})", o.n, o.pid);
            if o.op == "fault" {
                // Failed on purpose: nothing changed.
                if o.of.as_deref() == Some("flush") {
                    self.flush_failed.insert(o.path.clone());
                }
                continue;
            }
            if excluded(&o.path) {
                continue;
            }
            if o.id.is_none() && !matches!(o.op.as_str(), "unlink" | "rmdir") {
                self.problems.push(format!(
                    "{at}: {} of {} names no file (no device and inode)",
                    o.op,
                    o.path.display()
                ));
            }
            if let Some(i) = o.id {
                self.place.insert(i, o.to.clone().unwrap_or_else(|| o.path.clone()));
            }
            if o.op != "flush" {
                self.renamed.retain(|_, (p, _)| !self.flush_failed.contains(p));
                for (p, n) in std::mem::take(&mut self.renamed).values() {
                    self.problems.push(format!(
                        "{at}: {} of {} before {} was flushed after rename #{n}",
                        o.op,
                        o.path.display(),
                        p.display()
                    ));
                }
            }
            match o.op.as_str() {
                "write" | "truncate" | "times" | "chmod" | "lock" | "xattr" | "rmxattr" | "open-write" => {
                    self.changed(o, &at)
                }
                "create" | "mkdir" | "link" | "symlink" => self.made_entry(o),
                "unlink" | "rmdir" => self.removed(o, &at),
                "rename" => self.moved(o, &at),
                "flush" => {
                    if let Some(i) = o.id {
                        self.dirty.remove(&i);
                        self.renamed.remove(&i);
                    }
                }
                other => self.problems.push(format!("{at}: unknown trace operation {other}")),
            }
        }
    }

    /// A change to a file's data, length, times, mode, flags or attributes (or an open for
    /// writing): never to a published base file's data, and never adding write access to one.
    fn changed(&mut self, o: &Op, at: &str) {
        let adds_write = o.op == "chmod" && o.mode.is_some_and(|m| m & 0o222 != 0);
        let unlocks = o.op == "lock" && o.on == Some(false);
        let forbidden =
            matches!(o.op.as_str(), "write" | "truncate" | "open-write" | "xattr" | "rmxattr") || adds_write || unlocks;
        if forbidden && self.is_base_file(o) {
            self.problems.push(format!("{at}: {} of published base file {}", o.op, o.path.display()));
        }
        if o.op != "open-write"
            && let Some(i) = o.id
        {
            self.dirty.insert(i, (o.path.clone(), o.op.clone()));
        }
    }

    /// A new file, folder or name: it and its folder's entries are to flush.
    fn made_entry(&mut self, o: &Op) {
        if let Some(i) = o.id {
            match o.op.as_str() {
                "create" => _ = self.dirty.insert(i, (o.path.clone(), "new file".into())),
                "link" => _ = self.dirty.insert(i, (o.path.clone(), "new name".into())),
                _ => {}
            }
            if o.op != "link" {
                self.made.insert(i);
            }
        }
        if let Some(d) = o.dir {
            self.dirty.insert(d, (o.path.parent().unwrap().to_path_buf(), "entry".into()));
        }
    }

    /// A file or folder removed; the journal's removal ends the operation.
    fn removed(&mut self, o: &Op, at: &str) {
        if let Some(i) = o.id {
            self.forget(i);
        }
        if let Some(d) = o.dir {
            self.dirty.insert(d, (o.path.parent().unwrap().to_path_buf(), "entry".into()));
        }
        if o.path.parent().is_some_and(|p| p.ends_with(".leafd/journal")) && o.op == "unlink" {
            // The operation ends: what it left must be flushed, but the journal folder
            // itself is flushed right after this.
            self.unflushed(&format!("{at} (journal removed)"), o.dir);
        }
    }

    /// A file gone: its inode number may come back as another file's.
    fn forget(&mut self, i: Id) {
        self.dirty.remove(&i);
        self.place.remove(&i);
        self.published.remove(&i);
        self.made.remove(&i);
    }

    /// A rename publishes what it moves, which must all be flushed; both folders are to flush
    /// before anything else changes. A folder renamed into `Bases/` publishes a base.
    fn moved(&mut self, o: &Op, at: &str) {
        let to = o.to.clone().expect("rename has a target");
        // A file the rename replaced is gone.
        let replaced: Vec<Id> =
            self.place.iter().filter(|(i, p)| **p == to && Some(**i) != o.id).map(|(i, _)| *i).collect();
        for i in replaced {
            self.forget(i);
        }
        for (p, what) in self.dirty.values() {
            if (p == &o.path || p.starts_with(&o.path)) && !excluded(p) {
                self.problems.push(format!(
                    "{at}: rename of {} to {} while {} has an unflushed {what}",
                    o.path.display(),
                    to.display(),
                    p.display()
                ));
            }
        }
        for p in self.place.values_mut().chain(self.dirty.values_mut().map(|(p, _)| p)) {
            if let Ok(rest) = p.strip_prefix(&o.path) {
                *p = if rest.as_os_str().is_empty() { to.clone() } else { to.join(rest) };
            }
        }
        for d in [o.dir, o.to_dir].into_iter().flatten() {
            let at = if Some(d) == o.dir { o.path.parent() } else { to.parent() };
            self.dirty.insert(d, (at.unwrap().to_path_buf(), "entry (rename)".into()));
            self.renamed.insert(d, (at.unwrap().to_path_buf(), o.n));
        }
        if published_base_file(&self.root, &to.join("x")) && to.parent() == Some(&self.root.join("Bases")) {
            for (i, p) in &self.place {
                if published_base_file(&self.root, p) {
                    self.published.insert(*i);
                }
            }
        }
    }

    /// The last process ended: nothing may be left unflushed. Returns every breach found.
    pub fn end(mut self) -> Vec<String> {
        self.renamed.retain(|_, (p, _)| !self.flush_failed.contains(p));
        for (p, n) in std::mem::take(&mut self.renamed).values() {
            self.problems.push(format!("at the end: {} was not flushed after rename #{n}", p.display()));
        }
        self.unflushed("at the end", None);
        self.problems
    }
}

/// Replays `ops` (one process's, in order) and returns every breach of the rule, described.
pub fn check(root: &Path, ops: &[Op]) -> Vec<String> {
    let mut c = Checker::new(root);
    c.replay(ops);
    c.end()
}

/// The trace split by process, in the order the processes ran (an operation's CLI process, the
/// recovery after it...): process ids say nothing of order.
pub fn by_process(ops: &[Op]) -> Vec<(u64, Vec<Op>)> {
    let mut out: Vec<(u64, Vec<Op>)> = Vec::new();
    for o in ops {
        match out.iter_mut().find(|(pid, _)| *pid == o.pid) {
            Some((_, v)) => v.push(o.clone()),
            None => out.push((o.pid, vec![o.clone()])),
        }
    }
    out
}
