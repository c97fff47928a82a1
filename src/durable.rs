//! Every change leafd makes to the file system, flushed by one rule (docs/durability.md):
//!
//! 1. every change to a file (data, length, extended attribute, mode, flags) is flushed before a
//!    rename publishes it (the rename of the file itself or of a folder above it);
//! 2. a folder whose entries changed is flushed before a rename publishes it, and after every
//!    rename both folders are flushed;
//! 3. nothing leafd published is left unflushed when the operation ends;
//! 4. a base file, once published, is never opened for writing.
//!
//! The functions here keep 2 themselves (a rename flushes both folders); callers keep 1 and 3
//! by flushing what they changed before they publish it, which the trace checks.
//!
//! With `LEAFD_IO_TRACE=FILE` each call appends one JSON line (its number, the operation, the
//! path, device and inode) for the ordering tests; with `LEAFD_FAULT=io:N` the Nth call after
//! [`arm`] fails with `EIO` (see [`crate::testing::fault`]).
//!
//! Progress records (`.leafd/progress/`, docs/progress.md) are not data: the `*_volatile`
//! functions trace their changes like every other, but never count them for `LEAFD_FAULT=io:N`
//! nor fail them (how many there are depends on time), and never flush them (recovery removes
//! what a crash leaves).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rustix::io::Errno;
use serde_json::{Value, json};

use crate::error::{Error, IoContext, Result};
use crate::platform;
use crate::progress::meter;
use crate::testing::fault;

pub(crate) use crate::platform::Flush;

const TRACE_ENV: &str = "LEAFD_IO_TRACE";

static SEQ: AtomicU64 = AtomicU64::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);
static ARMED_CALLS: AtomicU64 = AtomicU64::new(0);

fn trace_file() -> Option<&'static Mutex<File>> {
    static TRACE: OnceLock<Option<Mutex<File>>> = OnceLock::new();
    TRACE
        .get_or_init(|| {
            let path = std::env::var_os(TRACE_ENV)?;
            OpenOptions::new().create(true).append(true).open(path).ok().map(Mutex::new)
        })
        .as_ref()
}

/// Starts counting calls for `LEAFD_FAULT=io:N`: an operation's journal is written, so from here
/// on every failure must leave the untouched source or the finished result.
pub(crate) fn arm() {
    ARMED.store(true, Ordering::SeqCst);
}

/// One call through this module (`op` on `path`): numbered, and failed on purpose when it is
/// the one `LEAFD_FAULT=io:N` names, which the trace records as a `fault` of `op`. Returns the
/// numbers to trace it by.
fn call(op: &str, path: &Path) -> io::Result<(u64, u64)> {
    let n = SEQ.fetch_add(1, Ordering::SeqCst) + 1;
    let armed = if ARMED.load(Ordering::SeqCst) { ARMED_CALLS.fetch_add(1, Ordering::SeqCst) + 1 } else { 0 };
    if armed > 0 && fault::io_call() == Some(armed) {
        record((n, armed), "fault", path, || json!({"of": op}));
        return Err(Errno::IO.into());
    }
    Ok((n, armed))
}

/// The numbers of a call of the `*_volatile` functions: in the trace's order, and never armed.
fn uncounted() -> (u64, u64) {
    (SEQ.fetch_add(1, Ordering::SeqCst) + 1, 0)
}

/// Device and inode, for the trace.
fn id_of(meta: &fs::Metadata) -> [u64; 2] {
    [meta.dev(), meta.ino()]
}

fn path_id(p: &Path) -> Option<[u64; 2]> {
    fs::symlink_metadata(p).ok().map(|m| id_of(&m))
}

fn parent_id(p: &Path) -> Option<[u64; 2]> {
    p.parent().and_then(path_id)
}

