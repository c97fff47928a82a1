//! Bad input: every refusal exits 1 (2 for bad usage), names the file and the fix, and leaves
//! the input, and the library, exactly as they were.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use leafd::sample::{SampleDisk, SampleVm};
use leafd_formats::disk::DiskType;

const MIB: u64 = 1 << 20;

fn sample(dir: &Path, name: &str, t: DiskType) -> PathBuf {
    SampleVm::single(name, t, 8 * MIB).build(dir).unwrap()
}

fn edit_vmx(bundle: &Path, f: impl FnOnce(String) -> String) {
    let name = bundle.file_stem().unwrap().to_str().unwrap();
    let p = bundle.join(format!("{name}.vmx"));
    let text = fs::read_to_string(&p).unwrap();
    fs::write(&p, f(text)).unwrap();
}

/// One refusal: how to set it up, the command, and what stderr must say.
struct Case {
    name: &'static str,
    /// Builds the input in the library; returns the arguments and the paths that must not change.
    setup: fn(&Lib) -> (Vec<String>, Vec<PathBuf>),
    exit: i32,
    /// Each must appear in stderr.
    says: &'static [&'static str],
}

fn make_base_of(bundle: PathBuf) -> (Vec<String>, Vec<PathBuf>) {
    (vec!["make-base".into(), bundle.to_string_lossy().into()], vec![bundle])
}

fn dropped(lib: &Lib, t: DiskType, edit: fn(&Path)) -> (Vec<String>, Vec<PathBuf>) {
    let b = sample(&lib.make_base_dir(), "VM", t);
    edit(&b);
    make_base_of(b)
}

fn with_base(lib: &Lib) -> PathBuf {
    lib.base_from(&SampleVm::single("Base", DiskType::MonolithicSparse, 8 * MIB))
}

fn new_leaf(lib: &Lib, name: &str) -> (Vec<String>, Vec<PathBuf>) {
    let base = with_base(lib);
    (vec!["new-leaf".into(), "Base".into(), name.into()], vec![base, lib.root.clone()])
}

