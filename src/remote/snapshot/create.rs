//! [`snapshot`]: upload a directory as the current snapshot of a key.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::format::{
    POINTER_VERSION, Pointer, SNAPSHOT_MANIFEST_VERSION, SNAPSHOTS, SnapshotManifest, Unreadable,
    describe_pointer, host_name, manifest_key, parse_pointer, pointer_key, unique_token,
};
use super::{
    Phase, Result, SnapshotError, SnapshotOptions, SnapshotProgress, SnapshotReport, SnapshotStatus,
    is_colder,
};
use crate::archive::{self, Format};
use crate::remote::{CondPut, ObjectVersion, PutOutcome, Remote, RemoteError, RemoteUrl, RemoteWriter};
use crate::store::{DescribedTree, EntryKind, StoreError};

/// Compressed bytes are handed to the uploader in chunks of this size, so the upload path does
/// its per-write bookkeeping once per chunk rather than once per small write of the encoder.
const UPLOAD_CHUNK: usize = 1 << 20;

/// Uploads `dir` as the current snapshot at `url`, unless the pointer already names the same
/// tree (nothing is uploaded) or the warmth guard refuses (see [`is_colder`]; `force` skips it).
///
/// The archive is streamed: `create_tar_zst` writes into a hashing writer that feeds a multipart
/// upload, so memory stays bounded by the transfer settings whatever the tree's size. The pointer
/// moves only after the archive and its manifest are complete, by a conditional put against the
/// version read at the start; if another writer moved it meanwhile, the result is
/// [`SnapshotStatus::Conflict`] (or [`SnapshotError::Conflict`] when strict) and the pointer is
/// left as they wrote it.
pub fn snapshot(
    dir: &Path,
    url: &RemoteUrl,
    options: &SnapshotOptions,
    progress: Arc<dyn SnapshotProgress>,
) -> Result<SnapshotReport> {
    let started = Instant::now();
    check_source(dir)?;
    let remote = Remote::new(url, options.settings.clone())?;
    // Read first: the version read here is what the final conditional put is checked against,
    // so anything another machine publishes while we hash and upload is detected.
    let (before, before_version) = read_pointer(&remote, url)?;
    let tree = hash_tree(dir, &progress)?;
    let digest = tree.id.to_string();
    let mut report = SnapshotReport {
        status: SnapshotStatus::Uploaded,
        url: url.to_string(),
        digest: digest.clone(),
        files: tree.files,
        bytes: tree.size,
        uploaded_bytes: 0,
        archive: None,
        remote: before.clone(),
        elapsed_ms: 0,
    };
    let finish = |mut report: SnapshotReport, status| -> Result<SnapshotReport> {
        report.status = status;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    };
    if let Some(current) = &before
        && let Some(status) = skip(dir, url, &remote, &tree, current, options)?
    {
        return finish(report, status);
    }
    let manifest = publish_manifest(dir, url, &remote, &tree, options, &*progress, &mut report)?;
    report.archive = Some(remote.describe(&url.join(&manifest.archive)));
    let status = move_pointer(url, &remote, &tree, before_version.as_ref(), options, &mut report)?;
    finish(report, status)
}

/// The pointer and the version read, or `None`s when there is none. An unreadable pointer is
/// replaced; one from a newer warmcache is not.
fn read_pointer(remote: &Remote, url: &RemoteUrl) -> Result<(Option<Pointer>, Option<ObjectVersion>)> {
    let pointer_key = pointer_key(url);
    let Some((bytes, version)) = remote.get_versioned(&pointer_key)? else {
        return Ok((None, None));
    };
    let pointer = match parse_pointer(&bytes) {
        Ok(pointer) => Some(pointer),
        Err(Unreadable::Newer(v)) => {
            return Err(SnapshotError::BadObject {
                target: remote.describe(&pointer_key),
                reason: format!(
                    "the pointer has format version {v}, newer than this warmcache understands \
                     ({POINTER_VERSION}); upgrade warmcache rather than overwrite it"
                ),
            });
        }
        Err(Unreadable::Garbage(reason)) => {
            tracing::warn!(
                "{}: unreadable pointer ({reason}); it will be replaced",
                remote.describe(&pointer_key)
            );
            None
        }
    };
    Ok((pointer, Some(version)))
}

/// Describes the tree (its content digest), reporting progress.
fn hash_tree(dir: &Path, progress: &Arc<dyn SnapshotProgress>) -> Result<DescribedTree> {
    progress.phase(Phase::Hashing, None);
    let hashing = {
        let progress = progress.clone();
        crate::progress::Progress::new(move |bytes, _| progress.position(bytes))
    };
    crate::store::describe_tree(dir, &hashing).map_err(|source| SnapshotError::Read {
        path: dir.to_path_buf(),
        source,
    })
}