/// Appends the trace line of a call that succeeded; `fields` is built only when tracing.
fn record((n, armed): (u64, u64), op: &str, path: &Path, fields: impl FnOnce() -> Value) {
    let Some(file) = trace_file() else { return };
    let mut line = json!({"n": n, "armed": armed, "pid": std::process::id(), "op": op, "path": path});
    if let (Value::Object(line), Value::Object(extra)) = (&mut line, fields()) {
        line.extend(extra);
    }
    let mut text = line.to_string();
    text.push('\n');
    if let Ok(mut f) = file.lock() {
        // One write per line: lines of processes sharing the file never interleave.
        let _ = f.write_all(text.as_bytes());
    }
}

/// A file leafd writes: every change to it goes through here.
#[derive(Debug)]
pub(crate) struct Written {
    file: File,
    path: PathBuf,
}

impl Written {
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    fn id(&self) -> Option<[u64; 2]> {
        self.file.metadata().ok().map(|m| id_of(&m))
    }

    pub(crate) fn write_at(&self, bytes: &[u8], offset: u64) -> Result<()> {
        let c = call("write", &self.path).at(&self.path, "cannot write")?;
        self.file.write_all_at(bytes, offset).at(&self.path, "cannot write")?;
        record(c, "write", &self.path, || json!({"id": self.id(), "offset": offset, "len": bytes.len()}));
        Ok(())
    }

    pub(crate) fn set_len(&self, len: u64) -> Result<()> {
        let c = call("truncate", &self.path).at(&self.path, "cannot set the length of")?;
        self.file.set_len(len).at(&self.path, "cannot set the length of")?;
        record(c, "truncate", &self.path, || json!({"id": self.id(), "len": len}));
        Ok(())
    }

    pub(crate) fn set_mode(&self, mode: u32) -> Result<()> {
        let c = call("chmod", &self.path).at(&self.path, "cannot set permissions")?;
        platform::set_mode_fd(&self.file, mode).at(&self.path, "cannot set permissions")?;
        record(c, "chmod", &self.path, || json!({"id": self.id(), "mode": mode}));
        Ok(())
    }

    pub(crate) fn set_modified(&self, time: std::time::SystemTime) -> Result<()> {
        let c = call("times", &self.path).at(&self.path, "cannot set the time of")?;
        self.file.set_modified(time).at(&self.path, "cannot set the time of")?;
        record(c, "times", &self.path, || json!({"id": self.id()}));
        Ok(())
    }

    pub(crate) fn flush(&self, kind: Flush) -> Result<()> {
        flush_open(&self.file, &self.path, kind)
    }

    pub(crate) fn into_file(self) -> File {
        self.file
    }
}

fn flush_open(file: &File, path: &Path, kind: Flush) -> Result<()> {
    let c = call("flush", path).at(path, "cannot flush")?;
    if let Some(fallback) = platform::flush(file, kind).at(path, "cannot flush")? {
        tracing::warn!("{}: {fallback}", path.display());
    }
    record(
        c,
        "flush",
        path,
        || json!({"id": file.metadata().ok().map(|m| id_of(&m)), "kind": format!("{kind:?}").to_lowercase()}),
    );
    Ok(())
}

fn created(c: (u64, u64), op: &str, path: &Path) {
    record(c, op, path, || json!({"id": path_id(path), "dir": parent_id(path)}));
}

/// Creates `path`, which must not exist, for writing (the user's umask applies).
pub(crate) fn create_new(path: &Path) -> Result<Written> {
    create_with_mode(path, 0o666)
}

/// Creates `path`, which must not exist, readable and writable by its owner only (`.leafd/`).
pub(crate) fn create_private(path: &Path) -> Result<Written> {
    let w = create_with_mode(path, 0o600)?;
    // The umask can only take bits away: 0600 exactly, whatever it is.
    w.set_mode(0o600)?;
    Ok(w)
}

fn create_with_mode(path: &Path, mode: u32) -> Result<Written> {
    let c = call("create", path).at(path, "cannot create")?;
    let file =
        OpenOptions::new().read(true).write(true).create_new(true).mode(mode).open(path).at(path, "cannot create")?;
    created(c, "create", path);
    Ok(Written { file, path: path.to_path_buf() })
}

