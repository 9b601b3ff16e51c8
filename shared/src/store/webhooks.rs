//! Webhooks in the database: events (written in the transaction of the change they announce,
//! with a delivery and an outbox message per subscribed endpoint), endpoints and their sealed
//! secrets, and each delivery's attempts.

use super::connections::Connection;
use super::outbox::TOPIC_WEBHOOK;
use super::{Store, StoreError};
use crate::webhooks::{EventType, SigningSecret};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};

fn secret_aad(endpoint_id: &str, secret_id: &str) -> Vec<u8> {
    format!("webhook-secret:{endpoint_id}/{secret_id}").into_bytes()
}

/// The body every endpoint receives for an event: never a token or a credential.
pub fn event_payload(
    id: &str,
    ty: EventType,
    at: DateTime<Utc>,
    c: &Connection,
    error: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "type": ty.as_str(),
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "data": {
            "provider": c.provider,
            "connection_id": c.connection_id,
            "status": if ty == EventType::Deleted { "deleted" } else { c.status.as_str() },
            "end_user": c.end_user,
            "tags": c.tags,
            "error": error,
        },
    })
}

/// Writes an event and, for every endpoint subscribed to its type, a pending delivery and the
/// message that will send it, in the caller's transaction: the change and its announcement
/// commit together or not at all.
pub(super) async fn announce<C: GenericClient>(
    client: &C,
    ty: EventType,
    c: &Connection,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
    let payload = event_payload(&id, ty, Utc::now(), c, error);
    let stmt = client
        .prepare_cached(
            "WITH ev AS (INSERT INTO webhook_events (id, type, payload) VALUES ($1, $2, $3) RETURNING id),
                  d AS (INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at)
                        SELECT ev.id, e.id, now() FROM ev, webhook_endpoints e
                         WHERE cardinality(e.events) = 0 OR $2 = ANY(e.events)
                        RETURNING id)
             INSERT INTO outbox (topic, payload)
             SELECT $4, jsonb_build_object('delivery_id', d.id, 'attempt', 0, 'due_at', now()) FROM d",
        )
        .await?;
    client.execute(&stmt, &[&id, &ty.as_str(), &payload, &TOPIC_WEBHOOK]).await?;
    Ok(())
}

/// A signing secret as the API shows it: never its value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretInfo {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A webhook endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookEndpoint {
    pub id: String,
    pub url: String,
    /// Empty: every event type.
    pub events: Vec<String>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub secrets: Vec<SecretInfo>,
}

/// A new endpoint and its first secret.
pub struct NewWebhook<'a> {
    pub id: &'a str,
    pub url: &'a str,
    pub events: &'a [String],
    pub description: Option<&'a str>,
    pub created_by: Option<&'a str>,
    pub secret_id: &'a str,
    pub secret: &'a SigningSecret,
}

/// One try at a delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub n: i32,
    pub at: DateTime<Utc>,
    /// The endpoint's HTTP status, if it answered.
    pub status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: f64,
}

/// A delivery of one event to one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The latest tries, newest first (at most ten).
    pub attempt_log: Vec<Attempt>,
}

/// A delivery a sender holds: everything it needs to send it.
pub struct Claimed {
    pub delivery_id: i64,
    pub endpoint_id: String,
    pub url: String,
    pub event_id: String,
    pub event_type: String,
    pub event_created_at: DateTime<Utc>,
    pub body: Vec<u8>,
    pub secrets: Vec<SigningSecret>,
}

/// What a sender finds when it takes a delivery.
pub enum Claim {
    Got(Claimed),
    /// Done, attempted already by another copy of the message, or its endpoint deleted.
    Stale,
    /// Another sender holds it until then (or held it and died: the lease lapses then).
    HeldUntil(DateTime<Utc>),
}

impl Claim {
    pub fn got(self) -> Option<Claimed> {
        match self {
            Claim::Got(c) => Some(c),
            _ => None,
        }
    }
}

