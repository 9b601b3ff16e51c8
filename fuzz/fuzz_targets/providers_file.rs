//! Any providers file is either accepted or refused with an error; never a panic. Accepted
//! providers have absolute http(s) endpoints and valid ids.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = shared::catalog::Catalog::from_toml(text, &|_| None) {
            for p in c.iter() {
                assert!(shared::catalog::valid_provider_id(&p.id));
                assert!(p.token_url.as_ref().is_none_or(|u| matches!(u.scheme(), "http" | "https")));
                assert!(p.api_base_url.as_ref().is_none_or(|u| u.path().ends_with('/')));
            }
        }
    }
});
