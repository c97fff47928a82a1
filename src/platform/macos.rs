//! macOS (VMware Fusion): plain xattr names, Finder tags and the Locked (`uchg`) flag.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::macos::fs::MetadataExt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// errno for "no such attribute".
pub const NO_ATTR: i32 = libc::ENOATTR;

/// Whether files have a user-settable Locked (immutable) flag.
pub const HAS_LOCKED_FLAG: bool = true;

pub const XATTR_PREFIX: &str = "";

const TAGS_XATTR: &str = "com.apple.metadata:_kMDItemUserTags";
const FINDER_INFO_XATTR: &str = "com.apple.FinderInfo";

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Renames `from` to `to`, failing with `AlreadyExists` instead of replacing anything.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: both are valid NUL-terminated paths.
    if unsafe { libc::renamex_np(f.as_ptr(), t.as_ptr(), libc::RENAME_EXCL) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets or clears the Finder's Locked flag (`uchg`), which also stops deletion and renaming.
pub fn set_locked(path: &Path, locked: bool) -> io::Result<()> {
    let flags = std::fs::symlink_metadata(path)?.st_flags();
    let new = if locked { flags | libc::UF_IMMUTABLE } else { flags & !libc::UF_IMMUTABLE };
    if new == flags {
        return Ok(());
    }
    let p = cstr(path)?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::chflags(p.as_ptr(), new) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

pub fn is_locked(path: &Path) -> io::Result<bool> {
    Ok(std::fs::symlink_metadata(path)?.st_flags() & libc::UF_IMMUTABLE != 0)
}

/// Finder stores tags as a binary plist array of "Name\n<colour>" strings.
pub fn read_tags(path: &Path) -> io::Result<Vec<String>> {
    let Some(raw) = xattr::get(path, TAGS_XATTR)? else {
        return Ok(Vec::new());
    };
    let value =
        plist::Value::from_reader(io::Cursor::new(raw)).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(value
        .as_array()
        .map(|a| {
            a.iter().filter_map(|v| v.as_string()).map(|s| s.split('\n').next().unwrap_or(s).to_string()).collect()
        })
        .unwrap_or_default())
}

/// Finder's label colours: 0 none, 1 grey, 2 green, 3 purple, 4 blue, 5 yellow, 6 red, 7 orange.
fn colour(tag: &str) -> u8 {
    match tag {
        "Red" => 6,
        "Base" => 4,
        "Linked Clone" => 2,
        _ => 0,
    }
}

pub fn write_tags(path: &Path, tags: &[String]) -> io::Result<()> {
    if tags.is_empty() {
        return super::remove_xattr(path, TAGS_XATTR);
    }
    let array = plist::Value::Array(tags.iter().map(|t| plist::Value::String(format!("{t}\n{}", colour(t)))).collect());
    let mut out = Vec::new();
    array.to_writer_binary(&mut out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    xattr::set(path, TAGS_XATTR, &out)
}

/// Finder marks a file it is still copying with type `brok` and creator `MACS`.
pub fn copy_in_progress(path: &Path) -> bool {
    matches!(xattr::get(path, FINDER_INFO_XATTR), Ok(Some(info)) if info.len() >= 8 && &info[0..4] == b"brok" && &info[4..8] == b"MACS")
}

/// Posts a notification through `osascript`, best effort: never blocks, never fails the caller.
pub fn notify_user(title: &str, message: &str) {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let script = format!("display notification \"{}\" with title \"{}\"", quote(message), quote(title));
    let mut osascript = std::process::Command::new("/usr/bin/osascript");
    osascript.args(["-e", &script]);
    crate::child::run_detached(osascript);
}

/// `fsync` on macOS does not reach the platters; `F_FULLFSYNC` does.
pub fn full_sync(file: &File) -> io::Result<()> {
    // SAFETY: a valid open descriptor.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_FULLFSYNC) } == 0 { Ok(()) } else { file.sync_all() }
}

pub fn default_root(home: &Path) -> PathBuf {
    let fusion = home.join("Virtual Machines.localized");
    if fusion.is_dir() { fusion } else { home.join("Virtual Machines") }
}

pub fn log_dir(home: &Path) -> PathBuf {
    home.join("Library/Logs/leafd")
}

pub fn config_dir(home: &Path) -> PathBuf {
    home.join("Library/Application Support/leafd")
}

/// The user's LaunchAgents, loaded at login.
pub fn service_dir(home: &Path) -> PathBuf {
    home.join("Library/LaunchAgents")
}

/// Reads of `file` bypass the cache from now on, so a comparison reads what reached the disk.
pub fn drop_cache(file: &File) {
    // SAFETY: advisory fcntl on a valid descriptor.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_NOCACHE, 1) };
}

/// `vmrun -T` host type for VMware Fusion.
pub const VMRUN_HOST_TYPE: &str = "fusion";

/// Where VMware Fusion keeps `vmrun`.
pub fn vmrun_candidates() -> Vec<PathBuf> {
    vec![PathBuf::from("/Applications/VMware Fusion.app/Contents/Library/vmrun")]
}

pub const HAS_TRASH: bool = true;

/// Moves `path` to the Trash as `name` (with a number if taken): the user's `~/.Trash` on the
/// startup volume, else the volume's own `.Trashes/<uid>`, as Finder does.
pub fn trash(path: &Path, name: &str) -> io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let home_trash = super::home().join(".Trash");
    let dev = std::fs::metadata(path)?.dev();
    let trash = if std::fs::metadata(&home_trash).is_ok_and(|m| m.dev() == dev) {
        home_trash
    } else {
        // The volume's root: the highest ancestor on the same device.
        let mut root = path.to_path_buf();
        while let Some(parent) = root.parent() {
            if std::fs::metadata(parent).map(|m| m.dev()).ok() != Some(dev) {
                break;
            }
            root = parent.to_path_buf();
        }
        // SAFETY: getuid never fails.
        let dir = root.join(".Trashes").join(unsafe { libc::getuid() }.to_string());
        std::fs::create_dir_all(&dir)?;
        dir
    };
    for n in 0..1000 {
        let to = trash.join(if n == 0 { name.to_string() } else { format!("{name} {n}") });
        match rename_noreplace(path, &to) {
            Ok(()) => return Ok(to),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "too many items of that name in the Trash"))
}

/// The login service on macOS: a LaunchAgent.
pub const SERVICE_KIND: crate::service::ServiceKind = crate::service::ServiceKind::Launchd;
