//! The one error type: every failure names the file it concerns, what is wrong, and, where a person
//! can do something about it, how to fix it. Callers decide on its [`Kind`], never on its text.
//!
//! # Exit codes
//!
//! Decided here alone ([`Exit`]), from how a command ends:
//!
//! | code | when |
//! |---|---|
//! | 0 | it did what was asked |
//! | 1 | it was refused or failed (an error of any kind but `Usage`), or it found problems (`verify`, and `recover` with operations left) |
//! | 2 | bad usage: what clap refuses (an unknown command or flag, a missing argument), and a value on the command line that leafd's own checks refuse (`Kind::Usage`) |

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    /// A value given on the command line that makes no sense (`--settle -1`).
    Usage,
}

/// How the program ends (the table in this module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// 0: done as asked.
    Success,
    /// 1: refused, failed, or problems found.
    Failed,
    /// 2: bad usage.
    Usage,
}

impl Kind {
    /// How a command that ends with an error of this kind exits.
    pub(crate) fn exit(self) -> Exit {
        match self {
            Kind::Usage => Exit::Usage,
            Kind::Io
            | Kind::Format
            | Kind::Unsupported
            | Kind::Refused
            | Kind::Busy
            | Kind::Cancelled
            | Kind::Internal => Exit::Failed,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(match exit {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
        })
    }
}

/// What caused an error: the OS error, or another program's or library's error.
pub type Cause = Box<dyn StdError + Send + Sync + 'static>;

/// A failure with the file it concerns and a hint for the person reading it.
#[derive(Debug)]
pub struct Error {
    /// What the caller decides on (never the message).
    pub kind: Kind,
    /// The file or folder it concerns.
    pub path: Option<PathBuf>,
    /// What is wrong, without the path.
    pub message: String,
    /// What a person can do about it.
    pub fix: Option<String>,
    /// What caused it: the start of the chain [`StdError::source`] walks.
    pub source: Option<Cause>,
}

/// A result with leafd's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(kind: Kind, path: impl Into<Option<PathBuf>>, message: impl Into<String>) -> Error {
        Error { kind, path: path.into(), message: message.into(), fix: None, source: None }
    }

    /// An I/O failure while doing `what` on `path`.
    pub(crate) fn io(path: &Path, what: &str, source: io::Error) -> Error {
        let message = format!("{what}: {source}");
        Error::new(Kind::Io, path.to_path_buf(), message).because(source)
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

    /// A value on the command line that makes no sense.
    pub(crate) fn usage(message: impl Into<String>) -> Error {
        Error::new(Kind::Usage, None, message)
    }

    /// A bug in leafd: something that cannot happen did.
    pub(crate) fn internal(path: impl Into<Option<PathBuf>>, message: impl Into<String>) -> Error {
        Error::new(Kind::Internal, path, message)
    }

    /// Adds the advice shown after the message.
    pub(crate) fn fix(mut self, fix: impl Into<String>) -> Error {
        self.fix = Some(fix.into());
        self
    }

    /// Keeps `cause` as what caused this error.
    pub(crate) fn because(mut self, cause: impl Into<Cause>) -> Error {
        self.source = Some(cause.into());
        self
    }

    /// This error, met while undoing what an operation had begun after `original` made it fail:
    /// the error returned keeps `original`'s kind (what callers decide on), says both, and keeps
    /// this one's cause.
    pub(crate) fn while_undoing(self, original: &Error) -> Error {
        Error { kind: original.kind, message: format!("{} (while undoing after: {original})", self.message), ..self }
    }

    /// The OS error in the chain of causes, if there is one.
    pub(crate) fn io_error(&self) -> Option<&io::Error> {
        let mut cause = self.source.as_deref().map(|c| c as &(dyn StdError + 'static));
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<io::Error>() {
                return Some(io);
            }
            cause = c.source();
        }
        None
    }

    /// The first line: file and problem, without the advice.
    pub(crate) fn summary(&self) -> String {
        match &self.path {
            Some(p) => format!("{}: {}", p.display(), self.message),
            None => self.message.clone(),
        }
    }
}

/// Undoes what an operation had begun after `original` made it fail, with `undo`; returns the
/// error the operation fails with: `original`, or (when undoing failed too) the undo's failure
/// with `original`'s kind ([`Error::while_undoing`]).
pub(crate) fn undo_after(original: Error, undo: impl FnOnce() -> Result<()>) -> Error {
    match undo() {
        Ok(()) => original,
        Err(e) => e.while_undoing(&original),
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
        Error { kind, path: Some(e.path), message, fix: e.fix, source: e.source.map(|s| Box::new(s) as Cause) }
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

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|c| c as _)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undo_that_fails_keeps_the_original_kind_and_its_own_cause() {
        let original = Error::refused(Path::new("/l/VM.vmwarevm"), "the VM changed");
        let eio = io::Error::from_raw_os_error(5);
        let e = undo_after(original, || Err(Error::io(Path::new("/l/.leafd-staging-1"), "cannot move", eio)));
        assert_eq!(e.kind, Kind::Refused);
        assert_eq!(e.path.as_deref(), Some(Path::new("/l/.leafd-staging-1")));
        assert!(e.message.ends_with("(while undoing after: /l/VM.vmwarevm: the VM changed)"), "{e}");
        assert_eq!(e.io_error().and_then(io::Error::raw_os_error), Some(5));
        assert!(StdError::source(&e).is_some_and(|s| s.is::<io::Error>()));
        let fine = undo_after(Error::usage("bad"), || Ok(()));
        assert_eq!((fine.kind, fine.message.as_str()), (Kind::Usage, "bad"));
    }

    #[test]
    fn the_exit_code_comes_from_the_kind() {
        use Kind::*;
        for kind in [Io, Format, Unsupported, Refused, Busy, Cancelled, Internal] {
            assert_eq!(kind.exit(), Exit::Failed, "{kind:?}");
        }
        assert_eq!(Usage.exit(), Exit::Usage);
    }
}
