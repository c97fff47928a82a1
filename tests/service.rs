//! The login service: both platforms' plans checked as data (launchd cannot run here), the Linux
//! one also through the real binary with a recording stand-in for `systemctl` and the unit file
//! checked by `systemd-analyze verify`; the packaged LaunchAgent template, the Homebrew formula
//! and the packaging scripts against what `leafd install` does.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use leafd::testing::service::{
    Action, Context, Program, ServiceKind, homebrew_opt, install_plan, launchd_plist, systemd_unit, uninstall_plan,
};

fn mac() -> Context {
    Context {
        kind: ServiceKind::Launchd,
        service_dir: "/Users/me/Library/LaunchAgents".into(),
        log_dir: "/Users/me/Library/Logs/leafd".into(),
        uid: 501,
    }
}

fn linux() -> Context {
    Context {
        kind: ServiceKind::Systemd,
        service_dir: "/home/me/.config/systemd/user".into(),
        log_dir: "/home/me/.local/state/leafd".into(),
        uid: 1000,
    }
}

fn leafd_at(exe: &str) -> Program {
    Program { exe: exe.into(), root: None }
}

fn dict(bytes: &[u8]) -> plist::Dictionary {
    plist::Value::from_reader_xml(bytes).expect("an XML plist").into_dictionary().expect("a dictionary")
}

fn strings(v: &plist::Value) -> Vec<&str> {
    v.as_array().expect("an array").iter().map(|v| v.as_string().expect("a string")).collect()
}

