//! Make Base and New Leaf through the real binary, checked with QEMU and libvmdk.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use leafd::testing::{SampleDisk, SampleVm};
use leafd_formats::dict::Dict;
use leafd_formats::disk::{Disk, DiskType};
use leafd_formats::vmx;

const MIB: u64 = 1 << 20;

fn multi_disk_vm() -> SampleVm {
    SampleVm {
        name: "Three Disks".into(),
        disks: vec![
            SampleDisk::new("scsi0:0", "Virtual Disk.vmdk", DiskType::SplitSparse, 48 * MIB),
            SampleDisk::new("scsi0:1", "Virtual Disk-2.vmdk", DiskType::MonolithicSparse, 16 * MIB),
            SampleDisk::new("nvme0:0", "Data.vmdk", DiskType::MonolithicFlat, 8 * MIB),
        ],
    }
}

fn vmx_of(bundle: &Path, name: &str) -> Dict {
    Dict::parse(&std::fs::read(bundle.join(name)).unwrap()).unwrap()
}

/// Checks everything about a fresh base made from `vm` whose files had `before` checksums.
fn check_base(lib: &Lib, vm: &SampleVm, before: &std::collections::BTreeMap<PathBuf, String>) {
    let base = lib.base_dir(&vm.name);
    let vmx_name = format!("{}.vmx", vm.name);
    let mut expected = before.clone();
    let sum = expected.remove(Path::new(&vmx_name)).unwrap();
    expected.insert(PathBuf::from(format!("{vmx_name}.base")), sum);
    let mut now = checksums(&base);
    now.retain(|p, _| !is_records(&p.to_string_lossy()));
    assert_eq!(now, expected, "every file of the bundle is in the base, byte-identical, the .vmx renamed");
    assert!(!lib.make_base_dir().join(format!("{}.vmwarevm", vm.name)).exists(), "the drop folder is empty again");
    assert!(lib.root.join("New Leaf").join(&vm.name).is_dir());
    let rec = record(&base, "base");
    assert_eq!(rec["name"], vm.name.as_str());
    assert_eq!(rec["vmx"], format!("{vmx_name}.base"));
    assert_eq!(rec["disks"].as_array().unwrap().len(), vm.disks.len());
    for (d, r) in vm.disks.iter().zip(rec["disks"].as_array().unwrap()) {
        assert_eq!(r["node"], d.node.as_str());
        assert!(r["fingerprint"].as_str().unwrap().starts_with("blake3z:"));
        let disk = Disk::open(&env(), &base.join(&d.file)).unwrap();
        assert_eq!(r["cid"], format!("{:08x}", disk.descriptor.cid().unwrap()));
        for f in disk.files() {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode();
            assert_eq!(mode & 0o222, 0, "{} is writable", f.display());
        }
        let extents = r["extents"].as_array().unwrap();
        assert_eq!(extents.len(), disk.extent_files().len());
        for (e, f) in extents.iter().zip(disk.extent_files()) {
            assert_eq!(base.join(e["file"].as_str().unwrap()), f);
            assert_eq!(e["size"], std::fs::metadata(&f).unwrap().len());
            assert!(xattr::list(&f).unwrap().next().is_none(), "leafd records nothing on a base's disk files");
        }
    }
    assert_eq!(xattr::get(&base, "user.xdg.tags").unwrap().unwrap(), b"Base");
}

