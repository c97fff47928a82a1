//! The login service: a LaunchAgent on macOS, a systemd user unit on Linux.
//!
//! Installing is a *plan* (files to write, commands to run) built by pure functions, so both
//! platforms' plans are tested here; only carrying a plan out touches the system. The commands
//! are found on the PATH (`launchctl`, `systemctl`). Nothing here ever touches the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::error::{Error, IoContext, Kind, Result};
use crate::platform;

/// The LaunchAgent's label (and plist name).
pub const LABEL: &str = "org.leafd.agent";
/// The systemd user unit's name.
pub const UNIT: &str = "leafd.service";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    Launchd,
    Systemd,
}

/// Everything a plan depends on.
#[derive(Debug, Clone)]
pub struct Context {
    pub kind: ServiceKind,
    /// The leafd program the service runs (absolute).
    pub exe: PathBuf,
    /// The library, when `--root` was given (else the agent finds it as usual).
    pub root: Option<PathBuf>,
    pub home: PathBuf,
    pub log_dir: PathBuf,
    /// systemd's user configuration folder (`$XDG_CONFIG_HOME`, default `~/.config`).
    pub config_home: PathBuf,
    pub uid: u32,
}

/// A command of a plan; `may_fail` ones (unloading what may not be loaded) do not stop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub args: Vec<String>,
    pub may_fail: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub write: Vec<(PathBuf, Vec<u8>)>,
    pub remove: Vec<PathBuf>,
    pub run: Vec<Step>,
}

fn step(args: &[&str], may_fail: bool) -> Step {
    Step { args: args.iter().map(|s| s.to_string()).collect(), may_fail }
}

impl Context {
    /// The context of this process on this platform.
    pub fn current(root: Option<&Path>) -> Result<Context> {
        let exe = std::env::current_exe().at(Path::new("leafd"), "cannot find the running program")?;
        let exe = exe.canonicalize().at(&exe, "cannot resolve the running program")?;
        let root = match root {
            Some(r) => Some(std::path::absolute(r).at(r, "cannot resolve the library folder")?),
            None => None,
        };
        let home = platform::home();
        let config_home = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| home.join(".config"));
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        Ok(Context { kind: platform::SERVICE_KIND, exe, root, home, log_dir: platform::log_dir(), config_home, uid })
    }

    /// Where the service's definition lives.
    pub fn definition(&self) -> PathBuf {
        match self.kind {
            ServiceKind::Launchd => self.home.join("Library/LaunchAgents").join(format!("{LABEL}.plist")),
            ServiceKind::Systemd => self.config_home.join("systemd/user").join(UNIT),
        }
    }

    /// The agent's command line.
    fn arguments(&self) -> Vec<String> {
        let mut args = vec![self.exe.to_string_lossy().into_owned()];
        if let Some(root) = &self.root {
            args.extend(["--root".to_string(), root.to_string_lossy().into_owned()]);
        }
        args.push("agent".into());
        args
    }
}

/// The LaunchAgent: started at login, restarted if it fails (not after a clean exit), in the
/// background with low-priority I/O, its output in the log folder.
pub fn launchd_plist(ctx: &Context) -> Result<Vec<u8>> {
    use launchd::{KeepAliveOptions, KeepAliveType, Launchd, ProcessType};
    let path_err = |p: &Path| {
        Error::new(Kind::Unsupported, p.to_path_buf(), "path is not valid UTF-8")
            .fix("use a folder whose name is plain text")
    };
    let job = Launchd::new(LABEL, &ctx.exe)
        .map_err(|_| path_err(&ctx.exe))?
        .with_program_arguments(ctx.arguments())
        .with_run_at_load(true)
        .with_keep_alive(KeepAliveType::Options(KeepAliveOptions::new().with_successful_exit(false)))
        .with_process_type(ProcessType::Background)
        .with_low_priority_io(true)
        .with_throttle_interval(30)
        .with_exit_timeout(20)
        .with_standard_out_path(ctx.log_dir.join("agent.stdout.log"))
        .map_err(|_| path_err(&ctx.log_dir))?
        .with_standard_error_path(ctx.log_dir.join("agent.stderr.log"))
        .map_err(|_| path_err(&ctx.log_dir))?;
    let mut out = Vec::new();
    job.to_writer_xml(&mut out)
        .map_err(|e| Error::new(Kind::Io, ctx.definition(), format!("cannot write the LaunchAgent: {e}")))?;
    Ok(out)
}

/// Quotes a word for a systemd `ExecStart=` line.
fn systemd_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@=,".contains(c)) {
        return s.to_string();
    }
    // Inside double quotes systemd unescapes C-style; `%` is a specifier, `$` an expansion.
    let escaped = s.replace('\\', "\\\\").replace('"', "\\\"").replace('%', "%%").replace('$', "$$");
    format!("\"{escaped}\"")
}

/// The systemd user unit.
pub fn systemd_unit(ctx: &Context) -> String {
    let exec: Vec<String> = ctx.arguments().iter().map(|a| systemd_quote(a)).collect();
    format!(
        "[Unit]\nDescription=leafd: VMware linked clones from drop folders\n\n\
         [Service]\nType=simple\nExecStart={}\nRestart=on-failure\nRestartSec=30\nKillSignal=SIGTERM\nTimeoutStopSec=20\n\
         Nice=10\nIOSchedulingClass=idle\n\n[Install]\nWantedBy=default.target\n",
        exec.join(" ")
    )
}

