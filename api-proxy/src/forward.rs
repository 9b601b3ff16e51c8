//! Forwarding one call: resolve the upstream URL safely, attach the token, stream the answer.
//!
//! Built on hyper directly (no higher-level client): the proxy's hot path is the upstream
//! call, and every layer above hyper re-parsed the URL and copied the request once more.

use crate::cache::Token;
use crate::deadline::Deadline;
use crate::h1_server::CallerBody;
use crate::pool::{SendError, UpBody};
use crate::server::Worker;
use crate::ProxyState;
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use shared::auth::Scope;
use shared::catalog::valid_connection_id;
use shared::http::{ApiError, ErrorCode};
use shared::tokens::{Outcome, Trigger};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use url::Url;

/// Whether a header field (its name in any case) describes one hop (RFC 9110 §7.6.1) or
/// belongs to authbridge, and so is never forwarded either way: `Connection`, `Keep-Alive`,
/// `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`, `x-authbridge-*`. (Fields `Connection` lists are too.)
pub fn hop_by_hop(name: &[u8]) -> bool {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    // Told apart by length first: most fields are none of these.
    let listed = match name.len() {
        2 => is(b"te"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        18 => is(b"proxy-authenticate"),
        19 => is(b"proxy-authorization"),
        _ => false,
    };
    listed || (name.len() >= 13 && name[..13].eq_ignore_ascii_case(b"x-authbridge-"))
}

fn strip(name: &header::HeaderName, connection_listed: &[header::HeaderName]) -> bool {
    hop_by_hop(name.as_str().as_bytes()) || connection_listed.contains(name)
}

/// Header names the `Connection` header lists: hop-by-hop as well. Most messages have no
/// `Connection` header, or list only `keep-alive` or `close` (which name no header of their
/// own to strip, or one stripped anyway): those allocate nothing.
fn connection_listed(headers: &HeaderMap) -> Vec<header::HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| crate::h1::listed_fields(v.as_bytes()))
        .filter_map(|t| header::HeaderName::from_bytes(t).ok())
        .collect()
}

/// A provider's scheme and authority, parsed once per base on each worker thread.
#[derive(Debug)]
pub struct Origin {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
}

/// Where a proxied call goes: the provider's origin, and the call's path (the base's path, then
/// the caller's tail) and query, borrowed as they are and escaped as they are written. What is
/// written holds only characters a URI's path and query may hold (`push_escaped` makes sure),
/// so our HTTP/1.1 client writes it into the request line directly; an [`http::Uri`] is made
/// only where one is needed (hyper's clients, connecting).
#[derive(Clone, Debug)]
pub struct Target<'a> {
    origin: std::rc::Rc<Origin>,
    base_path: &'a str,
    tail: &'a str,
    query: &'a str,
}

impl Target<'_> {
    /// The base URL as the catalog entry writes it, for a call with no path of its own: without
    /// the trailing slash the base is stored with, unless the entry wrote one.
    pub fn bare(mut self, base_slash: bool) -> Self {
        if !base_slash && self.tail.is_empty() && self.base_path.len() > 1 {
            self.base_path = self.base_path.strip_suffix('/').unwrap_or(self.base_path);
        }
        self
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn https(&self) -> bool {
        self.origin.scheme == http::uri::Scheme::HTTPS
    }

    /// Writes `/path?query` (ASCII, a valid URI path and query).
    pub fn write_path_and_query(&self, out: &mut impl BufMut) {
        push_escaped(out, self.base_path.as_bytes(), false);
        if !self.tail.is_empty() {
            if !self.base_path.ends_with('/') {
                out.put_u8(b'/');
            }
            push_escaped(out, self.tail.as_bytes(), false);
        }
        if !self.query.is_empty() {
            out.put_u8(b'?');
            push_escaped(out, self.query.as_bytes(), true);
        }
    }

    /// `/path?query`.
    pub fn path_and_query(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.base_path.len() + self.tail.len() + self.query.len() + 2);
        self.write_path_and_query(&mut out);
        out
    }

    /// The absolute URI.
    pub fn uri(&self) -> Result<http::Uri, &'static str> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.origin.scheme.clone());
        parts.authority = Some(self.origin.authority.clone());
        parts.path_and_query = Some(
            http::uri::PathAndQuery::from_maybe_shared(Bytes::from(self.path_and_query()))
                .map_err(|_| "the path is not a valid URI path")?,
        );
        http::Uri::from_parts(parts).map_err(|_| "the path is not a valid URI path")
    }
}

