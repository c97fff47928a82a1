//! The command line (SPEC §6): parses, calls the library, the agent or the service, and prints.
//! How it exits is decided in [`crate::error`] (0 ok, 1 refused, failed or problems found, 2 bad
//! usage).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use leafd_formats::clone::PathStyle;

use crate::config::{Config, RootFrom};
use crate::error::{Error, Exit, IoContext, Result};
use crate::library::ops::{adopt, forget, make_base, new_leaf, promote, relink, remove_base, reset, status, verify};
use crate::library::{Library, Options, SnapshotBackend, journal, recovery};
use crate::{agent, demo, logging, platform, progress, service};

#[derive(Parser)]
#[command(name = "leafd", version, about = "VMware linked clones as easy as making a folder", max_term_width = 100)]
pub(crate) struct Cli {
    /// The library folder (default: LEAFD_ROOT, then `root` in config.toml, then ~/vmware on
    /// Linux, the Virtual Machines folder on macOS); for `demo`, an empty or new folder for the
    /// demo's library; `uninstall`, `completions` and `man` take none
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// No progress bars on stderr (they show only on a terminal, for work that takes a while)
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch the drop folders (what the login service runs)
    Agent {
        /// How long a Make Base drop must be quiet before leafd acts on it: seconds (3, 1.5) or a
        /// duration (1.5s, 500ms), at most an hour (default: settle_seconds in config.toml, else 3)
        #[arg(long, value_name = "DURATION", allow_negative_numbers = true)]
        settle: Option<String>,
    },
    /// Convert a powered-off VM bundle into a write-protected base, as a drop would
    MakeBase {
        /// The VM: a .vmwarevm bundle or a folder holding one .vmx
        bundle: PathBuf,
        /// Name of the base (default: the bundle's name)
        #[arg(long)]
        name: Option<String>,
    },
    /// Make a leaf (a linked clone) of a base, as creating "New Leaf/BASE/NAME" would
    NewLeaf {
        /// The base's name (its folder in Bases/)
        base: String,
        /// The new leaf's name: it becomes NAME.vmwarevm in the library
        name: String,
        /// Who takes the snapshot (default: config, else auto)
        #[arg(long, value_enum)]
        snapshot: Option<Snapshot>,
    },
    /// Bases, their leaves, space used and saved, pending and failed drops
    Status {
        /// Print it as JSON (the same facts, and the service's state, for scripts)
        #[arg(long)]
        json: bool,
    },
    /// Check every chain, protection and lineage record; exit 1 on any problem
    Verify {
        /// Print the report as JSON (what was checked, each problem with its fix, each repair)
        #[arg(long)]
        json: bool,
        /// Also recompute the bases' content fingerprints and check every grain
        #[arg(long)]
        deep: bool,
        /// Bases or leaves to check (default: all)
        names: Vec<String>,
    },
    /// Point a leaf at its base again after the leaf, the base, or both moved
    Relink {
        /// The leaf: its path, or its name in the library
        leaf: PathBuf,
    },
    /// Turn a leaf into a standalone VM that no longer needs its base
    Promote {
        /// The leaf: its path, or its name in the library
        leaf: PathBuf,
    },
    /// Make a VM copied from a base a leaf of it, in place: only what differs stays its own
    Adopt {
        /// The VM: a .vmwarevm bundle or a folder holding one .vmx, on the base's volume
        vm: PathBuf,
        /// The base it was copied from
        #[arg(long, value_name = "NAME")]
        base: String,
        /// The leaf's name (default: the bundle's; the VM keeps its display name unless given)
        #[arg(long)]
        name: Option<String>,
        /// Change nothing: say, per disk, how much would be shared and freed
        #[arg(long)]
        dry_run: bool,
        /// Adopt a VM that shares less than 10% of its data with the base
        #[arg(long)]
        force: bool,
    },
    /// Put a leaf's disks and EFI variables back to its snapshot Base (their changes to the Trash)
    Reset {
        /// The leaf: its path, or its name in the library
        leaf: PathBuf,
        /// Do not ask (needed where there is no terminal to ask on)
        #[arg(long)]
        yes: bool,
    },
    /// Remove a base no leaf depends on: to the Trash, under its own name (or deleted, --delete)
    RemoveBase {
        /// The base's name (its folder in Bases/)
        name: String,
        /// Delete it for good instead (asks first on a terminal); for a volume without a Trash
        #[arg(long)]
        delete: bool,
        /// With --delete: do not ask (needed where there is no terminal to ask on)
        #[arg(long)]
        yes: bool,
    },
    /// Install the login service (launchd on macOS, systemd --user on Linux) and start it
    Install {
        /// Print what would be written and run, and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop and remove the login service (the library is never touched)
    Uninstall {
        /// Print what would be stopped and removed, and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Build a small sample VM and walk it through the whole flow with the real agent
    Demo {
        /// An empty or new folder to run in, its library in DIR/library (default: a new temporary
        /// folder, kept afterwards); `--root` puts the library elsewhere
        dir: Option<PathBuf>,
    },
    /// Finish or undo operations a crash interrupted (every command that changes the library,
    /// and the agent at start, does this first)
    Recover {
        /// List the interrupted operations (and those running now) instead
        #[arg(long, conflicts_with_all = ["show", "discard"])]
        list: bool,
        /// Show what an interrupted operation's journal says and what is at the places it names
        #[arg(long, value_name = "ID", conflicts_with = "discard")]
        show: Option<String>,
        /// Forget an interrupted operation that recovery keeps, once you have put its files right
        /// (nothing is moved or deleted; `--show` first)
        #[arg(long, value_name = "ID")]
        discard: Option<String>,
    },
    /// Take a leaf that was deleted off its base's list (refused while the leaf is still there)
    Forget {
        /// The leaf's name (or the id of an entry that cannot be read)
        leaf: String,
    },
    /// Recent results from the log: the library's (see --root), or every library's with --all
    Log {
        /// Keep printing new lines
        #[arg(short, long)]
        follow: bool,
        /// How many lines
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Every library's lines, not only the library's that --root (or the default) names
        #[arg(long)]
        all: bool,
    },
    /// Print a shell completion script: `leafd completions bash > /etc/bash_completion.d/leafd`
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the manual page (roff: `leafd man | man -l -`), or write one per command into DIR
    Man {
        /// A folder to write leafd.1 and leafd-COMMAND.1 into (a man1 folder)
        dir: Option<PathBuf>,
    },
}

/// The shells `leafd completions` writes for.
#[derive(Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// `--snapshot`: [`SnapshotBackend`] as the command line names it.
#[derive(Clone, Copy, ValueEnum)]
enum Snapshot {
    /// VMware's `vmrun` when it is installed, else (or when it fails) leafd's own writer.
    Auto,
    /// leafd's own writer (always available; the tested path).
    Native,
    /// VMware's `vmrun` only.
    Vmrun,
}

impl From<Snapshot> for SnapshotBackend {
    fn from(s: Snapshot) -> SnapshotBackend {
        match s {
            Snapshot::Auto => SnapshotBackend::Auto,
            Snapshot::Native => SnapshotBackend::Native,
            Snapshot::Vmrun => SnapshotBackend::Vmrun,
        }
    }
}

/// Options for the operations from the configuration (and flags).
fn options(config: &Config, snapshot: Option<SnapshotBackend>) -> Options {
    Options {
        path_style: config.path_style.unwrap_or(PathStyle::Relative),
        snapshot: snapshot.or(config.snapshot_backend).unwrap_or_default(),
        vmrun: std::env::var_os("LEAFD_VMRUN").map(PathBuf::from).or_else(|| config.vmrun.clone()),
        ..Options::default()
    }
}

/// Opens the library for a command that changes it, first finishing whatever a crash left.
fn open_for_change(root: &Path, opts: &Options) -> Result<Library> {
    let lib = Library::open(root)?;
    for r in recovery::recover(&lib, opts)? {
        r.report(true);
    }
    lib.migrate()?;
    Ok(lib)
}

/// Runs an operation that changes the library: the log open, interrupted operations finished
/// or undone first, and the outcome (a line, and warnings) logged and printed.
fn change(
    root: &Path,
    opts: Options,
    op: impl FnOnce(&Library, &Options) -> Result<(String, Vec<String>)>,
) -> Result<Exit> {
    let _log = start_log(root, false);
    let lib = open_for_change(root, &opts)?;
    let (line, warnings) = op(&lib, &opts).inspect_err(|e| tracing::warn!("{}", e.summary()))?;
    tracing::info!("{line}");
    println!("{line}");
    warn_all(&warnings);
    Ok(Exit::Success)
}

/// Asks on the terminal; false when there is none to ask on.
fn confirm(question: &str) -> bool {
    use std::io::{IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y" | "yes")
}

fn warn_all(warnings: &[String]) {
    for w in warnings {
        tracing::warn!("{w}");
        eprintln!("leafd: warning: {w}");
    }
}

/// Starts the log, every line naming the library at `root`; a log that cannot be opened is
/// reported, and the work goes on without it.
fn start_log(root: &Path, echo: bool) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    logging::init(&platform::log_dir(), root, echo).inspect_err(|e| eprintln!("leafd: warning: {e}")).ok()
}

/// The commands that still work with a broken configuration file (with a warning): reading the
/// log, and removing the service.
fn needs_no_config(command: &Command) -> bool {
    matches!(command, Command::Log { .. } | Command::Uninstall { .. })
}

/// The configuration; for [`needs_no_config`] commands a broken one is a warning, and the
/// defaults serve.
fn load_config(command: &Command) -> Result<Config> {
    match Config::load() {
        Err(e) if needs_no_config(command) => {
            eprintln!("leafd: warning: {e}\n  (ignored here; every other command refuses to run until it is fixed)");
            Ok(Config::default())
        }
        r => r,
    }
}

/// The library root, absolute, from `--root`, `LEAFD_ROOT`, the file or the default; refused
/// when it names something that is not a folder, saying which of those to change.
fn library_root(config: &Config, flag: Option<&Path>) -> Result<PathBuf> {
    let (root, from) = config.root_from(flag);
    let root = std::path::absolute(&root).unwrap_or(root);
    if root.exists() && !root.is_dir() {
        let named = match &from {
            RootFrom::Flag => "--root",
            RootFrom::Env => "LEAFD_ROOT",
            RootFrom::File(_) => "`root` in config.toml",
            RootFrom::Default => "the default library",
        };
        return Err(Error::refused(&root, format!("is a file, not a library folder ({named} names it)"))
            .fix(from.how_to_change()));
    }
    Ok(root)
}

/// `--root` given to a command that has no library: bad usage, rather than silently ignored.
fn no_root(flag: Option<&Path>, command: &str) -> Result<()> {
    match flag {
        Some(_) => Err(Error::usage(format!("`leafd {command}` works on no library, so --root means nothing to it"))
            .fix("leave out --root")),
        None => Ok(()),
    }
}

/// Progress bars go to a terminal, for a command's own work: not for the agent (the log is its
/// place), nor beside JSON.
fn bars(cli: &Cli) -> bool {
    use std::io::IsTerminal;
    let quiet = cli.quiet
        || matches!(
            cli.command,
            Command::Agent { .. } | Command::Status { json: true } | Command::Verify { json: true, .. }
        );
    !quiet && std::io::stderr().is_terminal()
}

fn run(cli: Cli) -> Result<Exit> {
    let flag = cli.root.as_deref();
    match &cli.command {
        Command::Completions { shell } => return no_root(flag, "completions").and_then(|()| completions(*shell)),
        Command::Man { dir } => return no_root(flag, "man").and_then(|()| man(dir.as_deref())),
        Command::Uninstall { .. } => no_root(flag, "uninstall")?,
        _ => {}
    }
    if bars(&cli) {
        progress::show_bars();
    }
    let config = load_config(&cli.command)?;
    match cli.command {
        Command::Uninstall { dry_run } => {
            service::execute(&service::uninstall_plan(&service::Context::current()), dry_run, &mut std::io::stdout())?;
            Ok(Exit::Success)
        }
        Command::Install { dry_run } => {
            let ctx = service::Context::current();
            let program = service::Program::current(flag)?;
            warn_all(&service::install_warnings(&ctx, &program));
            service::execute(&service::install_plan(&ctx, &program)?, dry_run, &mut std::io::stdout())?;
            Ok(Exit::Success)
        }
        // The demo's library is a new one: never the one LEAFD_ROOT or the file names.
        Command::Demo { dir } => demo::run(dir.as_deref(), flag).map(|()| Exit::Success),
        Command::Log { follow, lines, all } => {
            let library = if all {
                no_root(flag, "log --all")?;
                None
            } else {
                Some(logging::library_label(&library_root(&config, flag)?))
            };
            logging::show(&platform::log_dir(), library.as_deref(), lines, follow, &mut std::io::stdout())?;
            Ok(Exit::Success)
        }
        command => run_on_library(command, &library_root(&config, flag)?, &config),
    }
}

/// The commands that work on the library at `root`.
fn run_on_library(command: Command, root: &Path, config: &Config) -> Result<Exit> {
    match command {
        Command::Agent { settle } => run_agent(root, config, settle.as_deref()),
        Command::MakeBase { bundle, name } => make_base(root, config, &bundle, name.as_deref()),
        Command::NewLeaf { base, name, snapshot } => {
            change(root, options(config, snapshot.map(Into::into)), |lib, opts| {
                new_leaf::new_leaf(lib, &base, &name, None, opts).map(|m| (m.to_string(), m.warnings))
            })
        }
        Command::Status { json } => show_status(root, json),
        Command::Verify { json, deep, names } => verify(root, config, json, deep, &names),
        Command::Relink { leaf } => change(root, options(config, None), |lib, opts| {
            relink::relink(lib, &leaf, opts).map(|d| (d.to_string(), Vec::new()))
        }),
        Command::Promote { leaf } => change(root, options(config, None), |lib, opts| {
            promote::promote(lib, &leaf, opts).map(|d| (d.to_string(), Vec::new()))
        }),
        Command::Adopt { vm, base, name, dry_run, force } => {
            let req = adopt::Request { vm: &vm, base: &base, name: name.as_deref(), dry_run, force };
            if dry_run {
                // Nothing is changed: no recovery, no migration, no lock.
                println!("{}", adopt::adopt(&Library::open_existing(root)?, req, &options(config, None))?);
                return Ok(Exit::Success);
            }
            change(root, options(config, None), |lib, opts| {
                adopt::adopt(lib, req, opts).map(|a| (a.to_string(), Vec::new()))
            })
        }
        Command::Reset { leaf, yes } => change(root, options(config, None), |lib, opts| {
            let confirmed = yes || confirm(&reset::question(lib, &leaf)?);
            reset::reset(lib, &leaf, confirmed, opts).map(|r| (r.to_string(), Vec::new()))
        }),
        Command::RemoveBase { name, delete, yes } => {
            let how = if delete {
                let question = format!("Delete base {name:?} for good (it does not go to the Trash)? [y/N] ");
                remove_base::How::Delete { confirmed: yes || confirm(&question) }
            } else {
                remove_base::How::Trash
            };
            change(root, options(config, None), |lib, _| {
                remove_base::remove_base(lib, &name, how).map(|d| (d.to_string(), Vec::new()))
            })
        }
        Command::Recover { list, show, discard } => recover(root, config, list, show, discard),
        Command::Forget { leaf } => {
            change(root, options(config, None), |lib, _| forget::forget(lib, &leaf).map(|m| (m, Vec::new())))
        }
        Command::Install { .. }
        | Command::Uninstall { .. }
        | Command::Demo { .. }
        | Command::Log { .. }
        | Command::Completions { .. }
        | Command::Man { .. } => Err(Error::internal(None, "a command without a library reached run_on_library")),
    }
}

/// `leafd completions SHELL`: the script, on stdout.
fn completions(shell: Shell) -> Result<Exit> {
    use clap::CommandFactory;
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut Cli::command(), "leafd", &mut std::io::stdout());
    Ok(Exit::Success)
}

/// `leafd man [DIR]`: leafd.1 on stdout, or every command's page written into `dir`.
fn man(dir: Option<&Path>) -> Result<Exit> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).at(dir, "cannot create the folder for the manual pages")?;
            clap_mangen::generate_to(cmd, dir).at(dir, "cannot write the manual pages")?;
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out).at(Path::new("leafd.1"), "cannot render the manual page")?;
            std::io::Write::write_all(&mut std::io::stdout(), &out).at(Path::new("stdout"), "cannot print")?;
        }
    }
    Ok(Exit::Success)
}

