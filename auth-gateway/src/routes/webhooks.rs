//! `/v1/webhooks`: endpoints that receive signed connection events, their secrets, and their
//! deliveries (scope `admin`, on a key not limited to some providers: an endpoint hears about
//! every provider's connections).

use crate::AppState;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use shared::auth::{scope, Authorized, Caller};
use shared::http::{ApiError, ErrorCode};
use shared::store::{NewWebhook, SecretRemoval};
use shared::webhooks::{check_url, EventType, SigningSecret};

fn unrestricted(caller: &Caller) -> Result<(), ApiError> {
    if caller.providers().is_some() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "webhooks announce every provider's connections: manage them with an admin key not limited to providers",
        ));
    }
    Ok(())
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no webhook endpoint `{id}`"))
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, m)
}

/// A secret given by the caller, or a new one.
fn secret_from(given: Option<&str>) -> Result<SigningSecret, ApiError> {
    match given {
        Some(s) => SigningSecret::parse(s).map_err(bad),
        None => Ok(SigningSecret::generate()),
    }
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", &shared::crypto::random_token()[..16])
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    url: String,
    /// Event types to send; empty or absent: all of them.
    #[serde(default)]
    events: Vec<String>,
    description: Option<String>,
    /// `whsec_…`; generated when absent.
    secret: Option<String>,
}

/// `POST /v1/webhooks` → `201`, with the signing secret shown this once.
pub async fn create(
    caller: Authorized<scope::Admin>,
    state: web::Data<AppState>,
    body: web::Json<CreateWebhook>,
) -> Result<HttpResponse, ApiError> {
    unrestricted(&caller)?;
    let body = body.into_inner();
    if body.url.len() > 2048 {
        return Err(bad("url must be at most 2048 characters"));
    }
    let url = check_url(&body.url, state.settings.common.webhook_allow_private).map_err(bad)?;
    if let Some(unknown) = body.events.iter().find(|e| EventType::parse(e).is_none()) {
        let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        return Err(bad(format!("unknown event type `{unknown}`; known: {known:?}")));
    }
    let mut events = body.events.clone();
    events.sort();
    events.dedup();
    if let Some(d) = &body.description {
        if d.chars().count() > 500 || d.chars().any(char::is_control) {
            return Err(bad("description must be at most 500 printable characters"));
        }
    }
    let secret = secret_from(body.secret.as_deref())?;
    let id = new_id("wh");
    let secret_id = new_id("whs");
    let endpoint = state
        .core
        .store
        .create_webhook(&NewWebhook {
            id: &id,
            url: url.as_str(),
            events: &events,
            description: body.description.as_deref(),
            created_by: Some(&caller.key_id),
            secret_id: &secret_id,
            secret: &secret,
        })
        .await?;
    let mut v = serde_json::to_value(&endpoint).map_err(ApiError::internal)?;
    v["secret"] = secret.expose().into();
    Ok(HttpResponse::Created().insert_header(("Cache-Control", "no-store")).json(v))
}

/// `GET /v1/webhooks`: every endpoint, never a secret's value.
pub async fn list(caller: Authorized<scope::Admin>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    unrestricted(&caller)?;
    let endpoints = state.core.store.list_webhooks().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "webhooks": endpoints })))
}

/// `GET /v1/webhooks/{id}`
pub async fn get(
    caller: Authorized<scope::Admin>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    unrestricted(&caller)?;
    let w = state.core.store.get_webhook(&id).await?.ok_or_else(|| not_found(&id))?;
    Ok(HttpResponse::Ok().json(w))
}

