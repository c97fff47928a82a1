//! Adopt and reset through the real binary (issue 16):
//! - adopting a 4 GiB VM holding 1 GiB of data, 64 MiB of it changed since it was copied from its
//!   base, read-back check included, against `qemu-img compare` of the base with an identical
//!   copy of it (compare stops at the first difference, so only identical disks make it read
//!   everything), in the same run, warm cache; and the adopting process's peak memory;
//! - resetting a leaf of a 64 GiB disk against making a new leaf of the same base.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every bench binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot set up or run stops there

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use leafd::testing::{Pattern, SampleVm};
use leafd_formats::disk::DiskType;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const RUNS: usize = 7;

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    adopt(tmp.path(), &home);
    reset(tmp.path(), &home);
    finish();
}

/// `cp -a --sparse=always`, as a person copies a VM.
fn cp(from: &Path, to: &Path) {
    run(Command::new("cp").args(["-a", "--sparse=always"]).arg(from).arg(to));
}

/// The VM, built in `dir`: 16 runs of 64 MiB of data spread over its 4 GiB disk, written by QEMU
/// (this process stays small: a child's peak memory counts its parent's at the spawn).
fn four_gib_vm(dir: &Path) -> PathBuf {
    let mut vm = SampleVm::single("Base", DiskType::MonolithicSparse, 4 * GIB);
    vm.disks[0].patterns = Vec::new();
    let bundle = vm.build(dir).unwrap();
    for i in 0..16u64 {
        let cmd = format!("write -P 0x{:02x} {} {}", 0x10 + i, i * 256 * MIB, 64 * MIB);
        run(Command::new("qemu-io").args(["-f", "vmdk", "-c", &cmd]).arg(bundle.join("Virtual Disk.vmdk")));
    }
    bundle
}

fn adopt(dir: &Path, home: &Path) {
    let root = dir.join("lib-adopt");
    std::fs::create_dir_all(root.join("Make Base")).unwrap();
    let bundle = four_gib_vm(&root.join("Make Base"));
    // The VM's other files, kept aside; its disk is copied from the base for each run (what a
    // hand copy made before the base holds), so one copy of the data is on the volume at a time.
    let template = dir.join("template");
    cp(&bundle, &template);
    std::fs::remove_file(template.join("Virtual Disk.vmdk")).unwrap();
    run(&mut leafd(&root, home, &["make-base", bundle.to_str().unwrap()]));
    let base_disk = root.join("Bases/Base/Virtual Disk.vmdk");
    println!("adopting a 4 GiB VM with 1 GiB of data, 64 MiB changed (read back included), {RUNS} runs each:");
    let (mut theirs, mut ours, mut removing, mut rss, mut own) = (Vec::new(), Vec::new(), Vec::new(), 0, 0);
    for i in 0..RUNS {
        let vm = root.join(format!("Web {i}.vmwarevm"));
        cp(&template, &vm);
        let disk = vm.join("Virtual Disk.vmdk");
        cp(&base_disk, &disk);
        run(Command::new("chmod").arg("u+w").arg(&disk));
        let compare = || {
            run(Command::new("qemu-img").args(["compare", "-U", "-f", "vmdk", "-F", "vmdk"]).arg(&base_disk).arg(&disk))
        };
        // The copy written out (an adopted VM has long been on disk; else the first flush of a
        // journaled file system waits for the copy's gigabyte), and the cache warm for both.
        run(&mut Command::new("sync"));
        compare();
        theirs.extend(measure(1, |_| {}, |_| compare()));
        // Used since: 64 MiB written in four places.
        for j in 0..4u64 {
            let cmd = format!("write -P 0x7{j} {} {}", (j * 1024 + 100) * MIB, 16 * MIB);
            run(Command::new("qemu-io").args(["-f", "vmdk", "-c", &cmd]).arg(&disk));
        }
        run(&mut Command::new("sync"));
        let (took, peak, out) = measured(&mut leafd(&root, home, &["adopt", vm.to_str().unwrap(), "--base", "Base"]));
        ours.push(took);
        removing.push(removal(&out));
        rss = rss.max(peak);
        own = leafd_own(&vm);
        std::fs::remove_dir_all(&vm).unwrap();
    }
    let mut work: Vec<Duration> = ours.iter().zip(&removing).map(|(t, r)| t.saturating_sub(*r)).collect();
    for v in [&mut theirs, &mut ours, &mut removing, &mut work] {
        v.sort();
    }
    report("qemu-img compare of the base with an identical copy", &theirs);
    report("leafd adopt, the whole process", &ours);
    report("  of which removing the VM's original 1 GiB disk file", &removing);
    report("  the rest (compare, delta, read back, swap, all flushed)", &work);
    let (work, theirs) = (median(&work), median(&theirs));
    println!("  (removing the original costs what `rm` of it costs: this volume is mounted with `discard`)");
    claim(
        "leafd adopt, its removal of the original aside, takes at most 1.5x qemu-img compare",
        work.as_secs_f64() <= 1.5 * theirs.as_secs_f64(),
        &format!("{} vs {}: {:.2}x", ms(work), ms(theirs), work.as_secs_f64() / theirs.as_secs_f64()),
    );
    claim("leafd adopt's peak memory is under 64 MiB", rss < 64 * MIB, &format!("{:.1} MiB", rss as f64 / MIB as f64));
    println!("  (each leaf keeps {:.1} MiB of its own of the 1,024 MiB the VM held)\n", own as f64 / MIB as f64);
}

