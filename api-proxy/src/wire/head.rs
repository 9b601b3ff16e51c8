//! Heads as they arrive: parsed in place (fields are spans of the head's bytes, not copies),
//! with what framing and connection handling need noted on the way.

use super::{put_field, MAX_ANSWER_FIELDS, MAX_REQUEST_FIELDS};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};

/// Parses a complete response head off the front of `buf`, if it holds one.
#[allow(clippy::type_complexity)]
pub fn parse_answer(buf: &mut BytesMut) -> Result<Option<(StatusCode, Version, RawHead, Notes)>, &'static str> {
    // Left uninitialised: zeroing room for every possible field on every answer costs more than
    // parsing the few an answer has.
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_ANSWER_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many header fields"),
        Err(_) => return Err("the answer's head does not parse"),
    };
    let status = resp.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or("bad status code")?;
    let version = match resp.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err("unsupported HTTP version"),
    };
    let spans = field_spans(buf, resp.headers);
    let head = buf.split_to(len).freeze();
    let mut notes = Notes::new();
    for (i, &(ns, ne, vs, ve)) in spans.iter().enumerate() {
        notes.note(i, &head[ns..ne], &head[vs..ve]);
    }
    Ok(Some((status, version, RawHead::new(head, spans), notes)))
}

/// An answer's header fields as they arrived (the head's bytes, and where each field is in
/// them), checked by the parser but not copied into a map: our server writes them to its
/// caller as they are (filtered); a map is built only where one is needed
/// ([`RawHead::append_to`]).
pub struct RawHead {
    head: Bytes,
    spans: Spans,
    /// Where the first `Authorization` and `traceparent` fields are (field indexes, `NONE` if
    /// absent), when noted as the head was parsed: a request's, whose both the proxy looks up
    /// on every call.
    known: Option<[u8; 2]>,
    /// Whether a `Connection` field may name other fields (false only when noted as parsed).
    may_list: bool,
}

/// No such field (a head has at most `MAX_HEADERS` fields, fewer than this).
const NONE: u8 = u8::MAX;

impl RawHead {
    pub fn new(head: Bytes, spans: Spans) -> Self {
        Self { head, spans, known: None, may_list: true }
    }

    /// Whether a `Connection` field may name other fields (as far as the parse noted).
    pub fn may_list_fields(&self) -> bool {
        self.may_list
    }

    /// A head whose `Authorization` and `traceparent` fields were noted as it was parsed.
    pub fn with_known(head: Bytes, spans: Spans, notes: &Notes) -> Self {
        Self { head, spans, known: Some([notes.authorization, notes.traceparent]), may_list: notes.lists_fields }
    }

    /// The first field named `name` (lowercase), if any.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        if let Some([authorization, traceparent]) = self.known {
            let noted = match name {
                b"authorization" => Some(authorization),
                b"traceparent" => Some(traceparent),
                _ => None,
            };
            if let Some(at) = noted {
                let &(.., vs, ve) = self.spans.get(usize::from(at))?;
                return Some(&self.head[vs..ve]);
            }
        }
        // Told apart by length first (no slice of the head is made for the others).
        let &(.., vs, ve) = self
            .spans
            .iter()
            .find(|&&(ns, ne, ..)| ne - ns == name.len() && self.head[ns..ne].eq_ignore_ascii_case(name))?;
        Some(&self.head[vs..ve])
    }

    /// Moves the fields into `headers` (after any it holds); values share the head's bytes.
    pub fn append_to(self, headers: &mut HeaderMap) {
        headers.reserve(self.spans.len());
        for &(ns, ne, vs, ve) in &self.spans {
            // Checked by the parser: a token, and a value without control characters.
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(&self.head[ns..ne]), HeaderValue::from_maybe_shared(self.head.slice(vs..ve)))
            {
                headers.append(name, value);
            }
        }
    }

    /// A map of the fields (for code that needs one; the proxy's hot path does not).
    pub fn to_map(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(self.spans.len());
        for (name, value) in self.fields() {
            // Checked by the parser: a token, and a value without control characters.
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                headers.append(name, value);
            }
        }
        headers
    }

    /// A response head's fields, and whether its `Connection` field names others (for tests).
    #[cfg(test)]
    pub fn parse(bytes: &[u8]) -> (Self, bool) {
        let (_, _, raw, notes) = parse_answer(&mut BytesMut::from(bytes)).unwrap().expect("a complete head");
        (raw, notes.lists_fields)
    }

    /// Each field's name and value, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|&(ns, ne, vs, ve)| (&self.head[ns..ne], &self.head[vs..ve]))
    }

    /// Writes the fields `keep` accepts to `out`, in order, as `name: value` lines. A line that
    /// arrived in exactly that form is copied as it arrived, and a run of such lines next to
    /// each other in the head in one copy (most heads are written so): one copy for a message's
    /// forwarded fields instead of two per field.
    pub fn put_fields(&self, out: &mut BytesMut, mut keep: impl FnMut(&[u8]) -> bool) {
        let h = &self.head[..];
        // The lines waiting to be copied, as one range of the head.
        let mut run: Option<(usize, usize)> = None;
        let flush = |out: &mut BytesMut, run: &mut Option<(usize, usize)>| {
            if let Some((start, end)) = run.take() {
                out.extend_from_slice(&h[start..end]);
            }
        };
        for &(ns, ne, vs, ve) in &self.spans {
            let name = &h[ns..ne];
            if !keep(name) {
                continue;
            }
            let as_written = vs == ne + 2 && h[ne..vs] == *b": " && h.get(ve..ve + 2) == Some(b"\r\n");
            match run {
                Some((_, ref mut end)) if as_written && *end == ns => *end = ve + 2,
                _ => {
                    flush(out, &mut run);
                    if as_written {
                        run = Some((ns, ve + 2));
                    } else {
                        put_field(out, name, &h[vs..ve]);
                    }
                }
            }
        }
        flush(out, &mut run);
    }
}

