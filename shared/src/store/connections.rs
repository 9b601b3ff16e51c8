//! Connections: one end user's tokens at one provider, sealed, with their refresh schedule.

use super::audit::insert_audit;
use super::outbox::{insert_outbox, OutboxMessage};
use super::profile::{Actor, EndUser, Profile, Tags};
use super::webhooks::announce;
use super::{Store, StoreError};
use crate::webhooks::EventType;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use tokio_postgres::Row;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    Active,
    NeedsReauth,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::NeedsReauth => "needs_reauth",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "needs_reauth" => Some(Self::NeedsReauth),
            _ => None,
        }
    }
}

/// The secret part of a connection: OAuth tokens, or the values of a credential mode (an API
/// key and password, a Redtail UserKey). It is only ever stored sealed.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Credentials {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// Any other fields of the provider's token response, kept as received.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// A credential mode's stored values, by name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub values: std::collections::BTreeMap<String, String>,
}

impl Credentials {
    /// A credential connection's values.
    pub fn from_values(values: std::collections::BTreeMap<String, String>) -> Self {
        Self { values, ..Self::default() }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_token", &"[redacted]")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[redacted]"))
            .field("token_type", &self.token_type)
            .field("values", &self.values.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A stored connection, without its secrets opened.
#[derive(Clone)]
pub struct Connection {
    pub provider: String,
    pub connection_id: String,
    pub status: ConnectionStatus,
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub refresh_due_at: Option<DateTime<Utc>>,
    pub token_version: i64,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub error_count: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The product's end user this connection belongs to, if it said.
    pub end_user: Option<EndUser>,
    pub tags: Tags,
    /// Since when refreshes have failed for reasons that may pass (cleared by a success).
    pub failing_since: Option<DateTime<Utc>>,
    /// Whether `connection.refresh_failing` was announced for the current run of failures.
    pub failing_announced: bool,
    key_id: String,
    sealed: Vec<u8>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("provider", &self.provider)
            .field("connection_id", &self.connection_id)
            .field("status", &self.status)
            .field("token_version", &self.token_version)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The key id that sealed this connection's credentials.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

/// Tokens to store, with the schedule computed from them.
#[derive(Debug, Clone)]
pub struct NewTokens {
    pub credentials: Credentials,
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub refresh_due_at: Option<DateTime<Utc>>,
}

/// The columns `from_row` reads, as a literal, so queries are whole `&'static str`s built at
/// compile time (no formatting per call; they are also the keys of the prepared-statement cache).
macro_rules! columns {
    () => {
        "provider, connection_id, status, scopes, key_id, credentials, expires_at, \
         refresh_due_at, token_version, last_refresh_at, last_error, error_count, created_at, updated_at, \
         end_user, tags, failing_since, failing_announced"
    };
}

fn aad(provider: &str, connection_id: &str) -> Vec<u8> {
    format!("connection:{provider}/{connection_id}").into_bytes()
}

fn from_row(row: &Row) -> Result<Connection, StoreError> {
    let status: String = row.get("status");
    Ok(Connection {
        provider: row.get("provider"),
        connection_id: row.get("connection_id"),
        status: ConnectionStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("status {status:?}")))?,
        scopes: row.get("scopes"),
        key_id: row.get("key_id"),
        sealed: row.get("credentials"),
        expires_at: row.get("expires_at"),
        refresh_due_at: row.get("refresh_due_at"),
        token_version: row.get("token_version"),
        last_refresh_at: row.get("last_refresh_at"),
        last_error: row.get("last_error"),
        error_count: row.get("error_count"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        end_user: row
            .get::<_, Option<serde_json::Value>>("end_user")
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("end_user: {e}")))?,
        tags: serde_json::from_value(row.get("tags")).map_err(|e| StoreError::Corrupt(format!("tags: {e}")))?,
        failing_since: row.get("failing_since"),
        failing_announced: row.get("failing_announced"),
    })
}

/// What `GET /v1/connections` filters on besides provider and status.
#[derive(Debug, Clone, Default)]
pub struct ConnectionFilter {
    pub end_user_id: Option<String>,
    pub organization_id: Option<String>,
    /// Every one of these tags, with these values.
    pub tags: Tags,
}

