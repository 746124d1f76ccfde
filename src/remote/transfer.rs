//! [`Remote`]: bounded, verified transfers to and from one bucket.

use std::future::Future;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientConfigKey, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig, UpdateVersion,
};
use tokio::runtime::Runtime;

use super::breaker::Breaker;
use super::error::RemoteError;
use super::settings::RemoteSettings;
use super::upload::RemoteWriter;
use super::url::RemoteUrl;

type Result<T, E = RemoteError> = std::result::Result<T, E>;

/// A connection to one bucket of S3-compatible object storage.
///
/// It owns a small tokio runtime so that the rest of warmcache stays synchronous: every method
/// blocks until its operation finishes, fails, or runs out of time
/// ([`RemoteSettings::overall_timeout`]). Calling it from inside another async runtime does not
/// panic: the operation then runs on a helper thread, and the calling thread (one of that
/// runtime's workers) is blocked for its duration, so async callers should prefer
/// `spawn_blocking`.
///
/// Cloning is cheap and shares the runtime and the connection pool. All clients of the same
/// endpoint and bucket in a process share one outage breaker.
#[derive(Clone)]
pub struct Remote {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    runtime: Option<Runtime>,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) bucket: String,
    pub(crate) settings: RemoteSettings,
    breaker: Arc<Breaker>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its workers stop, which tokio forbids (with a panic)
        // inside an async context; a background shutdown never blocks.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
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
    /// Connects to the bucket of `url` (its key is not used: operations take full keys, see
    /// [`RemoteUrl::join`]). Configuration comes from the AWS environment, overridden by
    /// `settings.s3`; no request is made until the first operation.
    pub fn new(url: &RemoteUrl, settings: RemoteSettings) -> Result<Self> {
        let bucket = url.bucket().to_owned();
        let target = format!("s3://{bucket}");
        let config_err = |e: object_store::Error| RemoteError::Config {
            target: target.clone(),
            detail: e.to_string(),
        };

        let s3 = &settings.s3;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
        if let Some(endpoint) = &s3.endpoint {
            // AWS_ENDPOINT_URL_S3 would otherwise take precedence over the explicit endpoint.
            builder = builder
                .with_endpoint(endpoint)
                .with_config(AmazonS3ConfigKey::S3Endpoint, endpoint.as_str());
        }
        if let Some(region) = &s3.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &s3.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &s3.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &s3.session_token {
            builder = builder.with_token(token);
        }
        let endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
            .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint));
        match s3.allow_http {
            Some(allow) => builder = builder.with_allow_http(allow),
            None if endpoint.as_deref().is_some_and(|e| e.starts_with("http://")) => {
                builder = builder.with_allow_http(true);
            }
            None => {}
        }
        // Set through config keys rather than `with_client_options`, which would discard the
        // client settings `from_env` read (AWS_ALLOW_HTTP, proxies, certificates).
        let millis = |d: Duration| format!("{}ms", d.as_millis().max(1));
        builder = builder
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                millis(settings.connect_timeout),
            )
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                millis(settings.request_timeout),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: settings.retry_backoff,
                    max_backoff: Duration::from_secs(5).max(settings.retry_backoff),
                    base: 2.0,
                },
                max_retries: settings.retries,
                retry_timeout: settings.overall_timeout,
            });
        let region = builder
            .get_config_value(&AmazonS3ConfigKey::Region)
            .unwrap_or_default();
        let store = builder.build().map_err(config_err)?;

        let breaker_key = match &endpoint {
            Some(endpoint) => format!("{endpoint}|{bucket}"),
            None => format!("aws:{region}|{bucket}"),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("warmcache-remote")
            .enable_all()
            .build()
            .map_err(|source| RemoteError::Runtime { source })?;
        Ok(Self {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                store: Arc::new(store),
                bucket,
                settings,
                breaker: Breaker::for_key(&breaker_key),
            }),
        })
    }

    /// The bucket this client talks to.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &RemoteSettings {
        &self.inner.settings
    }

    /// `s3://bucket/key`, for messages.
    pub fn describe(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.inner.bucket)
    }

    /// The object's size and version, or `None` when there is no such object.
    pub fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(key)?;
        let target = self.describe(key);
        let deadline = self.deadline();
        let store = &self.inner.store;
        self.run("head", &target, deadline, async {
            match store.head(&path).await {
                Ok(meta) => Ok(Some(ObjectMeta {
                    key: key.to_owned(),
                    size: meta.size,
                    last_modified: meta.last_modified.into(),
                    version: ObjectVersion {
                        e_tag: meta.e_tag,
                        version: meta.version,
                    },
                })),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(RemoteError::from_store(e, &target, "head")),
            }
        })
    }

    /// A small object (a pointer or a manifest) in memory, or `None` when missing. Refuses
    /// objects larger than [`RemoteSettings::max_small_object`].
    pub fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.get_versioned(key)?.map(|(bytes, _)| bytes))
    }

    /// Like [`Self::get_bytes`], with the version that was read, for a later
    /// [`Self::put_if`] (read, decide, replace only if nobody else replaced it meanwhile).
    pub fn get_versioned(&self, key: &str) -> Result<Option<(Bytes, ObjectVersion)>> {
        let path = self.path(key)?;
        let target = self.describe(key);
        let settings = &self.inner.settings;
        let store = &self.inner.store;
        self.run("download", &target, self.deadline(), async {
            let result = match store.get_opts(&path, GetOptions::default()).await {
                Ok(result) => result,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(RemoteError::from_store(e, &target, "download")),
            };
            let size = result.meta.size;
            if size > settings.max_small_object {
                return Err(RemoteError::TooLarge {
                    target: target.clone(),
                    size,
                    limit: settings.max_small_object,
                });
            }
            let version = ObjectVersion {
                e_tag: result.meta.e_tag.clone(),
                version: result.meta.version.clone(),
            };
            let received = AtomicU64::new(0);
            let body = collect(
                result.into_stream(),
                size,
                &Transfer {
                    target: &target,
                    stall: settings.stall_timeout,
                    received: &received,
                    total: size,
                },
                &NoProgress,
            )
            .await?;
            Ok(Some((body, version)))
        })
    }

    /// Downloads `key` into `dest` (created or truncated) with up to
    /// [`RemoteSettings::parallelism`] ranged requests of [`RemoteSettings::part_size`] in
    /// flight, writing parts in order while hashing them, so memory stays near
    /// `(parallelism + 1) * part_size` whatever the object's size.
    ///
    /// With `expected_blake3`, the bytes must hash to it. On any error (mismatch, truncation,
    /// stall, timeout) `dest` is removed, so nothing half-downloaded or unverified is left
    /// where a caller could mistake it for the object. `dest` is not fsynced: publish it
    /// through the store, which does. A missing object is [`RemoteError::NotFound`].
    pub fn get_to_file(
        &self,
        key: &str,
        dest: &Path,
        expected_blake3: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<GetReport> {
        let path = self.path(key)?;
        let target = self.describe(key);
        let started = Instant::now();
        let result = self.run("download", &target, self.deadline(), async {
            self.download(&path, &target, dest, progress).await
        });
        let result = result.and_then(|mut report| {
            if let Some(expected) = expected_blake3
                && !expected.eq_ignore_ascii_case(&report.blake3)
            {
                return Err(RemoteError::DigestMismatch {
                    target: target.clone(),
                    expected: expected.to_ascii_lowercase(),
                    actual: report.blake3,
                });
            }
            report.elapsed = started.elapsed();
            Ok(report)
        });
        if result.is_err() {
            // Best effort: the error being returned matters more than a failed clean-up.
            let _ = fs_err::remove_file(dest);
        }
        result
    }

    async fn download(
        &self,
        path: &StorePath,
        target: &str,
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<GetReport> {
        let settings = &self.inner.settings;
        let store = &self.inner.store;
        let meta = store
            .head(path)
            .await
            .map_err(|e| RemoteError::from_store(e, target, "download"))?;
        let size = meta.size;
        let version = ObjectVersion {
            e_tag: meta.e_tag.clone(),
            version: meta.version.clone(),
        };
        progress.start(Some(size));
        let io_err = |source| RemoteError::Io {
            target: target.to_owned(),
            op: "download",
            source,
        };
        let mut file = fs_err::File::create(dest).map_err(io_err)?;

        let part_size = settings.part_size.max(1) as u64;
        let ranges: Vec<Range<u64>> = (0..size.div_ceil(part_size))
            .map(|i| i * part_size..((i + 1) * part_size).min(size))
            .collect();
        let parts = ranges.len();
        let received = AtomicU64::new(0);
        let transfer = Transfer {
            target,
            stall: settings.stall_timeout,
            received: &received,
            total: size,
        };
        let transfer = &transfer;
        // Every part must come from the version we sized: a concurrent replacement fails the
        // download (412) instead of mixing two objects.
        let e_tag = meta.e_tag.clone();
        let mut pieces = stream::iter(ranges)
            .map(|range| {
                let options = GetOptions {
                    range: Some(GetRange::Bounded(range.clone())),
                    if_match: e_tag.clone(),
                    ..Default::default()
                };
                async move {
                    let result = store
                        .get_opts(path, options)
                        .await
                        .map_err(|e| RemoteError::from_store(e, target, "download"))?;
                    collect(result.into_stream(), range.end - range.start, transfer, progress).await
                }
            })
            // `buffered` keeps parts in order, so they can be written and hashed sequentially,
            // and never runs more than `parallelism` at once.
            .buffered(settings.parallelism.max(1));

        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        while let Some(piece) = pieces.next().await {
            let piece = piece?;
            file.write_all(&piece).map_err(io_err)?;
            hasher.update(&piece);
            written += piece.len() as u64;
        }
        file.flush().map_err(io_err)?;
        if written != size {
            return Err(RemoteError::Truncated {
                target: target.to_owned(),
                expected: size,
                received: written,
            });
        }
        Ok(GetReport {
            bytes: written,
            blake3: hasher.finalize().to_hex().to_string(),
            parts,
            version,
            elapsed: Duration::ZERO,
        })
    }

    /// Uploads the file at `src` to `key` unless an object already has that key.
    ///
    /// Files smaller than one part go up in one `PutObject` with `If-None-Match: *`, which the
    /// store applies atomically. Larger files use a multipart upload (memory stays bounded);
    /// S3's multipart API offers no portable create-only completion, so two writers that both
    /// found the key absent can both complete, and the last one wins. Keys that name content
    /// by its digest make that race harmless: both wrote the same bytes.
    pub fn put_file(&self, key: &str, src: &Path, progress: &dyn Progress) -> Result<PutOutcome> {
        let target = self.describe(key);
        let io_err = |source| RemoteError::Io {
            target: target.clone(),
            op: "upload",
            source,
        };
        let file = fs_err::File::open(src).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        self.put_reader(key, file, Some(size), progress)
    }

    /// Uploads everything `reader` yields to `key` unless an object already has that key, with
    /// the same guarantees as [`Self::put_file`]. An error reading `reader` aborts the upload.
    pub fn put_stream(&self, key: &str, reader: impl Read) -> Result<PutOutcome> {
        self.put_reader(key, reader, None, &NoProgress)
    }

    fn put_reader(
        &self,
        key: &str,
        mut reader: impl Read,
        size: Option<u64>,
        progress: &dyn Progress,
    ) -> Result<PutOutcome> {
        let Some(mut writer) = self.writer(key)? else {
            return Ok(PutOutcome::AlreadyExisted);
        };
        progress.start(size);
        let part_size = self.inner.settings.part_size.max(1);
        loop {
            let mut chunk = BytesMut::zeroed(part_size);
            let mut filled = 0;
            while filled < part_size {
                match reader.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        let target = self.describe(key);
                        return Err(RemoteError::Io {
                            target,
                            op: "read the upload source",
                            source,
                        });
                    }
                }
            }
            if filled == 0 {
                break;
            }
            chunk.truncate(filled);
            writer.write_bytes(chunk.freeze())?;
            progress.advance(filled as u64);
            if filled < part_size {
                break;
            }
        }
        writer.finish()
    }

    /// A [`Write`] that uploads to `key`, or `None` when an object already has that key.
    ///
    /// Bytes are buffered up to one part; larger uploads become multipart uploads with at most
    /// [`RemoteSettings::parallelism`] parts in flight (writes block for capacity). Call
    /// [`RemoteWriter::finish`]; dropping it unfinished aborts the upload and writes nothing.
    /// The whole upload must finish within [`RemoteSettings::overall_timeout`] of this call.
    pub fn writer(&self, key: &str) -> Result<Option<RemoteWriter>> {
        if self.head(key)?.is_some() {
            return Ok(None);
        }
        Ok(Some(RemoteWriter::new(
            self.clone(),
            key.to_owned(),
            self.path(key)?,
            self.deadline(),
        )))
    }

    /// Writes `bytes` to `key` only if the object is as expected: absent when `expect` is
    /// `None` (`If-None-Match: *`), or still at version `expect` (`If-Match: <etag>`).
    ///
    /// This is how a pointer object is replaced safely: read it with
    /// [`Self::get_versioned`], decide, then `put_if` with the version read. Of two writers
    /// starting from the same version, exactly one gets [`CondPut::Done`]. ETags are content
    /// hashes on most stores, so put something unique (a timestamp, a host, a nonce) in the
    /// pointer, or A→B→A looks unchanged. AWS S3, MinIO, R2 and s3s-fs honour both headers.
    pub fn put_if(&self, key: &str, bytes: Bytes, expect: Option<&ObjectVersion>) -> Result<CondPut> {
        let path = self.path(key)?;
        let target = self.describe(key);
        let mode = match expect {
            None => PutMode::Create,
            Some(v) => {
                if v.e_tag.is_none() {
                    return Err(RemoteError::Unsupported {
                        target,
                        op: "conditional put",
                        detail: "the expected version has no ETag to match".to_owned(),
                    });
                }
                PutMode::Update(UpdateVersion {
                    e_tag: v.e_tag.clone(),
                    version: v.version.clone(),
                })
            }
        };
        let store = &self.inner.store;
        self.run("conditional put", &target, self.deadline(), async {
            let options = PutOptions {
                mode,
                ..Default::default()
            };
            match store
                .put_opts(&path, PutPayload::from_bytes(bytes), options)
                .await
            {
                Ok(result) => Ok(CondPut::Done(ObjectVersion {
                    e_tag: result.e_tag,
                    version: result.version,
                })),
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                    Ok(CondPut::Conflict)
                }
                Err(e) => Err(RemoteError::from_store(e, &target, "conditional put")),
            }
        })
    }

    /// Validates a key and converts it to the store's path type.
    pub(crate) fn path(&self, key: &str) -> Result<StorePath> {
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

    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.inner.settings.overall_timeout
    }

    /// Runs one operation: refuses it while the breaker is open, bounds it by `deadline`,
    /// and feeds the outcome to the breaker.
    pub(crate) fn run<T: Send>(
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
        let result = self.block_on(async {
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
        });
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

    /// Drives `fut` to completion on this client's runtime.
    pub(crate) fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let Some(runtime) = self.inner.runtime.as_ref() else {
            unreachable!("the runtime is only taken when the client is dropped");
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // tokio panics on `block_on` inside an async context; a fresh thread has none.
            std::thread::scope(|scope| match scope.spawn(|| runtime.block_on(fut)).join() {
                Ok(output) => output,
                Err(panic) => std::panic::resume_unwind(panic),
            })
        } else {
            runtime.block_on(fut)
        }
    }

    /// Enters this client's runtime, so that tasks spawned meanwhile run on it.
    pub(crate) fn enter(&self) -> Option<tokio::runtime::EnterGuard<'_>> {
        self.inner.runtime.as_ref().map(Runtime::enter)
    }
}

