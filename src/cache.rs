//! The cache: one root's store, catalog and locks behind the operations users call.
//!
//! Every operation takes the root lock shared for its own length, so garbage collection (which
//! takes it exclusive for its short critical part) can never remove what an operation is about
//! to record. A `Cache` is `Send + Sync`: a daemon can share one across threads and call it
//! thousands of times; each call opens its own lock handle because `flock` locks belong to an
//! open file, not a thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::build::{FailureRecord, StatCache};
use crate::catalog::{ArtifactRow, Catalog, CatalogError, EntryRow, now_ms};
use crate::layout::Layout;
use crate::lock::{self, LockError, LockGuard, Mode};
use crate::name::{self, NameError};
use crate::progress::Progress;
use crate::store::{Damage, Published, Store, StoreError};

/// The default for how long to wait for a lock held by another process.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// Errors of cache operations.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The root cannot be created or written.
    #[error(
        "cannot use `{root}` as a cache root: {source}; choose a writable directory with --root or \
         WARMCACHE_ROOT"
    )]
    Root {
        /// The root.
        root: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An invalid entry name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// No entry of that name.
    #[error(
        "no entry named `{name}` in the cache at `{root}`; create it with `warmcache import PATH \
         --name {name}` or `warmcache ensure {name}`"
    )]
    NoEntry {
        /// The name asked for.
        name: String,
        /// The cache root.
        root: PathBuf,
    },
    /// The entry exists but its artifact is gone.
    #[error(
        "entry `{name}` has no artifact in the cache (it was removed or found damaged); build it \
         again with `warmcache ensure {name}` or import it again"
    )]
    NoArtifact {
        /// The entry.
        name: String,
    },
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Catalog failure.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Lock failure.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// An archive could not be imported.
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    /// An import's permission rule or hook was refused or failed.
    #[error(transparent)]
    Import(#[from] crate::import::ImportError),
    /// Other I/O (the message names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Settings of an open cache.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// How long to wait for locks held by other processes.
    pub lock_timeout: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }
}

/// An entry with its artifact and failure state, for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EntryStatus {
    /// The catalog row.
    #[serde(flatten)]
    pub entry: EntryRow,
    /// The artifact's row, when the entry has one.
    pub artifact_info: Option<ArtifactRow>,
    /// Whether the artifact's content is present.
    pub present: bool,
    /// The content path, when present.
    pub path: Option<PathBuf>,
    /// The recorded failure, if any.
    pub failure: Option<FailureRecord>,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Artifacts checked.
    pub checked: u64,
    /// Artifacts found intact.
    pub ok: u64,
    /// Damaged artifacts, moved to quarantine.
    pub damaged: Vec<DamagedArtifact>,
    /// Catalog entries whose artifact was gone (now cleared: a miss).
    pub dangling: Vec<String>,
    /// Published artifacts no entry names (kept; garbage collection decides).
    pub unreferenced: u64,
}

/// A damaged artifact and where it went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DamagedArtifact {
    /// The artifact id.
    pub artifact: String,
    /// What was wrong.
    pub problems: Vec<Damage>,
    /// Where it was moved.
    pub quarantined_to: PathBuf,
}

/// An open cache root.
#[derive(Debug)]
pub struct Cache {
    layout: Layout,
    store: Store,
    catalog: Mutex<Catalog>,
    options: CacheOptions,
    /// Per-entry stat caches of input files, kept in memory so that a long-running process
    /// re-fingerprints only what changed.
    stat_caches: Mutex<HashMap<String, StatCache>>,
}

impl Cache {
    /// Opens (creating if needed) the cache at `root` with default options.
    pub fn open(root: &Path) -> Result<Self, CacheError> {
        Self::open_with(root, CacheOptions::default())
    }

