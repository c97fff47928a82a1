//! What the operations share: reading a VM's configuration, deciding whether a VM may be
//! touched, the names leafd gives files, and how sizes and times are shown. Operations use each
//! other's code only through here.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use leafd_formats::dict::Dict;
use leafd_formats::disk::Disk;

use crate::error::{Error, IoContext, Result};
use crate::library::records::DiskRecord;
use crate::library::{Base, Leaf, Options, bundle_stem};

/// `40.0 GiB`, `512 KiB`, `12 B`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

pub(crate) fn human_duration(d: Duration) -> String {
    if d < Duration::from_secs(10) { format!("{} ms", d.as_millis()) } else { format!("{:.1} s", d.as_secs_f64()) }
}

/// A CID as VMware writes it: 8 lower-case hex digits.
pub(crate) fn cid_hex(cid: u32) -> String {
    format!("{cid:08x}")
}

/// Reads a configuration file, refusing absurd sizes before reading; never blocks on a FIFO.
pub fn read_small(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = crate::platform::open_regular(path, false).at(path, "cannot read")?;
    let len = file.metadata().at(path, "cannot stat")?.len();
    if len > leafd_formats::dict::MAX_DICT_BYTES {
        return Err(Error::format(path, format!("{len} bytes is too large for a VMware configuration file")));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes).at(path, "cannot read")?;
    Ok(bytes)
}

/// Reads and parses a `.vmx` or `.vmsd`. A text leafd cannot read as it is (an encoding it does
/// not know) is refused with the parser's fix.
pub(crate) fn read_dict(path: &Path) -> Result<Dict> {
    Dict::parse(&read_small(path)?).map_err(|m| match m.fix.clone() {
        Some(fix) => Error::unsupported(path, m.to_string()).fix(fix),
        None => Error::format(path, m),
    })
}

/// The base name for a bundle: its folder name without `.vmwarevm`.
pub fn default_name(bundle: &Path) -> String {
    let name = bundle.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    bundle_stem(&name).to_string()
}

/// The disk a snapshot chain whose top is `top` becomes in a base: `<top>-base.vmdk` beside it.
pub(crate) fn flattened_name(top: &Path) -> PathBuf {
    let name = top.file_name().and_then(|n| n.to_str()).unwrap_or("disk.vmdk");
    top.with_file_name(format!("{}-base.vmdk", name.strip_suffix(".vmdk").unwrap_or(name)))
}

/// Canonical paths of a disk's extent files (for matching a leaf's parent copy to its base).
pub(crate) fn extent_keys(disk: &Disk) -> Vec<PathBuf> {
    disk.extent_files().iter().map(|f| f.canonicalize().unwrap_or_else(|_| f.clone())).collect()
}

/// The CID of an opened disk as recorded.
pub(crate) fn disk_cid(disk: &Disk) -> Result<String> {
    Ok(cid_hex(disk.descriptor.cid().map_err(|m| Error::format(disk.path(), m))?))
}

/// What a leaf occupies of its own: every file in its bundle (what deleting it would free). The
/// one definition the log, `status` and the benches use.
pub(crate) fn own_bytes(bundle: &Path) -> u64 {
    crate::fsutil::walk(bundle).map(|files| files.iter().map(|p| crate::fsutil::allocated(p)).sum()).unwrap_or(0)
}

