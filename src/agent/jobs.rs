//! Running operations off the watcher's thread: one thread per operation, several at once, but
//! never two on the same base, so a slow cross-volume copy does not hold up other bases.

use std::any::Any;
use std::collections::{HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

use super::Msg;
use super::items::{Request, leaf_name};
use crate::error::{Error, Kind};
use crate::library::common::default_name;
use crate::library::make_base::{self, Fingerprinting};
use crate::library::{Library, Options, new_leaf, recovery};

/// Operations running at once, at most.
const PARALLEL: usize = 4;

#[derive(Debug, Clone)]
pub struct Job {
    pub item: PathBuf,
    pub request: Request,
}

impl Job {
    /// Operations with the same key (the base they make or use) run one after another.
    fn key(&self) -> String {
        match &self.request {
            Request::MakeBase => default_name(&self.item),
            Request::NewLeaf { base } => base.clone(),
        }
    }
}

/// A finished operation: the outcome line, or why it failed.
#[derive(Debug)]
pub struct Finished {
    pub job: Job,
    pub result: Result<Done, Error>,
}

#[derive(Debug)]
pub struct Done {
    pub line: String,
    pub warnings: Vec<String>,
    /// For Make Base: the new base's name.
    pub base: Option<String>,
}

pub struct Runner {
    lib: Library,
    opts: Options,
    tx: Sender<Msg>,
    busy: HashSet<String>,
    queue: VecDeque<Job>,
    threads: Vec<JoinHandle<()>>,
}

impl Runner {
    pub fn new(lib: Library, opts: Options, tx: Sender<Msg>) -> Runner {
        Runner { lib, opts, tx, busy: HashSet::new(), queue: VecDeque::new(), threads: Vec::new() }
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    pub fn submit(&mut self, job: Job) {
        self.queue.push_back(job);
        self.start_what_can();
    }

    /// A job's thread reported back: its base is free again.
    pub fn finished(&mut self, job: &Job) {
        self.busy.remove(&job.key());
        self.threads.retain(|t| !t.is_finished());
        self.start_what_can();
    }

    /// Operations running or waiting.
    pub fn active(&self) -> usize {
        self.busy.len() + self.queue.len()
    }

    fn start_what_can(&mut self) {
        let mut waiting = VecDeque::new();
        while let Some(job) = self.queue.pop_front() {
            if self.busy.len() >= PARALLEL || self.busy.contains(&job.key()) {
                waiting.push_back(job);
                continue;
            }
            self.busy.insert(job.key());
            let (lib, opts, tx) = (self.lib.clone(), self.opts.clone(), self.tx.clone());
            let (item, request) = (job.item.clone(), job.request.clone());
            let spawned = std::thread::Builder::new().name("leafd-op".into()).spawn(move || run(&lib, &opts, job, &tx));
            match spawned {
                Ok(t) => self.threads.push(t),
                Err(e) => {
                    // Reported as the item's failure, which frees its base; tried again on change.
                    let error = Error::io(&item, "cannot start an operation thread", e);
                    let _ = self.tx.send(Msg::Done(Finished { job: Job { item, request }, result: Err(error) }));
                }
            }
        }
        self.queue = waiting;
    }

    /// Forgets queued jobs (at shutdown) and waits for the running ones.
    pub fn drain(&mut self) -> Vec<JoinHandle<()>> {
        self.queue.clear();
        std::mem::take(&mut self.threads)
    }
}

fn run(lib: &Library, opts: &Options, job: Job, tx: &Sender<Msg>) {
    // A bug must not leave the item and its base busy for good: a panic becomes the item's
    // failure, and what the operation had begun is undone at once by recovery.
    let (result, fingerprinting) = match catch_unwind(AssertUnwindSafe(|| operate(lib, opts, &job))) {
        Ok(outcome) => outcome,
        Err(panic) => (Err(panicked(lib, opts, &job, panic)), None),
    };
    // A new base is usable now: free it for leaves, then fingerprint it in this thread.
    let _ = tx.send(Msg::Done(Finished { job, result }));
    if let Some((name, fingerprinting)) = fingerprinting {
        match catch_unwind(AssertUnwindSafe(|| fingerprinting.finish(lib, opts))) {
            Ok(Ok(())) => tracing::debug!("fingerprinted base {name:?}"),
            Ok(Err(e)) => tracing::warn!("fingerprint of base {name:?} not recorded yet (done at next start): {e}"),
            Err(_) => tracing::error!("fingerprinting base {name:?} failed unexpectedly; recovery will redo it"),
        }
    }
}

/// Runs the job's operation; a new base comes with its fingerprinting still to do.
fn operate(lib: &Library, opts: &Options, job: &Job) -> (Result<Done, Error>, Option<(String, Fingerprinting)>) {
    match &job.request {
        Request::MakeBase => match make_base::make_base(lib, &job.item, None, opts) {
            Ok((made, fingerprinting)) => {
                let done =
                    Done { line: made.to_string(), warnings: made.warnings.clone(), base: Some(made.name.clone()) };
                (Ok(done), Some((made.name, fingerprinting)))
            }
            Err(e) => (Err(e), None),
        },
        Request::NewLeaf { base } => {
            let folder = job.item.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let result = new_leaf::new_leaf(lib, base, leaf_name(&folder), Some(&job.item), opts).map(|made| Done {
                line: made.to_string(),
                warnings: made.warnings.clone(),
                base: None,
            });
            (result, None)
        }
    }
}

/// The error for an operation that panicked, after recovery has undone (or finished) it.
fn panicked(lib: &Library, opts: &Options, job: &Job, panic: Box<dyn Any + Send>) -> Error {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!("the operation on {} failed unexpectedly: {what}", lib.display(&job.item));
    recovery::recover_and_log(lib, opts);
    Error::new(Kind::Io, job.item.clone(), format!("leafd failed unexpectedly ({what}); what it had begun was undone"))
        .fix("try again by renaming or re-dropping the item; if it happens again, report it with the log (`leafd log`)")
}
