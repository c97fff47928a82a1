//! `leafd adopt VM --base NAME`: a VM that was copied from a base block for block (and used
//! since) becomes an ordinary leaf of it, in place: each of its disks matched to a base disk is
//! compared with it grain by grain, and only the grains that differ stay its own, in a delta over
//! a parent copy. A disk with no match stays the VM's own, as it is.
//!
//! The transaction is promote's: a stamped staging bundle is built beside where the leaf will be
//! (parent copies, deltas, the VM's own `.vmx` pointed at them, a `.vmsd` with the snapshot
//! Base, every other file hard-linked, the leaf record) and read back against hashes taken while
//! the VM's disks were read; then the VM is stamped and set aside as `.leafd-adopt-<id>` (the
//! commit point) and the staging takes its place; the base lists the leaf; the set-aside VM,
//! which holds the original disk files, goes last. Nothing of the base is opened for writing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use leafd_formats::clone::{create_delta_with_cid, delta_extents, delta_name, parent_copy};
use leafd_formats::compare::{self, Compared, DeltaWriter};
use leafd_formats::descriptor::NO_PARENT;
use leafd_formats::dict::Dict;
use leafd_formats::disk::{self, Disk, extent_names, read_descriptor};
use leafd_formats::ids::random_cid;
use leafd_formats::vmx::{self, Snapshot};
use leafd_formats::{Env, ErrorKind};
use serde::{Deserialize, Serialize};

use super::common::{
    cid_hex, default_name, disk_cid, free_space, human_bytes, human_duration, open_base_disks, own_bytes,
    plain_entries, read_dict, refuse_unsafe_state,
};
use crate::durable::{self, Flush};
use crate::error::{Error, IoContext, Kind, Result, undo_after};
use crate::fsutil;
use crate::library::journal::{self, Ctx, Journal, LPath};
use crate::library::records::{self, DiskRecord, LeafDisk, LeafRecord, LeafRef};
use crate::library::{BASES, Base, Library, MAKE_BASE, NEW_LEAF, Options, STATE, same_name, validate_name};
use crate::platform::{self, Tag};
use crate::progress::{Progress, meter};
use crate::testing::fault;

fault::steps!("adopt" {
    Journaled = "journaled",
    /// Every matched disk compared and its delta written in staging.
    Compared = "compared",
    /// The staging bundle complete, read back and flushed.
    Staged = "staged",
    SetAside = "set-aside",
    Swapped = "swapped",
    Linked = "linked",
    Cleaned = "cleaned",
});

/// The VM's content is hashed in regions of this many bytes of each disk.
const REGION: u64 = 32 << 20;
/// Space the volume keeps free while deltas are written: below it, the adoption stops.
const RESERVE: u64 = 64 << 20;
/// Free space is looked at again after this many bytes written into deltas.
const SPACE_CHECK_EVERY: u64 = 16 << 20;
/// A VM sharing less than 1/`MIN_SHARE` of its data with the base is refused (unless forced).
const MIN_SHARE: u64 = 10;

/// The journal's record of an adoption.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plan {
    pub(crate) id: String,
    /// The VM bundle adopted.
    pub(crate) source: LPath,
    /// Where the leaf ends up: the VM's own place, or `<root>/<name>.vmwarevm` for a VM dropped
    /// into `New Leaf/<base>/`.
    pub(crate) target: LPath,
    /// The base's folder and id.
    pub(crate) base: LPath,
    pub(crate) base_id: String,
    pub(crate) leaf_ref: LeafRef,
}

/// Where an adoption works: beside the leaf's place.
struct Places {
    source: PathBuf,
    target: PathBuf,
    staging: PathBuf,
    /// Where the VM waits, set aside, until the leaf is in place.
    aside: PathBuf,
}

impl Places {
    fn of(ctx: &Ctx, plan: &Plan) -> Result<Places> {
        let target = ctx.path(&plan.target)?;
        let parent = target.parent().unwrap_or(ctx.lib.root()).to_path_buf();
        Ok(Places {
            source: ctx.path(&plan.source)?,
            staging: parent.join(journal::work_name("staging", &plan.id)),
            aside: parent.join(journal::work_name("adopt", &plan.id)),
            target,
        })
    }
}

/// What the command asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) vm: &'a Path,
    pub(crate) base: &'a str,
    pub(crate) name: Option<&'a str>,
    pub(crate) dry_run: bool,
    pub(crate) force: bool,
}

/// One disk of the VM.
struct VmDisk {
    node: String,
    /// Its descriptor (or single file), relative to the bundle.
    rel: PathBuf,
    disk: Disk,
    /// The base disk it is matched with: an index into the base's disks.
    base: Option<usize>,
    /// How many base disks have its capacity (more than one and none on its node: unmatched).
    same_capacity: usize,
}

/// A VM that passed every check before anything is written.
struct Inspected {
    bundle: PathBuf,
    /// The `.vmx`'s file name.
    vmx: String,
    dict: Dict,
    disks: Vec<VmDisk>,
    base: Base,
    base_disks: Vec<(DiskRecord, Disk)>,
    name: String,
    target: PathBuf,
    /// What the VM's files occupy before.
    own_bytes: u64,
    state: fsutil::TreeState,
}

/// How one disk fared.
#[derive(Debug, Clone)]
pub(crate) struct DiskReport {
    pub(crate) node: String,
    pub(crate) file: String,
    pub(crate) capacity: u64,
    /// The base disk it was compared with, and what was found; `None`: no base disk of its
    /// capacity, it stays the VM's own (`own` bytes).
    pub(crate) matched: Option<(String, Compared)>,
    pub(crate) own: u64,
    /// Unmatched: how many base disks have its capacity (none on its node, and not one alone).
    pub(crate) same_capacity: usize,
}

