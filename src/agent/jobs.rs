//! Running operations off the watcher's thread: one thread per operation, several at once, but
//! never two on the same base, so a slow cross-volume copy does not hold up other bases.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

use super::Msg;
use super::items::{Request, leaf_name};
use crate::error::Error;
use crate::library::make_base::{self, default_name};
use crate::library::{Library, Options, new_leaf};

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
            let spawned = std::thread::Builder::new().name("leafd-op".into()).spawn(move || run(&lib, &opts, job, &tx));
            match spawned {
                Ok(t) => self.threads.push(t),
                Err(e) => tracing::error!("cannot start an operation thread: {e}"),
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
    match &job.request {
        Request::MakeBase => match make_base::make_base(lib, &job.item, None, opts) {
            Ok((made, fingerprinting)) => {
                let done =
                    Done { line: made.to_string(), warnings: made.warnings.clone(), base: Some(made.name.clone()) };
                // The base is usable now: free it for leaves, then fingerprint in this thread.
                let _ = tx.send(Msg::Done(Finished { job, result: Ok(done) }));
                match fingerprinting.finish(lib, opts) {
                    Ok(()) => tracing::debug!("fingerprinted base {:?}", made.name),
                    Err(e) => {
                        tracing::warn!("fingerprint of base {:?} not recorded yet (done at next start): {e}", made.name)
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Msg::Done(Finished { job, result: Err(e) }));
            }
        },
        Request::NewLeaf { base } => {
            let folder = job.item.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let result = new_leaf::new_leaf(lib, base, leaf_name(&folder), Some(&job.item), opts).map(|made| Done {
                line: made.to_string(),
                warnings: made.warnings.clone(),
                base: None,
            });
            let _ = tx.send(Msg::Done(Finished { job, result }));
        }
    }
}
