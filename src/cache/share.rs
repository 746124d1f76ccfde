//! Sharing artifacts through the remote: `push`, `pull`, and `ensure`'s fetch-instead-of-build
//! and push-after-build. The remote layout and its documents are [`crate::remote::share`]; this
//! is where they meet the local cache (docs/DESIGN.md, "Remote is advisory"): what comes from
//! the remote is published only once verified, and a remote that is down, slow or corrupt costs
//! a warning and a local build, never a wrong artifact.

use std::io::{self, Write};
use std::path::Path;

use bytes::Bytes;

use super::{Cache, CacheError, Checked};
use crate::archive::{self, ArchiveError, Format, Limits, Trust};
use crate::ids::{ArtifactId, EntryName, Fingerprint};
use crate::progress::Progress;
use crate::remote::share::protocol::{
    Hashing, SINGLE_FILE_ENTRY, ZSTD_LEVEL, hostname, parse_artifact, parse_index, single_file_tar_zst,
    to_json,
};
use crate::remote::share::{ArchiveDoc, ArtifactDoc, IndexDoc, SHARE_FORMAT};
pub use crate::remote::share::{BadObject, IndexOutcome, Pulled, PushReport, RemoteActivity, Sharing};
use crate::remote::{CondPut, NoProgress, PutOutcome, RemoteError};
use crate::store::{ArtifactKind, StoreError, content_path_in};

type Result<T, E = ShareError> = std::result::Result<T, E>;

impl Cache {
    /// Uploads the last good artifact of entry `name` and, when it was built (it has a
    /// fingerprint), the index that lets `ensure` on other machines find it.
    pub fn push(&self, name: &EntryName, sharing: &Sharing) -> Result<PushReport> {
        push(self, name, sharing)
    }

    /// Downloads the artifact built elsewhere from `recipe`'s current inputs, verified, and
    /// records it as the entry's last good artifact; never builds. Holds the entry's build lock
    /// meanwhile, so a pull never runs alongside a build or another pull of the entry. Returns
    /// the fingerprint looked up, and `None` when the remote has nothing for it.
    pub fn pull(
        &self,
        recipe: &crate::build::Recipe,
        sharing: &Sharing,
    ) -> Result<(Fingerprint, Option<Pulled>)> {
        let fingerprint = self
            .fingerprint(recipe)
            .map_err(|e| ShareError::Ensure(Box::new(e)))?
            .digest;
        let what = format!("the build or pull of `{}` in another process", recipe.name);
        let _lock = crate::lock::lock(
            &self.layout().entry_lock(&recipe.name),
            crate::lock::Mode::Exclusive,
            self.options().lock_timeout,
            &what,
        )
        .map_err(CacheError::from)?;
        self.end_killed_build(&recipe.name)?;
        let pulled = pull(self, &recipe.name, &fingerprint, sharing)?;
        Ok((fingerprint, pulled))
    }
}

/// Why sharing an artifact failed.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The remote could not be reached or refused the request (the message names the object).
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A remote object is not what warmcache wrote there (undecodable, another format, or
    /// inconsistent with its key).
    #[error(
        "{0}; this remote object is unusable (warmcache never overwrites remote objects: delete it \
         on the remote to let a new push replace it)"
    )]
    BadObject(#[from] BadObject),
    /// The index names an artifact whose description is missing.
    #[error(
        "{target} names artifact {artifact}, but its description {missing} does not exist; push the \
         entry again from a machine that has it"
    )]
    MissingArtifact {
        /// The index object.
        target: String,
        /// The artifact it names.
        artifact: ArtifactId,
        /// The description that should exist.
        missing: String,
    },
    /// The downloaded archive could not be extracted safely.
    #[error("the shared artifact {target} could not be extracted (nothing from it was kept): {error}")]
    Archive {
        /// The archive object.
        target: String,
        /// What went wrong (in the message, so that one line says it all).
        error: ArchiveError,
    },
    /// The downloaded content is not the artifact the index claims.
    #[error(
        "{target} claims artifact {expected}, but its content is artifact {actual}; refused, nothing \
         was published or recorded"
    )]
    WrongContent {
        /// The object that made the claim.
        target: String,
        /// The artifact id claimed.
        expected: String,
        /// The id the content hashes to.
        actual: String,
    },
    /// No remote is configured where one is required.
    #[error(
        "no remote is configured; give --remote s3://bucket/prefix, set WARMCACHE_REMOTE, or add \
         `[remote] url = \"s3://...\"` to warmcache.toml"
    )]
    NoRemote,
    /// A local cache operation failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The recipe's inputs could not be fingerprinted.
    #[error(transparent)]
    Ensure(Box<super::EnsureError>),
    /// Local staging for a transfer failed (the io error names the path).
    #[error("{op} for {target}: {error}")]
    Local {
        /// The remote object involved.
        target: String,
        /// What was being done.
        op: &'static str,
        /// The underlying error (in the message, so that one line says it all).
        error: io::Error,
    },
}

