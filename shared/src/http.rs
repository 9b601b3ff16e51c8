//! HTTP pieces every service shares: the error table, the API-key extractor, health and
//! readiness, and the shutdown signal.
//!
//! Every error a service makes itself is JSON `{"error": <stable code>, "message": <human text>}`
//! with the header `x-authbridge-error: <code>`, which tells it apart from an error the proxy
//! merely relays from a provider. A 500 never shows its cause to the caller; the log does.

use serde::Serialize;
use std::time::Duration;

#[cfg(feature = "actix")]
mod actix;
#[cfg(feature = "actix")]
pub use actix::*;

/// Header on every error authbridge itself produces.
pub const ERROR_HEADER: &str = "x-authbridge-error";

/// The stable error codes and their HTTP status: one table for every service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    RateLimited,
    NotFound,
    MethodNotAllowed,
    UnknownProvider,
    ProviderNotConfigured,
    ConnectionNotFound,
    SessionNotFound,
    SessionExpired,
    SessionAlreadyUsed,
    InvalidState,
    NeedsReauth,
    /// The request conflicts with the resource's state (removing an endpoint's last secret).
    Conflict,
    InvalidCredentials,
    IntegrationRefused,
    UnsupportedAuthMode,
    UnsupportedMediaType,
    RefreshFailed,
    ProviderHasNoApi,
    PayloadTooLarge,
    UpstreamUnreachable,
    UpstreamTimeout,
    Unavailable,
    InternalError,
}

impl ErrorCode {
    /// The HTTP status of an error with this code (a number, so that every server stack, each
    /// with its own status type, answers from this one table).
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidRequest | InvalidState => 400,
            Unauthorized => 401,
            Forbidden => 403,
            RateLimited => 429,
            NotFound | UnknownProvider | ConnectionNotFound | SessionNotFound => 404,
            MethodNotAllowed => 405,
            ProviderNotConfigured | ProviderHasNoApi | InvalidCredentials | UnsupportedAuthMode => 422,
            UnsupportedMediaType => 415,
            SessionExpired | SessionAlreadyUsed => 410,
            NeedsReauth | Conflict => 409,
            PayloadTooLarge => 413,
            RefreshFailed | UpstreamUnreachable | IntegrationRefused => 502,
            UpstreamTimeout => 504,
            Unavailable => 503,
            InternalError => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidRequest => "invalid_request",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            RateLimited => "rate_limited",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            UnknownProvider => "unknown_provider",
            ProviderNotConfigured => "provider_not_configured",
            ConnectionNotFound => "connection_not_found",
            SessionNotFound => "session_not_found",
            SessionExpired => "session_expired",
            SessionAlreadyUsed => "session_already_used",
            InvalidState => "invalid_state",
            NeedsReauth => "needs_reauth",
            InvalidCredentials => "invalid_credentials",
            IntegrationRefused => "integration_refused",
            UnsupportedAuthMode => "unsupported_auth_mode",
            UnsupportedMediaType => "unsupported_media_type",
            RefreshFailed => "refresh_failed",
            ProviderHasNoApi => "provider_has_no_api",
            PayloadTooLarge => "payload_too_large",
            UpstreamUnreachable => "upstream_unreachable",
            UpstreamTimeout => "upstream_timeout",
            Unavailable => "unavailable",
            InternalError => "internal_error",
            Conflict => "conflict",
        }
    }
}

/// An error answered to the caller.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after: None }
    }

    /// A 500: the cause goes to the log, the caller sees a generic message.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ErrorCode::InternalError, "internal error; see the service log")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl ApiError {
    /// The JSON body of the answer: `{"error": <code>, "message": <text>}`.
    pub fn body(&self) -> String {
        serde_json::json!({"error": self.code.as_str(), "message": self.message}).to_string()
    }

    /// The headers of the answer besides `Content-Type`; every server stack sends these.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![(ERROR_HEADER, self.code.as_str().to_owned()), ("cache-control", "no-store".to_owned())];
        if self.code == ErrorCode::Unauthorized {
            h.push(("www-authenticate", "Bearer realm=\"authbridge\"".to_owned()));
        }
        if let Some(d) = self.retry_after {
            h.push(("retry-after", d.as_secs().max(1).to_string()));
        }
        h
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            let mut a = ApiError::new(ErrorCode::Unavailable, "the database is unavailable; try again shortly");
            a.retry_after = Some(Duration::from_secs(1));
            return a;
        }
        ApiError::internal(e)
    }
}

