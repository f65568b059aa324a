//! The web page: plain HTML, CSS and JavaScript compiled into the binary (no CDN, no build
//! step; it works offline).

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

/// The page loads nothing but its own files and talks to nothing but this server.
const PAGE_CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; \
                        connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

fn text(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP)),
        ],
        body,
    )
        .into_response()
}

pub async fn page() -> Response {
    text(INDEX_HTML, "text/html; charset=utf-8")
}

pub async fn favicon() -> Response {
    text(FAVICON_SVG, "image/svg+xml")
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => text(APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => text(APP_CSS, "text/css; charset=utf-8"),
        _ => ApiError::not_found("no such asset").into_response(),
    }
}
