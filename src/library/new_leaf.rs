//! New Leaf (SPEC §3): a new VM that shares a base's disks and writes only to its own deltas.
//!
//! The leaf is built in a hidden staging folder beside where it will live (so relative paths to
//! the base resolve the same), checked by opening every disk chain, and renamed into place: the
//! rename is the commit point. Nothing of the base is ever opened for writing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use leafd_formats::clone::{create_delta, delta_name, parent_copy};
use leafd_formats::dict::Dict;
use leafd_formats::disk::{Disk, resolve};
use leafd_formats::vmx::{self, SNAPSHOT_DESCRIPTION, Snapshot};
use serde::{Deserialize, Serialize};

use super::journal::{Journal, Plan as JournalPlan};
use super::make_base::{human_bytes, human_duration, read_small};
use super::{Base, Library, Options, STAGING_PREFIX, SnapshotBackend, validate_name};
use crate::error::{Error, IoContext, Kind, Result};
use crate::fsutil;
use crate::lineage::{self, LeafDisk, LeafRecord, LeafRef};
use crate::platform::{self, Tag};
use crate::{child, fault};

pub const OP: &str = "new-leaf";

/// Every step at which a crash test kills New Leaf.
pub const STEPS: &[&str] = &[
    "journaled",
    "parent-copies-written",
    "deltas-written",
    "vmx-written",
    "vmsd-written",
    "lineage-written",
    "published",
    "base-linked",
    "request-removed",
];

fn step(name: &str) {
    fault::point(OP, STEPS, name);
}

/// The journal's record of a New Leaf.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub base_dir: PathBuf,
    pub base_id: String,
    pub name: String,
    pub staging: PathBuf,
    pub target: PathBuf,
    /// The `New Leaf/<base>/<name>` folder that asked for the leaf, removed at the end.
    pub request: Option<PathBuf>,
    pub leaf_ref: LeafRef,
}

/// What New Leaf did.
#[derive(Debug, Clone)]
pub struct MadeLeaf {
    pub name: String,
    pub base: String,
    pub dir: PathBuf,
    pub disks: usize,
    /// Bytes the leaf's own files take.
    pub own_bytes: u64,
    pub snapshot: &'static str,
    pub elapsed: Duration,
    pub warnings: Vec<String>,
}

impl std::fmt::Display for MadeLeaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "leaf {:?} made from base {:?}: {} disk{}, {} of its own, {}",
            self.name,
            self.base,
            self.disks,
            if self.disks == 1 { "" } else { "s" },
            human_bytes(self.own_bytes),
            human_duration(self.elapsed)
        )?;
        if self.snapshot == "vmrun" {
            f.write_str(" (snapshot by vmrun)")?;
        }
        Ok(())
    }
}

/// Makes leaf `name` from base `base_name`. `request` is the drop folder that asked for it.
pub fn new_leaf(
    lib: &Library,
    base_name: &str,
    name: &str,
    request: Option<&Path>,
    opts: &Options,
) -> Result<MadeLeaf> {
    let start = Instant::now();
    let target = lib.leaf_path(name);
    let asked_in = lib.new_leaf_dir().join(base_name);
    validate_name(name, "leaf", request.unwrap_or(&asked_in))?;
    let base = lib.base(base_name)?;
    // Held until the leaf is on the base's list: a base being removed cannot gain a leaf.
    let _lock = base.lock(lib)?;
    if target.symlink_metadata().is_ok() {
        return Err(
            Error::refused(&target, "a VM with this name already exists").fix("choose another name for the new leaf")
        );
    }
    // A base whose disk changed would give leaves that fail to boot (VMware error 18).
    let mut base_disks = Vec::new();
    for d in &base.record.disks {
        let path = base.descriptor_path(d);
        let disk = Disk::open(&opts.env(), &path)?;
        let cid = format!("{:08x}", disk.descriptor.cid().unwrap_or(0));
        if cid != d.cid {
            return Err(Error::refused(
                &path,
                format!("the base disk changed since the base was made (CID {cid}, recorded {})", d.cid),
            )
            .fix("run `leafd verify`; a base must never be booted or edited"));
        }
        base_disks.push((d.clone(), disk));
    }
    let id = lineage::new_id();
    let plan = Plan {
        id: id.clone(),
        base_dir: base.dir.clone(),
        base_id: base.record.id.clone(),
        name: name.to_string(),
        staging: lib.root().join(format!("{STAGING_PREFIX}{id}")),
        target: target.clone(),
        request: request.map(Path::to_path_buf),
        leaf_ref: LeafRef {
            id: id.clone(),
            name: name.to_string(),
            path: target.to_string_lossy().into(),
            created: lineage::now(),
        },
    };
    let journal = Journal::begin(lib, &id, &JournalPlan::NewLeaf(plan.clone()))?;
    step("journaled");
    let built = build(&plan, &base, &base_disks, opts);
    let (record, mut warnings) = match built {
        Ok(r) => r,
        Err(e) => {
            // Published but not flushed: the journal stays, and recovery finishes the leaf.
            if !published(&plan) {
                fsutil::remove_tree(&plan.staging)?;
                journal.finish()?;
            }
            return Err(e);
        }
    };
    warnings.extend(finish(lib, &plan)?);
    journal.finish()?;
    let own_bytes = fsutil::walk(&target)?.iter().map(|p| fsutil::allocated(p)).sum();
    Ok(MadeLeaf {
        name: name.to_string(),
        base: base.record.name.clone(),
        dir: target,
        disks: record.disks.len(),
        own_bytes,
        snapshot: if record.snapshot == "vmrun" { "vmrun" } else { "native" },
        elapsed: start.elapsed(),
        warnings,
    })
}

