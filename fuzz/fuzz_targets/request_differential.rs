//! The proxy's request parser against hyper's HTTP/1.1 server, on the same bytes.
//!
//! Whatever a caller sends, a request our server serves itself (`Admission::Held`) must be one
//! hyper also accepts, with the same method, target, version, header fields and body. Where we
//! refuse and hyper accepts, the refusal must be one of our deliberate stricter rules (RFC 9112
//! §6.1, §6.3 and §3.2, against request smuggling): a `Host` field other than exactly one in
//! HTTP/1.1 (or more than one in HTTP/1.0), `Transfer-Encoding` in HTTP/1.0, `Transfer-Encoding`
//! together with `Content-Length`, or a transfer coding that does not end in `chunked`. Any
//! other disagreement fails the target.
#![no_main]

mod common;

use api_proxy::h1_server::{decide, Admission};
use bytes::Bytes;
use common::{block_on, fields, Replay};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::rc::Rc;

const HELD: usize = 4096;

/// What hyper made of the first request on a connection: its head and whole body, or nothing.
struct Seen {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    body: Option<Bytes>,
}

fn hyper_reads(data: &[u8]) -> Result<Seen, String> {
    let seen: Rc<RefCell<Option<Seen>>> = Rc::default();
    let slot = seen.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let slot = slot.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.ok().map(|c| c.to_bytes());
            if slot.borrow().is_none() {
                *slot.borrow_mut() = Some(Seen {
                    method: parts.method,
                    uri: parts.uri,
                    version: parts.version,
                    headers: parts.headers,
                    body,
                });
            }
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
        }
    });
    let io = hyper_util::rt::TokioIo::new(Replay::new(data));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .half_close(true)
        .max_headers(api_proxy::wire::MAX_REQUEST_FIELDS)
        .serve_connection(io, service);
    let served = block_on(async { tokio::time::timeout(std::time::Duration::from_secs(1), conn).await });
    seen.take().ok_or_else(|| format!("{served:?}"))
}

/// A request's fields for comparison, but `Content-Length`: repeated fields of one value may be
/// taken as one (RFC 9112 §6.3), which hyper does and we do not (the proxy states the length
/// anew either way); the length itself is compared as a number.
fn framed_fields(headers: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    fields(headers).into_iter().filter(|(n, _)| n != "content-length").collect()
}

/// Whether one of our stricter framing rules refuses the request at the front of `data`, read
/// from its fields as they arrived (hyper drops `Content-Length` when `Transfer-Encoding` is
/// there, so its map cannot tell).
fn stricter_rule_refuses(data: &[u8]) -> bool {
    let mut fields = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut fields);
    if !matches!(req.parse(data), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    let v11 = req.version == Some(1);
    let named = |n: &str| -> Vec<&[u8]> {
        req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(n)).map(|h| h.value).collect()
    };
    let hosts = named("host").len();
    let te = named("transfer-encoding");
    let last_chunked = te
        .last()
        .and_then(|v| v.rsplit(|&b| b == b',').next())
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    hosts > 1
        || (v11 && hosts == 0)
        || (!te.is_empty() && !v11)
        || (!te.is_empty() && !named("content-length").is_empty())
        || (!te.is_empty() && !last_chunked)
}

fuzz_target!(|data: &[u8]| {
    let ours = decide(data, HELD);
    let Some(ours) = ours else { return }; // our server waits for more of the head
    let theirs = hyper_reads(data);
    match ours {
        Ok((Admission::Held { length, .. }, req, head_len)) => {
            let seen = theirs.unwrap_or_else(|e| {
                panic!("we serve a request hyper refuses ({e}): {:?}", String::from_utf8_lossy(data))
            });
            assert_eq!(req.method(), seen.method, "method");
            assert_eq!(req.uri(), &seen.uri, "target");
            assert_eq!(req.version(), seen.version, "version");
            assert_eq!(framed_fields(req.headers()), framed_fields(&seen.headers), "header fields");
            let hypers_length = seen.headers.get(http::header::CONTENT_LENGTH).map(|v| {
                let v = v.to_str().expect("hyper checked it");
                v.split(',').next().unwrap_or_default().trim().parse::<usize>().expect("hyper parsed it")
            });
            assert_eq!(hypers_length.unwrap_or(0), length, "body length");
            // The body, when all of it is there: exactly the bytes hyper read for it.
            if data.len() >= head_len + length {
                let body = seen.body.expect("hyper read the whole body");
                assert_eq!(&body[..], &data[head_len..head_len + length], "body");
            }
        }
        // Hyper serves these itself, after our parser read the head.
        Ok((Admission::ToHyper, ..)) => {}
        Ok((Admission::Refuse(_), ..)) => unreachable!("decide answers refusals as Err"),
        Err(_) => {
            if theirs.is_ok() {
                assert!(
                    stricter_rule_refuses(data),
                    "we refuse a request hyper serves, for no rule of ours: {:?}",
                    String::from_utf8_lossy(data)
                );
            }
        }
    }
});
