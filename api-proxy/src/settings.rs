//! The proxy's settings, read from the environment.

use shared::config::{ApiKeys, CommonSettings, ConfigErrors, Env, Reader, TlsFiles};
use std::time::Duration;

/// Address to listen on. Default: `0.0.0.0:8081`.
pub const BIND: &str = "AUTHBRIDGE_PROXY_BIND";
/// Timeout of one upstream call, headers and body (seconds). Default: 30.
pub const UPSTREAM_TIMEOUT: &str = "AUTHBRIDGE_PROXY_UPSTREAM_TIMEOUT_SECONDS";
/// Largest request body the proxy accepts (bytes). Default: 10485760.
pub const MAX_BODY: &str = "AUTHBRIDGE_PROXY_MAX_BODY_BYTES";
/// Request bodies up to this size (bytes, by `Content-Length`) are held so the call can be
/// retried once after a 401; larger and chunked bodies stream to the provider as they arrive
/// and are not replayed. Default: 1048576.
pub const RETRY_BODY: &str = "AUTHBRIDGE_PROXY_RETRY_BODY_BYTES";
/// How long a decrypted token may be served from memory (seconds); changes invalidate it at
/// once regardless. 0 turns the cache off. Default: 30.
pub const TOKEN_CACHE: &str = "AUTHBRIDGE_PROXY_TOKEN_CACHE_SECONDS";
/// How long, once PostgreSQL cannot be reached, the proxy keeps serving the tokens and API-key
/// decisions it holds in memory (seconds); 0 turns it off. Default: 300.
pub const STALE: &str = "AUTHBRIDGE_PROXY_STALE_SECONDS";
/// How long a caller has to send a request's head (and a held body), from when the connection
/// opens or its previous answer was written (seconds, 1-60). Default: 10.
pub const HEAD_TIMEOUT: &str = "AUTHBRIDGE_PROXY_HEAD_TIMEOUT_SECONDS";
/// The most caller connections open at once; beyond it the connection that has waited longest
/// for its caller is closed. Default: three quarters of the process's open-files limit.
pub const MAX_CONNECTIONS: &str = "AUTHBRIDGE_PROXY_MAX_CONNECTIONS";
/// At the connection cap, how many new connections a second the proxy takes (each makes the
/// connection that has waited longest close); the rest wait in the kernel's listen queue.
/// Default: the cap divided by the head timeout, and at least 1000.
pub const ACCEPT_RATE_AT_CAP: &str = "AUTHBRIDGE_PROXY_ACCEPT_RATE_AT_CAP";

/// Which HTTP/1.1 code serves callers and calls providers: `own` (the proxy's own server and
/// client, with hyper for HTTP/2, streamed bodies and `Expect`) or `hyper` (hyper alone, a new
/// upstream connection per call). `hyper` is the reference the test command runs the proxy's
/// end-to-end suite against a second time, so the two cannot drift apart; it is slower, and its
/// framing rules are hyper's (more lenient: see SECURITY.md). Default: `own`.
pub const HTTP_STACK: &str = "AUTHBRIDGE_PROXY_HTTP_STACK";

/// The values of [`HTTP_STACK`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpStack {
    Own,
    Hyper,
}