/// Builds the leaf in staging, checks its chains, and publishes it. Returns its record.
fn build(
    plan: &Plan,
    base: &Base,
    base_disks: &[(lineage::DiskRecord, Disk)],
    opts: &Options,
) -> Result<(LeafRecord, Vec<String>)> {
    let staging = &plan.staging;
    let mut warnings = Vec::new();
    let vmrun = match opts.snapshot {
        SnapshotBackend::Native => None,
        SnapshotBackend::Auto => find_vmrun(opts),
        SnapshotBackend::Vmrun => Some(find_vmrun(opts).ok_or_else(|| {
            Error::refused(Path::new("vmrun"), "VMware's vmrun was not found")
                .fix("install VMware, set `vmrun` in the config, or use the native snapshot backend")
        })?),
    };
    let mut record = None;
    if let Some(vmrun) = vmrun {
        match build_files(plan, base, base_disks, opts, Some(&vmrun)) {
            Ok(r) => record = Some(r),
            Err(e) if opts.snapshot == SnapshotBackend::Auto && e.kind != Kind::Cancelled => {
                warnings.push(format!("vmrun could not take the snapshot, leafd wrote it itself: {e}"));
                tracing::warn!("vmrun failed for leaf {:?}, using the native snapshot writer: {e}", plan.name);
                fsutil::remove_tree(staging)?;
            }
            Err(e) => return Err(e),
        }
    }
    let record = match record {
        Some(r) => r,
        None => build_files(plan, base, base_disks, opts, None)?,
    };
    // Open every chain from where it is staged (same depth as its final place) before publishing.
    for d in &record.disks {
        let delta = Disk::open(&opts.env(), &staging.join(&d.delta))?;
        let parent_cid = delta.parent().map(|p| format!("{:08x}", p.descriptor.cid().unwrap_or(0)));
        if parent_cid.as_deref() != Some(d.parent_cid.as_str()) {
            return Err(Error::format(&staging.join(&d.delta), "the new delta does not lead to the base"));
        }
    }
    // A request folder renamed meanwhile asks for a leaf of another name: this one is dropped,
    // and the folder under its new name is a request of its own.
    if let Some(request) = &plan.request
        && request.symlink_metadata().is_err()
    {
        return Err(Error::new(Kind::Busy, request.clone(), "was renamed or removed while its leaf was being made"));
    }
    fsutil::rename_new(staging, &plan.target)?;
    step("published");
    Ok((record, warnings))
}

