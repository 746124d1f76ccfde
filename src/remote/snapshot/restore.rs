//! [`restore`]: replace a directory with the snapshot of a key, atomically, within a deadline.
//!
//! A format-2 snapshot (docs/DESIGN.md, "Restore") is read from its segments, checked against
//! the tree digest ([`super::fetch`]), built from the content this machine already holds (DIR's
//! current files, the local store: [`super::seeds`]) and the pack frames fetched for the rest
//! ([`super::build`]), then synced and swapped in.
//!
//! A format-1 snapshot (one whole archive) is streamed: the ranged parallel download hands its
//! parts over in order through a bounded pipe ([`super::download_pipe`]) to an extraction
//! thread, which decompresses them and writes the files into the stage (several writer
//! threads, [`crate::archive::extract_tar_stream`]) while later parts are still arriving. The
//! archive's BLAKE3 is computed as the bytes pass; the stage is swapped in only once it matched
//! and the tree is the one the manifest describes.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::build;
use super::download_pipe::{self, Cancel, PipeReader, PipeWriter};
use super::fetch;
use super::format::{
    AnyManifest, ArchiveManifest, PackedManifest, manifest_key, parse_manifest, parse_pointer, pointer_key,
};
use super::seeds::Seeds;
use super::stat::{self, SegmentCache, StatCache};
use super::{
    Phase, RestoreOptions, RestorePhases, RestoreReport, RestoreStatus, Result, SnapshotError,
    SnapshotProgress,
};
use crate::archive::{self, Format, Limits, Trust};
use crate::build::fingerprint::RACY_WINDOW;
use crate::place::{Stage, StagedKind};
use crate::remote::{Remote, RemoteError, RemoteUrl};

/// Downloaded parts queued for the extraction thread, besides the parts in flight (at most
/// [`crate::remote::RemoteSettings::parallelism`]) and the one being decompressed: one more
/// lets the download run ahead while a part is decompressed, and memory stays bounded by
/// `(parallelism + 2) * part_size` whatever the archive's size.
const PIPE_PARTS: usize = 1;

/// The largest part a restore downloads. Extraction, not the download, is what a restore
/// usually waits on, so parts fetched ahead of it only cost memory: with the default
/// parallelism of 4, parts of 2 MiB hold about 12 MiB of archive in memory at most, and a
/// restore of a 600 MB tree peaks near 45 MiB (with 8 MiB parts, 48 MiB of archive and near
/// 80 MiB). Four 2 MiB ranged requests in flight still download faster than files can be
/// created from them.
const MAX_PART: usize = 2 << 20;

