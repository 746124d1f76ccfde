//! [`snapshot`]: upload a directory as the current snapshot of a key.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::format::{
    AnyManifest, CHUNK_THRESHOLD, ChunkRef, GC_STATE_VERSION, GcState, PACKS, POINTER_VERSION, PackRef,
    PackedManifest, Pointer, SNAPSHOT_MANIFEST_VERSION, SNAPSHOTS, SegmentEntry, SegmentRef, TreeCheck,
    Unreadable, describe_pointer, ends_segment, gc_state_key, host_name, manifest_key, pack_key,
    parse_manifest, parse_pointer, pointer_key, unique_token,
};
use super::pack::{self, ChunkAt, PackError, PackWriter};
use super::stat::{self, SegmentCache, StatCache, StatEntry};
use super::{
    Phase, Result, SnapshotError, SnapshotOptions, SnapshotPhases, SnapshotProgress, SnapshotReport,
    SnapshotStatus, is_colder,
};
use crate::archive::{self, ArchiveError, FileStat, Known, TreeItem, TreeListing, TreeTotals};
use crate::ids::ArtifactId;
use crate::layout::Layout;
use crate::remote::{CondPut, ObjectVersion, PutOutcome, Remote, RemoteError, RemoteUrl, RemoteWriter};

use crate::store::{EntryKind, ManifestEntry, ManifestHasher, StoreError};

/// Compressed bytes are handed to the uploader in chunks of this size, so the upload path does
/// its per-write bookkeeping once per chunk rather than once per small write of the encoder.
const UPLOAD_CHUNK: usize = 1 << 20;
/// Memory the upload may hold in parts (filling and in flight): with the default 8 MiB parts,
/// one in flight and one filling. Together with the reader's read-ahead, the frames being
/// compressed and the listing this keeps a snapshot under 64 MiB (docs/DESIGN.md, "Snapshots").
/// Measured on a 610 MB `node_modules` tree against a local S3 server, the upload is not what
/// a snapshot waits for (the reading thread is): a second part in flight cost 8 MiB and
/// bought no speed.
const UPLOAD_BUDGET: usize = 16 << 20;
/// Snapshot manifests under the key examined when looking for an earlier snapshot of the same
/// tree (newest first). A key holding more may upload a tree it already has, never a wrong one.
const MANIFESTS_EXAMINED: usize = 16;
/// Keys listed under `snapshots/` at most when looking for them.
const LIST_LIMIT: usize = 1000;

/// Uploads `dir` as the current snapshot at `url`, unless the pointer already names the same
/// tree (nothing is uploaded) or the warmth guard refuses (see [`is_colder`]; `force` skips it).
///
/// One walk first (`lstat` only) checks the tree rule and counts files and bytes, before
/// anything remote changes; it is the only walk: the listing it keeps (paths and `lstat`s) is
/// what the hashing and the reading pass go through. When the remote may already hold this very tree (the current
/// snapshot, or another under the key, has the same counts), the tree is hashed to decide
/// (files the stat cache vouches for are not read). Otherwise the tree is read exactly once: a
/// reading thread cuts files into chunks and hashes them, and only what the current snapshot
/// does not already hold goes into one new pack (docs/DESIGN.md, "Snapshots"), compressed on a
/// few threads and uploaded as it is written, with memory bounded whatever the tree's size. The
/// content digest is computed from the bytes read, so the manifest always describes the packs;
/// a tree that changed during the snapshot is refused ([`SnapshotError::Changed`]) and the
/// upload aborted. The pointer moves only after the pack and its manifest are complete, by a
/// conditional put against the version read at the start; if another writer moved it
/// meanwhile, the result is [`SnapshotStatus::Conflict`] (or [`SnapshotError::Conflict`] when
/// strict) and the pointer is left as they wrote it.
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
    // A read-only machine writes nothing: say so before reading the tree or the remote
    // (docs/DESIGN.md, "Read-only writers"). Credentials found unable to write later stop the
    // snapshot at its first write, in the client.
    remote.check_writable("snapshot", &url.to_string())?;
    // Read first: the version read here is what the final conditional put is checked against,
    // so anything another machine publishes while we hash and upload is detected.
    let (before, before_version) = timed(&mut phases.remote_ms, || read_pointer(&remote, url))?;
    progress.phase(Phase::Hashing, None);
    // The one walk of the tree: what follows reads the files it listed (docs/DESIGN.md,
    // "Snapshots").
    let listing = timed(&mut phases.walk_ms, || archive::list_tree(dir)).map_err(|e| local(dir, e))?;
    let totals = listing.totals;
    let mut report = SnapshotReport {
        status: SnapshotStatus::Uploaded,
        url: url.to_string(),
        digest: String::new(),
        files: totals.files,
        bytes: totals.bytes,
        uploaded_bytes: 0,
        pack: None,
        full: false,
        compacted: false,
        new_chunks: 0,
        reused_chunks: 0,
        new_segments: 0,
        reused_segments: 0,
        files_read: 0,
        files_trusted: 0,
        seeded_from: None,
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
            timed(&mut phases.hash_ms, || archive::digest_tree(dir, &listing)).map_err(|e| local(dir, e))?;
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
    // What the last snapshot of this directory to this URL read, so unchanged files are not
    // read again (docs/DESIGN.md, "Snapshots").
    let stat_path = options.cache_root.as_ref().map(|root| {
        let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        Layout::new(root).snapshot_stat(&canonical, &url.to_string())
    });
    let stats = Arc::new(stat_path.as_deref().map(StatCache::load).unwrap_or_default());
    // A key without a snapshot whose DIR was restored from a fallback key starts from that
    // snapshot, copied into this key on the server (docs/DESIGN.md, "Fallback keys").
    let seeded = match (&before, stat_path.as_deref(), options.force) {
        (None, Some(stat_path), false) => timed(&mut phases.remote_ms, || {
            seed_from_fallback(url, &remote, stat_path)
        })?,
        _ => None,
    };
    report.seeded_from = seeded.as_ref().map(|(from, _)| from.to_string());
    let start = before.clone().or(seeded.map(|(_, pointer)| pointer));
    let maybe_known = timed(&mut phases.remote_ms, || {
        may_be_known(url, &remote, &totals, start.as_ref())
    })?;
    let known = if maybe_known {
        let vouched = |rel: &str, stat: &FileStat| stats.digest(rel, stat);
        let digest = timed(&mut phases.hash_ms, || {
            archive::digest_tree_with(dir, &listing, &vouched)
        })
        .map_err(|e| local(dir, e))?;
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
            && !options.force
            && timed(&mut phases.remote_ms, || {
                remote.head(&manifest_key(url, &current.digest))
            })?
            .is_some()
        {
            return finish(report, phases, SnapshotStatus::Unchanged);
        }
    }
    // `--force` replaces whatever the remote holds (a damaged pack, say) with a full pack that
    // shares nothing with earlier snapshots.
    let existing = match &known {
        Some(_) if options.force => None,
        Some(digest) => timed(&mut phases.remote_ms, || {
            existing_manifest(url, &remote, digest.as_str())
        })?,
        None => None,
    };
    let published = match existing {
        Some(m) => m,
        None => {
            let segments = stat_path.as_deref().map(SegmentCache::load).unwrap_or_default();
            let base = match options.force {
                true => None,
                false => timed(&mut phases.remote_ms, || {
                    load_base(url, &remote, start.as_ref(), &segments)
                })?,
            };
            drop(segments);
            let job = Upload {
                dir,
                url,
                remote: &remote,
                totals,
                known: known.as_ref(),
                options,
                progress: &*progress,
                stats,
                stat_path: stat_path.as_deref(),
            };
            job.run(base, listing, &mut report, &mut phases)?
        }
    };
    report.digest = published.digest.clone();
    let status = timed(&mut phases.remote_ms, || {
        move_pointer(
            url,
            &remote,
            &published,
            before_version.as_ref(),
            options,
            &mut report,
        )
    })?;
    finish(report, phases, status)
}

