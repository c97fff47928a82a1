//! The operations on a library, one module each: what the commands and the agent ask for.
//!
//! An operation uses the library's layout, records and journal (the modules above this folder)
//! and the helpers in [`common`]; it never imports from another operation. Recovery
//! ([`super::recovery`]) sits above them all, since it finishes or undoes each of them.

pub(crate) mod adopt;
pub(crate) mod common;
pub(crate) mod forget;
pub(crate) mod make_base;
pub(crate) mod new_leaf;
pub(crate) mod promote;
pub(crate) mod relink;
pub(crate) mod remove_base;
pub(crate) mod reset;
pub(crate) mod status;
pub(crate) mod verify;
