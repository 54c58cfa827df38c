//! The PostgreSQL writer's batch, the counterpart of `store/write.rs`:
//! raw rows with their repeated JSON interned as ids, the hourly
//! aggregates summed in memory and upserted once per group, timelines and
//! traffic counters, all in one transaction. The aggregates are shared by
//! every node, so the upserts add to what other nodes wrote.
//!
//! May import: the rest of `store::pg`, `postgres`.

use std::collections::HashMap;

use postgres::{Client, Transaction};

use super::super::aggregate::{Aggregates, Interning, dkim_set, json, lookalike_json};
use super::super::{Event, Result};
use super::big;

// As in the SQLite writer: `DO UPDATE` so that RETURNING answers an
// existing row's id too.
const DKIM_SQL: &str = "INSERT INTO dkim_sets (json) VALUES ($1) ON CONFLICT (json) DO UPDATE SET json = excluded.json RETURNING id";
const POLICY_SQL: &str =
    "INSERT INTO policies (json, has_rua) VALUES ($1, $2) ON CONFLICT (json) DO UPDATE SET json = excluded.json RETURNING id";
const TLS_POLICY_SQL: &str =
    "INSERT INTO tls_policies (text) VALUES ($1) ON CONFLICT (text) DO UPDATE SET text = excluded.text RETURNING id";

fn intern(tx: &mut Transaction<'_>, map: &mut HashMap<String, i64>, sql: &str, key: String, extra: Option<bool>) -> Result<i64> {
    if let Some(id) = map.get(&key) {
        return Ok(*id);
    }
    let row = match extra {
        Some(flag) => tx.query_one(sql, &[&key, &flag])?,
        None => tx.query_one(sql, &[&key])?,
    };
    let id: i64 = row.try_get(0)?;
    map.insert(key, id);
    Ok(id)
}

