//! Drop items and when they are ready.
//!
//! Events are only hints: each is mapped to the *item* it concerns (a bundle in `Make Base/`, a
//! folder in `New Leaf/<base>/`), and the item itself is looked at. An item is ready when nothing
//! under it changed for the settle period and two looks a moment apart agree on every file and
//! size, with no copy in progress. This module holds that logic without any I/O timing of its
//! own, so it is tested with explicit instants.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use unicode_normalization::UnicodeNormalization;

use crate::library::{BUNDLE_EXT, NOTE_SUFFIX};
use crate::platform;

/// What a drop asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Request {
    /// A VM in `Make Base/`.
    MakeBase,
    /// A folder `New Leaf/<base>/<name>`.
    NewLeaf { base: String },
}

/// Where the drop folders are.
#[derive(Debug, Clone)]
pub struct DropFolders {
    pub make_base: PathBuf,
    pub new_leaf: PathBuf,
}

/// Names leafd never treats as drops: hidden files, Finder's `.DS_Store`, leafd's own notes.
fn ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(NOTE_SUFFIX)
}

impl DropFolders {
    /// The item an event path concerns, if any.
    pub fn item_for(&self, path: &Path) -> Option<(PathBuf, Request)> {
        if let Ok(rest) = path.strip_prefix(&self.make_base) {
            let first = rest.components().next()?.as_os_str().to_str()?;
            return (!ignored(first)).then(|| (self.make_base.join(first), Request::MakeBase));
        }
        let rest = path.strip_prefix(&self.new_leaf).ok()?;
        let mut parts = rest.components().map(|c| c.as_os_str().to_str());
        let base = parts.next()??;
        let name = parts.next()??;
        if ignored(base) || ignored(name) {
            return None;
        }
        Some((self.new_leaf.join(base).join(name), Request::NewLeaf { base: base.to_string() }))
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
pub fn is_default_name(name: &str) -> bool {
    let n: String = name.nfc().collect::<String>().to_lowercase();
    let n = n.trim();
    // "untitled folder 2", "untitled folder 12"
    let stem = match n.rsplit_once(' ') {
        Some((stem, num)) if !num.is_empty() && num.chars().all(|c| c.is_ascii_digit()) => stem,
        _ => n,
    };
    DEFAULT_FOLDER_NAMES.iter().any(|d| d.nfc().eq(stem.chars()))
}

/// The leaf name a request folder asks for ("Web.vmwarevm" asks for "Web").
pub fn leaf_name(folder: &str) -> &str {
    match folder.rsplit_once('.') {
        Some((stem, ext)) if ext.eq_ignore_ascii_case(BUNDLE_EXT) && !stem.is_empty() => stem,
        _ => folder,
    }
}

/// What an item looked like: every entry with its size, time and permissions, and whether a copy
/// is marked in progress. Two equal looks a moment apart mean nothing is arriving; a failed item
/// whose look changes is tried again (permissions count: `chmod` or unlocking may be the fix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    entries: Vec<Entry>,
    pub copying: bool,
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
    pub fn take(item: &Path) -> Option<Look> {
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

    pub fn is_dir(&self) -> bool {
        self.entries[0].dir
    }
}

/// Timing of readiness.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Quiet time needed after the last change.
    pub settle: Duration,
    /// Time between the two looks that must agree.
    pub second_look: Duration,
    /// A marked copy that has not changed for this long is reported (and still waited for).
    pub stall: Duration,
    /// A failed item unchanged for this long is tried again; the wait doubles after each
    /// failure, up to 16 times.
    pub retry: Duration,
}

impl Timing {
    pub fn new(settle: Duration) -> Timing {
        Timing {
            settle,
            second_look: (settle / 3).clamp(Duration::from_millis(200), Duration::from_secs(2)),
            stall: Duration::from_secs(600),
            retry: Duration::from_secs(300),
        }
    }
}

/// Where an item stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Arriving or changing: waiting for quiet.
    Settling,
    /// Its operation is running.
    Running,
    /// The operation failed; retried when the item changes from this look, or at `retry_at`.
    Failed(Look),
    /// A New Leaf folder still carrying Finder's placeholder name.
    Unnamed,
}

