//! The core played with a pretend world: files are looks in a map, the clock moves only when a
//! test moves it, and jobs finish when a test says so. Each test runs in microseconds.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::ffi::OsStrExt;

use notify::event::{AccessKind, CreateKind, Event, EventKind, Flag, ModifyKind, RemoveKind, RenameMode};

use super::*;

const SETTLE: Duration = Duration::from_secs(1);
const QUIET: Duration = Duration::from_millis(400);
const MAKE_BASE: FolderId = (0, 1);
const NEW_LEAF: FolderId = (0, 2);

fn mb(name: &str) -> PathBuf {
    Path::new("/l/Make Base").join(name)
}

fn nl(base: &str, name: &str) -> PathBuf {
    Path::new("/l/New Leaf").join(base).join(name)
}

fn empty() -> Look {
    Look::fake(true, &[], false)
}

fn vm(disk: u64) -> Look {
    Look::fake(true, &[("VM.vmx", 10), ("VM.vmdk", disk)], false)
}

fn leaf(path: &Path) -> Job {
    let base = path.parent().unwrap().file_name().unwrap().to_str().unwrap().to_string();
    Job::Item { item: path.to_path_buf(), request: Request::NewLeaf { base } }
}

fn base(path: &Path) -> Job {
    Job::Item { item: path.to_path_buf(), request: Request::MakeBase }
}

fn done(base: Option<&str>) -> Result<Done, Error> {
    Ok(Done { line: "made".into(), warnings: Vec::new(), base: base.map(str::to_string) })
}

fn refused(path: &Path, why: &str) -> Result<Done, Error> {
    Err(Error::refused(path, why))
}

/// The world around the core, carrying out its actions the way `run` does.
struct Sim {
    core: Core,
    start: Instant,
    now: Instant,
    /// What is in the drop folders: each entry with how it looks.
    fs: BTreeMap<PathBuf, Look>,
    bases: Vec<String>,
    folders: [Option<FolderId>; 2],
    /// Jobs started and not finished yet.
    running: Vec<Job>,
    /// Every item's job started, and when (since the start).
    started: Vec<(Job, Duration)>,
    /// Periodic recoveries finish at once (else a test finishes them).
    quick_recovery: bool,
    reports: Vec<Report>,
    cleared: Vec<PathBuf>,
    watched_again: Vec<PathBuf>,
    scans: usize,
    exit: Option<(Instant, Option<Error>)>,
}

impl Sim {
    /// An agent whose startup recovery has not finished yet.
    fn starting(bases: &[&str], timing: Timing) -> Sim {
        let start = Instant::now();
        let folders = DropFolders { make_base: "/l/Make Base".into(), new_leaf: "/l/New Leaf".into() };
        let watched = [Some(MAKE_BASE), Some(NEW_LEAF)];
        let mut sim = Sim {
            core: Core::new(folders, timing, watched, start),
            start,
            now: start,
            fs: BTreeMap::new(),
            bases: bases.iter().map(|b| b.to_string()).collect(),
            folders: watched,
            running: Vec::new(),
            started: Vec::new(),
            reports: Vec::new(),
            cleared: Vec::new(),
            watched_again: Vec::new(),
            scans: 0,
            exit: None,
            quick_recovery: false,
        };
        sim.feed(Input::Start);
        assert_eq!(sim.running, [Job::Recover], "the agent starts with its recovery");
        sim
    }

    /// A started agent with these bases, the settle period `SETTLE`.
    fn new(bases: &[&str]) -> Sim {
        Sim::with(bases, Timing::new(SETTLE, QUIET))
    }

    fn with(bases: &[&str], timing: Timing) -> Sim {
        let mut sim = Sim::starting(bases, timing);
        sim.finish(&Job::Recover, done(None));
        sim.quick_recovery = true;
        sim
    }

    fn at(&self) -> Duration {
        self.now - self.start
    }

