//! Drop items and when they are ready.
//!
//! Events are only hints: each is mapped to the *item* it concerns (a bundle in `Make Base/`, a
//! folder in `New Leaf/<base>/`, anything else in `New Leaf/`), and the item itself is looked at.
//! An item is ready when nothing under it changed for the settle period and two looks a moment
//! apart agree on every file and size, with no copy in progress; an empty New Leaf request, into
//! which nothing is being copied, needs only its own short quiet period and one look. This module
//! holds that logic without any I/O timing of its own, so it is tested with explicit instants.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use unicode_normalization::UnicodeNormalization;

use crate::library::ignored_name;
use crate::platform;

/// What a drop asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Request {
    /// A VM in `Make Base/`.
    MakeBase,
    /// A folder `New Leaf/<base>/<name>`.
    NewLeaf { base: String },
    /// A VM bundle dropped into `New Leaf/<base>/`: a job's request only, never an item's (the
    /// item is a New Leaf request that holds a VM). `copied`: it arrived by a copy (files were
    /// written into it), so the VM it was copied from is still where it was.
    Adopt { base: String, copied: bool },
    /// Something in `New Leaf/` that is not a base's folder: never an operation's, only a note.
    Misplaced,
}

/// Where the drop folders are.
#[derive(Debug, Clone)]
pub(crate) struct DropFolders {
    pub(crate) make_base: PathBuf,
    pub(crate) new_leaf: PathBuf,
}

/// Names leafd never treats as drops (see [`ignored_name`]).
fn ignored(name: &OsStr) -> bool {
    ignored_name(&name.to_string_lossy())
}

/// A name as compared with base names: `é` typed either way is the same letter.
pub(crate) fn nfc(name: &str) -> String {
    name.nfc().collect()
}

impl DropFolders {
    pub(crate) fn dirs(&self) -> [&Path; 2] {
        [&self.make_base, &self.new_leaf]
    }

    /// The item an event path concerns, if any. `bases` (in NFC) are the bases whose folders in
    /// `New Leaf/` hold requests. Names that are not UTF-8 are items too: they are told why they
    /// cannot be used.
    pub(crate) fn item_for(&self, path: &Path, bases: &BTreeSet<String>) -> Option<(PathBuf, Request)> {
        if let Ok(rest) = path.strip_prefix(&self.make_base) {
            let first = rest.components().next()?.as_os_str();
            return (!ignored(first)).then(|| (self.make_base.join(first), Request::MakeBase));
        }
        let mut parts = path.strip_prefix(&self.new_leaf).ok()?.components().map(|c| c.as_os_str());
        let folder = parts.next()?;
        if ignored(folder) {
            return None;
        }
        let Some(base) = folder.to_str().filter(|b| bases.contains(&nfc(b))) else {
            return Some((self.new_leaf.join(folder), Request::Misplaced));
        };
        let name = parts.next()?;
        (!ignored(name)).then(|| (self.new_leaf.join(base).join(name), Request::NewLeaf { base: base.to_string() }))
    }
}

/// Finder's name for a new folder, in the languages macOS ships, and what Linux file managers use.
const DEFAULT_FOLDER_NAMES: &[&str] = &[
    "untitled folder",
    "new folder",
    "neuer ordner",
    "nouveau dossier",
    "carpeta sin título",
    "nueva carpeta",
    "nuova cartella",
    "cartella senza titolo",
    "naamloze map",
    "nieuwe map",
    "pasta sem título",
    "nova pasta",
    "namnlös mapp",
    "ny mapp",
    "unavngivet mappe",
    "ny mappe",
    "uten navn",
    "nimetön kansio",
    "uusi kansio",
    "nowy folder",
    "bezejmenná složka",
    "nová složka",
    "adsız klasör",
    "yeni klasör",
    "новая папка",
    "без названия",
    "名称未設定フォルダ",
    "新規フォルダ",
    "未命名文件夹",
    "新建文件夹",
    "未命名檔案夾",
    "무제 폴더",
    "새 폴더",
];

