//! How the crate works with files: only through the `Env` it is given, and with errors that
//! name the file and say what kind of failure it is.

#![allow(unused_crate_dependencies)] // every dependency reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use leafd_formats::disk::{self, Disk, DiskType, NewDisk};
use leafd_formats::flatten::flatten;
use leafd_formats::sparse::SECTOR;
use leafd_formats::{Change, Env, ErrorKind, StdEnv, open_regular};

const MIB: u64 = 1 << 20;

/// `StdEnv`, recording every change announced and every flush, and cancelled on request.
#[derive(Default)]
struct Recording {
    changes: Mutex<Vec<(PathBuf, Change)>>,
    flushed: Mutex<Vec<PathBuf>>,
    cancelled: bool,
}

impl Env for Recording {
    fn open(&self, path: &Path, write: bool) -> io::Result<File> {
        StdEnv.open(path, write)
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        StdEnv.create(path)
    }

    fn changing(&self, _file: &File, path: &Path, change: Change) -> io::Result<()> {
        self.changes.lock().unwrap().push((path.to_path_buf(), change));
        Ok(())
    }

    fn flush(&self, file: &File, path: &Path) -> io::Result<()> {
        self.flushed.lock().unwrap().push(path.to_path_buf());
        StdEnv.flush(file, path)
    }

    fn cancelled(&self) -> bool {
        self.cancelled
    }
}

fn new_disk(env: &Arc<dyn Env>, path: &Path, disk_type: DiskType, extents: Vec<u64>) -> Vec<PathBuf> {
    let spec = NewDisk { path, disk_type, extents, cid: 0x1234_5678, parent: None, ddb: Vec::new() };
    disk::create(env, &spec).unwrap()
}

/// Every byte that is not zero in `path` lies in a write announced for it: nothing was written
/// behind the env's back.
fn all_data_announced(path: &Path, changes: &[(PathBuf, Change)]) {
    let writes: Vec<(u64, u64)> = changes
        .iter()
        .filter(|(p, _)| p == path)
        .filter_map(|(_, c)| match *c {
            Change::Write { offset, len } => Some((offset, offset + len)),
            Change::SetLen(_) => None,
        })
        .collect();
    let bytes = std::fs::read(path).unwrap();
    for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b != 0) {
        let i = i as u64;
        assert!(writes.iter().any(|&(a, b)| a <= i && i < b), "{}: byte {i} written unannounced", path.display());
    }
}

#[test]
fn every_write_is_announced_and_every_new_file_flushed() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recording::default());
    let env: Arc<dyn Env> = rec.clone();
    let mut made = new_disk(&env, &tmp.path().join("split.vmdk"), DiskType::SplitSparse, vec![4096, 4096, 2048]);
    made.extend(new_disk(&env, &tmp.path().join("flat.vmdk"), DiskType::MonolithicFlat, vec![8192]));
    for name in ["split.vmdk", "flat.vmdk"] {
        let d = Disk::open_writable(&env, &tmp.path().join(name)).unwrap();
        // Across an extent boundary, a partial grain, and the last sector.
        d.write_at(4096 * SECTOR - 1000, &[0x5a; 3000]).unwrap();
        d.write_at(100, &[0x11; 10]).unwrap();
        d.write_at(d.capacity() * SECTOR - SECTOR, &[0x22; 512]).unwrap();
        d.sync().unwrap();
    }
    let src = Disk::open(&env, &tmp.path().join("split.vmdk")).unwrap();
    made.extend(flatten(&env, &src, &tmp.path().join("mono.vmdk"), None).unwrap());
    made.extend(flatten(&env, &src, &tmp.path().join("again.vmdk"), Some(src.extent_sectors())).unwrap());

    let changes = rec.changes.lock().unwrap();
    let flushed: HashSet<PathBuf> = rec.flushed.lock().unwrap().iter().cloned().collect();
    assert_eq!(made.len(), 4 + 2 + 1 + 4);
    for f in &made {
        assert!(flushed.contains(f), "{} was never flushed", f.display());
        all_data_announced(f, &changes);
    }
    let sized: HashSet<&PathBuf> =
        changes.iter().filter(|(_, c)| matches!(c, Change::SetLen(_))).map(|(p, _)| p).collect();
    assert!(sized.contains(&tmp.path().join("flat-flat.vmdk")), "a flat extent's length is a change too");
}

