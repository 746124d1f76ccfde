//! Private staging locations beside what they publish into, owned through lock files, and the
//! sweep that removes those of dead processes.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use fs_err as fs;

use super::perms::remove_tree;
use super::{annotate, same_file};

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A name unlikely to collide with any other process's: pid, time and a counter.
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}{}-{:x}-{n}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

/// A directory of private staging locations, on the same file system as what they publish into.
///
/// Each staging location `NAME` (a file or directory) is owned through `NAME.lock`, which its
/// creator holds locked for as long as it lives. Liveness is the kernel's knowledge, never an
/// age: a sweeper that can lock `NAME.lock` knows the owner is gone (or never got as far as
/// locking it), removes `NAME` and then `NAME.lock` while holding that lock. The owner, once it
/// holds the lock, checks that `NAME.lock` is still the file it locked; if a sweeper removed it
/// in between, it starts over under a new name (docs/DESIGN.md, "Staging and lock files").
#[derive(Debug, Clone)]
pub struct StagingArea {
    dir: PathBuf,
}

/// What [`StagingArea::sweep`] removed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SweepReport {
    /// Staging locations of dead processes that were removed.
    pub removed: u64,
    /// Live staging locations left alone.
    pub live: u64,
}

const LOCK_SUFFIX: &str = ".lock";
/// Lock files of older versions, locked under this temporary name and then renamed. Swept like
/// any lock file: unlocked means dead.
const PENDING_PREFIX: &str = ".pending-";
/// How often [`StagingArea::reserve`] starts over after sweepers removed its fresh lock file
/// before it could lock it; each attempt loses only to a sweep that ran in that instant.
const RESERVE_ATTEMPTS: u32 = 100;

impl StagingArea {
    /// A staging area rooted at `dir` (created if missing). The directory is made absolute here,
    /// the one place staging paths come from, because they are handed to builders and hooks
    /// that run in other working directories (`$WARMCACHE_OUT`, `$WARMCACHE_STAGING`).
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        let dir = std::path::absolute(&dir).map_err(|e| annotate(e, "make absolute", &dir))?;
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// The directory holding the staging locations.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reserves a fresh staging path (nothing is created at it yet), locked for this process.
    pub fn reserve(&self, purpose: &str) -> io::Result<Staged> {
        for _ in 0..RESERVE_ATTEMPTS {
            let name = unique_name(&format!("{purpose}-"));
            let lock_path = self.dir.join(format!("{name}{LOCK_SUFFIX}"));
            if let Some(lock) = lock_fresh(&lock_path)? {
                return Ok(Staged {
                    path: self.dir.join(name),
                    lock_path,
                    lock: Some(lock),
                    keep: false,
                });
            }
        }
        Err(annotate(
            io::Error::other(format!(
                "its lock file was swept away {RESERVE_ATTEMPTS} times before it could be locked"
            )),
            "reserve staging",
            &self.dir,
        ))
    }

    /// Reserves a staging directory and creates it.
    pub fn create_dir(&self, purpose: &str) -> io::Result<Staged> {
        let staged = self.reserve(purpose)?;
        fs::create_dir(&staged.path)?;
        Ok(staged)
    }

    /// Removes staging locations whose owner is gone (its lock can be taken), leaving live ones.
    pub fn sweep(&self) -> io::Result<SweepReport> {
        let mut report = SweepReport::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(annotate(e, "read staging directory", &self.dir)),
        };
        let mut names: Vec<OsString> = Vec::new();
        for entry in entries {
            names.push(
                entry
                    .map_err(|e| annotate(e, "read staging directory", &self.dir))?
                    .file_name(),
            );
        }
        for name in &names {
            let name_str = name.to_string_lossy();
            let path = self.dir.join(name);
            if let Some(base) = name_str.strip_suffix(LOCK_SUFFIX) {
                // A lock file: if we can lock it, its owner died (or was killed before it could
                // lock it); remove what it guarded, then the lock file, while holding the lock.
                let Ok(file) = OpenOptions::new().write(true).open(&path) else {
                    continue;
                };
                match file.try_lock() {
                    Ok(()) => {
                        remove_tree(&self.dir.join(base))?;
                        remove_tree(&path)?;
                        report.removed += 1;
                    }
                    Err(_) => report.live += 1,
                }
            } else if name_str.starts_with(PENDING_PREFIX) {
                // An older version's pending lock file, still under its temporary name (it had no
                // `.lock` suffix): unlocked means its owner died before renaming it.
                let Ok(file) = OpenOptions::new().write(true).open(&path) else {
                    continue;
                };
                if file.try_lock().is_ok() {
                    remove_tree(&path)?;
                    report.removed += 1;
                }
            } else {
                // A staging location whose lock file is gone: the owner always creates the lock
                // first and a sweeper removes it last, so nobody owns this one.
                let lock = self.dir.join(format!("{name_str}{LOCK_SUFFIX}"));
                // Already removed above through its lock file, earlier in this listing.
                let still_there = std::fs::symlink_metadata(&path).is_ok();
                if still_there && !lock.exists() {
                    remove_tree(&path)?;
                    report.removed += 1;
                }
            }
        }
        Ok(report)
    }
}

