//! The gateway's settings, read from the environment.

use shared::config::{ApiKeys, CommonSettings, ConfigErrors, Env, Reader, TlsFiles};
use std::time::Duration;
use url::Url;

/// Address to listen on. Default: `0.0.0.0:8080`.
pub const BIND: &str = "AUTHBRIDGE_GATEWAY_BIND";
/// The gateway's public base URL; the OAuth redirect URI is `{PUBLIC_URL}/oauth/callback`.
/// Default: `http://localhost:<the port of AUTHBRIDGE_GATEWAY_BIND>`.
pub const PUBLIC_URL: &str = "AUTHBRIDGE_PUBLIC_URL";
/// Lifetime of a connect session, and of a flow once started (seconds). Default: 600.
pub const SESSION_TTL: &str = "AUTHBRIDGE_SESSION_TTL_SECONDS";
/// Comma-separated URL prefixes a `return_url` must start with. Default: empty (any http(s) URL).
pub const RETURN_URL_ALLOWLIST: &str = "AUTHBRIDGE_RETURN_URL_ALLOWLIST";
/// The product's name on the connect pages ("Connect Acme to your Kartra account"). Default: none.
pub const PRODUCT_NAME: &str = "AUTHBRIDGE_CONNECT_PRODUCT_NAME";
/// An https URL of the product's logo, shown on the connect pages. Default: none.
pub const LOGO_URL: &str = "AUTHBRIDGE_CONNECT_LOGO_URL";
/// The pages' accent colour, `#rrggbb` (buttons; their text is black or white, whichever
/// contrasts more). Default: a blue.
pub const ACCENT: &str = "AUTHBRIDGE_CONNECT_ACCENT";
/// Comma-separated origins that may show the connect pages in an iframe (CSP
/// `frame-ancestors`). Default: none may.
pub const FRAME_ANCESTORS: &str = "AUTHBRIDGE_CONNECT_FRAME_ANCESTORS";
/// `true`: an OAuth flow first shows "You are connecting … to …" with one button, instead of
/// going to the provider at once (link scanners then cannot use up a connect link). Default: false.
pub const INTERSTITIAL: &str = "AUTHBRIDGE_CONNECT_INTERSTITIAL";

/// A webhook endpoint configured with the deployment (compose), kept in step with these
/// settings at every start, beside any made through the API. Default: none.
pub const WEBHOOK_URL: &str = "AUTHBRIDGE_WEBHOOK_URL";
/// Its signing secret, `whsec_` and base64 (required with `AUTHBRIDGE_WEBHOOK_URL`).
pub const WEBHOOK_SECRET: &str = "AUTHBRIDGE_WEBHOOK_SECRET";
/// Comma-separated event types it receives. Default: all.
pub const WEBHOOK_EVENTS: &str = "AUTHBRIDGE_WEBHOOK_EVENTS";

/// The webhook endpoint from the environment.
#[derive(Debug, Clone)]
pub struct ConfiguredWebhook {
    pub url: Url,
    pub secret: shared::webhooks::SigningSecret,
    pub events: Vec<String>,
}

impl ConfiguredWebhook {
    fn read(r: &mut Reader<'_>, allow_private: bool) -> Option<Self> {
        let raw = r.optional(WEBHOOK_URL).filter(|u| !u.is_empty())?;
        let url =
            shared::webhooks::check_url(&raw, allow_private).map_err(|e| r.fail(format!("{WEBHOOK_URL}: {e}"))).ok();
        let secret = match r.optional(WEBHOOK_SECRET) {
            None => {
                r.fail(format!(
                    "{WEBHOOK_SECRET} is not set: {WEBHOOK_URL} needs a signing secret (whsec_ and base64)"
                ));
                None
            }
            Some(s) => {
                shared::webhooks::SigningSecret::parse(&s).map_err(|e| r.fail(format!("{WEBHOOK_SECRET}: {e}"))).ok()
            }
        };
        let events = r.list(WEBHOOK_EVENTS);
        for e in &events {
            if shared::webhooks::EventType::parse(e).is_none() {
                r.fail(format!("{WEBHOOK_EVENTS}: unknown event type {e:?}"));
            }
        }
        Some(Self { url: url?, secret: secret?, events })
    }
}

/// How the connect pages look and may be shown.
#[derive(Debug, Clone, Default)]
pub struct UiSettings {
    pub product_name: Option<String>,
    pub logo_url: Option<Url>,
    /// `#rrggbb`.
    pub accent: Option<String>,
    pub frame_ancestors: Vec<String>,
    pub interstitial: bool,
}

