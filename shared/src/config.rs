//! Typed configuration read from the environment.
//!
//! Every variable is a named constant below with its default. Services read a snapshot of the
//! environment ([`Env`]) so tests can build settings without touching the process environment.
//! Problems are collected and reported together, so an operator fixes a bad deployment in one go.

use crate::catalog::{Catalog, CatalogError};
use crate::crypto::{CryptoError, Keyring};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// PostgreSQL URL. Default: `postgres://postgres@127.0.0.1:5432/authbridge`.
pub const DATABASE_URL: &str = "AUTHBRIDGE_DATABASE_URL";
/// Maximum PostgreSQL connections per process. Default: 16.
pub const DATABASE_POOL_SIZE: &str = "AUTHBRIDGE_DATABASE_POOL_SIZE";
/// RabbitMQ URL. Default: `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub const AMQP_URL: &str = "AUTHBRIDGE_AMQP_URL";
/// Prefix of every exchange and queue name. Default: `authbridge`.
pub const QUEUE_PREFIX: &str = "AUTHBRIDGE_QUEUE_PREFIX";
/// The primary token encryption key: 32 random bytes, base64. Required.
pub const ENCRYPTION_KEY: &str = "AUTHBRIDGE_ENCRYPTION_KEY";
/// Id stored beside ciphertexts sealed with the primary key. Default: a fingerprint of the key.
pub const ENCRYPTION_KEY_ID: &str = "AUTHBRIDGE_ENCRYPTION_KEY_ID";
/// Older keys (comma-separated base64) kept to read data sealed before a rotation. Default: none.
pub const ENCRYPTION_OLD_KEYS: &str = "AUTHBRIDGE_ENCRYPTION_OLD_KEYS";
/// Path of the providers TOML file. Default: none (built-in providers only).
pub const PROVIDERS_FILE: &str = "AUTHBRIDGE_PROVIDERS_FILE";
/// API keys (comma-separated) that internal callers present as `Authorization: Bearer <key>`.
/// Required by the gateway and the proxy.
pub const API_KEYS: &str = "AUTHBRIDGE_API_KEYS";
/// Refresh this long before expiry (seconds). Default: 300.
pub const REFRESH_MARGIN: &str = "AUTHBRIDGE_REFRESH_MARGIN_SECONDS";
/// Refresh a connection whose token never expires at least this often (seconds). Default: 86400.
pub const IDLE_REFRESH_INTERVAL: &str = "AUTHBRIDGE_IDLE_REFRESH_SECONDS";
/// A token handed out or used by the proxy must stay valid at least this long (seconds);
/// otherwise it is refreshed first. Default: 10.
pub const MIN_TOKEN_VALIDITY: &str = "AUTHBRIDGE_MIN_TOKEN_VALIDITY_SECONDS";
/// Timeout of every call to a provider's token or revocation endpoint (seconds). Default: 15.
pub const PROVIDER_TIMEOUT: &str = "AUTHBRIDGE_PROVIDER_TIMEOUT_SECONDS";
/// How long a service may take to finish in-flight work after SIGTERM (seconds). Default: 30.
pub const SHUTDOWN_GRACE: &str = "AUTHBRIDGE_SHUTDOWN_GRACE_SECONDS";
/// First delay before retrying a failed scheduled refresh (seconds); doubles per attempt. Default: 5.
pub const RETRY_BASE: &str = "AUTHBRIDGE_RETRY_BASE_SECONDS";
/// Longest delay between retries of a failed refresh (seconds). Default: 600.
pub const RETRY_MAX: &str = "AUTHBRIDGE_RETRY_MAX_SECONDS";
/// How long API-key lookups are cached (seconds): the most a revocation takes to apply. Default: 5.
pub const API_KEY_CACHE: &str = "AUTHBRIDGE_API_KEY_CACHE_SECONDS";
/// Requests per second one API key may make to the gateway or the proxy (0: no limit). Default: 0.
pub const RATE_LIMIT_PER_KEY: &str = "AUTHBRIDGE_RATE_LIMIT_PER_KEY";
/// Failed authentications per second one client address may cause before its unknown keys are
/// refused with 429 without a lookup (0: no limit). Default: 20.
pub const AUTH_FAILURES_PER_ADDRESS: &str = "AUTHBRIDGE_AUTH_FAILURES_PER_ADDRESS";
/// When set, `/metrics` on every service answers only requests carrying
/// `Authorization: Bearer <this token>` (Prometheus: `authorization: {credentials: …}`).
/// Default: unset (open, for a private network).
pub const METRICS_TOKEN: &str = "AUTHBRIDGE_METRICS_TOKEN";
/// Seconds refreshes may fail for reasons that may pass before webhooks announce
/// `connection.refresh_failing`. Default: 900.
pub const REFRESH_FAILING_AFTER: &str = "AUTHBRIDGE_REFRESH_FAILING_AFTER_SECONDS";
/// `true` lets webhook endpoints be loopback, private or link-local addresses, and http://
/// (development, or receivers on the same private network). Default: false.
pub const WEBHOOK_ALLOW_PRIVATE: &str = "AUTHBRIDGE_WEBHOOK_ALLOW_PRIVATE";
/// Days the audit trail is kept. Default: 365.
pub const AUDIT_RETENTION_DAYS: &str = "AUTHBRIDGE_AUDIT_RETENTION_DAYS";
/// Days delivered (or given up) webhook events are kept. Default: 30.
pub const WEBHOOK_RETENTION_DAYS: &str = "AUTHBRIDGE_WEBHOOK_RETENTION_DAYS";
/// Proxied requests per second for one connection (0: no limit). Default: 0.
pub const RATE_LIMIT_PER_CONNECTION: &str = "AUTHBRIDGE_RATE_LIMIT_PER_CONNECTION";
/// PEM certificate chain to serve HTTPS with (the gateway and the proxy). Default: plain HTTP.
pub const TLS_CERT_FILE: &str = "AUTHBRIDGE_TLS_CERT_FILE";
/// PEM private key matching `AUTHBRIDGE_TLS_CERT_FILE`.
pub const TLS_KEY_FILE: &str = "AUTHBRIDGE_TLS_KEY_FILE";
/// HTTP worker threads of the gateway and the proxy. Default: the number of CPUs.
pub const HTTP_WORKERS: &str = "AUTHBRIDGE_HTTP_WORKERS";

