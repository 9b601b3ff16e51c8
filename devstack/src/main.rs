//! `authbridge-dev`: the whole system on this machine, against the local PostgreSQL and
//! RabbitMQ, with the mock provider as a demo provider. Prints the URLs and a walk-through.
//!
//! Environment (all optional): `AUTHBRIDGE_DEV_DATABASE` (database name, default `authbridge_dev`),
//! `AUTHBRIDGE_ENCRYPTION_KEY` (default: a key generated once and kept in `.authbridge-dev.key`),
//! `AUTHBRIDGE_DEV_API_KEY` (default `dev-api-key-change-me`), `AUTHBRIDGE_DEV_TOKEN_TTL_SECONDS`
//! (lifetime of demo tokens, default 120, so refreshes are visible within minutes),
//! `AUTHBRIDGE_DEV_{GATEWAY,PROXY,REFRESHER,MOCK}_PORT` (8080, 8081, 8082, 9090),
//! `AUTHBRIDGE_DEV_QUEUE_PREFIX` (`authbridge-dev`), `AUTHBRIDGE_DEV_SESSION_TTL_SECONDS` (600), `AUTHBRIDGE_DEV_MOCK_API_BASE` (where the
//! `mock` provider's API lives; default: the mock provider itself — the benchmarks point it at
//! a fast local upstream).

use base64::Engine;
use rand::RngCore;
use std::time::Duration;

fn keyring() -> anyhow::Result<shared::crypto::Keyring> {
    let key = match std::env::var(shared::config::ENCRYPTION_KEY) {
        Ok(k) => k,
        Err(_) => {
            let path = std::path::Path::new(".authbridge-dev.key");
            if path.exists() {
                std::fs::read_to_string(path)?.trim().to_owned()
            } else {
                let mut raw = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut raw);
                let k = base64::engine::general_purpose::STANDARD.encode(raw);
                std::fs::write(path, &k)?;
                k
            }
        }
    };
    Ok(shared::crypto::Keyring::from_base64(&key, None, &[])?)
}

fn main() -> anyhow::Result<()> {
    let _telemetry = shared::telemetry::init("authbridge-dev");
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let opts = devstack::StackOptions {
        token_ttl: Duration::from_secs(env("AUTHBRIDGE_DEV_TOKEN_TTL_SECONDS", "120").parse()?),
        refreshers: 1,
        gateway_port: env("AUTHBRIDGE_DEV_GATEWAY_PORT", "8080").parse()?,
        proxy_port: env("AUTHBRIDGE_DEV_PROXY_PORT", "8081").parse()?,
        refresher_port: env("AUTHBRIDGE_DEV_REFRESHER_PORT", "8082").parse()?,
        mock_port: env("AUTHBRIDGE_DEV_MOCK_PORT", "9090").parse()?,
        database: Some(env("AUTHBRIDGE_DEV_DATABASE", "authbridge_dev")),
        queue_prefix: Some(env("AUTHBRIDGE_DEV_QUEUE_PREFIX", "authbridge-dev")),
        keyring: keyring()?,
        api_key: env("AUTHBRIDGE_DEV_API_KEY", "dev-api-key-change-me"),
        sweep_interval: Duration::from_secs(30),
        sweep_grace: Duration::from_secs(30),
        http_workers: 2,
        session_ttl: Duration::from_secs(env("AUTHBRIDGE_DEV_SESSION_TTL_SECONDS", "600").parse()?),
        mock_api_base: std::env::var("AUTHBRIDGE_DEV_MOCK_API_BASE").ok(),
        // The connect pages' branding (AUTHBRIDGE_CONNECT_*), as the gateway reads it.
        ui: auth_gateway::settings::UiSettings::from_env(&shared::config::Env::from_process())
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        ..Default::default()
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let stack = devstack::Stack::start(opts).await?;
        let key = &stack.api_key;
        let gw = stack.gateway.url();
        let px = stack.proxy.url();
        println!(
            r#"
authbridge is running (Ctrl-C to stop)

  gateway          {gw}        (health: {gw}/readyz)
  api-proxy        {px}        (health: {px}/readyz)
  token-refresher  {rf}/readyz
  mock provider    {mock}      (provider id `mock`; its tokens live {ttl}s)
  API key          {key}

Walk the flow:

  # 1. your backend asks for a connect session for end user `alice`
  curl -s -X POST {gw}/v1/connect/sessions -H 'Authorization: Bearer {key}' \
       -H 'Content-Type: application/json' \
       -d '{{"provider":"mock","connection_id":"alice","return_url":"https://app.example/settings"}}'

  # 2. open the returned connect_url in a browser (the mock approves at once and you land on
  #    https://app.example/settings?status=connected&...), or follow it with curl, keeping
  #    the cookie that binds the flow to this "browser" (-b/-c), three redirects in all:
  url=<connect_url>
  for _ in 1 2 3; do url=$(curl -s -b jar -c jar -o /dev/null -w '%{{redirect_url}}' "$url"); echo "$url"; done

  # 3. call the provider's API through the proxy
  curl -s '{px}/proxy/mock/alice/contacts?limit=5' -H 'Authorization: Bearer {key}'

  # 4. watch the connection being refreshed
  curl -s {gw}/v1/connections/mock/alice -H 'Authorization: Bearer {key}'
"#,
            rf = stack.refreshers[0].url(),
            mock = stack.mock.url(),
            ttl = stack.opts.token_ttl.as_secs(),
        );
        shared::http::shutdown_signal().await;
        stack.stop().await;
        anyhow::Ok(())
    })
}
