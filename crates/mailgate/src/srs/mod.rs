//! Forwarding with the Sender Rewriting Scheme: mail for a `[[forward]]`
//! address is relayed on to its targets with the envelope sender rewritten
//! into our `[srs] domain` ([`codec`]), so the final receiver's SPF check
//! of the sender passes (that domain's SPF covers us); a bounce to such an
//! address comes back to us, is checked (hash, age) and goes on to the
//! original sender; a forged or expired one is refused at RCPT.
//!
//! The secret: `[srs] secret_file`, or `data_dir/srs.secret` created on
//! first start (mode 0600). One secret a line: the first signs, every
//! line verifies (list the old one second when rotating).
//!
//! May import: `config`, `mailgate-core`. Used by `checks` (RCPT) and
//! `inbound` (expanding the envelope before the spool).

pub mod codec;
mod forward;

use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use mailgate_core::{Domain, Mailbox};

use crate::config::SrsConfig;
pub use codec::SrsError;
pub use forward::{Expanded, Forwarding};

/// The secret file in `data_dir` when `[srs] secret_file` is not given.
pub const SECRET_FILE: &str = "srs.secret";

/// The SRS rewriter of one server: our domain, the secrets, the age limit.
pub struct Srs {
    domain: Domain,
    /// The first signs; all verify.
    secrets: Vec<Vec<u8>>,
    max_age_days: u64,
}

impl Srs {
    /// Reads the secrets (creating `data_dir/srs.secret` if it is the one
    /// and is missing).
    pub fn load(config: &SrsConfig, data_dir: &Path) -> anyhow::Result<Srs> {
        let path = match &config.secret_file {
            Some(p) => p.clone(),
            None => {
                let p = data_dir.join(SECRET_FILE);
                create_if_missing(&p)?;
                p
            }
        };
        Ok(Srs::new(config.domain.clone(), read_secrets(&path)?, config.max_age_days))
    }

    pub fn new(domain: Domain, secrets: Vec<Vec<u8>>, max_age_days: u64) -> Srs {
        Srs { domain, secrets, max_age_days }
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The rewritten envelope sender for mail from `sender` that we
    /// forward. A sender already in our SRS domain, or one whose rewritten
    /// form would not be a valid address (too long), is kept.
    pub fn rewrite(&self, sender: &Mailbox) -> Mailbox {
        let Some(domain) = sender.domain() else { return sender.clone() };
        if domain.same_name(&self.domain) {
            return sender.clone();
        }
        let Some(secret) = self.secrets.first() else { return sender.clone() };
        let local = codec::forward(secret, sender.local_part(), &domain.to_ascii(), today());
        Mailbox::from_parts(&local, self.domain.clone()).unwrap_or_else(|_| sender.clone())
    }

    /// For a recipient in our SRS domain with an SRS local part: the
    /// address it stands for, or why it is refused. `None` for any other
    /// recipient.
    pub fn reverse(&self, rcpt: &Mailbox) -> Option<Result<Mailbox, SrsError>> {
        if !rcpt.domain().is_some_and(|d| d.same_name(&self.domain)) {
            return None;
        }
        match codec::reverse(&self.secrets, rcpt.local_part(), today(), self.max_age_days) {
            Err(SrsError::NotSrs) => None,
            Err(e) => Some(Err(e)),
            Ok((local, host)) => Some(
                Domain::parse(&host, true)
                    .ok()
                    .and_then(|d| Mailbox::from_parts(&local, d).ok())
                    .ok_or(SrsError::Malformed("the original address is not valid")),
            ),
        }
    }
}

/// Days since the Unix epoch.
fn today() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() / 86400).unwrap_or(0)
}