/// `leafd agent`: the settings checked (a bad `--settle` is bad usage; a bad value in the file
/// is refused, naming it), then the agent runs until it is stopped.
fn run_agent(root: &Path, config: &Config, flag: Option<&str>) -> Result<Exit> {
    const SETTLE_FIX: &str = "give seconds between 0 and 3600 (3, 1.5) or a duration up to an hour (1.5s, 500ms)";
    let settle = match flag {
        Some(settle) => settle_period(settle).ok_or_else(|| {
            let shown = if settle.parse::<f64>().is_ok() { format!("{settle} s") } else { format!("{settle:?}") };
            Error::usage(format!("a settle period of {shown} makes no sense")).fix(SETTLE_FIX)
        }),
        None => {
            let settle = config.settle_seconds.unwrap_or(3.0);
            seconds(settle, 0.0..=3600.0).ok_or_else(|| {
                Error::refused(&crate::config::path(), format!("settle_seconds = {settle} makes no sense"))
                    .fix("give seconds between 0 and 3600")
            })
        }
    }?;
    let retry = config.retry_seconds.unwrap_or(300.0);
    let retry = seconds(retry, 1.0..=86400.0).ok_or_else(|| {
        Error::refused(&crate::config::path(), format!("retry_seconds = {retry} makes no sense"))
            .fix("give seconds between 1 and 86400")
    })?;
    let settings = agent::Settings {
        settle,
        retry,
        new_leaf_quiet: config.new_leaf_quiet()?,
        notifications: config.notifications.unwrap_or(true),
        opts: options(config, None),
    };
    let _log = start_log(root, true);
    // Into the log only: stderr gets it once, from `main`.
    agent::run(root, settings).inspect_err(|e| tracing::error!(target: logging::FILE_ONLY, "{}", e.summary()))?;
    Ok(Exit::Success)
}

