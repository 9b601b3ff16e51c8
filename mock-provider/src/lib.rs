//! A mock OAuth2 provider and provider API that behaves like a real one, for tests and the demo.
//!
//! - `GET /oauth/authorize`: checks the client and redirect URI, then auto-approves (redirects
//!   with a code) or, when told to, denies (`error=access_denied`), echoing `state`.
//! - `POST /oauth/token`: form or JSON bodies; client authentication by HTTP Basic or in the
//!   body; checks the code's client, `redirect_uri` and PKCE verifier (S256 or plain); issues
//!   access tokens with a configurable lifetime; rotates refresh tokens, and answers a reused
//!   one with `invalid_grant` (and, like several real providers, revokes its whole family).
//! - `POST /oauth/revoke`: RFC 7009.
//! - `ANY /api/...`: echoes the request as JSON; 401 for an unknown or expired token.
//! - The seed providers' own API authentication (Kartra, Ontraport, WhatConverts, Redtail):
//!   see [`apis`].
//! - `GET /mock/stats`, `POST /mock/control`: counters for tests, and fault injection
//!   (5xx, 429 with `Retry-After`, delays, denial, expiring every token).

// Handlers return the HTTP answer itself as the error value; boxing it would only add noise.
#![allow(clippy::result_large_err)]

pub mod apis;
mod snapshot;
pub use snapshot::Snapshot;

use actix_web::http::{header, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A registered OAuth client.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub secret: String,
    /// Allowed redirect URIs; empty allows any (handy for the demo).
    pub redirect_uris: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: String,
    pub clients: Vec<Client>,
    pub access_token_ttl: Duration,
    pub workers: usize,
}

impl Settings {
    /// Reads `MOCK_BIND` (127.0.0.1:9090), `MOCK_CLIENT_ID` (demo-client),
    /// `MOCK_CLIENT_SECRET` (demo-secret), `MOCK_TOKEN_TTL_SECONDS` (3600).
    pub fn from_env() -> Self {
        let get = |k: &str, d: &str| std::env::var(k).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| d.to_owned());
        Self {
            bind: get("MOCK_BIND", "127.0.0.1:9090"),
            clients: vec![Client {
                id: get("MOCK_CLIENT_ID", "demo-client"),
                secret: get("MOCK_CLIENT_SECRET", "demo-secret"),
                redirect_uris: vec![],
            }],
            access_token_ttl: Duration::from_secs_f64(get("MOCK_TOKEN_TTL_SECONDS", "3600").parse().unwrap_or(3600.0)),
            workers: 2,
        }
    }
}

struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    challenge: Option<(String, String)>,
    scope: String,
    expires: Instant,
}

struct AccessToken {
    expires: Instant,
    family: u64,
}

struct RefreshToken {
    client_id: String,
    family: u64,
    scope: String,
    used: bool,
    /// When it was first used (for the reuse grace window).
    used_at: Option<Instant>,
}

/// Counters tests assert on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub authorizations: u64,
    pub code_grants: u64,
    pub refresh_grants: u64,
    /// Refresh grants rejected because the refresh token was already used or revoked.
    pub refresh_rejected: u64,
    pub token_requests: u64,
    pub injected_failures: u64,
    pub revocations: u64,
    pub api_calls: u64,
    pub api_unauthorized: u64,
    /// Refresh grants made after the family's latest access token had already expired: a
    /// broker that keeps its promise keeps this at zero.
    pub refreshes_after_expiry: u64,
    /// Reuses of a rotated refresh token answered within `rotation_grace_seconds`.
    pub grace_reuses: u64,
    /// Tokens issued to a client for itself (RFC 6749 §4.4).
    pub client_credentials_grants: u64,
}

