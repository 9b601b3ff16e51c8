//! Credentials that go somewhere other than a header field: query parameters, and fields of a
//! form body (Kartra's `app_id`, `api_key` and `api_password` on every call).
//!
//! The caller's own parameters and fields of the same names are dropped first, so a caller can
//! neither override the connection's credentials nor smuggle in its own; ours are appended.
//! Names are compared decoded (`api%5Fkey` and `api_key` are one name to the provider).

use bytes::{BufMut, Bytes, BytesMut};
use http::Method;
use shared::http::{ApiError, ErrorCode};

/// Whether the name of one `name=value` pair of a query or form body is `ours` once decoded
/// (`+` is a space, `%XX` a byte), compared as it is decoded, without allocating.
fn name_is(pair: &[u8], ours: &str) -> bool {
    let name = pair.split(|&b| b == b'=').next().unwrap_or(pair);
    let ours = ours.as_bytes();
    if !name.iter().any(|&b| b == b'%' || b == b'+') {
        return name == ours;
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let (mut i, mut j) = (0, 0);
    while i < name.len() {
        let byte = match name[i] {
            b'+' => b' ',
            b'%' if i + 2 < name.len() => match (hex(name[i + 1]), hex(name[i + 2])) {
                (Some(h), Some(l)) => {
                    i += 2;
                    h * 16 + l
                }
                _ => b'%',
            },
            b => b,
        };
        if ours.get(j) != Some(&byte) {
            return false;
        }
        i += 1;
        j += 1;
    }
    j == ours.len()
}

/// `ours`, form-encoded (`a=1&b=2`): done once per connection, not per call.
pub fn encode(ours: &[(String, String)]) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    ser.extend_pairs(ours.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    ser.finish()
}

/// `raw` (a query or form body) without the pairs named in `ours`, then `encoded` (`ours`,
/// from [`encode`]).
fn merged(raw: &[u8], ours: &[(String, String)], encoded: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(raw.len() + 1 + encoded.len());
    for pair in raw.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        if ours.iter().any(|(n, _)| name_is(pair, n)) {
            continue;
        }
        if !out.is_empty() {
            out.put_u8(b'&');
        }
        out.put_slice(pair);
    }
    if !out.is_empty() && !encoded.is_empty() {
        out.put_u8(b'&');
    }
    out.put_slice(encoded.as_bytes());
    out
}

/// The caller's query with the connection's parameters in place of any of the same names.
pub fn query(caller: &str, ours: &[(String, String)], encoded: &str) -> String {
    String::from_utf8(merged(caller.as_bytes(), ours, encoded).to_vec()).unwrap_or_default()
}

/// Whether a call may carry credentials in its form body, and whether the `Content-Type`
/// field must be added: the method must have a body (POST, PUT, PATCH) and the caller's
/// content type, if it gave one, must be a form's.
pub fn form_allowed(provider: &str, method: &Method, content_type: Option<&[u8]>) -> Result<bool, ApiError> {
    if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        return Err(ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("provider `{provider}` takes its credentials in a form body: call it with POST"),
        ));
    }
    match content_type {
        None => Ok(true),
        Some(ct) if is_form(ct) => Ok(false),
        Some(_) => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "provider `{provider}` takes form bodies (application/x-www-form-urlencoded), into which its \
                 credentials go"
            ),
        )),
    }
}

fn is_form(content_type: &[u8]) -> bool {
    let essence = content_type.split(|&b| b == b';').next().unwrap_or(b"");
    essence.trim_ascii().eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
}

/// The caller's form body with the connection's fields in place of any of the same names.
pub fn form(caller: &[u8], ours: &[(String, String)], encoded: &str) -> Bytes {
    merged(caller, ours, encoded).freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Vec<(String, String)> {
        vec![("api_key".into(), "K&1".into()), ("app_id".into(), "A B".into())]
    }

    #[test]
    fn callers_fields_of_our_names_are_dropped_however_they_are_spelled() {
        let enc = encode(&ours());
        let body =
            form(b"cmd=get_lead&api_key=mine&api%5Fkey=mine2&app+id=x&lead%5Bemail%5D=a%40b&app_id=", &ours(), &enc);
        assert_eq!(&body[..], b"cmd=get_lead&app+id=x&lead%5Bemail%5D=a%40b&api_key=K%261&app_id=A+B");
        let parsed: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        assert_eq!(parsed.iter().filter(|(n, _)| n == "api_key").count(), 1);
        assert_eq!(&form(b"", &ours(), &enc)[..], b"api_key=K%261&app_id=A+B");
        assert_eq!(query("a=1&&api_key=z", &ours(), &enc), "a=1&api_key=K%261&app_id=A+B");
        assert_eq!(query("a=1", &[], ""), "a=1");
    }

    #[test]
    fn names_are_compared_as_the_provider_decodes_them() {
        let decoded =
            |pair: &[u8]| url::form_urlencoded::parse(pair).next().map(|(n, _)| n.into_owned()).unwrap_or_default();
        let names = ["api_key", "a b", "api%key", "x", ""];
        let pairs: [&[u8]; 14] = [
            b"api_key=1",
            b"api%5Fkey=1",
            b"api%5fkey",
            b"a+b=",
            b"a%20b=2",
            b"api%key=",
            b"api%25key=",
            b"api_key%",
            b"api_ke%7",
            b"%zz",
            b"x",
            b"=v",
            b"api_keyy=1",
            b"%78",
        ];
        for pair in pairs {
            for name in names {
                assert_eq!(name_is(pair, name), decoded(pair) == name, "{} vs {name}", String::from_utf8_lossy(pair));
            }
        }
    }

    #[test]
    fn form_credentials_need_a_form_body() {
        assert!(form_allowed("k", &Method::POST, None).unwrap());
        assert!(!form_allowed("k", &Method::POST, Some(b"Application/X-WWW-Form-Urlencoded; charset=utf-8")).unwrap());
        let e = form_allowed("k", &Method::POST, Some(b"application/json")).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedMediaType);
        assert_eq!(form_allowed("k", &Method::GET, None).unwrap_err().code, ErrorCode::MethodNotAllowed);
    }
}
