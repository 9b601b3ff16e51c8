//! Credential connections: API keys, HTTP Basic and two-step user keys, the way each provider's
//! own API documentation describes them.
//!
//! A provider entry says which values the end user gives ([`Field`]), which the operator gives
//! ([`OperatorValue`], from the environment), and where they go on every call ([`Placement`]:
//! header fields, query parameters, fields of a form body, through [`Template`]s). It also says
//! how the provider answers "these credentials are bad" ([`Rule`]) and which request proves that
//! they work ([`Probe`]). Everything that puts credentials on a request or reads a provider's
//! verdict is here, and the verification at connect, the scheduled re-check and the proxy all
//! use it, so what was verified is exactly what is sent.

use crate::catalog::Provider;
use crate::oauth::OAuthError;
use crate::secret::Secret;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How a provider authenticates the calls made for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// The authorization-code flow (RFC 6749 §4.1) with PKCE: the end user consents at the
    /// provider, calls carry `Authorization: Bearer <access token>`.
    #[serde(rename = "oauth2")]
    OAuth2,
    /// Machine to machine (RFC 6749 §4.4): the operator's client id and secret fetch tokens
    /// for the connection, again before each expires; there is no end user.
    #[serde(rename = "oauth2_client_credentials")]
    OAuth2ClientCredentials,
    /// The end user's API key (and whatever else the provider wants), placed on every call.
    ApiKey,
    /// HTTP Basic with the end user's values (the same machinery as `api_key`, with the
    /// `Authorization: Basic` field placed by default).
    Basic,
    /// The end user's values are exchanged once for a derived one (Redtail's UserKey), which is
    /// stored and placed on calls; the values given are not kept.
    TwoStep,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OAuth2 => "oauth2",
            Self::OAuth2ClientCredentials => "oauth2_client_credentials",
            Self::ApiKey => "api_key",
            Self::Basic => "basic",
            Self::TwoStep => "two_step",
        }
    }

    /// Whether connections of this mode hold credentials rather than OAuth tokens.
    pub fn uses_credentials(self) -> bool {
        !matches!(self, Self::OAuth2 | Self::OAuth2ClientCredentials)
    }
}

/// One value the end user gives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// The name templates use and the API takes (`credentials: {"api_key": …}`).
    pub name: String,
    /// What a form shows.
    pub label: String,
    /// Whether the value is a secret (a form masks it and never echoes it back).
    #[serde(default = "yes")]
    pub secret: bool,
    /// Where the end user finds it, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// The provider's page that shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help_url: Option<String>,
}

fn yes() -> bool {
    true
}

/// A value the operator gives, the same for every connection of the provider (Kartra's App id,
/// Redtail's partner API key): read from `<PREFIX>_<NAME>` in the environment.
#[derive(Debug, Clone)]
pub struct OperatorValue {
    pub name: String,
    pub env: String,
    pub value: Option<Secret<String>>,
}

/// A value with names in it: `{name}` is the named value, `{base64:a:b}` the standard base64 of
/// the named values joined by `:` (HTTP Basic, Redtail's `Userkeyauth`).
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Value(String),
    Base64(Vec<String>),
}

