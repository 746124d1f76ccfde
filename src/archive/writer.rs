//! A small pool of threads that create and fill extracted files, so that decompression (on the
//! reading thread) overlaps with the system calls of writing. The queue is bounded and large files
//! travel in chunks, so memory stays bounded however big the archive is.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::Scope;
use std::time::{Duration, SystemTime};

use super::ArchiveError;
use crate::fs::mode_permissions;

/// Files up to this size travel whole in one job; bigger ones as a stream of chunks this size.
pub(crate) const CHUNK: usize = 256 << 10;
/// Chunks in flight per streamed file.
const STREAM_DEPTH: usize = 4;

/// The contents of a file to write.
pub(crate) enum Body {
    Whole(Vec<u8>),
    Stream(Receiver<Vec<u8>>),
}

/// One file to create under the destination.
pub(crate) struct FileJob {
    pub(crate) rel: PathBuf,
    /// The entry's name as the archive gave it, for messages.
    pub(crate) entry: String,
    pub(crate) executable: bool,
    /// Seconds since the epoch, kept so tools that compare timestamps (Python's `.pyc` check)
    /// see the archived ones.
    pub(crate) mtime: Option<u64>,
    pub(crate) body: Body,
}

struct Shared {
    failed: AtomicBool,
    error: Mutex<Option<ArchiveError>>,
    pending: Mutex<u64>,
    idle: Condvar,
}

/// The pool; dropped (through [`Pool::finish`]) before the scope ends.
pub(crate) struct Pool<'scope> {
    archive: PathBuf,
    dest: PathBuf,
    tx: Option<SyncSender<FileJob>>,
    shared: Arc<Shared>,
    handles: Vec<std::thread::ScopedJoinHandle<'scope, ()>>,
}

impl<'scope> Pool<'scope> {
    pub(crate) fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        threads: usize,
        dest: &'env Path,
        archive: &'env Path,
    ) -> Self {
        let (tx, rx) = sync_channel::<FileJob>(threads * 4);
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared {
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            pending: Mutex::new(0),
            idle: Condvar::new(),
        });
        let handles = (0..threads.max(1))
            .map(|_| {
                let rx = Arc::clone(&rx);
                let shared = Arc::clone(&shared);
                scope.spawn(move || worker(&rx, &shared, dest, archive))
            })
            .collect();
        Self {
            archive: archive.to_path_buf(),
            dest: dest.to_path_buf(),
            tx: Some(tx),
            shared,
            handles,
        }
    }

    /// Queues a file (blocking while the queue is full). Fails with a worker's error, if one
    /// failed, so the reader stops early.
    pub(crate) fn submit(&self, job: FileJob) -> Result<(), ArchiveError> {
        self.check()?;
        *lock(&self.shared.pending) += 1;
        let sent = self.tx.as_ref().map(|tx| tx.send(job).is_ok()).unwrap_or(false);
        if !sent {
            self.job_done_without_worker();
            self.check()?;
        }
        Ok(())
    }

    /// Returns a worker's error, if one failed.
    pub(crate) fn check(&self) -> Result<(), ArchiveError> {
        if self.shared.failed.load(Ordering::Acquire)
            && let Some(err) = lock(&self.shared.error).take()
        {
            return Err(err);
        }
        Ok(())
    }

    /// Whether a worker has failed (its error is returned by [`Pool::check`] or [`Pool::finish`]).
    pub(crate) fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Waits until every queued file is written (a hard link needs its target on disk).
    pub(crate) fn wait_idle(&self) -> Result<(), ArchiveError> {
        let mut pending = lock(&self.shared.pending);
        while *pending > 0 {
            pending = self
                .shared
                .idle
                .wait_timeout(pending, Duration::from_millis(100))
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        drop(pending);
        self.check()
    }

    /// Closes the queue, waits for the workers and returns the first error any of them had.
    pub(crate) fn finish(mut self) -> Result<(), ArchiveError> {
        self.tx = None;
        for handle in self.handles.drain(..) {
            if handle.join().is_err() {
                return Err(ArchiveError::Write {
                    archive: self.archive.clone(),
                    dest: self.dest.clone(),
                    entry: String::from("(unknown)"),
                    source: io::Error::other("a file-writing thread panicked"),
                });
            }
        }
        match lock(&self.shared.error).take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn job_done_without_worker(&self) {
        let mut pending = lock(&self.shared.pending);
        *pending = pending.saturating_sub(1);
        self.shared.idle.notify_all();
    }
}

/// The sender half for a streamed file's chunks.
pub(crate) fn stream() -> (SyncSender<Vec<u8>>, Receiver<Vec<u8>>) {
    sync_channel(STREAM_DEPTH)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking worker cannot leave these counters half-updated; keep going.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn worker(rx: &Mutex<Receiver<FileJob>>, shared: &Shared, dest: &Path, archive: &Path) {
    loop {
        let job = lock(rx).recv();
        let Ok(job) = job else { return };
        if !shared.failed.load(Ordering::Acquire) {
            let entry = job.entry.clone();
            if let Err(source) = write_file(dest, job) {
                let mut slot = lock(&shared.error);
                if slot.is_none() {
                    *slot = Some(ArchiveError::Write {
                        archive: archive.to_path_buf(),
                        dest: dest.to_path_buf(),
                        entry,
                        source,
                    });
                }
                shared.failed.store(true, Ordering::Release);
            }
        }
        let mut pending = lock(&shared.pending);
        *pending = pending.saturating_sub(1);
        shared.idle.notify_all();
    }
}

/// Creates a new file (never following or replacing anything already there) and writes it.
pub(crate) fn create_file(path: &Path, executable: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if executable { 0o755 } else { 0o644 });
    }
    let file = options
        .open(path)
        .map_err(|e| crate::fs::annotate(e, "create", path))?;
    // The umask may have taken bits away; the archive's executable bit decides, nothing else.
    file.set_permissions(mode_permissions(if executable { 0o755 } else { 0o644 }))
        .map_err(|e| crate::fs::annotate(e, "set permissions of", path))?;
    Ok(file)
}

fn write_file(dest: &Path, job: FileJob) -> io::Result<()> {
    let path = dest.join(&job.rel);
    let mut file = create_file(&path, job.executable)?;
    let written = match job.body {
        Body::Whole(bytes) => file.write_all(&bytes),
        Body::Stream(chunks) => chunks.iter().try_for_each(|chunk| file.write_all(&chunk)),
    };
    written.map_err(|e| crate::fs::annotate(e, "write", &path))?;
    if let Some(secs) = job.mtime {
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        file.set_modified(when)
            .map_err(|e| crate::fs::annotate(e, "set the modification time of", &path))?;
    }
    Ok(())
}
