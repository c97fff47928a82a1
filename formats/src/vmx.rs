//! What leafd reads from and writes into a VM's `.vmx` and `.vmsd` (FORMATS.md §3).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::dict::Dict;

/// A virtual disk attached to the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEntry {
    /// The device node, as spelled in the file: `scsi0:0`, `sata0:1`, `nvme0:0`, `ide0:0`.
    pub node: String,
    /// The `fileName` value: relative to the `.vmx`'s folder, or absolute.
    pub file_name: String,
}

const DISK_BUSES: [&str; 4] = ["scsi", "sata", "nvme", "ide"];

/// Splits `scsi0:1.fileName` into (`scsi0:1`, bus, controller key `scsi0`).
fn disk_node(key: &str) -> Option<(&str, &str)> {
    let i = key.len().checked_sub(".fileName".len())?;
    if !key.is_char_boundary(i) || !key[i..].eq_ignore_ascii_case(".fileName") {
        return None;
    }
    let node = &key[..i];
    // Compared as bytes: a key may hold any character, and slicing it could split one.
    let bus = DISK_BUSES
        .iter()
        .find(|b| node.len() > b.len() && node.as_bytes()[..b.len()].eq_ignore_ascii_case(b.as_bytes()))?;
    let (ctrl, unit) = node[bus.len()..].split_once(':')?;
    if ctrl.is_empty()
        || unit.is_empty()
        || !ctrl.bytes().all(|c| c.is_ascii_digit())
        || !unit.bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    Some((node, &node[..bus.len() + ctrl.len()]))
}

/// The VM's present hard disks, in file order. CD-ROMs and absent devices are not disks.
pub fn disks(vmx: &Dict) -> Vec<DiskEntry> {
    let mut out = Vec::new();
    for (key, value) in vmx.entries() {
        let Some((node, controller)) = disk_node(key) else {
            continue;
        };
        if !vmx.is_true(&format!("{node}.present")) {
            continue;
        }
        // An explicitly absent controller detaches its devices (IDE has no controller key).
        if vmx.get(&format!("{controller}.present")).is_some() && !vmx.is_true(&format!("{controller}.present")) {
            continue;
        }
        let device = vmx.get(&format!("{node}.deviceType")).unwrap_or("disk").to_ascii_lowercase();
        if device.contains("cdrom")
            || device.contains("atapi")
            || (device == "disk" && !value.to_ascii_lowercase().ends_with(".vmdk"))
        {
            continue;
        }
        if out.iter().any(|d: &DiskEntry| d.node.eq_ignore_ascii_case(node)) {
            continue;
        }
        out.push(DiskEntry { node: node.to_string(), file_name: value.to_string() });
    }
    out
}

/// True for a key that ties a VM to its identity or to the base's own files: a leaf drops it,
/// and VMware gives the leaf its own. Decided key by key:
///
/// - kept: `guestinfo.*` (user data, such as cloud-init's; a leaf then boots with the base's
///   cloud-init instance-id), `numa.autosize.cookie` (a cache of the NUMA sizing for this vCPU
///   count, not an identity), `guestInfo.detailed.data` (what the guest reported of its OS);
/// - renewed by [`leaf_vmx`]: `vm.createDate`, static `ethernetN.address`, `displayName`,
///   `nvram`, `extendedConfigFile`, `vmxstats.filename`;
/// - dropped: the keys below.
pub fn is_identity_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    let indexed = |prefix: &str, field: &str| {
        k.strip_prefix(prefix)
            .and_then(|rest| rest.split_once('.'))
            .is_some_and(|(n, f)| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) && f == field)
    };
    // The VM's UUIDs: `uuid.action = "create"` makes VMware generate new ones.
    matches!(k.as_str(), "uuid.bios" | "uuid.location" | "vc.uuid")
        // The VMCI context id, derived from uuid.bios: VMware derives the leaf's.
        || k == "vmci0.id"
        // The base's own swap file and migration log, not files of the leaf.
        || k == "sched.swap.derivedname"
        || k == "migrate.hostlog"
        // The generation id Windows reads to notice it was cloned: a leaf is a clone.
        || k.starts_with("vm.genid")
        // The base's suspend file (and `.readOnly`, how to resume it): a leaf has none.
        || k == "checkpoint.vmstate"
        || k.starts_with("checkpoint.vmstate.")
        // Generated MACs and SAS addresses, derived from uuid.bios: they must differ per VM.
        || indexed("ethernet", "generatedaddress")
        || indexed("ethernet", "generatedaddressoffset")
        || indexed("scsi", "saswwid")
        // The NVMe subsystem name the guest sees, unique per VM; VMware makes one when missing.
        || indexed("nvme", "subnqnuuid")
        // The virtual TPM's endorsement key and certificate: the base's TPM identity (only in
        // encrypted VMs, which Make Base refuses; never carried into a leaf).
        || k.starts_with("vtpm.")
}

