//! Linux (VMware Workstation): `user.` xattrs, freedesktop tags, no Locked flag.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, RenameFlags, StatxFlags};
use rustix::io::Errno;

/// errno for "no such attribute".
pub(crate) const NO_ATTR: i32 = Errno::NODATA.raw_os_error();

/// Whether files have a user-settable Locked (immutable) flag.
pub(crate) const HAS_LOCKED_FLAG: bool = false;

pub(crate) const XATTR_PREFIX: &str = "user.";

/// The freedesktop.org tag attribute (comma-separated), which file managers such as Dolphin show.
pub(crate) const TAGS_XATTR: &str = "user.xdg.tags";

/// Renames `from` to `to`, failing with `AlreadyExists` instead of replacing anything.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL) => rename_noreplace_without_flag(from, to),
        r => Ok(r?),
    }
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
        Err(e) if matches!(Errno::from_io_error(&e), Some(Errno::PERM | Errno::OPNOTSUPP)) => {
            if to.symlink_metadata().is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            std::fs::rename(from, to)
        }
        Err(e) => Err(e),
    }
}

/// Linux has no user-settable immutable flag (chattr +i needs root), so permissions alone protect.
pub(crate) fn set_locked(_path: &Path, _locked: bool) -> io::Result<()> {
    Ok(())
}

pub(crate) fn set_locked_fd(_file: &File, _locked: bool) -> io::Result<()> {
    Ok(())
}

pub(crate) fn is_locked(_path: &Path) -> io::Result<bool> {
    Ok(false)
}

pub(crate) fn is_locked_fd(_file: &File) -> io::Result<bool> {
    Ok(false)
}

pub(crate) fn read_tags(path: &Path) -> io::Result<Vec<String>> {
    match xattr::get(path, TAGS_XATTR)? {
        Some(v) => Ok(String::from_utf8_lossy(&v).split(',').filter(|t| !t.is_empty()).map(str::to_string).collect()),
        None => Ok(Vec::new()),
    }
}

/// The attribute value for `tags`; `None` when there are none (the attribute goes).
pub(crate) fn encode_tags(tags: &[String]) -> io::Result<Option<Vec<u8>>> {
    Ok((!tags.is_empty()).then(|| tags.join(",").into_bytes()))
}

/// Linux file managers leave no marker on a file being copied; size checks do the work.
pub(crate) fn copy_in_progress(_path: &Path) -> bool {
    false
}

/// Notifications waiting to be posted; beyond this many, new ones are dropped (the log and the
/// notes say it all anyway).
const NOTIFICATIONS_QUEUED: usize = 256;

/// Posts a desktop notification through the session's freedesktop.org notification service
/// (`org.freedesktop.Notifications` on D-Bus, as GNOME, KDE and the others provide), on a thread
/// of leafd's, one at a time: the caller never waits, and no program is started. Where no
/// session bus or notification service runs, nothing is shown (said at debug level). Leaves
/// nothing for the caller to run (`None`).
pub(crate) fn notify(title: &str, message: &str) -> Option<std::process::Command> {
    use std::sync::OnceLock;
    use std::sync::mpsc::{SyncSender, sync_channel};
    static QUEUE: OnceLock<Option<SyncSender<(String, String)>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = sync_channel::<(String, String)>(NOTIFICATIONS_QUEUED);
        let posting = std::thread::Builder::new().name("leafd-notify".into()).spawn(move || {
            for (title, message) in rx {
                let shown = notify_rust::Notification::new().appname("leafd").summary(&title).body(&message).show();
                if let Err(e) = shown {
                    tracing::debug!("no desktop notification ({e}): {title}: {message}");
                }
            }
        });
        posting.map_err(|e| tracing::debug!("cannot start the notification thread: {e}")).ok().map(|_| tx)
    });
    if let Some(queue) = queue
        && queue.try_send((title.to_string(), message.to_string())).is_err()
    {
        tracing::debug!("notification dropped (too many waiting): {title}: {message}");
    }
    None
}

/// `fsync`: on Linux it reaches stable storage (the drive's cache included), so it serves both
/// kinds of flush, and no volume refuses it.
pub(crate) fn flush_ordered(file: &File) -> io::Result<Option<i32>> {
    file.sync_all().map(|()| None)
}

/// See [`flush_ordered`].
pub(crate) fn flush_full(file: &File) -> io::Result<Option<i32>> {
    file.sync_all().map(|()| None)
}

pub(crate) fn default_root(home: &Path) -> PathBuf {
    home.join("vmware")
}

