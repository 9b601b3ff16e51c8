//! Commands that work on this machine's configuration, the database and the broker directly:
//! `doctor`, `keys`, `providers check`. They read the same environment as the services.

use crate::table::render;
use crate::{exit, Keys};
use shared::config::{CommonSettings, Env, Reader};
use std::time::Duration;

/// One finding of `doctor`.
#[derive(serde::Serialize)]
struct Check {
    check: &'static str,
    /// `ok`, `warn` or `fail`.
    status: &'static str,
    detail: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn check(check: &'static str, status: &'static str, detail: impl Into<String>, fix: Option<String>) -> Check {
    Check { check, status, detail: detail.into(), fix }
}

/// The shared settings from the environment, or every problem with them.
fn settings() -> Result<CommonSettings, String> {
    let env = Env::from_process();
    let mut r = Reader::new(&env);
    let s = CommonSettings::read(&mut r);
    r.finish().map_err(|e| e.to_string())?;
    Ok(s.expect("checked"))
}

async fn within<T, E: std::fmt::Display>(f: impl std::future::Future<Output = Result<T, E>>) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(5), f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

pub async fn doctor(json: bool) -> u8 {
    let mut checks = Vec::new();
    let s = match settings() {
        Ok(s) => {
            checks.push(check("configuration", "ok", "every variable read", None));
            s
        }
        Err(e) => {
            checks.push(check(
                "configuration",
                "fail",
                e,
                Some("set or fix the variables named (README, Configuration)".into()),
            ));
            return report(checks, json);
        }
    };
    let db_url = s.database_url.expose();
    let store = match shared::store::Store::new(db_url, 1, s.keyring.clone()) {
        Ok(store) => Some(store),
        Err(e) => {
            checks.push(check("postgresql", "fail", e.to_string(), Some("fix AUTHBRIDGE_DATABASE_URL".into())));
            None
        }
    };
    if let Some(store) = &store {
        match within(store.ping()).await {
            Ok(()) => {
                let version = within(store.schema_version()).await.ok().flatten();
                let latest = shared::store::Store::latest_schema_version();
                let (status, detail, fix) = match version {
                    Some(v) if v == latest => {
                        ("ok", format!("{} (schema {v})", shared::config::redact_url(db_url)), None)
                    }
                    Some(v) if v > latest => (
                        "warn",
                        format!("schema {v} is newer than this build's {latest}"),
                        Some("run the newer build, or a build of the same release".into()),
                    ),
                    other => (
                        "warn",
                        format!("schema {} of {latest}", other.map_or("none".into(), |v| v.to_string())),
                        Some("the services migrate it when they start".into()),
                    ),
                };
                checks.push(check("postgresql", status, detail, fix));
                match within(store.key_usage()).await {
                    Ok(usage) => {
                        let unknown: Vec<String> = usage
                            .iter()
                            .filter(|(k, _)| !s.keyring.knows(k))
                            .map(|(k, n)| format!("{n} connections sealed with key {k}"))
                            .collect();
                        let old: i64 = usage.iter().filter(|(k, _)| k != s.keyring.primary_id()).map(|(_, n)| n).sum();
                        if !unknown.is_empty() {
                            checks.push(check(
                                "encryption key",
                                "fail",
                                format!("{} cannot be opened", unknown.join(", ")),
                                Some("add the key they were sealed with to AUTHBRIDGE_ENCRYPTION_OLD_KEYS".into()),
                            ));
                        } else if old > 0 {
                            checks.push(check(
                                "encryption key",
                                "warn",
                                format!(
                                    "primary {}; {old} connections still sealed with an older key",
                                    s.keyring.primary_id()
                                ),
                                Some("authbridge keys reencrypt".into()),
                            ));
                        } else {
                            checks.push(check(
                                "encryption key",
                                "ok",
                                format!("primary {}", s.keyring.primary_id()),
                                None,
                            ));
                        }
                    }
                    Err(e) => {
                        checks.push(check("encryption key", "warn", format!("cannot count sealed data: {e}"), None))
                    }
                }
            }
            Err(e) => {
                let missing = e.contains("does not exist");
                let fix = if missing {
                    let name = url::Url::parse(db_url).ok().map(|u| u.path().trim_start_matches('/').to_owned());
                    format!("create the database: createdb -h <host> -U <user> {}", name.unwrap_or_default())
                } else {
                    "start PostgreSQL (Debian: pg_ctlcluster <version> main start), or fix AUTHBRIDGE_DATABASE_URL"
                        .into()
                };
                checks.push(check(
                    "postgresql",
                    "fail",
                    format!("{}: {e}", shared::config::redact_url(db_url)),
                    Some(fix),
                ));
            }
        }
    }
    let amqp = s.amqp_url.expose();
    match within(shared::messaging::connect(amqp, "authbridge-doctor")).await {
        Ok(conn) => {
            let _ = conn.close(200, "doctor".into()).await;
            checks.push(check("rabbitmq", "ok", shared::config::redact_url(amqp), None));
        }
        Err(e) => checks.push(check(
            "rabbitmq",
            "fail",
            format!("{}: {e}", shared::config::redact_url(amqp)),
            Some("start RabbitMQ (rabbitmq-server -detached), or fix AUTHBRIDGE_AMQP_URL".into()),
        )),
    }
    let unconfigured: Vec<String> = s
        .catalog
        .iter()
        .filter(|p| !p.is_configured())
        .map(|p| format!("{} (needs {})", p.id, p.missing_configuration().join(", ")))
        .collect();
    let total = s.catalog.iter().count();
    if unconfigured.is_empty() {
        checks.push(check("providers", "ok", format!("{total} configured"), None));
    } else {
        checks.push(check(
            "providers",
            "warn",
            format!("{} of {total} not configured: {}", unconfigured.len(), unconfigured.join("; ")),
            Some("set the variables named for the providers you use (README, Providers)".into()),
        ));
    }
    report(checks, json)
}

fn report(checks: Vec<Check>, json: bool) -> u8 {
    let failed = checks.iter().any(|c| c.status == "fail");
    if json {
        println!("{}", serde_json::to_string_pretty(&checks).unwrap_or_default());
    } else {
        let rows: Vec<Vec<String>> =
            checks.iter().map(|c| vec![c.check.into(), c.status.into(), c.detail.clone()]).collect();
        print!("{}", render(&["check", "status", "detail"], &rows));
        for c in checks.iter().filter(|c| c.fix.is_some()) {
            println!("→ {}: {}", c.check, c.fix.as_deref().unwrap_or_default());
        }
    }
    if failed {
        exit::FAILED
    } else {
        exit::OK
    }
}

pub async fn keys(k: Keys, json: bool) -> u8 {
    if let Keys::Rotate = k {
        return rotate(json);
    }
    let s = match settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("authbridge: {e}");
            return exit::USAGE;
        }
    };
    let store = match shared::store::Store::new(s.database_url.expose(), 2, s.keyring.clone()) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("authbridge: {e}");
            return exit::USAGE;
        }
    };
    if let Err(e) = within(store.migrate()).await {
        eprintln!("authbridge: PostgreSQL: {e}");
        return exit::UNREACHABLE;
    }
    let result = async {
        if let Keys::Reencrypt = k {
            let total: i64 =
                store.key_usage().await?.iter().filter(|(id, _)| id != s.keyring.primary_id()).map(|(_, n)| n).sum();
            let mut done = 0usize;
            loop {
                let n = store.reencrypt_batch(200).await?;
                done += n;
                if !json {
                    eprint!("\rre-sealed {done} of about {total}");
                }
                if n == 0 {
                    break;
                }
            }
            if !json {
                eprintln!();
            }
        }
        store.key_usage().await
    }
    .await;
    match result {
        Ok(usage) => {
            let rows: Vec<Vec<String>> = usage
                .iter()
                .map(|(id, n)| {
                    let role = if id == s.keyring.primary_id() {
                        "primary"
                    } else if s.keyring.knows(id) {
                        "old"
                    } else {
                        "NOT CONFIGURED"
                    };
                    vec![id.clone(), role.into(), n.to_string()]
                })
                .collect();
            if json {
                let v: Vec<_> =
                    usage.iter().map(|(id, n)| serde_json::json!({"key_id": id, "connections": n})).collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", render(&["key id", "key", "connections"], &rows));
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("authbridge: {e}");
            if e.is_unavailable() {
                exit::UNREACHABLE
            } else {
                exit::FAILED
            }
        }
    }
}

