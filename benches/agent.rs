//! The agent as a person meets it, through the real binary and the real watcher:
//! - New Leaf latency: Finder's "untitled folder" renamed in New Leaf/<base>/ until the leaf is
//!   ready, at default settings: in all, and beyond the quiet period the agent deliberately waits;
//! - Make Base latency: a bundle moved into Make Base until it is a base, beyond the settle period;
//! - memory: resident size once started and idle, on an empty library and on one of 100 bases
//!   and 1,000 leaves;
//! - idle CPU: what the agent costs while nothing happens, on that big library;
//! - the demo: `leafd demo` from start to "All checks passed", which must take under a minute.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every bench binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot set up or run stops there

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use notify::Watcher;

/// How long the agent may take to log that it is watching.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leaf or a base may take; far more than it needs, so that only a lost drop panics.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a finished leaf or base can go unnoticed if its event were lost.
const POLL: Duration = Duration::from_millis(5);
/// How long Finder's placeholder name stays while the person types the real one.
const TYPING: Duration = Duration::from_millis(500);
/// The settle period the agent has when none is given.
const DEFAULT_SETTLE: Duration = Duration::from_secs(3);

/// A running `leafd agent` with its own HOME and log folder; killed when dropped.
struct Agent {
    child: Child,
    home: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent on `root` (with the default settle period when `settle` is `None`) and
    /// returns once it has logged that it is watching.
    fn start(root: &Path, settle: Option<Duration>) -> Agent {
        let home = tempfile::tempdir().unwrap();
        let settle = settle.map(|s| s.as_secs_f64().to_string());
        let mut args = vec!["agent"];
        if let Some(s) = &settle {
            args.extend(["--settle", s]);
        }
        let child = leafd(root, home.path(), &args)
            // The user's log folder, private to the bench (macOS: ~/Library/Logs/leafd).
            .env("XDG_STATE_HOME", home.path().join("state"))
            // Defaults, whatever the caller's shell says: no config file of theirs, and no debug
            // level (which would make the agent busier than it is).
            .env_remove("LEAFD_CONFIG")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start leafd agent");
        let mut agent = Agent { child, home };
        let deadline = Instant::now() + START_TIMEOUT;
        while !agent.log().contains("agent watching") {
            let exited = agent.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "the agent did not start on {} ({exited:?}); its log:\n{}",
                root.display(),
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        agent
    }

    fn log(&self) -> String {
        let dir = if cfg!(target_os = "macos") { "Library/Logs/leafd" } else { "state/leafd" };
        fs::read_to_string(self.home.path().join(dir).join("leafd.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn has_record(dir: &Path, record: &str) -> bool {
    dir.join(".leafd").join(format!("{record}.json")).is_file()
}

/// The 90th percentile (nearest rank) of sorted durations.
fn p90(times: &[Duration]) -> Duration {
    times[(times.len() * 9).div_ceil(10) - 1]
}

/// Waits until `done` holds, waking at each event under `root` or every [`POLL`].
fn wait_for(root: &Path, agent: &Agent, what: &Path, mut done: impl FnMut() -> bool) {
    let (tx, events) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx).unwrap();
    watcher.watch(root, notify::RecursiveMode::Recursive).unwrap();
    let deadline = Instant::now() + READY_TIMEOUT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{} was not ready within {} s; the agent's log:\n{}",
            what.display(),
            READY_TIMEOUT.as_secs(),
            agent.log()
        );
        // An event or POLL, whichever is first (a lost event costs at most POLL).
        let _ = events.recv_timeout(POLL);
    }
}

/// Leaf ready minus rename, sorted, over `runs` leaves made by a fresh agent at default
/// settings on a library of one base.
fn new_leaf_latency(root: &Path, runs: usize) -> Vec<Duration> {
    build_library(root, 1, 0);
    let agent = Agent::start(root, None);
    let drop_dir = root.join("New Leaf/Base 000");
    let placeholder = drop_dir.join("untitled folder");
    measure(
        runs,
        |_| {
            fs::create_dir(&placeholder).unwrap();
            std::thread::sleep(TYPING);
        },
        |i| {
            fs::rename(&placeholder, drop_dir.join(format!("Leaf {i}"))).unwrap();
            let leaf = root.join(format!("Leaf {i}.vmwarevm"));
            wait_for(root, &agent, &leaf, || has_record(&leaf, "leaf"));
        },
    )
}

/// Base ready minus the bundle's arrival in Make Base, sorted, over `runs` bases made by a fresh
/// agent with the settle period `settle`.
fn make_base_latency(root: &Path, settle: Duration, runs: usize) -> Vec<Duration> {
    let outside = root.join("outside");
    fs::create_dir_all(&outside).unwrap();
    let lib = root.join("library");
    let agent = Agent::start(&lib, Some(settle));
    measure(
        runs,
        |i| {
            let disk = leafd_formats::disk::DiskType::MonolithicSparse;
            leafd::testing::SampleVm::single(&format!("VM {i}"), disk, 1 << 20).build(&outside).unwrap();
        },
        |i| {
            let name = format!("VM {i}");
            fs::rename(outside.join(format!("{name}.vmwarevm")), lib.join(format!("Make Base/{name}.vmwarevm")))
                .unwrap();
            let base = lib.join("Bases").join(&name);
            wait_for(&lib, &agent, &base, || has_record(&base, "base"));
        },
    )
}

fn row(what: &str, times: &[Duration]) {
    let max = times[times.len() - 1];
    println!("  {what:<40} median {:>10}  p90 {:>10}  max {:>10}", ms(median(times)), ms(p90(times)), ms(max));
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();

    let quiet = Duration::from_millis(leafd::testing::DEFAULT_NEW_LEAF_QUIET_MS);
    let runs = 20;
    println!("New Leaf, default settings: \"untitled folder\" renamed until the leaf is ready ({runs} runs):");
    let total = new_leaf_latency(&tmp.path().join("new-leaf"), runs);
    let beyond: Vec<Duration> = total.iter().map(|t| t.saturating_sub(quiet)).collect();
    row("from the rename", &total);
    row(&format!("beyond the quiet period of {}", ms(quiet)), &beyond);
    claim("no leaf before its quiet period", total[0] >= quiet, &format!("earliest {}", ms(total[0])));
    claim("a leaf is ready within 1 s of its rename (p90)", p90(&total) < Duration::from_secs(1), &ms(p90(&total)));
    let limit = Duration::from_millis(100);
    claim("a leaf is ready within 100 ms beyond its quiet period (p90)", p90(&beyond) < limit, &ms(p90(&beyond)));

    println!("Make Base: a bundle moved into Make Base until it is a base, beyond the settle period:");
    for (settle, runs) in [(Duration::from_secs(1), 10), (DEFAULT_SETTLE, 5)] {
        let secs = settle.as_secs();
        let total = make_base_latency(&tmp.path().join(format!("make-base-{secs}s")), settle, runs);
        let beyond: Vec<Duration> = total.iter().map(|t| t.saturating_sub(settle)).collect();
        row(&format!("settle {secs} s, {runs} runs"), &beyond);
        // Earlier would be a bug: the bundle must have been quiet that long.
        claim(&format!("no base before the settle period of {secs} s"), total[0] >= settle, &ms(total[0]));
    }

    println!("the newcomer's demo (`leafd demo`: sample VM, agent, base, leaf, every check), once:");
    let home = tmp.path().join("demo-home");
    let t = Instant::now();
    run(Command::new(env!("CARGO_BIN_EXE_leafd"))
        .arg("demo")
        .arg(tmp.path().join("demo"))
        .env("HOME", &home)
        .env("XDG_STATE_HOME", home.join("state"))
        .env_remove("LEAFD_ROOT"));
    let took = t.elapsed();
    claim(
        "the demo finishes in under a minute",
        took < Duration::from_secs(60),
        &format!("{:.1} s", took.as_secs_f64()),
    );

    #[cfg(target_os = "linux")]
    footprint::run(tmp.path());
    #[cfg(not(target_os = "linux"))]
    println!("agent memory and idle CPU: not measured, they read /proc and need Linux");
    finish();
}

/// Memory and idle CPU, read from /proc.
#[cfg(target_os = "linux")]
mod footprint {
    use std::path::PathBuf;

