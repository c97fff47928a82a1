//! leafd: VMware linked clones as easy as making a folder.
//!
//! Data flows one way: the [`agent`] turns file-system events into drop items, the [`library`]
//! operations turn items into bases and leaves, using the VMware formats crate
//! ([`leafd_formats`], which reaches files through [`formats_env`]) and recording [`lineage`].
//! [`platform`] holds everything that differs between macOS and Linux.

pub mod agent;
pub mod child;
pub mod cli;
pub mod config;
pub mod demo;
pub mod durable;
pub mod error;
pub mod formats_env;
pub mod fsutil;
pub mod library;
pub mod logging;
pub mod platform;
pub mod service;
pub mod testing;

pub use error::{Error, Result};
