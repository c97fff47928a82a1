//! Records that always fit (issue 11), and volumes that are not what they seem (issue 10.9).
//!
//! Every shape that once overflowed an extended attribute (64 disks, hundreds of extents, long
//! Unicode names, the 21-disk ESXi VM) goes through the whole life of a base, make-base, new-leaf,
//! verify, promote, remove-base, on each volume that once broke it: ext4 with 4 KiB blocks, ext4
//! with 1 KiB blocks (a loop mount), and a volume refusing extended attributes. Each leaf's disks
//! are read back by QEMU (`qemu-io -r`), never by leafd itself.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::*;
use leafd::testing::{Pattern, SampleDisk, SampleVm, write_disk};
use leafd_formats::dict::Dict;
use leafd_formats::disk::DiskType;
use leafd_formats::vmx;

const MIB: u64 = 1 << 20;

/// Where the library lives, and how leafd is run on it.
struct Volume {
    what: &'static str,
    /// Added to every command (`LEAFD_FAULT=xattr:unsupported`).
    env: Vec<(&'static str, &'static str)>,
    /// The loop-mounted file system, when the library is on one.
    _mount: Option<LoopMount>,
    lib: Lib,
}

/// A fresh ext4 file system with `block`-byte blocks in a 256 MiB image, loop-mounted; unmounted
/// when dropped (a failing test included). Needs root: without it the test fails, never skips.
struct LoopMount {
    dir: tempfile::TempDir,
}

impl LoopMount {
    fn ext4(block: u32) -> LoopMount {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("ext4.img");
        let img = img.to_str().unwrap();
        let mounted = LoopMount { dir: tempfile::tempdir().unwrap() };
        fs::create_dir(mounted.path()).unwrap();
        let block = block.to_string();
        let mnt = mounted.path();
        let steps = [
            ("truncate", vec!["-s", "256M", img]),
            ("mkfs.ext4", vec!["-q", "-b", &block, img]),
            ("mount", vec!["-o", "loop", img, mnt.to_str().unwrap()]),
        ];
        for (program, args) in steps {
            let o = run_tool(program, &args);
            assert!(
                o.status.success(),
                "{program} {args:?} failed (the tests run as root, with loop devices): {}",
                text(&o)
            );
        }
        // The image can go now: the loop device keeps it until the unmount.
        drop(dir);
        mounted
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path()).status();
    }
}

impl Volume {
    /// The library in a temporary folder on the machine's own volume (ext4, 4 KiB blocks here).
    fn plain() -> Volume {
        Volume { what: "ext4 (4 KiB blocks)", env: Vec::new(), _mount: None, lib: Lib::new() }
    }

    fn ext4_1k() -> Volume {
        let mount = LoopMount::ext4(1024);
        let o = run_tool("stat", &["-f", "-c", "%T %S", mount.path().to_str().unwrap()]);
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ext2/ext3 1024", "a 1 KiB-block ext4");
        let root = mount.path().join("library");
        fs::create_dir_all(root.join("Make Base")).unwrap();
        let lib = Lib { tmp: tempfile::tempdir().unwrap(), root };
        Volume { what: "ext4 (1 KiB blocks, loop mount)", env: Vec::new(), _mount: Some(mount), lib }
    }

