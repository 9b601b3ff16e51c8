//! A small OAuth 2.0 client (RFC 6749, RFC 7636, RFC 7009) built on reqwest.
//!
//! Written for providers as they are: token requests as form (the standard) or JSON, client
//! authentication by HTTP Basic or in the body, and tolerant parsing of token responses
//! (`expires_in` as a number, a string or absent; a `200 OK` that carries an `error`; form-encoded
//! responses). Errors are classed so callers can tell "the grant is dead" from "try again later".

use crate::catalog::{BodyFormat, ClientAuth, Provider};
use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use url::Url;

/// A PKCE verifier (RFC 7636 §4.1: 43-128 characters of the unreserved set) and its S256 challenge.
pub fn pkce_pair() -> (String, String) {
    let verifier = crate::crypto::random_token(); // 43 characters of base64url
    (verifier.clone(), pkce_challenge(&verifier))
}

pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A parsed token response.
#[derive(Clone)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub token_type: Option<String>,
    pub expires_in: Option<Duration>,
    pub scope: Option<String>,
    /// Every other field, as received.
    pub extra: Map<String, Value>,
    /// When the request that produced it was sent: expiry counts from here, not from arrival.
    pub requested_at: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Why a token request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    /// The provider answered with an OAuth error (RFC 6749 §5.2).
    #[error("provider rejected the request: {error}{}", .description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Rejected { error: String, description: Option<String>, status: u16 },
    /// Network failure, timeout, 5xx, 429 or an unreadable answer: it may pass.
    #[error("provider unavailable: {reason}")]
    Transient { reason: String, retry_after: Option<Duration> },
    /// The provider has no client credentials configured here.
    #[error("provider `{0}` has no client credentials configured")]
    NotConfigured(String),
}

impl OAuthError {
    /// The grant is dead (`invalid_grant`) or the credentials were refused: only the end user
    /// can revive the connection.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Rejected { error, .. } if error == "invalid_grant" || error == crate::credentials::INVALID_CREDENTIALS)
    }

    /// The provider refused the client itself (RFC 6749 §5.2 `invalid_client`,
    /// `unauthorized_client`).
    pub fn is_client_refused(&self) -> bool {
        matches!(self, Self::Rejected { error, .. } if error == "invalid_client" || error == "unauthorized_client")
    }

    /// A stable short code for logs, the database and redirects; never contains a secret.
    pub fn code(&self) -> String {
        match self {
            Self::Rejected { error, .. } => sanitize_code(error),
            Self::Transient { .. } => "temporarily_unavailable".into(),
            Self::NotConfigured(_) => "provider_not_configured".into(),
        }
    }
}

/// Keeps an error code to the RFC 6749 error character set and a sane length.
pub fn sanitize_code(s: &str) -> String {
    let c: String =
        s.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || *c == '.').take(64).collect();
    if c.is_empty() {
        "invalid_response".into()
    } else {
        c
    }
}

/// The OAuth client. Cheap to clone; holds a pooled HTTP client.
#[derive(Clone, Debug)]
pub struct OAuthClient {
    http: reqwest::Client,
}

/// The HTTP client for calls that carry our secrets to a provider (token requests, credential
/// checks): bounded in time, and never following a redirect, which could send them elsewhere.
pub fn provider_http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("authbridge/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("HTTP client builds")
}

impl OAuthClient {
    pub fn new(timeout: Duration) -> Self {
        Self { http: provider_http_client(timeout) }
    }

