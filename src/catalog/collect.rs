//! What garbage collection asks of the catalog: which artifacts are protected, leases, removing
//! rows of collected artifacts, and when the last collection ran.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Catalog, CatalogError, RootRow};
use crate::ids::ArtifactId;

/// The `meta` key of the time (unix ms) the last collection ran or was started.
const LAST_GC_AT: &str = "last_gc_at";

impl Catalog {
    /// The artifacts that must not be collected: every entry's artifact and every lease live at
    /// `now`.
    pub fn protected_artifacts(&self, now: i64) -> Result<HashSet<ArtifactId>, CatalogError> {
        protected_in(&self.conn, now).map_err(self.err("list protected artifacts"))
    }

    /// Deletes, in one transaction, the rows of the artifacts in `ids` that are unprotected and
    /// were not used since `decided_at`; returns those deleted (the caller then moves their
    /// directories away). Protection is read inside the same transaction, so no writer can change
    /// it in between: an entry's artifact, a lease live at `now`, and whatever `rooted` says the
    /// gc roots protect (it gets the roots read in the transaction, and checks them on disk). An
    /// artifact used since the decision is left for a later collection.
    ///
    /// This runs without the cache's root lock: it takes only SQLite's write lock, which readers
    /// never wait for, so the durable commit (an fsync) delays no cache hit.
    pub fn remove_unused_artifacts(
        &mut self,
        ids: &[ArtifactId],
        decided_at: i64,
        now: i64,
        rooted: impl FnOnce(Vec<RootRow>) -> HashSet<ArtifactId>,
    ) -> Result<Vec<ArtifactId>, CatalogError> {
        self.write("remove artifacts", |tx| {
            let mut protected = protected_in(tx, now)?;
            protected.extend(rooted(roots_in(tx)?));
            let mut removed = Vec::new();
            for id in ids.iter().filter(|id| !protected.contains(id)) {
                let accessed: Option<i64> = tx
                    .query_row(
                        "SELECT accessed_at FROM artifacts WHERE id = ?1",
                        [id.as_str()],
                        |r| r.get(0),
                    )
                    .optional()?;
                if accessed.is_some_and(|a| a >= decided_at) {
                    continue;
                }
                tx.execute("DELETE FROM artifacts WHERE id = ?1", [id.as_str()])?;
                tx.execute("DELETE FROM sources WHERE artifact = ?1", [id.as_str()])?;
                removed.push(id.clone());
            }
            Ok(removed)
        })
    }

    /// Which of `ids` have a row: a writer that found the content already published records it
    /// again, after a collection removed its row and before it moved the directory away.
    pub fn recorded_among(&self, ids: &[ArtifactId]) -> Result<HashSet<ArtifactId>, CatalogError> {
        let err = self.err("look up artifacts");
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM artifacts WHERE id = ?1")
            .map_err(&err)?;
        let mut out = HashSet::new();
        for id in ids {
            if stmt.exists([id.as_str()]).map_err(&err)? {
                out.insert(id.clone());
            }
        }
        Ok(out)
    }

