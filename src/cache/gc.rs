//! Garbage collection: size and age budgets, leases, trash-then-delete, staging sweep.
//!
//! What is never collected: an entry's artifact (its current, last good one), an artifact
//! under a live lease, and an artifact a gc root (a symlink made by `activate --link symlink`)
//! still points at. Everything else may go, least recently used first, when a budget asks for
//! it; with no budget, only garbage goes (staging leftovers of dead processes, trash, quarantine,
//! and published artifacts the catalog does not know).
//!
//! How it stays safe for readers and writers:
//! 1. The decision is made under the ordinary shared root lock, so other processes keep working.
//! 2. Rows go first, holding no root lock: one durable SQLite transaction per thousand
//!    candidates deletes the rows of those still unprotected (no entry, no live lease, no gc
//!    root, all read inside the transaction, so no writer can change them in between) and not
//!    used since the decision. Readers never wait for SQLite's write lock, so this commit's
//!    fsync, the slow part under the collection's own I/O, delays no hit.
//! 3. Directories go next, in short holds of the exclusive root lock (at most 64 re-checks and
//!    about a millisecond of renames each, 10 ms apart): re-check that each one still has no
//!    row (a writer that found the content already published records it again; writers hold
//!    the shared lock from publish to catalog write, so none is half-way during a hold), no
//!    entry, lease or root, then rename it into `trash/`. A hit waits at most one hold. One
//!    that is protected again stays, without a row: an orphan the next collection looks at.
//! 4. The trash is deleted with no lock at all: nothing in it is reachable. Processes that still
//!    have a file open keep reading it (the kernel keeps unlinked data until it is closed).
//!
//! A killed GC leaves at worst an orphaned object (no catalog row) or entries in `trash/`; the
//! next GC collects both, and `verify` stays clean throughout.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Cache, CacheError};
use crate::catalog::{CatalogError, RootRow};
use crate::fs::{remove_tree, unique_name};
use crate::ids::{ArtifactId, EntryName};
use crate::lock::{self, Mode, OpGuard};
use crate::store::Store;

/// How many artifacts' rows one transaction deletes. It holds only SQLite's write lock, which no
/// hit waits for, so it can be large: fewer commits, fewer fsyncs.
const FORGET_BATCH: usize = 1024;

/// How many artifacts one hold of the exclusive root lock re-checks at most.
const BATCH: usize = 64;

/// How long one hold of the exclusive root lock goes on renaming: an operation that arrives
/// meanwhile waits about this long (one rename slowed by other I/O may overrun it).
const EXCLUSIVE_BUDGET: Duration = Duration::from_millis(1);

/// The pause between two exclusive holds: longer than an operation's longest lock poll
/// ([`lock::MAX_POLL`]), so every waiting operation gets in between two holds.
const YIELD_BETWEEN_BATCHES: Duration = Duration::from_millis(10);

/// Errors of garbage collection.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// A cache operation failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A catalog query failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// An entry given to `--evict` does not exist (nothing was changed).
    #[error(
        "cannot evict `{name}`: no such entry, so nothing was collected; `warmcache status` lists the entries"
    )]
    NoEntry {
        /// The name.
        name: EntryName,
    },
    /// The cache can only be read, so nothing can be collected.
    #[error(
        "cannot collect garbage in `{root}`: the cache can only be read ({reason}); nothing was \
         changed (`--dry-run` still reports what a collection would remove)"
    )]
    ReadOnly {
        /// The cache root.
        root: PathBuf,
        /// Why it is read-only.
        reason: String,
    },
    /// File-system failure (the message names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<crate::lock::LockError> for GcError {
    fn from(e: crate::lock::LockError) -> Self {
        GcError::Cache(e.into())
    }
}

/// What to collect.
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// Collect least recently used artifacts until the cache takes at most this many bytes.
    pub max_size: Option<u64>,
    /// Collect artifacts not used for longer than this.
    pub max_age: Option<Duration>,
    /// Only report what would be removed.
    pub dry_run: bool,
    /// Entries to forget first, releasing their artifacts.
    pub evict: Vec<EntryName>,
}