fn rotate(json: bool) -> u8 {
    use base64::Engine;
    use rand::RngCore;
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let key = base64::engine::general_purpose::STANDARD.encode(raw);
    let id = shared::crypto::fingerprint(&raw);
    let current = std::env::var(shared::config::ENCRYPTION_KEY).unwrap_or_else(|_| "<the current key>".into());
    let old = std::env::var(shared::config::ENCRYPTION_OLD_KEYS).ok().filter(|o| !o.is_empty());
    let old_keys = match old {
        Some(o) => format!("{current},{o}"),
        None => current,
    };
    if json {
        println!("{}", serde_json::json!({ "key": key, "key_id": id }));
        return exit::OK;
    }
    println!(
        "new key (id {id}): {key}\n\n\
         To move to it without downtime:\n\
         1. On every service set\n     AUTHBRIDGE_ENCRYPTION_KEY={key}\n     AUTHBRIDGE_ENCRYPTION_OLD_KEYS={old_keys}\n   \
         and restart them one at a time (each reads both keys; what they seal from now on uses the new one).\n\
         2. Run `authbridge keys reencrypt` with the same variables.\n\
         3. When `authbridge keys usage` shows only {id}, drop the old key from AUTHBRIDGE_ENCRYPTION_OLD_KEYS."
    );
    exit::OK
}

