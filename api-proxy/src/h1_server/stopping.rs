//! How a worker's connections are told to finish, and shed when there are too many.

use super::*;

/// Tells a worker's connections to finish: idle ones close, busy ones close after the answer
/// they are writing. Also closes single connections that wait on their caller, oldest first,
/// when the worker has more than it may keep ([`Stopping::shed_oldest`]).
#[derive(Default)]
pub struct Stopping {
    flag: Cell<bool>,
    /// The connections' tasks, each registered once (not once per idle wait).
    waiting: RefCell<slab::Slab<Entry>>,
    /// Counts the starts of waits for a request, so the oldest wait is the smallest number.
    waits: Cell<u64>,
    shed_pending: Cell<usize>,
}

/// A connection known to [`Stopping`].
pub(super) struct Entry {
    waker: Waker,
    /// When (in [`Stopping::waits`]' order) it began waiting for its caller's next request;
    /// `BUSY` while it serves one.
    since: u64,
    /// Told to close.
    shed: bool,
}

/// [`Entry::since`] of a connection serving a request (never shed for being idle).
pub(super) const BUSY: u64 = u64::MAX;

impl Stopping {
    pub fn stop(&self) {
        self.flag.set(true);
        // Woken outside the borrow: a woken task may run code that registers.
        let waiting: Vec<Waker> = self.waiting.borrow().iter().map(|(_, e)| e.waker.clone()).collect();
        waiting.into_iter().for_each(Waker::wake);
    }

    pub fn is_stopping(&self) -> bool {
        self.flag.get()
    }

    /// Closes up to `n` of the connections that have waited longest for their callers (idle
    /// kept-alive ones, or ones whose head or held body is arriving slowly: what a slowloris
    /// holds), oldest first. Connections serving a request are never chosen. How many it chose.
    /// (One scan chooses the whole batch, so shedding costs a scan per batch, not per
    /// connection.)
    pub fn shed_oldest(&self, n: usize) -> usize {
        let wakers: Vec<Waker> = {
            let mut waiting = self.waiting.borrow_mut();
            let mut oldest: Vec<(u64, usize)> =
                waiting.iter().filter(|(_, e)| e.since != BUSY && !e.shed).map(|(key, e)| (e.since, key)).collect();
            if oldest.len() > n {
                oldest.select_nth_unstable(n);
                oldest.truncate(n);
            }
            oldest
                .into_iter()
                .map(|(_, key)| {
                    let e = &mut waiting[key];
                    e.shed = true;
                    e.waker.clone()
                })
                .collect()
        };
        let chosen = wakers.len();
        self.shed_pending.set(self.shed_pending.get() + chosen);
        wakers.into_iter().for_each(Waker::wake);
        chosen
    }

    /// Connections chosen by [`Stopping::shed_oldest`] that have not closed yet.
    pub fn shed_pending(&self) -> usize {
        self.shed_pending.get()
    }

    /// Completes once [`Stopping::stop`] has been called. (Only ever awaited on the worker's
    /// thread, which also calls `stop`: no stop can slip in between check and wait.)
    pub(super) async fn stopped(self: &Rc<Self>) {
        // hyper's connections are never shed: hyper keeps its own head timeout, and an HTTP/2
        // connection carries many calls.
        let mut watch = Watch { stopping: self.clone(), key: None, sheddable: false };
        std::future::poll_fn(|cx| if watch.stopped(cx.waker()) { Poll::Ready(()) } else { Poll::Pending }).await
    }
}

/// A connection's place among the tasks [`Stopping::stop`] wakes; it leaves with the connection.
pub(super) struct Watch {
    stopping: Rc<Stopping>,
    key: Option<usize>,
    /// Whether [`Stopping::shed_oldest`] may choose this connection.
    sheddable: bool,
}

impl Watch {
    pub(super) fn new(stopping: Rc<Stopping>) -> Self {
        Self { stopping, key: None, sheddable: true }
    }

    /// Whether the worker is stopping (or this connection was shed); if not, `waker`'s task is
    /// woken when it does (registered once; replaced only if the connection's task changes).
    pub(super) fn stopped(&mut self, waker: &Waker) -> bool {
        if self.stopping.is_stopping() {
            return true;
        }
        let mut waiting = self.stopping.waiting.borrow_mut();
        match self.key {
            Some(k) if waiting[k].shed => return true,
            Some(k) if waiting[k].waker.will_wake(waker) => {}
            Some(k) => waiting[k].waker = waker.clone(),
            None => {
                let since = if self.sheddable { self.stopping.next_wait() } else { BUSY };
                self.key = Some(waiting.insert(Entry { waker: waker.clone(), since, shed: false }));
            }
        }
        false
    }

    /// Whether this connection was told to close.
    pub(super) fn shed(&self) -> bool {
        self.key.is_some_and(|k| self.stopping.waiting.borrow()[k].shed)
    }

    /// Notes that the connection begins waiting for its caller's next request (`true`) or
    /// serves one (`false`).
    pub(super) fn waiting(&self, waiting: bool) {
        if let Some(k) = self.key {
            let since = if waiting { self.stopping.next_wait() } else { BUSY };
            self.stopping.waiting.borrow_mut()[k].since = since;
        }
    }
}

impl Stopping {
    pub(super) fn next_wait(&self) -> u64 {
        let n = self.waits.get();
        self.waits.set(n + 1);
        n
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            if self.stopping.waiting.borrow_mut().remove(k).shed {
                self.stopping.shed_pending.set(self.stopping.shed_pending.get().saturating_sub(1));
            }
        }
    }
}
