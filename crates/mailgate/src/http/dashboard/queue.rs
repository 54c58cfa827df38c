//! `/queue`: the queue as Postfix's `qshape` shows it, pending recipients
//! by destination domain × age bucket, with each row's oldest message and
//! its last reply, linked to the message's page.
//!
//! May import: `spool`, maud.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use maud::html;
use serde::Serialize;

use super::layout::{self, age};
use super::{Params, now, respond, wants_json};
use crate::http::Api;
use crate::http::auth::Access;

/// Upper bounds of the age buckets in minutes, as `qshape` has them; the
/// last bucket is everything older.
const BUCKETS: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];
/// Messages looked at at most: a page, not a full scan of a huge queue.
const MAX_SCAN: usize = 200_000;
/// Domains shown at most (the biggest).
const MAX_ROWS: usize = 100;

#[derive(Serialize, Clone)]
struct Oldest {
    queue_id: String,
    age_s: u64,
    last_reply: Option<String>,
}

#[derive(Serialize)]
struct Row {
    domain: String,
    total: u64,
    /// Recipients per bucket, youngest first; the last is older than 1280 minutes.
    buckets: Vec<u64>,
    oldest: Oldest,
}

#[derive(Serialize)]
struct Shape {
    messages: usize,
    recipients: u64,
    /// Upper bounds of the buckets in minutes.
    bucket_minutes: Vec<u64>,
    totals: Vec<u64>,
    rows: Vec<Row>,
    /// The queue had more messages than were looked at.
    truncated: bool,
}

fn bucket(age_s: u64) -> usize {
    let minutes = age_s / 60;
    BUCKETS.iter().position(|&b| minutes < b).unwrap_or(BUCKETS.len())
}

fn shape(api: &Api) -> Shape {
    let now = now();
    let mut rows: HashMap<String, Row> = HashMap::new();
    let (mut messages, mut recipients) = (0, 0);
    let mut after = None;
    let mut truncated = false;
    loop {
        let (page, next) = api.spool.page(after.as_ref(), 1000);
        for q in &page {
            messages += 1;
            let env = &q.envelope;
            let age_s = now.saturating_sub(env.received_at);
            for r in env.recipients.iter().filter(|r| r.is_pending()) {
                recipients += 1;
                let domain = r.address.domain().map(|d| d.as_str().to_lowercase()).unwrap_or_default();
                let row = rows.entry(domain.clone()).or_insert_with(|| Row {
                    domain,
                    total: 0,
                    buckets: vec![0; BUCKETS.len() + 1],
                    oldest: Oldest { queue_id: q.id.as_str().to_string(), age_s, last_reply: r.last_reply.clone() },
                });
                row.total += 1;
                row.buckets[bucket(age_s)] += 1;
                if age_s > row.oldest.age_s {
                    row.oldest = Oldest { queue_id: q.id.as_str().to_string(), age_s, last_reply: r.last_reply.clone() };
                }
            }
        }
        match next {
            Some(id) if messages < MAX_SCAN => after = Some(id),
            Some(_) => {
                truncated = true;
                break;
            }
            None => break,
        }
    }
    let mut rows: Vec<Row> = rows.into_values().collect();
    rows.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.domain.cmp(&b.domain)));
    let mut totals = vec![0; BUCKETS.len() + 1];
    for r in &rows {
        for (t, n) in totals.iter_mut().zip(&r.buckets) {
            *t += n;
        }
    }
    rows.truncate(MAX_ROWS);
    Shape { messages, recipients, bucket_minutes: BUCKETS.to_vec(), totals, rows, truncated }
}

pub async fn page(State(api): State<Arc<Api>>, Extension(access): Extension<Access>, q: Params) -> Response {
    let json = wants_json(&q);
    let a = api.clone();
    let data = match tokio::task::spawn_blocking(move || shape(&a)).await {
        Ok(d) => d,
        Err(e) => return super::failure(json, &access, axum::http::StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    respond(json, &data, |d| {
        let body = html! {
            h1 { "Queue" }
            div.cards {
                div.card { div.label { "Messages" } div.value #queue-messages { (d.messages) } }
                div.card { div.label { "Pending recipients" } div.value #queue-recipients { (d.recipients) } }
            }
            @if d.truncated { p.note { "Only the first " (MAX_SCAN) " messages were counted." } }
            h2 { "Pending recipients by destination and age" }
            @if d.rows.is_empty() {
                p.note { "The queue is empty." }
            } @else {
                div.panel {
                    table #qshape {
                        thead { tr {
                            th { "Domain" } th.num { "Total" }
                            @for b in &d.bucket_minutes { th.num { "<" (b) "m" } }
                            th.num { (BUCKETS[BUCKETS.len() - 1]) "m+" }
                            th { "Oldest message and its last reply" }
                        } }
                        tbody {
                            tr { td { strong { "all" } } td.num { strong { (d.recipients) } } @for t in &d.totals { td.num { (zero(*t)) } } td {} }
                            @for r in &d.rows {
                                tr {
                                    td.nowrap { (r.domain) }
                                    td.num { (r.total) }
                                    @for n in &r.buckets { td.num { (zero(*n)) } }
                                    td.wrap {
                                        a.mono href={ "/messages/" (r.oldest.queue_id) } { (r.oldest.queue_id) }
                                        " · " (age(r.oldest.age_s)) " old"
                                        @if let Some(reply) = &r.oldest.last_reply { br; span.mono { (reply) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        layout::page("Queue", Some("/queue"), &access, body)
    })
}

fn zero(n: u64) -> String {
    if n == 0 { "·".into() } else { n.to_string() }
}
