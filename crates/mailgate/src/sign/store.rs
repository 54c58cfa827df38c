//! DKIM keys on disk: `data_dir/dkim/<domain>/<selector>.pem` (mode 0600)
//! and `keys.json` with each key's algorithm, state and dates.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use mailgate_core::dkim::Algorithm;
use serde::{Deserialize, Serialize};

use super::key::DkimKey;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published or about to be; not used for signing until DNS matches.
    Pending,
    Active,
    /// No longer used for signing; its DNS record stays published for the
    /// overlap, so mail signed with it can still be verified.
    Retiring,
    /// Past the overlap: the DNS record can be removed.
    Retired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub selector: String,
    /// `ed25519` or `rsa2048`.
    pub algorithm: String,
    pub state: KeyState,
    pub created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_since: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeysFile {
    keys: Vec<KeyInfo>,
}

pub fn domain_dir(data_dir: &Path, domain: &str) -> PathBuf {
    data_dir.join("dkim").join(domain)
}

pub fn list(data_dir: &Path, domain: &str) -> anyhow::Result<Vec<KeyInfo>> {
    let path = domain_dir(data_dir, domain).join("keys.json");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(serde_json::from_str::<KeysFile>(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?.keys),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

pub fn load_key(data_dir: &Path, domain: &str, selector: &str) -> anyhow::Result<DkimKey> {
    let pem = load_pem(data_dir, domain, selector)?;
    let path = domain_dir(data_dir, domain).join(format!("{selector}.pem"));
    DkimKey::from_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn load_pem(data_dir: &Path, domain: &str, selector: &str) -> anyhow::Result<String> {
    let path = domain_dir(data_dir, domain).join(format!("{selector}.pem"));
    fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Writes a private key (mode 0600), creating the domain's directory.
pub fn write_pem(data_dir: &Path, domain: &str, selector: &str, pem: &str) -> anyhow::Result<()> {
    let dir = domain_dir(data_dir, domain);
    fs::create_dir_all(&dir)?;
    write_atomic(&dir.join(format!("{selector}.pem")), pem.as_bytes(), 0o600)?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub fn save(data_dir: &Path, domain: &str, keys: Vec<KeyInfo>) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(&KeysFile { keys })?;
    write_atomic(&domain_dir(data_dir, domain).join("keys.json"), &json, 0o644)?;
    Ok(())
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<KeyState> {
        [KeyState::Pending, KeyState::Active, KeyState::Retiring, KeyState::Retired].into_iter().find(|k| k.as_str() == s)
    }
}

pub fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::Ed25519Sha256 => "ed25519",
        Algorithm::RsaSha256 => "rsa2048",
    }
}

/// `mgYYYYMMe` / `mgYYYYMMr`, with a suffix if that name is taken.
pub fn default_selector(existing: &[KeyInfo], algorithm: Algorithm, now: u64) -> String {
    let (y, m, _) = civil_date(now);
    let letter = if algorithm == Algorithm::Ed25519Sha256 { 'e' } else { 'r' };
    let base = format!("mg{y:04}{m:02}{letter}");
    let mut name = base.clone();
    let mut n = 2;
    while existing.iter().any(|k| k.selector == name) {
        name = format!("{base}{n}");
        n += 1;
    }
    name
}

/// Civil date (year, month, day) of a Unix time, UTC.
pub fn civil_date(secs: u64) -> (i64, i64, i64) {
    // Howard Hinnant's days-to-civil algorithm.
    let z = (secs / 86400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Creates a key in the files; returns its info and DNS record.
pub fn create(
    data_dir: &Path,
    domain: &str,
    algorithm: Algorithm,
    selector: Option<&str>,
    state: KeyState,
    now: u64,
) -> anyhow::Result<(KeyInfo, String)> {
    super::backend::create(&super::backend::Files::new(data_dir), domain, algorithm, selector, state, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_selectors() {
        // 2026-11-23
        assert_eq!(civil_date(1_795_392_000), (2026, 11, 23));
        assert_eq!(civil_date(0), (1970, 1, 1));
        let none = default_selector(&[], Algorithm::Ed25519Sha256, 1_795_392_000);
        assert_eq!(none, "mg202611e");
        let taken = vec![KeyInfo {
            selector: "mg202611r".into(),
            algorithm: "rsa2048".into(),
            state: KeyState::Active,
            created: 0,
            activated: None,
            retiring_since: None,
        }];
        assert_eq!(default_selector(&taken, Algorithm::RsaSha256, 1_795_392_000), "mg202611r2");
    }
}
