//! Directory snapshots in object storage (DESIGN.md, problem 4): [`snapshot`] uploads a tree as a
//! standard tar.zst, [`restore`] brings it back and swaps it into place atomically.
//!
//! Layout under the URL's key `KEY`:
//!
//! - `KEY/pointer.json`: which snapshot is current ([`Pointer`]). Small, and only ever replaced
//!   by a conditional put against the version read at the start, so two machines snapshotting at
//!   once cannot overwrite each other unnoticed.
//! - `KEY/snapshots/<digest>.json`: the manifest ([`SnapshotManifest`]) of the snapshot of a tree
//!   whose content digest is `<digest>`; created once, never replaced (unless unreadable).
//! - `KEY/snapshots/<digest>-<upload>.tar.zst`: the archive that manifest names. Each upload gets
//!   a key of its own because the same tree archived on two machines gives different bytes
//!   (modification times), and S3 multipart uploads cannot be made create-only: with one shared
//!   key, a second upload could replace the archive after the first one's manifest recorded its
//!   BLAKE3, and every restore would then fail verification.
//!
//! The digest is [`crate::store::Manifest::id`] of the tree: paths, kinds, executable bits, sizes,
//! content digests and symlink targets, not times. Hashing the tree is read-only.
//!
//! Advisory: every remote failure is an error here; the command line turns it into a warning
//! (see [`SnapshotError::is_local`]). Either way a restore never touches DIR unless it swaps in
//! a complete, verified tree, and a snapshot never moves the pointer to anything incomplete.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::{CondPut, PutOutcome, Remote, RemoteError, RemoteSettings, RemoteUrl, RemoteWriter};
use crate::archive::{self, ArchiveError, Format, Limits};
use crate::fs::{Staged, StagingArea};
use crate::store::{EntryKind, Manifest, StoreError};

/// The format version of `pointer.json`.
pub const POINTER_VERSION: u32 = 1;
/// The format version of `snapshots/<digest>.json`.
pub const SNAPSHOT_MANIFEST_VERSION: u32 = 1;

const POINTER: &str = "pointer.json";
const SNAPSHOTS: &str = "snapshots";
/// Compressed bytes are handed to the uploader in chunks of this size, so the upload path does
/// its per-write bookkeeping once per chunk rather than once per small write of the encoder.
const UPLOAD_CHUNK: usize = 1 << 20;

/// The current snapshot of a key: the small object at `KEY/pointer.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// [`POINTER_VERSION`].
    pub version: u32,
    /// Content digest of the tree; its manifest is `snapshots/<digest>.json`.
    pub digest: String,
    /// Regular files in the tree.
    pub files: u64,
    /// Bytes of file content in the tree.
    pub bytes: u64,
    /// When this pointer was written, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The machine that wrote it.
    pub host: String,
    /// Unique per write, so that A→B→A changes the object (and its ETag) every time.
    pub nonce: String,
}

/// What `KEY/snapshots/<digest>.json` says about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// [`SNAPSHOT_MANIFEST_VERSION`].
    pub version: u32,
    /// Content digest of the tree.
    pub digest: String,
    /// Regular files.
    pub files: u64,
    /// Directories (the root excluded).
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// The archive's key relative to `KEY` (`snapshots/<digest>-<upload>.tar.zst`).
    pub archive: String,
    /// Always `tar.zst`.
    pub archive_format: Format,
    /// The archive's size in bytes.
    pub archive_bytes: u64,
    /// BLAKE3 of the archive's bytes, lowercase hex; every restore checks it.
    pub archive_blake3: String,
    /// When it was uploaded, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The machine that uploaded it.
    pub host: String,
}

/// The warmth guard: whether a tree of `files` files and `bytes` bytes is colder than the remote
/// snapshot `remote`, so that replacing it would lose content.
///
/// The rule: colder means strictly fewer files AND strictly fewer bytes. A cold or half-installed
/// dependency tree is smaller on both counts; a tree that legitimately changed (an upgrade, a
/// package swapped for another) usually grows on at least one. A tree that legitimately shrank on
/// both counts (dependencies removed) needs `--force` once.
pub fn is_colder(files: u64, bytes: u64, remote: &Pointer) -> bool {
    files < remote.files && bytes < remote.bytes
}

/// How [`snapshot`] runs.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Replace the remote snapshot even when the warmth guard says the local tree is colder.
    pub force: bool,
    /// Return refusals and conflicts as errors instead of reports.
    pub strict: bool,
    /// Connection, timeouts and transfer sizes.
    pub settings: RemoteSettings,
    /// zstd level (1–22).
    pub level: i32,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        Self {
            force: false,
            strict: false,
            settings: RemoteSettings::default(),
            level: 3,
        }
    }
}

