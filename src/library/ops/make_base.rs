//! Make Base (SPEC §2): turn a powered-off VM bundle into a write-protected base store.
//!
//! Same volume (and same mount): the bundle is *renamed* into a hidden staging folder beside
//! `Bases/`, prepared there (the `.vmx` renamed, lineage recorded, disks protected), flushed, and
//! renamed into place: the time does not depend on the disks' size. Otherwise the files are
//! copied into a stamped staging folder, flushed and compared, and the source is removed only
//! after the base is in place.
//!
//! The publish rename is the commit point. Killed or failing before it, the bundle goes back
//! where it was, as it was; after it, recovery finishes. Everything the base records is written
//! before it, so nothing that can fail on the user's files comes after it.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leafd_formats::clone::{PathStyle, check_delta, delta_name, extent_reference, parent_copy_from, repoint};
use leafd_formats::descriptor::{Descriptor, NO_PARENT};
use leafd_formats::dict::Dict;
use leafd_formats::disk::{self, Disk, DiskType, NewDisk, describe, extent_names, read_descriptor};
use leafd_formats::flatten::{self, flatten};
use leafd_formats::sparse::SECTOR;
use leafd_formats::{Env, ErrorKind, vmx};
use serde::{Deserialize, Serialize};

use super::common::{self, cid_hex, disk_cid, flattened_name, human_bytes, human_duration, plain_entries, read_dict};
use crate::durable::{self, Flush};
use crate::error::{Error, IoContext, Kind, Result, undo_after};
use crate::fsutil;
use crate::library::journal::{self, Ctx, Journal, LPath};
use crate::library::records::{self, BaseRecord, DiskRecord, ExtentRecord};
use crate::library::{BASE_VMX_SUFFIX, Base, Library, Options, validate_name};
use crate::platform::{self, Tag};
use crate::progress::Progress;
use crate::testing::fault;

fault::steps!("make-base" {
    Journaled = "journaled",
    /// Only for a VM whose disks are snapshot chains (a leaf, say).
    Flattened = "flattened",
    /// On one volume only.
    Moved = "moved",
    /// Across volumes only.
    Copying = "copying",
    /// Across volumes only.
    Copied = "copied",
    VmxRenamed = "vmx-renamed",
    LineageWritten = "lineage-written",
    Protected = "protected",
    Published = "published",
    DropFolderCreated = "drop-folder-created",
    /// Across volumes only.
    SourceRemoving = "source-removing",
    /// Across volumes only.
    SourceRemoved = "source-removed",
    Fingerprinted = "fingerprinted",
});

/// A disk has at most this many extents (a 2 TiB disk split at 2 GiB has 1,025): each becomes a
/// file of every leaf.
const MAX_EXTENTS: usize = 8192;

/// The journal's record of a Make Base.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plan {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) source: LPath,
    /// Copy across volumes (else rename).
    pub(crate) copy: bool,
    /// The `.vmx`, relative to the bundle.
    pub(crate) vmx: PathBuf,
    /// Disk files relative to the bundle, with their protection before Make Base.
    pub(crate) disk_files: Vec<DiskFile>,
    /// Snapshot chains flattened into new base disks (their current state).
    pub(crate) flatten: Vec<Flatten>,
    /// When the VM was a leaf: its base, to take it off that base's list once it is a base.
    pub(crate) from_leaf: Option<FromLeaf>,
    /// Parent copies of a leaf, rewritten to reach its base from their new place.
    pub(crate) repointed: Vec<Repointed>,
    pub(crate) record: BaseRecord,
}

/// A disk file of the bundle and how it was protected before, to put back on an undo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DiskFile {
    /// Its name's bytes, which need not be UTF-8 (extents named in a legacy code page).
    #[serde(with = "records::text_or_bytes::path")]
    pub(crate) path: PathBuf,
    pub(crate) mode: u32,
    pub(crate) locked: bool,
}

/// A disk whose chain becomes one new disk of the base; the chain's own files are kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Flatten {
    /// Index of the disk in the base record.
    pub(crate) disk: usize,
    /// The chain's top, relative to the bundle.
    pub(crate) top: PathBuf,
    /// The new disk, relative to the bundle, and every file it is made of.
    pub(crate) target: PathBuf,
    pub(crate) files: Vec<PathBuf>,
    /// Extent sizes when split like the chain's top.
    pub(crate) split: Option<Vec<u64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FromLeaf {
    pub(crate) base: LPath,
    pub(crate) leaf_id: String,
}

/// A leaf's parent copy (relative to the bundle) as it was, and as it is in the base: bytes, as a
/// copy of a descriptor in a legacy code page keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Repointed {
    pub(crate) path: PathBuf,
    #[serde(with = "records::text_or_bytes")]
    pub(crate) original: Vec<u8>,
    #[serde(with = "records::text_or_bytes")]
    pub(crate) new: Vec<u8>,
}

impl Plan {
    fn staging(&self, lib: &Library) -> PathBuf {
        lib.bases_dir().join(journal::work_name("staging", &self.id))
    }

    /// Where flattened disks are written before they join the base (same volume as `Bases`).
    fn flatten_dir(&self, lib: &Library) -> PathBuf {
        lib.bases_dir().join(journal::work_name("flatten", &self.id))
    }

    fn target(&self, lib: &Library) -> Result<PathBuf> {
        validate_name(&self.name, "base", &lib.bases_dir())?;
        Ok(lib.bases_dir().join(&self.name))
    }
}

