//! PostgreSQL storage behind a narrow interface: connections, connect sessions and the outbox.
//!
//! Services talk to [`Store`] only; no SQL lives outside this module. Migrations run at start-up
//! under an advisory lock, so replicas starting together apply them once.

mod api_keys;
mod audit;
mod connections;
mod migrations;
pub mod notify;
mod outbox;
mod profile;
mod replicas;
mod sessions;
#[cfg(test)]
mod tests;
mod webhooks;

pub use api_keys::ApiKeyRecord;
pub use audit::{AuditEntry, AuditFilter};
pub use connections::ConnectionFilter;
pub use connections::{Connection, ConnectionStatus, Credentials, NewTokens, RefreshGuard};
pub use outbox::{OutboxMessage, OutboxRow, TOPIC_WEBHOOK};
pub use profile::{check_profile, parse_tag_filter, Actor, EndUser, Profile, Tags};
pub use sessions::{ConsumedSession, Ending, NewSession, SessionLookup, StartedSession};
pub use webhooks::{
    event_payload, Attempt, AttemptOutcome, Claim, Claimed, Delivery, NewWebhook, SecretInfo, SecretRemoval,
    WebhookEndpoint,
};

use crate::crypto::{CryptoError, Keyring};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::NoTls;

/// A PostgreSQL error with what the server said (tokio-postgres' own text is only "db error").
fn pg_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

fn pool_detail(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(pg) => pg_detail(pg),
        other => other.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {}", pool_detail(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {}", pg_detail(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("stored secret cannot be read: {0}")]
    Crypto(#[from] CryptoError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("invalid database URL: {0}")]
    Url(String),
    /// Not tried: the database failed a moment ago.
    #[error("database unavailable (it failed a moment ago)")]
    Unreachable,
}

impl StoreError {
    /// Whether the database named in the URL does not exist (SQLSTATE 3D000): waiting will not
    /// help, someone must create it.
    pub fn is_missing_database(&self) -> bool {
        let pg = match self {
            StoreError::Pool(deadpool_postgres::PoolError::Backend(e)) | StoreError::Db(e) => e,
            _ => return false,
        };
        pg.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME)
    }

    /// Whether the database could not be reached (as opposed to refusing what was asked):
    /// no connection to be had, or the one in use was cut.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Pool(_) | StoreError::Unreachable => true,
            // Cut (closed, or an I/O error under it), or refused by a server shutting down or
            // starting up (SQLSTATE class 57P: operator intervention; 08: connection exception).
            StoreError::Db(e) => {
                e.is_closed()
                    || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
                    || e.code().is_some_and(|c| c.code().starts_with("57P") || c.code().starts_with("08"))
            }
            _ => false,
        }
    }
}

/// The store: a connection pool and the keyring that seals what it writes.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    keyring: Keyring,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("pool", &self.pool.status()).finish()
    }
}

fn pg_config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut cfg = tokio_postgres::Config::from_str(url).map_err(|e| StoreError::Url(e.to_string()))?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(5));
    }
    cfg.application_name("authbridge");
    Ok(cfg)
}

impl Store {
    /// Builds the pool. Nothing connects until first use, so a service can start while
    /// PostgreSQL is still coming up and report it through readiness.
    pub fn new(url: &str, pool_size: usize, keyring: Keyring) -> Result<Self, StoreError> {
        let mgr = Manager::from_config(
            pg_config(url)?,
            NoTls,
            // Verified recycling sends an empty query before reuse: after a PostgreSQL restart a
            // dead connection is replaced instead of failing the request that drew it.
            ManagerConfig { recycling_method: RecyclingMethod::Verified },
        );
        let pool = Pool::builder(mgr)
            .max_size(pool_size)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Url(e.to_string()))?;
        Ok(Self { pool, keyring })
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Applies pending migrations, retrying while the database is unreachable (bounded). A
    /// database that does not exist is not waited for.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut delay = Duration::from_millis(200);
        let mut attempts = 0;
        loop {
            match self.pool.get().await.map_err(StoreError::from) {
                Ok(mut client) => return migrations::run(&mut client).await,
                Err(e) if e.is_missing_database() => return Err(e),
                Err(e) if attempts < 20 => {
                    tracing::warn!(error = %e, "database not reachable yet; retrying migrations");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Readiness: a round trip to the database.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("").await?;
        Ok(())
    }

    /// The newest migration applied, `None` on a database never migrated.
    pub async fn schema_version(&self) -> Result<Option<i32>, StoreError> {
        let client = self.pool.get().await?;
        let exists: bool =
            client.query_one("SELECT to_regclass('authbridge_migrations') IS NOT NULL", &[]).await?.get(0);
        if !exists {
            return Ok(None);
        }
        Ok(client.query_one("SELECT max(version) FROM authbridge_migrations", &[]).await?.get(0))
    }

    /// The newest migration this build knows.
    pub fn latest_schema_version() -> i32 {
        migrations::latest()
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }
}

/// Creates a fresh, empty database next to the one `admin_url` names and returns its URL.
/// Used by tests (one database each) and by the dev launcher.
pub async fn create_database(admin_url: &str, name: &str) -> Result<String, StoreError> {
    let cfg = pg_config(admin_url)?;
    let (client, conn) = cfg.connect(NoTls).await?;
    let task = tokio::spawn(conn);
    let exists = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await?.is_some();
    if !exists {
        // Identifiers cannot be bound as parameters; the name is checked to be a plain word.
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StoreError::Url(format!("database name {name:?} must be alphanumeric")));
        }
        client.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await?;
    }
    drop(client);
    let _ = task.await;
    let mut url = url::Url::parse(admin_url).map_err(|e| StoreError::Url(e.to_string()))?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// Drops a database made by [`create_database`], ending its sessions first.
pub async fn drop_database(admin_url: &str, name: &str) -> Result<(), StoreError> {
    let (client, conn) = pg_config(admin_url)?.connect(NoTls).await?;
    let task = tokio::spawn(conn);
    client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await?;
    drop(client);
    let _ = task.await;
    Ok(())
}
