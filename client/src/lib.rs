//! A typed client for authbridge's management API: the gateway's `/v1` endpoints, as
//! `docs/openapi/gateway.yaml` describes them. The `authbridge` command and the end-to-end
//! tests use it, so a change to the server that breaks it fails the tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), authbridge_client::Error> {
//! let ab = authbridge_client::Client::new("http://127.0.0.1:8080", "dev-api-key-change-me")?;
//! for c in ab.list_connections(&Default::default()).await?.connections {
//!     println!("{}/{}: {}", c.provider, c.connection_id, c.status);
//! }
//! # Ok(()) }
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type Time = chrono::DateTime<chrono::Utc>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// authbridge answered with one of its errors (`{"error", "message"}`).
    #[error("{message} ({code}, HTTP {status})")]
    Api { status: u16, code: String, message: String, retry_after: Option<u64> },
    /// An answer that is not what the API documents.
    #[error("unexpected answer (HTTP {status}): {body}")]
    Unexpected { status: u16, body: String },
    #[error("cannot reach authbridge: {0}")]
    Http(#[from] reqwest::Error),
    #[error("not a base URL: {0}")]
    Url(String),
}

impl Error {
    /// The stable error code, for an error authbridge answered with.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Unexpected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EndUser {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
}

pub type Tags = BTreeMap<String, String>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provider {
    pub id: String,
    pub display_name: String,
    pub auth: String,
    pub configured: bool,
    #[serde(default)]
    pub missing_configuration: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub api_base_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    pub provider: String,
    pub connection_id: String,
    /// `active` or `needs_reauth`.
    pub status: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<Time>,
    pub refresh_due_at: Option<Time>,
    pub last_refresh_at: Option<Time>,
    pub last_error: Option<String>,
    pub error_count: i32,
    pub created_at: Time,
    pub updated_at: Time,
    pub end_user: Option<EndUser>,
    #[serde(default)]
    pub tags: Tags,
}

