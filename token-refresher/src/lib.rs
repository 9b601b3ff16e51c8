//! token-refresher: keeps every connection alive.
//!
//! Two consumers (`consumer.rs`), each on its own AMQP connection: one takes expiry events from
//! the work queue ([`refresh::handle`] does one), the other webhook deliveries from theirs
//! ([`webhooks::handle`] sends one). A sweep reschedules any connection, or delivery, that is
//! overdue with no message in flight (a lost message, a purged queue, a restored backup), and
//! prunes the audit trail and old webhook events. The process also serves `/healthz`,
//! `/readyz` and `/metrics`.

mod consumer;
pub mod refresh;
pub mod settings;
pub mod webhooks;

pub use settings::Settings;

use actix_web::{web, App, HttpResponse, HttpServer};
use shared::core::Core;
use shared::messaging::ExpiryEvent;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// State shared by the consumer, the sweep and the health server.
pub struct Ctx {
    pub core: Core,
    pub settings: Settings,
    pub consuming: AtomicBool,
    /// Whether the webhook sender is attached to its queue.
    pub sending: AtomicBool,
    pub sender: webhooks::Sender,
    pub metrics: shared::metrics::Registry,
}

fn registry() -> shared::metrics::Registry {
    let r = shared::metrics::Registry::new();
    r.describe("authbridge_refresh_events_total", "Expiry events handled, by outcome.");
    r.describe("authbridge_dead_lettered_total", "Expiry events sent to the dead-letter queue, by reason.");
    r.describe("authbridge_sweep_rescheduled_total", "Overdue connections the sweep rescheduled, by how.");
    r.describe_histogram(
        "authbridge_refresh_lateness_seconds",
        "How long after its due time an expiry event was handled.",
    );
    r.describe("authbridge_webhook_deliveries_total", "Webhook attempts, by what came of the delivery.");
    r.describe("authbridge_webhook_messages_total", "Webhook messages not sent now, by why.");
    r.describe_histogram(
        "authbridge_webhook_delivery_lag_seconds",
        "From an event to its successful delivery (retries included).",
    );
    r
}

pub struct Application {
    pub addr: SocketAddr,
    ctx: Arc<Ctx>,
    shutdown: watch::Sender<bool>,
    consumer: JoinHandle<()>,
    sender: JoinHandle<()>,
    sweep: JoinHandle<()>,
    http: shared::http::ServerTask,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let core = Core::start(&settings.common, "token-refresher").await?;
        let sender = webhooks::Sender::new(settings.common.webhook_allow_private, settings.webhook_per_endpoint);
        let ctx = Arc::new(Ctx {
            core,
            settings,
            consuming: AtomicBool::new(false),
            sending: AtomicBool::new(false),
            sender,
            metrics: registry(),
        });
        let (shutdown, rx) = watch::channel(false);
        let topology = &ctx.core.broker.topology;
        let refreshes = consumer::Lane {
            queue: topology.work_queue(),
            prefetch: ctx.settings.prefetch,
            name: "token-refresher-consumer",
            attached: |ctx| &ctx.consuming,
        };
        let deliveries = consumer::Lane {
            queue: topology.webhook_queue(),
            prefetch: ctx.settings.webhook_prefetch,
            name: "token-refresher-webhooks",
            attached: |ctx| &ctx.sending,
        };
        let consumer = tokio::spawn(consumer::run(ctx.clone(), refreshes, rx.clone(), |ctx, d| async move {
            refresh::handle(&ctx, d).await;
        }));
        let sender = tokio::spawn(consumer::run(ctx.clone(), deliveries, rx.clone(), |ctx, d| async move {
            webhooks::handle(&ctx, d).await;
        }));
        let sweep = tokio::spawn(sweep_loop(ctx.clone(), rx));
        let data = web::Data::from(ctx.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/healthz", web::get().to(shared::http::healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics))
                .default_service(web::to(shared::http::not_found))
        })
        .workers(1)
        .disable_signals()
        .bind(&ctx.settings.bind)
        .map_err(|e| anyhow::anyhow!("cannot listen on {} ({}): {e}", ctx.settings.bind, settings::BIND))?;
        let addr = server.addrs()[0];
        let http = shared::http::ServerTask::spawn(server.run(), addr);
        tracing::info!(%addr, "token-refresher running");
        Ok(Self { addr, ctx, shutdown, consumer, sender, sweep, http })
    }

    pub fn url(&self) -> String {
        shared::http::base_url(self.addr, false)
    }

    /// Stops consuming, lets in-flight refreshes finish (bounded by the grace period); messages
    /// not acknowledged by then are redelivered to another replica.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.consumer.await;
        let _ = self.sender.await;
        let _ = self.sweep.await;
        self.http.stop(true).await;
        if let Ok(mut ctx) = Arc::try_unwrap(self.ctx) {
            ctx.core.stop().await;
        }
    }

    /// Simulates a crash: in-flight refreshes are dropped mid-way (their transactions roll
    /// back), the AMQP connection closes without acknowledging (RabbitMQ redelivers), and the
    /// outbox relay stops without a last pass.
    pub async fn kill(self) {
        self.consumer.abort();
        self.sender.abort();
        self.sweep.abort();
        let _ = self.consumer.await;
        let _ = self.sender.await;
        let _ = self.sweep.await;
        self.http.stop(false).await;
        if let Ok(mut ctx) = Arc::try_unwrap(self.ctx) {
            ctx.core.abort();
        }
    }
}

