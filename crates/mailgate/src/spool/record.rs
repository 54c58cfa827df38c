//! The on-disk record format of spool segments.
//!
//! ```text
//! "MGR1" | kind u8 | len u32 LE | payload (len bytes) | crc32 u32 LE | "MGE\n"
//! ```
//!
//! The CRC covers kind, length and payload. A record counts only when its
//! magic, length, checksum and end marker all agree, so a torn write at the
//! end of a segment, or a flipped bit anywhere, is detected, not replayed.

use mailgate_core::{Envelope, QueueId};

pub const MAGIC: &[u8; 4] = b"MGR1";
pub const END: &[u8; 4] = b"MGE\n";
pub const OVERHEAD: usize = 4 + 1 + 4 + 4 + 4;
const ID_LEN: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A message: id, envelope (JSON) and content.
    Message = 1,
    /// The message is gone: delivered, bounced, expired or deleted.
    Remove = 2,
    /// A new envelope state (recipient statuses) for a stored message.
    Update = 3,
    /// A message whose body is in a file of its own (`spool/msg/<id>`):
    /// id, the file range, envelope (JSON) and the header block in front.
    External = 4,
}

/// A decoded record, borrowing from the segment bytes.
#[derive(Debug)]
pub enum Record<'a> {
    Message {
        id: QueueId,
        envelope: Envelope,
        data_offset: usize,
        data: &'a [u8],
    },
    Remove {
        id: QueueId,
    },
    /// `data` is the prefix; the rest of the content is `len` octets of
    /// the message file from `start`.
    External {
        id: QueueId,
        envelope: Envelope,
        data_offset: usize,
        data: &'a [u8],
        start: u64,
        len: u64,
    },
    /// `env_len` is the length of the envelope JSON at [`UPDATE_ENV_OFFSET`].
    Update {
        id: QueueId,
        envelope: Envelope,
        env_len: usize,
    },
}

/// Why bytes at some offset are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Corruption {
    /// The segment ends inside a record: a write that never completed.
    Truncated,
    BadMagic,
    BadChecksum,
    BadEndMarker,
    BadPayload(String),
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Corruption::Truncated => f.write_str("incomplete record at end of file"),
            Corruption::BadMagic => f.write_str("bad record magic"),
            Corruption::BadChecksum => f.write_str("checksum mismatch"),
            Corruption::BadEndMarker => f.write_str("bad end marker"),
            Corruption::BadPayload(why) => write!(f, "bad payload: {why}"),
        }
    }
}