/// When DIR was last restored from a fallback key (the note [`stat::Seed`] beside its stat
/// cache for this key), copies that snapshot into this key, which holds none: its packs (on
/// the server, `CopyObject`: no byte passes through this machine) and its manifest. Returns the
/// fallback key and a pointer to the copy, for the snapshot to build on as on its own
/// previous one: files the stat cache vouches for are not read, and only what changed is
/// uploaded. The copy makes this key self-contained: the remote gc of the fallback key, which
/// knows nothing of this one, can never take away what it references. `None` (a full upload)
/// when there is no note, the fallback is in another bucket, or its snapshot is gone or of
/// the old format.
fn seed_from_fallback(
    url: &RemoteUrl,
    remote: &Remote,
    stat_path: &Path,
) -> Result<Option<(RemoteUrl, Pointer)>> {
    let Some(seed) = stat::Seed::load(stat_path) else {
        return Ok(None);
    };
    let from = match RemoteUrl::parse(&seed.url) {
        Ok(from) if from.bucket() == url.bucket() && from != *url => from,
        _ => {
            tracing::info!(
                "not seeding {url} from {}: server-side copies stay within one bucket",
                seed.url
            );
            return Ok(None);
        }
    };
    let key = manifest_key(&from, &seed.digest);
    let Some(bytes) = remote.get_bytes(&key)? else {
        tracing::info!("not seeding {url}: {} is gone", remote.describe(&key));
        return Ok(None);
    };
    let manifest = match parse_manifest(&bytes, &seed.digest) {
        Ok(AnyManifest::Packed(m)) => m,
        _ => return Ok(None),
    };
    for pack in &manifest.packs {
        let to = pack_key(url, &pack.token);
        if remote.head(&to)?.is_some() {
            continue;
        }
        match remote.copy(&pack_key(&from, &pack.token), &to) {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!("not seeding {url}: pack {} of {from} is gone", pack.token);
                return Ok(None);
            }
            // An outage or a read-only remote stops the snapshot as it would any other write.
            Err(e) if e.is_outage() || e.is_read_only() => return Err(e.into()),
            // A store that cannot copy this object (S3 copies at most 5 GiB in one request, for
            // one): the snapshot uploads the whole tree instead.
            Err(e) => {
                tracing::warn!("not seeding {url} from {from}: {e}; uploading the whole tree");
                return Ok(None);
            }
        }
    }
    // Create-only: a manifest already there describes the same tree.
    remote.put_if(&manifest_key(url, &seed.digest), bytes, None)?;
    tracing::info!(
        "{url}: seeded from {from} ({} packs copied on the server)",
        manifest.packs.len()
    );
    let pointer = Pointer {
        version: POINTER_VERSION,
        digest: manifest.digest.clone(),
        files: manifest.files,
        bytes: manifest.bytes,
        created_at_ms: manifest.created_at_ms,
        host: manifest.host.clone(),
        nonce: String::new(),
    };
    Ok(Some((from, pointer)))
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
/// other digests, so for them the tree is read only once, while it is packed.
fn may_be_known(
    url: &RemoteUrl,
    remote: &Remote,
    totals: &TreeTotals,
    current: Option<&Pointer>,
) -> Result<bool> {
    /// The counts every manifest version starts with.
    #[derive(serde::Deserialize)]
    struct Counts {
        files: u64,
        bytes: u64,
        dirs: u64,
        symlinks: u64,
    }
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
        if let Ok(m) = serde_json::from_slice::<Counts>(&bytes)
            && (m.files, m.bytes, m.dirs, m.symlinks)
                == (totals.files, totals.bytes, totals.dirs, totals.symlinks)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What the pointer is moved to: a published manifest's digest and counts.
struct Published {
    digest: String,
    files: u64,
    bytes: u64,
}

impl Published {
    fn of(manifest: &AnyManifest) -> Self {
        match manifest {
            AnyManifest::Archive(m) => Self {
                digest: m.digest.clone(),
                files: m.files,
                bytes: m.bytes,
            },
            AnyManifest::Packed(m) => Self {
                digest: m.digest.clone(),
                files: m.files,
                bytes: m.bytes,
            },
        }
    }
}

/// The manifest of this tree's snapshot when the remote already has it (A→B→A, or another
/// machine), in either format, with every object it names present at its size, and neither it
/// nor any of them condemned by the remote gc. A condemned object past its grace may be
/// deleted at any moment by a gc run that read the pointer before this snapshot moves it, so
/// such a manifest is not published again as it is: the snapshot uploads what the tree needs
/// and writes the manifest afresh over it, which the gc then treats as a new object
/// (docs/DESIGN.md, "Remote gc").
fn existing_manifest(url: &RemoteUrl, remote: &Remote, digest: &str) -> Result<Option<Published>> {
    let key = manifest_key(url, digest);
    let Some(bytes) = remote.get_bytes(&key)? else {
        return Ok(None);
    };
    let Ok(manifest) = parse_manifest(&bytes, digest) else {
        return Ok(None);
    };
    let objects: Vec<(String, u64)> = match &manifest {
        AnyManifest::Archive(m) => vec![(m.archive.clone(), m.archive_bytes)],
        AnyManifest::Packed(m) => m
            .packs
            .iter()
            .map(|p| (format!("{PACKS}/{}.tar.zst", p.token), p.bytes))
            .collect(),
    };
    // Read before the objects are looked at: whatever a gc condemns after this read is
    // deleted more than a grace later, when the pointer already names this manifest.
    let condemned = match read_condemned(url, remote)? {
        Ok(condemned) => condemned,
        Err(reason) => {
            tracing::debug!("not reusing {}: {reason}", remote.describe(&key));
            return Ok(None);
        }
    };
    let relative = format!("{SNAPSHOTS}/{digest}.json");
    if let Some(object) = std::iter::once(&relative)
        .chain(objects.iter().map(|(k, _)| k))
        .find(|k| condemned.contains(k.as_str()))
    {
        tracing::info!(
            "{}: the remote gc condemned {object}; writing this snapshot afresh",
            remote.describe(&key)
        );
        return Ok(None);
    }
    for (relative, size) in objects {
        if remote
            .head(&url.join(&relative))?
            .is_none_or(|meta| meta.size != size)
        {
            return Ok(None);
        }
    }
    Ok(Some(Published::of(&manifest)))
}

/// The keys (relative to the snapshot key) the remote gc condemned (`KEY/gc.json`); `Err` with
/// the reason when `gc.json` cannot be read, in which case nothing may be assumed safe to reuse.
fn read_condemned(url: &RemoteUrl, remote: &Remote) -> Result<std::result::Result<HashSet<String>, String>> {
    Ok(match remote.get_bytes(&gc_state_key(url))? {
        None => Ok(HashSet::new()),
        Some(bytes) => match serde_json::from_slice::<GcState>(&bytes) {
            Ok(state) if state.version == GC_STATE_VERSION => Ok(state.condemned.into_keys().collect()),
            Ok(state) => Err(format!("gc.json has format version {}", state.version)),
            Err(e) => Err(format!("unreadable gc.json: {e}")),
        },
    })
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
    manifest: &Published,
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

/// Writes the manifest of a fresh snapshot: created, or replacing an unreadable one (guarded by
/// its version). If another machine published this tree meanwhile, theirs is as good, and our
/// pack must not linger unreferenced (best effort: an orphan costs storage until the remote gc
/// collects it, not correctness).
fn publish(
    url: &RemoteUrl,
    remote: &Remote,
    manifest: &PackedManifest,
    our_pack: Option<&str>,
) -> Result<Published> {
    let manifest_key = manifest_key(url, &manifest.digest);
    let bytes = Bytes::from(serde_json::to_vec_pretty(manifest).unwrap_or_default());
    let mut expect = remote.get_versioned(&manifest_key)?.map(|(_, version)| version);
    let mut outcome = remote.put_if(&manifest_key, bytes.clone(), expect.as_ref())?;
    if matches!(outcome, CondPut::Conflict) && expect.is_some() {
        // The manifest replaced (an unreadable or condemned one) may have been deleted by the
        // remote gc meanwhile: then create it.
        expect = remote.get_versioned(&manifest_key)?.map(|(_, version)| version);
        if expect.is_none() {
            outcome = remote.put_if(&manifest_key, bytes, None)?;
        }
    }
    match outcome {
        CondPut::Done(_) => Ok(Published::of(&AnyManifest::Packed(manifest.clone()))),
        CondPut::Conflict => {
            if let Some(token) = our_pack
                && let Err(e) = remote.delete(&pack_key(url, token))
            {
                tracing::warn!("could not remove the unused pack: {e}");
            }
            let theirs = remote.get_bytes(&manifest_key)?.unwrap_or_default();
            parse_manifest(&theirs, &manifest.digest)
                .map(|m| Published::of(&m))
                .map_err(|reason| SnapshotError::BadObject {
                    target: remote.describe(&manifest_key),
                    reason,
                })
        }
    }
}

/// The snapshot's previous state (the pointer's manifest, format 2), as far as this snapshot
/// may build on it: which chunks, whole files and segments are where, leaving out what is in a
/// pack the remote gc condemned.
struct Base {
    manifest: PackedManifest,
    /// Content (a chunk, or a file of one chunk) by its BLAKE3: where it is.
    chunks: HashMap<[u8; 32], ChunkRef>,
    /// Files of several chunks by their digest: their chunks.
    files: HashMap<[u8; 32], Vec<ChunkRef>>,
    /// BLAKE3 of the paths of files of several chunks: a file there that changed in part gets
    /// its new chunks as `.warmcache-chunks/` entries rather than whole.
    large_paths: HashSet<[u8; 32]>,
    /// Directories and symlinks (kind, path, target, hashed): a delta pack carries only new ones.
    links: HashSet<[u8; 32]>,
    /// Segments by the BLAKE3 of their lines, with their compressed payload (kept for the next
    /// snapshot's segment cache, so a reused segment is not compressed again).
    segments: HashMap<String, (SegmentRef, Bytes)>,
    /// Compressed bytes of the frames and segments the snapshot uses, and of its packs.
    live: u64,
    total: u64,
    packs: usize,
}

fn b3(hex: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(hex).ok().map(|h| *h.as_bytes())
}

fn link_key(kind: EntryKind, path: &str, target: Option<&str>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&[kind as u8]);
    h.update(path.as_bytes());
    h.update(&[0]);
    h.update(target.unwrap_or_default().as_bytes());
    *h.finalize().as_bytes()
}

impl Base {
    /// Whether content with this digest (hex) is held, whole, by the base.
    fn places(&self, digest: &str) -> bool {
        b3(digest).is_some_and(|d| self.chunks.contains_key(&d) || self.files.contains_key(&d))
    }

    /// The chunks of a file with this digest, as the base holds them.
    fn chunks_of(&self, digest: &str) -> Option<Vec<ChunkRef>> {
        let d = b3(digest)?;
        if let Some(chunks) = self.files.get(&d) {
            return Some(chunks.clone());
        }
        let mut chunk = self.chunks.get(&d)?.clone();
        chunk.blake3 = None;
        Some(vec![chunk])
    }

    /// The compaction rule (docs/DESIGN.md, "Snapshots"): a snapshot built on this one would
    /// reference more than [`MAX_PACKS`] packs, or less than half of its packs' bytes is live.
    fn needs_compaction(&self) -> bool {
        self.packs + 1 > MAX_PACKS || self.live.saturating_mul(2) < self.total
    }
}

/// The base of a delta snapshot: the pointer's manifest when it is a format-2 one whose packs
/// are all there, with its segments read (ranged GETs, in parallel) and checked against its
/// digest. Anything unusable (an old format, a missing pack, a segment that does not check, an
/// unreadable gc state) means no base: the snapshot writes a full pack. Remote failures are
/// errors (advisory), as everywhere.
fn load_base(
    url: &RemoteUrl,
    remote: &Remote,
    pointer: Option<&Pointer>,
    local: &SegmentCache,
) -> Result<Option<Arc<Base>>> {
    let Some(pointer) = pointer else {
        return Ok(None);
    };
    let key = manifest_key(url, &pointer.digest);
    let Some(bytes) = remote.get_bytes(&key)? else {
        return Ok(None);
    };
    let unusable = |reason: String| {
        tracing::warn!(
            "{}: not building on the current snapshot ({reason}); uploading the whole tree",
            remote.describe(&key)
        );
        Ok(None)
    };
    let manifest = match parse_manifest(&bytes, &pointer.digest) {
        Ok(AnyManifest::Packed(m)) => m,
        Ok(AnyManifest::Archive(_)) => return Ok(None),
        Err(reason) => return unusable(reason),
    };
    let condemned: HashSet<String> = match read_condemned(url, remote)? {
        Ok(keys) => keys
            .iter()
            .filter_map(|k| k.strip_prefix("packs/")?.strip_suffix(".tar.zst"))
            .map(str::to_owned)
            .collect(),
        Err(reason) => return unusable(reason),
    };
    for pack in &manifest.packs {
        let key = pack_key(url, &pack.token);
        if remote.head(&key)?.is_none_or(|m| m.size != pack.bytes) {
            return unusable(format!("pack {} is missing or not its recorded size", pack.token));
        }
    }
    // Segments this machine wrote or read last time are on disk (checked against their BLAKE3
    // like any other); only the others are fetched.
    let fetched = crate::parallel::map(&manifest.segments, |segment| {
        if let Some(payload) = local.get(&segment.blake3) {
            return Ok(Some(Bytes::copy_from_slice(payload)));
        }
        remote.get_range(&pack_key(url, &segment.pack), segment.range[0]..segment.range[1])
    })?;
    let mut base = Base {
        chunks: HashMap::new(),
        files: HashMap::new(),
        large_paths: HashSet::new(),
        links: HashSet::new(),
        segments: HashMap::new(),
        live: 0,
        total: 0,
        packs: 0,
        manifest: manifest.clone(),
    };
    let mut check = match TreeCheck::new(&manifest) {
        Ok(check) => check,
        Err(reason) => return unusable(reason),
    };
    let mut frames: HashSet<(String, u64)> = HashSet::new();
    let usable = |token: &str| !condemned.contains(token);
    for (segment, payload) in manifest.segments.iter().zip(fetched) {
        let Some(payload) = payload else {
            return unusable(format!("pack {} is gone", segment.pack));
        };
        let lines = match pack::decode_frame(&payload, pack::SEGMENT_MAX_BYTES) {
            Ok(lines) => lines,
            Err(e) => return unusable(e.to_string()),
        };
        if blake3::hash(&lines).to_hex().as_str() != segment.blake3 {
            return unusable("a manifest segment does not match its BLAKE3".to_owned());
        }
        let entries = match pack::parse_segment(&lines) {
            Ok(entries) if entries.len() as u64 == segment.entries => entries,
            Ok(_) => return unusable("a manifest segment does not hold its count of entries".to_owned()),
            Err(e) => return unusable(e.to_string()),
        };
        if usable(&segment.pack) {
            base.live += segment.range[1] - segment.range[0];
            base.segments
                .insert(segment.blake3.clone(), (segment.clone(), payload.clone()));
        }
        for entry in entries {
            if let Err(reason) = check.push(&entry) {
                return unusable(reason);
            }
            match entry.kind {
                EntryKind::Dir | EntryKind::Symlink => {
                    base.links
                        .insert(link_key(entry.kind, &entry.path, entry.target.as_deref()));
                }
                EntryKind::File => {
                    for chunk in &entry.chunks {
                        if frames.insert((chunk.pack.clone(), chunk.frame[0])) && usable(&chunk.pack) {
                            base.live += chunk.frame[1] - chunk.frame[0];
                        }
                    }
                    if entry.chunks.iter().any(|c| !usable(&c.pack)) {
                        continue;
                    }
                    let Some(digest) = entry.digest.as_deref().and_then(b3) else {
                        continue;
                    };
                    if entry.chunks.len() > 1 {
                        base.large_paths
                            .insert(*blake3::hash(entry.path.as_bytes()).as_bytes());
                        for chunk in &entry.chunks {
                            if let Some(d) = chunk.blake3.as_deref().and_then(b3) {
                                base.chunks.entry(d).or_insert_with(|| chunk.clone());
                            }
                        }
                        base.files.entry(digest).or_insert(entry.chunks);
                    } else if let Some(chunk) = entry.chunks.into_iter().next() {
                        base.chunks.entry(digest).or_insert(chunk);
                    }
                }
            }
        }
    }
    if let Err(reason) = check.finish() {
        return unusable(reason);
    }
    for pack in manifest.packs.iter().filter(|p| usable(&p.token)) {
        base.total += pack.bytes;
        base.packs += 1;
    }
    if base.packs == 0 {
        // Everything it holds is condemned: nothing to build on.
        return Ok(None);
    }
    Ok(Some(Arc::new(base)))
}

/// Cuts a file into the format's chunks (FastCDC 2020), for the reading thread.
fn cut(source: io::Take<std::fs::File>) -> Box<dyn Iterator<Item = io::Result<Vec<u8>>> + Send> {
    Box::new(pack::chunks(source).map(|c| {
        c.map(|c| c.data).map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => e,
            other => io::Error::other(other.to_string()),
        })
    }))
}

