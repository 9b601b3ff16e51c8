//! Stand-ins for the seed providers' APIs, authenticating calls as each provider's own API
//! documentation says (not OAuth2):
//!
//! - `POST /kartra/api`: a form body with `app_id`, `api_key` and `api_password`; every answer
//!   is HTTP 200 with `{"status", "message", "type"}` (202/203/233/204 the end user's key,
//!   password or account; 238/239/240/242 the App); 20 calls per second per App, then
//!   `429 Too many requests`.
//! - `ANY /ontraport/1/...`: `Api-Appid` and `Api-Key` header fields; 401 for a bad pair; 180
//!   calls per minute per account, with `X-Rate-Limit-Limit/Remaining/Reset`, then 429.
//! - `ANY /whatconverts/api/v1/...`: HTTP Basic `token:secret`; 401 for a bad pair.
//! - `GET /redtail/api/public/v1/authentication`: `Basic base64(APIKey:Username:Password)` →
//!   `{"APIKey", "UserKey", "UserID", "Status": 1, "Message": "Success"}`; every other call
//!   `Authorization: Userkeyauth base64(APIKey:UserKey)`. A user's UserKey stays the same across
//!   password changes and never expires.
//!
//! A call that passes answers with what arrived (method, path, query, header fields, form
//! fields), so tests see exactly what the proxy sent.

use super::MockState;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Kartra's documented limit: calls per second per App.
pub const KARTRA_PER_SECOND: usize = 20;
/// Ontraport's documented limit: calls per minute per account.
pub const ONTRAPORT_PER_MINUTE: usize = 180;

/// The accounts each stand-in knows, and what it counted.
#[derive(Debug, Default)]
pub struct Accounts {
    pub kartra_apps: Vec<String>,
    /// api_key → (api_password, active)
    pub kartra: HashMap<String, (String, bool)>,
    pub ontraport: HashMap<String, String>,
    pub whatconverts: HashMap<String, String>,
    pub redtail_partner_keys: Vec<String>,
    /// username → (password, user key)
    pub redtail: HashMap<String, (String, String)>,
    /// The next this many calls, to any stand-in, answer `503` before authenticating (an outage).
    pub fail_next: u32,
    kartra_window: HashMap<String, Vec<Instant>>,
    ontraport_window: HashMap<String, Vec<Instant>>,
    pub counts: ApiCounts,
}

/// What the stand-ins counted, for tests and benchmarks.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ApiCounts {
    pub kartra_calls: u64,
    pub kartra_rate_limited: u64,
    pub ontraport_calls: u64,
    pub whatconverts_calls: u64,
    pub redtail_authentications: u64,
    pub redtail_calls: u64,
    /// Calls refused for their credentials, all stand-ins together.
    pub refused: u64,
    /// Calls answered 503 by `fail_next`.
    pub failed: u64,
}

impl Accounts {
    /// The demo's accounts (documented in the README): one per provider.
    pub fn demo() -> Self {
        let mut a = Self::default();
        a.kartra_apps.push("demo-app".into());
        a.kartra.insert("demo-key".into(), ("demo-password".into(), true));
        a.ontraport.insert("demo-app-id".into(), "demo-key".into());
        a.whatconverts.insert("demo-token".into(), "demo-secret".into());
        a.redtail_partner_keys.push("demo-partner-key".into());
        a.redtail.insert("demo".into(), ("demo-password".into(), "demo-user-key".into()));
        a
    }
}

impl Accounts {
    /// An outage answer while `fail_next` lasts.
    fn outage(&mut self) -> Option<HttpResponse> {
        if self.fail_next == 0 {
            return None;
        }
        self.fail_next -= 1;
        self.counts.failed += 1;
        Some(HttpResponse::ServiceUnavailable().insert_header((header::RETRY_AFTER, "1")).body("maintenance"))
    }
}

