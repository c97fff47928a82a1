//! Progress of long operations (docs/progress.md): a copy across volumes, a flatten, promote,
//! fingerprints, `verify --deep`.
//!
//! The whole API, for an operation:
//!
//! ```ignore
//! let progress = Progress::start(lib, format!("copying {name}"), &bundle, bytes);
//! durable::copy_file(..)?;     // inner loops report their bytes through `meter::add`
//! progress.next(format!("checking the copy of {name}"), bytes);   // a next part, if any
//! // dropped: the work is over (done, failed or stopped), and its progress goes away
//! ```
//!
//! `durable::copy_file`, `fsutil::same_content`, `fsutil::fingerprint` and the formats crate's
//! flatten (through `Env::progress`) report to the progress started on their thread, so an
//! operation built from them reports without passing anything down. A loop of its own reports
//! with [`meter::add`]. A `Progress` belongs to the thread that started it.
//!
//! Nothing shows for the first second (most operations are over by then). After that, at most
//! four times a second, the progress is shown:
//!
//! - in its record, `.leafd/progress/<id>.json` ([`Record`]), which `leafd status` reads; the
//!   file `<id>.lock` beside it is locked while the operation runs, so recovery removes the
//!   records of operations that are gone, and `status` shows only running ones;
//! - in the log: one line when it starts showing, one when it ends;
//! - as a bar on stderr (bytes, rate, time left), when the command line asked for one
//!   ([`show_bars`]);
//! - in Finder, on the item (macOS; see `platform::FinderProgress`).
//!
//! None of this can fail the operation: a record that cannot be written is only not shown.

pub(crate) mod meter;

use std::cell::RefCell;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::library::ops::common::human_bytes;
use crate::library::{Library, records};
use crate::{durable, fsutil, platform};

/// How long an operation runs before its progress shows.
const VISIBLE_AFTER: Duration = Duration::from_secs(1);
/// How often, at most, a progress is shown again.
const EVERY: Duration = Duration::from_millis(250);

static BARS: AtomicBool = AtomicBool::new(false);

/// Draws a bar on stderr for each long operation this process runs from now on. The command
/// line calls it when stderr is a terminal, unless `--quiet` or `--json` is given.
pub(crate) fn show_bars() {
    BARS.store(true, Ordering::Relaxed);
}

/// A progress record, `.leafd/progress/<id>.json`: what the operation is doing now (`what`, on
/// the file or folder `item`), `done` of `total` bytes of it, since `started` (this part of the
/// work), as of `updated` (RFC 3339, local time with milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) what: String,
    pub(crate) item: String,
    pub(crate) done: u64,
    pub(crate) total: u64,
    pub(crate) started: String,
    pub(crate) updated: String,
}

impl Record {
    /// Seconds left at the rate so far; `None` before anything is done.
    pub(crate) fn seconds_left(&self) -> Option<f64> {
        let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
        let elapsed = (at(&self.updated)? - at(&self.started)?).num_milliseconds() as f64 / 1000.0;
        (self.done > 0 && elapsed > 0.0)
            .then(|| self.total.saturating_sub(self.done) as f64 * elapsed / self.done as f64)
    }

    /// For a person: "copying Win11: 12.3 of 40.0 GiB, about 2 min left".
    pub(crate) fn line(&self) -> String {
        let (done, total) = (human_bytes(self.done), human_bytes(self.total));
        let unit = total.rsplit_once(' ').map(|(_, u)| u).unwrap_or_default();
        let done = done.strip_suffix(&format!(" {unit}")).map_or(done.clone(), str::to_string);
        let left = self.seconds_left().map(|s| format!(", {}", about(s))).unwrap_or_default();
        format!("{}: {done} of {total}{left}", self.what)
    }
}

/// "about 2 min left".
fn about(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("about {} s left", s.max(1)),
        60..3600 => format!("about {} min left", (s + 30) / 60),
        _ => format!("about {} h {} min left", s / 3600, (s % 3600 + 30) / 60),
    }
}

/// "1 min 50 s", for the log.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1} s", d.as_secs_f64()),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

fn now() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

/// `.leafd/progress/` of `lib`.
fn dir_of(lib: &Library) -> PathBuf {
    lib.state_dir().join("progress")
}

fn file(dir: &Path, id: &str, ext: &str) -> PathBuf {
    dir.join(format!("{id}.{ext}"))
}

/// A long operation's progress, shown while it lives (see the module's documentation).
pub(crate) struct Progress {
    inner: Rc<Inner>,
    _on: meter::Installed,
}

struct Inner {
    /// Where its record goes; `None` for work that changes nothing, which only draws its bar.
    dir: Option<PathBuf>,
    id: String,
    item: PathBuf,
    visible_after: Duration,
    state: RefCell<State>,
}

