//! Caller authentication and authorization.
//!
//! Internal callers present an API key as `Authorization: Bearer <key>`. Two kinds exist:
//! bootstrap keys from `AUTHBRIDGE_API_KEYS` (every scope; compared in constant time against
//! their digests) and keys created at run time through the gateway's `/v1/api-keys`, stored as
//! SHA-256 digests with scopes and an optional provider restriction. A handler states the
//! scope it needs in its signature — `Authorized<scope::Proxy>` — so no route can forget it.
//!
//! Looking a run-time key up by its digest reveals nothing useful through timing (an attacker
//! would need a preimage). Lookups are cached for `AUTHBRIDGE_API_KEY_CACHE_SECONDS` (default
//! 5), so a revocation takes effect everywhere within that time, without a restart.

use crate::config::ApiKeys;
use crate::http::{ApiError, ErrorCode};

#[cfg(feature = "actix")]
mod extractor;
use crate::store::Store;
#[cfg(feature = "actix")]
pub use extractor::*;
use sha2::{Digest, Sha256};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Create connect sessions.
    Connect,
    /// List providers and connections, read a connection's status.
    ConnectionsRead,
    /// Force a refresh, delete a connection.
    ConnectionsWrite,
    /// Read access tokens.
    TokensRead,
    /// Call providers' APIs through the proxy.
    Proxy,
    /// Manage API keys.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::Connect,
        Scope::ConnectionsRead,
        Scope::ConnectionsWrite,
        Scope::TokensRead,
        Scope::Proxy,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Connect => "connect",
            Scope::ConnectionsRead => "connections:read",
            Scope::ConnectionsWrite => "connections:write",
            Scope::TokensRead => "tokens:read",
            Scope::Proxy => "proxy",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Shared, not copied: a caller is cloned out of the lookup cache on every request.
    pub key_id: Arc<str>,
    scopes: u8,
    /// `None`: every provider.
    providers: Option<Arc<[String]>>,
}

impl Caller {
    fn bootstrap() -> Self {
        Self { key_id: "bootstrap".into(), scopes: Scope::ALL.iter().fold(0, |a, s| a | s.bit()), providers: None }
    }

    /// A copy that shares no reference count with the original (for another thread's cache).
    fn deep_copy(&self) -> Self {
        Self {
            key_id: Arc::from(&*self.key_id),
            scopes: self.scopes,
            providers: self.providers.as_deref().map(Arc::from),
        }
    }

    pub fn has(&self, s: Scope) -> bool {
        self.scopes & s.bit() != 0
    }

    /// Refuses a provider the key is not limited to.
    pub fn require_provider(&self, provider: &str) -> Result<(), ApiError> {
        match &self.providers {
            Some(list) if !list.iter().any(|p| p == provider) => Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("this API key may not be used for provider `{provider}`"),
            )),
            _ => Ok(()),
        }
    }

    /// Whether this caller may manage a key limited to `providers` (empty: every provider): a key
    /// limited to some providers manages only keys limited to some of those, so it can neither
    /// see nor revoke a key that reaches further than it does.
    pub fn may_manage(&self, providers: &[String]) -> bool {
        match &self.providers {
            None => true,
            Some(own) => !providers.is_empty() && providers.iter().all(|p| own.iter().any(|o| o == p)),
        }
    }

    /// Whether this caller may create a key with these scopes and providers: only a subset of
    /// its own, so creating keys never widens what a caller can do.
    pub fn may_grant(&self, scopes: &[Scope], providers: &[String]) -> bool {
        scopes.iter().all(|s| self.has(*s)) && self.may_manage(providers)
    }

    /// The providers the key is limited to, if it is.
    pub fn providers(&self) -> Option<&[String]> {
        self.providers.as_deref()
    }
}

const CACHE_LIMIT: usize = 10_000;

/// What a run-time key starts with; the rest is 43 characters of randomness (base64url of 32
/// bytes) and 6 of checksum, so a key that was never issued is told from one that may have been
/// without a database lookup. Keys issued before the checksum (`abk_` and 43 characters) are
/// still looked up.
pub const KEY_PREFIX: &str = "abk1_";
const LEGACY_PREFIX: &str = "abk_";
const KEY_RANDOM: usize = 43;
const KEY_CHECK: usize = 6;

/// A new run-time API key.
pub fn new_api_key() -> String {
    let random = crate::crypto::random_token();
    format!("{KEY_PREFIX}{random}{}", key_checksum(&random))
}

