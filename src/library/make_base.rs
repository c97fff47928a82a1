//! Make Base (SPEC §2): turn a powered-off VM bundle into a write-protected base store.
//!
//! Same volume: the bundle is *renamed* into a hidden staging folder beside `Bases/`, prepared
//! there (the `.vmx` renamed, lineage recorded, disks protected), and renamed into place: the
//! time does not depend on the disks' size. Across volumes, the files are copied into staging,
//! flushed and compared, and the source is removed only after the base is in place.
//!
//! The publish rename is the commit point. Killed before it, recovery undoes everything (the
//! bundle goes back where it was, as it was); killed after it, recovery finishes.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use leafd_formats::ErrorKind;
use leafd_formats::clone::{PathStyle, repoint};
use leafd_formats::descriptor::NO_PARENT;
use leafd_formats::dict::Dict;
use leafd_formats::disk::{Disk, DiskType, extent_names, read_descriptor, resolve};
use leafd_formats::flatten::flatten;
use leafd_formats::sparse::SECTOR;
use leafd_formats::vmx;
use serde::{Deserialize, Serialize};

use super::journal::{Journal, Plan as JournalPlan};
use super::{BASE_VMX_SUFFIX, BUNDLE_EXT, Base, Library, Options, STAGING_PREFIX, validate_name};
use crate::error::{Error, IoContext, Kind, Result};
use crate::fault;
use crate::fsutil;
use crate::lineage::{self, BaseRecord, DiskRecord, ExtentRecord};
use crate::platform::{self, Tag};

pub const OP: &str = "make-base";

/// Every step at which a crash test kills Make Base. `flattened` happens only for a VM whose
/// disks are snapshot chains (a leaf, say); `moved` on one volume only; `copying`, `copied`,
/// `source-removing` and `source-removed` across volumes only.
pub const STEPS: &[&str] = &[
    "journaled",
    "flattened",
    "moved",
    "copying",
    "copied",
    "vmx-renamed",
    "lineage-written",
    "protected",
    "published",
    "drop-folder-created",
    "source-removing",
    "source-removed",
    "fingerprinted",
];

fn step(name: &str) {
    fault::point(OP, STEPS, name);
}

/// The journal's record of a Make Base.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub name: String,
    pub source: PathBuf,
    pub staging: PathBuf,
    pub target: PathBuf,
    /// Copy across volumes (else rename).
    pub copy: bool,
    /// The `.vmx`, relative to the bundle.
    pub vmx: PathBuf,
    /// Disk files relative to the bundle, with their protection before Make Base.
    pub disk_files: Vec<DiskFile>,
    /// Snapshot chains flattened into new base disks (their current state).
    pub flatten: Vec<Flatten>,
    /// When the VM was a leaf: its base's folder and its id, to unlink once it is a base.
    pub from_leaf: Option<(PathBuf, String)>,
    pub record: BaseRecord,
}

/// A disk file of the bundle and how it was protected before, to put back on an undo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskFile {
    pub path: PathBuf,
    pub mode: u32,
    pub locked: bool,
}

/// A disk whose chain becomes one new disk of the base; the chain's own files are kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flatten {
    /// Index of the disk in the base record.
    pub disk: usize,
    /// The chain's top, relative to the bundle.
    pub top: PathBuf,
    /// The new disk, relative to the bundle, and every file it is made of.
    pub target: PathBuf,
    pub files: Vec<PathBuf>,
    /// Extent sizes when split like the chain's top.
    pub split: Option<Vec<u64>>,
}

impl Plan {
    /// Where flattened disks are written before they join the base (same volume as `Bases`).
    fn flatten_dir(&self) -> PathBuf {
        self.target.with_file_name(format!(".leafd-flatten-{}", self.id))
    }
}

/// What Make Base did.
#[derive(Debug, Clone)]
pub struct MadeBase {
    pub name: String,
    pub dir: PathBuf,
    /// The bundle, as the user knows it (relative to the root when inside it).
    pub source: String,
    pub disks: usize,
    pub capacity_bytes: u64,
    pub copied: bool,
    pub elapsed: Duration,
    /// Things that went wrong after the base was made (it is usable).
    pub warnings: Vec<String>,
}

impl std::fmt::Display for MadeBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "base {:?} made from {}: {} disk{}, {}, {}{}",
            self.name,
            self.source,
            self.disks,
            if self.disks == 1 { "" } else { "s" },
            human_bytes(self.capacity_bytes),
            human_duration(self.elapsed),
            if self.copied { " (copied from another volume)" } else { "" }
        )
    }
}

/// `40.0 GiB`, `512 KiB`, `12 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

