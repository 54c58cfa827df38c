//! `/`: the overview. Messages received, accepted, quarantined and
//! refused today and over 30 days (the store's hourly counters), the
//! DMARC pass rate of each of our domains per day, from our own
//! evaluations and from the aggregate reports other receivers sent us,
//! the queue size, and the delivery and TLS success rates. With several
//! nodes on one store (`[cluster] store`), each node's figures for today
//! and their totals (read from the raw rows of the day, by node).
//!
//! May import: `store`, `spool`, `config`, maud.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use maud::html;
use serde::Serialize;

use super::chart::{self, Series, Stack};
use super::layout;
use super::{DAY, Params, blocking, failure, now, respond, wants_json};
use crate::http::Api;
use crate::http::auth::Access;
use crate::store::{NodeFigures, TrafficHour};

const DAYS: u64 = 30;

#[derive(Serialize, Default)]
struct Counts {
    received: u64,
    received_inbound: u64,
    received_submitted: u64,
    accepted: u64,
    quarantined: u64,
    refused: u64,
    delivered: u64,
    deferred: u64,
    bounced: u64,
}

impl Counts {
    fn of(hours: &[&TrafficHour]) -> Counts {
        let mut t = TrafficHour::default();
        for h in hours {
            t.add(h);
        }
        Counts {
            received: t.received_inbound + t.received_submitted,
            received_inbound: t.received_inbound,
            received_submitted: t.received_submitted,
            accepted: t.accepted,
            quarantined: t.quarantined,
            refused: t.refused,
            delivered: t.delivered,
            deferred: t.deferred,
            bounced: t.bounced,
        }
    }
}

#[derive(Serialize)]
struct Day {
    date: String,
    #[serde(flatten)]
    counts: Counts,
}

#[derive(Serialize)]
pub(super) struct DmarcDay {
    pub date: String,
    pub messages: u64,
    pub dmarc_pass: u64,
    /// Percent; `None` on a day without mail.
    pub pass_rate: Option<f64>,
}

/// A day of the DMARC aggregate reports others sent about one of our domains.
#[derive(Serialize)]
pub(super) struct ReportedDay {
    pub date: String,
    pub reports: u64,
    pub messages: u64,
    pub dmarc_pass: u64,
    /// Percent; `None` on a day without reports.
    pub pass_rate: Option<f64>,
}

#[derive(Serialize)]
pub(super) struct DmarcSeries {
    pub domain: String,
    /// From our own evaluations of mail we received.
    pub days: Vec<DmarcDay>,
    /// From the aggregate reports other receivers sent us about mail as
    /// this domain (a report counts on the day of its period's middle).
    pub reported: Vec<ReportedDay>,
}

impl DmarcSeries {
    /// Totals over the days: (messages, passes) ours, then (reports,
    /// messages, passes) reported.
    pub fn totals(&self) -> ((u64, u64), (u64, u64, u64)) {
        let ours = self.days.iter().fold((0, 0), |a, d| (a.0 + d.messages, a.1 + d.dmarc_pass));
        let theirs = self.reported.iter().fold((0, 0, 0), |a, d| (a.0 + d.reports, a.1 + d.messages, a.2 + d.dmarc_pass));
        (ours, theirs)
    }
}

#[derive(Serialize)]
struct Overview {
    today: Counts,
    last_30_days: Counts,
    queue_messages: usize,
    /// Delivered recipients over delivery outcomes, 30 days (percent).
    delivery_success_rate: Option<f64>,
    /// Outbound TLS sessions that succeeded, 30 days (percent).
    tls_success_rate: Option<f64>,
    tls_sessions: u64,
    days: Vec<Day>,
    dmarc: Vec<DmarcSeries>,
    nodes: Nodes,
}

/// Each node's figures today (UTC) and their sum.
#[derive(Serialize)]
struct Nodes {
    /// The day's first second (Unix).
    since: u64,
    /// `[cluster] node_id` of the node answering.
    this_node: String,
    nodes: Vec<NodeFigures>,
    total: NodeFigures,
}

fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 * 100.0 / whole as f64)
}

