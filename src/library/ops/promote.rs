//! `leafd promote LEAF`: turn a leaf into a standalone VM that no longer needs its base.
//!
//! Each disk's chain is flattened into a new disk in a stamped staging bundle beside the leaf;
//! the leaf's other files are hard-linked into it (instant, no space); then the two bundles swap
//! places with two renames recorded in the journal. Until the swap the leaf is untouched; after
//! it the promoted VM is complete. The base is only read.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use leafd_formats::disk::Disk;
use leafd_formats::flatten::{self, flatten};
use serde::{Deserialize, Serialize};

use super::common::{free_space, human_bytes, human_duration, read_dict, refuse_own_snapshots};
use crate::durable::{self, Flush};
use crate::error::{Error, IoContext, Kind, Result, undo_after};
use crate::fsutil;
use crate::library::journal::{self, Ctx, Journal, LPath};
use crate::library::records::{self, LeafRecord};
use crate::library::{Leaf, Library, Options};
use crate::platform::Tag;
use crate::progress::Progress;
use crate::testing::fault;

fault::steps!("promote" {
    Journaled = "journaled",
    Flattened = "flattened",
    Staged = "staged",
    SetAside = "set-aside",
    Swapped = "swapped",
    Unlinked = "unlinked",
    Cleaned = "cleaned",
});

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plan {
    pub(crate) id: String,
    pub(crate) leaf: LPath,
    /// The base's folder and id, to take the leaf off its list.
    pub(crate) base: Option<(LPath, String)>,
    pub(crate) leaf_id: String,
}

/// Where a promotion works, beside the leaf.
struct Places {
    leaf: PathBuf,
    staging: PathBuf,
    /// Where the old leaf waits between the two renames, and until it is removed.
    aside: PathBuf,
}

impl Places {
    fn of(ctx: &Ctx, plan: &Plan) -> Result<Places> {
        let leaf = ctx.path(&plan.leaf)?;
        let parent = leaf.parent().unwrap_or(ctx.lib.root()).to_path_buf();
        Ok(Places {
            staging: parent.join(journal::work_name("staging", &plan.id)),
            aside: parent.join(journal::work_name("promoted", &plan.id)),
            leaf,
        })
    }
}

#[derive(Debug)]
pub(crate) struct Promoted {
    pub(crate) name: String,
    pub(crate) base: String,
    pub(crate) bytes: u64,
    pub(crate) elapsed: Duration,
}

impl std::fmt::Display for Promoted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "leaf {:?} promoted to a standalone VM (no longer needs base {:?}): {} of disks, {}",
            self.name,
            self.base,
            human_bytes(self.bytes),
            human_duration(self.elapsed)
        )
    }
}

/// The files of a leaf that belong to its snapshot chain or snapshot state, relative to it.
fn chain_files(leaf: &Path, record: &LeafRecord, opts: &Options) -> Result<Vec<PathBuf>> {
    let env = opts.env();
    let mut out = Vec::new();
    for d in &record.disks {
        for disk in [&d.parent_copy, &d.delta] {
            let opened = Disk::open_alone(&env, &leaf.join(disk))?;
            out.extend(opened.files().into_iter().map(|f| f.strip_prefix(leaf).map(Path::to_path_buf).unwrap_or(f)));
        }
    }
    Ok(out)
}

