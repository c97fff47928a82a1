//! Fault injection for crash tests: `LEAFD_FAULT=<operation>:<step>` makes the process kill
//! itself with SIGKILL when the operation reaches that step, exactly as a power cut or `kill -9`
//! would stop it. Every operation lists its steps, and tests kill it at each one.
//! `LEAFD_FAULT=<operation>:<step>:panic` panics there instead, as a bug in leafd would.

use std::sync::OnceLock;

pub const ENV: &str = "LEAFD_FAULT";

fn target() -> Option<&'static str> {
    static TARGET: OnceLock<Option<String>> = OnceLock::new();
    TARGET.get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty())).as_deref()
}

/// Marks that `op` has just completed `step`. `steps` is the operation's declared list: a step
/// missing from it is a programming error, caught in debug builds.
pub fn point(op: &str, steps: &[&str], step: &str) {
    debug_assert!(steps.contains(&step), "fault step {op}:{step} is not declared");
    let Some(t) = target() else { return };
    let (at, panic) = match t.strip_suffix(":panic") {
        Some(at) => (at, true),
        None => (t, false),
    };
    if at.split_once(':') == Some((op, step)) {
        if panic {
            panic!("fault injected at {op}:{step}");
        }
        // SAFETY: raising a signal at ourselves.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
