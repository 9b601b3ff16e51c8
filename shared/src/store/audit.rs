//! The audit trail: who read a secret or changed a connection or an API key, when, from where.
//! Rows are only ever appended (a trigger refuses updates) and pruned by age.

use super::profile::Actor;
use super::{Store, StoreError};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;

/// One audited action.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub api_key_id: Option<String>,
    pub api_key_name: Option<String>,
    pub action: String,
    pub provider: Option<String>,
    pub connection_id: Option<String>,
    pub address: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// What `GET /v1/audit` filters on.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub api_key_id: Option<String>,
    pub provider: Option<String>,
    pub connection_id: Option<String>,
    /// `None`: every provider; otherwise entries of these providers only (a key limited to
    /// some providers sees what happened to theirs).
    pub providers: Option<Vec<String>>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// Appends an entry in the caller's transaction (or on its own, given a plain client). The key's
/// name is looked up here, so the entry keeps it after the key is renamed or revoked.
pub(super) async fn insert_audit<C: GenericClient>(
    client: &C,
    actor: &Actor,
    action: &str,
    connection: Option<(&str, &str)>,
    detail: Option<&serde_json::Value>,
) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO audit_log (api_key_id, api_key_name, action, provider, connection_id, address, detail)
             VALUES ($1, COALESCE((SELECT name FROM api_keys WHERE id = $1),
                                  CASE WHEN $1 = 'bootstrap' THEN 'AUTHBRIDGE_API_KEYS' END),
                     $2, $3, $4, $5, $6)",
        )
        .await?;
    let (provider, connection_id) = connection.unzip();
    client.execute(&stmt, &[&actor.key_id, &action, &provider, &connection_id, &actor.address, &detail]).await?;
    Ok(())
}

impl Store {
    /// Records an action that changed nothing stored (a secret read, a forced refresh).
    pub async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        connection: Option<(&str, &str)>,
        detail: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        insert_audit(&client, actor, action, connection, detail).await
    }

    /// Entries matching `f`, newest first, `limit` at a time, older than entry `before`.
    pub async fn list_audit(
        &self,
        f: &AuditFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, at, api_key_id, api_key_name, action, provider, connection_id, address, detail
                   FROM audit_log
                  WHERE ($1::text IS NULL OR action = $1)
                    AND ($2::text IS NULL OR api_key_id = $2)
                    AND ($3::text IS NULL OR provider = $3)
                    AND ($4::text IS NULL OR connection_id = $4)
                    AND ($5::text[] IS NULL OR provider = ANY($5))
                    AND ($6::timestamptz IS NULL OR at >= $6)
                    AND ($7::timestamptz IS NULL OR at < $7)
                    AND ($8::bigint IS NULL OR id < $8)
                  ORDER BY id DESC LIMIT $9",
                &[
                    &f.action,
                    &f.api_key_id,
                    &f.provider,
                    &f.connection_id,
                    &f.providers,
                    &f.since,
                    &f.until,
                    &before,
                    &limit,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                id: r.get(0),
                at: r.get(1),
                api_key_id: r.get(2),
                api_key_name: r.get(3),
                action: r.get(4),
                provider: r.get(5),
                connection_id: r.get(6),
                address: r.get(7),
                detail: r.get(8),
            })
            .collect())
    }

    /// Deletes entries older than `before`, at most `limit` of them; returns how many.
    pub async fn prune_audit(&self, before: DateTime<Utc>, limit: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at < $1 ORDER BY id LIMIT $2)",
                &[&before, &limit],
            )
            .await?)
    }
}
