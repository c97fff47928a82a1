//! Lineage records (docs/records.md): small JSON files written atomically, with an extended
//! attribute holding the same JSON as a mirror where the volume keeps one and it fits.
//!
//! | record | file | mirror |
//! |---|---|---|
//! | [`BaseRecord`] | `Bases/<name>/.leafd/base.json` | `org.leafd.base` on the store |
//! | [`LeafRef`], one per leaf | `Bases/<name>/.leafd/leaves/<id>.json` | none |
//! | [`LeafRecord`] | `<leaf>.vmwarevm/.leafd/leaf.json` | `org.leafd.leaf` on the bundle |
//!
//! Libraries from before (format 1) kept records in extended attributes only; they are read
//! here as they are, and [`migrate_store`] / [`migrate_leaf`] write their files.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::io::Errno;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::durable;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::platform::xattr_name;

/// The record format this leafd writes.
pub(crate) const FORMAT: u32 = 2;
/// The folder holding a store's or a leaf's records.
pub(crate) const DIR: &str = ".leafd";
const BASE_FILE: &str = "base.json";
const LEAF_FILE: &str = "leaf.json";
const LEAVES: &str = "leaves";
const BASE_ATTR: &str = "base";
const LEAF_ATTR: &str = "leaf";
/// Format 1's marker folder and attributes.
const V1_LEAVES_DIR: &str = ".leaves";
const V1_EXTENT_ATTR: &str = "extent";
const V1_LEAF_REF_ATTR: &str = "leaf-ref";

fn format2() -> u32 {
    FORMAT
}

