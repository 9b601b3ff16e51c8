//! The whole system in one process: the mock provider, the gateway, the proxy and one or more
//! refreshers, against the real PostgreSQL and RabbitMQ. Used by `authbridge-dev` (the README's
//! run command) and by the end-to-end tests, which start one stack per test with its own
//! database and its own queue prefix so tests run in parallel.

pub mod dev;
pub mod receiver;

use shared::catalog::{BodyFormat, ClientAuth, Provider};
use shared::config::{ApiKeys, CommonSettings, Secret};
use shared::crypto::Keyring;
use std::time::Duration;
use url::Url;

/// The maintenance database the tests create their databases from.
pub const ADMIN_DATABASE_URL_VAR: &str = "AUTHBRIDGE_TEST_ADMIN_DATABASE_URL";
pub const DEFAULT_ADMIN_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn admin_database_url() -> String {
    std::env::var(ADMIN_DATABASE_URL_VAR).unwrap_or_else(|_| DEFAULT_ADMIN_DATABASE_URL.to_owned())
}

/// A provider entry pointing at a mock provider.
pub fn mock_provider_entry(id: &str, mock_url: &str, client_id: &str, client_secret: &str) -> Provider {
    let u = |p: &str| Url::parse(&format!("{mock_url}{p}")).expect("mock URL");
    Provider {
        display_name: format!("Mock provider ({id})"),
        revocation_url: Some(u("/oauth/revoke")),
        issuer: Some(mock_url.trim_end_matches('/').to_owned()),
        api_base_url: Some(u("/api/")),
        scopes: vec!["read".into(), "write".into()],
        token_request_format: BodyFormat::Form,
        client_auth: ClientAuth::Basic,
        client_id: Some(client_id.to_owned()),
        client_secret: Some(Secret::new(client_secret.to_owned())),
        ..Provider::oauth2(id, u("/oauth/authorize"), u("/oauth/token"))
    }
}

/// The operator's values the mock's API stand-ins accept (`mock_provider::apis::Accounts::demo`).
pub const MOCK_KARTRA_APP_ID: &str = "demo-app";
pub const MOCK_REDTAIL_API_KEY: &str = "demo-partner-key";

/// The built-in credential providers (Kartra, Ontraport, WhatConverts, Redtail) exactly as the
/// catalog defines them, with their APIs at the mock provider's stand-ins and the operator's
/// values the stand-ins accept.
pub fn seed_providers_at_mock(mock_url: &str) -> Vec<Provider> {
    let toml = format!(
        "[providers.kartra]\napi_base_url = \"{mock_url}/kartra/api\"\n\
         [providers.ontraport]\napi_base_url = \"{mock_url}/ontraport/1/\"\n\
         [providers.whatconverts]\napi_base_url = \"{mock_url}/whatconverts/api/v1/\"\n\
         [providers.redtail]\napi_base_url = \"{mock_url}/redtail/api/public/v1/\"\n"
    );
    let env = |k: &str| match k {
        "KARTRA_APP_ID" => Some(MOCK_KARTRA_APP_ID.to_owned()),
        "REDTAIL_API_KEY" => Some(MOCK_REDTAIL_API_KEY.to_owned()),
        _ => None,
    };
    let catalog = shared::catalog::Catalog::from_toml(&toml, &env).expect("the seed entries at the mock parse");
    ["kartra", "ontraport", "whatconverts", "redtail"]
        .into_iter()
        .map(|id| catalog.get(id).expect("built in").clone())
        .collect()
}

