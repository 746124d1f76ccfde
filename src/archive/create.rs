//! Streaming creation of a standard tar.zst from a directory tree (readable by `zstd -d | tar -x`),
//! and the passes a snapshot makes over a tree: [`scan_tree`] and [`list_tree`] (walk only; the
//! latter keeps the listing, so the passes after it do not walk again), [`digest_tree`] (read
//! and hash), [`read_chunked`] (read once, chunked) and [`archive_tree`] (read once, hash,
//! archive and compress, overlapped).
//!
//! Every pass visits entries in manifest order (paths sorted by their bytes, see
//! [`crate::store::Manifest`]), which is also the order of the archive's entries, so a tree's
//! content digest is computed while it streams, with memory bounded by the directory listings on
//! the current path (or, after [`list_tree`], its listing) rather than by the size of the files
//! (docs/DESIGN.md, "Snapshots").

use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::ArchiveError;
use crate::ids::ArtifactId;
use crate::store::rule::{self, EntryType};
use crate::store::{EntryKind, ManifestEntry, ManifestHasher};

/// File contents travel from the reading thread to the archiving thread in pieces of at most
/// this size.
const CHUNK: usize = 256 << 10;
/// Messages in flight between the reading and the archiving thread: with [`CHUNK`], at most
/// 4 MiB of file content is read ahead.
const READ_AHEAD: usize = 16;
/// Bytes per write into the zstd encoder.
const ENCODER_WRITE: usize = 256 << 10;
/// zstd's job size when compressing on several threads. zstd's default at level 3 is 8 MiB per
/// job, and it keeps several jobs' input and output buffers per worker: measured on a 610 MB
/// tree, peak memory of a snapshot was 81 MiB with 4 MiB jobs, 60 with 2 and 53 with 1, for the
/// same CPU time; the archive is about 6% larger than with 8 MiB jobs (128.5 MB against 121.6 for
/// a 553 MB `node_modules`), the price of the bound (docs/DESIGN.md, "Snapshots").
const ZSTD_JOB: u32 = 1 << 20;
/// Files hashed per batch by [`digest_tree`] (on all cores), bounding what it holds at once.
const DIGEST_BATCH: usize = 512;

/// What [`create_tar_zst`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CreateReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of file content read.
    pub bytes_in: u64,
    /// Bytes of compressed archive written.
    pub bytes_out: u64,
}

/// What [`scan_tree`] found: the counts a tree's manifest starts with.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeTotals {
    /// Regular files.
    pub files: u64,
    /// Bytes of file content (sizes as listed).
    pub bytes: u64,
    /// Directories, the root excluded.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
}

/// What [`archive_tree`] did.
#[derive(Debug, Clone)]
pub struct ArchivedTree {
    /// What was written.
    pub report: CreateReport,
    /// The content digest of what was archived ([`crate::store::Manifest::id`]), when totals
    /// were given and the archived tree matched them.
    pub digest: Option<ArtifactId>,
    /// Busy time of the reading thread (opening, reading and hashing files).
    pub read: Duration,
    /// Time the archiving thread waited for the reading thread.
    pub read_wait: Duration,
}

/// Streams `dir` as a tar.zst to `out`.
///
/// Entries come in manifest order (sorted by path bytes, parents first) with paths relative to
/// `dir`: directories (empty ones included), regular files with mode 0755 or 0644 by their
/// executable bit, and symlinks as they are. Owners are not recorded (uid and gid 0, no names);
/// modification times are, so tools that compare them (Python's `.pyc` check) stay happy.
/// Anything the tree rule refuses (sockets, FIFOs, devices, names or targets that are not UTF-8;
/// docs/DESIGN.md, "What one side writes, the other reads") fails the whole archive, naming the entry: an
/// archive that silently lacks an entry would restore into a different tree. Memory is bounded by
/// the directory listings on the current path and fixed-size buffers, whatever the size of the
/// tree. `level` is zstd's (1–22; 3 is a good default).
pub fn create_tar_zst<W: Write>(dir: &Path, out: W, level: i32) -> Result<CreateReport, ArchiveError> {
    Ok(archive_tree(dir, out, level, None)?.report)
}