/// A value name: what fields, operator values and derived values are called.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Template {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                if rest.contains('}') {
                    return Err(format!("`{s}` has a `}}` without its `{{`"));
                }
                pieces.push(Piece::Text(rest.to_owned()));
                break;
            };
            if rest[..open].contains('}') {
                return Err(format!("`{s}` has a `}}` without its `{{`"));
            }
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let close = rest[open..].find('}').ok_or_else(|| format!("`{s}` has a `{{` without its `}}`"))? + open;
            let inner = &rest[open + 1..close];
            let piece = match inner.strip_prefix("base64:") {
                Some(names) => Piece::Base64(names.split(':').map(str::to_owned).collect()),
                None => Piece::Value(inner.to_owned()),
            };
            let names: Vec<&String> = match &piece {
                Piece::Value(n) => vec![n],
                Piece::Base64(ns) => ns.iter().collect(),
                Piece::Text(_) => vec![],
            };
            if let Some(bad) = names.iter().find(|n| !valid_name(n)) {
                return Err(format!("`{s}`: `{bad}` is not a value name (a-z, 0-9 and '_')"));
            }
            pieces.push(piece);
            rest = &rest[close + 1..];
        }
        Ok(Self { pieces })
    }

    /// The value names it uses.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().flat_map(|p| match p {
            Piece::Text(_) => Vec::new(),
            Piece::Value(n) => vec![n.as_str()],
            Piece::Base64(ns) => ns.iter().map(String::as_str).collect(),
        })
    }

    /// The template with `values` in it; `Err` names a value that is missing.
    pub fn render(&self, values: &Values<'_>) -> Result<String, String> {
        let get = |n: &str| values.get(n).ok_or_else(|| n.to_owned());
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Value(n) => out.push_str(get(n)?),
                Piece::Base64(ns) => {
                    let joined = ns.iter().map(|n| get(n)).collect::<Result<Vec<_>, _>>()?.join(":");
                    out.push_str(&base64::engine::general_purpose::STANDARD.encode(joined));
                }
            }
        }
        Ok(out)
    }
}

/// The values a template may use: a connection's, then the operator's.
pub struct Values<'a> {
    connection: &'a BTreeMap<String, String>,
    operator: &'a [OperatorValue],
}

impl<'a> Values<'a> {
    pub fn new(connection: &'a BTreeMap<String, String>, operator: &'a [OperatorValue]) -> Self {
        Self { connection, operator }
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.connection.get(name).map(String::as_str).or_else(|| {
            self.operator.iter().find(|o| o.name == name).and_then(|o| o.value.as_ref()).map(|v| v.expose().as_str())
        })
    }
}

/// Where values go on a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    pub headers: Vec<(String, Template)>,
    pub query: Vec<(String, Template)>,
    pub form: Vec<(String, Template)>,
}

/// A placement with the values in it.
#[derive(Clone, Default, PartialEq)]
pub struct Placed {
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
}

impl std::fmt::Debug for Placed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        f.debug_struct("Placed")
            .field("headers", &names(&self.headers))
            .field("query", &names(&self.query))
            .field("form", &names(&self.form))
            .finish()
    }
}

impl Placement {
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.query.is_empty() && self.form.is_empty()
    }

    fn templates(&self) -> impl Iterator<Item = &Template> {
        self.headers.iter().chain(&self.query).chain(&self.form).map(|(_, t)| t)
    }

    /// The placement rendered; `Err` says which value is missing or cannot go in a header.
    pub fn render(&self, values: &Values<'_>) -> Result<Placed, String> {
        let each = |v: &[(String, Template)]| -> Result<Vec<(String, String)>, String> {
            v.iter()
                .map(|(n, t)| {
                    t.render(values).map(|r| (n.clone(), r)).map_err(|m| format!("the value `{m}` is missing"))
                })
                .collect()
        };
        let headers: Vec<(String, String)> =
            each(&self.headers)?.into_iter().map(|(n, v)| (n.to_ascii_lowercase(), v)).collect();
        if let Some((n, _)) = headers.iter().find(|(_, v)| reqwest::header::HeaderValue::from_str(v).is_err()) {
            return Err(format!("the value for the `{n}` header holds characters a header cannot carry"));
        }
        Ok(Placed { headers, query: each(&self.query)?, form: each(&self.form)? })
    }
}

/// How a provider says no: any of these statuses, or a JSON answer whose value at `pointer`
/// (RFC 6901) is one of `values` (numbers compare by their text: Kartra's `"type": 203`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub statuses: Vec<u16>,
    pub pointer: Option<String>,
    #[serde(default)]
    pub values: Vec<String>,
}