impl From<crate::tokens::TokenError> for ApiError {
    fn from(e: crate::tokens::TokenError) -> Self {
        match e {
            crate::tokens::TokenError::Store(s) => s.into(),
            crate::tokens::TokenError::UnknownProvider(p) => {
                ApiError::new(ErrorCode::UnknownProvider, format!("provider `{p}` is not in the catalog"))
            }
        }
    }
}

/// The connection and token an outcome carries, or the error every service answers for it.
pub fn usable(
    outcome: crate::tokens::Outcome,
    provider: &str,
    id: &str,
) -> Result<(crate::store::Connection, crate::store::Credentials), ApiError> {
    use crate::tokens::Outcome;
    match outcome {
        Outcome::Current(c, creds) | Outcome::Refreshed(c, creds) => Ok((c, creds)),
        Outcome::NotFound => Err(connection_not_found(provider, id)),
        Outcome::NeedsReauth { reason } => Err(ApiError::new(
            ErrorCode::NeedsReauth,
            format!("the connection needs the end user to authorize again ({reason})"),
        )),
        Outcome::Failed { error, .. } => {
            Err(ApiError::new(ErrorCode::RefreshFailed, format!("refreshing the token failed: {error}")))
        }
        Outcome::NotDue => Err(ApiError::internal("a refresh that was not scheduled reported `not due`")),
    }
}

pub fn connection_not_found(provider: &str, id: &str) -> ApiError {
    ApiError::new(ErrorCode::ConnectionNotFound, format!("no connection `{id}` for provider `{provider}`"))
}

/// The credential in an `Authorization: Bearer <credential>` value (the scheme is
/// case-insensitive, RFC 9110 §11.1), for any server stack.
pub fn bearer_credential(value: &[u8]) -> Option<&str> {
    let space = value.iter().position(|&b| b == b' ')?;
    if !value[..space].eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    std::str::from_utf8(&value[space + 1..]).ok().map(str::trim)
}

/// A registry with the HTTP metrics every service records.
pub fn http_metrics() -> crate::metrics::Registry {
    let r = crate::metrics::Registry::new();
    r.describe("authbridge_http_requests_total", "HTTP requests served, by method, route and status.");
    r.describe_histogram(
        "authbridge_http_request_duration_seconds",
        "Time to the response head, by method, route and status.",
    );
    r
}

/// The route label of requests no route matched.
pub const UNMATCHED: &str = "<unmatched>";

/// Whether requests to `path` are left out of the access log (they are still counted).
pub fn is_quiet(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// A request's method as it is recorded in metrics, spans and the access log: the methods of
/// RFC 9110 §9 and PATCH (RFC 5789) as themselves, every other token as `OTHER`. A method is
/// any token a caller cares to send, up to the size of a head; a label taken from it as sent
/// would make every request with a new token a new series that is never dropped.
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "OTHER",
    }
}

/// The root span of a request: continues the caller's trace when it sends a W3C `traceparent`;
/// none for quiet paths.
pub fn request_span(method: &str, quiet: bool, traceparent: Option<&[u8]>) -> tracing::Span {
    if quiet {
        return tracing::Span::none();
    }
    let method = method_label(method);
    let span =
        tracing::info_span!("http_request", method, route = tracing::field::Empty, status = tracing::field::Empty);
    if !span.is_disabled() {
        crate::telemetry::set_remote_parent(&span, traceparent.and_then(|v| std::str::from_utf8(v).ok()));
    }
    span
}

