//! Whole virtual disks: a descriptor with its extents, and the chain of parents below it.
//!
//! `Disk::open` follows `parentFileNameHint` and checks the two bindings VMware checks (parent CID
//! and capacity), so a chain that opens here is one VMware would accept. Reads go through the
//! chain: sparse grains that are not allocated fall through to the parent.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::descriptor::{Access, Descriptor, Extent, ExtentKind, NO_PARENT};
use crate::env::{self, Env};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::sparse::{self, Grain, SECTOR, SparseExtent};
use crate::text;

/// Chains deeper than this are refused (also stops a loop of parent hints).
const MAX_CHAIN_DEPTH: usize = 32;

/// The disk types leafd serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// `monolithicSparse`: one sparse file with its descriptor embedded.
    MonolithicSparse,
    /// `twoGbMaxExtentSparse`: a text descriptor and sparse extents.
    SplitSparse,
    /// `monolithicFlat`: a text descriptor and one flat extent.
    MonolithicFlat,
    /// `twoGbMaxExtentFlat`: a text descriptor and flat extents.
    SplitFlat,
}

impl DiskType {
    /// The type a `createType` names, if leafd serves it.
    pub fn from_create_type(create_type: &str) -> Option<DiskType> {
        match create_type {
            "monolithicSparse" => Some(DiskType::MonolithicSparse),
            "twoGbMaxExtentSparse" => Some(DiskType::SplitSparse),
            "monolithicFlat" => Some(DiskType::MonolithicFlat),
            "twoGbMaxExtentFlat" => Some(DiskType::SplitFlat),
            _ => None,
        }
    }

    /// The `createType` of this type.
    pub fn create_type(self) -> &'static str {
        match self {
            DiskType::MonolithicSparse => "monolithicSparse",
            DiskType::SplitSparse => "twoGbMaxExtentSparse",
            DiskType::MonolithicFlat => "monolithicFlat",
            DiskType::SplitFlat => "twoGbMaxExtentFlat",
        }
    }

    /// True for the split types (several extents).
    pub fn is_split(self) -> bool {
        matches!(self, DiskType::SplitSparse | DiskType::SplitFlat)
    }

    /// True for the sparse types.
    pub fn is_sparse(self) -> bool {
        matches!(self, DiskType::MonolithicSparse | DiskType::SplitSparse)
    }
}

