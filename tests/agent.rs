//! The agent end to end: the real binary, the real watcher (inotify), real files. What the agent
//! decides, and when, is tested in milliseconds by the core's unit tests (src/agent/machine);
//! these check that the real events, looks and operations get there.
//!
//! Waiting is on events (a watcher on the library and the log, or the process's exit), never by
//! sleeping; the few fixed pauses (a person typing, a copy pausing) go through [`pause`], which
//! keeps this binary under [`PAUSE_BUDGET`] of sleep in all and prints the total at exit.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, kill_process, waitid};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::*;
use leafd::testing::SampleVm;
use leafd_formats::disk::DiskType;
use notify::Watcher;

const MIB: u64 = 1 << 20;
const SETTLE: &str = "1";
const SETTLE_PERIOD: Duration = Duration::from_secs(1);

/// The most this test binary may sleep, all tests together.
const PAUSE_BUDGET: Duration = Duration::from_secs(15);
/// Microseconds slept in [`pause`], and spent waiting on events in [`Agent::wait`], so far.
static PAUSED: AtomicU64 = AtomicU64::new(0);
static WAITED: AtomicU64 = AtomicU64::new(0);

/// A fixed pause (a person typing, a copy between two pieces): the only sleep allowed here.
fn pause(d: Duration) {
    std::thread::sleep(d);
    let total = Duration::from_micros(PAUSED.fetch_add(d.as_micros() as u64, Ordering::Relaxed)) + d;
    assert!(total < PAUSE_BUDGET, "the agent tests have slept {total:?}, more than {PAUSE_BUDGET:?}");
}

extern "C" fn print_totals() {
    let us = |a: &AtomicU64| Duration::from_micros(a.load(Ordering::Relaxed)).as_secs_f64();
    eprintln!(
        "agent tests: {:.2} s of fixed pauses (budget {} s), {:.2} s waiting on events for the agent",
        us(&PAUSED),
        PAUSE_BUDGET.as_secs(),
        us(&WAITED)
    );
}

/// A running `leafd agent` and a watcher on its library and log; killed when dropped.
struct Agent {
    child: Child,
    events: Receiver<notify::Result<notify::Event>>,
    _watcher: notify::RecommendedWatcher,
}

impl Agent {
    fn start(lib: &Lib) -> Agent {
        Self::start_with(lib, &[])
    }

    fn start_with(lib: &Lib, env: &[(&str, &str)]) -> Agent {
        Self::start_args(lib, &["agent", "--settle", SETTLE], env)
    }

    fn start_args(lib: &Lib, args: &[&str], env: &[(&str, &str)]) -> Agent {
        static TOTALS: std::sync::Once = std::sync::Once::new();
        // SAFETY: print_totals is an `extern "C" fn()` that only reads atomics and prints.
        TOTALS.call_once(|| unsafe {
            libc::atexit(print_totals);
        });
        fs::create_dir_all(lib.log_dir()).unwrap();
        let (tx, events) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(tx).unwrap();
        watcher.watch(&lib.root, notify::RecursiveMode::Recursive).unwrap();
        watcher.watch(&lib.log_dir(), notify::RecursiveMode::Recursive).unwrap();
        let mut c = lib.command(args);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        let agent = Agent { child: c.spawn().unwrap(), events, _watcher: watcher };
        // Up and watching once it has logged that it is.
        assert!(
            agent.wait(Duration::from_secs(10), || log_of(lib).contains("agent watching")),
            "the agent did not start"
        );
        agent
    }

