//! The proxy's HTTP server, on worker threads that each run a single-threaded runtime.
//!
//! The proxy sits on its callers' hot path, so its server is built from parts that do only what
//! a proxied call needs. HTTP/1.1 requests with small or no bodies, the common case, are served
//! by our own connection code ([`crate::h1_server`]); streamed bodies, `Expect` and HTTP/2 by
//! hyper. Requests arrive and leave in the same `http` types the upstream client uses, so
//! headers are never converted between two representations. (The gateway, with its many
//! routes, forms and pages, stays on actix-web.)
//!
//! Each worker owns a runtime and an upstream connection pool. An acceptor hands each new
//! connection to the worker serving the fewest; it stays on that worker's thread, with its
//! upstream connections, for its whole life. HTTP/1.1 and HTTP/2 are served, over
//! plain TCP (HTTP/2 by prior knowledge) or TLS (chosen by ALPN).
//!
//! Routes: `/proxy/…` (see [`crate::forward`]), `/healthz`, `/readyz`, `/metrics`,
//! `/openapi.json`; anything else is a JSON 404. Errors, metrics, traces and the access log are the same as every other
//! service's (`shared::http`).

use crate::forward;
use crate::h1_server::{self, CallerBody, Stopping};
use crate::key_memo::{self, ConnectionMemo};
use crate::pace::Pace;
use crate::relay::{error_response, full, json, ResponseBody};
use crate::worker::{Shared, Worker};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use shared::http::{ApiError, ErrorCode};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

/// The route label of proxied calls.
pub const PROXY_ROUTE: &str = "/proxy/{provider}/{connection_id}/{path}";

/// How long a caller has to complete a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    /// Stop accepting; let open connections finish what they are serving (bounded by the grace).
    Graceful,
    /// Stop accepting and close every connection now.
    Now,
}

/// The running server: its workers and how to stop them.
pub struct Server {
    pub addr: SocketAddr,
    stop: watch::Sender<Stop>,
    done: Vec<oneshot::Receiver<()>>,
}

/// A listening socket for `bind` (`host:port`; port 0 picks a free one).
pub fn listen(bind: &str) -> std::io::Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs;
    let addr = bind
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("`{bind}` names no address")))?;
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    // Accepted connections inherit it (Linux copies the listener's TCP options to each), which
    // spares a system call per connection.
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?.into_std()?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl Server {
    /// Starts `workers` worker threads serving `listener` (from [`listen`]), over TLS when `tls`
    /// is given. Must be called within a tokio runtime: the acceptor runs on it.
    pub fn start(
        shared: Shared,
        listener: std::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        workers: usize,
        grace: Duration,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (stop, stopped) = watch::channel(Stop::Running);
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        let workers = workers.max(1);
        let load: Arc<[Counts]> = (0..workers).map(|_| Counts::default()).collect();
        // Paced a little below the cap: a worker over its share sheds a batch at once, and the
        // room a batch leaves must not be filled unpaced (each connection taken into it would
        // make another batch close).
        let settings = &shared.state.settings;
        let cap = settings.max_connections;
        let paced_from = cap.saturating_sub(2 * workers * shed_batch(worker_cap(cap, workers)));
        let pace = Pace::new(settings.accept_rate_at_cap, paced_from, Instant::now());
        let mut done = Vec::with_capacity(workers + 1);
        let mut queues = Vec::with_capacity(workers);
        for i in 0..workers {
            let (queue, incoming) = mpsc::unbounded_channel();
            queues.push(queue);
            let (shared, tls, stopped, load) = (shared.clone(), tls.clone(), stopped.clone(), load.clone());
            let (finished, on_finish) = oneshot::channel();
            std::thread::Builder::new().name(format!("api-proxy-http-{i}")).spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start an HTTP worker");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, serve_worker(incoming, shared, tls, stopped, grace, Load { all: load, mine: i }));
                // Whatever outlived the grace period ends here, with the worker's upstream pool;
                // only then is the worker done (and the state it held released).
                drop(local);
                drop(rt);
                let _ = finished.send(());
            })?;
            done.push(on_finish);
        }
        let (finished, on_finish) = oneshot::channel();
        tokio::spawn(async move {
            accept(listener, queues, load, pace, stopped).await;
            let _ = finished.send(());
        });
        done.push(on_finish);
        Ok(Self { addr, stop, done })
    }

    /// Stops accepting. With `graceful`, requests in flight finish (within the grace period
    /// given at start) and kept-alive connections are closed once idle; otherwise every
    /// connection is closed now. Returns when every worker has ended.
    pub async fn stop(mut self, graceful: bool) {
        let _ = self.stop.send(if graceful { Stop::Graceful } else { Stop::Now });
        for done in self.done.drain(..) {
            let _ = done.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A server dropped without `stop` does not leave its threads serving.
        if *self.stop.borrow() == Stop::Running {
            let _ = self.stop.send(Stop::Now);
        }
    }
}