/// Like [`create_tar_zst`], reading every file once on a thread of its own (so reading overlaps
/// with compression, which runs on zstd's worker threads) and, when `totals` (from
/// [`scan_tree`]) are given, computing the content digest of exactly the bytes archived. A
/// digest of `None` means the tree did not match `totals` (it changed since the scan).
pub fn archive_tree<W: Write>(
    dir: &Path,
    out: W,
    level: i32,
    totals: Option<TreeTotals>,
) -> Result<ArchivedTree, ArchiveError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Create { path, source }
    };
    let counted = Counting { inner: out, bytes: 0 };
    let mut encoder = zstd::Encoder::new(counted, level).map_err(err(dir))?;
    encoder.include_checksum(true).map_err(err(dir))?;
    // Compression is the CPU-bound part of a snapshot: use zstd's worker threads (as `zstd -T0`
    // does), with jobs small enough to keep its memory bounded (see ZSTD_JOB).
    let workers = crate::parallel::threads() as u32;
    if workers > 1 {
        encoder.multithread(workers).map_err(err(dir))?;
        encoder
            .set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB))
            .map_err(err(dir))?;
    }
    let mut hasher = match totals {
        Some(t) => Some(ManifestHasher::new(t.files, t.bytes).map_err(err(dir))?),
        None => None,
    };
    let (tx, rx) = sync_channel::<Msg>(READ_AHEAD);
    let (builder, report, read, read_wait) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_tree(dir, tx));
        // Through a buffer: the tar writer copies file content 8 KiB at a time, and zstd's
        // multi-threaded encoder does its bookkeeping per call; the buffer makes those calls
        // ENCODER_WRITE bytes each, and lets the copy read straight into it.
        let mut builder = tar::Builder::new(io::BufWriter::with_capacity(ENCODER_WRITE, encoder));
        let mut report = CreateReport::default();
        let mut read_wait = Duration::ZERO;
        let written = write_entries(dir, &rx, &mut builder, &mut report, &mut hasher, &mut read_wait);
        // Stop the reader if we stopped early, then collect its time.
        drop(rx);
        let read = reader.join().unwrap_or(Duration::ZERO);
        written.map(|()| (builder, report, read, read_wait))
    })?;
    let encoder = builder
        .into_inner()
        .map_err(err(dir))?
        .into_inner()
        .map_err(|e| err(dir)(e.into_error()))?;
    let mut counted = encoder.finish().map_err(err(dir))?;
    counted.flush().map_err(err(dir))?;
    let mut report = report;
    report.bytes_out = counted.bytes;
    let digest = match totals {
        Some(t) if (report.dirs, report.symlinks) == (t.dirs, t.symlinks) => {
            hasher.and_then(ManifestHasher::finish)
        }
        _ => None,
    };
    Ok(ArchivedTree {
        report,
        digest,
        read,
        read_wait,
    })
}

/// Walks `dir` (no file is read) checking every entry against the tree rule, and counts what
/// it holds. Fails on the first entry the rule refuses, naming it.
pub fn scan_tree(dir: &Path) -> Result<TreeTotals, ArchiveError> {
    let mut totals = TreeTotals::default();
    walk(dir, &mut |visit| {
        match visit.kind {
            Kind::Dir => totals.dirs += 1,
            Kind::Symlink(_) => totals.symlinks += 1,
            Kind::File => {
                totals.files += 1;
                totals.bytes += visit.stat.size;
            }
        }
        Ok(())
    })?;
    Ok(totals)
}

/// Like [`scan_tree`], also keeping every entry (its path, kind, symlink target and `lstat`), so
/// that the passes that follow ([`digest_tree`], [`read_chunked`]) read the tree without walking
/// it again: about 150 bytes per entry (a 43,000-file tree: about 6 MiB), where a second walk of
/// a large tree costs as much as the rest of a snapshot that reads few files.
pub fn list_tree(dir: &Path) -> Result<TreeListing, ArchiveError> {
    let mut listing = TreeListing::default();
    walk(dir, &mut |visit| {
        let totals = &mut listing.totals;
        let target = match visit.kind {
            Kind::Dir => {
                totals.dirs += 1;
                None
            }
            Kind::Symlink(target) => {
                totals.symlinks += 1;
                Some(Box::from(target))
            }
            Kind::File => {
                totals.files += 1;
                totals.bytes += visit.stat.size;
                None
            }
        };
        listing.entries.push(Listed {
            rel: Box::from(visit.rel),
            target,
            dir: matches!(visit.kind, Kind::Dir),
            stat: visit.stat,
            mtime: visit.mtime,
        });
        Ok(())
    })?;
    // Kept last entry first, so a pass that takes the listing pops its entries as it goes.
    listing.entries.reverse();
    listing.entries.shrink_to_fit();
    Ok(listing)
}

/// What [`list_tree`] found: the counts, and every entry in manifest order.
#[derive(Debug, Default)]
pub struct TreeListing {
    /// The counts a tree's manifest starts with.
    pub totals: TreeTotals,
    /// The entries, last first.
    entries: Vec<Listed>,
}

