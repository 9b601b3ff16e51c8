//! The four providers whose documentation describes API keys, Basic and a two-step user key:
//! connected through the API (verified with the provider first), called through the proxy with
//! the credentials where each provider wants them, and found out when they stop working.

use crate::support::{eventually, TestApp};
use devstack::StackOptions;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

impl TestApp {
    pub async fn connect_with(&self, provider: &str, connection_id: &str, credentials: Value) -> reqwest::Response {
        let body = json!({"provider": provider, "connection_id": connection_id, "credentials": credentials});
        self.post_json("/v1/connections", &body).await
    }

    /// A form-body call to Kartra's one URL through the proxy.
    async fn kartra_call(&self, connection_id: &str, form: &'static str) -> reqwest::Response {
        self.proxy(Method::POST, &format!("kartra/{connection_id}"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap()
    }

    async fn connected(&self, provider: &str, connection_id: &str, credentials: Value) -> Value {
        let r = self.connect_with(provider, connection_id, credentials).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    fn api_counts(&self) -> mock_provider::apis::ApiCounts {
        self.stack.mock.state.api_counts()
    }
}

fn kartra_good() -> Value {
    json!({"api_key": "demo-key", "api_password": "demo-password"})
}

fn redtail_good() -> Value {
    json!({"username": "demo", "password": "demo-password"})
}

fn basic(a: &str, b: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{a}:{b}"))
}

/// The form fields the Kartra stand-in received, in order.
fn form_of(echo: &Value) -> Vec<(String, String)> {
    echo["form"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_documented_provider_connects_through_the_api_and_is_called_the_way_it_documents() {
    let app = TestApp::start().await;

    // Kartra: the App's id and the user's key and password go into the form body of every call,
    // after the caller's own fields.
    let conn = app.connected("kartra", "k1", kartra_good()).await;
    assert_eq!(conn["status"], "active");
    assert!(conn["refresh_due_at"].is_string(), "the next credential check is scheduled");
    let text = conn.to_string();
    assert!(!text.contains("demo-password") && !text.contains("demo-key"), "no secret in the answer: {text}");
    let r = app.kartra_call("k1", "cmd=create_lead&lead%5Bemail%5D=ada%40example.com").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json", "the answer's fields, read to judge its body");
    let length: usize = r.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "Success", "{v}");
    assert_eq!(length, serde_json::to_vec(&v).unwrap().len());
    let form = form_of(&v["echo"]);
    let field = |n: &str| form.iter().filter(|(k, _)| k == n).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(field("cmd"), ["create_lead"]);
    assert_eq!(field("lead[email]"), ["ada@example.com"]);
    assert_eq!(field("app_id"), [devstack::MOCK_KARTRA_APP_ID]);
    assert_eq!(field("api_key"), ["demo-key"]);
    assert_eq!(field("api_password"), ["demo-password"]);
    assert!(v["echo"]["headers"].get("authorization").is_none(), "no bearer token for a form-body provider");

    // Ontraport: the user's App id and key as header fields.
    app.connected("ontraport", "o1", json!({"app_id": "demo-app-id", "api_key": "demo-key"})).await;
    let r = app.proxy_get("ontraport", "o1", "Contacts?range=50").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-rate-limit-limit"], "180", "the provider's rate-limit headers reach the caller");
    let v: Value = r.json().await.unwrap();
    let h = &v["data"]["headers"];
    assert_eq!((h["api-appid"].as_str(), h["api-key"].as_str()), (Some("demo-app-id"), Some("demo-key")));
    assert_eq!(v["data"]["path"], "/ontraport/1/Contacts");
    assert_eq!(v["data"]["query"], "range=50");

    // WhatConverts: HTTP Basic with the user's token and secret.
    app.connected("whatconverts", "w1", json!({"api_token": "demo-token", "api_secret": "demo-secret"})).await;
    let r = app.proxy_get("whatconverts", "w1", "leads").await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["authorization"], format!("Basic {}", basic("demo-token", "demo-secret")));

    // Redtail: username and password exchanged once for a UserKey, then Userkeyauth on calls.
    let before = app.api_counts().redtail_authentications;
    app.connected("redtail", "r1", redtail_good()).await;
    assert_eq!(app.api_counts().redtail_authentications, before + 1, "one exchange at connect");
    for _ in 0..3 {
        let r = app.proxy_get("redtail", "r1", "contacts?page=2").await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        let want = format!("Userkeyauth {}", basic(devstack::MOCK_REDTAIL_API_KEY, "demo-user-key"));
        assert_eq!(v["headers"]["authorization"], want.as_str());
    }
    assert_eq!(app.api_counts().redtail_authentications, before + 1, "calls do not exchange again");

    // A backend that calls the provider itself reads the stored values, never the operator's.
    let r = app.api(Method::GET, "/v1/connections/redtail/r1/credentials").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["auth"], "two_step");
    assert_eq!(v["credentials"], json!({"user_key": "demo-user-key"}), "the UserKey only: {v}");
    let r = app.api(Method::GET, "/v1/connections/kartra/k1/credentials").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["credentials"], kartra_good());
    // OAuth2 connections keep /token, credential connections have no token to give.
    let r = app.api(Method::GET, "/v1/connections/kartra/k1/token").await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unsupported_auth_mode");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_at_connect_with_the_providers_words_and_nothing_is_stored() {
    let app = TestApp::start().await;
    let cases = [
        ("kartra", json!({"api_key": "demo-key", "api_password": "wrong"}), "API password is not valid"),
        ("kartra", json!({"api_key": "nobody", "api_password": "x"}), "API key is not valid"),
        ("ontraport", json!({"app_id": "demo-app-id", "api_key": "wrong"}), "do not match"),
        ("whatconverts", json!({"api_token": "demo-token", "api_secret": "wrong"}), "Invalid API token"),
        ("redtail", json!({"username": "demo", "password": "wrong"}), "Invalid username or password"),
    ];
    for (provider, creds, words) in cases {
        let r = app.connect_with(provider, "bad", creds).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{provider}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "invalid_credentials", "{provider}: {v}");
        assert!(v["message"].as_str().unwrap().contains(words), "{provider}: the provider's own words: {v}");
        let r = app.api(Method::GET, &format!("/v1/connections/{provider}/bad")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{provider}: nothing stored");
    }
    // An inactive Kartra account is the end user's problem too.
    app.stack.mock.state.accounts(|a| a.kartra.insert("sleepy".into(), ("pw".into(), false)));
    let r = app.connect_with("kartra", "bad", json!({"api_key": "sleepy", "api_password": "pw"})).await;
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "The account is inactive");

