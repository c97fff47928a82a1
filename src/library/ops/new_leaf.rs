//! New Leaf (SPEC §3): a new VM that shares a base's disks and writes only to its own deltas.
//!
//! The leaf is built in a hidden staging folder beside where it will live (so relative paths to
//! the base resolve the same), checked by opening every disk chain, and renamed into place: the
//! rename is the commit point. Nothing of the base is ever opened for writing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use leafd_formats::clone::{create_delta, delta_name, parent_copy};
use leafd_formats::descriptor::Descriptor;
use leafd_formats::dict::Dict;
use leafd_formats::disk::{Disk, DiskType, resolve};
use leafd_formats::vmx::{self, SNAPSHOT_DESCRIPTION, Snapshot};
use serde::{Deserialize, Serialize};

use super::common::{base_nvram, cid_hex, disk_cid, human_bytes, human_duration, open_base_disks, read_dict};
use crate::child;
use crate::durable::{self, Flush};
use crate::error::{Error, Kind, Result, undo_after};
use crate::fsutil;
use crate::library::journal::{self, Ctx, Journal, LPath};
use crate::library::records::{self, DiskRecord, LeafDisk, LeafRecord, LeafRef};
use crate::library::{Base, Library, Options, SnapshotBackend, validate_name};
use crate::platform::{self, Tag};
use crate::testing::fault;

fault::steps!("new-leaf" {
    Journaled = "journaled",
    ParentCopiesWritten = "parent-copies-written",
    DeltasWritten = "deltas-written",
    VmxWritten = "vmx-written",
    VmsdWritten = "vmsd-written",
    LineageWritten = "lineage-written",
    Published = "published",
    BaseLinked = "base-linked",
    RequestRemoved = "request-removed",
});

/// The journal's record of a New Leaf.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plan {
    pub(crate) id: String,
    /// The base's folder.
    pub(crate) base: LPath,
    pub(crate) base_id: String,
    pub(crate) name: String,
    /// The `New Leaf/<base>/<name>` folder that asked for the leaf, removed at the end.
    pub(crate) request: Option<LPath>,
    pub(crate) leaf_ref: LeafRef,
}

impl Plan {
    fn staging(&self, lib: &Library) -> PathBuf {
        lib.root().join(journal::work_name("staging", &self.id))
    }

    fn target(&self, lib: &Library) -> Result<PathBuf> {
        validate_name(&self.name, "leaf", lib.root())?;
        Ok(lib.leaf_path(&self.name))
    }
}

/// Where a New Leaf builds and publishes, resolved for this library.
struct Places {
    staging: PathBuf,
    target: PathBuf,
    request: Option<PathBuf>,
}

