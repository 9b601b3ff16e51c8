//! Route table of the gateway.

mod api_keys;
mod audit;
mod connect;
mod connect_form;
mod connections;
mod ending;
mod reference;
mod webhooks;

use actix_web::{web, HttpResponse};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", get_or_head().to(shared::http::healthz))
        .route("/readyz", get_or_head().to(readyz))
        .route("/metrics", get_or_head().to(metrics))
        .route("/openapi.json", get_or_head().to(reference::gateway_document))
        .route("/openapi/proxy.json", get_or_head().to(reference::proxy_document))
        .route("/docs", get_or_head().to(reference::gateway_page))
        .route("/docs/proxy", get_or_head().to(reference::proxy_page))
        .route("/docs/assets/redoc.standalone.js", get_or_head().to(reference::redoc))
        .route("/v1/connect/sessions", web::post().to(connect::create_session))
        .route("/connect/{token}", web::get().to(connect::open_session))
        .route("/connect/{token}", web::head().to(connect_form::head_link))
        .route("/connect/credentials", web::post().to(connect_form::submit))
        .route("/connect/assets/connect.css", get_or_head().to(connect_form::stylesheet))
        .route("/connect/assets/connect.js", get_or_head().to(connect_form::script))
        .route("/connect/assets/brand.css", get_or_head().to(connect_form::brand_stylesheet))
        .route("/oauth/callback", web::get().to(connect::callback))
        .route("/oauth/callback", web::head().to(connect_form::head_link))
        .route("/v1/api-keys", web::post().to(api_keys::create))
        .route("/v1/api-keys", get_or_head().to(api_keys::list))
        .route("/v1/api-keys/{id}", web::delete().to(api_keys::revoke))
        .route("/v1/providers", get_or_head().to(connections::list_providers))
        .route("/v1/connections", get_or_head().to(connections::list))
        .route("/v1/connections", web::post().to(connections::create))
        .route("/v1/connections/{provider}/{connection_id}", get_or_head().to(connections::get))
        .route("/v1/connections/{provider}/{connection_id}", web::delete().to(connections::delete))
        .route("/v1/connections/{provider}/{connection_id}/token", get_or_head().to(connections::token))
        .route("/v1/connections/{provider}/{connection_id}/credentials", get_or_head().to(connections::credentials))
        .route("/v1/connections/{provider}/{connection_id}/refresh", web::post().to(connections::refresh))
        .route("/v1/webhooks", web::post().to(webhooks::create))
        .route("/v1/webhooks", get_or_head().to(webhooks::list))
        .route("/v1/webhooks/{id}", get_or_head().to(webhooks::get))
        .route("/v1/webhooks/{id}", web::delete().to(webhooks::delete))
        .route("/v1/webhooks/{id}/secrets", web::post().to(webhooks::add_secret))
        .route("/v1/webhooks/{id}/secrets/{secret_id}", web::delete().to(webhooks::delete_secret))
        .route("/v1/webhooks/{id}/deliveries", get_or_head().to(webhooks::deliveries))
        .route("/v1/webhooks/{id}/deliveries/{delivery_id}/retry", web::post().to(webhooks::retry))
        .route("/v1/audit", get_or_head().to(audit::list));
}

/// Who is acting: the caller's key and the address the request came from.
fn actor(caller: &shared::auth::Caller, req: &actix_web::HttpRequest) -> shared::store::Actor {
    shared::store::Actor::new(&caller.key_id, req.peer_addr().map(|a| a.ip()))
}

/// Who completes a flow: the key that created the session, from the browser's address.
fn flow_actor(session: &shared::store::ConsumedSession, req: &actix_web::HttpRequest) -> shared::store::Actor {
    shared::store::Actor { key_id: session.created_by.clone(), address: req.peer_addr().map(|a| a.ip().to_string()) }
}

/// GET, and HEAD with the same fields and no body (RFC 9110 §9.3.2), for routes without side
/// effects. (The connect link and the callback answer HEAD on their own, without acting.)
fn get_or_head() -> actix_web::Route {
    use actix_web::guard;
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

async fn readyz(state: web::Data<crate::AppState>) -> HttpResponse {
    let core = &state.core;
    shared::http::readiness(vec![
        ("postgres", shared::http::probe(core.store.ping()).await),
        ("rabbitmq", shared::http::probe(core.broker.ping()).await),
    ])
}

async fn metrics(
    req: actix_web::HttpRequest,
    state: web::Data<crate::AppState>,
    registry: web::Data<shared::metrics::Registry>,
    auth: web::Data<shared::auth::Authenticator>,
) -> HttpResponse {
    let presented = req.headers().get(actix_web::http::header::AUTHORIZATION).map(|v| v.as_bytes());
    if !shared::http::metrics_allowed(state.settings.common.metrics_token.as_ref(), presented) {
        return shared::http::metrics_refused();
    }
    let mut out = registry.render();
    auth.render_metrics(&mut out);
    if let Ok(counts) = state.core.store.count_by_status().await {
        out.push_str("# HELP authbridge_connections Connections by status.\n# TYPE authbridge_connections gauge\n");
        for (status, n) in counts {
            out.push_str(&format!("authbridge_connections{{status=\"{status}\"}} {n}\n"));
        }
    }
    state.core.outbox_gauge(&mut out).await;
    shared::http::metrics_response(out)
}
