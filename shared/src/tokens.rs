//! Token lifecycle shared by every service: storing authorized tokens, handing out a valid
//! token, and the single-flight refresh.
//!
//! Every refresh of a connection, whoever starts it, goes through [`TokenService::refresh`]:
//! it takes the connection's row lock, re-reads the row, and only calls the provider if the
//! token it meant to refresh is still the stored one. A second caller blocked on the lock
//! finds the new token and returns it. This is what keeps providers that rotate refresh tokens
//! from seeing the same refresh token twice.

use crate::catalog::Catalog;
use crate::config::CommonSettings;
use crate::credentials::CredentialClient;
use crate::messaging::ExpiryEvent;
use crate::oauth::{OAuthClient, OAuthError, TokenResponse};
use crate::store::{Actor, Connection, ConnectionStatus, Credentials, NewTokens, Profile, Store, StoreError};
use chrono::{DateTime, Utc};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// When to refresh, how long a token must stay valid, how to back off.
#[derive(Debug, Clone)]
pub struct Policy {
    pub refresh_margin: Duration,
    pub idle_refresh_interval: Duration,
    pub min_token_validity: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long refreshes may fail for reasons that may pass before the product is told
    /// (`connection.refresh_failing`).
    pub failing_after: Duration,
}

impl Policy {
    pub fn from_settings(s: &CommonSettings) -> Self {
        Self {
            refresh_margin: s.refresh_margin,
            idle_refresh_interval: s.idle_refresh_interval,
            min_token_validity: s.min_token_validity,
            retry_base: s.retry_base,
            retry_max: s.retry_max,
            failing_after: s.refresh_failing_after,
        }
    }

    /// When a token should be refreshed: `margin` before expiry, but never later than half its
    /// life (a token that lives shorter than the margin is refreshed at half-life), and at
    /// least every `idle_refresh_interval` (some providers retire unused refresh tokens).
    /// `None` when there is nothing to refresh with.
    pub fn refresh_due(
        &self,
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
        has_refresh_token: bool,
        margin: Option<Duration>,
    ) -> Option<DateTime<Utc>> {
        if !has_refresh_token {
            return None;
        }
        let idle = now + chrono::Duration::from_std(self.idle_refresh_interval).unwrap_or(chrono::Duration::days(1));
        let Some(exp) = expires_at else {
            return Some(idle);
        };
        let life = (exp - now).to_std().unwrap_or(Duration::ZERO);
        let margin = margin.unwrap_or(self.refresh_margin).min(life / 2);
        let due = exp - chrono::Duration::from_std(margin).unwrap_or_default();
        Some(due.max(now).min(idle))
    }

    /// Delay before retry number `attempt` (1-based): capped exponential with ±20% jitter,
    /// never shorter than what the provider asked for with `Retry-After`.
    pub fn retry_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self.retry_base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.retry_max);
        let jittered = capped.mul_f64(rand::thread_rng().gen_range(0.8..1.2));
        jittered.max(retry_after.unwrap_or(Duration::ZERO).min(Duration::from_secs(3600)))
    }
}

/// What a caller wants from [`TokenService::refresh`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An expiry event for this token version, scheduled for `due_at`, fell due.
    Scheduled { version: i64, attempt: u32, due_at: DateTime<Utc> },
    /// The provider's API refused this token version with 401.
    Unauthorized { version: i64 },
    /// Refresh only if the token is about to expire.
    EnsureFresh,
    /// An operator asked for a refresh now.
    Force,
}

/// What happened.
#[derive(Debug)]
pub enum Outcome {
    /// This call refreshed the token.
    Refreshed(Connection, Credentials),
    /// Nothing to do: the stored token is already newer or still fresh.
    Current(Connection, Credentials),
    /// The event is not due yet (a duplicate or an outdated copy): nothing done.
    NotDue,
    NotFound,
    NeedsReauth {
        reason: String,
    },
    /// The refresh failed for a reason that may pass; the old token is kept.
    Failed {
        error: OAuthError,
        retry_at: Option<DateTime<Utc>>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("provider `{0}` is not in the catalog")]
    UnknownProvider(String),
}