impl From<StoreError> for ShareError {
    fn from(e: StoreError) -> Self {
        ShareError::Cache(CacheError::Store(e))
    }
}

impl ShareError {
    /// Whether the problem is with this machine's cache rather than with the remote or what it
    /// holds. Local problems are real errors; remote ones are advisory unless `--strict`.
    pub fn is_local(&self) -> bool {
        match self {
            ShareError::Cache(_)
            | ShareError::Ensure(_)
            | ShareError::Local { .. }
            | ShareError::NoRemote => true,
            // A local file problem during a transfer (staging) is local too.
            ShareError::Remote(RemoteError::Io { .. }) => true,
            _ => false,
        }
    }
}

/// Pushes the last good artifact of entry `name` and, when it was built (it has a fingerprint),
/// the index that lets `ensure` on other machines find it. An imported entry has no
/// fingerprint: only the artifact goes up, and the report says so.
fn push(cache: &Cache, name: &EntryName, sharing: &Sharing) -> Result<PushReport> {
    let (entry, artifact, _lease) = {
        let op = cache.operation()?;
        let (entry, artifact) = cache.present_entry(&op, name)?;
        // Held against garbage collection while the content is read, without holding the root
        // lock (and so collection) off for the length of an upload.
        let lease = cache.lease_locked(&op, &artifact, sharing.lease_time())?;
        (entry, artifact, lease)
    };
    push_artifact(cache, name, entry.fingerprint.as_ref(), &artifact, sharing)
}

/// Pushes a published artifact and its index. The caller keeps the artifact alive (an entry
/// naming it, or a lease).
fn push_artifact(
    cache: &Cache,
    name: &EntryName,
    fingerprint: Option<&Fingerprint>,
    artifact: &ArtifactId,
    sharing: &Sharing,
) -> Result<PushReport> {
    let result = push_artifact_uncounted(cache, name, fingerprint, artifact, sharing);
    cache.count_remote(name.as_str(), result.as_ref().map(|r| (0, r.uploaded_bytes)));
    result
}

