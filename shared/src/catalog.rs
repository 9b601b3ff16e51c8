//! The provider catalog: built-in entries for the providers our users asked for, merged with an
//! operator's TOML file and client credentials from the environment.
//!
//! Every field of a built-in entry can be overridden, and a new provider needs nothing but
//! configuration. The catalog is read once at start-up; a bad file stops the service with a
//! message naming the provider and the field.

pub use crate::credentials::AuthMode;
use crate::credentials::{CredentialSpec, Exchange, Field, OperatorValue, Placement, Probe, Rule, Template};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// How the token endpoint wants its request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded`, as RFC 6749 §4.1.3 requires.
    Form,
    /// `application/json`, which some providers' guides use.
    Json,
}

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the url-encoded client id and secret (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` as body parameters (`client_secret_post`).
    Body,
}

/// Whose calls a provider's rate limit counts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// Every connection of the provider (Kartra's 20 calls per second per App).
    App,
    /// Each connection on its own (Ontraport's 180 calls per minute per account).
    Connection,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Connection => "connection",
        }
    }
}

/// A provider's documented rate limit, which the proxies keep to together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub scope: LimitScope,
    /// How long to wait after a `429` that says nothing (no `Retry-After`).
    pub wait: Duration,
}

/// A `rate_limit` table as written.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitEntry {
    pub requests: Option<u32>,
    pub per_seconds: Option<u64>,
    pub scope: Option<LimitScope>,
    pub wait_seconds: Option<u64>,
}

/// One provider, complete and validated.
#[derive(Debug, Clone)]
pub struct Provider {
    pub id: String,
    pub display_name: String,
    /// How calls for its connections are authenticated.
    pub auth: AuthMode,
    /// The end user's and the operator's values and where they go (credential modes only).
    pub credentials: Option<Arc<CredentialSpec>>,
    /// The OAuth2 endpoints (required for `oauth2`; kept for the others so one setting
    /// switches a built-in to the integration guide's flow).
    pub authorize_url: Option<Url>,
    pub token_url: Option<Url>,
    pub revocation_url: Option<Url>,
    /// The authorization server's issuer identifier (RFC 8414), which its callbacks carry as
    /// `iss` (RFC 9207). When set, a callback must carry exactly this `iss`.
    pub issuer: Option<String>,
    /// The API's base, always ending in '/'; [`Provider::api_endpoint`] is the base as written.
    pub api_base_url: Option<Url>,
    /// Whether `api_base_url` was written with its trailing '/'.
    pub api_base_slash: bool,
    pub scopes: Vec<String>,
    pub scope_separator: String,
    pub pkce: bool,
    pub token_request_format: BodyFormat,
    pub client_auth: ClientAuth,
    pub authorize_params: BTreeMap<String, String>,
    /// How long before expiry a token is refreshed; `None` uses the service default.
    pub refresh_margin: Option<Duration>,
    /// The provider's documented rate limit, if it has one.
    pub rate_limit: Option<RateLimit>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret<String>>,
}

impl Provider {
    /// Whether the provider can take connections: client credentials for OAuth2, the
    /// operator's values for the credential modes.
    pub fn is_configured(&self) -> bool {
        self.missing_configuration().is_empty()
    }

    /// The environment variables the operator still has to set.
    pub fn missing_configuration(&self) -> Vec<String> {
        let prefix = env_prefix(&self.id);
        match &self.credentials {
            Some(spec) => spec.missing_operator_values().into_iter().map(str::to_owned).collect(),
            None => {
                let mut missing = Vec::new();
                if self.client_id.is_none() {
                    missing.push(format!("{prefix}_CLIENT_ID"));
                }
                if self.client_secret.is_none() {
                    missing.push(format!("{prefix}_CLIENT_SECRET"));
                }
                missing
            }
        }
    }

    /// The API's base as the entry wrote it: what a call to the base itself (an empty path)
    /// goes to, so `https://app.kartra.com/api` stays without a '/' it never had.
    pub fn api_endpoint(&self) -> Url {
        let base = self.api_base_url.clone().expect("checked by callers");
        if self.api_base_slash {
            return base;
        }
        let mut u = base;
        let trimmed = u.path().trim_end_matches('/').to_owned();
        u.set_path(&trimmed);
        u
    }

    /// A provider with an OAuth2 entry only (tests and the demo use it for the mock provider).
    pub fn oauth2(id: &str, authorize_url: Url, token_url: Url) -> Self {
        Self {
            id: id.to_owned(),
            display_name: id.to_owned(),
            auth: AuthMode::OAuth2,
            credentials: None,
            authorize_url: Some(authorize_url),
            token_url: Some(token_url),
            revocation_url: None,
            issuer: None,
            api_base_url: None,
            api_base_slash: true,
            scopes: Vec::new(),
            scope_separator: " ".into(),
            pkce: true,
            token_request_format: BodyFormat::Form,
            client_auth: ClientAuth::Basic,
            authorize_params: BTreeMap::new(),
            refresh_margin: None,
            rate_limit: None,
            client_id: None,
            client_secret: None,
        }
    }
}