/// Where a parsed head's fields are in `buf` (name start and end, value start and end).
pub type Spans = Vec<(usize, usize, usize, usize)>;

/// Header values share the head's bytes instead of being copied: the parser's fields are noted
/// as offsets into `buf`, so the head can be split off the buffer and sliced.
pub fn field_spans(buf: &[u8], fields: &[httparse::Header<'_>]) -> Spans {
    let base = buf.as_ptr() as usize;
    fields
        .iter()
        .map(|h| {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            (name, name + h.name.len(), value, value + h.value.len())
        })
        .collect()
}

/// What framing and connection handling need to know of a head, noted as its map is built (so
/// they need no lookups in the map afterwards).
#[derive(Debug)]
pub struct Notes {
    /// `Host` fields.
    pub hosts: usize,
    /// `Content-Length`: none, one number (every value the same), or why it is refused.
    pub length: Result<Option<u64>, &'static str>,
    /// Whether there is a `Transfer-Encoding`, and whether its last coding is `chunked`.
    pub transfer_encoding: bool,
    pub chunked_last: bool,
    pub expect: bool,
    /// `Connection` options: `close`, `keep-alive`, and whether it names any other (a header
    /// field that must not be forwarded, RFC 9110 §7.6.1).
    pub close: bool,
    pub keep_alive: bool,
    pub lists_fields: bool,
    /// The index of the first `Authorization` and `traceparent` field, or `NONE`.
    pub authorization: u8,
    pub traceparent: u8,
}

/// A `Connection` field's options (RFC 9110 §7.6.1), trimmed, empty ones skipped.
pub fn connection_options(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|o| !o.is_empty())
}

/// The fields a message's `Connection` fields name, among `fields` (all of a message's): they
/// are hop-by-hop too (RFC 9110 §7.6.1).
pub fn connection_listed<'a>(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<&'a [u8]> {
    fields.filter(|(name, _)| name.eq_ignore_ascii_case(b"connection")).flat_map(|(_, v)| listed_fields(v)).collect()
}

/// The `Connection` options that name header fields (all but `close` and `keep-alive`): those
/// fields are hop-by-hop too, and never forwarded.
pub fn listed_fields(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    connection_options(value).filter(|o| !o.eq_ignore_ascii_case(b"close") && !o.eq_ignore_ascii_case(b"keep-alive"))
}

impl Default for Notes {
    fn default() -> Self {
        Self::new()
    }
}

impl Notes {
    pub fn new() -> Self {
        Self {
            hosts: 0,
            length: Ok(None),
            transfer_encoding: false,
            chunked_last: false,
            expect: false,
            close: false,
            keep_alive: false,
            lists_fields: false,
            authorization: NONE,
            traceparent: NONE,
        }
    }

    /// Notes field `index` (its name in any case, as it arrived).
    pub fn note(&mut self, index: usize, name: &[u8], value: &[u8]) {
        // Told apart by length first: most fields are none of these.
        match name.len() {
            13 if self.authorization == NONE && name.eq_ignore_ascii_case(b"authorization") => {
                self.authorization = u8::try_from(index).unwrap_or(NONE)
            }
            11 if self.traceparent == NONE && name.eq_ignore_ascii_case(b"traceparent") => {
                self.traceparent = u8::try_from(index).unwrap_or(NONE)
            }
            4 if name.eq_ignore_ascii_case(b"host") => self.hosts += 1,
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if let Ok(length) = &mut self.length {
                    if let Err(e) = merge_length(length, value) {
                        self.length = Err(e);
                    }
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.transfer_encoding = true;
                let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
                self.chunked_last = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            6 if name.eq_ignore_ascii_case(b"expect") => self.expect = true,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                // Most say only `keep-alive` (or `close`).
                if value.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                    return;
                }
                for option in connection_options(value) {
                    if option.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if option.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    } else {
                        self.lists_fields = true;
                    }
                }
            }
            _ => {}
        }
    }
}

