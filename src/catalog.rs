//! The catalog: what each named entry points to, its failures, leases and access times, in SQLite.
//!
//! SQLite in WAL mode lets a daemon and many short CLI processes read and write the same catalog
//! at once; every change is a transaction (`BEGIN IMMEDIATE`, so writers queue on the busy
//! timeout instead of failing half-way). `synchronous = FULL` because a call that returned must
//! survive a power loss. The catalog only ever names artifacts that exist: callers publish the
//! artifact first and write the row after.
//!
//! The schema is versioned with `PRAGMA user_version` and migrated forward on open; a catalog from
//! a newer warmcache is refused rather than misread. A row that cannot be decoded is treated as
//! missing (a miss), never as an error that stops the cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::build::{FailureKind, FailureRecord};
use crate::store::ArtifactKind;

/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Schema migrations; `user_version` is the number applied. Append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: entries, artifacts, failures, leases, stat caches, key-value metadata.
    "CREATE TABLE artifacts (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        size INTEGER NOT NULL,
        files INTEGER NOT NULL,
        disk_usage INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        accessed_at INTEGER NOT NULL
    );
    CREATE TABLE entries (
        name TEXT PRIMARY KEY,
        artifact TEXT,
        fingerprint TEXT,
        source TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        accessed_at INTEGER NOT NULL
    );
    CREATE INDEX entries_artifact ON entries(artifact);
    CREATE TABLE failures (
        name TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        kind TEXT NOT NULL,
        exit TEXT NOT NULL,
        error_tail TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        first_failed_at INTEGER NOT NULL,
        last_failed_at INTEGER NOT NULL,
        next_retry_at INTEGER
    );
    CREATE TABLE leases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        artifact TEXT NOT NULL,
        holder TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX leases_artifact ON leases(artifact);
    CREATE TABLE stat_caches (
        name TEXT PRIMARY KEY,
        data BLOB NOT NULL
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );",
    // 2: which artifact an imported archive became, so an archive is extracted once.
    "CREATE TABLE sources (
        key TEXT PRIMARY KEY,
        artifact TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX sources_artifact ON sources(artifact);",
];

/// Errors of the catalog. Each names the catalog file.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The database could not be opened or migrated.
    #[error(
        "failed to open the catalog `{path}`: {source}; if the file is damaged, move it aside \
         (the cache's artifacts stay; entries must be imported or built again)"
    )]
    Open {
        /// The catalog file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// Written by a newer warmcache.
    #[error(
        "the catalog `{path}` has schema version {found}, newer than this warmcache understands \
         ({known}); upgrade warmcache or use another --root"
    )]
    TooNew {
        /// The catalog file.
        path: PathBuf,
        /// The version found.
        found: i64,
        /// The newest version known.
        known: i64,
    },
    /// A query failed.
    #[error("catalog `{path}`: failed to {op}: {source}")]
    Sql {
        /// The catalog file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },
}

/// An artifact as recorded in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArtifactRow {
    /// The artifact id.
    pub id: String,
    /// File or tree.
    pub kind: ArtifactKind,
    /// Total bytes of its files.
    pub size: u64,
    /// Number of files.
    pub files: u64,
    /// Bytes it takes on disk (what size budgets count).
    pub disk_usage: u64,
    /// When it was first recorded (unix ms).
    pub created_at: i64,
    /// When it was last used (unix ms, updated at most once per [`ACCESS_GRANULARITY_MS`]).
    pub accessed_at: i64,
}

/// A named entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EntryRow {
    /// The entry name.
    pub name: String,
    /// The last good artifact, if any.
    pub artifact: Option<String>,
    /// The fingerprint the last good artifact was built from (builds only).
    pub fingerprint: Option<String>,
    /// How the last good artifact came: `import`, `build` or `pull`.
    pub source: String,
    /// When the entry was created (unix ms).
    pub created_at: i64,
    /// When its artifact last changed (unix ms).
    pub updated_at: i64,
    /// When it was last used (unix ms).
    pub accessed_at: i64,
}

/// Access times are written at most this often per entry, so cache hits stay read-only.
pub const ACCESS_GRANULARITY_MS: i64 = 60_000;

/// The current time in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A connection to the catalog of one cache root.
#[derive(Debug)]
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