impl Rule {
    pub fn is_empty(&self) -> bool {
        self.statuses.is_empty() && self.pointer.is_none()
    }

    /// Whether the rule reads the answer's body.
    pub fn reads_body(&self) -> bool {
        self.pointer.is_some()
    }

    pub fn matches(&self, status: u16, body: Option<&serde_json::Value>) -> bool {
        if self.statuses.contains(&status) {
            return true;
        }
        let (Some(pointer), Some(body)) = (&self.pointer, body) else { return false };
        match body.pointer(pointer) {
            Some(serde_json::Value::String(s)) => self.values.iter().any(|v| v == s),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                let text = v.to_string();
                self.values.contains(&text)
            }
            _ => false,
        }
    }
}

/// A request to the provider's API: the verification call, or a two-step exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub method: reqwest::Method,
    /// Relative to the provider's `api_base_url` ("" is the base itself).
    pub path: String,
    pub query: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
}

/// The first step of `two_step`: a request authenticated with the end user's values (its own
/// placement), and where in its JSON answer each derived value is (RFC 6901 pointers).
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    pub request: Probe,
    pub place: Placement,
    pub derive: Vec<(String, String)>,
}

/// Everything a credential mode needs to know about a provider.
#[derive(Debug, Clone)]
pub struct CredentialSpec {
    pub fields: Vec<Field>,
    pub operator: Vec<OperatorValue>,
    /// Where the stored values (and the operator's) go on every call.
    pub place: Placement,
    pub exchange: Option<Exchange>,
    /// The request whose answer proves the stored values work: any answer that is not a
    /// credential error (nor a 5xx or 429) counts.
    pub verify: Option<Probe>,
    /// "These credentials are bad": the connection needs its end user again.
    pub refused: Rule,
    /// "The integration itself is refused" (Kartra's App errors): the operator's problem.
    pub app_refused: Rule,
    /// Where a JSON answer carries the provider's own message.
    pub message_pointer: String,
    /// How often a connection's credentials are checked again.
    pub recheck: Duration,
}

impl CredentialSpec {
    /// The environment variables still missing for the provider to take connections.
    pub fn missing_operator_values(&self) -> Vec<&str> {
        self.operator.iter().filter(|o| o.value.is_none()).map(|o| o.env.as_str()).collect()
    }

    /// The names of the values a connection stores: the derived ones for `two_step`, the
    /// fields otherwise.
    pub fn stored_names(&self) -> Vec<&str> {
        match &self.exchange {
            Some(x) => x.derive.iter().map(|(n, _)| n.as_str()).collect(),
            None => self.fields.iter().map(|f| f.name.as_str()).collect(),
        }
    }