fn frame(kind: Kind, payload_len: usize, out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    out.reserve(OVERHEAD + payload_len);
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    fill(out);
    debug_assert_eq!(out.len() - start - 9, payload_len);
    let crc = crc32fast::hash(&out[start + 4..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(END);
}

/// Where the envelope JSON sits inside a record's bytes.
pub const MESSAGE_ENV_OFFSET: usize = 9 + ID_LEN + 4;
pub const UPDATE_ENV_OFFSET: usize = 9 + ID_LEN;
pub const EXTERNAL_ENV_OFFSET: usize = 9 + ID_LEN + 16 + 4;

/// Encodes a message record; returns the bytes and the offset of the
/// message content inside them (the envelope starts at
/// [`MESSAGE_ENV_OFFSET`] and ends there).
pub fn encode_message(id: &QueueId, envelope: &Envelope, data: &[u8]) -> (Vec<u8>, usize) {
    let env = serde_json::to_vec(envelope).unwrap_or_default(); // ok: serializing our own types cannot fail
    let payload_len = ID_LEN + 4 + env.len() + data.len();
    let mut out = Vec::new();
    frame(Kind::Message, payload_len, &mut out, |out| {
        out.extend_from_slice(id.as_str().as_bytes());
        out.extend_from_slice(&(env.len() as u32).to_le_bytes());
        out.extend_from_slice(&env);
        out.extend_from_slice(data);
    });
    (out, 9 + ID_LEN + 4 + env.len())
}

/// Encodes an external message record; returns the bytes and the offset
/// of the prefix inside them (the envelope starts at
/// [`EXTERNAL_ENV_OFFSET`] and ends there).
pub fn encode_external(id: &QueueId, envelope: &Envelope, prefix: &[u8], start: u64, len: u64) -> (Vec<u8>, usize) {
    let env = serde_json::to_vec(envelope).unwrap_or_default(); // ok: serializing our own types cannot fail
    let payload_len = ID_LEN + 16 + 4 + env.len() + prefix.len();
    let mut out = Vec::new();
    frame(Kind::External, payload_len, &mut out, |out| {
        out.extend_from_slice(id.as_str().as_bytes());
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(env.len() as u32).to_le_bytes());
        out.extend_from_slice(&env);
        out.extend_from_slice(prefix);
    });
    (out, EXTERNAL_ENV_OFFSET + env.len())
}

pub fn encode_remove(id: &QueueId) -> Vec<u8> {
    let mut out = Vec::new();
    frame(Kind::Remove, ID_LEN, &mut out, |out| out.extend_from_slice(id.as_str().as_bytes()));
    out
}

pub fn encode_update(id: &QueueId, envelope: &Envelope) -> Vec<u8> {
    let env = serde_json::to_vec(envelope).unwrap_or_default(); // ok: as above
    let mut out = Vec::new();
    frame(Kind::Update, ID_LEN + env.len(), &mut out, |out| {
        out.extend_from_slice(id.as_str().as_bytes());
        out.extend_from_slice(&env);
    });
    out
}

/// For a message record whose checksum fails, whether its header (magic,
/// kind, length, id) still frames it: the id and the record's length. This
/// is how a record whose content was punched out looks (see `punch`).
pub fn framed_message(buf: &[u8]) -> Option<(QueueId, usize)> {
    if buf.len() < 9 + ID_LEN || &buf[..4] != MAGIC || buf[4] != Kind::Message as u8 {
        return None;
    }
    let len = u32::from_le_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
    if len < ID_LEN + 4 || buf.len() < OVERHEAD + len {
        return None;
    }
    let id = std::str::from_utf8(&buf[9..9 + ID_LEN]).ok().and_then(QueueId::parse)?;
    Some((id, OVERHEAD + len))
}

/// Decodes the record at the start of `buf`; returns it and its length.
pub fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), Corruption> {
    if buf.len() < 9 {
        return Err(if MAGIC.starts_with(&buf[..buf.len().min(4)]) { Corruption::Truncated } else { Corruption::BadMagic });
    }
    if &buf[..4] != MAGIC {
        return Err(Corruption::BadMagic);
    }
    let kind = buf[4];
    let len = u32::from_le_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
    let total = OVERHEAD + len;
    if buf.len() < total {
        return Err(Corruption::Truncated);
    }
    let payload = &buf[9..9 + len];
    let crc = u32::from_le_bytes([buf[9 + len], buf[10 + len], buf[11 + len], buf[12 + len]]);
    if crc32fast::hash(&buf[4..9 + len]) != crc {
        return Err(Corruption::BadChecksum);
    }
    if &buf[13 + len..total] != END {
        return Err(Corruption::BadEndMarker);
    }
    let bad = |why: &str| Corruption::BadPayload(why.to_string());
    let id = payload.get(..ID_LEN).and_then(|b| std::str::from_utf8(b).ok()).and_then(QueueId::parse).ok_or_else(|| bad("queue id"))?;
    let rest = &payload[ID_LEN..];
    let record = match kind {
        k if k == Kind::Message as u8 => {
            let env_len = rest.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).ok_or_else(|| bad("length"))?;
            let env_bytes = rest.get(4..4 + env_len).ok_or_else(|| bad("envelope length"))?;
            let envelope = serde_json::from_slice(env_bytes).map_err(|e| bad(&e.to_string()))?;
            let data_offset = 9 + ID_LEN + 4 + env_len;
            Record::Message { id, envelope, data_offset, data: &buf[data_offset..9 + len] }
        }
        k if k == Kind::External as u8 => {
            let u64_at = |at: usize| rest.get(at..at + 8).map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
            let (start, body_len) = u64_at(0).zip(u64_at(8)).ok_or_else(|| bad("file range"))?;
            let env_len = rest.get(16..20).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).ok_or_else(|| bad("length"))?;
            let env_bytes = rest.get(20..20 + env_len).ok_or_else(|| bad("envelope length"))?;
            let envelope = serde_json::from_slice(env_bytes).map_err(|e| bad(&e.to_string()))?;
            let data_offset = EXTERNAL_ENV_OFFSET + env_len;
            let data = buf.get(data_offset..9 + len).ok_or_else(|| bad("envelope length"))?;
            Record::External { id, envelope, data_offset, data, start, len: body_len }
        }
        k if k == Kind::Remove as u8 => Record::Remove { id },
        k if k == Kind::Update as u8 => {
            let envelope = serde_json::from_slice(rest).map_err(|e| bad(&e.to_string()))?;
            Record::Update { id, envelope, env_len: rest.len() }
        }
        _ => return Err(bad("unknown kind")),
    };
    Ok((record, total))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use mailgate_core::envelope::ClientInfo;
    use mailgate_core::{Mailbox, Recipient, ReversePath};

    pub(crate) fn envelope() -> Envelope {
        Envelope {
            sender: ReversePath::Null,
            recipients: vec![Recipient::new(Mailbox::parse("b@example.test", false).unwrap())],
            body: Default::default(),
            smtputf8: false,
            ret: None,
            envid: None,
            client: ClientInfo {
                ip: "127.0.0.1".parse().unwrap(),
                helo: "c".into(),
                authenticated_as: None,
                tls: None,
                listener: "mx".into(),
            },
            received_at: 1,
            delay_warned: false,
            quarantine: false,
        }
    }

    #[test]
    fn round_trip_and_corruption() {
        let id = QueueId::new(1, 2);
        let (bytes, off) = encode_message(&id, &envelope(), b"hello\r\n");
        let (rec, len) = decode(&bytes).unwrap();
        assert_eq!(len, bytes.len());
        match rec {
            Record::Message { id: got, data, data_offset, .. } => {
                assert_eq!(got, id);
                assert_eq!(data, b"hello\r\n");
                assert_eq!(data_offset, off);
            }
            _ => panic!("wrong kind"),
        }
        assert_eq!(decode(&bytes[..bytes.len() - 1]).unwrap_err(), Corruption::Truncated);
        let mut flipped = bytes.clone();
        flipped[off] ^= 1;
        assert_eq!(decode(&flipped).unwrap_err(), Corruption::BadChecksum);
        let mut end = bytes.clone();
        let n = end.len();
        end[n - 1] = b'x';
        assert_eq!(decode(&end).unwrap_err(), Corruption::BadEndMarker);
        // Content punched out: still framed by its header, with its id.
        let mut punched = bytes.clone();
        punched[off..].fill(0);
        assert!(decode(&punched).is_err());
        assert_eq!(framed_message(&punched), Some((id.clone(), bytes.len())));
        assert_eq!(framed_message(&punched[..bytes.len() - 1]), None);
        let mut torn = punched.clone();
        torn[2] = 0;
        assert_eq!(framed_message(&torn), None);
    }
}