pub(crate) fn log_dir(home: &Path) -> PathBuf {
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

pub(crate) fn config_dir(home: &Path) -> PathBuf {
    xdg_config_home(home).join("leafd")
}

/// systemd's folder for the user's own units.
pub(crate) fn service_dir(home: &Path) -> PathBuf {
    xdg_config_home(home).join("systemd/user")
}

/// Asks the kernel to forget cached pages of `file`, so a comparison reads what reached the disk.
pub(crate) fn drop_cache(file: &File) {
    // Advice only: a kernel that ignores it costs a slower comparison, nothing more.
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}

/// `vmrun -T` host type for VMware Workstation.
pub(crate) const VMRUN_HOST_TYPE: &str = "ws";

/// Where VMware Workstation puts `vmrun`: on the PATH.
pub(crate) fn vmrun_candidates() -> Vec<PathBuf> {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).map(|d| d.join("vmrun")).collect()).unwrap_or_default()
}

/// The freedesktop.org Trash (the Trash specification 1.0) that `path` goes to, its `files/`
/// and `info/` folders made if missing: the home Trash (`$XDG_DATA_HOME/Trash`, else
/// `~/.local/share/Trash`) when `path` is on its mount; else the Trash of `path`'s volume,
/// `$topdir/.Trash/$uid` where an administrator made `$topdir/.Trash` (a sticky folder, not a
/// link), else `$topdir/.Trash-$uid`. Never one on another mount, which a move could reach only
/// by copying: a volume whose Trash cannot be used, and a network volume (shared with other
/// machines, where desktops keep no Trash either), are `Unsupported`.
pub(crate) fn trash_folder(path: &Path, home: &Path) -> io::Result<PathBuf> {
    find_trash(path, home).map(|(trash, _)| trash)
}

/// [`trash_folder`], and the volume's top folder when it is a volume's Trash (the original
/// places its `.trashinfo` files record are relative to it).
fn find_trash(path: &Path, home: &Path) -> io::Result<(PathBuf, Option<PathBuf>)> {
    // The magic is a `long` holding a 32-bit value.
    let fs_type = rustix::fs::statfs(path)?.f_type as u32;
    if REMOTE_FILE_SYSTEMS.contains(&fs_type) && fs_type != FUSE {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "it is on a network volume, which has no Trash"));
    }
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home.join(".local/share"));
    let home_trash = data_home.join("Trash");
    // Where it is or would be made: links above it followed.
    let nearest = home_trash.ancestors().find_map(|a| a.canonicalize().ok()).unwrap_or_else(|| PathBuf::from("/"));
    let mount = mount_of(path)?;
    let (trash, topdir) = if mount_of(&nearest)? == mount {
        std::fs::create_dir_all(&home_trash)?;
        (home_trash, None)
    } else {
        let topdir = top_of(path, mount)?;
        (volume_trash(&topdir, mount)?, Some(topdir))
    };
    for sub in ["files", "info"] {
        private_dir(&trash.join(sub))?;
    }
    Ok((trash, topdir))
}

/// The top folder of the mount `mount` that holds `path`.
fn top_of(path: &Path, mount: (u64, u64)) -> io::Result<PathBuf> {
    let mut topdir = path.canonicalize()?;
    while let Some(parent) = topdir.parent() {
        if mount_of(parent)? != mount {
            break;
        }
        topdir = parent.to_path_buf();
    }
    Ok(topdir)
}

/// `$topdir/.Trash/$uid` or `$topdir/.Trash-$uid` (see [`trash_folder`]), made if missing.
fn volume_trash(topdir: &Path, mount: (u64, u64)) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let uid = rustix::process::getuid().as_raw();
    let admin = topdir.join(".Trash");
    if admin.symlink_metadata().is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o1000 != 0) {
        let mine = admin.join(uid.to_string());
        if private_dir(&mine).is_ok() && mount_of(&mine)? == mount {
            return Ok(mine);
        }
    }
    let mine = topdir.join(format!(".Trash-{uid}"));
    let unusable = |why: String| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("the volume's Trash {} cannot be used: {why}", mine.display()),
        )
    };
    private_dir(&mine).map_err(|e| unusable(e.to_string()))?;
    if mount_of(&mine)? != mount {
        return Err(unusable("it is on another volume".into()));
    }
    Ok(mine)
}

