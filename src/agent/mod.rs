//! `leafd agent`: watches the drop folders and runs the operations at the right moment.
//!
//! The flow is one way, as in watchexec: file-system *events* (notify, debounced) are mapped to
//! drop *items* ([`items`]), each item is looked at until it is ready, its *operation* runs on a
//! worker thread ([`jobs`]), and the *result* is logged and shown where the user looks
//! ([`report`]). The main thread sleeps until an event, a result, a signal or the next due look:
//! idle, it uses no CPU.

pub mod items;
pub mod jobs;
pub mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};

use self::items::{DropFolders, Item, Look, Phase, Request, Timing, Verdict};
use self::jobs::{Finished, Job, Runner};
use crate::error::{Error, IoContext, Kind, Result};
use crate::library::{Library, NOTE_SUFFIX, Options, recovery};

/// A full rescan of the drop folders this often, in case the watcher missed something.
const RESCAN: Duration = Duration::from_secs(300);
/// The watcher's debounce: events of a burst reach us together, about this long after it.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// How long shutdown waits for running operations (launchd allows 20 s).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

/// What wakes the main thread.
pub enum Msg {
    Events(DebounceEventResult),
    Done(Finished),
    Stop,
}

pub struct Settings {
    pub settle: Duration,
    /// How long a failed item waits before it is tried again although nothing about it changed
    /// (its cause may lie elsewhere: a leaf of the same name deleted, space freed).
    pub retry: Duration,
    pub notifications: bool,
    pub opts: Options,
}

struct Agent {
    lib: Library,
    folders: DropFolders,
    timing: Timing,
    notifications: bool,
    items: HashMap<PathBuf, Item>,
    runner: Runner,
}

/// Runs the agent on `root` until SIGTERM or SIGINT.
pub fn run(root: &Path, settings: Settings) -> Result<()> {
    let lib = Library::open(root)?;
    let _instance = lib.try_lock("agent").map_err(|e| match e.kind {
        Kind::Busy => Error::refused(lib.root(), "another leafd agent is already watching this library")
            .fix("only one agent may run per library; stop the other one (`leafd uninstall`, or quit it) first"),
        _ => e,
    })?;
    let (tx, rx) = mpsc::channel::<Msg>();

    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
        .at(lib.root(), "cannot install signal handlers")?;
    let stop_tx = tx.clone();
    // Cancelled from here, not from the main loop: a recovery running on the main thread (a big
    // base's fingerprint) stops at once too.
    let stop_cancel = settings.opts.cancel.clone();
    std::thread::Builder::new()
        .name("leafd-signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                stop_cancel.store(true, Ordering::Relaxed);
                let _ = stop_tx.send(Msg::Stop);
            }
        })
        .at(lib.root(), "cannot start the signal thread")?;

    let folders = DropFolders { make_base: lib.make_base_dir(), new_leaf: lib.new_leaf_dir() };
    // Watch first, then recover and scan: nothing that arrives meanwhile is missed.
    let event_tx = tx.clone();
    let mut watcher = new_debouncer(DEBOUNCE, Some(DEBOUNCE / 2), move |r| {
        let _ = event_tx.send(Msg::Events(r));
    })
    .map_err(|e| Error::new(Kind::Io, lib.root().to_path_buf(), format!("cannot watch the library: {e}")))?;
    // Each drop folder with the identity of the folder its watch is on (None: the watch is lost).
    let mut watched = Vec::new();
    for dir in [&folders.make_base, &folders.new_leaf] {
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .map_err(|e| Error::new(Kind::Io, dir.clone(), format!("cannot watch: {e}")))?;
        watched.push((dir.clone(), folder_id(dir)));
    }
    tracing::info!("agent watching {} (settle {:.1} s)", lib.root().display(), settings.settle.as_secs_f64());
    for r in recovery::recover(&lib, &settings.opts)? {
        r.report(false);
    }
    let cancel = settings.opts.cancel.clone();
    let mut agent = Agent {
        runner: Runner::new(lib.clone(), settings.opts, tx.clone()),
        lib,
        folders,
        timing: Timing { retry: settings.retry, ..Timing::new(settings.settle) },
        notifications: settings.notifications,
        items: HashMap::new(),
    };
    agent.scan(Instant::now());
    let mut next_rescan = Instant::now() + RESCAN;
    loop {
        let now = Instant::now();
        let wake = agent.next_due().map_or(next_rescan, |d| d.min(next_rescan));
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Msg::Events(Ok(events))) => {
                let now = Instant::now();
                for e in events {
                    if e.need_rescan() {
                        agent.scan(now);
                    }
                    // A drop folder removed loses its watch, even if a new folder gets its inode.
                    if e.kind.is_remove() {
                        for (dir, id) in watched.iter_mut().filter(|(dir, _)| e.paths.contains(dir)) {
                            tracing::debug!("{} was removed", dir.display());
                            *id = None;
                        }
                    }
                    // Opening or reading changes nothing, and the agent's own looks cause them
                    // (inotify reports opens): they must not restart the settle period.
                    if e.kind.is_access() {
                        continue;
                    }
                    for p in &e.paths {
                        // Timed at delivery, not by the event: a folder created then renamed
                        // comes as one event timed at its creation, which would shorten the
                        // settle period after the rename.
                        agent.touch(p, now);
                    }
                }
            }
            Ok(Msg::Events(Err(errors))) => {
                for e in errors {
                    tracing::warn!("watcher: {e}");
                }
                agent.scan(Instant::now());
            }
            Ok(Msg::Done(f)) => agent.finished(f),
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        // A drop folder deleted (and made again by the scan) needs a new watch: the old one
        // went with the folder. `id` is None once it is known gone.
        for (dir, id) in &mut watched {
            let mut current = folder_id(dir);
            if current.is_none() {
                *id = None;
                agent.scan(now);
                current = folder_id(dir);
            }
            if current.is_some() && current != *id {
                let _ = watcher.unwatch(dir.as_path());
                match watcher.watch(dir.as_path(), RecursiveMode::Recursive) {
                    Ok(()) => {
                        tracing::info!("watching {} again (it was deleted and made anew)", dir.display());
                        *id = current;
                        agent.scan(now);
                    }
                    Err(e) => tracing::warn!("cannot watch {} again: {e}", dir.display()),
                }
            }
        }
        if now >= next_rescan {
            // A CLI command killed meanwhile left its journal: finish or undo it now, not at the
            // next start.
            recovery::recover_and_log(&agent.lib, agent.runner.options());
            agent.scan(now);
            next_rescan = now + RESCAN;
        }
        agent.look_at_due(now);
    }

    // Stop taking work; copies and fingerprints stop and roll back; others finish.
    tracing::info!("agent stopping");
    drop(watcher);
    cancel.store(true, Ordering::Relaxed);
    let threads = agent.runner.drain();
    let deadline = Instant::now() + SHUTDOWN_WAIT;
    while agent.runner.active() > 0 && Instant::now() < deadline {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Msg::Done(f)) => agent.finished(f),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    // Threads still at work at the deadline are left to the exit: their journals are recovered
    // at the next start. Never waited for past it (launchd kills at 20 s).
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let unfinished = threads.iter().filter(|t| !t.is_finished()).count();
    for t in threads.into_iter().filter(|t| t.is_finished()) {
        let _ = t.join();
    }
    if unfinished > 0 {
        tracing::warn!(
            "{unfinished} operation(s) still running at exit; they are finished or undone at the next start"
        );
    }
    tracing::info!("agent stopped");
    Ok(())
}

