//! PostgreSQL's timelines, traffic counters, delivery attempts, pruning
//! and the advisor's evidence: the counterparts of `store/timeline.rs`
//! and `store/advice.rs`, which keep the row handling; only the reads
//! differ (JSON paths, case-folding, `$N`).
//!
//! May import: the rest of `store::pg`, `postgres`.

use std::collections::HashMap;

use postgres::{Client, Transaction};

use super::super::advice::{self, Evidence, EvidenceRows};
use super::super::timeline::{LookalikeHit, MessageQuery, MessageRecord, MessageSummary, Timeline, TimelineEvent, TrafficHour};
use super::super::{DeliveryAttempt, Result, StoreError};
use super::pool::placeholders;
use super::{big, col, json, num};

const HOUR: u64 = 3600;

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Data(format!("bad timeline JSON in the store: {e}")))
}

/// Writes timeline events and their counts into an open transaction (see
/// `store::timeline::insert`).
pub(super) fn insert(tx: &mut Transaction<'_>, events: &[&TimelineEvent], node: &str) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    // INSERT OR REPLACE in SQLite: a message recorded again replaces its
    // row.
    let message = tx.prepare(
        "INSERT INTO messages (event_id, queue_id, time, client_ip, sender, message_id, action, detail, node)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (event_id) DO UPDATE SET queue_id = excluded.queue_id, time = excluded.time, client_ip = excluded.client_ip,
         sender = excluded.sender, message_id = excluded.message_id, action = excluded.action, detail = excluded.detail,
         node = excluded.node",
    )?;
    let rcpt = tx.prepare("INSERT INTO message_recipients (event_id, recipient) VALUES ($1, $2)")?;
    let later = tx.prepare("INSERT INTO message_events (queue_id, time, detail, node) VALUES ($1, $2, $3, $4)")?;
    let hit = tx.prepare(
        "INSERT INTO lookalike_hits (time, resembles, domain, rule, identity, client_ip, event_id, node)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )?;
    let mut counts: HashMap<(u64, &'static str), u64> = HashMap::new();
    let mut count = |time: u64, counter: &'static str| *counts.entry((time - time % HOUR, counter)).or_default() += 1;
    for e in events {
        match e {
            TimelineEvent::Message(m) => {
                tx.execute(
                    &message,
                    &[&m.event_id, &m.queue_id, &big(m.time), &m.client_ip, &m.sender, &m.message_id, &m.action, &json(m), &node],
                )?;
                for r in m.recipients.iter().chain(&m.refused_recipients) {
                    tx.execute(&rcpt, &[&m.event_id, r])?;
                }
                for h in &m.lookalike {
                    tx.execute(&hit, &[&big(m.time), &h.resembles, &h.domain, &h.rule, &h.identity, &m.client_ip, &m.event_id, &node])?;
                }
                count(m.time, if m.inbound { "received_inbound" } else { "received_submitted" });
                match m.action.as_str() {
                    "accepted" => count(m.time, "accepted"),
                    "quarantined" => {
                        count(m.time, "accepted");
                        count(m.time, "quarantined");
                    }
                    _ => count(m.time, "refused"),
                }
            }
            TimelineEvent::Attempt(a) => {
                tx.execute(&later, &[&a.queue_id, &big(a.time), &json(e), &node])?;
                for r in &a.recipients {
                    match r.outcome.as_str() {
                        "delivered" => count(a.time, "delivered"),
                        "bounced" => count(a.time, "bounced"),
                        _ => count(a.time, "deferred"),
                    }
                }
            }
            TimelineEvent::Dsn(d) => {
                tx.execute(&later, &[&d.queue_id, &big(d.time), &json(e), &node])?;
            }
        }
    }
    let add = tx.prepare(
        "INSERT INTO traffic_hourly (hour, counter, n) VALUES ($1, $2, $3)
         ON CONFLICT (hour, counter) DO UPDATE SET n = traffic_hourly.n + excluded.n",
    )?;
    // Sorted: nodes take the counters' row locks in one order.
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    for ((hour, counter), n) in counts {
        tx.execute(&add, &[&big(hour), &counter, &big(n)])?;
    }
    Ok(())
}

/// The statements of `Sqlite::prune`, the same text.
const PRUNE: &[&str] = &[
    "DELETE FROM evaluations WHERE time < ?1",
    "DELETE FROM eval_hourly WHERE hour + 3600 <= ?1",
    "DELETE FROM domain_hourly WHERE hour + 3600 <= ?1",
    "DELETE FROM tls_hourly WHERE hour + 3600 <= ?1",
    "DELETE FROM deliveries WHERE time < ?1",
    "DELETE FROM tls_sessions WHERE time < ?1",
    "DELETE FROM sent_reports WHERE time < ?1",
    "DELETE FROM reports WHERE stored < ?1",
    "DELETE FROM message_recipients WHERE event_id IN (SELECT event_id FROM messages WHERE time < ?1)",
    "DELETE FROM messages WHERE time < ?1",
    "DELETE FROM message_events WHERE time < ?1",
    "DELETE FROM lookalike_hits WHERE time < ?1",
];

pub(super) fn prune(c: &mut Client, before: u64) -> Result<u64> {
    let mut tx = c.transaction()?;
    let mut n = 0;
    for sql in PRUNE {
        n += tx.execute(&placeholders(sql), &[&big(before)])?;
    }
    n += tx.execute("DELETE FROM traffic_hourly WHERE hour < $1", &[&big(before - before % HOUR)])?;
    tx.commit()?;
    Ok(n)
}

pub(super) fn search(c: &mut Client, q: &MessageQuery) -> Result<Vec<MessageSummary>> {
    let text = q.text.trim();
    let bare = text.trim_start_matches('<').trim_end_matches('>');
    let to = if q.to == 0 { u64::MAX } else { q.to };
    let limit = q.limit.clamp(1, 1000) as i64;
    let rows = if text.is_empty() {
        c.query(
            "SELECT detail FROM messages WHERE time >= $1 AND time < $2 AND ($4::text = '' OR node = $4::text)
             ORDER BY time DESC, seq DESC LIMIT $3",
            &[&big(q.from), &big(to), &limit, &q.node],
        )?
    } else {
        let bracketed = format!("<{bare}>");
        c.query(
            "SELECT detail FROM messages
             WHERE (event_id = $1 OR queue_id = $1 OR message_id = $2 OR message_id = $3 OR lower(sender) = lower($2)
                    OR client_ip = $1
                    OR event_id IN (SELECT event_id FROM message_recipients WHERE lower(recipient) = lower($2)))
               AND time >= $4 AND time < $5 AND ($7::text = '' OR node = $7::text)
             ORDER BY time DESC, seq DESC LIMIT $6",
            &[&text, &bare, &bracketed, &big(q.from), &big(to), &limit, &q.node],
        )?
    };
    rows.iter().map(|r| Ok(from_json::<MessageRecord>(col(r, 0)?)?.into())).collect()
}

pub(super) fn get(c: &mut Client, id: &str) -> Result<Option<Timeline>> {
    let message: Option<MessageRecord> =
        match c.query_opt("SELECT detail FROM messages WHERE event_id = $1 OR queue_id = $1 LIMIT 1", &[&id])? {
            Some(r) => Some(from_json(col(&r, 0)?)?),
            None => None,
        };
    let queue_id = message.as_ref().and_then(|m| m.queue_id.clone()).unwrap_or_else(|| id.to_string());
    let events = c
        .query("SELECT detail FROM message_events WHERE queue_id = $1 ORDER BY time, id", &[&queue_id])?
        .iter()
        .map(|r| from_json(col(r, 0)?))
        .collect::<Result<Vec<TimelineEvent>>>()?;
    if message.is_none() && events.is_empty() {
        return Ok(None);
    }
    Ok(Some(Timeline { message, events }))
}

pub(super) fn traffic(c: &mut Client, from: u64, to: u64) -> Result<Vec<TrafficHour>> {
    let rows = c.query(
        &placeholders("SELECT hour, counter, n FROM traffic_hourly WHERE hour >= ?1 AND hour < ?2 ORDER BY hour"),
        &[&big(from - from % HOUR), &big(to)],
    )?;
    let mut out: Vec<TrafficHour> = Vec::new();
    for r in &rows {
        let (hour, counter, n) = (num(r, 0)?, col::<&str>(r, 1)?, num(r, 2)?);
        if out.last().is_none_or(|h| h.hour != hour) {
            out.push(TrafficHour { hour, ..Default::default() });
        }
        if let Some(slot) = out.last_mut().and_then(|h| h.slot(counter)) {
            *slot += n;
        }
    }
    Ok(out)
}

pub(super) fn lookalikes(c: &mut Client, resembles: &str, from: u64, to: u64, limit: usize) -> Result<Vec<LookalikeHit>> {
    let rows = c.query(
        &placeholders(
            "SELECT time, domain, resembles, rule, identity, client_ip, event_id FROM lookalike_hits
             WHERE resembles = ?1 AND time >= ?2 AND time < ?3 ORDER BY time DESC LIMIT ?4",
        ),
        &[&resembles, &big(from), &big(to), &(limit.clamp(1, 1000) as i64)],
    )?;
    rows.iter()
        .map(|r| {
            Ok(LookalikeHit {
                time: num(r, 0)?,
                domain: col(r, 1)?,
                resembles: col(r, 2)?,
                rule: col(r, 3)?,
                identity: col(r, 4)?,
                client_ip: col(r, 5)?,
                event_id: col(r, 6)?,
            })
        })
        .collect()
}

pub(super) fn deliveries(c: &mut Client, queue_id: &str) -> Result<Vec<DeliveryAttempt>> {
    let rows = c.query(
        "SELECT time, queue_id, recipient_domain, recipients, mx_host, tls, reply_code, reply
         FROM deliveries WHERE queue_id = $1 ORDER BY id",
        &[&queue_id],
    )?;
    rows.iter()
        .map(|r| {
            Ok(DeliveryAttempt {
                time: num(r, 0)?,
                queue_id: col(r, 1)?,
                recipient_domain: col(r, 2)?,
                recipients: u32::try_from(num(r, 3)?).unwrap_or(u32::MAX),
                mx_host: col(r, 4)?,
                tls: col(r, 5)?,
                reply_code: u16::try_from(num(r, 6)?).unwrap_or(0),
                reply: col(r, 7)?,
            })
        })
        .collect()
}

/// The advisor's evidence: the same three reads as `store::advice`.
pub(super) fn evidence(c: &mut Client, domain: &str, from: u64, to: u64) -> Result<Evidence> {
    let domain = advice::normalize(domain);
    let floor = from - from % 3600;
    let inbound = c
        .query(
            "SELECT source_ip, spf_aligned, dkim_aligned, override_reason, dkim, spf_domain, spf_result, max(helo),
                    sum(count)::bigint, min(first)
             FROM eval_hourly WHERE header_from = $1 AND hour >= $2 AND hour < $3
             GROUP BY source_ip, spf_aligned, dkim_aligned, override_reason, dkim, spf_domain, spf_result",
            &[&domain, &big(floor), &big(to)],
        )?
        .iter()
        .map(|r| {
            Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?, col(r, 3)?, col(r, 4)?, col(r, 5)?, col(r, 6)?, col(r, 7)?, num(r, 8)?, num(r, 9)?))
        })
        .collect::<Result<_>>()?;
    let reported = c
        .query(
            "SELECT r.id, r.begin, x.source_ip, x.count, x.dkim_evaluated, x.spf_evaluated, x.reasons, x.dkim, x.spf
             FROM report_rows x JOIN reports r ON r.id = x.report
             WHERE r.kind = 'dmarc' AND r.\"end\" > $2 AND r.begin < $3
               AND (lower(x.header_from) = $1 OR (x.header_from = '' AND r.policy_domain = $1))",
            &[&domain, &big(from), &big(to)],
        )?
        .iter()
        .map(|r| Ok((col(r, 0)?, num(r, 1)?, col(r, 2)?, num(r, 3)?, col(r, 4)?, col(r, 5)?, col(r, 6)?, col(r, 7)?, col(r, 8)?)))
        .collect::<Result<_>>()?;
    // `detail` is the MessageRecord's JSON; `inbound` false is relayed
    // mail. The LIKE only narrows; the domain is compared exactly later.
    let submitters = c
        .query(
            "SELECT client_ip, coalesce(detail::jsonb->>'auth_user', ''), detail::jsonb->>'from', count(*), min(time)
             FROM messages
             WHERE time >= $1 AND time < $2 AND action <> 'refused' AND (detail::jsonb->>'inbound')::boolean = false
               AND detail::jsonb->>'from' LIKE $3
             GROUP BY 1, 2, 3",
            &[&big(from), &big(to), &format!("%@{domain}%")],
        )?
        .iter()
        .map(|r| Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?, num(r, 3)?, num(r, 4)?)))
        .collect::<Result<_>>()?;
    let rows = EvidenceRows { dkim_sets: super::dkim_sets(c)?, inbound, reported, submitters };
    advice::evidence_from(&domain, rows)
}
