//! `leafd reset LEAF`: puts a leaf's disks and `.nvram` back to the state of its snapshot Base.
//! Every delta is replaced by an empty one over the same parent copy and the `.nvram` by the
//! base's; the `.vmx` (settings, identity) is kept. The old files go to the Trash, so a reset can
//! be undone.
//!
//! The new files are written in a stamped working folder inside the leaf,
//! `.leafd-staging-<id>`, and flushed. The commit point is a second one, `.leafd-reset-<id>`,
//! made once they are complete: the old files are moved into it and the new ones into their
//! places, one rename each, then it goes to the Trash. Killed before it, the leaf is as it was;
//! after it, recovery finishes the moves from what it finds. The base is only read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use leafd_formats::clone::{create_delta, delta_extents};
use leafd_formats::disk::{Disk, DiskType, extent_names, read_descriptor};
use serde::{Deserialize, Serialize};

use super::common::{base_nvram, human_bytes, human_duration, read_dict, refuse_own_snapshots};
use crate::durable::{self, Flush};
use crate::error::{Error, Kind, Result, undo_after};
use crate::fsutil;
use crate::library::journal::{self, Ctx, Journal, LPath};
use crate::library::records;
use crate::library::{Base, Leaf, Library, Options};
use crate::platform;
use crate::testing::fault;

fault::steps!("reset" {
    Journaled = "journaled",
    /// The new deltas and `.nvram` written and flushed in the staging folder.
    Staged = "staged",
    /// The folder the old files go to is made: the commit point.
    Committed = "committed",
    Swapped = "swapped",
    Trashed = "trashed",
});

/// The journal's record of a reset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plan {
    pub(crate) id: String,
    pub(crate) leaf: LPath,
    pub(crate) leaf_id: String,
    /// The leaf's files the reset takes away, relative to it: its deltas' files, its `.nvram`.
    pub(crate) old: Vec<PathBuf>,
    /// The files it puts in the leaf, relative to it (and to the staging folder).
    pub(crate) new: Vec<PathBuf>,
    /// The name the old files go to the Trash under.
    pub(crate) trash_name: String,
}

/// Where a reset works: inside the leaf.
struct Places {
    leaf: PathBuf,
    staging: PathBuf,
    aside: PathBuf,
}

impl Places {
    fn of(ctx: &Ctx, plan: &Plan) -> Result<Places> {
        for f in plan.old.iter().chain(&plan.new) {
            ctx.inside(f, "the journal names a file of the leaf outside it")?;
        }
        let leaf = ctx.path(&plan.leaf)?;
        Ok(Places {
            staging: leaf.join(journal::work_name("staging", &plan.id)),
            aside: leaf.join(journal::work_name("reset", &plan.id)),
            leaf,
        })
    }
}

#[derive(Debug)]
pub(crate) struct Reset {
    pub(crate) name: String,
    pub(crate) base: String,
    /// What the old deltas held, gone to the Trash.
    pub(crate) bytes: u64,
    pub(crate) trashed_to: PathBuf,
    pub(crate) elapsed: Duration,
}

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "leaf {:?} reset to its snapshot Base (base {:?}): its disks' changes ({}) went to the Trash, {}; {}",
            self.name,
            self.base,
            human_bytes(self.bytes),
            self.trashed_to.display(),
            human_duration(self.elapsed)
        )
    }
}

/// What resetting `leaf` means for it, for a person to confirm.
fn consequences(leaf: &Leaf) -> String {
    let mut s = format!(
        "resetting leaf {:?} puts its disks and EFI variables back to its snapshot Base; their changes since go to the Trash",
        leaf.record.name
    );
    if leaf.record.adopted {
        s.push_str(&format!(
            ". It was adopted: its snapshot Base is the state of base {:?}, not the state the VM was in when it was adopted",
            leaf.record.base_name
        ));
    }
    s
}

/// The question to ask before resetting the leaf `arg`.
pub(crate) fn question(lib: &Library, arg: &Path) -> Result<String> {
    let mut q = consequences(&lib.find_leaf(arg)?);
    q.push_str(". Reset it? [y/N] ");
    Ok(q)
}

/// A disk of the leaf as it will be reset: its delta, the parent copy it is over, the base's
/// disk type (the delta is split like it).
struct Disks {
    delta: PathBuf,
    parent_copy: PathBuf,
    base_type: DiskType,
}