/// What New Leaf did.
#[derive(Debug, Clone)]
pub(crate) struct MadeLeaf {
    pub(crate) name: String,
    pub(crate) base: String,
    pub(crate) disks: usize,
    /// Bytes the leaf's own files take.
    pub(crate) own_bytes: u64,
    pub(crate) snapshot: &'static str,
    pub(crate) elapsed: Duration,
    pub(crate) warnings: Vec<String>,
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
pub(crate) fn new_leaf(
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
    let base_disks = open_base_disks(&base, opts)?;
    let id = records::new_id();
    let plan = Plan {
        id: id.clone(),
        base: LPath::new(lib.root(), &base.dir),
        base_id: base.record.id.clone(),
        name: name.to_string(),
        request: request.map(|r| LPath::new(lib.root(), r)),
        leaf_ref: LeafRef {
            format: records::FORMAT,
            id: id.clone(),
            name: name.to_string(),
            path: target.to_string_lossy().into(),
            created: records::now(),
        },
    };
    let journal = Journal::begin(lib, &id, OP, &plan)?;
    step(Step::Journaled);
    let ctx = Ctx { lib, id: id.clone(), same_library: true, format: journal::FORMAT };
    let places = Places { staging: plan.staging(lib), target: target.clone(), request: request.map(Path::to_path_buf) };
    let built = build(&ctx, &plan, &places, &base, &base_disks, opts);
    let (record, mut warnings) = match built {
        Ok(r) => r,
        // Published but not flushed: the journal stays, and recovery finishes the leaf.
        Err(e) if published(&plan, &places) => return Err(e),
        Err(e) => {
            return Err(undo_after(e, || {
                journal::remove_work_dir(&ctx, &places.staging).and_then(|()| journal.finish())
            }));
        }
    };
    warnings.extend(finish(&ctx, &plan, &places)?);
    journal.finish()?;
    let own_bytes = super::common::own_bytes(&target);
    Ok(MadeLeaf {
        name: name.to_string(),
        base: base.record.name.clone(),
        disks: record.disks.len(),
        own_bytes,
        snapshot: if record.snapshot == "vmrun" { "vmrun" } else { "native" },
        elapsed: start.elapsed(),
        warnings,
    })
}

/// Builds the leaf in staging, checks its chains, and publishes it. Returns its record.
fn build(
    ctx: &Ctx,
    plan: &Plan,
    places: &Places,
    base: &Base,
    base_disks: &[(DiskRecord, Disk)],
    opts: &Options,
) -> Result<(LeafRecord, Vec<String>)> {
    let staging = &places.staging;
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
        match build_files(plan, places, base, base_disks, opts, Some(&vmrun)) {
            Ok(r) => record = Some(r),
            Err(e) if opts.snapshot == SnapshotBackend::Auto && e.kind != Kind::Cancelled => {
                warnings.push(format!("vmrun could not take the snapshot, leafd wrote it itself: {e}"));
                tracing::warn!("vmrun failed for leaf {:?}, using the native snapshot writer: {e}", plan.name);
                journal::remove_work_dir(ctx, staging)?;
            }
            Err(e) => return Err(e),
        }
    }
    let record = match record {
        Some(r) => r,
        None => build_files(plan, places, base, base_disks, opts, None)?,
    };
    // Open every chain from where it is staged (same depth as its final place) before publishing.
    for d in &record.disks {
        let delta = Disk::open(&opts.env(), &staging.join(&d.delta))?;
        let parent_cid = delta.parent().map(disk_cid).transpose()?;
        if parent_cid.as_deref() != Some(d.parent_cid.as_str()) {
            return Err(Error::format(&staging.join(&d.delta), "the new delta does not lead to the base"));
        }
    }
    // A request folder renamed meanwhile asks for a leaf of another name: this one is dropped,
    // and the folder under its new name is a request of its own.
    if let Some(request) = &places.request
        && request.symlink_metadata().is_err()
    {
        return Err(Error::new(Kind::Busy, request.clone(), "was renamed or removed while its leaf was being made"));
    }
    durable::flush_tree(staging, Flush::Order)?;
    durable::rename_noreplace(staging, &places.target)?;
    step(Step::Published);
    Ok((record, warnings))
}

