//! Sample VMs for tests, benchmarks and the demo: Fusion-like bundles whose disks are written by
//! leafd's own writer and filled with known byte patterns, so any reader can check them.

use std::path::{Path, PathBuf};

use leafd_formats::disk::{self, Disk, DiskType, NewDisk};
use leafd_formats::ids::{base_ddb, random_cid};
use leafd_formats::sparse::SECTOR;

use crate::error::{Error, IoContext, Result};
use crate::library::Options;

/// `len` bytes of `byte` at byte `offset` of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pattern {
    pub offset: u64,
    pub len: u64,
    pub byte: u8,
}

#[derive(Debug, Clone)]
pub struct SampleDisk {
    /// Device node, e.g. `scsi0:0`.
    pub node: String,
    /// File name of the descriptor (or single file), e.g. `Virtual Disk.vmdk`.
    pub file: String,
    pub disk_type: DiskType,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Largest extent for split types, in sectors.
    pub split_sectors: u64,
    pub patterns: Vec<Pattern>,
}

impl SampleDisk {
    /// A disk of `capacity` bytes with the standard patterns, split in extents of `capacity/3`
    /// (rounded to grains) for split types so every test crosses extent boundaries.
    pub fn new(node: &str, file: &str, disk_type: DiskType, capacity_bytes: u64) -> SampleDisk {
        let capacity = capacity_bytes / SECTOR;
        let split_sectors = (capacity / 3).next_multiple_of(128).max(128);
        SampleDisk {
            node: node.into(),
            file: file.into(),
            disk_type,
            capacity,
            split_sectors,
            patterns: standard_patterns(capacity_bytes, split_sectors * SECTOR),
        }
    }
}

/// Patterns that exercise the interesting places: the first grain, a partial grain, a run across
/// an extent boundary, many grains, and the very last bytes of the disk.
pub fn standard_patterns(capacity: u64, split: u64) -> Vec<Pattern> {
    let mut p = vec![
        Pattern { offset: 0, len: 65536, byte: 0x11 },
        Pattern { offset: 65536 + 4096, len: 512, byte: 0x22 },
        Pattern { offset: capacity / 2, len: 3 * 65536 + 1024, byte: 0x33 },
        Pattern { offset: capacity - 4096, len: 4096, byte: 0x44 },
    ];
    if split < capacity && split >= 8192 {
        p.push(Pattern { offset: split - 4096, len: 8192, byte: 0x55 });
    }
    p.sort_by_key(|p| p.offset);
    p
}

#[derive(Debug, Clone)]
pub struct SampleVm {
    pub name: String,
    pub disks: Vec<SampleDisk>,
}

impl SampleVm {
    /// One disk of the given type and size, named as Fusion names a new VM's disk.
    pub fn single(name: &str, disk_type: DiskType, capacity_bytes: u64) -> SampleVm {
        SampleVm {
            name: name.into(),
            disks: vec![SampleDisk::new("scsi0:0", "Virtual Disk.vmdk", disk_type, capacity_bytes)],
        }
    }

    /// Builds `<dir>/<name>.vmwarevm` and returns its path.
    pub fn build(&self, dir: &Path) -> Result<PathBuf> {
        let bundle = dir.join(format!("{}.vmwarevm", self.name));
        std::fs::create_dir(&bundle).at(&bundle, "cannot create sample bundle")?;
        for d in &self.disks {
            write_disk(&bundle.join(&d.file), d)?;
        }
        let write = |name: String, bytes: &[u8]| -> Result<()> {
            let p = bundle.join(name);
            std::fs::write(&p, bytes).at(&p, "cannot write sample file")
        };
        write(format!("{}.vmx", self.name), self.vmx().as_bytes())?;
        // An EFI variable store stand-in: leaves must get a byte-identical copy.
        let nvram: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        write(format!("{}.nvram", self.name), &nvram)?;
        write(
            format!("{}.vmxf", self.name),
            format!("<?xml version=\"1.0\"?>\n<Foundry>\n<VM>\n<VMId type=\"string\">52 0c 9d 43 a1 5e 7b 2d-8f 11 6e 02 44 d3 c1 90</VMId>\n<ClientMetaData>\n<clientMetaDataAttributes/>\n<HistoryEventList/></ClientMetaData>\n<vmxPathName type=\"string\">{}.vmx</vmxPathName></VM></Foundry>\n", self.name).as_bytes(),
        )?;
        write("vmware.log".into(), b"2026-11-28T10:00:00.000Z In(05) vmx Log for VMware Fusion pid=1234 version=13.6.0 build=build-24238079\n2026-11-28T10:05:00.000Z In(05) vmx VMX exit (0).\n")?;
        Ok(bundle)
    }