/// What each worker is serving, and which worker this is.
struct Load {
    all: Arc<[Counts]>,
    mine: usize,
}

/// One worker's connections.
#[derive(Default)]
struct Counts {
    /// Every open connection (what the connection cap limits).
    open: AtomicUsize,
    /// Those that behave like callers': all but the ones whose first head is still unfinished
    /// after a read. Connections are spread by this count: a slowloris's sockets (thousands,
    /// never sending a whole head) would otherwise decide where callers land, and a burst of
    /// callers' connections would all go to whichever worker the attack happened to leave
    /// lighter, with the other worker idle.
    callers: AtomicUsize,
}

/// Counts one connection against its worker while it is open; the worker's graceful stop waits
/// until every `alive` sender is gone.
struct Serving {
    load: Rc<Load>,
    /// Counted among the worker's callers (as the acceptor counted it).
    caller: Cell<bool>,
    _alive: mpsc::Sender<()>,
}

impl Serving {
    /// Takes over a connection the acceptor counted (open, and a caller) for this worker.
    fn adopt(load: &Rc<Load>, alive: &mpsc::Sender<()>) -> Self {
        Self { load: load.clone(), caller: Cell::new(true), _alive: alive.clone() }
    }

    fn counts(&self) -> &Counts {
        &self.load.all[self.load.mine]
    }

