//! The meter long loops report to: `durable::copy_file`, `fsutil::same_content` and
//! `fsutil::fingerprint` call [`add`] for each chunk, and the formats crate through
//! `Env::progress`. It sits below everything that reads or writes, so those loops need no new
//! parameter: the bytes go to the [`super::Progress`] that the operation started on the same
//! thread (the innermost, when one runs inside another), and to nothing when none runs.
//!
//! A call costs a thread-local look-up and an addition; the progress it reaches decides, from the
//! clock, whether to show anything (at most four times a second). `LEAFD_FAULT=slow:<MiB/s>`
//! makes the loops wait here, as on a slow volume, for the tests.

use std::cell::RefCell;
use std::rc::Rc;

use crate::testing::fault;

/// What the bytes go to: a running [`super::Progress`].
pub(crate) trait Sink {
    /// `bytes` more of the work are done.
    fn add(&self, bytes: u64);
}

thread_local! {
    static CURRENT: RefCell<Vec<Rc<dyn Sink>>> = const { RefCell::new(Vec::new()) };
}

/// `bytes` more of the long operation running on this thread are done.
pub(crate) fn add(bytes: u64) {
    if let Some(delay) = fault::slowed(bytes) {
        std::thread::sleep(delay);
    }
    CURRENT.with(|current| {
        // A sink reporting meanwhile (it never calls back here) leaves the borrow taken: skip.
        if let Ok(sinks) = current.try_borrow()
            && let Some(sink) = sinks.last()
        {
            sink.add(bytes);
        }
    });
}

/// While this lives, [`add`] on this thread goes to its sink.
pub(crate) struct Installed {
    sink: Rc<dyn Sink>,
}

/// Makes `sink` the one [`add`] reports to on this thread, until the guard is dropped.
pub(crate) fn install(sink: Rc<dyn Sink>) -> Installed {
    CURRENT.with(|current| current.borrow_mut().push(sink.clone()));
    Installed { sink }
}

impl Drop for Installed {
    fn drop(&mut self) {
        CURRENT.with(|current| {
            let mut sinks = current.borrow_mut();
            if let Some(at) = sinks.iter().rposition(|s| Rc::ptr_eq(s, &self.sink)) {
                sinks.remove(at);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Count(Cell<u64>);

    impl Sink for Count {
        fn add(&self, bytes: u64) {
            self.0.set(self.0.get() + bytes);
        }
    }

    #[test]
    fn bytes_go_to_the_innermost_sink_of_this_thread_only() {
        add(1); // nothing runs: nothing happens
        let outer = Rc::new(Count(Cell::new(0)));
        let on = install(outer.clone());
        add(5);
        {
            let inner = Rc::new(Count(Cell::new(0)));
            let _in = install(inner.clone());
            add(7);
            std::thread::spawn(|| add(100)).join().unwrap();
            assert_eq!(inner.0.get(), 7);
        }
        add(3);
        drop(on);
        add(11);
        assert_eq!(outer.0.get(), 8);
    }
}
