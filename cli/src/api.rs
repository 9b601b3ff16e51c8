//! Commands that use the management API, through `authbridge-client`.

use crate::table::{or_dash, render, time};
use crate::{exit, ApiKeys, AuditArgs, Command, Connections, Global, Providers, Webhooks};
use authbridge_client::{Client, ConnectionQuery, Error};
use serde::Serialize;

/// What a command has to show: JSON for scripts, text for people.
struct Shown {
    json: serde_json::Value,
    text: String,
}

fn shown<T: Serialize>(value: &T, text: String) -> Shown {
    Shown { json: serde_json::to_value(value).unwrap_or(serde_json::Value::Null), text }
}

pub async fn run(g: &Global, command: Command) -> u8 {
    let Some(key) = g.api_key.as_deref().filter(|k| !k.is_empty()) else {
        eprintln!("authbridge: this command uses the management API: set AUTHBRIDGE_API_KEY (or pass --api-key)");
        return exit::USAGE;
    };
    let client = match Client::new(&g.url, key) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("authbridge: AUTHBRIDGE_URL / --url: {e}");
            return exit::USAGE;
        }
    };
    match dispatch(&client, command).await {
        Ok(s) => {
            if g.json {
                println!("{}", serde_json::to_string_pretty(&s.json).unwrap_or_default());
            } else if !s.text.is_empty() {
                print!("{}", s.text);
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("authbridge: {e}");
            match e {
                Error::Http(_) => {
                    eprintln!("  is the gateway running at {}? (AUTHBRIDGE_URL / --url)", g.url);
                    exit::UNREACHABLE
                }
                Error::Api { status: 401, .. } => {
                    eprintln!("  the API key was refused (AUTHBRIDGE_API_KEY / --api-key)");
                    exit::FAILED
                }
                _ => exit::FAILED,
            }
        }
    }
}

