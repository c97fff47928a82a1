//! The operation journal (docs/journal.md): how an operation killed at any instant is finished
//! or undone, and why recovery can trust what it acts on.
//!
//! Before an operation changes anything it writes its plan to `.leafd/journal/<id>.json` and
//! holds an exclusive lock on that file for as long as it runs. Recovery ([`super::recovery`])
//! claims plans whose lock is free and, from the state it finds, rolls each operation forward
//! (once its result was published by an atomic rename) or back (before that).
//!
//! This module knows the file, its trust checks and the working folders; it knows nothing of the
//! operations, whose plans it carries as opaque JSON.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Library;
use crate::durable::{self, Flush};
use crate::error::{Error, IoContext, Kind, Result};
use crate::fsutil;

/// The journal format this leafd writes.
pub(crate) const FORMAT: u32 = 2;
/// The stamp file in every working folder an operation makes.
pub(crate) const STAMP: &str = ".leafd-stamp";
const SUFFIX: &str = ".json";

/// Which library a journal was written in: a copy has another inode, a move another path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LibraryId {
    pub(crate) root: PathBuf,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

impl LibraryId {
    pub(crate) fn of(lib: &Library) -> Result<LibraryId> {
        let m = fs::metadata(lib.root()).at(lib.root(), "cannot stat the library")?;
        Ok(LibraryId { root: lib.root().to_path_buf(), dev: m.dev(), ino: m.ino() })
    }
}

/// A path in a plan: relative means inside the library (recovered wherever the library now
/// is), absolute means outside it (acted on only in the library the journal was written in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct LPath(PathBuf);

impl LPath {
    /// `path` (absolute) as a plan records it for the library at `root`.
    pub(crate) fn new(root: &Path, path: &Path) -> LPath {
        match path.strip_prefix(root) {
            Ok(rel) if !rel.as_os_str().is_empty() => LPath(rel.to_path_buf()),
            _ => LPath(path.to_path_buf()),
        }
    }

    pub(crate) fn is_outside(&self) -> bool {
        self.0.is_absolute()
    }

    /// The path as recorded (relative to the library's root when inside it).
    pub(crate) fn as_path(&self) -> &Path {
        &self.0
    }
}

/// What recovery of one journal may act on.
pub(crate) struct Ctx<'a> {
    pub(crate) lib: &'a Library,
    /// The journal's id (also in its working folders' names and stamps).
    pub(crate) id: String,
    /// The journal was written in this very library (not a copy, not moved).
    pub(crate) same_library: bool,
    /// The journal's format: format 1 working folders carry no stamp.
    pub(crate) format: u32,
}

impl Ctx<'_> {
    /// Where `p` is now; an error (the journal is kept) for a path outside a moved or copied
    /// library, or one that climbs out of the library.
    pub(crate) fn path(&self, p: &LPath) -> Result<PathBuf> {
        if p.is_outside() {
            if !self.same_library {
                return Err(Error::refused(
                    &p.0,
                    "this operation involves a place outside the library, and the library was moved or copied since it was interrupted",
                )
                .fix(format!(
                    "see `leafd recover --show {}`; put things right by hand, then `leafd recover --discard {}`",
                    self.id, self.id
                )));
            }
            return Ok(p.0.clone());
        }
        self.inside(&p.0, "the journal names a path that leaves the library")?;
        Ok(self.lib.root().join(&p.0))
    }

    /// Checks that `p`, relative to a folder the operation works in (the library, a bundle),
    /// stays inside it: no `..`, no root, nothing but names.
    pub(crate) fn inside(&self, p: &Path, why: &str) -> Result<()> {
        if p.as_os_str().is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(Error::refused(p, why)
                .fix(format!("the journal is not one leafd wrote; `leafd recover --discard {}`", self.id)));
        }
        Ok(())
    }

    /// Like [`Ctx::path`] for an optional path.
    pub(crate) fn path_opt(&self, p: &Option<LPath>) -> Result<Option<PathBuf>> {
        p.as_ref().map(|p| self.path(p)).transpose()
    }
}

/// The stamp in a working folder.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Stamp {
    op: String,
    kind: String,
}

/// The name of operation `id`'s working folder of `kind` (`staging`, `flatten`, `promoted`,
/// `removing`): `.leafd-<kind>-<id>`.
pub(crate) fn work_name(kind: &str, id: &str) -> String {
    format!(".leafd-{kind}-{id}")
}

/// Makes a working folder and stamps it with the operation's id.
pub(crate) fn create_work_dir(dir: &Path, id: &str, kind: &str) -> Result<()> {
    durable::create_dir(dir)?;
    stamp(dir, id, kind)
}

