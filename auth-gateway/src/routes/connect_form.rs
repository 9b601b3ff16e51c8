//! The connect flow of a credential provider (api_key, basic, two_step) in the end user's
//! browser: `GET /connect/{token}` shows the provider's fields; `POST /connect/credentials`
//! has the provider check them and, once it accepts them, stores them and sends the browser
//! back to the product.
//!
//! The flow is bound to the browser that opened it exactly as the OAuth flow is (a cookie whose
//! nonce's hash is stored with the session, RFC 9700 §4.7.1): a form sent from another browser
//! burns the session and stores nothing. A refusal shows the form again, with the provider's
//! own words and without the secret values, and the session stays open for another try until
//! it expires; an accepted form consumes it.

use super::connect::{binding_cookie_at, binding_cookie_name, failed, same_browser};
use super::ending::{finish, unusable, Outcome};
use crate::pages::{self, FormError};
use crate::AppState;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use shared::crypto::hash_secret;
use shared::http::ApiError;
use shared::oauth::OAuthError;
use std::collections::BTreeMap;

fn action(state: &AppState) -> String {
    format!("{}/connect/credentials", state.settings.public_url.as_str().trim_end_matches('/'))
}

/// The origin a successful form post redirects to (redirect mode), for the page's `form-action`.
fn origin_of(ending: &shared::store::Ending) -> Vec<String> {
    match (&ending.return_url, ending.popup) {
        (Some(u), false) => url::Url::parse(u).map(|u| vec![u.origin().ascii_serialization()]).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The page of an unknown (or mistyped) connect link: there is nowhere to send the browser.
pub fn unknown_link(state: &AppState) -> HttpResponse {
    let (title, lead) = pages::text::UNKNOWN_LINK;
    pages::end_page(StatusCode::NOT_FOUND, title, lead, None, state.look())
}

/// The page of a provider's answer that belongs to no flow (an old tab, a reloaded page).
pub fn stray_callback(state: &AppState) -> HttpResponse {
    let (title, lead) = pages::text::STRAY_CALLBACK;
    pages::end_page(StatusCode::BAD_REQUEST, title, lead, None, state.look())
}

/// The credential form of a session just opened, with the cookie that binds it to this browser.
pub fn form_page(
    state: &AppState,
    provider: &shared::catalog::Provider,
    ending: &shared::store::Ending,
    state_param: &str,
    state_hash: &[u8],
    nonce: &str,
) -> HttpResponse {
    let spec = provider.credentials.as_ref().expect("a credential provider");
    let body = pages::credential_form(
        state.settings.ui.product_name.as_deref(),
        &provider.display_name,
        &spec.fields,
        &action(state),
        state_param,
        None,
        &|_| None,
    );
    let title = pages::text::connect_title(&provider.display_name);
    let mut resp = pages::html(StatusCode::OK, &title, &body, &origin_of(ending), state.look());
    let ttl = state.settings.session_ttl.as_secs();
    let set = binding_cookie_at(state, &action(state), &binding_cookie_name(state_hash), nonce, ttl);
    if let Ok(v) = header::HeaderValue::from_str(&set) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// A redirect after a form post (303: the browser follows it with GET).
fn see_other(mut resp: HttpResponse) -> HttpResponse {
    if resp.status() == StatusCode::FOUND {
        *resp.status_mut() = StatusCode::SEE_OTHER;
    }
    resp
}

/// `POST /connect/credentials`: the form's values, checked with the provider.
#[tracing::instrument(skip_all, fields(provider, connection_id, outcome))]
pub async fn submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<BTreeMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let mut given = form.into_inner();
    let Some(state_param) = given.remove("state").filter(|s| !s.is_empty() && s.len() <= 512) else {
        return Ok(unknown_link(&state));
    };
    let state_hash = hash_secret(&state_param);
    let session = match state.core.store.peek_state(&state_hash).await? {
        Ok(s) => s,
        Err(why) => {
            let end = unusable(&state, &req, why, "state_already_used");
            return Ok(end.map_or_else(|| unknown_link(&state), see_other));
        }
    };
    let span = tracing::Span::current();
    span.record("provider", session.provider.as_str());
    span.record("connection_id", session.connection_id.as_str());
    let cookie_name = binding_cookie_name(&state_hash);
    // Once the flow ends (either way), its cookie goes.
    let ended = |resp: HttpResponse| {
        let mut resp = see_other(resp);
        if let Ok(v) = header::HeaderValue::from_str(&binding_cookie_at(&state, &action(&state), &cookie_name, "", 0)) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        Ok(resp)
    };
    if !same_browser(&req, &cookie_name, session.browser_hash.as_deref()) {
        // Burnt: a form sent from another browser can never finish this flow.
        let _ = state.core.store.consume_state(&state_hash).await?;
        span.record("outcome", "browser_mismatch");
        tracing::warn!("credential form from a browser that did not open the flow; nothing stored");
        return ended(failed(&state, &req, &session.ending, "browser_mismatch"));
    }
    let provider = match state.core.tokens.catalog.get(&session.provider) {
        Some(p) if p.credentials.is_some() => p,
        _ => {
            let _ = state.core.store.consume_state(&state_hash).await?;
            return ended(failed(&state, &req, &session.ending, "invalid_state"));
        }
    };
    let spec = provider.credentials.as_ref().expect("checked");
    let again = |status: StatusCode, error: FormError<'_>, given: &BTreeMap<String, String>| {
        let body = pages::credential_form(
            state.settings.ui.product_name.as_deref(),
            &provider.display_name,
            &spec.fields,
            &action(&state),
            &state_param,
            Some(error),
            &|n| given.get(n).cloned(),
        );
        let title = pages::text::connect_title(&provider.display_name);
        Ok(pages::html(status, &title, &body, &origin_of(&session.ending), state.look()))
    };
    // Only the provider's fields are taken: a form cannot smuggle in the operator's values.
    given.retain(|k, _| spec.fields.iter().any(|f| &f.name == k));
    if let Err(message) = shared::credentials::check_given(spec, &given) {
        span.record("outcome", "incomplete");
        return again(StatusCode::UNPROCESSABLE_ENTITY, FormError::Refused(&message), &given);
    }
    if !session.may_replace
        && state.core.store.get_connection(&session.provider, &session.connection_id).await?.is_some()
    {
        let _ = state.core.store.consume_state(&state_hash).await?;
        span.record("outcome", "reconnect_not_allowed");
        return ended(failed(&state, &req, &session.ending, "reconnect_not_allowed"));
    }
    let stored = match state.core.tokens.verify_credentials(provider, &given).await {
        Ok(stored) => stored,
        Err(OAuthError::Rejected { error, description, .. }) if error == shared::credentials::INVALID_CREDENTIALS => {
            span.record("outcome", "invalid_credentials");
            let words = description.unwrap_or_else(|| "The provider refused these details.".into());
            return again(StatusCode::UNPROCESSABLE_ENTITY, FormError::Refused(&words), &given);
        }
        Err(OAuthError::Transient { .. }) => {
            span.record("outcome", "unavailable");
            return again(StatusCode::SERVICE_UNAVAILABLE, FormError::Unavailable, &given);
        }
        Err(e) => {
            // The integration itself is refused (the operator's values): the end user cannot
            // fix that here.
            let _ = state.core.store.consume_state(&state_hash).await?;
            span.record("outcome", "integration_refused");
            tracing::warn!(error = %e, "the provider refused this integration's own values");
            return ended(failed(&state, &req, &session.ending, &e.code()));
        }
    };
    // Accepted: the session is used up now, once, whoever else races for it.
    if let Err(why) = state.core.store.consume_state(&state_hash).await? {
        return match unusable(&state, &req, why, "state_already_used") {
            Some(end) => ended(end),
            None => Ok(unknown_link(&state)),
        };
    }
    let actor = super::flow_actor(&session, &req);
    state.core.tokens.store_credentials(provider, &session.connection_id, stored, &session.profile, &actor).await?;
    span.record("outcome", "connected");
    ended(finish(&state, &req, &session.ending, Outcome::connected(&session)))
}

/// `GET /connect/assets/connect.js`: `authbridge.connect(connectUrl, {onConnected, onError,
/// onClose})` for the product's page (popup mode).
pub async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(pages::CONNECT_JS)
}

/// `GET /connect/assets/brand.css`: the configured accent colour (empty without one).
pub async fn brand_stylesheet(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(state.settings.ui.accent.as_deref().map(pages::brand_css).unwrap_or_default())
}

/// `HEAD /connect/{token}`: what a GET would be, without opening the session (a link checker's
/// HEAD must not use the link up).
pub async fn head_link() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// `GET /connect/assets/connect.css`.
pub async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(pages::STYLESHEET)
}