#[cfg(test)]
impl<'a> TryFrom<&'a http::Uri> for Target<'a> {
    type Error = &'static str;

    /// An absolute URI's target (its path and query as they are).
    fn try_from(uri: &'a http::Uri) -> Result<Self, Self::Error> {
        let origin = Origin {
            scheme: uri.scheme().cloned().ok_or("the URI has no scheme")?,
            authority: uri.authority().cloned().ok_or("the URI has no host")?,
        };
        Ok(Self { origin: origin.into(), base_path: uri.path(), tail: "", query: uri.query().unwrap_or("") })
    }
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.path_and_query();
        write!(f, "{}://{}{}", self.origin.scheme, self.origin.authority, String::from_utf8_lossy(&path))
    }
}

/// Whether `bytes` holds a control character: C0, DEL, or (UTF-8) C1.
fn has_control(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| {
        b < 0x20 || b == 0x7f || (b == 0xc2 && bytes.get(i + 1).is_some_and(|n| (0x80..0xa0).contains(n)))
    })
}

/// The upstream target for `tail` under `base`, or why not. The result always has the base's
/// scheme, host and port, and a path under the base's path. Refused, because some server
/// between us and the provider's code could read them as a step out of the base: dot segments,
/// plain, percent-encoded or encoded twice (`%252e%252e`), or with path parameters (`..;/`,
/// which Tomcat and Spring read as `..`); empty segments (`a//b`, `//host`; a trailing `/` is
/// kept); backslashes; encoded slashes that start a path or sit beside dots; control characters.
pub fn upstream_url<'a>(base: &'a Url, raw_tail: &'a str, query: &'a str) -> Result<Target<'a>, &'static str> {
    if raw_tail.starts_with('/') {
        return Err("the path must not start with '/'");
    }
    let mut segments = raw_tail.as_bytes().split(|&b| b == b'/').peekable();
    while let Some(seg) = segments.next() {
        if seg.is_empty() && segments.peek().is_some() {
            return Err("empty segments ('//') are not allowed in the path");
        }
        check_segment(seg)?;
        // Most segments hold no escapes: decoded only when needed, and again while decoding
        // still changes them (a server that decodes twice must see nothing worse).
        let mut decoded = std::borrow::Cow::Borrowed(seg);
        for _ in 0..3 {
            if !decoded.contains(&b'%') {
                break;
            }
            let next = percent_decode(&decoded);
            if next == *decoded {
                break;
            }
            check_segment(&next)?;
            if next.contains(&b'/') && (next.starts_with(b"/") || next.windows(2).any(|w| w == b"..")) {
                return Err("encoded slashes are not allowed here");
            }
            decoded = std::borrow::Cow::Owned(next);
        }
    }
    if has_control(query.as_bytes()) {
        return Err("control characters are not allowed in the query");
    }
    // The base is scheme://authority/path/ (validated in the catalog: no query, no fragment, a
    // trailing slash). The origin is the base's, parsed once per base and worker; the path is
    // the base's, then the tail, with anything that may not appear in a URI path
    // percent-encoded as it is written.
    Ok(Target { origin: base_origin(base)?, base_path: base.path(), tail: raw_tail, query })
}

