//! Recovery: every interrupted operation finished or undone, each by its own code, from the
//! journals [`super::journal`] keeps. This module sits above the operations (they never import
//! it), so the journal knows nothing of them.
//!
//! A journal that fails a check, or whose operation cannot be finished or undone now, is kept and
//! reported; `leafd recover --list`, `--show ID` and `--discard ID` let a person deal with it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::journal::{self, Claimed, Ctx, LPath};
use super::ops::{adopt, make_base, new_leaf, promote, remove_base, reset};
use super::records::{FORMAT, LeafRef, V1Base};
use super::{Library, Options};
use crate::error::{Error, Kind, Result};
use crate::{fsutil, progress};

/// What recovery did with one interrupted operation.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) id: String,
    /// What was done; or why it could not be, in which case the journal is kept.
    pub(crate) result: Result<String, Error>,
}

impl Recovered {
    /// Logs the outcome (and echoes it on stderr when `echo`); true when it went through.
    pub(crate) fn report(&self, echo: bool) -> bool {
        match &self.result {
            Ok(m) => {
                tracing::info!("{m}");
                if echo {
                    eprintln!("leafd: {m}");
                }
                true
            }
            Err(e) => {
                tracing::warn!("interrupted operation {} kept (not finished or undone): {}", self.id, e.summary());
                if echo {
                    eprintln!(
                        "leafd: interrupted operation {} kept (not finished or undone): {e}\n  see: leafd recover --show {}",
                        self.id, self.id
                    );
                }
                false
            }
        }
    }
}

/// Finishes or undoes every operation whose process is gone, and removes the progress records
/// such operations left. Operations still running in another process are left alone.
pub(crate) fn recover(lib: &Library, opts: &Options) -> Result<Vec<Recovered>> {
    // What a killed operation showed of its progress is not true any more.
    progress::remove_stale(lib);
    let mut out = Vec::new();
    for claimed in journal::claim(lib)? {
        // One operation that cannot be finished must not stop the others, nor leafd: not even
        // when its recovery meets a bug (a panic), which keeps the journal for next time.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| recover_one(lib, &claimed, opts)))
            .unwrap_or_else(|_| {
                Err(Error::new(Kind::Internal, claimed.path.clone(), "recovering this operation failed unexpectedly")
                    .fix("report it with the log (`leafd log`); the journal is kept"))
            });
        let id = claimed.id.clone();
        let result = match result {
            Ok(message) => claimed.finish().map(|()| message),
            Err(e) => Err(e),
        };
        out.push(Recovered { id, result });
    }
    Ok(out)
}

/// Recovers and logs each outcome, or why it could not look: for callers that go on either way
/// (the agent's timer, and after an operation that panicked).
pub(crate) fn recover_and_log(lib: &Library, opts: &Options) {
    match recover(lib, opts) {
        Ok(done) => {
            for r in &done {
                r.report(false);
            }
        }
        Err(e) => tracing::warn!("{}", e.summary()),
    }
}

fn recover_one(lib: &Library, claimed: &Claimed, opts: &Options) -> Result<String> {
    let (op, plan, ctx) = claimed.read(lib)?;
    let hint = claimed.path.as_path();
    own_plan(&op, &plan, &claimed.id, hint)?;
    if ctx.format < journal::FORMAT {
        return recover_v1(lib, &op, plan, hint, opts);
    }
    match op.as_str() {
        make_base::OP => make_base::recover(&ctx, &journal::plan(plan, hint)?, opts),
        new_leaf::OP => new_leaf::recover(&ctx, &journal::plan(plan, hint)?),
        promote::OP => promote::recover(&ctx, &journal::plan(plan, hint)?),
        adopt::OP => adopt::recover(&ctx, &journal::plan(plan, hint)?),
        reset::OP => reset::recover(&ctx, &journal::plan(plan, hint)?),
        remove_base::OP => remove_base::recover(&ctx, &journal::plan(plan, hint)?),
        other => Err(unknown(hint, other)),
    }
}

/// The plan must be the journal's own: its id (from which its working folders are named) is the
/// journal's file name (`remove-<id>` for a removal). Any other plan could make recovery work on
/// another operation's folders, or on folders its id reaches with a `/`.
fn own_plan(op: &str, plan: &Value, journal_id: &str, path: &Path) -> Result<()> {
    let id = plan.get("id").and_then(Value::as_str).unwrap_or_default();
    let expected = if op == remove_base::OP { format!("remove-{id}") } else { id.to_string() };
    if expected == journal_id {
        return Ok(());
    }
    Err(Error::refused(path, format!("the plan's id {id:?} is not this journal's ({journal_id:?})"))
        .fix(format!("the journal is not one leafd wrote: see `leafd recover --show {journal_id}`, then `leafd recover --discard {journal_id}`")))
}

