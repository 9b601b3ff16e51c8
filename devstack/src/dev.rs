//! `authbridge dev` (and `authbridge-dev`, what `scripts/dev.sh` runs): the whole system on this
//! machine, in one process, configured exactly as the services are — the README's variables
//! and providers file — plus a demo provider (the mock provider).
//!
//! What differs from running the services one by one is only what a laptop needs:
//! - defaults: the services listen on 127.0.0.1:8080/8081/8082, `AUTHBRIDGE_PUBLIC_URL` follows
//!   the gateway's address, the database is `authbridge_dev` (created when absent), the queue
//!   prefix `authbridge-dev`, the API key `dev-api-key-change-me`, and the encryption key is
//!   generated once and kept in `.authbridge-dev.key`;
//! - the demo: the mock provider on 127.0.0.1:9090 is provider `mock`, and each built-in
//!   credential provider (Kartra, Ontraport, WhatConverts, Redtail) the operator has not
//!   configured (no entry in the providers file, none of its variables set) is pointed at the
//!   mock's stand-in for its API, so every flow can be tried without accounts.
//!
//! Variables of its own (all optional), for scripts that run several at once:
//! `AUTHBRIDGE_DEV_{GATEWAY,PROXY,REFRESHER,MOCK}_PORT`, `AUTHBRIDGE_DEV_DATABASE`,
//! `AUTHBRIDGE_DEV_QUEUE_PREFIX`, `AUTHBRIDGE_DEV_API_KEY`, `AUTHBRIDGE_DEV_SESSION_TTL_SECONDS`
//! (defaults for the corresponding README variables), `AUTHBRIDGE_DEV_TOKEN_TTL_SECONDS` (the
//! demo provider's tokens, 120 s, so refreshes show within minutes) and
//! `AUTHBRIDGE_DEV_MOCK_API_BASE` (where provider `mock`'s API lives; the benchmarks point it at
//! a fast local upstream).

use base64::Engine;
use rand::RngCore;
use shared::config::Env;
use std::collections::BTreeMap;
use std::time::Duration;

const KEY_FILE: &str = ".authbridge-dev.key";

/// The key from the environment, or the one generated for this checkout.
fn dev_key() -> anyhow::Result<String> {
    let path = std::path::Path::new(KEY_FILE);
    if path.exists() {
        return Ok(std::fs::read_to_string(path)?.trim().to_owned());
    }
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let k = base64::engine::general_purpose::STANDARD.encode(raw);
    std::fs::write(path, &k)?;
    Ok(k)
}

/// The process's environment with the dev defaults filled in where a variable is unset.
pub fn environment(process: BTreeMap<String, String>) -> anyhow::Result<Env> {
    let mut vars = process;
    let dev = |vars: &BTreeMap<String, String>, k: &str, d: &str| vars.get(k).cloned().unwrap_or_else(|| d.to_owned());
    let gw_port = dev(&vars, "AUTHBRIDGE_DEV_GATEWAY_PORT", "8080");
    let defaults = [
        (auth_gateway::settings::BIND, format!("127.0.0.1:{gw_port}")),
        (api_proxy::settings::BIND, format!("127.0.0.1:{}", dev(&vars, "AUTHBRIDGE_DEV_PROXY_PORT", "8081"))),
        (token_refresher::settings::BIND, format!("127.0.0.1:{}", dev(&vars, "AUTHBRIDGE_DEV_REFRESHER_PORT", "8082"))),
        (
            shared::config::DATABASE_URL,
            format!("postgres://postgres@127.0.0.1:5432/{}", dev(&vars, "AUTHBRIDGE_DEV_DATABASE", "authbridge_dev")),
        ),
        (shared::config::QUEUE_PREFIX, dev(&vars, "AUTHBRIDGE_DEV_QUEUE_PREFIX", "authbridge-dev")),
        (shared::config::API_KEYS, dev(&vars, "AUTHBRIDGE_DEV_API_KEY", "dev-api-key-change-me")),
        (auth_gateway::settings::SESSION_TTL, dev(&vars, "AUTHBRIDGE_DEV_SESSION_TTL_SECONDS", "600")),
        (shared::config::HTTP_WORKERS, "2".to_owned()),
        (shared::config::WEBHOOK_ALLOW_PRIVATE, "true".to_owned()),
    ];
    for (k, v) in defaults {
        vars.entry(k.to_owned()).or_insert(v);
    }
    // The redirect URI is registered at providers, so the public URL follows the gateway's
    // address unless it is set.
    if !vars.contains_key(auth_gateway::settings::PUBLIC_URL) {
        let bind = &vars[auth_gateway::settings::BIND];
        let host_port = bind.replace("0.0.0.0", "localhost");
        vars.insert(auth_gateway::settings::PUBLIC_URL.to_owned(), format!("http://{host_port}"));
    }
    if !vars.contains_key(shared::config::ENCRYPTION_KEY) {
        vars.insert(shared::config::ENCRYPTION_KEY.to_owned(), dev_key()?);
    }
    Ok(Env::from_pairs(vars))
}