/// `%XX` escapes decoded; anything else (a `%` not followed by two hex digits too) kept.
fn percent_decode(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

/// A path segment (as sent or decoded) that may be forwarded: not a dot segment, even with path
/// parameters after it (`..;x`); no backslash, no control character.
fn check_segment(seg: &[u8]) -> Result<(), &'static str> {
    if seg.first() == Some(&b'.') {
        let name = seg.split(|&b| b == b';').next().unwrap_or(seg);
        if name == b"." || name == b".." {
            return Err("dot segments are not allowed in the path");
        }
    }
    if seg.contains(&b'\\') || has_control(seg) {
        return Err("backslashes and control characters are not allowed in the path");
    }
    Ok(())
}

/// A provider base's origin, parsed once per base on each worker thread.
fn base_origin(base: &Url) -> Result<std::rc::Rc<Origin>, &'static str> {
    type Origins = std::cell::RefCell<Vec<(String, std::rc::Rc<Origin>)>>;
    thread_local! {
        static ORIGINS: Origins = const { std::cell::RefCell::new(Vec::new()) };
    }
    let origin = &base[..url::Position::AfterPort];
    if let Some(found) = ORIGINS
        .with_borrow(|o| o.iter().find(|(b, _)| shared::text::same_str(b, origin)).map(|(_, found)| found.clone()))
    {
        return Ok(found);
    }
    let authority = &base[url::Position::BeforeUsername..url::Position::AfterPort];
    if authority.contains('@') {
        return Err("the provider's API base has user information");
    }
    let scheme = http::uri::Scheme::try_from(base.scheme()).map_err(|_| "the provider's API base is not a URI")?;
    let authority = http::uri::Authority::try_from(authority).map_err(|_| "the provider's API base is not a URI")?;
    let found = std::rc::Rc::new(Origin { scheme, authority });
    ORIGINS.with_borrow_mut(|o| {
        if o.len() >= 1024 {
            o.clear();
        }
        o.push((origin.to_owned(), found.clone()));
    });
    Ok(found)
}

/// Appends `raw`, percent-encoding bytes that may not appear unescaped in a URI path (or
/// query); existing escapes are kept as they are. What it appends is always a valid URI path
/// (or query): [`Target`] relies on it.
fn push_escaped(out: &mut impl BufMut, raw: &[u8], query: bool) {
    /// The bytes kept as they are: unreserved, sub-delims, `:` `@` `/`, and `%` (escapes).
    const KEEP: [bool; 256] = {
        let mut keep = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            keep[b] = c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'@'
                        | b'/'
                        | b'%'
                );
            b += 1;
        }
        keep
    };
    let mut start = 0;
    for (i, &b) in raw.iter().enumerate() {
        if KEEP[b as usize] || (query && b == b'?') {
            continue;
        }
        out.put_slice(&raw[start..i]);
        out.put_slice(&[b'%', b"0123456789ABCDEF"[(b >> 4) as usize], b"0123456789ABCDEF"[(b & 15) as usize]]);
        start = i + 1;
    }
    out.put_slice(&raw[start..]);
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

/// A request body on its way to the provider: held (small, so a 401 can be retried) or streamed
/// from the caller as it arrives (large or of unknown length; sent once).
pub enum Outbound {
    Held(Bytes),
    Streamed(Option<Streamed>),
}

