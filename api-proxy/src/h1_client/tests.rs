use super::*;
use crate::testing::run;
use crate::wire::field_spans;
use http::header;
use http_body_util::BodyExt;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;

/// What the test provider does for each request on its one connection.
enum Step {
    /// Writes this answer.
    Answer(&'static [u8]),
    /// Writes this answer a byte at a time, yielding between bytes.
    Trickle(&'static [u8]),
    /// Writes this answer, then closes the connection.
    AnswerThenClose(&'static [u8]),
    /// Closes the connection without answering.
    Close,
}

/// A provider on one connection that reads each request (head and `Content-Length` body)
/// and acts out the next step; the requests it read, as bytes.
async fn provider(steps: Vec<Step>) -> (std::net::SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        for step in steps {
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            while buf.len() < head_end + len {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            log.lock().unwrap().push(buf.drain(..head_end + len).collect());
            match step {
                Step::Answer(a) => sock.write_all(a).await.unwrap(),
                Step::Trickle(a) => {
                    for b in a {
                        sock.write_all(&[*b]).await.unwrap();
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                }
                Step::AnswerThenClose(a) => {
                    sock.write_all(a).await.unwrap();
                    return;
                }
                Step::Close => return,
            }
        }
        // Keep the connection open until the client is done with it.
        let _ = sock.read(&mut [0u8; 1]).await;
    });
    (addr, seen)
}

fn request(method: Method, body: &'static str) -> Request<UpstreamBody> {
    let mut req = Request::new(UpstreamBody::Held(Some(Bytes::from(body))));
    *req.method_mut() = method;
    *req.uri_mut() = "/v1/x?q=1".parse().unwrap();
    req.headers_mut().insert(header::HOST, HeaderValue::from_static("api.test"));
    req
}

/// A connection to `addr` and the slot the pool would keep it in once it is given back.
async fn connect(addr: std::net::SocketAddr) -> (Conn, Rc<RefCell<Option<Conn>>>) {
    (Conn::new(tokio::net::TcpStream::connect(addr).await.unwrap()), Rc::new(RefCell::new(None)))
}

async fn call(
    conn: Conn,
    slot: &Rc<RefCell<Option<Conn>>>,
    req: Request<UpstreamBody>,
) -> (Response<()>, Result<Bytes, String>) {
    let slot = slot.clone();
    let resp = conn.call(req, Done::call(move |c| *slot.borrow_mut() = Some(c))).await.expect("an answer");
    let (mut parts, mut body) = resp.into_parts();
    body.headers_into(&mut parts.headers);
    let body = body.collect().await.map(|c| c.to_bytes()).map_err(|e| e.to_string());
    (Response::from_parts(parts, ()), body)
}

#[test]
fn a_length_framed_answer_is_read_exactly_and_the_connection_carries_the_next_call() {
    run(async {
        let (addr, seen) = provider(vec![
            Step::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello"),
            Step::Trickle(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabc"),
        ])
        .await;
        let (conn, slot) = connect(addr).await;
        let (resp, body) = call(conn, &slot, request(Method::GET, "")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-a"], "1");
        assert_eq!(body.unwrap(), "hello");
        let mut conn = slot.borrow_mut().take().expect("given back");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!conn.is_closed(), "an idle connection the provider keeps open is open");
        let (resp, body) = call(conn, &slot, request(Method::POST, "abc")).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(body.unwrap(), "abc");
        assert!(slot.borrow().is_some());
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0], b"GET /v1/x?q=1 HTTP/1.1\r\nhost: api.test\r\n\r\n");
        assert_eq!(seen[1], b"POST /v1/x?q=1 HTTP/1.1\r\nhost: api.test\r\ncontent-length: 3\r\n\r\nabc");
    });
}

/// A request head parsed as our server keeps it (the fields as offsets into its bytes).
fn request_head(text: &[u8]) -> RawHead {
    let mut buf = BytesMut::from(text);
    let mut fields = [httparse::EMPTY_HEADER; 16];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(&buf).unwrap() {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => unreachable!(),
    };
    let spans = field_spans(&buf, req.headers);
    RawHead::new(buf.split_to(len).freeze(), spans)
}

#[test]
fn a_request_heads_fields_are_found_in_any_case() {
    let text: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\nAUTHORIZATION: Bearer k\r\nTraceParent: 00-a\r\nX-A: 1\r\nauthorization: second\r\n\r\n";
    let head = request_head(text);
    assert_eq!(head.get(b"authorization"), Some(&b"Bearer k"[..]), "the first one");
    assert_eq!(head.get(b"traceparent"), Some(&b"00-a"[..]));
    assert_eq!(head.get(b"connection"), None);
    assert_eq!(head.get(b"x-a"), Some(&b"1"[..]));
    assert_eq!(head.fields().count(), 5);
}

/// A head's fields written through [`RawHead::put_fields`] read the same as written one by
/// one, whatever their spacing and whichever are left out.
#[test]
fn fields_copied_as_they_arrived_read_as_fields_written_one_by_one() {
    let text: &[u8] =
        b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB:2\r\nC:   3  \r\nD: 4\r\nE: 5\r\nDrop: x\r\nF: \r\nG: 7\r\n\r\n";
    let head = request_head(text);
    let names: Vec<Vec<u8>> = head.fields().map(|(n, _)| n.to_vec()).collect();
    // Every subset of the fields, by bit mask.
    for mask in 0u32..(1 << names.len()) {
        let keep = |name: &[u8]| names.iter().position(|n| n == name).is_some_and(|i| mask & (1 << i) != 0);
        let mut copied = BytesMut::new();
        head.put_fields(&mut copied, keep);
        let mut one_by_one = BytesMut::new();
        for (name, value) in head.fields().filter(|(n, _)| keep(n)) {
            put_field(&mut one_by_one, name, value);
        }
        assert_eq!(copied, one_by_one, "mask {mask:b}");
    }
}

#[test]
fn the_body_length_is_ours_to_state_and_empty_posts_say_zero() {
    run(async {
        let (addr, seen) = provider(vec![Step::Answer(b"HTTP/1.1 204 No Content\r\n\r\n")]).await;
        let (conn, slot) = connect(addr).await;
        let mut req = request(Method::POST, "");
        req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        req.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let (resp, body) = call(conn, &slot, req).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert!(body.unwrap().is_empty());
        assert!(slot.borrow().is_some());
        assert_eq!(seen.lock().unwrap()[0], b"POST /v1/x?q=1 HTTP/1.1\r\nhost: api.test\r\ncontent-length: 0\r\n\r\n");
    });
}

#[test]
fn chunked_answers_are_decoded_with_extensions_and_trailers_even_a_byte_at_a_time() {
    run(async {
        let answer: &[u8] =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0000000000000000006 \t;y=2\r\n world\r\n0\r\nx-t: 1\r\n\r\n";
        let (addr, _) = provider(vec![Step::Answer(answer), Step::Trickle(answer)]).await;
        let (conn, slot) = connect(addr).await;
        let (_, body) = call(conn, &slot, request(Method::GET, "")).await;
        assert_eq!(body.unwrap(), "hello world");
        let conn = slot.borrow_mut().take().expect("given back");
        let (_, body) = call(conn, &slot, request(Method::GET, "")).await;
        assert_eq!(body.unwrap(), "hello world");
        assert!(slot.borrow().is_some());
    });
}

#[test]
fn answers_to_head_and_not_modified_have_no_body_whatever_their_length_says() {
    run(async {
        let (addr, _) = provider(vec![
            Step::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"),
            Step::Answer(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"),
            Step::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        ])
        .await;
        let (conn, slot) = connect(addr).await;
        let (resp, body) = call(conn, &slot, request(Method::HEAD, "")).await;
        assert_eq!(resp.headers()["content-length"], "10", "kept: it describes the representation");
        assert!(body.unwrap().is_empty());
        let conn = slot.borrow_mut().take().expect("given back at once");
        let (resp, body) = call(conn, &slot, request(Method::GET, "")).await;
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert!(body.unwrap().is_empty());
        let conn = slot.borrow_mut().take().expect("given back at once");
        assert_eq!(call(conn, &slot, request(Method::GET, "")).await.1.unwrap(), "ok");
    });
}

#[test]
fn interim_answers_are_skipped() {
    run(async {
        let (addr, _) = provider(vec![Step::Answer(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        )])
        .await;
        let (conn, slot) = connect(addr).await;
        let (resp, body) = call(conn, &slot, request(Method::POST, "x")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body.unwrap(), "ok");
        assert!(slot.borrow().is_some());
    });
}

#[test]
fn connections_whose_framing_cannot_be_trusted_to_end_are_not_reused() {
    for answer in [
        // Delimited by the close.
        &b"HTTP/1.1 200 OK\r\n\r\nuntil close"[..],
        // Both framings: read by the chunked coding, then closed (RFC 9112 §6.3).
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        // The provider says it will close.
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nabc",
        // HTTP/1.0.
        b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nabc",
        // Bytes after the answer that no request asked for.
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\n",
    ] {
        run(async move {
            let (addr, _) = provider(vec![Step::AnswerThenClose(answer)]).await;
            let (conn, slot) = connect(addr).await;
            let (resp, body) = call(conn, &slot, request(Method::GET, "")).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let body = body.unwrap();
            assert!(body == "abc" || body == "until close", "{body:?}");
            assert!(slot.borrow().is_none(), "{}", String::from_utf8_lossy(answer));
        });
    }
}

#[test]
fn malformed_answers_fail_the_call() {
    for (answer, in_body) in [
        (&b"HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\nabc"[..], false),
        (b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\nabc", false),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabc", false),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
        (b"HTTP/1.1 2000 OK\r\n\r\n", false),
        (b"NOT HTTP\r\n\r\n", false),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", true),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\rabc\r\n0\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\n", true),
        // After chunk data, exactly CRLF: not another byte before the LF, not a bare LF.
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX\n0\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\rX0\r\n\r\n", true),
        // A chunk size line ends with CRLF too.
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", true),
        // After the size, only whitespace and then `;` extensions (found by the differential
        // fuzz target: anything after a space was taken for an extension).
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0  x1\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3 4\r\nabc\r\n0\r\n\r\n", true),
        // Trailer lines are fields, ended by CRLF (found by the differential fuzz target: these
        // were skipped unread).
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n01\xce\x01abc\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-t: 1\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nno-colon\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n: v\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-t: a\x01b\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-t: 1\r\r\n\r\n", true),
        // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing (found by the
        // differential fuzz target: this was read until the connection closed).
        (b"HTTP/1.0 200 OK\r\ntransfer-encoding: gzip\r\n\r\nabc", false),
        (b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false),
        // Cut short.
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", true),
        (b"HTTP/1.1 200 OK\r\ncontent-le", false),
    ] {
        run(async move {
            let (addr, _) = provider(vec![Step::AnswerThenClose(answer)]).await;
            let (conn, slot) = connect(addr).await;
            let label = String::from_utf8_lossy(answer).into_owned();
            match conn
                .call(request(Method::GET, ""), Done::call(|_| panic!("a malformed answer's connection is reused")))
                .await
            {
                Err(e) => assert!(!in_body, "{label}: failed at the head: {e}"),
                Ok(resp) => {
                    assert!(in_body, "{label}: the head was accepted");
                    assert!(resp.into_body().collect().await.is_err(), "{label}: the body was accepted");
                }
            }
            assert!(slot.borrow().is_none());
        });
    }
}

#[test]
fn a_connection_closed_before_any_answer_says_so() {
    run(async {
        let (addr, _) = provider(vec![Step::Close]).await;
        let (conn, _) = connect(addr).await;
        let r = conn.call(request(Method::GET, ""), Done::call(|_| ())).await;
        assert!(matches!(r, Err(CallError::NoAnswer(_))), "{:?}", r.err());
    });
}

#[test]
fn an_idle_connection_the_provider_closed_is_seen_as_closed() {
    run(async {
        let (addr, _) = provider(vec![Step::AnswerThenClose(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")]).await;
        let (conn, slot) = connect(addr).await;
        let (_, body) = call(conn, &slot, request(Method::GET, "")).await;
        assert_eq!(body.unwrap(), "ok");
        let mut conn = slot.borrow_mut().take().expect("given back: the answer was framed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(conn.is_closed());
    });
}

#[test]
fn any_framing_split_anywhere_decodes_to_the_same_body_and_ends_exactly() {
    run(async {
        let mut below = crate::testing::random(0x9e37_79b9_7f4a_7c15);
        for case in 0..300 {
            let len = below(3000) as usize;
            let body: Vec<u8> = (0..len).map(|_| below(256) as u8).collect();
            let chunked = below(2) == 0;
            let mut answer = Vec::new();
            if chunked {
                answer.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                let mut rest = &body[..];
                while !rest.is_empty() {
                    let n = (1 + below(700) as usize).min(rest.len());
                    let ext = if below(4) == 0 { ";name=\"v\"" } else { "" };
                    let size = if below(2) == 0 { format!("{n:x}") } else { format!("{n:X}") };
                    answer.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
                    answer.extend_from_slice(&rest[..n]);
                    answer.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                }
                answer.extend_from_slice(if below(2) == 0 { b"0\r\n\r\n" } else { b"0\r\nx-sum: 1\r\n\r\n" });
            } else {
                answer.extend_from_slice(format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").as_bytes());
                answer.extend_from_slice(&body);
            }
            // The provider's side of an in-memory connection: the answer in random pieces.
            let (client, mut provider) = tokio::io::duplex(64 * 1024);
            let mut pieces = Vec::new();
            let mut at = 0;
            while at < answer.len() {
                let n = (1 + below(900) as usize).min(answer.len() - at);
                pieces.push(answer[at..at + n].to_vec());
                at += n;
            }
            tokio::task::spawn_local(async move {
                let mut request = [0u8; 256];
                let _ = provider.read(&mut request).await;
                for piece in pieces {
                    provider.write_all(&piece).await.unwrap();
                    tokio::task::yield_now().await;
                }
                let _ = provider.read(&mut request).await; // hold the connection open
            });
            let slot = Rc::new(RefCell::new(None));
            let (resp, got) = call(Conn::new(client), &slot, request(Method::GET, "")).await;
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(got.expect("the body decodes"), body, "case {case} (chunked: {chunked})");
            assert!(slot.borrow().is_some(), "case {case}: an exactly framed answer frees its connection");
        }
    });
}
