//! Garbage collection: size and age budgets, leases, trash-then-delete, staging sweep.
//!
//! What is never collected: an entry's artifact (its current, last good one) and an artifact
//! under a live lease. Everything else may go, least recently used first, when a budget asks for
//! it; with no budget, only garbage goes (staging leftovers of dead processes, trash, quarantine,
//! and published artifacts the catalog does not know).
//!
//! How it stays safe for readers and writers:
//! 1. The decision is made under the ordinary shared root lock, so other processes keep working.
//! 2. Removal happens in small batches, each under the exclusive root lock: re-check that each
//!    candidate is still unprotected and unused, delete its catalog row, then rename its
//!    directory into `trash/`. Writers hold the shared lock from publish to catalog write, so no
//!    batch can interleave with "found identical content already published, record it". A batch
//!    is a few hundred renames: other processes wait milliseconds, not the length of a GC.
//! 3. The trash is deleted with no lock at all: nothing in it is reachable. Processes that still
//!    have a file open keep reading it (the kernel keeps unlinked data until it is closed).
//!
//! A killed GC leaves at worst an orphaned object (no catalog row) or entries in `trash/`; the
//! next GC collects both, and `verify` stays clean throughout.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rusqlite::{OptionalExtension, params};

use crate::cache::{Cache, CacheError};
use crate::catalog::{CatalogError, now_ms};
use crate::fs::{remove_tree, unique_name};
use crate::lock::{self, Mode};

/// How many artifacts one exclusive-lock batch moves to the trash: small enough that the
/// operations waiting behind a batch wait milliseconds.
const BATCH: usize = 64;

/// The pause between two exclusive batches: longer than an operation's longest lock poll
/// ([`lock::MAX_POLL`]), so every waiting operation gets in between two batches.
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
    /// Another garbage collection holds the GC lock.
    #[error("another `warmcache gc` is running on this cache (lock `{path}`); let it finish")]
    Busy {
        /// The GC lock file.
        path: PathBuf,
    },
    /// An entry given to `--evict` does not exist.
    #[error("cannot evict `{name}`: no such entry; `warmcache status` lists the entries")]
    NoEntry {
        /// The name.
        name: String,
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
    pub evict: Vec<String>,
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

/// One collected (or, in a dry run, collectable) artifact.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Removed {
    /// The artifact id.
    pub artifact: String,
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
    /// The longest time the exclusive root lock was held, in milliseconds.
    pub max_exclusive_ms: u64,
}

struct Candidate {
    id: String,
    disk_usage: u64,
    accessed_at: i64,
    orphan: bool,
}

/// The ids that must not be collected: every entry's artifact and every live lease.
fn protected_ids(cache: &Cache, now: i64) -> Result<HashSet<String>, CacheError> {
    let mut catalog = cache.catalog();
    let path = catalog.path().to_path_buf();
    let conn = catalog.connection();
    let err = |source| CatalogError::Sql {
        path: path.clone(),
        op: "list protected artifacts",
        source,
    };
    let mut stmt = conn
        .prepare(
            "SELECT artifact FROM entries WHERE artifact IS NOT NULL
             UNION SELECT artifact FROM leases WHERE expires_at > ?1",
        )
        .map_err(err)?;
    let rows = stmt.query_map([now], |r| r.get::<_, String>(0)).map_err(err)?;
    let mut out = HashSet::new();
    for row in rows {
        out.insert(row.map_err(err)?);
    }
    Ok(out)
}

