//! The store's statements against the real PostgreSQL: one fresh database per test (created
//! from the maintenance database, migrated, dropped after), so the tests run in parallel.

use super::*;
use crate::crypto::{hash_secret, Keyring};
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
    let first = store.save_authorized("kartra", "bob", &tokens("a1"), |_| Vec::new()).await.unwrap();
    store.save_authorized("kartra", "alice", &tokens("b1"), |_| Vec::new()).await.unwrap();
    store.save_authorized("redtail", "carol", &tokens("c1"), |_| Vec::new()).await.unwrap();
    let again = store.save_authorized("kartra", "bob", &tokens("a2"), |_| Vec::new()).await.unwrap();
    assert_eq!(again.token_version, first.token_version + 1, "replacing bumps the version");
    assert_eq!(store.open_credentials(&again).unwrap().access_token, "a2");
    let all = store.list_connections(None, None, None, 10).await.unwrap();
    let keys: Vec<_> = all.iter().map(|c| (c.provider.as_str(), c.connection_id.as_str())).collect();
    assert_eq!(keys, [("kartra", "alice"), ("kartra", "bob"), ("redtail", "carol")]);
    let page = store.list_connections(Some("kartra"), None, Some(("kartra", "alice")), 10).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].connection_id, "bob");
    assert_eq!(store.count_by_status().await.unwrap(), vec![("active".to_owned(), 3)]);
    let gone = store.delete_connection("kartra", "bob").await.unwrap().unwrap();
    assert_eq!(store.open_credentials(&gone).unwrap().access_token, "a2", "the deleted row comes back whole");
    assert!(store.get_connection("kartra", "bob").await.unwrap().is_none());
    assert!(store.delete_connection("kartra", "bob").await.unwrap().is_none());
    drop(store, db).await;
}