/// Checks a leaf: its files, its .vmx, its .vmsd, and every chain through QEMU and libvmdk.
fn check_leaf(lib: &Lib, vm: &SampleVm, leaf: &str) {
    let dir = lib.leaf_dir(leaf);
    let base = lib.base_dir(&vm.name);
    let v = vmx_of(&dir, &format!("{leaf}.vmx"));
    assert_eq!(v.get("displayName"), Some(leaf));
    assert_eq!(v.get("uuid.action"), Some("create"));
    for (k, _) in v.entries() {
        assert!(!vmx::is_identity_key(k), "leaf .vmx keeps identity key {k}");
    }
    assert_eq!(
        std::fs::read(dir.join(format!("{leaf}.nvram"))).unwrap(),
        std::fs::read(base.join(format!("{}.nvram", vm.name))).unwrap()
    );
    let vmsd = vmx_of(&dir, &format!("{leaf}.vmsd"));
    assert_eq!(vmsd.get("snapshot0.displayName"), Some("Base"));
    assert!(vmsd.get("snapshot0.description").unwrap().starts_with("Don't delete!"));
    let rec = record(&dir, "leaf");
    assert_eq!(rec["base_id"], record(&base, "base")["id"]);
    assert_eq!(xattr::get(&dir, "user.xdg.tags").unwrap().unwrap(), b"Linked Clone");
    for d in &vm.disks {
        let stem = d.file.strip_suffix(".vmdk").unwrap();
        let delta_name = format!("{stem}-000001.vmdk");
        assert_eq!(v.get(&format!("{}.fileName", d.node)), Some(delta_name.as_str()));
        let delta = dir.join(&delta_name);
        let copy = dir.join(&d.file);
        let copy_text = std::fs::read_to_string(&copy).unwrap();
        assert!(copy_text.contains(&format!("\"../Bases/{}/", vm.name)), "relative extent paths: {copy_text}");
        assert!(copy_text.contains("ddb.deletable = \"false\"") && !copy_text.contains("ddb.uuid"));
        let base_disk = Disk::open(&env(), &base.join(&d.file)).unwrap();
        assert!(copy_text.contains(&format!("CID={:08x}\n", base_disk.descriptor.cid().unwrap())));
        qemu_check(&delta);
        let chain = qemu_chain(&delta);
        assert_eq!(chain.len(), 2);
        assert_eq!(
            Path::new(chain[1]["filename"].as_str().unwrap()).canonicalize().unwrap(),
            copy.canonicalize().unwrap()
        );
        for p in &d.patterns {
            qemu_read_pattern(&delta, p.offset, p.len, p.byte).unwrap_or_else(|e| panic!("{leaf} {}: {e}", d.file));
        }
        let p = d.patterns[0];
        let delta_extents = Disk::open_alone(&env(), &delta).unwrap().extent_files();
        let copy_extents = Disk::open_alone(&env(), &copy).unwrap().extent_files();
        let (size, data) = libvmdk_chain(&delta, &delta_extents, &copy, &copy_extents, p.offset, p.len).unwrap();
        assert_eq!(size, d.capacity * 512);
        assert!(data.iter().all(|&b| b == p.byte));
    }
}

