//! `leafd verify`: every base and leaf checked against the disk chain, the ground truth.
//!
//! Problems are reported one per line with what to do. Lineage records that are missing (a copy
//! through a file system without extended attributes, say) are rebuilt from the chain and
//! reported as repairs; nothing else is ever changed, and no disk is opened for writing.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use leafd_formats::ErrorKind;
use leafd_formats::descriptor::NO_PARENT;
use leafd_formats::dict::Dict;
use leafd_formats::disk::{Disk, read_descriptor, resolve};
use leafd_formats::vmx;
use serde::Serialize;

use super::make_base::{flattened_name, read_small};
use super::{BASE_VMX_SUFFIX, BUNDLE_EXT, Base, Leaf, Library, Options, journal};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::lineage::{self, BaseRecord, DiskRecord, ExtentRecord, LeafDisk, LeafRecord, LeafRef};
use crate::platform;

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub path: String,
    pub what: String,
    pub fix: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub bases: usize,
    pub leaves: usize,
    pub problems: Vec<Finding>,
    pub repaired: Vec<Finding>,
}

impl Report {
    fn problem(&mut self, path: &Path, what: impl Into<String>, fix: impl Into<String>) {
        self.problems.push(Finding { path: path.display().to_string(), what: what.into(), fix: fix.into() });
    }

    fn repaired(&mut self, path: &Path, what: impl Into<String>) {
        self.repaired.push(Finding { path: path.display().to_string(), what: what.into(), fix: String::new() });
    }

    fn error(&mut self, e: &Error) {
        let fix = e.fix.clone().unwrap_or_else(|| "restore the file from a backup".into());
        self.problems.push(Finding {
            path: e.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            what: e.message.clone(),
            fix,
        });
    }

    /// The report for a person: one line per problem and repair.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.repaired {
            out.push_str(&format!("repaired: {}: {}\n", r.path, r.what));
        }
        for p in &self.problems {
            out.push_str(&format!("PROBLEM: {}: {}\n  fix: {}\n", p.path, p.what, p.fix));
        }
        out.push_str(&format!(
            "{} base{}, {} lea{} checked: {}\n",
            self.bases,
            if self.bases == 1 { "" } else { "s" },
            self.leaves,
            if self.leaves == 1 { "f" } else { "ves" },
            match self.problems.len() {
                0 => "all good".to_string(),
                1 => "1 problem".to_string(),
                n => format!("{n} problems"),
            }
        ));
        out
    }
}

/// Canonical paths of a disk's extent files (for matching a leaf's parent copy to its base).
pub fn extent_keys(disk: &Disk) -> Vec<PathBuf> {
    disk.extent_files().iter().map(|f| f.canonicalize().unwrap_or_else(|_| f.clone())).collect()
}

/// Verifies the library, or only the bases and leaves `names` (empty: everything).
pub fn verify(lib: &Library, names: &[String], deep: bool, opts: &Options) -> Result<Report> {
    let mut report = Report::default();
    let pending = journal::pending(lib);
    if pending > 0 {
        report.problem(
            &lib.journal_dir(),
            format!("{pending} interrupted operation(s) not yet finished or undone"),
            "run `leafd recover` (or start the agent)",
        );
    }
    // Bases first (a base that lost its record takes its id from its leaves), then leaves that
    // lost theirs (they need the bases to know what they lead to).
    let mut leaves = lib.leaves()?;
    let bases = bases_with_records(lib, &leaves, &mut report)?;
    adopt_unrecorded_leaves(lib, &bases, &mut leaves, &mut report)?;
    let wanted = |name: &str| names.is_empty() || names.iter().any(|n| super::same_name(n, name));
    for base in bases.iter().filter(|b| {
        wanted(&b.record.name) || leaves.iter().any(|l| l.record.base_id == b.record.id && wanted(&l.record.name))
    }) {
        report.bases += 1;
        check_base(lib, base, deep, opts, &mut report)?;
        check_refs(lib, base, &leaves, &mut report)?;
    }
    for leaf in leaves.iter().filter(|l| wanted(&l.record.name) || wanted(&l.record.base_name)) {
        report.leaves += 1;
        check_leaf(leaf, &bases, &mut report);
    }
    for n in names {
        if !bases.iter().any(|b| super::same_name(&b.record.name, n))
            && !leaves.iter().any(|l| super::same_name(&l.record.name, n))
        {
            report.problem(
                lib.root(),
                format!("there is no base or leaf named {n:?}"),
                "check the name with `leafd status`",
            );
        }
    }
    Ok(report)
}