/// Writes every file of the leaf into staging: parent copies, then either the native deltas and
/// `.vmsd`, or a `.vmx` on the parent copies that `vmrun` snapshots.
fn build_files(
    plan: &Plan,
    base: &Base,
    base_disks: &[(lineage::DiskRecord, Disk)],
    opts: &Options,
    vmrun: Option<&Path>,
) -> Result<LeafRecord> {
    let staging = &plan.staging;
    fs::create_dir(staging).at(staging, "cannot create staging folder")?;
    let mut disks = Vec::new();
    for (d, disk) in base_disks {
        let rel = PathBuf::from(&d.descriptor);
        let copy_path = staging.join(&rel);
        if let Some(dir) = copy_path.parent() {
            fs::create_dir_all(dir).at(dir, "cannot create folder")?;
        }
        let final_dir = plan.target.join(&rel).parent().map(Path::to_path_buf).unwrap_or_else(|| plan.target.clone());
        let copy = parent_copy(disk, &final_dir, opts.path_style)?;
        fsutil::write_new(&copy_path, copy.to_string().as_bytes())?;
        let file_name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("disk.vmdk").to_string();
        let delta_rel = rel.with_file_name(delta_name(&file_name));
        disks.push((d.node.clone(), rel, delta_rel, copy, file_name, disk.disk_type));
    }
    step("parent-copies-written");
    let base_vmx = Dict::parse(&read_small(&base.vmx_path())?).map_err(|m| Error::format(&base.vmx_path(), m))?;
    copy_nvram(&base_vmx, base, staging, &plan.name, opts)?;
    let vmx_path = staging.join(format!("{}.vmx", plan.name));
    let vmsd_path = staging.join(format!("{}.vmsd", plan.name));
    let str_of = |p: &Path| p.to_string_lossy().into_owned();
    if let Some(vmrun) = vmrun {
        let on_copies: Vec<(String, String)> =
            disks.iter().map(|(node, rel, ..)| (node.clone(), str_of(rel))).collect();
        fsutil::write_new(&vmx_path, &vmx::leaf_vmx(&base_vmx, &plan.name, &on_copies).to_bytes())?;
        step("vmx-written");
        run_vmrun(vmrun, &vmx_path, &opts.cancel)?;
        // vmrun must have pointed every disk at a new delta over our parent copy.
        let after = Dict::parse(&read_small(&vmx_path)?).map_err(|m| Error::format(&vmx_path, m))?;
        for (node, rel, delta_rel, ..) in &mut disks {
            let now = after.get(&format!("{node}.fileName")).unwrap_or_default().to_string();
            let delta = Disk::open(&opts.env(), &resolve(staging, &now))?;
            if now == str_of(rel) || delta.parent().map(|p| p.path().to_path_buf()) != Some(staging.join(&*rel)) {
                return Err(Error::format(
                    &vmx_path,
                    format!("vmrun reported success but disk {node} has no snapshot over {}", rel.display()),
                ));
            }
            *delta_rel = PathBuf::from(now);
        }
        step("deltas-written");
        let mut vmsd = Dict::parse(&read_small(&vmsd_path)?).map_err(|m| Error::format(&vmsd_path, m))?;
        add_clone_keys(&mut vmsd, base, &disks.iter().map(|d| str_of(&d.2)).collect::<Vec<_>>());
        fsutil::write_atomic(&vmsd_path, &vmsd.to_bytes())?;
        step("vmsd-written");
    } else {
        for (_, _, delta_rel, copy, file_name, base_type) in &disks {
            create_delta(&opts.env(), &staging.join(delta_rel), file_name, copy, *base_type)?;
        }
        step("deltas-written");
        let deltas: Vec<(String, String)> =
            disks.iter().map(|(node, _, delta, ..)| (node.clone(), str_of(delta))).collect();
        fsutil::write_new(&vmx_path, &vmx::leaf_vmx(&base_vmx, &plan.name, &deltas).to_bytes())?;
        step("vmx-written");
        let at_snapshot: Vec<(String, String)> =
            disks.iter().map(|(node, rel, ..)| (node.clone(), str_of(rel))).collect();
        let own: Vec<String> = disks.iter().map(|d| str_of(&d.2)).collect();
        let vmsd = vmx::leaf_vmsd(&Snapshot {
            leaf_name: &plan.name,
            disks: &at_snapshot,
            own_disks: &own,
            clone_of: &str_of(&base.vmx_path()),
            created: SystemTime::now(),
        });
        fsutil::write_new(&vmsd_path, &vmsd.to_bytes())?;
        step("vmsd-written");
    }
    let record = LeafRecord {
        id: plan.id.clone(),
        base_id: base.record.id.clone(),
        base_name: base.record.name.clone(),
        name: plan.name.clone(),
        path: plan.target.to_string_lossy().into(),
        created: plan.leaf_ref.created.clone(),
        snapshot: if vmrun.is_some() { "vmrun" } else { "native" }.into(),
        disks: disks
            .iter()
            .map(|(node, rel, delta, copy, ..)| LeafDisk {
                node: node.clone(),
                parent_copy: str_of(rel),
                delta: str_of(delta),
                parent_cid: format!("{:08x}", copy.cid().unwrap_or(0)),
            })
            .collect(),
    };
    lineage::write(staging, lineage::LEAF, &record)?;
    platform::set_tag(staging, Tag::LinkedClone, true).at(staging, "cannot tag the leaf")?;
    for dir in fsutil::walk(staging)?.iter().filter(|p| p.is_dir()).chain([staging]) {
        platform::sync_dir(dir).at(dir, "cannot flush folder")?;
    }
    step("lineage-written");
    Ok(record)
}