/// A random locally unique static MAC in VMware's manual range 00:50:56:00:00:00–00:50:56:3F:FF:FF.
fn random_static_mac() -> String {
    let b = uuid::Uuid::new_v4().into_bytes();
    format!("00:50:56:{:02x}:{:02x}:{:02x}", b[0] & 0x3f, b[1], b[2])
}

/// The leaf's `.vmx`, made from the base's: its own name and files, its disks the deltas
/// (`(node, delta file)`), and no identity, so VMware gives it a fresh one.
pub fn leaf_vmx(base: &Dict, leaf_name: &str, deltas: &[(String, String)]) -> Dict {
    let mut vmx = base.clone();
    vmx.to_utf8();
    vmx.remove_where(is_identity_key);
    vmx.set("uuid.action", "create");
    vmx.set("displayName", leaf_name);
    vmx.set("nvram", &format!("{leaf_name}.nvram"));
    vmx.set("extendedConfigFile", &format!("{leaf_name}.vmxf"));
    vmx.set("vmxstats.filename", &format!("{leaf_name}.scoreboard"));
    // When the VM was made (ESXi writes it, in microseconds): the leaf is made now.
    if vmx.get("vm.createDate").is_some() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
        vmx.set("vm.createDate", &now.to_string());
    }
    // A static MAC would clash with the base's other leaves: give each leaf its own.
    let statics: Vec<String> = vmx
        .entries()
        .filter_map(|(k, v)| {
            let n = k.to_ascii_lowercase().strip_prefix("ethernet")?.strip_suffix(".addresstype")?.to_string();
            v.eq_ignore_ascii_case("static").then_some(n)
        })
        .collect();
    for n in statics {
        if vmx.get(&format!("ethernet{n}.address")).is_some() {
            vmx.set(&format!("ethernet{n}.address"), &random_static_mac());
        }
    }
    for (node, delta) in deltas {
        vmx.set(&format!("{node}.fileName"), delta);
    }
    vmx
}

/// Microseconds since 1970 split as VMware writes them: high half, and low half as signed 32-bit.
pub fn vmsd_time(t: SystemTime) -> (u32, i32) {
    let us = t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    ((us >> 32) as u32, (us & 0xffff_ffff) as u32 as i32)
}

/// The snapshot description leafd writes; VMware shows it in the snapshot manager.
pub const SNAPSHOT_DESCRIPTION: &str = "Don't delete! This snapshot is the link to the shared base disk made by leafd. \
Deleting it would merge this VM's changes into the base, which every other linked clone of the base still uses.";

/// What the leaf's `.vmsd` describes.
pub struct Snapshot<'a> {
    /// The leaf's name, which its snapshot files take.
    pub leaf_name: &'a str,
    /// `(node, parent copy file)`: the disks as they were at the snapshot.
    pub disks: &'a [(String, String)],
    /// The leaf's own disks (the deltas): deleting the leaf deletes only these.
    pub own_disks: &'a [String],
    /// The `.vmx` the leaf was cloned from.
    pub clone_of: &'a str,
    /// When the snapshot was taken.
    pub created: SystemTime,
}

