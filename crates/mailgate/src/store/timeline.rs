//! Per-message timelines and hourly traffic counters, for the dashboard's
//! message search and overview.
//!
//! The hot path records one [`MessageRecord`] per finished SMTP
//! transaction (accepted, quarantined or refused, with what the session
//! and the checks knew), one [`AttemptRecord`] per delivery attempt of a
//! message's recipients at one destination, and a [`DsnRecord`] when a
//! notice goes back to the sender. The writer derives the hourly counters
//! from the same events in the same transaction, so the overview reads a
//! few hundred rows instead of scanning messages.
//!
//! May import: `store` (its parent), rusqlite, serde.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use super::aggregate::json;
use super::{Result, StoreError};

/// A message as the inbound side finished it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Unix seconds.
    pub time: u64,
    /// The queue id, or `r-<hex>` for a message refused before it had one.
    pub event_id: String,
    /// The queue id when the message got one: then always `event_id`
    /// (the SQLite store finds a message by queue id through `event_id`).
    pub queue_id: Option<String>,
    /// Received from the internet (an MX listener, untrusted client)
    /// rather than submitted by a user or a trusted network.
    pub inbound: bool,
    /// The listener: `mx`, `submission`, `submissions`.
    pub role: String,
    pub client_ip: String,
    pub helo: String,
    /// The TLS protocol and cipher, when the session used TLS.
    pub tls: Option<String>,
    pub auth_user: Option<String>,
    /// The envelope sender, `<>` for the null sender.
    pub sender: String,
    pub recipients: Vec<String>,
    /// Recipients refused at RCPT TO in a transaction that went on with
    /// the others: found by a search for them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_recipients: Vec<String>,
    pub message_id: String,
    pub subject: String,
    /// The `From:` header field as written (display name included).
    pub from: String,
    pub size: u64,
    pub checks: Vec<CheckRecord>,
    /// Look-alike findings: the domains they resembled are searchable.
    #[serde(default)]
    pub lookalike: Vec<LookalikeHit>,
    /// `accepted`, `quarantined` or `refused`.
    pub action: String,
    /// The reply the client got at the end of DATA.
    pub reply: String,
}

/// One check's outcome on a message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckRecord {
    /// `spf`, `dkim`, `arc`, `dmarc`, `lookalike`, `policy`, ...
    pub name: String,
    pub result: String,
    /// Why, in words (domain checked, rule fired, policy applied).
    pub detail: String,
}

/// A sender identity that resembled one of our domains.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LookalikeHit {
    #[serde(default)]
    pub time: u64,
    /// The domain the message carried.
    pub domain: String,
    /// Ours, which it resembled.
    pub resembles: String,
    /// The rule that fired (`confusable`, `substitution`, ...).
    pub rule: String,
    /// Where the domain was: `from`, `mail_from`, `helo`, ...
    pub identity: String,
    #[serde(default)]
    pub client_ip: String,
    /// The message's event id, for its timeline.
    #[serde(default)]
    pub event_id: String,
}

/// One delivery attempt of some recipients of a queued message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub time: u64,
    pub queue_id: String,
    /// The host that answered (`host[ip]:port`), empty when none did.
    pub mx_host: String,
    pub tls: bool,
    pub recipients: Vec<RecipientResult>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecipientResult {
    pub address: String,
    /// `delivered`, `deferred` or `bounced`.
    pub outcome: String,
    /// The full SMTP reply.
    pub reply: String,
}

/// A delivery status notification sent about a message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DsnRecord {
    pub time: u64,
    pub queue_id: String,
    /// The notice's own queue id.
    pub dsn_id: String,
    /// `failure`, `delay`, `success` (not `kind`: that is the event's tag).
    pub notice: String,
    pub recipients: Vec<String>,
}

/// What the writer takes for timelines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
// Boxed whole in `Event::Timeline`: the variants' sizes do not matter there.
#[allow(clippy::large_enum_variant)]
pub enum TimelineEvent {
    Message(MessageRecord),
    Attempt(AttemptRecord),
    Dsn(DsnRecord),
}

