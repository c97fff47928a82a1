//! The library on disk (SPEC §1) and the operations on it.
//!
//! ```text
//! <root>/
//!   Make Base/            drop folder: VM bundles to turn into bases
//!   New Leaf/<base>/      drop folders: a new folder here becomes a leaf
//!   Bases/<name>/         base stores (disks read-only and locked)
//!   <leaf>.vmwarevm       leaves
//!   .leafd/               journal of operations in progress, locks
//! ```
//!
//! Every operation is a transaction recorded in the journal before it changes anything; see
//! [`journal`] for how an interrupted one is finished or undone.

pub mod journal;
pub mod make_base;
pub mod new_leaf;
pub mod promote;
pub mod records;
#[allow(dead_code)]
mod journal_next;
pub mod relink;
pub mod remove_base;
pub mod status;
pub mod verify;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use leafd_formats::clone::PathStyle;
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, IoContext, Kind, Result};
use crate::fsutil::Cancel;
use crate::lineage::{self, BaseRecord, DiskRecord, LeafRecord, LeafRef};

pub const MAKE_BASE: &str = "Make Base";
pub const NEW_LEAF: &str = "New Leaf";
pub const BASES: &str = "Bases";
pub const STATE: &str = ".leafd";
/// Suffix of a base's `.vmx`: Fusion opens `.vmx` files, not `.vmx.base` ones.
pub const BASE_VMX_SUFFIX: &str = ".base";
/// Prefix of the hidden folders operations build in before renaming them into place.
pub const STAGING_PREFIX: &str = ".leafd-staging-";
pub const BUNDLE_EXT: &str = "vmwarevm";
/// Ends the name of the note leafd leaves beside a drop it could not act on.
pub const NOTE_SUFFIX: &str = " - leafd error.txt";

/// The note file beside a drop item.
pub fn note_path(item: &Path) -> PathBuf {
    let name = item.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    item.with_file_name(format!("{name}{NOTE_SUFFIX}"))
}

/// Who takes a leaf's snapshot. The default, for the command line, the agent and the library
/// alike, is `Auto`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotBackend {
    /// VMware's `vmrun` when it is installed, else (or when it fails) leafd's own writer.
    #[default]
    Auto,
    /// leafd's own writer (always available; the tested path).
    Native,
    /// VMware's `vmrun` only.
    Vmrun,
}

/// Settings the operations follow.
#[derive(Clone)]
pub struct Options {
    pub path_style: PathStyle,
    pub snapshot: SnapshotBackend,
    /// `vmrun` to use; found in the usual places when `None`.
    pub vmrun: Option<PathBuf>,
    /// Set when leafd is stopping: long copies stop and roll back.
    pub cancel: Arc<Cancel>,
}

impl Options {
    /// The file system the formats crate works through for these operations.
    pub fn env(&self) -> Arc<dyn leafd_formats::Env> {
        crate::formats_env::LeafdEnv::shared(self.cancel.clone())
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            path_style: PathStyle::Relative,
            snapshot: SnapshotBackend::default(),
            vmrun: None,
            cancel: Arc::new(Cancel::new(false)),
        }
    }
}

/// An open library.
#[derive(Debug, Clone)]
pub struct Library {
    root: PathBuf,
}

/// A base store with its record.
#[derive(Debug, Clone)]
pub struct Base {
    pub dir: PathBuf,
    pub record: BaseRecord,
}

/// A leaf bundle with its record.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub dir: PathBuf,
    pub record: LeafRecord,
}

/// Compares names the way a person reads them: `é` typed either way is the same letter.
pub fn same_name(a: &str, b: &str) -> bool {
    a == b || a.nfc().eq(b.nfc())
}

/// Checks that `name` can be a file name everywhere leafd puts it (`<name>.vmwarevm` too).
pub fn validate_name(name: &str, what: &str, path: &Path) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::refused(path, format!("{what} name {name:?} {why}"))
            .fix("rename it to a plain name such as \"Web Server\""))
    };
    if name.trim().is_empty() {
        return bad("is empty");
    }
    if name == "." || name == ".." {
        return bad("is not a name");
    }
    if name.starts_with('.') {
        return bad("starts with a dot, which hides it");
    }
    if name.contains('/') {
        return bad("contains a slash");
    }
    if name.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    let max = 255 - BUNDLE_EXT.len() - 1;
    if name.len() > max {
        return bad(&format!("is {} bytes long; at most {max} fit in a file name with \".{BUNDLE_EXT}\"", name.len()));
    }
    Ok(())
}