/// One entry of a [`TreeListing`].
#[derive(Debug)]
struct Listed {
    rel: Box<str>,
    /// A symlink's target.
    target: Option<Box<str>>,
    dir: bool,
    stat: FileStat,
    mtime: u64,
}

impl Listed {
    fn visit(&self, root: &Path, visit: &mut Visitor<'_>) -> Result<(), ArchiveError> {
        let kind = match (&self.target, self.dir) {
            (Some(target), _) => Kind::Symlink(target),
            (None, true) => Kind::Dir,
            (None, false) => Kind::File,
        };
        visit(Visit {
            path: &root.join(&*self.rel),
            rel: &self.rel,
            kind,
            stat: self.stat,
            mtime: self.mtime,
        })
    }
}

impl TreeListing {
    /// Visits the listed entries in manifest order, as [`walk`] would have, consuming them (each
    /// entry's path is freed once visited).
    fn replay(mut self, root: &Path, visit: &mut Visitor<'_>) -> Result<(), ArchiveError> {
        while let Some(entry) = self.entries.pop() {
            entry.visit(root, visit)?;
        }
        Ok(())
    }

    /// Like [`Self::replay`], keeping the listing.
    fn replay_ref(&self, root: &Path, visit: &mut Visitor<'_>) -> Result<(), ArchiveError> {
        for entry in self.entries.iter().rev() {
            entry.visit(root, visit)?;
        }
        Ok(())
    }
}

/// The content digest of `dir` ([`crate::store::Manifest::id`]) as [`list_tree`] listed it,
/// reading every file once on all cores, a batch of files at a time. A file is read as long as
/// its opened handle says, so a file that changed since the listing is hashed as it is now.
pub fn digest_tree(dir: &Path, listing: &TreeListing) -> Result<Option<ArtifactId>, ArchiveError> {
    digest_tree_with(dir, listing, &|_: &str, _: &FileStat| None)
}

/// Like [`digest_tree`], taking a file's digest from `known` instead of reading the file when
/// it has one for the file's path and `lstat` (a stat cache; see [`FileStat`]).
pub fn digest_tree_with(
    dir: &Path,
    listing: &TreeListing,
    known: &(dyn Fn(&str, &FileStat) -> Option<String> + Sync + '_),
) -> Result<Option<ArtifactId>, ArchiveError> {
    let totals = listing.totals;
    let mut hasher =
        ManifestHasher::new(totals.files, totals.bytes).map_err(|source| ArchiveError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
    // Entries in order; files get their digest when their batch is hashed.
    let mut batch: Vec<(ManifestEntry, Option<PathBuf>)> = Vec::new();
    let mut files_in_batch = 0;
    let (mut dirs, mut symlinks) = (0, 0);
    listing.replay_ref(dir, &mut |visit| {
        let (entry, path) = match visit.kind {
            Kind::Dir => {
                dirs += 1;
                (entry(visit.rel, EntryKind::Dir, false, 0, None, None), None)
            }
            Kind::Symlink(target) => {
                symlinks += 1;
                (
                    entry(visit.rel, EntryKind::Symlink, false, 0, None, Some(target)),
                    None,
                )
            }
            Kind::File => {
                let stat = visit.stat;
                match known(visit.rel, &stat) {
                    Some(digest) => (
                        entry(
                            visit.rel,
                            EntryKind::File,
                            stat.exec,
                            stat.size,
                            Some(digest),
                            None,
                        ),
                        None,
                    ),
                    None => {
                        files_in_batch += 1;
                        (
                            entry(visit.rel, EntryKind::File, false, 0, None, None),
                            Some(visit.path.to_path_buf()),
                        )
                    }
                }
            }
        };
        batch.push((entry, path));
        if files_in_batch >= DIGEST_BATCH {
            files_in_batch = 0;
            push_batch(&mut hasher, &mut batch)?;
        }
        Ok(())
    })?;
    push_batch(&mut hasher, &mut batch)?;
    if (dirs, symlinks) != (totals.dirs, totals.symlinks) {
        return Ok(None);
    }
    Ok(hasher.finish())
}

/// Hashes the files of `batch` in parallel and feeds every entry, in order, to `hasher`.
fn push_batch(
    hasher: &mut ManifestHasher,
    batch: &mut Vec<(ManifestEntry, Option<PathBuf>)>,
) -> Result<(), ArchiveError> {
    let hashed = crate::parallel::map(batch, |(_, path)| match path {
        Some(path) => hash_file(path).map(Some),
        None => Ok(None),
    })?;
    for ((mut entry, path), hashed) in batch.drain(..).zip(hashed) {
        if let Some((exec, size, digest)) = hashed {
            entry.exec = exec;
            entry.size = size;
            entry.digest = Some(digest);
        }
        hasher.push(&entry).map_err(|source| ArchiveError::Create {
            path: path.unwrap_or_default(),
            source,
        })?;
    }
    Ok(())
}

/// Reads a file exactly as long as its opened handle says: executable bit, size, BLAKE3.
fn hash_file(path: &Path) -> Result<(bool, u64, String), ArchiveError> {
    let mut file = open(path)?;
    let meta = file.metadata().map_err(|source| ArchiveError::Create {
        path: path.to_path_buf(),
        source,
    })?;
    let mut state = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK.min(usize::try_from(meta.len()).unwrap_or(CHUNK)).max(1)];
    let mut left = meta.len();
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = read_some(&mut file, &mut buf[..want], path)?;
        state.update(&buf[..n]);
        left -= n as u64;
    }
    let digest = state.finalize().to_hex().to_string();
    Ok((crate::fs::is_executable(&meta), meta.len(), digest))
}

