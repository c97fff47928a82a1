//! `leafd verify`: every base and leaf checked against the disk chain, the ground truth.
//!
//! Problems are reported one per line with what to do. Records that are missing or damaged are
//! rebuilt from the chain and reported as repairs. Nothing else is ever changed: no disk is
//! opened for writing, no protected file is touched (records live beside the disks, not on
//! them), and no entry of a base's list of leaves is ever deleted here.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use leafd_formats::Env;
use leafd_formats::descriptor::NO_PARENT;
use leafd_formats::disk::{self, Disk, read_descriptor, resolve};
use leafd_formats::{ErrorKind, vmx};
use serde::Serialize;

use super::common::{cid_hex, disk_cid, extent_keys, flattened_name, read_dict};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::library::records::{self, BaseRecord, DiskRecord, ExtentRecord, LeafDisk, LeafRecord, Listed};
use crate::library::{BASE_VMX_SUFFIX, Base, Leaf, Library, Options, journal, same_name};
use crate::platform;
use crate::progress::Progress;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Finding {
    pub(crate) path: String,
    pub(crate) what: String,
    pub(crate) fix: String,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    pub(crate) bases: usize,
    pub(crate) leaves: usize,
    pub(crate) problems: Vec<Finding>,
    pub(crate) repaired: Vec<Finding>,
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
    pub(crate) fn render(&self) -> String {
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

/// Verifies the library, or only the bases and leaves `names` (empty: everything).
pub(crate) fn verify(lib: &Library, names: &[String], deep: bool, opts: &Options) -> Result<Report> {
    let mut report = Report::default();
    let pending = journal::pending(lib);
    if pending > 0 {
        report.problem(
            &lib.journal_dir(),
            format!("{pending} interrupted operation(s) not yet finished or undone"),
            "run `leafd recover` (or start the agent); `leafd recover --list` shows them",
        );
    }
    // Bases first (a base that lost its record takes its id from its leaves), then leaves that
    // lost theirs (they need the bases to know what they lead to).
    let env = opts.env();
    let mut leaves = lib.leaves()?;
    let bases = bases_with_records(lib, &env, &leaves, &mut report)?;
    let stale = drop_copied_mirrors(&mut leaves);
    adopt_unrecorded_leaves(lib, &env, &bases, &mut leaves, &mut report)?;
    for (dir, of) in stale {
        if leaves.iter().any(|l| l.dir == dir) {
            report.repaired(
                &dir,
                format!("its record was removed, and the copy of it left on the folder is the record of {}: rebuilt from its disk chain with an id of its own", of.display()),
            );
        }
    }
    same_ids(&bases, &leaves, &mut report);
    let wanted = |name: &str| names.is_empty() || names.iter().any(|n| same_name(n, name));
    for base in bases.iter().filter(|b| {
        wanted(&b.record.name) || leaves.iter().any(|l| l.record.base_id == b.record.id && wanted(&l.record.name))
    }) {
        report.bases += 1;
        check_base(lib, &env, base, deep, opts, &mut report)?;
        check_refs(lib, base, &leaves, &mut report)?;
    }
    for leaf in leaves.iter().filter(|l| wanted(&l.record.name) || wanted(&l.record.base_name)) {
        report.leaves += 1;
        check_leaf(&env, leaf, &bases, &mut report);
    }
    for n in names {
        if !bases.iter().any(|b| same_name(&b.record.name, n)) && !leaves.iter().any(|l| same_name(&l.record.name, n)) {
            report.problem(
                lib.root(),
                format!("there is no base or leaf named {n:?}"),
                "check the name with `leafd status`",
            );
        }
    }
    Ok(report)
}

/// Base stores, rebuilding the record of any that lost it or whose record is damaged.
fn bases_with_records(lib: &Library, env: &Arc<dyn Env>, leaves: &[Leaf], report: &mut Report) -> Result<Vec<Base>> {
    let mut bases = Vec::new();
    for (dir, record) in lib.stores()? {
        let why = match record {
            Ok(Some(record)) => {
                bases.push(Base { dir, record });
                continue;
            }
            Ok(None) => "base lineage was missing; rebuilt from its disks",
            Err(_) => {
                if let Some(record) = records::read_base_mirror(&dir) {
                    records::write_base(&dir, &record)?;
                    report.repaired(&dir, "the base record was damaged; restored from its mirror");
                    bases.push(Base { dir, record });
                    continue;
                }
                "base lineage was damaged; rebuilt from its disks (extent sizes taken as they are now)"
            }
        };
        match rebuild_base(env, &dir, leaves) {
            Ok(base) => {
                report.repaired(&dir, why);
                bases.push(base);
            }
            Err(e) => report.problem(
                &dir,
                format!("not a base leafd can read: {}", e.message),
                "put back the base's files, or move this folder out of Bases",
            ),
        }
    }
    bases.sort_by(|a, b| a.record.name.cmp(&b.record.name));
    Ok(bases)
}

/// Rebuilds a base's record from its `.vmx.base` and disks. Its id is the one its leaves
/// remember, so they stay linked.
fn rebuild_base(env: &Arc<dyn Env>, dir: &Path, leaves: &[Leaf]) -> Result<Base> {
    let vmx_name = fsutil::entries(dir)?
        .into_iter()
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .find(|n| n.ends_with(&format!(".vmx{BASE_VMX_SUFFIX}")))
        .ok_or_else(|| Error::format(dir, "no .vmx.base"))?;
    let dict = read_dict(&dir.join(&vmx_name))?;
    let mut disks = Vec::new();
    let mut id = None;
    for entry in vmx::disks(&dict) {
        // Found as Make Base found it: through the .vmx's code page and Windows separators.
        let mut path =
            disk::find(env, dir, &dict.name(&entry.file_name)).unwrap_or_else(|| resolve(dir, &entry.file_name));
        // The .vmx of a base made from a snapshot chain still names the chain (it is kept as it
        // was); the base's disk is the flattened one beside it.
        if read_descriptor(env, &path).is_ok_and(|(d, _)| d.parent_cid().is_ok_and(|p| p != NO_PARENT)) {
            path = flattened_name(&path);
        }
        let disk = Disk::open(env, &path)?;
        let keys = extent_keys(&disk);
        // A leaf whose parent copy reaches these very extents names the base's id.
        for l in leaves {
            for d in &l.record.disks {
                if Disk::open_alone(env, &l.dir.join(&d.parent_copy)).is_ok_and(|c| extent_keys(&c) == keys) {
                    id.get_or_insert_with(|| l.record.base_id.clone());
                }
            }
        }
        let rel = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().into_owned();
        disks.push(DiskRecord {
            node: entry.node,
            descriptor: rel,
            cid: disk_cid(&disk)?,
            capacity: disk.capacity(),
            create_type: disk.descriptor.create_type().to_string(),
            extents: extents_now(dir, &disk)?,
            fingerprint: None,
        });
    }
    let record = BaseRecord {
        format: records::FORMAT,
        id: id.unwrap_or_else(records::new_id),
        name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        source: String::new(),
        created: records::now(),
        vmx: vmx_name,
        disks,
    };
    records::write_base(dir, &record)?;
    Ok(Base { dir: dir.to_path_buf(), record })
}

/// A disk's extents as they are now, relative to `dir`.
fn extents_now(dir: &Path, disk: &Disk) -> Result<Vec<ExtentRecord>> {
    let mut out = Vec::new();
    for (index, (sectors, file)) in disk.extent_layout().into_iter().enumerate() {
        let Some(file) = file else { continue };
        let size = fs::metadata(&file).map_err(|e| Error::io(&file, "cannot stat", e))?.len();
        let rel = file.strip_prefix(dir).unwrap_or(&file).to_path_buf();
        out.push(ExtentRecord { index, file: rel, sectors, size });
    }
    Ok(out)
}

/// Leaves read from the mirror alone (their record file is gone) whose id is that of another
/// leaf that has its file: a copy of that leaf whose record was removed (as `verify` says to),
/// the mirror being the original's, copied along. They are taken out of `leaves`, so their
/// records are rebuilt from their chains with ids of their own; returns them and the original.
fn drop_copied_mirrors(leaves: &mut Vec<Leaf>) -> Vec<(PathBuf, PathBuf)> {
    let has_file = |l: &Leaf| records::leaf_file(&l.dir).is_file();
    let stale: Vec<(PathBuf, PathBuf)> = leaves
        .iter()
        .filter(|l| !has_file(l))
        .filter_map(|l| {
            let original = leaves.iter().find(|o| o.dir != l.dir && o.record.id == l.record.id && has_file(o))?;
            Some((l.dir.clone(), original.dir.clone()))
        })
        .collect();
    leaves.retain(|l| !stale.iter().any(|(dir, _)| *dir == l.dir));
    stale
}

/// Two bases, or two leaves, with one id: one of them is a hand-made copy. The original is the
/// one where its record says it is (a base in the folder of its name, a leaf at its path);
/// when that does not tell them apart, either may be the copy.
fn same_ids(bases: &[Base], leaves: &[Leaf], report: &mut Report) {
    let mut seen: HashMap<&str, (&Path, bool)> = HashMap::new();
    let entries = bases
        .iter()
        .map(|b| {
            let here = b.dir.file_name().is_some_and(|n| same_name(&n.to_string_lossy(), &b.record.name));
            (b.record.id.as_str(), b.dir.as_path(), "base", here)
        })
        .chain(
            leaves.iter().map(|l| (l.record.id.as_str(), l.dir.as_path(), "leaf", Path::new(&l.record.path) == l.dir)),
        );
    for (id, dir, what, here) in entries {
        let Some(&(other, other_here)) = seen.get(id) else {
            seen.insert(id, (dir, here));
            continue;
        };
        let (copy, of) = match (here, other_here) {
            (false, true) => (dir, other),
            (true, false) => {
                seen.insert(id, (dir, here));
                (other, dir)
            }
            _ => {
                let fix = if what == "base" {
                    format!(
                        "a copy of a base serves nothing (leaves use the original): move the copy out of Bases; if {} is the copy, move that one",
                        other.display()
                    )
                } else {
                    format!("if one is a copy you want to keep as a VM of its own: {}", forget_record(dir))
                };
                report.problem(
                    dir,
                    format!("this {what} carries the same record id as {}: one is a hand-made copy", other.display()),
                    fix,
                );
                continue;
            }
        };
        let fix = if what == "base" {
            "a copy of a base serves nothing (leaves use the original): move it out of Bases".to_string()
        } else {
            format!("to keep it as a VM of its own: {}; or delete it", forget_record(copy))
        };
        report.problem(
            copy,
            format!("this {what} is a hand-made copy of {} (it carries the same record id)", of.display()),
            fix,
        );
    }
}

/// How to take leafd's record off the leaf `dir`, so that `verify` gives it an id of its own.
fn forget_record(dir: &Path) -> String {
    let quoted = format!("'{}'", dir.join(records::DIR).display().to_string().replace('\'', "'\\''"));
    if records::leaf_file(dir).is_file() {
        format!("remove leafd's record from it (rm -r {quoted}) and run `leafd verify` again: it gets an id of its own")
    } else {
        // A library from before records were files: `recover` writes them first.
        format!(
            "run `leafd recover` (it brings this library's records up to date), then remove leafd's record from it (rm -r {quoted}) and run `leafd verify` again: it gets an id of its own"
        )
    }
}

/// A base: each disk's identity, protection and extents (and, `deep`, its content), its `.vmx`
/// kept under the name that cannot be booted; fingerprints it lacks are recorded (`deep`).
fn check_base(
    lib: &Library,
    env: &Arc<dyn Env>,
    base: &Base,
    deep: bool,
    opts: &Options,
    report: &mut Report,
) -> Result<()> {
    let mut prints = Vec::new();
    let _progress = deep.then(|| {
        let extents = base.record.disks.iter().flat_map(|d| &d.extents);
        let data = extents.map(|e| fsutil::data_bytes(&base.dir.join(&e.file)).unwrap_or(0)).sum();
        Progress::start(lib, format!("checking base {}", base.record.name), &base.dir, data)
    });
    for d in &base.record.disks {
        let path = base.descriptor_path(d);
        let disk = match Disk::open(env, &path) {
            Ok(disk) => disk,
            Err(e) => {
                report.error(&e.into());
                continue;
            }
        };
        let extents_hold = check_base_disk(base, d, &disk, report)?;
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
                Some(_) => {}
                None if !extents_hold => report.problem(
                    &path,
                    "the base has no content fingerprint, and its extents do not check out against their records",
                    "restore the base's disk files from a backup, or make the base again from the original VM",
                ),
                None => prints.push((d.descriptor.clone(), now)),
            }
        }
    }
    check_base_vmx(base, report);
    if !prints.is_empty() {
        record_fingerprints(lib, base, prints, report)?;
    }
    Ok(())
}

