//! One delivery → one outcome. Acknowledged only after the work it caused is committed.

use crate::Ctx;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use shared::messaging::ExpiryEvent;
use shared::tokens::{Outcome, TokenError, Trigger};
use std::time::Duration;

/// What was done with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done (refreshed, already fresh, stale, failed with a retry scheduled, or needs reauth).
    Acked,
    /// Still early: published into the next delay tier, then acknowledged.
    Redelayed,
    /// Could not be processed now (database down): returned to the queue.
    Requeued,
    /// Unprocessable: dead-lettered with the reason logged.
    DeadLettered,
}

/// Dead-letters a delivery with its reason: published to the dead-letter queue with the reason
/// in a header, then acknowledged; if that publish fails, rejected (RabbitMQ dead-letters it
/// without the header). Counted in `authbridge_dead_lettered_total`.
async fn dead_letter(ctx: &Ctx, delivery: Delivery, reason: &'static str) -> Disposition {
    ctx.metrics.inc("authbridge_dead_lettered_total", &format!("reason=\"{reason}\""));
    match ctx.core.broker.publish_dead(&delivery.data, reason).await {
        Ok(()) => {
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not publish to the dead-letter queue; rejecting instead");
            let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        }
    }
    Disposition::DeadLettered
}

fn traceparent(d: &Delivery) -> Option<String> {
    let headers = d.properties.headers().as_ref()?;
    headers.inner().iter().find(|(k, _)| k.as_str() == "traceparent").and_then(|(_, v)| match v {
        lapin::types::AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    })
}

pub async fn handle(ctx: &Ctx, delivery: Delivery) -> Disposition {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "expiry_event",
        provider = tracing::field::Empty,
        connection_id = tracing::field::Empty,
        outcome = tracing::field::Empty
    );
    shared::telemetry::set_remote_parent(&span, traceparent(&delivery).as_deref());
    // Instrumented, not entered: a span entered across an await would stay "current" on the
    // worker thread while the task is parked, and leak into other tasks' traces.
    handle_in_span(ctx, delivery, &span).instrument(span.clone()).await
}

async fn handle_in_span(ctx: &Ctx, delivery: Delivery, span: &tracing::Span) -> Disposition {
    let ev: ExpiryEvent = match serde_json::from_slice(&delivery.data) {
        Ok(ev) => ev,
        Err(e) => {
            tracing::error!(error = %e, "unreadable expiry event; dead-lettering");
            return dead_letter(ctx, delivery, "unreadable_event").await;
        }
    };
    span.record("provider", ev.provider.as_str());
    span.record("connection_id", ev.connection_id.as_str());
    let early = ev.due_at - chrono::Utc::now();
    if early > chrono::Duration::seconds(1) {
        // Next delay tier. Publish first, then ack: a crash in between duplicates, never loses.
        return match ctx.core.broker.publish_expiry(&ev).await {
            Ok(()) => {
                let _ = delivery.ack(BasicAckOptions::default()).await;
                ctx.metrics.inc("authbridge_refresh_events_total", "outcome=\"redelayed\"");
                Disposition::Redelayed
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not re-delay an early event; requeueing");
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                ctx.metrics.inc("authbridge_refresh_events_total", "outcome=\"requeued\"");
                Disposition::Requeued
            }
        };
    }
    let lateness = (chrono::Utc::now() - ev.due_at).num_milliseconds().max(0) as f64 / 1000.0;
    ctx.metrics.observe("authbridge_refresh_lateness_seconds", "", lateness);
    let trigger = Trigger::Scheduled { version: ev.token_version, attempt: ev.attempt, due_at: ev.due_at };
    match ctx.core.tokens.refresh(&ev.provider, &ev.connection_id, trigger).await {
        Ok(outcome) => {
            let label = match &outcome {
                Outcome::Refreshed(..) => "refreshed",
                Outcome::Current(..) => "stale",
                Outcome::NotDue => "not_due",
                Outcome::NotFound => "not_found",
                Outcome::NeedsReauth { .. } => "needs_reauth",
                Outcome::Failed { .. } => "failed_retry_scheduled",
            };
            span.record("outcome", label);
            ctx.metrics.inc("authbridge_refresh_events_total", &format!("outcome=\"{label}\""));
            tracing::debug!(outcome = label, "expiry event handled");
            let _ = delivery.ack(BasicAckOptions::default()).await;
            Disposition::Acked
        }
        Err(TokenError::UnknownProvider(p)) => {
            tracing::error!(provider = %p, "expiry event for a provider no longer in the catalog; dead-lettering");
            dead_letter(ctx, delivery, "unknown_provider").await
        }
        Err(TokenError::Store(e)) => {
            // The queue's delivery limit bounds this; the sweep reschedules anything that
            // ends up dead-lettered once the database is back.
            tracing::warn!(error = %e, "database unavailable; requeueing the expiry event");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
            ctx.metrics.inc("authbridge_refresh_events_total", "outcome=\"requeued\"");
            Disposition::Requeued
        }
    }
}
