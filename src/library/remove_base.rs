//! `leafd remove-base NAME`: remove a base no leaf depends on any more. The base first vanishes
//! from the library with one rename (so nothing can start using it halfway), is unlocked, and
//! then goes to the Trash (macOS) or is deleted (Linux, after confirmation).

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::journal::{Journal, Plan as JournalPlan};
use super::make_base::human_bytes;
use super::{Library, Options};
use crate::error::{Error, IoContext, Result};
use crate::fault;
use crate::fsutil;
use crate::platform;

pub const OP: &str = "remove-base";

pub const STEPS: &[&str] = &["journaled", "hidden", "unlocked", "removed"];

fn step(name: &str) {
    fault::point(OP, STEPS, name);
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The base's id: only that base is ever hidden or removed.
    pub id: String,
    pub name: String,
    pub dir: PathBuf,
    pub hidden: PathBuf,
    pub drop_folder: PathBuf,
}

#[derive(Debug)]
pub struct Removed {
    pub name: String,
    pub bytes: u64,
    /// Where it went: the Trash, or `None` when deleted.
    pub trashed_to: Option<PathBuf>,
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.trashed_to {
            Some(t) => {
                write!(f, "base {:?} moved to the Trash ({}): {}", self.name, human_bytes(self.bytes), t.display())
            }
            None => write!(f, "base {:?} deleted, {} freed", self.name, human_bytes(self.bytes)),
        }
    }
}

/// What stands in the way of removing base `name`: its leaves, by name and place.
pub fn dependents(lib: &Library, name: &str) -> Result<Vec<String>> {
    let base = lib.base(name)?;
    let leaves = lib.leaves()?;
    let mut out: Vec<String> = leaves
        .iter()
        .filter(|l| l.record.base_id == base.record.id)
        .map(|l| format!("{:?} ({})", l.record.name, l.dir.display()))
        .collect();
    for r in base.leaf_refs()? {
        if !leaves.iter().any(|l| l.record.id == r.id) {
            let marker = base.leaves_dir().join(&r.id);
            out.push(format!(
                "{:?} (recorded at {}; not found there: if you deleted it, forget it with rm '{}')",
                r.name,
                r.path,
                marker.display()
            ));
        }
    }
    Ok(out)
}

/// Removes base `name`. `confirmed` must be true where removal is final (no Trash).
pub fn remove_base(lib: &Library, name: &str, confirmed: bool, opts: &Options) -> Result<Removed> {
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
    if !platform::HAS_TRASH && !confirmed {
        return Err(Error::refused(&base.dir, "removing a base deletes it for good (there is no Trash here)")
            .fix("run again with --yes to confirm"));
    }
    let bytes = fsutil::walk(&base.dir)?.iter().map(|p| fsutil::allocated(p)).sum();
    let id = base.record.id.clone();
    let plan = Plan {
        id: id.clone(),
        name: base.record.name.clone(),
        dir: base.dir.clone(),
        hidden: lib.bases_dir().join(format!(".leafd-removing-{id}")),
        drop_folder: lib.new_leaf_dir().join(&base.record.name),
    };
    let journal = Journal::begin(lib, &format!("remove-{id}"), &JournalPlan::RemoveBase(plan.clone()))?;
    step("journaled");
    fsutil::rename_new(&plan.dir, &plan.hidden)?;
    step("hidden");
    let trashed_to = finish(&plan, opts)?;
    journal.finish()?;
    Ok(Removed { name: plan.name, bytes, trashed_to })
}

/// Unlocks and removes the hidden base. Idempotent, so recovery runs it again.
fn finish(plan: &Plan, _opts: &Options) -> Result<Option<PathBuf>> {
    let mut trashed_to = None;
    if plan.hidden.exists() {
        for p in fsutil::walk(&plan.hidden)? {
            if p.is_file() {
                let mode = fs::metadata(&p)
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
                    .unwrap_or(0o644);
                platform::unprotect(&p, mode | 0o200).at(&p, "cannot unlock")?;
            }
        }
        step("unlocked");
        if platform::HAS_TRASH {
            trashed_to = Some(platform::trash(&plan.hidden, &plan.name).at(&plan.hidden, "cannot move to the Trash")?);
        } else {
            fs::remove_dir_all(&plan.hidden).at(&plan.hidden, "cannot delete")?;
        }
        step("removed");
    }
    // The drop folder goes too, unless someone put something in it.
    let _ = fs::remove_file(plan.drop_folder.join(".DS_Store"));
    let _ = fs::remove_dir(&plan.drop_folder);
    Ok(trashed_to)
}

/// An interrupted removal: finished once the base was hidden (it was out of the library and
/// asked for); before that nothing had changed, and the base stays.
pub fn recover(_lib: &Library, plan: &Plan, opts: &Options) -> Result<String> {
    if !plan.hidden.exists() {
        let still_there = super::base_at(&plan.dir, &plan.id).unwrap_or(false);
        return Ok(if still_there {
            format!("the interrupted removal of base {:?} had not started; the base is untouched", plan.name)
        } else {
            finish(plan, opts)?;
            format!("finished removing base {:?}", plan.name)
        });
    }
    finish(plan, opts)?;
    Ok(format!("finished removing base {:?}", plan.name))
}