/// Everything one upload needs.
struct Upload<'a> {
    dir: &'a Path,
    url: &'a RemoteUrl,
    remote: &'a Remote,
    totals: TreeTotals,
    known: Option<&'a ArtifactId>,
    options: &'a SnapshotOptions,
    progress: &'a dyn SnapshotProgress,
    stats: Arc<StatCache>,
    stat_path: Option<&'a Path>,
}

/// Why the pass over the tree stopped.
enum PassError {
    Read(ArchiveError),
    Pack(PackError),
}

impl From<PackError> for PassError {
    fn from(e: PackError) -> Self {
        Self::Pack(e)
    }
}

impl Upload<'_> {
    /// Reads the tree once into a new pack of what `base` does not hold (or a full pack, when
    /// there is no base or it needs compacting), then publishes the manifest.
    fn run(
        &self,
        base: Option<Arc<Base>>,
        listing: TreeListing,
        report: &mut SnapshotReport,
        phases: &mut SnapshotPhases,
    ) -> Result<Published> {
        let (dir, url, remote) = (self.dir, self.url, self.remote);
        let compact = base.as_ref().is_some_and(|b| b.needs_compaction());
        let base = base.filter(|_| !compact);
        report.full = base.is_none();
        report.compacted = compact;
        let token = unique_token();
        let key = pack_key(url, &token);
        self.progress.phase(Phase::Uploading, None);
        let t = Instant::now();
        let writer = remote.writer(&key)?;
        phases.remote_ms += t.elapsed().as_millis() as u64;
        let started = Instant::now();
        let Some(mut writer) = writer else {
            return Err(SnapshotError::BadObject {
                target: remote.describe(&key),
                reason: "an object already has this freshly made key; run the snapshot again".to_owned(),
            });
        };
        let part_size = self.options.settings.part_size.max(1);
        writer.limit_in_flight((UPLOAD_BUDGET / part_size).saturating_sub(1));
        let mut sink = UploadSink {
            writer,
            pending: BytesMut::with_capacity(UPLOAD_CHUNK),
            hasher: blake3::Hasher::new(),
            bytes: 0,
            error: None,
            busy: Duration::ZERO,
            progress: self.progress,
        };
        // A file is not read when the stat cache vouches for its digest and the base holds
        // that content: it is referenced where it is.
        let skip: Box<Known> = match &base {
            Some(b) => {
                let (b, stats) = (Arc::clone(b), Arc::clone(&self.stats));
                Box::new(move |rel: &str, stat: &FileStat| {
                    let digest = stats.digest(rel, stat)?;
                    b.places(&digest).then_some(digest)
                })
            }
            None => Box::new(|_: &str, _: &FileStat| None),
        };
        let recorded_at = stat::now_ns();
        let mut tree = archive::read_chunked(dir, listing, CHUNK_THRESHOLD, skip, cut);
        let mut pass = Pass::new(
            PackWriter::new(&mut sink, &token, self.options.level),
            base.as_deref(),
            self.totals,
            stat::LocalWriter::new(self.stat_path),
        )
        .map_err(|e| local(dir, e))?;
        let passed = (|| -> std::result::Result<(), PassError> {
            for item in tree.by_ref() {
                pass.item(item.map_err(PassError::Read)?)?;
            }
            pass.end()?;
            Ok(())
        })();
        let read_wait = tree.waited;
        let read = tree.finish();
        let outcome = passed.and_then(|()| pass.seal());
        let sealed = match outcome {
            Ok(sealed) => sealed,
            Err(e) => {
                drop(pass);
                if let Some(err) = sink.error.take() {
                    // The pack failed because the upload did: that is the error to report.
                    return Err(err.into());
                }
                return Err(match e {
                    PassError::Read(e) => local(dir, e),
                    PassError::Pack(source) => SnapshotError::Pack {
                        path: dir.to_path_buf(),
                        source,
                    },
                });
            }
        };
        let Sealed {
            digest,
            counts,
            segments,
            finished,
            local,
            stats: pass_stats,
        } = sealed;
        report.new_chunks = pass_stats.new_chunks;
        report.reused_chunks = pass_stats.reused_chunks;
        report.new_segments = pass_stats.new_segments;
        report.reused_segments = pass_stats.reused_segments;
        report.files_read = pass_stats.files_read;
        report.files_trusted = pass_stats.files_trusted;
        let Some(digest) = digest else {
            let t = self.totals;
            return Err(changed(
                dir,
                format!(
                    "walked {} files, {} bytes, {} directories, {} symlinks; read {} files, {} bytes, \
                     {} directories, {} symlinks",
                    t.files,
                    t.bytes,
                    t.dirs,
                    t.symlinks,
                    counts.files,
                    counts.bytes,
                    counts.dirs,
                    counts.symlinks
                ),
            ));
        };
        if let Some(expected) = self.known
            && *expected != digest
        {
            return Err(changed(
                dir,
                format!("hashed as {expected} before the upload, read as {digest}"),
            ));
        }
        let digest = digest.to_string();
        // Another machine may have published this very tree meanwhile (or an earlier snapshot
        // of it was not among those examined): then theirs is as good, and ours is abandoned
        // before it ever becomes visible.
        let t = Instant::now();
        let existing = match self.options.force {
            true => None,
            false => existing_manifest(url, remote, &digest)?,
        };
        phases.remote_ms += t.elapsed().as_millis() as u64;
        if let Some(m) = existing {
            drop(sink);
            return Ok(m);
        }
        let sink_busy = sink.busy;
        let pack_ref = match &finished {
            Some(_) => {
                let t = Instant::now();
                let (bytes, blake3) = sink.finish()?;
                phases.upload_ms = (sink_busy + t.elapsed()).as_millis() as u64;
                report.uploaded_bytes = bytes;
                report.pack = Some(remote.describe(&key));
                finished.map(|mut p| {
                    p.bytes = bytes;
                    p.blake3 = blake3;
                    p
                })
            }
            // Nothing new to carry: no pack at all (dropping the writer abandons it).
            None => {
                drop(sink);
                None
            }
        };
        let elapsed = started.elapsed();
        phases.archive_ms = elapsed.as_millis() as u64;
        phases.read_ms = read.as_millis() as u64;
        phases.read_wait_ms = read_wait.as_millis() as u64;
        phases.compress_ms = elapsed.saturating_sub(read_wait + sink_busy).as_millis() as u64;
        // Every pack a segment or a chunk is in, ours first when it is full.
        let mut packs: Vec<PackRef> = pack_ref.iter().cloned().collect();
        if let Some(b) = &base {
            packs.extend(
                b.manifest
                    .packs
                    .iter()
                    .filter(|p| counts.packs.contains(&p.token))
                    .cloned(),
            );
        }
        let manifest = PackedManifest {
            version: SNAPSHOT_MANIFEST_VERSION,
            digest,
            files: counts.files,
            dirs: counts.dirs,
            symlinks: counts.symlinks,
            bytes: counts.bytes,
            packs,
            segments,
            created_at_ms: crate::clock::now_ms(),
            host: host_name(),
        };
        let t = Instant::now();
        let published = publish(
            url,
            remote,
            &manifest,
            pack_ref.as_ref().map(|p| p.token.as_str()),
        );
        phases.remote_ms += t.elapsed().as_millis() as u64;
        let published = published?;
        local.finish(recorded_at);
        Ok(published)
    }
}