/// A plan's commands, `!` marking those whose failure is fine, `xN` those tried N times.
fn commands(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Run(s) => Some(format!(
                "{}{}{}",
                if s.fine_if_fails.is_some() { "!" } else { "" },
                s.args.join(" "),
                if s.attempts > 1 { format!(" x{}", s.attempts) } else { String::new() }
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn the_launch_agent_has_every_key_the_service_needs() {
    let d = dict(&launchd_plist(&mac(), &leafd_at("/usr/local/bin/leafd")).unwrap());
    assert_eq!(d["Label"].as_string(), Some("org.leafd.agent"));
    let args = strings(&d["ProgramArguments"]);
    assert_eq!(args, ["/usr/local/bin/leafd", "agent"]);
    assert!(Path::new(args[0]).is_absolute());
    assert_eq!(d["RunAtLoad"].as_boolean(), Some(true));
    // Restarted when it fails, not after a clean exit.
    let keep_alive = d["KeepAlive"].as_dictionary().expect("KeepAlive is a dictionary");
    assert_eq!(keep_alive.len(), 1);
    assert_eq!(keep_alive["SuccessfulExit"].as_boolean(), Some(false));
    assert_eq!(d["ProcessType"].as_string(), Some("Background"));
    assert_eq!(d["LowPriorityIO"].as_boolean(), Some(true));
    assert_eq!(d["ThrottleInterval"].as_unsigned_integer(), Some(30));
    assert_eq!(d["ExitTimeOut"].as_unsigned_integer(), Some(20));
    assert_eq!(d["StandardOutPath"].as_string(), Some("/Users/me/Library/Logs/leafd/agent.stdout.log"));
    assert_eq!(d["StandardErrorPath"].as_string(), Some("/Users/me/Library/Logs/leafd/agent.stderr.log"));

    let with_root = Program { root: Some("/Volumes/VMs/My Library".into()), ..leafd_at("/usr/local/bin/leafd") };
    let d = dict(&launchd_plist(&mac(), &with_root).unwrap());
    assert_eq!(strings(&d["ProgramArguments"]), ["/usr/local/bin/leafd", "--root", "/Volumes/VMs/My Library", "agent"]);
}

#[test]
fn the_packaged_template_is_what_install_writes() {
    let template =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("launchd/org.leafd.agent.plist")).unwrap();
    let filled =
        template.replace("@LEAFD_BIN@", "/usr/local/bin/leafd").replace("@LOG_DIR@", "/Users/me/Library/Logs/leafd");
    assert!(!filled.contains('@'), "a placeholder is left: {filled}");
    let written = dict(&launchd_plist(&mac(), &leafd_at("/usr/local/bin/leafd")).unwrap());
    assert_eq!(dict(filled.as_bytes()), written);
    for key in ["Label", "ProgramArguments", "RunAtLoad", "KeepAlive", "ProcessType", "StandardErrorPath"] {
        assert!(written.contains_key(key), "{key} is missing");
    }
}

#[test]
fn launchctl_replaces_the_agent_then_boots_it_out() {
    let path = PathBuf::from("/Users/me/Library/LaunchAgents/org.leafd.agent.plist");
    let plan = install_plan(&mac(), &leafd_at("/usr/local/bin/leafd")).unwrap();
    assert_eq!(plan.definition, path);
    // launchd does not make the folder of the output files; the plist is written before loading.
    assert_eq!(plan.actions[0], Action::MakeDir("/Users/me/Library/Logs/leafd".into()));
    assert!(matches!(&plan.actions[1], Action::Write(p, _) if *p == path));
    assert_eq!(
        commands(&plan.actions),
        [
            "!launchctl bootout gui/501/org.leafd.agent".to_string(),
            "launchctl enable gui/501/org.leafd.agent".to_string(),
            format!("launchctl bootstrap gui/501 {} x10", path.display()),
        ]
    );

    let plan = uninstall_plan(&mac());
    assert_eq!(commands(&plan.actions), ["!launchctl bootout gui/501/org.leafd.agent"]);
    assert_eq!(plan.actions.last(), Some(&Action::Remove(path)));
    assert!(!plan.actions.iter().any(|a| matches!(a, Action::Write(..) | Action::MakeDir(_))));
}

#[test]
fn systemd_stops_the_unit_before_its_file_goes_and_reloads_after() {
    let unit = PathBuf::from("/home/me/.config/systemd/user/leafd.service");
    let plan = install_plan(&linux(), &leafd_at("/usr/bin/leafd")).unwrap();
    assert!(matches!(&plan.actions[0], Action::Write(p, _) if *p == unit));
    assert_eq!(
        commands(&plan.actions),
        [
            "systemctl --user daemon-reload",
            "systemctl --user enable leafd.service",
            "systemctl --user restart leafd.service"
        ]
    );

    let plan = uninstall_plan(&linux());
    let order: Vec<String> = plan
        .actions
        .iter()
        .map(|a| match a {
            Action::Remove(p) => format!("remove {}", p.display()),
            // Stopping and forgetting what may not be there is fine.
            Action::Run(s) if s.fine_if_fails.is_some() => s.args.join(" "),
            other => panic!("uninstall must not {other:?}"),
        })
        .collect();
    assert_eq!(
        order,
        [
            "systemctl --user disable --now leafd.service".to_string(),
            format!("remove {}", unit.display()),
            "systemctl --user daemon-reload".to_string(),
        ]
    );
}

#[test]
fn a_path_that_is_not_utf8_is_refused_with_its_name() {
    let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/opt/l\xe9afd/leafd"));
    let program = Program { exe: odd.clone(), root: None };
    for err in [launchd_plist(&mac(), &program).unwrap_err(), systemd_unit(&program).unwrap_err()] {
        assert_eq!(err.path.as_deref(), Some(odd.as_path()));
        assert!(err.to_string().contains("UTF-8") && err.fix.is_some(), "{err}");
    }
}

#[test]
fn a_homebrew_keg_is_named_by_its_opt_link_which_survives_upgrades() {
    assert_eq!(
        homebrew_opt(Path::new("/opt/homebrew/Cellar/leafd/0.1.0/bin/leafd")),
        Some(PathBuf::from("/opt/homebrew/opt/leafd/bin/leafd"))
    );
    assert_eq!(
        homebrew_opt(Path::new("/home/linuxbrew/.linuxbrew/Cellar/leafd/0.2.0_1/bin/leafd")),
        Some(PathBuf::from("/home/linuxbrew/.linuxbrew/opt/leafd/bin/leafd"))
    );
    assert_eq!(homebrew_opt(Path::new("/usr/local/bin/leafd")), None);
    assert_eq!(homebrew_opt(Path::new("/opt/homebrew/Cellar/other/1.0/bin/leafd")), None);
}

/// Fails (never skips) when a tool the test needs is missing, saying how to install it.
fn require(program: &str, package: &str) {
    if let Err(e) = Command::new(program).arg("--version").output() {
        panic!("{program} is required by this test and cannot run ({e}): apt-get install -y {package}");
    }
}

/// The folder `stand-ins` holding `systemctl`: a stand-in for the real one (which would manage
/// this machine's services) that appends its arguments to `stand-ins/systemctl.log`, keeps
/// whether the unit runs in `stand-ins/running` (started by `restart`, stopped by
/// `disable --now`), and fails the subcommand named by `SYSTEMCTL_STAND_IN_FAILS`.
fn stand_ins(lib: &Lib) -> PathBuf {
    let dir = lib.tmp.path().join("stand-ins");
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "#!/bin/sh\n\
         # systemctl stand-in: records its arguments instead of managing services.\n\
         here='{}'\n\
         echo \"$*\" >> \"$here/systemctl.log\"\n\
         if [ \"$2\" = \"${{SYSTEMCTL_STAND_IN_FAILS:-}}\" ]; then echo 'Failed to connect to bus: No medium found' >&2; exit 1; fi\n\
         case \"$2 $3\" in\n\
           'restart '*) touch \"$here/running\" ;;\n\
           'disable --now') rm -f \"$here/running\" ;;\n\
           'is-active '*) if [ -e \"$here/running\" ]; then echo active; else echo inactive; exit 3; fi ;;\n\
         esac\n\
         exit 0\n",
        dir.display()
    );
    std::fs::write(dir.join("systemctl"), script).unwrap();
    std::fs::set_permissions(dir.join("systemctl"), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `exe ARGS` with `lib`'s private HOME, config and state folders and the stand-ins first on
/// the PATH; no `--root` unless given.
fn leafd_with(lib: &Lib, exe: &Path, args: &[&str]) -> Command {
    let path = format!("{}:{}", stand_ins(lib).display(), std::env::var("PATH").unwrap_or_default());
    let mut c = Command::new(exe);
    c.args(args)
        .env("PATH", path)
        .env("HOME", lib.home())
        .env("XDG_CONFIG_HOME", lib.tmp.path().join("config"))
        .env("XDG_STATE_HOME", lib.tmp.path().join("state"))
        .env_remove("LEAFD_ROOT")
        .env_remove("LEAFD_CONFIG")
        .env_remove("SYSTEMCTL_STAND_IN_FAILS");
    c
}

fn leafd_ok(lib: &Lib, args: &[&str]) -> String {
    let o = leafd_with(lib, Path::new(env!("CARGO_BIN_EXE_leafd")), args).output().unwrap();
    assert!(o.status.success(), "leafd {args:?}: {}", text(&o));
    text(&o)
}

/// The systemctl commands that change something (`leafd status` asks `is-active`).
fn recorded(lib: &Lib) -> Vec<String> {
    std::fs::read_to_string(lib.tmp.path().join("stand-ins/systemctl.log"))
        .map(|s| s.lines().filter(|l| !l.contains(" is-active ")).map(str::to_string).collect())
        .unwrap_or_default()
}

fn unit(lib: &Lib) -> PathBuf {
    lib.tmp.path().join("config/systemd/user/leafd.service")
}

/// Every file under the test's folder but the stand-ins' own, with its checksum.
fn files(lib: &Lib) -> std::collections::BTreeMap<PathBuf, String> {
    checksums(lib.tmp.path()).into_iter().filter(|(p, _)| !p.starts_with("stand-ins")).collect()
}

fn verify_unit(path: &Path) {
    require("systemd-analyze", "systemd");
    let o = run_tool("systemd-analyze", &["verify", path.to_str().unwrap()]);
    assert!(o.status.success(), "systemd-analyze verify {}: {}", path.display(), text(&o));
}

#[test]
fn install_and_uninstall_on_linux_through_systemctl() {
    let lib = Lib::new();
    lib.base_from(&leafd::testing::SampleVm::single("Base", leafd_formats::disk::DiskType::MonolithicSparse, 8 << 20));
    let root = lib.root.to_str().unwrap();
    stand_ins(&lib);
    let library_before = fingerprint_tree(&lib.root);
    let files_before = files(&lib);

    assert!(leafd_ok(&lib, &["--root", root, "status"]).contains("service: not installed (run `leafd install`)"));

    let shown = leafd_ok(&lib, &["install", "--dry-run"]);
    assert!(shown.contains(&format!("would write {}:\n[Unit]", unit(&lib).display())), "{shown}");
    assert!(shown.contains("would run: systemctl --user enable leafd.service"), "{shown}");
    assert!(recorded(&lib).is_empty(), "--dry-run ran {:?}", recorded(&lib));
    assert_eq!(files(&lib), files_before, "--dry-run wrote something");
    assert!(!lib.tmp.path().join("config").exists(), "--dry-run made a folder");

    let said = leafd_ok(&lib, &["install"]);
    assert!(said.contains("runs now and at every login"), "{said}");
    assert_eq!(recorded(&lib), ["--user daemon-reload", "--user enable leafd.service", "--user restart leafd.service"]);
    let written = std::fs::read_to_string(unit(&lib)).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_leafd")).canonicalize().unwrap();
    // Without --root the agent finds its library as every command does (config, then default).
    assert!(written.contains(&format!("\nExecStart={} agent\n", exe.display())), "{written}");
    for line in [
        "Restart=on-failure",
        "TimeoutStopSec=20",
        "KillSignal=SIGTERM",
        "IOSchedulingClass=idle",
        "WantedBy=default.target",
    ] {
        assert!(written.lines().any(|l| l == line), "{line} missing from\n{written}");
    }
    assert_eq!(std::fs::metadata(unit(&lib)).unwrap().permissions().mode() & 0o777, 0o644);
    verify_unit(&unit(&lib));

    let status = leafd_ok(&lib, &["--root", root, "status"]);
    assert!(
        status.contains(&format!("service: installed (systemd user unit {}), running", unit(&lib).display())),
        "{status}"
    );
    let v: serde_json::Value = serde_json::from_str(&leafd_ok(&lib, &["--root", root, "status", "--json"])).unwrap();
    assert_eq!(v["service"]["kind"], "systemd");
    assert_eq!(v["service"]["installed"], true);
    assert_eq!(v["service"]["running"], true);
    assert!(v["bases"].is_array(), "the library's status is still there: {v}");

    let calls = recorded(&lib).len();
    let shown = leafd_ok(&lib, &["uninstall", "--dry-run"]);
    assert!(shown.contains(&format!("would remove {}", unit(&lib).display())), "{shown}");
    assert!(unit(&lib).exists() && recorded(&lib).len() == calls, "--dry-run changed something");

    leafd_ok(&lib, &["uninstall"]);
    assert_eq!(recorded(&lib)[calls..], ["--user disable --now leafd.service", "--user daemon-reload"]);
    assert_eq!(files(&lib), files_before, "uninstall left or removed something install did not write");
    assert_eq!(fingerprint_tree(&lib.root), library_before, "the library was touched");
    let status = leafd_ok(&lib, &["--root", root, "status"]);
    assert!(status.contains("service: not installed"), "{status}");

    // Uninstalling again is harmless: there is nothing to stop and nothing to remove.
    let said = leafd_ok(&lib, &["uninstall"]);
    assert!(said.contains("was not there"), "{said}");
}

#[test]
fn paths_with_spaces_quotes_dollars_and_percent_survive_systemd_quoting() {
    let lib = Lib::new();
    // systemd-analyze checks that ExecStart's program exists: a copy of leafd in a folder with
    // a space proves its quoting.
    let exe = lib.tmp.path().join("Program Files/leafd");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    // Copied by `cp`, not std::fs::copy: a write descriptor for it in this process would be
    // inherited by any test thread's fork, and executing the copy would fail with "Text file busy".
    let copied = std::process::Command::new("cp").arg(env!("CARGO_BIN_EXE_leafd")).arg(&exe).status().unwrap();
    assert!(copied.success(), "cp leafd: {copied}");
    let odd = lib.tmp.path().join("My 100% \"VMs\" $HOME\\x");
    std::fs::create_dir_all(&odd).unwrap();

    let o = leafd_with(&lib, &exe, &["--root", odd.to_str().unwrap(), "install"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    verify_unit(&unit(&lib));
    let written = std::fs::read_to_string(unit(&lib)).unwrap();
    let tmp = lib.tmp.path().canonicalize().unwrap();
    let expected = format!(
        "ExecStart=\"{}/Program Files/leafd\" --root \"{}/My 100%% \\\"VMs\\\" $$HOME\\\\x\" agent",
        tmp.display(),
        lib.tmp.path().display()
    );
    assert!(written.lines().any(|l| l == expected), "expected {expected} in\n{written}");
}

#[test]
fn a_failing_systemctl_stops_install_naming_the_unit_and_the_fix() {
    let lib = Lib::new();
    let o = leafd_with(&lib, Path::new(env!("CARGO_BIN_EXE_leafd")), &["install"])
        .env("SYSTEMCTL_STAND_IN_FAILS", "daemon-reload")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("{}: `systemctl --user daemon-reload` failed", unit(&lib).display())), "{err}");
    assert!(
        err.contains("Failed to connect to bus") && err.contains("fix: ") && err.contains("leafd uninstall"),
        "{err}"
    );
    assert_eq!(recorded(&lib), ["--user daemon-reload"], "went on after a failure");

    // Stopping a unit that is not there is fine; uninstall goes on and removes the file.
    let o = leafd_with(&lib, Path::new(env!("CARGO_BIN_EXE_leafd")), &["uninstall"])
        .env("SYSTEMCTL_STAND_IN_FAILS", "disable")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("failed, which is fine: it was not installed"), "{}", text(&o));
    assert!(!unit(&lib).exists());
}

#[test]
fn status_reports_the_service_even_without_a_library() {
    let lib = Lib::new();
    let missing = lib.tmp.path().join("no library");
    let o: Output =
        leafd_with(&lib, Path::new(env!("CARGO_BIN_EXE_leafd")), &["--root", missing.to_str().unwrap(), "status"])
            .output()
            .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("service: not installed (run `leafd install`)"),
        "{}",
        text(&o)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("no library here"), "{}", text(&o));

    let o = leafd_with(
        &lib,
        Path::new(env!("CARGO_BIN_EXE_leafd")),
        &["--root", missing.to_str().unwrap(), "status", "--json"],
    )
    .output()
    .unwrap();
    // As JSON, one or the other: here the error, and no object for a script to take as a status.
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no library here"), "{}", text(&o));
}

#[test]
fn install_warns_when_the_service_would_not_share_a_setting() {
    let lib = Lib::new();
    let homebrew = lib.tmp.path().join("config/systemd/user/homebrew.leafd.service");
    std::fs::create_dir_all(homebrew.parent().unwrap()).unwrap();
    std::fs::write(&homebrew, "[Service]\n").unwrap();
    let o = leafd_with(&lib, Path::new(env!("CARGO_BIN_EXE_leafd")), &["install", "--dry-run"])
        .env("LEAFD_ROOT", &lib.root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("LEAFD_ROOT is set here, but the service will not see it"), "{err}");
    assert!(err.contains("Homebrew's service for leafd is installed too"), "{err}");
}

#[test]
fn the_homebrew_service_runs_what_install_runs() {
    let formula =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/homebrew/leafd.rb")).unwrap();
    for line in [
        "depends_on \"rust\" => :build",
        "system \"cargo\", \"install\", *std_cargo_args",
        "run [opt_bin/\"leafd\", \"agent\"]",
        "keep_alive successful_exit: false",
        "process_type :background",
        "throttle_interval 30",
        // The licence every Cargo.toml declares, the completions and the manual pages.
        "license any_of: [\"MIT\", \"Apache-2.0\"]",
        "generate_completions_from_executable(bin/\"leafd\", \"completions\", shells: [:bash, :zsh, :fish])",
        "system bin/\"leafd\", \"man\", man1",
    ] {
        assert!(formula.lines().any(|l| l.trim() == line), "{line} missing from the formula");
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for manifest in ["Cargo.toml", "formats/Cargo.toml", "fuzz/Cargo.toml"] {
        let text = std::fs::read_to_string(dir.join(manifest)).unwrap();
        assert!(text.lines().any(|l| l == "license = \"MIT OR Apache-2.0\""), "{manifest} declares no licence");
    }
    for file in ["LICENSE-MIT", "LICENSE-APACHE"] {
        assert!(std::fs::metadata(dir.join(file)).is_ok_and(|m| m.len() > 1000), "{file} is missing");
    }
}

/// Every shell script under packaging/ (found by its `#!` line, so none is missed) is executable
/// (pkgbuild runs its scripts as they are) and passes `bash -n` and ShellCheck.
#[test]
fn every_packaging_script_passes_bash_n_and_shellcheck() {
    require("shellcheck", "shellcheck");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let shell = |p: &PathBuf| {
        std::fs::read_to_string(p)
            .is_ok_and(|t| t.lines().next().is_some_and(|l| l.starts_with("#!") && l.ends_with("sh")))
    };
    let scripts: Vec<PathBuf> = walk(&dir).into_iter().filter(|p| p.is_file() && shell(p)).collect();
    assert!(scripts.len() >= 3, "{scripts:?}");
    for s in &scripts {
        let mode = std::fs::metadata(s).unwrap().permissions().mode();
        assert!(mode & 0o111 == 0o111, "{} is not executable (chmod +x)", s.display());
        let o = run_tool("bash", &["-n", s.to_str().unwrap()]);
        assert!(o.status.success(), "bash -n {}: {}", s.display(), text(&o));
        let o = run_tool("shellcheck", &[s.to_str().unwrap()]);
        assert!(o.status.success(), "shellcheck {}: {}", s.display(), text(&o));
        let head = std::fs::read_to_string(s).unwrap();
        assert!(head.contains("untested on Linux CI; run on a Mac"), "{} must say where it runs", s.display());
    }
}
