//! VMDK text descriptors: parsing never panics, and what parses writes back to an equal descriptor.
#![no_main]

#[allow(dead_code)] // each target uses one of the shared checks
#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::descriptor(data));