/// How to start a stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Lifetime of access tokens the mock provider issues.
    pub token_ttl: Duration,
    pub refreshers: usize,
    /// Proxy replicas (the first is `Stack::proxy`, the others `Stack::more_proxies`).
    pub proxies: usize,
    /// Ports; 0 picks a free one.
    pub gateway_port: u16,
    pub proxy_port: u16,
    pub refresher_port: u16,
    pub mock_port: u16,
    /// `None`: a fresh database, dropped on stop. `Some(name)`: that database, kept.
    pub database: Option<String>,
    /// `None`: a fresh queue prefix, deleted on stop.
    pub queue_prefix: Option<String>,
    pub keyring: Keyring,
    pub api_key: String,
    pub sweep_interval: Duration,
    pub sweep_grace: Duration,
    pub http_workers: usize,
    pub session_ttl: Duration,
    pub return_url_allowlist: Vec<String>,
    pub rate_limit_per_key: u32,
    pub rate_limit_per_connection: u32,
    /// Failed key lookups per second per client address (0: no limit).
    pub auth_failures_per_address: u32,
    /// The token `/metrics` asks for, if any.
    pub metrics_token: Option<String>,
    /// Where the `mock` provider's API lives, when not at the mock provider itself.
    pub mock_api_base: Option<String>,
    /// Serve the gateway and the proxy over HTTPS with these files.
    pub tls: Option<shared::config::TlsFiles>,
    /// The proxy's head timeout and connection cap.
    pub proxy_head_timeout: Duration,
    pub proxy_max_connections: usize,
    /// `None`: the proxy's default for its cap and head timeout.
    pub proxy_accept_rate_at_cap: Option<u32>,
    /// How long the proxy serves from memory while PostgreSQL cannot be reached.
    pub proxy_stale: Duration,
    /// The proxy's HTTP/1.1 code: by default what `AUTHBRIDGE_PROXY_HTTP_STACK` names in the
    /// tests' environment (the test command runs the proxy's suite once with each), else `own`.
    pub proxy_http_stack: api_proxy::settings::HttpStack,
    /// How often credential connections are checked again (the catalog's default: daily).
    pub credential_recheck: Option<Duration>,
    /// The connect pages' branding and framing.
    pub ui: auth_gateway::settings::UiSettings,
    /// Sends to one webhook endpoint at once.
    pub webhook_per_endpoint: usize,
    /// How long refreshes may fail before `connection.refresh_failing`.
    pub refresh_failing_after: Duration,
    /// A webhook endpoint as `AUTHBRIDGE_WEBHOOK_URL` and `_SECRET` configure it.
    pub webhook: Option<auth_gateway::settings::ConfiguredWebhook>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(3600),
            refreshers: 1,
            proxies: 1,
            gateway_port: 0,
            proxy_port: 0,
            refresher_port: 0,
            mock_port: 0,
            database: None,
            queue_prefix: None,
            keyring: Keyring::random(),
            api_key: format!("test-key-{}", uuid::Uuid::new_v4().simple()),
            sweep_interval: Duration::from_secs(1),
            sweep_grace: Duration::from_secs(3),
            http_workers: 1,
            session_ttl: Duration::from_secs(600),
            return_url_allowlist: vec![],
            rate_limit_per_key: 0,
            rate_limit_per_connection: 0,
            auth_failures_per_address: 0,
            metrics_token: None,
            tls: None,
            mock_api_base: None,
            proxy_head_timeout: Duration::from_secs(10),
            proxy_max_connections: api_proxy::settings::default_max_connections(),
            proxy_accept_rate_at_cap: None,
            proxy_stale: Duration::from_secs(300),
            proxy_http_stack: std::env::var(api_proxy::settings::HTTP_STACK)
                .ok()
                .map(|v| {
                    api_proxy::settings::HttpStack::parse(&v).unwrap_or_else(|v| panic!("stack {v:?}: own or hyper"))
                })
                .unwrap_or(api_proxy::settings::HttpStack::Own),
            credential_recheck: None,
            ui: Default::default(),
            webhook_per_endpoint: 4,
            refresh_failing_after: Duration::from_secs(900),
            webhook: None,
        }
    }
}

fn proxy_settings(common: &CommonSettings, api_keys: &ApiKeys, opts: &StackOptions, port: u16) -> api_proxy::Settings {
    api_proxy::Settings {
        common: common.clone(),
        api_keys: api_keys.clone(),
        bind: format!("127.0.0.1:{port}"),
        upstream_timeout: Duration::from_secs(5),
        max_body: 1024 * 1024,
        retry_body: 64 * 1024,
        workers: opts.http_workers,
        token_cache_ttl: Duration::from_secs(30),
        head_timeout: opts.proxy_head_timeout,
        stale: opts.proxy_stale,
        max_connections: opts.proxy_max_connections,
        accept_rate_at_cap: opts.proxy_accept_rate_at_cap.unwrap_or_else(|| {
            api_proxy::settings::default_accept_rate_at_cap(opts.proxy_max_connections, opts.proxy_head_timeout)
        }),
        http_stack: opts.proxy_http_stack,
        tls: opts.tls.clone(),
    }
}

