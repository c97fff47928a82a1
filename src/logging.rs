//! The log a person reads (SPEC §7): one log per user, one line per outcome, daily files, a
//! stable `leafd.log`.
//!
//! Outcomes are `info` events and are written as `YYYY-MM-DD HH:MM:SS [<library>] <what
//! happened>`, the library as [`library_label`] names it (every leafd process works on one);
//! warnings and errors carry their level after it; details are `debug` (`RUST_LOG=debug` shows
//! them). `leafd log` shows one library's lines ([`show`] with a label), or all. Lines go
//! through a non-blocking writer that never drops lines, and the returned guard flushes it: keep
//! it alive until the process exits.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDate;
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

use crate::error::{IoContext, Result};
use crate::fsutil;

/// The stable name to open: a link to today's file.
pub(crate) const CURRENT: &str = "leafd.log";
/// The target of events for the log file alone, never echoed to stderr (an error the caller
/// prints itself).
pub(crate) const FILE_ONLY: &str = "leafd::file_only";
/// Days of logs kept.
pub(crate) const KEEP_DAYS: usize = 30;

/// `2026-11-28 10:42:03 [~/vmware] base "Ubuntu" made ...`, with the level for anything but
/// outcomes.
struct LineFormat {
    /// [`library_label`] of the library this process works on.
    library: String,
}

/// Where a line's library label starts: after `YYYY-MM-DD HH:MM:SS `.
const LABEL_AT: usize = 20;

/// How the log names the library at `root`: its absolute path (links resolved as far as it
/// exists), with `~` for the home folder, and `\` before a `]` or `\` in it (so a label ends at
/// the first plain `]`). The same library always gets the same label.
pub(crate) fn library_label(root: &Path) -> String {
    let resolve = |p: &Path| {
        let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        p.canonicalize().ok().or_else(|| Some(p.parent()?.canonicalize().ok()?.join(p.file_name()?))).unwrap_or(p)
    };
    let root = resolve(root);
    let home = resolve(&crate::platform::home());
    let shown = match root.strip_prefix(&home) {
        Ok(rest) if home != Path::new("/") => Path::new("~").join(rest).display().to_string(),
        _ => root.display().to_string(),
    };
    shown.replace('\\', "\\\\").replace(']', "\\]")
}

/// Whether `line` is one of the library labelled `label`.
fn of_library(line: &str, label: &str) -> bool {
    line.get(LABEL_AT..)
        .and_then(|rest| rest.strip_prefix('[')?.strip_prefix(label))
        .is_some_and(|r| r.starts_with("] "))
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(w, "{} [{}] ", chrono::Local::now().format("%Y-%m-%d %H:%M:%S"), self.library)?;
        let level = *event.metadata().level();
        if level != Level::INFO {
            write!(w, "{level} ")?;
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// The day's file, named by the local date as the lines are stamped with local time
/// (tracing-appender's roller names and rolls files by the UTC date). Opened for appending, so
/// several leafd processes (the agent, a command) add their lines to the same file safely.
struct DailyFile {
    dir: PathBuf,
    day: NaiveDate,
    file: File,
}

impl DailyFile {
    /// Opens the file of `day`, points `leafd.log` at it and removes files beyond [`KEEP_DAYS`].
    fn open(dir: &Path, day: NaiveDate) -> io::Result<DailyFile> {
        let name = format!("leafd.{}.log", day.format("%Y-%m-%d"));
        let file = OpenOptions::new().create(true).append(true).open(dir.join(&name))?;
        link_current(dir, &name);
        let files = log_files(dir);
        for old in &files[..files.len().saturating_sub(KEEP_DAYS)] {
            let _ = fs::remove_file(old);
        }
        Ok(DailyFile { dir: dir.to_path_buf(), day, file })
    }

    /// Writes `buf` into the file of `today`, moving to a new file when the date has changed.
    fn write_on(&mut self, today: NaiveDate, buf: &[u8]) -> io::Result<usize> {
        if today != self.day {
            *self = DailyFile::open(&self.dir, today)?;
        }
        self.file.write(buf)
    }
}

impl io::Write for DailyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_on(chrono::Local::now().date_naive(), buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Points `leafd.log` at the file `name`, best effort. Several leafd processes may share the
/// folder, so the link is replaced atomically (a new link renamed over the old) rather than
/// removed and recreated.
fn link_current(dir: &Path, name: &str) {
    let tmp = dir.join(format!(".{CURRENT}.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    if std::os::unix::fs::symlink(name, &tmp).and_then(|()| fs::rename(&tmp, dir.join(CURRENT))).is_err() {
        let _ = fs::remove_file(&tmp);
    }
}

/// Starts logging to `dir`, every line naming the library at `root` (and to stderr too when
/// `echo` is set, for the agent, whose stderr launchd and systemd keep).
pub(crate) fn init(dir: &Path, root: &Path, echo: bool) -> Result<WorkerGuard> {
    let library = library_label(root);
    fs::create_dir_all(dir).at(dir, "cannot create the log folder")?;
    let file = DailyFile::open(dir, chrono::Local::now().date_naive()).at(dir, "cannot open the log")?;
    let (writer, guard) = NonBlockingBuilder::default().lossy(false).thread_name("leafd-log").finish(file);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = || LineFormat { library: library.clone() };
    let file_layer = tracing_subscriber::fmt::layer().event_format(format()).with_writer(writer).with_ansi(false);
    let echo_layer = echo.then(|| {
        tracing_subscriber::fmt::layer()
            .event_format(format())
            .with_writer(io::stderr)
            .with_ansi(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|m| m.target() != FILE_ONLY))
    });
    let subscriber = tracing_subscriber::registry().with(filter).with(file_layer).with(echo_layer);
    // A second init (tests calling in-process) keeps the first subscriber.
    let _ = tracing::subscriber::set_global_default(subscriber);
    Ok(guard)
}

/// The daily files in `dir` (`leafd.YYYY-MM-DD.log`), oldest first.
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let dated = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str()?.strip_prefix("leafd.")?.strip_suffix(".log"))
            .is_some_and(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok())
    };
    // Sorted by name, which carries the date: name order is time order.
    let mut files = fsutil::entries(dir).unwrap_or_default();
    files.retain(|p| dated(p) && !p.is_symlink());
    files
}

