//! `leafd remove-base NAME`: remove a base no leaf depends on any more. The base is stamped and
//! first vanishes from the library with one rename (so nothing can start using it halfway), is
//! unlocked, and then goes to the Trash under its own name (the freedesktop.org Trash on Linux,
//! `~/.Trash` on macOS; never by copying), or, with `--delete`, is deleted for good.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::common::human_bytes;
use crate::durable::{self, Flush};
use crate::error::{Error, Kind, Result, undo_after};
use crate::fsutil;
use crate::library::journal::{self, Ctx, Journal};
use crate::library::records::Listed;
use crate::library::{Library, validate_name};
use crate::platform;
use crate::testing::fault;

fault::steps!("remove-base" {
    Journaled = "journaled",
    Hidden = "hidden",
    Unlocked = "unlocked",
    Removed = "removed",
});

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// The base's id: only that base is ever hidden or removed.
    pub(crate) id: String,
    pub(crate) name: String,
    /// Deleted for good rather than moved to the Trash. A journal from before the Linux Trash
    /// has none: there removal deleted (confirmed), on macOS it went to the Trash.
    #[serde(default = "deleted_before_the_trash")]
    pub(crate) delete: bool,
}

/// What a journal from before the Linux Trash asked: deletion on Linux, the Trash on macOS.
pub(crate) const DELETED_BEFORE_THE_TRASH: bool = !cfg!(target_os = "macos");

fn deleted_before_the_trash() -> bool {
    DELETED_BEFORE_THE_TRASH
}

/// How a base is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum How {
    /// To the Trash, under its own name.
    Trash,
    /// Deleted for good; `confirmed` by the person (`--yes`, or an answer on the terminal).
    Delete { confirmed: bool },
}

/// Where a removal works.
struct Places {
    dir: PathBuf,
    hidden: PathBuf,
    drop_folder: PathBuf,
}

impl Places {
    fn of(lib: &Library, plan: &Plan) -> Result<Places> {
        validate_name(&plan.name, "base", &lib.bases_dir())?;
        Ok(Places {
            dir: lib.bases_dir().join(&plan.name),
            hidden: lib.bases_dir().join(journal::work_name("removing", &plan.id)),
            drop_folder: lib.new_leaf_dir().join(&plan.name),
        })
    }
}

/// The journal id of removing base `id`.
fn journal_id(id: &str) -> String {
    format!("remove-{id}")
}

#[derive(Debug)]
pub(crate) struct Removed {
    pub(crate) name: String,
    pub(crate) bytes: u64,
    /// Where it went: the Trash, or `None` when deleted.
    pub(crate) trashed_to: Option<PathBuf>,
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.trashed_to {
            Some(t) => write!(
                f,
                "base {:?} moved to the Trash: {} ({}; emptying the Trash frees it)",
                self.name,
                t.display(),
                human_bytes(self.bytes)
            ),
            None => write!(f, "base {:?} deleted, {} freed", self.name, human_bytes(self.bytes)),
        }
    }
}

/// What stands in the way of removing base `name`: its leaves, by name and place, wherever they
/// are; a leaf the base lists but that cannot be found still counts, since deleting a leaf must
/// never be a way to lose its base. Only `leafd forget` takes a leaf off the list.
pub(crate) fn dependents(lib: &Library, name: &str) -> Result<Vec<String>> {
    let base = lib.base(name)?;
    let leaves = lib.leaves()?;
    let mut out: Vec<String> = leaves
        .iter()
        .filter(|l| l.record.base_id == base.record.id)
        .map(|l| format!("{:?} ({})", l.record.name, l.dir.display()))
        .collect();
    for listed in base.leaf_refs()? {
        match listed {
            Listed::Leaf(r) if !leaves.iter().any(|l| l.record.id == r.id) => out.push(format!(
                "{:?} (recorded at {}, not found there: if it was deleted, `leafd forget {:?}` checks that and takes it off the list)",
                r.name, r.path, r.name
            )),
            Listed::Leaf(_) => {}
            Listed::Damaged(marker, why) => out.push(format!(
                "a leaf whose entry {} cannot be read ({why}; `leafd verify` says more)",
                marker.display()
            )),
        }
    }
    Ok(out)
}

