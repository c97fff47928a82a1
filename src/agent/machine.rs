//! The agent's decisions, without any I/O: no threads, no watcher, no clock of its own. Inputs
//! (raw file-system events, looks at items, scans, finished jobs, the time) go in with the
//! instant they were seen; actions (look at an item, run a job, tell the user, scan, watch a
//! drop folder again, exit) come out. [`super::run`] carries the actions out and feeds back what
//! they find, at once and in order; the unit tests below play the world with explicit instants.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::event::{EventKind, ModifyKind, RenameMode};

use super::items::{DropFolders, Item, Look, Phase, Request, Timing, Verdict, nfc};
use super::jobs::{Done, Finished, Job, Queue};
use crate::error::{Error, Kind};
use crate::library::{NOTE_SUFFIX, note_path};

/// A recovery and a full rescan this often: a CLI command killed meanwhile left its journal, or
/// the watcher missed something.
pub(crate) const RESCAN: Duration = Duration::from_secs(300);
/// How long shutdown waits for running jobs (launchd allows 20 s).
pub(crate) const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);
/// The watcher watches a new folder only after it has passed on the folder's creation: what is
/// made in a new base's folder meanwhile comes without an event. A second scan this long after
/// the base's folder appeared finds it.
pub(crate) const WATCH_GAP: Duration = Duration::from_millis(250);

/// Which folder is at a path (device and inode): a drop folder made anew needs a new watch.
pub(crate) type FolderId = (u64, u64);

#[derive(Debug)]
pub(crate) enum Input {
    /// The drop folders are watched: recover, then scan.
    Start,
    /// A raw event from the watcher.
    Event(notify::Event),
    /// The watcher failed: events may have been lost.
    Missed,
    /// What is at the drop folders' paths now, checked after every wake.
    Folders([Option<FolderId>; 2]),
    Scanned(Scan),
    /// A drop folder watched again (`None`: that failed).
    Watched {
        dir: PathBuf,
        id: Option<FolderId>,
    },
    /// A look at an item (`None`: it is gone).
    Looked {
        item: PathBuf,
        look: Option<Look>,
    },
    Finished(Finished),
    /// Time passed: what is due is done now.
    Tick,
    /// SIGTERM or SIGINT.
    Stop,
}

/// What the drop folders hold, listed by the `Scan` action.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// The bases' names (`None`: they could not be read, the last known stand).
    pub(crate) bases: Option<Vec<String>>,
    /// Everything in `Make Base/`, in `New Leaf/`, and in each base's folder in `New Leaf/`.
    pub(crate) entries: Vec<PathBuf>,
    /// The drop folders, made again if they were missing.
    pub(crate) folders: [Option<FolderId>; 2],
}

#[derive(Debug)]
pub(crate) enum Action {
    /// Look at an item, and answer with `Looked`.
    Look(PathBuf),
    /// Start a job on a thread; it answers with `Finished`.
    Run(Job),
    /// Make the drop folders (and each base's folder in New Leaf), list them, answer `Scanned`.
    Scan,
    /// Watch a drop folder again, and answer with `Watched`.
    Watch(PathBuf),
    /// Remove the red tag before an item is tried (a tag would travel with a bundle into Bases).
    Untag(PathBuf),
    /// Remove the note and tag of an item that went through or is gone.
    Clear(PathBuf),
    /// An item failed: log it, note and tag it.
    Report(Report),
    /// A copy marked in progress has not moved for a long time: a note says so.
    Stalled(PathBuf),
    /// Stop; the threads still running get until `by`.
    Exit { by: Instant, error: Option<Error> },
}

#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) item: PathBuf,
    /// "make a base from", …: what could not be done with it.
    pub(crate) what: String,
    pub(crate) error: Error,
    /// False for a retry by the timer failing as before: logged quietly, no notification.
    pub(crate) first: bool,
}

pub(crate) struct Core {
    folders: DropFolders,
    timing: Timing,
    items: HashMap<PathBuf, Item>,
    /// The bases' names (NFC): their folders in New Leaf hold requests.
    bases: BTreeSet<String>,
    /// The identity of each drop folder when it was watched (`None`: its watch is lost).
    watched: [Option<FolderId>; 2],
    queue: Queue,
    /// The startup recovery is done: items may be looked at.
    started: bool,
    next_recovery: Instant,
    /// A scan due because a base's folder appeared (see [`WATCH_GAP`]).
    next_scan: Option<Instant>,
    /// The scan asked for may find what events were lost for.
    suspect: bool,
    /// Stopping: the deadline for running jobs.
    stopping: Option<Instant>,
}