/// Calls within the last `window` for `key`, counting this one if there is room.
fn admit(windows: &mut HashMap<String, Vec<Instant>>, key: &str, limit: usize, window: Duration) -> (bool, usize) {
    let now = Instant::now();
    let w = windows.entry(key.to_owned()).or_default();
    w.retain(|t| now.duration_since(*t) < window);
    if w.len() >= limit {
        return (false, w.len());
    }
    w.push(now);
    (true, w.len())
}

impl MockState {
    /// Runs `f` on the stand-ins' accounts (tests add, revoke and change them).
    pub fn accounts<R>(&self, f: impl FnOnce(&mut Accounts) -> R) -> R {
        f(&mut self.0.lock().unwrap().apis)
    }

    pub fn api_counts(&self) -> ApiCounts {
        self.accounts(|a| a.counts.clone())
    }
}

fn echo(req: &HttpRequest, form: Option<&[(String, String)]>) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned().into()))
        .collect();
    serde_json::json!({
        "method": req.method().as_str(),
        "path": req.path(),
        "query": req.query_string(),
        "headers": headers,
        "form": form.map(|f| f.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>()),
    })
}

fn header_str<'r>(req: &'r HttpRequest, name: &str) -> Option<&'r str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The decoded parts of `Authorization: <scheme> base64(a:b[:c])`.
fn scheme_parts(req: &HttpRequest, scheme: &str) -> Option<Vec<String>> {
    let v = header_str(req, "authorization")?;
    let (s, b64) = v.split_once(' ')?;
    if !s.eq_ignore_ascii_case(scheme) {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    Some(String::from_utf8(raw).ok()?.split(':').map(str::to_owned).collect())
}

fn kartra_answer(status: &str, message: &str, kind: &str) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": status, "message": message, "type": kind}))
}

async fn kartra(state: web::Data<MockState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |n: &str| form.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str()).unwrap_or("");
    let mut g = state.0.lock().unwrap();
    let a = &mut g.apis;
    a.counts.kartra_calls += 1;
    if let Some(r) = a.outage() {
        return r;
    }
    let app = field("app_id");
    if app.is_empty() || !a.kartra_apps.iter().any(|x| x == app) {
        return kartra_answer("Error", "The App ID is not valid", "238");
    }
    if !admit(&mut a.kartra_window, app, KARTRA_PER_SECOND, Duration::from_secs(1)).0 {
        a.counts.kartra_rate_limited += 1;
        return HttpResponse::TooManyRequests()
            .json(serde_json::json!({"status": "Error", "message": "Too many requests"}));
    }
    let (key, password) = (field("api_key"), field("api_password"));
    let verdict = match a.kartra.get(key) {
        _ if key.is_empty() => Some(("API key is empty", "202")),
        None => Some(("API key is not valid", "203")),
        Some((p, _)) if p != password => Some(("API password is not valid", "233")),
        Some((_, false)) => Some(("The account is inactive", "204")),
        Some(_) => None,
    };
    if let Some((message, kind)) = verdict {
        a.counts.refused += 1;
        return kartra_answer("Error", message, kind);
    }
    match field("cmd") {
        "get_lead" => kartra_answer("Error", "Lead not found", "2020"),
        _ => HttpResponse::Ok()
            .json(serde_json::json!({"status": "Success", "message": "ok", "echo": echo(&req, Some(&form))})),
    }
}