impl Store {
    /// A connection's credentials sealed as the `credentials` column holds them (bound to the
    /// connection's key, so a blob copied to another row does not open).
    pub fn seal_credentials(&self, provider: &str, connection_id: &str, c: &Credentials) -> crate::crypto::Sealed {
        let json = serde_json::to_vec(c).expect("credentials serialize");
        self.keyring.seal(&json, &aad(provider, connection_id))
    }

    /// Opens a connection's sealed credentials.
    pub fn open_credentials(&self, c: &Connection) -> Result<Credentials, StoreError> {
        let plain = self.keyring.open(&c.key_id, &c.sealed, &aad(&c.provider, &c.connection_id))?;
        serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt(format!("credentials: {e}")))
    }

    #[tracing::instrument(skip_all, fields(provider, connection_id))]
    pub async fn get_connection(&self, provider: &str, connection_id: &str) -> Result<Option<Connection>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(concat!(
                "SELECT ",
                columns!(),
                " FROM connections WHERE provider = $1 AND connection_id = $2"
            ))
            .await?;
        client.query_opt(&stmt, &[&provider, &connection_id]).await?.as_ref().map(from_row).transpose()
    }

    /// Lists connections in key order, `limit` at a time, after the given key.
    pub async fn list_connections(
        &self,
        provider: Option<&str>,
        status: Option<ConnectionStatus>,
        filter: &ConnectionFilter,
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<Connection>, StoreError> {
        let client = self.client().await?;
        let (ap, ac) = after.unwrap_or(("", ""));
        let tags = (!filter.tags.is_empty()).then(|| serde_json::to_value(&filter.tags).expect("tags serialize"));
        let rows = client
            .query(
                concat!(
                    "SELECT ",
                    columns!(),
                    " FROM connections
                     WHERE ($1::text IS NULL OR provider = $1)
                       AND ($2::text IS NULL OR status = $2)
                       AND (provider, connection_id) > ($3, $4)
                       AND ($6::text IS NULL OR end_user->>'id' = $6)
                       AND ($7::text IS NULL OR end_user->>'organization_id' = $7)
                       AND ($8::jsonb IS NULL OR tags @> $8)
                     ORDER BY provider, connection_id LIMIT $5"
                ),
                &[
                    &provider,
                    &status.map(|s| s.as_str()),
                    &ap,
                    &ac,
                    &limit,
                    &filter.end_user_id,
                    &filter.organization_id,
                    &tags,
                ],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Stores tokens from a completed authorization, creating or replacing the connection, and
    /// writes in the same transaction the events `events(new_version)` returns, the webhook
    /// events it makes (`connection.created`, or `connection.reconnected` and, for a connection
    /// that was not working, `connection.recovered`) and the audit entry.
    #[tracing::instrument(skip_all, fields(provider, connection_id))]
    pub async fn save_authorized(
        &self,
        provider: &str,
        connection_id: &str,
        tokens: &NewTokens,
        profile: &Profile,
        actor: &Actor,
        events: impl FnOnce(i64) -> Vec<OutboxMessage>,
    ) -> Result<Connection, StoreError> {
        let sealed = self.seal_credentials(provider, connection_id, &tokens.credentials);
        let end_user = profile.end_user.as_ref().map(|u| serde_json::to_value(u).expect("end user serializes"));
        let tags = profile.tags.as_ref().map(|t| serde_json::to_value(t).expect("tags serialize"));
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let before = tx
            .prepare_cached(
                "SELECT status = 'needs_reauth' OR failing_announced FROM connections
                  WHERE provider = $1 AND connection_id = $2 FOR UPDATE",
            )
            .await?;
        let was_broken: Option<bool> = tx.query_opt(&before, &[&provider, &connection_id]).await?.map(|r| r.get(0));
        let stmt = tx
            .prepare_cached(concat!(
                "INSERT INTO connections (provider, connection_id, status, scopes, key_id, credentials,
                        expires_at, refresh_due_at, last_refresh_at, end_user, tags)
                     VALUES ($1, $2, 'active', $3, $4, $5, $6, $7, now(), $8, COALESCE($9, '{}'::jsonb))
                     ON CONFLICT (provider, connection_id) DO UPDATE SET
                        status = 'active', scopes = EXCLUDED.scopes, key_id = EXCLUDED.key_id,
                        credentials = EXCLUDED.credentials, expires_at = EXCLUDED.expires_at,
                        refresh_due_at = EXCLUDED.refresh_due_at, last_refresh_at = now(),
                        token_version = connections.token_version + 1,
                        last_error = NULL, error_count = 0, updated_at = now(),
                        failing_since = NULL, failing_announced = false,
                        end_user = COALESCE($8, connections.end_user), tags = COALESCE($9, connections.tags)
                     RETURNING (xmax = 0) AS inserted, ",
                columns!()
            ))
            .await?;
        let row = tx
            .query_one(
                &stmt,
                &[
                    &provider,
                    &connection_id,
                    &tokens.scopes,
                    &sealed.key_id,
                    &sealed.blob,
                    &tokens.expires_at,
                    &tokens.refresh_due_at,
                    &end_user,
                    &tags,
                ],
            )
            .await?;
        let conn = from_row(&row)?;
        for m in events(conn.token_version) {
            insert_outbox(&tx, &m).await?;
        }
        let key = Some((provider, connection_id));
        if row.get::<_, bool>("inserted") {
            announce(&tx, EventType::Created, &conn, None).await?;
            insert_audit(&tx, actor, "connection.created", key, None).await?;
        } else {
            announce(&tx, EventType::Reconnected, &conn, None).await?;
            if was_broken == Some(true) {
                announce(&tx, EventType::Recovered, &conn, None).await?;
            }
            insert_audit(&tx, actor, "connection.reconnected", key, None).await?;
        }
        tx.commit().await?;
        Ok(conn)
    }

    /// Deletes a connection and returns what it held (so its tokens can be revoked), announcing
    /// `connection.deleted` and auditing it in the same transaction.
    #[tracing::instrument(skip_all, fields(provider, connection_id))]
    pub async fn delete_connection(
        &self,
        provider: &str,
        connection_id: &str,
        actor: &Actor,
    ) -> Result<Option<Connection>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                concat!("DELETE FROM connections WHERE provider = $1 AND connection_id = $2 RETURNING ", columns!()),
                &[&provider, &connection_id],
            )
            .await?;
        let Some(conn) = row.as_ref().map(from_row).transpose()? else {
            return Ok(None);
        };
        announce(&tx, EventType::Deleted, &conn, None).await?;
        insert_audit(&tx, actor, "connection.deleted", Some((provider, connection_id)), None).await?;
        tx.commit().await?;
        Ok(Some(conn))
    }

    /// Active connections whose refresh fell due before `before`: what the sweep reschedules.
    pub async fn overdue_connections(&self, before: DateTime<Utc>, limit: i64) -> Result<Vec<Connection>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                concat!(
                    "SELECT ",
                    columns!(),
                    " FROM connections
                     WHERE status = 'active' AND refresh_due_at IS NOT NULL AND refresh_due_at < $1
                     ORDER BY refresh_due_at LIMIT $2"
                ),
                &[&before, &limit],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Takes the connection's row lock for a refresh. Every refresher of a connection — the
    /// token-refresher, the proxy on a 401, the gateway's token endpoint, in any replica — goes
    /// through this lock, so only one refresh grant per token reaches the provider. The lock is
    /// released when the guard commits, or when it is dropped (the connection is then discarded,
    /// which rolls the transaction back).
    #[tracing::instrument(skip_all, fields(provider, connection_id))]
    pub async fn lock_for_refresh(
        &self,
        provider: &str,
        connection_id: &str,
    ) -> Result<Option<RefreshGuard>, StoreError> {
        let client = self.client().await?;
        client.batch_execute("BEGIN").await?;
        let mut guard = RefreshGuard { client: Some(client), store: self.clone(), conn: None };
        // Prepared once per pooled connection: every statement on the refresh path is (each
        // unprepared one costs a round trip to prepare it and type lookups, on every call).
        let stmt = guard
            .client()
            .prepare_cached(concat!(
                "SELECT ",
                columns!(),
                " FROM connections WHERE provider = $1 AND connection_id = $2 FOR UPDATE"
            ))
            .await?;
        let row = guard.client().query_opt(&stmt, &[&provider, &connection_id]).await?;
        match row {
            None => {
                guard.rollback().await?;
                Ok(None)
            }
            Some(row) => {
                guard.conn = Some(from_row(&row)?);
                Ok(Some(guard))
            }
        }
    }
}