pub fn human_duration(d: Duration) -> String {
    if d < Duration::from_secs(10) { format!("{} ms", d.as_millis()) } else { format!("{:.1} s", d.as_secs_f64()) }
}

/// A bundle that passed every check, with what Make Base needs to know about it.
struct Inspected {
    bundle: PathBuf,
    vmx: PathBuf,
    disk_files: Vec<DiskFile>,
    flatten: Vec<Flatten>,
    from_leaf: Option<(PathBuf, String)>,
    disks: Vec<(DiskRecord, Vec<ExtentRecord>)>,
    capacity_bytes: u64,
    /// The bundle as inspected: a copy or a flatten takes time, and the VM must not have been
    /// started meanwhile.
    state: fsutil::TreeState,
}

impl Inspected {
    fn refuse_if_changed(&self) -> Result<()> {
        if fsutil::tree_state(&self.bundle)? != self.state {
            return Err(Error::refused(
                &self.bundle,
                "the VM changed while it was being made a base (was it started?)",
            )
            .fix("shut the VM down in VMware, then drop it again"));
        }
        Ok(())
    }
}

/// `p` with `.` and `..` resolved lexically (no symlinks followed).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Adds the advice for a VM whose files do not read as they should.
fn damaged(e: Error) -> Error {
    if e.fix.is_some() || !matches!(e.kind, Kind::Format | Kind::Io) {
        return e;
    }
    e.fix("the VM's files look damaged or incomplete: if it is still being copied, let the copy finish; else repair it in VMware or restore it from a backup")
}

