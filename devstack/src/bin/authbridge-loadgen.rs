//! `authbridge-loadgen`: the load and set-up steps of `bench/run.sh` that no off-the-shelf load
//! generator does. Each subcommand prints one JSON object on stdout.
//!
//! ```text
//! authbridge-loadgen connect <gateway-url> <api-key> <provider> <id-prefix> <count> <concurrency>
//!     Runs <count> complete connect flows (session → provider's authorize → callback), <concurrency>
//!     at a time, and reports flows/s and the callback's latency percentiles.
//! authbridge-loadgen seed <provider> <id-prefix> <count> <expires-in-seconds>
//!     Inserts <count> connections with made-up tokens (AUTHBRIDGE_DATABASE_URL, AUTHBRIDGE_ENCRYPTION_KEY).
//! authbridge-loadgen due <provider> <id-prefix> <in-seconds>
//!     Makes every connection under the prefix fall due at one instant, <in-seconds> from now, and
//!     schedules their expiry events through the outbox, as the gateway would.
//! authbridge-loadgen calls <url> <api-key> <concurrency> <seconds> [<warmup-seconds> [<per-second>]]
//!     Calls <url> with the key from <concurrency> kept-alive connections for <seconds> (after
//!     <warmup-seconds> of calls that are not counted), and reports calls/s (2xx answers), other
//!     answers and errors, and the latency percentiles. Each connection calls again as soon as
//!     it has its answer; or, given <per-second>, the connections together call at that rate,
//!     each call's latency counted from when it was due.
//! authbridge-loadgen fresh <url> <api-key> <every-ms> <seconds>
//!     One call every <every-ms>, each on a new connection, and the calls' latency (connecting
//!     included): what a caller with no connection open yet waits.
//! authbridge-loadgen slowloris <host:port> <sockets> <seconds>
//!     Holds <sockets> connections that each send a head's first line and then one more byte every
//!     five seconds, never finishing it; opens a new one whenever the server closes one.
//! authbridge-loadgen keyflood <url> <per-second> <seconds>
//!     Sends <per-second> requests a second with made-up API keys (no issued shape, a current
//!     shape with a wrong checksum, the legacy shape), and reports the answers by status.
//! authbridge-loadgen paced <per-second> <seconds> <api-key> <form-body> <url> [<url> …]
//!     Offers <per-second> POSTs a second with <form-body> for <seconds>, open loop (a call is
//!     sent on time whether or not earlier ones were answered), taking the URLs in turn, and
//!     reports the answers: 200s, the proxy's own 429s (marked `x-authbridge-error`), anything
//!     else, and the 200s' latency percentiles (waiting for a free slot included).
//! authbridge-loadgen drain <provider> <id-prefix> <due-at> <scheduled-at> <timeout-seconds>
//!     Waits until every connection under the prefix was refreshed after <scheduled-at> (when
//!     `due` ran), and reports refreshes/s and the lateness behind <due-at> (negative: ahead of
//!     it; the refresher takes events up to a second early).
//! ```

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use shared::store::{Credentials, NewTokens, Store};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn summary(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    serde_json::json!({
        "p50": percentile(&ms, 50.0),
        "p99": percentile(&ms, 99.0),
        "p999": percentile(&ms, 99.9),
        "max": ms.last().copied().unwrap_or(0.0),
    })
}

fn store() -> anyhow::Result<Store> {
    let url = std::env::var(shared::config::DATABASE_URL).context("AUTHBRIDGE_DATABASE_URL")?;
    let key = std::env::var(shared::config::ENCRYPTION_KEY).context("AUTHBRIDGE_ENCRYPTION_KEY")?;
    Ok(Store::new(&url, 4, shared::crypto::Keyring::from_base64(&key, None, &[])?)?)
}

fn location(r: &reqwest::Response) -> anyhow::Result<String> {
    match r.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()) {
        Some(l) if r.status().is_redirection() => Ok(l.to_owned()),
        _ => bail!("expected a redirect, got {}", r.status()),
    }
}