const CASES: &[Case] = &[
    Case {
        name: "running: lock folder",
        setup: |lib| dropped(lib, DiskType::SplitSparse, |b| fs::create_dir(b.join("VM.vmx.lck")).unwrap()),
        exit: 1,
        says: &["VM.vmx.lck", "is running", "shut the VM down"],
    },
    Case {
        name: "running: disk lock",
        setup: |lib| {
            dropped(lib, DiskType::MonolithicSparse, |b| fs::create_dir(b.join("Virtual Disk.vmdk.lck")).unwrap())
        },
        exit: 1,
        says: &["Virtual Disk.vmdk.lck", "is running"],
    },
    Case {
        name: "running: memory file",
        setup: |lib| dropped(lib, DiskType::MonolithicSparse, |b| fs::write(b.join("VM-5c1b3e9a.vmem"), b"x").unwrap()),
        exit: 1,
        says: &["VM-5c1b3e9a.vmem", "is running"],
    },
    Case {
        name: "suspended: .vmss",
        setup: |lib| dropped(lib, DiskType::MonolithicSparse, |b| fs::write(b.join("VM-5c1b3e9a.vmss"), b"x").unwrap()),
        exit: 1,
        says: &["VM-5c1b3e9a.vmss", "suspended", "resume it"],
    },
    Case {
        name: "suspended: checkpoint.vmState",
        setup: |lib| {
            dropped(lib, DiskType::MonolithicSparse, |b| {
                edit_vmx(b, |t| t.replace("checkpoint.vmState = \"\"", "checkpoint.vmState = \"VM-1.vmss\""))
            })
        },
        exit: 1,
        says: &["VM.vmx", "suspended"],
    },
    Case {
        name: "encrypted",
        setup: |lib| {
            dropped(lib, DiskType::MonolithicSparse, |b| {
                edit_vmx(b, |t| t + "encryption.keySafe = \"vmware:key/list/(pair/...)\"\n")
            })
        },
        exit: 1,
        says: &["VM.vmx", "encrypted", "remove the encryption"],
    },
    Case {
        name: "no disk",
        setup: |lib| {
            dropped(lib, DiskType::MonolithicSparse, |b| {
                edit_vmx(b, |t| t.replace("scsi0:0.present = \"TRUE\"", "scsi0:0.present = \"FALSE\""))
            })
        },
        exit: 1,
        says: &["VM.vmx", "no hard disk"],
    },
    Case {
        name: "missing disk",
        setup: |lib| {
            dropped(lib, DiskType::MonolithicSparse, |b| fs::remove_file(b.join("Virtual Disk.vmdk")).unwrap())
        },
        exit: 1,
        says: &["Virtual Disk.vmdk", "missing", "restore"],
    },
    Case {
        name: "missing extent",
        setup: |lib| {
            dropped(lib, DiskType::SplitSparse, |b| fs::remove_file(b.join("Virtual Disk-s002.vmdk")).unwrap())
        },
        exit: 1,
        says: &["Virtual Disk-s002.vmdk", "missing", "restore"],
    },
    Case {
        name: "truncated flat extent",
        setup: |lib| {
            dropped(lib, DiskType::MonolithicFlat, |b| {
                fs::File::options().write(true).open(b.join("Virtual Disk-flat.vmdk")).unwrap().set_len(MIB).unwrap()
            })
        },
        exit: 1,
        says: &["Virtual Disk-flat.vmdk", "truncated"],
    },
    Case {
        name: "truncated sparse extent",
        setup: |lib| {
            dropped(lib, DiskType::SplitSparse, |b| {
                fs::File::options().write(true).open(b.join("Virtual Disk-s003.vmdk")).unwrap().set_len(2048).unwrap()
            })
        },
        exit: 1,
        says: &["Virtual Disk-s003.vmdk", "truncated"],
    },
    Case {
        name: "sparse extent cut inside its data",
        setup: |lib| {
            dropped(lib, DiskType::MonolithicSparse, |b| {
                // Header and tables survive; the last grains written do not.
                let f = fs::File::options().write(true).open(b.join("Virtual Disk.vmdk")).unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(len - 65536).unwrap();
            })
        },
        exit: 1,
        says: &["Virtual Disk.vmdk", "past the end of the file", "truncated", "let the copy finish"],
    },
    Case {
        name: "unsupported disk type",
        setup: |lib| {
            dropped(lib, DiskType::SplitSparse, |b| {
                let p = b.join("Virtual Disk.vmdk");
                let t = fs::read_to_string(&p).unwrap().replace("twoGbMaxExtentSparse", "streamOptimized");
                fs::write(p, t).unwrap();
            })
        },
        exit: 1,
        says: &["Virtual Disk.vmdk", "\"streamOptimized\" is not one leafd serves", "convert it"],
    },
    Case {
        name: "snapshot chain with its parent missing",
        setup: |lib| {
            dropped(lib, DiskType::SplitSparse, |b| {
                let p = b.join("Virtual Disk.vmdk");
                let t = fs::read_to_string(&p)
                    .unwrap()
                    .replace("parentCID=ffffffff", "parentCID=12345678\nparentFileNameHint=\"Missing Parent.vmdk\"");
                fs::write(p, t).unwrap();
            })
        },
        exit: 1,
        says: &["Virtual Disk.vmdk", "Missing Parent.vmdk is missing", "put the parent back"],
    },
    Case {
        name: "snapshot chain whose parent changed",
        setup: |lib| {
            dropped(lib, DiskType::MonolithicSparse, |b| {
                // A second disk as the parent, with another CID than the child expects.
                let parent = b.join("Virtual Disk.vmdk");
                let child_text = format!(
                    "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=00000001\ncreateType=\"monolithicFlat\"\nparentFileNameHint=\"Virtual Disk.vmdk\"\nRW {} FLAT \"Child-flat.vmdk\" 0\n",
                    8 * MIB / 512
                );
                fs::write(b.join("Child.vmdk"), child_text).unwrap();
                fs::File::create(b.join("Child-flat.vmdk")).unwrap().set_len(8 * MIB).unwrap();
                assert!(parent.exists());
                edit_vmx(b, |t| t.replace("\"Virtual Disk.vmdk\"", "\"Child.vmdk\""));
            })
        },
        exit: 1,
        says: &["Child.vmdk", "VMware error 18"],
    },
    Case {
        name: "garbage .vmx",
        setup: |lib| {
            dropped(lib, DiskType::MonolithicSparse, |b| fs::write(b.join("VM.vmx"), b"\xff\xfe\x00garbage").unwrap())
        },
        exit: 1,
        says: &["VM.vmx", "not valid UTF-8"],
    },
    Case {
        name: "two .vmx files",
        setup: |lib| {
            dropped(lib, DiskType::MonolithicSparse, |b| {
                fs::copy(b.join("VM.vmx"), b.join("Copy.vmx")).map(drop).unwrap()
            })
        },
        exit: 1,
        says: &["VM.vmwarevm", "2 .vmx files"],
    },
    Case {
        name: "no .vmx",
        setup: |lib| dropped(lib, DiskType::MonolithicSparse, |b| fs::remove_file(b.join("VM.vmx")).unwrap()),
        exit: 1,
        says: &["VM.vmwarevm", "no .vmx"],
    },
    Case {
        name: "disk outside the bundle",
        setup: |lib| {
            let b = sample(&lib.make_base_dir(), "VM", DiskType::MonolithicSparse);
            let elsewhere = lib.tmp.path().join("elsewhere.vmdk");
            fs::rename(b.join("Virtual Disk.vmdk"), &elsewhere).unwrap();
            let e = elsewhere.to_string_lossy().into_owned();
            edit_vmx(&b, |t| t.replace("\"Virtual Disk.vmdk\"", &format!("\"{e}\"")));
            let (args, mut keep) = make_base_of(b);
            keep.push(elsewhere);
            (args, keep)
        },
        exit: 1,
        says: &["VM.vmx", "outside the bundle", "move the disk into the VM bundle"],
    },
    Case {
        name: "symlink leading outside",
        setup: |lib| {
            dropped(lib, DiskType::MonolithicSparse, |b| {
                std::os::unix::fs::symlink("/etc/passwd", b.join("notes.txt")).unwrap()
            })
        },
        exit: 1,
        says: &["notes.txt", "outside the bundle", "replace the link"],
    },
    Case {
        name: "a disk file that is a symlink inside the bundle",
        setup: |lib| {
            dropped(lib, DiskType::SplitSparse, |b| {
                fs::rename(b.join("Virtual Disk-s002.vmdk"), b.join("real-s002")).unwrap();
                std::os::unix::fs::symlink("real-s002", b.join("Virtual Disk-s002.vmdk")).unwrap();
            })
        },
        exit: 1,
        says: &["Virtual Disk-s002.vmdk", "symbolic link or not a regular file"],
    },
    Case {
        name: "a file already named like the base's .vmx",
        setup: |lib| dropped(lib, DiskType::MonolithicSparse, |b| fs::write(b.join("VM.vmx.base"), b"old").unwrap()),
        exit: 1,
        says: &["VM.vmx.base", "is in the way"],
    },
    Case {
        name: "bundle is a symlink",
        setup: |lib| {
            let real = sample(lib.tmp.path(), "VM", DiskType::MonolithicSparse);
            let link = lib.make_base_dir().join("VM.vmwarevm");
            std::os::unix::fs::symlink(&real, &link).unwrap();
            let (args, mut keep) = make_base_of(link);
            keep.push(real);
            (args, keep)
        },
        exit: 1,
        says: &["VM.vmwarevm", "symbolic link", "not an alias"],
    },
    Case {
        name: "a file, not a bundle",
        setup: |lib| {
            let f = lib.make_base_dir().join("disk.vmdk");
            fs::write(&f, b"not a vm").unwrap();
            make_base_of(f)
        },
        exit: 1,
        says: &["disk.vmdk", "not a VM bundle", ".vmwarevm"],
    },
    Case {
        name: "bundle does not exist",
        setup: |lib| make_base_of(lib.make_base_dir().join("Nothing.vmwarevm")),
        exit: 1,
        says: &["Nothing.vmwarevm", "cannot find the VM"],
    },
    Case {
        name: "base name taken",
        setup: |lib| {
            with_base(lib);
            let b = sample(&lib.make_base_dir(), "Base", DiskType::MonolithicSparse);
            let (args, mut keep) = make_base_of(b);
            keep.push(lib.base_dir("Base"));
            (args, keep)
        },
        exit: 1,
        says: &["Base.vmwarevm", "already exists", "--name"],
    },
    Case {
        name: "hidden base name",
        setup: |lib| {
            let b = sample(&lib.make_base_dir(), "VM", DiskType::MonolithicSparse);
            let (mut args, keep) = make_base_of(b);
            args.extend(["--name".into(), ".secret".into()]);
            (args, keep)
        },
        exit: 1,
        says: &["\".secret\"", "starts with a dot"],
    },
    Case {
        name: "leaf of an unknown base",
        setup: |lib| {
            with_base(lib);
            (vec!["new-leaf".into(), "Nope".into(), "Web".into()], vec![lib.root.clone()])
        },
        exit: 1,
        says: &["Bases/Nope", "no base named \"Nope\"", "known bases: Base"],
    },
    Case {
        name: "leaf name exists",
        setup: |lib| {
            let (args, keep) = new_leaf(lib, "Web");
            fs::create_dir(lib.leaf_dir("Web")).unwrap();
            (args, keep)
        },
        exit: 1,
        says: &["Web.vmwarevm", "already exists", "another name"],
    },
    Case {
        name: "empty leaf name",
        setup: |lib| new_leaf(lib, ""),
        exit: 1,
        says: &["New Leaf/Base: leaf name \"\" is empty"],
    },
    Case { name: "leaf name '..'", setup: |lib| new_leaf(lib, ".."), exit: 1, says: &["\"..\"", "not a name"] },
    Case { name: "leaf name with a slash", setup: |lib| new_leaf(lib, "a/b"), exit: 1, says: &["\"a/b\"", "slash"] },
    Case {
        name: "leaf name with a control character",
        setup: |lib| new_leaf(lib, "a\tb"),
        exit: 1,
        says: &["control characters"],
    },
    Case {
        name: "leaf name too long",
        setup: |lib| new_leaf(lib, &"x".repeat(250)),
        exit: 1,
        says: &["250 bytes long", "at most 246"],
    },
    Case {
        name: "base changed since it was made",
        setup: |lib| {
            let base = with_base(lib);
            // Someone booted the base: its CID changed.
            let p = base.join("Virtual Disk.vmdk");
            let mut f = fs::read(&p).unwrap();
            let at = f.windows(4).position(|w| w == b"CID=").unwrap() + 4;
            f[at] = if f[at] == b'0' { b'1' } else { b'0' };
            fs::write(&p, f).unwrap();
            (vec!["new-leaf".into(), "Base".into(), "Web".into()], vec![base, lib.root.clone()])
        },
        exit: 1,
        says: &["Virtual Disk.vmdk", "changed since the base was made", "leafd verify"],
    },
    Case {
        name: "usage: missing argument",
        setup: |lib| (vec!["new-leaf".into(), "Base".into()], vec![lib.root.clone()]),
        exit: 2,
        says: &["NAME"],
    },
    Case {
        name: "usage: unknown command",
        setup: |lib| (vec!["frobnicate".into()], vec![lib.root.clone()]),
        exit: 2,
        says: &["frobnicate"],
    },
];