/// Creates a secret file of 32 random bytes (hex) with mode 0600, unless
/// it exists.
fn create_if_missing(path: &Path) -> anyhow::Result<()> {
    let mut bytes = [0u8; 32];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes).map_err(io::Error::other)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut f) => {
            f.write_all(format!("{hex}\n").as_bytes())?;
            f.sync_all()?;
            tracing::info!(path = %path.display(), "created the SRS secret");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create the SRS secret file {}", path.display())),
    }
}

/// One secret a line (blank lines and `#` comments skipped); the file must
/// not be readable by others.
fn read_secrets(path: &PathBuf) -> anyhow::Result<Vec<Vec<u8>>> {
    let mode = std::fs::metadata(path).with_context(|| format!("cannot read the SRS secret file {}", path.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!("{} is readable by other users (mode {:o}); run `chmod 600 {}`", path.display(), mode & 0o777, path.display());
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_string(&mut text))
        .with_context(|| format!("cannot read the SRS secret file {}", path.display()))?;
    let secrets: Vec<Vec<u8>> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(|l| l.as_bytes().to_vec()).collect();
    match secrets.first() {
        Some(s) if s.len() >= 16 => Ok(secrets),
        _ => {
            bail!("{}: expected a secret of at least 16 characters on its first line (one secret a line, the first signs)", path.display())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srs_in(dir: &Path) -> Srs {
        let config = SrsConfig { domain: Domain::parse("srs.example.test", false).unwrap(), secret_file: None, max_age_days: 21 };
        Srs::load(&config, dir).unwrap()
    }

    #[test]
    fn the_secret_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let srs = srs_in(dir.path());
        let path = dir.path().join(SECRET_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let first = std::fs::read_to_string(&path).unwrap();
        // A restart keeps it: addresses made before still reverse.
        let alice = Mailbox::parse("alice@origin.example", false).unwrap();
        let rewritten = srs.rewrite(&alice);
        let again = srs_in(dir.path());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        assert_eq!(again.reverse(&rewritten), Some(Ok(alice)));
    }

    #[test]
    fn old_secrets_verify_and_readable_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let write = |text: &str, mode: u32| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let domain = Domain::parse("srs.example.test", false).unwrap();
        let config = SrsConfig { domain, secret_file: Some(path.clone()), max_age_days: 21 };
        write("old-secret-0123456789\n", 0o600);
        let alice = Mailbox::parse("alice@origin.example", false).unwrap();
        let made_with_old = Srs::load(&config, dir.path()).unwrap().rewrite(&alice);
        write("# rotated\nnew-secret-0123456789\nold-secret-0123456789\n", 0o600);
        let srs = Srs::load(&config, dir.path()).unwrap();
        assert_eq!(srs.reverse(&made_with_old), Some(Ok(alice.clone())));
        assert_ne!(srs.rewrite(&alice), made_with_old, "the new secret signs");
        write("new-secret-0123456789\n", 0o644);
        assert!(Srs::load(&config, dir.path()).err().unwrap().to_string().contains("readable by other users"));
        write("short\n", 0o600);
        assert!(Srs::load(&config, dir.path()).is_err());
    }

    #[test]
    fn only_srs_addresses_in_our_domain_are_reversed() {
        let dir = tempfile::tempdir().unwrap();
        let srs = srs_in(dir.path());
        let plain = Mailbox::parse("postmaster@srs.example.test", false).unwrap();
        assert_eq!(srs.reverse(&plain), None);
        let elsewhere = Mailbox::parse("SRS0=abcd=AA=x.example=y@other.example", false).unwrap();
        assert_eq!(srs.reverse(&elsewhere), None);
        let forged = Mailbox::parse("SRS0=abcd=AA=x.example=y@SRS.example.test", false).unwrap();
        assert_eq!(srs.reverse(&forged), Some(Err(SrsError::BadHash)));
        // Our own SRS addresses are not rewritten again.
        let ours = Mailbox::parse("SRS0=abcd=AA=x.example=y@srs.example.test", false).unwrap();
        assert_eq!(srs.rewrite(&ours), ours);
    }
}
