//! A lean HTTP/1.1 client for one call at a time on a kept-alive connection.
//!
//! hyper's client drives each connection from a task of its own and hands requests and answers
//! to it through channels; on the proxy's hot path that machinery cost more than nginx spends
//! on a whole request. Here the call writes its request and reads the answer itself, on the
//! worker's thread, and the answer's body is read from the connection as the caller's side
//! asks for it.
//!
//! Framing is strict (RFC 9112 §6.3), because a pooled connection must never carry a byte of
//! one answer into the next call: a connection goes back to the pool only when its answer was
//! framed by `Content-Length` or chunked coding, read exactly to its end with nothing after it,
//! over HTTP/1.1 without `Connection: close`. Anything else (close-delimited bodies, both
//! `Transfer-Encoding` and `Content-Length`, HTTP/1.0) is read and the connection is closed.
//! Malformed heads, lengths or chunks fail the call.
//!
//! Used for calls whose body is held in memory (the proxy's common case); bodies streamed from
//! the caller go through hyper, on a connection of their own.

use crate::forward::{Outgoing, UpstreamBody};
use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head.
const MAX_HEADERS: usize = 128;
/// Bodies up to this size are written in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;
/// Room made for a read of an answer's head: most heads are far smaller. Bodies of known length
/// read up to `BODY_READ` at a time, others `READ_SIZE`.
const READ_SIZE: usize = 4 * 1024;
/// The most memory a kept-alive connection keeps for writing requests between calls.
const KEPT_OUT: usize = 4 * 1024;
const BODY_READ: usize = 64 * 1024;

/// A connection's byte stream: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + 'static> Io for T {}

/// One HTTP/1.1 connection and what has been read from it but not used yet: one pointer (its
/// state is allocated once per connection), so that the answers that carry it back to the
/// pool, moved a few times on every call, stay small.
pub struct Conn(Box<State>);

pub struct State {
    io: Box<dyn Io>,
    buf: BytesMut,
    /// The request being written (kept between calls, so its memory is reused).
    out: BytesMut,
}

impl std::ops::Deref for Conn {
    type Target = State;

    fn deref(&self) -> &State {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.0
    }
}

/// Where a connection goes once an answer has been read to its end (if it can carry another
/// call): back to its pool, as host `.1` (no allocation). Tests may hand it to a function.
pub enum Done {
    /// Back to the pool, for this host and credential.
    Pool(crate::pool::Pool, usize, u64),
    #[cfg(test)]
    Call(Box<dyn FnOnce(Conn)>),
}

impl Done {
    /// The connection goes to `f`.
    #[cfg(test)]
    pub fn call(f: impl FnOnce(Conn) + 'static) -> Self {
        Done::Call(Box::new(f))
    }