/// One disk of a base as recorded: its CID and capacity, every file write-protected, every
/// extent of its recorded size. Returns whether the extents hold (a fingerprint is recorded only
/// from content whose sizes check out).
fn check_base_disk(base: &Base, d: &DiskRecord, disk: &Disk, report: &mut Report) -> Result<bool> {
    let path = base.descriptor_path(d);
    let cid = disk_cid(disk)?;
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
    for f in disk.files() {
        if !platform::is_protected(&f).unwrap_or(false) {
            report.problem(
                &f,
                "the base disk file is not write-protected",
                format!("protect it again: {}", platform::protect_command(&f)),
            );
        }
    }
    let mut hold = true;
    for e in &d.extents {
        let file = base.dir.join(&e.file);
        let size = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        if size != e.size {
            hold = false;
            report.problem(
                &file,
                format!("extent is {size} bytes, {} when the base was made: truncated or changed", e.size),
                "restore the base's disk files from a backup",
            );
        }
    }
    Ok(hold)
}

/// Records the fingerprints `deep` computed for disks that had none: `(descriptor, print)`.
fn record_fingerprints(lib: &Library, base: &Base, prints: Vec<(String, String)>, report: &mut Report) -> Result<()> {
    // Re-read under the lock: Make Base may be recording a fingerprint meanwhile.
    let _lock = lib.lock_base(&base.record.id)?;
    let mut record = records::read_base(&base.dir)?.unwrap_or_else(|| base.record.clone());
    for (descriptor, print) in prints {
        if let Some(d) = record.disks.iter_mut().find(|d| d.descriptor == descriptor && d.fingerprint.is_none()) {
            d.fingerprint = Some(print);
            report.repaired(&base.descriptor_path(d), "fingerprint recorded");
        }
    }
    records::write_base(&base.dir, &record)
}

