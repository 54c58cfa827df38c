//! A write batch's hourly aggregates, summed in memory so that a batch
//! upserts each group once: the rows of `eval_hourly`, `domain_hourly`
//! and `tls_hourly`, and the interning maps that give repeated JSON (DKIM
//! sets, policies) its side-table id. The SQLite and the PostgreSQL
//! writers share these; only their SQL differs.
//!
//! May import: the rest of `store`.

use std::collections::HashMap;

use super::{Evaluation, TlsSession};

/// Seconds per aggregate bucket.
pub(super) const HOUR: u64 = 3600;

/// The writer's interning maps (text → side-table id).
#[derive(Default)]
pub(super) struct Interning {
    pub dkim: HashMap<String, i64>,
    pub policies: HashMap<String, i64>,
    pub tls_policies: HashMap<String, i64>,
}

/// One `eval_hourly` group.
#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct EvalKey<'a> {
    // Field order is the sort order: a fixed order of upserts, so two
    // nodes' batches take the rows' locks alike and cannot deadlock.
    pub header_from: &'a str,
    pub hour: u64,
    pub source_ip: String,
    pub envelope_from: &'a str,
    pub disposition: &'a str,
    pub spf_domain: &'a str,
    pub spf_scope: &'a str,
    pub spf_result: &'a str,
    pub dkim: i64,
    pub override_reason: &'a str,
    pub policy: i64,
    pub spf_aligned: bool,
    pub dkim_aligned: bool,
    pub dmarc: &'a str,
    pub lookalike: bool,
}

pub(super) struct EvalSum<'a> {
    pub helo: &'a str,
    pub count: u64,
    pub first: u64,
    pub last: u64,
}

/// One `domain_hourly` group: hour, header-from domain, policy id.
pub(super) type DomainKey<'a> = (u64, &'a str, i64);

/// One `domain_hourly` row's sums.
#[derive(Default)]
pub(super) struct DomainSum {
    pub messages: u64,
    pub dmarc_pass: u64,
    pub spf_aligned: u64,
    pub dkim_aligned: u64,
    pub rejected: u64,
    pub quarantined: u64,
    pub lookalike: u64,
    pub first: u64,
    pub last: u64,
}

/// One `tls_hourly` group.
#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct TlsKey<'a> {
    pub hour: u64,
    pub policy_domain: &'a str,
    pub mx_host: &'a str,
    pub policy_type: &'a str,
    pub result: &'a str,
    pub policy: i64,
}

/// The aggregates of one batch.
#[derive(Default)]
pub(super) struct Aggregates<'a> {
    hourly: HashMap<EvalKey<'a>, EvalSum<'a>>,
    by_domain: HashMap<DomainKey<'a>, DomainSum>,
    tls_hourly: HashMap<TlsKey<'a>, u64>,
}

pub(super) fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The interning key of an evaluation's DKIM results: the sorted set, so
/// the same signatures in another order share one id.
pub(super) fn dkim_set(v: &Evaluation) -> String {
    if v.dkim.is_empty() {
        return "[]".into();
    }
    let mut set = v.dkim.clone();
    set.sort();
    json(&set)
}

/// The `lookalike` column: the findings as JSON.
pub(super) fn lookalike_json(v: &Evaluation) -> String {
    if v.lookalike.is_empty() { "[]".to_string() } else { json(&v.lookalike) }
}

impl<'a> Aggregates<'a> {
    /// Counts an evaluation whose raw row was written with these ids.
    pub fn add_evaluation(&mut self, v: &'a Evaluation, source_ip: String, dkim: i64, policy: i64) {
        let key = EvalKey {
            hour: v.time - v.time % HOUR,
            header_from: &v.header_from,
            source_ip,
            envelope_from: &v.envelope_from,
            disposition: &v.disposition,
            spf_domain: &v.spf.domain,
            spf_scope: &v.spf.scope,
            spf_result: &v.spf.result,
            dkim,
            override_reason: v.override_reason.as_deref().unwrap_or(""),
            policy,
            spf_aligned: v.spf_aligned,
            dkim_aligned: v.dkim_aligned,
            dmarc: &v.dmarc,
            lookalike: !v.lookalike.is_empty(),
        };
        let d = self.by_domain.entry((key.hour, &v.header_from, policy)).or_insert(DomainSum {
            first: v.time,
            last: v.time,
            ..Default::default()
        });
        d.messages += 1;
        d.dmarc_pass += u64::from(v.dmarc == "pass");
        d.spf_aligned += u64::from(v.spf_aligned);
        d.dkim_aligned += u64::from(v.dkim_aligned);
        d.rejected += u64::from(v.disposition == "reject");
        d.quarantined += u64::from(v.disposition == "quarantine");
        d.lookalike += u64::from(!v.lookalike.is_empty());
        d.first = d.first.min(v.time);
        d.last = d.last.max(v.time);
        let sum = self.hourly.entry(key).or_insert(EvalSum { helo: &v.helo, count: 0, first: v.time, last: v.time });
        sum.count += 1;
        sum.first = sum.first.min(v.time);
        sum.last = sum.last.max(v.time);
    }

    /// Counts a TLS session whose raw row was written with this policy id.
    pub fn add_tls(&mut self, t: &'a TlsSession, policy: i64) {
        let key = TlsKey {
            hour: t.time - t.time % HOUR,
            policy_domain: &t.policy_domain,
            mx_host: &t.mx_host,
            policy_type: &t.policy_type,
            result: &t.result,
            policy,
        };
        *self.tls_hourly.entry(key).or_default() += 1;
    }

    /// The `eval_hourly` groups in a fixed order.
    pub fn hourly(&self) -> Vec<(&EvalKey<'a>, &EvalSum<'a>)> {
        let mut groups: Vec<_> = self.hourly.iter().collect();
        groups.sort_by(|a, b| a.0.cmp(b.0));
        groups
    }

    /// The `domain_hourly` groups in a fixed order.
    pub fn by_domain(&self) -> Vec<(&DomainKey<'a>, &DomainSum)> {
        let mut groups: Vec<_> = self.by_domain.iter().collect();
        groups.sort_by_key(|(k, _)| **k);
        groups
    }

    /// The `tls_hourly` groups in a fixed order.
    pub fn tls_hourly(&self) -> Vec<(&TlsKey<'a>, u64)> {
        let mut groups: Vec<_> = self.tls_hourly.iter().map(|(k, n)| (k, *n)).collect();
        groups.sort_by(|a, b| a.0.cmp(b.0));
        groups
    }
}