/// [`push_artifact`] without counting (docs/DESIGN.md, "Counting hits without writing").
fn push_artifact_uncounted(
    cache: &Cache,
    name: &EntryName,
    fingerprint: Option<&Fingerprint>,
    artifact: &ArtifactId,
    sharing: &Sharing,
) -> Result<PushReport> {
    let remote = sharing.remote()?;
    // A push on a read-only machine stops before its first request, as a snapshot does: it
    // could only read, and would then report an outage instead of the setting
    // (docs/DESIGN.md, "Read-only writers").
    remote.check_writable("push", &sharing.url().to_string())?;
    let mut report = PushReport {
        url: sharing.url().to_string(),
        name: name.clone(),
        artifact: artifact.clone(),
        fingerprint: fingerprint.cloned(),
        artifact_created: false,
        uploaded_bytes: 0,
        index: IndexOutcome::Created,
    };

    let doc_key = sharing.artifact_key(artifact);
    if remote.head(&doc_key)?.is_none() {
        let (doc, archive) = write_archive(cache, artifact, &doc_key)?;
        let archive_key = sharing.archive_key(artifact, &doc.archive.blake3);
        if remote.put_file(&archive_key, archive.path(), &NoProgress)? == PutOutcome::Created {
            report.uploaded_bytes = doc.archive.size;
        }
        drop(archive);
        // Written only once its archive is complete; of two pushers, one description wins and
        // the other's archive is an unreferenced orphan.
        match remote.put_if(&doc_key, Bytes::from(json(&doc, &doc_key)?), None)? {
            CondPut::Done(_) => report.artifact_created = true,
            CondPut::Conflict => {}
        }
    }

    let Some(fingerprint) = fingerprint else {
        report.index = IndexOutcome::Skipped {
            reason: format!(
                "entry `{name}` has no fingerprint (it was imported, not built by `ensure`), so only the \
                 artifact was pushed: other machines can fetch it by id, not find it by recipe"
            ),
        };
        return Ok(report);
    };
    let index_key = sharing.index_key(name, fingerprint);
    if let Some(bytes) = remote.get_bytes(&index_key)? {
        let existing = parse_index(&bytes, &remote.describe(&index_key), name, fingerprint)?;
        report.index = IndexOutcome::Present {
            artifact: Some(existing.artifact),
        };
        return Ok(report);
    }
    let doc = IndexDoc {
        format: SHARE_FORMAT,
        name: name.clone(),
        fingerprint: fingerprint.clone(),
        artifact: artifact.clone(),
        pushed_at: cache.now_ms(),
        host: hostname(),
    };
    report.index = match remote.put_if(&index_key, Bytes::from(json(&doc, &index_key)?), None)? {
        CondPut::Done(_) => IndexOutcome::Created,
        CondPut::Conflict => match remote.get_bytes(&index_key)? {
            Some(bytes) => IndexOutcome::Present {
                artifact: Some(
                    parse_index(&bytes, &remote.describe(&index_key), name, fingerprint)?.artifact,
                ),
            },
            None => IndexOutcome::Present { artifact: None },
        },
    };
    Ok(report)
}

/// Writes the artifact's archive into a staging file, hashing it as it goes.
fn write_archive(
    cache: &Cache,
    artifact: &ArtifactId,
    doc_key: &str,
) -> Result<(ArtifactDoc, crate::fs::Staged)> {
    let store = cache.store();
    let target = || doc_key.to_string();
    let (manifest, _) = store
        .read_manifest(artifact)
        .map_err(|error| ShareError::Local {
            target: target(),
            op: "read the artifact's manifest",
            error,
        })?
        .ok_or_else(|| CacheError::Unknown {
            source_name: artifact.to_string(),
            root: cache.root().to_path_buf(),
        })?;
    // What `pull` would refuse is refused here, before anything is uploaded (docs/DESIGN.md,
    // "What one side writes, the other reads").
    crate::store::rule::check_manifest(&manifest).map_err(|refused| ShareError::Local {
        target: target(),
        op: "check the artifact against the tree rule",
        error: io::Error::other(format!(
            "artifact {artifact} holds {refused}; it cannot be pushed (re-import it without that entry)"
        )),
    })?;
    let staged = store
        .staging()
        .reserve("push")
        .map_err(|error| ShareError::Local {
            target: target(),
            op: "reserve a staging file",
            error,
        })?;
    let file = fs_err::File::create(staged.path()).map_err(|error| ShareError::Local {
        target: target(),
        op: "create the archive",
        error,
    })?;
    let mut out = Hashing::new(file);
    let content = store.content_path(artifact);
    let written = match manifest.kind {
        ArtifactKind::Dir => archive::create_tar_zst(&content, &mut out, ZSTD_LEVEL)
            .map(drop)
            .map_err(|e| io::Error::other(e.to_string())),
        ArtifactKind::File => single_file_tar_zst(&content, &mut out),
    };
    written
        .and_then(|()| out.flush())
        .map_err(|error| ShareError::Local {
            target: target(),
            op: "write the archive",
            error,
        })?;
    let (blake3, size) = out.digest();
    let doc = ArtifactDoc {
        format: SHARE_FORMAT,
        id: artifact.clone(),
        kind: manifest.kind,
        size: manifest.size,
        files: manifest.files,
        entries: manifest.entries.len() as u64,
        archive: ArchiveDoc {
            format: Format::TarZst,
            blake3,
            size,
        },
    };
    Ok((doc, staged))
}