pub const MOCK_CLIENT_ID: &str = "authbridge-client";
pub const MOCK_CLIENT_SECRET: &str = "s3cret:with&odd=chars";

/// A running stack.
pub struct Stack {
    pub mock: mock_provider::MockServer,
    pub gateway: auth_gateway::Application,
    pub proxy: api_proxy::Application,
    pub more_proxies: Vec<api_proxy::Application>,
    pub refreshers: Vec<token_refresher::Application>,
    pub common: CommonSettings,
    pub api_key: String,
    pub database_url: String,
    pub opts: StackOptions,
    ephemeral_db: Option<String>,
    ephemeral_prefix: bool,
}

impl Stack {
    pub async fn start(opts: StackOptions) -> anyhow::Result<Self> {
        shared::install_crypto_provider();
        let admin = admin_database_url();
        let (db_name, ephemeral_db) = match &opts.database {
            Some(n) => (n.clone(), None),
            None => {
                let n = format!("abtest_{}", uuid::Uuid::new_v4().simple());
                (n.clone(), Some(n))
            }
        };
        let database_url = shared::store::create_database(&admin, &db_name).await?;
        let (prefix, ephemeral_prefix) = match &opts.queue_prefix {
            Some(p) => (p.clone(), false),
            None => (format!("abtest.{}", &uuid::Uuid::new_v4().simple().to_string()[..12]), true),
        };

        // The gateway's listener comes first: its address is the redirect URI the mock checks.
        let gw_listener = std::net::TcpListener::bind(("127.0.0.1", opts.gateway_port))?;
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let public_url = format!("{scheme}://{}", gw_listener.local_addr()?);
        let mock = mock_provider::run(mock_provider::Settings {
            bind: format!("127.0.0.1:{}", opts.mock_port),
            clients: vec![mock_provider::Client {
                id: MOCK_CLIENT_ID.into(),
                secret: MOCK_CLIENT_SECRET.into(),
                redirect_uris: vec![format!("{public_url}/oauth/callback")],
            }],
            access_token_ttl: opts.token_ttl,
            workers: 2,
        })
        .await?;

        let mut common = CommonSettings::for_tests(&database_url, &prefix);
        common.keyring = opts.keyring.clone();
        common.rate_limit_per_key = opts.rate_limit_per_key;
        common.rate_limit_per_connection = opts.rate_limit_per_connection;
        common.auth_failures_per_address = opts.auth_failures_per_address;
        common.metrics_token = opts.metrics_token.clone().map(Secret::new);
        common.refresh_failing_after = opts.refresh_failing_after;
        let mut mock_entry = mock_provider_entry("mock", &mock.url(), MOCK_CLIENT_ID, MOCK_CLIENT_SECRET);
        if let Some(base) = &opts.mock_api_base {
            mock_entry.api_base_url = Some(Url::parse(base)?);
        }
        common.catalog.insert(mock_entry);
        let mut json_variant = mock_provider_entry("mockjson", &mock.url(), MOCK_CLIENT_ID, MOCK_CLIENT_SECRET);
        json_variant.token_request_format = BodyFormat::Json;
        json_variant.client_auth = ClientAuth::Body;
        json_variant.pkce = false;
        // No declared issuer: the `iss` the mock sends is checked against the authorize URL.
        json_variant.issuer = None;
        common.catalog.insert(json_variant);
        // Same provider, but its API lives on a port where nothing listens.
        let mut down = mock_provider_entry("mockdown", &mock.url(), MOCK_CLIENT_ID, MOCK_CLIENT_SECRET);
        down.api_base_url = Some(Url::parse("http://127.0.0.1:9/api/")?);
        common.catalog.insert(down);
        // Machine to machine: the mock's client fetches tokens for itself.
        let mut machine = mock_provider_entry("mockmachine", &mock.url(), MOCK_CLIENT_ID, MOCK_CLIENT_SECRET);
        machine.auth = shared::catalog::AuthMode::OAuth2ClientCredentials;
        machine.authorize_url = None;
        common.catalog.insert(machine);
        for mut p in seed_providers_at_mock(&mock.url()) {
            if let (Some(every), Some(spec)) = (opts.credential_recheck, p.credentials.as_mut()) {
                std::sync::Arc::make_mut(spec).recheck = every;
            }
            common.catalog.insert(p);
        }
        let api_keys = ApiKeys::new([opts.api_key.as_str()]);

        let gateway = auth_gateway::Application::build_with_listener(
            auth_gateway::Settings {
                common: common.clone(),
                api_keys: api_keys.clone(),
                bind: gw_listener.local_addr()?.to_string(),
                public_url: Url::parse(&public_url)?,
                session_ttl: opts.session_ttl,
                return_url_allowlist: opts
                    .return_url_allowlist
                    .iter()
                    .map(|u| Url::parse(u))
                    .collect::<Result<_, _>>()?,
                workers: opts.http_workers,
                tls: opts.tls.clone(),
                ui: opts.ui.clone(),
                webhook: opts.webhook.clone(),
            },
            gw_listener,
        )
        .await?;
        let proxy = api_proxy::Application::build(proxy_settings(&common, &api_keys, &opts, opts.proxy_port)).await?;
        let mut more_proxies = Vec::new();
        for _ in 1..opts.proxies {
            more_proxies.push(api_proxy::Application::build(proxy_settings(&common, &api_keys, &opts, 0)).await?);
        }
        let mut stack = Self {
            mock,
            gateway,
            proxy,
            more_proxies,
            refreshers: Vec::new(),
            common,
            api_key: opts.api_key.clone(),
            database_url,
            opts: opts.clone(),
            ephemeral_db,
            ephemeral_prefix,
        };
        for i in 0..opts.refreshers {
            let port = if i == 0 { opts.refresher_port } else { 0 };
            stack.add_refresher(port).await?;
        }
        Ok(stack)
    }

