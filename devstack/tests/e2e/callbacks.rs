//! Callbacks that must store nothing: denied, replayed, unknown or missing state, failed
//! exchange; and connect sessions that are single-use and expire.

use crate::support::{query_param, TestApp, RETURN_URL};
use reqwest::StatusCode;
use serde_json::Value;

async fn connections_count(app: &TestApp) -> usize {
    let r = app.api(reqwest::Method::GET, "/v1/connections").await;
    let v: Value = r.json().await.unwrap();
    v["connections"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_authorization_returns_to_the_app_with_the_error_and_stores_nothing() {
    let app = TestApp::start().await;
    app.mock_control(mock_provider::Control { deny_authorizations: true, ..Default::default() });
    let (landed, _) = app.connect("mock", "denied-user").await;
    assert_eq!(landed.host_str(), Some("app.example"));
    assert_eq!(query_param(&landed, "status").as_deref(), Some("error"));
    assert_eq!(query_param(&landed, "error").as_deref(), Some("access_denied"));
    assert_eq!(connections_count(&app).await, 0);
    assert_eq!(app.mock_stats().code_grants, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_callback_is_refused_and_changes_nothing() {
    let app = TestApp::start().await;
    let (landed, callback) = app.connect("mock", "user-r").await;
    assert_eq!(query_param(&landed, "status").as_deref(), Some("connected"));
    let before = app.connection("mock", "user-r").await;

    let replay = app.follow(callback.as_str()).await;
    assert_eq!(query_param(&replay, "status").as_deref(), Some("error"));
    assert_eq!(query_param(&replay, "error").as_deref(), Some("state_already_used"));
    let after = app.connection("mock", "user-r").await;
    assert_eq!(before["updated_at"], after["updated_at"], "the replay changed the connection");
    assert_eq!(app.mock_stats().code_grants, 1, "the replayed code never reached the provider");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_without_a_known_state_answer_400_json_and_store_nothing() {
    let app = TestApp::start().await;
    for q in ["code=abc&state=forged-state-value", "code=abc", "error=access_denied", "state=&code=x"] {
        let r = app.http.get(app.gw(&format!("/oauth/callback?{q}"))).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(r.headers()["x-authbridge-error"], "invalid_state");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "invalid_state");
        assert!(v["message"].as_str().unwrap().len() > 10);
    }
    assert_eq!(connections_count(&app).await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_code_exchange_returns_to_the_app_with_an_error() {
    let app = TestApp::start().await;
    let connect = app.connect_url("mock", "user-x").await;
    let authorize = app.follow(&connect).await;
    let callback = app.follow(authorize.as_str()).await;
    // Tamper with the code: the provider refuses it with invalid_grant.
    let mut tampered = callback.clone();
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .into_owned()
        .map(|(k, v)| if k == "code" { (k, "not-the-code".into()) } else { (k, v) })
        .collect();
    tampered.query_pairs_mut().clear().extend_pairs(pairs);
    let landed = app.follow(tampered.as_str()).await;
    assert_eq!(query_param(&landed, "status").as_deref(), Some("error"));
    assert_eq!(query_param(&landed, "error").as_deref(), Some("invalid_grant"));
    assert_eq!(connections_count(&app).await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_url_works_once() {
    let app = TestApp::start().await;
    let connect = app.connect_url("mock", "user-once").await;
    let first = app.follow(&connect).await;
    assert_eq!(first.path(), "/oauth/authorize");
    let second = app.follow(&connect).await;
    assert_eq!(second.host_str(), Some("app.example"));
    assert_eq!(query_param(&second, "error").as_deref(), Some("session_already_used"));
    let r = app.http.get(app.gw("/connect/not-a-session")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "session_not_found");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_requests_are_validated() {
    let app = TestApp::start().await;
    let r = app.create_session("nope", "u", RETURN_URL).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unknown_provider");
    let r = app.create_session("interact", "u", RETURN_URL).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "built-in without credentials");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "provider_not_configured");
    for bad in ["", "has space", "a/b", &"x".repeat(300)] {
        let r = app.create_session("mock", bad, RETURN_URL).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad:?}");
    }
    for bad in ["javascript:alert(1)", "/relative", "https://user:pw@app.example/", "not a url"] {
        let r = app.create_session("mock", "u", bad).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    }
    let r = app
        .http
        .post(app.gw("/v1/connect/sessions"))
        .json(&serde_json::json!({"provider": "mock", "connection_id": "u", "return_url": RETURN_URL}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unauthorized");
    let r = app
        .http
        .post(app.gw("/v1/connect/sessions"))
        .header("Authorization", format!("Bearer {}", app.stack.api_key))
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_and_flows_return_to_the_app_with_session_expired() {
    let app = TestApp::start_with(devstack::StackOptions {
        session_ttl: std::time::Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    // A connect URL opened too late.
    let late = app.connect_url("mock", "slow").await;
    // A flow started in time whose callback comes too late.
    let started = app.connect_url("mock", "slow2").await;
    let authorize = app.follow(&started).await;
    let callback = app.follow(authorize.as_str()).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let landed = app.follow(&late).await;
    assert_eq!(query_param(&landed, "error").as_deref(), Some("session_expired"));
    let landed = app.follow(callback.as_str()).await;
    assert_eq!(query_param(&landed, "status").as_deref(), Some("error"));
    assert_eq!(query_param(&landed, "error").as_deref(), Some("session_expired"));
    assert_eq!(connections_count(&app).await, 0);
    assert_eq!(app.mock_stats().code_grants, 0, "an expired flow's code is never exchanged");
    app.stop().await;
}
