//! Recovery that can be trusted (issue 10): a library moved or copied between a crash and its
//! recovery, hostile journals, the permissions of leafd's own folder, format 1 journals, leaves
//! outside the library, and `leafd recover --list / --show / --discard`.
//!
//! Everything goes through the real binary on real files; disks are checked with QEMU
//! (`qemu-io -r`, `qemu-img compare`), which knows nothing of leafd.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use leafd::testing::{SampleDisk, SampleVm};
use leafd::testing::{adopt, make_base, new_leaf, promote, remove_base, reset};
use leafd_formats::disk::DiskType;

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A `leafd` command on the library at `root` (which may be a moved or copied one), with `lib`'s
/// private HOME, config and log folder.
fn leafd_at(lib: &Lib, root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_leafd"));
    c.arg("--root").arg(root).args(args);
    c.env("HOME", lib.home())
        .env("XDG_STATE_HOME", lib.tmp.path().join("state"))
        .env("XDG_CONFIG_HOME", lib.tmp.path().join("config"))
        .env_remove("LEAFD_ROOT")
        .env_remove("LEAFD_CONFIG")
        .env_remove("LEAFD_FAULT")
        .env_remove("LEAFD_VMRUN")
        .env_remove("RUST_LOG");
    c
}

fn run_at(lib: &Lib, root: &Path, args: &[&str]) -> Output {
    leafd_at(lib, root, args).output().expect("run leafd")
}

fn ok_at(lib: &Lib, root: &Path, args: &[&str]) -> String {
    let o = run_at(lib, root, args);
    assert!(o.status.success(), "leafd --root {} {args:?} failed: {}", root.display(), text(&o));
    text(&o)
}

fn verify_ok(lib: &Lib, root: &Path, what: &str) {
    let o = run_at(lib, root, &["verify"]);
    assert!(o.status.success(), "{what}: verify in {} failed: {}", root.display(), text(&o));
}

/// Everything about a tree that must not change (like [`fingerprint_tree`]: every path, its type
/// and mode, each file's size and checksum, every extended attribute), with paths relative to
/// `dir` so a moved or copied tree compares equal, and the library's own state (`<root>/.leafd`:
/// journals, locks) left out.
fn tree(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut paths = vec![dir.to_path_buf()];
    if dir.is_dir() {
        paths.extend(walk(dir));
    }
    for p in paths {
        let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        if rel == ".leafd" || rel.starts_with(".leafd/") {
            continue;
        }
        let Ok(m) = p.symlink_metadata() else {
            out.push(format!("{rel:?} missing"));
            continue;
        };
        let sum =
            if m.is_file() { blake3::hash(&fs::read(&p).unwrap()).to_hex()[..16].to_string() } else { String::new() };
        let mut attrs: Vec<String> = xattr::list(&p)
            .map(|l| {
                l.map(|n| {
                    let v = xattr::get(&p, &n).ok().flatten().unwrap_or_default();
                    format!("{}={}", n.to_string_lossy(), &blake3::hash(&v).to_hex()[..12])
                })
                .collect()
            })
            .unwrap_or_default();
        attrs.sort();
        out.push(format!("{rel:?} {:o} {} {sum} {}", m.mode(), m.len(), attrs.join(",")));
    }
    out
}

/// The journals of the library at `root`, file by file.
fn journals(root: &Path) -> BTreeMap<PathBuf, String> {
    checksums(&root.join(".leafd/journal"))
}

/// The ids of the journals at `root`.
fn journal_ids(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir(root.join(".leafd/journal"))
        .map(|rd| rd.filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(str::to_string)).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

/// leafd's working folders (`.leafd-*`) left in any of `dirs`.
fn working_folders(dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter().filter(|d| d.is_dir()).flat_map(|d| leftovers(d)).collect()
}

/// Reads every pattern of `d` through the disk (or chain) at `path` with one `qemu-io -r`.
fn qemu_reads(path: &Path, d: &SampleDisk) {
    let cmds: Vec<String> =
        d.patterns.iter().map(|p| format!("read -P 0x{:02x} {} {}", p.byte, p.offset, p.len)).collect();
    let mut args = vec!["-r", "-f", "vmdk"];
    for c in &cmds {
        args.extend(["-c", c]);
    }
    args.push(path.to_str().unwrap());
    let o = run_tool("qemu-io", &args);
    let t = text(&o);
    assert!(o.status.success() && !t.contains("fail") && !t.contains("error"), "{}: {t}", path.display());
}

fn delta_name(file: &str) -> String {
    format!("{}-000001.vmdk", file.strip_suffix(".vmdk").unwrap())
}

/// Small disks of both extent layouts: a split sparse disk and a flat one.
fn small_vm(name: &str) -> SampleVm {
    SampleVm {
        name: name.into(),
        disks: vec![
            SampleDisk::new("scsi0:0", "Virtual Disk.vmdk", DiskType::SplitSparse, 3 * MIB),
            SampleDisk::new("sata0:0", "Data.vmdk", DiskType::MonolithicFlat, MIB),
        ],
    }
}

/// Runs `run` again while leafd refuses because a file is open for writing elsewhere. A sample VM
/// is written by this (multi-threaded) test process: a child another test thread is starting holds
/// copies of its descriptors until it execs, and leafd's lease check sees them. leafd changes
/// nothing when it refuses so, and the agent itself tries again.
fn unless_busy(mut run: impl FnMut() -> Output) -> Output {
    for _ in 0..20 {
        let o = run();
        if !text(&o).contains("is open for writing by another program") {
            return o;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    run()
}

/// [`Lib::base_from`], through [`unless_busy`].
fn base_from(lib: &Lib, vm: &SampleVm) -> PathBuf {
    let bundle = vm.build(&lib.make_base_dir()).unwrap();
    let o = unless_busy(|| lib.run(&["make-base", bundle.to_str().unwrap()]));
    assert!(o.status.success(), "make-base {}: {}", bundle.display(), text(&o));
    lib.base_dir(&vm.name)
}

fn cp_a(from: &Path, to: &Path) {
    let o = run_tool("cp", &["-a", from.to_str().unwrap(), to.to_str().unwrap()]);
    assert!(o.status.success(), "cp -a: {}", text(&o));
}

fn mv(from: &Path, to: &Path) {
    fs::rename(from, to).unwrap_or_else(|e| panic!("mv {} {}: {e}", from.display(), to.display()));
}

// ---------------------------------------------------------------------------------------------
// 1. A library moved or copied between a crash and recovery

/// Every operation, as the matrix runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// `make-base "lib/Make Base/S.vmwarevm"`: renamed, all inside the library.
    MakeBase,
    /// `make-base /elsewhere/S.vmwarevm` on the same volume: renamed from outside the library.
    MakeBaseElsewhere,
    /// `make-base /other-volume/S.vmwarevm`: copied from outside, the source removed after.
    MakeBaseOtherVolume,
    /// `make-base lib/Leaf.vmwarevm`: a leaf, flattened.
    MakeBaseOfLeaf,
    NewLeaf,
    NewLeafVmrun,
    Promote,
    /// Promote of a leaf relinked to a folder outside the library.
    PromoteOutside,
    RemoveBase,
    /// `adopt lib/Web 1.vmwarevm --base Ubuntu`: a hand copy of the base's VM, used since.
    Adopt,
    /// `reset "Web 1" --yes` of a used leaf.
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Undone,
    Finished,
}

impl Op {
    fn fault_op(self) -> &'static str {
        match self {
            Op::MakeBase | Op::MakeBaseElsewhere | Op::MakeBaseOtherVolume | Op::MakeBaseOfLeaf => make_base::OP,
            Op::NewLeaf | Op::NewLeafVmrun => new_leaf::OP,
            Op::Promote | Op::PromoteOutside => promote::OP,
            Op::RemoveBase => remove_base::OP,
            Op::Adopt => adopt::OP,
            Op::Reset => reset::OP,
        }
    }

    /// The steps this variant reaches, in order.
    fn steps(self) -> Vec<&'static str> {
        let only = |skip: &[&str]| make_base::STEPS.iter().copied().filter(|s| !skip.contains(s)).collect();
        let across = ["copying", "copied", "source-removing", "source-removed"];
        match self {
            Op::MakeBase | Op::MakeBaseElsewhere => only(&[&across[..], &["flattened"]].concat()),
            Op::MakeBaseOfLeaf => only(&across),
            Op::MakeBaseOtherVolume => only(&["flattened", "moved"]),
            Op::NewLeaf | Op::NewLeafVmrun => new_leaf::STEPS.to_vec(),
            Op::Promote | Op::PromoteOutside => promote::STEPS.to_vec(),
            Op::RemoveBase => remove_base::STEPS.to_vec(),
            Op::Adopt => adopt::STEPS.to_vec(),
            Op::Reset => reset::STEPS.to_vec(),
        }
    }

    /// The first step after the commit point (docs/journal.md).
    fn commit(self) -> &'static str {
        match self.fault_op() {
            "promote" | "adopt" => "set-aside",
            "remove-base" => "hidden",
            "reset" => "committed",
            _ => "published",
        }
    }

    fn outcome(self, step: &str) -> Outcome {
        let steps = self.steps();
        let at = steps.iter().position(|s| *s == step).unwrap();
        let commit = steps.iter().position(|s| *s == self.commit()).unwrap();
        if at >= commit { Outcome::Finished } else { Outcome::Undone }
    }

    /// Whether recovering `step` needs a place outside the library: in a moved or copied library
    /// the journal is then kept and reported, and nothing is touched.
    fn needs_outside(self, step: &str) -> bool {
        match self {
            // Undoing the rename moves the VM back out of the library.
            Op::MakeBaseElsewhere => self.outcome(step) == Outcome::Undone && step != "journaled",
            // Finishing removes the copied source (while there is one).
            Op::MakeBaseOtherVolume => {
                matches!(step, "published" | "drop-folder-created" | "source-removing")
            }
            Op::PromoteOutside => true,
            _ => false,
        }
    }
}

#[test]
fn every_step_of_every_operation_is_in_the_matrix() {
    let mut make: Vec<&str> = Vec::new();
    for op in [Op::MakeBase, Op::MakeBaseElsewhere, Op::MakeBaseOtherVolume, Op::MakeBaseOfLeaf] {
        make.extend(op.steps());
    }
    for s in make_base::STEPS {
        assert!(make.contains(s), "make-base step {s} is in no variant of the matrix");
    }
    assert_eq!(Op::NewLeaf.steps(), new_leaf::STEPS);
    assert_eq!(Op::Promote.steps(), promote::STEPS);
    assert_eq!(Op::RemoveBase.steps(), remove_base::STEPS);
    assert_eq!(Op::Adopt.steps(), adopt::STEPS);
    assert_eq!(Op::Reset.steps(), reset::STEPS);
}