impl std::fmt::Display for DiskReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({})", self.node, self.file, human_bytes(self.capacity * 512))?;
        match &self.matched {
            Some((with, c)) => write!(
                f,
                ": compared with base disk {with}: {} of data, {} the same as the base's (freed), {} its own",
                human_bytes(c.data_bytes),
                human_bytes(c.shared_bytes),
                human_bytes(c.differing_bytes)
            ),
            None if self.same_capacity > 0 => write!(
                f,
                ": not matched ({} base disks of this capacity, none on its node, and not one alone left for it), it stays the VM's own ({})",
                self.same_capacity,
                human_bytes(self.own)
            ),
            None => write!(f, ": no base disk of this capacity, it stays the VM's own ({})", human_bytes(self.own)),
        }
    }
}

/// What an adoption did (or, dry, would do).
#[derive(Debug)]
pub(crate) struct Adopted {
    pub(crate) name: String,
    pub(crate) base: String,
    pub(crate) disks: Vec<DiskReport>,
    /// What the VM's files occupied before, and what the leaf's own files occupy after.
    pub(crate) before: u64,
    pub(crate) after: u64,
    /// Free space the volume gained, as measured (`None` for a dry run).
    pub(crate) freed: Option<u64>,
    pub(crate) elapsed: Duration,
    /// Of that, the time removing the VM's original disk files took (what `rm` of them costs:
    /// on a volume mounted with `discard`, about a third of a second a GiB).
    pub(crate) removing: Duration,
}

impl Adopted {
    fn shared(&self) -> u64 {
        self.disks.iter().filter_map(|d| d.matched.as_ref()).map(|(_, c)| c.shared_bytes).sum()
    }

    /// What the leaf would keep of its own: the grains that differ, the disks with no match,
    /// and the VM's other files.
    fn kept(&self) -> u64 {
        let disk_files: u64 = self.disks.iter().map(|d| d.own).sum();
        let disks: u64 = self.disks.iter().map(|d| d.matched.as_ref().map_or(d.own, |(_, c)| c.differing_bytes)).sum();
        self.before.saturating_sub(disk_files) + disks
    }
}

impl std::fmt::Display for Adopted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(freed) = self.freed else {
            writeln!(f, "adopting {:?} as a leaf of {:?} (dry run: nothing was changed):", self.name, self.base)?;
            for d in &self.disks {
                writeln!(f, "  {d}")?;
            }
            return write!(
                f,
                "it would keep about {} of its own and free about {} (less where the volume shares blocks already)",
                human_bytes(self.kept()),
                human_bytes(self.shared())
            );
        };
        write!(
            f,
            "adopted {:?} as a leaf of {:?}: {} \u{2192} {} of its own, ",
            self.name,
            self.base,
            human_bytes(self.before),
            human_bytes(self.after)
        )?;
        if freed > 0 {
            write!(f, "{} freed", human_bytes(freed))?;
        } else if self.shared() == 0 {
            f.write_str("no space freed (none of its data was the base's: its delta holds all of it)")?;
        } else {
            f.write_str(
                "no space freed (the volume shared its blocks with the base's already: a clone or reflink copy)",
            )?;
        }
        write!(
            f,
            ", {} ({} of it removing the original files)",
            human_duration(self.elapsed),
            human_duration(self.removing)
        )
    }
}

/// Adopts the VM `req.vm` as a leaf of base `req.base`.
pub(crate) fn adopt(lib: &Library, req: Request, opts: &Options) -> Result<Adopted> {
    let start = Instant::now();
    let base = lib.base(req.base)?;
    if req.dry_run {
        return dry_run(&inspect(lib, base, req, opts)?, opts, start);
    }
    // Held until the leaf is on the base's list: a base being removed cannot gain a leaf.
    let _lock = base.lock(lib)?;
    let mut vm = inspect(lib, base, req, opts)?;
    let free_before = free_space(vm.target.parent().unwrap_or(lib.root()))?;
    if free_before < RESERVE {
        return Err(no_space(&vm.bundle, free_before, 0));
    }
    let id = records::new_id();
    let plan = Plan {
        id: id.clone(),
        source: LPath::new(lib.root(), &vm.bundle),
        target: LPath::new(lib.root(), &vm.target),
        base: LPath::new(lib.root(), &vm.base.dir),
        base_id: vm.base.record.id.clone(),
        leaf_ref: LeafRef {
            format: records::FORMAT,
            id: id.clone(),
            name: vm.name.clone(),
            path: vm.target.to_string_lossy().into(),
            created: records::now(),
        },
    };
    let journal = Journal::begin(lib, &id, OP, &plan)?;
    step(Step::Journaled);
    let ctx = Ctx { lib, id: id.clone(), same_library: true, format: journal::FORMAT };
    let places = Places::of(&ctx, &plan)?;
    let disks = match stage(lib, &plan, &places, &vm, req, opts) {
        Ok(d) => d,
        Err(e) => return Err(undo_after(e, || undo(&ctx, &places, &plan).and_then(|()| journal.finish()))),
    };
    // Closed: the original disk files are freed once the VM set aside is removed.
    vm.disks.clear();
    if let Err(e) = swap(&plan, &places) {
        // Set aside: the leaf is complete, and recovery finishes the swap. Not set aside: the VM
        // is as it was, and the adoption is undone here.
        if places.aside.symlink_metadata().is_ok() {
            return Err(e);
        }
        return Err(undo_after(e, || undo(&ctx, &places, &plan).and_then(|()| journal.finish())));
    }
    let removing = finish(&ctx, &plan, &places)?;
    journal.finish()?;
    let free_after = free_space(vm.target.parent().unwrap_or(lib.root()))?;
    Ok(Adopted {
        name: vm.name.clone(),
        base: vm.base.record.name.clone(),
        disks,
        before: vm.own_bytes,
        after: own_bytes(&vm.target),
        // Measured, and never more than the VM's files took: what others freed on the volume
        // meanwhile is not the adoption's.
        freed: Some(free_after.saturating_sub(free_before).min(vm.own_bytes)),
        elapsed: start.elapsed(),
        removing,
    })
}

/// Undoes an adoption before its commit point: the staging goes, the VM is as it was.
fn undo(ctx: &Ctx, places: &Places, plan: &Plan) -> Result<()> {
    journal::remove_work_dir(ctx, &places.staging)?;
    journal::unstamp(&places.source, &plan.id)
}