/// Removes base `name`, `how` it says. Refused before anything changes when the base's volume
/// has no Trash leafd can use (a network volume), and when a deletion is not confirmed.
pub(crate) fn remove_base(lib: &Library, name: &str, how: How) -> Result<Removed> {
    let base = lib.base(name)?;
    // Held from the check to the hide: no New Leaf can start on the base in between.
    let _lock = base.lock(lib)?;
    let deps = dependents(lib, name)?;
    if !deps.is_empty() {
        return Err(Error::refused(
            &base.dir,
            format!(
                "{} lea{} still depend on this base: {}",
                deps.len(),
                if deps.len() == 1 { "f" } else { "ves" },
                deps.join(", ")
            ),
        )
        .fix("promote or delete those leaves first (`leafd promote LEAF` makes one standalone)"));
    }
    match how {
        How::Delete { confirmed: false } => {
            return Err(Error::refused(&base.dir, "--delete deletes the base for good, and nobody confirmed it").fix(
                format!(
                    "run `leafd remove-base {name:?} --delete --yes`, or leave out --delete to move it to the Trash"
                ),
            ));
        }
        How::Delete { .. } => {}
        How::Trash => {
            if let Err(e) = platform::trash_folder(&base.dir) {
                let kind = if e.kind() == std::io::ErrorKind::Unsupported { Kind::Refused } else { Kind::Io };
                return Err(Error::new(kind, base.dir.clone(), format!("cannot go to the Trash: {e}"))
                    .because(e)
                    .fix(format!("`leafd remove-base {name:?} --delete` deletes it for good instead")));
            }
        }
    }
    let bytes = fsutil::walk(&base.dir)?.iter().map(|p| fsutil::allocated(p)).sum();
    let delete = matches!(how, How::Delete { .. });
    let plan = Plan { id: base.record.id.clone(), name: base.record.name.clone(), delete };
    let jid = journal_id(&plan.id);
    let journal = Journal::begin(lib, &jid, OP, &plan)?;
    step(Step::Journaled);
    let ctx = Ctx { lib, id: jid.clone(), same_library: true, format: journal::FORMAT };
    let places = Places::of(lib, &plan)?;
    let hidden = journal::stamp(&places.dir, &jid, "removing")
        .and_then(|()| durable::rename_noreplace(&places.dir, &places.hidden));
    if let Err(e) = hidden {
        // Hidden but not flushed: the journal stays, and recovery finishes the removal. Not
        // hidden: nothing happened, and the base stays as it was.
        if places.hidden.exists() {
            return Err(e);
        }
        return Err(undo_after(e, || journal::unstamp(&places.dir, &jid).and_then(|()| journal.finish())));
    }
    step(Step::Hidden);
    let trashed_to = finish(&ctx, &places, &plan)?;
    journal.finish()?;
    Ok(Removed { name: plan.name, bytes, trashed_to })
}

/// Unlocks and removes the hidden base. Idempotent, so recovery runs it again.
fn finish(ctx: &Ctx, places: &Places, plan: &Plan) -> Result<Option<PathBuf>> {
    let mut trashed_to = None;
    if places.hidden.exists() {
        // Checked before anything is unlocked: a folder this removal did not hide is never touched.
        if !journal::ours(ctx, &places.hidden) {
            return Err(Error::refused(
                &places.hidden,
                "is not the folder this removal hid (its stamp is missing or another's)",
            )
            .fix(format!("look inside it; then `leafd recover --discard {}`", ctx.id)));
        }
        for p in fsutil::walk(&places.hidden)? {
            if p.is_file() {
                let mode = fs::metadata(&p).map(|m| m.permissions().mode()).unwrap_or(0o644);
                durable::unprotect(&p, (mode | 0o200) & 0o7777)?;
                // Flushed before the move publishes it in the Trash (deleted, it needs none).
                if !plan.delete {
                    durable::flush_path(&p, Flush::Order)?;
                }
            }
        }
        step(Step::Unlocked);
        if plan.delete {
            journal::remove_work_dir(ctx, &places.hidden)?;
        } else {
            // The stamp goes with it and is taken off in the Trash: a crash in between must
            // leave a hidden base that recovery still knows as this removal's.
            let to = durable::trash(&places.hidden, &plan.name).map_err(|e| {
                e.fix(format!(
                    "the base is out of the library, in {}: once the Trash can take it, `leafd recover` moves it there; or delete that folder yourself, then `leafd recover --discard {}`",
                    places.hidden.display(),
                    ctx.id
                ))
            })?;
            journal::unstamp(&to, &ctx.id)?;
            trashed_to = Some(to);
        }
        step(Step::Removed);
    }
    // The drop folder goes too, unless someone put something in it. Any other failure stops
    // here, and recovery tries again.
    durable::remove_file(&places.drop_folder.join(".DS_Store"))?;
    match durable::remove_dir(&places.drop_folder) {
        Ok(()) => durable::flush_parent(&places.drop_folder, Flush::Order)?,
        Err(e)
            if e.io_error()
                .and_then(Errno::from_io_error)
                .is_some_and(|n| n == Errno::NOTEMPTY || n == Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    Ok(trashed_to)
}

/// An interrupted removal: finished once the base was hidden (it was out of the library and
/// asked for); before that nothing had changed, and the base stays.
pub(crate) fn recover(ctx: &Ctx, plan: &Plan) -> Result<String> {
    let places = Places::of(ctx.lib, plan)?;
    if !places.hidden.exists() {
        let still_there = crate::library::base_at(&places.dir, &plan.id).unwrap_or(false);
        if still_there {
            journal::unstamp(&places.dir, &ctx.id)?;
            return Ok(format!(
                "the interrupted removal of base {:?} had not started; the base is untouched",
                plan.name
            ));
        }
        // Something else has the base's name (a new base, a folder): it is not this removal's,
        // nor is its New Leaf folder.
        if places.dir.symlink_metadata().is_ok() {
            return Err(Error::refused(
                &places.dir,
                "is not the base this removal was of (its id differs), so it is kept",
            )
            .fix(format!("see `leafd recover --show {}`, then `leafd recover --discard {}`", ctx.id, ctx.id)));
        }
    }
    finish(ctx, &places, plan)?;
    Ok(format!("finished removing base {:?}", plan.name))
}
