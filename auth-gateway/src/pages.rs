//! Pages for the end user's browser: the credential form of a connect session and the pages a
//! flow ends on when it cannot go back to the product. Server-rendered HTML, one stylesheet
//! (`/connect/assets/connect.css`), no script, nothing loaded from elsewhere; every text an end
//! user reads is in [`text`].

use crate::settings::UiSettings;
use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;
use shared::credentials::Field;

/// What every page needs besides its content: the branding, the framing rule, and whether the
/// gateway is served over HTTPS.
#[derive(Clone, Copy)]
pub struct Look<'a> {
    pub ui: &'a UiSettings,
    pub https: bool,
}

/// Every text an end user reads, in one place (a translation is this module).
pub mod text {
    pub fn connect_title(provider: &str) -> String {
        format!("Connect your {provider} account")
    }
    pub fn connect_lead(product: Option<&str>, provider: &str) -> String {
        let who = product.map(|p| format!("{p} asks for these details. ")).unwrap_or_default();
        format!("{who}They are checked with {provider} before anything is saved, and stored encrypted.")
    }
    pub fn interstitial_title(product: Option<&str>, provider: &str) -> String {
        format!("Connect {} to your {provider} account", product.unwrap_or("this app"))
    }
    pub fn interstitial_lead(provider: &str) -> String {
        format!("You will sign in at {provider} and choose what to allow. Then you come back here.")
    }
    pub fn interstitial_button(provider: &str) -> String {
        format!("Continue to {provider}")
    }
    pub const SUBMIT: &str = "Connect";
    pub const REFUSED_HEADING: &str = "The provider did not accept these details";
    pub const UNAVAILABLE_HEADING: &str = "The provider could not be reached";
    pub const UNAVAILABLE: &str = "Nothing was saved. Wait a moment, then try again.";
    pub const WHERE: &str = "Where to find this";
    pub const REQUIRED: &str = "required";
    pub const SECRET_NOTE: &str = "Secret values are never shown again once sent.";

    pub fn connected(provider: &str) -> String {
        format!("Your {provider} account is connected")
    }
    pub const CONNECTED_LEAD: &str = "You can close this window.";
    pub const UNKNOWN_LINK: (&str, &str) = (
        "This link does not work",
        "The connect link is not valid. It may have been copied incompletely. Go back to the app you came from and start connecting again.",
    );
    pub const STRAY_CALLBACK: (&str, &str) = (
        "This page belongs to no connection in progress",
        "It may be an old tab, or a page that was reloaded. Go back to the app and start connecting again if your account is not connected.",
    );
    pub const CLOSE_NOTE: &str = "This window closes by itself once the app has the result.";

    /// The heading and the words of an end page for a flow that failed with `code`.
    pub fn failed(code: &str) -> (&'static str, &'static str) {
        match code {
            "session_expired" => (
                "This link has expired",
                "Connect links work for a few minutes only. Go back to the app and start connecting again.",
            ),
            "session_already_used" | "state_already_used" => (
                "This link was already used",
                "Each connect link works once. If your account is not connected yet, go back to the app and start again.",
            ),
            "access_denied" => (
                "Connecting was cancelled",
                "Access was not granted, so nothing was connected. You can start again from the app whenever you like.",
            ),
            "browser_mismatch" => (
                "This link was opened in another browser",
                "For your safety, a connection must be finished in the browser where it started. Start again from the app, in this browser.",
            ),
            "issuer_mismatch" | "invalid_state" => (
                "This answer did not come from the expected provider",
                "Nothing was connected. Start again from the app.",
            ),
            "reconnect_not_allowed" => (
                "This account is already connected",
                "The app did not allow replacing the existing connection. Ask the app's support if you need to connect it again.",
            ),
            "integration_refused" => (
                "The provider refused this integration",
                "This is a problem with the app's own setup, not with your account. The app's team has to fix it; try again later.",
            ),
            "temporarily_unavailable" => (
                "The provider could not be reached",
                "Nothing was connected. Wait a moment, then start again from the app.",
            ),
            _ => (
                "Connecting did not work",
                "The provider did not complete the connection, and nothing was saved. Start again from the app.",
            ),
        }
    }