    fn feed(&mut self, input: Input) {
        // As `run`: nothing is fed after the exit.
        if self.exit.is_some() {
            return;
        }
        let mut todo = VecDeque::from(self.core.handle(input, self.now));
        while let Some(action) = todo.pop_front() {
            assert!(self.exit.is_none(), "{action:?} after the exit");
            let answer = match action {
                Action::Look(item) => Some(Input::Looked { look: self.fs.get(&item).cloned(), item }),
                Action::Run(Job::Recover) if self.quick_recovery => {
                    Some(Input::Finished(Finished { job: Job::Recover, result: done(None) }))
                }
                Action::Run(job) => {
                    if job != Job::Recover {
                        self.started.push((job.clone(), self.at()));
                    }
                    self.running.push(job);
                    None
                }
                Action::Scan => Some(Input::Scanned(self.scan())),
                Action::Watch(dir) => {
                    self.watched_again.push(dir.clone());
                    let i = usize::from(dir.ends_with("New Leaf"));
                    Some(Input::Watched { dir, id: self.folders[i] })
                }
                Action::Clear(item) => {
                    self.cleared.push(item);
                    None
                }
                Action::Report(r) => {
                    self.reports.push(r);
                    None
                }
                Action::Untag(_) | Action::Stalled(_) => None,
                Action::Exit { by, error } => {
                    self.exit = Some((by, error));
                    None
                }
            };
            if let Some(input) = answer {
                todo.extend(self.core.handle(input, self.now));
            }
        }
    }

    fn scan(&mut self) -> Scan {
        self.scans += 1;
        // The scan makes missing drop folders again: new folders, new identities.
        for (i, id) in self.folders.iter_mut().enumerate() {
            id.get_or_insert((1, 10 + i as u64));
        }
        Scan { bases: Some(self.bases.clone()), entries: self.fs.keys().cloned().collect(), folders: self.folders }
    }

    /// What `run` does after every wake.
    fn wake(&mut self) {
        self.feed(Input::Folders(self.folders));
        self.feed(Input::Tick);
    }

    fn event(&mut self, kind: EventKind, paths: &[&Path]) {
        let mut e = Event::new(kind);
        for p in paths {
            e = e.add_path(p.to_path_buf());
        }
        self.feed(Input::Event(e));
        self.wake();
    }

    /// Moves the clock `by` on, waking whenever the core asked to be woken.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(wake) = self.core.next_wake().filter(|w| *w <= end) {
            self.now = self.now.max(wake);
            self.wake();
            if self.exit.is_some() {
                return;
            }
        }
        self.now = end;
    }

    fn create(&mut self, path: &Path, look: Look) {
        self.fs.insert(path.to_path_buf(), look);
        self.event(EventKind::Create(CreateKind::Folder), &[path]);
    }

    fn move_in(&mut self, path: &Path, look: Look) {
        self.fs.insert(path.to_path_buf(), look);
        self.event(EventKind::Modify(ModifyKind::Name(RenameMode::To)), &[path]);
    }

    fn move_out(&mut self, path: &Path) {
        self.fs.remove(path);
        self.event(EventKind::Modify(ModifyKind::Name(RenameMode::From)), &[path]);
    }

    /// A rename as inotify reports it: from, to, then both.
    fn rename(&mut self, from: &Path, to: &Path) {
        let look = self.fs.remove(from).unwrap();
        self.fs.insert(to.to_path_buf(), look);
        self.event(EventKind::Modify(ModifyKind::Name(RenameMode::From)), &[from]);
        self.event(EventKind::Modify(ModifyKind::Name(RenameMode::To)), &[to]);
        self.event(EventKind::Modify(ModifyKind::Name(RenameMode::Both)), &[from, to]);
    }

    fn finish(&mut self, job: &Job, result: Result<Done, Error>) {
        let i = self.running.iter().position(|j| j == job).unwrap_or_else(|| panic!("{job:?} is not running"));
        self.running.remove(i);
        self.feed(Input::Finished(Finished { job: job.clone(), result }));
        self.wake();
    }

    /// New Leaf made the leaf, and removed its request folder.
    fn made_leaf(&mut self, request: &Path) {
        self.fs.remove(request);
        self.event(EventKind::Remove(RemoveKind::Folder), &[request]);
        self.finish(&leaf(request), done(None));
    }

    fn jobs(&self) -> Vec<&Job> {
        self.started.iter().map(|(j, _)| j).collect()
    }

    fn started_at(&self, job: &Job) -> Vec<Duration> {
        self.started.iter().filter(|(j, _)| j == job).map(|(_, at)| *at).collect()
    }
}

