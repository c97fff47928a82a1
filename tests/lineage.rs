//! Keeping lineage healthy: verify, relink, promote, flatten on Make Base, remove-base. Results
//! are checked with QEMU (`qemu-io -r`, `qemu-img compare`) against the chain as it was.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use leafd::testing::promote;
use leafd::testing::{SampleDisk, SampleVm};
use leafd_formats::disk::DiskType;

const MIB: u64 = 1 << 20;

fn two_disk_vm(name: &str) -> SampleVm {
    SampleVm {
        name: name.into(),
        disks: vec![
            // Odd capacity: the last grain is partial.
            SampleDisk::new("scsi0:0", "Virtual Disk.vmdk", DiskType::SplitSparse, 24 * MIB + 1536),
            SampleDisk::new("sata0:0", "Data.vmdk", DiskType::MonolithicFlat, 8 * MIB),
        ],
    }
}

fn delta(lib: &Lib, leaf: &str, disk: &str) -> PathBuf {
    lib.leaf_dir(leaf).join(format!("{}-000001.vmdk", disk.strip_suffix(".vmdk").unwrap()))
}

/// Writes into many grains of every disk of a leaf, including its last (partial) grain.
fn scribble(lib: &Lib, leaf: &str, vm: &SampleVm, byte: u8) {
    for d in &vm.disks {
        let p = delta(lib, leaf, &d.file);
        let cap = d.capacity * 512;
        let mut cmds = Vec::new();
        for g in (0..cap / 65536).step_by(5) {
            cmds.push(format!("write -P 0x{:02x} {} 3000", byte.wrapping_add(g as u8), g * 65536 + 100));
        }
        cmds.push(format!("write -P 0x{byte:02x} {} 1024", cap - 1024));
        let mut args = vec!["-f", "vmdk"];
        for c in &cmds {
            args.extend(["-c", c]);
        }
        args.push(p.to_str().unwrap());
        let o = run_tool("qemu-io", &args);
        assert!(o.status.success() && !text(&o).contains("failed"), "{}", text(&o));
    }
}

/// What each disk of a leaf shows, as raw files made by QEMU (the reference).
fn snapshot(lib: &Lib, leaf: &str, vm: &SampleVm, into: &Path) -> Vec<PathBuf> {
    vm.disks
        .iter()
        .map(|d| {
            let out = into.join(format!("{leaf}-{}.raw", d.file));
            to_raw(&delta(lib, leaf, &d.file), &out);
            out
        })
        .collect()
}

fn setup(leaves: &[&str]) -> (Lib, SampleVm) {
    let lib = Lib::new();
    let vm = two_disk_vm("Ubuntu");
    lib.base_from(&vm);
    for l in leaves {
        lib.ok(&["new-leaf", "Ubuntu", l]);
    }
    (lib, vm)
}

fn verify(lib: &Lib, args: &[&str]) -> (i32, String) {
    let mut all = vec!["verify"];
    all.extend(args);
    let o = lib.run(&all);
    (o.status.code().unwrap(), text(&o))
}

/// Every extended attribute gone, as a copy through a file system without them leaves a tree.
fn strip_xattrs(dir: &Path) {
    for p in std::iter::once(dir.to_path_buf()).chain(walk(dir)) {
        for name in xattr::list(&p).unwrap() {
            xattr::remove(&p, &name).unwrap();
        }
    }
}

/// leafd's records of the stores and leaves under `dir` gone, files and mirrors (not the
/// library's own state in `<root>/.leafd`).
fn strip_records(lib: &Lib, dir: &Path) {
    for p in std::iter::once(dir.to_path_buf()).chain(walk(dir)) {
        if p.file_name().is_some_and(|n| n == ".leafd") && p != lib.root.join(".leafd") && p.is_dir() {
            fs::remove_dir_all(&p).unwrap();
        }
    }
    for p in std::iter::once(dir.to_path_buf()).chain(walk(dir)) {
        for name in xattr::list(&p).unwrap() {
            if name.to_string_lossy().starts_with("user.org.leafd.") {
                xattr::remove(&p, &name).unwrap();
            }
        }
    }
}