/// What the pass counted.
#[derive(Debug, Default)]
struct PassStats {
    new_chunks: u64,
    reused_chunks: u64,
    new_segments: u64,
    reused_segments: u64,
    files_read: u64,
    files_trusted: u64,
}

/// What the tree held, as read.
#[derive(Debug, Default)]
struct Counts {
    files: u64,
    bytes: u64,
    dirs: u64,
    symlinks: u64,
    /// Tokens of the base's packs this snapshot uses.
    packs: HashSet<String>,
}

/// Where a file's chunk is: in the base (or any earlier pack), or in this pack once its frame
/// is written.
enum Loc {
    Ref(ChunkRef),
    Here(ChunkAt, Option<String>),
}

/// An entry waiting for the frames of its chunks to be written.
struct Pending {
    entry: SegmentEntry,
    locs: Vec<Loc>,
}

/// A segment of the new manifest: reused where it is, or written into this pack (its
/// compressed payload, the BLAKE3 of its lines, its entries).
enum SegOut {
    Reused(SegmentRef),
    New(Vec<u8>, String, u64),
}

/// How a file being read goes into a delta pack.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not decided before its first chunk.
    Undecided,
    /// Whole, at its path (a full pack, or a new file).
    Whole,
    /// Only its new chunks, as `.warmcache-chunks/<b3>` entries (a large file changed in part).
    Pieces,
}

