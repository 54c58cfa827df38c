//! VERP addresses: the per-message, per-recipient envelope sender
//! `bounces+<queue id>-<recipient index>-<mac>@<return path domain>` of
//! submitted mail, so an asynchronous bounce names its message and
//! recipient without parsing guesswork.
//!
//! The mac is HMAC-SHA256 (truncated to 80 bits, hex) over the queue id
//! and index with a secret generated on first start (`DATA_DIR/verp.key`,
//! mode 0600): nobody can make us file a bounce against a message, or
//! suppress a recipient, with an address of their own making. Hex only,
//! so receivers that change the case of a local part do not break it. A
//! token is good until `lifetime` after its queue id's time (the queue id
//! carries when the message arrived).
//!
//! May import: `mailgate-core`.

use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use mailgate_core::QueueId;
use ring::hmac;

/// The local part's prefix; `bounces+...` local parts of the return-path
/// domains are ours when VERP is on.
pub const PREFIX: &str = "bounces+";
/// The secret's file in `data_dir`.
pub const KEY_FILE: &str = "verp.key";
/// Octets of the HMAC kept (80 bits: a forger needs 2^80 guesses).
const MAC_LEN: usize = 10;

/// Why a VERP local part is not ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerpError {
    #[error("not a VERP address (expected bounces+<queue id>-<index>-<mac>)")]
    Malformed,
    #[error("VERP token does not verify")]
    Forged,
    #[error("VERP token expired")]
    Expired,
}

/// Encodes and checks VERP tokens with one secret.
pub struct Verp {
    key: hmac::Key,
    /// Seconds a token stays good after its message arrived.
    lifetime: u64,
}

impl Verp {
    pub fn new(secret: &[u8], lifetime: u64) -> Verp {
        Verp { key: hmac::Key::new(hmac::HMAC_SHA256, secret), lifetime }
    }

    fn mac(&self, id: &QueueId, index: usize) -> String {
        let tag = hmac::sign(&self.key, format!("{}-{index}", id.as_str()).as_bytes());
        tag.as_ref()[..MAC_LEN].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The local part for recipient `index` of message `id`.
    pub fn local_part(&self, id: &QueueId, index: usize) -> String {
        format!("{PREFIX}{}-{index}-{}", id.as_str().to_ascii_lowercase(), self.mac(id, index))
    }

    /// The queue id and recipient index a local part names, if it is a
    /// token of ours that has not expired at `now` (Unix seconds).
    pub fn decode(&self, local_part: &str, now: u64) -> Result<(QueueId, usize), VerpError> {
        if !is_verp(local_part) {
            return Err(VerpError::Malformed);
        }
        let rest = local_part.get(PREFIX.len()..).ok_or(VerpError::Malformed)?;
        let mut fields = rest.split('-');
        let (Some(id), Some(index), Some(mac), None) = (fields.next(), fields.next(), fields.next(), fields.next()) else {
            return Err(VerpError::Malformed);
        };
        let id = QueueId::parse(&id.to_ascii_uppercase()).ok_or(VerpError::Malformed)?;
        if index.is_empty() || index.len() > 6 || !index.bytes().all(|b| b.is_ascii_digit()) || (index.len() > 1 && index.starts_with('0'))
        {
            return Err(VerpError::Malformed);
        }
        let index: usize = index.parse().map_err(|_| VerpError::Malformed)?;
        let mac = mac.to_ascii_lowercase();
        if mac.len() != 2 * MAC_LEN {
            return Err(VerpError::Malformed);
        }
        let want = self.mac(&id, index);
        // Constant time: the mac is the secret-dependent part.
        if !bool::from(subtle::ConstantTimeEq::ct_eq(want.as_bytes(), mac.as_bytes())) {
            return Err(VerpError::Forged);
        }
        let arrived = queue_time(&id);
        if arrived > now.saturating_add(86_400) || now.saturating_sub(arrived) > self.lifetime {
            return Err(VerpError::Expired);
        }
        Ok((id, index))
    }
}

/// A local part in VERP form (ours or not).
pub fn is_verp(local_part: &str) -> bool {
    local_part.get(..PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

/// When a queue id was made, Unix seconds: its first 14 hex digits are
/// the microseconds (`QueueId::new`).
fn queue_time(id: &QueueId) -> u64 {
    id.as_str().get(..14).and_then(|h| u64::from_str_radix(h, 16).ok()).map_or(0, |us| us / 1_000_000)
}

/// Reads `DATA_DIR/verp.key`, creating it (32 random octets, hex, mode
/// 0600) on first start. A key readable by others stops the start.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join(KEY_FILE);
    match create(&path) {
        Ok(key) => {
            tracing::info!(path = %path.display(), "created the VERP secret");
            return Ok(key);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(anyhow::anyhow!("cannot create the VERP secret {}: {e}", path.display())),
    }
    let mode = std::fs::metadata(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        anyhow::bail!("{} is readable by other users (mode {:o}); run `chmod 600 {}`", path.display(), mode & 0o777, path.display());
    }
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(4096).read_to_string(&mut text))
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let key = unhex(text.trim()).filter(|k| k.len() >= 16);
    key.ok_or_else(|| anyhow::anyhow!("{}: expected at least 32 hex digits on one line", path.display()))
}

fn create(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = [0u8; 32];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes).map_err(io::Error::other)?;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    f.write_all(format!("{hex}\n").as_bytes())?;
    f.sync_all()?;
    Ok(bytes.to_vec())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn id_at(secs: u64) -> QueueId {
        QueueId::new(secs * 1_000_000, 7)
    }

    #[test]
    fn round_trip_any_case() {
        let v = Verp::new(b"0123456789abcdef", 86_400);
        let id = id_at(NOW - 60);
        let lp = v.local_part(&id, 3);
        assert!(lp.starts_with("bounces+") && lp.len() <= 64, "{lp}");
        assert_eq!(v.decode(&lp, NOW), Ok((id.clone(), 3)));
        assert_eq!(v.decode(&lp.to_ascii_uppercase(), NOW), Ok((id, 3)));
    }

    #[test]
    fn forged_and_expired_and_malformed() {
        let v = Verp::new(b"0123456789abcdef", 86_400);
        let other = Verp::new(b"another secret!!", 86_400);
        let id = id_at(NOW - 60);
        assert_eq!(v.decode(&other.local_part(&id, 0), NOW), Err(VerpError::Forged));
        // The mac of recipient 0 does not cover recipient 1.
        let lp = v.local_part(&id, 0).replacen(
            &format!("{}-0-", id.as_str().to_ascii_lowercase()),
            &format!("{}-1-", id.as_str().to_ascii_lowercase()),
            1,
        );
        assert_eq!(v.decode(&lp, NOW), Err(VerpError::Forged));
        let old = id_at(NOW - 2 * 86_400);
        assert_eq!(v.decode(&v.local_part(&old, 0), NOW), Err(VerpError::Expired));
        let future = id_at(NOW + 3 * 86_400);
        assert_eq!(v.decode(&v.local_part(&future, 0), NOW), Err(VerpError::Expired));
        for bad in [
            "bob",
            "bounces+",
            "bounces+x-1-aa",
            "bounces+00000000000000000000-01-00000000000000000000",
            "bounces+a-b-c-d",
            "bounces+\u{e9}",
        ] {
            assert_eq!(v.decode(bad, NOW), Err(VerpError::Malformed), "{bad}");
        }
    }

    #[test]
    fn secret_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap(), a);
        std::fs::set_permissions(dir.path().join(KEY_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create(dir.path()).is_err());
    }
}
