use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn url(u: &Option<Url>) -> &str {
    u.as_ref().map_or("", Url::as_str)
}

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
}

#[test]
fn builtins_authenticate_as_each_providers_api_documentation_says() {
    let c = Catalog::from_toml("", &no_env).unwrap();
    let auth = |id: &str| c.get(id).unwrap().auth;
    assert_eq!(auth("kartra"), AuthMode::ApiKey);
    assert_eq!(auth("ontraport"), AuthMode::ApiKey);
    assert_eq!(auth("whatconverts"), AuthMode::Basic);
    assert_eq!(auth("redtail"), AuthMode::TwoStep);
    assert_eq!(auth("interact"), AuthMode::OAuth2);

    let k = c.get("kartra").unwrap();
    assert_eq!(k.api_endpoint().as_str(), "https://app.kartra.com/api", "the base as documented, no '/' added");
    let spec = k.credentials.as_ref().unwrap();
    assert_eq!(spec.missing_operator_values(), vec!["KARTRA_APP_ID"]);
    assert!(!k.is_configured(), "no App id yet");
    let names: Vec<_> = spec.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["api_key", "api_password"]);
    let form: Vec<_> = spec.place.form.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(form, ["api_key", "api_password", "app_id"]);
    assert!(spec.refused.matches(200, Some(&serde_json::json!({"status": "Error", "type": 233}))));
    assert!(spec.app_refused.matches(200, Some(&serde_json::json!({"status": "Error", "type": "242"}))));

    let o = c.get("ontraport").unwrap();
    assert!(o.is_configured(), "both values are the end user's");
    let placed = o
        .credentials
        .as_ref()
        .unwrap()
        .place(&[("app_id".to_string(), "2_1".to_string()), ("api_key".into(), "k".into())].into())
        .unwrap();
    assert_eq!(placed.headers, [("api-appid".to_string(), "2_1".to_string()), ("api-key".into(), "k".into())]);

    let w = c.get("whatconverts").unwrap().credentials.clone().unwrap();
    let placed =
        w.place(&[("api_token".to_string(), "t".to_string()), ("api_secret".into(), "s".into())].into()).unwrap();
    assert_eq!(placed.headers, [("authorization".to_string(), "Basic dDpz".to_string())]);

    let r = c.get("redtail").unwrap();
    let spec = r.credentials.as_ref().unwrap();
    assert_eq!(spec.stored_names(), ["user_key"], "the password is never stored");
    assert_eq!(r.missing_configuration(), ["REDTAIL_API_KEY"]);
    assert_eq!(url(&c.get("interact").unwrap().authorize_url), "https://api.interact.com/oauth/authorize");
}

#[test]
fn the_integration_guides_oauth2_flows_are_one_setting_away() {
    let c = Catalog::from_toml(
        "[providers.kartra]\nauth = \"oauth2\"\n",
        &env_of(&[("KARTRA_CLIENT_ID", "id"), ("KARTRA_CLIENT_SECRET", "s")]),
    )
    .unwrap();
    let k = c.get("kartra").unwrap();
    assert_eq!(k.auth, AuthMode::OAuth2);
    assert!(k.credentials.is_none());
    assert_eq!(url(&k.authorize_url), "https://app.kartra.com/oauth/auth");
    assert_eq!(url(&k.token_url), "https://app.kartra.com/oauth/token");
    assert!(k.is_configured());
    assert_eq!(url(&c.get("redtail").unwrap().token_url), "https://redtailtechnology.com/oauth/token");
    assert_eq!(c.get("redtail").unwrap().scopes, vec!["read", "write"]);
    assert_eq!(url(&c.get("whatconverts").unwrap().token_url), "https://app.whatconverts.com/oauth/token");
    assert_eq!(url(&c.get("ontraport").unwrap().token_url), "https://api.ontraport.com/oauth2/token");
}

