//! Attacks that must fail: scoped and revocable API keys, open redirects, login CSRF with a
//! state from another session, rate limits, security headers.

use crate::support::{query_param, TestApp, RETURN_URL};
use devstack::StackOptions;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

async fn create_key(app: &TestApp, body: Value) -> reqwest::Response {
    app.http
        .post(app.gw("/v1/api-keys"))
        .header("Authorization", format!("Bearer {}", app.stack.api_key))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn new_key(app: &TestApp, scopes: &[&str], providers: &[&str]) -> (String, String) {
    let r = create_key(app, json!({"name": "test", "scopes": scopes, "providers": providers})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    (v["id"].as_str().unwrap().to_owned(), v["key"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_carry_scopes_and_providers_and_revocation_needs_no_restart() {
    let app = TestApp::start().await;
    app.connect("mock", "u1").await;
    let (proxy_id, proxy_key) = new_key(&app, &["proxy"], &[]).await;
    let (_, limited_key) = new_key(&app, &["proxy", "connections:read"], &["mockjson"]).await;
    let as_key = |k: &str| format!("Bearer {k}");

    // The proxy key proxies, and can do nothing else.
    let r = app.http.get(app.px("/proxy/mock/u1/x")).header("Authorization", as_key(&proxy_key)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for (method, path) in [
        (Method::GET, "/v1/connections"),
        (Method::GET, "/v1/connections/mock/u1/token"),
        (Method::DELETE, "/v1/connections/mock/u1"),
        (Method::GET, "/v1/api-keys"),
    ] {
        let r = app
            .http
            .request(method.clone(), app.gw(path))
            .header("Authorization", as_key(&proxy_key))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "forbidden");
    }
    let r = app
        .http
        .post(app.gw("/v1/connect/sessions"))
        .header("Authorization", as_key(&proxy_key))
        .json(&json!({"provider": "mock", "connection_id": "x", "return_url": RETURN_URL}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A key limited to one provider cannot reach another.
    let r =
        app.http.get(app.px("/proxy/mock/u1/x")).header("Authorization", as_key(&limited_key)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app
        .http
        .get(app.gw("/v1/connections/mock/u1"))
        .header("Authorization", as_key(&limited_key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app.http.get(app.gw("/v1/providers")).header("Authorization", as_key(&limited_key)).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["providers"].as_array().unwrap().len(), 1, "only its own provider is listed");

    // Listing never shows a key; keys are stored hashed.
    let r = app.api(Method::GET, "/v1/api-keys").await;
    let text = r.text().await.unwrap();
    assert!(!text.contains(&proxy_key) && !text.contains(&limited_key));
    assert!(text.contains(&proxy_id));
    let raw = app.raw_table_text("api_keys").await;
    assert!(!raw.contains(&proxy_key[4..]), "a key is stored in clear");

    // Revoked: refused within the lookup cache time, no restart.
    assert_eq!(app.api(Method::DELETE, &format!("/v1/api-keys/{proxy_id}")).await.status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = app.http.get(app.px("/proxy/mock/u1/x")).header("Authorization", as_key(&proxy_key)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.api(Method::DELETE, &format!("/v1/api-keys/{proxy_id}")).await.status(), StatusCode::NOT_FOUND);

    // Bad requests for keys.
    for body in [
        json!({"name": "x", "scopes": ["root"]}),
        json!({"name": "x", "scopes": []}),
        json!({"name": "", "scopes": ["proxy"]}),
        json!({"name": "x", "scopes": ["proxy"], "providers": ["Not A Provider"]}),
        json!({"name": "x", "scopes": ["proxy"], "extra": 1}),
    ] {
        assert_eq!(create_key(&app, body.clone()).await.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    // Garbage and absent keys.
    for auth in ["Bearer nope", "Basic Zm9vOmJhcg==", "Bearer ", ""] {
        let r = app.http.get(app.px("/proxy/mock/u1/x")).header("Authorization", auth).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_urls_outside_the_allowlist_are_refused_at_session_creation() {
    let app = TestApp::start_with(StackOptions {
        return_url_allowlist: vec!["https://app.example/settings".into()],
        ..Default::default()
    })
    .await;
    for bad in [
        "https://evil.example/settings",
        "http://app.example/settings",
        "https://app.example:8443/settings",
        "https://app.example/other",
        "https://app.example.evil.example/settings",
        "https://app.example@evil.example/settings",
    ] {
        let r = app.create_session("mock", "u", bad).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = app.create_session("mock", "u", "https://app.example/settings/integrations?x=1").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_delivered_with_another_sessions_state_stores_nothing() {
    let app = TestApp::start().await;
    // The attacker runs a flow for their own session and stops before the callback...
    let attacker = app.connect_url("mock", "attacker").await;
    let attacker_authorize = app.follow(&attacker).await;
    let attacker_callback = app.follow(attacker_authorize.as_str()).await;
    let attacker_code = query_param(&attacker_callback, "code").unwrap();
    // ...then makes the victim's browser deliver that code with the victim's own state.
    let victim = app.connect_url("mock", "victim").await;
    let victim_authorize = app.follow(&victim).await;
    let victim_state = query_param(&victim_authorize, "state").unwrap();
    let forged = format!("{}?code={attacker_code}&state={victim_state}", app.gw("/oauth/callback"));
    let landed = app.follow(&forged).await;
    assert_eq!(query_param(&landed, "status").as_deref(), Some("error"));
    assert_eq!(query_param(&landed, "error").as_deref(), Some("invalid_grant"), "PKCE binds the code to its flow");
    let r = app.api(Method::GET, "/v1/connections").await;
    assert_eq!(r.json::<Value>().await.unwrap()["connections"].as_array().unwrap().len(), 0);
    assert_eq!(app.mock_stats().code_grants, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let app =
        TestApp::start_with(StackOptions { rate_limit_per_key: 5, rate_limit_per_connection: 3, ..Default::default() })
            .await;
    app.connect("mock", "u1").await;
    tokio::time::sleep(Duration::from_secs(1)).await; // refill after the connect calls
    let mut limited = None;
    for _ in 0..10 {
        let r = app.proxy_get("mock", "u1", "x").await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("a burst past the limit is refused");
    assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "rate_limited");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_pages_send_security_headers_and_are_not_cached() {
    let app = TestApp::start().await;
    let connect = app.connect_url("mock", "u1").await;
    let r = app.http.get(&connect).send().await.unwrap();
    let h = r.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert_eq!(h["cache-control"], "no-store");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_keys_rotate_without_downtime() {
    use base64::Engine;
    let old_b64 = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
    let new_b64 = base64::engine::general_purpose::STANDARD.encode([4u8; 32]);
    let old = shared::crypto::Keyring::from_base64(&old_b64, None, &[]).unwrap();
    let app = TestApp::start_with(StackOptions { keyring: old.clone(), ..Default::default() }).await;
    for id in ["r1", "r2", "r3"] {
        app.connect("mock", id).await;
    }
    let token_before = app.token("mock", "r1").await;
    // The new key becomes primary; the old one stays readable.
    let rotated = shared::crypto::Keyring::from_base64(&new_b64, None, &[old_b64]).unwrap();
    let store = shared::store::Store::new(&app.stack.database_url, 2, rotated.clone()).unwrap();
    assert_eq!(store.key_usage().await.unwrap(), vec![(old.primary_id().to_owned(), 3)]);
    let c = store.get_connection("mock", "r1").await.unwrap().unwrap();
    assert_eq!(store.open_credentials(&c).unwrap().access_token, token_before, "old ciphertexts still open");
    // Re-seal everything while the old stack keeps serving.
    assert_eq!(store.reencrypt_all().await.unwrap(), 3);
    assert_eq!(store.key_usage().await.unwrap(), vec![(rotated.primary_id().to_owned(), 3)]);
    // With the old key gone entirely, everything still opens.
    let new_only = shared::crypto::Keyring::from_base64(&new_b64, None, &[]).unwrap();
    let store = shared::store::Store::new(&app.stack.database_url, 2, new_only).unwrap();
    for id in ["r1", "r2", "r3"] {
        let c = store.get_connection("mock", id).await.unwrap().unwrap();
        assert!(store.open_credentials(&c).is_ok(), "{id}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_and_the_proxy_can_serve_https_themselves() {
    let dir = std::env::temp_dir().join(format!("authbridge-tls-{}", std::process::id()));
    // A throw-away CA and a server certificate for 127.0.0.1 signed by it.
    let shared::test_support::TestTls { ca, cert, key } = shared::test_support::TestTls::create(&dir);
    let tls = shared::config::TlsFiles { cert: cert.display().to_string(), key: key.display().to_string() };
    let app = TestApp::start_with(StackOptions { tls: Some(tls), ..Default::default() }).await;
    let pem = std::fs::read(&ca).unwrap();
    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for base in [app.stack.gateway.url(), app.stack.proxy.url()] {
        assert!(base.starts_with("https://"), "{base}");
        let r = https.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{base}");
        // The proxy offers HTTP/2 by ALPN (one connection carries a caller's concurrent calls).
        let expected = if base == app.stack.proxy.url() { reqwest::Version::HTTP_2 } else { reqwest::Version::HTTP_11 };
        assert_eq!(r.version(), expected, "{base}");
        let plain = base.replacen("https://", "http://", 1);
        assert!(app
            .http
            .get(format!("{plain}/healthz"))
            .send()
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true));
    }
    // The flow works over HTTPS too: the redirect URI is https.
    let r = https
        .post(app.gw("/v1/connect/sessions"))
        .header("Authorization", format!("Bearer {}", app.stack.api_key))
        .json(&json!({"provider": "mock", "connection_id": "tls", "return_url": RETURN_URL}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let r = https.get(v["connect_url"].as_str().unwrap()).send().await.unwrap();
    let authorize = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert!(query_param(&authorize, "redirect_uri").unwrap().starts_with("https://"));
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mismatched_or_missing_tls_files_stop_the_service_at_start_up() {
    let env = shared::config::Env::from_pairs([
        (shared::config::ENCRYPTION_KEY, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        (shared::config::API_KEYS, "0123456789abcdef0123"),
        (shared::config::TLS_CERT_FILE, "/nonexistent/cert.pem"),
    ]);
    let err = auth_gateway::Settings::from_env(&env).unwrap_err().to_string();
    assert!(err.contains("AUTHBRIDGE_TLS_KEY_FILE"), "{err}");
    let mut env = env;
    env.set(shared::config::TLS_KEY_FILE, "/nonexistent/key.pem");
    let err = api_proxy::Settings::from_env(&env).unwrap_err().to_string();
    assert!(err.contains("cannot read certificates"), "{err}");
}