/// How long a restore that failed or ran out of time waits for its extraction thread to stop
/// and remove the partial stage (usually milliseconds: the thread stops at its next read).
const CLEANUP_GRACE: Duration = Duration::from_secs(2);

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Replaces `dir` with the snapshot at `url`: pointer, manifest, then a ranged parallel download
/// streamed into the decompressor and the safe extraction into a staging directory next to `dir`
/// while it arrives, verified against the manifest's BLAKE3 as it passes, then one `syncfs` and
/// one atomic swap ([`crate::place`]: exchange when `dir` exists, rename otherwise). Nothing is
/// downloaded when `dir` already holds the snapshot's tree.
///
/// On any failure (a digest that does not match, a server that stops mid-stream, a tree that
/// is not the manifest's), and when [`RestoreOptions::timeout`] runs out (the bound covers the
/// whole operation: reading the pointer, downloading and extracting), `dir` is untouched and
/// staging is removed (by the extraction thread once it stops, if the time ran out while it
/// worked).
///
/// With [`RestoreOptions::fallbacks`] (docs/DESIGN.md, "Fallback keys"), a key that holds no
/// snapshot yet is followed by the next, in order: the first key holding one is restored
/// ([`RestoreReport::matched`], [`RestoreReport::exact`]). A remote error at a key (unreachable,
/// damaged, timed out) ends the search with that error instead of falling through, so a broken
/// key is reported rather than hidden behind an older snapshot. The whole search shares one
/// deadline. A restore from a fallback leaves the stat cache of DIR and `url` (the exact key)
/// and a note of the snapshot it restored, so the exact key's next snapshot reads no unchanged
/// file and builds on the fallback's packs (copied on the server, see [`super::snapshot`]).
pub fn restore(
    dir: &Path,
    url: &RemoteUrl,
    options: &RestoreOptions,
    progress: Arc<dyn SnapshotProgress>,
) -> Result<RestoreReport> {
    let (dir, exists) = check_destination(dir)?;
    let started = Instant::now();
    let timeout = options.timeout.unwrap_or(options.settings.overall_timeout);
    let deadline = started + timeout;
    let stat_path = stat_path(&dir, url, options);
    let mut report = RestoreReport {
        status: RestoreStatus::NoSnapshot,
        dir: dir.clone(),
        url: url.to_string(),
        matched: None,
        exact: false,
        digest: None,
        files: 0,
        bytes: 0,
        downloaded_bytes: 0,
        seeded_bytes: 0,
        fetched_chunks: 0,
        elapsed_ms: 0,
        phases: RestorePhases::default(),
    };
    let keys: Vec<&RemoteUrl> = std::iter::once(url).chain(&options.fallbacks).collect();
    for (i, key) in keys.into_iter().enumerate() {
        // Every key gets what is left of the one deadline; strictness is judged once all were
        // tried.
        let attempt = RestoreOptions {
            strict: false,
            ..options.clone()
        };
        // An error at a fallback key names that key: it is the one to repair.
        let at_key = |e: SnapshotError| match i {
            0 => e,
            _ if e.is_local() => e,
            _ => SnapshotError::AtFallback {
                key: key.to_string(),
                source: Box::new(e),
            },
        };
        let run = Restore::new(dir.clone(), key, &attempt, deadline, stat_path.clone()).map_err(at_key)?;
        let mut tried = RestoreReport {
            status: RestoreStatus::Restored,
            url: url.to_string(),
            matched: Some(key.to_string()),
            exact: i == 0,
            ..report.clone()
        };
        let status = run.run(exists, &attempt, &progress, &mut tried).map_err(at_key)?;
        tried.status = status;
        report = tried;
        if status == RestoreStatus::NoSnapshot {
            report.matched = None;
            report.exact = false;
            continue;
        }
        if let Some(stat_path) = &stat_path {
            let seed =
                (i > 0).then(|| stat::Seed::new(key.to_string(), report.digest.clone().unwrap_or_default()));
            stat::Seed::record(stat_path, seed.as_ref());
        }
        break;
    }
    if options.strict && report.status == RestoreStatus::NoSnapshot {
        let remote = Remote::new(url, options.settings.clone())?;
        let mut target = remote.describe(&pointer_key(url));
        if !options.fallbacks.is_empty() {
            let others: Vec<String> = options.fallbacks.iter().map(ToString::to_string).collect();
            target = format!("{target} (nor at the fallback keys {})", others.join(", "));
        }
        return Err(SnapshotError::NoSnapshot { target, dir });
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report.phases.wall_ms = report.elapsed_ms;
    Ok(report)
}

/// The stat cache `snapshot` keeps for DIR and URL (and a restore leaves for it): DIR by its
/// canonical path (or its parent's, when DIR does not exist yet), as `snapshot` names it.
fn stat_path(dir: &Path, url: &RemoteUrl, options: &RestoreOptions) -> Option<PathBuf> {
    options.store_root.as_ref().map(|root| {
        let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| {
            match (dir.parent().map(std::fs::canonicalize), dir.file_name()) {
                (Some(Ok(parent)), Some(name)) => parent.join(name),
                _ => dir.to_path_buf(),
            }
        });
        crate::layout::Layout::new(root).snapshot_stat(&canonical, &url.to_string())
    })
}

/// The restore's deadline, which bounds every step (one client, [`Remote::with_deadline`], for
/// the remote ones), and the error that says it ran out.
struct Clock {
    dir: PathBuf,
    url: String,
    timeout: Duration,
    deadline: Instant,
}

impl Clock {
    fn timed_out(&self, phase: &'static str) -> SnapshotError {
        SnapshotError::TimedOut {
            dir: self.dir.clone(),
            url: self.url.clone(),
            timeout: self.timeout,
            phase,
        }
    }

    /// Fails when the time is up before `phase` starts.
    fn check(&self, phase: &'static str) -> Result<()> {
        if Instant::now() >= self.deadline {
            return Err(self.timed_out(phase));
        }
        Ok(())
    }

    /// A remote error, or the restore's time running out while waiting for the remote (or for
    /// the extraction to take the downloaded bytes).
    fn remote_err(&self, e: RemoteError) -> SnapshotError {
        match e {
            RemoteError::TimedOut { .. } if Instant::now() >= self.deadline => {
                self.timed_out("waiting for the remote")
            }
            RemoteError::Io { ref source, .. } if source.kind() == io::ErrorKind::TimedOut => {
                self.timed_out("extracting")
            }
            e => SnapshotError::Remote(e),
        }
    }

    /// [`Self::remote_err`] for a remote error already wrapped.
    fn remote_or(&self, e: SnapshotError) -> SnapshotError {
        match e {
            SnapshotError::Remote(e) => self.remote_err(e),
            e => e,
        }
    }
}

/// One restore: where, from where, its deadline, and the stage beside DIR.
struct Restore<'a> {
    dir: PathBuf,
    url: &'a RemoteUrl,
    started: Instant,
    /// When the restore started, in nanoseconds since the epoch: the recording time of the stat
    /// cache it leaves (every file's state is taken after it).
    started_ns: i64,
    /// The stat cache of DIR and the exact key (the URL asked for, even when this restores a
    /// fallback), beside which the segment cache is
    /// ([`crate::layout::Layout::snapshot_stat`]; `None`: no cache root).
    stat_path: Option<PathBuf>,
    clock: Clock,
    remote: Remote,
    stage: Stage,
}

