//! leafd run as an ordinary user (the tests otherwise run as root, whom permissions do not
//! stop): disks that arrive read-only (`chmod a-w`, as the manual procedure does) still become a
//! base, and an interrupted Make Base puts them back exactly as they were.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use leafd::testing::SampleVm;
use leafd_formats::disk::DiskType;

const NOBODY: u32 = 65534;

/// Hands `dir` and everything under it to the unprivileged user.
fn give(dir: &Path) {
    let o = run_tool("chown", &["-R", &format!("{NOBODY}:{NOBODY}"), dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

/// The real binary as user `nobody` (through util-linux `setpriv`).
fn as_nobody(lib: &Lib, args: &[&str], fault: Option<&str>) -> Output {
    let mut c = Command::new("setpriv");
    c.args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_leafd"))
        .arg("--root")
        .arg(&lib.root)
        .args(args)
        .env("HOME", lib.home())
        .env("XDG_STATE_HOME", lib.tmp.path().join("state"))
        .env("XDG_CONFIG_HOME", lib.tmp.path().join("config"))
        .env_remove("LEAFD_ROOT");
    if let Some(f) = fault {
        c.env("LEAFD_FAULT", f);
    }
    c.output().unwrap_or_else(|e| panic!("setpriv (util-linux) is required: {e}"))
}

/// A library owned by `nobody`, with a VM in Make Base whose disk files are read-only.
fn setup() -> (Lib, SampleVm, std::path::PathBuf) {
    let lib = Lib::new();
    std::fs::set_permissions(lib.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let vm = SampleVm::single("Readonly", DiskType::SplitSparse, 8 << 20);
    let bundle = vm.build(&lib.make_base_dir()).unwrap();
    std::fs::create_dir_all(lib.home()).unwrap();
    give(lib.tmp.path());
    for f in walk(&bundle).into_iter().filter(|p| p.extension().is_some_and(|e| e == "vmdk")) {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    (lib, vm, bundle)
}

#[test]
fn read_only_disks_become_a_base_for_an_ordinary_user() {
    let (lib, vm, bundle) = setup();
    let o = as_nobody(&lib, &["make-base", bundle.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", text(&o));
    let base = lib.base_dir("Readonly");
    let extents = record(&base, "base")["disks"][0]["extents"].clone();
    assert_eq!(extents.as_array().unwrap().len(), 3, "{extents}");
    let o = as_nobody(&lib, &["new-leaf", "Readonly", "Leaf"], None);
    assert!(o.status.success(), "{}", text(&o));
    let p = vm.disks[0].patterns[0];
    qemu_read_pattern(&lib.leaf_dir("Leaf").join("Virtual Disk-000001.vmdk"), p.offset, p.len, p.byte).unwrap();
    let o = as_nobody(&lib, &["verify"], None);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn an_interrupted_make_base_puts_read_only_disks_back_as_they_were() {
    for step in ["lineage-written", "protected"] {
        let (lib, _, bundle) = setup();
        let before = fingerprint_tree(&bundle);
        let o = as_nobody(&lib, &["make-base", bundle.to_str().unwrap()], Some(&format!("make-base:{step}")));
        assert!(killed(&o), "{step}: {}", text(&o));
        let o = as_nobody(&lib, &["recover"], None);
        assert!(o.status.success(), "{step}: {}", text(&o));
        assert_eq!(fingerprint_tree(&bundle), before, "{step}: the VM is not as it was");
        let o = as_nobody(&lib, &["make-base", bundle.to_str().unwrap()], None);
        assert!(o.status.success(), "{step}: {}", text(&o));
    }
}
