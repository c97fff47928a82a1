//! `leafd status`: bases, their leaves, the space they use and save, and drops waiting or failed.

use std::fs;
use std::path::Path;

use leafd_formats::disk::Disk;
use serde::Serialize;

use super::common::{human_bytes, own_bytes};
use crate::error::Result;
use crate::fsutil;
use crate::library::{Library, Options, ignored_name, journal, note_path, note_reason};
use crate::progress::{self, Record};

#[derive(Debug, Serialize)]
pub(crate) struct Status {
    pub(crate) root: String,
    pub(crate) bases: Vec<BaseStatus>,
    /// Drops not acted on yet (waiting to settle, or not yet seen by the agent).
    pub(crate) pending: Vec<String>,
    /// Drops that failed, with what is wrong (from their note).
    pub(crate) failed: Vec<Failed>,
    /// Operations interrupted and not yet finished or undone.
    pub(crate) interrupted: usize,
    /// Long operations running now, from their progress records.
    pub(crate) running: Vec<Running>,
}

/// A long operation running now: its progress record, and the seconds left at its rate so far.
#[derive(Debug, Serialize)]
pub(crate) struct Running {
    #[serde(flatten)]
    pub(crate) record: Record,
    pub(crate) seconds_left: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct BaseStatus {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) disks: usize,
    /// Virtual size of all disks.
    pub(crate) capacity_bytes: u64,
    /// What the base's disks occupy on disk: shared by every leaf.
    pub(crate) shared_bytes: u64,
    pub(crate) leaves: Vec<LeafStatus>,
    /// What the base plus one full copy per leaf would occupy.
    pub(crate) full_copies_bytes: u64,
    /// What the base and its leaves occupy.
    pub(crate) used_bytes: u64,
    pub(crate) saved_bytes: u64,
    /// Freed by removing the base (possible only once no leaf depends on it).
    pub(crate) reclaimable_bytes: u64,
    pub(crate) fingerprinted: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct LeafStatus {
    pub(crate) name: String,
    pub(crate) path: String,
    /// False when the leaf is no longer where it was made.
    pub(crate) present: bool,
    /// What the leaf occupies of its own: every file of its bundle (`common::own_bytes`, as the
    /// log says when it is made).
    pub(crate) own_bytes: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Failed {
    pub(crate) item: String,
    pub(crate) reason: String,
}

fn allocated_of_disk(path: &Path) -> u64 {
    Disk::open_alone(&Options::default().env(), path)
        .map(|d| d.files().iter().map(|f| fsutil::allocated(f)).sum())
        .unwrap_or(0)
}

/// Gathers the status of `lib`; reads only.
pub(crate) fn status(lib: &Library) -> Result<Status> {
    let leaves = lib.leaves()?;
    let mut bases = Vec::new();
    for base in lib.bases()? {
        let shared: u64 = base.record.disks.iter().map(|d| allocated_of_disk(&base.descriptor_path(d))).sum();
        let mut ls = Vec::new();
        for r in base.leaves_listed()? {
            let found = leaves.iter().find(|l| l.record.id == r.id);
            let own = found.map_or(0, |l| own_bytes(&l.dir));
            let path = found.map_or(r.path.clone(), |l| l.dir.to_string_lossy().into_owned());
            ls.push(LeafStatus { name: r.name.clone(), path, present: found.is_some(), own_bytes: own });
        }
        // Leaves found in the library but missing from the base's list still count.
        let unlisted: Vec<LeafStatus> = leaves
            .iter()
            .filter(|l| l.record.base_id == base.record.id && !ls.iter().any(|s| s.path == l.dir.to_string_lossy()))
            .map(|l| LeafStatus {
                name: l.record.name.clone(),
                path: l.dir.to_string_lossy().into(),
                present: true,
                own_bytes: own_bytes(&l.dir),
            })
            .collect();
        ls.extend(unlisted);
        let own_total: u64 = ls.iter().map(|l| l.own_bytes).sum();
        let full = shared + ls.len() as u64 * shared + own_total;
        let used = shared + own_total;
        bases.push(BaseStatus {
            name: base.record.name.clone(),
            id: base.record.id.clone(),
            disks: base.record.disks.len(),
            capacity_bytes: base
                .record
                .disks
                .iter()
                .map(|d| d.capacity.saturating_mul(512))
                .fold(0, u64::saturating_add),
            shared_bytes: shared,
            reclaimable_bytes: if ls.is_empty() { shared } else { 0 },
            leaves: ls,
            full_copies_bytes: full,
            used_bytes: used,
            saved_bytes: full - used,
            fingerprinted: base.record.disks.iter().all(|d| d.fingerprint.is_some()),
        });
    }
    let (pending, failed) = drops(lib);
    let running = progress::running(lib)
        .into_iter()
        .map(|record| Running { seconds_left: record.seconds_left(), record })
        .collect();
    Ok(Status {
        root: lib.root().to_string_lossy().into(),
        bases,
        pending,
        failed,
        interrupted: journal::pending(lib),
        running,
    })
}

/// Items in the drop folders: those with a failure note, and the others.
fn drops(lib: &Library) -> (Vec<String>, Vec<Failed>) {
    let mut items = Vec::new();
    let list = |dir: &Path| fsutil::entries(dir).unwrap_or_default();
    items.extend(list(&lib.make_base_dir()));
    for base_dir in list(&lib.new_leaf_dir()).into_iter().filter(|p| p.is_dir()) {
        items.extend(list(&base_dir).into_iter().filter(|p| p.is_dir()));
    }
    let mut pending = Vec::new();
    let mut failed = Vec::new();
    for item in items {
        let name = item.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if ignored_name(name) {
            continue;
        }
        match fs::read_to_string(note_path(&item)) {
            Ok(note) => failed.push(Failed { item: lib.display(&item), reason: note_reason(&note).to_string() }),
            Err(_) => pending.push(lib.display(&item)),
        }
    }
    (pending, failed)
}

/// The status as a table a person reads.
pub(crate) fn render(s: &Status) -> String {
    let mut out = format!("library: {}\n", s.root);
    if s.bases.is_empty() {
        out.push_str("no bases yet: drop a powered-off VM into \"Make Base\"\n");
    }
    for b in &s.bases {
        out.push_str(&format!(
            "\nbase {:?}: {} disk{}, {} virtual, {} on disk{}\n",
            b.name,
            b.disks,
            if b.disks == 1 { "" } else { "s" },
            human_bytes(b.capacity_bytes),
            human_bytes(b.shared_bytes),
            if b.fingerprinted { "" } else { " (fingerprint pending)" }
        ));
        for l in &b.leaves {
            let missing = if l.present { String::new() } else { format!("  MISSING (was {})", l.path) };
            out.push_str(&format!(
                "  leaf {:<30} {:>10} of its own{missing}\n",
                format!("{:?}", l.name),
                human_bytes(l.own_bytes)
            ));
        }
        out.push_str(&format!(
            "  {} lea{}: {} used instead of {} as full copies, {} saved",
            b.leaves.len(),
            if b.leaves.len() == 1 { "f" } else { "ves" },
            human_bytes(b.used_bytes),
            human_bytes(b.full_copies_bytes),
            human_bytes(b.saved_bytes)
        ));
        if b.leaves.is_empty() {
            out.push_str(&format!("; removing the base would free {}", human_bytes(b.reclaimable_bytes)));
        }
        out.push('\n');
    }
    for r in &s.running {
        out.push_str(&format!("\nrunning: {}\n", r.record.line()));
    }
    if !s.pending.is_empty() {
        out.push_str(&format!("\nwaiting: {}\n", s.pending.join(", ")));
    }
    for f in &s.failed {
        out.push_str(&format!("\nFAILED {}: {}\n", f.item, f.reason));
    }
    if s.interrupted > 0 {
        out.push_str(&format!(
            "\n{} interrupted operation(s) will be finished or undone by the next leafd command or agent start\n",
            s.interrupted
        ));
    }
    out
}
