//! The dashboard: server-rendered pages of the admin server for people,
//! each with a `?format=json` twin for scripts. One file per page; the
//! frame and formatting in [`layout`], charts in [`chart`]. Reads the
//! report store and the spool; Retry and Delete go through the
//! scheduler's admin commands, as the API's do.
//!
//! May import: `store`, `spool`, `scheduler` (its handle), `sign::store`
//! (key listings), `config`, `http::auth`, `http::session`, maud.

mod advice;
pub mod chart;
mod domains;
pub mod layout;
mod lookup;
mod messages;
mod overview;
mod queue;
mod tls;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::Query;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Serialize;

use super::Api;
use super::auth::Access;

pub fn router() -> Router<Arc<Api>> {
    Router::new()
        .route("/", get(overview::page))
        .route("/queue", get(queue::page))
        .route("/messages", get(messages::search))
        .route("/messages/{id}", get(messages::show))
        .route("/messages/{id}/retry", post(messages::retry))
        .route("/messages/{id}/delete", post(messages::delete))
        .route("/domains/{domain}", get(domains::page))
        .route("/domains/{domain}/advice", get(advice::page))
        .route("/tls", get(tls::page))
        .route("/dashboard.css", get(css))
        // Browsers ask for it on every page: no icon, and no redirect to the login.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")], layout::CSS).into_response()
}

/// The query string, tolerant of anything: a page never fails on it.
pub type Params = Query<HashMap<String, String>>;

pub fn wants_json(q: &HashMap<String, String>) -> bool {
    q.get("format").is_some_and(|f| f == "json")
}

/// The JSON twin, or the page.
pub fn respond<T: Serialize>(json: bool, data: &T, page: impl FnOnce(&T) -> Markup) -> Response {
    if json {
        axum::Json(data).into_response()
    } else {
        let mut resp = page(data).into_response();
        // The pages carry addresses and CSRF tokens: no caching, no framing.
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        h.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            header::HeaderValue::from_static(
                "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
            ),
        );
        resp
    }
}

/// A failure as the page or its twin shows it.
pub fn failure(json: bool, access: &Access, status: StatusCode, what: &str) -> Response {
    if json {
        return (status, axum::Json(serde_json::json!({ "error": what }))).into_response();
    }
    let body = html! { h1 { (status.canonical_reason().unwrap_or("Error")) } p.error { (what) } };
    (status, layout::page("Error", None, access, body)).into_response()
}

/// Runs a blocking store read off the async threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> crate::store::Result<T> + Send + 'static) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("report store read failed: {e}")),
    }
}

pub fn now() -> u64 {
    crate::store::unix_now()
}

pub const DAY: u64 = 86_400;
