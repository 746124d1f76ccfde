//! [`Remote`]: a client for one bucket, and the one place where its operations are bounded in
//! time (its own overall timeout, or a whole operation's deadline: [`Remote::with_deadline`]),
//! refused while the outage breaker is open, and driven on the process's runtime; and the one
//! place where writes are refused when the remote is read-only ([`Remote::run_write`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use object_store::ObjectStore;
use object_store::path::Path as StorePath;

use super::breaker::Breaker;
use super::error::RemoteError;
use super::settings::RemoteSettings;
use super::url::{Provider, RemoteUrl};

type Result<T, E = RemoteError> = std::result::Result<T, E>;

/// A connection to one bucket of S3-compatible object storage, Google Cloud Storage, or one
/// container of Azure Blob Storage.
///
/// The rest of warmcache stays synchronous: every method blocks until its operation finishes,
/// fails, or runs out of time ([`RemoteSettings::overall_timeout`], or the deadline given to
/// [`Self::with_deadline`]). Operations run on one tokio runtime per process, built on first use
/// (`runtime`). Calling it from inside another async runtime does not panic: the
/// operation then runs on a helper thread, and the calling thread (one of that runtime's
/// workers) is blocked for its duration, so async callers should prefer `spawn_blocking`.
///
/// Building one makes no request and starts no thread. Cloning is cheap and shares the
/// connection pool. All clients of the same endpoint and bucket in a process share one outage
/// breaker.
#[derive(Clone)]
pub struct Remote {
    pub(super) inner: Arc<Inner>,
    /// A deadline for every operation of this handle, on top of the overall timeout.
    deadline: Option<Instant>,
}

pub(super) struct Inner {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) provider: Provider,
    pub(super) bucket: String,
    pub(super) settings: RemoteSettings,
    breaker: Arc<Breaker>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("bucket", &self.inner.bucket)
            .finish_non_exhaustive()
    }
}

/// Size and identity of a remote object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When the store last wrote it.
    pub last_modified: SystemTime,
    /// Its ETag and version, for conditional requests.
    pub version: ObjectVersion,
}

/// Identifies one version of an object, for [`Remote::put_if`]. Stores use the ETag, the
/// version id or both; keep both.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectVersion {
    /// The ETag as the store reported it (with its quotes).
    pub e_tag: Option<String>,
    /// The version id on versioned buckets.
    pub version: Option<String>,
}

/// The result of an upload that never overwrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written.
    Created,
    /// An object already had that key; it was left untouched and nothing was uploaded (or the
    /// upload lost a race and was discarded by the store).
    AlreadyExisted,
}

/// The result of a conditional put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CondPut {
    /// Written; the new version, to pass as `expect` next time.
    Done(ObjectVersion),
    /// The precondition failed: the object exists (create) or changed (replace). Nothing was
    /// written; re-read and decide again.
    Conflict,
}

/// What a download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetReport {
    /// Bytes written to the destination.
    pub bytes: u64,
    /// BLAKE3 of those bytes, lowercase hex (computed whether or not one was expected).
    pub blake3: String,
    /// Ranged requests used.
    pub parts: usize,
    /// The object's ETag and version.
    pub version: ObjectVersion,
    /// Wall time.
    pub elapsed: Duration,
}

/// Receives transfer progress (for a progress bar). Called from the transfer's thread.
pub trait Progress: Send + Sync {
    /// The transfer is starting; `total` is its size when known.
    fn start(&self, total: Option<u64>) {
        let _ = total;
    }
    /// `bytes` more bytes were transferred.
    fn advance(&self, bytes: u64);
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn advance(&self, _bytes: u64) {}
}

impl Remote {
    /// Connects to the bucket (Azure: container) of `url` (its key is not used: operations take
    /// full keys, see [`RemoteUrl::join`]). Configuration comes from the environment of `url`'s
    /// cloud (AWS, Google or Azure), overridden by `settings.s3`, `settings.gcs` or
    /// `settings.azure`; no request is made until the first operation.
    pub fn new(url: &RemoteUrl, settings: RemoteSettings) -> Result<Self> {
        let built = super::backends::build(url, &settings)?;
        Ok(Self {
            inner: Arc::new(Inner {
                store: built.store,
                provider: url.provider(),
                bucket: url.bucket().to_owned(),
                settings,
                breaker: Breaker::for_key(&built.breaker_key),
            }),
            deadline: None,
        })
    }

    /// The same client, with every operation also bounded by `deadline`: how a command bounds a
    /// whole operation made of several requests (a restore's pointer, manifest and download).
    /// An operation cut short by it fails with [`RemoteError::TimedOut`].
    pub fn with_deadline(&self, deadline: Instant) -> Remote {
        Remote {
            inner: self.inner.clone(),
            deadline: Some(self.deadline.map_or(deadline, |d| d.min(deadline))),
        }
    }

