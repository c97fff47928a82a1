//! The macOS install and uninstall carried out (not only planned) against a recording stand-in
//! for `launchctl`, which cannot exist here. A test binary of its own: it puts the stand-in first
//! on this process's PATH, which no other test may share.

#![allow(unused_crate_dependencies)] // every dependency of the package reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use leafd::testing::service::{Context, Program, ServiceKind, execute, install_plan, uninstall_plan};

/// `launchctl` stand-in: records its arguments; `bootout` fails as when nothing was loaded, and
/// `bootstrap` fails twice (launchd still tearing the old job down) before it works.
fn stand_in(dir: &Path) {
    let script = format!(
        "#!/bin/bash\n\
         # launchctl stand-in: records its arguments instead of talking to launchd.\n\
         echo \"$*\" >> '{log}'\n\
         case \"$1\" in\n\
           bootout) echo 'Boot-out failed: 3: No such process' >&2; exit 3 ;;\n\
           bootstrap)\n\
             n=$(grep -c '^bootstrap' '{log}')\n\
             if [ \"$n\" -le 2 ]; then echo 'Bootstrap failed: 5: Input/output error' >&2; exit 5; fi ;;\n\
         esac\n",
        log = dir.join("launchctl.log").display()
    );
    std::fs::write(dir.join("launchctl"), script).unwrap();
    std::fs::set_permissions(dir.join("launchctl"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn install_retries_bootstrap_and_tolerates_a_missing_job_then_uninstall_undoes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("stand-ins");
    std::fs::create_dir(&bin).unwrap();
    stand_in(&bin);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    // SAFETY: the only test in this binary, and it has started no threads yet.
    unsafe { std::env::set_var("PATH", path) };
    let ctx = Context {
        kind: ServiceKind::Launchd,
        service_dir: tmp.path().join("LaunchAgents"),
        log_dir: tmp.path().join("Logs/leafd"),
        uid: 501,
    };
    let program = Program { exe: "/usr/local/bin/leafd".into(), root: None };

    let plan = install_plan(&ctx, &program).unwrap();
    let mut out = Vec::new();
    execute(&plan, false, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    let plist = ctx.service_dir.join("org.leafd.agent.plist");
    let written = std::fs::read(&plist).unwrap();
    plist::Value::from_reader_xml(&written[..]).expect("the written plist parses");
    assert_eq!(std::fs::metadata(&plist).unwrap().permissions().mode() & 0o777, 0o644);
    assert!(ctx.log_dir.is_dir(), "launchd does not create the log folder itself");
    assert!(out.contains("failed, which is fine: it was not loaded"), "{out}");
    let log = || std::fs::read_to_string(bin.join("launchctl.log")).unwrap();
    let job = "gui/501/org.leafd.agent";
    let bootstrap = format!("bootstrap gui/501 {}", plist.display());
    assert_eq!(
        log().lines().collect::<Vec<_>>(),
        [&format!("bootout {job}"), &format!("enable {job}"), &bootstrap, &bootstrap, &bootstrap]
    );

    std::fs::remove_file(bin.join("launchctl.log")).unwrap();
    let mut out = Vec::new();
    execute(&uninstall_plan(&ctx), false, &mut out).unwrap();
    assert!(!plist.exists(), "the LaunchAgent stays after uninstall");
    assert_eq!(log().lines().collect::<Vec<_>>(), [format!("bootout {job}")]);
    assert!(ctx.log_dir.is_dir(), "uninstall removed the logs");
}
