//! RabbitMQ: the refresh topology, expiry events, a self-healing publisher with confirms.
//!
//! Delay without plugins: per-message TTL in one queue expires only at its head, so a long
//! delay would block a short one behind it. Instead there are delay *tiers*, one classic queue
//! per fixed delay, each with a queue-level TTL that dead-letters into the work exchange. An
//! event is published into the longest tier not longer than its remaining wait; the consumer
//! that receives it still early puts it back into the next tier. Every message in one tier
//! waits equally long, so none waits behind another.
//!
//! ```text
//!   publish ──► {p}.delay (direct) ──tier──► {p}.delay.<N>s  (TTL N s) ─┐ dead-letter
//!   publish (due) ──────────────────────────────────────────────────────┴► {p}.refresh (direct)
//!        ──"due"──► {p}.refresh.due (quorum, delivery limit) ──► token-refresher
//!        rejected past the limit ──► {p}.dead (fanout) ──► {p}.refresh.dead
//! ```
//!
//! Webhook deliveries travel the same way on a lane of their own (`{p}.webhooks`,
//! `{p}.webhooks.delay.<N>s`, `{p}.webhooks.send`), so a backlog of deliveries to a dead
//! endpoint never sits in front of a refresh.

use crate::config::Secret;
use crate::store::{OutboxMessage, TOPIC_WEBHOOK};
use chrono::{DateTime, Utc};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::Mutex;

/// Outbox topic of expiry events.
pub const TOPIC_EXPIRY: &str = "token.expiry";
/// The delay tiers, in seconds. A wait shorter than the first tier goes straight to work.
/// A 1-2-5-like ladder: any wait is covered in a few hops (a token refreshed 300 s before a
/// one-hour expiry, due in 3,300 s, takes three: 1800, 1200, 300), and every hop is a publish,
/// a dead-letter and a delivery on the broker, so fewer hops cost RabbitMQ less per refresh and
/// add less jitter. Tiers are only ever added: a queue of a tier dropped from this list would
/// still dead-letter its messages into the work queue, but nothing would declare it again.
pub const DELAY_TIERS_SECS: [u64; 13] = [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600];
/// A queue redelivers a message this many times before dead-lettering it.
pub const DELIVERY_LIMIT: i32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("RabbitMQ unavailable: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ did not answer in time")]
    Timeout,
    #[error("RabbitMQ refused the message (nack or unroutable)")]
    Refused,
    #[error("bad event payload: {0}")]
    Payload(#[from] serde_json::Error),
}

/// "This connection's token should be refreshed at `due_at`."
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpiryEvent {
    pub provider: String,
    pub connection_id: String,
    /// The token version the event was scheduled for; a newer stored version makes it stale.
    pub token_version: i64,
    pub due_at: DateTime<Utc>,
    /// 0 for a regular refresh; n for the n-th retry after failures.
    #[serde(default)]
    pub attempt: u32,
    /// W3C trace context of the action that scheduled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl ExpiryEvent {
    pub fn to_outbox(&self) -> OutboxMessage {
        OutboxMessage { topic: TOPIC_EXPIRY.to_owned(), payload: serde_json::to_value(self).expect("event serializes") }
    }
}

/// "Send attempt `attempt + 1` of this webhook delivery at `due_at`."
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookMessage {
    pub delivery_id: i64,
    /// Attempts made before this one.
    pub attempt: i32,
    pub due_at: DateTime<Utc>,
}

impl WebhookMessage {
    pub fn to_outbox(&self) -> OutboxMessage {
        OutboxMessage {
            topic: TOPIC_WEBHOOK.to_owned(),
            payload: serde_json::to_value(self).expect("message serializes"),
        }
    }
}

/// A message the relay knows how to route.
enum Routed {
    Expiry(ExpiryEvent),
    Webhook(WebhookMessage),
}

/// Names of every exchange and queue, under one prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
}

