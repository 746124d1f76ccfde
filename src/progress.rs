//! Progress reporting for long operations, decoupled from how it is shown.
//!
//! The library counts bytes and entries; the command line decides whether to draw a bar
//! (terminal, not `-q`, not `--json`). Counters are atomic because trees are copied and hashed on
//! several threads.

use std::sync::atomic::{AtomicU64, Ordering};

type Callback = Box<dyn Fn(u64, u64) + Send + Sync>;

/// Counts bytes and entries done, and tells an optional observer.
#[derive(Default)]
pub struct Progress {
    bytes: AtomicU64,
    entries: AtomicU64,
    observer: Option<Callback>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("bytes", &self.bytes())
            .field("entries", &self.entries())
            .finish()
    }
}

impl Progress {
    /// Progress nobody watches.
    pub fn none() -> Self {
        Self::default()
    }

    /// Progress that calls `observer(total_bytes, total_entries)` after each advance.
    pub fn new(observer: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        Self {
            observer: Some(Box::new(observer)),
            ..Self::default()
        }
    }

    /// Records more work done.
    pub fn advance(&self, bytes: u64, entries: u64) {
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let e = self.entries.fetch_add(entries, Ordering::Relaxed) + entries;
        if let Some(observer) = &self.observer {
            observer(b, e);
        }
    }

    /// Records totals reported by work that counts for itself (an extraction).
    pub fn set(&self, bytes: u64, entries: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
        self.entries.store(entries, Ordering::Relaxed);
        if let Some(observer) = &self.observer {
            observer(bytes, entries);
        }
    }

    /// Bytes done so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Entries done so far.
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }
}
