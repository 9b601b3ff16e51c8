//! The proxy's HTTP/1.1 client (answer parser and body decoder, the chunk decoder among it)
//! against hyper's client, on the same answer to the same `GET`.
//!
//! An answer our client reads to its end must be one hyper reads too, with the same status,
//! header fields and body bytes; where hyper reads an answer whole and we do not, ours must be a
//! deliberate stricter rule (see [`stricter_rule_refuses`]). Inputs starting with `!` test the
//! chunk decoder alone: the rest follows a fixed chunked head.
#![no_main]

mod common;

use api_proxy::h1_client::{Conn, Done, Home};
use api_proxy::outgoing::UpstreamBody;
use bytes::Bytes;
use common::{block_on, fields, Replay};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;

const CHUNKED_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";

/// What a client made of an answer: status, fields and the whole body.
#[derive(Debug)]
struct Read {
    status: http::StatusCode,
    fields: Vec<(String, Vec<u8>)>,
    body: Bytes,
}

struct Nowhere;
impl Home for Nowhere {
    fn put(&self, _: usize, _: u64, _: Conn) {}
}

fn request<B>(body: B) -> http::Request<B> {
    let mut req = http::Request::new(body);
    *req.uri_mut() = http::Uri::from_static("/");
    req.headers_mut().insert(http::header::HOST, http::HeaderValue::from_static("provider.test"));
    req
}

fn ours(answer: &[u8]) -> Result<Read, String> {
    block_on(async {
        let conn = Conn::new(Replay::answering(answer));
        let done = Done::new(std::rc::Rc::new(Nowhere), 0, 0);
        let resp = conn.call(request(UpstreamBody::Held(None)), done).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut headers = http::HeaderMap::new();
        body.headers_into(&mut headers);
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Read { status, fields: fields(&headers), body })
    })
}

fn hypers(answer: &[u8]) -> Result<Read, String> {
    block_on(async {
        let io = hyper_util::rt::TokioIo::new(Replay::answering(answer));
        // As many fields as our client takes (hyper's default is 100).
        let (mut tx, conn) = hyper::client::conn::http1::Builder::new()
            .max_headers(api_proxy::wire::MAX_ANSWER_FIELDS)
            .handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        let call = async move {
            let resp =
                tx.send_request(request(http_body_util::Empty::<Bytes>::new())).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(Read { status, fields: fields(&headers), body })
        };
        let (read, _) = tokio::join!(call, conn);
        read
    })
}

/// Whether one of our stricter rules refuses an answer hyper reads (`ours` is why we did):
/// - a line of the chunked coding (size line or trailer field) ended by a bare LF, which hyper
///   takes in trailers; we want CRLF throughout the coding, as bare LFs are how chunked bodies
///   are smuggled past parsers that disagree;
/// - `101 Switching Protocols`, which no proxied call asks for (RFC 9110 §15.2.2): hyper hands
///   it over as an answer;
/// - `Transfer-Encoding` in an HTTP/1.0 answer, faulty framing whatever the status (RFC 9112
///   §6.1); hyper refuses it too except where the status has no body.
fn stricter_rule_refuses(answer: &[u8], ours: &str) -> bool {
    // Said only of a status line that reads 101, and of an HTTP/1.0 head with the field.
    if ours.contains("101 Switching Protocols was not asked for") || ours.contains("in an HTTP/1.0 answer") {
        return true;
    }
    // Where the head ends, as both parsers (httparse underneath) read it.
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let Ok(httparse::Status::Complete(head)) = httparse::Response::new(&mut fields).parse(answer) else {
        return false;
    };
    let body = &answer[head..];
    let bare_lf = body.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || body[i - 1] != b'\r'));
    ours.contains("not ended by CRLF") && bare_lf
}

fuzz_target!(|data: &[u8]| {
    let answer: Vec<u8> = match data.strip_prefix(b"!") {
        Some(rest) => [CHUNKED_HEAD, rest].concat(),
        None => data.to_vec(),
    };
    let (ours, theirs) = (ours(&answer), hypers(&answer));
    match (ours, theirs) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.status, b.status, "status");
            assert_eq!(a.fields, b.fields, "header fields");
            assert_eq!(a.body, b.body, "body");
        }
        (Ok(a), Err(e)) => {
            panic!("we read an answer hyper refuses ({e}): {a:?} from {:?}", String::from_utf8_lossy(&answer))
        }
        (Err(e), Ok(_)) => assert!(
            stricter_rule_refuses(&answer, &e),
            "hyper reads an answer we refuse ({e}), for no rule of ours: {:?}",
            String::from_utf8_lossy(&answer)
        ),
        (Err(_), Err(_)) => {}
    }
});
