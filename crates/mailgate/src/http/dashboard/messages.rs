//! `/messages?q=`: message search (queue or event id, Message-ID, sender,
//! recipient, client IP, time range, the node that took it), and `/messages/<id>`: one message's
//! timeline (connection, checks, action, spooling, each delivery attempt
//! per recipient, notices) with its live queue state, and Retry and
//! Delete buttons that go through the scheduler, like the API's.
//!
//! May import: `store`, `spool`, `scheduler` (its handle), maud.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use mailgate_core::QueueId;
use maud::{Markup, html};
use serde::Serialize;
use serde_json::Value;

use super::layout::{self, age, badge, time};
use super::{Params, blocking, failure, now, respond, wants_json};
use crate::http::Api;
use crate::http::auth::Access;
use crate::http::session::{CsrfForm, csrf_ok, csrf_refused};
use crate::store::timeline::{AttemptRecord, DsnRecord, MessageRecord};
use crate::store::{MessageQuery, MessageSummary, Timeline, TimelineEvent};

const PAGE: usize = 100;

#[derive(Serialize)]
struct Search {
    q: String,
    from: String,
    to: String,
    /// `[cluster] node_id` of the node that took the message; empty: any.
    node: String,
    messages: Vec<MessageSummary>,
}

/// Unix seconds of `2026-12-06`, `2026-12-06T11:30` or `2026-12-06 11:30:05` (UTC).
fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, clock) = match s.split_once(['T', ' ']) {
        Some((d, c)) => (d, c),
        None => (s, ""),
    };
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let mut c = clock.split(':').filter(|p| !p.is_empty()).map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (c.next().flatten().unwrap_or(0), c.next().flatten().unwrap_or(0), c.next().flatten().unwrap_or(0));
    // Howard Hinnant's days-from-civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days).ok().map(|d| d * 86_400 + hh.min(23) * 3600 + mm.min(59) * 60 + ss.min(59))
}

pub async fn search(State(api): State<Arc<Api>>, Extension(access): Extension<Access>, q: Params) -> Response {
    let json = wants_json(&q);
    let get = |k: &str| q.get(k).map(|s| s.trim().to_string()).unwrap_or_default();
    let (text, from_s, to_s, node) = (get("q"), get("from"), get("to"), get("node"));
    let from = parse_time(&from_s).unwrap_or(0);
    // A date alone as the end means the whole of that day.
    let to = match parse_time(&to_s) {
        Some(t) if to_s.len() <= 10 => t + super::DAY,
        Some(t) => t,
        None => 0,
    };
    let query = MessageQuery { text: text.clone(), from, to, limit: PAGE, node: node.clone() };
    let store = api.store.clone();
    let messages = match blocking(move || store.find_messages(&query)).await {
        Ok(m) => m,
        Err(e) => return failure(json, &access, StatusCode::SERVICE_UNAVAILABLE, &e),
    };
    let data = Search { q: text, from: from_s, to: to_s, node, messages };
    respond(json, &data, |d| {
        let body = html! {
            h1 { "Messages" }
            form.search method="get" action="/messages" {
                label { "Queue id, Message-ID, sender, recipient or client IP"
                    input type="search" name="q" value=(d.q) placeholder="e.g. alice@example.com"; }
                label { "From (UTC)" input type="text" name="from" value=(d.from) placeholder="2026-12-01"; }
                label { "To (UTC)" input type="text" name="to" value=(d.to) placeholder="2026-12-06 18:00"; }
                label { "Node" input type="text" name="node" value=(d.node) placeholder="any"; }
                button type="submit" { "Search" }
            }
            @if d.messages.is_empty() {
                p.note #no-results { "No messages found." }
            } @else {
                p.note { (d.messages.len()) @if d.messages.len() == PAGE { "+" } " messages, newest first." }
                div.panel {
                    table #results {
                        thead { tr { th { "Time (UTC)" } th { "Outcome" } th { "Sender" } th { "Recipients" } th { "Subject" } th { "Client" } th { "Id" } } }
                        tbody {
                            @for m in &d.messages {
                                tr {
                                    td { (time(m.time)) }
                                    td { (badge(&m.action)) }
                                    td.wrap { (m.sender) @if !m.from.is_empty() { br; span.muted { "From: " (m.from) } } }
                                    td.wrap { (m.recipients.join(", ")) }
                                    td.wrap { (m.subject) }
                                    td.mono { (m.client_ip) }
                                    td { a.mono href={ "/messages/" (m.event_id) } { (m.event_id) } }
                                }
                            }
                        }
                    }
                }
            }
        };
        layout::page("Messages", Some("/messages"), &access, body)
    })
}

#[derive(Serialize)]
struct Show {
    id: String,
    /// The message as the inbound side recorded it, and what happened since.
    timeline: Option<Timeline>,
    /// The live queue entry (as `GET /api/v1/queue/<id>`), when queued.
    queue: Option<Value>,
}

