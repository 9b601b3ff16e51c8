//! Kept-alive connections to providers' APIs, one pool per HTTP worker.
//!
//! Each HTTP worker is a single-threaded runtime, so its pool needs no lock: connections are
//! taken and given back on the worker's own thread. HTTP/1.1 connections carry one call at a
//! time, spoken by our own client ([`crate::h1_client`]) in the call's task, and go back to the pool
//! the moment the provider's answer has been read to its end; an HTTP/2 connection (negotiated
//! by ALPN over TLS) is shared by all calls to its host (hyper). A kept-alive HTTP/1.1
//! connection is given again only to calls made with the credential whose call it carried:
//! whatever a provider does to a connection's framing (late bytes, an answer to a request
//! smuggled in a body it ignored), what reaches a caller was produced for a request made with
//! that caller's own credentials. (HTTP/2 frames every answer in its own stream.) A connection that the provider
//! closed while idle is noticed when it is taken. A call whose body streams from the caller
//! goes through hyper on an HTTP/1.1 connection of its own, closed after it.

use crate::h1_client::{CallError, Conn, Done, Home, RawBody};
use crate::outgoing::{Outgoing, Target, UpstreamBody};
use crate::wire::LocalExec;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::TokioTimer;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tower_service::Service;

/// Why an upstream call failed before an answer arrived.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting: {0}")]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    #[error("HTTP handshake: {0}")]
    Handshake(hyper::Error),
    #[error("the call failed: {0}")]
    Call(Box<dyn std::error::Error + Send + Sync>),
    /// A kept-alive connection failed after the request was handed to it and before an answer
    /// arrived: most often the provider closed it while idle, just as the request went out. The
    /// request may have reached the provider; only an idempotent one may be sent again.
    #[error("a kept-alive connection failed: {0}")]
    Reused(Box<dyn std::error::Error + Send + Sync>),
    #[error("CONNECT is not forwarded")]
    MethodConnect,
    #[error("{0}")]
    BadUri(&'static str),
}

/// A provider host: its scheme and authority, and the connections kept open to it.
struct Host {
    https: bool,
    authority: http::uri::Authority,
    /// The `Host` header for HTTP/1.1 calls (the authority; default ports are never in it,
    /// because base URLs are normalised by the catalog).
    host_header: http::HeaderValue,
    /// Free connections, the credential whose call each carried last, and since when.
    idle: Vec<(Conn, Instant, u64)>,
    h2: Option<http2::SendRequest<UpstreamBody>>,
}

struct Inner {
    hosts: Vec<Host>,
    max_idle_per_host: usize,
}

/// One worker's pool. Cheap to clone (a reference-counted handle).
#[derive(Clone)]
pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    inner: Rc<RefCell<Inner>>,
    idle_timeout: Duration,
    /// Every HTTP/1.1 call through hyper, on a connection of its own (the reference stack).
    hyper_only: bool,
}