/// How [`restore`] runs.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Bound on the whole restore (reading the pointer, downloading, extracting). Default:
    /// [`RemoteSettings::overall_timeout`].
    pub timeout: Option<Duration>,
    /// Return "no snapshot yet" as an error instead of a report.
    pub strict: bool,
    /// Connection, timeouts and transfer sizes.
    pub settings: RemoteSettings,
}

/// The steps of a snapshot or a restore, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Reading the local tree to compute its digest.
    Hashing,
    /// Streaming the compressed archive up.
    Uploading,
    /// Downloading the archive.
    Downloading,
    /// Unpacking the archive into staging.
    Extracting,
}

impl Phase {
    /// A short word for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Hashing => "hashing",
            Phase::Uploading => "uploading",
            Phase::Downloading => "downloading",
            Phase::Extracting => "extracting",
        }
    }
}

/// Receives progress of a snapshot or a restore. Called from worker threads.
pub trait SnapshotProgress: Send + Sync {
    /// A phase starts; `total` bytes when known.
    fn phase(&self, phase: Phase, total: Option<u64>) {
        let _ = (phase, total);
    }
    /// Bytes done so far in the current phase.
    fn position(&self, bytes: u64) {
        let _ = bytes;
    }
}

impl SnapshotProgress for super::NoProgress {}

/// What [`snapshot`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotStatus {
    /// The pointer now names this tree's snapshot (uploaded now, or already there).
    Uploaded,
    /// The pointer already named this tree: nothing was uploaded.
    Unchanged,
    /// The warmth guard refused: the remote snapshot holds more. Nothing changed.
    Refused,
    /// Another writer replaced the pointer meanwhile; it was left as they wrote it.
    Conflict,
}

/// The result of [`snapshot`].
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    /// What happened.
    pub status: SnapshotStatus,
    /// The snapshot URL.
    pub url: String,
    /// The local tree's content digest.
    pub digest: String,
    /// Files in the local tree.
    pub files: u64,
    /// Bytes of file content in the local tree.
    pub bytes: u64,
    /// Compressed bytes uploaded (0 when nothing was).
    pub uploaded_bytes: u64,
    /// The archive now current or offered, when one exists.
    pub archive: Option<String>,
    /// The pointer before this snapshot (or, on a conflict, the one that won).
    pub remote: Option<Pointer>,
    /// Wall time.
    pub elapsed_ms: u64,
}

/// What [`restore`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreStatus {
    /// DIR now holds the snapshot.
    Restored,
    /// DIR already held it: nothing was downloaded.
    Unchanged,
    /// There is no snapshot at the URL yet; DIR was left as it was.
    NoSnapshot,
}

/// The result of [`restore`].
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// What happened.
    pub status: RestoreStatus,
    /// The directory.
    pub dir: PathBuf,
    /// The snapshot URL.
    pub url: String,
    /// Content digest of the snapshot (None when there is none).
    pub digest: Option<String>,
    /// Files in the snapshot.
    pub files: u64,
    /// Bytes of file content in the snapshot.
    pub bytes: u64,
    /// Compressed bytes downloaded.
    pub downloaded_bytes: u64,
    /// Wall time.
    pub elapsed_ms: u64,
}

