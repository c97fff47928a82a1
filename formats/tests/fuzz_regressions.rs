//! Inputs the fuzzers found (fuzz/regressions), replayed through the fuzz targets' own checks.

#![allow(unused_crate_dependencies)] // every dependency reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

#[allow(dead_code)] // SEPARATOR is for the seed writer
#[path = "../../fuzz/checks.rs"]
mod fuzz_checks;

use std::path::Path;

#[test]
fn fuzz_regressions_are_handled() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let tmp = tempfile::tempdir().unwrap();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        seen += 1;
        let replay = || match name.split('-').next() {
            Some("descriptor") => fuzz_checks::descriptor(&bytes),
            Some("dict") => fuzz_checks::dict(&bytes),
            Some("sparse_header") => fuzz_checks::sparse_header(&bytes),
            Some("disk_open") => fuzz_checks::disk_open(&bytes, tmp.path()),
            _ => panic!("unknown target prefix"),
        };
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(replay)) {
            panic!("{name}: {}", e.downcast_ref::<String>().map_or("(panic)", |s| s.as_str()));
        }
    }
    assert!(seen >= 11, "fuzz/regressions holds {seen} inputs");
}