impl Agent {
    /// Looks at everything in the drop folders (at start, after lost events, and now and then).
    fn scan(&mut self, now: Instant) {
        for dir in [&self.folders.make_base, &self.folders.new_leaf] {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!("cannot create {}: {e}", dir.display());
            }
        }
        if let Ok(bases) = self.lib.bases() {
            for b in bases {
                let _ = std::fs::create_dir_all(self.folders.new_leaf.join(&b.record.name));
            }
        }
        let mut found: Vec<PathBuf> = children(&self.folders.make_base);
        for base in children(&self.folders.new_leaf) {
            found.extend(children(&base));
        }
        // Items that went while events were lost (or the agent was not running) take their
        // notes with them.
        let gone: Vec<PathBuf> = self
            .items
            .values()
            .filter(|i| i.phase != Phase::Running && i.path.symlink_metadata().is_err())
            .map(|i| i.path.clone())
            .collect();
        for p in gone {
            self.items.remove(&p);
            report::clear(&p);
        }
        for note in &found {
            let name = note.file_name().unwrap_or_default().to_string_lossy();
            if let Some(item) = name.strip_suffix(NOTE_SUFFIX).map(|n| note.with_file_name(n))
                && item.symlink_metadata().is_err()
            {
                report::clear(&item);
            }
        }
        for p in found {
            self.touch(&p, now);
        }
    }

    /// An event (or a scan) saw `path`.
    fn touch(&mut self, path: &Path, now: Instant) {
        let Some((item, request)) = self.folders.item_for(path) else { return };
        match self.items.get_mut(&item) {
            Some(i) => i.touch(now),
            None => {
                self.items.insert(item.clone(), Item::new(item, request, now));
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.items.values().filter_map(|i| i.due(&self.timing)).min()
    }

    fn look_at_due(&mut self, now: Instant) {
        let due: Vec<PathBuf> = self
            .items
            .values()
            .filter(|i| i.due(&self.timing).is_some_and(|d| d <= now))
            .map(|i| i.path.clone())
            .collect();
        for path in due {
            let look = Look::take(&path);
            let Some(item) = self.items.get_mut(&path) else { continue };
            let was_unnamed = item.phase == Phase::Unnamed;
            let verdict = item.decide(look, now, &self.timing);
            if item.phase == Phase::Unnamed && !was_unnamed {
                tracing::debug!("{} has Finder's placeholder name: waiting for its real name", self.lib.display(&path));
            }
            match verdict {
                Verdict::Gone => {
                    self.items.remove(&path);
                    report::clear(&path);
                }
                Verdict::Ready => {
                    if let (Request::NewLeaf { .. }, Some((look, _))) = (&item.request, &item.last_look)
                        && !look.is_dir()
                    {
                        // A file dropped in New Leaf is not a request, and never becomes one.
                        let look = look.clone();
                        item.failed(look, "not a folder".into(), false, now, &self.timing);
                        continue;
                    }
                    report::untag(&path);
                    tracing::debug!("{} is ready", self.lib.display(&path));
                    self.runner.submit(Job { item: path, request: item.request.clone() });
                }
                Verdict::Stalled(_) => {
                    tracing::warn!(
                        "the copy of {} has not progressed for a long time; still waiting",
                        self.lib.display(&path)
                    );
                    report::stalled(&path);
                }
                Verdict::Wait(_) | Verdict::Idle => {}
            }
        }
    }

    fn finished(&mut self, f: Finished) {
        self.runner.finished(&f.job);
        let path = f.job.item.clone();
        let now = Instant::now();
        match f.result {
            Ok(done) => {
                tracing::info!("{}", done.line);
                for w in &done.warnings {
                    tracing::warn!("{w}");
                }
                report::clear(&path);
                let dirty = self.items.get(&path).is_some_and(|i| i.dirty);
                if dirty && path.exists() {
                    self.reset(&path, now);
                } else {
                    self.items.remove(&path);
                }
                // Leaves that failed for want of this base can go now (not those under way).
                if let Some(base) = done.base {
                    let waiting: Vec<PathBuf> = self
                        .items
                        .values()
                        .filter(|i| i.request == Request::NewLeaf { base: base.clone() })
                        .filter(|i| matches!(i.phase, Phase::Failed(_)))
                        .map(|i| i.path.clone())
                        .collect();
                    for p in waiting {
                        self.reset(&p, now);
                    }
                    for p in children(&self.folders.new_leaf.join(&base)) {
                        self.touch(&p, now);
                    }
                }
            }
            Err(e) if matches!(e.kind, Kind::Busy | Kind::Cancelled) => {
                tracing::debug!("{}: {e}; trying again later", self.lib.display(&path));
                self.reset(&path, now);
            }
            Err(e) => {
                let what = match &f.job.request {
                    Request::MakeBase => "make a base from".to_string(),
                    Request::NewLeaf { base } => format!("make a leaf of base {base:?} from"),
                };
                let summary = e.summary();
                let item = self.items.get_mut(&path);
                // A retry by the timer that fails as before is said once, not every time.
                let again = item.as_ref().is_some_and(|i| i.retrying && i.last_error.as_deref() == Some(&summary));
                if again {
                    tracing::debug!("still cannot {what} {}: {summary}", self.lib.display(&path));
                } else {
                    tracing::warn!("could not {what} {}: {summary}", self.lib.display(&path));
                }
                // The tag went when it was tried; it comes back (the notification not).
                if path.exists() {
                    report::failed(&path, &what, &e, self.notifications && !again);
                }
                match (Look::take(&path), item) {
                    // The timer retries refusals, whose cause may go away elsewhere; not failures
                    // such as a full disk, which would copy or flatten again and again.
                    (Some(look), Some(item)) => item.failed(look, summary, e.kind == Kind::Refused, now, &self.timing),
                    _ => {
                        self.items.remove(&path);
                    }
                }
            }
        }
    }

    /// Starts waiting for `path` afresh.
    fn reset(&mut self, path: &Path, now: Instant) {
        if let Some(i) = self.items.get_mut(path) {
            i.phase = Phase::Settling;
            i.dirty = false;
            i.last_look = None;
            i.changed = now;
        }
    }
}

/// Which folder is at `dir` now (device and inode), if any.
fn folder_id(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
}

/// Entries of a folder (empty when it cannot be read).
fn children(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
}