impl Topology {
    pub fn work_exchange(&self) -> String {
        format!("{}.refresh", self.prefix)
    }
    pub fn work_queue(&self) -> String {
        format!("{}.refresh.due", self.prefix)
    }
    pub fn delay_exchange(&self) -> String {
        format!("{}.delay", self.prefix)
    }
    pub fn delay_queue(&self, secs: u64) -> String {
        format!("{}.delay.{secs}s", self.prefix)
    }
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    pub fn dead_queue(&self) -> String {
        format!("{}.refresh.dead", self.prefix)
    }
    pub fn webhook_exchange(&self) -> String {
        format!("{}.webhooks", self.prefix)
    }
    pub fn webhook_queue(&self) -> String {
        format!("{}.webhooks.send", self.prefix)
    }
    pub fn webhook_delay_exchange(&self) -> String {
        format!("{}.webhooks.delay", self.prefix)
    }
    pub fn webhook_delay_queue(&self, secs: u64) -> String {
        format!("{}.webhooks.delay.{secs}s", self.prefix)
    }
    pub fn all_queues(&self) -> Vec<String> {
        let mut q = vec![self.work_queue(), self.dead_queue(), self.webhook_queue()];
        q.extend(DELAY_TIERS_SECS.iter().map(|s| self.delay_queue(*s)));
        q.extend(DELAY_TIERS_SECS.iter().map(|s| self.webhook_delay_queue(*s)));
        q
    }
    pub fn all_exchanges(&self) -> Vec<String> {
        vec![
            self.work_exchange(),
            self.delay_exchange(),
            self.dead_exchange(),
            self.webhook_exchange(),
            self.webhook_delay_exchange(),
        ]
    }
}

/// The tier for a remaining wait: the longest one not longer than it, or `None` to deliver now.
pub fn tier_for(remaining: Duration) -> Option<u64> {
    DELAY_TIERS_SECS.iter().rev().copied().find(|t| Duration::from_secs(*t) <= remaining)
}

fn s(v: &str) -> ShortString {
    v.into()
}

fn ls(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

/// Declares the whole topology, both lanes; idempotent.
pub async fn declare(ch: &Channel, t: &Topology) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(s(&t.dead_exchange()), ExchangeKind::Fanout, durable, FieldTable::default()).await?;
    let qopts = QueueDeclareOptions { durable: true, ..Default::default() };
    let mut quorum = FieldTable::default();
    quorum.insert(s("x-queue-type"), ls("quorum"));
    ch.queue_declare(s(&t.dead_queue()), qopts, quorum).await?;
    ch.queue_bind(s(&t.dead_queue()), s(&t.dead_exchange()), s(""), QueueBindOptions::default(), FieldTable::default())
        .await?;
    declare_lane(ch, t, &t.work_exchange(), &t.work_queue(), "due", &t.delay_exchange(), |n| t.delay_queue(n)).await?;
    declare_lane(ch, t, &t.webhook_exchange(), &t.webhook_queue(), "send", &t.webhook_delay_exchange(), |n| {
        t.webhook_delay_queue(n)
    })
    .await
}

/// One lane: a work exchange and its quorum queue, and the delay tiers that dead-letter into it.
async fn declare_lane(
    ch: &Channel,
    t: &Topology,
    exchange: &str,
    queue: &str,
    key: &str,
    delay_exchange: &str,
    tier: impl Fn(u64) -> String,
) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(s(exchange), ExchangeKind::Direct, durable, FieldTable::default()).await?;
    ch.exchange_declare(s(delay_exchange), ExchangeKind::Direct, durable, FieldTable::default()).await?;
    let qopts = QueueDeclareOptions { durable: true, ..Default::default() };
    let mut work_args = FieldTable::default();
    work_args.insert(s("x-queue-type"), ls("quorum"));
    work_args.insert(s("x-delivery-limit"), AMQPValue::LongInt(DELIVERY_LIMIT));
    work_args.insert(s("x-dead-letter-exchange"), ls(&t.dead_exchange()));
    ch.queue_declare(s(queue), qopts, work_args).await?;
    ch.queue_bind(s(queue), s(exchange), s(key), QueueBindOptions::default(), FieldTable::default()).await?;
    for secs in DELAY_TIERS_SECS {
        let mut args = FieldTable::default();
        args.insert(s("x-message-ttl"), AMQPValue::LongInt((secs * 1000) as i32));
        args.insert(s("x-dead-letter-exchange"), ls(exchange));
        args.insert(s("x-dead-letter-routing-key"), ls(key));
        let q = tier(secs);
        ch.queue_declare(s(&q), qopts, args).await?;
        ch.queue_bind(
            s(&q),
            s(delay_exchange),
            s(&format!("{secs}s")),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(())
}

/// Opens a connection with a bounded wait.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(Duration::from_secs(5), Connection::connect(url, props)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(BrokerError::Timeout),
    }
}

