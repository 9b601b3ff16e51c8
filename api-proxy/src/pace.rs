//! How fast the acceptor takes new connections once the proxy is at its connection cap.
//!
//! At the cap, each new connection makes the one that has waited longest for its caller close.
//! A slowloris holding more sockets than the cap reopens every socket it loses at once, so
//! without a pace the proxy would take, shed and retake the attack's sockets as fast as its
//! cores allow: 6,000 to 12,000 connections a second in `bench/attacks.sh`, most of a core spent
//! on nothing else. Paced, the attack's surplus waits in the kernel's listen queue, and what the
//! attack costs is bounded by the pace plus what the head timeout closes anyway.

use std::time::{Duration, Instant};

/// A token bucket: `per_second` connections a second, up to a tenth of a second's worth at once.
pub struct Pace {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
    /// Paced only from this many open connections on.
    pub from: usize,
}

/// The acceptor sleeps at least this long when the bucket is empty, so that at the cap it wakes
/// to take a handful of connections at a time rather than one per timer tick.
pub const MIN_WAIT: Duration = Duration::from_millis(10);

impl Pace {
    pub fn new(per_second: u32, from: usize, now: Instant) -> Self {
        let per_second = f64::from(per_second.max(1));
        let burst = (per_second / 10.0).max(1.0);
        Self { per_second, burst, tokens: burst, at: now, from }
    }

    /// Takes one connection's token at `now`, or says how long until there is one.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_second).max(MIN_WAIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut pace = Pace::new(1000, 0, t0);
        // A tenth of a second's worth at once,
        assert_eq!((0..100).filter(|_| pace.take(t0).is_ok()).count(), 100);
        // then nothing until time passes, and the wait names when,
        let wait = pace.take(t0).unwrap_err();
        assert!(wait >= MIN_WAIT, "{wait:?}");
        // then the rate: 1000 a second over the next second, never more.
        let mut taken = 0;
        for ms in 1..=1000u64 {
            let now = t0 + Duration::from_millis(ms);
            while pace.take(now).is_ok() {
                taken += 1;
            }
        }
        assert!((995..=1000).contains(&taken), "{taken}");
    }

    #[test]
    fn an_idle_bucket_holds_no_more_than_its_burst() {
        let t0 = Instant::now();
        let mut pace = Pace::new(50, 0, t0);
        let later = t0 + Duration::from_secs(3600);
        // The smallest burst is one connection.
        assert_eq!((0..100).filter(|_| pace.take(later).is_ok()).count(), 5);
        let mut slow = Pace::new(1, 0, t0);
        assert_eq!((0..10).filter(|_| slow.take(later).is_ok()).count(), 1);
    }
}