/// The caller's body, frame by frame as it arrives, cut off past the size limit. Backpressure
/// reaches the caller: nothing is read from it faster than the provider takes it.
pub struct Streamed {
    body: Incoming,
    sent: u64,
    max: u64,
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
                if this.sent > this.max {
                    return Poll::Ready(Some(Err(std::io::Error::other("the request body exceeds the limit"))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(std::io::Error::other(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The body of one upstream attempt: held bytes, sent whole (and handed as they are to our
/// HTTP/1.1 client), or the caller's body as it streams.
pub enum UpstreamBody {
    Held(Option<Bytes>),
    Streamed(Streamed),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::Held(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            UpstreamBody::Streamed(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Held(b) => b.as_ref().is_none_or(Bytes::is_empty),
            UpstreamBody::Streamed(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Held(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpstreamBody::Streamed(s) => s.size_hint(),
        }
    }
}

impl Outbound {
    /// Whether the body can still be sent (again): a held one always, a streamed one once.
    fn replayable(&self) -> bool {
        matches!(self, Outbound::Held(_))
    }

    /// The body for one attempt; a streamed body can be sent only once.
    fn attempt(&mut self) -> Option<UpstreamBody> {
        match self {
            Outbound::Held(b) => Some(UpstreamBody::Held(Some(b.clone()))),
            Outbound::Streamed(s) => s.take().map(UpstreamBody::Streamed),
        }
    }
}

/// Reads the caller's body: held in memory when its length is known and small enough to replay,
/// else streamed to the provider as it arrives.
async fn outbound(body: CallerBody, settings: &crate::Settings) -> Result<Outbound, ApiError> {
    let max = settings.max_body as u64;
    let too_large = || proxy_error(ErrorCode::PayloadTooLarge, format!("request bodies are limited to {max} bytes"));
    let body = match body {
        CallerBody::Held(b, _) if b.len() as u64 > max => return Err(too_large()),
        CallerBody::Held(b, _) => return Ok(Outbound::Held(b)),
        CallerBody::Streaming(b) => b,
    };
    if body.is_end_stream() {
        return Ok(Outbound::Held(Bytes::new()));
    }
    match body.size_hint().exact() {
        Some(n) if n > max => Err(too_large()),
        Some(n) if n <= settings.retry_body as u64 => read_body(body, max).await.map(Outbound::Held),
        _ => Ok(Outbound::Streamed(Some(Streamed { body, sent: 0, max }))),
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

/// One upstream attempt: the caller's request as the provider is to get it. Its headers are not
/// copied into a map of their own: our HTTP/1.1 client writes them straight from the caller's
/// ([`Outgoing::put_caller_fields`]); a map is built only for hyper ([`Outgoing::into_request`]).
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub target: &'a Target<'a>,
    caller: Fields<'a>,
    /// The header fields that carry the connection's credentials (`Authorization: Bearer`
    /// for OAuth); the caller's fields of the same names are dropped.
    pub inject: &'a [(header::HeaderName, HeaderValue)],
    /// The credential the call is made with (see [`crate::cache::Token::tenant`]).
    pub tenant: u64,
    pub traceparent: Option<HeaderValue>,
    pub body: UpstreamBody,
}

/// A caller's header fields: as our HTTP/1.1 server read them, or in hyper's map.
#[derive(Clone, Copy)]
pub enum Fields<'a> {
    Raw(&'a crate::h1::RawHead),
    Map(&'a HeaderMap),
}

impl<'a> Fields<'a> {
    /// The first field named `name` (lowercase), if any.
    pub fn get(self, name: &str) -> Option<&'a [u8]> {
        match self {
            Fields::Raw(r) => r.get(name.as_bytes()),
            Fields::Map(m) => m.get(name).map(HeaderValue::as_bytes),
        }
    }

    /// Every field, name and value, in order.
    fn iter(self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        let (raw, map) = match self {
            Fields::Raw(r) => (Some(r.fields()), None),
            Fields::Map(m) => (None, Some(m.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())))),
        };
        raw.into_iter().flatten().chain(map.into_iter().flatten())
    }
}

/// Which of a caller's fields go on to the provider (see [`Outgoing::caller_filter`]).
struct CallerFilter<'a> {
    /// The body is held: its length is stated anew.
    held: bool,
    /// The call carries our own `traceparent`.
    ours: bool,
    /// The fields the caller's `Connection` names.
    listed: Vec<&'a [u8]>,
    /// Injected fields other than a lone `Authorization` (which is always dropped).
    injected: &'a [(header::HeaderName, HeaderValue)],
}

impl CallerFilter<'_> {
    fn keeps(&self, name: &[u8]) -> bool {
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        // Told apart by length first: most fields are none of these.
        let ours_to_state = match name.len() {
            4 => is(b"host"),
            13 => is(b"authorization"),
            14 => self.held && is(b"content-length"),
            11 => self.ours && is(b"traceparent"),
            _ => false,
        };
        !(ours_to_state
            || hop_by_hop(name)
            || self.listed.iter().any(|l| l.eq_ignore_ascii_case(name))
            || self.injected.iter().any(|(n, _)| n.as_str().as_bytes().eq_ignore_ascii_case(name)))
    }
}

impl<'a> Outgoing<'a> {
    pub fn new(
        method: &'a Method,
        target: &'a Target<'a>,
        caller: Fields<'a>,
        inject: &'a [(header::HeaderName, HeaderValue)],
        tenant: u64,
        body: UpstreamBody,
    ) -> Self {
        // The upstream call is a child of this proxied call's span (W3C trace context).
        let traceparent = shared::telemetry::current_traceparent().and_then(|t| HeaderValue::try_from(t).ok());
        Self { method, target, caller, inject, tenant, traceparent, body }
    }

    /// The caller's header fields the provider gets (its end-to-end ones): not `Host`, not its
    /// `Authorization` (the bearer token replaces it) nor the fields the credentials go in, not
    /// its `traceparent` when the call
    /// carries our own, never a hop-by-hop field or one `Connection` names, and `Content-Length`
    /// only for a streamed body (a held one's is stated from the body).
    fn caller_filter(&self) -> CallerFilter<'a> {
        // Our server noted as it parsed whether `Connection` names fields (most name none).
        let listed = match self.caller {
            Fields::Raw(raw) if !raw.may_list_fields() => Vec::new(),
            fields => crate::h1::connection_listed(fields.iter()),
        };
        let injected = match self.inject {
            [(name, _)] if name == header::AUTHORIZATION => &[],
            all => all,
        };
        CallerFilter {
            held: matches!(self.body, UpstreamBody::Held(_)),
            ours: self.traceparent.is_some(),
            listed,
            injected,
        }
    }

    /// Calls `f` with each of the caller's fields the provider gets (its end-to-end ones).
    pub fn for_each_caller_field(&self, mut f: impl FnMut(&[u8], &[u8])) {
        let filter = self.caller_filter();
        self.caller.iter().filter(|(name, _)| filter.keeps(name)).for_each(|(name, value)| f(name, value));
    }

    /// Writes the caller's fields the provider gets (its end-to-end ones) into a request's
    /// head; fields our server read are copied as they arrived where they can be.
    pub fn put_caller_fields(&self, out: &mut BytesMut) {
        match self.caller {
            Fields::Raw(raw) => {
                let filter = self.caller_filter();
                raw.put_fields(out, |name| filter.keeps(name));
            }
            Fields::Map(_) => self.for_each_caller_field(|name, value| crate::h1::put_field(out, name, value)),
        }
    }

    /// The attempt as a request, its headers in a map of their own (for hyper's clients).
    pub fn into_request(self) -> Result<Request<UpstreamBody>, &'static str> {
        let uri = self.target.uri()?;
        let mut headers = HeaderMap::new();
        self.for_each_caller_field(|name, value| {
            if let (Ok(n), Ok(v)) = (header::HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                headers.append(n, v);
            }
        });
        for (name, value) in self.inject {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(tp) = &self.traceparent {
            headers.insert(TRACEPARENT.clone(), tp.clone());
        }
        let mut request = Request::new(self.body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(request)
    }
}

static TRACEPARENT: header::HeaderName = header::HeaderName::from_static("traceparent");

/// Removes hop-by-hop and authbridge's own headers from a provider's answer, in place; most
/// answers have none, and are left untouched after one look at their names.
fn strip_response_headers(headers: &mut HeaderMap, may_list: bool) {
    let listed = if may_list { connection_listed(headers) } else { Vec::new() };
    // One name at a time: a message holds one or two such headers, if any (a clone of a header
    // name shares its bytes; nothing is allocated).
    while let Some(name) = headers.keys().find(|k| strip(k, &listed)).cloned() {
        headers.remove(name);
    }
}

#[tracing::instrument(name = "upstream", skip_all, fields(method = %method))]
async fn send(
    upstream: &Upstream,
    method: &Method,
    target: &Target<'_>,
    caller: Fields<'_>,
    body: &mut Outbound,
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

/// The provider's response body, passed to the caller frame by frame as it arrives, within the
/// call's deadline. (Its connection goes back to the pool when it has been read to its end.)
pub struct RelayBody {
    body: UpBody,
    deadline: Deadline,
    /// The whole body, when it was read before the answer went back (to judge it); `body` is
    /// then at its end, and its head still names the answer's fields.
    ready: Option<Bytes>,
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(data) = this.ready.take().filter(|d| !d.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => {
                if this.deadline.poll_expired(cx) {
                    return Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the provider's API did not finish its answer in time",
                    )))));
                }
                Poll::Pending
            }
            ready => ready,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.as_ref().is_none_or(Bytes::is_empty) && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.ready {
            Some(data) => SizeHint::with_exact(data.len() as u64),
            None => self.body.size_hint(),
        }
    }
}

/// What the proxy's server answers with: its own (JSON) answers, or a provider's, relayed.
pub type ResponseBody = Either<Full<Bytes>, RelayBody>;

impl crate::h1_server::RawFields for ResponseBody {
    fn raw_fields(&self) -> Option<(&crate::h1::RawHead, bool)> {
        match self {
            Either::Right(RelayBody { body: UpBody::Raw(raw), .. }) => {
                raw.raw_head().map(|h| (h, raw.connection_lists_fields()))
            }
            _ => None,
        }
    }
}

/// The provider's answer as the caller gets it: status, end-to-end headers (`Content-Length`
/// included: for a HEAD or 304 answer it describes the representation, RFC 9110 §8.6) and body.
/// An answer our HTTP/1.1 client read keeps its fields as they arrived when `raw_ok` (the
/// caller is on our HTTP/1.1 server, which writes them filtered the same way); otherwise they
/// are moved into the answer's map here and filtered.
fn relay(resp: Response<UpBody>, deadline: Deadline, raw_ok: bool) -> Response<ResponseBody> {
    let (parts, body) = answer_parts(resp, raw_ok);
    Response::from_parts(parts, Either::Right(RelayBody { body, deadline, ready: None }))
}

/// A provider's answer with its end-to-end headers: in the map, filtered, unless `raw_ok` (then
/// our HTTP/1.1 server writes our client's raw fields, filtered the same way).
fn answer_parts(resp: Response<UpBody>, raw_ok: bool) -> (http::response::Parts, UpBody) {
    let (mut parts, mut body) = resp.into_parts();
    // The caller's connection has its own version (an HTTP/2 provider may answer an HTTP/1.1 caller).
    parts.version = http::Version::default();
    // Our client noted whether `Connection` named any field as it parsed the head.
    let may_list = match &mut body {
        UpBody::Raw(raw) if raw_ok => false, // filtered as they are written
        UpBody::Raw(raw) => {
            raw.headers_into(&mut parts.headers);
            raw.connection_lists_fields()
        }
        UpBody::Hyper(_) => true,
    };
    strip_response_headers(&mut parts.headers, may_list);
    (parts, body)
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
    shared::text::same(head, PREFIX.as_bytes()).then(|| &path[PREFIX.len()..])
}

/// A path's first segment and the rest after its `/` (segments are short: a plain scan).
fn split_segment(path: &str) -> Option<(&str, &str)> {
    let slash = path.bytes().position(|b| b == b'/')?;
    Some((&path[..slash], &path[slash + 1..]))
}

/// `ANY /proxy/{provider}/{connection_id}/{path…}`, run in [`proxy_span`].
pub async fn proxy(
    worker: &Worker,
    memo: &std::cell::RefCell<shared::auth::ConnectionMemo>,
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
    let caller = worker.auth.authorize_on(memo, presented, Scope::Proxy, Some(&worker.limits)).await?;
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
    let deadline_at = shared::clock::recent() + state.settings.upstream_timeout;
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
        let Outbound::Held(caller_form) = &body else {
            return Err(proxy_error(
                ErrorCode::PayloadTooLarge,
                format!(
                    "provider `{provider_id}` takes its credentials in the form body: bodies are limited to {} bytes",
                    state.settings.retry_body
                ),
            ));
        };
        body = Outbound::Held(crate::inject::form(caller_form, &token.form, &token.form_encoded));
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
fn answer_time(settings: &crate::Settings) -> std::time::Duration {
    (settings.upstream_timeout / 3).min(std::time::Duration::from_secs(2))
}

/// What one more attempt of a call sends.
struct Call<'a> {
    upstream: &'a Upstream,
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
    body: &mut Outbound,
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

/// The client for providers' APIs: kept-alive connections per provider host, one pool per
/// worker (HTTP/1.1, or HTTP/2 where the provider offers it over TLS), rustls with the platform's
/// roots, a bounded connect time, no redirects followed (they go back to the caller, who decides).
pub type Upstream = crate::pool::Pool;

pub fn upstream_client(settings: &crate::Settings) -> Result<Upstream, String> {
    upstream_client_with(settings.upstream_timeout)
}

/// The client with `timeout` bounding each connection attempt (at most 10 s).
pub fn upstream_client_with(timeout: std::time::Duration) -> Result<Upstream, String> {
    use rustls_platform_verifier::ConfigVerifierExt;
    let tls = rustls::ClientConfig::with_platform_verifier().map_err(|e| format!("TLS roots: {e}"))?;
    Ok(upstream_client_tls(timeout, tls))
}

/// The client with the given TLS configuration (tests trust their own CA with it).
pub fn upstream_client_tls(timeout: std::time::Duration, tls: rustls::ClientConfig) -> Upstream {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(timeout.min(std::time::Duration::from_secs(10))));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    crate::pool::Pool::new(connector, 256, std::time::Duration::from_secs(90))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://api.example.com/v1/").unwrap()
    }

    #[test]
    fn every_hop_by_hop_field_and_only_those_are_known_as_such_whatever_their_case() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "x-authbridge-error",
            "x-authbridge-anything",
        ] {
            for spelled in [name.to_owned(), name.to_ascii_uppercase()] {
                assert!(hop_by_hop(spelled.as_bytes()), "{spelled}");
            }
        }
        for name in ["tea", "t", "trailers", "content-type", "content-length", "authorization", "x-authbridge", "host"]
        {
            assert!(!hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn plain_paths_and_queries_are_joined_under_the_base() {
        assert_eq!(
            upstream_url(&base(), "contacts/42", "a=1&b=%20").unwrap().to_string(),
            "https://api.example.com/v1/contacts/42?a=1&b=%20"
        );
        assert_eq!(upstream_url(&base(), "", "").unwrap().to_string(), "https://api.example.com/v1/");
        // `/proxy/{provider}/{id}` alone: the base as the entry wrote it.
        assert_eq!(upstream_url(&base(), "", "a=1").unwrap().bare(false).to_string(), "https://api.example.com/v1?a=1");
        assert_eq!(upstream_url(&base(), "", "").unwrap().bare(true).to_string(), "https://api.example.com/v1/");
    }

    #[test]
    fn every_accepted_target_is_a_valid_uri_under_the_base() {
        // Pieces a caller's path or query may hold, mixed at random (5,000 cases).
        let pieces = [
            "a",
            "Z9",
            "/",
            "%",
            "%2f",
            "%2e",
            "%41",
            "%zz",
            ".",
            "..",
            "?",
            "#",
            " ",
            "\"",
            "<",
            "[",
            "]",
            "|",
            "^",
            "`",
            "{",
            "\\",
            "+",
            "&",
            "=",
            "@",
            ":",
            "~",
            "\u{e9}",
            "\u{85}",
            "\u{7f}",
            "\t",
            "\r\n",
            "\u{1F600}",
        ];
        let mut next = crate::testing::random(0x5851_f42d_4c95_7f2d);
        for _ in 0..5_000 {
            let (path_len, query_len) = (1 + next(8), next(5));
            let mut take = |n| (0..n).map(|_| pieces[next(pieces.len() as u64) as usize]).collect::<String>();
            let (path, query) = (take(path_len), take(query_len));
            let base = base();
            let Ok(t) = upstream_url(&base, &path, &query) else { continue };
            let u = t.uri().unwrap_or_else(|e| panic!("{path:?} {query:?} gave {t}: {e}"));
            assert_eq!(u.path_and_query().unwrap().as_str().as_bytes(), t.path_and_query());
            assert!(t.path_and_query().iter().all(u8::is_ascii_graphic), "{t}");
            assert_eq!(u.authority().unwrap().as_str(), "api.example.com");
            assert!(u.path().starts_with("/v1/") && !u.path().split('/').any(|s| s == ".."), "{t}");
        }
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
            // Path parameters after dots (Tomcat, Spring), plain and encoded.
            "..;/admin",
            "a/..;jsessionid=x/b",
            ".;/x",
            "%2e%2e;/x",
            "..%3b/x",
            // Empty segments.
            "a//b",
            "http://evil.com/x",
            // Double (and triple) encoding.
            "%252e%252e/x",
            "%25252e%25252e/x",
            "a/%252E%252E/b",
            "%255c",
            "%252f%252fevil.com",
        ] {
            assert!(upstream_url(&base(), bad, "").is_err(), "{bad} was accepted");
        }
        // Bytes a URI may not hold are escaped, never reinterpreted.
        assert_eq!(
            upstream_url(&base(), "a b/\"q\"", "x=<1>").unwrap().to_string(),
            "https://api.example.com/v1/a%20b/%22q%22?x=%3C1%3E"
        );
        let u = upstream_url(&base(), "@evil.com/x", "").unwrap().uri().unwrap();
        assert_eq!(u.host(), Some("api.example.com"));
        let u = upstream_url(&base(), "http:/evil.com/x", "").unwrap().uri().unwrap();
        assert_eq!(u.host(), Some("api.example.com"));
        // A trailing slash is a path of its own at many APIs: kept.
        assert_eq!(upstream_url(&base(), "contacts/", "").unwrap().to_string(), "https://api.example.com/v1/contacts/");
        // Escapes that decode to nothing dangerous are forwarded as sent.
        assert_eq!(
            upstream_url(&base(), "100%25/%2541/a%2Fb", "").unwrap().to_string(),
            "https://api.example.com/v1/100%25/%2541/a%2Fb"
        );
        // Non-ASCII and control-free bytes are escaped whole; C1 controls are refused.
        assert_eq!(
            upstream_url(&base(), "caf\u{e9}/\u{1F600}", "q=\u{e9}").unwrap().to_string(),
            "https://api.example.com/v1/caf%C3%A9/%F0%9F%98%80?q=%C3%A9"
        );
        assert!(upstream_url(&base(), "a\u{85}b", "").is_err());
        assert!(upstream_url(&base(), "a", "x=\u{9f}").is_err());
        assert!(upstream_url(&base(), "a\u{7f}", "").is_err());
    }
}