    pub fn refresher_settings(&self, port: u16) -> token_refresher::Settings {
        token_refresher::Settings {
            common: self.common.clone(),
            bind: format!("127.0.0.1:{port}"),
            prefetch: 16,
            sweep_interval: self.opts.sweep_interval,
            sweep_grace: self.opts.sweep_grace,
            webhook_prefetch: 64,
            webhook_per_endpoint: self.opts.webhook_per_endpoint,
        }
    }

    /// Starts one more refresher replica.
    pub async fn add_refresher(&mut self, port: u16) -> anyhow::Result<()> {
        let r = token_refresher::Application::build(self.refresher_settings(port)).await?;
        self.refreshers.push(r);
        Ok(())
    }

    /// A store handle on the stack's database, for assertions.
    pub fn store(&self) -> shared::store::Store {
        shared::store::Store::new(&self.database_url, 2, self.common.keyring.clone()).expect("store")
    }

    /// A broker handle on the stack's queues, for assertions and fault injection.
    pub fn broker(&self) -> shared::messaging::Broker {
        shared::messaging::Broker::new(self.common.amqp_url.clone(), &self.common.queue_prefix, "devstack-test")
    }

    /// Stops everything; an ephemeral database and queue prefix are removed.
    pub async fn stop(self) {
        for r in self.refreshers {
            r.stop().await;
        }
        for p in self.more_proxies {
            p.stop().await;
        }
        self.proxy.stop().await;
        self.gateway.stop().await;
        self.mock.stop().await;
        if self.ephemeral_prefix {
            let b = shared::messaging::Broker::new(
                self.common.amqp_url.clone(),
                &self.common.queue_prefix,
                "devstack-cleanup",
            );
            if let Err(e) = b.delete_topology().await {
                tracing::warn!(error = %e, "could not delete the test topology");
            }
        }
        if let Some(db) = self.ephemeral_db {
            if let Err(e) = shared::store::drop_database(&admin_database_url(), &db).await {
                tracing::warn!(error = %e, "could not drop the test database");
            }
        }
    }
}
