//! Hosted sparse extents (`KDMV`): the header, the metadata layout VMware writes, creating empty
//! extents, and reading and writing grains.
//!
//! Memory use follows the grain tables actually touched (2 KiB each), never the capacity.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::env::{self, Env};
use crate::error::{Error, ErrorKind, IoContext, ParseError, Result};

/// Bytes per sector, the unit of every offset and size in VMDK metadata.
pub const SECTOR: u64 = 512;
/// The first four bytes of a hosted sparse extent.
pub const MAGIC: &[u8; 4] = b"KDMV";
/// Sectors per grain VMware writes (64 KiB).
pub const GRAIN_SECTORS: u64 = 128;
/// Grain-table entries per table VMware writes.
pub const GTES_PER_GT: u32 = 512;
/// Sectors reserved for an embedded descriptor.
pub const EMBEDDED_DESCRIPTOR_SECTORS: u64 = 20;

const FLAG_NEWLINE_TEST: u32 = 1 << 0;
const FLAG_REDUNDANT_GT: u32 = 1 << 1;
const FLAG_ZEROED_GTE: u32 = 1 << 2;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;

/// Upper bounds that keep a hostile header from asking for absurd allocations or overflowing.
pub const MAX_CAPACITY_SECTORS: u64 = 1 << 40; // 512 TiB
const MAX_GRAIN_SECTORS: u64 = 1 << 16;
const MAX_GTES_PER_GT: u32 = 1 << 16;
/// A 512 TiB disk in VMware's layout has a 64 MiB directory.
const MAX_DIRECTORY_BYTES: u64 = 64 << 20;

/// True for the header of a compressed extent (streamOptimized: compressed grains, markers).
pub(crate) fn is_compressed(header: &[u8; 512]) -> bool {
    let flags = u32_at(header, 8);
    flags & (FLAG_COMPRESSED | FLAG_MARKERS) != 0 || u16::from_le_bytes([header[77], header[78]]) != 0
}

/// The 512-byte sparse extent header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format version (1 to 3).
    pub version: u32,
    /// Flags: newline test, redundant grain tables, zeroed-grain entries, compression.
    pub flags: u32,
    /// The extent's size in sectors.
    pub capacity: u64,
    /// Sectors per grain.
    pub grain_size: u64,
    /// Sector of the embedded descriptor (0 without one).
    pub descriptor_offset: u64,
    /// Sectors reserved for the embedded descriptor.
    pub descriptor_size: u64,
    /// Entries per grain table.
    pub num_gtes_per_gt: u32,
    /// Sector of the redundant grain directory.
    pub rgd_offset: u64,
    /// Sector of the grain directory.
    pub gd_offset: u64,
    /// Sectors before the first grain.
    pub overhead: u64,
    /// Set by VMware while the extent is open.
    pub unclean_shutdown: bool,
    /// 0: not compressed.
    pub compress_algorithm: u16,
}

/// Where VMware puts the metadata of an empty extent of a given capacity (FORMATS.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Number of grain tables.
    pub ngt: u64,
    /// Sectors of one grain directory.
    pub gd_sectors: u64,
    /// Sector of the redundant grain directory.
    pub rgd_offset: u64,
    /// Sector of the grain directory.
    pub gd_offset: u64,
    /// Sectors before the first grain.
    pub overhead: u64,
}

impl Layout {
    /// The layout of an extent of `capacity` sectors, with room for a descriptor or not.
    pub fn new(capacity: u64, embedded_descriptor: bool) -> Layout {
        let ngt = capacity.div_ceil(GRAIN_SECTORS * GTES_PER_GT as u64);
        let gd_sectors = (ngt * 4).div_ceil(SECTOR);
        let desc = if embedded_descriptor { EMBEDDED_DESCRIPTOR_SECTORS } else { 0 };
        let gt_sectors = (GTES_PER_GT as u64 * 4 / SECTOR) * ngt;
        let rgd_offset = 1 + desc;
        let gd_offset = rgd_offset + gd_sectors + gt_sectors;
        let overhead = (gd_offset + gd_sectors + gt_sectors).next_multiple_of(GRAIN_SECTORS);
        Layout { ngt, gd_sectors, rgd_offset, gd_offset, overhead }
    }

