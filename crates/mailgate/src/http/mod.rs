//! HTTP: the admin API under `/api/v1`, Prometheus `/metrics`, `/healthz`,
//! and the dashboard's pages ([`dashboard`], with logins in [`session`]).
//!
//! Reads the spool's index for listings (a page at a time); every change
//! goes through the scheduler. Every request but `GET /healthz`,
//! `GET /metrics` and the login form needs the bearer token or a dashboard
//! session ([`auth`]); [`listen`] serves it over HTTPS when `[http] tls = true`.
//!
//! May import: `scheduler`, `spool`, `store`, `report`, `metrics`, `tls`, `config`, `sign::store`, `suppression`, `mailgate-core`.

pub mod auth;
mod dashboard;
pub mod listen;
mod metrics;
pub mod report_send;
mod reports;
pub mod session;
pub mod suppression;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mailgate_core::QueueId;
use serde_json::{Value, json};

use crate::metrics::Metrics;
use crate::scheduler;
use crate::spool::{Queued, Recovery, Spool};

pub struct Api {
    pub spool: Arc<Spool>,
    pub scheduler: scheduler::Handle,
    pub metrics: Arc<Metrics>,
    pub recovery: Recovery,
    pub guard: Arc<auth::Guard>,
    /// The report store (reports sent and received, evaluations).
    pub store: Arc<dyn crate::store::Store>,
    /// Its writer, to flush before reading what was just recorded.
    pub recorder: Arc<crate::store::Recorder>,
    /// Sends the DMARC and TLS-RPT reports (`/api/v1/reports/send`).
    pub reports: Arc<crate::report::Reports>,
    /// Our domains, `data_dir`, DKIM rotation (the dashboard's domain pages).
    pub config: Arc<crate::config::Config>,
    /// For the records the domain pages show as published now.
    pub resolver: Option<hickory_resolver::TokioResolver>,
    /// The suppression list (`/api/v1/suppression`).
    pub suppressions: Option<Arc<crate::suppression::Suppressions>>,
}

/// Messages per page when `limit` is not given, and the most one page holds.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

pub fn router(api: Arc<Api>) -> Router {
    let guard = api.guard.clone();
    Router::new()
        .route("/api/v1/queue", get(list))
        .route("/api/v1/queue/delete", axum::routing::post(delete_matching))
        .route("/api/v1/queue/{id}", get(show).delete(delete))
        .route("/api/v1/queue/{id}/retry", axum::routing::post(retry))
        .route("/api/v1/spool", get(spool_status))
        .route("/api/v1/reports", get(reports::list))
        .route("/api/v1/reports/{id}", get(reports::show))
        .route("/api/v1/suppression", get(suppression::list).post(suppression::add).delete(suppression::remove))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(report_send::router(api.reports.clone()))
        .merge(dashboard::router())
        .route("/login", get(session::form).post(session::login))
        .route("/logout", axum::routing::post(session::logout))
        .with_state(api)
        .layer(axum::middleware::from_fn_with_state(guard, auth::require_token))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One message in the shape `mailgate queue list --json` documents.
pub fn message_json(q: &Queued, now: u64) -> Value {
    let env = &q.envelope;
    let recipients: Vec<Value> = env
        .recipients
        .iter()
        .map(|r| {
            json!({
                "address": r.address.to_string(),
                "status": r.status,
                "attempts": r.attempts,
                "last_reply": r.last_reply,
                "classification": classification(r),
                "next_attempt_s": if r.is_pending() { json!(r.next_attempt.saturating_sub(now)) } else { Value::Null },
            })
        })
        .collect();
    json!({
        "id": q.id.as_str(),
        "sender": env.sender.to_string(),
        "size": q.size,
        "age_s": now.saturating_sub(env.received_at),
        "recipients": recipients,
    })
}

/// Why a recipient is waiting or failed, from its last reply: `{"kind":
/// "hard|soft", "category": ...}`; null for a delivered or new one.
fn classification(r: &mailgate_core::Recipient) -> Value {
    use mailgate_core::RecipientStatus;
    if !matches!(r.status, RecipientStatus::Deferred | RecipientStatus::Failed) {
        return Value::Null;
    }
    match r.last_reply.as_deref().and_then(mailgate_core::bounce::classify_reply) {
        Some(c) => json!({"kind": c.kind, "category": c.category}),
        None => Value::Null,
    }
}

#[derive(serde::Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    after: Option<String>,
}

