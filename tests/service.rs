//! The login service: the macOS plan checked as data (launchd cannot run here), the Linux one
//! through the real binary with a recording stand-in for `systemctl`, and the unit file with
//! `systemd-analyze verify`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use leafd::service::{Context, ServiceKind, install_plan, launchd_plist, uninstall_plan};

fn mac() -> Context {
    Context {
        kind: ServiceKind::Launchd,
        exe: "/usr/local/bin/leafd".into(),
        root: None,
        home: "/Users/me".into(),
        log_dir: "/Users/me/Library/Logs/leafd".into(),
        config_home: "/Users/me/.config".into(),
        uid: 501,
    }
}

fn dict(bytes: &[u8]) -> plist::Dictionary {
    plist::Value::from_reader_xml(bytes).unwrap().into_dictionary().unwrap()
}

#[test]
fn the_launch_agent_has_every_key_the_service_needs() {
    let d = dict(&launchd_plist(&mac()).unwrap());
    assert_eq!(d["Label"].as_string(), Some("org.leafd.agent"));
    let args: Vec<&str> = d["ProgramArguments"].as_array().unwrap().iter().map(|v| v.as_string().unwrap()).collect();
    assert_eq!(args, ["/usr/local/bin/leafd", "agent"]);
    assert!(Path::new(args[0]).is_absolute());
    assert_eq!(d["RunAtLoad"].as_boolean(), Some(true));
    // Restarted when it fails, not after a clean exit.
    assert_eq!(d["KeepAlive"].as_dictionary().unwrap()["SuccessfulExit"].as_boolean(), Some(false));
    assert_eq!(d["ProcessType"].as_string(), Some("Background"));
    assert_eq!(d["LowPriorityIO"].as_boolean(), Some(true));
    assert!(d["ThrottleInterval"].as_unsigned_integer().unwrap() >= 10);
    assert_eq!(d["ExitTimeOut"].as_unsigned_integer(), Some(20));
    assert_eq!(d["StandardErrorPath"].as_string(), Some("/Users/me/Library/Logs/leafd/agent.stderr.log"));

    let with_root = Context { root: Some("/Volumes/VMs/My Library".into()), ..mac() };
    let d = dict(&launchd_plist(&with_root).unwrap());
    let args: Vec<&str> = d["ProgramArguments"].as_array().unwrap().iter().map(|v| v.as_string().unwrap()).collect();
    assert_eq!(args, ["/usr/local/bin/leafd", "--root", "/Volumes/VMs/My Library", "agent"]);
}

#[test]
fn the_packaged_template_is_what_install_writes() {
    let template =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("launchd/org.leafd.agent.plist")).unwrap();
    let filled =
        template.replace("@LEAFD_BIN@", "/usr/local/bin/leafd").replace("@LOG_DIR@", "/Users/me/Library/Logs/leafd");
    assert_eq!(dict(filled.as_bytes()), dict(&launchd_plist(&mac()).unwrap()));
}

#[test]
fn launchctl_is_asked_to_replace_then_to_remove() {
    let plan = install_plan(&mac()).unwrap();
    let path = PathBuf::from("/Users/me/Library/LaunchAgents/org.leafd.agent.plist");
    assert_eq!(plan.write[0].0, path);
    let run: Vec<(String, bool)> = plan.run.iter().map(|s| (s.args.join(" "), s.may_fail)).collect();
    assert_eq!(
        run,
        [
            ("launchctl bootout gui/501/org.leafd.agent".to_string(), true),
            (format!("launchctl bootstrap gui/501 {}", path.display()), false),
        ]
    );
    let plan = uninstall_plan(&mac());
    assert_eq!(plan.remove, [path]);
    assert_eq!(plan.run[0].args.join(" "), "launchctl bootout gui/501/org.leafd.agent");
    assert!(plan.write.is_empty());
}

