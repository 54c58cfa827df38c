//! The SQLite writer's batch: raw rows with their repeated JSON interned
//! as ids (an in-memory map in front of the side tables, so a known DKIM
//! set or policy costs a hash lookup, not a row), and the hourly
//! aggregates ([`super::aggregate`]) upserted in the same transaction.
//!
//! May import: the rest of `store`.

use std::collections::HashMap;

use rusqlite::{Connection, Transaction, params};

use super::aggregate::{Aggregates, Interning, dkim_set, json, lookalike_json};
use super::{Event, Result};

/// The writer connection and its interning maps.
pub(super) struct Writer {
    pub conn: Connection,
    /// `[cluster] node_id`, written into every row.
    node: String,
    interned: Interning,
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
        Writer { conn, node: node.to_string(), interned: Interning::default() }
    }

    /// Writes a batch in one transaction.
    pub fn write(&mut self, events: &[Event]) -> Result<()> {
        let r = self.write_batch(events);
        if r.is_err() {
            // Ids handed out inside a transaction that rolled back name
            // nothing: forget them all.
            self.interned = Interning::default();
        }
        r
    }

    fn write_batch(&mut self, events: &[Event]) -> Result<()> {
        let Writer { conn, node, interned } = self;
        let Interning { dkim, policies, tls_policies } = interned;
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
            let mut agg = Aggregates::default();
            let mut timelines = Vec::new();
            for e in events {
                match e {
                    Event::Evaluation(v) => {
                        let dkim_id = intern(&tx, dkim, DKIM_SQL, dkim_set(v), None)?;
                        let policy_id = match &v.policy {
                            Some(p) => intern(&tx, policies, POLICY_SQL, json(p), Some(!p.rua.is_empty()))?,
                            None => 0,
                        };
                        let ip = v.source_ip.to_string();
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
                            v.override_reason.as_deref().unwrap_or(""),
                            lookalike_json(v),
                            node,
                        ])?;
                        agg.add_evaluation(v, ip, dkim_id, policy_id);
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
                        agg.add_tls(t, policy_id);
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
            for (k, s) in agg.hourly() {
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
            for ((hour, domain, policy), d) in agg.by_domain() {
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
            for (k, n) in agg.tls_hourly() {
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
