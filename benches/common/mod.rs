//! Timing helpers for the bench binaries (`cargo bench`): each compares leafd with a reference
//! tool in one run and prints medians, so the claims in README.md can be checked on any machine.

#![allow(dead_code)] // each bench uses its own subset

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Runs `f` `n` times (after `setup` each time, untimed) and returns the sorted durations.
pub fn measure(n: usize, mut setup: impl FnMut(usize), mut f: impl FnMut(usize)) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..n)
        .map(|i| {
            setup(i);
            let t = Instant::now();
            f(i);
            t.elapsed()
        })
        .collect();
    times.sort();
    times
}

pub fn median(times: &[Duration]) -> Duration {
    times[times.len() / 2]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

pub fn report(what: &str, times: &[Duration]) {
    println!("  {what:<58} median {:>10}  min {:>10}", ms(median(times)), ms(times[0]));
}

/// Runs a command and panics with its output if it fails.
pub fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Set when a claim did not hold; `finish` then fails the bench.
static FAILED: AtomicBool = AtomicBool::new(false);

/// Prints whether `claim` holds (with what was measured) and remembers it if not.
pub fn claim(claim: &str, ok: bool, measured: &str) {
    println!("  => {claim}: {} ({measured})\n", if ok { "holds" } else { "DOES NOT HOLD" });
    if !ok {
        FAILED.store(true, Ordering::Relaxed);
    }
}

/// A "not slower than" claim.
pub fn verdict(what: &str, ours: Duration, theirs: Duration) {
    claim(what, ours <= theirs, &format!("{} vs {}", ms(ours), ms(theirs)));
}

/// Ends a bench: exit status 1 if any claim did not hold, so a script running it notices.
pub fn finish() {
    if FAILED.load(Ordering::Relaxed) {
        eprintln!("some claims did not hold (see DOES NOT HOLD above)");
        std::process::exit(1);
    }
}

/// The real `leafd` binary on library `root`, with `home` as its HOME and log folder.
pub fn leafd(root: &Path, home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_leafd"));
    c.arg("--root")
        .arg(root)
        .args(args)
        .env("HOME", home)
        .env("XDG_STATE_HOME", home.join("state"))
        .env_remove("LEAFD_ROOT");
    c
}

/// A library at `root` with `bases` bases of a 1 MiB disk and `leaves_per_base` leaves each,
/// built through the library API rather than one process per operation, to keep set-up short.
pub fn build_library(root: &Path, bases: usize, leaves_per_base: usize) {
    leafd::testing::build_library(root, bases, leaves_per_base).unwrap();
}
