//! Adopt (issue 16): a hand copy of a VM that was then made a base, written to since, becomes a
//! leaf of that base, in place, and reads byte for byte as it did; what it refuses, untouched;
//! `--dry-run`; the Finder drop into `New Leaf/<base>/`; and reset, which puts a leaf back to its
//! snapshot Base. Every check is made with independent readers (`qemu-img compare`, `qemu-io -r`,
//! `qemu-img map`) on the real binary's results.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use leafd::testing::{SampleDisk, SampleVm};
use leafd_formats::disk::DiskType;

const MIB: u64 = 1 << 20;
const GRAIN: u64 = 64 << 10;
const BASE: &str = "Ubuntu";

/// Sectors of the split disk: extents of 8,192 and a last one of 752, which is not a whole grain
/// (752 = 5 x 128 + 112, as 210,672 is 1,645 x 128 + 112 in a real P2V disk).
const SPLIT_SECTORS: u64 = 2 * 8192 + 752;
const SPLIT_BYTES: u64 = SPLIT_SECTORS * 512;

/// A split disk whose last extent is not a whole grain, and a monolithic one.
fn vm(name: &str) -> SampleVm {
    let mut split = SampleDisk::new("scsi0:0", "Virtual Disk.vmdk", DiskType::SplitSparse, SPLIT_BYTES);
    split.split_sectors = 8192;
    split.patterns = leafd::testing::standard_patterns(SPLIT_BYTES, 8192 * 512);
    SampleVm {
        name: name.into(),
        disks: vec![split, SampleDisk::new("sata0:0", "Second.vmdk", DiskType::MonolithicSparse, 4 * MIB)],
    }
}

/// `cp -a --sparse=always`, as a person copies a VM.
fn cp(from: &Path, to: &Path) {
    let o = run_tool("cp", &["-a", "--sparse=always", from.to_str().unwrap(), to.to_str().unwrap()]);
    assert!(o.status.success(), "cp: {}", text(&o));
}

/// A VM built in `Make Base/`, copied by hand to `<dir>/<copy>.vmwarevm` first, then made the
/// base: returns the copy.
fn hand_copy(lib: &Lib, vm: &SampleVm, dir: &Path, copy: &str) -> PathBuf {
    let bundle = vm.build(&lib.make_base_dir()).unwrap();
    let to = dir.join(format!("{copy}.vmwarevm"));
    cp(&bundle, &to);
    lib.ok(&["make-base", bundle.to_str().unwrap(), "--name", BASE]);
    to
}

/// Writes `(offset, len, byte)` into the VM's disk `file` with QEMU (the VM is used).
fn use_disk(vm: &Path, file: &str, writes: &[(u64, u64, u8)]) {
    for &(offset, len, byte) in writes {
        qemu_write(&vm.join(file), offset, len, byte);
    }
}

/// Compacts a VM's monolithic disk as VMware's disk tool does: grains of zeros are no longer
/// stored (here by `qemu-img convert`, which leaves them out).
fn compact(disk: &Path) {
    // Under its own name (its embedded descriptor names its file), in a folder of its own.
    let dir = disk.parent().unwrap().join("compacted");
    fs::create_dir(&dir).unwrap();
    let tmp = dir.join(disk.file_name().unwrap());
    let (from, to) = (disk.to_str().unwrap(), tmp.to_str().unwrap());
    let o =
        run_tool("qemu-img", &["convert", "-f", "vmdk", "-O", "vmdk", "-o", "subformat=monolithicSparse", from, to]);
    assert!(o.status.success(), "qemu-img convert: {}", text(&o));
    fs::rename(&tmp, disk).unwrap();
    fs::remove_dir(&dir).unwrap();
}

/// Raw images of the VM's disks as QEMU reads them, saved beside the library.
fn save(lib: &Lib, vm: &Path, files: &[&str]) -> Vec<PathBuf> {
    let dir = lib.tmp.path().join("saved");
    fs::create_dir_all(&dir).unwrap();
    files
        .iter()
        .map(|f| {
            let out = dir.join(format!("{f}.raw"));
            to_raw(&vm.join(f), &out);
            out
        })
        .collect()
}

/// Bytes of data the disk `top` holds itself (not its backing chain), as `qemu-img map` says.
fn own_data(top: &Path) -> u64 {
    let o = run_tool("qemu-img", &["map", "-U", "-f", "vmdk", "--output=json", top.to_str().unwrap()]);
    assert!(o.status.success(), "qemu-img map: {}", text(&o));
    let map: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    map.iter().filter(|e| e["depth"] == 0 && e["data"] == true).map(|e| e["length"].as_u64().unwrap()).sum()
}

fn delta(file: &str) -> String {
    format!("{}-000001.vmdk", file.strip_suffix(".vmdk").unwrap())
}

/// The writes the tests make: within a grain, across a grain boundary, across the split disk's
/// first extent end, zeros over the base's data, and the disk's last bytes (a short grain).
const WRITES: &[(u64, u64, u8)] = &[
    (3 * GRAIN + 100, 1000, 0xa1),
    (20 * GRAIN - 512, 1024, 0xa2),
    (4 * MIB - 4096, 8192, 0xa3),
    (0, 4096, 0x00),
    (SPLIT_BYTES - 512, 512, 0xa5),
];

