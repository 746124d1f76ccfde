//! [`restore`]: replace a directory with the snapshot of a key, atomically, within a deadline.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::format::{SnapshotManifest, manifest_key, parse_manifest, parse_pointer, pointer_key};
use super::{Phase, RestoreOptions, RestoreReport, RestoreStatus, Result, SnapshotError, SnapshotProgress};
use crate::archive::{self, Format, Limits, Trust};
use crate::place::{Scratch, Stage, StagedKind};
use crate::remote::{Remote, RemoteError, RemoteUrl};

/// Replaces `dir` with the snapshot at `url`: pointer, manifest, a ranged parallel download
/// verified against the manifest's BLAKE3 into scratch space next to `dir`, safe extraction into
/// a staging directory next to `dir`, then one atomic swap ([`crate::place`]: exchange when
/// `dir` exists, rename otherwise). Nothing is downloaded when `dir` already holds the
/// snapshot's tree.
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
    let (dir, exists) = check_destination(dir)?;
    let run = Restore::new(dir, url, options)?;
    let started = run.started;
    let mut report = RestoreReport {
        status: RestoreStatus::Restored,
        dir: run.dir.clone(),
        url: url.to_string(),
        digest: None,
        files: 0,
        bytes: 0,
        downloaded_bytes: 0,
        elapsed_ms: 0,
    };
    let status = run.run(exists, options, &progress, &mut report)?;
    report.status = status;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
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

    /// A remote error, or the restore's time running out while waiting for the remote.
    fn remote_err(&self, e: RemoteError) -> SnapshotError {
        match e {
            RemoteError::TimedOut { .. } if Instant::now() >= self.deadline => {
                self.timed_out("waiting for the remote")
            }
            e => SnapshotError::Remote(e),
        }
    }
}

/// One restore: where, from where, its deadline, and the stage and scratch space beside DIR.
struct Restore<'a> {
    dir: PathBuf,
    url: &'a RemoteUrl,
    started: Instant,
    clock: Clock,
    remote: Remote,
    stage: Stage,
    scratch: Scratch,
}

impl<'a> Restore<'a> {
    fn new(dir: PathBuf, url: &'a RemoteUrl, options: &RestoreOptions) -> Result<Self> {
        let started = Instant::now();
        let timeout = options.timeout.unwrap_or(options.settings.overall_timeout);
        let deadline = started + timeout;
        let stage = Stage::beside(&dir)?;
        // Scratch space for the download, beside DIR; creating it now checks that DIR's
        // directory is writable before anything is downloaded.
        let scratch = stage.scratch();
        fs_err::create_dir(scratch.path()).map_err(|source| SnapshotError::NotWritable {
            path: dir.clone(),
            parent: stage.parent().to_path_buf(),
            source,
        })?;
        let mut settings = options.settings.clone();
        settings.overall_timeout = settings.overall_timeout.min(timeout);
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
            clock,
            remote,
            stage,
            scratch,
        })
    }

    /// The phases: pointer, the local tree compared, manifest, download, extraction, swap.
    fn run(
        self,
        exists: bool,
        options: &RestoreOptions,
        progress: &Arc<dyn SnapshotProgress>,
        report: &mut RestoreReport,
    ) -> Result<RestoreStatus> {
        let Some(manifest) = self.read_snapshot(options.strict, exists, progress, report)? else {
            return Ok(report.status);
        };
        let archive_path = self.scratch.path().join("archive.tar.zst");
        let target = self.remote.describe(&self.url.join(&manifest.archive));
        report.downloaded_bytes = self.download(&manifest, &archive_path, &target, &**progress)?;
        let job = Extraction {
            min_free: options.min_free,
            stage: self.stage,
            scratch: self.scratch,
            archive_path,
            manifest,
            target,
            dir: self.dir,
        };
        extract_and_swap(job, &self.clock, progress.clone())?;
        Ok(RestoreStatus::Restored)
    }

    /// Reads the pointer and the manifest it names. `None` (with the report's status set) when
    /// there is nothing to do: no snapshot yet, or DIR already holds it.
    fn read_snapshot(
        &self,
        strict: bool,
        exists: bool,
        progress: &Arc<dyn SnapshotProgress>,
        report: &mut RestoreReport,
    ) -> Result<Option<SnapshotManifest>> {
        self.clock.check("reading the pointer")?;
        let pointer_key = pointer_key(self.url);
        let Some(bytes) = self
            .remote
            .get_bytes(&pointer_key)
            .map_err(|e| self.clock.remote_err(e))?
        else {
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
        if exists && holds(&self.dir, &pointer.digest, progress) {
            report.status = RestoreStatus::Unchanged;
            return Ok(None);
        }

        self.clock.check("reading the snapshot manifest")?;
        let manifest_key = manifest_key(self.url, &pointer.digest);
        let bytes = self
            .remote
            .get_bytes(&manifest_key)
            .map_err(|e| self.clock.remote_err(e))?
            .ok_or_else(|| SnapshotError::BadObject {
                target: self.remote.describe(&manifest_key),
                reason: "the pointer names a snapshot whose manifest is missing".to_owned(),
            })?;
        let manifest = parse_manifest(&bytes, &pointer).map_err(|reason| SnapshotError::BadObject {
            target: self.remote.describe(&manifest_key),
            reason,
        })?;
        Ok(Some(manifest))
    }

    /// Downloads the archive into scratch space, verified; returns its size.
    fn download(
        &self,
        manifest: &SnapshotManifest,
        archive_path: &Path,
        target: &str,
        progress: &dyn SnapshotProgress,
    ) -> Result<u64> {
        self.clock.check("downloading")?;
        let download_progress = Counted {
            inner: progress,
            done: AtomicU64::new(0),
        };
        let got = self
            .remote
            .get_to_file(
                &self.url.join(&manifest.archive),
                archive_path,
                Some(&manifest.archive_blake3),
                &download_progress,
            )
            .map_err(|e| self.clock.remote_err(e))?;
        if got.bytes != manifest.archive_bytes {
            return Err(SnapshotError::BadObject {
                target: target.to_owned(),
                reason: format!(
                    "the archive is {} bytes, the manifest says {}",
                    got.bytes, manifest.archive_bytes
                ),
            });
        }
        Ok(got.bytes)
    }
}

