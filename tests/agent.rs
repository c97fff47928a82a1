//! The agent end to end: the real binary, the real watcher (inotify), real files.

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use leafd::sample::SampleVm;
use leafd_formats::disk::DiskType;

const MIB: u64 = 1 << 20;
const SETTLE: &str = "1";

/// A running `leafd agent`; killed when dropped.
struct Agent {
    child: Child,
}

impl Agent {
    fn start(lib: &Lib) -> Agent {
        Self::start_with(lib, &[])
    }

    fn start_with(lib: &Lib, env: &[(&str, &str)]) -> Agent {
        Self::start_args(lib, &["agent", "--settle", SETTLE], env)
    }

    fn start_args(lib: &Lib, args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut c = lib.command(args);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        let agent = Agent { child: c.spawn().unwrap() };
        // Up and watching once it has logged that it is.
        assert!(
            wait_until(Duration::from_secs(10), || log_of(lib).contains("agent watching")),
            "the agent did not start"
        );
        agent
    }

    /// SIGTERM, then the exit status (within launchd's 20 s).
    fn stop(mut self) -> ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "the agent did not stop within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

fn log_of(lib: &Lib) -> String {
    fs::read_to_string(lib.log_dir().join("leafd.log")).unwrap_or_default()
}

fn is_base(lib: &Lib, name: &str) -> bool {
    lib.base_dir(name).join(".leafd/base.json").is_file()
}

fn is_leaf(lib: &Lib, name: &str) -> bool {
    lib.leaf_dir(name).join(".leafd/leaf.json").is_file()
}

fn leaves(lib: &Lib) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(&lib.root)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str().and_then(|n| n.strip_suffix(".vmwarevm")).map(str::to_string))
        .collect();
    v.sort();
    v
}

fn small(name: &str) -> SampleVm {
    SampleVm::single(name, DiskType::SplitSparse, 8 * MIB)
}

fn leaf_reads_base(lib: &Lib, leaf: &str, vm: &SampleVm) {
    let delta = lib.leaf_dir(leaf).join("Virtual Disk-000001.vmdk");
    for p in &vm.disks[0].patterns {
        qemu_read_pattern(&delta, p.offset, p.len, p.byte).unwrap();
    }
}

/// Makes a base in the library without the agent.
fn cli_base(lib: &Lib, name: &str) -> SampleVm {
    let vm = small(name);
    lib.base_from(&vm);
    vm
}

#[test]
fn a_moved_bundle_becomes_a_base_and_a_named_folder_a_leaf() {
    let lib = Lib::new();
    let agent = Agent::start_with(&lib, &[("RUST_LOG", "leafd=debug")]);
    let vm = small("Ubuntu");
    let built = vm.build(lib.tmp.path()).unwrap();
    let before = checksums(&built);
    fs::rename(&built, lib.make_base_dir().join("Ubuntu.vmwarevm")).unwrap();
    assert!(wait_until(Duration::from_secs(20), || is_base(&lib, "Ubuntu")), "no base: {}", log_of(&lib));
    assert_eq!(fs::read_dir(lib.make_base_dir()).unwrap().count(), 0, "Make Base is empty again");
    let mut now = vm_files(&lib.base_dir("Ubuntu"));
    let vmx = now.remove(Path::new("Ubuntu.vmx.base")).unwrap();
    now.insert("Ubuntu.vmx".into(), vmx);
    assert_eq!(now, before);

    // Finder: "untitled folder" first; the leaf must wait for the real name.
    let drop = lib.root.join("New Leaf/Ubuntu");
    assert!(wait_until(Duration::from_secs(5), || drop.is_dir()));
    fs::create_dir(drop.join("untitled folder")).unwrap();
    // Seen as a placeholder, and still no leaf well past the settle period.
    assert!(
        wait_until(Duration::from_secs(10), || log_of(&lib)
            .contains("New Leaf/Ubuntu/untitled folder has Finder's placeholder name")),
        "{}",
        log_of(&lib)
    );
    std::thread::sleep(Duration::from_millis(3500));
    assert!(leaves(&lib).is_empty(), "a leaf was made from a placeholder name: {:?}", leaves(&lib));
    fs::rename(drop.join("untitled folder"), drop.join("Web Server")).unwrap();
    assert!(wait_until(Duration::from_secs(20), || is_leaf(&lib, "Web Server")), "no leaf: {}", log_of(&lib));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(leaves(&lib), ["Web Server"]);
    assert!(!drop.join("Web Server").exists(), "the request folder is removed");
    leaf_reads_base(&lib, "Web Server", &vm);

    assert_eq!(agent.stop().code(), Some(0));
    let log = log_of(&lib);
    assert!(log.contains("base \"Ubuntu\" made from Make Base/Ubuntu.vmwarevm: 1 disk, 8.0 MiB"), "{log}");
    assert!(log.contains("leaf \"Web Server\" made from base \"Ubuntu\""), "{log}");
    assert!(log.trim_end().ends_with("agent stopped"), "the log was not flushed at exit: {log}");
}