/// Why an artifact was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Published but unknown to the catalog (a crash between publish and record).
    Orphaned,
    /// Not used for longer than `max_age`.
    TooOld,
    /// Least recently used while the cache is over `max_size`.
    OverBudget,
}

impl Reason {
    /// The name used in JSON and human output alike.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Orphaned => "orphaned",
            Reason::TooOld => "too-old",
            Reason::OverBudget => "over-budget",
        }
    }
}

/// One collected (or, in a dry run, collectable) artifact.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Removed {
    /// The artifact id.
    pub artifact: ArtifactId,
    /// Bytes it took on disk.
    pub disk_usage: u64,
    /// When it was last used (unix ms).
    pub accessed_at: i64,
    /// Why it was chosen.
    pub reason: Reason,
}

/// What a garbage collection did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Artifacts removed (or that would be).
    pub removed: Vec<Removed>,
    /// Bytes freed from artifacts (or that would be).
    pub freed: u64,
    /// Bytes of artifacts before.
    pub size_before: u64,
    /// Bytes of artifacts after.
    pub size_after: u64,
    /// Artifacts kept because an entry or a lease protects them.
    pub protected: u64,
    /// Whether the size budget (if any) is met.
    pub budget_met: bool,
    /// Staging leftovers of dead processes removed.
    pub staging_swept: u64,
    /// Quarantined artifacts deleted.
    pub quarantine_cleared: u64,
    /// Time spent deciding, in milliseconds.
    pub decide_ms: u64,
    /// Time spent moving to trash and deleting, in milliseconds.
    pub delete_ms: u64,
    /// The longest time the exclusive root lock was held, in milliseconds (rounded down).
    pub max_exclusive_ms: u64,
}

struct Candidate {
    id: ArtifactId,
    disk_usage: u64,
    accessed_at: i64,
    orphan: bool,
}

/// What the decision phase found.
struct Survey {
    candidates: Vec<Candidate>,
    protected: u64,
    total: u64,
}

