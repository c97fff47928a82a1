//! Records over a library's life: libraries made before records were files (format 1: records
//! only in extended attributes, as `src/lineage.rs` wrote them until 87f0ad6) are read as they are
//! by the commands that only look, migrated by the first command that changes the library, and
//! left alone by the second; hand-made copies are told apart; and no repair of `verify` ever
//! touches a base's files.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use leafd::testing::{SampleDisk, SampleVm};
use leafd_formats::disk::DiskType;
use serde::Serialize;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// Format 1's records, field for field and in order, as `lineage.rs` serialized them.
mod v1 {
    use serde::Serialize;

    #[derive(Serialize)]
    pub struct BaseRecord {
        pub id: String,
        pub name: String,
        pub source: String,
        pub created: String,
        pub vmx: String,
        pub disks: Vec<DiskRecord>,
    }

    #[derive(Serialize)]
    pub struct DiskRecord {
        pub node: String,
        pub descriptor: String,
        pub cid: String,
        pub capacity: u64,
        pub create_type: String,
        pub extents: usize,
        pub fingerprint: Option<String>,
    }

    #[derive(Serialize)]
    pub struct ExtentRecord {
        pub base: String,
        pub disk: String,
        pub index: usize,
        pub file: String,
        pub sectors: u64,
        pub size: u64,
    }

    #[derive(Serialize)]
    pub struct LeafRef {
        pub id: String,
        pub name: String,
        pub path: String,
        pub created: String,
    }

