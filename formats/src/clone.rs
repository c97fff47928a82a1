//! The two disk files that make a linked clone: the leaf's copy of a base disk's descriptor
//! (the *parent copy*) and the snapshot delta on top of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::descriptor::{Access, Descriptor, Extent, ExtentKind, NEW_DISK_CID, NO_PARENT, check_representable};
use crate::disk::{self, Disk, DiskType, NewDisk};
use crate::env::Env;
use crate::error::{Error, Result};
use crate::ids::long_content_id;

/// How a parent copy's extent lines reach the base's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathStyle {
    /// Relative to the parent copy's folder: the library can move as a whole.
    Relative,
    /// Absolute paths: the leaf can move alone, the base cannot.
    Absolute,
}

/// `target` as written in a descriptor that lives in `from_dir`, as bytes (the names on disk).
/// Both must be absolute. Fails for a path a descriptor cannot hold (a quote in a folder name,
/// say).
pub fn extent_reference(target: &Path, from_dir: &Path, style: PathStyle) -> Result<PathBuf> {
    let relative = match style {
        PathStyle::Relative => pathdiff::diff_paths(target, from_dir),
        PathStyle::Absolute => None,
    };
    let reference = relative.unwrap_or_else(|| target.to_path_buf());
    check_representable(&reference.to_string_lossy()).map_err(|e| {
        Error::unsupported(target, e.to_string()).fix("rename the folder so its name has no double quote")
    })?;
    Ok(reference)
}

/// The descriptor a leaf keeps as its copy of `base`, to be written in `copy_dir`: the same CID
/// byte for byte (the one binding VMware checks), extent paths that reach the base's files,
/// no `ddb.uuid` (two disks must not share it), and `ddb.deletable = "false"`.
///
/// A monolithicSparse base has no text descriptor to copy; its copy is a split-sparse text
/// descriptor with one extent naming the base file, which VMware and QEMU both read. A copy of
/// a text descriptor keeps its encoding and bytes, unless its new paths need UTF-8
/// ([`Descriptor::fit_encoding`]).
pub fn parent_copy(base: &Disk, copy_dir: &Path, style: PathStyle) -> Result<Descriptor> {
    parent_copy_from(base, base.path(), copy_dir, style)
}

/// [`parent_copy`] for `base` as it will be once its descriptor is at `base_at` (its files
/// moved with it, as Make Base moves a bundle): how Make Base checks that leaves can be made.
pub fn parent_copy_from(base: &Disk, base_at: &Path, copy_dir: &Path, style: PathStyle) -> Result<Descriptor> {
    let here = base.path().parent().unwrap_or(Path::new("/"));
    let there = base_at.parent().unwrap_or(Path::new("/"));
    let moved = |p: &Path| p.strip_prefix(here).map_or_else(|_| p.to_path_buf(), |r| there.join(r));
    let cid = base.descriptor.cid().map_err(|e| Error::format(base.path(), e.to_string()))?;
    let mut copy = if base.embedded {
        let extent = Extent {
            access: Access::ReadWrite,
            sectors: base.capacity(),
            kind: ExtentKind::Sparse,
            file: Some(extent_reference(base_at, copy_dir, style)?),
            offset: None,
        };
        let ddb: Vec<(&str, &str)> = base.descriptor.ddb_entries().collect();
        Descriptor::build(cid, NO_PARENT, DiskType::SplitSparse.create_type(), None, &[extent], &ddb)
            .map_err(|e| Error::parse(base.path(), "parent copy", e))?
    } else {
        let mut d = base.descriptor.clone();
        // The extents as the disk was opened: found under the names they have on disk.
        let mut files = base.extent_files().into_iter();
        let mut failed = None;
        d.map_extents(|e| {
            // QEMU ignores extents not marked RW; VMware writes RW for snapshot parents too.
            e.access = Access::ReadWrite;
            if e.file.is_some() {
                let target = files.next().map(|f| moved(&f)).unwrap_or_default();
                match extent_reference(&target, copy_dir, style) {
                    Ok(r) => e.file = Some(r),
                    Err(err) => failed = Some(err),
                }
            }
        });
        if let Some(err) = failed {
            return Err(err);
        }
        d
    };
    copy.remove_ddb("ddb.uuid");
    copy.set_ddb("ddb.deletable", "false");
    copy.fit_encoding()
        .map_err(|e| Error::parse(&copy_dir.join(base_at.file_name().unwrap_or_default()), "parent copy", e))?;
    Ok(copy)
}

