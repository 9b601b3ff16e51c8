//! Webhooks, end-user identity and the audit trail, as a product sees them: each event type
//! arrives at a receiver the test starts, signed so that the Standard Webhooks reference library
//! (`scripts/verify-webhooks.py`, PyPI `standardwebhooks`) verifies it; secrets rotate with no
//! gap; a receiver that was down gets every event; a dead one does not hold up another.

use crate::support::{eventually, TestApp, RETURN_URL};
use devstack::receiver::{Received, Receiver};
use devstack::StackOptions;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use shared::webhooks::SigningSecret;
use std::time::Duration;

impl TestApp {
    /// Registers a webhook endpoint; returns its id and signing secret.
    async fn webhook(&self, url: &str, events: &[&str]) -> (String, String) {
        let r = self.post_json("/v1/webhooks", &json!({"url": url, "events": events})).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        (v["id"].as_str().unwrap().to_owned(), v["secret"].as_str().unwrap().to_owned())
    }

    /// A Kartra connection through the API (the quickest way to make `connection.created`).
    async fn kartra(&self, connection_id: &str, extra: Value) -> reqwest::Response {
        let mut body = json!({"provider": "kartra", "connection_id": connection_id,
                              "credentials": {"api_key": "demo-key", "api_password": "demo-password"}});
        body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
        self.post_json("/v1/connections", &body).await
    }

    /// A client-credentials connection (no end user, no rate limit at the mock): the quickest
    /// way to make many `connection.created` events.
    async fn machine(&self, connection_id: &str) -> reqwest::Response {
        self.post_json("/v1/connections", &json!({"provider": "mockmachine", "connection_id": connection_id})).await
    }

    /// The whole browser flow for a session created with `body`.
    async fn flow(&self, body: Value) {
        let r = self.post_json("/v1/connect/sessions", &body).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        let authorize = self.follow(v["connect_url"].as_str().unwrap()).await;
        let callback = self.follow(authorize.as_str()).await;
        let landed = self.follow(callback.as_str()).await;
        assert!(landed.as_str().contains("status=connected"), "{landed}");
    }
}

/// Waits until the receiver holds `n` requests, and returns them.
async fn received(rx: &Receiver, n: usize, what: &str) -> Vec<Received> {
    eventually(what, Duration::from_secs(30), || async {
        let got = rx.received();
        (got.len() >= n).then_some(got)
    })
    .await
}

/// The distinct event ids among what was received.
fn ids(got: &[Received]) -> std::collections::BTreeSet<String> {
    got.iter().map(|r| r.header("webhook-id").to_owned()).collect()
}

/// Verifies every delivery twice: with our own verifier, and with the reference library.
fn verify_all(secret: &str, got: &[Received]) {
    let s = SigningSecret::parse(secret).unwrap();
    let now = chrono::Utc::now().timestamp();
    for r in got {
        assert!(
            shared::webhooks::verify(
                &s,
                r.header("webhook-id"),
                r.header("webhook-timestamp"),
                r.header("webhook-signature"),
                &r.body,
                now,
                Duration::from_secs(300)
            ),
            "our verifier refuses {r:?}"
        );
    }
    reference_verify(
        &got.iter()
            .map(
                |r| json!({"secret": secret, "headers": r.headers, "body": String::from_utf8(r.body.clone()).unwrap()}),
            )
            .collect::<Vec<_>>(),
    );
}

