//! Work off the event loop: each job (an item's operation, or a recovery) runs on a thread of
//! its own, several at once, but never two on the same base, so a slow cross-volume copy does
//! not hold up other bases, and a recovery fingerprinting a whole base holds up no event.
//! [`Queue`] decides what may start (it is pure, and part of the agent's core); [`spawn`] runs.

use std::any::Any;
use std::collections::{HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use super::items::Request;
use crate::error::{Error, Kind};
use crate::library::ops::{adopt, make_base, new_leaf};
use crate::library::{Library, Options, bundle_stem, recovery};

/// Jobs running at once, at most.
pub(crate) const PARALLEL: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Job {
    /// The operation a drop item asks for (never a misplaced one: that is only told).
    Item { item: PathBuf, request: Request },
    /// Finish or undo the operations a killed leafd left behind.
    Recover,
}

/// Jobs with the same key run one after another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// The base a job makes or uses.
    Base(String),
    Recovery,
}

impl Job {
    fn key(&self) -> Key {
        match self {
            Job::Recover => Key::Recovery,
            Job::Item { request: Request::NewLeaf { base } | Request::Adopt { base, .. }, .. } => {
                Key::Base(base.clone())
            }
            Job::Item { item, .. } => Key::Base(bundle_stem(&file_name(item)).to_string()),
        }
    }

    /// The drop item the job is for.
    pub(crate) fn item(&self) -> Option<&Path> {
        match self {
            Job::Item { item, .. } => Some(item),
            Job::Recover => None,
        }
    }
}

/// A finished job: what it did, or why it failed.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) job: Job,
    pub(crate) result: Result<Done, Error>,
}

#[derive(Debug)]
pub(crate) struct Done {
    /// The outcome line for the log.
    pub(crate) line: String,
    pub(crate) warnings: Vec<String>,
    /// For Make Base: the new base's name.
    pub(crate) base: Option<String>,
}

/// Which jobs run: at most [`PARALLEL`], never two with the same key; the others wait in order.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    waiting: VecDeque<Job>,
    busy: HashSet<Key>,
}

impl Queue {
    /// Queues `job`; returns the jobs to start now.
    pub(crate) fn submit(&mut self, job: Job) -> Vec<Job> {
        self.waiting.push_back(job);
        self.startable()
    }

    /// A job reported back: its base is free again. Returns the jobs to start now.
    pub(crate) fn finished(&mut self, job: &Job) -> Vec<Job> {
        self.busy.remove(&job.key());
        self.startable()
    }

    fn startable(&mut self) -> Vec<Job> {
        let mut start = Vec::new();
        let mut still = VecDeque::new();
        for job in self.waiting.drain(..) {
            if self.busy.len() < PARALLEL && self.busy.insert(job.key()) {
                start.push(job);
            } else {
                still.push_back(job);
            }
        }
        self.waiting = still;
        start
    }

    /// Jobs running.
    pub(crate) fn running(&self) -> usize {
        self.busy.len()
    }

    /// True when `job` (or one of its key) is running or waiting.
    pub(crate) fn holds(&self, job: &Job) -> bool {
        self.busy.contains(&job.key()) || self.waiting.iter().any(|j| j.key() == job.key())
    }

    /// Forgets the waiting jobs (at shutdown: their items are still there at the next start).
    pub(crate) fn forget_waiting(&mut self) {
        self.waiting.clear();
    }
}

/// Starts `job` on a thread of its own, which hands what it did to `done` when it has finished.
pub(crate) fn spawn(
    lib: &Library,
    opts: &Options,
    job: Job,
    done: impl FnOnce(Finished) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let (lib, opts) = (lib.clone(), opts.clone());
    std::thread::Builder::new().name("leafd-job".into()).spawn(move || run(&lib, &opts, job, done))
}