/// Turns a token response into what is stored, keeping the old refresh token when the
/// provider sends none (RFC 6749 §6 allows that) and the granted scopes when it says none.
pub fn new_tokens(
    policy: &Policy,
    margin: Option<Duration>,
    resp: TokenResponse,
    old: Option<&Credentials>,
    requested_scopes: &[String],
) -> NewTokens {
    let expires_at = resp.expires_in.map(|d| resp.requested_at + chrono::Duration::from_std(d).unwrap_or_default());
    let refresh_token = resp.refresh_token.or_else(|| old.and_then(|c| c.refresh_token.clone()));
    let scopes = match &resp.scope {
        Some(s) => s.split([' ', ',']).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        None => requested_scopes.to_vec(),
    };
    let refresh_due_at = policy.refresh_due(Utc::now(), expires_at, refresh_token.is_some(), margin);
    NewTokens {
        credentials: Credentials {
            access_token: resp.access_token,
            refresh_token,
            token_type: resp.token_type,
            extra: resp.extra,
            values: Default::default(),
        },
        scopes,
        expires_at,
        refresh_due_at,
    }
}

/// The expiry event that schedules a connection's next refresh, if it has one.
pub fn expiry_event(c: &Connection, attempt: u32) -> Option<ExpiryEvent> {
    Some(ExpiryEvent {
        provider: c.provider.clone(),
        connection_id: c.connection_id.clone(),
        token_version: c.token_version,
        due_at: c.refresh_due_at?,
        attempt,
        traceparent: crate::telemetry::current_traceparent(),
    })
}

fn schedule_for(
    provider: &str,
    connection_id: &str,
    version: i64,
    due: Option<DateTime<Utc>>,
) -> Vec<crate::store::OutboxMessage> {
    due.map(|due_at| {
        ExpiryEvent {
            provider: provider.to_owned(),
            connection_id: connection_id.to_owned(),
            token_version: version,
            due_at,
            attempt: 0,
            traceparent: crate::telemetry::current_traceparent(),
        }
        .to_outbox()
    })
    .into_iter()
    .collect()
}

/// The shared token logic, one per process.
#[derive(Clone)]
pub struct TokenService {
    pub store: Store,
    pub catalog: Arc<Catalog>,
    pub oauth: OAuthClient,
    /// Verifies and re-checks the credentials of `api_key`, `basic` and `two_step` connections.
    pub credentials: CredentialClient,
    pub policy: Policy,
    /// Woken after every commit that wrote an outbox event, so the relay publishes at once.
    pub outbox_signal: Arc<Notify>,
}

impl TokenService {
    pub fn new(store: Store, settings: &CommonSettings) -> Self {
        let oauth = OAuthClient::new(settings.provider_timeout);
        Self {
            store,
            catalog: Arc::new(settings.catalog.clone()),
            credentials: CredentialClient::new(oauth.http()),
            oauth,
            policy: Policy::from_settings(settings),
            outbox_signal: Arc::new(Notify::new()),
        }
    }

    /// Stores the tokens of a completed authorization and schedules their refresh, atomically.
    pub async fn store_authorized(
        &self,
        provider: &str,
        connection_id: &str,
        resp: TokenResponse,
        profile: &Profile,
        actor: &Actor,
    ) -> Result<Connection, TokenError> {
        let p = self.catalog.get(provider).ok_or_else(|| TokenError::UnknownProvider(provider.to_owned()))?;
        let tokens = new_tokens(&self.policy, p.refresh_margin, resp, None, &p.scopes);
        self.save(provider, connection_id, &tokens, profile, actor).await
    }

    /// Stores a connection's new tokens or values and its next refresh or check (the event in
    /// the same transaction, with the webhook events and the audit entry), and wakes the relay.
    async fn save(
        &self,
        provider: &str,
        connection_id: &str,
        tokens: &NewTokens,
        profile: &Profile,
        actor: &Actor,
    ) -> Result<Connection, TokenError> {
        let due = tokens.refresh_due_at;
        let conn = self
            .store
            .save_authorized(provider, connection_id, tokens, profile, actor, |v| {
                schedule_for(provider, connection_id, v, due)
            })
            .await?;
        self.outbox_signal.notify_one();
        Ok(conn)
    }