fn no_space(at: &Path, free: u64, written: u64) -> Error {
    Error::refused(
        at,
        format!(
            "too little free space for the deltas: {} free after {} of them were written",
            human_bytes(free),
            human_bytes(written)
        ),
    )
    .fix("free some space on the volume (`--dry-run` says how much the VM keeps of its own), then adopt it again")
}

/// Compares every matched disk without writing anything, and says what adopting would do.
fn dry_run(vm: &Inspected, opts: &Options, start: Instant) -> Result<Adopted> {
    let env = opts.env();
    let what = format!("comparing {} with base {}", vm.name, vm.base.record.name);
    let _progress = Progress::bar_only(what, &vm.bundle, matched_capacity(vm));
    let mut disks = Vec::new();
    for d in &vm.disks {
        let matched = match d.base {
            Some(i) => {
                let (record, base_disk) = &vm.base_disks[i];
                let extents = delta_extents(&parent_copy(base_disk, &vm.bundle, opts.path_style)?, base_disk.disk_type);
                let c = compare::compare(&env, &d.disk, base_disk, &extents, |_| Ok(()))?;
                Some((format!("{} {}", record.node, record.descriptor), c))
            }
            None => None,
        };
        disks.push(report_of(d, matched));
    }
    Ok(Adopted {
        name: vm.name.clone(),
        base: vm.base.record.name.clone(),
        disks,
        before: vm.own_bytes,
        after: 0,
        freed: None,
        elapsed: start.elapsed(),
        removing: Duration::ZERO,
    })
}

/// The bytes comparing the VM's disks with the base's walks: the capacity of those matched.
fn matched_capacity(vm: &Inspected) -> u64 {
    vm.disks.iter().filter(|d| d.base.is_some()).map(|d| d.disk.capacity() * 512).sum()
}

fn report_of(d: &VmDisk, matched: Option<(String, Compared)>) -> DiskReport {
    DiskReport {
        node: d.node.clone(),
        file: d.rel.to_string_lossy().into_owned(),
        capacity: d.disk.capacity(),
        matched,
        own: d.disk.files().iter().map(|f| fsutil::allocated(f)).sum(),
        same_capacity: d.same_capacity,
    }
}

// ---------------------------------------------------------------------------------------------
// Inspection: everything decided by looking, before anything is written.

/// Checks everything that must hold before a VM may be adopted. Reads only; the VM's files are
/// opened beneath its bundle, never through a link out of it.
fn inspect(lib: &Library, base: Base, req: Request, opts: &Options) -> Result<Inspected> {
    let bundle = check_bundle(lib, req.vm)?;
    let entries = plain_entries(&bundle)?;
    let vmx = find_vmx(&bundle, &entries)?;
    let vmx_path = bundle.join(&vmx);
    let dict = read_dict(&vmx_path)?;
    refuse_unsafe_state(&vmx_path, &dict, &entries)?;
    refuse_snapshots(&vmx_path)?;
    let same = platform::same_mount(&bundle, &base.dir).at(&bundle, "cannot stat")?;
    if !same {
        return Err(Error::refused(
            &bundle,
            format!(
                "is on another volume than base {:?}: a leaf shares the base's disk files on its volume",
                base.record.name
            ),
        )
        .fix(format!(
            "move the VM to the volume of {} (or drop it into New Leaf/{}/), then adopt it",
            lib.root().display(),
            base.record.name
        )));
    }
    let base_disks = open_base_disks(&base, opts)?;
    let env = opts.env_beneath(std::slice::from_ref(&bundle))?;
    let mut disks = vm_disks(&bundle, &env, &dict, &vmx_path)?;
    match_disks(&mut disks, &base_disks);
    if disks.iter().all(|d| d.base.is_none()) && disks.iter().any(|d| d.same_capacity > 1) {
        let nodes = |n: Vec<&str>| n.join(", ");
        return Err(Error::refused(
            &vmx_path,
            format!(
                "none of the VM's disks ({}) is on the node of a disk of base {:?} of its capacity ({}), and several have it: which one it was copied from cannot be told",
                nodes(disks.iter().map(|d| d.node.as_str()).collect()),
                base.record.name,
                nodes(base.record.disks.iter().map(|d| d.node.as_str()).collect())
            ),
        )
        .fix("attach the VM's disks on the nodes of the base's disks they were copied from (VMware's settings for the VM), then adopt it"));
    }
    if disks.iter().all(|d| d.base.is_none()) {
        let sizes = |caps: Vec<u64>| caps.into_iter().map(|c| human_bytes(c * 512)).collect::<Vec<_>>().join(", ");
        return Err(Error::refused(
            &vmx_path,
            format!(
                "none of the VM's disks ({}) has the capacity of a disk of base {:?} ({}): it was not copied from it",
                sizes(disks.iter().map(|d| d.disk.capacity()).collect()),
                base.record.name,
                sizes(base.record.disks.iter().map(|d| d.capacity).collect())
            ),
        )
        .fix("adopt it as a leaf of the base it was copied from"));
    }
    let (name, target) = place(lib, &bundle, &base, req)?;
    refuse_in_the_way(&bundle, &disks, &base_disks, &entries)?;
    Ok(Inspected {
        own_bytes: own_bytes(&bundle),
        state: fsutil::tree_state(&bundle)?,
        bundle,
        vmx,
        dict,
        disks,
        base,
        base_disks,
        name,
        target,
    })
}