/// `seconds` as a duration, when it is a number in `range`.
fn seconds(seconds: f64, range: std::ops::RangeInclusive<f64>) -> Option<Duration> {
    (seconds.is_finite() && range.contains(&seconds)).then(|| Duration::from_secs_f64(seconds))
}

/// `--settle`: seconds (`3`, `1.5`) or a duration (`1.5s`, `500ms`), from 0 to an hour.
fn settle_period(text: &str) -> Option<Duration> {
    let text = text.trim();
    let period = match text.parse::<f64>() {
        Ok(secs) => return seconds(secs, 0.0..=3600.0),
        Err(_) => humantime::parse_duration(text).ok()?,
    };
    (period <= Duration::from_secs(3600)).then_some(period)
}

/// `leafd make-base`: the base is usable (and said so) before its fingerprint is recorded.
fn make_base(root: &Path, config: &Config, bundle: &Path, name: Option<&str>) -> Result<Exit> {
    let _log = start_log(root, false);
    let opts = options(config, None);
    let lib = open_for_change(root, &opts)?;
    let (made, fingerprinting) =
        make_base::make_base(&lib, bundle, name, &opts).inspect_err(|e| tracing::warn!("{}", e.summary()))?;
    tracing::info!("{made}");
    println!("{made}");
    warn_all(&made.warnings);
    fingerprinting.finish(&lib, &opts)?;
    Ok(Exit::Success)
}