    /// A `.vmx` with the keys a powered-off Fusion VM has, identity included.
    pub fn vmx(&self) -> String {
        let n = &self.name;
        let mut v = format!(
            ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"21\"\npciBridge0.present = \"TRUE\"\n\
             pciBridge4.present = \"TRUE\"\npciBridge4.virtualDev = \"pcieRootPort\"\npciBridge4.functions = \"8\"\n\
             vmci0.present = \"TRUE\"\nhpet0.present = \"TRUE\"\nnvram = \"{n}.nvram\"\nvirtualHW.productCompatibility = \"hosted\"\n\
             powerType.powerOff = \"soft\"\npowerType.powerOn = \"soft\"\npowerType.suspend = \"soft\"\npowerType.reset = \"soft\"\n\
             displayName = \"{n}\"\nfirmware = \"efi\"\nguestOS = \"arm-ubuntu-64\"\ntools.syncTime = \"TRUE\"\n\
             tools.upgrade.policy = \"upgradeAtPowerCycle\"\nsound.autoDetect = \"TRUE\"\nsound.virtualDev = \"hdaudio\"\n\
             sound.fileName = \"-1\"\nsound.present = \"TRUE\"\nnumvcpus = \"2\"\nmemsize = \"4096\"\nmks.enable3d = \"TRUE\"\n\
             scsi0.virtualDev = \"pvscsi\"\nscsi0.present = \"TRUE\"\nsata0.present = \"TRUE\"\nnvme0.present = \"TRUE\"\n\
             sata0:1.deviceType = \"cdrom-image\"\nsata0:1.fileName = \"/Users/me/Downloads/ubuntu-24.04-live-server-arm64.iso\"\n\
             sata0:1.present = \"TRUE\"\nusb.present = \"TRUE\"\nehci.present = \"TRUE\"\nusb_xhci.present = \"TRUE\"\n\
             ethernet0.connectionType = \"nat\"\nethernet0.addressType = \"generated\"\nethernet0.virtualDev = \"e1000e\"\n\
             ethernet0.linkStatePropagation.enable = \"TRUE\"\nethernet0.present = \"TRUE\"\nextendedConfigFile = \"{n}.vmxf\"\n\
             vmxstats.filename = \"{n}.scoreboard\"\nuuid.bios = \"56 4d 6b 13 9c 2e 8a 71-35 0f 4e 2a c7 3e 7b 21\"\n\
             uuid.location = \"56 4d 6b 13 9c 2e 8a 71-35 0f 4e 2a c7 3e 7b 21\"\nvm.genid = \"-4152081230539468383\"\n\
             vm.genidX = \"-6618316474386212495\"\nethernet0.generatedAddress = \"00:0c:29:3e:7b:21\"\n\
             ethernet0.generatedAddressOffset = \"0\"\nsched.swap.derivedName = \"/Users/me/Virtual Machines.localized/{n}.vmwarevm/{n}-5c1b3e9a.vmem\"\n\
             checkpoint.vmState = \"\"\ncleanShutdown = \"TRUE\"\nsoftPowerOff = \"TRUE\"\ntools.remindInstall = \"FALSE\"\n"
        );
        for d in &self.disks {
            v.push_str(&format!(
                "{node}.fileName = \"{file}\"\n{node}.present = \"TRUE\"\n",
                node = d.node,
                file = d.file
            ));
        }
        v
    }
}

/// Creates a disk per `d` and writes its patterns with leafd's own writer.
pub fn write_disk(path: &Path, d: &SampleDisk) -> Result<()> {
    let extents =
        if d.disk_type.is_split() { disk::split_capacity(d.capacity, d.split_sectors) } else { vec![d.capacity] };
    let cid = random_cid();
    let env = Options::default().env();
    disk::create(
        &env,
        &NewDisk { path, disk_type: d.disk_type, extents, cid, parent: None, ddb: base_ddb(d.capacity, cid) },
    )?;
    let disk = Disk::open_writable(&env, path)?;
    for p in &d.patterns {
        if p.offset + p.len > d.capacity * SECTOR {
            return Err(Error::format(path, format!("pattern at {} runs past the disk's end", p.offset)));
        }
        disk.write_at(p.offset, &vec![p.byte; p.len as usize])?;
    }
    Ok(disk.sync()?)
}