fn unknown(path: &Path, op: &str) -> Error {
    Error::unsupported(path, format!("the journal is of an operation this leafd does not know ({op:?})"))
        .fix("finish it with the leafd that wrote it (upgrade leafd), or `leafd recover --discard ID`")
}

/// One line per interrupted or running operation, for `leafd recover --list`.
pub(crate) fn list(lib: &Library) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (id, path, running) in journal::list(lib)? {
        let value: Value =
            std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
        let op = value.get("op").and_then(Value::as_str).unwrap_or("unknown operation");
        let state = if running { "running now" } else { "interrupted" };
        out.push(format!("{id}  {op}  {state}"));
    }
    Ok(out)
}

/// The journal `id` for a person: its text, then each path it names and whether it is there.
pub(crate) fn show(lib: &Library, id: &str) -> Result<String> {
    let text = journal::show(lib, id)?;
    let mut out = text.clone();
    out.push_str("\npaths it names, as they are now:\n");
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let mut paths = Vec::new();
    collect_paths(&value, &mut paths);
    paths.sort();
    paths.dedup();
    // Working folders sit beside what they work on: in the library, or beside a place outside it
    // (a leaf relinked to another folder).
    let mut dirs = vec![lib.root().to_path_buf(), lib.bases_dir()];
    for p in paths {
        let at = if p.is_absolute() { p.clone() } else { lib.root().join(&p) };
        let state = if at.symlink_metadata().is_ok() { "present" } else { "absent" };
        out.push_str(&format!("  {state}: {}\n", at.display()));
        if let Some(parent) =
            at.parent().filter(|_| p.is_absolute() && !dirs.iter().any(|d| Some(d.as_path()) == at.parent()))
        {
            dirs.push(parent.to_path_buf());
        }
    }
    for dir in dirs {
        for p in fsutil::entries(&dir).unwrap_or_default() {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with(".leafd-") && name.ends_with(id.trim_start_matches("remove-")) {
                out.push_str(&format!("  working folder: {}\n", p.display()));
            }
        }
    }
    Ok(out)
}

/// Strings in a journal that look like paths.
fn collect_paths(v: &Value, out: &mut Vec<PathBuf>) {
    match v {
        Value::String(s) if s.contains('/') || s.ends_with(".vmwarevm") => out.push(PathBuf::from(s)),
        Value::Array(a) => a.iter().for_each(|v| collect_paths(v, out)),
        Value::Object(o) => o.iter().filter(|(k, _)| k.as_str() != "library").for_each(|(_, v)| collect_paths(v, out)),
        _ => {}
    }
}

/// Forgets the interrupted operation `id` without touching the files it names (a person put
/// them right). Refused while the operation runs.
pub(crate) fn discard(lib: &Library, id: &str) -> Result<String> {
    let shown = show(lib, id)?;
    let claimed = journal::claim_one(lib, id)?.ok_or_else(|| {
        Error::new(Kind::Busy, lib.journal_dir().join(format!("{id}.json")), "the operation is running now")
            .fix("wait for it to end, then look again with `leafd recover --list`")
    })?;
    claimed.finish()?;
    tracing::info!("discarded the journal of interrupted operation {id}; its files were left as they were");
    Ok(shown)
}

// Format 1 journals (before format 2): absolute paths, working folders named but not stamped.
// Their plans are read as they were written and turned into format 2 plans, with the root they
// were written in taken from their own target path.

fn recover_v1(lib: &Library, op: &str, plan: Value, hint: &Path, opts: &Options) -> Result<String> {
    let ctx = |root: &Path, id: &str| Ctx { lib, id: id.to_string(), same_library: root == lib.root(), format: 1 };
    match op {
        make_base::OP => {
            let v: V1MakeBase = journal::plan(plan, hint)?;
            let root = ancestor(&v.target, 2);
            check_named(&v.staging, &lib.bases_dir(), "staging", &v.id)?;
            let c = ctx(&root, &v.id);
            make_base::recover(&c, &v.into_plan(&root), opts)
        }
        new_leaf::OP => {
            let v: V1NewLeaf = journal::plan(plan, hint)?;
            let root = ancestor(&v.target, 1);
            check_named(&v.staging, lib.root(), "staging", &v.id)?;
            let c = ctx(&root, &v.id);
            new_leaf::recover(&c, &v.into_plan(&root))
        }
        promote::OP => {
            let v: V1Promote = journal::plan(plan, hint)?;
            let root = v.base.as_ref().map_or_else(|| ancestor(&v.leaf, 1), |(dir, _)| ancestor(dir, 2));
            let parent = v.leaf.parent().unwrap_or(&root).to_path_buf();
            check_named(&v.staging, &translate(&parent, &root, lib), "staging", &v.id)?;
            check_named(&v.aside, &translate(&parent, &root, lib), "promoted", &v.id)?;
            let c = ctx(&root, &v.id);
            promote::recover(&c, &v.into_plan(&root))
        }
        remove_base::OP => {
            let v: V1RemoveBase = journal::plan(plan, hint)?;
            let root = ancestor(&v.dir, 2);
            check_named(&v.hidden, &lib.bases_dir(), "removing", &v.id)?;
            let c = ctx(&root, &format!("remove-{}", v.id));
            remove_base::recover(
                &c,
                &remove_base::Plan { id: v.id, name: v.name, delete: remove_base::DELETED_BEFORE_THE_TRASH },
            )
        }
        other => Err(unknown(hint, other)),
    }
}

