//! Helpers shared by the integration tests: the independent readers (QEMU, libvmdk), checksums,
//! and running the real binary. A missing reader fails the test; nothing is ever skipped.

#![allow(dead_code)] // each test binary uses its own subset

pub mod trace;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The file access tests read and write disks with: the formats crate's plain one.
pub fn env() -> std::sync::Arc<dyn leafd_formats::Env> {
    leafd_formats::StdEnv::shared()
}

/// Runs a required external tool; panics with how to install it when it is missing.
pub fn run_tool(program: &str, args: &[&str]) -> Output {
    match Command::new(program).args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!(
                "{program} is required by this test and is missing: apt-get install -y qemu-utils libvmdk-utils python3-libvmdk"
            )
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `qemu-img check`: no errors, no leaks.
pub fn qemu_check(path: &Path) {
    let o = run_tool("qemu-img", &["check", "-f", "vmdk", "-U", path.to_str().unwrap()]);
    assert!(o.status.success(), "qemu-img check {}: {}", path.display(), text(&o));
    assert!(text(&o).contains("No errors were found"), "qemu-img check {}: {}", path.display(), text(&o));
}

/// `qemu-img info --backing-chain` as JSON: one object per disk of the chain, top first.
pub fn qemu_chain(path: &Path) -> Vec<serde_json::Value> {
    let o =
        run_tool("qemu-img", &["info", "-U", "--backing-chain", "--output=json", "-f", "vmdk", path.to_str().unwrap()]);
    assert!(o.status.success(), "qemu-img info {}: {}", path.display(), text(&o));
    serde_json::from_slice(&o.stdout).expect("qemu-img info JSON")
}

/// `qemu-io -r` read of `len` bytes at `offset`, expecting every byte to be `byte`.
pub fn qemu_read_pattern(path: &Path, offset: u64, len: u64, byte: u8) -> Result<(), String> {
    let cmd = format!("read -P 0x{byte:02x} {offset} {len}");
    let o = run_tool("qemu-io", &["-r", "-f", "vmdk", "-c", &cmd, path.to_str().unwrap()]);
    let t = text(&o);
    if o.status.success() && !t.contains("Pattern verification failed") && !t.contains("failed") && t.contains("read ")
    {
        Ok(())
    } else {
        Err(t)
    }
}

/// Writes through QEMU into the top of a chain (a delta): never use on a base.
pub fn qemu_write(path: &Path, offset: u64, len: u64, byte: u8) {
    let cmd = format!("write -P 0x{byte:02x} {offset} {len}");
    let o = run_tool("qemu-io", &["-f", "vmdk", "-c", &cmd, path.to_str().unwrap()]);
    assert!(o.status.success() && !text(&o).contains("failed"), "qemu-io write: {}", text(&o));
}

/// A new QEMU delta `top` over `backing` (named relative to `top`'s folder), as VMware leaves a
/// snapshot's disk.
pub fn qemu_snapshot(backing: &str, top: &Path) {
    let o = run_tool("qemu-img", &["create", "-q", "-f", "vmdk", "-b", backing, "-F", "vmdk", top.to_str().unwrap()]);
    assert!(o.status.success(), "qemu-img create -b {backing} {}: {}", top.display(), text(&o));
}

/// The chain at `top` as QEMU reads it, written into the raw image `out`.
pub fn to_raw(top: &Path, out: &Path) {
    let o = run_tool(
        "qemu-img",
        &["convert", "-U", "-f", "vmdk", "-O", "raw", top.to_str().unwrap(), out.to_str().unwrap()],
    );
    assert!(o.status.success(), "qemu-img convert {}: {}", top.display(), text(&o));
}

/// `qemu-img compare` of the raw image `raw` with the chain at `top`: exit 0 when every byte is
/// equal, 1 when they differ.
pub fn compare_with_raw(raw: &Path, top: &Path) -> Output {
    run_tool("qemu-img", &["compare", "-U", "-f", "raw", "-F", "vmdk", raw.to_str().unwrap(), top.to_str().unwrap()])
}

/// The chain at `top` reads, byte for byte, as the raw image `raw`.
pub fn same_as(raw: &Path, top: &Path) {
    let o = compare_with_raw(raw, top);
    assert!(o.status.success(), "{} differs from {}: {}", top.display(), raw.display(), text(&o));
}

/// The whole virtual disk as QEMU reads it through its chain, as raw bytes.
pub fn qemu_raw(path: &Path, scratch: &Path) -> Vec<u8> {
    let out = scratch.join(format!("raw-{}", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let o = run_tool(
        "qemu-img",
        &["convert", "-U", "-f", "vmdk", "-O", "raw", path.to_str().unwrap(), out.to_str().unwrap()],
    );
    assert!(o.status.success(), "qemu-img convert: {}", text(&o));
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

/// Python with Debian's libvmdk module (not the other python3 first on PATH).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Opens `child` and `parent` with libvmdk, giving it the extent files ourselves (it finds extents
/// by base name only), then `set_parent`. Returns libvmdk's error text on refusal; on success,
/// the child's media size and the bytes libvmdk read at `offset`.
pub fn libvmdk_chain(
    child: &Path,
    child_extents: &[PathBuf],
    parent: &Path,
    parent_extents: &[PathBuf],
    offset: u64,
    len: u64,
) -> Result<(u64, Vec<u8>), String> {
    let list = |v: &[PathBuf]| {
        format!("[{}]", v.iter().map(|p| format!("{:?}", p.to_str().unwrap())).collect::<Vec<_>>().join(","))
    };
    let script = format!(
        r#"
import pyvmdk, sys
def opened(path, extents):
    h = pyvmdk.handle()
    h.open(path)
    h.open_extent_data_files_file_objects([open(e, "rb") for e in extents])
    return h
parent = opened({parent:?}, {pext})
child = opened({child:?}, {cext})
try:
    child.set_parent(parent)
except Exception as e:
    print("REFUSED", e)
    sys.exit(3)
sys.stdout.write("SIZE %d\n" % child.get_media_size())
sys.stdout.flush()
data = child.read_buffer_at_offset({len}, {offset})
sys.stdout.buffer.write(data)
"#,
        parent = parent.to_str().unwrap(),
        pext = list(parent_extents),
        child = child.to_str().unwrap(),
        cext = list(child_extents),
    );
    let o = run_tool(SYSTEM_PYTHON, &["-c", &script]);
    if o.status.code() == Some(3) {
        return Err(text(&o));
    }
    assert!(o.status.success(), "libvmdk: {}", text(&o));
    let nl = o.stdout.iter().position(|&b| b == b'\n').unwrap();
    let size: u64 = std::str::from_utf8(&o.stdout[5..nl]).unwrap().parse().unwrap();
    Ok((size, o.stdout[nl + 1..].to_vec()))
}

/// BLAKE3 of every file under `dir`, by relative path: proves files were not changed.
pub fn checksums(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for entry in walk(dir) {
        if entry.is_file() {
            let bytes = std::fs::read(&entry).unwrap();
            out.insert(entry.strip_prefix(dir).unwrap().to_path_buf(), blake3::hash(&bytes).to_hex().to_string());
        }
    }
    out
}

/// [`checksums`] of a VM's own files: leafd's records in a store or leaf left out.
pub fn vm_files(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut sums = checksums(dir);
    sums.retain(|p, _| !is_records(&p.to_string_lossy()));
    sums
}

/// Every path under `dir` (files and folders, not following symlinks), sorted.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.symlink_metadata().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Runs the real `leafd` binary.
pub fn leafd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leafd")).args(args).env_remove("LEAFD_ROOT").output().expect("run leafd")
}

/// `leafd` (a command [`Lib::command`] made) run by `program` with `args` before it (`strace …
/// --`), with the environment `leafd` was given.
pub fn under(program: &str, args: &[impl AsRef<std::ffi::OsStr>], leafd: &Command) -> Command {
    let mut c = Command::new(program);
    c.args(args).arg(leafd.get_program()).args(leafd.get_args());
    with_env_of(&mut c, leafd);
    c
}

/// `c`'s program and arguments as one line for `sh -c` (each argument quoted), for `script`.
pub fn shell_line(c: &Command) -> String {
    let mut line = format!("{:?}", c.get_program());
    for a in c.get_args() {
        line.push_str(&format!(" '{}'", a.to_string_lossy().replace('\'', "'\\''")));
    }
    line
}

/// Gives `to` the environment `from` sets and removes.
pub fn with_env_of(to: &mut Command, from: &Command) {
    for (k, v) in from.get_envs() {
        match v {
            Some(v) => to.env(k, v),
            None => to.env_remove(k),
        };
    }
}

/// A library in a temporary folder, with its own HOME and log folder, and the real binary.
pub struct Lib {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
}

impl Lib {
    pub fn new() -> Lib {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("library");
        std::fs::create_dir_all(root.join("Make Base")).unwrap();
        let root = root.canonicalize().unwrap();
        Lib { tmp, root }
    }

    pub fn home(&self) -> PathBuf {
        self.tmp.path().join("home")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.tmp.path().join("state/leafd")
    }

    /// A `leafd` command with this library's root and a private HOME, config and log folder.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = self.command_without_root(&[]);
        c.arg("--root").arg(&self.root).args(args);
        c
    }

    /// [`Lib::command`] without `--root`.
    pub fn command_without_root(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_leafd"));
        c.args(args);
        c.env("HOME", self.home())
            .env("XDG_STATE_HOME", self.tmp.path().join("state"))
            .env("XDG_CONFIG_HOME", self.tmp.path().join("config"))
            .env_remove("LEAFD_ROOT")
            .env_remove("LEAFD_CONFIG")
            .env_remove("LEAFD_FAULT")
            .env_remove("LEAFD_VMRUN")
            .env_remove("RUST_LOG")
            // No desktop's notifications from the tests: a session bus that is not there (the
            // notification tests give their own).
            .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/leafd-tests-have-no-session-bus");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run leafd")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "leafd {args:?} failed: {}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn make_base_dir(&self) -> PathBuf {
        self.root.join("Make Base")
    }

    pub fn base_dir(&self, name: &str) -> PathBuf {
        self.root.join("Bases").join(name)
    }

    pub fn leaf_dir(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.vmwarevm"))
    }

    /// Builds a sample VM in `Make Base/` and makes it a base through the binary.
    pub fn base_from(&self, vm: &leafd::testing::SampleVm) -> PathBuf {
        let bundle = vm.build(&self.make_base_dir()).unwrap();
        self.ok(&["make-base", bundle.to_str().unwrap()]);
        self.base_dir(&vm.name)
    }
}

/// A lineage record (`base` of a base store, `leaf` of a leaf), as JSON from its file.
pub fn record(dir: &Path, name: &str) -> serde_json::Value {
    let file = dir.join(".leafd").join(format!("{name}.json"));
    let raw = std::fs::read(&file).unwrap_or_else(|e| panic!("no {name} record at {}: {e}", file.display()));
    serde_json::from_slice(&raw).unwrap()
}

/// Replaces the lineage record `name` of `dir` (to break it on purpose).
pub fn set_record(dir: &Path, name: &str, value: &serde_json::Value) {
    std::fs::write(dir.join(".leafd").join(format!("{name}.json")), serde_json::to_vec(value).unwrap()).unwrap();
}

/// The entries of a base's list of leaves.
pub fn leaf_list(base: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(base.join(".leafd/leaves"))
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether a path (relative, or a line of [`fingerprint_tree`]) is leafd's records in a store or
/// leaf, which are not the VM's files.
pub fn is_records(p: &str) -> bool {
    p.starts_with(".leafd") || p.contains("/.leafd/") || p.contains("/.leafd ")
}

/// leafd's hidden working folders (staging, set-aside, removing) left in `dir`.
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".leafd-"))
        .collect()
}

