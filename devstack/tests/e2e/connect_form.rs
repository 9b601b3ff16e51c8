//! The hosted credential form of a connect session, as a browser sends it (the rendering is
//! checked in a real browser by `tests/browser/`): bound to the browser that opened it, checked
//! with the provider before anything is stored, refusals shown with the provider's words and
//! without the secrets, and single use once accepted.

use crate::support::{query_param, TestApp, RETURN_URL};
use reqwest::StatusCode;
use url::Url;

/// The browser's side: the page, its `state` field and its binding cookie.
struct Form {
    html: String,
    state: String,
    cookie: String,
}

async fn open(app: &TestApp, provider: &str, id: &str) -> Form {
    let url = app.connect_url(provider, id).await;
    let r = app.http.get(&url).header("Accept", "text/html").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("form-action 'self' https://app.example") && !csp.contains("unsafe-inline"), "{csp}");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Path=/connect/credentials"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let html = r.text().await.unwrap();
    let state = html.split("name=\"state\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    Form { html, state, cookie }
}

async fn post(app: &TestApp, form: &Form, cookie: Option<&str>, fields: &[(&str, &str)]) -> reqwest::Response {
    let mut pairs = vec![("state", form.state.as_str())];
    pairs.extend_from_slice(fields);
    let mut req = app.http.post(app.gw("/connect/credentials")).header("Accept", "text/html").form(&pairs);
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    req.send().await.unwrap()
}