pub async fn page(State(api): State<Arc<Api>>, Extension(access): Extension<Access>, q: Params) -> Response {
    let json = wants_json(&q);
    let now = now();
    let today = now - now % DAY;
    let from = today - (DAYS - 1) * DAY;
    let store = api.store.clone();
    let domains: Vec<String> = api.config.domains.iter().map(|d| d.name.as_str().to_string()).collect();
    let read = blocking(move || {
        let traffic = store.traffic(from, now + 1)?;
        let (tls_ok, tls_all) = tls_counts(&*store, from, now + 1)?;
        let dmarc = dmarc_series(&*store, &domains, from, today)?;
        let nodes = store.node_figures(today, now + 1)?;
        Ok((traffic, tls_ok, tls_all, dmarc, nodes))
    })
    .await;
    let (traffic, tls_ok, tls_all, dmarc, nodes) = match read {
        Ok(r) => r,
        Err(e) => return failure(json, &access, axum::http::StatusCode::SERVICE_UNAVAILABLE, &e),
    };
    let days: Vec<Day> = (0..DAYS)
        .map(|i| {
            let start = from + i * DAY;
            let hours: Vec<&TrafficHour> = traffic.iter().filter(|h| h.hour >= start && h.hour < start + DAY).collect();
            Day { date: layout::date(start), counts: Counts::of(&hours) }
        })
        .collect();
    let all: Vec<&TrafficHour> = traffic.iter().collect();
    let last_30_days = Counts::of(&all);
    let outcomes = last_30_days.delivered + last_30_days.deferred + last_30_days.bounced;
    let data = Overview {
        today: Counts::of(&traffic.iter().filter(|h| h.hour >= today).collect::<Vec<_>>()),
        delivery_success_rate: rate(last_30_days.delivered, outcomes),
        last_30_days,
        queue_messages: api.spool.len(),
        tls_success_rate: rate(tls_ok, tls_all),
        tls_sessions: tls_all,
        days,
        dmarc,
        nodes: Nodes {
            since: today,
            this_node: api.config.cluster.node_id.clone(),
            total: nodes.iter().fold(NodeFigures { node: "total".into(), ..Default::default() }, |mut t, n| {
                t.add(n);
                t
            }),
            nodes,
        },
    };
    let cluster = api.config.cluster.store.is_some();
    respond(json, &data, |d| render(d, cluster, &access))
}

/// Successful and all outbound TLS sessions in `[from, to)`.
fn tls_counts(store: &dyn crate::store::Store, from: u64, to: u64) -> crate::store::Result<(u64, u64)> {
    let (mut ok, mut all) = (0, 0);
    for c in store.tls_summary(from, to)? {
        all += c.sessions;
        if c.result == "success" {
            ok += c.sessions;
        }
    }
    Ok((ok, all))
}

/// Each of our domains' DMARC pass rate per day over `DAYS` days from
/// `from`, from the store's hourly aggregates of our own evaluations and
/// from the aggregate reports received about it.
pub(super) fn dmarc_series(
    store: &dyn crate::store::Store,
    domains: &[String],
    from: u64,
    today: u64,
) -> crate::store::Result<Vec<DmarcSeries>> {
    let mut out = Vec::with_capacity(domains.len());
    for domain in domains {
        let hours = store.dmarc_hourly(Some(domain), from, today + DAY)?;
        let days = (0..DAYS)
            .map(|i| {
                let start = from + i * DAY;
                let (mut messages, mut pass) = (0, 0);
                for h in hours.iter().filter(|h| h.hour >= start && h.hour < start + DAY) {
                    messages += h.messages;
                    pass += h.dmarc_pass;
                }
                DmarcDay { date: layout::date(start), messages, dmarc_pass: pass, pass_rate: rate(pass, messages) }
            })
            .collect();
        let got = store.reported_days(domain, from, today + DAY)?;
        let reported = (0..DAYS)
            .map(|i| {
                let start = from + i * DAY;
                let d = got.iter().find(|d| d.day == start);
                let (reports, messages, pass) = d.map(|d| (d.reports, d.messages, d.dmarc_pass)).unwrap_or_default();
                ReportedDay { date: layout::date(start), reports, messages, dmarc_pass: pass, pass_rate: rate(pass, messages) }
            })
            .collect();
        out.push(DmarcSeries { domain: domain.clone(), days, reported });
    }
    Ok(out)
}

