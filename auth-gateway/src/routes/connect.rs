//! The end user's side of a connection: connect sessions, the redirect to the provider, and
//! the callback.

use super::ending::{finish, unusable, Outcome};
use crate::AppState;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use shared::auth::{scope, Authorized, Scope};
use shared::catalog::valid_connection_id;
use shared::crypto::{hash_secret, random_token};
use shared::http::{ApiError, ErrorCode};
use shared::oauth::{pkce_pair, sanitize_code, OAuthClient};
use shared::store::NewSession;
use url::Url;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    provider: String,
    connection_id: String,
    /// Where the browser goes when the flow ends (redirect mode), or whose origin a popup's
    /// page tells (popup mode). Without it, the flow ends on the gateway's own page.
    return_url: Option<String>,
    #[serde(default)]
    mode: Mode,
    /// The product's end user the connection will belong to.
    end_user: Option<shared::store::EndUser>,
    /// The product's labels on the connection.
    tags: Option<shared::store::Tags>,
}

/// How the product shows the flow.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The browser leaves the product for the flow and comes back to `return_url`.
    #[default]
    Redirect,
    /// The flow runs in a popup (`connect.js`), whose last page tells the product's window.
    Popup,
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
    let provider = catalog_provider(&state, &body.provider)?;
    if provider.auth == shared::catalog::AuthMode::OAuth2ClientCredentials {
        return Err(ApiError::new(
            ErrorCode::UnsupportedAuthMode,
            format!(
                "provider `{}` connects machine to machine with the operator's client credentials, without an end \
                 user: create the connection with POST /v1/connections",
                provider.id
            ),
        ));
    }
    if !provider.is_configured() {
        return Err(ApiError::new(
            ErrorCode::ProviderNotConfigured,
            format!(
                "provider `{}` has no client credentials; set {}",
                provider.id,
                provider.missing_configuration().join(" and ")
            ),
        ));
    }
    check_connection_id(&body.connection_id)?;
    shared::store::check_profile(body.end_user.as_ref(), body.tags.as_ref())
        .map_err(|m| ApiError::new(ErrorCode::InvalidRequest, m))?;
    let return_url = match &body.return_url {
        Some(raw) => {
            let u = Url::parse(raw)
                .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "return_url must be an absolute URL"))?;
            if !state.settings.return_url_allowed(&u) {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "return_url is not an allowed http(s) URL (see AUTHBRIDGE_RETURN_URL_ALLOWLIST)",
                ));
            }
            Some(u.to_string())
        }
        None if body.mode == Mode::Popup => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "popup mode needs return_url: the popup tells the result to that URL's origin only",
            ))
        }
        None => None,
    };
    // Reconnecting replaces an existing connection's credentials: that is a write to the
    // connection, which `connect` alone does not allow. Checked here for a clear answer, and
    // again at the callback (the connection may appear meanwhile).
    let may_replace = caller.has(Scope::ConnectionsWrite);
    if !may_replace && state.core.store.get_connection(&provider.id, &body.connection_id).await?.is_some() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this connection exists already; reconnecting it needs the connections:write scope",
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
            ending: shared::store::Ending { return_url, popup: body.mode == Mode::Popup },
            expires_at,
            may_replace,
            profile: shared::store::Profile { end_user: body.end_user, tags: body.tags },
            created_by: Some(caller.key_id.to_string()),
        })
        .await?;
    let connect_url = format!("{}/connect/{token}", state.settings.public_url.as_str().trim_end_matches('/'));
    Ok(HttpResponse::Created().insert_header((header::CACHE_CONTROL, "no-store")).json(serde_json::json!({
        "token": token,
        "connect_url": connect_url,
        "expires_at": expires_at,
    })))
}

/// The catalog's entry for a provider a request names, or `unknown_provider`.
pub(super) fn catalog_provider<'s>(state: &'s AppState, id: &str) -> Result<&'s shared::catalog::Provider, ApiError> {
    state
        .core
        .tokens
        .catalog
        .get(id)
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownProvider, format!("provider `{id}` is not in the catalog")))
}

/// A connection id a request gives for a new connection, or why not.
pub(super) fn check_connection_id(id: &str) -> Result<(), ApiError> {
    if valid_connection_id(id) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::InvalidRequest,
        "connection_id must be 1-255 characters of letters, digits and -_.~@+:=",
    ))
}