/// Copies the base's `.nvram` (EFI boot entries) under the leaf's name, when the base has one.
fn copy_nvram(base_vmx: &Dict, base: &Base, staging: &Path, name: &str, opts: &Options) -> Result<()> {
    let stem = base.record.vmx.trim_end_matches(super::BASE_VMX_SUFFIX).trim_end_matches(".vmx");
    let nvram = base_vmx.get("nvram").map(str::to_string).unwrap_or_else(|| format!("{stem}.nvram"));
    let from = resolve(&base.dir, &nvram);
    if from.is_file() {
        fsutil::copy_file(&from, &staging.join(format!("{name}.nvram")), &opts.cancel)?;
    }
    Ok(())
}

/// The clone keys VMware's own linked clones carry: without them, deleting a clone in VMware
/// has been seen to delete its parent's disk.
fn add_clone_keys(vmsd: &mut Dict, base: &Base, own: &[String]) {
    vmsd.set("snapshot0.description", SNAPSHOT_DESCRIPTION);
    vmsd.set("cloneOf0", &base.vmx_path().to_string_lossy());
    vmsd.set("numCloneOf", "1");
    for (i, f) in own.iter().enumerate() {
        vmsd.set(&format!("sentinel{i}"), f);
    }
    vmsd.set("numSentinels", &own.len().to_string());
}

/// VMware's `vmrun`: the configured one, else where VMware installs it.
fn find_vmrun(opts: &Options) -> Option<PathBuf> {
    if let Some(p) = &opts.vmrun {
        return p.is_file().then(|| p.clone());
    }
    platform::vmrun_candidates().into_iter().find(|p| p.is_file())
}

/// `vmrun -T fusion|ws snapshot <vmx> Base`, within 2 minutes (`LEAFD_VMRUN_TIMEOUT` seconds, for
/// a slow host or a test), killed with whatever it started when leafd stops.
fn run_vmrun(vmrun: &Path, vmx: &Path, cancel: &fsutil::Cancel) -> Result<()> {
    let timeout = match std::env::var("LEAFD_VMRUN_TIMEOUT") {
        Err(_) => Duration::from_secs(120),
        Ok(v) => v
            .parse()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .filter(|t| !t.is_zero())
            .ok_or_else(|| Error::refused(vmrun, format!("LEAFD_VMRUN_TIMEOUT={v:?} is not a number of seconds")))?,
    };
    let mut command = Command::new(vmrun);
    command.args(["-T", platform::VMRUN_HOST_TYPE, "snapshot"]).arg(vmx).arg("Base");
    child::run(&mut command, timeout, Some(cancel))
        .map(drop)
        .map_err(|e| Error::new(e.kind(), vmrun.to_path_buf(), format!("vmrun snapshot failed: {e}")))
}

/// After the publish: link the leaf from its base and remove the request folder. Idempotent.
fn finish(lib: &Library, plan: &Plan) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    super::link_leaf(&plan.base_dir, &plan.leaf_ref)?;
    step("base-linked");
    if let Some(request) = &plan.request {
        let _ = fs::remove_file(request.join(".DS_Store"));
        match fs::remove_dir(request) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => warnings.push(format!("{} was left in place because it holds files", lib.display(request))),
        }
    }
    step("request-removed");
    Ok(warnings)
}

/// Whether the leaf is in place (the publish rename happened).
fn published(plan: &Plan) -> bool {
    matches!(lineage::read::<LeafRecord>(&plan.target, lineage::LEAF), Ok(Some(r)) if r.id == plan.id)
}

/// Finishes or undoes a New Leaf that was interrupted.
pub fn recover(lib: &Library, plan: &Plan) -> Result<String> {
    let _lock = lib.lock_base(&plan.base_id)?;
    if published(plan) {
        let warnings = finish(lib, plan)?;
        let mut msg = format!("finished the interrupted New Leaf: leaf {:?} is ready", plan.name);
        for w in warnings {
            msg.push_str(&format!("; {w}"));
        }
        return Ok(msg);
    }
    fsutil::remove_tree(&plan.staging)?;
    super::unlink_leaf(&plan.base_dir, &plan.id)?;
    Ok(format!("undid the interrupted New Leaf {:?}; nothing of it remains", plan.name))
}
