//! The API reference, served by the gateway itself: the OpenAPI documents (`docs/openapi/`, as
//! JSON) and a page that renders them with Redoc, shipped with the project (no CDN), for the
//! gateway's API at `/docs` and the proxy's at `/docs/proxy`.

use actix_web::http::header;
use actix_web::HttpResponse;

const GATEWAY: &[u8] = include_bytes!("../../../docs/openapi/gateway.json");
const PROXY: &[u8] = include_bytes!("../../../docs/openapi/proxy.json");
const REDOC: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js");

/// Redoc styles its page inline and builds its search worker from a blob; everything else
/// comes from here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

fn document(body: &'static [u8]) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .body(body)
}

/// `GET /openapi.json`: the gateway's document.
pub async fn gateway_document() -> HttpResponse {
    document(GATEWAY)
}

/// `GET /openapi/proxy.json`: the proxy's document (the proxy serves it too, at its own
/// `/openapi.json`), here so the reference page can show it from the same origin.
pub async fn proxy_document() -> HttpResponse {
    document(PROXY)
}

fn page(title: &str, spec: &str, script: &str) -> HttpResponse {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{title}</title>\n<style>body {{ margin: 0 }}</style>\n</head>\n\
         <body>\n<redoc spec-url=\"{spec}\" hide-download-button=\"false\"></redoc>\n\
         <noscript>The reference needs JavaScript; the document itself is at <a href=\"{spec}\">{spec}</a>.</noscript>\n\
         <script src=\"{script}\"></script>\n</body>\n</html>\n"
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(html)
}

/// `GET /docs`: the gateway's API reference. (Relative links: it works behind a path prefix.)
pub async fn gateway_page() -> HttpResponse {
    page("authbridge gateway API", "openapi.json", "docs/assets/redoc.standalone.js")
}

/// `GET /docs/proxy`: the proxy's API reference.
pub async fn proxy_page() -> HttpResponse {
    page("authbridge proxy API", "../openapi/proxy.json", "assets/redoc.standalone.js")
}

/// `GET /docs/assets/redoc.standalone.js`
pub async fn redoc() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
        .body(REDOC)
}