/// The bundle's own checks: a folder (not a link), outside Bases, not one of leafd's.
fn check_bundle(lib: &Library, vm: &Path) -> Result<PathBuf> {
    let meta = vm.symlink_metadata().at(vm, "cannot find the VM").map_err(|e| e.fix("check the path of the VM"))?;
    if meta.file_type().is_symlink() {
        return Err(Error::refused(vm, "is a symbolic link").fix("give the VM bundle itself, not an alias to it"));
    }
    if !meta.is_dir() {
        return Err(
            Error::refused(vm, "is not a VM bundle").fix("give a .vmwarevm bundle, or a folder holding one .vmx")
        );
    }
    let bundle = vm.canonicalize().at(vm, "cannot resolve the VM's folder")?;
    if bundle.starts_with(lib.bases_dir()) || bundle.starts_with(lib.root().join(STATE)) {
        return Err(Error::refused(
            &bundle,
            format!("is inside {BASES} or leafd's own folder: it is not a VM of yours"),
        ));
    }
    if lib.root().starts_with(&bundle) {
        return Err(Error::refused(
            &bundle,
            format!("holds the library {}: it is not a VM bundle", lib.root().display()),
        )
        .fix("give the VM's own folder (the one holding its .vmx and disks alone)"));
    }
    if bundle.starts_with(lib.make_base_dir()) {
        return Err(Error::refused(
            &bundle,
            format!("is in {MAKE_BASE}: it is on its way to become a base, and the agent would convert it"),
        )
        .fix(format!("move it out of {MAKE_BASE} (beside your other VMs, say), then adopt it")));
    }
    if bundle.join(records::DIR).symlink_metadata().is_ok() {
        return Err(Error::refused(
            &bundle,
            "holds leafd's records (.leafd/): it is a leaf or a base, or a copy of one, and was never a VM of its own",
        )
        .fix("a leaf is a leaf already; to make a VM of its own of a leaf or a copy of one, `leafd promote` it"));
    }
    Ok(bundle)
}

/// The bundle's one `.vmx` (its file name).
fn find_vmx(bundle: &Path, entries: &[PathBuf]) -> Result<String> {
    let vmxs: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| p.parent() == Some(bundle) && p.extension().is_some_and(|x| x.eq_ignore_ascii_case("vmx")))
        .filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()))
        .collect();
    match vmxs[..] {
        [one] => one.file_name().and_then(|n| n.to_str()).map(str::to_string).ok_or_else(|| {
            Error::refused(one, "the name of the VM's .vmx is not UTF-8").fix("rename it, then adopt the VM again")
        }),
        [] => Err(Error::refused(bundle, "holds no .vmx: it is not a VM").fix("give a VMware VM bundle (.vmwarevm)")),
        _ => Err(Error::refused(bundle, format!("holds {} .vmx files", vmxs.len()))
            .fix("keep only the VM's own .vmx in the bundle")),
    }
}

/// How to deal with a VM's own snapshots before it is adopted (which would lose them).
const SNAPSHOTS_FIX: &str = "to keep a snapshot, make a full clone of it in VMware first (VM > Snapshots, select \
    it, Clone, \"Create a full clone\"); then delete the VM's snapshots (Snapshot Manager > Delete: the VM keeps \
    its current state) and adopt it again";

/// Refuses a VM whose `.vmsd` lists snapshots of its own (its disks' deltas are refused with
/// the disks).
fn refuse_snapshots(vmx: &Path) -> Result<()> {
    let vmsd = vmx.with_extension("vmsd");
    if let Ok(d) = read_dict(&vmsd)
        && d.get("snapshot.numSnapshots").and_then(|n| n.parse::<u32>().ok()).unwrap_or(0) > 0
    {
        return Err(
            Error::refused(&vmsd, "the VM has snapshots of its own, which adopting it would lose").fix(SNAPSHOTS_FIX)
        );
    }
    Ok(())
}

/// The VM's disks, each inside the bundle, whole, with a UTF-8 name, sharing no file with another.
fn vm_disks(bundle: &Path, env: &Arc<dyn Env>, dict: &Dict, vmx: &Path) -> Result<Vec<VmDisk>> {
    let mut out = Vec::new();
    // Every file of the disks so far, by identity: its disk's node and the name it had there.
    let mut seen: Vec<((u64, u64), String, PathBuf)> = Vec::new();
    for entry in vmx::disks(dict) {
        let outside = || {
            Error::refused(vmx, format!("disk {} ({}) is outside the bundle", entry.node, entry.file_name))
                .fix("move the disk into the VM bundle (VMware can do it), then adopt the VM")
        };
        let path = disk::find(env, bundle, &dict.name(&entry.file_name)).ok_or_else(outside)?;
        let rel = path.strip_prefix(bundle).map_err(|_| outside())?.to_path_buf();
        if rel.to_str().is_none() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(Error::refused(
                &path,
                format!("the path of disk {} is not a plain UTF-8 name in the bundle", entry.node),
            )
            .fix("rename the disk in VMware to a plain name, then adopt the VM"));
        }
        let missing = |e: leafd_formats::Error| match e.kind {
            ErrorKind::Missing => Error::refused(&path, format!("disk {} is missing", entry.node))
                .fix("restore the disk file or remove the disk from the VM"),
            _ => Error::from(e),
        };
        let (descriptor, _) = read_descriptor(env, &path).map_err(missing)?;
        if descriptor.parent_cid().unwrap_or(NO_PARENT) != NO_PARENT {
            return Err(Error::refused(
                &path,
                format!(
                    "disk {} is a snapshot's: the VM has snapshots of its own, which adopting it would lose",
                    entry.node
                ),
            )
            .fix(SNAPSHOTS_FIX));
        }
        let disk = Disk::open(env, &path).map_err(missing)?;
        disk.check_extents()?;
        // By identity, not by name: a link to a matched disk (or to one of its extents) would
        // read as the base through the parent copy that takes its name, or lose what it names
        // with the matched disk's original files.
        for file in disk.files() {
            let id = env.open(&file, false).and_then(|f| f.metadata()).at(&file, "cannot stat")?;
            let id = (id.dev(), id.ino());
            if let Some((_, node, other)) = seen.iter().find(|(i, node, _)| *i == id && *node != entry.node) {
                return Err(Error::refused(
                    vmx,
                    format!(
                        "disk {} shares the file {} with disk {node} ({}): it is attached twice, or names the other disk's files",
                        entry.node,
                        file.strip_prefix(bundle).unwrap_or(&file).display(),
                        other.strip_prefix(bundle).unwrap_or(other).display()
                    ),
                )
                .fix("remove one of the two in VMware's settings for the VM (give each disk files of its own), then adopt it"));
            }
            seen.push((id, entry.node.clone(), file));
        }
        out.push(VmDisk { node: entry.node, rel, disk, base: None, same_capacity: 0 });
    }
    Ok(out)
}