fn entry(
    path: &str,
    kind: EntryKind,
    exec: bool,
    size: u64,
    digest: Option<String>,
    target: Option<&str>,
) -> ManifestEntry {
    ManifestEntry {
        path: path.to_owned(),
        kind,
        exec,
        size,
        digest,
        target: target.map(str::to_owned),
    }
}

/// What an entry is, once the rule accepted it.
#[derive(Clone, Copy)]
enum Kind<'a> {
    Dir,
    File,
    Symlink(&'a str),
}

/// One entry as the walk meets it.
struct Visit<'a> {
    /// Where it is.
    path: &'a Path,
    /// Its path relative to the root, as a manifest records it.
    rel: &'a str,
    kind: Kind<'a>,
    /// Its `lstat`, as a stat cache compares it.
    stat: FileStat,
    /// Its modification time (seconds), as a tar header records it.
    mtime: u64,
}

type Visitor<'v> = dyn FnMut(Visit<'_>) -> Result<(), ArchiveError> + 'v;

/// Visits every entry under `root` in manifest order: the paths sorted by their bytes, which
/// puts each directory before its entries. That is not a plain depth-first order (`a.b` sorts
/// between `a` and `a/x`), so each directory's listing is ordered by name for the entries
/// themselves and by name + `/` for what lies below a subdirectory.
fn walk(root: &Path, visit: &mut Visitor<'_>) -> Result<(), ArchiveError> {
    walk_dir(root, &mut PathBuf::new(), visit)
}

fn walk_dir(root: &Path, rel: &mut PathBuf, visit: &mut Visitor<'_>) -> Result<(), ArchiveError> {
    let dir = root.join(&*rel);
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Create { path, source }
    };
    let mut names: Vec<OsString> = Vec::new();
    for entry in fs_err::read_dir(&dir).map_err(err(&dir))? {
        names.push(entry.map_err(err(&dir))?.file_name());
    }
    // Each name twice: the entry itself, and (if it turns out to be a directory) its contents,
    // keyed by the name followed by `/`.
    let mut order: Vec<(usize, bool)> = (0..names.len()).flat_map(|i| [(i, false), (i, true)]).collect();
    let key = |&(i, below): &(usize, bool)| {
        let name: &[u8] = names[i].as_encoded_bytes();
        name.iter().copied().chain(below.then_some(b'/'))
    };
    order.sort_by(|a, b| key(a).cmp(key(b)));
    let mut is_dir = vec![false; names.len()];
    for (i, below) in order {
        rel.push(&names[i]);
        if below {
            if is_dir[i] {
                walk_dir(root, rel, visit)?;
            }
        } else {
            let path = root.join(&*rel);
            let meta = fs_err::symlink_metadata(&path).map_err(err(&path))?;
            let target = if meta.file_type().is_symlink() {
                Some(fs_err::read_link(&path).map_err(err(&path))?)
            } else {
                None
            };
            let entry_type = rule::entry_type(meta.file_type(), target.as_deref().map(Path::as_os_str));
            let rel_str = rule::check(rel, entry_type).map_err(|refused| ArchiveError::Refused {
                root: root.to_path_buf(),
                refused,
            })?;
            let kind = match entry_type {
                EntryType::Dir => Kind::Dir,
                // The rule checked that the target is UTF-8.
                EntryType::Symlink(t) => Kind::Symlink(t.to_str().unwrap_or_default()),
                EntryType::File | EntryType::Other(_) => Kind::File,
            };
            is_dir[i] = matches!(kind, Kind::Dir);
            visit(Visit {
                path: &path,
                rel: &rel_str,
                kind,
                stat: FileStat::of(&meta),
                mtime: mtime(&meta),
            })?;
        }
        rel.pop();
    }
    Ok(())
}