    /// The same pooled HTTP client, for the other calls made to providers.
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// The URL to send the end user's browser to (RFC 6749 §4.1.1, RFC 7636 §4.3).
    pub fn authorize_url(
        provider: &Provider,
        redirect_uri: &str,
        state: &str,
        code_challenge: Option<&str>,
    ) -> Result<Url, OAuthError> {
        let client_id = provider.client_id.as_deref().ok_or_else(|| OAuthError::NotConfigured(provider.id.clone()))?;
        let mut url = provider.authorize_url.clone().ok_or_else(|| OAuthError::NotConfigured(provider.id.clone()))?;
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &provider.authorize_params {
                q.append_pair(k, v);
            }
            q.append_pair("response_type", "code");
            q.append_pair("client_id", client_id);
            q.append_pair("redirect_uri", redirect_uri);
            if !provider.scopes.is_empty() {
                q.append_pair("scope", &provider.scopes.join(&provider.scope_separator));
            }
            q.append_pair("state", state);
            if let Some(ch) = code_challenge {
                q.append_pair("code_challenge", ch);
                q.append_pair("code_challenge_method", "S256");
            }
        }
        Ok(url)
    }

    /// Exchanges an authorization code (RFC 6749 §4.1.3).
    pub async fn exchange_code<'a>(
        &self,
        provider: &'a Provider,
        code: &'a str,
        redirect_uri: &'a str,
        verifier: Option<&'a str>,
    ) -> Result<TokenResponse, OAuthError> {
        let mut params = vec![("grant_type", "authorization_code"), ("code", code), ("redirect_uri", redirect_uri)];
        if let Some(v) = verifier {
            params.push(("code_verifier", v));
        }
        self.token_request(provider, params).await
    }

    /// Refreshes an access token (RFC 6749 §6).
    pub async fn refresh<'a>(
        &self,
        provider: &'a Provider,
        refresh_token: &'a str,
    ) -> Result<TokenResponse, OAuthError> {
        self.token_request(provider, vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token)]).await
    }

    /// Fetches a token with the client's own credentials (RFC 6749 §4.4), for the entry's
    /// scopes.
    pub async fn client_credentials(&self, provider: &Provider) -> Result<TokenResponse, OAuthError> {
        let scope = provider.scopes.join(&provider.scope_separator);
        let mut params = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            params.push(("scope", scope.as_str()));
        }
        self.token_request(provider, params).await
    }

    /// Revokes a token (RFC 7009); a provider without a revocation endpoint is a no-op.
    pub async fn revoke<'a>(&self, provider: &'a Provider, token: &'a str, hint: &'a str) -> Result<(), OAuthError> {
        let Some(url) = provider.revocation_url.clone() else {
            return Ok(());
        };
        let req = self.authenticated(provider, url, vec![("token", token), ("token_type_hint", hint)])?;
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status();
        // RFC 7009 §2.2: 200 whether or not the token was valid; 503 means try again.
        if status.is_success() {
            return Ok(());
        }
        let retry_after = retry_after(resp.headers());
        let body = resp.bytes().await.unwrap_or_default();
        Err(classify_error(status.as_u16(), &body, retry_after))
    }

    fn authenticated<'a>(
        &self,
        provider: &'a Provider,
        url: Url,
        mut params: Vec<(&'a str, &'a str)>,
    ) -> Result<reqwest::RequestBuilder, OAuthError> {
        let id = provider.client_id.as_deref().ok_or_else(|| OAuthError::NotConfigured(provider.id.clone()))?;
        let secret =
            provider.client_secret.as_ref().ok_or_else(|| OAuthError::NotConfigured(provider.id.clone()))?.expose();
        let mut req = self.http.post(url).header(reqwest::header::ACCEPT, "application/json");
        if let Some(tp) = crate::telemetry::current_traceparent() {
            req = req.header("traceparent", tp);
        }
        match provider.client_auth {
            ClientAuth::Basic => {
                // RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
                let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let cred = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret)));
                req = req.header(reqwest::header::AUTHORIZATION, format!("Basic {cred}"));
            }
            ClientAuth::Body => {
                params.push(("client_id", id));
                params.push(("client_secret", secret));
            }
        }
        Ok(match provider.token_request_format {
            BodyFormat::Form => req.form(&params),
            BodyFormat::Json => {
                let obj: Map<String, Value> =
                    params.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect();
                req.json(&obj)
            }
        })
    }

    async fn token_request<'a>(
        &self,
        provider: &'a Provider,
        params: Vec<(&'a str, &'a str)>,
    ) -> Result<TokenResponse, OAuthError> {
        let token_url = provider.token_url.clone().ok_or_else(|| OAuthError::NotConfigured(provider.id.clone()))?;
        let req = self.authenticated(provider, token_url, params)?;
        let requested_at = chrono::Utc::now();
        let started = Instant::now();
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status();
        let retry = retry_after(resp.headers());
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let body = resp.bytes().await.map_err(transport_error)?;
        tracing::debug!(
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "token endpoint answered"
        );
        if !status.is_success() {
            return Err(classify_error(status.as_u16(), &body, retry));
        }
        parse_token_response(&body, &content_type, requested_at)
    }
}

pub(crate) fn transport_error(e: reqwest::Error) -> OAuthError {
    let reason = if e.is_timeout() {
        "timeout".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        // reqwest errors carry the URL, never a body or a header; still, keep it short.
        format!("transport error: {}", e.without_url())
    };
    OAuthError::Transient { reason, retry_after: None }
}

pub(crate) fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // RFC 9110 §10.2.3: an HTTP-date is also allowed.
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok()
}

/// Reads an object from a JSON or form-encoded body.
fn parse_object(body: &[u8], content_type: &str) -> Option<Map<String, Value>> {
    let trimmed = body.iter().position(|b| !b.is_ascii_whitespace()).map(|i| &body[i..]).unwrap_or(&[]);
    if content_type.contains("json") || trimmed.first() == Some(&b'{') {
        return match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        };
    }
    if content_type.contains("x-www-form-urlencoded") || content_type.starts_with("text/plain") {
        let m: Map<String, Value> =
            url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), Value::String(v.into_owned()))).collect();
        return (!m.is_empty()).then_some(m);
    }
    None
}