/// What a body collector needs to report progress and stalls.
struct Transfer<'a> {
    target: &'a str,
    stall: Duration,
    received: &'a AtomicU64,
    total: u64,
}

/// Reads a response body of `expected` bytes, failing when no bytes arrive for the stall
/// timeout or when the length is wrong.
async fn collect(
    mut body: BoxStream<'static, object_store::Result<Bytes>>,
    expected: u64,
    transfer: &Transfer<'_>,
    progress: &dyn Progress,
) -> Result<Bytes> {
    let capacity = usize::try_from(expected)
        .unwrap_or(usize::MAX)
        .min(64 * 1024 * 1024);
    let mut buf = BytesMut::with_capacity(capacity);
    loop {
        let next = match tokio::time::timeout(transfer.stall, body.next()).await {
            Ok(next) => next,
            Err(_) => {
                return Err(RemoteError::Stalled {
                    target: transfer.target.to_owned(),
                    after: transfer.stall,
                    received: transfer.received.load(Ordering::Relaxed),
                    total: transfer.total,
                });
            }
        };
        match next {
            None => break,
            Some(Err(e)) => return Err(RemoteError::from_store(e, transfer.target, "download")),
            Some(Ok(chunk)) => {
                buf.extend_from_slice(&chunk);
                transfer.received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                progress.advance(chunk.len() as u64);
                if buf.len() as u64 > expected {
                    break;
                }
            }
        }
    }
    if buf.len() as u64 != expected {
        return Err(RemoteError::Truncated {
            target: transfer.target.to_owned(),
            expected,
            received: buf.len() as u64,
        });
    }
    Ok(buf.freeze())
}