/// The `.vmsd` of a powered-off VM with one snapshot, "Base".
pub fn leaf_vmsd(s: &Snapshot) -> Dict {
    let mut d = Dict::new();
    let (high, low) = vmsd_time(s.created);
    d.set("snapshot.lastUID", "1");
    d.set("snapshot.current", "1");
    d.set("snapshot0.uid", "1");
    d.set("snapshot0.filename", &format!("{}-Snapshot1.vmsn", s.leaf_name));
    d.set("snapshot0.displayName", "Base");
    d.set("snapshot0.description", SNAPSHOT_DESCRIPTION);
    d.set("snapshot0.createTimeHigh", &high.to_string());
    d.set("snapshot0.createTimeLow", &low.to_string());
    d.set("snapshot0.numDisks", &s.disks.len().to_string());
    for (i, (node, file)) in s.disks.iter().enumerate() {
        d.set(&format!("snapshot0.disk{i}.fileName"), file);
        d.set(&format!("snapshot0.disk{i}.node"), node);
    }
    d.set("snapshot.numSnapshots", "1");
    d.set("cloneOf0", s.clone_of);
    d.set("numCloneOf", "1");
    for (i, f) in s.own_disks.iter().enumerate() {
        d.set(&format!("sentinel{i}"), f);
    }
    d.set("numSentinels", &s.own_disks.len().to_string());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmx(text: &str) -> Dict {
        Dict::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn finds_disks_not_cdroms() {
        let v = vmx("scsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"a.vmdk\"\n\
             sata0:1.present = \"TRUE\"\nsata0:1.deviceType = \"cdrom-image\"\nsata0:1.fileName = \"x.iso\"\n\
             NVME0:0.present = \"true\"\nnvme0:0.FILENAME = \"b c.vmdk\"\nide1:0.present = \"FALSE\"\nide1:0.fileName = \"d.vmdk\"\n\
             scsi1.present = \"FALSE\"\nscsi1:0.present = \"TRUE\"\nscsi1:0.fileName = \"e.vmdk\"\n");
        let d = disks(&v);
        assert_eq!(
            d,
            vec![
                DiskEntry { node: "scsi0:0".into(), file_name: "a.vmdk".into() },
                DiskEntry { node: "nvme0:0".into(), file_name: "b c.vmdk".into() },
            ]
        );
    }

    #[test]
    fn keys_with_any_characters_are_not_disks() {
        assert!(disks(&vmx("abé0.fileName = \"x\"\nabé0.present = \"TRUE\"\n")).is_empty());
        assert!(disks(&vmx("idé0:0.fileName = \"x.vmdk\"\nidé0:0.present = \"TRUE\"\n")).is_empty());
    }

    #[test]
    fn identity_keys() {
        for k in [
            "uuid.bios",
            "UUID.LOCATION",
            "vc.uuid",
            "ethernet0.generatedAddress",
            "ethernet12.generatedAddressOffset",
            "vm.genid",
            "vm.genidX",
            "checkpoint.vmState",
            "sched.swap.derivedName",
        ] {
            assert!(is_identity_key(k), "{k}");
        }
        for k in ["uuid.action", "ethernet0.address", "ethernetx.generatedAddress", "displayName"] {
            assert!(!is_identity_key(k), "{k}");
        }
    }

    #[test]
    fn leaf_vmx_scrubs_identity_and_points_at_deltas() {
        let base = vmx(
            ".encoding = \"UTF-8\"\ndisplayName = \"Ubuntu\"\nuuid.bios = \"56 4d\"\nethernet0.generatedAddress = \"00:0c:29:aa:bb:cc\"\n\
             ethernet1.addressType = \"static\"\nethernet1.address = \"00:50:56:01:02:03\"\nscsi0:0.fileName = \"Ubuntu.vmdk\"\nnvram = \"Ubuntu.nvram\"\n",
        );
        let leaf = leaf_vmx(&base, "Web Server", &[("scsi0:0".into(), "Ubuntu-000001.vmdk".into())]);
        assert_eq!(leaf.get("displayName"), Some("Web Server"));
        assert_eq!(leaf.get("scsi0:0.fileName"), Some("Ubuntu-000001.vmdk"));
        assert_eq!(leaf.get("uuid.action"), Some("create"));
        assert_eq!(leaf.get("nvram"), Some("Web Server.nvram"));
        assert!(leaf.get("uuid.bios").is_none() && leaf.get("ethernet0.generatedAddress").is_none());
        let mac = leaf.get("ethernet1.address").unwrap();
        assert!(mac.starts_with("00:50:56:") && mac != "00:50:56:01:02:03");
    }

    #[test]
    fn vmsd_time_low_half_is_signed() {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(0x0006_1234_8000_0001);
        assert_eq!(vmsd_time(t), (0x0006_1234, i32::MIN + 1));
    }

    #[test]
    fn vmsd_lists_base_snapshot_and_own_disks() {
        let d = leaf_vmsd(&Snapshot {
            leaf_name: "W",
            disks: &[("scsi0:0".into(), "U.vmdk".into())],
            own_disks: &["U-000001.vmdk".into()],
            clone_of: "/lib/Bases/U/U.vmx.base",
            created: UNIX_EPOCH,
        });
        assert_eq!(d.get("snapshot0.displayName"), Some("Base"));
        assert!(d.get("snapshot0.description").unwrap().starts_with("Don't delete!"));
        assert_eq!(d.get("snapshot0.disk0.fileName"), Some("U.vmdk"));
        assert_eq!(d.get("sentinel0"), Some("U-000001.vmdk"));
        assert_eq!(d.get("numSentinels"), Some("1"));
        assert_eq!(Dict::parse(&d.to_bytes()).unwrap(), d);
    }
}