impl<'a> Restore<'a> {
    fn new(
        dir: PathBuf,
        url: &'a RemoteUrl,
        options: &RestoreOptions,
        deadline: Instant,
        stat_path: Option<PathBuf>,
    ) -> Result<Self> {
        let started = Instant::now();
        let started_ns = stat::now_ns();
        // The whole restore's bound (for messages), and what is left of it for this key.
        let timeout = options.timeout.unwrap_or(options.settings.overall_timeout);
        let left = deadline.saturating_duration_since(started);
        let stage = Stage::beside(&dir)?;
        // Creating the staging directory now checks that DIR's directory is writable before
        // anything is downloaded; dropping the stage removes it.
        fs_err::create_dir(stage.path()).map_err(|source| SnapshotError::NotWritable {
            path: dir.clone(),
            parent: stage.parent().to_path_buf(),
            source,
        })?;
        let mut settings = options.settings.clone();
        settings.overall_timeout = settings.overall_timeout.min(left.max(Duration::from_millis(1)));
        settings.part_size = settings.part_size.clamp(1, MAX_PART);
        let remote = Remote::new(url, settings)?.with_deadline(deadline);
        let clock = Clock {
            dir: dir.clone(),
            url: url.to_string(),
            timeout,
            deadline,
        };
        Ok(Self {
            dir,
            url,
            started,
            started_ns,
            stat_path,
            clock,
            remote,
            stage,
        })
    }

    /// Pointer and manifest, then the path of the manifest's format: a format-2 snapshot is
    /// built from seeds and fetched frames ([`Self::run_packed`]); a format-1 one is streamed
    /// whole ([`Self::run_archive`]). A pack missing on the server (collected by the remote gc
    /// after the pointer was read) makes it read the pointer once more and start again.
    fn run(
        self,
        exists: bool,
        options: &RestoreOptions,
        progress: &Arc<dyn SnapshotProgress>,
        report: &mut RestoreReport,
    ) -> Result<RestoreStatus> {
        let mut again = true;
        loop {
            let Some((manifest, target)) = self.read_snapshot(options.strict, report)? else {
                report.phases.lookup_ms = ms(self.started.elapsed());
                return Ok(report.status);
            };
            let manifest = match manifest {
                AnyManifest::Archive(manifest) => {
                    if exists && holds(&self.dir, &manifest.digest, progress) {
                        report.phases.lookup_ms = ms(self.started.elapsed());
                        return Ok(RestoreStatus::Unchanged);
                    }
                    report.phases.lookup_ms = ms(self.started.elapsed());
                    return self.run_archive(manifest, options, progress, report);
                }
                AnyManifest::Packed(manifest) => manifest,
            };
            match self.run_packed(manifest, &target, exists, options, progress, report) {
                Ok((true, tree)) => {
                    remember(&self.dir, self.stat_path.as_deref(), self.started_ns, &tree);
                    return Ok(RestoreStatus::Unchanged);
                }
                Ok((false, tree)) => {
                    let (dir, stat_path, started_ns) =
                        (self.dir.clone(), self.stat_path.clone(), self.started_ns);
                    let status = self.finish(report)?;
                    remember(&dir, stat_path.as_deref(), started_ns, &tree);
                    return Ok(status);
                }
                Err(e) if again && build::is_missing_pack(&e) => {
                    tracing::info!("{e}; reading the pointer again (the remote gc may have collected it)");
                    again = false;
                    self.empty_stage()?;
                }
                Err(e) => return Err(self.clock.remote_or(e)),
            }
        }
    }

    /// Empties the stage for a second attempt.
    fn empty_stage(&self) -> Result<()> {
        let local = |source| SnapshotError::Local {
            path: self.dir.clone(),
            source,
        };
        crate::fs::remove_tree(self.stage.path()).map_err(local)?;
        fs_err::create_dir(self.stage.path()).map_err(local)
    }

