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

pub(crate) async fn new_key(app: &TestApp, scopes: &[&str], providers: &[&str]) -> (String, String) {
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
    let mut forged = url::Url::parse(&app.gw("/oauth/callback")).unwrap();
    forged
        .query_pairs_mut()
        .append_pair("code", &attacker_code)
        .append_pair("state", &victim_state)
        .append_pair("iss", &query_param(&attacker_callback, "iss").unwrap());
    let forged = forged.to_string();
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

/// RFC 9700 §4.7.1: the attacker opens their own connect URL, keeps the provider's authorize
/// URL it redirects to (which carries the state and the PKCE challenge) and gets a victim to
/// approve it. The victim's browser arrives at the callback without the attacker's cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_finished_in_another_browser_stores_nothing() {
    let app = TestApp::start().await;
    let connect = app.connect_url("mock", "attacker").await;
    let authorize = app.follow(&connect).await;
    let cookies = app.cookies();
    assert_eq!(cookies.len(), 1, "opening the flow binds it to this browser");
    let callback = app.follow_as_stranger(authorize.as_str()).await;
    let landed = app.follow_as_stranger(callback.as_str()).await;
    assert_eq!(query_param(&landed, "status").as_deref(), Some("error"));
    assert_eq!(query_param(&landed, "error").as_deref(), Some("browser_mismatch"));
    // A cookie of the right name with another value is no better.
    let forged = app
        .http
        .get(callback.as_str())
        .header("Cookie", format!("{}=forged-nonce", cookies[0].0))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FOUND);
    assert!(forged.headers()["location"].to_str().unwrap().contains("error=state_already_used"));
    // The refused callback burnt the flow: the attacker's own browser cannot finish it either.
    let late = app.follow(callback.as_str()).await;
    assert_eq!(query_param(&late, "error").as_deref(), Some("state_already_used"));
    let r = app.api(Method::GET, "/v1/connections").await;
    assert_eq!(r.json::<Value>().await.unwrap()["connections"].as_array().unwrap().len(), 0);
    assert_eq!(app.mock_stats().code_grants, 0, "the code was never exchanged");

    // Another flow whose callback carries a wrong cookie value is refused the same way.
    let connect = app.connect_url("mock", "attacker2").await;
    let authorize = app.follow(&connect).await;
    let name = app.cookies().into_iter().find(|(n, _)| !cookies.iter().any(|(c, _)| c == n)).unwrap().0;
    let callback = app.follow_as_stranger(authorize.as_str()).await;
    let r = app.http.get(callback.as_str()).header("Cookie", format!("{name}=not-the-nonce")).send().await.unwrap();
    assert!(r.headers()["location"].to_str().unwrap().contains("error=browser_mismatch"));
    assert_eq!(app.mock_stats().code_grants, 0);

    // The legitimate case: the browser that opened the flow is the one that comes back.
    let (landed, _) = app.connect("mock", "alice").await;
    assert_eq!(query_param(&landed, "status").as_deref(), Some("connected"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flow_cookie_is_http_only_lax_and_limited_to_the_callback() {
    let app = TestApp::start().await;
    let connect = app.connect_url("mock", "u1").await;
    let r = app.http.get(&connect).send().await.unwrap();
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.starts_with("authbridge_flow_"), "{set}");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/oauth/callback", "Max-Age=600"] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    assert!(!set.contains("Secure"), "served over plain HTTP here: {set}");
    // One browser can run two flows at once: each has its own cookie.
    let (first, _) = app.connect("mock", "a").await;
    let connect_b = app.connect_url("mock", "b").await;
    let connect_c = app.connect_url("mock", "c").await;
    let auth_b = app.follow(&connect_b).await;
    let auth_c = app.follow(&connect_c).await;
    let cb_c = app.follow(auth_c.as_str()).await;
    let cb_b = app.follow(auth_b.as_str()).await;
    for cb in [cb_c, cb_b] {
        let landed = app.follow(cb.as_str()).await;
        assert_eq!(query_param(&landed, "status").as_deref(), Some("connected"), "{landed}");
    }
    assert_eq!(query_param(&first, "status").as_deref(), Some("connected"));
    assert!(app.cookies().is_empty(), "every finished flow clears its cookie: {:?}", app.cookies());
    app.stop().await;
}

/// RFC 9207: a callback whose `iss` names another authorization server (a mix-up attack) is
/// refused before any code is exchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_whose_issuer_is_not_the_providers_store_nothing() {
    let app = TestApp::start().await;
    let mut n = 0;
    let other = Some("https://other-as.example".to_owned());
    // `mock` declares its issuer; `mockjson` does not, so `iss` must be the authorize URL's origin.
    for (provider, iss) in [
        ("mock", other.clone()),
        ("mock", None),
        ("mock", Some(format!("{}/", app.stack.mock.url()))),
        ("mockjson", other),
    ] {
        n += 1;
        let connect = app.connect_url(provider, &format!("u{n}")).await;
        let authorize = app.follow(&connect).await;
        let mut callback = app.follow(authorize.as_str()).await;
        assert_eq!(query_param(&callback, "iss"), Some(app.stack.mock.url()), "the mock names its issuer");
        let kept: Vec<(String, String)> = callback.query_pairs().into_owned().filter(|(k, _)| k != "iss").collect();
        callback.query_pairs_mut().clear().extend_pairs(kept);
        if let Some(iss) = &iss {
            callback.query_pairs_mut().append_pair("iss", iss);
        }
        let landed = app.follow(callback.as_str()).await;
        assert_eq!(query_param(&landed, "error").as_deref(), Some("issuer_mismatch"), "{provider} {iss:?}");
    }
    assert_eq!(app.mock_stats().code_grants, 0);
    // The issuer each provider really sends is accepted.
    for provider in ["mock", "mockjson"] {
        let (landed, _) = app.connect(provider, "ok").await;
        assert_eq!(query_param(&landed, "status").as_deref(), Some("connected"), "{provider}");
    }
    app.stop().await;
}

