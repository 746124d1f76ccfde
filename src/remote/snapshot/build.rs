//! Builds a format-2 snapshot's tree in the stage beside DIR (docs/DESIGN.md, "Restore"):
//! directories first, then every file from a seed (checked against its digest, then hard-linked
//! when it is DIR's file at the same path, copied otherwise) or
//! from the chunks of fetched pack frames (each chunk checked against its BLAKE3, a one-chunk
//! file against the file's digest, a multi-chunk file against its digest once assembled), then
//! the symlinks. Frames are decompressed and written by a small pool of threads while the
//! download goes on, with a bounded queue between them, so memory stays bounded and a cold
//! restore of a whole pack goes as fast as the download or the disk allows.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::fetch::{self, Tree, WantedFrame};
use super::pack::FRAME_MAX;
use super::seeds::{self, Seed, Seeds};
use super::{Result, SnapshotError};
use crate::archive::{self, ArchiveError, LimitExceeded};
use crate::remote::{Remote, RemoteError, RemoteUrl};
use crate::store::EntryKind;

/// Frames queued for the writer threads beyond the ones they work on.
const QUEUE_PER_WORKER: usize = 2;

/// What building the tree did.
#[derive(Debug, Default)]
pub(super) struct Built {
    /// Bytes of file content taken from seeds.
    pub seeded_bytes: u64,
    /// Files hard-linked from DIR rather than copied (docs/DESIGN.md, "Restore").
    pub files_linked: u64,
    /// Chunks decoded from fetched frames.
    pub fetched_chunks: u64,
    /// Compressed bytes downloaded from packs.
    pub downloaded_bytes: u64,
    /// Copying seeds.
    pub seed_copy: Duration,
    /// The download, wall time.
    pub download: Duration,
    /// Writer threads waiting for frames, averaged over the threads.
    pub wait: Duration,
    /// Writer threads decompressing, averaged over the threads.
    pub decompress: Duration,
    /// Seed copy and download with decompression and writing, wall time.
    pub extract: Duration,
}

/// Where one chunk of one entry goes.
#[derive(Debug, Clone, Copy)]
struct Use {
    entry: usize,
    chunk: usize,
}

/// What the writer threads share.
struct Shared<'a> {
    tree: &'a Tree,
    stage: &'a Path,
    /// Where each chunk of a multi-chunk file starts in it (empty for other entries).
    offsets: Vec<Vec<u64>>,
    /// Chunks of each multi-chunk file still to be written.
    remaining: Vec<AtomicU32>,
    /// Files complete and verified.
    completed: AtomicU64,
    seeded: AtomicU64,
    linked: AtomicU64,
    chunks: AtomicU64,
    failed: AtomicBool,
    /// The failure is about the bytes (undecodable, not matching a digest), not about this
    /// machine: the download goes on, discarding, so a pack read whole is checked against its
    /// BLAKE3, which then says whether the bytes were damaged (docs/DESIGN.md, "Restore").
    suspect: AtomicBool,
    error: Mutex<Option<SnapshotError>>,
    wait_ns: AtomicU64,
    decompress_ns: AtomicU64,
    /// The remote's name for each pack, for messages.
    pack_names: HashMap<String, String>,
    dir: &'a Path,
    /// The modification time of every file this build writes ([`BuildContext::mtime`]).
    mtime: std::time::SystemTime,
}