impl Catalog {
    /// Opens (creating and migrating if needed) the catalog at `path`.
    ///
    /// Some first-open steps (switching a new database to WAL, recovering the WAL index) report
    /// "database is locked" at once instead of waiting on the busy timeout when several
    /// processes open a fresh catalog together, so those are retried here, within the same
    /// bound.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        let start = std::time::Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            match Self::open_once(path) {
                Err(CatalogError::Open { source, .. })
                    if is_busy(&source) && start.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Self, CatalogError> {
        let open_err = |source| CatalogError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
                .map_err(open_err)?;
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        let known = MIGRATIONS.len() as i64;
        let current: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if current > known {
            return Err(CatalogError::TooNew {
                path: path.to_path_buf(),
                found: current,
                known,
            });
        }
        if current < known {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(open_err)?;
            // Re-read inside the write lock: another process may have migrated meanwhile.
            let current: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(open_err)?;
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
                tx.execute_batch(sql).map_err(open_err)?;
                tx.pragma_update(None, "user_version", (i + 1) as i64)
                    .map_err(open_err)?;
            }
            tx.commit().map_err(open_err)?;
        }
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> CatalogError + use<> {
        sql_err(&self.path, op)
    }

    /// The entry called `name`, if it exists and decodes.
    pub fn entry(&self, name: &str) -> Result<Option<EntryRow>, CatalogError> {
        self.conn
            .query_row(
                "SELECT name, artifact, fingerprint, source, created_at, updated_at, accessed_at
                 FROM entries WHERE name = ?1",
                [name],
                decode_entry,
            )
            .optional()
            .map_err(self.err("read an entry"))
            .map(Option::flatten)
    }

