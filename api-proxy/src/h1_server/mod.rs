//! The proxy's HTTP/1.1 server connection, for the calls it serves most.
//!
//! hyper's server connection cost about a third of the proxy's own CPU per call: a state
//! machine general enough for every kind of request, timers registered per request, and
//! encoding through several layers. This one serves the common case directly: requests whose
//! body is empty or of a known, small length (read whole before the call, as the proxy holds
//! such bodies anyway to retry them), answered in one write when the answer is at hand.
//!
//! Everything else is handed to hyper, which serves the connection from that request on, with
//! the bytes already read given back to it: bodies in chunked coding or too large to hold,
//! `Expect` (100-continue), and HTTP/2 (the client's preface, or ALPN `h2` over TLS, decided by
//! the caller of [`serve`]).
//!
//! Parsing is strict, as a front end's must be against request smuggling (RFC 9112 §6.3, §11.2):
//! a request with both `Transfer-Encoding` and `Content-Length`, with `Transfer-Encoding` in
//! HTTP/1.0, with differing or malformed lengths, or (in HTTP/1.1) without exactly one `Host`
//! is answered 400 and the connection closed, as is any head that does not parse. A connection
//! is kept alive only when both sides can tell where every message ends.

use crate::wire::{
    encode_response_head, parse_request, put_chunk_size, put_header_number, Framing, Io, LocalExec, Notes, Parsed,
    RawHead,
};
use crate::wire::{BODY_READ, INLINE_BODY, MAX_HEAD, READ_SIZE};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

mod hyper_side;
mod stopping;
use hyper_side::{serve_hyper, Hyper, Rewind};
pub use stopping::Stopping;
use stopping::Watch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// A caller's connection, which can be made to close with a reset.
pub trait Reset {
    /// Makes closing the connection send a reset (RST) instead of ending it in order (FIN):
    /// whatever is unsent is dropped, nothing more is exchanged, and the kernel keeps no
    /// TIME_WAIT state for it.
    fn reset_on_close(&self);
}

impl Reset for tokio::net::TcpStream {
    fn reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }
}

impl<T: Reset> Reset for tokio_rustls::server::TlsStream<T> {
    fn reset_on_close(&self) {
        self.get_ref().0.reset_on_close();
    }
}

/// In-memory connections (tests) have no reset: they just close.
#[cfg(test)]
impl Reset for tokio::io::DuplexStream {
    fn reset_on_close(&self) {}
}

/// What HTTP/2's client preface starts with (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How connections are served.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a caller has to send a request's head and a held body, counted from when the
    /// connection starts waiting for it (so also how long an idle kept-alive connection stays);
    /// up to twice this in the worst case (see `Conn::timer`).
    pub head_timeout: Duration,
    /// Bodies of a known length up to this size are read before the call; larger ones stream
    /// (through hyper).
    pub held_body: usize,
    /// Serve every connection with hyper's HTTP/1.1 server, kept alive (the reference stack).
    pub hyper_only: bool,
}

/// An answer body that may carry the provider's header fields as they arrived (see
/// [`RawHead`]): written to the caller after the answer's map, filtered as the proxy
/// filters answers (hop-by-hop fields, `x-authbridge-*`, fields `Connection` lists; the framing
/// is stated anew).
pub trait RawFields {
    /// The fields, and whether their `Connection` field named any others.
    fn raw_fields(&self) -> Option<(&RawHead, bool)>;
}

/// A request's body as the handler gets it.
pub enum CallerBody {
    /// Read whole (perhaps empty), by our server: the request's header fields come with it as
    /// they arrived (its `HeaderMap` is left empty; see [`CallerBody::fields`]).
    Held(Bytes, Option<RawHead>),
    /// Streaming from the caller, through hyper.
    Streaming(Incoming),
}

impl CallerBody {
    /// The request's header fields as they arrived, when our server read the request (hyper's
    /// requests have theirs in the request's map).
    pub fn fields(&self) -> Option<&RawHead> {
        match self {
            CallerBody::Held(_, head) => head.as_ref(),
            CallerBody::Streaming(_) => None,
        }
    }
}

