//! api-proxy: internal services call `ANY /proxy/{provider}/{connection_id}/{path}` with their
//! API key; the proxy forwards the call to the provider's API with the connection's
//! credentials where the provider wants them (a bearer token; an API key in header fields, the
//! query or the form body), refreshing and retrying once when the provider answers 401.

pub mod cache;
pub mod clock;
pub mod deadline;
pub mod forward;
pub mod h1_client;
pub mod h1_server;
pub mod inject;
pub mod key_memo;
pub mod outgoing;
pub mod pace;
pub mod pool;
pub mod provider_limits;
pub mod relay;
pub mod server;
pub mod settings;
pub mod state;
pub mod text;
pub mod wire;
pub mod worker;

#[cfg(test)]
mod layering;
#[cfg(test)]
mod testing;

pub use settings::Settings;
pub use state::ProxyState;

use shared::core::Core;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct Application {
    pub addr: SocketAddr,
    server: server::Server,
    state: Arc<ProxyState>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let core = Core::start(&settings.common, "api-proxy").await?;
        pool::upstream_client(&settings).map_err(anyhow::Error::msg)?; // fail now, not in a worker
        let tls = match &settings.tls {
            Some(files) => {
                let mut config = files.server_config().map_err(anyhow::Error::msg)?;
                // Callers may speak HTTP/2 (one connection, many concurrent calls) or HTTP/1.1.
                config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                Some(Arc::new(config))
            }
            None => None,
        };
        let auth = Arc::new(shared::auth::Authenticator::new(
            settings.api_keys.clone(),
            core.store.clone(),
            settings.common.api_key_cache,
            settings.common.auth_failures_per_address,
        ));
        auth.serve_stale_for(settings.stale);
        let limits = Arc::new(shared::limits::RateLimits::new(
            settings.common.rate_limit_per_key,
            settings.common.rate_limit_per_connection,
        ));
        let registry = shared::http::http_metrics();
        registry.describe(
            "authbridge_proxied_calls_total",
            "Calls forwarded to providers, by provider and upstream status.",
        );
        let cache = cache::TokenCache::with_stale(settings.token_cache_ttl, settings.stale);
        let provider_limits = Arc::new(provider_limits::ProviderLimits::default());
        if core.tokens.catalog.iter().any(|p| p.rate_limit.is_some()) {
            tokio::spawn(provider_limits::heartbeat(
                core.store.clone(),
                provider_limits.clone(),
                core.shutdown_receiver(),
            ));
        }
        let state =
            Arc::new(ProxyState { cache, core, settings, provider_limits, database_down_until: Default::default() });
        // Keep the token cache honest: every change to a connection, in any process, drops it.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(shared::store::notify::listen(
            state.settings.common.database_url.expose().clone(),
            tx,
            state.core.shutdown_receiver(),
        ));
        let weak = Arc::downgrade(&state);
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                match weak.upgrade() {
                    Some(s) => {
                        // Listening again means the database answers: try it at once.
                        if matches!(change, shared::store::notify::Change::Resync) {
                            *s.database_down_until.lock().unwrap() = None;
                        }
                        s.cache.apply(change)
                    }
                    None => break,
                }
            }
        });
        let listener = server::listen(&state.settings.bind)
            .map_err(|e| anyhow::anyhow!("cannot listen on {} ({}): {e}", state.settings.bind, settings::BIND))?;
        let shared = worker::Shared { state: state.clone(), metrics: Arc::new(registry), auth, limits };
        let server = server::Server::start(
            shared,
            listener,
            tls,
            state.settings.workers,
            state.settings.common.shutdown_grace.max(std::time::Duration::from_secs(1)),
        )?;
        let addr = server.addr;
        tracing::info!(%addr, "api-proxy listening");
        Ok(Self { addr, server, state })
    }

    pub fn url(&self) -> String {
        shared::http::base_url(self.addr, self.state.settings.tls.is_some())
    }

    /// How many proxy replicas this one believes share the providers' rate limits.
    pub fn replicas_sharing_limits(&self) -> usize {
        self.state.provider_limits.replicas()
    }

    pub async fn stop(self) {
        self.server.stop(true).await;
        if let Ok(mut state) = Arc::try_unwrap(self.state) {
            state.core.stop().await;
        }
    }
}
