//! Lineage upkeep, each against a reference tool in the same run:
//! - flattening a leaf's chain (what promote and Make Base of a leaf do) against
//!   `qemu-img convert -O vmdk` of the same chain, and `leafd promote` end to end;
//! - `verify --deep` fingerprinting against `sha256sum` on the same files;
//! - `leafd verify` (without --deep) on a library of 100 bases and 1,000 leaves.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every bench binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot set up or run stops there

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::*;

use leafd::testing::{Pattern, SampleVm};
use leafd_formats::disk::{Disk, DiskType};
use leafd_formats::flatten::flatten;

const MIB: u64 = 1 << 20;

fn mb_per_s(bytes: u64, d: std::time::Duration) -> String {
    format!("{:.0} MB/s", bytes as f64 / 1e6 / d.as_secs_f64())
}

/// A sample disk with `data` bytes of varied content in 1 MiB runs spread over the disk.
fn data_vm(name: &str, t: DiskType, capacity: u64, data: u64) -> SampleVm {
    let mut vm = SampleVm::single(name, t, capacity);
    let runs = data / MIB;
    let stride = capacity / runs;
    vm.disks[0].patterns =
        (0..runs).map(|i| Pattern { offset: i * stride, len: MIB, byte: (i % 250) as u8 + 1 }).collect();
    vm
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    flattening(tmp.path(), &home);
    fingerprinting(tmp.path());
    verifying(tmp.path(), &home);
    finish();
}

/// Flatten: a 2 GiB split base with 256 MiB of data, a leaf with 64 MiB written on top, against
/// `qemu-img convert`; then promote end to end.
fn flattening(tmp: &Path, home: &Path) {
    let root = tmp.join("flatten");
    std::fs::create_dir_all(root.join("Make Base")).unwrap();
    let vm = data_vm("Base", DiskType::SplitSparse, 2048 * MIB, 256 * MIB);
    let bundle = vm.build(&root.join("Make Base")).unwrap();
    run(&mut leafd(&root, home, &["make-base", bundle.to_str().unwrap()]));
    run(&mut leafd(&root, home, &["new-leaf", "Base", "Leaf", "--snapshot", "native"]));
    let delta = root.join("Leaf.vmwarevm/Virtual Disk-000001.vmdk");
    let mut writes = Command::new("qemu-io");
    writes.args(["-f", "vmdk"]);
    for i in 0..64u64 {
        writes.args(["-c", &format!("write -P 0x{:02x} {} {}", i + 1, i * 29 * MIB + 12345, MIB)]);
    }
    run(writes.arg(&delta));
    println!("flattening a leaf of a 2 GiB base (256 MiB of base data, 64 MiB written in the leaf), 5 runs each:");
    let out = tmp.join("out");
    std::fs::create_dir(&out).unwrap();
    let env = leafd::testing::env();
    let chain = Disk::open(&env, &delta).unwrap();
    let ours = measure(
        5,
        |_| {},
        |i| {
            flatten(&env, &chain, &out.join(format!("leafd-{i}.vmdk")), None).unwrap();
        },
    );
    report("leafd flatten (monolithicSparse, flushed)", &ours);
    // qemu-img's default writes through its "unsafe" cache and never flushes; leafd always does.
    let qemu = |label: &str, cache: &str| {
        let times = measure(
            5,
            |_| {},
            |i| {
                run(Command::new("qemu-img")
                    .args([
                        "convert",
                        "-U",
                        "-t",
                        cache,
                        "-f",
                        "vmdk",
                        "-O",
                        "vmdk",
                        "-o",
                        "subformat=monolithicSparse",
                    ])
                    .arg(&delta)
                    .arg(out.join(format!("qemu-{cache}-{i}.vmdk"))));
            },
        );
        report(label, &times);
        times
    };
    let unflushed = qemu("qemu-img convert -O vmdk (default: never flushed)", "unsafe");
    let flushed = qemu("qemu-img convert -t writeback -O vmdk (flushed)", "writeback");
    let data = 320 * MIB;
    println!(
        "  throughput over the data: leafd {}, qemu-img {} unflushed, {} flushed",
        mb_per_s(data, median(&ours)),
        mb_per_s(data, median(&unflushed)),
        mb_per_s(data, median(&flushed))
    );
    verdict("leafd flattens at least as fast as qemu-img convert, both flushing", median(&ours), median(&flushed));
    drop(chain);
    let t = Instant::now();
    run(&mut leafd(&root, home, &["promote", "Leaf"]));
    println!("  leafd promote end to end (flatten, link, swap, journal): {}\n", ms(t.elapsed()));
}

/// Fingerprints: a 1 GiB flat disk full of data, hot in the page cache for both tools.
fn fingerprinting(tmp: &Path) {
    let root = tmp.join("fingerprint");
    std::fs::create_dir_all(&root).unwrap();
    let vm = data_vm("Dense", DiskType::MonolithicFlat, 1024 * MIB, 1024 * MIB);
    let bundle = vm.build(&root).unwrap();
    let files = vec![bundle.join("Virtual Disk-flat.vmdk")];
    println!("content fingerprint of 1 GiB of data (cached), 5 runs each:");
    let ours = measure(
        5,
        |_| {},
        |_| {
            leafd::testing::fingerprint(&files).unwrap();
        },
    );
    report("leafd fingerprint (BLAKE3 over 64 KiB chunks)", &ours);
    let theirs = measure(5, |_| {}, |_| run(Command::new("sha256sum").args(&files)));
    report("sha256sum", &theirs);
    println!(
        "  throughput: leafd {}, sha256sum {}",
        mb_per_s(1024 * MIB, median(&ours)),
        mb_per_s(1024 * MIB, median(&theirs))
    );
    verdict("leafd fingerprints at least as fast as sha256sum", median(&ours), median(&theirs));
}

/// `verify` without `--deep` on 100 bases and 1,000 leaves.
fn verifying(tmp: &Path, home: &Path) {
    let root = tmp.join("big");
    let t = Instant::now();
    build_library(&root, 100, 10);
    println!(
        "verify of a library with 100 bases and 1,000 leaves (built in {:.1} s), 5 runs:",
        t.elapsed().as_secs_f64()
    );
    let times = measure(5, |_| {}, |_| run(&mut leafd(&root, home, &["verify"])));
    report("leafd verify", &times);
    claim("well under a second", median(&times).as_millis() < 1000, &ms(median(&times)));
}
