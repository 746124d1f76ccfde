//! The cache: one root's store, catalog and locks behind the operations users call. This is the
//! only orchestrator; the parts below it (`build`, `catalog`, `store`, `archive`, `activate`,
//! `remote`, `fs`, `lock`) never name [`Cache`].
//!
//! Every operation takes the root lock shared for its own length ([`OpGuard`]), so garbage
//! collection (which takes it exclusive for its short critical part) can never remove what an
//! operation is about to record or hand out. A `Cache` is `Send + Sync`: a daemon can share one
//! across threads and call it thousands of times; each call opens its own lock handle because
//! `flock` locks belong to an open file, not a thread.

mod activate;
#[cfg(feature = "internals")]
mod bulk;
mod ensure;
mod gc;
mod import;
mod inspect;
mod lease;
mod share;
mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use activate::Activated;
pub use ensure::{
    EnsureError, EnsureOptions, EnsureStatus, Ensured, FailureReport, Revalidated, Revalidation, WaitPolicy,
};
pub use gc::{GcError, GcOptions, GcReport, Reason, Removed};
pub use import::{ImportError, ImportOptions, Imported, ModeRule};
pub use inspect::{DamagedArtifact, EntryStatus, VerifyReport};
pub use lease::Lease;
pub use share::{IndexOutcome, Pulled, PushReport, RemoteActivity, ShareError, Sharing, degraded};
pub use stats::{EntryStats, StatsReport};

use crate::build::StatCache;
use crate::catalog::{ArtifactRow, Catalog, CatalogError, EntryRow};
use crate::clock::Clock;
use crate::ids::{ArtifactId, EntryName};
use crate::layout::Layout;
use crate::lock::{LockError, Mode, OpGuard};
use crate::store::{Published, Store, StoreError};

/// The default for how long to wait for a lock held by another process.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// Errors of cache operations.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The root cannot be created or written.
    #[error("cannot use `{root}` as a cache root: {source}")]
    Root {
        /// The root.
        root: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An invalid entry name.
    #[error(transparent)]
    Name(#[from] crate::ids::NameError),
    /// No entry of that name.
    #[error(
        "no entry named `{name}` in the cache at `{root}`; create it with `warmcache import PATH \
         --name {name}` or `warmcache ensure {name}`"
    )]
    NoEntry {
        /// The name asked for.
        name: EntryName,
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
        name: EntryName,
    },
    /// The artifact was found damaged when it was about to be served, and was quarantined: it is
    /// never served again (docs/DESIGN.md, "Corruption is never served").
    #[error(
        "the artifact {artifact} is damaged ({problem}); it was moved to `{}` and will never be \
         served; {advice}",
        quarantined_to.display()
    )]
    Damaged {
        /// The artifact.
        artifact: ArtifactId,
        /// What is wrong with it.
        problem: String,
        /// Where it was moved.
        quarantined_to: PathBuf,
        /// What to do now (names the entry or the destination).
        advice: String,
    },
    /// Neither an entry nor a present artifact goes by that name.
    #[error("`{source_name}` is neither an entry nor an artifact in the cache at `{root}`")]
    Unknown {
        /// What was asked for.
        source_name: String,
        /// The cache root.
        root: PathBuf,
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
    /// The processes of a killed holder's build could not be ended, or its record not used.
    #[error(transparent)]
    Run(#[from] crate::shell::RunRecordError),
    /// An archive could not be imported.
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    /// An import's permission rule or hook was refused or failed.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// An activation failed (DEST is untouched).
    #[error(transparent)]
    Activate(#[from] crate::activate::ActivateError),
    /// Other I/O (the message names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// `stats --since` asked for more than the hourly counters keep.
    #[error(
        "cannot report the counts of the last {asked}: hourly counts are kept for {retention_days} \
         days (older ones only in the totals); ask for at most {retention_days}d, or leave out \
         --since for the totals"
    )]
    StatsWindow {
        /// The window asked for.
        asked: String,
        /// How many days of hourly counts are kept.
        retention_days: i64,
    },
}

/// Settings of an open cache.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// How long to wait for locks held by other processes.
    pub lock_timeout: Duration,
    /// The clock failure backoff, leases and access times are decided by.
    pub clock: Arc<dyn Clock>,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            clock: crate::clock::system(),
        }
    }
}

