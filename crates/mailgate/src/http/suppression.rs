//! `GET/POST/DELETE /api/v1/suppression`: the suppression list, as
//! `mailgate suppression list/add/remove` shows and changes it. The list is
//! not the queue, so it is changed here directly (store and the copy the
//! SMTP path reads), not through the scheduler.
//!
//! May import: `suppression`, `store`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mailgate_core::{Domain, Mailbox};
use serde_json::json;

use super::{Api, bad_request};
use crate::store::suppression::Suppressed;
use crate::suppression::Suppressions;

#[derive(serde::Deserialize)]
pub(super) struct Filter {
    domain: Option<String>,
    address: Option<String>,
}

#[derive(serde::Deserialize)]
pub(super) struct Add {
    address: String,
    domain: String,
    reason: Option<String>,
    /// Seconds from now; absent or 0: never expires.
    expires_in: Option<u64>,
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": format!("suppression list: {e}") }))).into_response()
}

fn list_of(api: &Api) -> Result<Arc<Suppressions>, Box<Response>> {
    api.suppressions.clone().ok_or_else(|| Box::new(unavailable("not set up in this process")))
}

/// The entry as the API and `--json` show it.
pub fn entry_json(e: &Suppressed) -> serde_json::Value {
    json!({
        "domain": e.domain, "address": e.address, "category": e.category, "reason": e.reason,
        "source": e.source, "created": e.created, "expires": if e.expires == 0 { None } else { Some(e.expires) },
    })
}

/// `{"entries": [...]}`, by domain and address; `?domain=D` for one list.
pub(super) async fn list(State(api): State<Arc<Api>>, query: Result<Query<Filter>, axum::extract::rejection::QueryRejection>) -> Response {
    let Ok(Query(q)) = query else { return bad_request("expected ?domain=D") };
    let s = match list_of(&api) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let domain = q.domain.filter(|d| !d.is_empty());
    match tokio::task::spawn_blocking(move || s.list(domain.as_deref())).await {
        Ok(Ok(entries)) => Json(json!({ "entries": entries.iter().map(entry_json).collect::<Vec<_>>() })).into_response(),
        Ok(Err(e)) => unavailable(e),
        Err(e) => unavailable(e),
    }
}

/// Body `{"address", "domain", "reason"?, "expires_in"?}`: adds (or
/// replaces) a manual entry; answers it.
pub(super) async fn add(State(api): State<Arc<Api>>, body: Result<Json<Add>, axum::extract::rejection::JsonRejection>) -> Response {
    let Ok(Json(b)) = body else {
        return bad_request("expected {\"address\": \"a@b\", \"domain\": \"example.com\", \"reason\": \"...\", \"expires_in\": seconds}");
    };
    let Ok(address) = Mailbox::parse(b.address.trim(), true) else { return bad_request("address: expected an email address") };
    let Ok(domain) = Domain::parse(b.domain.trim().trim_end_matches('.'), true) else {
        return bad_request("domain: expected a domain name");
    };
    let s = match list_of(&api) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let now = crate::store::unix_now();
    let entry = Suppressed {
        domain: domain.as_str().to_lowercase(),
        address: address.to_string().to_lowercase(),
        category: "manual".into(),
        reason: b.reason.unwrap_or_default().chars().filter(|c| !c.is_control()).take(300).collect(),
        source: "manual".into(),
        created: now,
        expires: b.expires_in.filter(|&n| n > 0).map_or(0, |n| now.saturating_add(n)),
    };
    let json = entry_json(&entry);
    match tokio::task::spawn_blocking(move || s.add(entry)).await {
        Ok(Ok(())) => (StatusCode::CREATED, Json(json)).into_response(),
        Ok(Err(e)) => unavailable(e),
        Err(e) => unavailable(e),
    }
}

/// `?address=A[&domain=D]`: removes the address from one list or all;
/// `{"removed": N}`, 404 when it was on none.
pub(super) async fn remove(
    State(api): State<Arc<Api>>,
    query: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else { return bad_request("expected ?address=A&domain=D") };
    let Some(address) = q.address.filter(|a| !a.is_empty()) else { return bad_request("address: required") };
    let s = match list_of(&api) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let domain = q.domain.filter(|d| !d.is_empty());
    match tokio::task::spawn_blocking(move || s.remove(&address, domain.as_deref())).await {
        Ok(Ok(0)) => (StatusCode::NOT_FOUND, Json(json!({ "removed": 0, "error": "not on the suppression list" }))).into_response(),
        Ok(Ok(n)) => Json(json!({ "removed": n })).into_response(),
        Ok(Err(e)) => unavailable(e),
        Err(e) => unavailable(e),
    }
}
