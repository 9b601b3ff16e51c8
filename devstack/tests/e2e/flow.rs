//! The whole journey: session → connect → callback → sealed storage → proxied call →
//! scheduled refresh by the refresher → proxied call with the new token.

use crate::support::{eventually, query_param, TestApp, RETURN_URL};
use devstack::StackOptions;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_made_stored_sealed_proxied_and_refreshed_before_expiry() {
    // Tokens live 4 s: the refresher must renew them at half-life through the delay tiers.
    let app = TestApp::start_with(StackOptions { token_ttl: Duration::from_secs(4), ..Default::default() }).await;

    // 1. Session.
    let r = app.create_session("mock", "user-1", RETURN_URL).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let session: Value = r.json().await.unwrap();
    assert!(session["token"].as_str().unwrap().len() >= 43);
    assert!(session["expires_at"].is_string());
    let connect_url = session["connect_url"].as_str().unwrap();
    assert!(connect_url.starts_with(&app.gw("/connect/")));

    // 2. Connect redirect: every parameter of RFC 6749 §4.1.1 and RFC 7636 §4.3.
    let authorize = app.follow(connect_url).await;
    assert_eq!(authorize.path(), "/oauth/authorize");
    assert_eq!(query_param(&authorize, "response_type").as_deref(), Some("code"));
    assert_eq!(query_param(&authorize, "client_id").as_deref(), Some(devstack::MOCK_CLIENT_ID));
    assert_eq!(query_param(&authorize, "redirect_uri"), Some(app.gw("/oauth/callback")));
    assert_eq!(query_param(&authorize, "scope").as_deref(), Some("read write"));
    assert_eq!(query_param(&authorize, "code_challenge_method").as_deref(), Some("S256"));
    let challenge = query_param(&authorize, "code_challenge").unwrap();
    assert_eq!(challenge.len(), 43, "S256 challenge is 32 bytes base64url");
    let state = query_param(&authorize, "state").unwrap();
    assert!(state.len() >= 43, "state carries at least 256 bits");

    // 3. The provider approves and sends the browser back; the gateway lands it on return_url.
    let callback = app.follow(authorize.as_str()).await;
    assert_eq!(query_param(&callback, "state"), Some(state));
    let landed = app.follow(callback.as_str()).await;
    assert_eq!(landed.host_str(), Some("app.example"));
    assert_eq!(landed.path(), "/settings");
    assert_eq!(query_param(&landed, "tab").as_deref(), Some("integrations"), "the app's own query is kept");
    assert_eq!(query_param(&landed, "status").as_deref(), Some("connected"));
    assert_eq!(query_param(&landed, "provider").as_deref(), Some("mock"));
    assert_eq!(query_param(&landed, "connection_id").as_deref(), Some("user-1"));
    assert_eq!(app.mock_stats().code_grants, 1);

    // 4. Stored sealed: no token appears in clear anywhere in the database.
    let first_token = app.token("mock", "user-1").await;
    for table in ["connections", "connect_sessions", "outbox"] {
        let raw = app.raw_table_text(table).await;
        assert!(!raw.contains(&first_token), "{table} holds the access token in clear");
        assert!(!raw.contains("rt_"), "{table} holds a refresh token in clear");
    }
    let conn = app.connection("mock", "user-1").await;
    assert_eq!(conn["status"], "active");
    assert_eq!(conn["scopes"], serde_json::json!(["read", "write"]));
    assert!(conn.get("access_token").is_none() && !conn.to_string().contains(&first_token));

    // 5. A proxied call carries the token, not our API key; method, path and query go through.
    let r = app.proxy_get("mock", "user-1", "contacts/42?limit=5&q=a%20b").await;
    assert_eq!(r.status(), StatusCode::OK);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["token"], Value::String(first_token.clone()));
    assert_eq!(echo["path"], "/api/contacts/42");
    assert_eq!(echo["query"], "limit=5&q=a%20b");
    assert!(!echo["headers"].to_string().contains(&app.stack.api_key), "our API key must not reach the provider");

    // 6. The refresher renews the token before it expires, through the expiry event.
    let second_token = eventually("the refresher to refresh the token", Duration::from_secs(20), || async {
        let t = app.token("mock", "user-1").await;
        (t != first_token).then_some(t)
    })
    .await;
    let stats = app.mock_stats();
    assert!(stats.refresh_grants >= 1);
    assert_eq!(stats.refresh_rejected, 0);
    let conn = app.connection("mock", "user-1").await;
    assert_eq!(conn["status"], "active");
    assert!(conn["last_refresh_at"].is_string());

    // 7. The proxied call now carries the new token.
    let r = app.proxy_get("mock", "user-1", "contacts").await;
    assert_eq!(r.status(), StatusCode::OK);
    let echo: Value = r.json().await.unwrap();
    assert_ne!(echo["token"], Value::String(first_token.clone()));

    // 8. Keep going for a few lifetimes: the refresher keeps it alive, no call is refused
    //    and no refresh token is ever used twice.
    let until = std::time::Instant::now() + Duration::from_secs(9);
    while std::time::Instant::now() < until {
        let r = app.proxy_get("mock", "user-1", "ping").await;
        assert_eq!(r.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let stats = app.mock_stats();
    assert!(stats.refresh_grants >= 3, "refreshed {} times in ~4 lifetimes", stats.refresh_grants);
    assert_eq!(stats.refresh_rejected, 0);
    assert_eq!(stats.api_unauthorized, 0, "no proxied call went out with an expired token");
    let _ = second_token;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_that_want_json_bodies_and_secrets_in_the_body_work_too() {
    let app = TestApp::start().await;
    let (landed, _) = app.connect("mockjson", "user-json").await;
    assert_eq!(query_param(&landed, "status").as_deref(), Some("connected"), "{landed}");
    let authorize = {
        let url = app.connect_url("mockjson", "user-json-2").await;
        app.follow(&url).await
    };
    assert!(query_param(&authorize, "code_challenge").is_none(), "PKCE off for this provider");
    let r = app.proxy_get("mockjson", "user-json", "x").await;
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}
