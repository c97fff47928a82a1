//! Make Base and New Leaf through the real binary:
//! - Make Base of a 64 GiB sparse VM against a 1 GiB one on the same volume (renames only, so
//!   the time until the base is usable must not depend on the size; the whole process, which
//!   then records the content fingerprint, is shown beside it);
//! - New Leaf against `qemu-img create -f vmdk -b` on the same base.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every bench binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot set up or run stops there

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;
use leafd::testing::SampleVm;
use leafd_formats::disk::DiskType;

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    const RUNS: usize = 15;

    println!("leafd make-base on one volume (sparse sample, data in a few grains), {RUNS} runs each:");
    println!("  (usable: until the base is published and its outcome line printed; whole: until the");
    println!("   process exits, after recording the content fingerprint, which reads the disk's data)");
    let mut medians = Vec::new();
    for (label, size) in [("1 GiB", 1u64 << 30), ("64 GiB", 64 << 30)] {
        let root = tmp.path().join(format!("lib-{label}"));
        let drop_dir = root.join("Make Base");
        std::fs::create_dir_all(&drop_dir).unwrap();
        let (mut usable, mut whole) = (Vec::new(), Vec::new());
        for i in 0..RUNS {
            SampleVm::single(&format!("VM {i}"), DiskType::MonolithicSparse, size).build(&drop_dir).unwrap();
            let bundle = drop_dir.join(format!("VM {i}.vmwarevm"));
            let t = Instant::now();
            let mut child =
                leafd(&root, &home, &["make-base", bundle.to_str().unwrap()]).stdout(Stdio::piped()).spawn().unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
            usable.push(t.elapsed());
            assert!(child.wait().unwrap().success() && line.contains("made from"), "make-base failed: {line}");
            whole.push(t.elapsed());
        }
        usable.sort();
        whole.sort();
        report(&format!("make-base, {label} disk: usable"), &usable);
        report(&format!("make-base, {label} disk: whole process"), &whole);
        medians.push(median(&usable));
    }
    let diff = medians[1].abs_diff(medians[0]);
    claim("64 GiB usable within a few ms of 1 GiB", diff.as_millis() < 5, &format!("difference {}", ms(diff)));

    println!("making a linked clone of a 16 GiB split base, {RUNS} runs each:");
    let root = tmp.path().join("lib-leaf");
    std::fs::create_dir_all(root.join("Make Base")).unwrap();
    let bundle = SampleVm::single("Base", DiskType::SplitSparse, 16 << 30).build(&root.join("Make Base")).unwrap();
    run(&mut leafd(&root, &home, &["make-base", bundle.to_str().unwrap()]));
    let ours = measure(
        RUNS,
        |_| {},
        |i| run(&mut leafd(&root, &home, &["new-leaf", "Base", &format!("Leaf {i}"), "--snapshot", "native"])),
    );
    report("leafd new-leaf (parent copy, delta, .vmx, .vmsd, lineage, flushed)", &ours);
    let qemu_dir = tmp.path().join("qemu");
    std::fs::create_dir(&qemu_dir).unwrap();
    let base_disk = root.join("Bases/Base/Virtual Disk.vmdk");
    let theirs = measure(
        RUNS,
        |_| {},
        |i| {
            run(Command::new("qemu-img")
                .args(["create", "-q", "-f", "vmdk", "-F", "vmdk", "-b"])
                .arg(&base_disk)
                .arg(qemu_dir.join(format!("delta-{i}.vmdk"))))
        },
    );
    report("qemu-img create -f vmdk -b (the delta alone)", &theirs);
    verdict("leafd new-leaf is not slower than qemu-img create", median(&ours), median(&theirs));
    finish();
}