#[test]
fn operator_values_come_from_the_environment() {
    let c = Catalog::from_toml("", &env_of(&[("KARTRA_APP_ID", "APP-1"), ("REDTAIL_API_KEY", "rk")])).unwrap();
    assert!(c.get("kartra").unwrap().is_configured());
    assert!(c.get("redtail").unwrap().is_configured());
    let k = c.get("kartra").unwrap().credentials.clone().unwrap();
    let placed =
        k.place(&[("api_key".to_string(), "K".to_string()), ("api_password".into(), "P".into())].into()).unwrap();
    assert!(placed.form.contains(&("app_id".to_string(), "APP-1".to_string())), "{:?}", placed.form);
}

#[test]
fn a_new_api_key_provider_needs_configuration_alone() {
    let toml = r#"
        [providers.acme]
        auth = "api_key"
        api_base_url = "https://api.acme.example/v2"
        [providers.acme.credentials]
        operator_values = ["partner"]
        fields = [{ name = "key", label = "API key" }]
        headers = { "X-Api-Key" = "{key}" }
        query = { partner = "{partner}" }
        verify = { path = "me" }
        refused = { statuses = [401, 403] }
        recheck_interval_seconds = 3600
    "#;
    let c = Catalog::from_toml(toml, &env_of(&[("ACME_PARTNER", "p1")])).unwrap();
    let a = c.get("acme").unwrap();
    let spec = a.credentials.as_ref().unwrap();
    assert_eq!(spec.recheck, Duration::from_secs(3600));
    assert_eq!(spec.verify.as_ref().unwrap().method, reqwest::Method::GET);
    let placed = spec.place(&[("key".to_string(), "k1".to_string())].into()).unwrap();
    assert_eq!(placed.headers, [("x-api-key".to_string(), "k1".to_string())]);
    assert_eq!(placed.query, [("partner".to_string(), "p1".to_string())]);
}

#[test]
fn credential_entries_that_cannot_work_are_refused_naming_what_is_wrong() {
    let base = "[providers.acme]\nauth = \"api_key\"\napi_base_url = \"https://a.example/\"\n";
    for (extra, says) in [
        ("", "needs a `credentials` table"),
        ("[providers.acme.credentials]\nfields = [{name = \"key\", label = \"Key\"}]\nheaders = { X = \"{nope}\" }\nverify = {}\n", "`{nope}`"),
        ("[providers.acme.credentials]\nfields = [{name = \"key\", label = \"Key\"}]\nverify = {}\n", "must place the values"),
        ("[providers.acme.credentials]\nfields = [{name = \"key\", label = \"Key\"}]\nheaders = { X = \"{key}\" }\n", "`credentials.verify` is required"),
        ("[providers.acme.credentials]\nfields = [{name = \"key\", label = \"Key\"}]\nheaders = { \"bad header\" = \"{key}\" }\nverify = {}\n", "not a header name"),
        ("[providers.acme.credentials]\nfields = [{name = \"key\", label = \"Key\"}]\nheaders = { X = \"{key\" }\nverify = {}\n", "without its"),
        ("[providers.acme.credentials]\nfields = [{name = \"key\", label = \"Key\"}]\nheaders = { X = \"{key}\" }\nverify = { path = \"/abs\" }\n", "relative"),
    ] {
        let err = Catalog::from_toml(&format!("{base}{extra}"), &no_env).unwrap_err().to_string();
        assert!(err.contains("provider `acme`") && err.contains(says), "{extra}: {err}");
    }
    let err = Catalog::from_toml("[providers.acme]\nauth = \"api_key\"\n", &no_env).unwrap_err().to_string();
    assert!(err.contains("`api_base_url` is required"), "{err}");
}