/// Base stores, rebuilding the record of any that lost it.
fn bases_with_records(lib: &Library, leaves: &[Leaf], report: &mut Report) -> Result<Vec<Base>> {
    let mut bases = lib.bases()?;
    let Ok(rd) = fs::read_dir(lib.bases_dir()) else { return Ok(bases) };
    for e in rd.filter_map(|e| e.ok()) {
        let dir = e.path();
        let hidden = dir.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
        if hidden || !dir.is_dir() || bases.iter().any(|b| b.dir == dir) {
            continue;
        }
        match rebuild_base(&dir, leaves) {
            Ok(base) => {
                report.repaired(&dir, "base lineage was missing; rebuilt from its disks");
                bases.push(base);
            }
            Err(e) => report.problem(
                &dir,
                format!("not a base leafd can read: {}", e.message),
                "put back the base's files, or move this folder out of Bases",
            ),
        }
    }
    Ok(bases)
}

/// Rebuilds a base's records from its `.vmx.base` and disks. Its id is the one its leaves
/// remember, so they stay linked.
fn rebuild_base(dir: &Path, leaves: &[Leaf]) -> Result<Base> {
    let env = Options::default().env();
    let vmx_name = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, "cannot list", e))?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .find(|n| n.ends_with(&format!(".vmx{BASE_VMX_SUFFIX}")))
        .ok_or_else(|| Error::format(dir, "no .vmx.base"))?;
    let vmx_path = dir.join(&vmx_name);
    let dict = Dict::parse(&read_small(&vmx_path)?).map_err(|m| Error::format(&vmx_path, m))?;
    let mut disks = Vec::new();
    let mut id = None;
    for entry in vmx::disks(&dict) {
        let mut path = resolve(dir, &entry.file_name);
        // The .vmx of a base made from a snapshot chain still names the chain (it is kept as it
        // was); the base's disk is the flattened one beside it.
        if read_descriptor(&env, &path).is_ok_and(|(d, _)| d.parent_cid().is_ok_and(|p| p != NO_PARENT)) {
            path = flattened_name(&path);
        }
        let disk = Disk::open(&env, &path)?;
        let keys = extent_keys(&disk);
        // A leaf whose parent copy reaches these very extents names the base's id.
        for l in leaves {
            for d in &l.record.disks {
                if Disk::open_alone(&env, &l.dir.join(&d.parent_copy)).is_ok_and(|c| extent_keys(&c) == keys) {
                    id.get_or_insert_with(|| l.record.base_id.clone());
                }
            }
        }
        let rel = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().into_owned();
        disks.push((entry.node, rel, disk));
    }
    let id = id.unwrap_or_else(lineage::new_id);
    let record = BaseRecord {
        id: id.clone(),
        name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        source: String::new(),
        created: lineage::now(),
        vmx: vmx_name,
        disks: disks
            .iter()
            .map(|(node, rel, d)| DiskRecord {
                node: node.clone(),
                descriptor: rel.clone(),
                cid: format!("{:08x}", d.descriptor.cid().unwrap_or(0)),
                capacity: d.capacity(),
                create_type: d.descriptor.create_type().to_string(),
                extents: d.extent_files().len(),
                fingerprint: None,
            })
            .collect(),
    };
    for (_, rel, d) in &disks {
        for (index, (sectors, file)) in d.extent_layout().into_iter().enumerate() {
            let Some(file) = file else { continue };
            let size = fs::metadata(&file).map_err(|e| Error::io(&file, "cannot stat", e))?.len();
            let file_rel = file.strip_prefix(dir).unwrap_or(&file).to_string_lossy().into_owned();
            let rec = ExtentRecord { base: id.clone(), disk: rel.clone(), index, file: file_rel, sectors, size };
            with_write_access(&file, || lineage::write(&file, lineage::EXTENT, &rec))?;
        }
    }
    lineage::write(dir, lineage::BASE, &record)?;
    Ok(Base { dir: dir.to_path_buf(), record })
}

/// Runs `f` on a protected base file with its protection lifted for the moment (writing an
/// extended attribute needs write access), then puts the protection back.
fn with_write_access(path: &Path, f: impl FnOnce() -> Result<()>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).map_err(|e| Error::io(path, "cannot stat", e))?.permissions().mode();
    let was_protected = platform::is_protected(path).unwrap_or(false);
    platform::unprotect(path, mode | 0o200).map_err(|e| Error::io(path, "cannot unlock to record lineage", e))?;
    let result = f();
    let restore = if was_protected { platform::protect(path) } else { platform::unprotect(path, mode) };
    restore.map_err(|e| Error::io(path, "cannot restore protection", e))?;
    result
}