impl HttpStack {
    /// The stack a value of [`HTTP_STACK`] names, or the value back.
    pub fn parse(value: &str) -> Result<Self, &str> {
        match value {
            "own" => Ok(Self::Own),
            "hyper" => Ok(Self::Hyper),
            other => Err(other),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub api_keys: ApiKeys,
    pub bind: String,
    pub upstream_timeout: Duration,
    pub max_body: usize,
    pub retry_body: usize,
    pub workers: usize,
    pub token_cache_ttl: Duration,
    pub head_timeout: Duration,
    pub max_connections: usize,
    /// New connections a second taken at the cap ([`ACCEPT_RATE_AT_CAP`]).
    pub accept_rate_at_cap: u32,
    pub stale: Duration,
    pub http_stack: HttpStack,
    /// Serve HTTPS with these files; `None`: plain HTTP (behind a TLS-terminating proxy).
    pub tls: Option<TlsFiles>,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let common = CommonSettings::read(&mut r);
        let api_keys = ApiKeys::read(&mut r);
        let bind = r.bind(BIND, "0.0.0.0:8081");
        let upstream_timeout = r.seconds(UPSTREAM_TIMEOUT, 30);
        let max_body = r.parse(MAX_BODY, 10 * 1024 * 1024usize);
        let retry_body = r.parse(RETRY_BODY, 1024 * 1024usize);
        let workers = r.parse(shared::config::HTTP_WORKERS, shared::config::default_http_workers());
        let token_cache_ttl = r.seconds(TOKEN_CACHE, 30);
        let head_timeout = r.seconds(HEAD_TIMEOUT, 10);
        let stale = r.seconds(STALE, 300);
        if head_timeout.is_zero() || head_timeout > Duration::from_secs(60) {
            r.fail(format!("{HEAD_TIMEOUT} must be 1-60 seconds"));
        }
        let max_connections = r.parse(MAX_CONNECTIONS, default_max_connections());
        if max_connections == 0 {
            r.fail(format!("{MAX_CONNECTIONS} must be at least 1"));
        }
        let accept_rate_at_cap = r.parse(ACCEPT_RATE_AT_CAP, default_accept_rate_at_cap(max_connections, head_timeout));
        if accept_rate_at_cap == 0 {
            r.fail(format!("{ACCEPT_RATE_AT_CAP} must be at least 1"));
        }
        let http_stack = HttpStack::parse(&r.string(HTTP_STACK, "own")).unwrap_or_else(|other| {
            r.fail(format!("{HTTP_STACK}={other:?} is not valid: `own` or `hyper`"));
            HttpStack::Own
        });
        let tls = TlsFiles::read(&mut r);
        r.finish()?;
        Ok(Self {
            common: common.expect("checked"),
            api_keys,
            bind,
            upstream_timeout,
            max_body,
            retry_body: retry_body.min(max_body),
            workers: workers.max(1),
            token_cache_ttl,
            head_timeout,
            max_connections,
            accept_rate_at_cap,
            stale,
            http_stack,
            tls,
        })
    }
}

/// Three quarters of the open-files limit (the rest is for upstream and database connections),
/// or 4096 where the limit cannot be read.
pub fn default_max_connections() -> usize {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) => (usize::try_from(soft).unwrap_or(usize::MAX) / 4 * 3).max(64),
        Err(_) => 4096,
    }
}

/// The cap turned over once per head timeout: as fast again as the head timeout itself closes
/// the connections of a slowloris that holds the cap. At least 1000 a second, so that with a
/// small cap a caller's new connection waits behind at most a fraction of a second of the
/// attack's in the listen queue.
pub fn default_accept_rate_at_cap(max_connections: usize, head_timeout: Duration) -> u32 {
    let per_second = max_connections as u64 / head_timeout.as_secs().max(1);
    per_second.clamp(1000, u32::MAX as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
        let key = ("AUTHBRIDGE_ENCRYPTION_KEY", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        let keys = ("AUTHBRIDGE_API_KEYS", "a-bootstrap-key-of-some-length");
        Settings::from_env(&Env::from_pairs(pairs.iter().copied().chain([key, keys])))
    }

    #[test]
    fn the_http_stack_is_ours_unless_hyper_is_named_and_nothing_else_is_taken() {
        assert_eq!(with(&[]).unwrap().http_stack, HttpStack::Own);
        assert_eq!(with(&[(HTTP_STACK, "hyper")]).unwrap().http_stack, HttpStack::Hyper);
        let e = with(&[(HTTP_STACK, "nginx"), (HEAD_TIMEOUT, "0")]).unwrap_err().to_string();
        assert!(e.contains(HTTP_STACK) && e.contains("nginx"), "{e}");
        assert!(e.contains(HEAD_TIMEOUT), "every problem is reported at once: {e}");
    }

    #[test]
    fn the_default_cap_is_three_quarters_of_the_open_files_limit() {
        // The kernel's own account of the limit, read apart from the code under test.
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
        let soft: usize = line.split_whitespace().nth(3).unwrap().parse().unwrap();
        assert_eq!(default_max_connections(), (soft / 4 * 3).max(64));
        assert_eq!(with(&[]).unwrap().max_connections, default_max_connections());
    }

    #[test]
    fn the_pace_at_the_cap_turns_the_cap_over_once_per_head_timeout_and_no_slower_than_1000() {
        let s = with(&[(MAX_CONNECTIONS, "15000")]).unwrap();
        assert_eq!(s.accept_rate_at_cap, 1500);
        let s = with(&[(MAX_CONNECTIONS, "15000"), (HEAD_TIMEOUT, "30")]).unwrap();
        assert_eq!(s.accept_rate_at_cap, 1000);
        assert_eq!(with(&[(ACCEPT_RATE_AT_CAP, "250")]).unwrap().accept_rate_at_cap, 250);
        let e = with(&[(ACCEPT_RATE_AT_CAP, "0")]).unwrap_err().to_string();
        assert!(e.contains(ACCEPT_RATE_AT_CAP), "{e}");
    }
}