/// Creates `path`, which must not exist, holding `bytes`, flushed.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let w = create_new(path)?;
    w.write_at(bytes, 0)?;
    w.flush(Flush::Order)
}

/// A name for a temporary file beside `path`, unique to this call. It fits wherever `path`'s
/// own name does: a long name is cut (at a character) to leave room for the suffix.
fn temporary(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut name = path.file_name().map(OsStr::to_string_lossy).unwrap_or_default().into_owned();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let suffix = format!(".tmp-{}-{n}", std::process::id());
    // Bytes: the stricter count everywhere.
    while 1 + name.len() + suffix.len() > leafd_formats::disk::MAX_FILE_NAME {
        name.pop();
    }
    path.with_file_name(format!(".{name}{suffix}"))
}

/// Replaces `path` with `bytes` atomically: a crash leaves the old file or the new one, never a
/// torn one. The temporary file goes when anything fails.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary(path);
    let written = (|| {
        let w = create_new(&tmp)?;
        w.write_at(bytes, 0)?;
        w.flush(Flush::Order)
    })();
    let result = written.and_then(|()| {
        let c = call("rename", &tmp).at(path, "cannot replace")?;
        fs::rename(&tmp, path).at(path, "cannot replace")?;
        record(c, "rename", &tmp, || json!({"to": path, "id": path_id(path), "dir": parent_id(path)}));
        flush_parent(path, Flush::Order)
    });
    if result.is_err() {
        // Best effort, and through here like every change: traced, and the removal flushed.
        let _ = remove_file(&tmp).and_then(|()| flush_parent(&tmp, Flush::Order));
    }
    result
}

/// Makes the folder `path` (its parent must exist).
pub(crate) fn create_dir(path: &Path) -> Result<()> {
    create_dir_with(path, None)
}

/// Makes the folder `path` for leafd's private state: owner-only (0700) whatever the umask.
pub(crate) fn create_dir_private(path: &Path) -> Result<()> {
    create_dir_with(path, Some(0o700))
}

fn create_dir_with(path: &Path, mode: Option<u32>) -> Result<()> {
    let c = call("mkdir", path).at(path, "cannot create folder")?;
    fs::create_dir(path).at(path, "cannot create folder")?;
    created(c, "mkdir", path);
    if let Some(mode) = mode {
        set_mode(path, mode)?;
    }
    Ok(())
}

/// Makes `path` and any missing folders above it, each flushed into its parent (these are
/// made outside a staging folder, which would be flushed as a whole).
pub(crate) fn create_dir_all(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        create_dir_all(parent)?;
    }
    match create_dir(path) {
        // Made meanwhile by another process: fine.
        Err(_) if path.is_dir() => Ok(()),
        Err(e) => Err(e),
        Ok(()) => flush_parent(path, Flush::Order),
    }
}

/// Renames `from` to `to` without ever replacing an existing `to`, and flushes both folders.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    let c = call("rename", from).at(from, &format!("cannot move to {}", to.display()))?;
    platform::rename_noreplace(from, to).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            Error::refused(to, "already exists").fix("choose another name, or move the existing item away")
        } else {
            Error::io(from, &format!("cannot move to {}", to.display()), e)
        }
    })?;
    record(c, "rename", from, || json!({"to": to, "id": path_id(to), "dir": parent_id(from), "to_dir": parent_id(to)}));
    // Both folders, even when the first flush fails: the error path must not start from a
    // rename half flushed.
    let from_flushed = flush_parent(from, Flush::Commit);
    let to_flushed = if from.parent() != to.parent() { flush_parent(to, Flush::Commit) } else { Ok(()) };
    from_flushed.and(to_flushed)
}