/// Creates the lock file at `lock_path` and locks it. Between the two a sweeper may take the
/// unlocked file for a dead owner's and remove it; then the name no longer leads to the file we
/// locked, and `None` says to start over under another name. A kill between the two leaves an
/// unlocked lock file, which the next sweep removes at once.
fn lock_fresh(lock_path: &Path) -> io::Result<Option<File>> {
    let lock = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(lock_path)
        .map_err(|e| annotate(e, "create staging lock", lock_path))?;
    lock.lock().map_err(|e| annotate(e, "lock", lock_path))?;
    let ours = lock.metadata().map_err(|e| annotate(e, "stat", lock_path))?;
    match std::fs::symlink_metadata(lock_path) {
        Ok(named) if same_file(&ours, &named) => Ok(Some(lock)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(annotate(e, "stat", lock_path)),
    }
}

/// A reserved staging path. Dropping it removes whatever is at the path and releases the lock,
/// unless [`Staged::keep`] was called (the content was moved away by a successful publish).
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    lock_path: PathBuf,
    lock: Option<File>,
    keep: bool,
}

impl Staged {
    /// The staging path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the staging content as moved away; only the lock is cleaned up on drop.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = remove_tree(&self.path)
        {
            tracing::warn!("could not remove staging leftover: {e}");
        }
        let _ = std::fs::remove_file(&self.lock_path);
        drop(self.lock.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_sweep_spares_live_and_removes_dead() {
        let tmp = tempfile::tempdir().unwrap();
        let area = StagingArea::new(tmp.path().join("staging")).unwrap();
        let live = area.create_dir("live").unwrap();
        std::fs::write(live.path().join("x"), b"x").unwrap();
        // A dead owner: the staging dir and its lock file exist but nobody holds the lock.
        let mut dead = area.create_dir("dead").unwrap();
        let dead_path = dead.path().to_path_buf();
        dead.keep();
        let dead_lock = dead.lock_path.clone();
        let lock_file = dead.lock.take();
        dead.lock_path = PathBuf::from("/nonexistent/none");
        drop(dead);
        drop(lock_file);
        assert!(dead_path.exists() && dead_lock.exists());
        let report = area.sweep().unwrap();
        assert_eq!(report.removed, 1);
        assert_eq!(report.live, 1);
        assert!(!dead_path.exists() && !dead_lock.exists());
        assert!(live.path().join("x").exists());
        drop(live);
        assert_eq!(std::fs::read_dir(area.dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_lock_file_never_locked_or_an_old_pending_one_is_swept_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let area = StagingArea::new(tmp.path().join("staging")).unwrap();
        // Killed between creating its lock file and locking it, and an older version's pending
        // lock file killed before its rename: both fresh, both unlocked.
        std::fs::write(area.dir().join("build-1-2-3.lock"), b"").unwrap();
        std::fs::write(area.dir().join(".pending-import-4-5-6"), b"").unwrap();
        let report = area.sweep().unwrap();
        assert_eq!(report.removed, 2);
        assert_eq!(std::fs::read_dir(area.dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_lock_file_swept_before_it_was_locked_is_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.lock");
        // A sweeper removed the file and another appeared under the name: not ours.
        let ours = lock_fresh(&path).unwrap().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(lock_fresh(&path).unwrap().is_some());
        let meta = ours.metadata().unwrap();
        assert!(!same_file(&meta, &std::fs::metadata(&path).unwrap()));
    }
}