/// Bytes in JSON: a string when they are UTF-8 (every record written so far), else an array of
/// numbers, so that no file name is lost whatever its bytes.
pub mod text_or_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(b) {
            Ok(t) => s.serialize_str(t),
            Err(_) => s.collect_seq(b),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(match Either::deserialize(d)? {
            Either::Text(t) => t.into_bytes(),
            Either::Bytes(b) => b,
        })
    }

    /// The same for a path.
    pub mod path {
        use std::ffi::OsString;
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        use std::path::PathBuf;

        use serde::{Deserializer, Serializer};

        use crate::library::records::text_or_bytes;

        pub fn serialize<S: Serializer>(p: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
            text_or_bytes::serialize(p.as_os_str().as_bytes(), s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
            text_or_bytes::deserialize(d).map(|b| PathBuf::from(OsString::from_vec(b)))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BaseRecord {
    #[serde(default = "format2")]
    pub(crate) format: u32,
    pub(crate) id: String,
    pub(crate) name: String,
    /// Where the VM bundle was before it became the base.
    pub(crate) source: String,
    /// RFC 3339.
    pub(crate) created: String,
    /// The base's `.vmx`, renamed so VMware does not open it.
    pub(crate) vmx: String,
    pub(crate) disks: Vec<DiskRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DiskRecord {
    /// Device node in the `.vmx` (`scsi0:0`).
    pub(crate) node: String,
    /// The disk's `.vmdk`, relative to the base store.
    pub(crate) descriptor: String,
    /// 8 hex digits, exactly as in the descriptor.
    pub(crate) cid: String,
    /// Sectors.
    pub(crate) capacity: u64,
    pub(crate) create_type: String,
    /// The disk's file-backed extents (`ZERO` extents have no file).
    pub(crate) extents: Vec<ExtentRecord>,
    /// Content fingerprint of the extents ([`crate::fsutil::fingerprint`]); `None` until computed.
    pub(crate) fingerprint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExtentRecord {
    /// Place among the disk's extents, `ZERO` ones included.
    pub(crate) index: usize,
    /// The extent file, relative to the base store: its name's bytes, which need not be UTF-8
    /// (a descriptor in a legacy code page names its extents in it).
    #[serde(with = "text_or_bytes::path")]
    pub(crate) file: PathBuf,
    pub(crate) sectors: u64,
    /// File size in bytes when the base was made: a shorter file was truncated.
    pub(crate) size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeafRef {
    #[serde(default = "format2")]
    pub(crate) format: u32,
    pub(crate) id: String,
    pub(crate) name: String,
    /// The leaf bundle's path when it was made or last relinked.
    pub(crate) path: String,
    pub(crate) created: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeafRecord {
    #[serde(default = "format2")]
    pub(crate) format: u32,
    pub(crate) id: String,
    pub(crate) base_id: String,
    pub(crate) base_name: String,
    pub(crate) name: String,
    pub(crate) path: String,
    /// The leaf's `.vmx`, relative to the bundle.
    pub(crate) vmx: String,
    pub(crate) created: String,
    /// `native` or `vmrun`: who took the snapshot.
    pub(crate) snapshot: String,
    pub(crate) disks: Vec<LeafDisk>,
    /// The leaf is a VM that was copied from the base and adopted (`leafd adopt`), not made by
    /// New Leaf: its snapshot "Base" is the base's state, not the state it was adopted in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) adopted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeafDisk {
    pub(crate) node: String,
    /// The leaf's copy of the base descriptor, relative to the leaf bundle.
    pub(crate) parent_copy: String,
    /// The leaf's own delta, relative to the leaf bundle.
    pub(crate) delta: String,
    pub(crate) parent_cid: String,
    /// The base disk's node, when it is not the leaf's (an adopted VM's disk matched to the
    /// base's only disk of its capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) base_node: Option<String>,
}

impl LeafDisk {
    /// The node of the base disk this disk's parent copy is a copy of.
    pub(crate) fn base_node(&self) -> &str {
        self.base_node.as_deref().unwrap_or(&self.node)
    }
}

pub(crate) fn base_file(store: &Path) -> PathBuf {
    store.join(DIR).join(BASE_FILE)
}

pub(crate) fn leaf_file(bundle: &Path) -> PathBuf {
    bundle.join(DIR).join(LEAF_FILE)
}

fn leaves_dir(store: &Path) -> PathBuf {
    store.join(DIR).join(LEAVES)
}

/// The file of leaf `id`'s entry in the list of the base in `store`.
pub(crate) fn leaf_ref_file(store: &Path, id: &str) -> PathBuf {
    leaves_dir(store).join(format!("{id}.json"))
}

/// The record file at `path`, parsed; `None` when there is none.
fn read_file<T: DeserializeOwned>(path: &Path, what: &str) -> Result<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, &format!("cannot read the {what} record"), e)),
    };
    parse(&bytes, path, what).map(Some)
}

fn parse<T: DeserializeOwned>(bytes: &[u8], path: &Path, what: &str) -> Result<T> {
    #[derive(Deserialize)]
    struct Version {
        #[serde(default = "format2")]
        format: u32,
    }
    let damaged = |e: serde_json::Error| {
        Error::format(path, format!("the {what} record is damaged: {e}"))
            .fix("run `leafd verify` to rebuild it from the disk chain")
    };
    let version: Version = serde_json::from_slice(bytes).map_err(damaged)?;
    if version.format > FORMAT {
        return Err(Error::unsupported(path, format!("the {what} record is format {}", version.format))
            .fix("it was written by a newer leafd: upgrade leafd"));
    }
    serde_json::from_slice(bytes).map_err(damaged)
}

/// Attribute `name` of `path` as bytes; `None` when absent or unreadable (a mirror is a hint).
fn attr(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(path, xattr_name(name)).ok().flatten()
}

/// Devices where a mirror cannot be kept (no attributes, or emulated in `._` files).
static NO_MIRROR: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

fn device(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).ok().map(|m| m.dev())
}

/// Writes the mirror of a record on `path`, or leaves none: a volume without extended
/// attributes, one that emulates them in `._` files, or a value too large for the file system's
/// limit (ext4 keeps all of a file's attributes in one block) simply has no mirror.
fn write_mirror(path: &Path, name: &str, json: &[u8]) -> Result<()> {
    let dev = device(path);
    let skip = |set: &mut HashSet<u64>| dev.is_some_and(|d| set.contains(&d));
    if NO_MIRROR.lock().map(|mut g| skip(g.get_or_insert_with(HashSet::new))).unwrap_or(false) {
        return Ok(());
    }
    match durable::set_xattr(path, &xattr_name(name), json) {
        Ok(()) if emulated(path) => {
            let _ = durable::remove_xattr(path, &xattr_name(name));
            forget_device(dev);
        }
        Ok(()) => {}
        Err(e) => {
            if unsupported(&e) {
                forget_device(dev);
            }
            // Too large, or refused: no mirror is better than a stale one.
            let _ = durable::remove_xattr(path, &xattr_name(name));
            tracing::debug!("no mirror of {} on {}: {e}", xattr_name(name), path.display());
        }
    }
    // The attribute changed (written, or removed as stale): flushed like every change.
    durable::flush_path(path, durable::Flush::Order)
}

fn forget_device(dev: Option<u64>) {
    if let (Some(d), Ok(mut g)) = (dev, NO_MIRROR.lock()) {
        g.get_or_insert_with(HashSet::new).insert(d);
    }
}

/// Whether the attribute just written went into an AppleDouble `._` file beside `path` (macOS
/// on exFAT, FAT and some network volumes): such a mirror would litter the user's folders.
fn emulated(path: &Path) -> bool {
    let Some(name) = path.file_name() else { return false };
    let mut double = std::ffi::OsString::from("._");
    double.push(name);
    path.with_file_name(double).symlink_metadata().is_ok()
}

fn write_record<T: Serialize>(file: &Path, dir: &Path, attr_name: Option<&str>, record: &T) -> Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(|e| {
        Error::format(file, format!("cannot record lineage: {e}")).fix("give the VM's files names that are valid UTF-8")
    })?;
    let records = file.parent().unwrap_or(dir);
    durable::create_dir_all(records)?;
    durable::write_atomic(file, &json)?;
    if let Some(name) = attr_name {
        write_mirror(dir, name, &json)?;
    }
    Ok(())
}

/// The record of the base store `store`: its file, else its mirror, else format 1's attributes.
pub(crate) fn read_base(store: &Path) -> Result<Option<BaseRecord>> {
    let file = base_file(store);
    if let Some(r) = read_file(&file, "base")? {
        return Ok(Some(r));
    }
    let Some(raw) = attr(store, BASE_ATTR) else { return Ok(None) };
    if let Ok(r) = parse::<BaseRecord>(&raw, store, "base") {
        return Ok(Some(r));
    }
    read_v1_base(store, &raw).map(Some)
}

/// The mirror of a store's record (format 2), to restore a damaged file from.
pub(crate) fn read_base_mirror(store: &Path) -> Option<BaseRecord> {
    let raw = attr(store, BASE_ATTR)?;
    has_format(&raw).then(|| parse::<BaseRecord>(&raw, store, "base").ok()).flatten()
}

/// Whether a record's JSON says its format (format 1 records did not).
fn has_format(raw: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(raw).is_ok_and(|v| v.get("format").is_some())
}

/// Writes the base record into `store` (and its mirror).
pub(crate) fn write_base(store: &Path, record: &BaseRecord) -> Result<()> {
    write_record(&base_file(store), store, Some(BASE_ATTR), record)
}

/// Removes the base record from `store` (an undone Make Base), and its folder once empty.
pub(crate) fn remove_base(store: &Path) -> Result<()> {
    remove_record(store, &base_file(store), BASE_ATTR)
}

fn remove_record(dir: &Path, file: &Path, attr_name: &str) -> Result<()> {
    durable::remove_file(file)?;
    let records = dir.join(DIR);
    if fsutil::is_empty_dir(&records) {
        durable::remove_dir(&records)?;
    } else if records.is_dir() {
        // The file's removal, from the folder that stays (a base's other records).
        durable::flush_path(&records, durable::Flush::Order)?;
    }
    durable::remove_xattr(dir, &xattr_name(attr_name)).or_else(ignore_unsupported).at(dir, "cannot remove lineage")?;
    durable::flush_path(dir, durable::Flush::Order)
}

/// The record of the leaf bundle `bundle`: its file, else its mirror (either format).
pub(crate) fn read_leaf(bundle: &Path) -> Result<Option<LeafRecord>> {
    if let Some(r) = read_file(&leaf_file(bundle), "leaf")? {
        return Ok(Some(r));
    }
    let Some(raw) = attr(bundle, LEAF_ATTR) else { return Ok(None) };
    if let Ok(r) = parse::<LeafRecord>(&raw, bundle, "leaf") {
        return Ok(Some(r));
    }
    let v1: V1Leaf = parse(&raw, bundle, "leaf")?;
    Ok(Some(v1.into()))
}

/// Writes the leaf record into `bundle` (and its mirror).
pub(crate) fn write_leaf(bundle: &Path, record: &LeafRecord) -> Result<()> {
    write_record(&leaf_file(bundle), bundle, Some(LEAF_ATTR), record)
}

/// Removes the leaf record of `bundle` (it became a base, or a standalone VM).
pub(crate) fn remove_leaf(bundle: &Path) -> Result<()> {
    remove_record(bundle, &leaf_file(bundle), LEAF_ATTR)
}

/// The volume keeps no extended attributes (`ENOTSUP`; macOS also says `EOPNOTSUPP`).
fn unsupported(e: &std::io::Error) -> bool {
    Errno::from_io_error(e).is_some_and(|n| n == Errno::NOTSUP || n == Errno::OPNOTSUPP)
}

fn ignore_unsupported(e: std::io::Error) -> std::io::Result<()> {
    if unsupported(&e) { Ok(()) } else { Err(e) }
}

/// A leaf's entry in the list of its base: readable, or damaged (kept, never deleted for it).
#[derive(Debug, Clone)]
pub(crate) enum Listed {
    Leaf(LeafRef),
    /// The marker whose record cannot be read, and why.
    Damaged(PathBuf, String),
}

/// The leaves the base in `store` lists, in either format.
pub(crate) fn leaf_refs(store: &Path) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    let dir = leaves_dir(store);
    for p in list(&dir)? {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue; // a marker being written
        }
        match read_file::<LeafRef>(&p, "leaf list") {
            Ok(Some(r)) => out.push(Listed::Leaf(r)),
            Ok(None) => {}
            Err(e) => out.push(Listed::Damaged(p, e.message)),
        }
    }
    for p in list(&store.join(V1_LEAVES_DIR))? {
        if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            continue;
        }
        let id = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if out.iter().any(|l| matches!(l, Listed::Leaf(r) if r.id == id)) {
            continue; // migrated already; the old marker is about to go
        }
        match attr(&p, V1_LEAF_REF_ATTR).map(|raw| parse::<LeafRef>(&raw, &p, "leaf list")) {
            Some(Ok(r)) => out.push(Listed::Leaf(r)),
            Some(Err(e)) => out.push(Listed::Damaged(p, e.message)),
            None => out.push(Listed::Damaged(p, "the marker has lost its record".into())),
        }
    }
    out.sort_by(|a, b| listed_key(a).cmp(listed_key(b)));
    Ok(out)
}