    /// Checks that every name the templates use is defined, and nothing is defined twice.
    pub fn validate(&self) -> Result<(), String> {
        let mut defined: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
        defined.extend(self.operator.iter().map(|o| o.name.as_str()));
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = defined.iter().find(|n| !seen.insert(**n)) {
            return Err(format!("the value `{dup}` is defined twice"));
        }
        if let Some(bad) = defined.iter().find(|n| !valid_name(n)) {
            return Err(format!("`{bad}` is not a value name (a-z, 0-9 and '_')"));
        }
        if self.fields.is_empty() {
            return Err("`credentials.fields` must list what the end user gives".into());
        }
        let check = |place: &Placement, names: &[&str], what: &str| -> Result<(), String> {
            for t in place.templates() {
                if let Some(n) = t.names().find(|n| !names.contains(n)) {
                    return Err(format!("{what} uses `{{{n}}}`, which is neither a field nor an operator value"));
                }
            }
            for (name, _) in &place.headers {
                reqwest::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("{what}: `{name}` is not a header name"))?;
            }
            Ok(())
        };
        match &self.exchange {
            Some(x) => {
                check(&x.place, &defined, "`credentials.exchange`")?;
                if x.derive.is_empty() {
                    return Err("`credentials.exchange.derive` must name at least one value".into());
                }
                let mut after: Vec<&str> = x.derive.iter().map(|(n, _)| n.as_str()).collect();
                if let Some(bad) = after.iter().find(|n| !valid_name(n) || defined.contains(n)) {
                    return Err(format!("the derived value `{bad}` is not a new value name"));
                }
                after.extend(self.operator.iter().map(|o| o.name.as_str()));
                check(&self.place, &after, "`credentials`")?;
            }
            None => check(&self.place, &defined, "`credentials`")?,
        }
        if self.place.is_empty() {
            return Err("`credentials` must place the values somewhere (`headers`, `query` or `form`)".into());
        }
        if self.verify.is_none() && self.exchange.is_none() {
            return Err("`credentials.verify` is required: a request that proves the credentials work".into());
        }
        Ok(())
    }

    /// The stored values placed for a call.
    pub fn place(&self, stored: &BTreeMap<String, String>) -> Result<Placed, String> {
        self.place.render(&Values::new(stored, &self.operator))
    }

    /// Whether judging an answer needs its body.
    pub fn reads_body(&self) -> bool {
        self.refused.reads_body() || self.app_refused.reads_body()
    }

    /// What an answer to a call made with a connection's values says about them.
    pub fn judge(&self, status: u16, body: &[u8]) -> Verdict {
        // A proxied answer passes here on every call: when the rules look at top-level keys
        // only (Kartra's `/type`), only those are read out of it; the whole answer is parsed
        // only to quote the provider's message.
        let mut keys = [""; 2];
        let mut n = 0;
        let mut shallow = true;
        for rule in [&self.refused, &self.app_refused] {
            match rule.pointer.as_deref().map(top_level_key) {
                Some(Some(k)) => {
                    keys[n] = k;
                    n += 1;
                }
                Some(None) => shallow = false,
                None => {}
            }
        }
        let json = match (body.is_empty(), shallow) {
            (true, _) => None,
            (false, true) => top_level_values(body, &keys[..n]),
            (false, false) => serde_json::from_slice(body).ok(),
        };
        let message = || {
            let full = if shallow && !body.is_empty() { serde_json::from_slice(body).ok() } else { json.clone() };
            self.message(status, full.as_ref(), body)
        };
        if self.refused.matches(status, json.as_ref()) {
            return Verdict::Refused(message());
        }
        if self.app_refused.matches(status, json.as_ref()) {
            return Verdict::AppRefused(message());
        }
        if status == 429 || status >= 500 {
            return Verdict::Unavailable(format!("the provider answered {status}"));
        }
        Verdict::Accepted
    }

    /// The provider's own message (short, printable), or its status: at the entry's pointer,
    /// else where JSON error answers usually put it, else a short plain-text body (Ontraport
    /// answers a bad key in plain text).
    fn message(&self, status: u16, json: Option<&serde_json::Value>, body: &[u8]) -> String {
        let at = |pointer: &str| json?.pointer(pointer)?.as_str().map(str::to_owned);
        let usual = ["/message", "/Message", "/error_message", "/error_description", "/error"];
        let own = at(&self.message_pointer).or_else(|| usual.iter().find_map(|p| at(p))).or_else(|| {
            let text = std::str::from_utf8(body).ok().filter(|_| json.is_none())?.trim();
            (!text.starts_with('<')).then(|| text.to_owned())
        });
        match own.map(|m| m.chars().filter(|c| !c.is_control()).take(300).collect::<String>()) {
            Some(m) if !m.trim().is_empty() => m,
            _ => format!("the provider answered {status}"),
        }
    }
}

/// The key a JSON pointer of one segment names (`/type` → `type`); `None` for deeper ones or
/// ones with escapes.
fn top_level_key(pointer: &str) -> Option<&str> {
    let key = pointer.strip_prefix('/')?;
    (!key.contains(['/', '~'])).then_some(key)
}