fn redirect(to: &str) -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, to))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// The flow's end with the error `code`.
pub(super) fn failed(state: &AppState, req: &HttpRequest, ending: &shared::store::Ending, code: &str) -> HttpResponse {
    finish(state, req, ending, Outcome::Failed { error: code })
}

/// The cookie that binds a flow to the browser that opened it (RFC 9700 §4.7.1). Without it,
/// whoever opened a connect URL could hand the provider's authorize URL (which carries the
/// state) to someone else, and that person's approval would land in the first one's
/// connection. Its name is derived from the state, so one browser can run several flows at
/// once; its value is a random nonce whose hash is stored with the session.
pub(super) fn binding_cookie_name(state_hash: &[u8]) -> String {
    use base64::Engine;
    let short = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&state_hash[..12]);
    format!("authbridge_flow_{short}")
}

/// `Set-Cookie` for the binding: `HttpOnly` (no script reads it), `SameSite=Lax` (sent on the
/// provider's top-level redirect back to us, never on a cross-site subrequest), limited to the
/// callback's path, living as long as the flow, and `Secure` whenever the gateway is public over
/// HTTPS.
fn binding_cookie(state: &AppState, name: &str, value: &str, max_age: u64) -> String {
    binding_cookie_at(state, &state.redirect_uri(), name, value, max_age)
}

/// The binding cookie, limited to the path of `url` (the callback, or the credential form's
/// target).
pub(super) fn binding_cookie_at(state: &AppState, url: &str, name: &str, value: &str, max_age: u64) -> String {
    let path = url::Url::parse(url).map(|u| u.path().to_owned()).unwrap_or_else(|_| "/".into());
    let secure = if state.settings.public_url.scheme() == "https" { "; Secure" } else { "" };
    format!("{name}={value}; Max-Age={max_age}; Path={path}; HttpOnly; SameSite=Lax{secure}")
}

/// Whether the request carries the flow's cookie (`name`) with the nonce whose hash the session
/// was bound to: the browser that opened the flow.
pub(super) fn same_browser(req: &HttpRequest, name: &str, browser_hash: Option<&[u8]>) -> bool {
    match (cookie(req, name), browser_hash) {
        (Some(nonce), Some(expected)) => shared::crypto::same_digest(&hash_secret(nonce), expected),
        _ => false,
    }
}

/// The value of the cookie `name` in the request's `Cookie` fields, if there is one.
fn cookie<'r>(req: &'r HttpRequest, name: &str) -> Option<&'r str> {
    cookie_in(req.headers().get_all(header::COOKIE).filter_map(|v| v.to_str().ok()), name)
}

/// The value of the cookie `name` in `Cookie` field values (`a=1; b=2`, RFC 6265 §4.2).
fn cookie_in<'v>(fields: impl Iterator<Item = &'v str>, name: &str) -> Option<&'v str> {
    fields
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// `GET /connect/{token}`: the browser opens the connect URL once; it is sent to the provider,
/// carrying a cookie that only this browser has and the callback will ask for.
#[tracing::instrument(skip_all)]
pub async fn open_session(
    state: web::Data<AppState>,
    req: HttpRequest,
    token: web::Path<String>,
    q: web::Query<OpenQuery>,
) -> Result<HttpResponse, ApiError> {
    if state.settings.ui.interstitial && !q.go {
        // Shown without opening the session: a link checker that fetches the link does not
        // use it up. The button opens it (`?go=1`).
        match state.core.store.peek_session(&hash_secret(&token)).await? {
            Ok((provider, _)) => {
                let p = state.core.tokens.catalog.get(&provider).filter(|p| p.credentials.is_none());
                if let Some(p) = p {
                    let go = format!(
                        "{}/connect/{}?go=1",
                        state.settings.public_url.as_str().trim_end_matches('/'),
                        token.as_str()
                    );
                    return Ok(crate::pages::interstitial(&p.display_name, &go, state.look()));
                }
            }
            Err(why) => {
                if let Some(end) = unusable(&state, &req, why, "session_already_used") {
                    return Ok(end);
                }
            }
        }
    }
    let state_param = random_token();
    let state_hash = hash_secret(&state_param);
    let nonce = random_token();
    let (verifier, challenge) = pkce_pair();
    let started = state
        .core
        .store
        .start_session(
            &hash_secret(&token),
            &state_hash,
            &hash_secret(&nonce),
            Some(&verifier),
            state.settings.session_ttl,
        )
        .await?;
    let session = match started {
        Ok(s) => s,
        Err(why) => match unusable(&state, &req, why, "session_already_used") {
            Some(end) => return Ok(end),
            None if super::ending::wants_html(&req) => return Ok(super::connect_form::unknown_link(&state)),
            None => return Err(ApiError::new(ErrorCode::SessionNotFound, "unknown connect session")),
        },
    };
    tracing::Span::current().record("provider", session.provider.as_str());
    let provider =
        state.core.tokens.catalog.get(&session.provider).ok_or_else(|| {
            ApiError::new(ErrorCode::UnknownProvider, "the session's provider is no longer configured")
        })?;
    if provider.credentials.is_some() {
        return Ok(super::connect_form::form_page(
            &state,
            provider,
            &session.ending,
            &state_param,
            &state_hash,
            &nonce,
        ));
    }
    let challenge = provider.pkce.then_some(challenge.as_str());
    let url = OAuthClient::authorize_url(provider, &state.redirect_uri(), &state_param, challenge)
        .map_err(|e| ApiError::new(ErrorCode::ProviderNotConfigured, e.to_string()))?;
    let mut resp = redirect(url.as_str());
    let set = binding_cookie(&state, &binding_cookie_name(&state_hash), &nonce, state.settings.session_ttl.as_secs());
    if let Ok(v) = header::HeaderValue::from_str(&set) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// `GET /connect/{token}?go=1`: the interstitial's button (open the session now).
#[derive(Deserialize)]
pub struct OpenQuery {
    #[serde(default, deserialize_with = "flag")]
    go: bool,
}

fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let v = String::deserialize(d)?;
    Ok(matches!(v.as_str(), "1" | "true" | "yes"))
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    /// The issuer of the authorization response (RFC 9207).
    iss: Option<String>,
}