impl Library {
    /// Opens the library at `root`, creating it and its folders if needed.
    pub fn open(root: &Path) -> Result<Library> {
        fs::create_dir_all(root).at(root, "cannot create the library folder")?;
        let root = root.canonicalize().at(root, "cannot resolve the library folder")?;
        let lib = Library { root };
        for dir in [
            lib.make_base_dir(),
            lib.new_leaf_dir(),
            lib.bases_dir(),
            lib.state_dir(),
            lib.journal_dir(),
            lib.locks_dir(),
        ] {
            fs::create_dir_all(&dir).at(&dir, "cannot create library folder")?;
        }
        Ok(lib)
    }

    /// Opens an existing library without creating anything (for read-only commands).
    pub fn open_existing(root: &Path) -> Result<Library> {
        let root = root.canonicalize().map_err(|e| {
            Error::io(root, "no library here", e)
                .fix("check --root, or make one by running `leafd agent` or `leafd make-base`")
        })?;
        Ok(Library { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn make_base_dir(&self) -> PathBuf {
        self.root.join(MAKE_BASE)
    }

    pub fn new_leaf_dir(&self) -> PathBuf {
        self.root.join(NEW_LEAF)
    }

    pub fn bases_dir(&self) -> PathBuf {
        self.root.join(BASES)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE)
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.state_dir().join("journal")
    }

    pub fn locks_dir(&self) -> PathBuf {
        self.state_dir().join("locks")
    }

    /// Where the leaf named `name` lives.
    pub fn leaf_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.{BUNDLE_EXT}"))
    }

    /// `path` shown relative to the root when inside it (as the log shows places).
    pub fn display(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).unwrap_or(path).display().to_string()
    }

    /// Every base store with a readable record, sorted by name.
    pub fn bases(&self) -> Result<Vec<Base>> {
        let dir = self.bases_dir();
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(out);
        };
        for e in rd {
            let p = e.at(&dir, "cannot list bases")?.path();
            if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) || !p.is_dir() {
                continue;
            }
            if let Ok(Some(record)) = lineage::read::<BaseRecord>(&p, lineage::BASE) {
                out.push(Base { dir: p, record });
            }
        }
        out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        Ok(out)
    }

    /// The base named `name`, or a refusal that lists the bases there are.
    pub fn base(&self, name: &str) -> Result<Base> {
        let bases = self.bases()?;
        if let Some(b) = bases.iter().find(|b| same_name(&b.record.name, name)) {
            return Ok(b.clone());
        }
        let known: Vec<&str> = bases.iter().map(|b| b.record.name.as_str()).collect();
        let fix = if known.is_empty() {
            "there are no bases yet: drop a powered-off VM into Make Base first".to_string()
        } else {
            format!("known bases: {}", known.join(", "))
        };
        Err(Error::refused(&self.bases_dir().join(name), format!("there is no base named {name:?}")).fix(fix))
    }

    /// Every leaf bundle directly in the root, sorted by name.
    pub fn leaves(&self) -> Result<Vec<Leaf>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root).at(&self.root, "cannot list the library")? {
            let p = e.at(&self.root, "cannot list the library")?.path();
            if p.extension().is_some_and(|x| x == BUNDLE_EXT)
                && p.is_dir()
                && let Ok(Some(record)) = lineage::read::<LeafRecord>(&p, lineage::LEAF)
            {
                out.push(Leaf { dir: p, record });
            }
        }
        out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        Ok(out)
    }

    /// Takes the lock named `name` (waiting for it); held until the file is dropped.
    pub fn lock(&self, name: &str) -> Result<File> {
        let path = self.locks_dir().join(format!("{name}.lock"));
        let f = File::options().create(true).truncate(false).write(true).open(&path).at(&path, "cannot open lock")?;
        f.lock().at(&path, "cannot take lock")?;
        Ok(f)
    }

    /// Takes the lock that serializes changes to base `id`: its records and its list of leaves.
    pub fn lock_base(&self, id: &str) -> Result<File> {
        self.lock(&format!("base-{id}"))
    }

    /// Takes the lock named `name` if free; `Busy` when another process holds it.
    pub fn try_lock(&self, name: &str) -> Result<File> {
        let path = self.locks_dir().join(format!("{name}.lock"));
        let f = File::options().create(true).truncate(false).write(true).open(&path).at(&path, "cannot open lock")?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(fs::TryLockError::WouldBlock) => Err(Error::new(Kind::Busy, path, "held by another leafd process")),
            Err(fs::TryLockError::Error(e)) => Err(Error::io(&path, "cannot take lock", e)),
        }
    }
}

