//! Locks between processes sharing one cache root.
//!
//! - The root lock: every operation holds it shared for its own length (never for a process's
//!   lifetime, so a daemon cannot starve garbage collection); garbage collection holds it
//!   exclusive only for its short critical part.
//! - Entry locks: one file per entry name; a build holds it exclusive, and whoever gets it
//!   re-checks the catalog before building (lock, then re-check), so builds run at most once.
//!
//! - The gc lock: one collection at a time.
//!
//! Lock order (docs/DESIGN.md, "Locks"): an entry or import-source lock is taken before the root
//! lock and never while holding it, so a build that waits for another never blocks collection.
//! Every lock path comes from [`crate::layout::Layout`].
//!
//! Locks are `std::fs::File::lock*` (flock on Unix, LockFileEx on Windows): the kernel releases
//! them when a process dies, so a crash never leaves a stale lock. Lock files are created without
//! truncation and never deleted, because deleting a lock file races with a process that has just
//! opened it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors of the lock module.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock could not be taken within the timeout.
    #[error(
        "timed out after {waited:?} waiting for {what} (lock file `{path}`); another warmcache \
         process holds it. Wait for it to finish, or raise the limit with --lock-timeout or \
         WARMCACHE_LOCK_TIMEOUT"
    )]
    Timeout {
        /// What the lock protects.
        what: String,
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// The lock file could not be opened or locked.
    #[error("failed to lock `{path}`: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Many holders at once.
    Shared,
    /// One holder, no shared holders.
    Exclusive,
}

/// A held lock; released on drop (and by the kernel if the process dies). Holds no file on a
/// read-only file system where the lock file does not exist: nobody can change anything there,
/// so there is nothing to exclude.
#[derive(Debug)]
pub struct LockGuard {
    _file: Option<File>,
}

/// Opens (creating if needed) a lock file; on a read-only file system, opens it for reading
/// (`flock` works on any open file) or, when it does not exist there, returns `None`.
fn open_lock_file(path: &Path) -> Result<Option<File>, LockError> {
    let io_err = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    // No truncation: another process may hold a lock on this very file.
    let writable = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path);
    match writable {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::ReadOnlyFilesystem => match File::open(path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(e)),
        },
        Err(e) => Err(io_err(e)),
    }
}

/// The longest sleep between two attempts to take a lock. Garbage collection pauses for longer
/// than this between its exclusive batches, so a waiting operation always gets in between two
/// batches instead of starving behind back-to-back ones.
pub const MAX_POLL: Duration = Duration::from_millis(4);

/// Tries once to take a lock; `Ok(None)` when someone else holds it.
pub fn try_lock(path: &Path, mode: Mode) -> Result<Option<LockGuard>, LockError> {
    let Some(file) = open_lock_file(path)? else {
        return Ok(Some(LockGuard { _file: None }));
    };
    let res = match mode {
        Mode::Shared => file.try_lock_shared(),
        Mode::Exclusive => file.try_lock(),
    };
    match res {
        Ok(()) => Ok(Some(LockGuard { _file: Some(file) })),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(source)) => Err(LockError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Takes a lock, waiting up to `timeout`. `what` describes the lock for the timeout message.
///
/// The standard library has no timed lock, so this polls `try_lock` with a short, growing sleep
/// (1 ms doubling to [`MAX_POLL`]): cheap while the holder is quick, and bounded.
pub fn lock(path: &Path, mode: Mode, timeout: Duration, what: &str) -> Result<LockGuard, LockError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(guard) = try_lock(path, mode)? {
            return Ok(guard);
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(LockError::Timeout {
                what: what.to_string(),
                path: path.to_path_buf(),
                waited,
            });
        }
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// Proof that the cache root lock is held for the length of one operation: shared by ordinary
/// operations, exclusive by a garbage-collection batch.
///
/// Whatever must happen under the root lock (publishing and recording an artifact, taking a
/// lease, resolving a path a caller will use) takes `&OpGuard`, so the rule "call with the
/// operation lock held" is checked by the compiler instead of a comment.
#[derive(Debug)]
pub struct OpGuard {
    _lock: LockGuard,
}

impl OpGuard {
    /// Takes the root lock at `path` in `mode`, waiting up to `timeout`.
    pub fn take(path: &Path, mode: Mode, timeout: Duration) -> Result<Self, LockError> {
        let what = match mode {
            Mode::Shared => "the cache root lock",
            Mode::Exclusive => "the cache root lock (exclusive, for gc)",
        };
        Ok(Self {
            _lock: lock(path, mode, timeout, what)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_times_out_with_a_hint() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.lock");
        let shared = lock(&path, Mode::Shared, Duration::from_secs(1), "the root").unwrap();
        assert!(try_lock(&path, Mode::Shared).unwrap().is_some());
        let err = lock(&path, Mode::Exclusive, Duration::from_millis(30), "the root").unwrap_err();
        assert!(err.to_string().contains("WARMCACHE_LOCK_TIMEOUT"), "{err}");
        drop(shared);
        assert!(try_lock(&path, Mode::Exclusive).unwrap().is_some());
    }
}