enum Sender {
    /// A kept-alive HTTP/1.1 connection, ours.
    H1(Conn),
    /// An HTTP/1.1 connection through hyper, for one call whose body streams.
    H1Once(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

/// A provider's answer body: hyper's (HTTP/2, streamed calls) or our HTTP/1.1 client's.
pub type UpBody = Either<Incoming, RawBody>;

impl Pool {
    pub fn new(connector: HttpsConnector<HttpConnector>, max_idle_per_host: usize, idle_timeout: Duration) -> Self {
        let inner = Rc::new(RefCell::new(Inner { hosts: Vec::new(), max_idle_per_host }));
        Self { connector, inner, idle_timeout, hyper_only: false }
    }

    /// Makes every HTTP/1.1 call through hyper, on a new connection, as a call with a streamed
    /// body always is: the reference our own client is compared against.
    pub fn hyper_only(mut self) -> Self {
        self.hyper_only = true;
        self
    }

    /// Whether a call with `body` goes through hyper's HTTP/1.1 client on a connection of its
    /// own (a streamed body, or the reference stack), rather than ours.
    fn through_hyper(&self, body: &UpstreamBody) -> bool {
        self.hyper_only || matches!(body, UpstreamBody::Streamed(_))
    }

    /// Sends `req` (an absolute URI) to its host, on a kept-alive connection when one is free.
    /// An HTTP/1.1 connection goes back to the pool when the answer's body has been read to its
    /// end. With `fresh_only`, a new connection is opened whatever the pool holds.
    pub async fn send(&self, out: Outgoing<'_>, fresh_only: bool) -> Result<http::Response<UpBody>, SendError> {
        if *out.method == http::Method::CONNECT {
            return Err(SendError::MethodConnect);
        }
        let host = self.host_index(out.target)?;
        let streamed = self.through_hyper(&out.body);
        let tenant = out.tenant;
        let sender = match (!fresh_only).then(|| self.take(host, streamed, tenant)).flatten() {
            Some(s) => (s, true),
            None => {
                let uri = out.target.uri().map_err(SendError::BadUri)?;
                (Box::pin(self.connect(host, &uri, streamed)).await?, false)
            }
        };
        match sender {
            // The common case: the request is written straight from the caller's headers.
            (Sender::H1(conn), reused) => {
                let host_header = self.inner.borrow().hosts[host].host_header.clone();
                match conn.call_proxied(out, &host_header, Done::new(self.inner.clone(), host, tenant)).await {
                    Ok(resp) => Ok(resp.map(Either::Right)),
                    Err(CallError::NoAnswer(e)) if reused => Err(SendError::Reused(e.into())),
                    Err(e) => Err(SendError::Call(e.into())),
                }
            }
            (sender, reused) => {
                let req = out.into_request().map_err(SendError::BadUri)?;
                // Boxed: hyper's clients (HTTP/2, streamed bodies) are the cold path here, and
                // their state inline would make every call's future several KiB larger (and
                // copied as such).
                Box::pin(self.send_request(req, host, tenant, Some((sender, reused)))).await
            }
        }
    }

    /// Sends a request built whole, on `first` if given (a sender and whether it was reused).
    async fn send_request(
        &self,
        mut req: http::Request<UpstreamBody>,
        host: usize,
        tenant: u64,
        mut first: Option<(Sender, bool)>,
    ) -> Result<http::Response<UpBody>, SendError> {
        let streamed = self.through_hyper(req.body());
        let mut fresh_only = false;
        loop {
            let (sender, reused) = match first
                .take()
                .or_else(|| (!fresh_only).then(|| self.take(host, streamed, tenant)).flatten().map(|s| (s, true)))
            {
                Some(s) => s,
                // Boxed: connecting (TCP, TLS, handshake) is the cold path, and its state would
                // otherwise be part of, and copied with, every call's future.
                None => (Box::pin(self.connect(host, req.uri(), streamed)).await?, false),
            };
            let (error, back) = match sender {
                Sender::H1(conn) => {
                    self.to_origin_form(host, &mut req);
                    return match conn.call(req, Done::new(self.inner.clone(), host, tenant)).await {
                        Ok(resp) => Ok(resp.map(Either::Right)),
                        Err(CallError::NoAnswer(e)) if reused => Err(SendError::Reused(e.into())),
                        Err(e) => Err(SendError::Call(e.into())),
                    };
                }
                Sender::H1Once(mut tx) => {
                    self.to_origin_form(host, &mut req);
                    return match tx.try_send_request(req).await {
                        Ok(resp) => Ok(resp.map(Either::Left)),
                        Err(e) => Err(SendError::Call(e.into_error().into())),
                    };
                }
                Sender::H2(mut tx) => match tx.try_send_request(req).await {
                    Ok(resp) => return Ok(resp.map(Either::Left)),
                    Err(mut e) => {
                        let back = e.take_message();
                        (e.into_error(), back)
                    }
                },
            };
            match back {
                // Never sent: the shared connection had closed. Safe to send again, once, on a
                // connection of our own making.
                Some(back) if reused => {
                    req = back;
                    fresh_only = true;
                }
                None if reused => return Err(SendError::Reused(error.into())),
                _ => return Err(SendError::Call(error.into())),
            }
        }
    }

    /// `scheme://authority/path?query` becomes `/path?query` with a `Host` header.
    fn to_origin_form(&self, host: usize, req: &mut http::Request<UpstreamBody>) {
        let host_header = self.inner.borrow().hosts[host].host_header.clone();
        *req.uri_mut() = origin_form(req.uri());
        req.headers_mut().insert(http::header::HOST, host_header);
    }

    fn host_index(&self, target: &Target<'_>) -> Result<usize, SendError> {
        let (https, authority) = (target.https(), &target.origin().authority);
        let mut inner = self.inner.borrow_mut();
        // The same bytes, as a provider's base always gives, are told at once; otherwise an
        // authority's comparison ignores case.
        let same = |h: &Host| {
            h.https == https
                && (crate::text::same_str(h.authority.as_str(), authority.as_str()) || &h.authority == authority)
        };
        if let Some(i) = inner.hosts.iter().position(same) {
            return Ok(i);
        }
        let host_header = http::HeaderValue::from_str(authority.as_str())
            .map_err(|_| SendError::BadUri("the URI's host is not a valid header value"))?;
        inner.hosts.push(Host { https, authority: authority.clone(), host_header, idle: Vec::new(), h2: None });
        Ok(inner.hosts.len() - 1)
    }

    /// A kept-alive connection to the host, if one is open and free (an HTTP/1.1 one only from
    /// the calls of `tenant`'s credential; never for a streamed body over HTTP/1.1, which gets a
    /// connection of its own).
    fn take(&self, host: usize, streamed: bool, tenant: u64) -> Option<Sender> {
        let mut inner = self.inner.borrow_mut();
        let h = &mut inner.hosts[host];
        // An HTTP/2 connection is shared while it is open; if it cannot take the request after
        // all, the request comes back unsent and goes out on a new connection.
        if let Some(tx) = &h.h2 {
            if !tx.is_closed() {
                return Some(Sender::H2(tx.clone()));
            }
            h.h2 = None;
        }
        if streamed {
            return None;
        }
        // Most recently used first: it is the one least likely to have been closed. Long-idle
        // ones met on the way, and the credential's own that were closed, are dropped (which
        // closes them); only the credential's own are probed.
        let now = crate::clock::recent();
        let mut i = h.idle.len();
        while i > 0 {
            i -= 1;
            if now.duration_since(h.idle[i].1) >= self.idle_timeout {
                h.idle.remove(i);
            } else if h.idle[i].2 == tenant {
                let (mut conn, ..) = h.idle.remove(i);
                if !conn.is_closed() {
                    return Some(Sender::H1(conn));
                }
            }
        }
        None
    }

    /// Opens a connection (TCP, TLS where the scheme says so) and, for HTTP/2 (chosen by the
    /// provider by ALPN) or a streamed body, shakes hands with hyper; hyper's connections are
    /// driven by tasks on this worker.
    async fn connect(&self, host: usize, uri: &http::Uri, streamed: bool) -> Result<Sender, SendError> {
        let io = self.connector.clone().call(uri.clone()).await.map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (tx, conn) = http2::Builder::new(LocalExec)
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(SendError::Handshake)?;
            drive(conn, "HTTP/2");
            self.inner.borrow_mut().hosts[host].h2 = Some(tx.clone());
            Ok(Sender::H2(tx))
        } else if streamed {
            let (tx, conn) = http1::handshake(io).await.map_err(SendError::Handshake)?;
            drive(conn, "HTTP/1.1");
            Ok(Sender::H1Once(tx))
        } else {
            // Our client reads and writes through tokio's traits: the stream is taken out of
            // the connector's wrappers for hyper's, which would convert every read and write
            // twice over.
            let conn = match io {
                hyper_rustls::MaybeHttpsStream::Http(tcp) => Conn::new(tcp.into_inner()),
                hyper_rustls::MaybeHttpsStream::Https(tls) => Conn::new(tls.into_inner()),
            };
            Ok(Sender::H1(conn))
        }
    }
}

/// Connections come home when their answer has been read to its end.
impl Home for RefCell<Inner> {
    fn put(&self, host: usize, tenant: u64, conn: Conn) {
        let mut inner = self.borrow_mut();
        let max = inner.max_idle_per_host;
        let h = &mut inner.hosts[host];
        if h.idle.len() >= max {
            // Drop the longest idle one; dropping it closes it.
            h.idle.remove(0);
        }
        h.idle.push((conn, crate::clock::recent(), tenant));
    }
}

/// Drives one of hyper's connections on this worker until it ends.
fn drive(conn: impl std::future::Future<Output = Result<(), hyper::Error>> + 'static, protocol: &'static str) {
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, protocol, "upstream connection ended");
        }
    });
}

