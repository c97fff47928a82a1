//! Writes the seed corpora under `fuzz/corpus/<target>/seed-*`. Run from `fuzz/`:
//! `cargo run --example make_seeds`. Every seed is small (the whole set is well under 1 MiB per
//! target). The `disk_open` seeds use the target's file separator.

#[allow(dead_code)] // only the separator is needed here
#[path = "../checks.rs"]
mod checks;

use std::path::Path;

use checks::SEPARATOR;

use leafd_formats::StdEnv;
use leafd_formats::disk::{self, Disk, DiskType, NewDisk};
use leafd_formats::sparse::Header;

const SPLIT_DESCRIPTOR: &str = "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=242293ca\nparentCID=ffffffff\n\
createType=\"twoGbMaxExtentSparse\"\n\n# Extent description\nRW 4192256 SPARSE \"8.10 Core-s001.vmdk\"\n\
RW 20480 SPARSE \"8.10 Core-s002.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"7\"\n\
ddb.uuid = \"60 00 C2 99 ab ce aa 92-d3 3e 55 a9 30 e7 c6 dd\"\nddb.geometry.cylinders = \"2610\"\n\
ddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"lsilogic\"\nddb.toolsVersion = \"7460\"\n";

const DELTA_DESCRIPTOR: &str = "# Disk DescriptorFile\r\nversion=1\r\nencoding=\"UTF-8\"\r\nCID=fffffffe\r\nparentCID=242293ca\r\n\
isNativeSnapshot=\"no\"\r\ncreateType=\"monolithicSparse\"\r\nparentFileNameHint=\"/Users/me/VMs/Base.vmwarevm/Virtual Disk.vmdk\"\r\n\
\r\n# Extent description\r\nRW 41943040 SPARSE \"Virtual Disk-000001.vmdk\"\r\n\r\n# The Disk Data Base\r\n#DDB\r\n\r\n\
ddb.longContentID = \"0123456789abcdef0123456789abcdef\"\r\nddb.deletable = \"false\"";

const FLAT_DESCRIPTOR: &str = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\
RW 2048 FLAT \"a b-flat.vmdk\" 0\nRDONLY 100 ZERO\nNOACCESS 8 FLAT \"x.vmdk\" 4\n# The Disk Data Base\nddb.adapterType = \"ide\"\n";

const VMX: &str = ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"21\"\ndisplayName = \"Ubuntu |22LTS|22\"\n\
guestOS = \"ubuntu-64\"\nmemsize = \"4096\"\nnumvcpus = \"2\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"lsilogic\"\n\
scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"Virtual Disk.vmdk\"\nsata0.present = \"TRUE\"\nsata0:1.present = \"TRUE\"\n\
sata0:1.deviceType = \"cdrom-image\"\nsata0:1.fileName = \"/iso/ubuntu.iso\"\nnvme0.present = \"FALSE\"\nnvme0:0.present = \"TRUE\"\n\
nvme0:0.fileName = \"Other.vmdk\"\nide0:0.present = \"TRUE\"\nide0:0.fileName = \"/abs/Ide Disk.vmdk\"\n\
ethernet0.addressType = \"generated\"\nethernet0.generatedAddress = \"00:0c:29:12:34:56\"\nuuid.bios = \"56 4d 12 34 56 78 9a bc-de f0 12 34 56 78 9a bc\"\n\
# a comment\n\nchecksum = \"unquoted\"\n";

const VMSD: &str = ".encoding = \"UTF-8\"\r\nsnapshot.lastUID = \"1\"\r\nsnapshot.current = \"1\"\r\nsnapshot0.uid = \"1\"\r\n\
snapshot0.filename = \"Ubuntu-Snapshot1.vmsn\"\r\nsnapshot0.displayName = \"leafd base\"\r\nsnapshot0.createTimeHigh = \"398561\"\r\n\
snapshot0.createTimeLow = \"-1297462880\"\r\nsnapshot0.numDisks = \"1\"\r\nsnapshot0.disk0.fileName = \"Virtual Disk.vmdk\"\r\n\
snapshot0.disk0.node = \"scsi0:0\"\r\nsnapshot.numSnapshots = \"1\"";

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