    /// Length in bytes of the empty extent file.
    pub fn file_len(&self) -> u64 {
        self.overhead * SECTOR
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut bytes = [0; 4];
    bytes.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(bytes)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Locks one of an extent's caches. Each critical section is a single read, insert or update,
/// so a panic elsewhere while one was held leaves the value as consistent as before.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Header {
    /// The header VMware writes for a new extent of `capacity` sectors.
    pub fn new(capacity: u64, embedded_descriptor: bool) -> Header {
        let l = Layout::new(capacity, embedded_descriptor);
        Header {
            version: 1,
            flags: FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GT,
            capacity,
            grain_size: GRAIN_SECTORS,
            descriptor_offset: if embedded_descriptor { 1 } else { 0 },
            descriptor_size: if embedded_descriptor { EMBEDDED_DESCRIPTOR_SECTORS } else { 0 },
            num_gtes_per_gt: GTES_PER_GT,
            rgd_offset: l.rgd_offset,
            gd_offset: l.gd_offset,
            overhead: l.overhead,
            unclean_shutdown: false,
            compress_algorithm: 0,
        }
    }

    /// The header as written at the start of the extent.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_size.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[72] = self.unclean_shutdown as u8;
        b[73..77].copy_from_slice(b"\n \r\n");
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    /// Parses and checks a header. `file_len` bounds every offset so that nothing later reads or
    /// allocates past the file. Never panics, whatever the bytes.
    pub fn parse(b: &[u8], file_len: u64) -> Result<Header, ParseError> {
        if b.len() < 512 {
            return Err(ParseError::whole("too short for a sparse extent header"));
        }
        if &b[0..4] != MAGIC {
            return Err(ParseError::whole("no KDMV magic: not a hosted sparse extent"));
        }
        let h = Header {
            version: u32_at(b, 4),
            flags: u32_at(b, 8),
            capacity: u64_at(b, 12),
            grain_size: u64_at(b, 20),
            descriptor_offset: u64_at(b, 28),
            descriptor_size: u64_at(b, 36),
            num_gtes_per_gt: u32_at(b, 44),
            rgd_offset: u64_at(b, 48),
            gd_offset: u64_at(b, 56),
            overhead: u64_at(b, 64),
            unclean_shutdown: b[72] != 0,
            compress_algorithm: u16::from_le_bytes([b[77], b[78]]),
        };
        if !(1..=3).contains(&h.version) {
            return Err(ParseError::whole(format!("sparse header version {} is unknown", h.version)));
        }
        if h.flags & (FLAG_COMPRESSED | FLAG_MARKERS) != 0 || h.compress_algorithm != 0 {
            return Err(ParseError::whole(
                "compressed (streamOptimized) extent: leafd serves only hosted sparse disks",
            ));
        }
        if h.flags & FLAG_NEWLINE_TEST != 0 && &b[73..77] != b"\n \r\n" {
            return Err(ParseError::whole("newline test bytes are damaged (was the file transferred in text mode?)"));
        }
        if h.capacity == 0 || h.capacity > MAX_CAPACITY_SECTORS {
            return Err(ParseError::whole(format!("capacity of {} sectors is out of range", h.capacity)));
        }
        if !h.grain_size.is_power_of_two() || h.grain_size < 8 || h.grain_size > MAX_GRAIN_SECTORS {
            return Err(ParseError::whole(format!("grain size of {} sectors is invalid", h.grain_size)));
        }
        if h.num_gtes_per_gt == 0 || h.num_gtes_per_gt > MAX_GTES_PER_GT {
            return Err(ParseError::whole(format!("{} entries per grain table is invalid", h.num_gtes_per_gt)));
        }
        let file_sectors = file_len / SECTOR;
        let gd_bytes = h.num_gts() * 4;
        // Real directories are a few hundred KiB; a sparse file can claim any length, so the
        // size read into memory is bounded here rather than by the file.
        if gd_bytes > MAX_DIRECTORY_BYTES {
            return Err(ParseError::whole(format!(
                "grain directory of {gd_bytes} bytes is larger than any disk VMware makes"
            )));
        }
        if h.descriptor_size.saturating_mul(SECTOR) > crate::descriptor::MAX_DESCRIPTOR_BYTES {
            return Err(ParseError::whole(format!(
                "embedded descriptor of {} sectors is larger than any descriptor",
                h.descriptor_size
            )));
        }
        for (name, off) in [("grain directory", h.gd_offset), ("redundant grain directory", h.rgd_offset)] {
            if name.starts_with("redundant") && h.flags & FLAG_REDUNDANT_GT == 0 {
                continue;
            }
            if off == 0
                || off.checked_mul(SECTOR).and_then(|b| b.checked_add(gd_bytes)).is_none_or(|end| end > file_len)
            {
                return Err(ParseError::whole(format!(
                    "{name} at sector {off} lies outside the file ({file_sectors} sectors): truncated?"
                )));
            }
        }
        if h.descriptor_size > 0
            && h.descriptor_offset
                .checked_add(h.descriptor_size)
                .and_then(|s| s.checked_mul(SECTOR))
                .is_none_or(|end| end > file_len)
        {
            return Err(ParseError::whole("embedded descriptor lies outside the file: truncated?"));
        }
        Ok(h)
    }

    /// Sectors covered by one grain table.
    pub fn gt_coverage(&self) -> u64 {
        self.grain_size * self.num_gtes_per_gt as u64
    }

    /// Number of grain tables (entries in a grain directory).
    pub fn num_gts(&self) -> u64 {
        self.capacity.div_ceil(self.gt_coverage())
    }

    fn zeroed_gte(&self) -> bool {
        self.flags & FLAG_ZEROED_GTE != 0
    }

    fn redundant(&self) -> bool {
        self.flags & FLAG_REDUNDANT_GT != 0
    }
}

/// Writes an empty sparse extent (all grains unallocated) with an optional embedded descriptor.
///
/// Only the header, descriptor and directories are written; the grain tables are left as holes
/// (zeros), so the time is independent of the capacity's data and the file takes little space.
/// The file must not exist yet. Returns it open, not flushed.
pub fn create_empty(env: &Arc<dyn Env>, path: &Path, capacity: u64, embedded_descriptor: Option<&str>) -> Result<File> {
    let header = Header::new(capacity, embedded_descriptor.is_some());
    let layout = Layout::new(capacity, embedded_descriptor.is_some());
    let mut head = header.to_bytes().to_vec();
    if let Some(desc) = embedded_descriptor {
        let max = (EMBEDDED_DESCRIPTOR_SECTORS * SECTOR) as usize;
        if desc.len() > max {
            return Err(Error::format(path, format!("descriptor of {} bytes does not fit in {max}", desc.len())));
        }
        head.extend_from_slice(desc.as_bytes());
        head.resize(head.len() + max - desc.len(), 0);
    }
    // Each directory points at its grain tables, which follow it. The tables themselves stay
    // holes: all-zero entries, "unallocated".
    let gt_sectors = GTES_PER_GT as u64 * 4 / SECTOR;
    // VMware fills every entry of the directory's last sector by the same formula, not only the
    // first `ngt` (FORMATS.md §2); readers ignore the entries past `ngt`.
    let directory = |dir_offset: u64| -> Vec<u8> {
        let first_gt = dir_offset + layout.gd_sectors;
        (0..layout.gd_sectors * SECTOR / 4).flat_map(|i| ((first_gt + gt_sectors * i) as u32).to_le_bytes()).collect()
    };
    let file = env.create(path).at(path, "cannot create extent")?;
    env::write_at(env, &file, path, &head, 0).at(path, "cannot write extent header")?;
    for dir_offset in [layout.rgd_offset, layout.gd_offset] {
        env::write_at(env, &file, path, &directory(dir_offset), dir_offset * SECTOR)
            .at(path, "cannot write grain directory")?;
    }
    env::set_len(env, &file, path, layout.file_len()).at(path, "cannot size extent")?;
    Ok(file)
}

/// Grains gathered before one write.
const BATCH: usize = 32;

/// Writes grains, in increasing order, into an empty extent as [`create_empty`] lays it out:
/// each grain appended after the last (gathered into batches, one write each), and each grain
/// table written, both copies, once its grains are. One grain table is in memory at a time.
pub struct GrainWriter {
    env: Arc<dyn Env>,
    file: File,
    path: PathBuf,
    layout: Layout,
    table: Vec<u32>,
    table_index: u64,
    /// The sector the next grain goes to.
    next: u64,
    batch: Vec<u8>,
    batch_at: u64,
}

impl GrainWriter {
    /// Opens the empty extent `path` of `sectors` sectors (with room for an embedded descriptor
    /// when `embedded`) to write its grains.
    pub fn open(env: &Arc<dyn Env>, path: &Path, sectors: u64, embedded: bool) -> Result<GrainWriter> {
        let file = env.open(path, true).at(path, "cannot open new extent")?;
        let layout = Layout::new(sectors, embedded);
        Ok(GrainWriter {
            env: env.clone(),
            file,
            path: path.to_path_buf(),
            layout,
            table: vec![0; GTES_PER_GT as usize],
            table_index: 0,
            next: layout.overhead,
            batch: Vec::with_capacity(BATCH * (GRAIN_SECTORS * SECTOR) as usize),
            batch_at: layout.overhead,
        })
    }

