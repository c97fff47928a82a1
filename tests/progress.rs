//! Progress of long operations (docs/progress.md, issue 17), with the real binary on real files:
//! a Make Base across volumes of a VM (a flat disk with 64 MiB of data, then a hole, on a tmpfs),
//! made to take seconds as on a slow volume (`LEAFD_FAULT=slow:24`: its long loops go no faster
//! than 24 MiB/s; a tmpfs copies a gigabyte in under a second), shows its progress in a record under
//! `.leafd/progress/` that advances, that `leafd status` reads, and that goes when the operation
//! ends, or, when it is killed, when recovery runs; in two log lines; as a bar on a terminal
//! (none with `--quiet`, none when stderr is not one). The records' changes are all in durable's
//! trace, none counted for `LEAFD_FAULT=io:N`, and the ordering check leaves them out.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;
#[path = "common/strace.rs"]
mod strace;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::trace;
use common::*;
use leafd::testing::SampleVm;
use leafd_formats::disk::DiskType;
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// The data in the VM's disk: at [`SLOW`], its copy, the check of the copy, the check before the
/// original is removed and the fingerprint each take about three seconds.
const DATA: u64 = 64 * MIB;
/// The throttle: as on a volume of 24 MiB/s.
const SLOW: &str = "slow:24";
const NAME: &str = "Big";
/// Far longer than the operation takes: beyond it, it hangs.
const TIME_LIMIT: Duration = Duration::from_secs(300);

/// A VM on another volume whose flat disk holds [`DATA`] bytes of real data, then a hole.
fn big_vm(other: &OtherVolume) -> PathBuf {
    let vm = SampleVm::single(NAME, DiskType::MonolithicFlat, DATA + 16 * MIB);
    let bundle = vm.build(other.path()).unwrap();
    let flat = fs::OpenOptions::new().write(true).open(bundle.join("Virtual Disk-flat.vmdk")).unwrap();
    let mut block: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8 + 1).collect();
    for i in 0..DATA / (4 * MIB) {
        block[0] = (i % 200) as u8 + 1;
        flat.write_all_at(&block, i * 4 * MIB).unwrap();
    }
    bundle
}

/// A library, and [`big_vm`] on another volume (kept mounted while the volume is kept).
fn scene() -> (Lib, OtherVolume, PathBuf) {
    let other = OtherVolume::new();
    let bundle = big_vm(&other);
    (Lib::new(), other, bundle)
}

fn progress_dir(lib: &Lib) -> PathBuf {
    lib.root.join(".leafd/progress")
}

