//! Secrets never reach the logs. One test, in its own binary because it owns the process's
//! log subscriber: it captures everything logged at DEBUG (the level an operator turns on to
//! investigate) across a full flow — connect, callbacks good and bad, proxied calls, a 401
//! retry, scheduled and forced refreshes, API-key management, deletion — then looks for every
//! secret involved: codes, access and refresh tokens, PKCE verifiers, client secret, session
//! tokens, states, API keys and the encryption key.

#[path = "../e2e/support.rs"]
#[allow(dead_code)]
mod support;

use base64::Engine;
use devstack::StackOptions;
use reqwest::Method;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{query_param, TestApp};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_flow_logs_no_secret_at_debug_level() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("debug"))
        .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || writer.clone()))
        .with(tracing_subscriber::fmt::layer().json().with_writer({
            let w = capture.clone();
            move || w.clone()
        }))
        .init();

    // A key we know, so the logs can be searched for it in every spelling.
    let key_bytes: [u8; 32] = rand::random();
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(key_bytes);
    let keyring = shared::crypto::Keyring::from_base64(&key_b64, None, &[]).unwrap();
    let opts = StackOptions { token_ttl: Duration::from_secs(3), keyring, ..Default::default() };
    let keyring_debug = format!("{:?}", opts.keyring);
    let key_hex: String = key_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let app = TestApp::start_with(opts).await;
    let mut secrets: Vec<String> = vec![app.stack.api_key.clone(), devstack::MOCK_CLIENT_SECRET.to_owned()];
    secrets.extend([
        key_b64.clone(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key_bytes),
        key_hex.clone(),
        format!("{key_bytes:?}"),
    ]);

    // Connect two users, keeping the session tokens and states.
    for id in ["alice", "bob"] {
        let r = app.create_session("mock", id, support::RETURN_URL).await;
        let v: serde_json::Value = r.json().await.unwrap();
        secrets.push(v["token"].as_str().unwrap().to_owned());
        let authorize = app.follow(v["connect_url"].as_str().unwrap()).await;
        secrets.push(query_param(&authorize, "state").unwrap());
        // The nonce that binds the flow to this browser.
        secrets.extend(app.cookies().into_iter().map(|(_, v)| v));
        let callback = app.follow(authorize.as_str()).await;
        let landed = app.follow(callback.as_str()).await;
        assert!(landed.as_str().contains("status=connected"));
        // A replay, and a forged state.
        app.follow(callback.as_str()).await;
    }
    let _ = app.http.get(app.gw("/oauth/callback?code=stolen-code-1234567&state=forged-state-1234567")).send().await;
    // A denied authorization.
    app.mock_control(mock_provider::Control { deny_authorizations: true, ..Default::default() });
    app.connect("mock", "carol").await;
    app.mock_control(mock_provider::Control::default());

    // Proxied calls, a 401 answered by a refresh and a retry, the token endpoint, a forced
    // refresh, a scheduled refresh.
    for _ in 0..3 {
        app.proxy_get("mock", "alice", "contacts?limit=1").await;
    }
    app.mock_control(mock_provider::Control { expire_all_access_tokens: true, ..Default::default() });
    app.proxy_get("mock", "alice", "contacts").await;
    app.token("mock", "bob").await;
    app.api(Method::POST, "/v1/connections/mock/bob/refresh").await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    // API keys: create one, use it, revoke it.
    let r = app
        .http
        .post(app.gw("/v1/api-keys"))
        .header("Authorization", format!("Bearer {}", app.stack.api_key))
        .json(&serde_json::json!({"name": "ci", "scopes": ["proxy"]}))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    let key = v["key"].as_str().unwrap().to_owned();
    secrets.push(key.clone());
    app.http.get(app.px("/proxy/mock/alice/x")).header("Authorization", format!("Bearer {key}")).send().await.unwrap();
    app.http
        .get(app.px("/proxy/mock/alice/x"))
        .header("Authorization", "Bearer wrong-key-123456789")
        .send()
        .await
        .unwrap();
    app.api(Method::DELETE, &format!("/v1/api-keys/{}", v["id"].as_str().unwrap())).await;
    app.api(Method::DELETE, "/v1/connections/mock/bob").await;

    secrets.extend(app.stack.mock.state.secrets());
    let stats = app.mock_stats();
    assert!(stats.refresh_grants >= 3, "the flow exercised refreshes");
    app.stop().await;

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(logs.contains("token refreshed"), "the logs were captured");
    assert!(logs.len() > 10_000, "the logs were captured ({} bytes)", logs.len());
    assert!(secrets.len() > 20, "secrets were collected");
    let mut leaked = Vec::new();
    for s in &secrets {
        if s.len() >= 8 && logs.contains(s.as_str()) {
            leaked.push(s.clone());
        }
    }
    // The keyring prints only key ids (the logs were searched for the key above).
    assert!(!keyring_debug.contains(&key_b64) && !keyring_debug.contains(&key_hex), "{keyring_debug}");
    assert!(
        leaked.is_empty(),
        "{} secrets appear in the logs, e.g. {:?}",
        leaked.len(),
        &leaked[..leaked.len().min(3)]
    );
}
