//! The proxy's token cache: decrypted tokens in memory, so a proxied call needs no database
//! round trip.
//!
//! Entries are dropped the moment any process changes the connection (PostgreSQL NOTIFY from a
//! trigger, see `shared::store::notify`), and after a short TTL as a safety net. While the
//! notification listener is down the cache is bypassed, and it is emptied when listening
//! resumes, because changes made meanwhile were not announced. A token that expires within the
//! minimum validity is never served from here.

use chrono::{DateTime, Utc};
use shared::http::ApiError;
use shared::store::notify::Change;
use shared::store::Credentials;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A connection's credentials with the `Authorization` value built once, marked sensitive (so
/// HTTP/2 never puts it in a compression table).
pub struct Token {
    pub creds: Credentials,
    pub bearer: http::HeaderValue,
}

impl Token {
    pub fn new(creds: Credentials) -> Result<Self, ApiError> {
        let mut bearer = http::HeaderValue::try_from(format!("Bearer {}", creds.access_token))
            .map_err(|_| ApiError::internal("stored token is not a valid header value"))?;
        bearer.set_sensitive(true);
        Ok(Self { creds, bearer })
    }
}

struct Entry {
    version: i64,
    token: Arc<Token>,
    expires_at: Option<DateTime<Utc>>,
    stored: Instant,
}

pub struct TokenCache {
    // provider → connection id → entry: looked up by `&str`, so a hit allocates nothing.
    entries: RwLock<HashMap<String, HashMap<String, Entry>>>,
    ttl: Duration,
    listening: AtomicBool,
    /// Bumped by every change; a fetch that raced a change does not store its result.
    epoch: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl TokenCache {
    /// A cache whose entries live at most `ttl`; a zero `ttl` disables it.
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            ttl,
            listening: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.listening.load(Ordering::Acquire)
    }

    /// The cached token, if it is fresh, announced-current and valid for `min_validity` more.
    pub fn get(&self, provider: &str, connection_id: &str, min_validity: Duration) -> Option<(i64, Arc<Token>)> {
        if !self.enabled() {
            return None;
        }
        let entries = self.entries.read().unwrap();
        let hit = entries.get(provider).and_then(|m| m.get(connection_id)).filter(|e| {
            e.stored.elapsed() < self.ttl
                && e.expires_at
                    .is_none_or(|x| x > Utc::now() + chrono::Duration::from_std(min_validity).unwrap_or_default())
        });
        match hit {
            Some(e) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some((e.version, e.token.clone()))
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The epoch to pass to [`put`](Self::put) for a fetch starting now.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Stores a fetched token unless a change was announced since `epoch`.
    pub fn put(
        &self,
        epoch: u64,
        provider: &str,
        connection_id: &str,
        version: i64,
        token: Arc<Token>,
        expires_at: Option<DateTime<Utc>>,
    ) {
        if !self.enabled() {
            return;
        }
        let mut entries = self.entries.write().unwrap();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        entries
            .entry(provider.to_owned())
            .or_default()
            .insert(connection_id.to_owned(), Entry { version, token, expires_at, stored: Instant::now() });
    }

    /// Drops what a change makes stale.
    pub fn apply(&self, change: Change) {
        let mut entries = self.entries.write().unwrap();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        match change {
            Change::Connection { provider, connection_id } => {
                if let Some(m) = entries.get_mut(&provider) {
                    m.remove(&connection_id);
                }
            }
            Change::Resync => {
                entries.clear();
                self.listening.store(true, Ordering::Release);
            }
            Change::Lost => {
                self.listening.store(false, Ordering::Release);
                entries.clear();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap().values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(t: &str) -> Arc<Token> {
        Arc::new(
            Token::new(Credentials {
                access_token: t.into(),
                refresh_token: None,
                token_type: None,
                extra: Default::default(),
            })
            .unwrap(),
        )
    }

    #[test]
    fn serves_only_while_listening_and_drops_on_change() {
        let c = TokenCache::new(Duration::from_secs(30));
        let far = Some(Utc::now() + chrono::Duration::hours(1));
        c.put(c.epoch(), "p", "u", 1, creds("a"), far);
        assert!(c.get("p", "u", Duration::ZERO).is_none(), "not listening yet");
        c.apply(Change::Resync);
        c.put(c.epoch(), "p", "u", 1, creds("a"), far);
        assert_eq!(c.get("p", "u", Duration::ZERO).unwrap().1.creds.access_token, "a");
        c.apply(Change::Connection { provider: "p".into(), connection_id: "u".into() });
        assert!(c.get("p", "u", Duration::ZERO).is_none());
        // A fetch that raced a change is not stored.
        let e = c.epoch();
        c.apply(Change::Connection { provider: "p".into(), connection_id: "other".into() });
        c.put(e, "p", "u", 1, creds("stale"), far);
        assert!(c.get("p", "u", Duration::ZERO).is_none());
        c.apply(Change::Lost);
        c.put(c.epoch(), "p", "u", 2, creds("b"), far);
        assert!(c.get("p", "u", Duration::ZERO).is_none(), "bypassed while not listening");
    }

    #[test]
    fn never_serves_a_token_about_to_expire() {
        let c = TokenCache::new(Duration::from_secs(30));
        c.apply(Change::Resync);
        c.put(c.epoch(), "p", "u", 1, creds("a"), Some(Utc::now() + chrono::Duration::seconds(5)));
        assert!(c.get("p", "u", Duration::from_secs(10)).is_none());
        assert!(c.get("p", "u", Duration::from_secs(1)).is_some());
    }
}
