//! HTTP: the admin API under `/api/v1`, Prometheus `/metrics`, `/healthz`.
//!
//! Reads the spool's index for listings; every change goes through the
//! scheduler. Bind it to loopback: it has no authentication of its own.
//!
//! May import: `scheduler`, `spool`, `events`, `mailgate-core`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mailgate_core::QueueId;
use serde_json::{Value, json};

use crate::events::Metrics;
use crate::scheduler;
use crate::spool::{Queued, Recovery, Spool};

pub struct Api {
    pub spool: Arc<Spool>,
    pub scheduler: scheduler::Handle,
    pub metrics: Arc<Metrics>,
    pub recovery: Recovery,
}

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/api/v1/queue", get(list))
        .route("/api/v1/queue/{id}", get(show).delete(delete))
        .route("/api/v1/queue/{id}/retry", axum::routing::post(retry))
        .route("/api/v1/spool", get(spool_status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(api)
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

async fn list(State(api): State<Arc<Api>>) -> Json<Value> {
    let now = now();
    let messages: Vec<Value> = api.spool.list().iter().map(|q| message_json(q, now)).collect();
    Json(json!({ "messages": messages }))
}

fn parse_id(id: &str) -> Result<QueueId, Response> {
    QueueId::parse(id).ok_or_else(|| (StatusCode::BAD_REQUEST, Json(json!({"error": "malformed queue id"}))).into_response())
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": "no such message"}))).into_response()
}

async fn show(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
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
        Err(r) => return r,
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
        Err(r) => return r,
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

async fn metrics(State(api): State<Arc<Api>>) -> impl IntoResponse {
    let m = &api.metrics;
    let (fsyncs, records) = api.spool.sync_stats();
    let lines = [
        ("mailgate_connections_total", "counter", Metrics::get(&m.connections)),
        ("mailgate_connections_refused_total", "counter", Metrics::get(&m.connections_refused)),
        ("mailgate_messages_accepted_total", "counter", Metrics::get(&m.messages_accepted)),
        ("mailgate_messages_refused_total", "counter", Metrics::get(&m.messages_refused)),
        ("mailgate_bytes_accepted_total", "counter", Metrics::get(&m.bytes_accepted)),
        ("mailgate_spool_errors_total", "counter", Metrics::get(&m.spool_errors)),
        ("mailgate_delivered_total", "counter", Metrics::get(&m.delivered)),
        ("mailgate_deferred_total", "counter", Metrics::get(&m.deferred)),
        ("mailgate_bounced_total", "counter", Metrics::get(&m.bounced)),
        ("mailgate_spool_fsyncs_total", "counter", fsyncs),
        ("mailgate_spool_records_total", "counter", records),
        ("mailgate_queue_messages", "gauge", api.spool.len() as u64),
    ];
    let mut body = String::new();
    for (name, kind, value) in lines {
        body.push_str(&format!("# TYPE {name} {kind}\n{name} {value}\n"));
    }
    ([("content-type", "text/plain; version=0.0.4")], body)
}