struct Current {
    rel: String,
    size: u64,
    mtime: u64,
    stat: FileStat,
    mode: Mode,
    locs: Vec<Loc>,
}

/// What the pass leaves once the tree is read: the digest (`None` when the tree did not match
/// the walk's counts), the segments, the finished pack (`None` when nothing new was carried).
struct Sealed {
    digest: Option<ArtifactId>,
    counts: Counts,
    segments: Vec<SegmentRef>,
    finished: Option<PackRef>,
    local: stat::LocalWriter,
    stats: PassStats,
}

/// The pass over the tree: every entry into the tree digest and the manifest's segments, and
/// what the base does not hold into the pack.
struct Pass<'b, W: Write> {
    pack: Option<PackWriter<W>>,
    base: Option<&'b Base>,
    totals: TreeTotals,
    hasher: ManifestHasher,
    counts: Counts,
    /// Content written into this pack (a delta carries each chunk once).
    here: HashMap<[u8; 32], ChunkAt>,
    current: Option<Current>,
    segment: Vec<Pending>,
    closed: VecDeque<Vec<Pending>>,
    out: Vec<SegOut>,
    /// What this snapshot read, for the next one (the stat and segment caches).
    local: stat::LocalWriter,
    stats: PassStats,
}

impl<'b, W: Write> Pass<'b, W> {
    fn new(
        pack: PackWriter<W>,
        base: Option<&'b Base>,
        totals: TreeTotals,
        local: stat::LocalWriter,
    ) -> Result<Self, ArchiveError> {
        let hasher =
            ManifestHasher::new(totals.files, totals.bytes).map_err(|source| ArchiveError::Create {
                path: PathBuf::new(),
                source,
            })?;
        Ok(Self {
            pack: Some(pack),
            base,
            totals,
            hasher,
            counts: Counts::default(),
            here: HashMap::new(),
            current: None,
            segment: Vec::new(),
            closed: VecDeque::new(),
            out: Vec::new(),
            local,
            stats: PassStats::default(),
        })
    }