/// One operation about to be killed, and what it must come back to.
struct Case {
    op: Op,
    lib: Lib,
    vm: SampleVm,
    /// A folder outside the library, on the library's volume.
    elsewhere: PathBuf,
    other: Option<OtherVolume>,
    args: Vec<String>,
    /// The source bundle's tree before (Make Base) or the leaf's (Promote), relative.
    before: Vec<String>,
    /// Checksums of the source's files (Make Base).
    sums: BTreeMap<PathBuf, String>,
    /// Raw images of the leaf's disks as QEMU reads them (Promote, Make Base of a leaf).
    refs: Vec<PathBuf>,
    /// Its journal was rewritten in format 1 (from before the Linux Trash: a removal deletes).
    format_1: std::cell::Cell<bool>,
}

const BASE: &str = "Ubuntu";
const SOURCE: &str = "S";
const LEAF: &str = "Web 1";

impl Case {
    fn new(op: Op) -> Case {
        let lib = Lib::new();
        let elsewhere = lib.tmp.path().join("elsewhere");
        fs::create_dir_all(&elsewhere).unwrap();
        let mut case = Case {
            op,
            vm: small_vm(BASE),
            elsewhere,
            other: None,
            args: Vec::new(),
            before: Vec::new(),
            sums: BTreeMap::new(),
            refs: Vec::new(),
            format_1: std::cell::Cell::new(false),
            lib,
        };
        case.setup();
        case
    }

    fn root(&self) -> &Path {
        &self.lib.root
    }

    fn setup(&mut self) {
        let s = |p: &Path| p.to_str().unwrap().to_string();
        match self.op {
            Op::MakeBase | Op::MakeBaseElsewhere | Op::MakeBaseOtherVolume => {
                self.vm = small_vm(SOURCE);
                let dir = match self.op {
                    Op::MakeBase => self.lib.make_base_dir(),
                    Op::MakeBaseElsewhere => self.elsewhere.clone(),
                    _ => {
                        self.other = Some(OtherVolume::new());
                        self.other.as_ref().unwrap().path().to_path_buf()
                    }
                };
                let bundle = self.vm.build(&dir).unwrap();
                self.args = vec!["make-base".into(), s(&bundle)];
            }
            Op::MakeBaseOfLeaf => {
                base_from(&self.lib, &self.vm);
                self.lib.ok(&["new-leaf", BASE, LEAF]);
                self.scribble(&self.lib.leaf_dir(LEAF));
                self.args = vec!["make-base".into(), s(&self.lib.leaf_dir(LEAF))];
            }
            Op::NewLeaf | Op::NewLeafVmrun => {
                base_from(&self.lib, &self.vm);
                self.args = vec!["new-leaf".into(), BASE.into(), LEAF.into(), "--snapshot".into()];
                self.args.push(if self.op == Op::NewLeaf { "native" } else { "vmrun" }.into());
            }
            Op::Promote | Op::PromoteOutside => {
                base_from(&self.lib, &self.vm);
                self.lib.ok(&["new-leaf", BASE, LEAF]);
                let mut leaf = self.lib.leaf_dir(LEAF);
                if self.op == Op::PromoteOutside {
                    let out = self.elsewhere.join(format!("{LEAF}.vmwarevm"));
                    mv(&leaf, &out);
                    self.lib.ok(&["relink", out.to_str().unwrap()]);
                    leaf = out;
                }
                self.scribble(&leaf);
                self.args = vec!["promote".into(), LEAF.into()];
            }
            Op::RemoveBase => {
                base_from(&self.lib, &self.vm);
                self.args = vec!["remove-base".into(), BASE.into(), "--yes".into()];
            }
            Op::Adopt => self.setup_adopt(),
            Op::Reset => {
                base_from(&self.lib, &self.vm);
                self.lib.ok(&["new-leaf", BASE, LEAF]);
                self.scribble(&self.lib.leaf_dir(LEAF));
                self.args = vec!["reset".into(), LEAF.into(), "--yes".into()];
            }
        }
        if let Some(source) = self.source(self.root()) {
            self.before = tree(&source);
            self.sums = checksums(&source);
        }
        if let Some(leaf) = self.leaf(self.root()).filter(|_| self.op != Op::NewLeaf && self.op != Op::NewLeafVmrun) {
            self.before = tree(&leaf);
            let scratch = self.lib.tmp.path().join("refs");
            fs::create_dir_all(&scratch).unwrap();
            self.refs = self
                .vm
                .disks
                .iter()
                .map(|d| {
                    let out = scratch.join(format!("{}.raw", d.file));
                    // The VM to adopt is no leaf yet: its disks are its own.
                    let disk = if self.op == Op::Adopt { d.file.clone() } else { delta_name(&d.file) };
                    to_raw(&leaf.join(disk), &out);
                    out
                })
                .collect();
        }
    }

    /// A hand copy of the base's VM, made before the base, used since: the VM to adopt.
    fn setup_adopt(&mut self) {
        let bundle = self.vm.build(&self.lib.make_base_dir()).unwrap();
        let copy = self.lib.leaf_dir(LEAF);
        let o = run_tool("cp", &["-a", "--sparse=always", bundle.to_str().unwrap(), copy.to_str().unwrap()]);
        assert!(o.status.success(), "cp: {}", text(&o));
        let o = unless_busy(|| self.lib.run(&["make-base", bundle.to_str().unwrap()]));
        assert!(o.status.success(), "make-base: {}", text(&o));
        for (i, d) in self.vm.disks.iter().enumerate() {
            qemu_write(&copy.join(&d.file), 128 * 1024, 4096, 0x70 + i as u8);
        }
        self.args = vec!["adopt".into(), copy.display().to_string(), "--base".into(), BASE.into()];
    }

    /// Writes into the leaf's deltas, so its content is its own and not the base's.
    fn scribble(&self, leaf: &Path) {
        for (i, d) in self.vm.disks.iter().enumerate() {
            qemu_write(&leaf.join(delta_name(&d.file)), 128 * 1024, 4096, 0x70 + i as u8);
        }
    }

    /// The Make Base source in the library at `root`.
    fn source(&self, root: &Path) -> Option<PathBuf> {
        let name = format!("{SOURCE}.vmwarevm");
        match self.op {
            Op::MakeBase => Some(root.join("Make Base").join(name)),
            Op::MakeBaseElsewhere => Some(self.elsewhere.join(name)),
            Op::MakeBaseOtherVolume => Some(self.other.as_ref().unwrap().path().join(name)),
            Op::MakeBaseOfLeaf => Some(root.join(format!("{LEAF}.vmwarevm"))),
            _ => None,
        }
    }

    /// The leaf in the library at `root` (where it lives).
    fn leaf(&self, root: &Path) -> Option<PathBuf> {
        match self.op {
            Op::PromoteOutside => Some(self.elsewhere.join(format!("{LEAF}.vmwarevm"))),
            Op::NewLeaf | Op::NewLeafVmrun | Op::Promote | Op::MakeBaseOfLeaf | Op::Adopt | Op::Reset => {
                Some(root.join(format!("{LEAF}.vmwarevm")))
            }
            _ => None,
        }
    }

