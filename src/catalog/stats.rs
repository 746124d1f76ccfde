//! Counters: folding counter journals into per-entry, per-hour rows, and reading them back
//! (docs/DESIGN.md, "Counting hits without writing").

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rusqlite::{OptionalExtension, params};

use super::{Catalog, CatalogError};
use crate::ids::EntryName;
use crate::stats::{Counts, Delta, HOUR_MS, JournalFile, RETENTION_HOURS, hour_of};

/// What a fold did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Folded {
    /// Journal lines added to the catalog.
    pub lines: u64,
    /// How far each journal is now folded (by file name).
    pub offsets: HashMap<String, u64>,
}

/// The counter columns, in [`Counts::FIELDS`] order.
fn column_list() -> String {
    Counts::FIELDS.join(", ")
}

/// `SUM(column)` of each counter column, in [`Counts::FIELDS`] order.
fn sum_list() -> String {
    Counts::FIELDS
        .iter()
        .map(|c| format!("SUM({c})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Credits each hit of `delta` with the duration of its entry's last successful build, the time
/// the hit saved, reading that duration once per entry (`memo`). The one rule for time saved,
/// for a fold and for the counts still in journals alike.
fn credit_saved(
    conn: &rusqlite::Connection,
    memo: &mut HashMap<String, u64>,
    delta: &mut Delta,
) -> rusqlite::Result<()> {
    if delta.counts.hits == 0 || delta.entry.is_empty() {
        return Ok(());
    }
    let last = match memo.get(&delta.entry) {
        Some(ms) => *ms,
        None => {
            let ms: Option<i64> = conn
                .query_row(
                    "SELECT build_ms FROM entries WHERE name = ?1",
                    [&delta.entry],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            let ms = ms.unwrap_or(0).max(0) as u64;
            memo.insert(delta.entry.clone(), ms);
            ms
        }
    };
    delta.counts.saved_ms = delta
        .counts
        .saved_ms
        .saturating_add(delta.counts.hits.saturating_mul(last));
    Ok(())
}

impl Catalog {
    /// Adds the whole lines of `journals` not folded yet to the counters, records how far each
    /// journal is folded, forgets the offsets of journals no longer in `dir`, and merges hourly
    /// rows older than the retention into each entry's bucket 0, all in one transaction: a crash
    /// at any point leaves either none or all of it, so a journal line is counted exactly once
    /// (docs/DESIGN.md, "Counting hits without writing"). Each hit counts the duration of its
    /// entry's last build as time saved.
    pub fn fold_stats(
        &mut self,
        dir: &Path,
        journals: &[JournalFile],
        now_ms: i64,
    ) -> Result<Folded, CatalogError> {
        let columns = column_list();
        let placeholders = (3..3 + Counts::FIELDS.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let updates = Counts::FIELDS
            .iter()
            .map(|c| format!("{c} = {c} + excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let upsert = format!(
            "INSERT INTO stats (entry, hour, {columns}) VALUES (?1, ?2, {placeholders})
             ON CONFLICT (entry, hour) DO UPDATE SET {updates}"
        );
        let cutoff = hour_of(now_ms) - RETENTION_HOURS * HOUR_MS;
        let sums = sum_list();
        let rollup = format!(
            "INSERT INTO stats (entry, hour, {columns})
             SELECT entry, 0, {sums} FROM stats WHERE hour > 0 AND hour < ?1 GROUP BY entry
             ON CONFLICT (entry, hour) DO UPDATE SET {updates}"
        );
        self.write("fold the counter journals", |tx| {
            let mut folded = Folded::default();
            let mut build_ms: HashMap<String, u64> = HashMap::new();
            for journal in journals {
                // Removed since it was read: whoever removed it had folded it in full and
                // committed first (a journal is removed only after that), and its offset row may
                // already be forgotten, so reading it again would count it twice.
                if !journal.path.exists() {
                    continue;
                }
                let from: i64 = tx
                    .query_row(
                        "SELECT folded FROM stats_journals WHERE name = ?1",
                        [&journal.name],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(0);
                let from = from.max(0) as u64;
                if journal.bytes.len() as u64 <= from {
                    // Read before another fold went further: nothing new here, and the offset
                    // must never move back.
                    folded.offsets.insert(journal.name.clone(), from);
                    continue;
                }
                let (deltas, end) = journal.deltas_from(from);
                for mut delta in deltas {
                    credit_saved(tx, &mut build_ms, &mut delta)?;
                    let mut values: Vec<i64> = vec![];
                    for v in delta.counts.values() {
                        values.push(i64::try_from(v).unwrap_or(i64::MAX));
                    }
                    let mut statement = tx.prepare_cached(&upsert)?;
                    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&delta.entry, &delta.hour];
                    params.extend(values.iter().map(|v| v as &dyn rusqlite::ToSql));
                    statement.execute(params.as_slice())?;
                    folded.lines += 1;
                }
                if end > from {
                    tx.execute(
                        "INSERT INTO stats_journals (name, folded) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET folded = excluded.folded",
                        params![journal.name, end as i64],
                    )?;
                }
                folded.offsets.insert(journal.name.clone(), end.max(from));
            }
            // The offsets of journals removed after an earlier fold. Gone for good: a journal's
            // name is never used again, so forgetting it can never make lines count twice.
            let names: Vec<String> = {
                let mut statement = tx.prepare("SELECT name FROM stats_journals")?;
                let rows = statement.query_map([], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for name in names {
                if !dir.join(&name).exists() && !folded.offsets.contains_key(&name) {
                    tx.execute("DELETE FROM stats_journals WHERE name = ?1", [&name])?;
                }
            }
            tx.execute(&rollup, [cutoff])?;
            tx.execute("DELETE FROM stats WHERE hour > 0 AND hour < ?1", [cutoff])?;
            Ok(folded)
        })
    }

    /// The counters per entry from `since_hour` ([`Catalog::stats_by_entry`]) and how far each
    /// journal was folded ([`Catalog::stats_offsets`]), read in one transaction so that a fold
    /// committed in between cannot make them disagree.
    #[allow(clippy::type_complexity)]
    pub fn stats_snapshot(
        &self,
        since_hour: Option<i64>,
    ) -> Result<(BTreeMap<String, Counts>, HashMap<String, u64>), CatalogError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(self.err("read the counters"))?;
        let counts = self.stats_by_entry(since_hour)?;
        let offsets = self.stats_offsets()?;
        tx.finish().map_err(self.err("read the counters"))?;
        Ok((counts, offsets))
    }

    /// How far each journal was folded, by file name.
    pub fn stats_offsets(&self) -> Result<HashMap<String, u64>, CatalogError> {
        let err = self.err("read the counter journal offsets");
        let mut statement = self
            .conn
            .prepare("SELECT name, folded FROM stats_journals")
            .map_err(&err)?;
        let rows = statement
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(&err)?;
        let mut out = HashMap::new();
        for row in rows {
            let (name, folded) = row.map_err(&err)?;
            out.insert(name, folded.max(0) as u64);
        }
        Ok(out)
    }

    /// The counters per entry (`""`: the root's own) summed over the hours from `since_hour`
    /// (all, including bucket 0 of older counts, without one).
    pub fn stats_by_entry(&self, since_hour: Option<i64>) -> Result<BTreeMap<String, Counts>, CatalogError> {
        let err = self.err("read the counters");
        let sums = sum_list();
        let mut statement = self
            .conn
            .prepare(&format!(
                "SELECT entry, {sums} FROM stats WHERE hour >= ?1 GROUP BY entry ORDER BY entry"
            ))
            .map_err(&err)?;
        let rows = statement
            .query_map([since_hour.unwrap_or(i64::MIN)], |r| {
                let mut values = [0u64; 12];
                for (i, v) in values.iter_mut().enumerate() {
                    *v = r.get::<_, Option<i64>>(i + 1)?.unwrap_or(0).max(0) as u64;
                }
                Ok((r.get::<_, String>(0)?, Counts::from_values(values)))
            })
            .map_err(&err)?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (entry, counts) = row.map_err(&err)?;
            out.insert(entry, counts);
        }
        Ok(out)
    }

    /// Records the duration of `name`'s last successful build: what each later hit saves.
    pub fn set_build_ms(&mut self, name: &EntryName, ms: u64) -> Result<(), CatalogError> {
        self.check_writable("record a build's duration")?;
        self.conn
            .execute(
                "UPDATE entries SET build_ms = ?2 WHERE name = ?1",
                params![name.as_str(), i64::try_from(ms).unwrap_or(i64::MAX)],
            )
            .map(drop)
            .map_err(self.err("record a build's duration"))
    }

    /// Credits each hit of `delta` with the time it saved ([`credit_saved`]), for counts read
    /// from journals but not folded.
    pub(crate) fn credit_saved(
        &self,
        memo: &mut HashMap<String, u64>,
        delta: &mut Delta,
    ) -> Result<(), CatalogError> {
        credit_saved(&self.conn, memo, delta).map_err(self.err("read a build's duration"))
    }
}
