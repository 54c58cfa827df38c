//! Large messages in files of their own: `spool/msg/<queue id>`.
//!
//! A message whose content outgrows a small threshold is written to a
//! staging file (`spool/staging/`) while it arrives, never held whole in
//! memory. Storing it syncs the file, renames it into `spool/msg/`, syncs
//! that directory, and only then appends its envelope record (with the
//! header block mailgate wrote in front of it) to the segment log. Deleting
//! or delivering it unlinks the file, so its space is free at once, not
//! when a segment is compacted.
//!
//! The message content is then `prefix` (in the record) followed by
//! `len` octets of the file from `start` (the original header block
//! before `start` was replaced by the prefix).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mailgate_core::QueueId;

use super::SpoolError;

pub(crate) fn staging_dir(spool: &Path) -> PathBuf {
    spool.join("staging")
}

pub(crate) fn message_dir(spool: &Path) -> PathBuf {
    spool.join("msg")
}

pub(crate) fn message_path(spool: &Path, id: &QueueId) -> PathBuf {
    message_dir(spool).join(id.as_str())
}

/// Creates the directories and empties `staging/`: what is there belongs
/// to transactions that never got a 250.
pub(crate) fn prepare(spool: &Path) -> io::Result<()> {
    fs::create_dir_all(message_dir(spool))?;
    let staging = staging_dir(spool);
    fs::create_dir_all(&staging)?;
    for entry in fs::read_dir(&staging)? {
        let entry = entry?;
        if let Err(e) = fs::remove_file(entry.path()) {
            tracing::warn!(file = %entry.path().display(), error = %e, "spool: cannot remove a stale staging file");
        }
    }
    Ok(())
}

/// Message content being received, on disk. Dropped without being stored,
/// its file is deleted.
pub struct Staged {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    stored: bool,
}

impl Staged {
    pub(crate) fn create(spool: &Path) -> io::Result<Staged> {
        let name = format!("{:016x}", rand::random::<u64>());
        let path = staging_dir(spool).join(name);
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
        Ok(Staged { file: Arc::new(file), path, len: 0, stored: false })
    }

    /// Appends content as it arrives.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        (&*self.file).write_all(bytes).map_err(|e| SpoolError::from_io(&e))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file, for reading back (positional reads; shared with the checks).
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Reads `len` octets at `offset`.
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Makes the content durable under its final name. Blocking.
    pub(crate) fn commit(&mut self, spool: &Path, id: &QueueId) -> io::Result<PathBuf> {
        self.file.sync_data()?;
        let target = message_path(spool, id);
        fs::rename(&self.path, &target)?;
        self.path = target.clone();
        super::sync_dir(&message_dir(spool))?;
        Ok(target)
    }

    /// The record is durable: the file now belongs to the spool.
    pub(crate) fn keep(mut self) {
        self.stored = true;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.stored {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A stored message's content, read front to back in chunks, for
/// delivery: the prefix from the record, then the file's range.
pub struct Content {
    prefix: Vec<u8>,
    body: Option<(File, u64, u64)>,
    /// Octets already read.
    pos: u64,
}

impl Content {
    pub(crate) fn memory(data: Vec<u8>) -> Content {
        Content { prefix: data, body: None, pos: 0 }
    }

    pub(crate) fn external(prefix: Vec<u8>, file: File, start: u64, len: u64) -> Content {
        Content { prefix, body: Some((file, start, len)), pos: 0 }
    }

    /// Total octets.
    pub fn len(&self) -> u64 {
        self.prefix.len() as u64 + self.body.as_ref().map_or(0, |(_, _, len)| *len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole content in memory, when it is small enough to hold.
    pub fn in_memory(&self) -> Option<&[u8]> {
        self.body.is_none().then_some(&self.prefix[..])
    }

    /// What is held in memory: the whole content, or (for a large message)
    /// at least its header block.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Starts reading from the beginning again (a retry over a new
    /// connection).
    pub fn rewind(&mut self) {
        self.pos = 0;
    }
}

impl Read for Content {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let prefix_len = self.prefix.len() as u64;
        if self.pos < prefix_len {
            let from = self.pos as usize;
            let n = buf.len().min(self.prefix.len() - from);
            buf[..n].copy_from_slice(&self.prefix[from..from + n]);
            self.pos += n as u64;
            return Ok(n);
        }
        let Some((file, start, len)) = &self.body else { return Ok(0) };
        let done = self.pos - prefix_len;
        if done >= *len {
            return Ok(0);
        }
        let want = buf.len().min((*len - done).min(usize::MAX as u64) as usize);
        let n = file.read_at(&mut buf[..want], start + done)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "spool message file is shorter than its record says"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}
