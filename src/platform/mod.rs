//! Everything that differs between macOS and Linux, behind one interface: extended-attribute
//! names, the Finder's Locked flag and tags, atomic no-replace renames, durable flushes, safe
//! opens, the copy-in-progress marker, notifications and the standard folders. The rest of leafd
//! is shared.
//!
//! The system calls go through `rustix`; the few it lacks (`chflags`, file leases,
//! `F_BARRIERFSYNC`, `proc_pidinfo`) are raw `libc` calls in `linux.rs` and `macos.rs`, the only
//! `unsafe` code of leafd (the crate denies it elsewhere), each with its SAFETY note.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{Mode, OFlags};

// The only unsafe code of leafd: the system calls rustix lacks, each with its SAFETY note.
#[cfg(target_os = "macos")]
#[allow(unsafe_code)]
mod macos;
#[cfg(target_os = "macos")]
use macos as os;

#[cfg(not(target_os = "macos"))]
#[allow(unsafe_code)]
mod linux;
#[cfg(not(target_os = "macos"))]
use linux as os;

mod open;

pub(crate) use open::{open_beneath, open_dir, open_regular};
pub(crate) use os::{
    FinderProgress, TAGS_XATTR, VMRUN_HOST_TYPE, copy_in_progress, drop_cache, encode_tags, is_locked, is_locked_fd,
    rename_noreplace, set_locked, set_locked_fd, vmrun_candidates,
};

/// What posting a desktop notification ([`notify`]) leaves the caller to do.
#[derive(Debug)]
pub(crate) enum Notification {
    /// Run this program (macOS: `osascript`) through `child`, which reaps it.
    Run(std::process::Command),
    /// Nothing: it is on its way (Linux: D-Bus, from a thread of leafd's).
    Queued,
}

/// Posts a desktop notification: the freedesktop.org notification service on Linux (from a
/// thread of leafd's), `osascript` on macOS (for the caller to run).
pub(crate) fn notify(title: &str, message: &str) -> Notification {
    os::notify(title, message).map_or(Notification::Queued, Notification::Run)
}

/// The full extended-attribute name for one of leafd's records (`base`, `leaf`...).
pub(crate) fn xattr_name(name: &str) -> String {
    format!("{}org.leafd.{name}", os::XATTR_PREFIX)
}

/// A Finder tag and its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    Base,
    LinkedClone,
    Failed,
}

impl Tag {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tag::Base => "Base",
            Tag::LinkedClone => "Linked Clone",
            // Finder's own red tag, so the colour shows even without a custom tag list.
            Tag::Failed => "Red",
        }
    }
}

/// The tag names on `path` (empty when none).
pub(crate) fn tags(path: &Path) -> io::Result<Vec<String>> {
    os::read_tags(path)
}

/// How far a flush must go (docs/durability.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Flush {
    /// Only the order of writes matters: what is flushed reaches the disk before anything
    /// written after it. macOS: `F_BARRIERFSYNC`. Linux: `fsync`.
    Order,
    /// On stable storage when this returns, through the drive's own cache: the journal and each
    /// publishing rename's folders. macOS: `F_FULLFSYNC`, milliseconds each. Linux: `fsync`.
    Commit,
}

/// A volume that refused the flush asked for (exFAT and SMB refuse `F_FULLFSYNC` and
/// `F_BARRIERFSYNC` on macOS): [`flush`] used plain `fsync` instead. Returned the first time
/// per volume and kind only, so the caller can log it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlushFallback {
    pub(crate) kind: Flush,
    /// The volume's answer to the flush asked for (`ENOTSUP`, `EINVAL`...).
    pub(crate) errno: i32,
}

impl fmt::Display for FlushFallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let call = match self.kind {
            Flush::Order => "F_BARRIERFSYNC",
            Flush::Commit => "F_FULLFSYNC",
        };
        write!(f, "the volume refuses {call} ({}): fsync is used instead", io::Error::from_raw_os_error(self.errno))
    }
}

/// Flushes a file or folder as far as `kind` asks. Where the volume refuses that kind (macOS
/// only; Linux always `fsync`s and returns `None`), falls back to `fsync` and returns what
/// happened the first time per volume and kind; any other failure is an error.
pub(crate) fn flush(file: &File, kind: Flush) -> io::Result<Option<FlushFallback>> {
    let refused = match kind {
        Flush::Order => os::flush_ordered(file)?,
        Flush::Commit => os::flush_full(file)?,
    };
    match refused {
        None => Ok(None),
        Some(errno) => Ok(first_fallback(file.metadata()?.dev(), FlushFallback { kind, errno })),
    }
}