#[test]
fn nothing_is_looked_at_or_scanned_before_the_startup_recovery_has_finished() {
    let mut sim = Sim::starting(&[], Timing::new(SETTLE, QUIET));
    sim.create(&mb("U.vmwarevm"), vm(8));
    sim.create(Path::new("/l/New Leaf/Stray"), empty());
    sim.feed(Input::Event(Event::new(EventKind::Other).set_flag(Flag::Rescan)));
    sim.feed(Input::Missed);
    sim.feed(Input::Folders([None, None]));
    sim.advance(Duration::from_secs(3600));
    assert_eq!(sim.scans, 0);
    assert_eq!(sim.running, [Job::Recover], "nothing but the recovery ran");
    assert_eq!(sim.core.next_wake(), None, "no timer runs meanwhile");
    sim.finish(&Job::Recover, done(None));
    assert_eq!(sim.scans, 1, "then the first scan");
    sim.advance(SETTLE);
    assert_eq!(sim.jobs(), [&base(&mb("U.vmwarevm"))]);
}

#[test]
fn a_startup_recovery_that_cannot_run_stops_the_agent_with_its_error() {
    let mut sim = Sim::starting(&[], Timing::new(SETTLE, QUIET));
    sim.finish(&Job::Recover, Err(Error::new(Kind::Io, None, "cannot read the journal")));
    let (_, error) = sim.exit.take().expect("it exits");
    assert_eq!(error.unwrap().message, "cannot read the journal");
    assert_eq!(sim.scans, 0);
}

#[test]
fn a_drop_is_made_a_base_once_quiet_for_the_settle_period_and_growing_restarts_it() {
    let mut sim = Sim::new(&[]);
    let drop = mb("U.vmwarevm");
    sim.create(&drop, vm(1));
    // Written to at 0.5 s and 0.9 s: each write restarts the wait.
    for at in [500, 900] {
        sim.advance(Duration::from_millis(at) - sim.at());
        sim.fs.insert(drop.clone(), vm(at));
        sim.event(EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any)), &[&drop.join("VM.vmdk")]);
    }
    sim.advance(Duration::from_secs(10));
    assert_eq!(sim.started_at(&base(&drop)), [Duration::from_millis(900) + SETTLE]);
}

/// Issue 10.6: moved in and out with pauses shorter than the settle period, the bundle is
/// made a base only once it has stayed in for the settle period.
#[test]
fn a_bundle_moved_in_and_out_waits_the_settle_period_after_its_last_arrival() {
    let mut sim = Sim::new(&[]);
    let drop = mb("Hop.vmwarevm");
    for (stay, away) in [(900, 100), (800, 200), (900, 100), (700, 300), (100, 900)] {
        sim.move_in(&drop, vm(8));
        sim.advance(Duration::from_millis(stay));
        assert!(sim.started.is_empty(), "made a base {} ms after it arrived", stay);
        sim.move_out(&drop);
        sim.advance(Duration::from_millis(away));
    }
    sim.move_in(&drop, vm(8));
    let arrived = sim.at();
    sim.advance(Duration::from_secs(10));
    assert_eq!(sim.started_at(&base(&drop)), [arrived + SETTLE]);
}

#[test]
fn the_agents_own_reads_do_not_restart_the_wait() {
    let mut sim = Sim::new(&[]);
    let drop = mb("U.vmwarevm");
    sim.create(&drop, vm(1));
    for _ in 0..20 {
        sim.advance(Duration::from_millis(100));
        sim.event(EventKind::Access(AccessKind::Open(notify::event::AccessMode::Any)), &[&drop.join("VM.vmdk")]);
    }
    assert_eq!(sim.started_at(&base(&drop)), [SETTLE]);
}