    /// Verifies an end user's credentials with the provider and, when it accepts them, stores
    /// what the provider's mode keeps (never a `two_step` mode's password) and schedules the
    /// next check, atomically. The inner `Err` is the provider's refusal or unavailability:
    /// nothing was stored.
    pub async fn connect_with_credentials(
        &self,
        provider: &str,
        connection_id: &str,
        given: &std::collections::BTreeMap<String, String>,
        profile: &Profile,
        actor: &Actor,
    ) -> Result<Result<Connection, OAuthError>, TokenError> {
        let p = self.catalog.get(provider).ok_or_else(|| TokenError::UnknownProvider(provider.to_owned()))?;
        let stored = match self.verify_credentials(p, given).await {
            Ok(stored) => stored,
            Err(e) => return Ok(Err(e)),
        };
        self.store_credentials(p, connection_id, stored, profile, actor).await.map(Ok)
    }

    /// Has the provider check an end user's values; what it accepts comes back as the values
    /// to store (for `two_step`, the derived ones). Nothing is stored.
    pub async fn verify_credentials(
        &self,
        p: &crate::catalog::Provider,
        given: &std::collections::BTreeMap<String, String>,
    ) -> Result<std::collections::BTreeMap<String, String>, OAuthError> {
        let Some(spec) = &p.credentials else {
            return Err(OAuthError::NotConfigured(p.id.clone()));
        };
        self.credentials.connect(p, spec, given).await
    }

    /// Stores values [`Self::verify_credentials`] returned and schedules their next check,
    /// atomically.
    pub async fn store_credentials(
        &self,
        p: &crate::catalog::Provider,
        connection_id: &str,
        stored: std::collections::BTreeMap<String, String>,
        profile: &Profile,
        actor: &Actor,
    ) -> Result<Connection, TokenError> {
        let provider = p.id.as_str();
        let due = self.next_check(p);
        let tokens = NewTokens {
            credentials: Credentials::from_values(stored),
            scopes: p.scopes.clone(),
            expires_at: None,
            refresh_due_at: Some(due),
        };
        self.save(provider, connection_id, &tokens, profile, actor).await
    }

    /// Connects a client-credentials (machine-to-machine) connection: the first token is
    /// fetched with the operator's client id and secret and stored, its refresh scheduled
    /// before it expires. The inner `Err` is the provider's refusal: nothing was stored.
    pub async fn connect_machine(
        &self,
        provider: &str,
        connection_id: &str,
        profile: &Profile,
        actor: &Actor,
    ) -> Result<Result<Connection, OAuthError>, TokenError> {
        let p = self.catalog.get(provider).ok_or_else(|| TokenError::UnknownProvider(provider.to_owned()))?;
        let resp = match self.oauth.client_credentials(p).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let tokens = self.machine_tokens(p, resp);
        self.save(provider, connection_id, &tokens, profile, actor).await.map(Ok)
    }

    /// A client-credentials token, scheduled for renewal before it expires whether or not
    /// the provider sent a refresh token (it is not used: the client fetches a new one).
    fn machine_tokens(&self, p: &crate::catalog::Provider, resp: crate::oauth::TokenResponse) -> NewTokens {
        let mut tokens = new_tokens(&self.policy, p.refresh_margin, resp, None, &p.scopes);
        tokens.credentials.refresh_token = None;
        tokens.refresh_due_at = self.policy.refresh_due(Utc::now(), tokens.expires_at, true, p.refresh_margin);
        tokens
    }

    /// When a credential connection of `p` is checked next.
    fn next_check(&self, p: &crate::catalog::Provider) -> DateTime<Utc> {
        let every = p.credentials.as_ref().map_or(self.policy.idle_refresh_interval, |s| s.recheck);
        Utc::now() + chrono::Duration::from_std(every).unwrap_or(chrono::Duration::days(1))
    }

    /// A token that stays valid for at least `min_token_validity`, refreshing first if needed.
    pub async fn valid_token(&self, provider: &str, connection_id: &str) -> Result<Outcome, TokenError> {
        let Some(conn) = self.store.get_connection(provider, connection_id).await? else {
            return Ok(Outcome::NotFound);
        };
        if conn.status == ConnectionStatus::NeedsReauth {
            return Ok(Outcome::NeedsReauth { reason: conn.last_error.clone().unwrap_or_default() });
        }
        if !self.expires_soon(&conn) {
            let creds = self.store.open_credentials(&conn)?;
            return Ok(Outcome::Current(conn, creds));
        }
        self.refresh(provider, connection_id, Trigger::EnsureFresh).await
    }

    fn expires_soon(&self, c: &Connection) -> bool {
        let min = chrono::Duration::from_std(self.policy.min_token_validity).unwrap_or_default();
        c.expires_at.is_some_and(|e| e <= Utc::now() + min)
    }