/// Looks up `fingerprint` of entry `name` on the remote; on a hit, downloads the artifact,
/// verifies it (archive digest, safe bounded extraction, artifact id), publishes it and records
/// it as the entry's last good artifact with source `pull`. `Ok(None)` is a miss: the remote has
/// nothing for this fingerprint.
///
/// Callers that want at most one fetch at a time per entry hold its entry lock (`ensure` does).
fn pull(
    cache: &Cache,
    name: &EntryName,
    fingerprint: &Fingerprint,
    sharing: &Sharing,
) -> Result<Option<Pulled>> {
    let result = pull_uncounted(cache, name, fingerprint, sharing);
    let bytes = result
        .as_ref()
        .map(|p| (p.as_ref().map_or(0, |p| p.downloaded_bytes), 0));
    cache.count_remote(name.as_str(), bytes);
    result
}

/// [`pull`] without counting.
fn pull_uncounted(
    cache: &Cache,
    name: &EntryName,
    fingerprint: &Fingerprint,
    sharing: &Sharing,
) -> Result<Option<Pulled>> {
    let remote = sharing.remote()?;
    let index_key = sharing.index_key(name, fingerprint);
    let index_target = remote.describe(&index_key);
    let Some(bytes) = remote.get_bytes(&index_key)? else {
        return Ok(None);
    };
    let index = parse_index(&bytes, &index_target, name, fingerprint)?;
    let pulled = |path, downloaded_bytes| Pulled {
        url: sharing.url().to_string(),
        name: name.clone(),
        fingerprint: fingerprint.clone(),
        artifact: index.artifact.clone(),
        path,
        downloaded_bytes,
        pushed_by: index.host.clone(),
        pushed_at: index.pushed_at,
    };

    // Already in the local store (imported, or built by another entry): checked like any hit
    // (docs/DESIGN.md, "Corruption is never served"), so only the entry needs recording. A
    // damaged copy is quarantined and fetched again.
    {
        let op = cache.operation()?;
        let recorded = cache
            .catalog()
            .artifact(&index.artifact)
            .map_err(CacheError::from)?
            .and_then(|row| row.identity);
        match cache.check_artifact(&op, &index.artifact, recorded.as_deref())? {
            Checked::Intact => {
                if let Some(published) = present_artifact(cache, &index.artifact)? {
                    cache.record(&op, Some(name), &published, Some(fingerprint), "pull")?;
                    return Ok(Some(pulled(published.path, 0)));
                }
            }
            Checked::Damaged(q) => tracing::warn!("{}; fetching it again", q.warning()),
            Checked::Missing => {}
        }
    }

    let doc_key = sharing.artifact_key(&index.artifact);
    let doc_target = remote.describe(&doc_key);
    let Some(bytes) = remote.get_bytes(&doc_key)? else {
        return Err(ShareError::MissingArtifact {
            target: index_target,
            artifact: index.artifact.clone(),
            missing: doc_target,
        });
    };
    let doc = parse_artifact(&bytes, &doc_target, &index.artifact)?;
    let (staged, downloaded) = fetch_content(cache, sharing, &doc)?;

    let op = cache.operation()?;
    let published = match cache
        .store()
        .publish_staged_as(&op, staged, &index.artifact, &Progress::none())
    {
        Ok(published) => published,
        Err(StoreError::IdMismatch { expected, actual, .. }) => {
            return Err(ShareError::WrongContent {
                target: index_target,
                expected,
                actual,
            });
        }
        Err(e) => return Err(e.into()),
    };
    cache.record(&op, Some(name), &published, Some(fingerprint), "pull")?;
    Ok(Some(pulled(published.path, downloaded)))
}

