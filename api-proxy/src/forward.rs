//! Forwarding one call: resolve the upstream URL safely, attach the token, stream the answer.

use crate::ProxyState;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use shared::auth::{scope, Authorized};
use shared::catalog::valid_connection_id;
use shared::http::{ApiError, ErrorCode};
use shared::store::Credentials;
use shared::tokens::{Outcome, Trigger};
use std::sync::Arc;
use url::Url;

/// Headers that describe one hop (RFC 9110 §7.6.1) or belong to authbridge: never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip(name: &str, connection_listed: &[String]) -> bool {
    HOP_BY_HOP.contains(&name) || name.starts_with("x-authbridge-") || connection_listed.iter().any(|c| c == name)
}

/// Header names the `Connection` header lists: hop-by-hop as well.
fn connection_listed(h: &header::HeaderMap) -> Vec<String> {
    h.get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The upstream URL for `tail` under `base`, or why not. The result always has the base's
/// scheme, host and port, and a path under the base's path: dot segments (plain or
/// percent-encoded), backslashes, empty segments (`//host`), and control characters are refused.
pub fn upstream_url(base: &Url, raw_tail: &str, query: &str) -> Result<Url, &'static str> {
    if raw_tail.starts_with('/') {
        return Err("the path must not start with '/'");
    }
    for seg in raw_tail.split('/') {
        let decoded = url::form_urlencoded::parse(format!("s={}", seg.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if decoded == "." || decoded == ".." {
            return Err("dot segments are not allowed in the path");
        }
        if decoded.contains('\\') || decoded.chars().any(|c| c.is_control()) {
            return Err("backslashes and control characters are not allowed in the path");
        }
        if decoded.contains('/') && (decoded.starts_with('/') || decoded.contains("..")) {
            return Err("encoded slashes are not allowed here");
        }
    }
    if query.chars().any(|c| c.is_control()) {
        return Err("control characters are not allowed in the query");
    }
    // Start from the parsed base (no re-parsing of scheme and host on every call) and append.
    let mut u = base.clone();
    let mut path = String::with_capacity(base.path().len() + raw_tail.len());
    path.push_str(base.path());
    path.push_str(raw_tail);
    u.set_path(&path);
    u.set_query((!query.is_empty()).then_some(query));
    if u.scheme() != base.scheme()
        || u.host() != base.host()
        || u.port_or_known_default() != base.port_or_known_default()
        || !u.path().starts_with(base.path())
        || u.username() != ""
        || u.password().is_some()
    {
        return Err("the path leaves the provider's API");
    }
    Ok(u)
}

fn proxy_error(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

async fn token_for(state: &ProxyState, provider: &str, id: &str) -> Result<(i64, Arc<Credentials>), ApiError> {
    if let Some(hit) = state.cache.get(provider, id, state.core.tokens.policy.min_token_validity) {
        return Ok(hit);
    }
    let epoch = state.cache.epoch();
    let (c, creds) = shared::http::usable(state.core.tokens.valid_token(provider, id).await?, provider, id)?;
    let creds = Arc::new(creds);
    state.cache.put(epoch, provider, id, c.token_version, creds.clone(), c.expires_at);
    Ok((c.token_version, creds))
}

#[tracing::instrument(name = "upstream", skip_all, fields(method = %req.method()))]
async fn send(
    http: &reqwest::Client,
    req: &HttpRequest,
    url: &Url,
    body: &Bytes,
    token: &str,
) -> Result<reqwest::Response, ApiError> {
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(|_| proxy_error(ErrorCode::InvalidRequest, "unsupported method"))?;
    let listed = connection_listed(req.headers());
    let mut headers = reqwest::header::HeaderMap::with_capacity(req.headers().len() + 1);
    for (name, value) in req.headers() {
        let n = name.as_str();
        if n == "host" || n == "authorization" || n == "content-length" || strip(n, &listed) {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(n.as_bytes()),
            reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(k, v);
        }
    }
    let bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ApiError::internal("stored token is not a valid header value"))?;
    headers.insert(reqwest::header::AUTHORIZATION, bearer);
    // The upstream call is a child of this proxied call's span (W3C trace context).
    if let Some(tp) =
        shared::telemetry::current_traceparent().and_then(|t| reqwest::header::HeaderValue::from_str(&t).ok())
    {
        headers.insert("traceparent", tp);
    }
    let mut rb = http.request(method, url.clone()).headers(headers);
    if !body.is_empty() {
        rb = rb.body(body.clone());
    }
    rb.send().await.map_err(|e| {
        if e.is_timeout() {
            proxy_error(ErrorCode::UpstreamTimeout, "the provider's API did not answer in time")
        } else {
            proxy_error(ErrorCode::UpstreamUnreachable, "the provider's API could not be reached")
        }
    })
}

fn relay(resp: reqwest::Response) -> HttpResponse {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HttpResponse::build(status);
    let listed: Vec<String> = resp
        .headers()
        .get_all(reqwest::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in resp.headers() {
        let n = name.as_str();
        if n == "content-length" || strip(n, &listed) {
            continue;
        }
        if let Ok(v) = header::HeaderValue::from_bytes(value.as_bytes()) {
            out.append_header((n, v));
        }
    }
    let len = resp.content_length();
    let stream = resp.bytes_stream().map(|r| r.map_err(std::io::Error::other));
    match len {
        Some(n) => out.body(actix_web::body::SizedStream::new(n, stream)),
        None => out.streaming(stream),
    }
}

/// `ANY /proxy/{provider}/{connection_id}/{path…}`
#[tracing::instrument(name = "proxy", skip_all, fields(provider, connection_id, method = %req.method(), upstream_status))]
pub async fn proxy(
    caller: Authorized<scope::Proxy>,
    limits: web::Data<shared::limits::RateLimits>,
    metrics: web::Data<shared::metrics::Registry>,
    http: web::Data<reqwest::Client>,
    state: web::Data<ProxyState>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // `/proxy/{provider}/{connection_id}/{path…}`, split by hand on the raw (still
    // percent-encoded) path: a routing pattern with a catch-all segment would cost a regex
    // match on every call.
    let raw_path = req.uri().path();
    let mut parts = raw_path.strip_prefix("/proxy/").unwrap_or("").splitn(3, '/');
    let (provider_id, connection_id, raw_tail) = match (parts.next(), parts.next(), parts.next()) {
        (Some(p), Some(c), Some(tail)) if !p.is_empty() && !c.is_empty() => (p.to_owned(), c.to_owned(), tail),
        _ => return Err(proxy_error(ErrorCode::NotFound, "proxy paths are /proxy/{provider}/{connection_id}/{path}")),
    };
    let span = tracing::Span::current();
    // Continue the caller's trace when it sent one.
    shared::telemetry::set_remote_parent(&span, req.headers().get("traceparent").and_then(|v| v.to_str().ok()));
    span.record("provider", provider_id.as_str());
    span.record("connection_id", connection_id.as_str());
    caller.require_provider(&provider_id)?;
    if let Some(l) = &limits.per_connection {
        l.check(&format!("{provider_id}/{connection_id}"))?;
    }
    let provider = state.core.tokens.catalog.get(&provider_id).ok_or_else(|| {
        proxy_error(ErrorCode::UnknownProvider, format!("provider `{provider_id}` is not in the catalog"))
    })?;
    let base = provider.api_base_url.as_ref().ok_or_else(|| {
        proxy_error(ErrorCode::ProviderHasNoApi, format!("provider `{provider_id}` has no api_base_url configured"))
    })?;
    if !valid_connection_id(&connection_id) {
        return Err(proxy_error(ErrorCode::InvalidRequest, "invalid connection_id"));
    }
    let url =
        upstream_url(base, raw_tail, req.query_string()).map_err(|m| proxy_error(ErrorCode::InvalidRequest, m))?;

    // The body is kept (bounded) so the call can be retried once after a refresh.
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| proxy_error(ErrorCode::InvalidRequest, format!("could not read the request body: {e}")))?;
        if body.len() + chunk.len() > state.settings.max_body {
            return Err(proxy_error(
                ErrorCode::PayloadTooLarge,
                format!("request bodies are limited to {} bytes", state.settings.max_body),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();

    let (version, creds) = token_for(&state, &provider_id, &connection_id).await?;
    let resp = send(&http, &req, &url, &body, &creds.access_token).await?;
    let count = |status: u16| {
        metrics
            .inc("authbridge_proxied_calls_total", &format!("provider=\"{provider_id}\",upstream_status=\"{status}\""))
    };
    count(resp.status().as_u16());
    if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
        span.record("upstream_status", resp.status().as_u16());
        return Ok(relay(resp));
    }
    // 401: the token may have been revoked or expired early. Refresh once (single-flight; if
    // someone already refreshed past this version we simply get the newer token) and retry once.
    tracing::info!("provider answered 401; refreshing and retrying once");
    match state.core.tokens.refresh(&provider_id, &connection_id, Trigger::Unauthorized { version }).await? {
        Outcome::Refreshed(_, fresh) | Outcome::Current(_, fresh) if fresh.access_token != creds.access_token => {
            let retried = send(&http, &req, &url, &body, &fresh.access_token).await?;
            count(retried.status().as_u16());
            span.record("upstream_status", retried.status().as_u16());
            Ok(relay(retried))
        }
        Outcome::NeedsReauth { reason } => Err(proxy_error(
            ErrorCode::NeedsReauth,
            format!("the provider refused the token and the refresh ({reason}); the end user must authorize again"),
        )),
        Outcome::NotFound => Err(proxy_error(ErrorCode::ConnectionNotFound, "the connection was deleted")),
        _ => {
            span.record("upstream_status", 401u16);
            Ok(relay(resp))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://api.example.com/v1/").unwrap()
    }

    #[test]
    fn plain_paths_and_queries_are_joined_under_the_base() {
        assert_eq!(
            upstream_url(&base(), "contacts/42", "a=1&b=%20").unwrap().as_str(),
            "https://api.example.com/v1/contacts/42?a=1&b=%20"
        );
        assert_eq!(upstream_url(&base(), "", "").unwrap().as_str(), "https://api.example.com/v1/");
    }

    #[test]
    fn paths_that_try_to_leave_the_api_are_refused() {
        for bad in [
            "../admin",
            "a/../../x",
            "%2e%2e/x",
            "%2E%2E/x",
            ".%2e/x",
            "/evil.com/x",
            "a\\b",
            "%5c..%5cx",
            "a%0d%0aHost:%20x",
            "%2f%2fevil.com",
        ] {
            assert!(upstream_url(&base(), bad, "").is_err(), "{bad} was accepted");
        }
        let u = upstream_url(&base(), "@evil.com/x", "").unwrap();
        assert_eq!(u.host_str(), Some("api.example.com"));
        let u = upstream_url(&base(), "http://evil.com/x", "").unwrap();
        assert_eq!(u.host_str(), Some("api.example.com"));
    }
}