    /// Counts the connection among its worker's callers, or not.
    fn set_caller(&self, caller: bool) {
        if self.caller.replace(caller) != caller {
            match caller {
                true => self.counts().callers.fetch_add(1, Ordering::Relaxed),
                false => self.counts().callers.fetch_sub(1, Ordering::Relaxed),
            };
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.set_caller(false);
        self.counts().open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections and gives each to the worker serving the fewest callers (the next in
/// turn among equals). Callers keep connections open for many calls, so how they are spread
/// decides how the load is spread: left to whichever worker wakes first, a burst of new
/// connections can land two to one on one worker, whose calls then queue while the other idles.
/// At the connection cap, connections are taken at `pace` ([`crate::pace`]).
async fn accept(
    listener: tokio::net::TcpListener,
    queues: Vec<mpsc::UnboundedSender<Accepted>>,
    load: Arc<[Counts]>,
    mut pace: Pace,
    mut stopped: watch::Receiver<Stop>,
) {
    let mut next = 0;
    loop {
        let open: usize = load.iter().map(|c| c.open.load(Ordering::Relaxed)).sum();
        if open >= pace.from {
            if let Err(wait) = pace.take(Instant::now()) {
                tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        }
        let accepted = tokio::select! {
            biased;
            _ = stopped.changed() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(stream) = stream.into_std() else { continue };
                let pick = least_loaded(&load, next);
                next = (pick + 1) % load.len();
                // A worker counts a connection when it takes it: count it now, so a burst of
                // connections is spread before the workers have seen any of it. It is a caller
                // until its first read says otherwise.
                load[pick].open.fetch_add(1, Ordering::Relaxed);
                load[pick].callers.fetch_add(1, Ordering::Relaxed);
                if queues[pick].send((stream, peer)).is_err() {
                    load[pick].open.fetch_sub(1, Ordering::Relaxed);
                    load[pick].callers.fetch_sub(1, Ordering::Relaxed);
                }
            }
            // Out of file descriptors or memory: wait a little rather than spin.
            Err(e) if matches!(e.raw_os_error(), Some(23 | 24 | 12 | 105)) => {
                tracing::warn!(error = %e, "cannot accept a connection; pausing");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => tracing::debug!(error = %e, "accepting a connection failed"),
        }
    }
}

/// A connection as accepted: its socket and its caller's address.
type Accepted = (std::net::TcpStream, SocketAddr);

/// A worker's share of the connection cap.
fn worker_cap(cap: usize, workers: usize) -> usize {
    cap.div_ceil(workers).max(1)
}

/// How many connections a worker over its cap closes at once (one scan of its waiting
/// connections chooses them all).
fn shed_batch(worker_cap: usize) -> usize {
    (worker_cap / 64).max(1)
}

/// The worker serving the fewest callers; among equals, the first from `next` on.
fn least_loaded(load: &[Counts], next: usize) -> usize {
    let n = load.len();
    (0..n).map(|k| (next + k) % n).min_by_key(|&w| load[w].callers.load(Ordering::Relaxed)).unwrap_or(0)
}

async fn serve_worker(
    mut incoming: mpsc::UnboundedReceiver<Accepted>,
    shared: Shared,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stopped: watch::Receiver<Stop>,
    grace: Duration,
    load: Load,
) {
    let upstream = match crate::pool::upstream_client(&shared.state.settings) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "an HTTP worker cannot build its upstream client");
            return;
        }
    };
    let tick = crate::deadline::Deadlines::tick_for(shared.state.settings.upstream_timeout);
    let worker = Rc::new(Worker {
        deadlines: crate::deadline::Deadlines::start(tick),
        state: shared.state,
        metrics: shared.metrics,
        auth: shared.auth,
        limits: shared.limits,
        upstream,
    });
    let load = Rc::new(load);
    let settings = &worker.state.settings;
    let options = Rc::new(h1_server::Options {
        head_timeout: settings.head_timeout,
        held_body: settings.retry_body,
        hyper_only: settings.http_stack == crate::settings::HttpStack::Hyper,
    });
    // Each worker keeps its share of the connection cap (the acceptor spreads connections evenly).
    let cap = worker_cap(settings.max_connections, load.all.len());
    let shed_batch = shed_batch(cap);
    let stopping = Rc::new(Stopping::default());
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = stopped.changed() => break,
            stream = incoming.recv() => match stream {
                Some(s) => s,
                None => break,
            },
        };
        // The acceptor counted it already; from here the connection's own guard does (and
        // counts it off however it ends, refused here included).
        let serving = Serving::adopt(&load, &alive);
        // Over the cap, the connections that have waited longest for their callers make room,
        // a batch at a time: those chosen and not yet closed count as gone. With every
        // connection serving a request, the newcomer is refused.
        let open = serving.counts().open.load(Ordering::Relaxed);
        if open > cap {
            let over = open - cap;
            let pending = stopping.shed_pending();
            if pending < over && stopping.shed_oldest(shed_batch.max(over - pending)) == 0 && pending == 0 {
                tracing::debug!("connection cap reached with no idle connection to close; refused a new one");
                continue;
            }
        }
        match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => {
                tokio::task::spawn_local(serve_connection(
                    stream,
                    peer,
                    worker.clone(),
                    options.clone(),
                    tls.clone(),
                    stopping.clone(),
                    serving,
                ));
            }
            Err(e) => tracing::warn!(error = %e, "cannot take over an accepted connection"),
        }
    }
    if *stopped.borrow() == Stop::Graceful {
        stopping.stop();
        drop(alive);
        if tokio::time::timeout(grace, all_closed.recv()).await.is_err() {
            tracing::warn!("connections still open after the shutdown grace period are closed");
        }
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    worker: Rc<Worker>,
    options: Rc<h1_server::Options>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stopping: Rc<Stopping>,
    serving: Serving,
) {
    // The API key this connection presented last, and the decision for it.
    let memo = Rc::new(RefCell::new(ConnectionMemo::for_client(peer.ip())));
    // The request's future is `handle`'s own (no wrapper around it, which would be one more
    // copy of it per request).
    let gate = {
        let (worker, memo) = (worker.clone(), memo.clone());
        move |req: &Request<()>, fields: &crate::wire::RawHead| {
            let route = route_of(req.uri().path());
            let presented = fields.get(b"authorization").and_then(shared::http::bearer_credential).map(str::to_owned);
            let method = req.method().clone();
            let path = (route == shared::http::UNMATCHED).then(|| req.uri().path().to_owned());
            let (worker, memo) = (worker.clone(), memo.clone());
            async move { admit_body(&worker, &memo, route, &method, path.as_deref(), presented.as_deref()).await }
        }
    };
    let handler = move |req| handle(worker.clone(), memo.clone(), req);
    let caller = |yes| serving.set_caller(yes);
    match tls {
        None => h1_server::serve(stream, false, handler, gate, options, stopping, caller).await,
        Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                h1_server::serve(stream, h2, handler, gate, options, stopping, caller).await
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        },
    }
}