/// Checks everything that must hold before a bundle may become a base. Reads only.
fn inspect(lib: &Library, bundle: &Path) -> Result<Inspected> {
    let env = Options::default().env();
    let meta = fs::symlink_metadata(bundle)
        .at(bundle, "cannot find the VM")
        .map_err(|e| e.fix("check the path of the VM bundle"))?;
    if meta.file_type().is_symlink() {
        return Err(Error::refused(bundle, "is a symbolic link").fix("drop the VM bundle itself, not an alias to it"));
    }
    if !meta.is_dir() {
        return Err(Error::refused(bundle, "is not a VM bundle")
            .fix("Make Base takes a whole VM: a .vmwarevm bundle, or a folder holding exactly one .vmx"));
    }
    if bundle.starts_with(lib.bases_dir()) {
        return Err(Error::refused(bundle, "is already inside Bases"));
    }
    // A leaf dropped here becomes a base of its own state: its chain is flattened below.
    let (leaf_base, from_leaf) = match lineage::read::<lineage::LeafRecord>(bundle, lineage::LEAF) {
        Ok(Some(leaf)) => {
            let base = lib.bases()?.into_iter().find(|b| b.record.id == leaf.base_id);
            let from = base.as_ref().map(|b| (b.dir.clone(), leaf.id));
            (base, from)
        }
        _ => (None, None),
    };
    let entries = fsutil::walk(bundle)?;
    let mut vmxs = Vec::new();
    for p in &entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_ascii_lowercase();
        let m = fs::symlink_metadata(p).at(p, "cannot stat")?;
        if m.file_type().is_symlink() {
            let target = fs::read_link(p).at(p, "cannot read link")?;
            let resolved = normalize(&p.parent().unwrap_or(bundle).join(&target));
            if target.is_absolute() || !resolved.starts_with(bundle) {
                return Err(Error::refused(
                    p,
                    format!("is a symbolic link leading outside the bundle (to {})", target.display()),
                )
                .fix("replace the link with the file it points to"));
            }
        }
        super::refuse_if_in_use(p)?;
        if name.ends_with(".vmx") && p.parent() == Some(bundle) && m.is_file() {
            vmxs.push(p.clone());
        }
    }
    let vmx_path = match vmxs.len() {
        1 => vmxs.remove(0),
        0 => {
            return Err(
                Error::refused(bundle, "holds no .vmx: it is not a VM").fix("drop a VMware VM bundle (.vmwarevm)")
            );
        }
        n => {
            return Err(Error::refused(bundle, format!("holds {n} .vmx files"))
                .fix("keep only the VM's own .vmx in the bundle"));
        }
    };
    let bytes = read_small(&vmx_path)?;
    let dict = Dict::parse(&bytes).map_err(|m| damaged(Error::format(&vmx_path, m)))?;
    super::refuse_if_suspended(&vmx_path, &dict)?;
    if dict.get("encryption.keySafe").is_some() || dict.get("encryption.data").is_some() {
        return Err(
            Error::refused(&vmx_path, "the VM is encrypted").fix("remove the encryption in VMware's settings first")
        );
    }
    let disk_entries = vmx::disks(&dict);
    if disk_entries.is_empty() {
        return Err(Error::refused(&vmx_path, "the VM has no hard disk").fix("a base needs a disk to share"));
    }
    let mut disks = Vec::new();
    let mut disk_files = Vec::new();
    let mut flatten = Vec::new();
    let mut capacity_bytes = 0;
    for entry in &disk_entries {
        let path = normalize(&resolve(bundle, &entry.file_name));
        if !path.starts_with(bundle) {
            return Err(Error::refused(
                &vmx_path,
                format!("disk {} ({}) is outside the bundle", entry.node, path.display()),
            )
            .fix("move the disk into the VM bundle (VMware can do it), then drop the VM again"));
        }
        let (descriptor, _) = read_descriptor(&env, &path).map_err(|e| {
            if e.kind == ErrorKind::Missing {
                Error::refused(&path, format!("disk {} is missing", entry.node))
                    .fix("restore the disk file or remove the disk from the VM")
            } else {
                damaged(e.into())
            }
        })?;
        let disk = open_chain(bundle, &path, leaf_base.as_ref()).map_err(damaged)?;
        // Every extent whole: a bundle cut short must never become a base.
        disk.check_extents().map_err(|e| damaged(e.into()))?;
        let rel = |p: &Path| p.strip_prefix(bundle).map(Path::to_path_buf);
        let descriptor_rel = rel(&path).expect("checked inside");
        if descriptor.parent_cid().unwrap_or(NO_PARENT) != NO_PARENT {
            let (record, f) = plan_flatten(bundle, &descriptor_rel, &entry.node, &disk, disks.len())?;
            capacity_bytes += disk.capacity() * SECTOR;
            disks.push((record, Vec::new()));
            flatten.push(f);
            continue;
        }
        let mut extents = Vec::new();
        for (index, (sectors, f)) in disk.extent_layout().into_iter().enumerate() {
            let Some(f) = f else { continue };
            let f = normalize(&f);
            let Ok(r) = rel(&f) else {
                return Err(Error::refused(&f, format!("an extent of disk {} is outside the bundle", entry.node))
                    .fix("keep all of a disk's files inside the VM bundle"));
            };
            let size = fs::metadata(&f).at(&f, "cannot stat extent")?.len();
            extents.push(ExtentRecord {
                base: String::new(),
                disk: descriptor_rel.to_string_lossy().into(),
                index,
                file: r.to_string_lossy().into(),
                sectors,
                size,
            });
            disk_files.push(r);
        }
        if !disk.embedded {
            disk_files.push(descriptor_rel.clone());
        }
        capacity_bytes += disk.capacity() * SECTOR;
        disks.push((
            DiskRecord {
                node: entry.node.clone(),
                descriptor: descriptor_rel.to_string_lossy().into(),
                cid: format!("{:08x}", disk.descriptor.cid().unwrap_or(0)),
                capacity: disk.capacity(),
                create_type: disk.descriptor.create_type().to_string(),
                extents: extents.len(),
                fingerprint: None,
            },
            extents,
        ));
    }
    let mut with_modes: Vec<DiskFile> = Vec::new();
    for r in disk_files {
        let p = bundle.join(&r);
        let meta = fs::symlink_metadata(&p).at(&p, "cannot stat")?;
        // leafd records lineage on the base's disk files themselves: they must be files here.
        if !meta.is_file() {
            return Err(Error::refused(&p, "a disk file of the VM is a symbolic link or not a regular file")
                .fix("replace the link with the file it points to"));
        }
        if !with_modes.iter().any(|d| d.path == r) {
            let locked = platform::is_locked(&p).at(&p, "cannot stat")?;
            with_modes.push(DiskFile { path: r, mode: meta.permissions().mode() & 0o7777, locked });
        }
    }
    let renamed_vmx =
        bundle.join(format!("{}{BASE_VMX_SUFFIX}", vmx_path.file_name().unwrap_or_default().to_string_lossy()));
    if renamed_vmx.symlink_metadata().is_ok() {
        return Err(Error::refused(&renamed_vmx, "is in the way: leafd keeps the base's .vmx under this name")
            .fix("move that file out of the VM bundle, then drop the VM again"));
    }
    Ok(Inspected {
        bundle: bundle.to_path_buf(),
        vmx: vmx_path.strip_prefix(bundle).expect("inside").to_path_buf(),
        disk_files: with_modes,
        flatten,
        from_leaf,
        disks,
        capacity_bytes,
        state: fsutil::tree_state(bundle)?,
    })
}

