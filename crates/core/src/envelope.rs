//! The envelope: everything about a message that is not its content, stored
//! with it in the spool and carried to delivery and bounces.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::address::{Mailbox, ReversePath};

/// A queue identifier: 20 upper-case hex digits, time-ordered. It appears in
/// `Received:` headers, logs, the API and the spool.
///
/// Held inline (20 bytes, no heap allocation): the spool index and the
/// scheduler keep one or more per queued message, and with a million queued
/// a `String` costs over 100 MB more.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId([u8; QueueId::LEN]);

const HEX: &[u8; 16] = b"0123456789ABCDEF";

impl QueueId {
    const LEN: usize = 20;

    /// Builds an id from a microsecond timestamp and a sequence number.
    pub fn new(unix_micros: u64, seq: u32) -> Self {
        // 14 hex digits of the time (56 bits: until the year 4254), then 6
        // of the sequence; upper-case hex sorts bytewise as it does by value.
        let mut id = [b'0'; Self::LEN];
        let value = (u128::from(unix_micros & ((1 << 56) - 1)) << 24) | u128::from(seq & 0xFF_FFFF);
        for (i, b) in id.iter_mut().enumerate() {
            *b = HEX[((value >> (4 * (Self::LEN - 1 - i))) & 0xF) as usize];
        }
        QueueId(id)
    }

    /// Parses an id given by a user or read from disk.
    pub fn parse(s: &str) -> Option<Self> {
        let bytes: [u8; Self::LEN] = s.as_bytes().try_into().ok()?;
        bytes.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)).then_some(QueueId(bytes))
    }

    pub fn as_str(&self) -> &str {
        // Only `new` and `parse` build ids, and both hold ASCII hex digits.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueueId({:?})", self.as_str())
    }
}

impl Serialize for QueueId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for QueueId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        QueueId::parse(&s).ok_or_else(|| serde::de::Error::custom("expected a queue id of 20 upper-case hex digits"))
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
        assert_eq!(QueueId::new(0x0006_61F1_7B80_6DFC, 0x678A).as_str(), "0661F17B806DFC00678A");
        assert!(QueueId::new(1, 0xFF_FFFF) < QueueId::new(2, 0));
    }
}
