//! The SQLite writer's batch: raw rows with their repeated JSON interned
//! as ids (an in-memory map in front of the side tables, so a known DKIM
//! set or policy costs a hash lookup, not a row), and the hourly
//! aggregates upserted in the same transaction, summed in memory first so
//! a batch upserts each group once.
//!
//! May import: the rest of `store`.

use std::collections::HashMap;

use rusqlite::{Connection, Transaction, params};

use super::{Event, Result};

/// Seconds per aggregate bucket.
pub(super) const HOUR: u64 = 3600;

/// The writer connection and its interning maps.
pub(super) struct Writer {
    pub conn: Connection,
    /// `[cluster] node_id`, written into every row.
    node: String,
    dkim: HashMap<String, i64>,
    policies: HashMap<String, i64>,
    tls_policies: HashMap<String, i64>,
}

/// One `eval_hourly` group.
#[derive(PartialEq, Eq, Hash)]
struct EvalKey<'a> {
    hour: u64,
    header_from: &'a str,
    source_ip: String,
    envelope_from: &'a str,
    disposition: &'a str,
    spf_domain: &'a str,
    spf_scope: &'a str,
    spf_result: &'a str,
    dkim: i64,
    override_reason: &'a str,
    policy: i64,
    spf_aligned: bool,
    dkim_aligned: bool,
    dmarc: &'a str,
    lookalike: bool,
}

struct EvalSum<'a> {
    helo: &'a str,
    count: u64,
    first: u64,
    last: u64,
}

/// One `domain_hourly` row.
#[derive(Default)]
struct DomainSum {
    messages: u64,
    dmarc_pass: u64,
    spf_aligned: u64,
    dkim_aligned: u64,
    rejected: u64,
    quarantined: u64,
    lookalike: u64,
    first: u64,
    last: u64,
}

/// One `tls_hourly` group.
#[derive(PartialEq, Eq, Hash)]
struct TlsKey<'a> {
    hour: u64,
    policy_domain: &'a str,
    mx_host: &'a str,
    policy_type: &'a str,
    result: &'a str,
    policy: i64,
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The id of `key` in a side table, inserting it when new. `sql` is an
/// upsert that answers the id either way.
fn intern(tx: &Transaction<'_>, map: &mut HashMap<String, i64>, sql: &str, key: String, extra: Option<bool>) -> Result<i64> {
    if let Some(id) = map.get(&key) {
        return Ok(*id);
    }
    let mut st = tx.prepare_cached(sql)?;
    let id: i64 = match extra {
        Some(flag) => st.query_row(params![key, flag], |r| r.get(0))?,
        None => st.query_row(params![key], |r| r.get(0))?,
    };
    map.insert(key, id);
    Ok(id)
}

impl Writer {
    pub fn new(conn: Connection, node: &str) -> Writer {
        Writer { conn, node: node.to_string(), dkim: HashMap::new(), policies: HashMap::new(), tls_policies: HashMap::new() }
    }

    /// Writes a batch in one transaction.
    pub fn write(&mut self, events: &[Event]) -> Result<()> {
        let r = self.write_batch(events);
        if r.is_err() {
            // Ids handed out inside a transaction that rolled back name
            // nothing: forget them all.
            self.dkim.clear();
            self.policies.clear();
            self.tls_policies.clear();
        }
        r
    }

