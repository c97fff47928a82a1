//! A disk compared with the base disk it was copied from, grain by grain: the grains that differ
//! are all a snapshot delta over that base needs to read as the disk (how a VM copied from a
//! base becomes a linked clone of it). Every stored region of either disk is read once, regions
//! neither stores are skipped, and memory does not grow with the disks.

use std::path::PathBuf;
use std::sync::Arc;

use crate::disk::Disk;
use crate::env::{Env, check_cancelled};
use crate::error::{Error, ErrorKind, Result};
use crate::sparse::{GRAIN_SECTORS, GrainWriter, SECTOR};

const GRAIN: u64 = GRAIN_SECTORS * SECTOR;
/// Grains looked at together: one buffer of this many grains per disk.
const RUN: u64 = 16;
/// The grain tables both disks have read are forgotten after this many grains.
const FORGET_EVERY: u64 = 512;

/// What a comparison found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compared {
    /// Bytes of the grains the disk stores: its data, as its own files tell.
    pub data_bytes: u64,
    /// Of those, the bytes that read as the base reads there: what a delta leaves to the base.
    pub shared_bytes: u64,
    /// Grains that differ from the base: what a delta over it holds.
    pub differing_grains: u64,
    /// Their bytes (the last grain of an extent may be short).
    pub differing_bytes: u64,
}

/// A grain of the disk that differs from the base.
#[derive(Debug)]
pub struct Differing<'a> {
    /// The extent of the delta it falls in.
    pub extent: usize,
    /// Its index among the grains of that extent.
    pub index: u64,
    /// Its byte offset in the virtual disk.
    pub offset: u64,
    /// What the disk reads there: zeros where it stores nothing and the base stores data.
    pub data: &'a [u8],
}

/// One grain of a run: where it is, how long, and which of the two disks store data there.
struct Slot {
    offset: u64,
    len: usize,
    ours: bool,
    theirs: bool,
}

/// Compares `disk` with `base` (of the same capacity) in the grains of a delta whose extents
/// have `extents` sectors (split like a base, whose extents need not be whole grains), and
/// calls `differ` with each grain that differs, in order. A grain the disk does not store reads
/// as zeros: it differs where the base stores anything but zeros there. Reports each grain's
/// bytes through [`Env::progress`] as it is passed: the capacity in all.
pub fn compare(
    env: &Arc<dyn Env>,
    disk: &Disk,
    base: &Disk,
    extents: &[u64],
    mut differ: impl FnMut(&Differing) -> Result<()>,
) -> Result<Compared> {
    if disk.capacity() != base.capacity() || extents.iter().sum::<u64>() != disk.capacity() {
        return Err(Error::new(
            ErrorKind::Format,
            disk.path(),
            format!(
                "cannot be compared with {}: {} sectors, the base {}, the delta's extents {}",
                base.path().display(),
                disk.capacity(),
                base.capacity(),
                extents.iter().sum::<u64>()
            ),
        ));
    }
    let mut found = Compared::default();
    let (mut ours, mut theirs) = (vec![0u8; (RUN * GRAIN) as usize], vec![0u8; (RUN * GRAIN) as usize]);
    let mut start = 0;
    let mut seen = 0u64;
    for (extent, &sectors) in extents.iter().enumerate() {
        let grains = sectors.div_ceil(GRAIN_SECTORS);
        let mut first = 0;
        while first < grains {
            check_cancelled(env, disk.path())?;
            let count = (grains - first).min(RUN);
            let mut slots = Vec::with_capacity(count as usize);
            for g in first..first + count {
                let offset = (start + g * GRAIN_SECTORS) * SECTOR;
                let len = (sectors - g * GRAIN_SECTORS).min(GRAIN_SECTORS) * SECTOR;
                let (o, t) = (disk.has_data(offset, len)?, base.has_data(offset, len)?);
                slots.push(Slot { offset, len: len as usize, ours: o, theirs: t });
            }
            read_run(disk, &slots, &mut ours, |s| s.ours, |s| s.theirs)?;
            read_run(base, &slots, &mut theirs, |s| s.theirs, |s| s.ours)?;
            for (i, s) in slots.iter().enumerate() {
                let at = i * GRAIN as usize;
                let (a, b) = (&ours[at..at + s.len], &theirs[at..at + s.len]);
                let same = match (s.ours, s.theirs) {
                    (false, false) => continue,
                    (true, false) => is_zero(a),
                    (false, true) => is_zero(b),
                    (true, true) => a == b,
                };
                if s.ours {
                    found.data_bytes += s.len as u64;
                    found.shared_bytes += if same { s.len as u64 } else { 0 };
                }
                if !same {
                    found.differing_grains += 1;
                    found.differing_bytes += s.len as u64;
                    differ(&Differing { extent, index: first + i as u64, offset: s.offset, data: a })?;
                }
            }
            env.progress(slots.iter().map(|s| s.len as u64).sum());
            first += count;
            seen += count;
            if seen >= FORGET_EVERY {
                seen = 0;
                disk.forget_tables();
                base.forget_tables();
            }
        }
        start += sectors;
    }
    Ok(found)
}

