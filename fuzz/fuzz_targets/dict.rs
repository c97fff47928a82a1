//! `.vmx`/`.vmsd` dictionaries: parsing never panics, and what parses writes back byte-identical.
#![no_main]

#[allow(dead_code)] // each target uses one of the shared checks
#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::dict(data));