    /// A format-2 snapshot: segments checked against the digest, seeds from DIR and the local
    /// store, then the rest fetched and the tree built in the stage. `true` when DIR already
    /// holds the tree (nothing fetched but the segments, nothing changed); and the tree.
    fn run_packed(
        &self,
        manifest: PackedManifest,
        target: &str,
        exists: bool,
        options: &RestoreOptions,
        progress: &Arc<dyn SnapshotProgress>,
        report: &mut RestoreReport,
    ) -> Result<(bool, fetch::Tree)> {
        self.clock.check("reading the snapshot's segments")?;
        let kept = self
            .stat_path
            .as_deref()
            .map(SegmentCache::load)
            .unwrap_or_default();
        let tree = fetch::read_tree(&self.remote, self.url, manifest, target, &kept)?;
        drop(kept);
        report.downloaded_bytes = tree.fetched;
        report.phases.lookup_ms = ms(self.started.elapsed());

        self.clock.check("looking for content on this machine")?;
        let seeding = Instant::now();
        progress.phase(Phase::Hashing, None);
        let position = |bytes| progress.position(bytes);
        let mut seeds = if exists {
            let stats = self.stat_path.as_deref().map(StatCache::load).unwrap_or_default();
            let known = |rel: &str, stat: &archive::FileStat| stats.digest(rel, stat);
            Seeds::scan_dir(&self.dir, &tree.entries, &known, &position)
        } else {
            Seeds::default()
        };
        if seeds.unchanged {
            report.phases.seed_ms = ms(seeding.elapsed());
            return Ok((true, tree));
        }
        if let Some(root) = &options.store_root {
            let wanted = tree
                .entries
                .iter()
                .filter(|e| e.size > 0)
                .filter_map(|e| e.digest.as_ref().map(|d| (e, d)))
                .filter(|(_, d)| seeds.get(d).is_none())
                .map(|(e, d)| (d.clone(), e.size))
                .collect();
            seeds.scan_store(root, &wanted);
        }
        report.phases.seed_ms = ms(seeding.elapsed());

        self.clock.check("downloading")?;
        let counted = Counted {
            inner: progress.clone(),
            done: AtomicU64::new(0),
        };
        let cx = build::BuildContext {
            remote: &self.remote,
            url: self.url,
            dir: &self.dir,
            stage: self.stage.path(),
            min_free: options.min_free,
            progress: &counted,
            mtime: restored_mtime(tree.manifest.created_at_ms, self.started_ns),
        };
        let built = build::build(&cx, &tree, &seeds)?;
        report.downloaded_bytes += built.downloaded_bytes;
        report.seeded_bytes = built.seeded_bytes;
        report.fetched_chunks = built.fetched_chunks;
        report.phases.seed_ms += ms(built.seed_copy);
        report.phases.download_ms = ms(built.download);
        report.phases.extract_ms = ms(built.extract);
        report.phases.download_wait_ms = ms(built.wait).min(report.phases.extract_ms);
        report.phases.decompress_ms =
            ms(built.decompress).min(report.phases.extract_ms - report.phases.download_wait_ms);
        report.phases.write_ms =
            report.phases.extract_ms - report.phases.download_wait_ms - report.phases.decompress_ms;
        tracing::debug!("{} files linked from {}", built.files_linked, self.dir.display());
        Ok((false, tree))
    }

    /// Makes the staged tree durable and swaps it in.
    fn finish(self, report: &mut RestoreReport) -> Result<RestoreStatus> {
        self.clock.check("making the new tree durable")?;
        let synced = Instant::now();
        self.stage.make_durable(StagedKind::Tree)?;
        report.phases.sync_ms = ms(synced.elapsed());
        self.clock.check("making the new tree durable")?;
        // Before the swap DIR is the old tree, after it the new one, complete and durable; the
        // old tree is removed with the stage.
        let swapped = Instant::now();
        self.stage.swap()?;
        report.phases.swap_ms = ms(swapped.elapsed());
        Ok(RestoreStatus::Restored)
    }

    /// A format-1 snapshot: download and extraction overlapped, durability, swap.
    fn run_archive(
        self,
        manifest: ArchiveManifest,
        options: &RestoreOptions,
        progress: &Arc<dyn SnapshotProgress>,
        report: &mut RestoreReport,
    ) -> Result<RestoreStatus> {
        self.clock.check("downloading")?;
        let key = self.url.join(&manifest.archive);
        let target = self.remote.describe(&key);
        let (writer, reader) = download_pipe::pipe(PIPE_PARTS, self.clock.deadline);
        let downloaded = Arc::new(AtomicBool::new(false));
        let job = Extraction {
            min_free: options.min_free,
            stage: self.stage,
            reader,
            manifest,
            target,
            dir: self.dir.clone(),
            downloaded: downloaded.clone(),
        };
        let manifest = job.manifest.clone();
        let extraction = start_extraction(job, progress.clone())?;

        let download_started = Instant::now();
        let got = download(&self.remote, &key, &manifest, writer, progress.clone());
        report.phases.download_ms = ms(download_started.elapsed());
        let got = match got {
            Ok(bytes) => bytes,
            Err((e, extraction_stopped)) => {
                if extraction_stopped && !matches!(e, RemoteError::DigestMismatch { .. }) {
                    // The extraction failed first (a hostile entry, a full disk): that is the
                    // cause, the download only stopped because of it. The thread removed the
                    // stage before reporting.
                    if let Some(Err(cause)) = extraction.wait(Instant::now() + CLEANUP_GRACE) {
                        return Err(cause);
                    }
                }
                // The extraction thread sees the failure at its next read and removes the stage.
                extraction.abandon("the download failed");
                return Err(self.clock.remote_err(e));
            }
        };
        report.downloaded_bytes = got;
        downloaded.store(true, Ordering::Release);
        progress.phase(Phase::Extracting, Some(manifest.bytes));

        let (stage, times) = match extraction.wait(self.clock.deadline) {
            Some(result) => result?,
            None => {
                extraction.abandon("the restore ran out of time");
                return Err(self.clock.timed_out("extracting"));
            }
        };
        report.phases.decompress_ms = ms(times.decompress);
        report.phases.download_wait_ms = ms(times.input_wait);
        report.phases.extract_ms = ms(times.wall);
        report.phases.write_ms = ms(times.wall.saturating_sub(times.decompress + times.input_wait));

        self.clock.check("making the new tree durable")?;
        let synced = Instant::now();
        stage.make_durable(StagedKind::Tree)?;
        report.phases.sync_ms = ms(synced.elapsed());
        self.clock.check("making the new tree durable")?;
        let swapped = Instant::now();
        stage.swap()?;
        report.phases.swap_ms = ms(swapped.elapsed());
        Ok(RestoreStatus::Restored)
    }