/// Why a snapshot or a restore did not happen. [`SnapshotError::is_local`] separates problems
/// with DIR (always errors) from problems with the remote (warnings unless `--strict`).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// DIR does not exist.
    #[error("`{path}` does not exist; give the directory to snapshot")]
    DirMissing { path: PathBuf },
    /// DIR (or, for a restore, its parent) is something else than a directory.
    #[error("`{path}` is not a directory; give a directory path")]
    NotADirectory { path: PathBuf },
    /// The parent of DIR is missing.
    #[error("cannot restore into `{path}`: its parent directory does not exist; create it first")]
    ParentMissing { path: PathBuf },
    /// Nothing can be written next to DIR.
    #[error(
        "cannot restore into `{path}`: cannot write in `{parent}` to stage the new tree ({source}); \
         make it writable or restore somewhere else"
    )]
    NotWritable {
        path: PathBuf,
        parent: PathBuf,
        source: io::Error,
    },
    /// DIR could not be read (or holds something a snapshot cannot).
    #[error("cannot snapshot `{path}`: {source}")]
    Read { path: PathBuf, source: StoreError },
    /// Archiving DIR failed locally.
    #[error("cannot snapshot `{path}`: {source}")]
    Archive {
        path: PathBuf,
        source: Box<ArchiveError>,
    },
    /// DIR changed between hashing and archiving.
    #[error(
        "`{path}` changed while it was being snapshotted ({detail}); the upload was abandoned and the \
         remote left as it was; run the snapshot again once the directory is quiet"
    )]
    Changed { path: PathBuf, detail: String },
    /// A local file operation of a restore failed (the message names the path).
    #[error("cannot restore into `{path}`: {source}; `{path}` was left untouched")]
    Local { path: PathBuf, source: io::Error },
    /// Talking to the remote failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A pointer or manifest in the remote is unusable.
    #[error("{target}: {reason}")]
    BadObject { target: String, reason: String },
    /// The (verified) archive could not be unpacked.
    #[error("{target}: cannot unpack the snapshot: {source}; `{dir}` was left untouched")]
    Extract {
        target: String,
        dir: PathBuf,
        source: Box<ArchiveError>,
    },
    /// The restore ran out of time.
    #[error(
        "restoring `{dir}` from {url} did not finish within {}: abandoned while {phase}; `{dir}` was \
         left untouched (raise --timeout for slow links)",
        crate::units::format_duration(*.timeout)
    )]
    TimedOut {
        dir: PathBuf,
        url: String,
        timeout: Duration,
        phase: &'static str,
    },
    /// Nothing has been snapshotted at the URL yet.
    #[error("{target}: no snapshot yet; `{dir}` was left as it was")]
    NoSnapshot { target: String, dir: PathBuf },
    /// The warmth guard refused (strict mode).
    #[error(
        "refused to replace the snapshot at {url}: it holds {remote_files} files / {remote_bytes} bytes \
         (from {remote_host}) and `{path}` only {files} files / {bytes} bytes, so it looks cold or \
         incomplete; pass --force to replace it anyway"
    )]
    Refused {
        path: PathBuf,
        url: String,
        files: u64,
        bytes: u64,
        remote_files: u64,
        remote_bytes: u64,
        remote_host: String,
    },
    /// Another writer moved the pointer meanwhile (strict mode).
    #[error(
        "{url}: another snapshot was published while this one was uploading ({winner}); the pointer \
         was left as they wrote it and this snapshot ({digest}) is not current; run again to replace it"
    )]
    Conflict {
        url: String,
        digest: String,
        winner: String,
    },
}

impl SnapshotError {
    /// Whether this is a problem with the local directory (always reported as an error) rather
    /// than with the remote or its data (advisory: a warning unless `--strict`).
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            Self::DirMissing { .. }
                | Self::NotADirectory { .. }
                | Self::ParentMissing { .. }
                | Self::NotWritable { .. }
                | Self::Read { .. }
                | Self::Archive { .. }
                | Self::Changed { .. }
                | Self::Local { .. }
        )
    }
}

type Result<T, E = SnapshotError> = std::result::Result<T, E>;

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
    let pointer_key = url.join(POINTER);

    // Read first: the version read here is what the final conditional put is checked against,
    // so anything another machine publishes while we hash and upload is detected.
    let (before, before_version) = match remote.get_versioned(&pointer_key)? {
        Some((bytes, version)) => {
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
            (pointer, Some(version))
        }
        None => (None, None),
    };

    progress.phase(Phase::Hashing, None);
    let hashing = {
        let progress = progress.clone();
        crate::progress::Progress::new(move |bytes, _| progress.position(bytes))
    };
    let tree = crate::store::describe_tree(dir, &hashing).map_err(|source| SnapshotError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let digest = tree
        .id()
        .map_err(|source| SnapshotError::Read {
            path: dir.to_path_buf(),
            source: source.into(),
        })?
        .to_string();
    let manifest_key = url.join(&format!("{SNAPSHOTS}/{digest}.json"));
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

    if let Some(current) = &before {
        // Unchanged, provided the snapshot it names is still there (a lifecycle rule may have
        // removed it); otherwise upload again to repair it.
        if current.digest == digest && remote.head(&manifest_key)?.is_some() {
            return finish(report, SnapshotStatus::Unchanged);
        }
        if !options.force && is_colder(tree.files, tree.size, current) {
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
            return finish(report, SnapshotStatus::Refused);
        }
    }

    // The same tree may already be in the remote (A→B→A, or another machine): reuse it.
    let existing = remote.get_versioned(&manifest_key)?;
    let reusable = match &existing {
        Some((bytes, _)) => match serde_json::from_slice::<SnapshotManifest>(bytes) {
            Ok(m) if m.version == SNAPSHOT_MANIFEST_VERSION && m.digest == digest => remote
                .head(&url.join(&m.archive))?
                .filter(|meta| meta.size == m.archive_bytes)
                .map(|_| m),
            _ => None,
        },
        None => None,
    };
    let manifest = match reusable {
        Some(manifest) => manifest,
        None => {
            // An unreadable manifest for this digest (or one naming a lost archive) is replaced,
            // guarded by its version; a missing one is created.
            let expect = existing.map(|(_, version)| version);
            let manifest = upload(dir, url, &remote, &tree, &digest, options.level, &*progress)?;
            report.uploaded_bytes = manifest.archive_bytes;
            let bytes = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap_or_default());
            match remote.put_if(&manifest_key, bytes, expect.as_ref())? {
                CondPut::Done(_) => manifest,
                CondPut::Conflict => {
                    // Another machine published this same tree meanwhile: theirs is as good, and
                    // ours must not linger unreferenced.
                    delete_quietly(&remote, &url.join(&manifest.archive));
                    let theirs = remote.get_bytes(&manifest_key)?.unwrap_or_default();
                    serde_json::from_slice::<SnapshotManifest>(&theirs).map_err(|e| {
                        SnapshotError::BadObject {
                            target: remote.describe(&manifest_key),
                            reason: format!("unreadable snapshot manifest: {e}"),
                        }
                    })?
                }
            }
        }
    };
    report.archive = Some(remote.describe(&url.join(&manifest.archive)));

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
    match remote.put_if(&pointer_key, bytes, before_version.as_ref())? {
        CondPut::Done(_) => finish(report, SnapshotStatus::Uploaded),
        CondPut::Conflict => {
            let winner = match remote.get_bytes(&pointer_key)? {
                Some(bytes) => parse_pointer(&bytes).ok(),
                None => None,
            };
            if let Some(w) = &winner
                && w.digest == digest
            {
                // Someone published the very same tree: the pointer names what we uploaded.
                report.remote = winner;
                return finish(report, SnapshotStatus::Uploaded);
            }
            if options.strict {
                return Err(SnapshotError::Conflict {
                    url: url.to_string(),
                    digest,
                    winner: describe_pointer(winner.as_ref()),
                });
            }
            report.remote = winner;
            finish(report, SnapshotStatus::Conflict)
        }
    }
}