/// Whether a callback's `iss` is acceptable for `provider` (RFC 9207, the mix-up defence).
/// An entry that declares its issuer requires exactly that `iss`. Without a declared issuer an
/// `iss` is optional, but one that is sent must name the authorization server the browser was
/// sent to (the authorize URL's origin), so a response from another server is refused.
pub fn issuer_matches(provider: &shared::catalog::Provider, iss: Option<&str>) -> bool {
    match (&provider.issuer, iss) {
        (Some(expected), Some(got)) => expected == got,
        (Some(_), None) => false,
        (None, None) => true,
        (None, Some(got)) => {
            Url::parse(got).is_ok_and(|u| provider.authorize_url.as_ref().is_some_and(|a| u.origin() == a.origin()))
        }
    }
}

/// `GET /oauth/callback`: the provider sends the browser back with a code or an error.
#[tracing::instrument(skip_all, fields(provider, connection_id, outcome))]
pub async fn callback(
    state: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<CallbackQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let Some(state_param) = q.state.filter(|s| !s.is_empty() && s.len() <= 512) else {
        if super::ending::wants_html(&req) {
            return Ok(super::connect_form::stray_callback(&state));
        }
        return Err(ApiError::new(ErrorCode::InvalidState, "the callback has no valid state parameter"));
    };
    let state_hash = hash_secret(&state_param);
    let consumed = state.core.store.consume_state(&state_hash).await?;
    let session = match consumed {
        Ok(s) => s,
        Err(why) => match unusable(&state, &req, why, "state_already_used") {
            Some(end) => return Ok(end),
            None if super::ending::wants_html(&req) => return Ok(super::connect_form::stray_callback(&state)),
            None => {
                return Err(ApiError::new(
                    ErrorCode::InvalidState,
                    "unknown state: this callback does not belong to any connect session",
                ))
            }
        },
    };
    let span = tracing::Span::current();
    span.record("provider", session.provider.as_str());
    span.record("connection_id", session.connection_id.as_str());
    // Whatever happens next, the flow is over: its cookie goes.
    let cookie_name = binding_cookie_name(&state_hash);
    let done = |mut resp: HttpResponse| {
        if let Ok(v) = header::HeaderValue::from_str(&binding_cookie(&state, &cookie_name, "", 0)) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        Ok(resp)
    };
    // The session was consumed above, so a callback refused here can never be replayed.
    if !same_browser(&req, &cookie_name, session.browser_hash.as_deref()) {
        span.record("outcome", "browser_mismatch");
        tracing::warn!("callback from a browser that did not open the flow; nothing stored");
        return done(failed(&state, &req, &session.ending, "browser_mismatch"));
    }
    let Some(provider) = state.core.tokens.catalog.get(&session.provider) else {
        return done(failed(&state, &req, &session.ending, "unknown_provider"));
    };
    if provider.credentials.is_some() {
        // A credential form's state never went to a provider: no callback can carry it.
        return done(failed(&state, &req, &session.ending, "invalid_state"));
    }
    if !issuer_matches(provider, q.iss.as_deref()) {
        span.record("outcome", "issuer_mismatch");
        tracing::warn!("callback with an unexpected iss; nothing stored");
        return done(failed(&state, &req, &session.ending, "issuer_mismatch"));
    }
    if let Some(err) = q.error {
        span.record("outcome", "provider_error");
        return done(failed(&state, &req, &session.ending, &sanitize_code(&err)));
    }
    let Some(code) = q.code.filter(|c| !c.is_empty()) else {
        return done(failed(&state, &req, &session.ending, "invalid_request"));
    };
    if !session.may_replace
        && state.core.store.get_connection(&session.provider, &session.connection_id).await?.is_some()
    {
        span.record("outcome", "reconnect_not_allowed");
        return done(failed(&state, &req, &session.ending, "reconnect_not_allowed"));
    }
    let verifier = if provider.pkce { session.verifier.as_deref() } else { None };
    let resp = match state.core.tokens.oauth.exchange_code(provider, &code, &state.redirect_uri(), verifier).await {
        Ok(r) => r,
        Err(e) => {
            span.record("outcome", "exchange_failed");
            tracing::warn!(error = %e, "code exchange failed");
            return done(failed(&state, &req, &session.ending, &e.code()));
        }
    };
    let actor = super::flow_actor(&session, &req);
    state
        .core
        .tokens
        .store_authorized(&session.provider, &session.connection_id, resp, &session.profile, &actor)
        .await?;
    span.record("outcome", "connected");
    done(finish(&state, &req, &session.ending, Outcome::connected(&session)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(issuer: Option<&str>) -> shared::catalog::Provider {
        let issuer = issuer.map(|i| format!("issuer = \"{i}\"\n")).unwrap_or_default();
        let toml = format!(
            "[providers.acme]\nauthorize_url = \"https://login.acme.example/oauth/authorize\"\n\
             token_url = \"https://login.acme.example/oauth/token\"\n{issuer}"
        );
        shared::catalog::Catalog::from_toml(&toml, &|_| None).unwrap().get("acme").unwrap().clone()
    }

    #[test]
    fn a_declared_issuer_is_required_exactly_and_an_undeclared_one_must_be_the_authorize_urls_origin() {
        let declared = provider(Some("https://login.acme.example"));
        assert!(issuer_matches(&declared, Some("https://login.acme.example")));
        assert!(!issuer_matches(&declared, Some("https://login.acme.example/")), "compared as a plain string");
        assert!(!issuer_matches(&declared, Some("https://evil.example")));
        assert!(!issuer_matches(&declared, None), "a declared issuer must be sent");
        let undeclared = provider(None);
        assert!(issuer_matches(&undeclared, None));
        assert!(issuer_matches(&undeclared, Some("https://login.acme.example")));
        assert!(issuer_matches(&undeclared, Some("https://login.acme.example/tenant/v2.0")));
        assert!(!issuer_matches(&undeclared, Some("https://evil.example")));
        assert!(!issuer_matches(&undeclared, Some("http://login.acme.example")), "another scheme is another origin");
        assert!(!issuer_matches(&undeclared, Some("not a url")));
    }

    #[test]
    fn the_flow_cookie_is_found_among_others_by_its_name_only() {
        let fields = ["a=1; authbridge_flow_x=n1", "authbridge_flow_y=\"n2\"; b=2"];
        assert_eq!(cookie_in(fields.iter().copied(), "authbridge_flow_x"), Some("n1"));
        assert_eq!(cookie_in(fields.iter().copied(), "authbridge_flow_y"), Some("n2"));
        assert_eq!(cookie_in(fields.iter().copied(), "authbridge_flow"), None, "a prefix is another name");
        assert_eq!(cookie_in(std::iter::empty(), "a"), None);
    }

    #[test]
    fn each_flow_has_a_cookie_name_of_its_own() {
        let (a, b) = (binding_cookie_name(&hash_secret("state-a")), binding_cookie_name(&hash_secret("state-b")));
        assert_ne!(a, b);
        assert!(a.starts_with("authbridge_flow_"));
        // A cookie name is a token (RFC 6265 §4.1.1): base64url's alphabet is.
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'), "{a}");
    }
}