/// A message found by a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageSummary {
    pub time: u64,
    pub event_id: String,
    pub queue_id: Option<String>,
    pub client_ip: String,
    pub sender: String,
    pub recipients: Vec<String>,
    pub message_id: String,
    pub subject: String,
    pub from: String,
    pub action: String,
}

impl From<MessageRecord> for MessageSummary {
    fn from(m: MessageRecord) -> Self {
        MessageSummary {
            time: m.time,
            event_id: m.event_id,
            queue_id: m.queue_id,
            client_ip: m.client_ip,
            sender: m.sender,
            recipients: m.recipients,
            message_id: m.message_id,
            subject: m.subject,
            from: m.from,
            action: m.action,
        }
    }
}

/// A search: `text` matches a queue or event id (the same value for a
/// message that got one), a Message-ID (with or without the angle
/// brackets), a sender or recipient address or a client IP exactly; empty,
/// it matches everything. Newest first.
#[derive(Debug, Clone, Default)]
pub struct MessageQuery {
    pub text: String,
    pub from: u64,
    pub to: u64,
    pub limit: usize,
    /// Only messages this node (`[cluster] node_id`) recorded; empty: any.
    pub node: String,
}

/// A message's timeline: its record (when the inbound side recorded one)
/// and what happened to it later, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub message: Option<MessageRecord>,
    pub events: Vec<TimelineEvent>,
}

/// Messages per hour, by what happened to them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficHour {
    /// The hour's first second (Unix).
    pub hour: u64,
    pub received_inbound: u64,
    pub received_submitted: u64,
    /// Quarantined included.
    pub accepted: u64,
    pub quarantined: u64,
    pub refused: u64,
    /// Recipients.
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
}

impl TrafficHour {
    pub(super) fn slot(&mut self, counter: &str) -> Option<&mut u64> {
        Some(match counter {
            "received_inbound" => &mut self.received_inbound,
            "received_submitted" => &mut self.received_submitted,
            "accepted" => &mut self.accepted,
            "quarantined" => &mut self.quarantined,
            "refused" => &mut self.refused,
            "delivered" => &mut self.delivered,
            "deferred" => &mut self.deferred,
            "bounced" => &mut self.bounced,
            _ => return None,
        })
    }

    /// Adds `other`'s counts to this one.
    pub fn add(&mut self, o: &TrafficHour) {
        self.received_inbound += o.received_inbound;
        self.received_submitted += o.received_submitted;
        self.accepted += o.accepted;
        self.quarantined += o.quarantined;
        self.refused += o.refused;
        self.delivered += o.delivered;
        self.deferred += o.deferred;
        self.bounced += o.bounced;
    }
}

/// The schema (a migration in `schema.rs`).
pub const MIGRATION: &str = "
    CREATE TABLE messages (
        event_id TEXT PRIMARY KEY,
        queue_id TEXT,
        time INTEGER NOT NULL,
        client_ip TEXT NOT NULL,
        sender TEXT NOT NULL COLLATE NOCASE,
        message_id TEXT NOT NULL,
        action TEXT NOT NULL,
        -- JSON of the whole MessageRecord.
        detail TEXT NOT NULL
    );
    CREATE INDEX messages_time ON messages (time);
    CREATE INDEX messages_queue_id ON messages (queue_id);
    CREATE INDEX messages_message_id ON messages (message_id);
    CREATE INDEX messages_sender ON messages (sender);
    CREATE INDEX messages_client_ip ON messages (client_ip);

    CREATE TABLE message_recipients (
        event_id TEXT NOT NULL,
        recipient TEXT NOT NULL COLLATE NOCASE
    );
    CREATE INDEX message_recipients_recipient ON message_recipients (recipient);
    CREATE INDEX message_recipients_event ON message_recipients (event_id);

    -- Delivery attempts and notices, by queue id.
    CREATE TABLE message_events (
        queue_id TEXT NOT NULL,
        time INTEGER NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX message_events_queue_id ON message_events (queue_id);
    CREATE INDEX message_events_time ON message_events (time);

    CREATE TABLE lookalike_hits (
        time INTEGER NOT NULL,
        resembles TEXT NOT NULL,
        domain TEXT NOT NULL,
        rule TEXT NOT NULL,
        identity TEXT NOT NULL,
        client_ip TEXT NOT NULL,
        event_id TEXT NOT NULL
    );
    CREATE INDEX lookalike_hits_resembles ON lookalike_hits (resembles, time);
    CREATE INDEX lookalike_hits_time ON lookalike_hits (time);

    CREATE TABLE traffic_hourly (
        hour INTEGER NOT NULL,
        counter TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (hour, counter)
    ) WITHOUT ROWID;";

const HOUR: u64 = 3600;

fn ts(t: u64) -> i64 {
    t.min(i64::MAX as u64) as i64
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Data(format!("bad timeline JSON in the store: {e}")))
}