/// What to do with an item now.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Look again at this instant.
    Wait(Instant),
    /// Run its operation.
    Ready,
    /// Nothing to do until something happens to it.
    Idle,
    /// It is gone.
    Gone,
    /// A copy is marked in progress but has not changed for a long time.
    Stalled(Instant),
}

/// One drop item and what is known of it.
#[derive(Debug)]
pub struct Item {
    pub path: PathBuf,
    pub request: Request,
    pub phase: Phase,
    /// Last event or change seen.
    pub changed: Instant,
    /// The last look, and when it was taken.
    pub last_look: Option<(Look, Instant)>,
    /// An event came while the operation ran: look again afterwards.
    pub dirty: bool,
    /// A stalled copy was reported (report once).
    pub stall_reported: bool,
    /// Failures in a row, the last one's message, and when the timer tries it again.
    pub failures: u32,
    pub last_error: Option<String>,
    retry_at: Option<Instant>,
    /// This attempt came from the timer, not from a change.
    pub retrying: bool,
}

impl Item {
    pub fn new(path: PathBuf, request: Request, now: Instant) -> Item {
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
        }
    }

    /// The operation failed on the item as it looks now: wait for a change, or (`timer`) for the
    /// retry timer too.
    pub fn failed(&mut self, look: Look, error: String, timer: bool, now: Instant, t: &Timing) {
        self.failures += 1;
        self.retry_at = timer.then(|| now + t.retry * (1 << (self.failures - 1).min(4)));
        self.last_error = Some(error);
        self.phase = Phase::Failed(look.clone());
        self.last_look = Some((look, now));
        self.dirty = false;
    }

    /// Something happened under the item (seen at `when`).
    pub fn touch(&mut self, when: Instant) {
        self.changed = self.changed.max(when);
        if self.phase == Phase::Running {
            self.dirty = true;
        }
    }

    /// When the item next needs a look (`None`: only an event wakes it). The first of the two
    /// looks that must agree comes `second_look` before the settle period ends and the second
    /// when it ends, so an item that stays quiet is ready just as the settle period is over.
    pub fn due(&self, t: &Timing) -> Option<Instant> {
        let end = self.changed + t.settle;
        match &self.phase {
            Phase::Running => None,
            Phase::Unnamed if self.last_look.as_ref().is_some_and(|(_, at)| *at >= self.changed) => None,
            Phase::Failed(_) if self.last_look.as_ref().is_some_and(|(_, at)| *at >= self.changed) => self.retry_at,
            _ => Some(match &self.last_look {
                Some((_, at)) if *at >= self.changed => (*at + t.second_look).max(end),
                _ => end.checked_sub(t.second_look).unwrap_or(self.changed).max(self.changed),
            }),
        }
    }

    /// Decides, given a fresh `look` (None: gone) taken at `now`.
    pub fn decide(&mut self, look: Option<Look>, now: Instant, t: &Timing) -> Verdict {
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
                return Verdict::Stalled(now + t.settle);
            }
            return Verdict::Wait(now + t.settle);
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
        Verdict::Wait((now + t.second_look).max(end))
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
        assert_eq!(
            f.item_for(Path::new("/l/Make Base/U.vmwarevm/U.vmdk")),
            Some(("/l/Make Base/U.vmwarevm".into(), Request::MakeBase))
        );
        assert_eq!(
            f.item_for(Path::new("/l/Make Base/U.vmwarevm")),
            Some(("/l/Make Base/U.vmwarevm".into(), Request::MakeBase))
        );
        assert_eq!(f.item_for(Path::new("/l/Make Base/.DS_Store")), None);
        assert_eq!(f.item_for(Path::new("/l/Make Base/U.vmwarevm - leafd error.txt")), None);
        assert_eq!(f.item_for(Path::new("/l/Make Base")), None);
        assert_eq!(f.item_for(Path::new("/l/New Leaf/Ubuntu")), None);
        assert_eq!(
            f.item_for(Path::new("/l/New Leaf/Ubuntu/Web/x")),
            Some(("/l/New Leaf/Ubuntu/Web".into(), Request::NewLeaf { base: "Ubuntu".into() }))
        );
        assert_eq!(f.item_for(Path::new("/l/Bases/Ubuntu/x.vmdk")), None);
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
        assert_eq!(leaf_name("Web.vmwarevm"), "Web");
        assert_eq!(leaf_name("Web"), "Web");
        assert_eq!(leaf_name(".vmwarevm"), ".vmwarevm");
    }

    fn look(sizes: &[u64], copying: bool) -> Look {
        Look {
            entries: sizes
                .iter()
                .enumerate()
                .map(|(i, s)| Entry {
                    path: i.to_string().into(),
                    dir: false,
                    len: *s,
                    time: None,
                    access: (0o644, false),
                })
                .collect(),
            copying,
        }
    }

    #[test]
    fn ready_when_quiet_for_the_settle_period_and_two_looks_agree() {
        let t = Timing::new(Duration::from_secs(3));
        let t0 = Instant::now();
        let mut item = Item::new("/l/Make Base/U.vmwarevm".into(), Request::MakeBase, t0);
        let end = t0 + t.settle;
        // First look a moment before the end, second at the end: ready exactly then.
        assert_eq!(item.due(&t), Some(end - t.second_look));
        assert_eq!(item.decide(Some(look(&[1], false)), end - t.second_look, &t), Verdict::Wait(end));
        assert_eq!(item.due(&t), Some(end));
        assert_eq!(item.decide(Some(look(&[1], false)), end, &t), Verdict::Ready);
        assert_eq!(item.phase, Phase::Running);
        assert_eq!(item.due(&t), None);
    }

    #[test]
    fn still_growing_is_not_ready() {
        let t = Timing::new(Duration::from_secs(3));
        let t0 = Instant::now();
        let mut item = Item::new("/x".into(), Request::MakeBase, t0);
        let end = t0 + t.settle;
        item.decide(Some(look(&[1], false)), end - t.second_look, &t);
        // Grew without an event reaching us: the looks disagree.
        assert_eq!(item.decide(Some(look(&[2], false)), end, &t), Verdict::Wait(end + t.second_look));
        assert_eq!(item.decide(Some(look(&[2], false)), end + t.second_look, &t), Verdict::Ready);
    }

    #[test]
    fn an_event_between_looks_restarts_the_wait() {
        let t = Timing::new(Duration::from_secs(3));
        let t0 = Instant::now();
        let mut item = Item::new("/x".into(), Request::MakeBase, t0);
        let first = t0 + t.settle - t.second_look;
        item.decide(Some(look(&[1], false)), first, &t);
        let event = first + Duration::from_millis(10);
        item.touch(event);
        assert_eq!(item.due(&t), Some(event + t.settle - t.second_look));
        // Equal looks, but not quiet long enough since the event.
        assert!(matches!(item.decide(Some(look(&[1], false)), t0 + t.settle, &t), Verdict::Wait(_)));
        // Events arrive late; an older time never moves the clock back.
        item.touch(t0);
        assert_eq!(item.changed, event);
    }

    #[test]
    fn a_marked_copy_is_never_given_up_and_a_stall_is_reported_once() {
        let t = Timing { stall: Duration::from_secs(60), ..Timing::new(Duration::from_secs(1)) };
        let t0 = Instant::now();
        let mut item = Item::new("/x".into(), Request::MakeBase, t0);
        let mut now = t0 + t.settle;
        let mut stalls = 0;
        for _ in 0..200 {
            match item.decide(Some(look(&[5], true)), now, &t) {
                Verdict::Ready => panic!("a copy in progress was treated as ready"),
                Verdict::Stalled(_) => stalls += 1,
                _ => {}
            }
            now += t.settle;
        }
        assert_eq!(stalls, 1);
        // The copy finishes: the marker goes, and the item becomes ready.
        assert!(matches!(item.decide(Some(look(&[9], false)), now, &t), Verdict::Wait(_)));
        assert_eq!(item.decide(Some(look(&[9], false)), now + t.second_look, &t), Verdict::Ready);
    }

    #[test]
    fn unnamed_folders_wait_and_failed_items_wait_for_a_change() {
        let t = Timing::new(Duration::from_secs(1));
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
        assert!(matches!(item.decide(Some(look(&[2], false)), t2, &t), Verdict::Wait(_)));
        assert_eq!(item.decide(Some(look(&[2], false)), t2 + t.second_look, &t), Verdict::Ready);
        assert_eq!(item.decide(None, t2, &t), Verdict::Gone);
    }

    #[test]
    fn a_failed_item_is_tried_again_by_the_timer_less_and_less_often() {
        let t = Timing::new(Duration::from_secs(1));
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