/// `fallback`, unless one of its kind was already reported for device `dev`.
fn first_fallback(dev: u64, fallback: FlushFallback) -> Option<FlushFallback> {
    // A few entries at most (one per volume and kind), so a list.
    static SEEN: Mutex<Vec<(u64, Flush)>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(&(dev, fallback.kind)) {
        return None;
    }
    seen.push((dev, fallback.kind));
    Some(fallback)
}

/// Sets the permission bits of the open file (`fchmod`): the file checked is the file changed.
pub(crate) fn set_mode_fd(file: &File, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(file, Mode::from_bits_truncate((mode & 0o7777) as _))?)
}

/// The number of names the open file has (`st_nlink`): more than one means it is hard-linked,
/// and a change to it would show under another name too, perhaps outside the bundle.
pub(crate) fn link_count(file: &File) -> io::Result<u64> {
    Ok(file.metadata()?.nlink())
}

/// Whether `a` and `b` (links not followed) are on the same device: the same file system, though
/// perhaps not the same mount (see [`same_mount`]).
fn same_device(a: &Path, b: &Path) -> io::Result<bool> {
    Ok(std::fs::symlink_metadata(a)?.dev() == std::fs::symlink_metadata(b)?.dev())
}

/// Whether a rename from `a` to `b` (links not followed) can work: the same mount (Linux tells
/// a bind mount apart; elsewhere, and on kernels without `statx`, the same device).
pub(crate) fn same_mount(a: &Path, b: &Path) -> io::Result<bool> {
    os::same_mount(a, b)?.map_or_else(|| same_device(a, b), Ok)
}

/// Moves `path` to the Trash as `name`, without copying: the freedesktop.org Trash on Linux (the
/// home Trash, or the volume's `.Trash-$uid`), with the `.trashinfo` that puts it back as `name`
/// in `path`'s folder (`path` may be a hidden stand-in); `~/.Trash` or the volume's
/// `.Trashes/$uid` on macOS. Returns where it went. Where no Trash can be used (a network
/// volume, a volume whose Trash is not a folder of the user's), `Unsupported`, and nothing is
/// moved. The caller flushes the folders the rename changed (`durable::trash` does).
pub(crate) fn trash(path: &Path, name: &str) -> io::Result<PathBuf> {
    os::trash(path, name, &home())
}

/// The Trash [`trash`] would move `path` to (made if missing), or why there is none
/// (`Unsupported`): to refuse before anything changes.
pub(crate) fn trash_folder(path: &Path) -> io::Result<PathBuf> {
    os::trash_folder(path, &home())
}

/// Whether another process has `file` open for writing, where the system can tell; `file` must be
/// open read-only (else `InvalidInput`).
///
/// - Linux: a read lease, which the kernel grants only while no descriptor anywhere has the file
///   open for writing, is taken and given back at once. A descriptor of leafd's own open for
///   writing counts too: the kernel cannot say whose it is. `None` where leases are not
///   supported or not allowed (NFS, a file owned by another user, leases disabled), and on
///   network and FUSE volumes, where another machine can write unseen.
/// - macOS: the vnode descriptors of every process leafd may inspect, compared by device and
///   inode, with `FWRITE` in their open flags; leafd's own are skipped. `None` on volumes that are
///   not local, or when no other process could be inspected (a sandbox). Processes of other
///   users and set-user-ID ones cannot be inspected and are not seen. Compiled, never run: this
///   project's tests run on Linux.
pub(crate) fn open_for_writing(file: &File) -> io::Result<Option<bool>> {
    if rustix::fs::fcntl_getfl(file)?.intersects(OFlags::WRONLY | OFlags::RDWR) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "asking whether a file is open for writing needs a read-only descriptor",
        ));
    }
    os::open_for_writing(file)
}

