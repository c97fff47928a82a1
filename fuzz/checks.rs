//! What each fuzz target checks for one input. Shared with `cargo test -p leafd-formats`
//! (formats/tests/fuzz_regressions.rs), which replays the inputs that once failed
//! (fuzz/regressions) through these very checks. Errors are fine; a panic or a failed assertion
//! is a bug.

use std::path::Path;
use std::sync::Arc;

use leafd_formats::descriptor::Descriptor;
use leafd_formats::dict::Dict;
use leafd_formats::disk::{self, Disk};
use leafd_formats::sparse::{Grain, Header, SECTOR, SparseExtent};
use leafd_formats::vmx;
use leafd_formats::{Env, StdEnv};

/// VMDK text descriptors: what parses writes back to equal bytes and an equal descriptor, in
/// whatever encoding it declares; changing its encoding to fit new paths never panics.
pub fn descriptor(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Descriptor::parse(text);
    }
    let Ok(d) = Descriptor::parse_bytes(data) else {
        return;
    };
    let _ = d.cid();
    let _ = d.parent_cid();
    let _ = d.capacity();
    let _ = d.create_type();
    let _ = d.parent_file_name_hint();
    let _ = d.parent_name().map(|n| n.candidates());
    let _ = d.windows_made();
    for e in d.extents() {
        if let Some(f) = &e.file {
            let _ = d.name(f).candidates();
        }
    }
    for (k, _) in d.ddb_entries() {
        assert!(d.ddb(k).is_some());
    }
    let _ = d.to_string();
    let bytes = d.to_bytes();
    let again = Descriptor::parse_bytes(&bytes).expect("a parsed descriptor's bytes re-parse");
    assert_eq!(again, d, "to_bytes then parse changed the descriptor");
    assert_eq!(again.to_bytes(), bytes, "a second write differs from the first");
    // Paths with any bytes: the descriptor fits them into one encoding, or says it cannot.
    use std::os::unix::ffi::OsStrExt;
    let folder: &[u8] = if data.len().is_multiple_of(2) { "../Bases/bäse".as_bytes() } else { b"../Bases/b\xe4se" };
    let folder = std::path::Path::new(std::ffi::OsStr::from_bytes(folder));
    let mut moved = d.clone();
    moved.map_extents(|e| e.file = e.file.as_ref().map(|f| folder.join(f)));
    moved.set_ddb("ddb.deletable", "false");
    if moved.fit_encoding().is_ok() {
        let out = moved.to_bytes();
        let back = Descriptor::parse_bytes(&out).expect("a descriptor that fits its encoding re-parses");
        assert_eq!(back.to_bytes(), out);
    }
}

/// `.vmx`/`.vmsd` dictionaries: what parses writes back byte-identical.
pub fn dict(data: &[u8]) {
    let Ok(d) = Dict::parse(data) else {
        return;
    };
    for disk in vmx::disks(&d) {
        let _ = d.name(&disk.file_name).candidates();
    }
    let _ = d.windows_made();
    for (k, _) in d.entries() {
        assert!(d.get(k).is_some(), "entry {k:?} is listed but get() misses it");
        let _ = d.is_true(k);
    }
    // A leaf's .vmx made of it: always a file leafd can read back.
    let leaf = vmx::leaf_vmx(&d, "leaf", &[("scsi0:0".to_string(), "leaf-000001.vmdk".to_string())]);
    let leaf_bytes = leaf.to_bytes();
    let back = Dict::parse(&leaf_bytes).expect("a leaf's .vmx re-parses");
    assert_eq!(back.get("scsi0:0.fileName"), Some("leaf-000001.vmdk"));
    let out = d.to_bytes();
    let again = Dict::parse(&out).expect("to_bytes output re-parses");
    assert_eq!(again, d, "to_bytes then parse changed the dictionary");
    assert!(out == data, "to_bytes is not byte-identical to the input");
}

/// The 512-byte KDMV header, optionally followed (at byte 512) by a little-endian u64 used as the
/// file length: what `parse` accepts keeps every offset inside the file and survives `to_bytes`.
pub fn sparse_header(data: &[u8]) {
    header_in_file(data, data.len() as u64);
    header_in_file(data, i64::MAX as u64);
    if let Some(len) = data.get(512..520) {
        header_in_file(data, u64::from_le_bytes(len.try_into().expect("8 bytes")));
    }
}