#[test]
fn a_healthy_library_verifies() {
    let (lib, _) = setup(&["Web", "DB"]);
    let (code, out) = verify(&lib, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 base, 2 leaves checked: all good"), "{out}");
    let (code, out) = verify(&lib, &["--deep", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
}

/// A way to break a library (returning the path verify must name), and what verify must say.
type Break = (&'static str, fn(&Lib) -> String, &'static str);

const BREAKS: &[Break] = &[
    (
        "parent copy CID changed",
        |lib| {
            let p = lib.leaf_dir("Web").join("Virtual Disk.vmdk");
            let t = fs::read_to_string(&p).unwrap();
            let at = t.find("CID=").unwrap() + 4;
            let mut t = t.into_bytes();
            t[at] = if t[at] == b'0' { b'1' } else { b'0' };
            fs::write(&p, t).unwrap();
            p.display().to_string()
        },
        "CID",
    ),
    (
        "base extent missing",
        |lib| {
            let p = lib.base_dir("Ubuntu").join("Virtual Disk-s002.vmdk");
            fs::remove_file(&p).unwrap();
            p.display().to_string()
        },
        "missing",
    ),
    (
        "base extent truncated",
        |lib| {
            let p = lib.base_dir("Ubuntu").join("Virtual Disk-s001.vmdk");
            let f = fs::File::options().write(true).open(&p).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len - 4096).unwrap();
            p.display().to_string()
        },
        "truncated",
    ),
    (
        "base unlocked",
        |lib| {
            let p = lib.base_dir("Ubuntu").join("Data-flat.vmdk");
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            p.display().to_string()
        },
        "not write-protected",
    ),
    (
        "base deleted",
        |lib| {
            fs::rename(lib.base_dir("Ubuntu"), lib.tmp.path().join("gone")).unwrap();
            lib.leaf_dir("Web").display().to_string()
        },
        "is not in the library",
    ),
    (
        "leaf moved out of the library",
        |lib| {
            fs::rename(lib.leaf_dir("Web"), lib.tmp.path().join("Web.vmwarevm")).unwrap();
            lib.leaf_dir("Web").display().to_string()
        },
        "is missing (moved, or deleted)",
    ),
    (
        "leaf's .vmx no longer on the delta",
        |lib| {
            let p = lib.leaf_dir("Web").join("Web.vmx");
            let t = fs::read_to_string(&p).unwrap().replace("\"Virtual Disk-000001.vmdk\"", "\"Virtual Disk.vmdk\"");
            fs::write(&p, t).unwrap();
            p.display().to_string()
        },
        "no longer points at its delta",
    ),
    (
        "base's .vmx renamed so VMware would boot it",
        |lib| {
            let (from, to) =
                (lib.base_dir("Ubuntu").join("Ubuntu.vmx.base"), lib.base_dir("Ubuntu").join("Ubuntu.vmx"));
            fs::rename(from, &to).unwrap();
            to.display().to_string()
        },
        "the base can be booted",
    ),
    (
        "an extent's recorded size differs",
        |lib| {
            let base = lib.base_dir("Ubuntu");
            let mut rec = record(&base, "base");
            let e = &mut rec["disks"][0]["extents"][0];
            e["size"] = (e["size"].as_u64().unwrap() + 512).into();
            set_record(&base, "base", &rec);
            base.join("Virtual Disk-s001.vmdk").display().to_string()
        },
        "when the base was made",
    ),
];

/// Each break, on a fresh library: verify must fail and name the file.
#[test]
fn verify_names_every_break() {
    for (name, break_it, says) in BREAKS {
        let (lib, _) = setup(&["Web"]);
        let path = break_it(&lib);
        let (code, out) = verify(&lib, &[]);
        assert_eq!(code, 1, "{name}: {out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("PROBLEM:") && l.contains(says))
            .unwrap_or_else(|| panic!("{name}: no problem saying {says:?}: {out}"));
        assert!(line.contains(&path), "{name}: {path} not named in the problem line: {out}");
        assert!(out.contains("  fix: "), "{name}: no fix: {out}");
    }
}

/// A file the leaf's chain leads to that is missing (its parent copy) may mean the leaf or its
/// base moved; its own delta missing cannot be fixed by relinking.
#[test]
fn verify_advises_relink_only_for_a_missing_file_the_delta_leads_to() {
    for (gone, says, fix) in [
        ("Virtual Disk.vmdk", "is missing", "run `leafd relink` on the leaf"),
        ("Virtual Disk-000001.vmdk", "No such file", "restore the leaf from a backup"),
    ] {
        let (lib, _) = setup(&["Web"]);
        fs::remove_file(lib.leaf_dir("Web").join(gone)).unwrap();
        let (code, out) = verify(&lib, &[]);
        assert_eq!(code, 1, "{gone}: {out}");
        let mut lines = out.lines().skip_while(|l| !(l.starts_with("PROBLEM:") && l.contains(says)));
        assert!(lines.next().is_some(), "{gone}: no problem saying {says:?}: {out}");
        assert!(lines.next().is_some_and(|l| l.contains(fix)), "{gone}: fix is not {fix:?}: {out}");
    }
}

/// A damaged base record comes back whole from its mirror (the same JSON in an extended
/// attribute), fingerprints and recorded sizes included.
#[test]
fn a_damaged_base_record_is_restored_from_its_mirror() {
    let (lib, _) = setup(&["Web"]);
    let base = lib.base_dir("Ubuntu");
    let good = record(&base, "base");
    fs::write(base.join(".leafd/base.json"), b"{not json").unwrap();
    let o = lib.run(&["new-leaf", "Ubuntu", "DB"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("record is damaged") && text(&o).contains("leafd verify"), "{}", text(&o));
    let (code, out) = verify(&lib, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("repaired: {}: the base record was damaged; restored from its mirror", base.display())),
        "{out}"
    );
    assert_eq!(record(&base, "base"), good);
}

/// Without a mirror either (a volume without extended attributes), a damaged base record is
/// rebuilt from the disks under the id its leaves know; its fingerprint is lost, and a deep
/// verify records one only from content whose extents check out.
#[test]
fn a_damaged_base_record_without_a_mirror_is_rebuilt_with_the_id_its_leaves_know() {
    let (lib, _) = setup(&["Web"]);
    let base = lib.base_dir("Ubuntu");
    let id = record(&base, "base")["id"].clone();
    strip_xattrs(&base);
    fs::write(base.join(".leafd/base.json"), b"{not json").unwrap();
    let (code, out) = verify(&lib, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("base lineage was damaged; rebuilt from its disks"), "{out}");
    let rec = record(&base, "base");
    assert_eq!(rec["id"], id);
    assert!(rec["disks"][0]["fingerprint"].is_null());
    let (code, out) = verify(&lib, &["--deep"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("fingerprint recorded"), "{out}");
}

/// Snapshots the user takes in VMware put a leaf's disk on a newer delta over the leaf's own:
/// still a healthy leaf.
#[test]
fn a_leaf_with_snapshots_of_its_own_verifies() {
    let (lib, _) = setup(&["Web"]);
    let dir = lib.leaf_dir("Web");
    qemu_snapshot("Virtual Disk-000001.vmdk", &dir.join("Virtual Disk-000002.vmdk"));
    let vmx = dir.join("Web.vmx");
    let edited =
        fs::read_to_string(&vmx).unwrap().replace("\"Virtual Disk-000001.vmdk\"", "\"Virtual Disk-000002.vmdk\"");
    fs::write(&vmx, edited).unwrap();
    let (code, out) = verify(&lib, &[]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_base_that_lost_its_lineage_gets_it_back_with_the_id_its_leaves_know() {
    let (lib, _) = setup(&["Web"]);
    let base_id = record(&lib.base_dir("Ubuntu"), "base")["id"].clone();
    let base = lib.base_dir("Ubuntu");
    strip_records(&lib, &base);
    let (code, out) = verify(&lib, &[]);
    assert_eq!(code, 0, "{out}");
    let named = format!("repaired: {}: base lineage was missing", base.display());
    assert!(out.contains(&named), "{out}");
    assert_eq!(record(&base, "base")["id"], base_id);
    assert_eq!(record(&base, "base")["disks"][0]["extents"][1]["file"], "Virtual Disk-s002.vmdk");
    assert_eq!(leaf_list(&base).len(), 1, "the base lists its leaf again");
    let (code, out) = verify(&lib, &["--deep"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = verify(&lib, &[]);
    assert!(code == 0 && !out.contains("repaired"), "a second verify repairs nothing: {out}");
}

/// Records are files: a library copied through a file system without extended attributes (or
/// by a tool that drops them) loses only the mirrors and tags, and needs nothing.
#[test]
fn a_library_copied_without_extended_attributes_needs_nothing() {
    let (lib, vm) = setup(&["Web", "DB"]);
    strip_xattrs(&lib.root);
    let (code, out) = verify(&lib, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("repaired"), "{out}");
    assert!(out.contains("1 base, 2 leaves checked: all good"), "{out}");
    lib.ok(&["new-leaf", "Ubuntu", "After"]);
    leaf_reads(&lib.leaf_dir("After"), &vm);
}

/// A library whose records were lost altogether (files and mirrors) is rebuilt from the chain.
#[test]
fn a_library_that_lost_its_records_is_rebuilt_from_the_chain() {
    let (lib, vm) = setup(&["Web", "DB"]);
    strip_records(&lib, &lib.root.clone());
    let (code, out) = verify(&lib, &[]);
    assert_eq!(code, 0, "{out}");
    let named = format!("repaired: {}: base lineage was missing", lib.base_dir("Ubuntu").display());
    assert!(out.contains(&named), "{out}");
    for leaf in ["Web", "DB"] {
        let named = format!("repaired: {}: leaf lineage was missing", lib.leaf_dir(leaf).display());
        assert!(out.contains(&named), "{out}");
    }
    assert!(out.contains("1 base, 2 leaves checked: all good"), "{out}");
    let base_id = record(&lib.base_dir("Ubuntu"), "base")["id"].clone();
    for leaf in ["Web", "DB"] {
        assert_eq!(record(&lib.leaf_dir(leaf), "leaf")["base_id"], base_id);
    }
    assert_eq!(leaf_list(&lib.base_dir("Ubuntu")).len(), 2);
    let (code, out) = verify(&lib, &[]);
    assert!(code == 0 && !out.contains("repaired"), "a second verify repairs nothing: {out}");
    lib.ok(&["new-leaf", "Ubuntu", "After"]);
    leaf_reads(&lib.leaf_dir("After"), &vm);
}

#[test]
fn deep_verify_sees_changed_content() {
    let (lib, _) = setup(&[]);
    let p = lib.base_dir("Ubuntu").join("Data-flat.vmdk");
    use std::os::unix::fs::{FileExt, PermissionsExt};
    let mode = fs::metadata(&p).unwrap().permissions().mode();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    fs::File::options().write(true).open(&p).unwrap().write_all_at(b"bit rot", 12345).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    let (code, out) = verify(&lib, &[]);
    assert_eq!(code, 0, "a flip of content inside the data is invisible without --deep: {out}");
    let (code, out) = verify(&lib, &["--deep"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("content changed"), "{out}");
}

#[test]
fn a_library_moved_as_a_whole_needs_no_relink() {
    let (lib, vm) = setup(&["Web"]);
    let moved = lib.tmp.path().join("elsewhere/My VMs");
    fs::create_dir_all(moved.parent().unwrap()).unwrap();
    fs::rename(&lib.root, &moved).unwrap();
    let o = lib.command(&["verify"]).arg("--root").arg(&moved).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for d in &vm.disks {
        let delta = moved.join("Web.vmwarevm").join(format!("{}-000001.vmdk", d.file.strip_suffix(".vmdk").unwrap()));
        qemu_read_pattern(&delta, d.patterns[0].offset, d.patterns[0].len, d.patterns[0].byte).unwrap();
    }
}

fn leaf_reads(leaf_dir: &Path, vm: &SampleVm) {
    for d in &vm.disks {
        let delta = leaf_dir.join(format!("{}-000001.vmdk", d.file.strip_suffix(".vmdk").unwrap()));
        for p in &d.patterns {
            qemu_read_pattern(&delta, p.offset, p.len, p.byte).unwrap_or_else(|e| panic!("{}: {e}", delta.display()));
        }
    }
}

#[test]
fn relink_after_the_leaf_moved_alone() {
    let (lib, vm) = setup(&["Web"]);
    let away = lib.tmp.path().join("Desktop/Web.vmwarevm");
    fs::create_dir_all(away.parent().unwrap()).unwrap();
    fs::rename(lib.leaf_dir("Web"), &away).unwrap();
    assert!(
        qemu_read_pattern(&away.join("Virtual Disk-000001.vmdk"), 0, 512, 0x11).is_err(),
        "moving alone breaks relative paths"
    );
    let out = lib.ok(&["relink", away.to_str().unwrap()]);
    assert!(out.contains("relinked to base \"Ubuntu\" (2 disks)"), "{out}");
    leaf_reads(&away, &vm);
    assert!(
        fs::read_to_string(away.join("Virtual Disk.vmdk"))
            .unwrap()
            .contains(&format!("\"{}/", lib.root.join("Bases/Ubuntu").display())),
        "absolute outside the library"
    );
    assert_eq!(record(&away, "leaf")["path"], away.to_str().unwrap());
    let out = lib.ok(&["relink", away.to_str().unwrap()]);
    assert!(out.contains("nothing to do"), "{out}");
    let (code, out) = verify(&lib, &[]);
    assert_eq!(code, 0, "the base now lists the leaf where it is: {out}");
}

#[test]
fn relink_after_the_base_moved_to_another_library() {
    let (lib, vm) = setup(&["Web"]);
    let other = Lib::new();
    fs::create_dir_all(other.root.join("Bases")).unwrap();
    fs::rename(lib.base_dir("Ubuntu"), other.base_dir("Ubuntu")).unwrap();
    let o = other.command(&["relink", lib.leaf_dir("Web").to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    leaf_reads(&lib.leaf_dir("Web"), &vm);
}

#[test]
fn relink_after_both_moved() {
    let (lib, vm) = setup(&["Web"]);
    let other = Lib::new();
    fs::create_dir_all(other.root.join("Bases")).unwrap();
    // Into another library, the base under a new name.
    fs::rename(lib.base_dir("Ubuntu"), other.base_dir("Ubuntu LTS")).unwrap();
    fs::rename(lib.leaf_dir("Web"), other.leaf_dir("Web")).unwrap();
    other.ok(&["relink", "Web"]);
    leaf_reads(&other.leaf_dir("Web"), &vm);
    let copy = fs::read_to_string(other.leaf_dir("Web").join("Virtual Disk.vmdk")).unwrap();
    assert!(copy.contains("\"../Bases/Ubuntu LTS/Virtual Disk-s001.vmdk\""), "relative inside the library: {copy}");
}

#[test]
fn relink_refuses_a_different_base_with_the_same_name() {
    let (lib, _) = setup(&["Web"]);
    fs::rename(lib.base_dir("Ubuntu"), lib.tmp.path().join("original")).unwrap();
    lib.base_from(&two_disk_vm("Ubuntu"));
    let before = fingerprint_tree(&lib.leaf_dir("Web"));
    let o = lib.run(&["relink", "Web"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("is not the base leaf \"Web\" was made from")
            && text(&o).contains(lib.base_dir("Ubuntu").to_str().unwrap()),
        "{}",
        text(&o)
    );
    assert_eq!(fingerprint_tree(&lib.leaf_dir("Web")), before);
}

/// The leaf's base id is found nowhere, and two bases (a VM and its duplicate) have the disk
/// identity of its parent copies: relink must not guess.
#[test]
fn relink_refuses_to_choose_between_two_bases_of_the_same_disk() {
    let (lib, _) = setup(&["Web"]);
    let original = lib.base_dir("Ubuntu");
    let twin = lib.base_dir("Ubuntu Twin");
    run_tool("cp", &["-a", original.to_str().unwrap(), twin.to_str().unwrap()]);
    for (dir, id) in [(&original, "another-id-1"), (&twin, "another-id-2")] {
        let mut rec = record(dir, "base");
        rec["id"] = id.into();
        set_record(dir, "base", &rec);
    }
    fs::rename(lib.leaf_dir("Web"), lib.tmp.path().join("Web.vmwarevm")).unwrap();
    fs::rename(lib.tmp.path().join("Web.vmwarevm"), lib.root.join("Moved Web.vmwarevm")).unwrap();
    let before = fingerprint_tree(&lib.root.join("Moved Web.vmwarevm"));
    let o = lib.run(&["relink", "Moved Web"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("2 bases could be the one leaf \"Web\" was made from")
            && text(&o).contains(twin.to_str().unwrap()),
        "{}",
        text(&o)
    );
    assert_eq!(fingerprint_tree(&lib.root.join("Moved Web.vmwarevm")), before);
    // With the duplicate out of the way, the original is found by its disks.
    fs::rename(&twin, lib.tmp.path().join("twin")).unwrap();
    lib.ok(&["relink", "Moved Web"]);
}

#[test]
fn promote_makes_a_standalone_vm_with_exactly_the_leafs_bytes() {
    let (lib, vm) = setup(&["Web", "Other"]);
    scribble(&lib, "Web", &vm, 0x60);
    let refs = snapshot(&lib, "Web", &vm, lib.tmp.path());
    let base_before = fingerprint_tree(&lib.base_dir("Ubuntu"));
    let out = lib.ok(&["promote", "Web"]);
    assert!(out.contains("promoted to a standalone VM"), "{out}");
    let base_after: Vec<String> =
        fingerprint_tree(&lib.base_dir("Ubuntu")).into_iter().filter(|l| !l.contains("/.leafd/leaves")).collect();
    let base_before: Vec<String> = base_before.into_iter().filter(|l| !l.contains("/.leafd/leaves")).collect();
    assert_eq!(base_after, base_before, "the base was written");
    // The base out of reach: the promoted VM must not need it.
    fs::rename(lib.base_dir("Ubuntu"), lib.tmp.path().join("away")).unwrap();
    let dir = lib.leaf_dir("Web");
    let vmx = leafd_formats::dict::Dict::parse(&fs::read(dir.join("Web.vmx")).unwrap()).unwrap();
    for (d, reference) in vm.disks.iter().zip(&refs) {
        let disk = dir.join(&d.file);
        assert_eq!(vmx.get(&format!("{}.fileName", d.node)), Some(d.file.as_str()));
        assert_eq!(qemu_chain(&disk).len(), 1, "no backing file");
        qemu_check(&disk);
        same_as(reference, &disk);
    }
    assert!(!dir.join("Web.vmsd").exists() && !dir.join("Virtual Disk-000001.vmdk").exists());
    assert_eq!(fs::read(dir.join("Web.nvram")).unwrap().len(), 8192);
    assert!(!dir.join(".leafd").exists() && xattr::get(&dir, "user.org.leafd.leaf").unwrap().is_none());
    fs::rename(lib.tmp.path().join("away"), lib.base_dir("Ubuntu")).unwrap();
    let refs_left = leaf_list(&lib.base_dir("Ubuntu")).len();
    assert_eq!(refs_left, 1, "the base forgot the promoted leaf and kept the other");
    let (code, out) = verify(&lib, &[]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn promote_survives_a_kill_at_every_step() {
    for &step in promote::STEPS {
        let (lib, vm) = setup(&["Web"]);
        scribble(&lib, "Web", &vm, 0x70);
        let refs = snapshot(&lib, "Web", &vm, lib.tmp.path());
        let o = lib.command(&["promote", "Web"]).env("LEAFD_FAULT", format!("promote:{step}")).output().unwrap();
        assert!(killed(&o), "{step}: not killed there: {}", text(&o));
        lib.ok(&["recover"]);
        let dir = lib.leaf_dir("Web");
        let promoted = !dir.join(".leafd/leaf.json").exists();
        for (d, reference) in vm.disks.iter().zip(&refs) {
            let disk = if promoted { dir.join(&d.file) } else { delta(&lib, "Web", &d.file) };
            same_as(reference, &disk);
        }
        let stray = leftovers(&lib.root);
        assert!(stray.is_empty(), "{step}: {stray:?}");
        if !promoted {
            lib.ok(&["promote", "Web"]);
        }
        let (code, out) = verify(&lib, &[]);
        assert_eq!(code, 0, "{step}: {out}");
    }
}

/// A kill between the two renames, then something new at the leaf's place (an agent's leaf of
/// the same name, a restore from backup): recovery must not delete the old leaf nor hide the
/// promoted one; it waits until the place is free.
#[test]
fn promote_recovery_never_deletes_the_leaf_when_its_place_was_taken() {
    let (lib, vm) = setup(&["Web"]);
    scribble(&lib, "Web", &vm, 0x74);
    let refs = snapshot(&lib, "Web", &vm, lib.tmp.path());
    let o = lib.command(&["promote", "Web"]).env("LEAFD_FAULT", "promote:set-aside").output().unwrap();
    assert!(killed(&o), "{}", text(&o));
    let dir = lib.leaf_dir("Web");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("restored.txt"), b"someone else's").unwrap();
    let o = lib.run(&["recover"]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("move what is at") && text(&o).contains("leafd recover"), "{}", text(&o));
    assert_eq!(fs::read(dir.join("restored.txt")).unwrap(), b"someone else's");
    let hidden = leftovers(&lib.root);
    assert_eq!(hidden.len(), 2, "both the old leaf and the promoted VM are kept: {hidden:?}");
    let aside = hidden.iter().find(|p| p.to_string_lossy().contains("promoted")).unwrap();
    for (d, reference) in vm.disks.iter().zip(&refs) {
        same_as(reference, &aside.join(d.file.replace(".vmdk", "-000001.vmdk")));
    }
    // Once the place is free, recovery finishes.
    fs::rename(&dir, lib.tmp.path().join("restored")).unwrap();
    lib.ok(&["recover"]);
    assert!(!dir.join(".leafd/leaf.json").exists());
    for (d, reference) in vm.disks.iter().zip(&refs) {
        same_as(reference, &dir.join(&d.file));
    }
    assert!(leftovers(&lib.root).is_empty(), "{:?}", leftovers(&lib.root));
}

#[test]
fn a_leaf_dropped_into_make_base_becomes_a_base_of_its_state() {
    let (lib, vm) = setup(&["Web"]);
    scribble(&lib, "Web", &vm, 0x80);
    let refs = snapshot(&lib, "Web", &vm, lib.tmp.path());
    let mut leaf_files = checksums(&lib.leaf_dir("Web"));
    leaf_files.retain(|f, _| !is_records(&f.to_string_lossy()));
    let copies: Vec<PathBuf> = vm.disks.iter().map(|d| PathBuf::from(&d.file)).collect();
    let dropped = lib.make_base_dir().join("Web Base.vmwarevm");
    fs::rename(lib.leaf_dir("Web"), &dropped).unwrap();
    lib.ok(&["make-base", dropped.to_str().unwrap()]);
    let base = lib.base_dir("Web Base");
    // Nothing of the leaf is lost: all its files are in the base, unchanged but for its parent
    // copies (leafd's own), rewritten to reach the old base from their new place.
    let mut now = checksums(&base);
    for (f, sum) in &leaf_files {
        let name = if *f == Path::new("Web.vmx") { PathBuf::from("Web.vmx.base") } else { f.clone() };
        if copies.contains(f) {
            assert!(now.remove(&name).is_some(), "{} lost", f.display());
            continue;
        }
        assert_eq!(now.remove(&name).as_ref(), Some(sum), "{} changed or lost", f.display());
    }
    // The old chain in the base still reads as the leaf read (QEMU follows its paths).
    for d in &vm.disks {
        let old_delta = base.join(format!("{}-000001.vmdk", d.file.strip_suffix(".vmdk").unwrap()));
        assert_eq!(qemu_chain(&old_delta).len(), 2, "{}", old_delta.display());
    }
    for (d, reference) in vm.disks.iter().zip(&refs) {
        let flat = base.join(format!("{}-000001-base.vmdk", d.file.strip_suffix(".vmdk").unwrap()));
        assert_eq!(qemu_chain(&flat).len(), 1);
        same_as(reference, &flat);
    }
    assert!(!base.join(".leafd/leaf.json").exists() && xattr::get(&base, "user.org.leafd.leaf").unwrap().is_none());
    // Its lineage can be rebuilt too, though its .vmx still names the old chain.
    strip_records(&lib, &base);
    let (code, out) = verify(&lib, &[]);
    assert!(code == 0 && out.contains("base lineage was missing"), "{out}");
    assert!(record(&base, "base")["disks"][0]["descriptor"].as_str().unwrap().ends_with("-000001-base.vmdk"));
    assert_eq!(leaf_list(&lib.base_dir("Ubuntu")).len(), 0, "the old base forgot the leaf");
    // A leaf of the leaf's state.
    lib.ok(&["new-leaf", "Web Base", "Grandchild"]);
    for (d, reference) in vm.disks.iter().zip(&refs) {
        let stem = format!("{}-000001-base", d.file.strip_suffix(".vmdk").unwrap());
        same_as(reference, &lib.leaf_dir("Grandchild").join(format!("{stem}-000001.vmdk")));
    }
    let (code, out) = verify(&lib, &[]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn remove_base_only_when_nothing_depends_on_it() {
    let (lib, _) = setup(&["Web"]);
    let o = lib.run(&["remove-base", "Ubuntu"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("1 leaf still depend") && text(&o).contains("\"Web\""), "{}", text(&o));
    lib.ok(&["promote", "Web"]);
    let s: serde_json::Value = serde_json::from_str(&lib.ok(&["status", "--json"])).unwrap();
    let bases = if s["bases"].is_array() { &s["bases"] } else { &s["library"]["bases"] };
    assert!(bases[0]["reclaimable_bytes"].as_u64().unwrap() > 0);
    // --delete without a terminal to ask on, and without --yes: refused, nothing changed.
    let before = fingerprint_tree(&lib.root);
    let o = lib.run(&["remove-base", "Ubuntu", "--delete"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("--delete --yes") && text(&o).contains("for good"), "{}", text(&o));
    assert_eq!(fingerprint_tree(&lib.root), before);
    let out = lib.ok(&["remove-base", "Ubuntu", "--delete", "--yes"]);
    assert!(out.contains("base \"Ubuntu\" deleted"), "{out}");
    assert!(!lib.base_dir("Ubuntu").exists() && !lib.root.join("New Leaf/Ubuntu").exists());
    assert!(fs::read_dir(lib.root.join("Bases")).unwrap().next().is_none());
    assert!(trash_list(&lib.home()).is_empty(), "--delete put something in the Trash");
    // The promoted VM still works without it.
    qemu_read_pattern(&lib.leaf_dir("Web").join("Virtual Disk.vmdk"), 0, 65536, 0x11).unwrap();
}

/// By default a base goes to the freedesktop.org Trash (the private HOME's here) under its own
/// name, unlocked, with the `.trashinfo` that trash-cli (an independent implementation) lists and
/// puts back where it was; a second base of the same name goes in beside it.
#[test]
fn remove_base_moves_the_base_to_the_trash_under_its_own_name() {
    let (lib, vm) = setup(&[]);
    let trash = lib.home().join(".local/share/Trash");
    let base = lib.base_dir("Ubuntu");
    let before = vm_files(&base);
    let out = lib.ok(&["remove-base", "Ubuntu"]);
    let item = trash.join("files/Ubuntu");
    assert!(out.contains(&format!("base \"Ubuntu\" moved to the Trash: {}", item.display())), "{out}");
    assert!(!base.exists() && !lib.root.join("New Leaf/Ubuntu").exists());
    assert!(leftovers(&lib.root.join("Bases")).is_empty(), "{:?}", leftovers(&lib.root.join("Bases")));
    assert_eq!(vm_files(&item), before, "the base's files are not all in the Trash as they were");
    assert!(!item.join(".leafd-stamp").exists() && !walk(&item).iter().any(|p| p.ends_with(".leafd-stamp")));
    for d in &vm.disks {
        let m = fs::metadata(item.join(&d.file)).unwrap();
        assert!(m.permissions().mode() & 0o200 != 0, "{} still write-protected in the Trash", d.file);
    }
    let info = fs::read_to_string(trash.join("info/Ubuntu.trashinfo")).unwrap();
    assert!(info.starts_with(&format!("[Trash Info]\nPath={}\nDeletionDate=", base.display())), "{info}");
    assert_eq!(trash_list(&lib.home()), vec![base.clone()]);
    // Restored by trash-cli, it is back where it was: a base again, which verify checks (its
    // disks lost their protection in the Trash, and verify says how to put it back).
    trash_restore(&lib.home(), &base);
    assert_eq!(vm_files(&base), before);
    let (code, out) = verify(&lib, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("chmod a-w"), "{out}");
    lib.ok(&["remove-base", "Ubuntu"]);
    // Another base named "Ubuntu", removed too: beside the first, numbered as desktops do.
    lib.base_from(&vm);
    let out = lib.ok(&["remove-base", "Ubuntu"]);
    assert!(out.contains(&format!("{}/files/Ubuntu.2 ", trash.display())), "{out}");
    assert_eq!(trash_list(&lib.home()), [base.clone(), base.clone()]);
    assert!(trash.join("files/Ubuntu").is_dir() && trash.join("info/Ubuntu.2.trashinfo").is_file());
}

/// Killed at every step, to the Trash and deleted: recovery finishes the removal, the base is
/// in the Trash once (with its `.trashinfo`, as trash-cli lists it) or not at all.
#[test]
fn remove_base_survives_a_kill_at_every_step() {
    for args in [&["remove-base", "Ubuntu"][..], &["remove-base", "Ubuntu", "--delete", "--yes"]] {
        for &step in leafd::testing::remove_base::STEPS {
            let (lib, _) = setup(&[]);
            let o = lib.command(args).env("LEAFD_FAULT", format!("remove-base:{step}")).output().unwrap();
            assert!(killed(&o), "{args:?} {step}: {}", text(&o));
            lib.ok(&["recover"]);
            if step == "journaled" {
                // Killed before the base left the library: it stays, whole.
                let (code, out) = verify(&lib, &[]);
                assert_eq!(code, 0, "{args:?} {step}: {out}");
                lib.ok(args);
            }
            let what = format!("{args:?} killed at {step}");
            assert!(fs::read_dir(lib.root.join("Bases")).unwrap().next().is_none(), "{what}: removal not finished");
            assert!(!lib.root.join("New Leaf/Ubuntu").exists(), "{what}: drop folder left");
            assert_eq!(fs::read_dir(lib.root.join(".leafd/journal")).unwrap().count(), 0, "{what}: journal left");
            let trashed = if args.contains(&"--delete") { vec![] } else { vec![lib.base_dir("Ubuntu")] };
            assert_eq!(trash_list(&lib.home()), trashed, "{what}");
            let (code, out) = verify(&lib, &[]);
            assert_eq!(code, 0, "{what}: {out}");
        }
    }
}

#[test]
fn promote_refuses_a_leaf_with_snapshots_of_its_own() {
    let (lib, _) = setup(&["Web"]);
    // As VMware would after a snapshot: the disk on a newer delta over the leaf's.
    let vmx = lib.leaf_dir("Web").join("Web.vmx");
    let edited =
        fs::read_to_string(&vmx).unwrap().replace("\"Virtual Disk-000001.vmdk\"", "\"Virtual Disk-000002.vmdk\"");
    fs::write(&vmx, edited).unwrap();
    let before = fingerprint_tree(&lib.leaf_dir("Web"));
    let o = lib.run(&["promote", "Web"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("snapshots of its own") && text(&o).contains("Web.vmx"), "{}", text(&o));
    assert_eq!(fingerprint_tree(&lib.leaf_dir("Web")), before);
}

#[test]
fn a_damaged_journal_does_not_stop_leafd() {
    let (lib, _) = setup(&[]);
    fs::write(lib.root.join(".leafd/journal/0000-damaged.json"), b"{ not json").unwrap();
    let o = lib.run(&["new-leaf", "Ubuntu", "Web"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("interrupted operation 0000-damaged kept") && text(&o).contains("journal is damaged"),
        "{}",
        text(&o)
    );
    let o = lib.run(&["recover"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let (code, out) = verify(&lib, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("1 interrupted operation(s)"), "{out}");
}

/// Two leaves of one name (one moved out of the library and relinked, then a new one made under
/// its name): a command given the name refuses, naming both, and changes nothing; given a path,
/// it acts on that leaf.
#[test]
fn a_name_two_leaves_share_is_refused_with_both_places() {
    let (lib, vm) = setup(&["Web"]);
    let away = lib.tmp.path().join("elsewhere/Web.vmwarevm");
    fs::create_dir_all(away.parent().unwrap()).unwrap();
    fs::rename(lib.leaf_dir("Web"), &away).unwrap();
    lib.ok(&["relink", away.to_str().unwrap()]);
    lib.ok(&["new-leaf", "Ubuntu", "Web"]);
    scribble(&lib, "Web", &vm, 0x61);
    let (here, there) = (fingerprint_tree(&lib.leaf_dir("Web")), fingerprint_tree(&away));
    for args in [&["reset", "Web", "--yes"][..], &["promote", "Web"], &["relink", "Web"]] {
        let o = lib.run(args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {t}");
        assert!(t.contains("2 leaves are named \"Web\"") && t.contains(away.to_str().unwrap()), "{args:?}: {t}");
        assert!(t.contains("give the path"), "{args:?}: {t}");
    }
    assert_eq!((fingerprint_tree(&lib.leaf_dir("Web")), fingerprint_tree(&away)), (here, there.clone()));
    lib.ok(&["reset", lib.leaf_dir("Web").to_str().unwrap(), "--yes"]);
    assert_eq!(fingerprint_tree(&away), there, "the other leaf of the name changed");
}