    /// Waits until `f` holds, looking again at each event in the library or its log (and at
    /// least every 200 ms, for what comes without one); false if it still does not `within`.
    fn wait(&self, within: Duration, mut f: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        let deadline = start + within;
        let held = loop {
            if f() {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            let _ = self.events.recv_timeout((deadline - now).min(Duration::from_millis(200)));
            while self.events.try_recv().is_ok() {}
        };
        WAITED.fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        held
    }

    /// SIGTERM, then the exit status (within launchd's 20 s).
    fn stop(mut self) -> ExitStatus {
        let _ = kill_process(Pid::from_child(&self.child), Signal::TERM);
        self.wait_exit(Duration::from_secs(20)).expect("the agent did not stop within 20 s of SIGTERM")
    }

    /// Waits for the process to exit (blocked in waitid, not polling).
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let pid = Pid::from_child(&self.child);
        let (tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            // Not reaped (NOWAIT): try_wait below collects the status.
            let _ = waitid(WaitId::Pid(pid), WaitIdOptions::EXITED | WaitIdOptions::NOWAIT);
            let _ = tx.send(());
        });
        exited.recv_timeout(within).ok()?;
        self.child.try_wait().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// The base's files as they were dropped (its `.vmx` is kept as `.vmx.base`).
fn base_as_dropped(lib: &Lib, name: &str) -> std::collections::BTreeMap<PathBuf, String> {
    let mut files = vm_files(&lib.base_dir(name));
    let vmx = files.remove(Path::new(&format!("{name}.vmx.base"))).expect("the base keeps its .vmx");
    files.insert(format!("{name}.vmx").into(), vmx);
    files
}

/// How many lines of the log contain `what`.
fn said(lib: &Lib, what: &str) -> usize {
    log_of(lib).lines().filter(|l| l.contains(what)).count()
}

#[test]
fn a_moved_bundle_becomes_a_base_and_a_named_folder_a_leaf() {
    let lib = Lib::new();
    let agent = Agent::start_with(&lib, &[("RUST_LOG", "leafd=debug")]);
    let vm = small("Ubuntu");
    let built = vm.build(lib.tmp.path()).unwrap();
    let before = checksums(&built);
    fs::rename(&built, lib.make_base_dir().join("Ubuntu.vmwarevm")).unwrap();
    assert!(agent.wait(Duration::from_secs(20), || is_base(&lib, "Ubuntu")), "no base: {}", log_of(&lib));
    assert_eq!(fs::read_dir(lib.make_base_dir()).unwrap().count(), 0, "Make Base is empty again");
    assert_eq!(base_as_dropped(&lib, "Ubuntu"), before);

    // Finder: "untitled folder" first; the leaf waits for the real name (never made from a
    // placeholder: the core's unit tests).
    let drop = lib.root.join("New Leaf/Ubuntu");
    assert!(agent.wait(Duration::from_secs(5), || drop.is_dir()));
    fs::create_dir(drop.join("untitled folder")).unwrap();
    let placeholder = "New Leaf/Ubuntu/untitled folder has Finder's placeholder name";
    assert!(agent.wait(Duration::from_secs(10), || log_of(&lib).contains(placeholder)), "{}", log_of(&lib));
    assert!(leaves(&lib).is_empty(), "a leaf was made from a placeholder name: {:?}", leaves(&lib));
    fs::rename(drop.join("untitled folder"), drop.join("Web Server")).unwrap();
    assert!(agent.wait(Duration::from_secs(20), || is_leaf(&lib, "Web Server")), "no leaf: {}", log_of(&lib));
    assert_eq!(leaves(&lib), ["Web Server"]);
    assert!(agent.wait(Duration::from_secs(5), || !drop.join("Web Server").exists()), "the request folder is removed");
    leaf_reads_base(&lib, "Web Server", &vm);

    assert_eq!(agent.stop().code(), Some(0));
    let log = log_of(&lib);
    assert!(log.contains("base \"Ubuntu\" made from Make Base/Ubuntu.vmwarevm: 1 disk, 8.0 MiB"), "{log}");
    assert!(log.contains("leaf \"Web Server\" made from base \"Ubuntu\""), "{log}");
    assert!(log.trim_end().ends_with("agent stopped"), "the log was not flushed at exit: {log}");
}

/// Issue 17: at default settings, an empty folder's leaf is ready within a second of its last
/// rename; a Make Base drop still waits the 3 s settle period.
#[test]
fn at_default_settings_a_leaf_is_ready_within_a_second_of_its_rename() {
    let lib = Lib::new();
    let agent = Agent::start_args(&lib, &["agent"], &[]);
    assert!(log_of(&lib).contains("(settle 3.0 s, an empty New Leaf folder 400 ms)"), "{}", log_of(&lib));
    let built = small("Default").build(lib.tmp.path()).unwrap();
    fs::rename(&built, lib.make_base_dir().join("Default.vmwarevm")).unwrap();
    let dropped = Instant::now();
    // The agent's own looks open files; those events must not keep restarting the wait.
    assert!(agent.wait(Duration::from_secs(30), || is_base(&lib, "Default")), "no base: {}", log_of(&lib));
    assert!(dropped.elapsed() >= Duration::from_secs(3), "made a base {:?} after the drop", dropped.elapsed());
    let drop = lib.root.join("New Leaf/Default");
    assert!(agent.wait(Duration::from_secs(5), || drop.is_dir()));
    fs::create_dir(drop.join("untitled folder")).unwrap();
    pause(Duration::from_millis(300));
    fs::rename(drop.join("untitled folder"), drop.join("Leaf")).unwrap();
    let renamed = Instant::now();
    assert!(agent.wait(Duration::from_secs(30), || is_leaf(&lib, "Leaf")), "no leaf: {}", log_of(&lib));
    let took = renamed.elapsed();
    assert!(took < Duration::from_secs(1), "the leaf took {took:?} after its rename");
    assert!(took >= Duration::from_millis(400), "the leaf came {took:?} after its rename, before its quiet period");
}

/// Issue 10.6: moved in and out of Make Base with pauses under the settle period, a bundle
/// becomes a base only once it has stayed for the settle period (before the raw event stream,
/// it was converted 0.4–0.9 s after arriving, and the next move out failed).
#[test]
fn a_bundle_moved_in_and_out_becomes_a_base_a_settle_period_after_it_stays() {
    let lib = Lib::new();
    let agent = Agent::start(&lib);
    let outside = small("Hop").build(lib.tmp.path()).unwrap();
    let inside = lib.make_base_dir().join("Hop.vmwarevm");
    // Cycles of uneven lengths: the old debouncer delivered events on a 250 ms tick, and the
    // looks are timed from those deliveries.
    for (stay, away) in [(900, 60), (850, 90), (900, 60), (800, 120), (900, 70), (850, 60)] {
        fs::rename(&outside, &inside).unwrap();
        let arrived = Instant::now();
        pause(Duration::from_millis(stay));
        fs::rename(&inside, &outside)
            .unwrap_or_else(|e| panic!("made a base {:?} after it arrived ({e}): {}", arrived.elapsed(), log_of(&lib)));
        pause(Duration::from_millis(away));
    }
    fs::rename(&outside, &inside).unwrap();
    let arrived = Instant::now();
    assert!(agent.wait(Duration::from_secs(20), || !inside.exists()), "{}", log_of(&lib));
    let stayed = arrived.elapsed();
    assert!(stayed >= SETTLE_PERIOD, "made a base {stayed:?} after it arrived, within the settle period");
    assert!(agent.wait(Duration::from_secs(20), || is_base(&lib, "Hop")), "{}", log_of(&lib));
}

/// Copies `src` into `dst` file by file, `piece` bytes at a time, pausing `wait` between pieces;
/// stops after `stop_after` pieces. Returns the pieces copied.
fn slow_copy(src: &Path, dst: &Path, piece: usize, wait: Duration, stop_after: Option<usize>) -> usize {
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
        let mut buf = vec![0u8; piece];
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
            if !wait.is_zero() {
                pause(wait);
            }
        }
    }
    pieces
}

