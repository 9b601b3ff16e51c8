//! api-proxy: internal services call `ANY /proxy/{provider}/{connection_id}/{path}` with their
//! API key; the proxy forwards the call to the provider's API with the connection's bearer
//! token, refreshing and retrying once when the provider answers 401.

pub mod cache;
pub mod forward;
pub mod pool;
pub mod settings;

pub use settings::Settings;

use actix_web::{web, App, HttpResponse, HttpServer};
use shared::core::Core;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct ProxyState {
    pub core: Core,
    pub settings: Settings,
    pub cache: cache::TokenCache,
}

pub struct Application {
    pub addr: SocketAddr,
    server: shared::http::ServerTask,
    state: Arc<ProxyState>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let core = Core::start(&settings.common, "api-proxy").await?;
        forward::upstream_client(&settings).map_err(anyhow::Error::msg)?; // fail now, not in a worker
        let (auth, limits) = shared::auth::app_data(&settings.common, &settings.api_keys, &core.store);
        let registry = shared::http::http_metrics();
        registry.describe(
            "authbridge_proxied_calls_total",
            "Calls forwarded to providers, by provider and upstream status.",
        );
        let state = Arc::new(ProxyState { cache: cache::TokenCache::new(settings.token_cache_ttl), core, settings });
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
                    Some(s) => s.cache.apply(change),
                    None => break,
                }
            }
        });
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            // One upstream client (and connection pool) per worker: each actix worker is its own
            // single-threaded runtime, and a pooled connection is driven by the runtime that
            // opened it; sharing one pool across workers makes every request hop threads.
            let http = web::Data::new(forward::upstream_client(&data.settings).expect("checked at start-up"));
            App::new()
                .app_data(http)
                .wrap(actix_web::middleware::from_fn(shared::http::track_requests))
                .app_data(registry.clone())
                .app_data(data.clone())
                .app_data(auth.clone())
                .app_data(limits.clone())
                .app_data(shared::http::path_config())
                .app_data(shared::http::PrefixRoute {
                    prefix: "/proxy/",
                    label: "/proxy/{provider}/{connection_id}/{path}",
                })
                .route("/healthz", web::get().to(shared::http::healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics))
                .service(web::scope("/proxy").default_service(web::to(forward::proxy)))
                .default_service(web::to(shared::http::not_found))
        })
        .workers(state.settings.workers)
        .shutdown_timeout(state.settings.common.shutdown_grace.as_secs().max(1))
        .disable_signals();
        let server = match &state.settings.tls {
            Some(tls) => {
                server.bind_rustls_0_23(&state.settings.bind, tls.server_config().map_err(anyhow::Error::msg)?)?
            }
            None => server.bind(&state.settings.bind)?,
        };
        let addr = server.addrs()[0];
        let server = shared::http::ServerTask::spawn(server.run(), addr);
        tracing::info!(%addr, "api-proxy listening");
        Ok(Self { addr, server, state })
    }

    pub fn url(&self) -> String {
        let scheme = if self.state.settings.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub async fn stop(self) {
        self.server.stop(true).await;
        if let Ok(mut state) = Arc::try_unwrap(self.state) {
            state.core.stop().await;
        }
    }

    pub async fn run_until_stopped(self) {
        shared::http::shutdown_signal().await;
        tracing::info!("shutting down");
        self.stop().await;
    }
}

async fn readyz(state: web::Data<ProxyState>) -> HttpResponse {
    shared::http::readiness(vec![
        ("postgres", shared::http::probe(state.core.store.ping()).await),
        ("rabbitmq", shared::http::probe(state.core.broker.ping()).await),
    ])
}

async fn metrics(state: web::Data<ProxyState>, registry: web::Data<shared::metrics::Registry>) -> HttpResponse {
    use std::sync::atomic::Ordering;
    let mut out = registry.render();
    let c = &state.cache;
    shared::metrics::gauge(
        &mut out,
        "authbridge_token_cache_hits",
        "Proxied calls served a token from memory.",
        c.hits.load(Ordering::Relaxed) as f64,
    );
    shared::metrics::gauge(
        &mut out,
        "authbridge_token_cache_misses",
        "Proxied calls that read the token from the database.",
        c.misses.load(Ordering::Relaxed) as f64,
    );
    shared::metrics::gauge(&mut out, "authbridge_token_cache_entries", "Tokens held in memory.", c.len() as f64);
    shared::http::metrics_response(out)
}