    /// Reads the pointer and the manifest it names (and the manifest's name, for messages).
    /// `None` (with the report's status set) when there is no snapshot yet.
    fn read_snapshot(
        &self,
        strict: bool,
        report: &mut RestoreReport,
    ) -> Result<Option<(AnyManifest, String)>> {
        self.clock.check("reading the pointer")?;
        let pointer_key = pointer_key(self.url);
        let Some(bytes) = self
            .remote
            .get_bytes(&pointer_key)
            .map_err(|e| self.clock.remote_err(e))?
        else {
            // S3 answers a GET in a bucket that does not exist with a 404, as for a missing
            // object: one listing tells a new key (an empty listing) from a wrong bucket (an
            // error naming it), so a typo is reported instead of looking like a first run.
            self.remote
                .list(&self.url.join(""), 1)
                .map_err(|e| self.clock.remote_err(e))?;
            if strict {
                return Err(SnapshotError::NoSnapshot {
                    target: self.remote.describe(&pointer_key),
                    dir: self.dir.clone(),
                });
            }
            report.status = RestoreStatus::NoSnapshot;
            return Ok(None);
        };
        let pointer = parse_pointer(&bytes).map_err(|e| SnapshotError::BadObject {
            target: self.remote.describe(&pointer_key),
            reason: e.to_string(),
        })?;
        report.digest = Some(pointer.digest.clone());
        report.files = pointer.files;
        report.bytes = pointer.bytes;

        self.clock.check("reading the snapshot manifest")?;
        let manifest_key = manifest_key(self.url, &pointer.digest);
        let target = self.remote.describe(&manifest_key);
        let bytes = self
            .remote
            .get_bytes(&manifest_key)
            .map_err(|e| self.clock.remote_err(e))?
            .ok_or_else(|| SnapshotError::BadObject {
                target: target.clone(),
                reason: "the pointer names a snapshot whose manifest is missing".to_owned(),
            })?;
        let manifest =
            parse_manifest(&bytes, &pointer.digest).map_err(|reason| SnapshotError::BadObject {
                target: target.clone(),
                reason,
            })?;
        Ok(Some((manifest, target)))
    }
}

/// Milliseconds, for the report.
fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Streams the archive into `writer`, verified against the manifest's size and BLAKE3; returns
/// its size. Only a verified download finishes the pipe (the extraction's stream then ends);
/// otherwise it fails, so the extraction fails too. The error comes with whether the extraction
/// had already stopped (then the download only failed because of it).
fn download(
    remote: &Remote,
    key: &str,
    manifest: &ArchiveManifest,
    writer: PipeWriter,
    progress: Arc<dyn SnapshotProgress>,
) -> Result<u64, (RemoteError, bool)> {
    let counted = Counted {
        inner: progress,
        done: AtomicU64::new(0),
    };
    let mut sink = |piece| writer.push(piece);
    let got = remote.get_streamed(
        key,
        manifest.archive_bytes,
        &manifest.archive_blake3,
        &mut sink,
        &counted,
    );
    match got {
        Ok(got) => {
            writer.finish();
            Ok(got.bytes)
        }
        Err(e) => {
            let stopped = writer.reader_gone();
            writer.fail(e.to_string());
            Err((e, stopped))
        }
    }
}

/// Whether `dir` already holds the tree of `digest`. A tree that cannot be described (a socket
/// in it, an unreadable file) is simply not the snapshot: it gets replaced.
fn holds(dir: &Path, digest: &str, progress: &Arc<dyn SnapshotProgress>) -> bool {
    progress.phase(Phase::Hashing, None);
    let hashing = {
        let progress = progress.clone();
        crate::progress::Progress::new(move |bytes, _| progress.position(bytes))
    };
    match crate::store::describe_tree(dir, &hashing) {
        Ok(local) => local.id.as_str() == digest,
        Err(e) => {
            tracing::debug!("`{}` will be replaced: {e}", dir.display());
            false
        }
    }
}