/// What Make Base did.
#[derive(Debug, Clone)]
pub(crate) struct MadeBase {
    pub(crate) name: String,
    /// The bundle, as the user knows it (relative to the root when inside it).
    pub(crate) source: String,
    pub(crate) disks: usize,
    pub(crate) capacity_bytes: u64,
    pub(crate) copied: bool,
    pub(crate) elapsed: Duration,
    /// Things that went wrong after the base was made (it is usable).
    pub(crate) warnings: Vec<String>,
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

/// A bundle that passed every check, with what Make Base needs to know about it.
struct Inspected {
    bundle: PathBuf,
    vmx: PathBuf,
    disk_files: Vec<DiskFile>,
    flatten: Vec<Flatten>,
    from_leaf: Option<(Base, String)>,
    repointed: Vec<Repointed>,
    disks: Vec<DiskRecord>,
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

/// Adds the advice for a VM whose files do not read as they should.
fn damaged(e: Error) -> Error {
    if e.fix.is_some() || !matches!(e.kind, Kind::Format | Kind::Io) {
        return e;
    }
    let leads_out = e
        .io_error()
        .is_some_and(|s| matches!(s.kind(), std::io::ErrorKind::InvalidInput | std::io::ErrorKind::PermissionDenied));
    if leads_out {
        return e.fix("keep every file of the VM's disks inside the bundle as a regular file (no link out of it), then drop the VM again");
    }
    e.fix("the VM's files look damaged or incomplete: if it is still being copied, let the copy finish; else repair it in VMware or restore it from a backup")
}

/// The bundle's own checks: a folder, not a link, not already a base.
fn check_bundle(lib: &Library, bundle: &Path) -> Result<()> {
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
    Ok(())
}

/// The bundle's one `.vmx`, after refusing links that lead out of it.
fn find_vmx(bundle: &Path, entries: &[PathBuf]) -> Result<PathBuf> {
    for p in entries {
        if fs::symlink_metadata(p).at(p, "cannot stat")?.file_type().is_symlink() {
            let target = fs::read_link(p).at(p, "cannot read link")?;
            if target.is_absolute() || !lexically_inside(&p.parent().unwrap_or(bundle).join(&target), bundle) {
                return Err(Error::refused(
                    p,
                    format!("is a symbolic link leading outside the bundle (to {})", target.display()),
                )
                .fix("replace the link with the file it points to"));
            }
        }
    }
    let mut vmxs: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| p.parent() == Some(bundle) && p.extension().is_some_and(|x| x.eq_ignore_ascii_case("vmx")))
        .filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()))
        .collect();
    match vmxs.len() {
        1 => Ok(vmxs.remove(0).clone()),
        0 => Err(Error::refused(bundle, "holds no .vmx: it is not a VM").fix("drop a VMware VM bundle (.vmwarevm)")),
        n => {
            Err(Error::refused(bundle, format!("holds {n} .vmx files"))
                .fix("keep only the VM's own .vmx in the bundle"))
        }
    }
}

/// Whether `p` stays inside `dir` once `.` and `..` are taken lexically (links are checked by
/// the opens beneath the bundle, not here).
fn lexically_inside(p: &Path, dir: &Path) -> bool {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out.starts_with(dir)
}

/// The leaf record of a bundle dropped here and the base it still reads from.
fn leaf_origin(lib: &Library, bundle: &Path) -> Result<Option<(records::LeafRecord, Base)>> {
    let Ok(Some(leaf)) = records::read_leaf(bundle) else { return Ok(None) };
    Ok(lib.bases()?.into_iter().find(|b| b.record.id == leaf.base_id).map(|b| (leaf, b)))
}

/// Checks everything that must hold before a bundle may become a base. Reads only; every file is
/// opened beneath the bundle (or the base a leaf reads from), never through a link out of it.
fn inspect(lib: &Library, bundle: &Path, name: &str, opts: &Options) -> Result<Inspected> {
    check_bundle(lib, bundle)?;
    let entries = plain_entries(bundle)?;
    let vmx_path = find_vmx(bundle, &entries)?;
    let dict = read_dict(&vmx_path).map_err(damaged)?;
    common::refuse_unsafe_state(&vmx_path, &dict, &entries)?;
    // A leaf dropped here becomes a base of its own state: its chain is flattened below.
    let origin = leaf_origin(lib, bundle)?;
    let mut folders = vec![bundle.to_path_buf()];
    folders.extend(origin.as_ref().map(|(_, b)| b.dir.clone()));
    let env = opts.env_beneath(&folders)?;
    let disk_entries = vmx::disks(&dict);
    if disk_entries.is_empty() {
        return Err(Error::refused(&vmx_path, "the VM has no hard disk").fix("a base needs a disk to share"));
    }
    let mut found = Found::default();
    let paths =
        disk_entries.iter().map(|e| disk_path(bundle, &env, &dict, &vmx_path, e)).collect::<Result<Vec<_>>>()?;
    // The descriptor files seen so far, by identity: `a/../Disk.vmdk` is `Disk.vmdk`.
    let mut seen: Vec<((u64, u64), &vmx::DiskEntry)> = Vec::new();
    for (entry, path) in disk_entries.iter().zip(&paths) {
        let path = path.clone();
        if !lexically_inside(&path, bundle) {
            return Err(Error::refused(
                &vmx_path,
                format!("disk {} ({}) is outside the bundle", entry.node, path.display()),
            )
            .fix("move the disk into the VM bundle (VMware can do it), then drop the VM again"));
        }
        // What cannot be opened is reported by the disk's own checks below.
        let id = env.open(&path, false).and_then(|f| f.metadata()).map(|m| (m.dev(), m.ino())).ok();
        if let Some((_, first)) = id.and_then(|id| seen.iter().find(|(i, _)| *i == id)) {
            let spelled = if first.file_name == entry.file_name {
                String::new()
            } else {
                format!(" (named {:?} and {:?})", first.file_name, entry.file_name)
            };
            return Err(Error::refused(
                &vmx_path,
                format!("disk {} is attached twice, as {} and {}{spelled}", first.file_name, first.node, entry.node),
            )
            .fix("remove one of the two in VMware's settings for the VM, then drop it again"));
        }
        // Records and leaves name a disk by its path as text.
        if path.strip_prefix(bundle).unwrap_or(&path).to_str().is_none() {
            let utf8 = dict.name(&entry.file_name).candidates().pop().unwrap_or_default();
            return Err(Error::refused(&path, format!("the name of disk {} is not UTF-8", entry.node)).fix(format!(
                "rename the file to {:?}, its name in UTF-8 (leafd finds the disk under either name), then drop the VM again",
                utf8.to_string_lossy()
            )));
        }
        found.disk(bundle, &env, &path, &entry.node, origin.as_ref(), lib, name, opts)?;
        seen.extend(id.map(|id| (id, entry)));
    }
    if let Some((leaf, base)) = origin.as_ref().filter(|_| !found.flatten.is_empty()) {
        found.repointed = repoint_parent_copies(bundle, &env, leaf, base, lib, name, opts)?;
    }
    let disk_files = check_disk_files(bundle, &env, &found.disk_files)?;
    refuse_open_for_writing(&entries)?;
    let renamed_vmx =
        bundle.join(format!("{}{BASE_VMX_SUFFIX}", vmx_path.file_name().unwrap_or_default().to_string_lossy()));
    if renamed_vmx.symlink_metadata().is_ok() {
        return Err(Error::refused(&renamed_vmx, "is in the way: leafd keeps the base's .vmx under this name")
            .fix("move that file out of the VM bundle, then drop the VM again"));
    }
    Ok(Inspected {
        bundle: bundle.to_path_buf(),
        vmx: vmx_path.strip_prefix(bundle).unwrap_or(&vmx_path).to_path_buf(),
        disk_files,
        flatten: found.flatten,
        repointed: found.repointed,
        from_leaf: origin.map(|(leaf, base)| (base, leaf.id)),
        disks: found.disks,
        capacity_bytes: found.capacity_bytes,
        state: fsutil::tree_state(bundle)?,
    })
}