/// True for Finder's placeholder names ("untitled folder", "untitled folder 2", localized):
/// the user has not named the leaf yet.
pub(crate) fn is_default_name(name: &str) -> bool {
    let n: String = name.nfc().collect::<String>().to_lowercase();
    let n = n.trim();
    // "untitled folder 2", "untitled folder 12"
    let stem = match n.rsplit_once(' ') {
        Some((stem, num)) if !num.is_empty() && num.chars().all(|c| c.is_ascii_digit()) => stem,
        _ => n,
    };
    DEFAULT_FOLDER_NAMES.iter().any(|d| d.nfc().eq(stem.chars()))
}

/// What an item looked like: every entry with its size, time and permissions, and whether a copy
/// is marked in progress. Two equal looks a moment apart mean nothing is arriving; a failed item
/// whose look changes is tried again (permissions count: `chmod` or unlocking may be the fix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Look {
    entries: Vec<Entry>,
    pub(crate) copying: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    path: PathBuf,
    dir: bool,
    len: u64,
    time: Option<SystemTime>,
    /// Mode bits, and whether the Finder's Locked flag is set.
    access: (u32, bool),
}

impl Look {
    /// Looks at `item`; `None` when it is gone.
    pub(crate) fn take(item: &Path) -> Option<Look> {
        let meta = std::fs::symlink_metadata(item).ok()?;
        // The item's own size, time and access change with its entries and with our tag.
        let mut entries =
            vec![Entry { path: PathBuf::new(), dir: meta.is_dir(), len: 0, time: None, access: (0, false) }];
        let mut copying = platform::copy_in_progress(item);
        if meta.is_dir() {
            // An entry that went away mid-listing (a copy) makes one listing fail: list again. A
            // folder that cannot be listed at all looks settled, so its operation reports why.
            let inside = crate::fsutil::walk(item).or_else(|_| crate::fsutil::walk(item)).unwrap_or_default();
            for p in inside {
                let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
                copying |= m.is_file() && platform::copy_in_progress(&p);
                // Folder sizes and times change with their entries, which are listed anyway.
                let (len, time) = if m.is_dir() { (0, None) } else { (m.len(), m.modified().ok()) };
                entries.push(Entry {
                    path: p.strip_prefix(item).unwrap_or(&p).to_path_buf(),
                    dir: m.is_dir(),
                    len,
                    time,
                    access: (m.mode(), platform::is_locked(&p).unwrap_or(false)),
                });
            }
        }
        Some(Look { entries, copying })
    }

    pub(crate) fn is_dir(&self) -> bool {
        self.entries[0].dir
    }

    /// A folder holding one `.vmx` (of any name), beside anything else: a VM bundle.
    pub(crate) fn holds_a_vm(&self) -> bool {
        let top_vmx = |e: &&Entry| {
            !e.dir
                && e.path.components().count() == 1
                && e.path.extension().is_some_and(|x| x.eq_ignore_ascii_case("vmx"))
        };
        self.is_dir() && self.entries[1..].iter().filter(top_vmx).count() == 1
    }

    /// A folder holding nothing but hidden files (Finder's `.DS_Store`, say).
    pub(crate) fn is_empty_folder(&self) -> bool {
        self.is_dir()
            && self.entries[1..]
                .iter()
                .all(|e| e.path.components().next().is_some_and(|c| c.as_os_str().to_string_lossy().starts_with('.')))
    }

    /// A look for tests: a folder (or a file, `dir` false) with these entries and sizes.
    #[cfg(test)]
    pub(crate) fn fake(dir: bool, files: &[(&str, u64)], copying: bool) -> Look {
        let root = Entry { path: PathBuf::new(), dir, len: 0, time: None, access: (0, false) };
        let entries = files.iter().map(|(p, len)| Entry {
            path: p.into(),
            dir: false,
            len: *len,
            time: None,
            access: (0o644, false),
        });
        Look { entries: std::iter::once(root).chain(entries).collect(), copying }
    }
}

