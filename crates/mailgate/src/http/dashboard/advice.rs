//! `/domains/<domain>/advice`, one per domain of ours: what `mailgate
//! check` finds in its published records (looked up now), the strict SPF
//! record `mailgate spf suggest` proposes, with the evidence for each
//! source and the sources it would fail, and what `p=quarantine` and
//! `p=reject` would have done over 30 days (`mailgate dmarc whatif`),
//! with the staged plan. The same numbers as the CLI: both call the
//! advisor on the same store.
//!
//! May import: `store`, `config`, `advisor`, maud.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Serialize;

use super::layout::{self, badge};
use super::{Params, failure, respond, wants_json};
use crate::advisor::Finding;
use crate::advisor::check;
use crate::advisor::suggest::{self, Suggestion};
use crate::advisor::whatif::{self, Policy, WhatIf};
use crate::http::Api;
use crate::http::auth::Access;

const DAYS: u64 = 30;

#[derive(Serialize)]
struct AdvicePage {
    domain: String,
    days: u64,
    /// `mailgate check --json`'s document; null when the check could not run.
    check: serde_json::Value,
    #[serde(skip)]
    findings: Vec<Finding>,
    #[serde(skip)]
    check_error: Option<String>,
    spf: Suggestion,
    quarantine: WhatIf,
    reject: WhatIf,
}

