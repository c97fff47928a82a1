//! Whole disks from files: the input is written to `fuzz.vmdk` in a private folder (or, split at
//! each `SEPARATOR`, to `fuzz.vmdk`, `f1.vmdk`, `f2.vmdk`: a text descriptor with its extents, or a
//! delta with its parent), then opened with `read_descriptor`, `SparseExtent::open` and
//! `Disk::open`, and read at a few places. Nothing may panic; errors are fine.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use leafd::formats::descriptor::Descriptor;
use leafd::formats::disk::{self, Disk};
use leafd::formats::sparse::{Grain, SECTOR, SparseExtent};
use libfuzzer_sys::fuzz_target;

/// Splits the input into files. Seeds use it, so keep it stable.
const SEPARATOR: &[u8] = b"\n--leafd-fuzz-next-file--\n";
const NAMES: [&str; 3] = ["fuzz.vmdk", "f1.vmdk", "f2.vmdk"];

fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("leafd-fuzz-disk-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create fuzz folder");
        d
    })
}

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
/// outside the sandbox (and could block), which says nothing about leafd.
fn confined(d: &Descriptor) -> bool {
    let ok = |n: &str| !n.contains('/') && n != "..";
    d.extents().all(|e| e.file.as_deref().is_none_or(ok))
        && d.parent_file_name_hint().is_none_or(ok)
}

fn exercise_extent(path: &Path) {
    let Ok(s) = SparseExtent::open(path) else {
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

fuzz_target!(|data: &[u8]| {
    let dir = dir();
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
        if let Ok((d, _embedded)) = disk::read_descriptor(&path) {
            safe &= confined(&d);
        }
        exercise_extent(&path);
    }
    if !safe {
        return;
    }
    let opened = Disk::open(&dir.join(NAMES[0]));
    if std::env::var_os("LEAFD_FUZZ_DEBUG").is_some() {
        // Shows whether an input gets past `Disk::open`, e.g. when writing seeds.
        eprintln!("Disk::open: {:?}", opened.as_ref().map(|d| d.capacity()));
    }
    if let Ok(disk) = opened {
        exercise_disk(&disk);
    }
    if let Ok(disk) = Disk::open_alone(&dir.join(NAMES[0])) {
        exercise_disk(&disk);
    }
});
