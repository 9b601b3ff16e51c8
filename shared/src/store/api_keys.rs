//! API keys of internal callers: stored as SHA-256 digests, with scopes and an optional
//! provider restriction; created, listed and revoked at run time.

use super::{Store, StoreError};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// An API key as stored (never the key itself).
#[derive(Debug, Clone, Serialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// Empty: every provider.
    pub providers: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

fn from_row(r: &tokio_postgres::Row) -> ApiKeyRecord {
    ApiKeyRecord {
        id: r.get("id"),
        name: r.get("name"),
        scopes: r.get("scopes"),
        providers: r.get("providers"),
        created_at: r.get("created_at"),
        revoked_at: r.get("revoked_at"),
    }
}

impl Store {
    pub async fn create_api_key(
        &self,
        id: &str,
        name: &str,
        key_hash: &[u8],
        scopes: &[String],
        providers: &[String],
    ) -> Result<ApiKeyRecord, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "INSERT INTO api_keys (id, name, key_hash, scopes, providers) VALUES ($1, $2, $3, $4, $5)
                 RETURNING id, name, scopes, providers, created_at, revoked_at",
                &[&id, &name, &key_hash, &scopes, &providers],
            )
            .await?;
        Ok(from_row(&row))
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, name, scopes, providers, created_at, revoked_at FROM api_keys ORDER BY created_at, id",
                &[],
            )
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// A key by id, revoked or not.
    pub async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT id, name, scopes, providers, created_at, revoked_at FROM api_keys WHERE id = $1", &[&id])
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// Revokes a key; false when there is no such key or it was already revoked.
    pub async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", &[&id])
            .await?;
        Ok(n == 1)
    }

    /// The live key with this digest, if any.
    pub async fn find_api_key(&self, key_hash: &[u8]) -> Result<Option<ApiKeyRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, name, scopes, providers, created_at, revoked_at FROM api_keys
                 WHERE key_hash = $1 AND revoked_at IS NULL",
            )
            .await?;
        Ok(client.query_opt(&stmt, &[&key_hash]).await?.as_ref().map(from_row))
    }
}