/// Serves one caller's connection: HTTP/1.1 here, handing it to hyper's HTTP/1.1 server for a
/// request this one does not serve itself (the connection's last), or to hyper's HTTP/2 server
/// when the caller opens with HTTP/2's preface (or `h2` is true: ALPN chose it). The body of a
/// request this server holds is read only once `gate` admits the request from its head.
/// `caller` hears whether the connection behaves like a caller's while its first head is
/// awaited: `false` when a read left that head unfinished, `true` when it then arrives.
pub async fn serve<T, F, Fut, B, G, GFut>(
    io: T,
    h2: bool,
    handler: F,
    gate: G,
    options: Rc<Options>,
    stopping: Rc<Stopping>,
    caller: impl Fn(bool),
) where
    T: Io + Reset,
    F: Fn(Request<CallerBody>) -> Fut + Clone + 'static,
    Fut: Future<Output = Response<B>> + 'static,
    B: Body<Data = Bytes> + RawFields + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    G: Fn(&Request<()>, &RawHead) -> GFut,
    GFut: Future<Output = Option<Response<B>>>,
{
    if h2 {
        return Box::pin(serve_hyper(Rewind::new(io, Bytes::new()), Hyper::Http2, handler, &stopping)).await;
    }
    if options.hyper_only {
        return Box::pin(hyper_side::serve_hyper_only(io, options.head_timeout, handler, &stopping)).await;
    }
    let mut conn = Conn {
        io,
        buf: BytesMut::new(),
        out: BytesMut::new(),
        timeout: options.head_timeout,
        served: 0,
        armed_at: 0,
        timer: Box::pin(tokio::time::sleep(options.head_timeout)),
        watch: Watch::new(stopping.clone()),
    };
    // The first head is waited for by this future alone; what serves requests (the handler's
    // future among it) is allocated only once one has arrived, so a connection that never sends
    // a whole head, as a slowloris's do not, holds little memory.
    let first = conn.next_request(Some(&caller), &options, &stopping, &gate).await;
    match first {
        Next::Closed => return,
        Next::Reset => return conn.reset(),
        _ => {}
    }
    Box::pin(serve_requests(conn, first, handler, gate, options, stopping)).await
}

/// Serves a connection's requests, from its first (`next`) on.
async fn serve_requests<T, F, Fut, B, G, GFut>(
    mut conn: Conn<T>,
    mut next: Next<B>,
    handler: F,
    gate: G,
    options: Rc<Options>,
    stopping: Rc<Stopping>,
) where
    T: Io + Reset,
    F: Fn(Request<CallerBody>) -> Fut + Clone + 'static,
    Fut: Future<Output = Response<B>> + 'static,
    B: Body<Data = Bytes> + RawFields + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    G: Fn(&Request<()>, &RawHead) -> GFut,
    GFut: Future<Output = Option<Response<B>>>,
{
    loop {
        conn.watch.waiting(false);
        let (req, keep_alive) = match next {
            Next::Request(req, keep_alive) => (req, keep_alive),
            Next::Closed => return,
            Next::Reset => return conn.reset(),
            Next::Answer(resp, head_request, v11) => {
                // Refused before its body was read: the body's bytes are still on their way, so
                // the connection cannot serve another request.
                let _ = conn.write_response(resp, head_request, v11, false).await;
                return conn.close().await;
            }
            Next::Refuse(status, message) => return conn.refuse(status, message).await,
            // Boxed: hyper's servers are for the uncommon requests, and inline their state
            // would be part of every connection's.
            Next::ToHyper(prefix) => {
                let http1 = Hyper::Http1 { head_timeout: options.head_timeout, kept_alive: false };
                return Box::pin(serve_hyper(conn.rewind(prefix), http1, handler, &stopping)).await;
            }
            Next::ToH2 => {
                return Box::pin(serve_hyper(conn.rewind(Bytes::new()), Hyper::Http2, handler, &stopping)).await
            }
        };
        let head_request = req.method() == Method::HEAD;
        let v11 = req.version() == Version::HTTP_11;
        let connect = req.method() == Method::CONNECT;
        let resp = handler(req).await;
        // A caller's `CONNECT` would be followed by a tunnel's bytes, not a request.
        let keep_alive = keep_alive && !connect && !stopping.is_stopping();
        match conn.write_response(resp, head_request, v11, keep_alive).await {
            Ok(true) => conn.served += 1,
            Ok(false) => return conn.close().await,
            Err(e) => return tracing::debug!(error = %e, "writing an answer failed; connection closed"),
        }
        conn.watch.waiting(true);
        next = conn.next_request(None, &options, &stopping, &gate).await;
    }
}

