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
//! [`journal`] for how an interrupted one is finished or undone, and [`records`] for the lineage
//! records kept in every base store and leaf.

pub(crate) mod journal;
pub(crate) mod ops;
pub(crate) mod records;
pub(crate) mod recovery;

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use leafd_formats::clone::PathStyle;
use unicode_normalization::UnicodeNormalization;

use self::records::{BaseRecord, DiskRecord, LeafRecord, LeafRef, Listed};
use crate::durable;
use crate::error::{Error, IoContext, Kind, Result};
use crate::fsutil::{self, Cancel};

pub(crate) const MAKE_BASE: &str = "Make Base";
pub(crate) const NEW_LEAF: &str = "New Leaf";
pub(crate) const BASES: &str = "Bases";
pub(crate) const STATE: &str = ".leafd";
/// Suffix of a base's `.vmx`: Fusion opens `.vmx` files, not `.vmx.base` ones.
pub(crate) const BASE_VMX_SUFFIX: &str = ".base";
pub(crate) const BUNDLE_EXT: &str = "vmwarevm";
/// Ends the name of the note leafd leaves beside a drop it could not act on.
pub(crate) const NOTE_SUFFIX: &str = " - leafd error.txt";

/// The note file beside a drop item.
pub(crate) fn note_path(item: &Path) -> PathBuf {
    let name = item.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    item.with_file_name(format!("{name}{NOTE_SUFFIX}"))
}

/// Where a failure note says what is wrong: the line after this one.
const NOTE_WRONG: &str = "What is wrong:";

/// The note beside the drop item `name` that leafd could not `what` ("make a base from"): what
/// is wrong, and how to fix it.
pub(crate) fn failure_note(what: &str, name: &str, wrong: &str, fix: &str) -> String {
    format!(
        "leafd could not {what} \"{name}\".\n\n{NOTE_WRONG}\n  {wrong}\n\nHow to fix it:\n  {fix}\n\n\
         leafd tries again by itself as soon as \"{name}\" changes; this note and the red tag go away when it works.\n"
    )
}

/// What a note says is wrong: the reason of a [`failure_note`], else its first line.
pub(crate) fn note_reason(note: &str) -> &str {
    let first = note.lines().next().unwrap_or_default();
    note.lines().skip_while(|l| l.trim() != NOTE_WRONG).nth(1).map_or(first, str::trim)
}

/// Names leafd never takes for drops: hidden files (Finder's `.DS_Store`), and its own notes.
pub(crate) fn ignored_name(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(NOTE_SUFFIX)
}

/// A bundle's name without `.vmwarevm` ("Web.vmwarevm" is "Web"): the name of the base or leaf
/// it stands for.
pub(crate) fn bundle_stem(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((stem, ext)) if ext.eq_ignore_ascii_case(BUNDLE_EXT) && !stem.is_empty() => stem,
        _ => name,
    }
}

/// Who takes a leaf's snapshot. The default, for the command line, the agent and the library
/// alike, is `Auto`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SnapshotBackend {
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
pub(crate) struct Options {
    pub(crate) path_style: PathStyle,
    pub(crate) snapshot: SnapshotBackend,
    /// `vmrun` to use; found in the usual places when `None`.
    pub(crate) vmrun: Option<PathBuf>,
    /// Set when leafd is stopping: long copies stop and roll back.
    pub(crate) cancel: Arc<Cancel>,
}

impl Options {
    /// The file system the formats crate works through for these operations.
    pub(crate) fn env(&self) -> Arc<dyn leafd_formats::Env> {
        crate::formats_env::LeafdEnv::shared(self.cancel.clone())
    }

    /// The same, opening files only beneath `folders` (a dropped bundle is read through this).
    pub(crate) fn env_beneath(&self, folders: &[PathBuf]) -> Result<Arc<dyn leafd_formats::Env>> {
        crate::formats_env::LeafdEnv::beneath(self.cancel.clone(), folders)
            .at(folders.first().map_or(Path::new("."), PathBuf::as_path), "cannot open the folder")
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
pub(crate) struct Library {
    root: PathBuf,
}

/// A base store with its record.
#[derive(Debug, Clone)]
pub(crate) struct Base {
    pub(crate) dir: PathBuf,
    pub(crate) record: BaseRecord,
}

/// A leaf bundle with its record.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    pub(crate) dir: PathBuf,
    pub(crate) record: LeafRecord,
}

impl Leaf {
    pub(crate) fn vmx_path(&self) -> PathBuf {
        self.dir.join(&self.record.vmx)
    }

