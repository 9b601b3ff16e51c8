//! Attacks on the services' resources that must fail: a caller without a key cannot make
//! them hold memory (metric series from made-up methods, request bodies), a slowloris cannot
//! keep callers out, a flood of made-up keys cannot load the database, and no request escapes
//! the proxy's framing rules.

use crate::security::new_key;
use crate::support::TestApp;
use devstack::StackOptions;
use reqwest::{Method, StatusCode};
use std::time::Duration;

/// Each request with a new method token must not create a metric series: 10,000 of them leave
/// `/metrics` as it was, on the gateway and on the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_made_up_methods_do_not_grow_the_metrics() {
    use futures_util::StreamExt;
    let app = TestApp::start().await;
    for base in [app.stack.gateway.url(), app.stack.proxy.url()] {
        let metrics = || async { app.http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap() };
        let send = |i: usize| {
            let method = Method::from_bytes(format!("M{i:05}{}", "X".repeat(i % 200)).as_bytes()).unwrap();
            app.http.request(method, format!("{base}/proxy/mock/u/x")).send()
        };
        // Warm up every series these requests (and the scrape itself) can reach.
        for i in 0..3 {
            send(i).await.unwrap();
        }
        metrics().await;
        let before = metrics().await;
        let statuses: Vec<u16> = futures_util::stream::iter(0..10_000)
            .map(|i| async move { send(i).await.unwrap().status().as_u16() })
            .buffer_unordered(8)
            .collect()
            .await;
        assert!(statuses.iter().all(|s| *s >= 400), "{base}");
        let after = metrics().await;
        assert!(!after.contains("M00042"), "{base}: a method token reached a label");
        assert!(after.contains(r#"method="OTHER""#), "{base}: {after}");
        let series = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(series(&after), series(&before), "{base}: no new series");
        // The counters' digits may grow; the text no more than that.
        assert!(after.len() < before.len() + 1024, "{base}: {} -> {} bytes", before.len(), after.len());
    }
    app.stop().await;
}

/// A caller without a valid key cannot make the proxy hold request bodies: it is answered from
/// the head, before any of the body is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bodies_are_refused_before_they_are_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start().await;
    app.connect("mock", "u1").await;
    let addr = app.stack.proxy.url().trim_start_matches("http://").to_owned();
    // Held bodies go up to 64 KiB here: this one would be held.
    for auth in ["", "Authorization: Bearer not-a-key-0123456789\r\n"] {
        let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!("POST /proxy/mock/u1/x HTTP/1.1\r\nHost: p\r\n{auth}Content-Length: 60000\r\n\r\n");
        sock.write_all(head.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 401 "), "{text}");
        assert!(text.contains("\"error\":\"unauthorized\""), "{text}");
    }
    // With a key, the same body is read and forwarded.
    let r = app.proxy(Method::POST, "mock/u1/echo").body(vec![b'x'; 60000]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

/// Slowloris: sockets holding half-sent heads cannot crowd out callers. The proxy keeps at most
/// its cap of connections, closing those that have waited longest for their caller, so callers
/// that send whole requests keep being served while the attack holds five times the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_past_the_connection_cap_does_not_keep_callers_out() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::start_with(StackOptions { proxy_max_connections: 100, ..Default::default() }).await;
    app.connect("mock", "u1").await;
    let addr = app.stack.proxy.url().trim_start_matches("http://").to_owned();
    let kept_alive = reqwest::Client::new();
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let call = |client: &reqwest::Client| {
        client.get(app.px("/proxy/mock/u1/x")).header("Authorization", format!("Bearer {}", app.stack.api_key)).send()
    };
    assert_eq!(call(&kept_alive).await.unwrap().status(), StatusCode::OK);
    let mut attack = Vec::new();
    let (mut served_fresh, mut served_kept) = (0, 0);
    for round in 0..10 {
        for _ in 0..50 {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(b"GET /proxy/mock/u1/x HTTP/1.1\r\nHost: p\r\nX-Slow: ").await.unwrap();
            attack.push(s);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        for _ in 0..3 {
            if call(&fresh).await.is_ok_and(|r| r.status() == StatusCode::OK) {
                served_fresh += 1;
            }
            if call(&kept_alive).await.is_ok_and(|r| r.status() == StatusCode::OK) {
                served_kept += 1;
            }
        }
        assert!(attack.len() == (round + 1) * 50);
    }
    assert_eq!(attack.len(), 500, "the attack holds five times the cap");
    assert_eq!((served_fresh, served_kept), (30, 30), "every caller's call was served during the attack");
    // The proxy closed the attack's oldest sockets to stay at its cap: reset, since none of
    // them ever completed a request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut buf = [0u8; 64];
    let mut ended = |s: &tokio::net::TcpStream| match s.try_read(&mut buf) {
        Ok(0) => Some(false),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(true),
        _ => None,
    };
    let closed: Vec<Option<bool>> = attack.iter().map(&mut ended).collect();
    let reset = closed.iter().filter(|c| **c == Some(true)).count();
    assert!(reset >= 500 - 100, "{reset} of 500 attack sockets reset by the proxy: {closed:?}");
    assert_eq!(closed.last(), Some(&None), "the newest ones are kept");
    app.stop().await;
}

/// A slowloris holding more sockets than the cap, and reopening each one the proxy closes at
/// once, cannot make the proxy take and shed connections as fast as its cores allow: at the cap
/// new connections are taken at the configured pace, the rest wait in the listen queue. (Unpaced,
/// the loop below turned connections over thousands of times a second.) A caller is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_a_reopening_slowloris_is_taken_at_the_pace() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let options =
        StackOptions { proxy_max_connections: 100, proxy_accept_rate_at_cap: Some(100), ..Default::default() };
    let app = TestApp::start_with(options).await;
    app.connect("mock", "u1").await;
    let addr = app.stack.proxy.url().trim_start_matches("http://").to_owned();
    let kept_alive = reqwest::Client::new();
    let call = |client: &reqwest::Client| {
        client.get(app.px("/proxy/mock/u1/x")).header("Authorization", format!("Bearer {}", app.stack.api_key)).send()
    };
    assert_eq!(call(&kept_alive).await.unwrap().status(), StatusCode::OK);
    let closed = Arc::new(AtomicUsize::new(0));
    let mut attack = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let (addr, closed) = (addr.clone(), closed.clone());
        attack.spawn(async move {
            loop {
                let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else { continue };
                if s.write_all(b"GET /proxy/mock/u1/x HTTP/1.1\r\nHost: p\r\nX-Slow: ").await.is_err() {
                    continue;
                }
                let mut buf = [0u8; 256];
                if matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {
                    closed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let started = std::time::Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(3) {
        // The caller's connection, idle since before the attack, may be the one that has waited
        // longest and be closed first; its next one then waits its turn in the listen queue.
        if call(&kept_alive).await.is_ok_and(|r| r.status() == StatusCode::OK) {
            served += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let shed = closed.load(Ordering::Relaxed);
    attack.abort_all();
    while attack.join_next().await.is_some() {}
    assert!(served >= 1, "the caller was served during the attack");
    // At most the first cap's worth unpaced, then 100 a second (and a tenth of a second's burst),
    // doubled for slack. Unpaced, this loop closed thousands.
    let bound = (2.0 * (100.0 + 10.0 + 100.0 * elapsed)) as usize;
    assert!(shed > 50, "the cap was reached and connections were shed: {shed}");
    assert!(shed <= bound, "{shed} connections closed in {elapsed:.1} s; the pace allows about {}", bound / 2);
    app.stop().await;
}

/// Unknown keys are cheap: those that cannot have been issued cost no database lookup, and an
/// address whose lookups keep failing is refused (429) without lookups, while keys that work
/// keep working, even from that address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_keys_costs_no_lookups_and_is_limited_per_address() {
    use futures_util::StreamExt;
    let app = TestApp::start_with(StackOptions { auth_failures_per_address: 10, ..Default::default() }).await;
    app.connect("mock", "u1").await;
    let (_, key) = new_key(&app, &["proxy"], &[]).await;
    assert!(key.starts_with(shared::auth::KEY_PREFIX), "{key}");
    let call =
        |k: String| app.http.get(app.px("/proxy/mock/u1/x")).header("Authorization", format!("Bearer {k}")).send();
    assert_eq!(call(key.clone()).await.unwrap().status(), StatusCode::OK);
    let lookups = || async {
        let text = app.http.get(app.px("/metrics")).send().await.unwrap().text().await.unwrap();
        let line = text.lines().find(|l| l.starts_with("authbridge_api_key_lookups_total ")).unwrap().to_owned();
        line.split(' ').nth(1).unwrap().parse::<u64>().unwrap()
    };
    let before = lookups().await;
    // Keys of no issued shape, and current-format keys with a wrong checksum.
    let forged: Vec<String> = (0..2_000)
        .map(|i| {
            if i % 2 == 0 {
                format!("random-key-{}", uuid::Uuid::new_v4())
            } else {
                let mut k = shared::auth::new_api_key();
                k.replace_range(10..11, if &k[10..11] == "A" { "B" } else { "A" });
                k
            }
        })
        .collect();
    let statuses: Vec<u16> = futures_util::stream::iter(forged)
        .map(|k| async move { call(k).await.unwrap().status().as_u16() })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 401));
    assert_eq!(lookups().await, before, "no lookup for a key we cannot have issued");
    // Keys of the legacy shape are looked up, until the address has failed too often.
    let started = std::time::Instant::now();
    let mut limited = 0;
    for _ in 0..200 {
        let r = call(format!("abk_{}", shared::crypto::random_token())).await.unwrap();
        match r.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers().contains_key("retry-after"));
                limited += 1;
            }
            s => panic!("{s}"),
        }
        // A key that works still works from the same address, mid-flood.
        if limited == 50 {
            assert_eq!(call(key.clone()).await.unwrap().status(), StatusCode::OK);
        }
    }
    let looked_up = lookups().await - before;
    let allowed = 10 + 10 * started.elapsed().as_secs() + 10;
    assert!(limited > 100, "{limited} of 200 refused without a lookup");
    assert!(looked_up <= allowed, "{looked_up} lookups in {:?}", started.elapsed());
    assert_eq!(call(key).await.unwrap().status(), StatusCode::OK);
    app.stop().await;
}

/// The framing rules hold for every request of a connection: after a request whose body
/// streams, nothing more is served on that connection, so no later request escapes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_after_a_streamed_one_escapes_the_framing_rules() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start().await;
    app.connect("mock", "u1").await;
    let addr = app.stack.proxy.url().trim_start_matches("http://").to_owned();
    let key = &app.stack.api_key;
    for next in [
        "GET /proxy/mock/u1/second HTTP/1.1\r\n",
        "GET /proxy/mock/u1/second HTTP/1.1\r\nHost: p\r\nHost: evil\r\n",
        "POST /proxy/mock/u1/second HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let input = format!(
            "POST /proxy/mock/u1/first HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {key}\r\n\
             Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
             {next}Authorization: Bearer {key}\r\n\r\n0\r\n\r\n"
        );
        sock.write_all(input.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{next:?} was served: {text}");
        assert!(!text.contains("/second"), "{text}");
    }
    app.stop().await;
}
