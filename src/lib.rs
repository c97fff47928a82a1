//! leafd: VMware linked clones as easy as making a folder.
//!
//! Data flows one way: the [`agent`] turns file-system events into drop items, the [`library`]
//! operations turn items into bases and leaves, using the [`formats`] core and recording
//! [`lineage`]. [`platform`] holds everything that differs between macOS and Linux.

pub mod error;
pub mod formats;
pub mod sample;

pub use error::{Error, Result};
