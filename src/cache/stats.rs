//! Counting what the cache does, and reporting it (docs/DESIGN.md, "Counting hits without
//! writing"): counts go to this process's journal (a hit never writes the catalog) and are folded
//! into the catalog by the next operation that writes it anyway.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Cache, CacheError};
use crate::ids::EntryName;
use crate::stats::{Counts, HOUR_MS, RETENTION_HOURS, hour_of, read_journals};

/// The counters of one entry, from [`Cache::stats`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EntryStats {
    /// The entry.
    pub name: String,
    /// Its counters.
    #[serde(flatten)]
    pub counts: Counts,
}

/// What [`Cache::stats`] reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatsReport {
    /// The cache root, canonical: it labels the root's series (Prometheus `root`), which must
    /// not depend on how the root was named (`--root ../cache` from another directory).
    pub root: std::path::PathBuf,
    /// The start of the first hour counted (unix ms), with `since`; `None`: since the start.
    pub since: Option<i64>,
    /// How many hours back `since` may reach (hourly rows are kept that long).
    pub retention_hours: i64,
    /// The whole root's counters over the window: every entry, plus what belongs to no entry.
    pub total: Counts,
    /// Per entry, by name (only the one asked for, when one was).
    pub entries: Vec<EntryStats>,
    /// Counts that were still in journals because the catalog could not be written (a
    /// read-only or full volume): included above, folded by the next writer.
    pub unfolded_lines: u64,
}

impl Cache {
    /// Counts `f` for `entry` (`""`: the root) now. Never fails and never writes the catalog.
    pub(crate) fn count(&self, entry: &str, f: impl FnOnce(&mut Counts)) {
        let now = self.now_ms();
        self.recorder().count(entry, now, f);
    }

    /// Counts a remote transfer's bytes (`(downloaded, uploaded)`), or a remote error.
    pub(crate) fn count_remote(&self, entry: &str, result: Result<(u64, u64), &super::ShareError>) {
        match result {
            Ok((down, up)) => {
                if down > 0 || up > 0 {
                    self.count(entry, |c| {
                        c.downloaded_bytes += down;
                        c.uploaded_bytes += up;
                    });
                }
            }
            Err(e) if is_remote_failure(e) => self.count(entry, |c| c.remote_errors += 1),
            Err(_) => {}
        }
    }

    /// Notes that this process writes the catalog anyway: its counts are folded when the cache is
    /// dropped.
    pub(crate) fn will_fold(&self) {
        self.fold_on_drop.store(true, Ordering::Relaxed);
    }

    /// Writes this process's pending counts to its journal now (a daemon does it at most once a
    /// second on its own, and when the cache is dropped).
    pub fn flush_stats(&self) {
        self.recorder().flush();
    }

    /// Folds every counter journal of the root into the catalog, in one transaction, then removes
    /// the journals of finished processes that are folded in full (docs/DESIGN.md, "Counting
    /// hits without writing"). Returns how many journal lines it added. Fails on a read-only
    /// catalog.
    pub fn fold_stats(&self) -> Result<u64, CacheError> {
        self.flush_stats();
        let dir = self.layout().stats_dir();
        let journals = read_journals(&dir)
            .map_err(|e| CacheError::Io(crate::fs::annotate(e, "read the counter journals in", &dir)))?;
        let folded = self.catalog().fold_stats(&dir, &journals, self.now_ms())?;
        for journal in &journals {
            // Only a journal whose writer is gone (we hold its lock), folded to its last whole
            // line: nothing more will ever be appended, and its offset row is forgotten by a
            // later fold once the file is gone.
            if journal.dead.is_some() {
                let _ = std::fs::remove_file(&journal.path);
            }
        }
        Ok(folded.lines)
    }

    /// The counters of the root and of each entry (or of `name` only), over the hours since
    /// `since` ago (rounded down to the hour) or over all time. Folds the journals first when the
    /// catalog can be written; otherwise adds what they hold, so the numbers are whole either
    /// way.
    pub fn stats(
        &self,
        name: Option<&EntryName>,
        since: Option<Duration>,
    ) -> Result<StatsReport, CacheError> {
        let now = self.now_ms();
        let since_hour = match since {
            None => None,
            Some(d) => {
                let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                if ms > RETENTION_HOURS * HOUR_MS {
                    return Err(CacheError::StatsWindow {
                        asked: crate::units::format_duration(d),
                        retention_days: RETENTION_HOURS / 24,
                    });
                }
                Some(hour_of(now.saturating_sub(ms)))
            }
        };
        if self.read_only().is_none()
            && let Err(e) = self.fold_stats()
        {
            tracing::warn!("the counter journals could not be folded into the catalog: {e}");
        }
        self.flush_stats();
        let catalog = self.catalog();
        // What is still in journals past the offsets (nothing, after a fold, but a live
        // process's newest lines) is added to the counters read with those offsets.
        let (mut by_entry, offsets) = catalog.stats_snapshot(since_hour)?;
        let dir = self.layout().stats_dir();
        let journals = read_journals(&dir).unwrap_or_default();
        let mut unfolded_lines = 0;
        let mut build_ms = HashMap::new();
        for journal in &journals {
            let (deltas, _) = journal.deltas_from(offsets.get(&journal.name).copied().unwrap_or(0));
            for mut delta in deltas {
                unfolded_lines += 1;
                if since_hour.is_some_and(|h| delta.hour < h) {
                    continue;
                }
                catalog.credit_saved(&mut build_ms, &mut delta)?;
                by_entry.entry(delta.entry).or_default().add(&delta.counts);
            }
        }
        drop(catalog);
        let mut total = Counts::default();
        for counts in by_entry.values() {
            total.add(counts);
        }
        let entries = by_entry
            .into_iter()
            .filter(|(entry, _)| !entry.is_empty())
            .filter(|(entry, _)| name.is_none_or(|n| n.as_str() == entry))
            .map(|(name, counts)| EntryStats { name, counts })
            .collect();
        Ok(StatsReport {
            root: std::fs::canonicalize(self.root()).unwrap_or_else(|_| self.root().to_path_buf()),
            since: since_hour,
            retention_hours: RETENTION_HOURS,
            total,
            entries,
            unfolded_lines,
        })
    }
}

/// Whether `e` counts as a remote error: the remote failed, not the local cache, and not a
/// write refused because the machine is read-only (docs/DESIGN.md, "Read-only writers"), which
/// is the setting at work: counting it would make every push of a read-only machine an error on
/// the dashboard.
fn is_remote_failure(e: &super::ShareError) -> bool {
    let read_only = matches!(e, super::ShareError::Remote(e) if e.is_read_only());
    !e.is_local() && !read_only
}