/// The values at `keys` of a JSON object, read without building the rest of it; `None` when
/// `body` is not a JSON object.
fn top_level_values(body: &[u8], keys: &[&str]) -> Option<serde_json::Value> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Wanted<'k>(&'k [&'k str]);
    struct KeyOf<'k>(&'k [&'k str]);
    impl<'de> DeserializeSeed<'de> for KeyOf<'_> {
        type Value = Option<usize>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl Visitor<'_> for KeyOf<'_> {
        type Value = Option<usize>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Option<usize>, E> {
            Ok(self.0.iter().position(|k| *k == v))
        }
    }
    impl<'de> Visitor<'de> for Wanted<'_> {
        type Value = serde_json::Map<String, serde_json::Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = serde_json::Map::new();
            while let Some(found) = map.next_key_seed(KeyOf(self.0))? {
                match found {
                    Some(i) => {
                        out.insert(self.0[i].to_owned(), map.next_value()?);
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let map = de.deserialize_map(Wanted(keys)).ok()?;
    de.end().ok()?;
    Some(serde_json::Value::Object(map))
}

/// What a provider's answer says about the credentials a call carried.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Accepted,
    /// The end user's credentials are wrong, revoked or their account inactive.
    Refused(String),
    /// The operator's own values are refused (not the end user's fault).
    AppRefused(String),
    /// The provider could not judge now (5xx, 429).
    Unavailable(String),
}

/// The error code of refused credentials, in `last_error` and API answers.
pub const INVALID_CREDENTIALS: &str = "invalid_credentials";
/// The error code of a provider refusing the operator's own values.
pub const INTEGRATION_REFUSED: &str = "integration_refused";

fn verdict_error(v: Verdict, status: u16, retry_after: Option<Duration>) -> Result<(), OAuthError> {
    match v {
        Verdict::Accepted => Ok(()),
        Verdict::Refused(m) => {
            Err(OAuthError::Rejected { error: INVALID_CREDENTIALS.into(), description: Some(m), status })
        }
        Verdict::AppRefused(m) => {
            Err(OAuthError::Rejected { error: INTEGRATION_REFUSED.into(), description: Some(m), status })
        }
        Verdict::Unavailable(reason) => Err(OAuthError::Transient { reason, retry_after }),
    }
}

/// Calls a provider's API with credentials: the verification at connect and the re-check.
#[derive(Clone, Debug)]
pub struct CredentialClient {
    http: reqwest::Client,
}

/// Answers read to judge credentials are small; a larger one is cut here.
const MAX_JUDGED_BODY: usize = 256 * 1024;

impl CredentialClient {
    /// Shares the OAuth client's connections (`OAuthClient::http`): one pool per process.
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }

    /// Verifies what an end user gave and returns the values to store: the derived ones for
    /// `two_step` (after the exchange), the given ones otherwise (after the verification call).
    pub async fn connect(
        &self,
        provider: &Provider,
        spec: &CredentialSpec,
        given: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, OAuthError> {
        let stored = match &spec.exchange {
            None => given.clone(),
            Some(x) => {
                let placed = x.place.render(&Values::new(given, &spec.operator)).map_err(not_configured(provider))?;
                let (status, body, retry_after) = self.send(provider, &x.request, &placed).await?;
                verdict_error(spec.judge(status, &body), status, retry_after)?;
                let json: serde_json::Value = serde_json::from_slice(&body).map_err(|_| invalid_answer(status))?;
                let mut derived = BTreeMap::new();
                for (name, pointer) in &x.derive {
                    let v = match json.pointer(pointer) {
                        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
                        Some(n @ serde_json::Value::Number(_)) => n.to_string(),
                        _ => return Err(invalid_answer(status)),
                    };
                    derived.insert(name.clone(), v);
                }
                derived
            }
        };
        if spec.verify.is_some() {
            self.check(provider, spec, &stored).await?;
        }
        Ok(stored)
    }

    /// Checks that stored values still work (the verification call).
    pub async fn check(
        &self,
        provider: &Provider,
        spec: &CredentialSpec,
        stored: &BTreeMap<String, String>,
    ) -> Result<(), OAuthError> {
        let Some(probe) = &spec.verify else { return Ok(()) };
        let placed = spec.place(stored).map_err(not_configured(provider))?;
        let (status, body, retry_after) = self.send(provider, probe, &placed).await?;
        verdict_error(spec.judge(status, &body), status, retry_after)
    }

    async fn send(
        &self,
        provider: &Provider,
        probe: &Probe,
        placed: &Placed,
    ) -> Result<(u16, bytes::Bytes, Option<Duration>), OAuthError> {
        let base = provider.api_base_url.as_ref().ok_or_else(|| OAuthError::NotConfigured(provider.id.clone()))?;
        let mut url = if probe.path.is_empty() {
            provider.api_endpoint()
        } else {
            base.join(&probe.path).map_err(|_| OAuthError::NotConfigured(provider.id.clone()))?
        };
        {
            let mut q = url.query_pairs_mut();
            for (n, v) in probe.query.iter().chain(&placed.query) {
                q.append_pair(n, v);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let mut req = self.http.request(probe.method.clone(), url).header(reqwest::header::ACCEPT, "application/json");
        for (n, v) in &placed.headers {
            let mut value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| OAuthError::NotConfigured(provider.id.clone()))?;
            value.set_sensitive(true);
            req = req.header(n.as_str(), value);
        }
        let form: Vec<&(String, String)> = probe.form.iter().chain(&placed.form).collect();
        if !form.is_empty() {
            req = req.form(&form);
        }
        if let Some(tp) = crate::telemetry::current_traceparent() {
            req = req.header("traceparent", tp);
        }
        let resp = req.send().await.map_err(crate::oauth::transport_error)?;
        let status = resp.status().as_u16();
        let retry_after = crate::oauth::retry_after(resp.headers());
        let body = read_limited(resp).await?;
        tracing::debug!(status, "provider answered a credential check");
        Ok((status, body, retry_after))
    }
}

async fn read_limited(mut resp: reqwest::Response) -> Result<bytes::Bytes, OAuthError> {
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(crate::oauth::transport_error)? {
        let room = MAX_JUDGED_BODY.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(out.freeze())
}

fn not_configured(provider: &Provider) -> impl Fn(String) -> OAuthError + '_ {
    move |why| {
        tracing::warn!(provider = %provider.id, %why, "credentials cannot be placed");
        OAuthError::NotConfigured(provider.id.clone())
    }
}

fn invalid_answer(status: u16) -> OAuthError {
    OAuthError::Rejected {
        error: "invalid_response".into(),
        description: Some("the provider's answer to the credential exchange lacks the expected values".into()),
        status,
    }
}

/// Checks what an end user gave against the provider's fields: every field, nothing else, each
/// a non-empty value without control characters. `Err` is a message for the caller.
pub fn check_given(spec: &CredentialSpec, given: &BTreeMap<String, String>) -> Result<(), String> {
    if let Some(unknown) = given.keys().find(|k| !spec.fields.iter().any(|f| &f.name == *k)) {
        let names: Vec<&str> = spec.fields.iter().map(|f| f.name.as_str()).collect();
        return Err(format!("`{unknown}` is not a credential of this provider (it takes {})", names.join(", ")));
    }
    for f in &spec.fields {
        match given.get(&f.name) {
            None => return Err(format!("`credentials.{}` ({}) is required", f.name, f.label)),
            Some(v) if v.trim().is_empty() => return Err(format!("`credentials.{}` must not be empty", f.name)),
            Some(v) if v.len() > 4096 || v.chars().any(char::is_control) => {
                return Err(format!(
                    "`credentials.{}` must be at most 4096 characters, none of them control characters",
                    f.name
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