    /// The status of an end page (or its JSON) for a flow that failed with `code`.
    pub fn end_status(code: &str) -> actix_web::http::StatusCode {
        use actix_web::http::StatusCode;
        match code {
            "session_expired" | "session_already_used" | "state_already_used" => StatusCode::GONE,
            "browser_mismatch" | "reconnect_not_allowed" | "access_denied" => StatusCode::FORBIDDEN,
            "integration_refused" | "temporarily_unavailable" => StatusCode::BAD_GATEWAY,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// `s` with the characters HTML gives meaning to escaped (text and quoted attribute values).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The stylesheet every page uses: light and dark follow the browser, readable at 360 px.
pub const STYLESHEET: &str = include_str!("pages/connect.css");

/// The script a product's page loads for popup mode (no dependencies).
pub const CONNECT_JS: &str = include_str!("pages/connect.js");

/// An HTML page with the headers every page carries: no caching, no referrer, no framing, and a
/// CSP that allows only our stylesheet and form posts to us (and to `form_targets`, where a
/// successful post redirects: browsers apply `form-action` to the redirect too).
pub fn html(status: StatusCode, title: &str, body: &str, form_targets: &[String], look: Look<'_>) -> HttpResponse {
    page(status, title, body, form_targets, None, look)
}

/// The accent colour's stylesheet (`/connect/assets/brand.css`): the button in the accent, its
/// text black or white, whichever contrasts more (WCAG relative luminance).
pub fn brand_css(accent: &str) -> String {
    let channel = |i: usize| {
        let c = u8::from_str_radix(&accent[i..i + 2], 16).unwrap_or(0) as f64 / 255.0;
        if c <= 0.03928 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let l = 0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5);
    // Contrast with white is 1.05 / (l + 0.05), with black (l + 0.05) / 0.05.
    let text = if 1.05 / (l + 0.05) >= (l + 0.05) / 0.05 { "#ffffff" } else { "#000000" };
    format!(":root {{ --button: {accent}; --button-text: {text}; }}\n")
}

fn page(
    status: StatusCode,
    title: &str,
    body: &str,
    form_targets: &[String],
    script_nonce: Option<&str>,
    look: Look<'_>,
) -> HttpResponse {
    let brand =
        if look.ui.accent.is_some() { "<link rel=\"stylesheet\" href=\"/connect/assets/brand.css\">\n" } else { "" };
    let mut banner = String::new();
    if look.ui.product_name.is_some() || look.ui.logo_url.is_some() {
        banner.push_str("<header class=\"brand\">");
        if let Some(logo) = &look.ui.logo_url {
            let alt = look.ui.product_name.as_deref().map(escape).unwrap_or_default();
            banner.push_str(&format!("<img src=\"{}\" alt=\"{alt}\" height=\"32\">", escape(logo.as_str())));
        }
        if let (Some(name), None) = (&look.ui.product_name, &look.ui.logo_url) {
            banner.push_str(&format!("<span>{}</span>", escape(name)));
        }
        banner.push_str("</header>\n");
    }
    let page = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n<title>{}</title>\n\
         <link rel=\"stylesheet\" href=\"/connect/assets/connect.css\">\n{brand}</head>\n<body>\n\
         <main class=\"card\">\n{banner}{body}</main>\n</body>\n</html>\n",
        escape(title)
    );
    let mut form_action = String::from("'self'");
    for t in form_targets {
        form_action.push(' ');
        form_action.push_str(t);
    }
    let script = script_nonce.map(|n| format!("script-src 'nonce-{n}'; ")).unwrap_or_default();
    let img = look.ui.logo_url.as_ref().map(|u| format!(" {}", u.origin().ascii_serialization())).unwrap_or_default();
    let frame =
        if look.ui.frame_ancestors.is_empty() { "'none'".to_owned() } else { look.ui.frame_ancestors.join(" ") };
    let csp = format!(
        "default-src 'none'; {script}style-src 'self'; img-src 'self'{img}; form-action {form_action}; \
         frame-ancestors {frame}; base-uri 'none'"
    );
    let mut resp = HttpResponse::build(status);
    resp.content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_SECURITY_POLICY, csp))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    if look.https {
        resp.insert_header((header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"));
    }
    if !look.ui.frame_ancestors.is_empty() {
        // Browsers that read only X-Frame-Options would take the gateway's default DENY as
        // forbidding the allowed frames too: SAMEORIGIN is the nearest they understand.
        resp.insert_header((header::X_FRAME_OPTIONS, "SAMEORIGIN"));
    }
    resp.body(page)
}

/// The page a flow ends on. With `message` (the product window's origin and the outcome), a
/// popup's page posts the outcome to the window that opened it, and closes.
pub fn end_page(
    status: StatusCode,
    title: &str,
    lead: &str,
    message: Option<(String, serde_json::Value)>,
    look: Look<'_>,
) -> HttpResponse {
    let mut body = format!("<h1>{}</h1>\n<p class=\"lead\">{}</p>\n", escape(title), escape(lead));
    let Some((origin, outcome)) = message else {
        return html(status, title, &body, &[], look);
    };
    // JSON in a script: `<` escaped so no `</script>` can end it early.
    let js = |v: &serde_json::Value| v.to_string().replace('<', "\\u003c");
    let nonce = shared::crypto::random_token();
    body.push_str(&format!("<p class=\"note\">{}</p>\n", text::CLOSE_NOTE));
    body.push_str(&format!(
        "<script nonce=\"{nonce}\">(function () {{\n  var outcome = {};\n  outcome.type = \"authbridge:result\";\n  \
         if (window.opener) {{\n    window.opener.postMessage(outcome, {});\n    setTimeout(function () {{ window.close(); }}, 100);\n  }}\n}})();</script>\n",
        js(&outcome),
        js(&serde_json::Value::String(origin)),
    ));
    page(status, title, &body, &[], Some(&nonce), look)
}

/// The page an OAuth flow starts on when configured to (`AUTHBRIDGE_CONNECT_INTERSTITIAL`): one
/// button, a link to the provider's authorize URL.
pub fn interstitial(provider_name: &str, authorize_url: &str, look: Look<'_>) -> HttpResponse {
    let title = text::interstitial_title(look.ui.product_name.as_deref(), provider_name);
    let body = format!(
        "<h1>{}</h1>\n<p class=\"lead\">{}</p>\n<a class=\"button\" href=\"{}\">{}</a>\n",
        escape(&title),
        escape(&text::interstitial_lead(provider_name)),
        escape(authorize_url),
        escape(&text::interstitial_button(provider_name)),
    );
    html(StatusCode::OK, &title, &body, &[], look)
}

/// What a credential form shows after a refusal.
pub enum FormError<'a> {
    /// The provider refused the values; its own words.
    Refused(&'a str),
    Unavailable,
}

/// The body of a credential form for `fields`, posting to `action` with the flow's `state`.
/// Non-secret values the end user typed come back in `keep`; secret ones never do.
pub fn credential_form(
    product: Option<&str>,
    provider_name: &str,
    fields: &[Field],
    action: &str,
    state: &str,
    error: Option<FormError<'_>>,
    keep: &dyn Fn(&str) -> Option<String>,
) -> String {
    let mut b = String::with_capacity(2048);
    b.push_str(&format!(
        "<h1>{}</h1>\n<p class=\"lead\">{}</p>\n",
        escape(&text::connect_title(provider_name)),
        escape(&text::connect_lead(product, provider_name))
    ));
    let error_id = "form-error";
    match &error {
        Some(FormError::Refused(words)) => b.push_str(&format!(
            "<div class=\"alert\" role=\"alert\" id=\"{error_id}\" tabindex=\"-1\"><h2>{}</h2><p>{}</p></div>\n",
            text::REFUSED_HEADING,
            escape(words)
        )),
        Some(FormError::Unavailable) => b.push_str(&format!(
            "<div class=\"alert\" role=\"alert\" id=\"{error_id}\" tabindex=\"-1\"><h2>{}</h2><p>{}</p></div>\n",
            text::UNAVAILABLE_HEADING,
            text::UNAVAILABLE
        )),
        None => {}
    }
    b.push_str(&format!(
        "<form method=\"post\" action=\"{}\" autocomplete=\"off\" novalidate>\n\
         <input type=\"hidden\" name=\"state\" value=\"{}\">\n",
        escape(action),
        escape(state)
    ));
    for (i, f) in fields.iter().enumerate() {
        let id = format!("field-{i}");
        let help_id = format!("{id}-help");
        let described = match (&f.help, error.is_some()) {
            (Some(_), true) => format!(" aria-describedby=\"{help_id} {error_id}\""),
            (Some(_), false) => format!(" aria-describedby=\"{help_id}\""),
            (None, true) => format!(" aria-describedby=\"{error_id}\""),
            (None, false) => String::new(),
        };
        let invalid = if matches!(error, Some(FormError::Refused(_))) { " aria-invalid=\"true\"" } else { "" };
        let (kind, value) = if f.secret {
            ("password", String::new())
        } else {
            ("text", keep(&f.name).map(|v| format!(" value=\"{}\"", escape(&v))).unwrap_or_default())
        };
        b.push_str(&format!(
            "<div class=\"field\">\n<label for=\"{id}\">{} <span class=\"req\">({})</span></label>\n\
             <input id=\"{id}\" name=\"{}\" type=\"{kind}\" required spellcheck=\"false\" autocapitalize=\"off\"{value}{described}{invalid}>\n",
            escape(&f.label),
            text::REQUIRED,
            escape(&f.name),
        ));
        if let Some(help) = &f.help {
            let link = f
                .help_url
                .as_ref()
                .map(|u| {
                    format!(
                        " <a href=\"{}\" rel=\"noopener noreferrer\" target=\"_blank\">{}</a>",
                        escape(u),
                        text::WHERE
                    )
                })
                .unwrap_or_default();
            b.push_str(&format!("<p class=\"help\" id=\"{help_id}\">{}{link}</p>\n", escape(help)));
        }
        b.push_str("</div>\n");
    }
    b.push_str(&format!(
        "<button type=\"submit\">{}</button>\n<p class=\"note\">{}</p>\n</form>\n",
        text::SUBMIT,
        text::SECRET_NOTE
    ));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, secret: bool) -> Field {
        Field { name: name.into(), label: format!("<{name}>"), secret, help: Some("a & b".into()), help_url: None }
    }

    #[test]
    fn secrets_are_never_echoed_and_everything_is_escaped() {
        let fields = [field("user", false), field("password", true)];
        let keep = |n: &str| Some(format!("\"{n}\"<script>"));
        let b = credential_form(
            Some("Acme"),
            "K<r>",
            &fields,
            "/connect/credentials",
            "st\"ate",
            Some(FormError::Refused("bad <b>")),
            &keep,
        );
        assert!(b.contains("Connect your K&lt;r&gt; account"));
        assert!(b.contains("value=\"&quot;user&quot;&lt;script&gt;\""), "{b}");
        assert!(!b.contains("&quot;password&quot;"), "a secret's value is never written back");
        assert!(b.contains("type=\"password\""));
        assert!(b.contains("bad &lt;b&gt;") && b.contains("role=\"alert\""));
        assert!(b.contains("name=\"state\" value=\"st&quot;ate\""));
        assert!(!b.contains("<script>") && !b.contains("<b>"));
        assert!(b.contains("aria-describedby=\"field-0-help form-error\""));
    }

    #[test]
    fn pages_allow_only_our_stylesheet_and_posts_to_us_and_the_return_origin() {
        let ui = UiSettings::default();
        let r = html(StatusCode::OK, "t", "<p>x</p>", &["https://app.example".into()], Look { ui: &ui, https: true });
        let csp = r.headers().get(header::CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("style-src 'self'"));
        assert!(csp.contains("form-action 'self' https://app.example"));
        assert!(!csp.contains("unsafe-inline"));
        assert_eq!(r.headers().get(header::CACHE_CONTROL).unwrap(), "no-store");
        assert!(r.headers().contains_key(header::STRICT_TRANSPORT_SECURITY));
        assert!(csp.contains("frame-ancestors 'none'"));
        let ui = UiSettings {
            frame_ancestors: vec!["https://app.example".into()],
            logo_url: Some(url::Url::parse("https://cdn.example/logo.png").unwrap()),
            ..Default::default()
        };
        let r = html(StatusCode::OK, "t", "", &[], Look { ui: &ui, https: false });
        let csp = r.headers().get(header::CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap();
        assert!(
            csp.contains("frame-ancestors https://app.example") && csp.contains("img-src 'self' https://cdn.example")
        );
    }

    #[test]
    fn the_accent_buttons_text_is_whichever_of_black_and_white_contrasts_more() {
        assert!(brand_css("#1f5fbf").contains("--button-text: #ffffff"));
        assert!(brand_css("#ffd400").contains("--button-text: #000000"));
        assert!(brand_css("#000000").contains("--button-text: #ffffff"));
    }
}