/// Streams `dir` as a tar.zst to a new archive object and returns its manifest (not yet written).
fn upload(
    dir: &Path,
    url: &RemoteUrl,
    remote: &Remote,
    tree: &Manifest,
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

/// Replaces `dir` with the snapshot at `url`: pointer, manifest, a ranged parallel download
/// verified against the manifest's BLAKE3 into staging next to `dir`, safe extraction into
/// staging, then one atomic swap (exchange when `dir` exists, rename otherwise). Nothing is
/// downloaded when `dir` already holds the snapshot's tree.
///
/// On any failure, and when [`RestoreOptions::timeout`] runs out (the bound covers the whole
/// operation: reading the pointer, downloading and extracting), `dir` is untouched and staging
/// is removed (by the extraction thread once it stops, if the time ran out while it worked).
pub fn restore(
    dir: &Path,
    url: &RemoteUrl,
    options: &RestoreOptions,
    progress: Arc<dyn SnapshotProgress>,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let timeout = options.timeout.unwrap_or(options.settings.overall_timeout);
    let deadline = started + timeout;
    let (dir, exists) = check_destination(dir)?;
    let staging = RestoreStaging::new(&dir)?;
    let timed_out = |phase| SnapshotError::TimedOut {
        dir: dir.clone(),
        url: url.to_string(),
        timeout,
        phase,
    };
    // Each step gets what is left of the overall budget as its own timeout.
    let remote_for = |phase| -> Result<Remote> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(phase));
        }
        let mut settings = options.settings.clone();
        settings.overall_timeout = left;
        Ok(Remote::new(url, settings)?)
    };
    let mut report = RestoreReport {
        status: RestoreStatus::Restored,
        dir: dir.clone(),
        url: url.to_string(),
        digest: None,
        files: 0,
        bytes: 0,
        downloaded_bytes: 0,
        elapsed_ms: 0,
    };

    let remote = remote_for("reading the pointer")?;
    let pointer_key = url.join(POINTER);
    let remote_err = |e: RemoteError| match e {
        RemoteError::TimedOut { .. } if Instant::now() >= deadline => timed_out("waiting for the remote"),
        e => SnapshotError::Remote(e),
    };
    let Some(bytes) = remote.get_bytes(&pointer_key).map_err(remote_err)? else {
        if options.strict {
            return Err(SnapshotError::NoSnapshot {
                target: remote.describe(&pointer_key),
                dir: dir.clone(),
            });
        }
        report.status = RestoreStatus::NoSnapshot;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    };
    let pointer = parse_pointer(&bytes).map_err(|e| SnapshotError::BadObject {
        target: remote.describe(&pointer_key),
        reason: e.to_string(),
    })?;
    report.digest = Some(pointer.digest.clone());
    report.files = pointer.files;
    report.bytes = pointer.bytes;

    if exists {
        progress.phase(Phase::Hashing, None);
        let hashing = {
            let progress = progress.clone();
            crate::progress::Progress::new(move |bytes, _| progress.position(bytes))
        };
        // A tree that cannot be described (a socket in it, an unreadable file) is simply not
        // the snapshot: it gets replaced.
        match crate::store::describe_tree(&dir, &hashing) {
            Ok(local) if local.id().is_ok_and(|id| id == *pointer.digest) => {
                report.status = RestoreStatus::Unchanged;
                report.elapsed_ms = started.elapsed().as_millis() as u64;
                return Ok(report);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("`{}` will be replaced: {e}", dir.display()),
        }
    }

    let manifest_key = url.join(&format!("{SNAPSHOTS}/{}.json", pointer.digest));
    let remote = remote_for("reading the snapshot manifest")?;
    let manifest = remote
        .get_bytes(&manifest_key)
        .map_err(remote_err)?
        .ok_or_else(|| SnapshotError::BadObject {
            target: remote.describe(&manifest_key),
            reason: "the pointer names a snapshot whose manifest is missing".to_owned(),
        })?;
    let manifest = parse_manifest(&manifest, &pointer).map_err(|reason| SnapshotError::BadObject {
        target: remote.describe(&manifest_key),
        reason,
    })?;

    let archive_key = url.join(&manifest.archive);
    let target = remote.describe(&archive_key);
    let archive_path = staging.path().join("archive.tar.zst");
    let remote = remote_for("downloading")?;
    let download_progress = Counted {
        inner: &*progress,
        done: AtomicU64::new(0),
    };
    let got = remote
        .get_to_file(
            &archive_key,
            &archive_path,
            Some(&manifest.archive_blake3),
            &download_progress,
        )
        .map_err(remote_err)?;
    report.downloaded_bytes = got.bytes;
    if got.bytes != manifest.archive_bytes {
        return Err(SnapshotError::BadObject {
            target,
            reason: format!(
                "the archive is {} bytes, the manifest says {}",
                got.bytes, manifest.archive_bytes
            ),
        });
    }

    let tree = extract_until(staging, archive_path, &manifest, target, &dir, deadline, progress)
        .map_err(|e| e.unwrap_or_else(|| timed_out("extracting")))?;
    let staging = tree.staging;
    let new_tree = tree.path;
    if Instant::now() >= deadline {
        return Err(timed_out("making the new tree durable"));
    }
    let local = |source: io::Error| SnapshotError::Local {
        path: dir.clone(),
        source,
    };
    crate::fs::sync_tree(&new_tree).map_err(local)?;
    if Instant::now() >= deadline {
        return Err(timed_out("making the new tree durable"));
    }
    // The swap is the single moment DIR changes: before it DIR is the old tree, after it the
    // new one, complete and durable. The old tree ends up in staging and goes with it.
    swap_in(&new_tree, &dir, exists).map_err(local)?;
    // DIR has changed by now, so this is no longer an error that leaves it untouched.
    if let Err(e) = crate::fs::fsync_parent(&dir) {
        tracing::warn!(
            "restored `{}`, but could not make the swap durable: {e}",
            dir.display()
        );
    }
    drop(staging);
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Puts `new_tree` at `dir`: an atomic exchange with the existing tree (which ends up at
/// `new_tree`'s path, inside staging), or a rename when there is none.
fn swap_in(new_tree: &Path, dir: &Path, exists: bool) -> io::Result<()> {
    // If someone created DIR meanwhile, swap with theirs like with any existing tree.
    if !exists && crate::fs::rename_noreplace(new_tree, dir)? {
        return Ok(());
    }
    match crate::fs::exchange(new_tree, dir) {
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            // No atomic exchange on this file system: two renames, DIR briefly absent in
            // between, and the old tree put back if the second one fails.
            let old = new_tree.with_file_name("old");
            crate::fs::rename_with_retry(dir, &old)?;
            if let Err(e) = crate::fs::rename_with_retry(new_tree, dir) {
                let _ = crate::fs::rename_with_retry(&old, dir);
                return Err(e);
            }
            Ok(())
        }
        other => other,
    }
}

/// An extracted tree and the staging that holds it.
struct Extracted {
    staging: RestoreStaging,
    path: PathBuf,
}

/// Extracts on a thread of its own so the caller can give up at `deadline` (extraction has no
/// way to be interrupted). The thread owns the staging, so if we give up it removes the staging
/// itself when it stops; DIR is only touched by the caller, after a timely result. `Err(None)`
/// means the deadline passed.
fn extract_until(
    staging: RestoreStaging,
    archive_path: PathBuf,
    manifest: &SnapshotManifest,
    target: String,
    dir: &Path,
    deadline: Instant,
    progress: Arc<dyn SnapshotProgress>,
) -> Result<Extracted, Option<SnapshotError>> {
    let (tx, rx) = mpsc::channel();
    let manifest = manifest.clone();
    let dir = dir.to_path_buf();
    progress.phase(Phase::Extracting, Some(manifest.bytes));
    std::thread::Builder::new()
        .name("warmcache-restore".to_owned())
        .spawn(move || {
            let result = extract_checked(&staging, &archive_path, &manifest, &target, &dir, &*progress);
            let message = result.map(|path| Extracted { staging, path });
            // If the caller gave up, the result (and with it the staging) is dropped here.
            let _ = tx.send(message);
        })
        .map_err(|source| {
            Some(SnapshotError::Local {
                path: PathBuf::from("(extraction thread)"),
                source,
            })
        })?;
    let left = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(left) {
        Ok(result) => result.map_err(Some),
        Err(_) => Err(None),
    }
}

fn extract_checked(
    staging: &RestoreStaging,
    archive_path: &Path,
    manifest: &SnapshotManifest,
    target: &str,
    dir: &Path,
    progress: &dyn SnapshotProgress,
) -> Result<PathBuf> {
    let tree = staging.path().join("tree");
    let extract_err = |source| SnapshotError::Extract {
        target: target.to_owned(),
        dir: dir.to_path_buf(),
        source: Box::new(source),
    };
    fs_err::create_dir(&tree).map_err(|source| SnapshotError::Local {
        path: dir.to_path_buf(),
        source,
    })?;
    // The manifest says what the archive is; the magic bytes must agree.
    match archive::detect(archive_path).map_err(extract_err)? {
        Some(Format::TarZst) => {}
        other => {
            return Err(SnapshotError::BadObject {
                target: target.to_owned(),
                reason: format!(
                    "not a tar.zst archive (found {})",
                    other.map_or("no archive format", Format::as_str)
                ),
            });
        }
    }
    let on_progress = |p: archive::Progress| progress.position(p.bytes);
    let extracted = archive::extract(
        archive_path,
        Format::TarZst,
        &tree,
        &Limits::default(),
        &on_progress,
    )
    .map_err(extract_err)?;
    // The archive's bytes were verified; its content must also be what the manifest promised.
    if (extracted.files, extracted.bytes, extracted.symlinks)
        != (manifest.files, manifest.bytes, manifest.symlinks)
    {
        return Err(SnapshotError::BadObject {
            target: target.to_owned(),
            reason: format!(
                "the archive holds {} files, {} bytes, {} symlinks; the manifest promised {}, {}, {}",
                extracted.files,
                extracted.bytes,
                extracted.symlinks,
                manifest.files,
                manifest.bytes,
                manifest.symlinks
            ),
        });
    }
    // The archive is no longer needed; removing it now frees its space before the swap.
    let _ = fs_err::remove_file(archive_path);
    Ok(tree)
}

/// Private staging next to DIR (same file system, so the final swap is a rename), in a hidden
/// staging area `.NAME.warmcache-staging` that is swept of dead restores' leftovers on every
/// restore and removed when empty.
struct RestoreStaging {
    staged: Option<Staged>,
    area: PathBuf,
}

impl RestoreStaging {
    fn new(dir: &Path) -> Result<Self> {
        let parent = parent_of(dir);
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let area_dir = parent.join(format!(".{name}.warmcache-staging"));
        let not_writable = |source: io::Error| SnapshotError::NotWritable {
            path: dir.to_path_buf(),
            parent: parent.clone(),
            source,
        };
        let area = StagingArea::new(&area_dir).map_err(not_writable)?;
        if let Err(e) = area.sweep() {
            tracing::warn!(
                "could not sweep old restore staging in `{}`: {e}",
                area_dir.display()
            );
        }
        let staged = area.create_dir("restore").map_err(not_writable)?;
        Ok(Self {
            staged: Some(staged),
            area: area_dir,
        })
    }

    fn path(&self) -> &Path {
        self.staged.as_ref().map_or(self.area.as_path(), Staged::path)
    }
}

impl Drop for RestoreStaging {
    fn drop(&mut self) {
        // Removes the staging directory (and whatever old tree was swapped into it) first.
        drop(self.staged.take());
        // Fails harmlessly while another restore of the same directory is using the area.
        let _ = std::fs::remove_dir(&self.area);
    }
}

/// Forwards download progress as a running total.
struct Counted<'a> {
    inner: &'a dyn SnapshotProgress,
    done: AtomicU64,
}