    /// This leaf's entry in its base's list.
    pub(crate) fn listing(&self) -> LeafRef {
        LeafRef {
            format: records::FORMAT,
            id: self.record.id.clone(),
            name: self.record.name.clone(),
            path: self.dir.to_string_lossy().into(),
            created: self.record.created.clone(),
        }
    }
}

/// Compares names the way a person reads them: `é` typed either way is the same letter.
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    a == b || a.nfc().eq(b.nfc())
}

/// Checks that `name` can be a file name everywhere leafd puts it (`<name>.vmwarevm` too). A
/// base's name also goes into its leaves' disk descriptors, which cannot hold a double quote.
pub(crate) fn validate_name(name: &str, what: &str, path: &Path) -> Result<()> {
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
    if what == "base" && name.contains('"') {
        return bad("contains a double quote, which its leaves' disk descriptors cannot hold");
    }
    let max = 255 - BUNDLE_EXT.len() - 1;
    if name.len() > max {
        return bad(&format!("is {} bytes long; at most {max} fit in a file name with \".{BUNDLE_EXT}\"", name.len()));
    }
    Ok(())
}

/// Makes leafd's private folder `dir` (or makes an existing one private): owner-only, whatever
/// the umask, since its journals name the user's files. Flushed, mode and entry: a journal
/// written into a folder a power cut can take away would be lost with it.
fn private_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            if m.permissions().mode() & 0o777 != 0o700 {
                durable::set_mode(dir, 0o700)?;
                durable::flush_path(dir, durable::Flush::Order)?;
            }
            // Files made here under the user's umask (the locks and journals of an older leafd).
            for p in fsutil::entries(dir)? {
                if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o777 != 0o600) {
                    durable::set_mode(&p, 0o600)?;
                }
            }
            Ok(())
        }
        Ok(_) => Err(Error::refused(dir, "is in the way of leafd's own folder").fix("move it out of the library")),
        Err(_) => {
            durable::create_dir_private(dir)?;
            durable::flush_path(dir, durable::Flush::Order)?;
            durable::flush_parent(dir, durable::Flush::Order)
        }
    }
}

impl Library {
    /// Opens the library at `root`, creating it and its folders if needed.
    pub(crate) fn open(root: &Path) -> Result<Library> {
        if root.symlink_metadata().is_ok_and(|m| !m.is_dir()) && !root.is_dir() {
            return Err(Error::refused(root, "is not a folder").fix("give --root the library's folder"));
        }
        durable::create_dir_all(root).map_err(|e| e.fix("check --root and that you may create it"))?;
        let root = root.canonicalize().at(root, "cannot resolve the library folder")?;
        let lib = Library { root };
        for dir in [lib.make_base_dir(), lib.new_leaf_dir(), lib.bases_dir()] {
            durable::create_dir_all(&dir)?;
        }
        for dir in [lib.state_dir(), lib.journal_dir(), lib.locks_dir()] {
            private_dir(&dir)?;
        }
        Ok(lib)
    }

    /// Opens an existing library without creating anything (for read-only commands).
    pub(crate) fn open_existing(root: &Path) -> Result<Library> {
        let root = root.canonicalize().map_err(|e| {
            Error::io(root, "no library here", e)
                .fix("check --root, or make one by running `leafd agent` or `leafd make-base`")
        })?;
        if !root.is_dir() {
            return Err(Error::refused(&root, "is not a folder").fix("give --root the library's folder"));
        }
        Ok(Library { root })
    }

    /// Writes the record files of bases and leaves that have only the attributes an older leafd
    /// wrote (docs/records.md). Run before a command changes the library.
    pub(crate) fn migrate(&self) -> Result<()> {
        for (dir, _) in self.stores()? {
            records::migrate_store(&dir)?;
        }
        for dir in self.bundles()? {
            records::migrate_leaf(&dir)?;
        }
        Ok(())
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn make_base_dir(&self) -> PathBuf {
        self.root.join(MAKE_BASE)
    }

    pub(crate) fn new_leaf_dir(&self) -> PathBuf {
        self.root.join(NEW_LEAF)
    }

    pub(crate) fn bases_dir(&self) -> PathBuf {
        self.root.join(BASES)
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.root.join(STATE)
    }

    pub(crate) fn journal_dir(&self) -> PathBuf {
        self.state_dir().join("journal")
    }

    pub(crate) fn locks_dir(&self) -> PathBuf {
        self.state_dir().join("locks")
    }

    /// The `.vmwarevm` folders directly in the library.
    pub(crate) fn bundles(&self) -> Result<Vec<PathBuf>> {
        let mut out = fsutil::entries(&self.root)?;
        out.retain(|p| p.extension().is_some_and(|x| x == BUNDLE_EXT) && p.is_dir());
        Ok(out)
    }

    /// Where the leaf named `name` lives.
    pub(crate) fn leaf_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.{BUNDLE_EXT}"))
    }

