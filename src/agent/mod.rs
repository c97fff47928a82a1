//! `leafd agent`: watches the drop folders and runs the operations at the right moment.
//!
//! The flow is one way, as in watchexec: raw file-system *events* are mapped to drop *items*
//! ([`items`]), each item is looked at until it is ready, its *job* runs on a thread of its own
//! ([`jobs`]), and the *result* is logged and shown where the user looks ([`report`]). Every
//! decision is taken by [`machine::Core`], which does no I/O. This module is the thin loop around
//! it: it sleeps until an event, a job's result, a signal or the core's next due time (idle, it
//! uses no CPU), hands each to the core, and carries out the actions the core returns.

pub(crate) mod items;
pub(crate) mod jobs;
pub(crate) mod machine;
pub(crate) mod report;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use self::items::{DropFolders, Look, Timing};
use self::jobs::{Finished, Job};
use self::machine::{Action, Core, FolderId, Input, Report, Scan};
use crate::error::{Error, IoContext, Kind, Result};
use crate::fsutil;
use crate::library::{Library, Options};

/// What wakes the loop.
pub(crate) enum Msg {
    Event(notify::Result<notify::Event>),
    Done(Finished),
    Stop,
}

/// Messages taken in one go before the drop folders are checked and due looks are taken: a
/// copy's stream of write events costs one check per batch, not one per event.
const BATCH: usize = 256;

pub(crate) struct Settings {
    pub(crate) settle: Duration,
    /// How long a failed item waits before it is tried again although nothing about it changed
    /// (its cause may lie elsewhere: a leaf of the same name deleted, space freed).
    pub(crate) retry: Duration,
    /// The quiet period of an empty New Leaf request folder.
    pub(crate) new_leaf_quiet: Duration,
    pub(crate) notifications: bool,
    pub(crate) opts: Options,
}

/// Runs the agent on `root` until SIGTERM or SIGINT.
pub(crate) fn run(root: &Path, settings: Settings) -> Result<()> {
    let lib = Library::open(root)?;
    let _instance = lib.try_lock("agent").map_err(|e| match e.kind {
        Kind::Busy => Error::refused(lib.root(), "another leafd agent is already watching this library")
            .fix("only one agent may run per library; stop the other one (`leafd uninstall`, or quit it) first"),
        _ => e,
    })?;
    let (tx, rx) = mpsc::channel::<Msg>();
    on_signals(&lib, &settings.opts, tx.clone())?;
    let folders = DropFolders { make_base: lib.make_base_dir(), new_leaf: lib.new_leaf_dir() };
    // Watch first, then recover and scan: nothing that arrives meanwhile is missed.
    let watcher = watch(&lib, &folders, tx.clone())?;
    tracing::info!(
        "agent watching {} (settle {:.1} s, an empty New Leaf folder {} ms)",
        lib.root().display(),
        settings.settle.as_secs_f64(),
        settings.new_leaf_quiet.as_millis()
    );
    let timing = Timing { retry: settings.retry, ..Timing::new(settings.settle, settings.new_leaf_quiet) };
    let mut core = Core::new(folders.clone(), timing, folders.dirs().map(folder_id), Instant::now());
    let mut shell = Shell {
        lib,
        folders,
        opts: settings.opts,
        notifications: settings.notifications,
        watcher,
        tx,
        threads: Vec::new(),
    };
    let (by, error) = shell.serve(&mut core, &rx);
    shell.finish(by);
    error.map_or(Ok(()), Err)
}

/// SIGTERM and SIGINT cancel running work at once (from their own thread, so a long copy,
/// flatten or fingerprint stops even while the loop is busy), then stop the loop.
fn on_signals(lib: &Library, opts: &Options, tx: Sender<Msg>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).at(lib.root(), "cannot install signal handlers")?;
    let cancel = opts.cancel.clone();
    std::thread::Builder::new()
        .name("leafd-signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                cancel.store(true, Ordering::Relaxed);
                let _ = tx.send(Msg::Stop);
            }
        })
        .at(lib.root(), "cannot start the signal thread")?;
    Ok(())
}