    /// The single-flight refresh. See the module documentation.
    #[tracing::instrument(skip(self), fields(outcome))]
    pub async fn refresh(&self, provider: &str, connection_id: &str, trigger: Trigger) -> Result<Outcome, TokenError> {
        let p = self.catalog.get(provider).ok_or_else(|| TokenError::UnknownProvider(provider.to_owned()))?;
        let Some(guard) = self.store.lock_for_refresh(provider, connection_id).await? else {
            return Ok(Outcome::NotFound);
        };
        let conn = guard.connection().clone();
        if conn.status == ConnectionStatus::NeedsReauth {
            guard.rollback().await?;
            return Ok(Outcome::NeedsReauth { reason: conn.last_error.unwrap_or_default() });
        }
        let now = Utc::now();
        let proceed = match trigger {
            Trigger::Scheduled { version, due_at, .. } => {
                // A credential check keeps the version, so an event of an older schedule is
                // told apart by the time it was scheduled for.
                let superseded = |d: DateTime<Utc>| d > due_at + chrono::Duration::milliseconds(1);
                if version != conn.token_version {
                    false
                } else if conn.refresh_due_at.is_none_or(|d| d > now + chrono::Duration::seconds(1) || superseded(d)) {
                    // An outdated copy: the connection was scheduled again (a retry, or a check
                    // that passed), or nothing is scheduled.
                    guard.rollback().await?;
                    tracing::Span::current().record("outcome", "not_due");
                    return Ok(Outcome::NotDue);
                } else {
                    true
                }
            }
            Trigger::Unauthorized { version } => version == conn.token_version,
            Trigger::EnsureFresh => self.expires_soon(&conn),
            Trigger::Force => true,
        };
        let creds = guard.credentials()?;
        if !proceed {
            guard.rollback().await?;
            tracing::Span::current().record("outcome", "current");
            return Ok(Outcome::Current(conn, creds));
        }
        // OAuth tokens are refreshed; a credential connection's values are checked again.
        let renewed = match &p.credentials {
            Some(spec) => self.credentials.check(p, spec, &creds.values).await.map(|()| None),
            None if p.auth == crate::credentials::AuthMode::OAuth2ClientCredentials => {
                self.oauth.client_credentials(p).await.map(|resp| Some(self.machine_tokens(p, resp)))
            }
            None => {
                let Some(refresh_token) = creds.refresh_token.clone() else {
                    // Nothing to refresh with. An expired token without a refresh token is dead.
                    if conn.expires_at.is_some_and(|e| e <= now) || matches!(trigger, Trigger::Unauthorized { .. }) {
                        guard.commit_needs_reauth("no_refresh_token: the provider issued no refresh token").await?;
                        self.outbox_signal.notify_one();
                        return Ok(Outcome::NeedsReauth { reason: "no_refresh_token".into() });
                    }
                    guard.rollback().await?;
                    return Ok(Outcome::Current(conn, creds));
                };
                self.oauth
                    .refresh(p, &refresh_token)
                    .await
                    .map(|resp| Some(new_tokens(&self.policy, p.refresh_margin, resp, Some(&creds), &conn.scopes)))
            }
        };
        match renewed {
            Ok(Some(tokens)) => {
                let due = tokens.refresh_due_at;
                let updated =
                    guard.commit_refreshed(&tokens, |v| schedule_for(provider, connection_id, v, due)).await?;
                self.outbox_signal.notify_one();
                tracing::Span::current().record("outcome", "refreshed");
                tracing::info!(token_version = updated.token_version, "token refreshed");
                Ok(Outcome::Refreshed(updated, tokens.credentials))
            }
            Ok(None) => {
                let due = self.next_check(p);
                let updated =
                    guard.commit_checked(due, |v| schedule_for(provider, connection_id, v, Some(due))).await?;
                self.outbox_signal.notify_one();
                tracing::Span::current().record("outcome", "checked");
                tracing::info!("credentials checked: they still work");
                Ok(Outcome::Current(updated, creds))
            }
            // A client-credentials connection's grant is the client itself: a refused client
            // needs the operator (new credentials, then the connection created again).
            Err(e)
                if e.is_permanent()
                    || (p.auth == crate::credentials::AuthMode::OAuth2ClientCredentials && e.is_client_refused()) =>
            {
                let reason = e.to_string();
                guard.commit_needs_reauth(&reason).await?;
                self.outbox_signal.notify_one();
                tracing::Span::current().record("outcome", "needs_reauth");
                tracing::warn!(error = %reason, "provider refused the refresh token; connection needs re-authorization");
                Ok(Outcome::NeedsReauth { reason })
            }
            Err(e) => {
                let reason = e.to_string();
                // Only the scheduled chain reschedules itself: other triggers must not multiply
                // the pending events of a connection.
                let retry = match trigger {
                    Trigger::Scheduled { attempt, .. } => {
                        let retry_after = match &e {
                            OAuthError::Transient { retry_after, .. } => *retry_after,
                            _ => None,
                        };
                        let at = now
                            + chrono::Duration::from_std(self.policy.retry_delay(attempt + 1, retry_after))
                                .unwrap_or_default();
                        let ev = ExpiryEvent {
                            provider: provider.to_owned(),
                            connection_id: connection_id.to_owned(),
                            token_version: conn.token_version,
                            due_at: at,
                            attempt: attempt + 1,
                            traceparent: crate::telemetry::current_traceparent(),
                        };
                        Some((at, ev.to_outbox()))
                    }
                    _ => None,
                };
                let retry_at = retry.as_ref().map(|(at, _)| *at);
                guard.commit_failure(&reason, retry, self.policy.failing_after).await?;
                // A retry event, or a `refresh_failing` announcement, may be waiting.
                self.outbox_signal.notify_one();
                tracing::Span::current().record("outcome", "failed");
                tracing::warn!(error = %reason, ?retry_at, "refresh failed; keeping the current token");
                Ok(Outcome::Failed { error: e, retry_at })
            }
        }
    }
}