struct State {
    /// What it is doing now, and what it started as (for the log).
    what: String,
    first: String,
    total: u64,
    done: u64,
    started: Instant,
    /// When this part of the work started, for the record.
    part_started: String,
    /// When to look at the clock's verdict again.
    next: Instant,
    shown: Option<Shown>,
    /// The terminal bar of this part of the work, when bars are shown: drawn once the progress
    /// shows, and made at the start, so its rate counts from there.
    bar: Option<ProgressBar>,
    /// Records written.
    reports: u64,
}

/// Where a progress that has run long enough shows, besides its bar.
struct Shown {
    /// The lock of its record; `None` when the record could not be made (it is not written).
    lock: Option<File>,
    finder: Option<platform::FinderProgress>,
}

impl Progress {
    /// Starts the progress of `total` bytes of work, `what` ("copying Win11") on `item` (the
    /// bundle, the base, the leaf), in library `lib`. It shows once the operation has run a
    /// second, and goes when dropped.
    pub(crate) fn start(lib: &Library, what: impl Into<String>, item: &Path, total: u64) -> Progress {
        Progress::start_after(lib, what.into(), item, total, VISIBLE_AFTER)
    }

    /// [`Progress::start`], showing after `visible_after` (the bench shows it at once).
    pub(crate) fn start_after(
        lib: &Library,
        what: String,
        item: &Path,
        total: u64,
        visible_after: Duration,
    ) -> Progress {
        Progress::new(Some(dir_of(lib)), what, item, total, visible_after)
    }

    /// The progress of work that changes nothing (a dry run): only its bar shows, no record,
    /// no log line, nothing in Finder.
    pub(crate) fn bar_only(what: impl Into<String>, item: &Path, total: u64) -> Progress {
        Progress::new(None, what.into(), item, total, VISIBLE_AFTER)
    }

    fn new(dir: Option<PathBuf>, what: String, item: &Path, total: u64, visible_after: Duration) -> Progress {
        let started = Instant::now();
        let state = State {
            first: what.clone(),
            bar: bar(&what, total, false),
            what,
            total,
            done: 0,
            started,
            part_started: now(),
            next: started + visible_after,
            shown: None,
            reports: 0,
        };
        let inner = Rc::new(Inner {
            dir,
            id: records::new_id(),
            item: item.to_path_buf(),
            visible_after,
            state: RefCell::new(state),
        });
        let on = meter::install(inner.clone());
        Progress { inner, _on: on }
    }

    /// The next part of the work: `what` it does now, of `total` bytes (counted from 0 again).
    pub(crate) fn next(&self, what: impl Into<String>, total: u64) {
        let Ok(mut s) = self.inner.state.try_borrow_mut() else { return };
        s.what = what.into();
        s.total = total;
        s.done = 0;
        s.part_started = now();
        if let Some(old) = s.bar.take() {
            old.finish_and_clear();
        }
        s.bar = bar(&s.what, total, s.shown.is_some());
        self.inner.look(&mut s, Instant::now());
    }

    /// How many times its record was written.
    pub(crate) fn reports(&self) -> u64 {
        self.inner.state.try_borrow().map_or(0, |s| s.reports)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.inner.end();
    }
}

impl meter::Sink for Inner {
    fn add(&self, bytes: u64) {
        let Ok(mut s) = self.state.try_borrow_mut() else { return };
        s.done = s.done.saturating_add(bytes);
        let now = Instant::now();
        if now >= s.next {
            self.look(&mut s, now);
        }
    }
}

impl Inner {
    /// Shows the progress once it has run long enough, and again each time after.
    fn look(&self, s: &mut State, now: Instant) {
        if s.shown.is_none() {
            let at = s.started + self.visible_after;
            if now < at {
                s.next = at;
                return;
            }
            s.shown = Some(self.show(s));
        }
        self.report(s);
        s.next = now + EVERY;
    }