/// One provider as written in the file: every field optional, so it can override a built-in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    pub display_name: Option<String>,
    pub auth: Option<AuthMode>,
    pub credentials: Option<CredentialsEntry>,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub revocation_url: Option<String>,
    pub issuer: Option<String>,
    pub api_base_url: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub scope_separator: Option<String>,
    pub pkce: Option<bool>,
    pub token_request_format: Option<BodyFormat>,
    pub client_auth: Option<ClientAuth>,
    pub authorize_params: Option<BTreeMap<String, String>>,
    pub refresh_margin_seconds: Option<u64>,
    pub rate_limit: Option<RateLimitEntry>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// A provider's `credentials` table as written (see `providers.toml` for examples).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsEntry {
    pub fields: Option<Vec<Field>>,
    pub operator_values: Option<Vec<String>>,
    pub headers: Option<BTreeMap<String, String>>,
    pub query: Option<BTreeMap<String, String>>,
    pub form: Option<BTreeMap<String, String>>,
    pub exchange: Option<ExchangeEntry>,
    pub verify: Option<ProbeEntry>,
    pub refused: Option<Rule>,
    pub app_refused: Option<Rule>,
    pub message_pointer: Option<String>,
    pub recheck_interval_seconds: Option<u64>,
}

/// A request to the provider's API as written: `method` (GET), `path` under `api_base_url`
/// ("" is the base), fixed `query` parameters and `form` fields.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeEntry {
    pub method: Option<String>,
    pub path: Option<String>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub form: BTreeMap<String, String>,
}

/// A two-step exchange as written: the request, where the end user's values go on it
/// (`headers`, `query`, `form` templates), and `derive` (value name → JSON pointer).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeEntry {
    pub method: Option<String>,
    pub path: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub form: BTreeMap<String, String>,
    #[serde(default)]
    pub derive: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    providers: BTreeMap<String, ProviderEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read providers file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("providers file is not valid: {0}")]
    Parse(String),
    #[error("provider `{provider}`: {message}")]
    Invalid { provider: String, message: String },
    /// Every entry that is not valid, not only the first.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<CatalogError>),
}

/// The built-in entries (`providers.toml`), with the authentication each provider's own API
/// documentation describes and the OAuth2 endpoints its integration guide gives.
pub fn builtins() -> BTreeMap<String, ProviderEntry> {
    let file: CatalogFile = toml::from_str(include_str!("providers.toml")).expect("the built-in catalog parses");
    file.providers
}

/// A provider id is a lowercase slug: it appears in URLs and environment variable names.
pub fn valid_provider_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && id.as_bytes()[0].is_ascii_alphanumeric()
}

/// The environment variable prefix for a provider: `kartra` → `KARTRA`, `my-crm` → `MY_CRM`.
pub fn env_prefix(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

/// The loaded catalog.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    providers: BTreeMap<String, Provider>,
}

