//! macOS (VMware Fusion): plain xattr names, Finder tags and the Locked (`uchg`) flag.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, RenameFlags, Stat};
use rustix::io::Errno;

/// errno for "no such attribute".
pub(crate) const NO_ATTR: i32 = Errno::NOATTR.raw_os_error();

/// Whether files have a user-settable Locked (immutable) flag.
pub(crate) const HAS_LOCKED_FLAG: bool = true;

pub(crate) const XATTR_PREFIX: &str = "";

pub(crate) const TAGS_XATTR: &str = "com.apple.metadata:_kMDItemUserTags";
const FINDER_INFO_XATTR: &str = "com.apple.FinderInfo";

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Renames `from` to `to`, failing with `AlreadyExists` instead of replacing anything
/// (`renameatx_np` with `RENAME_EXCL`).
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    Ok(rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE)?)
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `stat`'s flags with the Locked flag set or cleared; `None` when they already are so.
fn with_locked(stat: &Stat, locked: bool) -> Option<u32> {
    let flags = stat.st_flags;
    let new = if locked { flags | libc::UF_IMMUTABLE } else { flags & !libc::UF_IMMUTABLE };
    (new != flags).then_some(new)
}

/// Sets or clears the Finder's Locked flag (`uchg`), which also stops deletion and renaming.
/// (rustix has no `chflags`.)
pub(crate) fn set_locked(path: &Path, locked: bool) -> io::Result<()> {
    let Some(flags) = with_locked(&rustix::fs::lstat(path)?, locked) else { return Ok(()) };
    let p = cstr(path)?;
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::chflags(p.as_ptr(), flags) })
}

/// [`set_locked`] through an open descriptor (`fchflags`).
pub(crate) fn set_locked_fd(file: &File, locked: bool) -> io::Result<()> {
    let Some(flags) = with_locked(&rustix::fs::fstat(file)?, locked) else { return Ok(()) };
    // SAFETY: a descriptor `file` keeps open.
    check(unsafe { libc::fchflags(file.as_raw_fd(), flags) })
}

pub(crate) fn is_locked(path: &Path) -> io::Result<bool> {
    Ok(rustix::fs::lstat(path)?.st_flags & libc::UF_IMMUTABLE != 0)
}

pub(crate) fn is_locked_fd(file: &File) -> io::Result<bool> {
    Ok(rustix::fs::fstat(file)?.st_flags & libc::UF_IMMUTABLE != 0)
}

/// Finder stores tags as a binary plist array of "Name\n<colour>" strings.
pub(crate) fn read_tags(path: &Path) -> io::Result<Vec<String>> {
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

/// The attribute value for `tags` (a binary plist); `None` when there are none.
pub(crate) fn encode_tags(tags: &[String]) -> io::Result<Option<Vec<u8>>> {
    if tags.is_empty() {
        return Ok(None);
    }
    let array = plist::Value::Array(tags.iter().map(|t| plist::Value::String(format!("{t}\n{}", colour(t)))).collect());
    let mut out = Vec::new();
    array.to_writer_binary(&mut out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some(out))
}

/// Finder marks a file it is still copying with type `brok` and creator `MACS`.
pub(crate) fn copy_in_progress(path: &Path) -> bool {
    matches!(xattr::get(path, FINDER_INFO_XATTR), Ok(Some(info)) if info.len() >= 8 && &info[0..4] == b"brok" && &info[4..8] == b"MACS")
}

/// A notification is posted by `osascript` (notify-rust's macOS back end compiles Objective-C),
/// which the caller runs through `child`, so it is reaped and given a time limit.
pub(crate) fn notify(title: &str, message: &str) -> Option<std::process::Command> {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let script = format!("display notification \"{}\" with title \"{}\"", quote(message), quote(title));
    let mut osascript = std::process::Command::new("/usr/bin/osascript");
    osascript.args(["-e", &script]);
    Some(osascript)
}

/// `fsync` on macOS leaves the data in the drive's cache, in any order: `F_BARRIERFSYNC` keeps
/// the order. A volume that refuses it (exFAT, SMB) gets `fsync`, and the answer it gave is
/// returned; any other failure is an error.
pub(crate) fn flush_ordered(file: &File) -> io::Result<Option<i32>> {
    // SAFETY: fcntl without argument on a descriptor `file` keeps open (rustix has no
    // F_BARRIERFSYNC).
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_BARRIERFSYNC) };
    let asked =
        if r == -1 { Err(Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::IO)) } else { Ok(()) };
    or_fsync(file, asked)
}

/// [`flush_ordered`] with `F_FULLFSYNC`, which empties the drive's cache.
pub(crate) fn flush_full(file: &File) -> io::Result<Option<i32>> {
    or_fsync(file, rustix::fs::fcntl_fullfsync(file))
}

