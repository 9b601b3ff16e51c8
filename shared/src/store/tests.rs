//! The store's statements against the real PostgreSQL: one fresh database per test (created
//! from the maintenance database, migrated, dropped after), so the tests run in parallel.

use super::*;
use crate::crypto::{hash_secret, Keyring};
use crate::webhooks::SigningSecret;
use chrono::Utc;
use std::time::Duration;

/// A migrated store on a database of its own, and that database's name.
async fn fresh_store() -> (Store, String) {
    let admin = std::env::var("AUTHBRIDGE_TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("abunit_{}", uuid::Uuid::new_v4().simple());
    let url = create_database(&admin, &name).await.expect("PostgreSQL is reachable (the tests need it)");
    let store = Store::new(&url, 2, Keyring::random()).unwrap();
    store.migrate().await.unwrap();
    (store, name)
}

async fn drop(store: Store, name: String) {
    std::mem::drop(store);
    let admin = std::env::var("AUTHBRIDGE_TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let _ = drop_database(&admin, &name).await;
}

fn session(token: &str, may_replace: bool, expires_in: chrono::Duration) -> NewSession {
    NewSession {
        token_hash: hash_secret(token),
        provider: "kartra".into(),
        connection_id: "alice".into(),
        ending: Ending { return_url: Some("https://app.example/done".into()), popup: false },
        expires_at: Utc::now() + expires_in,
        may_replace,
        profile: Profile::default(),
        created_by: Some("key-1".into()),
    }
}

#[tokio::test]
async fn a_session_opens_once_and_its_state_is_consumed_once_with_what_was_bound_to_it() {
    let (store, db) = fresh_store().await;
    store.create_session(&session("t1", false, chrono::Duration::minutes(10))).await.unwrap();
    let (state, browser) = (hash_secret("state-1"), hash_secret("nonce-1"));
    let started = store
        .start_session(&hash_secret("t1"), &state, &browser, Some("verifier-1"), Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((started.provider.as_str(), started.connection_id.as_str()), ("kartra", "alice"));
    // A second open of the same link loses, and says why.
    let again = store
        .start_session(&hash_secret("t1"), &hash_secret("state-2"), &browser, None, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(again, Err(SessionLookup::AlreadyUsed { .. })), "{again:?}");
    let consumed = store.consume_state(&state).await.unwrap().unwrap();
    assert_eq!(consumed.verifier.as_deref(), Some("verifier-1"), "the verifier comes back unsealed");
    assert_eq!(consumed.browser_hash.as_deref(), Some(&browser[..]));
    assert!(!consumed.may_replace);
    assert!(matches!(store.consume_state(&state).await.unwrap(), Err(SessionLookup::AlreadyUsed { .. })));
    assert_eq!(store.consume_state(&hash_secret("unknown")).await.unwrap().unwrap_err(), SessionLookup::Unknown);
    assert!(matches!(
        store.start_session(&hash_secret("nope"), &state, &browser, None, Duration::from_secs(1)).await.unwrap(),
        Err(SessionLookup::Unknown)
    ));
    drop(store, db).await;
}

#[tokio::test]
async fn an_expired_session_neither_opens_nor_consumes() {
    let (store, db) = fresh_store().await;
    store.create_session(&session("old", true, chrono::Duration::seconds(-1))).await.unwrap();
    let r = store
        .start_session(&hash_secret("old"), &hash_secret("s"), &hash_secret("n"), None, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        r.unwrap_err(),
        SessionLookup::Expired { ending: Ending { return_url: Some("https://app.example/done".into()), popup: false } }
    );
    // A flow that outlives its time after it was opened cannot be finished either.
    store.create_session(&session("t2", true, chrono::Duration::minutes(10))).await.unwrap();
    let state = hash_secret("s2");
    store.start_session(&hash_secret("t2"), &state, &hash_secret("n"), None, Duration::ZERO).await.unwrap().unwrap();
    assert!(matches!(store.consume_state(&state).await.unwrap(), Err(SessionLookup::Expired { .. })));
    drop(store, db).await;
}

#[tokio::test]
async fn api_keys_are_found_by_digest_until_revoked_once() {
    let (store, db) = fresh_store().await;
    let scopes = vec!["proxy".to_owned()];
    let providers = vec!["kartra".to_owned()];
    let rec = store.create_api_key("ak_1", "billing", &hash_secret("k1"), &scopes, &providers).await.unwrap();
    assert_eq!((rec.id.as_str(), rec.providers.clone()), ("ak_1", providers.clone()));
    assert_eq!(store.find_api_key(&hash_secret("k1")).await.unwrap().unwrap().scopes, scopes);
    assert!(store.find_api_key(&hash_secret("k2")).await.unwrap().is_none());
    assert_eq!(store.list_api_keys().await.unwrap().len(), 1);
    assert!(store.revoke_api_key("ak_1").await.unwrap());
    assert!(!store.revoke_api_key("ak_1").await.unwrap(), "revoked once");
    assert!(store.find_api_key(&hash_secret("k1")).await.unwrap().is_none(), "a revoked key is not found");
    let kept = store.get_api_key("ak_1").await.unwrap().unwrap();
    assert!(kept.revoked_at.is_some(), "a revoked key is still listed");
    assert!(store.get_api_key("ak_2").await.unwrap().is_none());
    drop(store, db).await;
}

fn tokens(access: &str) -> NewTokens {
    NewTokens {
        credentials: Credentials {
            values: Default::default(),
            access_token: access.into(),
            refresh_token: Some(format!("r-{access}")),
            token_type: None,
            extra: Default::default(),
        },
        scopes: vec!["read".into()],
        expires_at: Some(Utc::now() + chrono::Duration::hours(1)),
        refresh_due_at: Some(Utc::now() + chrono::Duration::minutes(55)),
    }
}

#[tokio::test]
async fn connections_are_stored_sealed_replaced_with_a_new_version_listed_in_key_order_and_deleted() {
    let (store, db) = fresh_store().await;
    let (none, sys) = (Profile::default(), Actor::system());
    let first = store.save_authorized("kartra", "bob", &tokens("a1"), &none, &sys, |_| Vec::new()).await.unwrap();
    store.save_authorized("kartra", "alice", &tokens("b1"), &none, &sys, |_| Vec::new()).await.unwrap();
    store.save_authorized("redtail", "carol", &tokens("c1"), &none, &sys, |_| Vec::new()).await.unwrap();
    let again = store.save_authorized("kartra", "bob", &tokens("a2"), &none, &sys, |_| Vec::new()).await.unwrap();
    assert_eq!(again.token_version, first.token_version + 1, "replacing bumps the version");
    assert_eq!(store.open_credentials(&again).unwrap().access_token, "a2");
    let any = ConnectionFilter::default();
    let all = store.list_connections(None, None, &any, None, 10).await.unwrap();
    let keys: Vec<_> = all.iter().map(|c| (c.provider.as_str(), c.connection_id.as_str())).collect();
    assert_eq!(keys, [("kartra", "alice"), ("kartra", "bob"), ("redtail", "carol")]);
    let page = store.list_connections(Some("kartra"), None, &any, Some(("kartra", "alice")), 10).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].connection_id, "bob");
    assert_eq!(store.count_by_status().await.unwrap(), vec![("active".to_owned(), 3)]);
    let gone = store.delete_connection("kartra", "bob", &sys).await.unwrap().unwrap();
    assert_eq!(store.open_credentials(&gone).unwrap().access_token, "a2", "the deleted row comes back whole");
    assert!(store.get_connection("kartra", "bob").await.unwrap().is_none());
    assert!(store.delete_connection("kartra", "bob", &sys).await.unwrap().is_none());
    drop(store, db).await;
}

/// The id of the one delivery a test made.
async fn the_delivery(store: &Store) -> i64 {
    store.client().await.unwrap().query_one("SELECT id FROM webhook_deliveries", &[]).await.unwrap().get(0)
}

/// An endpoint of `id` for `events` (empty: all) with one secret, `s1`.
fn hook<'a>(id: &'a str, events: &'a [String], secret: &'a SigningSecret) -> NewWebhook<'a> {
    NewWebhook {
        id,
        url: "https://hooks.example/in",
        events,
        description: None,
        created_by: None,
        secret_id: "s1",
        secret,
    }
}