#[test]
fn bases_and_leaves_of_every_disk_type() {
    let vms = [
        SampleVm::single("Mono", DiskType::MonolithicSparse, 32 * MIB),
        SampleVm::single("Split", DiskType::SplitSparse, 32 * MIB),
        SampleVm::single("Flat", DiskType::MonolithicFlat, 32 * MIB),
        multi_disk_vm(),
    ];
    let lib = Lib::new();
    for vm in &vms {
        let bundle = vm.build(&lib.make_base_dir()).unwrap();
        let before = checksums(&bundle);
        let out = lib.ok(&["make-base", bundle.to_str().unwrap()]);
        let disks = vm.disks.len();
        assert!(
            out.starts_with(&format!("base \"{}\" made from Make Base/{}.vmwarevm: {disks} disk", vm.name, vm.name)),
            "{out}"
        );
        check_base(&lib, vm, &before);
        let base_sums = checksums(&lib.base_dir(&vm.name));
        let out = lib.ok(&["new-leaf", &vm.name, "Web Server"]);
        assert!(out.starts_with(&format!("leaf \"Web Server\" made from base \"{}\"", vm.name)), "{out}");
        // One leaf per base: rename it so the next base can use the name.
        check_leaf(&lib, vm, "Web Server");
        lib.ok(&["new-leaf", &vm.name, "DB Server"]);
        check_leaf(&lib, vm, "DB Server");
        // Writes into both leaves land in their own deltas only.
        for (leaf, byte) in [("Web Server", 0xc1u8), ("DB Server", 0xc2)] {
            for d in &vm.disks {
                let delta = lib.leaf_dir(leaf).join(format!("{}-000001.vmdk", d.file.strip_suffix(".vmdk").unwrap()));
                qemu_write(&delta, 4096, 8192, byte);
            }
        }
        for (leaf, byte) in [("Web Server", 0xc1u8), ("DB Server", 0xc2)] {
            for d in &vm.disks {
                let delta = lib.leaf_dir(leaf).join(format!("{}-000001.vmdk", d.file.strip_suffix(".vmdk").unwrap()));
                qemu_read_pattern(&delta, 4096, 8192, byte).unwrap();
                qemu_read_pattern(&delta, 0, 4096, 0x11).unwrap();
            }
        }
        let mut now = checksums(&lib.base_dir(&vm.name));
        now.retain(|p, _| !is_records(&p.to_string_lossy()));
        let mut was = base_sums.clone();
        was.retain(|p, _| !is_records(&p.to_string_lossy()));
        assert_eq!(now, was, "writing into leaves changed the base");
        let refs: Vec<_> = leaf_list(&lib.base_dir(&vm.name))
            .iter()
            .map(|p| {
                serde_json::from_slice::<serde_json::Value>(&std::fs::read(p).unwrap()).unwrap()["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(refs.len(), 2, "{refs:?}");
        for leaf in ["Web Server", "DB Server"] {
            std::fs::rename(lib.leaf_dir(leaf), lib.tmp.path().join(format!("{}-{leaf}", vm.name))).unwrap();
        }
    }
}

#[test]
fn status_counts_leaves_and_space() {
    let lib = Lib::new();
    let vm = SampleVm::single("Ubuntu", DiskType::SplitSparse, 64 * MIB);
    lib.base_from(&vm);
    for n in ["a", "b", "c"] {
        lib.ok(&["new-leaf", "Ubuntu", n]);
    }
    let s: serde_json::Value = serde_json::from_str(&lib.ok(&["status", "--json"])).unwrap();
    let b = &s["bases"][0];
    assert_eq!(b["name"], "Ubuntu");
    assert_eq!(b["leaves"].as_array().unwrap().len(), 3);
    let shared = b["shared_bytes"].as_u64().unwrap();
    let allocated = |files: &[std::path::PathBuf]| -> u64 {
        files.iter().map(|f| std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(f).unwrap()) * 512).sum()
    };
    // Each leaf's own use is what its bundle holds (what deleting it frees), counted here from
    // the file system, and the log says the same number.
    let mut own = 0;
    for l in b["leaves"].as_array().unwrap() {
        let name = l["name"].as_str().unwrap();
        let bytes = allocated(&walk(&lib.leaf_dir(name)));
        assert_eq!(l["own_bytes"].as_u64().unwrap(), bytes, "leaf {name}");
        own += bytes;
    }
    let base_files = Disk::open(&env(), &lib.base_dir("Ubuntu").join("Virtual Disk.vmdk")).unwrap().files();
    assert_eq!(shared, allocated(&base_files), "the base's disk files are what the leaves share");
    assert_eq!(b["used_bytes"].as_u64().unwrap(), shared + own);
    assert_eq!(b["full_copies_bytes"].as_u64().unwrap(), shared * 4 + own);
    assert_eq!(b["saved_bytes"].as_u64().unwrap(), shared * 3);
    let table = lib.ok(&["status"]);
    assert!(table.contains("base \"Ubuntu\"") && table.contains("3 leaves"), "{table}");
}

#[test]
fn many_processes_make_leaves_of_one_base_at_once() {
    let lib = Lib::new();
    let vm = SampleVm::single("Shared", DiskType::MonolithicSparse, 16 * MIB);
    lib.base_from(&vm);
    let names: Vec<String> = (0..10).map(|i| format!("leaf {i}")).collect();
    let children: Vec<_> = names
        .iter()
        .map(|n| lib.command(&["new-leaf", "Shared", n]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    // And two processes racing for the same name: exactly one wins, the other is refused.
    let racers: Vec<_> = (0..2)
        .map(|_| {
            lib.command(&["new-leaf", "Shared", "same"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    let racers: Vec<_> = racers.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let wins = racers.iter().filter(|o| o.status.success()).count();
    assert_eq!(wins, 1, "{:?}", racers.iter().map(text).collect::<Vec<_>>());
    let loser = racers.iter().find(|o| !o.status.success()).unwrap();
    assert!(text(loser).contains("already exists"), "{}", text(loser));
    let refs = leaf_list(&lib.base_dir("Shared")).len();
    assert_eq!(refs, 11);
    for n in names.iter().chain(std::iter::once(&"same".to_string())) {
        let delta = lib.leaf_dir(n).join("Virtual Disk-000001.vmdk");
        qemu_read_pattern(&delta, 0, 65536, 0x11).unwrap();
    }
    assert_eq!(std::fs::read_dir(lib.root.join(".leafd/journal")).unwrap().count(), 0);
    let stray: Vec<_> = std::fs::read_dir(&lib.root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".leafd-staging"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn make_base_across_volumes_copies_compares_and_removes_the_source() {
    let lib = Lib::new();
    let other = OtherVolume::new();
    let vm = multi_disk_vm();
    let bundle = vm.build(other.path()).unwrap();
    let before = checksums(&bundle);
    let out = lib.ok(&["make-base", bundle.to_str().unwrap()]);
    assert!(out.contains("(copied from another volume)"), "{out}");
    assert!(!bundle.exists(), "the source is removed once the base is in place");
    check_base(&lib, &vm, &before);
    // Holes stay holes: the 8 MiB flat disk holds a few grains of data; a dense copy would
    // allocate all 8 MiB.
    let flat = lib.base_dir(&vm.name).join("Data-flat.vmdk");
    let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&flat).unwrap()) * 512;
    assert!(allocated <= MIB, "{allocated} bytes allocated for a sparse flat extent");
    lib.ok(&["new-leaf", &vm.name, "Web Server"]);
    check_leaf(&lib, &vm, "Web Server");
}
