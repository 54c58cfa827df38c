//! The envelope: everything about a message that is not its content, stored
//! with it in the spool and carried to delivery and bounces.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::address::{Mailbox, ReversePath};

/// A queue identifier: 20 upper-case hex digits, time-ordered. It appears in
/// `Received:` headers, logs, the API and the spool.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QueueId(String);

impl QueueId {
    /// Builds an id from a microsecond timestamp and a sequence number.
    pub fn new(unix_micros: u64, seq: u32) -> Self {
        QueueId(format!("{unix_micros:014X}{:06X}", seq & 0xFF_FFFF))
    }

    /// Parses an id given by a user or read from disk.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))).then(|| QueueId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `BODY=` (RFC 6152).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

/// DSN `RET=` (RFC 3461 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ret {
    Full,
    Hdrs,
}

/// DSN `NOTIFY=` (RFC 3461 §4.1). `NEVER` is all three false.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    pub const NEVER: Notify = Notify { success: false, failure: false, delay: false };

    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("NEVER") {
            return Some(Notify::NEVER);
        }
        let mut n = Notify::NEVER;
        for word in s.split(',') {
            let flag = match word.to_ascii_uppercase().as_str() {
                "SUCCESS" => &mut n.success,
                "FAILURE" => &mut n.failure,
                "DELAY" => &mut n.delay,
                _ => return None,
            };
            if std::mem::replace(flag, true) {
                return None;
            }
        }
        Some(n)
    }
}

/// DSN `ORCPT=` (RFC 3461 §4.2), decoded from xtext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orcpt {
    pub addr_type: String,
    pub address: String,
}

/// Where a recipient stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    #[default]
    Scheduled,
    Delivered,
    Deferred,
    Failed,
}

impl RecipientStatus {
    pub fn is_final(self) -> bool {
        matches!(self, RecipientStatus::Delivered | RecipientStatus::Failed)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: Mailbox,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<Orcpt>,
    #[serde(default)]
    pub status: RecipientStatus,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<String>,
    /// The host that gave `last_reply` (DSN `Remote-MTA`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// When to try next, seconds since the epoch; 0 means at once.
    #[serde(default)]
    pub next_attempt: u64,
}

impl Recipient {
    pub fn new(address: Mailbox) -> Self {
        Recipient {
            address,
            notify: None,
            orcpt: None,
            status: RecipientStatus::Scheduled,
            attempts: 0,
            last_reply: None,
            remote: None,
            next_attempt: 0,
        }
    }

    /// Still to be delivered (scheduled or deferred).
    pub fn is_pending(&self) -> bool {
        !self.status.is_final()
    }
}

/// What we know about the client that handed us the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub ip: IpAddr,
    pub helo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated_as: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// The listener role that accepted the message (`mx`, `submission`...).
    pub listener: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub sender: ReversePath,
    pub recipients: Vec<Recipient>,
    #[serde(default)]
    pub body: BodyType,
    #[serde(default)]
    pub smtputf8: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    pub client: ClientInfo,
    /// Seconds since the Unix epoch when the message was accepted.
    #[serde(default)]
    pub received_at: u64,
    /// A delay warning has been sent for this message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay_warned: bool,
    /// The inbound checks quarantined it: it goes to `[policy].quarantine`
    /// instead of its recipients' next hop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quarantine: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_parse() {
        assert_eq!(Notify::parse("never"), Some(Notify::NEVER));
        assert_eq!(Notify::parse("FAILURE"), Some(Notify { success: false, failure: true, delay: false }));
        assert_eq!(Notify::parse("FAILURE,FAILURE"), None);
        assert_eq!(Notify::parse("NEVER,FAILURE"), None);
        assert_eq!(Notify::parse(""), None);
    }

    #[test]
    fn queue_id_round_trip() {
        let id = QueueId::new(1_700_000_000_000_000, 42);
        assert_eq!(QueueId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(id.as_str().len(), 20);
        assert_eq!(QueueId::parse("../etc/passwd"), None);
    }
}
