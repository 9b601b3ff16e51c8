//! One queue's consumer: its own AMQP connection and prefetch, bounded in-flight handlers,
//! manual acks (the handler acks), reconnection with backoff. The refresher runs two: expiry
//! events and webhook deliveries, so neither's backlog can hold up the other.

use crate::Ctx;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub struct Lane {
    pub queue: String,
    /// Messages handled at once.
    pub prefetch: u16,
    /// The AMQP connection's name (shown in RabbitMQ's management UI).
    pub name: &'static str,
    /// The flag readiness reads: attached to the queue now.
    pub attached: fn(&Ctx) -> &AtomicBool,
}

/// Consumes `lane` until shutdown, each message handled in a task of its own.
pub async fn run<H, F>(ctx: Arc<Ctx>, lane: Lane, mut shutdown: watch::Receiver<bool>, handle: H)
where
    H: Fn(Arc<Ctx>, Delivery) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(200);
    while !*shutdown.borrow() {
        match consume_once(&ctx, &lane, &mut shutdown, &handle).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                (lane.attached)(&ctx).store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, queue = %lane.queue, retry_in_ms = backoff.as_millis() as u64, "consumer lost RabbitMQ; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                }
                // Capped low: once RabbitMQ is back, due messages must be consumed promptly.
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    (lane.attached)(&ctx).store(false, Ordering::Relaxed);
}

async fn consume_once<H, F>(
    ctx: &Arc<Ctx>,
    lane: &Lane,
    shutdown: &mut watch::Receiver<bool>,
    handle: &H,
) -> anyhow::Result<()>
where
    H: Fn(Arc<Ctx>, Delivery) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let conn = shared::messaging::connect(ctx.core.broker.url(), lane.name).await?;
    let ch = conn.create_channel().await?;
    shared::messaging::declare(&ch, &ctx.core.broker.topology).await?;
    ch.basic_qos(lane.prefetch, BasicQosOptions::default()).await?;
    let tag = format!("{}-{}", lane.name, std::process::id());
    let mut consumer = ch
        .basic_consume(
            lane.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    (lane.attached)(ctx).store(true, Ordering::Relaxed);
    tracing::info!(queue = %lane.queue, prefetch = lane.prefetch, "consuming");
    let mut inflight = tokio::task::JoinSet::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.changed() => break Ok(()),
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                if let Err(e) = done { tracing::error!(error = %e, queue = %lane.queue, "message handler panicked"); }
            }
            next = consumer.next() => match next {
                None => break Err(anyhow::anyhow!("consumer stream ended")),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(delivery)) => { inflight.spawn(handle(ctx.clone(), delivery)); }
            }
        }
    };
    (lane.attached)(ctx).store(false, Ordering::Relaxed);
    // Stop new deliveries, let in-flight ones finish within the grace period.
    let _ = ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
    let grace = ctx.settings.common.shutdown_grace;
    let _ = tokio::time::timeout(grace, async { while inflight.join_next().await.is_some() {} }).await;
    inflight.abort_all();
    let _ = conn.close(200, "bye".into()).await;
    result
}
