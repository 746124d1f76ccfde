//! Directory snapshots in object storage (docs/DESIGN.md, problem 4): [`snapshot`] uploads what
//! the remote does not hold of a tree as one pack (a standard tar.zst), [`restore`] brings a
//! tree back and swaps it into place atomically.
//!
//! Layout under the URL's key `KEY` (docs/DESIGN.md, "Snapshots"; [`format`](mod@format)):
//!
//! - `KEY/pointer.json`: which snapshot is current ([`Pointer`]). Small, and only ever replaced
//!   by a conditional put against the version read at the start, so two machines snapshotting at
//!   once cannot overwrite each other unnoticed.
//! - `KEY/snapshots/<digest>.json`: the manifest ([`PackedManifest`]) of the snapshot of a tree
//!   whose content digest is `<digest>`: its packs and its segments (the entries, with where each
//!   file's chunks are); created once, never replaced (unless unreadable).
//! - `KEY/packs/<token>.tar.zst`: a pack ([`pack`]). Each upload gets a fresh key, because S3
//!   multipart uploads cannot be made create-only: with a shared key, a second upload could
//!   replace a pack after a manifest recorded its BLAKE3.
//!
//! The digest is [`crate::store::Manifest::id`] of the tree: paths, kinds, executable bits, sizes,
//! content digests and symlink targets, not times. Hashing the tree is read-only.
//!
//! Advisory: every remote failure is an error here; the command line turns it into a warning
//! (see [`SnapshotError::is_local`]). Either way a restore never touches DIR unless it swaps in
//! a complete, verified tree, and a snapshot never moves the pointer to anything incomplete.
//!
//! Modules: `create` makes a snapshot ([`snapshot`]); `restore` brings one back ([`restore()`])
//! through the place-and-swap primitive ([`crate::place`]); `gc` deletes what no pointer and no
//! kept manifest reaches ([`collect`]); [`format`](mod@format) is what the key holds; [`pack`]
//! writes and reads packs; `stat` is the snapshot's local stat cache.

mod build;
mod create;
mod download_pipe;
mod fetch;
pub mod format;
mod gc;
pub mod pack;
mod restore;
mod seeds;
mod stat;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use create::snapshot;
pub use format::{
    ARCHIVE_MANIFEST_VERSION, AnyManifest, ArchiveManifest, ChunkRef, GcState, POINTER_VERSION, PackRef,
    PackedManifest, Pointer, SNAPSHOT_MANIFEST_VERSION, SegmentEntry, SegmentRef,
};
pub use gc::{DEFAULT_GRACE, GcObject, RemoteGcOptions, RemoteGcReport, collect};
pub use restore::restore;

use crate::archive::ArchiveError;
use crate::place::PlaceError;
use crate::remote::{RemoteError, RemoteSettings};
use crate::store::StoreError;

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
    /// Replace the remote snapshot whatever it holds: even when the warmth guard says the local
    /// tree is colder, and with a full pack that shares nothing with earlier snapshots (the way
    /// to replace a damaged pack), even when the tree is unchanged.
    pub force: bool,
    /// Return refusals and conflicts as errors instead of reports.
    pub strict: bool,
    /// Connection, timeouts and transfer sizes.
    pub settings: RemoteSettings,
    /// zstd level (1–22).
    pub level: i32,
    /// The cache root, where the stat cache of each snapshotted directory lives
    /// ([`crate::layout::Layout::snapshot_stat`]); `None` reads every file each time.
    pub cache_root: Option<PathBuf>,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        Self {
            force: false,
            strict: false,
            settings: RemoteSettings::default(),
            level: 3,
            cache_root: None,
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
    /// Keys tried in order when the URL holds no snapshot yet (docs/DESIGN.md, "Fallback
    /// keys"); a remote error at any key ends the search.
    pub fallbacks: Vec<crate::remote::RemoteUrl>,
    /// Free space to keep on DIR's volume while extracting (`--min-free`, `[cache] min_free`);
    /// `None` is the proportional default ([`crate::archive::default_reserve`]).
    pub min_free: Option<u64>,
    /// The cache root whose stored artifacts may supply file contents a format-2 restore would
    /// otherwise download (read only: nothing in it is created or changed). `None`: only DIR's
    /// current content is used.
    pub store_root: Option<PathBuf>,
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

impl SnapshotProgress for crate::remote::NoProgress {}

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
    /// Compressed bytes of the pack uploaded (0 when nothing was).
    pub uploaded_bytes: u64,
    /// The pack uploaded, when one was (a snapshot that carries nothing new writes none).
    pub pack: Option<String>,
    /// Whether the pack is `full` (the whole tree): a first snapshot, or a compaction.
    pub full: bool,
    /// Whether the pack is full because the previous snapshot's packs were too many or mostly
    /// dead (docs/DESIGN.md, "Snapshots").
    pub compacted: bool,
    /// Chunks written into the pack.
    pub new_chunks: u64,
    /// Chunks referenced where an earlier pack holds them.
    pub reused_chunks: u64,
    /// Manifest segments written into the pack.
    pub new_segments: u64,
    /// Manifest segments reused where an earlier pack holds them.
    pub reused_segments: u64,
    /// Files read.
    pub files_read: u64,
    /// Files not read: their stat was the one the last snapshot read, and the previous
    /// snapshot holds their content.
    pub files_trusted: u64,
    /// The fallback key this key's first snapshot was seeded from (its packs copied on the
    /// server), after a restore from it (docs/DESIGN.md, "Fallback keys").
    pub seeded_from: Option<String>,
    /// The pointer before this snapshot (or, on a conflict, the one that won).
    pub remote: Option<Pointer>,
    /// Wall time.
    pub elapsed_ms: u64,
    /// Where the time went.
    pub phases: SnapshotPhases,
}