    /// Starts showing: the record's lock, the log's first line, the bar, Finder.
    fn show(&self, s: &State) -> Shown {
        if let Some(bar) = &s.bar {
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        let Some(dir) = &self.dir else { return Shown { lock: None, finder: None } };
        tracing::info!("{}: started, {}", s.what, human_bytes(s.total));
        let lock = lock(dir, &self.id).inspect_err(|e| tracing::debug!("no progress record for {}: {e}", s.what)).ok();
        Shown { lock, finder: platform::FinderProgress::publish(&self.item, s.total) }
    }

    fn report(&self, s: &mut State) {
        let Some(shown) = &s.shown else { return };
        if let Some(bar) = &s.bar {
            bar.set_position(s.done);
        }
        if let Some(finder) = &shown.finder {
            finder.update(s.done, s.total);
        }
        let (Some(_), Some(dir)) = (&shown.lock, &self.dir) else { return };
        let record = Record {
            what: s.what.clone(),
            item: self.item.to_string_lossy().into_owned(),
            done: s.done,
            total: s.total,
            started: s.part_started.clone(),
            updated: now(),
        };
        let written = serde_json::to_vec(&record)
            .map_err(io::Error::other)
            .and_then(|json| durable::write_volatile(&file(dir, &self.id, "json"), &json));
        if let Err(e) = written {
            tracing::debug!("progress record of {} not written: {e}", s.what);
        }
        s.reports += 1;
    }

    /// The work is over: the record goes (then its lock), and the log says so: "ended" when all
    /// the bytes of its last part were reported, else where it stopped.
    fn end(&self) {
        let Ok(mut s) = self.state.try_borrow_mut() else { return };
        if let Some(bar) = s.bar.take() {
            bar.finish_and_clear();
        }
        let Some(shown) = s.shown.take() else { return };
        let Some(dir) = &self.dir else { return };
        if let Some(lock) = shown.lock {
            let _ = durable::remove_volatile(&file(dir, &self.id, "json"));
            let _ = durable::remove_volatile(&file(dir, &self.id, "lock"));
            drop(lock);
        }
        // Finder's progress goes with the rest of `shown`, at the end.
        let elapsed = span(s.started.elapsed());
        // Work counted in full: every byte of what it was to do, no more.
        if s.done == s.total {
            tracing::info!("{}: ended after {elapsed}", s.first);
        } else {
            let (done, total) = (human_bytes(s.done), human_bytes(s.total));
            tracing::info!("{}: stopped after {elapsed}, {} at {done} of {total}", s.first, s.what);
        }
    }
}

/// Takes the lock of record `id` in `dir` (made if needed). Recovery removes a lock file it
/// finds free, so one removed between its open and its lock is made again.
fn lock(dir: &Path, id: &str) -> io::Result<File> {
    durable::create_dir_volatile(dir)?;
    let path = file(dir, id, "lock");
    for _ in 0..3 {
        let lock = durable::lock_volatile(&path)?;
        lock.lock()?;
        let held = lock.metadata()?;
        if fs::metadata(&path).is_ok_and(|m| m.ino() == held.ino() && m.dev() == held.dev()) {
            return Ok(lock);
        }
    }
    Err(io::Error::other("its lock file was removed again and again"))
}

/// A bar for stderr (what, bytes, rate and time left, in one line of the terminal: what is cut
/// to fit), drawn there when `drawn`, else hidden until it is; `None` unless bars are shown
/// ([`show_bars`]).
fn bar(what: &str, total: u64, drawn: bool) -> Option<ProgressBar> {
    if !BARS.load(Ordering::Relaxed) {
        return None;
    }
    let style = ProgressStyle::with_template(
        "{wide_msg} [{bar:12}] {binary_bytes} of {binary_total_bytes}, {binary_bytes_per_sec}, {eta} left",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let target = if drawn { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    Some(ProgressBar::with_draw_target(Some(total), target).with_style(style).with_message(what.to_string()))
}

/// The progress `id` a file of `.leafd/progress/` belongs to: `<id>.json`, `<id>.lock`, or a
/// temporary file of the record (`.<id>.json.tmp-…`).
fn owner(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    match name.strip_prefix('.') {
        Some(tmp) => tmp.split_once(".json.tmp-").map(|(id, _)| id),
        None => name.strip_suffix(".json").or_else(|| name.strip_suffix(".lock")),
    }
}

/// The lock of progress `id`, when it is free (taken, until dropped); `None` while its operation
/// runs, and when it has no lock file.
fn free_lock(dir: &Path, id: &str) -> Option<File> {
    let lock = File::open(file(dir, id, "lock")).ok()?;
    lock.try_lock().is_ok().then_some(lock)
}

fn running_id(dir: &Path, id: &str) -> bool {
    File::open(file(dir, id, "lock")).is_ok_and(|lock| lock.try_lock().is_err())
}

/// The records of the operations running now, in `lib` (for `leafd status`; reads only).
pub(crate) fn running(lib: &Library) -> Vec<Record> {
    let dir = dir_of(lib);
    let mut out = Vec::new();
    for path in fsutil::entries(&dir).unwrap_or_default() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some(id) = name.strip_suffix(".json").filter(|_| !name.starts_with('.')) else { continue };
        if running_id(&dir, id)
            && let Some(record) = fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok())
        {
            out.push(record);
        }
    }
    out
}

/// Removes the records (and their locks and temporary files) of operations no longer running:
/// a process killed while it showed progress leaves them. Called by recovery; never fails.
pub(crate) fn remove_stale(lib: &Library) {
    let dir = dir_of(lib);
    let Ok(entries) = fsutil::entries(&dir) else { return };
    // Free locks, held until their files are gone: a progress starting with the same lock file
    // would make it again.
    let mut taken: Vec<(String, Option<File>)> = Vec::new();
    for id in entries.iter().filter_map(|p| owner(p)) {
        if !taken.iter().any(|(t, _)| t == id) && !running_id(&dir, id) {
            taken.push((id.to_string(), free_lock(&dir, id)));
        }
    }
    // Records and temporary files first, then the locks.
    let mut stale: Vec<&PathBuf> =
        entries.iter().filter(|p| owner(p).is_some_and(|id| taken.iter().any(|(t, _)| t == id))).collect();
    stale.sort_by_key(|p| p.extension().is_some_and(|x| x == "lock"));
    for path in stale {
        if let Err(e) = durable::remove_volatile(path) {
            tracing::debug!("cannot remove the stale progress record {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(done: u64, total: u64, seconds: u32) -> Record {
        Record {
            what: "copying Win11".into(),
            item: "/l/Make Base/Win11.vmwarevm".into(),
            done,
            total,
            started: "2026-12-02T10:00:00.000+01:00".into(),
            updated: format!("2026-12-02T10:{:02}:{:02}.000+01:00", seconds / 60, seconds % 60),
        }
    }

    #[test]
    fn a_record_reads_as_a_person_says_it() {
        let gib = 1u64 << 30;
        // 12.3 GiB in 38 s: 27.7 GiB to go at that rate is about 86 s.
        let r = record(gib * 123 / 10, 40 * gib, 38);
        assert_eq!(r.line(), "copying Win11: 12.3 of 40.0 GiB, about 1 min left");
        assert_eq!(record(gib * 10, 40 * gib, 40).line(), "copying Win11: 10.0 of 40.0 GiB, about 2 min left");
        assert_eq!(record(0, 40 * gib, 3).line(), "copying Win11: 0 B of 40.0 GiB");
        assert_eq!(record(512 << 20, 2 * gib, 1).line(), "copying Win11: 512.0 MiB of 2.0 GiB, about 3 s left");
        assert_eq!(about(3.0 * 3600.0 + 7.0 * 60.0), "about 3 h 7 min left");
        assert_eq!(span(Duration::from_secs(110)), "1 min 50 s");
    }

    #[test]
    fn files_belong_to_their_progress() {
        assert_eq!(owner(Path::new("/p/abc.json")), Some("abc"));
        assert_eq!(owner(Path::new("/p/abc.lock")), Some("abc"));
        assert_eq!(owner(Path::new("/p/.abc.json.tmp-12-0")), Some("abc"));
        assert_eq!(owner(Path::new("/p/other")), None);
    }

    #[test]
    fn a_progress_shows_only_after_its_delay_and_goes_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::open(dir.path()).unwrap();
        let quick = Progress::start(&lib, "quick", dir.path(), 10);
        meter::add(10);
        assert_eq!(quick.reports(), 0);
        drop(quick);
        assert!(!dir_of(&lib).exists(), "a quick operation shows nothing");
        let p = Progress::start_after(&lib, "slow".into(), dir.path(), 100, Duration::ZERO);
        meter::add(40);
        let shown = running(&lib);
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert_eq!((shown[0].what.as_str(), shown[0].done, shown[0].total), ("slow", 40, 100));
        // Not four times a second: the next look is later.
        meter::add(10);
        assert_eq!(running(&lib)[0].done, 40);
        p.next("next part", 7);
        assert_eq!((running(&lib)[0].what.as_str(), running(&lib)[0].done), ("next part", 0));
        // Running: recovery keeps it.
        remove_stale(&lib);
        assert_eq!(running(&lib).len(), 1);
        drop(p);
        assert!(running(&lib).is_empty());
        assert_eq!(fsutil::entries(&dir_of(&lib)).unwrap(), Vec::<PathBuf>::new());
    }

    #[test]
    fn recovery_removes_what_a_gone_operation_left_and_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::open(dir.path()).unwrap();
        let p = Progress::start_after(&lib, "live".into(), dir.path(), 100, Duration::ZERO);
        meter::add(1);
        let d = dir_of(&lib);
        // A killed process's record, lock and temporary file; a record without a lock.
        for name in ["dead.json", "dead.lock", ".dead.json.tmp-1-0", "nolock.json"] {
            fs::write(d.join(name), b"{}").unwrap();
        }
        assert_eq!(running(&lib).len(), 1, "a record whose lock is free is not running");
        remove_stale(&lib);
        let mut left: Vec<String> = fsutil::entries(&d)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let id = &p.inner.id;
        assert_eq!(left, vec![format!("{id}.json"), format!("{id}.lock")]);
    }
}
