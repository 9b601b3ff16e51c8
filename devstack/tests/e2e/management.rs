//! The management API: providers, connections (listing, status, tokens, forced refresh,
//! deletion with revocation), health and readiness.

use crate::support::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_listed_with_their_configuration_but_no_secrets() {
    let app = TestApp::start().await;
    let r = app.api(Method::GET, "/v1/providers").await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(!text.contains(devstack::MOCK_CLIENT_SECRET));
    let v: Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = v["providers"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    for id in ["kartra", "ontraport", "redtail", "whatconverts", "interact", "mock"] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let kartra = v["providers"].as_array().unwrap().iter().find(|p| p["id"] == "kartra").unwrap();
    // The stack gives KARTRA_APP_ID; the fields are what a form asks the end user for.
    assert_eq!(kartra["configured"], true);
    assert_eq!(kartra["auth"], "api_key");
    assert_eq!(kartra["fields"][0]["name"], "api_key");
    assert_eq!(kartra["fields"][1]["secret"], true);
    assert!(!text.contains(devstack::MOCK_KARTRA_APP_ID), "the operator's values are never listed");
    assert_eq!(kartra["authorize_url"], "https://app.kartra.com/oauth/auth", "the guide's flow, one setting away");
    let interact = v["providers"].as_array().unwrap().iter().find(|p| p["id"] == "interact").unwrap();
    assert_eq!((interact["auth"].as_str(), interact["configured"].as_bool()), (Some("oauth2"), Some(false)));
    assert_eq!(interact["missing_configuration"], serde_json::json!(["INTERACT_CLIENT_ID", "INTERACT_CLIENT_SECRET"]));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_listed_paged_inspected_refreshed_and_deleted() {
    let app = TestApp::start().await;
    for id in ["a", "b", "c"] {
        app.connect("mock", id).await;
    }
    let r = app.api(Method::GET, "/v1/connections?limit=2").await;
    let page1: Value = r.json().await.unwrap();
    assert_eq!(page1["connections"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2: Value =
        app.api(Method::GET, &format!("/v1/connections?limit=2&cursor={cursor}")).await.json().await.unwrap();
    assert_eq!(page2["connections"].as_array().unwrap().len(), 1);
    assert_eq!(page2["connections"][0]["connection_id"], "c");
    assert!(page2["next_cursor"].is_null());
    let filtered: Value = app.api(Method::GET, "/v1/connections?status=needs_reauth").await.json().await.unwrap();
    assert_eq!(filtered["connections"].as_array().unwrap().len(), 0);
    assert_eq!(app.api(Method::GET, "/v1/connections?status=weird").await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.api(Method::GET, "/v1/connections?limit=0").await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.api(Method::GET, "/v1/connections?cursor=%%%").await.status(), StatusCode::BAD_REQUEST);
    // Ids no connection can have (a NUL byte: the database refuses it in text) are the caller's
    // mistake, not a server error (found by schemathesis).
    assert_eq!(app.api(Method::GET, "/v1/connections?provider=%01%00x").await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.api(Method::GET, "/v1/connections/mock/a%00b").await.status(), StatusCode::NOT_FOUND);

    // A forced refresh changes the token and shows up in the status.
    let before = app.token("mock", "a").await;
    let r = app.api(Method::POST, "/v1/connections/mock/a/refresh").await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "active");
    let after = app.token("mock", "a").await;
    assert_ne!(before, after);

    // The token endpoint is never cached.
    let r = app.api(Method::GET, "/v1/connections/mock/a/token").await;
    assert_eq!(r.headers()["cache-control"], "no-store");

    // Deleting revokes at the provider and forgets the connection.
    let r = app.api(Method::DELETE, "/v1/connections/mock/a").await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.mock_stats().revocations, 1);
    let r = app.api(Method::GET, "/v1/connections/mock/a").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "connection_not_found");
    assert_eq!(app.api(Method::DELETE, "/v1/connections/mock/a").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.proxy_get("mock", "a", "x").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.api(Method::POST, "/v1/connections/mock/a/refresh").await.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_reports_health_and_readiness() {
    let app = TestApp::start().await;
    for base in [app.stack.gateway.url(), app.stack.proxy.url(), app.stack.refreshers[0].url()] {
        let r = app.http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{base}");
        // The refresher is ready once its consumer is attached, a moment after start.
        let v: Value = crate::support::eventually("readiness", std::time::Duration::from_secs(10), || async {
            let r = app.http.get(format!("{base}/readyz")).send().await.unwrap();
            if r.status() == StatusCode::OK {
                r.json().await.ok()
            } else {
                None
            }
        })
        .await;
        assert_eq!(v["checks"]["postgres"], "ok");
        assert_eq!(v["checks"]["rabbitmq"], "ok");
    }
    let r = app.http.get(app.gw("/no/such/route")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exposes_prometheus_metrics() {
    let app = TestApp::start_with(devstack::StackOptions {
        token_ttl: std::time::Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    app.connect("mock", "m1").await;
    assert_eq!(app.proxy_get("mock", "m1", "x").await.status(), StatusCode::OK);
    let text = |url: String| {
        let http = app.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let gw = text(app.gw("/metrics")).await;
    assert!(
        gw.contains(r#"authbridge_http_requests_total{method="POST",route="/v1/connect/sessions",status="201"} 1"#),
        "{gw}"
    );
    assert!(
        gw.contains(
            r#"authbridge_http_request_duration_seconds_count{method="GET",route="/oauth/callback",status="302"} 1"#
        ),
        "{gw}"
    );
    assert!(gw.contains(r#"authbridge_connections{status="active"} 1"#), "{gw}");
    let px = text(app.px("/metrics")).await;
    assert!(px.contains(r#"authbridge_proxied_calls_total{provider="mock",upstream_status="200"} 1"#), "{px}");
    assert!(
        px.contains(
            r#"authbridge_http_requests_total{method="GET",route="/proxy/{provider}/{connection_id}/{path}",status="200"} 1"#
        ),
        "{px}"
    );
    assert!(px.contains("# TYPE authbridge_token_cache_misses_total counter\n"), "{px}");
    assert!(
        px.contains("# TYPE authbridge_token_cache_hits_total counter\nauthbridge_token_cache_hits_total 0\n"),
        "{px}"
    );
    assert!(px.contains("authbridge_token_cache_hit_ratio 0\n"), "one call, not served from memory: {px}");
    // After a scheduled refresh, the refresher reports its lateness and outcome.
    let rf = app.stack.refreshers[0].url();
    let refresher = crate::support::eventually("a scheduled refresh", std::time::Duration::from_secs(15), || {
        let t = text(format!("{rf}/metrics"));
        async move {
            let t = t.await;
            t.contains(r#"authbridge_refresh_events_total{outcome="refreshed"}"#).then_some(t)
        }
    })
    .await;
    assert!(refresher.contains("authbridge_refresh_lateness_seconds_count"), "{refresher}");
    assert!(refresher.contains("authbridge_work_queue_depth"), "{refresher}");
    assert!(refresher.contains("authbridge_work_queue_consumers 1"), "one refresher consumes: {refresher}");
    assert!(refresher.contains("authbridge_delayed_events"), "{refresher}");
    app.stop().await;
}

#[tokio::test]
async fn the_api_reference_and_its_documents_are_served_without_a_cdn() {
    let app = TestApp::start().await;
    let get = |url: String| {
        let http = app.http.clone();
        async move { http.get(url).send().await.unwrap() }
    };
    let gateway: serde_json::Value = get(app.gw("/openapi.json")).await.json().await.unwrap();
    let proxy_here: serde_json::Value = get(app.gw("/openapi/proxy.json")).await.json().await.unwrap();
    let proxy: serde_json::Value = get(app.px("/openapi.json")).await.json().await.unwrap();
    assert_eq!(proxy, proxy_here, "the proxy serves the document the reference shows");
    assert_eq!(gateway["info"]["title"], "authbridge gateway");
    let ids: Vec<&str> = gateway["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values().filter_map(|op| op["operationId"].as_str()))
        .collect();
    for id in ["createConnectSession", "listConnections", "createWebhook", "listAuditEntries"] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let page = get(app.gw("/docs")).await;
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && !csp.contains("http"), "only our own files: {csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<redoc spec-url="openapi.json""#), "{html}");
    assert!(html.contains(r#"src="docs/assets/redoc.standalone.js""#), "{html}");
    let proxy_page = get(app.gw("/docs/proxy")).await.text().await.unwrap();
    assert!(proxy_page.contains(r#"spec-url="../openapi/proxy.json""#));
    let js = get(app.gw("/docs/assets/redoc.standalone.js")).await;
    assert_eq!(js.status(), reqwest::StatusCode::OK);
    assert!(js.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert!(js.bytes().await.unwrap().len() > 500_000);
    app.stop().await;
}

/// Every answer of the management API read into the typed client's types: a field renamed or
/// dropped on the server fails here (the client is what the `authbridge` command uses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_client_reads_every_management_answer() {
    use authbridge_client::{Client, ConnectionQuery, EndUser, NewApiKey, NewSession, NewWebhook};
    let app = TestApp::start().await;
    let ab = Client::new(&app.stack.gateway.url(), &app.stack.api_key).unwrap();
    let session = ab
        .create_session(&NewSession {
            provider: "mock".into(),
            connection_id: "typed".into(),
            return_url: Some(crate::support::RETURN_URL.into()),
            end_user: Some(EndUser { id: "u-1".into(), organization_id: Some("org".into()), ..Default::default() }),
            tags: Some([("plan".to_string(), "pro".to_string())].into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let authorize = app.follow(&session.connect_url).await;
    let callback = app.follow(authorize.as_str()).await;
    app.follow(callback.as_str()).await;
    let c = ab.get_connection("mock", "typed").await.unwrap();
    assert_eq!((c.status.as_str(), c.end_user.as_ref().unwrap().id.as_str()), ("active", "u-1"));
    let q = ConnectionQuery { organization_id: Some("org".into()), ..Default::default() };
    assert_eq!(ab.all_connections(&q).await.unwrap().len(), 1);
    assert!(!ab.token("mock", "typed").await.unwrap().access_token.is_empty());
    assert_eq!(ab.refresh_connection("mock", "typed").await.unwrap().status, "active");
    assert!(ab.list_providers().await.unwrap().iter().any(|p| p.id == "mock" && p.configured));
    let key = ab
        .create_api_key(&NewApiKey { name: "typed".into(), scopes: vec!["proxy".into()], providers: vec![] })
        .await
        .unwrap();
    assert!(key.key.is_some());
    assert!(ab.list_api_keys().await.unwrap().iter().any(|k| k.id == key.id && k.key.is_none()));
    ab.revoke_api_key(&key.id).await.unwrap();
    let w = ab.create_webhook(&NewWebhook { url: "http://127.0.0.1:9/in".into(), ..Default::default() }).await.unwrap();
    assert!(w.secret.as_deref().unwrap().starts_with("whsec_"));
    let added = ab.add_webhook_secret(&w.id, None, Some(0)).await.unwrap();
    assert_eq!(ab.get_webhook(&w.id).await.unwrap().secrets.len(), 1, "the old one stopped at once");
    assert!(added.secret.starts_with("whsec_"));
    ab.delete_connection("mock", "typed").await.unwrap();
    let page = ab.list_deliveries(&w.id, None, None, None).await.unwrap();
    assert_eq!(page.deliveries[0].event_type, "connection.deleted");
    let audit = ab.audit(&Default::default()).await.unwrap();
    assert!(audit.entries.iter().any(|e| e.action == "token.read"));
    let err = ab.get_connection("mock", "typed").await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(404), Some("connection_not_found")));
    ab.delete_webhook(&w.id).await.unwrap();
    app.stop().await;
}
