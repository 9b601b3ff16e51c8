//! What the proxy answers its callers with: its own JSON answers, or a provider's answer relayed
//! as it arrives (hop-by-hop and authbridge's own fields removed, within the call's deadline).

use crate::deadline::Deadline;
use crate::h1_server::RawFields;
use crate::pool::UpBody;
use crate::wire::{self, RawHead};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, SizeHint};
use shared::http::ApiError;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The provider's response body, passed to the caller frame by frame as it arrives, within the
/// call's deadline. (Its connection goes back to the pool when it has been read to its end.)
pub struct RelayBody {
    pub(crate) body: UpBody,
    pub(crate) deadline: Deadline,
    /// The whole body, when it was read before the answer went back (to judge it); `body` is
    /// then at its end, and its head still names the answer's fields.
    pub(crate) ready: Option<Bytes>,
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

impl RawFields for ResponseBody {
    fn raw_fields(&self) -> Option<(&RawHead, bool)> {
        match self {
            Either::Right(RelayBody { body: Either::Right(raw), .. }) => {
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
pub fn relay(resp: Response<UpBody>, deadline: Deadline, raw_ok: bool) -> Response<ResponseBody> {
    let (parts, body) = answer_parts(resp, raw_ok);
    Response::from_parts(parts, Either::Right(RelayBody { body, deadline, ready: None }))
}

/// A provider's answer with its end-to-end headers: in the map, filtered, unless `raw_ok` (then
/// our HTTP/1.1 server writes our client's raw fields, filtered the same way).
pub fn answer_parts(resp: Response<UpBody>, raw_ok: bool) -> (http::response::Parts, UpBody) {
    let (mut parts, mut body) = resp.into_parts();
    // The caller's connection has its own version (an HTTP/2 provider may answer an HTTP/1.1 caller).
    parts.version = http::Version::default();
    // Our client noted whether `Connection` named any field as it parsed the head.
    let may_list = match &mut body {
        Either::Right(raw) if raw_ok => false, // filtered as they are written
        Either::Right(raw) => {
            raw.headers_into(&mut parts.headers);
            raw.connection_lists_fields()
        }
        Either::Left(_) => true,
    };
    strip_response_headers(&mut parts.headers, may_list);
    (parts, body)
}

fn strip(name: &header::HeaderName, connection_listed: &[header::HeaderName]) -> bool {
    wire::hop_by_hop(name.as_str().as_bytes()) || connection_listed.contains(name)
}

/// Header names the `Connection` header lists: hop-by-hop as well. Most messages have no
/// `Connection` header, or list only `keep-alive` or `close` (which name no header of their
/// own to strip, or one stripped anyway): those allocate nothing.
fn connection_listed(headers: &HeaderMap) -> Vec<header::HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| wire::listed_fields(v.as_bytes()))
        .filter_map(|t| header::HeaderName::from_bytes(t).ok())
        .collect()
}

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

pub fn full(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<ResponseBody> {
    let mut r = Response::new(Either::Left(Full::new(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn json(status: StatusCode, body: String) -> Response<ResponseBody> {
    full(status, "application/json", body.into())
}

/// The answer for an error the proxy makes itself (`shared::http::ApiError`: JSON, a stable
/// code, and the `x-authbridge-error` marker).
pub fn error_response(e: &ApiError) -> Response<ResponseBody> {
    let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = Response::new(Either::Left(Full::new(e.body().into())));
    *r.status_mut() = status;
    *r.headers_mut() = crate::h1_server::error_fields(e);
    r
}
