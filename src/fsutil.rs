//! File reading shared by the operations: walking a bundle, comparing across volumes, content
//! fingerprints, allocated sizes. Everything that changes files is in [`crate::durable`].
//!
//! Large files are handled in 64 KiB chunks (a grain) so that a shutdown can interrupt them, and
//! holes and zero chunks are skipped so that sparse disks stay sparse and fast.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use crate::error::{Error, IoContext, Kind, Result};
use crate::platform;
use crate::progress::meter;

pub(crate) const CHUNK: u64 = 64 << 10;

/// Set when the agent is asked to stop; long loops check it between chunks.
pub(crate) type Cancel = AtomicBool;

/// `Cancelled` once the agent was asked to stop.
pub(crate) fn check(cancel: &Cancel, path: &Path) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(Error::new(Kind::Cancelled, path.to_path_buf(), "stopped before finishing (leafd is shutting down)"))
    } else {
        Ok(())
    }
}

/// The entries of the folder `dir` (not `.` and `..`), sorted by name: the one listing of a
/// folder in leafd.
pub(crate) fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = fs::read_dir(dir)
        .at(dir, "cannot list folder")?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<PathBuf>>>()
        .at(dir, "cannot list folder")?;
    out.sort();
    Ok(out)
}

/// Whether `dir` is a folder that holds nothing.
pub(crate) fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// Every entry under `dir` (not following symlinks), parents before children, sorted: the one
/// walk of a tree in leafd.
pub(crate) fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for p in entries(&d)?.into_iter().rev() {
            if p.symlink_metadata().at(&p, "cannot stat")?.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Every entry under a folder, with each file's size and modification time.
pub(crate) type TreeState = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// What `dir` holds now. Two equal states mean nothing was added, removed or written in between:
/// a VM that was started meanwhile shows as a new lock folder or a changed disk.
pub(crate) fn tree_state(dir: &Path) -> Result<TreeState> {
    walk(dir)?
        .into_iter()
        .map(|p| {
            let m = fs::symlink_metadata(&p).at(&p, "cannot stat")?;
            Ok(if m.is_file() { (p, m.len(), m.modified().ok()) } else { (p, 0, None) })
        })
        .collect()
}

/// Ranges `[start, end)` of `file` that hold data; holes read as zeros and are left out. Where
/// the file system cannot tell, the whole file is data.
fn data_ranges(file: &File, len: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let start = match seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break, // only a hole remains
            Err(_) => return vec![(0, len)],
        };
        let end = seek(file, SeekFrom::Hole(start)).map_or(len, |e| e.min(len));
        if end <= start {
            break;
        }
        out.push((start, end));
        pos = end;
    }
    out
}

/// The chunks of a file that overlap its data, in order.
pub(crate) fn data_chunks(file: &File, len: u64) -> Vec<u64> {
    let mut chunks = Vec::new();
    for (start, end) in data_ranges(file, len) {
        let mut c = start / CHUNK;
        while c * CHUNK < end {
            if chunks.last() != Some(&c) {
                chunks.push(c);
            }
            c += 1;
        }
    }
    chunks
}

/// The bytes of `path`'s chunks that overlap its data: what [`fingerprint`] and
/// [`crate::durable::copy_file`] read of it, and report to the progress meter.
pub(crate) fn data_bytes(path: &Path) -> Result<u64> {
    let file = platform::open_regular(path, false).at(path, "cannot open")?;
    let len = file.metadata().at(path, "cannot stat")?.len();
    Ok(data_chunks(&file, len).iter().map(|c| (len - c * CHUNK).min(CHUNK)).sum())
}

/// Content fingerprint of a disk's extent files: BLAKE3 over every 64 KiB chunk in order, where an
/// all-zero chunk counts as one marker byte. It depends only on the bytes, not on how sparse the
/// files are, so a copy that filled the holes has the same fingerprint; and it skips holes
/// without reading them. Reports each chunk read to the progress meter.
pub(crate) fn fingerprint(files: &[PathBuf], cancel: &Cancel) -> Result<String> {
    let mut outer = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK as usize];
    for path in files {
        let file = File::open(path).at(path, "cannot open for fingerprint")?;
        let len = file.metadata().at(path, "cannot stat")?.len();
        outer.update(&len.to_le_bytes());
        let data = data_chunks(&file, len);
        let mut next_data = data.iter().peekable();
        for c in 0..len.div_ceil(CHUNK) {
            if next_data.peek() != Some(&&c) {
                outer.update(&[0]);
                continue;
            }
            next_data.next();
            check(cancel, path)?;
            let n = (len - c * CHUNK).min(CHUNK) as usize;
            file.read_exact_at(&mut buf[..n], c * CHUNK).at(path, "cannot read for fingerprint")?;
            meter::add(n as u64);
            if buf[..n].iter().all(|&b| b == 0) {
                outer.update(&[0]);
            } else {
                outer.update(&[1]);
                outer.update(&buf[..n]);
            }
        }
    }
    Ok(format!("blake3z:{}", outer.finalize().to_hex()))
}

/// Bytes a file actually occupies on disk.
pub(crate) fn allocated(path: &Path) -> u64 {
    fs::symlink_metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// True when both files hold the same bytes, read back from the disk where the platform allows.
/// Reports each chunk compared to the progress meter: in all, the files' length.
pub(crate) fn same_content(a: &Path, b: &Path, cancel: &Cancel) -> Result<bool> {
    let fa = File::open(a).at(a, "cannot open for comparing")?;
    let fb = File::open(b).at(b, "cannot open for comparing")?;
    let len = fa.metadata().at(a, "cannot stat")?.len();
    if fb.metadata().at(b, "cannot stat")?.len() != len {
        return Ok(false);
    }
    platform::drop_cache(&fb);
    let (mut ba, mut bb) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut pos = 0;
    while pos < len {
        check(cancel, a)?;
        let n = (len - pos).min(CHUNK) as usize;
        fa.read_exact_at(&mut ba[..n], pos).at(a, "cannot read")?;
        fb.read_exact_at(&mut bb[..n], pos).at(b, "cannot read")?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        meter::add(n as u64);
        pos += n as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_sparseness_and_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = dir.path().join("sparse");
        let dense = dir.path().join("dense");
        let f = File::create(&sparse).unwrap();
        f.set_len(5 * CHUNK + 100).unwrap();
        f.write_all_at(b"hello", 3 * CHUNK + 7).unwrap();
        let mut bytes = vec![0u8; (5 * CHUNK + 100) as usize];
        bytes[(3 * CHUNK + 7) as usize..(3 * CHUNK + 12) as usize].copy_from_slice(b"hello");
        fs::write(&dense, &bytes).unwrap();
        let no = Cancel::new(false);
        let a = fingerprint(std::slice::from_ref(&sparse), &no).unwrap();
        assert_eq!(a, fingerprint(std::slice::from_ref(&dense), &no).unwrap());
        bytes[10] = 1;
        fs::write(&dense, &bytes).unwrap();
        assert_ne!(a, fingerprint(&[dense], &no).unwrap());
        assert!(allocated(&sparse) < CHUNK, "sparse file was written densely");
    }
}
