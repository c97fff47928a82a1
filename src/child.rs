//! Running other programs (`vmrun`, `launchctl`, `systemctl`, `osascript`, QEMU, the demo's
//! agent): the one way leafd does it.
//!
//! [`run`] gives a program a time limit and starts it in a process group of its own, so that a
//! timeout or a shutdown kills whatever it started too. Both of its pipes are read while it runs
//! (a program that prints more than a pipe holds never blocks on it) and kept apart, each up to
//! [`CAP`] bytes. Every child is reaped, also those nobody waits for ([`run_detached`]), so an
//! agent that runs for weeks collects no zombies.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, Signal, kill_process, kill_process_group};

use crate::error::Kind;
use crate::fsutil::Cancel;

/// Bytes of each stream kept in memory; the rest is counted.
pub(crate) const CAP: usize = 64 << 10;
/// How much of each stream an error message quotes.
const EXCERPT: usize = 500;
/// How often a running child's cancel flag is looked at.
const TICK: Duration = Duration::from_millis(50);
/// How long output is still read after the program exited: something it left running may hold
/// its pipes open, and must not hold us.
const LINGER: Duration = Duration::from_secs(1);
/// The time limit of [`run_detached`] (notifications).
pub(crate) const DETACHED_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a [`Running`] program has to stop after SIGTERM (launchd's default exit timeout).
const STOP_GRACE: Duration = Duration::from_secs(20);

/// What a program printed on one stream: the first [`CAP`] bytes, and how many more there were.
#[derive(Debug, Default, Clone)]
pub(crate) struct Captured {
    pub(crate) bytes: Vec<u8>,
    pub(crate) dropped: u64,
}

impl Captured {
    fn push(&mut self, data: &[u8]) {
        let keep = data.len().min(CAP - self.bytes.len());
        self.bytes.extend_from_slice(&data[..keep]);
        self.dropped += (data.len() - keep) as u64;
    }

    /// The kept bytes as text, without surrounding white space.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).trim().to_string()
    }

    /// The start of the text, quoted on one line, for a message; `None` when nothing was printed.
    fn excerpt(&self) -> Option<String> {
        let text = self.text();
        if text.is_empty() {
            return None;
        }
        let mut end = text.len().min(EXCERPT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let total = self.bytes.len() as u64 + self.dropped;
        Some(if end < text.len() || self.dropped > 0 {
            format!("{:?}… ({total} bytes in all)", text[..end].trim_end())
        } else {
            format!("{text:?}")
        })
    }
}

/// What a program that succeeded printed on stdout (its stderr is read, and dropped: only a
/// failure's is shown).
#[derive(Debug, Default)]
pub(crate) struct Output {
    pub(crate) stdout: Captured,
}

/// Why a program did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// It could not be started (or waited for).
    Io(io::Error),
    /// It ran past its time limit and was killed, with its process group.
    TimedOut(Duration),
    /// leafd is stopping: it was killed, with its process group.
    Cancelled,
    /// It ended unsuccessfully by itself (or by someone else's signal).
    Exited(ExitStatus),
}

/// A program that did not succeed, with what it printed.
#[derive(Debug)]
pub(crate) struct Error {
    pub(crate) program: PathBuf,
    pub(crate) failure: Failure,
    pub(crate) stdout: Captured,
    pub(crate) stderr: Captured,
}

impl Error {
    /// The exit code, when the program ended by itself with one.
    pub(crate) fn exit_code(&self) -> Option<i32> {
        match self.failure {
            Failure::Exited(s) => s.code(),
            _ => None,
        }
    }

    /// True when the program was not found (not installed, not on the PATH).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(&self.failure, Failure::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }

    /// The kind of leafd error this is: a shutdown is `Cancelled` (undone, not reported).
    pub(crate) fn kind(&self) -> Kind {
        match self.failure {
            Failure::Cancelled => Kind::Cancelled,
            _ => Kind::Io,
        }
    }
}