/// The disks of a bundle as inspection finds them.
#[derive(Default)]
struct Found {
    disks: Vec<DiskRecord>,
    disk_files: Vec<PathBuf>,
    flatten: Vec<Flatten>,
    repointed: Vec<Repointed>,
    capacity_bytes: u64,
}

impl Found {
    /// Inspects one disk of the bundle: whole, of a type leafd serves, and one New Leaf can
    /// serve; a snapshot chain is planned to be flattened.
    #[allow(clippy::too_many_arguments)]
    fn disk(
        &mut self,
        bundle: &Path,
        env: &Arc<dyn Env>,
        path: &Path,
        node: &str,
        origin: Option<&(records::LeafRecord, Base)>,
        lib: &Library,
        name: &str,
        opts: &Options,
    ) -> Result<()> {
        let (descriptor, _) = read_descriptor(env, path).map_err(|e| {
            if e.kind == ErrorKind::Missing {
                Error::refused(path, format!("disk {node} is missing"))
                    .fix("restore the disk file or remove the disk from the VM")
            } else {
                damaged(e.into())
            }
        })?;
        let disk = open_chain(env, bundle, path, origin).map_err(damaged)?;
        // Every extent whole: a bundle cut short must never become a base.
        disk.check_extents().map_err(|e| damaged(e.into()))?;
        let rel = path.strip_prefix(bundle).unwrap_or(path).to_path_buf();
        self.capacity_bytes += disk.capacity() * SECTOR;
        if descriptor.parent_cid().unwrap_or(NO_PARENT) != NO_PARENT {
            let (record, f) = plan_flatten(bundle, &rel, node, &disk, self.disks.len())?;
            check_flattened_leaves_can_be_made(lib, name, bundle, &f, &disk, opts.path_style)?;
            self.disks.push(record);
            self.flatten.push(f);
            return Ok(());
        }
        let cid = disk.descriptor.cid().map_err(|m| Error::format(path, m))?;
        if cid == NO_PARENT {
            return Err(Error::refused(path, format!("disk {node} has the content ID ffffffff, which a snapshot reads as \"no parent\": no leaf could link to it"))
                .fix("start the VM once in VMware and shut it down (VMware gives the disk a new content ID), then drop it again"));
        }
        let layout = disk.extent_layout();
        if layout.len() > MAX_EXTENTS {
            return Err(Error::refused(path, format!("disk {node} has {} extents; leafd serves at most {MAX_EXTENTS}", layout.len()))
                .fix("convert it to fewer, larger extents with VMware's disk tool (vmware-vdiskmanager -r SOURCE.vmdk -t 1 NEW.vmdk)"));
        }
        let planned = Planned {
            rel: &rel,
            opened: Some(&disk),
            extent_files: disk.extent_files(),
            descriptor: &disk.descriptor,
            disk_type: disk.disk_type,
        };
        check_leaves_can_be_made(lib, name, bundle, path, planned, opts.path_style)?;
        let mut extents = Vec::new();
        for (index, (sectors, f)) in layout.into_iter().enumerate() {
            let Some(f) = f else { continue };
            let Ok(r) = f.strip_prefix(bundle).map(Path::to_path_buf) else {
                return Err(Error::refused(&f, format!("an extent of disk {node} is outside the bundle"))
                    .fix("keep all of a disk's files inside the VM bundle"));
            };
            let size = fs::metadata(&f).at(&f, "cannot stat extent")?.len();
            extents.push(ExtentRecord { index, file: r.clone(), sectors, size });
            self.disk_files.push(r);
        }
        if !disk.embedded {
            self.disk_files.push(rel.clone());
        }
        self.disks.push(DiskRecord {
            node: node.to_string(),
            descriptor: rel.to_string_lossy().into(),
            cid: cid_hex(cid),
            capacity: disk.capacity(),
            create_type: disk.descriptor.create_type().to_string(),
            extents,
            fingerprint: None,
        });
        Ok(())
    }
}

/// A disk as its base will hold it: for an existing disk its own files; for a chain, the disk
/// Make Base will write.
struct Planned<'a> {
    /// Its descriptor, relative to the bundle.
    rel: &'a Path,
    /// The disk when it is there already (not one a chain is still to be flattened into).
    opened: Option<&'a Disk>,
    /// Its extent files, in the bundle.
    extent_files: Vec<PathBuf>,
    descriptor: &'a Descriptor,
    disk_type: DiskType,
}