/// Stamps a folder (a user's folder about to be set aside) as operation `id`'s.
pub(crate) fn stamp(dir: &Path, id: &str, kind: &str) -> Result<()> {
    let json = serde_json::to_vec(&Stamp { op: id.to_string(), kind: kind.to_string() })
        .map_err(|e| Error::new(Kind::Internal, dir.to_path_buf(), format!("cannot write a stamp: {e}")))?;
    durable::write_atomic(&dir.join(STAMP), &json)
}

/// Whether `dir` carries operation `id`'s stamp.
pub(crate) fn stamped(dir: &Path, id: &str) -> bool {
    fs::read(dir.join(STAMP)).ok().and_then(|b| serde_json::from_slice::<Stamp>(&b).ok()).is_some_and(|s| s.op == id)
}

/// Whether recovery of `ctx` may act on the working folder `dir`: it carries the operation's
/// stamp (format 1 had none), or it is empty, so nothing in it can be anyone else's (a removal
/// that took the stamp, last, and failed at the folder itself).
pub(crate) fn ours(ctx: &Ctx, dir: &Path) -> bool {
    ctx.format < FORMAT || stamped(dir, &ctx.id) || fsutil::is_empty_dir(dir)
}

/// Removes operation `id`'s stamp from `dir`, if it is there.
pub(crate) fn unstamp(dir: &Path, id: &str) -> Result<()> {
    if stamped(dir, id) {
        durable::remove_file(&dir.join(STAMP))?;
        durable::flush_path(dir, Flush::Order)?;
    }
    Ok(())
}

/// Removes the working folder `dir` (a path the operation derives, never one read from its
/// journal): only when it carries the operation's stamp (format 1 had none), or is empty.
/// Anything else is kept, and the journal with it.
pub(crate) fn remove_work_dir(ctx: &Ctx, dir: &Path) -> Result<()> {
    if dir.symlink_metadata().is_err() {
        return Ok(());
    }
    if ours(ctx, dir) {
        return durable::remove_tree(dir, Some(&dir.join(STAMP)));
    }
    Err(Error::refused(
        dir,
        "is not this operation's working folder (its stamp is missing or another's), so it is kept",
    )
    .fix(format!("look inside it; then `leafd recover --discard {}`", ctx.id)))
}

/// The journal file as it is on disk.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<P> {
    format: u32,
    id: String,
    library: LibraryId,
    op: String,
    plan: P,
}

/// An operation's plan on disk, locked by the running operation.
pub(crate) struct Journal {
    path: PathBuf,
    _lock: File,
}

impl Journal {
    /// Records `plan` (of operation kind `op`) durably, locked before it becomes visible, so
    /// recovery in another process never mistakes a starting operation for an abandoned one.
    pub(crate) fn begin<P: Serialize>(lib: &Library, id: &str, op: &str, plan: &P) -> Result<Journal> {
        let dir = lib.journal_dir();
        let path = dir.join(format!("{id}{SUFFIX}"));
        let tmp = dir.join(format!("{id}{SUFFIX}.tmp"));
        let envelope =
            Envelope { format: FORMAT, id: id.to_string(), library: LibraryId::of(lib)?, op: op.to_string(), plan };
        // Paths go in as JSON strings, which must be UTF-8.
        let json = serde_json::to_vec_pretty(&envelope).map_err(|e| {
            Error::format(&path, format!("cannot record the operation: {e}"))
                .fix("give the VM and its files names that are valid UTF-8")
        })?;
        // Held while the plan is unlocked on disk (between create and lock), so recovery never
        // claims a plan that is being written.
        let _scan = lib.lock("journal")?;
        let w = durable::create_private(&tmp)?;
        w.file().lock().at(&tmp, "cannot lock journal")?;
        w.write_at(&json, 0)?;
        w.flush(Flush::Commit)?;
        durable::rename_noreplace(&tmp, &path)?;
        let lock = w.into_file();
        // From here on, any failure must leave the untouched source or the finished result.
        durable::arm();
        Ok(Journal { path, _lock: lock })
    }

    /// The operation is complete (or fully undone): forget it.
    pub(crate) fn finish(self) -> Result<()> {
        remove(&self.path)
    }
}

fn remove(path: &Path) -> Result<()> {
    durable::remove_file(path)?;
    durable::flush_parent(path, Flush::Commit)
}

/// A journal whose operation's process is gone, claimed for recovery (its lock held).
pub(crate) struct Claimed {
    pub(crate) id: String,
    pub(crate) path: PathBuf,
    _lock: File,
}

