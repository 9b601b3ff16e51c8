use super::*;
use crate::testing::run;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use std::collections::VecDeque;
use std::time::Instant;
use tokio::io::AsyncReadExt;

#[test]
fn a_first_head_left_unfinished_is_told_and_so_is_its_arrival() {
    use tokio::io::AsyncWriteExt;
    run(async {
        let told = Rc::new(std::cell::RefCell::new(Vec::new()));
        let options = Rc::new(Options { head_timeout: Duration::from_secs(5), held_body: 1024, hyper_only: false });
        let (mut caller, io) = tokio::io::duplex(64 * 1024);
        let t = told.clone();
        let stopping = Rc::new(Stopping::default());
        tokio::task::spawn_local(serve(io, false, echo, gate, options.clone(), stopping.clone(), move |yes| {
            t.borrow_mut().push(yes)
        }));
        caller.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n").await.unwrap();
        let heard = tokio::time::timeout(Duration::from_secs(2), async {
            while told.borrow().is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        assert!(heard.await.is_ok(), "the unfinished first head was never told");
        caller.write_all(b"\r\n").await.unwrap();
        let mut answer = [0u8; 512];
        let n = caller.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(&answer[..n]));
        // A caller's later heads, whole or in pieces, are not its first: nothing more is told.
        caller.write_all(b"GET /b HTTP/1.1\r\nHo").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        caller.write_all(b"st: h\r\n\r\n").await.unwrap();
        let n = caller.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200 "));
        assert_eq!(*told.borrow(), [false, true]);

        // A connection whose first head arrives whole is never told anything.
        let told = Rc::new(std::cell::RefCell::new(Vec::new()));
        let (mut caller, io) = tokio::io::duplex(64 * 1024);
        let t = told.clone();
        caller.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
        tokio::task::spawn_local(serve(io, false, echo, gate, options, stopping, move |yes| t.borrow_mut().push(yes)));
        let n = caller.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200 "));
        assert!(told.borrow().is_empty());
    });
}

#[test]
fn the_fields_looked_up_on_every_call_are_found_as_parsed_whatever_their_case() {
    let mut buf = BytesMut::from(
        &b"GET /x HTTP/1.1\r\nHost: h\r\nAUTHORIZATION: Bearer first\r\nX-A: 1\r\nTraceParent: tp\r\n\
           authorization: Bearer second\r\n\r\n"[..],
    );
    let Parsed::Head(_, raw, ..) = parse_request(&mut buf) else { panic!("a complete head") };
    assert_eq!(raw.get(b"authorization"), Some(&b"Bearer first"[..]), "the first of two");
    assert_eq!(raw.get(b"traceparent"), Some(&b"tp"[..]));
    assert_eq!(raw.get(b"x-a"), Some(&b"1"[..]));
    let mut buf = BytesMut::from(&b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"[..]);
    let Parsed::Head(_, raw, ..) = parse_request(&mut buf) else { panic!("a complete head") };
    assert_eq!((raw.get(b"authorization"), raw.get(b"traceparent")), (None, None));
}

/// An answer body for the tests: these frames, of a stated length or not, an error after
/// them if `fail`, and a short wait before the first one if `slow`.
struct Frames {
    frames: VecDeque<Bytes>,
    exact: Option<u64>,
    fail: bool,
    slow: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A provider's header fields as our client read them.
    raw: Option<(RawHead, bool)>,
}

impl RawFields for Frames {
    fn raw_fields(&self) -> Option<(&RawHead, bool)> {
        self.raw.as_ref().map(|(h, l)| (h, *l))
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(s) = self.slow.as_mut() {
            if s.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.slow = None;
        }
        match self.frames.pop_front() {
            Some(f) => Poll::Ready(Some(Ok(Frame::data(f)))),
            None if self.fail => Poll::Ready(Some(Err(std::io::Error::other("the provider went away")))),
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.exact.map(SizeHint::with_exact).unwrap_or_default()
    }
}

fn frames(parts: &[&'static str], exact: bool) -> Frames {
    let frames: VecDeque<Bytes> = parts.iter().map(|p| Bytes::from_static(p.as_bytes())).collect();
    let exact = exact.then(|| frames.iter().map(|f| f.len() as u64).sum());
    Frames { frames, exact, fail: false, slow: None, raw: None }
}

/// Echoes what it was asked (method, target, version, host, body, and how the body came),
/// except for a few targets that answer with particular bodies.
async fn echo(req: Request<CallerBody>) -> Response<Frames> {
    let (mut parts, body) = req.into_parts();
    if let Some(raw) = body.fields() {
        parts.headers = raw.to_map();
    }
    let (how, body) = match body {
        CallerBody::Held(b, _) => ("held", b),
        CallerBody::Streaming(b) => ("streamed", b.collect().await.map(|c| c.to_bytes()).unwrap_or_default()),
    };
    let body = match parts.uri.path() {
        "/chunked" => frames(&["ab", "cd"], false),
        "/big" => Frames {
            frames: [Bytes::from(vec![b'x'; 40_000]), Bytes::from_static(b"end")].into(),
            exact: Some(40_003),
            fail: false,
            slow: None,
            raw: None,
        },
        "/fail" => Frames { fail: true, ..frames(&["partial"], false) },
        "/slow-body" => {
            Frames { slow: Some(Box::pin(tokio::time::sleep(Duration::from_millis(300)))), ..frames(&["late"], true) }
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            frames(&["late"], true)
        }
        "/raw" => Frames {
            raw: Some(RawHead::parse(
                b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
                  Keep-Alive: timeout=5\r\nX-Authbridge-Error: forged\r\nTransfer-Encoding: chunked\r\n\
                  Content-Length: 99\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nX-Kept: yes\r\n\r\n",
            )),
            ..frames(&["body"], true)
        },
        _ => {
            let host = parts.headers.get(header::HOST).map_or("-", |h| h.to_str().unwrap());
            let text = format!(
                "{} {} {:?} host={host} {how}={}",
                parts.method,
                parts.uri,
                parts.version,
                String::from_utf8_lossy(&body)
            );
            Frames { frames: [Bytes::from(text)].into(), exact: None, fail: false, slow: None, raw: None }.exact()
        }
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert("x-test", http::HeaderValue::from_static("1"));
    resp
}

impl Frames {
    fn exact(mut self) -> Self {
        self.exact = Some(self.frames.iter().map(|f| f.len() as u64).sum());
        self
    }
}

/// A server on a free port with `timeout` as its head timeout; its address and its stop.
async fn server(timeout: Duration) -> (std::net::SocketAddr, Rc<Stopping>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = Rc::new(Options { head_timeout: timeout, held_body: 1024, hyper_only: false });
    let stopping = Rc::new(Stopping::default());
    let stop = stopping.clone();
    tokio::task::spawn_local(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::task::spawn_local(serve(stream, false, echo, gate, options.clone(), stopping.clone(), |_| {}));
        }
    });
    (addr, stop)
}

/// Answers 401 to requests that carry `authorization: bad`; lets in the bodies of others.
async fn gate_for(authorized: bool) -> Option<Response<Frames>> {
    if authorized {
        return None;
    }
    let body =
        Frames { frames: [Bytes::from_static(b"refused")].into(), exact: None, fail: false, slow: None, raw: None };
    let mut resp = Response::new(body.exact());
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    Some(resp)
}

fn gate(_: &Request<()>, fields: &RawHead) -> impl Future<Output = Option<Response<Frames>>> {
    gate_for(fields.get(b"authorization") != Some(b"bad"))
}

/// Writes `input` (in pieces of `split` bytes, if given) and reads until the server closes
/// the connection; the transcript with `date` fields taken out.
async fn exchange(addr: std::net::SocketAddr, input: &[u8], split: Option<usize>) -> String {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.set_nodelay(true).unwrap();
    match split {
        None => sock.write_all(input).await.unwrap(),
        Some(n) => {
            for piece in input.chunks(n) {
                sock.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .unwrap();
    undated(&out)
}

fn undated(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).split("\r\n").filter(|l| !l.starts_with("date: ")).collect::<Vec<_>>().join("\r\n")
}

fn echoed(line: &str) -> String {
    format!("HTTP/1.1 200 OK\r\nx-test: 1\r\ncontent-length: {}\r\n\r\n{line}", line.len())
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection_whatever_the_read_sizes() {
    run(async {
        let (addr, _) = server(Duration::from_secs(5)).await;
        let input = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n\
            POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
            GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        let expected = format!(
            "{}{}{}",
            echoed("GET /a?x=1 HTTP/1.1 host=h held="),
            echoed("POST /b HTTP/1.1 host=h held=hello"),
            echoed("GET /c HTTP/1.1 host=h held=").replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n"),
        );
        assert_eq!(exchange(addr, input, None).await, expected);
        for split in [1, 3, 17] {
            assert_eq!(exchange(addr, input, Some(split)).await, expected, "written {split} bytes at a time");
        }
    });
}

#[test]
fn random_requests_split_at_random_points_are_each_read_exactly() {
    run(async {
        let (addr, _) = server(Duration::from_secs(5)).await;
        let mut next = crate::testing::random(0x2545_f491_4f6c_dd1d);
        for case in 0..40 {
            let mut input = Vec::new();
            let mut expected = String::new();
            let count = 1 + next(4);
            for i in 0..count {
                let len = next(40) as usize;
                let body: String = (0..len).map(|k| char::from(b'a' + ((k as u64 + case) % 26) as u8)).collect();
                let last = i + 1 == count;
                let method = if len > 0 || next(2) == 0 { "POST" } else { "GET" };
                input.extend_from_slice(format!("{method} /r{case}/{i} HTTP/1.1\r\nhost: h{i}\r\n").as_bytes());
                if len > 0 || method == "POST" {
                    input.extend_from_slice(format!("content-length: {len}\r\n").as_bytes());
                }
                if last {
                    input.extend_from_slice(b"connection: close\r\n");
                }
                input.extend_from_slice(b"\r\n");
                input.extend_from_slice(body.as_bytes());
                let answer = echoed(&format!("{method} /r{case}/{i} HTTP/1.1 host=h{i} held={body}"));
                expected.push_str(&if last {
                    answer.replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n")
                } else {
                    answer
                });
            }
            let split = 1 + next(input.len() as u64) as usize;
            assert_eq!(exchange(addr, &input, Some(split)).await, expected, "case {case}, split {split}");
        }
    });
}

#[test]
fn ambiguous_or_malformed_requests_are_refused_and_nothing_after_them_is_served() {
    run(async {
        let (addr, _) = server(Duration::from_secs(5)).await;
        let next = "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
        for (request, status) in [
            ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", "400"),
            ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
            ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\nab", "400"),
            ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", "400"),
            ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +2\r\n\r\nab", "400"),
            ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x2\r\n\r\nab", "400"),
            ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n", "400"),
            ("GET / HTTP/1.1\r\n\r\n", "400"),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
            ("GET / HTTP/1.1\r\nHost : h\r\n\r\n", "400"),
            ("GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", "400"),
            ("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", "400"),
            ("GET / HTTP/1.1\nHost: h\r\nX: a\rb\r\n\r\n", "400"),
            ("GET / HTTP/2.0\r\nHost: h\r\n\r\n", "505"),
        ] {
            let transcript = exchange(addr, format!("{request}{next}").as_bytes(), None).await;
            assert!(transcript.starts_with(&format!("HTTP/1.1 {status} ")), "{request:?} got {transcript}");
            assert!(transcript.contains("connection: close\r\n"), "{request:?} got {transcript}");
            assert!(transcript.contains(r#""error":"invalid_request""#), "{request:?} got {transcript}");
            assert!(!transcript.contains("smuggled"), "{request:?} let the next request through: {transcript}");
            assert_eq!(transcript.matches("HTTP/1.1 ").count(), 1, "{request:?} got {transcript}");
        }
    });
}

#[test]
fn only_requests_of_unambiguous_length_are_served_here_whatever_the_mix_of_framing_fields() {
    let mut next = crate::testing::random(0x9e37_79b9_7f4a_7c15);
    let fields = [
        "Host: h",
        "Host: other",
        "Content-Length: 3",
        "Content-Length: 5",
        "Content-Length: 3, 3",
        "Content-Length: 3, 4",
        "content-length: 03",
        "Content-Length: -1",
        "Content-Length: 2000",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked, gzip",
        "transfer-encoding: identity",
        "Expect: 100-continue",
        "Connection: close",
        "Connection: keep-alive, x-a",
        "X-A: 1",
    ];
    let mut seen = [0usize; 3]; // refused, held, handed to hyper
    for case in 0..2000 {
        let version = if next(4) == 0 { "HTTP/1.0" } else { "HTTP/1.1" };
        let mut head = format!("POST /x HTTP/1.{}\r\n", u8::from(version.ends_with('1')));
        let mut chosen: Vec<&str> = (0..next(4)).map(|_| fields[next(fields.len() as u64) as usize]).collect();
        if next(5) > 0 {
            chosen.insert(next(chosen.len() as u64 + 1) as usize, "Host: h");
        }
        for f in &chosen {
            head.push_str(f);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let lower: Vec<String> = chosen.iter().map(|f| f.to_ascii_lowercase()).collect();
        let has = |name: &str| lower.iter().any(|f| f.starts_with(name));
        let hosts = lower.iter().filter(|f| f.starts_with("host:")).count();
        let lengths: Vec<&str> = lower
            .iter()
            .filter_map(|f| f.strip_prefix("content-length: "))
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let decided = decide(head.as_bytes(), 1024).expect("a complete head");
        let ambiguous = (has("transfer-encoding") && (!lengths.is_empty() || version == "HTTP/1.0"))
            || lengths.iter().any(|l| l.parse::<u64>().is_err() || l.starts_with(['+', '-']))
            || lengths.windows(2).any(|w| w[0].parse::<u64>().ok() != w[1].parse::<u64>().ok())
            || hosts > 1
            || (version == "HTTP/1.1" && hosts == 0);
        match decided {
            Err(status) => {
                assert!(ambiguous, "case {case}: {head:?} refused ({status}) but is not ambiguous");
                seen[0] += 1;
            }
            Ok((admission, _, _)) => {
                assert!(!ambiguous, "case {case}: {head:?} accepted as {admission:?}");
                let length = lengths.first().map_or(0, |l| l.parse::<usize>().unwrap());
                let expected = if has("transfer-encoding") || has("expect") || length > 1024 {
                    Admission::ToHyper
                } else {
                    let close = lower.iter().any(|f| f == "connection: close");
                    let keep = lower.iter().any(|f| f.starts_with("connection: keep-alive"));
                    Admission::Held { length, keep_alive: !close && (version == "HTTP/1.1" || keep) }
                };
                assert_eq!(admission, expected, "case {case}: {head:?}");
                seen[if expected == Admission::ToHyper { 2 } else { 1 }] += 1;
            }
        }
    }
    assert!(seen.iter().all(|&n| n > 150), "each outcome is exercised: {seen:?}");
}

#[test]
fn heads_too_large_or_with_too_many_fields_are_refused_with_431() {
    run(async {
        let (addr, _) = server(Duration::from_secs(5)).await;
        let many: String = (0..crate::wire::MAX_REQUEST_FIELDS + 1).map(|i| format!("x-{i}: 1\r\n")).collect();
        let transcript = exchange(addr, format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n").as_bytes(), None).await;
        assert!(transcript.starts_with("HTTP/1.1 431 "), "{transcript}");
        let long = "a".repeat(MAX_HEAD + 10);
        let transcript = exchange(addr, format!("GET /{long} HTTP/1.1\r\n").as_bytes(), None).await;
        assert!(transcript.starts_with("HTTP/1.1 431 "), "{}", &transcript[..40]);
    });
}

#[test]
fn http_1_0_callers_keep_the_connection_only_when_they_ask_and_never_get_chunks() {
    run(async {
        let (addr, _) = server(Duration::from_secs(5)).await;
        let t = exchange(addr, b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n", None).await;
        assert_eq!(t, echoed("GET /a HTTP/1.0 host=- held=").replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n"));
        let t = exchange(addr, b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /chunked HTTP/1.0\r\n\r\n", None)
            .await;
        let first = echoed("GET /a HTTP/1.0 host=- held=").replace("\r\n\r\n", "\r\nconnection: keep-alive\r\n\r\n");
        assert_eq!(t, format!("{first}HTTP/1.1 200 OK\r\nx-test: 1\r\nconnection: close\r\n\r\nabcd"));
    });
}

#[test]
fn answers_of_unknown_length_are_chunked_large_ones_whole_and_head_answers_bodiless() {
    run(async {
        let (addr, _) = server(Duration::from_secs(5)).await;
        let t = exchange(
            addr,
            b"GET /chunked HTTP/1.1\r\nHost: h\r\n\r\nHEAD /x HTTP/1.1\r\nHost: h\r\n\r\nGET /big HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            None,
        )
        .await;
        let head_len = "HEAD /x HTTP/1.1 host=h held=".len();
        let expected = format!(
            "HTTP/1.1 200 OK\r\nx-test: 1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n\
             HTTP/1.1 200 OK\r\nx-test: 1\r\ncontent-length: {head_len}\r\n\r\n\
             HTTP/1.1 200 OK\r\nx-test: 1\r\ncontent-length: 40003\r\nconnection: close\r\n\r\n{}end",
            "x".repeat(40_000)
        );
        assert_eq!(t, expected);
    });
}

#[test]
fn a_providers_fields_are_relayed_as_they_arrived_without_hop_by_hop_ones_or_its_framing() {
    run(async {
        let (addr, _) = server(Duration::from_secs(5)).await;
        let t = exchange(addr, b"GET /raw HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", None).await;
        assert_eq!(
            t,
            "HTTP/1.1 200 OK\r\nx-test: 1\r\nServer: up\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\
             X-Kept: yes\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbody"
        );
    });
}

#[test]
fn an_answer_whose_body_fails_ends_the_connection_without_the_last_chunk() {
    run(async {
        let (addr, _) = server(Duration::from_secs(5)).await;
        let t = exchange(addr, b"GET /fail HTTP/1.1\r\nHost: h\r\n\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\n", None).await;
        assert_eq!(t, "HTTP/1.1 200 OK\r\nx-test: 1\r\ntransfer-encoding: chunked\r\n\r\n7\r\npartial\r\n");
    });
}

#[test]
fn chunked_bodies_and_expect_go_to_hyper_for_that_request_alone_and_the_connection_closes_after_it() {
    run(async {
        let (addr, _) = server(Duration::from_secs(5)).await;
        // What follows a streamed request is never served: not a well-formed request, nor
        // ones our rules refuse (no Host, two Hosts, both framings at once).
        for next in [
            "GET /next HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /next HTTP/1.1\r\n\r\n",
            "GET /next HTTP/1.1\r\nHost: h\r\nHost: evil\r\n\r\n",
            "POST /next HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            let t = exchange(
                addr,
                format!("POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n{next}")
                    .as_bytes(),
                None,
            )
            .await
            .to_ascii_lowercase();
            assert!(t.contains("post /up http/1.1 host=h streamed=abcde"), "{t}");
            assert!(t.contains("connection: close"), "{t}");
            assert!(!t.contains("/next"), "{next:?} was served: {t}");
        }
        let t = exchange(
            addr,
            b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            None,
        )
        .await
        .to_ascii_lowercase();
        assert!(t.starts_with("http/1.1 100 continue\r\n\r\nhttp/1.1 200 ok\r\n"), "{t}");
        assert!(t.contains("post /e http/1.1 host=h streamed=ok"), "{t}");
        // A body above the held size streams as well.
        let big = "b".repeat(2000);
        let t = exchange(
            addr,
            format!("PUT /l HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{big}").as_bytes(),
            None,
        )
        .await;
        assert!(t.contains(&format!("PUT /l HTTP/1.1 host=h streamed={big}")), "{t}");
    });
}

#[test]
fn slow_heads_and_connections_that_never_complete_a_request_are_reset_and_idle_callers_closed_in_order() {
    run(async {
        let (addr, _) = server(Duration::from_millis(200)).await;
        // How the server ended a connection: what it sent, and whether it ended with a reset.
        async fn ending(sock: &mut tokio::net::TcpStream) -> (Vec<u8>, bool) {
            let mut out = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out)).await;
            let r = r.expect("the server closes the connection");
            (out, matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset))
        }
        // A connection that sends nothing, and one whose head stops halfway: reset, unanswered,
        // once the head timeout has passed.
        let started = Instant::now();
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(ending(&mut idle).await, (vec![], true));
        assert!(started.elapsed() >= Duration::from_millis(200));
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        assert_eq!(ending(&mut slow).await, (vec![], true));

        // The timeout counts from when the connection starts waiting for each head: a
        // connection used now and then stays open.
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = vec![0u8; 1024];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(120)).await;
            sock.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
            let n = sock.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
        }
        // A caller's connection left idle after its answers is closed in order (its client sees
        // the end of the stream, not an error)...
        assert_eq!(ending(&mut sock).await, (vec![], false));
        // ...and one whose next head stops halfway is reset like any other.
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHo").await.unwrap();
        let n = sock.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
        assert_eq!(ending(&mut sock).await, (vec![], true));
    });
}

#[test]
fn a_body_is_read_only_once_the_gate_admits_its_head() {
    run(async {
        let (addr, _) = server(Duration::from_secs(5)).await;
        // Refused at once, with the body never sent: the server did not wait for it.
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.write_all(b"POST /a HTTP/1.1\r\nHost: h\r\nauthorization: bad\r\nContent-Length: 1000\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), sock.read_to_end(&mut out))
            .await
            .expect("answered and closed before the body arrived")
            .unwrap();
        let t = undated(&out);
        assert!(t.starts_with("HTTP/1.1 401 "), "{t}");
        assert!(t.contains("connection: close"), "{t}");
        // Admitted: read and served as before; bodiless requests never ask the gate.
        let body = "x".repeat(1000);
        let t = exchange(
            addr,
            format!(
                "GET /b HTTP/1.1\r\nHost: h\r\n\r\n\
                 POST /a HTTP/1.1\r\nHost: h\r\nauthorization: yes\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{body}"
            )
            .as_bytes(),
            Some(300),
        )
        .await;
        assert!(t.starts_with("HTTP/1.1 200 OK"), "{t}");
        assert!(t.contains(&format!("held={body}")), "{t}");
    });
}

#[test]
fn when_shedding_the_connection_waiting_longest_for_its_caller_is_closed_first() {
    run(async {
        let (addr, stop) = server(Duration::from_secs(5)).await;
        // Two slow heads, then a kept-alive connection that was just answered.
        let mut oldest = tokio::net::TcpStream::connect(addr).await.unwrap();
        oldest.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut older = tokio::net::TcpStream::connect(addr).await.unwrap();
        older.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut used = tokio::net::TcpStream::connect(addr).await.unwrap();
        used.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = used.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Whether the connection was closed, and how: `Some(true)` with a reset.
        let closed = |mut s: tokio::net::TcpStream| async move {
            let mut out = Vec::new();
            match tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut out)).await {
                Ok(r) => Some(matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)),
                Err(_) => None,
            }
        };
        assert_eq!(stop.shed_oldest(2), 2);
        assert_eq!(stop.shed_pending(), 2);
        // Neither completed a request: reset, as a slowloris's sockets are.
        assert_eq!(closed(oldest).await, Some(true), "the oldest wait is closed first");
        assert_eq!(closed(older).await, Some(true));
        // The connection that was answered most recently is still served.
        used.write_all(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
        let n = used.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"), "{}", String::from_utf8_lossy(&buf[..n]));
        assert_eq!(stop.shed_pending(), 0, "both have closed");
        assert_eq!(stop.shed_oldest(5), 1, "only one is left to shed");
        assert_eq!(closed(used).await, Some(false), "a caller's connection is closed in order");
        assert_eq!(stop.shed_oldest(1), 0, "nothing left to shed");
    });
}

#[test]
fn a_stop_closes_idle_connections_and_lets_a_busy_one_finish_its_answer() {
    run(async {
        let (addr, stop) = server(Duration::from_secs(5)).await;
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
        let mut streaming = tokio::net::TcpStream::connect(addr).await.unwrap();
        streaming.write_all(b"GET /slow-body HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.stop();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), idle.read_to_end(&mut out)).await.unwrap().unwrap();
        assert!(out.is_empty());
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), busy.read_to_end(&mut out)).await.unwrap().unwrap();
        assert_eq!(undated(&out), "HTTP/1.1 200 OK\r\nx-test: 1\r\ncontent-length: 4\r\nconnection: close\r\n\r\nlate");
        // An answer whose head went out before the stop ends, then the connection closes.
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), streaming.read_to_end(&mut out)).await.unwrap().unwrap();
        assert_eq!(undated(&out), "HTTP/1.1 200 OK\r\nx-test: 1\r\ncontent-length: 4\r\n\r\nlate");
    });
}

#[test]
fn callers_that_open_with_the_http2_preface_are_served_http2() {
    run(async {
        let (addr, _) = server(Duration::from_secs(5)).await;
        let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http2::Builder::new(LocalExec)
            .handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(sock))
            .await
            .unwrap();
        tokio::task::spawn_local(conn);
        let req = Request::builder().uri("http://h/two").body(http_body_util::Empty::new()).unwrap();
        let resp = tx.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "GET http://h/two HTTP/2.0 host=- streamed=");
    });
}