impl UiSettings {
    /// The pages' settings alone (the dev command reads them so the demo can be branded).
    pub fn from_env(env: &Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let ui = Self::read(&mut r);
        r.finish()?;
        Ok(ui)
    }

    fn read(r: &mut Reader<'_>) -> Self {
        let product_name = r.optional(PRODUCT_NAME).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        if product_name.as_ref().is_some_and(|n| n.chars().count() > 60 || n.chars().any(char::is_control)) {
            r.fail(format!("{PRODUCT_NAME} must be at most 60 characters, none of them control characters"));
        }
        let logo_url = r.optional(LOGO_URL).and_then(|raw| match Url::parse(&raw) {
            Ok(u) if u.scheme() == "https" || is_loopback(&u) => Some(u),
            _ => {
                r.fail(format!("{LOGO_URL}={raw:?} must be an https URL"));
                None
            }
        });
        let accent = r.optional(ACCENT).and_then(|a| {
            let ok = a.len() == 7 && a.starts_with('#') && a[1..].bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                r.fail(format!("{ACCENT}={a:?} must be a colour as #rrggbb"));
            }
            ok.then(|| a.to_ascii_lowercase())
        });
        let mut frame_ancestors = Vec::new();
        for a in r.list(FRAME_ANCESTORS) {
            match Url::parse(&a) {
                Ok(u) if matches!(u.scheme(), "https" | "http") && u.host_str().is_some() => {
                    frame_ancestors.push(u.origin().ascii_serialization())
                }
                _ => r.fail(format!("{FRAME_ANCESTORS}: {a:?} is not an origin such as https://app.example")),
            }
        }
        let interstitial = r.parse(INTERSTITIAL, false);
        Self { product_name, logo_url, accent, frame_ancestors, interstitial }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub api_keys: ApiKeys,
    pub bind: String,
    pub public_url: Url,
    pub session_ttl: Duration,
    pub return_url_allowlist: Vec<Url>,
    pub workers: usize,
    /// Serve HTTPS with these files; `None`: plain HTTP (behind a TLS-terminating proxy).
    pub tls: Option<TlsFiles>,
    pub ui: UiSettings,
    pub webhook: Option<ConfiguredWebhook>,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let common = CommonSettings::read(&mut r);
        let api_keys = ApiKeys::read(&mut r);
        let bind = r.bind(BIND, "0.0.0.0:8080");
        // Unset, it follows the listen address's port (behind a proxy or on another host, set it).
        let port = bind.rsplit_once(':').map_or("8080", |(_, p)| p);
        let public = r.string(PUBLIC_URL, &format!("http://localhost:{port}"));
        let public_url = match Url::parse(&public) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
            _ => {
                r.fail(format!("{PUBLIC_URL}={public:?} must be an absolute http(s) URL"));
                None
            }
        };
        let session_ttl = r.seconds(SESSION_TTL, 600);
        let mut allow = Vec::new();
        for a in r.list(RETURN_URL_ALLOWLIST) {
            match Url::parse(&a) {
                Ok(u) => allow.push(u),
                Err(e) => r.fail(format!("{RETURN_URL_ALLOWLIST}: {a:?} is not a URL ({e})")),
            }
        }
        let workers = r.parse(shared::config::HTTP_WORKERS, shared::config::default_http_workers());
        let tls = TlsFiles::read(&mut r);
        let ui = UiSettings::read(&mut r);
        let allow_private = common.as_ref().is_some_and(|c| c.webhook_allow_private);
        let webhook = ConfiguredWebhook::read(&mut r, allow_private);
        r.finish()?;
        Ok(Self {
            common: common.expect("checked"),
            api_keys,
            bind,
            public_url: public_url.expect("checked"),
            session_ttl,
            return_url_allowlist: allow,
            workers: workers.max(1),
            tls,
            ui,
            webhook,
        })
    }

    /// Says at start-up what an empty allowlist means, loudly: any site may be a flow's
    /// destination.
    pub fn warn_about_open_return_urls(&self) {
        if self.return_url_allowlist.is_empty() {
            tracing::warn!(
                "{RETURN_URL_ALLOWLIST} is not set: connect sessions may return end users to any https URL \
                 (and http only on this machine); set it to your product's URLs"
            );
        }
    }

    /// A return URL is acceptable if it is an absolute http(s) URL without credentials and,
    /// when an allowlist is configured, matches one entry's scheme, host, port and path prefix.
    pub fn return_url_allowed(&self, u: &Url) -> bool {
        if !matches!(u.scheme(), "http" | "https")
            || u.host_str().is_none()
            || !u.username().is_empty()
            || u.password().is_some()
        {
            return false;
        }
        if self.return_url_allowlist.is_empty() {
            // Without an allowlist, plain HTTP only to this machine (development): a flow's
            // outcome sent over the network in clear could be read or altered on the way.
            return u.scheme() == "https" || is_loopback(u);
        }
        self.return_url_allowlist.iter().any(|a| {
            a.scheme() == u.scheme()
                && a.host_str() == u.host_str()
                && a.port_or_known_default() == u.port_or_known_default()
                && u.path().starts_with(a.path())
        })
    }
}

