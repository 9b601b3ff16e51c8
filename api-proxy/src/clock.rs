//! A clock read once per request.
//!
//! The server records when each request started; the rest of that request's work (the
//! API-key memo, the upstream pool's idle check, the token cache) uses [`recent`] instead of
//! reading the clock again. Those are expiry checks that need no finer time than "when this
//! request began".

use std::cell::Cell;
use std::time::Instant;

thread_local! {
    static REQUEST_START: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Records that a request started on this thread at `at` (the caller has just read the clock).
pub fn request_started(at: Instant) {
    REQUEST_START.set(Some(at));
}

/// When the request this thread is serving started, if its server recorded it; otherwise now.
/// Never later than now; earlier by at most the time since the thread's latest request began,
/// so use it only for expiry checks that can tolerate that.
pub fn recent() -> Instant {
    REQUEST_START.get().unwrap_or_else(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_recorded_start_it_is_now_and_with_one_it_is_that_start() {
        let before = Instant::now();
        std::thread::spawn(move || {
            assert!(recent() >= before);
            let start = Instant::now();
            request_started(start);
            std::thread::sleep(std::time::Duration::from_millis(5));
            assert_eq!(recent(), start);
        })
        .join()
        .unwrap();
    }
}