async fn ontraport(state: web::Data<MockState>, req: HttpRequest) -> HttpResponse {
    let (app, key) = (header_str(&req, "api-appid").unwrap_or(""), header_str(&req, "api-key").unwrap_or(""));
    let mut g = state.0.lock().unwrap();
    let a = &mut g.apis;
    a.counts.ontraport_calls += 1;
    if let Some(r) = a.outage() {
        return r;
    }
    if a.ontraport.get(app).is_none_or(|k| k != key) {
        a.counts.refused += 1;
        return HttpResponse::Unauthorized().body("Your App ID and API Key do not match.");
    }
    let (ok, used) = admit(&mut a.ontraport_window, app, ONTRAPORT_PER_MINUTE, Duration::from_secs(60));
    let mut resp = if ok { HttpResponse::Ok() } else { HttpResponse::TooManyRequests() };
    resp.insert_header(("x-rate-limit-limit", ONTRAPORT_PER_MINUTE.to_string()))
        .insert_header(("x-rate-limit-remaining", ONTRAPORT_PER_MINUTE.saturating_sub(used).to_string()))
        .insert_header(("x-rate-limit-reset", "60"));
    if !ok {
        return resp.insert_header((header::RETRY_AFTER, "60")).body("Rate limit exceeded");
    }
    resp.json(serde_json::json!({"code": 0, "data": echo(&req, None)}))
}

async fn whatconverts(state: web::Data<MockState>, req: HttpRequest) -> HttpResponse {
    let parts = scheme_parts(&req, "basic");
    let mut g = state.0.lock().unwrap();
    let a = &mut g.apis;
    a.counts.whatconverts_calls += 1;
    if let Some(r) = a.outage() {
        return r;
    }
    let ok = matches!(parts.as_deref(), Some([t, s]) if a.whatconverts.get(t).is_some_and(|x| x == s));
    if !ok {
        a.counts.refused += 1;
        return HttpResponse::Unauthorized().json(serde_json::json!({"error_message": "Invalid API token or secret"}));
    }
    HttpResponse::Ok().json(echo(&req, None))
}

fn redtail_refused(message: &str) -> HttpResponse {
    HttpResponse::build(StatusCode::UNAUTHORIZED).json(serde_json::json!({"Status": 0, "Message": message}))
}

async fn redtail_authentication(state: web::Data<MockState>, req: HttpRequest) -> HttpResponse {
    let parts = scheme_parts(&req, "basic");
    let mut g = state.0.lock().unwrap();
    let a = &mut g.apis;
    a.counts.redtail_authentications += 1;
    if let Some(r) = a.outage() {
        return r;
    }
    let Some([key, user, password]) = parts.as_deref() else {
        a.counts.refused += 1;
        return redtail_refused("Authorization must be Basic base64(APIKey:Username:Password)");
    };
    if !a.redtail_partner_keys.contains(key) {
        a.counts.refused += 1;
        return redtail_refused("Invalid API key");
    }
    match a.redtail.get(user) {
        Some((p, user_key)) if p == password => HttpResponse::Ok().json(serde_json::json!({
            "APIKey": key, "UserKey": user_key, "UserID": 1000 + user.len(), "Status": 1, "Message": "Success",
        })),
        _ => {
            a.counts.refused += 1;
            redtail_refused("Invalid username or password")
        }
    }
}

async fn redtail(state: web::Data<MockState>, req: HttpRequest) -> HttpResponse {
    let parts = scheme_parts(&req, "userkeyauth");
    let mut g = state.0.lock().unwrap();
    let a = &mut g.apis;
    a.counts.redtail_calls += 1;
    if let Some(r) = a.outage() {
        return r;
    }
    let ok = matches!(parts.as_deref(), Some([key, user_key])
        if a.redtail_partner_keys.contains(key) && a.redtail.values().any(|(_, k)| k == user_key));
    if !ok {
        a.counts.refused += 1;
        return redtail_refused("Invalid user key");
    }
    HttpResponse::Ok().json(echo(&req, None))
}

/// The stand-ins' routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/kartra/api", web::post().to(kartra))
        .route("/ontraport/1/{tail:.*}", web::route().to(ontraport))
        .route("/whatconverts/api/v1/{tail:.*}", web::route().to(whatconverts))
        .route("/redtail/api/public/v1/authentication", web::get().to(redtail_authentication))
        .route("/redtail/api/public/v1/{tail:.*}", web::route().to(redtail))
        .route("/mock/api-counts", web::get().to(counts));
}

async fn counts(state: web::Data<MockState>) -> HttpResponse {
    HttpResponse::Ok().json(state.api_counts())
}