#[test]
fn a_hand_copy_made_a_base_and_used_since_becomes_a_leaf_that_reads_as_it_did() {
    let lib = Lib::new();
    let vm = vm("Web 3");
    let copy = hand_copy(&lib, &vm, &lib.root, "Web 3");
    use_disk(&copy, "Virtual Disk.vmdk", WRITES);
    use_disk(&copy, "Second.vmdk", &[(MIB, 3 * GRAIN, 0xb1), (0, GRAIN, 0)]);
    compact(&copy.join("Second.vmdk"));
    let saved = save(&lib, &copy, &["Virtual Disk.vmdk", "Second.vmdk"]);
    let base = lib.base_dir(BASE);
    let base_before = vm_files(&base);
    let vmx_before = fs::read_to_string(copy.join("Web 3.vmx")).unwrap();
    let nvram = fs::read(copy.join("Web 3.nvram")).unwrap();

    let out = lib.ok(&["adopt", copy.to_str().unwrap(), "--base", BASE]);
    assert!(out.contains("adopted \"Web 3\" as a leaf of \"Ubuntu\"") && out.contains("of its own"), "{out}");

    for (file, saved) in ["Virtual Disk.vmdk", "Second.vmdk"].iter().zip(&saved) {
        let top = copy.join(delta(file));
        qemu_check(&top);
        same_as(saved, &top);
        // The delta over the parent copy, whose extents are the base's files.
        let chain = qemu_chain(&top);
        assert_eq!(chain.len(), 2, "{file}: {chain:?}");
        assert_eq!(chain[1]["filename"], copy.join(file).to_str().unwrap(), "{file}");
    }
    // The leaf's own data is the grains written, no more: grains 3, 19 and 20, and 0 (zeros over
    // the base's data); the first extent's last grain and the second's first; the disk's short
    // last grain (112 sectors).
    let own = own_data(&copy.join(delta("Virtual Disk.vmdk")));
    assert_eq!(own, 6 * GRAIN + 112 * 512, "own data of the split disk");
    // The grains written, and the first, which the compacted disk no longer stores but the
    // base does (written as zeros).
    assert_eq!(own_data(&copy.join(delta("Second.vmdk"))), 4 * GRAIN);
    assert_eq!(vm_files(&base), base_before, "the base's files changed");
    // The same VM: its .vmx keeps its name and identity, its disks on the deltas; its own nvram.
    let vmx = fs::read_to_string(copy.join("Web 3.vmx")).unwrap();
    for key in ["uuid.bios", "uuid.location", "ethernet0.generatedAddress", "displayName", "vm.genid"] {
        let line = |t: &str| t.lines().find(|l| l.starts_with(&format!("{key} "))).map(str::to_string);
        assert_eq!(line(&vmx), line(&vmx_before), "{key}");
    }
    assert!(vmx.contains("scsi0:0.fileName = \"Virtual Disk-000001.vmdk\""), "{vmx}");
    assert_eq!(fs::read(copy.join("Web 3.nvram")).unwrap(), nvram);
    let vmsd = fs::read_to_string(copy.join("Web 3.vmsd")).unwrap();
    assert!(vmsd.contains("snapshot0.displayName = \"Base\""), "{vmsd}");
    let rec = record(&copy, "leaf");
    assert_eq!((rec["vmx"].as_str(), rec["adopted"].as_bool()), (Some("Web 3.vmx"), Some(true)), "{rec}");
    assert_eq!(leaf_list(&base).len(), 1);
    assert!(leftovers(&lib.root).is_empty(), "{:?}", leftovers(&lib.root));
    let status = lib.ok(&["status"]);
    assert!(status.contains("Web 3"), "{status}");
    lib.ok(&["verify"]);
}

// ---------------------------------------------------------------------------------------------
// Reset

/// A base of `vm("Ubuntu")` and a leaf "Leaf" of it, written to in both disks and its nvram.
fn used_leaf(lib: &Lib) -> PathBuf {
    let vm = vm(BASE);
    lib.base_from(&vm);
    lib.ok(&["new-leaf", BASE, "Leaf", "--snapshot", "native"]);
    let leaf = lib.leaf_dir("Leaf");
    use_disk(&leaf, &delta("Virtual Disk.vmdk"), WRITES);
    use_disk(&leaf, &delta("Second.vmdk"), &[(MIB, 3 * GRAIN, 0xb1)]);
    fs::write(leaf.join("Leaf.nvram"), b"the leaf's own EFI variables").unwrap();
    leaf
}

/// `qemu-img compare` of the chain at `top` with the base's disk: every byte equal.
fn reads_as_base(lib: &Lib, top: &Path, file: &str) {
    let base = lib.base_dir(BASE).join(file);
    let (top, base) = (top.to_str().unwrap(), base.to_str().unwrap());
    let o = run_tool("qemu-img", &["compare", "-U", "-f", "vmdk", "-F", "vmdk", top, base]);
    assert!(o.status.success(), "{top} does not read as the base: {}", text(&o));
}

#[test]
fn reset_puts_a_leaf_back_to_its_snapshot_base_and_its_old_disks_in_the_trash() {
    let lib = Lib::new();
    let leaf = used_leaf(&lib);
    let saved = save(&lib, &leaf, &[&delta("Virtual Disk.vmdk"), &delta("Second.vmdk")]);
    let (vmx, vmsd) = (fs::read(leaf.join("Leaf.vmx")).unwrap(), fs::read(leaf.join("Leaf.vmsd")).unwrap());
    let out = lib.ok(&["reset", "Leaf", "--yes"]);
    assert!(out.contains("leaf \"Leaf\" reset to its snapshot Base") && out.contains("Trash"), "{out}");
    for file in ["Virtual Disk.vmdk", "Second.vmdk"] {
        let top = leaf.join(delta(file));
        qemu_check(&top);
        reads_as_base(&lib, &top, file);
        assert_eq!(own_data(&top), 0, "{file}: the new delta holds data");
    }
    let base_nvram = fs::read(lib.base_dir(BASE).join(format!("{BASE}.nvram"))).unwrap();
    assert_eq!(fs::read(leaf.join("Leaf.nvram")).unwrap(), base_nvram, "the nvram is not the base's");
    assert_eq!((fs::read(leaf.join("Leaf.vmx")).unwrap(), fs::read(leaf.join("Leaf.vmsd")).unwrap()), (vmx, vmsd));
    assert!(leftovers(&leaf).is_empty(), "{:?}", leftovers(&leaf));
    lib.ok(&["verify"]);
    // Undone as a person would: the Trash's item put back (trash-restore), its files over the new.
    let listed = trash_list(&lib.home());
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].starts_with(&leaf), "{listed:?}");
    trash_restore(&lib.home(), &listed[0]);
    for p in walk(&listed[0]) {
        fs::rename(&p, leaf.join(p.strip_prefix(&listed[0]).unwrap())).unwrap();
    }
    fs::remove_dir(&listed[0]).unwrap();
    for (file, saved) in ["Virtual Disk.vmdk", "Second.vmdk"].iter().zip(&saved) {
        same_as(saved, &leaf.join(delta(file)));
    }
    assert_eq!(fs::read(leaf.join("Leaf.nvram")).unwrap(), b"the leaf's own EFI variables");
}