#[test]
fn every_refusal_names_the_problem_and_changes_nothing() {
    assert!(CASES.len() >= 20);
    let mut failures = Vec::new();
    for case in CASES {
        let lib = Lib::new();
        let (args, mut keep) = (case.setup)(&lib);
        // The whole library is checked too (no half base, staging, journal or drop folder left),
        // with its empty skeleton made first so that creating it does not count as a change.
        for dir in ["New Leaf", "Bases", ".leafd/journal", ".leafd/locks"] {
            fs::create_dir_all(lib.root.join(dir)).unwrap();
        }
        // leafd keeps its own folder owner-only.
        for dir in [".leafd", ".leafd/journal", ".leafd/locks"] {
            fs::set_permissions(lib.root.join(dir), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        }
        keep.push(lib.root.clone());
        let before: Vec<Vec<String>> = keep.iter().map(|p| fingerprint_tree(p)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = lib.run(&args);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        if std::env::var_os("SHOW_REFUSALS").is_some() {
            eprintln!("--- {}\n{stderr}", case.name);
        }
        if o.status.code() != Some(case.exit) {
            failures.push(format!("{}: exit {:?}, wanted {}: {stderr}", case.name, o.status.code(), case.exit));
            continue;
        }
        for s in case.says {
            if !stderr.contains(s) {
                failures.push(format!("{}: stderr lacks {s:?}: {stderr}", case.name));
            }
        }
        if case.exit == 1 && !stderr.contains("\n  fix: ") {
            failures.push(format!("{}: no fix given: {stderr}", case.name));
        }
        let after: Vec<Vec<String>> = keep.iter().map(|p| fingerprint_tree(p)).collect();
        for (b, a) in before.iter().zip(&after) {
            let mut b = b.clone();
            let mut a = a.clone();
            // Lock files may come and go; nothing else may change.
            let own = |l: &String| l.contains("/.leafd/locks");
            b.retain(|l| !own(l));
            a.retain(|l| !own(l));
            if a != b {
                failures.push(format!("{}: input changed:\nbefore {b:#?}\nafter {a:#?}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n\n"));
}

#[test]
fn a_three_disk_vm_with_one_bad_disk_is_refused_whole() {
    let lib = Lib::new();
    let vm = SampleVm {
        name: "Multi".into(),
        disks: vec![
            SampleDisk::new("scsi0:0", "A.vmdk", DiskType::SplitSparse, 8 * MIB),
            SampleDisk::new("scsi0:1", "B.vmdk", DiskType::MonolithicSparse, 8 * MIB),
            SampleDisk::new("sata0:0", "C.vmdk", DiskType::MonolithicFlat, 8 * MIB),
        ],
    };
    let b = vm.build(&lib.make_base_dir()).unwrap();
    fs::remove_file(b.join("C-flat.vmdk")).unwrap();
    let before = fingerprint_tree(&b);
    let o = lib.run(&["make-base", b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("C-flat.vmdk"), "{}", text(&o));
    assert_eq!(fingerprint_tree(&b), before);
    assert_eq!(fs::read_dir(lib.root.join("Bases")).unwrap().count(), 0);
}
