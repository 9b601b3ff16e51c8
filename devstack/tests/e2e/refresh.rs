//! The refresher and the single-flight refresh: one grant per due token whoever races for
//! it, retries through provider trouble, and a definitive "no" ends in needs_reauth once.

use crate::support::{eventually, TestApp};
use devstack::StackOptions;
use reqwest::StatusCode;
use shared::messaging::ExpiryEvent;
use std::time::Duration;

async fn make_due_now(app: &TestApp, provider: &str, id: &str) {
    let (client, conn) = tokio_postgres::connect(&app.stack.database_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .execute(
            "UPDATE connections SET refresh_due_at = now(), expires_at = now() WHERE provider = $1 AND connection_id = $2",
            &[&provider, &id],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_refreshes_from_proxy_gateway_and_two_refreshers_reach_the_provider_once() {
    let app = TestApp::start_with(StackOptions { refreshers: 2, ..Default::default() }).await;
    app.connect("mock", "racer").await;
    let version = app.stack.store().get_connection("mock", "racer").await.unwrap().unwrap().token_version;
    // The token is now due and expired everywhere: at the provider (the API answers 401) and in
    // our records (every path wants to refresh it).
    app.mock_control(mock_provider::Control {
        expire_all_access_tokens: true,
        token_delay_ms: 300, // a slow provider widens the race window
        ..Default::default()
    });
    make_due_now(&app, "mock", "racer").await;
    let broker = app.stack.broker();
    let event = ExpiryEvent {
        provider: "mock".into(),
        connection_id: "racer".into(),
        token_version: version,
        due_at: chrono::Utc::now(),
        attempt: 0,
        traceparent: None,
    };
    let mut tasks = Vec::new();
    for _ in 0..4 {
        broker.publish_expiry(&event).await.unwrap();
    }
    for i in 0..8 {
        let http = app.http.clone();
        let url = app.px(&format!("/proxy/mock/racer/item/{i}"));
        let key = format!("Bearer {}", app.stack.api_key);
        tasks.push(tokio::spawn(
            async move { http.get(url).header("Authorization", key).send().await.unwrap().status() },
        ));
    }
    for _ in 0..4 {
        let http = app.http.clone();
        let url = app.gw("/v1/connections/mock/racer/token");
        let key = format!("Bearer {}", app.stack.api_key);
        tasks.push(tokio::spawn(
            async move { http.get(url).header("Authorization", key).send().await.unwrap().status() },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    // Let the queued events drain too.
    let queue = broker.topology.work_queue();
    eventually("the work queue to drain", Duration::from_secs(15), || async {
        (broker.queue_depth(&queue).await.unwrap() == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = app.mock_stats();
    assert_eq!(stats.refresh_grants, 1, "exactly one refresh grant reached the provider");
    assert_eq!(stats.refresh_rejected, 0, "no refresh token was used twice");
    let conn = app.connection("mock", "racer").await;
    assert_eq!(conn["status"], "active");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_outages_are_retried_with_backoff_and_the_connection_stays_active() {
    let app = TestApp::start_with(StackOptions { token_ttl: Duration::from_secs(2), ..Default::default() }).await;
    app.connect("mock", "patient").await;
    app.mock_control(mock_provider::Control {
        token_fail_count: 3,
        token_fail_status: Some(500),
        ..Default::default()
    });
    let conn = eventually("a failed attempt to be recorded", Duration::from_secs(15), || async {
        let c = app.connection("mock", "patient").await;
        (c["error_count"].as_i64().unwrap() > 0).then_some(c)
    })
    .await;
    assert_eq!(conn["status"], "active", "a 500 is not a reason to give up");
    assert!(conn["last_error"].as_str().unwrap().contains("HTTP 500"));
    eventually("the provider to recover and the token to be refreshed", Duration::from_secs(30), || async {
        (app.mock_stats().refresh_grants >= 1).then_some(())
    })
    .await;
    let conn = eventually("the error to clear", Duration::from_secs(5), || async {
        let c = app.connection("mock", "patient").await;
        (c["error_count"] == 0).then_some(c)
    })
    .await;
    assert_eq!(conn["status"], "active");
    assert!(conn["last_error"].is_null());
    let stats = app.mock_stats();
    assert!(stats.injected_failures >= 3);
    assert_eq!(stats.refresh_rejected, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_refresh_token_ends_in_needs_reauth_once_and_is_not_retried() {
    let app = TestApp::start_with(StackOptions { token_ttl: Duration::from_secs(2), ..Default::default() }).await;
    app.connect("mock", "gone").await;
    app.mock_control(mock_provider::Control { revoke_all_refresh_tokens: true, ..Default::default() });
    eventually("the connection to need re-authorization", Duration::from_secs(15), || async {
        (app.connection("mock", "gone").await["status"] == "needs_reauth").then_some(())
    })
    .await;
    let rejected = app.mock_stats().refresh_rejected;
    assert_eq!(rejected, 1);
    // Several token lifetimes later, nobody has tried again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(app.mock_stats().refresh_rejected, 1);
    let conn = app.connection("mock", "gone").await;
    assert!(conn["refresh_due_at"].is_null());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_duplicate_and_early_events_do_nothing() {
    let app = TestApp::start().await;
    app.connect("mock", "calm").await;
    let store = app.stack.store();
    let conn = store.get_connection("mock", "calm").await.unwrap().unwrap();
    let broker = app.stack.broker();
    let base = ExpiryEvent {
        provider: "mock".into(),
        connection_id: "calm".into(),
        token_version: conn.token_version,
        due_at: chrono::Utc::now(),
        attempt: 0,
        traceparent: None,
    };
    // A stale version, a current version that is not due (the token is fresh for an hour),
    // duplicates of both, and an unknown connection.
    let stale = ExpiryEvent { token_version: conn.token_version - 1, ..base.clone() };
    let unknown = ExpiryEvent { connection_id: "nobody".into(), ..base.clone() };
    for ev in [&stale, &stale, &base, &base, &unknown] {
        broker.publish_expiry(ev).await.unwrap();
    }
    let queue = broker.topology.work_queue();
    eventually("the work queue to drain", Duration::from_secs(15), || async {
        (broker.queue_depth(&queue).await.unwrap() == 0).then_some(())
    })
    .await;
    assert_eq!(broker.queue_depth(&broker.topology.dead_queue()).await.unwrap(), 0);
    assert_eq!(app.mock_stats().refresh_grants, 0);
    let after = store.get_connection("mock", "calm").await.unwrap().unwrap();
    assert_eq!(after.token_version, conn.token_version);

    // An unreadable message is dead-lettered, not redelivered forever.
    let dead = broker.topology.dead_queue();
    publish_garbage(&app).await;
    eventually("the garbage to reach the dead-letter queue", Duration::from_secs(15), || async {
        (broker.queue_depth(&dead).await.unwrap() == 1).then_some(())
    })
    .await;
    app.stop().await;
}

async fn publish_garbage(app: &TestApp) {
    let conn = shared::messaging::connect(app.stack.common.amqp_url.expose(), "test").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let topo = shared::messaging::Topology { prefix: app.stack.common.queue_prefix.clone() };
    ch.basic_publish(
        topo.work_exchange().as_str().into(),
        "due".into(),
        Default::default(),
        b"{not an event",
        lapin::BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_without_a_new_refresh_token_keeps_the_old_one() {
    let app = TestApp::start().await;
    app.connect("mock", "keeper").await;
    app.mock_control(mock_provider::Control { omit_refresh_token_on_refresh: true, ..Default::default() });
    for _ in 0..3 {
        let r = app.api(reqwest::Method::POST, "/v1/connections/mock/keeper/refresh").await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let stats = app.mock_stats();
    assert_eq!(stats.refresh_grants, 3);
    assert_eq!(stats.refresh_rejected, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_refresher_finishes_the_refresh_in_flight_and_acknowledges_it() {
    let mut app = TestApp::start().await;
    app.connect("mock", "drain").await;
    let version = app.stack.store().get_connection("mock", "drain").await.unwrap().unwrap().token_version;
    app.mock_control(mock_provider::Control { token_delay_ms: 1500, ..Default::default() });
    make_due_now(&app, "mock", "drain").await;
    let requests = app.mock_stats().token_requests;
    let broker = app.stack.broker();
    broker
        .publish_expiry(&ExpiryEvent {
            provider: "mock".into(),
            connection_id: "drain".into(),
            token_version: version,
            due_at: chrono::Utc::now(),
            attempt: 0,
            traceparent: None,
        })
        .await
        .unwrap();
    eventually("the refresh to be in flight", Duration::from_secs(10), || async {
        (app.mock_stats().token_requests > requests).then_some(())
    })
    .await;
    // The same path SIGTERM takes.
    app.stack.refreshers.pop().unwrap().stop().await;
    let after = app.stack.store().get_connection("mock", "drain").await.unwrap().unwrap();
    assert_eq!(after.token_version, version + 1, "the in-flight refresh was committed before exit");
    assert_eq!(app.mock_stats().refresh_grants, 1);
    // It was acknowledged: a new replica finds nothing to redo.
    app.stack.add_refresher(0).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.mock_stats().refresh_grants, 1);
    assert_eq!(app.mock_stats().refresh_rejected, 0);
    app.stop().await;
}