/// Timing of readiness.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Quiet time needed after the last change.
    pub(crate) settle: Duration,
    /// Time between the two looks that must agree.
    pub(crate) second_look: Duration,
    /// A marked copy that has not changed for this long is reported (and still waited for).
    pub(crate) stall: Duration,
    /// A failed item unchanged for this long is tried again; the wait doubles after each
    /// failure, up to 16 times.
    pub(crate) retry: Duration,
    /// Quiet time needed by an empty New Leaf request: nothing is copied into it, and every
    /// rename or change of it comes as an event, so one look after this is enough.
    pub(crate) new_leaf_quiet: Duration,
}

impl Timing {
    pub(crate) fn new(settle: Duration, new_leaf_quiet: Duration) -> Timing {
        Timing {
            settle,
            second_look: (settle / 3).clamp(Duration::from_millis(200), Duration::from_secs(2)),
            stall: Duration::from_secs(600),
            retry: Duration::from_secs(300),
            new_leaf_quiet,
        }
    }
}

/// Where an item stands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Phase {
    /// Arriving or changing: waiting for quiet.
    Settling,
    /// Its operation is running.
    Running,
    /// Its operation failed with `error` (`timer`: a refusal, tried again by the timer too);
    /// waiting for a look at it as it is now.
    Failing { error: String, timer: bool },
    /// The operation failed; retried when the item changes from this look, or at `retry_at`.
    Failed(Look),
    /// A New Leaf folder still carrying Finder's placeholder name.
    Unnamed,
}

/// What to do with an item now.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Not ready yet: look again when [`Item::due`] says.
    Wait,
    /// Run its operation.
    Ready,
    /// Nothing to do until something happens to it.
    Idle,
    /// It is gone.
    Gone,
    /// A copy is marked in progress but has not changed for a long time.
    Stalled,
}

/// One drop item and what is known of it.
#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) path: PathBuf,
    pub(crate) request: Request,
    pub(crate) phase: Phase,
    /// Last event or change seen.
    pub(crate) changed: Instant,
    /// The last look, and when it was taken.
    pub(crate) last_look: Option<(Look, Instant)>,
    /// An event came while the operation ran: look again afterwards.
    pub(crate) dirty: bool,
    /// A stalled copy was reported (report once).
    pub(crate) stall_reported: bool,
    /// Failures in a row, the last one's message, and when the timer tries it again.
    pub(crate) failures: u32,
    pub(crate) last_error: Option<String>,
    retry_at: Option<Instant>,
    /// This attempt came from the timer, not from a change.
    pub(crate) retrying: bool,
    /// Files were made or written under it (it arrived by a copy, not by a move).
    pub(crate) written: bool,
}

impl Item {
    pub(crate) fn new(path: PathBuf, request: Request, now: Instant) -> Item {
        Item {
            path,
            request,
            phase: Phase::Settling,
            changed: now,
            last_look: None,
            dirty: false,
            stall_reported: false,
            failures: 0,
            last_error: None,
            retry_at: None,
            retrying: false,
            written: false,
        }
    }

    /// The operation failed on the item as it looks now: wait for a change, or (`timer`) for the
    /// retry timer too.
    pub(crate) fn failed(&mut self, look: Look, error: String, timer: bool, now: Instant, t: &Timing) {
        self.failures += 1;
        self.retry_at = timer.then(|| now + t.retry * (1 << (self.failures - 1).min(4)));
        self.last_error = Some(error);
        self.phase = Phase::Failed(look.clone());
        self.last_look = Some((look, now));
        self.dirty = false;
    }

    /// Something happened under the item (seen at `when`).
    pub(crate) fn touch(&mut self, when: Instant) {
        self.changed = self.changed.max(when);
        if self.phase == Phase::Running {
            self.dirty = true;
        }
    }