/// The disk a snapshot chain whose top is `top` becomes in a base: `<top>-base.vmdk` beside it.
pub fn flattened_name(top: &Path) -> PathBuf {
    let name = top.file_name().and_then(|n| n.to_str()).unwrap_or("disk.vmdk");
    top.with_file_name(format!("{}-base.vmdk", name.strip_suffix(".vmdk").unwrap_or(name)))
}

/// Plans the new disk a snapshot chain becomes: `<top>-base.vmdk`, split like the top.
fn plan_flatten(bundle: &Path, top: &Path, node: &str, chain: &Disk, index: usize) -> Result<(DiskRecord, Flatten)> {
    let target = flattened_name(top);
    let stem = target.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let split = chain.disk_type.is_split().then(|| chain.extent_sectors());
    let disk_type = if split.is_some() { DiskType::SplitSparse } else { DiskType::MonolithicSparse };
    let count = split.as_ref().map_or(1, Vec::len);
    let mut files: Vec<PathBuf> =
        extent_names(&stem, disk_type, count).into_iter().map(|n| top.with_file_name(n)).collect();
    if disk_type.is_split() {
        files.insert(0, target.clone());
    }
    if let Some(taken) = files.iter().find(|f| bundle.join(f).symlink_metadata().is_ok()) {
        return Err(Error::refused(&bundle.join(taken), "is in the way of the flattened disk leafd would write")
            .fix("rename or remove that file, then drop the VM again"));
    }
    let record = DiskRecord {
        node: node.to_string(),
        descriptor: target.to_string_lossy().into(),
        cid: String::new(), // known once written
        capacity: chain.capacity(),
        create_type: disk_type.create_type().to_string(),
        extents: count,
        fingerprint: None,
    };
    Ok((record, Flatten { disk: index, top: top.to_path_buf(), target, files, split }))
}

/// Opens the disk at `path` in a dropped bundle with its chain. A leaf moved into Make Base no
/// longer reaches its base by its relative paths, so its parent copy is read against the base
/// its record names (in memory: the leaf's files are not changed).
fn open_chain(bundle: &Path, path: &Path, leaf_base: Option<&Base>) -> Result<Disk> {
    let env = Options::default().env();
    let direct = Disk::open(&env, path).map_err(Error::from);
    let (Err(_), Some(base)) = (&direct, leaf_base) else { return direct };
    let Ok(Some(leaf)) = lineage::read::<lineage::LeafRecord>(bundle, lineage::LEAF) else { return direct };
    let Some(d) = leaf.disks.iter().find(|d| bundle.join(&d.delta) == path) else { return direct };
    let Some(bd) = base.record.disks.iter().find(|b| b.node == d.node) else { return direct };
    let base_disk = Disk::open(&env, &base.descriptor_path(bd))?;
    let copy_path = bundle.join(&d.parent_copy);
    let (copy, _) = read_descriptor(&env, &copy_path)?;
    let from = copy_path.parent().unwrap_or(bundle);
    let Ok(copy) = repoint(&copy, &base_disk.extent_files(), from, PathStyle::Absolute) else { return direct };
    Ok(Disk::open_alone(&env, path)?.with_parent(Disk::from_descriptor(&env, &copy_path, copy)?)?)
}

/// Writes every flattened disk into the plan's flatten folder, reading the chains where they
/// are (their parents may be elsewhere, by relative paths).
fn write_flattened(plan: &Plan, opts: &Options) -> Result<()> {
    let dir = plan.flatten_dir();
    fs::create_dir(&dir).at(&dir, "cannot create a folder for flattened disks")?;
    let leaf_base = plan.from_leaf.as_ref().and_then(|(dir, _)| {
        lineage::read::<BaseRecord>(dir, lineage::BASE).ok().flatten().map(|record| Base { dir: dir.clone(), record })
    });
    for f in &plan.flatten {
        let chain = open_chain(&plan.source, &plan.source.join(&f.top), leaf_base.as_ref())?;
        let target = dir.join(&f.target);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).at(parent, "cannot create folder")?;
        }
        flatten(&opts.env(), &chain, &target, f.split.clone())?;
    }
    platform::sync_dir(&dir).at(&dir, "cannot flush folder")
}

/// The base record once flattened disks exist in `staging`: their CIDs and extent records.
fn complete_record(plan: &Plan, staging: &Path) -> Result<(BaseRecord, Vec<ExtentRecord>)> {
    let mut record = plan.record.clone();
    let mut extents = Vec::new();
    for f in &plan.flatten {
        let disk = Disk::open_alone(&Options::default().env(), &staging.join(&f.target))?;
        record.disks[f.disk].cid = format!("{:08x}", disk.descriptor.cid().map_err(|m| Error::format(disk.path(), m))?);
        for (index, (sectors, file)) in disk.extent_layout().into_iter().enumerate() {
            let Some(file) = file else { continue };
            let size = fs::metadata(&file).at(&file, "cannot stat")?.len();
            let rel = file.strip_prefix(staging).unwrap_or(&file).to_string_lossy().into_owned();
            extents.push(ExtentRecord {
                base: plan.id.clone(),
                disk: f.target.to_string_lossy().into(),
                index,
                file: rel,
                sectors,
                size,
            });
        }
    }
    Ok((record, extents))
}

