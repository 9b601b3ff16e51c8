//! The management API: providers and connections. Tokens leave only through `/token`.

use crate::AppState;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde::{Deserialize, Serialize};
use shared::auth::{scope, Authorized};
use shared::catalog::{valid_connection_id, valid_provider_id};
use shared::http::{connection_not_found, usable, ApiError, ErrorCode};
use shared::store::{Connection, ConnectionFilter, ConnectionStatus, EndUser, Profile, Tags};
use shared::tokens::Trigger;

/// A connection as the API shows it: status and schedule, never tokens.
#[derive(Serialize)]
pub struct ConnectionView {
    provider: String,
    connection_id: String,
    status: ConnectionStatus,
    scopes: Vec<String>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    refresh_due_at: Option<chrono::DateTime<chrono::Utc>>,
    last_refresh_at: Option<chrono::DateTime<chrono::Utc>>,
    last_error: Option<String>,
    error_count: i32,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    end_user: Option<EndUser>,
    tags: Tags,
}

impl From<&Connection> for ConnectionView {
    fn from(c: &Connection) -> Self {
        Self {
            provider: c.provider.clone(),
            connection_id: c.connection_id.clone(),
            status: c.status,
            scopes: c.scopes.clone(),
            expires_at: c.expires_at,
            refresh_due_at: c.refresh_due_at,
            last_refresh_at: c.last_refresh_at,
            last_error: c.last_error.clone(),
            error_count: c.error_count,
            created_at: c.created_at,
            updated_at: c.updated_at,
            end_user: c.end_user.clone(),
            tags: c.tags.clone(),
        }
    }
}

pub async fn list_providers(caller: Authorized<scope::ConnectionsRead>, state: web::Data<AppState>) -> HttpResponse {
    let providers: Vec<_> = state
        .core
        .tokens
        .catalog
        .iter()
        .filter(|p| caller.require_provider(&p.id).is_ok())
        .map(|p| {
            serde_json::json!({
                "id": p.id,
                "display_name": p.display_name,
                "auth": p.auth.as_str(),
                "configured": p.is_configured(),
                "missing_configuration": p.missing_configuration(),
                // What a form asks the end user for (credential modes), never a value.
                "fields": p.credentials.as_ref().map(|c| &c.fields),
                "authorize_url": p.authorize_url.as_ref().map(|u| u.as_str()),
                "token_url": p.token_url.as_ref().map(|u| u.as_str()),
                "api_base_url": p.api_base_url.as_ref().map(|_| p.api_endpoint().to_string()),
                "scopes": p.scopes,
                "pkce": p.pkce,
            })
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({ "providers": providers }))
}

/// The query of `GET /v1/connections`. Read by hand, not by serde: `tag=` may repeat.
#[derive(Default)]
pub struct ListQuery {
    provider: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
    filter: ConnectionFilter,
}

impl ListQuery {
    fn parse(query: &str) -> Result<Self, ApiError> {
        let bad = |m: String| ApiError::new(ErrorCode::InvalidRequest, m);
        let mut q = ListQuery::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let once = |slot: &mut Option<String>| {
                if slot.replace(v.to_string()).is_some() {
                    return Err(bad(format!("`{k}` given twice")));
                }
                Ok(())
            };
            match &*k {
                "provider" => once(&mut q.provider)?,
                "status" => once(&mut q.status)?,
                "cursor" => once(&mut q.cursor)?,
                "end_user_id" => once(&mut q.filter.end_user_id)?,
                "organization_id" => once(&mut q.filter.organization_id)?,
                "limit" => {
                    q.limit = Some(v.parse().map_err(|_| bad("limit must be a number".into()))?);
                }
                "tag" => {
                    let (tk, tv) =
                        shared::store::parse_tag_filter(&v).ok_or_else(|| bad("tag must be `key:value`".into()))?;
                    q.filter.tags.insert(tk, tv);
                }
                other => {
                    return Err(bad(format!(
                        "unknown query parameter `{other}`; known: provider, status, limit, cursor, end_user_id, \
                         organization_id, tag"
                    )))
                }
            }
        }
        let tags = (!q.filter.tags.is_empty()).then_some(&q.filter.tags);
        let probe = q.filter.end_user_id.as_ref().map(|id| EndUser {
            id: id.clone(),
            email: None,
            display_name: None,
            organization_id: q.filter.organization_id.clone(),
        });
        shared::store::check_profile(probe.as_ref(), tags).map_err(bad)?;
        if q.filter.organization_id.as_deref().is_some_and(|o| o.is_empty() || o.chars().any(char::is_control)) {
            return Err(bad("organization_id must be printable and not empty".into()));
        }
        Ok(q)
    }
}