/// A queue id or a refused message's event id (`r-` and 16 hex digits).
fn valid_id(id: &str) -> bool {
    QueueId::parse(id).is_some() || id.strip_prefix("r-").is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub async fn show(State(api): State<Arc<Api>>, Extension(access): Extension<Access>, Path(id): Path<String>, q: Params) -> Response {
    let json = wants_json(&q);
    if !valid_id(&id) {
        return failure(json, &access, StatusCode::NOT_FOUND, "no such message: expected a queue id or an event id (r-...)");
    }
    let store = api.store.clone();
    let key = id.clone();
    let timeline = match blocking(move || store.timeline(&key)).await {
        Ok(t) => t,
        Err(e) => return failure(json, &access, StatusCode::SERVICE_UNAVAILABLE, &e),
    };
    let queue_id = timeline.as_ref().and_then(|t| t.message.as_ref()).and_then(|m| m.queue_id.clone()).unwrap_or_else(|| id.clone());
    let queue = QueueId::parse(&queue_id).and_then(|qid| api.spool.get(&qid)).map(|qd| crate::http::message_json(&qd, now()));
    if timeline.is_none() && queue.is_none() {
        return failure(json, &access, StatusCode::NOT_FOUND, "no such message (it may be older than the retention period)");
    }
    let done = q.get("done").cloned();
    let data = Show { id, timeline, queue };
    respond(json, &data, |d| render(d, &access, done.as_deref()))
}

fn render(d: &Show, access: &Access, done: Option<&str>) -> Markup {
    let message = d.timeline.as_ref().and_then(|t| t.message.as_ref());
    let events: &[TimelineEvent] = d.timeline.as_ref().map(|t| t.events.as_slice()).unwrap_or(&[]);
    let title = message.map(|m| if m.subject.is_empty() { "(no subject)".to_string() } else { m.subject.clone() });
    let body = html! {
        h1 { "Message " span.mono { (d.id) } }
        @match done {
            Some("retry") => { p.flash role="status" { "A new delivery attempt was scheduled." } }
            Some("deleted") => { p.flash role="status" { "The message was deleted from the queue." } }
            _ => {}
        }
        @if let Some(m) = message {
            dl.kv #summary {
                dt { "Subject" } dd { (title.as_deref().unwrap_or("")) }
                dt { "From" } dd { (m.from) }
                dt { "Sender" } dd { (m.sender) }
                dt { "Recipients" } dd { (m.recipients.join(", ")) }
                @if !m.refused_recipients.is_empty() {
                    dt { "Refused recipients" } dd { (m.refused_recipients.join(", ")) }
                }
                dt { "Message-ID" } dd.mono { (m.message_id) }
                dt { "Outcome" } dd { (badge(&m.action)) }
            }
        }
        @if let Some(qv) = &d.queue {
            h2 { "In the queue" }
            (queue_state(qv, access, &d.id))
        }
        h2 { "Timeline" }
        ol.timeline #timeline {
            @if let Some(m) = message { (inbound_entries(m)) }
            @for e in events {
                @match e {
                    TimelineEvent::Attempt(a) => { (attempt_entry(a)) }
                    TimelineEvent::Dsn(n) => { (dsn_entry(n)) }
                    TimelineEvent::Message(_) => {}
                }
            }
            @if message.is_none() && events.is_empty() {
                li { span.muted { "Nothing recorded for this message (recorded before timelines existed, or pruned)." } }
            }
        }
    };
    layout::page("Message", Some("/messages"), access, body)
}

fn inbound_entries(m: &MessageRecord) -> Markup {
    // A transaction refused before DATA has only its MAIL or RCPT rows.
    let before_data = !m.checks.is_empty() && m.checks.iter().all(|c| c.name == "mail" || c.name == "rcpt");
    let (tone, what) = match m.action.as_str() {
        "accepted" => ("ok", "Accepted"),
        "quarantined" => ("warn", "Quarantined"),
        _ if before_data && m.checks.iter().any(|c| c.name == "mail") => ("bad", "Refused at MAIL FROM"),
        _ if before_data => ("bad", "Refused at RCPT TO"),
        _ => ("bad", "Refused"),
    };
    html! {
        li {
            div.when { (time(m.time)) }
            div.what { "Connection" }
            dl.kv {
                dt { "Client" } dd.mono { (m.client_ip) }
                dt { "HELO" } dd { (m.helo) }
                dt { "TLS" } dd { (m.tls.as_deref().unwrap_or("none")) }
                dt { "AUTH" } dd { (m.auth_user.as_deref().unwrap_or("none")) }
                dt { "Listener" } dd { (m.role) @if m.inbound { " (inbound)" } @else { " (submitted or relayed)" } }
            }
        }
        @if !m.checks.is_empty() {
            li {
                div.what { "Checks" }
                table.checks {
                    tbody {
                        @for c in &m.checks {
                            tr { td { (c.name) } td { (badge(&c.result)) } td.wrap { (c.detail) } }
                        }
                    }
                }
            }
        }
        li class=(tone) {
            div.what { (what) }
            div.mono.reason { (m.reply) }
        }
        @if let Some(qid) = &m.queue_id {
            li {
                div.what { "Spooled" }
                dl.kv {
                    dt { "Queue id" } dd.mono { (qid) }
                    dt { "Message-ID" } dd.mono { (m.message_id) }
                    dt { "Sender" } dd { (m.sender) }
                    dt { "Recipients" } dd { (m.recipients.join(", ")) }
                    dt { "Subject" } dd { (m.subject) }
                    dt { "Size" } dd { (m.size) " octets" }
                }
            }
        }
    }
}

