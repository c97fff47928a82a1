//! The formats crate over VMware-shaped files (tests/fixtures/vmware, issue 14): every code page,
//! line ending, key spelling and disk shape VMware writes. No external reader is needed here;
//! tests/real_files.rs checks the same shapes end to end with QEMU and libvmdk.

#![allow(unused_crate_dependencies)] // every dependency reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use leafd_formats::StdEnv;
use leafd_formats::clone::{PathStyle, parent_copy};
use leafd_formats::descriptor::Descriptor;
use leafd_formats::dict::Dict;
use leafd_formats::disk::Disk;
use leafd_formats::sparse;
use leafd_formats::text::is_windows_absolute;
use leafd_formats::vmx::{self, leaf_vmx};

fn dir(fixture: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/vmware").join(fixture)
}

fn entry(fixture: &str) -> serde_json::Value {
    let all: serde_json::Value = serde_json::from_slice(&std::fs::read(dir("fixtures.json")).unwrap()).unwrap();
    all["fixtures"].as_array().unwrap().iter().find(|f| f["name"] == fixture).unwrap().clone()
}

/// The fixture's one `.vmx`.
fn vmx_file(fixture: &str) -> Vec<u8> {
    let vmx = std::fs::read_dir(dir(fixture))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "vmx"))
        .unwrap();
    std::fs::read(vmx).unwrap()
}

fn vmx(fixture: &str) -> Dict {
    Dict::parse(&vmx_file(fixture)).unwrap_or_else(|e| panic!("{fixture}: {e}"))
}

fn descriptor(fixture: &str, file: &str) -> Descriptor {
    Descriptor::parse_bytes(&std::fs::read(dir(fixture).join(file)).unwrap())
        .unwrap_or_else(|e| panic!("{fixture}: {e}"))
}

/// The bundle name, which every fixture in a code page also gives its VM and files.
fn bundle(fixture: &str) -> String {
    entry(fixture)["bundle"].as_str().unwrap().to_string()
}

const CODE_PAGES: [(&str, &str, &[u8]); 5] = [
    // fixture, label as the files write it, bytes of one character of its name in that code page
    ("enc-windows-1252-ws16", "windows-1252", b"\xfc"), // ü
    ("enc-gbk-ws17", "GBK", b"\xce\xbb"),               // 位
    ("enc-shift_jis-ws17", "Shift_JIS", b"\x83\x5c"),   // ソ, its second byte a backslash
    ("enc-big5-ws16", "Big5", b"\xa5\x5c"),             // 功, the same
    ("enc-windows-949-2000-ws17", "windows-949-2000", b"\xc5\xd7"), // 테
];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn every_vmx_label_vmware_writes_is_decoded() {
    for (fixture, label, char_bytes) in CODE_PAGES {
        let raw = vmx_file(fixture);
        assert!(contains(&raw, format!(".encoding = \"{label}\"").as_bytes()) && contains(&raw, char_bytes));
        let d = vmx(fixture);
        assert_eq!(d.get("displayName"), Some(bundle(fixture).as_str()), "{fixture}");
        // A name is looked for under its bytes in the code page, then under its UTF-8.
        let nvram = d.get("nvram").unwrap();
        let places = d.name(nvram).candidates();
        assert!(contains(places[0].as_os_str().as_bytes(), char_bytes), "{fixture}: {places:?}");
        assert_eq!(places[1], Path::new(&format!("{}.nvram", bundle(fixture))), "{fixture}");
    }
    assert_eq!(vmx("ws17-linux-shebang-utf8").get("displayName"), Some("alma9-开发机"));
    // No .encoding at all, ASCII: read as UTF-8.
    assert_eq!(vmx("ws55-no-encoding-blank-lines").encoding_name(), "UTF-8");
}

#[test]
fn every_descriptor_code_page_decodes_its_extent_names() {
    for (fixture, label, char_bytes) in CODE_PAGES {
        let name = bundle(fixture);
        let d = descriptor(fixture, &format!("{name}.vmdk"));
        assert_eq!(d.header("encoding"), Some(label));
        let first = d.extents().next().unwrap().file.clone().unwrap();
        // The bytes as the file holds them (what QEMU opens), and their text.
        assert!(contains(first.as_os_str().as_bytes(), char_bytes), "{fixture}");
        assert_eq!(d.name(&first).text, format!("{name}-s001.vmdk"), "{fixture}");
        assert_eq!(d.to_bytes(), std::fs::read(dir(fixture).join(format!("{name}.vmdk"))).unwrap());
    }
    // Older files name the code page only in the DDB.
    let d = descriptor("disk-ddb-encoding-only", "Entwicklung Büro.vmdk");
    assert!(d.header("encoding").is_none() && d.ddb("ddb.encoding") == Some("windows-1252"));
    let first = d.extents().next().unwrap().file.clone().unwrap();
    assert_eq!(first.as_os_str().as_bytes(), b"Entwicklung B\xfcro-s001.vmdk");
    assert_eq!(d.name(&first).text, "Entwicklung Büro-s001.vmdk");
}

