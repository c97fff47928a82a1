//! The format core checked against independent readers: QEMU (`qemu-img`, `qemu-io`) and libvmdk.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use leafd::testing::{Pattern, SampleDisk, SampleVm, standard_patterns};
use leafd_formats::clone::{PathStyle, create_delta, delta_name, parent_copy};
use leafd_formats::descriptor::Descriptor;
use leafd_formats::disk::{Disk, DiskType};
use leafd_formats::sparse::{Layout, SECTOR};

const MIB: u64 = 1 << 20;
const TYPES: [DiskType; 3] = [DiskType::MonolithicSparse, DiskType::SplitSparse, DiskType::MonolithicFlat];

/// A base disk to build chains on: its path and the patterns it holds.
struct Base {
    disk: PathBuf,
    patterns: Vec<Pattern>,
}

fn leafd_base(dir: &Path, t: DiskType) -> Base {
    let vm = SampleVm::single(&format!("{t:?}"), t, 64 * MIB);
    std::fs::create_dir_all(dir).unwrap();
    let bundle = vm.build(dir).unwrap();
    Base { disk: bundle.join("Virtual Disk.vmdk"), patterns: vm.disks[0].patterns.clone() }
}

fn qemu_base(dir: &Path, subformat: &str, size: u64) -> Base {
    std::fs::create_dir_all(dir).unwrap();
    let disk = dir.join(format!("qemu-{subformat}.vmdk"));
    let o = run_tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            &format!("subformat={subformat}"),
            disk.to_str().unwrap(),
            &size.to_string(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // QEMU splits at 2 GiB: with a larger disk, a pattern crosses that boundary.
    let patterns = standard_patterns(size, 2048 * MIB);
    for p in &patterns {
        let o = run_tool(
            "qemu-io",
            &["-f", "vmdk", "-c", &format!("write -P 0x{:02x} {} {}", p.byte, p.offset, p.len), disk.to_str().unwrap()],
        );
        assert!(o.status.success() && !text(&o).contains("failed"), "{}", text(&o));
    }
    Base { disk, patterns }
}

fn all_bases(dir: &Path) -> Vec<Base> {
    let mut v: Vec<Base> = TYPES.iter().map(|&t| leafd_base(dir, t)).collect();
    v.push(qemu_base(dir, "monolithicSparse", 64 * MIB));
    v.push(qemu_base(dir, "twoGbMaxExtentSparse", 5 * 1024 * MIB));
    v.push(qemu_base(dir, "monolithicFlat", 64 * MIB));
    v
}

/// Checks every pattern, and the bytes between patterns, with leafd's reader.
fn leafd_sees_patterns(disk: &Disk, patterns: &[Pattern]) {
    for p in patterns {
        let mut buf = vec![0u8; p.len as usize];
        disk.read_at(p.offset, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == p.byte), "{}: pattern {p:?}", disk.path().display());
        // Just before and after each pattern: zeros, unless another pattern is there.
        for at in [p.offset.checked_sub(512), Some(p.offset + p.len)].into_iter().flatten() {
            if at + 512 > disk.capacity() * SECTOR
                || patterns.iter().any(|q| q.offset < at + 512 && at < q.offset + q.len)
            {
                continue;
            }
            let mut b = [1u8; 512];
            disk.read_at(at, &mut b).unwrap();
            assert!(b.iter().all(|&x| x == 0), "{} not zero at {at}", disk.path().display());
        }
    }
}

fn qemu_sees_patterns(path: &Path, patterns: &[Pattern]) {
    for p in patterns {
        qemu_read_pattern(path, p.offset, p.len, p.byte).unwrap_or_else(|e| panic!("{}: {p:?}: {e}", path.display()));
    }
}

#[test]
fn leafd_written_bases_are_read_alike_by_qemu_and_leafd() {
    let tmp = tempfile::tempdir().unwrap();
    for t in TYPES {
        let base = leafd_base(tmp.path(), t);
        qemu_check(&base.disk);
        let info = &qemu_chain(&base.disk)[0];
        assert_eq!(info["virtual-size"], 64 * MIB, "{t:?}");
        assert_eq!(info["format"], "vmdk");
        qemu_sees_patterns(&base.disk, &base.patterns);
        let disk = Disk::open(&env(), &base.disk).unwrap();
        leafd_sees_patterns(&disk, &base.patterns);
        let mut ours = vec![0u8; (64 * MIB) as usize];
        disk.read_at(0, &mut ours).unwrap();
        assert!(ours == qemu_raw(&base.disk, tmp.path()), "{t:?}: leafd and qemu read different bytes");
    }
}

