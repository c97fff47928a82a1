//! The 512-byte KDMV header, with an optional file length after it (see `checks::sparse_header`).
#![no_main]

#[allow(dead_code)] // each target uses one of the shared checks
#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::sparse_header(data));