/// Downloads the archive `doc` describes (verified against its digest and size) and extracts
/// it, bounded by what `doc` declares, into a staging directory ready to publish. Returns the
/// staging directory and the bytes downloaded.
fn fetch_content(cache: &Cache, sharing: &Sharing, doc: &ArtifactDoc) -> Result<(crate::fs::Staged, u64)> {
    let remote = sharing.remote()?;
    let archive_key = sharing.archive_key(&doc.id, &doc.archive.blake3);
    let archive_target = remote.describe(&archive_key);
    let local = |op| {
        let target = archive_target.clone();
        move |error| ShareError::Local { target, op, error }
    };
    let store = cache.store();
    let download = store
        .staging()
        .reserve("pull-archive")
        .map_err(local("reserve a staging file"))?;
    let got = remote.get_to_file(
        &archive_key,
        download.path(),
        Some(&doc.archive.blake3),
        &NoProgress,
    )?;
    if got.bytes != doc.archive.size {
        return Err(BadObject {
            target: archive_target,
            detail: format!(
                "the archive is {} bytes, its description says {}",
                got.bytes, doc.archive.size
            ),
        }
        .into());
    }
    let staged = store.stage("pull").map_err(ShareError::from)?;
    let content = content_path_in(&staged);
    // Bounded by what the description declares (plus tar's padding, which counts too): anything
    // larger cannot be this artifact.
    let padding = doc
        .entries
        .saturating_add(2)
        .saturating_mul(1024)
        .saturating_add(1 << 20);
    let limits = Limits {
        max_total_bytes: doc.size.saturating_add(padding),
        max_entries: doc.entries.saturating_add(1),
        max_ratio: u64::MAX,
        ratio_grace_bytes: u64::MAX,
        min_free_bytes: sharing.min_free,
        // Our own format, verified against its digest: the tree rule alone applies
        // (docs/DESIGN.md, "What one side writes, the other reads"), so whatever `push` uploaded pulls.
        trust: Trust::Own,
    };
    let extract = |dest: &Path| {
        fs_err::create_dir(dest).map_err(local("create the extraction directory"))?;
        archive::extract(download.path(), Format::TarZst, dest, &limits, &|_| {}).map_err(|error| {
            ShareError::Archive {
                target: archive_target.clone(),
                error,
            }
        })
    };
    match doc.kind {
        ArtifactKind::Dir => {
            extract(&content)?;
        }
        ArtifactKind::File => {
            let unpack = staged.path().join("unpack");
            let report = extract(&unpack)?;
            let file = unpack.join(SINGLE_FILE_ENTRY);
            let is_file = std::fs::symlink_metadata(&file).is_ok_and(|m| m.is_file());
            if !is_file || report.files != 1 || report.dirs != 0 || report.symlinks != 0 {
                return Err(BadObject {
                    target: archive_target,
                    detail: format!(
                        "a single-file artifact's archive must hold exactly one regular file named \
                         `{SINGLE_FILE_ENTRY}`"
                    ),
                }
                .into());
            }
            fs_err::rename(&file, &content).map_err(local("move the extracted file"))?;
            fs_err::remove_dir(&unpack).map_err(local("remove the extraction directory"))?;
        }
    }
    Ok((staged, got.bytes))
}

/// A document's bytes, or a local error naming the object it was for.
fn json<T: serde::Serialize>(value: &T, key: &str) -> Result<Vec<u8>> {
    to_json(value).map_err(|error| ShareError::Local {
        target: key.to_string(),
        op: "encode a document",
        error,
    })
}

/// The `Published` description of an artifact already in the store, from its manifest.
fn present_artifact(cache: &Cache, id: &ArtifactId) -> Result<Option<crate::store::Published>> {
    let store = cache.store();
    let manifest = store.read_manifest(id).map_err(|error| ShareError::Local {
        target: id.to_string(),
        op: "read a local manifest",
        error,
    })?;
    let Some((manifest, _)) = manifest else {
        return Ok(None);
    };
    let path = store.content_path(id);
    let disk_usage = crate::fs::disk_usage(&path).unwrap_or(manifest.size);
    Ok(Some(crate::store::Published {
        id: id.clone(),
        path,
        kind: manifest.kind,
        size: manifest.size,
        files: manifest.files,
        disk_usage,
        created: false,
        identity: None,
    }))
}