/// Fails now, naming the user's file `at` and the fix, where New Leaf would later fail to
/// describe a leaf's copy of this disk or its delta (a name a descriptor or a folder cannot
/// hold, too many extents).
fn check_leaves_can_be_made(
    lib: &Library,
    name: &str,
    bundle: &Path,
    at: &Path,
    disk: Planned<'_>,
    style: PathStyle,
) -> Result<()> {
    let store = lib.bases_dir().join(name);
    let leaf_dir = lib.leaf_path("leaf").join(disk.rel).parent().map(Path::to_path_buf).unwrap_or_default();
    // The leaf is not there yet: the refusal names the disk in the bundle.
    let refused = |e: leafd_formats::Error| {
        // What the formats crate says is wrong with the names (two encodings at once...) first.
        let general = "give the disk's files (and folders) shorter names without quotes or control characters: rename the disk in VMware, or with `vmware-vdiskmanager -n OLD.vmdk NEW.vmdk` and the VM's .vmx pointed at NEW.vmdk; the base's folder takes the VM bundle's name, so renaming the bundle (or passing --name) changes it; then drop the VM again";
        let fix = e.fix.map_or_else(|| general.to_string(), |f| format!("{f}; or {general}"));
        Error::refused(at, format!("no leaf of this disk could be made: {}", e.message)).fix(fix)
    };
    // A disk that is there already: the very copy New Leaf will write (its names in the base's
    // code page, or in UTF-8 where they cannot be); one still to be written: its names.
    let copy = match disk.opened {
        Some(opened) => {
            let at_base = store.join(opened.path().strip_prefix(bundle).unwrap_or(opened.path()));
            Some(parent_copy_from(opened, &at_base, &leaf_dir, style).map_err(refused)?)
        }
        None => {
            for f in &disk.extent_files {
                let at_base = store.join(f.strip_prefix(bundle).unwrap_or(f));
                extent_reference(&at_base, &leaf_dir, style).map_err(refused)?;
            }
            None
        }
    };
    // The delta depends on the parent copy only through its CID and extent sizes, which are
    // the base disk's own.
    let file_name = disk.rel.file_name().and_then(|n| n.to_str()).unwrap_or("disk.vmdk");
    let parent = copy.as_ref().unwrap_or(disk.descriptor);
    check_delta(&leaf_dir.join(delta_name(file_name)), file_name, parent, disk.disk_type).map_err(refused)
}

/// [`check_leaves_can_be_made`] for the disk a chain is flattened into: its own files first.
fn check_flattened_leaves_can_be_made(
    lib: &Library,
    name: &str,
    bundle: &Path,
    f: &Flatten,
    chain: &Disk,
    style: PathStyle,
) -> Result<()> {
    let (disk_type, extents) = match &f.split {
        Some(s) => (DiskType::SplitSparse, s.clone()),
        None => (DiskType::MonolithicSparse, vec![chain.capacity()]),
    };
    let target = bundle.join(&f.target);
    let at = bundle.join(&f.top);
    let spec = NewDisk { path: &target, disk_type, extents, cid: 1, parent: None, ddb: Vec::new() };
    let descriptor = describe(&spec).map_err(|e| {
        Error::refused(&at, format!("the disk it would be flattened into could not be written: {}", e.message))
            .fix("give the disk's files shorter names without quotes or control characters (rename the disk in VMware), then drop the VM again")
    })?;
    let files = if disk_type.is_split() { &f.files[1..] } else { &f.files[..] };
    let extent_files = files.iter().map(|r| bundle.join(r)).collect();
    let planned = Planned { rel: &f.target, opened: None, extent_files, descriptor: &descriptor, disk_type };
    check_leaves_can_be_made(lib, name, bundle, &at, planned, style)
}

/// Checks the disk files through descriptors opened beneath the bundle: regular files with one
/// name each (a hard link would make a file elsewhere read-only and part of the base), and
/// records how each was protected.
fn check_disk_files(bundle: &Path, env: &Arc<dyn Env>, files: &[PathBuf]) -> Result<Vec<DiskFile>> {
    let mut out: Vec<DiskFile> = Vec::new();
    for r in files {
        if out.iter().any(|d| &d.path == r) {
            continue;
        }
        let p = bundle.join(r);
        // leafd protects the disk files themselves: a link would leave its target unprotected.
        if !fs::symlink_metadata(&p).at(&p, "cannot stat")?.is_file() {
            return Err(Error::refused(&p, "a disk file of the VM is a symbolic link or not a regular file")
                .fix("replace the link with the file it points to"));
        }
        let file = env.open(&p, false).at(&p, "cannot open").map_err(damaged)?;
        let links = platform::link_count(&file).at(&p, "cannot stat")?;
        if links > 1 {
            return Err(Error::refused(&p, format!("has {links} names (hard links): making it a base would also make every other name read-only"))
                .fix("copy it to break the link (cp --sparse=always FILE FILE.copy && mv FILE.copy FILE), then drop the VM again"));
        }
        let mode = file.metadata().at(&p, "cannot stat")?.permissions().mode() & 0o7777;
        let locked = platform::is_locked_fd(&file).at(&p, "cannot stat")?;
        out.push(DiskFile { path: r.clone(), mode, locked });
    }
    Ok(out)
}

/// Refuses a bundle any of whose files another program has open for writing (where the system
/// can tell: not on network volumes): it is still being written, whatever its size says.
fn refuse_open_for_writing(entries: &[PathBuf]) -> Result<()> {
    for p in entries {
        if !fs::symlink_metadata(p).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let Ok(file) = platform::open_regular(p, false) else { continue };
        // A writer seen for an instant may be a process that forked with the file open and is
        // about to exec; one still there a quarter of a second later is writing.
        let busy = || platform::open_for_writing(&file).ok().flatten() == Some(true);
        if busy()
            && (0..5).all(|_| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                busy()
            })
        {
            return Err(Error::new(
                Kind::Busy,
                p.clone(),
                "is open for writing by another program (still being written?)",
            )
            .fix("let the program finish (or quit VMware); leafd tries again by itself"));
        }
    }
    Ok(())
}

/// Where disk `entry` of the `.vmx` is: under the bytes of its name in the `.vmx`'s code page,
/// else under its name in UTF-8 (a bundle copied from Windows); `\` separates folders in a
/// `.vmx` made on Windows.
fn disk_path(bundle: &Path, env: &Arc<dyn Env>, dict: &Dict, vmx: &Path, entry: &vmx::DiskEntry) -> Result<PathBuf> {
    disk::find(env, bundle, &dict.name(&entry.file_name)).ok_or_else(|| {
        Error::refused(
            vmx,
            format!(
                "disk {} ({}) is on a drive of the Windows machine the VM was made on, outside the bundle",
                entry.node, entry.file_name
            ),
        )
        .fix("move the disk into the VM bundle (VMware can do it), then drop the VM again")
    })
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
        extents: Vec::new(), // known once written
        fingerprint: None,
    };
    Ok((record, Flatten { disk: index, top: top.to_path_buf(), target, files, split }))
}