/// What the reading thread sends the archiving thread, in manifest order.
enum Msg {
    Dir {
        rel: String,
        mtime: u64,
    },
    Symlink {
        rel: String,
        target: String,
        mtime: u64,
    },
    /// A file, then `More` pieces until `size` bytes were sent, then `End` (unless `digest` came
    /// with the first piece).
    File {
        rel: String,
        exec: bool,
        size: u64,
        mtime: u64,
        first: Vec<u8>,
        digest: Option<blake3::Hash>,
    },
    More(Vec<u8>),
    End(blake3::Hash),
    Failed(ArchiveError),
}

/// The reading thread: walks `dir`, reads every file exactly as long as its opened handle says,
/// hashes it, and sends everything in order. Returns its busy time (not counting the time it
/// waited for room in the queue).
fn read_tree(dir: &Path, tx: SyncSender<Msg>) -> Duration {
    let started = Instant::now();
    let mut blocked = Duration::ZERO;
    let walked = {
        let mut send = |msg: Msg| -> Result<(), ArchiveError> {
            let t = Instant::now();
            let sent = tx.send(msg);
            blocked += t.elapsed();
            // The archiving thread stopped (it failed and reports its own error): stop.
            sent.map_err(|_| ArchiveError::Create {
                path: dir.to_path_buf(),
                source: io::Error::other("the archive was abandoned"),
            })
        };
        walk(dir, &mut |visit| match visit.kind {
            Kind::Dir => send(Msg::Dir {
                rel: visit.rel.to_owned(),
                mtime: visit.mtime,
            }),
            Kind::Symlink(target) => send(Msg::Symlink {
                rel: visit.rel.to_owned(),
                target: target.to_owned(),
                mtime: visit.mtime,
            }),
            Kind::File => read_file(visit.path, visit.rel, &mut send),
        })
    };
    if let Err(e) = walked {
        let _ = tx.send(Msg::Failed(e));
    }
    started.elapsed().saturating_sub(blocked)
}

fn open(path: &Path) -> Result<File, ArchiveError> {
    File::open(path)
        .map_err(|e| crate::fs::annotate(e, "open", path))
        .map_err(|source| ArchiveError::Create {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads at least one byte into `buf` (not empty), failing if the file ended: it shrank since
/// its size was taken, and a short entry would corrupt every entry after it.
fn read_some(file: &mut File, buf: &mut [u8], path: &Path) -> Result<usize, ArchiveError> {
    let err = |source| ArchiveError::Create {
        path: path.to_path_buf(),
        source,
    };
    loop {
        match file.read(buf) {
            Ok(0) => {
                return Err(err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("`{}` shrank while it was being archived", path.display()),
                )));
            }
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(crate::fs::annotate(e, "read", path))),
        }
    }
}

/// The next `want` bytes of `file`, failing if it ends first.
fn read_piece(file: &mut File, want: usize, path: &Path) -> Result<Vec<u8>, ArchiveError> {
    let mut buf = Vec::with_capacity(want);
    let got = Read::by_ref(file)
        .take(want as u64)
        .read_to_end(&mut buf)
        .map_err(|e| ArchiveError::Create {
            path: path.to_path_buf(),
            source: crate::fs::annotate(e, "read", path),
        })?;
    if got < want {
        return Err(ArchiveError::Create {
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("`{}` shrank while it was being archived", path.display()),
            ),
        });
    }
    Ok(buf)
}

fn read_file(
    path: &Path,
    rel: &str,
    send: &mut dyn FnMut(Msg) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    // Open, then inspect the handle: the size promised in the header is the opened file's, and
    // exactly that many bytes are sent (a file that grows meanwhile is archived and hashed as
    // its first `size` bytes, consistently).
    let mut file = open(path)?;
    let meta = file.metadata().map_err(|source| ArchiveError::Create {
        path: path.to_path_buf(),
        source,
    })?;
    let size = meta.len();
    let mut hasher = blake3::Hasher::new();
    let piece_len = |left: u64| CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
    let first = read_piece(&mut file, piece_len(size), path)?;
    let mut left = size - first.len() as u64;
    hasher.update(&first);
    let whole = left == 0;
    if whole {
        unchanged_since(&file, &meta, path)?;
    }
    send(Msg::File {
        rel: rel.to_owned(),
        exec: crate::fs::is_executable(&meta),
        size,
        mtime: mtime(&meta),
        first,
        digest: whole.then(|| hasher.finalize()),
    })?;
    if whole {
        return Ok(());
    }
    while left > 0 {
        let piece = read_piece(&mut file, piece_len(left), path)?;
        left -= piece.len() as u64;
        hasher.update(&piece);
        send(Msg::More(piece))?;
    }
    unchanged_since(&file, &meta, path)?;
    send(Msg::End(hasher.finalize()))
}