/// Resets the leaf `arg` (a path, or a leaf name in the library). `confirmed` must be true.
pub(crate) fn reset(lib: &Library, arg: &Path, confirmed: bool, opts: &Options) -> Result<Reset> {
    let start = Instant::now();
    let leaf = lib.find_leaf(arg)?;
    refuse_own_snapshots(
        &leaf,
        "then reset it (to keep what it holds now as a VM of its own instead, delete them and `leafd promote` it)",
    )?;
    let base = lib.bases()?.into_iter().find(|b| b.record.id == leaf.record.base_id).ok_or_else(|| {
        Error::refused(&leaf.dir, format!("its base {:?} is not in the library", leaf.record.base_name))
            .fix("put the base back in Bases (or `leafd relink` the leaf to where it is), then reset it")
    })?;
    let disks = leaf_disks(&leaf, &base, opts)?;
    if !confirmed {
        return Err(Error::refused(&leaf.dir, format!("{}, and nobody confirmed it", consequences(&leaf)))
            .fix(format!("run `leafd reset {:?} --yes`", leaf.record.name)));
    }
    if let Err(e) = platform::trash_folder(&leaf.dir) {
        let kind = if e.kind() == std::io::ErrorKind::Unsupported { Kind::Refused } else { Kind::Io };
        return Err(Error::new(kind, leaf.dir.clone(), format!("its old disks cannot go to the Trash: {e}"))
            .because(e)
            .fix("move the leaf to a volume with a Trash, then reset it"));
    }
    let nvram = nvrams(&leaf, &base, opts)?;
    let plan = plan_of(lib, &leaf, &disks, &nvram)?;
    refuse_in_the_way(&leaf, &plan)?;
    let bytes = plan.old.iter().map(|f| fsutil::allocated(&leaf.dir.join(f))).sum();
    let state = fsutil::tree_state(&leaf.dir)?;
    let journal = Journal::begin(lib, &plan.id, OP, &plan)?;
    step(Step::Journaled);
    let ctx = Ctx { lib, id: plan.id.clone(), same_library: true, format: journal::FORMAT };
    let places = Places::of(&ctx, &plan)?;
    let nvram = nvram.1.as_deref().map(|from| (from, nvram.0.as_path()));
    let committed = stage(&plan, &places, &disks, nvram, opts)
        .and_then(|()| unchanged(&leaf, &places, &state))
        .and_then(|()| journal::create_work_dir(&places.aside, &plan.id, "reset"));
    if let Err(e) = committed {
        // Made: the old files' folder is there, the new ones complete, and recovery finishes.
        if places.aside.symlink_metadata().is_ok() {
            return Err(e);
        }
        return Err(undo_after(e, || journal::remove_work_dir(&ctx, &places.staging).and_then(|()| journal.finish())));
    }
    step(Step::Committed);
    let trashed_to = finish(&ctx, &plan, &places)?;
    journal.finish()?;
    let (name, base) = (leaf.record.name, leaf.record.base_name);
    Ok(Reset { name, base, bytes, trashed_to, elapsed: start.elapsed() })
}

/// Each disk of the leaf, its chain checked to reach the base.
fn leaf_disks(leaf: &Leaf, base: &Base, opts: &Options) -> Result<Vec<Disks>> {
    let env = opts.env();
    let mut out = Vec::new();
    for d in &leaf.record.disks {
        Disk::open(&env, &leaf.dir.join(&d.delta)).map_err(|e| {
            Error::refused(&e.path, format!("the leaf does not reach its base: {}", e.message))
                .fix("if the leaf or its base moved, run `leafd relink` on the leaf, then reset it")
        })?;
        let record = base.record.disks.iter().find(|b| b.node == d.base_node()).ok_or_else(|| {
            Error::refused(&base.dir, format!("base {:?} has no disk {}", base.record.name, d.base_node()))
                .fix("run `leafd verify`")
        })?;
        let base_type = DiskType::from_create_type(&record.create_type)
            .ok_or_else(|| Error::format(&base.descriptor_path(record), "the base's disk type is unknown"))?;
        out.push(Disks { delta: d.delta.clone().into(), parent_copy: d.parent_copy.clone().into(), base_type });
    }
    Ok(out)
}