/// `bytes` with `from` replaced by `to` once.
fn edited(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let i = bytes.windows(from.len()).position(|w| w == from).unwrap();
    [&bytes[..i], to, &bytes[i + from.len()..]].concat()
}

/// The 1-based number of the first line that is not UTF-8 (some GBK happens to be: 位 is CE BB,
/// UTF-8 for λ).
fn first_non_utf8_line(bytes: &[u8]) -> usize {
    1 + bytes.split(|&b| b == b'\n').position(|l| std::str::from_utf8(l).is_err()).unwrap()
}

#[test]
fn an_unknown_label_or_an_undeclared_code_page_is_refused_with_the_line_and_the_fix() {
    let raw = vmx_file("enc-gbk-ws17");
    let e = Dict::parse(&edited(&raw, b"\"GBK\"", b"\"GB-Klingon\"")).unwrap_err();
    assert!(e.line == 1 && e.message.contains("GB-Klingon") && e.fix.as_deref().unwrap().contains("UTF-8"), "{e:?}");
    let undeclared = edited(&raw, b".encoding = \"GBK\"\r\n", b"");
    let e = Dict::parse(&undeclared).unwrap_err();
    assert_eq!(e.line, first_non_utf8_line(&undeclared), "{e:?}");
    assert!(e.fix.as_deref().unwrap().contains(".encoding = "), "{e:?}");

    // (GBK's 位 happens to be valid UTF-8; Big5's 功, A5 5C, is not.)
    let raw = std::fs::read(dir("enc-big5-ws16").join(format!("{}.vmdk", bundle("enc-big5-ws16")))).unwrap();
    let e = Descriptor::parse_bytes(&edited(&raw, b"\"Big5\"", b"\"Klingon\"")).unwrap_err();
    assert!(e.line == 3 && e.message.contains("Klingon") && e.fix.is_some(), "{e:?}");
    let undeclared = edited(&raw, b"encoding=\"Big5\"\n", b"");
    let e = Descriptor::parse_bytes(&undeclared).unwrap_err();
    assert_eq!(e.line, first_non_utf8_line(&undeclared), "{e:?}");
    assert!(e.fix.as_deref().unwrap().contains("encoding="), "{e:?}");
    // Declared UTF-8, written in GBK: not read as something else either.
    let mislabelled = edited(&raw, b"\"Big5\"", b"\"UTF-8\"");
    assert!(Descriptor::parse_bytes(&mislabelled).unwrap_err().line > 0);
}

#[test]
fn backslashes_separate_folders_only_in_files_made_on_windows() {
    let windows = vmx("ws17-windows-subfolder-backslash");
    assert!(windows.windows_made());
    let disk = windows.get("nvme0:0.fileName").unwrap();
    assert_eq!(disk, "Disks\\Dev Box.vmdk");
    assert_eq!(windows.name(disk).candidates(), vec![PathBuf::from("Disks/Dev Box.vmdk")]);
    let linux = vmx("ws17-linux-disks-subfolder");
    assert!(!linux.windows_made());
    assert_eq!(linux.name("a\\b.vmdk").candidates(), vec![PathBuf::from("a\\b.vmdk")]);
    // Shift_JIS ソ is 83 5C: in a Windows-made file its second byte still is no separator.
    let sjis = vmx("enc-shift_jis-ws17");
    assert!(sjis.windows_made());
    let places = sjis.name(sjis.get("nvram").unwrap()).candidates();
    assert!(contains(places[0].as_os_str().as_bytes(), b"\x83\x5c"), "{places:?}");
    // A linked clone's parent named by a drive letter is a path on the Windows machine.
    let clone = descriptor("vagrant-linked-clone-windows", "disk-cl1.vmdk");
    let parent = clone.parent_name().unwrap();
    assert!(is_windows_absolute(&parent.text) && parent.text.ends_with("\\disk.vmdk"), "{}", parent.text);
}