fn encode_cursor(c: &Connection) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&[&c.provider, &c.connection_id]).expect("serializes"))
}

fn decode_cursor(s: &str) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()?;
    let [p, c]: [String; 2] = serde_json::from_slice(&raw).ok()?;
    (valid_provider_id(&p) && valid_connection_id(&c)).then_some((p, c))
}

/// `GET /v1/connections?provider=&status=&end_user_id=&organization_id=&tag=k:v&limit=&cursor=`
pub async fn list(
    caller: Authorized<scope::ConnectionsRead>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = ListQuery::parse(req.query_string())?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(
            ConnectionStatus::parse(s)
                .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "status must be `active` or `needs_reauth`"))?,
        ),
    };
    match (caller.providers(), q.provider.as_deref()) {
        (Some(_), None) => {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this API key is limited to some providers: pass ?provider=",
            ))
        }
        (_, Some(p)) => caller.require_provider(p)?,
        (None, None) => {}
    }
    // Checked before the query: an id no connection can have (a NUL byte, say, which the
    // database refuses in text) is the caller's mistake, not a server error.
    if q.provider.as_deref().is_some_and(|p| !valid_provider_id(p)) {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "provider is not a valid provider id"));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "limit must be between 1 and 1000"));
    }
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => {
            Some(decode_cursor(c).ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "cursor is not valid"))?)
        }
    };
    let rows = state
        .core
        .store
        .list_connections(
            q.provider.as_deref(),
            status,
            &q.filter,
            after.as_ref().map(|(p, c)| (p.as_str(), c.as_str())),
            limit,
        )
        .await?;
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(encode_cursor)).flatten();
    let views: Vec<ConnectionView> = rows.iter().map(ConnectionView::from).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "connections": views, "next_cursor": next })))
}

/// `GET /v1/connections/{provider}/{connection_id}`
pub async fn get(
    caller: Authorized<scope::ConnectionsRead>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (provider, id) = reachable(&caller, path)?;
    let c =
        state.core.store.get_connection(&provider, &id).await?.ok_or_else(|| connection_not_found(&provider, &id))?;
    Ok(HttpResponse::Ok().json(ConnectionView::from(&c)))
}

/// `GET /v1/connections/{provider}/{connection_id}/token`: a token valid for a while yet.
#[tracing::instrument(skip_all, fields(provider = %path.0, connection_id = %path.1))]
pub async fn token(
    caller: Authorized<scope::TokensRead>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (provider, id) = reachable(&caller, path)?;
    if state.core.tokens.catalog.get(&provider).is_some_and(|p| p.credentials.is_some()) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedAuthMode,
            format!("provider `{provider}` connects with credentials, not tokens: read them from …/credentials"),
        ));
    }
    let (c, creds) = usable(state.core.tokens.valid_token(&provider, &id).await?, &provider, &id)?;
    // Recorded before the secret leaves: a read that cannot be audited does not happen.
    state.core.store.audit(&super::actor(&caller, &req), "token.read", Some((&provider, &id)), None).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(serde_json::json!({
            "access_token": creds.access_token,
            "token_type": creds.token_type.unwrap_or_else(|| "Bearer".into()),
            "expires_at": c.expires_at,
            "scopes": c.scopes,
        })))
}

