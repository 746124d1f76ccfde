//! Counters that prove the cache works (docs/DESIGN.md, "Counting hits without writing"): what
//! is counted, the per-process counter journal a hit appends to, and how journals are read back.
//!
//! A hit must not write the catalog (docs/DESIGN.md, "A hit only reads"), so counts go first
//! to memory, then, best effort, as one short `O_APPEND` write to this process's own journal file
//! (no fsync; any failure is ignored: a count must never fail a hit). The next operation that
//! writes the catalog anyway folds every journal into it (`catalog/stats.rs`). This module is a
//! leaf: it knows files and lines, never the catalog or the cache.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One hour in milliseconds: the width of a time bucket.
pub const HOUR_MS: i64 = 3_600_000;

/// How long hourly rows are kept (31 days): older ones are merged into one row per entry that
/// holds all earlier counts (bucket 0), so totals stay exact and `--since` can look back this far.
pub const RETENTION_HOURS: i64 = 31 * 24;

/// How often a process that counts many hits (a daemon) writes its batch to its journal; a
/// one-shot command writes on its first count and when its cache is dropped.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The environment variable that turns counting off when set to `off` (for benchmarks that
/// compare the hit path with and without counting).
pub const DISABLE_ENV: &str = "WARMCACHE_STATS";

/// The counters of one entry (or of a whole root) over some time. Every field only ever grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Counts {
    /// `ensure` calls served the artifact of the current inputs without building or pulling.
    pub hits: u64,
    /// `ensure` calls that found no artifact of the current inputs (built, pulled, served stale,
    /// or failed): `hits + misses` is the number of `ensure` calls.
    pub misses: u64,
    /// Misses served the last good artifact as stale (a subset of `misses`).
    pub stale_serves: u64,
    /// Builder runs that succeeded and were recorded.
    pub builds_ok: u64,
    /// Builder runs that failed with a transient failure.
    pub builds_failed_transient: u64,
    /// Builder runs that failed with a deterministic failure.
    pub builds_failed_deterministic: u64,
    /// Builder runs ended by a signal (not recorded as a failure of the inputs).
    pub builds_interrupted: u64,
    /// Milliseconds the builder ran, over all its runs.
    pub build_ms: u64,
    /// Milliseconds of building avoided: each hit counts the duration of the entry's last build.
    pub saved_ms: u64,
    /// Bytes downloaded from a remote (pulls).
    pub downloaded_bytes: u64,
    /// Bytes uploaded to a remote (pushes).
    pub uploaded_bytes: u64,
    /// Remote operations that failed (and were reported, degraded or not); a write refused on a
    /// read-only machine is not one.
    pub remote_errors: u64,
}

impl Counts {
    /// The fields, by name, in a fixed order (the catalog's columns and the JSON keys).
    pub const FIELDS: [&'static str; 12] = [
        "hits",
        "misses",
        "stale_serves",
        "builds_ok",
        "builds_failed_transient",
        "builds_failed_deterministic",
        "builds_interrupted",
        "build_ms",
        "saved_ms",
        "downloaded_bytes",
        "uploaded_bytes",
        "remote_errors",
    ];

    /// The values in the order of [`Counts::FIELDS`].
    pub fn values(&self) -> [u64; 12] {
        [
            self.hits,
            self.misses,
            self.stale_serves,
            self.builds_ok,
            self.builds_failed_transient,
            self.builds_failed_deterministic,
            self.builds_interrupted,
            self.build_ms,
            self.saved_ms,
            self.downloaded_bytes,
            self.uploaded_bytes,
            self.remote_errors,
        ]
    }

    /// From values in the order of [`Counts::FIELDS`].
    pub fn from_values(v: [u64; 12]) -> Self {
        Self {
            hits: v[0],
            misses: v[1],
            stale_serves: v[2],
            builds_ok: v[3],
            builds_failed_transient: v[4],
            builds_failed_deterministic: v[5],
            builds_interrupted: v[6],
            build_ms: v[7],
            saved_ms: v[8],
            downloaded_bytes: v[9],
            uploaded_bytes: v[10],
            remote_errors: v[11],
        }
    }

