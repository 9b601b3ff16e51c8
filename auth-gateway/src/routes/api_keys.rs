//! `/v1/api-keys`: create, list and revoke API keys at run time (scope `admin`).

use crate::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use shared::auth::{scope, Authorized, Scope};
use shared::catalog::valid_provider_id;
use shared::http::{ApiError, ErrorCode};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    name: String,
    scopes: Vec<String>,
    #[serde(default)]
    providers: Vec<String>,
}

/// `POST /v1/api-keys` → `201 {"id", "key", …}`; the key is shown this once.
pub async fn create(
    caller: Authorized<scope::Admin>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<CreateKey>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let name = body.name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "name must be 1-100 printable characters"));
    }
    if body.scopes.is_empty() {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "at least one scope is required"));
    }
    if let Some(bad) = body.scopes.iter().find(|s| Scope::parse(s).is_none()) {
        let known: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
        return Err(ApiError::new(ErrorCode::InvalidRequest, format!("unknown scope `{bad}`; known: {known:?}")));
    }
    if let Some(bad) = body.providers.iter().find(|p| !valid_provider_id(p)) {
        return Err(ApiError::new(ErrorCode::InvalidRequest, format!("`{bad}` is not a provider id")));
    }
    let scopes: Vec<Scope> = body.scopes.iter().filter_map(|s| Scope::parse(s)).collect();
    if !caller.may_grant(&scopes, &body.providers) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a key can only create keys with some of its own scopes and providers \
             (a key limited to providers must name some of them)",
        ));
    }
    let id = format!("ak_{}", &shared::crypto::random_token()[..16]);
    let key = shared::auth::new_api_key();
    let record = state
        .core
        .store
        .create_api_key(&id, name, &shared::crypto::hash_secret(&key), &body.scopes, &body.providers)
        .await?;
    let detail = serde_json::json!({ "id": id, "name": name, "scopes": body.scopes, "providers": body.providers });
    state.core.store.audit(&super::actor(&caller, &req), "api_key.created", None, Some(&detail)).await?;
    let mut v = serde_json::to_value(&record).map_err(ApiError::internal)?;
    v["key"] = key.into();
    Ok(HttpResponse::Created().insert_header(("Cache-Control", "no-store")).json(v))
}

/// `GET /v1/api-keys`: every key the caller may manage, revoked ones included; never the keys
/// themselves.
pub async fn list(caller: Authorized<scope::Admin>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut keys = state.core.store.list_api_keys().await?;
    keys.retain(|k| caller.may_manage(&k.providers));
    Ok(HttpResponse::Ok().json(serde_json::json!({ "api_keys": keys })))
}

/// `DELETE /v1/api-keys/{id}`: revoke; effective everywhere within the lookup cache time.
pub async fn revoke(
    caller: Authorized<scope::Admin>,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    // A key beyond the caller's reach answers as if it did not exist.
    let reachable = state.core.store.get_api_key(&id).await?.is_some_and(|k| caller.may_manage(&k.providers));
    if reachable && state.core.store.revoke_api_key(&id).await? {
        let detail = serde_json::json!({ "id": id.as_str() });
        state.core.store.audit(&super::actor(&caller, &req), "api_key.revoked", None, Some(&detail)).await?;
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::new(ErrorCode::NotFound, format!("no live API key `{id}`")))
    }
}