    fn give(self, conn: Conn) {
        match self {
            Done::Pool(pool, host, tenant) => pool.put(host, tenant, conn),
            #[cfg(test)]
            Done::Call(f) => f(conn),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing of an answer arrived: the connection closed or failed after (or while) the request
    /// was written. On a kept-alive connection this is most often the provider closing it while
    /// idle just as the request went out.
    #[error("the connection closed before an answer arrived: {0}")]
    NoAnswer(std::io::Error),
    #[error("reading the answer: {0}")]
    Io(std::io::Error),
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
}

impl Conn {
    pub fn new(io: impl Io) -> Self {
        Self(Box::new(State { io: Box::new(io), buf: BytesMut::new(), out: BytesMut::new() }))
    }

    /// Whether the connection can no longer be used: the provider closed it, or sent bytes no
    /// request asked for. Looks without waiting (a read that would block means "still open").
    pub fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut byte);
        !matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut probe), Poll::Pending)
    }

    /// Sends `req` (origin-form URI, `Host` set) and reads the answer's head. The body is read
    /// by the returned answer's [`RawBody`], which gives the connection to `done` once the body
    /// has been read to its end, if the connection can carry another call.
    pub async fn call(mut self, req: Request<UpstreamBody>, done: Done) -> Result<Response<RawBody>, CallError> {
        let head_request = req.method() == Method::HEAD;
        let (parts, body) = req.into_parts();
        let body = match body {
            UpstreamBody::Held(bytes) => bytes.unwrap_or_default(),
            UpstreamBody::Streamed(_) => {
                return Err(CallError::Malformed("a streamed body cannot be sent on this connection"))
            }
        };
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        encode_head(&mut out, &parts.method, &parts.uri, &parts.headers, body.len());
        self.exchange(out, body, head_request, done).await
    }

    /// Sends a proxied call (`out.uri` absolute; `host` the `Host` header for it) with the
    /// headers written straight from the caller's, and reads the answer's head, as [`Conn::call`].
    pub async fn call_proxied(
        mut self,
        out: Outgoing<'_>,
        host: &HeaderValue,
        done: Done,
    ) -> Result<Response<RawBody>, CallError> {
        let head_request = *out.method == Method::HEAD;
        let body = match &out.body {
            UpstreamBody::Held(bytes) => bytes.clone().unwrap_or_default(),
            UpstreamBody::Streamed(_) => {
                return Err(CallError::Malformed("a streamed body cannot be sent on this connection"))
            }
        };
        let mut buf = std::mem::take(&mut self.out);
        buf.clear();
        encode_request_line(&mut buf, out.method, |buf| out.target.write_path_and_query(buf));
        put_field(&mut buf, b"host", host.as_bytes());
        out.put_caller_fields(&mut buf);
        for (name, value) in out.inject {
            put_field(&mut buf, name.as_str().as_bytes(), value.as_bytes());
        }
        if let Some(tp) = &out.traceparent {
            put_field(&mut buf, b"traceparent", tp.as_bytes());
        }
        put_length(&mut buf, out.method, body.len());
        self.exchange(buf, body, head_request, done).await
    }

    /// Writes a request (its head in `out`, then `body`) and reads the answer's head.
    async fn exchange(
        mut self,
        mut out: BytesMut,
        body: Bytes,
        head_request: bool,
        done: Done,
    ) -> Result<Response<RawBody>, CallError> {
        let inline = body.len() <= INLINE_BODY;
        if inline {
            out.extend_from_slice(&body);
        }
        let written = async {
            self.io.write_all(&out).await?;
            if !inline {
                self.io.write_all(&body).await?;
            }
            self.io.flush().await
        }
        .await;
        if let Err(e) = written {
            return Err(CallError::NoAnswer(e));
        }
        if out.capacity() <= KEPT_OUT {
            self.out = out; // reused by the next call (a large one's memory is not kept)
        }
        let (head, framing, reusable, lists_fields) = self.read_head(head_request).await?;
        let mut resp =
            Response::new(RawBody { conn: None, framing, reusable, done: None, lists_fields, head: Some(head.2) });
        *resp.status_mut() = head.0;
        *resp.version_mut() = head.1;
        let body = resp.body_mut();
        body.conn = Some(self);
        body.done = Some(done);
        body.finish_if_ended();
        Ok(resp)
    }

    async fn read_more(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx, READ_SIZE)).await
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<std::io::Result<usize>> {
        self.buf.reserve(room);
        let state = &mut *self.0;
        tokio_util::io::poll_read_buf(Pin::new(&mut state.io), cx, &mut state.buf)
    }

    /// The answer's head (interim 1xx answers skipped), its framing, and whether the
    /// connection may be reused after it.
    async fn read_head(
        &mut self,
        head_request: bool,
    ) -> Result<((StatusCode, Version, RawHead), Framing, bool, bool), CallError> {
        let mut received = false;
        loop {
            if !self.buf.is_empty() {
                received = true;
                if let Some((status, version, headers, notes)) = parse_head(&mut self.buf)? {
                    if status.is_informational() {
                        if status == StatusCode::SWITCHING_PROTOCOLS {
                            return Err(CallError::Malformed("101 Switching Protocols was not asked for"));
                        }
                        continue; // 100 Continue, 103 Early Hints: the final answer follows
                    }
                    let (framing, framed) = framing(status, &notes, head_request)?;
                    let keep_alive = version == Version::HTTP_11 && !notes.close;
                    return Ok(((status, version, headers), framing, framed && keep_alive, notes.lists_fields));
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(CallError::Malformed("the answer's head is too large"));
                }
            }
            match self.read_more().await {
                Ok(0) if !received => {
                    return Err(CallError::NoAnswer(std::io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(0) => return Err(CallError::Malformed("the connection closed inside the answer's head")),
                Ok(_) => {}
                Err(e) if !received => return Err(CallError::NoAnswer(e)),
                Err(e) => return Err(CallError::Io(e)),
            }
        }
    }
}

/// `METHOD /path?query HTTP/1.1`, the headers, and the body's length.
fn encode_head(out: &mut BytesMut, method: &Method, uri: &http::Uri, headers: &HeaderMap, body_len: usize) {
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str()).as_bytes();
    encode_request_line(out, method, |out| out.extend_from_slice(path_and_query));
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue; // the framing is ours to state
        }
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    put_length(out, method, body_len);
}

/// `METHOD /path?query HTTP/1.1` (origin form; `target` writes the path and query).
fn encode_request_line(out: &mut BytesMut, method: &Method, target: impl FnOnce(&mut BytesMut)) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    target(out);
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

pub(crate) fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The body's length (for a body, or a method that defines one: RFC 9110 §8.6, a user agent
/// sends Content-Length for POST, PUT and PATCH even when the body is empty), and the head's end.
fn put_length(out: &mut BytesMut, method: &Method, body_len: usize) {
    if body_len > 0 || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses a complete response head off the front of `buf`, if it holds one.
fn parse_head(buf: &mut BytesMut) -> Result<Option<(StatusCode, Version, RawHead, Notes)>, CallError> {
    // Left uninitialised: zeroing room for every possible field on every answer costs more than
    // parsing the few an answer has.
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(CallError::Malformed("too many header fields")),
        Err(_) => return Err(CallError::Malformed("the answer's head does not parse")),
    };
    let status = resp.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(CallError::Malformed("bad status code"))?;
    let version = match resp.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(CallError::Malformed("unsupported HTTP version")),
    };
    let spans = field_spans(buf, resp.headers);
    let head = buf.split_to(len).freeze();
    let mut notes = Notes::new();
    for (i, &(ns, ne, vs, ve)) in spans.iter().enumerate() {
        notes.note(i, &head[ns..ne], &head[vs..ve]);
    }
    Ok(Some((status, version, RawHead::new(head, spans), notes)))
}