/// `GET /v1/connections` filters; `None` and empty mean "any".
#[derive(Debug, Clone, Default)]
pub struct ConnectionQuery {
    pub provider: Option<String>,
    pub status: Option<String>,
    pub end_user_id: Option<String>,
    pub organization_id: Option<String>,
    pub tags: Tags,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionPage {
    pub connections: Vec<Connection>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NewSession {
    pub provider: String,
    pub connection_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_url: Option<String>,
    /// `redirect` (default) or `popup`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_user: Option<EndUser>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub token: String,
    pub connect_url: String,
    pub expires_at: Time,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NewConnection {
    pub provider: String,
    pub connection_id: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_user: Option<EndUser>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Token {
    pub access_token: String,
    pub token_type: String,
    pub expires_at: Option<Time>,
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("token_type", &self.token_type).field("expires_at", &self.expires_at).finish()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NewApiKey {
    pub name: String,
    pub scopes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub providers: Vec<String>,
    pub created_at: Time,
    pub revoked_at: Option<Time>,
    /// Only in the answer to creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NewWebhook {
    pub url: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `whsec_…`; generated when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookSecret {
    pub id: String,
    pub created_at: Time,
    pub expires_at: Option<Time>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub created_at: Time,
    pub secrets: Vec<WebhookSecret>,
    /// Only in the answer to creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddedSecret {
    pub id: String,
    pub secret: String,
    pub others_expire_at: Time,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub n: i32,
    pub at: Time,
    pub status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<Time>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: Time,
    pub finished_at: Option<Time>,
    pub attempt_log: Vec<Attempt>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryPage {
    pub deliveries: Vec<Delivery>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: Time,
    pub api_key_id: Option<String>,
    pub api_key_name: Option<String>,
    pub action: String,
    pub provider: Option<String>,
    pub connection_id: Option<String>,
    pub address: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// `GET /v1/audit` filters.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub action: Option<String>,
    pub api_key_id: Option<String>,
    pub provider: Option<String>,
    pub connection_id: Option<String>,
    pub since: Option<Time>,
    pub until: Option<Time>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

/// The management API of one gateway, with one API key.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish_non_exhaustive()
    }
}

/// A path segment, percent-encoded.
fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

impl Client {
    /// `base`: the gateway's URL (`http://127.0.0.1:8080`); `api_key`: sent as `Bearer`.
    pub fn new(base: &str, api_key: &str) -> Result<Self> {
        let parsed = url::Url::parse(base).map_err(|e| Error::Url(format!("{base}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::Url(format!("{base}: not http(s)")));
        }
        // reqwest is built without a TLS crypto provider of its own (the workspace has one TLS
        // stack): ring's, unless the program installed another.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("authbridge-client/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), key: api_key.to_owned() })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.key)
    }

    async fn answer<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
        let status = resp.status().as_u16();
        let retry_after =
            resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let body = resp.bytes().await?;
        if (200..300).contains(&status) {
            let body = if body.is_empty() { &b"null"[..] } else { &body[..] };
            return serde_json::from_slice(body)
                .map_err(|e| Error::Unexpected { status, body: format!("{e}: {}", String::from_utf8_lossy(body)) });
        }
        #[derive(Deserialize)]
        struct ApiError {
            error: String,
            message: String,
        }
        match serde_json::from_slice::<ApiError>(&body) {
            Ok(e) => Err(Error::Api { status, code: e.error, message: e.message, retry_after }),
            Err(_) => {
                Err(Error::Unexpected { status, body: String::from_utf8_lossy(&body).chars().take(500).collect() })
            }
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T> {
        Self::answer(self.request(reqwest::Method::GET, path).query(query).send().await?).await
    }

    async fn post<T: DeserializeOwned, B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<T> {
        Self::answer(self.request(reqwest::Method::POST, path).json(body).send().await?).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        Self::answer::<serde_json::Value>(self.request(reqwest::Method::DELETE, path).send().await?).await.map(|_| ())
    }

    pub async fn list_providers(&self) -> Result<Vec<Provider>> {
        #[derive(Deserialize)]
        struct Page {
            providers: Vec<Provider>,
        }
        Ok(self.get::<Page>("/v1/providers", &[]).await?.providers)
    }

    pub async fn create_session(&self, s: &NewSession) -> Result<Session> {
        self.post("/v1/connect/sessions", s).await
    }

    pub async fn list_connections(&self, q: &ConnectionQuery) -> Result<ConnectionPage> {
        let mut query = Vec::new();
        let mut opt = |k: &'static str, v: &Option<String>| {
            if let Some(v) = v {
                query.push((k, v.clone()));
            }
        };
        opt("provider", &q.provider);
        opt("status", &q.status);
        opt("end_user_id", &q.end_user_id);
        opt("organization_id", &q.organization_id);
        opt("cursor", &q.cursor);
        opt("limit", &q.limit.map(|l| l.to_string()));
        for (k, v) in &q.tags {
            query.push(("tag", format!("{k}:{v}")));
        }
        self.get("/v1/connections", &query).await
    }

    /// Every connection matching `q`, following the pages.
    pub async fn all_connections(&self, q: &ConnectionQuery) -> Result<Vec<Connection>> {
        let mut q = q.clone();
        let mut all = Vec::new();
        loop {
            let page = self.list_connections(&q).await?;
            all.extend(page.connections);
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => return Ok(all),
            }
        }
    }

    pub async fn get_connection(&self, provider: &str, connection_id: &str) -> Result<Connection> {
        self.get(&format!("/v1/connections/{}/{}", seg(provider), seg(connection_id)), &[]).await
    }

    /// Connects a credential (or client-credentials) connection; the provider checks it first.
    pub async fn create_connection(&self, c: &NewConnection) -> Result<Connection> {
        self.post("/v1/connections", c).await
    }

    pub async fn refresh_connection(&self, provider: &str, connection_id: &str) -> Result<Connection> {
        let path = format!("/v1/connections/{}/{}/refresh", seg(provider), seg(connection_id));
        Self::answer(self.request(reqwest::Method::POST, &path).send().await?).await
    }

    pub async fn delete_connection(&self, provider: &str, connection_id: &str) -> Result<()> {
        self.delete(&format!("/v1/connections/{}/{}", seg(provider), seg(connection_id))).await
    }

    pub async fn token(&self, provider: &str, connection_id: &str) -> Result<Token> {
        self.get(&format!("/v1/connections/{}/{}/token", seg(provider), seg(connection_id)), &[]).await
    }

    pub async fn create_api_key(&self, k: &NewApiKey) -> Result<ApiKey> {
        self.post("/v1/api-keys", k).await
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>> {
        #[derive(Deserialize)]
        struct Page {
            api_keys: Vec<ApiKey>,
        }
        Ok(self.get::<Page>("/v1/api-keys", &[]).await?.api_keys)
    }

    pub async fn revoke_api_key(&self, id: &str) -> Result<()> {
        self.delete(&format!("/v1/api-keys/{}", seg(id))).await
    }

    pub async fn create_webhook(&self, w: &NewWebhook) -> Result<Webhook> {
        self.post("/v1/webhooks", w).await
    }

    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        #[derive(Deserialize)]
        struct Page {
            webhooks: Vec<Webhook>,
        }
        Ok(self.get::<Page>("/v1/webhooks", &[]).await?.webhooks)
    }

    pub async fn get_webhook(&self, id: &str) -> Result<Webhook> {
        self.get(&format!("/v1/webhooks/{}", seg(id)), &[]).await
    }

    pub async fn delete_webhook(&self, id: &str) -> Result<()> {
        self.delete(&format!("/v1/webhooks/{}", seg(id))).await
    }

    /// Adds a signing secret (`secret`: given, or generated); the others stop signing after
    /// `expire_others_in_seconds` (default a day).
    pub async fn add_webhook_secret(
        &self,
        id: &str,
        secret: Option<&str>,
        expire_others_in_seconds: Option<u64>,
    ) -> Result<AddedSecret> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            secret: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            expire_others_in_seconds: Option<u64>,
        }
        self.post(&format!("/v1/webhooks/{}/secrets", seg(id)), &Body { secret, expire_others_in_seconds }).await
    }

    pub async fn delete_webhook_secret(&self, id: &str, secret_id: &str) -> Result<()> {
        self.delete(&format!("/v1/webhooks/{}/secrets/{}", seg(id), seg(secret_id))).await
    }

    pub async fn list_deliveries(
        &self,
        id: &str,
        status: Option<&str>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<DeliveryPage> {
        let mut q = Vec::new();
        if let Some(s) = status {
            q.push(("status", s.to_owned()));
        }
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(c) = cursor {
            q.push(("cursor", c.to_owned()));
        }
        self.get(&format!("/v1/webhooks/{}/deliveries", seg(id)), &q).await
    }

    pub async fn retry_delivery(&self, id: &str, delivery_id: i64) -> Result<()> {
        let path = format!("/v1/webhooks/{}/deliveries/{delivery_id}/retry", seg(id));
        Self::answer::<serde_json::Value>(self.request(reqwest::Method::POST, &path).send().await?).await.map(|_| ())
    }

    pub async fn audit(&self, q: &AuditQuery) -> Result<AuditPage> {
        let mut query = Vec::new();
        let mut opt = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                query.push((k, v));
            }
        };
        opt("action", q.action.clone());
        opt("api_key_id", q.api_key_id.clone());
        opt("provider", q.provider.clone());
        opt("connection_id", q.connection_id.clone());
        opt("since", q.since.map(|t| t.to_rfc3339()));
        opt("until", q.until.map(|t| t.to_rfc3339()));
        opt("limit", q.limit.map(|l| l.to_string()));
        opt("cursor", q.cursor.clone());
        self.get("/v1/audit", &query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded_and_bad_bases_refused() {
        assert_eq!(seg("a b/c?d"), "a%20b%2Fc%3Fd");
        assert!(Client::new("ftp://x", "k").is_err());
        assert!(Client::new("not a url", "k").is_err());
        assert_eq!(Client::new("http://h:1/", "k").unwrap().base, "http://h:1");
    }

    #[test]
    fn a_token_does_not_print() {
        let t = Token { access_token: "s3cret".into(), token_type: "Bearer".into(), expires_at: None, scopes: vec![] };
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
