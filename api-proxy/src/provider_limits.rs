//! Keeping to a provider's documented rate limit across every proxy replica, without a network
//! round trip per call.
//!
//! Each replica knows how many proxies are alive (heartbeats in PostgreSQL, [`heartbeat`]) and
//! sends at most `requests / N` calls in any window of the limit's length, plus a margin: a
//! sliding log of the times it scheduled calls. Providers count calls in sliding windows
//! (Kartra's "20 per second"), so a log matches what they count exactly, allows bursts up to
//! the share and keeps the sustained rate close to it; a token bucket would have to give up
//! either the bursts or a part of the rate to stay under the same windows.
//!
//! A call over the share takes the next free slot and waits for it, if that is within what the
//! call may wait; otherwise it is refused with `429` and the `Retry-After` of that slot, and
//! takes no slot. The provider is never sent more than its limit, whatever the callers do.
//!
//! What this does not cover: for one heartbeat interval after a replica starts, the others
//! still use their older, larger share (start replicas before the load, as a deploy does).

use shared::catalog::{LimitScope, Provider, RateLimit};
use shared::http::{ApiError, ErrorCode};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a replica writes its heartbeat and counts the others.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A replica silent for this long is no longer counted.
pub const HEARTBEAT_WINDOW: Duration = Duration::from_secs(7);

/// The window a share is kept in is the limit's, made longer by this much (at least 50 ms):
/// calls leave a little apart from when the provider counts them.
fn window_of(limit: &RateLimit) -> Duration {
    limit.per + (limit.per / 50).max(Duration::from_millis(50))
}

/// The sliding logs of every limited provider (and connection) this replica calls.
pub struct ProviderLimits {
    replicas: AtomicUsize,
    logs: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Default for ProviderLimits {
    fn default() -> Self {
        Self { replicas: AtomicUsize::new(1), logs: Mutex::default() }
    }
}

/// When a call may go.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Now,
    /// After waiting this long (its slot is taken).
    After(Duration),
}

impl ProviderLimits {
    /// How many proxies share the limits, this one included.
    pub fn set_replicas(&self, n: usize) {
        self.replicas.store(n.max(1), Ordering::Relaxed);
    }

    pub fn replicas(&self) -> usize {
        self.replicas.load(Ordering::Relaxed)
    }

    /// This replica's share of `limit`: calls per window (at least one).
    pub fn share(&self, limit: &RateLimit) -> usize {
        (limit.requests as usize / self.replicas()).max(1)
    }

    /// Takes a slot for one call of `connection_id` to `p` at `now`, waiting at most
    /// `max_wait` for it; `Err` (429 with `Retry-After`) when the next slot is later.
    pub fn admit(
        &self,
        p: &Provider,
        connection_id: &str,
        now: Instant,
        max_wait: Duration,
    ) -> Result<Admission, ApiError> {
        let Some(limit) = p.rate_limit.as_ref() else { return Ok(Admission::Now) };
        let key = match limit.scope {
            LimitScope::App => p.id.clone(),
            LimitScope::Connection => format!("{}/{connection_id}", p.id),
        };
        let (share, window) = (self.share(limit), window_of(limit));
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if logs.len() > 10_000 {
            // Forget connections that have not called for a window.
            logs.retain(|_, log| log.back().is_some_and(|t| now.saturating_duration_since(*t) < window));
        }
        let log = logs.entry(key).or_default();
        while log.front().is_some_and(|t| now.saturating_duration_since(*t) >= window) {
            log.pop_front();
        }
        // The share may have shrunk since calls were scheduled: the slot is `window` after the
        // call `share` places back, which is then in the log.
        let at = if log.len() < share { now } else { log[log.len() - share] + window };
        let wait = at.saturating_duration_since(now);
        if wait > max_wait {
            let mut e = ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "{} allows {} calls per {} s{}; the next free slot is {} ms away, more than this call may wait",
                    p.display_name,
                    limit.requests,
                    limit.per.as_secs(),
                    if limit.scope == LimitScope::App { " for all connections together" } else { " per connection" },
                    wait.as_millis()
                ),
            );
            e.retry_after = Some(Duration::from_secs(wait.as_secs_f64().ceil() as u64).max(Duration::from_secs(1)));
            return Err(e);
        }
        // Kept in order: a later slot is never before an earlier one.
        let at = log.back().map_or(at, |last| at.max(*last));
        log.push_back(at);
        Ok(if at <= now { Admission::Now } else { Admission::After(at - now) })
    }
}

