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

use crate::h1::{field_spans, Io, Notes, RawHead};
use crate::pool::LocalExec;
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
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The largest request head accepted (431 past it).
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a request head (431 past it).
const MAX_HEADERS: usize = 100;
/// Room made for a read of a request head; most are far smaller.
const READ_SIZE: usize = 4 * 1024;
/// The most a held body's read asks room for at a time.
const BODY_READ: usize = 64 * 1024;
/// Answer bodies up to this size are copied in with the head (or the chunks before them) and
/// written in one call; larger ones are written on their own.
const INLINE_BODY: usize = 16 * 1024;
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
}

/// An answer body that may carry the provider's header fields as they arrived (see
/// [`crate::h1::RawHead`]): written to the caller after the answer's map, filtered as the proxy
/// filters answers (hop-by-hop fields, `x-authbridge-*`, fields `Connection` lists; the framing
/// is stated anew).
pub trait RawFields {
    /// The fields, and whether their `Connection` field named any others.
    fn raw_fields(&self) -> Option<(&crate::h1::RawHead, bool)>;
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

/// Tells a worker's connections to finish: idle ones close, busy ones close after the answer
/// they are writing. Also closes single connections that wait on their caller, oldest first,
/// when the worker has more than it may keep ([`Stopping::shed_oldest`]).
#[derive(Default)]
pub struct Stopping {
    flag: Cell<bool>,
    /// The connections' tasks, each registered once (not once per idle wait).
    waiting: RefCell<slab::Slab<Entry>>,
    /// Counts the starts of waits for a request, so the oldest wait is the smallest number.
    waits: Cell<u64>,
    shed_pending: Cell<usize>,
}

/// A connection known to [`Stopping`].
struct Entry {
    waker: Waker,
    /// When (in [`Stopping::waits`]' order) it began waiting for its caller's next request;
    /// `BUSY` while it serves one.
    since: u64,
    /// Told to close.
    shed: bool,
}

/// [`Entry::since`] of a connection serving a request (never shed for being idle).
const BUSY: u64 = u64::MAX;

impl Stopping {
    pub fn stop(&self) {
        self.flag.set(true);
        // Woken outside the borrow: a woken task may run code that registers.
        let waiting: Vec<Waker> = self.waiting.borrow().iter().map(|(_, e)| e.waker.clone()).collect();
        waiting.into_iter().for_each(Waker::wake);
    }

    pub fn is_stopping(&self) -> bool {
        self.flag.get()
    }

    /// Closes up to `n` of the connections that have waited longest for their callers (idle
    /// kept-alive ones, or ones whose head or held body is arriving slowly: what a slowloris
    /// holds), oldest first. Connections serving a request are never chosen. How many it chose.
    /// (One scan chooses the whole batch, so shedding costs a scan per batch, not per
    /// connection.)
    pub fn shed_oldest(&self, n: usize) -> usize {
        let wakers: Vec<Waker> = {
            let mut waiting = self.waiting.borrow_mut();
            let mut oldest: Vec<(u64, usize)> =
                waiting.iter().filter(|(_, e)| e.since != BUSY && !e.shed).map(|(key, e)| (e.since, key)).collect();
            if oldest.len() > n {
                oldest.select_nth_unstable(n);
                oldest.truncate(n);
            }
            oldest
                .into_iter()
                .map(|(_, key)| {
                    let e = &mut waiting[key];
                    e.shed = true;
                    e.waker.clone()
                })
                .collect()
        };
        let chosen = wakers.len();
        self.shed_pending.set(self.shed_pending.get() + chosen);
        wakers.into_iter().for_each(Waker::wake);
        chosen
    }

    /// Connections chosen by [`Stopping::shed_oldest`] that have not closed yet.
    pub fn shed_pending(&self) -> usize {
        self.shed_pending.get()
    }