fn listed_key(l: &Listed) -> &str {
    match l {
        Listed::Leaf(r) => &r.name,
        Listed::Damaged(p, _) => p.to_str().unwrap_or_default(),
    }
}

/// Entries of `dir`, sorted; none when it does not exist.
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    match fsutil::entries(dir) {
        Err(e) if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => Ok(Vec::new()),
        r => r,
    }
}

/// A leaf id names a file in a base's list: it must be a plain name (ids come from records and
/// journals, which a person may have edited), never a path that reaches out of the list.
fn check_leaf_id(store: &Path, id: &str) -> Result<()> {
    let plain = !id.is_empty() && id != "." && id != ".." && !id.contains('/') && !id.contains('\0');
    if plain {
        return Ok(());
    }
    Err(Error::format(&leaves_dir(store), format!("{id:?} is not a leaf id"))
        .fix("the record or journal naming it is damaged or hand-made; `leafd verify`, `leafd recover --list`"))
}

/// Records `leaf` in the list of the base in `store` (the caller holds the base's lock).
pub(crate) fn link_leaf(store: &Path, leaf: &LeafRef) -> Result<()> {
    check_leaf_id(store, &leaf.id)?;
    write_record(&leaf_ref_file(store, &leaf.id), store, None, leaf)
}