#[test]
fn split_sample_has_several_extents() {
    let tmp = tempfile::tempdir().unwrap();
    let base = leafd_base(tmp.path(), DiskType::SplitSparse);
    let disk = Disk::open(&env(), &base.disk).unwrap();
    assert_eq!(disk.extent_sectors().len(), 3);
    assert_eq!(disk.files().len(), 4);
}

#[test]
fn qemu_made_bases_are_read_by_leafd() {
    let tmp = tempfile::tempdir().unwrap();
    for (sub, size) in
        [("monolithicSparse", 64 * MIB), ("twoGbMaxExtentSparse", 5 * 1024 * MIB), ("monolithicFlat", 64 * MIB)]
    {
        let base = qemu_base(tmp.path(), sub, size);
        let disk = Disk::open(&env(), &base.disk).unwrap();
        assert_eq!(disk.descriptor.create_type(), sub);
        assert_eq!(disk.capacity() * SECTOR, size);
        leafd_sees_patterns(&disk, &base.patterns);
        if size <= 64 * MIB {
            let mut ours = vec![0u8; size as usize];
            disk.read_at(0, &mut ours).unwrap();
            assert!(ours == qemu_raw(&base.disk, tmp.path()), "{sub}: leafd and qemu read different bytes");
        }
    }
}

/// Builds `<leaf>/<name>` (parent copy) and its delta over `base`, as a leaf would have them.
fn make_chain(base: &Path, leaf: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(leaf).unwrap();
    let b = Disk::open(&env(), base).unwrap();
    let name = base.file_name().unwrap().to_str().unwrap();
    let copy = parent_copy(&b, leaf, PathStyle::Relative).unwrap();
    let copy_path = leaf.join(name);
    std::fs::write(&copy_path, copy.to_string()).unwrap();
    let delta = leaf.join(delta_name(name));
    create_delta(&env(), &delta, name, &copy, b.disk_type).unwrap();
    (copy_path, delta)
}

#[test]
fn deltas_over_every_base_form_chains_qemu_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, base) in all_bases(&tmp.path().join("bases")).iter().enumerate() {
        let base_dir = base.disk.parent().unwrap();
        let before = checksums(base_dir);
        let leaf = tmp.path().join(format!("leaf{i}"));
        let (copy, delta) = make_chain(&base.disk, &leaf);
        let name = base.disk.display();

        qemu_check(&delta);
        let chain = qemu_chain(&delta);
        assert_eq!(chain.len(), 2, "{name}: {chain:?}");
        assert!(chain[0]["backing-filename"].as_str().unwrap().ends_with(copy.file_name().unwrap().to_str().unwrap()));
        assert_eq!(chain[0]["virtual-size"], chain[1]["virtual-size"]);
        qemu_sees_patterns(&delta, &base.patterns);
        let ours = Disk::open(&env(), &delta).unwrap();
        leafd_sees_patterns(&ours, &base.patterns);

        // Writes into the delta (whole grains, partial grains, across an extent) land there alone.
        let cap = ours.capacity() * SECTOR;
        let writes = [
            (0u64, 4096u64, 0xa1u8),
            (65536 + 4096 + 100, 300, 0xa2),
            (cap / 2 + 65536, 65536, 0xa3),
            (cap - 512, 512, 0xa4),
        ];
        drop(ours);
        for (off, len, byte) in writes {
            qemu_write(&delta, off, len, byte);
        }
        assert_eq!(checksums(base_dir), before, "{name}: a write into the delta changed the base");
        qemu_check(&delta);
        let ours = Disk::open(&env(), &delta).unwrap();
        for (off, len, byte) in writes {
            qemu_read_pattern(&delta, off, len, byte).unwrap();
            let mut b = vec![0u8; len as usize];
            ours.read_at(off, &mut b).unwrap();
            assert!(b.iter().all(|&x| x == byte), "{name}: leafd misreads qemu's write at {off}");
        }
        // The rest of the first pattern's grain still shows the base.
        qemu_read_pattern(&delta, 4096, 65536 - 4096, 0x11).unwrap();
        if cap <= 64 * MIB {
            let mut all = vec![0u8; cap as usize];
            ours.read_at(0, &mut all).unwrap();
            assert!(all == qemu_raw(&delta, tmp.path()), "{name}: leafd and qemu read the chain differently");
        }
    }
}