/// Where an entry's last good artifact is, from [`Cache::path`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct EntryPath {
    /// The entry.
    pub name: EntryName,
    /// The content path of its artifact.
    pub path: PathBuf,
    /// The artifact.
    pub artifact: ArtifactId,
    /// When the lease taken with it ends (unix ms), if one was asked for.
    pub lease_expires_at: Option<i64>,
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
    stat_caches: Mutex<HashMap<EntryName, StatCache>>,
    /// This process's counts on their way to its counter journal (docs/DESIGN.md, "Counting
    /// hits without writing").
    recorder: Mutex<crate::stats::Recorder>,
    /// This process wrote the catalog (a build, an import, a collection): the journals are
    /// folded into it when the cache is dropped.
    fold_on_drop: std::sync::atomic::AtomicBool,
}

impl Drop for Cache {
    /// Writes the pending counts to the journal and, when this process wrote the catalog anyway,
    /// folds the journals into it (best effort: a count never fails an operation).
    fn drop(&mut self) {
        if self.fold_on_drop.load(std::sync::atomic::Ordering::Relaxed) && self.read_only().is_none() {
            if let Err(e) = self.fold_stats() {
                tracing::debug!("the counter journals were not folded: {e}");
            }
        } else {
            self.flush_stats();
        }
    }
}

impl Cache {
    /// Whether `path` (which need not exist) is inside the cache root `root`, reached by any
    /// path (see `Layout::holds`), without opening or creating anything: a command that replaces
    /// a directory wholesale (`restore`) refuses one inside the cache, whose artifacts never
    /// change.
    pub fn root_holds(root: &Path, path: &Path) -> bool {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        Layout::new(&root).holds(path)
    }

    /// Whether the cache root `root` lies inside `dir` ([`Layout::lies_within`]), without opening
    /// or creating the cache.
    pub fn root_within(root: &Path, dir: &Path) -> bool {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        Layout::new(&root).lies_within(dir)
    }

    /// Opens (creating if needed) the cache at `root` with default options.
    pub fn open(root: &Path) -> Result<Self, CacheError> {
        Self::open_with(root, CacheOptions::default())
    }

    /// Opens the cache at `root` to collect garbage in it: like [`Cache::open_with`], but when
    /// a full disk leaves the catalog readable only, the space set aside for collection is
    /// released first and the catalog opened again, so that `gc` can still free space.
    pub fn open_for_gc(root: &Path, options: CacheOptions) -> Result<Self, CacheError> {
        let cache = Self::open_with(root, options.clone())?;
        if cache.read_only().is_none() || !cache.layout.reserve().exists() {
            return Ok(cache);
        }
        let layout = cache.layout.clone();
        drop(cache);
        // On a read-only volume this fails, nothing can be freed, and `gc` will say so.
        if let Err(e) = layout.release_reserve() {
            tracing::debug!("{e}");
        }
        Self::open_with(root, options)
    }

