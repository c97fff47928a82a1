//! Writing the empty delta for a 64 GiB disk: leafd's writer against `qemu-img create -b`.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every bench binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot set up or run stops there

mod common;

use std::process::Command;

use common::*;

use leafd::testing::{Pattern, SampleVm};
use leafd_formats::clone::{PathStyle, create_delta, parent_copy};
use leafd_formats::disk::{Disk, DiskType};

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let mut vm = SampleVm::single("Big", DiskType::MonolithicSparse, 64 << 30);
    vm.disks[0].patterns = vec![Pattern { offset: 0, len: 65536, byte: 1 }];
    let bundle = vm.build(tmp.path()).unwrap();
    let env = leafd::testing::env();
    let base = Disk::open(&env, &bundle.join("Virtual Disk.vmdk")).unwrap();
    // Both writers build on the same parent copy, in the same folder.
    let leaf = tmp.path().join("leaf");
    std::fs::create_dir(&leaf).unwrap();
    let copy = parent_copy(&base, &leaf, PathStyle::Relative).unwrap();
    std::fs::write(leaf.join("Virtual Disk.vmdk"), copy.to_string()).unwrap();
    let delta = |who: &str, i: usize| leaf.join(format!("{who}-{i}.vmdk"));

    println!("empty delta for a 64 GiB disk (monolithicSparse, ~8 MiB of grain tables), 30 runs each:");
    let ours = measure(
        30,
        |_| {},
        |i| {
            create_delta(&env, &delta("leafd", i), "Virtual Disk.vmdk", &copy, DiskType::MonolithicSparse).unwrap();
        },
    );
    report("leafd create_delta (flushed)", &ours);
    let theirs = measure(
        30,
        |_| {},
        |i| {
            run(Command::new("qemu-img")
                .args(["create", "-q", "-f", "vmdk", "-b", "Virtual Disk.vmdk", "-F", "vmdk"])
                .arg(delta("qemu", i))
                .current_dir(&leaf));
        },
    );
    report("qemu-img create -f vmdk -b (not flushed)", &theirs);
    let start = measure(30, |_| {}, |_| run(Command::new("qemu-img").arg("--version")));
    report("(qemu-img --version: starting the process alone)", &start);
    verdict("leafd is not slower than qemu-img", median(&ours), median(&theirs));
    finish();
}