fn check_base(lib: &Library, base: &Base, deep: bool, opts: &Options, report: &mut Report) -> Result<()> {
    let mut record = base.record.clone();
    let mut changed = false;
    for d in &mut record.disks {
        let path = base.descriptor_path(d);
        let disk = match Disk::open(&opts.env(), &path) {
            Ok(disk) => disk,
            Err(e) => {
                report.error(&e.into());
                continue;
            }
        };
        let cid = format!("{:08x}", disk.descriptor.cid().unwrap_or(0));
        if cid != d.cid {
            report.problem(
                &path,
                format!("the base disk changed since the base was made (CID {cid}, recorded {}): it was opened for writing, perhaps booted", d.cid),
                "every leaf of this base now fails with VMware error 18; restore the base's disk files from a backup",
            );
        }
        if disk.capacity() != d.capacity {
            report.problem(
                &path,
                format!("capacity is {} sectors, recorded {}", disk.capacity(), d.capacity),
                "restore the base's disk files from a backup",
            );
        }
        let files = disk.files();
        for f in &files {
            if !platform::is_protected(f).unwrap_or(false) {
                report.problem(
                    f,
                    "the base disk file is not write-protected",
                    format!("protect it again: {}", platform::protect_command(f)),
                );
            }
        }
        // Damaged extent records: their recorded size is lost, so they are rebuilt only once the
        // content is shown intact (`--deep`, fingerprint matching).
        let mut damaged = Vec::new();
        // A fingerprint is recorded only from content whose sizes check out.
        let mut suspect = false;
        for (index, (sectors, file)) in disk.extent_layout().into_iter().enumerate() {
            let Some(file) = file else { continue };
            let size = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            let file_rel = file.strip_prefix(&base.dir).unwrap_or(&file).to_string_lossy().into_owned();
            let rebuilt = ExtentRecord {
                base: record.id.clone(),
                disk: d.descriptor.clone(),
                index,
                file: file_rel,
                sectors,
                size,
            };
            match lineage::read::<ExtentRecord>(&file, lineage::EXTENT) {
                Ok(Some(r)) if r.size != size => {
                    suspect = true;
                    report.problem(
                        &file,
                        format!("extent is {size} bytes, {} when the base was made: truncated or changed", r.size),
                        "restore the base's disk files from a backup",
                    )
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    with_write_access(&file, || lineage::write(&file, lineage::EXTENT, &rebuilt))?;
                    report.repaired(&file, "extent lineage was missing; rebuilt (its size is taken as it is now)");
                }
                Err(_) => damaged.push((file, rebuilt)),
            }
        }
        let mut intact = false;
        if deep {
            if let Err(e) = disk.check_extents() {
                report.error(&e.into());
            }
            let now = fsutil::fingerprint(&disk.extent_files(), &opts.cancel)?;
            match &d.fingerprint {
                Some(f) if *f != now => report.problem(
                    &path,
                    "the base's content changed since it was made (fingerprint differs)",
                    "restore the base's disk files from a backup",
                ),
                Some(_) => intact = true,
                None if suspect || !damaged.is_empty() => report.problem(
                    &path,
                    "the base has no content fingerprint, and its extents cannot be checked against their records",
                    "restore the base's disk files from a backup, or make the base again from the original VM",
                ),
                None => {
                    d.fingerprint = Some(now);
                    changed = true;
                    report.repaired(&path, "fingerprint recorded");
                }
            }
        }
        for (file, rebuilt) in damaged {
            if intact {
                with_write_access(&file, || lineage::write(&file, lineage::EXTENT, &rebuilt))?;
                report.repaired(&file, "extent lineage was damaged; rebuilt (the content matches its fingerprint)");
            } else {
                report.problem(
                    &file,
                    "the extent's lineage record is damaged, so its size cannot be checked",
                    "run `leafd verify --deep`: if the content matches its fingerprint, the record is rebuilt",
                );
            }
        }
    }
    check_base_vmx(base, report);
    if changed {
        let _lock = lib.lock_base(&base.record.id)?;
        lineage::write(&base.dir, lineage::BASE, &record)?;
    }
    Ok(())
}