/// Moves `path` to the Trash as `name` ([`platform::trash`]: the freedesktop.org Trash on Linux,
/// with its `.trashinfo` flushed first) and flushes both folders. Returns where it went. Where
/// no Trash can be used the error's kind is `Unsupported`, and nothing moved.
pub(crate) fn trash(path: &Path, name: &str) -> Result<PathBuf> {
    let c = call("rename", path).at(path, "cannot move to the Trash")?;
    let to = platform::trash(path, name).at(path, "cannot move to the Trash")?;
    record(
        c,
        "rename",
        path,
        || json!({"to": to, "id": path_id(&to), "dir": parent_id(path), "to_dir": parent_id(&to)}),
    );
    let from_flushed = flush_parent(path, Flush::Commit);
    from_flushed.and(flush_parent(&to, Flush::Commit))?;
    Ok(to)
}

/// Makes `to` a second name of the file `from` (which must be a file).
pub(crate) fn hard_link(from: &Path, to: &Path) -> Result<()> {
    let c = call("link", to).at(to, "cannot link")?;
    fs::hard_link(from, to).at(to, "cannot link")?;
    created(c, "link", to);
    Ok(())
}

/// Makes the symbolic link `at` pointing to `target`.
pub(crate) fn symlink(target: &Path, at: &Path) -> Result<()> {
    let c = call("symlink", at).at(at, "cannot make link")?;
    std::os::unix::fs::symlink(target, at).at(at, "cannot make link")?;
    created(c, "symlink", at);
    Ok(())
}

/// Removes the file (or link) `path`; one already gone is fine.
pub(crate) fn remove_file(path: &Path) -> Result<()> {
    remove_entry(path, false)
}

/// Removes the empty folder `path`; one already gone is fine.
pub(crate) fn remove_dir(path: &Path) -> Result<()> {
    remove_entry(path, true)
}

fn remove_entry(path: &Path, dir: bool) -> Result<()> {
    let what = if dir { "cannot remove folder" } else { "cannot remove" };
    let c = call(if dir { "rmdir" } else { "unlink" }, path).at(path, what)?;
    let id = path_id(path);
    let removed = if dir { fs::remove_dir(path) } else { fs::remove_file(path) };
    match removed {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        r => r.at(path, what)?,
    }
    record(c, if dir { "rmdir" } else { "unlink" }, path, || json!({"id": id, "dir": parent_id(path)}));
    Ok(())
}

/// Removes the folder tree `dir` (first lifting any protection leafd set in it), then flushes
/// the folder it was in. `last`, a file in it (a working folder's stamp), goes after everything
/// else: a removal cut short leaves the folder still known by it. Callers decide whether the
/// tree is theirs to remove.
pub(crate) fn remove_tree(dir: &Path, last: Option<&Path>) -> Result<()> {
    if dir.symlink_metadata().is_err() {
        return Ok(());
    }
    let mut entries = crate::fsutil::walk(dir)?;
    entries.reverse();
    if let Some(at) = last.and_then(|l| entries.iter().position(|p| p == l)) {
        let stamp = entries.remove(at);
        entries.push(stamp);
    }
    for p in &entries {
        let m = fs::symlink_metadata(p).at(p, "cannot stat")?;
        if m.is_dir() {
            remove_dir(p)?;
        } else {
            if m.is_file() && platform::is_locked(p).unwrap_or(false) {
                set_locked(p, false)?;
            }
            remove_file(p)?;
        }
    }
    remove_dir(dir)?;
    flush_parent(dir, Flush::Order)
}

/// Sets the permission bits of `path` (a file or folder; never follows a link).
pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    let c = call("chmod", path).at(path, "cannot set permissions")?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).at(path, "cannot set permissions")?;
    record(c, "chmod", path, || json!({"id": path_id(path), "mode": mode}));
    Ok(())
}

