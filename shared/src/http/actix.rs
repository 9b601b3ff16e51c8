//! The shared HTTP pieces that need actix-web (the gateway's, the refresher's and the mock
//! provider's server stack): the error table as actix answers, extractor configuration, the
//! request-tracking middleware, health and metrics answers, and a running server's handle.
//! The proxy serves HTTP with its own stack and does without this module (feature `actix`).

use super::*;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status_code());
        for (name, value) in self.headers() {
            r.insert_header((name, value));
        }
        r.content_type("application/json").body(self.body())
    }
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

/// Middleware (`from_fn`) around every request: the request's root span (continuing the
/// caller's trace when it sends a W3C `traceparent`), its count and latency by route pattern and
/// status, and the access log line (`request method="GET" route=… status=302 duration_ms=3.1`, target
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
