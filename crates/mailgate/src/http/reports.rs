//! `GET /api/v1/reports` and `GET /api/v1/reports/{id}`: the reports other
//! receivers sent us, as the report store keeps them (shape in
//! [`crate::report::ingest::view`], the same as `mailgate reports ... --json`).
//!
//! May import: `store`, `report`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Api, DEFAULT_PAGE, MAX_PAGE, bad_request};
use crate::report::ingest::view;
use crate::store::{ReportKind, ReportQuery};

#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    domain: Option<String>,
    kind: Option<String>,
    limit: Option<usize>,
    before: Option<i64>,
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": format!("report store: {e}") }))).into_response()
}

/// Newest first: `{"reports": [...], "next": id|null}`; `next` is what to
/// pass as `before` for the following page.
pub(super) async fn list(
    State(api): State<Arc<Api>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return bad_request("expected ?domain=D&kind=dmarc|tlsrpt&limit=N (1 to 1000)&before=ID");
    };
    let kind = match q.kind.as_deref().filter(|k| !k.is_empty()) {
        None => None,
        Some("dmarc") => Some(ReportKind::Dmarc),
        Some("tlsrpt") => Some(ReportKind::Tlsrpt),
        Some(_) => return bad_request("kind: expected dmarc or tlsrpt"),
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 {
        return bad_request("limit must be at least 1");
    }
    let limit = limit.min(MAX_PAGE);
    let query = ReportQuery { domain: q.domain.filter(|d| !d.is_empty()).map(|d| d.to_lowercase()), kind, limit, before_id: q.before };
    let store = api.store.clone();
    match tokio::task::spawn_blocking(move || store.list_reports(&query)).await {
        Ok(Ok(reports)) => {
            let next = if reports.len() == limit { reports.last().map(|r| r.id) } else { None };
            let list: Vec<_> = reports.iter().map(view::summary_json).collect();
            Json(json!({ "reports": list, "next": next })).into_response()
        }
        Ok(Err(e)) => unavailable(e),
        Err(e) => unavailable(e),
    }
}

pub(super) async fn show(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return bad_request("expected a numeric report id");
    };
    let store = api.store.clone();
    match tokio::task::spawn_blocking(move || store.get_report(id)).await {
        Ok(Ok(Some((summary, report)))) => Json(view::report_json(&summary, &report)).into_response(),
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, Json(json!({ "error": "no such report" }))).into_response(),
        Ok(Err(e)) => unavailable(e),
        Err(e) => unavailable(e),
    }
}
