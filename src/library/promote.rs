//! `leafd promote LEAF`: turn a leaf into a standalone VM that no longer needs its base.
//!
//! Each disk's chain is flattened into a new disk in a staging bundle beside the leaf; the leaf's
//! other files are hard-linked into it (instant, no space); then the two bundles swap places
//! with two renames recorded in the journal. Until the swap the leaf is untouched; after it the
//! promoted VM is complete. The base is only read.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use leafd_formats::dict::Dict;
use leafd_formats::disk::Disk;
use leafd_formats::flatten::flatten;
use serde::{Deserialize, Serialize};

use super::journal::{Journal, Plan as JournalPlan};
use super::make_base::{human_bytes, human_duration, read_small};
use super::relink::find_leaf;
use super::{Library, Options, STAGING_PREFIX};
use crate::error::{Error, IoContext, Kind, Result};
use crate::fault;
use crate::fsutil;
use crate::lineage::{self, LeafRecord};
use crate::platform::{self, Tag};

pub const OP: &str = "promote";

/// Every step at which a crash test kills Promote.
pub const STEPS: &[&str] = &["journaled", "flattened", "staged", "set-aside", "swapped", "unlinked", "cleaned"];

fn step(name: &str) {
    fault::point(OP, STEPS, name);
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub leaf: PathBuf,
    pub staging: PathBuf,
    /// Where the old leaf waits between the two renames, and until it is removed.
    pub aside: PathBuf,
    /// The base's folder and id, to take the leaf off its list.
    pub base: Option<(PathBuf, String)>,
    pub leaf_id: String,
}

#[derive(Debug)]
pub struct Promoted {
    pub name: String,
    pub base: String,
    pub bytes: u64,
    pub elapsed: Duration,
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

/// Bytes free for the file system holding `dir`.
fn free_space(dir: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::format(dir, "path contains NUL"))?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and an out-struct of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(Error::io(dir, "cannot read free space", std::io::Error::last_os_error()));
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

/// The files of a leaf that belong to its snapshot chain or snapshot state, relative to it.
fn chain_files(leaf: &Path, record: &LeafRecord) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for d in &record.disks {
        for disk in [&d.parent_copy, &d.delta] {
            let p = leaf.join(disk);
            let opened = Disk::open_alone(&Options::default().env(), &p)?;
            out.extend(opened.files().into_iter().map(|f| f.strip_prefix(leaf).map(Path::to_path_buf).unwrap_or(f)));
        }
    }
    Ok(out)
}

