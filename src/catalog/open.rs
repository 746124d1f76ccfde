//! Opening the catalog: for writing (creating and migrating it), or, when its file system is
//! read-only or full, for reading only.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::{BUSY_TIMEOUT, Catalog, CatalogError, MIGRATIONS, is_busy, open_error};

impl Catalog {
    /// Opens (creating and migrating if needed) the catalog at `path`; when it cannot be opened
    /// for writing because its file system is read-only or full, opens it for reading, so that
    /// reading commands keep working (writes then fail with [`CatalogError::ReadOnly`]).
    ///
    /// Some first-open steps (switching a new database to WAL, recovering the WAL index) report
    /// "database is locked" at once instead of waiting on the busy timeout when several
    /// processes open a fresh catalog together, so those are retried here, within the same
    /// bound.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        match Self::open_writable(path) {
            Ok(catalog) => Ok(catalog),
            Err(e @ (CatalogError::Corrupt { .. } | CatalogError::TooNew { .. })) => Err(e),
            // A read-only or full file system: the catalog is intact and can still be read.
            Err(writable) if path.is_file() => match Self::open_read_only(path, &writable) {
                Ok(catalog) => Ok(catalog),
                Err(CatalogError::Open { .. }) => Err(writable),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Opens for reading and writing, retrying the first-open steps that report busy.
    fn open_writable(path: &Path) -> Result<Self, CatalogError> {
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
        let open_err = |source| open_error(path, source);
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        persist_wal(&conn);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
                .map_err(open_err)?;
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        // The WAL is kept between processes (see `persist_wal`), so each checkpoint empties it:
        // otherwise every later process would rebuild its index from the whole file at open and
        // copy it back (with fsyncs) at close, on every cache hit.
        conn.pragma_update(None, "journal_size_limit", 0)
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
        // SQLite falls back to reading a file it may not write (a read-only mount, no write
        // permission) without saying so: ask, so writes fail with a clear error up front.
        let read_only = conn
            .is_readonly(rusqlite::MAIN_DB)
            .unwrap_or(false)
            .then(|| "the file or its file system is read-only".to_string());
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            read_only,
        })
    }

    /// Opens an existing catalog for reading only: first as an ordinary read-only connection
    /// (which needs the WAL index to be readable), then as an immutable file (what a read-only
    /// medium needs when no WAL index exists; nobody can be writing to it).
    fn open_read_only(path: &Path, writable: &CatalogError) -> Result<Self, CatalogError> {
        let open_err = |source| open_error(path, source);
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = match Connection::open_with_flags(path, flags) {
            Ok(conn) if conn.query_row("PRAGMA user_version", [], |_| Ok(())).is_ok() => conn,
            _ => Connection::open_with_flags(immutable_uri(path), flags | OpenFlags::SQLITE_OPEN_URI)
                .map_err(open_err)?,
        };
        let current: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        let known = MIGRATIONS.len() as i64;
        if current > known {
            return Err(CatalogError::TooNew {
                path: path.to_path_buf(),
                found: current,
                known,
            });
        }
        let reason = match writable {
            CatalogError::Open { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        if current < known {
            // An older schema needs a migration, which is a write.
            return Err(CatalogError::ReadOnly {
                path: path.to_path_buf(),
                op: "migrate the catalog to this warmcache's schema",
                reason,
            });
        }
        tracing::warn!(
            "the catalog `{}` is open for reading only ({reason})",
            path.display()
        );
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            read_only: Some(reason),
        })
    }
}

/// Keeps the WAL and its index after the last connection closes (`SQLITE_FCNTL_PERSIST_WAL`):
/// on a full disk, a later process finds them already allocated and can still read, and `gc`
/// can still write (deleting rows reuses the WAL's space). Also saves every process deleting and
/// recreating them. Best effort: a failure only costs that.
fn persist_wal(conn: &Connection) {
    let mut on: std::ffi::c_int = 1;
    // SAFETY: the handle is the live connection's for the length of this call, and
    // SQLITE_FCNTL_PERSIST_WAL takes a pointer to an int, which `on` is.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&raw mut on).cast(),
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!("could not keep the catalog's WAL between processes (SQLite code {rc})");
    }
}

/// A `file:` URI that opens `path` as immutable. Hand-written because only `%`, `?` and `#`
/// need escaping in a SQLite file URI path, which is no reason for a URL crate.
fn immutable_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?mode=ro&immutable=1");
    uri
}