/// The route pattern a path belongs to.
fn route_of(path: &str) -> &'static str {
    match path {
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/openapi.json" => "/openapi.json",
        p if p == "/proxy" || forward::strip_proxy_prefix(p).is_some() => PROXY_ROUTE,
        _ => shared::http::UNMATCHED,
    }
}

/// Whether a request whose body is still to come may send it: a proxied call only with an API
/// key that may proxy (decided from the head, so an unauthenticated caller cannot make the
/// proxy hold a body); the other routes take no body. `None` admits it; otherwise the answer.
/// Rate limits are left to the call itself, which checks the key again (from the connection's
/// memo, without a lookup).
async fn admit_body(
    worker: &Worker,
    memo: &RefCell<ConnectionMemo>,
    route: &'static str,
    method: &Method,
    path: Option<&str>,
    presented: Option<&str>,
) -> Option<Response<ResponseBody>> {
    let start = Instant::now();
    let resp = match route {
        PROXY_ROUTE => match key_memo::authorize(&worker.auth, memo, presented, shared::auth::Scope::Proxy, None).await
        {
            Ok(_) => return None,
            Err(e) => error_response(&e),
        },
        _ => match refusal(route, method, path.unwrap_or_default()) {
            Some(refused) => refused,
            None => error_response(&ApiError::new(ErrorCode::InvalidRequest, format!("{route} takes no request body"))),
        },
    };
    let span = tracing::Span::none();
    let quiet = route != PROXY_ROUTE && route != shared::http::UNMATCHED;
    shared::http::record_request(
        Some(&worker.metrics),
        &span,
        method.as_str(),
        route,
        resp.status().as_u16(),
        start.elapsed(),
        quiet,
    );
    Some(resp)
}

/// One request: routed, answered, and recorded as every service records requests.
async fn handle(
    worker: Rc<Worker>,
    memo: Rc<RefCell<ConnectionMemo>>,
    req: Request<CallerBody>,
) -> Response<ResponseBody> {
    let worker = &*worker;
    let start = Instant::now();
    crate::clock::request_started(start);
    let path = req.uri().path();
    let route = route_of(path);
    let quiet = shared::http::is_quiet(path);
    let method = req.method().clone();
    let traceparent = match req.body().fields() {
        Some(raw) => raw.get(b"traceparent"),
        None => req.headers().get("traceparent").map(HeaderValue::as_bytes),
    };
    let span = shared::http::request_span(method.as_str(), quiet, traceparent);
    // The proxied call's future is the largest by far: awaited directly, not inside a wrapper
    // of its own, it is moved (copied) fewer times on its way into place.
    let resp = if route == PROXY_ROUTE {
        let call = forward::proxy_span(&span, &method);
        // The request's head stays here and the call borrows it: passed by value, it would be
        // copied into each future it went through.
        let (parts, body) = req.into_parts();
        forward::proxy(worker, &memo, &parts, body).instrument(call).await.unwrap_or_else(|e| error_response(&e))
    } else {
        // Boxed: the readiness probes' futures are larger than a proxied call's, and inline they
        // would enlarge every request's future.
        Box::pin(other_route(worker, req, route, &method)).instrument(span.clone()).await
    };
    shared::http::record_request(
        Some(&worker.metrics),
        &span,
        method.as_str(),
        route,
        resp.status().as_u16(),
        start.elapsed(),
        quiet,
    );
    resp
}