#[test]
fn providers_are_found_by_exact_id_in_small_and_large_catalogs() {
    let mut toml = String::new();
    for n in [0usize, 3, 20] {
        for i in toml.matches("[providers.").count()..n {
            toml.push_str(&format!(
                "[providers.crm-{i}]\nauthorize_url = \"https://a{i}/auth\"\ntoken_url = \"https://a{i}/token\"\n"
            ));
        }
        let c = Catalog::from_toml(&toml, &no_env).unwrap();
        for i in 0..n {
            let id = format!("crm-{i}");
            assert_eq!(url(&c.get(&id).unwrap().token_url), format!("https://a{i}/token"), "{n} added");
        }
        assert!(c.get("kartra").is_some(), "{n} added");
        for missing in ["", "kartr", "kartraa", "Kartra", "crm-99", "crm-"] {
            assert!(c.get(missing).is_none(), "`{missing}` with {n} added");
        }
    }
}

#[test]
fn file_overrides_fields_and_adds_providers_and_env_supplies_credentials() {
    let toml = r#"
        [providers.kartra]
        token_request_format = "json"
        pkce = false
        [providers.my-crm]
        authorize_url = "https://crm.example/authorize"
        token_url = "https://crm.example/token"
        api_base_url = "https://crm.example/api"
        scopes = ["contacts"]
        authorize_params = { access_type = "offline" }
        refresh_margin_seconds = 60
        client_id = "from-file"
        client_secret = "file-secret"
    "#;
    let env = |k: &str| {
        (k == "KARTRA_CLIENT_ID")
            .then(|| "kid".to_string())
            .or_else(|| (k == "KARTRA_CLIENT_SECRET").then(|| "ks".to_string()))
    };
    let c = Catalog::from_toml(toml, &env).unwrap();
    let k = c.get("kartra").unwrap();
    assert_eq!(k.token_request_format, BodyFormat::Json);
    assert!(!k.pkce);
    assert_eq!(url(&k.authorize_url), "https://app.kartra.com/oauth/auth");
    assert_eq!(k.client_id.as_deref(), Some("kid"));
    let m = c.get("my-crm").unwrap();
    assert_eq!(m.client_auth, ClientAuth::Basic);
    assert_eq!(m.api_base_url.as_ref().unwrap().as_str(), "https://crm.example/api/");
    assert_eq!(m.refresh_margin, Some(Duration::from_secs(60)));
    assert_eq!(m.authorize_params.get("access_type").map(String::as_str), Some("offline"));
    assert!(m.is_configured());
}

#[test]
fn bad_files_are_refused_with_the_provider_and_field_named() {
    let err = Catalog::from_toml("[providers.x]\ntoken_url = \"https://a/t\"", &no_env).unwrap_err();
    assert!(err.to_string().contains("provider `x`: `authorize_url` is required"), "{err}");
    let err = Catalog::from_toml("[providers.kartra]\ntoken_url = \"ftp://a/t\"", &no_env).unwrap_err();
    assert!(err.to_string().contains("token_url"), "{err}");
    let err = Catalog::from_toml("[providers.kartra]\nunknown_field = 1", &no_env).unwrap_err();
    assert!(err.to_string().contains("unknown_field"), "{err}");
    let err = Catalog::from_toml("[providers.Bad]\nauthorize_url=\"https://a\"\ntoken_url=\"https://a\"", &no_env)
        .unwrap_err();
    assert!(err.to_string().contains("Bad"), "{err}");
    assert!(Catalog::from_toml("not toml [", &no_env).is_err());
}

#[test]
fn a_client_credentials_provider_needs_a_token_url_and_the_operators_client() {
    let toml = r#"
        [providers.reports]
        auth = "oauth2_client_credentials"
        token_url = "https://auth.example.com/token"
        api_base_url = "https://api.example.com/v2"
        scopes = ["reports.read"]
    "#;
    let c = Catalog::from_toml(toml, &env_of(&[("REPORTS_CLIENT_ID", "id"), ("REPORTS_CLIENT_SECRET", "s")])).unwrap();
    let p = c.get("reports").unwrap();
    assert_eq!(p.auth, AuthMode::OAuth2ClientCredentials);
    assert!(p.authorize_url.is_none() && p.credentials.is_none());
    assert!(p.is_configured());
    let unconfigured = Catalog::from_toml(toml, &no_env).unwrap();
    assert_eq!(
        unconfigured.get("reports").unwrap().missing_configuration(),
        ["REPORTS_CLIENT_ID", "REPORTS_CLIENT_SECRET"]
    );
    let e = Catalog::from_toml(&toml.replace("token_url", "x_url"), &no_env).unwrap_err().to_string();
    assert!(e.contains("token_url"), "{e}");
}