fn landed(r: &reqwest::Response) -> Url {
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    Url::parse(r.headers()["location"].to_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_user_connects_kartra_through_the_hosted_form_after_one_refusal() {
    let app = TestApp::start().await;
    let form = open(&app, "kartra", "user-42").await;
    assert!(form.html.contains("Connect your Kartra account"));
    assert!(form.html.contains("name=\"api_key\"") && form.html.contains("name=\"api_password\" type=\"password\""));
    assert!(form.html.contains("My Integrations"), "the catalog's help for each field");

    // A wrong password: the form again, with Kartra's words, the secrets not written back.
    let r = post(&app, &form, Some(&form.cookie), &[("api_key", "demo-key"), ("api_password", "wrong-pw")]).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = r.text().await.unwrap();
    assert!(page.contains("API password is not valid") && page.contains("role=\"alert\""), "{page}");
    assert!(!page.contains("wrong-pw") && !page.contains("demo-key"), "no secret echoed into the page");
    let r = app.api(reqwest::Method::GET, "/v1/connections/kartra/user-42").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "nothing stored");

    // The right one: stored, and the browser goes back to the product.
    let fields = [("api_key", "demo-key"), ("api_password", "demo-password"), ("app_id", "smuggled")];
    let r = post(&app, &form, Some(&form.cookie), &fields).await;
    let cleared = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let to = landed(&r);
    assert!(to.as_str().starts_with(RETURN_URL));
    assert_eq!(query_param(&to, "status").as_deref(), Some("connected"));
    assert_eq!(query_param(&to, "connection_id").as_deref(), Some("user-42"));
    assert!(cleared.contains("Max-Age=0"), "the flow's cookie goes");
    assert_eq!(app.connection("kartra", "user-42").await["status"], "active");
    let r = app.api(reqwest::Method::GET, "/v1/connections/kartra/user-42/credentials").await;
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["credentials"], serde_json::json!({"api_key": "demo-key", "api_password": "demo-password"}));

    // Single use: the same form again ends the flow with an error, storing nothing new.
    let r = post(&app, &form, Some(&form.cookie), &[("api_key", "demo-key"), ("api_password", "demo-password")]).await;
    assert_eq!(query_param(&landed(&r), "error").as_deref(), Some("state_already_used"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_sent_from_another_browser_burns_the_flow_and_stores_nothing() {
    let app = TestApp::start().await;
    let form = open(&app, "redtail", "victim").await;
    // Someone else's browser (no cookie, or another flow's) sends the form.
    let fields = [("username", "demo"), ("password", "demo-password")];
    let r = post(&app, &form, None, &fields).await;
    assert_eq!(query_param(&landed(&r), "error").as_deref(), Some("browser_mismatch"));
    let r = post(&app, &form, Some("authbridge_flow_x=forged"), &fields).await;
    assert_eq!(query_param(&landed(&r), "error").as_deref(), Some("state_already_used"));
    // The browser that opened it cannot finish it any more either.
    let r = post(&app, &form, Some(&form.cookie), &fields).await;
    assert_eq!(query_param(&landed(&r), "error").as_deref(), Some("state_already_used"));
    let r = app.api(reqwest::Method::GET, "/v1/connections/redtail/victim").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.stack.mock.state.api_counts().redtail_authentications, 0, "never sent to the provider");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_links_get_a_page_in_a_browser_and_json_elsewhere() {
    let app = TestApp::start().await;
    let r = app.http.get(app.gw("/connect/not-a-token")).header("Accept", "text/html,*/*").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("This link does not work"));
    let r = app.http.get(app.gw("/connect/not-a-token")).header("Accept", "application/json").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], "session_not_found");
    let r = app.http.post(app.gw("/connect/credentials")).form(&[("state", "nope")]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // A credential flow's state is no OAuth state: a callback carrying it stores nothing.
    let form = open(&app, "whatconverts", "w1").await;
    let r = app.http.get(app.gw(&format!("/oauth/callback?code=x&state={}", form.state))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let to = Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(query_param(&to, "status").as_deref(), Some("error"));
    let css = app.http.get(app.gw("/connect/assets/connect.css")).send().await.unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    app.stop().await;
}

async fn session_with(app: &TestApp, body: serde_json::Value) -> reqwest::Response {
    app.post_json("/v1/connect/sessions", &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_without_a_return_url_or_in_a_popup_end_on_the_gateways_page() {
    let app = TestApp::start().await;
    // Popup mode needs an origin to tell; a mode that does not exist is refused.
    let r = session_with(&app, serde_json::json!({"provider": "mock", "connection_id": "p", "mode": "popup"})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("return_url"));
    let r = session_with(&app, serde_json::json!({"provider": "mock", "connection_id": "p", "mode": "tab"})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // No return_url: the callback answers with the outcome itself (JSON for an API client).
    let r = session_with(&app, serde_json::json!({"provider": "mock", "connection_id": "nr"})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let connect: serde_json::Value = r.json().await.unwrap();
    let authorize = app.follow(connect["connect_url"].as_str().unwrap()).await;
    let callback = app.follow(authorize.as_str()).await;
    let cookie: String = app.cookies().iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ");
    let r = app
        .http
        .get(callback.as_str())
        .header("Cookie", &cookie)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v, serde_json::json!({"status": "connected", "provider": "mock", "connection_id": "nr"}));
    let r = app
        .http
        .get(connect["connect_url"].as_str().unwrap())
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], "session_already_used");

    // Popup mode: the last page posts the outcome to the return_url's origin only, from a
    // script the page's CSP allows by nonce.
    let r = session_with(
        &app,
        serde_json::json!({"provider": "mock", "connection_id": "pp", "mode": "popup", "return_url": "https://app.example/x"}),
    )
    .await;
    let connect: serde_json::Value = r.json().await.unwrap();
    let authorize = app.follow(connect["connect_url"].as_str().unwrap()).await;
    let callback = app.follow(authorize.as_str()).await;
    let cookie: String = app.cookies().iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ");
    let r =
        app.http.get(callback.as_str()).header("Cookie", &cookie).header("Accept", "text/html").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    let page = r.text().await.unwrap();
    let nonce = page.split("<script nonce=\"").nth(1).unwrap().split('"').next().unwrap();
    assert!(csp.contains(&format!("script-src 'nonce-{nonce}'")) && !csp.contains("unsafe-inline"), "{csp}");
    assert!(page.contains("postMessage(outcome, \"https://app.example\")"), "{page}");
    assert!(page.contains("\"connection_id\":\"pp\""));
    assert_eq!(app.connection("mock", "pp").await["status"], "active");
    let js = app.http.get(app.gw("/connect/assets/connect.js")).send().await.unwrap();
    assert!(js.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert!(js.text().await.unwrap().contains("authbridge"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branding_framing_the_interstitial_and_head_requests() {
    let ui = auth_gateway::settings::UiSettings {
        product_name: Some("Acme".into()),
        logo_url: Some(Url::parse("https://cdn.acme.example/logo.svg").unwrap()),
        accent: Some("#ffd400".into()),
        frame_ancestors: vec!["https://app.example".into()],
        interstitial: true,
    };
    let app = TestApp::start_with(devstack::StackOptions { ui, ..Default::default() }).await;
    let connect = app.connect_url("mock", "branded").await;
    // A link checker's HEAD does not use the link up.
    let r = app.http.head(&connect).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("set-cookie").is_none());
    // The interstitial: one link to the provider, the product's name and logo, framing allowed
    // for the configured origin only.
    let r = app.http.get(&connect).header("Accept", "text/html").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.contains("frame-ancestors https://app.example") && csp.contains("img-src 'self' https://cdn.acme.example"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-frame-options"], "SAMEORIGIN");
    assert!(r.headers().get("set-cookie").is_none(), "the interstitial does not open the session");
    let page = r.text().await.unwrap();
    // Fetched again (a link checker came first): still there.
    let again = app.http.get(&connect).send().await.unwrap();
    assert!(again.text().await.unwrap().contains("Continue to Mock provider"));
    assert!(page.contains("Connect Acme to your Mock provider (mock) account"), "{page}");
    assert!(page.contains("<img src=\"https://cdn.acme.example/logo.svg\" alt=\"Acme\""));
    assert!(page.contains("/connect/assets/brand.css"));
    let href = page.split("class=\"button\" href=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    assert!(href.ends_with("?go=1"), "{href}");
    // The button opens the flow: from here on as without the interstitial.
    let authorize = app.follow(&href).await;
    let callback = app.follow(authorize.as_str()).await;
    let landed = app.follow(callback.as_str()).await;
    assert_eq!(query_param(&landed, "status").as_deref(), Some("connected"));
    let css = app.http.get(app.gw("/connect/assets/brand.css")).send().await.unwrap().text().await.unwrap();
    assert!(css.contains("--button: #ffd400") && css.contains("--button-text: #000000"), "{css}");
    // A credential form names the product; HEAD works on the read-only API routes.
    let form = open_framed(&app, "kartra", "k-branded").await;
    assert!(form.contains("Acme asks for these details"), "{form}");
    let r = app
        .http
        .head(app.gw("/v1/providers"))
        .header("Authorization", format!("Bearer {}", app.stack.api_key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().is_empty());
    assert_eq!(app.http.head(app.gw("/healthz")).send().await.unwrap().status(), StatusCode::OK);
    app.stop().await;
}

/// A credential form's page, in a stack whose pages may be framed (its CSP says so).
async fn open_framed(app: &TestApp, provider: &str, id: &str) -> String {
    let url = app.connect_url(provider, id).await;
    let r = app.http.get(&url).header("Accept", "text/html").send().await.unwrap();
    assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors https://app.example"));
    r.text().await.unwrap()
}
