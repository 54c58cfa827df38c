//! The recorder's on-disk buffer (`data_dir/store-buffer/`): batches the
//! store could not take (the database is away) wait here, one file per
//! batch, JSON lines of the events, written to a temporary name, synced
//! and renamed, so a crash leaves whole batches or none. They are replayed
//! oldest first when the store answers again (and at start), each file
//! deleted once its batch is written.
//!
//! May import: the rest of `store`.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::Event;

/// The directory under `data_dir`.
pub const DIR: &str = "store-buffer";

pub(super) struct Buffer {
    dir: PathBuf,
    /// The next file's number.
    next: u64,
}

fn seq(p: &Path) -> Option<u64> {
    p.file_name()?.to_str()?.strip_suffix(".jsonl")?.parse().ok()
}

impl Buffer {
    pub fn open(dir: &Path) -> std::io::Result<Buffer> {
        fs::create_dir_all(dir)?;
        let next = Buffer { dir: dir.to_path_buf(), next: 0 }.files()?.last().and_then(|p| seq(p)).map_or(0, |n| n + 1);
        Ok(Buffer { dir: dir.to_path_buf(), next })
    }

    /// The batches waiting, oldest first.
    pub fn files(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut out: Vec<(u64, PathBuf)> = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let p = e?.path();
            if let Some(n) = seq(&p) {
                out.push((n, p));
            }
        }
        out.sort();
        Ok(out.into_iter().map(|(_, p)| p).collect())
    }

    /// Appends a batch, synced to disk before this returns.
    pub fn append(&mut self, events: &[Event]) -> std::io::Result<()> {
        let name = format!("{:020}.jsonl", self.next);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = std::io::BufWriter::new(File::create(&tmp)?);
        for e in events {
            serde_json::to_writer(&mut f, e)?;
            f.write_all(b"\n")?;
        }
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(&name))?;
        File::open(&self.dir)?.sync_all()?;
        self.next += 1;
        Ok(())
    }

    /// A buffered batch's events. A line that does not parse (a disk
    /// error) is skipped with a warning rather than holding up the rest.
    pub fn read(path: &Path) -> std::io::Result<Vec<Event>> {
        let mut out = Vec::new();
        for (i, line) in BufReader::new(File::open(path)?).lines().enumerate() {
            let line = line?;
            match serde_json::from_str(&line) {
                Ok(e) => out.push(e),
                Err(e) => tracing::warn!(file = %path.display(), line = i + 1, error = %e, "report store buffer: unreadable event skipped"),
            }
        }
        Ok(out)
    }
}