fn render(d: &Overview, cluster: bool, access: &Access) -> maud::Markup {
    let labels: Vec<String> = d.days.iter().map(|day| day.date[5..].to_string()).collect();
    let stacks = [
        Stack { name: "accepted", color: "#1b7f3b", values: d.days.iter().map(|x| x.counts.accepted - x.counts.quarantined).collect() },
        Stack { name: "quarantined", color: "#a86400", values: d.days.iter().map(|x| x.counts.quarantined).collect() },
        Stack { name: "refused", color: "#b3261e", values: d.days.iter().map(|x| x.counts.refused).collect() },
    ];
    let body = html! {
        h1 { "Overview" }
        h2 { "Today (UTC)" }
        div.cards #today {
            (card("Received", d.today.received, &format!("{} inbound · {} submitted", d.today.received_inbound, d.today.received_submitted)))
            (card("Accepted", d.today.accepted, "quarantined included"))
            (card("Quarantined", d.today.quarantined, ""))
            (card("Refused", d.today.refused, ""))
            div.card { div.label { "Queue" } div.value #queue { (d.queue_messages) } div.sub { a href="/queue" { "messages waiting" } } }
        }
        h2 { "Last 30 days" }
        div.cards #month {
            (card("Received", d.last_30_days.received, &format!("{} inbound · {} submitted", d.last_30_days.received_inbound, d.last_30_days.received_submitted)))
            (card("Accepted", d.last_30_days.accepted, "quarantined included"))
            (card("Quarantined", d.last_30_days.quarantined, ""))
            (card("Refused", d.last_30_days.refused, ""))
            div.card {
                div.label { "Delivery success" }
                div.value #delivery-rate { (d.delivery_success_rate.map(|r| format!("{r:.1} %")).unwrap_or_else(|| "–".into())) }
                div.sub { (d.last_30_days.delivered) " delivered · " (d.last_30_days.deferred) " deferred · " (d.last_30_days.bounced) " bounced" }
            }
            div.card {
                div.label { "TLS success" }
                div.value #tls-rate { (d.tls_success_rate.map(|r| format!("{r:.1} %")).unwrap_or_else(|| "–".into())) }
                div.sub { (d.tls_sessions) " outbound sessions" }
            }
        }
        @if cluster || d.nodes.nodes.len() > 1 {
            h2 { "Nodes today (UTC)" }
            (nodes_table(&d.nodes))
        }
        h2 { "Messages per day" }
        (chart::stacked_bars("Messages received per day, by outcome", &labels, &stacks))
        h2 { "DMARC pass rate per day" }
        (dmarc_chart(&d.dmarc))
        @if !d.dmarc.is_empty() {
            p.note { "Domains: " @for (i, s) in d.dmarc.iter().enumerate() { @if i > 0 { ", " } a href={ "/domains/" (s.domain) } { (s.domain) } } }
        }
    };
    layout::page("Overview", Some("/"), access, body)
}

/// The pass-rate chart of `dmarc` (ours solid, reported dashed, a
/// domain's two in one colour) and a table of the 30 days' totals.
pub(super) fn dmarc_chart(dmarc: &[DmarcSeries]) -> maud::Markup {
    let labels: Vec<String> = dmarc.first().map(|s| s.days.iter().map(|x| x.date[5..].to_string()).collect()).unwrap_or_default();
    let mut series = Vec::new();
    for (k, s) in dmarc.iter().enumerate() {
        series.push(Series {
            name: format!("{} (our checks)", s.domain),
            points: s.days.iter().map(|x| x.pass_rate).collect(),
            dashed: false,
            color: k,
        });
        series.push(Series {
            name: format!("{} (reports received)", s.domain),
            points: s.reported.iter().map(|x| x.pass_rate).collect(),
            dashed: true,
            color: k,
        });
    }
    html! {
        @if series.iter().all(|s| s.points.iter().all(Option::is_none)) {
            p.note { "No DMARC evaluations of our domains and no aggregate reports about them in the last 30 days." }
        } @else {
            (chart::percent_lines("DMARC pass rate per day and domain: our checks (solid) and reports received (dashed)", &labels, &series))
            div.panel {
                table #dmarc-totals {
                    thead { tr {
                        th { "Domain, last 30 days" } th.num { "Our checks: messages" } th.num { "DMARC pass" }
                        th.num { "Reports received" } th.num { "Messages reported" } th.num { "DMARC pass" }
                    } }
                    tbody {
                        @for s in dmarc {
                            @let ((m, p), (r, rm, rp)) = s.totals();
                            tr {
                                td { (s.domain) }
                                td.num { (m) } td.num { (layout::percent(p, m)) }
                                td.num { (r) } td.num { (rm) } td.num { (layout::percent(rp, rm)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Each node's figures today and the totals; the answering node marked.
fn nodes_table(n: &Nodes) -> maud::Markup {
    let row = |f: &NodeFigures| {
        html! {
            td.num { (f.received) } td.num { (f.accepted) } td.num { (f.quarantined) } td.num { (f.refused) }
            td.num { (f.evaluated) } td.num { (f.delivered) } td.num { (f.deferred) } td.num { (f.bounced) }
        }
    };
    html! {
        div.panel {
            table #nodes {
                thead { tr {
                    th { "Node" } th.num { "Received" } th.num { "Accepted" } th.num { "Quarantined" } th.num { "Refused" }
                    th.num { "DMARC evaluated" } th.num { "Delivered" } th.num { "Deferred" } th.num { "Bounced" }
                } }
                tbody {
                    @for f in &n.nodes {
                        tr data-node=(f.node) {
                            td {
                                @if f.node.is_empty() { "(unnamed)" } @else {
                                    a href={ "/messages?node=" (f.node) "&from=" (layout::date(n.since)) } { (f.node) }
                                }
                                @if f.node == n.this_node { " (this node)" }
                            }
                            (row(f))
                        }
                    }
                }
                tfoot { tr #nodes-total { th { "Total" } (row(&n.total)) } }
            }
            @if n.nodes.is_empty() { p.note { "No traffic recorded today." } }
            p.note { "Delivered, deferred and bounced count recipients by the reply of their delivery attempt." }
        }
    }
}

fn card(label: &str, value: u64, sub: &str) -> maud::Markup {
    html! { div.card { div.label { (label) } div.value { (value) } @if !sub.is_empty() { div.sub { (sub) } } } }
}
