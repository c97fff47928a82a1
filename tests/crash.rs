//! Crash safety: every step of both operations is interrupted with SIGKILL (the fault injection
//! in src/testing/fault.rs), then recovery runs; the library must hold either the untouched
//! source or the complete result, nothing lost, nothing duplicated, no staging left, the base unchanged.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;

use std::path::Path;

use common::*;
use leafd::testing::{SampleDisk, SampleVm};
use leafd::testing::{make_base, new_leaf};
use leafd_formats::disk::DiskType;

const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Volume {
    Same,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Recovery undoes the operation.
    Undone,
    /// Recovery finishes it.
    Finished,
}

/// Each Make Base step, the volumes where it happens, and what recovery must do after a kill there.
/// Covered by `make_base_of_a_leaf_survives_a_kill_while_flattening`.
const FLATTENED: &str = "flattened";

const MAKE_BASE: &[(&str, &[Volume], Expect)] = &[
    ("journaled", &[Volume::Same, Volume::Other], Expect::Undone),
    // Only a VM whose disks are chains is flattened: covered by the test for leaves below.
    (FLATTENED, &[], Expect::Undone),
    ("moved", &[Volume::Same], Expect::Undone),
    ("copying", &[Volume::Other], Expect::Undone),
    ("copied", &[Volume::Other], Expect::Undone),
    ("vmx-renamed", &[Volume::Same, Volume::Other], Expect::Undone),
    ("lineage-written", &[Volume::Same, Volume::Other], Expect::Undone),
    ("protected", &[Volume::Same, Volume::Other], Expect::Undone),
    ("published", &[Volume::Same, Volume::Other], Expect::Finished),
    ("drop-folder-created", &[Volume::Same, Volume::Other], Expect::Finished),
    ("source-removing", &[Volume::Other], Expect::Finished),
    ("source-removed", &[Volume::Other], Expect::Finished),
    ("fingerprinted", &[Volume::Same, Volume::Other], Expect::Finished),
];

const NEW_LEAF: &[(&str, Expect)] = &[
    ("journaled", Expect::Undone),
    ("parent-copies-written", Expect::Undone),
    ("deltas-written", Expect::Undone),
    ("vmx-written", Expect::Undone),
    ("vmsd-written", Expect::Undone),
    ("lineage-written", Expect::Undone),
    ("published", Expect::Finished),
    ("base-linked", Expect::Finished),
    ("request-removed", Expect::Finished),
];

#[test]
fn every_declared_step_is_covered() {
    let covered: Vec<&str> = MAKE_BASE.iter().map(|s| s.0).collect();
    assert_eq!(covered, make_base::STEPS, "a Make Base step was added or removed: cover it here");
    // A step run on no volume here must be the one a test of its own covers.
    let elsewhere: Vec<&str> = MAKE_BASE.iter().filter(|s| s.1.is_empty()).map(|s| s.0).collect();
    assert_eq!(elsewhere, [FLATTENED], "only {FLATTENED} is covered by a separate test");
    let covered: Vec<&str> = NEW_LEAF.iter().map(|s| s.0).collect();
    assert_eq!(covered, new_leaf::STEPS, "a New Leaf step was added or removed: cover it here");
}

/// A split disk and a monolithic one, so both extent layouts go through every step.
fn vm() -> SampleVm {
    SampleVm {
        name: "Crashy".into(),
        disks: vec![
            SampleDisk::new("scsi0:0", "Virtual Disk.vmdk", DiskType::SplitSparse, 12 * MIB),
            SampleDisk::new("sata0:0", "Second.vmdk", DiskType::MonolithicSparse, 4 * MIB),
        ],
    }
}

fn no_leftovers(lib: &Lib) {
    assert_eq!(std::fs::read_dir(lib.root.join(".leafd/journal")).unwrap().count(), 0, "journal not empty");
    for dir in [lib.root.clone(), lib.root.join("Bases")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let n = e.unwrap().file_name();
            assert!(!n.to_string_lossy().starts_with(".leafd-staging"), "staging left in {}: {n:?}", dir.display());
        }
    }
}