impl Cache {
    /// Collects garbage and, when asked, artifacts over the budgets. See the module docs for why
    /// this never pulls an artifact from under a reader that holds a lease or an entry.
    pub fn gc(&self, options: &GcOptions) -> Result<GcReport, GcError> {
        if !options.dry_run {
            // A collection writes the catalog: the counter journals are folded with it.
            self.will_fold();
        }
        // One collection at a time. A second one waits rather than giving up: the running one
        // may have decided before what this one was started for (the newest write over a
        // standing budget) existed.
        let _gc_lock = lock::lock(
            &self.layout().gc_lock(),
            Mode::Exclusive,
            self.options().lock_timeout,
            "another garbage collection of this cache",
        )?;
        let mut report = GcReport {
            dry_run: options.dry_run,
            ..GcReport::default()
        };
        let started = Instant::now();
        let now = self.now_ms();
        if !options.dry_run {
            if let Some(reason) = self.read_only() {
                return Err(GcError::ReadOnly {
                    root: self.root().to_path_buf(),
                    reason,
                });
            }
            // On a full disk, this is what lets the catalog record the removals below.
            self.layout().release_reserve()?;
        }
        let survey = self.survey(options, now, &mut report)?;
        report.size_before = survey.total;
        report.protected = survey.protected;

        let mut chosen = choose(survey.candidates, options, survey.total, now);
        report.decide_ms = started.elapsed().as_millis() as u64;
        let delete_start = Instant::now();
        if !options.dry_run {
            chosen = self.move_to_trash(chosen, now, &mut report)?;
        }
        report.freed = chosen.iter().map(|r| r.disk_usage).sum();
        report.size_after = report.size_before - report.freed;
        report.budget_met = options.max_size.is_none_or(|max| report.size_after <= max);
        report.removed = chosen;
        if !options.dry_run {
            self.empty_trash()?;
            report.quarantine_cleared = self.clear_quarantine()?;
            self.catalog().set_last_gc(now)?;
            self.layout().restore_reserve();
        }
        report.delete_ms = delete_start.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// The decision phase, under the shared lock like any operation: evictions (every name
    /// checked before any is forgotten), lease expiry, the staging sweep, and the candidates.
    fn survey(&self, options: &GcOptions, now: i64, report: &mut GcReport) -> Result<Survey, GcError> {
        let _op = self.operation()?;
        let mut evicted = Vec::new();
        for name in &options.evict {
            let entry = self.catalog().entry(name)?;
            let entry = entry.ok_or_else(|| GcError::NoEntry { name: name.clone() })?;
            evicted.extend(entry.artifact);
        }
        if !options.dry_run {
            for name in &options.evict {
                self.catalog().evict(name)?;
            }
            self.catalog().expire_leases(now)?;
            report.staging_swept = self.store().staging().sweep()?.removed;
        }
        let mut protected = self.catalog().protected_artifacts(now)?;
        let rooted = self.rooted_artifacts(&protected, !options.dry_run)?;
        protected.extend(rooted);
        if options.dry_run {
            // A dry run evicts nothing, but reports as if it had.
            for id in &evicted {
                protected.remove(id);
            }
        }
        let rows: HashMap<ArtifactId, (u64, i64)> = self
            .catalog()
            .artifacts()?
            .into_iter()
            .map(|a| (a.id, (a.disk_usage, a.accessed_at)))
            .collect();
        let mut survey = Survey {
            candidates: Vec::new(),
            protected: 0,
            total: 0,
        };
        for id in self.store().list()? {
            let (disk_usage, accessed_at, orphan) = match rows.get(&id) {
                Some(&(usage, accessed)) => (usage, accessed, false),
                None => {
                    let (usage, modified) = self.orphan_usage(&id)?;
                    (usage, modified, true)
                }
            };
            survey.total += disk_usage;
            if protected.contains(&id) {
                survey.protected += 1;
            } else {
                survey.candidates.push(Candidate {
                    id,
                    disk_usage,
                    accessed_at,
                    orphan,
                });
            }
        }
        Ok(survey)
    }

    /// Disk usage and modification time (unix ms) of a published artifact the catalog does not
    /// know.
    fn orphan_usage(&self, id: &ArtifactId) -> Result<(u64, i64), GcError> {
        let dir = self.layout().object_dir(id);
        let usage = crate::fs::disk_usage(&dir)?;
        let modified = std::fs::symlink_metadata(&dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Ok((usage, modified))
    }

    /// Removes the chosen artifacts in two steps (module docs, and docs/DESIGN.md, "Locks"):
    /// their rows go first, in a few durable transactions that take no root lock; then their
    /// directories move to the trash in short holds of the exclusive root lock. Returns those
    /// actually moved.
    fn move_to_trash(
        &self,
        chosen: Vec<Removed>,
        decided_at: i64,
        report: &mut GcReport,
    ) -> Result<Vec<Removed>, GcError> {
        let mut moved = Vec::with_capacity(chosen.len());
        let mut first = true;
        for batch in chosen.chunks(FORGET_BATCH) {
            let forgotten = self.forget_batch(batch, decided_at)?;
            let mut pending: Vec<&Removed> =
                batch.iter().filter(|r| forgotten.contains(&r.artifact)).collect();
            while !pending.is_empty() {
                if !first {
                    // Every operation waiting for the root lock gets in before the next hold.
                    std::thread::sleep(YIELD_BETWEEN_BATCHES);
                }
                first = false;
                let exclusive = OpGuard::take(
                    &self.layout().root_lock(),
                    Mode::Exclusive,
                    self.options().lock_timeout,
                )?;
                let held = Instant::now();
                let done = self.trash_some(&exclusive, &pending, &mut moved)?;
                report.max_exclusive_ms = report.max_exclusive_ms.max(held.elapsed().as_millis() as u64);
                drop(exclusive);
                pending.drain(..done);
            }
        }
        Ok(moved)
    }

    /// Deletes the rows of the batch's artifacts that are still unprotected and unused, in one
    /// durable transaction, holding no root lock: hits and leases never wait for this commit's
    /// fsync. A writer that meanwhile finds one of them already published records its row
    /// again, which [`Cache::trash_some`] sees. A crash after the commit leaves objects without
    /// rows, collected as orphans next time.
    fn forget_batch(&self, batch: &[Removed], decided_at: i64) -> Result<HashSet<ArtifactId>, GcError> {
        let ids: Vec<ArtifactId> = batch.iter().map(|r| r.artifact.clone()).collect();
        let store = self.store();
        let now = self.now_ms();
        let forgotten = self
            .catalog()
            .remove_unused_artifacts(&ids, decided_at, now, |roots| live_roots(store, roots).0)?;
        Ok(forgotten.into_iter().collect())
    }

    /// Under the exclusive root lock, so that no operation is between reading a catalog row or
    /// finding content published and recording or returning it: re-checks the first artifacts
    /// of `pending` (no row again, no entry, no live lease, no gc root) and moves them to the
    /// trash until [`EXCLUSIVE_BUDGET`] is spent. Returns how many of `pending` it handled;
    /// those moved go to `moved`, the others stay where they are (without a row: an orphan
    /// that a later collection looks at again).
    fn trash_some(
        &self,
        _exclusive: &OpGuard,
        pending: &[&Removed],
        moved: &mut Vec<Removed>,
    ) -> Result<usize, GcError> {
        let started = Instant::now();
        let look = &pending[..pending.len().min(BATCH)];
        let ids: Vec<ArtifactId> = look.iter().map(|r| r.artifact.clone()).collect();
        let mut keep = self.catalog().protected_artifacts(self.now_ms())?;
        keep.extend(self.rooted_artifacts(&keep, false)?);
        keep.extend(self.catalog().recorded_among(&ids)?);
        let mut done = 0;
        for removed in look {
            done += 1;
            if keep.contains(&removed.artifact) {
                continue;
            }
            let from = self.layout().object_dir(&removed.artifact);
            let to = self
                .layout()
                .trash_dir()
                .join(unique_name(&format!("{}.", removed.artifact)));
            match std::fs::rename(&from, &to) {
                Ok(()) => moved.push((*removed).clone()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(crate::fs::annotate2(e, "move to trash", &from, &to).into()),
            }
            if started.elapsed() >= EXCLUSIVE_BUDGET {
                break;
            }
        }
        Ok(done)
    }

    /// The artifacts that gc roots protect: those a symlink made by `activate --link symlink`
    /// still resolves to (docs/DESIGN.md, "GC roots"). With `prune`, roots whose path no longer
    /// resolves to their artifact are forgotten, unless the artifact is `protected` otherwise: an
    /// activation in progress holds a lease, and records its root before the swap makes it true.
    fn rooted_artifacts(
        &self,
        protected: &HashSet<ArtifactId>,
        prune: bool,
    ) -> Result<HashSet<ArtifactId>, GcError> {
        let roots = self.catalog().roots()?;
        let (rooted, dead) = live_roots(self.store(), roots);
        let dead: Vec<RootRow> = dead
            .into_iter()
            .filter(|r| !protected.contains(&r.artifact))
            .collect();
        if prune && !dead.is_empty() {
            tracing::info!(
                "forgetting {} gc root(s) that no longer point into the cache",
                dead.len()
            );
            self.catalog().remove_roots(&dead)?;
        }
        Ok(rooted)
    }

    /// Deletes everything in the trash (also what a killed collection left there).
    fn empty_trash(&self) -> Result<(), GcError> {
        for entry in fs_err::read_dir(self.layout().trash_dir())? {
            remove_tree(&entry?.path())?;
        }
        Ok(())
    }

    fn clear_quarantine(&self) -> Result<u64, GcError> {
        let mut n = 0;
        for entry in fs_err::read_dir(self.layout().quarantine_dir())? {
            remove_tree(&entry?.path())?;
            n += 1;
        }
        Ok(n)
    }

    /// Whether a background collection is due: the artifacts exceed `max_size` and none ran (or
    /// was started) within `interval`. Marks it started when it returns true, so concurrent
    /// commands do not all start one.
    pub fn gc_due(&self, max_size: u64, interval: Duration) -> Result<bool, GcError> {
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        Ok(self
            .catalog()
            .claim_gc_if_due(max_size, interval_ms, self.now_ms())?)
    }
}

/// Splits gc roots into the artifacts they protect (their path still resolves to the artifact's
/// content) and the roots that no longer do.
fn live_roots(store: &Store, roots: Vec<RootRow>) -> (HashSet<ArtifactId>, Vec<RootRow>) {
    let mut rooted = HashSet::new();
    let mut dead = Vec::new();
    for root in roots {
        let content = store.content_path(&root.artifact);
        let alive = match (std::fs::canonicalize(&root.path), std::fs::canonicalize(&content)) {
            (Ok(points_at), Ok(content)) => points_at == content,
            _ => false,
        };
        if alive {
            rooted.insert(root.artifact);
        } else {
            dead.push(root);
        }
    }
    (rooted, dead)
}

/// Picks what to remove: orphans always, then anything older than `max_age`, then least
/// recently used until the total fits `max_size`.
fn choose(mut candidates: Vec<Candidate>, options: &GcOptions, total: u64, now: i64) -> Vec<Removed> {
    candidates.sort_by_key(|c| (c.accessed_at, c.id.clone()));
    let cutoff = options.max_age.map(|age| now - age.as_millis() as i64);
    let mut remaining = total;
    let mut out = Vec::new();
    for c in candidates {
        let reason = if c.orphan {
            Some(Reason::Orphaned)
        } else if cutoff.is_some_and(|cutoff| c.accessed_at < cutoff) {
            Some(Reason::TooOld)
        } else if options.max_size.is_some_and(|max| remaining > max) {
            Some(Reason::OverBudget)
        } else {
            None
        };
        if let Some(reason) = reason {
            remaining -= c.disk_usage.min(remaining);
            out.push(Removed {
                artifact: c.id,
                disk_usage: c.disk_usage,
                accessed_at: c.accessed_at,
                reason,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ArtifactId {
        ArtifactId::from_hash(&blake3::hash(s.as_bytes()))
    }

    fn c(s: &str, usage: u64, accessed: i64) -> Candidate {
        Candidate {
            id: id(s),
            disk_usage: usage,
            accessed_at: accessed,
            orphan: false,
        }
    }

    #[test]
    fn chooses_least_recently_used_until_the_budget_fits() {
        let options = GcOptions {
            max_size: Some(250),
            ..GcOptions::default()
        };
        let chosen = choose(
            vec![c("new", 100, 30), c("old", 100, 10), c("mid", 100, 20)],
            &options,
            400,
            40,
        );
        let ids: Vec<_> = chosen.iter().map(|r| r.artifact.clone()).collect();
        assert_eq!(ids, [id("old"), id("mid")]);
    }

    #[test]
    fn no_budget_collects_only_orphans() {
        let mut orphan = c("o", 5, 1);
        orphan.orphan = true;
        let chosen = choose(vec![orphan, c("a", 5, 1)], &GcOptions::default(), 10, 2);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].reason, Reason::Orphaned);
    }

    #[test]
    fn max_age_collects_old_ones() {
        let options = GcOptions {
            max_age: Some(Duration::from_millis(50)),
            ..GcOptions::default()
        };
        let chosen = choose(vec![c("old", 1, 10), c("new", 1, 90)], &options, 2, 100);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].artifact, id("old"));
    }
}