/// Where a snapshot's time went, in milliseconds (`"phases"` in `snapshot --json`). The archive
/// pass overlaps reading (one thread), compressing (zstd's threads) and uploading (parts in
/// flight), so its busy times add up to more than `archive_ms`; the stage whose busy time is
/// closest to `archive_ms` is the one the others waited for.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SnapshotPhases {
    /// Walking the tree (listing, `lstat`, the tree rule) before anything is read or uploaded.
    pub walk_ms: u64,
    /// Reading and hashing the tree before uploading; only when the remote may already hold
    /// this tree (same counts as the current snapshot or another one), else 0.
    pub hash_ms: u64,
    /// The archive pass, wall time: read, compress and upload, overlapped.
    pub archive_ms: u64,
    /// Busy time of the reading thread in the archive pass: opening, reading and hashing files.
    pub read_ms: u64,
    /// Time the archiving thread waited for file contents from the reading thread.
    pub read_wait_ms: u64,
    /// Time the archiving thread spent framing tar entries and handing them to zstd (which
    /// compresses on its own threads meanwhile).
    pub compress_ms: u64,
    /// Time the archiving thread spent handing compressed bytes to the uploader (blocked while
    /// the parts in flight were at their limit) and completing the upload.
    pub upload_ms: u64,
    /// Small requests: reading the pointer, looking for an existing snapshot of this tree,
    /// writing the manifest and moving the pointer.
    pub remote_ms: u64,
    /// The whole snapshot.
    pub wall_ms: u64,
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
    /// The snapshot URL asked for (the exact key).
    pub url: String,
    /// The key restored from: the exact key or one of the fallbacks; `None` when no key held a
    /// snapshot.
    pub matched: Option<String>,
    /// Whether the key restored from is the exact key (`false` for a fallback, or when none
    /// held a snapshot).
    pub exact: bool,
    /// Content digest of the snapshot (None when there is none).
    pub digest: Option<String>,
    /// Files in the snapshot.
    pub files: u64,
    /// Bytes of file content in the snapshot.
    pub bytes: u64,
    /// Compressed bytes downloaded: the archive (format 1), or the segments and the pack
    /// frames (or whole packs) fetched (format 2).
    pub downloaded_bytes: u64,
    /// Bytes of file content taken from this machine (DIR's current content, the local store)
    /// instead of being downloaded (format 2).
    pub seeded_bytes: u64,
    /// Chunks decoded from downloaded pack frames (format 2).
    pub fetched_chunks: u64,
    /// Wall time.
    pub elapsed_ms: u64,
    /// Where the time went.
    pub phases: RestorePhases,
}