    /// Opens (creating if needed) the cache at `root`, and sweeps staging leftovers of crashed
    /// processes.
    pub fn open_with(root: &Path, options: CacheOptions) -> Result<Self, CacheError> {
        // Absolute, so that the paths handed out stay valid from any working directory.
        let root = &std::path::absolute(root).map_err(|source| CacheError::Root {
            root: root.to_path_buf(),
            source,
        })?;
        let layout = Layout::new(root);
        layout.create().map_err(|source| CacheError::Root {
            root: root.to_path_buf(),
            source,
        })?;
        let store = Store::new(&layout).map_err(|source| CacheError::Root {
            root: root.to_path_buf(),
            source,
        })?;
        let catalog = Catalog::open(&layout.catalog())?;
        let cache = Self {
            layout,
            store,
            catalog: Mutex::new(catalog),
            options,
            stat_caches: Mutex::new(HashMap::new()),
        };
        {
            let _op = cache.operation()?;
            let swept = cache.store.staging().sweep()?;
            if swept.removed > 0 {
                tracing::info!("swept {} staging leftover(s) of crashed processes", swept.removed);
            }
        }
        Ok(cache)
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// The layout of the root.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The content-addressed store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The options the cache was opened with.
    pub fn options(&self) -> &CacheOptions {
        &self.options
    }

    /// The catalog connection (one per cache; calls from several threads take turns).
    pub fn catalog(&self) -> MutexGuard<'_, Catalog> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back), so a poisoned mutex is still usable.
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The in-memory stat caches, by entry name.
    pub(crate) fn stat_caches(&self) -> MutexGuard<'_, HashMap<String, StatCache>> {
        self.stat_caches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds the root lock shared for the length of one operation.
    pub fn operation(&self) -> Result<LockGuard, CacheError> {
        Ok(lock::lock(
            &self.layout.root_lock(),
            Mode::Shared,
            self.options.lock_timeout,
            "the cache root lock",
        )?)
    }

    /// Records a published artifact in the catalog, as the last good artifact of `name` when one
    /// is given. Call with the operation lock held, after publishing.
    pub fn record(
        &self,
        name: Option<&str>,
        published: &Published,
        fingerprint: Option<&str>,
        source: &str,
    ) -> Result<ArtifactRow, CacheError> {
        let now = now_ms();
        let row = ArtifactRow {
            id: published.id.clone(),
            kind: published.kind,
            size: published.size,
            files: published.files,
            disk_usage: published.disk_usage,
            created_at: now,
            accessed_at: now,
        };
        let mut catalog = self.catalog();
        match name {
            Some(name) => catalog.set_last_good(name, &row, fingerprint, source)?,
            None => catalog.record_artifact(&row)?,
        }
        Ok(row)
    }

    /// The entry `name` and the path of its artifact, without building anything. A missing
    /// artifact is reported as [`CacheError::NoArtifact`] (a miss), never a crash.
    pub fn path(&self, name: &str) -> Result<(EntryRow, PathBuf), CacheError> {
        name::validate(name)?;
        let _op = self.operation()?;
        let mut catalog = self.catalog();
        let entry = catalog.entry(name)?.ok_or_else(|| CacheError::NoEntry {
            name: name.to_string(),
            root: self.root().to_path_buf(),
        })?;
        let artifact = entry.artifact.clone().ok_or_else(|| CacheError::NoArtifact {
            name: name.to_string(),
        })?;
        if !self.store.is_present(&artifact) {
            return Err(CacheError::NoArtifact {
                name: name.to_string(),
            });
        }
        catalog.touch(&entry, now_ms())?;
        Ok((entry, self.store.content_path(&artifact)))
    }

    /// Resolves an artifact id, or an entry name, to the artifact id and its content path.
    pub fn resolve(&self, source: &str) -> Result<(String, PathBuf), CacheError> {
        if crate::store::is_artifact_id(source) {
            let _op = self.operation()?;
            if self.store.is_present(source) {
                return Ok((source.to_string(), self.store.content_path(source)));
            }
        }
        let (entry, path) = self.path(source)?;
        Ok((entry.artifact.unwrap_or_default(), path))
    }

    /// Entries with their state; all of them, or the one named.
    pub fn status(&self, name: Option<&str>) -> Result<Vec<EntryStatus>, CacheError> {
        let _op = self.operation()?;
        let catalog = self.catalog();
        let entries = match name {
            Some(name) => {
                name::validate(name)?;
                vec![catalog.entry(name)?.ok_or_else(|| CacheError::NoEntry {
                    name: name.to_string(),
                    root: self.root().to_path_buf(),
                })?]
            }
            None => catalog.entries()?,
        };
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let artifact_info = match &entry.artifact {
                Some(id) => catalog.artifact(id)?,
                None => None,
            };
            let present = entry
                .artifact
                .as_deref()
                .is_some_and(|id| self.store.is_present(id));
            let path = entry
                .artifact
                .as_deref()
                .filter(|_| present)
                .map(|id| self.store.content_path(id));
            let failure = catalog.failure(&entry.name)?;
            out.push(EntryStatus {
                entry,
                artifact_info,
                present,
                path,
                failure,
            });
        }
        Ok(out)
    }

    /// Re-hashes every artifact; moves damaged ones to quarantine and clears catalog references
    /// to anything that is gone, so neither is ever served again.
    pub fn verify(&self, progress: &Progress) -> Result<VerifyReport, CacheError> {
        let _op = self.operation()?;
        let mut report = VerifyReport::default();
        let ids = self.store.list()?;
        for id in &ids {
            report.checked += 1;
            let problems = self.store.verify(id)?;
            progress.advance(0, 1);
            if problems.is_empty() {
                report.ok += 1;
                continue;
            }
            let quarantined_to = self.store.quarantine(id)?;
            self.catalog().forget_artifact(id)?;
            report.damaged.push(DamagedArtifact {
                artifact: id.clone(),
                problems,
                quarantined_to,
            });
        }
        let mut catalog = self.catalog();
        let mut referenced = std::collections::HashSet::new();
        for entry in catalog.entries()? {
            let Some(id) = entry.artifact.clone() else {
                continue;
            };
            if self.store.is_present(&id) {
                referenced.insert(id);
            } else {
                catalog.forget_artifact(&id)?;
                report.dangling.push(entry.name);
            }
        }
        for row in catalog.artifacts()? {
            if !self.store.is_present(&row.id) {
                catalog.forget_artifact(&row.id)?;
            }
        }
        let damaged: std::collections::HashSet<_> = report.damaged.iter().map(|d| &d.artifact).collect();
        report.unreferenced = ids
            .iter()
            .filter(|id| !referenced.contains(*id) && !damaged.contains(id))
            .count() as u64;
        Ok(report)
    }
}