/// Reads the descriptor of a `.vmdk`: a text file, or the text embedded in a monolithicSparse file.
/// Returns it with `true` when it was embedded. Refuses anything over a sane size without reading it.
pub fn read_descriptor(env: &Arc<dyn Env>, path: &Path) -> Result<(Descriptor, bool)> {
    let mut file = env.open(path, false).at(path, "cannot open disk")?;
    let len = file.metadata().at(path, "cannot stat disk")?.len();
    let mut head = [0u8; 512];
    let n = file.read_at(&mut head, 0).at(path, "cannot read disk")?;
    if n >= 4 && &head[..4] == sparse::MAGIC {
        if n == 512 && sparse::is_compressed(&head) {
            return Err(unsupported_type(path, "streamOptimized"));
        }
        let extent = SparseExtent::open(env, path)?;
        let bytes = extent.embedded_descriptor()?.ok_or_else(|| {
            Error::format(path, "sparse extent without an embedded descriptor: open the disk's text descriptor instead")
        })?;
        let d = Descriptor::parse_bytes(&bytes).map_err(|e| Error::parse(path, "embedded descriptor", e))?;
        return Ok((d, true));
    }
    if n >= 4 && &head[..4] == b"COWD" {
        let name = file_name(path);
        return Err(Error::unsupported(
            path,
            "is an ESX sparse disk (COWD, from ESX 2 or an ESX 3-5 snapshot): leafd serves only hosted VMware disks",
        )
        .fix(format!(
            "import it on the ESX host (vmkfstools -i '{name}' -d 2gbsparse '{}-hosted.vmdk') or with VMware Converter, attach the imported disk to the VM, then drop the VM again",
            stem_of(&name)
        )));
    }
    if len > crate::descriptor::MAX_DESCRIPTOR_BYTES {
        return Err(Error::format(
            path,
            format!("{len} bytes is too large for a disk descriptor, and it is not a sparse extent"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.by_ref()
        .take(crate::descriptor::MAX_DESCRIPTOR_BYTES + 1)
        .read_to_end(&mut bytes)
        .at(path, "cannot read descriptor")?;
    let d = Descriptor::parse_bytes(&bytes).map_err(|e| Error::parse(path, "descriptor", e))?;
    Ok((d, false))
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn stem_of(name: &str) -> &str {
    name.strip_suffix(".vmdk").unwrap_or(name)
}

/// The refusal of a disk type leafd does not serve, with how to turn the disk into one it does.
fn unsupported_type(path: &Path, create_type: &str) -> Error {
    let name = file_name(path);
    let new = format!("{}-hosted.vmdk", stem_of(&name));
    let convert = format!("vmware-vdiskmanager -r '{name}' -t 0 '{new}'");
    let attach = "attach the new disk to the VM in place of this one, then drop the VM again";
    let t = create_type.to_ascii_lowercase();
    let (what, fix) = if t == "streamoptimized" {
        (
            "an exported disk (compressed, from an OVA or OVF), which VMware runs only once imported".to_string(),
            format!(
                "convert it to a growable disk: {convert} (or qemu-img convert -O vmdk -o subformat=monolithicSparse '{name}' '{new}'); {attach}"
            ),
        )
    } else if t.contains("rawdevicemap") || t.contains("rdm") || t == "vmfsraw" {
        (
            "a raw device mapping: the data is on a LUN of the ESXi host, not in this file".to_string(),
            format!(
                "on the host, migrate the RDM to a virtual disk (Storage vMotion, or vmkfstools -i '{name}' -d thin NEW.vmdk), copy that here and convert it with vmware-vdiskmanager -r NEW.vmdk -t 0 '{new}'; {attach}"
            ),
        )
    } else if t == "vmfssparse" || t == "sesparse" {
        (
            format!("an ESXi snapshot delta ({create_type})"),
            format!(
                "consolidate the VM's snapshots on the host (Snapshots > Delete All), or convert the chain into one disk: {convert}; {attach}"
            ),
        )
    } else if t.starts_with("vmfs") {
        (
            format!("an ESXi datastore disk ({create_type})"),
            format!("convert it: {convert} (or on the host: vmkfstools -i '{name}' -d 2gbsparse '{new}'); {attach}"),
        )
    } else if t == "fulldevice" || t == "partitioneddevice" {
        (
            "a raw host disk or partition".to_string(),
            format!("copy it into a virtual disk with VMware (a full clone of the VM), or: {convert}; {attach}"),
        )
    } else {
        (String::new(), format!("convert it to a growable disk with VMware's disk tool: {convert}; {attach}"))
    };
    let what = if what.is_empty() { what } else { format!(": {what}") };
    Error::unsupported(path, format!("disk type \"{create_type}\" is not one leafd serves{what}")).fix(fix)
}

/// Resolves an extent or parent file named in a descriptor in `dir` (a UTF-8 name; for a name
/// from a descriptor or `.vmx`, [`find`] tries every place it may be).
pub fn resolve(dir: &Path, name: &str) -> PathBuf {
    resolve_path(dir, Path::new(name))
}

fn resolve_path(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { dir.join(p) }
}

/// Where the file `name` (written in a file in `dir`) is: the first of its
/// [candidates](text::Name::candidates) that exists, else the first. `None` for a Windows
/// absolute path, which names a place on another machine.
pub fn find(env: &Arc<dyn Env>, dir: &Path, name: &text::Name) -> Option<PathBuf> {
    if text::is_windows_absolute(&name.text) {
        return None;
    }
    let places: Vec<PathBuf> = name.candidates().iter().map(|c| resolve_path(dir, c)).collect();
    let found =
        places.iter().find(|p| !matches!(env.open(p, false), Err(e) if e.kind() == std::io::ErrorKind::NotFound));
    found.or(places.first()).cloned()
}

enum Data {
    Sparse(Box<SparseExtent>),
    Flat { file: File, path: PathBuf, offset: u64 },
    Zero,
}

/// The source of a run of bytes of a disk.
enum Piece<'a> {
    Zeros,
    File(&'a File, &'a Path, u64),
    /// An allocated grain: its sector, and the byte offset within it.
    Grain(&'a SparseExtent, u64, u64),
    /// Not stored here: the parent's bytes (zeros without a parent).
    Parent,
}

struct OpenExtent {
    start: u64,
    sectors: u64,
    access: Access,
    data: Data,
}

/// One disk of a chain, opened with its parent.
pub struct Disk {
    /// What it was opened with; its writes and flushes go through it too.
    env: Arc<dyn Env>,
    path: PathBuf,
    /// The disk's descriptor, as read.
    pub descriptor: Descriptor,
    /// True when the descriptor is embedded in a monolithicSparse file.
    pub embedded: bool,
    /// The disk's type, from `createType`.
    pub disk_type: DiskType,
    extents: Vec<OpenExtent>,
    parent: Option<Box<Disk>>,
}

impl Disk {
    /// Opens a disk and its whole chain, read-only.
    pub fn open(env: &Arc<dyn Env>, path: &Path) -> Result<Disk> {
        Self::open_at_depth(env, path, false, 0, true)
    }

    /// Opens a disk read-only without following its parent (reads of unallocated grains give zeros).
    pub fn open_alone(env: &Arc<dyn Env>, path: &Path) -> Result<Disk> {
        Self::open_at_depth(env, path, false, 0, false)
    }

    /// Opens the chain with this disk's own extents writable and every parent read-only.
    pub fn open_writable(env: &Arc<dyn Env>, path: &Path) -> Result<Disk> {
        Self::open_at_depth(env, path, true, 0, true)
    }

    fn open_at_depth(env: &Arc<dyn Env>, path: &Path, writable: bool, depth: usize, with_parent: bool) -> Result<Disk> {
        if depth > MAX_CHAIN_DEPTH {
            return Err(Error::format(
                path,
                format!("snapshot chain is deeper than {MAX_CHAIN_DEPTH} disks (a loop of parent hints?)"),
            ));
        }
        let (descriptor, embedded) = read_descriptor(env, path)?;
        let disk = Self::build(env, path, descriptor, embedded, writable)?;
        let parent_cid = disk.descriptor.parent_cid().map_err(|m| Error::format(path, format!("descriptor {m}")))?;
        if parent_cid == NO_PARENT || !with_parent {
            return Ok(disk);
        }
        let hint = disk.descriptor.parent_name().ok_or_else(|| {
            Error::format(path, "snapshot disk without parentFileNameHint: its parent cannot be found")
        })?;
        let Some(parent_path) = find(env, path.parent().unwrap_or(Path::new(".")), &hint) else {
            return Err(Error::missing(
                path,
                format!(
                    "parent disk {} is missing: that is a path on the Windows machine the disk was made on, outside this folder",
                    hint.text
                ),
            )
            .fix("copy the parent disk next to this one and point parentFileNameHint at it, or make a full clone of the VM in VMware and use that"));
        };
        let parent = Self::open_at_depth(env, &parent_path, false, depth + 1, true).map_err(|e| {
            if e.not_found() {
                Error::missing(path, format!("parent disk {} is missing", parent_path.display()))
                    .fix("put the parent back, or run `leafd relink` if the library moved")
            } else {
                e
            }
        })?;
        disk.with_parent(parent)
    }

    /// A disk from a descriptor held in memory, read-only, its extents resolved from the folder
    /// of `path` (which need not exist). Its parent is not opened.
    pub fn from_descriptor(env: &Arc<dyn Env>, path: &Path, descriptor: Descriptor) -> Result<Disk> {
        Self::build(env, path, descriptor, false, false)
    }

    fn build(env: &Arc<dyn Env>, path: &Path, descriptor: Descriptor, embedded: bool, writable: bool) -> Result<Disk> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let create_type = descriptor.create_type();
        let disk_type = DiskType::from_create_type(create_type).ok_or_else(|| unsupported_type(path, create_type))?;
        descriptor.cid().map_err(|m| Error::format(path, format!("descriptor {m}")))?;
        descriptor.parent_cid().map_err(|m| Error::format(path, format!("descriptor {m}")))?;
        let mut extents = Vec::new();
        let mut start = 0u64;
        for e in descriptor.extents() {
            let data = open_extent(env, dir, &descriptor, e, writable, path)?;
            extents.push(OpenExtent { start, sectors: e.sectors, access: e.access, data });
            start = start.checked_add(e.sectors).ok_or_else(|| Error::format(path, "extent sizes overflow"))?;
        }
        if extents.is_empty() {
            return Err(Error::format(path, "descriptor lists no extents"));
        }
        // Byte offsets are sectors × 512 in u64: a bound here keeps every product in range.
        if start > sparse::MAX_CAPACITY_SECTORS {
            return Err(Error::format(path, format!("capacity of {start} sectors is beyond any disk VMware makes")));
        }
        Ok(Disk { env: env.clone(), path: path.to_path_buf(), descriptor, embedded, disk_type, extents, parent: None })
    }

    /// Puts `parent` under this disk, after the two checks VMware makes: the parent's CID is
    /// this disk's parentCID, and the capacities are equal.
    pub fn with_parent(mut self, parent: Disk) -> Result<Disk> {
        let path = &self.path;
        let parent_cid = self.descriptor.parent_cid().map_err(|m| Error::format(path, format!("descriptor {m}")))?;
        let actual = parent.descriptor.cid().unwrap_or(0);
        if actual != parent_cid {
            return Err(Error::format(
                path,
                format!(
                    "parentCID {parent_cid:08x} does not match CID {actual:08x} of parent {} (VMware error 18: the parent was modified)",
                    parent.path.display()
                ),
            ));
        }
        if parent.capacity() != self.capacity() {
            return Err(Error::format(
                path,
                format!(
                    "capacity {} sectors differs from parent {} with {} sectors (VMware error 67)",
                    self.capacity(),
                    parent.path.display(),
                    parent.capacity()
                ),
            ));
        }
        self.parent = Some(Box::new(parent));
        Ok(self)
    }

    /// The disk's `.vmdk` (its descriptor, or its single file).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.extents.last().map_or(0, |e| e.start + e.sectors)
    }

    /// The next disk down the chain, when it was opened.
    pub fn parent(&self) -> Option<&Disk> {
        self.parent.as_deref()
    }

    /// The files of this disk alone: the descriptor (when separate), then its extent files.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = if self.embedded { Vec::new() } else { vec![self.path.clone()] };
        files.extend(self.extent_files());
        files
    }

    /// This disk's extent files, in order (`ZERO` extents have none).
    pub fn extent_files(&self) -> Vec<PathBuf> {
        self.extent_layout().into_iter().filter_map(|(_, f)| f).collect()
    }

    /// Every extent in order: its sectors and its file (`None` for `ZERO`).
    pub fn extent_layout(&self) -> Vec<(u64, Option<PathBuf>)> {
        self.extents
            .iter()
            .map(|e| {
                let file = match &e.data {
                    Data::Sparse(s) => Some(s.path().to_path_buf()),
                    Data::Flat { path, .. } => Some(path.clone()),
                    Data::Zero => None,
                };
                (e.sectors, file)
            })
            .collect()
    }

    /// Sizes of this disk's extents in sectors, in order.
    pub fn extent_sectors(&self) -> Vec<u64> {
        self.extents.iter().map(|e| e.sectors).collect()
    }

    /// Reads `buf.len()` bytes at byte `offset` of the virtual disk, through the chain.
    pub fn read_at(&self, mut offset: u64, mut buf: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.capacity() * SECTOR);
        if end.is_none() {
            return Err(Error::new(
                ErrorKind::Io,
                &self.path,
                format!("read of {} bytes at {offset} is past the end of the disk", buf.len()),
            ));
        }
        while !buf.is_empty() {
            let n = self.read_piece(offset, buf)?;
            offset += n as u64;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    fn extent_at(&self, sector: u64) -> &OpenExtent {
        let i = self.extents.partition_point(|e| e.start + e.sectors <= sector);
        &self.extents[i]
    }

    /// Where the bytes at `offset` come from, for at most `max` bytes (one grain or less).
    fn locate(&self, offset: u64, max: u64) -> Result<(usize, Piece<'_>)> {
        let e = self.extent_at(offset / SECTOR);
        let local = offset - e.start * SECTOR;
        let left = (e.sectors * SECTOR - local).min(max);
        if e.access == Access::NoAccess {
            return Err(Error::format(&self.path, format!("extent at sector {} is marked NOACCESS", e.start)));
        }
        Ok(match &e.data {
            Data::Zero => (left as usize, Piece::Zeros),
            Data::Flat { file, path, offset: base } => (left as usize, Piece::File(file, path, base * SECTOR + local)),
            Data::Sparse(s) => {
                let within = local % s.grain_bytes();
                let n = left.min(s.grain_bytes() - within) as usize;
                match s.grain(local / SECTOR)? {
                    Grain::At(at) => (n, Piece::Grain(s, at, within)),
                    Grain::Zero => (n, Piece::Zeros),
                    Grain::Unallocated => (n, Piece::Parent),
                }
            }
        })
    }

    /// Reads as much as fits in one grain (or one extent) at `offset`; returns the bytes read.
    fn read_piece(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let (n, piece) = self.locate(offset, buf.len() as u64)?;
        let buf = &mut buf[..n];
        match piece {
            Piece::Zeros => buf.fill(0),
            Piece::File(file, path, pos) => file.read_exact_at(buf, pos).at(path, "cannot read flat extent")?,
            Piece::Grain(s, at, within) => s.read_grain(at, within, buf)?,
            Piece::Parent => match &self.parent {
                Some(p) => p.read_at(offset, buf)?,
                None => buf.fill(0),
            },
        }
        Ok(n)
    }

    /// True when some disk of the chain stores data for any byte of `[offset, offset + len)`;
    /// false means those bytes read as zeros without being stored anywhere.
    pub fn has_data(&self, mut offset: u64, len: u64) -> Result<bool> {
        let end = offset + len;
        while offset < end {
            let (n, piece) = self.locate(offset, end - offset)?;
            match piece {
                Piece::Zeros => {}
                Piece::File(..) | Piece::Grain(..) => return Ok(true),
                Piece::Parent => {
                    if let Some(p) = &self.parent
                        && p.has_data(offset, n as u64)?
                    {
                        return Ok(true);
                    }
                }
            }
            offset += n as u64;
        }
        Ok(false)
    }

    /// Writes `data` at byte `offset` into this disk's own extents (never into a parent).
    /// Partial grains keep the bytes the disk showed before. Needs `open_writable`.
    pub fn write_at(&self, mut offset: u64, mut data: &[u8]) -> Result<()> {
        if offset.checked_add(data.len() as u64).is_none_or(|e| e > self.capacity() * SECTOR) {
            return Err(Error::new(ErrorKind::Io, &self.path, "write past the end of the disk"));
        }
        while !data.is_empty() {
            let sector = offset / SECTOR;
            let e = self.extent_at(sector);
            let local = offset - e.start * SECTOR;
            let extent_left = e.sectors * SECTOR - local;
            let n = match &e.data {
                Data::Zero => {
                    return Err(Error::new(ErrorKind::Io, &self.path, "cannot write into a ZERO extent"));
                }
                Data::Flat { file, path, offset: base } => {
                    let n = (data.len() as u64).min(extent_left) as usize;
                    env::write_at(&self.env, file, path, &data[..n], base * SECTOR + local)
                        .at(path, "cannot write flat extent")?;
                    n
                }
                Data::Sparse(s) => {
                    let gb = s.grain_bytes();
                    let within = local % gb;
                    let n = (data.len() as u64).min(gb - within).min(extent_left) as usize;
                    let grain_start = offset - within;
                    s.write_in_grain(local / SECTOR, within, &data[..n], |grain| {
                        // The grain's old content: whatever of it lies inside the disk.
                        let len = (grain.len() as u64).min(extent_left + within) as usize;
                        match &self.parent {
                            Some(p) => p.read_at(grain_start, &mut grain[..len]),
                            None => Ok(()),
                        }
                    })?;
                    n
                }
            };
            offset += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    /// Checks that every extent of this disk is whole: sparse grains inside their files (flat
    /// extents were checked for length when opened).
    pub fn check_extents(&self) -> Result<()> {
        for e in &self.extents {
            if let Data::Sparse(s) = &e.data {
                s.check_grains()?;
            }
        }
        Ok(())
    }

    /// Forgets the grain tables this disk and its parents have read so far: a read of a whole
    /// disk, front to back, calls this now and then to keep one table per extent in memory.
    pub fn forget_tables(&self) {
        for e in &self.extents {
            if let Data::Sparse(s) = &e.data {
                s.forget_tables();
            }
        }
        if let Some(p) = &self.parent {
            p.forget_tables();
        }
    }

    /// Every grain this disk itself stores (never its parent's), in order: its byte offset in
    /// the virtual disk and its bytes (the last grain of an extent cut at the extent's end).
    /// Reads each grain table once and keeps none. A disk with a flat extent stores every byte,
    /// and is refused: this is for reading a snapshot delta back.
    pub fn stored_grains(&self, mut f: impl FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        let mut buf = Vec::new();
        for e in &self.extents {
            let s = match &e.data {
                Data::Sparse(s) => s,
                Data::Zero => continue,
                Data::Flat { path, .. } => {
                    return Err(Error::unsupported(path, "a flat extent is not a snapshot delta's"));
                }
            };
            let grain = s.header.grain_size;
            s.stored_grains(|index, at| {
                let len = (e.sectors - index * grain).min(grain) * SECTOR;
                buf.resize(len as usize, 0);
                s.read_grain(at, 0, &mut buf)?;
                f((e.start + index * grain) * SECTOR, &buf)
            })?;
        }
        Ok(())
    }

    /// Flushes every writable extent of this disk.
    pub fn sync(&self) -> Result<()> {
        for e in &self.extents {
            match &e.data {
                Data::Sparse(s) => s.sync()?,
                Data::Flat { file, path, .. } => self.env.flush(file, path).at(path, "cannot flush extent")?,
                Data::Zero => {}
            }
        }
        Ok(())
    }
}

fn open_extent(
    env: &Arc<dyn Env>,
    dir: &Path,
    d: &Descriptor,
    e: &Extent,
    writable: bool,
    descriptor: &Path,
) -> Result<Data> {
    let file_path = || -> Result<PathBuf> {
        let name = d.name(e.file.as_deref().unwrap_or(Path::new("")));
        find(env, dir, &name).ok_or_else(|| {
            Error::missing(
                descriptor,
                format!("extent {} is missing: that is a path on the Windows machine the disk was made on", name.text),
            )
            .fix("copy the extent next to the descriptor and name it there without its drive letter")
        })
    };
    let missing = |err: Error, p: &Path| {
        if err.not_found() {
            Error::missing(descriptor, format!("extent {} is missing", p.display()))
                .fix("restore the missing file; a disk cannot be used without all its extents")
        } else {
            err
        }
    };
    match &e.kind {
        ExtentKind::Zero => Ok(Data::Zero),
        ExtentKind::Sparse => {
            let p = file_path()?;
            let s = if writable { SparseExtent::open_writable(env, &p) } else { SparseExtent::open(env, &p) }
                .map_err(|err| missing(err, &p))?;
            if s.header.capacity != e.sectors {
                return Err(Error::format(
                    &p,
                    format!("extent holds {} sectors but its descriptor says {}", s.header.capacity, e.sectors),
                ));
            }
            Ok(Data::Sparse(Box::new(s)))
        }
        ExtentKind::Flat => {
            let p = file_path()?;
            let file = env.open(&p, writable).map_err(|err| missing(Error::io(&p, "cannot open extent", err), &p))?;
            let offset = e.offset.unwrap_or(0);
            let need = offset.saturating_add(e.sectors).saturating_mul(SECTOR);
            let len = file.metadata().at(&p, "cannot stat extent")?.len();
            if len < need {
                return Err(Error::format(
                    &p,
                    format!("flat extent is {len} bytes, its descriptor needs {need}: truncated?"),
                ));
            }
            Ok(Data::Flat { file, path: p, offset })
        }
        ExtentKind::Other(t) => Err(Error::unsupported(descriptor, format!("extent type {t} is not one leafd serves"))),
    }
}

/// What a new disk should look like.
pub struct NewDisk<'a> {
    /// The `.vmdk` to create (descriptor, or the single file of a monolithic sparse disk).
    pub path: &'a Path,
    /// Its type.
    pub disk_type: DiskType,
    /// Sectors of each extent, in order (one entry for monolithic types).
    pub extents: Vec<u64>,
    /// Its content ID.
    pub cid: u32,
    /// `(parentFileNameHint, parent CID)` for a snapshot delta.
    pub parent: Option<(&'a str, u32)>,
    /// The DDB entries, in order.
    pub ddb: Vec<(String, String)>,
}

/// Extent file names VMware uses for a disk whose descriptor is `<stem>.vmdk`.
pub fn extent_names(stem: &str, disk_type: DiskType, count: usize) -> Vec<String> {
    match disk_type {
        DiskType::MonolithicSparse => vec![format!("{stem}.vmdk")],
        DiskType::MonolithicFlat => vec![format!("{stem}-flat.vmdk")],
        DiskType::SplitSparse => (1..=count).map(|i| format!("{stem}-s{i:03}.vmdk")).collect(),
        DiskType::SplitFlat => (1..=count).map(|i| format!("{stem}-f{i:03}.vmdk")).collect(),
    }
}

/// Splits a capacity into extents of at most `max` sectors, as VMware does for split disks.
pub fn split_capacity(capacity: u64, max: u64) -> Vec<u64> {
    let mut v = vec![max; (capacity / max) as usize];
    if !capacity.is_multiple_of(max) {
        v.push(capacity % max);
    }
    v
}

/// The longest file name: 255 bytes on Linux (`NAME_MAX`), 255 UTF-16 units on macOS (HFS+,
/// and APFS as macOS enforces it).
pub const MAX_FILE_NAME: usize = 255;

/// The length of `name` as the file system counts it against [`MAX_FILE_NAME`], and its unit.
pub fn name_length(name: &str) -> (usize, &'static str) {
    if cfg!(target_os = "macos") { (name.encode_utf16().count(), "UTF-16 units") } else { (name.len(), "bytes") }
}

/// `<stem>` of a disk `<stem>.vmdk`, from which its extents are named.
fn stem(path: &Path) -> Result<&str> {
    let name =
        path.file_name().and_then(|n| n.to_str()).ok_or_else(|| Error::format(path, "disk name is not valid UTF-8"))?;
    Ok(name.strip_suffix(".vmdk").unwrap_or(name))
}

/// The descriptor [`create`] writes for `spec`, checked: file names the file system and a
/// descriptor can hold, a text within the size of any descriptor, and for a monolithic sparse disk a text that fits in its
/// embedded area. Writes nothing, so a caller can learn early that a disk could not be made.
pub fn describe(spec: &NewDisk) -> Result<Descriptor> {
    let names = extent_names(stem(spec.path)?, spec.disk_type, spec.extents.len());
    // Every file it is made of must be a name the file system can hold.
    let own = spec.path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if let Some(long) =
        std::iter::once(own).chain(names.iter().map(String::as_str)).find(|n| name_length(n).0 > MAX_FILE_NAME)
    {
        let (len, unit) = name_length(long);
        return Err(Error::unsupported(
            &spec.path.with_file_name(long),
            format!("the file name {long:?} is {len} {unit} long; a file name holds at most {MAX_FILE_NAME}"),
        )
        .fix("give the disk a shorter name"));
    }
    let kind = if spec.disk_type.is_sparse() { ExtentKind::Sparse } else { ExtentKind::Flat };
    let extents: Vec<Extent> = names
        .iter()
        .zip(&spec.extents)
        .map(|(name, &sectors)| Extent {
            access: Access::ReadWrite,
            sectors,
            kind: kind.clone(),
            file: Some(PathBuf::from(name)),
            offset: if kind == ExtentKind::Flat { Some(0) } else { None },
        })
        .collect();
    // About 60 bytes per extent line: refused before anything is built.
    if spec.extents.len() as u64 * 64 > super::descriptor::MAX_DESCRIPTOR_BYTES {
        return Err(Error::unsupported(
            spec.path,
            format!("a disk of {} extents needs a descriptor larger than any disk descriptor", spec.extents.len()),
        )
        .fix("convert the disk to fewer, larger extents with VMware's disk tool (vmware-vdiskmanager -r SOURCE.vmdk -t 1 NEW.vmdk)"));
    }
    let ddb: Vec<(&str, &str)> = spec.ddb.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (hint, parent_cid) = match spec.parent {
        Some((hint, cid)) => (Some(hint), cid),
        None => (None, NO_PARENT),
    };
    let descriptor = Descriptor::build(spec.cid, parent_cid, spec.disk_type.create_type(), hint, &extents, &ddb)
        .map_err(|e| {
            Error::unsupported(spec.path, e.to_string()).fix("rename the disk's files to names without quotes")
        })?;
    let embedded_max = (sparse::EMBEDDED_DESCRIPTOR_SECTORS * SECTOR) as usize;
    if spec.disk_type == DiskType::MonolithicSparse && descriptor.to_string().len() > embedded_max {
        return Err(Error::unsupported(
            spec.path,
            format!("its descriptor does not fit in the {embedded_max} bytes a monolithic sparse disk holds"),
        )
        .fix("give the disk's files shorter names"));
    }
    Ok(descriptor)
}

/// Creates a new empty disk (all zeros, or all "read from parent" for a delta). Returns the files
/// written, each flushed. Fails, creating nothing more, if any file already exists.
pub fn create(env: &Arc<dyn Env>, spec: &NewDisk) -> Result<Vec<PathBuf>> {
    let dir = spec.path.parent().unwrap_or(Path::new("."));
    let descriptor = describe(spec)?;
    let names = extent_names(stem(spec.path)?, spec.disk_type, spec.extents.len());
    // A file is listed once this call has made it; `files` holds the same files, open, in order.
    let mut written: Vec<PathBuf> = Vec::new();
    let result = (|| {
        let mut files: Vec<File> = Vec::new();
        if spec.disk_type == DiskType::MonolithicSparse {
            files.push(sparse::create_empty(env, spec.path, spec.extents[0], Some(&descriptor.to_string()))?);
            written.push(spec.path.to_path_buf());
        } else {
            let p = spec.path;
            let f = env.create(p).at(p, "cannot create file")?;
            written.push(p.to_path_buf());
            env::write_at(env, &f, p, &descriptor.to_bytes(), 0).at(p, "cannot write file")?;
            files.push(f);
            for (name, &sectors) in names.iter().zip(&spec.extents) {
                let p = dir.join(name);
                if spec.disk_type.is_sparse() {
                    files.push(sparse::create_empty(env, &p, sectors, None)?);
                    written.push(p);
                } else {
                    let f = env.create(&p).at(&p, "cannot create extent")?;
                    written.push(p.clone());
                    env::set_len(env, &f, &p, sectors * SECTOR).at(&p, "cannot size extent")?;
                    files.push(f);
                }
            }
        }
        for (f, p) in files.iter().zip(&written) {
            env.flush(f, p).at(p, "cannot flush")?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(written),
        Err(e) => {
            // Leave nothing half made behind; only files this call created are removed.
            for p in &written {
                let _ = env.remove(p);
            }
            Err(e)
        }
    }
}