/// The default number of HTTP workers: one per CPU.
pub fn default_http_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// `json` for structured logs, `pretty` for development. Default: `pretty`.
pub const LOG_FORMAT: &str = "AUTHBRIDGE_LOG_FORMAT";

pub use crate::secret::Secret;

/// A snapshot of environment variables.
#[derive(Debug, Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    pub fn from_process() -> Self {
        Self(std::env::vars().collect())
    }
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
    pub fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.0.insert(key.to_owned(), value.into());
    }
}

/// Every configuration problem found, reported at once.
#[derive(Debug, Default)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads typed values and collects what is wrong with them.
pub struct Reader<'a> {
    env: &'a Env,
    pub errors: ConfigErrors,
}

impl<'a> Reader<'a> {
    pub fn new(env: &'a Env) -> Self {
        Self { env, errors: ConfigErrors::default() }
    }
    pub fn string(&self, key: &str, default: &str) -> String {
        self.env.get(key).unwrap_or_else(|| default.to_owned())
    }
    pub fn optional(&self, key: &str) -> Option<String> {
        self.env.get(key)
    }
    pub fn required(&mut self, key: &str, why: &str) -> Option<String> {
        let v = self.env.get(key);
        if v.is_none() {
            self.errors.0.push(format!("{key} is not set: {why}"));
        }
        v
    }
    pub fn parse<T: std::str::FromStr>(&mut self, key: &str, default: T) -> T
    where
        T::Err: fmt::Display,
    {
        match self.env.get(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|e| {
                self.errors.0.push(format!("{key}={v:?} is not valid: {e}"));
                default
            }),
        }
    }
    /// A number of seconds (fractions allowed): refused when negative, not finite, or longer
    /// than a year, rather than read as something else.
    pub fn seconds(&mut self, key: &str, default: u64) -> Duration {
        let n = self.parse::<f64>(key, default as f64);
        if !n.is_finite() || !(0.0..=365.0 * 86_400.0).contains(&n) {
            self.fail(format!("{key}={n} is not a number of seconds between 0 and one year"));
            return Duration::from_secs(default);
        }
        Duration::from_secs_f64(n)
    }
    /// A listen address, `host:port` (`0.0.0.0:8080`, `[::]:8080`, `localhost:8080`): refused
    /// with the variable's name when it is not one (a port alone, say).
    pub fn bind(&mut self, key: &str, default: &str) -> String {
        let v = self.string(key, default);
        let ok = v.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok() && !host.contains(char::is_whitespace)
        });
        if !ok {
            self.fail(format!(
                "{key}={v:?} is not a listen address: host:port, such as 0.0.0.0:{}",
                default.rsplit(':').next().unwrap_or("8080")
            ));
        }
        v
    }
    pub fn list(&self, key: &str) -> Vec<String> {
        self.env
            .get(key)
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }
    pub fn fail(&mut self, message: String) {
        self.errors.0.push(message);
    }
    pub fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.0.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