#[test]
fn cdroms_and_absent_devices_are_not_disks() {
    for fixture in [
        "ws17-22-disks-scsi-sata-nvme",
        "esxi70-21-disks",
        "esxi67-nvme-no-final-newline",
        "esxi80-identity-keys",
        "appliance-nvram-plain",
        "packer-vagrant-lowercase",
        "ws55-no-encoding-blank-lines",
    ] {
        let found: Vec<(String, String)> =
            vmx::disks(&vmx(fixture)).into_iter().map(|d| (d.node.to_ascii_lowercase(), d.file_name)).collect();
        let want: Vec<(String, String)> = entry(fixture)["disks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["key"].as_str().unwrap().to_string(), d["descriptor"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(found, want, "{fixture}");
    }
    assert_eq!(vmx::disks(&vmx("ws17-22-disks-scsi-sata-nvme")).len(), 22);
    assert_eq!(vmx::disks(&vmx("esxi70-21-disks")).len(), 21);
}

/// The lines of `bytes` with their endings.
fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split_inclusive(|&b| b == b'\n').collect()
}

fn leaf_of(fixture: &str) -> (Dict, Vec<u8>) {
    let base = vmx(fixture);
    let node = vmx::disks(&base)[0].node.clone();
    let leaf = leaf_vmx(&base, "Web Server", &[(node, "Web-000001.vmdk".into())]);
    let bytes = leaf.to_bytes();
    (Dict::parse(&bytes).unwrap(), bytes)
}

#[test]
fn a_leafs_vmx_keeps_line_endings_shebang_and_a_missing_final_newline() {
    for fixture in ["ws17-windows-crlf", "ovf-import-windows-crlf", "enc-gbk-ws17", "ws55-no-encoding-blank-lines"] {
        let (_, bytes) = leaf_of(fixture);
        assert!(lines(&bytes).iter().all(|l| l.ends_with(b"\r\n")), "{fixture}: a line without CRLF");
    }
    // Notepad left the CRLF file without a final newline; ESXi its LF file.
    for (fixture, last_key) in [
        ("ws16-windows-notepad-no-final-newline", "mainMem.useNamedFile"),
        ("esxi67-nvme-no-final-newline", "tools.syncTime"),
    ] {
        let base = vmx(fixture);
        assert!(!vmx_file(fixture).ends_with(b"\n") && base.get(last_key).is_some());
        let (leaf, bytes) = leaf_of(fixture);
        assert!(!bytes.ends_with(b"\n"), "{fixture}: the leaf's .vmx gained a final newline");
        let crlf = vmx_file(fixture).ends_with(b"\"") && vmx_file(fixture).contains(&b'\r');
        let ls = lines(&bytes);
        assert!(ls[..ls.len() - 1].iter().all(|l| l.ends_with(b"\r\n") == crlf), "{fixture}: mixed line endings");
        assert_eq!(leaf.get(last_key), base.get(last_key), "{fixture}");
    }
    for fixture in ["ws17-linux-shebang-utf8", "ws55-no-encoding-blank-lines"] {
        let (_, bytes) = leaf_of(fixture);
        let ls = lines(&bytes);
        assert!(ls[0].starts_with(b"#!/usr/bin/vmware"), "{fixture}");
        assert!(ls[1].starts_with(b".encoding = \"UTF-8\""), "{fixture}: {:?}", String::from_utf8_lossy(ls[1]));
    }
}

#[test]
fn keys_are_set_in_place_whatever_their_case() {
    let base = vmx("packer-vagrant-lowercase");
    let (leaf, _) = leaf_of("packer-vagrant-lowercase");
    let position = |d: &Dict, key: &str| d.entries().position(|(k, _)| k == key);
    for (key, value) in
        [("displayname", "Web Server"), ("nvram", "Web Server.nvram"), ("extendedconfigfile", "Web Server.vmxf")]
    {
        let spellings: Vec<&str> = leaf.entries().map(|(k, _)| k).filter(|k| k.eq_ignore_ascii_case(key)).collect();
        assert_eq!(spellings, [key], "one spelling of {key}, the file's own");
        assert_eq!(leaf.get(key), Some(value));
        // In its place, not moved to the end (the leaf drops keys only after it).
        let before =
            base.entries().take(position(&base, key).unwrap()).filter(|(k, _)| !vmx::is_identity_key(k)).count();
        assert_eq!(position(&leaf, key), Some(before), "{key}");
    }
    // An OVF import mixes cases; uuid.action is already "create".
    let (leaf, _) = leaf_of("ovf-import-windows-crlf");
    assert_eq!(leaf.entries().filter(|(k, _)| k.eq_ignore_ascii_case("uuid.action")).count(), 1);
    assert!(leaf.get("migrate.hostLog").is_none() && leaf.get("vm.genidX").is_none());
    assert_eq!(leaf.get("cleanShutdown"), vmx("ovf-import-windows-crlf").get("cleanshutdown"));
}