fn bad_request(why: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": why }))).into_response()
}

/// One page of the queue in id order: `{"messages": [...], "next": id|null}`;
/// `next` is what to pass as `after` for the following page.
async fn list(State(api): State<Arc<Api>>, query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>) -> Response {
    let Ok(Query(q)) = query else {
        return bad_request("expected ?limit=N (1 to 1000) and &after=<queue id>");
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 {
        return bad_request("limit must be at least 1");
    }
    let after = match q.after.as_deref().filter(|a| !a.is_empty()) {
        Some(a) => match QueueId::parse(a) {
            Some(id) => Some(id),
            None => return bad_request("after: malformed queue id"),
        },
        None => None,
    };
    let now = now();
    let (page, next) = api.spool.page(after.as_ref(), limit.min(MAX_PAGE));
    let messages: Vec<Value> = page.iter().map(|q| message_json(q, now)).collect();
    Json(json!({ "messages": messages, "next": next.as_ref().map(QueueId::as_str) })).into_response()
}

/// `POST /api/v1/queue/delete` with `{"sender": ..., "recipient_domain": ...}`:
/// deletes every matching message, answers `{"deleted": N}`.
async fn delete_matching(
    State(api): State<Arc<Api>>,
    filter: Result<Json<scheduler::Filter>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let filter = match filter {
        Ok(Json(f)) => f,
        Err(e) => return bad_request(&format!("expected a JSON object with \"sender\" and/or \"recipient_domain\": {e}")),
    };
    if filter.is_empty() {
        return bad_request("give \"sender\" and/or \"recipient_domain\"; an empty filter would match every message");
    }
    match api.scheduler.delete_matching(filter).await {
        Ok(n) => Json(json!({ "deleted": n })).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": e.to_string()}))).into_response(),
    }
}

fn parse_id(id: &str) -> Result<QueueId, Box<Response>> {
    QueueId::parse(id).ok_or_else(|| Box::new((StatusCode::BAD_REQUEST, Json(json!({"error": "malformed queue id"}))).into_response()))
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": "no such message"}))).into_response()
}

async fn show(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let Some(q) = api.spool.get(&id) else {
        return not_found();
    };
    let mut v = message_json(&q, now());
    let env = &q.envelope;
    v["client"] = json!({ "ip": env.client.ip.to_string(), "helo": env.client.helo, "listener": env.client.listener });
    v["ret"] = json!(env.ret);
    v["envid"] = json!(env.envid);
    v["received_at"] = json!(env.received_at);
    if let Ok(Some(data)) = api.spool.read_limited(&id, 0) {
        let end = data.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2).unwrap_or(data.len());
        v["headers"] = json!(String::from_utf8_lossy(&data[..end]));
    }
    for (i, r) in env.recipients.iter().enumerate() {
        v["recipients"][i]["notify"] = json!(r.notify);
        v["recipients"][i]["orcpt"] = json!(r.orcpt);
    }
    Json(v).into_response()
}

async fn delete(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    match api.scheduler.delete(id.clone()).await {
        Ok(true) => Json(json!({"deleted": id.as_str()})).into_response(),
        Ok(false) => not_found(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": e.to_string()}))).into_response(),
    }
}

async fn retry(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    if api.scheduler.retry(id.clone()).await { Json(json!({"retrying": id.as_str()})).into_response() } else { not_found() }
}

async fn spool_status(State(api): State<Arc<Api>>) -> Json<Value> {
    let (fsyncs, records) = api.spool.sync_stats();
    Json(json!({
        "messages": api.spool.len(),
        "fsyncs": fsyncs,
        "records": records,
        "recovery": api.recovery,
    }))
}