impl super::Progress for Counted<'_> {
    fn start(&self, total: Option<u64>) {
        self.inner.phase(Phase::Downloading, total);
    }

    fn advance(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.inner.position(done);
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

/// Checks the directory to restore into; returns the path to swap (a symlink given as DIR is
/// resolved, so the tree it points to is replaced, not the link) and whether it exists.
fn check_destination(dir: &Path) -> Result<(PathBuf, bool)> {
    let local = |source: io::Error| SnapshotError::Local {
        path: dir.to_path_buf(),
        source,
    };
    let dir = std::path::absolute(dir).map_err(local)?;
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() => Ok((dir, true)),
        Ok(meta) if meta.file_type().is_symlink() => {
            let real = fs_err::canonicalize(&dir).map_err(local)?;
            match std::fs::metadata(&real) {
                Ok(m) if m.is_dir() => Ok((real, true)),
                _ => Err(SnapshotError::NotADirectory { path: dir }),
            }
        }
        Ok(_) => Err(SnapshotError::NotADirectory { path: dir }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::metadata(parent_of(&dir)) {
            Ok(m) if m.is_dir() => Ok((dir, false)),
            Ok(_) => Err(SnapshotError::NotADirectory {
                path: parent_of(&dir),
            }),
            Err(_) => Err(SnapshotError::ParentMissing { path: dir }),
        },
        Err(e) => Err(local(crate::fs::annotate(e, "inspect", &dir))),
    }
}

fn parent_of(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Why a pointer could not be used.
#[derive(Debug)]
enum Unreadable {
    Newer(u32),
    Garbage(String),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::Newer(v) => write!(
                f,
                "the pointer has format version {v}, newer than this warmcache understands \
                 ({POINTER_VERSION}); upgrade warmcache"
            ),
            Unreadable::Garbage(reason) => write!(f, "unreadable pointer: {reason}"),
        }
    }
}