/// Reads a configuration file, refusing absurd sizes before reading.
pub fn read_small(path: &Path) -> Result<Vec<u8>> {
    let len = fs::metadata(path).at(path, "cannot stat")?.len();
    if len > leafd_formats::dict::MAX_DICT_BYTES {
        return Err(Error::format(path, format!("{len} bytes is too large for a VMware configuration file")));
    }
    fs::read(path).at(path, "cannot read")
}

/// The base name for a bundle: its folder name without `.vmwarevm`.
pub fn default_name(bundle: &Path) -> String {
    let name = bundle.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match name.rsplit_once('.') {
        Some((stem, ext)) if ext.eq_ignore_ascii_case(BUNDLE_EXT) => stem.to_string(),
        _ => name,
    }
}

/// Makes a base from `bundle`. On any failure before the base is in place, everything is put
/// back as it was and the error says why. The base is usable when this returns; the caller then
/// completes the fingerprints.
pub fn make_base(
    lib: &Library,
    bundle: &Path,
    name: Option<&str>,
    opts: &Options,
) -> Result<(MadeBase, Fingerprinting)> {
    let start = Instant::now();
    let bundle = std::path::absolute(bundle).at(bundle, "cannot resolve path")?;
    // Resolve the folder it is in (e.g. /var → /private/var), but never the bundle itself.
    let parent = bundle.parent().ok_or_else(|| Error::refused(&bundle, "is not a VM bundle"))?;
    let parent = parent.canonicalize().at(parent, "cannot find the VM's folder")?;
    let bundle = parent.join(bundle.file_name().ok_or_else(|| Error::refused(&bundle, "is not a VM bundle"))?);
    let name = name.map(str::to_string).unwrap_or_else(|| default_name(&bundle));
    validate_name(&name, "base", &bundle)?;
    let target = lib.bases_dir().join(&name);
    if target.symlink_metadata().is_ok() || lib.base(&name).is_ok() {
        return Err(Error::refused(&bundle, format!("a base named {name:?} already exists"))
            .fix("rename the VM bundle (or pass --name) to give the new base another name"));
    }
    let found = inspect(lib, &bundle)?;
    let id = lineage::new_id();
    let copy = fs::metadata(&parent).at(&parent, "cannot stat")?.dev()
        != fs::metadata(lib.bases_dir()).at(&lib.bases_dir(), "cannot stat")?.dev();
    let disks: Vec<DiskRecord> = found.disks.iter().map(|(d, _)| d.clone()).collect();
    let plan = Plan {
        id: id.clone(),
        name: name.clone(),
        source: bundle.clone(),
        staging: lib.bases_dir().join(format!("{STAGING_PREFIX}{id}")),
        target: target.clone(),
        copy,
        vmx: found.vmx.clone(),
        disk_files: found.disk_files.clone(),
        flatten: found.flatten.clone(),
        from_leaf: found.from_leaf.clone(),
        record: BaseRecord {
            id: id.clone(),
            name: name.clone(),
            source: bundle.to_string_lossy().into(),
            created: lineage::now(),
            vmx: format!("{}{BASE_VMX_SUFFIX}", found.vmx.to_string_lossy()),
            disks,
        },
    };
    let journal = Journal::begin(lib, &id, &JournalPlan::MakeBase(plan.clone()))?;
    step("journaled");
    if let Err(e) = build(lib, &plan, &found, opts) {
        // Published but not flushed (the folder's flush failed after the rename): the journal
        // stays, and recovery finishes the base.
        if !published(&plan) {
            roll_back(&plan).map_err(|re| {
                Error::new(re.kind, re.path.clone(), format!("{} (while undoing after: {e})", re.message))
            })?;
            journal.finish()?;
        }
        return Err(e);
    }
    let warnings = finish(lib, &plan, opts);
    let made = MadeBase {
        name,
        dir: target.clone(),
        source: lib.display(&bundle),
        disks: found.disks.len(),
        capacity_bytes: found.capacity_bytes,
        copied: copy,
        elapsed: start.elapsed(),
        warnings,
    };
    Ok((made, Fingerprinting { journal, base: Base { dir: target, record: plan.record } }))
}

