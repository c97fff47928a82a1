//! The operation journal: how an operation killed at any instant is finished or undone.
//!
//! Before an operation changes anything it writes its plan to `.leafd/journal/<id>.json` and
//! holds an exclusive lock on that file for as long as it runs. The plan says where everything
//! comes from and goes to; the file system says how far the operation got. Recovery looks only at
//! plans whose lock is free (their process is gone) and, from the state it finds, either rolls
//! the operation forward (once its result was published by an atomic rename) or back (before
//! that). Both directions are idempotent, so a crash during recovery is recovered the same way.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Library, Options, make_base, new_leaf, promote, remove_base};
use crate::error::{Error, IoContext, Result};
use crate::platform;

/// One operation's plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Plan {
    MakeBase(make_base::Plan),
    NewLeaf(new_leaf::Plan),
    Promote(promote::Plan),
    RemoveBase(remove_base::Plan),
}

/// A plan on disk, locked by the running operation.
pub struct Journal {
    path: PathBuf,
    _lock: File,
}

impl Journal {
    /// Records `plan` durably, locked before it becomes visible, so recovery in another process
    /// never mistakes a starting operation for an abandoned one.
    pub fn begin(lib: &Library, id: &str, plan: &Plan) -> Result<Journal> {
        let dir = lib.journal_dir();
        let path = dir.join(format!("{id}.json"));
        let tmp = dir.join(format!("{id}.json.tmp"));
        // Held while the plan is unlocked on disk (between create and lock), so recovery never
        // claims a plan that is being written.
        // Paths go in as JSON strings, which must be UTF-8.
        let json = serde_json::to_vec_pretty(plan).map_err(|e| {
            Error::format(&path, format!("cannot record the operation: {e}"))
                .fix("give the VM and its files names that are valid UTF-8")
        })?;
        let _scan = lib.lock("journal")?;
        let f = OpenOptions::new().write(true).create_new(true).open(&tmp).at(&tmp, "cannot create journal")?;
        f.lock().at(&tmp, "cannot lock journal")?;
        f.write_all_at(&json, 0).at(&tmp, "cannot write journal")?;
        platform::full_sync(&f).at(&tmp, "cannot flush journal")?;
        fs::rename(&tmp, &path).at(&path, "cannot publish journal")?;
        platform::sync_dir(&dir).at(&dir, "cannot flush journal folder")?;
        Ok(Journal { path, _lock: f })
    }

    /// The operation is complete (or fully undone): forget it.
    pub fn finish(self) -> Result<()> {
        remove(&self.path)
    }
}

fn remove(path: &Path) -> Result<()> {
    fs::remove_file(path).at(path, "cannot remove journal")?;
    let dir = path.parent().unwrap_or(Path::new("."));
    platform::sync_dir(dir).at(dir, "cannot flush journal folder")
}

/// What recovery did with one interrupted operation.
#[derive(Debug)]
pub struct Recovered {
    pub id: String,
    /// What was done; or why it could not be, in which case the journal is kept for next time.
    pub result: Result<String, Error>,
}

impl Recovered {
    /// Logs the outcome (and echoes it on stderr when `echo`); true when it went through.
    pub fn report(&self, echo: bool) -> bool {
        match &self.result {
            Ok(m) => {
                tracing::info!("{m}");
                if echo {
                    eprintln!("leafd: {m}");
                }
                true
            }
            Err(e) => {
                tracing::warn!(
                    "could not finish or undo interrupted operation {} (its journal is kept): {}",
                    self.id,
                    e.summary()
                );
                if echo {
                    eprintln!("leafd: could not finish or undo interrupted operation {}: {e}", self.id);
                }
                false
            }
        }
    }
}

/// Finishes or undoes every operation whose process is gone. Operations still running in
/// another process are left alone.
pub fn recover(lib: &Library, opts: &Options) -> Result<Vec<Recovered>> {
    let dir = lib.journal_dir();
    let mut claimed = Vec::new();
    {
        let _scan = lib.lock("journal")?;
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if file.try_lock().is_err() {
                continue; // its operation is running
            }
            if path.to_string_lossy().ends_with(".json.tmp") {
                // Killed before its plan was published: it had changed nothing yet.
                remove(&path)?;
                continue;
            }
            claimed.push((path, file));
        }
    }
    let mut out = Vec::new();
    for (path, file) in claimed {
        let Some(id) =
            path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")).map(str::to_string)
        else {
            continue;
        };
        // One operation that cannot be finished must not stop the others, nor leafd: not even
        // when its recovery meets a bug (a panic), which keeps the journal for next time.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| finish_or_undo(lib, &path, opts)))
            .unwrap_or_else(|_| {
                Err(Error::new(crate::error::Kind::Io, path.clone(), "recovering this operation failed unexpectedly")
                    .fix("report it with the log (`leafd log`); the journal is kept"))
            })
            .and_then(|message| remove(&path).map(|()| message));
        drop(file);
        out.push(Recovered { id, result });
    }
    Ok(out)
}

/// Recovers and logs each outcome, or why it could not look: for callers that go on either way
/// (the agent's timer, and after an operation that panicked).
pub fn recover_and_log(lib: &Library, opts: &Options) {
    match recover(lib, opts) {
        Ok(done) => {
            for r in &done {
                r.report(false);
            }
        }
        Err(e) => tracing::warn!("{}", e.summary()),
    }
}

fn finish_or_undo(lib: &Library, path: &Path, opts: &Options) -> Result<String> {
    let bytes = fs::read(path).at(path, "cannot read journal")?;
    let plan: Plan = serde_json::from_slice(&bytes).map_err(|e| {
        Error::format(path, format!("journal is damaged: {e}"))
            .fix("look at the paths it names, put things right by hand, then delete it")
    })?;
    match &plan {
        Plan::MakeBase(p) => make_base::recover(lib, p, opts),
        Plan::NewLeaf(p) => new_leaf::recover(lib, p),
        Plan::Promote(p) => promote::recover(lib, p),
        Plan::RemoveBase(p) => remove_base::recover(lib, p, opts),
    }
}

/// Operations interrupted and not yet finished or undone (those still running do not count).
pub fn pending(lib: &Library) -> usize {
    let Ok(rd) = fs::read_dir(lib.journal_dir()) else { return 0 };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter(|e| File::open(e.path()).is_ok_and(|f| f.try_lock().is_ok()))
        .count()
}