    /// Writes `data` as grain `index` of the extent: a whole grain, or less for the extent's
    /// last grain (the rest of it is zeros). Indices must increase from one call to the next.
    pub fn push(&mut self, index: u64, data: &[u8]) -> Result<()> {
        let grain = (GRAIN_SECTORS * SECTOR) as usize;
        let per_table = GTES_PER_GT as u64;
        if data.len() > grain || index / per_table < self.table_index {
            return Err(Error::new(ErrorKind::Io, &self.path, "grains must be written whole and in order"));
        }
        if index / per_table != self.table_index {
            self.write_table()?;
            self.table_index = index / per_table;
        }
        let sector = u32::try_from(self.next)
            .map_err(|_| Error::format(&self.path, "extent too large for 32-bit grain offsets"))?;
        self.table[(index % per_table) as usize] = sector;
        self.batch.extend_from_slice(data);
        self.batch.resize(self.batch.len() + grain - data.len(), 0);
        self.next += GRAIN_SECTORS;
        if self.batch.len() >= BATCH * grain {
            self.write_batch()?;
        }
        Ok(())
    }

    fn write_batch(&mut self) -> Result<()> {
        if !self.batch.is_empty() {
            env::write_at(&self.env, &self.file, &self.path, &self.batch, self.batch_at * SECTOR)
                .at(&self.path, "cannot write grains")?;
            self.batch.clear();
        }
        self.batch_at = self.next;
        Ok(())
    }