#[test]
fn a_slow_copy_becomes_a_base_only_once_it_has_ended() {
    let lib = Lib::new();
    let agent = Agent::start(&lib);
    let vm = small("Slow");
    let src = vm.build(lib.tmp.path()).unwrap();
    let before = checksums(&src);
    let dst = lib.make_base_dir().join("Slow.vmwarevm");
    // Pauses of a quarter of the settle period, for over twice its length in all.
    let start = Instant::now();
    let copier = {
        let (src, dst) = (src.clone(), dst.clone());
        std::thread::spawn(move || slow_copy(&src, &dst, 1 << 20, SETTLE_PERIOD / 4, None))
    };
    while !copier.is_finished() {
        assert!(!is_base(&lib, "Slow"), "a base was made while the copy was still running");
        agent.wait(Duration::from_millis(50), || false);
    }
    copier.join().unwrap();
    let took = start.elapsed();
    assert!(took > SETTLE_PERIOD * 2, "the copy was too fast to test anything: {took:?}");
    assert!(agent.wait(Duration::from_secs(20), || is_base(&lib, "Slow")), "{}", log_of(&lib));
    assert_eq!(base_as_dropped(&lib, "Slow"), before);
}

#[test]
fn a_copy_that_pauses_is_refused_and_goes_through_when_it_resumes() {
    let lib = Lib::new();
    let agent = Agent::start(&lib);
    let vm = small("Paused");
    let src = vm.build(lib.tmp.path()).unwrap();
    let dst = lib.make_base_dir().join("Paused.vmwarevm");
    // Half the copy, then a pause far longer than the settle period.
    let total = slow_copy(&src, &lib.tmp.path().join("count"), 8192, Duration::ZERO, None);
    slow_copy(&src, &dst, 8192, Duration::ZERO, Some(total / 2));
    let note = lib.make_base_dir().join("Paused.vmwarevm - leafd error.txt");
    assert!(
        agent.wait(Duration::from_secs(20), || note.exists()),
        "the incomplete VM was not reported: {}",
        log_of(&lib)
    );
    assert!(!is_base(&lib, "Paused"));
    slow_copy(&src, &dst, 8192, Duration::ZERO, None);
    assert!(agent.wait(Duration::from_secs(20), || is_base(&lib, "Paused")), "{}", log_of(&lib));
    assert!(agent.wait(Duration::from_secs(5), || !note.exists()), "the note stayed after success");
    assert!(fs::read_dir(lib.make_base_dir()).unwrap().next().is_none());
}

