//! Durability (docs/durability.md, issues 11, 12 and 16), with the real binary on real files:
//!
//! - the ordering rule checked on durable's trace (`LEAFD_IO_TRACE`) of every operation, of
//!   verify's repairs, and of the recovery after a kill at every step;
//! - `strace` showing that every mutating system call leafd makes on the library is in that
//!   trace, so the trace (and the check) sees everything;
//! - an I/O error injected at every call the operations make after their journal is written
//!   (`LEAFD_FAULT=io:N`): each fails cleanly, `leafd recover` succeeds, and the library holds the
//!   untouched source or the finished result.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;
#[path = "common/strace.rs"]
mod strace;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::trace::{self, Op};
use common::*;
use leafd::testing::{SampleDisk, SampleVm};
use leafd::testing::{adopt, make_base, new_leaf, promote, remove_base, reset};
use leafd_formats::disk::DiskType;

const MIB: u64 = 1 << 20;
/// Longer than any operation here takes by far: beyond it the command hangs.
const TIME_LIMIT: Duration = Duration::from_secs(120);

/// A split disk and a monolithic one, small (as crash.rs uses), so both extent layouts go
/// through every call.
fn vm() -> SampleVm {
    SampleVm {
        name: "Durable".into(),
        disks: vec![
            SampleDisk::new("scsi0:0", "Virtual Disk.vmdk", DiskType::SplitSparse, 12 * MIB),
            SampleDisk::new("sata0:0", "Second.vmdk", DiskType::MonolithicSparse, 4 * MIB),
        ],
    }
}

const BASE: &str = "Durable";
const LEAF: &str = "Leaf";

/// Held while this process writes files, and while it starts a program: a child holds a copy of
/// every descriptor between fork and exec, so a sample disk being written in one thread would
/// look "open for writing by another program" to leafd's probe in a program another thread
/// started (the tests run in parallel threads).
static FORKS: Mutex<()> = Mutex::new(());

fn forks() -> MutexGuard<'static, ()> {
    FORKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a command to its end, or kills it and fails the test once it has run for [`TIME_LIMIT`].
fn run_limited(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let spawned = {
        let _forks = forks();
        cmd.spawn()
    };
    let child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{:?} is required by this test and is missing (.ci/run installs it)", cmd.get_program())
        }
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    };
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIME_LIMIT) {
        Ok(out) => out.expect("wait for leafd"),
        Err(_) => {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            panic!("{cmd:?} hung: still running after {TIME_LIMIT:?}");
        }
    }
}