/// The base keeps its `.vmx` under a name VMware does not open by double-click: a plain `.vmx`
/// beside it could be booted, which changes the base's CID and breaks every leaf.
fn check_base_vmx(base: &Base, report: &mut Report) {
    let vmx = base.vmx_path();
    if let Some(bootable) = base.record.vmx.strip_suffix(BASE_VMX_SUFFIX).map(|v| base.dir.join(v))
        && bootable.symlink_metadata().is_ok()
    {
        report.problem(
            &bootable,
            "the base can be booted: its configuration is here under a name VMware opens",
            format!(
                "never boot a base; move it back: mv '{}' '{}' (if that name is free)",
                bootable.display(),
                vmx.display()
            ),
        );
    }
    if vmx.symlink_metadata().is_err() {
        report.problem(&vmx, "the base's configuration is missing", "restore it from a backup: new leaves need it");
    }
}

/// Every leaf the base lists must exist; leaves of the base it does not list are added.
fn check_refs(lib: &Library, base: &Base, leaves: &[Leaf], report: &mut Report) -> Result<()> {
    let _lock = lib.lock_base(&base.record.id)?;
    // Markers whose record was lost (copied without extended attributes) say nothing: the leaves
    // found in the library are listed again below.
    for e in fs::read_dir(base.leaves_dir()).into_iter().flatten().filter_map(|e| e.ok()) {
        let marker = e.path();
        if marker.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            continue;
        }
        if !matches!(lineage::read::<LeafRef>(&marker, lineage::LEAF_REF), Ok(Some(_))) {
            fs::remove_file(&marker).map_err(|e| Error::io(&marker, "cannot remove", e))?;
            report.repaired(&marker, "removed a leaf marker that had lost its record");
        }
    }
    let refs = base.leaf_refs()?;
    for r in &refs {
        if !leaves.iter().any(|l| l.record.id == r.id) && !Path::new(&r.path).is_dir() {
            let marker = base.leaves_dir().join(&r.id);
            report.problem(
                Path::new(&r.path),
                format!(
                    "leaf {:?} of base {:?} is missing (moved out of the library, or deleted)",
                    r.name, base.record.name
                ),
                format!(
                    "if it moved, run `leafd relink NEW_PATH`; if it was deleted, forget it: rm '{}'",
                    marker.display()
                ),
            );
        }
    }
    for l in leaves.iter().filter(|l| l.record.base_id == base.record.id && !refs.iter().any(|r| r.id == l.record.id)) {
        link_to_base(base, l)?;
        report.repaired(&l.dir, format!("base {:?} did not list this leaf; added", base.record.name));
    }
    Ok(())
}

/// Records `leaf` in its base's list (the caller holds the base's lock).
pub fn link_to_base(base: &Base, leaf: &Leaf) -> Result<()> {
    let r = LeafRef {
        id: leaf.record.id.clone(),
        name: leaf.record.name.clone(),
        path: leaf.dir.to_string_lossy().into(),
        created: leaf.record.created.clone(),
    };
    super::link_leaf(&base.dir, &r)
}

/// Whether the chain of disk `top` goes through the file `delta`: a snapshot the user took in
/// VMware since the leaf was made puts the disk on a newer delta over the leaf's.
fn leads_to(top: &Path, delta: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let Some(target) = id(delta) else { return false };
    let Ok(chain) = Disk::open(&Options::default().env(), top) else { return false };
    let mut disk = Some(&chain);
    while let Some(d) = disk {
        if id(d.path()) == Some(target) {
            return true;
        }
        disk = d.parent();
    }
    false
}