/// What the extraction thread owns: if the caller gives up, dropping it removes the stage.
struct Extraction {
    /// The free-space reserve asked for (`None`: the proportional default).
    min_free: Option<u64>,
    stage: Stage,
    /// The archive's bytes, as the download hands them over.
    reader: PipeReader,
    manifest: ArchiveManifest,
    target: String,
    dir: PathBuf,
    /// Set once the download is complete and verified: extraction progress is shown from then
    /// on (before, the bar shows the download, which leads).
    downloaded: Arc<AtomicBool>,
}

/// Where the extraction thread's time went.
#[derive(Debug, Clone, Copy, Default)]
struct ExtractTimes {
    /// From its start to the last file written.
    wall: Duration,
    /// In the zstd decoder, waits for input excluded.
    decompress: Duration,
    /// Waiting for the download.
    input_wait: Duration,
}

/// The extraction thread's result: the stage, complete, and where its time went.
type Extracted = Result<(Stage, ExtractTimes)>;

/// The running extraction thread.
struct Running {
    rx: mpsc::Receiver<Extracted>,
    cancel: Cancel,
}

impl Running {
    /// The extraction's result, or `None` if `deadline` passes first (see [`Running::abandon`]).
    fn wait(&self, deadline: Instant) -> Option<Extracted> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.rx.recv_timeout(left).ok()
    }

    /// Gives up on the extraction: its stream fails at its next read, so the thread stops
    /// and removes the stage. Waits [`CLEANUP_GRACE`] at most for that, so nothing is left
    /// beside DIR when the process exits; past it, the next restore or import in that
    /// directory sweeps what is left (docs/DESIGN.md, "Restore").
    fn abandon(self, why: &str) {
        self.cancel.cancel(why);
        let _ = self.rx.recv_timeout(CLEANUP_GRACE);
    }
}

/// Extracts on a thread of its own, so the download runs meanwhile and the caller can give up
/// at its deadline (extraction has no way to be interrupted). The thread owns the stage, so if
/// the caller gives up it removes the stage itself when it stops; DIR is only touched by the
/// caller, after a timely result.
fn start_extraction(job: Extraction, progress: Arc<dyn SnapshotProgress>) -> Result<Running> {
    let (tx, rx) = mpsc::channel();
    let cancel = job.reader.canceller();
    std::thread::Builder::new()
        .name("warmcache-restore".to_owned())
        .spawn(move || {
            let Extraction {
                min_free,
                stage,
                reader,
                manifest,
                target,
                dir,
                downloaded,
            } = job;
            let on_progress = |p: archive::Progress| {
                if downloaded.load(Ordering::Acquire) {
                    progress.position(p.bytes);
                }
            };
            let checked = Checked {
                min_free,
                tree: stage.path(),
                manifest: &manifest,
                target: &target,
                dir: &dir,
            };
            let result = checked.extract(reader, &on_progress);
            // On an error the stage is dropped (removed) here, before the caller hears of it; if
            // the caller gave up, the result (and with it the stage) is dropped at the send.
            let _ = tx.send(result.map(|times| (stage, times)));
        })
        .map_err(|source| SnapshotError::Local {
            path: PathBuf::from("(extraction thread)"),
            source,
        })?;
    Ok(Running { rx, cancel })
}

/// One extraction into the stage's tree, checked against the manifest.
struct Checked<'a> {
    min_free: Option<u64>,
    tree: &'a Path,
    manifest: &'a ArchiveManifest,
    target: &'a str,
    dir: &'a Path,
}