/// Runs the outbox relay until `shutdown` fires: publishes pending events with confirms,
/// woken by `signal` after commits and at least every `poll`.
pub async fn run_relay(
    store: Store,
    broker: Arc<crate::messaging::Broker>,
    signal: Arc<Notify>,
    poll: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let b = broker.clone();
        match store.relay_outbox(200, |rows| async move { b.publish_outbox(rows).await }).await {
            Ok(200) => continue,
            Ok(_) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay cannot reach the database");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        tokio::select! {
            _ = signal.notified() => {}
            _ = tokio::time::sleep(poll.max(backoff)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            refresh_margin: Duration::from_secs(300),
            idle_refresh_interval: Duration::from_secs(86_400),
            min_token_validity: Duration::from_secs(10),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(600),
            failing_after: Duration::from_secs(900),
        }
    }

    #[test]
    fn long_tokens_refresh_a_margin_before_expiry_short_ones_at_half_life() {
        let p = policy();
        let now = Utc::now();
        let hour = now + chrono::Duration::seconds(3600);
        assert_eq!(p.refresh_due(now, Some(hour), true, None), Some(hour - chrono::Duration::seconds(300)));
        let short = now + chrono::Duration::seconds(60);
        assert_eq!(p.refresh_due(now, Some(short), true, None), Some(now + chrono::Duration::seconds(30)));
        assert_eq!(
            p.refresh_due(now, Some(hour), true, Some(Duration::from_secs(60))),
            Some(hour - chrono::Duration::seconds(60))
        );
        assert_eq!(p.refresh_due(now, Some(hour), false, None), None);
        assert_eq!(p.refresh_due(now, None, true, None), Some(now + chrono::Duration::seconds(86_400)));
        let expired = now - chrono::Duration::seconds(5);
        assert_eq!(p.refresh_due(now, Some(expired), true, None), Some(now));
    }

    #[test]
    fn retries_back_off_exponentially_within_the_cap_and_honour_retry_after() {
        let p = policy();
        let d1 = p.retry_delay(1, None);
        assert!(d1 >= Duration::from_secs(4) && d1 <= Duration::from_secs(6), "{d1:?}");
        let d3 = p.retry_delay(3, None);
        assert!(d3 >= Duration::from_secs(16) && d3 <= Duration::from_secs(24), "{d3:?}");
        let d30 = p.retry_delay(30, None);
        assert!(d30 <= Duration::from_secs(720), "{d30:?}");
        assert!(p.retry_delay(1, Some(Duration::from_secs(90))) >= Duration::from_secs(90));
    }
}
