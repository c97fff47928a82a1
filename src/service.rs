//! The login service: a LaunchAgent on macOS, a systemd user unit on Linux.
//!
//! Installing is a *plan* (folders, files and commands, in order) built by pure functions, so both
//! platforms' plans are tested on either; only carrying a plan out touches the system. Commands
//! are found on the PATH (`launchctl`, `systemctl`), so tests can put stand-ins first. Nothing
//! here touches the library.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, IoContext, Kind, Result};
use crate::{child, platform};

/// The LaunchAgent's label (and plist name).
pub const LABEL: &str = "org.leafd.agent";
/// The systemd user unit's name.
pub const UNIT: &str = "leafd.service";

/// Which service manager runs the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// macOS: a LaunchAgent.
    Launchd,
    /// Linux: a systemd user unit.
    Systemd,
}

/// Where the service lives for this user.
#[derive(Debug, Clone)]
pub struct Context {
    /// The service manager.
    pub kind: ServiceKind,
    /// `~/Library/LaunchAgents`, or systemd's user unit folder.
    pub service_dir: PathBuf,
    /// Where the agent's output goes (the LaunchAgent's stdout and stderr files).
    pub log_dir: PathBuf,
    /// The user's id (launchd's `gui/<uid>` domain).
    pub uid: u32,
}

/// What the service runs: `EXE [--root ROOT] agent`.
#[derive(Debug, Clone)]
pub struct Program {
    /// Absolute.
    pub exe: PathBuf,
    /// The library when `--root` was given; else the agent finds it as every command does.
    pub root: Option<PathBuf>,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A folder the service needs (its log folder); kept on uninstall, as the logs are.
    MakeDir(PathBuf),
    /// A file and its bytes (the service's definition).
    Write(PathBuf, Vec<u8>),
    /// A file to remove; one already gone is fine.
    Remove(PathBuf),
    /// A command to run.
    Run(Step),
}

/// A command of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The program and its arguments.
    pub args: Vec<String>,
    /// Why a failure is fine (unloading what was not loaded); `None`: a failure stops the plan.
    pub fine_if_fails: Option<&'static str>,
    /// Tries, a second apart: launchd refuses to bootstrap a job it is still booting out.
    pub attempts: u32,
}

/// What `install` or `uninstall` does, in order.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The service definition the plan is about (its errors name it).
    pub definition: PathBuf,
    /// What is done, in order.
    pub actions: Vec<Action>,
    /// The advice when a command fails.
    pub fix: String,
    /// Printed once everything is done.
    pub done: String,
}

fn step(args: &[&str]) -> Step {
    Step { args: args.iter().map(|s| s.to_string()).collect(), fine_if_fails: None, attempts: 1 }
}

impl Context {
    /// This user's, on this platform.
    pub(crate) fn current() -> Context {
        let uid = rustix::process::getuid().as_raw();
        Context {
            kind: if cfg!(target_os = "macos") { ServiceKind::Launchd } else { ServiceKind::Systemd },
            service_dir: platform::service_dir(),
            log_dir: platform::log_dir(),
            uid,
        }
    }

    /// Where the service's definition lives.
    pub(crate) fn definition(&self) -> PathBuf {
        match self.kind {
            ServiceKind::Launchd => self.service_dir.join(format!("{LABEL}.plist")),
            ServiceKind::Systemd => self.service_dir.join(UNIT),
        }
    }

    /// Where `brew services start leafd` puts its own definition of the same agent.
    pub(crate) fn homebrew_definition(&self) -> PathBuf {
        self.service_dir.join(match self.kind {
            ServiceKind::Launchd => "homebrew.mxcl.leafd.plist",
            ServiceKind::Systemd => "homebrew.leafd.service",
        })
    }

    /// The user's GUI session in launchd, where LaunchAgents run.
    fn launchd_domain(&self) -> String {
        format!("gui/{}", self.uid)
    }

    fn launchd_job(&self) -> String {
        format!("{}/{LABEL}", self.launchd_domain())
    }

    /// What to try when `launchctl` or `systemctl` fails.
    fn session_fix(&self) -> &'static str {
        match self.kind {
            ServiceKind::Launchd => {
                "run it as yourself in a logged-in session (not with sudo, not over ssh as another user)"
            }
            ServiceKind::Systemd => {
                "check that your systemd user manager runs (`systemctl --user status`); without a login \
                 session, `loginctl enable-linger $USER` starts one"
            }
        }
    }
}

impl Program {
    /// The running leafd, with `--root` as given.
    pub(crate) fn current(root: Option<&Path>) -> Result<Program> {
        let exe = std::env::current_exe().at(Path::new("leafd"), "cannot find the running program")?;
        let exe = exe.canonicalize().at(&exe, "cannot resolve the running program")?;
        let exe = homebrew_opt(&exe).filter(|p| p.is_file()).unwrap_or(exe);
        let root = root.map(|r| std::path::absolute(r).at(r, "cannot resolve the library folder")).transpose()?;
        Ok(Program { exe, root })
    }

