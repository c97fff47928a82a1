//! How the VMware formats crate reaches the file system from leafd: the one [`Env`] leafd gives
//! it, so that every disk file leafd opens, creates, writes or flushes passes through here.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use leafd_formats::{Change, Env};

use crate::fsutil::Cancel;
use crate::platform;

/// leafd's [`Env`]: opens regular files only, never blocking, flushes as the platform allows, and
/// stops when leafd is shutting down.
pub struct LeafdEnv {
    cancel: Arc<Cancel>,
}

impl LeafdEnv {
    /// An env that is cancelled once `cancel` is set.
    pub fn shared(cancel: Arc<Cancel>) -> Arc<dyn Env> {
        Arc::new(LeafdEnv { cancel })
    }
}

impl Env for LeafdEnv {
    fn open(&self, path: &Path, write: bool) -> io::Result<File> {
        leafd_formats::open_regular(path, write)
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        leafd_formats::create_new(path)
    }

    /// The hook for every change the formats crate makes to a file; nothing to do yet.
    fn changing(&self, _file: &File, _path: &Path, _change: Change) -> io::Result<()> {
        Ok(())
    }

    fn flush(&self, file: &File, _path: &Path) -> io::Result<()> {
        platform::full_sync(file)
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}
