//! Opening files so that nothing can make leafd wait forever or lead it out of a folder.
//!
//! Every open here is `O_NONBLOCK` (opening a FIFO otherwise waits for a writer, forever),
//! `O_CLOEXEC` (no program leafd runs inherits it) and `O_NOCTTY` (a terminal device never
//! becomes the agent's controlling terminal). The descriptor is then `fstat`ed and anything but
//! what was asked for (a regular file, or a folder) is refused with an error saying what it is;
//! only then is `O_NONBLOCK` cleared, so reads and writes behave as usual.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

/// What an open is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    File { write: bool },
    Dir,
}

impl Want {
    /// The flags of the final open (a folder on the way is opened with [`SEARCH_FLAGS`]).
    pub(super) fn flags(self) -> OFlags {
        let always = OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
        match self {
            Want::File { write: true } => always | OFlags::RDWR,
            Want::File { write: false } => always | OFlags::RDONLY,
            Want::Dir => always | OFlags::RDONLY | OFlags::DIRECTORY,
        }
    }

    fn file_type(self) -> FileType {
        match self {
            Want::File { .. } => FileType::RegularFile,
            Want::Dir => FileType::Directory,
        }
    }
}

/// Opens the regular file `path`, read-only or (`write`) read-write, without ever blocking.
///
/// Anything else is refused with an error saying what it is: "is a FIFO, not a regular file"
/// (at once: the open does not wait for a writer), "is a character device...", "is a socket...",
/// "is a folder..." (`IsADirectory`; the others `InvalidInput`). A symbolic link as the last
/// component is refused too ("is a symbolic link..."): leafd never acts on a linked disk file.
/// Links earlier in the path (a linked library root, say) are followed; for paths read from a
/// VM's files use [`open_beneath`]. A device node is refused only after its driver's open ran
/// (nonblocking, so a serial line does not wait for a carrier); making one needs root. An open
/// that would have to wait for another process's lease fails with `WouldBlock` instead.
pub(crate) fn open_regular(path: &Path, write: bool) -> io::Result<File> {
    let want = Want::File { write };
    let fd = rustix::fs::open(path, want.flags() | OFlags::NOFOLLOW, Mode::empty())
        .map_err(|e| explain(e, rustix::fs::lstat(path).map(|s| kind(&s)), want))?;
    finish(fd, want)
}

/// Opens the folder `path` (following links, as its path names it), for [`open_beneath`],
/// `fsync` or the `*_fd` changes. Anything else is refused (`NotADirectory`, saying what it is).
pub(crate) fn open_dir(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(path, Want::Dir.flags(), Mode::empty())
        .map_err(|e| explain(e, rustix::fs::stat(path).map(|s| kind(&s)), Want::Dir))?;
    finish(fd, Want::Dir)
}

/// Opens the regular file `rel` beneath the open folder `dir` (see [`open_dir`]), read-only or
/// (`write`) read-write, never reaching outside it: for paths read from a VM's own files. What
/// is not a regular file is refused as by [`open_regular`], without blocking.
///
/// An absolute `rel`, a `..` above `dir`, and any symbolic link leading outside are refused
/// ("leads outside its folder", `InvalidInput`), whatever renames happen meanwhile. Links
/// inside differ by platform:
/// - Linux: `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: links that stay beneath
///   `dir` are followed (the last component's too), as VMware would. Where the kernel has no
///   `openat2` (before 5.6, or a seccomp filter answering `ENOSYS`): as macOS.
/// - macOS (and that Linux fallback): one component at a time, each opened with `O_NOFOLLOW`, so
///   every symbolic link is refused ("leads through the symbolic link ...", or "is a symbolic
///   link" for the last), each `..` going back to the folder it came from and refused above
///   `dir`. With no link followed this is the kernel's own resolution: leafd opens the very file
///   VMware would, or none. (One walk rather than a lexical check and `O_NOFOLLOW_ANY`: a
///   lexical `a/..` would skip `a`, which VMware resolves, and the walk is tested on Linux.)
pub(crate) fn open_beneath(dir: impl AsFd, rel: &Path, write: bool) -> io::Result<File> {
    let want = Want::File { write };
    finish(resolve_beneath(dir.as_fd(), rel, want)?, want)
}

fn resolve_beneath(dir: BorrowedFd<'_>, rel: &Path, want: Want) -> io::Result<OwnedFd> {
    // "" would name `dir` itself on one path and nothing on the other.
    if rel.as_os_str().is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
    }
    #[cfg(not(target_os = "macos"))]
    if let Some(opened) = openat2_beneath(dir, rel, want) {
        return opened;
    }
    walk_beneath(dir, rel, want)
}

