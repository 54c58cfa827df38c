//! Local delivery into Maildirs: one Maildir per local part under the
//! configured root, written tmp → fsync → rename into new → fsync.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use mailgate_core::client::Outcome;
use mailgate_core::reply::{Reply, StatusCode};
use mailgate_core::{Mailbox, ReversePath};

use crate::spool::Content;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A local part as a safe directory name: no path separators, no leading dot.
fn folder_name(local: &str) -> String {
    let mut name: String = local
        .chars()
        .map(|c| if c == '/' || c == '\\' || c == '\0' || c.is_control() { '_' } else { c })
        .collect::<String>()
        .to_lowercase();
    if name.starts_with('.') || name.is_empty() {
        name.insert(0, '_');
    }
    name
}

/// Delivers to every recipient; blocking, run it off the async runtime.
/// The content is copied from the spool a chunk at a time.
pub fn deliver(root: &Path, hostname: &str, sender: &ReversePath, recipients: &[Mailbox], content: &mut Content) -> Vec<Outcome> {
    recipients
        .iter()
        .map(|rcpt| match deliver_one(root, hostname, sender, rcpt, content) {
            Ok(path) => Outcome::Delivered(Reply::new(250, StatusCode::new(2, 0, 0), format!("delivered to {}", path.display()))),
            Err(e) => {
                let full = matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
                let status = if full { StatusCode::new(4, 2, 2) } else { StatusCode::new(4, 3, 0) };
                Outcome::Temporary(Reply::new(451, status, format!("maildir delivery failed: {e}")))
            }
        })
        .collect()
}

fn deliver_one(root: &Path, hostname: &str, sender: &ReversePath, rcpt: &Mailbox, content: &mut Content) -> std::io::Result<PathBuf> {
    let dir = root.join(folder_name(rcpt.local_part()));
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let unique = format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        hostname.replace(['/', ':'], "_")
    );
    let tmp = dir.join("tmp").join(&unique);
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let header = format!("Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n");
    content.rewind();
    let written = f.write_all(header.as_bytes()).and_then(|_| std::io::copy(content, &mut f)).and_then(|_| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    drop(f);
    let new = dir.join("new").join(&unique);
    fs::rename(&tmp, &new)?;
    File::open(dir.join("new"))?.sync_all()?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_into_new_and_sanitizes() {
        let root = tempfile::tempdir().unwrap();
        let rcpt = Mailbox::parse("\"../x\"@example.test", false).unwrap();
        let out = deliver(root.path(), "mx.test", &ReversePath::Null, &[rcpt], &mut Content::memory(b"Subject: t\r\n\r\nhi\r\n".to_vec()));
        assert!(matches!(out[0], Outcome::Delivered(_)));
        let entries: Vec<_> = fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries.len(), 1);
        let name = entries[0].to_str().unwrap().to_string();
        assert!(!name.starts_with('.') && !name.contains('/'), "{name}");
        let new: Vec<_> = fs::read_dir(root.path().join(&name).join("new")).unwrap().collect();
        assert_eq!(new.len(), 1);
        let text = fs::read_to_string(new[0].as_ref().unwrap().path()).unwrap();
        assert!(text.starts_with("Return-Path: <>\r\nDelivered-To: "));
    }
}
