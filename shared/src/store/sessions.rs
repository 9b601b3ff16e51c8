//! Connect sessions: created by a backend, opened once by the end user's browser (which binds
//! the OAuth `state` and PKCE verifier to them), consumed once by the callback.
//!
//! Only hashes of the session token and of the state are stored, and the verifier is sealed.
//! Opening and consuming are single statements, so of two racing requests exactly one wins.

use super::profile::Profile;
use super::{Store, StoreError};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Where a flow ends: back at the product's `return_url` (redirect mode), or on our own page
/// (no `return_url`, or popup mode, whose page tells the product's window by `postMessage`,
/// sent only to `return_url`'s origin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub return_url: Option<String>,
    pub popup: bool,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub token_hash: Vec<u8>,
    pub provider: String,
    pub connection_id: String,
    pub ending: Ending,
    pub expires_at: DateTime<Utc>,
    /// Whether the flow may replace an existing connection's credentials (a reconnect).
    pub may_replace: bool,
    /// The end user and tags the connection gets.
    pub profile: Profile,
    /// The id of the API key that created the session.
    pub created_by: Option<String>,
}

/// A session the browser just opened.
#[derive(Debug, Clone)]
pub struct StartedSession {
    pub provider: String,
    pub connection_id: String,
    pub ending: Ending,
}

/// A session the callback just consumed.
#[derive(Clone)]
pub struct ConsumedSession {
    pub provider: String,
    pub connection_id: String,
    pub ending: Ending,
    pub verifier: Option<String>,
    /// The SHA-256 of the browser-binding nonce set when the session was opened.
    pub browser_hash: Option<Vec<u8>>,
    /// Whether the flow may replace an existing connection's credentials.
    pub may_replace: bool,
    pub profile: Profile,
    pub created_by: Option<String>,
}

impl std::fmt::Debug for ConsumedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumedSession")
            .field("provider", &self.provider)
            .field("connection_id", &self.connection_id)
            .finish_non_exhaustive()
    }
}

/// Why a session or state could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionLookup {
    Unknown,
    Expired { ending: Ending },
    AlreadyUsed { ending: Ending },
}

/// The ending of a row selected as `return_url, <flag>, popup`.
fn ending_of(r: &tokio_postgres::Row) -> Ending {
    Ending { return_url: r.get(0), popup: r.get(2) }
}

/// The profile of a row whose `end_user` and `tags` columns are at `i` and `i + 1`.
fn profile_of(r: &tokio_postgres::Row, i: usize) -> Result<Profile, StoreError> {
    fn json<T: serde::de::DeserializeOwned>(v: Option<serde_json::Value>) -> Result<Option<T>, StoreError> {
        v.map(serde_json::from_value).transpose().map_err(|e| StoreError::Corrupt(format!("session profile: {e}")))
    }
    Ok(Profile { end_user: json(r.get(i))?, tags: json(r.get(i + 1))? })
}

fn verifier_aad(state_hash: &[u8]) -> Vec<u8> {
    format!("session-verifier:{}", hex::encode(state_hash)).into_bytes()
}

impl Store {
    pub async fn create_session(&self, s: &NewSession) -> Result<(), StoreError> {
        let client = self.client().await?;
        let insert = client
            .prepare_cached(
                "INSERT INTO connect_sessions (token_hash, provider, connection_id, return_url, expires_at, may_replace, popup,
                        end_user, tags, created_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .await?;
        client
            .execute(
                &insert,
                &[
                    &s.token_hash,
                    &s.provider,
                    &s.connection_id,
                    &s.ending.return_url,
                    &s.expires_at,
                    &s.may_replace,
                    &s.ending.popup,
                    &s.profile.end_user.as_ref().map(|u| serde_json::to_value(u).expect("end user serializes")),
                    &s.profile.tags.as_ref().map(|t| serde_json::to_value(t).expect("tags serialize")),
                    &s.created_by,
                ],
            )
            .await?;
        // Housekeeping: sessions are worthless a day after they expire.
        let purge =
            client.prepare_cached("DELETE FROM connect_sessions WHERE expires_at < now() - interval '1 day'").await?;
        client.execute(&purge, &[]).await?;
        Ok(())
    }

    /// The provider and ending of a session that can still be opened, without opening it.
    pub async fn peek_session(&self, token_hash: &[u8]) -> Result<Result<(String, Ending), SessionLookup>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT return_url, started_at IS NOT NULL, popup, provider, expires_at <= now()
                   FROM connect_sessions WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?;
        Ok(match row {
            None => Err(SessionLookup::Unknown),
            Some(r) if r.get::<_, bool>(1) => Err(SessionLookup::AlreadyUsed { ending: ending_of(&r) }),
            Some(r) if r.get::<_, bool>(4) => Err(SessionLookup::Expired { ending: ending_of(&r) }),
            Some(r) => Ok((r.get(3), ending_of(&r))),
        })
    }