fn parse_pointer(bytes: &[u8]) -> std::result::Result<Pointer, Unreadable> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let version = serde_json::from_slice::<Versioned>(bytes)
        .map_err(|e| Unreadable::Garbage(e.to_string()))?
        .version;
    if version > POINTER_VERSION {
        return Err(Unreadable::Newer(version));
    }
    let pointer: Pointer = serde_json::from_slice(bytes).map_err(|e| Unreadable::Garbage(e.to_string()))?;
    if pointer.version != POINTER_VERSION || crate::ids::ArtifactId::new(&pointer.digest).is_err() {
        return Err(Unreadable::Garbage(format!(
            "version {} with digest `{}`",
            pointer.version, pointer.digest
        )));
    }
    Ok(pointer)
}

fn parse_manifest(bytes: &[u8], pointer: &Pointer) -> std::result::Result<SnapshotManifest, String> {
    let manifest: SnapshotManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("unreadable snapshot manifest: {e}"))?;
    if manifest.version != SNAPSHOT_MANIFEST_VERSION {
        return Err(format!(
            "snapshot manifest format version {} is not the one this warmcache reads ({SNAPSHOT_MANIFEST_VERSION})",
            manifest.version
        ));
    }
    if manifest.digest != pointer.digest {
        return Err(format!(
            "the manifest describes snapshot {}, not {} as the pointer says",
            manifest.digest, pointer.digest
        ));
    }
    // The archive must be one of this key's snapshots, not any object of the bucket.
    let name = manifest.archive.strip_prefix(&format!("{SNAPSHOTS}/"));
    let valid_name =
        name.is_some_and(|n| n.ends_with(".tar.zst") && !n.contains('/') && n.starts_with(&manifest.digest));
    if !valid_name || manifest.archive_format != Format::TarZst {
        return Err(format!(
            "the manifest names an unexpected archive `{}` ({})",
            manifest.archive, manifest.archive_format
        ));
    }
    Ok(manifest)
}