impl Shared<'_> {
    fn fail(&self, e: SnapshotError) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            if matches!(e, SnapshotError::BadObject { .. }) {
                self.suspect.store(true, Ordering::Release);
            }
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::Release);
    }

    fn local(&self, source: io::Error) -> SnapshotError {
        SnapshotError::Local {
            path: self.dir.to_path_buf(),
            source,
        }
    }

    fn bad(&self, pack: &str, reason: String) -> SnapshotError {
        SnapshotError::BadObject {
            target: self
                .pack_names
                .get(pack)
                .cloned()
                .unwrap_or_else(|| pack.to_owned()),
            reason,
        }
    }

    fn path_of(&self, entry: usize) -> PathBuf {
        self.stage.join(&self.tree.entries[entry].path)
    }

    /// The digest a chunk must have: its own, or the file's when it is the whole file.
    fn chunk_digest(&self, u: Use) -> &str {
        let entry = &self.tree.entries[u.entry];
        entry.chunks[u.chunk]
            .blake3
            .as_deref()
            .or(entry.digest.as_deref())
            .unwrap_or_default()
    }

    /// Writes one verified chunk into its file; the file is complete (and checked, when it has
    /// several chunks) when its last chunk is written.
    fn write_chunk(&self, u: Use, data: &[u8]) -> Result<()> {
        let entry = &self.tree.entries[u.entry];
        let path = self.path_of(u.entry);
        if entry.chunks.len() == 1 {
            let mut file = archive::create_file(&path, entry.exec).map_err(|e| self.local(e))?;
            file.write_all(data)
                .map_err(|e| self.local(crate::fs::annotate(e, "write", &path)))?;
            self.stamp(&file, &path)?;
            self.completed.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| self.local(crate::fs::annotate(e, "open", &path)))?;
        write_at(&file, data, self.offsets[u.entry][u.chunk])
            .map_err(|e| self.local(crate::fs::annotate(e, "write", &path)))?;
        drop(file);
        if self.remaining[u.entry].fetch_sub(1, Ordering::AcqRel) == 1 {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| self.local(crate::fs::annotate(e, "open", &path)))?;
            self.stamp(&file, &path)?;
            drop(file);
            let digest = hash_path(&path).map_err(|e| self.local(e))?;
            if Some(digest.as_str()) != entry.digest.as_deref() {
                let pack = &entry.chunks[0].pack;
                return Err(self.bad(
                    pack,
                    format!(
                        "the chunks of `{}` match their digests, but together not the file's",
                        entry.path
                    ),
                ));
            }
            self.completed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Sets the modification time of a file this build wrote, once its content is complete.
    fn stamp(&self, file: &std::fs::File, path: &Path) -> Result<()> {
        file.set_modified(self.mtime)
            .map_err(|e| self.local(crate::fs::annotate(e, "set the modification time of", path)))
    }

    /// Hard-links the seed of a whole file when it is DIR's file at the entry's own path, with
    /// the entry's executable bit (docs/DESIGN.md, "Restore": seeds are linked, not copied; at
    /// its own path only, so no two files of the new tree ever share an inode): its digest is
    /// checked first, and its stat after the link must still be the one it had before it was
    /// read, so a file changed meanwhile is not taken. `Ok(false)`: not linkable here (another
    /// file system, a link count at its limit, not permitted, not DIR's, changed): copy instead.
    fn link_seed(&self, entry: usize, seed: &Seed) -> Result<bool> {
        let e = &self.tree.entries[entry];
        if seed.offset != 0 || seed.len != e.size || seed.path != self.dir.join(&e.path) {
            return Ok(false);
        }
        let Ok(before) = std::fs::symlink_metadata(&seed.path) else {
            return Ok(false);
        };
        if !before.is_file() || before.len() != e.size || crate::fs::is_executable(&before) != e.exec {
            return Ok(false);
        }
        let Ok(digest) = hash_path(&seed.path) else {
            return Ok(false);
        };
        if Some(digest.as_str()) != e.digest.as_deref() {
            return Ok(false);
        }
        let path = self.path_of(entry);
        if e.chunks.len() > 1 {
            // A file of several chunks was created at its size for the chunks; the link takes
            // its name.
            std::fs::remove_file(&path)
                .map_err(|err| self.local(crate::fs::annotate(err, "remove", &path)))?;
        }
        if let Err(err) = std::fs::hard_link(&seed.path, &path) {
            return match err.raw_os_error() {
                Some(libc::EXDEV | libc::EPERM | libc::EMLINK | libc::EACCES | libc::ENOTSUP) => {
                    self.restore_placeholder(entry)?;
                    Ok(false)
                }
                _ => Err(self.local(crate::fs::annotate(err, "link", &path))),
            };
        }
        let same = std::fs::symlink_metadata(&path).is_ok_and(|after| {
            use std::os::unix::fs::MetadataExt;
            (
                after.ino(),
                after.dev(),
                after.len(),
                after.mtime(),
                after.mtime_nsec(),
            ) == (
                before.ino(),
                before.dev(),
                before.len(),
                before.mtime(),
                before.mtime_nsec(),
            )
        });
        if !same {
            std::fs::remove_file(&path)
                .map_err(|err| self.local(crate::fs::annotate(err, "remove", &path)))?;
            self.restore_placeholder(entry)?;
            return Ok(false);
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.seeded.fetch_add(e.size, Ordering::Relaxed);
        self.linked.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Puts back what a file of several chunks expects when a link was not made: the file at
    /// its size (a one-chunk file is simply absent).
    fn restore_placeholder(&self, entry: usize) -> Result<()> {
        let e = &self.tree.entries[entry];
        if e.chunks.len() <= 1 {
            return Ok(());
        }
        let path = self.path_of(entry);
        let file = archive::create_file(&path, e.exec).map_err(|err| self.local(err))?;
        file.set_len(e.size)
            .map_err(|err| self.local(crate::fs::annotate(err, "size", &path)))
    }

    /// Decompresses one frame and writes the chunks it is wanted for.
    fn write_frame(&self, uses: &[Use], bytes: &[u8]) -> Result<()> {
        let Some(first) = uses.first() else { return Ok(()) };
        let pack = &self.tree.entries[first.entry].chunks[first.chunk].pack;
        let end = uses
            .iter()
            .map(|u| {
                let c = &self.tree.entries[u.entry].chunks[u.chunk];
                c.at.saturating_add(c.len)
            })
            .max()
            .unwrap_or(0);
        if end > FRAME_MAX as u64 {
            return Err(self.bad(
                pack,
                format!("a chunk ends {end} bytes into its frame, past any frame's size"),
            ));
        }
        let started = Instant::now();
        let decoded = decode_prefix(bytes, end);
        self.decompress_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let frame = self.tree.entries[first.entry].chunks[first.chunk].frame;
        let decoded = decoded.map_err(|e| {
            self.bad(
                pack,
                format!(
                    "the frame at bytes {}..{} cannot be decoded: {e}",
                    frame[0], frame[1]
                ),
            )
        })?;
        for &u in uses {
            let entry = &self.tree.entries[u.entry];
            let c = &entry.chunks[u.chunk];
            let data = &decoded[c.at as usize..(c.at + c.len) as usize];
            if blake3::hash(data).to_hex().as_str() != self.chunk_digest(u) {
                return Err(self.bad(
                    &c.pack,
                    format!(
                        "the bytes of `{}` at {}..{} of the frame at {}..{} do not match their digest",
                        entry.path,
                        c.at,
                        c.at + c.len,
                        c.frame[0],
                        c.frame[1]
                    ),
                ));
            }
            self.write_chunk(u, data)?;
            self.chunks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Copies a seed into the stage, checked against its digest. `Ok(false)` when the seed
    /// turned out unusable (gone, changed): the content is downloaded instead.
    fn copy_seed(&self, job: &SeedJob) -> Result<bool> {
        match *job {
            SeedJob::File { entry, ref seed } => {
                if self.link_seed(entry, seed)? {
                    return Ok(true);
                }
                let e = &self.tree.entries[entry];
                let path = self.path_of(entry);
                let Ok(mut from) = std::fs::File::open(&seed.path) else {
                    return Ok(false);
                };
                // A file of several chunks already exists at its size (its chunks may come from
                // anywhere); a one-chunk file is created here.
                let several = e.chunks.len() > 1;
                let mut to = if several {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|err| self.local(crate::fs::annotate(err, "open", &path)))?
                } else {
                    archive::create_file(&path, e.exec).map_err(|e| self.local(e))?
                };
                let mut hasher = blake3::Hasher::new();
                let mut buf = vec![0u8; (e.size as usize).clamp(1, 1 << 20)];
                let mut copied = 0u64;
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(_) => break,
                    };
                    hasher.update(&buf[..n]);
                    to.write_all(&buf[..n])
                        .map_err(|err| self.local(crate::fs::annotate(err, "write", &path)))?;
                    copied += n as u64;
                    if copied > e.size {
                        break;
                    }
                }
                let same =
                    copied == e.size && Some(hasher.finalize().to_hex().as_str()) == e.digest.as_deref();
                if !same {
                    // Left as the download expects it: absent, or at its size for chunks.
                    let undone = if several {
                        to.set_len(0).and_then(|()| to.set_len(e.size))
                    } else {
                        drop(to);
                        std::fs::remove_file(&path)
                    };
                    undone.map_err(|err| self.local(crate::fs::annotate(err, "reset", &path)))?;
                    return Ok(false);
                }
                if !several {
                    self.stamp(&to, &path)?;
                }
                self.completed.fetch_add(1, Ordering::Relaxed);
                self.seeded.fetch_add(e.size, Ordering::Relaxed);
                Ok(true)
            }
            SeedJob::Chunk {
                entry,
                chunk,
                ref seed,
            } => {
                let u = Use { entry, chunk };
                let Ok(data) = seeds::read_seed(seed) else {
                    return Ok(false);
                };
                if blake3::hash(&data).to_hex().as_str() != self.chunk_digest(u) {
                    return Ok(false);
                }
                self.write_chunk(u, &data)?;
                self.seeded.fetch_add(data.len() as u64, Ordering::Relaxed);
                Ok(true)
            }
        }
    }
}

/// Content to copy from a seed.
enum SeedJob {
    File { entry: usize, seed: Seed },
    Chunk { entry: usize, chunk: usize, seed: Seed },
}

/// Decodes one frame (exactly one zstd frame, at most [`FRAME_MAX`] bytes) that must hold at
/// least `len` bytes.
fn decode_prefix(frame: &[u8], len: u64) -> io::Result<Vec<u8>> {
    let out = super::pack::decode_frame(frame, FRAME_MAX).map_err(io::Error::other)?;
    if (out.len() as u64) < len {
        return Err(io::Error::other(format!(
            "it decompresses to {} bytes, the manifest places chunks up to {len}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(unix)]
fn write_at(file: &std::fs::File, data: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, data, offset)
}

#[cfg(not(unix))]
fn write_at(file: &std::fs::File, data: &[u8], offset: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut file = file;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(data)
}

fn hash_path(path: &Path) -> io::Result<String> {
    let file = std::fs::File::open(path).map_err(|e| crate::fs::annotate(e, "open", path))?;
    Ok(crate::store::hash_file(&file, path)?.1)
}

/// What a build needs besides the tree.
pub(super) struct BuildContext<'a> {
    pub remote: &'a Remote,
    pub url: &'a RemoteUrl,
    /// DIR, for messages.
    pub dir: &'a Path,
    /// The stage's tree (an empty directory).
    pub stage: &'a Path,
    pub min_free: Option<u64>,
    pub progress: &'a dyn crate::remote::Progress,
    /// The modification time of the files the build writes (linked ones keep theirs): old
    /// enough that the stat cache written after the restore trusts them, and that any later
    /// write shows in the stat (docs/DESIGN.md, "Restore").
    pub mtime: std::time::SystemTime,
}

/// Builds `tree` in the stage from `seeds` and the packs; the stage holds exactly the tree,
/// verified, when this returns `Ok`.
pub(super) fn build(cx: &BuildContext<'_>, tree: &Tree, seeds: &Seeds) -> Result<Built> {
    let started = Instant::now();
    let local = |source: io::Error| SnapshotError::Local {
        path: cx.dir.to_path_buf(),
        source,
    };
    check_space(cx, tree)?;
    let mut offsets = vec![Vec::new(); tree.entries.len()];
    let mut remaining = Vec::with_capacity(tree.entries.len());
    let mut files = 0u64;
    let mut seed_jobs = Vec::new();
    let mut fetch: Vec<Use> = Vec::new();
    for (i, entry) in tree.entries.iter().enumerate() {
        remaining.push(AtomicU32::new(entry.chunks.len() as u32));
        let path = cx.stage.join(&entry.path);
        match entry.kind {
            EntryKind::Dir => archive::create_dir(&path).map_err(local)?,
            EntryKind::Symlink => {}
            EntryKind::File if entry.chunks.is_empty() => {
                let file = archive::create_file(&path, entry.exec).map_err(local)?;
                file.set_modified(cx.mtime)
                    .map_err(|e| local(crate::fs::annotate(e, "set the modification time of", &path)))?;
            }
            EntryKind::File => {
                files += 1;
                if entry.chunks.len() > 1 {
                    // Chunks land at their offsets from any thread: the file exists first.
                    let file = archive::create_file(&path, entry.exec).map_err(local)?;
                    file.set_len(entry.size)
                        .map_err(|e| local(crate::fs::annotate(e, "size", &path)))?;
                    let mut at = 0u64;
                    offsets[i] = entry
                        .chunks
                        .iter()
                        .map(|c| {
                            let here = at;
                            at += c.len;
                            here
                        })
                        .collect();
                }
                if let Some(seed) = entry.digest.as_deref().and_then(|d| seeds.get(d)) {
                    seed_jobs.push(SeedJob::File {
                        entry: i,
                        seed: seed.clone(),
                    });
                    continue;
                }
                for (c, chunk) in entry.chunks.iter().enumerate() {
                    let seed = match (&chunk.blake3, entry.chunks.len()) {
                        (Some(digest), n) if n > 1 => seeds.get(digest),
                        _ => None,
                    };
                    match seed {
                        Some(seed) => seed_jobs.push(SeedJob::Chunk {
                            entry: i,
                            chunk: c,
                            seed: seed.clone(),
                        }),
                        None => fetch.push(Use { entry: i, chunk: c }),
                    }
                }
            }
        }
    }
    let pack_names = tree
        .manifest
        .packs
        .iter()
        .map(|p| {
            (
                p.token.clone(),
                cx.remote.describe(&super::format::pack_key(cx.url, &p.token)),
            )
        })
        .collect();
    let shared = Shared {
        tree,
        stage: cx.stage,
        offsets,
        remaining,
        completed: AtomicU64::new(0),
        seeded: AtomicU64::new(0),
        linked: AtomicU64::new(0),
        chunks: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        suspect: AtomicBool::new(false),
        error: Mutex::new(None),
        wait_ns: AtomicU64::new(0),
        decompress_ns: AtomicU64::new(0),
        pack_names,
        dir: cx.dir,
        mtime: cx.mtime,
    };
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4);

    // Seeds first: whatever turns out unusable is downloaded with the rest.
    let seeding = Instant::now();
    let fallback = copy_seeds(&shared, &seed_jobs, workers)?;
    let seed_copy = seeding.elapsed();
    for job in fallback {
        match job {
            SeedJob::File { entry, .. } => {
                fetch.extend((0..tree.entries[entry].chunks.len()).map(|chunk| Use { entry, chunk }));
            }
            SeedJob::Chunk { entry, chunk, .. } => fetch.push(Use { entry, chunk }),
        }
    }

    // The frames to fetch, each with the chunks it is wanted for.
    let mut frame_of: HashMap<(&str, [u64; 2]), usize> = HashMap::new();
    let mut wanted: Vec<WantedFrame> = Vec::new();
    let mut uses: Vec<Vec<Use>> = Vec::new();
    for u in fetch {
        let chunk = &tree.entries[u.entry].chunks[u.chunk];
        let job = *frame_of
            .entry((chunk.pack.as_str(), chunk.frame))
            .or_insert_with(|| {
                wanted.push(WantedFrame {
                    pack: chunk.pack.clone(),
                    range: chunk.frame[0]..chunk.frame[1],
                    job: uses.len(),
                });
                uses.push(Vec::new());
                uses.len() - 1
            });
        uses[job].push(u);
    }
    let target = cx
        .remote
        .describe(&super::format::manifest_key(cx.url, &tree.manifest.digest));
    let plans = fetch::plan(&tree.manifest, &wanted, &target)?;
    cx.progress
        .start(Some(fetch::planned_bytes(&tree.manifest, &plans, &wanted)));

    let downloading = Instant::now();
    let (tx, rx) = mpsc::sync_channel::<(usize, Bytes)>(workers * QUEUE_PER_WORKER);
    let rx = Mutex::new(rx);
    let downloaded = std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let waited = Instant::now();
                    let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    shared
                        .wait_ns
                        .fetch_add(waited.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    let Ok((job, bytes)) = next else { break };
                    if shared.failed.load(Ordering::Acquire) {
                        continue;
                    }
                    if let Err(e) = shared.write_frame(&uses[job], &bytes) {
                        shared.fail(e);
                    }
                }
            });
        }
        let mut hand_over = |job: usize, bytes: Bytes| {
            if shared.failed.load(Ordering::Acquire) {
                if shared.suspect.load(Ordering::Acquire) {
                    return Ok(());
                }
                return Err(io::Error::other("writing the restored tree failed"));
            }
            tx.send((job, bytes))
                .map_err(|_| io::Error::other("the writer threads stopped"))
        };
        let got = fetch::fetch_frames(
            cx.remote,
            cx.url,
            &tree.manifest,
            &plans,
            &wanted,
            &mut hand_over,
            cx.progress,
        );
        drop(tx);
        got
    });
    let download = downloading.elapsed();
    // A pack that does not match its BLAKE3 was damaged (on the server or on the way): that is
    // what to report, rather than the symptom a frame of it showed.
    if let Err(e @ RemoteError::DigestMismatch { .. }) = downloaded {
        return Err(SnapshotError::Remote(e));
    }
    if let Some(e) = shared.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let downloaded = downloaded.map_err(SnapshotError::Remote)?;
    let done = shared.completed.load(Ordering::Relaxed);
    if done != files {
        return Err(SnapshotError::BadObject {
            target,
            reason: format!("only {done} of the snapshot's {files} files could be assembled"),
        });
    }

    // Symlinks last: no file is ever written through one.
    for entry in tree.entries.iter().filter(|e| e.kind == EntryKind::Symlink) {
        let path = cx.stage.join(&entry.path);
        let target = entry.target.as_deref().unwrap_or_default();
        crate::fs::symlink(Path::new(target), &path).map_err(local)?;
    }
    let per_worker = |ns: u64| Duration::from_nanos(ns / workers as u64);
    Ok(Built {
        seeded_bytes: shared.seeded.load(Ordering::Relaxed),
        files_linked: shared.linked.load(Ordering::Relaxed),
        fetched_chunks: shared.chunks.load(Ordering::Relaxed),
        downloaded_bytes: downloaded,
        seed_copy,
        download,
        wait: per_worker(shared.wait_ns.load(Ordering::Relaxed)),
        decompress: per_worker(shared.decompress_ns.load(Ordering::Relaxed)),
        extract: started.elapsed(),
    })
}

