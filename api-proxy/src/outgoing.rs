//! The upstream request: where a proxied call goes (the SSRF guard: a caller's path never
//! leaves the provider's API), the caller's fields the provider gets, and the body it is sent
//! with. Written to the wire by [`crate::h1_client`] or handed to hyper as a request.

use crate::wire::{self, hop_by_hop, RawHead};
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request};
use http_body_util::Limited;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use url::Url;

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
        .with_borrow(|o| o.iter().find(|(b, _)| crate::text::same_str(b, origin)).map(|(_, found)| found.clone()))
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

/// A request body on its way to the provider: held (small: the same bytes are sent again when a
/// call is retried) or streamed from the caller as it arrives, cut off past the size limit
/// (large or of unknown length: sent once). Backpressure reaches the caller: nothing is read
/// from it faster than the provider takes it.
pub enum UpstreamBody {
    Held(Option<Bytes>),
    /// `None` once it has been sent.
    Streamed(Option<Limited<Incoming>>),
}

impl UpstreamBody {
    /// Whether the body can be sent again after an attempt: a held one always, a streamed one not.
    pub fn replayable(&self) -> bool {
        matches!(self, UpstreamBody::Held(_))
    }

    /// The body for one attempt: a held one as often as asked, a streamed one once.
    pub fn attempt(&mut self) -> Option<UpstreamBody> {
        match self {
            UpstreamBody::Held(b) => Some(UpstreamBody::Held(b.clone())),
            UpstreamBody::Streamed(s) => s.take().map(|s| UpstreamBody::Streamed(Some(s))),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::Held(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            UpstreamBody::Streamed(Some(s)) => Pin::new(s).poll_frame(cx),
            UpstreamBody::Streamed(None) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Held(b) => b.as_ref().is_none_or(Bytes::is_empty),
            UpstreamBody::Streamed(s) => s.as_ref().is_none_or(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Held(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpstreamBody::Streamed(Some(s)) => s.size_hint(),
            UpstreamBody::Streamed(None) => SizeHint::with_exact(0),
        }
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
    Raw(&'a RawHead),
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
            fields => wire::connection_listed(fields.iter()),
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
            Fields::Map(_) => self.for_each_caller_field(|name, value| wire::put_field(out, name, value)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::hop_by_hop;

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
