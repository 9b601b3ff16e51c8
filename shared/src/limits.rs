//! Rate limits per API key and per connection (GCRA, via governor). Exceeding one answers
//! `429 rate_limited` with `Retry-After`.

use crate::http::{ApiError, ErrorCode};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

type Keyed = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// One keyed limiter: `per_second` requests per second, with a burst of one second's worth.
pub struct Limiter {
    inner: Keyed,
    what: &'static str,
    checks: AtomicU64,
}

impl Limiter {
    /// `None` when `per_second` is 0 (no limit).
    pub fn new(per_second: u32, what: &'static str) -> Option<Self> {
        let n = NonZeroU32::new(per_second)?;
        Some(Self { inner: RateLimiter::keyed(Quota::per_second(n)), what, checks: AtomicU64::new(0) })
    }

    pub fn check(&self, key: &str) -> Result<(), ApiError> {
        // Forget idle keys now and then, so the state follows the active keys, not all keys.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 10_000 == 9_999 {
            self.inner.retain_recent();
        }
        self.inner.check_key(&key.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut e = ApiError::new(ErrorCode::RateLimited, format!("rate limit of this {} exceeded", self.what));
            e.retry_after = Some(wait.max(std::time::Duration::from_secs(1)));
            e
        })
    }
}

/// Limits a service applies, shared by its workers.
pub struct RateLimits {
    pub per_key: Option<Limiter>,
    pub per_connection: Option<Limiter>,
}

impl RateLimits {
    pub fn new(per_key: u32, per_connection: u32) -> Self {
        Self { per_key: Limiter::new(per_key, "API key"), per_connection: Limiter::new(per_connection, "connection") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_past_the_quota_is_refused_with_a_retry_after() {
        let l = Limiter::new(5, "API key").unwrap();
        for _ in 0..5 {
            l.check("k").unwrap();
        }
        let e = l.check("k").unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.retry_after.is_some());
        assert!(l.check("other").is_ok(), "keys are limited separately");
        assert!(Limiter::new(0, "x").is_none());
    }
}