impl Checked<'_> {
    /// Decompresses and extracts the archive as it arrives, checking it is the tree the
    /// manifest promised.
    fn extract(
        &self,
        reader: PipeReader,
        on_progress: &(dyn Fn(archive::Progress) + Sync),
    ) -> Result<ExtractTimes> {
        let verdict = reader.verdict();
        let result = self.extract_verified(reader, on_progress);
        let suspect = match &result {
            Err(SnapshotError::Extract { source, .. }) => is_suspect(source),
            Err(SnapshotError::BadObject { .. }) => true,
            _ => false,
        };
        if suspect {
            // Undecodable or unsafe content in our own, digest-checked format means damaged
            // bytes far more likely than a bad snapshot: the digest, known once the download
            // ends, decides which error is reported.
            verdict.suspect();
        }
        result
    }

    fn extract_verified(
        &self,
        mut reader: PipeReader,
        on_progress: &(dyn Fn(archive::Progress) + Sync),
    ) -> Result<ExtractTimes> {
        let started = Instant::now();
        let waited = reader.waited();
        let Checked {
            min_free,
            tree,
            manifest,
            target,
            dir,
        } = self;
        let extract_err = |source| SnapshotError::Extract {
            target: (*target).to_owned(),
            dir: dir.to_path_buf(),
            source: Box::new(source),
        };
        let stream_err = |source: io::Error| SnapshotError::Extract {
            target: (*target).to_owned(),
            dir: dir.to_path_buf(),
            source: Box::new(archive::ArchiveError::Open {
                archive: PathBuf::from(*target),
                source,
            }),
        };
        // The manifest says what the archive is; the magic bytes must agree.
        let mut magic = [0u8; 4];
        let n = archive::fill(&mut reader, &mut magic).map_err(stream_err)?;
        if magic[..n] != ZSTD_MAGIC {
            return Err(SnapshotError::BadObject {
                target: (*target).to_owned(),
                reason: "not a tar.zst archive (it does not start with a zstd frame)".to_owned(),
            });
        }
        let decoder = zstd::Decoder::new(io::Cursor::new(magic).chain(reader)).map_err(stream_err)?;
        let mut decoder = Timed {
            inner: decoder,
            busy: Duration::ZERO,
        };
        // Our own format, verified against the manifest's digest as it streams: the tree rule
        // alone applies (docs/DESIGN.md, "What one side writes, the other reads"), so whatever
        // `snapshot` uploaded restores, and the bounds are what the manifest declares rather than
        // the defaults for untrusted archives.
        let limits = Limits {
            max_total_bytes: manifest.bytes.saturating_add(tar_overhead(manifest)),
            max_entries: (manifest.files + manifest.dirs + manifest.symlinks).saturating_add(1),
            max_ratio: u64::MAX,
            ratio_grace_bytes: u64::MAX,
            min_free_bytes: *min_free,
            trust: Trust::Own,
        };
        let extracted = archive::extract_tar_stream(
            &mut decoder,
            Path::new(target),
            Format::TarZst,
            manifest.archive_bytes,
            tree,
            &limits,
            on_progress,
        )
        .map_err(extract_err)?;
        // The archive's bytes were verified (its stream only ends once they are); its content
        // must also be what the manifest promised.
        if (extracted.files, extracted.bytes, extracted.symlinks)
            != (manifest.files, manifest.bytes, manifest.symlinks)
        {
            return Err(SnapshotError::BadObject {
                target: (*target).to_owned(),
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
        let input_wait = waited.get();
        Ok(ExtractTimes {
            wall: started.elapsed(),
            decompress: decoder.busy.saturating_sub(input_wait),
            input_wait,
        })
    }
}

/// Whether an extraction error says the archive's bytes make no sense (rather than that this
/// machine could not write them: a write error, the free-space reserve).
fn is_suspect(e: &archive::ArchiveError) -> bool {
    use archive::{ArchiveError as E, LimitExceeded};
    match e {
        E::Write { .. } | E::Open { .. } | E::Refused { .. } | E::Create { .. } => false,
        E::Limit { limit, .. } => !matches!(limit, LimitExceeded::FreeSpace { .. }),
        E::NotAnArchive { .. } | E::Corrupt { .. } | E::Unsafe { .. } | E::Unsupported { .. } => true,
    }
}

/// A reader that adds up the time/// A reader that adds up the time spent in it (the decoder's: decompressing, and waiting for
/// its input).
struct Timed<R> {
    inner: R,
    busy: Duration,
}

impl<R: Read> Read for Timed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let started = Instant::now();
        let n = self.inner.read(buf);
        self.busy += started.elapsed();
        n
    }
}

/// What tar adds to a tree's bytes (headers, padding, the end marker), which extraction counts
/// too.
fn tar_overhead(manifest: &ArchiveManifest) -> u64 {
    (manifest.files + manifest.dirs + manifest.symlinks)
        .saturating_add(2)
        .saturating_mul(1024)
        .saturating_add(1 << 20)
}

/// The modification time of the files a restore writes: the snapshot's creation time, but at
/// least twice [`RACY_WINDOW`] before the restore started. Then the stat cache the restore
/// leaves (recorded at its start) trusts them, and a later write, which sets the time to the
/// present, always shows in their stat (docs/DESIGN.md, "Restore").
fn restored_mtime(created_at_ms: i64, started_ns: i64) -> std::time::SystemTime {
    let window = 2 * RACY_WINDOW.as_nanos() as i64;
    let ns = created_at_ms
        .saturating_mul(1_000_000)
        .min(started_ns.saturating_sub(window))
        .max(0);
    std::time::UNIX_EPOCH + Duration::from_nanos(ns as u64)
}

/// Leaves the stat cache and the segment cache of DIR and URL as a snapshot of the restored
/// tree would (docs/DESIGN.md, "Restore"): each file's stat, taken now (after the swap: the
/// removal of the old tree changes the ctime of the files linked from it), with the digest the
/// restore verified, recorded at the restore's start, so a file written since is racy and read
/// again; and the snapshot's segments. Best effort, like the snapshot's: a failure only costs
/// the next snapshot reading the files.
fn remember(dir: &Path, stat_path: Option<&Path>, recorded_at_ns: i64, tree: &fetch::Tree) {
    let Some(stat_path) = stat_path else { return };
    let mut writer = stat::LocalWriter::new(Some(stat_path));
    for entry in tree
        .entries
        .iter()
        .filter(|e| e.kind == crate::store::EntryKind::File)
    {
        let Some(digest) = entry
            .digest
            .as_deref()
            .and_then(|d| blake3::Hash::from_hex(d).ok())
        else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(dir.join(&entry.path)) else {
            continue;
        };
        if meta.is_file() {
            let stat = archive::FileStat::of(&meta);
            writer.push(
                &entry.path,
                &stat::StatEntry {
                    stat,
                    digest: *digest.as_bytes(),
                },
            );
        }
    }
    for (blake3, payload) in &tree.segments {
        writer.segment(blake3, payload);
    }
    writer.finish(recorded_at_ns);
}