    /// Writes the current grain table (both copies), if it has any grain, and empties it.
    fn write_table(&mut self) -> Result<()> {
        if self.table.iter().all(|&e| e == 0) {
            return Ok(());
        }
        let bytes: Vec<u8> = self.table.iter().flat_map(|e| e.to_le_bytes()).collect();
        let per_table = GTES_PER_GT as u64;
        for dir in [self.layout.rgd_offset, self.layout.gd_offset] {
            let at = (dir + self.layout.gd_sectors + self.table_index * per_table * 4 / SECTOR) * SECTOR;
            env::write_at(&self.env, &self.file, &self.path, &bytes, at).at(&self.path, "cannot write grain tables")?;
        }
        self.table.fill(0);
        Ok(())
    }

    /// Writes what is left and flushes the extent.
    pub fn finish(mut self) -> Result<()> {
        self.write_batch()?;
        self.write_table()?;
        self.env.flush(&self.file, &self.path).at(&self.path, "cannot flush new extent")
    }
}

/// Where a grain's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// Not allocated here: read from the parent (or zeros without one).
    Unallocated,
    /// Allocated as all zeros (zeroed-grain GTE).
    Zero,
    /// Data at this sector of the file.
    At(u64),
}

/// An open sparse extent. Reads are `&self` (positional I/O); writes need a writable open.
pub struct SparseExtent {
    env: Arc<dyn Env>,
    path: PathBuf,
    file: File,
    /// The extent's header, as read.
    pub header: Header,
    gd: Vec<u32>,
    rgd: Vec<u32>,
    /// Grain tables read so far, by index.
    tables: Mutex<HashMap<u64, Arc<Vec<u32>>>>,
    file_len: Mutex<u64>,
    writable: bool,
}