impl Cache {
    /// Collects garbage and, when asked, artifacts over the budgets. See the module docs for why
    /// this never pulls an artifact from under a reader that holds a lease or an entry.
    pub fn gc(&self, options: &GcOptions) -> Result<GcReport, GcError> {
        let gc_lock_path = self.layout().entry_locks_dir().with_file_name("gc.lock");
        let _gc_lock = lock::try_lock(&gc_lock_path, Mode::Exclusive)?.ok_or_else(|| GcError::Busy {
            path: gc_lock_path.clone(),
        })?;
        let mut report = GcReport {
            dry_run: options.dry_run,
            ..GcReport::default()
        };
        let started = Instant::now();
        let now = now_ms();

        // Decide, under the shared lock like any operation.
        let (candidates, protected, total) = {
            let _op = self.operation()?;
            if !options.dry_run {
                for name in &options.evict {
                    self.evict(name)?;
                }
                self.expire_leases(now)?;
                report.staging_swept = self.store().staging().sweep()?.removed;
            } else {
                for name in &options.evict {
                    if self.catalog().entry(name)?.is_none() {
                        return Err(GcError::NoEntry { name: name.clone() });
                    }
                }
            }
            let mut protected = protected_ids(self, now)?;
            if options.dry_run {
                // A dry run evicts nothing, but reports as if it had.
                for name in &options.evict {
                    if let Some(id) = self.catalog().entry(name)?.and_then(|e| e.artifact) {
                        protected.remove(&id);
                    }
                }
            }
            let rows: HashMap<String, (u64, i64)> = self
                .catalog()
                .artifacts()?
                .into_iter()
                .map(|a| (a.id, (a.disk_usage, a.accessed_at)))
                .collect();
            let mut total = 0u64;
            let mut candidates = Vec::new();
            for id in self.store().list()? {
                let (disk_usage, accessed_at, orphan) = match rows.get(&id) {
                    Some(&(usage, accessed)) => (usage, accessed, false),
                    None => {
                        let dir = self.layout().object_dir(&id);
                        let usage = crate::fs::disk_usage(&dir)?;
                        let modified = std::fs::symlink_metadata(&dir)
                            .and_then(|m| m.modified())
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_millis() as i64)
                            .unwrap_or(0);
                        (usage, modified, true)
                    }
                };
                total += disk_usage;
                if protected.contains(&id) {
                    report.protected += 1;
                } else {
                    candidates.push(Candidate {
                        id,
                        disk_usage,
                        accessed_at,
                        orphan,
                    });
                }
            }
            (candidates, protected, total)
        };
        drop(protected);
        report.size_before = total;

