//! The operations on a library, one module each: what the commands and the agent ask for.
//!
//! An operation uses the library's layout, records and journal (the modules above this folder)
//! and the helpers in [`common`]; it never imports from another operation. Recovery
//! ([`super::recovery`]) sits above them all, since it finishes or undoes each of them.

pub mod common;
pub mod forget;
pub mod make_base;
pub mod new_leaf;
pub mod promote;
pub mod relink;
pub mod remove_base;
pub mod status;
pub mod verify;