/// Sets or clears the Finder's Locked flag (macOS; nothing on Linux).
pub(crate) fn set_locked(path: &Path, locked: bool) -> Result<()> {
    let c = call("lock", path).at(path, "cannot change the Locked flag of")?;
    platform::set_locked(path, locked).at(path, "cannot change the Locked flag of")?;
    record(c, "lock", path, || json!({"id": path_id(path), "on": locked}));
    Ok(())
}

/// Lifts the protection and sets the permission bits to `mode`.
pub(crate) fn unprotect(path: &Path, mode: u32) -> Result<()> {
    if platform::is_locked(path).at(path, "cannot stat")? {
        set_locked(path, false)?;
    }
    set_mode(path, mode)
}

/// Write-protects the base file open as `file` (at `path`): mode and flags changed through the
/// descriptor, then flushed, so the file checked is the file changed.
pub(crate) fn protect_open(file: &File, path: &Path) -> Result<()> {
    let mode = file.metadata().at(path, "cannot stat")?.permissions().mode() & 0o7777;
    let id = || file.metadata().ok().map(|m| id_of(&m));
    let c = call("chmod", path).at(path, "cannot write-protect")?;
    platform::set_mode_fd(file, mode & !0o222).at(path, "cannot write-protect")?;
    record(c, "chmod", path, || json!({"id": id(), "mode": mode & !0o222}));
    let c = call("lock", path).at(path, "cannot lock")?;
    platform::set_locked_fd(file, true).at(path, "cannot lock")?;
    record(c, "lock", path, || json!({"id": id(), "on": true}));
    flush_open(file, path, Flush::Order)
}

/// Adds or removes one of leafd's Finder tags, keeping the user's others.
pub(crate) fn set_tag(path: &Path, tag: platform::Tag, on: bool) -> io::Result<()> {
    let mut tags = platform::tags(path)?;
    if tags.iter().any(|t| t == tag.name()) == on {
        return Ok(());
    }
    if on {
        tags.push(tag.name().to_string());
    } else {
        tags.retain(|t| t != tag.name());
    }
    match platform::encode_tags(&tags)? {
        Some(value) => set_xattr(path, platform::TAGS_XATTR, &value),
        None => remove_xattr(path, platform::TAGS_XATTR),
    }
}

/// Sets extended attribute `name` of `path`. Fails with `ENOTSUP` on a volume without them.
pub(crate) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = call("xattr", path)?;
    if fault::xattrs_unsupported() {
        return Err(Errno::NOTSUP.into());
    }
    xattr::set(path, name, value)?;
    record(c, "xattr", path, || json!({"id": path_id(path), "name": name}));
    Ok(())
}

/// Removes extended attribute `name` of `path`; an absent one is fine.
pub(crate) fn remove_xattr(path: &Path, name: &str) -> io::Result<()> {
    let c = call("rmxattr", path)?;
    if fault::xattrs_unsupported() {
        return Err(Errno::NOTSUP.into());
    }
    platform::remove_xattr(path, name)?;
    record(c, "rmxattr", path, || json!({"id": path_id(path), "name": name}));
    Ok(())
}

/// Flushes the file or folder at `path`.
pub(crate) fn flush_path(path: &Path, kind: Flush) -> Result<()> {
    let file = File::open(path).at(path, "cannot open to flush")?;
    flush_open(&file, path, kind)
}

/// Flushes the folder holding `path`.
pub(crate) fn flush_parent(path: &Path, kind: Flush) -> Result<()> {
    flush_path(path.parent().unwrap_or(Path::new(".")), kind)
}

/// Flushes every file and folder under `dir`, and `dir` itself: everything leafd made in a
/// staging folder, before it publishes it.
pub(crate) fn flush_tree(dir: &Path, kind: Flush) -> Result<()> {
    for p in crate::fsutil::walk(dir)? {
        let m = fs::symlink_metadata(&p).at(&p, "cannot stat")?;
        if m.is_file() || m.is_dir() {
            flush_path(&p, kind)?;
        }
    }
    flush_path(dir, kind)
}