    /// Starts waiting for the item afresh.
    pub(crate) fn reset(&mut self, now: Instant) {
        self.phase = Phase::Settling;
        self.dirty = false;
        self.last_look = None;
        self.changed = now;
    }

    /// An empty New Leaf request (or one not looked at yet): its own quiet period, one look.
    fn quick(&self) -> bool {
        matches!(self.request, Request::NewLeaf { .. })
            && self.last_look.as_ref().is_none_or(|(look, _)| look.is_empty_folder())
    }

    /// When the item next needs a look (`None`: only an event wakes it). The first of the two
    /// looks that must agree comes `second_look` before the settle period ends and the second
    /// when it ends, so an item that stays quiet is ready just as the settle period is over; an
    /// empty New Leaf request gets its one look when its quiet period ends.
    pub(crate) fn due(&self, t: &Timing) -> Option<Instant> {
        let looked = self.last_look.as_ref().map(|(_, at)| *at).filter(|at| *at >= self.changed);
        match &self.phase {
            Phase::Running | Phase::Failing { .. } => None,
            Phase::Unnamed if looked.is_some() => None,
            Phase::Failed(_) if looked.is_some() => self.retry_at,
            _ => {
                let quick = self.quick();
                let end = self.changed + if quick { t.new_leaf_quiet } else { t.settle };
                Some(match looked {
                    Some(at) => (at + t.second_look).max(end),
                    None if quick => end,
                    None => end.checked_sub(t.second_look).unwrap_or(self.changed).max(self.changed),
                })
            }
        }
    }