#[test]
fn a_folder_renamed_twice_quickly_gives_one_leaf_with_the_final_name() {
    let lib = Lib::new();
    let vm = cli_base(&lib, "Base");
    let _agent = Agent::start(&lib);
    let drop = lib.root.join("New Leaf/Base");
    fs::create_dir(drop.join("untitled folder")).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    fs::rename(drop.join("untitled folder"), drop.join("Firs")).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    fs::rename(drop.join("Firs"), drop.join("First Try")).unwrap();
    assert!(wait_until(Duration::from_secs(20), || is_leaf(&lib, "First Try")), "{}", log_of(&lib));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(leaves(&lib), ["First Try"]);
    leaf_reads_base(&lib, "First Try", &vm);
}

/// Copies `src` into `dst` file by file, 8 KiB at a time, pausing `pause` between pieces.
fn slow_copy(src: &Path, dst: &Path, pause: Duration, stop_after: Option<usize>) -> usize {
    use std::io::{Read, Write};
    fs::create_dir_all(dst).unwrap();
    let mut pieces = 0;
    for e in walk(src) {
        let to = dst.join(e.strip_prefix(src).unwrap());
        if e.is_dir() {
            fs::create_dir_all(&to).unwrap();
            continue;
        }
        let mut from = fs::File::open(&e).unwrap();
        let mut out = fs::OpenOptions::new().create(true).append(true).open(&to).unwrap();
        let already = out.metadata().unwrap().len();
        std::io::Seek::seek(&mut from, std::io::SeekFrom::Start(already)).unwrap();
        let mut buf = vec![0u8; 8192];
        loop {
            let n = from.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).unwrap();
            pieces += 1;
            if stop_after.is_some_and(|s| pieces >= s) {
                return pieces;
            }
            std::thread::sleep(pause);
        }
    }
    pieces
}