    fn new_base_name(&self) -> &'static str {
        if self.op == Op::MakeBaseOfLeaf { LEAF } else { SOURCE }
    }

    /// Kills the operation at `step`.
    fn kill_at(&self, step: &str) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut c = self.lib.command(&args);
        c.env("LEAFD_FAULT", format!("{}:{step}", self.op.fault_op()));
        if self.op == Op::NewLeafVmrun {
            c.env("LEAFD_VMRUN", vmrun_stand_in(self.lib.tmp.path(), "works", VMRUN_WORKS));
        }
        let o = unless_busy(|| c.output().unwrap());
        assert!(killed(&o), "{:?} {step}: not killed there: {}", self.op, text(&o));
    }

    /// Every place a working folder of the operation could be, for the library at `root`.
    fn work_places(&self, root: &Path) -> Vec<PathBuf> {
        let mut v = vec![root.to_path_buf(), root.join("Bases"), self.elsewhere.clone()];
        v.extend(self.other.as_ref().map(|o| o.path().to_path_buf()));
        // A reset works inside the leaf.
        v.extend(self.leaf(root).filter(|l| self.op == Op::Reset && l.is_dir()));
        v
    }

    /// The library at `root` holds the untouched source or the finished result, nothing else.
    fn check(&self, root: &Path, outcome: Outcome, what: &str) {
        let what = format!("{:?} {what} ({})", self.op, root.display());
        let stray = working_folders(&self.work_places(root));
        assert!(stray.is_empty(), "{what}: working folders left: {stray:?}");
        assert!(journal_ids(root).is_empty(), "{what}: journals left: {:?}", journal_ids(root));
        match (self.op.fault_op(), outcome) {
            ("make-base", Outcome::Undone) => self.check_make_base_undone(root, &what),
            ("make-base", Outcome::Finished) => self.check_make_base_finished(root, &what),
            ("new-leaf", Outcome::Undone) => self.check_new_leaf_undone(root, &what),
            ("new-leaf", Outcome::Finished) => self.check_new_leaf_finished(root, &what),
            ("promote", outcome) => self.check_promote(root, outcome, &what),
            ("remove-base", Outcome::Undone) => self.check_remove_base_undone(root),
            ("remove-base", Outcome::Finished) => self.check_remove_base_finished(root, &what),
            ("adopt", outcome) => self.check_adopt(root, outcome, &what),
            ("reset", outcome) => self.check_reset(root, outcome, &what),
            other => unreachable!("{other:?}"),
        }
        let copy = root.file_name().is_some_and(|n| n == "copy");
        if self.op == Op::PromoteOutside && copy && outcome == Outcome::Undone {
            // The leaf outside was not copied: it stays the original library's, and its parent
            // copies reach the original's base, not the copy's. Verify says so, and nothing else.
            let o = run_at(&self.lib, root, &["verify"]);
            let out = text(&o);
            let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("PROBLEM:")).collect();
            assert_eq!(problems.len(), 2, "{what}: {out}");
            assert!(problems.iter().all(|p| p.contains("does not reach base")), "{what}: {out}");
        } else {
            verify_ok(&self.lib, root, &what);
        }
    }

    /// The VM is back where it was, as it was, and no base was made of it.
    fn check_make_base_undone(&self, root: &Path, what: &str) {
        let source = self.source(root).unwrap();
        assert_eq!(tree(&source), self.before, "{what}: the source is not as it was");
        assert!(!root.join("Bases").join(self.new_base_name()).exists(), "{what}: half a base");
        if self.op == Op::MakeBaseOfLeaf {
            assert_eq!(leaf_list(&root.join("Bases").join(BASE)).len(), 1, "{what}: the leaf was forgotten");
            for (d, r) in self.vm.disks.iter().zip(&self.refs) {
                same_as(r, &source.join(delta_name(&d.file)));
            }
        }
    }

    /// The base holds the VM's files and reads like it; the drop folder is there and the source gone.
    fn check_make_base_finished(&self, root: &Path, what: &str) {
        let base = root.join("Bases").join(self.new_base_name());
        let vmx = format!("{}.vmx", self.new_base_name());
        let now = vm_files(&base);
        for (f, sum) in &self.sums {
            if is_records(&f.to_string_lossy()) {
                continue;
            }
            let name = if *f == Path::new(&vmx) { PathBuf::from(format!("{vmx}.base")) } else { f.clone() };
            let repointed = self.op == Op::MakeBaseOfLeaf && self.vm.disks.iter().any(|d| *f == Path::new(&d.file));
            if repointed {
                assert!(now.contains_key(&name), "{what}: {} lost", f.display());
            } else {
                assert_eq!(now.get(&name), Some(sum), "{what}: {} changed or lost", f.display());
            }
        }
        for (i, d) in self.vm.disks.iter().enumerate() {
            if self.op == Op::MakeBaseOfLeaf {
                let flat = base.join(format!("{}-000001-base.vmdk", d.file.strip_suffix(".vmdk").unwrap()));
                same_as(&self.refs[i], &flat);
            } else {
                qemu_reads(&base.join(&d.file), d);
            }
        }
        assert!(root.join("New Leaf").join(self.new_base_name()).is_dir(), "{what}: no drop folder");
        if self.op != Op::MakeBaseOtherVolume || root == self.root() {
            assert!(!self.source(root).unwrap().exists(), "{what}: the source is still there");
        }
    }

    /// No leaf, and the base lists none.
    fn check_new_leaf_undone(&self, root: &Path, what: &str) {
        assert!(!root.join(format!("{LEAF}.vmwarevm")).exists(), "{what}: half a leaf");
        assert_eq!(leaf_list(&root.join("Bases").join(BASE)).len(), 0, "{what}: a leaf listed");
    }

    /// The leaf is recorded, listed, and reads like the base through its chain.
    fn check_new_leaf_finished(&self, root: &Path, what: &str) {
        let leaf = root.join(format!("{LEAF}.vmwarevm"));
        let rec = record(&leaf, "leaf");
        let backend = if self.op == Op::NewLeafVmrun { "vmrun" } else { "native" };
        assert_eq!(rec["snapshot"], backend, "{what}");
        assert_eq!(leaf_list(&root.join("Bases").join(BASE)).len(), 1, "{what}: the base does not list it");
        for d in &self.vm.disks {
            let delta = leaf.join(delta_name(&d.file));
            qemu_check(&delta);
            qemu_reads(&delta, d);
        }
    }

    /// The leaf is promoted (standalone, off the base's list) or as it was.
    fn check_promote(&self, root: &Path, outcome: Outcome, what: &str) {
        let leaf = self.leaf(root).unwrap();
        let promoted = !leaf.join(".leafd/leaf.json").exists();
        assert_eq!(promoted, outcome == Outcome::Finished, "{what}: promoted is {promoted}");
        for (d, r) in self.vm.disks.iter().zip(&self.refs) {
            if promoted {
                let disk = leaf.join(&d.file);
                assert_eq!(qemu_chain(&disk).len(), 1, "{what}: {} still has a parent", disk.display());
                same_as(r, &disk);
            } else {
                same_as(r, &leaf.join(delta_name(&d.file)));
            }
        }
        if outcome == Outcome::Undone {
            assert_eq!(tree(&leaf), self.before, "{what}: the leaf is not as it was");
        }
        let listed = leaf_list(&root.join("Bases").join(BASE)).len();
        assert_eq!(listed, usize::from(!promoted), "{what}: the base's list of leaves");
    }

    /// The VM is a leaf now (adopted, listed, reading as it did through its deltas) or as it was.
    fn check_adopt(&self, root: &Path, outcome: Outcome, what: &str) {
        let leaf = self.leaf(root).unwrap();
        let adopted = leaf.join(".leafd/leaf.json").exists();
        assert_eq!(adopted, outcome == Outcome::Finished, "{what}: adopted is {adopted}");
        for (d, r) in self.vm.disks.iter().zip(&self.refs) {
            if adopted {
                let delta = leaf.join(delta_name(&d.file));
                assert_eq!(qemu_chain(&delta).len(), 2, "{what}: {} is not over a parent copy", delta.display());
                same_as(r, &delta);
            } else {
                same_as(r, &leaf.join(&d.file));
            }
        }
        if outcome == Outcome::Undone {
            assert_eq!(tree(&leaf), self.before, "{what}: the VM is not as it was");
        }
        let listed = leaf_list(&root.join("Bases").join(BASE)).len();
        assert_eq!(listed, usize::from(adopted), "{what}: the base's list of leaves");
    }

    /// The leaf's deltas hold nothing and read as the base, or it is as it was.
    fn check_reset(&self, root: &Path, outcome: Outcome, what: &str) {
        let leaf = self.leaf(root).unwrap();
        for (d, r) in self.vm.disks.iter().zip(&self.refs) {
            let delta = leaf.join(delta_name(&d.file));
            if outcome == Outcome::Finished {
                qemu_check(&delta);
                qemu_reads(&delta, d);
                assert_eq!(
                    compare_with_raw(r, &delta).status.code(),
                    Some(1),
                    "{what}: {} still reads as before",
                    delta.display()
                );
            } else {
                same_as(r, &delta);
            }
        }
        if outcome == Outcome::Undone {
            assert_eq!(tree(&leaf), self.before, "{what}: the leaf is not as it was");
        }
    }

    /// The base is there and reads as before.
    fn check_remove_base_undone(&self, root: &Path) {
        let base = root.join("Bases").join(BASE);
        for d in &self.vm.disks {
            qemu_reads(&base.join(&d.file), d);
        }
    }

    /// The base and its drop folder are gone, the base into the Trash (a format 1 journal deleted it).
    fn check_remove_base_finished(&self, root: &Path, what: &str) {
        assert!(fs::read_dir(root.join("Bases")).unwrap().next().is_none(), "{what}: removal not finished");
        assert!(!root.join("New Leaf").join(BASE).exists(), "{what}: drop folder left");
        // From the library where it was when it left (moved since, or a copy's too); recovery
        // of a format 1 journal, from before the Linux Trash, deletes.
        let trashed = trash_list(&self.lib.home());
        assert!(!trashed.is_empty() || self.format_1.get(), "{what}: the base is not in the Trash");
        assert!(trashed.iter().all(|p| p.ends_with(format!("Bases/{BASE}"))), "{what}: {trashed:?}");
    }

    /// The trees recovery must not touch when it keeps a journal: the library and the places
    /// outside it.
    fn snapshot(&self, root: &Path) -> Vec<Vec<String>> {
        let mut v = vec![tree(root), tree(&self.elsewhere)];
        v.extend(self.other.as_ref().map(|o| tree(o.path())));
        v.push(journals(root).into_values().collect());
        v
    }

    /// `leafd recover` in the moved or copied library at `root`: done, or (when it needs a place
    /// outside the library) kept and reported with nothing touched.
    fn recover_elsewhere(&self, root: &Path, step: &str, what: &str) -> bool {
        let before = self.snapshot(root);
        let o = run_at(&self.lib, root, &["recover"]);
        if self.op.needs_outside(step) {
            assert_eq!(o.status.code(), Some(1), "{:?} {step} {what}: not kept: {}", self.op, text(&o));
            let t = text(&o);
            assert!(
                t.contains("moved or copied") && t.contains("recover --show"),
                "{:?} {step} {what}: not reported: {t}",
                self.op
            );
            // Only the places outside are left alone when the part inside can be finished (a
            // copied base made whole, its source outside left to a person).
            let (now, was) = if self.op == Op::MakeBaseOtherVolume {
                (self.snapshot(root)[1..].to_vec(), before[1..].to_vec())
            } else {
                (self.snapshot(root), before)
            };
            assert_eq!(now, was, "{:?} {step} {what}: a kept journal touched something", self.op);
            assert_eq!(journal_ids(root).len(), 1, "{:?} {step} {what}", self.op);
            true
        } else {
            assert!(o.status.success(), "{:?} {step} {what}: recover failed: {}", self.op, text(&o));
            false
        }
    }
}

/// Kill at `step`, move the library, recover it where it now is. When recovery needs a place
/// outside it, the journal is kept; moving the library back and recovering finishes the job.
/// With `v1`, the journal is first rewritten as the leafd before format 2 wrote it.
fn moved(op: Op, step: &str, v1: bool) {
    let case = Case::new(op);
    case.kill_at(step);
    if v1 {
        case.to_format_1();
    }
    let moved = case.lib.tmp.path().join("moved-lib");
    mv(case.root(), &moved);
    if case.recover_elsewhere(&moved, step, "moved") {
        let id = &journal_ids(&moved)[0];
        let shown = ok_at(&case.lib, &moved, &["recover", "--show", id]);
        assert!(shown.contains(&case.lib.root.display().to_string()), "{op:?} {step}: --show: {shown}");
        // Every working folder it left is named, wherever it is: nothing waits unseen.
        for w in working_folders(&case.work_places(&moved)) {
            assert!(shown.contains(&w.display().to_string()), "{op:?} {step}: {} not shown: {shown}", w.display());
        }
        mv(&moved, case.root());
        ok_at(&case.lib, case.root(), &["recover"]);
        case.check(case.root(), op.outcome(step), &format!("{step}, moved back"));
    } else {
        case.check(&moved, op.outcome(step), &format!("{step}, moved"));
    }
}

