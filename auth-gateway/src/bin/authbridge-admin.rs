//! `authbridge-admin`: operator commands that work on the database directly.
//!
//! ```text
//! authbridge-admin key-usage   # connections per encryption key id
//! authbridge-admin reencrypt   # re-seal everything under the primary key (after a rotation)
//! ```
//! It reads the same environment as the services (`AUTHBRIDGE_DATABASE_URL`,
//! `AUTHBRIDGE_ENCRYPTION_KEY`, `AUTHBRIDGE_ENCRYPTION_OLD_KEYS`, …) and runs beside them.

use shared::config::{CommonSettings, Env, Reader};

fn main() -> anyhow::Result<()> {
    let command = std::env::args().nth(1).unwrap_or_default();
    if !matches!(command.as_str(), "reencrypt" | "key-usage") {
        eprintln!("usage: authbridge-admin <reencrypt | key-usage>");
        std::process::exit(2);
    }
    let env = Env::from_process();
    let mut r = Reader::new(&env);
    let settings = CommonSettings::read(&mut r);
    if let Err(e) = r.finish() {
        eprintln!("authbridge-admin: {e}");
        std::process::exit(2);
    }
    let settings = settings.expect("checked");
    tokio::runtime::Runtime::new()?.block_on(async {
        let store = shared::store::Store::new(settings.database_url.expose(), 2, settings.keyring.clone())?;
        store.migrate().await?;
        if command == "reencrypt" {
            let n = store.reencrypt_all().await?;
            println!("re-sealed {n} connections under key {}", settings.keyring.primary_id());
        }
        for (key_id, count) in store.key_usage().await? {
            let primary = if key_id == settings.keyring.primary_id() { " (primary)" } else { "" };
            println!("{key_id}{primary}: {count} connections");
        }
        anyhow::Ok(())
    })
}
