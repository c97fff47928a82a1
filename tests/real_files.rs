//! leafd against VMware-shaped files (tests/fixtures/vmware): every encoding, line ending and
//! disk shape VMware writes (issue 14). Each fixture folder is copied into a temp dir and the
//! extents and other binary files its `fixtures.json` entry lists are generated there.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use common::*;
use leafd_formats::descriptor::Descriptor;
use leafd_formats::dict::Dict;
use leafd_formats::disk::Disk;
use leafd_formats::sparse;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vmware")
}

/// The fixture's entry in fixtures.json.
fn entry(name: &str) -> serde_json::Value {
    let all: serde_json::Value =
        serde_json::from_slice(&fs::read(fixtures_dir().join("fixtures.json")).unwrap()).unwrap();
    all["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
        .clone()
}

/// How generated files whose fixture is in a legacy code page are named.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Names {
    /// UTF-8, as after a copy from Windows or on a Mac (MANIFEST.md, Conventions).
    Unicode,
    /// The code page's bytes, as the descriptor holds them: what QEMU and libvmdk look for.
    Legacy,
}

/// `name` in the fixture's code page, by Python's codec (an independent encoder).
fn legacy_bytes(name: &str, codec: &str) -> Vec<u8> {
    let o = run_tool(
        SYSTEM_PYTHON,
        &["-c", "import sys; sys.stdout.buffer.write(sys.argv[1].encode(sys.argv[2]))", name, codec],
    );
    assert!(o.status.success(), "{}", text(&o));
    o.stdout
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if e.file_name() == "_embedded" {
            continue;
        }
        if p.is_dir() {
            copy_tree(&p, &to.join(e.file_name()));
        } else {
            fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// Copies fixture `name` into `into` under its bundle name and creates its binary files.
/// Returns the bundle (for `disk-*` fixtures, the folder holding the descriptors).
fn materialize(name: &str, into: &Path, names: Names) -> PathBuf {
    let f = entry(name);
    let bundle = into.join(f["bundle"].as_str().unwrap_or(name));
    copy_tree(&fixtures_dir().join(name), &bundle);
    let env = env();
    for g in f["generate"].as_array().unwrap() {
        let rel = g["path"].as_str().unwrap();
        let rel_bytes = match (names, f["python_codec"].as_str()) {
            (Names::Legacy, Some(codec)) => legacy_bytes(rel, codec),
            _ => rel.as_bytes().to_vec(),
        };
        let path = bundle.join(std::ffi::OsStr::from_bytes(&rel_bytes));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let sectors = g["sectors"].as_u64().unwrap_or(0);
        let bytes = g["bytes"].as_u64().unwrap_or(0);
        let embedded = || {
            let t = fixtures_dir().join(name).join(g["embedded_descriptor"].as_str().unwrap());
            String::from_utf8(fs::read(t).unwrap()).unwrap()
        };
        match g["kind"].as_str().unwrap() {
            "sparse-extent" => drop(sparse::create_empty(&env, &path, sectors, None).unwrap()),
            "monolithic-sparse" => drop(sparse::create_empty(&env, &path, sectors, Some(&embedded())).unwrap()),
            "stream-optimized" => fs::write(&path, stream_optimized(sectors, &embedded())).unwrap(),
            "flat" | "opaque-sparse" => {
                fs::File::create(&path).unwrap().set_len(if sectors > 0 { sectors * 512 } else { bytes }).unwrap()
            }
            "cowd" => fs::write(&path, cowd_header(sectors)).unwrap(),
            "sesparse" => fs::write(&path, 0xcafe_babe_u64.to_le_bytes().repeat(64)).unwrap(),
            "rdm-mapping" | "opaque" => fs::write(&path, vec![0x5a; bytes.max(512) as usize]).unwrap(),
            k => panic!("unknown kind {k}"),
        }
    }
    if let Some(modes) = f["mode"].as_object() {
        use std::os::unix::fs::PermissionsExt;
        for (file, mode) in modes {
            let mode = u32::from_str_radix(mode.as_str().unwrap(), 8).unwrap();
            fs::set_permissions(bundle.join(file), fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    bundle
}

/// A streamOptimized file as ovftool writes it: KDMV version 3, compressed, markers, the grain
/// directory at the end, the descriptor at sector 1.
fn stream_optimized(sectors: u64, descriptor: &str) -> Vec<u8> {
    let mut b = vec![0u8; 128 * 512];
    b[0..4].copy_from_slice(b"KDMV");
    b[4..8].copy_from_slice(&3u32.to_le_bytes());
    b[8..12].copy_from_slice(&0x30001u32.to_le_bytes());
    b[12..20].copy_from_slice(&sectors.to_le_bytes());
    b[20..28].copy_from_slice(&128u64.to_le_bytes());
    b[28..36].copy_from_slice(&1u64.to_le_bytes());
    b[36..44].copy_from_slice(&20u64.to_le_bytes());
    b[44..48].copy_from_slice(&512u32.to_le_bytes());
    b[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
    b[64..72].copy_from_slice(&128u64.to_le_bytes());
    b[73..77].copy_from_slice(b"\n \r\n");
    b[77..79].copy_from_slice(&1u16.to_le_bytes());
    b[512..512 + descriptor.len()].copy_from_slice(descriptor.as_bytes());
    b
}

/// The 2,048-byte header of an ESX sparse (COWD) file (MANIFEST.md).
fn cowd_header(sectors: u64) -> Vec<u8> {
    let mut b = vec![0u8; 2048];
    b[0..4].copy_from_slice(b"COWD");
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    b[8..12].copy_from_slice(&3u32.to_le_bytes());
    b[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
    b[16..20].copy_from_slice(&1u32.to_le_bytes());
    b[20..24].copy_from_slice(&4u32.to_le_bytes());
    b[24..28].copy_from_slice(&(sectors.div_ceil(4096) as u32).to_le_bytes());
    b
}

/// A fixture made a base and a leaf "Leaf" of it, through the binary.
struct Served {
    lib: Lib,
    base: PathBuf,
    leaf: PathBuf,
}

/// Makes a base of fixture `name` (named `as_name`, else as the bundle) and a leaf of it.
fn serve(name: &str, names: Names, as_name: Option<&str>) -> Served {
    let lib = Lib::new();
    let bundle = materialize(name, &lib.make_base_dir(), names);
    serve_bundle(lib, &bundle, as_name)
}

fn serve_bundle(lib: Lib, bundle: &Path, as_name: Option<&str>) -> Served {
    let mut args = vec!["make-base", bundle.to_str().unwrap()];
    args.extend(as_name.iter().flat_map(|n| ["--name", n]));
    lib.ok(&args);
    let base_name = as_name.map_or_else(|| leafd::testing::default_name(bundle), str::to_string);
    lib.ok(&["new-leaf", &base_name, "Leaf"]);
    let (base, leaf) = (lib.base_dir(&base_name), lib.leaf_dir("Leaf"));
    Served { lib, base, leaf }
}

/// The leaf's disks as its record lists them: (delta, parent copy).
fn leaf_disks(leaf: &Path) -> Vec<(PathBuf, PathBuf)> {
    let r = record(leaf, "leaf");
    r["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (leaf.join(d["delta"].as_str().unwrap()), leaf.join(d["parent_copy"].as_str().unwrap())))
        .collect()
}

/// Every chain of the leaf as QEMU reads it: two disks deep, the base's capacity, zeros at the
/// end (nothing was written there), and `qemu-img check` clean; with `libvmdk`, libvmdk too.
fn check_leaf_chains(s: &Served, libvmdk: bool) {
    let base = record(&s.base, "base");
    for ((delta, copy), d) in leaf_disks(&s.leaf).iter().zip(base["disks"].as_array().unwrap()) {
        let bytes = d["capacity"].as_u64().unwrap() * 512;
        let chain = qemu_chain(delta);
        assert_eq!(chain.len(), 2, "{}", delta.display());
        assert_eq!(chain[0]["virtual-size"].as_u64(), Some(bytes), "{}", delta.display());
        qemu_read_pattern(delta, bytes - 4096, 4096, 0).unwrap();
        qemu_check(delta);
        if libvmdk {
            let (size, data) = libvmdk_read(delta, copy, bytes - 512, 512);
            assert_eq!((size, data), (bytes, vec![0; 512]), "{}", delta.display());
        }
    }
}

/// Every path under `dir` with its mode, length and modification time, and the content of the
/// small files (the disks here are tens of GiB of holes).
fn shape(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    walk(dir)
        .into_iter()
        .map(|p| {
            let m = p.symlink_metadata().unwrap();
            let small = m.is_file() && m.len() < 1 << 20;
            let sum = if small { blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string() } else { String::new() };
            format!("{} {:o} {} {} {sum}", p.display(), m.mode(), m.len(), m.mtime_nsec())
        })
        .collect()
}

/// libvmdk reading `child` over `parent` ([`libvmdk_chain`], its files given as they are named on
/// disk, in whatever bytes: Python takes them from its arguments as it got them).
fn libvmdk_read(child: &Path, parent: &Path, offset: u64, len: u64) -> (u64, Vec<u8>) {
    let files = |p: &Path| Disk::open_alone(&env(), p).unwrap().extent_files();
    let script = r#"
import pyvmdk, sys
args = sys.argv[1:]
offset, length, split = int(args[0]), int(args[1]), args.index("--")
def opened(path, extents):
    h = pyvmdk.handle()
    h.open(path)
    h.open_extent_data_files_file_objects([open(e, "rb") for e in extents])
    return h
child = opened(args[2], args[3:split])
parent = opened(args[split + 1], args[split + 2:])
child.set_parent(parent)
sys.stdout.write("SIZE %d\n" % child.get_media_size())
sys.stdout.flush()
sys.stdout.buffer.write(child.read_buffer_at_offset(length, offset))
"#;
    let mut c = std::process::Command::new(SYSTEM_PYTHON);
    c.arg("-c").arg(script).arg(offset.to_string()).arg(len.to_string()).arg(child).args(files(child));
    c.arg("--").arg(parent).args(files(parent));
    let o = c.output().unwrap();
    assert!(o.status.success(), "libvmdk refused {}: {}", child.display(), text(&o));
    let nl = o.stdout.iter().position(|&b| b == b'\n').unwrap();
    (std::str::from_utf8(&o.stdout[5..nl]).unwrap().parse().unwrap(), o.stdout[nl + 1..].to_vec())
}

/// Make Base of `bundle` must fail, leaving it as it was; returns what leafd said.
fn refuse(lib: &Lib, bundle: &Path) -> String {
    let before = shape(bundle);
    let o = lib.run(&["make-base", bundle.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(shape(bundle), before, "a refused bundle was changed");
    assert!(
        !lib.root.join("Bases").exists()
            || fs::read_dir(lib.root.join("Bases"))
                .unwrap()
                .all(|e| { e.unwrap().file_name().to_string_lossy().starts_with('.') })
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Checks `said` against the fixture's `reason` (all) and `reason_any` (one).
fn says_why(name: &str, said: &str) {
    let f = entry(name);
    let reasons = f["reason"].as_array().or(f["reason_if_refused"].as_array()).unwrap();
    for r in reasons {
        assert!(said.contains(r.as_str().unwrap()), "{name}: {r} not in: {said}");
    }
    if let Some(any) = f["reason_any"].as_array() {
        assert!(any.iter().any(|r| said.contains(r.as_str().unwrap())), "{name}: none of {any:?} in: {said}");
    }
}

#[test]
fn every_vm_fixture_is_served_or_refused_as_its_manifest_says() {
    let all: serde_json::Value =
        serde_json::from_slice(&fs::read(fixtures_dir().join("fixtures.json")).unwrap()).unwrap();
    for f in all["fixtures"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        if name.starts_with("disk-") {
            continue;
        }
        match f["expect"].as_str().unwrap() {
            "serve" | "serve (flatten)" => {
                let s = serve(name, Names::Unicode, None);
                check_leaf_chains(&s, false);
                let o = s.lib.run(&["verify"]);
                assert!(o.status.success(), "{name}: verify: {}", text(&o));
            }
            // The appliance's disk has CID ffffffff: refused, as MANIFEST recommends.
            "refuse" | "decide" => {
                let lib = Lib::new();
                let bundle = materialize(name, &lib.make_base_dir(), Names::Unicode);
                says_why(name, &refuse(&lib, &bundle));
            }
            e => panic!("{name}: expect {e}"),
        }
    }
}

/// The fixtures in a legacy code page, with the bytes of one character of their names there.
const CODE_PAGES: [(&str, &str, &[u8]); 5] = [
    ("enc-windows-1252-ws16", "windows-1252", b"\xfc"),
    ("enc-gbk-ws17", "GBK", b"\xce\xbb"),
    ("enc-shift_jis-ws17", "Shift_JIS", b"\x83\x5c"),
    ("enc-big5-ws16", "Big5", b"\xa5\x5c"),
    ("enc-windows-949-2000-ws17", "windows-949-2000", b"\xc5\xd7"),
];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn extents_named_by_their_code_pages_bytes_are_served_and_read_by_qemu_and_libvmdk() {
    for (i, (name, label, char_bytes)) in CODE_PAGES.into_iter().enumerate() {
        let base_name = format!("Base {i}");
        let s = serve(name, Names::Legacy, Some(&base_name));
        let (_, copy) = &leaf_disks(&s.leaf)[0];
        let bytes = fs::read(copy).unwrap();
        // The copy keeps the base's code page and the bytes of the names on disk; GBK's 位 (CE
        // BB) is also valid UTF-8, so that copy is written as UTF-8, its bytes the same.
        let kept = if name == "enc-gbk-ws17" { "UTF-8" } else { label };
        assert!(
            contains(&bytes, format!("encoding=\"{kept}\"").as_bytes()),
            "{name}: {}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(contains(&bytes, char_bytes), "{name}");
        // libvmdk does not know the labels Shift_JIS and windows-949-2000 (SOURCES.md).
        check_leaf_chains(&s, !matches!(label, "Shift_JIS" | "windows-949-2000"));
        let vmx = Dict::parse(&fs::read(s.leaf.join("Leaf.vmx")).unwrap()).unwrap();
        assert_eq!((vmx.encoding_name(), vmx.get("displayName")), ("UTF-8", Some("Leaf")));
        // The NVRAM is named in the code page too, and was found.
        assert!(s.leaf.join("Leaf.nvram").is_file(), "{name}");
        // The records keep the extents' names as they are on disk.
        let o = s.lib.run(&["verify", "--deep"]);
        assert!(o.status.success(), "{name}: verify: {}", text(&o));
        // Moved alone and relinked, the copy keeps its code page and bytes.
        let away = s.lib.tmp.path().join("Desktop/Leaf.vmwarevm");
        fs::create_dir_all(away.parent().unwrap()).unwrap();
        fs::rename(&s.leaf, &away).unwrap();
        s.lib.ok(&["relink", away.to_str().unwrap()]);
        let copy = away.join(copy.strip_prefix(&s.leaf).unwrap());
        let bytes = fs::read(&copy).unwrap();
        assert!(contains(&bytes, format!("encoding=\"{kept}\"").as_bytes()) && contains(&bytes, char_bytes), "{name}");
        let delta = away.join(leaf_disks(&away)[0].0.strip_prefix(&away).unwrap());
        assert_eq!(qemu_chain(&delta).len(), 2, "{name}");
    }
    // Extents in a code page inside a base folder named in UTF-8: no descriptor can name both.
    let lib = Lib::new();
    let bundle = materialize("enc-big5-ws16", &lib.make_base_dir(), Names::Legacy);
    let said = refuse(&lib, &bundle);
    assert!(said.contains("two encodings") && said.contains("--name"), "{said}");
    // The disk's own file named in the code page: records and leaves name it by its text, so
    // it must be renamed to its UTF-8 name, which leafd finds too.
    let lib = Lib::new();
    let bundle = materialize("enc-big5-ws16", &lib.make_base_dir(), Names::Legacy);
    let stem = entry("enc-big5-ws16")["bundle"].as_str().unwrap().to_string();
    let legacy = legacy_bytes(&format!("{stem}.vmdk"), "big5");
    fs::rename(bundle.join(format!("{stem}.vmdk")), bundle.join(std::ffi::OsStr::from_bytes(&legacy))).unwrap();
    let said = refuse(&lib, &bundle);
    assert!(said.contains("is not UTF-8") && said.contains(&format!("rename the file to \"{stem}.vmdk\"")), "{said}");
}

#[test]
fn extents_named_in_utf8_after_a_copy_from_windows_are_found_and_their_copies_are_utf8() {
    for (name, _, _) in CODE_PAGES {
        let s = serve(name, Names::Unicode, None);
        let (_, copy) = &leaf_disks(&s.leaf)[0];
        let text = String::from_utf8(fs::read(copy).unwrap()).expect("the copy is UTF-8");
        let bundle = entry(name)["bundle"].as_str().unwrap().to_string();
        assert!(text.contains("encoding=\"UTF-8\""), "{name}: {text}");
        assert!(text.contains(&format!("../Bases/{bundle}/{bundle}-s001.vmdk")), "{name}: {text}");
        check_leaf_chains(&s, true);
    }
}

/// Fixture `name` with `from` replaced by `to` in its file `file`.
fn edit(bundle: &Path, file: &str, from: &[u8], to: &[u8]) {
    let p = bundle.join(file);
    let bytes = fs::read(&p).unwrap();
    let i = bytes.windows(from.len()).position(|w| w == from).unwrap_or_else(|| panic!("{from:?} not in {file}"));
    fs::write(&p, [&bytes[..i], to, &bytes[i + from.len()..]].concat()).unwrap();
}

#[test]
fn an_unknown_label_or_an_undeclared_code_page_is_refused_with_the_file_the_line_and_the_fix() {
    let name = "enc-big5-ws16";
    let stem = entry(name)["bundle"].as_str().unwrap().to_string();
    let cases: [(&str, &[u8], &[u8], &str); 3] = [
        ("vmx", b".encoding = \"Big5\"", b".encoding = \"x-klingon\"", "line 1: declares the encoding \"x-klingon\""),
        ("vmdk", b"encoding=\"Big5\"", b"encoding=\"Klingon\"", "line 3: declares the encoding \"Klingon\""),
        ("vmx", b".encoding = \"Big5\"\r\n", b"", "is not valid UTF-8 and the file declares no other encoding"),
    ];
    for (ext, from, to, reason) in cases {
        let lib = Lib::new();
        let bundle = materialize(name, &lib.make_base_dir(), Names::Unicode);
        let file = format!("{stem}.{ext}");
        edit(&bundle, &file, from, to);
        let said = refuse(&lib, &bundle);
        assert!(said.contains(&format!("{file}: ")) && said.contains(reason), "{said}");
        assert!(said.contains("fix: ") && said.contains("UTF-8") && !said.contains("damaged"), "{said}");
    }
}

#[test]
fn a_suspended_vm_is_refused_as_suspended_not_as_running() {
    let lib = Lib::new();
    let bundle = materialize("suspended-win11-ws17", &lib.make_base_dir(), Names::Unicode);
    assert!(bundle.join("Windows 11 x64-60ae7ada.vmem").exists() && !lib.root.join("x.lck").exists());
    let said = refuse(&lib, &bundle);
    says_why("suspended-win11-ws17", &said);
    assert!(!said.contains("running"), "{said}");
}

#[test]
fn a_vm_whose_tpm_alone_is_encrypted_is_refused_with_how_to_remove_the_encryption() {
    for name in ["fusion13-win11-vtpm-partial", "ws17-win11-vtpm-partial"] {
        let lib = Lib::new();
        let bundle = materialize(name, &lib.make_base_dir(), Names::Unicode);
        let said = refuse(&lib, &bundle);
        says_why(name, &said);
        assert!(said.contains("Trusted Platform Module"), "{said}");
    }
}

/// Every `.vmdk` under `dir` that is a disk (a text descriptor or a monolithic sparse file, not a
/// bare extent).
fn disks_under(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|x| x == "vmdk") && leafd_formats::disk::read_descriptor(&env(), p).is_ok()
        })
        .collect()
}

#[test]
fn a_leaf_of_a_vm_with_disks_in_subfolders_made_a_base_leaves_every_disk_file_of_it_readable() {
    let s = serve("ws17-linux-disks-subfolder", Names::Unicode, None);
    let disks = leaf_disks(&s.leaf);
    for (i, (delta, _)) in disks.iter().enumerate() {
        qemu_write(delta, 65536 * i as u64, 65536, 0x60 + i as u8);
    }
    let dropped = s.lib.make_base_dir().join("web01 state.vmwarevm");
    fs::rename(&s.leaf, &dropped).unwrap();
    s.lib.ok(&["make-base", dropped.to_str().unwrap()]);
    let new_base = s.lib.base_dir("web01 state");
    // The leaf's own files, nested folders included: the old chains, now inside the new base,
    // still reach the old base; the flattened disks stand alone.
    let all = disks_under(&new_base);
    assert_eq!(all.len(), 9, "3 parent copies, 3 old deltas, 3 flattened: {all:?}");
    for disk in &all {
        let chain = qemu_chain(disk);
        let depth = if disk.to_string_lossy().ends_with("-000001.vmdk") { 2 } else { 1 };
        assert_eq!(chain.len(), depth, "{}", disk.display());
    }
    for (i, (delta, copy)) in disks.iter().enumerate() {
        let moved = |p: &Path| new_base.join(p.strip_prefix(&s.leaf).unwrap());
        qemu_read_pattern(&moved(delta), 65536 * i as u64, 65536, 0x60 + i as u8).unwrap();
        let flat = moved(delta).to_string_lossy().replace("-000001.vmdk", "-000001-base.vmdk");
        qemu_read_pattern(Path::new(&flat), 65536 * i as u64, 65536, 0x60 + i as u8).unwrap();
        let (_, data) = libvmdk_read(&moved(delta), &moved(copy), 65536 * i as u64, 512);
        assert_eq!(data, vec![0x60 + i as u8; 512]);
    }
    let o = s.lib.run(&["verify"]);
    assert!(o.status.success(), "{}", text(&o));
}

/// The lines of `bytes` with their endings.
fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split_inclusive(|&b| b == b'\n').collect()
}

#[test]
fn a_leafs_files_keep_the_bases_line_endings_first_line_last_line_and_key_spellings() {
    // CRLF throughout: the leaf's .vmx and its copy of the CRLF descriptor.
    let s = serve("ws17-windows-crlf", Names::Unicode, None);
    let vmx = fs::read(s.leaf.join("Leaf.vmx")).unwrap();
    assert!(lines(&vmx).iter().all(|l| l.ends_with(b"\r\n")));
    let (_, copy) = &leaf_disks(&s.leaf)[0];
    let copy = fs::read(copy).unwrap();
    assert!(lines(&copy).iter().all(|l| l.ends_with(b"\r\n")), "{}", String::from_utf8_lossy(&copy));
    // |0D|0A and |22 in the annotation, byte for byte.
    let annotation = |b: &[u8]| lines(b).into_iter().find(|l| l.starts_with(b"annotation")).map(<[u8]>::to_vec);
    let base_vmx = fs::read(s.base.join("Windows 10 x64.vmx.base")).unwrap();
    assert!(annotation(&vmx).is_some() && annotation(&vmx) == annotation(&base_vmx));
    // No final newline (Notepad), and the last key still read.
    let s = serve("ws16-windows-notepad-no-final-newline", Names::Unicode, None);
    let vmx = fs::read(s.leaf.join("Leaf.vmx")).unwrap();
    assert!(!vmx.ends_with(b"\n"));
    assert_eq!(Dict::parse(&vmx).unwrap().get("mainMem.useNamedFile"), Some("FALSE"));
    // The shebang stays first.
    let s = serve("ws17-linux-shebang-utf8", Names::Unicode, None);
    let vmx = fs::read(s.leaf.join("Leaf.vmx")).unwrap();
    assert!(vmx.starts_with(b"#!/usr/bin/vmware\n.encoding = \"UTF-8\"\n"));
    // Lower-case keys set in place.
    let s = serve("packer-vagrant-lowercase", Names::Unicode, None);
    let vmx = Dict::parse(&fs::read(s.leaf.join("Leaf.vmx")).unwrap()).unwrap();
    for key in ["displayname", "nvram", "extendedconfigfile", "sata0:0.filename"] {
        let spellings: Vec<&str> = vmx.entries().map(|(k, _)| k).filter(|k| k.eq_ignore_ascii_case(key)).collect();
        assert_eq!(spellings, [key]);
    }
    assert!(s.leaf.join("Leaf.nvram").is_file());
}

/// A bundle holding a disk-only fixture's disks, attached by a minimal `.vmx`.
fn disk_bundle(name: &str, lib: &Lib, names: Names) -> PathBuf {
    let bundle = materialize(name, &lib.make_base_dir(), names);
    let mut vmx = String::from(
        ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"21\"\nscsi0.present = \"TRUE\"\n",
    );
    for (i, d) in entry(name)["disks"].as_array().unwrap().iter().enumerate() {
        vmx.push_str(&format!(
            "scsi0:{i}.present = \"TRUE\"\nscsi0:{i}.fileName = \"{}\"\n",
            d["descriptor"].as_str().unwrap()
        ));
    }
    fs::write(bundle.join(format!("{name}.vmx")), vmx).unwrap();
    bundle
}

#[test]
fn every_disk_shape_leafd_serves_is_served_and_read_through_its_leaf() {
    for name in [
        "disk-grown-split-sparse",
        "disk-p2v-odd-extent",
        "disk-ws65-no-isnativesnapshot",
        "disk-ddb-encoding-only",
        "disk-trailing-spaces",
        "disk-monolithic-flat",
        "disk-twogb-flat",
        "disk-monolithic-sparse-embedded",
    ] {
        let lib = Lib::new();
        let bundle = disk_bundle(name, &lib, Names::Legacy);
        let s = serve_bundle(lib, &bundle, None);
        let want = entry(name)["disks"][0]["capacity_sectors"].as_u64().unwrap();
        assert_eq!(record(&s.base, "base")["disks"][0]["capacity"].as_u64(), Some(want), "{name}");
        // libvmdk refuses extent names in a code page named only by ddb.encoding (SOURCES.md).
        check_leaf_chains(&s, name != "disk-ddb-encoding-only");
    }
}

#[test]
fn writes_across_a_grown_disks_short_extent_land_where_every_reader_sees_them() {
    for name in ["disk-grown-split-sparse", "disk-p2v-odd-extent"] {
        let lib = Lib::new();
        let bundle = disk_bundle(name, &lib, Names::Unicode);
        let s = serve_bundle(lib, &bundle, None);
        let (delta, _) = &leaf_disks(&s.leaf)[0];
        let sizes: Vec<u64> = Disk::open(&env(), delta).unwrap().extent_sectors();
        // Around each extent boundary, and the very end (inside a grain, for the P2V disk).
        let mut at = 0;
        let mut offsets = Vec::new();
        for s in &sizes[..sizes.len() - 1] {
            at += s;
            offsets.push(at * 512 - 2048);
        }
        offsets.push(at * 512 + sizes.last().unwrap() * 512 - 4096);
        for (i, &o) in offsets.iter().enumerate() {
            qemu_write(delta, o, 4096, 0x70 + (i % 16) as u8);
        }
        let ours = Disk::open(&env(), delta).unwrap();
        for (i, &o) in offsets.iter().enumerate() {
            qemu_read_pattern(delta, o, 4096, 0x70 + (i % 16) as u8).unwrap();
            let mut buf = vec![0; 4096];
            ours.read_at(o, &mut buf).unwrap();
            assert_eq!(buf, vec![0x70 + (i % 16) as u8; 4096], "{name} at {o}");
        }
        qemu_check(delta);
    }
}

#[test]
fn exported_and_esxi_disks_are_refused_each_with_how_to_convert_it() {
    let cases: [(&str, &[&str]); 5] = [
        (
            "disk-stream-optimized",
            &[
                "vmware-vdiskmanager -r 'WinDev Eval-disk1.vmdk' -t 0",
                "qemu-img convert -O vmdk -o subformat=monolithicSparse",
            ],
        ),
        ("disk-esxi-vmfs-thin", &["vmware-vdiskmanager -r 'app01.vmdk' -t 0", "vmkfstools -i"]),
        ("disk-esxi-vmfssparse-delta", &["consolidate", "vmware-vdiskmanager -r 'sql01-000001.vmdk' -t 0"]),
        ("disk-esxi-sesparse-delta", &["consolidate", "vmware-vdiskmanager -r 'web02-000001.vmdk' -t 0"]),
        ("disk-esxi-rdm", &["raw device mapping", "Storage vMotion"]),
    ];
    for (name, fixes) in cases {
        let lib = Lib::new();
        let bundle = disk_bundle(name, &lib, Names::Unicode);
        let said = refuse(&lib, &bundle);
        says_why(name, &said);
        for f in fixes {
            assert!(said.contains(f), "{name}: {f} not in {said}");
        }
    }
    // The second RDM, in physical compatibility, on its own.
    let lib = Lib::new();
    let bundle = disk_bundle("disk-esxi-rdm", &lib, Names::Unicode);
    edit(&bundle, "disk-esxi-rdm.vmx", b"scsi0:0.fileName", b"scsi0:9.fileName");
    assert!(refuse(&lib, &bundle).contains("vmfsPassthroughRawDeviceMap"));
    // A COWD file named directly as the disk (ESX 2).
    let lib = Lib::new();
    let bundle = disk_bundle("disk-esxi-vmfssparse-delta", &lib, Names::Unicode);
    edit(&bundle, "disk-esxi-vmfssparse-delta.vmx", b"sql01-000001.vmdk", b"sql01-000001-delta.vmdk");
    let said = refuse(&lib, &bundle);
    for f in ["COWD", "vmkfstools -i 'sql01-000001-delta.vmdk' -d 2gbsparse", "VMware Converter"] {
        assert!(said.contains(f), "{f} not in {said}");
    }
}

#[test]
fn windows_paths_name_disks_in_subfolders_and_parents_on_other_machines() {
    let s = serve("ws17-windows-subfolder-backslash", Names::Unicode, None);
    let vmx = Dict::parse(&fs::read(s.leaf.join("Leaf.vmx")).unwrap()).unwrap();
    assert_eq!(vmx.get("nvme0:0.fileName"), Some("Disks/Dev Box-000001.vmdk"));
    assert_eq!(vmx.get("nvme0:1.fileName"), Some("Disks/Dev Box-data-000001.vmdk"));
    // Not disks: kept as the base has them.
    assert!(vmx.get("sata0:1.fileName").unwrap().starts_with("D:\\ISO\\"));
    assert!(s.leaf.join("Disks/Dev Box.vmdk").is_file() && s.leaf.join("Leaf.nvram").is_file());
    check_leaf_chains(&s, true);
    // The base's record rebuilt from its .vmx finds the disks as Make Base did.
    fs::remove_dir_all(s.base.join(".leafd")).unwrap();
    let _ = xattr::remove(&s.base, "user.org.leafd.base");
    let o = s.lib.run(&["verify"]);
    assert!(o.status.success() && text(&o).contains("base lineage was missing"), "{}", text(&o));
    assert_eq!(record(&s.base, "base")["disks"][1]["descriptor"], "Disks/Dev Box-data.vmdk");
    // A linked clone whose parent is a path on the Windows machine that made it.
    let lib = Lib::new();
    let bundle = materialize("vagrant-linked-clone-windows", &lib.make_base_dir(), Names::Unicode);
    let said = refuse(&lib, &bundle);
    says_why("vagrant-linked-clone-windows", &said);
    assert!(said.contains("C:\\Users\\sam\\") && said.contains("Windows machine"), "{said}");
    assert!(!said.contains(&format!("{}/C:", bundle.display())), "read as a relative name: {said}");
}

#[test]
fn twenty_disks_and_more_on_several_controllers_all_get_a_leaf_delta() {
    let s = serve("ws17-22-disks-scsi-sata-nvme", Names::Unicode, None);
    let disks = leaf_disks(&s.leaf);
    assert_eq!(disks.len(), 22);
    let vmx = Dict::parse(&fs::read(s.leaf.join("Leaf.vmx")).unwrap()).unwrap();
    for d in entry("ws17-22-disks-scsi-sata-nvme")["disks"].as_array().unwrap() {
        let stem = d["descriptor"].as_str().unwrap().trim_end_matches(".vmdk");
        assert_eq!(
            vmx.get(&format!("{}.fileName", d["key"].as_str().unwrap())),
            Some(format!("{stem}-000001.vmdk").as_str())
        );
    }
    // The CD-ROMs are left alone.
    for (node, value) in [("sata0:1", "cdrom-image"), ("ide1:0", "cdrom-raw"), ("ide1:1", "atapi-cdrom")] {
        assert_eq!(vmx.get(&format!("{node}.deviceType")), Some(value));
    }
    // ESXi's 21 disks: all found, the first refused by its type.
    let lib = Lib::new();
    let bundle = materialize("esxi70-21-disks", &lib.make_base_dir(), Names::Unicode);
    let said = refuse(&lib, &bundle);
    assert!(said.contains("Lab-DB01/Lab-DB01.vmdk: disk type \"vmfs\""), "{said}");
}

#[test]
fn a_vm_with_three_snapshots_is_flattened_into_its_current_state() {
    let lib = Lib::new();
    let bundle = materialize("ws17-three-snapshots", &lib.make_base_dir(), Names::Unicode);
    // Something in each delta, so the flattened disk must take each from the right layer. (Not
    // through QEMU: its first write gives a disk a new CID, which unlinks the layers above.)
    for (i, delta) in
        ["Ubuntu 24.04-000001.vmdk", "Ubuntu 24.04-000002.vmdk", "Ubuntu 24.04-000003.vmdk"].iter().enumerate()
    {
        let d = Disk::open_writable(&env(), &bundle.join(delta)).unwrap();
        d.write_at(65536 * i as u64, &[0x31 + i as u8; 65536]).unwrap();
        d.sync().unwrap();
    }
    let s = serve_bundle(lib, &bundle, None);
    let base = record(&s.base, "base");
    let flattened: Vec<&str> =
        base["disks"].as_array().unwrap().iter().map(|d| d["descriptor"].as_str().unwrap()).collect();
    assert_eq!(flattened, ["Ubuntu 24.04-000003-base.vmdk", "Ubuntu 24.04-0-000003-base.vmdk"]);
    for (i, byte) in [0x31u8, 0x32, 0x33].into_iter().enumerate() {
        let flat = s.base.join(flattened[0]);
        assert_eq!(qemu_chain(&flat).len(), 1);
        qemu_read_pattern(&flat, 65536 * i as u64, 65536, byte).unwrap();
        qemu_read_pattern(&leaf_disks(&s.leaf)[0].0, 65536 * i as u64, 65536, byte).unwrap();
    }
    // The VM's own chains stay whole in the base; the leaf has none of its snapshots.
    assert_eq!(qemu_chain(&s.base.join("Ubuntu 24.04-0-000003.vmdk")).len(), 4);
    let vmsd = Dict::parse(&fs::read(s.leaf.join("Leaf.vmsd")).unwrap()).unwrap();
    assert_eq!(vmsd.get("snapshot.numSnapshots"), Some("1"));
    assert!(vmsd.entries().all(|(_, v)| !v.contains("Snapshot2") && !v.contains("Docker")));
    check_leaf_chains(&s, true);
}

#[test]
fn a_vm_whose_snapshots_were_all_deleted_is_not_flattened() {
    let s = serve("ws17-snapshots-deleted-mru", Names::Unicode, None);
    let base = record(&s.base, "base");
    assert_eq!(base["disks"][0]["descriptor"], "Win10 Build Agent.vmdk");
    assert!(!s.base.join("Win10 Build Agent-base.vmdk").exists());
}

#[test]
fn an_empty_delta_extent_is_laid_out_as_vmware_lays_it_out() {
    // Its last extent is 983,040 sectors: FORMATS.md §2's example.
    let s = serve("ws17-snapshots-deleted-mru", Names::Unicode, None);
    let (delta, _) = &leaf_disks(&s.leaf)[0];
    let last = s.leaf.join("Win10 Build Agent-000001-s016.vmdk");
    let bytes = fs::read(&last).unwrap();
    let entry = |dir: usize, i: usize| u32::from_le_bytes(bytes[dir * 512 + i * 4..][..4].try_into().unwrap());
    let rgd: Vec<u32> = (0..128).map(|i| entry(1, i)).collect();
    assert_eq!(rgd, (0..128).map(|i| 2 + 4 * i).collect::<Vec<u32>>(), "RGD 0-127: 2, 6, ... 62, 66, ... 510");
    let gd: Vec<u32> = (0..128).map(|i| entry(62, i)).collect();
    assert_eq!(gd, (0..128).map(|i| 63 + 4 * i).collect::<Vec<u32>>());
    assert_eq!(bytes.len(), 128 * 512);
    qemu_check(delta);
}

#[test]
fn an_appliance_whose_nvram_file_is_named_nvram_gets_its_own() {
    let lib = Lib::new();
    let bundle = materialize("appliance-nvram-plain", &lib.make_base_dir(), Names::Unicode);
    // What VMware writes at the first power-on (MANIFEST.md): a CID.
    edit(&bundle, "root.vmdk", b"CID=ffffffff", b"CID=1c0ffee5");
    let s = serve_bundle(lib, &bundle, None);
    let vmx = Dict::parse(&fs::read(s.leaf.join("Leaf.vmx")).unwrap()).unwrap();
    assert_eq!(vmx.get("nvram"), Some("Leaf.nvram"));
    assert_eq!(fs::read(s.leaf.join("Leaf.nvram")).unwrap(), fs::read(s.base.join("nvram")).unwrap());
    // A descriptor without "# Disk DescriptorFile" is one libvmdk refuses (SOURCES.md).
    check_leaf_chains(&s, false);
    let copy = Descriptor::parse_bytes(&fs::read(&leaf_disks(&s.leaf)[0].1).unwrap()).unwrap();
    assert_eq!(copy.cid().unwrap(), 0x1c0f_fee5);
}

/// Issue 16 on VMware-made VMs and disks: a hand copy of each, made before it became a base and
/// written to since, is adopted. Its `.vmx` keeps every byte but its disks' file names (CRLF,
/// code page, no final newline), its chains reach the base (QEMU), and what was written reads
/// back.
#[test]
fn vmware_made_vms_copied_by_hand_are_adopted_keeping_every_byte_of_their_vmx() {
    let cases = [
        ("ws17-windows-crlf", Names::Unicode),
        ("enc-gbk-ws17", Names::Legacy),
        ("ws16-windows-notepad-no-final-newline", Names::Unicode),
        ("ws17-linux-disks-subfolder", Names::Unicode),
        ("ws17-22-disks-scsi-sata-nvme", Names::Unicode),
        // Disk shapes: a split disk grown over the years, extents that are not whole grains,
        // split flat extents.
        ("disk-grown-split-sparse", Names::Unicode),
        ("disk-p2v-odd-extent", Names::Unicode),
        ("disk-twogb-flat", Names::Unicode),
    ];
    for (name, names) in cases {
        let lib = Lib::new();
        let bundle = if name.starts_with("disk-") {
            disk_bundle(name, &lib, names)
        } else {
            materialize(name, &lib.make_base_dir(), names)
        };
        // Data the copy shares with the base (the fixtures' disks hold none), then its own.
        let first = entry(name)["disks"][0]["descriptor"].as_str().unwrap().to_string();
        qemu_write(&bundle.join(&first), 0, 1 << 20, 0x3a);
        let copy = lib.root.join("Copy.vmwarevm");
        let o = run_tool("cp", &["-a", "--sparse=always", bundle.to_str().unwrap(), copy.to_str().unwrap()]);
        assert!(o.status.success(), "{name}: cp: {}", text(&o));
        lib.ok(&["make-base", bundle.to_str().unwrap()]);
        qemu_write(&copy.join(&first), 1 << 20, 65536, 0x5c);
        let vmx = fs::read_dir(&copy)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "vmx"))
            .unwrap();
        let before = fs::read(&vmx).unwrap();
        let base_name = leafd::testing::default_name(&bundle);
        lib.ok(&["adopt", copy.to_str().unwrap(), "--base", &base_name]);
        let after = fs::read(&vmx).unwrap();
        let kept = |b: &[u8]| -> Vec<Vec<u8>> {
            lines(b)
                .into_iter()
                .filter(|l| !contains(&l.to_ascii_lowercase(), b".filename"))
                .map(<[u8]>::to_vec)
                .collect()
        };
        assert_eq!(kept(&after), kept(&before), "{name}: the .vmx changed beyond its disks' names");
        assert_eq!(lines(&after).len(), lines(&before).len(), "{name}: lines added or lost");
        assert_eq!(after.ends_with(b"\n"), before.ends_with(b"\n"), "{name}: the final newline");
        let crlf = |b: &[u8]| lines(b).iter().filter(|l| l.ends_with(b"\n")).all(|l| l.ends_with(b"\r\n"));
        assert_eq!(crlf(&after), crlf(&before), "{name}: line endings");
        let s = Served { base: lib.base_dir(&base_name), leaf: copy.clone(), lib };
        check_leaf_chains(&s, false);
        let (delta, _) = &leaf_disks(&s.leaf)[0];
        qemu_read_pattern(delta, 0, 1 << 20, 0x3a).unwrap_or_else(|e| panic!("{name}: {e}"));
        qemu_read_pattern(delta, 1 << 20, 65536, 0x5c).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(record(&s.leaf, "leaf")["adopted"], true, "{name}");
    }
}