/// Whether to stop before uploading: the pointer already names this tree, or the warmth guard
/// refuses (an error when strict).
fn skip(
    dir: &Path,
    url: &RemoteUrl,
    remote: &Remote,
    tree: &DescribedTree,
    current: &Pointer,
    options: &SnapshotOptions,
) -> Result<Option<SnapshotStatus>> {
    // Unchanged, provided the snapshot it names is still there (a lifecycle rule may have
    // removed it); otherwise upload again to repair it.
    if current.digest == tree.id.to_string() && remote.head(&manifest_key(url, &current.digest))?.is_some() {
        return Ok(Some(SnapshotStatus::Unchanged));
    }
    if options.force || !is_colder(tree.files, tree.size, current) {
        return Ok(None);
    }
    if options.strict {
        return Err(SnapshotError::Refused {
            path: dir.to_path_buf(),
            url: url.to_string(),
            files: tree.files,
            bytes: tree.size,
            remote_files: current.files,
            remote_bytes: current.bytes,
            remote_host: current.host.clone(),
        });
    }
    Ok(Some(SnapshotStatus::Refused))
}

/// The manifest of this tree's snapshot: reused when the remote already has it (A→B→A, or
/// another machine) with its archive, otherwise uploaded now.
fn publish_manifest(
    dir: &Path,
    url: &RemoteUrl,
    remote: &Remote,
    tree: &DescribedTree,
    options: &SnapshotOptions,
    progress: &dyn SnapshotProgress,
    report: &mut SnapshotReport,
) -> Result<SnapshotManifest> {
    let digest = tree.id.to_string();
    let manifest_key = manifest_key(url, &digest);
    let existing = remote.get_versioned(&manifest_key)?;
    if let Some((bytes, _)) = &existing
        && let Ok(m) = serde_json::from_slice::<SnapshotManifest>(bytes)
        && m.version == SNAPSHOT_MANIFEST_VERSION
        && m.digest == digest
        && remote
            .head(&url.join(&m.archive))?
            .is_some_and(|meta| meta.size == m.archive_bytes)
    {
        return Ok(m);
    }
    // An unreadable manifest for this digest (or one naming a lost archive) is replaced,
    // guarded by its version; a missing one is created.
    let expect = existing.map(|(_, version)| version);
    let manifest = upload(dir, url, remote, tree, &digest, options.level, progress)?;
    report.uploaded_bytes = manifest.archive_bytes;
    let bytes = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap_or_default());
    match remote.put_if(&manifest_key, bytes, expect.as_ref())? {
        CondPut::Done(_) => Ok(manifest),
        CondPut::Conflict => {
            // Another machine published this same tree meanwhile: theirs is as good, and ours
            // must not linger unreferenced (best effort: an orphan costs storage, not
            // correctness).
            if let Err(e) = remote.delete(&url.join(&manifest.archive)) {
                tracing::warn!("could not remove the unused archive: {e}");
            }
            let theirs = remote.get_bytes(&manifest_key)?.unwrap_or_default();
            serde_json::from_slice::<SnapshotManifest>(&theirs).map_err(|e| SnapshotError::BadObject {
                target: remote.describe(&manifest_key),
                reason: format!("unreadable snapshot manifest: {e}"),
            })
        }
    }
}

/// Replaces the pointer by a conditional put against the version read at the start; on a
/// conflict, reports (or, when strict, fails with) the pointer that won.
fn move_pointer(
    url: &RemoteUrl,
    remote: &Remote,
    tree: &DescribedTree,
    before_version: Option<&ObjectVersion>,
    options: &SnapshotOptions,
    report: &mut SnapshotReport,
) -> Result<SnapshotStatus> {
    let digest = tree.id.to_string();
    let pointer_key = pointer_key(url);
    let pointer = Pointer {
        version: POINTER_VERSION,
        digest: digest.clone(),
        files: tree.files,
        bytes: tree.size,
        created_at_ms: crate::clock::now_ms(),
        host: host_name(),
        nonce: unique_token(),
    };
    let bytes = Bytes::from(serde_json::to_vec_pretty(&pointer).unwrap_or_default());
    if let CondPut::Done(_) = remote.put_if(&pointer_key, bytes, before_version)? {
        return Ok(SnapshotStatus::Uploaded);
    }
    let winner = match remote.get_bytes(&pointer_key)? {
        Some(bytes) => parse_pointer(&bytes).ok(),
        None => None,
    };
    if let Some(w) = &winner
        && w.digest == digest
    {
        // Someone published the very same tree: the pointer names what we uploaded.
        report.remote = winner;
        return Ok(SnapshotStatus::Uploaded);
    }
    if options.strict {
        return Err(SnapshotError::Conflict {
            url: url.to_string(),
            digest,
            winner: describe_pointer(winner.as_ref()),
        });
    }
    report.remote = winner;
    Ok(SnapshotStatus::Conflict)
}

