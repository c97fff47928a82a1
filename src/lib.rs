//! leafd: VMware linked clones as easy as making a folder.
//!
//! Data flows one way (docs/architecture.md): the `agent` turns file-system events into drop
//! items, the `library` operations turn items into bases and leaves, and results are logged
//! and shown where the user looks. The VMware formats are the crate `leafd_formats`, which
//! reaches files through `formats_env`; `platform` holds everything that differs between macOS
//! and Linux. Every module is private to the crate: the binary runs [`main`], and tests, benches
//! and the demo use [`testing`].

// The system calls rustix lacks are made in src/platform/'s linux.rs and macos.rs alone.
#![deny(unsafe_code)]

mod agent;
mod child;
mod cli;
mod config;
mod demo;
mod durable;
mod error;
mod formats_env;
mod fsutil;
mod library;
mod logging;
mod platform;
mod progress;
mod service;
#[doc(hidden)]
pub mod testing;

pub use cli::main;

// A dev-dependency of the integration tests (the LaunchAgent they read), which the unit tests
// build with too.
#[cfg(test)]
use plist as _;
