//! VMware's on-disk formats, with no knowledge of folders, libraries or agents.
//!
//! - [`descriptor`]: the text that names a disk's extents, CID and parent;
//! - [`sparse`]: hosted sparse extents (`KDMV`): layout, creation, grains;
//! - [`clone`]: the parent copy and delta that make a linked clone;
//! - [`compare`]: a disk compared with the base it was copied from, and the delta it needs;
//! - [`disk`]: whole disks and snapshot chains, read and written through;
//! - [`flatten`]: a chain written out as one standalone disk;
//! - [`dict`]: `key = "value"` files (`.vmx`, `.vmsd`);
//! - [`text`]: code pages, line endings, and how a name in a file becomes a path;
//! - [`vmx`]: the VM-level facts leafd needs from them;
//! - [`ids`]: content IDs and the identity of new disks.
//!
//! Files are reached only through the [`Env`] a caller passes in; failures are [`Error`]s
//! naming their file, or [`ParseError`]s for text parsed from memory.

pub mod clone;
pub mod compare;
pub mod descriptor;
pub mod dict;
pub mod disk;
mod env;
mod error;
pub mod flatten;
pub mod ids;
pub mod sparse;
pub mod text;
pub mod vmx;

pub use env::{Change, Env, StdEnv, create_new, open_regular};
pub use error::{Error, ErrorKind, ParseError, Result};

// A dev-dependency of the integration tests only; the unit tests build with it too.
#[cfg(test)]
use proptest as _;
#[cfg(test)]
use serde_json as _;