#[test]
fn leafd_writes_into_a_delta_are_read_by_qemu() {
    let tmp = tempfile::tempdir().unwrap();
    for t in TYPES {
        let base = leafd_base(&tmp.path().join("b"), t);
        let before = checksums(base.disk.parent().unwrap());
        let (_, delta) = make_chain(&base.disk, &tmp.path().join(format!("{t:?}")));
        let d = Disk::open_writable(&env(), &delta).unwrap();
        // A partial grain over base data must keep the base's other bytes.
        d.write_at(100, &[0xee; 1000]).unwrap();
        d.write_at(64 * MIB - 70000, &[0xdd; 70000]).unwrap();
        d.sync().unwrap();
        drop(d);
        qemu_check(&delta);
        qemu_read_pattern(&delta, 100, 1000, 0xee).unwrap();
        qemu_read_pattern(&delta, 0, 100, 0x11).unwrap();
        qemu_read_pattern(&delta, 1100, 65536 - 1100, 0x11).unwrap();
        qemu_read_pattern(&delta, 64 * MIB - 70000, 70000, 0xdd).unwrap();
        assert_eq!(checksums(base.disk.parent().unwrap()), before);
    }
}

fn extents_of(path: &Path) -> Vec<PathBuf> {
    Disk::open_alone(&env(), path).unwrap().extent_files()
}

#[test]
fn libvmdk_accepts_the_chain_and_refuses_a_wrong_parent_cid() {
    let tmp = tempfile::tempdir().unwrap();
    for t in TYPES {
        let base = leafd_base(&tmp.path().join("b"), t);
        let leaf = tmp.path().join(format!("{t:?}"));
        let (copy, delta) = make_chain(&base.disk, &leaf);
        let p = base.patterns[0];
        let (size, data) =
            libvmdk_chain(&delta, &extents_of(&delta), &copy, &extents_of(&copy), p.offset, p.len).unwrap();
        assert_eq!(size, 64 * MIB);
        assert!(data.iter().all(|&b| b == p.byte), "{t:?}: libvmdk read the wrong bytes");

        // The base "changed" (its copy now carries another CID): every reader must refuse.
        let mut wrong = Descriptor::parse(&std::fs::read_to_string(&copy).unwrap()).unwrap();
        wrong.set_cid(wrong.cid().unwrap() ^ 1);
        std::fs::write(&copy, wrong.to_string()).unwrap();
        let refused = libvmdk_chain(&delta, &extents_of(&delta), &copy, &extents_of(&copy), 0, 512);
        let why = refused.err().unwrap_or_else(|| panic!("{t:?}: libvmdk accepted a wrong parent CID"));
        assert!(why.contains("mismatch in content identifier"), "{t:?}: {why}");
        assert!(
            qemu_read_pattern(&delta, p.offset, p.len, p.byte).is_err(),
            "{t:?}: qemu-io accepted a wrong parent CID"
        );
        let err = Disk::open(&env(), &delta).err().expect("leafd must refuse a wrong parent CID").to_string();
        assert!(err.contains("error 18") && err.contains(delta.to_str().unwrap()), "{err}");
    }
}

#[test]
fn an_empty_64_gib_delta_touches_only_its_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let mut vm = SampleVm::single("big", DiskType::MonolithicSparse, 64 << 30);
    vm.disks[0].patterns = vec![Pattern { offset: 0, len: 512, byte: 1 }];
    let bundle = vm.build(tmp.path()).unwrap();
    let (_, delta) = make_chain(&bundle.join("Virtual Disk.vmdk"), &tmp.path().join("leaf"));
    let meta = std::fs::metadata(&delta).unwrap();
    let layout = Layout::new(64 << 21, true);
    assert_eq!(meta.len(), layout.file_len());
    assert!(meta.blocks() * 512 < 256 * 1024, "{} bytes allocated", meta.blocks() * 512);
    qemu_check(&delta);
    qemu_read_pattern(&delta, 0, 512, 1).unwrap();
}

