//! Uploads of a [`Remote`] that never overwrite: [`Remote::put_file`], [`Remote::put_stream`]
//! and [`RemoteWriter`], a synchronous `Write` that streams into an object with bounded memory.

use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart};

use super::client::{NoProgress, Progress, PutOutcome, Remote};
use super::error::RemoteError;

type Result<T, E = RemoteError> = std::result::Result<T, E>;

impl Remote {
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

    /// A [`std::io::Write`] that uploads to `key`, or `None` when an object already has that key.
    ///
    /// Bytes are buffered up to one part; larger uploads become multipart uploads with at most
    /// [`super::RemoteSettings::parallelism`] parts in flight (writes block for capacity). Call
    /// [`RemoteWriter::finish`]; dropping it unfinished aborts the upload and writes nothing.
    /// The whole upload must finish within [`super::RemoteSettings::overall_timeout`] of this call.
    pub fn writer(&self, key: &str) -> Result<Option<RemoteWriter>> {
        self.check_writable("upload", &self.describe(key))?;
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
}

/// Streams bytes into one new object; made by [`Remote::writer`].
///
/// The first part is held in memory; if the stream ends before it fills, the object is written
/// with one create-only `PutObject` (atomic, never overwrites). Otherwise a multipart upload
/// starts and parts go up in the background, at most [`super::RemoteSettings::parallelism`] at
/// a time; `write` blocks while they are all busy. Call [`Self::finish`]: dropping the writer
/// aborts the upload and leaves no object.
pub struct RemoteWriter {
    remote: Remote,
    key: String,
    path: StorePath,
    target: String,
    deadline: Instant,
    pending: BytesMut,
    multipart: Option<WriteMultipart>,
    failed: bool,
    /// Parts in flight at most, when lower than the settings' parallelism.
    in_flight: Option<usize>,
}

impl RemoteWriter {
    pub(crate) fn new(remote: Remote, key: String, path: StorePath, deadline: Instant) -> Self {
        let target = remote.describe(&key);
        Self {
            remote,
            key,
            path,
            target,
            deadline,
            pending: BytesMut::new(),
            multipart: None,
            failed: false,
            in_flight: None,
        }
    }

    /// Caps the parts in flight below [`super::RemoteSettings::parallelism`], so that a caller
    /// with a memory budget (a snapshot, docs/DESIGN.md, "Snapshots") can bound the
    /// upload's share: about `(in_flight + 1) * part_size` bytes. At least one.
    pub fn limit_in_flight(&mut self, parts: usize) {
        self.in_flight = Some(parts.max(1));
    }

    /// The key being written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Appends `bytes` to the upload.
    pub fn write_bytes(&mut self, bytes: Bytes) -> Result<()> {
        if self.failed {
            return Err(RemoteError::Other {
                target: self.target.clone(),
                op: "upload",
                detail: "an earlier write failed; the upload was abandoned".to_owned(),
            });
        }
        let result = self.write_inner(bytes);
        self.failed = result.is_err();
        result
    }

    fn write_inner(&mut self, bytes: Bytes) -> Result<()> {
        let part_size = self.remote.settings().part_size.max(1);
        let parallelism = self
            .remote
            .settings()
            .parallelism
            .min(self.in_flight.unwrap_or(usize::MAX))
            .max(1);
        if self.multipart.is_none() {
            self.pending.extend_from_slice(&bytes);
            if self.pending.len() < part_size {
                return Ok(());
            }
            let store = self.remote.inner.store.clone();
            let path = self.path.clone();
            let target = self.target.clone();
            let upload = self
                .remote
                .run_write("upload", &self.target, self.deadline, async move {
                    store
                        .put_multipart_opts(&path, PutMultipartOptions::default())
                        .await
                        .map_err(|e| RemoteError::from_store(e, &target, "upload"))
                })?;
            let mut multipart = WriteMultipart::new_with_chunk_size(upload, part_size);
            let first = std::mem::take(&mut self.pending).freeze();
            {
                // Parts are spawned as tasks, which must land on the remote runtime.
                let _runtime = self.remote.enter()?;
                multipart.put(first);
            }
            self.multipart = Some(multipart);
            return Ok(());
        }
        let Some(multipart) = self.multipart.as_mut() else {
            return Ok(());
        };
        let target = self.target.clone();
        self.remote
            .run_write("upload", &self.target, self.deadline, async {
                multipart
                    .wait_for_capacity(parallelism)
                    .await
                    .map_err(|e| RemoteError::from_store(e, &target, "upload"))
            })?;
        let _runtime = self.remote.enter()?;
        multipart.put(bytes);
        Ok(())
    }

    /// Completes the upload. [`PutOutcome::AlreadyExisted`] when a small object lost a
    /// create-only race (the other writer's object is kept).
    pub fn finish(mut self) -> Result<PutOutcome> {
        if self.failed {
            return Err(RemoteError::Other {
                target: self.target.clone(),
                op: "upload",
                detail: "an earlier write failed; the upload was abandoned".to_owned(),
            });
        }
        let target = self.target.clone();
        let deadline = self.deadline;
        match self.multipart.take() {
            Some(multipart) => self.remote.run_write("upload", &target, deadline, async {
                multipart
                    .finish()
                    .await
                    .map(|_| PutOutcome::Created)
                    .map_err(|e| RemoteError::from_store(e, &target, "upload"))
            }),
            None => {
                let payload = PutPayload::from_bytes(std::mem::take(&mut self.pending).freeze());
                let store = self.remote.inner.store.clone();
                let path = self.path.clone();
                self.remote.run_write("upload", &target, deadline, async {
                    let options = PutOptions {
                        mode: PutMode::Create,
                        ..Default::default()
                    };
                    match store.put_opts(&path, payload, options).await {
                        Ok(_) => Ok(PutOutcome::Created),
                        Err(
                            object_store::Error::AlreadyExists { .. }
                            | object_store::Error::Precondition { .. },
                        ) => Ok(PutOutcome::AlreadyExisted),
                        Err(e) => Err(RemoteError::from_store(e, &target, "upload")),
                    }
                })
            }
        }
    }
}

impl io::Write for RemoteWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Taking at most one part per call keeps memory bounded whatever the caller passes.
        let n = buf.len().min(self.remote.settings().part_size.max(1));
        self.write_bytes(Bytes::copy_from_slice(&buf[..n]))
            .map_err(io::Error::other)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for RemoteWriter {
    fn drop(&mut self) {
        if let Some(multipart) = self.multipart.take() {
            // Abort so the store can drop the uploaded parts; bounded, and best effort: a
            // lifecycle rule on the bucket cleans up whatever this misses.
            let _ = self
                .remote
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), multipart.abort()).await });
        }
    }
}

impl std::fmt::Debug for RemoteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWriter")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}