/// A leaf's parent copies, rewritten to reach its base from where they will be in the new base
/// (one folder deeper than the leaf was, in `Bases/<name>/`): they are leafd's own files.
fn repoint_parent_copies(
    bundle: &Path,
    env: &Arc<dyn Env>,
    leaf: &records::LeafRecord,
    base: &Base,
    lib: &Library,
    name: &str,
    opts: &Options,
) -> Result<Vec<Repointed>> {
    let mut out = Vec::new();
    for d in &leaf.disks {
        let Some(bd) = base.record.disks.iter().find(|b| b.node == d.base_node()) else { continue };
        let copy_path = bundle.join(&d.parent_copy);
        let Ok((copy, _)) = read_descriptor(env, &copy_path) else { continue };
        let base_disk = Disk::open_alone(env, &base.descriptor_path(bd))?;
        let final_dir = lib.bases_dir().join(name).join(&d.parent_copy);
        let final_dir = final_dir.parent().unwrap_or(&lib.bases_dir()).to_path_buf();
        let new = repoint(&copy, &base_disk.extent_files(), &final_dir, opts.path_style)?;
        if new != copy {
            out.push(Repointed { path: PathBuf::from(&d.parent_copy), original: copy.to_bytes(), new: new.to_bytes() });
        }
    }
    Ok(out)
}

/// Opens the disk at `path` in a dropped bundle with its chain. A leaf moved into Make Base no
/// longer reaches its base by its relative paths, so its parent copy is read against the base
/// its record names (in memory: the leaf's files are not changed).
fn open_chain(
    env: &Arc<dyn Env>,
    bundle: &Path,
    path: &Path,
    origin: Option<&(records::LeafRecord, Base)>,
) -> Result<Disk> {
    let direct = Disk::open(env, path).map_err(Error::from);
    let (Err(_), Some((leaf, base))) = (&direct, origin) else { return direct };
    let Some(d) = leaf.disks.iter().find(|d| bundle.join(&d.delta) == path) else { return direct };
    let Some(bd) = base.record.disks.iter().find(|b| b.node == d.base_node()) else { return direct };
    let base_disk = Disk::open(env, &base.descriptor_path(bd))?;
    let copy_path = bundle.join(&d.parent_copy);
    let (copy, _) = read_descriptor(env, &copy_path)?;
    let from = copy_path.parent().unwrap_or(bundle);
    let Ok(copy) = repoint(&copy, &base_disk.extent_files(), from, PathStyle::Absolute) else { return direct };
    Ok(Disk::open_alone(env, path)?.with_parent(Disk::from_descriptor(env, &copy_path, copy)?)?)
}

/// Writes every flattened disk into the plan's flatten folder, reading the chains where they
/// are (their parents may be elsewhere, by relative paths).
fn write_flattened(ctx: &Ctx, plan: &Plan, source: &Path, opts: &Options) -> Result<()> {
    let dir = plan.flatten_dir(ctx.lib);
    journal::create_work_dir(&dir, &plan.id, "flatten")?;
    let origin = match &plan.from_leaf {
        Some(f) => {
            let base_dir = ctx.path(&f.base)?;
            let leaf = records::read_leaf(source)?;
            match (leaf, records::read_base(&base_dir)?) {
                (Some(leaf), Some(record)) => Some((leaf, Base { dir: base_dir, record })),
                _ => None,
            }
        }
        None => None,
    };
    let env = opts.env();
    let chains = plan
        .flatten
        .iter()
        .map(|f| open_chain(&env, source, &source.join(&f.top), origin.as_ref()))
        .collect::<Result<Vec<_>>>()?;
    let work =
        plan.flatten.iter().zip(&chains).map(|(f, c)| flatten::work(c, f.split.as_deref())).sum::<Result<u64, _>>()?;
    let _progress = Progress::start(ctx.lib, format!("flattening {}", plan.name), source, work);
    for (f, chain) in plan.flatten.iter().zip(&chains) {
        let target = dir.join(&f.target);
        if let Some(parent) = target.parent() {
            durable::create_dir_all(parent)?;
        }
        flatten(&env, chain, &target, f.split.clone())?;
    }
    durable::flush_tree(&dir, Flush::Order)
}

/// The base record once flattened disks exist in `staging`: their CIDs and extents.
fn complete_record(plan: &Plan, staging: &Path, env: &Arc<dyn Env>) -> Result<BaseRecord> {
    let mut record = plan.record.clone();
    for f in &plan.flatten {
        let disk = Disk::open_alone(env, &staging.join(&f.target))?;
        let d = &mut record.disks[f.disk];
        d.cid = disk_cid(&disk)?;
        d.extents.clear();
        for (index, (sectors, file)) in disk.extent_layout().into_iter().enumerate() {
            let Some(file) = file else { continue };
            let size = fs::metadata(&file).at(&file, "cannot stat")?.len();
            let rel = file.strip_prefix(staging).unwrap_or(&file).to_path_buf();
            d.extents.push(ExtentRecord { index, file: rel, sectors, size });
        }
    }
    Ok(record)
}