#[test]
fn a_placeholder_never_makes_a_leaf_and_the_real_name_does_after_the_quiet_period() {
    let mut sim = Sim::new(&["B"]);
    sim.create(&nl("B", "untitled folder"), empty());
    sim.advance(Duration::from_secs(3601));
    assert!(sim.started.is_empty());
    assert_eq!(sim.core.next_wake(), Some(sim.start + RESCAN * 13), "it waits for no timer but the rescan");
    sim.rename(&nl("B", "untitled folder"), &nl("B", "Web Server"));
    let renamed = sim.at();
    sim.advance(Duration::from_secs(10));
    assert_eq!(sim.started_at(&leaf(&nl("B", "Web Server"))), [renamed + QUIET]);
    assert_eq!(sim.started.len(), 1);
}

#[test]
fn a_request_renamed_twice_quickly_gives_one_leaf_under_the_final_name() {
    let mut sim = Sim::new(&["B"]);
    sim.create(&nl("B", "untitled folder"), empty());
    sim.advance(Duration::from_millis(150));
    sim.rename(&nl("B", "untitled folder"), &nl("B", "Firs"));
    sim.advance(Duration::from_millis(150));
    sim.rename(&nl("B", "Firs"), &nl("B", "First Try"));
    let last = sim.at();
    sim.advance(Duration::from_secs(10));
    assert_eq!(sim.jobs(), [&leaf(&nl("B", "First Try"))]);
    assert_eq!(sim.started_at(&leaf(&nl("B", "First Try"))), [last + QUIET]);
}

/// The window: a rename that comes before the leaf is published gives one leaf, under the new
/// name (New Leaf finds its request folder gone before the publish and answers Busy).
#[test]
fn a_request_renamed_before_its_leaf_is_published_gives_one_leaf_under_the_new_name() {
    let mut sim = Sim::new(&["B"]);
    let (web, server) = (nl("B", "Web"), nl("B", "Web Server"));
    sim.create(&web, empty());
    sim.advance(QUIET);
    assert_eq!(sim.running, [leaf(&web)]);
    sim.rename(&web, &server);
    sim.advance(QUIET * 3);
    assert_eq!(sim.running, [leaf(&web)], "not while the leaf of the same base is being made");
    sim.finish(&leaf(&web), Err(Error::new(Kind::Busy, web.clone(), "was renamed while its leaf was being made")));
    sim.advance(QUIET);
    assert_eq!(sim.running, [leaf(&server)]);
    assert!(sim.cleared.contains(&web), "the old name's note (if any) goes");
    sim.made_leaf(&server);
    sim.advance(Duration::from_secs(3600));
    assert_eq!(sim.jobs(), [&leaf(&web), &leaf(&server)], "one leaf made: Web Server");
    assert!(sim.reports.is_empty());
}

/// After the publish the leaf has its name; a folder renamed in the moment between the publish
/// and the removal of the request folder is a request of its own.
#[test]
fn a_request_renamed_after_its_leaf_is_published_is_a_request_of_its_own() {
    let mut sim = Sim::new(&["B"]);
    let (web, server) = (nl("B", "Web"), nl("B", "Web Server"));
    sim.create(&web, empty());
    sim.advance(QUIET);
    sim.rename(&web, &server);
    sim.finish(&leaf(&web), done(None));
    sim.advance(Duration::from_secs(10));
    assert_eq!(sim.running, [leaf(&server)]);
}

#[test]
fn a_burst_of_sixty_requests_runs_each_once_four_at_a_time_and_one_per_base() {
    let mut sim = Sim::new(&["A", "B"]);
    let mut requests: Vec<PathBuf> = (0..50).map(|i| nl("A", &format!("a{i:02}"))).collect();
    requests.extend((0..10).map(|i| nl("B", &format!("b{i:02}"))));
    for r in &requests {
        sim.create(r, empty());
    }
    let mut finished = 0;
    sim.advance(QUIET);
    while let Some(job) = sim.running.first().cloned() {
        assert!(sim.running.len() <= crate::agent::jobs::PARALLEL);
        let bases: BTreeSet<_> = sim.running.iter().map(|j| j.item().unwrap().parent().unwrap()).collect();
        assert_eq!(bases.len(), sim.running.len(), "two jobs on one base: {:?}", sim.running);
        sim.advance(Duration::from_millis(10));
        sim.made_leaf(job.item().unwrap());
        finished += 1;
        sim.advance(QUIET);
    }
    assert_eq!(finished, 60);
    let mut made: Vec<PathBuf> = sim.jobs().iter().filter_map(|j| j.item().map(Path::to_path_buf)).collect();
    made.sort();
    requests.sort();
    assert_eq!(made, requests, "none missed, none twice");
}

