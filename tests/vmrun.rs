//! The vmrun snapshot backend, tested with stand-ins for VMware's `vmrun` (which cannot run
//! here) that record their arguments: one that fails, one that claims success and does nothing,
//! and one that takes the snapshot the way VMware does (a delta over the disk, the .vmx edited).

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;

use std::time::{Duration, Instant};

use common::*;
use leafd::testing::SampleVm;
use leafd_formats::dict::Dict;
use leafd_formats::disk::DiskType;

fn setup() -> (Lib, SampleVm) {
    let lib = Lib::new();
    let vm = SampleVm::single("Ubuntu", DiskType::SplitSparse, 16 << 20);
    lib.base_from(&vm);
    (lib, vm)
}

fn new_leaf(lib: &Lib, vmrun: &std::path::Path, backend: &str) -> std::process::Output {
    lib.command(&["new-leaf", "Ubuntu", "Web", "--snapshot", backend]).env("LEAFD_VMRUN", vmrun).output().unwrap()
}

fn args(lib: &Lib) -> Vec<String> {
    std::fs::read_to_string(lib.tmp.path().join("args.log"))
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

fn snapshot_of(lib: &Lib) -> String {
    record(&lib.leaf_dir("Web"), "leaf")["snapshot"].as_str().unwrap().to_string()
}

fn chain_reads(lib: &Lib, vm: &SampleVm) {
    let delta = lib.leaf_dir("Web").join("Virtual Disk-000001.vmdk");
    for p in &vm.disks[0].patterns {
        qemu_read_pattern(&delta, p.offset, p.len, p.byte).unwrap();
    }
}

#[test]
fn auto_falls_back_to_native_when_vmrun_fails() {
    let (lib, vm) = setup();
    let vmrun = vmrun_stand_in(lib.tmp.path(), "fails", VMRUN_FAILS);
    let o = new_leaf(&lib, &vmrun, "auto");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("vmrun could not take the snapshot"), "{}", text(&o));
    let a = args(&lib);
    assert_eq!(a[..3], ["-T", "ws", "snapshot"]);
    assert!(a[3].ends_with("/Web.vmx") && a[3].contains("/.leafd-staging-"), "{a:?}");
    assert_eq!(a[4], "Base");
    assert_eq!(snapshot_of(&lib), "native");
    chain_reads(&lib, &vm);
    let log = std::fs::read_to_string(lib.log_dir().join("leafd.log")).unwrap();
    assert!(log.contains("WARN") && log.contains("vmrun"), "{log}");
}

#[test]
fn auto_falls_back_when_vmrun_claims_success_without_a_snapshot() {
    let (lib, vm) = setup();
    let vmrun = vmrun_stand_in(lib.tmp.path(), "does-nothing", VMRUN_DOES_NOTHING);
    let o = new_leaf(&lib, &vmrun, "auto");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("no snapshot"), "{}", text(&o));
    assert_eq!(snapshot_of(&lib), "native");
    chain_reads(&lib, &vm);
}

#[test]
fn explicit_vmrun_failure_refuses_and_leaves_nothing() {
    let (lib, _) = setup();
    let vmrun = vmrun_stand_in(lib.tmp.path(), "fails", VMRUN_FAILS);
    let before = fingerprint_tree(&lib.base_dir("Ubuntu"));
    let o = new_leaf(&lib, &vmrun, "vmrun");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("vmrun snapshot failed") && text(&o).contains("cannot be found"), "{}", text(&o));
    assert!(!lib.leaf_dir("Web").exists());
    let stray: Vec<_> = std::fs::read_dir(&lib.root)
        .unwrap()
        .filter(|e| {
            e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.')
                && !e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".leafd")
        })
        .collect();
    assert!(stray.is_empty());
    assert!(
        !std::fs::read_dir(&lib.root)
            .unwrap()
            .any(|e| { e.unwrap().file_name().to_string_lossy().starts_with(".leafd-staging") })
    );
    assert_eq!(fingerprint_tree(&lib.base_dir("Ubuntu")), before);
}

