//! HTTP pieces every service shares: the error table, the API-key extractor, health and
//! readiness, and the shutdown signal.
//!
//! Every error a service makes itself is JSON `{"error": <stable code>, "message": <human text>}`
//! with the header `x-authbridge-error: <code>`, which tells it apart from an error the proxy
//! merely relays from a provider. A 500 never shows its cause to the caller; the log does.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use std::time::Duration;

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
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            InvalidRequest | InvalidState => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden => StatusCode::FORBIDDEN,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            NotFound | UnknownProvider | ConnectionNotFound | SessionNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProviderNotConfigured | ProviderHasNoApi | InvalidCredentials | UnsupportedAuthMode => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            SessionExpired | SessionAlreadyUsed => StatusCode::GONE,
            NeedsReauth => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RefreshFailed | UpstreamUnreachable | IntegrationRefused => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            InternalError => StatusCode::INTERNAL_SERVER_ERROR,
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

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.code.status());
        for (name, value) in self.headers() {
            r.insert_header((name, value));
        }
        r.content_type("application/json").body(self.body())
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

/// Body, path and query extractor errors become `invalid_request` JSON errors.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default().limit(limit).error_handler(|e, _| {
        let code = match &e {
            actix_web::error::JsonPayloadError::Overflow { .. }
            | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::InvalidRequest,
        };
        ApiError::new(code, format!("invalid JSON body: {e}")).into()
    })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|e, _| ApiError::new(ErrorCode::InvalidRequest, format!("invalid query string: {e}")).into())
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|e, _| ApiError::new(ErrorCode::InvalidRequest, format!("invalid path: {e}")).into())
}

/// The default service: unknown routes answer a JSON 404.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(ErrorCode::NotFound, format!("no route for {} {}", req.method(), req.path())).error_response()
}

/// The bearer credential of a request, if it has one.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    bearer_credential(req.headers().get(header::AUTHORIZATION)?.as_bytes())
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
pub fn http_metrics() -> web::Data<crate::metrics::Registry> {
    let r = crate::metrics::Registry::new();
    r.describe("authbridge_http_requests_total", "HTTP requests served, by method, route and status.");
    r.describe_histogram(
        "authbridge_http_request_duration_seconds",
        "Time to the response head, by method, route and status.",
    );
    web::Data::new(r)
}

/// Middleware (`from_fn`) around every request: the request's root span (continuing the
/// caller's trace when it sends a W3C `traceparent`), its count and latency by route pattern and
/// status, and the access log line (`GET /connect/{token} 302 3.1ms`, target
/// `authbridge::access`), written inside the span so JSON logs give it the trace id. Lines name
/// the route pattern, never the path or query as sent: those carry session tokens, codes and
/// states. Health, readiness and metrics requests are counted but not logged.
pub async fn track_requests(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use tracing::Instrument;
    let quiet = is_quiet(req.path());
    let span = request_span(req.method().as_str(), quiet, req.headers().get("traceparent").map(|v| v.as_bytes()));
    let start = std::time::Instant::now();
    let res = next.call(req).instrument(span.clone()).await?;
    let elapsed = start.elapsed();
    let pattern = res.request().match_pattern();
    let route = pattern.as_deref().unwrap_or(UNMATCHED);
    // Looked up after the call, by reference: cloning shared app data per request would bounce
    // its reference count between the workers' cores.
    let registry = res.request().app_data::<web::Data<crate::metrics::Registry>>().map(|r| &***r);
    record_request(registry, &span, res.request().method().as_str(), route, res.status().as_u16(), elapsed, quiet);
    Ok(res)
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
/// line (`GET /connect/{token} 302 3.1ms`, target `authbridge::access`), written inside the span
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
        let ms = elapsed.as_secs_f64() * 1000.0;
        span.in_scope(|| {
            tracing::info!(target: "authbridge::access", method, route, status, duration_ms = ms, "{method} {route} {status} {ms:.1}ms")
        });
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

/// The answer to a `/metrics` request without the metrics token.
pub fn metrics_refused() -> HttpResponse {
    ApiError::new(ErrorCode::Unauthorized, "/metrics needs Authorization: Bearer <AUTHBRIDGE_METRICS_TOKEN>")
        .error_response()
}

/// A `/metrics` answer in the Prometheus text format.
pub fn metrics_response(body: String) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(body)
}

/// Liveness: the process answers.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Readiness from named checks: 200 when all pass, 503 with each check's state otherwise.
pub fn readiness(checks: Vec<(&'static str, Result<(), String>)>) -> HttpResponse {
    let (ready, body) = readiness_report(checks);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    HttpResponse::build(status).json(body)
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

/// A running actix-web server.
pub struct ServerTask {
    pub addr: std::net::SocketAddr,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ServerTask {
    /// Starts a built server on the current runtime.
    pub fn spawn(server: actix_web::dev::Server, addr: std::net::SocketAddr) -> Self {
        let handle = server.handle();
        Self { addr, handle, task: tokio::spawn(server) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting; with `graceful`, in-flight requests finish (bounded by the server's
    /// shutdown timeout).
    pub async fn stop(self, graceful: bool) {
        self.handle.stop(graceful).await;
        let _ = self.task.await;
    }
}

/// The body of every service's `main`: telemetry, settings from the environment (exit code 2
/// with every problem listed when they are invalid), then `run` on a multi-threaded runtime.
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