/// `GET /v1/connections/{provider}/{connection_id}/credentials`: a credential connection's
/// stored values (the end user's, or a two-step mode's derived ones), for backends that call
/// the provider themselves; the counterpart of `/token`. The operator's own values are not
/// included: the backend has them.
#[tracing::instrument(skip_all, fields(provider = %path.0, connection_id = %path.1))]
pub async fn credentials(
    caller: Authorized<scope::TokensRead>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (provider, id) = reachable(&caller, path)?;
    let p = state.core.tokens.catalog.get(&provider).ok_or_else(|| connection_not_found(&provider, &id))?;
    if p.credentials.is_none() {
        return Err(ApiError::new(
            ErrorCode::UnsupportedAuthMode,
            format!("provider `{provider}` connects through OAuth2: read its token from …/token"),
        ));
    }
    let (c, creds) = usable(state.core.tokens.valid_token(&provider, &id).await?, &provider, &id)?;
    state.core.store.audit(&super::actor(&caller, &req), "credentials.read", Some((&provider, &id)), None).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(serde_json::json!({
            "provider": c.provider,
            "connection_id": c.connection_id,
            "auth": p.auth.as_str(),
            "credentials": creds.values,
        })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConnection {
    provider: String,
    connection_id: String,
    /// The end user's values (credential modes); none for client-credentials providers.
    #[serde(default)]
    credentials: std::collections::BTreeMap<String, String>,
    /// The product's end user the connection belongs to.
    end_user: Option<EndUser>,
    /// The product's labels on the connection.
    tags: Option<Tags>,
}

impl CreateConnection {
    fn profile(&self) -> Result<Profile, ApiError> {
        shared::store::check_profile(self.end_user.as_ref(), self.tags.as_ref())
            .map_err(|m| ApiError::new(ErrorCode::InvalidRequest, m))?;
        Ok(Profile { end_user: self.end_user.clone(), tags: self.tags.clone() })
    }
}

/// `POST /v1/connections`: connect (or reconnect, keeping the id) a credential connection. The
/// provider checks the credentials first; only what it accepts is sealed and stored.
#[tracing::instrument(skip_all, fields(provider = %body.provider))]
pub async fn create(
    caller: Authorized<scope::ConnectionsWrite>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<CreateConnection>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    caller.require_provider(&body.provider)?;
    let p = super::connect::catalog_provider(&state, &body.provider)?;
    let profile = body.profile()?;
    let actor = super::actor(&caller, &req);
    if p.auth == shared::catalog::AuthMode::OAuth2ClientCredentials {
        return create_machine(&state, p, &body, &profile, &actor).await;
    }
    let Some(spec) = &p.credentials else {
        return Err(ApiError::new(
            ErrorCode::UnsupportedAuthMode,
            format!(
                "provider `{}` connects through OAuth2: create a connect session (POST /v1/connect/sessions)",
                p.id
            ),
        ));
    };
    if !p.is_configured() {
        return Err(ApiError::new(
            ErrorCode::ProviderNotConfigured,
            format!("provider `{}` is not configured yet; set {}", p.id, p.missing_configuration().join(" and ")),
        ));
    }
    super::connect::check_connection_id(&body.connection_id)?;
    shared::credentials::check_given(spec, &body.credentials)
        .map_err(|m| ApiError::new(ErrorCode::InvalidRequest, m))?;
    let outcome = state
        .core
        .tokens
        .connect_with_credentials(&p.id, &body.connection_id, &body.credentials, &profile, &actor)
        .await?;
    let conn = outcome.map_err(|e| credential_error(p, e))?;
    let view = ConnectionView::from(&conn);
    // The first version of a row is a new connection; a later one replaced the credentials.
    Ok(if conn.token_version == 1 { HttpResponse::Created().json(view) } else { HttpResponse::Ok().json(view) })
}

/// `POST /v1/connections` for a client-credentials provider: the first token is fetched with
/// the operator's client id and secret; there is nothing for the caller to give.
async fn create_machine(
    state: &AppState,
    p: &shared::catalog::Provider,
    body: &CreateConnection,
    profile: &Profile,
    actor: &shared::store::Actor,
) -> Result<HttpResponse, ApiError> {
    if !p.is_configured() {
        return Err(ApiError::new(
            ErrorCode::ProviderNotConfigured,
            format!("provider `{}` is not configured yet; set {}", p.id, p.missing_configuration().join(" and ")),
        ));
    }
    super::connect::check_connection_id(&body.connection_id)?;
    if !body.credentials.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("provider `{}` connects with the operator's client credentials: send no `credentials`", p.id),
        ));
    }
    let conn =
        state.core.tokens.connect_machine(&p.id, &body.connection_id, profile, actor).await?.map_err(|e| match e {
            shared::oauth::OAuthError::Rejected { error, description, .. } => ApiError::new(
                ErrorCode::IntegrationRefused,
                format!(
                    "{} refused this integration's client credentials ({error}{}); the operator must fix them",
                    p.display_name,
                    description.map(|d| format!(": {d}")).unwrap_or_default()
                ),
            ),
            other => ApiError::new(
                ErrorCode::UpstreamUnreachable,
                format!("{} could not issue a token now ({other}); nothing was stored, try again", p.display_name),
            ),
        })?;
    let view = ConnectionView::from(&conn);
    Ok(if conn.token_version == 1 { HttpResponse::Created().json(view) } else { HttpResponse::Ok().json(view) })
}