/// What every server stack records once a request's response head is ready: its count and
/// latency by method, route pattern and status, the span's route and status, and the access log
/// line (`request method="GET" route="/connect/{token}" status=302 duration_ms=3.1`, target
/// `authbridge::access`, each fact once), written inside the span
/// so JSON logs give it the trace id. Lines name the route pattern, never the path or query as
/// sent: those carry session tokens, codes and states.
pub fn record_request(
    registry: Option<&crate::metrics::Registry>,
    span: &tracing::Span,
    method: &str,
    route: &str,
    status: u16,
    elapsed: Duration,
    quiet: bool,
) {
    let method = method_label(method);
    if let Some(r) = registry {
        r.count_keyed(
            "authbridge_http_requests_total",
            Some(("authbridge_http_request_duration_seconds", elapsed.as_secs_f64())),
            (method, route, status),
            || format!("method=\"{method}\",route=\"{route}\",status=\"{status}\""),
        );
    }
    if !span.is_disabled() {
        span.record("route", route);
        span.record("status", status);
    }
    if !quiet && tracing::enabled!(target: "authbridge::access", tracing::Level::INFO) {
        // A tenth of a millisecond is all a reader (or a dashboard) uses; more digits are noise.
        let duration_ms = (elapsed.as_secs_f64() * 10_000.0).round() / 10.0;
        if span.is_disabled() {
            tracing::info!(target: "authbridge::access", method, route, status, duration_ms, "request");
        } else {
            // The span the line is written in carries method, route and status already (and
            // the line prints them with it): formatted once, not twice.
            span.in_scope(|| tracing::info!(target: "authbridge::access", duration_ms, "request"));
        }
    }
}

/// Whether a `/metrics` request may be answered: always when no token is configured
/// (`AUTHBRIDGE_METRICS_TOKEN`), otherwise only with `Authorization: Bearer <token>`.
pub fn metrics_allowed(token: Option<&crate::config::Secret<String>>, authorization: Option<&[u8]>) -> bool {
    let Some(token) = token else { return true };
    authorization
        .and_then(bearer_credential)
        .is_some_and(|presented| crate::crypto::same_digest(presented.as_bytes(), token.expose().as_bytes()))
}

/// Whether every check passed, and the readiness body: `{"status": "ready" | "not_ready",
/// "checks": {<name>: "ok" | <error>}}`.
pub fn readiness_report(checks: Vec<(&'static str, Result<(), String>)>) -> (bool, serde_json::Value) {
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(name, r)| (name.to_owned(), serde_json::Value::String(r.err().unwrap_or_else(|| "ok".into()))))
        .collect();
    (ready, serde_json::json!({"status": if ready {"ready"} else {"not_ready"}, "checks": body}))
}

/// Runs a readiness probe with a bound, so a hung dependency reads as "not ready".
pub async fn probe<F, E>(f: F) -> Result<(), String>
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    match tokio::time::timeout(Duration::from_secs(3), f).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Raises this process's soft limit on open files to its hard limit; the limits before and after.
///
/// Every connection a service holds is a file, and the proxy's connection cap is derived from
/// this limit. A soft limit of 1,024 (what a shell or systemd gives by default, under a hard
/// limit of 524,288 or more) would cap the proxy at 768 connections, which a small slowloris
/// fills; the hard limit is the operator's bound, the soft one only a default for programs that
/// do not ask (Go's runtime raises it the same way).
pub fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    let (before, _) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let after = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok((before, after))
}

/// The body of every service's `main`: telemetry, the open-files limit raised
/// ([`raise_open_files_limit`]), settings from the environment (exit code 2 with every problem
/// listed when they are invalid), then `run` on a multi-threaded runtime.
pub fn run_service<S, F, Fut>(
    service: &'static str,
    load: fn(&crate::config::Env) -> Result<S, crate::config::ConfigErrors>,
    run: F,
) -> anyhow::Result<()>
where
    F: FnOnce(S) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let _telemetry = crate::telemetry::init(service);
    // Before the settings: their defaults may be derived from the limit.
    match raise_open_files_limit() {
        Ok((before, after)) if after > before => tracing::info!(before, after, "open-files limit raised"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
    let settings = match load(&crate::config::Env::from_process()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{service}: {e}");
            std::process::exit(2);
        }
    };
    tokio::runtime::Runtime::new()?.block_on(run(settings))
}