/// Copies the seeds on `workers` threads; returns those that turned out unusable.
fn copy_seeds(shared: &Shared<'_>, jobs: &[SeedJob], workers: usize) -> Result<Vec<SeedJob>> {
    let next = AtomicU64::new(0);
    let unusable = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers.min(jobs.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(job) = jobs.get(i) else { break };
                    if shared.failed.load(Ordering::Acquire) {
                        break;
                    }
                    match shared.copy_seed(job) {
                        Ok(true) => {}
                        Ok(false) => unusable.lock().unwrap_or_else(|p| p.into_inner()).push(i),
                        Err(e) => shared.fail(e),
                    }
                }
            });
        }
    });
    if let Some(e) = shared.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let mut unusable = unusable.into_inner().unwrap_or_else(|p| p.into_inner());
    unusable.sort_unstable();
    Ok(unusable
        .into_iter()
        .map(|i| match &jobs[i] {
            SeedJob::File { entry, seed } => SeedJob::File {
                entry: *entry,
                seed: seed.clone(),
            },
            SeedJob::Chunk { entry, chunk, seed } => SeedJob::Chunk {
                entry: *entry,
                chunk: *chunk,
                seed: seed.clone(),
            },
        })
        .collect())
}

/// The tree's bytes must fit on DIR's volume with the free-space reserve kept (`--min-free`),
/// checked before anything is written.
fn check_space(cx: &BuildContext<'_>, tree: &Tree) -> Result<()> {
    let (available, volume) = match cx.min_free {
        Some(0) => return Ok(()),
        _ => archive::space(cx.stage),
    };
    if available == u64::MAX {
        return Ok(());
    }
    let keep_free = cx.min_free.unwrap_or_else(|| archive::default_reserve(volume));
    if tree.manifest.bytes.saturating_add(keep_free) > available {
        let target = cx
            .remote
            .describe(&super::format::manifest_key(cx.url, &tree.manifest.digest));
        return Err(SnapshotError::Extract {
            target: target.clone(),
            dir: cx.dir.to_path_buf(),
            source: Box::new(ArchiveError::Limit {
                archive: PathBuf::from(target),
                entry: "(the whole tree)".to_owned(),
                limit: LimitExceeded::FreeSpace { available, keep_free },
            }),
        });
    }
    Ok(())
}

/// Whether a remote error says a pack is gone (collected by the remote gc since the pointer
/// was read): then the restore reads the pointer again.
pub(super) fn is_missing_pack(e: &SnapshotError) -> bool {
    matches!(e, SnapshotError::Remote(RemoteError::NotFound { target }) if target.contains("/packs/"))
}
