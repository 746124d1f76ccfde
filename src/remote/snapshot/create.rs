//! [`snapshot`]: upload a directory as the current snapshot of a key.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::format::{
    ARCHIVE_MANIFEST_VERSION, ArchiveManifest, POINTER_VERSION, Pointer, SNAPSHOTS, Unreadable,
    describe_pointer, host_name, manifest_key, parse_pointer, pointer_key, unique_token,
};
use super::{
    Phase, Result, SnapshotError, SnapshotOptions, SnapshotPhases, SnapshotProgress, SnapshotReport,
    SnapshotStatus, is_colder,
};
use crate::archive::{self, ArchiveError, Format, TreeTotals};
use crate::ids::ArtifactId;
use crate::remote::{CondPut, ObjectVersion, PutOutcome, Remote, RemoteError, RemoteUrl, RemoteWriter};
use crate::store::StoreError;

/// Compressed bytes are handed to the uploader in chunks of this size, so the upload path does
/// its per-write bookkeeping once per chunk rather than once per small write of the encoder.
const UPLOAD_CHUNK: usize = 1 << 20;
/// Memory the upload may hold in parts (filling and in flight): with the default 8 MiB parts,
/// two in flight and one filling. Together with the reader's read-ahead and zstd's buffers this
/// keeps a snapshot under 64 MiB whatever the tree's size (docs/DESIGN.md, "Snapshots"); on a
/// fast link two parts in flight keep the upload ahead of the compressor.
const UPLOAD_BUDGET: usize = 24 << 20;
/// Snapshot manifests under the key examined when looking for an earlier snapshot of the same
/// tree (newest first). A key holding more may upload a tree it already has, never a wrong one.
const MANIFESTS_EXAMINED: usize = 16;
/// Keys listed under `snapshots/` at most when looking for them.
const LIST_LIMIT: usize = 1000;

/// Uploads `dir` as the current snapshot at `url`, unless the pointer already names the same
/// tree (nothing is uploaded) or the warmth guard refuses (see [`is_colder`]; `force` skips it).
///
/// One walk first (`lstat` only) checks the tree rule and counts files and bytes, before
/// anything remote changes. When the remote may already hold this very tree (the current
/// snapshot, or another under the key, has the same counts), the tree is read and hashed to
/// decide; otherwise it cannot, and the tree is read exactly once: a reading thread hashes each
/// file as it streams into the tar.zst (zstd on its own threads), whose compressed bytes go up
/// as a multipart upload with a bounded number of parts in flight. The content digest is
/// computed from the bytes archived, so the manifest always describes the archive, whatever
/// happens to the tree meanwhile; a tree that changed during the snapshot is refused
/// ([`SnapshotError::Changed`]) and the upload aborted. Memory is bounded whatever the tree's
/// size. The pointer moves only after the archive and its manifest are complete, by a
/// conditional put against the version read at the start; if another writer moved it meanwhile,
/// the result is [`SnapshotStatus::Conflict`] (or [`SnapshotError::Conflict`] when strict) and
/// the pointer is left as they wrote it.
pub fn snapshot(
    dir: &Path,
    url: &RemoteUrl,
    options: &SnapshotOptions,
    progress: Arc<dyn SnapshotProgress>,
) -> Result<SnapshotReport> {
    let started = Instant::now();
    let mut phases = SnapshotPhases::default();
    check_source(dir)?;
    let remote = Remote::new(url, options.settings.clone())?;
    // Read first: the version read here is what the final conditional put is checked against,
    // so anything another machine publishes while we hash and upload is detected.
    let (before, before_version) = timed(&mut phases.remote_ms, || read_pointer(&remote, url))?;
    progress.phase(Phase::Hashing, None);
    let totals = timed(&mut phases.walk_ms, || archive::scan_tree(dir)).map_err(|e| local(dir, e))?;
    let mut report = SnapshotReport {
        status: SnapshotStatus::Uploaded,
        url: url.to_string(),
        digest: String::new(),
        files: totals.files,
        bytes: totals.bytes,
        uploaded_bytes: 0,
        archive: None,
        remote: before.clone(),
        elapsed_ms: 0,
        phases: SnapshotPhases::default(),
    };
    let finish = |mut report: SnapshotReport, mut phases: SnapshotPhases, status| -> Result<SnapshotReport> {
        report.status = status;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        phases.wall_ms = report.elapsed_ms;
        report.phases = phases;
        Ok(report)
    };
    // The warmth guard needs only the counts: decide it before reading anything. (A refusal
    // still reports the tree's digest, as it always did; refusals are rare.)
    if let Some(current) = &before
        && !options.force
        && is_colder(totals.files, totals.bytes, current)
    {
        let digest =
            timed(&mut phases.hash_ms, || archive::digest_tree(dir, totals)).map_err(|e| local(dir, e))?;
        report.digest = digest.map(|d| d.to_string()).unwrap_or_default();
        if options.strict {
            return Err(SnapshotError::Refused {
                path: dir.to_path_buf(),
                url: url.to_string(),
                files: totals.files,
                bytes: totals.bytes,
                remote_files: current.files,
                remote_bytes: current.bytes,
                remote_host: current.host.clone(),
            });
        }
        return finish(report, phases, SnapshotStatus::Refused);
    }
    let maybe_known = timed(&mut phases.remote_ms, || {
        may_be_known(url, &remote, &totals, before.as_ref())
    })?;
    let known = if maybe_known {
        let digest =
            timed(&mut phases.hash_ms, || archive::digest_tree(dir, totals)).map_err(|e| local(dir, e))?;
        let Some(digest) = digest else {
            return Err(changed(
                dir,
                "its entries changed between the walk and the hashing".to_owned(),
            ));
        };
        Some(digest)
    } else {
        None
    };
    if let Some(digest) = &known {
        report.digest = digest.to_string();
        // Unchanged, provided the snapshot it names is still there (a lifecycle rule may have
        // removed it); otherwise upload again to repair it.
        if let Some(current) = &before
            && current.digest == report.digest
            && timed(&mut phases.remote_ms, || {
                remote.head(&manifest_key(url, &current.digest))
            })?
            .is_some()
        {
            return finish(report, phases, SnapshotStatus::Unchanged);
        }
    }
    let manifest = match &known {
        Some(digest) => timed(&mut phases.remote_ms, || {
            existing_manifest(url, &remote, digest.as_str())
        })?,
        None => None,
    };
    let manifest = match manifest {
        Some(m) => m,
        None => upload(
            dir,
            url,
            &remote,
            totals,
            known.as_ref(),
            options,
            &*progress,
            &mut report,
            &mut phases,
        )?,
    };
    report.digest = manifest.digest.clone();
    report.archive = Some(remote.describe(&url.join(&manifest.archive)));
    let status = timed(&mut phases.remote_ms, || {
        move_pointer(
            url,
            &remote,
            &manifest,
            before_version.as_ref(),
            options,
            &mut report,
        )
    })?;
    finish(report, phases, status)
}