    use super::*;

    /// After "agent watching" the agent still recovers and scans; this lets it finish.
    const QUIET: Duration = Duration::from_secs(2);
    const BIG: &str = "100 bases, 1,000 leaves";

    pub fn run(tmp: &Path) {
        let big = tmp.join("big");
        let t = Instant::now();
        build_library(&big, 100, 10);
        let built = t.elapsed();

        println!("agent memory once started and idle (VmRSS resident now, VmHWM resident peak):");
        memory_row("empty library", &idle_agent(&tmp.join("empty")));
        let agent = idle_agent(&big);
        memory_row(&format!("{BIG} (built in {:.1} s)", built.as_secs_f64()), &agent);
        println!();

        let secs = std::env::var("LEAFD_BENCH_IDLE_SECS").map_or(300, |s| s.parse().expect("LEAFD_BENCH_IDLE_SECS"));
        println!("agent CPU while idle for {secs} s (set LEAFD_BENCH_IDLE_SECS to change), {BIG}:");
        let (start, t) = (cpu_time(&agent), Instant::now());
        std::thread::sleep(Duration::from_secs(secs));
        let (used, wall) = (cpu_time(&agent) - start, t.elapsed());
        let share = 100.0 * used.as_secs_f64() / wall.as_secs_f64();
        println!("  {:<58} {:>8.2} s  {share:.3} % of one core", "user + system time", used.as_secs_f64());
    }

    fn idle_agent(root: &Path) -> Agent {
        let agent = Agent::start(root, None);
        std::thread::sleep(QUIET);
        agent
    }

    fn memory_row(what: &str, agent: &Agent) {
        let mib = |key| format!("{:.1} MiB", status_kib(agent, key) as f64 / 1024.0);
        println!("  {what:<58} VmRSS {:>10}  VmHWM {:>10}", mib("VmRSS:"), mib("VmHWM:"));
    }

    /// A size line of /proc/<pid>/status (`VmRSS:    5120 kB`), in KiB.
    fn status_kib(agent: &Agent, key: &str) -> u64 {
        let status = fs::read_to_string(proc_file(agent, "status")).unwrap();
        let value = status.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} in {status}"));
        value.trim().trim_end_matches("kB").trim().parse().unwrap()
    }

    /// User plus system time of all the agent's threads so far.
    fn cpu_time(agent: &Agent) -> Duration {
        let stat = fs::read_to_string(proc_file(agent, "stat")).unwrap();
        // Fields after the command name, which is in parentheses and may hold spaces: state is
        // field 3 of proc(5), utime 14, stime 15.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf takes a constant and reads nothing of ours.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Duration::from_secs_f64(ticks as f64 / per_second)
    }

    fn proc_file(agent: &Agent, name: &str) -> PathBuf {
        Path::new("/proc").join(agent.child.id().to_string()).join(name)
    }
}
