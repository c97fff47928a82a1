//! The vmrun snapshot backend, tested with stand-ins for VMware's `vmrun` (which cannot run
//! here) that record their arguments: one that fails, one that claims success and does nothing,
//! and one that takes the snapshot the way VMware does (a delta over the disk, the .vmx edited).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use leafd::formats::dict::Dict;
use leafd::formats::disk::DiskType;
use leafd::sample::SampleVm;

/// Writes an executable stand-in named `vmrun-stand-in-<kind>` that logs its arguments to `args.log`.
fn stand_in(dir: &Path, kind: &str, body: &str) -> PathBuf {
    let p = dir.join(format!("vmrun-stand-in-{kind}"));
    let log = dir.join("args.log");
    std::fs::write(&p, format!("#!/bin/bash\n# Stand-in for VMware's vmrun: records its arguments.\nprintf '%s\\n' \"$@\" >> '{}'\nexec 2>>'{}'.err\n{body}\n", log.display(), log.display())).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

const FAILS: &str = "echo 'Error: The virtual machine cannot be found'; exit 255";
const DOES_NOTHING: &str = "exit 0";
/// Like VMware: a delta over each disk the .vmx names, the .vmx pointed at it, a .vmsd.
const WORKS: &str = r#"
vmx="$4"; dir=$(dirname "$vmx")
grep -E '^(scsi|sata|nvme|ide)[0-9]+:[0-9]+\.fileName = ".*\.vmdk"' "$vmx" | while IFS= read -r line; do
  file=$(printf '%s' "$line" | sed -E 's/.* = "(.*)"/\1/')
  delta="${file%.vmdk}-000001.vmdk"
  (cd "$dir" && qemu-img create -q -f vmdk -b "$file" -F vmdk "$delta") || exit 1
  sed -i "s|= \"$file\"|= \"$delta\"|" "$vmx"
done
base=$(basename "$vmx" .vmx)
printf '.encoding = "UTF-8"\nsnapshot.lastUID = "1"\nsnapshot.current = "1"\nsnapshot0.uid = "1"\nsnapshot0.filename = "%s-Snapshot1.vmsn"\nsnapshot0.displayName = "%s"\nsnapshot.numSnapshots = "1"\n' "$base" "$5" > "$dir/$base.vmsd"
"#;

fn setup() -> (Lib, SampleVm) {
    let lib = Lib::new();
    let vm = SampleVm::single("Ubuntu", DiskType::SplitSparse, 16 << 20);
    lib.base_from(&vm);
    (lib, vm)
}

fn new_leaf(lib: &Lib, vmrun: &Path, backend: &str) -> std::process::Output {
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
    let vmrun = stand_in(lib.tmp.path(), "fails", FAILS);
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
    let vmrun = stand_in(lib.tmp.path(), "does-nothing", DOES_NOTHING);
    let o = new_leaf(&lib, &vmrun, "auto");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("no snapshot"), "{}", text(&o));
    assert_eq!(snapshot_of(&lib), "native");
    chain_reads(&lib, &vm);
}

#[test]
fn explicit_vmrun_failure_refuses_and_leaves_nothing() {
    let (lib, _) = setup();
    let vmrun = stand_in(lib.tmp.path(), "fails", FAILS);
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
    let vmrun = stand_in(lib.tmp.path(), "works", WORKS);
    let o = new_leaf(&lib, &vmrun, "vmrun");
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o),
        std::fs::read_to_string(lib.tmp.path().join("args.log.err")).unwrap_or_default()
    );
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
    let vmrun = stand_in(lib.tmp.path(), "works", WORKS);
    let o = new_leaf(&lib, &vmrun, "native");
    assert!(o.status.success(), "{}", text(&o));
    assert!(args(&lib).is_empty());
    assert_eq!(snapshot_of(&lib), "native");
    chain_reads(&lib, &vm);
}