/// A key can only hand out what it has: an `admin` key limited to one provider mints no key
/// that reaches further, and manages (lists, revokes) only keys within its providers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_admin_key_creates_and_manages_only_keys_within_its_own_reach() {
    let app = TestApp::start().await;
    app.connect("mock", "u1").await;
    let (_, admin) = new_key(&app, &["admin", "proxy"], &["mockjson"]).await;
    let (wide_id, wide) = new_key(&app, &["proxy"], &[]).await;
    let as_admin = |method: Method, path: &str| {
        app.http.request(method, app.gw(path)).header("Authorization", format!("Bearer {admin}"))
    };
    for (scopes, providers) in [
        (json!(["admin", "proxy", "tokens:read", "connect", "connections:read", "connections:write"]), json!([])),
        (json!(["proxy"]), json!([])),
        (json!(["proxy"]), json!(["mock"])),
        (json!(["proxy"]), json!(["mockjson", "mock"])),
        (json!(["tokens:read"]), json!(["mockjson"])),
    ] {
        let body = json!({"name": "escalated", "scopes": scopes, "providers": providers});
        let r = as_admin(Method::POST, "/v1/api-keys").json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{body}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "forbidden");
    }
    let r = as_admin(Method::POST, "/v1/api-keys")
        .json(&json!({"name": "narrow", "scopes": ["proxy"], "providers": ["mockjson"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let narrow: Value = r.json().await.unwrap();
    // It sees its own reach only: the narrow key and itself, not the unlimited key.
    let r = as_admin(Method::GET, "/v1/api-keys").send().await.unwrap();
    let listed: Vec<String> = r.json::<Value>().await.unwrap()["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(listed.contains(&narrow["id"].as_str().unwrap().to_owned()), "{listed:?}");
    assert!(!listed.contains(&wide_id), "{listed:?}");
    // Revoking a key beyond its reach answers as if there were none, and the key keeps working.
    let r = as_admin(Method::DELETE, &format!("/v1/api-keys/{wide_id}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app.http.get(app.px("/proxy/mock/u1/x")).header("Authorization", format!("Bearer {wide}")).send().await;
    assert_eq!(r.unwrap().status(), StatusCode::OK);
    let r = as_admin(Method::DELETE, &format!("/v1/api-keys/{}", narrow["id"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    app.stop().await;
}

/// Reconnecting replaces an existing connection's tokens: `connect` alone may start flows for
/// new connections, not take over existing ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_an_existing_connection_needs_connections_write() {
    let app = TestApp::start().await;
    app.connect("mock", "alice").await;
    let token_before = app.token("mock", "alice").await;
    let (_, connect_only) = new_key(&app, &["connect"], &[]).await;
    let (_, writer) = new_key(&app, &["connect", "connections:write"], &[]).await;
    let session = |key: String, id: &'static str| {
        app.http
            .post(app.gw("/v1/connect/sessions"))
            .header("Authorization", format!("Bearer {key}"))
            .json(&json!({"provider": "mock", "connection_id": id, "return_url": RETURN_URL}))
            .send()
    };
    let r = session(connect_only.clone(), "alice").await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("connections:write"));
    // A session made while the connection did not exist yet cannot replace it later.
    let r = session(connect_only.clone(), "bob").await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let late: Value = r.json().await.unwrap();
    app.connect("mock", "bob").await;
    let bob_token = app.token("mock", "bob").await;
    let authorize = app.follow(late["connect_url"].as_str().unwrap()).await;
    let callback = app.follow(authorize.as_str()).await;
    let landed = app.follow(callback.as_str()).await;
    assert_eq!(query_param(&landed, "error").as_deref(), Some("reconnect_not_allowed"));
    assert_eq!(app.token("mock", "bob").await, bob_token);
    // A key that may write connections reconnects.
    let r = session(writer, "alice").await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    let authorize = app.follow(v["connect_url"].as_str().unwrap()).await;
    let callback = app.follow(authorize.as_str()).await;
    let landed = app.follow(callback.as_str()).await;
    assert_eq!(query_param(&landed, "status").as_deref(), Some("connected"));
    assert_ne!(app.token("mock", "alice").await, token_before);
    app.stop().await;
}

/// With `AUTHBRIDGE_METRICS_TOKEN` set, every service's `/metrics` answers only that token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_closed_to_all_but_the_scraper() {
    let token = "scraper-token-0123456789";
    let app = TestApp::start_with(StackOptions { metrics_token: Some(token.into()), ..Default::default() }).await;
    for base in [app.stack.gateway.url(), app.stack.proxy.url(), app.stack.refreshers[0].url()] {
        let url = format!("{base}/metrics");
        for presented in [None, Some("wrong-token-0123456789"), Some(app.stack.api_key.as_str())] {
            let mut req = app.http.get(&url);
            if let Some(p) = presented {
                req = req.header("Authorization", format!("Bearer {p}"));
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{url} {presented:?}");
            assert_eq!(r.json::<Value>().await.unwrap()["error"], "unauthorized");
        }
        let r = app.http.get(&url).header("Authorization", format!("Bearer {token}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{url}");
        assert!(r.text().await.unwrap().contains("# TYPE"), "{url}");
        // Health and readiness stay open for the orchestrator.
        assert_eq!(app.http.get(format!("{base}/healthz")).send().await.unwrap().status(), StatusCode::OK);
    }
    app.stop().await;
}
