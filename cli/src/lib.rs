//! The `authbridge` command.
//!
//! ```text
//! authbridge dev                          the whole system in one process (with a demo provider)
//! authbridge gateway | proxy | refresher  one service, configured from the environment
//! authbridge api-keys | connections | providers | webhooks | audit …   the management API
//! authbridge keys usage | rotate | reencrypt                           encryption keys
//! authbridge doctor                       checks the configuration, PostgreSQL, RabbitMQ, the key
//! authbridge completions bash|zsh|fish    shell completions
//! ```
//!
//! Commands that use the management API read `AUTHBRIDGE_URL` (default
//! `http://127.0.0.1:8080`) and `AUTHBRIDGE_API_KEY` (or `--url`, `--api-key`); the others read
//! the same environment as the services. `--json` prints JSON for scripts. Exit codes: 0 done,
//! 1 refused or failed (an API error, a problem `doctor` found), 2 bad usage or configuration,
//! 3 authbridge, PostgreSQL or RabbitMQ could not be reached.

mod api;
mod local;
mod table;

use clap::{Args, Parser, Subcommand};

/// Exit codes.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
}

#[derive(Debug, Parser)]
#[command(name = "authbridge", version, about = "Run and operate authbridge.", propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The gateway's URL, for commands that use the management API.
    #[arg(long, global = true, env = "AUTHBRIDGE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An API key with the scopes the command needs (`admin` for keys, webhooks and the audit trail).
    #[arg(long, global = true, env = "AUTHBRIDGE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole system in one process: gateway, proxy, refresher and a demo provider.
    Dev,
    /// Run the auth-gateway (settings from the environment, as its image does).
    Gateway,
    /// Run the api-proxy.
    Proxy,
    /// Run the token-refresher (which also sends webhooks).
    Refresher,
    /// Create, list and revoke API keys.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeys),
    /// List, show, refresh and delete connections.
    #[command(subcommand)]
    Connections(Connections),
    /// The provider catalog: list what the gateway knows, or check the local catalog.
    #[command(subcommand)]
    Providers(Providers),
    /// Webhook endpoints, their secrets and deliveries.
    #[command(subcommand)]
    Webhooks(Webhooks),
    /// The audit trail, newest first.
    Audit(AuditArgs),
    /// Encryption keys: what is sealed with which, a new key, re-sealing.
    #[command(subcommand)]
    Keys(Keys),
    /// Check the configuration, PostgreSQL, RabbitMQ, the encryption key and the catalog.
    Doctor,
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeys {
    /// Create a key (shown once).
    Create {
        name: String,
        /// A scope: connect, connections:read, connections:write, tokens:read, proxy, admin (repeat).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Limit the key to a provider (repeat).
        #[arg(long = "provider")]
        providers: Vec<String>,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum Connections {
    List {
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long = "end-user")]
        end_user_id: Option<String>,
        #[arg(long = "organization")]
        organization_id: Option<String>,
        /// `key:value` (repeat: all must match).
        #[arg(long = "tag", value_parser = tag)]
        tags: Vec<(String, String)>,
    },
    Show {
        provider: String,
        connection_id: String,
    },
    /// Refresh (or check the credentials of) a connection now.
    Refresh {
        provider: String,
        connection_id: String,
    },
    Delete {
        provider: String,
        connection_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum Providers {
    /// The gateway's catalog, with what each provider still needs.
    List,
    /// Check the catalog this machine's environment configures (`AUTHBRIDGE_PROVIDERS_FILE`,
    /// `<ID>_CLIENT_ID`…) and try each configured provider's endpoints.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum Webhooks {
    Create {
        /// Where to send events: https:// on a public address.
        #[arg(value_name = "URL")]
        endpoint: String,
        /// An event type to send (repeat; default all).
        #[arg(long = "event")]
        events: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        /// `whsec_…` (default: generated, shown once).
        #[arg(long)]
        secret: Option<String>,
    },
    List,
    Show {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Add a new signing secret; the others keep signing for `--keep-old-for` seconds.
    Rotate {
        id: String,
        #[arg(long = "keep-old-for", default_value_t = 86_400)]
        keep_old_for: u64,
    },
    Deliveries {
        id: String,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Send a delivery again now.
    Retry {
        id: String,
        delivery_id: i64,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[arg(long)]
    pub action: Option<String>,
    /// Entries made with this API key id.
    #[arg(long = "key")]
    pub api_key_id: Option<String>,
    #[arg(long)]
    pub provider: Option<String>,
    #[arg(long = "connection")]
    pub connection_id: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

#[derive(Debug, Subcommand)]
pub enum Keys {
    /// How many secrets are sealed with each key.
    Usage,
    /// Print a new key and how to move to it without downtime.
    Rotate,
    /// Re-seal everything not sealed with the primary key (after a rotation), with progress.
    Reencrypt,
}

/// A `--tag key:value`.
fn tag(s: &str) -> Result<(String, String), String> {
    shared::store::parse_tag_filter(s).ok_or_else(|| "expected key:value".to_owned())
}

/// Runs a command; returns the exit code.
pub fn run(cli: Cli) -> u8 {
    shared::install_crypto_provider();
    match cli.command {
        Command::Dev => serve("authbridge-dev", devstack::dev::run),
        Command::Gateway => serve("auth-gateway", || {
            shared::http::run_service("auth-gateway", auth_gateway::Settings::from_env, |s| async {
                let app = auth_gateway::Application::build(s).await?;
                shared::http::stop_on_signal(|| app.stop()).await;
                Ok(())
            })
        }),
        Command::Proxy => serve("api-proxy", || {
            shared::http::run_service("api-proxy", api_proxy::Settings::from_env, |s| async {
                let app = api_proxy::Application::build(s).await?;
                shared::http::stop_on_signal(|| app.stop()).await;
                Ok(())
            })
        }),
        Command::Refresher => serve("token-refresher", || {
            shared::http::run_service("token-refresher", token_refresher::Settings::from_env, |s| async {
                let app = token_refresher::Application::build(s).await?;
                shared::http::stop_on_signal(|| app.stop()).await;
                Ok(())
            })
        }),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "authbridge", &mut std::io::stdout());
            exit::OK
        }
        Command::Doctor => block_on(local::doctor(cli.global.json)),
        Command::Keys(k) => block_on(local::keys(k, cli.global.json)),
        Command::Providers(Providers::Check) => block_on(local::check_providers(cli.global.json)),
        command => block_on(api::run(&cli.global, command)),
    }
}

/// A service in this process: its own telemetry (`run_service` sets it up for the three
/// services; the dev system sets up its own here).
fn serve(name: &'static str, f: impl FnOnce() -> anyhow::Result<()>) -> u8 {
    let _telemetry = (name == "authbridge-dev").then(|| shared::telemetry::init(name));
    match f() {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            exit::FAILED
        }
    }
}

fn block_on(f: impl std::future::Future<Output = u8>) -> u8 {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("authbridge: cannot start: {e}");
            exit::FAILED
        }
    }
}