/// One connect flow; returns the callback's latency in ms.
async fn flow(http: &reqwest::Client, gateway: &str, api_key: &str, provider: &str, id: &str) -> anyhow::Result<f64> {
    let session: serde_json::Value = http
        .post(format!("{gateway}/v1/connect/sessions"))
        .bearer_auth(api_key)
        .json(&serde_json::json!({"provider": provider, "connection_id": id, "return_url": "https://app.example/done"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let connect_url = session["connect_url"].as_str().context("connect_url")?;
    let opened = http.get(connect_url).send().await?;
    // The flow is bound to the browser that opened it: its cookie goes back with the callback.
    let cookie = opened
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("the connect URL set no flow cookie")?
        .to_owned();
    let authorize = location(&opened)?;
    let callback = location(&http.get(&authorize).send().await?)?;
    let started = Instant::now();
    let done = location(&http.get(&callback).header(reqwest::header::COOKIE, cookie).send().await?)?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !done.contains("status=connected") {
        bail!("the flow ended in {done}");
    }
    Ok(ms)
}

async fn connect(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let [gateway, api_key, provider, prefix, count, concurrency] = args else {
        bail!("connect <gateway-url> <api-key> <provider> <id-prefix> <count> <concurrency>");
    };
    let (count, concurrency): (usize, usize) = (count.parse()?, concurrency.parse()?);
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (http, next) = (http.clone(), next.clone());
        let (gateway, api_key, provider, prefix) = (gateway.clone(), api_key.clone(), provider.clone(), prefix.clone());
        tasks.spawn(async move {
            let (mut ok, mut errors) = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                match flow(&http, &gateway, &api_key, &provider, &format!("{prefix}{i:07}")).await {
                    Ok(ms) => ok.push(ms),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (ok, errors)
        });
    }
    let (mut ok, mut errors) = (Vec::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        let (o, e) = r?;
        ok.extend(o);
        errors.extend(e);
    }
    let seconds = started.elapsed().as_secs_f64();
    errors.sort();
    errors.dedup();
    Ok(serde_json::json!({
        "flows": count,
        "connected": ok.len(),
        "failed": count - ok.len(),
        "seconds": seconds,
        "flows_per_second": ok.len() as f64 / seconds,
        "callback_ms": summary(ok),
        "errors": errors.into_iter().take(5).collect::<Vec<_>>(),
    }))
}

async fn seed(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let [provider, prefix, count, expires_in] = args else {
        bail!("seed <provider> <id-prefix> <count> <expires-in-seconds>");
    };
    let (count, expires_in): (usize, i64) = (count.parse()?, expires_in.parse()?);
    let store = store()?;
    store.migrate().await?;
    let db = client().await?;
    let started = Instant::now();
    let expires_at = Utc::now() + chrono::Duration::seconds(expires_in);
    let mut inserted = 0;
    for start in (0..count).step_by(10_000) {
        let batch: Vec<(String, NewTokens)> = (start..(start + 10_000).min(count))
            .map(|i| {
                let id = format!("{prefix}{i:07}");
                let credentials = Credentials {
                    access_token: format!("seeded-access-{}", uuid::Uuid::new_v4().simple()),
                    refresh_token: Some(format!("seeded-refresh-{}", uuid::Uuid::new_v4().simple())),
                    token_type: Some("Bearer".into()),
                    ..Credentials::default()
                };
                let tokens = NewTokens {
                    credentials,
                    scopes: vec![],
                    expires_at: Some(expires_at),
                    refresh_due_at: Some(expires_at - chrono::Duration::seconds(expires_in / 10)),
                };
                (id, tokens)
            })
            .collect();
        inserted += import(&store, &db, provider, &batch).await?;
    }
    Ok(serde_json::json!({"inserted": inserted, "seconds": started.elapsed().as_secs_f64()}))
}

/// Inserts already-authorized connections in one statement, sealed as the store seals them,
/// skipping ids that exist; no events are written (`due` schedules them). How many were
/// inserted.
async fn import(
    store: &Store,
    db: &tokio_postgres::Client,
    provider: &str,
    connections: &[(String, NewTokens)],
) -> anyhow::Result<u64> {
    let (mut ids, mut key_ids, mut blobs, mut expires, mut due) = (vec![], vec![], vec![], vec![], vec![]);
    for (id, t) in connections {
        let sealed = store.seal_credentials(provider, id, &t.credentials);
        ids.push(id.as_str());
        key_ids.push(sealed.key_id);
        blobs.push(sealed.blob);
        expires.push(t.expires_at);
        due.push(t.refresh_due_at);
    }
    Ok(db
        .execute(
            "INSERT INTO connections (provider, connection_id, status, key_id, credentials, expires_at,
                refresh_due_at, last_refresh_at)
             SELECT $1, c, 'active', k, b, e, d, now()
             FROM unnest($2::text[], $3::text[], $4::bytea[], $5::timestamptz[], $6::timestamptz[]) AS t(c, k, b, e, d)
             ON CONFLICT (provider, connection_id) DO NOTHING",
            &[&provider, &ids, &key_ids, &blobs, &expires, &due],
        )
        .await?)
}

async fn client() -> anyhow::Result<tokio_postgres::Client> {
    let url = std::env::var(shared::config::DATABASE_URL).context("AUTHBRIDGE_DATABASE_URL")?;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn due(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let [provider, prefix, in_seconds] = args else {
        bail!("due <provider> <id-prefix> <in-seconds>");
    };
    let scheduled_at = Utc::now();
    let due_at = scheduled_at + chrono::Duration::seconds(in_seconds.parse()?);
    let db = client().await?;
    let pattern = format!("{prefix}%");
    // Due at one instant; the tokens stay valid a while after it, as they would with a margin.
    let rows = db
        .query(
            "UPDATE connections SET refresh_due_at = $3::timestamptz, expires_at = $3::timestamptz + interval '10 minutes'
             WHERE provider = $1 AND connection_id LIKE $2 AND status = 'active'
             RETURNING connection_id, token_version",
            &[provider, &pattern, &due_at],
        )
        .await?;
    let events: Vec<_> = rows
        .iter()
        .map(|r| {
            shared::messaging::ExpiryEvent {
                provider: provider.clone(),
                connection_id: r.get(0),
                token_version: r.get(1),
                due_at,
                attempt: 0,
                traceparent: None,
            }
            .to_outbox()
        })
        .collect();
    store()?.enqueue(&events).await?;
    Ok(serde_json::json!({
        "connections": rows.len(),
        "due_at": due_at.to_rfc3339(),
        "scheduled_at": scheduled_at.to_rfc3339(),
    }))
}

async fn drain(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let [provider, prefix, due_at, since, timeout] = args else {
        bail!("drain <provider> <id-prefix> <due-at> <scheduled-at> <timeout-seconds>");
    };
    let due_at: DateTime<Utc> = DateTime::parse_from_rfc3339(due_at)?.with_timezone(&Utc);
    let since: DateTime<Utc> = DateTime::parse_from_rfc3339(since)?.with_timezone(&Utc);
    let deadline = Instant::now() + Duration::from_secs(timeout.parse()?);
    let db = client().await?;
    let pattern = format!("{prefix}%");
    let total: i64 = db
        .query_one(
            "SELECT count(*) FROM connections WHERE provider = $1 AND connection_id LIKE $2",
            &[provider, &pattern],
        )
        .await?
        .get(0);
    loop {
        let done: i64 = db
            .query_one(
                "SELECT count(*) FROM connections WHERE provider = $1 AND connection_id LIKE $2
                   AND (last_refresh_at > $3 OR status <> 'active')",
                &[provider, &pattern, &since],
            )
            .await?
            .get(0);
        if done >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = db
        .query(
            "SELECT EXTRACT(EPOCH FROM (last_refresh_at - $3))::float8 * 1000 FROM connections
             WHERE provider = $1 AND connection_id LIKE $2 AND last_refresh_at > $4 AND status = 'active'",
            &[provider, &pattern, &due_at, &since],
        )
        .await?;
    let lateness: Vec<f64> = rows.iter().map(|r| r.get::<_, f64>(0)).collect();
    let status = db
        .query(
            "SELECT status, count(*) FROM connections WHERE provider = $1 AND connection_id LIKE $2 GROUP BY status",
            &[provider, &pattern],
        )
        .await?;
    let by_status: serde_json::Map<String, serde_json::Value> =
        status.iter().map(|r| (r.get::<_, String>(0), serde_json::json!(r.get::<_, i64>(1)))).collect();
    // From the scheduled instant (or the first refresh, if ahead of it) to the last refresh.
    let first = lateness.iter().copied().fold(0.0, f64::min);
    let span_s = (lateness.iter().copied().fold(0.0, f64::max) - first) / 1000.0;
    Ok(serde_json::json!({
        "connections": total,
        "refreshed": lateness.len(),
        "by_status": by_status,
        "drain_seconds": span_s,
        "refreshes_per_second": if span_s > 0.0 { lateness.len() as f64 / span_s } else { 0.0 },
        "lateness_ms": summary(lateness),
    }))
}

async fn calls(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let (url, api_key, concurrency, seconds, warmup, rate) = match args {
        [url, key, concurrency, seconds] => (url, key, concurrency, seconds, "0", None),
        [url, key, concurrency, seconds, warmup] => (url, key, concurrency, seconds, warmup.as_str(), None),
        [url, key, concurrency, seconds, warmup, rate] => {
            (url, key, concurrency, seconds, warmup.as_str(), Some(rate.parse::<f64>()?))
        }
        _ => bail!("calls <url> <api-key> <concurrency> <seconds> [<warmup-seconds> [<calls-per-second>]]"),
    };
    let (concurrency, seconds, warmup): (usize, u64, u64) = (concurrency.parse()?, seconds.parse()?, warmup.parse()?);
    let concurrency = concurrency.max(1);
    // Calls begun before `from` are made but not counted.
    let from = Instant::now() + Duration::from_secs(warmup);
    let until = from + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..concurrency {
        // One client each: one kept-alive connection each, as services keep theirs.
        let http = reqwest::Client::builder().pool_max_idle_per_host(1).build()?;
        let (url, auth) = (url.clone(), format!("Bearer {api_key}"));
        // At a given rate, each connection calls on a schedule of its own (staggered), and a
        // call's latency counts from when it was due, so a call held up behind a slow one is
        // charged the wait (no coordinated omission); without one, each calls as soon as its
        // last answer is read.
        let mut schedule = rate.map(|r| {
            let every = Duration::from_secs_f64(concurrency as f64 / r.max(0.001));
            let first = tokio::time::Instant::now() + every.mul_f64(c as f64 / concurrency as f64);
            let mut tick = tokio::time::interval_at(first, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            tick
        });
        tasks.spawn(async move {
            let (mut ok, mut other, mut errors) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < until {
                let due = match schedule.as_mut() {
                    Some(tick) => tick.tick().await.into_std(),
                    None => Instant::now(),
                };
                if due >= until {
                    break;
                }
                let counted = due >= from;
                match http.get(&url).header("Authorization", &auth).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        if counted {
                            ok.push(due.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    Ok(_) => other += counted as u64,
                    Err(_) => errors += counted as u64,
                }
            }
            (ok, other, errors)
        });
    }
    let (mut ok, mut other, mut errors) = (Vec::new(), 0, 0);
    while let Some(r) = tasks.join_next().await {
        let (o, n, e) = r?;
        ok.extend(o);
        other += n;
        errors += e;
    }
    Ok(serde_json::json!({
        "calls": ok.len(),
        "calls_per_second": ok.len() as f64 / seconds as f64,
        "offered_per_second": rate,
        "other_answers": other,
        "errors": errors,
        "latency_ms": summary(ok),
    }))
}

/// One call at a time, each on a new connection, one every `every_ms`: what a caller that has
/// no connection open yet waits (connecting included).
async fn fresh(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let [url, api_key, every_ms, seconds] = args else {
        bail!("fresh <url> <api-key> <every-ms> <seconds>");
    };
    let (every, seconds): (u64, u64) = (every_ms.parse()?, seconds.parse()?);
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let until = Instant::now() + Duration::from_secs(seconds);
    let (mut ok, mut failed) = (Vec::new(), 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(every.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        tick.tick().await;
        let started = Instant::now();
        match http.get(url).header("Authorization", format!("Bearer {api_key}")).send().await {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                ok.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            _ => failed += 1,
        }
    }
    Ok(serde_json::json!({ "calls": ok.len(), "failed": failed, "latency_ms": summary(ok) }))
}

async fn slowloris(args: &[String]) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let [addr, sockets, seconds] = args else {
        bail!("slowloris <host:port> <sockets> <seconds>");
    };
    let (sockets, seconds): (usize, u64) = (sockets.parse()?, seconds.parse()?);
    if sockets > 60_000 {
        bail!("at most 60000 sockets per process");
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let (opened, closed_by_server, held) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let peak = Arc::new(AtomicUsize::new(0));
    let addr: std::net::SocketAddr = tokio::net::lookup_host(addr.as_str()).await?.next().context("no address")?;
    // Against a loopback address, each socket comes from an address of its own in 127.0.0.0/8,
    // as a distributed attack's would. From one address, twenty thousand sockets reopened
    // thousands of times a second exhaust that address's ephemeral ports, and the attackers'
    // kernel then spends most of both cores searching for a free one (`__inet_hash_connect`,
    // seen with perf): the attacker's own cost, which on a real network is not on the proxy's
    // machine, but which here takes the cores from everything the benchmark measures.
    // The second octet differs per process, so two attacking processes share no address.
    let octet = 16 + (std::process::id() % 200) as u8;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..sockets {
        let source = (addr.is_ipv4() && addr.ip().is_loopback())
            .then(|| std::net::IpAddr::from([127, octet, (i / 250) as u8, (i % 250) as u8 + 1]));
        let (opened, closed, held, peak) = (opened.clone(), closed_by_server.clone(), held.clone(), peak.clone());
        tasks.spawn(async move {
            // Spread the first connects over the first second, as two processes opening ten
            // thousand sockets each would.
            tokio::time::sleep(Duration::from_micros((i as u64 * 100) % 1_000_000)).await;
            while tokio::time::Instant::now() < until {
                let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(2), connect_from(addr, source)).await
                else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                let now = held.fetch_add(1, Ordering::Relaxed) + 1;
                peak.fetch_max(now, Ordering::Relaxed);
                let mut alive = s.write_all(b"GET /proxy/mock/x/y HTTP/1.1\r\nHost: p\r\nX-a: ").await.is_ok();
                let mut scrap = [0u8; 512];
                while alive && tokio::time::Instant::now() < until {
                    tokio::select! {
                        r = s.read(&mut scrap) => alive = matches!(r, Ok(n) if n > 0),
                        _ = tokio::time::sleep(Duration::from_secs(5)) => alive = s.write_all(b"a").await.is_ok(),
                    }
                }
                held.fetch_sub(1, Ordering::Relaxed);
                if !alive {
                    closed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(serde_json::json!({
        "sockets": sockets,
        "seconds": seconds,
        "connections_opened": opened.load(Ordering::Relaxed),
        "closed_by_server": closed_by_server.load(Ordering::Relaxed),
        "peak_held": peak.load(Ordering::Relaxed),
    }))
}

/// A connection to `addr`, from `source` when one is given.
async fn connect_from(
    addr: std::net::SocketAddr,
    source: Option<std::net::IpAddr>,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    if let Some(ip) = source {
        socket.bind((ip, 0).into())?;
    }
    socket.connect(addr).await
}

async fn keyflood(args: &[String]) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let [url, per_second, seconds] = args else {
        bail!("keyflood <url> <per-second> <seconds>");
    };
    let (per_second, seconds): (u64, u64) = (per_second.parse()?, seconds.parse()?);
    let url = url::Url::parse(url)?;
    let addr = format!("{}:{}", url.host_str().context("host")?, url.port_or_known_default().context("port")?);
    // Raw, kept-alive connections, each sending its share of requests on a fixed schedule and
    // counting the answers' status lines: a flood that costs its sender next to nothing.
    const CONNECTIONS: u64 = 48;
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CONNECTIONS {
        let (addr, path) = (addr.clone(), url.path().to_owned());
        tasks.spawn(async move {
            let mut counts = std::collections::BTreeMap::<String, u64>::new();
            let mut sent = 0u64;
            let every = Duration::from_secs_f64(CONNECTIONS as f64 / per_second.max(1) as f64);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sock: Option<tokio::net::TcpStream> = None;
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 16 * 1024];
            while Instant::now() < until {
                tick.tick().await;
                if sock.is_none() {
                    sock = tokio::net::TcpStream::connect(&addr).await.ok();
                }
                let Some(s) = sock.as_mut() else { continue };
                let key = match (sent * CONNECTIONS + c) % 3 {
                    0 => format!("random-{}", uuid::Uuid::new_v4()),
                    1 => {
                        let mut k = shared::auth::new_api_key();
                        k.replace_range(12..13, if &k[12..13] == "A" { "B" } else { "A" });
                        k
                    }
                    _ => format!("abk_{}", shared::crypto::random_token()),
                };
                sent += 1;
                let req = format!("GET {path} HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {key}\r\n\r\n");
                if s.write_all(req.as_bytes()).await.is_err() {
                    sock = None;
                    *counts.entry("closed".into()).or_default() += 1;
                    continue;
                }
                // Read what has arrived, without waiting for every answer (the flood does not
                // wait for its answers).
                loop {
                    match tokio::time::timeout(Duration::from_micros(1), s.read(&mut chunk)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            sock = None;
                            break;
                        }
                        Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                        Err(_) => break,
                    }
                }
                count_statuses(&mut buf, &mut counts);
            }
            if let Some(mut s) = sock {
                let _ = tokio::time::timeout(Duration::from_millis(500), async {
                    while let Ok(n) = s.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                })
                .await;
                count_statuses(&mut buf, &mut counts);
            }
            (sent, counts)
        });
    }
    let (mut sent, mut by_status) = (0, std::collections::BTreeMap::<String, u64>::new());
    while let Some(r) = tasks.join_next().await {
        let (n, counts) = r?;
        sent += n;
        for (k, v) in counts {
            *by_status.entry(k).or_default() += v;
        }
    }
    Ok(
        serde_json::json!({ "sent": sent, "seconds": seconds, "per_second": sent as f64 / seconds as f64, "by_status": by_status }),
    )
}

async fn paced(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let [per_second, seconds, key, body, urls @ ..] = args else {
        bail!("paced <per-second> <seconds> <api-key> <form-body> <url> [<url> …]")
    };
    anyhow::ensure!(!urls.is_empty(), "at least one URL");
    let (per_second, seconds): (f64, f64) = (per_second.parse()?, seconds.parse()?);
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let every = Duration::from_secs_f64(1.0 / per_second);
    let start = Instant::now();
    let total = (per_second * seconds) as usize;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until((start + every * i as u32).into()).await;
        let req = http
            .post(&urls[i % urls.len()])
            .header("Authorization", format!("Bearer {key}"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.clone());
        tasks.spawn(async move {
            let sent = Instant::now();
            match req.send().await {
                Ok(r) => {
                    let ours = r.headers().contains_key("x-authbridge-error");
                    let status = r.status().as_u16();
                    let _ = r.bytes().await;
                    Ok((status, ours, sent.elapsed(), Instant::now()))
                }
                Err(e) => Err(e.to_string()),
            }
        });
    }
    let offered_for = start.elapsed();
    let (mut ok, mut ours_429, mut provider_429, mut other, mut errors) = (Vec::new(), 0u64, 0u64, 0u64, 0u64);
    let mut last_ok = start;
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok((200, _, t, end)) => {
                ok.push(t.as_secs_f64() * 1000.0);
                last_ok = last_ok.max(end);
            }
            Ok((429, true, ..)) => ours_429 += 1,
            Ok((429, false, ..)) => provider_429 += 1,
            Ok(_) => other += 1,
            Err(_) => errors += 1,
        }
    }
    ok.sort_by(f64::total_cmp);
    let pct = |q: f64| ok.get(((ok.len() as f64 * q) as usize).min(ok.len().saturating_sub(1))).copied().unwrap_or(0.0);
    Ok(serde_json::json!({
        "offered": total, "offered_per_second": total as f64 / offered_for.as_secs_f64(),
        "ok": ok.len(), "ok_span_seconds": last_ok.duration_since(start).as_secs_f64(), "proxy_429": ours_429, "provider_429_relayed": provider_429, "other": other, "errors": errors,
        "ok_p50_ms": pct(0.5), "ok_p99_ms": pct(0.99), "ok_max_ms": ok.last().copied().unwrap_or(0.0),
    }))
}

/// Counts the status lines (`HTTP/1.1 401`) in `buf`, keeping a partial one for later.
fn count_statuses(buf: &mut Vec<u8>, counts: &mut std::collections::BTreeMap<String, u64>) {
    const LINE: &[u8] = b"HTTP/1.1 ";
    let mut last = 0;
    let mut i = 0;
    while i + LINE.len() + 3 <= buf.len() {
        if &buf[i..i + LINE.len()] == LINE {
            let code = String::from_utf8_lossy(&buf[i + LINE.len()..i + LINE.len() + 3]).into_owned();
            *counts.entry(code).or_default() += 1;
            i += LINE.len() + 3;
            last = i;
        } else {
            i += 1;
        }
    }
    buf.drain(..last.max(buf.len().saturating_sub(LINE.len() + 2)).min(buf.len()));
}

fn main() -> anyhow::Result<()> {
    shared::install_crypto_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let out = rt.block_on(async {
        match args.first().map(String::as_str) {
            Some("connect") => connect(&args[1..]).await,
            Some("seed") => seed(&args[1..]).await,
            Some("due") => due(&args[1..]).await,
            Some("drain") => drain(&args[1..]).await,
            Some("calls") => calls(&args[1..]).await,
            Some("fresh") => fresh(&args[1..]).await,
            Some("slowloris") => slowloris(&args[1..]).await,
            Some("keyflood") => keyflood(&args[1..]).await,
            Some("paced") => paced(&args[1..]).await,
            _ => bail!(
                "usage: authbridge-loadgen connect|seed|due|drain|calls|fresh|slowloris|keyflood|paced …  (see the source's header)"
            ),
        }
    })?;
    let mut out = out;
    if let (Some(o), Some(cpu)) = (out.as_object_mut(), own_cpu_seconds()) {
        o.insert("cpu_seconds".into(), cpu.into());
    }
    println!("{out}");
    Ok(())
}

/// This process's CPU time so far, user and system, all threads (`/proc/self/stat`'s utime and
/// stime, in the kernel's 100 Hz ticks): what a load generator took from the cores it shares
/// with what it measures.
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