/// Faults to inject, set through `POST /mock/control`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Control {
    /// Answer the next N token requests with `token_fail_status`.
    pub token_fail_count: u32,
    /// 500, 503, 429 … (default 503).
    pub token_fail_status: Option<u16>,
    /// `Retry-After` seconds on injected 429/503 answers.
    pub retry_after_seconds: Option<u64>,
    /// Delay every token response by this long (simulates a slow provider or a timeout).
    pub token_delay_ms: u64,
    /// A rotated refresh token stays usable this long (0: strict rotation).
    pub rotation_grace_seconds: u64,
    /// Deny every authorization with `access_denied`.
    pub deny_authorizations: bool,
    /// Lifetime of newly issued access tokens, in seconds.
    pub access_token_ttl_seconds: Option<f64>,
    /// Expire every access token issued so far.
    pub expire_all_access_tokens: bool,
    /// Revoke every refresh token issued so far (the next refresh gets `invalid_grant`).
    pub revoke_all_refresh_tokens: bool,
    /// Issue no refresh token on refresh (the client must keep the old one).
    pub omit_refresh_token_on_refresh: bool,
    /// Answer the next N API calls with `api_fail_status`.
    pub api_fail_count: u32,
    pub api_fail_status: Option<u16>,
    /// Delay every API response by this long.
    pub api_delay_ms: u64,
}

struct Inner {
    clients: HashMap<String, Client>,
    codes: HashMap<String, CodeGrant>,
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, RefreshToken>,
    revoked_families: std::collections::HashSet<u64>,
    /// When each family's latest access token expires.
    family_expiry: HashMap<u64, Instant>,
    next_family: u64,
    ttl: Duration,
    stats: Stats,
    control: Control,
    /// Every secret issued or received, for "no secret in any log" tests.
    secrets: Vec<String>,
    /// The seed providers' API stand-ins (`apis`).
    apis: apis::Accounts,
}

/// The provider's state, shared by its workers.
#[derive(Clone)]
pub struct MockState(Arc<Mutex<Inner>>);

impl MockState {
    fn new(s: &Settings) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            clients: s.clients.iter().map(|c| (c.id.clone(), c.clone())).collect(),
            codes: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            revoked_families: Default::default(),
            family_expiry: HashMap::new(),
            next_family: 1,
            ttl: s.access_token_ttl,
            stats: Stats::default(),
            control: Control::default(),
            secrets: s.clients.iter().map(|c| c.secret.clone()).collect(),
            apis: apis::Accounts::demo(),
        })))
    }

    /// Every code, token, verifier and client secret this provider issued or received.
    pub fn secrets(&self) -> Vec<String> {
        self.0.lock().unwrap().secrets.clone()
    }

    pub fn stats(&self) -> Stats {
        self.0.lock().unwrap().stats.clone()
    }

    /// Applies a control message (the in-process twin of `POST /mock/control`).
    /// Gives a client a new secret (the operator rotated it at the provider): the old one is
    /// refused with `invalid_client` from now on.
    pub fn set_client_secret(&self, client_id: &str, secret: &str) {
        if let Some(c) = self.0.lock().unwrap().clients.get_mut(client_id) {
            c.secret = secret.to_owned();
        }
    }

    pub fn control(&self, c: Control) {
        let mut g = self.0.lock().unwrap();
        apply_control(&mut g, c);
    }
}

fn apply_control(g: &mut Inner, c: Control) {
    if let Some(ttl) = c.access_token_ttl_seconds {
        g.ttl = Duration::from_secs_f64(ttl.max(0.0));
    }
    if c.expire_all_access_tokens {
        let past = Instant::now();
        g.access.values_mut().for_each(|t| t.expires = past);
    }
    if c.revoke_all_refresh_tokens {
        let fams: Vec<u64> = g.refresh.values().map(|r| r.family).collect();
        g.revoked_families.extend(fams);
    }
    g.control = Control {
        expire_all_access_tokens: false,
        revoke_all_refresh_tokens: false,
        access_token_ttl_seconds: None,
        ..c
    };
}

fn token(prefix: &str) -> String {
    format!("{prefix}_{}", shared::crypto::random_token())
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    let mut r = HttpResponse::build(status);
    r.insert_header((header::CACHE_CONTROL, "no-store"));
    if status == StatusCode::UNAUTHORIZED {
        r.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"mock-provider\""));
    }
    r.json(serde_json::json!({"error": error, "error_description": description}))
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