/// A monolithicSparse disk of `sectors` made by leafd, optionally a delta of `parent`, with
/// `patterns` of (offset, len, byte) written through `Disk::write_at`.
fn sparse_disk(
    tmp: &Path,
    name: &str,
    sectors: u64,
    parent: Option<(&str, u32)>,
    patterns: &[(u64, usize, u8)],
) -> Vec<u8> {
    let path = tmp.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    let env = StdEnv::shared();
    disk::create(&env, &NewDisk {
        path: &path,
        disk_type: DiskType::MonolithicSparse,
        extents: vec![sectors],
        cid: 0x1234_5678 + sectors as u32,
        parent,
        ddb: vec![("ddb.adapterType".into(), "lsilogic".into())],
    })
    .unwrap();
    if !patterns.is_empty() {
        let d = Disk::open_writable(&env, &path).unwrap();
        for &(offset, len, byte) in patterns {
            d.write_at(offset, &vec![byte; len]).unwrap();
        }
        d.sync().unwrap();
    }
    std::fs::read(&path).unwrap()
}

fn join(files: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(SEPARATOR);
        }
        out.extend_from_slice(f);
    }
    out
}

fn main() {
    let tmp = std::env::temp_dir().join(format!("leafd-make-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();

    // descriptor
    write("descriptor", "split-sparse", SPLIT_DESCRIPTOR.as_bytes());
    write("descriptor", "delta-crlf", DELTA_DESCRIPTOR.as_bytes());
    write("descriptor", "flat-zero", FLAT_DESCRIPTOR.as_bytes());
    let mono = sparse_disk(&tmp, "fuzz.vmdk", 2048, None, &[]);
    write("descriptor", "embedded", &mono[512..512 + 20 * 512]);

    // dict
    write("dict", "vmx", VMX.as_bytes());
    write("dict", "vmsd-crlf", VMSD.as_bytes());
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend_from_slice("displayName = \"Caf\u{e9} \u{65e5}\u{672c}\"\n.encoding = \"UTF-8\"\n".as_bytes());
    write("dict", "bom", &bom);
    write(
        "dict",
        "windows-1252",
        b".encoding = \"windows-1252\"\ndisplayName = \"Caf\xe9 \x80\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"D\xefsk.vmdk\"\n",
    );
    write(
        "dict",
        "shift-jis",
        b".encoding = \"Shift_JIS\"\ndisplayName = \"\x93\xfa\x96\x7b\"\n",
    );

    // VMware-shaped files in every code page and line ending (tests/fixtures/vmware, issue 14).
    let fixtures = Path::new("../tests/fixtures/vmware");
    let fixture = |dir: &str, file: &str| std::fs::read(fixtures.join(dir).join(file)).unwrap();
    for (dir, stem) in [
        ("enc-gbk-ws17", "CentOS 7 64 位"),
        ("enc-big5-ws16", "功能測試 CentOS 7 64 位元"),
        ("enc-shift_jis-ws17", "ソフト開発 Ubuntu 64 ビット"),
        ("enc-windows-949-2000-ws17", "테스트 서버 Ubuntu 64비트"),
        ("enc-windows-1252-ws16", "Büro-PC Windows 10 (Comptabilité)"),
    ] {
        write("descriptor", dir, &fixture(dir, &format!("{stem}.vmdk")));
        write("dict", dir, &fixture(dir, &format!("{stem}.vmx")));
    }
    for (name, dir, file) in [
        ("ddb-encoding-only", "disk-ddb-encoding-only", "Entwicklung Büro.vmdk"),
        ("trailing-spaces", "disk-trailing-spaces", "fileserver.vmdk"),
        ("crlf-windows-1252", "ws17-windows-crlf", "Windows 10 x64.vmdk"),
        ("rdm-version-3", "disk-esxi-rdm", "SQL01_3.vmdk"),
        ("windows-parent", "vagrant-linked-clone-windows", "disk-cl1.vmdk"),
    ] {
        write("descriptor", name, &fixture(dir, file));
    }
    for (name, dir, file) in [
        ("no-final-newline-crlf", "ws16-windows-notepad-no-final-newline", "Ubuntu 64-bit.vmx"),
        ("shebang-no-encoding", "ws55-no-encoding-blank-lines", "Windows XP Professional.vmx"),
        ("lower-case-keys", "packer-vagrant-lowercase", "packer-ubuntu-22.04-amd64.vmx"),
        ("backslash-paths", "ws17-windows-subfolder-backslash", "Dev Box.vmx"),
        ("vmsd-three-snapshots", "ws17-three-snapshots", "Ubuntu 24.04.vmsd"),
    ] {
        write("dict", name, &fixture(dir, file));
    }

    // sparse_header: the 512 header bytes, then the file length as a little-endian u64.
    for (name, capacity, embedded) in [
        ("new-20m-embedded", 40960u64, true),
        ("new-8g", 16_777_216, false),
        ("new-odd", 1000, true),
    ] {
        let h = Header::new(capacity, embedded);
        let layout = leafd_formats::sparse::Layout::new(capacity, embedded);
        let mut b = h.to_bytes().to_vec();
        b.extend_from_slice(&layout.file_len().to_le_bytes());
        write("sparse_header", name, &b);
    }
    let mut b = mono[..512].to_vec();
    b.extend_from_slice(&(mono.len() as u64).to_le_bytes());
    write("sparse_header", "leafd-mono", &b);

    // disk_open: a monolithicSparse with data; a delta over a parent; a text descriptor with a
    // sparse and a flat extent.
    let base = sparse_disk(
        &tmp,
        "f1.vmdk",
        2048,
        None,
        &[(0, 4096, 0x11), (65536 - 512, 1024, 0x22)],
    );
    let mono = sparse_disk(&tmp, "mono/fuzz.vmdk", 2048, None, &[(0, 4096, 0x11), (65536 - 512, 1024, 0x22)]);
    write("disk_open", "mono", &mono);
    let delta = sparse_disk(
        &tmp,
        "fuzz.vmdk",
        2048,
        Some(("f1.vmdk", 0x1234_5678 + 2048)),
        &[(512, 512, 0x44)],
    );
    write("disk_open", "delta", &join(&[&delta, &base]));
    let ext = {
        let p = tmp.join("ext.vmdk");
        let _ = std::fs::remove_file(&p);
        leafd_formats::sparse::create_empty(&StdEnv::shared(), &p, 256, None).unwrap();
        std::fs::read(&p).unwrap()
    };
    let text = "# Disk DescriptorFile\nversion=1\nCID=0000abcd\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n\
RW 256 SPARSE \"f1.vmdk\"\nRW 128 ZERO\n";
    write("disk_open", "split-sparse", &join(&[text.as_bytes(), &ext]));
    let text = "# Disk DescriptorFile\nversion=1\nCID=0000abcd\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\
RW 8 FLAT \"f1.vmdk\" 0\nRW 8 FLAT \"f2.vmdk\" 2\n";
    write("disk_open", "flat", &join(&[text.as_bytes(), &[0x55; 4096], &[0x66; 5120]]));
    // Small text-only disks, so the fuzzer also spends time on descriptors and chains.
    let text = "CID=0000abcd\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 64 ZERO\nNOACCESS 8 ZERO\nRDONLY 8 FLAT \"f1.vmdk\" 1\n";
    write("disk_open", "zero-flat", &join(&[text.as_bytes(), &[0x77; 4608]]));
    let child = "CID=00000002\nparentCID=00000001\ncreateType=\"monolithicFlat\"\nparentFileNameHint=\"f1.vmdk\"\nRW 16 FLAT \"f2.vmdk\"\n";
    let parent = "CID=00000001\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\nRW 8 ZERO\nRW 8 FLAT \"f2.vmdk\" 0\n";
    write("disk_open", "flat-chain", &join(&[child.as_bytes(), parent.as_bytes(), &[0x88; 8192]]));

    // The same from QEMU, whose embedded descriptor differs in layout (skipped without qemu-img).
    let q = tmp.join("q").join("fuzz.vmdk");
    std::fs::create_dir_all(q.parent().unwrap()).unwrap();
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let q_str = q.to_str().unwrap();
    if run("qemu-img", &["create", "-q", "-f", "vmdk", q_str, "1M"])
        && run("qemu-io", &["-f", "vmdk", "-c", "write -P 0x11 0 4096", q_str])
    {
        write("disk_open", "qemu-mono", &std::fs::read(&q).unwrap());
    } else {
        eprintln!("qemu-img/qemu-io failed: no seed-qemu-mono");
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}