/// `ensure`'s remote lookup, with the entry lock held and a build decided: a verified artifact
/// from the remote, or `None` to build locally. Remote problems are warnings (the returned
/// activity lists them) unless `sharing.strict`; problems with the local cache are errors.
pub fn ensure_pull(
    cache: &Cache,
    name: &EntryName,
    fingerprint: &Fingerprint,
    sharing: &Sharing,
) -> Result<(Option<Pulled>, RemoteActivity)> {
    let mut activity = sharing.activity();
    match pull(cache, name, fingerprint, sharing) {
        Ok(Some(pulled)) => {
            activity.pulled = true;
            Ok((Some(pulled), activity))
        }
        Ok(None) => Ok((None, activity)),
        Err(e) if e.is_local() || sharing.strict => Err(e),
        Err(e) => {
            let message = degraded(sharing, &e, &format!("building `{name}` locally"));
            sharing.warn(&message);
            activity.warnings.push(message);
            Ok((None, activity))
        }
    }
}

/// `ensure`'s push after a successful local build (when pushing is on): remote problems are
/// warnings unless `sharing.strict`. The artifact is the entry's last good one, so it stays
/// alive while it is read.
pub fn ensure_push(
    cache: &Cache,
    name: &EntryName,
    fingerprint: &Fingerprint,
    artifact: &ArtifactId,
    sharing: &Sharing,
    activity: &mut RemoteActivity,
) -> Result<()> {
    let _lease = {
        let op = cache.operation()?;
        if !cache.store().is_present(artifact) {
            // Replaced and collected already (another process rebuilt the entry meanwhile):
            // nothing left to push, and nothing wrong with the remote.
            return Ok(());
        }
        cache.lease_locked(&op, artifact, sharing.lease_time())?
    };
    match push_artifact(cache, name, Some(fingerprint), artifact, sharing) {
        Ok(report) => {
            activity.pushed = Some(report);
            Ok(())
        }
        // Credentials that may not write: the client reported it once for the process
        // (docs/DESIGN.md, "Read-only writers"); the push is skipped, even when strict.
        Err(ShareError::Remote(e)) if e.is_read_only() => Ok(()),
        Err(e) if e.is_local() || sharing.strict => Err(e),
        Err(e) => {
            let message = degraded(sharing, &e, &format!("`{name}` was built locally but not pushed"));
            sharing.warn(&message);
            activity.warnings.push(message);
            Ok(())
        }
    }
}

/// One line naming the remote, what happened and what was done instead.
pub fn degraded(sharing: &Sharing, err: &ShareError, fallback: &str) -> String {
    let what = match err {
        ShareError::Remote(e) if e.is_outage() => "unavailable",
        ShareError::Remote(_) => "request failed",
        _ => "unusable data",
    };
    let detail = err.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
    format!(
        "remote {} {what}, {fallback} (ran degraded; --strict makes this an error): {detail}",
        sharing.url()
    )
}

#[cfg(test)]
mod tests {
    use crate::build::{EntryConfig, Recipe};
    use crate::cache::{EnsureOptions, EnsureStatus};
    use crate::remote::share::Sharing;
    use crate::remote::{RemoteSettings, RemoteUrl};

    #[test]
    fn a_local_hit_never_builds_the_client() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = crate::Cache::open(&tmp.path().join("cache")).unwrap();
        let entry = EntryConfig {
            build: Some("echo hi > \"$WARMCACHE_OUT\"".into()),
            ..Default::default()
        };
        let recipe = Recipe::new("tool", &entry, tmp.path()).unwrap();
        cache.ensure(&recipe, &EnsureOptions::default()).unwrap();

        let sharing = Sharing::new(
            RemoteUrl::parse("s3://bucket/p").unwrap(),
            RemoteSettings::default(),
        );
        let options = EnsureOptions {
            remote: Some(sharing.clone()),
            ..Default::default()
        };
        let ensured = cache.ensure(&recipe, &options).unwrap();
        assert_eq!(ensured.status, EnsureStatus::Hit);
        assert!(!sharing.is_connected(), "a hit must not build a client");
    }
}
