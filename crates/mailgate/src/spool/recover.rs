//! Start-up recovery: replay every segment, keep what is intact, move
//! damaged files aside, and report them. Nothing is silently deleted.
//!
//! A removed message's content may have been punched out of its record
//! (see [`super::punch`]): such a record fails its checksum but keeps its
//! header, so replay skips it by its length and holds its id as unproven.
//! A later tombstone for the same id proves it was removed; an unproven
//! record left at the end is damage to a live message, and its segment is
//! handled like any damaged one. Damage to a header loses the framing and
//! ends the replay of that segment there, as before.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use mailgate_core::QueueId;

use super::index::Index;
use super::record::{self, Corruption, Record};
use super::{Entry, due_of, external, segment_path, sync_dir};

/// A segment that did not read cleanly to its end.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CorruptSegment {
    /// Where the file now is, under `spool/corrupt/`.
    pub moved_to: PathBuf,
    /// Offset of the first bad byte.
    pub offset: u64,
    pub reason: String,
    /// Intact messages copied out of it before it was moved aside.
    pub rescued: usize,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Recovery {
    pub messages: usize,
    pub segments: usize,
    pub corrupt: Vec<CorruptSegment>,
    /// Messages whose file in `spool/msg/` is missing or short: lost.
    pub missing_files: Vec<String>,
    /// Files in `spool/msg/` that no message record names (a crash
    /// between a tombstone and the unlink, or before a record): deleted.
    pub orphans_removed: usize,
}

pub(super) struct Recovered {
    pub index: Index,
    /// Segments that remain, with their numbers.
    pub segments: Vec<(u64, PathBuf)>,
    pub next_segment: u64,
    pub report: Recovery,
}

fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name.strip_prefix("seg-").and_then(|s| s.strip_suffix(".log")).and_then(|s| s.parse::<u64>().ok()) {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn read_envelope(dir: &Path, e: &Entry) -> io::Result<mailgate_core::Envelope> {
    use std::os::unix::fs::FileExt;
    let file = fs::File::open(segment_path(dir, u64::from(e.env_segment)))?;
    let mut buf = vec![0; e.env_len as usize];
    file.read_exact_at(&mut buf, e.env_offset)?;
    serde_json::from_slice(&buf).map_err(io::Error::other)
}

/// A segment read a few MiB at a time: recovery holds the records being
/// decoded, not a whole segment (64 MiB by default) at once.
struct Window {
    file: fs::File,
    file_len: u64,
    buf: Vec<u8>,
    /// The file offset of `buf[0]`.
    base: u64,
}

impl Window {
    const READ: usize = 4 * 1024 * 1024;

    fn open(path: &Path) -> io::Result<Window> {
        let file = fs::File::open(path)?;
        let file_len = records_end(&file, file.metadata()?.len())?;
        Ok(Window { file, file_len, buf: Vec::new(), base: 0 })
    }

    /// What the window holds from file offset `pos` on.
    fn from(&self, pos: u64) -> &[u8] {
        let start = usize::try_from(pos.saturating_sub(self.base)).unwrap_or(usize::MAX);
        self.buf.get(start..).unwrap_or(&[])
    }

    fn more_to_read(&self) -> bool {
        self.base + (self.buf.len() as u64) < self.file_len
    }

    /// Drops what lies before `pos` and reads on; `false` at the end.
    fn fill(&mut self, pos: u64) -> io::Result<bool> {
        use std::os::unix::fs::FileExt;
        let drop = usize::try_from(pos.saturating_sub(self.base)).unwrap_or(usize::MAX).min(self.buf.len());
        self.buf.drain(..drop);
        self.base += drop as u64;
        let have = self.buf.len();
        let at = self.base + have as u64;
        let want = self.file_len.saturating_sub(at).min(Self::READ as u64) as usize;
        self.buf.resize(have + want, 0);
        let n = self.file.read_at(&mut self.buf[have..], at)?;
        self.buf.truncate(have + n);
        Ok(n > 0)
    }
}

/// Where a segment's records end: after its last byte that is not zero.
/// The writer keeps zeros written ahead of the records (see `writer`), and
/// a record ends with [`record::END`], never with a zero byte. So a segment
/// cut short by a crash still ends inside its last, incomplete record, and
/// garbage after the last record is still found.
fn records_end(file: &fs::File, len: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

pub(super) fn recover(dir: &Path) -> io::Result<Recovered> {
    let segments = list_segments(dir)?;
    let mut index: Index = Index::default();
    // Per damaged segment: where the first bad record is, why, and how far
    // replay went (records up to there were applied).
    let mut damaged: Vec<(u64, PathBuf, u64, String, u64)> = Vec::new();
    // Message records that fail their checksum but are framed by their
    // header: punched after their removal if a later tombstone says so.
    let mut unproven: HashMap<QueueId, (u64, PathBuf, u64, String, u64)> = HashMap::new();
    for (number, path) in &segments {
        let mut window = Window::open(path)?;
        let file_len = window.file_len;
        let mut pos = 0u64;
        loop {
            if window.from(pos).is_empty() {
                if window.fill(pos)? {
                    continue;
                }
                break;
            }
            match record::decode(window.from(pos)) {
                // Only a part of the record is in the window yet.
                Err(Corruption::Truncated) if window.more_to_read() => {
                    if !window.fill(pos)? {
                        damaged.push((*number, path.clone(), pos, Corruption::Truncated.to_string(), pos));
                        break;
                    }
                }
                Ok((rec, len)) => {
                    match rec {
                        Record::Message { id, envelope, data_offset, data } => {
                            let due = due_of(&envelope);
                            let entry = Entry::at(*number, pos, record::MESSAGE_ENV_OFFSET, data_offset, data.len(), due, None);
                            index.insert(id, entry);
                        }
                        Record::External { id, envelope, data_offset, data, start, len } => {
                            let (due, range) = (due_of(&envelope), Some((start, len)));
                            let entry = Entry::at(*number, pos, record::EXTERNAL_ENV_OFFSET, data_offset, data.len(), due, range);
                            index.insert(id, entry);
                        }
                        Record::Remove { id } => {
                            index.remove(&id);
                            unproven.remove(&id);
                        }
                        Record::Update { id, envelope, env_len } => {
                            if let Some(e) = index.get_mut(&id) {
                                e.env_segment = *number as u32;
                                e.env_offset = pos + record::UPDATE_ENV_OFFSET as u64;
                                e.env_len = env_len as u32;
                                e.due = due_of(&envelope);
                            }
                        }
                    }
                    pos += len as u64;
                }
                Err(c) => {
                    if let Some((id, len)) = record::framed_message(window.from(pos)) {
                        unproven.insert(id, (*number, path.clone(), pos, c.to_string(), file_len));
                        pos += len as u64;
                        continue;
                    }
                    damaged.push((*number, path.clone(), pos, c.to_string(), pos));
                    break;
                }
            }
        }
    }
    for (id, (number, path, at, reason, end)) in unproven {
        tracing::error!(queue_id = %id, segment = number, offset = at, "spool: a queued message's record is damaged");
        match damaged.iter_mut().find(|d| d.0 == number) {
            Some(d) => {
                if at < d.2 {
                    (d.2, d.3) = (at, reason);
                }
                d.4 = d.4.min(end);
            }
            None => damaged.push((number, path, at, reason, end)),
        }
    }
    let mut next_segment = segments.last().map(|(n, _)| n + 1).unwrap_or(1);
    let mut report = Recovery::default();
    let mut kept: Vec<(u64, PathBuf)> = segments.clone();
    if !damaged.is_empty() {
        let corrupt_dir = dir.join("corrupt");
        fs::create_dir_all(&corrupt_dir)?;
        // Copy intact messages out of damaged segments before moving them.
        let rescue = next_segment;
        next_segment += 1;
        let rescue_path = segment_path(dir, rescue);
        let mut out = OpenOptions::new().create_new(true).append(true).open(&rescue_path)?;
        let mut offset = 0u64;
        let mut rescued: HashMap<u64, usize> = HashMap::new();
        let damaged_numbers: Vec<u64> = damaged.iter().map(|(n, ..)| *n).collect();
        for (number, path, _, _, end) in &damaged {
            let bytes = fs::read(path)?;
            // Removals and updates recorded in the damaged file may concern
            // messages stored in other segments: carry them over, or a
            // deleted message would come back at the next start.
            let mut pos = 0usize;
            while pos < (*end as usize).min(bytes.len()) {
                let (rec, len) = match record::decode(&bytes[pos..]) {
                    Ok(decoded) => decoded,
                    Err(_) => match record::framed_message(&bytes[pos..]) {
                        Some((_, len)) => {
                            pos += len;
                            continue;
                        }
                        None => break,
                    },
                };
                let carried = match rec {
                    Record::Remove { id } if !index.contains_key(&id) => Some(record::encode_remove(&id)),
                    Record::Update { id, .. } => match index.get_mut(&id).filter(|e| !damaged_numbers.contains(&u64::from(e.segment))) {
                        Some(e) => {
                            let rec = record::encode_update(&id, &read_envelope(dir, e)?);
                            e.env_segment = rescue as u32;
                            e.env_offset = offset + record::UPDATE_ENV_OFFSET as u64;
                            Some(rec)
                        }
                        None => None,
                    },
                    _ => None,
                };
                if let Some(rec) = carried {
                    // Written at once: a later update may read it back.
                    out.write_all(&rec)?;
                    offset += rec.len() as u64;
                }
                pos += len;
            }
            for (id, entry) in index.iter_mut().filter(|(_, e)| u64::from(e.segment) == *number) {
                let start = entry.data_offset as usize;
                let Some(data) = bytes.get(start..start + entry.data_len as usize) else {
                    continue;
                };
                let envelope = read_envelope(dir, entry)?;
                let (rec, data_offset, env_offset) = match entry.external() {
                    Some((start, len)) => {
                        let (rec, o) = record::encode_external(id, &envelope, data, start, len);
                        (rec, o, record::EXTERNAL_ENV_OFFSET)
                    }
                    None => {
                        let (rec, o) = record::encode_message(id, &envelope, data);
                        (rec, o, record::MESSAGE_ENV_OFFSET)
                    }
                };
                out.write_all(&rec)?;
                entry.segment = rescue as u32;
                entry.data_offset = offset + data_offset as u64;
                entry.env_segment = rescue as u32;
                entry.env_offset = offset + env_offset as u64;
                entry.env_len = (data_offset - env_offset) as u32;
                offset += rec.len() as u64;
                *rescued.entry(*number).or_insert(0) += 1;
            }
        }
        out.sync_all()?;
        sync_dir(dir)?;
        kept.push((rescue, rescue_path));
        for (number, path, at, reason, _) in damaged {
            let moved_to = corrupt_dir.join(path.file_name().unwrap_or_default());
            fs::rename(&path, &moved_to)?;
            fs::write(moved_to.with_extension("log.why"), format!("offset {at}: {reason}\n"))?;
            let n = rescued.get(&number).copied().unwrap_or(0);
            tracing::warn!(
                file = %moved_to.display(), offset = at, reason = %reason, rescued = n,
                "spool: damaged segment moved aside; its intact messages were kept"
            );
            kept.retain(|(k, _)| *k != number);
            report.corrupt.push(CorruptSegment { moved_to, offset: at, reason, rescued: n });
        }
        sync_dir(&corrupt_dir)?;
        sync_dir(dir)?;
    }
    check_message_files(dir, &mut index, &mut report)?;
    report.messages = index.len();
    report.segments = kept.len();
    Ok(Recovered { index, segments: kept, next_segment, report })
}

/// Every external message must have its file; every file a message.
fn check_message_files(dir: &Path, index: &mut Index, report: &mut Recovery) -> io::Result<()> {
    let msg_dir = external::message_dir(dir);
    let mut lost = Vec::new();
    for (id, entry) in index.iter() {
        let Some((start, len)) = entry.external() else { continue };
        let size = fs::metadata(external::message_path(dir, id)).map(|m| m.len()).unwrap_or(0);
        if size < start.saturating_add(len) {
            lost.push(id.clone());
        }
    }
    for id in lost {
        tracing::error!(queue_id = %id, "spool: the message's file is missing or short; the message is lost");
        index.remove(&id);
        report.missing_files.push(id.to_string());
    }
    for entry in fs::read_dir(&msg_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let known = name.to_str().and_then(QueueId::parse).and_then(|id| index.get(&id)).is_some_and(|e| e.external.is_some());
        if !known {
            fs::remove_file(entry.path())?;
            report.orphans_removed += 1;
        }
    }
    if report.orphans_removed > 0 {
        tracing::info!(files = report.orphans_removed, "spool: removed message files that no record names");
        sync_dir(&msg_dir)?;
    }
    Ok(())
}