/// What `.leafd/progress/` holds, by name.
fn files(lib: &Lib) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(progress_dir(lib))
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The progress records there now.
fn records(lib: &Lib) -> Vec<Value> {
    files(lib)
        .iter()
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .filter_map(|n| fs::read(progress_dir(lib).join(n)).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

fn make_base(lib: &Lib, bundle: &Path) -> Child {
    lib.command(&["make-base", bundle.to_str().unwrap()])
        .env("LEAFD_FAULT", SLOW)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Every distinct record seen while `child` runs, in order, read every 20 ms; `each` is called
/// with the records of each look and stops the watch when it returns true.
fn watch(lib: &Lib, child: &mut Child, mut each: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    let mut seen: Vec<Value> = Vec::new();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < TIME_LIMIT, "make-base runs for more than {TIME_LIMIT:?}");
        let now = records(lib);
        for r in &now {
            if seen.last() != Some(r) {
                seen.push(r.clone());
            }
        }
        if each(&now) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

fn of<'a>(seen: &'a [Value], what: &str) -> Vec<&'a Value> {
    seen.iter().filter(|r| r["what"] == what).collect()
}

#[test]
fn a_long_make_base_shows_its_progress_until_it_ends() {
    let (lib, _volume, bundle) = scene();
    let mut child = make_base(&lib, &bundle);
    let mut status = None;
    let seen = watch(&lib, &mut child, |now| {
        if status.is_none() && now.iter().any(|r| r["what"] == "copying Big" && r["done"].as_u64() > Some(0)) {
            status = Some((lib.ok(&["status"]), lib.ok(&["status", "--json"])));
        }
        false
    });
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(files(&lib), Vec::<String>::new(), "the records (and their locks) went with the operation");
    // Its stderr was no terminal: no bar.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("copying Big"), "a bar on a pipe: {err}");

    // The copy's record advanced, byte by byte of the data, and said what and where.
    let copying = of(&seen, "copying Big");
    let done: Vec<u64> = copying.iter().map(|r| r["done"].as_u64().unwrap()).collect();
    assert!(done.len() >= 2 && done.windows(2).all(|w| w[0] < w[1]), "the copy did not advance: {seen:#?}");
    let total = copying[0]["total"].as_u64().unwrap();
    assert!((DATA..DATA + MIB).contains(&total), "total {total}: the data, not the hole after it");
    assert!(done.iter().all(|&d| d <= total));
    assert_eq!(copying[0]["item"], bundle.to_str().unwrap());
    assert!(copying.iter().all(|r| r["updated"].as_str() >= r["started"].as_str()), "{copying:#?}");
    // Then its other long parts, each of its own.
    for what in
        ["checking the copy of Big", "checking the original of Big before removing it", "fingerprinting base Big"]
    {
        assert!(!of(&seen, what).is_empty(), "no progress seen for {what:?}: {seen:#?}");
    }

    // `leafd status` showed it as it ran.
    let (text_status, json) = status.expect("status never ran while the copy was shown");
    let line = text_status
        .lines()
        .find(|l| l.starts_with("running: copying Big: "))
        .unwrap_or_else(|| panic!("{text_status}"));
    assert!(line.contains(" of ") && line.ends_with(" left") && line.contains("about "), "{line}");
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["running"][0]["what"], "copying Big", "{json:#}");
    assert!(json["running"][0]["seconds_left"].as_f64().is_some(), "{json:#}");

    // One line in the log when the copy started showing, one when it ended.
    let log = fs::read_to_string(lib.log_dir().join("leafd.log")).unwrap();
    let lines = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    assert_eq!(lines("copying Big: started, "), 1, "{log}");
    assert_eq!(lines("copying Big: ended after "), 1, "{log}");
    // Each part reported every byte it was to do: none stopped short of its total, or past it.
    assert_eq!(lines(": ended after "), 3, "{log}");
    assert_eq!(lines(": stopped after "), 0, "{log}");
}

/// Runs `args` slowed to `rate` MiB/s; returns the lines the log got meanwhile.
fn slowed(lib: &Lib, rate: u32, args: &[&str]) -> Vec<String> {
    let log = lib.log_dir().join("leafd.log");
    let before = fs::read_to_string(&log).unwrap_or_default().lines().count();
    let o = lib.command(args).env("LEAFD_FAULT", format!("slow:{rate}")).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", text(&o));
    fs::read_to_string(&log).unwrap().lines().skip(before).map(str::to_string).collect()
}