/// `dir`, made (owner-only) if missing; it must be a folder of this user's, not a link.
fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let m = dir.symlink_metadata()?;
    if !m.is_dir() || m.uid() != rustix::process::getuid().as_raw() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "it is not a folder of this user's"));
    }
    Ok(())
}

/// The mount holding `path` (a link not followed): the `statx` mount id, else the device.
fn mount_of(path: &Path) -> io::Result<(u64, u64)> {
    let s = rustix::fs::statx(CWD, path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID)?;
    if StatxFlags::from_bits_retain(s.stx_mask).contains(StatxFlags::MNT_ID) {
        Ok((u64::MAX, s.stx_mnt_id))
    } else {
        Ok((u64::from(s.stx_dev_major), u64::from(s.stx_dev_minor)))
    }
}

/// Moves `path` into the Trash of [`trash_folder`] as `name` (`name.2`, `name.3`... if taken,
/// as GNOME and KDE number them), with the `.trashinfo` a desktop's Restore reads: the original
/// place is `name` in `path`'s folder (`path` may be a hidden stand-in for it). The info file is
/// written and flushed first, so the item is never in the Trash without it; the caller flushes
/// the two folders the rename changed. Returns where the item went.
pub(crate) fn trash(path: &Path, name: &str, home: &Path) -> io::Result<PathBuf> {
    let (trash, topdir) = find_trash(path, home)?;
    let original = path.parent().unwrap_or(Path::new("/")).canonicalize()?.join(name);
    // Relative to the volume's top in a volume's Trash, as the specification asks there.
    let recorded = topdir.as_deref().and_then(|t| original.strip_prefix(t).ok()).unwrap_or(&original);
    let text = format!(
        "[Trash Info]\nPath={}\nDeletionDate={}\n",
        uri_escape(recorded.as_os_str().as_encoded_bytes()),
        chrono::Local::now().format("%Y-%m-%dT%H:%M:%S")
    );
    for n in 1..10_000 {
        let item = if n == 1 { name.to_string() } else { format!("{name}.{n}") };
        let info = trash.join("info").join(format!("{item}.trashinfo"));
        let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).open(&info) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            r => r?,
        };
        let to = trash.join("files").join(&item);
        let moved = io::Write::write_all(&mut file, text.as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::File::open(trash.join("info"))?.sync_all())
            .and_then(|()| rename_noreplace(path, &to));
        match moved {
            Ok(()) => return Ok(to),
            Err(e) => {
                let _ = std::fs::remove_file(&info);
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "too many items of that name in the Trash"))
}

/// `bytes` as a URI path (RFC 2396): `/` and the unreserved characters as they are, every
/// other byte as `%XX`.
fn uri_escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"/-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a rename between `a` and `b` can work: the same mount, not merely the same file
/// system (a bind mount shares its `st_dev` with its source, yet `rename` across it fails with
/// `EXDEV`). `a` and `b` themselves, a link not followed: a rename moves the link. Compares the
/// `statx` mount ids; where the kernel has none (before 5.8), the devices; `None` where it has no
/// `statx` at all.
pub(crate) fn same_mount(a: &Path, b: &Path) -> io::Result<Option<bool>> {
    let mount = |p: &Path| rustix::fs::statx(CWD, p, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID);
    let (x, y) = match (mount(a), mount(b)) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(Errno::NOSYS), _) | (_, Err(Errno::NOSYS)) => return Ok(None),
        (Err(e), _) | (_, Err(e)) => return Err(e.into()),
    };
    let has_id = |s: &rustix::fs::Statx| StatxFlags::from_bits_retain(s.stx_mask).contains(StatxFlags::MNT_ID);
    if has_id(&x) && has_id(&y) {
        Ok(Some(x.stx_mnt_id == y.stx_mnt_id))
    } else {
        Ok(Some((x.stx_dev_major, x.stx_dev_minor) == (y.stx_dev_major, y.stx_dev_minor)))
    }
}

/// FUSE's `statfs` magic: sshfs, but ntfs-3g (a USB disk) too.
const FUSE: u32 = 0x6573_5546;

/// `statfs` magic numbers of volumes another machine (or a FUSE server) can change unseen: a
/// lease there says nothing about other writers.
const REMOTE_FILE_SYSTEMS: [u32; 13] = [
    0x6969,      // NFS
    0x517b,      // SMB
    0xff53_4d42, // CIFS
    0xfe53_4d42, // SMB2
    FUSE,        // sshfs, s3fs... and local ones too: it cannot tell
    0x0102_1997, // 9P
    0x00c3_6400, // Ceph
    0x5346_414f, // AFS
    0x6b41_4653, // kAFS
    0x7375_7245, // Coda
    0x564c,      // NCP
    0x7461_636f, // OCFS2
    0x0116_1970, // GFS2
];