impl Core {
    /// A core for drop folders watched as `watched` at `now`.
    pub(crate) fn new(folders: DropFolders, timing: Timing, watched: [Option<FolderId>; 2], now: Instant) -> Core {
        Core {
            folders,
            timing,
            items: HashMap::new(),
            bases: BTreeSet::new(),
            watched,
            queue: Queue::default(),
            started: false,
            next_recovery: now + RESCAN,
            next_scan: None,
            suspect: false,
            stopping: None,
        }
    }

    /// Takes one input seen at `now`; returns what to do, in order.
    pub(crate) fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        if let Some(by) = self.stopping {
            return self.while_stopping(input, by, now);
        }
        match input {
            Input::Start => self.submit(Job::Recover),
            Input::Event(e) => self.event(e, now),
            Input::Missed | Input::Folders(_) if !self.started => Vec::new(),
            Input::Missed => vec![self.scan(true)],
            // A drop folder gone is made again by the scan; one made anew is watched again.
            Input::Folders(ids) if ids.contains(&None) || ids != self.watched => vec![self.scan(true)],
            Input::Folders(_) => Vec::new(),
            Input::Scanned(scan) => self.scanned(scan, now),
            Input::Watched { dir, id } => self.watched(&dir, id),
            Input::Looked { item, look } => self.looked(item, look, now),
            Input::Finished(f) => self.finished(f, now),
            Input::Tick => self.tick(now),
            Input::Stop => {
                tracing::info!("agent stopping");
                self.stopping = Some(now + SHUTDOWN_WAIT);
                // Waiting jobs are dropped; their items are still there at the next start.
                self.queue.forget_waiting();
                self.while_stopping(Input::Tick, now + SHUTDOWN_WAIT, now)
            }
        }
    }

    /// When the next input is due without any event (`None`: only an event or a job wakes it).
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        if let Some(by) = self.stopping {
            return Some(by);
        }
        if !self.started {
            return None;
        }
        let timers = [Some(self.next_recovery), self.next_scan];
        self.items.values().filter_map(|i| i.due(&self.timing)).chain(timers.into_iter().flatten()).min()
    }

    /// Stopping: results are still reported, nothing new starts, and it ends when the last
    /// running job has reported or at `by`, whichever is first.
    fn while_stopping(&mut self, input: Input, by: Instant, now: Instant) -> Vec<Action> {
        let mut actions: Vec<Action> = match input {
            Input::Finished(f) => self
                .finished(f, now)
                .into_iter()
                .filter(|a| matches!(a, Action::Report(_) | Action::Clear(_) | Action::Exit { .. }))
                .collect(),
            _ => Vec::new(),
        };
        let exiting = actions.iter().any(|a| matches!(a, Action::Exit { .. }));
        if !exiting && (self.queue.running() == 0 || now >= by) {
            actions.push(Action::Exit { by, error: None });
        }
        actions
    }

    fn submit(&mut self, job: Job) -> Vec<Action> {
        self.queue.submit(job).into_iter().map(Action::Run).collect()
    }

    fn event(&mut self, e: notify::Event, now: Instant) -> Vec<Action> {
        // A drop folder removed or moved away loses its watch, even if a new folder gets its inode.
        if e.kind.is_remove() || e.kind == EventKind::Modify(ModifyKind::Name(RenameMode::From)) {
            for (id, dir) in self.watched.iter_mut().zip(self.folders.dirs()) {
                if e.paths.iter().any(|p| p == dir) {
                    tracing::debug!("{} was removed", dir.display());
                    *id = None;
                }
            }
        }
        // Until the startup scan, which sees everything there is, events change nothing.
        if !self.started {
            return Vec::new();
        }
        let mut unknown = false;
        // Opening or reading changes nothing, and the agent's own looks cause them (inotify
        // reports opens): they must not restart the wait.
        if !e.kind.is_access() {
            // An item made here, or a file made or written inside it: it is arriving by a copy
            // (a move shows as a rename of the item alone). The item's own creation counts, as
            // the files a copy makes right after it can come before the watch of its folder.
            let written = matches!(e.kind, EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)));
            for p in &e.paths {
                // Timed when seen: every create, rename or write restarts its item's wait.
                unknown |= self.touch(p, now);
                if written
                    && let Some((item, _)) = self.folders.item_for(p, &self.bases)
                    && let Some(i) = self.items.get_mut(&item)
                {
                    i.written = true;
                }
            }
        }
        match (e.need_rescan(), unknown) {
            (false, false) => Vec::new(),
            (lost, _) => vec![self.scan(lost)],
        }
    }

    /// Something happened at `path`. True when it is a new entry of `New Leaf/` that is no known
    /// base's folder: the bases are read again before it is taken for misplaced.
    fn touch(&mut self, path: &Path, now: Instant) -> bool {
        let Some((item, request)) = self.folders.item_for(path, &self.bases) else { return false };
        if let Some(i) = self.items.get_mut(&item) {
            i.touch(now);
            return false;
        }
        let misplaced = request == Request::Misplaced;
        self.items.insert(item.clone(), Item::new(item, request, now));
        misplaced
    }

    /// A scan; `suspect` when events may have been lost: then every item found counts as
    /// touched (a failed one is looked at again), not only the new ones.
    fn scan(&mut self, suspect: bool) -> Action {
        self.suspect |= suspect;
        Action::Scan
    }

    fn scanned(&mut self, scan: Scan, now: Instant) -> Vec<Action> {
        if let Some(bases) = scan.bases {
            let bases: BTreeSet<String> = bases.iter().map(|b| nfc(b)).collect();
            if !bases.is_subset(&self.bases) {
                self.next_scan = Some(now + WATCH_GAP);
            }
            self.bases = bases;
        }
        let mut actions = Vec::new();
        // Items that went while events were lost (or the agent was not running), and folders in
        // New Leaf taken for misplaced that are a base's now, take their notes with them.
        let present: HashSet<&PathBuf> = scan.entries.iter().collect();
        let stale: Vec<PathBuf> = self
            .items
            .values()
            .filter(|i| i.phase != Phase::Running)
            .filter(|i| {
                !present.contains(&i.path)
                    || self.folders.item_for(&i.path, &self.bases).is_none_or(|(_, r)| r != i.request)
            })
            .map(|i| i.path.clone())
            .collect();
        for p in stale {
            self.items.remove(&p);
            actions.push(Action::Clear(p));
        }
        actions.extend(orphan_notes(&scan.entries).into_iter().map(Action::Clear));
        let suspect = std::mem::take(&mut self.suspect);
        for p in &scan.entries {
            if suspect || self.folders.item_for(p, &self.bases).is_none_or(|(item, _)| !self.items.contains_key(&item))
            {
                self.touch(p, now);
            }
        }
        // A drop folder made anew (by this scan, or by someone) needs a watch of its own.
        for ((id, watched), dir) in scan.folders.iter().zip(self.watched).zip(self.folders.dirs()) {
            if id.is_some() && *id != watched {
                actions.push(Action::Watch(dir.to_path_buf()));
            }
        }
        actions
    }

    fn watched(&mut self, dir: &Path, id: Option<FolderId>) -> Vec<Action> {
        let Some(i) = self.folders.dirs().iter().position(|d| *d == dir) else { return Vec::new() };
        if id.is_none() {
            return Vec::new();
        }
        tracing::info!("watching {} again (it was deleted and made anew)", dir.display());
        self.watched[i] = id;
        // What arrived before the new watch came without events.
        vec![self.scan(true)]
    }

    fn tick(&mut self, now: Instant) -> Vec<Action> {
        if !self.started {
            return Vec::new();
        }
        let mut actions = Vec::new();
        if self.next_scan.is_some_and(|at| now >= at) {
            self.next_scan = None;
            actions.push(self.scan(false));
        }
        if now >= self.next_recovery {
            self.next_recovery = now + RESCAN;
            if !self.queue.holds(&Job::Recover) {
                actions.extend(self.submit(Job::Recover));
            }
        }
        let mut due: Vec<PathBuf> = self
            .items
            .values()
            .filter(|i| i.due(&self.timing).is_some_and(|d| d <= now))
            .map(|i| i.path.clone())
            .collect();
        due.sort();
        actions.extend(due.into_iter().map(Action::Look));
        actions
    }

    fn looked(&mut self, path: PathBuf, look: Option<Look>, now: Instant) -> Vec<Action> {
        let Some(item) = self.items.get_mut(&path) else { return Vec::new() };
        if let Phase::Failing { error, timer } = &item.phase {
            let (error, timer) = (error.clone(), *timer);
            // The look it was started on: if it changed while its job ran, the failure may be
            // of what it was; it is tried again as it is now, once quiet.
            let seen = item.last_look.as_ref().map(|(seen, _)| seen);
            match look {
                Some(look) if seen.is_none_or(|seen| *seen == look) => {
                    item.failed(look, error, timer, now, &self.timing)
                }
                Some(_) => {
                    item.last_error = Some(error);
                    item.reset(now);
                }
                None => return self.gone(path),
            }
            return Vec::new();
        }
        if item.phase == Phase::Running {
            return Vec::new();
        }
        let was_unnamed = item.phase == Phase::Unnamed;
        match item.decide(look, now, &self.timing) {
            Verdict::Gone => self.gone(path),
            Verdict::Ready => self.ready(path, now),
            Verdict::Stalled => {
                tracing::warn!("the copy of {} has not progressed for a long time; still waiting", self.shown(&path));
                vec![Action::Stalled(path)]
            }
            Verdict::Idle if item.phase == Phase::Unnamed && !was_unnamed => {
                tracing::debug!("{} has Finder's placeholder name: waiting for its real name", self.shown(&path));
                Vec::new()
            }
            Verdict::Wait | Verdict::Idle => Vec::new(),
        }
    }

    fn gone(&mut self, path: PathBuf) -> Vec<Action> {
        self.items.remove(&path);
        vec![Action::Clear(path)]
    }

    /// The item has been quiet long enough: its job starts, or it is told why it has none.
    fn ready(&mut self, path: PathBuf, now: Instant) -> Vec<Action> {
        let Some(item) = self.items.get_mut(&path) else { return Vec::new() };
        let Some((look, _)) = item.last_look.clone() else { return Vec::new() };
        match go(&path, &item.request, &look, item.written) {
            Go::Run(job) => {
                tracing::debug!("{} is ready", self.shown(&path));
                let mut actions = vec![Action::Untag(path)];
                actions.extend(self.submit(job));
                actions
            }
            Go::Ignore => {
                item.failed(look, "not a folder".into(), false, now, &self.timing);
                Vec::new()
            }
            Go::Refuse(error) => {
                let first = item.last_error.as_deref() != Some(&error.summary());
                item.failed(look, error.summary(), false, now, &self.timing);
                let what = what(&item.request);
                vec![Action::Report(Report { item: path, what, error, first })]
            }
        }
    }

    fn finished(&mut self, f: Finished, now: Instant) -> Vec<Action> {
        let mut actions = match (&f.job, f.result) {
            (Job::Recover, result) => self.recovered(result, now),
            (Job::Item { item, .. }, Ok(done)) => self.made(item.clone(), done, now),
            (Job::Item { item, .. }, Err(e)) if matches!(e.kind, Kind::Busy | Kind::Cancelled) => {
                // Busy: its request folder was renamed while it was made, or a lock was held.
                tracing::debug!("{}: {e}; trying again later", self.shown(item));
                if let Some(i) = self.items.get_mut(item) {
                    i.reset(now);
                }
                Vec::new()
            }
            (Job::Item { item, request }, Err(e)) => self.failed(item.clone(), request, e),
        };
        if self.stopping.is_none() {
            actions.extend(self.queue.finished(&f.job).into_iter().map(Action::Run));
        } else {
            self.queue.finished(&f.job);
        }
        actions
    }

    fn recovered(&mut self, result: Result<Done, Error>, now: Instant) -> Vec<Action> {
        match result {
            Ok(done) => tracing::debug!("{}", done.line),
            // As before it ran as a job: a library whose journals cannot be read is not watched.
            Err(error) if !self.started => {
                return vec![Action::Exit { by: now + SHUTDOWN_WAIT, error: Some(error) }];
            }
            Err(e) => tracing::warn!("{}", e.summary()),
        }
        self.started = true;
        // Also the rescan in case the watcher missed something.
        vec![self.scan(true)]
    }

    /// The job went through.
    fn made(&mut self, path: PathBuf, done: Done, now: Instant) -> Vec<Action> {
        tracing::info!("{}", done.line);
        for w in &done.warnings {
            tracing::warn!("{w}");
        }
        match self.items.get_mut(&path) {
            // Something happened to it meanwhile: look again (it is gone, usually).
            Some(i) if i.dirty => i.reset(now),
            _ => {
                self.items.remove(&path);
            }
        }
        let mut actions = vec![Action::Clear(path)];
        if let Some(base) = done.base {
            // Leaves that failed for want of this base can go now (not those under way), and
            // its folder in New Leaf holds requests from now on.
            let request = Request::NewLeaf { base: base.clone() };
            for i in self.items.values_mut().filter(|i| i.request == request && matches!(i.phase, Phase::Failed(_))) {
                i.reset(now);
            }
            if self.bases.insert(nfc(&base)) {
                self.next_scan = Some(now + WATCH_GAP);
            }
            actions.push(self.scan(false));
        }
        actions
    }

    fn failed(&mut self, path: PathBuf, request: &Request, error: Error) -> Vec<Action> {
        let summary = error.summary();
        let Some(item) = self.items.get_mut(&path) else { return Vec::new() };
        // A retry by the timer that fails as before is said once, not every time.
        let first = !(item.retrying && item.last_error.as_deref() == Some(&summary));
        // The timer retries refusals, whose cause may go away elsewhere; not failures such as a
        // full disk, which would copy or flatten again and again.
        item.phase = Phase::Failing { error: summary, timer: error.kind == Kind::Refused };
        let what = what(request);
        // Looked at before the note is written: the look is of what failed, not of what the
        // user did on reading the note.
        vec![Action::Look(path.clone()), Action::Report(Report { item: path, what, error, first })]
    }

    /// A path as the log shows it: within the library.
    fn shown(&self, path: &Path) -> String {
        let root = self.folders.make_base.parent().unwrap_or(Path::new(""));
        path.strip_prefix(root).unwrap_or(path).display().to_string()
    }
}