/// The last part of Make Base, which may run after the base is in use: fingerprinting its disks.
/// The operation's journal stays until it is done, so a crash meanwhile is finished by recovery.
#[must_use = "call finish() to record the fingerprints (recovery does it otherwise)"]
pub struct Fingerprinting {
    journal: Journal,
    pub base: Base,
}

impl Fingerprinting {
    pub fn finish(self, lib: &Library, opts: &Options) -> Result<()> {
        complete_fingerprints(lib, &self.base, opts)?;
        self.journal.finish()
    }
}

/// Everything up to and including the publish rename.
fn build(lib: &Library, plan: &Plan, found: &Inspected, opts: &Options) -> Result<()> {
    let staging = &plan.staging;
    if !plan.flatten.is_empty() {
        write_flattened(plan, opts)?;
        step("flattened");
    }
    if plan.copy {
        fs::create_dir(staging).at(staging, "cannot create staging folder")?;
        let entries = fsutil::walk(&found.bundle)?;
        for (i, src) in entries.iter().enumerate() {
            let dst = staging.join(src.strip_prefix(&found.bundle).expect("inside"));
            let m = fs::symlink_metadata(src).at(src, "cannot stat")?;
            if m.is_dir() {
                fs::create_dir(&dst).at(&dst, "cannot create folder")?;
            } else if m.file_type().is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(src).at(src, "cannot read link")?, &dst)
                    .at(&dst, "cannot copy link")?;
            } else {
                fsutil::copy_file(src, &dst, &opts.cancel)?;
            }
            if i == 0 {
                step("copying");
            }
        }
        for src in &entries {
            let dst = staging.join(src.strip_prefix(&found.bundle).expect("inside"));
            if fs::symlink_metadata(src).at(src, "cannot stat")?.is_file()
                && !fsutil::same_content(src, &dst, &opts.cancel)?
            {
                return Err(Error::new(Kind::Io, dst, "the copy differs from the original after flushing")
                    .fix("the destination disk may be failing; the original is untouched"));
            }
        }
        for dir in entries
            .iter()
            .filter(|p| p.is_dir())
            .map(|p| staging.join(p.strip_prefix(&found.bundle).expect("inside")))
            .chain([staging.clone()])
        {
            platform::sync_dir(&dir).at(&dir, "cannot flush folder")?;
        }
        platform::sync_dir(&lib.bases_dir()).at(&lib.bases_dir(), "cannot flush folder")?;
        found.refuse_if_changed()?;
        step("copied");
    } else {
        found.refuse_if_changed()?;
        fsutil::rename_new(&found.bundle, staging)?;
        step("moved");
    }
    for f in &plan.flatten {
        for file in &f.files {
            fsutil::rename_new(&plan.flatten_dir().join(file), &staging.join(file))?;
        }
    }
    fsutil::remove_tree(&plan.flatten_dir())?;
    let vmx_from = staging.join(&plan.vmx);
    let vmx_to = staging.join(&plan.record.vmx);
    fsutil::rename_new(&vmx_from, &vmx_to)?;
    step("vmx-renamed");
    // Lineage goes on the disk files themselves, which may have come read-only (the manual
    // procedure says `chmod a-w`): writing an extended attribute needs write permission.
    for d in &plan.disk_files {
        let p = staging.join(&d.path);
        platform::unprotect(&p, d.mode | 0o200).at(&p, "cannot make writable to record lineage")?;
    }
    let (record, flattened_extents) = complete_record(plan, staging)?;
    for e in found.disks.iter().flat_map(|(_, extents)| extents).chain(&flattened_extents) {
        lineage::write(&staging.join(&e.file), lineage::EXTENT, &ExtentRecord { base: plan.id.clone(), ..e.clone() })?;
    }
    lineage::write(staging, lineage::BASE, &record)?;
    platform::set_tag(staging, Tag::Base, true).at(staging, "cannot tag the base")?;
    step("lineage-written");
    for rel in plan.disk_files.iter().map(|d| &d.path).chain(plan.flatten.iter().flat_map(|f| &f.files)) {
        let p = staging.join(rel);
        platform::protect(&p).at(&p, "cannot write-protect")?;
    }
    step("protected");
    fsutil::rename_new(staging, &plan.target)?;
    step("published");
    Ok(())
}

