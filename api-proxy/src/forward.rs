//! Forwarding one call: resolve the upstream URL safely, attach the token, stream the answer.
//!
//! Built on hyper directly (no higher-level client): the proxy's hot path is the upstream
//! call, and every layer above hyper re-parsed the URL and copied the request once more.

use crate::cache::Token;
use crate::deadline::Deadline;
use crate::h1_server::CallerBody;
use crate::outgoing::{upstream_url, Fields, Outgoing, Target, UpstreamBody};
use crate::pool::{Pool, SendError, UpBody};
use crate::relay::{answer_parts, relay, RelayBody, ResponseBody};
use crate::state::ProxyState;
use crate::worker::Worker;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Response};
use http_body_util::{BodyExt, Either};
use hyper::body::{Body, Incoming};
use shared::auth::Scope;
use shared::catalog::valid_connection_id;
use shared::http::{ApiError, ErrorCode};
use shared::tokens::{Outcome, Trigger};
use std::sync::Arc;

/// Reads the caller's body: held in memory when its length is known and small enough to replay,
/// else streamed to the provider as it arrives.
async fn outbound(body: CallerBody, settings: &crate::settings::Settings) -> Result<UpstreamBody, ApiError> {
    let max = settings.max_body as u64;
    let too_large = || proxy_error(ErrorCode::PayloadTooLarge, format!("request bodies are limited to {max} bytes"));
    let body = match body {
        CallerBody::Held(b, _) if b.len() as u64 > max => return Err(too_large()),
        CallerBody::Held(b, _) => return Ok(UpstreamBody::Held(Some(b))),
        CallerBody::Streaming(b) => b,
    };
    if body.is_end_stream() {
        return Ok(UpstreamBody::Held(None));
    }
    match body.size_hint().exact() {
        Some(n) if n > max => Err(too_large()),
        Some(n) if n <= settings.retry_body as u64 => read_body(body, max).await.map(|b| UpstreamBody::Held(Some(b))),
        _ => Ok(UpstreamBody::Streamed(Some(http_body_util::Limited::new(body, max as usize)))),
    }
}

/// A held body, read to its end within `max` bytes (a body that came in one chunk is kept
/// without a copy).
async fn read_body(body: Incoming, max: u64) -> Result<Bytes, ApiError> {
    match http_body_util::Limited::new(body, max as usize).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(proxy_error(ErrorCode::PayloadTooLarge, format!("request bodies are limited to {max} bytes")))
        }
        Err(e) => Err(proxy_error(ErrorCode::InvalidRequest, format!("could not read the request body: {e}"))),
    }
}