/// Streams `dir` as a tar.zst to a new archive object and returns its manifest (not yet written).
fn upload(
    dir: &Path,
    url: &RemoteUrl,
    remote: &Remote,
    tree: &DescribedTree,
    digest: &str,
    level: i32,
    progress: &dyn SnapshotProgress,
) -> Result<SnapshotManifest> {
    // Eight hex digits tell apart uploads of the same tree; keys stay short, which matters to
    // stores that derive file names from them (s3s-fs base64-encodes whole keys into one name).
    let archive = format!("{SNAPSHOTS}/{digest}-{}.tar.zst", &unique_token()[..8]);
    let key = url.join(&archive);
    let Some(writer) = remote.writer(&key)? else {
        return Err(SnapshotError::BadObject {
            target: remote.describe(&key),
            reason: "an object already has this freshly made key; run the snapshot again".to_owned(),
        });
    };
    progress.phase(Phase::Uploading, None);
    let mut sink = UploadSink {
        writer,
        pending: BytesMut::with_capacity(UPLOAD_CHUNK),
        hasher: blake3::Hasher::new(),
        bytes: 0,
        error: None,
        progress,
    };
    let created = archive::create_tar_zst(dir, &mut sink, level);
    if let Some(err) = sink.error.take() {
        // The archiver failed because the upload did: that is the error to report. Dropping the
        // sink aborts the multipart upload.
        return Err(err.into());
    }
    let created = created.map_err(|source| SnapshotError::Archive {
        path: dir.to_path_buf(),
        source: Box::new(source),
    })?;
    let count = |kind| tree.entries.iter().filter(|e| e.kind == kind).count() as u64;
    let (dirs, symlinks) = (count(EntryKind::Dir), count(EntryKind::Symlink));
    if (created.files, created.bytes_in, created.dirs, created.symlinks)
        != (tree.files, tree.size, dirs, symlinks)
    {
        return Err(SnapshotError::Changed {
            path: dir.to_path_buf(),
            detail: format!(
                "hashed {} files, {} bytes, {dirs} directories, {symlinks} symlinks; archived {} files, \
                 {} bytes, {} directories, {} symlinks",
                tree.files, tree.size, created.files, created.bytes_in, created.dirs, created.symlinks
            ),
        });
    }
    let (archive_bytes, archive_blake3) = sink.finish()?;
    Ok(SnapshotManifest {
        version: SNAPSHOT_MANIFEST_VERSION,
        digest: digest.to_owned(),
        files: tree.files,
        dirs,
        symlinks,
        bytes: tree.size,
        archive,
        archive_format: Format::TarZst,
        archive_bytes,
        archive_blake3,
        created_at_ms: crate::clock::now_ms(),
        host: host_name(),
    })
}

/// The end of the archive pipeline: hashes the compressed bytes and hands them to the uploader
/// in [`UPLOAD_CHUNK`]s. An upload error is kept whole (the archiver only sees an `io::Error`).
struct UploadSink<'a> {
    writer: RemoteWriter,
    pending: BytesMut,
    hasher: blake3::Hasher,
    bytes: u64,
    error: Option<RemoteError>,
    progress: &'a dyn SnapshotProgress,
}

impl UploadSink<'_> {
    fn send(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = self.pending.split().freeze();
        self.writer.write_bytes(chunk).map_err(|e| {
            let message = e.to_string();
            self.error = Some(e);
            io::Error::other(message)
        })?;
        self.pending.reserve(UPLOAD_CHUNK);
        Ok(())
    }

    /// Completes the upload; returns the archive's size and BLAKE3.
    fn finish(mut self) -> Result<(u64, String), RemoteError> {
        if self.send().is_err()
            && let Some(err) = self.error.take()
        {
            return Err(err);
        }
        let bytes = self.bytes;
        let digest = self.hasher.finalize().to_hex().to_string();
        match self.writer.finish()? {
            PutOutcome::Created | PutOutcome::AlreadyExisted => Ok((bytes, digest)),
        }
    }
}

impl Write for UploadSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.error.is_some() {
            return Err(io::Error::other("the upload already failed"));
        }
        let n = buf.len().min(UPLOAD_CHUNK);
        self.hasher.update(&buf[..n]);
        self.pending.extend_from_slice(&buf[..n]);
        self.bytes += n as u64;
        if self.pending.len() >= UPLOAD_CHUNK {
            self.send()?;
        }
        self.progress.position(self.bytes);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks the directory to snapshot.
fn check_source(dir: &Path) -> Result<()> {
    // Follows a symlink given as DIR: the user named it.
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(SnapshotError::NotADirectory {
            path: dir.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SnapshotError::DirMissing {
            path: dir.to_path_buf(),
        }),
        Err(source) => Err(SnapshotError::Read {
            path: dir.to_path_buf(),
            source: StoreError::Io(crate::fs::annotate(source, "inspect", dir)),
        }),
    }
}