/// The 404 of a path no route has, or the 405 of a method other than `GET` or `HEAD` on the
/// routes other than the proxy's.
fn refusal(route: &str, method: &Method, path: &str) -> Option<Response<ResponseBody>> {
    if route == shared::http::UNMATCHED {
        return Some(error_response(&ApiError::new(ErrorCode::NotFound, format!("no route for {method} {path}"))));
    }
    if method == Method::GET || method == Method::HEAD {
        return None;
    }
    let mut r = error_response(&ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{route} answers GET and HEAD, not {method}"),
    ));
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    Some(r)
}

/// The proxy's OpenAPI document (`docs/openapi/proxy.yaml`, as JSON: `scripts/openapi.py`).
const OPENAPI: &[u8] = include_bytes!("../../docs/openapi/proxy.json");

/// `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, or a 404 or 405.
async fn other_route(
    worker: &Worker,
    req: Request<CallerBody>,
    route: &str,
    method: &Method,
) -> Response<ResponseBody> {
    if let Some(refused) = refusal(route, method, req.uri().path()) {
        return refused;
    }
    match route {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        "/readyz" => readyz(worker).await,
        "/openapi.json" => crate::relay::full(StatusCode::OK, "application/json", bytes::Bytes::from_static(OPENAPI)),
        _ => {
            let presented = match req.body().fields() {
                Some(raw) => raw.get(b"authorization"),
                None => req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes),
            };
            if shared::http::metrics_allowed(worker.state.settings.common.metrics_token.as_ref(), presented) {
                metrics(worker)
            } else {
                error_response(&ApiError::new(
                    ErrorCode::Unauthorized,
                    "/metrics needs Authorization: Bearer <AUTHBRIDGE_METRICS_TOKEN>",
                ))
            }
        }
    }
}

/// Ready while calls can be served: with PostgreSQL, or without it from memory (within the stale
/// bound). RabbitMQ is reported but not needed: no proxied call waits on it.
async fn readyz(worker: &Worker) -> Response<ResponseBody> {
    let state = &worker.state;
    let postgres = shared::http::probe(state.core.store.ping()).await;
    let rabbitmq = shared::http::probe(state.core.broker.ping()).await;
    let from_memory = postgres.is_err() && state.cache.can_serve_stale();
    let ready = postgres.is_ok() || from_memory;
    let (_, mut body) = shared::http::readiness_report(vec![("postgres", postgres), ("rabbitmq", rabbitmq)]);
    body["status"] = (if ready { "ready" } else { "not_ready" }).into();
    if from_memory {
        body["serving"] = "from_memory".into();
    }
    json(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body.to_string())
}