    /// Completes once [`Stopping::stop`] has been called. (Only ever awaited on the worker's
    /// thread, which also calls `stop`: no stop can slip in between check and wait.)
    async fn stopped(self: &Rc<Self>) {
        // hyper's connections are never shed: hyper keeps its own head timeout, and an HTTP/2
        // connection carries many calls.
        let mut watch = Watch { stopping: self.clone(), key: None, sheddable: false };
        std::future::poll_fn(|cx| if watch.stopped(cx.waker()) { Poll::Ready(()) } else { Poll::Pending }).await
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
    T: Io,
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
    let mut conn = Conn {
        io,
        buf: BytesMut::new(),
        out: BytesMut::new(),
        timeout: options.head_timeout,
        served: 0,
        armed_at: 0,
        timer: Box::pin(tokio::time::sleep(options.head_timeout)),
        watch: Watch { stopping: stopping.clone(), key: None, sheddable: true },
    };
    // The first head is waited for by this future alone; what serves requests (the handler's
    // future among it) is allocated only once one has arrived, so a connection that never sends
    // a whole head, as a slowloris's do not, holds little memory.
    let first = conn.next_request(Some(&caller), &options, &stopping, &gate).await;
    if matches!(first, Next::Closed) {
        return;
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
    T: Io,
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
                let http1 = Hyper::Http1(options.head_timeout);
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

/// Which of hyper's servers serves (the rest of) a connection.
enum Hyper {
    /// HTTP/1.1, with this head timeout.
    Http1(Duration),
    Http2,
}

/// Serves (the rest of) a connection with hyper's HTTP/1.1 or HTTP/2 server.
async fn serve_hyper<T, F, Fut, B>(io: Rewind<T>, protocol: Hyper, handler: F, stopping: &Rc<Stopping>)
where
    T: Io,
    F: Fn(Request<CallerBody>) -> Fut + Clone + 'static,
    Fut: Future<Output = Response<B>> + 'static,
    B: Body<Data = Bytes> + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (io, service) = (TokioIo::new(io), hyper_service(handler));
    match protocol {
        Hyper::Http1(head_timeout) => {
            // One request, then the connection closes: that request passed our framing rules
            // before it was handed over, and no later request may reach hyper's more lenient
            // ones (which accept, for one, a request with two `Host` fields).
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(head_timeout).keep_alive(false);
            until_stopped(builder.serve_connection(io, service), stopping, |c| c.graceful_shutdown()).await
        }
        Hyper::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(LocalExec);
            builder.timer(TokioTimer::new());
            until_stopped(builder.serve_connection(io, service), stopping, |c| c.graceful_shutdown()).await
        }
    }
}

/// Drives one of hyper's server connections; when the worker stops, asks it to finish what it
/// is serving (`graceful`) and waits for that.
async fn until_stopped<C, E>(conn: C, stopping: &Rc<Stopping>, graceful: impl FnOnce(Pin<&mut C>))
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopping.stopped() => {
            graceful(conn.as_mut());
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

fn hyper_service<F, Fut, B>(
    handler: F,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<B>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response<B>, std::convert::Infallible>>,
>
where
    F: Fn(Request<CallerBody>) -> Fut + Clone + 'static,
    Fut: Future<Output = Response<B>> + 'static,
    B: Body<Data = Bytes> + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let call = handler(req.map(CallerBody::Streaming));
        async move { Ok::<_, std::convert::Infallible>(call.await) }
    })
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
    /// The caller closed the connection, or let it idle past the head timeout.
    Closed,
    /// Answer with this status and message, then close.
    Refuse(StatusCode, &'static str),
    /// Let hyper's HTTP/1.1 server serve the connection from this request on (these bytes,
    /// then whatever is buffered).
    ToHyper(Bytes),
    /// The caller speaks HTTP/2.
    ToH2,
}

/// A connection's place among the tasks [`Stopping::stop`] wakes; it leaves with the connection.
struct Watch {
    stopping: Rc<Stopping>,
    key: Option<usize>,
    /// Whether [`Stopping::shed_oldest`] may choose this connection.
    sheddable: bool,
}

impl Watch {
    /// Whether the worker is stopping (or this connection was shed); if not, `waker`'s task is
    /// woken when it does (registered once; replaced only if the connection's task changes).
    fn stopped(&mut self, waker: &Waker) -> bool {
        if self.stopping.is_stopping() {
            return true;
        }
        let mut waiting = self.stopping.waiting.borrow_mut();
        match self.key {
            Some(k) if waiting[k].shed => return true,
            Some(k) if waiting[k].waker.will_wake(waker) => {}
            Some(k) => waiting[k].waker = waker.clone(),
            None => {
                let since = if self.sheddable { self.stopping.next_wait() } else { BUSY };
                self.key = Some(waiting.insert(Entry { waker: waker.clone(), since, shed: false }));
            }
        }
        false
    }

    /// Whether this connection was told to close.
    fn shed(&self) -> bool {
        self.key.is_some_and(|k| self.stopping.waiting.borrow()[k].shed)
    }