fn run(lib: &Library, opts: &Options, job: Job, done: impl FnOnce(Finished)) {
    // A bug must not leave the item and its base busy for good: a panic becomes the item's
    // failure, and what the operation had begun is undone at once by recovery.
    let (result, fingerprinting) = match catch_unwind(AssertUnwindSafe(|| operate(lib, opts, &job))) {
        Ok(outcome) => outcome,
        Err(panic) => (Err(panicked(lib, opts, &job, panic)), None),
    };
    // A new base is usable now: free it for leaves, then fingerprint it in this thread.
    done(Finished { job, result });
    if let Some((name, fingerprinting)) = fingerprinting {
        match catch_unwind(AssertUnwindSafe(|| fingerprinting.finish(lib, opts))) {
            Ok(Ok(())) => tracing::debug!("fingerprinted base {name:?}"),
            Ok(Err(e)) => tracing::warn!("fingerprint of base {name:?} not recorded yet (done at next start): {e}"),
            Err(_) => tracing::error!("fingerprinting base {name:?} failed unexpectedly; recovery will redo it"),
        }
    }
}

type Outcome = (Result<Done, Error>, Option<(String, make_base::Fingerprinting)>);

/// Runs the job; a new base comes with its fingerprinting still to do.
fn operate(lib: &Library, opts: &Options, job: &Job) -> Outcome {
    match job {
        Job::Recover => (recover(lib, opts), None),
        Job::Item { item, request: Request::MakeBase } => match make_base::make_base(lib, item, None, opts) {
            Ok((made, fingerprinting)) => {
                let done =
                    Done { line: made.to_string(), warnings: made.warnings.clone(), base: Some(made.name.clone()) };
                (Ok(done), Some((made.name, fingerprinting)))
            }
            Err(e) => (Err(e), None),
        },
        Job::Item { item, request: Request::NewLeaf { base } } => {
            let folder = file_name(item);
            let result = new_leaf::new_leaf(lib, base, bundle_stem(&folder), Some(item), opts).map(|made| Done {
                line: made.to_string(),
                warnings: made.warnings.clone(),
                base: None,
            });
            (result, None)
        }
        Job::Item { item, request: Request::Adopt { base, copied } } => {
            let req = adopt::Request { vm: item, base, name: None, dry_run: false, force: false };
            let result = adopt::adopt(lib, req, opts).map(|a| {
                let mut line = a.to_string();
                if *copied {
                    line.push_str(
                        "; it was copied into New Leaf, so the VM it was copied from is still where it was (delete it to free its space)",
                    );
                }
                Done { line, warnings: Vec::new(), base: None }
            });
            (result, None)
        }
        Job::Item { request: Request::Misplaced, .. } => unreachable!("a misplaced drop is told, never run"),
    }
}

/// Finishes or undoes what killed processes left, logging each outcome, then writes the record
/// files of a library an older leafd made.
fn recover(lib: &Library, opts: &Options) -> Result<Done, Error> {
    let outcomes = recovery::recover(lib, opts)?;
    lib.migrate()?;
    let done = outcomes.iter().filter(|r| r.report(false)).count();
    let line = format!("recovery: {done} of {} interrupted operation(s) finished or undone", outcomes.len());
    Ok(Done { line, warnings: Vec::new(), base: None })
}

/// The error for a job that panicked, after recovery has undone (or finished) its operation.
fn panicked(lib: &Library, opts: &Options, job: &Job, panic: Box<dyn Any + Send>) -> Error {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    let Some(item) = job.item() else {
        // Recovering again could panic again; the journals stay for the next recovery.
        tracing::error!("recovery failed unexpectedly: {what}");
        return Error::new(Kind::Internal, lib.state_dir(), format!("recovery failed unexpectedly ({what})"));
    };
    tracing::error!("the operation on {} failed unexpectedly: {what}", lib.display(item));
    recovery::recover_and_log(lib, opts);
    Error::new(
        Kind::Internal,
        item.to_path_buf(),
        format!("leafd failed unexpectedly ({what}); what it had begun was undone"),
    )
    .fix("try again by renaming or re-dropping the item; if it happens again, report it with the log (`leafd log`)")
}

fn file_name(item: &Path) -> String {
    item.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}