/// A connection's row lock held for the length of one refresh.
pub struct RefreshGuard {
    client: Option<deadpool_postgres::Object>,
    store: Store,
    conn: Option<Connection>,
}

impl RefreshGuard {
    fn client(&self) -> &deadpool_postgres::Object {
        self.client.as_ref().expect("guard is live")
    }

    /// The connection as read under the lock.
    pub fn connection(&self) -> &Connection {
        self.conn.as_ref().expect("guard holds a row")
    }

    pub fn credentials(&self) -> Result<Credentials, StoreError> {
        self.store.open_credentials(self.connection())
    }

    async fn finish(mut self, sql: &str) -> Result<(), StoreError> {
        let client = self.client.take().expect("guard is live");
        let result = client.batch_execute(sql).await;
        if result.is_err() {
            // The connection's state is unknown: do not give it back to the pool.
            drop(deadpool_postgres::Object::take(client));
        }
        Ok(result?)
    }

    /// Releases the lock without changing anything.
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.finish("ROLLBACK").await
    }

    /// Stores refreshed tokens: new version, schedule, cleared error, and the given events.
    pub async fn commit_refreshed(
        self,
        tokens: &NewTokens,
        events: impl FnOnce(i64) -> Vec<OutboxMessage>,
    ) -> Result<Connection, StoreError> {
        let c = self.connection();
        let sealed = self.store.seal_credentials(&c.provider, &c.connection_id, &tokens.credentials);
        let stmt = self
            .client()
            .prepare_cached(concat!(
                "UPDATE connections SET key_id = $3, credentials = $4, scopes = $5, expires_at = $6,
                    refresh_due_at = $7, token_version = token_version + 1, last_refresh_at = clock_timestamp(),
                    last_error = NULL, error_count = 0, status = 'active', updated_at = now(),
                    failing_since = NULL, failing_announced = false
                 WHERE provider = $1 AND connection_id = $2 RETURNING ",
                columns!()
            ))
            .await?;
        let row = self
            .client()
            .query_one(
                &stmt,
                &[
                    &c.provider,
                    &c.connection_id,
                    &sealed.key_id,
                    &sealed.blob,
                    &tokens.scopes,
                    &tokens.expires_at,
                    &tokens.refresh_due_at,
                ],
            )
            .await?;
        let updated = from_row(&row)?;
        for m in events(updated.token_version) {
            insert_outbox(self.client(), &m).await?;
        }
        self.announce_recovery(&updated).await?;
        self.finish("COMMIT").await?;
        Ok(updated)
    }

    /// A credential connection's values were checked and still work: the next check is
    /// scheduled, the error cleared; the values and their version stay as they are.
    pub async fn commit_checked(
        self,
        next_due: DateTime<Utc>,
        events: impl FnOnce(i64) -> Vec<OutboxMessage>,
    ) -> Result<Connection, StoreError> {
        let c = self.connection();
        let stmt = self
            .client()
            .prepare_cached(concat!(
                "UPDATE connections SET refresh_due_at = $3, last_refresh_at = clock_timestamp(),
                    last_error = NULL, error_count = 0, updated_at = now(),
                    failing_since = NULL, failing_announced = false
                 WHERE provider = $1 AND connection_id = $2 RETURNING ",
                columns!()
            ))
            .await?;
        let row = self.client().query_one(&stmt, &[&c.provider, &c.connection_id, &next_due]).await?;
        let updated = from_row(&row)?;
        for m in events(updated.token_version) {
            insert_outbox(self.client(), &m).await?;
        }
        self.announce_recovery(&updated).await?;
        self.finish("COMMIT").await?;
        Ok(updated)
    }

    /// After a success: a connection whose failures were announced is announced recovered.
    async fn announce_recovery(&self, updated: &Connection) -> Result<(), StoreError> {
        if self.connection().failing_announced {
            announce(self.client(), EventType::Recovered, updated, None).await?;
        }
        Ok(())
    }

    /// The provider said no for good: the connection needs the end user to authorize again,
    /// and the product is told (`connection.needs_reauth`, with the provider's words).
    pub async fn commit_needs_reauth(self, reason: &str) -> Result<(), StoreError> {
        let c = self.connection();
        let stmt = self
            .client()
            .prepare_cached(concat!(
                "UPDATE connections SET status = 'needs_reauth', refresh_due_at = NULL, last_error = $3,
                    error_count = error_count + 1, updated_at = now(), failing_since = NULL, failing_announced = false
                 WHERE provider = $1 AND connection_id = $2 RETURNING ",
                columns!()
            ))
            .await?;
        let row = self.client().query_one(&stmt, &[&c.provider, &c.connection_id, &reason]).await?;
        announce(self.client(), EventType::NeedsReauth, &from_row(&row)?, Some(reason)).await?;
        self.finish("COMMIT").await
    }

    /// A refresh failed for a reason that may pass: record it, and when `retry` is given,
    /// move the schedule to the retry time and write the retry event with it. Once failures
    /// have lasted `failing_after`, the product is told (`connection.refresh_failing`, once).
    pub async fn commit_failure(
        self,
        reason: &str,
        retry: Option<(DateTime<Utc>, OutboxMessage)>,
        failing_after: std::time::Duration,
    ) -> Result<(), StoreError> {
        let c = self.connection();
        let due = retry.as_ref().map(|(at, _)| *at);
        let stmt = self
            .client()
            .prepare_cached(concat!(
                "UPDATE connections SET last_error = $3, error_count = error_count + 1,
                    refresh_due_at = COALESCE($4, refresh_due_at), updated_at = now(),
                    failing_since = COALESCE(failing_since, now()),
                    failing_announced = failing_announced
                        OR COALESCE(failing_since, now()) <= now() - make_interval(secs => $5)
                 WHERE provider = $1 AND connection_id = $2 RETURNING ",
                columns!()
            ))
            .await?;
        let row = self
            .client()
            .query_one(&stmt, &[&c.provider, &c.connection_id, &reason, &due, &failing_after.as_secs_f64()])
            .await?;
        let updated = from_row(&row)?;
        if updated.failing_announced && !c.failing_announced {
            announce(self.client(), EventType::RefreshFailing, &updated, Some(reason)).await?;
        }
        if let Some((_, m)) = &retry {
            insert_outbox(self.client(), m).await?;
        }
        self.finish("COMMIT").await
    }
}