struct Live {
    conn: Connection,
    channel: Channel,
}

/// A publisher that connects lazily, declares the topology once per connection, waits for
/// publisher confirms, and reconnects on the next use after any failure.
pub struct Broker {
    url: Secret<String>,
    name: String,
    pub topology: Topology,
    live: Mutex<Option<Live>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("topology", &self.topology).finish_non_exhaustive()
    }
}

impl Broker {
    pub fn new(url: Secret<String>, prefix: &str, name: &str) -> Self {
        Self { url, name: name.to_owned(), topology: Topology { prefix: prefix.to_owned() }, live: Mutex::new(None) }
    }

    pub fn url(&self) -> &str {
        self.url.expose()
    }

    async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref() {
            if l.conn.status().connected() && l.channel.status().connected() {
                return Ok(l.channel.clone());
            }
        }
        if let Some(old) = live.take() {
            let _ = old.conn.close(200, s("reconnecting")).await;
        }
        let conn = connect(self.url.expose(), &self.name).await?;
        let channel = conn.create_channel().await?;
        declare(&channel, &self.topology).await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        *live = Some(Live { conn, channel: channel.clone() });
        Ok(channel)
    }

    async fn invalidate(&self) {
        if let Some(old) = self.live.lock().await.take() {
            let _ = old.conn.close(200, s("reset after error")).await;
        }
    }

    /// Readiness: connected (or able to connect) to RabbitMQ with the topology declared.
    pub async fn ping(&self) -> Result<(), BrokerError> {
        self.channel().await.map(|_| ())
    }

    /// Where a message goes now: a delay tier of its lane, or straight to the lane's work queue.
    fn route(&self, m: &Routed) -> (String, String) {
        let (due_at, webhook) = match m {
            Routed::Expiry(ev) => (ev.due_at, false),
            Routed::Webhook(w) => (w.due_at, true),
        };
        let t = &self.topology;
        let remaining = (due_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        match (tier_for(remaining), webhook) {
            (Some(secs), false) => (t.delay_exchange(), format!("{secs}s")),
            (None, false) => (t.work_exchange(), "due".to_owned()),
            (Some(secs), true) => (t.webhook_delay_exchange(), format!("{secs}s")),
            (None, true) => (t.webhook_exchange(), "send".to_owned()),
        }
    }

    async fn publish_raw(&self, ch: &Channel, m: &Routed) -> Result<lapin::PublisherConfirm, BrokerError> {
        let (exchange, key) = self.route(m);
        let mut headers = FieldTable::default();
        let body = match m {
            Routed::Expiry(ev) => {
                if let Some(tp) = &ev.traceparent {
                    headers.insert(s("traceparent"), ls(tp));
                }
                serde_json::to_vec(ev)?
            }
            Routed::Webhook(w) => serde_json::to_vec(w)?,
        };
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(s("application/json"))
            .with_headers(headers);
        let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
        Ok(ch.basic_publish(s(&exchange), s(&key), opts, &body, props).await?)
    }

    async fn confirm(confirm: lapin::PublisherConfirm) -> Result<(), BrokerError> {
        match tokio::time::timeout(Duration::from_secs(10), confirm).await {
            Err(_) => Err(BrokerError::Timeout),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(lapin::Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(lapin::Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(_)) => Err(BrokerError::Refused),
        }
    }

    /// Publishes one event and waits for RabbitMQ to confirm it is stored.
    pub async fn publish_expiry(&self, ev: &ExpiryEvent) -> Result<(), BrokerError> {
        self.publish_one(Routed::Expiry(ev.clone())).await
    }

    /// Publishes one webhook delivery message and waits for RabbitMQ to confirm it is stored.
    pub async fn publish_webhook(&self, m: &WebhookMessage) -> Result<(), BrokerError> {
        self.publish_one(Routed::Webhook(m.clone())).await
    }

    async fn publish_one(&self, m: Routed) -> Result<(), BrokerError> {
        let result = async {
            let ch = self.channel().await?;
            let c = self.publish_raw(&ch, &m).await?;
            Self::confirm(c).await
        }
        .await;
        if result.is_err() {
            self.invalidate().await;
        }
        result
    }

    /// Publishes a batch from the outbox; returns the ids RabbitMQ confirmed (in order, stopping
    /// at the first failure, so nothing unconfirmed is ever reported as sent).
    pub async fn publish_outbox(&self, rows: Vec<crate::store::OutboxRow>) -> Vec<i64> {
        let ch = match self.channel().await {
            Ok(ch) => ch,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay cannot reach RabbitMQ; will retry");
                return Vec::new();
            }
        };
        let mut pending = Vec::with_capacity(rows.len());
        let mut done = Vec::with_capacity(rows.len());
        for row in rows {
            let parsed = match row.message.topic.as_str() {
                TOPIC_EXPIRY => serde_json::from_value(row.message.payload).map(Routed::Expiry),
                TOPIC_WEBHOOK => serde_json::from_value(row.message.payload).map(Routed::Webhook),
                other => {
                    tracing::error!(topic = %other, "unknown outbox topic; dropping");
                    done.push(row.id);
                    continue;
                }
            };
            let m = match parsed {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %e, "malformed outbox event; dropping");
                    done.push(row.id);
                    continue;
                }
            };
            match self.publish_raw(&ch, &m).await {
                Ok(c) => pending.push((row.id, c)),
                Err(e) => {
                    tracing::warn!(error = %e, "publishing from outbox failed");
                    break;
                }
            }
        }
        let mut failed = false;
        for (id, c) in pending {
            if failed {
                break;
            }
            match Self::confirm(c).await {
                Ok(()) => done.push(id),
                Err(e) => {
                    tracing::warn!(error = %e, "RabbitMQ did not confirm an outbox event");
                    failed = true;
                }
            }
        }
        if failed {
            self.invalidate().await;
        }
        done
    }

    /// Puts an unprocessable message into the dead-letter queue with the reason in the
    /// `x-authbridge-reason` header, and waits for the confirm.
    pub async fn publish_dead(&self, body: &[u8], reason: &str) -> Result<(), BrokerError> {
        let result = async {
            let ch = self.channel().await?;
            let mut headers = FieldTable::default();
            headers.insert(s("x-authbridge-reason"), ls(reason));
            let props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
            let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
            let c = ch.basic_publish(s(&self.topology.dead_exchange()), s(""), opts, body, props).await?;
            Self::confirm(c).await
        }
        .await;
        if result.is_err() {
            self.invalidate().await;
        }
        result
    }

    /// Messages waiting in a queue (passive declare), for tests and metrics.
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        Ok(self.queue_state(queue).await?.0)
    }

    /// Messages ready in a queue and consumers attached to it.
    pub async fn queue_state(&self, queue: &str) -> Result<(u32, u32), BrokerError> {
        let ch = self.channel().await?;
        let q = ch
            .queue_declare(s(queue), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
            .await?;
        Ok((q.message_count(), q.consumer_count()))
    }

    /// Deletes every queue and exchange of this prefix (test clean-up).
    pub async fn delete_topology(&self) -> Result<(), BrokerError> {
        let ch = self.channel().await?;
        for q in self.topology.all_queues() {
            ch.queue_delete(s(&q), QueueDeleteOptions::default()).await?;
        }
        for x in self.topology.all_exchanges() {
            ch.exchange_delete(s(&x), ExchangeDeleteOptions::default()).await?;
        }
        self.invalidate().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_pick_the_longest_tier_that_fits() {
        assert_eq!(tier_for(Duration::from_millis(400)), None);
        assert_eq!(tier_for(Duration::from_millis(1500)), Some(1));
        assert_eq!(tier_for(Duration::from_secs(29)), Some(20));
        assert_eq!(tier_for(Duration::from_secs(3300)), Some(1800));
        assert_eq!(tier_for(Duration::from_secs(30)), Some(30));
        assert_eq!(tier_for(Duration::from_secs(86_400)), Some(3600));
    }
}
