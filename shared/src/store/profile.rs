//! Who a connection belongs to in the product, the product's labels on it, and who acted on it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The product's end user a connection belongs to. Only `id` is required; the rest is shown
/// back and sent in webhooks so the product need not keep its own table of connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndUser {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
}

/// The product's labels on a connection.
pub type Tags = BTreeMap<String, String>;

/// What a connect session or a `POST /v1/connections` says about the connection's owner.
/// `None` leaves a reconnected connection's value as it was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub end_user: Option<EndUser>,
    pub tags: Option<Tags>,
}

/// Who did something: the API key (its id, never the key) and the client address. A flow
/// completed in a browser is done by the key that created the session, from the browser's address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub key_id: Option<String>,
    pub address: Option<String>,
}

impl Actor {
    pub fn new(key_id: &str, address: Option<std::net::IpAddr>) -> Self {
        Self { key_id: Some(key_id.to_owned()), address: address.map(|a| a.to_string()) }
    }

    /// Work the system does on its own (a scheduled refresh, a re-check).
    pub fn system() -> Self {
        Self::default()
    }
}

const MAX_TAGS: usize = 50;
const MAX_TAG_KEY: usize = 64;
const MAX_TEXT: usize = 255;

/// Checks an end user and tags a caller sent; the message says what is wrong.
pub fn check_profile(end_user: Option<&EndUser>, tags: Option<&Tags>) -> Result<(), String> {
    // NUL is refused by PostgreSQL in text and JSON; control characters have no business in
    // identifiers and would garble logs and filters.
    let text = |what: &str, v: &str, max: usize, required: bool| -> Result<(), String> {
        if required && v.is_empty() {
            return Err(format!("{what} must not be empty"));
        }
        if v.chars().count() > max {
            return Err(format!("{what} must be at most {max} characters"));
        }
        if v.chars().any(char::is_control) {
            return Err(format!("{what} must not contain control characters"));
        }
        Ok(())
    };
    if let Some(u) = end_user {
        text("end_user.id", &u.id, MAX_TEXT, true)?;
        if let Some(e) = &u.email {
            text("end_user.email", e, 320, true)?;
            if !e.contains('@') {
                return Err("end_user.email must be an email address".into());
            }
        }
        if let Some(n) = &u.display_name {
            text("end_user.display_name", n, MAX_TEXT, false)?;
        }
        if let Some(o) = &u.organization_id {
            text("end_user.organization_id", o, MAX_TEXT, true)?;
        }
    }
    if let Some(tags) = tags {
        if tags.len() > MAX_TAGS {
            return Err(format!("at most {MAX_TAGS} tags"));
        }
        for (k, v) in tags {
            if k.is_empty()
                || k.len() > MAX_TAG_KEY
                || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
            {
                return Err(format!(
                    "tag key {k:?} must be 1-{MAX_TAG_KEY} letters, digits, '-', '_', '.' or '/' (a filter \
                     `tag=key:value` splits at the first ':')"
                ));
            }
            text(&format!("tag {k:?}"), v, MAX_TEXT, false)?;
        }
    }
    Ok(())
}

/// Parses a `tag=key:value` filter.
pub fn parse_tag_filter(s: &str) -> Option<(String, String)> {
    let (k, v) = s.split_once(':')?;
    (!k.is_empty()).then(|| (k.to_owned(), v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> EndUser {
        EndUser { id: id.into(), email: None, display_name: None, organization_id: None }
    }

    #[test]
    fn profiles_are_checked_field_by_field() {
        assert!(check_profile(Some(&user("u-1")), None).is_ok());
        assert!(check_profile(Some(&user("")), None).unwrap_err().contains("end_user.id"));
        assert!(check_profile(Some(&user("a\u{0}b")), None).unwrap_err().contains("control"));
        let mut u = user("u");
        u.email = Some("nope".into());
        assert!(check_profile(Some(&u), None).unwrap_err().contains("email"));
        let tags: Tags = [("plan".to_string(), "pro".to_string())].into();
        assert!(check_profile(None, Some(&tags)).is_ok());
        let bad: Tags = [("a:b".to_string(), "x".to_string())].into();
        assert!(check_profile(None, Some(&bad)).unwrap_err().contains("tag key"));
        let many: Tags = (0..51).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert!(check_profile(None, Some(&many)).unwrap_err().contains("at most 50"));
    }

    #[test]
    fn tag_filters_split_at_the_first_colon() {
        assert_eq!(parse_tag_filter("team:a:b"), Some(("team".into(), "a:b".into())));
        assert_eq!(parse_tag_filter("team:"), Some(("team".into(), "".into())));
        assert_eq!(parse_tag_filter(":x"), None);
        assert_eq!(parse_tag_filter("nocolon"), None);
    }
}