impl SparseExtent {
    /// Opens an extent for reading.
    pub fn open(env: &Arc<dyn Env>, path: &Path) -> Result<SparseExtent> {
        Self::open_with(env, path, false)
    }

    /// Opens for writing grains. Never call this on a base's extent.
    pub fn open_writable(env: &Arc<dyn Env>, path: &Path) -> Result<SparseExtent> {
        Self::open_with(env, path, true)
    }

    fn open_with(env: &Arc<dyn Env>, path: &Path, writable: bool) -> Result<SparseExtent> {
        let file = env.open(path, writable).at(path, "cannot open extent")?;
        let file_len = file.metadata().at(path, "cannot stat extent")?.len();
        let mut hb = [0u8; 512];
        if file_len < 512 {
            return Err(Error::format(path, "shorter than a sparse extent header: truncated?"));
        }
        file.read_exact_at(&mut hb, 0).at(path, "cannot read extent header")?;
        let header = Header::parse(&hb, file_len).map_err(|e| Error::format(path, e.to_string()))?;
        let read_dir = |offset: u64| -> Result<Vec<u32>> {
            let mut raw = vec![0u8; (header.num_gts() * 4) as usize];
            file.read_exact_at(&mut raw, offset * SECTOR).at(path, "cannot read grain directory")?;
            Ok(raw.chunks_exact(4).map(|c| u32_at(c, 0)).collect())
        };
        let gd = read_dir(header.gd_offset)?;
        let rgd = if header.redundant() { read_dir(header.rgd_offset)? } else { Vec::new() };
        Ok(SparseExtent {
            env: env.clone(),
            path: path.to_path_buf(),
            file,
            header,
            gd,
            rgd,
            tables: Mutex::new(HashMap::new()),
            file_len: Mutex::new(file_len),
            writable,
        })
    }

    /// The extent's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the embedded descriptor area, if the header says there is one.
    pub fn embedded_descriptor(&self) -> Result<Option<Vec<u8>>> {
        if self.header.descriptor_size == 0 {
            return Ok(None);
        }
        let mut b = vec![0u8; (self.header.descriptor_size * SECTOR) as usize];
        self.file
            .read_exact_at(&mut b, self.header.descriptor_offset * SECTOR)
            .at(&self.path, "cannot read embedded descriptor")?;
        Ok(Some(b))
    }

    fn table(&self, gt: u64) -> Result<Option<Arc<Vec<u32>>>> {
        if let Some(t) = lock(&self.tables).get(&gt) {
            return Ok(Some(t.clone()));
        }
        let sector = self.gd[gt as usize] as u64;
        if sector == 0 {
            return Ok(None);
        }
        let n = self.header.num_gtes_per_gt as usize;
        let file_len = *lock(&self.file_len);
        if sector * SECTOR + n as u64 * 4 > file_len {
            return Err(Error::format(
                &self.path,
                format!("grain table {gt} at sector {sector} lies past the end of the file: truncated?"),
            ));
        }
        let mut raw = vec![0u8; n * 4];
        self.file.read_exact_at(&mut raw, sector * SECTOR).at(&self.path, "cannot read grain table")?;
        let t: Arc<Vec<u32>> = Arc::new(raw.chunks_exact(4).map(|c| u32_at(c, 0)).collect());
        lock(&self.tables).insert(gt, t.clone());
        Ok(Some(t))
    }

    /// Looks up the grain holding sector `sector` of this extent.
    pub fn grain(&self, sector: u64) -> Result<Grain> {
        if sector >= self.header.capacity {
            return Err(Error::format(&self.path, format!("sector {sector} is past the extent's capacity")));
        }
        let grain = sector / self.header.grain_size;
        let gt = grain / self.header.num_gtes_per_gt as u64;
        let Some(table) = self.table(gt)? else {
            return Ok(Grain::Unallocated);
        };
        match table[(grain % self.header.num_gtes_per_gt as u64) as usize] {
            0 => Ok(Grain::Unallocated),
            1 if self.header.zeroed_gte() => Ok(Grain::Zero),
            s => Ok(Grain::At(s as u64)),
        }
    }