/// Makes a base from `bundle`. On any failure before the base is in place, everything is put
/// back as it was and the error says why. The base is usable when this returns; the caller then
/// completes the fingerprints.
pub(crate) fn make_base(
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
    let name = name.map(str::to_string).unwrap_or_else(|| common::default_name(&bundle));
    validate_name(&name, "base", &bundle)?;
    let target = lib.bases_dir().join(&name);
    if target.symlink_metadata().is_ok() || lib.base(&name).is_ok() {
        return Err(Error::refused(&bundle, format!("a base named {name:?} already exists"))
            .fix("rename the VM bundle (or pass --name) to give the new base another name"));
    }
    let found = inspect(lib, &bundle, &name, opts)?;
    let id = records::new_id();
    // Decided before the journal, so its plan is the one carried out: a bind mount of the same
    // file system has the same device, but a rename across it fails.
    let copy = !platform::same_mount(&parent, &lib.bases_dir()).at(&parent, "cannot stat")?;
    let plan = Plan {
        id: id.clone(),
        name: name.clone(),
        source: LPath::new(lib.root(), &bundle),
        copy,
        vmx: found.vmx.clone(),
        disk_files: found.disk_files.clone(),
        flatten: found.flatten.clone(),
        from_leaf: found
            .from_leaf
            .as_ref()
            .map(|(base, leaf_id)| FromLeaf { base: LPath::new(lib.root(), &base.dir), leaf_id: leaf_id.clone() }),
        repointed: found.repointed.clone(),
        record: BaseRecord {
            format: records::FORMAT,
            id: id.clone(),
            name: name.clone(),
            source: bundle.to_string_lossy().into(),
            created: records::now(),
            vmx: format!("{}{BASE_VMX_SUFFIX}", found.vmx.to_string_lossy()),
            disks: found.disks.clone(),
        },
    };
    let journal = Journal::begin(lib, &id, OP, &plan)?;
    step(Step::Journaled);
    let ctx = Ctx { lib, id: id.clone(), same_library: true, format: journal::FORMAT };
    if let Err(e) = build(&ctx, &plan, &found, &target, opts) {
        // Published but not flushed (the folder's flush failed after the rename): the journal
        // stays, and recovery finishes the base.
        if published(lib, &plan) {
            return Err(e);
        }
        return Err(undo_after(e, || roll_back(&ctx, &plan).and_then(|()| journal.finish())));
    }
    let Finished { warnings, unfinished } = finish(&ctx, &plan, opts);
    let made = MadeBase {
        name,
        source: lib.display(&bundle),
        disks: found.disks.len(),
        capacity_bytes: found.capacity_bytes,
        copied: copy,
        elapsed: start.elapsed(),
        warnings,
    };
    Ok((made, Fingerprinting { journal, base: Base { dir: target, record: plan.record }, unfinished }))
}

/// The last part of Make Base, which may run after the base is in use: fingerprinting its disks.
/// The operation's journal stays until it is done, so a crash meanwhile is finished by recovery.
#[must_use = "call finish() to record the fingerprints (recovery does it otherwise)"]
pub(crate) struct Fingerprinting {
    journal: Journal,
    pub(crate) base: Base,
    /// What stopped the steps after the publish: reported here, and the journal kept.
    unfinished: Option<Error>,
}

impl Fingerprinting {
    pub(crate) fn finish(self, lib: &Library, opts: &Options) -> Result<()> {
        complete_fingerprints(lib, &self.base, opts)?;
        match self.unfinished {
            Some(e) => Err(e),
            None => self.journal.finish(),
        }
    }
}

/// Everything up to and including the publish rename.
fn build(ctx: &Ctx, plan: &Plan, found: &Inspected, target: &Path, opts: &Options) -> Result<()> {
    let lib = ctx.lib;
    let staging = plan.staging(lib);
    if !plan.flatten.is_empty() {
        write_flattened(ctx, plan, &found.bundle, opts)?;
        step(Step::Flattened);
    }
    if plan.copy {
        copy_into(lib, plan, &found.bundle, &staging, opts)?;
        found.refuse_if_changed()?;
        step(Step::Copied);
    } else {
        found.refuse_if_changed()?;
        durable::rename_noreplace(&found.bundle, &staging)?;
        step(Step::Moved);
    }
    let flatten_dir = plan.flatten_dir(lib);
    for f in &plan.flatten {
        for file in &f.files {
            durable::rename_noreplace(&flatten_dir.join(file), &staging.join(file))?;
        }
    }
    journal::remove_work_dir(ctx, &flatten_dir)?;
    durable::rename_noreplace(&staging.join(&plan.vmx), &staging.join(&plan.record.vmx))?;
    step(Step::VmxRenamed);
    for r in &plan.repointed {
        durable::write_atomic(&staging.join(&r.path), &r.new)?;
    }
    let record = complete_record(plan, &staging, &opts.env())?;
    records::write_base(&staging, &record)?;
    tag(&staging, Tag::Base, true);
    step(Step::LineageWritten);
    let dir = platform::open_dir(&staging).at(&staging, "cannot open")?;
    for rel in plan.disk_files.iter().map(|d| &d.path).chain(plan.flatten.iter().flat_map(|f| &f.files)) {
        // Through the descriptor opened beneath the staging folder: nothing can be swapped in
        // between the checks and the change.
        let p = staging.join(rel);
        let file = platform::open_beneath(&dir, rel, false).at(&p, "cannot open to write-protect")?;
        durable::protect_open(&file, &p)?;
    }
    step(Step::Protected);
    durable::flush_tree(&staging, Flush::Order)?;
    durable::rename_noreplace(&staging, target)?;
    step(Step::Published);
    Ok(())
}

/// Copies the bundle into a new stamped staging folder (another volume), flushes and compares.
fn copy_into(lib: &Library, plan: &Plan, bundle: &Path, staging: &Path, opts: &Options) -> Result<()> {
    journal::create_work_dir(staging, &plan.id, "staging")?;
    let entries = fsutil::walk(bundle)?;
    let files: Vec<&PathBuf> = entries.iter().filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_file())).collect();
    let data = files.iter().map(|f| fsutil::data_bytes(f)).sum::<Result<u64>>()?;
    let progress = Progress::start(lib, format!("copying {}", plan.name), bundle, data);
    for (i, src) in entries.iter().enumerate() {
        let dst = staging.join(src.strip_prefix(bundle).unwrap_or(src));
        let m = fs::symlink_metadata(src).at(src, "cannot stat")?;
        if m.is_dir() {
            durable::create_dir(&dst)?;
        } else if m.file_type().is_symlink() {
            durable::symlink(&fs::read_link(src).at(src, "cannot read link")?, &dst)?;
        } else {
            durable::copy_file(src, &dst, &opts.cancel)?;
        }
        if i == 0 {
            step(Step::Copying);
        }
    }
    let bytes = files.iter().map(|f| f.symlink_metadata().map_or(0, |m| m.len())).sum();
    progress.next(format!("checking the copy of {}", plan.name), bytes);
    for src in &entries {
        let dst = staging.join(src.strip_prefix(bundle).unwrap_or(src));
        if fs::symlink_metadata(src).at(src, "cannot stat")?.is_file()
            && !fsutil::same_content(src, &dst, &opts.cancel)?
        {
            return Err(Error::new(Kind::Io, dst, "the copy differs from the original after flushing")
                .fix("the destination disk may be failing; the original is untouched"));
        }
    }
    Ok(())
}