fn describe_pointer(pointer: Option<&Pointer>) -> String {
    match pointer {
        Some(p) => format!(
            "snapshot {} of {} files, {} bytes, from {}",
            p.digest, p.files, p.bytes, p.host
        ),
        None => "the pointer is now missing or unreadable".to_owned(),
    }
}

/// Deletes an object, best effort (an orphan archive costs storage, not correctness).
fn delete_quietly(remote: &Remote, key: &str) {
    let Ok(path) = remote.path(key) else { return };
    let target = remote.describe(key);
    let store = remote.inner.store.clone();
    let result = remote.run("delete", &target, remote.deadline(), async {
        store
            .delete(&path)
            .await
            .map_err(|e| RemoteError::from_store(e, &target, "delete"))
    });
    if let Err(e) = result {
        tracing::warn!("could not remove the unused archive: {e}");
    }
}

/// This machine's name, for pointers and manifests (informational only).
fn host_name() -> String {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    from_kernel
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// 16 hex digits unique to this call: process, time, a counter and the host, hashed.
fn unique_token() -> String {
    let seed = format!("{}|{}", crate::fs::unique_name(""), host_name());
    blake3::hash(seed.as_bytes()).to_hex()[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointer(files: u64, bytes: u64) -> Pointer {
        Pointer {
            version: POINTER_VERSION,
            digest: "a".repeat(64),
            files,
            bytes,
            created_at_ms: 0,
            host: "h".into(),
            nonce: "n".into(),
        }
    }

    /// A staged archive of a small tree, and the manifest that describes it.
    fn staged_archive(tmp: &Path) -> (RestoreStaging, PathBuf, SnapshotManifest, PathBuf) {
        let src = tmp.join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        for i in 0..200u32 {
            std::fs::write(src.join(format!("a/b/f{i}")), i.to_le_bytes().repeat(2000)).unwrap();
        }
        let dir = tmp.join("dest");
        let staging = RestoreStaging::new(&dir).unwrap();
        let archive = staging.path().join("archive.tar.zst");
        let created = archive::create_tar_zst(&src, fs_err::File::create(&archive).unwrap(), 3).unwrap();
        let manifest = SnapshotManifest {
            version: SNAPSHOT_MANIFEST_VERSION,
            digest: "a".repeat(64),
            files: created.files,
            dirs: created.dirs,
            symlinks: created.symlinks,
            bytes: created.bytes_in,
            archive: format!("snapshots/{}-0.tar.zst", "a".repeat(64)),
            archive_format: Format::TarZst,
            archive_bytes: created.bytes_out,
            archive_blake3: String::new(),
            created_at_ms: 0,
            host: "h".into(),
        };
        (staging, archive, manifest, dir)
    }

    #[test]
    fn extraction_in_time_yields_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let (staging, archive, manifest, dir) = staged_archive(tmp.path());
        let deadline = Instant::now() + Duration::from_secs(600);
        let progress: Arc<dyn SnapshotProgress> = Arc::new(super::super::NoProgress);
        let Ok(extracted) = extract_until(staging, archive, &manifest, "t".into(), &dir, deadline, progress)
        else {
            panic!("extraction failed");
        };
        assert!(extracted.path.join("a/b/f199").is_file());
        assert!(!dir.exists(), "extraction stays in staging");
    }

    #[test]
    fn extraction_past_the_deadline_is_abandoned_and_cleans_up_after_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let (staging, archive, manifest, dir) = staged_archive(tmp.path());
        let area = tmp.path().join(".dest.warmcache-staging");
        assert!(area.is_dir());
        let progress: Arc<dyn SnapshotProgress> = Arc::new(super::super::NoProgress);
        let result = extract_until(
            staging,
            archive,
            &manifest,
            "t".into(),
            &dir,
            Instant::now(),
            progress,
        );
        assert!(matches!(result, Err(None)), "the deadline had passed");
        // The abandoned thread removes the staging once it stops.
        let waited = Instant::now();
        while area.exists() && waited.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!area.exists(), "staging left behind");
        assert!(!dir.exists());
    }

    #[test]
    fn colder_means_fewer_files_and_fewer_bytes() {
        let remote = pointer(100, 1000);
        assert!(is_colder(99, 999, &remote));
        assert!(!is_colder(99, 1000, &remote), "as many bytes");
        assert!(!is_colder(100, 10, &remote), "as many files");
        assert!(
            !is_colder(150, 10, &remote),
            "more files, fewer bytes: changed, not cold"
        );
    }

    #[test]
    fn pointers_are_versioned() {
        let p = pointer(1, 2);
        let bytes = serde_json::to_vec(&p).unwrap();
        assert_eq!(parse_pointer(&bytes).unwrap(), p);
        let mut newer = serde_json::to_value(&p).unwrap();
        newer["version"] = 2.into();
        assert!(matches!(
            parse_pointer(newer.to_string().as_bytes()),
            Err(Unreadable::Newer(2))
        ));
        assert!(matches!(parse_pointer(b"{}"), Err(Unreadable::Garbage(_))));
    }

    #[test]
    fn manifests_must_name_an_archive_of_their_own_snapshot() {
        let p = pointer(1, 2);
        let manifest = SnapshotManifest {
            version: SNAPSHOT_MANIFEST_VERSION,
            digest: p.digest.clone(),
            files: 1,
            dirs: 0,
            symlinks: 0,
            bytes: 2,
            archive: format!("snapshots/{}-0123.tar.zst", p.digest),
            archive_format: Format::TarZst,
            archive_bytes: 10,
            archive_blake3: "b".repeat(64),
            created_at_ms: 0,
            host: "h".into(),
        };
        let ok = serde_json::to_vec(&manifest).unwrap();
        assert!(parse_manifest(&ok, &p).is_ok());
        for archive in [
            "other/key.tar.zst",
            "snapshots/../../x.tar.zst",
            "snapshots/x/y.tar.zst",
        ] {
            let mut bad = manifest.clone();
            bad.archive = archive.into();
            let err = parse_manifest(&serde_json::to_vec(&bad).unwrap(), &p).unwrap_err();
            assert!(err.contains("unexpected archive"), "{err}");
        }
        let mut other = p.clone();
        other.digest = "c".repeat(64);
        assert!(parse_manifest(&ok, &other).unwrap_err().contains("not"));
    }
}