/// Everything about a tree that must not change when leafd refuses to touch it: every path,
/// its type, mode and size, each file's checksum, and every extended attribute.
pub fn fingerprint_tree(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut paths = vec![dir.to_path_buf()];
    if dir.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false) {
        paths.extend(walk(dir));
    }
    for p in paths {
        let Ok(m) = p.symlink_metadata() else {
            out.push(format!("{} missing", p.display()));
            continue;
        };
        let sum =
            if m.is_file() { blake3::hash(&std::fs::read(&p).unwrap()).to_hex().to_string() } else { String::new() };
        let mut attrs: Vec<String> =
            xattr::list(&p).map(|l| l.map(|n| n.to_string_lossy().into_owned()).collect()).unwrap_or_default();
        attrs.sort();
        let attrs: Vec<String> =
            attrs.into_iter().map(|a| format!("{a}={:?}", xattr::get(&p, &a).ok().flatten())).collect();
        out.push(format!("{} {:o} {} {} {}", p.display(), m.mode(), m.len(), sum, attrs.join(",")));
    }
    out
}

/// A tmpfs mounted for the test: a second volume, so Make Base must copy instead of rename.
/// Needs root (CI and this machine run tests as root); unmounted when dropped.
pub struct OtherVolume {
    dir: tempfile::TempDir,
    at: Option<PathBuf>,
}