/// Writes this replica's heartbeat every [`HEARTBEAT`] and keeps the replica count of
/// `limits` current until `shutdown`; then removes the heartbeat. While the database cannot be
/// reached the last count stays (the replicas rarely change during an outage).
pub async fn heartbeat(
    store: shared::store::Store,
    limits: std::sync::Arc<ProviderLimits>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let id = uuid::Uuid::new_v4().to_string();
    loop {
        match store.heartbeat("api-proxy", &id, HEARTBEAT_WINDOW).await {
            Ok(n) => {
                if n != limits.replicas() {
                    tracing::info!(replicas = n, "proxy replicas sharing the providers' rate limits");
                }
                limits.set_replicas(n);
            }
            Err(e) => tracing::debug!(error = %e, "heartbeat not written"),
        }
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = shutdown.changed() => break,
        }
    }
    if let Err(e) = store.leave("api-proxy", &id).await {
        tracing::debug!(error = %e, "heartbeat not removed; it expires");
    }
}

/// How long a provider's `429` asks to wait: its `Retry-After` (seconds or an HTTP date,
/// RFC 9110 §10.2.3), else `default`.
pub fn retry_after(headers: &http::HeaderMap, default: Duration) -> Duration {
    let Some(v) = headers.get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()) else { return default };
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Duration::from_secs(secs);
    }
    match httpdate::parse_http_date(v) {
        Ok(at) => at.duration_since(std::time::SystemTime::now()).unwrap_or_default(),
        Err(_) => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kartra(requests: u32, scope: LimitScope) -> Provider {
        let u = url::Url::parse("https://example.com/").unwrap();
        Provider {
            rate_limit: Some(RateLimit { requests, per: Duration::from_secs(1), scope, wait: Duration::from_secs(1) }),
            ..Provider::oauth2("kartra", u.clone(), u)
        }
    }

    /// Calls admitted at `t` by the slots `admit` handed out: none of them is closer than the
    /// window to the call `share` places back.
    #[test]
    fn no_window_of_the_limits_length_ever_holds_more_than_the_share() {
        let l = ProviderLimits::default();
        l.set_replicas(2);
        let p = kartra(20, LimitScope::App);
        let start = Instant::now();
        let mut sent = Vec::new();
        // 60 callers arriving over 1.5 s, each willing to wait 3 s.
        for i in 0..60u64 {
            let now = start + Duration::from_millis(i * 25);
            match l.admit(&p, "c", now, Duration::from_secs(3)) {
                Ok(Admission::Now) => sent.push(now),
                Ok(Admission::After(d)) => sent.push(now + d),
                Err(e) => assert!(e.retry_after.is_some()),
            }
        }
        sent.sort();
        assert!(sent.len() >= 30, "the waiting callers go out as slots free: {}", sent.len());
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().take_while(|u| u.duration_since(*t) < Duration::from_secs(1)).count();
            assert!(in_window <= 10, "{in_window} calls in one second from one of two replicas");
        }
        // Those that could not wait were refused and took no slot.
        let later = start + Duration::from_secs(10);
        assert_eq!(l.admit(&p, "c", later, Duration::ZERO).unwrap(), Admission::Now);
    }

    #[test]
    fn a_caller_that_cannot_wait_is_refused_with_the_slots_retry_after() {
        let l = ProviderLimits::default();
        let p = kartra(2, LimitScope::Connection);
        let now = Instant::now();
        assert_eq!(l.admit(&p, "a", now, Duration::ZERO).unwrap(), Admission::Now);
        assert_eq!(l.admit(&p, "a", now, Duration::ZERO).unwrap(), Admission::Now);
        let e = l.admit(&p, "a", now, Duration::from_millis(500)).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)), "1.05 s away, rounded up");
        assert!(matches!(l.admit(&p, "a", now, Duration::from_secs(2)).unwrap(), Admission::After(_)));
        assert_eq!(l.admit(&p, "b", now, Duration::ZERO).unwrap(), Admission::Now, "per connection");
        let free = Provider { rate_limit: None, ..p };
        assert_eq!(l.admit(&free, "a", now, Duration::ZERO).unwrap(), Admission::Now);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let mut h = http::HeaderMap::new();
        let d = Duration::from_secs(1);
        assert_eq!(retry_after(&h, d), d);
        h.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h, d), Duration::from_secs(7));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        h.insert(http::header::RETRY_AFTER, soon.parse().unwrap());
        let got = retry_after(&h, d);
        assert!(got > Duration::from_secs(25) && got <= Duration::from_secs(30), "{got:?}");
        h.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, d), d);
    }
}