/// Removes leaf `id` from the list of the base in `store` (the caller holds the base's lock).
pub(crate) fn unlink_leaf(store: &Path, id: &str) -> Result<()> {
    check_leaf_id(store, id)?;
    let file = leaf_ref_file(store, id);
    let v1 = store.join(V1_LEAVES_DIR).join(id);
    for p in [&file, &v1] {
        if p.symlink_metadata().is_ok() {
            durable::remove_file(p)?;
            durable::flush_parent(p, durable::Flush::Order)?;
        }
    }
    Ok(())
}

/// Writes the files of a store's records found only in format 1's attributes, and moves its
/// old leaf markers into the new list. Idempotent; nothing is lost if it is interrupted.
pub(crate) fn migrate_store(store: &Path) -> Result<()> {
    if base_file(store).symlink_metadata().is_err()
        && let Some(record) = read_base(store)?
    {
        write_base(store, &record)?;
    }
    let old = store.join(V1_LEAVES_DIR);
    if old.symlink_metadata().is_err() {
        return Ok(());
    }
    for listed in leaf_refs(store)? {
        if let Listed::Leaf(r) = listed
            && leaf_ref_file(store, &r.id).symlink_metadata().is_err()
        {
            link_leaf(store, &r)?;
        }
    }
    // Markers whose record is lost stay (a person decides, with `leafd verify`).
    for p in list(&old)? {
        let id = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if leaf_ref_file(store, &id).symlink_metadata().is_ok() {
            durable::remove_file(&p)?;
        }
    }
    if list(&old)?.is_empty() {
        durable::remove_dir(&old)?;
    }
    durable::flush_path(store, durable::Flush::Order)
}

