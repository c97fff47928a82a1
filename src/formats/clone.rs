//! The two disk files that make a linked clone: the leaf's copy of a base disk's descriptor
//! (the *parent copy*) and the snapshot delta on top of it.

use std::path::{Path, PathBuf};

use super::descriptor::{Access, Descriptor, Extent, ExtentKind, NEW_DISK_CID, NO_PARENT};
use super::disk::{self, Disk, DiskType, NewDisk, resolve};
use crate::error::{Error, Result};
use crate::sample::long_content_id;

/// How a parent copy's extent lines reach the base's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathStyle {
    /// Relative to the parent copy's folder: the library can move as a whole.
    Relative,
    Absolute,
}

/// `target` as written in a descriptor that lives in `from_dir`. Both must be absolute.
pub fn extent_reference(target: &Path, from_dir: &Path, style: PathStyle) -> String {
    let relative = match style {
        PathStyle::Relative => pathdiff::diff_paths(target, from_dir),
        PathStyle::Absolute => None,
    };
    relative.unwrap_or_else(|| target.to_path_buf()).to_string_lossy().into_owned()
}

/// The descriptor a leaf keeps as its copy of `base`, to be written in `copy_dir`: the same CID
/// byte for byte (the one binding VMware checks), extent paths that reach the base's files,
/// no `ddb.uuid` (two disks must not share it), and `ddb.deletable = "false"`.
///
/// A monolithicSparse base has no text descriptor to copy; its copy is a split-sparse text
/// descriptor with one extent naming the base file, which VMware and QEMU both read.
pub fn parent_copy(base: &Disk, copy_dir: &Path, style: PathStyle) -> Result<Descriptor> {
    let base_dir = base.path().parent().unwrap_or(Path::new("/"));
    let cid = base.descriptor.cid().map_err(|m| Error::format(base.path(), m))?;
    let mut copy = if base.embedded {
        let extent = Extent {
            access: Access::ReadWrite,
            sectors: base.capacity(),
            kind: ExtentKind::Sparse,
            file: Some(extent_reference(base.path(), copy_dir, style)),
            offset: None,
        };
        let ddb: Vec<(&str, &str)> = base.descriptor.ddb_entries().collect();
        Descriptor::build(cid, NO_PARENT, DiskType::SplitSparse.create_type(), None, &[extent], &ddb)
    } else {
        let mut d = base.descriptor.clone();
        d.map_extents(|e| {
            // QEMU ignores extents not marked RW; VMware writes RW for snapshot parents too.
            e.access = Access::ReadWrite;
            if let Some(f) = &e.file {
                e.file = Some(extent_reference(&resolve(base_dir, f), copy_dir, style));
            }
        });
        d
    };
    copy.remove_ddb("ddb.uuid");
    copy.set_ddb("ddb.deletable", "false");
    Ok(copy)
}

/// `copy` with its extents pointed, in order, at `targets` (a base disk's extent files), as seen
/// from `from_dir`. `None` when the number of extents differs.
pub fn repoint(copy: &Descriptor, targets: &[PathBuf], from_dir: &Path, style: PathStyle) -> Option<Descriptor> {
    let mut new = copy.clone();
    let mut i = 0;
    new.map_extents(|e| {
        if e.file.is_some() {
            e.file = targets.get(i).map(|t| extent_reference(t, from_dir, style));
            i += 1;
        }
    });
    (i == targets.len() && new.extents().all(|e| e.file.is_some() || e.kind == ExtentKind::Zero)).then_some(new)
}

/// Creates the snapshot delta `delta` over the parent copy named `parent_name` (in the same
/// folder), split like the base: one sparse file for a monolithic base, else one sparse extent
/// per extent of the parent. Returns the files written.
pub fn create_delta(delta: &Path, parent_name: &str, parent: &Descriptor, base_type: DiskType) -> Result<Vec<PathBuf>> {
    let parent_cid = parent.cid().map_err(|m| Error::format(delta, format!("parent copy {m}")))?;
    let (disk_type, extents) = if base_type.is_split() {
        (DiskType::SplitSparse, parent.extents().map(|e| e.sectors).collect())
    } else {
        (DiskType::MonolithicSparse, vec![parent.capacity()])
    };
    disk::create(&NewDisk {
        path: delta,
        disk_type,
        extents,
        cid: NEW_DISK_CID,
        parent: Some((parent_name, parent_cid)),
        ddb: vec![("ddb.longContentID".into(), long_content_id(NEW_DISK_CID))],
    })
}

/// The delta file name VMware uses for the first snapshot of `<stem>.vmdk`.
pub fn delta_name(parent_file: &str) -> String {
    let stem = parent_file.strip_suffix(".vmdk").unwrap_or(parent_file);
    format!("{stem}-000001.vmdk")
}
