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

/// `dir` made if new; refused when it is not an empty folder (`what` names it in messages).
fn empty_or_new(dir: &Path, what: &str) -> Result<PathBuf> {
    let fix = || format!("give {what} an empty or new folder");
    if dir.exists() && !dir.is_dir() {
        return Err(Error::refused(dir, "is a file, not a folder").fix(fix()));
    }
    if fsutil::entries(dir).is_ok_and(|e| !e.is_empty()) {
        return Err(Error::refused(dir, "is not empty").fix(fix()));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "cannot create the folder", e).fix(fix()))?;
    dir.canonicalize().at(dir, "cannot resolve the folder")
}

/// Where the demo works: the folder the sample VM is built in, and the library. `leafd demo
/// [DIR]`: DIR (else a new temporary folder) and DIR/library; `leafd --root LIB demo`: a hidden
/// folder in LIB (so the drop is a rename on one volume) and LIB.
fn places(dir: Option<&Path>, root: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    match (dir, root) {
        (Some(_), Some(_)) => Err(Error::usage("the demo runs in DIR or in the library --root names, not both")
            .fix("give `leafd demo DIR` or `leafd --root LIB demo`")),
        (None, Some(root)) => {
            let root = empty_or_new(root, "--root")?;
            let work = root.join(format!(".demo-sample-{}", std::process::id()));
            std::fs::create_dir(&work).at(&work, "cannot create the demo's folder")?;
            Ok((work, root))
        }
        (Some(dir), None) => {
            let dir = empty_or_new(dir, "the demo")?;
            Ok((dir.clone(), dir.join("library")))
        }
        (None, None) => {
            let d = std::env::temp_dir().join(format!("leafd-demo-{}", std::process::id()));
            let d = empty_or_new(&d, "the demo")?;
            Ok((d.clone(), d.join("library")))
        }
    }
}

/// Runs the demo in `dir` (a new temporary folder when `None`), or on the new library `root`.
/// Its outcome goes into the user's log under the demo library's name, as the agent's do.
pub(crate) fn run(dir: Option<&Path>, root: Option<&Path>) -> Result<()> {
    let (work, root) = places(dir, root)?;
    let _log = crate::logging::init(&crate::platform::log_dir(), &root, false)
        .inspect_err(|e| eprintln!("leafd: warning: {e}"))
        .ok();
    let outcome = walk_through(&work, &root);
    if root.join(work.file_name().unwrap_or_default()) == work {
        let _ = std::fs::remove_dir_all(&work);
    }
    match &outcome {
        Ok(()) => tracing::info!("demo: all checks passed"),
        Err(e) => tracing::warn!("demo failed: {}", e.summary()),
    }
    outcome
}

/// The demo's six steps, the sample VM built in `work`, the library at `root`.
fn walk_through(work: &Path, root: &Path) -> Result<()> {
    let lib = Library::open(root)?;
    println!("leafd demo: the library is {}", root.display());

    step(1, "building a sample VM (a 4 GiB disk in three extents, filled with known patterns)");
    let vm = SampleVm::single(VM, DiskType::SplitSparse, 4 << 30);
    let bundle = vm.build(work)?;
    println!("      {}", bundle.display());

    step(2, "starting the agent on a fresh library");
    let exe = std::env::current_exe().at(Path::new("leafd"), "cannot find the leafd program")?;
    let label = crate::logging::library_label(root);
    let log_dir = crate::platform::log_dir();
    let started = || {
        crate::logging::tail(&log_dir, Some(&label), usize::MAX)
            .map(|lines| lines.iter().filter(|l| l.contains("agent watching")).count())
            .unwrap_or(0)
    };
    let before = started();
    // Stopped (SIGTERM, then SIGKILL if it hangs) when dropped, on every way out of here.
    let agent = child::start(Command::new(&exe).arg("--root").arg(root).args(["agent", "--settle", SETTLE_SECS]))
        .at(root, "cannot start the agent")?;
    wait_for("the agent to start", || started() > before)?;
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
    let leafd = format!("{} --root {}", program(&exe), quoted(root));
    println!(
        "\nAll checks passed. Look around:\n  the library: {}\n  its status:  {leafd} status\n  its log:     {leafd} log",
        root.display()
    );
    Ok(())
}

/// How to run this leafd from a shell: `leafd` when that is what the PATH finds, else its path
/// (after `cargo run` there is no `leafd` on the PATH).
fn program(exe: &Path) -> String {
    let exe = exe.canonicalize().unwrap_or_else(|_| exe.to_path_buf());
    let on_path = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).find_map(|d| d.join("leafd").canonicalize().ok()).is_some_and(|found| found == exe)
    });
    if on_path { "leafd".into() } else { quoted(&exe) }
}

/// `path` quoted for a POSIX shell.
fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
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