/// What a refused or failed verification tells the caller: the provider's own words.
fn credential_error(p: &shared::catalog::Provider, e: shared::oauth::OAuthError) -> ApiError {
    use shared::credentials::{INTEGRATION_REFUSED, INVALID_CREDENTIALS};
    use shared::oauth::OAuthError;
    match e {
        OAuthError::Rejected { error, description, .. } if error == INVALID_CREDENTIALS => ApiError::new(
            ErrorCode::InvalidCredentials,
            description.unwrap_or_else(|| "the provider refused the credentials".into()),
        ),
        OAuthError::Rejected { error, description, .. } if error == INTEGRATION_REFUSED => ApiError::new(
            ErrorCode::IntegrationRefused,
            format!(
                "{} refused this integration's own credentials ({}); the operator must fix them, the end user cannot",
                p.display_name,
                description.unwrap_or_default()
            ),
        ),
        OAuthError::NotConfigured(_) => ApiError::new(
            ErrorCode::ProviderNotConfigured,
            format!("provider `{}` is not configured for credentials; see the gateway's log", p.id),
        ),
        other => {
            let mut err = ApiError::new(
                ErrorCode::UpstreamUnreachable,
                format!(
                    "{} could not check the credentials now ({other}); nothing was stored, try again",
                    p.display_name
                ),
            );
            if let OAuthError::Transient { retry_after: Some(d), .. } = other {
                err.retry_after = Some(d);
            }
            err
        }
    }
}

/// `POST /v1/connections/{provider}/{connection_id}/refresh`: refresh now.
#[tracing::instrument(skip_all, fields(provider = %path.0, connection_id = %path.1))]
pub async fn refresh(
    caller: Authorized<scope::ConnectionsWrite>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (provider, id) = reachable(&caller, path)?;
    let outcome = state.core.tokens.refresh(&provider, &id, Trigger::Force).await?;
    // Audited whatever came of it: the provider was called on this key's say-so.
    let result = match &outcome {
        shared::tokens::Outcome::Refreshed(..) => "refreshed",
        shared::tokens::Outcome::Current(..) => "checked",
        shared::tokens::Outcome::NotFound => "not_found",
        shared::tokens::Outcome::NeedsReauth { .. } => "needs_reauth",
        shared::tokens::Outcome::Failed { .. } => "failed",
        shared::tokens::Outcome::NotDue => "not_due",
    };
    if !matches!(outcome, shared::tokens::Outcome::NotFound) {
        let detail = serde_json::json!({ "result": result });
        state
            .core
            .store
            .audit(&super::actor(&caller, &req), "connection.refreshed", Some((&provider, &id)), Some(&detail))
            .await?;
    }
    let (c, _) = usable(outcome, &provider, &id)?;
    Ok(HttpResponse::Ok().json(ConnectionView::from(&c)))
}

/// `DELETE /v1/connections/{provider}/{connection_id}`: forget the connection and revoke its
/// tokens at the provider (RFC 7009) where the provider has a revocation endpoint.
#[tracing::instrument(skip_all, fields(provider = %path.0, connection_id = %path.1))]
pub async fn delete(
    caller: Authorized<scope::ConnectionsWrite>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (provider, id) = reachable(&caller, path)?;
    let c = state
        .core
        .store
        .delete_connection(&provider, &id, &super::actor(&caller, &req))
        .await?
        .ok_or_else(|| connection_not_found(&provider, &id))?;
    state.core.tokens.outbox_signal.notify_one();
    let oauth = state.core.tokens.catalog.get(&provider).filter(|p| p.credentials.is_none());
    if let (Some(p), Ok(creds)) = (oauth, state.core.store.open_credentials(&c)) {
        let (token, hint) = match &creds.refresh_token {
            Some(rt) => (rt.as_str(), "refresh_token"),
            None => (creds.access_token.as_str(), "access_token"),
        };
        if let Err(e) = state.core.tokens.oauth.revoke(p, token, hint).await {
            tracing::warn!(error = %e, "revoking the deleted connection's token at the provider failed");
        }
    }
    Ok(HttpResponse::NoContent().finish())
}

/// A connection's ids from the path, if the caller's key may reach its provider: ids no
/// connection can have (a NUL byte, say, which the database refuses in text) name no
/// connection, so they get the 404 any unknown one gets.
fn reachable(caller: &shared::auth::Caller, path: web::Path<(String, String)>) -> Result<(String, String), ApiError> {
    let (provider, id) = path.into_inner();
    if !valid_provider_id(&provider) || !valid_connection_id(&id) {
        return Err(connection_not_found(&provider, &id));
    }
    caller.require_provider(&provider)?;
    Ok((provider, id))
}
