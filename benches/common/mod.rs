//! Timing helpers for the bench binaries (`cargo bench`): each compares leafd with a reference
//! tool in one run and prints medians, so the claims in README.md can be checked on any machine.

#![allow(dead_code)] // each bench uses its own subset

use std::path::Path;
use std::process::Command;
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

/// Prints the verdict of a "not slower than" claim; returns whether it held.
pub fn verdict(claim: &str, ours: Duration, theirs: Duration) -> bool {
    let ok = ours <= theirs;
    println!("  => {claim}: {} ({} vs {})\n", if ok { "holds" } else { "DOES NOT HOLD" }, ms(ours), ms(theirs));
    ok
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
