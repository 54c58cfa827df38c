//! `POST /api/v1/reports/send` (report everything not yet reported, now)
//! and `GET /api/v1/reports/preview/{domain}` (the reports a domain would
//! get now, marking nothing), for `mailgate reports send --now` and
//! `mailgate reports preview`, and for tests.
//!
//! May import: `report`, `store`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::report::Reports;

/// The routes, with their own state so `http::router` adds them in one line.
pub fn router<S: Clone + Send + Sync + 'static>(reports: Arc<Reports>) -> Router<S> {
    Router::new().route("/api/v1/reports/send", post(send)).route("/api/v1/reports/preview/{domain}", get(preview)).with_state(reports)
}

/// `domain` limits the run to one domain (query string or JSON body).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Which {
    domain: Option<String>,
}

fn bad(why: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": why }))).into_response()
}

async fn send(
    State(reports): State<Arc<Reports>>,
    query: Result<Query<Which>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(Query(mut which)) = query else { return bad("unknown query parameter; expected domain".into()) };
    if !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<Which>(&body) {
            Ok(w) => which.domain = w.domain.or(which.domain),
            Err(e) => return bad(format!("expected a JSON body {{\"domain\": \"...\"}} or none: {e}")),
        }
    }
    let sent = reports.send_now(which.domain.as_deref().filter(|d| !d.is_empty())).await;
    Json(json!({ "sent": sent })).into_response()
}

async fn preview(State(reports): State<Arc<Reports>>, Path(domain): Path<String>) -> Response {
    match reports.preview(&domain).await {
        Ok(p) if p.dmarc.is_none() && p.tlsrpt.is_none() => {
            (StatusCode::NOT_FOUND, Json(json!({ "error": format!("nothing to report for {domain}") }))).into_response()
        }
        Ok(p) => Json(json!(p)).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e.to_string() }))).into_response(),
    }
}