/// Writes a batch in one transaction.
pub(super) fn write(c: &mut Client, interned: &mut Interning, node: &str, events: &[Event]) -> Result<()> {
    let Interning { dkim, policies, tls_policies } = interned;
    let mut tx = c.transaction()?;
    let eval = tx.prepare(
        "INSERT INTO evaluations (time, source_ip, helo, envelope_from, header_from, spf_domain, spf_scope, spf_result,
         dkim, arc, dmarc, spf_aligned, dkim_aligned, disposition, policy, override_reason, lookalike, node)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
    )?;
    let delivery = tx.prepare(
        "INSERT INTO deliveries (time, queue_id, recipient_domain, recipients, mx_host, tls, reply_code, reply, node)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )?;
    let tls = tx.prepare(
        "INSERT INTO tls_sessions (time, policy_domain, mx_host, policy_type, result, policy, node) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )?;
    let mut agg = Aggregates::default();
    let mut timelines = Vec::new();
    for e in events {
        match e {
            Event::Evaluation(v) => {
                let dkim_id = intern(&mut tx, dkim, DKIM_SQL, dkim_set(v), None)?;
                let policy_id = match &v.policy {
                    Some(p) => intern(&mut tx, policies, POLICY_SQL, json(p), Some(!p.rua.is_empty()))?,
                    None => 0,
                };
                let ip = v.source_ip.to_string();
                let reason = v.override_reason.as_deref().unwrap_or("");
                let lookalike = lookalike_json(v);
                tx.execute(
                    &eval,
                    &[
                        &big(v.time),
                        &ip,
                        &v.helo,
                        &v.envelope_from,
                        &v.header_from,
                        &v.spf.domain,
                        &v.spf.scope,
                        &v.spf.result,
                        &dkim_id,
                        &v.arc,
                        &v.dmarc,
                        &v.spf_aligned,
                        &v.dkim_aligned,
                        &v.disposition,
                        &policy_id,
                        &reason,
                        &lookalike,
                        &node,
                    ],
                )?;
                agg.add_evaluation(v, ip, dkim_id, policy_id);
            }
            Event::Delivery(d) => {
                tx.execute(
                    &delivery,
                    &[
                        &big(d.time),
                        &d.queue_id,
                        &d.recipient_domain,
                        &i64::from(d.recipients),
                        &d.mx_host,
                        &d.tls,
                        &i64::from(d.reply_code),
                        &d.reply,
                        &node,
                    ],
                )?;
            }
            Event::Tls(t) => {
                let policy_id = if t.policy_string.is_empty() {
                    0
                } else {
                    intern(&mut tx, tls_policies, TLS_POLICY_SQL, t.policy_string.clone(), None)?
                };
                tx.execute(&tls, &[&big(t.time), &t.policy_domain, &t.mx_host, &t.policy_type, &t.result, &policy_id, &node])?;
                agg.add_tls(t, policy_id);
            }
            Event::Timeline(t) => timelines.push(&**t),
        }
    }
    super::timeline::insert(&mut tx, &timelines, node)?;
    // greatest/least: PostgreSQL's two-argument max/min.
    let up = tx.prepare(
        "INSERT INTO eval_hourly (hour, header_from, source_ip, envelope_from, disposition, spf_domain, spf_scope,
         spf_result, dkim, override_reason, policy, spf_aligned, dkim_aligned, dmarc, lookalike, helo, count, first, last)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
         ON CONFLICT (header_from, hour, source_ip, envelope_from, disposition, spf_domain, spf_scope, spf_result, dkim,
                      override_reason, policy, spf_aligned, dkim_aligned, dmarc, lookalike)
         DO UPDATE SET count = eval_hourly.count + excluded.count, first = least(eval_hourly.first, excluded.first),
         last = greatest(eval_hourly.last, excluded.last)",
    )?;
    // The aggregates come in a fixed order, so two nodes' batches take the
    // rows' locks in the same order and cannot deadlock.
    for (k, s) in agg.hourly() {
        tx.execute(
            &up,
            &[
                &big(k.hour),
                &k.header_from,
                &k.source_ip,
                &k.envelope_from,
                &k.disposition,
                &k.spf_domain,
                &k.spf_scope,
                &k.spf_result,
                &k.dkim,
                &k.override_reason,
                &k.policy,
                &k.spf_aligned,
                &k.dkim_aligned,
                &k.dmarc,
                &k.lookalike,
                &s.helo,
                &big(s.count),
                &big(s.first),
                &big(s.last),
            ],
        )?;
    }
    let up = tx.prepare(
        "INSERT INTO domain_hourly (hour, header_from, policy, messages, dmarc_pass, spf_aligned, dkim_aligned, rejected,
         quarantined, lookalike, first, last) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (hour, header_from, policy) DO UPDATE SET messages = domain_hourly.messages + excluded.messages,
         dmarc_pass = domain_hourly.dmarc_pass + excluded.dmarc_pass,
         spf_aligned = domain_hourly.spf_aligned + excluded.spf_aligned, dkim_aligned = domain_hourly.dkim_aligned + excluded.dkim_aligned,
         rejected = domain_hourly.rejected + excluded.rejected, quarantined = domain_hourly.quarantined + excluded.quarantined,
         lookalike = domain_hourly.lookalike + excluded.lookalike, first = least(domain_hourly.first, excluded.first),
         last = greatest(domain_hourly.last, excluded.last)",
    )?;
    for ((hour, domain, policy), d) in agg.by_domain() {
        tx.execute(
            &up,
            &[
                &big(*hour),
                domain,
                policy,
                &big(d.messages),
                &big(d.dmarc_pass),
                &big(d.spf_aligned),
                &big(d.dkim_aligned),
                &big(d.rejected),
                &big(d.quarantined),
                &big(d.lookalike),
                &big(d.first),
                &big(d.last),
            ],
        )?;
    }
    let up = tx.prepare(
        "INSERT INTO tls_hourly (hour, policy_domain, mx_host, policy_type, result, policy, count)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (hour, policy_domain, mx_host, policy_type, result, policy) DO UPDATE SET count = tls_hourly.count + excluded.count",
    )?;
    for (k, n) in agg.tls_hourly() {
        tx.execute(&up, &[&big(k.hour), &k.policy_domain, &k.mx_host, &k.policy_type, &k.result, &k.policy, &big(n)])?;
    }
    tx.commit()?;
    Ok(())
}