    /// Notes that the connection begins waiting for its caller's next request (`true`) or
    /// serves one (`false`).
    fn waiting(&self, waiting: bool) {
        if let Some(k) = self.key {
            let since = if waiting { self.stopping.next_wait() } else { BUSY };
            self.stopping.waiting.borrow_mut()[k].since = since;
        }
    }
}

impl Stopping {
    fn next_wait(&self) -> u64 {
        let n = self.waits.get();
        self.waits.set(n + 1);
        n
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            if self.stopping.waiting.borrow_mut().remove(k).shed {
                self.stopping.shed_pending.set(self.stopping.shed_pending.get().saturating_sub(1));
            }
        }
    }
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
                Ok(Read::TimedOut) if !self.buf.is_empty() => {
                    return Next::Refuse(StatusCode::REQUEST_TIMEOUT, "the request head did not arrive in time")
                }
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
        encode_head(out, status, &parts.headers, body.raw_fields(), framing, keep_alive, v11);
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
        let (parts, _) = crate::server::error_response(&e).into_parts();
        let body = e.body();
        self.out.clear();
        encode_head(&mut self.out, status, &parts.headers, None, Framing::Length(body.len() as u64), false, true);
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// The status line and header fields (without the blank line that ends the head).
fn encode_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
    raw: Option<(&crate::h1::RawHead, bool)>,
    framing: Framing,
    keep_alive: bool,
    v11: bool,
) {
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.extend_from_slice(b" ");
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut dated = false;
    for (name, value) in headers {
        match *name {
            // The framing and the connection's fate are this hop's to state.
            header::CONNECTION | header::TRANSFER_ENCODING => continue,
            // A HEAD or 304 answer's length describes the representation (RFC 9110 §8.6); a 204
            // has none.
            header::CONTENT_LENGTH if framing != Framing::None || status == StatusCode::NO_CONTENT => continue,
            header::DATE => dated = true,
            _ => {}
        }
        if name.as_str() == "keep-alive" {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some((raw, lists_fields)) = raw {
        // Fields `Connection` names are not relayed either (rare: most name none).
        let listed = if lists_fields { crate::h1::connection_listed(raw.fields()) } else { Vec::new() };
        raw.put_fields(out, |name| {
            if crate::forward::hop_by_hop(name)
                || (name.len() == 14
                    && name.eq_ignore_ascii_case(b"content-length")
                    && (framing != Framing::None || status == StatusCode::NO_CONTENT))
                || listed.iter().any(|l| l.eq_ignore_ascii_case(name))
            {
                return false;
            }
            dated |= name.len() == 4 && name.eq_ignore_ascii_case(b"date");
            true
        });
    }
    if !dated {
        put_date(out);
    }
    match framing {
        Framing::Length(n) => put_header_number(out, b"content-length: ", n),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if !v11 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}

fn put_header_number(out: &mut BytesMut, name: &[u8], n: u64) {
    out.extend_from_slice(name);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn put_chunk_size(out: &mut BytesMut, n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[v & 15];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// `date: …` (RFC 9110 §6.6.1), formatted once a second per thread.
fn put_date(out: &mut BytesMut) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *at = secs;
            }
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    });
}

#[allow(clippy::large_enum_variant)] // as `Next`
enum Parsed {
    /// A complete head (split off the buffer) and the request it describes.
    Head(Bytes, RawHead, Request<()>, Notes),
    Partial,
    Bad(StatusCode, &'static str),
}

/// Parses a request head off the front of `buf`, if it holds a complete one.
fn parse_request(buf: &mut BytesMut) -> Parsed {
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Bad(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields")
        }
        // A well-formed request line of another version gets 505; anything else 400.
        Err(httparse::Error::Version) if other_version(buf) => {
            return Parsed::Bad(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "this HTTP version is not served (HTTP/1.0, 1.1 and 2 are)",
            )
        }
        Err(_) => return Parsed::Bad(StatusCode::BAD_REQUEST, "the request head does not parse"),
    };
    let version = if req.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
    let Some(method) = req.method.and_then(|m| Method::from_bytes(m.as_bytes()).ok()) else {
        return Parsed::Bad(StatusCode::BAD_REQUEST, "bad method");
    };
    let base = buf.as_ptr() as usize;
    let target = req.path.map(|p| (p.as_ptr() as usize - base, p.len()));
    let spans = field_spans(buf, req.headers);
    let head = buf.split_to(len).freeze();
    let Some((at, n)) = target else { return Parsed::Bad(StatusCode::BAD_REQUEST, "no request target") };
    let Ok(uri) = http::Uri::from_maybe_shared(head.slice(at..at + n)) else {
        return Parsed::Bad(StatusCode::BAD_REQUEST, "the request target is not a valid URI");
    };
    let mut notes = Notes::new();
    for (i, &(ns, ne, vs, ve)) in spans.iter().enumerate() {
        notes.note(i, &head[ns..ne], &head[vs..ve]);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    Parsed::Head(head.clone(), RawHead::with_known(head, spans, &notes), request, notes)
}

/// Whether the request line is `METHOD TARGET HTTP/d.d` (of a version httparse does not take).
fn other_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    matches!(parts.as_slice(), [m, t, v] if !m.is_empty() && !t.is_empty()
        && v.len() == 8 && v.starts_with(b"HTTP/") && v[5].is_ascii_digit() && v[6] == b'.' && v[7].is_ascii_digit())
}

/// A connection whose first bytes have been read already: they are read again first.
pub struct Rewind<T> {
    pending: Bytes,
    io: T,
}

impl<T> Rewind<T> {
    fn new(io: T, pending: Bytes) -> Self {
        Self { pending, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.remaining());
            let part = self.pending.split_to(n);
            buf.put_slice(&part);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::run;
    use http_body_util::BodyExt;
    use hyper::body::{Frame, SizeHint};
    use std::collections::VecDeque;
    use std::time::Instant;
    use tokio::io::AsyncReadExt;

    #[test]
    fn a_first_head_left_unfinished_is_told_and_so_is_its_arrival() {
        use tokio::io::AsyncWriteExt;
        run(async {
            let told = Rc::new(std::cell::RefCell::new(Vec::new()));
            let options = Rc::new(Options { head_timeout: Duration::from_secs(5), held_body: 1024 });
            let (mut caller, io) = tokio::io::duplex(64 * 1024);
            let t = told.clone();
            let stopping = Rc::new(Stopping::default());
            tokio::task::spawn_local(serve(io, false, echo, gate, options.clone(), stopping.clone(), move |yes| {
                t.borrow_mut().push(yes)
            }));
            caller.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n").await.unwrap();
            let heard = tokio::time::timeout(Duration::from_secs(2), async {
                while told.borrow().is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
            assert!(heard.await.is_ok(), "the unfinished first head was never told");
            caller.write_all(b"\r\n").await.unwrap();
            let mut answer = [0u8; 512];
            let n = caller.read(&mut answer).await.unwrap();
            assert!(answer[..n].starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(&answer[..n]));
            // A caller's later heads, whole or in pieces, are not its first: nothing more is told.
            caller.write_all(b"GET /b HTTP/1.1\r\nHo").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            caller.write_all(b"st: h\r\n\r\n").await.unwrap();
            let n = caller.read(&mut answer).await.unwrap();
            assert!(answer[..n].starts_with(b"HTTP/1.1 200 "));
            assert_eq!(*told.borrow(), [false, true]);

            // A connection whose first head arrives whole is never told anything.
            let told = Rc::new(std::cell::RefCell::new(Vec::new()));
            let (mut caller, io) = tokio::io::duplex(64 * 1024);
            let t = told.clone();
            caller.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
            tokio::task::spawn_local(serve(io, false, echo, gate, options, stopping, move |yes| {
                t.borrow_mut().push(yes)
            }));
            let n = caller.read(&mut answer).await.unwrap();
            assert!(answer[..n].starts_with(b"HTTP/1.1 200 "));
            assert!(told.borrow().is_empty());
        });
    }

    #[test]
    fn the_fields_looked_up_on_every_call_are_found_as_parsed_whatever_their_case() {
        let mut buf = BytesMut::from(
            &b"GET /x HTTP/1.1\r\nHost: h\r\nAUTHORIZATION: Bearer first\r\nX-A: 1\r\nTraceParent: tp\r\n\
               authorization: Bearer second\r\n\r\n"[..],
        );
        let Parsed::Head(_, raw, ..) = parse_request(&mut buf) else { panic!("a complete head") };
        assert_eq!(raw.get(b"authorization"), Some(&b"Bearer first"[..]), "the first of two");
        assert_eq!(raw.get(b"traceparent"), Some(&b"tp"[..]));
        assert_eq!(raw.get(b"x-a"), Some(&b"1"[..]));
        let mut buf = BytesMut::from(&b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"[..]);
        let Parsed::Head(_, raw, ..) = parse_request(&mut buf) else { panic!("a complete head") };
        assert_eq!((raw.get(b"authorization"), raw.get(b"traceparent")), (None, None));
    }

    /// An answer body for the tests: these frames, of a stated length or not, an error after
    /// them if `fail`, and a short wait before the first one if `slow`.
    struct Frames {
        frames: VecDeque<Bytes>,
        exact: Option<u64>,
        fail: bool,
        slow: Option<Pin<Box<tokio::time::Sleep>>>,
        /// A provider's header fields as our client read them.
        raw: Option<(crate::h1::RawHead, bool)>,
    }

    impl RawFields for Frames {
        fn raw_fields(&self) -> Option<(&crate::h1::RawHead, bool)> {
            self.raw.as_ref().map(|(h, l)| (h, *l))
        }
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if let Some(s) = self.slow.as_mut() {
                if s.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.slow = None;
            }
            match self.frames.pop_front() {
                Some(f) => Poll::Ready(Some(Ok(Frame::data(f)))),
                None if self.fail => Poll::Ready(Some(Err(std::io::Error::other("the provider went away")))),
                None => Poll::Ready(None),
            }
        }

        fn size_hint(&self) -> SizeHint {
            self.exact.map(SizeHint::with_exact).unwrap_or_default()
        }
    }

    fn frames(parts: &[&'static str], exact: bool) -> Frames {
        let frames: VecDeque<Bytes> = parts.iter().map(|p| Bytes::from_static(p.as_bytes())).collect();
        let exact = exact.then(|| frames.iter().map(|f| f.len() as u64).sum());
        Frames { frames, exact, fail: false, slow: None, raw: None }
    }

    /// Echoes what it was asked (method, target, version, host, body, and how the body came),
    /// except for a few targets that answer with particular bodies.
    async fn echo(req: Request<CallerBody>) -> Response<Frames> {
        let (mut parts, body) = req.into_parts();
        if let Some(raw) = body.fields() {
            parts.headers = raw.to_map();
        }
        let (how, body) = match body {
            CallerBody::Held(b, _) => ("held", b),
            CallerBody::Streaming(b) => ("streamed", b.collect().await.map(|c| c.to_bytes()).unwrap_or_default()),
        };
        let body = match parts.uri.path() {
            "/chunked" => frames(&["ab", "cd"], false),
            "/big" => Frames {
                frames: [Bytes::from(vec![b'x'; 40_000]), Bytes::from_static(b"end")].into(),
                exact: Some(40_003),
                fail: false,
                slow: None,
                raw: None,
            },
            "/fail" => Frames { fail: true, ..frames(&["partial"], false) },
            "/slow-body" => Frames {
                slow: Some(Box::pin(tokio::time::sleep(Duration::from_millis(300)))),
                ..frames(&["late"], true)
            },
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                frames(&["late"], true)
            }
            "/raw" => Frames {
                raw: Some(crate::h1::RawHead::parse(
                    b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
                      Keep-Alive: timeout=5\r\nX-Authbridge-Error: forged\r\nTransfer-Encoding: chunked\r\n\
                      Content-Length: 99\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nX-Kept: yes\r\n\r\n",
                )),
                ..frames(&["body"], true)
            },
            _ => {
                let host = parts.headers.get(header::HOST).map_or("-", |h| h.to_str().unwrap());
                let text = format!(
                    "{} {} {:?} host={host} {how}={}",
                    parts.method,
                    parts.uri,
                    parts.version,
                    String::from_utf8_lossy(&body)
                );
                Frames { frames: [Bytes::from(text)].into(), exact: None, fail: false, slow: None, raw: None }.exact()
            }
        };
        let mut resp = Response::new(body);
        resp.headers_mut().insert("x-test", http::HeaderValue::from_static("1"));
        resp
    }

    impl Frames {
        fn exact(mut self) -> Self {
            self.exact = Some(self.frames.iter().map(|f| f.len() as u64).sum());
            self
        }
    }

    /// A server on a free port with `timeout` as its head timeout; its address and its stop.
    async fn server(timeout: Duration) -> (std::net::SocketAddr, Rc<Stopping>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let options = Rc::new(Options { head_timeout: timeout, held_body: 1024 });
        let stopping = Rc::new(Stopping::default());
        let stop = stopping.clone();
        tokio::task::spawn_local(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::task::spawn_local(serve(stream, false, echo, gate, options.clone(), stopping.clone(), |_| {}));
            }
        });
        (addr, stop)
    }

    /// Answers 401 to requests that carry `authorization: bad`; lets in the bodies of others.
    async fn gate_for(authorized: bool) -> Option<Response<Frames>> {
        if authorized {
            return None;
        }
        let body =
            Frames { frames: [Bytes::from_static(b"refused")].into(), exact: None, fail: false, slow: None, raw: None };
        let mut resp = Response::new(body.exact());
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        Some(resp)
    }

    fn gate(_: &Request<()>, fields: &RawHead) -> impl Future<Output = Option<Response<Frames>>> {
        gate_for(fields.get(b"authorization") != Some(b"bad"))
    }

    /// Writes `input` (in pieces of `split` bytes, if given) and reads until the server closes
    /// the connection; the transcript with `date` fields taken out.
    async fn exchange(addr: std::net::SocketAddr, input: &[u8], split: Option<usize>) -> String {
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.set_nodelay(true).unwrap();
        match split {
            None => sock.write_all(input).await.unwrap(),
            Some(n) => {
                for piece in input.chunks(n) {
                    sock.write_all(piece).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out))
            .await
            .expect("the server closes the connection")
            .unwrap();
        undated(&out)
    }

    fn undated(raw: &[u8]) -> String {
        String::from_utf8_lossy(raw).split("\r\n").filter(|l| !l.starts_with("date: ")).collect::<Vec<_>>().join("\r\n")
    }

    fn echoed(line: &str) -> String {
        format!("HTTP/1.1 200 OK\r\nx-test: 1\r\ncontent-length: {}\r\n\r\n{line}", line.len())
    }

    #[test]
    fn pipelined_requests_are_answered_in_order_on_one_connection_whatever_the_read_sizes() {
        run(async {
            let (addr, _) = server(Duration::from_secs(5)).await;
            let input = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n\
                POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
                GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
            let expected = format!(
                "{}{}{}",
                echoed("GET /a?x=1 HTTP/1.1 host=h held="),
                echoed("POST /b HTTP/1.1 host=h held=hello"),
                echoed("GET /c HTTP/1.1 host=h held=").replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n"),
            );
            assert_eq!(exchange(addr, input, None).await, expected);
            for split in [1, 3, 17] {
                assert_eq!(exchange(addr, input, Some(split)).await, expected, "written {split} bytes at a time");
            }
        });
    }

    #[test]
    fn random_requests_split_at_random_points_are_each_read_exactly() {
        run(async {
            let (addr, _) = server(Duration::from_secs(5)).await;
            let mut next = crate::testing::random(0x2545_f491_4f6c_dd1d);
            for case in 0..40 {
                let mut input = Vec::new();
                let mut expected = String::new();
                let count = 1 + next(4);
                for i in 0..count {
                    let len = next(40) as usize;
                    let body: String = (0..len).map(|k| char::from(b'a' + ((k as u64 + case) % 26) as u8)).collect();
                    let last = i + 1 == count;
                    let method = if len > 0 || next(2) == 0 { "POST" } else { "GET" };
                    input.extend_from_slice(format!("{method} /r{case}/{i} HTTP/1.1\r\nhost: h{i}\r\n").as_bytes());
                    if len > 0 || method == "POST" {
                        input.extend_from_slice(format!("content-length: {len}\r\n").as_bytes());
                    }
                    if last {
                        input.extend_from_slice(b"connection: close\r\n");
                    }
                    input.extend_from_slice(b"\r\n");
                    input.extend_from_slice(body.as_bytes());
                    let answer = echoed(&format!("{method} /r{case}/{i} HTTP/1.1 host=h{i} held={body}"));
                    expected.push_str(&if last {
                        answer.replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n")
                    } else {
                        answer
                    });
                }
                let split = 1 + next(input.len() as u64) as usize;
                assert_eq!(exchange(addr, &input, Some(split)).await, expected, "case {case}, split {split}");
            }
        });
    }

    #[test]
    fn ambiguous_or_malformed_requests_are_refused_and_nothing_after_them_is_served() {
        run(async {
            let (addr, _) = server(Duration::from_secs(5)).await;
            let next = "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
            for (request, status) in [
                (
                    "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
                    "400",
                ),
                (
                    "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                    "400",
                ),
                ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
                ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\nab", "400"),
                ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", "400"),
                ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +2\r\n\r\nab", "400"),
                ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x2\r\n\r\nab", "400"),
                ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n", "400"),
                ("GET / HTTP/1.1\r\n\r\n", "400"),
                ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
                ("GET / HTTP/1.1\r\nHost : h\r\n\r\n", "400"),
                ("GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", "400"),
                ("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", "400"),
                ("GET / HTTP/1.1\nHost: h\r\nX: a\rb\r\n\r\n", "400"),
                ("GET / HTTP/2.0\r\nHost: h\r\n\r\n", "505"),
            ] {
                let transcript = exchange(addr, format!("{request}{next}").as_bytes(), None).await;
                assert!(transcript.starts_with(&format!("HTTP/1.1 {status} ")), "{request:?} got {transcript}");
                assert!(transcript.contains("connection: close\r\n"), "{request:?} got {transcript}");
                assert!(transcript.contains(r#""error":"invalid_request""#), "{request:?} got {transcript}");
                assert!(!transcript.contains("smuggled"), "{request:?} let the next request through: {transcript}");
                assert_eq!(transcript.matches("HTTP/1.1 ").count(), 1, "{request:?} got {transcript}");
            }
        });
    }

    #[test]
    fn only_requests_of_unambiguous_length_are_served_here_whatever_the_mix_of_framing_fields() {
        let mut next = crate::testing::random(0x9e37_79b9_7f4a_7c15);
        let fields = [
            "Host: h",
            "Host: other",
            "Content-Length: 3",
            "Content-Length: 5",
            "Content-Length: 3, 3",
            "Content-Length: 3, 4",
            "content-length: 03",
            "Content-Length: -1",
            "Content-Length: 2000",
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: chunked, gzip",
            "transfer-encoding: identity",
            "Expect: 100-continue",
            "Connection: close",
            "Connection: keep-alive, x-a",
            "X-A: 1",
        ];
        let mut seen = [0usize; 3]; // refused, held, handed to hyper
        for case in 0..2000 {
            let version = if next(4) == 0 { "HTTP/1.0" } else { "HTTP/1.1" };
            let mut head = format!("POST /x HTTP/1.{}\r\n", u8::from(version.ends_with('1')));
            let mut chosen: Vec<&str> = (0..next(4)).map(|_| fields[next(fields.len() as u64) as usize]).collect();
            if next(5) > 0 {
                chosen.insert(next(chosen.len() as u64 + 1) as usize, "Host: h");
            }
            for f in &chosen {
                head.push_str(f);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            let lower: Vec<String> = chosen.iter().map(|f| f.to_ascii_lowercase()).collect();
            let has = |name: &str| lower.iter().any(|f| f.starts_with(name));
            let hosts = lower.iter().filter(|f| f.starts_with("host:")).count();
            let lengths: Vec<&str> = lower
                .iter()
                .filter_map(|f| f.strip_prefix("content-length: "))
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .collect();
            let decided = decide(head.as_bytes(), 1024).expect("a complete head");
            let ambiguous = (has("transfer-encoding") && (!lengths.is_empty() || version == "HTTP/1.0"))
                || lengths.iter().any(|l| l.parse::<u64>().is_err() || l.starts_with(['+', '-']))
                || lengths.windows(2).any(|w| w[0].parse::<u64>().ok() != w[1].parse::<u64>().ok())
                || hosts > 1
                || (version == "HTTP/1.1" && hosts == 0);
            match decided {
                Err(status) => {
                    assert!(ambiguous, "case {case}: {head:?} refused ({status}) but is not ambiguous");
                    seen[0] += 1;
                }
                Ok((admission, _, _)) => {
                    assert!(!ambiguous, "case {case}: {head:?} accepted as {admission:?}");
                    let length = lengths.first().map_or(0, |l| l.parse::<usize>().unwrap());
                    let expected = if has("transfer-encoding") || has("expect") || length > 1024 {
                        Admission::ToHyper
                    } else {
                        let close = lower.iter().any(|f| f == "connection: close");
                        let keep = lower.iter().any(|f| f.starts_with("connection: keep-alive"));
                        Admission::Held { length, keep_alive: !close && (version == "HTTP/1.1" || keep) }
                    };
                    assert_eq!(admission, expected, "case {case}: {head:?}");
                    seen[if expected == Admission::ToHyper { 2 } else { 1 }] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&n| n > 150), "each outcome is exercised: {seen:?}");
    }

    #[test]
    fn heads_too_large_or_with_too_many_fields_are_refused_with_431() {
        run(async {
            let (addr, _) = server(Duration::from_secs(5)).await;
            let many: String = (0..MAX_HEADERS + 1).map(|i| format!("x-{i}: 1\r\n")).collect();
            let transcript = exchange(addr, format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n").as_bytes(), None).await;
            assert!(transcript.starts_with("HTTP/1.1 431 "), "{transcript}");
            let long = "a".repeat(MAX_HEAD + 10);
            let transcript = exchange(addr, format!("GET /{long} HTTP/1.1\r\n").as_bytes(), None).await;
            assert!(transcript.starts_with("HTTP/1.1 431 "), "{}", &transcript[..40]);
        });
    }

    #[test]
    fn http_1_0_callers_keep_the_connection_only_when_they_ask_and_never_get_chunks() {
        run(async {
            let (addr, _) = server(Duration::from_secs(5)).await;
            let t = exchange(addr, b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n", None).await;
            assert_eq!(t, echoed("GET /a HTTP/1.0 host=- held=").replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n"));
            let t =
                exchange(addr, b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /chunked HTTP/1.0\r\n\r\n", None)
                    .await;
            let first =
                echoed("GET /a HTTP/1.0 host=- held=").replace("\r\n\r\n", "\r\nconnection: keep-alive\r\n\r\n");
            assert_eq!(t, format!("{first}HTTP/1.1 200 OK\r\nx-test: 1\r\nconnection: close\r\n\r\nabcd"));
        });
    }

    #[test]
    fn answers_of_unknown_length_are_chunked_large_ones_whole_and_head_answers_bodiless() {
        run(async {
            let (addr, _) = server(Duration::from_secs(5)).await;
            let t = exchange(
                addr,
                b"GET /chunked HTTP/1.1\r\nHost: h\r\n\r\nHEAD /x HTTP/1.1\r\nHost: h\r\n\r\nGET /big HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                None,
            )
            .await;
            let head_len = "HEAD /x HTTP/1.1 host=h held=".len();
            let expected = format!(
                "HTTP/1.1 200 OK\r\nx-test: 1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n\
                 HTTP/1.1 200 OK\r\nx-test: 1\r\ncontent-length: {head_len}\r\n\r\n\
                 HTTP/1.1 200 OK\r\nx-test: 1\r\ncontent-length: 40003\r\nconnection: close\r\n\r\n{}end",
                "x".repeat(40_000)
            );
            assert_eq!(t, expected);
        });
    }

    #[test]
    fn a_providers_fields_are_relayed_as_they_arrived_without_hop_by_hop_ones_or_its_framing() {
        run(async {
            let (addr, _) = server(Duration::from_secs(5)).await;
            let t = exchange(addr, b"GET /raw HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", None).await;
            assert_eq!(
                t,
                "HTTP/1.1 200 OK\r\nx-test: 1\r\nServer: up\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\
                 X-Kept: yes\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbody"
            );
        });
    }

    #[test]
    fn an_answer_whose_body_fails_ends_the_connection_without_the_last_chunk() {
        run(async {
            let (addr, _) = server(Duration::from_secs(5)).await;
            let t =
                exchange(addr, b"GET /fail HTTP/1.1\r\nHost: h\r\n\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\n", None).await;
            assert_eq!(t, "HTTP/1.1 200 OK\r\nx-test: 1\r\ntransfer-encoding: chunked\r\n\r\n7\r\npartial\r\n");
        });
    }

    #[test]
    fn chunked_bodies_and_expect_go_to_hyper_for_that_request_alone_and_the_connection_closes_after_it() {
        run(async {
            let (addr, _) = server(Duration::from_secs(5)).await;
            // What follows a streamed request is never served: not a well-formed request, nor
            // ones our rules refuse (no Host, two Hosts, both framings at once).
            for next in [
                "GET /next HTTP/1.1\r\nHost: h\r\n\r\n",
                "GET /next HTTP/1.1\r\n\r\n",
                "GET /next HTTP/1.1\r\nHost: h\r\nHost: evil\r\n\r\n",
                "POST /next HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            ] {
                let t = exchange(
                    addr,
                    format!("POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n{next}")
                        .as_bytes(),
                    None,
                )
                .await
                .to_ascii_lowercase();
                assert!(t.contains("post /up http/1.1 host=h streamed=abcde"), "{t}");
                assert!(t.contains("connection: close"), "{t}");
                assert!(!t.contains("/next"), "{next:?} was served: {t}");
            }
            let t = exchange(
                addr,
                b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                None,
            )
            .await
            .to_ascii_lowercase();
            assert!(t.starts_with("http/1.1 100 continue\r\n\r\nhttp/1.1 200 ok\r\n"), "{t}");
            assert!(t.contains("post /e http/1.1 host=h streamed=ok"), "{t}");
            // A body above the held size streams as well.
            let big = "b".repeat(2000);
            let t = exchange(
                addr,
                format!("PUT /l HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{big}")
                    .as_bytes(),
                None,
            )
            .await;
            assert!(t.contains(&format!("PUT /l HTTP/1.1 host=h streamed={big}")), "{t}");
        });
    }

    #[test]
    fn idle_connections_close_at_the_head_timeout_and_slow_heads_get_408() {
        run(async {
            let (addr, _) = server(Duration::from_millis(200)).await;
            let started = Instant::now();
            assert_eq!(exchange(addr, b"", None).await, "");
            assert!(started.elapsed() >= Duration::from_millis(200));
            let t = exchange(addr, b"GET / HTTP/1.1\r\nHo", None).await;
            assert!(t.starts_with("HTTP/1.1 408 "), "{t}");
            // The timeout counts from when the connection starts waiting for each head: a
            // connection used now and then stays open.
            let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(120)).await;
                sock.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
                let mut buf = vec![0u8; 1024];
                let n = sock.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
            }
        });
    }

    #[test]
    fn a_body_is_read_only_once_the_gate_admits_its_head() {
        run(async {
            let (addr, _) = server(Duration::from_secs(5)).await;
            // Refused at once, with the body never sent: the server did not wait for it.
            let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
            sock.write_all(b"POST /a HTTP/1.1\r\nHost: h\r\nauthorization: bad\r\nContent-Length: 1000\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(2), sock.read_to_end(&mut out))
                .await
                .expect("answered and closed before the body arrived")
                .unwrap();
            let t = undated(&out);
            assert!(t.starts_with("HTTP/1.1 401 "), "{t}");
            assert!(t.contains("connection: close"), "{t}");
            // Admitted: read and served as before; bodiless requests never ask the gate.
            let body = "x".repeat(1000);
            let t = exchange(
                addr,
                format!(
                    "GET /b HTTP/1.1\r\nHost: h\r\n\r\n\
                     POST /a HTTP/1.1\r\nHost: h\r\nauthorization: yes\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{body}"
                )
                .as_bytes(),
                Some(300),
            )
            .await;
            assert!(t.starts_with("HTTP/1.1 200 OK"), "{t}");
            assert!(t.contains(&format!("held={body}")), "{t}");
        });
    }

    #[test]
    fn when_shedding_the_connection_waiting_longest_for_its_caller_is_closed_first() {
        run(async {
            let (addr, stop) = server(Duration::from_secs(5)).await;
            // Two slow heads, then a kept-alive connection that was just answered.
            let mut oldest = tokio::net::TcpStream::connect(addr).await.unwrap();
            oldest.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut older = tokio::net::TcpStream::connect(addr).await.unwrap();
            older.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut used = tokio::net::TcpStream::connect(addr).await.unwrap();
            used.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = used.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
            tokio::time::sleep(Duration::from_millis(50)).await;
            let closed = |mut s: tokio::net::TcpStream| async move {
                let mut out = Vec::new();
                tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut out)).await.is_ok()
            };
            assert_eq!(stop.shed_oldest(2), 2);
            assert_eq!(stop.shed_pending(), 2);
            assert!(closed(oldest).await, "the oldest wait is closed first");
            assert!(closed(older).await);
            // The connection that was answered most recently is still served.
            used.write_all(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
            let n = used.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"), "{}", String::from_utf8_lossy(&buf[..n]));
            assert_eq!(stop.shed_pending(), 0, "both have closed");
            assert_eq!(stop.shed_oldest(5), 1, "only one is left to shed");
            assert!(closed(used).await);
            assert_eq!(stop.shed_oldest(1), 0, "nothing left to shed");
        });
    }

    #[test]
    fn a_stop_closes_idle_connections_and_lets_a_busy_one_finish_its_answer() {
        run(async {
            let (addr, stop) = server(Duration::from_secs(5)).await;
            let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
            busy.write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
            let mut streaming = tokio::net::TcpStream::connect(addr).await.unwrap();
            streaming.write_all(b"GET /slow-body HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            stop.stop();
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(2), idle.read_to_end(&mut out)).await.unwrap().unwrap();
            assert!(out.is_empty());
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(2), busy.read_to_end(&mut out)).await.unwrap().unwrap();
            assert_eq!(
                undated(&out),
                "HTTP/1.1 200 OK\r\nx-test: 1\r\ncontent-length: 4\r\nconnection: close\r\n\r\nlate"
            );
            // An answer whose head went out before the stop ends, then the connection closes.
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(2), streaming.read_to_end(&mut out)).await.unwrap().unwrap();
            assert_eq!(undated(&out), "HTTP/1.1 200 OK\r\nx-test: 1\r\ncontent-length: 4\r\n\r\nlate");
        });
    }

    #[test]
    fn callers_that_open_with_the_http2_preface_are_served_http2() {
        run(async {
            let (addr, _) = server(Duration::from_secs(5)).await;
            let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut tx, conn) = hyper::client::conn::http2::Builder::new(LocalExec)
                .handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(sock))
                .await
                .unwrap();
            tokio::task::spawn_local(conn);
            let req = Request::builder().uri("http://h/two").body(http_body_util::Empty::new()).unwrap();
            let resp = tx.send_request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "GET http://h/two HTTP/2.0 host=- streamed=");
        });
    }
}