fn metrics(worker: &Worker) -> Response<ResponseBody> {
    let mut out = worker.metrics.render();
    let c = &worker.state.cache;
    let (hits, misses) = (c.hits.get(), c.misses.get());
    shared::metrics::counter(
        &mut out,
        "authbridge_token_cache_hits_total",
        "Proxied calls served a token from memory.",
        hits,
    );
    shared::metrics::counter(
        &mut out,
        "authbridge_token_cache_misses_total",
        "Proxied calls that read the token from the database.",
        misses,
    );
    // Since the process started; over a window: rate(hits_total) / (rate(hits_total) + rate(misses_total)).
    let ratio = if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 };
    shared::metrics::gauge(
        &mut out,
        "authbridge_token_cache_hit_ratio",
        "Share of proxied calls served a token from memory since the process started.",
        ratio,
    );
    shared::metrics::gauge(&mut out, "authbridge_token_cache_entries", "Tokens held in memory.", c.len() as f64);
    shared::metrics::gauge(
        &mut out,
        "authbridge_proxy_serving_from_memory",
        "1 while PostgreSQL cannot be reached and calls are served with the tokens and keys held in memory.",
        if c.serving_stale() { 1.0 } else { 0.0 },
    );
    worker.auth.render_metrics(&mut out);
    full(StatusCode::OK, "text/plain; version=0.0.4", out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_connections_send_without_delay_and_pacing_starts_below_the_cap() {
        // The listener's TCP_NODELAY is what every caller connection gets (none is set per
        // connection).
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let listener = rt.block_on(async { listen("127.0.0.1:0") }).unwrap();
        let _caller = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let nodelay = rt.block_on(async { tokio::net::TcpStream::from_std(accepted).unwrap().nodelay().unwrap() });
        assert!(nodelay, "an accepted connection has TCP_NODELAY");
        // Two workers sharing 15,000: each sheds 117 at once, so pacing begins 468 below the cap.
        assert_eq!(shed_batch(worker_cap(15_000, 2)), 117);
        assert_eq!(15_000 - 2 * 2 * shed_batch(worker_cap(15_000, 2)), 14_532);
        assert_eq!((worker_cap(1, 2), shed_batch(worker_cap(1, 2))), (1, 1));
    }

    #[test]
    fn new_connections_go_to_the_worker_with_fewest_callers_and_in_turn_among_equals() {
        let load: Vec<Counts> = (0..3).map(|_| Counts::default()).collect();
        let mut next = 0;
        let mut order = Vec::new();
        for _ in 0..6 {
            let w = least_loaded(&load, next);
            load[w].callers.fetch_add(1, Ordering::Relaxed);
            next = (w + 1) % load.len();
            order.push(w);
        }
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
        // Worker 1's connections close: the next two go to it.
        load[1].callers.store(0, Ordering::Relaxed);
        assert_eq!(least_loaded(&load, next), 1);
        load[1].callers.fetch_add(1, Ordering::Relaxed);
        assert_eq!(least_loaded(&load, 2), 1);
        // Open connections that are not callers' (a slowloris's) do not count.
        load[0].open.store(10_000, Ordering::Relaxed);
        load[0].callers.store(0, Ordering::Relaxed);
        assert_eq!(least_loaded(&load, 1), 0);
    }

    #[test]
    fn a_connection_stops_counting_as_a_caller_while_its_first_head_is_unfinished() {
        let load = Rc::new(Load { all: (0..2).map(|_| Counts::default()).collect(), mine: 1 });
        let (alive, _all_closed) = mpsc::channel(1);
        let callers = |w: usize| load.all[w].callers.load(Ordering::Relaxed);
        // As the acceptor hands it over: counted already.
        load.all[1].open.fetch_add(1, Ordering::Relaxed);
        load.all[1].callers.fetch_add(1, Ordering::Relaxed);
        let serving = Serving::adopt(&load, &alive);
        assert_eq!((callers(1), load.all[1].open.load(Ordering::Relaxed)), (1, 1));
        serving.set_caller(false);
        serving.set_caller(false);
        assert_eq!(callers(1), 0, "told twice, counted off once");
        assert_eq!(least_loaded(&load.all, 0), 0, "among equals, in turn");
        assert_eq!(least_loaded(&load.all, 1), 1);
        serving.set_caller(true);
        assert_eq!(callers(1), 1);
        drop(serving);
        assert_eq!((callers(1), load.all[1].open.load(Ordering::Relaxed)), (0, 0));
        // One that closes while not counted is not counted off again.
        load.all[1].open.fetch_add(1, Ordering::Relaxed);
        load.all[1].callers.fetch_add(1, Ordering::Relaxed);
        let serving = Serving::adopt(&load, &alive);
        serving.set_caller(false);
        drop(serving);
        assert_eq!((callers(1), load.all[1].open.load(Ordering::Relaxed)), (0, 0));
    }
}
