//! The one error type: every failure names the file it concerns, what is wrong, and, where a person
//! can do something about it, how to fix it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What kind of failure this is; decides the exit code and how the agent reacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An I/O call failed.
    Io,
    /// A file is not in the format we expected (corrupt, truncated, not a VMDK...).
    Format,
    /// Valid, but something leafd does not handle (a disk type, an encoding...).
    Unsupported,
    /// The request is refused because of the state of the user's files (running VM, name taken...).
    Refused,
    /// Something else holds a lock we need; trying again later will work.
    Busy,
    /// The operation was cancelled (shutdown) and rolled back.
    Cancelled,
    /// A bug in leafd (a panic, a broken invariant), not the user's files.
    Internal,
}

/// A failure with the file it concerns and a hint for the person reading it.
#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub path: Option<PathBuf>,
    pub message: String,
    pub fix: Option<String>,
    pub source: Option<io::Error>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(kind: Kind, path: impl Into<Option<PathBuf>>, message: impl Into<String>) -> Error {
        Error { kind, path: path.into(), message: message.into(), fix: None, source: None }
    }

    /// An I/O failure while doing `what` on `path`.
    pub(crate) fn io(path: &Path, what: &str, source: io::Error) -> Error {
        Error {
            kind: Kind::Io,
            path: Some(path.to_path_buf()),
            message: format!("{what}: {source}"),
            fix: None,
            source: Some(source),
        }
    }

    /// A file that does not read as its format says; `message` may be a parse error of its text.
    pub(crate) fn format(path: &Path, message: impl fmt::Display) -> Error {
        Error::new(Kind::Format, path.to_path_buf(), message.to_string())
    }

    pub(crate) fn unsupported(path: &Path, message: impl Into<String>) -> Error {
        Error::new(Kind::Unsupported, path.to_path_buf(), message)
    }

    pub(crate) fn refused(path: &Path, message: impl Into<String>) -> Error {
        Error::new(Kind::Refused, path.to_path_buf(), message)
    }

    /// Adds the advice shown after the message.
    pub(crate) fn fix(mut self, fix: impl Into<String>) -> Error {
        self.fix = Some(fix.into());
        self
    }

    /// The first line: file and problem, without the advice.
    pub(crate) fn summary(&self) -> String {
        match &self.path {
            Some(p) => format!("{}: {}", p.display(), self.message),
            None => self.message.clone(),
        }
    }
}

/// The formats crate's errors keep their path, message, fix and OS error.
impl From<leafd_formats::Error> for Error {
    fn from(e: leafd_formats::Error) -> Error {
        use leafd_formats::ErrorKind as F;
        let (kind, message) = match e.kind {
            F::Io => (Kind::Io, e.message),
            F::Format => (Kind::Format, e.message),
            F::Unsupported => (Kind::Unsupported, e.message),
            // A file that failed to open is an I/O failure; a file the disk names but that is not
            // there makes the disk damaged.
            F::Missing if e.source.is_some() => (Kind::Io, e.message),
            F::Missing => (Kind::Format, e.message),
            F::Cancelled => (Kind::Cancelled, format!("{} (leafd is shutting down)", e.message)),
        };
        Error { kind, path: Some(e.path), message, fix: e.fix, source: e.source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())?;
        if let Some(fix) = &self.fix {
            write!(f, "\n  fix: {fix}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// Attaches the path to an `io::Result`, so no I/O error ever reaches the user without its file.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path, what: &str) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path, what: &str) -> Result<T> {
        self.map_err(|e| Error::io(path, what, e))
    }
}