/// The finished base holds exactly the source's files, protected, with its record complete.
fn base_is_complete(lib: &Lib, vm: &SampleVm, before: &std::collections::BTreeMap<std::path::PathBuf, String>) {
    let mut expected = before.clone();
    let sum = expected.remove(Path::new("Crashy.vmx")).unwrap();
    expected.insert("Crashy.vmx.base".into(), sum);
    let mut now = checksums(&lib.base_dir(&vm.name));
    now.retain(|p, _| !is_records(&p.to_string_lossy()));
    assert_eq!(now, expected);
    let rec = record(&lib.base_dir(&vm.name), "base");
    for d in rec["disks"].as_array().unwrap() {
        assert!(d["fingerprint"].as_str().is_some(), "fingerprint not completed: {rec}");
    }
    assert!(lib.root.join("New Leaf/Crashy").is_dir());
    for d in &vm.disks {
        qemu_read_pattern(
            &lib.base_dir(&vm.name).join(&d.file),
            d.patterns[0].offset,
            d.patterns[0].len,
            d.patterns[0].byte,
        )
        .unwrap();
    }
}

#[test]
fn make_base_survives_a_kill_at_every_step() {
    let vm = vm();
    for &(step, volumes, expect) in MAKE_BASE {
        for &volume in volumes {
            let lib = Lib::new();
            let other = (volume == Volume::Other).then(OtherVolume::new);
            let dir = other.as_ref().map_or(lib.make_base_dir(), |o| o.path().to_path_buf());
            let bundle = vm.build(&dir).unwrap();
            let before_tree = fingerprint_tree(&bundle);
            let before = checksums(&bundle);
            let o = lib
                .command(&["make-base", bundle.to_str().unwrap()])
                .env("LEAFD_FAULT", format!("make-base:{step}"))
                .output()
                .unwrap();
            assert!(killed(&o), "{step} ({volume:?}): the process was not killed there: {}", text(&o));
            lib.ok(&["recover"]);
            no_leftovers(&lib);
            match expect {
                Expect::Undone => {
                    assert_eq!(
                        fingerprint_tree(&bundle),
                        before_tree,
                        "{step} ({volume:?}): the source is not as it was"
                    );
                    assert!(!lib.base_dir(&vm.name).exists(), "{step} ({volume:?}): half a base");
                    // And doing it again now works.
                    lib.ok(&["make-base", bundle.to_str().unwrap()]);
                }
                Expect::Finished => {
                    assert!(!bundle.exists(), "{step} ({volume:?}): the source is still there");
                }
            }
            base_is_complete(&lib, &vm, &before);
            no_leftovers(&lib);
        }
    }
}