/// See `platform::open_for_writing`.
pub(crate) fn open_for_writing(file: &File) -> io::Result<Option<bool>> {
    // The magic is a `long` holding a 32-bit value.
    if REMOTE_FILE_SYSTEMS.contains(&(rustix::fs::fstatfs(file)?.f_type as u32)) {
        return Ok(None);
    }
    read_lease(file, || {})
}

/// `F_GETSIG` / `F_SETSIG` (the asm-generic values; the libc crate has them only for musl).
const F_GETSIG: libc::c_int = 11;
const F_SETSIG: libc::c_int = 10;

/// Takes a read lease on `file` and gives it back at once, running `while_held` in between (for
/// tests). The kernel grants a read lease only while no descriptor anywhere has the file open
/// for writing: `EAGAIN` says someone has. Leases are not available (`None`) on file systems
/// without them (`EINVAL`), when disabled (`EINVAL`), short of locks (`ENOLCK`), or on a file of
/// another user without `CAP_LEASE` (`EACCES`).
fn read_lease(file: &File, while_held: impl FnOnce()) -> io::Result<Option<bool>> {
    let fd = file.as_raw_fd();
    let check = |r: libc::c_int| if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) };
    // A writer's open breaks the lease by signalling its holder: SIGIO unless told otherwise,
    // whose default action ends the process. SIGURG's default is to ignore it, and leafd has no
    // handler for it. The descriptor's signal is put back afterwards.
    // SAFETY: fcntl with integer arguments on a descriptor `file` keeps open.
    let signal = check(unsafe { libc::fcntl(fd, F_GETSIG) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, F_SETSIG, libc::SIGURG) })?;
    // SAFETY: as above.
    let answer = match check(unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) }) {
        Ok(_) => {
            while_held();
            // At once: while the lease is held a writer's open waits for it (up to
            // /proc/sys/fs/lease-break-time, 45 s by default).
            // SAFETY: as above.
            check(unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) }).map(|_| Some(false))
        }
        Err(e) => match Errno::from_io_error(&e) {
            Some(Errno::AGAIN) => Ok(Some(true)),
            Some(Errno::INVAL | Errno::NOLCK | Errno::OPNOTSUPP | Errno::ACCESS) => Ok(None),
            _ => Err(e),
        },
    };
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, F_SETSIG, signal) })?;
    answer
}

/// Finder's progress on an item (macOS): there is no Finder here.
pub(crate) struct FinderProgress;

impl FinderProgress {
    pub(crate) fn publish(_path: &Path, _total: u64) -> Option<FinderProgress> {
        None
    }

    pub(crate) fn update(&self, _done: u64, _total: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::{open_beneath, open_dir, open_for_writing};
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::symlink;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    #[test]
    fn open_beneath_follows_links_that_stay_beneath() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("in");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/f"), b"f").unwrap();
        std::fs::write(t.path().join("x"), b"outside").unwrap();
        symlink("a", root.join("to-a")).unwrap();
        symlink("f", root.join("a/to-f")).unwrap();
        symlink("..", root.join("a/up")).unwrap();
        symlink("../x", root.join("out")).unwrap();
        symlink(t.path().join("x"), root.join("abs")).unwrap();
        let dir = open_dir(&root).unwrap();
        for rel in ["to-a/f", "a/to-f", "a/up/to-a/to-f"] {
            let f = open_beneath(&dir, Path::new(rel), false).unwrap_or_else(|e| panic!("{rel}: {e}"));
            assert_eq!(std::io::read_to_string(f).unwrap(), "f");
        }
        for rel in ["out", "abs", "a/up/out", "a/up/a/up/../x"] {
            let e = open_beneath(&dir, Path::new(rel), false).unwrap_err();
            assert!(e.to_string().contains("outside its folder"), "{rel}: {e}");
        }
    }

    /// `from` bind-mounted on `on`, unmounted when dropped (a failed test included).
    struct BindMount(PathBuf);

    impl BindMount {
        fn new(from: &Path, on: &Path) -> BindMount {
            let ok = Command::new("mount").arg("--bind").arg(from).arg(on).status().unwrap().success();
            assert!(ok, "cannot bind-mount {from:?} on {on:?} (run the tests as root)");
            BindMount(on.to_path_buf())
        }
    }

