//! Everything that differs between macOS and Linux, behind one interface: extended-attribute
//! names, the Finder's Locked flag and tags, atomic no-replace renames, durable flushes, the
//! copy-in-progress marker, notifications and the standard folders. The rest of leafd is shared.

use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
use macos as os;

#[cfg(not(target_os = "macos"))]
mod linux;
#[cfg(not(target_os = "macos"))]
use linux as os;

pub use os::{
    HAS_TRASH, SERVICE_KIND, VMRUN_HOST_TYPE, copy_in_progress, drop_cache, is_locked, notify_user, rename_noreplace,
    set_locked, trash, vmrun_candidates,
};

/// The full extended-attribute name for one of leafd's records (`base`, `leaf`...).
pub fn xattr_name(name: &str) -> String {
    format!("{}org.leafd.{name}", os::XATTR_PREFIX)
}

/// A Finder tag and its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Base,
    LinkedClone,
    Failed,
}

impl Tag {
    pub fn name(self) -> &'static str {
        match self {
            Tag::Base => "Base",
            Tag::LinkedClone => "Linked Clone",
            // Finder's own red tag, so the colour shows even without a custom tag list.
            Tag::Failed => "Red",
        }
    }
}

/// Adds or removes a tag, keeping the user's other tags.
pub fn set_tag(path: &Path, tag: Tag, on: bool) -> io::Result<()> {
    let mut tags = os::read_tags(path)?;
    let had = tags.iter().any(|t| t == tag.name());
    if had == on {
        return Ok(());
    }
    if on {
        tags.push(tag.name().to_string());
    } else {
        tags.retain(|t| t != tag.name());
    }
    os::write_tags(path, &tags)
}

/// The tag names on `path` (empty when none).
pub fn tags(path: &Path) -> io::Result<Vec<String>> {
    os::read_tags(path)
}

/// Flushes a file (or folder) to stable storage, as far as the platform allows.
pub fn full_sync(file: &File) -> io::Result<()> {
    os::full_sync(file)
}

/// Flushes a folder's entries (after creating, renaming or removing in it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    full_sync(&File::open(dir)?)
}

/// Removes an extended attribute; one that is absent (or a file that is gone) is not an error.
pub fn remove_xattr(path: &Path, name: &str) -> io::Result<()> {
    match xattr::remove(path, name) {
        Err(e) if e.raw_os_error() == Some(os::NO_ATTR) || e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Write-protects a base file: no write permission for anyone, then (macOS) the Locked flag,
/// which unlike permissions also stops deletion and renaming.
pub fn protect(path: &Path) -> io::Result<()> {
    let mode = std::fs::symlink_metadata(path)?.permissions().mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o222))?;
    os::set_locked(path, true)
}

/// Lifts the protection and sets the permission bits to `mode`.
pub fn unprotect(path: &Path, mode: u32) -> io::Result<()> {
    os::set_locked(path, false)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// True when `path` is write-protected as [`protect`] leaves it.
pub fn is_protected(path: &Path) -> io::Result<bool> {
    let mode = std::fs::symlink_metadata(path)?.permissions().mode();
    Ok(mode & 0o222 == 0 && (!os::HAS_LOCKED_FLAG || os::is_locked(path)?))
}

/// How to put the protection back by hand, for messages.
pub fn protect_command(path: &Path) -> String {
    let quoted = format!("'{}'", path.display().to_string().replace('\'', "'\\''"));
    if os::HAS_LOCKED_FLAG {
        format!("chmod a-w {quoted} && chflags uchg {quoted}")
    } else {
        format!("chmod a-w {quoted}")
    }
}

/// The library folder used when nothing else is configured.
pub fn default_root() -> PathBuf {
    os::default_root(&home())
}

/// Where the daily logs go (`LEAFD_LOG_DIR` overrides, e.g. for the demo).
pub fn log_dir() -> PathBuf {
    std::env::var_os("LEAFD_LOG_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| os::log_dir(&home()))
}

/// Where `config.toml` lives.
pub fn config_dir() -> PathBuf {
    os::config_dir(&home())
}

/// Where the login service's definition goes.
pub fn service_dir() -> PathBuf {
    os::service_dir(&home())
}

pub fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(dirs::home_dir)
        .unwrap_or_else(|| PathBuf::from("/"))
}
