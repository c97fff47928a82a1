//! `leafd demo [DIR]`: the newcomer's first run. Builds a sample VM, starts the real agent on a
//! fresh library, drops the VM into `Make Base/`, creates a leaf folder the way Finder does, and
//! checks the result: leafd's own chain reader and `verify`, plus QEMU when it is installed.
//! Exit 0 only if everything checked out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use leafd_formats::disk::{Disk, DiskType};

use crate::error::{Error, IoContext, Kind, Result};
use crate::library::ops::{status, verify};
use crate::library::records;
use crate::library::{Library, Options};
use crate::testing::sample::SampleVm;
use crate::{child, fsutil};

const SETTLE_SECS: &str = "1";
const WAIT: Duration = Duration::from_secs(30);
/// Each QEMU check of the small sample disk takes well under a second.
const QEMU_TIMEOUT: Duration = Duration::from_secs(60);
const VM: &str = "Ubuntu Demo";
const LEAF: &str = "Web Server";

fn failed(what: impl Into<String>) -> Error {
    Error::new(Kind::Io, None, what.into())
}

/// Waits until `f` holds, up to `WAIT`.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if f() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(failed(format!("timed out after {} s waiting for {what}", WAIT.as_secs())))
}

fn step(n: usize, what: &str) {
    println!("\n[{n}/6] {what}");
}

/// The folder the demo runs in: `dir`, which must be empty or new, else a new temporary one.
fn demo_dir(dir: Option<&Path>) -> Result<PathBuf> {
    match dir {
        Some(d) => {
            if fsutil::entries(d).is_ok_and(|e| !e.is_empty()) {
                return Err(Error::refused(d, "is not empty").fix("give an empty or new folder for the demo"));
            }
            std::fs::create_dir_all(d).at(d, "cannot create the demo folder")?;
            d.canonicalize().at(d, "cannot resolve the demo folder")
        }
        None => {
            let d = std::env::temp_dir().join(format!("leafd-demo-{}", std::process::id()));
            std::fs::create_dir_all(&d).at(&d, "cannot create the demo folder")?;
            Ok(d)
        }
    }
}

