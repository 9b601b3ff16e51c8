//! The transactional outbox: events written in the same transaction as the change they
//! announce, and relayed to RabbitMQ afterwards, so a change and its event happen together or
//! not at all.

use super::{Store, StoreError};
use deadpool_postgres::GenericClient;

/// Outbox topic of webhook delivery messages (`{"delivery_id", "attempt", "due_at"}`).
pub const TOPIC_WEBHOOK: &str = "webhook.delivery";

/// An event to publish once the surrounding transaction commits.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub topic: String,
    pub payload: serde_json::Value,
}

/// An event waiting in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub message: OutboxMessage,
}

pub(super) async fn insert_outbox<C: GenericClient>(client: &C, m: &OutboxMessage) -> Result<(), StoreError> {
    let stmt = client.prepare_cached("INSERT INTO outbox (topic, payload) VALUES ($1, $2)").await?;
    client.execute(&stmt, &[&m.topic, &m.payload]).await?;
    Ok(())
}

impl Store {
    /// Writes events on their own (for example, the sweep's reschedules).
    pub async fn enqueue(&self, messages: &[OutboxMessage]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        for m in messages {
            insert_outbox(&tx, m).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Relays a batch: locks up to `limit` pending events (skipping those another relay holds),
    /// hands them to `publish`, and deletes the ones it confirms, all in one transaction.
    /// Returns how many were published.
    pub async fn relay_outbox<F, Fut>(&self, limit: i64, publish: F) -> Result<usize, StoreError>
    where
        F: FnOnce(Vec<OutboxRow>) -> Fut,
        Fut: std::future::Future<Output = Vec<i64>>,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let stmt = tx
            .prepare_cached("SELECT id, topic, payload FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED")
            .await?;
        let rows = tx.query(&stmt, &[&limit]).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let batch = rows
            .iter()
            .map(|r| OutboxRow { id: r.get(0), message: OutboxMessage { topic: r.get(1), payload: r.get(2) } })
            .collect();
        let done = publish(batch).await;
        if !done.is_empty() {
            let stmt = tx.prepare_cached("DELETE FROM outbox WHERE id = ANY($1)").await?;
            tx.execute(&stmt, &[&done]).await?;
        }
        tx.commit().await?;
        Ok(done.len())
    }

    /// How many events wait to be relayed.
    pub async fn outbox_len(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        Ok(client.query_one("SELECT count(*) FROM outbox", &[]).await?.get(0))
    }
}