    fn pack(&mut self) -> Result<&mut PackWriter<W>, PackError> {
        self.pack
            .as_mut()
            .ok_or(PackError::Misuse("the pack is already finished"))
    }

    fn full(&self) -> bool {
        self.base.is_none()
    }

    fn item(&mut self, item: TreeItem) -> Result<(), PassError> {
        match item {
            TreeItem::Dir { rel, mtime } => {
                if self.is_new_link(EntryKind::Dir, &rel, None) {
                    self.pack()?.dir(&rel, mtime)?;
                }
                self.counts.dirs += 1;
                self.push(plain(rel, EntryKind::Dir, None), Vec::new())?;
            }
            TreeItem::Symlink { rel, target, mtime } => {
                if self.is_new_link(EntryKind::Symlink, &rel, Some(&target)) {
                    self.pack()?.symlink(&rel, &target, mtime)?;
                }
                self.counts.symlinks += 1;
                self.push(plain(rel, EntryKind::Symlink, Some(target)), Vec::new())?;
            }
            TreeItem::File {
                rel,
                size,
                mtime: _,
                stat,
                known: Some(digest),
            } => {
                let chunks = self
                    .base
                    .and_then(|b| b.chunks_of(&digest))
                    .ok_or(PackError::Misuse(
                        "a file taken from the base that the base does not hold",
                    ))?;
                self.stats.files_trusted += 1;
                self.stats.reused_chunks += chunks.len() as u64;
                if let Some(d) = b3(&digest) {
                    self.local.push(&rel, &StatEntry { stat, digest: d });
                }
                let entry = SegmentEntry::new(ManifestEntry::file(rel, stat.exec, size, digest));
                self.push(entry, chunks.into_iter().map(Loc::Ref).collect())?;
            }
            TreeItem::File {
                rel,
                size,
                mtime,
                stat,
                known: None,
            } => {
                if self.full() {
                    // A full pack's tar is exactly the tree: every file at its path.
                    self.pack()?.file(&rel, stat.exec, size, mtime)?;
                }
                let mode = if self.full() { Mode::Whole } else { Mode::Undecided };
                self.current = Some(Current {
                    rel,
                    size,
                    mtime,
                    stat,
                    mode,
                    locs: Vec::new(),
                });
            }
            TreeItem::Chunk { data, blake3 } => self.chunk(&data, blake3)?,
            TreeItem::FileEnd { digest } => {
                let current = self
                    .current
                    .take()
                    .ok_or(PackError::Misuse("a file ended that never started"))?;
                self.stats.files_read += 1;
                self.local.push(
                    &current.rel,
                    &StatEntry {
                        stat: current.stat,
                        digest: *digest.as_bytes(),
                    },
                );
                let entry = SegmentEntry::new(ManifestEntry::file(
                    current.rel,
                    current.stat.exec,
                    current.size,
                    digest.to_hex().to_string(),
                ));
                self.push(entry, current.locs)?;
            }
        }
        Ok(())
    }