    impl Drop for BindMount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }

    #[test]
    fn same_mount_tells_a_bind_mount_apart() {
        let t = tempfile::tempdir().unwrap();
        let (src, on) = (t.path().join("src"), t.path().join("on"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::create_dir(&on).unwrap();
        std::fs::write(src.join("f"), b"f").unwrap();
        let _mount = BindMount::new(&src, &on);
        // The case it exists for: the same device, yet rename fails across the mount.
        assert!(super::super::same_device(&src.join("f"), &on).unwrap());
        let e = std::fs::rename(src.join("f"), on.join("g")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
        let same_mount = super::super::same_mount;
        assert!(!same_mount(&src.join("f"), &on).unwrap());
        assert!(!same_mount(&on.join("f"), &t.path().join("src/sub")).unwrap());
        assert!(same_mount(&src.join("f"), &src.join("sub")).unwrap());
        assert!(same_mount(&on.join("f"), &on.join("sub")).unwrap());
        assert!(same_mount(&src, t.path()).unwrap());
        assert_eq!(same_mount(&t.path().join("missing"), &src).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    /// A process holding `path` open for writing until killed; returns once it has opened it.
    fn writer(path: &Path) -> Child {
        let mut child = Command::new("bash")
            .arg("-c")
            .arg("exec 3>>\"$1\"; echo open; exec sleep 30")
            .arg("writer")
            .arg(path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line, "open\n");
        child
    }

    /// Opens `path` for writing on a thread; how long that took (failing after 10 s).
    fn time_a_writers_open(path: &Path) -> Duration {
        let path = path.to_path_buf();
        let start = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(std::fs::OpenOptions::new().append(true).open(path).map(drop)));
        rx.recv_timeout(Duration::from_secs(10)).expect("a writer's open waited (a lease left held?)").unwrap();
        start.elapsed()
    }

    #[test]
    fn open_for_writing_sees_other_processes_writing() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("disk.vmdk");
        std::fs::write(&p, b"disk").unwrap();
        let file = File::open(&p).unwrap();
        // leafd's own read-only descriptors do not count.
        let _others = (File::open(&p).unwrap(), File::open(&p).unwrap());
        assert_eq!(open_for_writing(&file).unwrap(), Some(false));
        let mut child = writer(&p);
        assert_eq!(open_for_writing(&file).unwrap(), Some(true));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(open_for_writing(&file).unwrap(), Some(false));
        // The lease is given back: a writer's open does not wait for it to be broken.
        assert!(time_a_writers_open(&p) < Duration::from_secs(2));
        // A probe through a descriptor open for writing could only see itself.
        for f in [
            std::fs::OpenOptions::new().append(true).open(&p).unwrap(),
            crate::platform::open_regular(&p, true).unwrap(),
        ] {
            assert_eq!(open_for_writing(&f).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn a_writer_breaking_the_lease_neither_kills_leafd_nor_waits_long() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("disk.vmdk");
        std::fs::write(&p, b"disk").unwrap();
        let file = File::open(&p).unwrap();
        // The descriptor's own signal, put back after the probe (the kernel clears it with the lease).
        let sig = || {
            // SAFETY: fcntl with an integer argument on a descriptor `file` keeps open.
            unsafe { libc::fcntl(file.as_raw_fd(), F_GETSIG) }
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::fcntl(file.as_raw_fd(), F_SETSIG, libc::SIGWINCH) }, 0);
        let mut waited = None;
        // The break signals this process (with SIGIO, it would end it); the writer waits only
        // until the lease is given back.
        let answer = read_lease(&file, || {
            let q = p.clone();
            waited = Some(std::thread::spawn(move || time_a_writers_open(&q)));
            std::thread::sleep(Duration::from_millis(300));
        });
        assert_eq!(answer.unwrap(), Some(false));
        assert!(waited.unwrap().join().unwrap() < Duration::from_secs(2));
        assert_eq!(sig(), libc::SIGWINCH, "the descriptor's signal is put back");
        // And when the lease is refused.
        let mut child = writer(&p);
        assert_eq!(read_lease(&file, || {}).unwrap(), Some(true));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(sig(), libc::SIGWINCH, "the descriptor's signal is put back");
    }

    #[test]
    fn rename_noreplace_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        assert_eq!(rename_noreplace(&a, &b).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        rename_noreplace(&a, &dir.path().join("c")).unwrap();
        assert!(!a.exists() && std::fs::read(dir.path().join("c")).unwrap() == b"a");
    }

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