/// Extracts into the stage (on a thread, within the deadline), makes it durable and swaps it in:
/// the single moment DIR changes.
fn extract_and_swap(job: Extraction, clock: &Clock, progress: Arc<dyn SnapshotProgress>) -> Result<()> {
    let stage = extract_until(job, clock.deadline, progress)
        .map_err(|e| e.unwrap_or_else(|| clock.timed_out("extracting")))?;
    clock.check("making the new tree durable")?;
    stage.make_durable(StagedKind::Tree)?;
    clock.check("making the new tree durable")?;
    // Before the swap DIR is the old tree, after it the new one, complete and durable; the old
    // tree is removed with the stage.
    stage.swap()?;
    Ok(())
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

/// What the extraction thread owns: if the caller gives up, dropping it removes the stage and
/// the scratch space.
struct Extraction {
    /// The free-space reserve asked for (`None`: the proportional default).
    min_free: Option<u64>,
    stage: Stage,
    scratch: Scratch,
    archive_path: PathBuf,
    manifest: SnapshotManifest,
    target: String,
    dir: PathBuf,
}

/// Extracts on a thread of its own so the caller can give up at `deadline` (extraction has no
/// way to be interrupted). The thread owns the stage, so if we give up it removes the stage
/// itself when it stops; DIR is only touched by the caller, after a timely result. `Err(None)`
/// means the deadline passed.
fn extract_until(
    job: Extraction,
    deadline: Instant,
    progress: Arc<dyn SnapshotProgress>,
) -> Result<Stage, Option<SnapshotError>> {
    let (tx, rx) = mpsc::channel();
    progress.phase(Phase::Extracting, Some(job.manifest.bytes));
    std::thread::Builder::new()
        .name("warmcache-restore".to_owned())
        .spawn(move || {
            let result = extract_checked(&job, &*progress);
            let Extraction { stage, scratch, .. } = job;
            // The archive is no longer needed; removing it now frees its space before the swap.
            drop(scratch);
            // If the caller gave up, the result (and with it the stage) is dropped here.
            let _ = tx.send(result.map(|()| stage));
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

/// Extracts the verified archive into the stage, checking it is the tree the manifest promised.
fn extract_checked(job: &Extraction, progress: &dyn SnapshotProgress) -> Result<()> {
    let Extraction {
        stage,
        archive_path,
        manifest,
        target,
        dir,
        min_free,
        ..
    } = job;
    let tree = stage.path();
    let extract_err = |source| SnapshotError::Extract {
        target: target.to_owned(),
        dir: dir.to_path_buf(),
        source: Box::new(source),
    };
    fs_err::create_dir(tree).map_err(|source| SnapshotError::Local {
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
    // Our own format, verified against the manifest's digest: the tree rule alone applies
    // (docs/DESIGN.md, "What one side writes, the other reads"), so whatever `snapshot` uploaded restores, and the
    // bounds are what the manifest declares rather than the defaults for untrusted archives.
    let limits = Limits {
        max_total_bytes: manifest.bytes.saturating_add(tar_overhead(manifest)),
        max_entries: (manifest.files + manifest.dirs + manifest.symlinks).saturating_add(1),
        max_ratio: u64::MAX,
        ratio_grace_bytes: u64::MAX,
        min_free_bytes: *min_free,
        trust: Trust::Own,
    };
    let extracted =
        archive::extract(archive_path, Format::TarZst, tree, &limits, &on_progress).map_err(extract_err)?;
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
    Ok(())
}

/// What tar adds to a tree's bytes (headers, padding, the end marker), which extraction counts
/// too.
fn tar_overhead(manifest: &SnapshotManifest) -> u64 {
    (manifest.files + manifest.dirs + manifest.symlinks)
        .saturating_add(2)
        .saturating_mul(1024)
        .saturating_add(1 << 20)
}

/// Forwards download progress as a running total.
struct Counted<'a> {
    inner: &'a dyn SnapshotProgress,
    done: AtomicU64,
}

impl crate::remote::Progress for Counted<'_> {
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

    /// An extraction job for a small tree staged beside `tmp/dest`, with its archive in scratch.
    fn job(tmp: &Path) -> (Extraction, PathBuf) {
        let src = tmp.join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        for i in 0..200u32 {
            std::fs::write(src.join(format!("a/b/f{i}")), i.to_le_bytes().repeat(2000)).unwrap();
        }
        let dir = tmp.join("dest");
        let stage = Stage::beside(&dir).unwrap();
        let scratch = stage.scratch();
        std::fs::create_dir(scratch.path()).unwrap();
        let archive_path = scratch.path().join("archive.tar.zst");
        let created = archive::create_tar_zst(&src, fs_err::File::create(&archive_path).unwrap(), 3).unwrap();
        let manifest = SnapshotManifest {
            version: super::super::SNAPSHOT_MANIFEST_VERSION,
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
        let job = Extraction {
            min_free: None,
            stage,
            scratch,
            archive_path,
            manifest,
            target: "t".into(),
            dir: dir.clone(),
        };
        (job, dir)
    }

    fn staging_names(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".warmcache-"))
            .collect()
    }

    #[test]
    fn extraction_in_time_yields_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let (job, dir) = job(tmp.path());
        let deadline = Instant::now() + Duration::from_secs(600);
        let progress: Arc<dyn SnapshotProgress> = Arc::new(NoProgress);
        let Ok(stage) = extract_until(job, deadline, progress) else {
            panic!("extraction failed");
        };
        assert!(stage.path().join("a/b/f199").is_file());
        assert!(!dir.exists(), "extraction stays in staging");
        assert_eq!(staging_names(tmp.path()).len(), 1, "the scratch space is gone");
        drop(stage);
        assert!(staging_names(tmp.path()).is_empty());
    }

    #[test]
    fn extraction_past_the_deadline_is_abandoned_and_cleans_up_after_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let (job, dir) = job(tmp.path());
        assert_eq!(staging_names(tmp.path()).len(), 1, "the scratch space");
        let progress: Arc<dyn SnapshotProgress> = Arc::new(NoProgress);
        let result = extract_until(job, Instant::now(), progress);
        assert!(matches!(result, Err(None)), "the deadline had passed");
        // The abandoned thread removes the stage and the scratch space once it stops.
        let waited = Instant::now();
        while !staging_names(tmp.path()).is_empty() && waited.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(staging_names(tmp.path()).is_empty(), "staging left behind");
        assert!(!dir.exists());
    }
}