/// Forwards download progress as a running total.
struct Counted {
    inner: Arc<dyn SnapshotProgress>,
    done: AtomicU64,
}

impl crate::remote::Progress for Counted {
    fn start(&self, total: Option<u64>) {
        self.inner.phase(Phase::Downloading, total);
    }

    fn advance(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.inner.position(done);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::NoProgress;

    /// An extraction job for a small tree staged beside `tmp/dest`, and the archive's bytes.
    fn job(tmp: &Path, deadline: Instant) -> (Extraction, PipeWriter, Vec<u8>, PathBuf) {
        let src = tmp.join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        for i in 0..200u32 {
            std::fs::write(src.join(format!("a/b/f{i}")), i.to_le_bytes().repeat(2000)).unwrap();
        }
        let dir = tmp.join("dest");
        let stage = Stage::beside(&dir).unwrap();
        std::fs::create_dir(stage.path()).unwrap();
        let mut archive = Vec::new();
        let created = archive::create_tar_zst(&src, &mut archive, 3).unwrap();
        let manifest = ArchiveManifest {
            version: super::super::ARCHIVE_MANIFEST_VERSION,
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
        let (writer, reader) = download_pipe::pipe(PIPE_PARTS, deadline);
        let job = Extraction {
            min_free: None,
            stage,
            reader,
            manifest,
            target: "t".into(),
            dir: dir.clone(),
            downloaded: Arc::new(AtomicBool::new(false)),
        };
        (job, writer, archive, dir)
    }

    /// Feeds `archive` in parts of 4 KiB; `finish` says whether the download then verifies.
    fn feed(writer: PipeWriter, archive: Vec<u8>, finish: bool) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            for part in archive.chunks(4096) {
                if writer.push(bytes::Bytes::copy_from_slice(part)).is_err() {
                    return;
                }
            }
            if finish {
                writer.finish();
            } else {
                writer.fail("digest mismatch".to_owned());
            }
        })
    }

    fn staging_names(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".warmcache-"))
            .collect()
    }

    fn wait_for_no_staging(dir: &Path) {
        let waited = Instant::now();
        while !staging_names(dir).is_empty() && waited.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn extraction_of_a_verified_stream_yields_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let deadline = Instant::now() + Duration::from_secs(600);
        let (job, writer, archive, dir) = job(tmp.path(), deadline);
        let progress: Arc<dyn SnapshotProgress> = Arc::new(NoProgress);
        let running = start_extraction(job, progress).unwrap();
        feed(writer, archive, true).join().unwrap();
        let Some(Ok((stage, _))) = running.wait(deadline) else {
            panic!("extraction failed");
        };
        assert!(stage.path().join("a/b/f199").is_file());
        assert!(!dir.exists(), "extraction stays in staging");
        assert_eq!(staging_names(tmp.path()).len(), 1);
        drop(stage);
        assert!(staging_names(tmp.path()).is_empty());
    }

    #[test]
    fn a_stream_that_fails_verification_at_the_end_yields_nothing_and_removes_the_stage() {
        let tmp = tempfile::tempdir().unwrap();
        let deadline = Instant::now() + Duration::from_secs(600);
        let (job, writer, archive, dir) = job(tmp.path(), deadline);
        let progress: Arc<dyn SnapshotProgress> = Arc::new(NoProgress);
        let running = start_extraction(job, progress).unwrap();
        // Every byte arrives, the archive is whole and valid: only the digest check fails.
        feed(writer, archive, false).join().unwrap();
        let result = running.wait(deadline).expect("in time");
        assert!(result.is_err(), "an unverified stream must not yield a stage");
        assert!(staging_names(tmp.path()).is_empty(), "the stage is removed first");
        assert!(!dir.exists());
    }

    #[test]
    fn extraction_past_the_deadline_is_abandoned_and_cleans_up_after_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let deadline = Instant::now() + Duration::from_secs(600);
        let (job, writer, archive, dir) = job(tmp.path(), deadline);
        assert_eq!(staging_names(tmp.path()).len(), 1, "the stage");
        let progress: Arc<dyn SnapshotProgress> = Arc::new(NoProgress);
        let running = start_extraction(job, progress).unwrap();
        assert!(running.wait(Instant::now()).is_none(), "the deadline had passed");
        // The download goes on; the abandoned thread stops and removes the stage.
        let feeder = feed(writer, archive, true);
        running.abandon("the deadline passed");
        feeder.join().unwrap();
        wait_for_no_staging(tmp.path());
        assert!(staging_names(tmp.path()).is_empty(), "staging left behind");
        assert!(!dir.exists());
    }
}
