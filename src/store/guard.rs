//! What keeps a full or failing disk from wedging the node.
//!
//! sled 0.34 does not survive running out of space: the first write that
//! fails sets an error inside the database that every later call returns,
//! and a flush caught at the wrong moment waits forever. So the store never
//! lets sled reach a full disk, and treats any I/O error from sled as final:
//!
//! - **Reserve.** Before every write the store reads the free space of the
//!   data directory's filesystem (`statvfs`, about a microsecond); below the
//!   reserve the write is refused with [`StoreError::DiskFull`] before sled
//!   sees it, so sled always keeps room to finish what it already holds.
//!   Writes resume by themselves as soon as space is back above the reserve.
//! - **Failure.** An I/O error from sled marks the store failed for the life
//!   of the process ([`Guard::failed`]); every later read and write is
//!   refused with [`StoreError::Unavailable`], and the node's watchdog exits
//!   so that its supervisor (Docker, Swarm, systemd) restarts it on a fresh
//!   open, which recovers everything that was flushed.
//! - **Stall.** Each flush in progress is timed ([`Guard::oldest_flush`]):
//!   the watchdog treats one that has not returned for the stall limit as a
//!   failure too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::StoreError;

/// Free space kept for sled by default.
pub const DEFAULT_RESERVE: u64 = 64 * 1024 * 1024;

/// The disk state shared by every clone of a store.
#[derive(Debug)]
pub struct Guard {
    dir: PathBuf,
    reserve: u64,
    failed: OnceLock<String>,
    /// Free bytes at the last look (for views that must not touch the disk).
    last_free: AtomicU64,
    next_flush: AtomicU64,
    flushing: Mutex<HashMap<u64, Instant>>,
}

/// How the store's disk is doing, as views show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageStatus {
    /// `ok`, `disk_full` (writes refused until space returns) or `failed`
    /// (the node restarts its store).
    pub state: &'static str,
    pub data_dir: String,
    pub free_bytes: u64,
    pub reserve_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StorageStatus {
    pub fn is_ok(&self) -> bool {
        self.state == "ok"
    }

    /// The error code that refusals because of this state carry.
    pub fn code(&self) -> &'static str {
        match self.state {
            "disk_full" => "disk_full",
            _ => "storage_unavailable",
        }
    }
}

/// A flush in progress; dropping it ends the timing.
pub struct FlushTimer<'a> {
    guard: &'a Guard,
    id: u64,
}

impl Drop for FlushTimer<'_> {
    fn drop(&mut self) {
        let mut flushing = self
            .guard
            .flushing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        flushing.remove(&self.id);
    }
}

impl Guard {
    pub fn new(dir: &Path, reserve: u64) -> Guard {
        Guard {
            dir: dir.to_owned(),
            reserve,
            failed: OnceLock::new(),
            last_free: AtomicU64::new(u64::MAX),
            next_flush: AtomicU64::new(0),
            flushing: Mutex::default(),
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Free bytes for unprivileged writers on the data directory's
    /// filesystem; `u64::MAX` if the filesystem cannot say.
    pub fn free_bytes(&self) -> u64 {
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), error = %e, "statvfs failed");
                u64::MAX
            }
        };
        self.last_free.store(free, Ordering::Relaxed);
        free
    }

    /// Passes when a write may go to sled now.
    pub fn writable(&self) -> Result<(), StoreError> {
        self.readable()?;
        let free = self.free_bytes();
        if free < self.reserve {
            return Err(StoreError::DiskFull {
                dir: self.dir.display().to_string(),
                free,
                reserve: self.reserve,
            });
        }
        Ok(())
    }

    /// Passes unless the store has failed.
    pub fn readable(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(reason) => Err(StoreError::Unavailable(reason.clone())),
            None => Ok(()),
        }
    }

    /// Marks the store failed (the first reason sticks).
    pub fn fail(&self, reason: String) {
        if self.failed.set(reason.clone()).is_ok() {
            tracing::error!(dir = %self.dir.display(), %reason, "the store failed");
        }
    }

    /// Why the store failed, if it did.
    pub fn failed(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Looks at what a sled call returned: an I/O error fails the store.
    pub fn note(&self, error: &StoreError) {
        if let StoreError::Sled(e) = error {
            let fatal = matches!(
                e,
                sled::Error::Io(_) | sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)
            );
            if fatal {
                self.fail(format!("database I/O error in {}: {e}", self.dir.display()));
            }
        }
    }

    /// Times a flush until the returned timer drops.
    pub fn flush_started(&self) -> FlushTimer<'_> {
        let id = self.next_flush.fetch_add(1, Ordering::Relaxed);
        let mut flushing = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
        flushing.insert(id, Instant::now());
        FlushTimer { guard: self, id }
    }

    /// How long the oldest flush in progress has been running.
    pub fn oldest_flush(&self) -> Option<Duration> {
        let flushing = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
        flushing.values().min().map(Instant::elapsed)
    }

    /// The state for views. `fresh` reads the free space now; otherwise the
    /// last reading is shown.
    pub fn status(&self, fresh: bool) -> StorageStatus {
        let free = if fresh {
            self.free_bytes()
        } else {
            self.last_free.load(Ordering::Relaxed)
        };
        let (state, error) = match self.failed.get() {
            Some(reason) => ("failed", Some(reason.clone())),
            None if free < self.reserve => (
                "disk_full",
                Some(format!(
                    "{free} bytes free in {}, below the reserve of {} bytes: writes are refused until space is freed",
                    self.dir.display(),
                    self.reserve
                )),
            ),
            None => ("ok", None),
        };
        StorageStatus {
            state,
            data_dir: self.dir.display().to_string(),
            free_bytes: free,
            reserve_bytes: self.reserve,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_refuses_writes_and_a_failure_refuses_everything() {
        let dir = tempfile::tempdir().unwrap();
        let roomy = Guard::new(dir.path(), 0);
        roomy.writable().unwrap();
        assert!(roomy.status(true).is_ok());

        let tight = Guard::new(dir.path(), u64::MAX);
        match tight.writable() {
            Err(StoreError::DiskFull {
                reserve, dir: d, ..
            }) => {
                assert_eq!(reserve, u64::MAX);
                assert_eq!(d, dir.path().display().to_string());
            }
            other => panic!("{other:?}"),
        }
        tight.readable().unwrap();
        assert_eq!(tight.status(true).state, "disk_full");

        roomy.note(&StoreError::Sled(sled::Error::Io(std::io::Error::from(
            std::io::ErrorKind::StorageFull,
        ))));
        assert!(matches!(roomy.readable(), Err(StoreError::Unavailable(_))));
        assert!(matches!(roomy.writable(), Err(StoreError::Unavailable(_))));
        assert_eq!(roomy.status(false).state, "failed");
    }

    #[test]
    fn flushes_are_timed_while_they_run() {
        let dir = tempfile::tempdir().unwrap();
        let guard = Guard::new(dir.path(), 0);
        assert_eq!(guard.oldest_flush(), None);
        let a = guard.flush_started();
        let b = guard.flush_started();
        assert!(guard.oldest_flush().is_some());
        drop(a);
        assert!(guard.oldest_flush().is_some());
        drop(b);
        assert_eq!(guard.oldest_flush(), None);
    }
}