/// The ids the providers file defines.
fn ids_in_file(env: &Env) -> Vec<String> {
    let Some(path) = env.get(shared::config::PROVIDERS_FILE) else { return Vec::new() };
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let Ok(doc) = text.parse::<toml::Table>() else { return Vec::new() };
    doc.get("providers").and_then(|p| p.as_table()).map(|t| t.keys().cloned().collect()).unwrap_or_default()
}

/// Which providers are real and which are the demo's.
struct Demo {
    ids: Vec<String>,
}

/// Adds the demo providers to the catalog: `mock`, and the built-in credential providers the
/// operator left alone, at the mock's stand-ins.
fn add_demo(catalog: &mut shared::catalog::Catalog, env: &Env, mock_url: &str) -> Demo {
    let in_file = ids_in_file(env);
    let mut ids = Vec::new();
    if catalog.get("mock").is_none() {
        let mut mock = crate::mock_provider_entry("mock", mock_url, crate::MOCK_CLIENT_ID, crate::MOCK_CLIENT_SECRET);
        if let Some(base) = env.get("AUTHBRIDGE_DEV_MOCK_API_BASE").and_then(|b| url::Url::parse(&b).ok()) {
            mock.api_base_url = Some(base);
        }
        catalog.insert(mock);
        ids.push("mock".to_owned());
    }
    // A built-in is the operator's once the file names it or any of its variables is set.
    let built_ins = shared::catalog::Catalog::load(None, &|_| None).expect("the built-ins parse");
    let set_in_env = |id: &str| {
        built_ins
            .get(id)
            .is_some_and(|b| b.missing_configuration().iter().any(|v| env.get(v).is_some_and(|x| !x.is_empty())))
    };
    for seed in crate::seed_providers_at_mock(mock_url) {
        if !in_file.contains(&seed.id) && !set_in_env(&seed.id) {
            ids.push(seed.id.clone());
            catalog.insert(seed);
        }
    }
    Demo { ids }
}

/// Where the demo provider keeps the tokens it issued between runs, so connections made before
/// a restart keep refreshing: `AUTHBRIDGE_DEV_MOCK_STATE`, by default
/// `.authbridge-dev/mock-<database>.json`; set empty, nowhere.
fn mock_state_path(env: &Env, database_url: &str) -> Option<std::path::PathBuf> {
    match env.get("AUTHBRIDGE_DEV_MOCK_STATE") {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(p.into()),
        None => {
            let db = url::Url::parse(database_url).ok()?.path().trim_start_matches('/').to_owned();
            Some(std::path::Path::new(".authbridge-dev").join(format!("mock-{db}.json")))
        }
    }
}

/// The demo provider's tokens from the last run, if any.
fn restore_mock(state: &mock_provider::MockState, path: &std::path::Path) {
    let Ok(text) = std::fs::read_to_string(path) else { return };
    match serde_json::from_str(&text) {
        Ok(snapshot) => state.restore(snapshot),
        Err(e) => eprintln!("ignoring {}: {e} (the demo provider starts empty)", path.display()),
    }
}

/// Writes the demo provider's tokens when they change (checked every two seconds) and once
/// more at the end; written whole, then renamed into place.
async fn keep_mock(
    state: mock_provider::MockState,
    path: std::path::PathBuf,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last = String::new();
    loop {
        let now = serde_json::to_string(&state.snapshot()).unwrap_or_default();
        if now != last {
            let tmp = path.with_extension("json.tmp");
            let written = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&tmp, &now))
                .and_then(|()| std::fs::rename(&tmp, &path));
            match written {
                Ok(()) => last = now,
                Err(e) => eprintln!("cannot save the demo provider's tokens to {}: {e}", path.display()),
            }
        }
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Creates the database the URL names when it does not exist (a laptop's first run).
async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let mut admin = url::Url::parse(url)?;
    let name = admin.path().trim_start_matches('/').to_owned();
    if name.is_empty() || name == "postgres" {
        return Ok(());
    }
    admin.set_path("/postgres");
    shared::store::create_database(admin.as_str(), &name).await.map_err(|e| {
        anyhow::anyhow!(
            "PostgreSQL at {}: {e}\n  start it (scripts/services.sh does, or: pg_ctlcluster <version> main start), \
             or set AUTHBRIDGE_DATABASE_URL",
            admin.host_str().unwrap_or("?")
        )
    })?;
    Ok(())
}