#[test]
fn a_file_in_a_bases_folder_is_ignored() {
    let mut sim = Sim::new(&["B"]);
    sim.create(&nl("B", "notes.txt"), Look::fake(false, &[], false));
    sim.advance(Duration::from_secs(3600));
    assert!(sim.started.is_empty());
    assert!(sim.reports.is_empty());
}

/// Issues 10.10 and 12.6: a folder of files (no VM) dropped into a base's folder in New Leaf
/// waits like a Make Base drop, is refused with a note, and never becomes a leaf (nor does its
/// retry timer make one).
#[test]
fn a_request_folder_holding_files_is_refused_with_a_note_and_never_made() {
    let mut sim = Sim::new(&["B"]);
    let drop = nl("B", "Ubuntu.vmwarevm");
    sim.create(&drop, Look::fake(true, &[("VM.vmdk", 8), ("notes.txt", 3)], false));
    sim.advance(SETTLE - Duration::from_millis(1));
    assert!(sim.reports.is_empty(), "a folder with files waits the settle period");
    sim.advance(Duration::from_millis(1));
    assert_eq!(sim.reports.len(), 1);
    let r = &sim.reports[0];
    assert_eq!((r.item.as_path(), r.what.as_str(), r.first), (drop.as_path(), "make a leaf of base \"B\" from", true));
    assert!(r.error.message.contains("holds files"), "{}", r.error.message);
    assert!(r.error.fix.as_deref().unwrap().contains("Make Base"));
    sim.advance(Duration::from_secs(86400));
    assert!(sim.started.is_empty(), "never a leaf, whatever the timer");
    assert_eq!(sim.reports.len(), 1);
    // Emptied by its owner, it is a request like any other.
    sim.fs.insert(drop.clone(), empty());
    sim.event(EventKind::Remove(RemoveKind::File), &[&drop.join("VM.vmdk")]);
    sim.advance(SETTLE);
    assert_eq!(sim.running, [leaf(&drop)]);
}

/// Issue 12.6: a bundle dropped into New Leaf itself is told, beside it, where things go;
/// nothing is done inside it.
#[test]
fn anything_in_new_leaf_that_is_no_bases_folder_gets_a_note_beside_it() {
    let mut sim = Sim::new(&["B"]);
    let drop = Path::new("/l/New Leaf/Ubuntu.vmwarevm").to_path_buf();
    let scans = sim.scans;
    sim.create(&drop, vm(8));
    assert_eq!(sim.scans, scans + 1, "the bases are read again before it is taken for misplaced");
    sim.event(EventKind::Create(CreateKind::File), &[&drop.join("VM.vmdk")]);
    assert_eq!(sim.scans, scans + 1, "once");
    sim.advance(SETTLE);
    assert_eq!(sim.reports.len(), 1);
    let r = &sim.reports[0];
    assert_eq!((r.item.as_path(), r.what.as_str()), (drop.as_path(), "use"));
    assert!(r.error.message.contains("one folder per base"), "{}", r.error.message);
    sim.advance(Duration::from_secs(86400));
    assert!(sim.started.is_empty());
    // A base made meanwhile by `leafd make-base`: its folder is a base's, not misplaced.
    sim.bases.push("Fresh".into());
    sim.create(Path::new("/l/New Leaf/Fresh"), empty());
    sim.create(&nl("Fresh", "Web"), empty());
    sim.advance(SETTLE);
    assert_eq!(sim.reports.len(), 1);
    assert_eq!(sim.running, [leaf(&nl("Fresh", "Web"))]);
}