/// An answer's header fields as they arrived (the head's bytes, and where each field is in
/// them), checked by the parser but not copied into a map: our server writes them to its
/// caller as they are (filtered); a map is built only where one is needed
/// ([`RawBody::headers_into`]).
pub struct RawHead {
    head: Bytes,
    spans: Spans,
    /// Where the first `Authorization` and `traceparent` fields are (field indexes, `NONE` if
    /// absent), when noted as the head was parsed: a request's, whose both the proxy looks up
    /// on every call.
    known: Option<[u8; 2]>,
    /// Whether a `Connection` field may name other fields (false only when noted as parsed).
    may_list: bool,
}

/// No such field (a head has at most `MAX_HEADERS` fields, fewer than this).
const NONE: u8 = u8::MAX;

impl RawHead {
    pub(crate) fn new(head: Bytes, spans: Spans) -> Self {
        Self { head, spans, known: None, may_list: true }
    }

    /// Whether a `Connection` field may name other fields (as far as the parse noted).
    pub fn may_list_fields(&self) -> bool {
        self.may_list
    }

    /// A head whose `Authorization` and `traceparent` fields were noted as it was parsed.
    pub(crate) fn with_known(head: Bytes, spans: Spans, notes: &Notes) -> Self {
        Self { head, spans, known: Some([notes.authorization, notes.traceparent]), may_list: notes.lists_fields }
    }

    /// The first field named `name` (lowercase), if any.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        if let Some([authorization, traceparent]) = self.known {
            let noted = match name {
                b"authorization" => Some(authorization),
                b"traceparent" => Some(traceparent),
                _ => None,
            };
            if let Some(at) = noted {
                let &(.., vs, ve) = self.spans.get(usize::from(at))?;
                return Some(&self.head[vs..ve]);
            }
        }
        // Told apart by length first (no slice of the head is made for the others).
        let &(.., vs, ve) = self
            .spans
            .iter()
            .find(|&&(ns, ne, ..)| ne - ns == name.len() && self.head[ns..ne].eq_ignore_ascii_case(name))?;
        Some(&self.head[vs..ve])
    }

    /// A map of the fields (for code that needs one; the proxy's hot path does not).
    pub fn to_map(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(self.spans.len());
        for (name, value) in self.fields() {
            // Checked by the parser: a token, and a value without control characters.
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                headers.append(name, value);
            }
        }
        headers
    }

    /// A response head's fields, and whether its `Connection` field names others (for tests).
    #[cfg(test)]
    pub(crate) fn parse(bytes: &[u8]) -> (Self, bool) {
        let (_, _, raw, notes) = parse_head(&mut BytesMut::from(bytes)).unwrap().expect("a complete head");
        (raw, notes.lists_fields)
    }

    /// Each field's name and value, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|&(ns, ne, vs, ve)| (&self.head[ns..ne], &self.head[vs..ve]))
    }

    /// Writes the fields `keep` accepts to `out`, in order, as `name: value` lines. A line that
    /// arrived in exactly that form is copied as it arrived, and a run of such lines next to
    /// each other in the head in one copy (most heads are written so): one copy for a message's
    /// forwarded fields instead of two per field.
    pub fn put_fields(&self, out: &mut BytesMut, mut keep: impl FnMut(&[u8]) -> bool) {
        let h = &self.head[..];
        // The lines waiting to be copied, as one range of the head.
        let mut run: Option<(usize, usize)> = None;
        let flush = |out: &mut BytesMut, run: &mut Option<(usize, usize)>| {
            if let Some((start, end)) = run.take() {
                out.extend_from_slice(&h[start..end]);
            }
        };
        for &(ns, ne, vs, ve) in &self.spans {
            let name = &h[ns..ne];
            if !keep(name) {
                continue;
            }
            let as_written = vs == ne + 2 && h[ne..vs] == *b": " && h.get(ve..ve + 2) == Some(b"\r\n");
            match run {
                Some((_, ref mut end)) if as_written && *end == ns => *end = ve + 2,
                _ => {
                    flush(out, &mut run);
                    if as_written {
                        run = Some((ns, ve + 2));
                    } else {
                        put_field(out, name, &h[vs..ve]);
                    }
                }
            }
        }
        flush(out, &mut run);
    }
}

/// Where a parsed head's fields are in `buf` (name start and end, value start and end).
pub(crate) type Spans = Vec<(usize, usize, usize, usize)>;

