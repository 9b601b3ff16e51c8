//! How a connect flow ends: back at the product's `return_url` with the outcome in its query
//! (redirect mode), or on the gateway's own page, when the session has no `return_url` or runs
//! in a popup. A popup's page tells the window that opened it (`postMessage`, sent only to the
//! origin of the session's `return_url`) and closes itself. An API client that asks for JSON
//! gets the outcome as JSON instead of a page.

use crate::pages;
use crate::AppState;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use shared::store::{ConsumedSession, Ending, SessionLookup};
use url::Url;

/// Whether the request comes from a browser (it prefers HTML), not an API client.
pub fn wants_html(req: &HttpRequest) -> bool {
    let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    accept.contains("text/html") && !accept.starts_with("application/json")
}

/// Whether the request asks for JSON rather than a page (an API client following the flow).
pub fn wants_json(req: &HttpRequest) -> bool {
    let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    accept.starts_with("application/json")
}

/// What the flow came to.
pub enum Outcome<'a> {
    Connected { provider: &'a str, connection_id: &'a str },
    Failed { error: &'a str },
}

impl<'a> Outcome<'a> {
    pub fn connected(session: &'a ConsumedSession) -> Self {
        Self::Connected { provider: &session.provider, connection_id: &session.connection_id }
    }
}

/// The end of a flow whose session cannot be used any more (`used`: the code for one already
/// used); `None` for an unknown one, which has no ending to go to (each route says so its way).
pub fn unusable(state: &AppState, req: &HttpRequest, why: SessionLookup, used: &str) -> Option<HttpResponse> {
    match why {
        SessionLookup::Unknown => None,
        SessionLookup::Expired { ending } => {
            Some(finish(state, req, &ending, Outcome::Failed { error: "session_expired" }))
        }
        SessionLookup::AlreadyUsed { ending } => Some(finish(state, req, &ending, Outcome::Failed { error: used })),
    }
}

fn redirect(to: &str) -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, to))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// The flow's last answer.
pub fn finish(state: &AppState, req: &HttpRequest, ending: &Ending, outcome: Outcome<'_>) -> HttpResponse {
    let pairs: Vec<(&str, &str)> = match &outcome {
        Outcome::Connected { provider, connection_id } => {
            vec![("status", "connected"), ("provider", provider), ("connection_id", connection_id)]
        }
        Outcome::Failed { error } => vec![("status", "error"), ("error", error)],
    };
    if let (Some(return_url), false) = (&ending.return_url, ending.popup) {
        return match Url::parse(return_url) {
            Ok(mut u) => {
                u.query_pairs_mut().extend_pairs(&pairs);
                redirect(u.as_str())
            }
            Err(_) => actix_web::ResponseError::error_response(&shared::http::ApiError::internal(
                "stored return_url does not parse",
            )),
        };
    }
    let status = match &outcome {
        Outcome::Connected { .. } => StatusCode::OK,
        Outcome::Failed { error } => pages::text::end_status(error),
    };
    let outcome_json: serde_json::Map<String, serde_json::Value> =
        pairs.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
    if wants_json(req) {
        return HttpResponse::build(status).insert_header((header::CACHE_CONTROL, "no-store")).json(outcome_json);
    }
    let provider_name = match &outcome {
        Outcome::Connected { provider, .. } => {
            state.core.tokens.catalog.get(provider).map_or(provider.to_string(), |p| p.display_name.clone())
        }
        Outcome::Failed { .. } => String::new(),
    };
    // The popup's message goes to the product's origin only; without one, the page alone says it.
    let message = ending
        .popup
        .then(|| ending.return_url.as_deref().and_then(|u| Url::parse(u).ok()))
        .flatten()
        .map(|u| (u.origin().ascii_serialization(), serde_json::Value::Object(outcome_json)));
    let look = state.look();
    match outcome {
        Outcome::Connected { .. } => {
            pages::end_page(status, &pages::text::connected(&provider_name), pages::text::CONNECTED_LEAD, message, look)
        }
        Outcome::Failed { error } => {
            let (title, lead) = pages::text::failed(error);
            pages::end_page(status, title, lead, message, look)
        }
    }
}
