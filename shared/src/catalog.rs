//! The provider catalog: built-in entries for the providers our users asked for, merged with an
//! operator's TOML file and client credentials from the environment.
//!
//! Every field of a built-in entry can be overridden, and a new provider needs nothing but
//! configuration. The catalog is read once at start-up; a bad file stops the service with a
//! message naming the provider and the field.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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

/// One OAuth2 provider, complete and validated.
#[derive(Debug, Clone)]
pub struct Provider {
    pub id: String,
    pub display_name: String,
    pub authorize_url: Url,
    pub token_url: Url,
    pub revocation_url: Option<Url>,
    /// The authorization server's issuer identifier (RFC 8414), which its callbacks carry as
    /// `iss` (RFC 9207). When set, a callback must carry exactly this `iss`.
    pub issuer: Option<String>,
    pub api_base_url: Option<Url>,
    pub scopes: Vec<String>,
    pub scope_separator: String,
    pub pkce: bool,
    pub token_request_format: BodyFormat,
    pub client_auth: ClientAuth,
    pub authorize_params: BTreeMap<String, String>,
    /// How long before expiry a token is refreshed; `None` uses the service default.
    pub refresh_margin: Option<Duration>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret<String>>,
}

impl Provider {
    /// A provider can start flows only once it has client credentials.
    pub fn is_configured(&self) -> bool {
        self.client_id.is_some() && self.client_secret.is_some()
    }
}

/// One provider as written in the file: every field optional, so it can override a built-in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    pub display_name: Option<String>,
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
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
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
}

fn builtin(
    id: &str,
    name: &str,
    authorize: &str,
    token: &str,
    api: Option<&str>,
    scopes: &[&str],
) -> (String, ProviderEntry) {
    (
        id.to_owned(),
        ProviderEntry {
            display_name: Some(name.to_owned()),
            authorize_url: Some(authorize.to_owned()),
            token_url: Some(token.to_owned()),
            api_base_url: api.map(str::to_owned),
            scopes: Some(scopes.iter().map(|s| s.to_string()).collect()),
            // The integration guides send the client secret in the body; these providers accept it.
            client_auth: Some(ClientAuth::Body),
            ..ProviderEntry::default()
        },
    )
}

