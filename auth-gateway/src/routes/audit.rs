//! `GET /v1/audit`: the audit trail (scope `admin`). A key limited to some providers sees the
//! entries of those providers' connections only.

use crate::AppState;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use shared::auth::{scope, Authorized};
use shared::http::{ApiError, ErrorCode};
use shared::store::AuditFilter;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    action: Option<String>,
    api_key_id: Option<String>,
    provider: Option<String>,
    connection_id: Option<String>,
    /// RFC 3339 times: entries at or after `since`, before `until`.
    since: Option<String>,
    until: Option<String>,
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, m)
}

fn time(name: &str, v: Option<&str>) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    v.map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|_| bad(format!("{name} must be an RFC 3339 time, like 2026-01-31T12:00:00Z")))
    })
    .transpose()
}

/// A filter value as the database can hold it: no NUL or other control characters.
fn text(name: &str, v: &Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(s) if s.is_empty() || s.len() > 255 || s.chars().any(char::is_control) => {
            Err(bad(format!("{name} must be 1-255 printable characters")))
        }
        other => Ok(other.clone()),
    }
}

/// `GET /v1/audit?action=&api_key_id=&provider=&connection_id=&since=&until=&limit=&cursor=`,
/// newest first.
pub async fn list(
    caller: Authorized<scope::Admin>,
    state: web::Data<AppState>,
    q: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(bad("limit must be between 1 and 1000"));
    }
    let before = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(c.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| bad("cursor is not valid"))?),
    };
    if let Some(p) = q.provider.as_deref() {
        caller.require_provider(p)?;
    }
    let filter = AuditFilter {
        action: text("action", &q.action)?,
        api_key_id: text("api_key_id", &q.api_key_id)?,
        provider: text("provider", &q.provider)?,
        connection_id: text("connection_id", &q.connection_id)?,
        providers: caller.providers().map(<[String]>::to_vec),
        since: time("since", q.since.as_deref())?,
        until: time("until", q.until.as_deref())?,
    };
    let rows = state.core.store.list_audit(&filter, before, limit).await?;
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(|e| e.id.to_string())).flatten();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "entries": rows, "next_cursor": next })))
}