    fn without_xattrs() -> Volume {
        Volume {
            what: "a volume without extended attributes",
            env: vec![("LEAFD_FAULT", "xattr:unsupported")],
            _mount: None,
            lib: Lib::new(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = self.lib.command(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.output().expect("run leafd")
    }

    /// Runs and expects success without a warning; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "{}: leafd {args:?} failed: {}", self.what, text(&o));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!stderr.contains("warning"), "{}: leafd {args:?} warned: {stderr}", self.what);
        String::from_utf8(o.stdout).unwrap()
    }
}

/// A VM to take through the flow: its bundle in `Make Base/`, the patterns each disk holds, and
/// the names to give its base and leaf.
struct Shape {
    what: &'static str,
    bundle: PathBuf,
    patterns: Vec<(String, Vec<Pattern>)>,
    base: String,
    leaf: String,
    /// File-backed extents each disk must have in the base record.
    extents: Vec<usize>,
}

fn extents_of(d: &SampleDisk) -> usize {
    match d.disk_type {
        DiskType::MonolithicSparse | DiskType::MonolithicFlat => 1,
        _ => d.capacity.div_ceil(d.split_sectors) as usize,
    }
}

fn shape(what: &'static str, dir: &Path, vm: SampleVm, base: &str, leaf: &str) -> Shape {
    let bundle = vm.build(dir).unwrap();
    Shape {
        what,
        bundle,
        patterns: vm.disks.iter().map(|d| (d.node.clone(), d.patterns.clone())).collect(),
        base: base.into(),
        leaf: leaf.into(),
        extents: vm.disks.iter().map(extents_of).collect(),
    }
}

/// 64 small disks of every type leafd serves, on four SCSI controllers (unit 7 is the
/// controller's) and NVMe: a base record of some 25 KiB.
fn sixty_four_disks(dir: &Path) -> Shape {
    let types = [DiskType::MonolithicSparse, DiskType::SplitSparse, DiskType::MonolithicFlat, DiskType::SplitFlat];
    let mut nodes: Vec<String> =
        (0..4).flat_map(|c| (0..16).filter(|u| *u != 7).map(move |u| format!("scsi{c}:{u}"))).collect();
    nodes.extend((0..4).map(|u| format!("nvme0:{u}")));
    assert_eq!(nodes.len(), 64);
    let disks = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| SampleDisk::new(node, &format!("Disk {i:02}.vmdk"), types[i % 4], MIB))
        .collect();
    shape("64 disks", dir, SampleVm { name: "Sixty-four".into(), disks }, "Sixty-four", "Sixty-four leaf")
}

/// One disk of 300 extents of 64 KiB (and a split flat one of 12).
fn hundreds_of_extents(dir: &Path) -> Shape {
    let disk = |node: &str, file: &str, t, count: u64| {
        let mut d = SampleDisk::new(node, file, t, count * 65536);
        d.split_sectors = 128;
        let cap = count * 65536;
        // Across the first boundary, across three extents in the middle, and the last bytes.
        d.patterns = vec![
            Pattern { offset: 0, len: 4096, byte: 0x11 },
            Pattern { offset: 65536 - 2048, len: 4096, byte: 0x55 },
            Pattern { offset: cap / 2 - 1024, len: 2 * 65536 + 2048, byte: 0x33 },
            Pattern { offset: cap - 4096, len: 4096, byte: 0x44 },
        ];
        d
    };
    let vm = SampleVm {
        name: "Extents".into(),
        disks: vec![
            disk("scsi0:0", "Many.vmdk", DiskType::SplitSparse, 300),
            disk("scsi0:1", "Flat.vmdk", DiskType::SplitFlat, 12),
        ],
    };
    shape("hundreds of extents", dir, vm, "Extents", "Extents leaf")
}

/// `s` repeated and cut at a character boundary to at most `max` bytes.
fn long(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().cycle() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out.trim_end().to_string()
}

/// Names as long as leafd allows, in several scripts: the base (and the bundle it came from),
/// the leaf (246 bytes, the most a `.vmwarevm` name holds), and the disks (with room for a
/// delta's `-000001-s001.vmdk`).
fn long_unicode_names(dir: &Path) -> Shape {
    let base = long("Ubuntu 24.04 LTS — Entwicklungsumgebung für Datenbanken · 日本語の開発環境 · Ελληνικά · 🐘 ", 200);
    let leaf = long("Prüfstand — テスト用の仮想マシン · Δοκιμή · 🦀 Web-Server für Übersetzungen ", 246);
    let disk = |node: &str, n: u32, t| {
        let name = long(&format!("Système {n} — データ ディスク — Ünïcødé — Festplatte mit langem Namen "), 200);
        SampleDisk::new(node, &format!("{name}.vmdk"), t, 4 * MIB)
    };
    let vm = SampleVm {
        name: long("Ünïcødé VM — 仮想マシン — Εικονική μηχανή ", 200),
        disks: vec![disk("scsi0:0", 1, DiskType::SplitSparse), disk("sata0:0", 2, DiskType::MonolithicSparse)],
    };
    assert!(leaf.len() > 240 && base.len() > 190, "{} {}", leaf.len(), base.len());
    shape("long Unicode names", dir, vm, &base, &leaf)
}

/// The 21-disk ESXi VM of the fixtures, as its folder is (the `.vmx`, `.vmsd`, `.vmxf` byte for
/// byte, scsi0:0-6, scsi0:8-15 and scsi1:0-5), with its vmfs disks (which leafd refuses) made
/// hosted: each descriptor replaced by a small monolithicFlat disk of the same name.
fn esxi_21_disks(dir: &Path) -> Shape {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vmware/esxi70-21-disks");
    let bundle = dir.join("Lab-DB01.vmwarevm");
    fs::create_dir(&bundle).unwrap();
    let vmx_text = fs::read(fixture.join("Lab-DB01.vmx")).unwrap();
    let mut patterns = Vec::new();
    for e in fs::read_dir(&fixture).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x != "vmdk") {
            fs::copy(&p, bundle.join(p.file_name().unwrap())).unwrap();
        }
    }
    let disks = vmx::disks(&Dict::parse(&vmx_text).unwrap());
    assert_eq!(disks.len(), 21);
    for (i, entry) in disks.iter().enumerate() {
        let original = fs::read_to_string(fixture.join(&entry.file_name)).unwrap();
        assert!(original.contains("createType=\"vmfs\""), "{}", entry.file_name);
        let t = if i % 2 == 0 { DiskType::MonolithicFlat } else { DiskType::SplitFlat };
        let d = SampleDisk::new(&entry.node, &entry.file_name, t, MIB);
        write_disk(&bundle.join(&entry.file_name), &d).unwrap();
        patterns.push((entry.node.clone(), d.patterns.clone()));
    }
    // The NVRAM the fixture lists (opaque bytes of its size).
    fs::write(bundle.join("Lab-DB01.nvram"), vec![0x5a; 270_840]).unwrap();
    let extents = disks.iter().enumerate().map(|(i, _)| if i % 2 == 0 { 1 } else { 3 }).collect();
    Shape { what: "ESXi 21 disks", bundle, patterns, base: "Lab-DB01".into(), leaf: "Lab-DB01 clone".into(), extents }
}