async fn authorize(state: web::Data<MockState>, req: HttpRequest, q: web::Query<AuthorizeQuery>) -> HttpResponse {
    let q = q.into_inner();
    // Our issuer identifier (RFC 8414): the origin we are reached at.
    let issuer = {
        let info = req.connection_info();
        format!("{}://{}", info.scheme(), info.host())
    };
    let mut g = state.0.lock().unwrap();
    // Errors about the client or redirect URI must not redirect (RFC 6749 §4.1.2.1).
    let Some(client) = q.client_id.as_ref().and_then(|id| g.clients.get(id)).cloned() else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_client", "unknown client_id");
    };
    let Some(redirect_uri) = q.redirect_uri.clone() else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "redirect_uri is required");
    };
    if !client.redirect_uris.is_empty() && !client.redirect_uris.contains(&redirect_uri) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "redirect_uri is not registered");
    }
    let Ok(mut target) = url::Url::parse(&redirect_uri) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "redirect_uri is not a URL");
    };
    let mut pairs: Vec<(&str, String)> = Vec::new();
    if q.response_type.as_deref() != Some("code") {
        pairs.push(("error", "unsupported_response_type".into()));
    } else if g.control.deny_authorizations {
        pairs.push(("error", "access_denied".into()));
        pairs.push(("error_description", "The user denied the request".into()));
    } else if q.code_challenge_method.is_some() && q.code_challenge.is_none() {
        pairs.push(("error", "invalid_request".into()));
    } else {
        let method = q.code_challenge_method.clone().unwrap_or_else(|| "plain".into());
        if q.code_challenge.is_some() && method != "S256" && method != "plain" {
            pairs.push(("error", "invalid_request".into()));
        } else {
            let code = token("code");
            g.codes.insert(
                code.clone(),
                CodeGrant {
                    client_id: client.id.clone(),
                    redirect_uri: redirect_uri.clone(),
                    challenge: q.code_challenge.clone().map(|c| (c, method)),
                    scope: q.scope.clone().unwrap_or_default(),
                    expires: Instant::now() + Duration::from_secs(60),
                },
            );
            g.stats.authorizations += 1;
            g.secrets.push(code.clone());
            pairs.push(("code", code));
        }
    }
    if let Some(s) = &q.state {
        pairs.push(("state", s.clone()));
    }
    // Every authorization response names its issuer (RFC 9207), success and error alike.
    pairs.push(("iss", issuer));
    target.query_pairs_mut().extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())));
    HttpResponse::Found().insert_header((header::LOCATION, target.to_string())).finish()
}

/// Reads a token request body, form or JSON, into string parameters.
fn parse_params(req: &HttpRequest, body: &[u8]) -> Result<HashMap<String, String>, HttpResponse> {
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct.starts_with("application/json") {
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "body is not JSON"))?;
        let obj = v
            .as_object()
            .ok_or_else(|| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "body is not a JSON object"))?;
        Ok(obj.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned()))).collect())
    } else if ct.starts_with("application/x-www-form-urlencoded") {
        Ok(url::form_urlencoded::parse(body).into_owned().collect())
    } else {
        Err(oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "unsupported content type"))
    }
}

/// Client authentication (RFC 6749 §2.3.1): Basic or body, never both.
fn authenticate(g: &Inner, req: &HttpRequest, params: &HashMap<String, String>) -> Result<String, HttpResponse> {
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| {
            let (id, secret) = s.split_once(':')?;
            let dec =
                |x: &str| url::form_urlencoded::parse(format!("v={x}").as_bytes()).next().map(|(_, v)| v.into_owned());
            Some((dec(id)?, dec(secret)?))
        });
    let body = params.get("client_secret").map(|s| (params.get("client_id").cloned().unwrap_or_default(), s.clone()));
    let (id, secret) = match (basic, body) {
        (Some(_), Some(_)) => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "more than one client authentication method",
            ))
        }
        (Some(b), None) => b,
        (None, Some(b)) => b,
        (None, None) => {
            return Err(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication required"))
        }
    };
    match g.clients.get(&id) {
        Some(c) if c.secret == secret => Ok(id),
        _ => Err(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication failed")),
    }
}