    /// `path` shown relative to the root when inside it (as the log shows places).
    pub(crate) fn display(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).unwrap_or(path).display().to_string()
    }

    /// Every folder in `Bases/` (hidden ones aside) with its record: `None` when it has none,
    /// an error when it cannot be read.
    pub(crate) fn stores(&self) -> Result<Vec<(PathBuf, Result<Option<BaseRecord>>)>> {
        let dir = self.bases_dir();
        let Ok(paths) = fsutil::entries(&dir) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for p in paths {
            if p.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.')) || !p.is_dir() {
                continue;
            }
            let record = records::read_base(&p);
            out.push((p, record));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Every base store with a readable record, sorted by name.
    pub(crate) fn bases(&self) -> Result<Vec<Base>> {
        let mut out: Vec<Base> = self
            .stores()?
            .into_iter()
            .filter_map(|(dir, r)| r.ok().flatten().map(|record| Base { dir, record }))
            .collect();
        out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        Ok(out)
    }

    /// The base named `name`, or a refusal that says why: its record is damaged, or there is no
    /// such base (listing the bases there are).
    pub(crate) fn base(&self, name: &str) -> Result<Base> {
        let stores = self.stores()?;
        let mut known = Vec::new();
        for (dir, record) in stores {
            match record {
                Ok(Some(record)) if same_name(&record.name, name) => return Ok(Base { dir, record }),
                Ok(Some(record)) => known.push(record.name),
                Err(e) if dir.file_name().is_some_and(|n| same_name(&n.to_string_lossy(), name)) => return Err(e),
                _ => {}
            }
        }
        known.sort();
        let fix = if known.is_empty() {
            "there are no bases yet: drop a powered-off VM into Make Base first".to_string()
        } else {
            format!("known bases: {}", known.join(", "))
        };
        Err(Error::refused(&self.bases_dir().join(name), format!("there is no base named {name:?}")).fix(fix))
    }

    /// Every leaf: the bundles in the root, and those wherever a base's list says a leaf lives
    /// (a leaf relinked from another folder, or from a folder inside the library), sorted by name.
    pub(crate) fn leaves(&self) -> Result<Vec<Leaf>> {
        let mut out = Vec::new();
        let add = |dir: PathBuf, out: &mut Vec<Leaf>| {
            if out.iter().any(|l: &Leaf| l.dir == dir) {
                return;
            }
            if let Ok(Some(record)) = records::read_leaf(&dir) {
                out.push(Leaf { dir, record });
            }
        };
        for dir in self.bundles()? {
            add(dir, &mut out);
        }
        for base in self.bases()? {
            for listed in base.leaf_refs()? {
                if let Listed::Leaf(r) = listed {
                    let dir = PathBuf::from(&r.path);
                    // A leaf of this id here already: the path is where the leaf was before the
                    // library was copied, and the leaf there is the original library's.
                    let here = out.iter().any(|l| l.record.id == r.id);
                    if dir.is_absolute() && dir.is_dir() && !here {
                        add(dir, &mut out);
                    }
                }
            }
        }
        out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        Ok(out)
    }

    /// The leaf with record id `id`, wherever the library finds leaves.
    pub(crate) fn leaf_with_id(&self, id: &str) -> Result<Option<Leaf>> {
        Ok(self.leaves()?.into_iter().find(|l| l.record.id == id))
    }

    /// Refuses to take leaf `id` off a base's list while a leaf with that id exists (other than
    /// at `but`): deleting or hand-editing a journal must never be a way to lose a base.
    pub(crate) fn refuse_if_leaf_exists(&self, id: &str, but: Option<&Path>, journal: &str) -> Result<()> {
        match self.leaf_with_id(id)? {
            Some(l) if Some(l.dir.as_path()) != but => Err(Error::refused(
                &l.dir,
                format!("is leaf {:?}, which the interrupted operation would take off its base's list", l.record.name),
            )
            .fix(format!("the journal does not match the library: see `leafd recover --show {journal}`, then `leafd recover --discard {journal}`"))),
            _ => Ok(()),
        }
    }

    /// The leaf `arg` names: a path to its bundle, or the name of a leaf (found wherever its
    /// record says it lives, inside the library or not).
    pub(crate) fn find_leaf(&self, arg: &Path) -> Result<Leaf> {
        let name = arg.to_string_lossy();
        let dir = if arg.is_dir() {
            arg.to_path_buf()
        } else {
            let mut named: Vec<Leaf> =
                self.leaves()?.into_iter().filter(|l| same_name(&l.record.name, bundle_stem(&name))).collect();
            match named.len() {
                0 => self.leaf_path(bundle_stem(&name)),
                1 => return Ok(named.remove(0)),
                // A leaf moved out and relinked, then a new one of its name: never guess which.
                n => {
                    let places: Vec<String> = named.iter().map(|l| l.dir.display().to_string()).collect();
                    return Err(Error::refused(
                        self.root(),
                        format!("{n} leaves are named {:?}: {}", bundle_stem(&name), places.join(", ")),
                    )
                    .fix("give the path of the leaf you mean instead of its name"));
                }
            }
        };
        let dir = dir.canonicalize().map_err(|e| {
            Error::io(&dir, "no leaf here", e).fix("give the leaf's path, or the name of a leaf in the library")
        })?;
        let record = records::read_leaf(&dir)?.ok_or_else(|| {
            Error::refused(&dir, "is not a leaf made by leafd (no lineage record)")
                .fix("run `leafd verify` in its library to rebuild the record")
        })?;
        Ok(Leaf { dir, record })
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.locks_dir().join(format!("{name}.lock"))
    }

    /// Takes the lock named `name` (waiting for it); held until the file is dropped.
    pub(crate) fn lock(&self, name: &str) -> Result<File> {
        let path = self.lock_path(name);
        let f = durable::lock_file(&path)?;
        f.lock().at(&path, "cannot take lock")?;
        Ok(f)
    }

    /// Takes the lock that serializes changes to base `id`: its records and its list of leaves.
    pub(crate) fn lock_base(&self, id: &str) -> Result<File> {
        self.lock(&format!("base-{id}"))
    }

    /// Takes the lock named `name` if free; `Busy` when another process holds it.
    pub(crate) fn try_lock(&self, name: &str) -> Result<File> {
        let path = self.lock_path(name);
        let f = durable::lock_file(&path)?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(fs::TryLockError::WouldBlock) => Err(Error::new(Kind::Busy, path, "held by another leafd process")),
            Err(fs::TryLockError::Error(e)) => Err(Error::io(&path, "cannot take lock", e)),
        }
    }
}