/// Promotes the leaf `arg` (a path, or a leaf name in the library).
pub(crate) fn promote(lib: &Library, arg: &Path, opts: &Options) -> Result<Promoted> {
    let start = Instant::now();
    let leaf = lib.find_leaf(arg)?;
    let record = leaf.record.clone();
    // Snapshots the user took since would be lost by flattening the delta under them.
    refuse_own_snapshots(&leaf, "then promote it")?;
    let env = opts.env();
    let mut chains = Vec::new();
    let mut needed = 0u64;
    let mut work = 0;
    for d in &record.disks {
        let chain = Disk::open(&env, &leaf.dir.join(&d.delta))?;
        let mut disk = Some(&chain);
        while let Some(x) = disk {
            needed += x.extent_files().iter().map(|f| fsutil::allocated(f)).sum::<u64>();
            disk = x.parent();
        }
        work += flatten::work(&chain, split(&chain).as_deref())?;
        chains.push(chain);
    }
    let parent = leaf.dir.parent().unwrap_or(lib.root()).to_path_buf();
    let free = free_space(&parent)?;
    if free < needed + (64 << 20) {
        return Err(Error::refused(
            &leaf.dir,
            format!("needs up to {} free, {} is free", human_bytes(needed), human_bytes(free)),
        )
        .fix("free some space on the volume, then promote again"));
    }
    let base = lib.bases()?.into_iter().find(|b| b.record.id == record.base_id);
    let id = records::new_id();
    let plan = Plan {
        id: id.clone(),
        leaf: LPath::new(lib.root(), &leaf.dir),
        base: base.as_ref().map(|b| (LPath::new(lib.root(), &b.dir), b.record.id.clone())),
        leaf_id: record.id.clone(),
    };
    let journal = Journal::begin(lib, &id, OP, &plan)?;
    step(Step::Journaled);
    let ctx = Ctx { lib, id: id.clone(), same_library: true, format: journal::FORMAT };
    let places = Places::of(&ctx, &plan)?;
    let progress = Progress::start(lib, format!("promoting {}", record.name), &leaf.dir, work);
    let staged = stage(&plan, &places, &leaf, &chains, opts);
    drop(progress);
    let bytes = match staged {
        Ok(b) => b,
        Err(e) => {
            return Err(undo_after(e, || {
                journal::remove_work_dir(&ctx, &places.staging).and_then(|()| journal.finish())
            }));
        }
    };
    drop(chains);
    if let Err(e) = swap(&plan, &places) {
        // Set aside: the promoted bundle is complete, and recovery finishes the swap. Not set
        // aside: the leaf is as it was, and the promotion is undone here.
        if places.aside.exists() {
            return Err(e);
        }
        return Err(undo_after(e, || {
            journal::remove_work_dir(&ctx, &places.staging)?;
            journal::unstamp(&places.leaf, &plan.id)?;
            journal.finish()
        }));
    }
    finish(&ctx, &plan, &places)?;
    journal.finish()?;
    Ok(Promoted { name: record.name, base: record.base_name, bytes, elapsed: start.elapsed() })
}

/// A split chain is flattened into a disk split like it.
fn split(chain: &Disk) -> Option<Vec<u64>> {
    chain.disk_type.is_split().then(|| chain.extent_sectors())
}

/// Builds the promoted bundle in staging: flattened disks, the `.vmx` pointing at them, and
/// hard links to every other file. Returns the bytes of the new disks.
fn stage(plan: &Plan, places: &Places, leaf: &Leaf, chains: &[Disk], opts: &Options) -> Result<u64> {
    let dir = &leaf.dir;
    let record = &leaf.record;
    journal::create_work_dir(&places.staging, &plan.id, "staging")?;
    let before = fsutil::tree_state(dir)?;
    let env = opts.env();
    let mut bytes = 0;
    let mut renamed = Vec::new();
    for (d, chain) in record.disks.iter().zip(chains) {
        // The standalone disk takes the parent copy's name (the delta's name says "snapshot").
        let target = places.staging.join(&d.parent_copy);
        if let Some(dir) = target.parent() {
            durable::create_dir_all(dir)?;
        }
        for f in flatten(&env, chain, &target, split(chain))? {
            bytes += fsutil::allocated(&f);
        }
        renamed.push((d.node.clone(), d.parent_copy.clone()));
    }
    step(Step::Flattened);
    let skip = chain_files(dir, record, opts)?;
    for p in fsutil::walk(dir)? {
        let rel = p.strip_prefix(dir).unwrap_or(&p).to_path_buf();
        let name = rel.to_string_lossy().to_ascii_lowercase();
        // The snapshot's files go with the chain (the promoted VM has no snapshot), and leafd's
        // records and stamps stay with the leaf.
        let leafd_own = rel.starts_with(records::DIR) || rel == Path::new(journal::STAMP);
        if skip.contains(&rel)
            || rel == Path::new(&record.vmx)
            || name.ends_with(".vmsd")
            || name.ends_with(".vmsn")
            || leafd_own
        {
            continue;
        }
        let to = places.staging.join(&rel);
        if fs::symlink_metadata(&p).at(&p, "cannot stat")?.is_dir() {
            durable::create_dir_all(&to)?;
        } else {
            durable::hard_link(&p, &to)?;
        }
    }
    let mut v = read_dict(&leaf.vmx_path())?;
    for (node, file) in &renamed {
        v.set(&format!("{node}.fileName"), file);
    }
    durable::write_new(&places.staging.join(&record.vmx), &v.to_bytes())?;
    durable::flush_tree(&places.staging, Flush::Order)?;
    // Nothing may have written into the leaf meanwhile (VMware started it?).
    if fsutil::tree_state(dir)? != before {
        return Err(Error::refused(dir, "the leaf changed while it was being promoted")
            .fix("shut the VM down and promote it again"));
    }
    step(Step::Staged);
    Ok(bytes)
}