/// Reads into `buf` the grains of `slots` that `stored` says `disk` stores, and zeros those it
/// does not where the other disk stores data (`other`): grains neither stores are not touched.
fn read_run(
    disk: &Disk,
    slots: &[Slot],
    buf: &mut [u8],
    stored: impl Fn(&Slot) -> bool,
    other: impl Fn(&Slot) -> bool,
) -> Result<()> {
    for (i, s) in slots.iter().enumerate() {
        let at = &mut buf[i * GRAIN as usize..i * GRAIN as usize + s.len];
        if stored(s) {
            disk.read_at(s.offset, at)?;
        } else if other(s) {
            at.fill(0);
        }
    }
    Ok(())
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Writes the grains that differ into an empty sparse delta (one made by
/// [`crate::clone::create_delta_with_cid`]), extent by extent, in order.
pub struct DeltaWriter {
    env: Arc<dyn Env>,
    /// Each extent of the delta: its sectors and file.
    extents: Vec<(u64, PathBuf)>,
    embedded: bool,
    current: Option<(usize, GrainWriter)>,
}

impl DeltaWriter {
    /// A writer for the empty delta `delta` (opened alone, read-only: the writer opens its
    /// extents for writing itself).
    pub fn new(env: &Arc<dyn Env>, delta: &Disk) -> Result<DeltaWriter> {
        let mut extents = Vec::new();
        for (sectors, file) in delta.extent_layout() {
            let file = file.ok_or_else(|| Error::format(delta.path(), "a delta has no ZERO extents"))?;
            extents.push((sectors, file));
        }
        if !delta.disk_type.is_sparse() {
            return Err(Error::format(delta.path(), "a delta is a sparse disk"));
        }
        Ok(DeltaWriter { env: env.clone(), extents, embedded: delta.embedded, current: None })
    }

    /// Writes one grain that differs; grains come in the order [`compare`] gives them.
    pub fn write(&mut self, d: &Differing) -> Result<()> {
        if self.current.as_ref().is_none_or(|(at, _)| *at != d.extent) {
            if let Some((_, w)) = self.current.take() {
                w.finish()?;
            }
            let (sectors, path) = self
                .extents
                .get(d.extent)
                .ok_or_else(|| Error::new(ErrorKind::Io, &self.extents[0].1, "a grain past the delta's extents"))?;
            self.current = Some((d.extent, GrainWriter::open(&self.env, path, *sectors, self.embedded)?));
        }
        match &mut self.current {
            Some((_, w)) => w.push(d.index, d.data),
            None => Ok(()),
        }
    }

    /// Writes what is left and flushes every extent written to.
    pub fn finish(mut self) -> Result<()> {
        match self.current.take() {
            Some((_, w)) => w.finish(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StdEnv;
    use crate::clone::{PathStyle, create_delta_with_cid, delta_extents, parent_copy};
    use crate::disk::{self, DiskType, NewDisk};

    fn make(path: &std::path::Path, disk_type: DiskType, extents: Vec<u64>) -> Disk {
        let env = StdEnv::shared();
        let spec = NewDisk { path, disk_type, extents, cid: 0x1234, parent: None, ddb: Vec::new() };
        disk::create(&env, &spec).unwrap();
        Disk::open_writable(&env, path).unwrap()
    }

    /// A split base whose extents are not whole grains, a monolithic copy of it changed in a
    /// few places: the delta holds exactly the grains that differ, and the chain reads as the copy.
    #[test]
    fn the_delta_reads_as_the_disk_and_holds_only_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let env = StdEnv::shared();
        let base_path = dir.path().join("base.vmdk");
        let base = make(&base_path, DiskType::SplitSparse, vec![1000, 1500, 700]);
        let copy_path = dir.path().join("copy.vmdk");
        let copy = make(&copy_path, DiskType::MonolithicSparse, vec![3200]);
        for (at, len, byte) in [(0u64, 70_000usize, 1u8), (400_000, 200_000, 2), (1_500_000, 38_400, 3)] {
            base.write_at(at, &vec![byte; len]).unwrap();
            copy.write_at(at, &vec![byte; len]).unwrap();
        }
        // Changed: in the middle of a grain, across the end of the first extent (512,000),
        // zeros over base data, data the copy does not have, and the last bytes of the disk.
        base.write_at(1_024_000, &[5; 1000]).unwrap();
        copy.write_at(10_000, &[9; 100]).unwrap();
        copy.write_at(511_000, &[8; 2000]).unwrap();
        copy.write_at(1_500_000, &vec![0; 65_536]).unwrap();
        copy.write_at(3200 * 512 - 10, &[7; 10]).unwrap();
        let (base, copy) = (Disk::open(&env, &base_path).unwrap(), Disk::open(&env, &copy_path).unwrap());
        let extents = delta_extents(&base.descriptor, base.disk_type);
        assert_eq!(extents, [1000, 1500, 700]);
        let parent = parent_copy(&base, dir.path(), PathStyle::Relative).unwrap();
        let pc_path = dir.path().join("pc.vmdk");
        std::fs::write(&pc_path, parent.to_bytes()).unwrap();
        let delta_path = dir.path().join("pc-000001.vmdk");
        create_delta_with_cid(&env, &delta_path, "pc.vmdk", &parent, base.disk_type, 0x55).unwrap();
        let mut w = DeltaWriter::new(&env, &Disk::open_alone(&env, &delta_path).unwrap()).unwrap();
        let mut offsets = Vec::new();
        let found = compare(&env, &copy, &base, &extents, |d| {
            offsets.push(d.offset);
            w.write(d)
        })
        .unwrap();
        w.finish().unwrap();
        // Grain 0; the first extent's short last grain (sectors 896-999) and the second's first;
        // the grain only the base stores (zeros in the delta); the one zeroed over base data
        // (the grain after it, zeros the copy stores where the base stores nothing, is the
        // same); the third extent's short last grain.
        assert_eq!(found.differing_grains as usize, offsets.len());
        let chain = Disk::open(&env, &delta_path).unwrap();
        let size = (3200 * 512) as usize;
        let (mut a, mut b) = (vec![0u8; size], vec![0u8; size]);
        chain.read_at(0, &mut a).unwrap();
        copy.read_at(0, &mut b).unwrap();
        assert!(a == b, "the chain does not read as the copy");
        let mut stored = Vec::new();
        Disk::open_alone(&env, &delta_path)
            .unwrap()
            .stored_grains(|at, _| {
                stored.push(at);
                Ok(())
            })
            .unwrap();
        assert_eq!(stored, offsets, "the delta stores exactly the grains that differ");
        assert_eq!(offsets, [0, 458_752, 512_000, 970_752, 1_476_608, 1_607_680]);
        assert_eq!(found.shared_bytes + found.differing_bytes - 65_536, found.data_bytes);
    }
}