#[test]
fn a_cancelled_env_stops_a_flatten() {
    let tmp = tempfile::tempdir().unwrap();
    let env = StdEnv::shared();
    let src = tmp.path().join("src.vmdk");
    new_disk(&env, &src, DiskType::MonolithicSparse, vec![2 * MIB / SECTOR]);
    Disk::open_writable(&env, &src).unwrap().write_at(0, &[1; 4096]).unwrap();
    let src = Disk::open(&env, &src).unwrap();
    let stop: Arc<dyn Env> = Arc::new(Recording { cancelled: true, ..Recording::default() });
    let dst = tmp.path().join("flat.vmdk");
    let e = flatten(&stop, &src, &dst, None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Cancelled, "{e}");
    assert!(e.path.starts_with(tmp.path()) && e.message == "stopped before finishing", "{e}");
}

#[test]
fn missing_files_are_missing_and_say_which() {
    let tmp = tempfile::tempdir().unwrap();
    let env = StdEnv::shared();
    // The disk itself: the OS error comes with it.
    let gone = tmp.path().join("gone.vmdk");
    let e = Disk::open(&env, &gone).err().unwrap();
    assert!(e.kind == ErrorKind::Missing && e.source.is_some() && e.path == gone, "{e}");

    // An extent the descriptor names.
    let split = tmp.path().join("split.vmdk");
    let files = new_disk(&env, &split, DiskType::SplitSparse, vec![4096, 4096]);
    std::fs::remove_file(&files[2]).unwrap();
    let e = Disk::open(&env, &split).err().unwrap();
    assert!(e.kind == ErrorKind::Missing && e.source.is_none() && e.path == split, "{e}");
    assert_eq!(e.message, format!("extent {} is missing", files[2].display()));
    assert!(e.fix.is_some());

    // The parent a delta names.
    let delta = tmp.path().join("delta.vmdk");
    let spec = NewDisk {
        path: &delta,
        disk_type: DiskType::MonolithicSparse,
        extents: vec![8192],
        cid: 1,
        parent: Some(("parent.vmdk", 2)),
        ddb: Vec::new(),
    };
    disk::create(&env, &spec).unwrap();
    let e = Disk::open(&env, &delta).err().unwrap();
    assert!(e.kind == ErrorKind::Missing && e.source.is_none() && e.path == delta, "{e}");
    assert!(e.to_string().ends_with(&format!("parent disk {} is missing", tmp.path().join("parent.vmdk").display())));
}

#[test]
fn a_one_gib_descriptor_is_refused_without_being_read() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("huge.vmdk");
    let f = File::create(&d).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\n", 0).unwrap();
    f.set_len(1 << 30).unwrap();
    let err = disk::read_descriptor(&StdEnv::shared(), &d).unwrap_err().to_string();
    assert!(err.contains("huge.vmdk") && err.contains("too large for a disk descriptor"), "{err}");
}

#[test]
fn only_regular_files_open_and_a_fifo_never_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("disk.vmdk");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Opening a FIFO without a writer would block forever; it is refused at once instead.
    for write in [false, true] {
        let e = open_regular(&fifo, write).unwrap_err();
        assert!(e.kind() == io::ErrorKind::InvalidInput || e.raw_os_error() == Some(libc::ENXIO), "{e}");
    }
    assert!(open_regular(tmp.path(), false).is_err(), "a folder is not a disk file");
    let e = Disk::open(&StdEnv::shared(), &fifo).err().unwrap();
    assert!(e.kind == ErrorKind::Io && e.message == "cannot open disk: not a regular file", "{e}");

    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let f = open_regular(&file, true).unwrap();
    // SAFETY: fcntl on an open descriptor.
    let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    assert_eq!(flags & libc::O_NONBLOCK, 0, "the file is blocking again once checked");
}