/// Header values share the head's bytes instead of being copied: the parser's fields are noted
/// as offsets into `buf`, so the head can be split off the buffer and sliced.
pub(crate) fn field_spans(buf: &[u8], fields: &[httparse::Header<'_>]) -> Spans {
    let base = buf.as_ptr() as usize;
    fields
        .iter()
        .map(|h| {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            (name, name + h.name.len(), value, value + h.value.len())
        })
        .collect()
}

/// What framing and connection handling need to know of a head, noted as its map is built (so
/// they need no lookups in the map afterwards).
#[derive(Debug)]
pub(crate) struct Notes {
    /// `Host` fields.
    pub hosts: usize,
    /// `Content-Length`: none, one number (every value the same), or why it is refused.
    pub length: Result<Option<u64>, &'static str>,
    /// Whether there is a `Transfer-Encoding`, and whether its last coding is `chunked`.
    pub transfer_encoding: bool,
    pub chunked_last: bool,
    pub expect: bool,
    /// `Connection` options: `close`, `keep-alive`, and whether it names any other (a header
    /// field that must not be forwarded, RFC 9110 §7.6.1).
    pub close: bool,
    pub keep_alive: bool,
    pub lists_fields: bool,
    /// The index of the first `Authorization` and `traceparent` field, or `NONE`.
    pub authorization: u8,
    pub traceparent: u8,
}

/// A `Connection` field's options (RFC 9110 §7.6.1), trimmed, empty ones skipped.
pub fn connection_options(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|o| !o.is_empty())
}

/// The fields a message's `Connection` fields name, among `fields` (all of a message's): they
/// are hop-by-hop too (RFC 9110 §7.6.1).
pub fn connection_listed<'a>(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<&'a [u8]> {
    fields.filter(|(name, _)| name.eq_ignore_ascii_case(b"connection")).flat_map(|(_, v)| listed_fields(v)).collect()
}

/// The `Connection` options that name header fields (all but `close` and `keep-alive`): those
/// fields are hop-by-hop too, and never forwarded.
pub fn listed_fields(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    connection_options(value).filter(|o| !o.eq_ignore_ascii_case(b"close") && !o.eq_ignore_ascii_case(b"keep-alive"))
}

impl Notes {
    pub(crate) fn new() -> Self {
        Self {
            hosts: 0,
            length: Ok(None),
            transfer_encoding: false,
            chunked_last: false,
            expect: false,
            close: false,
            keep_alive: false,
            lists_fields: false,
            authorization: NONE,
            traceparent: NONE,
        }
    }

    /// Notes field `index` (its name in any case, as it arrived).
    pub(crate) fn note(&mut self, index: usize, name: &[u8], value: &[u8]) {
        // Told apart by length first: most fields are none of these.
        match name.len() {
            13 if self.authorization == NONE && name.eq_ignore_ascii_case(b"authorization") => {
                self.authorization = u8::try_from(index).unwrap_or(NONE)
            }
            11 if self.traceparent == NONE && name.eq_ignore_ascii_case(b"traceparent") => {
                self.traceparent = u8::try_from(index).unwrap_or(NONE)
            }
            4 if name.eq_ignore_ascii_case(b"host") => self.hosts += 1,
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if let Ok(length) = &mut self.length {
                    if let Err(e) = merge_length(length, value) {
                        self.length = Err(e);
                    }
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.transfer_encoding = true;
                let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
                self.chunked_last = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            6 if name.eq_ignore_ascii_case(b"expect") => self.expect = true,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                // Most say only `keep-alive` (or `close`).
                if value.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                    return;
                }
                for option in connection_options(value) {
                    if option.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if option.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    } else {
                        self.lists_fields = true;
                    }
                }
            }
            _ => {}
        }
    }
}

/// Adds one `Content-Length` field's value to what the earlier ones said: every value (a list,
/// or repeated fields) must be the same plain decimal number (RFC 9112 §6.3).
fn merge_length(length: &mut Option<u64>, value: &[u8]) -> Result<(), &'static str> {
    // Most are one number, and the only field.
    if length.is_none() && !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit) {
        *length = Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
        return Ok(());
    }
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err("bad Content-Length");
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length values");
        }
        *length = Some(n);
    }
    Ok(())
}