    /// All entries, by name (undecodable rows are skipped).
    pub fn entries(&self) -> Result<Vec<EntryRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, artifact, fingerprint, source, created_at, updated_at, accessed_at
                 FROM entries ORDER BY name",
            )
            .map_err(self.err("list entries"))?;
        let rows = stmt
            .query_map([], decode_entry)
            .map_err(self.err("list entries"))?;
        let mut out = Vec::new();
        for row in rows {
            out.extend(row.map_err(self.err("list entries"))?);
        }
        Ok(out)
    }

    /// The artifact row of `id`, if recorded and decodable.
    pub fn artifact(&self, id: &str) -> Result<Option<ArtifactRow>, CatalogError> {
        self.conn
            .query_row(
                "SELECT id, kind, size, files, disk_usage, created_at, accessed_at FROM artifacts WHERE id = ?1",
                [id],
                decode_artifact,
            )
            .optional()
            .map_err(self.err("read an artifact"))
            .map(Option::flatten)
    }

    /// All recorded artifacts (undecodable rows are skipped).
    pub fn artifacts(&self) -> Result<Vec<ArtifactRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, kind, size, files, disk_usage, created_at, accessed_at FROM artifacts ORDER BY id")
            .map_err(self.err("list artifacts"))?;
        let rows = stmt
            .query_map([], decode_artifact)
            .map_err(self.err("list artifacts"))?;
        let mut out = Vec::new();
        for row in rows {
            out.extend(row.map_err(self.err("list artifacts"))?);
        }
        Ok(out)
    }

    /// Records an artifact (if new) and makes it the last good artifact of `name`, clearing any
    /// recorded failure, in one transaction. Call only after the artifact is published.
    pub fn set_last_good(
        &mut self,
        name: &str,
        artifact: &ArtifactRow,
        fingerprint: Option<&str>,
        source: &str,
    ) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let err = |op| sql_err(&path, op);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("start a transaction"))?;
        insert_artifact(&tx, artifact).map_err(err("record an artifact"))?;
        let now = artifact.accessed_at;
        tx.execute(
            "INSERT INTO entries (name, artifact, fingerprint, source, created_at, updated_at, accessed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5)
             ON CONFLICT(name) DO UPDATE SET artifact = excluded.artifact,
                 fingerprint = excluded.fingerprint, source = excluded.source,
                 updated_at = excluded.updated_at, accessed_at = excluded.accessed_at",
            params![name, artifact.id, fingerprint, source, now],
        )
        .map_err(err("record an entry"))?;
        tx.execute("DELETE FROM failures WHERE name = ?1", [name])
            .map_err(err("clear a failure"))?;
        tx.commit().map_err(err("commit"))
    }

    /// Records an artifact without naming it (an anonymous import).
    pub fn record_artifact(&mut self, artifact: &ArtifactRow) -> Result<(), CatalogError> {
        insert_artifact(&self.conn, artifact)
            .map(drop)
            .map_err(self.err("record an artifact"))
    }

    /// Notes that `name` (and its artifact) was used, at most once per
    /// [`ACCESS_GRANULARITY_MS`] so that cache hits do not write on every call.
    pub fn touch(&mut self, entry: &EntryRow, now: i64) -> Result<(), CatalogError> {
        if now - entry.accessed_at < ACCESS_GRANULARITY_MS {
            return Ok(());
        }
        let path = self.path.clone();
        let err = || sql_err(&path, "record an access");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err())?;
        tx.execute(
            "UPDATE entries SET accessed_at = ?2 WHERE name = ?1",
            params![entry.name, now],
        )
        .map_err(err())?;
        if let Some(artifact) = &entry.artifact {
            tx.execute(
                "UPDATE artifacts SET accessed_at = ?2 WHERE id = ?1",
                params![artifact, now],
            )
            .map_err(err())?;
        }
        tx.commit().map_err(err())
    }

    /// The failure recorded for `name`, if any.
    pub fn failure(&self, name: &str) -> Result<Option<FailureRecord>, CatalogError> {
        self.conn
            .query_row(
                "SELECT fingerprint, kind, exit, error_tail, attempts, first_failed_at, last_failed_at,
                        next_retry_at
                 FROM failures WHERE name = ?1",
                [name],
                |r| {
                    // A row with values of the wrong shape is a corrupt row: no failure memory
                    // (the next `ensure` builds), never an error.
                    let decode = || -> rusqlite::Result<Option<FailureRecord>> {
                        let kind = match r.get::<_, String>(1)?.as_str() {
                            "transient" => FailureKind::Transient,
                            "deterministic" => FailureKind::Deterministic,
                            _ => return Ok(None),
                        };
                        Ok(Some(FailureRecord {
                            fingerprint: r.get(0)?,
                            kind,
                            exit: r.get(2)?,
                            error_tail: r.get(3)?,
                            attempts: r.get(4)?,
                            first_failed_at: r.get(5)?,
                            last_failed_at: r.get(6)?,
                            next_retry_at: r.get(7)?,
                        }))
                    };
                    Ok(decode().ok().flatten())
                },
            )
            .optional()
            .map(Option::flatten)
            .map_err(self.err("read a failure"))
    }

    /// Records a failure for `name` (creating the entry if it has none yet). Never touches the
    /// entry's last good artifact or fingerprint.
    pub fn record_failure(&mut self, name: &str, failure: &FailureRecord) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let err = || sql_err(&path, "record a failure");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err())?;
        tx.execute(
            "INSERT INTO entries (name, artifact, fingerprint, source, created_at, updated_at, accessed_at)
             VALUES (?1, NULL, NULL, 'build', ?2, ?2, ?2) ON CONFLICT(name) DO NOTHING",
            params![name, failure.last_failed_at],
        )
        .map_err(err())?;
        tx.execute(
            "INSERT OR REPLACE INTO failures
             (name, fingerprint, kind, exit, error_tail, attempts, first_failed_at, last_failed_at,
              next_retry_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                name,
                failure.fingerprint,
                failure.kind.as_str(),
                failure.exit,
                failure.error_tail,
                failure.attempts,
                failure.first_failed_at,
                failure.last_failed_at,
                failure.next_retry_at
            ],
        )
        .map_err(err())?;
        tx.commit().map_err(err())
    }

    /// Forgets an artifact that is gone (quarantined or deleted): its row, and every entry's
    /// reference to it, so the catalog never names what does not exist.
    pub fn forget_artifact(&mut self, id: &str) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let err = || sql_err(&path, "forget an artifact");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err())?;
        tx.execute(
            "UPDATE entries SET artifact = NULL, fingerprint = NULL WHERE artifact = ?1",
            [id],
        )
        .map_err(err())?;
        tx.execute("DELETE FROM artifacts WHERE id = ?1", [id])
            .map_err(err())?;
        tx.execute("DELETE FROM sources WHERE artifact = ?1", [id])
            .map_err(err())?;
        tx.commit().map_err(err())
    }

    /// The artifact an import source (an archive's digest and the import options) became.
    pub fn source(&self, key: &str) -> Result<Option<String>, CatalogError> {
        self.conn
            .query_row("SELECT artifact FROM sources WHERE key = ?1", [key], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map(|id| id.filter(|id| crate::store::is_artifact_id(id)))
            .map_err(self.err("read an import source"))
    }

    /// Remembers the artifact an import source became.
    pub fn set_source(&mut self, key: &str, artifact: &str) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO sources (key, artifact, created_at) VALUES (?1, ?2, ?3)",
                params![key, artifact, now_ms()],
            )
            .map(drop)
            .map_err(self.err("record an import source"))
    }

    /// The raw connection, for the modules that keep their own tables (build, gc).
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The catalog file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn sql_err(path: &Path, op: &'static str) -> impl FnOnce(rusqlite::Error) -> CatalogError + use<> {
    let path = path.to_path_buf();
    move |source| CatalogError::Sql { path, op, source }
}

