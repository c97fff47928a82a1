//! The crate's errors: [`Error`] for work on files (always naming the file), [`ParseError`] for
//! text parsed from memory (a line number, no file: the caller knows which file it read).

use std::io;
use std::path::{Path, PathBuf};

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// An I/O call failed.
    Io,
    /// A file is not in the format expected (corrupt, truncated, not a VMDK...).
    Format,
    /// Valid, but not something this crate handles (a disk type, an encoding...).
    Unsupported,
    /// A file of the disk or chain is missing: `path` itself, with the OS error as `source`, or
    /// (without a source) a file that `path` names, an extent or the parent.
    Missing,
    /// [`Env::cancelled`](crate::Env::cancelled) said to stop.
    Cancelled,
}

/// A failure with the file it concerns and, where a person can act on it, how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct Error {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The file it concerns.
    pub path: PathBuf,
    /// What is wrong, without the path.
    pub message: String,
    /// Advice for the person reading it.
    pub fix: Option<String>,
    /// The OS error, when an I/O call failed.
    #[source]
    pub source: Option<io::Error>,
}

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(kind: ErrorKind, path: &Path, message: impl Into<String>) -> Error {
        Error { kind, path: path.to_path_buf(), message: message.into(), fix: None, source: None }
    }

    /// An I/O failure while doing `what` on `path`; `Missing` when the OS says the file is not there.
    pub(crate) fn io(path: &Path, what: &str, source: io::Error) -> Error {
        let kind = if source.kind() == io::ErrorKind::NotFound { ErrorKind::Missing } else { ErrorKind::Io };
        let message = format!("{what}: {source}");
        Error { source: Some(source), ..Error::new(kind, path, message) }
    }

    pub(crate) fn format(path: &Path, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Format, path, message)
    }

    pub(crate) fn unsupported(path: &Path, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unsupported, path, message)
    }

    /// `path` names a file that is not there (no OS error: the caller saw it was missing).
    pub(crate) fn missing(path: &Path, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Missing, path, message)
    }

    pub(crate) fn cancelled(path: &Path) -> Error {
        Error::new(ErrorKind::Cancelled, path, "stopped before finishing")
    }

    /// Adds the advice shown after the message.
    pub(crate) fn fix(mut self, fix: impl Into<String>) -> Error {
        self.fix = Some(fix.into());
        self
    }

    /// True when opening `path` itself failed because it does not exist.
    pub(crate) fn not_found(&self) -> bool {
        self.kind == ErrorKind::Missing && self.source.is_some()
    }
}

/// Attaches the path to an `io::Result`, so no I/O error leaves the crate without its file.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path, what: &str) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path, what: &str) -> Result<T> {
        self.map_err(|e| Error::io(path, what, e))
    }
}

/// A text that does not parse: the line (1-based, 0 for the whole text) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if *line == 0 { String::new() } else { format!("line {line}: ") })]
pub struct ParseError {
    /// 1-based; 0 when the error concerns the whole text.
    pub line: usize,
    /// What is wrong.
    pub message: String,
    /// Advice, where the text itself is not damaged but cannot be read as it is (an unknown
    /// encoding, say).
    pub fix: Option<String>,
}

impl ParseError {
    /// An error about the whole text.
    pub(crate) fn whole(message: impl Into<String>) -> ParseError {
        ParseError::at(0, message)
    }

    /// An error about line `line`.
    pub(crate) fn at(line: usize, message: impl Into<String>) -> ParseError {
        ParseError { line, message: message.into(), fix: None }
    }

    /// Adds the advice.
    pub(crate) fn with_fix(mut self, fix: impl Into<String>) -> ParseError {
        self.fix = Some(fix.into());
        self
    }
}

impl Error {
    /// `e` as the error of the file `path`, its message after `what` ("descriptor"), keeping its
    /// fix; `Unsupported` when it has one (the text is whole, but not readable as it is).
    pub(crate) fn parse(path: &Path, what: &str, e: ParseError) -> Error {
        let kind = if e.fix.is_some() { ErrorKind::Unsupported } else { ErrorKind::Format };
        let message = if what.is_empty() { e.to_string() } else { format!("{what} {e}") };
        Error { fix: e.fix, ..Error::new(kind, path, message) }
    }
}
