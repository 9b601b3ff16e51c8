//! What the fault cases share: many connections at once, background proxy traffic, the
//! invariants, server control, and the report.

use crate::support::{eventually, TestApp};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connects `ids` through the whole browser flow, `parallel` at a time.
pub async fn connect_all(app: &TestApp, ids: &[String], parallel: usize) {
    use futures_util::stream::{self, StreamExt};
    stream::iter(ids.iter())
        .for_each_concurrent(parallel, |id| async move {
            let (landed, _) = app.connect("mock", id).await;
            assert!(landed.as_str().contains("status=connected"), "{id}: {landed}");
        })
        .await;
}

pub fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Proxied calls in the background, round robin over `ids`, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub statuses: Arc<Mutex<BTreeMap<u16, u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(app: &TestApp, ids: Vec<String>, workers: usize, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let statuses = Arc::new(Mutex::new(BTreeMap::new()));
        let ids = Arc::new(ids);
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (stop, statuses, ids) = (stop.clone(), statuses.clone(), ids.clone());
            let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
            let base = app.px("/proxy/mock");
            let key = format!("Bearer {}", app.stack.api_key);
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let id = &ids[i % ids.len()];
                    i += workers;
                    let status = match http.get(format!("{base}/{id}/ping")).header("Authorization", &key).send().await
                    {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                    tokio::time::sleep(pause).await;
                }
            }));
        }
        Self { stop, statuses, tasks }
    }

    pub async fn stop(self) -> BTreeMap<u16, u64> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let s = self.statuses.lock().unwrap().clone();
        s
    }
}

/// What the cases assert at the end: every connection exists, is active, holds a token that is
/// still valid, and was refreshed at least `min_version - 1` times; the provider never saw a
/// refresh token twice (outside a configured reuse window) nor a refresh after expiry.
pub async fn assert_nothing_lost(app: &TestApp, ids: &[String], min_version: i64) {
    let store = app.stack.store();
    let now = chrono::Utc::now();
    for id in ids {
        let c = store.get_connection("mock", id).await.unwrap().unwrap_or_else(|| panic!("connection {id} was lost"));
        assert_eq!(c.status, shared::store::ConnectionStatus::Active, "{id}: {:?}", c.last_error);
        assert!(c.expires_at.unwrap() > now, "{id} holds an expired token");
        assert!(c.token_version >= min_version, "{id} was refreshed {} times", c.token_version - 1);
        assert!(c.refresh_due_at.is_some(), "{id} has no refresh scheduled");
    }
    let stats = app.mock_stats();
    assert_eq!(stats.refresh_rejected, 0, "a refresh token was used twice or refused");
    // The outbox drains: every committed event reached RabbitMQ.
    eventually("the outbox to drain", Duration::from_secs(30), || async {
        (store.outbox_len().await.unwrap() == 0).then_some(())
    })
    .await;
}

/// Waits until every connection's token version reaches `version`; returns how long it took.
pub async fn wait_refreshed(app: &TestApp, ids: &[String], version: i64, limit: Duration) -> Duration {
    let start = Instant::now();
    let store = app.stack.store();
    eventually("every connection to be refreshed", limit, || async {
        for id in ids {
            let c = store.get_connection("mock", id).await.ok()??;
            if c.token_version < version {
                return None;
            }
        }
        Some(())
    })
    .await;
    start.elapsed()
}

pub async fn versions(app: &TestApp, ids: &[String]) -> Vec<i64> {
    let store = app.stack.store();
    let mut v = Vec::new();
    for id in ids {
        v.push(store.get_connection("mock", id).await.unwrap().unwrap().token_version);
    }
    v
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd} could not run: {e}"));
    assert!(out.status.success(), "{cmd} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Stops the RabbitMQ application; the guard starts it again even if the test fails.
pub struct RabbitDown;

impl RabbitDown {
    pub fn stop() -> Self {
        run("rabbitmqctl", &["-q", "stop_app"]);
        Self
    }
    pub fn start(self) {
        drop(self);
    }
}

impl Drop for RabbitDown {
    fn drop(&mut self) {
        run("rabbitmqctl", &["-q", "start_app"]);
        run("rabbitmqctl", &["-q", "await_startup"]);
    }
}

/// Restarts the local PostgreSQL cluster (every session is cut).
pub fn restart_postgres() {
    let versions = std::fs::read_dir("/etc/postgresql").expect("a Debian PostgreSQL cluster");
    for v in versions.flatten() {
        let v = v.file_name().to_string_lossy().into_owned();
        run("pg_ctlcluster", &["--skip-systemctl-redirect", &v, "main", "restart"]);
    }
}

/// Polls a readiness URL; returns when its status equals `want`.
pub async fn wait_ready(url: &str, want: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    eventually(&format!("{url} to answer {want}"), limit, || async {
        let s = http.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
        (s == want).then_some(())
    })
    .await;
    start.elapsed()
}

/// Appends one case's figures to `target/reliability-report.md`.
pub fn report(case: &str, figures: &[(&str, String)]) {
    use std::io::Write;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let _ = std::fs::create_dir_all(&dir);
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("reliability-report.md")).unwrap();
    let _ = writeln!(f, "\n### {case}\n");
    for (k, v) in figures {
        let _ = writeln!(f, "- {k}: {v}");
    }
    println!("{case}: {figures:?}");
}

pub fn fmt_statuses(s: &BTreeMap<u16, u64>) -> String {
    s.iter()
        .map(|(k, v)| if *k == 0 { format!("no answer: {v}") } else { format!("{k}: {v}") })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Stops the local PostgreSQL cluster; the guard starts it again even if the test fails.
pub struct PostgresDown;

fn pg_clusters(action: &str) {
    for v in std::fs::read_dir("/etc/postgresql").expect("a Debian PostgreSQL cluster").flatten() {
        let v = v.file_name().to_string_lossy().into_owned();
        run("pg_ctlcluster", &["--skip-systemctl-redirect", &v, "main", action]);
    }
}

impl PostgresDown {
    pub fn stop() -> Self {
        pg_clusters("stop");
        Self
    }
    pub fn start(self) {
        drop(self);
    }
}

impl Drop for PostgresDown {
    fn drop(&mut self) {
        pg_clusters("start");
    }
}
