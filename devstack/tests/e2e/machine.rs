//! `oauth2_client_credentials`: machine-to-machine connections, whose tokens the operator's
//! client fetches for itself (RFC 6749 §4.4) and fetches again before they expire.

use crate::support::{eventually, TestApp};
use devstack::StackOptions;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

async fn create(app: &TestApp, body: Value) -> reqwest::Response {
    app.post_json("/v1/connections", &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_credentials_connection_is_fetched_refreshed_before_expiry_and_used_by_the_proxy() {
    let app = TestApp::start_with(StackOptions { token_ttl: Duration::from_secs(3), ..Default::default() }).await;
    let r = create(&app, json!({"provider": "mockmachine", "connection_id": "reports"})).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let conn: Value = r.json().await.unwrap();
    assert_eq!(conn["status"], "active");
    assert!(conn["expires_at"].is_string() && conn["refresh_due_at"].is_string(), "{conn}");
    assert_eq!(app.mock_stats().client_credentials_grants, 1);
    assert_eq!(app.mock_stats().authorizations, 0, "no end user, no browser");
    let first = app.token("mockmachine", "reports").await;

    // Called through the proxy for longer than two lifetimes of a token: every call goes out
    // with a live token, because the refresher fetched the next one before the last expired.
    let until = std::time::Instant::now() + Duration::from_secs(7);
    while std::time::Instant::now() < until {
        let r = app.proxy_get("mockmachine", "reports", "deals").await;
        assert_eq!(r.status(), StatusCode::OK);
        let echo: Value = r.json().await.unwrap();
        assert!(echo["token"].as_str().unwrap().starts_with("at_"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stats = app.mock_stats();
    assert!(stats.client_credentials_grants >= 3, "fetched again before each expiry: {stats:?}");
    assert_eq!(stats.api_unauthorized, 0, "no call carried an expired token");
    assert_eq!(stats.refresh_grants, 0, "no refresh token is involved");
    assert_ne!(app.token("mockmachine", "reports").await, first);

    // Connect sessions are for end users; credentials are not the caller's to give.
    let r = app.create_session("mockmachine", "x", crate::support::RETURN_URL).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unsupported_auth_mode");
    let r = create(&app, json!({"provider": "mockmachine", "connection_id": "x", "credentials": {"a": "b"}})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_secret_is_the_operators_problem_and_marks_the_connection() {
    let app = TestApp::start().await;
    let r = create(&app, json!({"provider": "mockmachine", "connection_id": "m1"})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // The operator rotated the client's secret at the provider and has not told authbridge.
    app.stack.mock.state.set_client_secret(devstack::MOCK_CLIENT_ID, "rotated");
    let r = create(&app, json!({"provider": "mockmachine", "connection_id": "m2"})).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "integration_refused");
    assert!(v["message"].as_str().unwrap().contains("invalid_client"), "{v}");
    assert_eq!(app.api(Method::GET, "/v1/connections/mockmachine/m2").await.status(), StatusCode::NOT_FOUND);
    // The existing connection's next token cannot be fetched: it says so instead of dying quietly.
    let r = app.api(Method::POST, "/v1/connections/mockmachine/m1/refresh").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let c = eventually("the connection to say why", Duration::from_secs(5), || async {
        let c = app.connection("mockmachine", "m1").await;
        (c["status"] == "needs_reauth").then_some(c)
    })
    .await;
    assert!(c["last_error"].as_str().unwrap().contains("invalid_client"), "{c}");
    app.stop().await;
}