/// What became of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Succeeded,
    /// Failed; tried again at the given time.
    Retrying(DateTime<Utc>),
    /// Failed with no tries left: kept as `failed`.
    Exhausted,
    /// Another sender recorded this attempt first (a duplicate message).
    Stale,
}

/// Why a secret could not be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretRemoval {
    Removed,
    NotFound,
    /// The endpoint's only live secret: add another first.
    LastOne,
}

impl Store {
    pub(super) fn seal_secret(&self, endpoint_id: &str, secret_id: &str, s: &SigningSecret) -> crate::crypto::Sealed {
        self.keyring.seal(s.expose().as_bytes(), &secret_aad(endpoint_id, secret_id))
    }

    pub(super) fn open_secret(
        &self,
        endpoint_id: &str,
        secret_id: &str,
        key_id: &str,
        blob: &[u8],
    ) -> Result<SigningSecret, StoreError> {
        let plain = self.keyring.open(key_id, blob, &secret_aad(endpoint_id, secret_id))?;
        let text = String::from_utf8(plain).map_err(|_| StoreError::Corrupt("webhook secret".into()))?;
        SigningSecret::parse(&text).map_err(StoreError::Corrupt)
    }

    pub async fn create_webhook(&self, w: &NewWebhook<'_>) -> Result<WebhookEndpoint, StoreError> {
        let sealed = self.seal_secret(w.id, w.secret_id, w.secret);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO webhook_endpoints (id, url, events, description, created_by) VALUES ($1, $2, $3, $4, $5)",
            &[&w.id, &w.url, &w.events, &w.description, &w.created_by],
        )
        .await?;
        tx.execute(
            "INSERT INTO webhook_secrets (endpoint_id, id, key_id, secret) VALUES ($1, $2, $3, $4)",
            &[&w.id, &w.secret_id, &sealed.key_id, &sealed.blob],
        )
        .await?;
        tx.commit().await?;
        self.get_webhook(w.id).await?.ok_or_else(|| StoreError::Corrupt("webhook vanished".into()))
    }

    /// Creates or updates the endpoint configured in the environment, under a fixed id, with its
    /// secret replaced by the configured one.
    pub async fn upsert_webhook(
        &self,
        id: &str,
        url: &str,
        events: &[String],
        secret: &SigningSecret,
    ) -> Result<(), StoreError> {
        let sealed = self.seal_secret(id, "configured", secret);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO webhook_endpoints (id, url, events, description) VALUES ($1, $2, $3, 'from AUTHBRIDGE_WEBHOOK_URL')
             ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, events = EXCLUDED.events",
            &[&id, &url, &events],
        )
        .await?;
        tx.execute(
            "INSERT INTO webhook_secrets (endpoint_id, id, key_id, secret) VALUES ($1, 'configured', $2, $3)
             ON CONFLICT (endpoint_id, id) DO UPDATE SET key_id = EXCLUDED.key_id, secret = EXCLUDED.secret, expires_at = NULL",
            &[&id, &sealed.key_id, &sealed.blob],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_webhooks(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        self.webhooks_where(None).await
    }

    pub async fn get_webhook(&self, id: &str) -> Result<Option<WebhookEndpoint>, StoreError> {
        Ok(self.webhooks_where(Some(id)).await?.pop())
    }

    async fn webhooks_where(&self, id: Option<&str>) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT e.id, e.url, e.events, e.description, e.created_at,
                        COALESCE((SELECT jsonb_agg(jsonb_build_object('id', s.id, 'created_at', s.created_at,
                                                                      'expires_at', s.expires_at) ORDER BY s.created_at)
                                    FROM webhook_secrets s
                                   WHERE s.endpoint_id = e.id AND (s.expires_at IS NULL OR s.expires_at > now())),
                                 '[]'::jsonb)
                   FROM webhook_endpoints e WHERE ($1::text IS NULL OR e.id = $1) ORDER BY e.created_at, e.id",
                &[&id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let secrets = serde_json::from_value(r.get(5))
                    .map_err(|e| StoreError::Corrupt(format!("webhook secrets: {e}")))?;
                Ok(WebhookEndpoint {
                    id: r.get(0),
                    url: r.get(1),
                    events: r.get(2),
                    description: r.get(3),
                    created_at: r.get(4),
                    secrets,
                })
            })
            .collect()
    }

    /// Deletes an endpoint with its secrets and deliveries; false if there was none.
    pub async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client.execute("DELETE FROM webhook_endpoints WHERE id = $1", &[&id]).await? == 1)
    }

    /// Adds a secret to an endpoint; the others stop signing at `others_expire_at` (if given and
    /// sooner than they would). False if there is no such endpoint.
    pub async fn add_webhook_secret(
        &self,
        endpoint_id: &str,
        secret_id: &str,
        secret: &SigningSecret,
        others_expire_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        let sealed = self.seal_secret(endpoint_id, secret_id, secret);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if tx.query_opt("SELECT 1 FROM webhook_endpoints WHERE id = $1 FOR UPDATE", &[&endpoint_id]).await?.is_none() {
            return Ok(false);
        }
        if let Some(at) = others_expire_at {
            tx.execute(
                "UPDATE webhook_secrets SET expires_at = $2
                  WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > $2)",
                &[&endpoint_id, &at],
            )
            .await?;
        }
        tx.execute(
            "INSERT INTO webhook_secrets (endpoint_id, id, key_id, secret) VALUES ($1, $2, $3, $4)",
            &[&endpoint_id, &secret_id, &sealed.key_id, &sealed.blob],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes one secret, never the last live one.
    pub async fn delete_webhook_secret(&self, endpoint_id: &str, secret_id: &str) -> Result<SecretRemoval, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if tx.query_opt("SELECT 1 FROM webhook_endpoints WHERE id = $1 FOR UPDATE", &[&endpoint_id]).await?.is_none() {
            return Ok(SecretRemoval::NotFound);
        }
        let live: i64 = tx
            .query_one(
                "SELECT count(*) FROM webhook_secrets
                  WHERE endpoint_id = $1 AND id <> $2 AND (expires_at IS NULL OR expires_at > now())",
                &[&endpoint_id, &secret_id],
            )
            .await?
            .get(0);
        let n = tx
            .execute("DELETE FROM webhook_secrets WHERE endpoint_id = $1 AND id = $2", &[&endpoint_id, &secret_id])
            .await?;
        if n == 0 {
            return Ok(SecretRemoval::NotFound);
        }
        if live == 0 {
            return Ok(SecretRemoval::LastOne); // the transaction rolls back on drop
        }
        tx.commit().await?;
        Ok(SecretRemoval::Removed)
    }

    /// An endpoint's deliveries, newest first, `limit` at a time, older than delivery `before`.
    pub async fn list_deliveries(
        &self,
        endpoint_id: &str,
        status: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT d.id, d.event_id, ev.type, d.status, d.attempts, d.next_attempt_at, d.last_status, d.last_error,
                        d.created_at, d.finished_at,
                        COALESCE((SELECT jsonb_agg(to_jsonb(a) ORDER BY a.n DESC)
                                    FROM (SELECT n, at, status, error, duration_ms FROM webhook_attempts
                                           WHERE delivery_id = d.id ORDER BY n DESC LIMIT 10) a), '[]'::jsonb)
                   FROM webhook_deliveries d JOIN webhook_events ev ON ev.id = d.event_id
                  WHERE d.endpoint_id = $1 AND ($2::text IS NULL OR d.status = $2) AND ($3::bigint IS NULL OR d.id < $3)
                  ORDER BY d.id DESC LIMIT $4",
                &[&endpoint_id, &status, &before, &limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let attempt_log = serde_json::from_value(r.get(10))
                    .map_err(|e| StoreError::Corrupt(format!("webhook attempts: {e}")))?;
                Ok(Delivery {
                    id: r.get(0),
                    event_id: r.get(1),
                    event_type: r.get(2),
                    status: r.get(3),
                    attempts: r.get(4),
                    next_attempt_at: r.get(5),
                    last_status: r.get(6),
                    last_error: r.get(7),
                    created_at: r.get(8),
                    finished_at: r.get(9),
                    attempt_log,
                })
            })
            .collect()
    }

    /// Sends a delivery again now, whatever became of it (the next attempt is an extra one:
    /// if it fails, the retry schedule continues from where the delivery was). False if the
    /// endpoint has no such delivery.
    pub async fn retry_delivery(&self, endpoint_id: &str, delivery_id: i64) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), leased_until = NULL,
                        finished_at = NULL
                  WHERE id = $1 AND endpoint_id = $2 RETURNING attempts",
                &[&delivery_id, &endpoint_id],
            )
            .await?;
        let Some(row) = row else { return Ok(false) };
        let attempts: i32 = row.get(0);
        tx.execute(
            "INSERT INTO outbox (topic, payload)
             VALUES ($1, jsonb_build_object('delivery_id', $2::bigint, 'attempt', $3::int, 'due_at', now()))",
            &[&TOPIC_WEBHOOK, &delivery_id, &attempts],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Takes a delivery to send attempt `attempt + 1`, if it still waits for exactly that attempt
    /// and no other sender holds it; the lease lasts `lease` (a sender that dies lets it lapse).
    pub async fn claim_delivery(
        &self,
        delivery_id: i64,
        attempt: i32,
        lease: std::time::Duration,
    ) -> Result<Claim, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "WITH d AS (UPDATE webhook_deliveries SET leased_until = now() + make_interval(secs => $3)
                             WHERE id = $1 AND status = 'pending' AND attempts = $2
                               AND (leased_until IS NULL OR leased_until < now())
                            RETURNING id, endpoint_id, event_id)
                 SELECT d.id, e.id, e.url, ev.id, ev.type, ev.created_at, ev.payload::text,
                        COALESCE(live.ids, '{}'), COALESCE(live.key_ids, '{}'), COALESCE(live.secrets, '{}')
                   FROM d JOIN webhook_endpoints e ON e.id = d.endpoint_id JOIN webhook_events ev ON ev.id = d.event_id
                   -- The live secrets, read once, in the order they were added.
                   LEFT JOIN LATERAL (
                        SELECT array_agg(s.id ORDER BY s.created_at) AS ids,
                               array_agg(s.key_id ORDER BY s.created_at) AS key_ids,
                               array_agg(s.secret ORDER BY s.created_at) AS secrets
                          FROM webhook_secrets s
                         WHERE s.endpoint_id = e.id AND (s.expires_at IS NULL OR s.expires_at > now())) live ON true",
            )
            .await?;
        let Some(r) = client.query_opt(&stmt, &[&delivery_id, &attempt, &lease.as_secs_f64()]).await? else {
            let held = client
                .query_opt(
                    "SELECT leased_until FROM webhook_deliveries
                      WHERE id = $1 AND status = 'pending' AND attempts = $2 AND leased_until >= now()",
                    &[&delivery_id, &attempt],
                )
                .await?;
            return Ok(match held {
                Some(r) => Claim::HeldUntil(r.get(0)),
                None => Claim::Stale,
            });
        };
        let endpoint_id: String = r.get(1);
        let ids: Vec<String> = r.get(7);
        let key_ids: Vec<String> = r.get(8);
        let blobs: Vec<Vec<u8>> = r.get(9);
        let secrets = ids
            .iter()
            .zip(&key_ids)
            .zip(&blobs)
            .map(|((id, k), b)| self.open_secret(&endpoint_id, id, k, b))
            .collect::<Result<_, _>>()?;
        let body: String = r.get(6);
        Ok(Claim::Got(Claimed {
            delivery_id: r.get(0),
            endpoint_id,
            url: r.get(2),
            event_id: r.get(3),
            event_type: r.get(4),
            event_created_at: r.get(5),
            body: body.into_bytes(),
            secrets,
        }))
    }

    /// Lets go of a claimed delivery without an attempt (it is sent later).
    pub async fn release_delivery(&self, delivery_id: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.execute("UPDATE webhook_deliveries SET leased_until = NULL WHERE id = $1", &[&delivery_id]).await?;
        Ok(())
    }

    /// Records attempt `attempt + 1` and what follows from it: done, the next try (its message
    /// written in the same transaction), or failed for good.
    pub async fn record_attempt(
        &self,
        delivery_id: i64,
        attempt: i32,
        status: Option<u16>,
        error: Option<&str>,
        duration: std::time::Duration,
    ) -> Result<AttemptOutcome, StoreError> {
        let succeeded = status.is_some_and(|s| (200..300).contains(&s)) && error.is_none();
        let made = attempt + 1;
        let next = if succeeded { None } else { crate::webhooks::retry_delay(made as u32) };
        let next_at = next.map(|d| Utc::now() + chrono::Duration::from_std(d).unwrap_or_default());
        let new_status = match (succeeded, next_at) {
            (true, _) => "succeeded",
            (false, Some(_)) => "pending",
            (false, None) => "failed",
        };
        let status_i = status.map(i32::from);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let updated = tx
            .execute(
                "UPDATE webhook_deliveries SET attempts = $3, status = $4, next_attempt_at = $5, leased_until = NULL,
                        last_status = $6, last_error = $7,
                        finished_at = CASE WHEN $4 = 'pending' THEN NULL ELSE now() END
                  WHERE id = $1 AND attempts = $2",
                &[&delivery_id, &attempt, &made, &new_status, &next_at, &status_i, &error],
            )
            .await?;
        if updated == 0 {
            return Ok(AttemptOutcome::Stale);
        }
        tx.execute(
            "INSERT INTO webhook_attempts (delivery_id, n, status, error, duration_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            &[&delivery_id, &made, &status_i, &error, &(duration.as_secs_f64() * 1000.0)],
        )
        .await?;
        if let Some(at) = next_at {
            tx.execute(
                "INSERT INTO outbox (topic, payload)
                 VALUES ($1, jsonb_build_object('delivery_id', $2::bigint, 'attempt', $3::int, 'due_at', $4::timestamptz))",
                &[&TOPIC_WEBHOOK, &delivery_id, &made, &at],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(match (succeeded, next_at) {
            (true, _) => AttemptOutcome::Succeeded,
            (false, Some(at)) => AttemptOutcome::Retrying(at),
            (false, None) => AttemptOutcome::Exhausted,
        })
    }

    /// Pending deliveries whose attempt fell due before `before` and that no sender holds: their
    /// message was lost (a purged queue, a restored backup). Writes a new message for each;
    /// returns how many. A copy of a message that was not lost after all finds the delivery
    /// already attempted and is dropped.
    pub async fn reschedule_overdue_deliveries(&self, before: DateTime<Utc>, limit: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "WITH d AS (UPDATE webhook_deliveries SET next_attempt_at = now()
                             WHERE id IN (SELECT id FROM webhook_deliveries
                                           WHERE status = 'pending' AND next_attempt_at < $1
                                             AND (leased_until IS NULL OR leased_until < now())
                                           ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                            RETURNING id, attempts)
                 INSERT INTO outbox (topic, payload)
                 SELECT $3, jsonb_build_object('delivery_id', d.id, 'attempt', d.attempts, 'due_at', now()) FROM d",
                &[&before, &limit, &TOPIC_WEBHOOK],
            )
            .await?)
    }

    /// Deletes events (with their deliveries) older than `before` that wait for no delivery.
    pub async fn prune_webhook_events(&self, before: DateTime<Utc>, limit: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "DELETE FROM webhook_events WHERE id IN (
                    SELECT e.id FROM webhook_events e
                     WHERE e.created_at < $1
                       AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id AND d.status = 'pending')
                     ORDER BY e.created_at LIMIT $2)",
                &[&before, &limit],
            )
            .await?)
    }

    /// Deliveries by status, for metrics.
    pub async fn delivery_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT status, count(*) FROM webhook_deliveries GROUP BY status ORDER BY status", &[])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
