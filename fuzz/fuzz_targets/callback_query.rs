//! The OAuth callback's query string: parsing never panics, and whatever `error` a provider
//! (or an attacker) sends, the code echoed to the application is a short, safe token.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(q) = serde_urlencoded::from_str::<CallbackQuery>(text) {
        if let Some(e) = q.error {
            let code = shared::oauth::sanitize_code(&e);
            assert!(!code.is_empty() && code.len() <= 64);
            assert!(code.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)));
        }
    }
});
