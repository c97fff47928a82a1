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
        name: base.record.name.clone(),
        dir: base.dir.clone(),
        hidden: lib.bases_dir().join(format!(".leafd-removing-{id}")),
        drop_folder: lib.new_leaf_dir().join(&base.record.name),
    };
    let journal = Journal::begin(lib, &format!("remove-{id}"), &JournalPlan::RemoveBase(plan.clone()))?;
    step("journaled");
    let trashed_to = finish(&plan, opts)?;
    journal.finish()?;
    Ok(Removed { name: plan.name, bytes, trashed_to })
}

/// Hides, unlocks and removes the base. Idempotent, so recovery runs it again.
fn finish(plan: &Plan, _opts: &Options) -> Result<Option<PathBuf>> {
    if plan.dir.exists() && !plan.hidden.exists() {
        fsutil::rename_new(&plan.dir, &plan.hidden)?;
    }
    step("hidden");
    if !plan.hidden.exists() {
        return Ok(None); // removed before a crash
    }
    for p in fsutil::walk(&plan.hidden)? {
        if p.is_file() {
            let mode =
                fs::metadata(&p).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions())).unwrap_or(0o644);
            platform::unprotect(&p, mode | 0o200).at(&p, "cannot unlock")?;
        }
    }
    step("unlocked");
    let trashed_to = if platform::HAS_TRASH {
        Some(platform::trash(&plan.hidden, &plan.name).at(&plan.hidden, "cannot move to the Trash")?)
    } else {
        fs::remove_dir_all(&plan.hidden).at(&plan.hidden, "cannot delete")?;
        None
    };
    step("removed");
    // The drop folder goes too, unless someone put something in it.
    let _ = fs::remove_file(plan.drop_folder.join(".DS_Store"));
    let _ = fs::remove_dir(&plan.drop_folder);
    Ok(trashed_to)
}

/// Finishes an interrupted removal: once it was asked for, it goes through.
pub fn recover(plan: &Plan, opts: &Options) -> Result<String> {
    finish(plan, opts)?;
    Ok(format!("finished removing base {:?}", plan.name))
}