/// After the publish: the drop folder, and (across volumes) removing the source. Failures here
/// leave a usable base; they come back as warnings.
fn finish(lib: &Library, plan: &Plan, opts: &Options) -> Vec<String> {
    let mut warnings = Vec::new();
    let drop_folder = lib.new_leaf_dir().join(&plan.name);
    if let Err(e) = fs::create_dir_all(&drop_folder) {
        warnings.push(format!("{}: cannot create the New Leaf folder: {e}", drop_folder.display()));
    }
    step("drop-folder-created");
    if let Some((old_base, leaf_id)) = &plan.from_leaf {
        // The leaf is now a base: it is no leaf of its old base any more.
        let unlinked = lineage::remove(&plan.target, lineage::LEAF)
            .and_then(|()| platform::set_tag(&plan.target, Tag::LinkedClone, false).at(&plan.target, "cannot untag"))
            .and_then(|()| {
                let old = lineage::read::<BaseRecord>(old_base, lineage::BASE)?;
                let _lock = old.map(|r| lib.lock_base(&r.id)).transpose()?;
                super::unlink_leaf(old_base, leaf_id)
            });
        if let Err(e) = unlinked {
            warnings.push(format!("the old leaf's lineage was not fully removed: {e}"));
        }
    }
    if plan.copy {
        match remove_copied_source(plan, opts) {
            Ok(changed) if changed.is_empty() => {}
            Ok(changed) => warnings.push(format!(
                "{}: kept the original, because {} file(s) in it changed since they were copied \
                 (first {}); the base holds the VM as it was copied; remove the original once you \
                 no longer need it",
                plan.source.display(),
                changed.len(),
                changed[0].display()
            )),
            Err(e) => warnings.push(format!("the original could not be removed: {e}")),
        }
        step("source-removed");
    }
    warnings
}

/// Removes the source bundle of a cross-volume Make Base, but only when every file in it is still
/// byte-identical to its copy in the base: a VM that changed since it was copied (booted, say) is
/// kept whole, never left half removed. Returns the files that changed; nothing is removed then.
fn remove_copied_source(plan: &Plan, opts: &Options) -> Result<Vec<PathBuf>> {
    if plan.source.symlink_metadata().is_err() {
        return Ok(Vec::new());
    }
    let state = fsutil::tree_state(&plan.source)?;
    let entries: Vec<PathBuf> = state.iter().map(|(p, ..)| p.clone()).collect();
    let mut changed = Vec::new();
    for src in &entries {
        let rel = src.strip_prefix(&plan.source).expect("inside");
        let copy = if rel == plan.vmx { plan.target.join(&plan.record.vmx) } else { plan.target.join(rel) };
        let m = fs::symlink_metadata(src).at(src, "cannot stat")?;
        let same = if m.is_dir() {
            copy.is_dir()
        } else if m.is_file() {
            copy.is_file() && fsutil::same_content(src, &copy, &opts.cancel)?
        } else {
            copy.symlink_metadata().is_ok()
        };
        if !same {
            changed.push(src.clone());
        }
    }
    // Comparing big disks takes time: a VM started meanwhile (a new lock folder, a write) keeps
    // the original whole.
    if changed.is_empty() && fsutil::tree_state(&plan.source)? != state {
        changed.push(plan.source.clone());
    }
    if !changed.is_empty() {
        return Ok(changed);
    }
    // Children before their folders.
    for (i, src) in entries.iter().rev().enumerate() {
        if fs::symlink_metadata(src).at(src, "cannot stat")?.is_dir() {
            fs::remove_dir(src).at(src, "cannot remove the original folder")?;
        } else {
            fs::remove_file(src).at(src, "cannot remove the original")?;
        }
        if i == 0 {
            step("source-removing");
        }
    }
    fs::remove_dir(&plan.source).at(&plan.source, "cannot remove the original folder")?;
    if let Some(parent) = plan.source.parent() {
        platform::sync_dir(parent).at(parent, "cannot flush folder")?;
    }
    Ok(changed)
}

