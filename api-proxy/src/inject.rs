//! Credentials that go somewhere other than a header field: query parameters, and fields of a
//! form body (Kartra's `app_id`, `api_key` and `api_password` on every call).
//!
//! The caller's own parameters and fields of the same names are dropped first, so a caller can
//! neither override the connection's credentials nor smuggle in its own; ours are appended.
//! Names are compared decoded (`api%5Fkey` and `api_key` are one name to the provider).

use bytes::{BufMut, Bytes, BytesMut};
use http::Method;
use shared::http::{ApiError, ErrorCode};
use std::borrow::Cow;

/// The decoded name of one `name=value` pair of a query or form body.
fn decoded_name(pair: &[u8]) -> Cow<'_, str> {
    let name = pair.split(|&b| b == b'=').next().unwrap_or(pair);
    if !name.iter().any(|&b| b == b'%' || b == b'+') {
        return String::from_utf8_lossy(name);
    }
    url::form_urlencoded::parse(name).next().map(|(n, _)| Cow::Owned(n.into_owned())).unwrap_or_default()
}

/// `raw` (a query or form body) without the pairs named in `ours`, then `ours`, encoded.
fn merged(raw: &[u8], ours: &[(String, String)]) -> BytesMut {
    let mut out = BytesMut::with_capacity(raw.len() + 64 * ours.len());
    for pair in raw.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let name = decoded_name(pair);
        if ours.iter().any(|(n, _)| *n == name) {
            continue;
        }
        if !out.is_empty() {
            out.put_u8(b'&');
        }
        out.put_slice(pair);
    }
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    ser.extend_pairs(ours.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let ours = ser.finish();
    if !out.is_empty() && !ours.is_empty() {
        out.put_u8(b'&');
    }
    out.put_slice(ours.as_bytes());
    out
}

/// The caller's query with the connection's parameters in place of any of the same names.
pub fn query(caller: &str, ours: &[(String, String)]) -> String {
    String::from_utf8(merged(caller.as_bytes(), ours).to_vec()).unwrap_or_default()
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
pub fn form(caller: &[u8], ours: &[(String, String)]) -> Bytes {
    merged(caller, ours).freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Vec<(String, String)> {
        vec![("api_key".into(), "K&1".into()), ("app_id".into(), "A B".into())]
    }

    #[test]
    fn callers_fields_of_our_names_are_dropped_however_they_are_spelled() {
        let body = form(b"cmd=get_lead&api_key=mine&api%5Fkey=mine2&app+id=x&lead%5Bemail%5D=a%40b&app_id=", &ours());
        assert_eq!(&body[..], b"cmd=get_lead&app+id=x&lead%5Bemail%5D=a%40b&api_key=K%261&app_id=A+B");
        let parsed: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        assert_eq!(parsed.iter().filter(|(n, _)| n == "api_key").count(), 1);
        assert_eq!(&form(b"", &ours())[..], b"api_key=K%261&app_id=A+B");
        assert_eq!(query("a=1&&api_key=z", &ours()), "a=1&api_key=K%261&app_id=A+B");
        assert_eq!(query("a=1", &[]), "a=1");
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
