//! Fault injection for crash and error tests, from `LEAFD_FAULT` (a comma-separated list):
//!
//! - `<operation>:<step>` kills the process with SIGKILL when the operation reaches that step,
//!   exactly as a power cut or `kill -9` would stop it; `<operation>:<step>:panic` panics there
//!   instead, as a bug in leafd would. Every operation lists its steps, and tests kill it at each.
//! - `io:<N>` makes the Nth call through [`crate::durable`] after an operation's journal is
//!   written fail with `EIO` (see docs/durability.md).
//! - `xattr:unsupported` makes every extended attribute change fail with `ENOTSUP`, as on a
//!   volume that keeps none.
//! - `slow:<MiB/s>` makes the long loops (copies, comparisons, fingerprints, flattens) go no
//!   faster than that, as on a slow volume (a USB disk, a network share): where they report to
//!   the progress meter, so their progress can be watched with little data.

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

/// Declares an operation's steps, where `LEAFD_FAULT=<operation>:<step>` kills it: `OP`, the
/// operation's name there; `Step`, an enum of the steps, so a step that is not declared does
/// not compile; `STEPS`, their names in order (the tests kill the operation at each); and
/// `step`, which the operation calls once it has completed a step. A step declared and never
/// reached is a `Step` variant never constructed: dead code, which the lints refuse.
macro_rules! steps {
    ($op:literal { $($(#[$attr:meta])* $step:ident = $name:literal),+ $(,)? }) => {
        /// The operation's name in `LEAFD_FAULT=<operation>:<step>`.
        pub const OP: &str = $op;

        /// The names of the operation's steps, in the order it reaches them.
        pub const STEPS: &[&str] = &[$($name),+];

        /// A step of the operation (named in [`STEPS`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Step {
            $($(#[$attr])* $step),+
        }

        /// Marks that the operation has just completed `step`.
        fn step(step: Step) {
            let name = match step {
                $(Step::$step => $name),+
            };
            $crate::testing::fault::point(OP, name);
        }
    };
}

pub(crate) use steps;

/// Marks that operation `op` has just completed `step` (see [`steps`]).
pub(crate) fn point(op: &str, step: &str) {
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

/// How long `bytes` of a long loop take at least (`slow:<MiB/s>`); `None` when not slowed.
pub(crate) fn slowed(bytes: u64) -> Option<std::time::Duration> {
    static RATE: OnceLock<Option<f64>> = OnceLock::new();
    let rate = RATE.get_or_init(|| {
        targets().iter().find_map(|t| t.strip_prefix("slow:")?.parse::<f64>().ok()).filter(|r| *r > 0.0)
    });
    rate.map(|r| std::time::Duration::from_secs_f64(bytes as f64 / (r * 1048576.0)))
}