/// `scheme://authority/path?query` as HTTP/1.1 sends it: `/path?query`.
fn origin_form(uri: &http::Uri) -> http::Uri {
    match uri.path_and_query() {
        Some(pq) => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(pq.clone());
            http::Uri::from_parts(parts).unwrap_or_default()
        }
        None => http::Uri::default(),
    }
}

/// The pool for providers' APIs: kept-alive connections per provider host, one pool per
/// worker (HTTP/1.1, or HTTP/2 where the provider offers it over TLS), rustls with the platform's
/// roots, a bounded connect time, no redirects followed (they go back to the caller, who decides).
pub fn upstream_client(settings: &crate::settings::Settings) -> Result<Pool, String> {
    let pool = upstream_client_with(settings.upstream_timeout)?;
    Ok(if settings.http_stack == crate::settings::HttpStack::Hyper { pool.hyper_only() } else { pool })
}

/// The client with `timeout` bounding each connection attempt (at most 10 s).
pub fn upstream_client_with(timeout: std::time::Duration) -> Result<Pool, String> {
    use rustls_platform_verifier::ConfigVerifierExt;
    let tls = rustls::ClientConfig::with_platform_verifier().map_err(|e| format!("TLS roots: {e}"))?;
    Ok(upstream_client_tls(timeout, tls))
}

