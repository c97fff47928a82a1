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

/// Runs `args` without `--root`, with `lib`'s private HOME, config and log folder.
fn run_plain(lib: &Lib, args: &[&str]) -> std::process::Output {
    lib.command_without_root(args).output().unwrap()
}

#[test]
fn the_demo_runs_the_whole_flow_and_checks_it() {
    let lib = Lib::new();
    let dir = lib.tmp.path().join("demo");
    // How long it takes (under a minute) is measured by the `agent` bench, not here.
    let o = run_plain(&lib, &["demo", dir.to_str().unwrap()]);
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
    let library = dir.canonicalize().unwrap().join("library");
    assert!(library.join("Web Server.vmwarevm").is_dir());
    // It ends with commands that work as given, with no leafd on the PATH: this binary's path.
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_leafd")).canonicalize().unwrap();
    let said = |what: &str| {
        out.lines().find_map(|l| l.trim().strip_prefix(what)).unwrap_or_else(|| panic!("{out}")).trim().to_string()
    };
    let status = said("its status:");
    assert_eq!(status, format!("'{}' --root '{}' status", exe.display(), library.display()));
    // In a shell whose PATH has no leafd, with the test's private HOME and log folder.
    let sh = |line: &str| {
        let mut c = std::process::Command::new("sh");
        c.arg("-c").arg(line).env("PATH", "/usr/bin:/bin");
        for (k, v) in lib.command_without_root(&[]).get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.output().unwrap()
    };
    let o = sh(&status);
    assert!(o.status.success() && text(&o).contains("base \"Ubuntu Demo\""), "{status}: {}", text(&o));
    // The demo's own results are in the log of the demo's library: the agent's and its own.
    let o = sh(&said("its log:"));
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    let label = format!("[{}] ", library.display());
    for line in [
        "agent watching",
        "base \"Ubuntu Demo\" made from Make Base/Ubuntu Demo.vmwarevm",
        "leaf \"Web Server\" made",
        "demo: all checks passed",
    ] {
        assert!(log.lines().any(|l| l.contains(&label) && l.contains(line)), "no {line:?} in:\n{log}");
    }
    // Not in an occupied folder, nor in a file.
    let o = run_plain(&lib, &["demo", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("is not empty") && text(&o).contains("fix: give the demo an empty or new folder"),
        "{}",
        text(&o)
    );
    let file = lib.tmp.path().join("a file");
    fs::write(&file, b"not a folder").unwrap();
    let o = run_plain(&lib, &["demo", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("a file: is a file, not a folder\n  fix: give the demo an empty or new folder"),
        "{}",
        text(&o)
    );
}

/// `leafd --root LIB demo` makes the demo's library at LIB (new or empty), and nowhere else.
#[test]
fn the_demo_honours_root() {
    let lib = Lib::new();
    let root = lib.tmp.path().join("demo library");
    let o = run_plain(&lib, &["--root", root.to_str().unwrap(), "demo"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(root.join("Bases/Ubuntu Demo").is_dir() && root.join("Web Server.vmwarevm").is_dir());
    let hidden: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".demo"))
        .collect();
    assert!(hidden.is_empty(), "the sample's folder was left: {hidden:?}");
    let log = String::from_utf8(run_plain(&lib, &["--root", root.to_str().unwrap(), "log"]).stdout).unwrap();
    assert!(log.contains("demo: all checks passed") && log.contains("leaf \"Web Server\" made"), "{log}");
    // The library it names must be new or empty: never a library in use.
    let o = run_plain(&lib, &["--root", root.to_str().unwrap(), "demo"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("is not empty\n  fix: give --root an empty or new folder"), "{}", text(&o));
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

/// One log for every library, each line naming its library: `leafd log` shows the library's
/// that --root (or the default) names, `--all` every library's; a warning says which library
/// and what.
#[test]
fn the_log_names_the_library_on_every_line() {
    let lib = Lib::new();
    let other = Lib { tmp: tempfile::tempdir().unwrap(), root: lib.tmp.path().join("other library") };
    fs::create_dir_all(other.root.join("Make Base")).unwrap();
    lib.base_from(&SampleVm::single("Mine", DiskType::MonolithicSparse, 8 << 20));
    // The other library, logging into the same user's log.
    let bundle =
        SampleVm::single("Theirs", DiskType::MonolithicSparse, 8 << 20).build(&other.root.join("Make Base")).unwrap();
    let o = run_plain(&lib, &["--root", other.root.to_str().unwrap(), "make-base", bundle.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let (mine, theirs) = (format!("[{}] ", lib.root.display()), format!("[{}] ", other.root.display()));
    let log = lib.ok(&["log"]);
    assert!(log.lines().count() >= 1 && log.lines().all(|l| l[20..].starts_with(&mine)), "{log}");
    assert!(log.contains("base \"Mine\" made") && !log.contains("Theirs"), "{log}");
    let o = run_plain(&lib, &["--root", other.root.to_str().unwrap(), "log"]);
    let log = String::from_utf8(o.stdout).unwrap();
    assert!(log.contains(&format!("{theirs}base \"Theirs\" made")) && !log.contains("Mine"), "{log}");
    let all = String::from_utf8(run_plain(&lib, &["log", "--all"]).stdout).unwrap();
    assert!(all.contains("base \"Mine\" made") && all.contains("base \"Theirs\" made"), "{all}");
    // --all with --root contradicts itself.
    assert_eq!(lib.run(&["log", "--all"]).status.code(), Some(2));
    // The default library is labelled with ~ for the home folder; a refusal is logged there.
    let o = run_plain(&lib, &["new-leaf", "Nope", "Web"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let log = String::from_utf8(run_plain(&lib, &["log"]).stdout).unwrap();
    assert!(log.contains("[~/vmware] WARN ") && log.contains("no base named \"Nope\""), "{log}");
    // A problem verify finds: which library, and what.
    fs::remove_file(lib.base_dir("Mine").join("Virtual Disk.vmdk")).unwrap();
    assert_eq!(lib.run(&["verify"]).status.code(), Some(1));
    let warned = lib.ok(&["log", "-n", "1"]);
    let disk = lib.base_dir("Mine").join("Virtual Disk.vmdk");
    assert!(warned[20..].starts_with(&format!("{mine}WARN verify found ")), "{warned}");
    assert!(warned.contains(&format!("problem(s): {}", disk.display())), "{warned}");
}

/// Each with what is wrong and how to fix it, said once, and nothing half done.
#[test]
fn errors_say_what_is_wrong_and_how_to_fix_it() {
    let lib = Lib::new();
    // --root (or LEAFD_ROOT) naming a file: status and the agent say so, and which to change.
    let file = lib.tmp.path().join("not a library");
    fs::write(&file, b"a file").unwrap();
    for args in [&["status"][..], &["status", "--json"], &["agent"]] {
        let mut all = vec!["--root", file.to_str().unwrap()];
        all.extend(args);
        let o = run_plain(&lib, &all);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        let said = format!(
            "leafd: {}: is a file, not a library folder (--root names it)\n  fix: give --root the library's folder\n",
            file.display()
        );
        assert_eq!(String::from_utf8_lossy(&o.stderr), said, "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}: {}", text(&o));
    }
    let o = lib.command_without_root(&["status"]).env("LEAFD_ROOT", &file).output().unwrap();
    assert!(text(&o).contains("(LEAFD_ROOT names it)\n  fix: set LEAFD_ROOT to the library's folder"), "{}", text(&o));
    // `status --json` of a missing library: the error alone, no JSON on stdout.
    let o = run_plain(&lib, &["--root", lib.tmp.path().join("missing").to_str().unwrap(), "status", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty() && text(&o).contains("no library here"), "{}", text(&o));
    // LEAFD_CONFIG naming a file that is not there: an error, not the defaults.
    let missing = lib.tmp.path().join("leafd.toml");
    let o = lib.command(&["status"]).env("LEAFD_CONFIG", &missing).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "{}: LEAFD_CONFIG names this configuration file, which does not exist",
            missing.display()
        )),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("fix: create it, correct LEAFD_CONFIG, or unset it"), "{}", text(&o));
    // A broken config.toml stops the commands it configures, but not `log` nor `uninstall`.
    lib.base_from(&SampleVm::single("Cfg", DiskType::MonolithicSparse, 8 << 20));
    let config = lib.tmp.path().join("config/leafd");
    fs::create_dir_all(&config).unwrap();
    fs::write(config.join("config.toml"), "root = [\n").unwrap();
    let o = lib.run(&["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("configuration is not valid"), "{}", text(&o));
    for args in [&["log"][..], &["uninstall", "--dry-run"]] {
        let o = if args[0] == "log" { lib.run(args) } else { run_plain(&lib, args) };
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.starts_with("leafd: warning: ") && stderr.contains("configuration is not valid"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("ignored here"), "{args:?}: {stderr}");
    }
    assert!(lib.ok(&["log"]).contains("base \"Cfg\" made"));
    // --root where there is no library to name.
    let o = lib.run(&["uninstall", "--dry-run"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("works on no library, so --root means nothing to it"), "{}", text(&o));
}

/// "Of its own" is one number: what the log says a new leaf has of its own is what `status`
/// says (every file of its bundle, not its deltas alone), and `--json` gives it in bytes.
#[test]
fn a_leaf_has_the_same_bytes_of_its_own_in_the_log_and_in_status() {
    let lib = Lib::new();
    lib.base_from(&SampleVm::single("Base", DiskType::SplitSparse, 64 << 20));
    let made = lib.ok(&["new-leaf", "Base", "Web"]);
    let figure = |line: &str| line.split(", ").find_map(|p| p.strip_suffix(" of its own")).map(str::to_string);
    let logged = lib.ok(&["log", "-n", "1"]);
    let in_log = figure(logged.trim()).unwrap_or_else(|| panic!("{logged}"));
    assert_eq!(figure(made.trim()).as_deref(), Some(in_log.as_str()), "{made}");
    let status = lib.ok(&["status"]);
    let line = status.lines().find(|l| l.contains("leaf \"Web\"")).unwrap();
    let words: Vec<&str> = line.trim_end().strip_suffix(" of its own").unwrap().split_whitespace().collect();
    assert_eq!(words[words.len() - 2..].join(" "), in_log, "{status}");
    // In bytes: what every entry of the bundle occupies, as the file system counts it.
    use std::os::unix::fs::MetadataExt;
    let on_disk: u64 = walk(&lib.leaf_dir("Web")).iter().map(|p| p.symlink_metadata().unwrap().blocks() * 512).sum();
    let json: serde_json::Value = serde_json::from_str(&lib.ok(&["status", "--json"])).unwrap();
    assert_eq!(json["bases"][0]["leaves"][0]["own_bytes"], on_disk, "{json}");
}

/// `leafd completions bash` completes commands and flags in a real bash; zsh's and fish's
/// scripts are what those shells load; `leafd man` renders with groff, and `leafd man DIR`
/// writes a page per command: what the Homebrew formula installs.
#[test]
fn completions_and_manual_pages() {
    let lib = Lib::new();
    let script = lib.tmp.path().join("leafd.bash");
    let o = run_plain(&lib, &["completions", "bash"]);
    assert!(o.status.success(), "{}", text(&o));
    fs::write(&script, &o.stdout).unwrap();
    let complete = |words: &str| {
        let line = format!(
            "source '{}'; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; _leafd leafd \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let o = std::process::Command::new("bash").arg("-c").arg(&line).output().unwrap();
        assert!(o.status.success(), "{words}: {}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(complete("leafd remove-b").trim(), "remove-base");
    assert!(
        complete("leafd remove-base --d").lines().any(|l| l == "--delete"),
        "{}",
        complete("leafd remove-base --d")
    );
    let shells: Vec<String> =
        complete("leafd completions ''").lines().filter(|l| !l.starts_with('-')).map(String::from).collect();
    assert_eq!(shells, ["bash", "zsh", "fish"]);
    let zsh = String::from_utf8(run_plain(&lib, &["completions", "zsh"]).stdout).unwrap();
    assert!(zsh.starts_with("#compdef leafd") && zsh.contains("remove-base"), "{zsh}");
    let fish = String::from_utf8(run_plain(&lib, &["completions", "fish"]).stdout).unwrap();
    assert!(fish.contains("complete -c leafd") && fish.contains("-l delete"), "{fish}");
    assert_eq!(run_plain(&lib, &["completions", "tcsh"]).status.code(), Some(2));

    let page = run_plain(&lib, &["man"]);
    assert!(page.status.success(), "{}", text(&page));
    let mut groff = std::process::Command::new("groff")
        .args(["-man", "-Tutf8", "-P-cbou"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("groff is required by this test (apt-get install -y groff-base)");
    std::io::Write::write_all(&mut groff.stdin.take().unwrap(), &page.stdout).unwrap();
    let shown = String::from_utf8(groff.wait_with_output().unwrap().stdout).unwrap();
    for says in ["leafd - VMware linked clones as easy as making a folder", "remove-base", "--root", "completions"] {
        assert!(shown.contains(says), "the manual page does not say {says:?}:\n{shown}");
    }
    let man1 = lib.tmp.path().join("man1");
    let o = run_plain(&lib, &["man", man1.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let remove = fs::read_to_string(man1.join("leafd-remove-base.1")).unwrap();
    assert!(remove.contains("delete") && remove.contains("Delete it for good instead"), "{remove}");
    assert!(man1.join("leafd.1").is_file() && man1.join("leafd-agent.1").is_file());
}
