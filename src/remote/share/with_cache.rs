//! Sharing with a local cache: [`push`] and [`pull`], and `ensure`'s advisory use of them
//! ([`ensure_pull`], [`ensure_push`]). Everything here that knows about [`Cache`] is in this one
//! file; the remote layout it reads and writes is [`crate::remote::share::protocol`].

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use crate::archive::{self, ArchiveError, Format, Limits};
use crate::cache::{Cache, CacheError};
use crate::catalog::now_ms;
use crate::fs::Staged;
use crate::progress::Progress;
use crate::remote::share::protocol::{
    ArchiveDoc, ArtifactDoc, BadObject, Hashing, IndexDoc, SHARE_FORMAT, SINGLE_FILE_ENTRY, ZSTD_LEVEL,
    hostname, parse_artifact, parse_index, single_file_tar_zst, to_json,
};
use crate::remote::share::{IndexOutcome, Pulled, PushReport, RemoteActivity, Sharing};
use crate::remote::{CondPut, NoProgress, PutOutcome, Remote, RemoteError};
use crate::store::{ArtifactKind, StoreError, content_path_in};

type Result<T, E = ShareError> = std::result::Result<T, E>;

/// Why sharing an artifact failed.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The remote could not be reached or refused the request (the message names the object).
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A remote object is not what warmcache wrote there (undecodable, another format, or
    /// inconsistent with its key).
    #[error(
        "{target}: {detail}; this remote object is unusable (warmcache never overwrites remote \
         objects: delete it on the remote to let a new push replace it)"
    )]
    BadObject {
        /// The object.
        target: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The index names an artifact whose description is missing.
    #[error(
        "{target} names artifact {artifact}, but its description {missing} does not exist; push the \
         entry again from a machine that has it"
    )]
    MissingArtifact {
        /// The index object.
        target: String,
        /// The artifact it names.
        artifact: String,
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

impl From<BadObject> for ShareError {
    fn from(e: BadObject) -> Self {
        ShareError::BadObject {
            target: e.target,
            detail: e.detail,
        }
    }
}

impl ShareError {
    /// Whether the problem is with this machine's cache rather than with the remote or what it
    /// holds. Local problems are real errors; remote ones are advisory unless `--strict`.
    pub fn is_local(&self) -> bool {
        match self {
            ShareError::Cache(_) | ShareError::Local { .. } | ShareError::NoRemote => true,
            // A local file problem during a transfer (staging) is local too.
            ShareError::Remote(RemoteError::Io { .. }) => true,
            _ => false,
        }
    }
}

/// Pushes the last good artifact of entry `name` and, when it was built (it has a fingerprint),
/// the index that lets `ensure` on other machines find it. An imported entry has no
/// fingerprint: only the artifact goes up, and the report says so.
pub fn push(cache: &Cache, name: &str, sharing: &Sharing) -> Result<PushReport> {
    crate::name::validate(name).map_err(CacheError::from)?;
    let (entry, _lease) = {
        let _op = cache.operation()?;
        let entry = cache
            .catalog()
            .entry(name)
            .map_err(CacheError::from)?
            .ok_or_else(|| CacheError::NoEntry {
                name: name.to_string(),
                root: cache.root().to_path_buf(),
            })?;
        let artifact = match &entry.artifact {
            Some(id) if cache.store().is_present(id) => id.clone(),
            _ => {
                return Err(CacheError::NoArtifact {
                    name: name.to_string(),
                }
                .into());
            }
        };
        // Held against garbage collection while the content is read, without holding the root
        // lock (and so collection) off for the length of an upload.
        let lease = cache.lease(&artifact, lease_time(sharing))?;
        (entry, lease)
    };
    let artifact = entry.artifact.clone().unwrap_or_default();
    push_artifact(cache, name, entry.fingerprint.as_deref(), &artifact, sharing)
}

/// Pushes a published artifact and its index. The caller keeps the artifact alive (an entry
/// naming it, or a lease).
fn push_artifact(
    cache: &Cache,
    name: &str,
    fingerprint: Option<&str>,
    artifact: &str,
    sharing: &Sharing,
) -> Result<PushReport> {
    let remote = sharing.remote()?;
    let mut report = PushReport {
        url: sharing.url().to_string(),
        name: name.to_string(),
        artifact: artifact.to_string(),
        fingerprint: fingerprint.map(str::to_string),
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
        match remote.put_if(&doc_key, Bytes::from(to_json(&doc)), None)? {
            CondPut::Done(_) => report.artifact_created = true,
            CondPut::Conflict => {}
        }
    }

    report.index = match fingerprint {
        Some(fingerprint) => push_index(remote, sharing, name, fingerprint, artifact)?,
        None => IndexOutcome::Skipped {
            reason: format!(
                "entry `{name}` has no fingerprint (it was imported, not built by `ensure`), so only the \
                 artifact was pushed: other machines can fetch it by id, not find it by recipe"
            ),
        },
    };
    Ok(report)
}

/// Writes the fingerprint index naming `artifact`, unless one exists (whose artifact is reported).
fn push_index(
    remote: &Remote,
    sharing: &Sharing,
    name: &str,
    fingerprint: &str,
    artifact: &str,
) -> Result<IndexOutcome> {
    let index_key = sharing.index_key(name, fingerprint);
    if let Some(bytes) = remote.get_bytes(&index_key)? {
        let existing = parse_index(&bytes, &remote.describe(&index_key), name, fingerprint)?;
        return Ok(IndexOutcome::Present {
            artifact: existing.artifact,
        });
    }
    let doc = IndexDoc {
        format: SHARE_FORMAT,
        name: name.to_string(),
        fingerprint: fingerprint.to_string(),
        artifact: artifact.to_string(),
        pushed_at: now_ms(),
        host: hostname(),
    };
    Ok(
        match remote.put_if(&index_key, Bytes::from(to_json(&doc)), None)? {
            CondPut::Done(_) => IndexOutcome::Created,
            CondPut::Conflict => match remote.get_bytes(&index_key)? {
                Some(bytes) => IndexOutcome::Present {
                    artifact: parse_index(&bytes, &remote.describe(&index_key), name, fingerprint)?.artifact,
                },
                None => IndexOutcome::Present {
                    artifact: String::new(),
                },
            },
        },
    )
}

/// Writes the artifact's archive into a staging file, hashing it as it goes.
fn write_archive(cache: &Cache, artifact: &str, doc_key: &str) -> Result<(ArtifactDoc, crate::fs::Staged)> {
    let store = cache.store();
    let target = || doc_key.to_string();
    let (manifest, _) = store
        .read_manifest(artifact)
        .map_err(|error| ShareError::Local {
            target: target(),
            op: "read the artifact's manifest",
            error,
        })?
        .ok_or_else(|| CacheError::NoArtifact {
            name: artifact.to_string(),
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
        id: artifact.to_string(),
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
pub fn pull(cache: &Cache, name: &str, fingerprint: &str, sharing: &Sharing) -> Result<Option<Pulled>> {
    crate::name::validate(name).map_err(CacheError::from)?;
    let remote = sharing.remote()?;
    let index_key = sharing.index_key(name, fingerprint);
    let index_target = remote.describe(&index_key);
    let Some(bytes) = remote.get_bytes(&index_key)? else {
        return Ok(None);
    };
    let index = parse_index(&bytes, &index_target, name, fingerprint)?;
    let artifact = index.artifact.clone();
    let pulled = |path, downloaded_bytes| Pulled {
        url: sharing.url().to_string(),
        name: name.to_string(),
        fingerprint: fingerprint.to_string(),
        artifact: artifact.clone(),
        path,
        downloaded_bytes,
        pushed_by: index.host.clone(),
        pushed_at: index.pushed_at,
    };

    // Already in the local store (imported, or built by another entry): verified when it was
    // published, so only the entry needs recording.
    {
        let _op = cache.operation()?;
        if cache.store().is_present(&artifact)
            && let Some(published) = present_artifact(cache, &artifact)?
        {
            cache.record(Some(name), &published, Some(fingerprint), "pull")?;
            return Ok(Some(pulled(published.path, 0)));
        }
    }

    let (staged, downloaded) = fetch_into_staging(cache, remote, sharing, &artifact, &index_target)?;
    let _op = cache.operation()?;
    let published = match cache
        .store()
        .publish_staged_as(staged, &artifact, &Progress::none())
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
    cache.record(Some(name), &published, Some(fingerprint), "pull")?;
    Ok(Some(pulled(published.path, downloaded)))
}

/// Downloads the artifact's description and archive (verified against the digest it states)
/// and unpacks it into a store staging location; returns that and the bytes downloaded.
fn fetch_into_staging(
    cache: &Cache,
    remote: &Remote,
    sharing: &Sharing,
    artifact: &str,
    index_target: &str,
) -> Result<(Staged, u64)> {
    let doc_key = sharing.artifact_key(artifact);
    let doc_target = remote.describe(&doc_key);
    let Some(bytes) = remote.get_bytes(&doc_key)? else {
        return Err(ShareError::MissingArtifact {
            target: index_target.to_string(),
            artifact: artifact.to_string(),
            missing: doc_target,
        });
    };
    let doc = parse_artifact(&bytes, &doc_target, artifact)?;
    let archive_key = sharing.archive_key(artifact, &doc.archive.blake3);
    let archive_target = remote.describe(&archive_key);

    let store = cache.store();
    let download = store
        .staging()
        .reserve("pull-archive")
        .map_err(local(&archive_target, "reserve a staging file"))?;
    let got = remote.get_to_file(
        &archive_key,
        download.path(),
        Some(&doc.archive.blake3),
        &NoProgress,
    )?;
    if got.bytes != doc.archive.size {
        return Err(ShareError::BadObject {
            target: archive_target,
            detail: format!(
                "the archive is {} bytes, its description says {}",
                got.bytes, doc.archive.size
            ),
        });
    }
    let staged = store.stage("pull").map_err(ShareError::from)?;
    unpack(download.path(), &doc, &staged, &archive_target)?;
    Ok((staged, got.bytes))
}

/// Extracts the verified archive at `archive` into `staged` as the store lays out content: a
/// tree, or the one file of a single-file artifact. Bounded by what the description declares
/// (plus tar's padding, which counts too): anything larger cannot be this artifact.
fn unpack(archive: &Path, doc: &ArtifactDoc, staged: &Staged, archive_target: &str) -> Result<()> {
    let content = content_path_in(staged);
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
        ..Limits::default()
    };
    let extract = |dest: &Path| {
        fs_err::create_dir(dest).map_err(local(archive_target, "create the extraction directory"))?;
        archive::extract(archive, Format::TarZst, dest, &limits, &|_| {}).map_err(|error| {
            ShareError::Archive {
                target: archive_target.to_string(),
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
                return Err(ShareError::BadObject {
                    target: archive_target.to_string(),
                    detail: format!(
                        "a single-file artifact's archive must hold exactly one regular file named \
                         `{SINGLE_FILE_ENTRY}`"
                    ),
                });
            }
            fs_err::rename(&file, &content).map_err(local(archive_target, "move the extracted file"))?;
            fs_err::remove_dir(&unpack).map_err(local(archive_target, "remove the extraction directory"))?;
        }
    }
    Ok(())
}

/// A local (staging) failure while transferring `target`.
fn local(target: &str, op: &'static str) -> impl FnOnce(io::Error) -> ShareError {
    let target = target.to_string();
    move |error| ShareError::Local { target, op, error }
}

/// The `Published` description of an artifact already in the store, from its manifest.
fn present_artifact(cache: &Cache, id: &str) -> Result<Option<crate::store::Published>> {
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
        id: id.to_string(),
        path,
        kind: manifest.kind,
        size: manifest.size,
        files: manifest.files,
        disk_usage,
        created: false,
    }))
}

/// An empty activity record for `sharing` (nothing done yet).
pub fn activity(sharing: &Sharing) -> RemoteActivity {
    RemoteActivity {
        url: sharing.url().to_string(),
        pulled: false,
        pushed: None,
        warnings: Vec::new(),
    }
}

/// `ensure`'s remote lookup, with the entry lock held and a build decided: a verified artifact
/// from the remote, or `None` to build locally. Remote problems are warnings (the returned
/// activity lists them) unless `sharing.strict`; problems with the local cache are errors.
pub fn ensure_pull(
    cache: &Cache,
    name: &str,
    fingerprint: &str,
    sharing: &Sharing,
) -> Result<(Option<Pulled>, RemoteActivity)> {
    let mut activity = activity(sharing);
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
    name: &str,
    fingerprint: &str,
    artifact: &str,
    sharing: &Sharing,
    activity: &mut RemoteActivity,
) -> Result<()> {
    let _lease = {
        let _op = cache.operation()?;
        if !cache.store().is_present(artifact) {
            // Replaced and collected already (another process rebuilt the entry meanwhile):
            // nothing left to push, and nothing wrong with the remote.
            return Ok(());
        }
        cache.lease(artifact, lease_time(sharing))?
    };
    match push_artifact(cache, name, Some(fingerprint), artifact, sharing) {
        Ok(report) => {
            activity.pushed = Some(report);
            Ok(())
        }
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

fn lease_time(sharing: &Sharing) -> Duration {
    sharing.settings().overall_timeout * 2 + Duration::from_secs(60)
}