/// Whether the folder `dir` holds the base with id `id` (its record says so).
pub(crate) fn base_at(dir: &Path, id: &str) -> Result<bool> {
    Ok(lineage::read::<BaseRecord>(dir, lineage::BASE)?.is_some_and(|r| r.id == id))
}

impl Base {
    /// Takes this base's lock, then checks that its folder still holds this base: while waiting,
    /// it may have been removed, and another base may have taken its name.
    pub fn lock(&self, lib: &Library) -> Result<File> {
        let lock = lib.lock_base(&self.record.id)?;
        if !base_at(&self.dir, &self.record.id)? {
            return Err(Error::new(Kind::Busy, self.dir.clone(), "the base changed while waiting for it (removed?)"));
        }
        Ok(lock)
    }

    pub fn descriptor_path(&self, disk: &DiskRecord) -> PathBuf {
        self.dir.join(&disk.descriptor)
    }

    pub fn vmx_path(&self) -> PathBuf {
        self.dir.join(&self.record.vmx)
    }

    pub fn leaves_dir(&self) -> PathBuf {
        self.dir.join(lineage::LEAVES_DIR)
    }

    /// The leaves recorded as made from this base.
    pub fn leaf_refs(&self) -> Result<Vec<LeafRef>> {
        let dir = self.leaves_dir();
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(out);
        };
        for e in rd {
            let p = e.at(&dir, "cannot list leaves")?.path();
            if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue; // a marker being written
            }
            if let Some(r) = lineage::read::<LeafRef>(&p, lineage::LEAF_REF)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// Refuses a VM file that shows the VM is running (VMware's `.lck` locks, the `.vmem` memory
/// file) or suspended (`.vmss`): its disks may change under leafd.
pub fn refuse_if_in_use(path: &Path) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let running = |what: &str| {
        Err(Error::refused(path, format!("the VM is running ({what})"))
            .fix("shut the VM down in VMware and quit VMware; leafd retries by itself when the lock goes away"))
    };
    if name.ends_with(".lck") {
        return running("VMware's lock is present");
    }
    if name.ends_with(".vmem") {
        return running("its memory file is present");
    }
    if name.ends_with(".vmss") {
        return Err(Error::refused(path, "the VM is suspended").fix("resume it in VMware, shut it down, and try again"));
    }
    Ok(())
}

/// Refuses a VM whose `.vmx` says it is suspended.
pub fn refuse_if_suspended(vmx_path: &Path, vmx: &leafd_formats::dict::Dict) -> Result<()> {
    if vmx.get("checkpoint.vmState").is_some_and(|v| !v.is_empty()) {
        return Err(
            Error::refused(vmx_path, "the VM is suspended").fix("resume it in VMware, shut it down, and try again")
        );
    }
    Ok(())
}

/// Records `leaf` in the list of the base in `base_dir` (the caller holds the base's lock). The
/// marker appears whole: written under a hidden name with its record, then renamed.
pub fn link_leaf(base_dir: &Path, leaf: &LeafRef) -> Result<()> {
    let dir = base_dir.join(lineage::LEAVES_DIR);
    fs::create_dir_all(&dir).at(&dir, "cannot create the base's leaf list")?;
    let marker = dir.join(&leaf.id);
    let tmp = dir.join(format!(".tmp-{}", leaf.id));
    fs::write(&tmp, b"").at(&tmp, "cannot record the leaf on its base")?;
    lineage::write(&tmp, lineage::LEAF_REF, leaf)?;
    fs::rename(&tmp, &marker).at(&marker, "cannot record the leaf on its base")?;
    crate::platform::sync_dir(&dir).at(&dir, "cannot flush folder")
}

/// Removes leaf `id` from the list of the base in `base_dir` (the caller holds the base's lock).
pub fn unlink_leaf(base_dir: &Path, id: &str) -> Result<()> {
    let marker = base_dir.join(lineage::LEAVES_DIR).join(id);
    match fs::remove_file(&marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(&marker, "cannot update the base's leaf list", e))
        }
        _ => Ok(()),
    }
}
