//! Whatever path and query a caller sends, an accepted upstream target stays on the provider's
//! API (same scheme, host and port, under the base path, without credentials), and is a valid
//! URI: our HTTP/1.1 client writes its path and query into the request line as they are.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (path, query) = text.split_once('?').unwrap_or((text, ""));
    let base = url::Url::parse("https://api.example.com/v1/").unwrap();
    if let Ok(t) = api_proxy::outgoing::upstream_url(&base, path, query) {
        let u = t.uri().expect("an accepted target is a valid URI");
        let written = t.path_and_query();
        assert_eq!(u.path_and_query().unwrap().as_str().as_bytes(), written, "{t}");
        assert!(written.iter().all(|b| b.is_ascii_graphic()), "{t}");
        assert_eq!(u.scheme_str(), Some("https"));
        assert_eq!(u.host(), Some("api.example.com"));
        assert_eq!(u.port_u16(), None);
        assert_eq!(u.authority().map(|a| a.as_str()), Some("api.example.com"), "no user info: {u}");
        assert!(u.path().starts_with("/v1/"), "{u}");
        assert!(!u.path().split('/').any(|s| s == ".."), "{u}");
    }
});