/// Runs `f`, adding its wall time to `ms`.
fn timed<T>(ms: &mut u64, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    *ms += t.elapsed().as_millis() as u64;
    out
}

/// A local failure reading or archiving DIR: a file that vanished or shrank meanwhile means
/// the tree changed during the snapshot.
fn local(dir: &Path, e: ArchiveError) -> SnapshotError {
    if let ArchiveError::Create { path, source } = &e
        && matches!(
            source.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof
        )
    {
        return changed(dir, format!("`{}`: {source}", path.display()));
    }
    SnapshotError::Archive {
        path: dir.to_path_buf(),
        source: Box::new(e),
    }
}

fn changed(dir: &Path, detail: String) -> SnapshotError {
    SnapshotError::Changed {
        path: dir.to_path_buf(),
        detail,
    }
}

/// Whether the remote may already hold a snapshot of this very tree, so that hashing it before
/// uploading can save the upload: the current snapshot, or one of the newest
/// [`MANIFESTS_EXAMINED`] under the key, has the same counts. Trees with other counts have
/// other digests, so for them the tree is read only once, while it is archived.
fn may_be_known(
    url: &RemoteUrl,
    remote: &Remote,
    totals: &TreeTotals,
    current: Option<&Pointer>,
) -> Result<bool> {
    if current.is_some_and(|p| (p.files, p.bytes) == (totals.files, totals.bytes)) {
        return Ok(true);
    }
    let Some(current) = current else {
        // Nothing was ever published here (or the pointer is unreadable): the first snapshot of
        // a key rarely finds its tree there already, and a stray one is reused at publication.
        return Ok(false);
    };
    // Listing needs a permission (s3:ListBucket) that a role limited to reads and writes of
    // its prefix may lack: then look no further. The cost is an upload of a tree the key may
    // already hold, never a wrong snapshot.
    let listed = match remote.list(&url.join(SNAPSHOTS), LIST_LIMIT) {
        Ok(listed) => listed,
        Err(e) => {
            tracing::debug!("not looking for an earlier snapshot of this tree: {e}");
            return Ok(false);
        }
    };
    let mut manifests: Vec<_> = listed
        .into_iter()
        .filter(|o| o.key.ends_with(".json") && !o.key.ends_with(&format!("/{}.json", current.digest)))
        .collect();
    manifests.sort_by_key(|o| std::cmp::Reverse(o.last_modified));
    for object in manifests.into_iter().take(MANIFESTS_EXAMINED) {
        let Some(bytes) = remote.get_bytes(&object.key)? else {
            continue;
        };
        if let Ok(m) = serde_json::from_slice::<ArchiveManifest>(&bytes)
            && (m.files, m.bytes, m.dirs, m.symlinks)
                == (totals.files, totals.bytes, totals.dirs, totals.symlinks)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The manifest of this tree's snapshot when the remote already has it (A→B→A, or another
/// machine) with its archive.
fn existing_manifest(url: &RemoteUrl, remote: &Remote, digest: &str) -> Result<Option<ArchiveManifest>> {
    let Some((bytes, _)) = remote.get_versioned(&manifest_key(url, digest))? else {
        return Ok(None);
    };
    if let Ok(m) = serde_json::from_slice::<ArchiveManifest>(&bytes)
        && m.version == ARCHIVE_MANIFEST_VERSION
        && m.digest == digest
        && remote
            .head(&url.join(&m.archive))?
            .is_some_and(|meta| meta.size == m.archive_bytes)
    {
        return Ok(Some(m));
    }
    Ok(None)
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

/// Replaces the pointer by a conditional put against the version read at the start; on a
/// conflict, reports (or, when strict, fails with) the pointer that won.
fn move_pointer(
    url: &RemoteUrl,
    remote: &Remote,
    manifest: &ArchiveManifest,
    before_version: Option<&ObjectVersion>,
    options: &SnapshotOptions,
    report: &mut SnapshotReport,
) -> Result<SnapshotStatus> {
    let digest = manifest.digest.clone();
    let pointer_key = pointer_key(url);
    let pointer = Pointer {
        version: POINTER_VERSION,
        digest: digest.clone(),
        files: manifest.files,
        bytes: manifest.bytes,
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

/// Streams `dir` as a tar.zst to a new archive object, reading the tree once, and publishes its
/// manifest (or, if another machine published this tree meanwhile, takes theirs and abandons
/// ours). `known` is the digest when the tree was hashed first: the archived tree must match it.
#[allow(clippy::too_many_arguments)]
fn upload(
    dir: &Path,
    url: &RemoteUrl,
    remote: &Remote,
    totals: TreeTotals,
    known: Option<&ArtifactId>,
    options: &SnapshotOptions,
    progress: &dyn SnapshotProgress,
    report: &mut SnapshotReport,
    phases: &mut SnapshotPhases,
) -> Result<ArchiveManifest> {
    // Eight hex digits tell apart uploads of the same tree; keys stay short, which matters to
    // stores that derive file names from them (s3s-fs base64-encodes whole keys into one name).
    // S3 fixes an object's key when its upload starts: a tree hashed first gets its digest in
    // the name, one hashed while it streams gets the token alone (docs/DESIGN.md,
    // "Snapshots"); either way the manifest, named by the digest, says which archive is the tree's.
    let token = &unique_token()[..8];
    progress.phase(Phase::Uploading, None);
    let archive = match known {
        Some(digest) => format!("{SNAPSHOTS}/{digest}-{token}.tar.zst"),
        None => format!("{SNAPSHOTS}/{token}.tar.zst"),
    };
    let key = url.join(&archive);
    let t = Instant::now();
    let writer = remote.writer(&key)?;
    let started = Instant::now();
    phases.remote_ms += t.elapsed().as_millis() as u64;
    let Some(mut writer) = writer else {
        return Err(SnapshotError::BadObject {
            target: remote.describe(&key),
            reason: "an object already has this freshly made key; run the snapshot again".to_owned(),
        });
    };
    let part_size = options.settings.part_size.max(1);
    writer.limit_in_flight((UPLOAD_BUDGET / part_size).saturating_sub(1));
    let mut sink = UploadSink {
        writer,
        pending: BytesMut::with_capacity(UPLOAD_CHUNK),
        hasher: blake3::Hasher::new(),
        bytes: 0,
        error: None,
        busy: Duration::ZERO,
        progress,
    };
    let archived = archive::archive_tree(dir, &mut sink, options.level, Some(totals));
    if let Some(err) = sink.error.take() {
        // The archiver failed because the upload did: that is the error to report. Dropping the
        // sink aborts the multipart upload.
        return Err(err.into());
    }
    let archived = archived.map_err(|e| local(dir, e))?;
    let Some(digest) = archived.digest else {
        let c = archived.report;
        return Err(changed(
            dir,
            format!(
                "walked {} files, {} bytes, {} directories, {} symlinks; archived {} files, {} bytes, \
                 {} directories, {} symlinks",
                totals.files,
                totals.bytes,
                totals.dirs,
                totals.symlinks,
                c.files,
                c.bytes_in,
                c.dirs,
                c.symlinks
            ),
        ));
    };
    if let Some(expected) = known
        && *expected != digest
    {
        return Err(changed(
            dir,
            format!("hashed as {expected} before the upload, archived as {digest}"),
        ));
    }
    let sink_busy = sink.busy;
    let digest = digest.to_string();
    // Another machine may have published this very tree meanwhile (or an earlier snapshot of it
    // was not among those examined): then theirs is as good, and ours is abandoned before it
    // ever becomes visible.
    let t = Instant::now();
    if let Some(m) = existing_manifest(url, remote, &digest)? {
        phases.remote_ms += t.elapsed().as_millis() as u64;
        drop(sink);
        return Ok(m);
    }
    phases.remote_ms += t.elapsed().as_millis() as u64;
    let archive_ms = started.elapsed();
    let mut busy = sink.busy;
    let t = Instant::now();
    let finished = sink.finish();
    busy += t.elapsed();
    let (archive_bytes, archive_blake3) = finished?;
    phases.archive_ms = started.elapsed().as_millis() as u64;
    phases.upload_ms = busy.as_millis() as u64;
    phases.read_ms = archived.read.as_millis() as u64;
    phases.read_wait_ms = archived.read_wait.as_millis() as u64;
    phases.compress_ms = archive_ms
        .saturating_sub(archived.read_wait + sink_busy)
        .as_millis() as u64;
    let manifest = ArchiveManifest {
        version: ARCHIVE_MANIFEST_VERSION,
        digest: digest.clone(),
        files: archived.report.files,
        dirs: archived.report.dirs,
        symlinks: archived.report.symlinks,
        bytes: archived.report.bytes_in,
        archive,
        archive_format: Format::TarZst,
        archive_bytes,
        archive_blake3,
        created_at_ms: crate::clock::now_ms(),
        host: host_name(),
    };
    report.uploaded_bytes = manifest.archive_bytes;
    let t = Instant::now();
    let published = publish(url, remote, manifest);
    phases.remote_ms += t.elapsed().as_millis() as u64;
    published
}

/// Writes the manifest of a freshly uploaded archive: created, or replacing an unreadable one
/// (guarded by its version). If another machine published this tree meanwhile, theirs is as
/// good, and our archive must not linger unreferenced (best effort: an orphan costs storage,
/// not correctness).
fn publish(url: &RemoteUrl, remote: &Remote, manifest: ArchiveManifest) -> Result<ArchiveManifest> {
    let manifest_key = manifest_key(url, &manifest.digest);
    let expect = remote.get_versioned(&manifest_key)?.map(|(_, version)| version);
    let bytes = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap_or_default());
    match remote.put_if(&manifest_key, bytes, expect.as_ref())? {
        CondPut::Done(_) => Ok(manifest),
        CondPut::Conflict => {
            if let Err(e) = remote.delete(&url.join(&manifest.archive)) {
                tracing::warn!("could not remove the unused archive: {e}");
            }
            let theirs = remote.get_bytes(&manifest_key)?.unwrap_or_default();
            serde_json::from_slice::<ArchiveManifest>(&theirs).map_err(|e| SnapshotError::BadObject {
                target: remote.describe(&manifest_key),
                reason: format!("unreadable snapshot manifest: {e}"),
            })
        }
    }
}
/// The end of the archive pipeline: hashes the compressed bytes and hands them to the uploader
/// in [`UPLOAD_CHUNK`]s. An upload error is kept whole (the archiver only sees an `io::Error`).
struct UploadSink<'a> {
    writer: RemoteWriter,
    pending: BytesMut,
    hasher: blake3::Hasher,
    bytes: u64,
    error: Option<RemoteError>,
    /// Time spent handing bytes to the uploader (blocked while the parts in flight are at
    /// their limit).
    busy: Duration,
    progress: &'a dyn SnapshotProgress,
}

impl UploadSink<'_> {
    fn send(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = self.pending.split().freeze();
        let t = Instant::now();
        let written = self.writer.write_bytes(chunk);
        self.busy += t.elapsed();
        written.map_err(|e| {
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