/// Promotes the leaf `arg` (a path, or a leaf name in the library).
pub fn promote(lib: &Library, arg: &Path, opts: &Options) -> Result<Promoted> {
    let start = Instant::now();
    let leaf = find_leaf(lib, arg)?;
    let record = leaf.record.clone();
    // A running or suspended VM would keep writing into the delta we are copying.
    for p in fsutil::walk(&leaf.dir)? {
        super::refuse_if_in_use(&p)?;
    }
    // Only the leaf as leafd made it: one snapshot, "Base", each disk on its delta. Snapshots the
    // user took since would be lost by flattening the delta under them.
    let vmx_path = leaf.dir.join(format!("{}.vmx", record.name));
    let vmx = Dict::parse(&read_small(&vmx_path)?).map_err(|m| Error::format(&vmx_path, m))?;
    super::refuse_if_suspended(&vmx_path, &vmx)?;
    for d in &record.disks {
        let now = vmx.get(&format!("{}.fileName", d.node)).unwrap_or_default();
        if now != d.delta {
            return Err(Error::refused(
                &vmx_path,
                format!(
                    "disk {} is on {now}, not on the leaf's delta {}: the VM has snapshots of its own",
                    d.node, d.delta
                ),
            )
            .fix("delete the VM's own snapshots in VMware (keep \"Base\"), then promote it"));
        }
    }
    let vmsd_path = leaf.dir.join(format!("{}.vmsd", record.name));
    if let Ok(bytes) = read_small(&vmsd_path)
        && let Ok(vmsd) = Dict::parse(&bytes)
        && vmsd.get("snapshot.numSnapshots").and_then(|n| n.parse::<u32>().ok()).unwrap_or(1) > 1
    {
        return Err(Error::refused(&vmsd_path, "the VM has snapshots of its own besides \"Base\"")
            .fix("delete them in VMware (keep \"Base\"), then promote it"));
    }
    let mut chains = Vec::new();
    let mut needed = 0u64;
    for d in &record.disks {
        let chain = Disk::open(&opts.env(), &leaf.dir.join(&d.delta))?;
        let mut disk = Some(&chain);
        while let Some(x) = disk {
            needed += x.extent_files().iter().map(|f| fsutil::allocated(f)).sum::<u64>();
            disk = x.parent();
        }
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
    let id = lineage::new_id();
    let plan = Plan {
        id: id.clone(),
        leaf: leaf.dir.clone(),
        staging: parent.join(format!("{STAGING_PREFIX}{id}")),
        aside: parent.join(format!(".leafd-promoted-{id}")),
        base: base.as_ref().map(|b| (b.dir.clone(), b.record.id.clone())),
        leaf_id: record.id.clone(),
    };
    let journal = Journal::begin(lib, &id, &JournalPlan::Promote(plan.clone()))?;
    step("journaled");
    let bytes = match stage(&plan, &record, &chains, opts) {
        Ok(b) => b,
        Err(e) => {
            fsutil::remove_tree(&plan.staging)?;
            journal.finish()?;
            return Err(e);
        }
    };
    drop(chains);
    swap(&plan)?;
    finish(lib, &plan)?;
    journal.finish()?;
    Ok(Promoted { name: record.name, base: record.base_name, bytes, elapsed: start.elapsed() })
}

/// Builds the promoted bundle in staging: flattened disks, the `.vmx` pointing at them, and
/// hard links to every other file. Returns the bytes of the new disks.
fn stage(plan: &Plan, record: &LeafRecord, chains: &[Disk], opts: &Options) -> Result<u64> {
    let leaf = &plan.leaf;
    fs::create_dir(&plan.staging).at(&plan.staging, "cannot create staging folder")?;
    let before = fsutil::tree_state(leaf)?;
    let mut bytes = 0;
    let mut renamed = Vec::new();
    for (d, chain) in record.disks.iter().zip(chains) {
        // The standalone disk takes the parent copy's name (the delta's name says "snapshot").
        let target = plan.staging.join(&d.parent_copy);
        if let Some(dir) = target.parent() {
            fs::create_dir_all(dir).at(dir, "cannot create folder")?;
        }
        let split = chain.disk_type.is_split().then(|| chain.extent_sectors());
        for f in flatten(&opts.env(), chain, &target, split)? {
            bytes += fsutil::allocated(&f);
        }
        renamed.push((d.node.clone(), d.parent_copy.clone()));
    }
    step("flattened");
    let skip = chain_files(leaf, record)?;
    let vmx_name = format!("{}.vmx", record.name);
    for p in fsutil::walk(leaf)? {
        let rel = p.strip_prefix(leaf).expect("inside").to_path_buf();
        let name = rel.to_string_lossy().to_ascii_lowercase();
        // The snapshot's files go with the chain: the promoted VM has no snapshot.
        if skip.contains(&rel) || rel == Path::new(&vmx_name) || name.ends_with(".vmsd") || name.ends_with(".vmsn") {
            continue;
        }
        let to = plan.staging.join(&rel);
        let m = fs::symlink_metadata(&p).at(&p, "cannot stat")?;
        if m.is_dir() {
            fs::create_dir_all(&to).at(&to, "cannot create folder")?;
        } else {
            fs::hard_link(&p, &to).at(&to, "cannot link")?;
        }
    }
    let vmx_path = leaf.join(&vmx_name);
    let mut v = Dict::parse(&read_small(&vmx_path)?).map_err(|m| Error::format(&vmx_path, m))?;
    for (node, file) in &renamed {
        v.set(&format!("{node}.fileName"), file);
    }
    fsutil::write_new(&plan.staging.join(&vmx_name), &v.to_bytes())?;
    for dir in fsutil::walk(&plan.staging)?.iter().filter(|p| p.is_dir()).chain([&plan.staging]) {
        platform::sync_dir(dir).at(dir, "cannot flush folder")?;
    }
    // Nothing may have written into the leaf meanwhile (VMware started it?).
    if fsutil::tree_state(leaf)? != before {
        return Err(Error::refused(leaf, "the leaf changed while it was being promoted")
            .fix("shut the VM down and promote it again"));
    }
    step("staged");
    Ok(bytes)
}

/// The two renames: leaf aside, promoted bundle in its place. Idempotent.
fn swap(plan: &Plan) -> Result<()> {
    if plan.staging.exists() && plan.leaf.exists() && !plan.aside.exists() {
        fsutil::rename_new(&plan.leaf, &plan.aside)?;
    }
    step("set-aside");
    if plan.staging.exists() {
        // Never over something that took the leaf's place meanwhile: the journal stays, and
        // both bundles wait where the message says.
        fsutil::rename_new(&plan.staging, &plan.leaf).map_err(|e| {
            e.fix(format!(
                "the promoted VM waits in {} and the old leaf in {}; move what is at {} away, then run `leafd recover`",
                plan.staging.display(),
                plan.aside.display(),
                plan.leaf.display()
            ))
        })?;
    }
    step("swapped");
    Ok(())
}

/// After the swap: the base forgets the leaf, and the old chain is removed. Idempotent.
fn finish(lib: &Library, plan: &Plan) -> Result<()> {
    if let Some((dir, id)) = &plan.base {
        let _lock = lib.lock_base(id)?;
        super::unlink_leaf(dir, &plan.leaf_id)?;
    }
    // The promoted bundle was built without leaf lineage; the tag came along with the folder.
    lineage::remove(&plan.leaf, lineage::LEAF)?;
    let _ = platform::set_tag(&plan.leaf, Tag::LinkedClone, false);
    step("unlinked");
    // The old leaf goes only once the promoted one is in its place.
    if plan.staging.exists() || !plan.leaf.exists() {
        return Err(Error::new(Kind::Io, plan.aside.clone(), "kept: the promoted VM is not in the leaf's place")
            .fix(format!("check {} and {}, then run `leafd recover`", plan.leaf.display(), plan.staging.display())));
    }
    fsutil::remove_tree(&plan.aside)?;
    step("cleaned");
    Ok(())
}

/// Finishes or undoes an interrupted Promote. Once the leaf was set aside the promoted bundle
/// (complete by then) takes its place; before that the staging is dropped and the leaf is as it
/// was.
pub fn recover(lib: &Library, plan: &Plan) -> Result<String> {
    if plan.aside.exists() {
        swap(plan)?;
        finish(lib, plan)?;
        return Ok(format!("finished the interrupted promotion of {}", plan.leaf.display()));
    }
    if plan.staging.exists() {
        fsutil::remove_tree(&plan.staging)?;
        return Ok(format!("undid the interrupted promotion of {}; the leaf is as it was", plan.leaf.display()));
    }
    // No staging and nothing aside: never started, or swapped and cleaned up already.
    let promoted = plan.leaf.exists() && lineage::read::<LeafRecord>(&plan.leaf, lineage::LEAF)?.is_none();
    if promoted {
        finish(lib, plan)?;
        return Ok(format!("finished the interrupted promotion of {}", plan.leaf.display()));
    }
    Ok(format!("the interrupted promotion of {} had not started; the leaf is as it was", plan.leaf.display()))
}