async fn readyz(ctx: web::Data<Ctx>) -> HttpResponse {
    let consuming = if ctx.consuming.load(Ordering::Relaxed) { Ok(()) } else { Err("not consuming".to_string()) };
    let sending = if ctx.sending.load(Ordering::Relaxed) { Ok(()) } else { Err("not consuming".to_string()) };
    shared::http::readiness(vec![
        ("postgres", shared::http::probe(ctx.core.store.ping()).await),
        ("rabbitmq", shared::http::probe(ctx.core.broker.ping()).await),
        ("consumer", consuming),
        ("webhook_sender", sending),
    ])
}

async fn metrics(req: actix_web::HttpRequest, ctx: web::Data<Ctx>) -> HttpResponse {
    let presented = req.headers().get(actix_web::http::header::AUTHORIZATION).map(|v| v.as_bytes());
    if !shared::http::metrics_allowed(ctx.settings.common.metrics_token.as_ref(), presented) {
        return shared::http::metrics_refused();
    }
    let mut out = ctx.metrics.render();
    let topo = &ctx.core.broker.topology;
    let broker = &ctx.core.broker;
    let state = |queue: String| async move {
        match tokio::time::timeout(Duration::from_secs(2), broker.queue_state(&queue)).await {
            Ok(Ok(s)) => Some(s),
            _ => None,
        }
    };
    let work = state(topo.work_queue()).await;
    let dead = state(topo.dead_queue()).await;
    let mut delayed = Some(0u64);
    for secs in shared::messaging::DELAY_TIERS_SECS {
        delayed = match (delayed, state(topo.delay_queue(secs)).await) {
            (Some(sum), Some((n, _))) => Some(sum + u64::from(n)),
            _ => None,
        };
    }
    // A gauge whose queue could not be read is left out rather than reported as zero.
    let gauges = [
        ("authbridge_work_queue_depth", "Expiry events due and waiting for a refresher.", work.map(|w| w.0.into())),
        (
            "authbridge_work_queue_consumers",
            "Refresher consumers attached to the work queue (0: nothing is refreshing).",
            work.map(|w| w.1.into()),
        ),
        ("authbridge_dead_letter_queue_depth", "Expiry events in the dead-letter queue.", dead.map(|d| d.0.into())),
        ("authbridge_delayed_events", "Expiry events waiting in the delay tiers: scheduled, not yet due.", delayed),
    ];
    for (name, help, value) in gauges {
        if let Some(v) = value {
            shared::metrics::gauge(&mut out, name, help, v as f64);
        }
    }
    ctx.core.outbox_gauge(&mut out).await;
    if let Ok(counts) = ctx.core.store.delivery_counts().await {
        out.push_str("# HELP authbridge_webhook_deliveries Webhook deliveries kept, by status.\n");
        out.push_str("# TYPE authbridge_webhook_deliveries gauge\n");
        for (status, n) in counts {
            out.push_str(&format!("authbridge_webhook_deliveries{{status=\"{status}\"}} {n}\n"));
        }
    }
    shared::http::metrics_response(out)
}