/// Where a service's TLS certificate and key are, when it serves HTTPS itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: String,
    pub key: String,
}

impl TlsFiles {
    /// Both variables or neither; the files are loaded (and checked) here, at start-up.
    pub fn read(r: &mut Reader<'_>) -> Option<Self> {
        match (r.optional(TLS_CERT_FILE), r.optional(TLS_KEY_FILE)) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let files = Self { cert, key };
                if let Err(e) = files.server_config() {
                    r.fail(format!("{TLS_CERT_FILE}/{TLS_KEY_FILE}: {e}"));
                }
                Some(files)
            }
            _ => {
                r.fail(format!("set both {TLS_CERT_FILE} and {TLS_KEY_FILE}, or neither"));
                None
            }
        }
    }

    /// A rustls server configuration (TLS 1.2 and 1.3; HTTP/1.1).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, String> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        crate::install_crypto_provider();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| format!("cannot read certificates from {}: {e}", self.cert))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad certificate in {}: {e}", self.cert))?;
        if certs.is_empty() {
            return Err(format!("no certificate in {}", self.cert));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("cannot read a private key from {}: {e}", self.key))?;
        let mut cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("certificate and key do not form a valid pair: {e}"))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// Settings every service shares.
#[derive(Debug, Clone)]
pub struct CommonSettings {
    pub database_url: Secret<String>,
    pub database_pool_size: usize,
    pub amqp_url: Secret<String>,
    pub queue_prefix: String,
    pub keyring: Keyring,
    pub catalog: Catalog,
    pub refresh_margin: Duration,
    pub idle_refresh_interval: Duration,
    pub min_token_validity: Duration,
    pub provider_timeout: Duration,
    pub shutdown_grace: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub api_key_cache: Duration,
    pub rate_limit_per_key: u32,
    pub rate_limit_per_connection: u32,
    pub auth_failures_per_address: u32,
    pub metrics_token: Option<Secret<String>>,
    /// How long refreshes may fail for reasons that may pass before `connection.refresh_failing`.
    pub refresh_failing_after: Duration,
    /// Whether webhooks may go to loopback, private and link-local addresses (and over http://).
    pub webhook_allow_private: bool,
    /// How long audit entries and finished webhook events are kept.
    pub audit_retention: Duration,
    pub webhook_retention: Duration,
}

