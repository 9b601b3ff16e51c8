//! `TestApp`: one method per endpoint, and a browser that follows the connect flow.

use devstack::{Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;
use url::Url;

pub struct TestApp {
    pub stack: Stack,
    pub http: reqwest::Client,
    /// The end user's browser's cookies for the gateway (`follow` sends and keeps them).
    jar: std::sync::Mutex<Vec<(String, String)>>,
}

pub const RETURN_URL: &str = "https://app.example/settings?tab=integrations";

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(StackOptions::default()).await
    }

    pub async fn start_with(opts: StackOptions) -> Self {
        shared::telemetry::init_for_tests();
        let stack = Stack::start(opts).await.expect("stack starts");
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { stack, http, jar: Default::default() }
    }

    pub async fn stop(self) {
        self.stack.stop().await;
    }

    pub fn gw(&self, path: &str) -> String {
        format!("{}{path}", self.stack.gateway.url())
    }

    pub fn px(&self, path: &str) -> String {
        format!("{}{path}", self.stack.proxy.url())
    }

    fn key(&self) -> String {
        format!("Bearer {}", self.stack.api_key)
    }

    pub async fn create_session(&self, provider: &str, connection_id: &str, return_url: &str) -> reqwest::Response {
        self.http
            .post(self.gw("/v1/connect/sessions"))
            .header("Authorization", self.key())
            .json(&serde_json::json!({"provider": provider, "connection_id": connection_id, "return_url": return_url}))
            .send()
            .await
            .unwrap()
    }

    pub async fn connect_url(&self, provider: &str, connection_id: &str) -> String {
        let r = self.create_session(provider, connection_id, RETURN_URL).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        body["connect_url"].as_str().unwrap().to_owned()
    }

    /// GETs `url` as the end user's browser would (with its cookies for the gateway, keeping
    /// any it is given) and returns the redirect target.
    pub async fn follow(&self, url: &str) -> Url {
        let mut req = self.http.get(url);
        if url.starts_with(&self.stack.gateway.url()) {
            let jar = self.jar.lock().unwrap();
            if !jar.is_empty() {
                let line = jar.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ");
                req = req.header("Cookie", line);
            }
        }
        let r = req.send().await.unwrap();
        self.keep_cookies(&r);
        assert_eq!(r.status(), StatusCode::FOUND, "GET {url} did not redirect: {}", r.text().await.unwrap_or_default());
        Url::parse(r.headers()["location"].to_str().unwrap()).unwrap()
    }

    /// GETs `url` as a different browser would: without the end user's cookies.
    pub async fn follow_as_stranger(&self, url: &str) -> Url {
        let r = self.http.get(url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FOUND, "GET {url} did not redirect: {}", r.text().await.unwrap_or_default());
        Url::parse(r.headers()["location"].to_str().unwrap()).unwrap()
    }

    /// The browser's cookies for the gateway, as `name=value` pairs.
    pub fn cookies(&self) -> Vec<(String, String)> {
        self.jar.lock().unwrap().clone()
    }

    fn keep_cookies(&self, r: &reqwest::Response) {
        let mut jar = self.jar.lock().unwrap();
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (name, value) = pair.split_once('=').unwrap();
            jar.retain(|(n, _)| n != name);
            if !attrs.to_ascii_lowercase().contains("max-age=0") {
                jar.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    /// Walks the whole browser flow and returns where the browser lands, plus the callback
    /// URL the provider sent it to (for replay tests).
    pub async fn connect(&self, provider: &str, connection_id: &str) -> (Url, Url) {
        let connect = self.connect_url(provider, connection_id).await;
        let authorize = self.follow(&connect).await;
        let callback = self.follow(authorize.as_str()).await;
        let landed = self.follow(callback.as_str()).await;
        (landed, callback)
    }

    pub async fn proxy_get(&self, provider: &str, connection_id: &str, path: &str) -> reqwest::Response {
        self.proxy(reqwest::Method::GET, &format!("{provider}/{connection_id}/{path}")).send().await.unwrap()
    }

    /// A request to `/proxy/{tail}` carrying the API key, to add headers or a body to.
    pub fn proxy(&self, method: reqwest::Method, tail: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.px(&format!("/proxy/{tail}"))).header("Authorization", self.key())
    }

    /// `POST {gateway}{path}` with a JSON body and the stack's API key.
    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http.post(self.gw(path)).header("Authorization", self.key()).json(body).send().await.unwrap()
    }

    pub async fn api(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.http.request(method, self.gw(path)).header("Authorization", self.key()).send().await.unwrap()
    }

    pub async fn connection(&self, provider: &str, connection_id: &str) -> Value {
        let r = self.api(reqwest::Method::GET, &format!("/v1/connections/{provider}/{connection_id}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    pub async fn token(&self, provider: &str, connection_id: &str) -> String {
        let r = self.api(reqwest::Method::GET, &format!("/v1/connections/{provider}/{connection_id}/token")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }

    pub fn mock_stats(&self) -> mock_provider::Stats {
        self.stack.mock.state.stats()
    }

    pub fn mock_control(&self, c: mock_provider::Control) {
        self.stack.mock.state.control(c);
    }

    /// Raw rows of a table, every column cast to text, for "no secret in clear" checks.
    pub async fn raw_table_text(&self, table: &str) -> String {
        let (client, conn) = tokio_postgres::connect(&self.stack.database_url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let rows = client.query(&format!("SELECT t::text FROM {table} t"), &[]).await.unwrap();
        rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
    }
}

/// Polls `f` until it returns `Some`, failing the test after `limit` (a deadline for an
/// eventual outcome, not a performance assertion).
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn query_param(u: &Url, k: &str) -> Option<String> {
    u.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned())
}
