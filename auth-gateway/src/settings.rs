//! The gateway's settings, read from the environment.

use shared::config::{ApiKeys, CommonSettings, ConfigErrors, Env, Reader, TlsFiles};
use std::time::Duration;
use url::Url;

/// Address to listen on. Default: `0.0.0.0:8080`.
pub const BIND: &str = "AUTHBRIDGE_GATEWAY_BIND";
/// The gateway's public base URL; the OAuth redirect URI is `{PUBLIC_URL}/oauth/callback`.
/// Default: `http://localhost:8080`.
pub const PUBLIC_URL: &str = "AUTHBRIDGE_PUBLIC_URL";
/// Lifetime of a connect session, and of a flow once started (seconds). Default: 600.
pub const SESSION_TTL: &str = "AUTHBRIDGE_SESSION_TTL_SECONDS";
/// Comma-separated URL prefixes a `return_url` must start with. Default: empty (any http(s) URL).
pub const RETURN_URL_ALLOWLIST: &str = "AUTHBRIDGE_RETURN_URL_ALLOWLIST";
/// HTTP worker threads. Default: the number of CPUs.
pub const WORKERS: &str = "AUTHBRIDGE_HTTP_WORKERS";

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub api_keys: ApiKeys,
    pub bind: String,
    pub public_url: Url,
    pub session_ttl: Duration,
    pub return_url_allowlist: Vec<Url>,
    pub workers: usize,
    /// Serve HTTPS with these files; `None`: plain HTTP (behind a TLS-terminating proxy).
    pub tls: Option<TlsFiles>,
}

pub fn default_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let common = CommonSettings::read(&mut r);
        let api_keys = ApiKeys::read(&mut r);
        let bind = r.string(BIND, "0.0.0.0:8080");
        let public = r.string(PUBLIC_URL, "http://localhost:8080");
        let public_url = match Url::parse(&public) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
            _ => {
                r.fail(format!("{PUBLIC_URL}={public:?} must be an absolute http(s) URL"));
                None
            }
        };
        let session_ttl = r.seconds(SESSION_TTL, 600);
        let mut allow = Vec::new();
        for a in r.list(RETURN_URL_ALLOWLIST) {
            match Url::parse(&a) {
                Ok(u) => allow.push(u),
                Err(e) => r.fail(format!("{RETURN_URL_ALLOWLIST}: {a:?} is not a URL ({e})")),
            }
        }
        let workers = r.parse(WORKERS, default_workers());
        let tls = TlsFiles::read(&mut r);
        r.finish()?;
        Ok(Self {
            common: common.expect("checked"),
            api_keys,
            bind,
            public_url: public_url.expect("checked"),
            session_ttl,
            return_url_allowlist: allow,
            workers: workers.max(1),
            tls,
        })
    }

    /// A return URL is acceptable if it is an absolute http(s) URL without credentials and,
    /// when an allowlist is configured, matches one entry's scheme, host, port and path prefix.
    pub fn return_url_allowed(&self, u: &Url) -> bool {
        if !matches!(u.scheme(), "http" | "https")
            || u.host_str().is_none()
            || !u.username().is_empty()
            || u.password().is_some()
        {
            return false;
        }
        if self.return_url_allowlist.is_empty() {
            return true;
        }
        self.return_url_allowlist.iter().any(|a| {
            a.scheme() == u.scheme()
                && a.host_str() == u.host_str()
                && a.port_or_known_default() == u.port_or_known_default()
                && u.path().starts_with(a.path())
        })
    }
}
