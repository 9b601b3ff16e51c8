//! What the differential targets share: an in-memory connection that replays the fuzzer's
//! bytes to whichever side reads them, and one current-thread runtime per process.
#![allow(dead_code)] // each target uses part of it

use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads give `input` (then end of stream); writes are taken and dropped.
pub struct Replay {
    input: Vec<u8>,
    at: usize,
    /// Whether reads wait for a first write, as a server's answer waits for the request (a
    /// client that finds bytes on an idle connection rightly drops it).
    answers: bool,
    written: bool,
    reader: Option<Waker>,
}

impl Replay {
    /// A caller's side: `input` is there from the start.
    pub fn new(input: &[u8]) -> Self {
        Self { input: input.to_vec(), at: 0, answers: false, written: false, reader: None }
    }

    /// A server's side: `input` arrives once a request has been written.
    pub fn answering(input: &[u8]) -> Self {
        Self { answers: true, ..Self::new(input) }
    }
}

impl AsyncRead for Replay {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.answers && !self.written {
            self.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.remaining().min(self.input.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.input[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.written = true;
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
}

/// Runs `f` to completion on this thread's runtime, within a `LocalSet` (hyper's connections
/// and ours are `!Send` here).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| tokio::task::LocalSet::new().block_on(rt, f))
}

/// A message's header fields, names lowercased, in a stable order, for comparison.
pub fn fields(headers: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
    v.sort();
    v
}