#[test]
fn a_name_that_is_not_utf8_gets_a_note_under_a_lossy_name() {
    let mut sim = Sim::new(&["B"]);
    let odd = Path::new("/l/Make Base").join(std::ffi::OsStr::from_bytes(b"Caf\xe9.vmwarevm"));
    sim.create(&odd, vm(8));
    sim.advance(SETTLE);
    assert_eq!(sim.reports.len(), 1);
    assert!(sim.reports[0].error.message.contains("not valid text (UTF-8)"));
    assert!(sim.started.is_empty());
    // Its note, named lossily, is not taken for the note of an item that is gone...
    let note = note_path(&odd);
    assert_eq!(note.file_name().unwrap().to_str(), Some("Caf\u{fffd}.vmwarevm - leafd error.txt"));
    sim.fs.insert(note.clone(), Look::fake(false, &[], false));
    sim.feed(Input::Missed);
    assert!(!sim.cleared.iter().any(|c| note_path(c) == note));
    // ...until the item goes.
    sim.fs.remove(&odd);
    sim.feed(Input::Missed);
    assert!(sim.cleared.iter().any(|c| note_path(c) == note));
}

#[test]
fn the_scan_removes_the_notes_of_items_that_are_gone() {
    let mut sim = Sim::starting(&["B"], Timing::new(SETTLE, QUIET));
    let file = || Look::fake(false, &[], false);
    sim.fs.insert(mb("Old VM.vmwarevm - leafd error.txt"), file());
    sim.fs.insert(nl("B", "untitled folder"), empty());
    sim.fs.insert(nl("B", "untitled folder - leafd error.txt"), file());
    sim.finish(&Job::Recover, done(None));
    assert_eq!(sim.cleared, [mb("Old VM.vmwarevm")]);
}

/// Issue 17: a refusal whose cause lies elsewhere (a leaf of that name exists) is tried again
/// by the timer, and said once; a failure that is not a refusal waits for a change.
#[test]
fn a_refusal_is_retried_by_the_timer_and_said_once() {
    let retry = Duration::from_secs(1);
    let mut sim = Sim::with(&["B"], Timing { retry, ..Timing::new(SETTLE, QUIET) });
    let web = nl("B", "Web");
    sim.create(&web, empty());
    sim.advance(QUIET);
    sim.finish(&leaf(&web), refused(&web, "Web.vmwarevm: a VM with this name already exists"));
    sim.advance(retry);
    sim.finish(&leaf(&web), refused(&web, "Web.vmwarevm: a VM with this name already exists"));
    assert_eq!(sim.reports.iter().map(|r| r.first).collect::<Vec<_>>(), [true, false]);
    sim.advance(retry * 2);
    sim.made_leaf(&web);
    assert_eq!(sim.started_at(&leaf(&web)), [QUIET, QUIET + retry, QUIET + retry * 3]);
    assert_eq!(sim.cleared.last(), Some(&web), "its note goes");

    let disk = mb("Full.vmwarevm");
    sim.create(&disk, vm(8));
    sim.advance(SETTLE);
    sim.finish(&base(&disk), Err(Error::new(Kind::Io, disk.clone(), "no space left")));
    sim.advance(Duration::from_secs(86400));
    assert_eq!(sim.started_at(&base(&disk)).len(), 1, "no timer for a full disk");
    sim.event(EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)), &[&disk]);
    sim.fs.insert(disk.clone(), vm(9));
    sim.advance(SETTLE);
    assert_eq!(sim.started_at(&base(&disk)).len(), 2, "tried again once it changed");
}

#[test]
fn an_item_changed_while_its_job_runs_is_looked_at_again_afterwards() {
    let mut sim = Sim::new(&["B"]);
    let web = nl("B", "Web");
    sim.create(&web, empty());
    sim.advance(QUIET);
    // New Leaf left the folder in place: files were copied into it meanwhile.
    sim.fs.insert(web.clone(), Look::fake(true, &[("VM.vmdk", 8)], false));
    sim.event(EventKind::Create(CreateKind::File), &[&web.join("VM.vmdk")]);
    sim.finish(&leaf(&web), done(None));
    sim.advance(SETTLE);
    assert_eq!(sim.reports.len(), 1, "the files are told about");
    assert_eq!(sim.started.len(), 1, "and no second leaf");
}

