//! What progress reporting costs a long copy (docs/progress.md): a 1 GiB file of real data
//! copied as Make Base copies across volumes (`durable::copy_file`, flushed), on tmpfs so the
//! copy is as fast as it gets here and the cost weighs the most.
//!
//! The claim is checked on what the reporting itself costs, each part timed on its own in this
//! process: a report per 64 KiB chunk (the meter), and a whole progress (started, its lock and
//! record files made, written as many times as the copy with progress wrote them, removed). A copy with progress against one without is printed too, but two copies
//! of a gigabyte on a shared machine differ by more than 1% on their own.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every bench binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot set up or run stops there

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use leafd::testing::progress;

const GIB: u64 = 1 << 30;
const CHUNK: u64 = 64 << 10;
const RUNS: usize = 9;

/// A file of `len` bytes of varied content (no zero chunk: every chunk is copied).
fn data_file(path: &Path, len: u64) {
    let f = std::fs::File::create(path).unwrap();
    let mut block = vec![0u8; 4 << 20];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    for i in 0..len / block.len() as u64 {
        block[0] = (i % 200) as u8 + 1;
        f.write_all_at(&block, i * block.len() as u64).unwrap();
    }
}

fn main() {
    let base = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm") } else { Path::new("/tmp") };
    let tmp = tempfile::tempdir_in(base).unwrap();
    let root = tmp.path().join("library");
    let src = tmp.path().join("data");
    data_file(&src, GIB);
    println!("progress: a 1 GiB copy on {} with and without progress reporting", base.display());
    let mut with = Vec::new();
    let mut without = Vec::new();
    let mut records = 0;
    for i in 0..RUNS * 2 {
        let dst = tmp.path().join("copy");
        let _ = std::fs::remove_file(&dst);
        let report = i % 2 == 0;
        let copied = progress::copy(&root, &src, &dst, report).unwrap();
        if report {
            with.push(copied.elapsed);
            records = records.max(copied.records);
        } else {
            without.push(copied.elapsed);
        }
    }
    with.sort();
    without.sort();
    report("copy, progress shown (record 4 times a second)", &with);
    report("copy, no progress", &without);
    let copy = median(&with);
    let chunks = GIB / CHUNK;
    // Each part many times over, for a time well above the clock's grain.
    let per_chunk = median(&measure(RUNS, |_| {}, |_| _ = progress::chunks(&root, chunks * 10).unwrap())) / 10;
    let life = median(&measure(200, |_| {}, |_| _ = progress::life(&root, records).unwrap()));
    let cost = per_chunk + life;
    println!(
        "  reporting: {chunks} chunks in {}, a progress writing {records} records in {}: {} in all",
        ms(per_chunk),
        ms(life),
        ms(cost)
    );
    let share = cost.as_secs_f64() / copy.as_secs_f64();
    let ab =
        |a: &[std::time::Duration], b: &[std::time::Duration]| (a[0].as_secs_f64() / b[0].as_secs_f64() - 1.0) * 100.0;
    println!(
        "  (copies with progress took {:+.1}% (medians), {:+.1}% (fastest) against those without, noise included)",
        ab(&with[RUNS / 2..], &without[RUNS / 2..]),
        ab(&with, &without)
    );
    claim(
        "progress reporting costs under 1% of a 1 GiB copy's time",
        share < 0.01 && records > 0,
        &format!("{:.3}% ({} of {})", share * 100.0, ms(cost), ms(copy)),
    );
    finish();
}