/// File lengths are capped at `i64::MAX`, the largest a real file can have: at exactly
/// `u64::MAX` the saturating bound checks in `parse` cannot tell an overflow from the end of the
/// file (regressions/sparse_header-file-len-u64-max).
fn header_in_file(data: &[u8], file_len: u64) {
    let file_len = file_len.min(i64::MAX as u64);
    let Ok(h) = Header::parse(data, file_len) else {
        return;
    };
    let gd_bytes = h.num_gts().checked_mul(4).expect("grain directory size overflows");
    let _ = h.gt_coverage();
    // The contract SparseExtent relies on: the grain directory lies inside the file.
    let gd_end =
        h.gd_offset.checked_mul(SECTOR).and_then(|o| o.checked_add(gd_bytes)).expect("grain directory end overflows");
    assert!(gd_end <= file_len, "grain directory past the end of the file");
    assert!(h.capacity > 0);
    let bytes = h.to_bytes();
    let again = Header::parse(&bytes, file_len).expect("to_bytes output re-parses");
    assert_eq!(again, h, "to_bytes then parse changed the header");
}

/// Splits a `disk_open` input into files. Seeds use it, so keep it stable.
pub const SEPARATOR: &[u8] = b"\n--leafd-fuzz-next-file--\n";
const NAMES: [&str; 3] = ["fuzz.vmdk", "f1.vmdk", "f2.vmdk"];

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() + 1 < NAMES.len() {
        match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

/// Only plain names in our folder: a descriptor naming `/dev/stdin` or `../x` would read
/// outside the sandbox, which says nothing about leafd.
fn confined(d: &Descriptor) -> bool {
    let ok = |n: leafd_formats::text::Name| {
        n.candidates().iter().all(|c| c.to_str().is_some_and(|c| !c.contains('/') && c != ".."))
    };
    d.extents().all(|e| e.file.as_deref().is_none_or(|f| ok(d.name(f)))) && d.parent_name().is_none_or(ok)
}

fn exercise_extent(env: &Arc<dyn Env>, path: &Path) {
    let Ok(s) = SparseExtent::open(env, path) else {
        return;
    };
    let _ = s.embedded_descriptor();
    let cap = s.header.capacity;
    let gb = s.grain_bytes();
    let mut buf = vec![0u8; 512];
    for sector in [0, cap / 2, cap - 1, cap] {
        if let Ok(Grain::At(at)) = s.grain(sector) {
            let within = (sector * SECTOR) % gb;
            let n = buf.len().min((gb - within) as usize);
            let _ = s.read_grain(at, within, &mut buf[..n]);
        }
    }
}

fn exercise_disk(disk: &Disk) {
    let _ = disk.check_extents();
    let _ = disk.files();
    let _ = disk.extent_sectors();
    let mut depth = 0;
    let mut p = disk.parent();
    while let Some(d) = p {
        depth += 1;
        assert!(depth <= 64, "parent chain too deep");
        p = d.parent();
    }
    let len = disk.capacity().saturating_mul(SECTOR);
    let mut buf = vec![0u8; 70_000];
    // Small reads at both ends and the middle, one across a 64 KiB grain boundary, and reads
    // that must fail (past the end).
    for (offset, n) in [
        (0, 4096),
        (len / 2, 512),
        (len.saturating_sub(512), 512),
        (65536 - 1000, 70_000),
        (len.saturating_sub(100), 4096),
        (len, 1),
        (u64::MAX - 10, 100),
    ] {
        let _ = disk.read_at(offset, &mut buf[..n]);
    }
}

/// Whole disks from files: the input is written to `fuzz.vmdk` in `dir` (or, split at each
/// `SEPARATOR`, to `fuzz.vmdk`, `f1.vmdk`, `f2.vmdk`: a text descriptor with its extents, or a
/// delta with its parent), then opened with `read_descriptor`, `SparseExtent::open` and
/// `Disk::open`, and read at a few places.
pub fn disk_open(data: &[u8], dir: &Path) {
    let env = StdEnv::shared();
    let parts = split(data);
    for (i, name) in NAMES.iter().enumerate() {
        let path = dir.join(name);
        match parts.get(i) {
            Some(bytes) => std::fs::write(&path, bytes).expect("write fuzz file"),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let mut safe = true;
    for name in &NAMES[..parts.len()] {
        let path = dir.join(name);
        if let Ok((d, _embedded)) = disk::read_descriptor(&env, &path) {
            safe &= confined(&d);
        }
        exercise_extent(&env, &path);
    }
    if !safe {
        return;
    }
    let opened = Disk::open(&env, &dir.join(NAMES[0]));
    if std::env::var_os("LEAFD_FUZZ_DEBUG").is_some() {
        // Shows whether an input gets past `Disk::open`, e.g. when writing seeds.
        eprintln!("Disk::open: {:?}", opened.as_ref().map(|d| d.capacity()));
    }
    if let Ok(disk) = opened {
        exercise_disk(&disk);
    }
    if let Ok(disk) = Disk::open_alone(&env, &dir.join(NAMES[0])) {
        exercise_disk(&disk);
    }
}