/// `leafd status`: the service is reported even without a library (the agent may be what
/// makes it), after the library's error; as JSON, one or the other: the object, or the error.
fn show_status(root: &Path, json: bool) -> Result<Exit> {
    let s = Library::open_existing(root).and_then(|lib| status::status(&lib));
    let service = service::state(&service::Context::current());
    if json {
        let mut v = to_json(&s?)?;
        v["service"] = to_json(&service)?;
        println!("{}", pretty(&v)?);
        return Ok(Exit::Success);
    } else {
        if let Ok(s) = &s {
            println!("{}", status::render(s));
        }
        println!("{}", service.render());
    }
    s.map(|_| Exit::Success)
}

/// `leafd verify`: problems found exit 1.
fn verify(root: &Path, config: &Config, json: bool, deep: bool, names: &[String]) -> Result<Exit> {
    let _log = start_log(root, false);
    let opts = options(config, None);
    let lib = Library::open_existing(root)?;
    let report = verify::verify(&lib, names, deep, &opts)?;
    if json {
        println!("{}", pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    for r in &report.repaired {
        tracing::info!("verify repaired {}: {}", r.path, r.what);
    }
    if report.problems.is_empty() {
        return Ok(Exit::Success);
    }
    // What, not only how many: each problem, the first few of a long list.
    const SHOWN: usize = 5;
    let mut what: Vec<String> = report.problems.iter().take(SHOWN).map(|p| format!("{}: {}", p.path, p.what)).collect();
    if report.problems.len() > SHOWN {
        what.push(format!("and {} more (`leafd verify` lists them)", report.problems.len() - SHOWN));
    }
    tracing::warn!("verify found {} problem(s): {}", report.problems.len(), what.join("; "));
    Ok(Exit::Failed)
}

/// `leafd recover` and its `--list`, `--show` and `--discard`: operations left exit 1.
fn recover(root: &Path, config: &Config, list: bool, show: Option<String>, discard: Option<String>) -> Result<Exit> {
    if list {
        let lines = recovery::list(&Library::open_existing(root)?)?;
        if lines.is_empty() {
            println!("no interrupted operations");
        }
        for l in lines {
            println!("{l}");
        }
    } else if let Some(id) = show {
        print!("{}", recovery::show(&Library::open_existing(root)?, &id)?);
    } else if let Some(id) = discard {
        let _log = start_log(root, false);
        let shown = recovery::discard(&Library::open_existing(root)?, &id)?;
        print!("{shown}");
        println!("discarded {id}: nothing was moved or deleted; the places above are as they are");
    } else {
        let _log = start_log(root, false);
        let lib = open_for_change(root, &options(config, None))?;
        let left = journal::pending(&lib);
        println!("{left} interrupted operation(s) left");
        if left > 0 {
            return Ok(Exit::Failed);
        }
    }
    Ok(Exit::Success)
}

fn to_json(value: &impl serde::Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| Error::internal(None, format!("cannot show this as JSON: {e}")))
}

fn pretty(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::internal(None, format!("cannot show this as JSON: {e}")))
}