/// A folder named `stand-ins` holding `systemctl`: a stand-in for the real one (which would
/// manage this machine's services) that records its arguments and reports the unit active.
fn systemctl_stand_in(lib: &Lib) -> PathBuf {
    let dir = lib.tmp.path().join("stand-ins");
    std::fs::create_dir_all(&dir).unwrap();
    let log = lib.tmp.path().join("systemctl.log");
    let script = format!(
        "#!/bin/sh\n# Stand-in for systemctl: records its arguments.\necho \"$*\" >> '{}'\n[ \"$2\" = is-active ] && echo active\nexit 0\n",
        log.display()
    );
    std::fs::write(dir.join("systemctl"), script).unwrap();
    std::fs::set_permissions(dir.join("systemctl"), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn with_stand_in(lib: &Lib, args: &[&str]) -> std::process::Output {
    let dir = systemctl_stand_in(lib);
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap());
    lib.command(args).env("PATH", path).output().unwrap()
}

/// Installs with another library than `lib`'s.
fn install_for(lib: &Lib, root: &Path) -> std::process::Output {
    let dir = systemctl_stand_in(lib);
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap());
    std::process::Command::new(env!("CARGO_BIN_EXE_leafd"))
        .arg("--root")
        .arg(root)
        .arg("install")
        .env("PATH", path)
        .env("HOME", lib.home())
        .env("XDG_CONFIG_HOME", lib.tmp.path().join("config"))
        .env("XDG_STATE_HOME", lib.tmp.path().join("state"))
        .output()
        .unwrap()
}

fn recorded(lib: &Lib) -> Vec<String> {
    std::fs::read_to_string(lib.tmp.path().join("systemctl.log"))
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

fn unit(lib: &Lib) -> PathBuf {
    lib.tmp.path().join("config/systemd/user/leafd.service")
}

#[test]
fn install_and_uninstall_on_linux_through_systemctl() {
    let lib = Lib::new();
    lib.base_from(&leafd::sample::SampleVm::single("Base", leafd::formats::disk::DiskType::MonolithicSparse, 8 << 20));
    let library_before = fingerprint_tree(&lib.root);

    let o = with_stand_in(&lib, &["install", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("would write") && text(&o).contains("would run: systemctl --user enable --now leafd.service"),
        "{}",
        text(&o)
    );
    assert!(!unit(&lib).exists() && recorded(&lib).is_empty(), "--dry-run changed something");

    let o = with_stand_in(&lib, &["install"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(recorded(&lib), ["--user daemon-reload", "--user enable --now leafd.service"]);
    let text_unit = std::fs::read_to_string(unit(&lib)).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_leafd")).canonicalize().unwrap();
    assert!(
        text_unit.contains(&format!("ExecStart={} --root {} agent", exe.display(), lib.root.display())),
        "{text_unit}"
    );
    assert!(text_unit.contains("Restart=on-failure") && text_unit.contains("WantedBy=default.target"));
    let o = run_tool("systemd-analyze", &["verify", unit(&lib).to_str().unwrap()]);
    assert!(o.status.success(), "systemd-analyze verify: {}", text(&o));

    let status = with_stand_in(&lib, &["status"]);
    assert!(
        text(&status).contains(&format!("service: installed (systemd user unit {}), running", unit(&lib).display())),
        "{}",
        text(&status)
    );

    let o = with_stand_in(&lib, &["uninstall"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!unit(&lib).exists());
    let calls = recorded(&lib);
    assert_eq!(calls[calls.len() - 2..], ["--user disable --now leafd.service", "--user daemon-reload"]);
    assert_eq!(
        fingerprint_tree(&lib.root).into_iter().filter(|l| !l.contains("/.leafd/")).collect::<Vec<_>>(),
        library_before.into_iter().filter(|l| !l.contains("/.leafd/")).collect::<Vec<_>>(),
        "the library was touched"
    );
    let status = with_stand_in(&lib, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["service"]["installed"], false);
}

#[test]
fn a_library_path_with_spaces_and_percent_survives_systemd_quoting() {
    let lib = Lib::new();
    let odd = lib.tmp.path().join("My 100% \"VMs\"");
    std::fs::create_dir_all(&odd).unwrap();
    let o = install_for(&lib, &odd);
    assert!(o.status.success(), "{}", text(&o));
    let o = run_tool("systemd-analyze", &["verify", unit(&lib).to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let line = std::fs::read_to_string(unit(&lib)).unwrap();
    assert!(line.contains("\"") && line.contains("100%%") && line.contains("\\\"VMs\\\""), "{line}");
}

#[test]
fn every_packaging_script_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let scripts: Vec<PathBuf> = walk(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sh") || p.file_name().is_some_and(|n| n == "postinstall"))
        .collect();
    assert!(scripts.len() >= 3, "{scripts:?}");
    for s in &scripts {
        let o = run_tool("bash", &["-n", s.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}", s.display(), text(&o));
        let o = run_tool("shellcheck", &[s.to_str().unwrap()]);
        assert!(o.status.success(), "shellcheck {}: {}", s.display(), text(&o));
    }
}