/// Notes among `entries` whose item is not among them.
fn orphan_notes(entries: &[PathBuf]) -> Vec<PathBuf> {
    // Compared as `note_path` names them: a note of a name that is not UTF-8 has a lossy name.
    let notes: HashSet<PathBuf> = entries.iter().map(|e| note_path(e)).collect();
    entries
        .iter()
        .filter(|e| !notes.contains(*e))
        .filter_map(|e| {
            let name = e.file_name()?.to_string_lossy();
            Some(e.with_file_name(name.strip_suffix(NOTE_SUFFIX)?))
        })
        .collect()
}

/// What a ready item gets.
enum Go {
    Run(Job),
    /// Nothing: a file in a base's folder in New Leaf is no request, and never becomes one.
    Ignore,
    /// A wrong drop: told with a note beside it, and nothing else is done to it.
    Refuse(Error),
}

fn go(path: &Path, request: &Request, look: &Look, written: bool) -> Go {
    const NOTHING_INSIDE: &str = "leafd touches nothing inside it";
    if path.file_name().and_then(|n| n.to_str()).is_none() {
        return Go::Refuse(
            Error::refused(path, "its name is not valid text (UTF-8), so no base or leaf can be named after it")
                .fix("rename it; the name of this note shows the characters that are not valid text as \u{fffd}"),
        );
    }
    match request {
        Request::Misplaced => Go::Refuse(
            Error::refused(path, "New Leaf holds one folder per base, and this is none of them").fix(format!(
                "to make a base of a VM, move it into Make Base; to make a leaf, create an empty folder in \
                 New Leaf/<base>/. {NOTHING_INSIDE}"
            )),
        ),
        Request::NewLeaf { .. } if !look.is_dir() => Go::Ignore,
        // A VM dropped into a base's folder: adopted as a leaf of it.
        Request::NewLeaf { base } if look.holds_a_vm() => Go::Run(Job::Item {
            item: path.to_path_buf(),
            request: Request::Adopt { base: base.clone(), copied: written },
        }),
        Request::NewLeaf { .. } if !look.is_empty_folder() => Go::Refuse(
            Error::refused(
                path,
                "this folder holds files but no VM (one .vmx); a New Leaf request is an empty folder named after the leaf",
            )
            .fix(format!(
                "to make a base of a VM, move it into Make Base; to make a leaf, create an empty folder here; a VM \
                 copied from this base, dropped here, becomes a leaf of it. No leaf is made from this folder, and \
                 {NOTHING_INSIDE}"
            )),
        ),
        _ => Go::Run(Job::Item { item: path.to_path_buf(), request: request.clone() }),
    }
}

/// What could not be done with an item, for the log and the note.
fn what(request: &Request) -> String {
    match request {
        Request::MakeBase => "make a base from".into(),
        Request::NewLeaf { base } => format!("make a leaf of base {base:?} from"),
        Request::Adopt { base, .. } => format!("make a leaf of base {base:?} of the VM"),
        Request::Misplaced => "use".into(),
    }
}

#[cfg(test)]
mod tests;