/// Runs the demo in `dir` (a new temporary folder when `None`).
pub(crate) fn run(dir: Option<&Path>) -> Result<()> {
    let dir = demo_dir(dir)?;
    let root = dir.join("library");
    let logs = dir.join("logs");
    let lib = Library::open(&root)?;
    println!("leafd demo in {}", dir.display());

    step(1, "building a sample VM (a 4 GiB disk in three extents, filled with known patterns)");
    let vm = SampleVm::single(VM, DiskType::SplitSparse, 4 << 30);
    let bundle = vm.build(&dir)?;
    println!("      {}", bundle.display());

    step(2, "starting the agent on a fresh library");
    let exe = std::env::current_exe().at(Path::new("leafd"), "cannot find the leafd program")?;
    // Stopped (SIGTERM, then SIGKILL if it hangs) when dropped, on every way out of here.
    let agent = child::start(
        Command::new(exe).arg("--root").arg(&root).args(["agent", "--settle", SETTLE_SECS]).env("LEAFD_LOG_DIR", &logs),
    )
    .at(&root, "cannot start the agent")?;
    let log = logs.join(crate::logging::CURRENT);
    wait_for("the agent to start", || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("agent watching")))?;
    println!("      watching {}/Make Base and {}/New Leaf", root.display(), root.display());

    step(3, "dropping the VM into \"Make Base\"");
    let dropped = lib.make_base_dir().join(bundle.file_name().unwrap_or_default());
    std::fs::rename(&bundle, &dropped).at(&dropped, "cannot move the VM into Make Base")?;
    let base_dir = lib.bases_dir().join(VM);
    let took = wait_for("the base", || records::read_base(&base_dir).is_ok_and(|r| r.is_some()))?;
    println!("      base ready after {:.1} s (settle {SETTLE_SECS} s): {}", took.as_secs_f64(), base_dir.display());

    step(4, &format!("creating \"New Leaf/{VM}/untitled folder\", then naming it \"{LEAF}\", as Finder does"));
    let request_dir = lib.new_leaf_dir().join(VM);
    wait_for("the New Leaf folder", || request_dir.is_dir())?;
    std::fs::create_dir(request_dir.join("untitled folder")).at(&request_dir, "cannot create the folder")?;
    std::thread::sleep(Duration::from_millis(1800));
    if lib.leaf_path("untitled folder").exists() {
        return Err(failed("a leaf was made from Finder's placeholder name"));
    }
    println!("      nothing happens while the folder is still \"untitled folder\"");
    std::fs::rename(request_dir.join("untitled folder"), request_dir.join(LEAF))
        .at(&request_dir, "cannot rename the folder")?;
    let leaf_dir = lib.leaf_path(LEAF);
    let took = wait_for("the leaf", || records::read_leaf(&leaf_dir).is_ok_and(|r| r.is_some()))?;
    println!("      leaf ready {:.1} s after the rename: {}", took.as_secs_f64(), leaf_dir.display());

    step(5, "checking the leaf's disk chain");
    check_leaf(&leaf_dir, &vm)?;
    let report = verify::verify(&lib, &[], true, &Options::default())?;
    print!("      leafd verify --deep: {}", report.render());
    if !report.problems.is_empty() {
        return Err(failed("verify found problems"));
    }
    drop(agent);

    step(6, "what leafd recorded");
    for file in [records::base_file(&base_dir), records::leaf_file(&leaf_dir)] {
        let text = std::fs::read_to_string(&file).at(&file, "cannot read the record")?;
        println!("{}:\n{text}", lib.display(&file));
    }
    print!("\n{}", status::render(&status::status(&lib)?));
    println!(
        "\nAll checks passed. Look around:\n  the library: {}\n  the log:     {}\n  try:         leafd --root '{}' status",
        root.display(),
        log.display(),
        root.display()
    );
    Ok(())
}

/// Reads the leaf through its chain with leafd's reader (every pattern of the sample), and with
/// QEMU when it is installed: `qemu-img check` and `qemu-io -r`.
fn check_leaf(leaf_dir: &Path, vm: &SampleVm) -> Result<()> {
    let d = &vm.disks[0];
    let delta: PathBuf = leaf_dir.join(format!("{}-000001.vmdk", d.file.trim_end_matches(".vmdk")));
    let chain = Disk::open(&Options::default().env(), &delta)?;
    for p in &d.patterns {
        let mut buf = vec![0u8; p.len as usize];
        chain.read_at(p.offset, &mut buf)?;
        if buf.iter().any(|&b| b != p.byte) {
            return Err(Error::format(&delta, format!("reads wrong bytes at {}", p.offset)));
        }
    }
    println!("      leafd's reader: all {} patterns read back through the chain", d.patterns.len());
    let qemu = |args: &[&str]| child::run(Command::new(args[0]).args(&args[1..]), QEMU_TIMEOUT, None);
    let path = delta.to_string_lossy().into_owned();
    match qemu(&["qemu-img", "check", "-U", "-f", "vmdk", &path]) {
        Ok(_) => {
            for p in &d.patterns {
                let read = format!("read -P 0x{:02x} {} {}", p.byte, p.offset, p.len);
                let o = qemu(&["qemu-io", "-r", "-f", "vmdk", "-c", &read, &path])
                    .map_err(|e| Error::format(&delta, format!("qemu-io cannot read the chain: {e}")))?;
                if o.stdout.text().contains("failed") {
                    return Err(Error::format(&delta, "qemu-io reads wrong bytes through the chain"));
                }
            }
            println!("      qemu-img check: no errors; qemu-io -r: every pattern matches");
        }
        Err(e) if e.is_not_found() => {
            println!("      (qemu-img is not installed: the independent check was skipped)")
        }
        Err(e) => return Err(Error::format(&delta, format!("qemu-img check failed: {e}"))),
    }
    Ok(())
}