fn reference_verify(items: &[Value]) {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/verify-webhooks.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(serde_json::to_string(items).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the standardwebhooks reference library refused a delivery (pip install standardwebhooks): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{} verified", items.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_arrives_signed_with_the_end_user_and_tags_and_verifies_with_the_reference_library() {
    let app = TestApp::start_with(StackOptions { refresh_failing_after: Duration::ZERO, ..Default::default() }).await;
    let rx = Receiver::start().await.unwrap();
    let (_, secret) = app.webhook(&rx.url(), &[]).await;
    let end_user = json!({"id": "u-42", "email": "ada@example.com", "display_name": "Ada", "organization_id": "org-7"});
    let session = json!({"provider": "mock", "connection_id": "c1", "return_url": RETURN_URL,
                         "end_user": end_user, "tags": {"plan": "pro"}});
    app.flow(session.clone()).await; // created
    let sessions_again = json!({"provider": "mock", "connection_id": "c1", "return_url": RETURN_URL});
    app.flow(sessions_again.clone()).await; // reconnected (the owner kept)
    let refresh = "/v1/connections/mock/c1/refresh";
    app.mock_control(mock_provider::Control {
        token_fail_count: 1,
        token_fail_status: Some(503),
        ..Default::default()
    });
    assert_ne!(app.api(Method::POST, refresh).await.status(), StatusCode::OK); // refresh_failing
    assert_eq!(app.api(Method::POST, refresh).await.status(), StatusCode::OK); // recovered
    app.mock_control(mock_provider::Control { revoke_all_refresh_tokens: true, ..Default::default() });
    assert_eq!(app.api(Method::POST, refresh).await.status(), StatusCode::CONFLICT); // needs_reauth
    app.flow(sessions_again).await; // reconnected + recovered
    assert_eq!(app.api(Method::DELETE, "/v1/connections/mock/c1").await.status(), StatusCode::NO_CONTENT);

    let expected = [
        "connection.created",
        "connection.reconnected",
        "connection.refresh_failing",
        "connection.recovered",
        "connection.needs_reauth",
        "connection.reconnected",
        "connection.recovered",
        "connection.deleted",
    ];
    let got = received(&rx, expected.len(), "every event").await;
    let mut bodies: Vec<Value> = got.iter().map(Received::json).collect();
    // Sent concurrently, so they may arrive out of order; their timestamps give the order.
    bodies.sort_by(|a, b| a["timestamp"].as_str().cmp(&b["timestamp"].as_str()));
    let types: Vec<&str> = bodies.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(types, expected);
    for b in &bodies {
        assert_eq!(b["data"]["provider"], "mock");
        assert_eq!(b["data"]["connection_id"], "c1");
        assert_eq!(b["data"]["end_user"], end_user, "{b}");
        assert_eq!(b["data"]["tags"], json!({"plan": "pro"}));
        assert!(b["id"].as_str().unwrap().starts_with("evt_"));
    }
    let by_type = |t: &str| bodies.iter().find(|b| b["type"] == t).unwrap();
    assert_eq!(by_type("connection.needs_reauth")["data"]["status"], "needs_reauth");
    assert!(by_type("connection.needs_reauth")["data"]["error"].as_str().unwrap().contains("invalid_grant"));
    assert!(by_type("connection.refresh_failing")["data"]["error"].as_str().unwrap().contains("503"));
    assert_eq!(by_type("connection.deleted")["data"]["status"], "deleted");
    for r in &got {
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.json()["id"].as_str(), Some(r.header("webhook-id")), "the event id is the webhook id");
        let body = String::from_utf8_lossy(&r.body);
        assert!(!body.contains("access_token") && !body.contains("refresh_token"), "{body}");
    }
    verify_all(&secret, &got);
    let metrics = app.http.get(format!("{}/metrics", app.stack.refreshers[0].url())).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let sample = |name: &str| {
        metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(sample("authbridge_webhook_deliveries_total{outcome=\"succeeded\"}"), Some(expected.len() as f64));
    assert_eq!(sample("authbridge_webhook_delivery_lag_seconds_count"), Some(expected.len() as f64));
    assert_eq!(sample("authbridge_webhook_deliveries{status=\"succeeded\"}"), Some(expected.len() as f64));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_configured_in_the_environment_receives_events_signed_with_its_secret() {
    let rx = Receiver::start().await.unwrap();
    let secret = SigningSecret::generate();
    let webhook = auth_gateway::settings::ConfiguredWebhook {
        url: url::Url::parse(&rx.url()).unwrap(),
        secret: secret.clone(),
        events: vec!["connection.created".into()],
    };
    let app = TestApp::start_with(StackOptions { webhook: Some(webhook), ..Default::default() }).await;
    let w: Value = app.api(Method::GET, "/v1/webhooks/wh_configured").await.json().await.unwrap();
    assert_eq!(w["url"], rx.url().as_str());
    assert_eq!(w["events"], json!(["connection.created"]));
    assert_eq!(app.machine("m1").await.status(), StatusCode::CREATED);
    let got = received(&rx, 1, "the event at the configured endpoint").await;
    verify_all(&secret.expose(), &got);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_gets_only_the_types_it_asked_for_and_a_tampered_body_does_not_verify() {
    let app = TestApp::start().await;
    let (all, some) = (Receiver::start().await.unwrap(), Receiver::start().await.unwrap());
    let (_, secret) = app.webhook(&all.url(), &[]).await;
    app.webhook(&some.url(), &["connection.deleted"]).await;
    assert_eq!(app.kartra("k1", json!({})).await.status(), StatusCode::CREATED);
    assert_eq!(app.api(Method::DELETE, "/v1/connections/kartra/k1").await.status(), StatusCode::NO_CONTENT);
    received(&all, 2, "both events at the endpoint of every type").await;
    let got = received(&some, 1, "the deletion at the endpoint of deletions").await;
    assert_eq!(got[0].json()["type"], "connection.deleted");
    // Give a stray `created` every chance to arrive before saying it did not.
    app.kartra("k2", json!({})).await;
    received(&all, 3, "the third event").await;
    assert_eq!(some.received().len(), 1);

    let mut tampered = got[0].clone();
    tampered.body = String::from_utf8(tampered.body).unwrap().replace("kartra", "redtail").into_bytes();
    let s = SigningSecret::parse(&secret).unwrap();
    let now = chrono::Utc::now().timestamp();
    let h = |n| tampered.header(n).to_owned();
    assert!(!shared::webhooks::verify(
        &s,
        &h("webhook-id"),
        &h("webhook-timestamp"),
        &h("webhook-signature"),
        &tampered.body,
        now,
        Duration::from_secs(300)
    ));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_rotated_while_events_flow_loses_none() {
    let app = TestApp::start().await;
    let rx = Receiver::start().await.unwrap();
    let (id, old) = app.webhook(&rx.url(), &["connection.created"]).await;
    let rotate_at = 10;
    let mut new = None;
    for i in 0..20 {
        if i == rotate_at {
            let r = app.post_json(&format!("/v1/webhooks/{id}/secrets"), &json!({})).await;
            assert_eq!(r.status(), StatusCode::CREATED);
            new = Some(r.json::<Value>().await.unwrap()["secret"].as_str().unwrap().to_owned());
        }
        assert_eq!(app.machine(&format!("k{i}")).await.status(), StatusCode::CREATED);
    }
    let new = new.unwrap();
    let got = received(&rx, 20, "all twenty events").await;
    assert_eq!(ids(&got).len(), 20, "none lost");
    // A receiver that switched to the new secret at any moment verifies everything sent since
    // the rotation; one still on the old secret verifies everything until the old one expires.
    let after: Vec<Received> = got
        .iter()
        .filter(|r| {
            let n: usize = r.json()["data"]["connection_id"].as_str().unwrap()[1..].parse().unwrap();
            n >= rotate_at
        })
        .cloned()
        .collect();
    assert_eq!(after.len(), 10);
    verify_all(&new, &after);
    verify_all(&old, &got);
    assert!(after.iter().all(|r| r.header("webhook-signature").split(' ').count() == 2), "both secrets sign");

    // The old secret removed: only the new one signs.
    let w: Value = app.api(Method::GET, &format!("/v1/webhooks/{id}")).await.json().await.unwrap();
    let old_id = w["secrets"][0]["id"].as_str().unwrap().to_owned();
    let r = app.api(Method::DELETE, &format!("/v1/webhooks/{id}/secrets/{old_id}")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    app.machine("k-last").await;
    let last = received(&rx, 21, "the event after the old secret went").await;
    let latest = last.iter().find(|r| r.json()["data"]["connection_id"] == "k-last").unwrap().clone();
    assert_eq!(latest.header("webhook-signature").split(' ').count(), 1);
    verify_all(&new, std::slice::from_ref(&latest));
    // The last live secret stays.
    let w: Value = app.api(Method::GET, &format!("/v1/webhooks/{id}")).await.json().await.unwrap();
    let only = w["secrets"][0]["id"].as_str().unwrap();
    let r = app.api(Method::DELETE, &format!("/v1/webhooks/{id}/secrets/{only}")).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "conflict");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_was_down_gets_every_event_when_it_is_back() {
    // Room for all five sends at once, so their retries fall due together.
    let app = TestApp::start_with(StackOptions { webhook_per_endpoint: 8, ..Default::default() }).await;
    let mut rx = Receiver::start().await.unwrap();
    let (id, secret) = app.webhook(&rx.url(), &[]).await;
    rx.stop().await;
    for i in 0..5 {
        assert_eq!(app.machine(&format!("d{i}")).await.status(), StatusCode::CREATED);
    }
    // Every first attempt fails (nothing listens); each is retried on schedule.
    let path = format!("/v1/webhooks/{id}/deliveries");
    eventually("five failed first attempts", Duration::from_secs(15), || async {
        let v: Value = app.api(Method::GET, &path).await.json().await.unwrap();
        let d = v["deliveries"].as_array().unwrap();
        let tried = |d: &Value| d["attempts"].as_i64() >= Some(1) && d["status"] == "pending";
        (d.len() == 5 && d.iter().all(tried)).then_some(())
    })
    .await;
    let v: Value = app.api(Method::GET, &path).await.json().await.unwrap();
    let first = &v["deliveries"][0];
    assert!(first["next_attempt_at"].is_string(), "{first}");
    assert!(first["attempt_log"][0]["error"].as_str().unwrap().contains("connect"), "{first}");
    rx.restart().await.unwrap();
    // The next tries are 5 s after a first failure, 30 s after a second.
    let got = eventually("all five events once the receiver is back", Duration::from_secs(45), || async {
        let got = rx.received();
        (ids(&got).len() == 5).then_some(got)
    })
    .await;
    verify_all(&secret, &got);
    let v: Value = app.api(Method::GET, &path).await.json().await.unwrap();
    assert!(v["deliveries"].as_array().unwrap().iter().all(|d| d["status"] == "succeeded"), "{v}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_does_not_hold_up_another() {
    let app = TestApp::start().await;
    let (dead, alive) = (Receiver::start().await.unwrap(), Receiver::start().await.unwrap());
    dead.set_delay(Duration::from_secs(60)); // never answers within the 10 s a send may take
    let (dead_id, _) = app.webhook(&dead.url(), &[]).await;
    app.webhook(&alive.url(), &[]).await;
    // More events than the sender takes at once (64): were the dead endpoint's sends let to
    // take every slot, the live endpoint's would wait for them to time out.
    let n = 80;
    for i in 0..n {
        let r = app.machine(&format!("s{i}")).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    }
    let got = received(&alive, n, "every event at the live endpoint").await;
    assert_eq!(ids(&got).len(), n);
    assert!(dead.most_at_once() <= 4, "the dead endpoint had {} sends open at once", dead.most_at_once());
    let v: Value =
        app.api(Method::GET, &format!("/v1/webhooks/{dead_id}/deliveries?limit=100")).await.json().await.unwrap();
    let d = v["deliveries"].as_array().unwrap();
    assert_eq!(d.len(), n);
    assert!(d.iter().all(|d| d["status"] == "pending"), "kept for later, none given up: {v}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_listed_with_its_attempts_and_sent_again_by_hand() {
    let app = TestApp::start().await;
    let rx = Receiver::start().await.unwrap();
    rx.set_status(500);
    let (id, _) = app.webhook(&rx.url(), &[]).await;
    app.kartra("r1", json!({})).await;
    let path = format!("/v1/webhooks/{id}/deliveries?status=pending");
    let d = eventually("a failed attempt", Duration::from_secs(15), || async {
        let v: Value = app.api(Method::GET, &path).await.json().await.unwrap();
        let d = v["deliveries"][0].clone();
        (d["attempts"] == 1).then_some(d)
    })
    .await;
    assert_eq!(d["last_status"], 500);
    assert_eq!(d["event_type"], "connection.created");
    assert_eq!(d["attempt_log"][0]["status"], 500);
    rx.set_status(200);
    let r = app.api(Method::POST, &format!("/v1/webhooks/{id}/deliveries/{}/retry", d["id"])).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    eventually("the delivery to succeed", Duration::from_secs(5), || async {
        let v: Value = app.api(Method::GET, &format!("/v1/webhooks/{id}/deliveries")).await.json().await.unwrap();
        (v["deliveries"][0]["status"] == "succeeded").then_some(())
    })
    .await;
    let r = app.api(Method::POST, &format!("/v1/webhooks/{id}/deliveries/999999/retry")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn endpoints_are_checked_and_managed_only_by_an_unrestricted_admin() {
    let app = TestApp::start().await;
    for (body, says) in [
        (json!({"url": "ftp://hooks.example/x"}), "https"),
        (json!({"url": "https://hooks.example/x", "events": ["connection.exploded"]}), "unknown event type"),
        (json!({"url": "https://hooks.example/x", "secret": "not-a-secret"}), "whsec_"),
        (json!({"url": "https://u:p@hooks.example/x"}), "password"),
    ] {
        let r = app.post_json("/v1/webhooks", &body).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "invalid_request");
        assert!(v["message"].as_str().unwrap().contains(says), "{v}");
    }
    let given = SigningSecret::generate().expose();
    let r = app.post_json("/v1/webhooks", &json!({"url": "https://hooks.example/x", "secret": given})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["secret"], given.as_str());
    let listed = app.api(Method::GET, "/v1/webhooks").await.text().await.unwrap();
    assert!(!listed.contains(&given[6..]), "a secret is shown once: {listed}");
    // A key limited to a provider cannot hear about every provider's connections.
    let r = app
        .post_json("/v1/api-keys", &json!({"name": "kartra admin", "scopes": ["admin"], "providers": ["kartra"]}))
        .await;
    let limited = r.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_owned();
    let r = app.http.get(app.gw("/v1/webhooks")).bearer_auth(&limited).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let id = created["id"].as_str().unwrap();
    assert_eq!(app.api(Method::DELETE, &format!("/v1/webhooks/{id}")).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.api(Method::GET, &format!("/v1/webhooks/{id}")).await.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn connections_carry_their_end_user_and_tags_and_are_found_by_them() {
    let app = TestApp::start().await;
    let who =
        |u: &str, org: &str| json!({"end_user": {"id": u, "organization_id": org}, "tags": {"plan": "pro", "team": u}});
    assert_eq!(app.kartra("a", who("u1", "acme")).await.status(), StatusCode::CREATED);
    assert_eq!(app.kartra("b", who("u2", "acme")).await.status(), StatusCode::CREATED);
    assert_eq!(app.kartra("c", json!({"tags": {"plan": "free"}})).await.status(), StatusCode::CREATED);
    let v = app.connection("kartra", "a").await;
    assert_eq!(v["end_user"], json!({"id": "u1", "organization_id": "acme"}));
    assert_eq!(v["tags"], json!({"plan": "pro", "team": "u1"}));
    let app_ref = &app;
    let list = |q: &'static str| async move {
        let app = app_ref;
        let r = app.api(Method::GET, &format!("/v1/connections?{q}")).await;
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        if status != StatusCode::OK {
            return vec![format!("{status} {}", v["error"].as_str().unwrap())];
        }
        v["connections"].as_array().unwrap().iter().map(|c| c["connection_id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(list("end_user_id=u2").await, ["b"]);
    assert_eq!(list("organization_id=acme").await, ["a", "b"]);
    assert_eq!(list("tag=plan:pro").await, ["a", "b"]);
    assert_eq!(list("tag=plan:pro&tag=team:u1").await, ["a"]);
    assert_eq!(list("tag=plan:free&organization_id=acme").await, Vec::<String>::new());
    assert_eq!(list("tag=nocolon").await, ["400 Bad Request invalid_request"]);
    assert_eq!(list("colour=red").await, ["400 Bad Request invalid_request"]);
    assert_eq!(list("end_user_id=a%00b").await, ["400 Bad Request invalid_request"]);
    // A bad end user is refused before anything is stored.
    let r = app.kartra("d", json!({"end_user": {"id": ""}})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app
        .post_json(
            "/v1/connect/sessions",
            &json!({"provider": "mock", "connection_id": "e",
        "tags": {"bad:key": "x"}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn every_audited_action_is_recorded_with_the_key_that_did_it() {
    let app = TestApp::start().await;
    let r = app
        .post_json(
            "/v1/api-keys",
            &json!({"name": "backend", "scopes": ["connect", "connections:read", "connections:write", "tokens:read", "admin"]}),
        )
        .await;
    let k: Value = r.json().await.unwrap();
    let (key, key_id) = (k["key"].as_str().unwrap().to_owned(), k["id"].as_str().unwrap().to_owned());
    let as_key = |m: Method, path: &str| app.http.request(m, app.gw(path)).bearer_auth(&key);
    // A flow completed in a browser is on the key that created the session.
    let r = as_key(Method::POST, "/v1/connect/sessions")
        .json(&json!({"provider": "mock", "connection_id": "a1", "return_url": RETURN_URL}))
        .send()
        .await
        .unwrap();
    let url = r.json::<Value>().await.unwrap()["connect_url"].as_str().unwrap().to_owned();
    let authorize = app.follow(&url).await;
    let callback = app.follow(authorize.as_str()).await;
    app.follow(callback.as_str()).await;
    let ok = |r: reqwest::Response| {
        assert!(r.status().is_success(), "{}", r.status());
    };
    ok(as_key(Method::GET, "/v1/connections/mock/a1/token").send().await.unwrap());
    ok(as_key(Method::POST, "/v1/connections/mock/a1/refresh").send().await.unwrap());
    let r = as_key(Method::POST, "/v1/connections")
        .json(&json!({"provider": "kartra", "connection_id": "k1",
                      "credentials": {"api_key": "demo-key", "api_password": "demo-password"}}))
        .send()
        .await
        .unwrap();
    ok(r);
    ok(as_key(Method::GET, "/v1/connections/kartra/k1/credentials").send().await.unwrap());
    let r = as_key(Method::POST, "/v1/api-keys")
        .json(&json!({"name": "temp", "scopes": ["connections:read"]}))
        .send()
        .await
        .unwrap();
    let temp = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    ok(as_key(Method::DELETE, &format!("/v1/api-keys/{temp}")).send().await.unwrap());
    ok(as_key(Method::DELETE, "/v1/connections/kartra/k1").send().await.unwrap());

    let r = as_key(Method::GET, &format!("/v1/audit?api_key_id={key_id}")).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    let entries = v["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries.iter().rev().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "connection.created",
            "token.read",
            "connection.refreshed",
            "connection.created",
            "credentials.read",
            "api_key.created",
            "api_key.revoked",
            "connection.deleted"
        ]
    );
    for e in entries {
        assert_eq!(e["api_key_id"], key_id.as_str());
        assert_eq!(e["api_key_name"], "backend");
        assert_eq!(e["address"], "127.0.0.1");
        assert!(!e.to_string().contains(&key), "never the key itself");
    }
    assert_eq!(entries[0]["provider"], "kartra");
    assert_eq!(entries[0]["connection_id"], "k1");
    // The bootstrap key's own action (creating `backend`) is there too, by its own name.
    let v: Value = app.api(Method::GET, "/v1/audit?action=api_key.created").await.json().await.unwrap();
    let names: Vec<&str> =
        v["entries"].as_array().unwrap().iter().map(|e| e["api_key_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["backend", "AUTHBRIDGE_API_KEYS"]);
    // Paging: one at a time, newest first, no entry twice.
    let first: Value = app.api(Method::GET, "/v1/audit?limit=1").await.json().await.unwrap();
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app.api(Method::GET, &format!("/v1/audit?limit=1&cursor={cursor}")).await.json().await.unwrap();
    assert!(second["entries"][0]["id"].as_i64() < first["entries"][0]["id"].as_i64());
    let r = app.api(Method::GET, "/v1/audit?since=yesterday").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    app.stop().await;
}
