//! The agent as a person meets it, through the real binary and the real watcher:
//! - latency: Finder's "untitled folder" renamed in New Leaf/<base>/ until the leaf is ready,
//!   beyond the settle period the agent deliberately waits;
//! - memory: resident size once started and idle, on an empty library and on one of 100 bases
//!   and 1,000 leaves;
//! - idle CPU: what the agent costs while nothing happens, on that big library;
//! - the demo: `leafd demo` from start to "All checks passed", which must take under a minute.

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
/// How long a leaf may take; far more than it needs, so that only a lost request panics.
const LEAF_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a finished leaf can go unnoticed if its event were lost.
const POLL: Duration = Duration::from_millis(5);
/// How long Finder's placeholder name stays while the person types the real one.
const TYPING: Duration = Duration::from_millis(500);

/// A running `leafd agent` with its own HOME and log folder; killed when dropped.
struct Agent {
    child: Child,
    home: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent on `root` and returns once it has logged that it is watching.
    fn start(root: &Path, settle: Duration) -> Agent {
        let home = tempfile::tempdir().unwrap();
        let child = leafd(root, home.path(), &["agent", "--settle", &settle.as_secs_f64().to_string()])
            // The log folder differs between macOS and Linux; this one is the same on both.
            .env("LEAFD_LOG_DIR", home.path().join("log"))
            // A debug level from the caller's shell would make the agent busier than it is.
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
        fs::read_to_string(self.home.path().join("log/leafd.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_leaf(bundle: &Path) -> bool {
    leafd::library::records::leaf_file(bundle).exists()
}

/// The 90th percentile (nearest rank) of sorted durations.
fn p90(times: &[Duration]) -> Duration {
    times[(times.len() * 9).div_ceil(10) - 1]
}

/// Leaf-ready minus rename minus `settle`, sorted, over `runs` leaves made by a fresh agent on a
/// library of one base.
fn latency(root: &Path, settle: Duration, runs: usize) -> Vec<Duration> {
    build_library(root, 1, 0);
    let agent = Agent::start(root, settle);
    let drop_dir = root.join("New Leaf/Base 000");
    let placeholder = drop_dir.join("untitled folder");
    // Leaves are renamed into the root once complete: every event there is a reason to look.
    let (tx, events) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx).unwrap();
    watcher.watch(root, notify::RecursiveMode::NonRecursive).unwrap();
    let times = measure(
        runs,
        |_| {
            fs::create_dir(&placeholder).unwrap();
            std::thread::sleep(TYPING);
        },
        |i| {
            fs::rename(&placeholder, drop_dir.join(format!("Leaf {i}"))).unwrap();
            let leaf = root.join(format!("Leaf {i}.vmwarevm"));
            let deadline = Instant::now() + LEAF_TIMEOUT;
            while !is_leaf(&leaf) {
                assert!(
                    Instant::now() < deadline,
                    "{} did not appear within {} s; the agent's log:\n{}",
                    leaf.display(),
                    LEAF_TIMEOUT.as_secs(),
                    agent.log()
                );
                // An event or POLL, whichever is first (a lost event costs at most POLL).
                let _ = events.recv_timeout(POLL);
            }
        },
    );
    // Earlier than the settle period would be a bug: the name must have been quiet that long.
    assert!(
        times[0] >= settle,
        "a leaf was made {} after its rename, before the settle period of {}",
        ms(times[0]),
        ms(settle)
    );
    times.into_iter().map(|t| t - settle).collect()
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();

    println!("agent latency: \"untitled folder\" renamed to a leaf name until the leaf is ready, minus the settle:");
    for (secs, runs) in [(1, 20), (3, 7)] {
        let lat = latency(&tmp.path().join(format!("latency-{secs}s")), Duration::from_secs(secs), runs);
        report(&format!("settle {secs} s, {runs} runs"), &lat);
        println!("  {:<58} p90    {:>10}  max {:>10}", "", ms(p90(&lat)), ms(lat[lat.len() - 1]));
    }
    println!();

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

    /// The settle period the agent has when none is given.
    const DEFAULT_SETTLE: Duration = Duration::from_secs(3);
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
        let agent = Agent::start(root, DEFAULT_SETTLE);
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
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Duration::from_secs_f64(ticks as f64 / per_second)
    }

    fn proc_file(agent: &Agent, name: &str) -> PathBuf {
        Path::new("/proc").join(agent.child.id().to_string()).join(name)
    }
}