    /// Decides, given a fresh `look` (None: gone) taken at `now`.
    pub(crate) fn decide(&mut self, look: Option<Look>, now: Instant, t: &Timing) -> Verdict {
        let Some(look) = look else { return Verdict::Gone };
        if let Request::NewLeaf { .. } = self.request {
            let name = self.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if is_default_name(name) {
                self.phase = Phase::Unnamed;
                self.last_look = Some((look, now));
                return Verdict::Idle;
            }
        }
        if let Phase::Failed(failed) = &self.phase {
            let unchanged = *failed == look;
            self.retrying = unchanged;
            if unchanged && self.retry_at.is_none_or(|at| now < at) {
                self.last_look = Some((look, now));
                return Verdict::Idle;
            }
            // It changed since it failed, or its time to try again came: go once it is quiet.
            if !unchanged {
                self.failures = 0;
            }
            self.phase = Phase::Settling;
        }
        let previous = self.last_look.take();
        let agrees = previous.as_ref().is_some_and(|(p, at)| *p == look && *at >= self.changed);
        if look.copying {
            // Never give up on a copy. A look that differs from the last one is progress; one
            // that stopped moving for long is reported, once.
            if previous.as_ref().is_none_or(|(p, _)| *p != look) {
                self.changed = now;
            }
            self.last_look = Some((look, now));
            if now.duration_since(self.changed) >= t.stall && !self.stall_reported {
                self.stall_reported = true;
                return Verdict::Stalled;
            }
            return Verdict::Wait;
        }
        if matches!(self.request, Request::NewLeaf { .. }) && look.is_empty_folder() {
            let end = self.changed + t.new_leaf_quiet;
            self.last_look = Some((look, now));
            if now < end {
                self.phase = Phase::Settling;
                return Verdict::Wait;
            }
            self.phase = Phase::Running;
            self.dirty = false;
            return Verdict::Ready;
        }
        let end = self.changed + t.settle;
        if agrees && now >= end {
            self.phase = Phase::Running;
            self.dirty = false;
            self.last_look = Some((look, now));
            return Verdict::Ready;
        }
        self.phase = Phase::Settling;
        // A look that agrees with the last one still counts if it comes before the end.
        self.last_look = Some(match previous {
            Some((p, at)) if agrees => (p, at),
            _ => (look, now),
        });
        Verdict::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_look_sees_permissions_but_not_reads_or_the_items_own_tag() {
        let dir = tempfile::tempdir().unwrap();
        let item = dir.path().join("VM.vmwarevm");
        std::fs::create_dir(&item).unwrap();
        let disk = item.join("VM.vmdk");
        std::fs::write(&disk, b"disk").unwrap();
        let first = Look::take(&item).unwrap();
        std::fs::read(&disk).unwrap();
        crate::durable::set_tag(&item, platform::Tag::Failed, true).unwrap();
        assert_eq!(Look::take(&item).unwrap(), first, "reading or tagging is no change");
        std::fs::set_permissions(&disk, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
        assert_ne!(Look::take(&item).unwrap(), first, "a chmod is a change (it may be the fix)");
    }

    fn folders() -> DropFolders {
        DropFolders { make_base: "/l/Make Base".into(), new_leaf: "/l/New Leaf".into() }
    }

    #[test]
    fn events_map_to_items() {
        let f = folders();
        let bases = BTreeSet::from(["Ubuntu".to_string(), nfc("Caf\u{e9}")]);
        let item = |p: &str| f.item_for(Path::new(p), &bases);
        let make_base = |p: &str| Some((PathBuf::from(p), Request::MakeBase));
        assert_eq!(item("/l/Make Base/U.vmwarevm/U.vmdk"), make_base("/l/Make Base/U.vmwarevm"));
        assert_eq!(item("/l/Make Base/U.vmwarevm"), make_base("/l/Make Base/U.vmwarevm"));
        assert_eq!(item("/l/Make Base/.DS_Store"), None);
        assert_eq!(item("/l/Make Base/U.vmwarevm - leafd error.txt"), None);
        assert_eq!(item("/l/Make Base"), None);
        assert_eq!(item("/l/New Leaf/Ubuntu"), None, "a base's folder is no item");
        let leaf = |p: &str, base: &str| Some((PathBuf::from(p), Request::NewLeaf { base: base.into() }));
        assert_eq!(item("/l/New Leaf/Ubuntu/Web/x"), leaf("/l/New Leaf/Ubuntu/Web", "Ubuntu"));
        assert_eq!(item("/l/New Leaf/Cafe\u{301}/Web"), leaf("/l/New Leaf/Cafe\u{301}/Web", "Cafe\u{301}"));
        assert_eq!(item("/l/New Leaf/Ubuntu/.DS_Store"), None);
        assert_eq!(item("/l/New Leaf/.DS_Store"), None);
        assert_eq!(item("/l/New Leaf/Ubuntu - leafd error.txt"), None);
        // Anything else in New Leaf is one misplaced item, whatever happens inside it.
        let misplaced = Some((PathBuf::from("/l/New Leaf/U.vmwarevm"), Request::Misplaced));
        assert_eq!(item("/l/New Leaf/U.vmwarevm"), misplaced);
        assert_eq!(item("/l/New Leaf/U.vmwarevm/U.vmdk"), misplaced);
        assert_eq!(item("/l/Bases/Ubuntu/x.vmdk"), None);
        // Names that are not UTF-8 are items (to be told), not ignored.
        use std::os::unix::ffi::OsStrExt;
        let odd = Path::new("/l/Make Base").join(OsStr::from_bytes(b"Caf\xe9.vmwarevm"));
        assert_eq!(f.item_for(&odd.join("x.vmdk"), &bases), Some((odd, Request::MakeBase)));
        let odd = Path::new("/l/New Leaf/Ubuntu").join(OsStr::from_bytes(b"W\xffb"));
        assert_eq!(f.item_for(&odd, &bases), Some((odd, Request::NewLeaf { base: "Ubuntu".into() })));
    }

    #[test]
    fn hidden_files_leave_a_folder_empty() {
        assert!(Look::fake(true, &[], false).is_empty_folder());
        assert!(Look::fake(true, &[(".DS_Store", 6), (".hidden/inside", 1)], false).is_empty_folder());
        assert!(!Look::fake(true, &[(".DS_Store", 6), ("VM.vmx", 1)], false).is_empty_folder());
        assert!(!Look::fake(false, &[], false).is_empty_folder(), "a file is no empty folder");
    }

    #[test]
    fn finder_placeholder_names() {
        for n in [
            "untitled folder",
            "untitled folder 2",
            "Untitled Folder 13",
            "Neuer Ordner",
            "nouveau dossier 3",
            "名称未設定フォルダ",
            "carpeta sin título",
            "carpeta sin ti\u{301}tulo",
        ] {
            assert!(is_default_name(n), "{n}");
        }
        for n in ["Web Server", "untitled folder server", "folder 2", "untitled"] {
            assert!(!is_default_name(n), "{n}");
        }
        assert_eq!(crate::library::bundle_stem("Web.vmwarevm"), "Web");
        assert_eq!(crate::library::bundle_stem("Web"), "Web");
        assert_eq!(crate::library::bundle_stem(".vmwarevm"), ".vmwarevm");
    }

    const QUIET: Duration = Duration::from_millis(400);

    fn look(sizes: &[u64], copying: bool) -> Look {
        let names: Vec<String> = (0..sizes.len()).map(|i| i.to_string()).collect();
        let files: Vec<(&str, u64)> = names.iter().map(String::as_str).zip(sizes.iter().copied()).collect();
        Look::fake(true, &files, copying)
    }

    #[test]
    fn ready_when_quiet_for_the_settle_period_and_two_looks_agree() {
        let t = Timing::new(Duration::from_secs(3), QUIET);
        let t0 = Instant::now();
        let mut item = Item::new("/l/Make Base/U.vmwarevm".into(), Request::MakeBase, t0);
        let end = t0 + t.settle;
        // First look a moment before the end, second at the end: ready exactly then.
        assert_eq!(item.due(&t), Some(end - t.second_look));
        assert_eq!(item.decide(Some(look(&[1], false)), end - t.second_look, &t), Verdict::Wait);
        assert_eq!(item.due(&t), Some(end));
        assert_eq!(item.decide(Some(look(&[1], false)), end, &t), Verdict::Ready);
        assert_eq!(item.phase, Phase::Running);
        assert_eq!(item.due(&t), None);
    }

    #[test]
    fn still_growing_is_not_ready() {
        let t = Timing::new(Duration::from_secs(3), QUIET);
        let t0 = Instant::now();
        let mut item = Item::new("/x".into(), Request::MakeBase, t0);
        let end = t0 + t.settle;
        item.decide(Some(look(&[1], false)), end - t.second_look, &t);
        // Grew without an event reaching us: the looks disagree.
        assert_eq!(item.decide(Some(look(&[2], false)), end, &t), Verdict::Wait);
        assert_eq!(item.due(&t), Some(end + t.second_look));
        assert_eq!(item.decide(Some(look(&[2], false)), end + t.second_look, &t), Verdict::Ready);
    }

    #[test]
    fn an_event_between_looks_restarts_the_wait() {
        let t = Timing::new(Duration::from_secs(3), QUIET);
        let t0 = Instant::now();
        let mut item = Item::new("/x".into(), Request::MakeBase, t0);
        let first = t0 + t.settle - t.second_look;
        item.decide(Some(look(&[1], false)), first, &t);
        let event = first + Duration::from_millis(10);
        item.touch(event);
        assert_eq!(item.due(&t), Some(event + t.settle - t.second_look));
        // Equal looks, but not quiet long enough since the event.
        assert!(matches!(item.decide(Some(look(&[1], false)), t0 + t.settle, &t), Verdict::Wait));
        // Events arrive late; an older time never moves the clock back.
        item.touch(t0);
        assert_eq!(item.changed, event);
    }

    #[test]
    fn a_marked_copy_is_never_given_up_and_a_stall_is_reported_once() {
        let t = Timing { stall: Duration::from_secs(60), ..Timing::new(Duration::from_secs(1), QUIET) };
        let t0 = Instant::now();
        let mut item = Item::new("/x".into(), Request::MakeBase, t0);
        let mut now = t0 + t.settle;
        let mut stalls = 0;
        for _ in 0..200 {
            match item.decide(Some(look(&[5], true)), now, &t) {
                Verdict::Ready => panic!("a copy in progress was treated as ready"),
                Verdict::Stalled => stalls += 1,
                _ => {}
            }
            now += t.settle;
        }
        assert_eq!(stalls, 1);
        // The copy finishes: the marker goes, and the item becomes ready.
        assert!(matches!(item.decide(Some(look(&[9], false)), now, &t), Verdict::Wait));
        assert_eq!(item.decide(Some(look(&[9], false)), now + t.second_look, &t), Verdict::Ready);
    }

    #[test]
    fn unnamed_folders_wait_and_failed_items_wait_for_a_change() {
        let t = Timing::new(Duration::from_secs(1), QUIET);
        let t0 = Instant::now();
        let mut item = Item::new("/l/New Leaf/U/untitled folder".into(), Request::NewLeaf { base: "U".into() }, t0);
        assert_eq!(item.decide(Some(look(&[0], false)), t0 + t.settle, &t), Verdict::Idle);
        assert_eq!(item.phase, Phase::Unnamed);
        assert_eq!(item.due(&t), None);

        let mut item = Item::new("/l/Make Base/U".into(), Request::MakeBase, t0);
        let t1 = t0 + t.settle;
        item.failed(look(&[1], false), "it is running".into(), true, t1, &t);
        assert_eq!(item.decide(Some(look(&[1], false)), t1, &t), Verdict::Idle);
        assert_eq!(item.due(&t), Some(t1 + t.retry), "unchanged, it waits for the retry timer");
        let mut no_timer = Item::new("/l/Make Base/V".into(), Request::MakeBase, t0);
        no_timer.failed(look(&[1], false), "disk full".into(), false, t1, &t);
        assert_eq!(no_timer.due(&t), None, "a failure that is not a refusal waits for a change");
        item.touch(t1 + Duration::from_secs(1));
        let t2 = t1 + Duration::from_secs(1) + t.settle;
        assert!(matches!(item.decide(Some(look(&[2], false)), t2, &t), Verdict::Wait));
        assert_eq!(item.decide(Some(look(&[2], false)), t2 + t.second_look, &t), Verdict::Ready);
        assert_eq!(item.decide(None, t2, &t), Verdict::Gone);
    }

    #[test]
    fn a_failed_item_is_tried_again_by_the_timer_less_and_less_often() {
        let t = Timing::new(Duration::from_secs(1), QUIET);
        let t0 = Instant::now();
        let mut item = Item::new("/l/New Leaf/U/Web".into(), Request::NewLeaf { base: "U".into() }, t0);
        let mut at = t0 + t.settle;
        for (n, wait) in [1u32, 2, 4, 8, 16, 16].into_iter().enumerate() {
            item.failed(look(&[1], false), "Web.vmwarevm: already exists".into(), true, at, &t);
            assert_eq!(item.failures, n as u32 + 1);
            assert_eq!(item.due(&t), Some(at + t.retry * wait), "after failure {}", n + 1);
            let before = at + t.retry * wait - Duration::from_millis(1);
            assert_eq!(item.decide(Some(look(&[1], false)), before, &t), Verdict::Idle);
            at += t.retry * wait;
            assert_eq!(item.decide(Some(look(&[1], false)), at, &t), Verdict::Ready, "retry {}", n + 1);
            assert!(item.retrying, "a retry by the timer is marked as such");
        }
    }
}