/// Whether the folder `dir` holds the base with id `id` (its record says so).
pub(crate) fn base_at(dir: &Path, id: &str) -> Result<bool> {
    Ok(records::read_base(dir)?.is_some_and(|r| r.id == id))
}

impl Base {
    /// Takes this base's lock, then checks that its folder still holds this base: while waiting,
    /// it may have been removed, and another base may have taken its name.
    pub(crate) fn lock(&self, lib: &Library) -> Result<File> {
        let lock = lib.lock_base(&self.record.id)?;
        if !base_at(&self.dir, &self.record.id)? {
            return Err(Error::new(Kind::Busy, self.dir.clone(), "the base changed while waiting for it (removed?)"));
        }
        Ok(lock)
    }

    pub(crate) fn descriptor_path(&self, disk: &DiskRecord) -> PathBuf {
        self.dir.join(&disk.descriptor)
    }

    pub(crate) fn vmx_path(&self) -> PathBuf {
        self.dir.join(&self.record.vmx)
    }

    /// The leaves recorded as made from this base (and markers whose record is damaged).
    pub(crate) fn leaf_refs(&self) -> Result<Vec<Listed>> {
        records::leaf_refs(&self.dir)
    }

    /// The readable entries of this base's list of leaves.
    pub(crate) fn leaves_listed(&self) -> Result<Vec<LeafRef>> {
        Ok(self
            .leaf_refs()?
            .into_iter()
            .filter_map(|l| match l {
                Listed::Leaf(r) => Some(r),
                Listed::Damaged(..) => None,
            })
            .collect())
    }
}