#[test]
fn verify_deep_promote_a_flatten_and_adopt_show_progress_and_report_all_their_work() {
    let lib = Lib::new();
    let mut vm = SampleVm::single(NAME, DiskType::SplitSparse, DATA + 16 * MIB);
    vm.disks[0].patterns = (0..DATA / (4 * MIB))
        .map(|i| leafd::testing::Pattern { offset: i * 4 * MIB, len: 4 * MIB - 4096, byte: (i % 200) as u8 + 1 })
        .collect();
    // A hand copy of the VM made before it became a base (the same content), used since.
    fs::create_dir(lib.tmp.path().join("copy")).unwrap();
    let copy = vm.build(&lib.tmp.path().join("copy")).unwrap();
    let copy = {
        let to = lib.root.join("Copy.vmwarevm");
        fs::rename(&copy, &to).unwrap();
        to
    };
    qemu_write(&copy.join(&vm.disks[0].file), MIB, 4 * MIB, 0xee);
    lib.base_from(&vm);
    lib.ok(&["new-leaf", NAME, "Leaf", "--snapshot", "native"]);
    lib.ok(&["new-leaf", NAME, "Other", "--snapshot", "native"]);
    // Each long enough to show (a second), and each to count exactly the bytes it said it would.
    let other = lib.make_base_dir().join("Other.vmwarevm");
    let cases = [
        ("checking base Big", vec!["verify", "--deep"]),
        ("promoting Leaf", vec!["promote", "Leaf"]),
        ("flattening Other", vec!["make-base", other.to_str().unwrap()]),
        ("comparing Copy with base Big", vec!["adopt", copy.to_str().unwrap(), "--base", NAME]),
    ];
    for (what, args) in cases {
        if what == "flattening Other" {
            // A leaf dropped into Make Base: its chain is flattened into the new base's disk.
            fs::rename(lib.leaf_dir("Other"), &other).unwrap();
        }
        let lines = slowed(&lib, 32, &args);
        let has = |end: &str| lines.iter().any(|l| l.contains(&format!("{what}: {end}")));
        assert!(has("started, ") && has("ended after "), "{what}: {lines:#?}");
        assert!(!lines.iter().any(|l| l.contains(": stopped after ")), "{what}: {lines:#?}");
        assert_eq!(files(&lib), Vec::<String>::new(), "{what}: progress files left");
    }
}

#[test]
fn a_make_base_killed_leaves_its_record_to_recovery() {
    let (lib, _volume, bundle) = scene();
    let mut child = make_base(&lib, &bundle);
    watch(&lib, &mut child, |now| now.iter().any(|r| r["what"] == "copying Big" && r["done"].as_u64() > Some(0)));
    child.kill().unwrap();
    assert!(killed(&child.wait_with_output().unwrap()), "make-base ended before it was killed");
    let left = records(&lib);
    assert_eq!(left.len(), 1, "the killed operation's record stays until recovery: {:?}", files(&lib));
    // It is no running operation any more.
    let status: Value = serde_json::from_str(&lib.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["running"], serde_json::json!([]), "{status:#}");
    assert!(!lib.ok(&["status"]).contains("running:"));
    lib.ok(&["recover"]);
    assert_eq!(files(&lib), Vec::<String>::new(), "recovery left progress files");
    assert!(bundle.join("Virtual Disk-flat.vmdk").exists() && !lib.base_dir(NAME).exists());
}

