//! The mock provider's own rules, checked without a server: a test double that drifted from
//! the standards would let the end-to-end suite pass against behaviour no real provider has.

use super::*;
use actix_web::test::TestRequest;

fn state() -> MockState {
    MockState::new(&Settings {
        bind: "127.0.0.1:0".into(),
        clients: vec![Client { id: "app".into(), secret: "s3cret:with&odd=chars".into(), redirect_uris: vec![] }],
        access_token_ttl: Duration::from_secs(60),
        workers: 1,
    })
}

fn error_of(resp: HttpResponse) -> (StatusCode, String) {
    let status = resp.status();
    let body = block_on(actix_web::body::to_bytes(resp.into_body())).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (status, v["error"].as_str().unwrap().to_owned())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

#[test]
fn token_requests_are_read_as_forms_or_json_objects_and_nothing_else() {
    let form = TestRequest::default()
        .insert_header((header::CONTENT_TYPE, "application/x-www-form-urlencoded"))
        .to_http_request();
    let p = parse_params(&form, b"grant_type=authorization_code&code=a%2Bb").unwrap();
    assert_eq!(p["code"], "a+b", "form values are percent-decoded");
    let json = TestRequest::default().insert_header((header::CONTENT_TYPE, "application/json")).to_http_request();
    assert_eq!(parse_params(&json, br#"{"code":"c","n":1}"#).unwrap()["code"], "c");
    for (ct, body) in [("application/json", &b"[1]"[..]), ("application/json", b"{"), ("text/plain", b"code=c")] {
        let req = TestRequest::default().insert_header((header::CONTENT_TYPE, ct)).to_http_request();
        let (status, error) = error_of(parse_params(&req, body).unwrap_err());
        assert_eq!((status, error.as_str()), (StatusCode::BAD_REQUEST, "invalid_request"), "{ct} {body:?}");
    }
}

#[test]
fn clients_authenticate_by_basic_or_in_the_body_but_never_both() {
    let state = state();
    let g = state.0.lock().unwrap();
    // RFC 6749 §2.3.1: Basic's id and secret are form-encoded first.
    let basic = base64::engine::general_purpose::STANDARD.encode("app:s3cret%3Awith%26odd%3Dchars");
    let with_basic =
        TestRequest::default().insert_header((header::AUTHORIZATION, format!("Basic {basic}"))).to_http_request();
    assert_eq!(authenticate(&g, &with_basic, &HashMap::new()).unwrap(), "app");
    let body: HashMap<String, String> =
        [("client_id", "app"), ("client_secret", "s3cret:with&odd=chars")].map(|(k, v)| (k.into(), v.into())).into();
    let plain = TestRequest::default().to_http_request();
    assert_eq!(authenticate(&g, &plain, &body).unwrap(), "app");
    let (status, error) = error_of(authenticate(&g, &with_basic, &body).unwrap_err());
    assert_eq!((status, error.as_str()), (StatusCode::BAD_REQUEST, "invalid_request"));
    let (status, error) = error_of(authenticate(&g, &plain, &HashMap::new()).unwrap_err());
    assert_eq!((status, error.as_str()), (StatusCode::UNAUTHORIZED, "invalid_client"));
    let wrong: HashMap<String, String> =
        [("client_id", "app"), ("client_secret", "s3cret")].map(|(k, v)| (k.into(), v.into())).into();
    let (status, error) = error_of(authenticate(&g, &plain, &wrong).unwrap_err());
    assert_eq!((status, error.as_str()), (StatusCode::UNAUTHORIZED, "invalid_client"));
}

#[test]
fn issued_tokens_expire_with_the_configured_lifetime_and_rotate_within_their_family() {
    let state = state();
    let mut g = state.0.lock().unwrap();
    let resp = issue(&mut g, "app", None, "read", true);
    assert_eq!(resp.headers().get(header::CACHE_CONTROL).unwrap(), "no-store", "RFC 6749 §5.1");
    let first = g.access.values().next().unwrap().family;
    assert_eq!(g.refresh.len(), 1);
    let _ = issue(&mut g, "app", Some(first), "read", true);
    assert!(g.access.values().all(|t| t.family == first), "a refresh keeps the family");
    let _ = issue(&mut g, "app", None, "", false);
    assert_eq!(g.refresh.len(), 2, "no refresh token when none is asked for");
    assert!(g.access.values().all(|t| t.expires <= Instant::now() + Duration::from_secs(60)));
}

#[test]
fn tokens_issued_before_a_restart_still_refresh_after_it() {
    let before = state();
    let issued = {
        let mut g = before.0.lock().unwrap();
        issue(&mut g, "app", None, "read", true)
    };
    let body = block_on(actix_web::body::to_bytes(issued.into_body())).unwrap();
    let tokens: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    // Saved as the dev command saves it (JSON), into a provider that starts empty.
    let saved = serde_json::to_string(&before.snapshot()).unwrap();
    let after = state();
    after.restore(serde_json::from_str(&saved).unwrap());
    let (a, b) = (after.snapshot(), before.snapshot());
    assert_eq!((&a.refresh, a.next_family), (&b.refresh, b.next_family), "nothing lost or changed on the way");
    assert!(a.access.iter().zip(&b.access).all(|(x, y)| x.0 == y.0 && x.1 == y.1 && (x.2 - y.2).abs() <= 1));
    let form = format!("grant_type=refresh_token&refresh_token={refresh_token}&client_id=app&client_secret=s3cret%3Awith%26odd%3Dchars");
    let req = TestRequest::post()
        .insert_header((header::CONTENT_TYPE, "application/x-www-form-urlencoded"))
        .to_http_request();
    let resp = block_on(token_endpoint(web::Data::new(after.clone()), req, web::Bytes::from(form.clone())));
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(after.stats().refreshes_after_expiry, 0, "the token had not expired, and the restore knows it");
    // A provider that did not restore refuses it.
    let fresh = state();
    let req = TestRequest::post()
        .insert_header((header::CONTENT_TYPE, "application/x-www-form-urlencoded"))
        .to_http_request();
    let (status, error) = error_of(block_on(token_endpoint(web::Data::new(fresh), req, web::Bytes::from(form))));
    assert_eq!((status, error.as_str()), (StatusCode::BAD_REQUEST, "invalid_grant"));
}