    // Fields the provider does not ask for, or missing ones, are refused before any call.
    let calls = app.api_counts().kartra_calls;
    let r = app.connect_with("kartra", "bad", json!({"api_key": "demo-key"})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_request");
    assert!(v["message"].as_str().unwrap().contains("api_password"), "{v}");
    let r = app.connect_with("kartra", "bad", json!({"api_key": "a", "api_password": "b", "app_id": "mine"})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "the operator's App id is not the caller's to give");
    assert_eq!(app.api_counts().kartra_calls, calls, "no call was made for a malformed request");
    // OAuth2 providers are connected through connect sessions.
    let r = app.connect_with("mock", "bad", json!({"x": "y"})).await;
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unsupported_auth_mode");

    // The App itself refused (the operator's problem): 502, and still nothing stored.
    app.stack.mock.state.accounts(|a| a.kartra_apps.clear());
    let r = app.connect_with("kartra", "bad", kartra_good()).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "integration_refused");
    assert!(v["message"].as_str().unwrap().contains("The App ID is not valid"), "{v}");
    // The provider is down: 502, nothing stored, try again later.
    app.stack.mock.state.accounts(|a| a.fail_next = 1);
    let r =
        app.connect_with("whatconverts", "bad", json!({"api_token": "demo-token", "api_secret": "demo-secret"})).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "upstream_unreachable");
    let listed: Value = app.api(Method::GET, "/v1/connections").await.json().await.unwrap();
    assert_eq!(listed["connections"], json!([]), "no refused connect left anything behind");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_replaces_the_credentials_and_keeps_the_connection() {
    let app = TestApp::start().await;
    app.connected("ontraport", "o1", json!({"app_id": "demo-app-id", "api_key": "demo-key"})).await;
    app.stack.mock.state.accounts(|a| a.ontraport.insert("second-app".into(), "second-key".into()));
    // A wrong new key leaves the working one in place.
    let r = app.connect_with("ontraport", "o1", json!({"app_id": "second-app", "api_key": "wrong"})).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let v: Value = app.proxy_get("ontraport", "o1", "Contacts").await.json().await.unwrap();
    assert_eq!(v["data"]["headers"]["api-appid"], "demo-app-id");
    // The right one replaces it: 200, same id, and the proxy uses it as soon as the change
    // reaches its token cache (PostgreSQL's NOTIFY, sent on commit: moments, but not before the
    // gateway has answered, so a call made at once may still carry the old values).
    let r = app.connect_with("ontraport", "o1", json!({"app_id": "second-app", "api_key": "second-key"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["connection_id"], "o1");
    eventually("the proxy to use the new credentials", Duration::from_secs(5), || async {
        let v: Value = app.proxy_get("ontraport", "o1", "Contacts").await.json().await.unwrap();
        (v["data"]["headers"]["api-appid"] == "second-app").then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_can_neither_override_nor_read_the_injected_credentials() {
    let app = TestApp::start().await;
    app.connected("kartra", "k1", kartra_good()).await;
    app.connected("ontraport", "o1", json!({"app_id": "demo-app-id", "api_key": "demo-key"})).await;
    app.connected("redtail", "r1", redtail_good()).await;

    // Kartra: the caller's own app_id / api_key / api_password fields are dropped, whatever
    // their case or encoding, and ours are the only ones sent.
    let r = app.kartra_call("k1", "api_key=evil&cmd=x&api%5Fpassword=evil&app_id=evil&api_key=evil2").await;
    let v: Value = r.json().await.unwrap();
    let form = form_of(&v["echo"]);
    for name in ["app_id", "api_key", "api_password"] {
        let sent: Vec<_> = form.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect();
        assert_eq!(sent.len(), 1, "{name}: {form:?}");
        assert_ne!(sent[0], "evil", "{name}");
    }
    // Ontraport: the caller's Api-Key header never reaches the provider.
    let r = app
        .proxy(Method::GET, "ontraport/o1/Contacts")
        .header("Api-Key", "evil")
        .header("API-APPID", "evil")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"]["headers"]["api-key"], "demo-key");
    assert_eq!(v["data"]["headers"]["api-appid"], "demo-app-id");
    // Redtail: the caller's Authorization is replaced.
    let r = app.proxy(Method::GET, "redtail/r1/contacts").header("X-Other", "1").send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(v["headers"]["authorization"].as_str().unwrap().starts_with("Userkeyauth "));

    // A key that may call the proxy but not read tokens cannot read credentials either.
    let r = app
        .http
        .post(app.gw("/v1/api-keys"))
        .header("Authorization", format!("Bearer {}", app.stack.api_key))
        .json(&json!({"name": "caller", "scopes": ["proxy"], "providers": ["kartra"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let key = r.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_owned();
    let r = app
        .http
        .get(app.gw("/v1/connections/kartra/k1/credentials"))
        .header("Authorization", format!("Bearer {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app
        .http
        .post(app.px("/proxy/kartra/k1"))
        .header("Authorization", format!("Bearer {key}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("cmd=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the same key calls the proxy");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_credential_found_by_a_proxied_call_marks_the_connection_needs_reauth() {
    let app = TestApp::start().await;
    app.connected("kartra", "k1", kartra_good()).await;
    app.connected("whatconverts", "w1", json!({"api_token": "demo-token", "api_secret": "demo-secret"})).await;

    // Kartra: every answer is 200; a credential `type` in the body is what says "refused".
    app.stack.mock.state.accounts(|a| a.kartra.insert("demo-key".into(), ("demo-password".into(), false)));
    let r = app.kartra_call("k1", "cmd=x").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.headers()["x-authbridge-error"], "needs_reauth");
    let c = app.connection("kartra", "k1").await;
    assert_eq!(c["status"], "needs_reauth");
    assert!(c["last_error"].as_str().unwrap().contains("The account is inactive"), "{c}");
    // From now on the provider is not called for it.
    let calls = app.api_counts().kartra_calls;
    let r = app.proxy(Method::POST, "kartra/k1").body("cmd=x").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(app.api_counts().kartra_calls, calls);

    // WhatConverts: a 401 from the provider.
    app.stack.mock.state.accounts(|a| a.whatconverts.clear());
    let r = app.proxy_get("whatconverts", "w1", "leads").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(app.connection("whatconverts", "w1").await["status"], "needs_reauth");

    // Reconnecting with working credentials brings the connection back.
    app.stack.mock.state.accounts(|a| a.kartra.insert("demo-key".into(), ("demo-password".into(), true)));
    let r = app.connect_with("kartra", "k1", kartra_good()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.connection("kartra", "k1").await["status"], "active");
    let r = app.proxy(Method::POST, "kartra/k1").body("cmd=x").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_on_schedule_outages_are_retried_and_a_revocation_is_found() {
    // Three seconds (the catalog allows no less than a minute): an event may be delivered up
    // to a second early, so a shorter interval would check back to back.
    let app =
        TestApp::start_with(StackOptions { credential_recheck: Some(Duration::from_secs(3)), ..Default::default() })
            .await;
    app.connected("ontraport", "o1", json!({"app_id": "demo-app-id", "api_key": "demo-key"})).await;
    app.connected("redtail", "r1", redtail_good()).await;
    let calls = app.api_counts();
    eventually("the refresher to check both connections again", Duration::from_secs(20), || async {
        let c = app.api_counts();
        (c.ontraport_calls > calls.ontraport_calls && c.redtail_calls > calls.redtail_calls).then_some(())
    })
    .await;
    assert_eq!(app.connection("ontraport", "o1").await["status"], "active");
    assert_eq!(app.api_counts().redtail_authentications, calls.redtail_authentications, "checks use the UserKey");

    // An outage is retried and never marks the connection, however long it lasts.
    app.stack.mock.state.accounts(|a| a.fail_next = u32::MAX);
    let (o, r) = eventually("failed checks to be recorded", Duration::from_secs(20), || async {
        let (o, r) = (app.connection("ontraport", "o1").await, app.connection("redtail", "r1").await);
        (o["error_count"].as_i64() > Some(1) && r["error_count"].as_i64() > Some(1)).then_some((o, r))
    })
    .await;
    assert_eq!((o["status"].as_str(), r["status"].as_str()), (Some("active"), Some("active")));
    assert!(o["last_error"].as_str().unwrap().contains("503"), "{o}");
    app.stack.mock.state.accounts(|a| a.fail_next = 0);
    eventually("the checks to pass again", Duration::from_secs(30), || async {
        let (o, r) = (app.connection("ontraport", "o1").await, app.connection("redtail", "r1").await);
        (o["error_count"] == 0 && r["error_count"] == 0).then_some(())
    })
    .await;

    // The end user deletes their key at the provider: the next check finds it.
    app.stack.mock.state.accounts(|a| a.ontraport.clear());
    let c = eventually("the check to find the revoked key", Duration::from_secs(20), || async {
        let c = app.connection("ontraport", "o1").await;
        (c["status"] == "needs_reauth").then_some(c)
    })
    .await;
    assert!(c["last_error"].as_str().unwrap().contains("do not match"), "{c}");
    assert_eq!(app.connection("redtail", "r1").await["status"], "active", "only the revoked one");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redtails_password_is_nowhere_in_the_database_and_every_secret_is_sealed() {
    let app = TestApp::start().await;
    app.connected("redtail", "r1", json!({"username": "demo", "password": "demo-password"})).await;
    app.connected("kartra", "k1", kartra_good()).await;
    app.connected("whatconverts", "w1", json!({"api_token": "demo-token", "api_secret": "demo-secret"})).await;
    let mut everything = String::new();
    for table in ["connections", "connect_sessions", "outbox", "api_keys"] {
        everything.push_str(&app.raw_table_text(table).await);
    }
    assert!(everything.contains("r1") && everything.contains("k1"), "the rows are there");
    for secret in ["demo-password", "demo-user-key", "demo-key", "demo-secret", &basic("demo", "demo-password")] {
        assert!(!everything.contains(secret), "`{secret}` is in the database in clear");
    }
    // The UserKey is there, sealed: the proxy can use it.
    assert_eq!(app.proxy_get("redtail", "r1", "contacts").await.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_runs_once_per_schedule_whatever_events_of_older_schedules_arrive() {
    let app = TestApp::start().await;
    app.connected("whatconverts", "w1", json!({"api_token": "demo-token", "api_secret": "demo-secret"})).await;
    let (client, conn) = tokio_postgres::connect(&app.stack.database_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    // Due in half a second: within the second by which an event may arrive early.
    let sql = "UPDATE connections SET refresh_due_at = now() + interval '500 milliseconds' WHERE connection_id = 'w1'";
    client.execute(sql, &[]).await.unwrap();
    let store = app.stack.store();
    let conn = store.get_connection("whatconverts", "w1").await.unwrap().unwrap();
    let broker = app.stack.broker();
    let current = shared::messaging::ExpiryEvent {
        provider: "whatconverts".into(),
        connection_id: "w1".into(),
        token_version: conn.token_version,
        due_at: conn.refresh_due_at.unwrap(),
        attempt: 0,
        traceparent: None,
    };
    let queue = broker.topology.work_queue();
    let drained = || async {
        eventually("the work queue to drain", Duration::from_secs(15), || async {
            (broker.queue_depth(&queue).await.unwrap() == 0).then_some(())
        })
        .await
    };
    // A check keeps the version: an event of an earlier schedule (a retry chain that a later
    // check overtook) is told apart by the time it was scheduled for, and does nothing.
    let older =
        shared::messaging::ExpiryEvent { due_at: current.due_at - chrono::Duration::minutes(10), ..current.clone() };
    let calls = app.api_counts().whatconverts_calls;
    broker.publish_expiry(&older).await.unwrap();
    drained().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.api_counts().whatconverts_calls, calls, "an event of an older schedule checked the credentials");
    let unchanged = store.get_connection("whatconverts", "w1").await.unwrap().unwrap();
    assert_eq!(unchanged.refresh_due_at, conn.refresh_due_at);
    // The current schedule's event checks them, once however often it arrives.
    for ev in [&current, &current] {
        broker.publish_expiry(ev).await.unwrap();
    }
    drained().await;
    let after = eventually("the check to be recorded", Duration::from_secs(15), || async {
        let c = store.get_connection("whatconverts", "w1").await.unwrap().unwrap();
        (c.refresh_due_at > conn.refresh_due_at).then_some(c)
    })
    .await;
    assert_eq!(app.api_counts().whatconverts_calls, calls + 1, "one check for one schedule");
    assert!(after.refresh_due_at.unwrap() > chrono::Utc::now() + chrono::Duration::hours(23), "next check tomorrow");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_proxies_together_keep_to_kartras_limit_per_app_and_queue_the_calls_beyond_it() {
    let app = TestApp::start_with(StackOptions { proxies: 2, ..Default::default() }).await;
    for id in ["k1", "k2", "k3"] {
        app.connected("kartra", id, kartra_good()).await;
    }
    let proxies = [app.stack.proxy.url(), app.stack.more_proxies[0].url()];
    eventually("both proxies to count each other", Duration::from_secs(10), || async {
        let s = &app.stack;
        (s.proxy.replicas_sharing_limits() == 2 && s.more_proxies[0].replicas_sharing_limits() == 2).then_some(())
    })
    .await;
    let before = app.api_counts();
    // Three times the App's limit at once, from three connections, through both proxies.
    let calls = (0..60).map(|i| {
        let url = format!("{}/proxy/kartra/k{}", proxies[i % 2], 1 + i % 3);
        let req = app
            .http
            .post(url)
            .header("Authorization", format!("Bearer {}", app.stack.api_key))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("cmd=x");
        async move {
            let r = req.send().await.unwrap();
            let marker = r.headers().get("x-authbridge-error").map(|v| v.to_str().unwrap().to_owned());
            let retry_after = r.headers().get("retry-after").is_some();
            (r.status(), marker, retry_after)
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let counts = app.api_counts();
    assert_eq!(counts.kartra_rate_limited, before.kartra_rate_limited, "Kartra never had to refuse a call");
    let ok = answers.iter().filter(|(s, ..)| *s == StatusCode::OK).count();
    // 5 s deadlines: about 3 s of waiting, at 20 calls a second.
    assert!(ok >= 40, "calls waited for free slots instead of being refused: {ok} of 60 went out");
    for (status, marker, retry_after) in &answers {
        if *status != StatusCode::OK {
            assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(marker.as_deref(), Some("rate_limited"), "our own 429, told apart from Kartra's");
            assert!(retry_after);
        }
    }
    assert_eq!(counts.kartra_calls - before.kartra_calls, ok as u64, "refused calls never reached Kartra");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_own_429_is_sent_again_after_its_wait_when_the_deadline_allows() {
    let app = TestApp::start().await;
    app.connected("kartra", "k1", kartra_good()).await;
    app.connected("ontraport", "o1", json!({"app_id": "demo-app-id", "api_key": "demo-key"})).await;
    // Another integration of the same App (outside authbridge) uses up this second's calls.
    let kartra_api = format!("{}/kartra/api", app.stack.mock.url());
    for _ in 0..mock_provider::apis::KARTRA_PER_SECOND {
        app.http.post(&kartra_api).form(&[("app_id", devstack::MOCK_KARTRA_APP_ID)]).send().await.unwrap();
    }
    let before = app.api_counts();
    let r = app.kartra_call("k1", "cmd=x").await;
    assert_eq!(r.status(), StatusCode::OK, "sent again a second later, as Kartra documents");
    let after = app.api_counts();
    assert_eq!(after.kartra_rate_limited - before.kartra_rate_limited, 1);
    assert_eq!(after.kartra_calls - before.kartra_calls, 2);

    // Ontraport asks for 60 s, longer than the call's 5 s deadline: its 429 goes back as it is.
    let ontraport_api = format!("{}/ontraport/1/Contacts", app.stack.mock.url());
    for _ in 0..mock_provider::apis::ONTRAPORT_PER_MINUTE {
        app.http
            .get(&ontraport_api)
            .header("Api-Appid", "demo-app-id")
            .header("Api-Key", "demo-key")
            .send()
            .await
            .unwrap();
    }
    let r = app.proxy_get("ontraport", "o1", "Contacts").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("x-authbridge-error").is_none(), "the provider's own answer");
    assert_eq!(r.headers()["retry-after"], "60");
    assert_eq!(app.connection("ontraport", "o1").await["status"], "active", "a 429 says nothing of the key");
    app.stop().await;
}