    /// Whether a directory or symlink goes into the pack: always into a full pack, into a delta
    /// only when the base does not have it.
    fn is_new_link(&self, kind: EntryKind, rel: &str, target: Option<&str>) -> bool {
        self.base
            .is_none_or(|b| !b.links.contains(&link_key(kind, rel, target)))
    }

    fn chunk(&mut self, data: &[u8], digest: blake3::Hash) -> Result<(), PassError> {
        let mut current = self
            .current
            .take()
            .ok_or(PackError::Misuse("content outside a file"))?;
        let large = current.size >= CHUNK_THRESHOLD;
        // A chunk of a file of several chunks carries its own digest; a file of one chunk is
        // checked against the file's.
        let tag = large.then(|| digest.to_hex().to_string());
        let key = *digest.as_bytes();
        if current.mode == Mode::Undecided {
            let base = self.base.ok_or(PackError::Misuse("a delta without a base"))?;
            current.mode = if !large {
                Mode::Whole
            } else if base
                .large_paths
                .contains(blake3::hash(current.rel.as_bytes()).as_bytes())
                || base.chunks.contains_key(&key)
            {
                Mode::Pieces
            } else {
                Mode::Whole
            };
            // A small file whose content is held somewhere is referenced, not written.
            if !large {
                if let Some(r) = base.chunks.get(&key) {
                    let mut r = r.clone();
                    r.blake3 = None;
                    self.stats.reused_chunks += 1;
                    current.locs.push(Loc::Ref(r));
                    self.current = Some(current);
                    return Ok(());
                }
                if let Some(at) = self.here.get(&key) {
                    current.locs.push(Loc::Here(*at, None));
                    self.current = Some(current);
                    return Ok(());
                }
            }
            if current.mode == Mode::Whole {
                self.pack()?
                    .file(&current.rel, current.stat.exec, current.size, current.mtime)?;
            }
        }
        let loc = match current.mode {
            Mode::Pieces => {
                if let Some(r) = self.base.and_then(|b| b.chunks.get(&key)) {
                    let mut r = r.clone();
                    r.blake3 = tag;
                    self.stats.reused_chunks += 1;
                    Loc::Ref(r)
                } else if let Some(at) = self.here.get(&key) {
                    Loc::Here(*at, tag)
                } else {
                    let name = format!("{CHUNKS_DIR}/{}", digest.to_hex());
                    let pack = self.pack()?;
                    pack.file(&name, false, data.len() as u64, current.mtime)?;
                    let at = pack.chunk(data)?;
                    self.here.insert(key, at);
                    self.stats.new_chunks += 1;
                    Loc::Here(at, tag)
                }
            }
            Mode::Whole | Mode::Undecided => {
                let at = self.pack()?.chunk(data)?;
                self.stats.new_chunks += 1;
                // Every copy of a content is referenced at its first place, in manifest order,
                // as the next snapshot's index of this one finds it: so the segments of copies
                // that did not change are byte-identical next time, and reused.
                Loc::Here(*self.here.entry(key).or_insert(at), tag)
            }
        };
        current.locs.push(loc);
        self.current = Some(current);
        Ok(())
    }

