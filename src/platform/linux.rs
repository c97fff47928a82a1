//! Linux (VMware Workstation): `user.` xattrs, freedesktop tags, no Locked flag.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// errno for "no such attribute".
pub const NO_ATTR: i32 = libc::ENODATA;

/// Whether files have a user-settable Locked (immutable) flag.
pub const HAS_LOCKED_FLAG: bool = false;

pub const XATTR_PREFIX: &str = "user.";

/// The freedesktop.org tag attribute (comma-separated), which file managers such as Dolphin show.
const TAGS_XATTR: &str = "user.xdg.tags";

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Renames `from` to `to`, failing with `AlreadyExists` instead of replacing anything.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD makes them relative to the cwd.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
    if r == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) {
        return rename_noreplace_without_flag(from, to);
    }
    Err(err)
}

/// For file systems without RENAME_NOREPLACE. A file is hard-linked to its new name (which fails
/// if the name is taken, atomically) and then unlinked; without hard links it is checked, then
/// renamed. A folder is checked, then renamed: rename can replace only an empty folder.
fn rename_noreplace_without_flag(from: &Path, to: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(from)?.is_dir() {
        if to.symlink_metadata().is_ok() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        return std::fs::rename(from, to);
    }
    match std::fs::hard_link(from, to) {
        Ok(()) => std::fs::remove_file(from),
        // No hard links either (some FUSE file systems): check, then rename.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)) => {
            if to.symlink_metadata().is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            std::fs::rename(from, to)
        }
        Err(e) => Err(e),
    }
}

/// Linux has no user-settable immutable flag (chattr +i needs root), so permissions alone protect.
pub fn set_locked(_path: &Path, _locked: bool) -> io::Result<()> {
    Ok(())
}

pub fn is_locked(_path: &Path) -> io::Result<bool> {
    Ok(false)
}

pub fn read_tags(path: &Path) -> io::Result<Vec<String>> {
    match xattr::get(path, TAGS_XATTR)? {
        Some(v) => Ok(String::from_utf8_lossy(&v).split(',').filter(|t| !t.is_empty()).map(str::to_string).collect()),
        None => Ok(Vec::new()),
    }
}

pub fn write_tags(path: &Path, tags: &[String]) -> io::Result<()> {
    if tags.is_empty() {
        return super::remove_xattr(path, TAGS_XATTR);
    }
    xattr::set(path, TAGS_XATTR, tags.join(",").as_bytes())
}

/// Linux file managers leave no marker on a file being copied; size checks do the work.
pub fn copy_in_progress(_path: &Path) -> bool {
    false
}

/// Posts a desktop notification through `notify-send` (libnotify) when it is on the PATH, best
/// effort: never blocks, never fails the caller. Without it, the log and the note tell the user.
pub fn notify_user(title: &str, message: &str) {
    let mut notify_send = std::process::Command::new("notify-send");
    notify_send.args(["--app-name=leafd", "--", title, message]);
    crate::child::run_detached(notify_send);
}

pub fn full_sync(file: &File) -> io::Result<()> {
    file.sync_all()
}

pub fn default_root(home: &Path) -> PathBuf {
    home.join("vmware")
}

pub fn log_dir(home: &Path) -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home.join(".local/state"))
        .join("leafd")
}

fn xdg_config_home(home: &Path) -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home.join(".config"))
}

pub fn config_dir(home: &Path) -> PathBuf {
    xdg_config_home(home).join("leafd")
}

/// systemd's folder for the user's own units.
pub fn service_dir(home: &Path) -> PathBuf {
    xdg_config_home(home).join("systemd/user")
}

/// Asks the kernel to forget cached pages of `file`, so a comparison reads what reached the disk.
pub fn drop_cache(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: advisory call on a valid descriptor.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// `vmrun -T` host type for VMware Workstation.
pub const VMRUN_HOST_TYPE: &str = "ws";

/// Where VMware Workstation puts `vmrun`: on the PATH.
pub fn vmrun_candidates() -> Vec<PathBuf> {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).map(|d| d.join("vmrun")).collect()).unwrap_or_default()
}

/// Linux desktops have no Trash leafd can rely on: removal deletes, after confirmation.
pub const HAS_TRASH: bool = false;

pub fn trash(_path: &Path, _name: &str) -> io::Result<PathBuf> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "no Trash on this platform"))
}

/// The login service on Linux: a systemd user unit.
pub const SERVICE_KIND: crate::service::ServiceKind = crate::service::ServiceKind::Systemd;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_rename_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, d) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("d"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let e = rename_noreplace_without_flag(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!((std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap()), (b"a".to_vec(), b"b".to_vec()));
        std::fs::remove_file(&b).unwrap();
        rename_noreplace_without_flag(&a, &b).unwrap();
        assert!(!a.exists() && std::fs::read(&b).unwrap() == b"a");
        std::fs::create_dir(&d).unwrap();
        std::fs::create_dir(&a).unwrap();
        let e = rename_noreplace_without_flag(&a, &d).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let e = rename_noreplace_without_flag(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        rename_noreplace_without_flag(&a, &dir.path().join("e")).unwrap();
        assert!(!a.exists() && dir.path().join("e").is_dir());
    }
}