/// How the answer's body is delimited (RFC 9112 §6.3), and whether that framing lets the
/// connection carry another call.
fn framing(status: StatusCode, notes: &Notes, head_request: bool) -> Result<(Framing, bool), CallError> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), true));
    }
    if notes.transfer_encoding {
        // Both framings: read by the coding, then close.
        let framed = matches!(notes.length, Ok(None));
        return Ok(if notes.chunked_last {
            (Framing::Chunked(Chunk::Size { value: 0, digits: 0, ext: false, cr: false }), framed)
        } else {
            (Framing::Close, false)
        });
    }
    Ok(match notes.length.map_err(CallError::Malformed)? {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

#[derive(Debug)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the provider closes the connection.
    Close,
    Ended,
}

#[derive(Debug)]
enum Chunk {
    /// Reading a chunk-size line (hex digits, then optional extensions, then CRLF); `cr`: the
    /// line's CR has been read.
    Size { value: u64, digits: u8, ext: bool, cr: bool },
    /// This many bytes of chunk data are left.
    Data(u64),
    /// The CRLF after a chunk's data; `cr`: its CR has been read.
    DataEnd { cr: bool },
    /// Trailer lines after the last chunk, until an empty line; `line` bytes into the current one.
    Trailers { line: usize },
}

/// The body of an answer read by [`Conn::call`], read from the connection as it is polled.
pub struct RawBody {
    conn: Option<Conn>,
    framing: Framing,
    reusable: bool,
    done: Option<Done>,
    lists_fields: bool,
    /// The answer's header fields, until they are moved into the answer's map.
    head: Option<RawHead>,
}

impl RawBody {
    /// Whether the answer's `Connection` header named fields (which are then not relayed);
    /// most answers' name none, or only `keep-alive` or `close`.
    pub fn connection_lists_fields(&self) -> bool {
        self.lists_fields
    }

    /// The answer's header fields as they arrived, unless they were moved into its map.
    pub fn raw_head(&self) -> Option<&RawHead> {
        self.head.as_ref()
    }

    /// Moves the answer's header fields into `headers` (after any it holds).
    pub fn headers_into(&mut self, headers: &mut HeaderMap) {
        let Some(raw) = self.head.take() else { return };
        headers.reserve(raw.spans.len());
        for &(ns, ne, vs, ve) in &raw.spans {
            // Checked by the parser: a token, and a value without control characters.
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(&raw.head[ns..ne]), HeaderValue::from_maybe_shared(raw.head.slice(vs..ve)))
            {
                headers.append(name, value);
            }
        }
    }

    /// Once the body has ended: gives the connection back if it can carry another call (nothing
    /// read past the answer), else closes it.
    fn finish_if_ended(&mut self) {
        if matches!(self.framing, Framing::Length(0)) {
            self.framing = Framing::Ended;
        }
        if !matches!(self.framing, Framing::Ended) {
            return;
        }
        if let (Some(conn), Some(done)) = (self.conn.take(), self.done.take()) {
            if self.reusable && conn.buf.is_empty() {
                done.give(conn);
            }
        }
    }

    /// The next piece of body already in the buffer, decoding chunked framing; `None` when more
    /// bytes must be read first (or the body has ended).
    fn decode(&mut self) -> Result<Option<Bytes>, CallError> {
        let Some(conn) = self.conn.as_mut() else { return Ok(None) };
        let buf = &mut conn.buf;
        loop {
            if buf.is_empty() {
                return Ok(None);
            }
            match &mut self.framing {
                Framing::Ended => return Ok(None),
                Framing::Length(left) => {
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    return Ok(Some(buf.split_to(n).freeze()));
                }
                Framing::Close => return Ok(Some(buf.split().freeze())),
                Framing::Chunked(chunk) => match chunk {
                    Chunk::Size { value, digits, ext, cr } => {
                        let b = buf[0];
                        buf.advance(1);
                        match b {
                            // CRLF only: a bare LF is read as a line's end by some parsers and
                            // not by others, which is how chunked bodies are smuggled.
                            b'\n' if !*cr => return Err(CallError::Malformed("a chunk size line not ended by CRLF")),
                            b'\n' => {
                                if *digits == 0 {
                                    return Err(CallError::Malformed("a chunk without a size"));
                                }
                                *chunk = if *value == 0 { Chunk::Trailers { line: 0 } } else { Chunk::Data(*value) };
                            }
                            _ if *cr => return Err(CallError::Malformed("a CR not followed by LF")),
                            b'\r' => *cr = true,
                            _ if *ext => {} // chunk extensions are ignored
                            b';' | b' ' | b'\t' if *digits > 0 => *ext = true,
                            _ => {
                                let d = (b as char).to_digit(16).ok_or(CallError::Malformed("bad chunk size"))?;
                                if *digits >= 15 {
                                    return Err(CallError::Malformed("chunk size too large"));
                                }
                                *value = *value * 16 + u64::from(d);
                                *digits += 1;
                            }
                        }
                    }
                    Chunk::Data(left) => {
                        let n = (*left).min(buf.len() as u64) as usize;
                        *left -= n as u64;
                        if *left == 0 {
                            *chunk = Chunk::DataEnd { cr: false };
                        }
                        return Ok(Some(buf.split_to(n).freeze()));
                    }
                    Chunk::DataEnd { cr } => {
                        let b = buf[0];
                        buf.advance(1);
                        match b {
                            b'\r' if !*cr => *cr = true,
                            b'\n' if *cr => *chunk = Chunk::Size { value: 0, digits: 0, ext: false, cr: false },
                            // Exactly CRLF after the data: anything else (a bare LF included)
                            // means the size was wrong.
                            _ => return Err(CallError::Malformed("chunk data not followed by CRLF")),
                        }
                    }
                    Chunk::Trailers { line } => {
                        let b = buf[0];
                        buf.advance(1);
                        match b {
                            b'\n' if *line == 0 => self.framing = Framing::Ended,
                            b'\n' => *line = 0,
                            b'\r' => {}
                            _ => *line += 1,
                        }
                        if matches!(self.framing, Framing::Ended) {
                            return Ok(None);
                        }
                    }
                },
            }
        }
    }
}

