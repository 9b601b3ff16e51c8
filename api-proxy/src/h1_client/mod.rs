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

use crate::outgoing::{Outgoing, UpstreamBody};
use crate::wire::{self, put_field, Io, RawHead, BODY_READ, INLINE_BODY, MAX_HEAD, READ_SIZE};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWriteExt};

/// The most memory a kept-alive connection keeps for writing requests between calls.
const KEPT_OUT: usize = 4 * 1024;

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

/// What takes connections back once their answer has been read to its end: the pool (which
/// lives above this module, so it is known only by this).
pub trait Home {
    /// Takes `conn` back, as host `host`'s, last used with credential `tenant`.
    fn put(&self, host: usize, tenant: u64, conn: Conn);
}

/// Where a connection goes once an answer has been read to its end (if it can carry another
/// call): to its home, for the host and credential it carried the call for.
pub struct Done {
    home: std::rc::Rc<dyn Home>,
    host: usize,
    tenant: u64,
}

impl Done {
    pub fn new(home: std::rc::Rc<dyn Home>, host: usize, tenant: u64) -> Self {
        Self { home, host, tenant }
    }

    /// The connection goes to `f` (for tests).
    #[cfg(test)]
    pub fn call(f: impl FnOnce(Conn) + 'static) -> Self {
        type Give = Box<dyn FnOnce(Conn)>;
        struct Once(std::cell::RefCell<Option<Give>>);
        impl Home for Once {
            fn put(&self, _: usize, _: u64, conn: Conn) {
                if let Some(f) = self.0.borrow_mut().take() {
                    f(conn)
                }
            }
        }
        Self::new(std::rc::Rc::new(Once(std::cell::RefCell::new(Some(Box::new(f))))), 0, 0)
    }

