//! Token endpoint answers, JSON or form, never panic the parser; a parsed answer always has
//! an access token.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ct in ["application/json", "application/x-www-form-urlencoded", "text/html", ""] {
        if let Ok(t) = shared::oauth::parse_token_response(data, ct, chrono::Utc::now()) {
            assert!(!t.access_token.is_empty());
        }
    }
});