/// `DELETE /v1/webhooks/{id}`: the endpoint, its secrets and its deliveries go; nothing more is sent.
pub async fn delete(
    caller: Authorized<scope::Admin>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    unrestricted(&caller)?;
    if state.core.store.delete_webhook(&id).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(not_found(&id))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddSecret {
    /// `whsec_…`; generated when absent.
    secret: Option<String>,
    /// How long the endpoint's other secrets keep signing (default a day; 0: they stop now).
    expire_others_in_seconds: Option<u64>,
}

/// `POST /v1/webhooks/{id}/secrets`: rotation without downtime. Every live secret signs each
/// delivery (`webhook-signature` holds one `v1,…` per secret), so the receiver can move to the
/// new secret whenever it likes before the old ones expire.
pub async fn add_secret(
    caller: Authorized<scope::Admin>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    unrestricted(&caller)?;
    // The body is optional (`{}` or nothing: a generated secret, the others kept for a day).
    let body: AddSecret = if body.iter().all(u8::is_ascii_whitespace) {
        AddSecret { secret: None, expire_others_in_seconds: None }
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not valid: {e}")))?
    };
    let secret = secret_from(body.secret.as_deref())?;
    let keep = body.expire_others_in_seconds.unwrap_or(86_400);
    if keep > 30 * 86_400 {
        return Err(bad("expire_others_in_seconds must be at most 30 days"));
    }
    let expire_at = chrono::Utc::now() + chrono::Duration::seconds(keep as i64);
    let secret_id = new_id("whs");
    if !state.core.store.add_webhook_secret(&id, &secret_id, &secret, Some(expire_at)).await? {
        return Err(not_found(&id));
    }
    Ok(HttpResponse::Created().insert_header(("Cache-Control", "no-store")).json(serde_json::json!({
        "id": secret_id,
        "secret": secret.expose(),
        "others_expire_at": expire_at,
    })))
}

/// `DELETE /v1/webhooks/{id}/secrets/{secret_id}`: stop signing with one secret at once.
pub async fn delete_secret(
    caller: Authorized<scope::Admin>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    unrestricted(&caller)?;
    let (id, secret_id) = path.into_inner();
    match state.core.store.delete_webhook_secret(&id, &secret_id).await? {
        SecretRemoval::Removed => Ok(HttpResponse::NoContent().finish()),
        SecretRemoval::NotFound => {
            Err(ApiError::new(ErrorCode::NotFound, format!("webhook endpoint `{id}` has no secret `{secret_id}`")))
        }
        SecretRemoval::LastOne => Err(ApiError::new(
            ErrorCode::Conflict,
            "this is the endpoint's only live secret: add another (POST …/secrets) before removing it",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    status: Option<String>,
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/webhooks/{id}/deliveries?status=&limit=&cursor=`: newest first, with each one's
/// latest attempts and its next try.
pub async fn deliveries(
    caller: Authorized<scope::Admin>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    q: web::Query<DeliveryQuery>,
) -> Result<HttpResponse, ApiError> {
    unrestricted(&caller)?;
    if let Some(s) = q.status.as_deref() {
        if !["pending", "succeeded", "failed"].contains(&s) {
            return Err(bad("status must be `pending`, `succeeded` or `failed`"));
        }
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(bad("limit must be between 1 and 500"));
    }
    let before = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(c.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| bad("cursor is not valid"))?),
    };
    if state.core.store.get_webhook(&id).await?.is_none() {
        return Err(not_found(&id));
    }
    let rows = state.core.store.list_deliveries(&id, q.status.as_deref(), before, limit).await?;
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(|d| d.id.to_string())).flatten();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "deliveries": rows, "next_cursor": next })))
}

/// `POST /v1/webhooks/{id}/deliveries/{delivery_id}/retry` → `202`: sent again now.
pub async fn retry(
    caller: Authorized<scope::Admin>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    unrestricted(&caller)?;
    let (id, delivery) = path.into_inner();
    let missing =
        || ApiError::new(ErrorCode::NotFound, format!("webhook endpoint `{id}` has no delivery `{delivery}`"));
    let Ok(delivery_id) = delivery.parse::<i64>() else { return Err(missing()) };
    if !state.core.store.retry_delivery(&id, delivery_id).await? {
        return Err(missing());
    }
    state.core.tokens.outbox_signal.notify_one();
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "id": delivery_id, "status": "pending" })))
}
