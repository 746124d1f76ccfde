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

use rusqlite::{Connection, Transaction, TransactionBehavior};

mod collect;
mod entries;
mod open;
mod records;
mod stats;

pub use records::{ArtifactRow, EntryRow, RootRow};

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
    // 3: each artifact's stat identity, checked on every hit (NULL: not known yet, re-hashed
    // once on its next hit); and gc roots, the symlinks activation made into the store.
    "ALTER TABLE artifacts ADD COLUMN identity TEXT;
    CREATE TABLE roots (
        path TEXT NOT NULL,
        artifact TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (path, artifact)
    );
    CREATE INDEX roots_artifact ON roots(artifact);",
    // 4: counters per entry and hour, how far each counter journal was folded, and each entry's
    // last build duration (docs/DESIGN.md, "Counting hits without writing").
    "CREATE TABLE stats (
        entry TEXT NOT NULL,
        hour INTEGER NOT NULL,
        hits INTEGER NOT NULL DEFAULT 0,
        misses INTEGER NOT NULL DEFAULT 0,
        stale_serves INTEGER NOT NULL DEFAULT 0,
        builds_ok INTEGER NOT NULL DEFAULT 0,
        builds_failed_transient INTEGER NOT NULL DEFAULT 0,
        builds_failed_deterministic INTEGER NOT NULL DEFAULT 0,
        builds_interrupted INTEGER NOT NULL DEFAULT 0,
        build_ms INTEGER NOT NULL DEFAULT 0,
        saved_ms INTEGER NOT NULL DEFAULT 0,
        downloaded_bytes INTEGER NOT NULL DEFAULT 0,
        uploaded_bytes INTEGER NOT NULL DEFAULT 0,
        remote_errors INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (entry, hour)
    );
    CREATE TABLE stats_journals (
        name TEXT PRIMARY KEY,
        folded INTEGER NOT NULL
    );
    ALTER TABLE entries ADD COLUMN build_ms INTEGER;",
];

/// Errors of the catalog. Each names the catalog file.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The database could not be opened or migrated, for a reason other than damage (a full or
    /// read-only file system, permissions): the file itself is fine, so nothing is advised
    /// that would throw it away.
    #[error("failed to open the catalog `{path}`: {source}")]
    Open {
        /// The catalog file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The file is not a database, or SQLite found it damaged.
    #[error(
        "the catalog `{path}` is damaged ({source}); move it aside to start a new one (the \
         cache's artifacts stay; entries must be imported or built again)"
    )]
    Corrupt {
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
    /// A change was asked of a catalog that could only be opened for reading.
    #[error(
        "cannot {op}: the catalog `{path}` could only be opened for reading ({reason}); reading \
         commands (`path`, `status`, `verify`) work, but to build, import or record anything free \
         space on its file system or make it writable"
    )]
    ReadOnly {
        /// The catalog file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// Why it is read-only.
        reason: String,
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

/// Access times are written at most this often per entry, so cache hits stay read-only.
pub const ACCESS_GRANULARITY_MS: i64 = 60_000;

/// A connection to the catalog of one cache root. Every SQL statement of warmcache lives in this
/// module, behind typed methods; the connection never leaves it.
#[derive(Debug)]
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
    /// Why the catalog could only be opened for reading (a read-only or full file system), if so.
    read_only: Option<String>,
}