/// The built-in entries, with the endpoints each provider's integration guide documents.
pub fn builtins() -> BTreeMap<String, ProviderEntry> {
    [
        builtin(
            "kartra",
            "Kartra",
            "https://app.kartra.com/oauth/auth",
            "https://app.kartra.com/oauth/token",
            Some("https://app.kartra.com/api/v1"),
            &[],
        ),
        builtin(
            "ontraport",
            "Ontraport",
            "https://api.ontraport.com/oauth2/auth",
            "https://api.ontraport.com/oauth2/token",
            None,
            &[],
        ),
        builtin(
            "redtail",
            "Redtail CRM",
            "https://redtailtechnology.com/oauth/authorize",
            "https://redtailtechnology.com/oauth/token",
            None,
            &["read", "write"],
        ),
        builtin(
            "whatconverts",
            "WhatConverts",
            "https://app.whatconverts.com/oauth/authorize",
            "https://app.whatconverts.com/oauth/token",
            Some("https://app.whatconverts.com/api/v1"),
            &["read_leads"],
        ),
        builtin(
            "interact",
            "Interact",
            "https://api.interact.com/oauth/authorize",
            "https://api.interact.com/oauth/token",
            None,
            &["read_user", "write_data"],
        ),
    ]
    .into_iter()
    .collect()
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
        for (id, entry) in entries {
            let p = finish(&id, entry, env)?;
            providers.insert(id, p);
        }
        Ok(Self { providers })
    }

    pub fn get(&self, id: &str) -> Option<&Provider> {
        // Every proxied call looks its provider up. A catalog of a few providers is scanned
        // (lengths first, then bytes inline); a tree search compares through `memcmp` at each
        // step, which costs more than the scan until the catalog is large.
        if self.providers.len() <= 16 {
            return self.providers.iter().find(|(k, _)| crate::text::same_str(k, id)).map(|(_, p)| p);
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
    ProviderEntry {
        display_name: over.display_name.or(base.display_name),
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
        client_id: over.client_id.or(base.client_id),
        client_secret: over.client_secret.or(base.client_secret),
    }
}

fn finish(id: &str, e: ProviderEntry, env: &dyn Fn(&str) -> Option<String>) -> Result<Provider, CatalogError> {
    let invalid = |message: String| CatalogError::Invalid { provider: id.to_owned(), message };
    if !valid_provider_id(id) {
        return Err(invalid("the id must be 1-64 characters of a-z, 0-9, '-' and '_'".into()));
    }
    let url = |field: &str, v: Option<String>, required: bool| -> Result<Option<Url>, CatalogError> {
        match v {
            None if required => Err(invalid(format!("`{field}` is required"))),
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
    let authorize_url = url("authorize_url", e.authorize_url, true)?.expect("required");
    let token_url = url("token_url", e.token_url, true)?.expect("required");
    let revocation_url = url("revocation_url", e.revocation_url, false)?;
    // Checked as a URL but kept as written: RFC 9207 compares `iss` as a plain string, and
    // parsing would normalise it (a trailing '/', the case of the host).
    url("issuer", e.issuer.clone(), false)?;
    let issuer = e.issuer;
    let mut api_base_url = url("api_base_url", e.api_base_url, false)?;
    if let Some(u) = api_base_url.as_mut() {
        if u.query().is_some() || u.fragment().is_some() {
            return Err(invalid("`api_base_url` must not carry a query or fragment".into()));
        }
        // A base always ends with '/', so joining a path never replaces its last segment.
        if !u.path().ends_with('/') {
            let p = format!("{}/", u.path());
            u.set_path(&p);
        }
    }
    let prefix = env_prefix(id);
    let client_id = env(&format!("{prefix}_CLIENT_ID")).or(e.client_id).filter(|s| !s.is_empty());
    let client_secret =
        env(&format!("{prefix}_CLIENT_SECRET")).or(e.client_secret).filter(|s| !s.is_empty()).map(Secret::new);
    Ok(Provider {
        id: id.to_owned(),
        display_name: e.display_name.unwrap_or_else(|| id.to_owned()),
        authorize_url,
        token_url,
        revocation_url,
        issuer,
        api_base_url,
        scopes: e.scopes.unwrap_or_default(),
        scope_separator: e.scope_separator.unwrap_or_else(|| " ".into()),
        pkce: e.pkce.unwrap_or(true),
        token_request_format: e.token_request_format.unwrap_or(BodyFormat::Form),
        client_auth: e.client_auth.unwrap_or(ClientAuth::Basic),
        authorize_params: e.authorize_params.unwrap_or_default(),
        refresh_margin: e.refresh_margin_seconds.map(Duration::from_secs),
        client_id,
        client_secret,
    })
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
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn builtins_carry_the_documented_endpoints() {
        let c = Catalog::from_toml("", &no_env).unwrap();
        let k = c.get("kartra").unwrap();
        assert_eq!(k.authorize_url.as_str(), "https://app.kartra.com/oauth/auth");
        assert_eq!(k.token_url.as_str(), "https://app.kartra.com/oauth/token");
        assert_eq!(k.api_base_url.as_ref().unwrap().as_str(), "https://app.kartra.com/api/v1/");
        assert_eq!(c.get("redtail").unwrap().scopes, vec!["read", "write"]);
        assert_eq!(c.get("whatconverts").unwrap().scopes, vec!["read_leads"]);
        assert_eq!(c.get("interact").unwrap().scopes, vec!["read_user", "write_data"]);
        assert_eq!(c.get("ontraport").unwrap().token_url.as_str(), "https://api.ontraport.com/oauth2/token");
        assert!(!k.is_configured());
    }

    #[test]
    fn providers_are_found_by_exact_id_in_small_and_large_catalogs() {
        let mut toml = String::new();
        for n in [0usize, 3, 20] {
            for i in toml.matches("[providers.").count()..n {
                toml.push_str(&format!(
                    "[providers.crm-{i}]\nauthorize_url = \"https://a{i}/auth\"\ntoken_url = \"https://a{i}/token\"\n"
                ));
            }
            let c = Catalog::from_toml(&toml, &no_env).unwrap();
            for i in 0..n {
                let id = format!("crm-{i}");
                assert_eq!(c.get(&id).unwrap().token_url.as_str(), format!("https://a{i}/token"), "{n} added");
            }
            assert!(c.get("kartra").is_some(), "{n} added");
            for missing in ["", "kartr", "kartraa", "Kartra", "crm-99", "crm-"] {
                assert!(c.get(missing).is_none(), "`{missing}` with {n} added");
            }
        }
    }

    #[test]
    fn file_overrides_fields_and_adds_providers_and_env_supplies_credentials() {
        let toml = r#"
            [providers.kartra]
            token_request_format = "json"
            pkce = false
            [providers.my-crm]
            authorize_url = "https://crm.example/authorize"
            token_url = "https://crm.example/token"
            api_base_url = "https://crm.example/api"
            scopes = ["contacts"]
            authorize_params = { access_type = "offline" }
            refresh_margin_seconds = 60
            client_id = "from-file"
            client_secret = "file-secret"
        "#;
        let env = |k: &str| {
            (k == "KARTRA_CLIENT_ID")
                .then(|| "kid".to_string())
                .or_else(|| (k == "KARTRA_CLIENT_SECRET").then(|| "ks".to_string()))
        };
        let c = Catalog::from_toml(toml, &env).unwrap();
        let k = c.get("kartra").unwrap();
        assert_eq!(k.token_request_format, BodyFormat::Json);
        assert!(!k.pkce);
        assert_eq!(k.authorize_url.as_str(), "https://app.kartra.com/oauth/auth");
        assert_eq!(k.client_id.as_deref(), Some("kid"));
        assert!(k.is_configured());
        let m = c.get("my-crm").unwrap();
        assert_eq!(m.client_auth, ClientAuth::Basic);
        assert_eq!(m.api_base_url.as_ref().unwrap().as_str(), "https://crm.example/api/");
        assert_eq!(m.refresh_margin, Some(Duration::from_secs(60)));
        assert_eq!(m.authorize_params.get("access_type").map(String::as_str), Some("offline"));
        assert!(m.is_configured());
    }

    #[test]
    fn bad_files_are_refused_with_the_provider_and_field_named() {
        let err = Catalog::from_toml("[providers.x]\ntoken_url = \"https://a/t\"", &no_env).unwrap_err();
        assert!(err.to_string().contains("provider `x`: `authorize_url` is required"), "{err}");
        let err = Catalog::from_toml("[providers.kartra]\ntoken_url = \"ftp://a/t\"", &no_env).unwrap_err();
        assert!(err.to_string().contains("token_url"), "{err}");
        let err = Catalog::from_toml("[providers.kartra]\nunknown_field = 1", &no_env).unwrap_err();
        assert!(err.to_string().contains("unknown_field"), "{err}");
        let err = Catalog::from_toml("[providers.Bad]\nauthorize_url=\"https://a\"\ntoken_url=\"https://a\"", &no_env)
            .unwrap_err();
        assert!(err.to_string().contains("Bad"), "{err}");
        assert!(Catalog::from_toml("not toml [", &no_env).is_err());
    }
}
