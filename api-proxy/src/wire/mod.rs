//! HTTP/1.1 as bytes (RFC 9112): heads parsed and written, how bodies are delimited, and which
//! fields belong to one hop. Shared by the proxy's caller side ([`crate::h1_server`]) and its
//! client side ([`crate::h1_client`]); nothing here knows about providers, credentials or routes.

mod head;
pub use head::*;

use bytes::BytesMut;
use http::{header, HeaderMap, Method, StatusCode};

/// The largest head accepted (a request's is answered 431 past it).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a request head (431 past it).
pub const MAX_REQUEST_FIELDS: usize = 100;
/// The most header fields in an answer's head.
pub const MAX_ANSWER_FIELDS: usize = 128;
/// Room made for a read of a head: most heads are far smaller.
pub const READ_SIZE: usize = 4 * 1024;
/// The most a read of a body of known length asks room for at a time.
pub const BODY_READ: usize = 64 * 1024;
/// Bodies up to this size are copied in after their head and written in the same call; larger
/// ones are written on their own.
pub const INLINE_BODY: usize = 16 * 1024;

/// A connection's byte stream: TCP, or TLS over TCP.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static> Io for T {}

/// Runs tasks on the worker's own thread, in its `LocalSet`, beside the calls they serve: the
/// worker's caller connections and its upstream connections are scheduled by one queue.
#[derive(Clone, Copy)]
pub struct LocalExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// Whether a header field (its name in any case) describes one hop (RFC 9110 §7.6.1) or
/// belongs to authbridge, and so is never forwarded either way: `Connection`, `Keep-Alive`,
/// `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`, `x-authbridge-*`. (Fields `Connection` lists are too.)
pub fn hop_by_hop(name: &[u8]) -> bool {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    // Told apart by length first: most fields are none of these.
    let listed = match name.len() {
        2 => is(b"te"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        18 => is(b"proxy-authenticate"),
        19 => is(b"proxy-authorization"),
        _ => false,
    };
    listed || (name.len() >= 13 && name[..13].eq_ignore_ascii_case(b"x-authbridge-"))
}

/// Whether `b` may be part of a token, such as a field name (`tchar`, RFC 9110 §5.6.2).
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body follows, whatever the fields say (an answer to HEAD, a 304): a `Content-Length`
    /// there describes the representation (RFC 9110 §8.6) and is relayed as it is.
    None,
    /// This many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes.
    Close,
}

/// How the answer's body is delimited (RFC 9112 §6.3), and whether that framing lets the
/// connection carry another call.
pub fn answer_framing(
    status: StatusCode,
    version: http::Version,
    notes: &Notes,
    head_request: bool,
) -> Result<(Framing, bool), &'static str> {
    // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing (its sender
    // may not have framed it as the field says), whatever else it says.
    if notes.transfer_encoding && version != http::Version::HTTP_11 {
        return Err("Transfer-Encoding in an HTTP/1.0 answer");
    }
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), true));
    }
    if notes.transfer_encoding {
        // Both framings: read by the coding, then close.
        let framed = matches!(notes.length, Ok(None));
        return Ok(if notes.chunked_last { (Framing::Chunked, framed) } else { (Framing::Close, false) });
    }
    Ok(match notes.length? {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

/// A request head: `METHOD /path?query HTTP/1.1`, the headers, and the body's length.
pub fn encode_request_head(out: &mut BytesMut, method: &Method, uri: &http::Uri, headers: &HeaderMap, body_len: usize) {
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
pub fn encode_request_line(out: &mut BytesMut, method: &Method, target: impl FnOnce(&mut BytesMut)) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    target(out);
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

pub fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The body's length (for a body, or a method that defines one: RFC 9110 §8.6, a user agent
/// sends Content-Length for POST, PUT and PATCH even when the body is empty), and the head's end.
pub fn put_length(out: &mut BytesMut, method: &Method, body_len: usize) {
    if body_len > 0 || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// An answer's status line and header fields (without the blank line that ends the head): the
/// map's, then the raw fields (filtered as the proxy filters answers), the date, the framing.
pub fn encode_response_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
    raw: Option<(&RawHead, bool)>,
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
        let listed = if lists_fields { connection_listed(raw.fields()) } else { Vec::new() };
        raw.put_fields(out, |name| {
            if hop_by_hop(name)
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

pub fn put_header_number(out: &mut BytesMut, name: &[u8], n: u64) {
    out.extend_from_slice(name);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn put_chunk_size(out: &mut BytesMut, n: usize) {
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
pub fn put_date(out: &mut BytesMut) {
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