#[test]
fn a_new_base_retries_the_leaves_that_failed_for_want_of_it() {
    let mut sim = Sim::new(&["B"]);
    let web = nl("B", "Web");
    sim.create(&web, empty());
    sim.advance(QUIET);
    sim.finish(&leaf(&web), Err(Error::new(Kind::Format, web.clone(), "no base \"B\"")));
    sim.advance(Duration::from_secs(3600));
    sim.create(&mb("B.vmwarevm"), vm(8));
    sim.advance(SETTLE);
    sim.move_out(&mb("B.vmwarevm"));
    sim.finish(&base(&mb("B.vmwarevm")), done(Some("B")));
    sim.advance(QUIET);
    assert_eq!(sim.running, [leaf(&web)]);
}

#[test]
fn a_drop_folder_deleted_is_made_and_watched_again() {
    let mut sim = Sim::new(&[]);
    // Deleted, and (as inotify may) a new folder with the old inode: still watched again.
    sim.folders[0] = None;
    sim.event(EventKind::Remove(RemoveKind::Folder), &[Path::new("/l/Make Base")]);
    assert_eq!(sim.watched_again, [PathBuf::from("/l/Make Base")]);
    sim.event(EventKind::Remove(RemoveKind::Folder), &[Path::new("/l/Make Base")]);
    assert_eq!(sim.watched_again.len(), 2, "the same inode again");
    // Events lost while it was unwatched: the scan after the new watch finds the drop.
    sim.fs.insert(mb("Again.vmwarevm"), vm(8));
    sim.folders[0] = None;
    sim.wake();
    sim.advance(SETTLE);
    assert_eq!(sim.running, [base(&mb("Again.vmwarevm"))]);
}

#[test]
fn lost_events_make_a_rescan() {
    let mut sim = Sim::new(&[]);
    let scans = sim.scans;
    sim.feed(Input::Missed);
    sim.feed(Input::Event(Event::new(EventKind::Other).set_flag(Flag::Rescan)));
    assert_eq!(sim.scans, scans + 2);
}

/// Issue 13: the periodic recovery is a job like the others, so events are handled meanwhile;
/// a scan follows it.
#[test]
fn the_periodic_recovery_runs_as_a_job_and_blocks_nothing() {
    let mut sim = Sim::new(&["B"]);
    sim.quick_recovery = false;
    sim.advance(RESCAN);
    assert_eq!(sim.running, [Job::Recover]);
    sim.create(&nl("B", "Web"), empty());
    sim.advance(QUIET);
    assert_eq!(sim.running, [Job::Recover, leaf(&nl("B", "Web"))], "a leaf while it recovers");
    sim.advance(RESCAN);
    assert_eq!(sim.running.iter().filter(|j| **j == Job::Recover).count(), 1, "one recovery at a time");
    let scans = sim.scans;
    sim.finish(&Job::Recover, done(None));
    assert_eq!(sim.scans, scans + 1);
}

#[test]
fn stopping_drops_waiting_jobs_and_waits_for_running_ones_until_the_deadline() {
    let mut sim = Sim::new(&["B"]);
    for name in ["a", "b"] {
        sim.create(&nl("B", name), empty());
    }
    sim.advance(QUIET);
    assert_eq!(sim.running, [leaf(&nl("B", "a"))], "b waits for a, on the same base");
    sim.feed(Input::Stop);
    assert!(sim.exit.is_none(), "a is still running");
    sim.create(&mb("U.vmwarevm"), vm(8));
    sim.advance(SETTLE);
    sim.finish(&leaf(&nl("B", "a")), refused(&nl("B", "a"), "taken"));
    assert_eq!(sim.reports.len(), 1, "its result is still told");
    assert!(sim.exit.is_some(), "then it stops at once");
    assert_eq!(sim.jobs(), [&leaf(&nl("B", "a"))], "b never started, nor did U");

    let mut sim = Sim::new(&["B"]);
    sim.create(&nl("B", "a"), empty());
    sim.advance(QUIET);
    let asked = sim.now;
    sim.feed(Input::Stop);
    sim.advance(Duration::from_secs(60));
    let (by, _) = sim.exit.expect("never waits past the deadline");
    assert_eq!(by, asked + SHUTDOWN_WAIT);

    let mut sim = Sim::new(&[]);
    sim.feed(Input::Stop);
    assert!(sim.exit.is_some(), "nothing running: at once");
}

