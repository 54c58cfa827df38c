//! Room for removals on a full disk: the spool holds `spool/reserve`, a
//! file of [`SIZE`] allocated octets, and gives it up when a tombstone
//! cannot be written (`ENOSPC`).
//!
//! Removing a message appends a tombstone before its space is punched out,
//! so on a disk filled to the last block by something else (deferral
//! records, the report store, another program) not even a delete could go
//! through: the one action that frees space would fail. Releasing the
//! reserve lets the first tombstones in, their punches free the rest, and
//! the reserve is allocated again once the disk has room for it.
//!
//! May import: std, libc.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Octets held back. A tombstone is under 100 octets; this holds
/// thousands, and the envelope records of a batch of deliveries.
pub(super) const SIZE: u64 = 256 * 1024;

/// How often a released reserve is tried again: removals come by the
/// thousand, and each try asks the file system for its free space.
const RETRY: Duration = Duration::from_secs(10);

pub(super) struct Reserve {
    path: PathBuf,
    held: AtomicBool,
    /// When [`Reserve::restore_due`] last said yes.
    last_try: Mutex<Option<Instant>>,
    /// A failed allocation was logged; logged again only after a success.
    warned: AtomicBool,
}

impl Reserve {
    /// Allocates the reserve under `dir` if it is not there yet. A disk too
    /// full for it leaves the spool without one (and says so).
    pub(super) fn open(dir: &Path) -> Reserve {
        let reserve =
            Reserve { path: dir.join("reserve"), held: AtomicBool::new(false), last_try: Mutex::new(None), warned: AtomicBool::new(false) };
        reserve.restore();
        reserve
    }

    pub(super) fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Gives the reserve's space back to the file system; `true` if there
    /// was one to give.
    pub(super) fn release(&self) -> bool {
        if !self.held.swap(false, Ordering::Relaxed) {
            return false;
        }
        match fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(octets = SIZE, "spool: the disk is full; the spool's reserve was released so that removals can go on");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "spool: cannot release the reserve");
                false
            }
        }
    }

    /// Whether to try [`Reserve::restore`] now: the reserve was released
    /// and the last try is [`RETRY`] ago. Cheap; answers yes at most once
    /// per interval, so the caller runs the try (an allocation and an
    /// fsync) off the async threads, and only then.
    pub(super) fn restore_due(&self) -> bool {
        if self.held() {
            return false;
        }
        let mut last = self.last_try.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < RETRY) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Allocates the reserve again after a release, once the disk has room
    /// for it and a little more. Cheap when the reserve is held. Blocks.
    pub(super) fn restore(&self) {
        if self.held() {
            return;
        }
        if super::free_space(self.path.parent().unwrap_or(Path::new("."))).is_ok_and(|free| free < 2 * SIZE) {
            return;
        }
        match allocate(&self.path) {
            Ok(()) => {
                self.held.store(true, Ordering::Relaxed);
                self.warned.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                let _ = fs::remove_file(&self.path);
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "spool: cannot allocate the reserve kept for removals on a full disk; trying again every 10 s");
                }
            }
        }
    }
}

/// Allocates `path` to [`SIZE`] octets on disk: `fallocate`, or written
/// zeros where the file system has none. An existing reserve is kept.
fn allocate(path: &Path) -> io::Result<()> {
    let mut file = OpenOptions::new().create(true).write(true).truncate(false).open(path)?;
    if file.metadata()?.len() >= SIZE {
        return Ok(());
    }
    // SAFETY: the descriptor is open for writing; offsets are in range.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, SIZE as libc::off_t) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(e);
        }
        file.write_all(&vec![0; SIZE as usize])?;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_once_and_allocated_again() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::open(dir.path());
        assert!(reserve.held());
        let on_disk = fs::metadata(dir.path().join("reserve")).unwrap();
        assert_eq!(on_disk.len(), SIZE);
        assert!(reserve.release());
        assert!(!dir.path().join("reserve").exists());
        assert!(!reserve.release(), "nothing left to release");
        reserve.restore();
        assert!(reserve.held());
        assert_eq!(fs::metadata(dir.path().join("reserve")).unwrap().len(), SIZE);
    }

    #[test]
    fn a_released_reserve_is_tried_again_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::open(dir.path());
        assert!(!reserve.restore_due(), "held: nothing to restore");
        assert!(reserve.release());
        assert!(reserve.restore_due());
        // Thousands of removals in the next seconds do not try again.
        for _ in 0..1000 {
            assert!(!reserve.restore_due());
        }
        *reserve.last_try.lock().unwrap() = Some(Instant::now() - RETRY);
        assert!(reserve.restore_due());
        reserve.restore();
        assert!(reserve.held() && !reserve.restore_due());
    }
}
