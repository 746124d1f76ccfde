//! The rows the catalog stores, and how they are decoded: a row whose values do not decode (wrong
//! type, an id that is not an id) is a miss, never an error that stops the cache.

use rusqlite::{Connection, Row, params};

use crate::build::{FailureKind, FailureRecord};
use crate::ids::{ArtifactId, EntryName, Fingerprint};
use crate::store::ArtifactKind;

/// An artifact as recorded in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArtifactRow {
    /// The artifact id.
    pub id: ArtifactId,
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
    /// When it was last used (unix ms, updated at most once per [`super::ACCESS_GRANULARITY_MS`]).
    pub accessed_at: i64,
    /// Its stat identity when last known intact (`store/identity.rs`); `None` if never recorded.
    #[serde(skip)]
    pub identity: Option<String>,
}

/// A gc root: a symlink outside the cache that activation pointed at an artifact's content. It
/// protects the artifact for as long as the path still resolves to that content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRow {
    /// The symlink's absolute path.
    pub path: std::path::PathBuf,
    /// The artifact it was made to point at.
    pub artifact: ArtifactId,
}

/// A named entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EntryRow {
    /// The entry name.
    pub name: EntryName,
    /// The last good artifact, if any.
    pub artifact: Option<ArtifactId>,
    /// The fingerprint the last good artifact was built from (builds only).
    pub fingerprint: Option<Fingerprint>,
    /// How the last good artifact came: `import`, `build` or `pull`.
    pub source: String,
    /// When the entry was created (unix ms).
    pub created_at: i64,
    /// When its artifact last changed (unix ms).
    pub updated_at: i64,
    /// When it was last used (unix ms).
    pub accessed_at: i64,
}

/// The columns [`decode_entry`] reads, in order.
pub(super) const ENTRY_COLUMNS: &str =
    "name, artifact, fingerprint, source, created_at, updated_at, accessed_at";

/// The columns [`decode_artifact`] reads, in order.
pub(super) const ARTIFACT_COLUMNS: &str =
    "id, kind, size, files, disk_usage, created_at, accessed_at, identity";

/// The columns [`decode_failure`] reads, in order.
pub(super) const FAILURE_COLUMNS: &str =
    "fingerprint, kind, exit, error_tail, attempts, first_failed_at, last_failed_at, next_retry_at";

pub(super) fn insert_artifact(conn: &Connection, a: &ArtifactRow) -> rusqlite::Result<usize> {
    conn.execute(
        // A new identity comes only from a publish that has just hashed the content: it wins.
        "INSERT INTO artifacts (id, kind, size, files, disk_usage, created_at, accessed_at, identity)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(id) DO UPDATE SET accessed_at = max(accessed_at, excluded.accessed_at),
             identity = COALESCE(excluded.identity, identity)",
        params![
            a.id.as_str(),
            a.kind.as_str(),
            a.size as i64,
            a.files as i64,
            a.disk_usage as i64,
            a.created_at,
            a.accessed_at,
            a.identity
        ],
    )
}

/// Decodes an entry row; `None` for a row with values of the wrong shape (a corrupt row). An
/// artifact or fingerprint that is not a digest reads as none: the entry then has no last good
/// artifact, so the next `ensure` builds.
pub(super) fn decode_entry(r: &Row<'_>) -> rusqlite::Result<Option<EntryRow>> {
    let decode = || -> rusqlite::Result<Option<EntryRow>> {
        let name: String = r.get(0)?;
        let Ok(name) = EntryName::new(&name) else {
            return Ok(None);
        };
        let artifact: Option<String> = r.get(1)?;
        let fingerprint: Option<String> = r.get(2)?;
        let artifact = artifact.and_then(|id| ArtifactId::new(&id).ok());
        let fingerprint = fingerprint.and_then(|fp| Fingerprint::new(&fp).ok());
        Ok(Some(EntryRow {
            name,
            fingerprint: fingerprint.filter(|_| artifact.is_some()),
            artifact,
            source: r.get(3)?,
            created_at: r.get(4)?,
            updated_at: r.get(5)?,
            accessed_at: r.get(6)?,
        }))
    };
    Ok(decode().ok().flatten())
}

pub(super) fn decode_artifact(r: &Row<'_>) -> rusqlite::Result<Option<ArtifactRow>> {
    let decode = || -> rusqlite::Result<Option<ArtifactRow>> {
        let id: String = r.get(0)?;
        let kind: String = r.get(1)?;
        let (Ok(id), Some(kind)) = (ArtifactId::new(&id), ArtifactKind::parse(&kind)) else {
            return Ok(None);
        };
        let size: i64 = r.get(2)?;
        let files: i64 = r.get(3)?;
        let disk_usage: i64 = r.get(4)?;
        Ok(Some(ArtifactRow {
            id,
            kind,
            size: size.max(0) as u64,
            files: files.max(0) as u64,
            disk_usage: disk_usage.max(0) as u64,
            created_at: r.get(5).unwrap_or(0),
            accessed_at: r.get(6).unwrap_or(0),
            // Anything unreadable is "not known": the next hit re-hashes.
            identity: r.get(7).unwrap_or(None),
        }))
    };
    Ok(decode().ok().flatten())
}

/// Decodes a failure row; a row with values of the wrong shape is no failure memory (the next
/// `ensure` builds), never an error.
pub(super) fn decode_failure(r: &Row<'_>) -> rusqlite::Result<Option<FailureRecord>> {
    let decode = || -> rusqlite::Result<Option<FailureRecord>> {
        let kind = match r.get::<_, String>(1)?.as_str() {
            "transient" => FailureKind::Transient,
            "deterministic" => FailureKind::Deterministic,
            _ => return Ok(None),
        };
        let Ok(fingerprint) = Fingerprint::new(&r.get::<_, String>(0)?) else {
            return Ok(None);
        };
        Ok(Some(FailureRecord {
            fingerprint,
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
}