#[test]
fn a_working_vmrun_takes_the_snapshot_and_leafd_marks_it() {
    let (lib, vm) = setup();
    let vmrun = vmrun_stand_in(lib.tmp.path(), "works", VMRUN_WORKS);
    let o = new_leaf(&lib, &vmrun, "vmrun");
    // A failing stand-in's stderr (qemu-img's complaint) is in leafd's message.
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("(snapshot by vmrun)"), "{}", text(&o));
    assert_eq!(snapshot_of(&lib), "vmrun");
    let vmsd = Dict::parse(&std::fs::read(lib.leaf_dir("Web").join("Web.vmsd")).unwrap()).unwrap();
    assert_eq!(vmsd.get("snapshot0.displayName"), Some("Base"));
    assert!(vmsd.get("snapshot0.description").unwrap().starts_with("Don't delete!"));
    assert_eq!(vmsd.get("sentinel0"), Some("Virtual Disk-000001.vmdk"));
    assert!(vmsd.get("cloneOf0").unwrap().ends_with("Bases/Ubuntu/Ubuntu.vmx.base"));
    chain_reads(&lib, &vm);
}

#[test]
fn native_never_calls_vmrun() {
    let (lib, vm) = setup();
    let vmrun = vmrun_stand_in(lib.tmp.path(), "works", VMRUN_WORKS);
    let o = new_leaf(&lib, &vmrun, "native");
    assert!(o.status.success(), "{}", text(&o));
    assert!(args(&lib).is_empty());
    assert_eq!(snapshot_of(&lib), "native");
    chain_reads(&lib, &vm);
}

/// A vmrun that prints far more than a pipe holds on both streams, then fails: its output is
/// read while it runs, so `auto` falls back to the native writer at once, and the warning quotes
/// the start of each stream, apart.
#[test]
fn a_vmrun_that_floods_both_streams_and_fails_falls_back_at_once() {
    let (lib, vm) = setup();
    let vmrun =
        vmrun_stand_in(lib.tmp.path(), "floods", "yes out | head -c 1000000; yes err | head -c 1000000 >&2; exit 3");
    let start = Instant::now();
    let o = new_leaf(&lib, &vmrun, "auto");
    let took = start.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    // A bound for a hang (a full pipe until the time limit), not a benchmark.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(snapshot_of(&lib), "native");
    chain_reads(&lib, &vm);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let warning = stderr.lines().find(|l| l.contains("vmrun could not take the snapshot")).unwrap_or_default();
    assert!(warning.contains("vmrun-stand-in-floods exited with status 3"), "{stderr}");
    assert!(warning.contains(r#"; stderr: "err\nerr\n"#) && warning.contains(r#"; stdout: "out\nout\n"#), "{warning}");
    assert!(warning.contains("(1000000 bytes in all)") && warning.len() < 3000, "{} bytes: {warning}", warning.len());
}

/// A vmrun that runs past its time limit (`LEAFD_VMRUN_TIMEOUT`, here 1 s) is killed together
/// with what it started (a `sleep` it waits for), and `auto` makes the leaf itself.
#[test]
fn a_vmrun_past_its_time_limit_is_killed_with_its_children() {
    let (lib, vm) = setup();
    let pid_file = lib.tmp.path().join("sleep.pid");
    let body = format!("sleep 300 & echo $! > '{}'; wait", pid_file.display());
    let vmrun = vmrun_stand_in(lib.tmp.path(), "hangs", &body);
    let start = Instant::now();
    let o = lib
        .command(&["new-leaf", "Ubuntu", "Web", "--snapshot", "auto"])
        .env("LEAFD_VMRUN", &vmrun)
        .env("LEAFD_VMRUN_TIMEOUT", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert!(text(&o).contains("vmrun-stand-in-hangs did not finish within 1 s and was killed"), "{}", text(&o));
    assert_eq!(snapshot_of(&lib), "native");
    chain_reads(&lib, &vm);
    let sleep: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while running(sleep) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!running(sleep), "the sleep vmrun started outlived it");
    // A time limit that is not one is refused, not ignored.
    let o = lib
        .command(&["new-leaf", "Ubuntu", "Web 2", "--snapshot", "vmrun"])
        .env("LEAFD_VMRUN", &vmrun)
        .env("LEAFD_VMRUN_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("LEAFD_VMRUN_TIMEOUT=\"soon\" is not a number of seconds"), "{}", text(&o));
}
