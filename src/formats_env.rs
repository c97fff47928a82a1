//! How the VMware formats crate reaches the file system from leafd: every disk file leafd opens,
//! creates, writes, flushes or removes passes through [`crate::durable`] here, and, while a dropped bundle
//! is inspected, only files beneath the folders it may use are opened at all.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use leafd_formats::{Change, Env};

use crate::durable;
use crate::fsutil::Cancel;
use crate::platform;

/// leafd's [`Env`].
pub(crate) struct LeafdEnv {
    cancel: Arc<Cancel>,
    /// When set, files are opened only beneath one of these folders (each with its descriptor),
    /// never following a link out of it.
    beneath: Option<Vec<(PathBuf, File)>>,
}

impl LeafdEnv {
    /// An env that is cancelled once `cancel` is set.
    pub(crate) fn shared(cancel: Arc<Cancel>) -> Arc<dyn Env> {
        Arc::new(LeafdEnv { cancel, beneath: None })
    }

    /// An env that opens files only beneath `folders` (a dropped bundle, and the base a leaf
    /// dropped into Make Base still reads from).
    pub(crate) fn beneath(cancel: Arc<Cancel>, folders: &[PathBuf]) -> io::Result<Arc<dyn Env>> {
        let beneath = folders.iter().map(|f| Ok((f.clone(), platform::open_dir(f)?))).collect::<io::Result<_>>()?;
        Ok(Arc::new(LeafdEnv { cancel, beneath: Some(beneath) }))
    }

    fn open_confined(&self, path: &Path, write: bool) -> io::Result<File> {
        let Some(folders) = &self.beneath else { return platform::open_regular(path, write) };
        for (dir, fd) in folders {
            if let Ok(rel) = path.strip_prefix(dir) {
                return platform::open_beneath(fd, rel, write);
            }
        }
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "is outside the VM bundle"))
    }
}

impl Env for LeafdEnv {
    fn open(&self, path: &Path, write: bool) -> io::Result<File> {
        durable::open_for_formats(path, write, || self.open_confined(path, write))
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        durable::create_for_formats(path)
    }

    fn changing(&self, file: &File, path: &Path, change: Change) -> io::Result<()> {
        durable::changing(file, path, change)
    }

    fn flush(&self, file: &File, path: &Path) -> io::Result<()> {
        durable::flush_for_formats(file, path)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        durable::remove_for_formats(path)
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn progress(&self, bytes: u64) {
        crate::progress::meter::add(bytes);
    }
}