fn issue(g: &mut Inner, client_id: &str, family: Option<u64>, scope: &str, with_refresh: bool) -> HttpResponse {
    let family = family.unwrap_or_else(|| {
        g.next_family += 1;
        g.next_family
    });
    let access = token("at");
    g.secrets.push(access.clone());
    let expires = Instant::now() + g.ttl;
    g.access.insert(access.clone(), AccessToken { expires, family });
    g.family_expiry.insert(family, expires);
    let mut body = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": g.ttl.as_secs_f64().round() as u64,
    });
    if !scope.is_empty() {
        body["scope"] = scope.into();
    }
    if with_refresh {
        let rt = token("rt");
        g.secrets.push(rt.clone());
        g.refresh.insert(
            rt.clone(),
            RefreshToken {
                client_id: client_id.to_owned(),
                family,
                scope: scope.to_owned(),
                used: false,
                used_at: None,
            },
        );
        body["refresh_token"] = rt.into();
    }
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(body)
}

async fn token_endpoint(state: web::Data<MockState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let (delay, fail) = {
        let mut g = state.0.lock().unwrap();
        g.stats.token_requests += 1;
        let fail = if g.control.token_fail_count > 0 {
            g.control.token_fail_count -= 1;
            g.stats.injected_failures += 1;
            Some((g.control.token_fail_status.unwrap_or(503), g.control.retry_after_seconds))
        } else {
            None
        };
        (g.control.token_delay_ms, fail)
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some((status, retry_after)) = fail {
        let mut r = HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE));
        if let Some(s) = retry_after {
            r.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        return r.content_type("text/html").body("<html><body>upstream trouble</body></html>");
    }
    let params = match parse_params(&req, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut g = state.0.lock().unwrap();
    if let Some(v) = params.get("code_verifier") {
        g.secrets.push(v.clone());
    }
    let client_id = match authenticate(&g, &req, &params) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match params.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some(code) = params.get("code").and_then(|c| g.codes.remove(c)) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "unknown or used code");
            };
            if code.expires < Instant::now() || code.client_id != client_id {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "code expired or issued to another client",
                );
            }
            if params.get("redirect_uri") != Some(&code.redirect_uri) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "redirect_uri does not match");
            }
            match (&code.challenge, params.get("code_verifier")) {
                (None, None) => {}
                (None, Some(_)) => {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "no code_challenge was sent")
                }
                (Some(_), None) => {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "code_verifier is required")
                }
                (Some((challenge, method)), Some(v)) => {
                    let ok_len = (43..=128).contains(&v.len());
                    let computed = if method == "S256" {
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes()))
                    } else {
                        v.clone()
                    };
                    if !ok_len || &computed != challenge {
                        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "PKCE verification failed");
                    }
                }
            }
            g.stats.code_grants += 1;
            issue(&mut g, &client_id, None, &code.scope.clone(), true)
        }
        Some("refresh_token") => {
            let Some(rt) = params.get("refresh_token") else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "refresh_token is required");
            };
            let Some(r) = g.refresh.get_mut(rt) else {
                g.stats.refresh_rejected += 1;
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "unknown refresh token");
            };
            let (family, scope, owner, reused, used_at) =
                (r.family, r.scope.clone(), r.client_id.clone(), r.used, r.used_at);
            r.used = true;
            r.used_at.get_or_insert_with(Instant::now);
            let grace = Duration::from_secs(g.control.rotation_grace_seconds);
            let within_grace = reused && used_at.is_some_and(|t| t.elapsed() < grace);
            if owner != client_id {
                g.stats.refresh_rejected += 1;
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "refresh token issued to another client");
            }
            if within_grace && !g.revoked_families.contains(&family) {
                // Like providers with a reuse interval (Auth0, Okta): a retry shortly after a
                // rotation is answered, not treated as theft.
                g.stats.grace_reuses += 1;
            } else if reused {
                // Reuse of a rotated refresh token: treat as theft and revoke the family.
                g.revoked_families.insert(family);
                g.access.retain(|_, t| t.family != family);
                g.stats.refresh_rejected += 1;
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "refresh token already used");
            }
            if g.revoked_families.contains(&family) {
                g.stats.refresh_rejected += 1;
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "refresh token revoked");
            }
            g.stats.refresh_grants += 1;
            if g.family_expiry.get(&family).is_some_and(|e| *e < Instant::now()) {
                g.stats.refreshes_after_expiry += 1;
            }
            if g.control.omit_refresh_token_on_refresh {
                // Keep the same refresh token valid, as providers without rotation do.
                if let Some(r) = g.refresh.get_mut(rt) {
                    r.used = false;
                }
                issue(&mut g, &client_id, Some(family), &scope, false)
            } else {
                issue(&mut g, &client_id, Some(family), &scope, true)
            }
        }
        Some("client_credentials") => {
            // RFC 6749 §4.4.3: no refresh token; the client asks again with its credentials.
            g.stats.client_credentials_grants += 1;
            let scope = params.get("scope").cloned().unwrap_or_default();
            issue(&mut g, &client_id, None, &scope, false)
        }
        Some(_) => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "grant_type not supported"),
        None => oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is required"),
    }
}