fn profile(user: &str, org: &str, tags: &[(&str, &str)]) -> Profile {
    Profile {
        end_user: Some(EndUser {
            id: user.into(),
            email: Some(format!("{user}@example.com")),
            display_name: None,
            organization_id: Some(org.into()),
        }),
        tags: Some(tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
    }
}

#[tokio::test]
async fn end_users_and_tags_are_kept_through_a_reconnect_and_filter_the_list() {
    let (store, db) = fresh_store().await;
    let sys = Actor::system();
    let p1 = profile("u1", "acme", &[("plan", "pro"), ("region", "eu")]);
    let p2 = profile("u2", "acme", &[("plan", "free")]);
    let p3 = profile("u3", "globex", &[("plan", "pro")]);
    store.save_authorized("kartra", "a", &tokens("1"), &p1, &sys, |_| Vec::new()).await.unwrap();
    store.save_authorized("kartra", "b", &tokens("2"), &p2, &sys, |_| Vec::new()).await.unwrap();
    store.save_authorized("redtail", "c", &tokens("3"), &p3, &sys, |_| Vec::new()).await.unwrap();
    // A reconnect that says nothing about the owner keeps what was said before.
    let again =
        store.save_authorized("kartra", "a", &tokens("4"), &Profile::default(), &sys, |_| Vec::new()).await.unwrap();
    assert_eq!(again.end_user, p1.end_user);
    assert_eq!(Some(again.tags), p1.tags);
    let ids = |f: ConnectionFilter| {
        let store = store.clone();
        async move {
            let rows = store.list_connections(None, None, &f, None, 10).await.unwrap();
            rows.into_iter().map(|c| c.connection_id).collect::<Vec<_>>()
        }
    };
    assert_eq!(ids(ConnectionFilter { end_user_id: Some("u2".into()), ..Default::default() }).await, ["b"]);
    assert_eq!(ids(ConnectionFilter { organization_id: Some("acme".into()), ..Default::default() }).await, ["a", "b"]);
    let pro: Tags = [("plan".to_string(), "pro".to_string())].into();
    assert_eq!(ids(ConnectionFilter { tags: pro.clone(), ..Default::default() }).await, ["a", "c"]);
    let mut pro_eu = pro.clone();
    pro_eu.insert("region".into(), "eu".into());
    assert_eq!(ids(ConnectionFilter { tags: pro_eu, ..Default::default() }).await, ["a"]);
    assert!(ids(ConnectionFilter {
        organization_id: Some("globex".into()),
        tags: [("plan".to_string(), "free".to_string())].into(),
        ..Default::default()
    })
    .await
    .is_empty());
    drop(store, db).await;
}

#[tokio::test]
async fn changes_announce_their_events_with_a_delivery_per_subscribed_endpoint_and_are_audited() {
    let (store, db) = fresh_store().await;
    let secret = SigningSecret::generate();
    let all = hook("wh_all", &[], &secret);
    store.create_webhook(&all).await.unwrap();
    let only = vec!["connection.deleted".to_string()];
    let deletions = hook("wh_del", &only, &secret);
    store.create_webhook(&deletions).await.unwrap();
    let actor = Actor { key_id: Some("key-9".into()), address: Some("10.0.0.7".into()) };
    let p = profile("u1", "acme", &[("plan", "pro")]);
    store.save_authorized("kartra", "a", &tokens("1"), &p, &actor, |_| Vec::new()).await.unwrap();
    store.save_authorized("kartra", "a", &tokens("2"), &Profile::default(), &actor, |_| Vec::new()).await.unwrap();
    store.delete_connection("kartra", "a", &actor).await.unwrap().unwrap();

    let client = store.client().await.unwrap();
    let events: Vec<(String, serde_json::Value)> = client
        .query("SELECT type, payload FROM webhook_events ORDER BY created_at, id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let types: Vec<_> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["connection.created", "connection.reconnected", "connection.deleted"]);
    let deleted = &events[2].1;
    assert_eq!(deleted["data"]["end_user"]["id"], "u1");
    assert_eq!(deleted["data"]["tags"]["plan"], "pro");
    assert_eq!(deleted["data"]["status"], "deleted");
    assert!(!deleted.to_string().contains("access_token"), "{deleted}");
    // Three deliveries to the endpoint of every event, one to the endpoint of deletions only,
    // and a message in the outbox for each.
    let per_endpoint: Vec<(String, i64)> = client
        .query("SELECT endpoint_id, count(*) FROM webhook_deliveries GROUP BY endpoint_id ORDER BY endpoint_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(per_endpoint, [("wh_all".to_string(), 3), ("wh_del".to_string(), 1)]);
    let messages: i64 =
        client.query_one("SELECT count(*) FROM outbox WHERE topic = $1", &[&TOPIC_WEBHOOK]).await.unwrap().get(0);
    assert_eq!(messages, 4);

    let trail = store.list_audit(&AuditFilter::default(), None, 10).await.unwrap();
    let actions: Vec<_> = trail.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["connection.deleted", "connection.reconnected", "connection.created"], "newest first");
    assert!(trail.iter().all(|e| e.api_key_id.as_deref() == Some("key-9") && e.address.as_deref() == Some("10.0.0.7")));
    let err = client.execute("UPDATE audit_log SET action = 'nothing'", &[]).await.unwrap_err();
    assert!(err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"), "{err:?}");
    drop(store, db).await;
}

#[tokio::test]
async fn a_delivery_is_claimed_once_retried_on_schedule_and_given_up_after_the_last_try() {
    let (store, db) = fresh_store().await;
    let secret = SigningSecret::generate();
    store.create_webhook(&hook("wh", &[], &secret)).await.unwrap();
    store
        .save_authorized("kartra", "a", &tokens("1"), &Profile::default(), &Actor::system(), |_| Vec::new())
        .await
        .unwrap();
    let id: i64 = the_delivery(&store).await;
    let lease = std::time::Duration::from_secs(30);
    let claimed = store.claim_delivery(id, 0, lease).await.unwrap().got().expect("claimed");
    assert_eq!(claimed.secrets, vec![secret.clone()]);
    assert_eq!(claimed.event_type, "connection.created");
    assert!(
        matches!(store.claim_delivery(id, 0, lease).await.unwrap(), Claim::HeldUntil(_)),
        "held by the first sender"
    );
    let took = std::time::Duration::from_millis(12);
    let out = store.record_attempt(id, 0, Some(500), None, took).await.unwrap();
    assert!(matches!(out, AttemptOutcome::Retrying(_)), "{out:?}");
    assert_eq!(store.record_attempt(id, 0, Some(500), None, took).await.unwrap(), AttemptOutcome::Stale);
    assert!(matches!(store.claim_delivery(id, 0, lease).await.unwrap(), Claim::Stale), "an old copy is stale");
    for n in 1..crate::webhooks::RETRY_SCHEDULE_SECS.len() as i32 {
        store.claim_delivery(id, n, lease).await.unwrap().got().expect("claimed");
        let out = store.record_attempt(id, n, None, Some("connection refused"), took).await.unwrap();
        assert!(matches!(out, AttemptOutcome::Retrying(_)), "{n}: {out:?}");
    }
    let last = crate::webhooks::RETRY_SCHEDULE_SECS.len() as i32;
    store.claim_delivery(id, last, lease).await.unwrap().got().expect("claimed");
    assert_eq!(store.record_attempt(id, last, Some(404), None, took).await.unwrap(), AttemptOutcome::Exhausted);
    let d = &store.list_deliveries("wh", None, None, 10).await.unwrap()[0];
    assert_eq!((d.status.as_str(), d.attempts, d.last_status), ("failed", last + 1, Some(404)));
    assert_eq!(d.attempt_log.len(), 10);
    assert_eq!(d.attempt_log[0].n, last + 1, "newest first");
    // Sent again by hand: pending now, for one more attempt.
    assert!(store.retry_delivery("wh", id).await.unwrap());
    assert!(!store.retry_delivery("other", id).await.unwrap(), "only through its own endpoint");
    store.claim_delivery(id, last + 1, lease).await.unwrap().got().expect("claimed again");
    assert_eq!(store.record_attempt(id, last + 1, Some(204), None, took).await.unwrap(), AttemptOutcome::Succeeded);
    drop(store, db).await;
}

#[tokio::test]
async fn secrets_rotate_without_a_gap_and_the_last_one_stays() {
    let (store, db) = fresh_store().await;
    let (old, new) = (SigningSecret::generate(), SigningSecret::generate());
    store.create_webhook(&hook("wh", &[], &old)).await.unwrap();
    // Both sign until the old one expires.
    let later = Utc::now() + chrono::Duration::hours(1);
    assert!(store.add_webhook_secret("wh", "s2", &new, Some(later)).await.unwrap());
    store
        .save_authorized("kartra", "a", &tokens("1"), &Profile::default(), &Actor::system(), |_| Vec::new())
        .await
        .unwrap();
    let id: i64 = the_delivery(&store).await;
    let c = store.claim_delivery(id, 0, std::time::Duration::from_secs(1)).await.unwrap().got().unwrap();
    assert_eq!(c.secrets, vec![old.clone(), new.clone()]);
    assert_eq!(store.delete_webhook_secret("wh", "s1").await.unwrap(), SecretRemoval::Removed);
    assert_eq!(store.delete_webhook_secret("wh", "s2").await.unwrap(), SecretRemoval::LastOne);
    assert_eq!(store.delete_webhook_secret("wh", "nope").await.unwrap(), SecretRemoval::NotFound);
    let w = store.get_webhook("wh").await.unwrap().unwrap();
    assert_eq!(w.secrets.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s2"]);
    drop(store, db).await;
}

#[tokio::test]
async fn webhook_secrets_are_resealed_with_everything_else_when_the_key_rotates() {
    use base64::Engine;
    let b64 = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
    let admin = std::env::var("AUTHBRIDGE_TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("abunit_{}", uuid::Uuid::new_v4().simple());
    let url = create_database(&admin, &name).await.expect("PostgreSQL is reachable (the tests need it)");
    let store = Store::new(&url, 2, Keyring::from_base64(&b64(5), None, &[]).unwrap()).unwrap();
    store.migrate().await.unwrap();
    let secret = SigningSecret::generate();
    let hook = hook("wh", &[], &secret);
    store.create_webhook(&hook).await.unwrap();
    let rotated = Store::new(&url, 2, Keyring::from_base64(&b64(6), None, &[b64(5)]).unwrap()).unwrap();
    assert_eq!(rotated.reencrypt_all().await.unwrap(), 1);
    // With the old key gone, the secret still opens and signs.
    let new_only = Store::new(&url, 2, Keyring::from_base64(&b64(6), None, &[]).unwrap()).unwrap();
    let (none, sys) = (Profile::default(), Actor::system());
    new_only.save_authorized("kartra", "a", &tokens("1"), &none, &sys, |_| Vec::new()).await.unwrap();
    let client = new_only.client().await.unwrap();
    let id: i64 = client.query_one("SELECT id FROM webhook_deliveries", &[]).await.unwrap().get(0);
    std::mem::drop(client);
    let c = new_only.claim_delivery(id, 0, Duration::from_secs(1)).await.unwrap().got().unwrap();
    assert_eq!(c.secrets, vec![secret]);
    std::mem::drop((store, rotated));
    drop(new_only, name).await;
}

#[tokio::test]
async fn retention_prunes_old_audit_entries_and_finished_events_but_not_pending_ones() {
    let (store, db) = fresh_store().await;
    let secret = SigningSecret::generate();
    store.create_webhook(&hook("wh", &[], &secret)).await.unwrap();
    let (none, sys) = (Profile::default(), Actor::system());
    store.save_authorized("kartra", "done", &tokens("1"), &none, &sys, |_| Vec::new()).await.unwrap();
    store.save_authorized("kartra", "waiting", &tokens("2"), &none, &sys, |_| Vec::new()).await.unwrap();
    let client = store.client().await.unwrap();
    let delivery = |c: &'static str| {
        let client = &client;
        async move {
            let sql = "SELECT d.id FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
                        WHERE e.payload->'data'->>'connection_id' = $1";
            client.query_one(sql, &[&c]).await.unwrap().get::<_, i64>(0)
        }
    };
    let done = delivery("done").await;
    store.claim_delivery(done, 0, Duration::from_secs(5)).await.unwrap().got().unwrap();
    store.record_attempt(done, 0, Some(200), None, Duration::from_millis(3)).await.unwrap();
    // Everything is "old" from an hour ahead.
    let later = Utc::now() + chrono::Duration::hours(1);
    assert_eq!(store.prune_audit(later, 1000).await.unwrap(), 2);
    assert!(store.list_audit(&AuditFilter::default(), None, 10).await.unwrap().is_empty());
    assert_eq!(store.prune_webhook_events(later, 1000).await.unwrap(), 1, "the delivered one only");
    let left: Vec<String> = client
        .query("SELECT payload->'data'->>'connection_id' FROM webhook_events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["waiting"]);
    // Nothing newer than the cut-off goes.
    assert_eq!(store.prune_webhook_events(Utc::now() - chrono::Duration::hours(1), 1000).await.unwrap(), 0);
    std::mem::drop(client);
    drop(store, db).await;
}