/// `vmrun exited with status 255; stderr: "…"; stdout: "…"`.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.program.file_name().unwrap_or(self.program.as_os_str()).to_string_lossy();
        match &self.failure {
            Failure::Io(e) => write!(f, "cannot run {name}: {e}")?,
            Failure::TimedOut(t) => write!(f, "{name} did not finish within {} s and was killed", t.as_secs_f64())?,
            Failure::Cancelled => write!(f, "{name} was stopped: leafd is shutting down")?,
            Failure::Exited(s) => match (s.code(), s.signal()) {
                (Some(code), _) => write!(f, "{name} exited with status {code}")?,
                (None, Some(signal)) => write!(f, "{name} was killed by signal {signal}")?,
                _ => write!(f, "{name} failed ({s})")?,
            },
        }
        for (stream, captured) in [("stderr", &self.stderr), ("stdout", &self.stdout)] {
            if let Some(text) = captured.excerpt() {
                write!(f, "; {stream}: {text}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// Kills `child`'s whole process group, then reaps the child. The group is killed while the
/// child is not yet reaped, so its id cannot have been reused by another group.
fn kill_and_reap(child: Child) {
    let _ = kill_process_group(Pid::from_child(&child), Signal::KILL);
    reap(child, Duration::from_secs(1));
}

/// Waits up to `within` for `child` to end; then leaves a thread waiting for it, so a child stuck
/// in the kernel (a hung network volume) is still reaped without holding us.
fn reap(mut child: Child, within: Duration) {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::thread::Builder::new().name("leafd-reaper".into()).spawn(move || child.wait());
}

/// One of the child's pipes while it is open, and what came out of it.
#[derive(Default)]
struct Stream {
    pipe: Option<File>,
    got: Captured,
}

impl Stream {
    fn new(fd: Option<impl Into<OwnedFd>>) -> Stream {
        Stream { pipe: fd.map(|fd| File::from(fd.into())), got: Captured::default() }
    }
}

/// Waits up to `wait` for output on the open pipes and reads what is there (through `buf`); a
/// pipe at its end is closed.
fn read_ready(streams: &mut [Stream; 2], buf: &mut [u8], wait: Duration) {
    let open: Vec<usize> = (0..2).filter(|&i| streams[i].pipe.is_some()).collect();
    if open.is_empty() {
        std::thread::sleep(wait);
        return;
    }
    let ready: Vec<usize> = {
        let mut fds: Vec<PollFd<'_>> =
            open.iter().filter_map(|&i| streams[i].pipe.as_ref()).map(|p| PollFd::new(p, PollFlags::IN)).collect();
        let timeout = Timespec::try_from(wait).unwrap_or(Timespec { tv_sec: 0, tv_nsec: 0 });
        if poll(&mut fds, Some(&timeout)).is_err() {
            return; // interrupted: the caller loops
        }
        open.iter().zip(&fds).filter(|(_, fd)| !fd.revents().is_empty()).map(|(&i, _)| i).collect()
    };
    for i in ready {
        let s = &mut streams[i];
        match s.pipe.as_mut().map(|p| p.read(buf)) {
            Some(Ok(n)) if n > 0 => s.got.push(&buf[..n]),
            Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => s.pipe = None,
        }
    }
}

/// Runs `cmd` to its end, within `timeout`, stopping it when `cancel` is set. Its stdin is
/// empty; its stdout and stderr are captured. Success is an exit status of 0.
pub(crate) fn run(cmd: &mut Command, timeout: Duration, cancel: Option<&Cancel>) -> Result<Output, Error> {
    let program = PathBuf::from(cmd.get_program());
    let failed = |failure, streams: [Stream; 2]| {
        let [stdout, stderr] = streams;
        Err(Error { program: program.clone(), failure, stdout: stdout.got, stderr: stderr.got })
    };
    // A process group of its own (its pid is the group's id), to be killed as a whole.
    let spawned = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return failed(Failure::Io(e), Default::default()),
    };
    let mut streams = [Stream::new(child.stdout.take()), Stream::new(child.stderr.take())];
    let mut buf = vec![0u8; 16 << 10];
    let deadline = Instant::now() + timeout;
    loop {
        let status = match child.try_wait() {
            Ok(s) => s,
            Err(e) => {
                kill_and_reap(child);
                return failed(Failure::Io(e), streams);
            }
        };
        if let Some(status) = status {
            let until = Instant::now() + LINGER;
            while streams.iter().any(|s| s.pipe.is_some()) && Instant::now() < until {
                read_ready(&mut streams, &mut buf, until.saturating_duration_since(Instant::now()));
            }
            if status.success() {
                let [stdout, _] = streams;
                return Ok(Output { stdout: stdout.got });
            }
            return failed(Failure::Exited(status), streams);
        }
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            kill_and_reap(child);
            return failed(Failure::Cancelled, streams);
        }
        let now = Instant::now();
        if now >= deadline {
            kill_and_reap(child);
            return failed(Failure::TimedOut(timeout), streams);
        }
        read_ready(&mut streams, &mut buf, TICK.min(deadline - now));
    }
}

/// Runs `cmd` on a thread of its own, as [`run`] with [`DETACHED_TIMEOUT`], for a program whose
/// outcome nobody waits for (a notification): it is still reaped, or killed and reaped. A
/// failure is only a debug line in the log.
pub(crate) fn run_detached(mut cmd: Command) {
    let started = std::thread::Builder::new().name("leafd-detached".into()).spawn(move || {
        if let Err(e) = run(&mut cmd, DETACHED_TIMEOUT, None) {
            tracing::debug!("{e}");
        }
    });
    if let Err(e) = started {
        tracing::debug!("cannot start a thread to run a program: {e}");
    }
}

/// A program that runs in the background until it is dropped: then it gets SIGTERM and, if it
/// has not stopped within 20 s, SIGKILL; either way it is reaped. Unlike [`run`], it stays in
/// leafd's own process group, so a Ctrl-C in the terminal stops it too (it is the demo's agent,
/// which stops what it started itself).
pub(crate) struct Running(Option<Child>);

/// Starts `cmd` in the background, its stdin, stdout and stderr on `/dev/null`.
pub(crate) fn start(cmd: &mut Command) -> io::Result<Running> {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    Ok(Running(Some(child)))
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            let pid = Pid::from_child(&child);
            let _ = kill_process(pid, Signal::TERM);
            let until = Instant::now() + STOP_GRACE;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Not reaped yet when still running, so the pid is still this child's.
            if matches!(child.try_wait(), Ok(None)) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
        reap(child, Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", script]);
        c
    }

    /// True while `pid` is a live process (a zombie has ended: it is only waiting to be reaped).
    #[cfg(target_os = "linux")] // reads /proc, as the tests that use it
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|rest| !rest.starts_with('Z')))
    }

    #[test]
    fn both_pipes_are_drained_and_capped() {
        let start = Instant::now();
        let out = run(
            &mut sh("head -c 1048576 /dev/zero | tr '\\0' o; head -c 1048576 /dev/zero | tr '\\0' e >&2; exit 1"),
            Duration::from_secs(20),
            None,
        )
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
        for (c, byte) in [(&out.stdout, b'o'), (&out.stderr, b'e')] {
            assert_eq!(c.bytes.len(), CAP);
            assert!(c.bytes.iter().all(|&b| b == byte));
            assert_eq!(c.dropped, (1 << 20) - CAP as u64);
        }
    }

    #[test]
    fn exit_status_and_both_streams_are_reported_apart() {
        let e = run(&mut sh("echo 'to stdout'; echo '  it broke  ' >&2; exit 3"), Duration::from_secs(20), None)
            .unwrap_err();
        assert_eq!(e.exit_code(), Some(3));
        assert_eq!(e.kind(), Kind::Io);
        assert_eq!(e.stderr.text(), "it broke");
        assert_eq!(e.to_string(), "sh exited with status 3; stderr: \"it broke\"; stdout: \"to stdout\"");
        let e = run(&mut Command::new("/nonexistent/leafd-test"), Duration::from_secs(1), None).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(e.to_string().starts_with("cannot run leafd-test: "), "{e}");
        let e = run(&mut sh("kill -TERM $$"), Duration::from_secs(20), None).unwrap_err();
        assert_eq!(e.to_string(), "sh was killed by signal 15");
    }

    #[test]
    fn a_long_message_is_quoted_in_part() {
        let e =
            run(&mut sh("yes 'said: \"x\"' | head -c 200000 >&2; exit 1"), Duration::from_secs(20), None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("sh exited with status 1; stderr: \"said: \\\"x\\\"\\nsaid:"), "{msg}");
        assert!(msg.ends_with("… (200000 bytes in all)") && msg.len() < 2 * EXCERPT, "{msg}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_timeout_kills_the_whole_process_group() {
        let start = Instant::now();
        let e = run(&mut sh("sleep 300 & echo $!; sleep 300"), Duration::from_millis(500), None).unwrap_err();
        assert!(matches!(e.failure, Failure::TimedOut(_)), "{e}");
        assert_eq!(e.to_string().split(';').next().unwrap(), "sh did not finish within 0.5 s and was killed");
        assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
        let grandchild: u32 = e.stdout.text().parse().unwrap();
        let until = Instant::now() + Duration::from_secs(2);
        while alive(grandchild) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(grandchild), "the grandchild {grandchild} outlived the timeout");
    }

    #[test]
    fn cancel_stops_it() {
        let cancel = std::sync::Arc::new(Cancel::new(false));
        let setter = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            setter.store(true, Ordering::Relaxed);
        });
        let start = Instant::now();
        let e = run(&mut sh("sleep 300"), Duration::from_secs(10), Some(&cancel)).unwrap_err();
        assert!(matches!(e.failure, Failure::Cancelled), "{e}");
        assert_eq!(e.kind(), Kind::Cancelled);
        assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    }

    #[test]
    fn output_left_open_by_a_background_process_does_not_hold_us() {
        let start = Instant::now();
        let out = run(&mut sh("echo done; sleep 5 &"), Duration::from_secs(60), None).unwrap();
        assert_eq!(out.stdout.text(), "done");
        assert!(start.elapsed() < LINGER + Duration::from_secs(2), "took {:?}", start.elapsed());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_running_program_is_stopped_when_dropped() {
        let running = start(&mut sh("trap 'exit 0' TERM; while :; do sleep 0.05; done")).unwrap();
        let pid = running.0.as_ref().unwrap().id();
        assert!(alive(pid));
        let start = Instant::now();
        drop(running);
        assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
        assert!(std::fs::metadata(format!("/proc/{pid}")).is_err(), "{pid} was not reaped");
    }
}