/// `fsync` where the volume refused the flush asked for (`asked`), returning its answer.
fn or_fsync(file: &File, asked: rustix::io::Result<()>) -> io::Result<Option<i32>> {
    match asked {
        Ok(()) => Ok(None),
        Err(e @ (Errno::NOTSUP | Errno::OPNOTSUPP | Errno::INVAL | Errno::NOTTY)) => {
            file.sync_all()?;
            Ok(Some(e.raw_os_error()))
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn default_root(home: &Path) -> PathBuf {
    let fusion = home.join("Virtual Machines.localized");
    if fusion.is_dir() { fusion } else { home.join("Virtual Machines") }
}

pub(crate) fn log_dir(home: &Path) -> PathBuf {
    home.join("Library/Logs/leafd")
}

pub(crate) fn config_dir(home: &Path) -> PathBuf {
    home.join("Library/Application Support/leafd")
}

/// The user's LaunchAgents, loaded at login.
pub(crate) fn service_dir(home: &Path) -> PathBuf {
    home.join("Library/LaunchAgents")
}

/// Reads of `file` bypass the cache from now on, so a comparison reads what reached the disk.
pub(crate) fn drop_cache(file: &File) {
    // Advice only: a volume that ignores it costs a slower comparison, nothing more.
    let _ = rustix::fs::fcntl_nocache(file, true);
}

/// `vmrun -T` host type for VMware Fusion.
pub(crate) const VMRUN_HOST_TYPE: &str = "fusion";

/// Where VMware Fusion keeps `vmrun`.
pub(crate) fn vmrun_candidates() -> Vec<PathBuf> {
    vec![PathBuf::from("/Applications/VMware Fusion.app/Contents/Library/vmrun")]
}

/// The Trash `path` goes to: the user's `~/.Trash` (in `home`) on the startup volume, else the
/// volume's own `.Trashes/<uid>`, as Finder uses them. A volume that is not local (SMB, AFP,
/// NFS, WebDAV), where Finder deletes at once, has none (`Unsupported`).
pub(crate) fn trash_folder(path: &Path, home: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    if rustix::fs::statfs(path)?.f_flags & libc::MNT_LOCAL as u32 == 0 {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "it is on a network volume, which has no Trash"));
    }
    let home_trash = home.join(".Trash");
    let dev = std::fs::symlink_metadata(path)?.dev();
    if std::fs::metadata(&home_trash).is_ok_and(|m| m.dev() == dev) {
        return Ok(home_trash);
    }
    // The volume's root: the highest ancestor on the same device.
    let mut root = path.to_path_buf();
    while let Some(parent) = root.parent() {
        if std::fs::metadata(parent).map(|m| m.dev()).ok() != Some(dev) {
            break;
        }
        root = parent.to_path_buf();
    }
    let dir = root.join(".Trashes").join(rustix::process::getuid().as_raw().to_string());
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Moves `path` into [`trash_folder`] as `name` (`name 2`, `name 3`... if taken), with a plain
/// rename: no Finder scripting, which would ask the user to let leafd control Finder. Finder's
/// Put Back does not know the item. The caller flushes the two folders. Returns where it went.
pub(crate) fn trash(path: &Path, name: &str, home: &Path) -> io::Result<PathBuf> {
    let trash = trash_folder(path, home)?;
    for n in 1..10_000 {
        let to = trash.join(if n == 1 { name.to_string() } else { format!("{name} {n}") });
        match rename_noreplace(path, &to) {
            Ok(()) => return Ok(to),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "too many items of that name in the Trash"))
}

/// A rename works within one volume, and macOS has no bind mounts: the devices tell (`None`).
pub(crate) fn same_mount(_a: &Path, _b: &Path) -> io::Result<Option<bool>> {
    Ok(None)
}

// <sys/proc_info.h> and <sys/fcntl.h> items the libc crate lacks.
const PROC_ALL_PIDS: u32 = 1;
const PROC_PIDFDVNODEINFO: libc::c_int = 1;
/// The kernel's open-for-writing bit in `fi_openflags`.
const FWRITE: u32 = 0x0002;

/// `struct proc_fileinfo`.
#[repr(C)]
struct ProcFileInfo {
    fi_openflags: u32,
    _fi_status: u32,
    _fi_offset: libc::off_t,
    _fi_type: i32,
    _fi_guardflags: u32,
}

/// `struct vnode_fdinfo`: what `PROC_PIDFDVNODEINFO` fills in.
#[repr(C)]
struct VnodeFdInfo {
    pfi: ProcFileInfo,
    pvi: libc::vnode_info,
}

/// See `platform::open_for_writing`. Untested: compiled on Linux, never run.
pub(crate) fn open_for_writing(file: &File) -> io::Result<Option<bool>> {
    // Another machine writing to a network volume is not among our processes.
    if rustix::fs::fstatfs(file)?.f_flags & libc::MNT_LOCAL as u32 == 0 {
        return Ok(None);
    }
    let st = rustix::fs::fstat(file)?;
    let (dev, ino) = (st.st_dev as u32, st.st_ino);
    let me = std::process::id() as libc::pid_t;
    let mut inspected = false;
    for pid in all_pids()? {
        if pid == me || pid == 0 {
            continue;
        }
        // Gone since, another user's, or set-user-ID: not ours to see.
        let Some(fds) = vnode_fds(pid) else { continue };
        inspected = true;
        if fds.into_iter().any(|fd| writes_to(pid, fd, dev, ino)) {
            return Ok(Some(true));
        }
    }
    Ok(inspected.then_some(false))
}

/// Asks for a list twice: its size (a null buffer), then the list, with room for growth.
/// `call(buffer, bytes)` returns the bytes filled in, or -1.
fn list<T: Clone>(
    zero: T,
    room: usize,
    call: impl Fn(*mut libc::c_void, libc::c_int) -> libc::c_int,
) -> Option<Vec<T>> {
    let size = std::mem::size_of::<T>();
    let needed = call(std::ptr::null_mut(), 0);
    if needed <= 0 {
        return None;
    }
    let mut items = vec![zero; needed as usize / size + room];
    let filled = call(items.as_mut_ptr().cast(), libc::c_int::try_from(items.len() * size).ok()?);
    if filled <= 0 {
        return None;
    }
    items.truncate(filled as usize / size);
    Some(items)
}

fn all_pids() -> io::Result<Vec<libc::pid_t>> {
    // SAFETY: `buffer` is null (asking for the size) or holds `bytes` bytes.
    list(0, 64, |buffer, bytes| unsafe { libc::proc_listpids(PROC_ALL_PIDS, 0, buffer, bytes) })
        .ok_or_else(io::Error::last_os_error)
}

/// The descriptors of `pid` that are files (vnodes); `None` when it cannot be inspected.
fn vnode_fds(pid: libc::pid_t) -> Option<Vec<i32>> {
    let zero = libc::proc_fdinfo { proc_fd: 0, proc_fdtype: 0 };
    // SAFETY: `buffer` is null (asking for the size) or holds `bytes` bytes.
    let fds =
        list(zero, 16, |buffer, bytes| unsafe { libc::proc_pidinfo(pid, libc::PROC_PIDLISTFDS, 0, buffer, bytes) })?;
    Some(fds.into_iter().filter(|f| f.proc_fdtype == libc::PROX_FDTYPE_VNODE as u32).map(|f| f.proc_fd).collect())
}

/// Whether descriptor `fd` of `pid` is open for writing on the file `dev`/`ino`.
fn writes_to(pid: libc::pid_t, fd: i32, dev: u32, ino: u64) -> bool {
    // SAFETY: integers and arrays of integers only: all zeroes is a valid value.
    let mut info: VnodeFdInfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<VnodeFdInfo>() as libc::c_int;
    // SAFETY: `info` is `size` bytes the kernel fills in.
    let got = unsafe { libc::proc_pidfdinfo(pid, fd, PROC_PIDFDVNODEINFO, (&raw mut info).cast(), size) };
    let stat = &info.pvi.vi_stat;
    got == size && stat.vst_dev == dev && stat.vst_ino == ino && info.pfi.fi_openflags & FWRITE != 0
}

/// Finder's progress on an item leafd is converting: an `NSProgress` of kind "file" published
/// with the item's file URL, the documented way for a program to show progress on a file in
/// Finder (`-[NSProgress publish]`). Nothing of the item itself (its dates, its attributes) is
/// changed. Untested: compiled and linted on Linux, never run.
pub(crate) struct FinderProgress(objc2::rc::Retained<objc2_foundation::NSProgress>);

impl FinderProgress {
    /// Publishes progress of `total` bytes on the item at `path`; `None` when it cannot be
    /// named by a URL.
    pub(crate) fn publish(path: &Path, total: u64) -> Option<FinderProgress> {
        use objc2_foundation::{NSProgress, NSProgressFileOperationKindCopying, NSProgressKindFile, NSString, NSURL};
        let url = NSURL::fileURLWithPath(&NSString::from_str(path.to_str()?));
        let progress = NSProgress::discreteProgressWithTotalUnitCount(units(total));
        // SAFETY: reading two constant strings Foundation exports.
        let (kind, copying) = unsafe { (NSProgressKindFile, NSProgressFileOperationKindCopying) };
        progress.setKind(Some(kind));
        progress.setFileOperationKind(Some(copying));
        progress.setFileURL(Some(&url));
        progress.setCancellable(false);
        progress.publish();
        Some(FinderProgress(progress))
    }

    /// `done` of `total` bytes.
    pub(crate) fn update(&self, done: u64, total: u64) {
        self.0.setTotalUnitCount(units(total));
        self.0.setCompletedUnitCount(units(done));
    }
}

impl Drop for FinderProgress {
    fn drop(&mut self) {
        self.0.unpublish();
    }
}

/// Bytes as NSProgress counts units.
fn units(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}
