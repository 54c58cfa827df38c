//! `/domains/<domain>`, one per domain of ours: its SPF, DKIM, DMARC,
//! MTA-STS and TLS-RPT records as DNS serves them now (the configured
//! resolver, a short timeout, kept a minute: [`super::lookup`]), its DMARC
//! pass rate per day from our checks and from reports received, the
//! sources that send as it (with reverse names for the busiest) and what
//! `p=reject` would do to each, spoofing blocked, look-alike findings,
//! and its DKIM keys with their state and rotation dates.
//!
//! May import: `store`, `sign::store`, `config`, hickory, maud.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Serialize;

use super::layout::{self, badge, date, time};
use super::lookup::{self, Record};
use super::overview::{DmarcSeries, dmarc_chart, dmarc_series};
use super::{DAY, Params, blocking, failure, now, respond, wants_json};
use crate::http::Api;
use crate::http::auth::Access;
use crate::store::timeline::LookalikeHit;

const DAYS: u64 = 30;

#[derive(Serialize)]
struct Key {
    selector: String,
    algorithm: String,
    state: String,
    created: u64,
    activated: Option<u64>,
    retiring_since: Option<u64>,
    /// When its DNS record may go (retiring since + the overlap).
    retire_at: Option<u64>,
}

#[derive(Serialize)]
pub(super) struct Source {
    pub source_ip: String,
    pub messages: u64,
    pub spf_aligned: u64,
    pub dkim_aligned: u64,
    pub dmarc_pass: u64,
    /// Every message passed DMARC: `p=reject` would refuse none of them.
    pub verdict: &'static str,
    pub helo: String,
    /// The PTR name, looked up for the busiest rows only
    /// ([`lookup::PTR_ROWS`]).
    pub reverse_name: Option<String>,
}

/// A source as the aggregate reports received about the domain show it.
#[derive(Serialize)]
struct ReportedSource {
    source_ip: String,
    reverse_name: Option<String>,
    messages: u64,
    dkim_pass: u64,
    spf_pass: u64,
    dmarc_pass: u64,
    verdict: &'static str,
    /// The organisations whose reports counted it.
    reporters: Vec<String>,
}

#[derive(Serialize, Default)]
pub(super) struct Spoofing {
    pub messages: u64,
    pub dmarc_pass: u64,
    pub rejected: u64,
    pub quarantined: u64,
}

#[derive(Serialize)]
struct DomainPage {
    domain: String,
    dns: Vec<Record>,
    /// This domain's DMARC pass rate per day: ours and reported.
    dmarc: Vec<DmarcSeries>,
    sources: Vec<Source>,
    /// The sources other receivers reported mail as this domain from.
    reported_sources: Vec<ReportedSource>,
    spoofing: Spoofing,
    lookalikes: Vec<LookalikeHit>,
    dkim_keys: Vec<Key>,
    dkim_error: Option<String>,
}