/// Fails if the open file's size, modification or change time moved since `before` was taken,
/// before its bytes were read: a write landed while it was being read, so what was read may be
/// half old and half new, a state the file never had as a whole (GNU tar's "file changed as we
/// read it"). Limit: a write within the same tick of the file system's clock as the one before
/// it leaves the times unchanged (docs/DESIGN.md, "Known limits").
fn unchanged_since(file: &File, before: &Metadata, path: &Path) -> Result<(), ArchiveError> {
    use std::os::unix::fs::MetadataExt;
    let after = file.metadata().map_err(|source| ArchiveError::Create {
        path: path.to_path_buf(),
        source,
    })?;
    let stamp = |m: &Metadata| (m.len(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec());
    if stamp(&after) != stamp(before) {
        return Err(ArchiveError::Create {
            path: path.to_path_buf(),
            source: io::Error::other(format!(
                "`{}` changed while it was being read (written to meanwhile); snapshot again once \
                 nothing writes to the tree",
                path.display()
            )),
        });
    }
    Ok(())
}

/// The archiving thread's side: turns the messages into tar entries, and manifest entries for
/// the digest.
fn write_entries<W: Write>(
    dir: &Path,
    rx: &Receiver<Msg>,
    builder: &mut tar::Builder<W>,
    report: &mut CreateReport,
    hasher: &mut Option<ManifestHasher>,
    read_wait: &mut Duration,
) -> Result<(), ArchiveError> {
    let err = |rel: &str| {
        let path = dir.join(rel);
        move |source| ArchiveError::Create { path, source }
    };
    let out_of_sequence = || io::Error::other("file content out of sequence");
    loop {
        let t = Instant::now();
        let msg = rx.recv();
        *read_wait += t.elapsed();
        let Ok(msg) = msg else {
            return Ok(());
        };
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        let entry = match msg {
            Msg::Failed(e) => return Err(e),
            Msg::More(_) | Msg::End(_) => return Err(err("")(out_of_sequence())),
            Msg::Dir { rel, mtime } => {
                header.set_mtime(mtime);
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder
                    .append_data(&mut header, &rel, io::empty())
                    .map_err(err(&rel))?;
                report.dirs += 1;
                entry(&rel, EntryKind::Dir, false, 0, None, None)
            }
            Msg::Symlink { rel, target, mtime } => {
                header.set_mtime(mtime);
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder
                    .append_link(&mut header, &rel, &target)
                    .map_err(err(&rel))?;
                report.symlinks += 1;
                entry(&rel, EntryKind::Symlink, false, 0, None, Some(&target))
            }
            Msg::File {
                rel,
                exec,
                size,
                mtime,
                first,
                digest,
            } => {
                header.set_mtime(mtime);
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if exec { 0o755 } else { 0o644 });
                header.set_size(size);
                let mut body = Pieces {
                    rx,
                    current: first,
                    at: 0,
                    left: size,
                    failed: None,
                    read_wait,
                };
                let appended = builder.append_data(&mut header, &rel, &mut body);
                if let Some(e) = body.failed.take() {
                    return Err(e);
                }
                appended.map_err(err(&rel))?;
                let digest = match digest {
                    Some(d) => d,
                    None => match rx.recv() {
                        Ok(Msg::End(d)) => d,
                        Ok(Msg::Failed(e)) => return Err(e),
                        _ => return Err(err(&rel)(out_of_sequence())),
                    },
                };
                report.files += 1;
                report.bytes_in += size;
                let digest = Some(digest.to_hex().to_string());
                entry(&rel, EntryKind::File, exec, size, digest, None)
            }
        };
        if let Some(h) = hasher.as_mut() {
            h.push(&entry).map_err(err(&entry.path))?;
        }
    }
}

