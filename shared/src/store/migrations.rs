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
    (
        7,
        r#"
-- Who a connection belongs to in the product (its end user and organisation) and the
-- product's own labels, kept with the connection and filterable.
ALTER TABLE connections ADD COLUMN end_user JSONB;
ALTER TABLE connections ADD COLUMN tags JSONB NOT NULL DEFAULT '{}';
-- Since when refreshes have been failing for reasons that may pass, and whether the product
-- was told (`connection.refresh_failing`), so that it is told once, and told of the recovery.
ALTER TABLE connections ADD COLUMN failing_since TIMESTAMPTZ;
ALTER TABLE connections ADD COLUMN failing_announced BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX connections_end_user ON connections ((end_user->>'id')) WHERE end_user IS NOT NULL;
CREATE INDEX connections_organization ON connections ((end_user->>'organization_id')) WHERE end_user IS NOT NULL;
CREATE INDEX connections_tags ON connections USING gin (tags jsonb_path_ops);
ALTER TABLE connect_sessions ADD COLUMN end_user JSONB;
ALTER TABLE connect_sessions ADD COLUMN tags JSONB;
-- The API key that created the session: the audit trail names it when the flow completes.
ALTER TABLE connect_sessions ADD COLUMN created_by TEXT;

CREATE TABLE webhook_endpoints (
    id          TEXT        PRIMARY KEY,
    url         TEXT        NOT NULL,
    -- Empty: every event type.
    events      TEXT[]      NOT NULL DEFAULT '{}',
    description TEXT,
    created_by  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Several secrets at once: every live one signs, so a secret rotates with no downtime.
CREATE TABLE webhook_secrets (
    endpoint_id TEXT        NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    id          TEXT        NOT NULL,
    key_id      TEXT        NOT NULL,
    secret      BYTEA       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ,
    PRIMARY KEY (endpoint_id, id)
);
CREATE TABLE webhook_events (
    id          TEXT        PRIMARY KEY,
    type        TEXT        NOT NULL,
    payload     JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_created ON webhook_events (created_at);
CREATE TABLE webhook_deliveries (
    id              BIGSERIAL   PRIMARY KEY,
    event_id        TEXT        NOT NULL REFERENCES webhook_events ON DELETE CASCADE,
    endpoint_id     TEXT        NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    status          TEXT        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ,
    -- A sender holds a delivery while it sends; another copy of the message finds it held.
    leased_until    TIMESTAMPTZ,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id DESC);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE TABLE webhook_attempts (
    delivery_id BIGINT      NOT NULL REFERENCES webhook_deliveries ON DELETE CASCADE,
    n           INTEGER     NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    status      INTEGER,
    error       TEXT,
    duration_ms DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (delivery_id, n)
);

-- The audit trail: appended to, pruned by age, never changed.
CREATE TABLE audit_log (
    id            BIGSERIAL   PRIMARY KEY,
    at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    api_key_id    TEXT,
    api_key_name  TEXT,
    action        TEXT        NOT NULL,
    provider      TEXT,
    connection_id TEXT,
    address       TEXT,
    detail        JSONB
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_connection ON audit_log (provider, connection_id, id);
CREATE FUNCTION authbridge_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION authbridge_audit_append_only();
"#,
    ),
];

pub(super) fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

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