/// Whether a URL's host is this machine (`localhost`, 127.0.0.0/8, `::1`).
fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(allow: &[&str]) -> Settings {
        let env = Env::from_pairs([
            (shared::config::ENCRYPTION_KEY, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            (shared::config::API_KEYS, "0123456789abcdef0123"),
            (RETURN_URL_ALLOWLIST, &allow.join(",")),
        ]);
        Settings::from_env(&env).unwrap()
    }

    #[test]
    fn a_webhook_from_the_environment_needs_its_secret_and_known_events() {
        let base = [
            (shared::config::ENCRYPTION_KEY, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            (shared::config::API_KEYS, "0123456789abcdef0123"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            Settings::from_env(&Env::from_pairs(base.iter().chain(extra).copied()))
        };
        assert!(with(&[]).unwrap().webhook.is_none());
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let s = with(&[(WEBHOOK_URL, "https://hooks.example/in"), (WEBHOOK_SECRET, secret)]).unwrap();
        let w = s.webhook.unwrap();
        assert_eq!((w.url.as_str(), w.secret.expose().as_str()), ("https://hooks.example/in", secret));
        assert!(w.events.is_empty(), "every event by default");
        let e = with(&[(WEBHOOK_URL, "https://hooks.example/in")]).unwrap_err().to_string();
        assert!(e.contains(WEBHOOK_SECRET), "{e}");
        let e =
            with(&[(WEBHOOK_URL, "http://10.0.0.5/in"), (WEBHOOK_SECRET, "nope"), (WEBHOOK_EVENTS, "connection.lost")])
                .unwrap_err()
                .to_string();
        for named in [WEBHOOK_URL, WEBHOOK_SECRET, WEBHOOK_EVENTS] {
            assert!(e.contains(named), "{named} missing from: {e}");
        }
        // Private addresses (a receiver on the compose network) when the operator allows them.
        let ok = with(&[
            (WEBHOOK_URL, "http://app:3000/hooks"),
            (WEBHOOK_SECRET, secret),
            (shared::config::WEBHOOK_ALLOW_PRIVATE, "true"),
        ]);
        assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.to_string()));
    }

    #[test]
    fn the_public_url_follows_the_listen_port_unless_set() {
        let base = [
            (shared::config::ENCRYPTION_KEY, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            (shared::config::API_KEYS, "0123456789abcdef0123"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            Settings::from_env(&Env::from_pairs(base.iter().chain(extra).copied())).unwrap().public_url.to_string()
        };
        assert_eq!(with(&[]), "http://localhost:8080/");
        assert_eq!(with(&[(BIND, "0.0.0.0:9000")]), "http://localhost:9000/");
        assert_eq!(with(&[(BIND, "0.0.0.0:9000"), (PUBLIC_URL, "https://auth.example")]), "https://auth.example/");
        let e = Settings::from_env(&Env::from_pairs(base.iter().copied().chain([(BIND, "8080")]))).unwrap_err();
        assert!(e.to_string().contains(BIND), "{e}");
    }

    #[test]
    fn without_an_allowlist_return_urls_are_https_or_on_this_machine() {
        let s = settings(&[]);
        let ok = |u: &str| s.return_url_allowed(&Url::parse(u).unwrap());
        assert!(ok("https://app.example/settings"));
        assert!(ok("http://localhost:3000/done"));
        assert!(ok("http://127.0.0.1/done"));
        assert!(ok("http://[::1]:8000/"));
        assert!(!ok("http://app.example/settings"), "plain HTTP over the network");
        assert!(!ok("http://192.168.1.5/done"));
        assert!(!ok("https://user:pw@app.example/"));
        assert!(!ok("javascript:alert(1)"));
    }

    #[test]
    fn an_allowlist_matches_scheme_host_port_and_path_prefix() {
        let s = settings(&["https://app.example/settings", "http://intranet.example/cb"]);
        let ok = |u: &str| s.return_url_allowed(&Url::parse(u).unwrap());
        assert!(ok("https://app.example/settings/integrations?x=1"));
        assert!(ok("http://intranet.example/cb"), "an operator may allow plain HTTP explicitly");
        assert!(!ok("https://app.example/other"));
        assert!(!ok("https://app.example:8443/settings"));
        assert!(!ok("http://app.example/settings"));
    }
}