/// Across volumes the source goes only when every file still equals its copy. A VM changed after
/// it was copied (here: between the publish and the removal, by a kill there) is kept whole.
#[test]
fn a_source_changed_after_its_copy_is_kept_whole() {
    let vm = vm();
    let lib = Lib::new();
    let other = OtherVolume::new();
    let bundle = vm.build(other.path()).unwrap();
    let before = checksums(&bundle);
    let o = lib
        .command(&["make-base", bundle.to_str().unwrap()])
        .env("LEAFD_FAULT", "make-base:published")
        .output()
        .unwrap();
    assert!(killed(&o), "{}", text(&o));
    std::fs::write(bundle.join("vmware.log"), b"booted again\n").unwrap();
    let mut expected = checksums(&bundle);
    let o = lib.run(&["recover"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("kept the original") && out.contains("vmware.log"), "{out}");
    assert_eq!(checksums(&bundle), expected, "the changed VM lost files");
    expected.insert("vmware.log".into(), before[Path::new("vmware.log")].clone());
    assert_eq!(expected, before);
    base_is_complete(&lib, &vm, &before);
    no_leftovers(&lib);
}

#[test]
fn new_leaf_survives_a_kill_at_every_step() {
    new_leaf_killed_at_every_step(false);
}

/// The vmrun backend reaches the same steps in another order, with VMware's files on disk.
#[test]
fn new_leaf_with_vmrun_survives_a_kill_at_every_step() {
    new_leaf_killed_at_every_step(true);
}

fn new_leaf_killed_at_every_step(vmrun: bool) {
    let vm = vm();
    for &(step, expect) in NEW_LEAF {
        let lib = Lib::new();
        let base = lib.base_from(&vm);
        let base_before = fingerprint_tree(&base);
        let mut command = lib.command(&["new-leaf", "Crashy", "Leaf"]);
        command.env("LEAFD_FAULT", format!("new-leaf:{step}"));
        if vmrun {
            let stand_in = vmrun_stand_in(lib.tmp.path(), "works", VMRUN_WORKS);
            command.args(["--snapshot", "vmrun"]).env("LEAFD_VMRUN", stand_in);
        } else {
            // The native writer's steps, even where a vmrun is installed.
            command.args(["--snapshot", "native"]);
        }
        let o = command.output().unwrap();
        assert!(killed(&o), "{step}: the process was not killed there: {}", text(&o));
        lib.ok(&["recover"]);
        no_leftovers(&lib);
        let refs = || leaf_list(&base).len();
        match expect {
            Expect::Undone => {
                assert!(!lib.leaf_dir("Leaf").exists(), "{step}: half a leaf");
                assert_eq!(refs(), 0, "{step}: the base lists a leaf that does not exist");
                assert_eq!(fingerprint_tree(&base), base_before, "{step}: the base changed");
                lib.ok(&["new-leaf", "Crashy", "Leaf"]);
            }
            Expect::Finished => {
                let made_with = record(&lib.leaf_dir("Leaf"), "leaf")["snapshot"].as_str().unwrap().to_string();
                assert_eq!(made_with, if vmrun { "vmrun" } else { "native" }, "{step}");
            }
        }
        assert_eq!(refs(), 1, "{step}");
        for d in &vm.disks {
            let delta = lib.leaf_dir("Leaf").join(format!("{}-000001.vmdk", d.file.strip_suffix(".vmdk").unwrap()));
            qemu_check(&delta);
            for p in &d.patterns {
                qemu_read_pattern(&delta, p.offset, p.len, p.byte).unwrap();
            }
        }
        let mut after = fingerprint_tree(&base);
        after.retain(|l| !is_records(l));
        let mut was = base_before.clone();
        was.retain(|l| !is_records(l));
        assert_eq!(after, was, "{step}: the base's files changed");
        no_leftovers(&lib);
    }
}

#[test]
fn make_base_of_a_leaf_survives_a_kill_while_flattening() {
    let lib = Lib::new();
    let vm = vm();
    lib.base_from(&vm);
    lib.ok(&["new-leaf", "Crashy", "Leaf"]);
    let leaf = lib.leaf_dir("Leaf");
    let before = fingerprint_tree(&leaf);
    let o = lib
        .command(&["make-base", leaf.to_str().unwrap()])
        .env("LEAFD_FAULT", format!("make-base:{FLATTENED}"))
        .output()
        .unwrap();
    assert!(killed(&o), "not killed while flattening: {}", text(&o));
    lib.ok(&["recover"]);
    no_leftovers(&lib);
    assert_eq!(fingerprint_tree(&leaf), before, "the leaf is not as it was");
    assert!(!lib.base_dir("Leaf").exists());
    assert!(
        !std::fs::read_dir(lib.root.join("Bases")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".leafd"))
    );
    lib.ok(&["make-base", leaf.to_str().unwrap()]);
    for d in &vm.disks {
        let flat = lib.base_dir("Leaf").join(format!("{}-000001-base.vmdk", d.file.strip_suffix(".vmdk").unwrap()));
        qemu_read_pattern(&flat, d.patterns[0].offset, d.patterns[0].len, d.patterns[0].byte).unwrap();
    }
}