/// Runs the whole system until Ctrl-C or SIGTERM (call with telemetry initialised).
pub fn run() -> anyhow::Result<()> {
    // As each service does on its own (`shared::http::run_service`): the proxy's connection cap
    // is derived from the limit.
    if let Err(e) = shared::http::raise_open_files_limit() {
        tracing::warn!(error = %e, "cannot raise the open-files limit");
    }
    let env = environment(std::env::vars().collect())?;
    let fail = |e: shared::config::ConfigErrors| anyhow::anyhow!("{e}");
    let mut gateway = auth_gateway::Settings::from_env(&env).map_err(fail)?;
    let mut proxy = api_proxy::Settings::from_env(&env).map_err(fail)?;
    let mut refresher = token_refresher::Settings::from_env(&env).map_err(fail)?;
    let token_ttl = Duration::from_secs(env.get("AUTHBRIDGE_DEV_TOKEN_TTL_SECONDS").unwrap_or("120".into()).parse()?);
    let mock_port: u16 = env.get("AUTHBRIDGE_DEV_MOCK_PORT").unwrap_or("9090".into()).parse()?;
    tokio::runtime::Runtime::new()?.block_on(async {
        ensure_database(gateway.common.database_url.expose()).await?;
        let mock = mock_provider::run(mock_provider::Settings {
            bind: format!("127.0.0.1:{mock_port}"),
            clients: vec![mock_provider::Client {
                id: crate::MOCK_CLIENT_ID.into(),
                secret: crate::MOCK_CLIENT_SECRET.into(),
                redirect_uris: vec![format!("{}/oauth/callback", gateway.public_url.as_str().trim_end_matches('/'))],
            }],
            access_token_ttl: token_ttl,
            workers: 1,
        })
        .await
        .map_err(|e| {
            anyhow::anyhow!("the demo provider cannot listen on 127.0.0.1:{mock_port}: {e} (AUTHBRIDGE_DEV_MOCK_PORT)")
        })?;
        let (stop_saving, saving) = tokio::sync::watch::channel(false);
        let saver = mock_state_path(&env, gateway.common.database_url.expose()).map(|path| {
            restore_mock(&mock.state, &path);
            tokio::spawn(keep_mock(mock.state.clone(), path, saving))
        });
        let demo = add_demo(&mut gateway.common.catalog, &env, &mock.url());
        proxy.common.catalog = gateway.common.catalog.clone();
        refresher.common.catalog = gateway.common.catalog.clone();
        let key = env.get("AUTHBRIDGE_DEV_API_KEY").unwrap_or_else(|| {
            env.get(shared::config::API_KEYS).and_then(|k| k.split(',').next().map(str::to_owned)).unwrap_or_default()
        });
        let bind_err = |what: &'static str, var: &'static str| {
            move |e: anyhow::Error| anyhow::anyhow!("the {what} cannot start: {e:#} (its address: {var})")
        };
        let gw = auth_gateway::Application::build(gateway.clone())
            .await
            .map_err(bind_err("gateway", auth_gateway::settings::BIND))?;
        let px = api_proxy::Application::build(proxy).await.map_err(bind_err("proxy", api_proxy::settings::BIND))?;
        let rf = token_refresher::Application::build(refresher)
            .await
            .map_err(bind_err("refresher", token_refresher::settings::BIND))?;
        let (gw_url, px_url, rf_url) = (gw.url(), px.url(), rf.url());
        let providers: Vec<String> = gateway
            .common
            .catalog
            .iter()
            .map(|p| {
                let kind = if demo.ids.contains(&p.id) {
                    "demo, at the mock provider".to_owned()
                } else if p.is_configured() {
                    "configured".to_owned()
                } else {
                    format!("needs {}", p.missing_configuration().join(", "))
                };
                format!("  {:<14} {kind}", p.id)
            })
            .collect();
        println!(
            r#"
authbridge is running (Ctrl-C to stop), configured from the environment (README, Configuration)

  gateway          {gw_url}        (health: {gw_url}/readyz; redirect URI {public}/oauth/callback)
  api-proxy        {px_url}        (health: {px_url}/readyz)
  token-refresher  {rf_url}/readyz
  demo provider    {mock}      (provider id `mock`; its tokens live {ttl}s)
  API key          {key}
  database         {db}

Providers:
{providers}

Walk the flow:

  # 1. your backend asks for a connect session for end user `alice`
  curl -s -X POST {gw_url}/v1/connect/sessions -H 'Authorization: Bearer {key}' \
       -H 'Content-Type: application/json' \
       -d '{{"provider":"mock","connection_id":"alice","return_url":"https://app.example/settings"}}'

  # 2. open the returned connect_url in a browser (the mock approves at once and you land on
  #    https://app.example/settings?status=connected&...), or follow it with curl, keeping
  #    the cookie that binds the flow to this "browser" (-b/-c), three redirects in all:
  url=<connect_url>
  for _ in 1 2 3; do url=$(curl -s -b jar -c jar -o /dev/null -w '%{{redirect_url}}' "$url"); echo "$url"; done

  # 3. call the provider's API through the proxy
  curl -s '{px_url}/proxy/mock/alice/contacts?limit=5' -H 'Authorization: Bearer {key}'

  # 4. watch the connection being refreshed
  curl -s {gw_url}/v1/connections/mock/alice -H 'Authorization: Bearer {key}'
"#,
            public = gateway.public_url.as_str().trim_end_matches('/'),
            mock = mock.url(),
            ttl = token_ttl.as_secs(),
            db = shared::config::redact_url(gateway.common.database_url.expose()),
            providers = providers.join("\n"),
        );
        shared::http::shutdown_signal().await;
        rf.stop().await;
        px.stop().await;
        gw.stop().await;
        let _ = stop_saving.send(true);
        if let Some(saver) = saver {
            let _ = saver.await;
        }
        mock.stop().await;
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut vars: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        vars.insert(shared::config::ENCRYPTION_KEY.into(), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into());
        environment(vars).unwrap()
    }

    #[test]
    fn the_readmes_variables_win_over_the_dev_defaults_and_the_public_url_follows_the_bind() {
        let e = env(&[]);
        assert_eq!(e.get(auth_gateway::settings::BIND).as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(e.get(auth_gateway::settings::PUBLIC_URL).as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(
            e.get(shared::config::DATABASE_URL).as_deref(),
            Some("postgres://postgres@127.0.0.1:5432/authbridge_dev")
        );
        let e = env(&[(auth_gateway::settings::BIND, "0.0.0.0:9000"), (auth_gateway::settings::SESSION_TTL, "30")]);
        assert_eq!(e.get(auth_gateway::settings::PUBLIC_URL).as_deref(), Some("http://localhost:9000"));
        let s = auth_gateway::Settings::from_env(&e).unwrap();
        assert_eq!(s.session_ttl, Duration::from_secs(30));
        let e = env(&[("AUTHBRIDGE_DEV_GATEWAY_PORT", "18080"), (shared::config::QUEUE_PREFIX, "mine")]);
        assert_eq!(e.get(auth_gateway::settings::BIND).as_deref(), Some("127.0.0.1:18080"));
        assert_eq!(e.get(shared::config::QUEUE_PREFIX).as_deref(), Some("mine"));
    }

    #[test]
    fn the_demo_leaves_alone_what_the_operator_configured() {
        let dir = std::env::temp_dir().join(format!("abdev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("providers.toml");
        std::fs::write(
            &file,
            "[providers.acme-crm]\nauthorize_url = \"https://acme.example/oauth/authorize\"\n\
             token_url = \"https://acme.example/oauth/token\"\n[providers.ontraport]\n\
             api_base_url = \"https://api.ontraport.com/1/\"\n",
        )
        .unwrap();
        let e = env(&[
            (shared::config::PROVIDERS_FILE, file.to_str().unwrap()),
            ("ACME_CRM_CLIENT_ID", "id"),
            ("ACME_CRM_CLIENT_SECRET", "secret"),
            ("KARTRA_APP_ID", "my-real-app"),
        ]);
        let mut s = auth_gateway::Settings::from_env(&e).unwrap();
        let demo = add_demo(&mut s.common.catalog, &e, "http://127.0.0.1:9090");
        assert_eq!(demo.ids, ["mock", "whatconverts", "redtail"], "kartra has its variable, ontraport its entry");
        let catalog = &s.common.catalog;
        assert!(catalog.get("acme-crm").unwrap().is_configured(), "the operator's own provider is used");
        let kartra = catalog.get("kartra").unwrap().api_base_url.as_ref().unwrap().to_string();
        assert!(!kartra.contains("127.0.0.1"), "{kartra}");
        let redtail = catalog.get("redtail").unwrap().api_base_url.as_ref().unwrap().to_string();
        assert!(redtail.starts_with("http://127.0.0.1:9090/"), "{redtail}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
