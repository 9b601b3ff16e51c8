//! The end user's side of a connection: connect sessions, the redirect to the provider, and
//! the callback.

use crate::AppState;
use actix_web::http::header;
use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use shared::auth::{scope, Authorized};
use shared::catalog::valid_connection_id;
use shared::crypto::{hash_secret, random_token};
use shared::http::{ApiError, ErrorCode};
use shared::oauth::{pkce_pair, sanitize_code, OAuthClient};
use shared::store::{NewSession, SessionLookup};
use url::Url;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    provider: String,
    connection_id: String,
    return_url: String,
}

/// `POST /v1/connect/sessions`: a backend asks for a connect URL for one end user.
#[tracing::instrument(skip_all, fields(provider = %body.provider))]
pub async fn create_session(
    caller: Authorized<scope::Connect>,
    state: web::Data<AppState>,
    body: web::Json<CreateSession>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    caller.require_provider(&body.provider)?;
    let provider = state.core.tokens.catalog.get(&body.provider).ok_or_else(|| {
        ApiError::new(ErrorCode::UnknownProvider, format!("provider `{}` is not in the catalog", body.provider))
    })?;
    if !provider.is_configured() {
        return Err(ApiError::new(
            ErrorCode::ProviderNotConfigured,
            format!(
                "provider `{}` has no client credentials; set {}_CLIENT_ID and {}_CLIENT_SECRET",
                provider.id,
                shared::catalog::env_prefix(&provider.id),
                shared::catalog::env_prefix(&provider.id)
            ),
        ));
    }
    if !valid_connection_id(&body.connection_id) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "connection_id must be 1-255 characters of letters, digits and -_.~@+:=",
        ));
    }
    let return_url = Url::parse(&body.return_url)
        .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "return_url must be an absolute URL"))?;
    if !state.settings.return_url_allowed(&return_url) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "return_url is not an allowed http(s) URL (see AUTHBRIDGE_RETURN_URL_ALLOWLIST)",
        ));
    }
    let token = random_token();
    let expires_at = Utc::now() + chrono::Duration::from_std(state.settings.session_ttl).unwrap_or_default();
    state
        .core
        .store
        .create_session(&NewSession {
            token_hash: hash_secret(&token),
            provider: provider.id.clone(),
            connection_id: body.connection_id.clone(),
            return_url: return_url.to_string(),
            expires_at,
        })
        .await?;
    let connect_url = format!("{}/connect/{token}", state.settings.public_url.as_str().trim_end_matches('/'));
    Ok(HttpResponse::Created().insert_header((header::CACHE_CONTROL, "no-store")).json(serde_json::json!({
        "token": token,
        "connect_url": connect_url,
        "expires_at": expires_at,
    })))
}

fn redirect(to: &str) -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, to))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// `return_url` with the outcome appended to its query.
fn back_to_app(return_url: &str, pairs: &[(&str, &str)]) -> HttpResponse {
    match Url::parse(return_url) {
        Ok(mut u) => {
            u.query_pairs_mut().extend_pairs(pairs);
            redirect(u.as_str())
        }
        Err(_) => actix_web::ResponseError::error_response(&ApiError::internal("stored return_url does not parse")),
    }
}

fn error_back(return_url: &str, code: &str) -> HttpResponse {
    back_to_app(return_url, &[("status", "error"), ("error", code)])
}

/// `GET /connect/{token}`: the browser opens the connect URL once; it is sent to the provider.
#[tracing::instrument(skip_all)]
pub async fn open_session(state: web::Data<AppState>, token: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let state_param = random_token();
    let (verifier, challenge) = pkce_pair();
    let started = state
        .core
        .store
        .start_session(&hash_secret(&token), &hash_secret(&state_param), Some(&verifier), state.settings.session_ttl)
        .await?;
    let session = match started {
        Ok(s) => s,
        Err(SessionLookup::Unknown) => {
            return Err(ApiError::new(ErrorCode::SessionNotFound, "unknown connect session"))
        }
        Err(SessionLookup::Expired { return_url }) => return Ok(error_back(&return_url, "session_expired")),
        Err(SessionLookup::AlreadyUsed { return_url }) => return Ok(error_back(&return_url, "session_already_used")),
    };
    tracing::Span::current().record("provider", session.provider.as_str());
    let provider =
        state.core.tokens.catalog.get(&session.provider).ok_or_else(|| {
            ApiError::new(ErrorCode::UnknownProvider, "the session's provider is no longer configured")
        })?;
    let challenge = provider.pkce.then_some(challenge.as_str());
    let url = OAuthClient::authorize_url(provider, &state.redirect_uri(), &state_param, challenge)
        .map_err(|e| ApiError::new(ErrorCode::ProviderNotConfigured, e.to_string()))?;
    Ok(redirect(url.as_str()))
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /oauth/callback`: the provider sends the browser back with a code or an error.
#[tracing::instrument(skip_all, fields(provider, connection_id, outcome))]
pub async fn callback(state: web::Data<AppState>, q: web::Query<CallbackQuery>) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let Some(state_param) = q.state.filter(|s| !s.is_empty() && s.len() <= 512) else {
        return Err(ApiError::new(ErrorCode::InvalidState, "the callback has no valid state parameter"));
    };
    let consumed = state.core.store.consume_state(&hash_secret(&state_param)).await?;
    let session = match consumed {
        Ok(s) => s,
        Err(SessionLookup::Unknown) => {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                "unknown state: this callback does not belong to any connect session",
            ))
        }
        Err(SessionLookup::Expired { return_url }) => return Ok(error_back(&return_url, "session_expired")),
        Err(SessionLookup::AlreadyUsed { return_url }) => return Ok(error_back(&return_url, "state_already_used")),
    };
    let span = tracing::Span::current();
    span.record("provider", session.provider.as_str());
    span.record("connection_id", session.connection_id.as_str());
    if let Some(err) = q.error {
        span.record("outcome", "provider_error");
        return Ok(error_back(&session.return_url, &sanitize_code(&err)));
    }
    let Some(code) = q.code.filter(|c| !c.is_empty()) else {
        return Ok(error_back(&session.return_url, "invalid_request"));
    };
    let Some(provider) = state.core.tokens.catalog.get(&session.provider) else {
        return Ok(error_back(&session.return_url, "unknown_provider"));
    };
    let verifier = if provider.pkce { session.verifier.as_deref() } else { None };
    let resp = match state.core.tokens.oauth.exchange_code(provider, &code, &state.redirect_uri(), verifier).await {
        Ok(r) => r,
        Err(e) => {
            span.record("outcome", "exchange_failed");
            tracing::warn!(error = %e, "code exchange failed");
            return Ok(error_back(&session.return_url, &e.code()));
        }
    };
    state.core.tokens.store_authorized(&session.provider, &session.connection_id, resp).await?;
    span.record("outcome", "connected");
    Ok(back_to_app(
        &session.return_url,
        &[("status", "connected"), ("provider", &session.provider), ("connection_id", &session.connection_id)],
    ))
}