#[test]
fn split_delta_mirrors_the_parent_extents() {
    let tmp = tempfile::tempdir().unwrap();
    let base = leafd_base(tmp.path(), DiskType::SplitSparse);
    let (_, delta) = make_chain(&base.disk, &tmp.path().join("leaf"));
    let d = Disk::open(&env(), &delta).unwrap();
    assert_eq!(d.descriptor.create_type(), "twoGbMaxExtentSparse");
    assert_eq!(d.extent_sectors(), Disk::open(&env(), &base.disk).unwrap().extent_sectors());
    let names: Vec<String> = d.files().iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        names,
        [
            "Virtual Disk-000001.vmdk",
            "Virtual Disk-000001-s001.vmdk",
            "Virtual Disk-000001-s002.vmdk",
            "Virtual Disk-000001-s003.vmdk"
        ]
    );
}

#[test]
fn three_disks_on_two_buses_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let vm = SampleVm {
        name: "Multi".into(),
        disks: vec![
            SampleDisk::new("scsi0:0", "Virtual Disk.vmdk", DiskType::SplitSparse, 32 * MIB),
            SampleDisk::new("scsi0:1", "Virtual Disk-2.vmdk", DiskType::MonolithicSparse, 16 * MIB),
            SampleDisk::new("nvme0:0", "Data.vmdk", DiskType::MonolithicFlat, 8 * MIB),
        ],
    };
    let bundle = vm.build(tmp.path()).unwrap();
    let vmx = leafd_formats::dict::Dict::parse(&std::fs::read(bundle.join("Multi.vmx")).unwrap()).unwrap();
    let disks = leafd_formats::vmx::disks(&vmx);
    assert_eq!(disks.iter().map(|d| d.node.as_str()).collect::<Vec<_>>(), ["scsi0:0", "scsi0:1", "nvme0:0"]);
    for d in &vm.disks {
        qemu_sees_patterns(&bundle.join(&d.file), &d.patterns);
    }
}

#[test]
fn flattened_chains_hold_exactly_what_the_chain_shows() {
    let tmp = tempfile::tempdir().unwrap();
    // Odd capacity: the last grain is partial.
    let odd = 64 * MIB + 3 * 512;
    for (i, t) in TYPES.into_iter().enumerate() {
        let mut vm = SampleVm::single(&format!("{t:?}"), t, odd);
        vm.disks[0].split_sectors = 40000;
        let dir = tmp.path().join(format!("b{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let bundle = vm.build(&dir).unwrap();
        let (_, delta) = make_chain(&bundle.join("Virtual Disk.vmdk"), &tmp.path().join(format!("leaf{i}")));
        // Data in many grains of the delta, over and beside the base's, and in the last grain.
        for g in (0..1000u64).step_by(7) {
            qemu_write(&delta, g * 65536 + 512, 1024, (g % 200) as u8 + 1);
        }
        qemu_write(&delta, odd - 1024, 1024, 0xfe);
        let chain = Disk::open(&env(), &delta).unwrap();
        let split = (t == DiskType::SplitSparse).then(|| chain.extent_sectors());
        let flat = tmp.path().join(format!("flat{i}.vmdk"));
        let files = leafd_formats::flatten::flatten(&env(), &chain, &flat, split).unwrap();
        drop(chain);
        qemu_check(&flat);
        assert_eq!(qemu_chain(&flat).len(), 1, "the flattened disk stands alone");
        let o = run_tool(
            "qemu-img",
            &["compare", "-f", "vmdk", "-F", "vmdk", flat.to_str().unwrap(), delta.to_str().unwrap()],
        );
        assert!(o.status.success(), "{t:?}: {}", text(&o));
        qemu_read_pattern(&flat, odd - 1024, 1024, 0xfe).unwrap();
        // Only grains with data were written.
        let data: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
        assert!(data < 16 * MIB, "{t:?}: {data} bytes for a disk with ~9 MiB of data");
    }
}

#[test]
fn a_one_gib_vmx_is_refused_without_being_read() {
    let tmp = tempfile::tempdir().unwrap();
    let v = tmp.path().join("huge.vmx");
    let f = std::fs::File::create(&v).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b".encoding = \"UTF-8\"\n", 0).unwrap();
    f.set_len(1 << 30).unwrap();
    let err = leafd::testing::read_small(&v).unwrap_err().to_string();
    assert!(err.contains("huge.vmx") && err.contains("too large"), "{err}");
}