#[test]
fn a_running_vm_is_refused_with_tag_and_note_then_converted_when_shut_down() {
    let lib = Lib::new();
    let agent = Agent::start(&lib);
    let vm = small("Busy");
    let built = vm.build(lib.tmp.path()).unwrap();
    fs::create_dir(built.join("Busy.vmx.lck")).unwrap();
    fs::write(built.join("Busy.vmx.lck/M31657.lck"), b"lock").unwrap();
    let before = checksums(&built);
    let bundle = lib.make_base_dir().join("Busy.vmwarevm");
    fs::rename(&built, &bundle).unwrap();
    let note = lib.make_base_dir().join("Busy.vmwarevm - leafd error.txt");
    assert!(agent.wait(Duration::from_secs(20), || note.exists()), "{}", log_of(&lib));
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
    assert!(agent.wait(Duration::from_secs(20), || is_base(&lib, "Busy")), "{}", log_of(&lib));
    assert!(agent.wait(Duration::from_secs(5), || !note.exists()), "the note stayed");
    let tags = xattr::get(lib.base_dir("Busy"), "user.xdg.tags").unwrap().unwrap();
    assert_eq!(tags, b"Base", "the red tag travelled into the base");
}

#[test]
fn items_present_before_the_agent_starts_are_processed() {
    let lib = Lib::new();
    let vm = cli_base(&lib, "Early");
    small("Waiting").build(&lib.make_base_dir()).unwrap();
    fs::create_dir(lib.root.join("New Leaf/Early/Leaf Before Start")).unwrap();
    let agent = Agent::start(&lib);
    assert!(
        agent.wait(Duration::from_secs(20), || is_base(&lib, "Waiting") && is_leaf(&lib, "Leaf Before Start")),
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
    let request = lib.root.join("New Leaf/Ubuntu/Web");
    assert!(agent.wait(Duration::from_secs(20), || is_base(&lib, "Second") && !request.exists()), "{}", log_of(&lib));
    assert_eq!(base_as_dropped(&lib, "Second"), before);
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
    let agent = Agent::start(&lib);
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
        agent.wait(Duration::from_secs(90), || expected.iter().all(|n| is_leaf(&lib, n))),
        "{:?}\n{}",
        leaves(&lib),
        log_of(&lib)
    );
    assert_eq!(leaves(&lib), expected, "none missed");
    // Each leaf is linked from its base, and its request removed, just after it appears.
    let count = |p: PathBuf| fs::read_dir(p).map_or(0, |d| d.count());
    let linked = || leaf_list(&lib.base_dir("A")).len() == 50 && leaf_list(&lib.base_dir("B")).len() == 10;
    assert!(agent.wait(Duration::from_secs(5), linked), "{}", log_of(&lib));
    let requests = || count(lib.root.join("New Leaf/A")) + count(lib.root.join("New Leaf/B")) == 0;
    assert!(agent.wait(Duration::from_secs(5), requests), "{}", log_of(&lib));
    leaf_reads_base(&lib, "a49", &a);
    assert_eq!(agent.stop().code(), Some(0));
    assert_eq!(said(&lib, " made from base "), 60, "none twice");
}