/// Writes the record file of a leaf found only in an attribute. Idempotent.
pub(crate) fn migrate_leaf(bundle: &Path) -> Result<()> {
    if leaf_file(bundle).symlink_metadata().is_err()
        && let Some(record) = read_leaf(bundle)?
    {
        write_leaf(bundle, &record)?;
    }
    Ok(())
}

/// Format 1's base record (in its store's attribute, and in format 1 journals): extents were
/// counted apart and recorded on each extent file.
#[derive(Deserialize)]
pub(crate) struct V1Base {
    id: String,
    name: String,
    source: String,
    created: String,
    vmx: String,
    disks: Vec<V1Disk>,
}

#[derive(Deserialize)]
struct V1Disk {
    node: String,
    descriptor: String,
    cid: String,
    capacity: u64,
    create_type: String,
    fingerprint: Option<String>,
}

impl V1Base {
    /// The record in this format, each disk with the extents `extents` gives for its descriptor.
    pub(crate) fn into_record(self, extents: impl Fn(&str) -> Vec<ExtentRecord>) -> BaseRecord {
        let disks = self
            .disks
            .into_iter()
            .map(|d| DiskRecord {
                extents: extents(&d.descriptor),
                node: d.node,
                descriptor: d.descriptor,
                cid: d.cid,
                capacity: d.capacity,
                create_type: d.create_type,
                fingerprint: d.fingerprint,
            })
            .collect();
        BaseRecord {
            format: FORMAT,
            id: self.id,
            name: self.name,
            source: self.source,
            created: self.created,
            vmx: self.vmx,
            disks,
        }
    }
}

#[derive(Deserialize)]
struct V1Extent {
    disk: String,
    index: usize,
    file: String,
    sectors: u64,
    size: u64,
}

fn read_v1_base(store: &Path, raw: &[u8]) -> Result<BaseRecord> {
    let v1: V1Base = parse(raw, store, "base")?;
    let mut extents: Vec<V1Extent> = Vec::new();
    for p in crate::fsutil::walk(store)? {
        if let Some(raw) = attr(&p, V1_EXTENT_ATTR)
            && let Ok(e) = serde_json::from_slice::<V1Extent>(&raw)
        {
            extents.push(e);
        }
    }
    extents.sort_by_key(|e| e.index);
    Ok(v1.into_record(|descriptor| {
        extents
            .iter()
            .filter(|e| e.disk == descriptor)
            .map(|e| ExtentRecord { index: e.index, file: PathBuf::from(&e.file), sectors: e.sectors, size: e.size })
            .collect()
    }))
}

/// Format 1's leaf record: the `.vmx` was always `<name>.vmx`.
#[derive(Deserialize)]
struct V1Leaf {
    id: String,
    base_id: String,
    base_name: String,
    name: String,
    path: String,
    created: String,
    snapshot: String,
    disks: Vec<LeafDisk>,
}

impl From<V1Leaf> for LeafRecord {
    fn from(v: V1Leaf) -> LeafRecord {
        LeafRecord {
            format: FORMAT,
            vmx: format!("{}.vmx", v.name),
            id: v.id,
            base_id: v.base_id,
            base_name: v.base_name,
            name: v.name,
            path: v.path,
            created: v.created,
            snapshot: v.snapshot,
            disks: v.disks,
            adopted: false,
        }
    }
}

/// Now, as recorded in lineage.
pub(crate) fn now() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// A new random id.
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