/// What the connection does next. (Returned once per request and taken apart at once: boxing
/// the request to shrink it would cost an allocation per request.)
#[allow(clippy::large_enum_variant)]
enum Next<B> {
    /// Serve this request; keep the connection alive after it if `true`.
    Request(Request<CallerBody>, bool),
    /// Write this answer (to a request that was a `HEAD`, over HTTP/1.1), then close: the gate
    /// refused the request before its body was read.
    Answer(Response<B>, bool, bool),
    /// The caller closed the connection, or let it idle past the head timeout after an answer.
    Closed,
    /// Close with a reset, answering nothing: a head did not arrive in time, or the connection
    /// is closed (for idling past the head timeout, or shed) before it completed any request.
    /// Such a connection is what a slowloris holds, by the thousand, reopening each one it
    /// loses: a 408 and an orderly close would cost a write, a shutdown, the reads of a lingering
    /// close and a TIME_WAIT per socket, all for an attacker (with the kernel's delivery into
    /// its sockets, about two fifths of the proxy's CPU samples during one). A server may close
    /// a connection at any time (RFC 9112 §9.6), and real callers send a head in one piece, not
    /// over ten seconds. (A held body that is late gets its 408: its head carried an API key the
    /// gate admitted.)
    Reset,
    /// Answer with this status and message, then close.
    Refuse(StatusCode, &'static str),
    /// Let hyper's HTTP/1.1 server serve the connection from this request on (these bytes,
    /// then whatever is buffered).
    ToHyper(Bytes),
    /// The caller speaks HTTP/2.
    ToH2,
}

/// What happened while waiting for bytes from the caller.
enum Read {
    Some,
    Eof,
    TimedOut,
    Stopping,
}

struct Conn<T> {
    io: T,
    /// Read from the caller, not yet used.
    buf: BytesMut,
    /// An answer being put together for one write.
    out: BytesMut,
    /// The head timeout.
    timeout: Duration,
    /// Answers written so far, and how many had been when `timer` was last set.
    served: u64,
    armed_at: u64,
    /// Fires `timeout` after it was set. A connection that answered a request since then is
    /// given another `timeout` from that moment; one that did not has waited a whole `timeout`
    /// for its head. So a head is waited for at least `timeout`, at most twice that, without a
    /// timer (or a clock read) per request.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Wakes the connection's task when the worker stops.
    watch: Watch,
}

impl<T: Io> Conn<T> {
    /// Reads more from the caller: at least `room` bytes of space. While `idle` (nothing of a
    /// request read yet), a stopping server ends the wait.
    async fn read(&mut self, room: usize, idle: bool) -> std::io::Result<Read> {
        self.buf.reserve(room);
        std::future::poll_fn(|cx| {
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Read::Eof)),
                Poll::Ready(Ok(_)) => return Poll::Ready(Ok(Read::Some)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            // Registered on every wait, so a shed reaches a connection whatever it waits for.
            if self.watch.stopped(cx.waker()) && (idle || self.watch.shed()) {
                return Poll::Ready(Ok(Read::Stopping));
            }
            while self.timer.as_mut().poll(cx).is_ready() {
                if self.served == self.armed_at {
                    return Poll::Ready(Ok(Read::TimedOut));
                }
                self.armed_at = self.served;
                let at = tokio::time::Instant::now() + self.timeout;
                self.timer.as_mut().reset(at);
            }
            Poll::Pending
        })
        .await
    }

    /// Whether the connection has not shown itself a caller's: it is mid-head, or has never
    /// completed a request.
    fn unproven(&self) -> bool {
        !self.buf.is_empty() || self.served == 0
    }