    fn write_batch(&mut self, events: &[Event]) -> Result<()> {
        let Writer { conn, node, dkim, policies, tls_policies } = self;
        let node = node.as_str();
        let tx = conn.transaction()?;
        {
            let mut eval = tx.prepare_cached(
                "INSERT INTO evaluations (time, source_ip, helo, envelope_from, header_from, spf_domain, spf_scope, spf_result,
                 dkim, arc, dmarc, spf_aligned, dkim_aligned, disposition, policy, override_reason, lookalike, node)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            )?;
            let mut delivery = tx.prepare_cached(
                "INSERT INTO deliveries (time, queue_id, recipient_domain, recipients, mx_host, tls, reply_code, reply, node)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut tls = tx.prepare_cached(
                "INSERT INTO tls_sessions (time, policy_domain, mx_host, policy_type, result, policy, node)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut hourly: HashMap<EvalKey<'_>, EvalSum<'_>> = HashMap::new();
            let mut tls_hourly: HashMap<TlsKey<'_>, u64> = HashMap::new();
            let mut timelines = Vec::new();
            let mut by_domain: HashMap<(u64, &str, i64), DomainSum> = HashMap::new();
            for e in events {
                match e {
                    Event::Evaluation(v) => {
                        let dkim_id = if v.dkim.is_empty() {
                            intern(&tx, dkim, DKIM_SQL, "[]".into(), None)?
                        } else {
                            let mut set = v.dkim.clone();
                            set.sort();
                            intern(&tx, dkim, DKIM_SQL, json(&set), None)?
                        };
                        let policy_id = match &v.policy {
                            Some(p) => intern(&tx, policies, POLICY_SQL, json(p), Some(!p.rua.is_empty()))?,
                            None => 0,
                        };
                        let ip = v.source_ip.to_string();
                        let reason = v.override_reason.as_deref().unwrap_or("");
                        let lookalike = if v.lookalike.is_empty() { "[]".to_string() } else { json(&v.lookalike) };
                        eval.execute(params![
                            v.time,
                            ip,
                            v.helo,
                            v.envelope_from,
                            v.header_from,
                            v.spf.domain,
                            v.spf.scope,
                            v.spf.result,
                            dkim_id,
                            v.arc,
                            v.dmarc,
                            v.spf_aligned,
                            v.dkim_aligned,
                            v.disposition,
                            policy_id,
                            reason,
                            lookalike,
                            node,
                        ])?;
                        let key = EvalKey {
                            hour: v.time - v.time % HOUR,
                            header_from: &v.header_from,
                            source_ip: ip,
                            envelope_from: &v.envelope_from,
                            disposition: &v.disposition,
                            spf_domain: &v.spf.domain,
                            spf_scope: &v.spf.scope,
                            spf_result: &v.spf.result,
                            dkim: dkim_id,
                            override_reason: reason,
                            policy: policy_id,
                            spf_aligned: v.spf_aligned,
                            dkim_aligned: v.dkim_aligned,
                            dmarc: &v.dmarc,
                            lookalike: !v.lookalike.is_empty(),
                        };
                        let d = by_domain.entry((key.hour, &v.header_from, policy_id)).or_insert(DomainSum {
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
                        let sum = hourly.entry(key).or_insert(EvalSum { helo: &v.helo, count: 0, first: v.time, last: v.time });
                        sum.count += 1;
                        sum.first = sum.first.min(v.time);
                        sum.last = sum.last.max(v.time);
                    }
                    Event::Delivery(d) => {
                        delivery.execute(params![
                            d.time,
                            d.queue_id,
                            d.recipient_domain,
                            d.recipients,
                            d.mx_host,
                            d.tls,
                            d.reply_code,
                            d.reply,
                            node
                        ])?;
                    }
                    Event::Tls(t) => {
                        let policy_id = if t.policy_string.is_empty() {
                            0
                        } else {
                            intern(&tx, tls_policies, TLS_POLICY_SQL, t.policy_string.clone(), None)?
                        };
                        tls.execute(params![t.time, t.policy_domain, t.mx_host, t.policy_type, t.result, policy_id, node])?;
                        let key = TlsKey {
                            hour: t.time - t.time % HOUR,
                            policy_domain: &t.policy_domain,
                            mx_host: &t.mx_host,
                            policy_type: &t.policy_type,
                            result: &t.result,
                            policy: policy_id,
                        };
                        *tls_hourly.entry(key).or_default() += 1;
                    }
                    Event::Timeline(t) => timelines.push(&**t),
                }
            }
            super::timeline::insert(&tx, &timelines, node)?;
            let mut up = tx.prepare_cached(
                "INSERT INTO eval_hourly (hour, header_from, source_ip, envelope_from, disposition, spf_domain, spf_scope,
                 spf_result, dkim, override_reason, policy, spf_aligned, dkim_aligned, dmarc, lookalike, helo, count, first, last)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
                 ON CONFLICT DO UPDATE SET count = count + excluded.count, first = min(first, excluded.first),
                 last = max(last, excluded.last)",
            )?;
            for (k, s) in &hourly {
                up.execute(params![
                    k.hour,
                    k.header_from,
                    k.source_ip,
                    k.envelope_from,
                    k.disposition,
                    k.spf_domain,
                    k.spf_scope,
                    k.spf_result,
                    k.dkim,
                    k.override_reason,
                    k.policy,
                    k.spf_aligned,
                    k.dkim_aligned,
                    k.dmarc,
                    k.lookalike,
                    s.helo,
                    s.count,
                    s.first,
                    s.last
                ])?;
            }
            let mut up = tx.prepare_cached(
                "INSERT INTO domain_hourly (hour, header_from, policy, messages, dmarc_pass, spf_aligned, dkim_aligned, rejected,
                 quarantined, lookalike, first, last) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT DO UPDATE SET messages = messages + excluded.messages, dmarc_pass = dmarc_pass + excluded.dmarc_pass,
                 spf_aligned = spf_aligned + excluded.spf_aligned, dkim_aligned = dkim_aligned + excluded.dkim_aligned,
                 rejected = rejected + excluded.rejected, quarantined = quarantined + excluded.quarantined,
                 lookalike = lookalike + excluded.lookalike, first = min(first, excluded.first), last = max(last, excluded.last)",
            )?;
            for ((hour, domain, policy), d) in &by_domain {
                up.execute(params![
                    hour,
                    domain,
                    policy,
                    d.messages,
                    d.dmarc_pass,
                    d.spf_aligned,
                    d.dkim_aligned,
                    d.rejected,
                    d.quarantined,
                    d.lookalike,
                    d.first,
                    d.last
                ])?;
            }
            let mut up = tx.prepare_cached(
                "INSERT INTO tls_hourly (hour, policy_domain, mx_host, policy_type, result, policy, count)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO UPDATE SET count = count + excluded.count",
            )?;
            for (k, n) in &tls_hourly {
                up.execute(params![k.hour, k.policy_domain, k.mx_host, k.policy_type, k.result, k.policy, n])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

// `DO UPDATE` (not `DO NOTHING`) so that RETURNING answers the existing
// row's id too.
const DKIM_SQL: &str = "INSERT INTO dkim_sets (json) VALUES (?1) ON CONFLICT (json) DO UPDATE SET json = excluded.json RETURNING id";
const POLICY_SQL: &str =
    "INSERT INTO policies (json, has_rua) VALUES (?1, ?2) ON CONFLICT (json) DO UPDATE SET json = excluded.json RETURNING id";
const TLS_POLICY_SQL: &str =
    "INSERT INTO tls_policies (text) VALUES (?1) ON CONFLICT (text) DO UPDATE SET text = excluded.text RETURNING id";