    /// Records a lease on `artifact` until `expires_at`; returns its id.
    pub fn add_lease(
        &mut self,
        artifact: &ArtifactId,
        holder: &str,
        expires_at: i64,
    ) -> Result<i64, CatalogError> {
        self.write("take a lease", |tx| {
            tx.execute(
                "INSERT INTO leases (artifact, holder, expires_at) VALUES (?1, ?2, ?3)",
                params![artifact.as_str(), holder, expires_at],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Ends a lease before its time.
    pub fn release_lease(&mut self, lease: i64) -> Result<(), CatalogError> {
        self.check_writable("release a lease")?;
        self.conn
            .execute("DELETE FROM leases WHERE id = ?1", [lease])
            .map(drop)
            .map_err(self.err("release a lease"))
    }

    /// Deletes the leases that ended by `now`.
    pub fn expire_leases(&mut self, now: i64) -> Result<(), CatalogError> {
        self.check_writable("expire leases")?;
        self.conn
            .execute("DELETE FROM leases WHERE expires_at <= ?1", [now])
            .map(drop)
            .map_err(self.err("expire leases"))
    }

    /// Records the gc root `path` (an absolute symlink path) for `artifact`. A root for another
    /// artifact at the same path stays until a collection finds the path no longer points at it.
    pub fn add_root(
        &mut self,
        path: &std::path::Path,
        artifact: &ArtifactId,
        now: i64,
    ) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO roots (path, artifact, created_at) VALUES (?1, ?2, ?3)",
                params![path_bytes(path), artifact.as_str(), now],
            )
            .map(drop)
            .map_err(self.err("record a gc root"))
    }

    /// All gc roots (rows that do not decode are skipped: they protect nothing).
    pub fn roots(&self) -> Result<Vec<RootRow>, CatalogError> {
        roots_in(&self.conn).map_err(self.err("list gc roots"))
    }

    /// Forgets gc roots whose path no longer points at their artifact.
    pub fn remove_roots(&mut self, roots: &[RootRow]) -> Result<(), CatalogError> {
        self.write("remove gc roots", |tx| {
            for root in roots {
                tx.execute(
                    "DELETE FROM roots WHERE path = ?1 AND artifact = ?2",
                    params![path_bytes(&root.path), root.artifact.as_str()],
                )?;
            }
            Ok(())
        })
    }

    /// Records that a collection ran at `now`.
    pub fn set_last_gc(&mut self, now: i64) -> Result<(), CatalogError> {
        self.check_writable("record a collection")?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![LAST_GC_AT, now.to_string()],
            )
            .map(drop)
            .map_err(self.err("write metadata"))
    }

    /// Whether a background collection is due at `now`: the artifacts take more than
    /// `max_size`, and none ran (or was started) within `interval_ms`. Marks one started when
    /// it returns true, in the same transaction, so concurrent commands do not all start one.
    pub fn claim_gc_if_due(
        &mut self,
        max_size: u64,
        interval_ms: i64,
        now: i64,
    ) -> Result<bool, CatalogError> {
        self.write("check the size budget", |tx| {
            let last: Option<String> = tx
                .query_row("SELECT value FROM meta WHERE key = ?1", [LAST_GC_AT], |r| {
                    r.get(0)
                })
                .optional()?;
            let last = last.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            if now - last < interval_ms {
                return Ok(false);
            }
            let total: i64 = tx.query_row("SELECT COALESCE(SUM(disk_usage), 0) FROM artifacts", [], |r| {
                r.get(0)
            })?;
            if (total.max(0) as u64) <= max_size {
                return Ok(false);
            }
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![LAST_GC_AT, now.to_string()],
            )?;
            Ok(true)
        })
    }
}

/// Every entry's artifact and every lease live at `now` (ids that do not decode name nothing in
/// the store, so they protect nothing). Takes a connection or a transaction (which derefs to one).
fn protected_in(conn: &Connection, now: i64) -> rusqlite::Result<HashSet<ArtifactId>> {
    let mut stmt = conn.prepare_cached(
        "SELECT artifact FROM entries WHERE artifact IS NOT NULL
         UNION SELECT artifact FROM leases WHERE expires_at > ?1",
    )?;
    let rows = stmt.query_map([now], |r| r.get::<_, String>(0))?;
    let mut out = HashSet::new();
    for row in rows {
        out.extend(ArtifactId::new(&row?).ok());
    }
    Ok(out)
}

/// All gc roots (rows that do not decode are skipped: they protect nothing).
fn roots_in(conn: &Connection) -> rusqlite::Result<Vec<RootRow>> {
    let mut stmt = conn.prepare_cached("SELECT path, artifact FROM roots")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0), r.get::<_, String>(1))))?;
    let mut out = Vec::new();
    for row in rows {
        if let (Ok(path), Ok(artifact)) = row?
            && let Ok(artifact) = ArtifactId::new(&artifact)
        {
            out.push(RootRow {
                path: path_from_bytes(path),
                artifact,
            });
        }
    }
    Ok(out)
}

/// A path as stored in `roots.path`: its bytes, so any file name round-trips.
fn path_bytes(path: &std::path::Path) -> Vec<u8> {
    path.as_os_str().as_encoded_bytes().to_vec()
}

fn path_from_bytes(bytes: Vec<u8>) -> std::path::PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        std::ffi::OsString::from_vec(bytes).into()
    }
    #[cfg(not(unix))]
    {
        String::from_utf8_lossy(&bytes).into_owned().into()
    }
}