    /// The agent's command line.
    fn arguments(&self) -> Result<Vec<String>> {
        let mut args = vec![utf8(&self.exe)?.to_string()];
        if let Some(root) = &self.root {
            args.extend(["--root".to_string(), utf8(root)?.to_string()]);
        }
        args.push("agent".into());
        Ok(args)
    }
}

/// A Homebrew keg path (`PREFIX/Cellar/leafd/VERSION/bin/leafd`) as the keg's `opt` link
/// (`PREFIX/opt/leafd/bin/leafd`): `brew upgrade` deletes the old keg, the link follows.
pub fn homebrew_opt(exe: &Path) -> Option<PathBuf> {
    let parts: Vec<_> = exe.components().collect();
    let cellar = parts.windows(2).position(|w| w[0].as_os_str() == "Cellar" && w[1].as_os_str() == "leafd")?;
    let inside = parts.get(cellar + 3..).filter(|rest| !rest.is_empty())?;
    let prefix: PathBuf = parts[..cellar].iter().collect();
    Some(prefix.join("opt/leafd").join(inside.iter().collect::<PathBuf>()))
}

fn not_utf8(path: &Path) -> Error {
    Error::unsupported(path, "a service definition cannot name a path that is not valid UTF-8")
        .fix("use a folder (and a place for leafd) whose name is plain text")
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| not_utf8(path))
}

/// The LaunchAgent: started at login, restarted when it fails (not after a clean exit), in the
/// background with low-priority I/O, its output in the log folder.
pub fn launchd_plist(ctx: &Context, program: &Program) -> Result<Vec<u8>> {
    use launchd::{KeepAliveOptions, KeepAliveType, Launchd, ProcessType};
    let (stdout, stderr) = (ctx.log_dir.join("agent.stdout.log"), ctx.log_dir.join("agent.stderr.log"));
    let job = Launchd::new(LABEL, &program.exe)
        .map_err(|_| not_utf8(&program.exe))?
        .with_program_arguments(program.arguments()?)
        .with_run_at_load(true)
        .with_keep_alive(KeepAliveType::Options(KeepAliveOptions::new().with_successful_exit(false)))
        .with_process_type(ProcessType::Background)
        .with_low_priority_io(true)
        .with_throttle_interval(30)
        .with_exit_timeout(20)
        .with_standard_out_path(&stdout)
        .map_err(|_| not_utf8(&stdout))?
        .with_standard_error_path(&stderr)
        .map_err(|_| not_utf8(&stderr))?;
    let mut out = Vec::new();
    job.to_writer_xml(&mut out)
        .map_err(|e| Error::format(&ctx.definition(), format!("cannot make the LaunchAgent: {e}")))?;
    Ok(out)
}

/// True for a word that means the same quoted or not, to systemd and to a shell.
fn plain(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@=,".contains(c))
}

