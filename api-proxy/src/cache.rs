//! The proxy's token cache: decrypted tokens in memory, so a proxied call needs no database
//! round trip.
//!
//! Entries are dropped the moment any process changes the connection (PostgreSQL NOTIFY from a
//! trigger, see `shared::store::notify`), and after a short TTL as a safety net. While the
//! notification listener is down the cache is bypassed (the database is asked), and it is
//! emptied when listening resumes, because changes made meanwhile were not announced. When the
//! database cannot be reached at all, what the cache last knew may still be served for a
//! bounded time ([`TokenCache::get_stale`]): nothing can be revoked or deleted while the
//! database is down. A token that expires within the minimum validity is never served from here.

use chrono::{DateTime, Utc};
use foldhash::HashMap;
use shared::http::ApiError;
use shared::metrics::Counter;
use shared::store::notify::Change;
use shared::store::Credentials;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A connection's credentials with what a call carries for them built once: the header fields
/// (marked sensitive, so HTTP/2 never puts them in a compression table), and for credential
/// providers that want them elsewhere, query parameters and form fields.
pub struct Token {
    pub creds: Credentials,
    /// `authorization: Bearer …` for OAuth tokens; the provider's placement otherwise.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub query: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
    /// `query` and `form` form-encoded, once per connection rather than once per call.
    pub query_encoded: String,
    pub form_encoded: String,
    /// `headers` and `Content-Type: application/x-www-form-urlencoded`, for a form-body call
    /// whose caller named no content type.
    pub form_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Names the credential among all the proxy carries (a keyed hash of what the call
    /// carries): the upstream pool keeps a connection for the credential whose call it carried last.
    pub tenant: u64,
}

/// A keyed hash of a credential (the key is random per process, so two credentials cannot be
/// chosen to collide).
pub fn tenant_of(credential: &str) -> u64 {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<foldhash::quality::RandomState> = std::sync::OnceLock::new();
    KEY.get_or_init(Default::default).hash_one(credential)
}

/// `headers` and `Content-Type: application/x-www-form-urlencoded` (for a provider that takes
/// its credentials in a form body), or nothing.
fn with_form_type(
    headers: &[(http::HeaderName, http::HeaderValue)],
    form: bool,
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    if !form {
        return Vec::new();
    }
    let form_type = http::HeaderValue::from_static("application/x-www-form-urlencoded");
    headers.iter().cloned().chain([(http::header::CONTENT_TYPE, form_type)]).collect()
}

fn sensitive(v: &str) -> Result<http::HeaderValue, ApiError> {
    let mut v = http::HeaderValue::try_from(v)
        .map_err(|_| ApiError::internal("a stored credential is not a valid header value"))?;
    v.set_sensitive(true);
    Ok(v)
}

impl Token {
    /// An OAuth connection's token, sent as `Authorization: Bearer`.
    pub fn bearer(creds: Credentials) -> Result<Self, ApiError> {
        let bearer = sensitive(&format!("Bearer {}", creds.access_token))?;
        let tenant = tenant_of(&creds.access_token);
        Ok(Self {
            creds,
            headers: vec![(http::header::AUTHORIZATION, bearer)],
            query: vec![],
            form: vec![],
            query_encoded: String::new(),
            form_encoded: String::new(),
            form_headers: vec![],
            tenant,
        })
    }

    /// A connection's credentials placed as its provider wants them.
    pub fn for_provider(creds: Credentials, provider: &shared::catalog::Provider) -> Result<Self, ApiError> {
        let Some(spec) = &provider.credentials else { return Self::bearer(creds) };
        let placed = spec
            .place(&creds.values)
            .map_err(|why| ApiError::internal(format!("provider `{}`: {why}", provider.id)))?;
        let mut headers = Vec::with_capacity(placed.headers.len());
        for (name, value) in &placed.headers {
            let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(ApiError::internal)?;
            headers.push((name, sensitive(value)?));
        }
        let mut identity = String::new();
        for (n, v) in placed.headers.iter().chain(&placed.query).chain(&placed.form) {
            identity.push_str(n);
            identity.push('\0');
            identity.push_str(v);
            identity.push('\0');
        }
        let form_headers = with_form_type(&headers, !placed.form.is_empty());
        Ok(Self {
            creds,
            headers,
            query_encoded: crate::inject::encode(&placed.query),
            form_encoded: crate::inject::encode(&placed.form),
            query: placed.query,
            form: placed.form,
            form_headers,
            tenant: tenant_of(&identity),
        })
    }