    #[derive(Serialize)]
    pub struct LeafRecord {
        pub id: String,
        pub base_id: String,
        pub base_name: String,
        pub name: String,
        pub path: String,
        pub created: String,
        pub snapshot: String,
        pub disks: Vec<super::Value>,
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_string()
}

/// `lineage::write`: compact JSON in `user.org.leafd.<name>`.
fn write_attr<T: Serialize>(path: &Path, name: &str, record: &T) {
    xattr::set(path, format!("user.org.leafd.{name}"), &serde_json::to_vec(record).unwrap()).unwrap();
}

/// Today's records of a library: every record file, by path relative to the root.
fn record_files(root: &Path) -> BTreeMap<PathBuf, Value> {
    walk(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.to_string_lossy().contains("/.leafd/"))
        .filter(|p| !p.starts_with(root.join(".leafd")))
        .map(|p| (p.strip_prefix(root).unwrap().to_path_buf(), serde_json::from_slice(&fs::read(&p).unwrap()).unwrap()))
        .collect()
}

/// Rewrites a library made by today's leafd as format 1 wrote it: each base record in the store's
/// attribute with its extents counted, each extent's record on the extent file (made writable
/// for it, as Make Base did, then protected again), one marker file per leaf in `.leaves/`, each
/// leaf's record on its bundle; and no `.leafd/` folder in any store or leaf.
fn to_format_1(lib: &Lib) {
    for store in fs::read_dir(lib.root.join("Bases")).unwrap().map(|e| e.unwrap().path()) {
        let base = record(&store, "base");
        let id = s(&base["id"]);
        let mut disks = Vec::new();
        for d in base["disks"].as_array().unwrap() {
            let extents = d["extents"].as_array().unwrap();
            for e in extents {
                let file = store.join(s(&e["file"]));
                let mode = fs::metadata(&file).unwrap().permissions().mode();
                fs::set_permissions(&file, fs::Permissions::from_mode(mode | 0o200)).unwrap();
                let rec = v1::ExtentRecord {
                    base: id.clone(),
                    disk: s(&d["descriptor"]),
                    index: e["index"].as_u64().unwrap() as usize,
                    file: s(&e["file"]),
                    sectors: e["sectors"].as_u64().unwrap(),
                    size: e["size"].as_u64().unwrap(),
                };
                write_attr(&file, "extent", &rec);
                fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            }
            disks.push(v1::DiskRecord {
                node: s(&d["node"]),
                descriptor: s(&d["descriptor"]),
                cid: s(&d["cid"]),
                capacity: d["capacity"].as_u64().unwrap(),
                create_type: s(&d["create_type"]),
                extents: extents.len(),
                fingerprint: d["fingerprint"].as_str().map(str::to_string),
            });
        }
        let v1_base = v1::BaseRecord {
            id,
            name: s(&base["name"]),
            source: s(&base["source"]),
            created: s(&base["created"]),
            vmx: s(&base["vmx"]),
            disks,
        };
        write_attr(&store, "base", &v1_base);
        let markers = store.join(".leaves");
        fs::create_dir(&markers).unwrap();
        for entry in leaf_list(&store) {
            let r: Value = serde_json::from_slice(&fs::read(&entry).unwrap()).unwrap();
            let marker = markers.join(s(&r["id"]));
            fs::write(&marker, b"").unwrap();
            let rec =
                v1::LeafRef { id: s(&r["id"]), name: s(&r["name"]), path: s(&r["path"]), created: s(&r["created"]) };
            write_attr(&marker, "leaf-ref", &rec);
        }
        fs::remove_dir_all(store.join(".leafd")).unwrap();
    }
    for bundle in fs::read_dir(&lib.root).unwrap().map(|e| e.unwrap().path()) {
        if bundle.extension().is_none_or(|x| x != "vmwarevm") {
            continue;
        }
        let leaf = record(&bundle, "leaf");
        assert_eq!(s(&leaf["vmx"]), format!("{}.vmx", s(&leaf["name"])), "format 1 knew no other .vmx name");
        let rec = v1::LeafRecord {
            id: s(&leaf["id"]),
            base_id: s(&leaf["base_id"]),
            base_name: s(&leaf["base_name"]),
            name: s(&leaf["name"]),
            path: s(&leaf["path"]),
            created: s(&leaf["created"]),
            snapshot: s(&leaf["snapshot"]),
            disks: leaf["disks"].as_array().unwrap().clone(),
        };
        write_attr(&bundle, "leaf", &rec);
        fs::remove_dir_all(bundle.join(".leafd")).unwrap();
    }
}

/// The library as it is: every path, mode, checksum and attribute, lock files aside.
fn state(lib: &Lib) -> Vec<String> {
    let mut t = fingerprint_tree(&lib.root);
    t.retain(|l| !l.contains("/.leafd/locks"));
    t
}

/// A library of two bases (one of a split disk and a flat one, one monolithic) and three
/// leaves, made by today's leafd; returns its record files.
fn library() -> (Lib, BTreeMap<PathBuf, Value>) {
    let lib = Lib::new();
    let two = SampleVm {
        name: "Ubuntu".into(),
        disks: vec![
            SampleDisk::new("scsi0:0", "Ubuntu.vmdk", DiskType::SplitSparse, 8 * MIB),
            SampleDisk::new("scsi0:1", "Data.vmdk", DiskType::MonolithicFlat, 4 * MIB),
        ],
    };
    lib.base_from(&two);
    lib.base_from(&SampleVm::single("Debian", DiskType::MonolithicSparse, 4 * MIB));
    lib.ok(&["new-leaf", "Ubuntu", "Web"]);
    lib.ok(&["new-leaf", "Ubuntu", "Mail"]);
    lib.ok(&["new-leaf", "Debian", "Build"]);
    let records = record_files(&lib.root);
    assert_eq!(records.len(), 2 + 3 + 3, "{records:#?}");
    (lib, records)
}

/// Every leaf's disks read by QEMU as the VM was.
fn leaves_read(lib: &Lib) {
    for leaf in ["Web", "Mail", "Build"] {
        let dir = lib.leaf_dir(leaf);
        let vmx = fs::read_to_string(dir.join(format!("{leaf}.vmx"))).unwrap();
        let delta =
            vmx.lines().find(|l| l.starts_with("scsi0:0.fileName")).unwrap().split('"').nth(1).unwrap().to_string();
        qemu_read_pattern(&dir.join(delta), 0, 65536, 0x11).unwrap_or_else(|e| panic!("{leaf}: {e}"));
    }
}

fn verify_all_good(lib: &Lib) -> String {
    let out = lib.ok(&["verify"]);
    assert!(out.contains("2 bases, 3 leaves checked: all good"), "{out}");
    out
}

#[test]
fn commands_that_only_look_read_format_1_as_it_is() {
    let (lib, _) = library();
    to_format_1(&lib);
    assert!(record_files(&lib.root).is_empty());
    let before = state(&lib);
    let out = verify_all_good(&lib);
    assert!(!out.contains("repaired"), "nothing to repair: {out}");
    let status: Value = serde_json::from_str(&lib.ok(&["status", "--json"])).unwrap();
    let bases = status["bases"].as_array().unwrap();
    let leaves: Vec<(String, String, bool)> = bases
        .iter()
        .flat_map(|b| {
            b["leaves"].as_array().unwrap().iter().map(move |l| (s(&b["name"]), s(&l["name"]), l["present"] == true))
        })
        .collect();
    assert_eq!(
        leaves,
        [
            ("Debian".into(), "Build".into(), true),
            ("Ubuntu".into(), "Mail".into(), true),
            ("Ubuntu".into(), "Web".into(), true)
        ],
        "{status:#}"
    );
    lib.ok(&["status"]);
    lib.ok(&["verify", "Web"]);
    assert!(lib.ok(&["verify", "--deep"]).contains("all good"));
    assert_eq!(state(&lib), before, "reading changed the library");
}

/// The first command that changes a format 1 library writes every record as today's leafd
/// would have (the same records it was made with), moves the leaf markers, and leaves the old
/// attributes on protected files alone; the next changes nothing.
fn migrated_by(first: &[&str]) {
    let (lib, made) = library();
    to_format_1(&lib);
    let extent = lib.base_dir("Ubuntu").join("Ubuntu-s001.vmdk");
    let protected = fs::metadata(&extent).unwrap().permissions().mode();
    lib.ok(first);
    let mut now = record_files(&lib.root);
    if first[0] == "new-leaf" {
        let new = now.keys().filter(|p| !made.contains_key(*p)).cloned().collect::<Vec<_>>();
        assert_eq!(new.len(), 2, "the new leaf's record and its entry: {new:?}");
        now.retain(|p, _| made.contains_key(p));
    }
    assert_eq!(now, made, "{first:?}: every record written as it was");
    for base in ["Ubuntu", "Debian"] {
        let store = lib.base_dir(base);
        assert!(!store.join(".leaves").exists(), "{first:?}: the old markers are gone");
        let mirror = xattr::get(&store, "user.org.leafd.base").unwrap().expect("a mirror");
        let mirror: Value = serde_json::from_slice(&mirror).unwrap();
        assert_eq!(mirror, record(&store, "base"), "{first:?}: the mirror is today's record");
    }
    // Protected files keep their protection, and with it format 1's attribute.
    assert_eq!(fs::metadata(&extent).unwrap().permissions().mode(), protected);
    assert!(xattr::get(&extent, "user.org.leafd.extent").unwrap().is_some());
    let out = lib.ok(&["verify"]);
    let leaves = if first[0] == "new-leaf" { 4 } else { 3 };
    assert!(out.contains(&format!("2 bases, {leaves} leaves checked: all good")), "{out}");
    assert!(!out.contains("repaired"), "{out}");
    leaves_read(&lib);

    let before = state(&lib);
    lib.ok(&["recover"]);
    lib.ok(&["verify"]);
    assert_eq!(state(&lib), before, "{first:?}: a second run changes nothing");
}

#[test]
fn new_leaf_migrates_a_format_1_library() {
    migrated_by(&["new-leaf", "Ubuntu", "Extra"]);
}

#[test]
fn recover_migrates_a_format_1_library() {
    migrated_by(&["recover"]);
}

/// A base store or a leaf copied by hand carries the original's record and id: `verify` says
/// which is the copy, with a fix, and the fix works.
fn copies_are_reported(format_1: bool) {
    let (lib, _) = library();
    if format_1 {
        to_format_1(&lib);
    }
    let cp = |from: &Path, to: &Path| {
        let o = run_tool("cp", &["-a", from.to_str().unwrap(), to.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
    };
    let base_copy = lib.base_dir("Ubuntu copy");
    cp(&lib.base_dir("Ubuntu"), &base_copy);
    let leaf_copy = lib.leaf_dir("Web copy");
    cp(&lib.leaf_dir("Web"), &leaf_copy);
    let o = lib.run(&["verify"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let fix_for = |copy: &Path, of: &Path| {
        let at = lines
            .iter()
            .position(|l| {
                l.starts_with(&format!("PROBLEM: {}: ", copy.display()))
                    && l.contains(&format!("is a hand-made copy of {}", of.display()))
            })
            .unwrap_or_else(|| panic!("{} is not reported as a copy: {out}", copy.display()));
        lines[at + 1].strip_prefix("  fix: ").unwrap_or_else(|| panic!("no fix: {out}")).to_string()
    };
    let base_fix = fix_for(&base_copy, &lib.base_dir("Ubuntu"));
    let leaf_fix = fix_for(&leaf_copy, &lib.leaf_dir("Web"));
    assert_eq!(out.matches("PROBLEM").count(), 2, "{out}");
    assert!(base_fix.contains("move it out of Bases"), "{base_fix}");
    assert_eq!(leaf_fix.contains("run `leafd recover`"), format_1, "{leaf_fix}");

    // The fixes, as given.
    fs::rename(&base_copy, lib.tmp.path().join("Ubuntu copy")).unwrap();
    if format_1 {
        lib.ok(&["recover"]);
    }
    let rm = leaf_fix.split("(rm -r '").nth(1).and_then(|r| r.split("')").next()).expect("the command to run");
    assert_eq!(Path::new(rm), leaf_copy.join(".leafd"), "{leaf_fix}");
    let o = run_tool("rm", &["-r", rm]);
    assert!(o.status.success(), "{}", text(&o));
    let out = lib.ok(&["verify"]);
    assert!(out.contains("2 bases, 4 leaves checked: all good"), "after the fixes: {out}");
    assert!(out.contains(&format!("repaired: {}: ", leaf_copy.display())), "{out}");
    let (web, copy) = (record(&lib.leaf_dir("Web"), "leaf"), record(&leaf_copy, "leaf"));
    assert_ne!(web["id"], copy["id"], "the copy has an id of its own");
    assert_eq!(copy["base_id"], web["base_id"], "and is a leaf of the same base");
    assert_eq!(copy["path"], leaf_copy.to_str().unwrap());
    let out = lib.ok(&["verify"]);
    assert!(
        out.contains("2 bases, 4 leaves checked: all good") && !out.contains("repaired"),
        "nothing more to do: {out}"
    );
    assert_eq!(leaf_list(&lib.base_dir("Ubuntu")).len(), 3, "the base lists the copy as a leaf of its own");
}

#[test]
fn hand_made_copies_are_reported_with_a_fix() {
    copies_are_reported(false);
}

#[test]
fn hand_made_copies_in_a_format_1_library_are_reported_with_a_fix() {
    copies_are_reported(true);
}

use common::trace;

/// Every file of every base store but its records, as `fingerprint_tree` sees it (path, mode,
/// size, checksum, attributes), with its inode: what no repair may change.
fn base_files(lib: &Lib) -> (Vec<String>, Vec<[u64; 2]>) {
    use std::os::unix::fs::MetadataExt;
    let bases = lib.root.join("Bases");
    let mut lines = Vec::new();
    let mut ids = Vec::new();
    for store in fs::read_dir(&bases).unwrap().map(|e| e.unwrap().path()) {
        for p in walk(&store).into_iter().filter(|p| !p.starts_with(store.join(".leafd"))) {
            let m = fs::symlink_metadata(&p).unwrap();
            ids.push([m.dev(), m.ino()]);
            lines.extend(fingerprint_tree(&p).into_iter().take(1));
        }
    }
    (lines, ids)
}

/// Runs `verify` (with `args`) under `LEAFD_IO_TRACE`; it must repair what `repairs` says and
/// find nothing else. No call it makes may change a base file (write, truncate, open for
/// writing, mode, flags, attributes, times), and its trace keeps the durability rule.
fn repaired_without_touching_a_base_file(lib: &Lib, what: &str, args: &[&str], repairs: &str) {
    let (before, ids) = base_files(lib);
    let trace_file = lib.tmp.path().join(format!("trace-{}.jsonl", what.replace(' ', "-")));
    let mut c = lib.command(&[&["verify"], args].concat());
    let o = c.env("LEAFD_IO_TRACE", &trace_file).output().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{what}: {out}");
    assert!(out.contains(&format!("repaired: {}", lib.root.display())) && out.contains(repairs), "{what}: {out}");
    let ops = trace::read(&trace_file);
    assert!(!ops.is_empty(), "{what}: the repair went through durable");
    for o in &ops {
        let changes = matches!(
            o.op.as_str(),
            "write" | "truncate" | "times" | "chmod" | "lock" | "xattr" | "rmxattr" | "open-write"
        );
        assert!(
            !(changes && o.id.is_some_and(|i| ids.contains(&i))),
            "{what}: #{} {} of base file {}",
            o.n,
            o.op,
            o.path.display()
        );
    }
    assert_eq!(trace::check(&lib.root, &ops), Vec::<String>::new(), "{what}");
    assert_eq!(base_files(lib).0, before, "{what}: a base file changed");
    let again = lib.ok(&["verify"]);
    assert!(again.contains("all good") && !again.contains("repaired"), "{what}: once is enough: {again}");
}

#[test]
fn no_repair_of_verify_touches_a_base_file() {
    let (lib, _) = library();
    let store = lib.base_dir("Ubuntu");
    let base_json = store.join(".leafd/base.json");
    let mirror = "user.org.leafd.base";
    let entry =
        |leaf: &str| store.join(format!(".leafd/leaves/{}.json", s(&record(&lib.leaf_dir(leaf), "leaf")["id"])));

    fs::write(&base_json, b"{ damaged").unwrap();
    repaired_without_touching_a_base_file(&lib, "base record damaged", &[], "restored from its mirror");

    fs::write(&base_json, b"{ damaged").unwrap();
    xattr::remove(&store, mirror).unwrap();
    repaired_without_touching_a_base_file(&lib, "base record and mirror damaged", &[], "rebuilt from its disks");

    fs::remove_file(&base_json).unwrap();
    xattr::remove(&store, mirror).unwrap();
    repaired_without_touching_a_base_file(&lib, "base record lost", &[], "base lineage was missing; rebuilt");
    // Rebuilt records have no fingerprint: `--deep` computes it.
    assert!(record(&store, "base")["disks"][0]["fingerprint"].is_null());
    repaired_without_touching_a_base_file(&lib, "fingerprint missing", &["--deep"], "fingerprint recorded");

    fs::write(entry("Web"), b"garbage").unwrap();
    repaired_without_touching_a_base_file(&lib, "leaf entry damaged", &[], "rewritten from the leaf's record");

    fs::remove_file(entry("Mail")).unwrap();
    repaired_without_touching_a_base_file(&lib, "leaf entry lost", &[], "did not list this leaf; added");

    fs::remove_dir_all(lib.leaf_dir("Web").join(".leafd")).unwrap();
    xattr::remove(lib.leaf_dir("Web"), "user.org.leafd.leaf").unwrap();
    repaired_without_touching_a_base_file(&lib, "leaf record lost", &[], "leaf lineage was missing; rebuilt");

    let copy = lib.leaf_dir("Build copy");
    assert!(run_tool("cp", &["-a", lib.leaf_dir("Build").to_str().unwrap(), copy.to_str().unwrap()]).status.success());
    fs::remove_dir_all(copy.join(".leafd")).unwrap();
    repaired_without_touching_a_base_file(&lib, "copy with its original's mirror", &[], "with an id of its own");
    assert!(lib.ok(&["verify", "--deep"]).contains("2 bases, 4 leaves checked: all good"));
}