    /// Adds `other` into `self` (saturating: a counter never wraps).
    pub fn add(&mut self, other: &Counts) {
        let mut v = self.values();
        for (a, b) in v.iter_mut().zip(other.values()) {
            *a = a.saturating_add(b);
        }
        *self = Self::from_values(v);
    }

    /// Whether every counter is zero.
    pub fn is_empty(&self) -> bool {
        self.values().iter().all(|v| *v == 0)
    }
}

/// One journal line: counts of one entry (`""`: the root itself, for what belongs to no entry)
/// in one hour.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Delta {
    /// The start of the hour (unix ms, a multiple of [`HOUR_MS`]).
    pub hour: i64,
    /// The entry name, or `""` for the root.
    pub entry: String,
    /// The counts.
    #[serde(flatten)]
    pub counts: Counts,
}

/// Replaces the metrics file `path` with `text` in one rename (so a collector never reads half
/// of it), with the mode of any new file so that the collector's own user can read it.
pub fn write_metrics(path: &Path, text: &str) -> std::io::Result<()> {
    crate::fs::write_atomic(path, text.as_bytes())
}

/// The start of the hour holding `ms`.
pub fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// Whether counting is turned off by the environment ([`DISABLE_ENV`]).
pub fn disabled_by_env() -> bool {
    std::env::var(DISABLE_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("off"))
}

/// A process's counts not yet written to its journal, and its journal once opened.
#[derive(Debug)]
pub(crate) struct Recorder {
    dir: PathBuf,
    disabled: bool,
    pending: BTreeMap<(String, i64), Counts>,
    last_flush: Option<Instant>,
    journal: Option<File>,
    /// Opening the journal failed (a read-only or full volume): not tried again by this process.
    unwritable: bool,
}