fn check_leaf(leaf: &Leaf, bases: &[Base], report: &mut Report) {
    let env = Options::default().env();
    let Some(base) = bases.iter().find(|b| b.record.id == leaf.record.base_id) else {
        report.problem(
            &leaf.dir,
            format!("its base {:?} is not in the library", leaf.record.base_name),
            "put the base back in Bases, or if it moved to another library run `leafd --root OTHER relink` on this leaf",
        );
        return;
    };
    let vmx_path = leaf.dir.join(format!("{}.vmx", leaf.record.name));
    let vmx = read_small(&vmx_path).and_then(|b| Dict::parse(&b).map_err(|m| Error::format(&vmx_path, m)));
    for d in &leaf.record.disks {
        let delta = leaf.dir.join(&d.delta);
        match &vmx {
            Ok(v) => {
                let now = v.get(&format!("{}.fileName", d.node)).unwrap_or_default();
                if now != d.delta && !leads_to(&resolve(&leaf.dir, now), &delta) {
                    report.problem(
                        &vmx_path,
                        format!("disk {} no longer points at its delta {}", d.node, d.delta),
                        "if the snapshot \"Base\" was deleted in VMware, the leaf may have been merged; restore it from a backup",
                    );
                }
            }
            Err(e) => report.error(e),
        }
        let chain = match Disk::open(&env, &delta) {
            Ok(c) => c,
            Err(e) => {
                // A file the delta leads to is missing (without an OS error: not the delta itself).
                let fix = if e.kind == ErrorKind::Missing && e.source.is_none() {
                    "if the leaf or its base moved, run `leafd relink` on the leaf".to_string()
                } else {
                    e.fix.clone().unwrap_or_else(|| "restore the leaf from a backup".into())
                };
                report.problem(&e.path, e.message.clone(), fix);
                continue;
            }
        };
        let Some(copy) = chain.parent() else {
            report.problem(
                &delta,
                "the delta has no parent: it is not a linked clone any more",
                "restore the leaf from a backup",
            );
            continue;
        };
        let Some(base_disk) = base.record.disks.iter().find(|b| b.node == d.node) else {
            report.problem(
                &delta,
                format!("base {:?} has no disk {}", base.record.name, d.node),
                "run `leafd relink` on the leaf",
            );
            continue;
        };
        let copy_cid = format!("{:08x}", copy.descriptor.cid().unwrap_or(0));
        if copy_cid != base_disk.cid {
            report.problem(
                copy.path(),
                format!("the parent copy's CID {copy_cid} differs from base {:?} ({})", base.record.name, base_disk.cid),
                "the leaf fails with VMware error 18; restore the leaf's parent copy from a backup or run `leafd relink`",
            );
        }
        match Disk::open(&env, &base.descriptor_path(base_disk)) {
            Ok(b) if extent_keys(&b) != extent_keys(copy) => report.problem(
                copy.path(),
                format!("the parent copy does not reach base {:?}'s extents", base.record.name),
                "run `leafd relink` on the leaf",
            ),
            _ => {}
        }
    }
}

/// Leaf bundles in the root without a record (copied without extended attributes) whose disks
/// lead into a base: their records are rebuilt from the chain.
fn adopt_unrecorded_leaves(lib: &Library, bases: &[Base], leaves: &mut Vec<Leaf>, report: &mut Report) -> Result<()> {
    let Ok(rd) = fs::read_dir(lib.root()) else { return Ok(()) };
    for e in rd.filter_map(|e| e.ok()) {
        let dir = e.path();
        if dir.extension().is_none_or(|x| x != BUNDLE_EXT) || !dir.is_dir() || leaves.iter().any(|l| l.dir == dir) {
            continue;
        }
        if let Some(record) = rebuild_leaf(&dir, bases) {
            lineage::write(&dir, lineage::LEAF, &record)?;
            report.repaired(&dir, "leaf lineage was missing; rebuilt from its disk chain");
            leaves.push(Leaf { dir, record });
        }
    }
    Ok(())
}

/// A leaf record from the chain: the VM's disks must be deltas over copies of a base's disks.
fn rebuild_leaf(dir: &Path, bases: &[Base]) -> Option<LeafRecord> {
    let env = Options::default().env();
    let name = dir.file_stem()?.to_string_lossy().into_owned();
    let vmx = Dict::parse(&read_small(&dir.join(format!("{name}.vmx"))).ok()?).ok()?;
    let mut by_extents: HashMap<Vec<PathBuf>, (&Base, &DiskRecord)> = HashMap::new();
    for b in bases {
        for d in &b.record.disks {
            if let Ok(disk) = Disk::open_alone(&env, &b.descriptor_path(d)) {
                by_extents.insert(extent_keys(&disk), (b, d));
            }
        }
    }
    let mut base = None;
    let mut disks = Vec::new();
    for entry in vmx::disks(&vmx) {
        let chain = Disk::open(&env, &resolve(dir, &entry.file_name)).ok()?;
        let copy = chain.parent()?;
        let (b, _) = by_extents.get(&extent_keys(copy))?;
        if base.is_some_and(|x: &Base| x.record.id != b.record.id) {
            return None;
        }
        base = Some(*b);
        disks.push(LeafDisk {
            node: entry.node,
            parent_copy: copy.path().strip_prefix(dir).ok()?.to_string_lossy().into_owned(),
            delta: entry.file_name,
            parent_cid: format!("{:08x}", copy.descriptor.cid().ok()?),
        });
    }
    let base = base?;
    // The base may still list this leaf: keep the id it knows.
    let known = base.leaf_refs().ok()?.into_iter().find(|r| Path::new(&r.path) == dir);
    Some(LeafRecord {
        id: known.as_ref().map_or_else(lineage::new_id, |r| r.id.clone()),
        base_id: base.record.id.clone(),
        base_name: base.record.name.clone(),
        name,
        path: dir.to_string_lossy().into(),
        created: known.map_or_else(lineage::now, |r| r.created),
        snapshot: "native".into(),
        disks,
    })
}