/// Writes every file of the leaf into staging: parent copies, then either the native deltas and
/// `.vmsd`, or a `.vmx` on the parent copies that `vmrun` snapshots.
fn build_files(
    plan: &Plan,
    places: &Places,
    base: &Base,
    base_disks: &[(DiskRecord, Disk)],
    opts: &Options,
    vmrun: Option<&Path>,
) -> Result<LeafRecord> {
    let staging = &places.staging;
    journal::create_work_dir(staging, &plan.id, "staging")?;
    let mut disks: Vec<Staged> = Vec::new();
    for (d, disk) in base_disks {
        let rel = PathBuf::from(&d.descriptor);
        let copy_path = staging.join(&rel);
        if let Some(dir) = copy_path.parent() {
            durable::create_dir_all(dir)?;
        }
        let final_dir =
            places.target.join(&rel).parent().map(Path::to_path_buf).unwrap_or_else(|| places.target.clone());
        let copy = parent_copy(disk, &final_dir, opts.path_style)?;
        durable::write_new(&copy_path, &copy.to_bytes())?;
        let file_name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("disk.vmdk").to_string();
        let delta_rel = rel.with_file_name(delta_name(&file_name));
        disks.push((d.node.clone(), rel, delta_rel, copy, file_name, disk.disk_type));
    }
    step(Step::ParentCopiesWritten);
    let base_vmx = read_dict(&base.vmx_path())?;
    copy_nvram(&base_vmx, base, staging, &plan.name, opts)?;
    match vmrun {
        Some(vmrun) => snapshot_by_vmrun(vmrun, plan, base, &base_vmx, staging, &mut disks, opts)?,
        None => snapshot_natively(plan, base, &base_vmx, staging, &disks, opts)?,
    }
    let str_of = |p: &Path| p.to_string_lossy().into_owned();
    let record = LeafRecord {
        format: records::FORMAT,
        id: plan.id.clone(),
        base_id: base.record.id.clone(),
        base_name: base.record.name.clone(),
        name: plan.name.clone(),
        path: places.target.to_string_lossy().into(),
        vmx: format!("{}.vmx", plan.name),
        created: plan.leaf_ref.created.clone(),
        snapshot: if vmrun.is_some() { "vmrun" } else { "native" }.into(),
        disks: disks
            .iter()
            .map(|(node, rel, delta, copy, ..)| LeafDisk {
                node: node.clone(),
                parent_copy: str_of(rel),
                delta: str_of(delta),
                parent_cid: cid_hex(copy.cid().unwrap_or(0)),
                base_node: None,
            })
            .collect(),
        adopted: false,
    };
    records::write_leaf(staging, &record)?;
    if let Err(e) = durable::set_tag(staging, Tag::LinkedClone, true) {
        tracing::debug!("cannot tag {}: {e}", staging.display());
    }
    step(Step::LineageWritten);
    Ok(record)
}

/// A disk of the leaf as staged: its node, its parent copy (relative to the bundle), its delta,
/// the parent copy's descriptor, the copy's file name, and the base disk's type.
type Staged = (String, PathBuf, PathBuf, Descriptor, String, DiskType);