/// What a leaf's own files take on disk.
fn leafd_own(leaf: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![leaf.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p: PathBuf = e.unwrap().path();
            let m = p.symlink_metadata().unwrap();
            if m.is_dir() {
                stack.push(p);
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

fn reset(dir: &Path, home: &Path) {
    let root = dir.join("lib-reset");
    std::fs::create_dir_all(root.join("Make Base")).unwrap();
    let mut vm = SampleVm::single("Big", DiskType::SplitSparse, 64 * GIB);
    vm.disks[0].patterns = vec![Pattern { offset: 0, len: 65536, byte: 1 }];
    // Split as VMware splits: 2 GiB less 1 MiB an extent, 33 files a delta.
    vm.disks[0].split_sectors = 4_192_256;
    let bundle = vm.build(&root.join("Make Base")).unwrap();
    run(&mut leafd(&root, home, &["make-base", bundle.to_str().unwrap()]));
    const LEAVES: usize = 15;
    println!("a leaf of a 64 GiB split disk, {LEAVES} runs each, taken in turns:");
    let delta = |i: usize| root.join(format!("Leaf {i}.vmwarevm/Virtual Disk-000001.vmdk"));
    let (mut new, mut reset) = (Vec::new(), Vec::new());
    for i in 0..LEAVES {
        new.extend(measure(
            1,
            |_| {},
            |_| run(&mut leafd(&root, home, &["new-leaf", "Big", &format!("Leaf {i}"), "--snapshot", "native"])),
        ));
        let cmd = format!("write -P 0x5a {} {}", 10 * GIB, 8 * MIB);
        run(Command::new("qemu-io").args(["-f", "vmdk", "-c", &cmd]).arg(delta(i)));
        reset.extend(measure(1, |_| {}, |_| run(&mut leafd(&root, home, &["reset", &format!("Leaf {i}"), "--yes"]))));
    }
    new.sort();
    reset.sort();
    report("leafd new-leaf", &new);
    report("leafd reset (new deltas, old ones to the Trash)", &reset);
    let (reset, new) = (median(&reset), median(&new));
    // Each old and new file of the delta (33 here) is moved with a rename of its own, flushed:
    // a few milliseconds more than New Leaf's one rename, whatever the leaf holds.
    claim(
        "leafd reset takes about as long as leafd new-leaf (at most 2x)",
        reset.as_secs_f64() <= 2.0 * new.as_secs_f64(),
        &format!("{} vs {}: {:.2}x", ms(reset), ms(new), reset.as_secs_f64() / new.as_secs_f64()),
    );
}

/// How long leafd says removing the original files took, from its outcome line
/// (`…, 790 ms (310 ms of it removing the original files)`).
fn removal(out: &str) -> Duration {
    let at = out.rfind(" of it removing").unwrap_or_else(|| panic!("no removal time in {out:?}"));
    let (n, unit) = out[..at].rsplit_once('(').unwrap().1.split_once(' ').unwrap();
    let n: f64 = n.parse().unwrap();
    Duration::from_secs_f64(if unit == "ms" { n / 1000.0 } else { n })
}

/// Runs `cmd` to its end; returns how long it took, its peak resident memory in bytes (this
/// process's own counts too, at the spawn: it stays small) and what it printed.
#[allow(clippy::zombie_processes)] // reaped by wait4, which the lint does not see
fn measured(cmd: &mut Command) -> (Duration, u64, String) {
    let t = Instant::now();
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value of that plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with pointers to a live int and rusage; the child is
    // reaped here and never waited for again through `child`.
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = t.elapsed();
    assert!(got == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{cmd:?} failed");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    // ru_maxrss is in KiB on Linux, in bytes on macOS.
    let unit = if cfg!(target_os = "macos") { 1 } else { 1024 };
    (elapsed, usage.ru_maxrss as u64 * unit, out)
}
