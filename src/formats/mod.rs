//! VMware's on-disk formats, with no knowledge of folders, libraries or agents.
//!
//! - [`descriptor`]: the text that names a disk's extents, CID and parent;
//! - [`sparse`]: hosted sparse extents (`KDMV`): layout, creation, grains;
//! - [`clone`]: the parent copy and delta that make a linked clone;
//! - [`disk`]: whole disks and snapshot chains, read and written through;
//! - [`flatten`]: a chain written out as one standalone disk;
//! - [`dict`]: `key = "value"` files (`.vmx`, `.vmsd`);
//! - [`vmx`]: the VM-level facts leafd needs from them.

pub mod clone;
pub mod descriptor;
pub mod dict;
pub mod disk;
pub mod flatten;
pub mod sparse;
pub mod vmx;