impl Claimed {
    /// Reads the journal: its operation kind, its plan as JSON, and what recovery may act on.
    /// Format 1 journals (no `format` key) come back as format 1 with the whole file as plan.
    pub(crate) fn read<'a>(&self, lib: &'a Library) -> Result<(String, serde_json::Value, Ctx<'a>)> {
        let value = read_json(&self.path)?;
        let damaged = |why: &str| {
            Error::format(&self.path, format!("journal is damaged: {why}"))
                .fix(format!("see `leafd recover --show {}`, put things right by hand, then `--discard` it", self.id))
        };
        let Some(format) = value.get("format") else {
            let op = value.get("op").and_then(|o| o.as_str()).ok_or_else(|| damaged("no operation"))?.to_string();
            let ctx = Ctx { lib, id: self.id.clone(), same_library: true, format: 1 };
            return Ok((op, value, ctx));
        };
        let format = format.as_u64().ok_or_else(|| damaged("bad format"))?;
        if format > FORMAT as u64 {
            return Err(Error::unsupported(&self.path, format!("journal format {format} is newer than this leafd"))
                .fix("finish it with the leafd that wrote it (upgrade leafd)"));
        }
        let env: Envelope<serde_json::Value> = serde_json::from_value(value).map_err(|e| damaged(&e.to_string()))?;
        if env.id != self.id {
            return Err(damaged("its id is not its file name"));
        }
        let here = LibraryId::of(lib)?;
        let ctx = Ctx { lib, id: self.id.clone(), same_library: env.library == here, format: FORMAT };
        Ok((env.op, env.plan, ctx))
    }

    /// The journal is dealt with: forget it.
    pub(crate) fn finish(self) -> Result<()> {
        remove(&self.path)
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = fs::read(path).at(path, "cannot read journal")?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::format(path, format!("journal is damaged: {e}"))
            .fix("see `leafd recover --show ID`, put things right by hand, then `leafd recover --discard ID`")
    })
}

/// Parses a plan of type `P` from its JSON.
pub(crate) fn plan<P: DeserializeOwned>(value: serde_json::Value, path_hint: &Path) -> Result<P> {
    serde_json::from_value(value).map_err(|e| Error::format(path_hint, format!("journal is damaged: {e}")))
}

/// The ids of journals in `lib` and whether their operation is still running elsewhere.
pub(crate) fn list(lib: &Library) -> Result<Vec<(String, PathBuf, bool)>> {
    let dir = lib.journal_dir();
    let mut out = Vec::new();
    let Ok(paths) = fsutil::entries(&dir) else { return Ok(out) };
    for path in paths {
        let Some(id) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(SUFFIX)) else {
            continue;
        };
        let running = File::open(&path).is_ok_and(|f| f.try_lock().is_err());
        out.push((id.to_string(), path.clone(), running));
    }
    out.sort();
    Ok(out)
}

/// Claims every journal whose process is gone. Plans killed before they were published (the
/// `.tmp` of [`Journal::begin`]) had changed nothing and are removed.
pub(crate) fn claim(lib: &Library) -> Result<Vec<Claimed>> {
    let dir = lib.journal_dir();
    let _scan = lib.lock("journal")?;
    let Ok(paths) = fsutil::entries(&dir) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for path in paths {
        let Ok(file) = File::open(&path) else { continue };
        if file.try_lock().is_err() {
            continue; // its operation is running
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.ends_with(&format!("{SUFFIX}.tmp")) {
            remove(&path)?;
            continue;
        }
        if let Some(id) = name.strip_suffix(SUFFIX) {
            out.push(Claimed { id: id.to_string(), path, _lock: file });
        }
    }
    Ok(out)
}

/// One journal, claimed if its process is gone (`None` while it runs or when there is none).
pub(crate) fn claim_one(lib: &Library, id: &str) -> Result<Option<Claimed>> {
    Ok(claim(lib)?.into_iter().find(|c| c.id == id))
}

/// The journal of `id` as text, for a person.
pub(crate) fn show(lib: &Library, id: &str) -> Result<String> {
    let path = lib.journal_dir().join(format!("{id}{SUFFIX}"));
    fs::read_to_string(&path).map_err(|e| {
        Error::io(&path, "no such interrupted operation", e).fix("`leafd recover --list` shows the ones there are")
    })
}

/// Operations interrupted and not yet finished or undone (those still running do not count).
pub(crate) fn pending(lib: &Library) -> usize {
    list(lib).map(|l| l.iter().filter(|(.., running)| !running).count()).unwrap_or(0)
}