impl CommonSettings {
    /// Reads the shared settings, adding any problem to the reader's list.
    pub fn read(r: &mut Reader<'_>) -> Option<Self> {
        let database_url = r.string(DATABASE_URL, "postgres://postgres@127.0.0.1:5432/authbridge");
        let database_pool_size = r.parse(DATABASE_POOL_SIZE, 16usize);
        let amqp_url = r.string(AMQP_URL, "amqp://guest:guest@127.0.0.1:5672/%2f");
        let queue_prefix = r.string(QUEUE_PREFIX, "authbridge");
        let keyring = match r
            .required(ENCRYPTION_KEY, "tokens are encrypted at rest; generate one with `openssl rand -base64 32`")
        {
            None => None,
            Some(k) => {
                let old = r.list(ENCRYPTION_OLD_KEYS);
                match Keyring::from_base64(&k, r.optional(ENCRYPTION_KEY_ID).as_deref(), &old) {
                    Ok(ring) => Some(ring),
                    Err(e @ (CryptoError::KeyNotBase64 | CryptoError::KeyWrongLength(_))) => {
                        r.fail(format!("{ENCRYPTION_KEY} or {ENCRYPTION_OLD_KEYS}: {e}"));
                        None
                    }
                    Err(e) => {
                        r.fail(format!("{ENCRYPTION_KEY}: {e}"));
                        None
                    }
                }
            }
        };
        let providers_file = r.optional(PROVIDERS_FILE);
        let env = r.env.clone();
        let catalog = match Catalog::load(providers_file.as_deref(), &|k| env.get(k)) {
            Ok(c) => Some(c),
            Err(
                e @ (CatalogError::Read { .. }
                | CatalogError::Parse(_)
                | CatalogError::Invalid { .. }
                | CatalogError::Several(_)),
            ) => {
                r.fail(format!("{PROVIDERS_FILE}: {e}"));
                None
            }
        };
        // Half a client is a mistake, not a provider left for later: say which half is missing.
        for p in catalog.iter().flat_map(|c| c.iter()) {
            if p.credentials.is_none() && p.client_id.is_some() != p.client_secret.is_some() {
                let prefix = crate::catalog::env_prefix(&p.id);
                let (set, unset) =
                    if p.client_id.is_some() { ("CLIENT_ID", "CLIENT_SECRET") } else { ("CLIENT_SECRET", "CLIENT_ID") };
                r.fail(format!("{prefix}_{set} is set but {prefix}_{unset} is not: provider `{}` needs both", p.id));
            }
        }
        let refresh_margin = r.seconds(REFRESH_MARGIN, 300);
        let idle_refresh_interval = r.seconds(IDLE_REFRESH_INTERVAL, 86_400);
        let min_token_validity = r.seconds(MIN_TOKEN_VALIDITY, 10);
        let provider_timeout = r.seconds(PROVIDER_TIMEOUT, 15);
        let shutdown_grace = r.seconds(SHUTDOWN_GRACE, 30);
        let retry_base = r.seconds(RETRY_BASE, 5);
        let retry_max = r.seconds(RETRY_MAX, 600);
        let api_key_cache = r.seconds(API_KEY_CACHE, 5);
        let rate_limit_per_key = r.parse(RATE_LIMIT_PER_KEY, 0u32);
        let rate_limit_per_connection = r.parse(RATE_LIMIT_PER_CONNECTION, 0u32);
        let auth_failures_per_address = r.parse(AUTH_FAILURES_PER_ADDRESS, 20u32);
        let metrics_token = r.optional(METRICS_TOKEN).filter(|t| !t.is_empty());
        // Read by telemetry before the settings, so checked here: an unknown format is a mistake.
        if let Some(f) =
            r.optional(LOG_FORMAT).filter(|f| !f.eq_ignore_ascii_case("json") && !f.eq_ignore_ascii_case("pretty"))
        {
            r.fail(format!("{LOG_FORMAT}={f:?} must be `json` or `pretty`"));
        }
        let refresh_failing_after = r.seconds(REFRESH_FAILING_AFTER, 900);
        let webhook_allow_private = r.parse(WEBHOOK_ALLOW_PRIVATE, false);
        let audit_retention = Duration::from_secs(86_400 * r.parse(AUDIT_RETENTION_DAYS, 365u64));
        let webhook_retention = Duration::from_secs(86_400 * r.parse(WEBHOOK_RETENTION_DAYS, 30u64));
        if metrics_token.as_ref().is_some_and(|t| t.len() < 16) {
            r.fail(format!("{METRICS_TOKEN} must be at least 16 characters"));
        }
        if !(1..=1024).contains(&database_pool_size) {
            r.fail(format!("{DATABASE_POOL_SIZE} must be between 1 and 1024"));
        }
        if !queue_prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            r.fail(format!("{QUEUE_PREFIX} may hold only letters, digits, '-', '_' and '.'"));
        }
        Some(Self {
            database_url: Secret::new(database_url),
            database_pool_size,
            amqp_url: Secret::new(amqp_url),
            queue_prefix,
            keyring: keyring?,
            catalog: catalog?,
            refresh_margin,
            idle_refresh_interval,
            min_token_validity,
            provider_timeout,
            shutdown_grace,
            retry_base,
            retry_max,
            api_key_cache,
            rate_limit_per_key,
            rate_limit_per_connection,
            auth_failures_per_address,
            metrics_token: metrics_token.map(Secret::new),
            refresh_failing_after,
            webhook_allow_private,
            audit_retention,
            webhook_retention,
        })
    }

    /// Settings for tests: a random key, the built-in catalog, the local servers.
    pub fn for_tests(database_url: &str, queue_prefix: &str) -> Self {
        Self {
            database_url: Secret::new(database_url.to_owned()),
            database_pool_size: 8,
            amqp_url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()),
            queue_prefix: queue_prefix.to_owned(),
            keyring: Keyring::random(),
            catalog: Catalog::from_toml("", &|_| None).expect("built-ins are valid"),
            refresh_margin: Duration::from_secs(300),
            idle_refresh_interval: Duration::from_secs(86_400),
            min_token_validity: Duration::from_secs(1),
            provider_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(5),
            api_key_cache: Duration::from_millis(300),
            rate_limit_per_key: 0,
            rate_limit_per_connection: 0,
            auth_failures_per_address: 0,
            metrics_token: None,
            refresh_failing_after: Duration::from_secs(900),
            webhook_allow_private: true,
            audit_retention: Duration::from_secs(86_400 * 365),
            webhook_retention: Duration::from_secs(86_400 * 30),
        }
    }
}