impl Recorder {
    /// A recorder whose journal goes in `dir` (created when first needed).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            disabled: disabled_by_env(),
            pending: BTreeMap::new(),
            last_flush: None,
            journal: None,
            unwritable: false,
        }
    }

    /// Counts `f` for `entry` (`""`: the root) at `now_ms`, writing the batch to the journal when
    /// the last write is older than [`FLUSH_INTERVAL`] (or there was none).
    pub fn count(&mut self, entry: &str, now_ms: i64, f: impl FnOnce(&mut Counts)) {
        if self.disabled {
            return;
        }
        f(self
            .pending
            .entry((entry.to_string(), hour_of(now_ms)))
            .or_default());
        if self.last_flush.is_none_or(|t| t.elapsed() >= FLUSH_INTERVAL) {
            self.flush();
        }
    }

    /// Writes the pending counts to this process's journal: one `write` of whole lines, no
    /// fsync. Best effort: on any failure the counts are dropped and nothing else happens (a
    /// count must never fail the operation it counts).
    pub fn flush(&mut self) {
        self.last_flush = Some(Instant::now());
        if self.pending.is_empty() {
            return;
        }
        let mut text = String::new();
        for ((entry, hour), counts) in std::mem::take(&mut self.pending) {
            let delta = Delta { hour, entry, counts };
            if let Ok(line) = serde_json::to_string(&delta) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        if let Some(file) = self.journal() {
            // One write of whole lines: a reader sees a line whole or not at all (a torn tail
            // from a full disk has no newline and is never read).
            if let Err(e) = file.write_all(text.as_bytes()) {
                tracing::debug!("counts not written to the journal: {e}");
            }
        }
    }

    /// This process's journal, opened (and locked for the life of the process) on first use.
    fn journal(&mut self) -> Option<&mut File> {
        if self.journal.is_none() && !self.unwritable {
            match open_journal(&self.dir) {
                Ok(file) => self.journal = Some(file),
                Err(e) => {
                    tracing::debug!("no counter journal in `{}`: {e}", self.dir.display());
                    self.unwritable = true;
                }
            }
        }
        self.journal.as_mut()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The suffix of a journal file; files being created end in [`TMP_SUFFIX`] instead.
pub(crate) const JOURNAL_SUFFIX: &str = ".journal";
const TMP_SUFFIX: &str = ".journal-new";

/// Creates this process's journal: under a temporary name, locked (exclusive `flock`, held until
/// the process ends or drops its cache), then renamed to its final name, so that a folder that
/// can lock a `*.journal` file knows its writer is gone and nothing will ever be appended to it.
fn open_journal(dir: &Path) -> std::io::Result<File> {
    std::fs::create_dir_all(dir)?;
    let name = format!(
        "{}-{:016x}",
        std::process::id(),
        u64::from_le_bytes(crate::random::bytes::<8>())
    );
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&tmp)?;
    file.try_lock()?;
    std::fs::rename(&tmp, dir.join(format!("{name}{JOURNAL_SUFFIX}")))?;
    Ok(file)
}

/// A journal found by a folder.
#[derive(Debug)]
pub(crate) struct JournalFile {
    /// Its file name (the catalog keeps how far it was folded under this name).
    pub name: String,
    /// Its path.
    pub path: PathBuf,
    /// Its content when read; only whole lines are ever used.
    pub bytes: Vec<u8>,
    /// Held when its writer is gone (the lock was free): the file may then be removed once
    /// folded in full. `None` for a live writer's journal.
    pub dead: Option<File>,
}

impl JournalFile {
    /// The deltas of the whole lines from byte `from`, and the offset after the last whole line.
    /// Undecodable lines are skipped (a damaged count must not stop the fold).
    pub fn deltas_from(&self, from: u64) -> (Vec<Delta>, u64) {
        let from = (from as usize).min(self.bytes.len());
        let tail = &self.bytes[from..];
        let end = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let deltas = tail[..end]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        (deltas, (from + end) as u64)
    }
}

/// Reads every journal in `dir`, locking (and so marking dead) those whose writer is gone, and
/// removes temporary files that a writer killed while creating its journal left over an hour ago.
/// A missing directory holds no journals.
pub(crate) fn read_journals(dir: &Path) -> std::io::Result<Vec<JournalFile>> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for item in listing {
        let item = item?;
        let name = item.file_name().to_string_lossy().into_owned();
        let path = item.path();
        if name.ends_with(TMP_SUFFIX) {
            let old = item
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(3600)));
            if old {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        if !name.ends_with(JOURNAL_SUFFIX) {
            continue;
        }
        let mut file = match File::open(&path) {
            Ok(file) => file,
            // Removed by another folder since the listing: it was folded in full.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // Its writer holds an exclusive lock for as long as it may append.
        let dead = file.try_lock().is_ok();
        let still_there = || match (file.metadata(), std::fs::metadata(&path)) {
            (Ok(open), Ok(named)) => crate::fs::same_file(&open, &named),
            _ => false,
        };
        if dead && !still_there() {
            // Another folder removed it after folding it in full, between our open and lock.
            continue;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        out.push(JournalFile {
            name,
            path,
            bytes,
            dead: dead.then_some(file),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_lines_are_read() {
        let line = serde_json::to_string(&Delta {
            hour: HOUR_MS,
            entry: "e".into(),
            counts: Counts {
                hits: 2,
                ..Counts::default()
            },
        })
        .unwrap();
        let bytes = format!("{line}\nnot json\n{line}\n{{\"hour\":").into_bytes();
        let file = JournalFile {
            name: "x".into(),
            path: PathBuf::new(),
            bytes: bytes.clone(),
            dead: None,
        };
        let (deltas, end) = file.deltas_from(0);
        assert_eq!(deltas.len(), 2);
        assert_eq!(end as usize, bytes.len() - "{\"hour\":".len());
        let (again, same) = file.deltas_from(end);
        assert!(again.is_empty());
        assert_eq!(same, end);
    }
}