/// The base keeps its `.vmx` under a name VMware does not open by double-click: a plain `.vmx`
/// beside it could be booted, which changes the base's CID and breaks every leaf.
fn check_base_vmx(base: &Base, report: &mut Report) {
    let vmx = base.vmx_path();
    let bootable = base.record.vmx.strip_suffix(BASE_VMX_SUFFIX).map(|v| base.dir.join(v));
    let bootable = bootable.filter(|b| b.symlink_metadata().is_ok());
    let kept = vmx.symlink_metadata().is_ok();
    match (bootable, kept) {
        (Some(b), true) => report.problem(
            &b,
            "the base can be booted: a copy of its configuration is here under a name VMware opens",
            format!("never boot a base; remove that copy (the base keeps {}): rm '{}'", vmx.display(), b.display()),
        ),
        (Some(b), false) => report.problem(
            &b,
            "the base can be booted: its configuration is here under a name VMware opens",
            format!("never boot a base; move it back: mv '{}' '{}'", b.display(), vmx.display()),
        ),
        (None, false) => {
            report.problem(&vmx, "the base's configuration is missing", "restore it from a backup: new leaves need it")
        }
        (None, true) => {}
    }
}

/// Every leaf the base lists must exist; leaves of the base it does not list are added. An entry
/// is never deleted here: a leaf is forgotten only by `leafd forget`, which checks it is gone.
fn check_refs(lib: &Library, base: &Base, leaves: &[Leaf], report: &mut Report) -> Result<()> {
    let _lock = lib.lock_base(&base.record.id)?;
    let listed = base.leaf_refs()?;
    for entry in &listed {
        match entry {
            Listed::Leaf(r) if !leaves.iter().any(|l| l.record.id == r.id) => report.problem(
                Path::new(&r.path),
                format!("leaf {:?} of base {:?} is missing (moved, or deleted)", r.name, base.record.name),
                format!(
                    "if it moved, run `leafd relink NEW_PATH`; if it was deleted, `leafd forget {:?}` takes it off the base's list",
                    r.name
                ),
            ),
            Listed::Leaf(_) => {}
            Listed::Damaged(marker, why) => {
                let id = marker.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                match leaves.iter().find(|l| l.record.id == id) {
                    Some(l) => {
                        records::link_leaf(&base.dir, &l.listing())?;
                        report.repaired(marker, "the entry of this leaf was damaged; rewritten from the leaf's record");
                    }
                    None => report.problem(
                        marker,
                        format!("an entry of base {:?}'s list of leaves cannot be read ({why})", base.record.name),
                        format!("if its leaf was deleted, `leafd forget {id}` takes the entry off the list"),
                    ),
                }
            }
        }
    }
    let ids: Vec<&str> = listed
        .iter()
        .map(|e| match e {
            Listed::Leaf(r) => r.id.as_str(),
            Listed::Damaged(m, _) => m.file_stem().and_then(|s| s.to_str()).unwrap_or_default(),
        })
        .collect();
    for l in leaves.iter().filter(|l| l.record.base_id == base.record.id && !ids.contains(&l.record.id.as_str())) {
        records::link_leaf(&base.dir, &l.listing())?;
        report.repaired(&l.dir, format!("base {:?} did not list this leaf; added", base.record.name));
    }
    Ok(())
}