/// Adds one `Content-Length` field's value to what the earlier ones said: every value (a list,
/// or repeated fields) must be the same plain decimal number (RFC 9112 §6.3), leading zeros
/// allowed, within 64 bits.
fn merge_length(length: &mut Option<u64>, value: &[u8]) -> Result<(), &'static str> {
    // Most are one number, and the only field.
    if length.is_none() && !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit) {
        *length = Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
        return Ok(());
    }
    for part in value.split(|&b| b == b',') {
        let n = decimal(part.trim_ascii()).ok_or("bad Content-Length")?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length values");
        }
        *length = Some(n);
    }
    Ok(())
}

/// A non-empty run of decimal digits as a number, if it fits in 64 bits.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let d = d.is_ascii_digit().then(|| u64::from(d - b'0'))?;
        n.checked_mul(10)?.checked_add(d)
    })
}

#[allow(clippy::large_enum_variant)] // as `Next`
pub enum Parsed {
    /// A complete head (split off the buffer) and the request it describes.
    Head(Bytes, RawHead, Request<()>, Notes),
    Partial,
    Bad(StatusCode, &'static str),
}

/// Parses a request head off the front of `buf`, if it holds a complete one.
pub fn parse_request(buf: &mut BytesMut) -> Parsed {
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_REQUEST_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Bad(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields")
        }
        // A well-formed request line of another version gets 505; anything else 400.
        Err(httparse::Error::Version) if other_version(buf) => {
            return Parsed::Bad(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "this HTTP version is not served (HTTP/1.0, 1.1 and 2 are)",
            )
        }
        Err(_) => return Parsed::Bad(StatusCode::BAD_REQUEST, "the request head does not parse"),
    };
    let version = if req.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
    let Some(method) = req.method.and_then(|m| Method::from_bytes(m.as_bytes()).ok()) else {
        return Parsed::Bad(StatusCode::BAD_REQUEST, "bad method");
    };
    let base = buf.as_ptr() as usize;
    let target = req.path.map(|p| (p.as_ptr() as usize - base, p.len()));
    let spans = field_spans(buf, req.headers);
    let head = buf.split_to(len).freeze();
    let Some((at, n)) = target else { return Parsed::Bad(StatusCode::BAD_REQUEST, "no request target") };
    let Ok(uri) = http::Uri::from_maybe_shared(head.slice(at..at + n)) else {
        return Parsed::Bad(StatusCode::BAD_REQUEST, "the request target is not a valid URI");
    };
    let mut notes = Notes::new();
    for (i, &(ns, ne, vs, ve)) in spans.iter().enumerate() {
        notes.note(i, &head[ns..ne], &head[vs..ve]);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    Parsed::Head(head.clone(), RawHead::with_known(head, spans, &notes), request, notes)
}

/// Whether the request line is `METHOD TARGET HTTP/d.d` (of a version httparse does not take).
fn other_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    matches!(parts.as_slice(), [m, t, v] if !m.is_empty() && !t.is_empty()
        && v.len() == 8 && v.starts_with(b"HTTP/") && v[5].is_ascii_digit() && v[6] == b'.' && v[7].is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths_are_decimal_numbers_of_any_digits_within_64_bits() {
        let read = |values: &[&str]| {
            let mut length = None;
            values.iter().try_for_each(|v| merge_length(&mut length, v.as_bytes())).map(|()| length)
        };
        assert_eq!(read(&["5"]), Ok(Some(5)));
        // Leading zeros are digits like any other (found by the differential fuzz target:
        // more than 19 digits were refused though the value fits).
        assert_eq!(read(&["00006815013467826567395"]), Ok(Some(6_815_013_467_826_567_395)));
        assert_eq!(read(&["18446744073709551615"]), Ok(Some(u64::MAX)));
        assert_eq!(read(&["3, 3", "3"]), Ok(Some(3)));
        assert!(read(&["18446744073709551616"]).is_err(), "past 64 bits");
        for bad in ["", " ", "+3", "3 3", "0x3", "3,", "-1"] {
            assert!(read(&[bad]).is_err(), "{bad:?}");
        }
        assert_eq!(read(&["3", "4"]), Err("conflicting Content-Length values"));
    }
}