    /// The bucket this client talks to.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &RemoteSettings {
        &self.inner.settings
    }

    /// Which object store this client talks to.
    pub fn provider(&self) -> Provider {
        self.inner.provider
    }

    /// `s3://bucket/key` (or `gs://`, `az://`), for messages.
    pub fn describe(&self, key: &str) -> String {
        format!("{}://{}/{key}", self.inner.provider.scheme(), self.inner.bucket)
    }

    /// Validates a key and converts it to the store's path type.
    pub(super) fn path(&self, key: &str) -> Result<StorePath> {
        if key.is_empty() {
            return Err(RemoteError::BadKey {
                key: key.to_owned(),
                reason: "the key is empty".to_owned(),
            });
        }
        StorePath::parse(key).map_err(|e| RemoteError::BadKey {
            key: key.to_owned(),
            reason: e.to_string(),
        })
    }

    /// When an operation starting now must be done: [`RemoteSettings::overall_timeout`] from
    /// now, or the deadline of [`Self::with_deadline`] if that comes first.
    pub(super) fn deadline(&self) -> Instant {
        let own = Instant::now() + self.inner.settings.overall_timeout;
        self.deadline.map_or(own, |cap| cap.min(own))
    }

    /// Runs one operation: refuses it while the breaker is open, bounds it by `deadline`,
    /// and feeds the outcome to the breaker.
    pub(super) fn run<T: Send>(
        &self,
        op: &'static str,
        target: &str,
        deadline: Instant,
        fut: impl Future<Output = Result<T>> + Send,
    ) -> Result<T> {
        let settings = &self.inner.settings;
        let breaker = &self.inner.breaker;
        if let Err(open) = breaker.check() {
            return Err(RemoteError::CoolingDown {
                target: target.to_owned(),
                remaining: open.remaining,
                failures: open.failures,
                last_error: open.last_error,
            });
        }
        let budget = deadline.saturating_duration_since(Instant::now());
        let result = self
            .block_on(async {
                match tokio::time::timeout(budget, fut).await {
                    Ok(result) => result,
                    Err(_) => Err(RemoteError::TimedOut {
                        target: target.to_owned(),
                        op,
                        detail: format!(
                            "not finished within the overall timeout of {:?}",
                            settings.overall_timeout
                        ),
                    }),
                }
            })
            .and_then(|result| result);
        match &result {
            Err(e) if e.is_outage() => {
                breaker.record_failure(
                    settings.breaker_threshold,
                    settings.breaker_cooldown,
                    &e.to_string(),
                );
            }
            // The server answered, even if with "no such key" or "denied": it is up.
            Ok(_)
            | Err(
                RemoteError::NotFound { .. }
                | RemoteError::Status { .. }
                | RemoteError::Denied { .. }
                | RemoteError::DigestMismatch { .. },
            ) => breaker.record_success(),
            Err(_) => {}
        }
        result
    }

    /// Whether writes to this remote are refused: configured read-only
    /// ([`RemoteSettings::read_only`]), or an earlier write to the same endpoint and bucket in
    /// this process was denied. Reads still work.
    pub fn is_read_only(&self) -> bool {
        self.read_only_reason().is_some()
    }

    /// Why writes are refused, when they are.
    pub fn read_only_reason(&self) -> Option<String> {
        if self.inner.settings.read_only {
            return Some(
                "the remote is read-only here (--read-only, `[remote] read_only = true` or \
                 WARMCACHE_REMOTE_READ_ONLY=1); nothing is written to it"
                    .to_owned(),
            );
        }
        self.inner.breaker.writes_denied().map(|detail| {
            format!(
                "an earlier write to bucket `{}` was refused (access denied: {detail}), so this \
                 process carries on read-only; {}",
                self.inner.bucket, WRITE_FIX
            )
        })
    }

    /// Refuses a write `op` on `target` when the remote is read-only, before any request.
    pub fn check_writable(&self, op: &'static str, target: &str) -> Result<()> {
        match self.read_only_reason() {
            Some(reason) => Err(RemoteError::ReadOnly {
                target: target.to_owned(),
                op,
                reason,
            }),
            None => Ok(()),
        }
    }

    /// [`Self::run`] for an operation that writes (an upload, a pointer update, a copy, a
    /// delete): every write goes through here, so none can forget the read-only rule
    /// (docs/DESIGN.md, "Read-only writers"). Refused without a request when the remote is
    /// read-only; a write denied for lack of permission makes the whole process read-only for
    /// this endpoint and bucket (reported once, as a warning), so no further write is attempted.
    pub(super) fn run_write<T: Send>(
        &self,
        op: &'static str,
        target: &str,
        deadline: Instant,
        fut: impl Future<Output = Result<T>> + Send,
    ) -> Result<T> {
        self.check_writable(op, target)?;
        match self.run(op, target, deadline, fut) {
            Err(RemoteError::Denied { target, op, detail }) => {
                let reason = if self.inner.breaker.deny_writes(&detail) {
                    tracing::warn!(
                        "{target}: {op} refused (access denied): these credentials may read bucket `{}` \
                         but not write it; carrying on read-only, nothing more will be written to it by \
                         this process; {WRITE_FIX}",
                        self.inner.bucket
                    );
                    // The warning just gave the fix; the error of this write does not repeat it.
                    format!("access denied, so this process carries on read-only ({detail})")
                } else {
                    self.read_only_reason().unwrap_or_default()
                };
                Err(RemoteError::ReadOnly { target, op, reason })
            }
            other => other,
        }
    }

    /// Drives `fut` to completion on the process's remote runtime (`runtime`).
    pub(super) fn block_on<F>(&self, fut: F) -> Result<F::Output>
    where
        F: Future + Send,
        F::Output: Send,
    {
        super::runtime::block_on(fut)
    }

    /// Enters the process's remote runtime, so that tasks spawned meanwhile run on it.
    pub(super) fn enter(&self) -> Result<tokio::runtime::EnterGuard<'static>> {
        super::runtime::enter()
    }
}

/// What to do about credentials that may not write, for messages.
const WRITE_FIX: &str = "grant them write access to the bucket (S3: s3:PutObject, and s3:DeleteObject for \
                         `gc --remote`; GCS: roles/storage.objectUser; Azure: Storage Blob Data Contributor), \
                         or say this machine only reads: --read-only, `[remote] read_only = true` or \
                         WARMCACHE_REMOTE_READ_ONLY=1";