#[test]
fn reset_refuses_and_leaves_the_leaf_as_it_is() {
    let lib = Lib::new();
    let leaf = used_leaf(&lib);
    let refused = |what: &str, args: &[&str], says: &[&str]| {
        let before = fingerprint_tree(&leaf);
        let o = lib.run(args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: {t}");
        for s in says {
            assert!(t.contains(s), "{what}: {s:?} not in {t}");
        }
        assert_eq!(fingerprint_tree(&leaf), before, "{what}: the leaf changed");
        assert!(trash_list(&lib.home()).is_empty(), "{what}: something went to the Trash");
    };
    // No terminal to ask on: --yes is needed.
    refused("not confirmed", &["reset", "Leaf"], &["nobody confirmed it", "--yes"]);
    fs::create_dir(leaf.join("Leaf.vmx.lck")).unwrap();
    refused("running", &["reset", "Leaf", "--yes"], &["running"]);
    fs::remove_dir(leaf.join("Leaf.vmx.lck")).unwrap();
    fs::write(leaf.join("Leaf.vmss"), b"suspended").unwrap();
    refused("suspended", &["reset", "Leaf", "--yes"], &["suspended"]);
    fs::remove_file(leaf.join("Leaf.vmss")).unwrap();
    // A snapshot taken in VMware: the disk on a newer delta over the leaf's.
    let vmx = fs::read_to_string(leaf.join("Leaf.vmx")).unwrap();
    fs::write(leaf.join("Leaf.vmx"), vmx.replace("Second-000001.vmdk", "Second-000002.vmdk")).unwrap();
    refused("own snapshots", &["reset", "Leaf", "--yes"], &["snapshots of its own", "promote"]);
    fs::write(leaf.join("Leaf.vmx"), &vmx).unwrap();
    let base = lib.base_dir(BASE);
    let away = lib.tmp.path().join("away");
    fs::rename(&base, &away).unwrap();
    refused("base missing", &["reset", "Leaf", "--yes"], &["base \"Ubuntu\" is not in the library"]);
    fs::rename(&away, &base).unwrap();
    lib.ok(&["reset", "Leaf", "--yes"]);
}

/// What a refused adoption must leave: the VM and the library as they were (the library's own
/// locks and the log aside), and no working folder anywhere.
fn refused(lib: &Lib, vm: &Path, args: &[&str], says: &[&str]) {
    let tree = |p: &Path| {
        let mut t = fingerprint_tree(p);
        t.retain(|l| !l.contains("/.leafd/locks"));
        t
    };
    let (vm_before, lib_before) = (tree(vm), tree(&lib.root));
    let mut all = vec!["adopt", vm.to_str().unwrap(), "--base", BASE];
    all.extend(args);
    let o = lib.run(&all);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {t}");
    for s in says {
        assert!(t.contains(s), "{s:?} is not in: {t}");
    }
    assert_eq!(tree(vm), vm_before, "{says:?}: the VM changed");
    assert_eq!(tree(&lib.root), lib_before, "{says:?}: the library changed");
    assert!(leftovers(vm.parent().unwrap()).is_empty(), "{says:?}: {:?}", leftovers(vm.parent().unwrap()));
}

#[test]
fn what_adopt_refuses_it_leaves_as_it_was() {
    let lib = Lib::new();
    let copy = hand_copy(&lib, &vm("Web"), &lib.root, "Web");
    use_disk(&copy, "Virtual Disk.vmdk", WRITES);
    fs::create_dir(copy.join("Web.vmx.lck")).unwrap();
    refused(&lib, &copy, &[], &["running"]);
    fs::remove_dir(copy.join("Web.vmx.lck")).unwrap();
    fs::write(copy.join("Web.vmss"), b"memory").unwrap();
    refused(&lib, &copy, &[], &["suspended"]);
    fs::remove_file(copy.join("Web.vmss")).unwrap();
    fs::write(copy.join("Web.vmsd"), ".encoding = \"UTF-8\"\nsnapshot.numSnapshots = \"1\"\n").unwrap();
    refused(&lib, &copy, &[], &["snapshots of its own", "full clone", "Delete"]);
    fs::remove_file(copy.join("Web.vmsd")).unwrap();
    // A snapshot's disk: the disk on a delta over it (as VMware leaves one).
    let vmx = fs::read_to_string(copy.join("Web.vmx")).unwrap();
    qemu_snapshot("Second.vmdk", &copy.join("Second-000001.vmdk"));
    fs::write(copy.join("Web.vmx"), vmx.replace("\"Second.vmdk\"", "\"Second-000001.vmdk\"")).unwrap();
    refused(&lib, &copy, &[], &["is a snapshot's", "snapshots of its own"]);
    fs::write(copy.join("Web.vmx"), &vmx).unwrap();
    fs::remove_file(copy.join("Second-000001.vmdk")).unwrap();
    // leafd's records in it: a copy of a leaf (or of a base).
    fs::create_dir(copy.join(".leafd")).unwrap();
    refused(&lib, &copy, &[], &["leafd's records", "promote"]);
    fs::remove_dir(copy.join(".leafd")).unwrap();
    // Another base, whose disks have other capacities.
    let other = SampleVm::single("Other", DiskType::MonolithicSparse, 2 * MIB);
    lib.base_from(&other);
    let o = lib.run(&["adopt", copy.to_str().unwrap(), "--base", "Other"]);
    assert!(o.status.code() == Some(1) && text(&o).contains("none of the VM's disks"), "{}", text(&o));
    // Another volume than the base's.
    let volume = OtherVolume::new();
    let away = volume.path().join("Web.vmwarevm");
    cp(&copy, &away);
    refused(&lib, &away, &[], &["another volume", "move the VM"]);
    lib.ok(&["adopt", copy.to_str().unwrap(), "--base", BASE]);
}

/// A VM of the base's capacities but other data shares nothing with it: refused with what it
/// would free, unless forced; forced, the leaf holds all of it and reads as the VM did.
#[test]
fn a_vm_sharing_little_with_the_base_is_refused_unless_forced() {
    let lib = Lib::new();
    lib.base_from(&vm(BASE));
    let mut stranger = vm("Stranger");
    for d in &mut stranger.disks {
        for p in &mut d.patterns {
            p.byte ^= 0xff;
        }
    }
    let bundle = stranger.build(&lib.root).unwrap();
    refused(&lib, &bundle, &[], &["shares only 0% of its", "adopting would free only 0 B", "--force"]);
    let saved = save(&lib, &bundle, &["Virtual Disk.vmdk", "Second.vmdk"]);
    let out = lib.ok(&["adopt", bundle.to_str().unwrap(), "--base", BASE, "--force"]);
    // Nothing was freed because nothing was shared, not because of a clone copy.
    assert!(!out.contains("reflink"), "{out}");
    for (file, saved) in ["Virtual Disk.vmdk", "Second.vmdk"].iter().zip(&saved) {
        same_as(saved, &bundle.join(delta(file)));
    }
}

#[test]
fn too_little_free_space_is_refused() {
    let volume = OtherVolume::new();
    let lib = Lib::new();
    // The library on a volume of its own, nearly full.
    let root = volume.path().join("library");
    fs::create_dir_all(root.join("Make Base")).unwrap();
    let small = Lib { root: root.canonicalize().unwrap(), tmp: tempfile::tempdir().unwrap() };
    let copy = hand_copy(&small, &vm("Web"), &small.root, "Web");
    let free = fs2_free(&small.root);
    let filler = small.root.join("filler");
    let o = run_tool("fallocate", &["-l", &(free - 32 * MIB).to_string(), filler.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    refused(&small, &copy, &[], &["too little free space", "free some space"]);
    fs::remove_file(&filler).unwrap();
    small.ok(&["adopt", copy.to_str().unwrap(), "--base", BASE]);
    drop(lib);
}

/// Bytes free on the volume holding `dir`.
fn fs2_free(dir: &Path) -> u64 {
    let o = run_tool("df", &["--output=avail", "-B1", dir.to_str().unwrap()]);
    String::from_utf8_lossy(&o.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}

/// A dry run on a terminal, slowed: its bar shows what it compares, and still nothing changes
/// (no progress record either).
#[test]
fn a_dry_run_shows_its_progress_on_a_terminal_and_changes_nothing() {
    let lib = Lib::new();
    let copy = hand_copy(&lib, &vm("Web"), &lib.root, "Web");
    use_disk(&copy, "Virtual Disk.vmdk", WRITES);
    let before = fingerprint_tree(&lib.root);
    let mut leafd = lib.command(&["adopt", copy.to_str().unwrap(), "--base", BASE, "--dry-run"]);
    leafd.env("LEAFD_FAULT", "slow:4");
    let shown = on_a_terminal(&leafd, "");
    assert!(shown.contains("dry run: nothing was changed"), "{shown}");
    // The terminal is narrow: the bar's message is cut to fit.
    assert!(shown.contains("comparing Web with ba") && shown.contains("of 12.37 MiB"), "no bar: {shown}");
    assert_eq!(fingerprint_tree(&lib.root), before, "a dry run changed the library");
}

/// `--dry-run` says per disk what would be shared, freed and kept, and changes nothing (not even
/// a lock file).
#[test]
fn a_dry_run_changes_nothing() {
    let lib = Lib::new();
    let copy = hand_copy(&lib, &vm("Web"), &lib.root, "Web");
    use_disk(&copy, "Virtual Disk.vmdk", WRITES);
    let before = fingerprint_tree(&lib.root);
    let out = lib.ok(&["adopt", copy.to_str().unwrap(), "--base", BASE, "--dry-run"]);
    assert_eq!(fingerprint_tree(&lib.root), before, "a dry run changed the library");
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    let line = out.lines().find(|l| l.contains("scsi0:0 Virtual Disk.vmdk")).unwrap();
    assert!(line.contains("the same as the base's (freed)") && line.contains("its own"), "{out}");
    assert!(out.lines().any(|l| l.contains("sata0:0 Second.vmdk")), "{out}");
    assert!(out.contains("would keep about") && out.contains("free about"), "{out}");
}

/// Bytes of a size as leafd prints it (`440.0 KiB`, `0 B`), at the start of `s`.
fn bytes_at(s: &str) -> f64 {
    let mut w = s.split_whitespace();
    let n: f64 = w.next().unwrap().parse().unwrap();
    let word = w.next().unwrap();
    let unit = ["B", "KiB", "MiB", "GiB", "TiB"].iter().position(|u| word.starts_with(u)).unwrap();
    n * 1024f64.powi(unit as i32)
}

/// The dry run's estimate of what the leaf keeps is at least what its disks keep, as it says
/// per disk (a VM whose files take less room than its disks' data said "0 B" once).
#[test]
fn a_dry_runs_estimate_keeps_at_least_what_each_disk_keeps() {
    let lib = Lib::new();
    let copy = hand_copy(&lib, &vm("Web"), &lib.root, "Web");
    use_disk(&copy, "Virtual Disk.vmdk", WRITES);
    let out = lib.ok(&["adopt", copy.to_str().unwrap(), "--base", BASE, "--dry-run"]);
    let per_disk: f64 = out.lines().filter_map(|l| l.split("(freed), ").nth(1)).map(bytes_at).sum();
    let kept = bytes_at(out.split("would keep about ").nth(1).unwrap());
    assert!(per_disk > 0.0 && kept >= per_disk, "keeps {kept} of {per_disk}: {out}");
}

/// `promote` undoes an adoption: the VM stands alone again, reads as it did, and keeps its own
/// `.vmx` (whose name is not the leaf's), and the base no longer lists it.
#[test]
fn promote_undoes_an_adoption() {
    let lib = Lib::new();
    let copy = hand_copy(&lib, &vm("Web"), &lib.root, "Web 3");
    use_disk(&copy, "Virtual Disk.vmdk", WRITES);
    let saved = save(&lib, &copy, &["Virtual Disk.vmdk", "Second.vmdk"]);
    lib.ok(&["adopt", copy.to_str().unwrap(), "--base", BASE]);
    lib.ok(&["promote", copy.to_str().unwrap()]);
    for (file, saved) in ["Virtual Disk.vmdk", "Second.vmdk"].iter().zip(&saved) {
        let disk = copy.join(file);
        assert_eq!(qemu_chain(&disk).len(), 1, "{file} still has a parent");
        same_as(saved, &disk);
    }
    let vmx = fs::read_to_string(copy.join("Web.vmx")).unwrap();
    assert!(vmx.contains("scsi0:0.fileName = \"Virtual Disk.vmdk\""), "{vmx}");
    assert!(!copy.join(".leafd").exists() && !copy.join("Web 3.vmx").exists());
    assert!(leaf_list(&lib.base_dir(BASE)).is_empty());
    lib.ok(&["verify"]);
}

/// Attaches `file` to the VM as disk `node`.
fn attach(vm: &Path, vmx: &str, node: &str, file: &str) {
    let mut text = fs::read_to_string(vm.join(vmx)).unwrap();
    text.push_str(&format!("{node}.fileName = \"{file}\"\n{node}.present = \"TRUE\"\n"));
    fs::write(vm.join(vmx), text).unwrap();
}

/// A disk that shares a file with a matched disk, under another name (a link to it, or a
/// descriptor of its own naming one of its extents), would lose that file with the matched
/// disk's originals, or read as the base through the parent copy taking its name: refused,
/// untouched, however the file is spelled.
#[test]
fn a_disk_sharing_a_file_with_a_matched_disk_is_refused() {
    let lib = Lib::new();
    let copy = hand_copy(&lib, &vm("Web"), &lib.root, "Web");
    use_disk(&copy, "Virtual Disk.vmdk", WRITES);
    let vmx = fs::read_to_string(copy.join("Web.vmx")).unwrap();
    // The same disk attached again through a link: no base disk of its capacity is left for it.
    std::os::unix::fs::symlink("Second.vmdk", copy.join("Alias.vmdk")).unwrap();
    attach(&copy, "Web.vmx", "sata0:2", "Alias.vmdk");
    refused(&lib, &copy, &[], &["sata0:2", "sata0:0", "Second.vmdk", "share"]);
    fs::write(copy.join("Web.vmx"), &vmx).unwrap();
    fs::remove_file(copy.join("Alias.vmdk")).unwrap();
    // A descriptor of its own over the split disk's first extent (4 MiB, as Second.vmdk).
    let part = "# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\n\
                createType=\"twoGbMaxExtentSparse\"\n\nRW 8192 SPARSE \"Virtual Disk-s001.vmdk\"\n\n\
                ddb.adapterType = \"lsilogic\"\n";
    fs::write(copy.join("Part.vmdk"), part).unwrap();
    attach(&copy, "Web.vmx", "sata0:2", "Part.vmdk");
    refused(&lib, &copy, &[], &["sata0:2", "scsi0:0", "Virtual Disk-s001.vmdk", "share"]);
    fs::write(copy.join("Web.vmx"), &vmx).unwrap();
    fs::remove_file(copy.join("Part.vmdk")).unwrap();
    // One disk naming one file twice (two extents of a flat file) shares nothing with another.
    fs::write(copy.join("Flat-flat.vmdk"), vec![0x5a; 2 * MIB as usize]).unwrap();
    let flat = "# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n\
                RW 2048 FLAT \"Flat-flat.vmdk\" 0\nRW 2048 FLAT \"Flat-flat.vmdk\" 2048\n\n\
                ddb.adapterType = \"lsilogic\"\n";
    fs::write(copy.join("Flat.vmdk"), flat).unwrap();
    attach(&copy, "Web.vmx", "sata0:2", "Flat.vmdk");
    let saved = save(&lib, &copy, &["Flat.vmdk"]);
    lib.ok(&["adopt", copy.to_str().unwrap(), "--base", BASE]);
    same_as(&saved[0], &copy.join("Flat.vmdk"));
}

/// A leaf's name is what `reset`, `promote` and `verify` take: an adoption in place (wherever
/// the VM is) under the name of a leaf the library has already is refused, or `leafd reset
/// NAME` would reset one of the two, either.
#[test]
fn an_adoption_under_the_name_of_another_leaf_is_refused() {
    let lib = Lib::new();
    let vms = lib.root.join("vms");
    fs::create_dir(&vms).unwrap();
    let copy = hand_copy(&lib, &vm("Web"), &vms, "Web");
    use_disk(&copy, "Virtual Disk.vmdk", WRITES);
    lib.ok(&["new-leaf", BASE, "Web", "--snapshot", "native"]);
    refused(&lib, &copy, &[], &["a leaf named \"Web\"", "--name"]);
    refused(&lib, &copy, &["--name", "Web"], &["a leaf named \"Web\"", "--name"]);
    lib.ok(&["adopt", copy.to_str().unwrap(), "--base", BASE, "--name", "Web 3"]);
    let status = lib.ok(&["status"]);
    assert!(status.contains("leaf \"Web 3\"") && status.contains("leaf \"Web\""), "{status}");
    // And the other way: no adoption under the name of the leaf adopted in place, either.
    let other = vm("Web 3").build(&vms).unwrap();
    let o = lib.run(&["adopt", other.to_str().unwrap(), "--base", BASE]);
    assert!(o.status.code() == Some(1) && text(&o).contains("a leaf named \"Web 3\""), "{}", text(&o));
}

/// Mode bits of a path, as `stat` gives them.
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A VM its owner made private (a folder of 0700, files of 0600) stays private when adopted, and
/// when reset: the files made anew take the permissions of those they stand for; the bundle and
/// its `.vmx` keep their extended attributes.
#[test]
fn a_private_vm_stays_private_when_adopted_and_reset() {
    use std::os::unix::fs::PermissionsExt;
    let lib = Lib::new();
    let copy = hand_copy(&lib, &vm("Web"), &lib.root, "Web");
    use_disk(&copy, "Virtual Disk.vmdk", WRITES);
    for p in walk(&copy) {
        let m = if p.is_dir() { 0o700 } else { 0o600 };
        fs::set_permissions(&p, fs::Permissions::from_mode(m)).unwrap();
    }
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o700)).unwrap();
    // A note of the user's on the bundle and on the .vmx (Finder keeps comments so).
    xattr::set(&copy, "user.note", b"the web server").unwrap();
    xattr::set(copy.join("Web.vmx"), "user.note", b"its settings").unwrap();
    lib.ok(&["adopt", copy.to_str().unwrap(), "--base", BASE]);
    assert_eq!(xattr::get(&copy, "user.note").unwrap().as_deref(), Some(&b"the web server"[..]));
    assert_eq!(xattr::get(copy.join("Web.vmx"), "user.note").unwrap().as_deref(), Some(&b"its settings"[..]));
    let private = |what: &str| {
        assert_eq!(mode(&copy), 0o700, "{what}: the bundle");
        for p in walk(&copy).into_iter().filter(|p| !p.starts_with(copy.join(".leafd"))) {
            let group_other = mode(&p) & 0o077;
            assert_eq!(group_other, 0, "{what}: {} is {:o}", p.display(), mode(&p));
        }
    };
    private("adopted");
    lib.ok(&["reset", "Web", "--yes"]);
    private("reset");
    lib.ok(&["verify"]);
}

/// A VM whose disks were moved to other nodes than the base's, of a capacity several base disks
/// have, cannot be matched: refused as such (not as a VM copied from another base), untouched;
/// and a disk left over so says in the dry run.
#[test]
fn disks_that_cannot_be_told_apart_are_refused_as_such() {
    let lib = Lib::new();
    let two = SampleVm {
        name: "Web".into(),
        disks: vec![
            SampleDisk::new("scsi0:0", "A.vmdk", DiskType::MonolithicSparse, 4 * MIB),
            SampleDisk::new("scsi0:1", "B.vmdk", DiskType::MonolithicSparse, 4 * MIB),
        ],
    };
    let copy = hand_copy(&lib, &two, &lib.root, "Web");
    let vmx = fs::read_to_string(copy.join("Web.vmx")).unwrap();
    fs::write(copy.join("Web.vmx"), vmx.replace("scsi0:0.", "nvme0:0.").replace("scsi0:1.", "nvme0:1.")).unwrap();
    refused(&lib, &copy, &[], &["nvme0:0, nvme0:1", "scsi0:0, scsi0:1", "cannot be told", "nodes"]);
    let o = lib.run(&["adopt", copy.to_str().unwrap(), "--base", BASE]);
    assert!(!text(&o).contains("not copied from it"), "{}", text(&o));
    // One on its node again: the other is the only one left for the second.
    fs::write(copy.join("Web.vmx"), vmx.replace("scsi0:1.", "nvme0:1.")).unwrap();
    let out = lib.ok(&["adopt", copy.to_str().unwrap(), "--base", BASE, "--dry-run"]);
    assert!(out.contains("nvme0:1 B.vmdk (4.0 MiB): compared with base disk scsi0:1 B.vmdk"), "{out}");
}

/// A VM in Make Base is on its way to become a base (the agent converts what is there), and one
/// in New Leaf anywhere but `New Leaf/<base>/` is a drop the agent answers with a note: adopting
/// it in place would race the agent, or leave a leaf the agent then makes a base of. Refused,
/// untouched.
#[test]
fn a_vm_in_the_drop_folders_is_adopted_only_from_its_bases_folder() {
    let lib = Lib::new();
    let copy = hand_copy(&lib, &vm("Web"), &lib.root, "Web");
    let in_make_base = lib.make_base_dir().join("Web.vmwarevm");
    fs::rename(&copy, &in_make_base).unwrap();
    refused(&lib, &in_make_base, &[], &["Make Base"]);
    let new_leaf = lib.root.join("New Leaf");
    for at in [new_leaf.join("Web.vmwarevm"), new_leaf.join(BASE).join("folder").join("Web.vmwarevm")] {
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        fs::rename(&in_make_base, &at).unwrap();
        refused(&lib, &at, &[], &["New Leaf", "New Leaf/Ubuntu/"]);
        fs::rename(&at, &in_make_base).unwrap();
    }
    // Dropped into the base's own folder: adopted, and moved beside the other VMs.
    let dropped = new_leaf.join(BASE).join("Web.vmwarevm");
    fs::rename(&in_make_base, &dropped).unwrap();
    lib.ok(&["adopt", dropped.to_str().unwrap(), "--base", BASE]);
    assert!(is_leaf_at(&lib.root.join("Web.vmwarevm")));
}

fn is_leaf_at(dir: &Path) -> bool {
    dir.join(".leafd/leaf.json").is_file()
}

/// A folder holding a VM's files loose and, beside them, the library itself is no VM bundle:
/// refused as such (not as a VM that changed while it was adopted, after hard-linking the whole
/// library into a staging folder), untouched.
#[test]
fn a_folder_holding_the_library_is_refused() {
    let lib = Lib::new();
    let copy = hand_copy(&lib, &vm("Web"), &lib.root, "Web");
    // A folder holding a VM's files loose beside the library itself.
    let above = lib.root.parent().unwrap();
    for f in [
        "Web.vmx",
        "Virtual Disk.vmdk",
        "Virtual Disk-s001.vmdk",
        "Virtual Disk-s002.vmdk",
        "Virtual Disk-s003.vmdk",
        "Second.vmdk",
    ] {
        fs::hard_link(copy.join(f), above.join(f)).unwrap();
    }
    // The library's locks and the log aside.
    let files = || {
        let mut c = checksums(above);
        c.retain(|p, _| !p.starts_with("state") && !p.starts_with("library/.leafd"));
        c
    };
    let before = files();
    let o = lib.run(&["adopt", above.to_str().unwrap(), "--base", BASE, "--name", "Web 9"]);
    assert!(o.status.code() == Some(1) && text(&o).contains("holds the library"), "{}", text(&o));
    assert_eq!(files(), before, "the folder changed");
    assert!(leftovers(above).is_empty(), "{:?}", leftovers(above));
}

/// An adoption killed after its commit point, and the base gone before recovery (moved or
/// deleted by hand): the leaf cannot read without it, so recovery must not remove the VM's
/// original disks, the only whole copy of its data, nor make up an empty base folder. Killed
/// before the original disks are touched, the VM is put back as it was; later, they are kept
/// until the base is back, and then the adoption finishes.
#[test]
fn recovery_keeps_the_vm_when_the_base_is_gone() {
    for step in ["set-aside", "swapped", "linked"] {
        let lib = Lib::new();
        let copy = hand_copy(&lib, &vm("Web"), &lib.root, "Web");
        use_disk(&copy, "Virtual Disk.vmdk", WRITES);
        let saved = save(&lib, &copy, &["Virtual Disk.vmdk", "Second.vmdk"]);
        let o = lib
            .command(&["adopt", copy.to_str().unwrap(), "--base", BASE])
            .env("LEAFD_FAULT", format!("adopt:{step}"))
            .output()
            .unwrap();
        assert!(killed(&o), "{step}: {}", text(&o));
        let (base, away) = (lib.base_dir(BASE), lib.tmp.path().join("away"));
        fs::rename(&base, &away).unwrap();
        let o = lib.run(&["recover"]);
        assert!(!base.exists(), "{step}: recovery made up a base folder: {:?}", walk(&base));
        if step == "linked" {
            // The leaf was listed, its original disks about to go: they are kept, and so is the
            // journal, until the base is back.
            assert_eq!(o.status.code(), Some(1), "{step}: {}", text(&o));
            assert!(text(&o).contains("base"), "{step}: {}", text(&o));
            let aside = leftovers(&lib.root);
            assert_eq!(aside.len(), 1, "{step}: {aside:?}");
            fs::rename(&away, &base).unwrap();
            lib.ok(&["recover"]);
            for (file, saved) in ["Virtual Disk.vmdk", "Second.vmdk"].iter().zip(&saved) {
                same_as(saved, &copy.join(delta(file)));
            }
        } else {
            assert!(o.status.success(), "{step}: {}", text(&o));
            assert!(!copy.join(".leafd").exists(), "{step}: the VM is still a leaf");
            for (file, saved) in ["Virtual Disk.vmdk", "Second.vmdk"].iter().zip(&saved) {
                same_as(saved, &copy.join(file));
            }
            fs::rename(&away, &base).unwrap();
            lib.ok(&["adopt", copy.to_str().unwrap(), "--base", BASE]);
        }
        assert!(leftovers(&lib.root).is_empty(), "{step}: {:?}", leftovers(&lib.root));
        lib.ok(&["verify"]);
    }
}

/// "Freed" is measured on the volume, but space another program frees meanwhile is not the
/// adoption's: it never says more was freed than the VM's files took.
#[test]
fn freed_is_never_more_than_the_vm_took() {
    let volume = OtherVolume::new();
    let root = volume.path().join("library");
    fs::create_dir_all(root.join("Make Base")).unwrap();
    let lib = Lib { root: root.canonicalize().unwrap(), tmp: tempfile::tempdir().unwrap() };
    let copy = hand_copy(&lib, &vm("Web"), &lib.root, "Web");
    use_disk(&copy, "Virtual Disk.vmdk", WRITES);
    let other = lib.root.join("other program's file");
    let o = run_tool("fallocate", &["-l", &(32 * MIB).to_string(), other.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // Slowed, and the other program's file removed while the disks are compared.
    let mut c = lib.command(&["adopt", copy.to_str().unwrap(), "--base", BASE]);
    c.env("LEAFD_FAULT", "slow:4");
    let child = c.stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    fs::remove_file(&other).unwrap();
    let o = child.wait_with_output().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(!out.contains("MiB freed"), "more was said to be freed than the VM took: {out}");
}

/// Something at the name of a file the reset puts in the leaf, which the reset does not take
/// away, stopped the reset after its commit point, and recovery with it (`already exists`): an
/// `.nvram` that is a dangling link goes to the Trash like a file; one that is a folder, or a
/// leftover at a new delta extent's name, is refused before anything is changed.
#[test]
fn reset_is_not_stopped_by_what_is_at_a_new_files_name() {
    let lib = Lib::new();
    let leaf = used_leaf(&lib);
    let nvram = leaf.join("Leaf.nvram");
    fs::remove_file(&nvram).unwrap();
    std::os::unix::fs::symlink("/nonexistent/Leaf.nvram", &nvram).unwrap();
    lib.ok(&["reset", "Leaf", "--yes"]);
    let base_nvram = fs::read(lib.base_dir(BASE).join(format!("{BASE}.nvram"))).unwrap();
    assert_eq!(fs::read(&nvram).unwrap(), base_nvram);
    assert!(leftovers(&leaf).is_empty(), "{:?}", leftovers(&leaf));
    fs::remove_file(&nvram).unwrap();
    fs::create_dir(&nvram).unwrap();
    let before = fingerprint_tree(&leaf);
    let o = lib.run(&["reset", "Leaf", "--yes"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("Leaf.nvram") && text(&o).contains("in the way"), "{}", text(&o));
    assert_eq!(fingerprint_tree(&leaf), before, "the leaf changed");
    assert!(lib.ok(&["recover", "--list"]).contains("no interrupted operations"));
    fs::remove_dir(&nvram).unwrap();
    // The split disk's delta made again by another program, in one file (as QEMU makes it),
    // and a leftover of the old split one beside it.
    let top = delta("Virtual Disk.vmdk");
    for p in walk(&leaf).into_iter().filter(|p| p.to_string_lossy().contains("Virtual Disk-000001")) {
        fs::remove_file(p).unwrap();
    }
    qemu_snapshot("Virtual Disk.vmdk", &leaf.join(&top));
    fs::write(leaf.join("Virtual Disk-000001-s002.vmdk"), b"left over").unwrap();
    let before = fingerprint_tree(&leaf);
    let o = lib.run(&["reset", "Leaf", "--yes"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("Virtual Disk-000001-s002.vmdk") && text(&o).contains("in the way"), "{}", text(&o));
    assert_eq!(fingerprint_tree(&leaf), before, "the leaf changed");
    fs::remove_file(leaf.join("Virtual Disk-000001-s002.vmdk")).unwrap();
    lib.ok(&["reset", "Leaf", "--yes"]);
    reads_as_base(&lib, &leaf.join(&top), "Virtual Disk.vmdk");
    assert!(lib.ok(&["recover", "--list"]).contains("no interrupted operations"));
}

/// `leafd reset` of `leaf` on a terminal, answering `answer`; what it showed.
fn reset_on_a_terminal(lib: &Lib, leaf: &str, answer: &str) -> String {
    on_a_terminal(&lib.command(&["reset", leaf]), &format!("{answer}\n"))
}

/// Runs `leafd` on a terminal (under `script`), typing `input`; what the terminal showed.
fn on_a_terminal(leafd: &std::process::Command, input: &str) -> String {
    use std::io::Write;
    let line = shell_line(leafd);
    let mut c = std::process::Command::new("script");
    c.args(["-qefc", &line, "/dev/null"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    with_env_of(&mut c, leafd);
    let mut child = c.spawn().expect("script (util-linux) runs a command on a terminal");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    text(&o)
}

/// On a terminal, reset asks; of an adopted leaf it says that its snapshot Base is the base's
/// state, not the state it was adopted in. "n" changes nothing; "y" resets.
#[test]
fn reset_asks_on_a_terminal_and_says_what_an_adopted_leafs_base_is() {
    let lib = Lib::new();
    let copy = hand_copy(&lib, &vm("Web"), &lib.root, "Web");
    use_disk(&copy, "Virtual Disk.vmdk", WRITES);
    lib.ok(&["adopt", copy.to_str().unwrap(), "--base", BASE]);
    let before = fingerprint_tree(&copy);
    let shown = reset_on_a_terminal(&lib, "Web", "n");
    assert!(shown.contains("Reset it? [y/N]"), "{shown}");
    assert!(shown.contains("It was adopted") && shown.contains("not the state the VM was in"), "{shown}");
    assert_eq!(fingerprint_tree(&copy), before, "answered no, the leaf changed");
    let shown = reset_on_a_terminal(&lib, "Web", "y");
    assert!(shown.contains("reset to its snapshot Base"), "{shown}");
    assert_eq!(own_data(&copy.join(delta("Virtual Disk.vmdk"))), 0, "answered yes, not reset: {shown}");
}

/// A VM with a disk added since it was copied (a capacity no base disk has): that disk stays
/// the VM's own, the very same file, through adopt, reset and promote; the others become
/// deltas over the base as usual.
#[test]
fn a_disk_added_since_the_copy_stays_the_vms_own_through_adopt_reset_and_promote() {
    let lib = Lib::new();
    let copy = hand_copy(&lib, &vm("Web"), &lib.root, "Web");
    use_disk(&copy, "Virtual Disk.vmdk", WRITES);
    let o = run_tool("qemu-img", &["create", "-q", "-f", "vmdk", copy.join("Added.vmdk").to_str().unwrap(), "3M"]);
    assert!(o.status.success(), "{}", text(&o));
    qemu_write(&copy.join("Added.vmdk"), 0, 65536, 0xad);
    attach(&copy, "Web.vmx", "scsi0:1", "Added.vmdk");
    let added = copy.join("Added.vmdk");
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let (sum, ino) = (checksums(&copy)[Path::new("Added.vmdk")].clone(), inode(&added));
    let saved = save(&lib, &copy, &["Virtual Disk.vmdk", "Added.vmdk"]);
    let out = lib.ok(&["adopt", copy.to_str().unwrap(), "--base", BASE, "--dry-run"]);
    assert!(
        out.contains("scsi0:1 Added.vmdk (3.0 MiB): no base disk of this capacity, it stays the VM's own"),
        "{out}"
    );
    lib.ok(&["adopt", copy.to_str().unwrap(), "--base", BASE]);
    let vmx = fs::read_to_string(copy.join("Web.vmx")).unwrap();
    assert!(vmx.contains("scsi0:1.fileName = \"Added.vmdk\""), "{vmx}");
    assert_eq!(record(&copy, "leaf")["disks"].as_array().unwrap().len(), 2, "only the matched disks are the leaf's");
    let unchanged = |at: &str| {
        assert_eq!((checksums(&copy)[Path::new("Added.vmdk")].clone(), inode(&added)), (sum.clone(), ino), "{at}");
        assert_eq!(qemu_chain(&added).len(), 1, "{at}: the added disk has a parent");
        same_as(&saved[1], &added);
    };
    unchanged("adopted");
    same_as(&saved[0], &copy.join(delta("Virtual Disk.vmdk")));
    lib.ok(&["reset", "Web", "--yes"]);
    unchanged("reset");
    reads_as_base(&lib, &copy.join(delta("Virtual Disk.vmdk")), "Virtual Disk.vmdk");
    lib.ok(&["promote", "Web"]);
    unchanged("promoted");
    lib.ok(&["verify"]);
}