/// Sets or clears a Finder tag; a volume that keeps none simply shows none.
fn tag(path: &Path, tag: Tag, on: bool) {
    if let Err(e) = durable::set_tag(path, tag, on) {
        tracing::debug!("cannot tag {}: {e}", path.display());
    }
}

/// What finishing a published Make Base left: warnings for a usable base, and the first error
/// that stopped it (the journal then stays, and recovery finishes the rest).
struct Finished {
    warnings: Vec<String>,
    unfinished: Option<Error>,
}

/// After the publish: the drop folder, the old leaf's lineage, and (across volumes) removing the
/// source. Idempotent. A failure leaves a usable base; it stops the rest, and recovery (which
/// runs this again) finishes it: a source half removed, or an old base still listing the leaf,
/// must not stay so.
fn finish(ctx: &Ctx, plan: &Plan, opts: &Options) -> Finished {
    let mut warnings = Vec::new();
    let unfinished = finish_steps(ctx, plan, opts, &mut warnings).err().map(|e| {
        let fix = match &e.fix {
            Some(fix) => format!("{fix}; then `leafd recover` finishes making the base (it is usable now)"),
            None => "the base is usable now; `leafd recover` finishes making it".to_string(),
        };
        e.fix(fix)
    });
    Finished { warnings, unfinished }
}

fn finish_steps(ctx: &Ctx, plan: &Plan, opts: &Options, warnings: &mut Vec<String>) -> Result<()> {
    let lib = ctx.lib;
    let target = plan.target(lib)?;
    let drop_folder = lib.new_leaf_dir().join(&plan.name);
    durable::create_dir_all(&drop_folder).and_then(|()| durable::flush_parent(&drop_folder, Flush::Order))?;
    step(Step::DropFolderCreated);
    if let Some(from) = &plan.from_leaf {
        // The leaf is now a base: it is no leaf of its old base any more.
        // The tag first: removing the record flushes the folder, tags and all.
        tag(&target, Tag::LinkedClone, false);
        records::remove_leaf(&target)?;
        let old_base = ctx.path(&from.base)?;
        let old = records::read_base(&old_base)?;
        let _lock = old.map(|r| lib.lock_base(&r.id)).transpose()?;
        records::unlink_leaf(&old_base, &from.leaf_id)?;
    }
    // A source this library may not remove is an error: the base keeps its stamp, and the
    // operation its journal, for a person (see `copied_source`).
    if plan.copy {
        if let Some(source) = copied_source(ctx, plan)? {
            let changed = remove_copied_source(lib, &source, &target, plan, opts)?;
            if !changed.is_empty() {
                warnings.push(format!(
                    "{}: kept the original, because {} file(s) in it changed since they were copied \
                     (first {}); the base holds the VM as it was copied; remove the original once \
                     you no longer need it",
                    plan.record.source,
                    changed.len(),
                    changed[0].display()
                ));
            }
        }
        step(Step::SourceRemoved);
    }
    journal::unstamp(&target, &plan.id)
}