/// Kill at `step`, copy the library with `cp -a`, recover the copy (the original is untouched),
/// then the original where it is.
fn copied(op: Op, step: &str) {
    let case = Case::new(op);
    case.kill_at(step);
    let copy = case.lib.tmp.path().join("copy");
    cp_a(case.root(), &copy);
    let original = case.snapshot(case.root());
    let kept = case.recover_elsewhere(&copy, step, "copy");
    assert_eq!(case.snapshot(case.root()), original, "{op:?} {step}: recovering the copy changed the original");
    ok_at(&case.lib, case.root(), &["recover"]);
    case.check(case.root(), op.outcome(step), &format!("{step}, original after its copy"));
    if kept {
        person_settles_the_copy(&case, &copy, step);
    }
    case.check(&copy, op.outcome(step), &format!("{step}, copy"));
}

/// What a person does with a journal a copied library keeps, from what `--show` says.
fn person_settles_the_copy(case: &Case, copy: &Path, step: &str) {
    let id = journal_ids(copy).remove(0);
    let shown = ok_at(&case.lib, copy, &["recover", "--show", &id]);
    let what = format!("{:?} {step}, copy: --show {id}", case.op);
    // The copy's own working folders are named, so nothing waits unseen.
    for w in working_folders(&case.work_places(copy)) {
        assert!(shown.contains(&w.display().to_string()), "{what}: {} not shown: {shown}", w.display());
    }
    let discarded = ok_at(&case.lib, copy, &["recover", "--discard", &id]);
    assert!(discarded.contains("nothing was moved or deleted"), "{what}: {discarded}");
    match case.op {
        // The copy's half-made base holds a copy of the VM, which the original got back: the
        // person keeps it out of the library.
        Op::MakeBaseElsewhere => {
            for w in working_folders(&[copy.join("Bases")]) {
                mv(&w, &case.lib.tmp.path().join(format!("rescued-{}", w.file_name().unwrap().to_string_lossy())));
            }
        }
        // The promoted leaf outside is a standalone VM now: the copy's base forgets it.
        Op::PromoteOutside
            if case.op.outcome(step) == Outcome::Finished && !leaf_list(&copy.join("Bases").join(BASE)).is_empty() =>
        {
            ok_at(&case.lib, copy, &["forget", LEAF]);
        }
        _ => {}
    }
}

fn matrix(op: Op) {
    let start = std::time::Instant::now();
    for step in op.steps() {
        moved(op, step, false);
        copied(op, step);
    }
    eprintln!("{op:?}: {} steps moved and copied in {:.1} s", op.steps().len(), start.elapsed().as_secs_f64());
}

#[test]
fn make_base_in_a_moved_or_copied_library() {
    matrix(Op::MakeBase);
}

#[test]
fn make_base_from_elsewhere_in_a_moved_or_copied_library() {
    matrix(Op::MakeBaseElsewhere);
}

#[test]
fn make_base_across_volumes_in_a_moved_or_copied_library() {
    matrix(Op::MakeBaseOtherVolume);
}

#[test]
fn make_base_of_a_leaf_in_a_moved_or_copied_library() {
    matrix(Op::MakeBaseOfLeaf);
}

#[test]
fn new_leaf_in_a_moved_or_copied_library() {
    matrix(Op::NewLeaf);
}

#[test]
fn new_leaf_with_vmrun_in_a_moved_or_copied_library() {
    matrix(Op::NewLeafVmrun);
}

#[test]
fn promote_in_a_moved_or_copied_library() {
    matrix(Op::Promote);
}

#[test]
fn promote_of_a_leaf_outside_in_a_moved_or_copied_library() {
    matrix(Op::PromoteOutside);
}

#[test]
fn adopt_in_a_moved_or_copied_library() {
    matrix(Op::Adopt);
}

#[test]
fn reset_in_a_moved_or_copied_library() {
    matrix(Op::Reset);
}

#[test]
fn remove_base_in_a_moved_or_copied_library() {
    matrix(Op::RemoveBase);
}

/// The first reproduction of issue 10, word for word: killed after the lineage was written, the
/// library moved, recovered where it now is.
#[test]
fn issue_10_make_base_killed_then_the_library_moved() {
    let lib = Lib::new();
    let cwd = lib.tmp.path();
    let vm = small_vm(SOURCE);
    fs::create_dir_all(cwd.join("lib/Make Base")).unwrap();
    vm.build(&cwd.join("lib/Make Base")).unwrap();
    let before = tree(&cwd.join("lib/Make Base/S.vmwarevm"));
    let o = unless_busy(|| {
        leafd_at(&lib, Path::new("lib"), &["make-base", "lib/Make Base/S.vmwarevm"])
            .current_dir(cwd)
            .env("LEAFD_FAULT", "make-base:lineage-written")
            .output()
            .unwrap()
    });
    assert!(killed(&o), "{}", text(&o));
    assert_eq!(working_folders(&[cwd.join("lib/Bases")]).len(), 1, "killed with the VM in staging");
    mv(&cwd.join("lib"), &cwd.join("moved-lib"));
    let o = leafd_at(&lib, Path::new("moved-lib"), &["recover"]).current_dir(cwd).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let back = cwd.join("moved-lib/Make Base/S.vmwarevm");
    assert_eq!(tree(&back), before, "the VM is not back as it was");
    assert!(
        working_folders(&[cwd.join("moved-lib/Bases")]).is_empty(),
        "{:?}",
        leftovers(&cwd.join("moved-lib/Bases"))
    );
    assert!(!cwd.join("lib").exists(), "recovery recreated the old library");
    for d in &vm.disks {
        qemu_reads(&back.join(&d.file), d);
    }
    verify_ok(&lib, &cwd.join("moved-lib"), "issue 10, first reproduction");
}

/// The second reproduction: Promote killed after the leaf was set aside, the library copied;
/// the copy is finished in the copy, and the original waits, untouched, for its own recovery.
#[test]
fn issue_10_promote_killed_then_the_library_copied() {
    // P is leaf "Web 1": `LEAFD_FAULT=promote:set-aside leafd promote "Web 1"`.
    let case = Case::new(Op::Promote);
    case.kill_at("set-aside");
    let copy = case.lib.tmp.path().join("copy");
    cp_a(case.root(), &copy);
    let original = case.snapshot(case.root());
    ok_at(&case.lib, &copy, &["recover"]);
    case.check(&copy, Outcome::Finished, "set-aside, the copy");
    assert_eq!(case.snapshot(case.root()), original, "recovering the copy touched the original");
    assert_eq!(working_folders(&[case.root().to_path_buf()]).len(), 2, "the original is still half done");
    ok_at(&case.lib, case.root(), &["recover"]);
    case.check(case.root(), Outcome::Finished, "set-aside, the original");
}