/// Matches each disk to a base disk of equal capacity: the one on the same node first, else the
/// only one of that capacity left.
fn match_disks(disks: &mut [VmDisk], base: &[(DiskRecord, Disk)]) {
    let mut taken = vec![false; base.len()];
    for d in disks.iter_mut() {
        d.same_capacity = base.iter().filter(|(_, b)| b.capacity() == d.disk.capacity()).count();
        let same_node =
            base.iter().position(|(r, b)| r.node.eq_ignore_ascii_case(&d.node) && b.capacity() == d.disk.capacity());
        if let Some(i) = same_node {
            taken[i] = true;
            d.base = Some(i);
        }
    }
    for d in disks.iter_mut().filter(|d| d.base.is_none()) {
        let free: Vec<usize> =
            (0..base.len()).filter(|&i| !taken[i] && base[i].1.capacity() == d.disk.capacity()).collect();
        if let [i] = free[..] {
            taken[i] = true;
            d.base = Some(i);
        }
    }
}

/// The leaf's name and place: the VM's own place, or `<root>/<name>.vmwarevm` for a VM dropped
/// into the base's folder in New Leaf.
fn place(lib: &Library, bundle: &Path, base: &Base, req: Request) -> Result<(String, PathBuf)> {
    let dropped = bundle.parent() == Some(&lib.new_leaf_dir().join(&base.record.name));
    // Anywhere else in New Leaf it is a drop the agent answers (a note, or another base's
    // adoption): a leaf left there in place would race it.
    if !dropped && bundle.starts_with(lib.new_leaf_dir()) {
        return Err(Error::refused(
            bundle,
            format!(
                "is in {NEW_LEAF} but not in {NEW_LEAF}/{}/, the folder of base {:?}",
                base.record.name, base.record.name
            ),
        )
        .fix(format!(
            "move it into {NEW_LEAF}/{}/ (it then goes beside your other VMs), or out of {NEW_LEAF}, then adopt it",
            base.record.name
        )));
    }
    let name = req.name.map_or_else(|| default_name(bundle), str::to_string);
    validate_name(&name, "leaf", bundle)?;
    // Commands take a leaf by its name: two of one name would make `leafd reset NAME` reset
    // either. A leaf adopted in place keeps its place, wherever it is, not `<root>/<name>`.
    if let Some(other) = lib.leaves()?.into_iter().find(|l| same_name(&l.record.name, &name)) {
        return Err(Error::refused(
            bundle,
            format!(
                "a leaf named {name:?} exists already ({}): leaf names are what leafd's commands take",
                other.dir.display()
            ),
        )
        .fix("rename the VM's folder (or pass another name with --name), then adopt it"));
    }
    if !dropped {
        return Ok((name, bundle.to_path_buf()));
    }
    let target = lib.leaf_path(&name);
    if target.symlink_metadata().is_ok() {
        return Err(Error::refused(&target, "a VM with this name already exists")
            .fix("rename the VM's folder (or pass --name), then adopt it"));
    }
    Ok((name, target))
}

/// Refuses files of the bundle that are in the way of the deltas the leaf gets (left over from
/// snapshots deleted by hand, say).
fn refuse_in_the_way(bundle: &Path, disks: &[VmDisk], base: &[(DiskRecord, Disk)], entries: &[PathBuf]) -> Result<()> {
    for d in disks {
        let Some(i) = d.base else { continue };
        let base_disk = &base[i].1;
        let (delta, _) = delta_of(&d.rel);
        let stem = delta.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let (kind, count) = if base_disk.disk_type.is_split() {
            (disk::DiskType::SplitSparse, base_disk.extent_layout().len())
        } else {
            (disk::DiskType::MonolithicSparse, 1)
        };
        let names = std::iter::once(delta.clone())
            .chain(extent_names(&stem, kind, count).into_iter().map(|n| delta.with_file_name(n)));
        if let Some(taken) = names.map(|n| bundle.join(n)).find(|p| entries.contains(p)) {
            return Err(Error::refused(&taken, "is in the way of the delta the leaf's disk gets")
                .fix("move that file out of the VM bundle (it is none of the VM's disks), then adopt it again"));
        }
    }
    Ok(())
}

/// A disk's delta beside it, and the file name of its parent copy (which takes the disk's name).
fn delta_of(rel: &Path) -> (PathBuf, String) {
    let file = rel.file_name().and_then(|n| n.to_str()).unwrap_or("disk.vmdk").to_string();
    (rel.with_file_name(delta_name(&file)), file)
}

// ---------------------------------------------------------------------------------------------
// Staging: the leaf built beside where it will be, and read back before anything is moved.

/// BLAKE3 of the grains a delta holds, one per [`REGION`] of the virtual disk, each over the
/// grains' offsets and bytes in order: taken from the VM's disk while it is compared, and again
/// from the delta as read back. Memory grows with the capacity by 40 bytes a region.
#[derive(Default)]
struct RegionHashes {
    done: Vec<(u64, [u8; 32])>,
    current: Option<(u64, blake3::Hasher)>,
}

impl RegionHashes {
    fn add(&mut self, offset: u64, data: &[u8]) {
        let region = offset / REGION;
        if self.current.as_ref().is_some_and(|(r, _)| *r != region) {
            self.close();
        }
        let (_, h) = self.current.get_or_insert_with(|| (region, blake3::Hasher::new()));
        h.update(&offset.to_le_bytes());
        h.update(data);
    }

    fn close(&mut self) {
        if let Some((r, h)) = self.current.take() {
            self.done.push((r, *h.finalize().as_bytes()));
        }
    }

    fn finish(mut self) -> Vec<(u64, [u8; 32])> {
        self.close();
        self.done
    }
}

/// A matched disk as staged, relative to the bundle, with the hashes of what its delta holds.
struct Staged {
    node: String,
    base_node: String,
    parent_copy: PathBuf,
    delta: PathBuf,
    parent_cid: String,
    hashes: Vec<(u64, [u8; 32])>,
}