    /// Opens (creating if needed) the cache at `root`. Nothing is swept here: staging leftovers
    /// of dead processes are removed by the first operation that stages something, by `verify`
    /// and by `gc`, so that a cache hit only reads (docs/DESIGN.md, "Staging and lock files").
    pub fn open_with(root: &Path, options: CacheOptions) -> Result<Self, CacheError> {
        let root_error = |source| CacheError::Root {
            root: root.to_path_buf(),
            source,
        };
        // Absolute, so that the paths handed out stay valid from any working directory.
        let absolute = std::path::absolute(root).map_err(root_error)?;
        let layout = Layout::new(&absolute);
        layout.create().map_err(root_error)?;
        let store = Store::new(&layout).map_err(root_error)?;
        let catalog = Catalog::open(&layout.catalog())?;
        let layout_stats = layout.stats_dir();
        Ok(Self {
            layout,
            store,
            catalog: Mutex::new(catalog),
            options,
            stat_caches: Mutex::new(HashMap::new()),
            recorder: Mutex::new(crate::stats::Recorder::new(layout_stats)),
            fold_on_drop: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// The options the cache was opened with.
    pub fn options(&self) -> &CacheOptions {
        &self.options
    }

    /// The path of an artifact's content (which may or may not exist).
    pub fn content_path(&self, id: &ArtifactId) -> PathBuf {
        self.store.content_path(id)
    }

    /// Why the cache can only be read (its file system is read-only or full), if so: reading
    /// commands work, anything that would record a change fails with that reason.
    pub fn read_only(&self) -> Option<String> {
        self.catalog().read_only().map(str::to_string)
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Now, by the cache's clock (unix ms).
    pub(crate) fn now_ms(&self) -> i64 {
        self.options.clock.now_ms()
    }

    /// The catalog connection (one per cache; calls from several threads take turns).
    pub(crate) fn catalog(&self) -> MutexGuard<'_, Catalog> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back), so a poisoned mutex is still usable.
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This process's counts on their way to its journal.
    pub(crate) fn recorder(&self) -> MutexGuard<'_, crate::stats::Recorder> {
        self.recorder.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The in-memory stat caches, by entry name.
    pub(crate) fn stat_caches(&self) -> MutexGuard<'_, HashMap<EntryName, StatCache>> {
        self.stat_caches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds the root lock shared for the length of one operation.
    pub(crate) fn operation(&self) -> Result<OpGuard, CacheError> {
        Ok(OpGuard::take(
            &self.layout.root_lock(),
            Mode::Shared,
            self.options.lock_timeout,
        )?)
    }

    /// Records a published artifact in the catalog, as the last good artifact of `name` when one
    /// is given. Takes the operation guard the artifact was published under, so garbage
    /// collection cannot remove it between publication and this row.
    pub(crate) fn record(
        &self,
        _op: &OpGuard,
        name: Option<&EntryName>,
        published: &Published,
        fingerprint: Option<&crate::ids::Fingerprint>,
        source: &str,
    ) -> Result<ArtifactRow, CacheError> {
        let now = self.now_ms();
        let row = ArtifactRow {
            id: published.id.clone(),
            kind: published.kind,
            size: published.size,
            files: published.files,
            disk_usage: published.disk_usage,
            created_at: now,
            accessed_at: now,
            identity: published.identity.clone(),
        };
        self.will_fold();
        let mut catalog = self.catalog();
        match name {
            Some(name) => catalog.set_last_good(name, &row, fingerprint, source)?,
            None => catalog.record_artifact(&row)?,
        }
        Ok(row)
    }

    /// Checks an artifact before it is served, under the caller's operation guard
    /// (docs/DESIGN.md, "Corruption is never served"): its current stat identity against
    /// `recorded`. They match: intact. They differ (or nothing was recorded): the content was
    /// touched, or the root was copied; it is re-hashed once, and then either its identity is
    /// recorded afresh or it is quarantined and its catalog references cleared (the caller
    /// reports it).
    pub(crate) fn check_artifact(
        &self,
        op: &OpGuard,
        id: &ArtifactId,
        recorded: Option<&str>,
    ) -> Result<Checked, CacheError> {
        let Some(current) = self.store.identity(id)? else {
            return Ok(Checked::Missing);
        };
        if recorded == Some(current.as_str()) {
            return Ok(Checked::Intact);
        }
        // Taken before the re-hash: a change during it changes the identity again, so the one
        // recorded never vouches for bytes the re-hash did not see.
        let problems = self.store.verify(id)?;
        if problems.is_empty() {
            self.catalog().set_identity(id, &current)?;
            return Ok(Checked::Intact);
        }
        let problem = problems
            .iter()
            .map(|d| match d.path.as_str() {
                "" => d.problem.clone(),
                path => format!("`{path}`: {}", d.problem),
            })
            .collect::<Vec<_>>()
            .join("; ");
        Ok(Checked::Damaged(self.quarantine_damaged(op, id, problem)?))
    }

    /// Moves a damaged artifact to quarantine and clears the catalog's references to it, so it
    /// becomes a miss. One already moved by another process is reported where it was.
    pub(crate) fn quarantine_damaged(
        &self,
        op: &OpGuard,
        id: &ArtifactId,
        problem: String,
    ) -> Result<Quarantined, CacheError> {
        let to = match self.store.quarantine(op, id) {
            Ok(to) => to,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.layout.quarantine_dir(),
            Err(e) => return Err(e.into()),
        };
        self.catalog().forget_artifact(id)?;
        let quarantined = Quarantined {
            artifact: id.clone(),
            problem,
            to,
        };
        // Reported by the caller: in `ensure`'s result, or as its error.
        tracing::debug!("{}", quarantined.warning());
        Ok(quarantined)
    }

    /// The entry `name` with its present, intact artifact, under the caller's operation guard. A
    /// missing artifact is [`CacheError::NoArtifact`] (a miss), never a crash; a damaged one is
    /// quarantined and reported as [`CacheError::Damaged`].
    fn present_entry(&self, op: &OpGuard, name: &EntryName) -> Result<(EntryRow, ArtifactId), CacheError> {
        let (entry, identity) =
            self.catalog()
                .entry_with_identity(name)?
                .ok_or_else(|| CacheError::NoEntry {
                    name: name.clone(),
                    root: self.root().to_path_buf(),
                })?;
        let artifact = entry
            .artifact
            .clone()
            .ok_or_else(|| CacheError::NoArtifact { name: name.clone() })?;
        match self.check_artifact(op, &artifact, identity.as_deref())? {
            Checked::Intact => Ok((entry, artifact)),
            Checked::Missing => Err(CacheError::NoArtifact { name: name.clone() }),
            Checked::Damaged(q) => Err(q.into_error(format!(
                "run `warmcache ensure {name}` to build it again (or import it again)"
            ))),
        }
    }

    /// The path of entry `name`'s last good artifact, without building anything; with `lease`,
    /// the artifact is also held against garbage collection for that long, taken in the same
    /// step under the lock, so the path handed out is never one a collection already removed.
    pub fn path(&self, name: &EntryName, lease: Option<Duration>) -> Result<EntryPath, CacheError> {
        let op = self.operation()?;
        let (entry, artifact) = self.present_entry(&op, name)?;
        self.catalog().touch(&entry, self.now_ms())?;
        let lease_expires_at = match lease {
            Some(duration) => {
                let lease = self.lease_locked(&op, &artifact, duration)?;
                let expires = lease.expires_at();
                lease.keep();
                Some(expires)
            }
            None => None,
        };
        Ok(EntryPath {
            name: entry.name,
            path: self.store.content_path(&artifact),
            artifact,
            lease_expires_at,
        })
    }

    /// Resolves an artifact id, or an entry name, to a present artifact, under the caller's
    /// operation guard.
    pub(crate) fn resolve(&self, op: &OpGuard, source: &str) -> Result<ArtifactId, CacheError> {
        if let Ok(id) = ArtifactId::new(source) {
            let recorded = self.catalog().artifact(&id)?.and_then(|row| row.identity);
            match self.check_artifact(op, &id, recorded.as_deref())? {
                Checked::Intact => return Ok(id),
                Checked::Damaged(q) => {
                    return Err(q.into_error(
                        "import it again, or run `warmcache ensure` for the entry it was built for"
                            .to_string(),
                    ));
                }
                Checked::Missing => {}
            }
        }
        match EntryName::new(source) {
            Ok(name) => Ok(self.present_entry(op, &name)?.1),
            Err(_) => Err(CacheError::Unknown {
                source_name: source.to_string(),
                root: self.root().to_path_buf(),
            }),
        }
    }
}

/// What [`Cache::check_artifact`] found.
#[derive(Debug)]
pub(crate) enum Checked {
    /// Present, and its identity (or, after a change, its content) checks out.
    Intact,
    /// Gone: a miss.
    Missing,
    /// Damaged, now quarantined: a miss, with a warning.
    Damaged(Quarantined),
}

/// A damaged artifact found before it was served, and where it went.
#[derive(Debug, Clone)]
pub(crate) struct Quarantined {
    artifact: ArtifactId,
    problem: String,
    to: PathBuf,
}

impl Quarantined {
    /// The warning for users (stderr and JSON).
    pub(crate) fn warning(&self) -> String {
        format!(
            "the artifact {} is damaged ({}); it was moved to `{}` and is not served",
            self.artifact,
            self.problem,
            self.to.display()
        )
    }

    /// As an error, with what to do now.
    pub(crate) fn into_error(self, advice: String) -> CacheError {
        CacheError::Damaged {
            artifact: self.artifact,
            problem: self.problem,
            quarantined_to: self.to,
            advice,
        }
    }
}