pub async fn page(State(api): State<Arc<Api>>, Extension(access): Extension<Access>, Path(domain): Path<String>, q: Params) -> Response {
    let json = wants_json(&q);
    let domain = domain.trim_end_matches('.').to_lowercase();
    let Some(cfg) = api.config.domains.iter().find(|d| d.name.as_str().eq_ignore_ascii_case(&domain)) else {
        return failure(json, &access, StatusCode::NOT_FOUND, "not a domain of ours (see [[domain]] in the configuration)");
    };
    let (keys, dkim_error) = match crate::sign::store::list(&api.config.data_dir, cfg.name.as_str()) {
        Ok(k) => (k, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let overlap = api.config.dkim.rotation_overlap;
    let dkim_keys: Vec<Key> = keys
        .iter()
        .map(|k| Key {
            selector: k.selector.clone(),
            algorithm: k.algorithm.clone(),
            state: format!("{:?}", k.state).to_lowercase(),
            created: k.created,
            activated: k.activated,
            retiring_since: k.retiring_since,
            retire_at: k.retiring_since.map(|t| t + overlap),
        })
        .collect();
    let mut names = vec![
        ("SPF", domain.clone(), "v=spf1"),
        ("DMARC", format!("_dmarc.{domain}"), "v=DMARC1"),
        ("MTA-STS", format!("_mta-sts.{domain}"), "v=STSv1"),
        ("TLS-RPT", format!("_smtp._tls.{domain}"), "v=TLSRPTv1"),
    ];
    for k in keys.iter().filter(|k| !matches!(k.state, crate::sign::store::KeyState::Retired)) {
        names.push(("DKIM", format!("{}._domainkey.{domain}", k.selector), ""));
    }
    let now = now();
    let today = now - now % DAY;
    let from = today - (DAYS - 1) * DAY;
    let store = api.store.clone();
    let d = domain.clone();
    let read = blocking(move || {
        let (sources, spoofing) = sources_and_spoofing(&*store, &d, from, now + 1)?;
        let hits = store.lookalikes(&d, from, now + 1, 100)?;
        let dmarc = dmarc_series(&*store, std::slice::from_ref(&d), from, today)?;
        let reported = store.reported_sources(&d, from, now + 1, 200)?;
        Ok((sources, spoofing, hits, dmarc, reported))
    });
    // The records (looked up at once, each with its own timeout, kept a
    // minute) while the store is read.
    let (dns, read) = tokio::join!(lookup::records(api.resolver.clone(), names), read);
    let (mut sources, spoofing, lookalikes, dmarc, reported) = match read {
        Ok(r) => r,
        Err(e) => return failure(json, &access, StatusCode::SERVICE_UNAVAILABLE, &e),
    };
    let mut reported_sources: Vec<ReportedSource> = reported
        .into_iter()
        .map(|s| ReportedSource {
            verdict: if s.dmarc_pass == s.messages { "would-pass" } else { "would-fail" },
            source_ip: s.source_ip,
            reverse_name: None,
            messages: s.messages,
            dkim_pass: s.dkim_pass,
            spf_pass: s.spf_pass,
            dmarc_pass: s.dmarc_pass,
            reporters: s.reporters,
        })
        .collect();
    // The busiest half a page's worth of each table.
    let half = lookup::PTR_ROWS / 2;
    let ips: Vec<std::net::IpAddr> = sources
        .iter()
        .take(half)
        .map(|s| &s.source_ip)
        .chain(reported_sources.iter().take(half).map(|s| &s.source_ip))
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let names = lookup::reverse_names(api.resolver.clone(), &ips).await;
    let name_of = |ip: &str| ip.parse().ok().and_then(|ip| names.get(&ip).cloned());
    for s in &mut sources {
        s.reverse_name = name_of(&s.source_ip);
    }
    for s in &mut reported_sources {
        s.reverse_name = name_of(&s.source_ip);
    }
    let data = DomainPage { domain, dns: dns.to_vec(), dmarc, sources, reported_sources, spoofing, lookalikes, dkim_keys, dkim_error };
    respond(json, &data, |d| render(d, &access))
}

/// Sources sending as `domain` and the spoofing blocked, from the store's
/// hourly DMARC aggregates.
pub(super) fn sources_and_spoofing(
    store: &dyn crate::store::Store,
    domain: &str,
    from: u64,
    to: u64,
) -> crate::store::Result<(Vec<Source>, Spoofing)> {
    let sources = store
        .sources(domain, from, to, 200)?
        .into_iter()
        .map(|s| Source {
            source_ip: s.source_ip.to_string(),
            verdict: if s.dmarc_pass == s.messages { "would-pass" } else { "would-fail" },
            messages: s.messages,
            spf_aligned: s.spf_aligned,
            dkim_aligned: s.dkim_aligned,
            dmarc_pass: s.dmarc_pass,
            helo: s.helo,
            reverse_name: None,
        })
        .collect();
    let mut spoofing = Spoofing::default();
    for h in store.dmarc_hourly(Some(domain), from, to)? {
        spoofing.messages += h.messages;
        spoofing.dmarc_pass += h.dmarc_pass;
        spoofing.rejected += h.rejected;
        spoofing.quarantined += h.quarantined;
    }
    Ok((sources, spoofing))
}

fn render(d: &DomainPage, access: &Access) -> Markup {
    let body = html! {
        h1 { "Domain " (d.domain) }
        p { a #advice href={ "/domains/" (d.domain) "/advice" } { "SPF and DMARC advice from the traffic seen" } }
        h2 { "Published records (looked up now)" }
        div.panel {
            table #dns {
                thead { tr { th { "Kind" } th { "Name" } th { "Record" } } }
                tbody {
                    @for r in &d.dns {
                        tr {
                            td { (r.kind) }
                            td.mono.wrap { (r.name) }
                            td.wrap {
                                @for t in &r.records { pre.record { (t) } }
                                @if let Some(e) = &r.error { span.muted { (e) } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "DMARC pass rate, last 30 days" }
        (dmarc_chart(&d.dmarc))
        h2 { "Sending sources, last 30 days" }
        p.note { "Each source marked as it would fare under " code { "p=reject" } ": would-pass when every message from it passed DMARC. Reverse names are looked up for the " (lookup::PTR_ROWS / 2) " busiest." }
        @if d.sources.is_empty() {
            p.note { "No mail with this domain in From: recorded." }
        } @else {
            div.panel {
                table #sources {
                    thead { tr { th { "Source IP" } th { "Reverse name" } th { "HELO" } th.num { "Messages" } th.num { "SPF aligned" } th.num { "DKIM aligned" } th.num { "DMARC pass" } th { "Under p=reject" } } }
                    tbody {
                        @for s in &d.sources {
                            tr {
                                td.mono { a href={ "/messages?q=" (s.source_ip) } { (s.source_ip) } }
                                td.wrap { @if let Some(n) = &s.reverse_name { (n) } @else { span.muted { "–" } } }
                                td.wrap { (s.helo) }
                                td.num { (s.messages) }
                                td.num { (s.spf_aligned) }
                                td.num { (s.dkim_aligned) }
                                td.num { (s.dmarc_pass) }
                                td { (badge(s.verdict)) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Sources in reports received, last 30 days" }
        p.note { "What other receivers' DMARC aggregate reports say about mail as this domain, per source, summed over their reports." }
        @if d.reported_sources.is_empty() {
            p.note { "No aggregate reports about this domain received (" code { "mailgate reports import" } " or mail to its " code { "rua" } " address)." }
        } @else {
            div.panel {
                table #reported-sources {
                    thead { tr { th { "Source IP" } th { "Reverse name" } th.num { "Messages" } th.num { "DKIM pass" } th.num { "SPF pass" } th.num { "DMARC pass" } th { "Under p=reject" } th { "Reported by" } } }
                    tbody {
                        @for s in &d.reported_sources {
                            tr {
                                td.mono { (s.source_ip) }
                                td.wrap { @if let Some(n) = &s.reverse_name { (n) } @else { span.muted { "–" } } }
                                td.num { (s.messages) }
                                td.num { (s.dkim_pass) }
                                td.num { (s.spf_pass) }
                                td.num { (s.dmarc_pass) }
                                td { (badge(s.verdict)) }
                                td.wrap { (s.reporters.join(", ")) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Spoofing blocked, last 30 days" }
        div.cards #spoofing {
            div.card { div.label { "Messages as this domain" } div.value { (d.spoofing.messages) } }
            div.card { div.label { "Failed DMARC" } div.value { (d.spoofing.messages - d.spoofing.dmarc_pass.min(d.spoofing.messages)) } }
            div.card { div.label { "Rejected" } div.value #spoof-rejected { (d.spoofing.rejected) } }
            div.card { div.label { "Quarantined" } div.value { (d.spoofing.quarantined) } }
        }
        h2 { "Look-alike senders" }
        @if d.lookalikes.is_empty() {
            p.note { "No sender domain resembling this one seen in the last 30 days." }
        } @else {
            div.panel {
                table #lookalikes {
                    thead { tr { th { "Time (UTC)" } th { "Domain seen" } th { "Where" } th { "Rule" } th { "Resembles" } th { "Client" } th { "Message" } } }
                    tbody {
                        @for h in &d.lookalikes {
                            tr {
                                td { (time(h.time)) }
                                td.wrap { (h.domain) }
                                td { (h.identity) }
                                td { (badge(&h.rule)) }
                                td { (h.resembles) }
                                td.mono { (h.client_ip) }
                                td { a.mono href={ "/messages/" (h.event_id) } { (h.event_id) } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "DKIM keys" }
        @if let Some(e) = &d.dkim_error { p.error { (e) } }
        @if d.dkim_keys.is_empty() {
            p.note { "No DKIM keys for this domain (" code { "mailgate dkim" } " creates them)." }
        } @else {
            div.panel {
                table #dkim {
                    thead { tr { th { "Selector" } th { "Algorithm" } th { "State" } th { "Created" } th { "Active since" } th { "Retiring since" } th { "Record may go" } } }
                    tbody {
                        @for k in &d.dkim_keys {
                            tr {
                                td.mono { (k.selector) }
                                td { (k.algorithm) }
                                td { (badge(&k.state)) }
                                td { (date(k.created)) }
                                td { (k.activated.map(date).unwrap_or_default()) }
                                td { (k.retiring_since.map(date).unwrap_or_default()) }
                                td { (k.retire_at.map(date).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::page(&format!("Domain {}", d.domain), None, access, body)
}
