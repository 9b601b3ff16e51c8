//! The API key each caller connection presented last, and the decision for it.
//!
//! Services keep their connections to the proxy open and present the same key on every
//! request; remembering the decision per connection means such a request has its key neither
//! hashed nor looked up again. The shared [`Authenticator`] still decides every key it has not
//! seen on this connection, and a remembered decision expires with the lookup it came from, so
//! a revocation takes effect within the same TTL as everywhere else.

use shared::auth::{permit, unauthorized, valid_length, Authenticator, Caller, Scope};
use shared::http::ApiError;
use std::cell::RefCell;
use std::time::Instant;

/// One caller connection's memo.
#[derive(Default)]
pub struct ConnectionMemo {
    remembered: Option<Remembered>,
    /// The address the connection comes from (for the limit on failed authentications).
    client: Option<std::net::IpAddr>,
}

struct Remembered {
    authenticator: u64,
    presented: Box<[u8]>,
    decision: Option<Caller>,
    at: Instant,
}

impl ConnectionMemo {
    pub fn for_client(client: std::net::IpAddr) -> Self {
        Self { remembered: None, client: Some(client) }
    }

    fn recall(&self, auth: &Authenticator, presented: &[u8], now: Instant) -> Option<Option<Caller>> {
        let r = self.remembered.as_ref()?;
        let same = r.authenticator == auth.id()
            && shared::crypto::same_digest(&r.presented, presented)
            && now.duration_since(r.at) < auth.ttl();
        same.then(|| r.decision.clone())
    }
}

/// The caller presenting `presented` on the connection `memo` belongs to, if it holds `scope`
/// and is within its rate limit: 401 without a valid key, 429 past the key's limit, 403
/// without the scope (the checks actix's `Authorized` extractor makes for the gateway).
pub async fn authorize(
    auth: &Authenticator,
    memo: &RefCell<ConnectionMemo>,
    presented: Option<&str>,
    scope: Scope,
    limits: Option<&shared::limits::RateLimits>,
) -> Result<Caller, ApiError> {
    let Some(presented) = presented.filter(|p| valid_length(p)) else {
        return Err(unauthorized());
    };
    let now = crate::clock::recent();
    if let Some(decision) = memo.borrow().recall(auth, presented.as_bytes(), now) {
        return permit(decision.ok_or_else(unauthorized), scope, limits);
    }
    let (decision, at) = match auth.decide_cached(presented, now) {
        Ok(decided) => decided,
        // Boxed: the database lookup is the cold path.
        Err(digest) => {
            let client = memo.borrow().client;
            Box::pin(auth.look_up_decision(digest, client)).await?
        }
    };
    memo.borrow_mut().remembered = Some(Remembered {
        authenticator: auth.id(),
        presented: presented.as_bytes().into(),
        decision: decision.clone(),
        at,
    });
    permit(decision.ok_or_else(unauthorized), scope, limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::config::ApiKeys;
    use shared::http::ErrorCode;
    use std::time::Duration;

    fn authenticator(keys: &[&str], ttl: Duration) -> Authenticator {
        // 32 zero bytes.
        let keyring =
            shared::crypto::Keyring::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", None, &[]).unwrap();
        // Never connects: bootstrap keys are decided without the database.
        let store = shared::store::Store::new("postgres://postgres@127.0.0.1:9/none", 1, keyring).unwrap();
        Authenticator::new(ApiKeys::new(keys), store, ttl, 0)
    }

    #[tokio::test]
    async fn a_connections_memo_serves_only_the_key_it_holds_only_for_its_authenticator_and_only_within_the_ttl() {
        let (a, b) = ("bootstrap-key-number-one", "bootstrap-key-number-two");
        let auth = authenticator(&[a, b], Duration::from_millis(200));
        let memo = RefCell::new(ConnectionMemo::default());
        let now = crate::clock::recent();
        assert!(authorize(&auth, &memo, Some(a), Scope::Proxy, None).await.is_ok());
        assert!(memo.borrow().recall(&auth, a.as_bytes(), now).is_some_and(|d| d.is_some()));
        assert!(memo.borrow().recall(&auth, b.as_bytes(), now).is_none(), "another key is decided anew");
        assert!(memo.borrow().recall(&auth, &a.as_bytes()[..10], now).is_none(), "a prefix is another key");
        let other = authenticator(&[a], Duration::from_secs(60));
        assert!(memo.borrow().recall(&other, a.as_bytes(), now).is_none(), "another authenticator decides for itself");
        let later = now + Duration::from_millis(250);
        assert!(memo.borrow().recall(&auth, a.as_bytes(), later).is_none(), "past the TTL the key is checked again");
        // Malformed or absent keys are refused, and leave the memo as it was.
        for bad in [None, Some(""), Some(&*"x".repeat(513))] {
            let e = authorize(&auth, &memo, bad, Scope::Proxy, None).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::Unauthorized);
        }
        assert!(memo.borrow().recall(&auth, a.as_bytes(), now).is_some());
        // The memo holds the last key presented.
        assert!(authorize(&auth, &memo, Some(b), Scope::Proxy, None).await.is_ok());
        assert!(memo.borrow().recall(&auth, a.as_bytes(), now).is_none());
        assert!(memo.borrow().recall(&auth, b.as_bytes(), now).is_some());
    }

    #[tokio::test]
    async fn an_unknown_key_is_refused_whether_or_not_it_was_remembered() {
        let auth = authenticator(&["bootstrap-key-number-one"], Duration::from_secs(60));
        let memo = RefCell::new(ConnectionMemo::default());
        assert!(authorize(&auth, &memo, Some("bootstrap-key-number-one"), Scope::Proxy, None).await.is_ok());
        let e = authorize(&auth, &memo, Some("not-a-key-at-all-000"), Scope::Proxy, None).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized, "an unknown key is refused, remembered or not");
        let e = authorize(&auth, &memo, Some("not-a-key-at-all-000"), Scope::Proxy, None).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
    }
}