    /// Reads bytes of an allocated grain: `within` is the byte offset inside the grain.
    pub fn read_grain(&self, at_sector: u64, within: u64, buf: &mut [u8]) -> Result<()> {
        let pos = at_sector * SECTOR + within;
        let file_len = *lock(&self.file_len);
        if pos.saturating_add(buf.len() as u64) > file_len {
            return Err(Error::format(
                &self.path,
                format!("grain at sector {at_sector} lies past the end of the file: truncated?"),
            ));
        }
        self.file.read_exact_at(buf, pos).at(&self.path, "cannot read grain")
    }

    /// Bytes in one grain.
    pub fn grain_bytes(&self) -> u64 {
        self.header.grain_size * SECTOR
    }

    /// Writes `data` into the grain holding `sector`, at byte `within` that grain. An unallocated
    /// grain is first allocated at the end of the file and filled from `fill` (the bytes the grain
    /// showed before: the parent's, or zeros), so partial writes keep the rest of the grain.
    pub fn write_in_grain(
        &self,
        sector: u64,
        within: u64,
        data: &[u8],
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        if !self.writable {
            return Err(Error::new(ErrorKind::Io, &self.path, "extent was opened read-only"));
        }
        let gb = self.grain_bytes();
        if within + data.len() as u64 > gb {
            return Err(Error::new(ErrorKind::Io, &self.path, "write crosses a grain boundary"));
        }
        let current = self.grain(sector)?;
        if let Grain::At(at) = current {
            return self.write(data, at * SECTOR + within).at(&self.path, "cannot write grain");
        }
        let mut grain = vec![0u8; gb as usize];
        if current == Grain::Unallocated && data.len() as u64 != gb {
            fill(&mut grain)?;
        }
        grain[within as usize..within as usize + data.len()].copy_from_slice(data);
        // Data first, then the table entries: a crash in between leaves the grain unallocated.
        let at = {
            let mut len = lock(&self.file_len);
            let at = len.div_ceil(gb) * gb;
            *len = at + gb;
            at
        };
        self.write(&grain, at).at(&self.path, "cannot write grain")?;
        self.set_entry(sector, (at / SECTOR) as u32)
    }

    fn set_entry(&self, sector: u64, value: u32) -> Result<()> {
        let grain = sector / self.header.grain_size;
        let per = self.header.num_gtes_per_gt as u64;
        let gt = grain / per;
        let idx = (grain % per) as usize;
        let mut dirs = vec![&self.gd];
        if self.header.redundant() {
            dirs.push(&self.rgd);
        }
        for dir in dirs {
            let table_sector = dir[gt as usize] as u64;
            if table_sector == 0 {
                return Err(Error::unsupported(
                    &self.path,
                    "grain directory entry is empty; leafd writes only to extents with preallocated grain tables",
                ));
            }
            self.write(&value.to_le_bytes(), table_sector * SECTOR + idx as u64 * 4)
                .at(&self.path, "cannot write grain table")?;
        }
        // Keep the cached table in step with the file.
        let mut tables = lock(&self.tables);
        if let Some(t) = tables.get_mut(&gt) {
            Arc::make_mut(t)[idx] = value;
        }
        Ok(())
    }

    /// Checks that every grain table and every allocated grain lies inside the file: a file cut
    /// short (a copy still arriving, a failed transfer) fails here even where its header and
    /// directories survived. Reads each grain table once; the data is not read.
    pub fn check_grains(&self) -> Result<()> {
        let file_len = *lock(&self.file_len);
        self.each_entry(|grain_index, entry| {
            let first = grain_index * self.header.grain_size;
            // The last grain may be cut at the end of the capacity.
            let used = (self.header.capacity - first).min(self.header.grain_size) * SECTOR;
            if entry as u64 * SECTOR + used > file_len {
                return Err(Error::format(
                    &self.path,
                    format!("grain {grain_index} lies past the end of the file ({file_len} bytes): truncated?"),
                ));
            }
            Ok(())
        })
    }