    /// A copy sharing no memory with this one (so no reference count is touched by two threads).
    fn private_copy(&self) -> Self {
        let headers: Vec<_> = self
            .headers
            .iter()
            .map(|(n, v)| {
                let mut copy = http::HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
                copy.set_sensitive(true);
                (http::HeaderName::from_bytes(n.as_str().as_bytes()).unwrap_or_else(|_| n.clone()), copy)
            })
            .collect();
        let form_headers = with_form_type(&headers, !self.form_headers.is_empty());
        Self {
            creds: self.creds.clone(),
            headers,
            query: self.query.clone(),
            form: self.form.clone(),
            query_encoded: self.query_encoded.clone(),
            form_encoded: self.form_encoded.clone(),
            form_headers,
            tenant: self.tenant,
        }
    }
}

struct Entry {
    version: i64,
    token: Arc<Token>,
    /// Until when the entry may be served (stored + TTL), and when the token expires, both on
    /// the monotonic clock.
    fresh_until: Instant,
    expires: Option<Instant>,
}

impl Entry {
    fn usable(&self, now: Instant, min_validity: Duration) -> bool {
        now < self.fresh_until && self.expires.is_none_or(|x| x > now + min_validity)
    }
}

pub struct TokenCache {
    /// Tells this cache's entries in a thread's copy from another cache's (tests make several).
    id: u64,
    // provider → connection id → entry: looked up by `&str`, so a hit allocates nothing.
    entries: RwLock<HashMap<String, HashMap<String, Entry>>>,
    ttl: Duration,
    listening: AtomicBool,
    /// How long after the listener was lost the entries may still be served when the database
    /// cannot be reached (zero: never; they are dropped when it is lost).
    stale_for: Duration,
    /// When the listener was lost (`None` while listening).
    lost_at: std::sync::Mutex<Option<Instant>>,
    /// Whether a call was served from memory since the listener was lost (for the gauge, and
    /// so the start and end are logged once each).
    serving_stale: AtomicBool,
    /// Bumped by every change; a fetch that raced a change does not store its result, and every
    /// thread's copy of the cache is dropped.
    epoch: AtomicU64,
    pub hits: Counter,
    pub misses: Counter,
}

/// Each worker thread's copy of the entries it used. A hit there touches nothing another
/// thread writes: the shared map's lock, its entries' reference counts and a shared hit counter
/// would each move a cache line between the workers' cores on every call. The copy is valid
/// for one epoch of one cache: any change anywhere drops it, and it refills from the shared map.
struct Local {
    owner: u64,
    epoch: u64,
    len: usize,
    entries: HashMap<String, HashMap<String, Entry>>,
}

thread_local! {
    static LOCAL: RefCell<Local> =
        RefCell::new(Local { owner: u64::MAX, epoch: 0, len: 0, entries: HashMap::default() });
}

/// The most entries a thread's copy holds before it starts over.
const LOCAL_LIMIT: usize = 100_000;

impl TokenCache {
    /// A cache whose entries live at most `ttl`; a zero `ttl` disables it. No entry is served
    /// once the listener is lost.
    pub fn new(ttl: Duration) -> Self {
        Self::with_stale(ttl, Duration::ZERO)
    }