/// Builds the leaf in staging and reads it back. Returns how each disk fared.
fn stage(
    lib: &Library,
    plan: &Plan,
    places: &Places,
    vm: &Inspected,
    req: Request,
    opts: &Options,
) -> Result<Vec<DiskReport>> {
    journal::create_work_dir(&places.staging, &plan.id, "staging")?;
    let mut staged = Vec::new();
    let mut reports = Vec::new();
    let mut written = 0;
    let what = format!("comparing {} with base {}", vm.name, vm.base.record.name);
    let progress = Progress::start(lib, what, &vm.bundle, matched_capacity(vm));
    for d in &vm.disks {
        let matched = match d.base {
            Some(i) => {
                let (s, c) = stage_disk(places, vm, d, i, opts, &mut written)?;
                staged.push(s);
                let (record, _) = &vm.base_disks[i];
                Some((format!("{} {}", record.node, record.descriptor), c))
            }
            None => None,
        };
        reports.push(report_of(d, matched));
    }
    step(Step::Compared);
    refuse_little_shared(vm, &reports, req.force)?;
    link_files(vm, places)?;
    let mut v = vm.dict.clone();
    for s in &staged {
        v.set(&format!("{}.fileName", s.node), &s.delta.to_string_lossy());
    }
    if let Some(name) = req.name {
        v.set("displayName", name);
    }
    durable::write_new(&places.staging.join(&vm.vmx), &v.to_bytes())?;
    write_vmsd(vm, places, &staged)?;
    records::write_leaf(&places.staging, &leaf_record(plan, vm, &staged))?;
    keep_attributes(vm, places, &staged)?;
    if let Err(e) = durable::set_tag(&places.staging, Tag::LinkedClone, true) {
        tracing::debug!("cannot tag {}: {e}", places.staging.display());
    }
    progress.next(format!("checking the leaf made of {}", vm.name), written);
    read_back(places, &staged, opts)?;
    drop(progress);
    durable::flush_tree(&places.staging, Flush::Order)?;
    // Nothing may have written into the VM meanwhile (VMware started it?).
    if fsutil::tree_state(&vm.bundle)? != vm.state {
        return Err(Error::refused(&vm.bundle, "the VM changed while it was being adopted (was it started?)")
            .fix("shut the VM down in VMware, then adopt it again"));
    }
    step(Step::Staged);
    Ok(reports)
}

/// Writes a matched disk's parent copy and its delta: the grains of the VM's disk that differ
/// from the base disk's, hashed as they are read.
fn stage_disk(
    places: &Places,
    vm: &Inspected,
    d: &VmDisk,
    i: usize,
    opts: &Options,
    written: &mut u64,
) -> Result<(Staged, Compared)> {
    let (record, base_disk) = &vm.base_disks[i];
    let (delta_rel, copy_name) = delta_of(&d.rel);
    // The parent copy takes the name of the VM's disk, which is set aside with the VM.
    let copy_path = places.staging.join(&d.rel);
    if let Some(dir) = copy_path.parent() {
        durable::create_dir_all(dir)?;
    }
    let final_dir = places.target.join(&d.rel).parent().map_or_else(|| places.target.clone(), Path::to_path_buf);
    let copy = parent_copy(base_disk, &final_dir, opts.path_style)?;
    durable::write_new(&copy_path, &copy.to_bytes())?;
    let env = opts.env();
    let delta_path = places.staging.join(&delta_rel);
    create_delta_with_cid(&env, &delta_path, &copy_name, &copy, base_disk.disk_type, random_cid())?;
    let delta = Disk::open_alone(&env, &delta_path)?;
    let mut writer = DeltaWriter::new(&env, &delta)?;
    let mut hashes = RegionHashes::default();
    let mut next_check = *written + SPACE_CHECK_EVERY;
    let mut stopped = None;
    let compared = compare::compare(&env, &d.disk, base_disk, &delta.extent_sectors(), |g| {
        hashes.add(g.offset, g.data);
        writer.write(g)?;
        *written += g.data.len() as u64;
        if *written >= next_check {
            next_check = *written + SPACE_CHECK_EVERY;
            match free_space(&places.staging) {
                Ok(free) if free >= RESERVE => {}
                Ok(free) => stopped = Some(no_space(&vm.bundle, free, *written)),
                Err(e) => stopped = Some(e),
            }
            if stopped.is_some() {
                let message = "stopped".to_string();
                return Err(leafd_formats::Error {
                    kind: ErrorKind::Cancelled,
                    path: delta_path.clone(),
                    message,
                    fix: None,
                    source: None,
                });
            }
        }
        Ok(())
    });
    if let Some(e) = stopped {
        return Err(e);
    }
    let compared = compared?;
    writer.finish()?;
    let staged = Staged {
        node: d.node.clone(),
        base_node: record.node.clone(),
        parent_copy: d.rel.clone(),
        delta: delta_rel,
        parent_cid: cid_hex(copy.cid().map_err(|m| Error::format(&copy_path, m))?),
        hashes: hashes.finish(),
    };
    Ok((staged, compared))
}

/// Refuses a VM that shares too little of its data with the base for adopting it to be worth it
/// (a VM copied from another base, or changed all over), unless forced.
fn refuse_little_shared(vm: &Inspected, reports: &[DiskReport], force: bool) -> Result<()> {
    let data: u64 = reports.iter().map(|r| r.matched.as_ref().map_or(r.own, |(_, c)| c.data_bytes)).sum();
    let shared: u64 = reports.iter().filter_map(|r| r.matched.as_ref()).map(|(_, c)| c.shared_bytes).sum();
    if force || shared.saturating_mul(MIN_SHARE) >= data {
        return Ok(());
    }
    Err(Error::refused(
        &vm.bundle,
        format!(
            "shares only {}% of its {} of data with base {:?}: adopting would free only {}",
            shared.saturating_mul(100) / data.max(1),
            human_bytes(data),
            vm.base.record.name,
            human_bytes(shared)
        ),
    )
    .fix("adopt it as a leaf of the base it was copied from; to adopt it anyway, run `leafd adopt` with --force"))
}