    /// Every grain the extent stores, in order: its index and its sector in the file (zeroed
    /// grains, which store nothing, left out). Reads each grain table once and keeps none, so
    /// memory does not grow with the extent.
    pub fn stored_grains(&self, mut f: impl FnMut(u64, u64) -> Result<()>) -> Result<()> {
        self.each_entry(|grain_index, entry| f(grain_index, entry as u64))
    }

    /// Calls `f` with the index and entry of every grain the tables say is stored (neither
    /// unallocated nor zeroed), in order, each table checked to lie inside the file. Tables that
    /// lie back to back (as writers lay them out) are read together: one small read per table
    /// made a walk of a large extent grow with its capacity.
    fn each_entry(&self, mut f: impl FnMut(u64, u32) -> Result<()>) -> Result<()> {
        let file_len = *lock(&self.file_len);
        let per_table = self.header.num_gtes_per_gt as u64;
        let table_bytes = per_table * 4;
        const RUN: u64 = 256;
        let count = self.header.num_gts();
        let mut raw = Vec::new();
        let mut gt = 0;
        while gt < count {
            let sector = self.gd[gt as usize] as u64;
            if sector == 0 {
                gt += 1;
                continue;
            }
            let start = sector * SECTOR;
            let mut run = 1;
            while run < RUN
                && gt + run < count
                && self.gd[(gt + run) as usize] as u64 * SECTOR == start + run * table_bytes
                && start + (run + 1) * table_bytes <= file_len
            {
                run += 1;
            }
            if start + table_bytes > file_len {
                return Err(Error::format(
                    &self.path,
                    format!("grain table {gt} at sector {sector} lies past the end of the file: truncated?"),
                ));
            }
            raw.resize((run * table_bytes) as usize, 0);
            self.file.read_exact_at(&mut raw, start).at(&self.path, "cannot read grain table")?;
            for (i, chunk) in raw.chunks_exact(4).enumerate() {
                let entry = u32_at(chunk, 0);
                let zero = entry == 1 && self.header.zeroed_gte();
                let grain_index = gt * per_table + i as u64;
                // Entries past the capacity are never read.
                if entry == 0 || zero || grain_index * self.header.grain_size >= self.header.capacity {
                    continue;
                }
                f(grain_index, entry)?;
            }
            gt += run;
        }
        Ok(())
    }

    /// Forgets the grain tables read so far (a long sequential read keeps one at a time).
    pub fn forget_tables(&self) {
        lock(&self.tables).clear();
    }

    fn write(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        env::write_at(&self.env, &self.file, &self.path, data, offset)
    }

    /// Flushes data and metadata to stable storage.
    pub fn sync(&self) -> Result<()> {
        self.env.flush(&self.file, &self.path).at(&self.path, "cannot flush extent")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_layout_5_gib_embedded() {
        let l = Layout::new(5 << 21, true);
        assert_eq!((l.rgd_offset, l.gd_offset, l.overhead, l.file_len()), (21, 663, 1408, 720_896));
    }

    #[test]
    fn reference_layout_40_gib_embedded() {
        let l = Layout::new(40 << 21, true);
        assert_eq!((l.gd_offset, l.overhead), (5151, 10368));
    }

    #[test]
    fn reference_layout_split_extent_without_descriptor() {
        let l = Layout::new(8_323_072, false);
        assert_eq!((l.rgd_offset, l.gd_offset, l.overhead, l.file_len()), (1, 510, 1024, 524_288));
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = Header::new(5 << 21, true);
        let b = h.to_bytes();
        assert_eq!(Header::parse(&b, h.overhead * SECTOR).unwrap(), h);
        // Truncated file: the directories no longer fit.
        assert!(Header::parse(&b, 100 * SECTOR).unwrap_err().message.contains("truncated"));
        let mut bad = b;
        bad[73] = b'\r';
        assert!(Header::parse(&bad, h.overhead * SECTOR).is_err());
        let mut bad = b;
        bad[20] = 3; // grain size 3
        assert!(Header::parse(&bad, h.overhead * SECTOR).is_err());
        let mut bad = b;
        bad[10] = 1; // compressed flag (bit 16)
        assert!(Header::parse(&bad, h.overhead * SECTOR).unwrap_err().message.contains("streamOptimized"));
    }
}
