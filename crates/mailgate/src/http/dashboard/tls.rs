//! `/tls`: outbound TLS outcomes per destination domain over 30 days
//! (STARTTLS without a policy, MTA-STS, failures by RFC 8460 result type),
//! and what other receivers' TLS-RPT reports say about our domains.
//!
//! May import: `store`, maud.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde::Serialize;

use super::layout::{self, badge, percent, time};
use super::{DAY, Params, blocking, failure, now, respond, wants_json};
use crate::http::Api;
use crate::http::auth::Access;
use crate::store::{ReportKind, ReportQuery};

const DAYS: u64 = 30;
/// Received reports shown, newest first.
const REPORTS: usize = 50;

#[derive(Serialize, Default)]
struct Destination {
    domain: String,
    sessions: u64,
    successes: u64,
    /// Sessions by policy type (`sts`, `no-policy-found`, ...).
    policies: BTreeMap<String, u64>,
    /// Failed sessions by RFC 8460 result type.
    failures: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct ReceivedPolicy {
    policy_type: String,
    policy_domain: String,
    successes: u64,
    failures: u64,
    /// Failures by result type, with the receiving MX where given.
    details: Vec<String>,
}

#[derive(Serialize)]
struct Received {
    id: i64,
    org_name: String,
    policy_domain: String,
    begin: u64,
    end: u64,
    policies: Vec<ReceivedPolicy>,
}

#[derive(Serialize)]
struct TlsPage {
    outbound: Vec<Destination>,
    reports: Vec<Received>,
}

fn read(store: &dyn crate::store::Store, from: u64, to: u64) -> crate::store::Result<TlsPage> {
    let mut by_domain: BTreeMap<String, Destination> = BTreeMap::new();
    for c in store.tls_summary(from, to)? {
        let d = by_domain
            .entry(c.policy_domain.clone())
            .or_insert_with(|| Destination { domain: c.policy_domain.clone(), ..Default::default() });
        d.sessions += c.sessions;
        *d.policies.entry(c.policy_type.clone()).or_default() += c.sessions;
        if c.result == "success" {
            d.successes += c.sessions;
        } else {
            *d.failures.entry(c.result.clone()).or_default() += c.sessions;
        }
    }
    let mut outbound: Vec<Destination> = by_domain.into_values().collect();
    outbound.sort_by(|a, b| b.sessions.cmp(&a.sessions).then_with(|| a.domain.cmp(&b.domain)));
    let list = store.list_reports(&ReportQuery { kind: Some(ReportKind::Tlsrpt), limit: REPORTS, ..Default::default() })?;
    let mut reports = Vec::new();
    for s in list {
        let Some((_, r)) = store.get_report(s.id)? else { continue };
        let policies = r
            .tls
            .iter()
            .map(|p| ReceivedPolicy {
                policy_type: p.policy_type.clone(),
                policy_domain: p.policy_domain.clone(),
                successes: p.successes,
                failures: p.failures,
                details: p
                    .details
                    .iter()
                    .map(|f| {
                        let mx =
                            if f.receiving_mx_hostname.is_empty() { String::new() } else { format!(" at {}", f.receiving_mx_hostname) };
                        format!("{} × {}{mx}", f.count, f.result_type)
                    })
                    .collect(),
            })
            .collect();
        reports.push(Received { id: s.id, org_name: s.org_name, policy_domain: s.policy_domain, begin: s.begin, end: s.end, policies });
    }
    Ok(TlsPage { outbound, reports })
}

pub async fn page(State(api): State<Arc<Api>>, Extension(access): Extension<Access>, q: Params) -> Response {
    let json = wants_json(&q);
    let now = now();
    let from = now - now % DAY - (DAYS - 1) * DAY;
    let store = api.store.clone();
    let data = match blocking(move || read(&*store, from, now + 1)).await {
        Ok(d) => d,
        Err(e) => return failure(json, &access, StatusCode::SERVICE_UNAVAILABLE, &e),
    };
    respond(json, &data, |d| {
        let body = html! {
            h1 { "TLS" }
            h2 { "Outbound, per destination domain (last 30 days)" }
            @if d.outbound.is_empty() {
                p.note { "No outbound TLS sessions recorded." }
            } @else {
                div.panel {
                    table #outbound {
                        thead { tr { th { "Destination" } th.num { "Sessions" } th.num { "Success" } th { "Policy" } th { "Failures by type (RFC 8460)" } } }
                        tbody {
                            @for o in &d.outbound {
                                tr {
                                    td.wrap { (o.domain) }
                                    td.num { (o.sessions) }
                                    td.num { (percent(o.successes, o.sessions)) }
                                    td { @for (p, n) in &o.policies { (policy_name(p)) ": " (n) br; } }
                                    td { @for (t, n) in &o.failures { (badge(t)) " " (n) br; } }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "What others report about us (TLS-RPT)" }
            @if d.reports.is_empty() {
                p.note { "No TLS-RPT reports received." }
            } @else {
                div.panel {
                    table #tlsrpt {
                        thead { tr { th { "Reporter" } th { "Domain" } th { "Period (UTC)" } th { "Policy" } th.num { "Successes" } th.num { "Failures" } th { "Failure details" } } }
                        tbody {
                            @for r in &d.reports {
                                @for p in &r.policies {
                                    tr {
                                        td.wrap { (r.org_name) }
                                        td.wrap { (p.policy_domain) }
                                        td { (time(r.begin)) " – " (time(r.end)) }
                                        td { (policy_name(&p.policy_type)) }
                                        td.num { (p.successes) }
                                        td.num { (p.failures) }
                                        td.wrap { @for x in &p.details { (x) br; } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        layout::page("TLS", Some("/tls"), &access, body)
    })
}

fn policy_name(p: &str) -> &str {
    match p {
        "sts" => "MTA-STS",
        "no-policy-found" => "STARTTLS (no policy)",
        "require-tls" => "REQUIRETLS / require_tls",
        "tlsa" => "DANE",
        other => other,
    }
}