fn insert_artifact(conn: &Connection, a: &ArtifactRow) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO artifacts (id, kind, size, files, disk_usage, created_at, accessed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(id) DO UPDATE SET accessed_at = max(accessed_at, excluded.accessed_at)",
        params![
            a.id,
            a.kind.as_str(),
            a.size as i64,
            a.files as i64,
            a.disk_usage as i64,
            a.created_at,
            a.accessed_at
        ],
    )
}

/// Decodes an entry row; `None` for a row with values of the wrong shape (a corrupt row).
fn decode_entry(r: &Row<'_>) -> rusqlite::Result<Option<EntryRow>> {
    let decode = || -> rusqlite::Result<EntryRow> {
        let artifact: Option<String> = r.get(1)?;
        Ok(EntryRow {
            name: r.get(0)?,
            artifact: artifact.filter(|id| crate::store::is_artifact_id(id)),
            fingerprint: r.get(2)?,
            source: r.get(3)?,
            created_at: r.get(4)?,
            updated_at: r.get(5)?,
            accessed_at: r.get(6)?,
        })
    };
    Ok(decode().ok())
}

fn decode_artifact(r: &Row<'_>) -> rusqlite::Result<Option<ArtifactRow>> {
    let decode = || -> rusqlite::Result<Option<ArtifactRow>> {
        let kind: String = r.get(1)?;
        let size: i64 = r.get(2)?;
        let files: i64 = r.get(3)?;
        let disk_usage: i64 = r.get(4)?;
        Ok(ArtifactKind::parse(&kind).map(|kind| ArtifactRow {
            id: r.get(0).unwrap_or_default(),
            kind,
            size: size.max(0) as u64,
            files: files.max(0) as u64,
            disk_usage: disk_usage.max(0) as u64,
            created_at: r.get(5).unwrap_or(0),
            accessed_at: r.get(6).unwrap_or(0),
        }))
    };
    Ok(decode().ok().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(id: &str) -> ArtifactRow {
        ArtifactRow {
            id: id.into(),
            kind: ArtifactKind::File,
            size: 3,
            files: 1,
            disk_usage: 4096,
            created_at: 1,
            accessed_at: 1,
        }
    }

    #[test]
    fn migrates_once_and_reopens() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.sqlite");
        let mut c = Catalog::open(&path).unwrap();
        c.set_last_good("a", &artifact(&"a".repeat(64)), Some("fp"), "build")
            .unwrap();
        drop(c);
        let c = Catalog::open(&path).unwrap();
        let e = c.entry("a").unwrap().unwrap();
        assert_eq!(e.artifact.as_deref(), Some("a".repeat(64).as_str()));
        assert_eq!(e.fingerprint.as_deref(), Some("fp"));
    }

    #[test]
    fn refuses_a_newer_schema() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.sqlite");
        let c = Catalog::open(&path).unwrap();
        c.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(
            Catalog::open(&path),
            Err(CatalogError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn corrupt_rows_are_misses() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&tmp.path().join("c.sqlite")).unwrap();
        c.set_last_good("a", &artifact(&"b".repeat(64)), None, "import")
            .unwrap();
        c.conn
            .execute("UPDATE entries SET artifact = 'not-an-id'", [])
            .unwrap();
        assert_eq!(c.entry("a").unwrap().unwrap().artifact, None);
        c.conn
            .execute("UPDATE entries SET created_at = 'garbage'", [])
            .unwrap();
        assert_eq!(c.entry("a").unwrap(), None);
        c.conn.execute("UPDATE artifacts SET kind = 'weird'", []).unwrap();
        assert_eq!(c.artifact(&"b".repeat(64)).unwrap(), None);
    }

    #[test]
    fn failures_never_touch_last_good_and_success_clears_them() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&tmp.path().join("c.sqlite")).unwrap();
        let good = artifact(&"c".repeat(64));
        c.set_last_good("e", &good, Some("old"), "build").unwrap();
        let failure = FailureRecord {
            fingerprint: "new".into(),
            kind: FailureKind::Transient,
            exit: "build command exited with code 1".into(),
            error_tail: "boom".into(),
            attempts: 1,
            first_failed_at: 5,
            last_failed_at: 5,
            next_retry_at: Some(10),
        };
        c.record_failure("e", &failure).unwrap();
        let e = c.entry("e").unwrap().unwrap();
        assert_eq!(e.fingerprint.as_deref(), Some("old"));
        assert_eq!(c.failure("e").unwrap(), Some(failure));
        c.set_last_good("e", &good, Some("new"), "build").unwrap();
        assert_eq!(c.failure("e").unwrap(), None);
    }
}