/// A file's content as the reading thread sends it: exactly `left` more bytes.
struct Pieces<'a> {
    rx: &'a Receiver<Msg>,
    current: Vec<u8>,
    at: usize,
    left: u64,
    /// Why the content stopped (the reader's error), kept whole for the caller.
    failed: Option<ArchiveError>,
    read_wait: &'a mut Duration,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        if self.at == self.current.len() {
            let t = Instant::now();
            let msg = self.rx.recv();
            *self.read_wait += t.elapsed();
            match msg {
                Ok(Msg::More(piece)) => {
                    self.current = piece;
                    self.at = 0;
                }
                Ok(Msg::Failed(e)) => {
                    let message = e.to_string();
                    self.failed = Some(e);
                    return Err(io::Error::other(message));
                }
                _ => return Err(io::Error::other("file content out of sequence")),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        self.left -= n as u64;
        Ok(n)
    }
}

fn mtime(meta: &Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a file's `stat` says, as a stat cache compares it: a file whose stat is unchanged is
/// taken to hold the bytes it held (docs/DESIGN.md, "Stat cache").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
    pub exec: bool,
}

impl FileStat {
    /// The stat of `meta`.
    pub fn of(meta: &Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Self {
            size: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
            exec: crate::fs::is_executable(meta),
        }
    }
}

/// Says a file's content digest (hex) without reading it, from its path and `lstat`, or `None`
/// to have it read.
pub type Known = dyn Fn(&str, &FileStat) -> Option<String> + Send + Sync;

/// Cuts a file's content (exactly its size) into chunks, for [`read_chunked`].
pub type Chunker = fn(std::io::Take<File>) -> Box<dyn Iterator<Item = io::Result<Vec<u8>>> + Send>;

/// One step of [`read_chunked`], in manifest order.
#[derive(Debug)]
pub enum TreeItem {
    /// A directory.
    Dir { rel: String, mtime: u64 },
    /// A symlink.
    Symlink { rel: String, target: String, mtime: u64 },
    /// A regular file. When `known` (its digest, given by the caller without reading it), no
    /// content follows; otherwise its [`TreeItem::Chunk`]s follow, adding up to `size`, then
    /// [`TreeItem::FileEnd`].
    File {
        rel: String,
        size: u64,
        mtime: u64,
        /// The stat of the opened file (or the `lstat` when it was not read).
        stat: FileStat,
        known: Option<String>,
    },
    /// The next chunk of the current file, with its BLAKE3.
    Chunk { data: Vec<u8>, blake3: blake3::Hash },
    /// The end of the current file, with the BLAKE3 of all of it.
    FileEnd { digest: blake3::Hash },
}

/// Batches in flight from [`read_chunked`]'s reading thread. Items go in batches, so a tree of
/// small files or of files not read costs one hand-over per batch rather than per entry.
const CHUNKED_READ_AHEAD: usize = 4;
/// A batch is handed over once it holds this many items...
const BATCH_ITEMS: usize = 256;
/// ...or this many bytes of content (plus at most one chunk of 1 MiB): at most about 6 MiB is
/// read ahead.
const BATCH_BYTES: usize = 256 << 10;

/// The tree read once, in manifest order, on a thread of its own: [`read_chunked`].
pub struct ChunkedTree {
    rx: Option<Receiver<Result<Vec<TreeItem>, ArchiveError>>>,
    batch: std::vec::IntoIter<TreeItem>,
    reader: Option<std::thread::JoinHandle<Duration>>,
    /// Time the consumer waited for the reading thread.
    pub waited: Duration,
}

/// Reads `dir` once on a thread of its own (listing, the tree rule, reading and hashing), and
/// hands it over entry by entry, in manifest order, through a bounded queue. A file of at least
/// `threshold` bytes comes as content-defined chunks (`chunker`), a smaller one as one chunk; a
/// file `known` gives the digest of is not read. Each file is read exactly as long as its
/// opened handle says, and refused if it changed while it was read (`unchanged_since`).
pub fn read_chunked(
    dir: &Path,
    listing: TreeListing,
    threshold: u64,
    known: Box<Known>,
    chunker: Chunker,
) -> ChunkedTree {
    let (tx, rx) = sync_channel(CHUNKED_READ_AHEAD);
    let dir = dir.to_path_buf();
    let reader = std::thread::spawn(move || {
        let started = Instant::now();
        let mut blocked = Duration::ZERO;
        let mut batch: Vec<TreeItem> = Vec::with_capacity(BATCH_ITEMS);
        let mut batch_bytes = 0;
        let abandoned = || ArchiveError::Create {
            path: dir.clone(),
            source: io::Error::other("the snapshot was abandoned"),
        };
        let walked = {
            let mut send = |item: TreeItem| -> Result<(), ArchiveError> {
                if let TreeItem::Chunk { data, .. } = &item {
                    batch_bytes += data.len();
                }
                batch.push(item);
                if batch.len() < BATCH_ITEMS && batch_bytes < BATCH_BYTES {
                    return Ok(());
                }
                batch_bytes = 0;
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ITEMS));
                let t = Instant::now();
                let sent = tx.send(Ok(full));
                blocked += t.elapsed();
                sent.map_err(|_| abandoned())
            };
            listing.replay(&dir, &mut |visit| match visit.kind {
                Kind::Dir => send(TreeItem::Dir {
                    rel: visit.rel.to_owned(),
                    mtime: visit.mtime,
                }),
                Kind::Symlink(target) => send(TreeItem::Symlink {
                    rel: visit.rel.to_owned(),
                    target: target.to_owned(),
                    mtime: visit.mtime,
                }),
                Kind::File => {
                    let stat = visit.stat;
                    if let Some(digest) = known(visit.rel, &stat) {
                        return send(TreeItem::File {
                            rel: visit.rel.to_owned(),
                            size: stat.size,
                            mtime: visit.mtime,
                            stat,
                            known: Some(digest),
                        });
                    }
                    read_file_chunked(visit.path, visit.rel, threshold, chunker, &mut send)
                }
            })
        };
        let _ = tx.send(Ok(batch));
        if let Err(e) = walked {
            let _ = tx.send(Err(e));
        }
        started.elapsed().saturating_sub(blocked)
    });
    ChunkedTree {
        rx: Some(rx),
        batch: Vec::new().into_iter(),
        reader: Some(reader),
        waited: Duration::ZERO,
    }
}