/// Copies one regular file, keeping holes, permissions, times and extended attributes, and
/// flushes it. `dst` must not exist. Reports each chunk read to the progress meter: in all,
/// [`crate::fsutil::data_bytes`] of `src`.
pub(crate) fn copy_file(src: &Path, dst: &Path, cancel: &crate::fsutil::Cancel) -> Result<()> {
    let from = platform::open_regular(src, false).at(src, "cannot open for copying")?;
    let meta = from.metadata().at(src, "cannot stat")?;
    let to = create_private(dst)?;
    let mut buf = vec![0u8; crate::fsutil::CHUNK as usize];
    for c in crate::fsutil::data_chunks(&from, meta.len()) {
        crate::fsutil::check(cancel, src)?;
        let at = c * crate::fsutil::CHUNK;
        let n = (meta.len() - at).min(crate::fsutil::CHUNK) as usize;
        from.read_exact_at(&mut buf[..n], at).at(src, "cannot read")?;
        if !buf[..n].iter().all(|&b| b == 0) {
            to.write_at(&buf[..n], at)?;
        }
        meter::add(n as u64);
    }
    to.set_len(meta.len())?;
    if let Ok(names) = xattr::list(src) {
        for name in names {
            if let (Some(name), Ok(Some(v))) = (name.to_str(), xattr::get(src, &name)) {
                // Best effort: a destination without extended attributes still gets the bytes.
                let _ = set_xattr(dst, name, &v);
            }
        }
    }
    to.set_mode(meta.mode() & 0o7777)?;
    if let Ok(mtime) = meta.modified() {
        to.set_modified(mtime)?;
    }
    to.flush(Flush::Order)
}

/// Replaces `path` with `bytes` atomically for readers (a temporary file renamed over it), not
/// flushed and not counted (see the module's documentation). The temporary file goes when
/// anything fails.
pub(crate) fn write_volatile(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temporary(path);
    let result = (|| {
        let c = uncounted();
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        created(c, "create", &tmp);
        let c = uncounted();
        file.write_all_at(bytes, 0)?;
        let id = file.metadata().ok().map(|m| id_of(&m));
        record(c, "write", &tmp, || json!({"id": id, "offset": 0, "len": bytes.len()}));
        let c = uncounted();
        fs::rename(&tmp, path)?;
        record(c, "rename", &tmp, || json!({"to": path, "id": path_id(path), "dir": parent_id(path)}));
        Ok(())
    })();
    if result.is_err() {
        let _ = remove_volatile(&tmp);
    }
    result
}

/// Removes the file `path` (one already gone is fine), not counted.
pub(crate) fn remove_volatile(path: &Path) -> io::Result<()> {
    let c = uncounted();
    let id = path_id(path);
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(()) => {
            record(c, "unlink", path, || json!({"id": id, "dir": parent_id(path)}));
            Ok(())
        }
    }
}

/// Makes the owner-only folder `path` unless it is there, not counted.
pub(crate) fn create_dir_volatile(path: &Path) -> io::Result<()> {
    let c = uncounted();
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
        Ok(()) => {
            created(c, "mkdir", path);
            Ok(())
        }
    }
}

/// Opens the owner-only file `path`, made if it is not there, to lock it; not counted.
pub(crate) fn lock_volatile(path: &Path) -> io::Result<File> {
    let c = uncounted();
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
    // Traced whether or not it was made: the system call asks to create it either way.
    created(c, "create", path);
    Ok(file)
}

/// Takes an advisory lock file of leafd's (`.leafd/locks/<name>.lock`), made owner-only.
pub(crate) fn lock_file(path: &Path) -> Result<File> {
    match create_private(path) {
        Ok(w) => Ok(w.file),
        Err(e) if path.is_file() => {
            let _ = e; // made already, by us or another leafd
            File::options().read(true).write(true).open(path).at(path, "cannot open lock")
        }
        Err(e) => Err(e),
    }
}