/// The leaf's `.nvram` (relative to it, whether it is there or not), and the base's to copy.
fn nvrams(leaf: &Leaf, base: &Base, opts: &Options) -> Result<(PathBuf, Option<PathBuf>)> {
    let vmx = read_dict(&leaf.vmx_path())?;
    let stem = Path::new(&leaf.record.vmx).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let own = PathBuf::from(vmx.get("nvram").map_or_else(|| format!("{stem}.nvram"), str::to_string));
    if own.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(Error::refused(&leaf.vmx_path(), format!("its nvram {} is not a file of the leaf", own.display()))
            .fix("point the .vmx's nvram at a file in the leaf's folder"));
    }
    Ok((own, base_nvram(&read_dict(&base.vmx_path())?, base, opts)))
}

/// The plan: the files the reset takes away and those it puts in, relative to the leaf.
fn plan_of(lib: &Library, leaf: &Leaf, disks: &[Disks], nvram: &(PathBuf, Option<PathBuf>)) -> Result<Plan> {
    let env = leafd_formats::StdEnv::shared();
    let mut old = Vec::new();
    let mut new = Vec::new();
    for d in disks {
        let delta = Disk::open_alone(&env, &leaf.dir.join(&d.delta))?;
        old.extend(delta.files().iter().filter_map(|f| f.strip_prefix(&leaf.dir).ok().map(Path::to_path_buf)));
        let (copy, _) = read_descriptor(&env, &leaf.dir.join(&d.parent_copy))?;
        let stem = d.delta.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let count = delta_extents(&copy, d.base_type).len();
        let kind = if d.base_type.is_split() { DiskType::SplitSparse } else { DiskType::MonolithicSparse };
        if kind.is_split() {
            new.push(d.delta.clone());
        }
        new.extend(extent_names(&stem, kind, count).into_iter().map(|n| d.delta.with_file_name(n)));
    }
    // A link, dangling or not, goes like a file (the new one takes its name); a folder stays,
    // and is refused as in the way.
    if leaf.dir.join(&nvram.0).symlink_metadata().is_ok_and(|m| m.is_file() || m.file_type().is_symlink()) {
        old.push(nvram.0.clone());
    }
    if nvram.1.is_some() {
        new.push(nvram.0.clone());
    }
    let when = chrono::Local::now().format("%Y-%m-%d %H.%M.%S");
    Ok(Plan {
        id: records::new_id(),
        leaf: LPath::new(lib.root(), &leaf.dir),
        leaf_id: leaf.record.id.clone(),
        old,
        new,
        trash_name: format!("{} before reset {when}", leaf.record.name),
    })
}

/// Refuses what is at the name of a new file and is not one the reset takes away (a folder named
/// like the `.nvram`, a leftover at a new delta extent's name): after the commit point it would
/// stop the new file from being put in its place, and recovery with it.
fn refuse_in_the_way(leaf: &Leaf, plan: &Plan) -> Result<()> {
    for rel in plan.new.iter().filter(|r| !plan.old.contains(r)) {
        let at = leaf.dir.join(rel);
        if at.symlink_metadata().is_ok() {
            return Err(Error::refused(&at, "is in the way of the file the reset puts there")
                .fix("move it out of the leaf's folder, then reset it"));
        }
    }
    Ok(())
}

/// Writes the new deltas and the base's `.nvram` into the staging folder, and flushes them.
/// `nvram`: the base's, and the leaf's name for it.
fn stage(plan: &Plan, places: &Places, disks: &[Disks], nvram: Option<(&Path, &Path)>, opts: &Options) -> Result<()> {
    journal::create_work_dir(&places.staging, &plan.id, "staging")?;
    let env = opts.env();
    let mut made = Vec::new();
    for d in disks {
        let at = places.staging.join(&d.delta);
        if let Some(dir) = at.parent() {
            durable::create_dir_all(dir)?;
        }
        let (copy, _) = read_descriptor(&env, &places.leaf.join(&d.parent_copy))?;
        let parent_name = d.parent_copy.file_name().and_then(|n| n.to_str()).unwrap_or("disk.vmdk");
        made.extend(create_delta(&env, &at, parent_name, &copy, d.base_type)?);
    }
    if let Some((from, own)) = nvram {
        let to = places.staging.join(own);
        durable::copy_file(from, &to, &opts.cancel)?;
        made.push(to);
    }
    let made: Vec<PathBuf> =
        made.iter().filter_map(|f| f.strip_prefix(&places.staging).ok().map(Path::to_path_buf)).collect();
    if made != plan.new {
        return Err(Error::internal(places.staging.clone(), format!("made {made:?}, planned {:?}", plan.new)));
    }
    // A new file takes the permissions of the old one it replaces (a private leaf stays private);
    // its owner keeps reading and writing it.
    for rel in &made {
        if let Ok(m) = std::fs::metadata(places.leaf.join(rel)) {
            durable::set_mode(&places.staging.join(rel), (m.permissions().mode() & 0o7777) | 0o600)?;
        }
    }
    durable::flush_tree(&places.staging, Flush::Order)?;
    step(Step::Staged);
    Ok(())
}