/// Runs `make-base` of `bundle` under `script`, so its stderr is a terminal; returns what the
/// terminal showed.
fn on_a_terminal(lib: &Lib, bundle: &Path, extra: &[&str]) -> String {
    let mut args = vec!["make-base", bundle.to_str().unwrap()];
    args.extend(extra);
    let mut leafd = lib.command(&args);
    leafd.env("LEAFD_FAULT", SLOW);
    let line = shell_line(&leafd);
    let mut c = Command::new("script");
    c.args(["-qefc", &line, "/dev/null"]).stdin(Stdio::null());
    with_env_of(&mut c, &leafd);
    let o = c.output().expect("script (util-linux) runs a command on a terminal");
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

#[test]
fn a_terminal_shows_a_bar_unless_quiet() {
    let other = OtherVolume::new();
    let bundle = big_vm(&other);
    let copy = other.path().join("copy");
    fs::create_dir(&copy).unwrap();
    run_tool("cp", &["-a", "--sparse=always", bundle.to_str().unwrap(), copy.to_str().unwrap()]);
    let lib = Lib::new();
    let shown = on_a_terminal(&lib, &bundle, &[]);
    // What, bytes, rate, time left.
    let line = shown.split(['\r', '\n']).find(|l| l.contains("copying Big ")).unwrap_or_else(|| panic!("{shown}"));
    assert!(line.contains("] ") && line.contains(" MiB of 64.") && line.contains(" MiB/s, "), "{line}");
    assert!(shown.contains(" left"), "{shown}");
    assert!(shown.contains(&format!("base \"{NAME}\" made")), "{shown}");
    let lib = Lib::new();
    let quiet = on_a_terminal(&lib, &copy.join(format!("{NAME}.vmwarevm")), &["--quiet"]);
    assert!(!quiet.contains("copying Big") && quiet.contains("made from"), "{quiet}");
}

#[test]
fn progress_records_are_traced_uncounted_and_left_out_of_the_ordering_check() {
    let (lib, _volume, bundle) = scene();
    let trace_file = lib.tmp.path().join("trace.jsonl");
    let prefix = lib.tmp.path().join("strace");
    let mut leafd = lib.command(&["make-base", bundle.to_str().unwrap()]);
    leafd.env("LEAFD_FAULT", SLOW);
    let o = under("strace", &strace::args(&prefix), &leafd).env("LEAFD_IO_TRACE", &trace_file).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let ops = trace::read(&trace_file);
    let dir = progress_dir(&lib);
    let progress: Vec<&trace::Op> =
        ops.iter().filter(|o| o.path.starts_with(&dir) || o.to.as_ref().is_some_and(|t| t.starts_with(&dir))).collect();
    for kind in ["mkdir", "create", "write", "rename", "unlink"] {
        assert!(progress.iter().any(|o| o.op == kind), "no {kind} of a progress record traced: {progress:#?}");
    }
    // Their number depends on time: none is counted for LEAFD_FAULT=io:N (nor can fail by it).
    assert!(progress.iter().all(|o| o.armed == 0), "progress calls were counted: {progress:#?}");
    assert!(trace::armed_calls(&ops) > 0, "the operation's own calls were not counted");
    // strace saw no change to them that the trace misses.
    let changes: Vec<strace::Change> = strace::read(&prefix).into_iter().filter(|c| c.path.starts_with(&dir)).collect();
    assert!(changes.len() >= 8, "{changes:#?}");
    for c in &changes {
        let traced = progress.iter().filter(|o| o.op == c.kind && o.path == c.path).count();
        let seen = changes.iter().filter(|d| d.kind == c.kind && d.path == c.path).count();
        assert!(
            seen <= traced,
            "{} of {}: strace saw {seen}, the trace {traced}: {}",
            c.kind,
            c.path.display(),
            c.line
        );
    }
    // The ordering check holds on the whole trace, the records' unflushed renames left out.
    let problems = trace::check(&lib.root, &ops);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Polls `f` every 50 ms until it holds; false after `within`.
fn until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn the_agent_shows_the_progress_of_a_drop_in_status_and_the_log() {
    let lib = Lib::new();
    fs::create_dir_all(lib.log_dir()).unwrap();
    let mut agent = lib
        .command(&["agent", "--settle", "0.5"])
        .env("LEAFD_FAULT", SLOW)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = || fs::read_to_string(lib.log_dir().join("leafd.log")).unwrap_or_default();
    assert!(until(Duration::from_secs(10), || log().contains("agent watching")), "the agent did not start");
    // Dropped on the library's own volume: moved into place at once; its fingerprint is the long part.
    let staged = lib.tmp.path().join("staged");
    fs::create_dir(&staged).unwrap();
    let mut vm = SampleVm::single(NAME, DiskType::MonolithicSparse, DATA + 16 * MIB);
    vm.disks[0].patterns = vec![leafd::testing::Pattern { offset: MIB, len: DATA, byte: 0x5a }];
    let bundle = vm.build(&staged).unwrap();
    fs::rename(&bundle, lib.make_base_dir().join(bundle.file_name().unwrap())).unwrap();
    let mut line = None;
    let shown = until(Duration::from_secs(60), || {
        line = lib
            .ok(&["status"])
            .lines()
            .find(|l| l.starts_with("running: fingerprinting base Big: "))
            .map(str::to_string);
        line.is_some()
    });
    assert!(shown, "status never showed the agent's fingerprinting: {}", log());
    let over = until(TIME_LIMIT, || log().contains("fingerprinting base Big: ended after "));
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(over, "{}", log());
    assert!(log().contains("fingerprinting base Big: started, "), "{}", log());
    assert!(line.unwrap().contains(" of 64."), "the data, not the disk's size");
    assert_eq!(files(&lib), Vec::<String>::new());
}