/// Where a restore's time went, in milliseconds (`--json`: `"phases"`). The download and the
/// extraction overlap (docs/DESIGN.md, "Restore"), so `download_ms` and `extract_ms` both cover
/// most of the restore when it is balanced; `extract_ms` is `download_wait_ms + decompress_ms +
/// write_ms`, which says which stage held the pipeline back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RestorePhases {
    /// Reading the pointer and the manifest (and a format-2 snapshot's segments), and hashing
    /// DIR when it exists (format 1).
    pub lookup_ms: u64,
    /// Format 2: hashing DIR and looking through the local store for content the snapshot
    /// holds, then copying it into the new tree.
    pub seed_ms: u64,
    /// The ranged parallel download, from the first request to the last byte handed to the
    /// decompressor (it waits when the extraction falls behind).
    pub download_ms: u64,
    /// Time the extraction waited for downloaded bytes.
    pub download_wait_ms: u64,
    /// Time in the zstd decoder.
    pub decompress_ms: u64,
    /// The rest of the extraction: reading the tar headers, creating directories, and handing
    /// files to the writer threads (waiting when they are behind), up to the last file written.
    pub write_ms: u64,
    /// The extraction's wall time, from the first byte to the last file written.
    pub extract_ms: u64,
    /// Making the new tree durable (one `syncfs`).
    pub sync_ms: u64,
    /// The atomic swap, the directory fsync and removing the old tree.
    pub swap_ms: u64,
    /// The whole restore.
    pub wall_ms: u64,
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
    /// Writing the pack failed locally (compressing, framing).
    #[error("cannot snapshot `{path}`: {source}")]
    Pack { path: PathBuf, source: pack::PackError },
    /// DIR changed between hashing and archiving.
    #[error(
        "`{path}` changed while it was being snapshotted ({detail}); the upload was abandoned and the \
         remote left as it was; run the snapshot again once the directory is quiet"
    )]
    Changed { path: PathBuf, detail: String },
    /// A local file operation of a restore failed (the message names the path).
    #[error("cannot restore into `{path}`: {source}; `{path}` was left untouched")]
    Local { path: PathBuf, source: io::Error },
    /// Putting the restored tree in place failed (the message says whether DIR changed).
    #[error(transparent)]
    Place(#[from] PlaceError),
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
    /// A fallback key failed (docs/DESIGN.md, "Fallback keys"): the search stopped there, and
    /// the message names that key, not the exact one, so that the key to repair is the right one.
    #[error("at the fallback key {key}: {source}")]
    AtFallback { key: String, source: Box<SnapshotError> },
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
    /// Whether the remote's data is damaged or altered (as opposed to unreachable or slow), so
    /// that only replacing the snapshot (`snapshot --force` from a good tree) repairs the key.
    pub fn is_damage(&self) -> bool {
        if let Self::AtFallback { source, .. } = self {
            return source.is_damage();
        }
        matches!(
            self,
            Self::BadObject { .. }
                | Self::Extract { .. }
                | Self::Remote(RemoteError::DigestMismatch { .. } | RemoteError::SizeMismatch { .. })
        )
    }

    /// Whether the snapshot wrote nothing because the remote is read-only (configured, or the
    /// credentials may not write): docs/DESIGN.md, "Read-only writers".
    pub fn is_read_only(&self) -> bool {
        match self {
            Self::AtFallback { source, .. } => source.is_read_only(),
            Self::Remote(e) => e.is_read_only(),
            _ => false,
        }
    }

    /// The fallback key at fault when the error is one of a fallback key (the exact key's
    /// otherwise).
    pub fn fallback_key(&self) -> Option<&str> {
        match self {
            Self::AtFallback { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Whether this is a problem with the local directory (always reported as an error) rather
    /// than with the remote or its data (advisory: a warning unless `--strict`).
    pub fn is_local(&self) -> bool {
        if let Self::AtFallback { source, .. } = self {
            return source.is_local();
        }
        matches!(
            self,
            Self::DirMissing { .. }
                | Self::NotADirectory { .. }
                | Self::ParentMissing { .. }
                | Self::NotWritable { .. }
                | Self::Read { .. }
                | Self::Archive { .. }
                | Self::Pack { .. }
                | Self::Changed { .. }
                | Self::Local { .. }
                | Self::Place(_)
        )
    }
}

type Result<T, E = SnapshotError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colder_means_fewer_files_and_fewer_bytes() {
        let remote = Pointer {
            version: POINTER_VERSION,
            digest: "a".repeat(64),
            files: 100,
            bytes: 1000,
            created_at_ms: 0,
            host: "h".into(),
            nonce: "n".into(),
        };
        assert!(is_colder(99, 999, &remote));
        assert!(!is_colder(99, 1000, &remote), "as many bytes");
        assert!(!is_colder(100, 10, &remote), "as many files");
        assert!(
            !is_colder(150, 10, &remote),
            "more files, fewer bytes: changed, not cold"
        );
    }
}
