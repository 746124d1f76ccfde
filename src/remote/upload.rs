//! [`RemoteWriter`]: a synchronous `Write` that streams into an object with bounded memory.

use std::io;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart};

use super::error::RemoteError;
use super::transfer::{PutOutcome, Remote};

type Result<T, E = RemoteError> = std::result::Result<T, E>;

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
        }
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
        let parallelism = self.remote.settings().parallelism.max(1);
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
                .run("upload", &self.target, self.deadline, async move {
                    store
                        .put_multipart_opts(&path, PutMultipartOptions::default())
                        .await
                        .map_err(|e| RemoteError::from_store(e, &target, "upload"))
                })?;
            let mut multipart = WriteMultipart::new_with_chunk_size(upload, part_size);
            let first = std::mem::take(&mut self.pending).freeze();
            {
                // Parts are spawned as tasks, which must land on this client's runtime.
                let _runtime = self.remote.enter();
                multipart.put(first);
            }
            self.multipart = Some(multipart);
            return Ok(());
        }
        let Some(multipart) = self.multipart.as_mut() else {
            return Ok(());
        };
        let target = self.target.clone();
        self.remote.run("upload", &self.target, self.deadline, async {
            multipart
                .wait_for_capacity(parallelism)
                .await
                .map_err(|e| RemoteError::from_store(e, &target, "upload"))
        })?;
        let _runtime = self.remote.enter();
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
            Some(multipart) => self.remote.run("upload", &target, deadline, async {
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
                self.remote.run("upload", &target, deadline, async {
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
