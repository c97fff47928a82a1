//! Fault injection for crash and error tests, from `LEAFD_FAULT` (a comma-separated list):
//!
//! - `<operation>:<step>` kills the process with SIGKILL when the operation reaches that step,
//!   exactly as a power cut or `kill -9` would stop it; `<operation>:<step>:panic` panics there
//!   instead, as a bug in leafd would. Every operation lists its steps, and tests kill it at each.
//! - `io:<N>` makes the Nth call through [`crate::durable`] after an operation's journal is
//!   written fail with `EIO` (see docs/durability.md).
//! - `xattr:unsupported` makes every extended attribute change fail with `ENOTSUP`, as on a
//!   volume that keeps none.

use std::sync::OnceLock;

pub(crate) const ENV: &str = "LEAFD_FAULT";

fn targets() -> &'static [String] {
    static TARGETS: OnceLock<Vec<String>> = OnceLock::new();
    TARGETS.get_or_init(|| {
        std::env::var(ENV)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    })
}

/// Marks that `op` has just completed `step`. `steps` is the operation's declared list: a step
/// missing from it is a programming error, caught in debug builds.
pub(crate) fn point(op: &str, steps: &[&str], step: &str) {
    debug_assert!(steps.contains(&step), "fault step {op}:{step} is not declared");
    for t in targets() {
        let (at, panic) = match t.strip_suffix(":panic") {
            Some(at) => (at, true),
            None => (t.as_str(), false),
        };
        if at.split_once(':') == Some((op, step)) {
            if panic {
                panic!("fault injected at {op}:{step}");
            }
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        }
    }
}

/// The armed durable call that must fail (`io:<N>`), counted from 1.
pub(crate) fn io_call() -> Option<u64> {
    targets().iter().find_map(|t| t.strip_prefix("io:")?.parse().ok())
}

/// Whether extended attributes are to look unsupported (`xattr:unsupported`).
pub(crate) fn xattrs_unsupported() -> bool {
    targets().iter().any(|t| t == "xattr:unsupported")
}