#[test]
fn identity_keys_of_an_esxi_vm_are_dropped_renewed_or_kept() {
    let base = vmx("esxi80-identity-keys");
    let (leaf, _) = leaf_of("esxi80-identity-keys");
    let identity = entry("esxi80-identity-keys")["identity"].clone();
    for (key, value) in identity.as_object().unwrap() {
        assert_eq!(base.get(key), value.as_str(), "the fixture's {key}");
    }
    for key in [
        "uuid.bios",
        "uuid.location",
        "vmci0.id",
        "scsi0.sasWWID",
        "scsi1.sasWWID",
        "nvme0.subnqnUUID",
        "migrate.hostLog",
        "vm.genid",
        "vm.genidX",
        "ethernet0.generatedAddress",
        "ethernet0.generatedAddressOffset",
        "sched.swap.derivedName",
    ] {
        assert!(base.get(key).is_some() && leaf.get(key).is_none(), "{key} is the base's identity");
    }
    let mac = leaf.get("ethernet1.address").unwrap();
    assert!(mac.starts_with("00:50:56:") && u8::from_str_radix(&mac[9..11], 16).unwrap() <= 0x3f);
    assert_ne!(mac, base.get("ethernet1.address").unwrap());
    let created = |d: &Dict| d.get("vm.createDate").unwrap().parse::<u64>().unwrap();
    assert!(created(&leaf) > created(&base), "the leaf is made now");
    assert_eq!(leaf.get("vmxstats.filename"), Some("Web Server.scoreboard"));
    assert_eq!(leaf.get("uuid.action"), Some("create"));
    // User data and caches stay.
    for key in [
        "guestinfo.metadata",
        "guestinfo.metadata.encoding",
        "guestinfo.userdata",
        "guestinfo.ci.runner.labels",
        "guestInfo.detailed.data",
        "numa.autosize.cookie",
        "migrate.encryptionMode",
    ] {
        assert_eq!(leaf.get(key), base.get(key), "{key}");
    }
    // checkpoint.vmState.readOnly goes with checkpoint.vmState: the leaf has no suspend file.
    let (leaf, _) = leaf_of("ws55-no-encoding-blank-lines");
    assert!(leaf.get("checkpoint.vmState").is_none() && leaf.get("checkpoint.vmState.readOnly").is_none());
    assert!(vmx::is_identity_key("vtpm.ekCRT") && !vmx::is_identity_key("numa.autosize.cookie"));
}

#[test]
fn lines_added_to_a_crlf_vmsd_are_crlf() {
    let mut vmsd = Dict::parse(
        &std::fs::read(dir("vagrant-linked-clone-windows").join("packer-ubuntu-22.04-amd64.vmsd")).unwrap(),
    )
    .unwrap();
    vmsd.set("cloneOf0", "/Users/sam/Virtual Machines/Bases/Box/box.vmx.base");
    vmsd.set("snapshot0.description", "added");
    let bytes = vmsd.to_bytes();
    assert!(lines(&bytes).iter().all(|l| l.ends_with(b"\r\n")), "{}", String::from_utf8_lossy(&bytes));
}

#[test]
fn vmsd_shapes_are_read() {
    let empty = Dict::parse(&std::fs::read(dir("ws17-windows-crlf").join("Windows 10 x64.vmsd")).unwrap()).unwrap();
    assert_eq!(empty.entries().count(), 0);
    let mru =
        Dict::parse(&std::fs::read(dir("ws17-snapshots-deleted-mru").join("Win10 Build Agent.vmsd")).unwrap()).unwrap();
    assert_eq!((mru.get("snapshot.numSnapshots"), mru.get("snapshot.mru1.uid")), (Some("0"), Some("1")));
    let three = Dict::parse(&std::fs::read(dir("ws17-three-snapshots").join("Ubuntu 24.04.vmsd")).unwrap()).unwrap();
    assert_eq!((three.get("snapshot2.parent"), three.get("snapshot1.parent")), (Some("2"), Some("1")));
}

