//! What every service process starts the same way: the store (migrated), the broker, the
//! token service and the outbox relay.

use crate::config::CommonSettings;
use crate::messaging::Broker;
use crate::store::{Store, StoreError};
use crate::tokens::{run_relay, TokenService};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Core {
    pub store: Store,
    pub broker: Arc<Broker>,
    pub tokens: TokenService,
    shutdown: watch::Sender<bool>,
    relay: Option<JoinHandle<()>>,
}

impl Core {
    /// Connects the store (applying migrations) and starts the outbox relay.
    pub async fn start(settings: &CommonSettings, service: &str) -> Result<Self, StoreError> {
        crate::install_crypto_provider();
        let store = Store::new(settings.database_url.expose(), settings.database_pool_size, settings.keyring.clone())?;
        store.migrate().await?;
        let broker = Arc::new(Broker::new(settings.amqp_url.clone(), &settings.queue_prefix, service));
        if let Err(e) = broker.ping().await {
            // Not fatal: the relay and readiness keep trying; events wait in the outbox.
            tracing::warn!(error = %e, "RabbitMQ not reachable at start-up; events will wait in the outbox");
        }
        let tokens = TokenService::new(store.clone(), settings);
        let (shutdown, rx) = watch::channel(false);
        let relay = tokio::spawn(run_relay(
            store.clone(),
            broker.clone(),
            tokens.outbox_signal.clone(),
            Duration::from_secs(1),
            rx,
        ));
        Ok(Self { store, broker, tokens, shutdown, relay: Some(relay) })
    }

    /// Appends the outbox backlog gauge to a `/metrics` body.
    pub async fn outbox_gauge(&self, out: &mut String) {
        if let Ok(n) = self.store.outbox_len().await {
            crate::metrics::gauge(
                out,
                "authbridge_outbox_pending",
                "Events committed but not yet published.",
                n as f64,
            );
        }
    }

    /// A receiver that turns true when the core stops.
    pub fn shutdown_receiver(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Stops the relay at once, publishing nothing more (a simulated crash).
    pub fn abort(&mut self) {
        if let Some(r) = self.relay.take() {
            r.abort();
        }
    }

    /// Stops the relay after one last pass, so events committed before shutdown go out.
    pub async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(r) = self.relay.take() {
            let _ = r.await;
        }
        let b = self.broker.clone();
        let _ = self.store.relay_outbox(1000, |rows| async move { b.publish_outbox(rows).await }).await;
    }
}