    /// Waits for the next request's head (and its held body) and decides how it is served.
    /// `first` is given for a connection's first request: told when a read leaves the head
    /// unfinished (`false`), and when it completes after that (`true`).
    async fn next_request<B, G, GFut>(
        &mut self,
        first: Option<&dyn Fn(bool)>,
        options: &Options,
        stopping: &Stopping,
        gate: &G,
    ) -> Next<B>
    where
        G: Fn(&Request<()>, &RawHead) -> GFut,
        GFut: Future<Output = Option<Response<B>>>,
    {
        let mut unfinished = false;
        loop {
            if !self.buf.is_empty() {
                if first.is_some() && self.buf.starts_with(H2_PREFACE) {
                    return Next::ToH2;
                }
                if first.is_some() && self.buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&self.buf) {
                    // Perhaps HTTP/2's preface: wait for the rest of it.
                } else {
                    match parse_request(&mut self.buf) {
                        Parsed::Head(head, raw, req, notes) => {
                            if let (true, Some(told)) = (unfinished, first) {
                                told(true);
                            }
                            return self.admit(head, raw, req, notes, options, gate).await;
                        }
                        Parsed::Partial if self.buf.len() > MAX_HEAD => {
                            return Next::Refuse(
                                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                "the request head is too large",
                            )
                        }
                        Parsed::Partial => {
                            if let (false, Some(told)) = (unfinished, first) {
                                unfinished = true;
                                told(false);
                            }
                        }
                        Parsed::Bad(status, message) => return Next::Refuse(status, message),
                    }
                }
            }
            let idle = self.buf.is_empty();
            if idle && stopping.is_stopping() {
                return Next::Closed;
            }
            match self.read(READ_SIZE, idle).await {
                Ok(Read::Some) => {}
                // See `Next::Reset`. (A graceful stop closes in order, whatever the connection.)
                Ok(Read::TimedOut) if self.unproven() => return Next::Reset,
                Ok(Read::Stopping) if self.watch.shed() && self.unproven() => return Next::Reset,
                Ok(_) | Err(_) => return Next::Closed,
            }
        }
    }

    /// Checks a parsed request's framing and reads its held body (once the gate let it in);
    /// or hands it on.
    async fn admit<B, G, GFut>(
        &mut self,
        head: Bytes,
        raw: RawHead,
        req: Request<()>,
        notes: Notes,
        options: &Options,
        gate: &G,
    ) -> Next<B>
    where
        G: Fn(&Request<()>, &RawHead) -> GFut,
        GFut: Future<Output = Option<Response<B>>>,
    {
        let (length, keep_alive) = match admission(req.version(), &notes, options.held_body) {
            Admission::Held { length, keep_alive } => (length, keep_alive),
            Admission::ToHyper => return Next::ToHyper(head),
            Admission::Refuse(message) => return Next::Refuse(StatusCode::BAD_REQUEST, message),
        };
        // A body is read (and memory given to it) only for a request the gate admits from its
        // head alone: a caller without a valid key cannot make the proxy hold bodies.
        if length > self.buf.len() {
            if let Some(refused) = gate(&req, &raw).await {
                return Next::Answer(refused, req.method() == Method::HEAD, req.version() == Version::HTTP_11);
            }
        }
        while self.buf.len() < length {
            // In pieces: the buffer grows with what arrives, not with what the head announced.
            match self.read((length - self.buf.len()).min(BODY_READ), false).await {
                Ok(Read::Some) => {}
                Ok(Read::TimedOut) => {
                    return Next::Refuse(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time")
                }
                Ok(_) | Err(_) => return Next::Closed,
            }
        }
        let body = if length == 0 { Bytes::new() } else { self.buf.split_to(length).freeze() };
        if self.buf.capacity() > BODY_READ {
            // What follows the body moves to a buffer of its own, so the large one is freed with
            // the body once the call is done instead of staying with the connection.
            self.buf = BytesMut::from(&self.buf[..]);
        }
        drop(head);
        let (parts, ()) = req.into_parts();
        Next::Request(Request::from_parts(parts, CallerBody::Held(body, Some(raw))), keep_alive)
    }

    /// The connection, with `prefix` and what is buffered to be read again, for hyper.
    fn rewind(self, prefix: Bytes) -> Rewind<T> {
        let pending = if prefix.is_empty() {
            self.buf.freeze()
        } else {
            let mut all = BytesMut::with_capacity(prefix.len() + self.buf.len());
            all.extend_from_slice(&prefix);
            all.extend_from_slice(&self.buf);
            all.freeze()
        };
        Rewind::new(self.io, pending)
    }

    /// Writes an answer; whether the connection stays open after it.
    async fn write_response<B>(
        &mut self,
        resp: Response<B>,
        head_request: bool,
        v11: bool,
        mut keep_alive: bool,
    ) -> std::io::Result<bool>
    where
        B: Body<Data = Bytes> + RawFields,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = resp.into_parts();
        let status = parts.status;
        let bodiless = head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = if bodiless {
            Framing::None
        } else if let Some(n) = body.size_hint().exact() {
            Framing::Length(n)
        } else if v11 {
            Framing::Chunked
        } else {
            // An HTTP/1.0 caller knows no chunked coding: the body ends when the connection does.
            keep_alive = false;
            Framing::Close
        };
        let out = &mut self.out;
        out.clear();
        encode_response_head(out, status, &parts.headers, body.raw_fields(), framing, keep_alive, v11);
        if head_request && !parts.headers.contains_key(header::CONTENT_LENGTH) && status != StatusCode::NO_CONTENT {
            // A HEAD answer made here (not relayed) states the length a GET would have.
            if let Some(n) = body.size_hint().exact() {
                put_header_number(out, b"content-length: ", n);
            }
        }
        out.extend_from_slice(b"\r\n");
        if bodiless {
            drop(body);
            self.flush_out().await?;
            return Ok(keep_alive);
        }
        let mut body = std::pin::pin!(body);
        let mut sent: u64 = 0;
        loop {
            // Whatever the body has ready is added to the same write; the write goes out when
            // the body must be waited for, or has ended.
            let frame = match std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    self.flush_out().await?;
                    std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                }
            };
            match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue }; // trailers are not relayed
                    if data.is_empty() {
                        continue;
                    }
                    sent += data.len() as u64;
                    if let Framing::Length(n) = framing {
                        if sent > n {
                            return Err(std::io::Error::other("the answer's body is longer than its length"));
                        }
                    }
                    if framing == Framing::Chunked {
                        put_chunk_size(&mut self.out, data.len());
                    }
                    if data.len() <= INLINE_BODY {
                        self.out.extend_from_slice(&data);
                    } else {
                        self.flush_out_unflushed().await?;
                        self.io.write_all(&data).await?;
                    }
                    if framing == Framing::Chunked {
                        self.out.extend_from_slice(b"\r\n");
                    }
                    if self.out.len() >= 4 * INLINE_BODY {
                        self.flush_out_unflushed().await?;
                    }
                }
                Some(Err(e)) => {
                    // The caller learns of it by the connection closing before the body's end.
                    let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                    let _ = self.flush_out().await;
                    return Err(std::io::Error::other(e));
                }
                None => {
                    match framing {
                        Framing::Length(n) if sent != n => {
                            let _ = self.flush_out().await;
                            return Err(std::io::Error::other("the answer's body is shorter than its length"));
                        }
                        Framing::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
                        _ => {}
                    }
                    self.flush_out().await?;
                    return Ok(keep_alive);
                }
            }
        }
    }

    /// Writes what `out` holds, without flushing the stream.
    async fn flush_out_unflushed(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Writes what `out` holds and flushes the stream (TLS holds written bytes until then).
    async fn flush_out(&mut self) -> std::io::Result<()> {
        self.flush_out_unflushed().await?;
        self.io.flush().await
    }

    /// Answers a request that cannot be served with a JSON error (`invalid_request`, with the
    /// status that says why), then closes.
    async fn refuse(mut self, status: StatusCode, message: &'static str) {
        // The proxy's own error answer (JSON, its marker header), with the status that says why.
        let e = shared::http::ApiError::new(shared::http::ErrorCode::InvalidRequest, message);
        let fields = error_fields(&e);
        let body = e.body();
        self.out.clear();
        encode_response_head(&mut self.out, status, &fields, None, Framing::Length(body.len() as u64), false, true);
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body.as_bytes());
        if self.flush_out().await.is_ok() {
            self.close().await;
        }
    }

    /// Closes after a final answer: our side first, then whatever the caller still sends is
    /// read and dropped for a moment, so that it cannot reset the connection (and lose the
    /// answer) before the caller has read it (RFC 9112 §9.6).
    async fn close(mut self) {
        if self.io.shutdown().await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut scrap = 0usize;
            while scrap < 256 * 1024 {
                self.buf.clear();
                match self.read(READ_SIZE, false).await {
                    Ok(Read::Some) => scrap += self.buf.len(),
                    _ => break,
                }
            }
        })
        .await;
    }
}

