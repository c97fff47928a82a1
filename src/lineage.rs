//! Lineage records kept in extended attributes, as JSON a person can read with `xattr -p`.
//!
//! The VMDK chain is the ground truth; these records are leafd's index and annotations. Each
//! record lives on the file it describes, so every record stays small (ext4 allows about 4 KiB
//! of attributes per file) whatever the number of extents or leaves:
//!
//! | attribute (`org.leafd.` + ) | on | holds |
//! |---|---|---|
//! | `base` | the base store folder | [`BaseRecord`]: id, name, source, time, disks |
//! | `extent` | every extent file of a base | [`ExtentRecord`]: its place and recorded size |
//! | `leaf-ref` | `Bases/<name>/.leaves/<leaf id>` | [`LeafRef`]: one leaf made from the base |
//! | `leaf` | the leaf bundle | [`LeafRecord`]: id, base, name, path, time, disks |

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::platform::xattr_name;

pub const BASE: &str = "base";
pub const EXTENT: &str = "extent";
pub const LEAF: &str = "leaf";
pub const LEAF_REF: &str = "leaf-ref";

/// Folder inside a base store holding one marker file per leaf.
pub const LEAVES_DIR: &str = ".leaves";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRecord {
    pub id: String,
    pub name: String,
    /// Where the VM bundle was before it became the base.
    pub source: String,
    /// RFC 3339.
    pub created: String,
    /// The base's `.vmx`, renamed so Fusion does not open it.
    pub vmx: String,
    pub disks: Vec<DiskRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// Device node in the `.vmx` (`scsi0:0`).
    pub node: String,
    /// The disk's `.vmdk`, relative to the base store.
    pub descriptor: String,
    /// 8 hex digits, exactly as in the descriptor.
    pub cid: String,
    /// Sectors.
    pub capacity: u64,
    pub create_type: String,
    pub extents: usize,
    /// Content fingerprint of the extents ([`crate::fsutil::fingerprint`]); `None` until computed.
    pub fingerprint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentRecord {
    pub base: String,
    /// Descriptor of the disk this extent belongs to, relative to the base store.
    pub disk: String,
    pub index: usize,
    /// This extent file, relative to the base store.
    pub file: String,
    pub sectors: u64,
    /// File size in bytes when the base was made: a shorter file was truncated.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafRef {
    pub id: String,
    pub name: String,
    /// The leaf bundle's path when it was made.
    pub path: String,
    pub created: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafRecord {
    pub id: String,
    pub base_id: String,
    pub base_name: String,
    pub name: String,
    pub path: String,
    pub created: String,
    /// `native` or `vmrun`: who took the snapshot.
    pub snapshot: String,
    pub disks: Vec<LeafDisk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafDisk {
    pub node: String,
    /// The leaf's copy of the base descriptor, relative to the leaf bundle.
    pub parent_copy: String,
    /// The leaf's own delta, relative to the leaf bundle.
    pub delta: String,
    pub parent_cid: String,
}

/// Writes record `name` on `path`.
pub fn write<T: Serialize>(path: &Path, name: &str, record: &T) -> Result<()> {
    let json = serde_json::to_vec(record).expect("records serialize");
    xattr::set(path, xattr_name(name), &json).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::ENOTSUP) {
            "the file system does not support extended attributes; keep the library on APFS, HFS+, ext4, XFS or Btrfs"
        } else {
            "check that the file is writable and the disk is not full"
        };
        Error::io(path, &format!("cannot record lineage ({})", xattr_name(name)), e).fix(hint)
    })
}

/// Reads record `name` from `path`: `None` when absent; an error when unreadable or not ours.
pub fn read<T: DeserializeOwned>(path: &Path, name: &str) -> Result<Option<T>> {
    let Some(raw) = xattr::get(path, xattr_name(name)).at(path, "cannot read lineage")? else {
        return Ok(None);
    };
    serde_json::from_slice(&raw).map(Some).map_err(|e| {
        Error::format(path, format!("lineage attribute {} is damaged: {e}", xattr_name(name)))
            .fix("run `leafd verify` to rebuild it from the disk chain")
    })
}

/// Removes record `name` from `path`; absent is fine.
pub fn remove(path: &Path, name: &str) -> Result<()> {
    crate::platform::remove_xattr(path, &xattr_name(name)).at(path, "cannot remove lineage")
}

/// Now, as recorded in lineage.
pub fn now() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// A new random id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