/// A fresh trace file for one run, beside the library (never in it).
fn trace_file(lib: &Lib) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    lib.tmp.path().join(format!("trace-{}.jsonl", NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// The operations, each as the person would run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Make Base of a VM in `Make Base/`.
    MakeBase,
    /// Make Base of a VM on another volume: copied, compared, the source removed.
    MakeBaseAcross,
    /// Make Base of a leaf: its chain flattened into a new disk.
    MakeBaseOfLeaf,
    NewLeafNative,
    /// New Leaf with the vmrun stand-in (VMware's files, written by a child).
    NewLeafVmrun,
    Promote,
    RemoveBase,
    /// Relink of a leaf moved out of the library alone.
    Relink,
    /// Forget of a leaf deleted by hand.
    Forget,
    /// Adopt, in place, of a hand copy of the base's VM (made before the base), used since.
    Adopt,
    /// Adopt of such a copy dropped into `New Leaf/<base>/`: it ends up beside the leaves.
    AdoptDropped,
    /// Reset of a used leaf: its deltas and .nvram back to the base's, the old ones to the Trash.
    Reset,
}

/// A library set up for one run of an action, with what its source was before.
struct Scene {
    action: Action,
    lib: Lib,
    other: Option<OtherVolume>,
    vm: SampleVm,
    args: Vec<String>,
    vmrun: Option<PathBuf>,
    /// What the action changes, as it must be again when the action is undone.
    source: PathBuf,
    before: Vec<String>,
    /// Raw images (QEMU's reading) of the disks the action must keep as they read (Adopt).
    saved: Vec<PathBuf>,
}

/// `fingerprint_tree` without leafd's records, for trees whose records the action adds to.
fn without_records(tree: Vec<String>) -> Vec<String> {
    tree.into_iter().filter(|l| !is_records(l)).collect()
}

/// Runs leafd on `lib` and expects success.
fn ok(lib: &Lib, args: &[&str]) {
    let o = run_limited(&mut lib.command(args));
    assert!(o.status.success(), "leafd {args:?} failed: {}", text(&o));
}

/// Builds `vm` in `dir` (see [`FORKS`]).
fn build(vm: &SampleVm, dir: &Path) -> PathBuf {
    let _forks = forks();
    vm.build(dir).unwrap()
}

/// Builds `vm` in `Make Base/` and makes it a base.
fn base_from(lib: &Lib, vm: &SampleVm) -> PathBuf {
    let bundle = build(vm, &lib.make_base_dir());
    ok(lib, &["make-base", bundle.to_str().unwrap()]);
    lib.base_dir(&vm.name)
}

/// A base with one leaf of it.
fn base_and_leaf(lib: &Lib, vm: &SampleVm) -> PathBuf {
    let base = base_from(lib, vm);
    ok(lib, &["new-leaf", &vm.name, LEAF, "--snapshot", "native"]);
    base
}

/// A hand copy of the base's VM made before the base, used since: in place beside the leaves,
/// or `dropped` into `New Leaf/<base>/`. The adopt command and the copy.
fn adopt_scene(lib: &Lib, vm: &SampleVm, dropped: bool) -> (Vec<String>, PathBuf) {
    let bundle = build(vm, &lib.make_base_dir());
    let mut copy = lib.leaf_dir(LEAF);
    let o = tool("cp", &["-a", "--sparse=always", bundle.to_str().unwrap(), copy.to_str().unwrap()]);
    assert!(o.status.success(), "cp: {}", text(&o));
    ok(lib, &["make-base", bundle.to_str().unwrap()]);
    scribble(&copy, vm.disks.iter().map(|d| d.file.clone()));
    if dropped {
        let dropped = lib.root.join("New Leaf").join(BASE).join(format!("{LEAF}.vmwarevm"));
        std::fs::rename(&copy, &dropped).unwrap();
        copy = dropped;
    }
    (vec!["adopt".into(), copy.display().to_string(), "--base".into(), BASE.into()], copy)
}

/// A leaf used since it was made (its deltas written, its own .nvram): the reset command and
/// the leaf.
fn reset_scene(lib: &Lib, vm: &SampleVm) -> (Vec<String>, PathBuf) {
    base_and_leaf(lib, vm);
    let leaf = lib.leaf_dir(LEAF);
    scribble(&leaf, vm.disks.iter().map(|d| format!("{}-000001.vmdk", stem(&d.file))));
    {
        let _forks = forks();
        std::fs::write(leaf.join(format!("{LEAF}.nvram")), b"the leaf's own EFI variables").unwrap();
    }
    (vec!["reset".into(), LEAF.into(), "--yes".into()], leaf)
}

impl Scene {
    fn new(action: Action) -> Scene {
        let lib = Lib::new();
        let vm = vm();
        let mut other = None;
        let mut vmrun = None;
        let (args, source): (Vec<String>, PathBuf) = match action {
            Action::MakeBase => {
                let bundle = build(&vm, &lib.make_base_dir());
                (vec!["make-base".into(), bundle.display().to_string()], bundle)
            }
            Action::MakeBaseAcross => {
                let o = {
                    let _forks = forks();
                    OtherVolume::new()
                };
                let bundle = build(&vm, o.path());
                other = Some(o);
                (vec!["make-base".into(), bundle.display().to_string()], bundle)
            }
            Action::MakeBaseOfLeaf => {
                base_and_leaf(&lib, &vm);
                let leaf = lib.leaf_dir(LEAF);
                (vec!["make-base".into(), leaf.display().to_string()], leaf)
            }
            Action::NewLeafNative | Action::NewLeafVmrun => {
                let base = base_from(&lib, &vm);
                let backend = if action == Action::NewLeafVmrun {
                    let _forks = forks();
                    vmrun = Some(vmrun_stand_in(lib.tmp.path(), "works", VMRUN_WORKS));
                    "vmrun"
                } else {
                    "native"
                };
                (vec!["new-leaf".into(), BASE.into(), LEAF.into(), "--snapshot".into(), backend.into()], base)
            }
            Action::Promote => {
                base_and_leaf(&lib, &vm);
                (vec!["promote".into(), LEAF.into()], lib.leaf_dir(LEAF))
            }
            Action::RemoveBase => {
                let base = base_from(&lib, &vm);
                (vec!["remove-base".into(), BASE.into(), "--yes".into()], base)
            }
            Action::Relink => {
                base_and_leaf(&lib, &vm);
                let away = lib.tmp.path().join(format!("Desktop/{LEAF}.vmwarevm"));
                std::fs::create_dir_all(away.parent().unwrap()).unwrap();
                std::fs::rename(lib.leaf_dir(LEAF), &away).unwrap();
                (vec!["relink".into(), away.display().to_string()], away)
            }
            Action::Forget => {
                let base = base_and_leaf(&lib, &vm);
                std::fs::remove_dir_all(lib.leaf_dir(LEAF)).unwrap();
                (vec!["forget".into(), LEAF.into()], base)
            }
            Action::Adopt | Action::AdoptDropped => adopt_scene(&lib, &vm, action == Action::AdoptDropped),
            Action::Reset => reset_scene(&lib, &vm),
        };
        let before = fingerprint_tree(&source);
        let saved = if matches!(action, Action::Adopt | Action::AdoptDropped) {
            vm.disks
                .iter()
                .map(|d| raw_image(&source.join(&d.file), &lib.tmp.path().join(format!("{}.raw", d.file))))
                .collect()
        } else {
            Vec::new()
        };
        Scene { action, lib, other, vm, args, vmrun, source, before, saved }
    }

    /// The action's command, with `env` added.
    fn command(&self, env: &[(&str, &Path)]) -> Command {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut c = self.lib.command(&args);
        if let Some(v) = &self.vmrun {
            c.env("LEAFD_VMRUN", v);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    /// Runs the action with a trace; returns its output and the trace.
    fn traced(&self, fault: Option<&str>) -> (Output, Vec<Op>) {
        let t = trace_file(&self.lib);
        let mut c = self.command(&[("LEAFD_IO_TRACE", &t)]);
        if let Some(f) = fault {
            c.env("LEAFD_FAULT", f);
        }
        let out = run_limited(&mut c);
        (out, trace::read(&t))
    }

    /// `leafd recover`, traced into `trace`: it must finish or undo everything, keeping nothing.
    fn recover(&self, trace: Option<&Path>) -> Output {
        let mut c = self.lib.command(&["recover"]);
        if let Some(t) = trace {
            c.env("LEAFD_IO_TRACE", t);
        }
        let o = run_limited(&mut c);
        let out = text(&o);
        assert!(
            o.status.success() && !out.contains("kept"),
            "{:?}: recover failed or kept a journal: {out}",
            self.action
        );
        o
    }

    fn base(&self) -> PathBuf {
        self.lib.base_dir(BASE)
    }

    /// `leafd verify --json`: no problem, and nothing it had to repair.
    fn verifies(&self, at: &str) {
        let o = run_limited(&mut self.lib.command(&["verify", "--json"]));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        assert!(o.status.success(), "{at}: verify: {}", text(&o));
        assert_eq!(report["repaired"], serde_json::json!([]), "{at}: verify had to repair the result");
    }

    /// Where working folders could be left: beside every place the actions build or set aside.
    fn work_places(&self) -> Vec<PathBuf> {
        let mut v = vec![self.lib.root.clone(), self.lib.root.join("Bases"), self.lib.make_base_dir()];
        v.extend(self.other.as_ref().map(|o| o.path().to_path_buf()));
        match self.action {
            Action::Relink | Action::AdoptDropped => v.push(self.source.parent().unwrap().to_path_buf()),
            Action::Reset => v.push(self.source.clone()),
            _ => {}
        }
        v
    }

    /// No journal, no working folder, no stamp, no temporary file left anywhere.
    fn no_leftovers(&self, at: &str) {
        let journals: Vec<_> = std::fs::read_dir(self.lib.root.join(".leafd/journal")).unwrap().collect();
        assert!(journals.is_empty(), "{at}: journal left: {journals:?}");
        for dir in self.work_places() {
            let left = leftovers(&dir);
            assert!(left.is_empty(), "{at}: working folders left in {}: {left:?}", dir.display());
        }
        let mut trees = vec![self.lib.root.clone()];
        trees.extend(self.other.as_ref().map(|o| o.path().to_path_buf()));
        if self.action == Action::Relink {
            trees.push(self.source.clone());
        }
        for t in trees {
            for p in walk(&t) {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                assert!(
                    name != ".leafd-stamp" && !name.contains(".tmp-") && !name.ends_with(".json.tmp"),
                    "{at}: {} left",
                    p.display()
                );
            }
        }
    }

    /// The library holds the untouched source or the finished result (which one is returned:
    /// true when finished), after recovery.
    fn outcome(&self, at: &str) -> bool {
        self.no_leftovers(at);
        let finished = match self.action {
            Action::MakeBase | Action::MakeBaseAcross | Action::MakeBaseOfLeaf => {
                let name = if self.action == Action::MakeBaseOfLeaf { LEAF } else { BASE };
                self.lib.base_dir(name).exists()
            }
            Action::NewLeafNative | Action::NewLeafVmrun => self.lib.leaf_dir(LEAF).exists(),
            Action::Promote => !self.source.join(".leafd/leaf.json").exists(),
            Action::RemoveBase => !self.base().exists(),
            Action::Relink => record(&self.source, "leaf")["path"] == self.source.to_str().unwrap(),
            Action::Forget => leaf_list(&self.base()).is_empty(),
            Action::Adopt | Action::AdoptDropped => self.lib.leaf_dir(LEAF).join(".leafd/leaf.json").exists(),
            // The scribbled delta holds nothing of its own any more.
            Action::Reset => own_data(&self.source.join(format!("{}-000001.vmdk", stem(&self.vm.disks[0].file)))) == 0,
        };
        if finished {
            self.finished(at);
        } else {
            self.untouched(at);
        }
        finished
    }

    /// The source is as it was: every path, mode, size, content and attribute (records aside
    /// where the action adds to them).
    fn untouched(&self, at: &str) {
        let now = fingerprint_tree(&self.source);
        match self.action {
            Action::NewLeafNative | Action::NewLeafVmrun => {
                assert_eq!(without_records(now), without_records(self.before.clone()), "{at}: the base changed");
                assert!(leaf_list(&self.base()).is_empty(), "{at}: the base lists a leaf that is not there");
            }
            _ => assert_eq!(now, self.before, "{at}: the source is not as it was"),
        }
        if self.action == Action::Promote || self.action == Action::MakeBaseOfLeaf {
            assert_eq!(leaf_list(&self.base()).len(), 1, "{at}: the base no longer lists the leaf");
        }
        if self.action == Action::RemoveBase {
            assert!(self.lib.root.join("New Leaf").join(BASE).is_dir(), "{at}: the base's drop folder went");
        }
        if matches!(self.action, Action::Adopt | Action::AdoptDropped) {
            assert!(leaf_list(&self.base()).is_empty(), "{at}: the base lists a leaf that is not there");
        }
        if self.action == Action::Reset {
            assert!(trash_list(&self.lib.home()).is_empty(), "{at}: something went to the Trash");
        }
    }

    /// The action's result is complete, read by QEMU (`qemu-io -r`), and `leafd verify` is happy.
    fn finished(&self, at: &str) {
        match self.action {
            Action::MakeBase | Action::MakeBaseAcross | Action::MakeBaseOfLeaf => {
                let (name, suffix) =
                    if self.action == Action::MakeBaseOfLeaf { (LEAF, "-000001-base") } else { (BASE, "") };
                let dir = self.lib.base_dir(name);
                for d in &self.vm.disks {
                    reads(&dir.join(format!("{}{suffix}.vmdk", stem(&d.file))), d, at);
                }
                let rec = record(&dir, "base");
                for d in rec["disks"].as_array().unwrap() {
                    assert!(d["fingerprint"].as_str().is_some(), "{at}: fingerprint not recorded: {rec}");
                }
                assert!(self.lib.root.join("New Leaf").join(name).is_dir(), "{at}: no drop folder");
                if self.action == Action::MakeBaseOfLeaf {
                    assert!(!dir.join(".leafd/leaf.json").exists(), "{at}: the new base is still a leaf");
                    assert!(leaf_list(&self.base()).is_empty(), "{at}: the old base still lists the leaf");
                } else {
                    assert!(!self.source.exists(), "{at}: the source is still there");
                }
            }
            Action::NewLeafNative | Action::NewLeafVmrun => {
                for d in &self.vm.disks {
                    reads(&self.lib.leaf_dir(LEAF).join(format!("{}-000001.vmdk", stem(&d.file))), d, at);
                }
                assert_eq!(leaf_list(&self.base()).len(), 1, "{at}");
            }
            Action::Promote => {
                for d in &self.vm.disks {
                    let disk = self.source.join(&d.file);
                    assert_eq!(chain(&disk).len(), 1, "{at}: the promoted disk still has a parent");
                    reads(&disk, d, at);
                }
                assert!(leaf_list(&self.base()).is_empty(), "{at}: the base still lists the promoted leaf");
            }
            Action::RemoveBase => {
                assert!(!self.lib.root.join("New Leaf").join(BASE).exists(), "{at}: the drop folder is left");
                let trashed = trash_list(&self.lib.home());
                assert!(trashed.contains(&self.base()), "{at}: the base is not in the Trash: {trashed:?}");
            }
            Action::Relink => {
                for d in &self.vm.disks {
                    reads(&self.source.join(format!("{}-000001.vmdk", stem(&d.file))), d, at);
                }
                let listed = leaf_list(&self.base());
                assert_eq!(listed.len(), 1, "{at}");
                let entry: serde_json::Value = serde_json::from_slice(&std::fs::read(&listed[0]).unwrap()).unwrap();
                assert_eq!(entry["path"], self.source.to_str().unwrap(), "{at}: the base's list has the old place");
            }
            Action::Forget => {}
            Action::Adopt | Action::AdoptDropped => {
                let leaf = self.lib.leaf_dir(LEAF);
                assert_eq!(record(&leaf, "leaf")["adopted"], true, "{at}: not recorded as adopted");
                for (d, saved) in self.vm.disks.iter().zip(&self.saved) {
                    let delta = leaf.join(format!("{}-000001.vmdk", stem(&d.file)));
                    assert_eq!(chain(&delta).len(), 2, "{at}: {} is not a delta over a parent copy", delta.display());
                    same_as_raw(&delta, saved, at);
                }
                assert_eq!(leaf_list(&self.base()).len(), 1, "{at}: the base does not list the leaf");
                assert!(!self.source.exists() || self.source == leaf, "{at}: the dropped VM is still there");
            }
            Action::Reset => {
                for d in &self.vm.disks {
                    let delta = self.source.join(format!("{}-000001.vmdk", stem(&d.file)));
                    assert_eq!(own_data(&delta), 0, "{at}: {} holds data of its own", delta.display());
                    reads(&delta, d, at);
                }
                let nvram = std::fs::read(self.source.join(format!("{LEAF}.nvram"))).unwrap();
                assert_eq!(nvram, std::fs::read(self.base().join(format!("{BASE}.nvram"))).unwrap(), "{at}: nvram");
                let trashed = trash_list(&self.lib.home());
                assert!(trashed.len() == 1 && trashed[0].starts_with(&self.source), "{at}: the Trash: {trashed:?}");
            }
        }
        self.verifies(at);
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // Unmounted by a program (see FORKS).
        let _forks = forks();
        self.other.take();
    }
}

/// A program's output (see [`FORKS`]).
fn tool(program: &str, args: &[&str]) -> Output {
    run_limited(Command::new(program).args(args))
}

/// The chain QEMU sees from `top`, top first.
fn chain(top: &Path) -> Vec<serde_json::Value> {
    let o = tool("qemu-img", &["info", "-U", "--backing-chain", "--output=json", "-f", "vmdk", top.to_str().unwrap()]);
    assert!(o.status.success(), "qemu-img info {}: {}", top.display(), text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn stem(file: &str) -> &str {
    file.strip_suffix(".vmdk").unwrap()
}

/// Writes into each disk `files` of `dir` where the sample has no data, so it holds data of its
/// own.
fn scribble(dir: &Path, files: impl Iterator<Item = String>) {
    for (i, file) in files.enumerate() {
        let cmd = format!("write -P 0x{:02x} {} 65536", 0x70 + i, MIB);
        let o = tool("qemu-io", &["-f", "vmdk", "-c", &cmd, dir.join(file).to_str().unwrap()]);
        assert!(o.status.success() && !text(&o).contains("failed"), "qemu-io write: {}", text(&o));
    }
}

/// The disk at `top` read through its chain by QEMU into the raw image `out`.
fn raw_image(top: &Path, out: &Path) -> PathBuf {
    let o =
        tool("qemu-img", &["convert", "-U", "-f", "vmdk", "-O", "raw", top.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(o.status.success(), "qemu-img convert {}: {}", top.display(), text(&o));
    out.to_path_buf()
}

/// The chain at `top` reads, byte for byte, as the raw image `saved` (`qemu-img compare`).
fn same_as_raw(top: &Path, saved: &Path, at: &str) {
    let o =
        tool("qemu-img", &["compare", "-U", "-f", "vmdk", "-F", "raw", top.to_str().unwrap(), saved.to_str().unwrap()]);
    assert!(o.status.success(), "{at}: {} does not read as it did: {}", top.display(), text(&o));
}

/// Bytes of data the disk `top` holds itself (not its backing chain), as `qemu-img map` says.
fn own_data(top: &Path) -> u64 {
    let o = tool("qemu-img", &["map", "-U", "-f", "vmdk", "--output=json", top.to_str().unwrap()]);
    assert!(o.status.success(), "qemu-img map {}: {}", top.display(), text(&o));
    let map: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    map.iter().filter(|e| e["depth"] == 0 && e["data"] == true).map(|e| e["length"].as_u64().unwrap()).sum()
}

/// Every pattern of the sample disk `d` read through the chain at `top` by `qemu-io -r`, in one
/// run.
fn reads(top: &Path, d: &SampleDisk, at: &str) {
    let cmds: Vec<String> =
        d.patterns.iter().map(|p| format!("read -P 0x{:02x} {} {}", p.byte, p.offset, p.len)).collect();
    let mut args = vec!["-r", "-f", "vmdk"];
    for c in &cmds {
        args.extend(["-c", c]);
    }
    args.push(top.to_str().unwrap());
    let o = tool("qemu-io", &args);
    let t = text(&o);
    assert!(
        o.status.success() && !t.contains("fail") && t.matches("read ").count() == cmds.len(),
        "{at}: {} does not read back: {t}",
        top.display()
    );
}

// ---------------------------------------------------------------------------------------------
// The ordering rule on every operation's trace.

/// What a trace must hold for its check to mean something: the renames that publish, and
/// flushes.
struct Expected {
    /// Paths (exactly) or, ending in `*`, name prefixes that some rename must target.
    renames_to: Vec<String>,
    /// At least this many flushes.
    flushes: usize,
    /// The operation is journaled: its journal is removed at the end.
    journaled: bool,
}

fn renamed_to(ops: &[Op], want: &str) -> bool {
    ops.iter().filter(|o| o.op == "rename").filter_map(|o| o.to.as_ref()).any(|to| match want.strip_suffix('*') {
        Some(prefix) => to.to_string_lossy().starts_with(prefix),
        None => to == Path::new(want),
    })
}

/// A short listing of a trace, for failure messages.
fn listing(ops: &[Op]) -> String {
    ops.iter()
        .map(|o| {
            let to = o.to.as_ref().map(|t| format!(" -> {}", t.display())).unwrap_or_default();
            let kind = o.kind.as_deref().map(|k| format!(" ({k})")).unwrap_or_default();
            format!("  #{} armed {} pid {} {} {}{to}{kind}\n", o.n, o.armed, o.pid, o.op, o.path.display())
        })
        .collect()
}

/// The trace is not empty, holds what is expected, and keeps the rule.
fn assert_rule(root: &Path, what: &str, ops: &[Op], expected: &Expected) {
    assert!(!ops.is_empty(), "{what}: the trace is empty: LEAFD_IO_TRACE did not reach the operation");
    for want in &expected.renames_to {
        assert!(renamed_to(ops, want), "{what}: no rename to {want} in the trace:\n{}", listing(ops));
    }
    let flushes = ops.iter().filter(|o| o.op == "flush").count();
    assert!(flushes >= expected.flushes, "{what}: {flushes} flushes, expected {}:\n{}", expected.flushes, listing(ops));
    if expected.journaled {
        assert!(
            ops.iter().any(|o| o.op == "unlink" && o.path.parent().is_some_and(|p| p.ends_with(".leafd/journal"))),
            "{what}: the journal is never removed:\n{}",
            listing(ops)
        );
    }
    let problems = trace::check(root, ops);
    assert!(
        problems.is_empty(),
        "{what}: the durability rule is broken:\n{}\ntrace:\n{}",
        problems.join("\n"),
        listing(ops)
    );
}

fn path_in(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// What each action's trace must hold.
fn expected(scene: &Scene) -> Expected {
    let root = &scene.lib.root;
    let bases = root.join("Bases");
    let (renames_to, flushes, journaled) = match scene.action {
        Action::MakeBase | Action::MakeBaseAcross => (vec![path_in(&bases, BASE)], 10, true),
        Action::MakeBaseOfLeaf => (vec![path_in(&bases, LEAF)], 10, true),
        Action::NewLeafNative | Action::NewLeafVmrun => {
            (vec![path_in(root, &format!("{LEAF}.vmwarevm")), path_in(&scene.base(), ".leafd/leaves/*")], 10, true)
        }
        Action::Promote => {
            (vec![path_in(root, ".leafd-promoted-*"), path_in(root, &format!("{LEAF}.vmwarevm"))], 10, true)
        }
        // Hidden, then into the (private HOME's) Trash under its own name.
        Action::RemoveBase => (
            vec![path_in(&bases, ".leafd-removing-*"), path_in(&scene.lib.home(), ".local/share/Trash/files/Durable")],
            5,
            true,
        ),
        Action::Relink => {
            (vec![path_in(&scene.source, "Virtual Disk.vmdk"), path_in(&scene.source, ".leafd/leaf.json")], 3, false)
        }
        Action::Forget => (vec![], 1, false),
        Action::Adopt | Action::AdoptDropped => (
            vec![
                path_in(root, ".leafd-adopt-*"),
                path_in(root, &format!("{LEAF}.vmwarevm")),
                path_in(&scene.base(), ".leafd/leaves/*"),
            ],
            10,
            true,
        ),
        // The old files aside, the new in their places, the old ones' folder into the Trash.
        Action::Reset => (
            vec![
                path_in(&scene.source, ".leafd-reset-*"),
                path_in(&scene.source, "Virtual Disk-000001.vmdk"),
                path_in(&scene.source, &format!("{LEAF}.nvram")),
                path_in(&scene.lib.home(), &format!(".local/share/Trash/files/{LEAF} before reset *")),
            ],
            5,
            true,
        ),
    };
    Expected { renames_to, flushes, journaled }
}

fn rule_holds(action: Action) {
    let scene = Scene::new(action);
    let (o, ops) = scene.traced(None);
    assert!(o.status.success(), "{action:?}: {}", text(&o));
    assert_rule(&scene.lib.root, &format!("{action:?}"), &ops, &expected(&scene));
    if action == Action::Forget {
        assert!(ops.iter().any(|o| o.op == "unlink" && o.path.starts_with(scene.base().join(".leafd/leaves"))));
    }
    scene.outcome(&format!("{action:?}"));
}

#[test]
fn make_base_keeps_the_rule() {
    rule_holds(Action::MakeBase);
}

#[test]
fn make_base_across_volumes_keeps_the_rule() {
    rule_holds(Action::MakeBaseAcross);
}

#[test]
fn make_base_of_a_leaf_keeps_the_rule() {
    rule_holds(Action::MakeBaseOfLeaf);
}

#[test]
fn new_leaf_keeps_the_rule() {
    rule_holds(Action::NewLeafNative);
    rule_holds(Action::NewLeafVmrun);
}

#[test]
fn promote_keeps_the_rule() {
    rule_holds(Action::Promote);
}

#[test]
fn adopt_and_reset_keep_the_rule() {
    rule_holds(Action::Adopt);
    rule_holds(Action::AdoptDropped);
    rule_holds(Action::Reset);
}

#[test]
fn relink_remove_base_and_forget_keep_the_rule() {
    rule_holds(Action::Relink);
    rule_holds(Action::RemoveBase);
    rule_holds(Action::Forget);
}

/// A base and a leaf whose records were removed (files and mirrors), and a damaged entry in a
/// base's list of leaves: verify rebuilds and rewrites them, each by the rule.
#[test]
fn verify_repairs_keep_the_rule() {
    let lib = Lib::new();
    let vm = vm();
    let base = base_and_leaf(&lib, &vm);
    let mut other = vm.clone();
    other.name = "Other".into();
    let other_base = base_from(&lib, &other);
    ok(&lib, &["new-leaf", "Other", "Marked", "--snapshot", "native"]);
    let strip = |dir: &Path| {
        std::fs::remove_dir_all(dir.join(".leafd")).unwrap();
        for name in xattr::list(dir).unwrap() {
            if name.to_string_lossy().starts_with("user.org.leafd.") {
                xattr::remove(dir, &name).unwrap();
            }
        }
    };
    strip(&base);
    strip(&lib.leaf_dir(LEAF));
    let entry = leaf_list(&other_base).pop().unwrap();
    {
        let _forks = forks();
        std::fs::write(&entry, b"{ damaged").unwrap();
    }
    let t = trace_file(&lib);
    let o = run_limited(lib.command(&["verify"]).env("LEAFD_IO_TRACE", &t));
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(
        out.matches("repaired:").count(),
        4,
        "base and leaf rebuilt, the leaf relisted, the entry rewritten: {out}"
    );
    let ops = trace::read(&t);
    let expected = Expected {
        renames_to: vec![
            path_in(&base, ".leafd/base.json"),
            path_in(&lib.leaf_dir(LEAF), ".leafd/leaf.json"),
            path_in(&base, ".leafd/leaves/*"),
            entry.display().to_string(),
        ],
        flushes: 8,
        journaled: false,
    };
    assert_rule(&lib.root, "verify", &ops, &expected);
    let o = run_limited(&mut lib.command(&["verify"]));
    assert!(o.status.success() && !text(&o).contains("repaired"), "{}", text(&o));
}

// ---------------------------------------------------------------------------------------------
// Recovery after a kill at every step: the killed process's trace, then the recovery's, keep
// the rule together (what the killed process left unflushed, recovery must flush before it
// publishes it or ends).

use Action::*;

const MAKE_BASES: &[Action] = &[MakeBase, MakeBaseAcross, MakeBaseOfLeaf];
const NEW_LEAVES: &[Action] = &[NewLeafNative, NewLeafVmrun];
const ADOPTS: &[Action] = &[Adopt, AdoptDropped];

/// A step and the actions that reach it.
type Kill = (&'static str, &'static [Action]);

/// Every step of every journaled operation, with the actions that reach it.
const KILLS: &[(&str, &[Kill])] = &[
    (
        make_base::OP,
        &[
            ("journaled", MAKE_BASES),
            ("flattened", &[MakeBaseOfLeaf]),
            ("moved", &[MakeBase, MakeBaseOfLeaf]),
            ("copying", &[MakeBaseAcross]),
            ("copied", &[MakeBaseAcross]),
            ("vmx-renamed", MAKE_BASES),
            ("lineage-written", MAKE_BASES),
            ("protected", MAKE_BASES),
            ("published", MAKE_BASES),
            ("drop-folder-created", MAKE_BASES),
            ("source-removing", &[MakeBaseAcross]),
            ("source-removed", &[MakeBaseAcross]),
            ("fingerprinted", MAKE_BASES),
        ],
    ),
    (
        new_leaf::OP,
        &[
            ("journaled", NEW_LEAVES),
            ("parent-copies-written", NEW_LEAVES),
            ("deltas-written", NEW_LEAVES),
            ("vmx-written", NEW_LEAVES),
            ("vmsd-written", NEW_LEAVES),
            ("lineage-written", NEW_LEAVES),
            ("published", NEW_LEAVES),
            ("base-linked", NEW_LEAVES),
            ("request-removed", NEW_LEAVES),
        ],
    ),
    (
        promote::OP,
        &[
            ("journaled", &[Promote]),
            ("flattened", &[Promote]),
            ("staged", &[Promote]),
            ("set-aside", &[Promote]),
            ("swapped", &[Promote]),
            ("unlinked", &[Promote]),
            ("cleaned", &[Promote]),
        ],
    ),
    (
        remove_base::OP,
        &[
            ("journaled", &[RemoveBase]),
            ("hidden", &[RemoveBase]),
            ("unlocked", &[RemoveBase]),
            ("removed", &[RemoveBase]),
        ],
    ),
    (
        adopt::OP,
        &[
            ("journaled", ADOPTS),
            ("compared", ADOPTS),
            ("staged", ADOPTS),
            ("set-aside", ADOPTS),
            ("swapped", ADOPTS),
            ("linked", ADOPTS),
            ("cleaned", ADOPTS),
        ],
    ),
    (
        reset::OP,
        &[
            ("journaled", &[Reset]),
            ("staged", &[Reset]),
            ("committed", &[Reset]),
            ("swapped", &[Reset]),
            ("trashed", &[Reset]),
        ],
    ),
];

#[test]
fn every_step_is_killed() {
    let declared: &[(&str, &[&str])] = &[
        (make_base::OP, make_base::STEPS),
        (new_leaf::OP, new_leaf::STEPS),
        (promote::OP, promote::STEPS),
        (remove_base::OP, remove_base::STEPS),
        (adopt::OP, adopt::STEPS),
        (reset::OP, reset::STEPS),
    ];
    assert_eq!(declared.len(), KILLS.len(), "an operation is not killed here");
    for ((op, steps), (killed_op, kills)) in declared.iter().zip(KILLS) {
        assert_eq!(op, killed_op);
        let covered: Vec<&str> = kills.iter().map(|k| k.0).collect();
        assert_eq!(&covered, steps, "a {op} step was added or removed: kill it here");
        assert!(kills.iter().all(|k| !k.1.is_empty()), "{op}: a step no action reaches");
    }
}

/// Kills `action` at `op`'s `step`, recovers, and checks both traces together and the outcome.
fn recovers_by_the_rule(action: Action, op: &str, step: &str) {
    let at = format!("{action:?} killed at {op}:{step}");
    let scene = Scene::new(action);
    let t = trace_file(&scene.lib);
    let mut c = scene.command(&[("LEAFD_IO_TRACE", &t)]);
    c.env("LEAFD_FAULT", format!("{op}:{step}"));
    let o = run_limited(&mut c);
    assert!(killed(&o), "{at}: the process was not killed there: {}", text(&o));
    scene.recover(Some(&t));
    let processes = trace::by_process(&trace::read(&t));
    assert_eq!(processes.len(), 2, "{at}: expected the killed process's trace and the recovery's: {processes:?}");
    let (killed_ops, recovery_ops) = (&processes[0].1, &processes[1].1);
    assert!(
        recovery_ops.iter().any(|o| o.op == "unlink" && o.path.parent().is_some_and(|p| p.ends_with(".leafd/journal"))),
        "{at}: recovery never removed the journal:\n{}",
        listing(recovery_ops)
    );
    let mut checker = trace::Checker::new(&scene.lib.root);
    checker.replay(killed_ops);
    checker.replay(recovery_ops);
    let problems = checker.end();
    assert!(
        problems.is_empty(),
        "{at}: the durability rule is broken:\n{}\nkilled:\n{}recovery:\n{}",
        problems.join("\n"),
        listing(killed_ops),
        listing(recovery_ops)
    );
    scene.outcome(&at);
}

fn kill_every_step_of(op: &str, only: &[Action]) {
    let (_, kills) = KILLS.iter().find(|k| k.0 == op).unwrap();
    for (step, actions) in kills.iter() {
        for &action in actions.iter().filter(|a| only.contains(a)) {
            recovers_by_the_rule(action, op, step);
        }
    }
}

#[test]
fn recovery_after_make_base_killed_keeps_the_rule() {
    kill_every_step_of(make_base::OP, &[MakeBase, MakeBaseOfLeaf]);
}

#[test]
fn recovery_after_make_base_across_volumes_killed_keeps_the_rule() {
    kill_every_step_of(make_base::OP, &[MakeBaseAcross]);
}

#[test]
fn recovery_after_new_leaf_killed_keeps_the_rule() {
    kill_every_step_of(new_leaf::OP, NEW_LEAVES);
}

#[test]
fn recovery_after_adopt_killed_keeps_the_rule() {
    kill_every_step_of(adopt::OP, ADOPTS);
}

#[test]
fn recovery_after_reset_killed_keeps_the_rule() {
    kill_every_step_of(reset::OP, &[Reset]);
}

#[test]
fn recovery_after_promote_and_remove_base_killed_keeps_the_rule() {
    kill_every_step_of(promote::OP, &[Promote]);
    kill_every_step_of(remove_base::OP, &[RemoveBase]);
}

// ---------------------------------------------------------------------------------------------
// An I/O error at every call after the journal is written.

/// How one run with `LEAFD_FAULT=io:N` went.
#[derive(Debug)]
struct Failed {
    n: u64,
    /// The call that failed, as the trace records it.
    call: String,
    exit: Option<i32>,
    finished: bool,
}

/// Calls whose failure an operation may survive and succeed: the mirrors of records and the
/// Finder tags are extended attributes, best effort by design (docs/records.md); a lock file
/// made meanwhile is opened as it is.
fn tolerated(fault: &Op) -> bool {
    matches!(fault.of.as_deref(), Some("xattr" | "rmxattr"))
        || fault.path.parent().is_some_and(|p| p.ends_with(".leafd/locks"))
}

/// Runs `action` with its `n`th armed call failing, then `leafd recover`, and checks that the
/// command failed cleanly (or succeeded despite a call it may do without), that both traces
/// together keep the rule, and that the library holds the untouched source or the finished
/// result.
fn fail_call(action: Action, n: u64) -> Failed {
    let scene = Scene::new(action);
    let t = trace_file(&scene.lib);
    let mut c = scene.command(&[("LEAFD_IO_TRACE", &t)]);
    c.env("LEAFD_FAULT", format!("io:{n}"));
    let o = run_limited(&mut c);
    let ops = trace::read(&t);
    let fault = trace::fault(&ops).unwrap_or_else(|| panic!("{action:?} io:{n}: the fault was never injected"));
    let of = fault.of.clone().unwrap();
    let at = format!("{action:?} with call {n} ({of} of {}) failing", fault.path.display());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "{at}: leafd panicked: {err}");
    match o.status.code() {
        Some(1) => {
            // "leafd: <file>: <what>": the message names a file of this test.
            let names_file = err.starts_with("leafd: ")
                && (err.contains(&scene.lib.tmp.path().display().to_string())
                    || scene.other.as_ref().is_some_and(|v| err.contains(&v.path().display().to_string())));
            assert!(names_file, "{at}: the message names no file: {err}");
        }
        Some(0) => assert!(tolerated(fault), "{at}: leafd succeeded although a call it needs failed: {}", text(&o)),
        code => panic!("{at}: exit {code:?}, expected 1: {}", text(&o)),
    }
    // What the failed command left for recovery: a journal, working folders.
    let left_journal = std::fs::read_dir(scene.lib.root.join(".leafd/journal")).unwrap().count() > 0;
    let left_work: Vec<PathBuf> = scene.work_places().iter().flat_map(|d| leftovers(d)).collect();
    scene.recover(Some(&t));
    let ops = trace::read(&t);
    let mut checker = trace::Checker::new(&scene.lib.root);
    for (_, process) in trace::by_process(&ops) {
        checker.replay(&process);
    }
    let problems = checker.end();
    assert!(
        problems.is_empty(),
        "{at}: the durability rule is broken:\n{}\ntrace:\n{}",
        problems.join("\n"),
        listing(&ops)
    );
    let finished = scene.outcome(&at);
    if o.status.success() {
        assert!(finished, "{at}: leafd succeeded, but the result is not there");
    }
    if !finished {
        // Failed before its commit point, the command undoes itself: recovery finds nothing to
        // do (unless the call that failed was the journal's own removal).
        let journal_removal = of == "unlink" && fault.path.parent().is_some_and(|p| p.ends_with(".leafd/journal"));
        assert!(!left_journal || journal_removal, "{at}: the failed command left its journal for recovery");
        assert!(left_work.is_empty(), "{at}: the failed command left working folders: {left_work:?}");
    }
    Failed { n, call: format!("{of} of {}", fault.path.display()), exit: o.status.code(), finished }
}

/// Every call `action` makes after its journal is written fails in turn. The number of calls
/// comes from a clean run's trace, so a call added to the code is covered without editing this
/// test; `minimum` only guards against a trace that lost its calls.
fn every_call_fails_cleanly(action: Action, minimum: u64) {
    let scene = Scene::new(action);
    let (o, ops) = scene.traced(None);
    assert!(o.status.success(), "{action:?}: {}", text(&o));
    let count = trace::armed_calls(&ops);
    assert!(
        count >= minimum,
        "{action:?}: only {count} calls after the journal (at least {minimum}):\n{}",
        listing(&ops)
    );
    drop(scene);
    let next = AtomicU64::new(1);
    let failures = std::sync::Mutex::new(Vec::new());
    let runs = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n > count {
                        break;
                    }
                    match std::panic::catch_unwind(|| fail_call(action, n)) {
                        Ok(run) => runs.lock().unwrap().push(run),
                        Err(e) => {
                            let msg = e
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            failures.lock().unwrap().push((n, msg));
                        }
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|f| f.0);
    let mut runs = runs.into_inner().unwrap();
    runs.sort_by_key(|r| r.n);
    let finished = runs.iter().filter(|r| r.finished).count();
    let succeeded: Vec<&Failed> = runs.iter().filter(|r| r.exit == Some(0)).collect();
    eprintln!(
        "{action:?}: {count} calls failed in turn: {} undone, {finished} finished; {} succeeded anyway: {:?}",
        runs.len() - finished,
        succeeded.len(),
        succeeded.iter().map(|r| format!("{} {}", r.n, r.call)).collect::<Vec<_>>()
    );
    assert!(
        failures.is_empty(),
        "{action:?}: {} of {count} failed calls broke it:\n\n{}",
        failures.len(),
        failures.iter().map(|(n, m)| format!("io:{n}: {m}")).collect::<Vec<_>>().join("\n\n")
    );
}

#[test]
fn make_base_survives_an_error_at_every_call() {
    every_call_fails_cleanly(MakeBase, 40);
}

#[test]
fn make_base_across_volumes_survives_an_error_at_every_call() {
    every_call_fails_cleanly(MakeBaseAcross, 100);
}

#[test]
fn make_base_of_a_leaf_survives_an_error_at_every_call() {
    every_call_fails_cleanly(MakeBaseOfLeaf, 100);
}

#[test]
fn new_leaf_survives_an_error_at_every_call() {
    every_call_fails_cleanly(NewLeafNative, 60);
}

#[test]
fn new_leaf_with_vmrun_survives_an_error_at_every_call() {
    every_call_fails_cleanly(NewLeafVmrun, 40);
}

#[test]
fn promote_survives_an_error_at_every_call() {
    every_call_fails_cleanly(Promote, 70);
}

#[test]
fn adopt_survives_an_error_at_every_call() {
    every_call_fails_cleanly(Adopt, 90);
}

#[test]
fn adopt_of_a_dropped_vm_survives_an_error_at_every_call() {
    every_call_fails_cleanly(AdoptDropped, 90);
}

#[test]
fn reset_survives_an_error_at_every_call() {
    every_call_fails_cleanly(Reset, 80);
}

#[test]
fn remove_base_relink_and_forget_each_survives_an_error_at_every_call() {
    every_call_fails_cleanly(RemoveBase, 25);
    every_call_fails_cleanly(Relink, 10);
    every_call_fails_cleanly(Forget, 2);
}

// ---------------------------------------------------------------------------------------------
// strace: the trace misses no system call that changes the library.

/// Runs `args` on `lib` under `strace -f -y -qq` (one file per thread, `-ff`), traced by durable
/// too; returns strace's changes under the library and durable's trace.
fn straced(lib: &Lib, args: &[&str]) -> (Vec<strace::Change>, Vec<Op>) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let prefix = lib.tmp.path().join(format!("strace-{n}"));
    let t = trace_file(lib);
    let mut c = under("strace", &strace::args(&prefix), &lib.command(args));
    c.env("LEAFD_IO_TRACE", &t);
    let o = run_limited(&mut c);
    assert!(o.status.success(), "strace leafd {args:?}: {}", text(&o));
    let changes: Vec<strace::Change> = strace::read(&prefix)
        .into_iter()
        .filter(|c| c.path.starts_with(&lib.root))
        // Lock files hold nothing (the trace leaves them out too).
        .filter(|c| !c.path.starts_with(lib.root.join(".leafd/locks")))
        .collect();
    (changes, trace::read(&t))
}

/// Every change strace saw is in durable's trace: as many of each kind on each path (a call the
/// trace records may make no system call: a Locked flag on Linux, an attribute already absent),
/// and no more bytes written to a file than the trace says.
fn trace_sees_every_call(what: &str, changes: &[strace::Change], ops: &[Op]) {
    use std::collections::BTreeMap;
    let mut seen: BTreeMap<(&str, &Path), (usize, u64, Vec<&str>)> = BTreeMap::new();
    for c in changes {
        let e = seen.entry((c.kind, c.path.as_path())).or_default();
        e.0 += 1;
        e.1 += c.bytes;
        e.2.push(&c.line);
    }
    let mut missing = Vec::new();
    for ((kind, path), (count, bytes, lines)) in &seen {
        let traced: Vec<&Op> = ops.iter().filter(|o| o.op == *kind && o.path == *path).collect();
        let traced_bytes: u64 = traced.iter().filter_map(|o| o.len).sum();
        let ok = if *kind == "write" { !traced.is_empty() && *bytes <= traced_bytes } else { *count <= traced.len() };
        if !ok {
            missing.push(format!(
                "{kind} of {}: strace saw {count} ({bytes} bytes), the trace {} ({traced_bytes} bytes):\n    {}",
                path.display(),
                traced.len(),
                lines.join("\n    ")
            ));
        }
    }
    assert!(missing.is_empty(), "{what}: system calls the durable trace does not have:\n{}", missing.join("\n"));
}

#[test]
fn strace_sees_no_change_the_trace_misses() {
    let lib = Lib::new();
    let vm = vm();
    let bundle = build(&vm, &lib.make_base_dir());
    // Each with the fewest changes strace must see (remove-base: the journal, the stamp, the
    // hide, the unlocking, the move into the Trash, the drop folder).
    let runs: [(&str, Vec<&str>, usize); 4] = [
        ("make-base", vec!["make-base", bundle.to_str().unwrap()], 30),
        ("new-leaf", vec!["new-leaf", BASE, LEAF, "--snapshot", "native"], 30),
        ("promote", vec!["promote", LEAF], 30),
        ("remove-base", vec!["remove-base", BASE], 15),
    ];
    for (what, args, fewest) in runs {
        let (changes, ops) = straced(&lib, &args);
        // Not vacuous: strace saw the operation's changes of every kind it makes.
        let count = |kind: &str| changes.iter().filter(|c| c.kind == kind).count();
        for kind in ["create", "write", "rename", "flush", "unlink"] {
            assert!(count(kind) > 0, "{what}: strace saw no {kind}: {changes:#?}");
        }
        assert!(changes.len() >= fewest, "{what}: strace saw only {} changes: {changes:#?}", changes.len());
        trace_sees_every_call(what, &changes, &ops);
        eprintln!(
            "{what}: {} system calls changed the library, all of them in the trace ({} calls)",
            changes.len(),
            ops.len()
        );
    }
}