/// Checks the catalog this environment configures, then tries each configured provider's
/// token and API endpoints (any HTTP answer counts as reachable).
pub async fn check_providers(json: bool) -> u8 {
    let env = Env::from_process();
    let file = env.get(shared::config::PROVIDERS_FILE);
    let catalog = match shared::catalog::Catalog::load(file.as_deref(), &|k| env.get(k)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("authbridge: {}: {e}", shared::config::PROVIDERS_FILE);
            return exit::USAGE;
        }
    };
    let http = shared::oauth::provider_http_client(Duration::from_secs(5));
    let probe = |url: Option<url::Url>| {
        let http = http.clone();
        async move {
            let Some(url) = url else { return "-".to_owned() };
            match http.head(url.clone()).send().await {
                Ok(r) => format!("reachable ({})", r.status().as_u16()),
                Err(e) if e.is_timeout() => "no answer within 5 s".into(),
                Err(_) => format!("unreachable: {}", url.host_str().unwrap_or("?")),
            }
        }
    };
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for p in catalog.iter() {
        let configured = p.is_configured();
        let (token, api) = if configured {
            (probe(p.token_url.clone()).await, probe(p.api_base_url.as_ref().map(|_| p.api_endpoint())).await)
        } else {
            ("-".into(), "-".into())
        };
        let needs = p.missing_configuration().join(", ");
        rows.push(vec![
            p.id.clone(),
            p.auth.as_str().into(),
            if configured { "yes".into() } else { format!("no: {needs}") },
            token.clone(),
            api.clone(),
        ]);
        out.push(serde_json::json!({"id": p.id, "auth": p.auth.as_str(), "configured": configured,
            "missing_configuration": p.missing_configuration(), "token_endpoint": token, "api": api}));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!("catalog: built-ins{}", file.map(|f| format!(" + {f}")).unwrap_or_default());
        print!("{}", render(&["provider", "auth", "configured", "token endpoint", "api"], &rows));
    }
    exit::OK
}
