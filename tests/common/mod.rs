//! Helpers shared by the integration tests: the independent readers (QEMU, libvmdk), checksums,
//! and running the real binary. A missing reader fails the test; nothing is ever skipped.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `qemu-img check`: no errors, no leaks.
pub fn qemu_check(path: &Path) {
    let o = run_tool(
        "qemu-img",
        &["check", "-f", "vmdk", "-U", path.to_str().unwrap()],
    );
    assert!(
        o.status.success(),
        "qemu-img check {}: {}",
        path.display(),
        text(&o)
    );
    assert!(
        text(&o).contains("No errors were found"),
        "qemu-img check {}: {}",
        path.display(),
        text(&o)
    );
}

/// `qemu-img info --backing-chain` as JSON: one object per disk of the chain, top first.
pub fn qemu_chain(path: &Path) -> Vec<serde_json::Value> {
    let o = run_tool(
        "qemu-img",
        &[
            "info",
            "-U",
            "--backing-chain",
            "--output=json",
            "-f",
            "vmdk",
            path.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "qemu-img info {}: {}",
        path.display(),
        text(&o)
    );
    serde_json::from_slice(&o.stdout).expect("qemu-img info JSON")
}

/// `qemu-io -r` read of `len` bytes at `offset`, expecting every byte to be `byte`.
pub fn qemu_read_pattern(path: &Path, offset: u64, len: u64, byte: u8) -> Result<(), String> {
    let cmd = format!("read -P 0x{byte:02x} {offset} {len}");
    let o = run_tool(
        "qemu-io",
        &["-r", "-f", "vmdk", "-c", &cmd, path.to_str().unwrap()],
    );
    let t = text(&o);
    if o.status.success()
        && !t.contains("Pattern verification failed")
        && !t.contains("failed")
        && t.contains("read ")
    {
        Ok(())
    } else {
        Err(t)
    }
}

/// Writes through QEMU into the top of a chain (a delta): never use on a base.
pub fn qemu_write(path: &Path, offset: u64, len: u64, byte: u8) {
    let cmd = format!("write -P 0x{byte:02x} {offset} {len}");
    let o = run_tool(
        "qemu-io",
        &["-f", "vmdk", "-c", &cmd, path.to_str().unwrap()],
    );
    assert!(
        o.status.success() && !text(&o).contains("failed"),
        "qemu-io write: {}",
        text(&o)
    );
}

/// The whole virtual disk as QEMU reads it through its chain, as raw bytes.
pub fn qemu_raw(path: &Path, scratch: &Path) -> Vec<u8> {
    let out = scratch.join(format!("raw-{}", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let o = run_tool(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-f",
            "vmdk",
            "-O",
            "raw",
            path.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
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
        format!(
            "[{}]",
            v.iter()
                .map(|p| format!("{:?}", p.to_str().unwrap()))
                .collect::<Vec<_>>()
                .join(",")
        )
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
    let size: u64 = std::str::from_utf8(&o.stdout[5..nl])
        .unwrap()
        .parse()
        .unwrap();
    Ok((size, o.stdout[nl + 1..].to_vec()))
}

/// BLAKE3 of every file under `dir`, by relative path: proves files were not changed.
pub fn checksums(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for entry in walk(dir) {
        if entry.is_file() {
            let bytes = std::fs::read(&entry).unwrap();
            out.insert(
                entry.strip_prefix(dir).unwrap().to_path_buf(),
                blake3::hash(&bytes).to_hex().to_string(),
            );
        }
    }
    out
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
    Command::new(env!("CARGO_BIN_EXE_leafd"))
        .args(args)
        .env_remove("LEAFD_ROOT")
        .output()
        .expect("run leafd")
}