/// Writes timeline events and their counts into an open transaction.
pub fn insert(tx: &Transaction<'_>, events: &[&TimelineEvent], node: &str) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut message = tx.prepare_cached(
        "INSERT OR REPLACE INTO messages (event_id, queue_id, time, client_ip, sender, message_id, action, detail, node)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut rcpt = tx.prepare_cached("INSERT OR IGNORE INTO message_recipients (event_id, recipient) VALUES (?1, ?2)")?;
    let mut later = tx.prepare_cached("INSERT INTO message_events (queue_id, time, detail, node) VALUES (?1, ?2, ?3, ?4)")?;
    let mut hit = tx.prepare_cached(
        "INSERT INTO lookalike_hits (time, resembles, domain, rule, identity, client_ip, event_id, node)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut counts: HashMap<(u64, &'static str), u64> = HashMap::new();
    let mut count = |time: u64, counter: &'static str| *counts.entry((time - time % HOUR, counter)).or_default() += 1;
    for e in events {
        match e {
            TimelineEvent::Message(m) => {
                message.execute(params![
                    m.event_id,
                    m.queue_id,
                    ts(m.time),
                    m.client_ip,
                    m.sender,
                    m.message_id,
                    m.action,
                    json(m),
                    node
                ])?;
                for r in m.recipients.iter().chain(&m.refused_recipients) {
                    rcpt.execute(params![m.event_id, r])?;
                }
                for h in &m.lookalike {
                    hit.execute(params![ts(m.time), h.resembles, h.domain, h.rule, h.identity, m.client_ip, m.event_id, node])?;
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
                later.execute(params![a.queue_id, ts(a.time), json(e), node])?;
                for r in &a.recipients {
                    match r.outcome.as_str() {
                        "delivered" => count(a.time, "delivered"),
                        "bounced" => count(a.time, "bounced"),
                        _ => count(a.time, "deferred"),
                    }
                }
            }
            TimelineEvent::Dsn(d) => {
                later.execute(params![d.queue_id, ts(d.time), json(e), node])?;
            }
        }
    }
    let mut add = tx.prepare_cached(
        "INSERT INTO traffic_hourly (hour, counter, n) VALUES (?1, ?2, ?3)
         ON CONFLICT (hour, counter) DO UPDATE SET n = n + excluded.n",
    )?;
    for ((hour, counter), n) in counts {
        add.execute(params![ts(hour), counter, n])?;
    }
    Ok(())
}

/// Deletes timelines and counters older than `before`; answers how many
/// rows went.
pub fn prune(tx: &Transaction<'_>, before: u64) -> Result<u64> {
    let b = ts(before);
    let mut n =
        tx.execute("DELETE FROM message_recipients WHERE event_id IN (SELECT event_id FROM messages WHERE time < ?1)", params![b])?;
    n += tx.execute("DELETE FROM messages WHERE time < ?1", params![b])?;
    n += tx.execute("DELETE FROM message_events WHERE time < ?1", params![b])?;
    n += tx.execute("DELETE FROM lookalike_hits WHERE time < ?1", params![b])?;
    n += tx.execute("DELETE FROM traffic_hourly WHERE hour < ?1", params![ts(before - before % HOUR)])?;
    Ok(n as u64)
}

/// Finds messages; see [`MessageQuery`].
pub fn search(c: &Connection, q: &MessageQuery) -> Result<Vec<MessageSummary>> {
    let text = q.text.trim();
    let bare = text.trim_start_matches('<').trim_end_matches('>');
    let to = if q.to == 0 { u64::MAX } else { q.to };
    let limit = q.limit.clamp(1, 1000) as i64;
    let details: Vec<String> = if text.is_empty() {
        let mut st = c.prepare_cached(
            "SELECT detail FROM messages WHERE time >= ?1 AND time < ?2 AND (?4 = '' OR node = ?4) ORDER BY time DESC, rowid DESC LIMIT ?3",
        )?;
        st.query_map(params![ts(q.from), ts(to), limit, q.node], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
    } else {
        // Each term uses its own index; SQLite unions them.
        let mut st = c.prepare_cached(
            "SELECT detail FROM messages
             WHERE (event_id = ?1 OR message_id = ?2 OR message_id = ?3 OR sender = ?2 OR client_ip = ?1
                    OR event_id IN (SELECT event_id FROM message_recipients WHERE recipient = ?2))
               AND time >= ?4 AND time < ?5 AND (?7 = '' OR node = ?7)
             ORDER BY time DESC, rowid DESC LIMIT ?6",
        )?;
        let bracketed = format!("<{bare}>");
        st.query_map(params![text, bare, bracketed, ts(q.from), ts(to), limit, q.node], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
    };
    details.iter().map(|d| Ok(from_json::<MessageRecord>(d)?.into())).collect()
}

/// The timeline of a queue id or event id; `None` when nothing is known.
pub fn get(c: &Connection, id: &str) -> Result<Option<Timeline>> {
    let message: Option<MessageRecord> = c
        .query_row("SELECT detail FROM messages WHERE event_id = ?1 LIMIT 1", params![id], |r| r.get::<_, String>(0))
        .optional()?
        .map(|d| from_json(&d))
        .transpose()?;
    let queue_id = message.as_ref().and_then(|m| m.queue_id.clone()).unwrap_or_else(|| id.to_string());
    let mut st = c.prepare_cached("SELECT detail FROM message_events WHERE queue_id = ?1 ORDER BY time, rowid")?;
    let events =
        st.query_map(params![queue_id], |r| r.get::<_, String>(0))?.map(|d| from_json(&d?)).collect::<Result<Vec<TimelineEvent>>>()?;
    if message.is_none() && events.is_empty() {
        return Ok(None);
    }
    Ok(Some(Timeline { message, events }))
}

/// The hourly counters in `[from, to)`, oldest first; hours without
/// traffic are left out.
pub fn traffic(c: &Connection, from: u64, to: u64) -> Result<Vec<TrafficHour>> {
    let mut st = c.prepare_cached("SELECT hour, counter, n FROM traffic_hourly WHERE hour >= ?1 AND hour < ?2 ORDER BY hour")?;
    let rows =
        st.query_map(params![ts(from - from % HOUR), ts(to)], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, String>(1)?, r.get::<_, u64>(2)?)))?;
    let mut out: Vec<TrafficHour> = Vec::new();
    for row in rows {
        let (hour, counter, n) = row?;
        if out.last().is_none_or(|h| h.hour != hour) {
            out.push(TrafficHour { hour, ..Default::default() });
        }
        if let Some(slot) = out.last_mut().and_then(|h| h.slot(&counter)) {
            *slot += n;
        }
    }
    Ok(out)
}

/// Look-alike findings that resembled `resembles` in `[from, to)`, newest first.
pub fn lookalikes(c: &Connection, resembles: &str, from: u64, to: u64, limit: usize) -> Result<Vec<LookalikeHit>> {
    let mut st = c.prepare_cached(
        "SELECT time, domain, resembles, rule, identity, client_ip, event_id FROM lookalike_hits
         WHERE resembles = ?1 AND time >= ?2 AND time < ?3 ORDER BY time DESC LIMIT ?4",
    )?;
    let rows = st.query_map(params![resembles, ts(from), ts(to), limit.clamp(1, 1000) as i64], |r| {
        Ok(LookalikeHit {
            time: r.get(0)?,
            domain: r.get(1)?,
            resembles: r.get(2)?,
            rule: r.get(3)?,
            identity: r.get(4)?,
            client_ip: r.get(5)?,
            event_id: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::super::sqlite::{FILE, Sqlite};
    use super::super::{Event, Store};
    use super::*;

    fn message(time: u64, id: &str, queued: bool, action: &str, rcpt: &str) -> Event {
        Event::Timeline(Box::new(TimelineEvent::Message(MessageRecord {
            time,
            event_id: id.into(),
            queue_id: queued.then(|| id.to_string()),
            inbound: true,
            client_ip: "192.0.2.7".into(),
            sender: "Alice@Sender.test".into(),
            recipients: vec![rcpt.into()],
            message_id: format!("<{id}@sender.test>"),
            action: action.into(),
            lookalike: vec![LookalikeHit {
                domain: "exarnple.test".into(),
                resembles: "example.test".into(),
                rule: "confusable".into(),
                identity: "from".into(),
                ..Default::default()
            }],
            ..Default::default()
        })))
    }

    #[test]
    fn timelines_are_found_counted_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Sqlite::open(&dir.path().join(FILE), "n1").unwrap();
        let hour = 1_800_000_000 - 1_800_000_000 % HOUR;
        let attempt = AttemptRecord {
            time: hour + 60,
            queue_id: "Q1".into(),
            mx_host: "mx.example.test[192.0.2.9]:25".into(),
            tls: true,
            recipients: vec![
                RecipientResult { address: "bob@example.test".into(), outcome: "deferred".into(), reply: "451 4.7.1 later".into() },
                RecipientResult { address: "carol@example.test".into(), outcome: "delivered".into(), reply: "250 ok".into() },
            ],
        };
        store
            .write(&[
                message(hour + 10, "Q1", true, "accepted", "bob@example.test"),
                message(hour + 20, "r-00000000000000aa", false, "refused", "carol@example.test"),
                message(hour + 3700, "Q2", true, "quarantined", "dave@example.test"),
                Event::Timeline(Box::new(TimelineEvent::Attempt(attempt))),
            ])
            .unwrap();
        let find = |text: &str| {
            store
                .find_messages(&MessageQuery { text: text.into(), limit: 10, ..Default::default() })
                .unwrap()
                .into_iter()
                .map(|m| m.event_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(find("alice@sender.test"), ["Q2", "r-00000000000000aa", "Q1"]);
        assert_eq!(find("CAROL@example.test"), ["r-00000000000000aa"]);
        assert_eq!(find("Q1@sender.test"), ["Q1"]);
        assert_eq!(find("<Q2@sender.test>"), ["Q2"]);
        assert_eq!(find("192.0.2.7").len(), 3);
        assert!(find("nobody@example.test").is_empty());
        let t = store.timeline("Q1").unwrap().unwrap();
        assert_eq!(t.message.unwrap().action, "accepted");
        assert!(matches!(&t.events[..], [TimelineEvent::Attempt(a)] if a.recipients[0].reply == "451 4.7.1 later"));
        assert!(store.timeline("r-00000000000000aa").unwrap().unwrap().events.is_empty());
        assert!(store.timeline("nothing").unwrap().is_none());

        let traffic = store.traffic(hour, hour + 2 * HOUR).unwrap();
        assert_eq!(traffic.len(), 2);
        let h = &traffic[0];
        assert_eq!((h.received_inbound, h.accepted, h.refused, h.delivered, h.deferred), (2, 1, 1, 1, 1));
        assert_eq!((traffic[1].accepted, traffic[1].quarantined), (1, 1));
        assert_eq!(store.lookalikes("example.test", 0, u64::MAX, 10).unwrap().len(), 3);

        store.prune(hour + 3600).unwrap();
        assert_eq!(find(""), ["Q2"]);
        assert_eq!(store.traffic(0, u64::MAX).unwrap().len(), 1);
        assert_eq!(store.lookalikes("example.test", 0, u64::MAX, 10).unwrap().len(), 1);
    }
}