    /// The same, and entries may still be served for `stale_for` after the listener was lost,
    /// to calls that cannot reach the database ([`TokenCache::get_stale`]).
    pub fn with_stale(ttl: Duration, stale_for: Duration) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            entries: RwLock::new(HashMap::default()),
            ttl,
            listening: AtomicBool::new(false),
            stale_for: if ttl.is_zero() { Duration::ZERO } else { stale_for },
            lost_at: std::sync::Mutex::new(None),
            serving_stale: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            hits: Counter::default(),
            misses: Counter::default(),
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
        let epoch = self.epoch.load(Ordering::Acquire);
        let now = crate::clock::recent();
        let found = LOCAL.with_borrow_mut(|local| {
            if local.owner != self.id || local.epoch != epoch {
                local.owner = self.id;
                local.epoch = epoch;
                local.len = 0;
                local.entries.clear();
            }
            if let Some(e) = local.entries.get(provider).and_then(|m| m.get(connection_id)) {
                if e.usable(now, min_validity) {
                    return Some((e.version, e.token.clone()));
                }
            }
            // Not copied yet, or the copy is too old: from the shared map, if it holds a usable
            // entry (a token fetched again since is stored there).
            let copy = {
                let entries = self.entries.read().unwrap();
                let e = entries.get(provider).and_then(|m| m.get(connection_id))?;
                if !e.usable(now, min_validity) {
                    return None;
                }
                Entry {
                    version: e.version,
                    token: Arc::new(e.token.private_copy()),
                    fresh_until: e.fresh_until,
                    expires: e.expires,
                }
            };
            let hit = (copy.version, copy.token.clone());
            if local.len >= LOCAL_LIMIT {
                local.len = 0;
                local.entries.clear();
            }
            local.len += 1;
            match local.entries.get_mut(provider) {
                Some(m) => m.insert(connection_id.to_owned(), copy),
                None => local.entries.entry(provider.to_owned()).or_default().insert(connection_id.to_owned(), copy),
            };
            Some(hit)
        });
        match found {
            Some(hit) => {
                self.hits.add(1);
                Some(hit)
            }
            None => {
                self.misses.add(1);
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
        let now = Instant::now();
        // The expiry moves to the monotonic clock, so serving needs no clock read.
        let expires = expires_at.map(|x| now + (x - Utc::now()).to_std().unwrap_or_default());
        let entry = Entry { version, token, fresh_until: now + self.ttl, expires };
        entries.entry(provider.to_owned()).or_default().insert(connection_id.to_owned(), entry);
    }

    /// Drops a connection's entry at once, for a change this process made itself: its own
    /// announcement arrives later, and a caller told "refreshed, retry" must not meanwhile be
    /// served the token the provider refused.
    pub fn forget(&self, provider: &str, connection_id: &str) {
        self.apply(Change::Connection { provider: provider.to_owned(), connection_id: connection_id.to_owned() });
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
                // Whatever changed while nobody listened was not announced: start over.
                entries.clear();
                self.listening.store(true, Ordering::Release);
                let lost = self.lost_at.lock().unwrap().take();
                if self.serving_stale.swap(false, Ordering::AcqRel) {
                    let after = lost.map(|t| t.elapsed().as_secs_f64()).unwrap_or_default();
                    tracing::warn!(after_seconds = after, "the database is back: tokens are served from it again");
                }
            }
            Change::Lost => {
                self.listening.store(false, Ordering::Release);
                self.lost_at.lock().unwrap().get_or_insert_with(Instant::now);
                if self.stale_for.is_zero() {
                    entries.clear();
                }
            }
        }
    }