impl Drop for RefreshGuard {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Dropped mid-transaction (an error or a cancelled future): close the connection so
            // PostgreSQL rolls back and releases the row lock, instead of pooling it mid-transaction.
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl Store {
    /// Re-seals up to `limit` connections, and up to `limit` webhook signing secrets, that are
    /// not sealed under the primary key, a batch per transaction; returns how many it re-sealed.
    /// Rows being refreshed are skipped for this batch (`SKIP LOCKED`) and caught by the next,
    /// so the services keep running while it works.
    pub async fn reencrypt_batch(&self, limit: i64) -> Result<usize, StoreError> {
        let primary = self.keyring.primary_id().to_owned();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                concat!("SELECT ", columns!(), " FROM connections WHERE key_id <> $1 LIMIT $2 FOR UPDATE SKIP LOCKED"),
                &[&primary, &limit],
            )
            .await?;
        for row in &rows {
            let c = from_row(row)?;
            let creds = self.open_credentials(&c)?;
            let sealed = self.seal_credentials(&c.provider, &c.connection_id, &creds);
            tx.execute(
                "UPDATE connections SET key_id = $3, credentials = $4 WHERE provider = $1 AND connection_id = $2",
                &[&c.provider, &c.connection_id, &sealed.key_id, &sealed.blob],
            )
            .await?;
        }
        let secrets = tx
            .query(
                "SELECT endpoint_id, id, key_id, secret FROM webhook_secrets WHERE key_id <> $1
                  LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&primary, &limit],
            )
            .await?;
        for r in &secrets {
            let (endpoint, id): (String, String) = (r.get(0), r.get(1));
            let secret = self.open_secret(&endpoint, &id, r.get(2), r.get(3))?;
            let sealed = self.seal_secret(&endpoint, &id, &secret);
            tx.execute(
                "UPDATE webhook_secrets SET key_id = $3, secret = $4 WHERE endpoint_id = $1 AND id = $2",
                &[&endpoint, &id, &sealed.key_id, &sealed.blob],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(rows.len() + secrets.len())
    }

    /// Re-seals everything under the primary key; returns how many connections it re-sealed.
    pub async fn reencrypt_all(&self) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self.reencrypt_batch(200).await?;
            total += n;
            if n == 0 {
                return Ok(total);
            }
        }
    }

    /// How many connections are in each status.
    pub async fn count_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let client = self.client().await?;
        let rows =
            client.query("SELECT status, count(*) FROM connections GROUP BY status ORDER BY status", &[]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// How many connections are sealed under each key id.
    pub async fn key_usage(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let client = self.client().await?;
        let rows =
            client.query("SELECT key_id, count(*) FROM connections GROUP BY key_id ORDER BY key_id", &[]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