/// Parses the command line, runs it, and exits as error.rs says: clap's own answers
/// (help and version, or bad usage) are printed its way.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { Exit::Usage } else { Exit::Success }.into();
        }
    };
    match run(cli) {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("leafd: {e}");
            e.kind.exit().into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `--help` documents every command, argument and flag (clap's own help and version aside).
    #[test]
    fn every_command_argument_and_flag_is_documented() {
        fn check(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            if cmd.get_about().is_none() {
                missing.push(format!("{path}: the command"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if !matches!(id, "help" | "version") && arg.get_help().is_none() {
                    missing.push(format!("{path}: {id}"));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                check(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        check(&Cli::command(), "leafd", &mut missing);
        assert!(missing.is_empty(), "undocumented in --help: {missing:?}");
    }

    #[test]
    fn settle_takes_seconds_and_durations() {
        let ms = |ms| Some(Duration::from_millis(ms));
        assert_eq!(settle_period("3"), ms(3000));
        assert_eq!(settle_period("1.5"), ms(1500));
        assert_eq!(settle_period("1.5s"), ms(1500));
        assert_eq!(settle_period("500ms"), ms(500));
        assert_eq!(settle_period("1m"), ms(60_000));
        assert_eq!(settle_period("0"), ms(0));
        for bad in ["-1", "3601", "61m", "soon", "", "NaN", "inf", "1.5 parsecs"] {
            assert_eq!(settle_period(bad), None, "{bad:?}");
        }
    }
}