    /// Adds an entry to the digest and the current segment, closing the segment where the
    /// format cuts it.
    fn push(&mut self, entry: SegmentEntry, locs: Vec<Loc>) -> Result<(), PassError> {
        self.hasher.push(entry.hasher_entry()).map_err(|source| {
            PassError::Read(ArchiveError::Create {
                path: PathBuf::from(&entry.path),
                source,
            })
        })?;
        if entry.kind == EntryKind::File {
            self.counts.files += 1;
            self.counts.bytes += entry.size;
        }
        let ends = ends_segment(&entry.path, self.segment.len() + 1);
        self.segment.push(Pending { entry, locs });
        if ends {
            self.closed.push_back(std::mem::take(&mut self.segment));
        }
        self.flush_ready()
    }

    /// Resolves the closed segments whose chunks' frames are written: reused where the base
    /// has the very same segment, kept to be written after the tar otherwise.
    fn flush_ready(&mut self) -> Result<(), PassError> {
        let written = self.pack.as_ref().map_or(usize::MAX, |p| p.frames_written());
        while let Some(front) = self.closed.front() {
            let ready = front
                .iter()
                .flat_map(|p| &p.locs)
                .all(|l| !matches!(l, Loc::Here(at, _) if at.frame >= written));
            if !ready {
                break;
            }
            let Some(segment) = self.closed.pop_front() else {
                break;
            };
            let mut entries = Vec::with_capacity(segment.len());
            for Pending { mut entry, locs } in segment {
                for loc in locs {
                    let chunk = match loc {
                        Loc::Ref(r) => r,
                        Loc::Here(at, tag) => self
                            .pack
                            .as_ref()
                            .and_then(|p| p.chunk_ref(&at, tag))
                            .ok_or(PackError::Misuse("a chunk in a frame not written"))?,
                    };
                    entry.chunks.push(chunk);
                }
                entries.push(entry);
            }
            let lines = pack::encode_segment(&entries);
            let hash = blake3::hash(&lines).to_hex().to_string();
            match self.base.and_then(|b| b.segments.get(&hash)) {
                Some((reused, payload)) => {
                    self.local.segment(&hash, payload);
                    self.stats.reused_segments += 1;
                    self.counts.packs.insert(reused.pack.clone());
                    self.out.push(SegOut::Reused(reused.clone()));
                }
                None => {
                    // Compressed now: a full pack holds every segment until the tar ends.
                    let payload = pack::compress_segment(&lines)?;
                    self.local.segment(&hash, &payload);
                    self.stats.new_segments += 1;
                    self.out.push(SegOut::New(payload, hash, entries.len() as u64));
                }
            }
            for chunk in entries.iter().flat_map(|e| &e.chunks) {
                if !self.counts.packs.contains(&chunk.pack) {
                    self.counts.packs.insert(chunk.pack.clone());
                }
            }
        }
        Ok(())
    }

    /// The tree is read: closes the last segment and the tar.
    fn end(&mut self) -> Result<(), PassError> {
        if self.current.is_some() {
            return Err(PackError::Misuse("the tree ended inside a file").into());
        }
        if !self.segment.is_empty() {
            self.closed.push_back(std::mem::take(&mut self.segment));
        }
        self.pack()?.end_tar()?;
        self.flush_ready()?;
        if !self.closed.is_empty() {
            return Err(PackError::Misuse("segments left unresolved").into());
        }
        Ok(())
    }

    /// Writes the new segments after the tar and finishes the pack; a delta that carries
    /// nothing new is dropped instead (nothing is uploaded).
    fn seal(&mut self) -> Result<Sealed, PassError> {
        let mut pack = self
            .pack
            .take()
            .ok_or(PackError::Misuse("the pack is already finished"))?;
        let hasher = std::mem::replace(
            &mut self.hasher,
            ManifestHasher::new(0, 0).map_err(|source| {
                PassError::Read(ArchiveError::Create {
                    path: PathBuf::new(),
                    source,
                })
            })?,
        );
        let counts = std::mem::take(&mut self.counts);
        let digest = if (counts.dirs, counts.symlinks) == (self.totals.dirs, self.totals.symlinks) {
            hasher.finish()
        } else {
            None
        };
        let carries = self.full()
            || self.stats.new_chunks > 0
            || self.out.iter().any(|s| matches!(s, SegOut::New(..)))
            || pack.tar_bytes() > 1024;
        let mut segments = Vec::with_capacity(self.out.len());
        let finished = if carries {
            for out in std::mem::take(&mut self.out) {
                segments.push(match out {
                    SegOut::Reused(s) => s,
                    SegOut::New(payload, hash, entries) => pack.segment_payload(&payload, hash, entries)?,
                });
            }
            let (_, finished) = pack.finish(self.full())?;
            Some(finished.pack)
        } else {
            segments.extend(std::mem::take(&mut self.out).into_iter().filter_map(|s| match s {
                SegOut::Reused(s) => Some(s),
                SegOut::New(..) => None,
            }));
            None
        };
        Ok(Sealed {
            digest,
            counts,
            segments,
            finished,
            local: std::mem::replace(&mut self.local, stat::LocalWriter::new(None)),
            stats: std::mem::take(&mut self.stats),
        })
    }
}

/// Where a delta pack puts the new chunks of a large file that changed in part.
const CHUNKS_DIR: &str = ".warmcache-chunks";
/// A snapshot references at most this many packs before it compacts (docs/DESIGN.md,
/// "Snapshots").
const MAX_PACKS: usize = 8;

fn plain(path: String, kind: EntryKind, target: Option<String>) -> SegmentEntry {
    SegmentEntry::new(ManifestEntry {
        path,
        kind,
        exec: false,
        size: 0,
        digest: None,
        target,
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
