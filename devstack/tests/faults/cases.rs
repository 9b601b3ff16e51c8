//! The fault cases. Figures go to `target/reliability-report.md` (see docs/reliability.md).

use crate::harness::*;
use crate::support::{eventually, TestApp};
use devstack::StackOptions;
use shared::messaging::ExpiryEvent;
use std::time::{Duration, Instant};

fn opts(ttl_secs: u64, refreshers: usize) -> StackOptions {
    StackOptions {
        token_ttl: Duration::from_secs(ttl_secs),
        refreshers,
        sweep_interval: Duration::from_secs(1),
        sweep_grace: Duration::from_secs(2),
        http_workers: 2,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_restart_while_connecting_and_refreshing_loses_nothing() {
    let app = TestApp::start_with(opts(12, 2)).await;
    let before = ids("rmq-before", 30);
    connect_all(&app, &before, 10).await;
    let load = Load::start(&app, before.clone(), 4, Duration::from_millis(20));

    let started = Instant::now();
    let down = RabbitDown::stop();
    let refresher_ready = format!("{}/readyz", app.stack.refreshers[0].url());
    wait_ready(&refresher_ready, 503, Duration::from_secs(15)).await;
    // Connections made while RabbitMQ is down: their events wait in the outbox.
    let during = ids("rmq-during", 20);
    connect_all(&app, &during, 5).await;
    let pending = app.stack.store().outbox_len().await.unwrap();
    assert!(pending > 0, "events should be waiting in the outbox");
    // 30 s down: past the first refreshes' due time, and long enough that any proxied call
    // depending on the broker would show.
    while started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let outage = started.elapsed();
    down.start();
    let recovery = wait_ready(&refresher_ready, 200, Duration::from_secs(60)).await;

    // Two token lifetimes later, every connection has been refreshed since the outage.
    let all: Vec<String> = before.iter().chain(during.iter()).cloned().collect();
    let waited = wait_refreshed(&app, &all, 3, Duration::from_secs(60)).await;
    let statuses = load.stop().await;
    assert_eq!(statuses.keys().copied().collect::<Vec<_>>(), vec![200], "no proxied call needs RabbitMQ: {statuses:?}");
    assert_nothing_lost(&app, &all, 3).await;
    let stats = app.mock_stats();
    assert_eq!(stats.refreshes_after_expiry, 0, "a token expired before it was refreshed");
    assert_eq!(stats.api_unauthorized, 0, "a proxied call went out with an expired token");
    report(
        "RabbitMQ stopped and restarted (rabbitmqctl stop_app / start_app)",
        &[
            ("connections", format!("{} ({} made during the outage)", all.len(), during.len())),
            ("token lifetime", "12 s, 2 refresher replicas".into()),
            ("outage", format!("{:.1} s", outage.as_secs_f64())),
            ("events waiting in the outbox during the outage", pending.to_string()),
            ("time for the refresher to be ready again after start_app", format!("{:.1} s", recovery.as_secs_f64())),
            (
                "time until every connection was refreshed twice",
                format!("{:.1} s after recovery", waited.as_secs_f64()),
            ),
            ("refresh grants", stats.refresh_grants.to_string()),
            (
                "refreshes after expiry / refresh tokens refused",
                format!("{} / {}", stats.refreshes_after_expiry, stats.refresh_rejected),
            ),
            ("proxied calls by status", fmt_statuses(&statuses)),
        ],
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_while_refresher_and_proxy_are_busy_loses_nothing() {
    let app = TestApp::start_with(opts(8, 2)).await;
    let conns = ids("pg", 30);
    connect_all(&app, &conns, 10).await;
    let load = Load::start(&app, conns.clone(), 4, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    restart_postgres();
    let restart = started.elapsed();
    let gateway_ready = format!("{}/readyz", app.stack.gateway.url());
    let recovery = wait_ready(&gateway_ready, 200, Duration::from_secs(60)).await;
    let waited = wait_refreshed(&app, &conns, 4, Duration::from_secs(60)).await;
    let statuses = load.stop().await;
    assert_nothing_lost(&app, &conns, 4).await;
    let stats = app.mock_stats();
    assert_eq!(stats.api_unauthorized, 0, "a proxied call went out with an expired token");
    report(
        "PostgreSQL restarted (pg_ctlcluster restart) under refresh and proxy load",
        &[
            ("connections", conns.len().to_string()),
            ("token lifetime", "8 s, 2 refresher replicas".into()),
            ("restart took", format!("{:.1} s", restart.as_secs_f64())),
            ("time until the gateway was ready again", format!("{:.1} s", recovery.as_secs_f64())),
            ("time until every connection was refreshed three times", format!("{:.1} s", waited.as_secs_f64())),
            ("refresh grants", stats.refresh_grants.to_string()),
            (
                "refreshes after expiry / refresh tokens refused",
                format!("{} / {}", stats.refreshes_after_expiry, stats.refresh_rejected),
            ),
            ("proxied calls by status (503 = database unavailable during the restart)", fmt_statuses(&statuses)),
        ],
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresher_killed_mid_refresh_is_replaced_and_the_connections_survive() {
    let app = TestApp::start_with(opts(3600, 1)).await;
    let mut app = app;
    let conns = ids("kill", 5);
    connect_all(&app, &conns, 5).await;
    // A provider with a short reuse window for rotated refresh tokens (as Auth0 and Okta
    // offer), and slow enough that the kill lands while every refresh is in flight.
    app.mock_control(mock_provider::Control { token_delay_ms: 2000, rotation_grace_seconds: 30, ..Default::default() });
    let (client, conn) = tokio_postgres::connect(&app.stack.database_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.execute("UPDATE connections SET refresh_due_at = now()", &[]).await.unwrap();
    let broker = app.stack.broker();
    let store = app.stack.store();
    let requests_before = app.mock_stats().token_requests;
    for id in &conns {
        let c = store.get_connection("mock", id).await.unwrap().unwrap();
        broker
            .publish_expiry(&ExpiryEvent {
                provider: "mock".into(),
                connection_id: id.clone(),
                token_version: c.token_version,
                due_at: chrono::Utc::now(),
                attempt: 0,
                traceparent: None,
            })
            .await
            .unwrap();
    }
    eventually("all refreshes to be in flight", Duration::from_secs(10), || async {
        (app.mock_stats().token_requests >= requests_before + conns.len() as u64).then_some(())
    })
    .await;
    let killed = app.stack.refreshers.pop().unwrap();
    let t = Instant::now();
    killed.kill().await;
    // Nothing was committed by the killed replica.
    assert!(versions(&app, &conns).await.iter().all(|v| *v == 1));
    app.stack.add_refresher(0).await.unwrap();
    let takeover = wait_refreshed(&app, &conns, 2, Duration::from_secs(30)).await;
    app.mock_control(mock_provider::Control::default());
    assert_nothing_lost(&app, &conns, 2).await;
    let stats = app.mock_stats();
    report(
        "A refresher killed in the middle of refreshes; a second replica takes over",
        &[
            ("connections refreshing when killed", conns.len().to_string()),
            ("time from the kill until the new replica had refreshed all", format!("{:.1} s", (t.elapsed()).as_secs_f64())),
            ("of which waiting for refreshes", format!("{:.1} s", takeover.as_secs_f64())),
            (
                "refresh grants at the provider",
                format!(
                    "{} ({} completed for the killed replica and lost with it, {} re-done by the survivor inside the provider's reuse window)",
                    stats.refresh_grants, conns.len(), stats.grace_reuses
                ),
            ),
            ("refresh tokens refused", stats.refresh_rejected.to_string()),
        ],
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purged_queue_is_recovered_by_the_sweep() {
    let app = TestApp::start_with(opts(16, 1)).await;
    let conns = ids("purge", 50);
    connect_all(&app, &conns, 10).await;
    let broker = app.stack.broker();
    // Let the relay publish, then throw every scheduled event away.
    eventually("the outbox to drain", Duration::from_secs(10), || async {
        (app.stack.store().outbox_len().await.unwrap() == 0).then_some(())
    })
    .await;
    let conn = shared::messaging::connect(app.stack.common.amqp_url.expose(), "purger").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut purged = 0;
    for q in broker.topology.all_queues() {
        purged += ch.queue_purge(q.as_str().into(), Default::default()).await.unwrap();
    }
    let _ = conn.close(200, "bye".into()).await;
    assert!(purged >= conns.len() as u32, "purged {purged}");
    let t = Instant::now();
    let recovered = wait_refreshed(&app, &conns, 2, Duration::from_secs(40)).await;
    assert_nothing_lost(&app, &conns, 2).await;
    let stats = app.mock_stats();
    assert_eq!(stats.refreshes_after_expiry, 0, "a token expired before the sweep rescheduled it");
    let metrics =
        app.http.get(format!("{}/metrics", app.stack.refreshers[0].url())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("authbridge_sweep_rescheduled_total{how=\"event\"}"), "{metrics}");
    report(
        "Every queue purged; the sweep reschedules",
        &[
            ("connections", conns.len().to_string()),
            ("messages purged", purged.to_string()),
            ("token lifetime / sweep interval / sweep grace", "16 s / 1 s / 2 s".into()),
            (
                "time from the purge until all were refreshed",
                format!("{:.1} s (refreshes fall due 8 s after connecting)", recovered.max(t.elapsed()).as_secs_f64()),
            ),
            (
                "refreshes after expiry / refresh tokens refused",
                format!("{} / {}", stats.refreshes_after_expiry, stats.refresh_rejected),
            ),
        ],
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_failing_with_500_429_and_timeouts_then_recovering_loses_nothing() {
    let app = TestApp::start_with(opts(10, 2)).await;
    let conns = ids("outage", 20);
    connect_all(&app, &conns, 10).await;
    tokio::time::sleep(Duration::from_secs(4)).await; // close to the first due time
    let t = Instant::now();
    app.mock_control(mock_provider::Control {
        token_fail_count: 100_000,
        token_fail_status: Some(500),
        ..Default::default()
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    app.mock_control(mock_provider::Control {
        token_fail_count: 100_000,
        token_fail_status: Some(429),
        retry_after_seconds: Some(1),
        ..Default::default()
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Slower than the OAuth client's timeout (5 s in the test settings). The provider still
    // completes the refreshes we gave up on, so it must forgive the retry with the same refresh
    // token, as providers with a reuse interval do (see docs/reliability.md for strict rotation).
    app.mock_control(mock_provider::Control { token_delay_ms: 6000, rotation_grace_seconds: 60, ..Default::default() });
    tokio::time::sleep(Duration::from_secs(4)).await;
    let outage = t.elapsed();
    let failures = app.mock_stats().injected_failures;
    let store = app.stack.store();
    let mut errored = 0;
    for id in &conns {
        let c = store.get_connection("mock", id).await.unwrap().unwrap();
        assert_eq!(c.status, shared::store::ConnectionStatus::Active, "{id} gave up during a transient outage");
        if c.error_count > 0 {
            errored += 1;
        }
    }
    app.mock_control(mock_provider::Control { rotation_grace_seconds: 60, ..Default::default() });
    let recovered = wait_refreshed(&app, &conns, 2, Duration::from_secs(60)).await;
    eventually("errors to clear", Duration::from_secs(30), || async {
        for id in &conns {
            if store.get_connection("mock", id).await.ok()??.error_count != 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
    let stats = app.mock_stats();
    // The tokens may have expired during an outage longer than their remaining life; the
    // connections must still be alive and refreshed afterwards.
    let c = store.get_connection("mock", &conns[0]).await.unwrap().unwrap();
    assert!(c.expires_at.unwrap() > chrono::Utc::now());
    assert_nothing_lost(&app, &conns, 2).await;
    report(
        "Provider failing (500, then 429 with Retry-After, then timeouts), then recovering",
        &[
            ("connections", conns.len().to_string()),
            ("outage", format!("{:.1} s (3 s of 500, 3 s of 429, 4 s of 6 s delays)", outage.as_secs_f64())),
            ("failed attempts answered by the provider (500/429)", failures.to_string()),
            ("connections with a recorded error during the outage", errored.to_string()),
            ("time after recovery until all were refreshed", format!("{:.1} s", recovered.as_secs_f64())),
            ("connections marked needs_reauth", "0".into()),
            (
                "refreshes after expiry (outage longer than the remaining token life)",
                stats.refreshes_after_expiry.to_string(),
            ),
            ("refresh tokens refused", stats.refresh_rejected.to_string()),
            (
                "timed-out refreshes the provider completed anyway, forgiven by its reuse window",
                stats.grace_reuses.to_string(),
            ),
        ],
    );
    app.stop().await;
}

fn soak_seconds() -> u64 {
    std::env::var("AUTHBRIDGE_SOAK_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(120)
}

fn soak_connections() -> usize {
    std::env::var("AUTHBRIDGE_SOAK_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_connections_refreshed_continuously_by_two_replicas_under_proxy_load() {
    let n = soak_connections();
    let secs = soak_seconds();
    let app = TestApp::start_with(StackOptions {
        token_ttl: Duration::from_secs(30),
        refreshers: 2,
        sweep_interval: Duration::from_secs(5),
        sweep_grace: Duration::from_secs(10),
        http_workers: 2,
        ..Default::default()
    })
    .await;
    let conns = ids("soak", n);
    let t = Instant::now();
    connect_all(&app, &conns, 16).await;
    let connect_time = t.elapsed();
    let load = Load::start(&app, conns.clone(), 8, Duration::from_millis(0));
    let start_grants = app.mock_stats().refresh_grants;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let statuses = load.stop().await;
    let stats = app.mock_stats();
    let grants = stats.refresh_grants - start_grants;
    assert_nothing_lost(&app, &conns, 2).await;
    assert_eq!(stats.refreshes_after_expiry, 0, "a token expired before it was refreshed");
    assert_eq!(stats.api_unauthorized, 0, "a proxied call went out with an expired token");
    let ok = statuses.get(&200).copied().unwrap_or(0);
    let total: u64 = statuses.values().sum();
    assert_eq!(ok, total, "every proxied call succeeded: {statuses:?}");
    let v = versions(&app, &conns).await;
    report(
        "Soak: connections with short-lived tokens, two refresher replicas, proxy traffic",
        &[
            ("connections", n.to_string()),
            ("token lifetime", "30 s (refreshed at half-life)".into()),
            ("duration", format!("{secs} s, after connecting all in {:.1} s", connect_time.as_secs_f64())),
            ("refresh grants", format!("{grants} ({:.1}/s)", grants as f64 / secs as f64)),
            (
                "refreshes per connection",
                format!("min {}, max {}", v.iter().min().unwrap() - 1, v.iter().max().unwrap() - 1),
            ),
            ("proxied calls", format!("{total} ({:.0}/s), all 200", total as f64 / secs as f64)),
            (
                "lost connections / refreshes after expiry / refresh tokens refused / calls with an expired token",
                format!(
                    "0 / {} / {} / {}",
                    stats.refreshes_after_expiry, stats.refresh_rejected, stats.api_unauthorized
                ),
            ),
        ],
    );
    app.stop().await;
}

/// PostgreSQL stopped for 30 s under steady proxied load: connections (and the API key) the
/// proxy has seen keep being served from memory, a connection it has not seen fails at once
/// with 503 and `Retry-After`, the proxy stays ready and says it is serving from memory; once
/// the database is back, the cache is resynced, so a connection deleted before the outage is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_down_for_30_seconds_fails_no_call_for_connections_the_proxy_has_seen() {
    let app = TestApp::start_with(opts(3600, 1)).await;
    let seen = ids("pg-seen", 40);
    connect_all(&app, &seen, 10).await;
    let unseen = ids("pg-unseen", 2);
    connect_all(&app, &unseen, 2).await;
    let (_, key) = {
        let r = app
            .http
            .post(app.gw("/v1/api-keys"))
            .header("Authorization", format!("Bearer {}", app.stack.api_key))
            .json(&serde_json::json!({"name": "svc", "scopes": ["proxy"]}))
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        (v["id"].as_str().unwrap().to_owned(), v["key"].as_str().unwrap().to_owned())
    };
    let call = |id: String, key: String| {
        let url = app.px(&format!("/proxy/mock/{id}/ping"));
        let http = app.http.clone();
        async move { http.get(url).header("Authorization", format!("Bearer {key}")).send().await }
    };
    // A connect link handed out before the outage, opened during it.
    let link = app.connect_url("mock", "pg-link").await;
    // Deleted before the outage, after the proxy had cached it.
    app.connect("mock", "pg-doomed").await;
    assert_eq!(call("pg-doomed".into(), key.clone()).await.unwrap().status(), 200);
    let load = Load::start(&app, seen.clone(), 4, Duration::from_millis(20));
    // The run-time key is seen too (run-time keys need the database to be looked up).
    assert_eq!(call(seen[0].clone(), key.clone()).await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.api(reqwest::Method::DELETE, "/v1/connections/mock/pg-doomed").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let down = PostgresDown::stop();
    let proxy_ready = format!("{}/readyz", app.stack.proxy.url());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready_during = app.http.get(&proxy_ready).send().await.unwrap().status().as_u16();
    let metrics = app.http.get(app.px("/metrics")).send().await.unwrap().text().await.unwrap();
    let asked = Instant::now();
    let unseen_answer = call(unseen[0].clone(), app.stack.api_key.clone()).await.unwrap();
    let unseen_took = asked.elapsed();
    let unseen_status = unseen_answer.status().as_u16();
    let unseen_retry = unseen_answer.headers().get("retry-after").is_some();
    let key_during = call(seen[1].clone(), key.clone()).await.unwrap().status().as_u16();
    // The gateway says "try again" at once, in JSON with Retry-After, on the browser's link and
    // on the API alike.
    let opened = app.http.get(&link).send().await.unwrap();
    let gateway_link = (opened.status().as_u16(), opened.headers().contains_key("retry-after"));
    let opened_error = opened.json::<serde_json::Value>().await.unwrap()["error"].clone();
    let created = app.create_session("mock", "pg-new", crate::support::RETURN_URL).await;
    let gateway_api = (created.status().as_u16(), created.headers().contains_key("retry-after"));
    while started.elapsed() < Duration::from_secs(29) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut statuses = load.stop().await;
    // A 401 from the provider cannot be answered with a refresh now: it is relayed, marked.
    app.mock_control(mock_provider::Control { api_fail_count: 1, api_fail_status: Some(401), ..Default::default() });
    let refused = call(seen[2].clone(), key.clone()).await.unwrap();
    let refused = (refused.status().as_u16(), refused.headers().get("x-authbridge-retry").cloned());
    while started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same load through the database's return.
    let load = Load::start(&app, seen.clone(), 4, Duration::from_millis(20));
    let outage = started.elapsed();
    down.start();
    let gateway_ready = format!("{}/readyz", app.stack.gateway.url());
    let recovery = wait_ready(&gateway_ready, 200, Duration::from_secs(60)).await;
    // Back to the database: the cache was resynced (the gauge falls to 0).
    eventually("the proxy to leave its from-memory mode", Duration::from_secs(30), || async {
        let m = app.http.get(app.px("/metrics")).send().await.ok()?.text().await.ok()?;
        m.contains("authbridge_proxy_serving_from_memory 0").then_some(())
    })
    .await;
    for (status, n) in load.stop().await {
        *statuses.entry(status).or_default() += n;
    }
    let doomed_after = call("pg-doomed".into(), key.clone()).await.unwrap().status().as_u16();
    let unseen_after = call(unseen[1].clone(), key.clone()).await.unwrap().status().as_u16();

    assert_eq!(ready_during, 200, "the proxy stays ready while it can serve from memory");
    assert!(metrics.contains("authbridge_proxy_serving_from_memory 1"), "{metrics}");
    assert_eq!((unseen_status, unseen_retry), (503, true), "an unseen connection fails with 503 and Retry-After");
    assert_eq!(key_during, 200, "a run-time key seen before the outage keeps working");
    assert_eq!(gateway_link, (503, true), "the connect link during the outage");
    assert_eq!(opened_error, "unavailable");
    assert_eq!(gateway_api, (503, true), "a new connect session during the outage");
    assert_eq!(refused.0, 401);
    assert_eq!(refused.1.as_ref().map(|v| v.to_str().unwrap()), Some("refresh-unavailable"));
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "every call for a seen connection: {statuses:?}"
    );
    assert_eq!(doomed_after, 404, "a connection deleted before the outage is refused after the resync");
    assert_eq!(unseen_after, 200);
    report(
        "PostgreSQL stopped for 30 s under proxied load (pg_ctlcluster stop / start)",
        &[
            ("connections under load", format!("{} (4 callers, a call every 20 ms each)", seen.len())),
            ("outage", format!("{:.1} s", outage.as_secs_f64())),
            ("proxied calls by status", fmt_statuses(&statuses)),
            ("proxy readiness during the outage", ready_during.to_string()),
            (
                "a provider's 401 during the outage",
                format!("{} relayed, x-authbridge-retry: refresh-unavailable", refused.0),
            ),
            (
                "a connection the proxy had not seen, during the outage",
                format!("{unseen_status} with Retry-After, in {:.0} ms", unseen_took.as_secs_f64() * 1000.0),
            ),
            (
                "the gateway during the outage (a connect link, a new session)",
                "503 with Retry-After, JSON `unavailable`".into(),
            ),
            ("time until the gateway was ready again", format!("{:.1} s", recovery.as_secs_f64())),
            ("a connection deleted just before the outage, after it", doomed_after.to_string()),
        ],
    );
    app.stop().await;
}

/// A webhook endpoint at a receiver the test starts; returns the receiver and the endpoint id.
async fn webhook_receiver(app: &TestApp) -> (devstack::receiver::Receiver, String) {
    let rx = devstack::receiver::Receiver::start().await.unwrap();
    let r =
        app.post_json("/v1/webhooks", &serde_json::json!({"url": rx.url(), "events": ["connection.created"]})).await;
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    (rx, v["id"].as_str().unwrap().to_owned())
}

/// Machine-to-machine connections (each one `connection.created` event).
async fn machines(app: &TestApp, ids: &[String]) {
    for id in ids {
        let r = app
            .post_json("/v1/connections", &serde_json::json!({"provider": "mockmachine", "connection_id": id}))
            .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
}

/// Waits until the receiver has every one of `ids`' events; returns how many requests that took.
async fn all_delivered(rx: &devstack::receiver::Receiver, ids: &[String], limit: Duration) -> usize {
    eventually("every event at the receiver", limit, || async {
        let got = rx.received();
        let seen: std::collections::BTreeSet<String> =
            got.iter().map(|r| r.json()["data"]["connection_id"].as_str().unwrap().to_owned()).collect();
        ids.iter().all(|id| seen.contains(id)).then_some(got.len())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_committed_before_and_during_a_rabbitmq_outage_are_all_delivered() {
    let app = TestApp::start_with(opts(3600, 1)).await;
    let (rx, _) = webhook_receiver(&app).await;
    let before = ids("wh-before", 10);
    machines(&app, &before).await;
    let started = Instant::now();
    let down = RabbitDown::stop();
    let refresher_ready = format!("{}/readyz", app.stack.refreshers[0].url());
    wait_ready(&refresher_ready, 503, Duration::from_secs(15)).await;
    let during = ids("wh-during", 10);
    machines(&app, &during).await;
    let pending = app.stack.store().outbox_len().await.unwrap();
    assert!(pending > 0, "events should be waiting in the outbox");
    while started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let outage = started.elapsed();
    down.start();
    let back = Instant::now();
    let all: Vec<String> = before.iter().chain(during.iter()).cloned().collect();
    let requests = all_delivered(&rx, &all, Duration::from_secs(60)).await;
    let waited = back.elapsed();
    assert_eq!(app.stack.store().outbox_len().await.unwrap(), 0, "the outbox drained");
    report(
        "Webhooks while RabbitMQ is stopped and restarted",
        &[
            ("events", format!("{} ({} committed during the outage)", all.len(), during.len())),
            ("outage", format!("{:.1} s", outage.as_secs_f64())),
            ("messages waiting in the outbox during the outage", pending.to_string()),
            ("time from start_app until every event was delivered", format!("{:.1} s", waited.as_secs_f64())),
            ("requests the receiver got (duplicates allowed: at least once)", requests.to_string()),
        ],
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_being_sent_when_the_refresher_is_killed_are_sent_by_the_next_one() {
    let mut app = TestApp::start_with(opts(3600, 1)).await;
    let (rx, _) = webhook_receiver(&app).await;
    // Slow answers: the kill lands while sends are in flight.
    rx.set_delay(Duration::from_secs(3));
    let conns = ids("wh-kill", 8);
    machines(&app, &conns).await;
    eventually("sends in flight", Duration::from_secs(10), || async { (rx.most_at_once() >= 1).then_some(()) }).await;
    let killed = app.stack.refreshers.pop().unwrap();
    let t = Instant::now();
    killed.kill().await;
    rx.set_delay(Duration::ZERO);
    app.stack.add_refresher(0).await.unwrap();
    let requests = all_delivered(&rx, &conns, Duration::from_secs(60)).await;
    report(
        "Webhooks in flight when a refresher is killed; a second replica sends them",
        &[
            ("events", conns.len().to_string()),
            ("most sends open at the receiver at once", rx.most_at_once().to_string()),
            ("time from the kill until every event was delivered", format!("{:.1} s", t.elapsed().as_secs_f64())),
            ("requests the receiver got", requests.to_string()),
        ],
    );
    app.stop().await;
}