/// Whether the chain of disk `top` goes through the file `delta`: a snapshot the user took in
/// VMware since the leaf was made puts the disk on a newer delta over the leaf's.
fn leads_to(env: &Arc<dyn Env>, top: &Path, delta: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let Some(target) = id(delta) else { return false };
    let Ok(chain) = Disk::open(env, top) else { return false };
    let mut disk = Some(&chain);
    while let Some(d) = disk {
        if id(d.path()) == Some(target) {
            return true;
        }
        disk = d.parent();
    }
    false
}

fn check_leaf(env: &Arc<dyn Env>, leaf: &Leaf, bases: &[Base], report: &mut Report) {
    let Some(base) = bases.iter().find(|b| b.record.id == leaf.record.base_id) else {
        report.problem(
            &leaf.dir,
            format!("its base {:?} is not in the library", leaf.record.base_name),
            "put the base back in Bases, or if it moved to another library run `leafd --root OTHER relink` on this leaf",
        );
        return;
    };
    let vmx_path = leaf.vmx_path();
    let vmx = read_dict(&vmx_path);
    for d in &leaf.record.disks {
        let delta = leaf.dir.join(&d.delta);
        match &vmx {
            Ok(v) => {
                let now = v.get(&format!("{}.fileName", d.node)).unwrap_or_default();
                if now != d.delta && !leads_to(env, &resolve(&leaf.dir, now), &delta) {
                    report.problem(
                        &vmx_path,
                        format!("disk {} no longer points at its delta {}", d.node, d.delta),
                        "if the snapshot \"Base\" was deleted in VMware, the leaf may have been merged; restore it from a backup",
                    );
                }
            }
            Err(e) => report.error(e),
        }
        let chain = match Disk::open(env, &delta) {
            Ok(c) => c,
            Err(e) => {
                // A file the chain names is missing (the leaf or its base moved); a missing delta
                // itself is lost data.
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
        let Some(base_disk) = base.record.disks.iter().find(|b| b.node == d.base_node()) else {
            report.problem(
                &delta,
                format!("base {:?} has no disk {}", base.record.name, d.base_node()),
                "run `leafd relink` on the leaf",
            );
            continue;
        };
        let copy_cid = cid_hex(copy.descriptor.cid().unwrap_or(0));
        if copy_cid != base_disk.cid {
            report.problem(
                copy.path(),
                format!("the parent copy's CID {copy_cid} differs from base {:?} ({})", base.record.name, base_disk.cid),
                "the leaf fails with VMware error 18; restore the leaf's parent copy from a backup or run `leafd relink`",
            );
        }
        match Disk::open(env, &base.descriptor_path(base_disk)) {
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
fn adopt_unrecorded_leaves(
    lib: &Library,
    env: &Arc<dyn Env>,
    bases: &[Base],
    leaves: &mut Vec<Leaf>,
    report: &mut Report,
) -> Result<()> {
    for dir in lib.bundles()? {
        if leaves.iter().any(|l| l.dir == dir) {
            continue;
        }
        let damaged = records::read_leaf(&dir).is_err();
        if let Some(record) = rebuild_leaf(env, &dir, bases) {
            records::write_leaf(&dir, &record)?;
            let why = if damaged { "leaf lineage was damaged" } else { "leaf lineage was missing" };
            report.repaired(&dir, format!("{why}; rebuilt from its disk chain"));
            leaves.push(Leaf { dir, record });
        }
    }
    Ok(())
}

/// A leaf record from the chain: the VM's disks must be deltas over copies of a base's disks.
fn rebuild_leaf(env: &Arc<dyn Env>, dir: &Path, bases: &[Base]) -> Option<LeafRecord> {
    let name = dir.file_stem()?.to_string_lossy().into_owned();
    // Its one .vmx, whatever its name: a bundle renamed (or duplicated) keeps the one it had.
    let mut vmxs = fsutil::entries(dir)
        .ok()?
        .into_iter()
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .filter(|n| Path::new(n).extension().is_some_and(|x| x.eq_ignore_ascii_case("vmx")));
    let vmx_name = vmxs.next()?;
    if vmxs.next().is_some() {
        return None;
    }
    let vmx = read_dict(&dir.join(&vmx_name)).ok()?;
    let mut by_extents: HashMap<Vec<PathBuf>, (&Base, &DiskRecord)> = HashMap::new();
    for b in bases {
        for d in &b.record.disks {
            if let Ok(disk) = Disk::open_alone(env, &b.descriptor_path(d)) {
                by_extents.insert(extent_keys(&disk), (b, d));
            }
        }
    }
    let mut base = None;
    let mut disks = Vec::new();
    for entry in vmx::disks(&vmx) {
        let chain = Disk::open(env, &resolve(dir, &entry.file_name)).ok()?;
        // A disk of its own beside the linked ones (an adopted VM's disk the base had no match
        // for) stays out of the record.
        let Some(copy) = chain.parent() else { continue };
        let (b, bd) = by_extents.get(&extent_keys(copy))?;
        if base.is_some_and(|x: &Base| x.record.id != b.record.id) {
            return None;
        }
        base = Some(*b);
        disks.push(LeafDisk {
            parent_copy: copy.path().strip_prefix(dir).ok()?.to_string_lossy().into_owned(),
            delta: entry.file_name,
            parent_cid: cid_hex(copy.descriptor.cid().ok()?),
            base_node: (bd.node != entry.node).then(|| bd.node.clone()),
            node: entry.node,
        });
    }
    let base = base?;
    // The base may still list this leaf: keep the id it knows.
    let known = base.leaves_listed().ok()?.into_iter().find(|r| Path::new(&r.path) == dir);
    Some(LeafRecord {
        format: records::FORMAT,
        id: known.as_ref().map_or_else(records::new_id, |r| r.id.clone()),
        base_id: base.record.id.clone(),
        base_name: base.record.name.clone(),
        name,
        path: dir.to_string_lossy().into(),
        vmx: vmx_name,
        created: known.map_or_else(records::now, |r| r.created),
        snapshot: "native".into(),
        disks,
        adopted: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::library::ops::make_base;
    use crate::testing::SampleVm;

    /// A deep verify takes long, and the base's record may change meanwhile (Make Base recording
    /// its fingerprints, say): the fingerprints verify found go into the record as it is under
    /// the base's lock, not into the copy verify read at its start.
    #[test]
    fn fingerprints_go_into_the_record_as_it_is_under_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::open(&dir.path().join("lib")).unwrap();
        let opts = Options::default();
        let vm = SampleVm::single("Base", leafd_formats::disk::DiskType::MonolithicSparse, 1 << 20);
        let (made, fingerprinting) = make_base::make_base(&lib, &vm.build(dir.path()).unwrap(), None, &opts).unwrap();
        fingerprinting.finish(&lib, &opts).unwrap();
        let store = lib.bases_dir().join(&made.name);
        let mut record = records::read_base(&store).unwrap().unwrap();
        record.disks[0].fingerprint = None;
        records::write_base(&store, &record).unwrap();
        let stale = Base { dir: store.clone(), record: record.clone() };
        record.source = "changed meanwhile".into();
        records::write_base(&store, &record).unwrap();
        let print = ("Virtual Disk.vmdk".to_string(), "blake3z:found".to_string());
        record_fingerprints(&lib, &stale, vec![print], &mut Report::default()).unwrap();
        let now = records::read_base(&store).unwrap().unwrap();
        assert_eq!(now.source, "changed meanwhile", "verify wrote back the record it read before the lock");
        assert_eq!(now.disks[0].fingerprint.as_deref(), Some("blake3z:found"));
    }
}