/// `vmrun` snapshots a `.vmx` on the parent copies: it writes the deltas, which must lead to the
/// copies, and the `.vmsd`, which gets the clone keys.
fn snapshot_by_vmrun(
    vmrun: &Path,
    plan: &Plan,
    base: &Base,
    base_vmx: &Dict,
    staging: &Path,
    disks: &mut [Staged],
    opts: &Options,
) -> Result<()> {
    let vmx_path = staging.join(format!("{}.vmx", plan.name));
    let vmsd_path = staging.join(format!("{}.vmsd", plan.name));
    let str_of = |p: &Path| p.to_string_lossy().into_owned();
    let on_copies: Vec<(String, String)> = disks.iter().map(|(node, rel, ..)| (node.clone(), str_of(rel))).collect();
    durable::write_new(&vmx_path, &vmx::leaf_vmx(base_vmx, &plan.name, &on_copies).to_bytes())?;
    step(Step::VmxWritten);
    run_vmrun(vmrun, &vmx_path, &opts.cancel)?;
    // vmrun must have pointed every disk at a new delta over our parent copy.
    let after = read_dict(&vmx_path)?;
    for (node, rel, delta_rel, ..) in disks.iter_mut() {
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
    step(Step::DeltasWritten);
    let mut vmsd = read_dict(&vmsd_path)?;
    add_clone_keys(&mut vmsd, base, &disks.iter().map(|d| str_of(&d.2)).collect::<Vec<_>>());
    durable::write_atomic(&vmsd_path, &vmsd.to_bytes())?;
    step(Step::VmsdWritten);
    Ok(())
}

/// leafd's own writer: a delta over each parent copy, the `.vmx` on the deltas, and a `.vmsd`
/// showing the snapshot "Base".
fn snapshot_natively(
    plan: &Plan,
    base: &Base,
    base_vmx: &Dict,
    staging: &Path,
    disks: &[Staged],
    opts: &Options,
) -> Result<()> {
    let str_of = |p: &Path| p.to_string_lossy().into_owned();
    for (_, _, delta_rel, copy, file_name, base_type) in disks {
        create_delta(&opts.env(), &staging.join(delta_rel), file_name, copy, *base_type)?;
    }
    step(Step::DeltasWritten);
    let deltas: Vec<(String, String)> =
        disks.iter().map(|(node, _, delta, ..)| (node.clone(), str_of(delta))).collect();
    durable::write_new(
        &staging.join(format!("{}.vmx", plan.name)),
        &vmx::leaf_vmx(base_vmx, &plan.name, &deltas).to_bytes(),
    )?;
    step(Step::VmxWritten);
    let at_snapshot: Vec<(String, String)> = disks.iter().map(|(node, rel, ..)| (node.clone(), str_of(rel))).collect();
    let own: Vec<String> = disks.iter().map(|d| str_of(&d.2)).collect();
    let vmsd = vmx::leaf_vmsd(&Snapshot {
        leaf_name: &plan.name,
        disks: &at_snapshot,
        own_disks: &own,
        clone_of: &str_of(&base.vmx_path()),
        created: SystemTime::now(),
    });
    durable::write_new(&staging.join(format!("{}.vmsd", plan.name)), &vmsd.to_bytes())?;
    step(Step::VmsdWritten);
    Ok(())
}

/// Copies the base's `.nvram` (EFI boot entries) under the leaf's name, when the base has one.
fn copy_nvram(base_vmx: &Dict, base: &Base, staging: &Path, name: &str, opts: &Options) -> Result<()> {
    if let Some(from) = base_nvram(base_vmx, base, opts) {
        durable::copy_file(&from, &staging.join(format!("{name}.nvram")), &opts.cancel)?;
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
fn finish(ctx: &Ctx, plan: &Plan, places: &Places) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    journal::unstamp(&places.target, &plan.id)?;
    records::link_leaf(&ctx.path(&plan.base)?, &plan.leaf_ref)?;
    step(Step::BaseLinked);
    if let Some(request) = &places.request {
        let _ = durable::remove_file(&request.join(".DS_Store"));
        if request.symlink_metadata().is_ok() {
            match durable::remove_dir(request) {
                Ok(()) => durable::flush_parent(request, Flush::Order)?,
                Err(_) => {
                    warnings.push(format!("{} was left in place because it holds files", ctx.lib.display(request)))
                }
            }
        }
    }
    step(Step::RequestRemoved);
    Ok(warnings)
}

/// Whether the leaf is in place (the publish rename happened).
fn published(plan: &Plan, places: &Places) -> bool {
    matches!(records::read_leaf(&places.target), Ok(Some(r)) if r.id == plan.id)
}

/// Finishes or undoes a New Leaf that was interrupted.
pub(crate) fn recover(ctx: &Ctx, plan: &Plan) -> Result<String> {
    let lib = ctx.lib;
    let _lock = lib.lock_base(&plan.base_id)?;
    let places =
        Places { staging: plan.staging(lib), target: plan.target(lib)?, request: ctx.path_opt(&plan.request)? };
    if published(plan, &places) {
        let warnings = finish(ctx, plan, &places)?;
        let mut msg = format!("finished the interrupted New Leaf: leaf {:?} is ready", plan.name);
        for w in warnings {
            msg.push_str(&format!("; {w}"));
        }
        return Ok(msg);
    }
    lib.refuse_if_leaf_exists(&plan.id, None, &ctx.id)?;
    journal::remove_work_dir(ctx, &places.staging)?;
    records::unlink_leaf(&ctx.path(&plan.base)?, &plan.id)?;
    Ok(format!("undid the interrupted New Leaf {:?}; nothing of it remains", plan.name))
}