fn attempt_entry(a: &AttemptRecord) -> Markup {
    let worst = if a.recipients.iter().any(|r| r.outcome == "bounced") {
        "bad"
    } else if a.recipients.iter().any(|r| r.outcome == "deferred") {
        "warn"
    } else {
        "ok"
    };
    html! {
        li class=(worst) {
            div.when { (time(a.time)) }
            div.what { "Delivery attempt" }
            dl.kv {
                dt { "MX" } dd.mono { @if a.mx_host.is_empty() { "no host answered" } @else { (a.mx_host) } }
                dt { "TLS" } dd { @if a.tls { "yes" } @else { "no" } }
            }
            table.attempt {
                thead { tr { th { "Recipient" } th { "Outcome" } th { "Reply" } } }
                tbody {
                    @for r in &a.recipients {
                        tr { td.wrap { (r.address) } td { (badge(&r.outcome)) } td.wrap.mono { (r.reply) } }
                    }
                }
            }
        }
    }
}

fn dsn_entry(n: &DsnRecord) -> Markup {
    html! {
        li {
            div.when { (time(n.time)) }
            div.what { "Notice sent to the sender (" (n.notice) ")" }
            div { "As " a.mono href={ "/messages/" (n.dsn_id) } { (n.dsn_id) } " about " (n.recipients.join(", ")) }
        }
    }
}

fn queue_state(q: &Value, access: &Access, id: &str) -> Markup {
    let now = now();
    let csrf = match access {
        Access::Session { csrf, .. } => csrf.as_str(),
        _ => "",
    };
    let rcpts = q["recipients"].as_array().cloned().unwrap_or_default();
    let age_s = q["age_s"].as_u64().unwrap_or(0);
    html! {
        p { "Queued for " (age(age_s)) ", " (q["size"].as_u64().unwrap_or(0)) " octets." }
        div.actions {
            form method="post" action={ "/messages/" (id) "/retry" } {
                input type="hidden" name="csrf" value=(csrf);
                button #retry type="submit" { "Retry now" }
            }
            form method="post" action={ "/messages/" (id) "/delete" } {
                input type="hidden" name="csrf" value=(csrf);
                button.danger #delete type="submit" { "Delete" }
            }
        }
        div.panel {
            table #recipients {
                thead { tr { th { "Recipient" } th { "Status" } th.num { "Attempts" } th { "Next attempt" } th { "Last reply" } } }
                tbody {
                    @for r in &rcpts {
                        tr {
                            td.wrap { (r["address"].as_str().unwrap_or("")) }
                            td { (badge(r["status"].as_str().unwrap_or(""))) }
                            td.num { (r["attempts"].as_u64().unwrap_or(0)) }
                            td { @if let Some(s) = r["next_attempt_s"].as_u64() { "in " (age(s)) " (" (time(now + s)) ")" } }
                            td.wrap.mono.last-reply { (r["last_reply"].as_str().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

async fn change(api: Arc<Api>, access: Access, id: String, form: Option<Form<CsrfForm>>, delete: bool) -> Response {
    let token = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !csrf_ok(&access, &token) {
        return csrf_refused();
    }
    let Some(qid) = QueueId::parse(&id) else {
        return failure(false, &access, StatusCode::NOT_FOUND, "no such message: expected a queue id");
    };
    let found = if delete {
        match api.scheduler.delete(qid).await {
            Ok(found) => found,
            Err(e) => return failure(false, &access, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    } else {
        api.scheduler.retry(qid).await
    };
    if !found {
        return failure(false, &access, StatusCode::NOT_FOUND, "the message is no longer in the queue");
    }
    tracing::info!(queue_id = %id, action = if delete { "delete" } else { "retry" }, "dashboard: queue change");
    Redirect::to(&format!("/messages/{id}?done={}", if delete { "deleted" } else { "retry" })).into_response()
}

pub async fn retry(
    State(api): State<Arc<Api>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    change(api, access, id, form.ok(), false).await
}

pub async fn delete(
    State(api): State<Arc<Api>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    change(api, access, id, form.ok(), true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_utc() {
        assert_eq!(parse_time("1970-01-01"), Some(0));
        assert_eq!(parse_time("2026-12-06"), Some(1_796_515_200));
        assert_eq!(parse_time("2026-12-06T11:30"), Some(1_796_515_200 + 11 * 3600 + 1800));
        assert_eq!(parse_time("2026-12-06 11:30:05"), Some(1_796_515_200 + 11 * 3600 + 1805));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("2026-13-01"), None);
    }

    #[test]
    fn ids_are_queue_ids_or_event_ids() {
        assert!(valid_id("r-0123456789abcdef"));
        assert!(!valid_id("r-0123"));
        assert!(!valid_id("../etc"));
    }
}
