//! The deadlines of a worker's proxied calls, kept by one timer per worker instead of one per
//! call.
//!
//! A call registers its deadline in the worker's table (no lock, no atomic: the worker's
//! connections all run on its thread) and removes it when it ends. A keeper task on the worker
//! wakes every `tick`, marks the calls whose deadline has passed and wakes them. A call so
//! sees its deadline at most one tick late, and no call registers a timer of its own: at tens
//! of thousands of calls a second, registering and cancelling a runtime timer per call was a
//! measurable part of the proxy's work.
//!
//! While no call is in flight the keeper stops ticking, after a few idle ticks; the next call
//! to start wakes it.

use slab::Slab;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Ticks with no call in flight before the keeper stops ticking.
const IDLE_TICKS: u32 = 20;

struct Slot {
    at: Instant,
    expired: bool,
    waker: Option<Waker>,
}

/// One worker's table of deadlines.
pub struct Deadlines {
    slots: RefCell<Slab<Slot>>,
    tick: Duration,
    /// The keeper's waker while it has stopped ticking.
    parked: Cell<Option<Waker>>,
}

impl Deadlines {
    /// A table whose deadlines are seen at most `tick` late; its keeper runs on the current
    /// `LocalSet` (the worker's).
    pub fn start(tick: Duration) -> Rc<Self> {
        let table = Rc::new(Self {
            slots: RefCell::new(Slab::new()),
            tick: tick.max(Duration::from_millis(1)),
            parked: Cell::new(None),
        });
        tokio::task::spawn_local(keep(Rc::downgrade(&table)));
        table
    }

    /// The tick for calls that time out after `timeout`: a twentieth of it, at most 100 ms.
    pub fn tick_for(timeout: Duration) -> Duration {
        (timeout / 20).min(Duration::from_millis(100))
    }

    /// Registers a call's deadline; it is forgotten when the returned guard is dropped.
    pub fn deadline(self: &Rc<Self>, at: Instant) -> Deadline {
        let key = self.slots.borrow_mut().insert(Slot { at, expired: false, waker: None });
        if let Some(keeper) = self.parked.take() {
            keeper.wake();
        }
        Deadline { table: self.clone(), key }
    }

    /// Marks and wakes the calls whose deadline is `now` or earlier; whether any call is in
    /// flight.
    fn expire(&self, now: Instant) -> bool {
        let mut wake = Vec::new();
        let busy = {
            let mut slots = self.slots.borrow_mut();
            for (_, slot) in slots.iter_mut().filter(|(_, s)| !s.expired && s.at <= now) {
                slot.expired = true;
                wake.extend(slot.waker.take());
            }
            !slots.is_empty()
        };
        // Woken outside the borrow: a waker may run code that touches the table.
        wake.into_iter().for_each(Waker::wake);
        busy
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.borrow().len()
    }
}

async fn keep(table: std::rc::Weak<Deadlines>) {
    let mut idle = 0;
    loop {
        let Some(tick) = table.upgrade().map(|t| t.tick) else { return };
        tokio::time::sleep(tick).await;
        let Some(busy) = table.upgrade().map(|t| t.expire(Instant::now())) else { return };
        idle = if busy { 0 } else { idle + 1 };
        if idle >= IDLE_TICKS {
            // Nothing in flight for a while: wait for the next call to start (or the table to go).
            std::future::poll_fn(|cx| match table.upgrade() {
                Some(t) if t.slots.borrow().is_empty() => {
                    t.parked.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            })
            .await;
            idle = 0;
        }
    }
}

/// A call's deadline: a future that completes once the deadline has passed. Dropping it
/// removes the deadline from the table.
pub struct Deadline {
    table: Rc<Deadlines>,
    key: usize,
}

impl Deadline {
    /// Whether the deadline has passed; if not, `cx`'s task is woken when it does.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let mut slots = self.table.slots.borrow_mut();
        let slot = &mut slots[self.key];
        if slot.expired {
            return true;
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        false
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.get_mut().poll_expired(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.table.slots.borrow_mut().remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::run;

    #[test]
    fn a_call_is_woken_once_its_deadline_passes_and_not_before() {
        run(async {
            let table = Deadlines::start(Duration::from_millis(5));
            let started = Instant::now();
            let late = table.deadline(started + Duration::from_secs(3600));
            table.deadline(started + Duration::from_millis(40)).await;
            let waited = started.elapsed();
            assert!(waited >= Duration::from_millis(40), "woken after {waited:?}");
            let mut late = std::pin::pin!(late);
            assert!(futures_util::poll!(late.as_mut()).is_pending(), "the later deadline has not passed");
            assert_eq!(table.len(), 1, "the finished call's deadline is gone");
        });
    }

    #[test]
    fn the_keeper_stops_ticking_when_idle_and_the_next_call_wakes_it() {
        run(async {
            let table = Deadlines::start(Duration::from_millis(1));
            drop(table.deadline(Instant::now()));
            // Idle long enough for the keeper to park.
            tokio::time::sleep(Duration::from_millis(20 * IDLE_TICKS as u64)).await;
            let parked = table.parked.take();
            assert!(parked.is_some(), "the keeper parked");
            table.parked.set(parked);
            let started = Instant::now();
            table.deadline(started + Duration::from_millis(10)).await;
            assert!(table.parked.take().is_none(), "the keeper ticks again");
        });
    }

    #[test]
    fn many_calls_with_mixed_deadlines_each_see_their_own() {
        run(async {
            let table = Deadlines::start(Duration::from_millis(2));
            let start = Instant::now();
            let mut next = crate::testing::random(0x1234_5678_9abc_def1);
            let calls = (0..200).map(|_| {
                let wait = Duration::from_millis(next(60));
                let d = table.deadline(start + wait);
                async move {
                    d.await;
                    (wait, start.elapsed())
                }
            });
            for (wait, woke) in futures_util::future::join_all(calls).await {
                assert!(woke >= wait, "woken at {woke:?} for a deadline of {wait:?}");
            }
            assert_eq!(table.len(), 0);
        });
    }
}