fn proxy_error(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

async fn token_for(state: &ProxyState, p: &shared::catalog::Provider, id: &str) -> Result<(i64, Arc<Token>), ApiError> {
    let provider = p.id.as_str();
    let min_validity = state.core.tokens.policy.min_token_validity;
    if let Some(hit) = state.cache.get(provider, id, min_validity) {
        return Ok(hit);
    }
    // The database failed a moment ago: what memory holds, or a 503 at once rather than after
    // another wait for a connection.
    if state.database_down() {
        return state.cache.get_stale(provider, id, min_validity).ok_or_else(database_unavailable);
    }
    let epoch = state.cache.epoch();
    // Boxed: the database path is the cold one, and its state machine would otherwise be
    // inlined into (and copied with) every proxied call's future.
    let found = match Box::pin(state.core.tokens.valid_token(provider, id)).await {
        Ok(found) => found,
        Err(e) => {
            let e = ApiError::from(e);
            if e.code == ErrorCode::Unavailable {
                state.database_failed();
                if let Some(hit) = state.cache.get_stale(provider, id, min_validity) {
                    return Ok(hit);
                }
            }
            return Err(e);
        }
    };
    let (c, creds) = shared::http::usable(found, provider, id)?;
    let token = Arc::new(Token::for_provider(creds, p)?);
    state.cache.put(epoch, provider, id, c.token_version, token.clone(), c.expires_at);
    Ok((c.token_version, token))
}

/// The answer to a call that needs the database while it cannot be reached.
fn database_unavailable() -> ApiError {
    let mut e = proxy_error(ErrorCode::Unavailable, "the database is unavailable; try again shortly");
    e.retry_after = Some(std::time::Duration::from_secs(1));
    e
}

#[tracing::instrument(name = "upstream", skip_all, fields(method = %method))]
async fn send(
    upstream: &Pool,
    method: &Method,
    target: &Target<'_>,
    caller: Fields<'_>,
    body: &mut UpstreamBody,
    (inject, tenant): (&[(header::HeaderName, HeaderValue)], u64),
    deadline: &mut Deadline,
) -> Result<Response<UpBody>, ApiError> {
    let mut fresh_only = false;
    loop {
        let attempt = body.attempt().ok_or_else(|| ApiError::internal("a streamed body was sent twice"))?;
        let outgoing = Outgoing::new(method, target, caller, inject, tenant, attempt);
        let result = tokio::select! {
            biased;
            r = upstream.send(outgoing, fresh_only) => r,
            _ = &mut *deadline => {
                return Err(proxy_error(ErrorCode::UpstreamTimeout, "the provider's API did not answer in time"))
            }
        };
        match result {
            Ok(answer) => return Ok(answer),
            // A kept-alive connection the provider closed as the request went out: an idempotent
            // request whose body is still at hand is sent once more, on a new connection
            // (RFC 9110 §9.2.2), as reverse proxies do.
            Err(SendError::Reused(error)) if !fresh_only && method.is_idempotent() && body.replayable() => {
                tracing::debug!(%error, "kept-alive upstream connection failed; sending again on a new one");
                fresh_only = true;
            }
            Err(SendError::MethodConnect) => {
                return Err(proxy_error(ErrorCode::MethodNotAllowed, "CONNECT is not forwarded to providers"))
            }
            Err(e) => {
                tracing::debug!(error = %e, "upstream call failed");
                return Err(proxy_error(ErrorCode::UpstreamUnreachable, "the provider's API could not be reached"));
            }
        }
    }
}

/// The span of one proxied call (a child of the request's span), for the caller to run
/// [`proxy`] in: made here rather than by `#[tracing::instrument]` on `proxy`, whose wrapping
/// moves the call's whole future once more.
pub fn proxy_span(request: &tracing::Span, method: &Method) -> tracing::Span {
    tracing::info_span!(parent: request, "proxy", provider = tracing::field::Empty,
        connection_id = tracing::field::Empty, method = shared::http::method_label(method.as_str()), upstream_status = tracing::field::Empty)
}

/// The path after `/proxy/`, if it starts so.
pub fn strip_proxy_prefix(path: &str) -> Option<&str> {
    const PREFIX: &str = "/proxy/";
    let head = path.as_bytes().get(..PREFIX.len())?;
    crate::text::same(head, PREFIX.as_bytes()).then(|| &path[PREFIX.len()..])
}

/// A path's first segment and the rest after its `/` (segments are short: a plain scan).
fn split_segment(path: &str) -> Option<(&str, &str)> {
    let slash = path.bytes().position(|b| b == b'/')?;
    Some((&path[..slash], &path[slash + 1..]))
}

/// `ANY /proxy/{provider}/{connection_id}/{path…}`, run in [`proxy_span`].
pub async fn proxy(
    worker: &Worker,
    memo: &std::cell::RefCell<crate::key_memo::ConnectionMemo>,
    parts: &http::request::Parts,
    mut body: CallerBody,
) -> Result<Response<ResponseBody>, ApiError> {
    // Served by our HTTP/1.1 server (which takes the provider's fields as they arrived, and
    // hands over the caller's the same way), or by hyper.
    let raw_ok = matches!(body, CallerBody::Held(..));
    let raw_fields = match &mut body {
        CallerBody::Held(_, fields) => fields.take(),
        CallerBody::Streaming(_) => None,
    };
    let fields = raw_fields.as_ref().map_or(Fields::Map(&parts.headers), Fields::Raw);
    let presented = fields.get("authorization").and_then(shared::http::bearer_credential);
    let caller = crate::key_memo::authorize(&worker.auth, memo, presented, Scope::Proxy, Some(&worker.limits)).await?;
    let state = &*worker.state;
    // `/proxy/{provider}/{connection_id}/{path…}`, split on the raw (still percent-encoded)
    // path; `/proxy/{provider}/{connection_id}` alone is the API's base URL itself (Kartra's
    // whole API is one URL, `https://app.kartra.com/api`).
    let raw_path = parts.uri.path();
    let segments = strip_proxy_prefix(raw_path).and_then(split_segment).map(|(p, rest)| match split_segment(rest) {
        Some((c, tail)) => (p, c, Some(tail)),
        None => (p, rest, None),
    });
    let (provider_id, connection_id, raw_tail) = match segments {
        Some((p, c, tail)) if !p.is_empty() && !c.is_empty() => (p, c, tail),
        _ => return Err(proxy_error(ErrorCode::NotFound, "proxy paths are /proxy/{provider}/{connection_id}/{path}")),
    };
    let span = tracing::Span::current();
    if !span.is_disabled() {
        // The caller's trace, if it sent one, is continued by the request's root span (our parent).
        span.record("provider", provider_id);
        span.record("connection_id", connection_id);
    }
    caller.require_provider(provider_id)?;
    if let Some(l) = worker.limits.per_connection.as_ref() {
        l.check(&format!("{provider_id}/{connection_id}"))?;
    }
    let provider = state.core.tokens.catalog.get(provider_id).ok_or_else(|| {
        proxy_error(ErrorCode::UnknownProvider, format!("provider `{provider_id}` is not in the catalog"))
    })?;
    let base = provider.api_base_url.as_ref().ok_or_else(|| {
        proxy_error(ErrorCode::ProviderHasNoApi, format!("provider `{provider_id}` has no api_base_url configured"))
    })?;
    if !valid_connection_id(connection_id) {
        return Err(proxy_error(ErrorCode::InvalidRequest, "invalid connection_id"));
    }
    let query_with_credentials: String;
    let target_for = |query| {
        let t =
            upstream_url(base, raw_tail.unwrap_or(""), query).map_err(|m| proxy_error(ErrorCode::InvalidRequest, m))?;
        Ok::<_, ApiError>(if raw_tail.is_none() { t.bare(provider.api_base_slash) } else { t })
    };
    let mut target = target_for(parts.uri.query().unwrap_or(""))?;

    // Small bodies are held so the call can be retried once after a refresh; large ones stream.
    let mut body = outbound(body, &state.settings).await?;
    let deadline_at = crate::clock::recent() + state.settings.upstream_timeout;
    let mut deadline = worker.deadlines.deadline(deadline_at);

    let (version, token) = token_for(state, provider, connection_id).await?;
    // Credentials that go in the query or the form body (most go in header fields).
    if !token.query.is_empty() {
        query_with_credentials =
            crate::inject::query(parts.uri.query().unwrap_or(""), &token.query, &token.query_encoded);
        target = target_for(&query_with_credentials)?;
    }
    let mut inject = token.headers.as_slice();
    if !token.form.is_empty() {
        let add_type = crate::inject::form_allowed(provider_id, &parts.method, fields.get("content-type"))?;
        let UpstreamBody::Held(caller_form) = &body else {
            return Err(proxy_error(
                ErrorCode::PayloadTooLarge,
                format!(
                    "provider `{provider_id}` takes its credentials in the form body: bodies are limited to {} bytes",
                    state.settings.retry_body
                ),
            ));
        };
        body = UpstreamBody::Held(Some(crate::inject::form(
            caller_form.as_deref().unwrap_or_default(),
            &token.form,
            &token.form_encoded,
        )));
        if add_type {
            inject = &token.form_headers;
        }
    }
    let upstream = &worker.upstream;
    let paced = provider.rate_limit.is_some();
    if paced {
        Box::pin(wait_for_slot(state, provider, connection_id, deadline_at)).await?;
    }
    let mut resp =
        send(upstream, &parts.method, &target, fields, &mut body, (inject, token.tenant), &mut deadline).await?;
    if resp.status() == http::StatusCode::TOO_MANY_REQUESTS && body.replayable() {
        let call = Call { upstream, method: &parts.method, target: &target, fields, inject: (inject, token.tenant) };
        resp = Box::pin(again_after_429(
            state,
            provider,
            connection_id,
            deadline_at,
            resp,
            call,
            &mut body,
            &mut deadline,
        ))
        .await?;
    }
    let status = resp.status();
    let count = |status: u16| {
        worker.metrics.count_keyed("authbridge_proxied_calls_total", None, (provider_id, "", status), || {
            format!("provider=\"{provider_id}\",upstream_status=\"{status}\"")
        })
    };
    count(status.as_u16());
    if let Some(spec) = &provider.credentials {
        let head = parts.method == Method::HEAD;
        return credential_answer(state, provider, spec, connection_id, version, resp, deadline, (raw_ok, head)).await;
    }
    if status != http::StatusCode::UNAUTHORIZED {
        span.record("upstream_status", status.as_u16());
        return Ok(relay(resp, deadline, raw_ok));
    }
    // 401: the token may have been revoked or expired early. Refresh once (single-flight; if
    // someone already refreshed past this version we simply get the newer token) and retry once.
    tracing::info!("provider answered 401; refreshing and retrying once");
    // Boxed for the same reason as the database read in `token_for`: a cold path.
    let outcome = match Box::pin(state.core.tokens.refresh(
        provider_id,
        connection_id,
        Trigger::Unauthorized { version },
    ))
    .await
    {
        Ok(outcome) => outcome,
        Err(e) => {
            let e = ApiError::from(e);
            if e.code != ErrorCode::Unavailable {
                return Err(e);
            }
            // The database is out of reach, so no refresh can run: the provider's answer goes
            // back as it is, saying why it was not retried.
            state.database_failed();
            span.record("upstream_status", 401u16);
            let mut out = relay(resp, deadline, raw_ok);
            out.headers_mut().insert("x-authbridge-retry", HeaderValue::from_static("refresh-unavailable"));
            return Ok(out);
        }
    };
    // The refused token leaves this process's cache now, not when the change's announcement
    // arrives: the caller's next call (told to retry, below) must find the fresh one.
    state.cache.forget(provider_id, connection_id);
    match outcome {
        Outcome::Refreshed(_, fresh) | Outcome::Current(_, fresh) if fresh.access_token != token.creds.access_token => {
            if !body.replayable() {
                // The body streamed and is gone: the caller retries, with the fresh token now in place.
                span.record("upstream_status", 401u16);
                let mut out = relay(resp, deadline, raw_ok);
                out.headers_mut().insert("x-authbridge-retry", HeaderValue::from_static("token-refreshed"));
                return Ok(out);
            }
            let fresh = Token::bearer(fresh)?;
            if paced {
                Box::pin(wait_for_slot(state, provider, connection_id, deadline_at)).await?;
            }
            // Boxed: the retry is the cold path, and a second upstream call's state inline would
            // enlarge (and be copied with) every call's future.
            let retried = Box::pin(send(
                upstream,
                &parts.method,
                &target,
                fields,
                &mut body,
                (&fresh.headers, fresh.tenant),
                &mut deadline,
            ))
            .await?;
            count(retried.status().as_u16());
            span.record("upstream_status", retried.status().as_u16());
            Ok(relay(retried, deadline, raw_ok))
        }
        Outcome::NeedsReauth { reason } => Err(proxy_error(
            ErrorCode::NeedsReauth,
            format!("the provider refused the token and the refresh ({reason}); the end user must authorize again"),
        )),
        Outcome::NotFound => Err(proxy_error(ErrorCode::ConnectionNotFound, "the connection was deleted")),
        _ => {
            span.record("upstream_status", 401u16);
            Ok(relay(resp, deadline, raw_ok))
        }
    }
}

/// Waits for this call's slot in the provider's rate limit (shared by every proxy replica),
/// for as long as the call's deadline leaves the provider time to answer; a call that would
/// wait longer is refused with `429` and `Retry-After`.
async fn wait_for_slot(
    state: &ProxyState,
    provider: &shared::catalog::Provider,
    connection_id: &str,
    deadline_at: std::time::Instant,
) -> Result<(), ApiError> {
    use crate::provider_limits::Admission;
    let now = std::time::Instant::now();
    let max_wait = deadline_at.saturating_duration_since(now).saturating_sub(answer_time(&state.settings));
    match state.provider_limits.admit(provider, connection_id, now, max_wait)? {
        Admission::Now => {}
        Admission::After(d) => tokio::time::sleep(d).await,
    }
    Ok(())
}

/// How much of a call's deadline is kept for the provider to answer: waits (for a slot, or
/// after a 429) end before it.
fn answer_time(settings: &crate::settings::Settings) -> std::time::Duration {
    (settings.upstream_timeout / 3).min(std::time::Duration::from_secs(2))
}

/// What one more attempt of a call sends.
struct Call<'a> {
    upstream: &'a Pool,
    method: &'a Method,
    target: &'a Target<'a>,
    fields: Fields<'a>,
    inject: (&'a [(header::HeaderName, HeaderValue)], u64),
}

/// The provider answered `429`: it did not act on the call, whatever its method, so it is sent
/// again after the provider's `Retry-After` (or the entry's documented wait), up to three
/// times, while the call's deadline allows. Otherwise the provider's `429` goes back as it is.
#[allow(clippy::too_many_arguments)]
async fn again_after_429(
    state: &ProxyState,
    provider: &shared::catalog::Provider,
    connection_id: &str,
    deadline_at: std::time::Instant,
    mut resp: Response<UpBody>,
    call: Call<'_>,
    body: &mut UpstreamBody,
    deadline: &mut Deadline,
) -> Result<Response<UpBody>, ApiError> {
    let documented = provider.rate_limit.as_ref().map_or(std::time::Duration::from_secs(1), |l| l.wait);
    for _ in 0..3 {
        let wait = crate::provider_limits::retry_after(resp.headers(), documented);
        if std::time::Instant::now() + wait + answer_time(&state.settings) > deadline_at {
            break;
        }
        tracing::info!(
            wait_ms = wait.as_millis() as u64,
            "provider answered 429; sending the call again after its wait"
        );
        drop(resp);
        tokio::time::sleep(wait).await;
        wait_for_slot(state, provider, connection_id, deadline_at).await?;
        resp = send(call.upstream, call.method, call.target, call.fields, body, call.inject, deadline).await?;
        if resp.status() != http::StatusCode::TOO_MANY_REQUESTS {
            break;
        }
    }
    Ok(resp)
}

/// The answer to a call made with a credential connection's values. When the provider's answer
/// says the credentials are bad (its statuses, or a rule on its body), the same check the
/// refresher runs decides, once, under the connection's lock: a 403 may be about the resource
/// rather than the key. Still good: the answer goes back as it came. Refused: the connection
/// is marked `needs_reauth` and the caller gets 409.
#[allow(clippy::too_many_arguments)]
async fn credential_answer(
    state: &ProxyState,
    provider: &shared::catalog::Provider,
    spec: &shared::credentials::CredentialSpec,
    connection_id: &str,
    version: i64,
    resp: Response<UpBody>,
    deadline: Deadline,
    (raw_ok, head): (bool, bool),
) -> Result<Response<ResponseBody>, ApiError> {
    use shared::credentials::Verdict;
    let status = resp.status().as_u16();
    tracing::Span::current().record("upstream_status", status);
    let (verdict, answer) = if spec.reads_body() && !head {
        let (bytes, answer) = read_answer(resp, deadline, state.settings.max_body, raw_ok).await?;
        (spec.judge(status, &bytes), answer)
    } else {
        (spec.judge(status, b""), relay(resp, deadline, raw_ok))
    };
    match verdict {
        Verdict::Refused(_) => {}
        Verdict::AppRefused(message) => {
            tracing::warn!(provider = %provider.id, %message, "the provider refused this integration's own credentials");
            return Ok(answer);
        }
        Verdict::Accepted | Verdict::Unavailable(_) => return Ok(answer),
    }
    tracing::info!("provider refused the credentials; checking them again");
    let outcome =
        Box::pin(state.core.tokens.refresh(&provider.id, connection_id, Trigger::Unauthorized { version })).await;
    match outcome {
        Ok(Outcome::NeedsReauth { reason }) => {
            state.cache.forget(&provider.id, connection_id);
            Err(proxy_error(
                ErrorCode::NeedsReauth,
                format!(
                    "{} refused the connection's credentials ({reason}); the end user must connect again",
                    provider.display_name
                ),
            ))
        }
        Ok(Outcome::NotFound) => Err(proxy_error(ErrorCode::ConnectionNotFound, "the connection was deleted")),
        Ok(_) => Ok(answer),
        Err(e) => {
            let e = ApiError::from(e);
            if e.code == ErrorCode::Unavailable {
                state.database_failed();
            }
            Ok(answer)
        }
    }
}

/// A provider's answer read whole (within `max` bytes and the call's deadline), for an answer
/// whose body must be judged before it goes back: the bytes, and the answer to send (its
/// fields as [`relay`] sends them, kept as they arrived when `raw_ok`).
async fn read_answer(
    resp: Response<UpBody>,
    mut deadline: Deadline,
    max: usize,
    raw_ok: bool,
) -> Result<(Bytes, Response<ResponseBody>), ApiError> {
    let (mut parts, mut body) = answer_parts(resp, raw_ok);
    // The length is stated anew from what is sent.
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut whole = bytes::BytesMut::new();
    let mut first: Option<Bytes> = None;
    loop {
        let frame = tokio::select! {
            biased;
            f = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)) => f,
            _ = &mut deadline => {
                return Err(proxy_error(ErrorCode::UpstreamTimeout, "the provider's API did not answer in time"))
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|_| {
            proxy_error(ErrorCode::UpstreamUnreachable, "the provider's answer could not be read whole")
        })?;
        let Ok(data) = frame.into_data() else { continue };
        if first.as_ref().map_or(0, Bytes::len) + whole.len() + data.len() > max {
            return Err(proxy_error(
                ErrorCode::UpstreamUnreachable,
                "the provider's answer is larger than the proxy holds",
            ));
        }
        // Most answers come in one frame: kept as it is, copied only if a second one follows.
        match first.take() {
            None if whole.is_empty() => first = Some(data),
            Some(f) => {
                whole.extend_from_slice(&f);
                whole.extend_from_slice(&data);
            }
            None => whole.extend_from_slice(&data),
        }
    }
    let bytes = first.unwrap_or_else(|| whole.freeze());
    let answer = Response::from_parts(parts, Either::Right(RelayBody { body, deadline, ready: Some(bytes.clone()) }));
    Ok((bytes, answer))
}