/// The client with the given TLS configuration (tests trust their own CA with it).
pub fn upstream_client_tls(timeout: std::time::Duration, tls: rustls::ClientConfig) -> Pool {
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
    Pool::new(connector, 256, std::time::Duration::from_secs(90))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outgoing::Fields;
    use crate::testing::run;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        /// Answers every request on a connection.
        KeepAlive,
        /// Closes each connection after its first answer, as a server whose keep-alive timeout
        /// ran out does.
        CloseAfterOne,
        /// Reads a connection's second request, then closes it without answering: the race in
        /// which a server closes an idle connection just as a request goes out on it.
        DropSecond,
    }

    /// A provider that answers requests with `ok`, counting the connections it accepts.
    async fn provider(mode: Mode) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        provider_over(mode, None).await
    }

    trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

    /// The same, over TLS when given an acceptor.
    async fn provider_over(
        mode: Mode,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let mut sock: Box<dyn Stream> = match tls {
                        Some(acceptor) => Box::new(acceptor.accept(tcp).await.unwrap()),
                        None => Box::new(tcp),
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    for n in 1.. {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                        assert!(head.starts_with("get /v1/x?q=1 http/1.1\r\n"), "{head}");
                        assert!(head.contains("\r\nhost: 127.0.0.1:"), "{head}");
                        buf.clear();
                        if mode == Mode::DropSecond && n == 2 {
                            return;
                        }
                        let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                        if mode == Mode::CloseAfterOne {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// Sends a request as the proxy would (with a bearer token of its own).
    async fn send(
        pool: &Pool,
        req: http::Request<UpstreamBody>,
        fresh_only: bool,
    ) -> Result<http::Response<UpBody>, SendError> {
        send_as(pool, req, fresh_only, "t").await
    }

    /// Sends a request with the credential `token`, as the proxy would.
    async fn send_as(
        pool: &Pool,
        req: http::Request<UpstreamBody>,
        fresh_only: bool,
        token: &str,
    ) -> Result<http::Response<UpBody>, SendError> {
        let (parts, body) = req.into_parts();
        let bearer = [(http::header::AUTHORIZATION, http::HeaderValue::try_from(format!("Bearer {token}")).unwrap())];
        let target = Target::try_from(&parts.uri).unwrap();
        let tenant = crate::cache::tenant_of(token);
        let out = Outgoing::new(&parts.method, &target, Fields::Map(&parts.headers), &bearer, tenant, body);
        pool.send(out, fresh_only).await
    }

    /// A hostile provider: answers each request with the token it was made with, then, a moment
    /// later, sends an answer no request asked for (`late-<token>`) on the same connection, as a
    /// server does that ignored a body holding a second request.
    async fn desyncing_provider() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let head = String::from_utf8_lossy(&buf).into_owned();
                        buf.clear();
                        let token = head
                            .lines()
                            .find_map(|l| l.strip_prefix("authorization: Bearer "))
                            .unwrap_or("none")
                            .to_owned();
                        let answer =
                            |body: &str| format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if sock.write_all(answer(&token).as_bytes()).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        if sock.write_all(answer(&format!("late-{token}")).as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn no_caller_receives_an_answer_produced_for_another_credential_whatever_the_provider_sends() {
        run(async {
            let addr = desyncing_provider().await;
            let pool = upstream_client_with(Duration::from_secs(5)).unwrap();
            for round in 0..20 {
                for token in ["tenant-a", "tenant-b", "tenant-c"] {
                    let resp = match send_as(&pool, get(addr), false, token).await {
                        Err(SendError::Reused(_)) => send_as(&pool, get(addr), true, token).await,
                        other => other,
                    };
                    let Ok(resp) = resp else { continue };
                    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                    let body = String::from_utf8(bytes.to_vec()).unwrap();
                    // What a credential's caller may get: its own answer, or (the provider's
                    // fault, on the connection its own call left) its own late one.
                    assert!(body == token || body == format!("late-{token}"), "round {round}: {token} got {body}");
                    tokio::task::yield_now().await;
                }
                if round % 5 == 0 {
                    tokio::time::sleep(Duration::from_millis(35)).await;
                }
            }
        });
    }

    fn get(addr: std::net::SocketAddr) -> http::Request<UpstreamBody> {
        let uri: http::Uri = format!("http://{addr}/v1/x?q=1").parse().unwrap();
        let body = UpstreamBody::Held(None);
        http::Request::builder().uri(uri).body(body).unwrap()
    }

    /// One GET, sent again on a fresh connection if a kept-alive one failed under it, as the
    /// proxy does for idempotent requests.
    async fn call(pool: &Pool, addr: std::net::SocketAddr) -> String {
        let resp = match send(pool, get(addr), false).await {
            Err(SendError::Reused(_)) => send(pool, get(addr), true).await,
            other => other,
        }
        .expect("the call succeeds");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn sequential_calls_reuse_one_kept_alive_connection() {
        run(async {
            let (addr, accepted) = provider(Mode::KeepAlive).await;
            let pool = upstream_client_with(Duration::from_secs(5)).unwrap();
            for _ in 0..5 {
                assert_eq!(call(&pool, addr).await, "ok");
                tokio::task::yield_now().await; // lets the connection turn around, as a worker does
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 1);
        });
    }

    #[test]
    fn a_connection_the_provider_closed_is_replaced_without_failing_the_call() {
        run(async {
            let (addr, accepted) = provider(Mode::CloseAfterOne).await;
            let pool = upstream_client_with(Duration::from_secs(5)).unwrap();
            // Straight after the answer (the close may not have been seen yet) and after a pause
            // (it has): either way the call goes out on a fresh connection.
            assert_eq!(call(&pool, addr).await, "ok");
            assert_eq!(call(&pool, addr).await, "ok");
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(call(&pool, addr).await, "ok");
            assert_eq!(accepted.load(Ordering::SeqCst), 3);
        });
    }

    #[test]
    fn concurrent_calls_each_get_their_own_connection_and_all_come_back() {
        run(async {
            let (addr, accepted) = provider(Mode::KeepAlive).await;
            let pool = upstream_client_with(Duration::from_secs(5)).unwrap();
            let answers = futures_util::future::join_all((0..4).map(|_| call(&pool, addr))).await;
            assert!(answers.iter().all(|a| a == "ok"));
            tokio::task::yield_now().await;
            let answers = futures_util::future::join_all((0..4).map(|_| call(&pool, addr))).await;
            assert!(answers.iter().all(|a| a == "ok"));
            assert_eq!(accepted.load(Ordering::SeqCst), 4);
        });
    }

    #[test]
    fn a_kept_alive_connection_that_fails_after_the_request_went_out_is_reported_as_such() {
        run(async {
            let (addr, accepted) = provider(Mode::DropSecond).await;
            let pool = upstream_client_with(Duration::from_secs(5)).unwrap();
            assert_eq!(call(&pool, addr).await, "ok");
            tokio::task::yield_now().await;
            // The request was written, so the pool cannot know whether the provider acted on
            // it: it says so, and the caller decides (the proxy resends idempotent requests).
            assert!(matches!(send(&pool, get(addr), false).await, Err(SendError::Reused(_))));
            let resp = send(&pool, get(addr), true).await.expect("a fresh connection answers");
            assert_eq!(resp.status(), http::StatusCode::OK);
            assert_eq!(accepted.load(Ordering::SeqCst), 2);
        });
    }

    #[test]
    fn connect_is_refused_before_any_connection_is_made() {
        run(async {
            let pool = upstream_client_with(Duration::from_secs(5)).unwrap();
            let body = UpstreamBody::Held(None);
            let req =
                http::Request::builder().method(http::Method::CONNECT).uri("http://127.0.0.1:9/").body(body).unwrap();
            assert!(matches!(send(&pool, req, false).await, Err(SendError::MethodConnect)));
        });
    }

    /// A throw-away CA and a certificate for 127.0.0.1 signed by it: (CA PEM, certificate PEM,
    /// key PEM).
    fn test_certificates() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let dir = std::env::temp_dir().join(format!("authbridge-pool-tls-{}", std::process::id()));
        let tls = shared::test_support::TestTls::create(&dir);
        let read = |f: &std::path::Path| std::fs::read(f).unwrap();
        let out = (read(&tls.ca), read(&tls.cert), read(&tls.key));
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    #[test]
    fn calls_to_an_https_provider_reuse_one_tls_connection() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        run(async {
            let (ca, cert, key) = test_certificates();
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&cert).collect::<Result<_, _>>().unwrap();
            let key = PrivateKeyDer::from_pem_slice(&key).unwrap();
            let mut server =
                rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
            server.alpn_protocols = vec![b"http/1.1".to_vec()];
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            let (addr, accepted) = provider_over(Mode::KeepAlive, Some(acceptor)).await;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&ca) {
                roots.add(c.unwrap()).unwrap();
            }
            let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
            let pool = upstream_client_tls(Duration::from_secs(5), tls);
            let get = || {
                let uri: http::Uri = format!("https://{addr}/v1/x?q=1").parse().unwrap();
                let body = UpstreamBody::Held(None);
                http::Request::builder().uri(uri).body(body).unwrap()
            };
            for _ in 0..3 {
                let resp = send(&pool, get(), false).await.expect("the call succeeds");
                assert_eq!(resp.status(), http::StatusCode::OK);
                assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
                tokio::task::yield_now().await;
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 1, "one TLS connection, kept alive");
        });
    }
}