pub async fn page(State(api): State<Arc<Api>>, Extension(access): Extension<Access>, Path(domain): Path<String>, q: Params) -> Response {
    let json = wants_json(&q);
    let domain = domain.trim_end_matches('.').to_lowercase();
    if !api.config.domains.iter().any(|d| d.name.as_str().eq_ignore_ascii_case(&domain)) {
        return failure(json, &access, StatusCode::NOT_FOUND, "not a domain of ours (see [[domain]] in the configuration)");
    }
    let Some(resolver) = api.resolver.as_ref() else {
        return failure(json, &access, StatusCode::SERVICE_UNAVAILABLE, "no DNS resolver configured");
    };
    // What was just recorded counts too.
    api.recorder.flush().await;
    let ev = match suggest::evidence(api.store.clone(), &domain, DAYS).await {
        Ok(ev) => ev,
        Err(e) => return failure(json, &access, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let spf = suggest::suggest(&api.config, resolver, &domain, DAYS, &ev).await;
    // The senders a policy hits are the same for both: only the verb differs.
    let quarantine = whatif::whatif(&api.config, resolver, &domain, Policy::Quarantine, DAYS, &ev).await;
    let reject = WhatIf { policy: Policy::Reject, ..quarantine.clone() };
    // As an operator would run it: private addresses are worth a warning.
    let (check, mut findings, check_error) = match check::report(&api.config, resolver, &domain, false).await {
        Ok(r) => (r.to_json(), r.findings, None),
        Err(e) => (serde_json::Value::Null, Vec::new(), Some(format!("{e:#}"))),
    };
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let data = AdvicePage { domain, days: DAYS, check, findings, check_error, spf, quarantine, reject };
    respond(json, &data, |d| render(d, &access))
}

fn render(d: &AdvicePage, access: &Access) -> Markup {
    let s = &d.spf;
    let body = html! {
        h1 { "Advice for " (d.domain) }
        p.note { "Learnt from the last " (d.days) " days of the report store: our own evaluations, the aggregate reports received, and the mail we relayed. "
            a href={ "/domains/" (d.domain) } { "Back to the domain" } }
        h2 { "Published records, checked now" }
        div.panel {
            @if let Some(e) = &d.check_error { p.error { "The check could not run: " (e) } }
            table #check-findings {
                thead { tr { th { "Area" } th { "Verdict" } th { "Code" } th { "Finding" } th { "Fix" } } }
                tbody {
                    @for f in &d.findings {
                        tr {
                            td { (f.check) }
                            td { (badge(f.severity.as_str())) }
                            td.mono { (f.code) }
                            td.wrap { (f.message) }
                            td.wrap { (f.fix.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
            p.note { "The same findings as " code { "mailgate check " (d.domain) } "; the finding codes are listed in the README." }
        }
        h2 { "Suggested SPF record" }
        div.panel {
            pre.record #spf-record { (s.record) }
            p { "DNS lookups: " span #spf-lookups { (s.lookups) } " of " (suggest::MAX_LOOKUPS) }
            @for c in &s.current { p.note { "Published now: " code { (c) } } }
            @if s.current.is_empty() { p.note { "No SPF record published now." } }
            @for w in &s.warnings { p.error { (w) } }
        }
        @if !s.includes.is_empty() {
            div.panel {
                table #spf-includes {
                    thead { tr { th { "Include" } th.num { "Lookups" } th.num { "Legitimate sources passed" } th { "Action" } } }
                    tbody {
                        @for i in &s.includes {
                            tr { td.mono { (i.include) } td.num { (i.lookups) } td.num { (i.covers) } td { (badge(i.action)) } }
                        }
                    }
                }
            }
        }
        h3 { "Legitimate sources it passes" }
        div.panel {
            table #spf-sources {
                thead { tr { th { "Source IP" } th.num { "Volume" } th { "DKIM aligned" } th { "PTR" } th { "Covered by" } th { "Evidence" } } }
                tbody {
                    @for x in &s.sources {
                        tr {
                            td.mono { (x.ip) }
                            td.num { (x.volume) }
                            td { (if x.dkim_aligned { "yes" } else { "no" }) }
                            td.wrap { (x.ptr.as_deref().unwrap_or("")) }
                            td.mono { (x.covered_by) }
                            td.wrap { (x.evidence) }
                        }
                    }
                }
            }
        }
        h3 { "Sources it would fail" }
        div.panel {
            table #spf-fail {
                thead { tr { th { "Source IP" } th.num { "Volume" } th { "Likely" } th { "PTR" } th { "Why" } } }
                tbody {
                    @for x in &s.would_fail {
                        tr {
                            td.mono { a href={ "/messages?q=" (x.ip) } { (x.ip) } }
                            td.num { (x.volume) }
                            td { (badge(x.likely)) }
                            td.wrap { (x.ptr.as_deref().unwrap_or("")) }
                            td.wrap { (x.reason) }
                        }
                    }
                }
            }
        }
        (whatif_section(&d.quarantine))
        (whatif_section(&d.reject))
        h2 { "Plan" }
        div.panel {
            table #plan {
                thead { tr { th { "Step" } th { "Record" } th { "Move on when" } th { "Now" } th { "Status" } } }
                tbody {
                    @for p in &d.quarantine.plan {
                        tr {
                            td { (p.step) ". p=" (p.policy) }
                            td.mono.wrap { (p.record) }
                            td.wrap { (p.criterion) }
                            td.wrap { (p.detail) }
                            td { (badge(p.status)) }
                        }
                    }
                }
            }
        }
    };
    layout::page(&format!("Advice for {}", d.domain), None, access, body)
}

fn whatif_section(w: &WhatIf) -> Markup {
    let id = w.policy.as_str();
    html! {
        h2 { "What if p=" (id) }
        div.cards id={ "whatif-" (id) } {
            div.card { div.label { "Messages as the domain" } div.value { (w.messages) } }
            div.card { div.label { "Would be hit" } div.value.failing { (w.failing) } }
            div.card { div.label { "Legitimate" } div.value.legitimate { (w.legitimate_failing) } }
            div.card { div.label { "Unauthenticated" } div.value.unauthenticated { (w.unauthenticated_failing) } }
        }
        div.panel {
            table id={ "whatif-" (id) "-senders" } {
                thead { tr { th { "Source IP" } th.num { "Failing" } th.num { "All" } th { "Class" } th { "PTR" } th { "Why" } } }
                tbody {
                    @for x in &w.senders {
                        tr {
                            td.mono { a href={ "/messages?q=" (x.ip) } { (x.ip) } }
                            td.num { (x.volume) }
                            td.num { (x.total) }
                            td { (badge(x.class)) }
                            td.wrap { (x.ptr.as_deref().unwrap_or("")) }
                            td.wrap { (x.reason) }
                        }
                    }
                }
            }
        }
    }
}
