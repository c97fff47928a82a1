//! The crate's only way to the file system: every file it opens, creates, changes or flushes goes
//! through the [`Env`] it was given, so the caller decides how writes are made durable, traced or
//! confined. [`StdEnv`] is the plain one, for tests and fuzzing.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};

/// How the crate reaches the file system.
pub trait Env: Send + Sync {
    /// Opens an existing regular file (never blocking on a FIFO; anything else is refused).
    fn open(&self, path: &Path, write: bool) -> io::Result<File>;
    /// Creates a new file; fails if it exists.
    fn create(&self, path: &Path) -> io::Result<File>;
    /// Called before each change to a file opened for writing or created.
    fn changing(&self, file: &File, path: &Path, change: Change) -> io::Result<()>;
    /// Flushes a file it wrote.
    fn flush(&self, file: &File, path: &Path) -> io::Result<()>;
    /// Removes a file it created and could not finish.
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    /// True once the work should stop.
    fn cancelled(&self) -> bool;
    /// Called from long loops (a flatten) with the bytes of the work just done, so the caller
    /// can show progress; [`crate::flatten::work`] says how many a flatten will report. Default:
    /// nothing.
    fn progress(&self, _bytes: u64) {}
}

/// A change about to be made to a file, as told to [`Env::changing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `len` bytes written at byte `offset`.
    Write {
        /// Where the write starts, in bytes.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
    /// The file's length set to this many bytes.
    SetLen(u64),
}

/// Plain std file access: [`open_regular`], [`create_new`], `sync_all` to flush, never cancelled.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdEnv;

impl StdEnv {
    /// A `StdEnv` in the form the crate's functions take.
    pub fn shared() -> Arc<dyn Env> {
        Arc::new(StdEnv)
    }
}

impl Env for StdEnv {
    fn open(&self, path: &Path, write: bool) -> io::Result<File> {
        open_regular(path, write)
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        create_new(path)
    }

    fn changing(&self, _file: &File, _path: &Path, _change: Change) -> io::Result<()> {
        Ok(())
    }

    fn flush(&self, file: &File, _path: &Path) -> io::Result<()> {
        file.sync_all()
    }

    fn cancelled(&self) -> bool {
        false
    }
}

/// Opens an existing regular file for reading (and writing). It is opened non-blocking, so a
/// FIFO (or a device) put where a disk file should be cannot hang the caller, and is refused
/// with anything else that is not a regular file; then it is made blocking again.
pub fn open_regular(path: &Path, write: bool) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(write).custom_flags(libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Creates a new file for reading and writing; fails if anything exists at `path`.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create_new(true).open(path)
}

/// Writes `data` at byte `offset` of `file`, telling `env` first.
pub(crate) fn write_at(env: &Arc<dyn Env>, file: &File, path: &Path, data: &[u8], offset: u64) -> io::Result<()> {
    env.changing(file, path, Change::Write { offset, len: data.len() as u64 })?;
    file.write_all_at(data, offset)
}

/// Sets the length of `file`, telling `env` first.
pub(crate) fn set_len(env: &Arc<dyn Env>, file: &File, path: &Path, len: u64) -> io::Result<()> {
    env.changing(file, path, Change::SetLen(len))?;
    file.set_len(len)
}

/// `Cancelled` (about `path`) once `env` says to stop.
pub(crate) fn check_cancelled(env: &Arc<dyn Env>, path: &Path) -> Result<()> {
    if env.cancelled() { Err(Error::cancelled(path)) } else { Ok(()) }
}
