//! Giving a removed message's space back at once: the page-aligned part of
//! its record is punched out of the segment file
//! (`fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`), after its
//! tombstone is durable. The segment keeps its length and every other
//! record its offset; the punched bytes read back as zeros.
//!
//! Only the content of a message record is punched, from the first page
//! boundary after the record's header, id and envelope to the last one
//! before its end, so the header (magic, kind, length, id) always survives.
//! Recovery relies on that: a message record that fails its checksum but
//! whose header is intact is skipped by its length, and accepted only if a
//! later tombstone removes the same id (see [`super::recover`]); a live
//! record that fails its checksum is still damage.
//!
//! On a file system without hole punching (`EOPNOTSUPP`), space comes back
//! when compaction deletes the segment, as before.
//!
//! May import: std, libc.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Alignment of the punched range: the page size, a multiple of the block
/// size of the file systems a spool lives on. A range that is not whole
/// blocks is zeroed rather than freed, which is still correct.
const PAGE: u64 = 4096;

/// The whole pages within `start..end`, if any.
pub(super) fn aligned(start: u64, end: u64) -> Option<(u64, u64)> {
    let from = start.div_ceil(PAGE) * PAGE;
    let to = end / PAGE * PAGE;
    (to > from).then_some((from, to - from))
}

/// Punches `start..end` (rounded inwards to whole pages) out of `path`.
/// `Ok(false)` when the file system cannot punch holes.
pub(super) fn punch(path: &Path, start: u64, end: u64) -> io::Result<bool> {
    let Some((offset, len)) = aligned(start, end) else { return Ok(true) };
    let file = OpenOptions::new().write(true).open(path)?;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "range past the largest file offset"));
    };
    // SAFETY: a valid open descriptor; fallocate only reads its arguments.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_pages_inside_the_range() {
        assert_eq!(aligned(100, 4000), None);
        assert_eq!(aligned(100, 8192), Some((4096, 4096)));
        assert_eq!(aligned(4096, 12289), Some((4096, 8192)));
        assert_eq!(aligned(4097, 12288), Some((8192, 4096)));
    }
}