    /// Opens a session once: binds the state, the verifier and the browser (the hash of the
    /// nonce in its cookie) to it and restarts its clock for the provider round trip.
    pub async fn start_session(
        &self,
        token_hash: &[u8],
        state_hash: &[u8],
        browser_hash: &[u8],
        verifier: Option<&str>,
        flow_ttl: Duration,
    ) -> Result<Result<StartedSession, SessionLookup>, StoreError> {
        let sealed = verifier.map(|v| self.keyring.seal(v.as_bytes(), &verifier_aad(state_hash)));
        let client = self.client().await?;
        let ttl_secs = flow_ttl.as_secs_f64();
        let stmt = client
            .prepare_cached(
                "UPDATE connect_sessions SET started_at = now(), state_hash = $2, verifier_key_id = $3,
                    verifier = $4, expires_at = now() + make_interval(secs => $5), browser_hash = $6
                 WHERE token_hash = $1 AND started_at IS NULL AND expires_at > now()
                 RETURNING provider, connection_id, return_url, popup",
            )
            .await?;
        let row = client
            .query_opt(
                &stmt,
                &[
                    &token_hash,
                    &state_hash,
                    &sealed.as_ref().map(|s| s.key_id.as_str()),
                    &sealed.as_ref().map(|s| s.blob.as_slice()),
                    &ttl_secs,
                    &browser_hash,
                ],
            )
            .await?;
        if let Some(r) = row {
            let ending = Ending { return_url: r.get(2), popup: r.get(3) };
            return Ok(Ok(StartedSession { provider: r.get(0), connection_id: r.get(1), ending }));
        }
        let why = client
            .query_opt(
                "SELECT return_url, started_at IS NOT NULL, popup FROM connect_sessions WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?;
        Ok(Err(match why {
            None => SessionLookup::Unknown,
            Some(r) if r.get::<_, bool>(1) => SessionLookup::AlreadyUsed { ending: ending_of(&r) },
            Some(r) => SessionLookup::Expired { ending: ending_of(&r) },
        }))
    }

    /// The session bound to a state, if it was opened and is neither consumed nor expired,
    /// without consuming it (a credential form may be sent again after a refusal). No verifier.
    pub async fn peek_state(&self, state_hash: &[u8]) -> Result<Result<ConsumedSession, SessionLookup>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT provider, connection_id, return_url, browser_hash, may_replace,
                        consumed_at IS NOT NULL, expires_at <= now(), popup, end_user, tags, created_by
                   FROM connect_sessions WHERE state_hash = $1",
                &[&state_hash],
            )
            .await?;
        let Some(r) = row else { return Ok(Err(SessionLookup::Unknown)) };
        let ending = Ending { return_url: r.get(2), popup: r.get(7) };
        if r.get::<_, bool>(5) {
            return Ok(Err(SessionLookup::AlreadyUsed { ending }));
        }
        if r.get::<_, bool>(6) {
            return Ok(Err(SessionLookup::Expired { ending }));
        }
        Ok(Ok(ConsumedSession {
            provider: r.get(0),
            connection_id: r.get(1),
            ending,
            verifier: None,
            browser_hash: r.get(3),
            may_replace: r.get(4),
            profile: profile_of(&r, 8)?,
            created_by: r.get(10),
        }))
    }

    /// Consumes the session bound to a state, once.
    pub async fn consume_state(&self, state_hash: &[u8]) -> Result<Result<ConsumedSession, SessionLookup>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE connect_sessions SET consumed_at = now()
                 WHERE state_hash = $1 AND consumed_at IS NULL AND expires_at > now()
                 RETURNING provider, connection_id, return_url, verifier_key_id, verifier, browser_hash, may_replace, popup,
                           end_user, tags, created_by",
            )
            .await?;
        let row = client.query_opt(&stmt, &[&state_hash]).await?;
        if let Some(r) = row {
            let key_id: Option<String> = r.get(3);
            let blob: Option<Vec<u8>> = r.get(4);
            let verifier = match (key_id, blob) {
                (Some(k), Some(b)) => {
                    let plain = self.keyring.open(&k, &b, &verifier_aad(state_hash))?;
                    Some(String::from_utf8(plain).map_err(|_| StoreError::Corrupt("verifier".into()))?)
                }
                _ => None,
            };
            return Ok(Ok(ConsumedSession {
                provider: r.get(0),
                connection_id: r.get(1),
                ending: Ending { return_url: r.get(2), popup: r.get(7) },
                verifier,
                browser_hash: r.get(5),
                may_replace: r.get(6),
                profile: profile_of(&r, 8)?,
                created_by: r.get(10),
            }));
        }
        let why = client
            .query_opt(
                "SELECT return_url, consumed_at IS NOT NULL, popup FROM connect_sessions WHERE state_hash = $1",
                &[&state_hash],
            )
            .await?;
        Ok(Err(match why {
            None => SessionLookup::Unknown,
            Some(r) if r.get::<_, bool>(1) => SessionLookup::AlreadyUsed { ending: ending_of(&r) },
            Some(r) => SessionLookup::Expired { ending: ending_of(&r) },
        }))
    }
}
