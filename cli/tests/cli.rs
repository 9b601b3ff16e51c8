//! The `authbridge` binary against a running stack (the real PostgreSQL and RabbitMQ): every
//! management command through the typed client, its exit codes, `doctor` and `keys`.

use devstack::{Stack, StackOptions};
use serde_json::Value;
use std::process::{Command, Output};

const OLD_KEY: &str = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="; // 32 bytes of 3
const NEW_KEY: &str = "BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ="; // 32 bytes of 4

struct Cli<'a> {
    stack: &'a Stack,
}

impl Cli<'_> {
    /// Runs `authbridge <args>` with the stack's URL, key and settings in its environment.
    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[])
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_authbridge"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AUTHBRIDGE_URL", self.stack.gateway.url())
            .env("AUTHBRIDGE_API_KEY", &self.stack.api_key)
            .env("AUTHBRIDGE_DATABASE_URL", &self.stack.database_url)
            .env("AUTHBRIDGE_QUEUE_PREFIX", &self.stack.common.queue_prefix)
            .env("AUTHBRIDGE_ENCRYPTION_KEY", OLD_KEY);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("the authbridge binary runs")
    }

    /// Runs a command that must succeed with `--json`, and returns what it printed.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(out.status.success(), "authbridge {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn stack() -> Stack {
    shared::install_crypto_provider();
    let keyring = shared::crypto::Keyring::from_base64(OLD_KEY, None, &[]).unwrap();
    Stack::start(StackOptions { keyring, ..Default::default() }).await.expect("stack starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_connections_webhooks_and_the_audit_trail_are_managed_from_the_command_line() {
    let stack = stack().await;
    let cli = Cli { stack: &stack };
    let client = authbridge_client::Client::new(&stack.gateway.url(), &stack.api_key).unwrap();
    let conn = authbridge_client::NewConnection {
        provider: "mockmachine".into(),
        connection_id: "m1".into(),
        tags: Some([("team".to_string(), "red".to_string())].into()),
        ..Default::default()
    };
    client.create_connection(&conn).await.unwrap();

    // API keys: created (shown once), listed, revoked.
    let created =
        cli.json(&["api-keys", "create", "ci-bot", "--scope", "connections:read", "--provider", "mockmachine"]);
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created["key"].as_str().unwrap().starts_with("abk1_"));
    let listed = cli.json(&["api-keys", "list"]);
    assert!(listed.as_array().unwrap().iter().any(|k| k["id"] == id.as_str() && k["key"].is_null()));
    let table = text(&cli.run(&["api-keys", "list"]));
    assert!(table.starts_with("id ") && table.contains("ci-bot"), "{table}");
    assert!(cli.run(&["api-keys", "revoke", &id]).status.success());

    // Connections: listed (with filters), shown, refreshed, deleted.
    let all = cli.json(&["connections", "list", "--tag", "team:red"]);
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert_eq!(all[0]["connection_id"], "m1");
    assert!(cli.json(&["connections", "list", "--tag", "team:blue"]).as_array().unwrap().is_empty());
    let shown = text(&cli.run(&["connections", "show", "mockmachine", "m1"]));
    assert!(shown.contains("mockmachine/m1") && shown.contains("team:red"), "{shown}");
    let refreshed = cli.json(&["connections", "refresh", "mockmachine", "m1"]);
    assert_eq!(refreshed["status"], "active");
    assert!(cli.run(&["connections", "delete", "mockmachine", "m1"]).status.success());
    let gone = cli.run(&["connections", "show", "mockmachine", "m1"]);
    assert_eq!(gone.status.code(), Some(1), "a refusal exits 1");
    assert!(String::from_utf8_lossy(&gone.stderr).contains("connection_not_found"));

    // Webhooks: created with a secret shown once, rotated, deliveries listed, deleted.
    let w = cli.json(&["webhooks", "create", "http://127.0.0.1:9/hooks", "--event", "connection.created"]);
    let wid = w["id"].as_str().unwrap().to_owned();
    assert!(w["secret"].as_str().unwrap().starts_with("whsec_"));
    let rotated = cli.json(&["webhooks", "rotate", &wid, "--keep-old-for", "60"]);
    assert!(rotated["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(cli.json(&["webhooks", "show", &wid])["secrets"].as_array().unwrap().len(), 2);
    client
        .create_connection(&authbridge_client::NewConnection { connection_id: "m2".into(), ..conn.clone() })
        .await
        .unwrap();
    let deliveries = cli.json(&["webhooks", "deliveries", &wid]);
    assert_eq!(deliveries["deliveries"][0]["event_type"], "connection.created");
    assert!(cli.run(&["webhooks", "delete", &wid]).status.success());
    assert!(cli.json(&["webhooks", "list"]).as_array().unwrap().is_empty());

    // The audit trail saw all of it, on the bootstrap key.
    let audit = cli.json(&["audit", "--limit", "100"]);
    let actions: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["api_key.created", "api_key.revoked", "connection.refreshed", "connection.deleted", "connection.created"]
    {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let providers = cli.json(&["providers", "list"]);
    assert!(providers.as_array().unwrap().iter().any(|p| p["id"] == "mock" && p["configured"] == true));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_what_went_wrong() {
    let stack = stack().await;
    let cli = Cli { stack: &stack };
    let no_key = cli.run_with(&["connections", "list"], &[("AUTHBRIDGE_API_KEY", "")]);
    assert_eq!(no_key.status.code(), Some(2), "usage: no key");
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("AUTHBRIDGE_API_KEY"));
    let nobody = cli.run_with(&["connections", "list"], &[("AUTHBRIDGE_URL", "http://127.0.0.1:9")]);
    assert_eq!(nobody.status.code(), Some(3), "unreachable");
    let refused = cli.run_with(
        &["connections", "list"],
        &[("AUTHBRIDGE_API_KEY", "abk1_not-a-key-at-all-000000000000000000000000000000")],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("refused"));
    let bad_tag = cli.run(&["connections", "list", "--tag", "nocolon"]);
    assert_eq!(bad_tag.status.code(), Some(2), "a malformed --tag is a usage error");
    let bad = cli.run(&["connections", "frobnicate"]);
    assert_eq!(bad.status.code(), Some(2), "clap's usage errors exit 2");
    let completions = cli.run(&["completions", "bash"]);
    assert!(completions.status.success() && text(&completions).contains("authbridge"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_what_is_wrong_and_keys_rotate_and_reencrypt() {
    let stack = stack().await;
    let cli = Cli { stack: &stack };
    let client = authbridge_client::Client::new(&stack.gateway.url(), &stack.api_key).unwrap();
    for id in ["a", "b"] {
        let c = authbridge_client::NewConnection {
            provider: "mockmachine".into(),
            connection_id: id.into(),
            ..Default::default()
        };
        client.create_connection(&c).await.unwrap();
    }
    let healthy = cli.run(&["doctor"]);
    assert_eq!(healthy.status.code(), Some(0), "{}{}", text(&healthy), String::from_utf8_lossy(&healthy.stderr));
    let checks = cli.json(&["doctor"]);
    let status = |name: &str| {
        checks.as_array().unwrap().iter().find(|c| c["check"] == name).unwrap()["status"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        (status("postgresql"), status("rabbitmq"), status("encryption key")),
        ("ok".into(), "ok".into(), "ok".into())
    );

    // A key that does not open what is stored is found, and the fix named.
    let wrong = cli.run_with(&["doctor"], &[("AUTHBRIDGE_ENCRYPTION_KEY", NEW_KEY)]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(text(&wrong).contains("AUTHBRIDGE_ENCRYPTION_OLD_KEYS"), "{}", text(&wrong));
    // A database that does not exist is named as such.
    let mut url = url::Url::parse(&stack.database_url).unwrap();
    url.set_path("/authbridge_no_such_database");
    let missing = cli.run_with(&["doctor"], &[("AUTHBRIDGE_DATABASE_URL", url.as_str())]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing).contains("does not exist") && text(&missing).contains("createdb"), "{}", text(&missing));
    // Bad settings: every variable named, exit 1 from doctor's report.
    let bad = cli.run_with(&["doctor"], &[("AUTHBRIDGE_DATABASE_POOL_SIZE", "0")]);
    assert!(text(&bad).contains("AUTHBRIDGE_DATABASE_POOL_SIZE"), "{}", text(&bad));

    // Rotation: a new key printed with the steps; re-sealing moves everything to it.
    let rotate = cli.json(&["keys", "rotate"]);
    assert_eq!(rotate["key"].as_str().unwrap().len(), 44);
    let rotated = [("AUTHBRIDGE_ENCRYPTION_KEY", NEW_KEY), ("AUTHBRIDGE_ENCRYPTION_OLD_KEYS", OLD_KEY)];
    let out = cli.run_with(&["--json", "keys", "reencrypt"], &rotated);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let usage: Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_id = shared::crypto::Keyring::from_base64(NEW_KEY, None, &[]).unwrap().primary_id().to_owned();
    assert_eq!(usage, serde_json::json!([{"key_id": new_id, "connections": 2}]));
    let after = cli.run_with(&["--json", "doctor"], &[("AUTHBRIDGE_ENCRYPTION_KEY", NEW_KEY)]);
    assert!(after.status.success(), "{}", text(&after));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_check_reads_the_local_catalog_and_tries_each_configured_provider() {
    let stack = stack().await;
    let cli = Cli { stack: &stack };
    let dir = std::env::temp_dir().join(format!("abcli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("providers.toml");
    let mock = stack.mock.url();
    std::fs::write(
        &file,
        format!(
            "[providers.acme-crm]\nauthorize_url = \"{mock}/oauth/authorize\"\ntoken_url = \"{mock}/oauth/token\"\n\
             api_base_url = \"{mock}/api/\"\n[providers.gone]\nauthorize_url = \"http://127.0.0.1:9/a\"\n\
             token_url = \"http://127.0.0.1:9/t\"\n"
        ),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let env = [
        ("AUTHBRIDGE_PROVIDERS_FILE", path),
        ("ACME_CRM_CLIENT_ID", "id"),
        ("ACME_CRM_CLIENT_SECRET", "secret"),
        ("GONE_CLIENT_ID", "id"),
        ("GONE_CLIENT_SECRET", "secret"),
    ];
    let out = cli.run_with(&["--json", "providers", "check"], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |id: &str| all.as_array().unwrap().iter().find(|p| p["id"] == id).unwrap().clone();
    assert_eq!(find("acme-crm")["configured"], true);
    assert!(find("acme-crm")["token_endpoint"].as_str().unwrap().starts_with("reachable"), "{all}");
    assert!(find("gone")["token_endpoint"].as_str().unwrap().starts_with("unreachable"), "{all}");
    assert_eq!(find("interact")["configured"], false, "the built-ins are listed with what they need");
    // A file with mistakes: every one named, exit 2.
    std::fs::write(&file, "[providers.a]\ntoken_url = \"https://a/t\"\n[providers.b]\nauth = \"api_key\"\n").unwrap();
    let bad = cli.run_with(&["providers", "check"], &env);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("`a`") && err.contains("`b`"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
    stack.stop().await;
}