/// Waits for SIGTERM or Ctrl-C, then runs a service's graceful `stop`.
pub async fn stop_on_signal<Fut: std::future::Future<Output = ()>>(stop: impl FnOnce() -> Fut) {
    shutdown_signal().await;
    tracing::info!("shutting down");
    stop().await;
}

/// The base URL a service listening on `addr` answers at.
pub fn base_url(addr: std::net::SocketAddr, https: bool) -> String {
    format!("{}://{addr}", if https { "https" } else { "http" })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::{bearer_credential, record_request};
    use std::time::Duration;

    /// Run in a process of its own (this test binary again, started with a soft limit of 256 by
    /// the test below), as a service would be: lowering the limit of the test process itself
    /// would fail the tests running beside it.
    #[test]
    fn raise_the_open_files_limit_when_run_by_the_test_below() {
        if std::env::var_os("AUTHBRIDGE_TEST_RAISE_NOFILE").is_some() {
            let (before, after) = super::raise_open_files_limit().unwrap();
            let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
            let soft = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
            println!("raised {before} {after} | {soft}");
        }
    }

    #[test]
    fn a_service_raises_its_open_files_limit_to_the_hard_limit() {
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        assert!(hard > 256, "this machine's hard limit is {hard}");
        let out = std::process::Command::new("sh")
            .args(["-c", "ulimit -Sn 256 && exec \"$0\" --exact \"$1\" --nocapture --test-threads 1"])
            .arg(std::env::current_exe().unwrap())
            .arg("http::tests::raise_the_open_files_limit_when_run_by_the_test_below")
            .env("AUTHBRIDGE_TEST_RAISE_NOFILE", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let line = stdout.split_once("raised ").map(|(_, l)| l.lines().next().unwrap_or(""));
        let line = line.unwrap_or_else(|| panic!("{stdout}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[0], "256", "the child started at 256: {line}");
        assert_eq!(f[1], hard.to_string(), "raised to the hard limit: {line}");
        // And the process's own view agrees (what the proxy's connection cap is derived from).
        assert_eq!(f[6], hard.to_string(), "{line}");
    }

    #[test]
    fn requests_with_made_up_methods_share_one_series_whatever_their_number() {
        let registry = crate::metrics::Registry::new();
        registry.describe("authbridge_http_requests_total", "Requests.");
        registry.describe_histogram("authbridge_http_request_duration_seconds", "Latency.");
        let record = |method: &str| {
            record_request(Some(&registry), &tracing::Span::none(), method, "/x", 404, Duration::ZERO, true)
        };
        record("GET");
        let one = registry.render().len();
        for i in 0..2_000 {
            record(&format!("M{i}{}", "X".repeat(i % 300)));
        }
        record("PATCH");
        let text = registry.render();
        assert!(
            text.contains(r#"authbridge_http_requests_total{method="OTHER",route="/x",status="404"} 2000"#),
            "{text}"
        );
        assert!(text.contains(r#"authbridge_http_requests_total{method="PATCH",route="/x",status="404"} 1"#));
        // Three series (GET, OTHER, PATCH), so about three times the text of one.
        assert!(text.len() < one * 4, "{} bytes of metrics after 2,000 methods", text.len());
        assert!(!text.contains("M1"), "no method token as sent reaches a label");
    }

    #[test]
    fn the_bearer_credential_is_taken_whatever_the_schemes_case_and_nothing_else_is() {
        assert_eq!(bearer_credential(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_credential(b"bEARER  abc "), Some("abc"));
        assert_eq!(bearer_credential(b"Basic abc"), None);
        assert_eq!(bearer_credential(b"Bearerabc"), None);
        assert_eq!(bearer_credential(b"Bearer"), None);
        assert_eq!(bearer_credential(b"Bearer \xff"), None, "not UTF-8");
        assert_eq!(bearer_credential(b""), None);
    }
}
