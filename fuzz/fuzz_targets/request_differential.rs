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
    let conn =
        hyper::server::conn::http1::Builder::new().keep_alive(false).half_close(true).serve_connection(io, service);
    let served = block_on(async { tokio::time::timeout(std::time::Duration::from_secs(1), conn).await });
    seen.take().ok_or_else(|| format!("{served:?}"))
}

/// Whether one of our stricter framing rules refuses a request with these fields.
fn stricter_rule_refuses(version: http::Version, headers: &http::HeaderMap) -> bool {
    let hosts = headers.get_all(http::header::HOST).iter().count();
    let te: Vec<_> = headers.get_all(http::header::TRANSFER_ENCODING).iter().collect();
    let last_chunked = te
        .last()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
    hosts > 1
        || (version == http::Version::HTTP_11 && hosts == 0)
        || (!te.is_empty() && version != http::Version::HTTP_11)
        || (!te.is_empty() && headers.contains_key(http::header::CONTENT_LENGTH))
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
            assert_eq!(fields(req.headers()), fields(&seen.headers), "header fields");
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
            if let Ok(seen) = theirs {
                assert!(
                    stricter_rule_refuses(seen.version, &seen.headers),
                    "we refuse a request hyper serves, for no rule of ours: {:?}",
                    String::from_utf8_lossy(data)
                );
            }
        }
    }
});
