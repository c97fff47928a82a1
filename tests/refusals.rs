//! Bad input: every refusal exits 1 (2 for bad usage), names the file and the fix, and leaves
//! the input, and the library, exactly as they were.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;

use std::any::Any;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use leafd::testing::{SampleDisk, SampleVm};
use leafd_formats::clone::create_delta;
use leafd_formats::disk::{DiskType, read_descriptor};

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

/// What a case's setup must keep alive while its command runs (a mounted volume, a writer
/// process); dropped after the case, a failing one included.
static HELD: Mutex<Vec<Box<dyn Any + Send>>> = Mutex::new(Vec::new());

fn hold(thing: impl Any + Send) {
    HELD.lock().unwrap().push(Box::new(thing));
}

fn mkfifo(p: &Path) {
    let o = run_tool("mkfifo", &[p.to_str().unwrap()]);
    assert!(o.status.success(), "mkfifo {}: {}", p.display(), text(&o));
}

/// A process holding `path` open for writing (as a copy still being written would) until it is
/// dropped; returned once the file is open.
struct Writer(Child);

impl Writer {
    fn new(path: &Path) -> Writer {
        use std::io::Read;
        let mut child = Command::new("bash")
            .arg("-c")
            .arg("exec 3>>\"$1\"; echo open; exec sleep 30")
            .arg("writer")
            .arg(path)
            .stdout(Stdio::piped())
            .spawn()
            .expect("bash");
        let mut line = [0u8; 5];
        child.stdout.take().unwrap().read_exact(&mut line).expect("the writer opens the file");
        assert_eq!(&line, b"open\n");
        Writer(child)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd`, killing it and failing after `limit`: a command that hangs (on a FIFO, say) is a
/// failed case, not a stuck test run.
fn run_within(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run leafd");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return Ok(child.wait_with_output().expect("output"));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {limit:?}: killed"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Adds disk `node` naming `file` to a bundle's `.vmx`.
fn attach(bundle: &Path, node: &str, file: &str) {
    let line = format!("{node}.fileName = \"{file}\"\n{node}.present = \"TRUE\"\n");
    edit_vmx(bundle, |t| t + &line);
}

/// Rewrites a text descriptor.
fn edit_descriptor(path: &Path, f: impl FnOnce(String) -> String) {
    let text = fs::read_to_string(path).unwrap();
    fs::write(path, f(text)).unwrap();
}

/// A sample VM whose one disk is `file`.
fn sample_named(dir: &Path, name: &str, file: &str, t: DiskType) -> PathBuf {
    SampleVm { name: name.into(), disks: vec![SampleDisk::new("scsi0:0", file, t, 8 * MIB)] }.build(dir).unwrap()
}

/// A VM in `Make Base/` whose disk's descriptor is named `file`, a name a leaf's files could
/// not carry; `vmx_name` is how the `.vmx` spells it (VMware writes `|22` for a quote). The
/// disk is written under a plain name and its descriptor renamed: leafd's own writer refuses
/// such names, and the extents keep theirs.
fn badly_named_disk(lib: &Lib, file: &str, vmx_name: &str, t: DiskType) -> (Vec<String>, Vec<PathBuf>) {
    assert!(t.is_split() || t == DiskType::MonolithicFlat, "a text descriptor");
    let b = sample_named(&lib.make_base_dir(), "VM", "Disk.vmdk", t);
    fs::rename(b.join("Disk.vmdk"), b.join(file)).unwrap();
    edit_vmx(&b, |t| t.replace("\"Disk.vmdk\"", &format!("\"{vmx_name}\"")));
    make_base_of(b)
}

const CASES: &[Case] = &[
    Case {
        name: "issue 10: links s -> . and up -> s/s/../.. lead a disk out of the bundle",
        setup: |lib| {
            // Another VM beside the library's drop folder: the attack would make it part of
            // the base (and read-only), though no path in the .vmx names anything outside.
            let other = lib.root.join("other");
            fs::create_dir(&other).unwrap();
            let victim = sample_named(&other, "Victim", "Disk.vmdk", DiskType::MonolithicSparse);
            let b = sample(&lib.make_base_dir(), "VM", DiskType::MonolithicSparse);
            std::os::unix::fs::symlink(".", b.join("s")).unwrap();
            std::os::unix::fs::symlink("s/s/../..", b.join("up")).unwrap();
            // The kernel's own resolution reaches the victim: the attack is real.
            assert_eq!(
                fs::read(b.join("up/other/Victim.vmwarevm/Disk.vmdk")).unwrap(),
                fs::read(victim.join("Disk.vmdk")).unwrap()
            );
            attach(&b, "scsi0:1", "up/other/Victim.vmwarevm/Disk.vmdk");
            let (args, mut keep) = make_base_of(b);
            keep.push(victim);
            (args, keep)
        },
        exit: 1,
        says: &["up/other/Victim.vmwarevm/Disk.vmdk", "outside", "inside the bundle"],
    },
    Case {
        name: "a disk that is a FIFO",
        setup: |lib| {
            dropped(lib, DiskType::MonolithicSparse, |b| {
                fs::remove_file(b.join("Virtual Disk.vmdk")).unwrap();
                mkfifo(&b.join("Virtual Disk.vmdk"));
            })
        },
        exit: 1,
        says: &["Virtual Disk.vmdk", "is a FIFO", "remove it from the VM bundle"],
    },
    Case {
        name: "a FIFO in the bundle",
        setup: |lib| dropped(lib, DiskType::SplitSparse, |b| mkfifo(&b.join("vmware-1.log"))),
        exit: 1,
        says: &["vmware-1.log", "is a FIFO", "remove it from the VM bundle"],
    },
    Case {
        name: "a FIFO in a bundle on another volume (which would be copied)",
        setup: |_| {
            let volume = OtherVolume::new();
            let b = sample(volume.path(), "VM", DiskType::SplitSparse);
            mkfifo(&b.join("vmware-1.log"));
            hold(volume);
            make_base_of(b)
        },
        exit: 1,
        says: &["vmware-1.log", "is a FIFO", "remove it from the VM bundle"],
    },
    Case {
        name: "a socket in the bundle",
        setup: |lib| {
            let b = sample(&lib.make_base_dir(), "VM", DiskType::MonolithicSparse);
            hold(std::os::unix::net::UnixListener::bind(b.join("vmware-vmx.sock")).unwrap());
            make_base_of(b)
        },
        exit: 1,
        says: &["vmware-vmx.sock", "is a socket", "remove it from the VM bundle"],
    },
    Case {
        name: "a disk hard-linked to a file elsewhere",
        setup: |lib| {
            let b = sample(&lib.make_base_dir(), "VM", DiskType::MonolithicSparse);
            let elsewhere = lib.tmp.path().join("backup.vmdk");
            fs::hard_link(b.join("Virtual Disk.vmdk"), &elsewhere).unwrap();
            let (args, mut keep) = make_base_of(b);
            // Its mode and attributes are checked too: it must not become read-only or carry
            // a record.
            keep.push(elsewhere);
            (args, keep)
        },
        exit: 1,
        says: &["Virtual Disk.vmdk", "has 2 names (hard links)", "copy it to break the link"],
    },
    Case {
        name: "a disk another program has open for writing",
        setup: |lib| {
            let b = sample(&lib.make_base_dir(), "VM", DiskType::SplitSparse);
            hold(Writer::new(&b.join("Virtual Disk-s002.vmdk")));
            make_base_of(b)
        },
        exit: 1,
        says: &["Virtual Disk-s002.vmdk", "open for writing by another program", "tries again by itself"],
    },
    Case {
        name: "a base disk with the content ID ffffffff",
        setup: |lib| {
            dropped(lib, DiskType::MonolithicFlat, |b| {
                edit_descriptor(&b.join("Virtual Disk.vmdk"), |d| {
                    let at = d.find("\nCID=").unwrap() + 5;
                    format!("{}ffffffff{}", &d[..at], &d[at + 8..])
                })
            })
        },
        exit: 1,
        says: &["Virtual Disk.vmdk", "content ID ffffffff", "shut it down"],
    },
    Case {
        name: "one disk attached to two nodes",
        setup: |lib| dropped(lib, DiskType::SplitSparse, |b| attach(b, "sata0:2", "Virtual Disk.vmdk")),
        exit: 1,
        says: &["VM.vmx", "attached twice", "scsi0:0", "sata0:2", "remove one of the two"],
    },
    Case {
        name: "one disk attached to two nodes under two spellings",
        setup: |lib| {
            dropped(lib, DiskType::MonolithicSparse, |b| {
                fs::create_dir(b.join("caches")).unwrap();
                attach(b, "nvme0:0", "caches/../Virtual Disk.vmdk");
            })
        },
        exit: 1,
        says: &["VM.vmx", "attached twice", "scsi0:0", "nvme0:0", "remove one of the two"],
    },
    Case {
        name: "a double quote in the base name",
        setup: |lib| {
            let b = sample(&lib.make_base_dir(), "VM", DiskType::MonolithicSparse);
            let (mut args, keep) = make_base_of(b);
            args.extend(["--name".into(), "Ubuntu \"LTS\"".into()]);
            (args, keep)
        },
        exit: 1,
        says: &["\"Ubuntu \\\"LTS\\\"\"", "double quote", "rename it"],
    },
    Case {
        name: "a descriptor of 100,000 ZERO extents",
        setup: |lib| {
            dropped(lib, DiskType::MonolithicFlat, |b| {
                edit_descriptor(&b.join("Virtual Disk.vmdk"), |d| {
                    let at = d.find("\nRW ").unwrap() + 1;
                    let end = at + d[at..].find('\n').unwrap() + 1;
                    let zeros = "RW 1 ZERO\n".repeat(100_000);
                    format!("{}{}{zeros}{}", &d[..at], &d[at..end], &d[end..])
                        .replace("monolithicFlat", "twoGbMaxExtentFlat")
                })
            })
        },
        exit: 1,
        says: &["Virtual Disk.vmdk", "100001 extents", "at most 8192", "vmware-vdiskmanager"],
    },
    Case {
        name: "a disk name with a quote, which a leaf's descriptors cannot hold",
        setup: |lib| badly_named_disk(lib, "Disk \"2\".vmdk", "Disk |222|22.vmdk", DiskType::MonolithicFlat),
        exit: 1,
        says: &["VM.vmwarevm/Disk \"2\".vmdk: no leaf of this disk could be made", "quote", "vmware-vdiskmanager -n"],
    },
    Case {
        name: "a disk name with a newline",
        setup: |lib| badly_named_disk(lib, "Disk\n2.vmdk", "Disk|0A2.vmdk", DiskType::SplitSparse),
        exit: 1,
        says: &[
            "VM.vmwarevm/Disk\n2.vmdk: no leaf of this disk could be made",
            "control character",
            "vmware-vdiskmanager -n",
        ],
    },
    Case {
        name: "a disk name too long for its leaf's delta (the delta adds -000001)",
        setup: |lib| {
            let name = format!("{}.vmdk", "d".repeat(245));
            make_base_of(sample_named(&lib.make_base_dir(), "VM", &name, DiskType::MonolithicSparse))
        },
        exit: 1,
        says: &[
            "no leaf of this disk could be made",
            "-000001.vmdk\" is 257 bytes long",
            "at most 255",
            "shorter names",
        ],
    },
    Case {
        name: "a split disk whose leaf's delta extents would be too long",
        setup: |lib| {
            let name = format!("{}.vmdk", "d".repeat(240));
            make_base_of(sample_named(&lib.make_base_dir(), "VM", &name, DiskType::SplitSparse))
        },
        exit: 1,
        says: &[
            "no leaf of this disk could be made",
            "-000001-s001.vmdk\" is 257 bytes long",
            "at most 255",
            "shorter names",
        ],
    },
    Case {
        name: "a snapshot chain whose flattened disk's leaves could not be named",
        setup: |lib| {
            // The chain and the disk it is flattened into fit; a leaf's delta of that disk
            // (`<stem>-000001-base-000001-s001.vmdk`) would not.
            let stem = "c".repeat(230);
            let b = sample_named(&lib.make_base_dir(), "VM", &format!("{stem}.vmdk"), DiskType::SplitSparse);
            let (parent, _) = read_descriptor(&env(), &b.join(format!("{stem}.vmdk"))).unwrap();
            let top = format!("{stem}-000001.vmdk");
            create_delta(&env(), &b.join(&top), &format!("{stem}.vmdk"), &parent, DiskType::SplitSparse).unwrap();
            edit_vmx(&b, |t| t.replace(&format!("\"{stem}.vmdk\""), &format!("\"{top}\"")));
            make_base_of(b)
        },
        exit: 1,
        says: &[
            "-000001.vmdk: no leaf of this disk could be made",
            "-000001-base-000001-s001.vmdk\" is 259 bytes long",
        ],
    },
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
    Case {
        // A value clap takes (negative numbers are allowed) but leafd's own check refuses: bad
        // usage too, said by leafd, not "unexpected argument".
        name: "usage: a negative settle period",
        setup: |lib| (vec!["agent".into(), "--settle".into(), "-1".into()], vec![lib.root.clone()]),
        exit: 2,
        says: &["a settle period of -1 s makes no sense", "fix: give seconds between 0 and 3600"],
    },
];

#[test]
fn every_refusal_names_the_problem_and_changes_nothing() {
    assert!(CASES.len() >= 20);
    let mut failures = Vec::new();
    for case in CASES {
        let lib = Lib::new();
        let setup = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.setup)(&lib)));
        // Held until this case is done, whatever happens.
        let _held = std::mem::take(&mut *HELD.lock().unwrap_or_else(|e| e.into_inner()));
        let (args, mut keep) = setup.unwrap_or_else(|p| std::panic::resume_unwind(p));
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
        let start = Instant::now();
        let o = match run_within(lib.command(&args), Duration::from_secs(20)) {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{}: {e}", case.name));
                continue;
            }
        };
        // A refusal is decided by looking, before anything is done: never seconds.
        if start.elapsed() > Duration::from_secs(5) {
            failures.push(format!("{}: took {:?}", case.name, start.elapsed()));
        }
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

/// Lock files may come and go; nothing else of the library may change.
fn library_state(lib: &Lib) -> Vec<String> {
    let mut t = fingerprint_tree(&lib.root);
    t.retain(|l| !l.contains("/.leafd/locks"));
    t
}

#[test]
fn a_disk_open_for_writing_is_busy_until_its_writer_exits_then_it_goes_through() {
    let lib = Lib::new();
    let b = sample(&lib.make_base_dir(), "VM", DiskType::SplitSparse);
    lib.ok(&["recover"]); // the library's own folders, made before the state is taken
    let before = library_state(&lib);
    let writer = Writer::new(&b.join("Virtual Disk-s002.vmdk"));
    let o = lib.run(&["make-base", b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("Virtual Disk-s002.vmdk: is open for writing by another program"), "{}", text(&o));
    assert_eq!(library_state(&lib), before, "nothing moved");

    // The agent takes it for a copy still under way: no error note, no red tag, tried again
    // until the writer is gone.
    let mut command = lib.command(&["agent", "--settle", "0.3"]);
    command.env("RUST_LOG", "debug").stdout(Stdio::null()).stderr(Stdio::null());
    let mut agent = Killed(command.spawn().unwrap());
    let log = lib.log_dir().join("leafd.log");
    let until = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !f() {
            assert!(Instant::now() < deadline, "{what}: {}", fs::read_to_string(&log).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    until("the agent starts", &|| fs::read_to_string(&log).unwrap_or_default().contains("agent watching"));
    std::thread::sleep(Duration::from_secs(2)); // several settle periods, several tries
    let note = lib.make_base_dir().join("VM.vmwarevm - leafd error.txt");
    assert!(!note.exists(), "a busy VM gets no error note: {}", fs::read_to_string(&note).unwrap_or_default());
    assert_eq!(xattr::get(&b, "user.xdg.tags").unwrap(), None, "nor a tag");
    let text = fs::read_to_string(&log).unwrap();
    let agent_log = text.split_once("agent watching").unwrap().1;
    let tries = agent_log.matches("is open for writing by another program").count();
    assert!(tries >= 2, "tried again and again: {agent_log}");
    assert!(!agent_log.contains("WARN"), "a busy VM is no failure: {agent_log}");
    assert!(b.join("VM.vmx").is_file() && !lib.base_dir("VM").exists(), "nothing moved while it is written");
    drop(writer);
    until("the base is made once the writer exits", &|| lib.base_dir("VM").join(".leafd/base.json").is_file());
    assert!(agent.0.try_wait().unwrap().is_none(), "the agent keeps running");
    qemu_check(&lib.base_dir("VM").join("Virtual Disk.vmdk"));
}

/// A child process killed when dropped, a failed test included.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