/// How the walk beneath a folder opens the folders on its way: `O_PATH` needs only search
/// permission, as the kernel's own resolution does.
#[cfg(not(target_os = "macos"))]
const SEARCH_FLAGS: OFlags = OFlags::PATH;

/// How the walk beneath a folder opens the folders on its way (macOS has no `O_PATH`).
#[cfg(target_os = "macos")]
const SEARCH_FLAGS: OFlags = OFlags::RDONLY;

/// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` (see [`open_beneath`]); `None` where
/// the kernel has none (before 5.6, or a seccomp filter), so the caller walks instead.
#[cfg(not(target_os = "macos"))]
fn openat2_beneath(dir: BorrowedFd<'_>, rel: &Path, want: Want) -> Option<io::Result<OwnedFd>> {
    use rustix::fs::ResolveFlags;
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    // EAGAIN: a rename or mount raced with the resolution, and the kernel asks to be retried.
    for _ in 0..8 {
        match rustix::fs::openat2(dir, rel, want.flags(), Mode::empty(), how) {
            Ok(fd) => return Some(Ok(fd)),
            Err(Errno::NOSYS) => return None,
            Err(Errno::XDEV) => return Some(Err(escapes())),
            Err(Errno::AGAIN) => continue,
            Err(e) => {
                // What the path is, without opening it (`O_PATH`), resolved the same way.
                let found = rustix::fs::openat2(dir, rel, OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), how)
                    .and_then(rustix::fs::fstat)
                    .map(|s| kind(&s));
                return Some(Err(explain(e, found, want)));
            }
        }
    }
    Some(Err(Errno::AGAIN.into()))
}

/// Resolves `rel` beneath `dir` one component at a time, as [`open_beneath`] describes for macOS.
pub(super) fn walk_beneath(dir: BorrowedFd<'_>, rel: &Path, want: Want) -> io::Result<OwnedFd> {
    let mut parts: Vec<Component<'_>> = rel.components().collect();
    let last = match parts.last() {
        Some(Component::Normal(name)) => {
            let name = *name;
            parts.pop();
            name
        }
        // Ends in `..` (or is `.`): the folder reached is the target.
        _ => OsStr::new("."),
    };
    // The folders walked through: `..` goes back to the one before, not to whatever the
    // kernel's `..` is by now.
    let mut walked: Vec<OwnedFd> = Vec::new();
    for part in parts {
        let at = walked.last().map_or(dir, |f| f.as_fd());
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                walked.pop().ok_or_else(escapes)?;
            }
            Component::RootDir | Component::Prefix(_) => return Err(escapes()),
            Component::Normal(name) => {
                let step = SEARCH_FLAGS | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let next =
                    rustix::fs::openat(at, name, step | OFlags::NONBLOCK, Mode::empty()).map_err(|e| match stat_at(
                        at, name,
                    ) {
                        Ok(FileType::Symlink) => through_link(name),
                        _ => e.into(),
                    })?;
                walked.push(next);
            }
        }
    }
    let at = walked.last().map_or(dir, |f| f.as_fd());
    rustix::fs::openat(at, last, want.flags() | OFlags::NOFOLLOW, Mode::empty())
        .map_err(|e| explain(e, stat_at(at, last), want))
}

fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<FileType> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map(|s| kind(&s))
}

pub(super) fn kind(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

/// Refuses what is not what was asked for; else clears `O_NONBLOCK` and hands the file over.
fn finish(fd: OwnedFd, want: Want) -> io::Result<File> {
    let found = kind(&rustix::fs::fstat(&fd)?);
    if found != want.file_type() {
        return Err(refusal(found, want));
    }
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK)?;
    Ok(File::from(fd))
}

/// A failed open, as a refusal saying what the path is when that is the reason (a socket
/// cannot be opened, nor a folder for writing; `found` is what a stat of it says); else the
/// open's own error.
pub(super) fn explain(err: Errno, found: rustix::io::Result<FileType>, want: Want) -> io::Error {
    match found {
        Ok(found) if found != want.file_type() => refusal(found, want),
        _ => err.into(),
    }
}

fn refusal(found: FileType, want: Want) -> io::Error {
    let kind = match (want, found) {
        (Want::File { .. }, FileType::Directory) => io::ErrorKind::IsADirectory,
        (Want::Dir, _) => io::ErrorKind::NotADirectory,
        _ => io::ErrorKind::InvalidInput,
    };
    io::Error::new(kind, format!("is {}, not {}", describe(found), describe(want.file_type())))
}

fn describe(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a folder",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "a file of an unknown type",
    }
}

pub(super) fn escapes() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "leads outside its folder (an absolute path, a `..` or a link)")
}