        let mut chosen = choose(candidates, options, total, now);
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
            self.set_meta("last_gc_at", &now.to_string())?;
        }
        report.delete_ms = delete_start.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// Moves the chosen artifacts to the trash in batches under the exclusive root lock,
    /// re-checking each one; returns those actually moved.
    fn move_to_trash(
        &self,
        chosen: Vec<Removed>,
        decided_at: i64,
        report: &mut GcReport,
    ) -> Result<Vec<Removed>, GcError> {
        let mut moved = Vec::with_capacity(chosen.len());
        for (i, batch) in chosen.chunks(BATCH).enumerate() {
            if i > 0 {
                std::thread::sleep(YIELD_BETWEEN_BATCHES);
            }
            let _exclusive = lock::lock(
                &self.layout().root_lock(),
                Mode::Exclusive,
                self.options().lock_timeout,
                "the cache root lock (exclusive, for gc)",
            )?;
            let held = Instant::now();
            let protected = protected_ids(self, now_ms())?;
            let mut catalog = self.catalog();
            let path = catalog.path().to_path_buf();
            let err = |source| CatalogError::Sql {
                path: path.clone(),
                op: "remove artifacts",
                source,
            };
            let conn = catalog.connection();
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(err)?;
            let mut batch_moved = Vec::new();
            for removed in batch {
                if protected.contains(&removed.artifact) {
                    continue;
                }
                // Used since we decided: leave it for a later collection.
                let accessed: Option<i64> = tx
                    .query_row(
                        "SELECT accessed_at FROM artifacts WHERE id = ?1",
                        [&removed.artifact],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(err)?;
                if accessed.is_some_and(|a| a >= decided_at) {
                    continue;
                }
                tx.execute("DELETE FROM artifacts WHERE id = ?1", params![removed.artifact])
                    .map_err(err)?;
                tx.execute(
                    "DELETE FROM sources WHERE artifact = ?1",
                    params![removed.artifact],
                )
                .map_err(err)?;
                batch_moved.push(removed.clone());
            }
            // Rows first, then directories: a crash in between leaves an orphan (collected next
            // time), never a row that names a missing artifact.
            tx.commit().map_err(err)?;
            drop(catalog);
            for removed in batch_moved {
                let from = self.layout().object_dir(&removed.artifact);
                let to = self
                    .layout()
                    .trash_dir()
                    .join(unique_name(&format!("{}.", removed.artifact)));
                match std::fs::rename(&from, &to) {
                    Ok(()) => moved.push(removed),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(crate::fs::annotate2(e, "move to trash", &from, &to).into()),
                }
            }
            report.max_exclusive_ms = report.max_exclusive_ms.max(held.elapsed().as_millis() as u64);
        }
        Ok(moved)
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

    /// Forgets an entry (and its failure record), so its artifact is no longer protected.
    pub fn evict(&self, name: &str) -> Result<(), GcError> {
        let mut catalog = self.catalog();
        let path = catalog.path().to_path_buf();
        let err = |source| CatalogError::Sql {
            path: path.clone(),
            op: "evict an entry",
            source,
        };
        let conn = catalog.connection();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let n = tx
            .execute("DELETE FROM entries WHERE name = ?1", [name])
            .map_err(err)?;
        tx.execute("DELETE FROM failures WHERE name = ?1", [name])
            .map_err(err)?;
        tx.execute("DELETE FROM stat_caches WHERE name = ?1", [name])
            .map_err(err)?;
        tx.commit().map_err(err)?;
        if n == 0 {
            return Err(GcError::NoEntry {
                name: name.to_string(),
            });
        }
        Ok(())
    }

    fn expire_leases(&self, now: i64) -> Result<(), GcError> {
        let mut catalog = self.catalog();
        let path = catalog.path().to_path_buf();
        catalog
            .connection()
            .execute("DELETE FROM leases WHERE expires_at <= ?1", [now])
            .map_err(|source| CatalogError::Sql {
                path,
                op: "expire leases",
                source,
            })?;
        Ok(())
    }

    /// Holds `artifact` against garbage collection for `duration` (see [`Lease`]).
    pub fn lease(&self, artifact: &str, duration: Duration) -> Result<Lease<'_>, CacheError> {
        let expires_at = now_ms() + duration.as_millis() as i64;
        let holder = format!("pid {}", std::process::id());
        let mut catalog = self.catalog();
        let path = catalog.path().to_path_buf();
        let conn = catalog.connection();
        conn.execute(
            "INSERT INTO leases (artifact, holder, expires_at) VALUES (?1, ?2, ?3)",
            params![artifact, holder, expires_at],
        )
        .map_err(|source| CatalogError::Sql {
            path,
            op: "take a lease",
            source,
        })?;
        let id = conn.last_insert_rowid();
        Ok(Lease {
            cache: self,
            id,
            expires_at,
            keep: false,
        })
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), GcError> {
        let mut catalog = self.catalog();
        let path = catalog.path().to_path_buf();
        catalog
            .connection()
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .map_err(|source| CatalogError::Sql {
                path,
                op: "write metadata",
                source,
            })?;
        Ok(())
    }

    /// Whether a background collection is due: a size budget is set, the artifacts exceed it,
    /// and none ran (or was started) within `interval`. Marks it started when it returns true,
    /// so concurrent commands do not all start one.
    pub fn gc_due(&self, max_size: u64, interval: Duration) -> Result<bool, GcError> {
        let now = now_ms();
        let mut catalog = self.catalog();
        let path = catalog.path().to_path_buf();
        let err = |source| CatalogError::Sql {
            path: path.clone(),
            op: "check the size budget",
            source,
        };
        let conn = catalog.connection();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let last: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'last_gc_at'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        let last = last.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        if now - last < interval.as_millis() as i64 {
            return Ok(false);
        }
        let total: i64 = tx
            .query_row("SELECT COALESCE(SUM(disk_usage), 0) FROM artifacts", [], |r| {
                r.get(0)
            })
            .map_err(err)?;
        if (total.max(0) as u64) <= max_size {
            return Ok(false);
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_gc_at', ?1)",
            [now.to_string()],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(true)
    }
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

/// A hold on an artifact against garbage collection, released on drop unless kept.
#[derive(Debug)]
pub struct Lease<'a> {
    cache: &'a Cache,
    id: i64,
    expires_at: i64,
    keep: bool,
}

impl Lease<'_> {
    /// When the lease ends by itself (unix ms).
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// Keeps the lease after this guard is dropped, until it expires (for a command-line caller
    /// that reads the path after the process has exited).
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let mut catalog = self.cache.catalog();
        if let Err(e) = catalog
            .connection()
            .execute("DELETE FROM leases WHERE id = ?1", [self.id])
        {
            tracing::warn!("could not release lease {}: {e}", self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, usage: u64, accessed: i64) -> Candidate {
        Candidate {
            id: id.into(),
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
        let ids: Vec<_> = chosen.iter().map(|r| r.artifact.as_str()).collect();
        assert_eq!(ids, ["old", "mid"]);
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
        assert_eq!(chosen[0].artifact, "old");
    }
}
