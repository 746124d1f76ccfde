//! Entries: their last good artifact, failure memory, stat caches and import sources.

use rusqlite::{OptionalExtension, params};

use super::records::{
    ARTIFACT_COLUMNS, ENTRY_COLUMNS, FAILURE_COLUMNS, decode_artifact, decode_entry, decode_failure,
    insert_artifact,
};
use super::{ACCESS_GRANULARITY_MS, ArtifactRow, Catalog, CatalogError, EntryRow};
use crate::build::FailureRecord;
use crate::ids::{ArtifactId, EntryName, Fingerprint};

impl Catalog {
    /// The entry called `name`, if it exists and decodes.
    pub fn entry(&self, name: &EntryName) -> Result<Option<EntryRow>, CatalogError> {
        self.conn
            .query_row(
                &format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE name = ?1"),
                [name.as_str()],
                decode_entry,
            )
            .optional()
            .map_err(self.err("read an entry"))
            .map(Option::flatten)
    }

    /// The entry called `name` with the recorded stat identity of its artifact, in one query:
    /// what a hit reads (docs/DESIGN.md, "Corruption is never served").
    pub fn entry_with_identity(
        &self,
        name: &EntryName,
    ) -> Result<Option<(EntryRow, Option<String>)>, CatalogError> {
        // Built once: this is the query of every cache hit, and a cached statement is not parsed
        // again (one `Cache` in a long-running process hits many times).
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = SQL.get_or_init(|| {
            let columns = ENTRY_COLUMNS
                .split(", ")
                .map(|c| format!("e.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "SELECT {columns}, a.identity FROM entries e
                 LEFT JOIN artifacts a ON a.id = e.artifact WHERE e.name = ?1"
            )
        });
        self.conn
            .prepare_cached(sql)
            .and_then(|mut statement| {
                statement.query_row([name.as_str()], |r| {
                    let identity: Option<String> = r.get(7).unwrap_or(None);
                    Ok(decode_entry(r)?.map(|entry| (entry, identity)))
                })
            })
            .optional()
            .map_err(self.err("read an entry"))
            .map(Option::flatten)
    }

    /// Records `identity` as the stat identity of the intact artifact `id`.
    pub fn set_identity(&mut self, id: &ArtifactId, identity: &str) -> Result<(), CatalogError> {
        // Only saves the next hit a re-hash, like the stat caches: nothing on a read-only catalog.
        if self.read_only.is_some() {
            return Ok(());
        }
        self.conn
            .execute(
                "UPDATE artifacts SET identity = ?2 WHERE id = ?1",
                params![id.as_str(), identity],
            )
            .map(drop)
            .map_err(self.err("record an artifact's identity"))
    }

    /// All entries, by name (undecodable rows are skipped).
    pub fn entries(&self) -> Result<Vec<EntryRow>, CatalogError> {
        let err = self.err("list entries");
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {ENTRY_COLUMNS} FROM entries ORDER BY name"))
            .map_err(&err)?;
        let rows = stmt.query_map([], decode_entry).map_err(&err)?;
        let mut out = Vec::new();
        for row in rows {
            out.extend(row.map_err(&err)?);
        }
        Ok(out)
    }

    /// The artifact row of `id`, if recorded and decodable.
    pub fn artifact(&self, id: &ArtifactId) -> Result<Option<ArtifactRow>, CatalogError> {
        self.conn
            .query_row(
                &format!("SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE id = ?1"),
                [id.as_str()],
                decode_artifact,
            )
            .optional()
            .map_err(self.err("read an artifact"))
            .map(Option::flatten)
    }

    /// All recorded artifacts (undecodable rows are skipped).
    pub fn artifacts(&self) -> Result<Vec<ArtifactRow>, CatalogError> {
        let err = self.err("list artifacts");
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {ARTIFACT_COLUMNS} FROM artifacts ORDER BY id"))
            .map_err(&err)?;
        let rows = stmt.query_map([], decode_artifact).map_err(&err)?;
        let mut out = Vec::new();
        for row in rows {
            out.extend(row.map_err(&err)?);
        }
        Ok(out)
    }

    /// Records an artifact (if new) and makes it the last good artifact of `name`, clearing any
    /// recorded failure, in one transaction. Call only after the artifact is published.
    pub fn set_last_good(
        &mut self,
        name: &EntryName,
        artifact: &ArtifactRow,
        fingerprint: Option<&Fingerprint>,
        source: &str,
    ) -> Result<(), CatalogError> {
        self.write("record an entry", |tx| {
            insert_artifact(tx, artifact)?;
            tx.execute(
                "INSERT INTO entries (name, artifact, fingerprint, source, created_at, updated_at, accessed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5)
                 ON CONFLICT(name) DO UPDATE SET artifact = excluded.artifact,
                     fingerprint = excluded.fingerprint, source = excluded.source,
                     updated_at = excluded.updated_at, accessed_at = excluded.accessed_at",
                params![
                    name.as_str(),
                    artifact.id.as_str(),
                    fingerprint.map(Fingerprint::as_str),
                    source,
                    artifact.accessed_at
                ],
            )?;
            tx.execute("DELETE FROM failures WHERE name = ?1", [name.as_str()])?;
            Ok(())
        })
    }

    /// Records an artifact without naming it (an anonymous import).
    pub fn record_artifact(&mut self, artifact: &ArtifactRow) -> Result<(), CatalogError> {
        self.check_writable("record an artifact")?;
        insert_artifact(&self.conn, artifact)
            .map(drop)
            .map_err(self.err("record an artifact"))
    }

    /// Records many artifacts without naming them, in one transaction.
    #[cfg(feature = "internals")]
    pub fn record_artifacts(&mut self, artifacts: &[ArtifactRow]) -> Result<(), CatalogError> {
        self.write("record artifacts", |tx| {
            for artifact in artifacts {
                insert_artifact(tx, artifact)?;
            }
            Ok(())
        })
    }

    /// Notes that `entry` (and its artifact) was used, at most once per
    /// [`ACCESS_GRANULARITY_MS`] so that cache hits do not write on every call.
    /// Access times only order collection, so on a read-only catalog this does nothing.
    pub fn touch(&mut self, entry: &EntryRow, now: i64) -> Result<(), CatalogError> {
        if now - entry.accessed_at < ACCESS_GRANULARITY_MS || self.read_only.is_some() {
            return Ok(());
        }
        self.write("record an access", |tx| {
            tx.execute(
                "UPDATE entries SET accessed_at = ?2 WHERE name = ?1",
                params![entry.name.as_str(), now],
            )?;
            if let Some(artifact) = &entry.artifact {
                tx.execute(
                    "UPDATE artifacts SET accessed_at = ?2 WHERE id = ?1",
                    params![artifact.as_str(), now],
                )?;
            }
            Ok(())
        })
    }

    /// The failure recorded for `name`, if any (and decodable).
    pub fn failure(&self, name: &EntryName) -> Result<Option<FailureRecord>, CatalogError> {
        self.conn
            .prepare_cached(&format!("SELECT {FAILURE_COLUMNS} FROM failures WHERE name = ?1"))
            .and_then(|mut statement| statement.query_row([name.as_str()], decode_failure))
            .optional()
            .map(Option::flatten)
            .map_err(self.err("read a failure"))
    }

    /// Records a failure for `name` (creating the entry if it has none yet). Never touches the
    /// entry's last good artifact or fingerprint.
    pub fn record_failure(&mut self, name: &EntryName, failure: &FailureRecord) -> Result<(), CatalogError> {
        self.write("record a failure", |tx| {
            tx.execute(
                "INSERT INTO entries (name, artifact, fingerprint, source, created_at, updated_at, accessed_at)
                 VALUES (?1, NULL, NULL, 'build', ?2, ?2, ?2) ON CONFLICT(name) DO NOTHING",
                params![name.as_str(), failure.last_failed_at],
            )?;
            tx.execute(
                &format!(
                    "INSERT OR REPLACE INTO failures (name, {FAILURE_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ),
                params![
                    name.as_str(),
                    failure.fingerprint.as_str(),
                    failure.kind.as_str(),
                    failure.exit,
                    failure.error_tail,
                    failure.attempts,
                    failure.first_failed_at,
                    failure.last_failed_at,
                    failure.next_retry_at
                ],
            )?;
            Ok(())
        })
    }

    /// Forgets an artifact that is gone (quarantined or deleted): its row, and every entry's
    /// reference to it, so the catalog never names what does not exist.
    pub fn forget_artifact(&mut self, id: &ArtifactId) -> Result<(), CatalogError> {
        self.write("forget an artifact", |tx| {
            tx.execute(
                "UPDATE entries SET artifact = NULL, fingerprint = NULL WHERE artifact = ?1",
                [id.as_str()],
            )?;
            tx.execute("DELETE FROM artifacts WHERE id = ?1", [id.as_str()])?;
            tx.execute("DELETE FROM sources WHERE artifact = ?1", [id.as_str()])?;
            Ok(())
        })
    }

    /// Forgets an entry, its failure and its stat cache, so its artifact is no longer protected;
    /// false when there was no such entry.
    pub fn evict(&mut self, name: &EntryName) -> Result<bool, CatalogError> {
        self.write("evict an entry", |tx| {
            let n = tx.execute("DELETE FROM entries WHERE name = ?1", [name.as_str()])?;
            tx.execute("DELETE FROM failures WHERE name = ?1", [name.as_str()])?;
            tx.execute("DELETE FROM stat_caches WHERE name = ?1", [name.as_str()])?;
            Ok(n > 0)
        })
    }

    /// The artifact an import source (an archive's digest and the import options) became.
    pub fn source(&self, key: &str) -> Result<Option<ArtifactId>, CatalogError> {
        self.conn
            .query_row("SELECT artifact FROM sources WHERE key = ?1", [key], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map(|id| id.and_then(|id| ArtifactId::new(&id).ok()))
            .map_err(self.err("read an import source"))
    }

    /// Remembers the artifact an import source became.
    pub fn set_source(&mut self, key: &str, artifact: &ArtifactId, now: i64) -> Result<(), CatalogError> {
        self.check_writable("record an import source")?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO sources (key, artifact, created_at) VALUES (?1, ?2, ?3)",
                params![key, artifact.as_str(), now],
            )
            .map(drop)
            .map_err(self.err("record an import source"))
    }

    /// The encoded stat cache of an entry's inputs, if one was saved.
    pub fn stat_cache(&self, name: &EntryName) -> Result<Option<Vec<u8>>, CatalogError> {
        self.conn
            .prepare_cached("SELECT data FROM stat_caches WHERE name = ?1")
            .and_then(|mut statement| statement.query_row([name.as_str()], |r| r.get(0)))
            .optional()
            .map_err(self.err("read a stat cache"))
    }

    /// Saves the encoded stat cache of an entry's inputs (nothing on a read-only catalog: it only
    /// saves re-hashing).
    pub fn set_stat_cache(&mut self, name: &EntryName, bytes: &[u8]) -> Result<(), CatalogError> {
        if self.read_only.is_some() {
            return Ok(());
        }
        self.conn
            .execute(
                "INSERT OR REPLACE INTO stat_caches (name, data) VALUES (?1, ?2)",
                params![name.as_str(), bytes],
            )
            .map(drop)
            .map_err(self.err("write a stat cache"))
    }
}