/// Nothing may have written into the leaf meanwhile (VMware started it?): its files are as they
/// were, its working folders aside.
fn unchanged(leaf: &Leaf, places: &Places, before: &fsutil::TreeState) -> Result<()> {
    let mut now = fsutil::tree_state(&leaf.dir)?;
    now.retain(|(p, ..)| !p.starts_with(&places.staging) && !p.starts_with(&places.aside));
    if now != *before {
        return Err(Error::refused(&leaf.dir, "the leaf changed while it was being reset (was it started?)")
            .fix("shut the VM down in VMware, then reset it again"));
    }
    Ok(())
}

/// After the commit point: the old files aside, the new ones in their places, the staging
/// folder gone, the old files to the Trash. Idempotent: what is done is seen and not done again.
fn finish(ctx: &Ctx, plan: &Plan, places: &Places) -> Result<PathBuf> {
    for rel in &plan.old {
        let (at, to) = (places.leaf.join(rel), places.aside.join(rel));
        // A file of the same name whose new one was moved in already is the new one.
        let still_old = !plan.new.contains(rel) || places.staging.join(rel).symlink_metadata().is_ok();
        if still_old && at.symlink_metadata().is_ok() && to.symlink_metadata().is_err() {
            if let Some(dir) = to.parent() {
                durable::create_dir_all(dir)?;
            }
            durable::rename_noreplace(&at, &to)?;
        }
    }
    for rel in &plan.new {
        let from = places.staging.join(rel);
        if from.symlink_metadata().is_ok() {
            durable::rename_noreplace(&from, &places.leaf.join(rel))?;
        }
    }
    journal::remove_work_dir(ctx, &places.staging)?;
    // What went into it is flushed before it moves, also when a process before this one moved
    // it there and failed before its flush.
    durable::flush_path(&places.aside, Flush::Order)?;
    step(Step::Swapped);
    // The stamp goes with it and is taken off in the Trash: a crash in between leaves a folder
    // recovery still knows as this reset's.
    let to = durable::trash(&places.aside, &plan.trash_name).map_err(|e| {
        e.fix(format!(
            "the leaf is reset; its old disks wait in {}: once the Trash can take them, `leafd recover` moves them there",
            places.aside.display()
        ))
    })?;
    journal::unstamp(&to, &ctx.id)?;
    step(Step::Trashed);
    Ok(to)
}

/// Finishes or undoes an interrupted reset: finished once the old files' folder was made (the
/// new files were complete by then), else the staging goes and the leaf is as it was.
pub(crate) fn recover(ctx: &Ctx, plan: &Plan) -> Result<String> {
    let places = Places::of(ctx, plan)?;
    let shown = places.leaf.display();
    if places.aside.symlink_metadata().is_ok() {
        if !journal::ours(ctx, &places.aside) {
            return Err(Error::refused(
                &places.aside,
                "is not the folder this reset moved the old disks to (its stamp is missing or another's), so it is kept",
            )
            .fix(format!("look inside it; then `leafd recover --discard {}`", ctx.id)));
        }
        let to = finish(ctx, plan, &places)?;
        return Ok(format!(
            "finished the interrupted reset of {shown}; its old disks are in the Trash: {}",
            to.display()
        ));
    }
    if places.staging.symlink_metadata().is_ok() {
        journal::remove_work_dir(ctx, &places.staging)?;
        return Ok(format!("undid the interrupted reset of {shown}; the leaf is as it was"));
    }
    Ok(format!("the interrupted reset of {shown} had not started, or had finished; nothing to do"))
}