impl Catalog {
    /// A closure that wraps a SQLite error with the catalog's path and the operation.
    fn err(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> CatalogError + use<> {
        sql_err(&self.path, op)
    }

    /// Why the catalog could only be opened for reading, if it was.
    pub fn read_only(&self) -> Option<&str> {
        self.read_only.as_deref()
    }

    /// Refuses a change on a read-only catalog with an error that says why and what still works.
    fn check_writable(&self, op: &'static str) -> Result<(), CatalogError> {
        match &self.read_only {
            Some(reason) => Err(CatalogError::ReadOnly {
                path: self.path.clone(),
                op,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction (writers queue on the busy timeout instead
    /// of failing half-way) and commits it; `op` names the work in errors.
    fn write<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, CatalogError> {
        self.check_writable(op)?;
        let err = sql_err(&self.path, op);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let value = f(&tx).map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(value)
    }
}

fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// An open failure: damage only when SQLite says the file is corrupt or not a database, so that
/// the advice to move the file aside is never given for a full or read-only disk.
fn open_error(path: &Path, source: rusqlite::Error) -> CatalogError {
    let path = path.to_path_buf();
    match source.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
            CatalogError::Corrupt { path, source }
        }
        _ => CatalogError::Open { path, source },
    }
}

fn sql_err(path: &Path, op: &'static str) -> impl Fn(rusqlite::Error) -> CatalogError + use<> {
    let path = path.to_path_buf();
    move |source| CatalogError::Sql {
        path: path.clone(),
        op,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{FailureKind, FailureRecord};
    use crate::ids::{ArtifactId, EntryName, Fingerprint};
    use crate::store::ArtifactKind;

    fn artifact(c: char) -> ArtifactRow {
        ArtifactRow {
            id: id(c),
            kind: ArtifactKind::File,
            size: 3,
            files: 1,
            disk_usage: 4096,
            created_at: 1,
            accessed_at: 1,
            identity: None,
        }
    }

    fn id(c: char) -> ArtifactId {
        ArtifactId::new(&c.to_string().repeat(64)).unwrap()
    }

    fn fp(c: char) -> Fingerprint {
        Fingerprint::new(&c.to_string().repeat(64)).unwrap()
    }

    fn name(s: &str) -> EntryName {
        EntryName::new(s).unwrap()
    }

    #[test]
    fn migrates_once_and_reopens() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.sqlite");
        let mut c = Catalog::open(&path).unwrap();
        c.set_last_good(&name("a"), &artifact('a'), Some(&fp('f')), "build")
            .unwrap();
        drop(c);
        let c = Catalog::open(&path).unwrap();
        let e = c.entry(&name("a")).unwrap().unwrap();
        assert_eq!(e.artifact, Some(id('a')));
        assert_eq!(e.fingerprint, Some(fp('f')));
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
    fn only_a_damaged_file_is_called_damaged() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.sqlite");
        std::fs::write(&path, vec![b'x'; 8192]).unwrap();
        let err = Catalog::open(&path).unwrap_err();
        assert!(matches!(err, CatalogError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("move it aside"), "{err}");
    }

    #[test]
    fn corrupt_rows_are_misses() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&tmp.path().join("c.sqlite")).unwrap();
        c.set_last_good(&name("a"), &artifact('b'), None, "import")
            .unwrap();
        c.conn
            .execute("UPDATE entries SET artifact = 'not-an-id'", [])
            .unwrap();
        assert_eq!(c.entry(&name("a")).unwrap().unwrap().artifact, None);
        c.conn
            .execute("UPDATE entries SET created_at = 'garbage'", [])
            .unwrap();
        assert_eq!(c.entry(&name("a")).unwrap(), None);
        c.conn.execute("UPDATE artifacts SET kind = 'weird'", []).unwrap();
        assert_eq!(c.artifact(&id('b')).unwrap(), None);
    }

    #[test]
    fn failures_never_touch_last_good_and_success_clears_them() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&tmp.path().join("c.sqlite")).unwrap();
        let good = artifact('c');
        let e = name("e");
        c.set_last_good(&e, &good, Some(&fp('0')), "build").unwrap();
        let failure = FailureRecord {
            fingerprint: fp('1'),
            kind: FailureKind::Transient,
            exit: "build command exited with code 1".into(),
            error_tail: "boom".into(),
            attempts: 1,
            first_failed_at: 5,
            last_failed_at: 5,
            next_retry_at: Some(10),
        };
        c.record_failure(&e, &failure).unwrap();
        let row = c.entry(&e).unwrap().unwrap();
        assert_eq!(row.fingerprint, Some(fp('0')));
        assert_eq!(c.failure(&e).unwrap(), Some(failure));
        c.set_last_good(&e, &good, Some(&fp('1')), "build").unwrap();
        assert_eq!(c.failure(&e).unwrap(), None);
    }

    #[test]
    fn leases_protect_until_they_expire_and_used_artifacts_are_not_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&tmp.path().join("c.sqlite")).unwrap();
        c.record_artifact(&artifact('a')).unwrap();
        c.record_artifact(&artifact('b')).unwrap();
        let lease = c.add_lease(&id('a'), "test", 100).unwrap();
        assert!(c.protected_artifacts(99).unwrap().contains(&id('a')));
        assert!(!c.protected_artifacts(100).unwrap().contains(&id('a')));
        c.release_lease(lease).unwrap();
        assert!(c.protected_artifacts(0).unwrap().is_empty());
        let none = |_| std::collections::HashSet::new();
        let removed = c
            .remove_unused_artifacts(&[id('a'), id('b')], 1, 0, none)
            .unwrap();
        assert!(removed.is_empty(), "both were used at the decision time");
        c.add_lease(&id('b'), "test", 100).unwrap();
        let removed = c
            .remove_unused_artifacts(&[id('a'), id('b')], 2, 50, none)
            .unwrap();
        assert_eq!(removed, [id('a')], "the live lease keeps b's row");
        assert_eq!(c.recorded_among(&[id('a'), id('b')]).unwrap().len(), 1);
    }
}