async fn dispatch(c: &Client, command: Command) -> Result<Shown, Error> {
    match command {
        Command::ApiKeys(k) => api_keys(c, k).await,
        Command::Connections(k) => connections(c, k).await,
        Command::Providers(Providers::List) => {
            let ps = c.list_providers().await?;
            let rows = ps
                .iter()
                .map(|p| {
                    let needs = if p.configured { "-".into() } else { p.missing_configuration.join(", ") };
                    vec![p.id.clone(), p.display_name.clone(), p.auth.clone(), yes_no(p.configured), needs]
                })
                .collect::<Vec<_>>();
            Ok(shown(&ps, render(&["id", "name", "auth", "configured", "needs"], &rows)))
        }
        Command::Webhooks(w) => webhooks(c, w).await,
        Command::Audit(a) => audit(c, a).await,
        other => unreachable!("not an API command: {other:?}"),
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

async fn api_keys(c: &Client, k: ApiKeys) -> Result<Shown, Error> {
    Ok(match k {
        ApiKeys::Create { name, scopes, providers } => {
            let key = c.create_api_key(&authbridge_client::NewApiKey { name, scopes, providers }).await?;
            let text = format!(
                "created {} ({})\nkey (shown once, keep it now): {}\n",
                key.id,
                key.name,
                key.key.as_deref().unwrap_or("")
            );
            shown(&key, text)
        }
        ApiKeys::List => {
            let keys = c.list_api_keys().await?;
            let rows = keys
                .iter()
                .map(|k| {
                    vec![
                        k.id.clone(),
                        k.name.clone(),
                        k.scopes.join(","),
                        if k.providers.is_empty() { "all".into() } else { k.providers.join(",") },
                        time(Some(k.created_at)),
                        time(k.revoked_at),
                    ]
                })
                .collect::<Vec<_>>();
            shown(&keys, render(&["id", "name", "scopes", "providers", "created", "revoked"], &rows))
        }
        ApiKeys::Revoke { id } => {
            c.revoke_api_key(&id).await?;
            shown(&serde_json::json!({ "revoked": id }), format!("revoked {id}\n"))
        }
    })
}

fn connection_text(c: &authbridge_client::Connection) -> String {
    let owner = c.end_user.as_ref().map(|u| {
        let org = u.organization_id.as_deref().map(|o| format!(" (organization {o})")).unwrap_or_default();
        format!("{}{org}", u.id)
    });
    let tags = c.tags.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(" ");
    let rows = [
        ("connection", format!("{}/{}", c.provider, c.connection_id)),
        ("status", c.status.clone()),
        ("end user", or_dash(owner)),
        ("tags", if tags.is_empty() { "-".into() } else { tags }),
        ("scopes", if c.scopes.is_empty() { "-".into() } else { c.scopes.join(" ") }),
        ("expires", time(c.expires_at)),
        ("next refresh", time(c.refresh_due_at)),
        ("last refresh", time(c.last_refresh_at)),
        ("last error", or_dash(c.last_error.as_ref())),
        ("errors", c.error_count.to_string()),
        ("created", time(Some(c.created_at))),
    ];
    rows.iter().map(|(k, v)| format!("{k:<13} {v}\n")).collect()
}

async fn connections(c: &Client, k: Connections) -> Result<Shown, Error> {
    Ok(match k {
        Connections::List { provider, status, end_user_id, organization_id, tags } => {
            let tags = tags.into_iter().collect();
            let q = ConnectionQuery { provider, status, end_user_id, organization_id, tags, ..Default::default() };
            let all = c.all_connections(&q).await?;
            let rows = all
                .iter()
                .map(|c| {
                    vec![
                        c.provider.clone(),
                        c.connection_id.clone(),
                        c.status.clone(),
                        or_dash(c.end_user.as_ref().map(|u| u.id.clone())),
                        time(c.expires_at),
                        time(c.refresh_due_at),
                        or_dash(c.last_error.as_ref()),
                    ]
                })
                .collect::<Vec<_>>();
            let header = ["provider", "connection", "status", "end user", "expires", "next refresh", "last error"];
            shown(&all, render(&header, &rows))
        }
        Connections::Show { provider, connection_id } => {
            let conn = c.get_connection(&provider, &connection_id).await?;
            let text = connection_text(&conn);
            shown(&conn, text)
        }
        Connections::Refresh { provider, connection_id } => {
            let conn = c.refresh_connection(&provider, &connection_id).await?;
            let text = connection_text(&conn);
            shown(&conn, text)
        }
        Connections::Delete { provider, connection_id } => {
            c.delete_connection(&provider, &connection_id).await?;
            let done = format!("deleted {provider}/{connection_id}\n");
            shown(&serde_json::json!({ "deleted": { "provider": provider, "connection_id": connection_id } }), done)
        }
    })
}

async fn webhooks(c: &Client, w: Webhooks) -> Result<Shown, Error> {
    let one = |w: &authbridge_client::Webhook| {
        let mut t = format!(
            "id       {}\nurl      {}\nevents   {}\nsecrets  {}\n",
            w.id,
            w.url,
            if w.events.is_empty() { "all".into() } else { w.events.join(" ") },
            w.secrets
                .iter()
                .map(|s| match s.expires_at {
                    Some(at) => format!("{} (until {})", s.id, time(Some(at))),
                    None => s.id.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(secret) = &w.secret {
            t.push_str(&format!("secret (shown once, keep it now): {secret}\n"));
        }
        t
    };
    Ok(match w {
        Webhooks::Create { endpoint, events, description, secret } => {
            let new = authbridge_client::NewWebhook { url: endpoint, events, description, secret };
            let created = c.create_webhook(&new).await?;
            let text = one(&created);
            shown(&created, text)
        }
        Webhooks::List => {
            let all = c.list_webhooks().await?;
            let rows = all
                .iter()
                .map(|w| {
                    vec![
                        w.id.clone(),
                        w.url.clone(),
                        if w.events.is_empty() { "all".into() } else { w.events.join(",") },
                        w.secrets.len().to_string(),
                    ]
                })
                .collect::<Vec<_>>();
            shown(&all, render(&["id", "url", "events", "secrets"], &rows))
        }
        Webhooks::Show { id } => {
            let w = c.get_webhook(&id).await?;
            let text = one(&w);
            shown(&w, text)
        }
        Webhooks::Delete { id } => {
            c.delete_webhook(&id).await?;
            shown(&serde_json::json!({ "deleted": id }), format!("deleted {id}\n"))
        }
        Webhooks::Rotate { id, keep_old_for } => {
            let added = c.add_webhook_secret(&id, None, Some(keep_old_for)).await?;
            let text = format!(
                "new secret {} (shown once, keep it now): {}\nthe old secrets sign until {}\n",
                added.id,
                added.secret,
                time(Some(added.others_expire_at))
            );
            shown(&added, text)
        }
        Webhooks::Deliveries { id, status, limit } => {
            let page = c.list_deliveries(&id, status.as_deref(), Some(limit), None).await?;
            let rows = page
                .deliveries
                .iter()
                .map(|d| {
                    vec![
                        d.id.to_string(),
                        d.event_type.clone(),
                        d.status.clone(),
                        d.attempts.to_string(),
                        or_dash(d.last_status),
                        time(d.next_attempt_at),
                        or_dash(d.last_error.as_ref()),
                    ]
                })
                .collect::<Vec<_>>();
            let header = ["delivery", "event", "status", "attempts", "last status", "next try", "last error"];
            shown(&page, render(&header, &rows))
        }
        Webhooks::Retry { id, delivery_id } => {
            c.retry_delivery(&id, delivery_id).await?;
            shown(&serde_json::json!({ "retrying": delivery_id }), format!("delivery {delivery_id} is sent again\n"))
        }
    })
}

async fn audit(c: &Client, a: AuditArgs) -> Result<Shown, Error> {
    let q = authbridge_client::AuditQuery {
        action: a.action,
        api_key_id: a.api_key_id,
        provider: a.provider,
        connection_id: a.connection_id,
        limit: Some(a.limit),
        ..Default::default()
    };
    let page = c.audit(&q).await?;
    let rows = page
        .entries
        .iter()
        .map(|e| {
            let conn = match (&e.provider, &e.connection_id) {
                (Some(p), Some(id)) => format!("{p}/{id}"),
                _ => "-".into(),
            };
            vec![
                time(Some(e.at)),
                e.action.clone(),
                conn,
                format!("{} ({})", or_dash(e.api_key_name.as_ref()), or_dash(e.api_key_id.as_ref())),
                or_dash(e.address.as_ref()),
            ]
        })
        .collect::<Vec<_>>();
    Ok(shown(&page, render(&["at", "action", "connection", "key", "address"], &rows)))
}