/// A change the formats crate is about to make to a file it writes (through leafd's `Env`):
/// numbered, traced, and failed on purpose like every other call here.
pub(crate) fn changing(file: &File, path: &Path, change: leafd_formats::Change) -> io::Result<()> {
    let c = call(
        match change {
            leafd_formats::Change::Write { .. } => "write",
            leafd_formats::Change::SetLen(_) => "truncate",
        },
        path,
    )?;
    let id = || file.metadata().ok().map(|m| id_of(&m));
    match change {
        leafd_formats::Change::Write { offset, len } => {
            record(c, "write", path, || json!({"id": id(), "offset": offset, "len": len}))
        }
        leafd_formats::Change::SetLen(len) => record(c, "truncate", path, || json!({"id": id(), "len": len})),
    }
    Ok(())
}

/// Creates a new file for the formats crate (traced like [`create_new`]).
pub(crate) fn create_for_formats(path: &Path) -> io::Result<File> {
    create_new(path).map(Written::into_file).map_err(into_io)
}

/// Opens an existing file for the formats crate; one opened for writing is traced (rule 4).
pub(crate) fn open_for_formats(path: &Path, write: bool, open: impl FnOnce() -> io::Result<File>) -> io::Result<File> {
    if !write {
        return open();
    }
    let c = call("open-write", path)?;
    let file = open()?;
    record(c, "open-write", path, || json!({"id": file.metadata().ok().map(|m| id_of(&m))}));
    Ok(file)
}

/// Removes a file the formats crate made (a disk it could not finish), traced like
/// [`remove_file`].
pub(crate) fn remove_for_formats(path: &Path) -> io::Result<()> {
    remove_file(path).map_err(into_io)
}

/// Flushes a file the formats crate wrote.
pub(crate) fn flush_for_formats(file: &File, path: &Path) -> io::Result<()> {
    flush_open(file, path, Flush::Order).map_err(into_io)
}

fn into_io(e: Error) -> io::Error {
    match e.source.map(|s| s.downcast::<io::Error>()) {
        Some(Ok(source)) => *source,
        Some(Err(other)) => io::Error::other(other),
        None => io::Error::other(e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_keeps_holes_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(8 * crate::fsutil::CHUNK).unwrap();
        f.write_all_at(&[7u8; 3000], 2 * crate::fsutil::CHUNK - 1000).unwrap();
        let dst = dir.path().join("dst");
        let no = crate::fsutil::Cancel::new(false);
        copy_file(&src, &dst, &no).unwrap();
        assert!(crate::fsutil::same_content(&src, &dst, &no).unwrap());
        assert!(crate::fsutil::allocated(&dst) <= 2 * crate::fsutil::CHUNK + 8192);
        assert!(matches!(copy_file(&src, &dst, &no), Err(e) if e.kind == crate::error::Kind::Io));
        let stop = crate::fsutil::Cancel::new(true);
        assert_eq!(copy_file(&src, &dir.path().join("x"), &stop).unwrap_err().kind, crate::error::Kind::Cancelled);
    }

    #[test]
    fn a_file_with_the_longest_name_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        // 255 bytes, with a character of 3 bytes where the temporary name is cut.
        let name = format!("{}データ.vmsd", "x".repeat(255 - 5 - 9));
        assert_eq!(name.len(), 255);
        let p = dir.path().join(&name);
        fs::write(&p, b"old").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    /// Each call has a temporary name of its own (two writers of one file in one process must
    /// not share one), and a failed write leaves no temporary behind.
    #[test]
    fn temporaries_are_unique_per_call_and_removed_when_the_write_fails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("note.txt");
        assert_ne!(temporary(&p), temporary(&p), "two calls, one temporary name");
        // The rename cannot replace a folder: the write fails after its temporary was made.
        fs::create_dir(&p).unwrap();
        fs::write(p.join("inside"), b"x").unwrap();
        assert!(write_atomic(&p, b"new").is_err());
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["note.txt"], "the temporary file stayed");
    }
}