/// `copy` with its extents pointed, in order, at `targets` (a base disk's extent files), as seen
/// from `from_dir`.
pub fn repoint(copy: &Descriptor, targets: &[PathBuf], from_dir: &Path, style: PathStyle) -> Result<Descriptor> {
    let mut new = copy.clone();
    let mut references =
        targets.iter().map(|t| extent_reference(t, from_dir, style)).collect::<Result<Vec<_>>>()?.into_iter();
    let mut missing = false;
    new.map_extents(|e| {
        if e.file.is_some() {
            e.file = references.next();
            missing |= e.file.is_none();
        }
    });
    if missing || references.next().is_some() {
        return Err(Error::format(from_dir, "the parent copy's extents do not match the base's"));
    }
    new.fit_encoding().map_err(|e| Error::parse(from_dir, "parent copy", e))?;
    Ok(new)
}

/// The sizes, in sectors, of the extents of a snapshot delta over `parent` (a parent copy of a
/// base disk of type `base_type`): split like the base, or one extent for a monolithic base.
pub fn delta_extents(parent: &Descriptor, base_type: DiskType) -> Vec<u64> {
    if base_type.is_split() { parent.extents().map(|e| e.sectors).collect() } else { vec![parent.capacity()] }
}

/// What the snapshot delta `delta` over the parent copy named `parent_name` (in the same
/// folder) is, with content ID `cid`: split like the base, one sparse file for a monolithic base.
fn delta_spec<'a>(
    delta: &'a Path,
    parent_name: &'a str,
    parent: &Descriptor,
    base_type: DiskType,
    cid: u32,
) -> Result<NewDisk<'a>> {
    let parent_cid = parent.cid().map_err(|m| Error::format(delta, format!("parent copy {m}")))?;
    let disk_type = if base_type.is_split() { DiskType::SplitSparse } else { DiskType::MonolithicSparse };
    Ok(NewDisk {
        path: delta,
        disk_type,
        extents: delta_extents(parent, base_type),
        cid,
        parent: Some((parent_name, parent_cid)),
        ddb: vec![("ddb.longContentID".into(), long_content_id(cid))],
    })
}

/// Creates the snapshot delta `delta` over the parent copy named `parent_name` (see
/// [`check_delta`]), empty, with the content ID VMware gives a disk never written. Returns the
/// files written.
pub fn create_delta(
    env: &Arc<dyn Env>,
    delta: &Path,
    parent_name: &str,
    parent: &Descriptor,
    base_type: DiskType,
) -> Result<Vec<PathBuf>> {
    create_delta_with_cid(env, delta, parent_name, parent, base_type, NEW_DISK_CID)
}

/// [`create_delta`] with content ID `cid`: for a delta about to be filled with grains.
pub fn create_delta_with_cid(
    env: &Arc<dyn Env>,
    delta: &Path,
    parent_name: &str,
    parent: &Descriptor,
    base_type: DiskType,
    cid: u32,
) -> Result<Vec<PathBuf>> {
    disk::create(env, &delta_spec(delta, parent_name, parent, base_type, cid)?)
}

/// Fails exactly where [`create_delta`] would fail to describe the delta, writing nothing: how
/// Make Base refuses a disk that New Leaf could not serve.
pub fn check_delta(delta: &Path, parent_name: &str, parent: &Descriptor, base_type: DiskType) -> Result<()> {
    disk::describe(&delta_spec(delta, parent_name, parent, base_type, NEW_DISK_CID)?).map(|_| ())
}

/// The delta file name VMware uses for the first snapshot of `<stem>.vmdk`.
pub fn delta_name(parent_file: &str) -> String {
    let stem = parent_file.strip_suffix(".vmdk").unwrap_or(parent_file);
    format!("{stem}-000001.vmdk")
}
