//! The webhook sender: consumes delivery messages from the webhook lane, signs each event per
//! the Standard Webhooks specification and POSTs it to its endpoint, and records the attempt
//! (with the next try, if any, in the same transaction).
//!
//! It runs in the refresher's process but apart from refreshing: its own AMQP connection,
//! channel and prefetch, its own queue. And within it, no endpoint can hold more than
//! `per_endpoint` sends at once: a delivery for an endpoint that is already that busy is put
//! back a few seconds, so a slow or dead endpoint (10 s per attempt) never takes the slots of
//! the others.

use crate::Ctx;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use shared::messaging::WebhookMessage;
use shared::store::{AttemptOutcome, Claim, Claimed};
use shared::webhooks::{check_url, is_public, signature_header, SEND_TIMEOUT};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How long a claimed delivery stays the claimer's: the send's own limit and some. A sender
/// that dies mid-send holds its deliveries this long; then they are sent again.
const LEASE: Duration = Duration::from_secs(15);
/// How far a delivery for a busy endpoint is put back.
const BUSY_DEFER: chrono::Duration = chrono::Duration::seconds(5);

/// What the sender needs besides the core.
pub struct Sender {
    http: reqwest::Client,
    per_endpoint: usize,
    busy: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Resolves names to public addresses only: a webhook URL whose name resolves to a private
/// address (now, or after a DNS change) is not sent to.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = addrs.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl Sender {
    pub fn new(allow_private: bool, per_endpoint: usize) -> Self {
        let mut b = reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            .connect_timeout(SEND_TIMEOUT.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("authbridge-webhooks/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30));
        if !allow_private {
            b = b.dns_resolver(Arc::new(PublicOnly));
        }
        Self {
            http: b.build().expect("HTTP client builds"),
            per_endpoint: per_endpoint.max(1),
            busy: Default::default(),
        }
    }

    fn permit(&self, endpoint: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let sem = {
            let mut busy = self.busy.lock().expect("not poisoned");
            busy.entry(endpoint.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(self.per_endpoint))).clone()
        };
        sem.try_acquire_owned().ok()
    }

    /// One POST: the endpoint's status, or what went wrong before it answered.
    async fn send(&self, c: &Claimed, allow_private: bool) -> (Option<u16>, Option<String>) {
        // The rules the endpoint was created under, again (names are checked by the resolver).
        if let Err(e) = check_url(&c.url, allow_private) {
            return (None, Some(e));
        }
        let timestamp = chrono::Utc::now().timestamp();
        let signature = signature_header(&c.secrets, &c.event_id, timestamp, &c.body);
        let sent = self
            .http
            .post(&c.url)
            .header("content-type", "application/json")
            .header("webhook-id", &c.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(c.body.clone())
            .send()
            .await;
        match sent {
            // The body is not read: only the status counts, and a slow body must not hold us.
            Ok(r) => (Some(r.status().as_u16()), None),
            Err(e) if e.is_timeout() => (None, Some(format!("no answer within {} s", SEND_TIMEOUT.as_secs()))),
            Err(e) => (None, Some(describe(&e))),
        }
    }
}

/// A send error in a few words, without the URL (its query may hold the receiver's token).
fn describe(e: &reqwest::Error) -> String {
    let mut msg = if e.is_connect() { "could not connect".to_owned() } else { "request failed".to_owned() };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    msg.chars().take(300).collect()
}

async fn requeue(ctx: &Ctx, delivery: Delivery, why: &str) {
    tracing::warn!(why, "webhook delivery requeued");
    ctx.metrics.inc("authbridge_webhook_messages_total", "outcome=\"requeued\"");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
}

/// Publishes the message again for later (a delay tier), then acknowledges this copy: a crash
/// in between duplicates it, never loses it.
async fn put_back(ctx: &Ctx, delivery: Delivery, m: &WebhookMessage) {
    match ctx.core.broker.publish_webhook(m).await {
        Ok(()) => {
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        Err(e) => requeue(ctx, delivery, &format!("could not delay it: {e}")).await,
    }
}

/// One delivery message → at most one POST.
pub async fn handle(ctx: &Ctx, delivery: Delivery) {
    let m: WebhookMessage = match serde_json::from_slice(&delivery.data) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "unreadable webhook message; dead-lettering");
            ctx.metrics.inc("authbridge_dead_lettered_total", "reason=\"unreadable_webhook_message\"");
            if ctx.core.broker.publish_dead(&delivery.data, "unreadable_webhook_message").await.is_ok() {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            } else {
                let _ = delivery.reject(Default::default()).await;
            }
            return;
        }
    };
    if m.due_at - chrono::Utc::now() > chrono::Duration::seconds(1) {
        ctx.metrics.inc("authbridge_webhook_messages_total", "outcome=\"redelayed\"");
        return put_back(ctx, delivery, &m).await;
    }
    let claimed = match ctx.core.store.claim_delivery(m.delivery_id, m.attempt, LEASE).await {
        Ok(Claim::Got(c)) => c,
        Ok(Claim::Stale) => {
            // Done already, attempted by another copy of this message, or its endpoint deleted.
            ctx.metrics.inc("authbridge_webhook_messages_total", "outcome=\"stale\"");
            let _ = delivery.ack(BasicAckOptions::default()).await;
            return;
        }
        Ok(Claim::HeldUntil(until)) => {
            // Another sender has it, or had it and died (this is its message, redelivered):
            // look again when the lease lapses.
            ctx.metrics.inc("authbridge_webhook_messages_total", "outcome=\"held\"");
            let later = WebhookMessage { due_at: until + chrono::Duration::milliseconds(100), ..m };
            return put_back(ctx, delivery, &later).await;
        }
        Err(e) => return requeue(ctx, delivery, &format!("database: {e}")).await,
    };
    let Some(_permit) = ctx.sender.permit(&claimed.endpoint_id) else {
        ctx.metrics.inc("authbridge_webhook_messages_total", "outcome=\"endpoint_busy\"");
        if let Err(e) = ctx.core.store.release_delivery(m.delivery_id).await {
            tracing::warn!(error = %e, "could not release a delivery; it is sent once its lease lapses");
        }
        let later = WebhookMessage { due_at: chrono::Utc::now() + BUSY_DEFER, ..m };
        return put_back(ctx, delivery, &later).await;
    };
    let started = Instant::now();
    let (status, error) = ctx.sender.send(&claimed, ctx.settings.common.webhook_allow_private).await;
    let took = started.elapsed();
    let recorded = ctx.core.store.record_attempt(m.delivery_id, m.attempt, status, error.as_deref(), took).await;
    let outcome = match recorded {
        Ok(o) => o,
        Err(e) => {
            // The attempt happened but is not recorded: the lease keeps other copies off until
            // it lapses, then the sweep sends it again (at least once, never lost).
            tracing::warn!(error = %e, delivery_id = m.delivery_id, "could not record a webhook attempt");
            let _ = delivery.ack(BasicAckOptions::default()).await;
            return;
        }
    };
    let label = match outcome {
        AttemptOutcome::Succeeded => {
            let lag = (chrono::Utc::now() - claimed.event_created_at).num_milliseconds().max(0) as f64 / 1000.0;
            ctx.metrics.observe("authbridge_webhook_delivery_lag_seconds", "", lag);
            "succeeded"
        }
        AttemptOutcome::Retrying(_) => "retrying",
        AttemptOutcome::Exhausted => "failed",
        AttemptOutcome::Stale => "stale",
    };
    ctx.metrics.inc("authbridge_webhook_deliveries_total", &format!("outcome=\"{label}\""));
    tracing::info!(
        delivery_id = m.delivery_id,
        endpoint = %claimed.endpoint_id,
        event_type = %claimed.event_type,
        attempt = m.attempt + 1,
        status = status.map(i64::from).unwrap_or(-1),
        error = error.as_deref().unwrap_or(""),
        outcome = label,
        "webhook attempt"
    );
    if matches!(outcome, AttemptOutcome::Retrying(_)) {
        ctx.core.tokens.outbox_signal.notify_one();
    }
    let _ = delivery.ack(BasicAckOptions::default()).await;
}