/// Removes an extended attribute; one that is absent (or a file that is gone) is not an error.
pub(crate) fn remove_xattr(path: &Path, name: &str) -> io::Result<()> {
    match xattr::remove(path, name) {
        Err(e) if e.raw_os_error() == Some(os::NO_ATTR) || e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// True when `path` is write-protected as Make Base leaves a base file: no write permission for
/// anyone, and (macOS) the Locked flag.
pub(crate) fn is_protected(path: &Path) -> io::Result<bool> {
    Ok(std::fs::symlink_metadata(path)?.mode() & 0o222 == 0 && (!os::HAS_LOCKED_FLAG || os::is_locked(path)?))
}

/// How to put the protection back by hand, for messages.
pub(crate) fn protect_command(path: &Path) -> String {
    let quoted = format!("'{}'", path.display().to_string().replace('\'', "'\\''"));
    if os::HAS_LOCKED_FLAG {
        format!("chmod a-w {quoted} && chflags uchg {quoted}")
    } else {
        format!("chmod a-w {quoted}")
    }
}

/// The library folder used when nothing else is configured.
pub(crate) fn default_root() -> PathBuf {
    os::default_root(&home())
}

/// Where the user's daily logs go (one log for every library: each line names its library).
pub(crate) fn log_dir() -> PathBuf {
    os::log_dir(&home())
}

/// Where `config.toml` lives.
pub(crate) fn config_dir() -> PathBuf {
    os::config_dir(&home())
}

/// Where the login service's definition goes.
pub(crate) fn service_dir() -> PathBuf {
    os::service_dir(&home())
}

pub(crate) fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(dirs::home_dir)
        .unwrap_or_else(|| PathBuf::from("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_fd_changes_reach_the_file_opened_not_the_one_now_at_its_path() {
        let t = tempfile::tempdir().unwrap();
        let (p, aside) = (t.path().join("disk.vmdk"), t.path().join("aside"));
        std::fs::write(&p, b"disk").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let file = open_regular(&p, false).unwrap();
        // Swapped after the check: the descriptor still names the file checked.
        std::fs::rename(&p, &aside).unwrap();
        std::fs::write(&p, b"swapped in").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;

        assert!(!is_protected(&aside).unwrap());
        // As Make Base protects a base file (`durable::protect_open`): mode, then flag.
        set_mode_fd(&file, 0o440).unwrap();
        set_locked_fd(&file, true).unwrap();
        assert_eq!((mode(&aside), mode(&p)), (0o440, 0o644));
        assert!(is_protected(&aside).unwrap() && !is_protected(&p).unwrap());
        assert_eq!(is_locked_fd(&file).unwrap(), os::HAS_LOCKED_FLAG);
        set_locked_fd(&file, false).unwrap();
        set_mode_fd(&file, 0o600).unwrap();
        assert_eq!((mode(&aside), mode(&p)), (0o600, 0o644));
        assert!(!is_protected(&aside).unwrap());
        set_mode_fd(&file, 0o4751).unwrap();
        assert_eq!(mode(&aside), 0o4751);
        set_locked_fd(&file, false).unwrap();
        assert!(!is_locked_fd(&file).unwrap());
    }

    #[test]
    fn link_count_counts_hard_links() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("disk.vmdk");
        std::fs::write(&p, b"disk").unwrap();
        let file = open_regular(&p, false).unwrap();
        assert_eq!(link_count(&file).unwrap(), 1);
        std::fs::hard_link(&p, t.path().join("elsewhere.vmdk")).unwrap();
        assert_eq!(link_count(&file).unwrap(), 2);
    }

    #[test]
    fn flush_flushes_files_and_folders_and_reports_failures() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, b"f").unwrap();
        for kind in [Flush::Order, Flush::Commit] {
            assert_eq!(flush(&open_regular(&p, true).unwrap(), kind).unwrap(), None);
            assert_eq!(flush(&open_dir(t.path()).unwrap(), kind).unwrap(), None);
            // A pipe cannot be flushed: the failure is the caller's to see.
            let (reader, _writer) = io::pipe().unwrap();
            assert!(flush(&File::from(std::os::fd::OwnedFd::from(reader)), kind).is_err());
        }
        // A read-only descriptor is flushed too (a folder's always is).
        assert_eq!(flush(&open_regular(&p, false).unwrap(), Flush::Commit).unwrap(), None);
    }

    #[test]
    fn a_flush_fallback_is_reported_once_per_volume_and_kind() {
        // Devices no real volume has, so other tests' flushes cannot have reported them.
        let (a, b) = (u64::MAX - 1, u64::MAX - 2);
        let commit = FlushFallback { kind: Flush::Commit, errno: Errno::NOTSUP.raw_os_error() };
        let order = FlushFallback { kind: Flush::Order, ..commit };
        assert_eq!(first_fallback(a, commit), Some(commit));
        assert_eq!(first_fallback(a, commit), None);
        assert_eq!(first_fallback(a, order), Some(order));
        assert_eq!(first_fallback(b, commit), Some(commit));
        assert_eq!(first_fallback(b, order), Some(order));
        assert_eq!(first_fallback(b, order), None);
        assert!(commit.to_string().starts_with("the volume refuses F_FULLFSYNC ("), "{commit}");
    }
}