/// The disks a `.vmx` attaches: node and file, resolved against its folder.
fn attached(vmx_path: &Path) -> Vec<(String, PathBuf)> {
    let dict = Dict::parse(&fs::read(vmx_path).unwrap()).unwrap();
    let dir = vmx_path.parent().unwrap();
    vmx::disks(&dict).into_iter().map(|e| (e.node, dir.join(e.file_name))).collect()
}

/// QEMU reads every pattern of every disk through the VM's `.vmx`, in one `qemu-io -r` per disk.
fn qemu_reads(what: &str, vmx_path: &Path, patterns: &[(String, Vec<Pattern>)]) {
    let disks = attached(vmx_path);
    assert_eq!(disks.len(), patterns.len(), "{what}: disks of {}", vmx_path.display());
    for (node, expected) in patterns {
        let (_, file) = disks.iter().find(|(n, _)| n == node).unwrap_or_else(|| panic!("{what}: no disk {node}"));
        let mut args = vec!["-r".to_string(), "-f".into(), "vmdk".into()];
        for p in expected {
            args.extend(["-c".into(), format!("read -P 0x{:02x} {} {}", p.byte, p.offset, p.len)]);
        }
        // Bytes nothing wrote read as zeros (through every layer of the chain).
        let end = expected.iter().map(|p| p.offset + p.len).max().unwrap();
        args.extend(["-c".into(), format!("read -P 0 {} 512", end - 8192)]);
        args.push(file.to_str().unwrap().into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run_tool("qemu-io", &args);
        let t = text(&o);
        assert!(
            o.status.success() && !t.contains("failed") && t.matches("read ").count() == expected.len() + 1,
            "{what}: qemu-io {node} {}: {t}",
            file.display()
        );
    }
}

/// Every extended attribute leafd may have written in `dir`'s tree.
fn leafd_attributes(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for p in std::iter::once(dir.to_path_buf()).chain(walk(dir)) {
        for name in xattr::list(&p).into_iter().flatten() {
            out.push(format!("{}: {}", p.display(), name.to_string_lossy()));
        }
    }
    out
}

/// make-base, new-leaf, verify, promote, verify, remove-base: each exits 0 without a warning,
/// and QEMU reads the leaf, then the promoted VM, as the VM was.
fn through_the_flow(v: &Volume, s: &Shape) {
    let what = format!("{} on {}", s.what, v.what);
    let lib = &v.lib;
    let start = Instant::now();
    let made = v.ok(&["make-base", s.bundle.to_str().unwrap(), "--name", &s.base]);
    assert!(made.contains(&format!("base {:?} made", s.base)), "{what}: {made}");
    let base = lib.base_dir(&s.base);
    let record = record(&base, "base");
    let disks = record["disks"].as_array().unwrap();
    let counts: Vec<usize> = disks.iter().map(|d| d["extents"].as_array().unwrap().len()).collect();
    assert_eq!(counts, s.extents, "{what}: every extent recorded");
    assert!(disks.iter().all(|d| d["fingerprint"].is_string()), "{what}: fingerprints recorded");
    qemu_reads(&what, &base.join(record["vmx"].as_str().unwrap()), &s.patterns);

    v.ok(&["new-leaf", &s.base, &s.leaf]);
    let leaf = lib.leaf_dir(&s.leaf);
    let leaf_record = common::record(&leaf, "leaf");
    assert_eq!(leaf_record["disks"].as_array().unwrap().len(), s.patterns.len(), "{what}");
    let vmx_path = leaf.join(leaf_record["vmx"].as_str().unwrap());
    qemu_reads(&what, &vmx_path, &s.patterns);
    assert_eq!(leaf_list(&base).len(), 1, "{what}: the base lists its leaf");

    let verified = v.ok(&["verify"]);
    assert!(verified.contains("1 base, 1 leaf checked: all good"), "{what}: {verified}");
    assert!(!verified.contains("repaired"), "{what}: nothing to repair: {verified}");

    // Moved one folder down, its relative paths miss the base: relink rewrites its parent
    // copies, its .vmsd and both records.
    let moved_dir = lib.root.join("Moved");
    fs::create_dir_all(&moved_dir).unwrap();
    let moved = moved_dir.join(leaf.file_name().unwrap());
    fs::rename(&leaf, &moved).unwrap();
    v.ok(&["relink", moved.to_str().unwrap()]);
    let (leaf, vmx_path) = (moved.clone(), moved.join(vmx_path.file_name().unwrap()));
    assert_eq!(common::record(&leaf, "leaf")["path"], moved.to_str().unwrap(), "{what}");
    qemu_reads(&what, &vmx_path, &s.patterns);
    let verified = v.ok(&["verify"]);
    assert!(verified.contains("1 base, 1 leaf checked: all good"), "{what}: {verified}");

    v.ok(&["promote", moved.to_str().unwrap()]);
    assert!(!leaf.join(".leafd").exists(), "{what}: the promoted VM carries no leaf record");
    qemu_reads(&what, &vmx_path, &s.patterns);
    for (_, disk) in attached(&vmx_path) {
        for layer in qemu_chain(&disk) {
            let file = layer["filename"].as_str().unwrap();
            assert!(Path::new(file).starts_with(&leaf), "{what}: the promoted VM still reads {file}");
        }
    }
    let verified = v.ok(&["verify"]);
    assert!(verified.contains("1 base, 0 leaves checked: all good"), "{what}: {verified}");

    let removed = v.ok(&["remove-base", &s.base]);
    assert!(!base.exists(), "{what}: the base is gone");
    // Into the Trash of the base's own volume, never copied: on a volume of its own, the
    // volume's `.Trash-$uid`, which trash-cli lists too.
    if let Some(mount) = &v._mount {
        let trashed = mount.path().join(".Trash-0/files").join(&s.base);
        assert!(removed.contains(&format!("moved to the Trash: {} (", trashed.display())), "{what}: {removed}");
        assert!(trashed.is_dir(), "{what}: {removed}");
    }
    assert!(trash_list(&lib.home()).contains(&base), "{what}: trash-list does not show {}", base.display());
    let verified = v.ok(&["verify"]);
    assert!(verified.contains("0 bases, 0 leaves checked: all good"), "{what}: {verified}");
    assert_eq!(fs::read_dir(lib.root.join(".leafd/journal")).unwrap().count(), 0, "{what}: no journal left");
    eprintln!("{what}: {:?}", start.elapsed());
}

/// Every shape on `v`; then the log holds no warning, and each base it says was made was.
fn every_shape_on(v: Volume) {
    let dir = v.lib.make_base_dir();
    let shapes = [sixty_four_disks(&dir), hundreds_of_extents(&dir), long_unicode_names(&dir), esxi_21_disks(&dir)];
    for s in &shapes {
        through_the_flow(&v, s);
    }
    let log = fs::read_to_string(v.lib.log_dir().join("leafd.log")).unwrap();
    for line in log.lines() {
        assert!(!line.contains("WARN") && !line.contains("ERROR"), "{}: {line}", v.what);
    }
    for s in &shapes {
        let made = log.lines().filter(|l| l.contains(&format!("base {:?} made from", s.base))).count();
        assert_eq!(made, 1, "{}: the log says base {:?} was made once: {log}", v.what, s.base);
    }
    if !v.env.is_empty() {
        assert_eq!(leafd_attributes(&v.lib.root), Vec::<String>::new(), "{}: no attribute written", v.what);
    }
}

#[test]
fn records_fit_on_ext4() {
    every_shape_on(Volume::plain());
}

#[test]
fn records_fit_on_ext4_with_1k_blocks() {
    every_shape_on(Volume::ext4_1k());
}

#[test]
fn records_fit_on_a_volume_without_extended_attributes() {
    every_shape_on(Volume::without_xattrs());
}

/// `from` bind-mounted on `on`; unmounted when dropped, a failing test included.
struct BindMount(PathBuf);

impl BindMount {
    fn new(from: &Path, on: &Path) -> BindMount {
        let o = run_tool("mount", &["--bind", from.to_str().unwrap(), on.to_str().unwrap()]);
        assert!(o.status.success(), "cannot bind-mount {from:?} on {on:?} (the tests run as root): {}", text(&o));
        BindMount(on.to_path_buf())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Issue 10.9: a folder of the library's own volume reached through a bind mount has the same
/// device as `Bases/`, yet a rename across the mount fails (`EXDEV`). Make Base must see that
/// before it journals its plan, and copy.
#[test]
fn a_bind_mount_of_the_same_file_system_is_copied_from() {
    let lib = Lib::new();
    let drop_dir = lib.tmp.path().join("drop");
    fs::create_dir(&drop_dir).unwrap();
    // `Make Base/` itself, seen through a bind mount elsewhere: the same files, another mount.
    let _mount = BindMount::new(&lib.make_base_dir(), &drop_dir);
    let vm = SampleVm::single("Bound", DiskType::SplitSparse, 8 * MIB);
    let bundle = vm.build(&drop_dir).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(&drop_dir).unwrap().dev(),
        fs::metadata(lib.root.join("Bases").parent().unwrap()).unwrap().dev()
    );
    let e = fs::rename(&bundle, lib.root.join("renamed")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "a rename across the bind mount fails");

    // Killed right after journaling: the plan already says copy.
    let mut c = lib.command(&["make-base", bundle.to_str().unwrap()]);
    let o = c.env("LEAFD_FAULT", "make-base:journaled").output().unwrap();
    assert!(killed(&o), "{}", text(&o));
    let journals: Vec<PathBuf> = fs::read_dir(lib.root.join(".leafd/journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(journals.len(), 1);
    let plan: serde_json::Value = serde_json::from_slice(&fs::read(&journals[0]).unwrap()).unwrap();
    assert_eq!(plan["plan"]["copy"], true, "decided before journaling: {plan}");
    let recovered = lib.ok(&["recover"]);
    assert!(recovered.contains("0 interrupted operation(s) left"), "{recovered}");
    assert!(bundle.join("Bound.vmx").is_file(), "undone: the VM is where it was");

    let made = lib.ok(&["make-base", bundle.to_str().unwrap()]);
    assert!(made.contains("(copied from another volume)"), "{made}");
    assert!(!bundle.exists(), "the source goes once the copy is in place");
    let base = lib.base_dir("Bound");
    qemu_reads("bind mount", &base.join("Bound.vmx.base"), &[("scsi0:0".into(), vm.disks[0].patterns.clone())]);
    lib.ok(&["new-leaf", "Bound", "Leaf"]);
    qemu_reads(
        "bind mount",
        &lib.leaf_dir("Leaf").join("Leaf.vmx"),
        &[("scsi0:0".into(), vm.disks[0].patterns.clone())],
    );
    assert!(lib.ok(&["verify"]).contains("all good"));
}

/// A volume whose Trash cannot be used (its `.Trash-$uid` is a file, as a network volume has
/// none): remove-base refuses before anything changes and says `--delete`, which works.
#[test]
fn remove_base_refuses_where_no_trash_can_be_used() {
    let volume = OtherVolume::new();
    let root = volume.path().join("library");
    fs::create_dir_all(root.join("Make Base")).unwrap();
    let lib = Lib { tmp: tempfile::tempdir().unwrap(), root };
    lib.base_from(&SampleVm::single("Ubuntu", DiskType::MonolithicSparse, 4 * MIB));
    fs::write(volume.path().join(".Trash-0"), b"not a folder").unwrap();
    let before = fingerprint_tree(volume.path());
    let o = lib.run(&["remove-base", "Ubuntu"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let said = text(&o);
    assert!(said.contains("cannot go to the Trash") && said.contains(".Trash-0 cannot be used"), "{said}");
    assert!(said.contains("`leafd remove-base \"Ubuntu\" --delete` deletes it for good"), "{said}");
    assert_eq!(fingerprint_tree(volume.path()), before, "refused, yet something changed");
    assert!(trash_list(&lib.home()).is_empty());
    let out = lib.ok(&["remove-base", "Ubuntu", "--delete", "--yes"]);
    assert!(out.contains("base \"Ubuntu\" deleted"), "{out}");
    assert!(!lib.base_dir("Ubuntu").exists());
}