/// Hard-links every file of the VM into staging but the matched disks' (set aside with the VM),
/// its `.vmx` and its `.vmsd` (written anew); folders and links are made again.
fn link_files(vm: &Inspected, places: &Places) -> Result<()> {
    let mut skip: Vec<PathBuf> = vm.disks.iter().filter(|d| d.base.is_some()).flat_map(|d| d.disk.files()).collect();
    skip.push(vm.bundle.join(&vm.vmx));
    skip.push(vm.bundle.join(Path::new(&vm.vmx).with_extension("vmsd")));
    for p in fsutil::walk(&vm.bundle)? {
        if skip.contains(&p) {
            continue;
        }
        let to = places.staging.join(p.strip_prefix(&vm.bundle).unwrap_or(&p));
        let meta = std::fs::symlink_metadata(&p).at(&p, "cannot stat")?;
        if meta.is_dir() {
            durable::create_dir_all(&to)?;
        } else if meta.file_type().is_symlink() {
            durable::symlink(&std::fs::read_link(&p).at(&p, "cannot read link")?, &to)?;
        } else {
            durable::hard_link(&p, &to)?;
        }
    }
    Ok(())
}

/// Gives what staging made anew the permissions of what it stands for in the VM (a private VM
/// stays private): the folders (the staging folder the bundle's), the `.vmx` and `.vmsd`, and
/// each matched disk's parent copy and delta files its descriptor's. The owner keeps reading and
/// writing them, as VMware and leafd need. The folders, the `.vmx` and `.vmsd` keep their
/// extended attributes too (Finder tags and comments), leafd's own aside.
fn keep_attributes(vm: &Inspected, places: &Places, staged: &[Staged]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Best effort, as a copy keeps them: a volume without them still gets the leaf.
    let keep_xattrs = |from: &Path, to: &Path| {
        for name in xattr::list(from).into_iter().flatten() {
            if let (Some(name), Ok(Some(v))) = (name.to_str(), xattr::get(from, &name))
                && !name.contains("org.leafd.")
            {
                let _ = durable::set_xattr(to, name, &v);
            }
        }
    };
    // Of what a link leads to (a link's own mode is 0777).
    let mode_of = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o7777).at(p, "cannot stat");
    for p in fsutil::walk(&vm.bundle)? {
        if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            let to = places.staging.join(p.strip_prefix(&vm.bundle).unwrap_or(&p));
            durable::set_mode(&to, mode_of(&p)? | 0o700)?;
            keep_xattrs(&p, &to);
        }
    }
    let vmx = vm.bundle.join(&vm.vmx);
    let vmx_mode = mode_of(&vmx)? | 0o600;
    durable::set_mode(&places.staging.join(&vm.vmx), vmx_mode)?;
    keep_xattrs(&vmx, &places.staging.join(&vm.vmx));
    let vmsd = Path::new(&vm.vmx).with_extension("vmsd");
    let vmsd_mode = mode_of(&vm.bundle.join(&vmsd)).map_or(vmx_mode, |m| m | 0o600);
    durable::set_mode(&places.staging.join(&vmsd), vmsd_mode)?;
    if vm.bundle.join(&vmsd).is_file() {
        keep_xattrs(&vm.bundle.join(&vmsd), &places.staging.join(&vmsd));
    }
    let env = leafd_formats::StdEnv::shared();
    for s in staged {
        let disk_mode = mode_of(&vm.bundle.join(&s.parent_copy))? | 0o600;
        let delta = Disk::open_alone(&env, &places.staging.join(&s.delta))?;
        for f in std::iter::once(places.staging.join(&s.parent_copy)).chain(delta.files()) {
            durable::set_mode(&f, disk_mode)?;
        }
    }
    keep_xattrs(&vm.bundle, &places.staging);
    durable::set_mode(&places.staging, mode_of(&vm.bundle)? | 0o700)
}

/// The `.vmsd` of the leaf: one snapshot, "Base", of the parent copies; the deltas its own.
fn write_vmsd(vm: &Inspected, places: &Places, staged: &[Staged]) -> Result<()> {
    let str_of = |p: &Path| p.to_string_lossy().into_owned();
    let vmsd = Path::new(&vm.vmx).with_extension("vmsd");
    let stem = vmsd.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let at_snapshot: Vec<(String, String)> = staged.iter().map(|s| (s.node.clone(), str_of(&s.parent_copy))).collect();
    let own: Vec<String> = staged.iter().map(|s| str_of(&s.delta)).collect();
    let d = vmx::leaf_vmsd(&Snapshot {
        leaf_name: &stem,
        disks: &at_snapshot,
        own_disks: &own,
        clone_of: &str_of(&vm.base.vmx_path()),
        created: SystemTime::now(),
    });
    durable::write_new(&places.staging.join(vmsd), &d.to_bytes())
}

fn leaf_record(plan: &Plan, vm: &Inspected, staged: &[Staged]) -> LeafRecord {
    let str_of = |p: &Path| p.to_string_lossy().into_owned();
    LeafRecord {
        format: records::FORMAT,
        id: plan.id.clone(),
        base_id: vm.base.record.id.clone(),
        base_name: vm.base.record.name.clone(),
        name: plan.leaf_ref.name.clone(),
        path: plan.leaf_ref.path.clone(),
        vmx: vm.vmx.clone(),
        created: plan.leaf_ref.created.clone(),
        snapshot: "native".into(),
        disks: staged
            .iter()
            .map(|s| LeafDisk {
                node: s.node.clone(),
                parent_copy: str_of(&s.parent_copy),
                delta: str_of(&s.delta),
                parent_cid: s.parent_cid.clone(),
                base_node: (s.base_node != s.node).then(|| s.base_node.clone()),
            })
            .collect(),
        adopted: true,
    }
}

