//! The proxy: 401 → refresh → retry once, needs_reauth → 409, its own errors told apart from
//! the provider's, and paths that cannot leave the provider's API.

use crate::support::{query_param, TestApp};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_is_answered_by_one_refresh_and_one_retry() {
    let app = TestApp::start().await;
    let (landed, _) = app.connect("mock", "u401").await;
    assert_eq!(query_param(&landed, "status").as_deref(), Some("connected"));
    let before = app.token("mock", "u401").await;
    // The provider revokes the access token early (it still looks valid to us).
    app.mock_control(mock_provider::Control { expire_all_access_tokens: true, ..Default::default() });
    let r = app.proxy_get("mock", "u401", "deals").await;
    assert_eq!(r.status(), StatusCode::OK);
    let echo: Value = r.json().await.unwrap();
    assert_ne!(echo["token"], Value::String(before), "the retry used the refreshed token");
    let stats = app.mock_stats();
    assert_eq!(stats.refresh_grants, 1);
    assert_eq!(stats.api_unauthorized, 1, "exactly one call was refused, the retry succeeded");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_marks_the_connection_needs_reauth_and_the_proxy_answers_409() {
    let app = TestApp::start().await;
    app.connect("mock", "urevoked").await;
    app.mock_control(mock_provider::Control {
        revoke_all_refresh_tokens: true,
        expire_all_access_tokens: true,
        ..Default::default()
    });
    // The proxied call gets 401, the refresh gets invalid_grant.
    let r = app.proxy_get("mock", "urevoked", "deals").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.headers()["x-authbridge-error"], "needs_reauth");
    let conn = app.connection("mock", "urevoked").await;
    assert_eq!(conn["status"], "needs_reauth");
    assert!(conn["last_error"].as_str().unwrap().contains("invalid_grant"));
    // From now on the proxy answers 409 without calling the provider, and no refresh is retried.
    let calls = app.mock_stats().api_calls;
    let r = app.proxy_get("mock", "urevoked", "deals").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(app.mock_stats().api_calls, calls);
    let r = app.api(reqwest::Method::GET, "/v1/connections/mock/urevoked/token").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let rejected = app.mock_stats().refresh_rejected;
    assert_eq!(rejected, 1);
    // Re-authorizing brings it back.
    let (landed, _) = app.connect("mock", "urevoked").await;
    assert_eq!(query_param(&landed, "status").as_deref(), Some("connected"));
    assert_eq!(app.connection("mock", "urevoked").await["status"], "active");
    assert_eq!(app.proxy_get("mock", "urevoked", "deals").await.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_errors_carry_a_marker_and_the_providers_do_not() {
    let app = TestApp::start().await;
    app.connect("mock", "u1").await;
    app.connect("mockdown", "u1").await;

    let r = app.proxy_get("mock", "nobody", "x").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["x-authbridge-error"], "connection_not_found");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "connection_not_found");

    let r = app.proxy_get("nope", "u1", "x").await;
    assert_eq!(r.headers()["x-authbridge-error"], "unknown_provider");

    let r = app.proxy_get("mockdown", "u1", "x").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers()["x-authbridge-error"], "upstream_unreachable");

    let r = app.http.get(app.px("/proxy/mock/u1/x")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "no API key");

    app.mock_control(mock_provider::Control { api_fail_count: 1, api_fail_status: Some(503), ..Default::default() });
    let r = app.proxy_get("mock", "u1", "x").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "the provider's own error is relayed");
    assert!(r.headers().get("x-authbridge-error").is_none());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_bodies_and_headers_are_forwarded_but_hop_by_hop_and_internal_headers_are_not() {
    let app = TestApp::start().await;
    app.connect("mock", "u1").await;
    let r = app
        .proxy(reqwest::Method::POST, "mock/u1/contacts?x=1")
        .header("Content-Type", "application/json")
        .header("X-Custom", "kept")
        .header("X-Authbridge-Internal", "dropped")
        .header("Connection", "keep-alive, X-Drop-Me")
        .header("X-Drop-Me", "dropped")
        .body(r#"{"name":"Ada"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], r#"{"name":"Ada"}"#);
    let headers = &echo["headers"];
    assert_eq!(headers["x-custom"], "kept");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.get("x-authbridge-internal").is_none());
    assert!(headers.get("x-drop-me").is_none());
    assert!(headers["authorization"].as_str().unwrap().starts_with("Bearer at_"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_cannot_leave_the_providers_api() {
    let app = TestApp::start().await;
    app.connect("mock", "u1").await;
    // Sent over a raw socket: HTTP clients would normalise these paths before sending them.
    for bad in [
        "%2e%2e/oauth/token",
        "a/%2E%2E/%2e%2e/mock/stats",
        "../../mock/stats",
        "%5c%5cevil",
        "x%0d%0aHost:%20evil",
        "/evil.example/x",
    ] {
        let (status, body) = raw_get(app.stack.proxy.addr, &format!("/proxy/mock/u1/{bad}"), &app.stack.api_key).await;
        assert!(status.contains("400"), "{bad}: {status}");
        assert!(body.contains("invalid_request"), "{bad}: {body}");
    }
    assert_eq!(app.mock_stats().api_calls, 0, "nothing reached the provider");
    app.stop().await;
}

/// A GET over a plain socket, so the path goes out exactly as written.
async fn raw_get(addr: std::net::SocketAddr, path: &str, key: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.lines().next().unwrap_or_default().to_owned();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gets_a_504_from_the_proxy_not_a_hang() {
    let app = TestApp::start().await;
    app.connect("mock", "u1").await;
    // Slower than the proxy's upstream timeout (5 s in the test stack).
    app.mock_control(mock_provider::Control { api_delay_ms: 6000, ..Default::default() });
    let r = app.proxy_get("mock", "u1", "slow").await;
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.headers()["x-authbridge-error"], "upstream_timeout");
    app.mock_control(mock_provider::Control::default());
    assert_eq!(app.proxy_get("mock", "u1", "fast").await.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_internal_headers_are_stripped_from_responses_too() {
    let app = TestApp::start().await;
    app.connect("mock", "u1").await;
    let r = app
        .proxy(reqwest::Method::GET, "mock/u1/x")
        .header("x-mock-respond-header", "X-Kept: yes")
        .header("x-mock-respond-header", "X-Authbridge-Error: forged")
        .header("x-mock-respond-header", "Keep-Alive: timeout=5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers();
    assert_eq!(h["x-kept"], "yes");
    assert!(h.get("x-authbridge-error").is_none(), "a provider cannot forge the proxy's own error marker");
    assert!(h.get("keep-alive").is_none());
    app.stop().await;
}

async fn proxied_token(app: &TestApp, id: &str) -> Option<String> {
    let r = app.proxy_get("mock", id, "x").await;
    if r.status() != StatusCode::OK {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    v["token"].as_str().map(str::to_owned)
}

async fn cache_hits(app: &TestApp) -> u64 {
    let text = app.http.get(app.px("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("authbridge_token_cache_hits_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_serves_tokens_from_memory_and_forgets_them_the_moment_they_change() {
    use crate::support::eventually;
    use std::time::Duration;
    let app = TestApp::start().await;
    app.connect("mock", "cached").await;
    let first = proxied_token(&app, "cached").await.unwrap();
    eventually("a proxied call served from the cache", Duration::from_secs(5), || async {
        proxied_token(&app, "cached").await;
        (cache_hits(&app).await > 0).then_some(())
    })
    .await;
    let text = app.http.get(app.px("/metrics")).send().await.unwrap().text().await.unwrap();
    let ratio: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("authbridge_token_cache_hit_ratio "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0);
    assert!(ratio > 0.0 && ratio <= 1.0, "a hit was counted, so the ratio is in (0, 1]: {ratio}");
    // A refresh by another process (the gateway) reaches the proxy's cache through NOTIFY,
    // long before the cache's 30 s TTL.
    let r = app.api(reqwest::Method::POST, "/v1/connections/mock/cached/refresh").await;
    assert_eq!(r.status(), StatusCode::OK);
    let second = app.token("mock", "cached").await;
    assert_ne!(first, second);
    eventually("the proxy to use the refreshed token", Duration::from_secs(2), || async {
        (proxied_token(&app, "cached").await.as_deref() == Some(second.as_str())).then_some(())
    })
    .await;
    // A deletion too.
    app.api(reqwest::Method::DELETE, "/v1/connections/mock/cached").await;
    eventually("the proxy to forget the deleted connection", Duration::from_secs(2), || async {
        (app.proxy_get("mock", "cached", "x").await.status() == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_keeps_the_providers_content_length_and_sends_no_body() {
    let app = TestApp::start().await;
    app.connect("mock", "uhead").await;
    let get = app.proxy_get("mock", "uhead", "contacts/7").await;
    assert_eq!(get.status(), StatusCode::OK);
    let get_len = get.bytes().await.unwrap().len();
    let r = app.proxy(reqwest::Method::HEAD, "mock/uhead/contacts/7").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let declared: usize = r.headers()["content-length"].to_str().unwrap().parse().unwrap();
    // The mock echoes the method, so the lengths differ by the method name at most.
    assert!(declared > 0 && declared.abs_diff(get_len) <= 1, "HEAD declared {declared}, GET sent {get_len}");
    assert!(r.bytes().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_chunked_bodies_stream_to_the_provider_intact() {
    let app = TestApp::start().await; // holds bodies up to 64 KiB for a retry; larger ones stream
    app.connect("mock", "ubig").await;
    let big: String = (0..100 * 1024).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let r = app.proxy(reqwest::Method::POST, "mock/ubig/uploads").body(big.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["body"].as_str().unwrap(), big);
    assert_eq!(echo["headers"]["content-length"], (100 * 1024).to_string().as_str(), "the declared length is kept");
    // A body of unknown length (chunked) streams too.
    let chunks: Vec<Result<&'static str, std::io::Error>> = vec![Ok("first,"), Ok("second,"), Ok("third")];
    let r = app
        .proxy(reqwest::Method::POST, "mock/ubig/uploads")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["body"], "first,second,third");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_is_not_replayed_after_a_401_but_the_token_is_refreshed_for_the_retry() {
    let app = TestApp::start().await;
    app.connect("mock", "ustream401").await;
    app.mock_control(mock_provider::Control { expire_all_access_tokens: true, ..Default::default() });
    let big = "x".repeat(100 * 1024);
    let post = || app.proxy(reqwest::Method::POST, "mock/ustream401/uploads").body(big.clone());
    let r = post().send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "the provider's answer, as it came");
    assert_eq!(r.headers()["x-authbridge-retry"], "token-refreshed");
    assert_eq!(app.mock_stats().refresh_grants, 1);
    assert_eq!(app.mock_stats().api_unauthorized, 1, "the streamed body was sent once");
    let r = post().send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the caller's retry carries the refreshed token");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_may_speak_http2_and_the_proxys_other_routes_answer_in_json() {
    let app = TestApp::start().await;
    app.connect("mock", "h2").await;
    // HTTP/2 by prior knowledge (plain text), as gRPC-style internal clients connect.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let calls = (0..8).map(|i| {
        h2.post(app.px(&format!("/proxy/mock/h2/echo/{i}")))
            .header("Authorization", format!("Bearer {}", app.stack.api_key))
            .body(format!("call {i}"))
            .send()
    });
    for (i, r) in futures_util::future::join_all(calls).await.into_iter().enumerate() {
        let r = r.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), StatusCode::OK);
        let echo: Value = r.json().await.unwrap();
        assert_eq!(echo["body"], format!("call {i}"));
        assert!(echo["headers"]["authorization"].as_str().unwrap().starts_with("Bearer at_"));
    }
    // Health, readiness and metrics answer GET (and HEAD); other methods get a 405 naming them.
    let r = app.http.post(app.px("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    assert_eq!(r.headers()["x-authbridge-error"], "method_not_allowed");
    assert_eq!(app.http.head(app.px("/readyz")).send().await.unwrap().status(), StatusCode::OK);
    let r = app.http.get(app.px("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "not_found");
    // Every request is counted by route pattern, never by path as sent.
    let text = app.http.get(app.px("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"route="/proxy/{provider}/{connection_id}/{path}",status="200""#), "{text}");
    assert!(text.contains(r#"route="<unmatched>",status="404""#));
    assert!(!text.contains("/proxy/mock/h2"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_proxy_lets_calls_in_flight_finish_then_refuses_connections() {
    let app = TestApp::start().await;
    app.connect("mock", "drain").await;
    app.mock_control(mock_provider::Control { api_delay_ms: 1500, ..Default::default() });
    let in_flight = tokio::spawn(app.proxy(reqwest::Method::GET, "mock/drain/slow").send());
    tokio::time::sleep(std::time::Duration::from_millis(400)).await; // it has reached the provider
    let addr = app.stack.proxy.addr;
    let stopped = tokio::spawn(app.stop());
    let r = in_flight.await.unwrap().expect("the call in flight is answered, not cut");
    assert_eq!(r.status(), StatusCode::OK);
    stopped.await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "a stopped proxy accepts no connections");
}
