//! auth-gateway: starts OAuth2 authorization-code flows for end users, handles the provider's
//! callback, stores the tokens sealed and schedules their refresh; and serves the management
//! API (providers, connections, fresh tokens, forced refresh, deletion).
//!
//! [`Application::build`] binds its own listener (port 0 in tests) and runs in-process.

pub mod pages;
pub mod routes;
pub mod settings;

pub use settings::Settings;

use actix_web::middleware::DefaultHeaders;
use actix_web::{web, App, HttpServer};
use shared::core::Core;
use std::net::SocketAddr;
use std::sync::Arc;

/// The id of the webhook endpoint configured in the environment (`AUTHBRIDGE_WEBHOOK_URL`).
pub const CONFIGURED_WEBHOOK_ID: &str = "wh_configured";

/// Everything a handler needs.
pub struct AppState {
    pub core: Core,
    pub settings: Settings,
}

impl AppState {
    pub fn redirect_uri(&self) -> String {
        format!("{}/oauth/callback", self.settings.public_url.as_str().trim_end_matches('/'))
    }

    /// How this gateway's pages look.
    pub fn look(&self) -> pages::Look<'_> {
        pages::Look { ui: &self.settings.ui, https: self.settings.public_url.scheme() == "https" }
    }
}

/// A running gateway.
pub struct Application {
    pub addr: SocketAddr,
    server: shared::http::ServerTask,
    state: Arc<AppState>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(&settings.bind)
            .map_err(|e| anyhow::anyhow!("cannot listen on {} ({}): {e}", settings.bind, settings::BIND))?;
        Self::build_with_listener(settings, listener).await
    }

    /// Like [`build`](Self::build) on a listener the caller bound (tests bind port 0 first so
    /// they know the public URL, and so the redirect URI, before the gateway starts).
    pub async fn build_with_listener(settings: Settings, listener: std::net::TcpListener) -> anyhow::Result<Self> {
        let core = Core::start(&settings.common, "auth-gateway").await?;
        if let Some(w) = &settings.webhook {
            core.store.upsert_webhook(CONFIGURED_WEBHOOK_ID, w.url.as_str(), &w.events, &w.secret).await?;
            tracing::info!(url = %w.url, "webhook endpoint from the environment is configured");
        }
        let (auth, limits) = shared::auth::app_data(&settings.common, &settings.api_keys, &core.store);
        let registry = actix_web::web::Data::new(shared::http::http_metrics());
        let state = Arc::new(AppState { core, settings });
        let data = web::Data::from(state.clone());
        let grace = state.settings.common.shutdown_grace;
        let server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(shared::http::track_requests))
                .app_data(registry.clone())
                .wrap(
                    DefaultHeaders::new()
                        .add(("X-Content-Type-Options", "nosniff"))
                        .add(("X-Frame-Options", "DENY"))
                        .add(("Referrer-Policy", "no-referrer"))
                        .add(("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")),
                )
                .app_data(data.clone())
                .app_data(auth.clone())
                .app_data(limits.clone())
                .app_data(shared::http::json_config(64 * 1024))
                .app_data(form_config())
                .app_data(shared::http::query_config())
                .app_data(shared::http::path_config())
                .configure(routes::configure)
                .default_service(web::to(shared::http::not_found))
        })
        .workers(state.settings.workers)
        .shutdown_timeout(grace.as_secs().max(1))
        .disable_signals();
        let server = match &state.settings.tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls.server_config().map_err(anyhow::Error::msg)?)?,
            None => server.listen(listener)?,
        };
        let addr = server.addrs()[0];
        let server = shared::http::ServerTask::spawn(server.run(), addr);
        tracing::info!(%addr, public_url = %state.settings.public_url, "auth-gateway listening");
        state.settings.warn_about_open_return_urls();
        Ok(Self { addr, server, state })
    }

    pub fn url(&self) -> String {
        shared::http::base_url(self.addr, self.state.settings.tls.is_some())
    }

    /// Stops taking requests, finishes in-flight ones (bounded by the grace period), then
    /// flushes the outbox.
    pub async fn stop(self) {
        self.server.stop(true).await;
        if let Ok(mut state) = Arc::try_unwrap(self.state) {
            state.core.stop().await;
        }
    }
}

/// The credential form's body: small, form-encoded; anything else is a JSON error.
fn form_config() -> web::FormConfig {
    use actix_web::error::UrlencodedError;
    use shared::http::{ApiError, ErrorCode};
    web::FormConfig::default().limit(16 * 1024).error_handler(|e, _| {
        let code = match &e {
            UrlencodedError::Overflow { .. } => ErrorCode::PayloadTooLarge,
            UrlencodedError::ContentType => ErrorCode::UnsupportedMediaType,
            _ => ErrorCode::InvalidRequest,
        };
        ApiError::new(code, format!("invalid form body: {e}")).into()
    })
}