/// Every `sweep_interval`, schedules active connections whose refresh is overdue by more than
/// `sweep_grace`. Reads only due rows (partial index), so its cost follows the due connections.
async fn sweep_loop(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let mut last_prune: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ctx.settings.sweep_interval) => {}
            _ = shutdown.changed() => return,
        }
        match sweep_once(&ctx).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(rescheduled = n, "sweep rescheduled overdue connections"),
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
        match sweep_deliveries(&ctx).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(rescheduled = n, "sweep rescheduled overdue webhook deliveries"),
            Err(e) => tracing::warn!(error = %e, "webhook sweep failed"),
        }
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(std::time::Instant::now());
            if let Err(e) = prune(&ctx).await {
                tracing::warn!(error = %e, "pruning the audit trail and old webhook events failed");
            }
        }
    }
}

const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Pending deliveries overdue with no sender holding them lost their message: they get a new one.
pub async fn sweep_deliveries(ctx: &Ctx) -> anyhow::Result<u64> {
    // A copy sent while the original message is only late (tier hops) is harmless: whichever
    // comes second finds the attempt made, or the delivery held, and is dropped or put back.
    let before = chrono::Utc::now() - chrono::Duration::from_std(ctx.settings.sweep_grace).unwrap_or_default();
    let n = ctx.core.store.reschedule_overdue_deliveries(before, 500).await?;
    if n > 0 {
        ctx.core.tokens.outbox_signal.notify_one();
    }
    Ok(n)
}

/// Drops audit entries and finished webhook events past their retention, a batch at a time.
pub async fn prune(ctx: &Ctx) -> anyhow::Result<()> {
    let common = &ctx.settings.common;
    let now = chrono::Utc::now();
    let audit_before = now - chrono::Duration::from_std(common.audit_retention).unwrap_or_default();
    let events_before = now - chrono::Duration::from_std(common.webhook_retention).unwrap_or_default();
    let (mut audit, mut events) = (0, 0);
    loop {
        let n = ctx.core.store.prune_audit(audit_before, 5000).await?;
        audit += n;
        if n < 5000 {
            break;
        }
    }
    loop {
        let n = ctx.core.store.prune_webhook_events(events_before, 5000).await?;
        events += n;
        if n < 5000 {
            break;
        }
    }
    if audit + events > 0 {
        tracing::info!(audit, events, "pruned past their retention");
    }
    Ok(())
}

/// One sweep pass; returns how many connections it rescheduled (at most one page of 500:
/// the ones just scheduled stay overdue until refreshed, so the next pass takes the rest).
///
/// While RabbitMQ is unreachable or this replica's consumer is not attached, queued events
/// cannot arrive, so the sweep refreshes overdue connections itself (the single-flight refresh
/// makes this safe alongside any consumer).
pub async fn sweep_once(ctx: &Ctx) -> anyhow::Result<usize> {
    let before = chrono::Utc::now() - chrono::Duration::from_std(ctx.settings.sweep_grace).unwrap_or_default();
    let overdue = ctx.core.store.overdue_connections(before, 500).await?;
    if overdue.is_empty() {
        return Ok(0);
    }
    // Events only help if this replica is consuming them: while its consumer is detached (or
    // RabbitMQ is unreachable) it refreshes overdue connections itself.
    let consuming = ctx.consuming.load(Ordering::Relaxed);
    if !consuming || shared::http::probe(ctx.core.broker.ping()).await.is_err() {
        use futures_util::stream::{self, StreamExt};
        let n = overdue.len();
        stream::iter(overdue)
            .for_each_concurrent(8, |c| async move {
                let due_at = c.refresh_due_at.unwrap_or_else(chrono::Utc::now);
                let trigger = shared::tokens::Trigger::Scheduled { version: c.token_version, attempt: 0, due_at };
                if let Err(e) = ctx.core.tokens.refresh(&c.provider, &c.connection_id, trigger).await {
                    tracing::warn!(error = %e, "direct refresh by the sweep failed");
                }
            })
            .await;
        ctx.metrics.add("authbridge_sweep_rescheduled_total", "how=\"direct_refresh\"", n as u64);
        return Ok(n);
    }
    let now = chrono::Utc::now();
    let events: Vec<_> = overdue
        .iter()
        .map(|c| {
            ExpiryEvent {
                provider: c.provider.clone(),
                connection_id: c.connection_id.clone(),
                token_version: c.token_version,
                due_at: now,
                attempt: 0,
                traceparent: None,
            }
            .to_outbox()
        })
        .collect();
    ctx.core.store.enqueue(&events).await?;
    ctx.core.tokens.outbox_signal.notify_one();
    ctx.metrics.add("authbridge_sweep_rescheduled_total", "how=\"event\"", overdue.len() as u64);
    Ok(overdue.len())
}