#[test]
fn descriptors_of_every_shape_parse_with_their_capacity() {
    for fixture in [
        "disk-grown-split-sparse",
        "disk-p2v-odd-extent",
        "disk-ws65-no-isnativesnapshot",
        "disk-ddb-encoding-only",
        "disk-trailing-spaces",
        "disk-monolithic-flat",
        "disk-twogb-flat",
        "disk-esxi-vmfs-thin",
        "disk-esxi-vmfssparse-delta",
        "disk-esxi-sesparse-delta",
        "disk-esxi-rdm",
        "disk-monolithic-sparse-embedded",
        "disk-stream-optimized",
    ] {
        for disk in entry(fixture)["disks"].as_array().unwrap() {
            let file = disk["descriptor"].as_str().unwrap();
            let embedded = dir(fixture).join("_embedded").join(format!("{file}.descriptor.txt"));
            let path = if embedded.exists() { embedded } else { dir(fixture).join(file) };
            let d =
                Descriptor::parse_bytes(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{fixture}: {e}"));
            assert_eq!(d.create_type(), disk["createType"].as_str().unwrap(), "{fixture}");
            assert_eq!(d.capacity(), disk["capacity_sectors"].as_u64().unwrap(), "{fixture}");
            assert!(d.cid().is_ok(), "{fixture}");
        }
    }
    // Two trailing spaces after every value.
    let d = descriptor("disk-trailing-spaces", "fileserver.vmdk");
    assert_eq!(d.cid().unwrap(), 0x2096_6631);
    assert_eq!(d.extents().next().unwrap().file.as_deref(), Some(Path::new("fileserver-flat.vmdk")));
    assert_eq!(d.extents().next().unwrap().offset, Some(0));
    // The grown disk's short extent in the middle.
    let sizes: Vec<u64> =
        descriptor("disk-grown-split-sparse", "Ubuntu Server.vmdk").extents().map(|e| e.sectors).collect();
    assert_eq!((sizes.len(), sizes[15], sizes[16]), (32, 983_040, 8_323_072));
}

#[test]
fn edits_keep_a_descriptors_line_ending_and_its_sorted_ddb() {
    let mut d = descriptor("ws17-windows-crlf", "Windows 10 x64.vmdk");
    d.remove_ddb("ddb.uuid");
    d.set_ddb("ddb.deletable", "false");
    let bytes = d.to_bytes();
    assert!(lines(&bytes).iter().all(|l| l.ends_with(b"\r\n")));
    let keys: Vec<&str> = d.ddb_entries().map(|(k, _)| k).collect();
    assert_eq!(&keys[..2], ["ddb.adapterType", "ddb.deletable"], "inserted where it sorts");
    // An old unsorted DDB gets it at the end.
    let mut d = descriptor("disk-ws65-no-isnativesnapshot", "Fedora 10.vmdk");
    d.set_ddb("ddb.deletable", "false");
    assert_eq!(d.ddb_entries().last().map(|(k, _)| k), Some("ddb.deletable"));
}

/// Copies a split-sparse fixture's descriptor into `into` and creates its extents, under their
/// bytes in the code page (`legacy`) or under their UTF-8 names.
fn split_disk(fixture: &str, descriptor_name: &str, into: &Path, legacy: bool) -> PathBuf {
    std::fs::create_dir_all(into).unwrap();
    let path = into.join(descriptor_name);
    std::fs::copy(dir(fixture).join(descriptor_name), &path).unwrap();
    let d = descriptor(fixture, descriptor_name);
    let env = StdEnv::shared();
    for e in d.extents() {
        let raw = e.file.clone().unwrap();
        let name = if legacy { raw } else { PathBuf::from(d.name(&raw).text) };
        drop(sparse::create_empty(&env, &into.join(name), e.sectors, None).unwrap());
    }
    path
}

#[test]
fn a_parent_copy_keeps_the_code_page_unless_its_paths_need_utf8() {
    let tmp = tempfile::tempdir().unwrap();
    let env = StdEnv::shared();
    let name = bundle("enc-big5-ws16");
    let descriptor_name = format!("{name}.vmdk");
    // Extents named by their Big5 bytes, reached from an ASCII folder: the copy stays Big5,
    // its bytes those of the names on disk.
    let legacy = split_disk("enc-big5-ws16", &descriptor_name, &tmp.path().join("Bases/Test"), true);
    let base = Disk::open(&env, &legacy).unwrap();
    let copy = parent_copy(&base, &tmp.path().join("Leaf.vmwarevm"), PathStyle::Relative).unwrap();
    assert_eq!(copy.encoding_name(), "Big5");
    assert_eq!(copy.header("encoding"), Some("Big5"));
    let first = copy.extents().next().unwrap().file.clone().unwrap();
    assert_eq!(
        first.as_os_str().as_bytes(),
        [b"../Bases/Test/", base.extent_files()[0].file_name().unwrap().as_bytes()].concat()
    );
    assert!(contains(&copy.to_bytes(), b"\xa5\x5c"));
    // The same in a base folder named in UTF-8: no one encoding names both.
    let mixed = split_disk("enc-big5-ws16", &descriptor_name, &tmp.path().join("Bases/功能"), true);
    let e = parent_copy(&Disk::open(&env, &mixed).unwrap(), &tmp.path().join("Leaf.vmwarevm"), PathStyle::Relative)
        .unwrap_err();
    assert!(e.message.contains("two encodings") && e.fix.is_some(), "{e}");
    // Extents with UTF-8 names (copied from Windows, or on a Mac): found under those, and the
    // copy is UTF-8 and says so.
    let unicode = split_disk("enc-big5-ws16", &descriptor_name, &tmp.path().join("Bases/功能 2"), false);
    let base = Disk::open(&env, &unicode).unwrap();
    assert!(base.extent_files()[0].to_str().unwrap().ends_with(&format!("{name}-s001.vmdk")));
    let copy = parent_copy(&base, &tmp.path().join("Leaf.vmwarevm"), PathStyle::Relative).unwrap();
    assert_eq!((copy.encoding_name(), copy.header("encoding")), ("UTF-8", Some("UTF-8")));
    let text = String::from_utf8(copy.to_bytes()).unwrap();
    assert!(text.contains(&format!("RW 8323072 SPARSE \"../Bases/功能 2/{name}-s001.vmdk\"")), "{text}");
    assert_eq!(copy.ddb("ddb.deletable"), Some("false"));
}

/// An empty extent as FORMATS.md §2 describes the files VMware writes, built here from the table
/// alone: header, both directories with every entry of their last sector filled, tables zero.
fn vmware_empty_extent(capacity: u64) -> Vec<u8> {
    let ngt = capacity.div_ceil(65536);
    let gd_sect = (ngt * 4).div_ceil(512);
    let (rgd, gd) = (1u64, 1 + gd_sect + 4 * ngt);
    let overhead = (gd + gd_sect + 4 * ngt).next_multiple_of(128);
    let mut b = vec![0u8; overhead as usize * 512];
    let header: [(usize, &[u8]); 11] = [
        (0, b"KDMV"),
        (4, &1u32.to_le_bytes()),
        (8, &3u32.to_le_bytes()),
        (12, &capacity.to_le_bytes()),
        (20, &128u64.to_le_bytes()),
        (44, &512u32.to_le_bytes()),
        (48, &rgd.to_le_bytes()),
        (56, &gd.to_le_bytes()),
        (64, &overhead.to_le_bytes()),
        (73, b"\n \r\n"),
        (77, &0u16.to_le_bytes()),
    ];
    for (at, bytes) in header {
        b[at..at + bytes.len()].copy_from_slice(bytes);
    }
    for dir in [rgd, gd] {
        for i in 0..gd_sect * 128 {
            let at = (dir * 512 + i * 4) as usize;
            b[at..at + 4].copy_from_slice(&((dir + gd_sect + 4 * i) as u32).to_le_bytes());
        }
    }
    b
}

#[test]
fn empty_extents_are_written_byte_for_byte_as_vmware_writes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let env = StdEnv::shared();
    // The short extent of a grown disk, a full split extent, and the odd one of a P2V disk.
    for capacity in [983_040u64, 8_323_072, 210_672] {
        let path = tmp.path().join(format!("{capacity}.vmdk"));
        drop(sparse::create_empty(&env, &path, capacity, None).unwrap());
        let ours = std::fs::read(&path).unwrap();
        assert!(ours == vmware_empty_extent(capacity), "{capacity} sectors: not as VMware writes it");
    }
    // FORMATS.md's example: RGD entries 15 to 127 continue 62, 66, ... 510.
    let ours = std::fs::read(tmp.path().join("983040.vmdk")).unwrap();
    let rgd: Vec<u32> = ours[512..1024].chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!((rgd[14], rgd[15], rgd[16], rgd[127]), (58, 62, 66, 510));
}