/// The watcher watches a new folder only once it has passed on its creation: a request made in
/// a new base's folder at once comes without an event, and the scan a moment later finds it.
#[test]
fn a_request_made_in_a_new_bases_folder_before_it_is_watched_is_found() {
    let mut sim = Sim::new(&[]);
    let drop = mb("B.vmwarevm");
    sim.create(&drop, vm(8));
    sim.advance(SETTLE);
    sim.move_out(&drop);
    sim.bases.push("B".into());
    sim.finish(&base(&drop), done(Some("B")));
    sim.fs.insert(nl("B", "Web"), empty());
    sim.advance(WATCH_GAP + QUIET);
    assert_eq!(sim.running, [leaf(&nl("B", "Web"))]);
}

/// A drop that changed while its job ran and failed was perhaps refused for what it was: it is
/// tried again as it is now, and not left waiting for a change that has already come.
#[test]
fn an_item_that_changed_while_its_job_failed_is_tried_again() {
    let mut sim = Sim::new(&[]);
    let drop = mb("Paused.vmwarevm");
    sim.create(&drop, vm(4));
    sim.advance(SETTLE);
    // The copy resumes meanwhile; the job fails on the half copy.
    sim.fs.insert(drop.clone(), vm(8));
    sim.finish(&base(&drop), refused(&drop, "disk scsi0:0 is missing"));
    assert_eq!(sim.reports.len(), 1);
    sim.advance(SETTLE);
    assert_eq!(sim.started_at(&base(&drop)), [SETTLE, SETTLE * 2]);
}

/// Issue 16: a VM (a folder holding one .vmx) dropped into a base's folder in New Leaf waits
/// like a Make Base drop and is adopted as a leaf of that base; moved in, it was no copy; copied
/// in (its folder made there), the job knows, and says so. Two .vmx are no VM.
#[test]
fn a_vm_dropped_into_a_base_folder_is_adopted_and_a_copy_is_known() {
    let mut sim = Sim::new(&["B"]);
    let moved = nl("B", "Web.vmwarevm");
    sim.move_in(&moved, vm(8));
    sim.advance(SETTLE - Duration::from_millis(1));
    assert!(sim.running.is_empty(), "a VM waits the settle period");
    sim.advance(Duration::from_millis(1));
    let adopt = |item: &Path, copied: bool| Job::Item {
        item: item.to_path_buf(),
        request: Request::Adopt { base: "B".into(), copied },
    };
    assert_eq!(sim.running, [adopt(&moved, false)]);
    // Failed, the item is told it could not be adopted; jobs on one base run one at a time.
    sim.finish(&adopt(&moved, false), refused(&moved, "the VM is running"));
    let r = sim.reports.last().unwrap();
    assert_eq!((r.item.as_path(), r.what.as_str()), (moved.as_path(), "make a leaf of base \"B\" of the VM"));
    let copied = nl("B", "Copy.vmwarevm");
    sim.create(&copied, Look::fake(true, &[], false));
    // Its files' events may come before the watch of the new folder, so none are seen here:
    // the folder's own creation tells a copy from a move.
    sim.fs.insert(copied.clone(), vm(8));
    sim.advance(SETTLE + SETTLE);
    assert_eq!(sim.running, [adopt(&copied, true)]);
    sim.finish(&adopt(&copied, true), done(None));
    let two = nl("B", "Two.vmwarevm");
    sim.move_in(&two, Look::fake(true, &[("A.vmx", 1), ("B.vmx", 1)], false));
    sim.advance(SETTLE + SETTLE);
    assert!(sim.running.is_empty(), "two .vmx are no VM");
    let r = sim.reports.last().unwrap();
    assert!(r.item == two && r.error.message.contains("holds files but no VM"), "{r:?}");
}