async fn revoke(state: web::Data<MockState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let params = match parse_params(&req, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut g = state.0.lock().unwrap();
    if let Err(r) = authenticate(&g, &req, &params) {
        return r;
    }
    g.stats.revocations += 1;
    if let Some(t) = params.get("token") {
        if let Some(r) = g.refresh.get(t) {
            let fam = r.family;
            g.revoked_families.insert(fam);
            g.access.retain(|_, a| a.family != fam);
        }
        g.access.remove(t);
    }
    HttpResponse::Ok().finish()
}

async fn api(state: web::Data<MockState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let (delay, fail) = {
        let mut g = state.0.lock().unwrap();
        let fail = if g.control.api_fail_count > 0 {
            g.control.api_fail_count -= 1;
            Some(g.control.api_fail_status.unwrap_or(503))
        } else {
            None
        };
        (g.control.api_delay_ms, fail)
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(status) = fail {
        return HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE))
            .json(serde_json::json!({"message": "injected failure"}));
    }
    let presented = shared::http::bearer(&req).map(str::to_owned);
    let mut g = state.0.lock().unwrap();
    g.stats.api_calls += 1;
    let valid = presented
        .as_ref()
        .and_then(|t| g.access.get(t))
        .is_some_and(|t| t.expires > Instant::now() && !g.revoked_families.contains(&t.family));
    if !valid {
        g.stats.api_unauthorized += 1;
        return HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\""))
            .json(serde_json::json!({"error": "invalid_token"}));
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned().into()))
        .collect();
    let mut resp = HttpResponse::Ok();
    // `x-mock-respond-header: name: value` makes the API answer with that header (tests of
    // what the proxy lets through on the way back).
    for v in req.headers().get_all("x-mock-respond-header") {
        if let Some((name, value)) = v.to_str().ok().and_then(|v| v.split_once(':')) {
            resp.append_header((name.trim(), value.trim()));
        }
    }
    resp.json(serde_json::json!({
        "method": req.method().as_str(),
        "path": req.path(),
        "query": req.query_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "token": presented,
    }))
}

async fn stats(state: web::Data<MockState>) -> HttpResponse {
    HttpResponse::Ok().json(state.stats())
}

async fn control(state: web::Data<MockState>, c: web::Json<Control>) -> HttpResponse {
    state.control(c.into_inner());
    HttpResponse::NoContent().finish()
}

/// A running mock provider.
pub struct MockServer {
    pub addr: SocketAddr,
    pub state: MockState,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl MockServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }
}

/// Starts the provider on `settings.bind` (port 0 picks a free port).
pub async fn run(settings: Settings) -> std::io::Result<MockServer> {
    let state = MockState::new(&settings);
    let data = web::Data::new(state.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/oauth/authorize", web::get().to(authorize))
            .route("/oauth/token", web::post().to(token_endpoint))
            .route("/oauth/revoke", web::post().to(revoke))
            .route("/api/{tail:.*}", web::route().to(api))
            .route("/mock/stats", web::get().to(stats))
            .route("/mock/control", web::post().to(control))
            .route("/healthz", web::get().to(shared::http::healthz))
            .configure(apis::configure)
    })
    .workers(settings.workers.max(1))
    .disable_signals()
    .bind(&settings.bind)?;
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    Ok(MockServer { addr, state, handle, task })
}

#[cfg(test)]
mod tests;