#[test]
fn rate_limits_are_read_with_their_scope_and_can_be_removed() {
    let c = Catalog::from_toml("", &no_env).unwrap();
    let k = c.get("kartra").unwrap().rate_limit.unwrap();
    assert_eq!(
        (k.requests, k.per, k.scope, k.wait),
        (20, Duration::from_secs(1), LimitScope::App, Duration::from_secs(1))
    );
    let o = c.get("ontraport").unwrap().rate_limit.unwrap();
    assert_eq!((o.requests, o.per, o.scope), (180, Duration::from_secs(60), LimitScope::Connection));
    assert!(c.get("whatconverts").unwrap().rate_limit.is_none(), "daily quotas are not a rate");
    let off = Catalog::from_toml("[providers.kartra]\nrate_limit = { requests = 0 }", &no_env).unwrap();
    assert!(off.get("kartra").unwrap().rate_limit.is_none());
    let e = Catalog::from_toml("[providers.kartra]\nrate_limit = { requests = 5, per_seconds = 0 }", &no_env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("kartra") && e.contains("per_seconds"), "{e}");
}

#[test]
fn every_example_of_the_deploy_providers_file_is_a_valid_entry() {
    let text = include_str!("../../../deploy/providers.example.toml");
    // The examples are the commented lines that are TOML (a table or a `key =`).
    let examples: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            l.starts_with('[')
                || l.split_once(" =").is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(examples.contains("[providers.reports]"), "{examples}");
    let c = Catalog::from_toml(&examples, &no_env).unwrap_or_else(|e| panic!("{e}\n{examples}"));
    assert_eq!(c.get("kartra").unwrap().auth, AuthMode::OAuth2);
    assert_eq!(c.get("interact").unwrap().auth, AuthMode::ApiKey);
    assert_eq!(c.get("reports").unwrap().auth, AuthMode::OAuth2ClientCredentials);
    assert!(c.get("acme-crm").unwrap().issuer.is_some());
}

#[test]
fn the_readmes_example_of_each_auth_mode_is_a_valid_entry() {
    let readme = include_str!("../../../README.md");
    let modes = &readme[readme.find("### Auth modes").expect("the README has its auth modes")..];
    let block = modes.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).unwrap();
    let env = env_of(&[
        ("ACME_CRM_CLIENT_ID", "i"),
        ("ACME_CRM_CLIENT_SECRET", "s"),
        ("REPORTS_CLIENT_ID", "i"),
        ("REPORTS_CLIENT_SECRET", "s"),
        ("ADVISOR_CRM_PARTNER_KEY", "k"),
    ]);
    let c = Catalog::from_toml(block, &env).unwrap_or_else(|e| panic!("{e}"));
    let modes: Vec<_> = ["acme-crm", "reports", "helpdesk", "tracker", "advisor-crm"]
        .iter()
        .map(|id| c.get(id).unwrap().auth.as_str())
        .collect();
    assert_eq!(modes, ["oauth2", "oauth2_client_credentials", "api_key", "basic", "two_step"]);
    assert!(["acme-crm", "reports", "helpdesk", "tracker", "advisor-crm"]
        .iter()
        .all(|id| c.get(id).unwrap().is_configured()));
}

#[test]
fn every_invalid_entry_is_reported_not_only_the_first() {
    let text = "[providers.alpha]\ntoken_url = \"https://a/t\"\n[providers.beta]\nauth = \"api_key\"\n";
    let err = Catalog::from_toml(text, &no_env).unwrap_err();
    assert!(matches!(err, CatalogError::Several(ref all) if all.len() == 2), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("`alpha`") && msg.contains("`beta`"), "{msg}");
}