pub fn install_plan(ctx: &Context) -> Result<Plan> {
    let def = ctx.definition();
    let def_str = def.to_string_lossy().into_owned();
    Ok(match ctx.kind {
        ServiceKind::Launchd => {
            let domain = format!("gui/{}", ctx.uid);
            Plan {
                write: vec![(def.clone(), launchd_plist(ctx)?)],
                remove: Vec::new(),
                run: vec![
                    step(&["launchctl", "bootout", &format!("{domain}/{LABEL}")], true),
                    step(&["launchctl", "bootstrap", &domain, &def_str], false),
                ],
            }
        }
        ServiceKind::Systemd => Plan {
            write: vec![(def, systemd_unit(ctx).into_bytes())],
            remove: Vec::new(),
            run: vec![
                step(&["systemctl", "--user", "daemon-reload"], false),
                step(&["systemctl", "--user", "enable", "--now", UNIT], false),
            ],
        },
    })
}

pub fn uninstall_plan(ctx: &Context) -> Plan {
    let def = ctx.definition();
    match ctx.kind {
        ServiceKind::Launchd => Plan {
            write: Vec::new(),
            remove: vec![def],
            run: vec![step(&["launchctl", "bootout", &format!("gui/{}/{LABEL}", ctx.uid)], true)],
        },
        ServiceKind::Systemd => Plan {
            write: Vec::new(),
            remove: vec![def],
            run: vec![
                step(&["systemctl", "--user", "disable", "--now", UNIT], true),
                step(&["systemctl", "--user", "daemon-reload"], false),
            ],
        },
    }
}

/// Carries out `plan` (or, with `dry_run`, only prints it). Files are written before the
/// commands run and removed after them (a service is stopped before its file goes).
pub fn execute(plan: &Plan, dry_run: bool, out: &mut dyn Write) -> Result<()> {
    let say = |out: &mut dyn Write, line: String| writeln!(out, "{line}").at(Path::new("stdout"), "cannot print");
    for (path, bytes) in &plan.write {
        if dry_run {
            say(out, format!("would write {}:\n{}", path.display(), String::from_utf8_lossy(bytes)))?;
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).at(dir, "cannot create folder")?;
        }
        crate::fsutil::write_atomic(path, bytes)?;
        say(out, format!("wrote {}", path.display()))?;
    }
    for s in &plan.run {
        let line = s.args.join(" ");
        if dry_run {
            say(out, format!("would run: {line}"))?;
            continue;
        }
        let result = Command::new(&s.args[0]).args(&s.args[1..]).output();
        match result {
            Ok(o) if o.status.success() => say(out, format!("ran: {line}"))?,
            Ok(_) | Err(_) if s.may_fail => say(out, format!("ran: {line} (not loaded; fine)"))?,
            Ok(o) => {
                let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                return Err(Error::new(
                    Kind::Io,
                    PathBuf::from(&s.args[0]),
                    format!("`{line}` failed ({}): {}", o.status, said.trim()),
                )
                .fix("see the message above; `leafd install --dry-run` shows every step"));
            }
            Err(e) => return Err(Error::io(Path::new(&s.args[0]), &format!("cannot run `{line}`"), e)),
        }
    }
    for path in &plan.remove {
        if dry_run {
            say(out, format!("would remove {}", path.display()))?;
        } else if path.exists() {
            std::fs::remove_file(path).at(path, "cannot remove")?;
            say(out, format!("removed {}", path.display()))?;
        }
    }
    Ok(())
}

/// Whether the service is installed, and running (when that can be asked).
#[derive(Debug, Serialize)]
pub struct State {
    pub kind: ServiceKind,
    pub definition: String,
    pub installed: bool,
    pub running: Option<bool>,
}

pub fn state(ctx: &Context) -> State {
    let definition = ctx.definition();
    let probe = match ctx.kind {
        ServiceKind::Launchd => Command::new("launchctl").args(["print", &format!("gui/{}/{LABEL}", ctx.uid)]).output(),
        ServiceKind::Systemd => Command::new("systemctl").args(["--user", "is-active", UNIT]).output(),
    };
    let running = probe.ok().map(|o| match ctx.kind {
        ServiceKind::Launchd => o.status.success() && String::from_utf8_lossy(&o.stdout).contains("state = running"),
        ServiceKind::Systemd => String::from_utf8_lossy(&o.stdout).trim() == "active",
    });
    State { kind: ctx.kind, installed: definition.is_file(), definition: definition.to_string_lossy().into(), running }
}

impl State {
    pub fn render(&self) -> String {
        let what = match self.kind {
            ServiceKind::Launchd => "LaunchAgent",
            ServiceKind::Systemd => "systemd user unit",
        };
        if !self.installed {
            return "service: not installed (run `leafd install`)".into();
        }
        let running = match self.running {
            Some(true) => "running",
            Some(false) => "not running",
            None => "state unknown",
        };
        format!("service: installed ({what} {}), {running}", self.definition)
    }
}