/// A URL as it may be shown (logs, banners, `doctor`): its password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(not a URL)".into(),
    }
}

/// The API keys internal callers may present. Only their SHA-256 digests are kept in memory.
#[derive(Clone, Default)]
pub struct ApiKeys(Vec<[u8; 32]>);

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

impl ApiKeys {
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(keys: I) -> Self {
        use sha2::{Digest, Sha256};
        Self(keys.into_iter().map(|k| Sha256::digest(k.as_ref().as_bytes()).into()).collect())
    }

    /// Reads and checks the API keys; at least one key of 16 characters or more is required.
    pub fn read(r: &mut Reader<'_>) -> Self {
        let keys = r.list(API_KEYS);
        if keys.is_empty() {
            r.fail(format!("{API_KEYS} is not set: callers authenticate with one of these keys"));
        }
        if keys.iter().any(|k| k.len() < 16) {
            r.fail(format!("{API_KEYS}: every key must be at least 16 characters long"));
        }
        Self::new(keys)
    }

    /// Constant-time check of a presented key against every known key.
    pub fn verify(&self, presented: &str) -> bool {
        use sha2::{Digest, Sha256};
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.verify_digest(&digest)
    }

    /// The same check for a key already hashed (SHA-256), so a caller that needs the digest
    /// anyway hashes once.
    pub fn verify_digest(&self, digest: &[u8; 32]) -> bool {
        use subtle::ConstantTimeEq;
        let mut ok = subtle::Choice::from(0u8);
        for k in &self.0 {
            ok |= k.ct_eq(digest);
        }
        ok.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_key_and_bad_numbers_are_reported_together() {
        let env = Env::from_pairs([(DATABASE_POOL_SIZE, "many"), (PROVIDER_TIMEOUT, "soon")]);
        let mut r = Reader::new(&env);
        assert!(CommonSettings::read(&mut r).is_none());
        let msg = r.finish().unwrap_err().to_string();
        assert!(msg.contains(ENCRYPTION_KEY), "{msg}");
        assert!(msg.contains(DATABASE_POOL_SIZE), "{msg}");
        assert!(msg.contains(PROVIDER_TIMEOUT), "{msg}");
    }

    #[test]
    fn mistakes_that_used_to_pass_are_named_by_their_variable() {
        let key = (ENCRYPTION_KEY, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        let env = Env::from_pairs([key, (LOG_FORMAT, "xml"), ("INTERACT_CLIENT_ID", "id-only"), ("SOME_BIND", "8080")]);
        let mut r = Reader::new(&env);
        let _ = CommonSettings::read(&mut r);
        assert_eq!(r.bind("SOME_BIND", "0.0.0.0:8080"), "8080");
        assert_eq!(r.bind("UNSET_BIND", "0.0.0.0:8080"), "0.0.0.0:8080");
        let msg = r.finish().unwrap_err().to_string();
        for named in [LOG_FORMAT, "INTERACT_CLIENT_SECRET", "SOME_BIND"] {
            assert!(msg.contains(named), "{named} missing from: {msg}");
        }
        assert!(!msg.contains("UNSET_BIND"), "{msg}");
        let env = Env::from_pairs([key, (LOG_FORMAT, "JSON")]);
        let mut r = Reader::new(&env);
        let _ = CommonSettings::read(&mut r);
        assert!(r.finish().is_ok());
        for good in ["127.0.0.1:1", "[::]:8080", "localhost:8080"] {
            let env = Env::from_pairs([("B", good)]);
            let mut r = Reader::new(&env);
            r.bind("B", "0.0.0.0:1");
            assert!(r.finish().is_ok(), "{good}");
        }
    }

    #[test]
    fn short_encryption_key_is_refused_with_its_length() {
        let env = Env::from_pairs([(ENCRYPTION_KEY, "AAAA")]);
        let mut r = Reader::new(&env);
        let _ = CommonSettings::read(&mut r);
        let msg = r.finish().unwrap_err().to_string();
        assert!(msg.contains("32 bytes"), "{msg}");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!(format!("{s:?}"), "[redacted]");
    }

    #[test]
    fn api_keys_verify_only_known_keys() {
        let keys = ApiKeys::new(["0123456789abcdef-one", "0123456789abcdef-two"]);
        assert!(keys.verify("0123456789abcdef-two"));
        assert!(!keys.verify("0123456789abcdef-three"));
        assert!(!keys.verify(""));
    }
}