fn through_link(name: &OsStr) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("leads through the symbolic link {:?} (links are not followed here)", name.to_string_lossy()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;
    use std::time::Duration;

    /// Runs `f` on a thread and fails the test if it takes more than 5 s (a blocked open).
    fn within_5s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| panic!("{what} blocked"))
    }

    fn mkfifo(p: &Path) {
        let ok = std::process::Command::new("mkfifo").arg(p).status().unwrap().success();
        assert!(ok, "mkfifo {p:?}");
    }

    fn message(r: io::Result<File>) -> (io::ErrorKind, String) {
        let e = r.expect_err("must be refused");
        (e.kind(), e.to_string())
    }

    /// The issue 10 attack: `s -> .` and `up -> s/s/../..` inside a bundle make `up` the folder two
    /// levels above it, though a lexical check of `up/other/Victim.vmwarevm/Disk.vmdk` stays inside.
    fn attack() -> (tempfile::TempDir, File) {
        let t = tempfile::tempdir().unwrap();
        let bundle = t.path().join("lib/VM.vmwarevm");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::create_dir_all(t.path().join("other/Victim.vmwarevm")).unwrap();
        std::fs::write(t.path().join("other/Victim.vmwarevm/Disk.vmdk"), b"victim").unwrap();
        symlink(".", bundle.join("s")).unwrap();
        symlink("s/s/../..", bundle.join("up")).unwrap();
        // The kernel's own resolution reaches the victim: the attack is real.
        assert_eq!(std::fs::read(bundle.join("up/other/Victim.vmwarevm/Disk.vmdk")).unwrap(), b"victim");
        let dir = open_dir(&bundle).unwrap();
        (t, dir)
    }

    #[test]
    fn open_regular_opens_files_and_clears_nonblock() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        for write in [false, true] {
            let f = open_regular(&p, write).unwrap();
            let flags = rustix::fs::fcntl_getfl(&f).unwrap();
            assert!(!flags.contains(OFlags::NONBLOCK), "{flags:?}");
            assert_eq!(flags.contains(OFlags::RDWR), write);
            assert!(rustix::io::fcntl_getfd(&f).unwrap().contains(rustix::io::FdFlags::CLOEXEC));
        }
        use std::io::Write;
        open_regular(&p, true).unwrap().write_all(b"y").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"y");
        assert!(open_regular(&p, false).unwrap().write_all(b"z").is_err());
    }

    #[test]
    fn open_regular_refuses_a_fifo_without_blocking() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("fifo");
        mkfifo(&p);
        for write in [false, true] {
            let q = p.clone();
            let (kind, msg) = message(within_5s("opening a FIFO", move || open_regular(&q, write)));
            assert_eq!(kind, io::ErrorKind::InvalidInput);
            assert!(msg.contains("is a FIFO"), "{msg}");
        }
    }

    #[test]
    fn open_regular_says_what_else_it_refuses() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        symlink("/etc/hostname", t.path().join("link")).unwrap();
        let cases = [
            (t.path().to_path_buf(), "is a folder", io::ErrorKind::IsADirectory),
            (PathBuf::from("/dev/null"), "is a character device", io::ErrorKind::InvalidInput),
            (sock, "is a socket", io::ErrorKind::InvalidInput),
            (t.path().join("link"), "is a symbolic link", io::ErrorKind::InvalidInput),
        ];
        for (p, what, kind) in cases {
            for write in [false, true] {
                let (k, msg) = message(open_regular(&p, write));
                assert!(msg.contains(what) && msg.contains("not a regular file"), "{p:?} {write}: {msg}");
                assert_eq!(k, kind, "{p:?} {write}: {msg}");
            }
        }
        let e = open_regular(&t.path().join("missing"), false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn open_dir_refuses_files() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"").unwrap();
        let d = open_dir(t.path()).unwrap();
        assert!(!rustix::fs::fcntl_getfl(&d).unwrap().contains(OFlags::NONBLOCK));
        let (kind, msg) = message(open_dir(&t.path().join("f")));
        assert_eq!(kind, io::ErrorKind::NotADirectory);
        assert!(msg.contains("is a regular file, not a folder"), "{msg}");
    }

    /// Both resolutions (on Linux, `openat2` and the walk kept for kernels without it).
    fn both(dir: &File, rel: &str, want: Want) -> Vec<io::Result<File>> {
        let rel = Path::new(rel);
        let walked = walk_beneath(dir.as_fd(), rel, want).and_then(|fd| finish(fd, want));
        let opened = match want {
            Want::File { write } => open_beneath(dir, rel, write),
            Want::Dir => resolve_beneath(dir.as_fd(), rel, want).and_then(|fd| finish(fd, want)),
        };
        vec![opened, walked]
    }

    #[test]
    fn open_beneath_refuses_the_issue_10_attack() {
        let (_t, dir) = attack();
        for r in both(&dir, "up/other/Victim.vmwarevm/Disk.vmdk", Want::File { write: false }) {
            let (kind, msg) = message(r);
            assert_eq!(kind, io::ErrorKind::InvalidInput);
            assert!(msg.contains("outside") || msg.contains("symbolic link \"up\""), "{msg}");
        }
        // The walk names the link it refused.
        let (_, msg) =
            message(walk_beneath(dir.as_fd(), Path::new("up/x"), Want::Dir).and_then(|fd| finish(fd, Want::Dir)));
        assert!(msg.contains("symbolic link \"up\""), "{msg}");
    }

    #[test]
    fn open_beneath_refuses_absolute_paths_and_climbing_out() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("in/a")).unwrap();
        std::fs::write(t.path().join("x"), b"outside").unwrap();
        std::fs::write(t.path().join("in/x"), b"inside").unwrap();
        let dir = open_dir(&t.path().join("in")).unwrap();
        let abs = t.path().join("in/x");
        for rel in [abs.to_str().unwrap(), "../x", "a/../../x", "./../in/x"] {
            for r in both(&dir, rel, Want::File { write: false }) {
                let (kind, msg) = message(r);
                assert_eq!(kind, io::ErrorKind::InvalidInput, "{rel}: {msg}");
                assert!(msg.contains("outside its folder"), "{rel}: {msg}");
            }
        }
        // A `..` that stays inside is fine.
        for r in both(&dir, "a/../x", Want::File { write: false }) {
            assert_eq!(std::io::read_to_string(r.unwrap()).unwrap(), "inside");
        }
    }

    #[test]
    fn open_beneath_opens_files_and_folders_inside() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::write(t.path().join("a/b/f"), b"f").unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(t.path().join("a/sock")).unwrap();
        let dir = open_dir(t.path()).unwrap();
        for r in both(&dir, "a/./b//f", Want::File { write: true }) {
            let f = r.unwrap();
            assert!(!rustix::fs::fcntl_getfl(&f).unwrap().contains(OFlags::NONBLOCK));
            assert_eq!(std::io::read_to_string(f).unwrap(), "f");
        }
        for r in both(&dir, "a/b", Want::Dir) {
            let sub = r.unwrap();
            assert_eq!(std::io::read_to_string(open_beneath(&sub, Path::new("f"), false).unwrap()).unwrap(), "f");
        }
        for (rel, want, what) in [
            ("a/b", Want::File { write: false }, "is a folder, not a regular file"),
            ("a/b/..", Want::File { write: true }, "is a folder, not a regular file"),
            ("a/b/f", Want::Dir, "is a regular file, not a folder"),
            // A socket cannot be opened at all: what it is comes from a stat.
            ("a/sock", Want::File { write: false }, "is a socket, not a regular file"),
        ] {
            for r in both(&dir, rel, want) {
                let (_, msg) = message(r);
                assert!(msg.contains(what), "{rel}: {msg}");
            }
        }
        // Refused before either resolution.
        assert_eq!(open_beneath(&dir, Path::new(""), false).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        for r in both(&dir, "a/missing", Want::File { write: false }) {
            assert_eq!(r.unwrap_err().kind(), io::ErrorKind::NotFound);
        }
    }

    #[test]
    fn open_beneath_refuses_a_fifo_without_blocking() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("a")).unwrap();
        mkfifo(&t.path().join("a/fifo"));
        let dir = open_dir(t.path()).unwrap();
        for write in [false, true] {
            let results = within_5s("opening a FIFO beneath", {
                let dir = dir.try_clone().unwrap();
                move || both(&dir, "a/fifo", Want::File { write })
            });
            for r in results {
                let (_, msg) = message(r);
                assert!(msg.contains("is a FIFO"), "{msg}");
            }
        }
    }

    #[test]
    fn the_walk_refuses_every_link() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("a")).unwrap();
        std::fs::write(t.path().join("a/f"), b"f").unwrap();
        symlink("a", t.path().join("to-a")).unwrap();
        symlink("f", t.path().join("a/to-f")).unwrap();
        let dir = open_dir(t.path()).unwrap();
        let walk = |rel: &str, want| walk_beneath(dir.as_fd(), Path::new(rel), want).and_then(|fd| finish(fd, want));
        let (_, msg) = message(walk("to-a/f", Want::File { write: false }));
        assert!(msg.contains("symbolic link \"to-a\""), "{msg}");
        let (_, msg) = message(walk("a/to-f", Want::File { write: false }));
        assert!(msg.contains("is a symbolic link, not a regular file"), "{msg}");
        let (_, msg) = message(walk("to-a", Want::Dir));
        assert!(msg.contains("is a symbolic link, not a folder"), "{msg}");
        // A link is refused even where a `..` would step back out of it.
        let (_, msg) = message(walk("to-a/../a/f", Want::File { write: false }));
        assert!(msg.contains("symbolic link \"to-a\""), "{msg}");
    }
}