impl Catalog {
    /// Reads the file (if any) and the environment, merged over the built-ins.
    pub fn load(path: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, CatalogError> {
        let text = match path {
            Some(p) => {
                Some(std::fs::read_to_string(p).map_err(|source| CatalogError::Read { path: p.to_owned(), source })?)
            }
            None => None,
        };
        Self::from_toml(text.as_deref().unwrap_or(""), env)
    }

    /// Parses a catalog from TOML text merged over the built-ins.
    pub fn from_toml(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, CatalogError> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| CatalogError::Parse(e.to_string()))?;
        let mut entries = builtins();
        for (id, over) in file.providers {
            let base = entries.remove(&id).unwrap_or_default();
            entries.insert(id, merge(base, over));
        }
        let mut providers = BTreeMap::new();
        let mut errors = Vec::new();
        for (id, entry) in entries {
            match finish(&id, entry, env) {
                Ok(p) => {
                    providers.insert(id, p);
                }
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Ok(Self { providers }),
            1 => Err(errors.remove(0)),
            _ => Err(CatalogError::Several(errors)),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Provider> {
        // Every proxied call looks its provider up. A catalog of a few providers is scanned
        // (lengths first, then bytes inline); a tree search compares through `memcmp` at each
        // step, which costs more than the scan until the catalog is large.
        if self.providers.len() <= 16 {
            return self.providers.iter().find(|(k, _)| k.as_str() == id).map(|(_, p)| p);
        }
        self.providers.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Provider> {
        self.providers.values()
    }

    /// Adds or replaces one provider (used by tests and the demo to point at the mock provider).
    pub fn insert(&mut self, p: Provider) {
        self.providers.insert(p.id.clone(), p);
    }
}

fn merge(base: ProviderEntry, over: ProviderEntry) -> ProviderEntry {
    let credentials = match (base.credentials, over.credentials) {
        (Some(b), Some(o)) => Some(CredentialsEntry {
            fields: o.fields.or(b.fields),
            operator_values: o.operator_values.or(b.operator_values),
            headers: o.headers.or(b.headers),
            query: o.query.or(b.query),
            form: o.form.or(b.form),
            exchange: o.exchange.or(b.exchange),
            verify: o.verify.or(b.verify),
            refused: o.refused.or(b.refused),
            app_refused: o.app_refused.or(b.app_refused),
            message_pointer: o.message_pointer.or(b.message_pointer),
            recheck_interval_seconds: o.recheck_interval_seconds.or(b.recheck_interval_seconds),
        }),
        (b, o) => o.or(b),
    };
    ProviderEntry {
        display_name: over.display_name.or(base.display_name),
        auth: over.auth.or(base.auth),
        credentials,
        authorize_url: over.authorize_url.or(base.authorize_url),
        token_url: over.token_url.or(base.token_url),
        revocation_url: over.revocation_url.or(base.revocation_url),
        issuer: over.issuer.or(base.issuer),
        api_base_url: over.api_base_url.or(base.api_base_url),
        scopes: over.scopes.or(base.scopes),
        scope_separator: over.scope_separator.or(base.scope_separator),
        pkce: over.pkce.or(base.pkce),
        token_request_format: over.token_request_format.or(base.token_request_format),
        client_auth: over.client_auth.or(base.client_auth),
        authorize_params: over.authorize_params.or(base.authorize_params),
        refresh_margin_seconds: over.refresh_margin_seconds.or(base.refresh_margin_seconds),
        rate_limit: over.rate_limit.or(base.rate_limit),
        client_id: over.client_id.or(base.client_id),
        client_secret: over.client_secret.or(base.client_secret),
    }
}

fn finish(id: &str, e: ProviderEntry, env: &dyn Fn(&str) -> Option<String>) -> Result<Provider, CatalogError> {
    let invalid = |message: String| CatalogError::Invalid { provider: id.to_owned(), message };
    if !valid_provider_id(id) {
        return Err(invalid("the id must be 1-64 characters of a-z, 0-9, '-' and '_'".into()));
    }
    let auth = e.auth.unwrap_or(AuthMode::OAuth2);
    let oauth = auth == AuthMode::OAuth2;
    let machine = auth == AuthMode::OAuth2ClientCredentials;
    let url = |field: &str, v: Option<String>, required: bool| -> Result<Option<Url>, CatalogError> {
        match v {
            None if required => Err(invalid(format!("`{field}` is required with auth = \"{}\"", auth.as_str()))),
            None => Ok(None),
            Some(s) => {
                let u = Url::parse(&s).map_err(|err| invalid(format!("`{field}` is not a URL ({err}): {s}")))?;
                if !matches!(u.scheme(), "https" | "http") || u.host_str().is_none() {
                    return Err(invalid(format!("`{field}` must be an absolute http(s) URL: {s}")));
                }
                Ok(Some(u))
            }
        }
    };
    let authorize_url = url("authorize_url", e.authorize_url, oauth)?;
    let token_url = url("token_url", e.token_url, oauth || machine)?;
    let revocation_url = url("revocation_url", e.revocation_url, false)?;
    // Checked as a URL but kept as written: RFC 9207 compares `iss` as a plain string, and
    // parsing would normalise it (a trailing '/', the case of the host).
    url("issuer", e.issuer.clone(), false)?;
    let issuer = e.issuer;
    let mut api_base_url = url("api_base_url", e.api_base_url, !oauth)?;
    let mut api_base_slash = true;
    if let Some(u) = api_base_url.as_mut() {
        if u.query().is_some() || u.fragment().is_some() {
            return Err(invalid("`api_base_url` must not carry a query or fragment".into()));
        }
        // A base always ends with '/', so joining a path never replaces its last segment.
        if !u.path().ends_with('/') {
            api_base_slash = false;
            let p = format!("{}/", u.path());
            u.set_path(&p);
        }
    }
    let prefix = env_prefix(id);
    let credentials = match (auth.uses_credentials(), e.credentials) {
        (false, _) => None,
        (true, None) => {
            return Err(invalid(format!("auth = \"{}\" needs a `credentials` table", auth.as_str())));
        }
        (true, Some(c)) => Some(Arc::new(credential_spec(auth, &prefix, c, env).map_err(invalid)?)),
    };
    let rate_limit = match e.rate_limit {
        None => None,
        // `requests = 0` removes a built-in's limit.
        Some(r) if r.requests == Some(0) => None,
        Some(r) => {
            let (Some(requests), Some(per)) = (r.requests, r.per_seconds.filter(|s| (1..=86_400).contains(s))) else {
                return Err(invalid("`rate_limit` needs `requests` and `per_seconds` (1 to 86400)".into()));
            };
            Some(RateLimit {
                requests,
                per: Duration::from_secs(per),
                scope: r.scope.unwrap_or(LimitScope::App),
                wait: Duration::from_secs(r.wait_seconds.unwrap_or(1).clamp(1, 3600)),
            })
        }
    };
    let client_id = env(&format!("{prefix}_CLIENT_ID")).or(e.client_id).filter(|s| !s.is_empty());
    let client_secret =
        env(&format!("{prefix}_CLIENT_SECRET")).or(e.client_secret).filter(|s| !s.is_empty()).map(Secret::new);
    Ok(Provider {
        id: id.to_owned(),
        display_name: e.display_name.unwrap_or_else(|| id.to_owned()),
        auth,
        credentials,
        authorize_url,
        token_url,
        revocation_url,
        issuer,
        api_base_url,
        api_base_slash,
        scopes: e.scopes.unwrap_or_default(),
        scope_separator: e.scope_separator.unwrap_or_else(|| " ".into()),
        pkce: e.pkce.unwrap_or(true),
        token_request_format: e.token_request_format.unwrap_or(BodyFormat::Form),
        client_auth: e.client_auth.unwrap_or(ClientAuth::Basic),
        authorize_params: e.authorize_params.unwrap_or_default(),
        refresh_margin: e.refresh_margin_seconds.map(Duration::from_secs),
        rate_limit,
        client_id,
        client_secret,
    })
}

fn templates(what: &str, m: BTreeMap<String, String>) -> Result<Vec<(String, Template)>, String> {
    m.into_iter()
        .map(|(name, t)| Template::parse(&t).map(|t| (name.clone(), t)).map_err(|e| format!("{what}.{name}: {e}")))
        .collect()
}

fn method(what: &str, m: Option<String>) -> Result<reqwest::Method, String> {
    let m = m.unwrap_or_else(|| "GET".into()).to_ascii_uppercase();
    match m.as_str() {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" => {
            Ok(reqwest::Method::from_bytes(m.as_bytes()).expect("known"))
        }
        _ => Err(format!("{what}.method must be GET, POST, PUT, PATCH, DELETE or HEAD")),
    }
}

fn path(what: &str, p: Option<String>) -> Result<String, String> {
    let p = p.unwrap_or_default();
    if p.starts_with('/') || p.contains("://") || p.split('/').any(|s| s == "..") {
        return Err(format!("{what}.path must be relative to api_base_url: {p}"));
    }
    Ok(p)
}

fn credential_spec(
    auth: AuthMode,
    prefix: &str,
    c: CredentialsEntry,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CredentialSpec, String> {
    let fields = c.fields.unwrap_or_default();
    let operator = c
        .operator_values
        .unwrap_or_default()
        .into_iter()
        .map(|name| {
            let var = format!("{prefix}_{}", name.to_ascii_uppercase());
            let value = env(&var).filter(|v| !v.is_empty()).map(Secret::new);
            OperatorValue { name, env: var, value }
        })
        .collect();
    let mut place = Placement {
        headers: templates("credentials.headers", c.headers.unwrap_or_default())?,
        query: templates("credentials.query", c.query.unwrap_or_default())?,
        form: templates("credentials.form", c.form.unwrap_or_default())?,
    };
    // `basic` places `Authorization: Basic` from its two fields unless told otherwise.
    if auth == AuthMode::Basic && place.is_empty() {
        if let [user, pass] = fields.as_slice() {
            let t = Template::parse(&format!("Basic {{base64:{}:{}}}", user.name, pass.name))?;
            place.headers.push(("authorization".into(), t));
        }
    }
    let probe = |what: &str, p: ProbeEntry| -> Result<Probe, String> {
        Ok(Probe {
            method: method(what, p.method)?,
            path: path(what, p.path)?,
            query: p.query.into_iter().collect(),
            form: p.form.into_iter().collect(),
        })
    };
    let exchange = match (auth, c.exchange) {
        (AuthMode::TwoStep, None) => return Err("auth = \"two_step\" needs `credentials.exchange`".into()),
        (AuthMode::TwoStep, Some(x)) => Some(Exchange {
            request: Probe {
                method: method("credentials.exchange", x.method)?,
                path: path("credentials.exchange", x.path)?,
                query: Vec::new(),
                form: Vec::new(),
            },
            place: Placement {
                headers: templates("credentials.exchange.headers", x.headers)?,
                query: templates("credentials.exchange.query", x.query)?,
                form: templates("credentials.exchange.form", x.form)?,
            },
            derive: x.derive.into_iter().collect(),
        }),
        (_, Some(_)) => return Err("`credentials.exchange` is only for auth = \"two_step\"".into()),
        (_, None) => None,
    };
    let spec = CredentialSpec {
        fields,
        operator,
        place,
        exchange,
        verify: c.verify.map(|p| probe("credentials.verify", p)).transpose()?,
        refused: c.refused.unwrap_or_else(|| Rule { statuses: vec![401], ..Rule::default() }),
        app_refused: c.app_refused.unwrap_or_default(),
        message_pointer: c.message_pointer.unwrap_or_else(|| "/message".into()),
        recheck: Duration::from_secs(c.recheck_interval_seconds.unwrap_or(86_400).clamp(60, 30 * 86_400)),
    };
    for rule in [&spec.refused, &spec.app_refused] {
        if let Some(p) = &rule.pointer {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(format!("`{p}` is not a JSON pointer (RFC 6901: it starts with '/')"));
            }
        }
    }
    spec.validate()?;
    Ok(spec)
}

/// A connection id is the application's own id for an end user: 1-255 printable characters
/// without '/', whitespace or characters that need escaping in a URL path segment beyond
/// `@`, `+`, `:` and `=`.
pub fn valid_connection_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~@+:=".contains(&b))
}

#[cfg(test)]
mod tests;