    fn give(self, conn: Conn) {
        self.home.put(self.host, self.tenant, conn)
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
        wire::encode_request_head(&mut out, &parts.method, &parts.uri, &parts.headers, body.len());
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
        wire::encode_request_line(&mut buf, out.method, |buf| out.target.write_path_and_query(buf));
        put_field(&mut buf, b"host", host.as_bytes());
        out.put_caller_fields(&mut buf);
        for (name, value) in out.inject {
            put_field(&mut buf, name.as_str().as_bytes(), value.as_bytes());
        }
        if let Some(tp) = &out.traceparent {
            put_field(&mut buf, b"traceparent", tp.as_bytes());
        }
        wire::put_length(&mut buf, out.method, body.len());
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
    ) -> Result<((StatusCode, Version, RawHead), Reading, bool, bool), CallError> {
        let mut received = false;
        loop {
            if !self.buf.is_empty() {
                received = true;
                if let Some((status, version, headers, notes)) =
                    wire::parse_answer(&mut self.buf).map_err(CallError::Malformed)?
                {
                    if status.is_informational() {
                        if status == StatusCode::SWITCHING_PROTOCOLS {
                            return Err(CallError::Malformed("101 Switching Protocols was not asked for"));
                        }
                        continue; // 100 Continue, 103 Early Hints: the final answer follows
                    }
                    let (framing, framed) =
                        wire::answer_framing(status, version, &notes, head_request).map_err(CallError::Malformed)?;
                    let framing = match framing {
                        wire::Framing::None => Reading::Length(0),
                        wire::Framing::Length(n) => Reading::Length(n),
                        wire::Framing::Chunked => {
                            Reading::Chunked(Chunk::Size { value: 0, digits: 0, lws: false, ext: false, cr: false })
                        }
                        wire::Framing::Close => Reading::Close,
                    };
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

/// What is left of an answer's body, as it is read.
#[derive(Debug)]
enum Reading {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the provider closes the connection.
    Close,
    Ended,
}

#[derive(Debug)]
enum Chunk {
    /// Reading a chunk-size line (hex digits, optional whitespace, optional extensions after a
    /// `;`, then CRLF); `lws`: whitespace after the digits has been read; `ext`: extensions have
    /// begun; `cr`: the line's CR has been read.
    Size { value: u64, digits: u8, lws: bool, ext: bool, cr: bool },
    /// This many bytes of chunk data are left.
    Data(u64),
    /// The CRLF after a chunk's data; `cr`: its CR has been read.
    DataEnd { cr: bool },
    /// Trailer lines after the last chunk, until an empty line: `line` bytes into the current
    /// one, whether its name has ended (`colon`), whether its CR has been read.
    Trailers { line: usize, colon: bool, cr: bool },
}

/// The body of an answer read by [`Conn::call`], read from the connection as it is polled.
pub struct RawBody {
    conn: Option<Conn>,
    framing: Reading,
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
        if let Some(raw) = self.head.take() {
            raw.append_to(headers);
        }
    }

    /// Once the body has ended: gives the connection back if it can carry another call (nothing
    /// read past the answer), else closes it.
    fn finish_if_ended(&mut self) {
        if matches!(self.framing, Reading::Length(0)) {
            self.framing = Reading::Ended;
        }
        if !matches!(self.framing, Reading::Ended) {
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
                Reading::Ended => return Ok(None),
                Reading::Length(left) => {
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    return Ok(Some(buf.split_to(n).freeze()));
                }
                Reading::Close => return Ok(Some(buf.split().freeze())),
                Reading::Chunked(chunk) => match chunk {
                    Chunk::Size { value, digits, lws, ext, cr } => {
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
                                *chunk = if *value == 0 {
                                    Chunk::Trailers { line: 0, colon: false, cr: false }
                                } else {
                                    Chunk::Data(*value)
                                };
                            }
                            _ if *cr => return Err(CallError::Malformed("a CR not followed by LF")),
                            b'\r' => *cr = true,
                            _ if *ext => {} // chunk extensions are ignored
                            // RFC 9112 §7.1.1: only whitespace, then `;`, may follow the size.
                            b';' if *digits > 0 => *ext = true,
                            b' ' | b'\t' if *digits > 0 => *lws = true,
                            _ if *lws => return Err(CallError::Malformed("bad chunk size line")),
                            _ => {
                                let d = (b as char).to_digit(16).ok_or(CallError::Malformed("bad chunk size"))?;
                                // Leading zeros are digits like any other; the value stays
                                // below 2^60 (no real body comes near it).
                                if *value >= 1 << 56 {
                                    return Err(CallError::Malformed("chunk size too large"));
                                }
                                *value = *value * 16 + u64::from(d);
                                *digits = digits.saturating_add(1);
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
                            b'\n' if *cr => {
                                *chunk = Chunk::Size { value: 0, digits: 0, lws: false, ext: false, cr: false }
                            }
                            // Exactly CRLF after the data: anything else (a bare LF included)
                            // means the size was wrong.
                            _ => return Err(CallError::Malformed("chunk data not followed by CRLF")),
                        }
                    }
                    // Trailer fields are not relayed, but they are read by the field syntax (RFC
                    // 9112 §7.1.2) with CRLF line ends, as the head is: where the body ends must
                    // not depend on how leniently a parser reads them.
                    Chunk::Trailers { line, colon, cr } => {
                        let b = buf[0];
                        buf.advance(1);
                        match b {
                            b'\n' if !*cr => return Err(CallError::Malformed("a trailer line not ended by CRLF")),
                            b'\n' if *line == 0 => {
                                self.framing = Reading::Ended;
                                return Ok(None);
                            }
                            b'\n' if !*colon => return Err(CallError::Malformed("a trailer line that is not a field")),
                            b'\n' => *chunk = Chunk::Trailers { line: 0, colon: false, cr: false },
                            _ if *cr => return Err(CallError::Malformed("a CR not followed by LF")),
                            b'\r' => *cr = true,
                            b':' if !*colon && *line > 0 => *colon = true,
                            _ if !*colon && !wire::is_token_byte(b) => {
                                return Err(CallError::Malformed("a bad trailer field name"))
                            }
                            _ if *colon && ((b < 0x20 && b != b'\t') || b == 0x7f) => {
                                return Err(CallError::Malformed("a bad trailer field value"))
                            }
                            _ => *line += 1,
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
                Reading::Length(left) => (left as usize).clamp(READ_SIZE, BODY_READ),
                _ => READ_SIZE * 4,
            };
            match conn.poll_read_more(cx, room) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    if matches!(this.framing, Reading::Close) {
                        this.framing = Reading::Ended;
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
        matches!(self.framing, Reading::Ended | Reading::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Reading::Length(n) => SizeHint::with_exact(n),
            Reading::Ended => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
