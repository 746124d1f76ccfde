//! Reading objects (head, small objects, ranged parallel verified downloads), conditional puts
//! and deletes of a [`Remote`].

use std::io::Write;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path as StorePath;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetRange, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    UpdateVersion,
};

use super::client::{CondPut, GetReport, NoProgress, ObjectMeta, ObjectVersion, Progress, Remote};
use super::error::RemoteError;

type Result<T, E = RemoteError> = std::result::Result<T, E>;

impl Remote {
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
    /// objects larger than [`super::RemoteSettings::max_small_object`].
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
    /// [`super::RemoteSettings::parallelism`] ranged requests of [`super::RemoteSettings::part_size`] in
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
        let io_err = |source| RemoteError::Io {
            target: target.clone(),
            op: "download",
            source,
        };
        let result = fs_err::File::create(dest).map_err(io_err).and_then(|mut file| {
            let mut sink = |piece: Bytes| file.write_all(&piece);
            let report = self.run("download", &target, self.deadline(), async {
                self.stream_parts(&path, &target, None, &mut sink, progress).await
            })?;
            file.flush().map_err(io_err)?;
            Ok(report)
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

    /// The size and version of the object to download, from one HEAD.
    async fn head_for_download(&self, path: &StorePath, target: &str) -> Result<(u64, ObjectVersion)> {
        let meta = self
            .inner
            .store
            .head(path)
            .await
            .map_err(|e| RemoteError::from_store(e, target, "download"))?;
        let version = ObjectVersion {
            e_tag: meta.e_tag.clone(),
            version: meta.version.clone(),
        };
        Ok((meta.size, version))
    }

    /// Streams `key` in order into `sink`, with up to [`super::RemoteSettings::parallelism`]
    /// ranged requests of [`super::RemoteSettings::part_size`] in flight, hashing the bytes as
    /// they pass, so a consumer (a decompressor) works while later parts are still arriving.
    ///
    /// Each part is fetched by a task of its own, so the transfers keep going (and their stall
    /// timers keep meaning "the server sent nothing") while `sink` blocks on a slow consumer;
    /// parts are handed over in order and at most `parallelism` are fetched ahead of it, so
    /// memory stays near `(parallelism + 1) * part_size` whatever the object's size. Dropping
    /// the download (an error, the deadline) aborts the tasks still running.
    ///
    /// `expected_size` must match the object's size before anything is fetched, and the bytes
    /// must hash to `expected_blake3`: the consumer must not act on what it got until this
    /// returns `Ok` (the last part's bytes reach `sink` before the digest can be checked). An
    /// error from `sink` stops the download and is returned as [`RemoteError::Io`].
    pub fn get_streamed(
        &self,
        key: &str,
        expected_size: u64,
        expected_blake3: &str,
        sink: &mut (dyn FnMut(Bytes) -> std::io::Result<()> + Send),
        progress: &dyn Progress,
    ) -> Result<GetReport> {
        let path = self.path(key)?;
        let target = self.describe(key);
        let started = Instant::now();
        let mut report = self.run("download", &target, self.deadline(), async {
            self.stream_parts(&path, &target, Some(expected_size), sink, progress)
                .await
        })?;
        if !expected_blake3.eq_ignore_ascii_case(&report.blake3) {
            return Err(RemoteError::DigestMismatch {
                target,
                expected: expected_blake3.to_ascii_lowercase(),
                actual: report.blake3,
            });
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// The one ranged, parallel download behind [`Self::get_streamed`] and
    /// [`Self::get_to_file`]: the parts in order into `sink`, hashed as they pass; with
    /// `expected_size`, the object's size is checked before anything is fetched.
    async fn stream_parts(
        &self,
        path: &StorePath,
        target: &str,
        expected_size: Option<u64>,
        sink: &mut (dyn FnMut(Bytes) -> std::io::Result<()> + Send),
        progress: &dyn Progress,
    ) -> Result<GetReport> {
        let settings = &self.inner.settings;
        let store = &self.inner.store;
        let (size, version) = self.head_for_download(path, target).await?;
        if let Some(expected) = expected_size
            && size != expected
        {
            return Err(RemoteError::SizeMismatch {
                target: target.to_owned(),
                expected,
                actual: size,
            });
        }
        progress.start(Some(size));
        let ranges = part_ranges(size, settings.part_size.max(1) as u64);
        let parts = ranges.len();
        let shared = std::sync::Arc::new(OwnedTransfer {
            target: target.to_owned(),
            stall: settings.stall_timeout,
            received: AtomicU64::new(0),
            total: size,
        });
        let e_tag = version.e_tag.clone();
        let pieces = stream::iter(ranges)
            .map(|range| {
                // Every part must come from the version we sized: a concurrent replacement fails
                // the download (412) instead of mixing two objects.
                let options = GetOptions {
                    range: Some(GetRange::Bounded(range.clone())),
                    if_match: e_tag.clone(),
                    ..Default::default()
                };
                let (store, path, shared) = (store.clone(), path.clone(), shared.clone());
                AbortOnDrop(tokio::spawn(async move {
                    let transfer = Transfer {
                        target: &shared.target,
                        stall: shared.stall,
                        received: &shared.received,
                        total: shared.total,
                    };
                    let result = store
                        .get_opts(&path, options)
                        .await
                        .map_err(|e| RemoteError::from_store(e, &shared.target, "download"))?;
                    // Progress is reported as parts are handed over, below: the tasks own
                    // nothing of the caller's.
                    collect(
                        result.into_stream(),
                        range.end - range.start,
                        &transfer,
                        &NoProgress,
                    )
                    .await
                }))
            })
            // In order, and never more than `parallelism` parts ahead of the consumer.
            .buffered(settings.parallelism.max(1));
        let mut pieces = std::pin::pin!(pieces);
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        while let Some(piece) = pieces.next().await {
            let piece = piece.map_err(|e| RemoteError::Io {
                target: target.to_owned(),
                op: "download",
                source: std::io::Error::other(format!("a download task failed: {e}")),
            })??;
            hasher.update(&piece);
            written += piece.len() as u64;
            progress.advance(piece.len() as u64);
            sink(piece).map_err(|source| RemoteError::Io {
                target: target.to_owned(),
                op: "download",
                source,
            })?;
        }
        check_received(target, size, written)?;
        Ok(GetReport {
            bytes: written,
            blake3: hasher.finalize().to_hex().to_string(),
            parts,
            version,
            elapsed: Duration::ZERO,
        })
    }

    /// Fetches byte ranges of objects (`(key, range)`, e.g. the frames a restore needs from
    /// several packs) with up to [`super::RemoteSettings::parallelism`] ranged GETs in flight,
    /// handing each body to `sink` with its index, in the order given. Each GET has the client's
    /// retries and stall timeout, the whole call the handle's deadline and the breaker, as every
    /// other download. Memory stays near `parallelism` ranges: callers keep ranges bounded.
    /// Returns the bytes fetched. A missing object is [`RemoteError::NotFound`] naming its key;
    /// an error from `sink` stops the fetch and is returned as [`RemoteError::Io`].
    pub fn get_ranges(
        &self,
        requests: &[(String, Range<u64>)],
        sink: &mut (dyn FnMut(usize, Bytes) -> std::io::Result<()> + Send),
        progress: &dyn Progress,
    ) -> Result<u64> {
        let Some((first, _)) = requests.first() else {
            return Ok(0);
        };
        let mut paths = Vec::with_capacity(requests.len());
        for (key, range) in requests {
            paths.push((self.path(key)?, self.describe(key), range.clone()));
        }
        let target = self.describe(first);
        let settings = &self.inner.settings;
        let store = &self.inner.store;
        self.run("download", &target, self.deadline(), async {
            let total: u64 = paths.iter().map(|(_, _, r)| r.end - r.start).sum();
            progress.start(Some(total));
            let pieces = stream::iter(paths)
                .map(|(path, target, range)| {
                    let store = store.clone();
                    let stall = settings.stall_timeout;
                    AbortOnDrop(tokio::spawn(async move {
                        let options = GetOptions {
                            range: Some(GetRange::Bounded(range.clone())),
                            ..Default::default()
                        };
                        let result = store
                            .get_opts(&path, options)
                            .await
                            .map_err(|e| RemoteError::from_store(e, &target, "download"))?;
                        let received = AtomicU64::new(0);
                        let len = range.end - range.start;
                        let transfer = Transfer {
                            target: &target,
                            stall,
                            received: &received,
                            total: len,
                        };
                        let body = collect(result.into_stream(), len, &transfer, &NoProgress).await?;
                        Ok::<_, RemoteError>((target, body))
                    }))
                })
                .buffered(settings.parallelism.max(1));
            let mut pieces = std::pin::pin!(pieces);
            let mut fetched = 0u64;
            let mut index = 0usize;
            while let Some(piece) = pieces.next().await {
                let (target, body) = piece.map_err(|e| RemoteError::Io {
                    target: target.clone(),
                    op: "download",
                    source: std::io::Error::other(format!("a download task failed: {e}")),
                })??;
                fetched += body.len() as u64;
                progress.advance(body.len() as u64);
                sink(index, body).map_err(|source| RemoteError::Io {
                    target,
                    op: "download",
                    source,
                })?;
                index += 1;
            }
            Ok(fetched)
        })
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
        self.run_write("conditional put", &target, self.deadline(), async {
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

    /// Bytes `range` of `key` in memory (a manifest segment or one zstd frame of a snapshot
    /// pack), or `None` when the object is missing. Exactly the range must arrive; at most
    /// [`super::RemoteSettings::max_small_object`] bytes are asked for.
    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>> {
        let path = self.path(key)?;
        let target = self.describe(key);
        let store = &self.inner.store;
        let expected = range.end.saturating_sub(range.start);
        let limit = self.inner.settings.max_small_object;
        if expected > limit {
            return Err(RemoteError::TooLarge {
                target,
                size: expected,
                limit,
            });
        }
        self.run("download", &target, self.deadline(), async {
            let options = GetOptions {
                range: Some(GetRange::Bounded(range.clone())),
                ..Default::default()
            };
            let result = match store.get_opts(&path, options).await {
                Ok(result) => result,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(RemoteError::from_store(e, &target, "download")),
            };
            let body = result
                .bytes()
                .await
                .map_err(|e| RemoteError::from_store(e, &target, "download"))?;
            if body.len() as u64 != expected {
                return Err(RemoteError::Truncated {
                    target: target.clone(),
                    expected,
                    received: body.len() as u64,
                });
            }
            Ok(Some(body))
        })
    }

    /// Copies the object `from` to `to` inside the bucket, on the server (no byte passes through
    /// this process): how a fallback restore seeds the exact key with the fallback's packs
    /// (docs/DESIGN.md, "Fallback keys"). Overwrites `to`; callers copy to a key they found
    /// absent, and copy immutable objects, so an overwrite writes the same bytes. `Ok(false)`
    /// when `from` does not exist.
    pub fn copy(&self, from: &str, to: &str) -> Result<bool> {
        let (source, path) = (self.path(from)?, self.path(to)?);
        let target = self.describe(to);
        let store = &self.inner.store;
        self.run_write("copy", &target, self.deadline(), async {
            let options = CopyOptions::new().with_mode(CopyMode::Overwrite);
            match store.copy_opts(&source, &path, options).await {
                Ok(()) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(RemoteError::from_store(e, &target, "copy")),
            }
        })
    }

    /// Deletes `key` (a missing object is not an error).
    pub fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        let target = self.describe(key);
        let store = &self.inner.store;
        self.run_write("delete", &target, self.deadline(), async {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(RemoteError::from_store(e, &target, "delete")),
            }
        })
    }
}

/// Byte ranges covering `size` bytes in parts of `part_size`.
fn part_ranges(size: u64, part_size: u64) -> Vec<Range<u64>> {
    (0..size.div_ceil(part_size))
        .map(|i| i * part_size..((i + 1) * part_size).min(size))
        .collect()
}

/// A [`Transfer`] that a spawned part task can own.
struct OwnedTransfer {
    target: String,
    stall: Duration,
    received: AtomicU64,
    total: u64,
}

/// A spawned task that is aborted when its handle is dropped (a failed or abandoned download
/// must not keep fetching parts nobody will read).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
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

/// An error unless the whole object (`expected` bytes) arrived: a stream that ended early is
/// truncated, never a shorter object.
fn check_received(target: &str, expected: u64, received: u64) -> Result<(), RemoteError> {
    if received != expected {
        return Err(RemoteError::Truncated {
            target: target.to_owned(),
            expected,
            received,
        });
    }
    Ok(())
}