/// Quotes a word for a systemd `ExecStart=` line.
fn systemd_quote(s: &str) -> String {
    if plain(s) {
        return s.to_string();
    }
    let mut quoted = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' | '"' => quoted.extend(['\\', c]),
            // Specifiers and environment expansion apply even inside quotes.
            '%' => quoted.push_str("%%"),
            '$' => quoted.push_str("$$"),
            // A raw line break would end the line; systemd unescapes C-style inside quotes.
            c if c.is_ascii_control() => quoted.push_str(&format!("\\x{:02x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The systemd user unit: started with the user's session, restarted when it fails, at low CPU
/// and I/O priority; SIGTERM lets the agent finish or undo its step within the stop timeout.
pub fn systemd_unit(program: &Program) -> Result<String> {
    let exec: Vec<String> = program.arguments()?.iter().map(|a| systemd_quote(a)).collect();
    Ok(format!(
        "[Unit]\nDescription=leafd: VMware linked clones from drop folders\n\n\
         [Service]\nType=simple\nExecStart={}\nRestart=on-failure\nRestartSec=30\nKillSignal=SIGTERM\n\
         TimeoutStopSec=20\nNice=10\nIOSchedulingClass=idle\n\n[Install]\nWantedBy=default.target\n",
        exec.join(" ")
    ))
}

/// Writes the definition and (re)starts the service, so a new definition always takes effect.
pub fn install_plan(ctx: &Context, program: &Program) -> Result<Plan> {
    let def = ctx.definition();
    let def_str = utf8(&def)?.to_string();
    let actions = match ctx.kind {
        ServiceKind::Launchd => {
            let job = ctx.launchd_job();
            vec![
                // launchd does not create the folder of StandardOutPath.
                Action::MakeDir(ctx.log_dir.clone()),
                Action::Write(def.clone(), launchd_plist(ctx, program)?),
                Action::Run(Step { fine_if_fails: Some("it was not loaded"), ..step(&["launchctl", "bootout", &job]) }),
                // Clears a `launchctl disable` left from before, which would make bootstrap fail.
                Action::Run(step(&["launchctl", "enable", &job])),
                Action::Run(Step {
                    attempts: 10,
                    ..step(&["launchctl", "bootstrap", &ctx.launchd_domain(), &def_str])
                }),
            ]
        }
        ServiceKind::Systemd => vec![
            Action::Write(def.clone(), systemd_unit(program)?.into_bytes()),
            Action::Run(step(&["systemctl", "--user", "daemon-reload"])),
            Action::Run(step(&["systemctl", "--user", "enable", UNIT])),
            // `restart` starts a stopped unit and restarts a running one on the new definition.
            Action::Run(step(&["systemctl", "--user", "restart", UNIT])),
        ],
    };
    let log = match ctx.kind {
        ServiceKind::Launchd => format!("{}/leafd.log", ctx.log_dir.display()),
        ServiceKind::Systemd => format!("{}/leafd.log and `journalctl --user -u {UNIT}`", ctx.log_dir.display()),
    };
    Ok(Plan {
        definition: def,
        actions,
        fix: format!("{}; `leafd uninstall` removes what was written", ctx.session_fix()),
        done: format!("the leafd agent runs now and at every login; `leafd log` shows what it did ({log})"),
    })
}

/// Stops the service and removes its definition (nothing else: not the logs, not the library).
pub fn uninstall_plan(ctx: &Context) -> Plan {
    let def = ctx.definition();
    let actions = match ctx.kind {
        ServiceKind::Launchd => vec![
            Action::Run(Step {
                fine_if_fails: Some("it was not loaded"),
                ..step(&["launchctl", "bootout", &ctx.launchd_job()])
            }),
            Action::Remove(def.clone()),
        ],
        ServiceKind::Systemd => vec![
            Action::Run(Step {
                fine_if_fails: Some("it was not installed"),
                ..step(&["systemctl", "--user", "disable", "--now", UNIT])
            }),
            // Reloaded once the file is gone, so systemd forgets the unit.
            Action::Remove(def.clone()),
            Action::Run(Step {
                fine_if_fails: Some("no user manager runs, so none remembers the unit"),
                ..step(&["systemctl", "--user", "daemon-reload"])
            }),
        ],
    };
    Plan {
        definition: def,
        actions,
        fix: format!("{}; then run `leafd uninstall` again", ctx.session_fix()),
        done: "the leafd agent no longer runs at login; the library and the logs are untouched".into(),
    }
}

/// A command line as a shell would take it back.
fn shown(args: &[String]) -> String {
    let word = |a: &String| if plain(a) { a.clone() } else { format!("'{}'", a.replace('\'', "'\\''")) };
    args.iter().map(word).collect::<Vec<_>>().join(" ")
}

/// Carries out `plan`, or with `dry_run` only prints what it would do.
pub fn execute(plan: &Plan, dry_run: bool, out: &mut dyn Write) -> Result<()> {
    let mut say = |line: String| writeln!(out, "{line}").at(Path::new("stdout"), "cannot print");
    for action in &plan.actions {
        match action {
            Action::MakeDir(dir) if dir.is_dir() => {}
            Action::MakeDir(dir) if dry_run => say(format!("would create folder {}", dir.display()))?,
            Action::MakeDir(dir) => {
                std::fs::create_dir_all(dir).at(dir, "cannot create folder").map_err(|e| not_writable(e, dir))?;
                say(format!("created folder {}", dir.display()))?;
            }
            Action::Write(path, bytes) if dry_run => {
                say(format!("would write {}:\n{}", path.display(), String::from_utf8_lossy(bytes)))?
            }
            Action::Write(path, bytes) => {
                write_definition(path, bytes).map_err(|e| not_writable(e, path))?;
                say(format!("wrote {}", path.display()))?;
            }
            Action::Remove(path) if dry_run => say(format!("would remove {}", path.display()))?,
            Action::Remove(path) => match std::fs::remove_file(path) {
                Ok(()) => say(format!("removed {}", path.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => say(format!("{} was not there", path.display()))?,
                Err(e) => return Err(not_writable(Error::io(path, "cannot remove", e), path)),
            },
            Action::Run(s) if dry_run => say(format!("would run: {}", shown(&s.args)))?,
            Action::Run(s) => {
                let note = run(s, plan)?;
                say(format!("ran: {}{note}", shown(&s.args)))?;
            }
        }
    }
    if dry_run { say("(dry run: nothing was changed)".into()) } else { say(plan.done.clone()) }
}

/// Adds the advice for a file or folder leafd could not create, write or remove.
fn not_writable(e: Error, path: &Path) -> Error {
    let dir = path.parent().unwrap_or(path).display();
    e.fix(format!("check that you own {dir} and may write in it (`ls -ld '{dir}'`); run leafd as yourself"))
}

/// Writes a service definition readable by all and writable by its owner only: launchd refuses
/// a plist others may change, whatever the umask made.
fn write_definition(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).at(dir, "cannot create folder")?;
    }
    crate::durable::write_atomic(path, bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).at(path, "cannot set permissions")
}

/// How long one `launchctl` or `systemctl` command may take: `systemctl restart` and `launchctl
/// bootout` wait for the old agent to stop (20 s), so this is ample; a hung service manager must
/// not hang `leafd install`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `leafd status` waits to learn whether the service runs.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one step; returns a note for a tolerated failure.
fn run(s: &Step, plan: &Plan) -> Result<String> {
    let line = shown(&s.args);
    let fail = |what: String| Error::new(Kind::Io, plan.definition.clone(), what).fix(plan.fix.clone());
    let mut attempt = 1;
    loop {
        let e = match child::run(Command::new(&s.args[0]).args(&s.args[1..]), COMMAND_TIMEOUT, None) {
            Ok(_) => return Ok(String::new()),
            Err(e) => e,
        };
        if e.is_not_found() {
            return Err(fail(format!("`{}` is not on the PATH, so `{line}` cannot run", s.args[0])));
        }
        // Only a command that ended with a status failed the way a step tolerates or retries.
        let exited = e.exit_code().is_some();
        if let Some(why) = s.fine_if_fails.filter(|_| exited) {
            return Ok(format!(" (failed, which is fine: {why}: {e})"));
        }
        if !exited || attempt >= s.attempts {
            return Err(fail(format!("`{line}` failed: {e}")));
        }
        attempt += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Warnings worth seeing before installing: settings the service would not share.
pub(crate) fn install_warnings(ctx: &Context, program: &Program) -> Vec<String> {
    let mut warnings = Vec::new();
    if program.root.is_none() && std::env::var_os("LEAFD_ROOT").is_some_and(|v| !v.is_empty()) {
        warnings.push(format!(
            "LEAFD_ROOT is set here, but the service will not see it: its agent uses `root` in {} or the \
             default folder; run `leafd --root DIR install` to give it this library",
            crate::config::path().display()
        ));
    }
    let homebrew = ctx.homebrew_definition();
    if homebrew.exists() {
        warnings.push(format!(
            "Homebrew's service for leafd is installed too ({}): only one agent can watch a library; \
             keep one (`brew services stop leafd`, or `leafd uninstall`)",
            homebrew.display()
        ));
    }
    warnings
}

/// Whether the service is installed, and running (when that can be asked).
#[derive(Debug, Serialize)]
pub(crate) struct State {
    pub(crate) kind: ServiceKind,
    pub(crate) definition: String,
    pub(crate) installed: bool,
    /// `None` when `launchctl`/`systemctl` could not be asked.
    pub(crate) running: Option<bool>,
}

pub(crate) fn state(ctx: &Context) -> State {
    let definition = ctx.definition();
    let probe = match ctx.kind {
        ServiceKind::Launchd => vec!["launchctl".to_string(), "print".into(), ctx.launchd_job()],
        ServiceKind::Systemd => ["systemctl", "--user", "is-active", UNIT].map(String::from).to_vec(),
    };
    let running = match child::run(Command::new(&probe[0]).args(&probe[1..]), PROBE_TIMEOUT, None) {
        Ok(out) => Some(match ctx.kind {
            // `print` also succeeds for a loaded job waiting to be restarted: only its state says.
            ServiceKind::Launchd => out.stdout.text().contains("state = running"),
            ServiceKind::Systemd => out.stdout.text() == "active",
        }),
        // Not loaded (launchctl), not active (systemctl).
        Err(e) if e.exit_code().is_some() => Some(false),
        Err(_) => None,
    };
    State { kind: ctx.kind, installed: definition.is_file(), definition: definition.to_string_lossy().into(), running }
}

impl State {
    /// One line for `leafd status`.
    pub(crate) fn render(&self) -> String {
        let what = match self.kind {
            ServiceKind::Launchd => "LaunchAgent",
            ServiceKind::Systemd => "systemd user unit",
        };
        let running = match self.running {
            Some(true) => "running",
            Some(false) => "not running (see `leafd log`)",
            None => "state unknown",
        };
        match (self.installed, self.running) {
            (true, _) => format!("service: installed ({what} {}), {running}", self.definition),
            (false, Some(true)) => "service: not installed, yet running (stop it: `leafd uninstall`)".into(),
            (false, _) => "service: not installed (run `leafd install`)".into(),
        }
    }
}
