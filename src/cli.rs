//! The command line (SPEC §6): parses, calls the library, the agent or the service, and prints.
//! How it exits is decided in [`crate::error`] (0 ok, 1 refused, failed or problems found, 2 bad
//! usage).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use leafd_formats::clone::PathStyle;

use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::library::ops::{forget, make_base, new_leaf, promote, relink, remove_base, status, verify};
use crate::library::{Library, Options, SnapshotBackend, journal, recovery};
use crate::{agent, demo, logging, platform, progress, service};

#[derive(Parser)]
#[command(name = "leafd", version, about = "VMware linked clones as easy as making a folder", max_term_width = 100)]
pub(crate) struct Cli {
    /// The library folder (default: LEAFD_ROOT, then config.toml, then the platform's VM folder)
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
        /// Seconds an item must be quiet before leafd acts on it (default: config, else 3)
        #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
        settle: Option<f64>,
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
        base: String,
        name: String,
        /// Who takes the snapshot (default: config, else auto)
        #[arg(long, value_enum)]
        snapshot: Option<Snapshot>,
    },
    /// Bases, their leaves, space used and saved, pending and failed drops
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check every chain, protection and lineage record; exit 1 on any problem
    Verify {
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
    /// Remove a base no leaf depends on (to the Trash on macOS; deleted on Linux)
    RemoveBase {
        name: String,
        /// Confirm deleting for good where there is no Trash
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
        #[arg(long)]
        dry_run: bool,
    },
    /// Build a small sample VM and walk it through the whole flow with the real agent
    Demo {
        /// An empty folder to run in (default: a new temporary folder, kept afterwards)
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
    /// Recent results from the log
    Log {
        /// Keep printing new lines
        #[arg(short, long)]
        follow: bool,
        /// How many lines
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
    },
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
    let _log = start_log(false);
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

/// Starts the log; a log that cannot be opened is reported, and the work goes on without it.
fn start_log(echo: bool) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    logging::init(&platform::log_dir(), echo).inspect_err(|e| eprintln!("leafd: warning: {e}")).ok()
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
    if bars(&cli) {
        progress::show_bars();
    }
    let config = Config::load()?;
    let root = config.root(cli.root.as_deref());
    match cli.command {
        Command::Agent { settle } => run_agent(&root, &config, settle),
        Command::MakeBase { bundle, name } => make_base(&root, &config, &bundle, name.as_deref()),
        Command::NewLeaf { base, name, snapshot } => {
            change(&root, options(&config, snapshot.map(Into::into)), |lib, opts| {
                new_leaf::new_leaf(lib, &base, &name, None, opts).map(|m| (m.to_string(), m.warnings))
            })
        }
        Command::Status { json } => show_status(&root, json),
        Command::Install { dry_run } => {
            let ctx = service::Context::current();
            let program = service::Program::current(cli.root.as_deref())?;
            warn_all(&service::install_warnings(&ctx, &program));
            service::execute(&service::install_plan(&ctx, &program)?, dry_run, &mut std::io::stdout())?;
            Ok(Exit::Success)
        }
        Command::Uninstall { dry_run } => {
            service::execute(&service::uninstall_plan(&service::Context::current()), dry_run, &mut std::io::stdout())?;
            Ok(Exit::Success)
        }
        Command::Verify { json, deep, names } => verify(&root, &config, json, deep, &names),
        Command::Relink { leaf } => change(&root, options(&config, None), |lib, opts| {
            relink::relink(lib, &leaf, opts).map(|d| (d.to_string(), Vec::new()))
        }),
        Command::Promote { leaf } => change(&root, options(&config, None), |lib, opts| {
            promote::promote(lib, &leaf, opts).map(|d| (d.to_string(), Vec::new()))
        }),
        Command::RemoveBase { name, yes } => {
            let confirmed = yes || (!platform::HAS_TRASH && confirm(&format!("Delete base {name:?} for good? [y/N] ")));
            change(&root, options(&config, None), |lib, _| {
                remove_base::remove_base(lib, &name, confirmed).map(|d| (d.to_string(), Vec::new()))
            })
        }
        Command::Demo { dir } => demo::run(dir.as_deref()).map(|()| Exit::Success),
        Command::Recover { list, show, discard } => recover(&root, &config, list, show, discard),
        Command::Forget { leaf } => {
            change(&root, options(&config, None), |lib, _| forget::forget(lib, &leaf).map(|m| (m, Vec::new())))
        }
        Command::Log { follow, lines } => {
            logging::show(&platform::log_dir(), lines, follow, &mut std::io::stdout())?;
            Ok(Exit::Success)
        }
    }
}

/// `leafd agent`: the settings checked (a bad `--settle` is bad usage; a bad value in the file
/// is refused, naming it), then the agent runs until it is stopped.
fn run_agent(root: &Path, config: &Config, flag: Option<f64>) -> Result<Exit> {
    let settle = match flag {
        Some(settle) => seconds(settle, 0.0..=3600.0)
            .ok_or_else(|| Error::usage(format!("a settle period of {settle} s makes no sense"))),
        None => {
            let settle = config.settle_seconds.unwrap_or(3.0);
            seconds(settle, 0.0..=3600.0).ok_or_else(|| {
                Error::refused(&crate::config::path(), format!("settle_seconds = {settle} makes no sense"))
            })
        }
    }
    .map_err(|e| e.fix("give seconds between 0 and 3600"))?;
    let retry = config.retry_seconds.unwrap_or(300.0);
    let retry = seconds(retry, 1.0..=86400.0).ok_or_else(|| {
        Error::refused(&crate::config::path(), format!("retry_seconds = {retry} makes no sense"))
            .fix("give seconds between 1 and 86400")
    })?;
    let settings = agent::Settings {
        settle,
        retry,
        new_leaf_quiet: config.new_leaf_quiet()?,
        notifications: config.notifications.unwrap_or(cfg!(target_os = "macos")),
        opts: options(config, None),
    };
    let _log = start_log(true);
    agent::run(root, settings).inspect_err(|e| tracing::error!("{}", e.summary()))?;
    Ok(Exit::Success)
}

/// `seconds` as a duration, when it is a number in `range`.
fn seconds(seconds: f64, range: std::ops::RangeInclusive<f64>) -> Option<Duration> {
    (seconds.is_finite() && range.contains(&seconds)).then(|| Duration::from_secs_f64(seconds))
}

/// `leafd make-base`: the base is usable (and said so) before its fingerprint is recorded.
fn make_base(root: &Path, config: &Config, bundle: &Path, name: Option<&str>) -> Result<Exit> {
    let _log = start_log(false);
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
/// makes it).
fn show_status(root: &Path, json: bool) -> Result<Exit> {
    let s = Library::open_existing(root).and_then(|lib| status::status(&lib));
    let service = service::state(&service::Context::current());
    if json {
        let mut v = match &s {
            Ok(s) => to_json(s)?,
            Err(_) => serde_json::json!({}),
        };
        v["service"] = to_json(&service)?;
        println!("{}", pretty(&v)?);
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
    let _log = start_log(false);
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
    tracing::warn!("verify found {} problem(s)", report.problems.len());
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
        let _log = start_log(false);
        let shown = recovery::discard(&Library::open_existing(root)?, &id)?;
        print!("{shown}");
        println!("discarded {id}: nothing was moved or deleted; the places above are as they are");
    } else {
        let _log = start_log(false);
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