fn ancestor(p: &Path, n: usize) -> PathBuf {
    let mut p = p;
    for _ in 0..n {
        p = p.parent().unwrap_or(p);
    }
    p.to_path_buf()
}

/// `p` (under the journal's old root) where it is in the library now.
fn translate(p: &Path, old_root: &Path, lib: &Library) -> PathBuf {
    p.strip_prefix(old_root).map(|rel| lib.root().join(rel)).unwrap_or_else(|_| p.to_path_buf())
}

/// A format 1 journal's working folder must be the one its operation makes: named for it, where
/// it makes it. Any other folder is never touched.
fn check_named(recorded: &Path, dir_now: &Path, kind: &str, id: &str) -> Result<()> {
    let expected = journal::work_name(kind, id);
    if recorded.file_name().and_then(|n| n.to_str()) == Some(expected.as_str()) {
        return Ok(());
    }
    Err(Error::refused(
        recorded,
        format!(
            "the journal names this as its working folder, but leafd's would be {}",
            dir_now.join(&expected).display()
        ),
    )
    .fix("the journal is not one leafd wrote: `leafd recover --discard ID`"))
}

#[derive(Deserialize)]
struct V1MakeBase {
    id: String,
    name: String,
    source: PathBuf,
    staging: PathBuf,
    target: PathBuf,
    copy: bool,
    vmx: PathBuf,
    disk_files: Vec<make_base::DiskFile>,
    flatten: Vec<make_base::Flatten>,
    from_leaf: Option<(PathBuf, String)>,
    record: V1Base,
}

impl V1MakeBase {
    fn into_plan(self, root: &Path) -> make_base::Plan {
        make_base::Plan {
            id: self.id,
            name: self.name,
            source: LPath::new(root, &self.source),
            copy: self.copy,
            vmx: self.vmx,
            disk_files: self.disk_files,
            flatten: self.flatten,
            from_leaf: self
                .from_leaf
                .map(|(dir, leaf_id)| make_base::FromLeaf { base: LPath::new(root, &dir), leaf_id }),
            repointed: Vec::new(),
            // Format 1 kept extents on the files themselves; its store is read as it is.
            record: self.record.into_record(|_| Vec::new()),
        }
    }
}

#[derive(Deserialize)]
struct V1NewLeaf {
    id: String,
    base_dir: PathBuf,
    base_id: String,
    name: String,
    staging: PathBuf,
    target: PathBuf,
    request: Option<PathBuf>,
    leaf_ref: V1LeafRef,
}

#[derive(Deserialize)]
struct V1LeafRef {
    id: String,
    name: String,
    path: String,
    created: String,
}

impl V1NewLeaf {
    fn into_plan(self, root: &Path) -> new_leaf::Plan {
        new_leaf::Plan {
            id: self.id,
            base: LPath::new(root, &self.base_dir),
            base_id: self.base_id,
            name: self.name,
            request: self.request.map(|r| LPath::new(root, &r)),
            leaf_ref: LeafRef {
                format: FORMAT,
                id: self.leaf_ref.id,
                name: self.leaf_ref.name,
                path: self.leaf_ref.path,
                created: self.leaf_ref.created,
            },
        }
    }
}

#[derive(Deserialize)]
struct V1Promote {
    id: String,
    leaf: PathBuf,
    staging: PathBuf,
    aside: PathBuf,
    base: Option<(PathBuf, String)>,
    leaf_id: String,
}

impl V1Promote {
    fn into_plan(self, root: &Path) -> promote::Plan {
        promote::Plan {
            id: self.id,
            leaf: LPath::new(root, &self.leaf),
            base: self.base.map(|(dir, id)| (LPath::new(root, &dir), id)),
            leaf_id: self.leaf_id,
        }
    }
}

#[derive(Deserialize)]
struct V1RemoveBase {
    id: String,
    name: String,
    dir: PathBuf,
    hidden: PathBuf,
}