#[test]
fn a_slow_copy_becomes_a_base_only_once_it_has_ended() {
    let lib = Lib::new();
    let _agent = Agent::start(&lib);
    let vm = small("Slow");
    let src = vm.build(lib.tmp.path()).unwrap();
    let before = checksums(&src);
    let dst = lib.make_base_dir().join("Slow.vmwarevm");
    // Pauses well under the settle period, for about five times its length.
    let start = Instant::now();
    let copier = {
        let (src, dst) = (src.clone(), dst.clone());
        std::thread::spawn(move || slow_copy(&src, &dst, Duration::from_millis(30), None))
    };
    while !copier.is_finished() {
        assert!(!is_base(&lib, "Slow"), "a base was made while the copy was still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    copier.join().unwrap();
    assert!(start.elapsed() > Duration::from_secs(3), "the copy was too fast to test anything: {:?}", start.elapsed());
    assert!(wait_until(Duration::from_secs(20), || is_base(&lib, "Slow")), "{}", log_of(&lib));
    let mut now = vm_files(&lib.base_dir("Slow"));
    let vmx = now.remove(Path::new("Slow.vmx.base")).unwrap();
    now.insert("Slow.vmx".into(), vmx);
    assert_eq!(now, before);
}

#[test]
fn a_copy_that_pauses_is_refused_and_goes_through_when_it_resumes() {
    let lib = Lib::new();
    let _agent = Agent::start(&lib);
    let vm = small("Paused");
    let src = vm.build(lib.tmp.path()).unwrap();
    let dst = lib.make_base_dir().join("Paused.vmwarevm");
    // Half the copy, then a pause far longer than the settle period.
    let total = slow_copy(&src, &lib.tmp.path().join("count"), Duration::ZERO, None);
    slow_copy(&src, &dst, Duration::ZERO, Some(total / 2));
    let note = lib.make_base_dir().join("Paused.vmwarevm - leafd error.txt");
    assert!(
        wait_until(Duration::from_secs(20), || note.exists()),
        "the incomplete VM was not reported: {}",
        log_of(&lib)
    );
    assert!(!is_base(&lib, "Paused"));
    slow_copy(&src, &dst, Duration::ZERO, None);
    assert!(wait_until(Duration::from_secs(20), || is_base(&lib, "Paused")), "{}", log_of(&lib));
    assert!(wait_until(Duration::from_secs(5), || !note.exists()), "the note stayed after success");
    assert!(fs::read_dir(lib.make_base_dir()).unwrap().next().is_none());
}

#[test]
fn a_running_vm_is_refused_with_tag_and_note_then_converted_when_shut_down() {
    let lib = Lib::new();
    let _agent = Agent::start(&lib);
    let vm = small("Busy");
    let built = vm.build(lib.tmp.path()).unwrap();
    fs::create_dir(built.join("Busy.vmx.lck")).unwrap();
    fs::write(built.join("Busy.vmx.lck/M31657.lck"), b"lock").unwrap();
    let before = checksums(&built);
    let bundle = lib.make_base_dir().join("Busy.vmwarevm");
    fs::rename(&built, &bundle).unwrap();
    let note = lib.make_base_dir().join("Busy.vmwarevm - leafd error.txt");
    assert!(wait_until(Duration::from_secs(20), || note.exists()), "{}", log_of(&lib));
    let text = fs::read_to_string(&note).unwrap();
    assert!(text.contains("is running") && text.contains("shut the VM down"), "{text}");
    assert_eq!(xattr::get(&bundle, "user.xdg.tags").unwrap().unwrap(), b"Red");
    let status = lib.ok(&["status"]);
    let line = status.lines().find(|l| l.starts_with("FAILED Make Base/Busy.vmwarevm: ")).unwrap_or_default();
    assert!(line.contains("Busy.vmx.lck") && line.contains("is running"), "{status}");
    assert_eq!(checksums(&bundle), before, "a refused VM was changed");
    assert!(log_of(&lib).contains("could not make a base from Make Base/Busy.vmwarevm"), "{}", log_of(&lib));
    // Shut down: the lock goes away, and the agent tries again by itself.
    fs::remove_dir_all(bundle.join("Busy.vmx.lck")).unwrap();
    assert!(wait_until(Duration::from_secs(20), || is_base(&lib, "Busy")), "{}", log_of(&lib));
    assert!(wait_until(Duration::from_secs(5), || !note.exists()), "the note stayed");
    let tags = xattr::get(lib.base_dir("Busy"), "user.xdg.tags").unwrap().unwrap();
    assert_eq!(tags, b"Base", "the red tag travelled into the base");
}

#[test]
fn items_present_before_the_agent_starts_are_processed() {
    let lib = Lib::new();
    let vm = cli_base(&lib, "Early");
    small("Waiting").build(&lib.make_base_dir()).unwrap();
    fs::create_dir(lib.root.join("New Leaf/Early/Leaf Before Start")).unwrap();
    let _agent = Agent::start(&lib);
    assert!(
        wait_until(Duration::from_secs(20), || is_base(&lib, "Waiting") && is_leaf(&lib, "Leaf Before Start")),
        "{}",
        log_of(&lib)
    );
    leaf_reads_base(&lib, "Leaf Before Start", &vm);
}

#[test]
fn a_killed_agent_restarted_leaves_a_correct_library() {
    let lib = Lib::new();
    let vm = cli_base(&lib, "Ubuntu");
    // Killed halfway through a Make Base, and through a New Leaf after its publish.
    let mut agent = Agent::start_with(&lib, &[("LEAFD_FAULT", "make-base:protected")]);
    let bundle = small("Second").build(&lib.make_base_dir()).unwrap();
    let before = checksums(&bundle);
    let status = agent.wait_exit(Duration::from_secs(20)).expect("the fault did not fire");
    assert_eq!(status.signal(), Some(9));
    drop(agent);
    assert!(!is_base(&lib, "Second"));
    // The next agent recovers, makes the base, and is killed making a leaf.
    let mut agent = Agent::start_with(&lib, &[("LEAFD_FAULT", "new-leaf:published")]);
    fs::create_dir(lib.root.join("New Leaf/Ubuntu/Web")).unwrap();
    let status = agent.wait_exit(Duration::from_secs(20)).expect("the fault did not fire");
    assert_eq!(status.signal(), Some(9));
    drop(agent);

    let agent = Agent::start(&lib);
    assert!(
        wait_until(Duration::from_secs(20), || is_base(&lib, "Second")
            && !lib.root.join("New Leaf/Ubuntu/Web").exists()),
        "{}",
        log_of(&lib)
    );
    let mut now = vm_files(&lib.base_dir("Second"));
    let vmx = now.remove(Path::new("Second.vmx.base")).unwrap();
    now.insert("Second.vmx".into(), vmx);
    assert_eq!(now, before);
    assert_eq!(leaves(&lib), ["Web"]);
    leaf_reads_base(&lib, "Web", &vm);
    assert_eq!(agent.stop().code(), Some(0));
    assert_eq!(fs::read_dir(lib.root.join(".leafd/journal")).unwrap().count(), 0);
    let log = log_of(&lib);
    assert!(
        log.contains("undid the interrupted Make Base") && log.contains("finished the interrupted New Leaf"),
        "{log}"
    );
}

#[test]
fn a_burst_of_sixty_folders_gives_sixty_leaves() {
    let lib = Lib::new();
    let a = cli_base(&lib, "A");
    cli_base(&lib, "B");
    let _agent = Agent::start(&lib);
    let mut expected: Vec<String> = Vec::new();
    for i in 0..50 {
        fs::create_dir(lib.root.join(format!("New Leaf/A/a{i:02}"))).unwrap();
        expected.push(format!("a{i:02}"));
    }
    for i in 0..10 {
        fs::create_dir(lib.root.join(format!("New Leaf/B/b{i:02}"))).unwrap();
        expected.push(format!("b{i:02}"));
    }
    expected.sort();
    assert!(
        wait_until(Duration::from_secs(90), || expected.iter().all(|n| is_leaf(&lib, n))),
        "{:?}\n{}",
        leaves(&lib),
        log_of(&lib)
    );
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(leaves(&lib), expected, "none missed, none twice");
    assert_eq!(leaf_list(&lib.base_dir("A")).len(), 50);
    assert_eq!(leaf_list(&lib.base_dir("B")).len(), 10);
    assert_eq!(fs::read_dir(lib.root.join("New Leaf/A")).unwrap().count(), 0);
    leaf_reads_base(&lib, "a49", &a);
    let made = log_of(&lib).lines().filter(|l| l.contains(" made from base ")).count();
    assert_eq!(made, 60);
}

#[test]
fn a_second_agent_on_the_same_library_refuses() {
    let lib = Lib::new();
    let _agent = Agent::start(&lib);
    let o = lib.command(&["agent"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("another leafd agent is already watching this library"), "{}", text(&o));
}

#[test]
fn a_file_dropped_in_new_leaf_is_ignored() {
    let lib = Lib::new();
    cli_base(&lib, "Base");
    let _agent = Agent::start(&lib);
    fs::write(lib.root.join("New Leaf/Base/notes.txt"), b"hello").unwrap();
    fs::create_dir(lib.root.join("New Leaf/Base/Real")).unwrap();
    assert!(wait_until(Duration::from_secs(20), || is_leaf(&lib, "Real")));
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(leaves(&lib), ["Real"]);
    assert!(lib.root.join("New Leaf/Base/notes.txt").exists());
}

#[test]
fn sigterm_during_a_long_copy_rolls_it_back_and_exits_in_time() {
    let lib = Lib::new();
    // Make Base on a volume of its own: a VM dropped there is copied into Bases.
    let volume = OtherVolume::at(&lib.make_base_dir());
    let agent = Agent::start(&lib);
    let mut vm = SampleVm::single("Big", DiskType::MonolithicFlat, 400 * MIB);
    vm.disks[0].patterns = vec![leafd::sample::Pattern { offset: 0, len: 400 * MIB, byte: 0x5a }];
    let hidden = volume.path().join(".building");
    fs::create_dir(&hidden).unwrap();
    let built = vm.build(&hidden).unwrap();
    let before = checksums(&built);
    let bundle = volume.path().join("Big.vmwarevm");
    fs::rename(&built, &bundle).unwrap();
    let staging = || {
        fs::read_dir(lib.root.join("Bases"))
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".leafd-staging"))
    };
    assert!(wait_until(Duration::from_secs(20), staging), "the copy never started: {}", log_of(&lib));
    let asked = Instant::now();
    assert_eq!(agent.stop().code(), Some(0));
    assert!(asked.elapsed() < Duration::from_secs(20));
    assert!(!staging(), "the half copy was left behind");
    assert!(!is_base(&lib, "Big"));
    assert_eq!(checksums(&bundle), before, "the source changed");
    assert_eq!(fs::read_dir(lib.root.join(".leafd/journal")).unwrap().count(), 0);
    assert!(log_of(&lib).trim_end().ends_with("agent stopped"));
}

/// A `vmrun` that hangs (stand-in: sleeps) when the agent is asked to stop: it is killed, the
/// unpublished leaf undone, and the agent exits in time.
#[test]
fn sigterm_while_vmrun_hangs_undoes_the_leaf_and_exits_in_time() {
    let lib = Lib::new();
    cli_base(&lib, "Base");
    let vmrun = vmrun_stand_in(lib.tmp.path(), "hangs", "sleep 60");
    let agent = Agent::start_with(&lib, &[("LEAFD_VMRUN", vmrun.to_str().unwrap())]);
    fs::create_dir(lib.root.join("New Leaf/Base/Web")).unwrap();
    let args = lib.tmp.path().join("args.log");
    assert!(wait_until(Duration::from_secs(20), || args.exists()), "vmrun never ran: {}", log_of(&lib));
    let asked = Instant::now();
    assert_eq!(agent.stop().code(), Some(0));
    assert!(asked.elapsed() < Duration::from_secs(20));
    assert!(leaves(&lib).is_empty(), "{:?}", leaves(&lib));
    let stray = leftovers(&lib.root);
    assert!(stray.is_empty(), "{stray:?}");
    assert_eq!(fs::read_dir(lib.root.join(".leafd/journal")).unwrap().count(), 0);
    assert!(lib.root.join("New Leaf/Base/Web").is_dir(), "the request stays for next time");
    assert!(log_of(&lib).trim_end().ends_with("agent stopped"));
}

/// Make Base deleted while the agent runs: it is made again and watched again, so a VM dropped
/// into the new folder converts without waiting for the slow rescan.
#[test]
fn a_deleted_drop_folder_is_made_and_watched_again() {
    let lib = Lib::new();
    let _agent = Agent::start(&lib);
    fs::remove_dir(lib.make_base_dir()).unwrap();
    assert!(wait_until(Duration::from_secs(10), || log_of(&lib).contains("again (it was deleted")), "{}", log_of(&lib));
    assert!(lib.make_base_dir().is_dir());
    let built = small("Again").build(lib.tmp.path()).unwrap();
    fs::rename(&built, lib.make_base_dir().join("Again.vmwarevm")).unwrap();
    assert!(wait_until(Duration::from_secs(20), || is_base(&lib, "Again")), "{}", log_of(&lib));
}

#[test]
fn the_default_settle_period_works_too() {
    // The agent's own looks open files; those events must not keep restarting the wait.
    let lib = Lib::new();
    let _agent = Agent::start_args(&lib, &["agent"], &[]);
    assert!(log_of(&lib).contains("(settle 3.0 s)"));
    let vm = small("Default");
    let built = vm.build(lib.tmp.path()).unwrap();
    fs::rename(&built, lib.make_base_dir().join("Default.vmwarevm")).unwrap();
    assert!(wait_until(Duration::from_secs(30), || is_base(&lib, "Default")), "no base: {}", log_of(&lib));
    let drop = lib.root.join("New Leaf/Default");
    fs::create_dir(drop.join("untitled folder")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    fs::rename(drop.join("untitled folder"), drop.join("Leaf")).unwrap();
    assert!(wait_until(Duration::from_secs(30), || is_leaf(&lib, "Leaf")), "no leaf: {}", log_of(&lib));
}

/// A bug (a panic, injected) in an operation: the item gets its note, what was begun is undone at
/// once, and the base is not left busy: the item is tried again when it changes.
#[test]
fn an_operation_that_panics_fails_its_item_and_frees_its_base() {
    let lib = Lib::new();
    cli_base(&lib, "Base");
    let base_before = fingerprint_tree(&lib.base_dir("Base"));
    let _agent = Agent::start_with(&lib, &[("LEAFD_FAULT", "new-leaf:deltas-written:panic")]);
    let drop = lib.root.join("New Leaf/Base");
    fs::create_dir(drop.join("Web")).unwrap();
    let note = drop.join("Web - leafd error.txt");
    assert!(wait_until(Duration::from_secs(20), || note.exists()), "{}", log_of(&lib));
    let text = fs::read_to_string(&note).unwrap();
    assert!(text.contains("failed unexpectedly") && text.contains("new-leaf:deltas-written"), "{text}");
    assert!(leaves(&lib).is_empty(), "{:?}", leaves(&lib));
    assert_eq!(fs::read_dir(lib.root.join(".leafd/journal")).unwrap().count(), 0, "not undone at once");
    let stray = leftovers(&lib.root);
    assert!(stray.is_empty(), "{stray:?}");
    // Renamed: tried again (its base is free), and fails the same way.
    fs::rename(drop.join("Web"), drop.join("Web 2")).unwrap();
    let note = drop.join("Web 2 - leafd error.txt");
    assert!(wait_until(Duration::from_secs(20), || note.exists()), "not tried again: {}", log_of(&lib));
    let mut after = fingerprint_tree(&lib.base_dir("Base"));
    after.retain(|l| !is_records(l));
    let mut before = base_before;
    before.retain(|l| !is_records(l));
    assert_eq!(after, before, "the base changed");
}

/// The request folder renamed while its leaf is being made (here by a `vmrun` stand-in that
/// renames it, then takes the snapshot): one leaf, under the final name, never the old one.
#[test]
fn a_folder_renamed_while_its_leaf_is_made_gives_one_leaf_with_the_new_name() {
    let lib = Lib::new();
    let vm = cli_base(&lib, "Base");
    let drop = lib.root.join("New Leaf/Base");
    let rename = format!(
        "mv '{}' '{}' 2>/dev/null || true\n{VMRUN_WORKS}",
        drop.join("Web").display(),
        drop.join("Web Server").display()
    );
    let vmrun = vmrun_stand_in(lib.tmp.path(), "renames", &rename);
    let _agent = Agent::start_with(&lib, &[("LEAFD_VMRUN", vmrun.to_str().unwrap())]);
    fs::create_dir(drop.join("Web")).unwrap();
    assert!(wait_until(Duration::from_secs(20), || is_leaf(&lib, "Web Server")), "{}", log_of(&lib));
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(leaves(&lib), ["Web Server"]);
    assert_eq!(leaf_list(&lib.base_dir("Base")).len(), 1);
    assert_eq!(fs::read_dir(&drop).unwrap().count(), 0, "{:?}", fs::read_dir(&drop).unwrap().collect::<Vec<_>>());
    leaf_reads_base(&lib, "Web Server", &vm);
}

/// A note whose item went while the agent was not running goes at the next start; a note
/// whose item is still there stays until the item is dealt with.
#[test]
fn notes_of_items_that_are_gone_are_removed_at_start() {
    let lib = Lib::new();
    cli_base(&lib, "Base");
    let orphan = lib.make_base_dir().join("Old VM.vmwarevm - leafd error.txt");
    fs::write(&orphan, b"leafd could not make a base from \"Old VM.vmwarevm\".\n").unwrap();
    let kept = lib.root.join("New Leaf/Base/untitled folder - leafd error.txt");
    fs::create_dir(lib.root.join("New Leaf/Base/untitled folder")).unwrap();
    fs::write(&kept, b"a note for an item that is still there\n").unwrap();
    let _agent = Agent::start(&lib);
    assert!(wait_until(Duration::from_secs(10), || !orphan.exists()), "{}", log_of(&lib));
    assert!(kept.exists(), "the note of an item still there was removed");
}

/// The cause of a failure may lie outside the item: here a leaf of the same name exists. Once it
/// is deleted the agent tries again by itself (the retry timer), and says the failure once.
#[test]
fn a_failure_whose_cause_goes_away_elsewhere_is_retried_by_the_timer() {
    let lib = Lib::new();
    let vm = cli_base(&lib, "Base");
    lib.ok(&["new-leaf", "Base", "Web"]);
    let config = lib.tmp.path().join("config/leafd");
    fs::create_dir_all(&config).unwrap();
    fs::write(config.join("config.toml"), "retry_seconds = 1\n").unwrap();
    let _agent = Agent::start_with(&lib, &[("RUST_LOG", "leafd=debug")]);
    let drop = lib.root.join("New Leaf/Base");
    fs::create_dir(drop.join("Web")).unwrap();
    let note = drop.join("Web - leafd error.txt");
    assert!(wait_until(Duration::from_secs(20), || note.exists()), "{}", log_of(&lib));
    assert!(fs::read_to_string(&note).unwrap().contains("already exists"));
    // Tried again at 1 s and 2 s later, failing the same way: one line in the log.
    std::thread::sleep(Duration::from_millis(3500));
    let said = log_of(&lib).lines().filter(|l| l.contains("could not make a leaf")).count();
    assert_eq!(said, 1, "{}", log_of(&lib));
    let retried = log_of(&lib).lines().filter(|l| l.contains("still cannot make a leaf")).count();
    assert!(retried >= 1, "never tried again: {}", log_of(&lib));
    assert!(note.exists(), "the note must stay while the cause does");
    // The old leaf deleted by hand, as a person would, and forgotten.
    fs::remove_dir_all(lib.leaf_dir("Web")).unwrap();
    lib.ok(&["forget", "Web"]);
    assert!(wait_until(Duration::from_secs(30), || is_leaf(&lib, "Web")), "{}", log_of(&lib));
    assert!(wait_until(Duration::from_secs(5), || !note.exists()), "the note stayed");
    leaf_reads_base(&lib, "Web", &vm);
}

/// Every notification's process is reaped: an agent that has posted 100 (through a stand-in for
/// `notify-send`, first on the PATH, that records its arguments) has no zombie children.
#[test]
fn an_agent_that_posted_a_hundred_notifications_has_no_zombies() {
    use std::os::unix::fs::PermissionsExt;
    let lib = Lib::new();
    let config = lib.tmp.path().join("config/leafd");
    fs::create_dir_all(&config).unwrap();
    fs::write(config.join("config.toml"), "notifications = true\n").unwrap();
    let bin = lib.tmp.path().join("notify-send-stand-in");
    fs::create_dir(&bin).unwrap();
    let calls = lib.tmp.path().join("notify-send.log");
    fs::write(
        bin.join("notify-send"),
        format!(
            "#!/bin/bash\n# Stand-in for libnotify's notify-send (no desktop here): records its arguments.\n\
             echo \"$*\" >> '{}'\n",
            calls.display()
        ),
    )
    .unwrap();
    fs::set_permissions(bin.join("notify-send"), fs::Permissions::from_mode(0o755)).unwrap();
    // 100 drops refused: folders without a .vmx.
    for i in 0..100 {
        let dir = lib.make_base_dir().join(format!("Not a VM {i:03}"));
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("notes.txt"), b"no VM here").unwrap();
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let agent = Agent::start_args(&lib, &["agent", "--settle", "0.2"], &[("PATH", &path)]);
    let posted = || fs::read_to_string(&calls).map(|s| s.lines().count()).unwrap_or(0);
    assert!(wait_until(Duration::from_secs(60), || posted() >= 100), "{} notifications: {}", posted(), log_of(&lib));
    let said = fs::read_to_string(&calls).unwrap();
    let first = said.lines().next().unwrap();
    assert!(first.starts_with("--app-name=leafd -- leafd Could not make a base from \"Not a VM "), "{first}");
    // The last ones may still be ending: give them a moment, not more.
    let zombies = || children_of(agent.child.id()).into_iter().filter(|&(_, s)| s == 'Z').count();
    assert!(wait_until(Duration::from_secs(2), || zombies() == 0), "{} zombie children of the agent", zombies());
    assert_eq!(agent.stop().code(), Some(0));
}
