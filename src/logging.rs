//! The log a person reads (SPEC §7): one line per outcome, daily files, a stable `leafd.log`.
//!
//! Outcomes are `info` events and are written as `YYYY-MM-DD HH:MM:SS <what happened>`; warnings
//! and errors carry their level; details are `debug` (`RUST_LOG=debug` shows them). Lines go
//! through a non-blocking writer that never drops lines, and the returned guard flushes it: keep
//! it alive until the process exits.

use std::fmt;
use std::fs;
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

use crate::error::{Error, IoContext, Result};

/// The stable name to open: a link to today's file.
pub const CURRENT: &str = "leafd.log";
/// Days of logs kept.
pub const KEEP_DAYS: usize = 30;

/// `2026-11-28 10:42:03 base "Ubuntu" made ...`, with the level for anything but outcomes.
struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(w, "{} ", chrono::Local::now().format("%Y-%m-%d %H:%M:%S"))?;
        let level = *event.metadata().level();
        if level != Level::INFO {
            write!(w, "{level} ")?;
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// The daily appender, keeping `leafd.log` pointing at the file it writes today. Several leafd
/// processes may share the folder, so the link is replaced atomically (a new link renamed over
/// the old) rather than removed and recreated.
struct Linked {
    inner: RollingFileAppender,
    dir: PathBuf,
    day: String,
}

impl io::Write for Linked {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // The appender names files by the UTC date: leafd.YYYY-MM-DD.log.
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        if day != self.day {
            let tmp = self.dir.join(format!(".{CURRENT}.{}", std::process::id()));
            let _ = fs::remove_file(&tmp);
            if std::os::unix::fs::symlink(format!("leafd.{day}.log"), &tmp)
                .and_then(|()| fs::rename(&tmp, self.dir.join(CURRENT)))
                .is_ok()
            {
                self.day = day;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Starts logging to `dir` (and to stderr too when `echo` is set, for the agent, whose stderr
/// launchd and systemd keep).
pub fn init(dir: &Path, echo: bool) -> Result<WorkerGuard> {
    fs::create_dir_all(dir).at(dir, "cannot create the log folder")?;
    let appender = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix("leafd")
        .filename_suffix("log")
        .max_log_files(KEEP_DAYS)
        .build(dir)
        .map_err(|e| Error::new(crate::error::Kind::Io, dir.to_path_buf(), format!("cannot open the log: {e}")))?;
    let linked = Linked { inner: appender, dir: dir.to_path_buf(), day: String::new() };
    let (writer, guard) = NonBlockingBuilder::default().lossy(false).thread_name("leafd-log").finish(linked);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let file_layer = tracing_subscriber::fmt::layer().event_format(LineFormat).with_writer(writer).with_ansi(false);
    let echo_layer = echo
        .then(|| tracing_subscriber::fmt::layer().event_format(LineFormat).with_writer(io::stderr).with_ansi(false));
    let subscriber = tracing_subscriber::registry().with(filter).with(file_layer).with(echo_layer);
    // A second init (tests calling in-process) keeps the first subscriber.
    let _ = tracing::subscriber::set_global_default(subscriber);
    Ok(guard)
}

/// The log files in `dir`, oldest first.
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    n.starts_with("leafd.") && n.ends_with(".log") && n != CURRENT && !p.is_symlink()
                })
                .collect()
        })
        .unwrap_or_default();
    // Names carry the date (leafd.YYYY-MM-DD.log), so name order is time order.
    files.sort();
    files
}

/// The last `n` lines of the log.
pub fn tail(dir: &Path, n: usize) -> Result<Vec<String>> {
    let mut lines: Vec<String> = Vec::new();
    for f in log_files(dir).iter().rev() {
        let text = fs::read_to_string(f).at(f, "cannot read the log")?;
        let mut these: Vec<String> = text.lines().map(str::to_string).collect();
        these.append(&mut lines);
        lines = these;
        if lines.len() >= n {
            break;
        }
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines.split_off(skip))
}

/// Prints the last `n` lines, then (with `follow`) new lines as they come, across rotations.
pub fn show(dir: &Path, n: usize, follow: bool, out: &mut dyn io::Write) -> Result<()> {
    for l in tail(dir, n)? {
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
                write!(out, "{line}").at(dir, "cannot print")?;
                line.clear();
            }
            out.flush().at(dir, "cannot print")?;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