impl Drop for RawBody {
    fn drop(&mut self) {
        // Dropped before its end (the caller went away): the connection is closed with it.
        self.finish_if_ended();
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            match this.decode() {
                Ok(Some(data)) => {
                    this.finish_if_ended();
                    if data.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e))));
                }
            }
            this.finish_if_ended();
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            let room = match this.framing {
                Framing::Length(left) => (left as usize).clamp(READ_SIZE, BODY_READ),
                _ => READ_SIZE * 4,
            };
            match conn.poll_read_more(cx, room) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    if matches!(this.framing, Framing::Close) {
                        this.framing = Framing::Ended;
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the provider closed the connection inside the answer's body",
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Ended | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Ended => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::run;
    use http_body_util::BodyExt;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;

    /// What the test provider does for each request on its one connection.
    enum Step {
        /// Writes this answer.
        Answer(&'static [u8]),
        /// Writes this answer a byte at a time, yielding between bytes.
        Trickle(&'static [u8]),
        /// Writes this answer, then closes the connection.
        AnswerThenClose(&'static [u8]),
        /// Closes the connection without answering.
        Close,
    }

    /// A provider on one connection that reads each request (head and `Content-Length` body)
    /// and acts out the next step; the requests it read, as bytes.
    async fn provider(steps: Vec<Step>) -> (std::net::SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            for step in steps {
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                while buf.len() < head_end + len {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                log.lock().unwrap().push(buf.drain(..head_end + len).collect());
                match step {
                    Step::Answer(a) => sock.write_all(a).await.unwrap(),
                    Step::Trickle(a) => {
                        for b in a {
                            sock.write_all(&[*b]).await.unwrap();
                            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        }
                    }
                    Step::AnswerThenClose(a) => {
                        sock.write_all(a).await.unwrap();
                        return;
                    }
                    Step::Close => return,
                }
            }
            // Keep the connection open until the client is done with it.
            let _ = sock.read(&mut [0u8; 1]).await;
        });
        (addr, seen)
    }

    fn request(method: Method, body: &'static str) -> Request<UpstreamBody> {
        let mut req = Request::new(UpstreamBody::Held(Some(Bytes::from(body))));
        *req.method_mut() = method;
        *req.uri_mut() = "/v1/x?q=1".parse().unwrap();
        req.headers_mut().insert(header::HOST, HeaderValue::from_static("api.test"));
        req
    }

    /// A connection to `addr` and the slot the pool would keep it in once it is given back.
    async fn connect(addr: std::net::SocketAddr) -> (Conn, Rc<RefCell<Option<Conn>>>) {
        (Conn::new(tokio::net::TcpStream::connect(addr).await.unwrap()), Rc::new(RefCell::new(None)))
    }

    async fn call(
        conn: Conn,
        slot: &Rc<RefCell<Option<Conn>>>,
        req: Request<UpstreamBody>,
    ) -> (Response<()>, Result<Bytes, String>) {
        let slot = slot.clone();
        let resp = conn.call(req, Done::call(move |c| *slot.borrow_mut() = Some(c))).await.expect("an answer");
        let (mut parts, mut body) = resp.into_parts();
        body.headers_into(&mut parts.headers);
        let body = body.collect().await.map(|c| c.to_bytes()).map_err(|e| e.to_string());
        (Response::from_parts(parts, ()), body)
    }

    #[test]
    fn a_length_framed_answer_is_read_exactly_and_the_connection_carries_the_next_call() {
        run(async {
            let (addr, seen) = provider(vec![
                Step::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello"),
                Step::Trickle(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabc"),
            ])
            .await;
            let (conn, slot) = connect(addr).await;
            let (resp, body) = call(conn, &slot, request(Method::GET, "")).await;
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()["x-a"], "1");
            assert_eq!(body.unwrap(), "hello");
            let mut conn = slot.borrow_mut().take().expect("given back");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            assert!(!conn.is_closed(), "an idle connection the provider keeps open is open");
            let (resp, body) = call(conn, &slot, request(Method::POST, "abc")).await;
            assert_eq!(resp.status(), StatusCode::CREATED);
            assert_eq!(body.unwrap(), "abc");
            assert!(slot.borrow().is_some());
            let seen = seen.lock().unwrap();
            assert_eq!(seen[0], b"GET /v1/x?q=1 HTTP/1.1\r\nhost: api.test\r\n\r\n");
            assert_eq!(seen[1], b"POST /v1/x?q=1 HTTP/1.1\r\nhost: api.test\r\ncontent-length: 3\r\n\r\nabc");
        });
    }

    /// A request head parsed as our server keeps it (the fields as offsets into its bytes).
    fn request_head(text: &[u8]) -> RawHead {
        let mut buf = BytesMut::from(text);
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut fields);
        let len = match req.parse(&buf).unwrap() {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => unreachable!(),
        };
        let spans = field_spans(&buf, req.headers);
        RawHead::new(buf.split_to(len).freeze(), spans)
    }

    #[test]
    fn a_request_heads_fields_are_found_in_any_case() {
        let text: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\nAUTHORIZATION: Bearer k\r\nTraceParent: 00-a\r\nX-A: 1\r\nauthorization: second\r\n\r\n";
        let head = request_head(text);
        assert_eq!(head.get(b"authorization"), Some(&b"Bearer k"[..]), "the first one");
        assert_eq!(head.get(b"traceparent"), Some(&b"00-a"[..]));
        assert_eq!(head.get(b"connection"), None);
        assert_eq!(head.get(b"x-a"), Some(&b"1"[..]));
        assert_eq!(head.fields().count(), 5);
    }

    /// A head's fields written through [`RawHead::put_fields`] read the same as written one by
    /// one, whatever their spacing and whichever are left out.
    #[test]
    fn fields_copied_as_they_arrived_read_as_fields_written_one_by_one() {
        let text: &[u8] =
            b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB:2\r\nC:   3  \r\nD: 4\r\nE: 5\r\nDrop: x\r\nF: \r\nG: 7\r\n\r\n";
        let head = request_head(text);
        let names: Vec<Vec<u8>> = head.fields().map(|(n, _)| n.to_vec()).collect();
        // Every subset of the fields, by bit mask.
        for mask in 0u32..(1 << names.len()) {
            let keep = |name: &[u8]| names.iter().position(|n| n == name).is_some_and(|i| mask & (1 << i) != 0);
            let mut copied = BytesMut::new();
            head.put_fields(&mut copied, keep);
            let mut one_by_one = BytesMut::new();
            for (name, value) in head.fields().filter(|(n, _)| keep(n)) {
                put_field(&mut one_by_one, name, value);
            }
            assert_eq!(copied, one_by_one, "mask {mask:b}");
        }
    }

    #[test]
    fn the_body_length_is_ours_to_state_and_empty_posts_say_zero() {
        run(async {
            let (addr, seen) = provider(vec![Step::Answer(b"HTTP/1.1 204 No Content\r\n\r\n")]).await;
            let (conn, slot) = connect(addr).await;
            let mut req = request(Method::POST, "");
            req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
            req.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            let (resp, body) = call(conn, &slot, req).await;
            assert_eq!(resp.status(), StatusCode::NO_CONTENT);
            assert!(body.unwrap().is_empty());
            assert!(slot.borrow().is_some());
            assert_eq!(
                seen.lock().unwrap()[0],
                b"POST /v1/x?q=1 HTTP/1.1\r\nhost: api.test\r\ncontent-length: 0\r\n\r\n"
            );
        });
    }

    #[test]
    fn chunked_answers_are_decoded_with_extensions_and_trailers_even_a_byte_at_a_time() {
        run(async {
            let answer: &[u8] =
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n";
            let (addr, _) = provider(vec![Step::Answer(answer), Step::Trickle(answer)]).await;
            let (conn, slot) = connect(addr).await;
            let (_, body) = call(conn, &slot, request(Method::GET, "")).await;
            assert_eq!(body.unwrap(), "hello world");
            let conn = slot.borrow_mut().take().expect("given back");
            let (_, body) = call(conn, &slot, request(Method::GET, "")).await;
            assert_eq!(body.unwrap(), "hello world");
            assert!(slot.borrow().is_some());
        });
    }

    #[test]
    fn answers_to_head_and_not_modified_have_no_body_whatever_their_length_says() {
        run(async {
            let (addr, _) = provider(vec![
                Step::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"),
                Step::Answer(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"),
                Step::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            ])
            .await;
            let (conn, slot) = connect(addr).await;
            let (resp, body) = call(conn, &slot, request(Method::HEAD, "")).await;
            assert_eq!(resp.headers()["content-length"], "10", "kept: it describes the representation");
            assert!(body.unwrap().is_empty());
            let conn = slot.borrow_mut().take().expect("given back at once");
            let (resp, body) = call(conn, &slot, request(Method::GET, "")).await;
            assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
            assert!(body.unwrap().is_empty());
            let conn = slot.borrow_mut().take().expect("given back at once");
            assert_eq!(call(conn, &slot, request(Method::GET, "")).await.1.unwrap(), "ok");
        });
    }

    #[test]
    fn interim_answers_are_skipped() {
        run(async {
            let (addr, _) = provider(vec![Step::Answer(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            )])
            .await;
            let (conn, slot) = connect(addr).await;
            let (resp, body) = call(conn, &slot, request(Method::POST, "x")).await;
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(body.unwrap(), "ok");
            assert!(slot.borrow().is_some());
        });
    }

    #[test]
    fn connections_whose_framing_cannot_be_trusted_to_end_are_not_reused() {
        for answer in [
            // Delimited by the close.
            &b"HTTP/1.1 200 OK\r\n\r\nuntil close"[..],
            // Both framings: read by the chunked coding, then closed (RFC 9112 §6.3).
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            // The provider says it will close.
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nabc",
            // HTTP/1.0.
            b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nabc",
            // Bytes after the answer that no request asked for.
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\n",
        ] {
            run(async move {
                let (addr, _) = provider(vec![Step::AnswerThenClose(answer)]).await;
                let (conn, slot) = connect(addr).await;
                let (resp, body) = call(conn, &slot, request(Method::GET, "")).await;
                assert_eq!(resp.status(), StatusCode::OK);
                let body = body.unwrap();
                assert!(body == "abc" || body == "until close", "{body:?}");
                assert!(slot.borrow().is_none(), "{}", String::from_utf8_lossy(answer));
            });
        }
    }

    #[test]
    fn malformed_answers_fail_the_call() {
        for (answer, in_body) in [
            (&b"HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\nabc"[..], false),
            (b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\nabc", false),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabc", false),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
            (b"HTTP/1.1 2000 OK\r\n\r\n", false),
            (b"NOT HTTP\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", true),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\rabc\r\n0\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\n", true),
            // After chunk data, exactly CRLF: not another byte before the LF, not a bare LF.
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX\n0\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\rX0\r\n\r\n", true),
            // A chunk size line ends with CRLF too.
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", true),
            // Cut short.
            (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", true),
            (b"HTTP/1.1 200 OK\r\ncontent-le", false),
        ] {
            run(async move {
                let (addr, _) = provider(vec![Step::AnswerThenClose(answer)]).await;
                let (conn, slot) = connect(addr).await;
                let label = String::from_utf8_lossy(answer).into_owned();
                match conn
                    .call(request(Method::GET, ""), Done::call(|_| panic!("a malformed answer's connection is reused")))
                    .await
                {
                    Err(e) => assert!(!in_body, "{label}: failed at the head: {e}"),
                    Ok(resp) => {
                        assert!(in_body, "{label}: the head was accepted");
                        assert!(resp.into_body().collect().await.is_err(), "{label}: the body was accepted");
                    }
                }
                assert!(slot.borrow().is_none());
            });
        }
    }

    #[test]
    fn a_connection_closed_before_any_answer_says_so() {
        run(async {
            let (addr, _) = provider(vec![Step::Close]).await;
            let (conn, _) = connect(addr).await;
            let r = conn.call(request(Method::GET, ""), Done::call(|_| ())).await;
            assert!(matches!(r, Err(CallError::NoAnswer(_))), "{:?}", r.err());
        });
    }

    #[test]
    fn an_idle_connection_the_provider_closed_is_seen_as_closed() {
        run(async {
            let (addr, _) =
                provider(vec![Step::AnswerThenClose(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")]).await;
            let (conn, slot) = connect(addr).await;
            let (_, body) = call(conn, &slot, request(Method::GET, "")).await;
            assert_eq!(body.unwrap(), "ok");
            let mut conn = slot.borrow_mut().take().expect("given back: the answer was framed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert!(conn.is_closed());
        });
    }

    #[test]
    fn any_framing_split_anywhere_decodes_to_the_same_body_and_ends_exactly() {
        run(async {
            let mut below = crate::testing::random(0x9e37_79b9_7f4a_7c15);
            for case in 0..300 {
                let len = below(3000) as usize;
                let body: Vec<u8> = (0..len).map(|_| below(256) as u8).collect();
                let chunked = below(2) == 0;
                let mut answer = Vec::new();
                if chunked {
                    answer.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                    let mut rest = &body[..];
                    while !rest.is_empty() {
                        let n = (1 + below(700) as usize).min(rest.len());
                        let ext = if below(4) == 0 { ";name=\"v\"" } else { "" };
                        let size = if below(2) == 0 { format!("{n:x}") } else { format!("{n:X}") };
                        answer.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
                        answer.extend_from_slice(&rest[..n]);
                        answer.extend_from_slice(b"\r\n");
                        rest = &rest[n..];
                    }
                    answer.extend_from_slice(if below(2) == 0 { b"0\r\n\r\n" } else { b"0\r\nx-sum: 1\r\n\r\n" });
                } else {
                    answer.extend_from_slice(format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").as_bytes());
                    answer.extend_from_slice(&body);
                }
                // The provider's side of an in-memory connection: the answer in random pieces.
                let (client, mut provider) = tokio::io::duplex(64 * 1024);
                let mut pieces = Vec::new();
                let mut at = 0;
                while at < answer.len() {
                    let n = (1 + below(900) as usize).min(answer.len() - at);
                    pieces.push(answer[at..at + n].to_vec());
                    at += n;
                }
                tokio::task::spawn_local(async move {
                    let mut request = [0u8; 256];
                    let _ = provider.read(&mut request).await;
                    for piece in pieces {
                        provider.write_all(&piece).await.unwrap();
                        tokio::task::yield_now().await;
                    }
                    let _ = provider.read(&mut request).await; // hold the connection open
                });
                let slot = Rc::new(RefCell::new(None));
                let (resp, got) = call(Conn::new(client), &slot, request(Method::GET, "")).await;
                assert_eq!(resp.status(), StatusCode::OK);
                assert_eq!(got.expect("the body decodes"), body, "case {case} (chunked: {chunked})");
                assert!(slot.borrow().is_some(), "case {case}: an exactly framed answer frees its connection");
            }
        });
    }
}