#[test]
fn a_second_agent_on_the_same_library_refuses() {
    let lib = Lib::new();
    let _agent = Agent::start(&lib);
    let o = lib.command(&["agent"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let said = text(&o);
    assert_eq!(said.matches("another leafd agent is already watching this library").count(), 1, "said once: {said}");
    assert!(said.starts_with("leafd: ") && said.contains("fix: "), "{said}");
    // The log has it too, naming the library.
    let label = lib.root.display().to_string();
    assert!(log_of(&lib).contains(&format!("[{label}] ERROR {label}: another leafd agent")), "{}", log_of(&lib));
}

/// `--settle` takes seconds (`2`, `1.5`) and durations (`1.5s`, `500ms`); anything else, or more
/// than an hour, is bad usage with the fix.
#[test]
fn settle_takes_seconds_and_durations() {
    for (given, shown) in [("2", "2.0 s"), ("1.5s", "1.5 s"), ("500ms", "0.5 s")] {
        let lib = Lib::new();
        let agent = Agent::start_args(&lib, &["agent", "--settle", given], &[]);
        assert!(log_of(&lib).contains(&format!("(settle {shown},")), "--settle {given}: {}", log_of(&lib));
        assert_eq!(agent.stop().code(), Some(0));
    }
    let lib = Lib::new();
    for bad in ["soon", "-1", "2h", "1.5 parsecs"] {
        let o = lib.run(&["agent", "--settle", bad]);
        assert_eq!(o.status.code(), Some(2), "--settle {bad}: {}", text(&o));
        assert!(text(&o).contains("makes no sense") && text(&o).contains("(1.5s, 500ms)"), "{}", text(&o));
    }
}

/// Issues 10.10 and 12.6: a VM dropped into a base's folder in New Leaf, a bundle dropped into
/// New Leaf itself, and a drop whose name is not UTF-8 each get a note beside them (and a log
/// line); nothing inside them is touched and no leaf is made. A file in a base's folder is no
/// request and is left alone.
#[test]
fn wrong_drops_get_a_note_beside_them_and_nothing_else() {
    let lib = Lib::new();
    cli_base(&lib, "Base");
    let agent = Agent::start(&lib);
    let file = lib.root.join("New Leaf/Base/notes.txt");
    fs::write(&file, b"hello").unwrap();
    // Files, but no VM (a VM dropped here is adopted: see the test below).
    let in_request = small("Ubuntu").build(lib.tmp.path()).unwrap();
    fs::remove_file(in_request.join("Ubuntu.vmx")).unwrap();
    let in_request = {
        let at = lib.root.join("New Leaf/Base/Ubuntu.vmwarevm");
        fs::rename(&in_request, &at).unwrap();
        at
    };
    let in_new_leaf = lib.root.join("New Leaf/Debian.vmwarevm");
    fs::rename(small("Debian").build(lib.tmp.path()).unwrap(), &in_new_leaf).unwrap();
    let odd = lib.make_base_dir().join(OsStr::from_bytes(b"Caf\xe9.vmwarevm"));
    fs::rename(small("Cafe").build(lib.tmp.path()).unwrap(), &odd).unwrap();
    let inside: Vec<Vec<String>> =
        [&in_request, &in_new_leaf, &odd].iter().map(|p| fingerprint_tree(p).split_off(1)).collect();

    let note = |p: &Path| p.with_file_name(format!("{} - leafd error.txt", p.file_name().unwrap().to_string_lossy()));
    let notes = [note(&in_request), note(&in_new_leaf), note(&odd)];
    let lines = [
        "could not make a leaf of base \"Base\" from New Leaf/Base/Ubuntu.vmwarevm",
        "could not use New Leaf/Debian.vmwarevm",
        "could not make a base from Make Base/Caf\u{fffd}.vmwarevm",
    ];
    // The log is written by a thread of its own: a line may reach the file after the note.
    let told = || notes.iter().all(|n| n.exists()) && lines.iter().all(|l| said(&lib, l) > 0);
    assert!(agent.wait(Duration::from_secs(20), told), "{}", log_of(&lib));
    let text = |i: usize| fs::read_to_string(&notes[i]).unwrap();
    assert!(text(0).contains("holds files but no VM") && text(0).contains("Make Base"), "{}", text(0));
    assert!(text(1).contains("one folder per base") && text(1).contains("Make Base"), "{}", text(1));
    assert!(text(2).contains("not valid text (UTF-8)"), "{}", text(2));
    assert_eq!(notes[2].file_name().unwrap().to_str(), Some("Caf\u{fffd}.vmwarevm - leafd error.txt"));
    for what in lines {
        assert_eq!(said(&lib, what), 1, "{what}: {}", log_of(&lib));
    }
    let now: Vec<Vec<String>> =
        [&in_request, &in_new_leaf, &odd].iter().map(|p| fingerprint_tree(p).split_off(1)).collect();
    assert_eq!(now, inside, "something inside a wrong drop was touched");
    assert!(leaves(&lib).is_empty(), "{:?}", leaves(&lib));
    assert!(fs::read_dir(lib.root.join("Bases")).unwrap().count() == 1, "only the base made by the CLI");
    assert!(file.exists() && !note(&file).exists(), "a file in a base's folder is left alone");
}

#[test]
fn sigterm_during_a_long_copy_rolls_it_back_and_exits_in_time() {
    let lib = Lib::new();
    // Make Base on a volume of its own: a VM dropped there is copied into Bases.
    let volume = OtherVolume::at(&lib.make_base_dir());
    let agent = Agent::start(&lib);
    let mut vm = SampleVm::single("Big", DiskType::MonolithicFlat, 400 * MIB);
    vm.disks[0].patterns = vec![leafd::testing::Pattern { offset: 0, len: 400 * MIB, byte: 0x5a }];
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
    assert!(agent.wait(Duration::from_secs(20), staging), "the copy never started: {}", log_of(&lib));
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
    assert!(agent.wait(Duration::from_secs(20), || args.exists()), "vmrun never ran: {}", log_of(&lib));
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
    let agent = Agent::start(&lib);
    fs::remove_dir(lib.make_base_dir()).unwrap();
    let again = "again (it was deleted";
    assert!(agent.wait(Duration::from_secs(10), || log_of(&lib).contains(again)), "{}", log_of(&lib));
    assert!(lib.make_base_dir().is_dir());
    let built = small("Again").build(lib.tmp.path()).unwrap();
    fs::rename(&built, lib.make_base_dir().join("Again.vmwarevm")).unwrap();
    assert!(agent.wait(Duration::from_secs(20), || is_base(&lib, "Again")), "{}", log_of(&lib));
}

/// A bug (a panic, injected) in an operation: the item gets its note, what was begun is undone at
/// once, and the base is not left busy: the item is tried again when it changes.
#[test]
fn an_operation_that_panics_fails_its_item_and_frees_its_base() {
    let lib = Lib::new();
    cli_base(&lib, "Base");
    let base_before = fingerprint_tree(&lib.base_dir("Base"));
    let agent = Agent::start_with(&lib, &[("LEAFD_FAULT", "new-leaf:deltas-written:panic")]);
    let drop = lib.root.join("New Leaf/Base");
    fs::create_dir(drop.join("Web")).unwrap();
    let note = drop.join("Web - leafd error.txt");
    assert!(agent.wait(Duration::from_secs(20), || note.exists()), "{}", log_of(&lib));
    let text = fs::read_to_string(&note).unwrap();
    assert!(text.contains("failed unexpectedly") && text.contains("new-leaf:deltas-written"), "{text}");
    assert!(leaves(&lib).is_empty(), "{:?}", leaves(&lib));
    assert_eq!(fs::read_dir(lib.root.join(".leafd/journal")).unwrap().count(), 0, "not undone at once");
    let stray = leftovers(&lib.root);
    assert!(stray.is_empty(), "{stray:?}");
    // Renamed: tried again (its base is free), and fails the same way.
    fs::rename(drop.join("Web"), drop.join("Web 2")).unwrap();
    let note = drop.join("Web 2 - leafd error.txt");
    assert!(agent.wait(Duration::from_secs(20), || note.exists()), "not tried again: {}", log_of(&lib));
    let mut after = fingerprint_tree(&lib.base_dir("Base"));
    after.retain(|l| !is_records(l));
    let mut before = base_before;
    before.retain(|l| !is_records(l));
    assert_eq!(after, before, "the base changed");
}

/// The request folder renamed while its leaf is being made (here by a `vmrun` stand-in that
/// renames it, then takes the snapshot), before the leaf is published: one leaf, under the final
/// name, never the old one.
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
    let agent = Agent::start_with(&lib, &[("LEAFD_VMRUN", vmrun.to_str().unwrap())]);
    fs::create_dir(drop.join("Web")).unwrap();
    assert!(agent.wait(Duration::from_secs(20), || is_leaf(&lib, "Web Server")), "{}", log_of(&lib));
    assert_eq!(leaves(&lib), ["Web Server"]);
    let count = |p: &Path| fs::read_dir(p).map_or(0, |d| d.count());
    let done = || leaf_list(&lib.base_dir("Base")).len() == 1 && count(&drop) == 0;
    assert!(agent.wait(Duration::from_secs(5), done), "{:?}", fs::read_dir(&drop).unwrap().collect::<Vec<_>>());
    leaf_reads_base(&lib, "Web Server", &vm);
    assert_eq!(agent.stop().code(), Some(0));
    assert_eq!(said(&lib, " made from base "), 1, "{}", log_of(&lib));
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
    let agent = Agent::start(&lib);
    assert!(agent.wait(Duration::from_secs(10), || !orphan.exists()), "{}", log_of(&lib));
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
    let agent = Agent::start_with(&lib, &[("RUST_LOG", "leafd=debug")]);
    let drop = lib.root.join("New Leaf/Base");
    fs::create_dir(drop.join("Web")).unwrap();
    let note = drop.join("Web - leafd error.txt");
    assert!(agent.wait(Duration::from_secs(20), || note.exists()), "{}", log_of(&lib));
    assert!(fs::read_to_string(&note).unwrap().contains("already exists"));
    // Tried again 1 s later, failing the same way: still one warning in the log.
    let retried = || said(&lib, "still cannot make a leaf") >= 1;
    assert!(agent.wait(Duration::from_secs(10), retried), "never tried again: {}", log_of(&lib));
    assert_eq!(said(&lib, "could not make a leaf"), 1, "{}", log_of(&lib));
    assert!(note.exists(), "the note must stay while the cause does");
    // The old leaf deleted by hand, as a person would (and its marker in the base).
    fs::remove_dir_all(lib.leaf_dir("Web")).unwrap();
    lib.ok(&["forget", "Web"]);
    assert!(agent.wait(Duration::from_secs(30), || is_leaf(&lib, "Web")), "{}", log_of(&lib));
    assert!(agent.wait(Duration::from_secs(5), || !note.exists()), "the note stayed");
    leaf_reads_base(&lib, "Web", &vm);
}

/// Issue 16: a VM copied from a base, dropped into the base's folder in New Leaf, is adopted as a
/// leaf of it and ends up beside the other VMs, reading as it did. Moved in, nothing is said of
/// an original; copied in, the log says the original is still where it was.
#[test]
fn a_vm_dropped_into_a_base_folder_in_new_leaf_is_adopted() {
    let lib = Lib::new();
    let vm = small("Base");
    let bundle = vm.build(&lib.make_base_dir()).unwrap();
    // Two hand copies, made before the base; one written to since.
    let (moved, copied) = (lib.tmp.path().join("Web.vmwarevm"), lib.tmp.path().join("Db.vmwarevm"));
    for to in [&moved, &copied] {
        let o = run_tool("cp", &["-a", "--sparse=always", bundle.to_str().unwrap(), to.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
    }
    qemu_write(&moved.join("Virtual Disk.vmdk"), 3 << 20, 4096, 0x6b);
    lib.ok(&["make-base", bundle.to_str().unwrap()]);
    let agent = Agent::start(&lib);
    fs::rename(&moved, lib.root.join("New Leaf/Base/Web.vmwarevm")).unwrap();
    let o = run_tool("cp", &["-r", copied.to_str().unwrap(), lib.root.join("New Leaf/Base").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let adopted = || is_leaf(&lib, "Web") && is_leaf(&lib, "Db") && said(&lib, "adopted \"") == 2;
    assert!(agent.wait(Duration::from_secs(30), adopted), "{}", log_of(&lib));
    let line =
        |name: &str| log_of(&lib).lines().find(|l| l.contains(&format!("adopted \"{name}\""))).unwrap().to_string();
    assert!(line("Db").contains("copied into New Leaf"), "{}", line("Db"));
    assert!(!line("Web").contains("copied into New Leaf"), "{}", line("Web"));
    assert!(
        !lib.root.join("New Leaf/Base/Web.vmwarevm").exists() && !lib.root.join("New Leaf/Base/Db.vmwarevm").exists()
    );
    assert!(copied.exists(), "the original of the copy is where it was");
    let delta = lib.leaf_dir("Web").join("Virtual Disk-000001.vmdk");
    qemu_read_pattern(&delta, 3 << 20, 4096, 0x6b).unwrap();
    qemu_read_pattern(&delta, vm.disks[0].patterns[0].offset, 4096, vm.disks[0].patterns[0].byte).unwrap();
    assert_eq!(leaf_list(&lib.base_dir("Base")).len(), 2);
    assert_eq!(record(&lib.leaf_dir("Db"), "leaf")["vmx"], "Base.vmx", "the VM's .vmx keeps its name");
    agent.stop();
}

/// A private session bus (`dbus-daemon --session`) with a stand-in for the desktop's notification
/// service (there is no desktop here): a Python program owning `org.freedesktop.Notifications`
/// that records every Notify call. Both stopped when dropped.
struct NotificationServer {
    address: String,
    bus: std::process::Child,
    stand_in: std::process::Child,
    calls: PathBuf,
}

/// The stand-in for a desktop's notification service (GNOME Shell, Plasma, dunst...): answers
/// Notify as they do, writing app name, summary and body on a line each call.
const NOTIFICATION_STAND_IN: &str = r#"
import sys, dbus, dbus.service, dbus.mainloop.glib
from gi.repository import GLib
dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
bus = dbus.bus.BusConnection(sys.argv[1])
calls = open(sys.argv[2], "a", buffering=1)
IFACE = "org.freedesktop.Notifications"
class StandIn(dbus.service.Object):
    count = 0
    @dbus.service.method(IFACE, in_signature="susssasa{sv}i", out_signature="u")
    def Notify(self, app, replaces, icon, summary, body, actions, hints, timeout):
        StandIn.count += 1
        calls.write("%s\t%s\t%s\n" % (app, summary, body))
        return StandIn.count
    @dbus.service.method(IFACE, out_signature="as")
    def GetCapabilities(self):
        return ["body"]
    @dbus.service.method(IFACE, out_signature="ssss")
    def GetServerInformation(self):
        return ("leafd-tests-stand-in", "leafd", "1", "1.2")
    @dbus.service.method(IFACE, in_signature="u")
    def CloseNotification(self, id):
        pass
name = dbus.service.BusName(IFACE, bus)
StandIn(bus, "/org/freedesktop/Notifications")
print("ready", flush=True)
GLib.MainLoop().run()
"#;

impl NotificationServer {
    fn start(dir: &Path) -> NotificationServer {
        use std::io::{BufRead, BufReader};
        let mut bus = std::process::Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("dbus-daemon is required by this test (apt-get install -y dbus-daemon)");
        let mut address = String::new();
        BufReader::new(bus.stdout.take().unwrap()).read_line(&mut address).unwrap();
        let address = address.trim().to_string();
        assert!(address.starts_with("unix:"), "dbus-daemon said {address:?}");
        let calls = dir.join("notifications.log");
        let mut stand_in = std::process::Command::new(SYSTEM_PYTHON)
            .arg("-c")
            .arg(NOTIFICATION_STAND_IN)
            .arg(&address)
            .arg(&calls)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        BufReader::new(stand_in.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        assert_eq!(ready, "ready\n", "the stand-in did not start (apt-get install -y python3-dbus python3-gi)");
        NotificationServer { address, bus, stand_in, calls }
    }

    /// An agent on `lib` (settle 0.2 s) whose session bus is this one.
    fn agent(&self, lib: &Lib) -> Agent {
        Agent::start_args(lib, &["agent", "--settle", "0.2"], &[("DBUS_SESSION_BUS_ADDRESS", self.address.as_str())])
    }

    /// Every notification received: (app name, summary, body).
    fn received(&self) -> Vec<(String, String, String)> {
        fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, '\t').map(str::to_string);
                Some((f.next()?, f.next()?, f.next()?))
            })
            .collect()
    }
}

impl Drop for NotificationServer {
    fn drop(&mut self) {
        for p in [&mut self.stand_in, &mut self.bus] {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// A drop in Make Base that is refused: a folder without a .vmx.
fn not_a_vm(lib: &Lib, name: &str) {
    let dir = lib.make_base_dir().join(name);
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("notes.txt"), b"no VM here").unwrap();
}

/// On by default where a notification service runs: 100 refused drops give 100 notifications,
/// posted over D-Bus to the session's service (a stand-in here), and the agent leaves no zombie
/// child behind (it starts no program for them on Linux; macOS's osascript is reaped by child).
#[test]
fn an_agent_that_posted_a_hundred_notifications_has_no_zombies() {
    let lib = Lib::new();
    let server = NotificationServer::start(lib.tmp.path());
    for i in 0..100 {
        not_a_vm(&lib, &format!("Not a VM {i:03}"));
    }
    let agent = server.agent(&lib);
    let posted = || server.received().len();
    assert!(agent.wait(Duration::from_secs(60), || posted() >= 100), "{} notifications: {}", posted(), log_of(&lib));
    let received = server.received();
    assert_eq!(received.len(), 100, "one per refused drop");
    let (app, summary, body) = &received[0];
    assert_eq!((app.as_str(), summary.as_str()), ("leafd", "leafd"));
    assert!(body.starts_with("Could not make a base from \"Not a VM "), "{body}");
    let zombies = || children_of(agent.child.id()).into_iter().filter(|&(_, s)| s == 'Z').count();
    assert_eq!(zombies(), 0, "zombie children of the agent");
    assert_eq!(agent.stop().code(), Some(0));
}

/// `notifications = false` in config.toml: none, even where a notification service runs.
#[test]
fn notifications_can_be_turned_off() {
    let lib = Lib::new();
    let server = NotificationServer::start(lib.tmp.path());
    let config = lib.tmp.path().join("config/leafd");
    fs::create_dir_all(&config).unwrap();
    fs::write(config.join("config.toml"), "notifications = false\n").unwrap();
    not_a_vm(&lib, "Not a VM");
    let agent = server.agent(&lib);
    let note = lib.make_base_dir().join("Not a VM - leafd error.txt");
    assert!(agent.wait(Duration::from_secs(10), || note.exists()), "{}", log_of(&lib));
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.received().is_empty(), "{:?}", server.received());
    assert_eq!(agent.stop().code(), Some(0));
}