fn read_file_chunked(
    path: &Path,
    rel: &str,
    threshold: u64,
    chunker: Chunker,
    send: &mut dyn FnMut(TreeItem) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    let err = |source| ArchiveError::Create {
        path: path.to_path_buf(),
        source,
    };
    let mut file = open(path)?;
    let meta = file.metadata().map_err(err)?;
    let size = meta.len();
    send(TreeItem::File {
        rel: rel.to_owned(),
        size,
        mtime: mtime(&meta),
        stat: FileStat::of(&meta),
        known: None,
    })?;
    let mut whole = blake3::Hasher::new();
    if size < threshold {
        let data = read_piece(&mut file, usize::try_from(size).unwrap_or(usize::MAX), path)?;
        unchanged_since(&file, &meta, path)?;
        let digest = blake3::hash(&data);
        if !data.is_empty() {
            send(TreeItem::Chunk { data, blake3: digest })?;
        }
        return send(TreeItem::FileEnd { digest });
    }
    // Only the first `size` bytes, as the header promises; fewer means the file shrank.
    let handle = file
        .try_clone()
        .map_err(|e| err(crate::fs::annotate(e, "read", path)))?;
    let mut got = 0u64;
    for chunk in chunker(handle.take(size)) {
        let data = chunk.map_err(|e| err(crate::fs::annotate(e, "read", path)))?;
        got += data.len() as u64;
        whole.update(&data);
        let digest = blake3::hash(&data);
        send(TreeItem::Chunk { data, blake3: digest })?;
    }
    if got != size {
        return Err(err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("`{}` shrank while it was being archived", path.display()),
        )));
    }
    unchanged_since(&file, &meta, path)?;
    send(TreeItem::FileEnd {
        digest: whole.finalize(),
    })
}

impl ChunkedTree {
    /// The reading thread's busy time (not counting the time it waited for room in the queue);
    /// stops it first if it is still running.
    pub fn finish(mut self) -> Duration {
        self.stop()
    }

    fn stop(&mut self) -> Duration {
        // Dropping the receiver makes the reader's next send fail, so it stops.
        self.rx = None;
        self.reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or(Duration::ZERO)
    }
}

impl Iterator for ChunkedTree {
    type Item = Result<TreeItem, ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.batch.next() {
                return Some(Ok(item));
            }
            let t = Instant::now();
            let batch = self.rx.as_ref()?.recv().ok();
            self.waited += t.elapsed();
            match batch? {
                Ok(batch) => self.batch = batch.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl Drop for ChunkedTree {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_while_a_file_is_read_is_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, b"before").unwrap();
        let file = File::open(&path).unwrap();
        let before = file.metadata().unwrap();
        assert!(unchanged_since(&file, &before, &path).is_ok());
        // What a writer does meanwhile: new bytes, at a later tick of the file system's clock.
        std::fs::write(&path, b"after!").unwrap();
        let writer = File::options().write(true).open(&path).unwrap();
        writer
            .set_modified(before.modified().unwrap() + Duration::from_secs(1))
            .unwrap();
        let err = unchanged_since(&file, &before, &path).unwrap_err().to_string();
        assert!(err.contains("changed while it was being read"), "{err}");
    }
}