/// Reads every new chain back from where it is staged (the same depth as its final place): it
/// leads to the base, and its delta holds exactly the grains that differed, as the VM's disk held
/// them. Every other grain the delta leaves to the base, which read the same as the VM's disk.
fn read_back(places: &Places, staged: &[Staged], opts: &Options) -> Result<()> {
    let env = opts.env();
    for s in staged {
        let path = places.staging.join(&s.delta);
        let chain = Disk::open(&env, &path)?;
        if chain.parent().map(disk_cid).transpose()?.as_deref() != Some(s.parent_cid.as_str()) {
            return Err(Error::format(&path, "the new delta does not lead to the base"));
        }
        let mut hashes = RegionHashes::default();
        Disk::open_alone(&env, &path)?.stored_grains(|offset, data| {
            hashes.add(offset, data);
            meter::add(data.len() as u64);
            Ok(())
        })?;
        if hashes.finish() != s.hashes {
            return Err(Error::new(Kind::Io, path, "the new delta does not read back as the VM's disk read")
                .fix("nothing was changed; check the volume for errors, and report this to leafd's authors"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The swap, and after it.

/// The two renames: the VM aside (stamped first, so recovery knows it), the leaf in its place.
/// Idempotent.
fn swap(plan: &Plan, places: &Places) -> Result<()> {
    if places.staging.exists() && places.source.exists() && !places.aside.exists() {
        journal::stamp(&places.source, &plan.id, "adopt")?;
        durable::rename_noreplace(&places.source, &places.aside)?;
    }
    step(Step::SetAside);
    if places.staging.exists() {
        // Never over something that took the VM's place meanwhile: the journal stays.
        durable::rename_noreplace(&places.staging, &places.target).map_err(|e| {
            e.fix(format!(
                "the leaf waits in {} and the VM in {}; move what is at {} away, then run `leafd recover`",
                places.staging.display(),
                places.aside.display(),
                places.target.display()
            ))
        })?;
    }
    step(Step::Swapped);
    Ok(())
}

/// After the swap: the base lists the leaf, and the VM set aside (its original disks) goes.
/// Idempotent. The caller holds the base's lock. Returns how long the removal took.
fn finish(ctx: &Ctx, plan: &Plan, places: &Places) -> Result<Duration> {
    if !published(plan, places) {
        return Err(Error::new(Kind::Io, places.aside.clone(), "kept: the leaf is not in the VM's place").fix(
            format!("check {} and {}, then run `leafd recover`", places.target.display(), places.staging.display()),
        ));
    }
    // The leaf reads through the base: without it, the set-aside VM is the only whole copy of the
    // VM's data, and is kept (recovery puts it back while the leaf is untouched).
    if !base_present(ctx, plan) {
        return Err(Error::refused(
            &ctx.path(&plan.base)?,
            "the base of the adopted leaf is missing (moved or deleted): the VM's original disks are kept",
        )
        .fix(format!(
            "put the base back where it was, then run `leafd recover`; the VM waits whole in {}",
            places.aside.display()
        )));
    }
    records::link_leaf(&ctx.path(&plan.base)?, &plan.leaf_ref)?;
    journal::unstamp(&places.target, &plan.id)?;
    step(Step::Linked);
    let start = Instant::now();
    journal::remove_work_dir(ctx, &places.aside)?;
    step(Step::Cleaned);
    Ok(start.elapsed())
}

/// Whether the base is where the plan says, as it was (its record's id).
fn base_present(ctx: &Ctx, plan: &Plan) -> bool {
    let record = ctx.path(&plan.base).ok().and_then(|dir| records::read_base(&dir).ok().flatten());
    record.is_some_and(|r| r.id == plan.base_id)
}

/// Puts the set-aside VM back in its place, after the commit point, while nothing of it was
/// removed yet (the leaf in its place still carries this operation's stamp, which goes just
/// before the removal, or the leaf was never put there). Idempotent.
fn roll_back(ctx: &Ctx, plan: &Plan, places: &Places) -> Result<()> {
    if published(plan, places) {
        durable::rename_noreplace(&places.target, &places.staging)?;
    }
    if places.aside.symlink_metadata().is_ok() {
        if let Some(dir) = places.source.parent() {
            durable::create_dir_all(dir)?;
        }
        durable::rename_noreplace(&places.aside, &places.source)?;
    }
    undo(ctx, places, plan)
}

/// Whether the leaf is in its place (the second rename happened).
fn published(plan: &Plan, places: &Places) -> bool {
    matches!(records::read_leaf(&places.target), Ok(Some(r)) if r.id == plan.id)
}

/// Finishes or undoes an interrupted adoption. Once the VM was set aside the leaf (complete by
/// then) takes its place; before that the staging is dropped and the VM is as it was.
pub(crate) fn recover(ctx: &Ctx, plan: &Plan) -> Result<String> {
    let _lock = ctx.lib.lock_base(&plan.base_id)?;
    let places = Places::of(ctx, plan)?;
    let shown = places.source.display();
    if places.aside.symlink_metadata().is_ok() {
        // The VM is stamped before it is set aside: a folder of that name without this
        // operation's stamp is not its VM, and is never acted on.
        if !journal::ours(ctx, &places.aside) {
            return Err(Error::refused(
                &places.aside,
                "is not the VM this adoption set aside (its stamp is missing or another's), so it is kept",
            )
            .fix(format!("look inside it; then `leafd recover --discard {}`", ctx.id)));
        }
        // The base gone since: the VM goes back as it was, while nothing of it was removed.
        let untouched = places.staging.symlink_metadata().is_ok()
            || (published(plan, &places) && journal::stamped(&places.target, &plan.id));
        if untouched && !base_present(ctx, plan) {
            roll_back(ctx, plan, &places)?;
            return Ok(format!(
                "undid the interrupted adoption of {shown}: its base is missing, and the VM is as it was"
            ));
        }
        swap(plan, &places)?;
        finish(ctx, plan, &places)?;
        return Ok(format!("finished the interrupted adoption of {shown}"));
    }
    if places.staging.symlink_metadata().is_ok() {
        undo(ctx, &places, plan)?;
        return Ok(format!("undid the interrupted adoption of {shown}; the VM is as it was"));
    }
    if published(plan, &places) {
        finish(ctx, plan, &places)?;
        return Ok(format!("finished the interrupted adoption of {shown}"));
    }
    journal::unstamp(&places.source, &plan.id)?;
    Ok(format!("the interrupted adoption of {shown} had not started; the VM is as it was"))
}