    /// What the cache last knew of a connection, for a call that cannot reach the database:
    /// only while the listener is lost, for at most the stale bound since it was lost, and only
    /// a token still valid for `min_validity` by its own expiry. The first call served so says
    /// so in the log (once), and [`TokenCache::serving_stale`] turns true.
    pub fn get_stale(&self, provider: &str, connection_id: &str, min_validity: Duration) -> Option<(i64, Arc<Token>)> {
        if self.stale_for.is_zero() || self.listening.load(Ordering::Acquire) {
            return None;
        }
        let lost_at = (*self.lost_at.lock().unwrap())?;
        let now = Instant::now();
        if now.duration_since(lost_at) >= self.stale_for {
            return None;
        }
        let hit = {
            let entries = self.entries.read().unwrap();
            let e = entries.get(provider).and_then(|m| m.get(connection_id))?;
            if e.expires.is_some_and(|x| x <= now + min_validity) {
                return None;
            }
            (e.version, e.token.clone())
        };
        if !self.serving_stale.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                stale_for_seconds = self.stale_for.as_secs(),
                "the database cannot be reached: serving the tokens held in memory"
            );
        }
        Some(hit)
    }

    /// Whether calls are being served from memory while the database cannot be reached.
    pub fn serving_stale(&self) -> bool {
        self.serving_stale.load(Ordering::Acquire) && !self.listening.load(Ordering::Acquire)
    }

    /// Whether, the database being unreachable, the cache can still serve (the bound since the
    /// listener was lost has not passed).
    pub fn can_serve_stale(&self) -> bool {
        !self.stale_for.is_zero()
            && !self.listening.load(Ordering::Acquire)
            && self.lost_at.lock().unwrap().is_some_and(|t| t.elapsed() < self.stale_for)
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
        Arc::new(Token::bearer(Credentials { access_token: t.into(), ..Credentials::default() }).unwrap())
    }

    /// A token of provider `p` valid for an hour more, stored as a fetch would store it.
    fn put_fresh(c: &TokenCache, connection_id: &str, version: i64, token: &str) {
        c.put(c.epoch(), "p", connection_id, version, creds(token), Some(Utc::now() + chrono::Duration::hours(1)));
    }

    /// A cache that is listening (so serving) and holds these tokens (connection id, version,
    /// token) of provider `p`.
    fn listening(ttl: Duration, tokens: &[(&str, i64, &str)]) -> TokenCache {
        let c = TokenCache::new(ttl);
        c.apply(Change::Resync);
        for &(id, version, token) in tokens {
            put_fresh(&c, id, version, token);
        }
        c
    }

    #[test]
    fn while_the_database_is_out_of_reach_memory_serves_unexpired_tokens_within_the_bound_then_resyncs() {
        let c = TokenCache::with_stale(Duration::from_secs(30), Duration::from_millis(200));
        c.apply(Change::Resync);
        put_fresh(&c, "u", 1, "a");
        c.put(c.epoch(), "p", "soon", 1, creds("short"), Some(Utc::now() + chrono::Duration::seconds(2)));
        assert!(c.get_stale("p", "u", Duration::ZERO).is_none(), "never while listening");
        c.apply(Change::Lost);
        assert!(c.get("p", "u", Duration::ZERO).is_none(), "the normal path asks the database");
        assert_eq!(c.get_stale("p", "u", Duration::ZERO).unwrap().1.creds.access_token, "a");
        assert!(c.serving_stale() && c.can_serve_stale());
        assert!(c.get_stale("p", "soon", Duration::from_secs(5)).is_none(), "a token expiring within the validity");
        assert!(c.get_stale("p", "unseen", Duration::ZERO).is_none());
        // A change announced before the listener was lost still applies.
        c.apply(Change::Connection { provider: "p".into(), connection_id: "soon".into() });
        std::thread::sleep(Duration::from_millis(250));
        assert!(c.get_stale("p", "u", Duration::ZERO).is_none(), "not past the bound");
        assert!(!c.can_serve_stale());
        c.apply(Change::Resync);
        assert!(!c.serving_stale());
        assert!(c.is_empty(), "everything is fetched again after the gap");
        // With no bound, losing the listener drops everything, as before.
        let strict = TokenCache::new(Duration::from_secs(30));
        strict.apply(Change::Resync);
        put_fresh(&strict, "u", 1, "a");
        strict.apply(Change::Lost);
        assert!(strict.is_empty() && strict.get_stale("p", "u", Duration::ZERO).is_none());
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
    fn a_threads_copy_is_dropped_the_moment_any_thread_announces_a_change() {
        let c = Arc::new(listening(Duration::from_secs(30), &[("u", 1, "a")]));
        let (done, step) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let (c2, told, go) = (c.clone(), done.0, step.1);
        let worker = std::thread::spawn(move || {
            for _ in 0..3 {
                assert_eq!(c2.get("p", "u", Duration::ZERO).unwrap().1.creds.access_token, "a");
            }
            told.send(()).unwrap();
            go.recv().unwrap(); // the connection changed elsewhere
            assert!(c2.get("p", "u", Duration::ZERO).is_none(), "a stale copy was served");
            told.send(()).unwrap();
            go.recv().unwrap(); // a new token was stored
            assert_eq!(c2.get("p", "u", Duration::ZERO).unwrap().0, 2);
        });
        done.1.recv().unwrap();
        c.apply(Change::Connection { provider: "p".into(), connection_id: "u".into() });
        step.0.send(()).unwrap();
        done.1.recv().unwrap();
        put_fresh(&c, "u", 2, "b");
        step.0.send(()).unwrap();
        worker.join().unwrap();
        assert_eq!((c.hits.get(), c.misses.get()), (4, 1));
    }

    #[test]
    fn a_connection_this_process_changed_is_forgotten_by_every_thread_at_once() {
        let c = Arc::new(listening(Duration::from_secs(30), &[("u", 1, "refused"), ("v", 1, "other")]));
        let c2 = c.clone();
        let copied = std::thread::spawn(move || c2.get("p", "u", Duration::ZERO).is_some());
        assert!(copied.join().unwrap());
        c.forget("p", "u");
        let c2 = c.clone();
        let after = std::thread::spawn(move || {
            (c2.get("p", "u", Duration::ZERO).is_none(), c2.get("p", "v", Duration::ZERO).is_some())
        });
        assert_eq!(after.join().unwrap(), (true, true), "the forgotten entry is gone, the others stay");
        assert!(c.get("p", "u", Duration::ZERO).is_none());
    }

    #[test]
    fn a_copy_past_its_ttl_gives_way_to_the_token_stored_since() {
        let c = listening(Duration::from_millis(50), &[("u", 1, "a")]);
        assert_eq!(c.get("p", "u", Duration::ZERO).unwrap().0, 1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.get("p", "u", Duration::ZERO).is_none(), "past the TTL");
        put_fresh(&c, "u", 2, "b");
        for _ in 0..2 {
            assert_eq!(c.get("p", "u", Duration::ZERO).unwrap().0, 2);
        }
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