impl OtherVolume {
    pub fn new() -> OtherVolume {
        let dir = tempfile::tempdir().unwrap();
        mount(dir.path());
        OtherVolume { dir, at: None }
    }

    /// Mounts it over the existing folder `at` instead.
    pub fn at(at: &Path) -> OtherVolume {
        mount(at);
        OtherVolume { dir: tempfile::tempdir().unwrap(), at: Some(at.to_path_buf()) }
    }

    pub fn path(&self) -> &Path {
        self.at.as_deref().unwrap_or(self.dir.path())
    }
}

fn mount(at: &Path) {
    let o = run_tool("mount", &["-t", "tmpfs", "-o", "size=1g", "leafd-test", at.to_str().unwrap()]);
    assert!(o.status.success(), "cannot mount a tmpfs for the cross-volume test (run the tests as root): {}", text(&o));
}

impl Drop for OtherVolume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// True when the process was killed by SIGKILL (what a fault injection does).
pub fn killed(o: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(9)
}

/// Writes an executable stand-in named `vmrun-stand-in-<kind>` that logs its arguments to `args.log`.
pub fn vmrun_stand_in(dir: &Path, kind: &str, body: &str) -> PathBuf {
    let p = dir.join(format!("vmrun-stand-in-{kind}"));
    let log = dir.join("args.log");
    std::fs::write(&p, format!("#!/bin/bash\n# Stand-in for VMware's vmrun: records its arguments.\nprintf '%s\\n' \"$@\" >> '{}'\n{body}\n", log.display())).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

pub const VMRUN_FAILS: &str = "echo 'Error: The virtual machine cannot be found'; exit 255";
pub const VMRUN_DOES_NOTHING: &str = "exit 0";
/// Like VMware: a delta over each disk the .vmx names, the .vmx pointed at it, a .vmsd.
pub const VMRUN_WORKS: &str = r#"
vmx="$4"; dir=$(dirname "$vmx")
grep -E '^(scsi|sata|nvme|ide)[0-9]+:[0-9]+\.fileName = ".*\.vmdk"' "$vmx" | while IFS= read -r line; do
  file=$(printf '%s' "$line" | sed -E 's/.* = "(.*)"/\1/')
  delta="${file%.vmdk}-000001.vmdk"
  (cd "$dir" && qemu-img create -q -f vmdk -b "$file" -F vmdk "$delta") || exit 1
  sed -i "s|= \"$file\"|= \"$delta\"|" "$vmx"
done
base=$(basename "$vmx" .vmx)
printf '.encoding = "UTF-8"\nsnapshot.lastUID = "1"\nsnapshot.current = "1"\nsnapshot0.uid = "1"\nsnapshot0.filename = "%s-Snapshot1.vmsn"\nsnapshot0.displayName = "%s"\nsnapshot.numSnapshots = "1"\n' "$base" "$5" > "$dir/$base.vmsd"
"#;

/// The state letter (`R`, `S`, `Z` for a zombie...) and the parent of process `pid`, from
/// /proc; `None` once it is gone.
pub fn process_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (name) S ppid ...`: the name may hold spaces and parentheses.
    let mut rest = stat.rsplit_once(") ")?.1.split(' ');
    Some((rest.next()?.chars().next()?, rest.next()?.parse().ok()?))
}

/// True while `pid` runs (a zombie has ended: it only waits to be reaped).
pub fn running(pid: u32) -> bool {
    process_state(pid).is_some_and(|(state, _)| state != 'Z')
}

/// The children of process `parent`, each with its state letter.
pub fn children_of(parent: u32) -> Vec<(u32, char)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let (state, ppid) = process_state(pid)?;
            (ppid == parent).then_some((pid, state))
        })
        .collect()
}

/// trash-cli's program `name` for a private `home`: an implementation of the freedesktop.org
/// Trash independent of leafd's, reading the home Trash and every volume's.
fn trash_cli(name: &str, home: &Path) -> Command {
    let mut c = Command::new(name);
    c.env("HOME", home).env_remove("XDG_DATA_HOME");
    c
}

fn trash_cli_output(c: &mut Command) -> Output {
    match c.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("trash-cli is required by this test and is missing: apt-get install -y trash-cli")
        }
        Err(e) => panic!("cannot run {c:?}: {e}"),
    }
}

/// The original places of the items in the Trash, as `trash-list` reads their `.trashinfo`.
pub fn trash_list(home: &Path) -> Vec<PathBuf> {
    let o = trash_cli_output(&mut trash_cli("trash-list", home));
    assert!(o.status.success(), "trash-list: {}", text(&o));
    // `2026-12-01 10:42:03 /original/place`
    String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.get(20..)).map(PathBuf::from).collect()
}

/// Puts the trashed item from `original` back there with `trash-restore`, as a person would.
pub fn trash_restore(home: &Path, original: &Path) {
    use std::io::Write;
    let mut c = trash_cli("trash-restore", home);
    c.arg(original).current_dir(original.parent().unwrap());
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("trash-restore (apt-get install -y trash-cli)");
    child.stdin.take().unwrap().write_all(b"0\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success() && original.exists(), "trash-restore {}: {}", original.display(), text(&o));
}