/// The copied source a cross-volume Make Base still has to remove: `None` once it is gone. Outside
/// a moved or copied library it is not this library's to remove: an error, and the journal is
/// kept for a person (docs/journal.md).
fn copied_source(ctx: &Ctx, plan: &Plan) -> Result<Option<PathBuf>> {
    // The base carries this operation's stamp (from its staging folder) until the source is dealt
    // with: without it there is nothing left to remove, and a folder at the source's path now
    // (a backup put back, a copy of the base) is not this operation's. Format 1 had no stamps.
    let stamped = plan.target(ctx.lib).is_ok_and(|t| journal::stamped(&t, &plan.id));
    if ctx.format >= journal::FORMAT && !stamped {
        return Ok(None);
    }
    match ctx.path(&plan.source) {
        Ok(source) => Ok(Some(source)),
        Err(_) if plan.source.is_outside() && plan.source.as_path().symlink_metadata().is_err() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the source bundle of a cross-volume Make Base, but only when every file in it is still
/// byte-identical to its copy in the base: a VM that changed since it was copied (booted, say) is
/// kept whole, never left half removed. Returns the files that changed; nothing is removed then.
fn remove_copied_source(
    lib: &Library,
    source: &Path,
    target: &Path,
    plan: &Plan,
    opts: &Options,
) -> Result<Vec<PathBuf>> {
    if source.symlink_metadata().is_err() {
        return Ok(Vec::new());
    }
    let state = fsutil::tree_state(source)?;
    let entries: Vec<PathBuf> = state.iter().map(|(p, ..)| p.clone()).collect();
    let compared = |p: &Path| !plan.repointed.iter().any(|r| source.join(&r.path) == p);
    let bytes = state.iter().filter(|(p, ..)| compared(p)).map(|(_, len, _)| len).sum();
    let progress =
        Progress::start(lib, format!("checking the original of {} before removing it", plan.name), source, bytes);
    let mut changed = Vec::new();
    for src in &entries {
        let rel = src.strip_prefix(source).unwrap_or(src);
        let copy = if rel == plan.vmx { target.join(&plan.record.vmx) } else { target.join(rel) };
        let m = fs::symlink_metadata(src).at(src, "cannot stat")?;
        let repointed = plan.repointed.iter().any(|r| r.path == rel);
        let same = if m.is_dir() {
            copy.is_dir()
        } else if m.is_file() && !repointed {
            copy.is_file() && fsutil::same_content(src, &copy, &opts.cancel)?
        } else {
            copy.symlink_metadata().is_ok()
        };
        if !same {
            changed.push(src.clone());
        }
    }
    drop(progress);
    // Comparing big disks takes time: a VM started meanwhile (a new lock folder, a write) keeps
    // the original whole.
    if changed.is_empty() && fsutil::tree_state(source)? != state {
        changed.push(source.to_path_buf());
    }
    if !changed.is_empty() {
        return Ok(changed);
    }
    // Children before their folders.
    for (i, src) in entries.iter().rev().enumerate() {
        if fs::symlink_metadata(src).at(src, "cannot stat")?.is_dir() {
            durable::remove_dir(src)?;
        } else {
            durable::remove_file(src)?;
        }
        if i == 0 {
            step(Step::SourceRemoving);
        }
    }
    durable::remove_dir(source)?;
    durable::flush_parent(source, Flush::Order)?;
    Ok(changed)
}

/// Undoes an unpublished Make Base. Idempotent: works from whatever state a crash left.
fn roll_back(ctx: &Ctx, plan: &Plan) -> Result<()> {
    let lib = ctx.lib;
    let staging = plan.staging(lib);
    journal::remove_work_dir(ctx, &plan.flatten_dir(lib))?;
    if staging.symlink_metadata().is_err() {
        return Ok(()); // nothing was moved or copied (or the undo already finished)
    }
    if plan.copy {
        // The source was never touched: drop the copy.
        return journal::remove_work_dir(ctx, &staging);
    }
    let source = ctx.path(&plan.source)?;
    for d in &plan.disk_files {
        let p = staging.join(&d.path);
        if p.symlink_metadata().is_ok() {
            // Format 1 recorded lineage on the disk files themselves; writing (or removing) an
            // attribute needs write permission.
            durable::unprotect(&p, d.mode | 0o200)?;
            let _ = durable::remove_xattr(&p, &platform::xattr_name("extent"));
            durable::set_mode(&p, d.mode)?;
            if d.locked {
                durable::set_locked(&p, true)?;
            }
        }
    }
    // Flattened disks are leafd's own: they go.
    for p in plan.flatten.iter().flat_map(|f| &f.files).map(|f| staging.join(f)) {
        if p.symlink_metadata().is_ok() {
            durable::unprotect(&p, 0o644)?;
            durable::remove_file(&p)?;
        }
    }
    for r in &plan.repointed {
        let p = staging.join(&r.path);
        if fs::read(&p).is_ok_and(|now| now != r.original) {
            durable::write_atomic(&p, &r.original)?;
        }
    }
    records::remove_base(&staging)?;
    tag(&staging, Tag::Base, false);
    let renamed = staging.join(&plan.record.vmx);
    if renamed.symlink_metadata().is_ok() && staging.join(&plan.vmx).symlink_metadata().is_err() {
        durable::rename_noreplace(&renamed, &staging.join(&plan.vmx))?;
    }
    durable::flush_tree(&staging, Flush::Order)?;
    if let Some(parent) = source.parent() {
        durable::create_dir_all(parent)?;
    }
    if source.symlink_metadata().is_ok() {
        // Something new took the bundle's name meanwhile: put it back beside it.
        let aside = source.with_file_name(format!(
            "{} (restored by leafd)",
            source.file_name().unwrap_or_default().to_string_lossy()
        ));
        return durable::rename_noreplace(&staging, &aside);
    }
    durable::rename_noreplace(&staging, &source)
}

/// Whether the base is in place (the publish rename happened).
fn published(lib: &Library, plan: &Plan) -> bool {
    plan.target(lib).is_ok_and(|t| crate::library::base_at(&t, &plan.id).unwrap_or(false))
}

/// Finishes or undoes a Make Base that was interrupted.
pub(crate) fn recover(ctx: &Ctx, plan: &Plan, opts: &Options) -> Result<String> {
    let lib = ctx.lib;
    // Every file the plan names is in the bundle: a journal naming one elsewhere (`../..`) would
    // have recovery change or delete it.
    let files = [plan.vmx.as_path(), Path::new(&plan.record.vmx)]
        .into_iter()
        .chain(plan.disk_files.iter().map(|d| d.path.as_path()))
        .chain(plan.flatten.iter().flat_map(|f| [&f.top, &f.target].into_iter().chain(&f.files).map(PathBuf::as_path)))
        .chain(plan.repointed.iter().map(|r| r.path.as_path()));
    for f in files {
        ctx.inside(f, "the journal names a file of the VM outside its bundle")?;
    }
    if !published(lib, plan) {
        roll_back(ctx, plan)?;
        return Ok(format!("undid the interrupted Make Base of {}; the VM is back as it was", plan.record.source));
    }
    if let Some(from) = &plan.from_leaf {
        // The leaf became this base; the source of a copy is removed after.
        let source = ctx.path(&plan.source).ok();
        lib.refuse_if_leaf_exists(&from.leaf_id, source.as_deref(), &ctx.id)?;
    }
    let Finished { warnings, unfinished } = finish(ctx, plan, opts);
    if let Some(e) = unfinished {
        return Err(e);
    }
    let base = Base { dir: plan.target(lib)?, record: plan.record.clone() };
    complete_fingerprints(lib, &base, opts)?;
    let mut msg = format!("finished the interrupted Make Base: base {:?} is ready", plan.name);
    for w in warnings {
        msg.push_str(&format!("; {w}"));
    }
    Ok(msg)
}

/// Computes and records the fingerprints a base does not have yet (they are computed after the
/// base is usable, so a big disk does not delay it).
pub(crate) fn complete_fingerprints(lib: &Library, base: &Base, opts: &Options) -> Result<()> {
    let current = records::read_base(&base.dir)?.unwrap_or_else(|| base.record.clone());
    if current.disks.iter().all(|d| d.fingerprint.is_some()) {
        return Ok(());
    }
    let env = opts.env();
    let disks = current
        .disks
        .iter()
        .map(|d| Disk::open_alone(&env, &base.dir.join(&d.descriptor)))
        .collect::<Result<Vec<_>, _>>()?;
    let data = disks.iter().flat_map(Disk::extent_files).map(|f| fsutil::data_bytes(&f)).sum::<Result<u64>>()?;
    let progress = Progress::start(lib, format!("fingerprinting base {}", current.name), &base.dir, data);
    let mut prints = Vec::new();
    for disk in &disks {
        prints.push(fsutil::fingerprint(&disk.extent_files(), &opts.cancel)?);
    }
    drop(progress);
    let _lock = lib.lock_base(&current.id)?;
    let mut record = records::read_base(&base.dir)?.unwrap_or(current);
    for (d, fp) in record.disks.iter_mut().zip(prints) {
        d.fingerprint.get_or_insert(fp);
    }
    step(Step::Fingerprinted);
    records::write_base(&base.dir, &record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample::{SampleDisk, SampleVm};
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
        let found = inspect(&lib, &bundle, "Started", &Options::default()).unwrap();
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