/// Bytes free for the file system holding `dir`.
pub(crate) fn free_space(dir: &Path) -> Result<u64> {
    let s = rustix::fs::statvfs(dir).map_err(|e| Error::io(dir, "cannot read free space", e.into()))?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Refuses a VM that leafd must not touch, with the right reason and the right fix: encrypted,
/// suspended (decided first: a suspended VM keeps its `.vmem`, and may have no lock), or
/// running. `files` are the bundle's entries.
pub(crate) fn refuse_unsafe_state(vmx_path: &Path, vmx: &Dict, files: &[PathBuf]) -> Result<()> {
    if vmx.get("encryption.keySafe").is_some() || vmx.get("encryption.data").is_some() {
        if vmx.get("vmx.encryptionType").is_some_and(|t| t.eq_ignore_ascii_case("partial")) {
            return Err(Error::refused(
                vmx_path,
                "the VM's virtual TPM is encrypted (VMware encrypts the VM's configuration for it); VMware makes no linked clone of an encrypted VM",
            )
            .fix("in VMware, remove the encryption and the Trusted Platform Module (VM Settings > Encryption or Access Control), then drop the VM again; a Windows 11 guest may then need its TPM requirement lifted"));
        }
        return Err(Error::refused(vmx_path, "the VM is encrypted")
            .fix("remove the encryption in VMware's settings (VM Settings > Encryption), then drop the VM again"));
    }
    let suspend_file = files.iter().find(|p| has_ext(p, "vmss"));
    let checkpoint = vmx.get("checkpoint.vmState").filter(|v| !v.is_empty());
    if checkpoint.is_some() || suspend_file.is_some() {
        let at = suspend_file.cloned().unwrap_or_else(|| vmx_path.to_path_buf());
        return Err(Error::refused(&at, "the VM is suspended (its memory is saved, and its disks are in use)").fix(
            "resume it in VMware and shut it down from the guest (or discard its suspended state), then drop it again",
        ));
    }
    if let Some(lock) = files.iter().find(|p| has_ext(p, "lck")) {
        return Err(Error::refused(lock, "the VM is running (VMware's lock is present)")
            .fix("shut the VM down in VMware and quit VMware; leafd tries again by itself when the lock goes away"));
    }
    if let Some(vmem) = files.iter().find(|p| has_ext(p, "vmem")) {
        return Err(Error::refused(vmem, "the VM is running (its memory file is present)").fix(
            "shut the VM down in VMware and quit VMware; leafd tries again by itself when the memory file goes away",
        ));
    }
    Ok(())
}

fn has_ext(p: &Path, ext: &str) -> bool {
    p.extension().is_some_and(|x| x.eq_ignore_ascii_case(ext))
}

/// Every entry of a folder's tree with its type checked: leafd handles only files, folders and
/// links; a FIFO, device or socket (which would hang a copy or a read) is refused by name.
pub(crate) fn plain_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = crate::fsutil::walk(dir)?;
    for p in &entries {
        let t = fs::symlink_metadata(p).at(p, "cannot stat")?.file_type();
        if !(t.is_file() || t.is_dir() || t.is_symlink()) {
            use std::os::unix::fs::FileTypeExt;
            let what = if t.is_fifo() {
                "a FIFO (named pipe)"
            } else if t.is_socket() {
                "a socket"
            } else {
                "a device"
            };
            return Err(Error::refused(p, format!("is {what}: a VM bundle holds only files and folders"))
                .fix("remove it from the VM bundle, then drop the VM again"));
        }
    }
    Ok(entries)
}

/// Refuses a leaf that is not as leafd made it: running or suspended, or with snapshots the user
/// took in VMware since (its disks on newer deltas, or more snapshots than "Base"), which
/// promoting or resetting it would lose. `then` ends the fix: what to do once they are gone.
pub(crate) fn refuse_own_snapshots(leaf: &Leaf, then: &str) -> Result<()> {
    let vmx_path = leaf.vmx_path();
    let vmx = read_dict(&vmx_path)?;
    refuse_unsafe_state(&vmx_path, &vmx, &crate::fsutil::walk(&leaf.dir)?)?;
    for d in &leaf.record.disks {
        let now = vmx.get(&format!("{}.fileName", d.node)).unwrap_or_default();
        if now != d.delta {
            return Err(Error::refused(
                &vmx_path,
                format!(
                    "disk {} is on {now}, not on the leaf's delta {}: the VM has snapshots of its own",
                    d.node, d.delta
                ),
            )
            .fix(format!("delete the VM's own snapshots in VMware (keep \"Base\"), {then}")));
        }
    }
    let vmsd_path = vmx_path.with_extension("vmsd");
    if let Ok(vmsd) = read_dict(&vmsd_path)
        && vmsd.get("snapshot.numSnapshots").and_then(|n| n.parse::<u32>().ok()).unwrap_or(1) > 1
    {
        return Err(Error::refused(&vmsd_path, "the VM has snapshots of its own besides \"Base\"")
            .fix(format!("delete them in VMware (keep \"Base\"), {then}")));
    }
    Ok(())
}

/// The base's `.nvram` (EFI boot entries), when it has one: named by its `.vmx` (`base_vmx`)
/// like the disks, in the `.vmx`'s code page or in UTF-8 after a copy from Windows.
pub(crate) fn base_nvram(base_vmx: &Dict, base: &Base, opts: &Options) -> Option<PathBuf> {
    let stem = base.record.vmx.trim_end_matches(crate::library::BASE_VMX_SUFFIX).trim_end_matches(".vmx");
    let nvram = base_vmx.get("nvram").map(str::to_string).unwrap_or_else(|| format!("{stem}.nvram"));
    leafd_formats::disk::find(&opts.env(), &base.dir, &base_vmx.name(&nvram)).filter(|p| p.is_file())
}

/// The base's disks, each checked to be as the base was made: a base whose disk changed would
/// give leaves that fail to boot (VMware error 18).
pub(crate) fn open_base_disks(base: &Base, opts: &Options) -> Result<Vec<(DiskRecord, Disk)>> {
    let mut out = Vec::new();
    for d in &base.record.disks {
        let path = base.descriptor_path(d);
        let disk = Disk::open(&opts.env(), &path)?;
        let cid = disk_cid(&disk)?;
        if cid != d.cid {
            return Err(Error::refused(
                &path,
                format!("the base disk changed since the base was made (CID {cid}, recorded {})", d.cid),
            )
            .fix("run `leafd verify`; a base must never be booted or edited"));
        }
        out.push((d.clone(), disk));
    }
    Ok(out)
}