/// A cross-volume Make Base published, then the library moved: the base is finished where the
/// library now is, and the source on the other volume is left to a person, whose two choices both
/// end in a whole library: remove the source (recovery then finishes by itself), or keep it and
/// `--discard` the journal.
#[test]
fn a_copied_source_outside_a_moved_library_is_left_to_a_person() {
    for person_removes_it in [true, false] {
        let case = Case::new(Op::MakeBaseOtherVolume);
        case.kill_at("published");
        let moved = case.lib.tmp.path().join("moved-lib");
        mv(case.root(), &moved);
        let source = case.source(&moved).unwrap();
        let o = run_at(&case.lib, &moved, &["recover"]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains(&source.display().to_string()), "the source is not named: {}", text(&o));
        let id = journal_ids(&moved).remove(0);
        let shown = ok_at(&case.lib, &moved, &["recover", "--show", &id]);
        assert!(shown.contains(&format!("present: {}", source.display())), "{shown}");
        // Kept on every run until the person decides, the base usable meanwhile.
        assert_eq!(run_at(&case.lib, &moved, &["recover"]).status.code(), Some(1));
        ok_at(&case.lib, &moved, &["new-leaf", SOURCE, "Meanwhile"]);
        assert_eq!(tree(&source), case.before, "the source outside was touched");
        if person_removes_it {
            fs::remove_dir_all(&source).unwrap();
            ok_at(&case.lib, &moved, &["recover"]);
        } else {
            let said = ok_at(&case.lib, &moved, &["recover", "--discard", &id]);
            assert!(said.contains("nothing was moved or deleted"), "{said}");
            assert_eq!(tree(&source), case.before, "--discard touched the source");
        }
        assert!(journal_ids(&moved).is_empty());
        let base = moved.join("Bases").join(SOURCE);
        // Discarded, the base keeps the stamp of an operation that is gone (nothing acts on it).
        assert_eq!(base.join(".leafd-stamp").exists(), !person_removes_it, "the base's stamp");
        for d in &case.vm.disks {
            qemu_reads(&base.join(&d.file), d);
            qemu_reads(&moved.join("Meanwhile.vmwarevm").join(delta_name(&d.file)), d);
        }
        verify_ok(&case.lib, &moved, "after the person's choice");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. A leaf outside the library: deleting a leaf is never a way to lose a base

/// A base and leaf "Web 1" relinked to a folder outside the library.
fn outside_leaf() -> (Lib, SampleVm, PathBuf) {
    let lib = Lib::new();
    let vm = small_vm(BASE);
    base_from(&lib, &vm);
    lib.ok(&["new-leaf", BASE, LEAF]);
    let elsewhere = lib.tmp.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let out = elsewhere.join(format!("{LEAF}.vmwarevm"));
    mv(&lib.leaf_dir(LEAF), &out);
    let said = lib.ok(&["relink", out.to_str().unwrap()]);
    assert!(said.contains("relinked"), "{said}");
    (lib, vm, out)
}

#[test]
fn a_leaf_outside_the_library_is_seen_checked_and_keeps_its_base() {
    let (lib, vm, out) = outside_leaf();
    for d in &vm.disks {
        qemu_reads(&out.join(delta_name(&d.file)), d);
    }
    // status: present, where it is.
    let s: serde_json::Value = serde_json::from_str(&lib.ok(&["status", "--json"])).unwrap();
    let leaves = s["bases"][0]["leaves"].as_array().unwrap();
    assert_eq!(leaves.len(), 1, "{s}");
    assert_eq!(leaves[0]["name"], LEAF);
    assert_eq!(leaves[0]["present"], true, "{s}");
    assert_eq!(leaves[0]["path"], out.to_str().unwrap(), "{s}");
    // verify checks it there, by name too.
    let all = lib.ok(&["verify"]);
    assert!(all.contains("1 base, 1 leaf checked: all good"), "{all}");
    let named = lib.ok(&["verify", LEAF]);
    assert!(named.contains("1 leaf checked: all good"), "{named}");
    let copy = out.join("Virtual Disk.vmdk");
    let good = fs::read_to_string(&copy).unwrap();
    let at = good.find("CID=").unwrap() + 4;
    let mut bad = good.clone().into_bytes();
    bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
    fs::write(&copy, bad).unwrap();
    let o = lib.run(&["verify", LEAF]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(&format!("PROBLEM: {}/", out.display())), "not checked where it is: {}", text(&o));
    fs::write(&copy, good).unwrap();
    // remove-base refuses, naming it and where it is.
    let base_before = tree(&lib.base_dir(BASE));
    let o = lib.run(&["remove-base", BASE, "--yes"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(&format!("{LEAF:?}")) && text(&o).contains(out.to_str().unwrap()), "{}", text(&o));
    // forget refuses while it exists.
    let o = lib.run(&["forget", LEAF]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("still"), "{}", text(&o));
    assert_eq!(tree(&lib.base_dir(BASE)), base_before, "a refusal changed the base");
    // Deleted by hand: the base still refuses to go, and says how to forget the leaf.
    fs::remove_dir_all(&out).unwrap();
    let o = lib.run(&["remove-base", BASE, "--yes"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(&format!("leafd forget {LEAF:?}")), "{}", text(&o));
    let o = lib.run(&["verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is missing") && text(&o).contains("leafd forget"), "{}", text(&o));
    assert_eq!(tree(&lib.base_dir(BASE)), base_before, "verify changed the base's list");
    let said = lib.ok(&["forget", LEAF]);
    assert!(said.contains("forgot leaf"), "{said}");
    let said = lib.ok(&["remove-base", BASE, "--delete", "--yes"]);
    assert!(said.contains("deleted"), "{said}");
    assert!(!lib.base_dir(BASE).exists());
    verify_ok(&lib, &lib.root, "after remove-base");
}

/// A leaf whose entry in its base's list was deleted by hand is still a leaf of that base: the
/// base is not removed, and verify writes the entry back.
#[test]
fn a_marker_deleted_by_hand_comes_back_and_the_base_stays() {
    let lib = Lib::new();
    let vm = small_vm(BASE);
    let base = base_from(&lib, &vm);
    lib.ok(&["new-leaf", BASE, LEAF]);
    let markers = leaf_list(&base);
    assert_eq!(markers.len(), 1);
    let entry = fs::read(&markers[0]).unwrap();
    fs::remove_file(&markers[0]).unwrap();
    let o = lib.run(&["remove-base", BASE, "--yes"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(&format!("{LEAF:?}")), "{}", text(&o));
    let out = lib.ok(&["verify"]);
    assert!(out.contains("did not list this leaf; added"), "{out}");
    assert_eq!(leaf_list(&base), markers);
    let back: serde_json::Value = serde_json::from_slice(&fs::read(&markers[0]).unwrap()).unwrap();
    let was: serde_json::Value = serde_json::from_slice(&entry).unwrap();
    assert_eq!(back["id"], was["id"]);
    for d in &vm.disks {
        qemu_reads(&lib.leaf_dir(LEAF).join(delta_name(&d.file)), d);
    }
}

/// verify never deletes an entry it cannot read: it rewrites it from the leaf when the leaf is
/// there, and otherwise reports it and keeps it (the base stays) until `leafd forget ID`.
#[test]
fn verify_never_deletes_a_marker_it_cannot_read() {
    let lib = Lib::new();
    let vm = small_vm(BASE);
    let base = base_from(&lib, &vm);
    lib.ok(&["new-leaf", BASE, LEAF]);
    lib.ok(&["new-leaf", BASE, "Gone"]);
    let id_of = |name: &str| record(&lib.leaf_dir(name), "leaf")["id"].as_str().unwrap().to_string();
    let (web, gone) = (id_of(LEAF), id_of("Gone"));
    let marker = |id: &str| base.join(".leafd/leaves").join(format!("{id}.json"));
    // The leaf is there: its entry is rewritten from its record.
    fs::write(marker(&web), b"{ damaged").unwrap();
    let out = lib.ok(&["verify"]);
    assert!(out.contains("rewritten from the leaf's record"), "{out}");
    assert_eq!(record(&base, &format!("leaves/{web}"))["name"], LEAF);
    // The leaf is gone: the entry is kept, byte for byte, and the base with it.
    fs::remove_dir_all(lib.leaf_dir("Gone")).unwrap();
    fs::write(marker(&gone), b"\xff\xfe not json").unwrap();
    for _ in 0..2 {
        let o = lib.run(&["verify"]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            text(&o).contains("cannot be read") && text(&o).contains(&format!("leafd forget {gone}")),
            "{}",
            text(&o)
        );
        assert_eq!(fs::read(marker(&gone)).unwrap(), b"\xff\xfe not json", "verify changed the entry");
    }
    lib.ok(&["promote", LEAF]);
    let o = lib.run(&["remove-base", BASE, "--yes"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("cannot be read"), "{}", text(&o));
    assert!(base.exists());
    let said = lib.ok(&["forget", &gone]);
    assert!(said.contains("forgot leaf"), "{said}");
    lib.ok(&["remove-base", BASE, "--yes"]);
    verify_ok(&lib, &lib.root, "after forget and remove-base");
}

// ---------------------------------------------------------------------------------------------
// 6. recover --list, --show, --discard

#[test]
fn recover_list_show_and_discard() {
    let lib = Lib::new();
    let vm = small_vm(BASE);
    base_from(&lib, &vm);
    assert!(lib.ok(&["recover", "--list"]).contains("no interrupted operations"));
    let o = lib
        .command(&["new-leaf", BASE, LEAF, "--snapshot", "native"])
        .env("LEAFD_FAULT", "new-leaf:deltas-written")
        .output()
        .unwrap();
    assert!(killed(&o), "{}", text(&o));
    let ids = journal_ids(&lib.root);
    assert_eq!(ids.len(), 1);
    let id = &ids[0];
    let list = lib.ok(&["recover", "--list"]);
    assert_eq!(list.trim(), format!("{id}  new-leaf  interrupted"), "{list}");
    let staging = lib.root.join(format!(".leafd-staging-{id}"));
    assert!(staging.is_dir());
    let shown = lib.ok(&["recover", "--show", id]);
    assert!(shown.contains("\"op\": \"new-leaf\"") && shown.contains(&format!("\"id\": \"{id}\"")), "{shown}");
    assert!(shown.contains(&format!("present: {}", lib.base_dir(BASE).display())), "{shown}");
    assert!(shown.contains(&format!("working folder: {}", staging.display())), "{shown}");
    // verify and status count it.
    let o = lib.run(&["verify"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("1 interrupted operation(s)"), "{}", text(&o));
    let s: serde_json::Value = serde_json::from_str(&lib.ok(&["status", "--json"])).unwrap();
    assert_eq!(s["interrupted"], 1);
    // Unknown ids are refused, and change nothing.
    for flag in ["--show", "--discard"] {
        let o = lib.run(&["recover", flag, "no-such-id"]);
        assert_eq!(o.status.code(), Some(1), "{flag}: {}", text(&o));
        assert!(text(&o).contains("no such interrupted operation"), "{flag}: {}", text(&o));
    }
    let staged = tree(&staging);
    let said = lib.ok(&["recover", "--discard", id]);
    assert!(said.contains(&format!("working folder: {}", staging.display())), "{said}");
    assert!(said.contains("nothing was moved or deleted"), "{said}");
    assert_eq!(tree(&staging), staged, "--discard touched the working folder");
    assert!(journal_ids(&lib.root).is_empty());
    assert!(lib.ok(&["recover", "--list"]).contains("no interrupted operations"));
    assert!(lib.ok(&["recover"]).contains("0 interrupted operation(s) left"));
    // The person removes what --show named; the library is whole.
    fs::remove_dir_all(&staging).unwrap();
    verify_ok(&lib, &lib.root, "after --discard");
    lib.ok(&["new-leaf", BASE, LEAF]);
}

/// A journal whose operation is running (its lock held by another process) is listed as running,
/// left alone by recovery, and cannot be discarded; once its process is gone it is recovered.
#[test]
fn a_running_operation_cannot_be_discarded() {
    let lib = Lib::new();
    let vm = small_vm(BASE);
    base_from(&lib, &vm);
    // A vmrun that takes its time: New Leaf runs, its journal locked, until it is killed.
    let slow = vmrun_stand_in(lib.tmp.path(), "slow", "exec sleep 20");
    let mut running = lib
        .command(&["new-leaf", BASE, LEAF, "--snapshot", "vmrun"])
        .env("LEAFD_VMRUN", &slow)
        .env("LEAFD_VMRUN_TIMEOUT", "30")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !fs::read_to_string(lib.tmp.path().join("args.log")).is_ok_and(|a| a.contains("snapshot")) {
        assert!(std::time::Instant::now() < deadline, "vmrun was not started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let id = journal_ids(&lib.root).remove(0);
    let staging = lib.root.join(format!(".leafd-staging-{id}"));
    let list = lib.ok(&["recover", "--list"]);
    assert_eq!(list.trim(), format!("{id}  new-leaf  running now"), "{list}");
    let before = tree(&lib.root);
    let o = lib.run(&["recover", "--discard", &id]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("running now"), "{}", text(&o));
    assert!(lib.ok(&["recover"]).contains("0 interrupted operation(s) left"), "a running operation is not pending");
    // (verify would wait for the base's lock, which New Leaf holds while it runs.)
    let s: serde_json::Value = serde_json::from_str(&lib.ok(&["status", "--json"])).unwrap();
    assert_eq!(s["interrupted"], 0, "{s}");
    assert_eq!(tree(&lib.root), before, "the running operation's files were touched");
    assert!(staging.is_dir() && journal_ids(&lib.root) == [id.clone()]);
    // Its process gone, it is an interrupted operation like any other.
    running.kill().unwrap();
    running.wait().unwrap();
    let list = lib.ok(&["recover", "--list"]);
    assert_eq!(list.trim(), format!("{id}  new-leaf  interrupted"), "{list}");
    lib.ok(&["recover"]);
    assert!(!staging.exists() && journal_ids(&lib.root).is_empty());
    assert!(!lib.leaf_dir(LEAF).exists());
    verify_ok(&lib, &lib.root, "after the killed operation was undone");
}

// ---------------------------------------------------------------------------------------------
// 2. Hostile journals: recovery deletes (and moves) nothing a journal names unless it is its own
//    working folder, stamped by it

/// A library with things a hostile journal could aim at: a base and its leaf, a leaf relinked
/// outside the library, a user's own VM and empty folder, folders outside the library, and
/// working folders of other operations.
struct Hostile {
    lib: Lib,
    elsewhere: PathBuf,
    base_id: String,
    leaf_id: String,
    far_id: String,
}

/// A working folder stamp, as leafd writes it.
fn stamp_of(dir: &Path, op: &str, kind: &str) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(".leafd-stamp"), serde_json::json!({"op": op, "kind": kind}).to_string()).unwrap();
}

impl Hostile {
    fn new() -> Hostile {
        let lib = Lib::new();
        let vm = small_vm(BASE);
        let base = base_from(&lib, &vm);
        lib.ok(&["new-leaf", BASE, LEAF]);
        lib.ok(&["new-leaf", BASE, "Far"]);
        let elsewhere = lib.tmp.path().join("elsewhere");
        fs::create_dir_all(elsewhere.join("Important")).unwrap();
        let far = elsewhere.join("Far.vmwarevm");
        mv(&lib.leaf_dir("Far"), &far);
        lib.ok(&["relink", far.to_str().unwrap()]);
        // The user's own things.
        let precious = small_vm("Precious").build(&lib.root).unwrap();
        fs::write(precious.join("notes.json"), b"{\"mine\": true}").unwrap();
        fs::create_dir(lib.root.join("Empty Folder")).unwrap();
        fs::write(elsewhere.join("Important/notes.json"), b"{\"mine\": true}").unwrap();
        fs::write(elsewhere.join("Important/file.txt"), b"keep me").unwrap();
        cp_a(&base, &elsewhere.join("Ubuntu backup"));
        // Working folders of other operations: one stamped, one (a renamed VM) not.
        let other = lib.root.join(".leafd-staging-other-op");
        stamp_of(&other, "other-op", "staging");
        fs::write(other.join("keep.txt"), b"another operation's").unwrap();
        small_vm("Stolen").build(&lib.root.join("Bases")).unwrap();
        mv(&lib.root.join("Bases/Stolen.vmwarevm"), &lib.root.join("Bases/.leafd-staging-other"));
        let id = |p: &Path| record(p, "leaf")["id"].as_str().unwrap().to_string();
        Hostile {
            base_id: record(&base, "base")["id"].as_str().unwrap().to_string(),
            leaf_id: id(&lib.leaf_dir(LEAF)),
            far_id: id(&far),
            elsewhere,
            lib,
        }
    }

    fn root(&self) -> &Path {
        &self.lib.root
    }

    /// Everything recovery must leave as it is.
    fn snapshot(&self) -> Vec<String> {
        let mut v = tree(self.root());
        v.extend(tree(&self.elsewhere));
        v
    }

    /// The library's identity as a format 2 journal records it.
    fn library(&self) -> serde_json::Value {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(self.root()).unwrap();
        serde_json::json!({"root": self.root(), "dev": m.dev(), "ino": m.ino()})
    }

    fn write_v2(&self, id: &str, op: &str, plan: serde_json::Value, library: Option<serde_json::Value>) {
        let j = serde_json::json!({"format": 2, "id": id, "library": library.unwrap_or_else(|| self.library()), "op": op, "plan": plan});
        self.write(id, &j);
    }

    /// A format 1 journal: the plan itself, tagged with its operation.
    fn write_v1(&self, id: &str, op: &str, mut plan: serde_json::Value) {
        plan["op"] = op.into();
        self.write(id, &plan);
    }

    fn write(&self, id: &str, j: &serde_json::Value) {
        fs::write(self.root().join(".leafd/journal").join(format!("{id}.json")), serde_json::to_vec_pretty(j).unwrap())
            .unwrap();
    }

    fn new_leaf_plan(&self, id: &str) -> serde_json::Value {
        serde_json::json!({"id": id, "base": "Bases/Ubuntu", "base_id": self.base_id, "name": "Ghost", "request": null,
            "leaf_ref": {"format": 2, "id": id, "name": "Ghost", "path": self.root().join("Ghost.vmwarevm"), "created": "2026-12-01T10:00:00+00:00"}})
    }

    fn make_base_plan(&self, id: &str, name: &str, source: &str) -> serde_json::Value {
        serde_json::json!({"id": id, "name": name, "source": source, "copy": false, "vmx": format!("{name}.vmx"),
            "disk_files": [], "flatten": [], "from_leaf": null, "repointed": [],
            "record": {"format": 2, "id": id, "name": name, "source": source, "created": "2026-12-01T10:00:00+00:00",
                       "vmx": format!("{name}.vmx.base"), "disks": []}})
    }

    fn promote_plan(&self, id: &str, leaf: &str, leaf_id: &str) -> serde_json::Value {
        serde_json::json!({"id": id, "leaf": leaf, "base": ["Bases/Ubuntu", self.base_id], "leaf_id": leaf_id})
    }
}

/// One hostile journal: its id, and what writes it (with any folder it needs).
type Writer = fn(&Hostile, &str);

/// Hostile journals: a name, what it is, and whether it is kept (else it is one leafd could have
/// written, and recovering it touches nothing).
const HOSTILE_JOURNALS: &[(&str, &str, bool, Writer)] = &[
    ("nl-derived-escape", "a New Leaf whose id makes its staging folder another folder", true, |h, id| {
        // .leafd-staging-other-op/../Empty Folder is the user's empty folder.
        let mut plan = h.new_leaf_plan("other-op/../Empty Folder");
        plan["leaf_ref"]["id"] = id.into();
        h.write_v2(id, "new-leaf", plan, None);
    }),
    ("nl-stamp-of-another", "a New Leaf whose staging folder carries another operation's stamp", true, |h, id| {
        let staging = h.root().join(format!(".leafd-staging-{id}"));
        stamp_of(&staging, "other-op", "staging");
        fs::write(staging.join("keep.txt"), b"not this journal's").unwrap();
        h.write_v2(id, "new-leaf", h.new_leaf_plan(id), None);
    }),
    ("nl-live-leaf", "a New Leaf with the id of a leaf that exists (outside the library)", true, |h, _| {
        let id = h.far_id.clone();
        h.write_v2(&id, "new-leaf", h.new_leaf_plan(&id), None);
    }),
    ("nl-request-dotdot", "a New Leaf whose request folder climbs out of the library", true, |h, id| {
        let mut plan = h.new_leaf_plan(id);
        plan["request"] = "New Leaf/../../elsewhere/Important".into();
        h.write_v2(id, "new-leaf", plan, None);
    }),
    ("mb-dotdot-files", "a Make Base whose files climb out of its staging folder", true, |h, id| {
        fs::create_dir(h.root().join(format!("Bases/.leafd-staging-{id}"))).unwrap();
        let mut plan = h.make_base_plan(id, "Evil", "Make Base/Evil.vmwarevm");
        let p = "../../Precious.vmwarevm";
        plan["disk_files"] = serde_json::json!([{"path": format!("{p}/Precious.vmx"), "mode": 511, "locked": false}]);
        plan["flatten"] = serde_json::json!([{"disk": 0, "top": format!("{p}/Data.vmdk"), "target": format!("{p}/Data-flat.vmdk"), "files": [format!("{p}/Data-flat.vmdk")], "split": null}]);
        plan["repointed"] =
            serde_json::json!([{"path": format!("{p}/Precious.vmxf"), "original": "overwritten", "new": "x"}]);
        plan["vmx"] = "Evil.vmx".into();
        plan["record"]["vmx"] = format!("{p}/Precious.nvram").into();
        h.write_v2(id, "make-base", plan, None);
    }),
    ("mb-source-dotdot", "a Make Base whose source climbs out of the library", true, |h, id| {
        fs::create_dir(h.root().join(format!("Bases/.leafd-staging-{id}"))).unwrap();
        h.write_v2(id, "make-base", h.make_base_plan(id, "Evil", "../elsewhere/Important"), None);
    }),
    ("mb-other-library", "a Make Base with an absolute source, claiming another library", true, |h, id| {
        fs::create_dir(h.root().join(format!("Bases/.leafd-staging-{id}"))).unwrap();
        let source = h.elsewhere.join("Important");
        let plan = h.make_base_plan(id, "Evil", source.to_str().unwrap());
        h.write_v2(id, "make-base", plan, Some(serde_json::json!({"root": "/nonexistent/lib", "dev": 1, "ino": 1})));
    }),
    ("mb-takes-another-staging", "a Make Base whose plan names another operation's id", true, |h, id| {
        h.write_v2(id, "make-base", h.make_base_plan("other", "Stolen", "Make Base/Stolen.vmwarevm"), None);
    }),
    (
        "mb-removes-a-backup",
        "a finished cross-volume Make Base naming a backup of the base as its source",
        false,
        |h, _| {
            let id = h.base_id.clone();
            let mut plan = h.make_base_plan(&id, BASE, h.elsewhere.join("Ubuntu backup").to_str().unwrap());
            plan["copy"] = true.into();
            plan["vmx"] = "Ubuntu.vmx.base".into();
            plan["record"]["vmx"] = "Ubuntu.vmx.base".into();
            h.write_v2(&id, "make-base", plan, None);
        },
    ),
    ("mb-unlinks-a-leaf", "a finished Make Base of a leaf naming a leaf that exists", true, |h, _| {
        let id = h.base_id.clone();
        let mut plan = h.make_base_plan(&id, BASE, "Make Base/Gone.vmwarevm");
        plan["from_leaf"] = serde_json::json!({"base": "Bases/Ubuntu", "leaf_id": h.far_id});
        h.write_v2(&id, "make-base", plan, None);
    }),
    (
        "pr-fake-aside",
        "a Promote of a live leaf whose set-aside folder carries another operation's stamp",
        true,
        |h, id| {
            let aside = h.root().join(format!(".leafd-promoted-{id}"));
            stamp_of(&aside, "other-op", "promoted");
            fs::write(aside.join("keep.txt"), b"not this journal's").unwrap();
            // (The leaf id is no leaf's: only the stamp stands in the way.)
            h.write_v2(id, "promote", h.promote_plan(id, "Web 1.vmwarevm", "no-such-leaf"), None);
        },
    ),
    ("pr-live-leaf", "a Promote of a user's VM naming a leaf that exists", true, |h, id| {
        h.write_v2(id, "promote", h.promote_plan(id, "Precious.vmwarevm", &h.far_id), None);
    }),
    ("pr-leaf-id-escape", "a Promote whose leaf id climbs out of the base's list", true, |h, id| {
        h.write_v2(id, "promote", h.promote_plan(id, "Precious.vmwarevm", "../../../../Precious.vmwarevm/notes"), None);
    }),
    ("pr-other-library", "a Promote of an absolute path, claiming another library", true, |h, id| {
        let leaf = h.elsewhere.join("Important");
        let plan = h.promote_plan(id, leaf.to_str().unwrap(), &h.leaf_id);
        h.write_v2(id, "promote", plan, Some(serde_json::json!({"root": "/nonexistent/lib", "dev": 1, "ino": 1})));
    }),
    ("remove-zz", "a removal whose hidden folder carries another operation's stamp", true, |h, id| {
        let hidden = h.root().join("Bases/.leafd-removing-zz");
        stamp_of(&hidden, "other-op", "removing");
        let f = hidden.join("disk-s001.vmdk");
        fs::write(&f, b"protected").unwrap();
        fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
        h.write_v2(id, "remove-base", serde_json::json!({"id": "zz", "name": "Zed"}), None);
    }),
    ("remove-not-this-base", "a removal naming a base that is there under another id", true, |h, id| {
        h.write_v2(id, "remove-base", serde_json::json!({"id": "not-this-base", "name": BASE}), None);
    }),
    ("future", "a journal of a format newer than this leafd", true, |h, id| {
        h.write(id, &serde_json::json!({"format": 3, "id": id, "op": "new-leaf", "plan": {}}));
    }),
    ("v1-nl-staging-user", "a format 1 New Leaf naming a user's VM as its staging folder", true, |h, id| {
        let plan = serde_json::json!({"id": id, "base_dir": h.root().join("Bases/Ubuntu"), "base_id": h.base_id,
            "name": "Ghost", "staging": h.root().join("Precious.vmwarevm"), "target": h.root().join("Ghost.vmwarevm"),
            "request": null, "leaf_ref": {"id": id, "name": "Ghost", "path": h.root().join("Ghost.vmwarevm"), "created": "x"}});
        h.write_v1(id, "new-leaf", plan);
    }),
    ("v1-mb-staging-user", "a format 1 Make Base naming a folder outside as its staging folder", true, |h, id| {
        let root = h.root();
        let plan = serde_json::json!({"id": id, "name": "Evil", "source": root.join("Make Base/Evil.vmwarevm"),
            "staging": h.elsewhere.join("Important"), "target": root.join("Bases/Evil"), "copy": true,
            "vmx": "Evil.vmx", "disk_files": [], "flatten": [], "from_leaf": null,
            "record": {"id": id, "name": "Evil", "source": "x", "created": "x", "vmx": "Evil.vmx.base", "disks": []}});
        h.write_v1(id, "make-base", plan);
    }),
    ("v1-pr-leaf-id-escape", "a format 1 Promote whose leaf id climbs out of the base's list", true, |h, id| {
        let root = h.root();
        let plan = serde_json::json!({"id": id, "leaf": root.join("Precious.vmwarevm"),
            "staging": root.join(format!(".leafd-staging-{id}")), "aside": root.join(format!(".leafd-promoted-{id}")),
            "base": [root.join("Bases/Ubuntu"), h.base_id], "leaf_id": "../../../../Precious.vmwarevm/notes"});
        h.write_v1(id, "promote", plan);
    }),
    ("remove-v1", "a format 1 removal naming a user's folder as the hidden base", true, |h, id| {
        let root = h.root();
        let plan = serde_json::json!({"id": id.trim_start_matches("remove-"), "name": "Zed", "dir": root.join("Bases/Zed"),
            "hidden": h.elsewhere.join("Important"), "drop_folder": root.join("New Leaf/Zed")});
        h.write_v1(id, "remove-base", plan);
    }),
];

/// The journal's id as the writer names it (some take the id of what they aim at).
fn written_id(h: &Hostile, name: &str) -> String {
    match name {
        "nl-live-leaf" => h.far_id.clone(),
        "mb-removes-a-backup" | "mb-unlinks-a-leaf" => h.base_id.clone(),
        other => other.to_string(),
    }
}

/// Every mutating command, each of which first recovers: whatever they do themselves, they must
/// leave what the journal names alone and report the journal kept.
const MUTATING: &[&[&str]] = &[
    &["recover"],
    &["new-leaf", BASE, LEAF],
    &["make-base", "/nonexistent/VM.vmwarevm"],
    &["promote", "No Such Leaf"],
    &["remove-base", "No Such Base", "--yes"],
    &["relink", LEAF],
    &["forget", "No Such Leaf"],
];

#[test]
fn hostile_journals_are_kept_and_touch_nothing() {
    let mut failures = Vec::new();
    for &(name, what, kept, write) in HOSTILE_JOURNALS {
        let h = Hostile::new();
        write(&h, name);
        let id = written_id(&h, name);
        let journal = h.root().join(".leafd/journal").join(format!("{id}.json"));
        let bytes = fs::read(&journal).unwrap();
        let before = h.snapshot();
        let listed_before = leaf_list(&h.root().join("Bases").join(BASE));
        let mut problems = Vec::new();
        if !kept {
            let o = h.lib.run(&["recover"]);
            if !o.status.success() || h.snapshot() != before || journal.exists() {
                problems.push(format!("not finished harmlessly: {}", text(&o)));
            }
            if !problems.is_empty() {
                failures.push(format!("{name} ({what}):\n    {}", problems.join("\n    ")));
            }
            continue;
        }
        for args in MUTATING {
            let o = h.lib.run(args);
            let out = text(&o);
            if args == &["recover"] && o.status.code() != Some(1) {
                problems.push(format!("recover exit {:?}: {out}", o.status.code()));
            }
            if !out.contains(&format!("interrupted operation {id} kept"))
                || !out.contains(&format!("recover --show {id}"))
            {
                problems.push(format!("{args:?} does not report the journal kept: {out}"));
            }
            if h.snapshot() != before {
                let now = h.snapshot();
                let gone: Vec<&String> = before.iter().filter(|l| !now.contains(l)).collect();
                let new: Vec<&String> = now.iter().filter(|l| !before.contains(l)).collect();
                problems.push(format!("{args:?} changed things: was {gone:?}, now {new:?}"));
                break;
            }
            if fs::read(&journal).ok().as_ref() != Some(&bytes) {
                problems.push(format!("{args:?} did not keep the journal as it was"));
                break;
            }
        }
        if leaf_list(&h.root().join("Bases").join(BASE)) != listed_before {
            problems.push("the base's list of leaves changed".into());
        }
        // A command that succeeds still succeeds with the journal kept.
        if problems.is_empty() {
            let o = h.lib.run(&["new-leaf", BASE, "Extra"]);
            if !o.status.success() {
                problems.push(format!("new-leaf fails for ever: {}", text(&o)));
            }
            fs::remove_dir_all(h.lib.leaf_dir("Extra")).ok();
            h.lib.run(&["forget", "Extra"]);
        }
        // --show, then --discard: a person deals with it; leafd is whole again.
        let shown = h.lib.run(&["recover", "--show", &id]);
        if !shown.status.success() {
            problems.push(format!("--show failed: {}", text(&shown)));
        }
        let o = h.lib.run(&["recover", "--discard", &id]);
        if !o.status.success() {
            problems.push(format!("--discard failed: {}", text(&o)));
        }
        for args in [&["recover"][..], &["verify"]] {
            let o = h.lib.run(args);
            if !o.status.success() {
                problems.push(format!("{args:?} after --discard: {}", text(&o)));
            }
        }
        if problems.is_empty() && h.snapshot() != before {
            problems.push("the library is not as it was after --discard".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{name} ({what}):\n    {}", problems.join("\n    ")));
        }
    }
    assert!(failures.is_empty(), "{} hostile journal(s) not handled:\n{}", failures.len(), failures.join("\n"));
}

/// The agent recovers at start (and every five minutes): with every hostile journal at once, it
/// keeps each, logs why, touches nothing, and goes on working.
#[test]
fn the_agent_keeps_hostile_journals_and_touches_nothing() {
    use std::time::{Duration, Instant};
    let h = Hostile::new();
    let mut ids = Vec::new();
    for &(name, _, kept, write) in HOSTILE_JOURNALS {
        if kept {
            write(&h, name);
            ids.push(written_id(&h, name));
        }
    }
    let before = h.snapshot();
    let journals_before = journals(h.root());
    let log = || fs::read_to_string(h.lib.log_dir().join("leafd.log")).unwrap_or_default();
    let mut agent = h
        .lib
        .command(&["agent", "--settle", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ids.iter().all(|id| log().contains(&format!("interrupted operation {id} kept"))) {
        assert!(Instant::now() < deadline, "the agent did not report every journal kept: {}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still at work: a leaf asked for now is made.
    fs::create_dir(h.root().join("New Leaf").join(BASE).join("Agent Leaf")).unwrap();
    while !h.lib.leaf_dir("Agent Leaf").join(".leafd/leaf.json").is_file() {
        assert!(Instant::now() < deadline, "the agent stopped working: {}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(&agent), rustix::process::Signal::TERM);
    let status = agent.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", log());
    assert_eq!(journals(h.root()), journals_before, "the agent did not keep the journals as they were");
    fs::remove_dir_all(h.lib.leaf_dir("Agent Leaf")).unwrap();
    h.lib.ok(&["forget", "Agent Leaf"]);
    let now = h.snapshot();
    let gone: Vec<&String> = before.iter().filter(|l| !now.contains(l)).collect();
    let new: Vec<&String> = now.iter().filter(|l| !before.contains(l)).collect();
    assert!(gone.is_empty() && new.is_empty(), "the agent changed things: was {gone:?}, now {new:?}");
    for id in &ids {
        h.lib.ok(&["recover", "--discard", id]);
    }
    h.lib.ok(&["recover"]);
    verify_ok(&h.lib, h.root(), "after every journal was discarded");
}

// ---------------------------------------------------------------------------------------------
// 3. Permissions: leafd's own folder is private whatever the umask; the user's VMs are not

/// The real binary under umask `mask`.
fn with_umask(mut c: Command, mask: u32) -> Output {
    use std::os::unix::process::CommandExt;
    // SAFETY: umask is async-signal-safe and touches nothing but this (forked) process.
    unsafe {
        c.pre_exec(move || {
            libc::umask(mask as libc::mode_t);
            Ok(())
        });
    }
    c.output().unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `.leafd/` and its folders 0700, every file in them 0600.
fn state_is_private(root: &Path, what: &str) {
    let state = root.join(".leafd");
    assert_eq!(mode(&state), 0o700, "{what}: {}", state.display());
    for p in walk(&state) {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&p), want, "{what}: {} is {:o}", p.display(), mode(&p));
    }
}

#[test]
fn leafds_own_folder_is_private_whatever_the_umask_and_the_vms_keep_it() {
    for mask in [0o000, 0o002] {
        let what = format!("umask {mask:03o}");
        let lib = Lib::new();
        let vm = small_vm(BASE);
        let bundle = vm.build(&lib.make_base_dir()).unwrap();
        let o = unless_busy(|| with_umask(lib.command(&["make-base", bundle.to_str().unwrap()]), mask));
        assert!(o.status.success(), "{what}: {}", text(&o));
        state_is_private(&lib.root, &what);
        // Killed with its journal on disk and locks taken.
        let mut c = lib.command(&["new-leaf", BASE, LEAF, "--snapshot", "native"]);
        c.env("LEAFD_FAULT", "new-leaf:vmx-written");
        let o = with_umask(c, mask);
        assert!(killed(&o), "{what}: {}", text(&o));
        assert_eq!(journal_ids(&lib.root).len(), 1);
        state_is_private(&lib.root, &what);
        let o = with_umask(lib.command(&["new-leaf", BASE, LEAF]), mask);
        assert!(o.status.success(), "{what}: {}", text(&o));
        state_is_private(&lib.root, &what);
        // The user's things follow the umask: the library's folders, the base's records and drop
        // folder, the leaf and its files.
        let dir_mode = 0o777 & !mask;
        let file_mode = 0o666 & !mask;
        for d in [
            lib.root.join("Bases"),
            lib.root.join("New Leaf"),
            lib.root.join("New Leaf").join(BASE),
            lib.base_dir(BASE).join(".leafd"),
            lib.leaf_dir(LEAF),
            lib.leaf_dir(LEAF).join(".leafd"),
        ] {
            assert_eq!(mode(&d), dir_mode, "{what}: {}", d.display());
        }
        for f in [
            lib.leaf_dir(LEAF).join(format!("{LEAF}.vmx")),
            lib.leaf_dir(LEAF).join(format!("{LEAF}.vmsd")),
            lib.leaf_dir(LEAF).join("Virtual Disk.vmdk"),
            lib.leaf_dir(LEAF).join("Virtual Disk-000001.vmdk"),
            lib.leaf_dir(LEAF).join(".leafd/leaf.json"),
            lib.base_dir(BASE).join(".leafd/base.json"),
        ] {
            assert_eq!(mode(&f), file_mode, "{what}: {}", f.display());
        }
        // The base's disks are write-protected, the rest of the VM as the user had it.
        assert_eq!(mode(&lib.base_dir(BASE).join("Virtual Disk-s001.vmdk")), 0o444, "{what}");
        assert_eq!(mode(&lib.base_dir(BASE).join(format!("{BASE}.nvram"))), 0o644, "{what}");
        for d in &vm.disks {
            qemu_reads(&lib.leaf_dir(LEAF).join(delta_name(&d.file)), d);
        }
    }
}

/// A `.leafd` an older leafd (or a copy) left open to others is made private by the next command,
/// its journals and locks with it.
#[test]
fn an_open_leafd_folder_is_made_private() {
    for mask in [0o000, 0o002] {
        let what = format!("umask {mask:03o}");
        let lib = Lib::new();
        let vm = small_vm(BASE);
        base_from(&lib, &vm);
        let o = lib
            .command(&["new-leaf", BASE, LEAF, "--snapshot", "native"])
            .env("LEAFD_FAULT", "new-leaf:deltas-written")
            .output()
            .unwrap();
        assert!(killed(&o), "{}", text(&o));
        for p in std::iter::once(lib.root.join(".leafd")).chain(walk(&lib.root.join(".leafd"))) {
            let open = if p.is_dir() { 0o755 } else { 0o644 };
            fs::set_permissions(&p, fs::Permissions::from_mode(open)).unwrap();
        }
        let o = with_umask(lib.command(&["status"]), mask);
        assert!(o.status.success(), "{what}: {}", text(&o));
        assert_eq!(mode(&lib.root.join(".leafd")), 0o755, "{what}: a read-only command changed nothing");
        let o = with_umask(lib.command(&["recover"]), mask);
        assert!(o.status.success(), "{what}: {}", text(&o));
        state_is_private(&lib.root, &what);
        assert!(!lib.leaf_dir(LEAF).exists() && journal_ids(&lib.root).is_empty(), "{what}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Format 1 journals are still recovered

impl Case {
    /// Rewrites the operation's journal as leafd wrote it before format 2 (the plans of
    /// `git show 87f0ad6:src/library/*.rs`, which `recovery::V1*` read): absolute paths, working
    /// folders named in the plan, no `format` or `library`; and takes away what format 1 did not
    /// have on disk: working folder stamps, and parent copies repointed in a leaf made a base.
    fn to_format_1(&self) {
        self.format_1.set(true);
        let ids = journal_ids(self.root());
        assert_eq!(ids.len(), 1, "{:?}", ids);
        let file = self.root().join(".leafd/journal").join(format!("{}.json", ids[0]));
        let j: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        assert_eq!(j["format"], 2);
        let root = PathBuf::from(j["library"]["root"].as_str().unwrap());
        let abs = |v: &serde_json::Value| -> serde_json::Value {
            let p = Path::new(v.as_str().unwrap());
            serde_json::json!(if p.is_absolute() { p.to_path_buf() } else { root.join(p) })
        };
        let plan = &j["plan"];
        let id = plan["id"].as_str().unwrap();
        let v1 = match j["op"].as_str().unwrap() {
            "make-base" => {
                let name = plan["name"].as_str().unwrap();
                let staging = root.join("Bases").join(format!(".leafd-staging-{id}"));
                for r in plan["repointed"].as_array().unwrap() {
                    let p = staging.join(r["path"].as_str().unwrap());
                    if p.exists() {
                        fs::write(&p, r["original"].as_str().unwrap()).unwrap();
                    }
                }
                let rec = &plan["record"];
                let disks: Vec<serde_json::Value> = rec["disks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| {
                        serde_json::json!({"node": d["node"], "descriptor": d["descriptor"], "cid": d["cid"],
                            "capacity": d["capacity"], "create_type": d["create_type"], "fingerprint": d["fingerprint"]})
                    })
                    .collect();
                serde_json::json!({"op": "make-base", "id": id, "name": name, "source": abs(&plan["source"]),
                    "staging": staging, "target": root.join("Bases").join(name), "copy": plan["copy"],
                    "vmx": plan["vmx"], "disk_files": plan["disk_files"], "flatten": plan["flatten"],
                    "from_leaf": if plan["from_leaf"].is_null() { serde_json::Value::Null } else {
                        serde_json::json!([abs(&plan["from_leaf"]["base"]), plan["from_leaf"]["leaf_id"]]) },
                    "record": {"id": rec["id"], "name": rec["name"], "source": rec["source"], "created": rec["created"],
                               "vmx": rec["vmx"], "disks": disks}})
            }
            "new-leaf" => {
                let name = plan["name"].as_str().unwrap();
                let r = &plan["leaf_ref"];
                serde_json::json!({"op": "new-leaf", "id": id, "base_dir": abs(&plan["base"]), "base_id": plan["base_id"],
                    "name": name, "staging": root.join(format!(".leafd-staging-{id}")),
                    "target": root.join(format!("{name}.vmwarevm")),
                    "request": if plan["request"].is_null() { serde_json::Value::Null } else { abs(&plan["request"]) },
                    "leaf_ref": {"id": r["id"], "name": r["name"], "path": r["path"], "created": r["created"]}})
            }
            "promote" => {
                let leaf = PathBuf::from(abs(&plan["leaf"]).as_str().unwrap());
                let parent = leaf.parent().unwrap();
                serde_json::json!({"op": "promote", "id": id, "leaf": leaf,
                    "staging": parent.join(format!(".leafd-staging-{id}")), "aside": parent.join(format!(".leafd-promoted-{id}")),
                    "base": if plan["base"].is_null() { serde_json::Value::Null } else {
                        serde_json::json!([abs(&plan["base"][0]), plan["base"][1]]) },
                    "leaf_id": plan["leaf_id"]})
            }
            "remove-base" => {
                let name = plan["name"].as_str().unwrap();
                serde_json::json!({"op": "remove-base", "id": id, "name": name, "dir": root.join("Bases").join(name),
                    "hidden": root.join("Bases").join(format!(".leafd-removing-{id}")),
                    "drop_folder": root.join("New Leaf").join(name)})
            }
            other => panic!("{other}"),
        };
        fs::write(&file, serde_json::to_vec_pretty(&v1).unwrap()).unwrap();
        // Format 1 stamped nothing.
        let mut places = vec![self.root().to_path_buf(), self.elsewhere.clone()];
        places.extend(self.other.as_ref().map(|o| o.path().to_path_buf()));
        for place in places {
            for p in walk(&place) {
                if p.file_name().is_some_and(|n| n == ".leafd-stamp") {
                    fs::remove_file(&p).unwrap();
                }
            }
        }
    }
}

/// Every step of `op` killed, its journal rewritten as format 1, then recovered in place and, on
/// a second run, in a moved library: the outcome is format 2's.
fn format_1(op: Op) {
    let start = std::time::Instant::now();
    for step in op.steps() {
        let case = Case::new(op);
        case.kill_at(step);
        case.to_format_1();
        let o = case.lib.run(&["recover"]);
        assert!(o.status.success(), "{op:?} {step}, format 1: {}", text(&o));
        case.check(case.root(), op.outcome(step), &format!("{step}, format 1"));
        moved(op, step, true);
    }
    eprintln!("{op:?}: {} steps in format 1 in {:.1} s", op.steps().len(), start.elapsed().as_secs_f64());
}

#[test]
fn format_1_make_base_is_recovered() {
    for op in [Op::MakeBase, Op::MakeBaseElsewhere, Op::MakeBaseOtherVolume, Op::MakeBaseOfLeaf] {
        format_1(op);
    }
}

#[test]
fn format_1_new_leaf_is_recovered() {
    format_1(Op::NewLeaf);
    format_1(Op::NewLeafVmrun);
}

#[test]
fn format_1_promote_is_recovered() {
    format_1(Op::Promote);
    format_1(Op::PromoteOutside);
}

#[test]
fn format_1_remove_base_is_recovered() {
    format_1(Op::RemoveBase);
}