/// One watcher, notify's own, without a debouncer: the items already are one (every event is
/// a touch of its item, timed when it is seen), and a debouncer only delays events and merges
/// them. It merged a bundle moved out of Make Base with its moving back in, and delivered both
/// after the looks that should have seen them. The same code serves inotify and FSEvents.
fn watch(lib: &Library, folders: &DropFolders, tx: Sender<Msg>) -> Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(Msg::Event(event));
    })
    .map_err(|e| Error::new(Kind::Io, lib.root().to_path_buf(), format!("cannot watch the library: {e}")))?;
    for dir in folders.dirs() {
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .map_err(|e| Error::new(Kind::Io, dir.to_path_buf(), format!("cannot watch: {e}")))?;
    }
    Ok(watcher)
}

/// The loop's side of the agent: everything the core asks for that touches the world.
struct Shell {
    lib: Library,
    folders: DropFolders,
    opts: Options,
    notifications: bool,
    watcher: RecommendedWatcher,
    tx: Sender<Msg>,
    threads: Vec<JoinHandle<()>>,
}

impl Shell {
    /// Feeds the core until it says exit: the deadline for threads still at work, and an error.
    fn serve(&mut self, core: &mut Core, rx: &Receiver<Msg>) -> (Instant, Option<Error>) {
        if let Some(exit) = self.feed(core, Input::Start) {
            return exit;
        }
        loop {
            let first = match core.next_wake() {
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let msgs: Vec<Msg> = match first {
                Ok(msg) => std::iter::once(msg).chain(rx.try_iter().take(BATCH)).collect(),
                Err(RecvTimeoutError::Timeout) => Vec::new(),
                // Never: this side holds a sender too.
                Err(RecvTimeoutError::Disconnected) => vec![Msg::Stop],
            };
            for msg in msgs {
                if let Some(exit) = self.feed(core, input(msg)) {
                    return exit;
                }
            }
            let folders = Input::Folders(self.folders.dirs().map(folder_id));
            for input in [folders, Input::Tick] {
                if let Some(exit) = self.feed(core, input) {
                    return exit;
                }
            }
        }
    }

    /// Hands `input` to the core and carries out what it asks, in order, feeding back at once
    /// what each action finds; returns the exit when it comes.
    fn feed(&mut self, core: &mut Core, input: Input) -> Option<(Instant, Option<Error>)> {
        let mut todo = VecDeque::from(core.handle(input, Instant::now()));
        while let Some(action) = todo.pop_front() {
            let answer = match action {
                Action::Exit { by, error } => return Some((by, error)),
                Action::Look(item) => Some(Input::Looked { look: Look::take(&item), item }),
                Action::Run(job) => self.start(job),
                Action::Scan => Some(Input::Scanned(self.scan())),
                Action::Watch(dir) => Some(Input::Watched { id: self.rewatch(&dir), dir }),
                Action::Untag(item) => {
                    report::untag(&item);
                    None
                }
                Action::Clear(item) => {
                    report::clear(&item);
                    None
                }
                Action::Report(r) => {
                    self.report(r);
                    None
                }
                Action::Stalled(item) => {
                    report::stalled(&item);
                    None
                }
            };
            if let Some(input) = answer {
                todo.extend(core.handle(input, Instant::now()));
            }
        }
        None
    }

    /// Starts a job's thread; a thread that cannot start is the job's failure, which frees its
    /// base (the item is tried again when it changes).
    fn start(&mut self, job: Job) -> Option<Input> {
        self.threads.retain(|t| !t.is_finished());
        let tx = self.tx.clone();
        let done = move |finished| {
            // The loop is gone only when the agent has stopped.
            let _ = tx.send(Msg::Done(finished));
        };
        match jobs::spawn(&self.lib, &self.opts, job.clone(), done) {
            Ok(thread) => {
                self.threads.push(thread);
                None
            }
            Err(e) => {
                let error = Error::io(job.item().unwrap_or(self.lib.root()), "cannot start a thread", e);
                Some(Input::Finished(Finished { job, result: Err(error) }))
            }
        }
    }

    /// Makes the drop folders and each base's folder in New Leaf, and lists them.
    fn scan(&self) -> Scan {
        for dir in self.folders.dirs() {
            if let Err(e) = crate::durable::create_dir_all(dir) {
                tracing::warn!("{e}");
            }
        }
        let bases = match self.lib.bases() {
            Ok(bases) => Some(bases.into_iter().map(|b| b.record.name).collect::<Vec<_>>()),
            Err(e) => {
                tracing::warn!("cannot read the bases: {e}");
                None
            }
        };
        for name in bases.iter().flatten() {
            if let Err(e) = crate::durable::create_dir_all(&self.folders.new_leaf.join(name)) {
                tracing::warn!("{e}");
            }
        }
        // A folder that cannot be listed lists nothing: its items wait for the next scan.
        let listed = |dir: &Path| fsutil::entries(dir).unwrap_or_default();
        let top = listed(&self.folders.new_leaf);
        let base_dirs: Vec<PathBuf> = match &bases {
            Some(names) => names.iter().map(|n| self.folders.new_leaf.join(n)).collect(),
            None => top.iter().filter(|p| p.is_dir()).cloned().collect(),
        };
        let mut entries = listed(&self.folders.make_base);
        entries.extend(base_dirs.iter().flat_map(|d| listed(d)));
        entries.extend(top);
        Scan { bases, entries, folders: self.folders.dirs().map(folder_id) }
    }

    fn rewatch(&mut self, dir: &Path) -> Option<FolderId> {
        let _ = self.watcher.unwatch(dir);
        match self.watcher.watch(dir, RecursiveMode::Recursive) {
            Ok(()) => folder_id(dir),
            Err(e) => {
                tracing::warn!("cannot watch {} again: {e}", dir.display());
                None
            }
        }
    }

    fn report(&self, r: Report) {
        let (summary, shown) = (r.error.summary(), self.lib.display(&r.item));
        if r.first {
            tracing::warn!("could not {} {shown}: {summary}", r.what);
        } else {
            tracing::debug!("still cannot {} {shown}: {summary}", r.what);
        }
        // The tag went when it was tried; it comes back (the notification not).
        if r.item.symlink_metadata().is_ok() {
            report::failed(&r.item, &r.what, &r.error, self.notifications && r.first);
        }
    }

    /// Stops watching and gives the threads still at work (a new base's fingerprint, a job past
    /// its cancel point) until `by`. Those still running then are left to the exit: their
    /// journals are recovered at the next start. Never waited for past it (launchd kills at 20 s).
    fn finish(self, by: Instant) {
        drop(self.watcher);
        self.opts.cancel.store(true, Ordering::Relaxed);
        while self.threads.iter().any(|t| !t.is_finished()) && Instant::now() < by {
            std::thread::sleep(Duration::from_millis(20));
        }
        let unfinished = self.threads.iter().filter(|t| !t.is_finished()).count();
        for t in self.threads.into_iter().filter(|t| t.is_finished()) {
            let _ = t.join();
        }
        if unfinished > 0 {
            tracing::warn!(
                "{unfinished} operation(s) still running at exit; they are finished or undone at the next start"
            );
        }
        tracing::info!("agent stopped");
    }
}

fn input(msg: Msg) -> Input {
    match msg {
        Msg::Event(Ok(event)) => Input::Event(event),
        Msg::Event(Err(e)) => {
            tracing::warn!("watcher: {e}");
            Input::Missed
        }
        Msg::Done(f) => Input::Finished(f),
        Msg::Stop => Input::Stop,
    }
}

/// Which folder is at `dir` now (device and inode), if any.
fn folder_id(dir: &Path) -> Option<FolderId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
}