/// The last `n` lines of the log: of the library labelled `library`, or all of them.
pub(crate) fn tail(dir: &Path, library: Option<&str>, n: usize) -> Result<Vec<String>> {
    let mut lines: Vec<String> = Vec::new();
    for f in log_files(dir).iter().rev() {
        let text = fs::read_to_string(f).at(f, "cannot read the log")?;
        let mut these: Vec<String> =
            text.lines().filter(|l| library.is_none_or(|lib| of_library(l, lib))).map(str::to_string).collect();
        these.append(&mut lines);
        lines = these;
        if lines.len() >= n {
            break;
        }
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines.split_off(skip))
}

/// Prints the last `n` lines of the library labelled `library` (or of all), then (with `follow`)
/// new lines as they come, across rotations.
pub(crate) fn show(dir: &Path, library: Option<&str>, n: usize, follow: bool, out: &mut dyn io::Write) -> Result<()> {
    for l in tail(dir, library, n)? {
        writeln!(out, "{l}").at(dir, "cannot print")?;
    }
    if !follow {
        return Ok(());
    }
    let mut current = log_files(dir).pop();
    let mut pos = current.as_ref().and_then(|f| fs::metadata(f).ok()).map_or(0, |m| m.len());
    loop {
        let newest = log_files(dir).pop();
        if newest != current {
            current = newest;
            pos = 0;
        }
        if let Some(f) = &current
            && let Ok(mut file) = fs::File::open(f)
            && file.metadata().map(|m| m.len()).unwrap_or(0) > pos
        {
            file.seek(SeekFrom::Start(pos)).at(f, "cannot read the log")?;
            let mut reader = io::BufReader::new(file.take(u64::MAX));
            let mut line = String::new();
            while reader.read_line(&mut line).at(f, "cannot read the log")? > 0 {
                if !line.ends_with('\n') {
                    break; // a line still being written: read it whole next time
                }
                pos += line.len() as u64;
                if library.is_none_or(|lib| of_library(&line, lib)) {
                    write!(out, "{line}").at(dir, "cannot print")?;
                }
                line.clear();
            }
            out.flush().at(dir, "cannot print")?;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(n: u64) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, 20).unwrap() + chrono::Days::new(n)
    }

    fn current(dir: &Path) -> String {
        fs::read_link(dir.join(CURRENT)).unwrap().to_string_lossy().into_owned()
    }

    #[test]
    fn files_follow_the_given_date_and_old_ones_go() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut agent = DailyFile::open(dir, day(0)).unwrap();
        agent.write_on(day(0), b"one\n").unwrap();
        // Another leafd process on the same day appends to the same file.
        let mut command = DailyFile::open(dir, day(0)).unwrap();
        command.write_on(day(0), b"two\n").unwrap();
        agent.write_on(day(0), b"three\n").unwrap();
        assert_eq!(fs::read_to_string(dir.join("leafd.2026-12-20.log")).unwrap(), "one\ntwo\nthree\n");
        assert_eq!(current(dir), "leafd.2026-12-20.log");
        // Past midnight (local): a new file, and leafd.log follows it.
        agent.write_on(day(1), b"four\n").unwrap();
        assert_eq!(fs::read_to_string(dir.join("leafd.2026-12-21.log")).unwrap(), "four\n");
        assert_eq!(current(dir), "leafd.2026-12-21.log");
        assert_eq!(fs::read_to_string(dir.join(CURRENT)).unwrap(), "four\n");
        // Not a daily file: never removed.
        fs::write(dir.join("leafd.notes.log"), b"mine").unwrap();
        for n in 2..KEEP_DAYS as u64 + 5 {
            agent.write_on(day(n), format!("day {n}\n").as_bytes()).unwrap();
        }
        let files = log_files(dir);
        assert_eq!(files.len(), KEEP_DAYS);
        assert_eq!(files[0], dir.join(format!("leafd.{}.log", day(5).format("%Y-%m-%d"))));
        assert_eq!(current(dir), format!("leafd.{}.log", day(KEEP_DAYS as u64 + 4).format("%Y-%m-%d")));
        assert!(dir.join("leafd.notes.log").exists());
        assert_eq!(tail(dir, None, 2).unwrap(), [format!("day {}", KEEP_DAYS + 3), format!("day {}", KEEP_DAYS + 4)]);
    }

    #[test]
    fn a_library_is_known_by_its_label_alone() {
        let line = |label: &str| format!("2026-12-01 10:42:03 [{label}] base \"Ubuntu\" made");
        assert!(of_library(&line("~/vmware"), "~/vmware"));
        for other in ["~/vmware2", "~/vm", "/home/me/vmware"] {
            assert!(!of_library(&line(other), "~/vmware"), "{other}");
        }
        // A library whose path holds "] ": its label cannot be taken for another's.
        let odd = library_label(Path::new("/srv/vmware] x"));
        assert_eq!(odd, "/srv/vmware\\] x");
        assert!(of_library(&line(&odd), &odd) && !of_library(&line(&odd), "/srv/vmware"));
        assert!(!of_library("2026-12-01 10:42:03 base \"Ubuntu\" made (a line from before labels)", "~/vmware"));
        assert!(!of_library("", "~/vmware"));
    }
}
