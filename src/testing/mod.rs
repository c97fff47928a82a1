//! What tests, benches and the demo use of leafd, apart from the product: sample VMs, fault
//! injection (`LEAFD_FAULT`, which the crash and durability tests set), and the few pieces of
//! leafd they call directly. Nothing here is an interface for anyone else.

pub(crate) mod fault;
pub(crate) mod sample;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::config::DEFAULT_NEW_LEAF_QUIET_MS;
pub use crate::error::{Error, Kind, Result};
pub use crate::library::ops::common::{default_name, read_small};
use crate::library::ops::{make_base as make, new_leaf as leaf};
use crate::library::{Library, Options, SnapshotBackend};
pub use sample::{Pattern, SampleDisk, SampleVm, standard_patterns, write_disk};

/// Each journaled operation: its name in `LEAFD_FAULT=<operation>:<step>`, and its steps in
/// order, which the crash and durability tests kill it at.
pub mod make_base {
    pub use crate::library::ops::make_base::{OP, STEPS};
}

/// See [`make_base`](crate::testing::make_base).
pub mod new_leaf {
    pub use crate::library::ops::new_leaf::{OP, STEPS};
}

/// See [`make_base`](crate::testing::make_base).
pub mod promote {
    pub use crate::library::ops::promote::{OP, STEPS};
}

/// See [`make_base`](crate::testing::make_base).
pub mod adopt {
    pub use crate::library::ops::adopt::{OP, STEPS};
}

/// See [`make_base`](crate::testing::make_base).
pub mod reset {
    pub use crate::library::ops::reset::{OP, STEPS};
}

/// See [`make_base`](crate::testing::make_base).
pub mod remove_base {
    pub use crate::library::ops::remove_base::{OP, STEPS};
}

/// Progress reporting (docs/progress.md), as the `progress` bench measures it.
pub mod progress {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use crate::error::Result;
    use crate::library::Library;
    use crate::progress::{Progress, meter};

    /// A copy made with progress reporting: how long it took and how many records it wrote.
    #[derive(Debug, Clone, Copy)]
    pub struct Copied {
        /// The copy's time, flush included.
        pub elapsed: Duration,
        /// Records the progress wrote meanwhile.
        pub records: u64,
    }

    /// Copies `src` to `dst` (which must not exist) as Make Base copies across volumes, in the
    /// library at `root`: with `report`, under a progress shown from the start (its record
    /// written four times a second); else with none.
    pub fn copy(root: &Path, src: &Path, dst: &Path, report: bool) -> Result<Copied> {
        let lib = Library::open(root)?;
        let total = crate::fsutil::data_bytes(src)?;
        let progress = report.then(|| Progress::start_after(&lib, "copying".into(), src, total, Duration::ZERO));
        let start = Instant::now();
        crate::durable::copy_file(src, dst, &crate::fsutil::Cancel::new(false))?;
        let elapsed = start.elapsed();
        Ok(Copied { elapsed, records: progress.as_ref().map_or(0, Progress::reports) })
    }

    /// The time a whole progress takes, shown at once and writing `records` records (each the
    /// next part of the work, so that none waits for its turn): its start, its lock and record
    /// files made, written and removed, in the library at `root`.
    pub fn life(root: &Path, records: u64) -> Result<Duration> {
        let lib = Library::open(root)?;
        let start = Instant::now();
        let progress = Progress::start_after(&lib, "writing".into(), root, records, Duration::ZERO);
        meter::add(1);
        for i in 1..records {
            progress.next(if i % 2 == 0 { "writing" } else { "still writing" }, records);
        }
        drop(progress);
        Ok(start.elapsed())
    }

    /// The time `n` chunks of 64 KiB take to report to a shown progress (which writes its record
    /// at most four times a second meanwhile, as in a copy), in the library at `root`.
    pub fn chunks(root: &Path, n: u64) -> Result<Duration> {
        let lib = Library::open(root)?;
        let _progress = Progress::start_after(&lib, "adding".into(), root, n << 16, Duration::ZERO);
        let start = Instant::now();
        for _ in 0..n {
            meter::add(std::hint::black_box(1 << 16));
        }
        Ok(start.elapsed())
    }
}

/// The login service's plans, built by pure functions so both platforms' are tested anywhere.
pub mod service {
    pub use crate::service::{
        Action, Context, Plan, Program, ServiceKind, Step, execute, homebrew_opt, install_plan, launchd_plist,
        systemd_unit, uninstall_plan,
    };
}

/// The file system as leafd gives it to the formats crate: every change traced and flushed
/// through leafd's durable layer.
pub fn env() -> Arc<dyn leafd_formats::Env> {
    Options::default().env()
}

/// The content fingerprint `verify --deep` records of a disk's extent files.
pub fn fingerprint(files: &[PathBuf]) -> Result<String> {
    crate::fsutil::fingerprint(files, &crate::fsutil::Cancel::new(false))
}

/// A library at `root` with `bases` bases of a 1 MiB disk and `leaves_per_base` leaves each,
/// made through the operations in this process rather than one process each (set-up stays short).
pub fn build_library(root: &Path, bases: usize, leaves_per_base: usize) -> Result<()> {
    let lib = Library::open(root)?;
    let opts = Options { snapshot: SnapshotBackend::Native, ..Options::default() };
    for b in 0..bases {
        let vm = SampleVm::single(&format!("Base {b:03}"), leafd_formats::disk::DiskType::MonolithicSparse, 1 << 20);
        let (made, fingerprinting) = make::make_base(&lib, &vm.build(&lib.make_base_dir())?, None, &opts)?;
        fingerprinting.finish(&lib, &opts)?;
        for l in 0..leaves_per_base {
            leaf::new_leaf(&lib, &made.name, &format!("Leaf {b:03}-{l:02}"), None, &opts)?;
        }
    }
    Ok(())
}
