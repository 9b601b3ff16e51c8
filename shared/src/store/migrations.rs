//! Schema migrations, embedded and applied in order under an advisory lock.

use super::StoreError;

/// Arbitrary constant naming the migration lock.
const MIGRATION_LOCK: i64 = 0x6175_7468_6272_6467; // "authbrdg"

const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE connections (
    provider        TEXT        NOT NULL,
    connection_id   TEXT        NOT NULL,
    status          TEXT        NOT NULL CHECK (status IN ('active', 'needs_reauth')),
    scopes          TEXT[]      NOT NULL DEFAULT '{}',
    key_id          TEXT        NOT NULL,
    credentials     BYTEA       NOT NULL,
    expires_at      TIMESTAMPTZ,
    refresh_due_at  TIMESTAMPTZ,
    token_version   BIGINT      NOT NULL DEFAULT 1,
    last_refresh_at TIMESTAMPTZ,
    last_error      TEXT,
    error_count     INTEGER     NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, connection_id)
);
-- The sweep reads only active connections that are due: its cost follows the due ones.
CREATE INDEX connections_refresh_due ON connections (refresh_due_at)
    WHERE status = 'active' AND refresh_due_at IS NOT NULL;

CREATE TABLE connect_sessions (
    token_hash      BYTEA       PRIMARY KEY,
    provider        TEXT        NOT NULL,
    connection_id   TEXT        NOT NULL,
    return_url      TEXT        NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    state_hash      BYTEA       UNIQUE,
    verifier_key_id TEXT,
    verifier        BYTEA,
    started_at      TIMESTAMPTZ,
    consumed_at     TIMESTAMPTZ
);
CREATE INDEX connect_sessions_expires ON connect_sessions (expires_at);

CREATE TABLE outbox (
    id         BIGSERIAL   PRIMARY KEY,
    topic      TEXT        NOT NULL,
    payload    JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE api_keys (
    id          TEXT        PRIMARY KEY,
    name        TEXT        NOT NULL,
    key_hash    BYTEA       NOT NULL UNIQUE,
    scopes      TEXT[]      NOT NULL,
    providers   TEXT[]      NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);
"#,
    ),
    (
        3,
        r#"
-- Every change to a connection (refresh, re-authorization, needs_reauth, deletion) is
-- announced on commit, so in-memory token caches in every proxy replica drop it at once.
CREATE FUNCTION authbridge_notify_connection() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('authbridge_connections', OLD.provider || '/' || OLD.connection_id);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER connections_notify AFTER UPDATE OR DELETE ON connections
    FOR EACH ROW EXECUTE FUNCTION authbridge_notify_connection();
"#,
    ),
    (
        4,
        r#"
-- The SHA-256 of the nonce in the cookie set on the browser that opened the session: the
-- callback must come from that browser (RFC 9700 §4.7.1).
ALTER TABLE connect_sessions ADD COLUMN browser_hash BYTEA;
-- Whether the session may replace the credentials of a connection that already exists: only
-- when the key that created it may write connections.
ALTER TABLE connect_sessions ADD COLUMN may_replace BOOLEAN NOT NULL DEFAULT true;
"#,
    ),
    (
        5,
        r#"
-- The live replicas of a service, by heartbeat: the proxies split each provider's rate
-- limit by how many of them are alive.
CREATE TABLE replicas (
    service     TEXT        NOT NULL,
    id          TEXT        NOT NULL,
    seen_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (service, id)
);
"#,
    ),
    (
        6,
        r#"
-- A flow may end on the gateway's own page (no return URL) or in a popup whose page tells the
-- product's window.
ALTER TABLE connect_sessions ALTER COLUMN return_url DROP NOT NULL;
ALTER TABLE connect_sessions ADD COLUMN popup BOOLEAN NOT NULL DEFAULT false;
"#,
    ),
];

pub(super) async fn run(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
    let result = apply(client).await;
    // Unlock even when a migration failed; the session-level lock would otherwise outlive us.
    let unlock = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    result?;
    unlock?;
    Ok(())
}

async fn apply(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS authbridge_migrations (
                version INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
    for (version, sql) in MIGRATIONS {
        let done =
            client.query_opt("SELECT 1 FROM authbridge_migrations WHERE version = $1", &[version]).await?.is_some();
        if done {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO authbridge_migrations (version) VALUES ($1)", &[version]).await?;
        tx.commit().await?;
        tracing::info!(version, "applied migration");
    }
    Ok(())
}
