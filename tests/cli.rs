//! The command line around the operations: the demo, the log, the configuration file.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use leafd::testing::SampleVm;
use leafd_formats::disk::DiskType;

#[test]
fn the_demo_runs_the_whole_flow_and_checks_it() {
    let lib = Lib::new();
    let dir = lib.tmp.path().join("demo");
    // How long it takes (under a minute) is measured by the `agent` bench, not here.
    let o = lib.command(&["demo", dir.to_str().unwrap()]).output().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for says in [
        "[3/6] dropping the VM into \"Make Base\"",
        "nothing happens while the folder is still \"untitled folder\"",
        "leafd's reader: all 5 patterns read back through the chain",
        "qemu-img check: no errors; qemu-io -r: every pattern matches",
        "leafd verify --deep: 1 base, 1 leaf checked: all good",
        "All checks passed",
    ] {
        assert!(out.contains(says), "the demo did not say {says:?}:\n{out}");
    }
    assert!(dir.join("library/Web Server.vmwarevm").is_dir());
    let log = fs::read_to_string(dir.join("logs/leafd.log")).unwrap();
    assert!(log.contains("base \"Ubuntu Demo\" made from Make Base/Ubuntu Demo.vmwarevm"), "{log}");
    // Not in an occupied folder.
    let o = lib.run(&["demo", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("is not empty"), "{}", text(&o));
}

#[test]
fn log_shows_recent_outcomes_and_follows_new_ones() {
    let lib = Lib::new();
    lib.base_from(&SampleVm::single("Base", DiskType::MonolithicSparse, 8 << 20));
    lib.ok(&["new-leaf", "Base", "One"]);
    lib.ok(&["new-leaf", "Base", "Two"]);
    let out = lib.ok(&["log", "-n", "2"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains("leaf \"One\" made from base \"Base\"") && lines[1].contains("leaf \"Two\""), "{out}");
    // One line per outcome: date, time, what happened.
    assert!(lines[1].len() > 20 && lines[1].as_bytes()[4] == b'-' && lines[1].as_bytes()[13] == b':', "{out}");
    let all = lib.ok(&["log"]);
    assert!(
        all.lines().next().unwrap().contains("base \"Base\" made from Make Base/Base.vmwarevm: 1 disk, 8.0 MiB"),
        "{all}"
    );

    let mut follow = lib.command(&["log", "-f", "-n", "1"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut reader = BufReader::new(follow.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || tx.send(line).is_err() {
                break;
            }
        }
    });
    // The last line first: then it is following.
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("log -f printed nothing");
    assert!(got.contains("leaf \"Two\" made from base \"Base\""), "{got}");
    lib.ok(&["new-leaf", "Base", "Three"]);
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("log -f did not follow");
    assert!(got.contains("leaf \"Three\" made from base \"Base\""), "{got}");
    follow.kill().unwrap();
    follow.wait().unwrap();
}

#[test]
fn the_configuration_file_and_overrides() {
    let lib = Lib::new();
    let config_dir = lib.tmp.path().join("config/leafd");
    fs::create_dir_all(&config_dir).unwrap();
    let configured = lib.tmp.path().join("configured library");
    fs::write(
        config_dir.join("config.toml"),
        format!("root = \"{}\"\nsnapshot_backend = \"native\"\npath_style = \"absolute\"\n", configured.display()),
    )
    .unwrap();
    // `lib.command` passes --root; here the root must come from the file.
    let run = |args: &[&str], env: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_leafd"));
        c.args(args)
            .env("HOME", lib.home())
            .env("XDG_CONFIG_HOME", lib.tmp.path().join("config"))
            .env("XDG_STATE_HOME", lib.tmp.path().join("state"));
        match env {
            Some(r) => c.env("LEAFD_ROOT", r),
            None => c.env_remove("LEAFD_ROOT"),
        };
        c.output().unwrap()
    };
    let bundle = SampleVm::single("Cfg", DiskType::MonolithicSparse, 8 << 20).build(lib.tmp.path()).unwrap();
    let o = run(&["make-base", bundle.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(configured.join("Bases/Cfg").is_dir(), "the root came from config.toml");
    let o = run(&["new-leaf", "Cfg", "Abs"], None);
    assert!(o.status.success(), "{}", text(&o));
    let copy = fs::read_to_string(configured.join("Abs.vmwarevm/Virtual Disk.vmdk")).unwrap();
    assert!(
        copy.contains(&format!("\"{}/Bases/Cfg/Virtual Disk.vmdk\"", configured.canonicalize().unwrap().display())),
        "path_style = absolute: {copy}"
    );
    // LEAFD_ROOT beats the file; --root beats both.
    let env_root = lib.tmp.path().join("env library");
    let o = run(&["status"], Some(env_root.to_str().unwrap()));
    assert!(text(&o).contains("env library"), "{}", text(&o));
    let o = run(&["--root", configured.to_str().unwrap(), "status"], Some(env_root.to_str().unwrap()));
    assert!(o.status.success() && text(&o).contains("base \"Cfg\""), "{}", text(&o));
    // A malformed file is an error that names it.
    fs::write(config_dir.join("config.toml"), "settle_seconds = \"soon\"\n").unwrap();
    let o = run(&["status"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("config.toml") && text(&o).contains("configuration is not valid"), "{}", text(&o));
}

/// Lines carry local time, so files are named by the local date: in a zone whose date differs
/// from UTC's now (UTC+14 or UTC-12, whichever does at this hour), that date names the file.
#[test]
fn log_files_are_named_by_the_local_date() {
    use chrono::Timelike;
    let lib = Lib::new();
    let (tz, hours) = if chrono::Utc::now().hour() >= 11 { ("LFD-14", 14) } else { ("LFD+12", -12) };
    let local = || (chrono::Utc::now() + chrono::Duration::hours(hours)).date_naive();
    let before = local();
    assert_ne!(before, chrono::Utc::now().date_naive());
    // A refused command logs its reason.
    let o = lib.command(&["new-leaf", "Nope", "Web"]).env("TZ", tz).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // Either date, should the run cross midnight.
    let names: Vec<String> = [before, local()].iter().map(|d| format!("leafd.{}.log", d.format("%Y-%m-%d"))).collect();
    let linked = fs::read_link(lib.log_dir().join("leafd.log")).unwrap().to_string_lossy().into_owned();
    assert!(names.contains(&linked), "leafd.log -> {linked}, expected one of {names:?}");
    let log = fs::read_to_string(lib.log_dir().join(&linked)).unwrap();
    assert!(log.starts_with(&linked[6..16]) && log.contains("no base named \"Nope\""), "{log}");
}
