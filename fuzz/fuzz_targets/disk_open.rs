//! Whole disks from files (see `checks::disk_open`): opening and reading never panics.
#![no_main]

#[allow(dead_code)] // each target uses one of the shared checks
#[path = "../checks.rs"]
mod checks;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("leafd-fuzz-disk-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create fuzz folder");
        d
    })
}

fuzz_target!(|data: &[u8]| checks::disk_open(data, dir()));
