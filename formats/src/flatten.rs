//! Flattening: writing what a chain shows (a leaf's delta over its base) into one standalone
//! sparse disk. Only grains that hold data somewhere in the chain are read, and all-zero grains
//! are left unallocated, so the result is as small as the data. The source is only read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::disk::{self, Disk, DiskType, NewDisk};
use crate::env::{Env, check_cancelled};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{long_content_id, random_cid};
use crate::sparse::{GRAIN_SECTORS, GrainWriter, SECTOR};

const GRAIN: u64 = GRAIN_SECTORS * SECTOR;

/// The disk at the bottom of `d`'s chain (the base), whose DDB holds geometry and adapter.
fn root(d: &Disk) -> &Disk {
    let mut d = d;
    while let Some(p) = d.parent() {
        d = p;
    }
    d
}

/// Writes the content of `src` (through its chain) into a new disk at `dst`: monolithicSparse,
/// or split sparse with `split` extent sizes (sectors). Returns the files written, flushed.
/// The new disk is written, and read back, through `env`; it stops when `env` is cancelled.
pub fn flatten(env: &Arc<dyn Env>, src: &Disk, dst: &Path, split: Option<Vec<u64>>) -> Result<Vec<PathBuf>> {
    let capacity = src.capacity();
    let (disk_type, extents) = match split {
        Some(s) if s.iter().sum::<u64>() == capacity => (DiskType::SplitSparse, s),
        Some(_) => return Err(Error::format(dst, "split extent sizes do not add up to the disk's capacity")),
        None => (DiskType::MonolithicSparse, vec![capacity]),
    };
    let cid = random_cid();
    let mut ddb: Vec<(String, String)> = root(src)
        .descriptor
        .ddb_entries()
        .filter(|(k, _)| !matches!(*k, "ddb.uuid" | "ddb.longContentID" | "ddb.deletable"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ddb.push(("ddb.longContentID".into(), long_content_id(cid)));
    let files = disk::create(env, &NewDisk { path: dst, disk_type, extents: extents.clone(), cid, parent: None, ddb })?;
    let extent_files = if disk_type == DiskType::MonolithicSparse { &files[..] } else { &files[1..] };
    let mut start = 0u64;
    for (path, &sectors) in extent_files.iter().zip(&extents) {
        fill_extent(env, src, start, sectors, path, disk_type == DiskType::MonolithicSparse)?;
        start += sectors;
    }
    check_same(env, src, &files[0])?;
    Ok(files)
}

/// The bytes [`flatten`] of `src` (split as `split`) reports through [`Env::progress`]: each grain
/// that holds data in the chain, once as it is copied and once as it is read back.
pub fn work(src: &Disk, split: Option<&[u64]>) -> Result<u64> {
    let capacity = src.capacity();
    let whole = [capacity];
    let extents = split.filter(|s| s.iter().sum::<u64>() == capacity).unwrap_or(&whole);
    let mut bytes = 0;
    let mut start = 0;
    for &sectors in extents {
        bytes += data_bytes(src, start, sectors)?;
        start += sectors;
    }
    Ok(bytes + data_bytes(src, 0, capacity)?)
}

/// The bytes of the grains (counted from sector `start`) of `[start, start + sectors)` that hold
/// data in `src`'s chain.
fn data_bytes(src: &Disk, start: u64, sectors: u64) -> Result<u64> {
    let mut bytes = 0;
    for g in 0..sectors.div_ceil(GRAIN_SECTORS) {
        let len = ((sectors - g * GRAIN_SECTORS) * SECTOR).min(GRAIN);
        if src.has_data((start + g * GRAIN_SECTORS) * SECTOR, len)? {
            bytes += len;
        }
    }
    Ok(bytes)
}

/// Reads the new disk back and compares it with the chain wherever either holds data: a
/// flattened disk replaces a leaf's delta, so it is never trusted on the writer's word alone.
fn check_same(env: &Arc<dyn Env>, src: &Disk, dst: &Path) -> Result<()> {
    let new = Disk::open_alone(env, dst)?;
    let size = src.capacity() * SECTOR;
    let (mut a, mut b) = (vec![0u8; GRAIN as usize], vec![0u8; GRAIN as usize]);
    let mut offset = 0;
    while offset < size {
        let len = (size - offset).min(GRAIN);
        let data = src.has_data(offset, len)?;
        if data || new.has_data(offset, len)? {
            check_cancelled(env, dst)?;
            let (a, b) = (&mut a[..len as usize], &mut b[..len as usize]);
            src.read_at(offset, a)?;
            new.read_at(offset, b)?;
            if a != b {
                return Err(Error::new(
                    ErrorKind::Io,
                    dst,
                    format!("the flattened disk differs from its source at byte {offset}"),
                )
                .fix("nothing was replaced; check the volume for errors, and report this to leafd's authors"));
            }
            if data {
                env.progress(len);
            }
        }
        offset += len;
    }
    Ok(())
}

/// Copies the chain's grains for sectors `[start, start + sectors)` into the empty extent `path`.
fn fill_extent(env: &Arc<dyn Env>, src: &Disk, start: u64, sectors: u64, path: &Path, embedded: bool) -> Result<()> {
    let mut writer = GrainWriter::open(env, path, sectors, embedded)?;
    let mut grain = vec![0u8; GRAIN as usize];
    for g in 0..sectors.div_ceil(GRAIN_SECTORS) {
        let offset = (start + g * GRAIN_SECTORS) * SECTOR;
        let len = ((sectors - g * GRAIN_SECTORS) * SECTOR).min(GRAIN);
        if !src.has_data(offset, len)? {
            continue;
        }
        check_cancelled(env, path)?;
        grain.fill(0);
        src.read_at(offset, &mut grain[..len as usize])?;
        env.progress(len);
        if grain.iter().all(|&b| b == 0) {
            continue;
        }
        writer.push(g, &grain)?;
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StdEnv;
    use std::fs::File;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// [`StdEnv`], adding up the progress reported.
    #[derive(Default)]
    struct Counting(AtomicU64);

    impl Env for Counting {
        fn open(&self, path: &Path, write: bool) -> std::io::Result<File> {
            StdEnv.open(path, write)
        }
        fn create(&self, path: &Path) -> std::io::Result<File> {
            StdEnv.create(path)
        }
        fn changing(&self, file: &File, path: &Path, change: crate::Change) -> std::io::Result<()> {
            StdEnv.changing(file, path, change)
        }
        fn flush(&self, file: &File, path: &Path) -> std::io::Result<()> {
            StdEnv.flush(file, path)
        }
        fn cancelled(&self) -> bool {
            false
        }
        fn progress(&self, bytes: u64) {
            self.0.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_flatten_reports_the_work_it_said_it_would() {
        let dir = tempfile::tempdir().unwrap();
        let counting = Arc::new(Counting::default());
        let env: Arc<dyn Env> = counting.clone();
        let src_path = dir.path().join("src.vmdk");
        let sectors = (4 << 20) / SECTOR;
        let spec = NewDisk {
            path: &src_path,
            disk_type: DiskType::MonolithicSparse,
            extents: vec![sectors],
            cid: random_cid(),
            parent: None,
            ddb: Vec::new(),
        };
        disk::create(&env, &spec).unwrap();
        let src = Disk::open_writable(&env, &src_path).unwrap();
        // Data in three grains, one of them all zeros (copied as a hole, still work done).
        src.write_at(GRAIN + 7, &[1; 100]).unwrap();
        src.write_at(5 * GRAIN, &[0; 512]).unwrap();
        src.write_at(9 * GRAIN - 10, &[2; 20]).unwrap();
        drop(src);
        let src = Disk::open(&env, &src_path).unwrap();
        // Extents that end inside a grain: the copy counts grains by extent, the read-back by disk.
        let split = vec![GRAIN_SECTORS * 3 + 5, sectors - GRAIN_SECTORS * 3 - 5];
        let expected = work(&src, Some(&split)).unwrap();
        assert!(expected >= 2 * 4 * GRAIN, "{expected}");
        counting.0.store(0, Ordering::Relaxed);
        flatten(&env, &src, &dir.path().join("flat.vmdk"), Some(split)).unwrap();
        assert_eq!(counting.0.load(Ordering::Relaxed), expected);
    }

    #[test]
    fn the_read_back_catches_a_flattened_disk_that_differs() {
        let dir = tempfile::tempdir().unwrap();
        let env = StdEnv::shared();
        let src_path = dir.path().join("src.vmdk");
        let spec = NewDisk {
            path: &src_path,
            disk_type: DiskType::MonolithicSparse,
            extents: vec![(4 << 20) / SECTOR],
            cid: random_cid(),
            parent: None,
            ddb: Vec::new(),
        };
        disk::create(&env, &spec).unwrap();
        Disk::open_writable(&env, &src_path).unwrap().write_at(3 * GRAIN + 100, &[0x5a; 5000]).unwrap();
        let src = Disk::open(&env, &src_path).unwrap();
        let dst = dir.path().join("flat.vmdk");
        flatten(&env, &src, &dst, None).unwrap();
        check_same(&env, &src, &dst).unwrap();
        // One byte of the data grain changed behind the writer's back.
        let flat = Disk::open_writable(&env, &dst).unwrap();
        flat.write_at(3 * GRAIN + 200, &[0x00]).unwrap();
        let e = check_same(&env, &src, &dst).unwrap_err();
        assert!(e.to_string().contains(&format!("differs from its source at byte {}", 3 * GRAIN)), "{e}");
    }
}
