//! The connections (or the rest of one) that hyper serves: HTTP/2, and HTTP/1.1 requests our
//! server hands over (streamed bodies, `Expect`), with the bytes already read given back first.

use super::*;

/// Which of hyper's servers serves (the rest of) a connection.
pub(super) enum Hyper {
    /// HTTP/1.1, with this head timeout: for the rest of one request, or, `kept_alive`, for
    /// every request of the connection (the reference stack, `hyper_only`).
    Http1 {
        head_timeout: Duration,
        kept_alive: bool,
    },
    Http2,
}

/// Serves (the rest of) a connection with hyper's HTTP/1.1 or HTTP/2 server.
pub(super) async fn serve_hyper<T, F, Fut, B>(io: Rewind<T>, protocol: Hyper, handler: F, stopping: &Rc<Stopping>)
where
    T: Io,
    F: Fn(Request<CallerBody>) -> Fut + Clone + 'static,
    Fut: Future<Output = Response<B>> + 'static,
    B: Body<Data = Bytes> + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (io, service) = (TokioIo::new(io), hyper_service(handler));
    match protocol {
        Hyper::Http1 { head_timeout, kept_alive } => {
            // Handed over by our server (not kept alive): one request, then the connection
            // closes. That request passed our framing rules before it was handed over, and no
            // later request may reach hyper's more lenient ones (which accept, for one, a request
            // with two `Host` fields). Kept alive only for the reference stack.
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(head_timeout).keep_alive(kept_alive);
            until_stopped(builder.serve_connection(io, service), stopping, |c| c.graceful_shutdown()).await
        }
        Hyper::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(LocalExec);
            builder.timer(TokioTimer::new());
            until_stopped(builder.serve_connection(io, service), stopping, |c| c.graceful_shutdown()).await
        }
    }
}

/// Serves a whole connection with hyper (the reference stack): HTTP/2 when the caller opens
/// with its preface, else HTTP/1.1 kept alive.
pub(super) async fn serve_hyper_only<T, F, Fut, B>(
    mut io: T,
    head_timeout: Duration,
    handler: F,
    stopping: &Rc<Stopping>,
) where
    T: Io,
    F: Fn(Request<CallerBody>) -> Fut + Clone + 'static,
    Fut: Future<Output = Response<B>> + 'static,
    B: Body<Data = Bytes> + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use tokio::io::AsyncReadExt;
    // Read until the first bytes are, or cannot be, HTTP/2's preface; they are read again first.
    let mut first = BytesMut::new();
    let sniffed = tokio::time::timeout(head_timeout, async {
        while first.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&first) {
            if io.read_buf(&mut first).await? == 0 {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(sniffed, Ok(Ok(()))) || first.is_empty() {
        return;
    }
    let protocol =
        if first.starts_with(H2_PREFACE) { Hyper::Http2 } else { Hyper::Http1 { head_timeout, kept_alive: true } };
    serve_hyper(Rewind::new(io, first.freeze()), protocol, handler, stopping).await
}

/// Drives one of hyper's server connections; when the worker stops, asks it to finish what it
/// is serving (`graceful`) and waits for that.
pub(super) async fn until_stopped<C, E>(conn: C, stopping: &Rc<Stopping>, graceful: impl FnOnce(Pin<&mut C>))
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

pub(super) fn hyper_service<F, Fut, B>(
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

/// A connection whose first bytes have been read already: they are read again first.
pub struct Rewind<T> {
    pending: Bytes,
    io: T,
}

impl<T> Rewind<T> {
    pub(super) fn new(io: T, pending: Bytes) -> Self {
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