/// The two renames: leaf aside (stamped first, so recovery knows it), promoted bundle in its
/// place. Idempotent.
fn swap(plan: &Plan, places: &Places) -> Result<()> {
    if places.staging.exists() && places.leaf.exists() && !places.aside.exists() {
        journal::stamp(&places.leaf, &plan.id, "promoted")?;
        durable::rename_noreplace(&places.leaf, &places.aside)?;
    }
    step(Step::SetAside);
    if places.staging.exists() {
        // Never over something that took the leaf's place meanwhile: the journal stays, and
        // both bundles wait where the message says.
        durable::rename_noreplace(&places.staging, &places.leaf).map_err(|e| {
            e.fix(format!(
                "the promoted VM waits in {} and the old leaf in {}; move what is at {} away, then run `leafd recover`",
                places.staging.display(),
                places.aside.display(),
                places.leaf.display()
            ))
        })?;
    }
    step(Step::Swapped);
    Ok(())
}

/// After the swap: the base forgets the leaf, and the old chain is removed. Idempotent.
fn finish(ctx: &Ctx, plan: &Plan, places: &Places) -> Result<()> {
    if let Some((dir, id)) = &plan.base {
        let _lock = ctx.lib.lock_base(id)?;
        records::unlink_leaf(&ctx.path(dir)?, &plan.leaf_id)?;
    }
    // The promoted bundle was built without the leaf's records; its tag came with the folder.
    // The tag first: removing the record flushes the folder, tags and all.
    let _ = durable::set_tag(&places.leaf, Tag::LinkedClone, false);
    records::remove_leaf(&places.leaf)?;
    step(Step::Unlinked);
    // The old leaf goes only once the promoted one is in its place.
    if places.staging.exists() || !places.leaf.exists() {
        return Err(Error::new(Kind::Io, places.aside.clone(), "kept: the promoted VM is not in the leaf's place")
            .fix(format!(
                "check {} and {}, then run `leafd recover`",
                places.leaf.display(),
                places.staging.display()
            )));
    }
    journal::unstamp(&places.leaf, &plan.id)?;
    journal::remove_work_dir(ctx, &places.aside)?;
    step(Step::Cleaned);
    Ok(())
}

/// Finishes or undoes an interrupted Promote. Once the leaf was set aside the promoted bundle
/// (complete by then) takes its place; before that the staging is dropped and the leaf is as it
/// was.
pub(crate) fn recover(ctx: &Ctx, plan: &Plan) -> Result<String> {
    let places = Places::of(ctx, plan)?;
    let shown = places.leaf.display();
    if places.aside.exists() {
        // The leaf is stamped before it is set aside: a folder of that name without this
        // operation's stamp is not its leaf, and is never acted on (format 1 had no stamps).
        if !journal::ours(ctx, &places.aside) {
            return Err(Error::refused(
                &places.aside,
                "is not the leaf this promotion set aside (its stamp is missing or another's), so it is kept",
            )
            .fix(format!("look inside it; then `leafd recover --discard {}`", ctx.id)));
        }
        ctx.lib.refuse_if_leaf_exists(&plan.leaf_id, None, &ctx.id)?;
        swap(plan, &places)?;
        finish(ctx, plan, &places)?;
        return Ok(format!("finished the interrupted promotion of {shown}"));
    }
    if places.staging.exists() {
        journal::remove_work_dir(ctx, &places.staging)?;
        journal::unstamp(&places.leaf, &plan.id)?;
        return Ok(format!("undid the interrupted promotion of {shown}; the leaf is as it was"));
    }
    // No staging and nothing aside: never started, or swapped and cleaned up already.
    let promoted = places.leaf.exists() && records::read_leaf(&places.leaf)?.is_none();
    if promoted {
        ctx.lib.refuse_if_leaf_exists(&plan.leaf_id, None, &ctx.id)?;
        finish(ctx, plan, &places)?;
        return Ok(format!("finished the interrupted promotion of {shown}"));
    }
    journal::unstamp(&places.leaf, &plan.id)?;
    Ok(format!("the interrupted promotion of {shown} had not started; the leaf is as it was"))
}
