//! Looking at the cache: `status` (entries and their state) and `verify` (re-hash everything,
//! quarantine what is damaged, clear references to what is gone).

use std::collections::HashSet;
use std::path::PathBuf;

use super::{Cache, CacheError};
use crate::build::FailureRecord;
use crate::catalog::{ArtifactRow, EntryRow};
use crate::ids::{ArtifactId, EntryName};
use crate::progress::Progress;
use crate::store::Damage;

/// An entry with its artifact and failure state, for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EntryStatus {
    /// The catalog row.
    #[serde(flatten)]
    pub entry: EntryRow,
    /// The artifact's row, when the entry has one.
    pub artifact_info: Option<ArtifactRow>,
    /// Whether the artifact's content is present.
    pub present: bool,
    /// The content path, when present.
    pub path: Option<PathBuf>,
    /// The recorded failure, if any.
    pub failure: Option<FailureRecord>,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Artifacts checked.
    pub checked: u64,
    /// Artifacts found intact.
    pub ok: u64,
    /// Damaged artifacts, moved to quarantine.
    pub damaged: Vec<DamagedArtifact>,
    /// Catalog entries whose artifact was gone (now cleared: a miss).
    pub dangling: Vec<EntryName>,
    /// Published artifacts no entry names (kept; garbage collection decides).
    pub unreferenced: u64,
    /// Staging leftovers of dead processes, removed (only on a writable cache).
    pub staging_swept: u64,
}

impl VerifyReport {
    /// Whether anything was found wrong (and repaired): damage or dangling references.
    pub fn found_problems(&self) -> bool {
        !self.damaged.is_empty() || !self.dangling.is_empty()
    }
}

/// A damaged artifact and where it went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DamagedArtifact {
    /// The artifact id.
    pub artifact: ArtifactId,
    /// What was wrong.
    pub problems: Vec<Damage>,
    /// Where it was moved (none on a read-only cache, where it is only reported).
    pub quarantined_to: Option<PathBuf>,
}

impl Cache {
    /// Entries with their state; all of them, or the one named.
    pub fn status(&self, name: Option<&EntryName>) -> Result<Vec<EntryStatus>, CacheError> {
        let _op = self.operation()?;
        let catalog = self.catalog();
        let entries = match name {
            Some(name) => vec![catalog.entry(name)?.ok_or_else(|| CacheError::NoEntry {
                name: name.clone(),
                root: self.root().to_path_buf(),
            })?],
            None => catalog.entries()?,
        };
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let artifact_info = match &entry.artifact {
                Some(id) => catalog.artifact(id)?,
                None => None,
            };
            let path = entry
                .artifact
                .as_ref()
                .filter(|id| self.store().is_present(id))
                .map(|id| self.store().content_path(id));
            let failure = catalog.failure(&entry.name)?;
            out.push(EntryStatus {
                entry,
                artifact_info,
                present: path.is_some(),
                path,
                failure,
            });
        }
        Ok(out)
    }

    /// Re-hashes every artifact; moves damaged ones to quarantine and clears catalog references
    /// to anything that is gone, so neither is ever served again. On a read-only cache it only
    /// reports.
    pub fn verify(&self, progress: &Progress) -> Result<VerifyReport, CacheError> {
        // A repair writes the catalog: the counter journals are folded with it.
        self.will_fold();
        let op = self.operation()?;
        let repair = self.read_only().is_none();
        let mut report = VerifyReport::default();
        if repair {
            report.staging_swept = self.store().sweep_staging().removed;
        }
        let ids = self.store().list()?;
        for id in &ids {
            report.checked += 1;
            let problems = self.store().verify(id)?;
            progress.advance(0, 1);
            if problems.is_empty() {
                report.ok += 1;
                continue;
            }
            let quarantined_to = if repair {
                let to = self.store().quarantine(&op, id)?;
                self.catalog().forget_artifact(id)?;
                Some(to)
            } else {
                None
            };
            report.damaged.push(DamagedArtifact {
                artifact: id.clone(),
                problems,
                quarantined_to,
            });
        }
        let mut catalog = self.catalog();
        let mut referenced = HashSet::new();
        for entry in catalog.entries()? {
            let Some(id) = entry.artifact.clone() else {
                continue;
            };
            if self.store().is_present(&id) {
                referenced.insert(id);
            } else {
                if repair {
                    catalog.forget_artifact(&id)?;
                }
                report.dangling.push(entry.name);
            }
        }
        for row in catalog.artifacts()? {
            if repair && !self.store().is_present(&row.id) {
                catalog.forget_artifact(&row.id)?;
            }
        }
        let damaged: HashSet<_> = report.damaged.iter().map(|d| &d.artifact).collect();
        report.unreferenced = ids
            .iter()
            .filter(|id| !referenced.contains(*id) && !damaged.contains(id))
            .count() as u64;
        Ok(report)
    }
}