fn key_checksum(random: &str) -> String {
    use base64::Engine;
    let digest = Sha256::digest(format!("authbridge api key v1:{random}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..4])
}

/// Whether `presented` could be a run-time key, and so is worth looking up: the current format
/// with a valid checksum, or the legacy format.
pub fn may_be_issued(presented: &str) -> bool {
    let b64 = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if let Some(rest) = presented.strip_prefix(KEY_PREFIX) {
        return rest.len() == KEY_RANDOM + KEY_CHECK
            && b64(rest)
            && crate::crypto::same_digest(
                key_checksum(&rest[..KEY_RANDOM]).as_bytes(),
                &rest.as_bytes()[KEY_RANDOM..],
            );
    }
    presented.strip_prefix(LEGACY_PREFIX).is_some_and(|rest| rest.len() == KEY_RANDOM && b64(rest))
}

/// Digest of a presented key → the caller it named, and when it was looked up.
type LookupCache = foldhash::HashMap<[u8; 32], (Option<Caller>, Instant)>;
/// Digests of keys a lookup found no live key for, and when (kept apart from the hits, so a
/// flood of unknown keys can only ever evict other unknown keys).
type MissCache = foldhash::HashMap<[u8; 32], Instant>;
/// The same, per thread, for every authenticator in the process (keyed by its id too).
type LocalCache = foldhash::HashMap<(u64, [u8; 32]), (Option<Caller>, Instant)>;

/// Gives each authenticator an identity that is never reused, for the per-thread cache.
static NEXT_AUTHENTICATOR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    /// Each worker thread's own copy of the decisions it has used, by authenticator and digest:
    /// a request is checked without touching memory that another core writes (the shared
    /// cache's lock, a shared reference count). An entry keeps the time of the lookup it was
    /// copied from, so it expires with it and a revocation still takes effect within the TTL.
    static LOCAL: std::cell::RefCell<LocalCache> = std::cell::RefCell::new(LocalCache::default());
}

/// Checks presented keys; one per process, shared by its workers.
pub struct Authenticator {
    id: u64,
    bootstrap: ApiKeys,
    bootstrap_caller: Caller,
    store: Store,
    ttl: Duration,
    /// Read on every request by every worker, written only on a miss.
    cache: RwLock<LookupCache>,
    misses: RwLock<MissCache>,
    /// Failed lookups per client address; past the limit, an address's unknown keys are refused
    /// (429) until the time noted in `blocked`, without a lookup.
    failures: Option<crate::limits::Limiter>,
    blocked: std::sync::Mutex<foldhash::HashMap<std::net::IpAddr, Instant>>,
    lookups: std::sync::atomic::AtomicU64,
    /// How old (ms) a decision that named a caller may be and still be used when the database
    /// cannot be reached (0: never).
    stale_ms: std::sync::atomic::AtomicU64,
    /// Until when lookups are not tried again after the database could not be reached.
    down_until: std::sync::Mutex<Option<Instant>>,
}

impl Authenticator {
    /// `failures_per_address`: failed lookups per second one client address may cause (0: no
    /// limit).
    pub fn new(bootstrap: ApiKeys, store: Store, ttl: Duration, failures_per_address: u32) -> Self {
        Self {
            id: NEXT_AUTHENTICATOR.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            bootstrap,
            bootstrap_caller: Caller::bootstrap(),
            store,
            ttl,
            cache: RwLock::new(LookupCache::default()),
            misses: RwLock::new(MissCache::default()),
            failures: crate::limits::Limiter::new(failures_per_address, "client address's failed authentications"),
            blocked: Default::default(),
            lookups: Default::default(),
            stale_ms: Default::default(),
            down_until: Default::default(),
        }
    }

    /// Lets decisions that named a caller, up to `age` old, stand in while the database cannot
    /// be reached: a key in use keeps working through an outage (nothing can be revoked while
    /// it lasts). Unknown keys are never decided so.
    pub fn serve_stale_for(&self, age: Duration) {
        self.stale_ms.store(age.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// This authenticator's identity, never reused in the process: what a decision remembered
    /// outside it is tied to.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// How long a decision may be used before the key is looked up again.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How many keys were looked up in the database so far.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The authenticator's metrics, in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        crate::metrics::counter(
            out,
            "authbridge_api_key_lookups_total",
            "API keys looked up in the database (keys not in memory that could have been issued).",
            self.lookups(),
        );
    }

    pub async fn authenticate(
        &self,
        presented: Option<&str>,
        client: Option<std::net::IpAddr>,
    ) -> Result<Caller, ApiError> {
        match self.authenticate_now(presented) {
            Ok(done) => done,
            Err(digest) => self.look_up(digest, client).await,
        }
    }

    /// Decides without I/O when it can (a bootstrap key, a malformed one, or a cached lookup);
    /// otherwise returns the digest to look up.
    fn authenticate_now(&self, presented: Option<&str>) -> Result<Result<Caller, ApiError>, [u8; 32]> {
        let Some(presented) = presented.filter(|p| valid_length(p)) else {
            return Ok(Err(unauthorized()));
        };
        self.decide_cached(presented, Instant::now()).map(|(decision, _)| decision.ok_or_else(unauthorized))
    }

    /// The decision for a key (the caller it names, or `None`: no live key) and the time of the
    /// lookup it comes from, if a cache holds it (fresh at `now`); otherwise the digest to look
    /// up with [`Authenticator::look_up_decision`]. A server that reads the clock once per
    /// request passes that reading as `now`.
    pub fn decide_cached(&self, presented: &str, now: Instant) -> Result<(Option<Caller>, Instant), [u8; 32]> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let local = LOCAL.with(|l| {
            let l = l.borrow();
            let (hit, at) = l.get(&(self.id, digest))?;
            (now.duration_since(*at) < self.ttl).then(|| (hit.clone(), *at))
        });
        if let Some(decided) = local {
            return Ok(decided);
        }
        let shared = if self.bootstrap.verify_digest(&digest) {
            Some((Some(self.bootstrap_caller.clone()), now))
        } else {
            self.cache.read().unwrap().get(&digest).filter(|(_, at)| now.duration_since(*at) < self.ttl).cloned()
        };
        let Some((hit, at)) = shared else {
            let missed = self.misses.read().unwrap().get(&digest).copied();
            if let Some(at) = missed.filter(|at| now.duration_since(*at) < self.ttl) {
                return Ok((None, at));
            }
            // A key we cannot have issued is refused without a lookup (and without a cache
            // entry: deciding it again is as cheap).
            if !may_be_issued(presented) {
                return Ok((None, now));
            }
            return Err(digest);
        };
        // Only keys that name a caller are copied per thread: unknown keys, of which there can
        // be any number, never push out the ones in use.
        let copy = hit.as_ref().map(Caller::deep_copy);
        if copy.is_some() {
            LOCAL.with(|l| {
                let mut l = l.borrow_mut();
                if l.len() >= CACHE_LIMIT {
                    l.clear();
                }
                l.insert((self.id, digest), (copy.clone(), at));
            });
        }
        Ok((copy, at))
    }

    async fn look_up(&self, digest: [u8; 32], client: Option<std::net::IpAddr>) -> Result<Caller, ApiError> {
        self.look_up_decision(digest, client).await?.0.ok_or_else(unauthorized)
    }

    /// Looks a key up by its digest (from [`Authenticator::decide_cached`]) and caches the
    /// decision: the caller it names, or `None`, and when it was made. `client` is the address
    /// it came from, for the limit on failed authentications.
    pub async fn look_up_decision(
        &self,
        digest: [u8; 32],
        client: Option<std::net::IpAddr>,
    ) -> Result<(Option<Caller>, Instant), ApiError> {
        let now = Instant::now();
        // A key that named a caller before (its entry expired) is looked up even from a blocked
        // address: callers sharing an address with a flood keep working.
        let known = self.cache.read().unwrap().contains_key(&digest);
        if let Some(ip) = client.filter(|_| !known) {
            if let Some(until) = self.blocked.lock().unwrap().get(&ip).copied().filter(|u| *u > now) {
                let mut e = ApiError::new(ErrorCode::RateLimited, "too many failed authentications from this address");
                e.retry_after = Some((until - now).max(Duration::from_secs(1)));
                return Err(e);
            }
        }
        // What a lookup found before, if it named a caller recently enough to stand in while
        // the database cannot be reached (kept at its lookup's time, so it is looked up again).
        let stale = || {
            let age = Duration::from_millis(self.stale_ms.load(std::sync::atomic::Ordering::Relaxed));
            let last = self.cache.read().unwrap().get(&digest).cloned();
            last.filter(|(caller, at)| caller.is_some() && !age.is_zero() && now.duration_since(*at) < age)
        };
        if self.down_until.lock().unwrap().is_some_and(|t| now < t) {
            return stale().ok_or_else(|| crate::store::StoreError::Unreachable.into());
        }
        self.lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let found = match self.store.find_api_key(&digest).await {
            Ok(found) => found,
            Err(e) if e.is_unavailable() => {
                *self.down_until.lock().unwrap() = Some(Instant::now() + Duration::from_secs(1));
                return stale().ok_or_else(|| e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let found = found.map(|r| Caller {
            key_id: r.id.into(),
            scopes: r.scopes.iter().filter_map(|s| Scope::parse(s)).fold(0, |a, s| a | s.bit()),
            providers: (!r.providers.is_empty()).then(|| r.providers.into()),
        });
        let at = Instant::now();
        if found.is_some() {
            let mut cache = self.cache.write().unwrap();
            // Hits are bounded by the keys that exist; the guard is for a store of many keys.
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(digest, (found.clone(), at));
        } else {
            {
                let mut misses = self.misses.write().unwrap();
                if misses.len() >= CACHE_LIMIT {
                    misses.retain(|_, t| at.duration_since(*t) < self.ttl);
                    if misses.len() >= CACHE_LIMIT {
                        misses.clear();
                    }
                }
                misses.insert(digest, at);
            }
            if let (Some(ip), Some(limit)) = (client, &self.failures) {
                if let Err(e) = limit.check(&ip.to_string()) {
                    let mut blocked = self.blocked.lock().unwrap();
                    if blocked.len() >= CACHE_LIMIT {
                        blocked.retain(|_, u| *u > at);
                    }
                    blocked.insert(ip, at + e.retry_after.unwrap_or(Duration::from_secs(1)));
                }
            }
        }
        Ok((found, at))
    }
}

/// Whether a presented key has a length a key can have: never empty, never longer than 512.
pub fn valid_length(presented: &str) -> bool {
    !presented.is_empty() && presented.len() <= 512
}

/// The refusal of a request without a usable key.
pub fn unauthorized() -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, "a valid API key is required: Authorization: Bearer <key>")
}

/// Marker types naming the scope a handler needs.
pub mod scope {
    use super::Scope;

    pub trait Required {
        const SCOPE: Scope;
    }

    macro_rules! scopes {
        ($($name:ident => $scope:expr),* $(,)?) => {
            $(
                #[derive(Debug)]
                pub struct $name;
                impl Required for $name {
                    const SCOPE: Scope = $scope;
                }
            )*
        };
    }

    scopes! {
        Connect => Scope::Connect,
        ConnectionsRead => Scope::ConnectionsRead,
        ConnectionsWrite => Scope::ConnectionsWrite,
        TokensRead => Scope::TokensRead,
        Proxy => Scope::Proxy,
        Admin => Scope::Admin,
    }
}

/// An authenticated caller, checked against its key's rate limit and for `scope`.
pub fn permit(
    caller: Result<Caller, ApiError>,
    scope: Scope,
    limits: Option<&crate::limits::RateLimits>,
) -> Result<Caller, ApiError> {
    let caller = caller?;
    if let Some(l) = limits.and_then(|l| l.per_key.as_ref()) {
        l.check(&caller.key_id)?;
    }
    if !caller.has(scope) {
        return Err(ApiError::new(ErrorCode::Forbidden, format!("this API key lacks the `{}` scope", scope.as_str())));
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_and_providers_limit() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scope::parse("root"), None);
        let c = Caller {
            key_id: "k".into(),
            scopes: Scope::Proxy.bit(),
            providers: Some(vec!["kartra".to_owned()].into()),
        };
        assert!(c.has(Scope::Proxy) && !c.has(Scope::Admin));
        assert!(c.require_provider("kartra").is_ok());
        assert!(c.require_provider("redtail").is_err());
        assert!(Caller::bootstrap().has(Scope::Admin));
    }

    #[test]
    fn only_keys_that_could_have_been_issued_are_worth_a_lookup() {
        for _ in 0..100 {
            let key = new_api_key();
            assert!(may_be_issued(&key), "{key}");
            // Any one character changed breaks the checksum (or the format).
            let i = KEY_PREFIX.len() + (key.len() - KEY_PREFIX.len()) / 2;
            let mut bytes = key.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            assert!(!may_be_issued(std::str::from_utf8(&bytes).unwrap()), "{key}");
        }
        let legacy = format!("abk_{}", crate::crypto::random_token());
        assert!(may_be_issued(&legacy), "keys issued before the checksum are still looked up");
        for bad in ["", "abk1_", "abk_short", "random-key-0123456789", &format!("abk1_{}", "A".repeat(49))] {
            assert!(!may_be_issued(bad), "{bad}");
        }
    }
}