fn string_field(m: &Map<String, Value>, k: &str) -> Option<String> {
    match m.get(k)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `expires_in` as a number, a numeric string, or absent; nonsense counts as absent.
pub fn parse_expires_in(v: Option<&Value>) -> Option<Duration> {
    let secs = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if !secs.is_finite() {
        return None;
    }
    // A zero or negative lifetime means "already expired"; cap absurd values at ten years.
    Some(Duration::from_secs_f64(secs.clamp(0.0, 315_360_000.0)))
}

pub fn parse_token_response(
    body: &[u8],
    content_type: &str,
    requested_at: chrono::DateTime<chrono::Utc>,
) -> Result<TokenResponse, OAuthError> {
    let Some(mut m) = parse_object(body, content_type) else {
        return Err(OAuthError::Transient {
            reason: "token endpoint returned an unreadable body".into(),
            retry_after: None,
        });
    };
    // Some providers answer 200 with an error object.
    if let Some(error) = string_field(&m, "error") {
        return Err(OAuthError::Rejected {
            error: sanitize_code(&error),
            description: string_field(&m, "error_description").map(|d| d.chars().take(200).collect()),
            status: 200,
        });
    }
    let Some(access_token) = string_field(&m, "access_token") else {
        return Err(OAuthError::Transient { reason: "token response has no access_token".into(), retry_after: None });
    };
    let expires_in = parse_expires_in(m.get("expires_in"));
    let refresh_token = string_field(&m, "refresh_token");
    let token_type = string_field(&m, "token_type");
    let scope = string_field(&m, "scope");
    for k in ["access_token", "refresh_token", "token_type", "expires_in", "scope"] {
        m.remove(k);
    }
    Ok(TokenResponse { access_token, refresh_token, token_type, expires_in, scope, extra: m, requested_at })
}

fn classify_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> OAuthError {
    if status == 429 || status >= 500 || status == 408 {
        return OAuthError::Transient { reason: format!("HTTP {status}"), retry_after };
    }
    let obj = parse_object(body, "");
    match obj.as_ref().and_then(|m| string_field(m, "error")) {
        Some(error) => OAuthError::Rejected {
            error: sanitize_code(&error),
            description: obj
                .as_ref()
                .and_then(|m| string_field(m, "error_description"))
                .map(|d| d.chars().take(200).collect()),
            status,
        },
        None if status == 401 => OAuthError::Rejected { error: "invalid_client".into(), description: None, status },
        None => OAuthError::Transient { reason: format!("HTTP {status} without an OAuth error"), retry_after },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }

    #[test]
    fn expires_in_is_read_as_number_string_or_absent() {
        assert_eq!(parse_expires_in(Some(&json!(3600))), Some(Duration::from_secs(3600)));
        assert_eq!(parse_expires_in(Some(&json!("3599"))), Some(Duration::from_secs(3599)));
        assert_eq!(parse_expires_in(Some(&json!(" 60 "))), Some(Duration::from_secs(60)));
        assert_eq!(parse_expires_in(Some(&json!(-5))), Some(Duration::ZERO));
        assert_eq!(parse_expires_in(Some(&json!("soon"))), None);
        assert_eq!(parse_expires_in(None), None);
    }

    #[test]
    fn token_responses_keep_extra_fields_and_accept_form_bodies() {
        let r = parse_token_response(
            br#"{"access_token":"a","expires_in":"10","id_token":"x","account":{"id":1}}"#,
            "application/json",
            now(),
        )
        .unwrap();
        assert_eq!(r.access_token, "a");
        assert_eq!(r.expires_in, Some(Duration::from_secs(10)));
        assert!(r.extra.contains_key("id_token") && r.extra.contains_key("account"));
        let r = parse_token_response(
            b"access_token=b&token_type=bearer&refresh_token=r",
            "application/x-www-form-urlencoded",
            now(),
        )
        .unwrap();
        assert_eq!(r.refresh_token.as_deref(), Some("r"));
        assert_eq!(r.expires_in, None);
    }

    #[test]
    fn errors_are_classed() {
        let e =
            parse_token_response(br#"{"error":"invalid_grant","error_description":"used"}"#, "application/json", now())
                .unwrap_err();
        assert!(e.is_permanent());
        let e = classify_error(400, br#"{"error":"invalid_grant"}"#, None);
        assert!(e.is_permanent());
        let e = classify_error(401, b"", None);
        assert!(matches!(&e, OAuthError::Rejected { error, .. } if error == "invalid_client"));
        assert!(!e.is_permanent());
        let e = classify_error(429, b"", Some(Duration::from_secs(7)));
        assert!(matches!(e, OAuthError::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(7)));
        assert!(matches!(classify_error(503, b"<html>", None), OAuthError::Transient { .. }));
        assert!(matches!(
            parse_token_response(b"<html>oops</html>", "text/html", now()),
            Err(OAuthError::Transient { .. })
        ));
        assert_eq!(sanitize_code("bad\r\ncode<script>"), "badcodescript");
    }

    #[test]
    fn pkce_challenge_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let (v, c) = pkce_pair();
        assert!(v.len() >= 43 && v.len() <= 128);
        assert_eq!(pkce_challenge(&v), c);
    }
}