impl<T: Io + Reset> Conn<T> {
    /// Closes at once with a reset ([`Next::Reset`]).
    fn reset(self) {
        self.io.reset_on_close();
    }
}

/// The header fields of an error the proxy answers itself: JSON, and the marker that tells a
/// caller the answer is the proxy's, not the provider's (`shared::http::ApiError::headers`).
pub fn error_fields(e: &shared::http::ApiError) -> HeaderMap {
    let mut fields = HeaderMap::new();
    fields.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    for (name, value) in e.headers() {
        if let Ok(v) = header::HeaderValue::try_from(value) {
            fields.insert(header::HeaderName::from_static(name), v);
        }
    }
    fields
}

/// How a parsed request is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Here: its body (`length` bytes, perhaps none) is read whole first; the connection stays
    /// open after the answer if `keep_alive`.
    Held { length: usize, keep_alive: bool },
    /// By hyper, from this request on (a chunked or large body, or `Expect`).
    ToHyper,
    /// Refused with 400 (the message says why), and the connection closed.
    Refuse(&'static str),
}

/// The framing rules (RFC 9112 §6.1, §6.3, §3.2; §11.2 on smuggling): a request is served here
/// only when its length is unambiguous.
fn admission(version: Version, notes: &Notes, held_body: usize) -> Admission {
    let v11 = version == Version::HTTP_11;
    if notes.hosts > 1 || (v11 && notes.hosts == 0) {
        return Admission::Refuse("a request needs exactly one Host header");
    }
    let length = match notes.length {
        Ok(l) => l,
        Err(message) => return Admission::Refuse(message),
    };
    if notes.transfer_encoding {
        if !v11 {
            return Admission::Refuse("Transfer-Encoding is not allowed in HTTP/1.0");
        }
        if length.is_some() {
            return Admission::Refuse("a request may not have both Transfer-Encoding and Content-Length");
        }
        return Admission::ToHyper;
    }
    match length {
        Some(n) if n > held_body as u64 => Admission::ToHyper,
        _ if notes.expect => Admission::ToHyper,
        n => Admission::Held { length: n.unwrap_or(0) as usize, keep_alive: !notes.close && (v11 || notes.keep_alive) },
    }
}

/// What the server decides for the request head at the front of `bytes`: `None` while the head
/// is incomplete; the status it refuses with; or how it serves the request, the request as the
/// handler would get it, and the head's length. (For fuzzing and tests: the same parsing and
/// rules as a connection uses.)
#[allow(clippy::type_complexity)]
pub fn decide(bytes: &[u8], held_body: usize) -> Option<Result<(Admission, Request<()>, usize), StatusCode>> {
    let mut buf = BytesMut::from(bytes);
    match parse_request(&mut buf) {
        Parsed::Partial => None,
        Parsed::Bad(status, _) => Some(Err(status)),
        Parsed::Head(head, raw, mut req, notes) => {
            let admission = admission(req.version(), &notes, held_body);
            *req.headers_mut() = raw.to_map();
            Some(match admission {
                Admission::Refuse(_) => Err(StatusCode::BAD_REQUEST),
                a => Ok((a, req, head.len())),
            })
        }
    }
}

#[cfg(test)]
mod tests;