/// Undoes an unpublished Make Base. Idempotent: works from whatever state a crash left.
fn roll_back(plan: &Plan) -> Result<()> {
    let staging = &plan.staging;
    fsutil::remove_tree(&plan.flatten_dir())?;
    if staging.symlink_metadata().is_err() {
        return Ok(()); // nothing was moved or copied (or the undo already finished)
    }
    if plan.copy {
        // The source was never touched: drop the copy.
        return fsutil::remove_tree(staging);
    }
    // Only the disk files got records; each is made writable to remove them, then gets its
    // protection back exactly as it was.
    for d in &plan.disk_files {
        let p = staging.join(&d.path);
        if p.symlink_metadata().is_ok() {
            platform::unprotect(&p, d.mode | 0o200).at(&p, "cannot make writable")?;
            lineage::remove(&p, lineage::EXTENT)?;
            platform::unprotect(&p, d.mode).at(&p, "cannot restore permissions")?;
            if d.locked {
                platform::set_locked(&p, true).at(&p, "cannot restore the Locked flag")?;
            }
        }
    }
    // Flattened disks are leafd's own: they go.
    for p in plan.flatten.iter().flat_map(|f| &f.files).map(|f| staging.join(f)) {
        if p.symlink_metadata().is_ok() {
            platform::unprotect(&p, 0o644).at(&p, "cannot unlock")?;
            fs::remove_file(&p).at(&p, "cannot remove")?;
        }
    }
    lineage::remove(staging, lineage::BASE)?;
    platform::set_tag(staging, Tag::Base, false).at(staging, "cannot remove the Base tag")?;
    let renamed = staging.join(&plan.record.vmx);
    if renamed.symlink_metadata().is_ok() && staging.join(&plan.vmx).symlink_metadata().is_err() {
        fsutil::rename_new(&renamed, &staging.join(&plan.vmx))?;
    }
    if let Some(parent) = plan.source.parent() {
        fs::create_dir_all(parent).at(parent, "cannot recreate the VM's folder")?;
    }
    if plan.source.symlink_metadata().is_ok() {
        // Something new took the bundle's name meanwhile: put it back beside it.
        let aside = plan.source.with_file_name(format!(
            "{} (restored by leafd)",
            plan.source.file_name().unwrap_or_default().to_string_lossy()
        ));
        return fsutil::rename_new(staging, &aside);
    }
    fsutil::rename_new(staging, &plan.source)
}

/// Whether the base is in place (the publish rename happened).
fn published(plan: &Plan) -> bool {
    super::base_at(&plan.target, &plan.id).unwrap_or(false)
}

/// Finishes or undoes a Make Base that was interrupted.
pub fn recover(lib: &Library, plan: &Plan, opts: &Options) -> Result<String> {
    if !published(plan) {
        roll_back(plan)?;
        return Ok(format!("undid the interrupted Make Base of {}; the VM is back as it was", plan.source.display()));
    }
    let warnings = finish(lib, plan, opts);
    let base = Base { dir: plan.target.clone(), record: plan.record.clone() };
    complete_fingerprints(lib, &base, opts)?;
    let mut msg = format!("finished the interrupted Make Base: base {:?} is ready", plan.name);
    for w in warnings {
        msg.push_str(&format!("; {w}"));
    }
    Ok(msg)
}

/// Computes and records the fingerprints a base does not have yet (they are computed after the
/// base is usable, so a big disk does not delay it).
pub fn complete_fingerprints(lib: &Library, base: &Base, opts: &Options) -> Result<()> {
    let current = lineage::read::<BaseRecord>(&base.dir, lineage::BASE)?.unwrap_or_else(|| base.record.clone());
    if current.disks.iter().all(|d| d.fingerprint.is_some()) {
        return Ok(());
    }
    let mut prints = Vec::new();
    for d in &current.disks {
        let disk = Disk::open_alone(&opts.env(), &base.dir.join(&d.descriptor))?;
        prints.push(fsutil::fingerprint(&disk.extent_files(), &opts.cancel)?);
    }
    let _lock = lib.lock_base(&current.id)?;
    let mut record = lineage::read::<BaseRecord>(&base.dir, lineage::BASE)?.unwrap_or(current);
    for (d, fp) in record.disks.iter_mut().zip(prints) {
        d.fingerprint.get_or_insert(fp);
    }
    step("fingerprinted");
    lineage::write(&base.dir, lineage::BASE, &record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{SampleDisk, SampleVm};
    use leafd_formats::disk::DiskType;
    use std::io::Write;

    #[test]
    fn a_vm_started_after_inspection_is_refused_before_it_is_moved() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::open(&dir.path().join("lib")).unwrap();
        let vm = SampleVm {
            name: "Started".into(),
            disks: vec![SampleDisk::new("scsi0:0", "Disk.vmdk", DiskType::MonolithicSparse, 1 << 20)],
        };
        let bundle = vm.build(dir.path()).unwrap();
        let found = inspect(&lib, &bundle).unwrap();
        found.refuse_if_changed().unwrap();
        fs::create_dir(bundle.join("Disk.vmdk.lck")).unwrap();
        let e = found.refuse_if_changed().unwrap_err();
        assert!(e.to_string().contains("changed while it was being made a base"), "{e}");
        fs::remove_dir(bundle.join("Disk.vmdk.lck")).unwrap();
        found.refuse_if_changed().unwrap();
        fs::OpenOptions::new().append(true).open(bundle.join("Disk.vmdk")).unwrap().write_all(&[0; 512]).unwrap();
        assert!(found.refuse_if_changed().is_err(), "a disk that grew is a change");
    }
}
