//! Filling a cache fast for benchmarks (feature `internals`): many single-file artifacts written
//! in the store's format with one `syncfs` and one catalog transaction, instead of an fsync and a
//! transaction each. Everything stays in this crate so the on-disk format has one writer.

use super::{Cache, CacheError};
use crate::catalog::ArtifactRow;
use crate::store::ArtifactKind;

impl Cache {
    /// Publishes each `(bytes, accessed_at)` as an unnamed single-file artifact and records it
    /// with that access time; returns how many were new. Durable when it returns (one `syncfs`,
    /// then the rows), but unlike [`Cache::import`] it is not safe against a crash half-way:
    /// a benchmark helper, not an API.
    pub fn bulk_publish_files(
        &self,
        files: impl IntoIterator<Item = (Vec<u8>, i64)>,
    ) -> Result<usize, CacheError> {
        let op = self.operation()?;
        let mut rows = Vec::new();
        for (bytes, accessed_at) in files {
            let published = self.store().write_file_unsynced(&op, &bytes)?;
            rows.push(ArtifactRow {
                id: published.id,
                kind: ArtifactKind::File,
                size: published.size,
                files: 1,
                disk_usage: published.disk_usage,
                created_at: accessed_at,
                accessed_at,
                identity: published.identity,
            });
        }
        crate::fs::sync_tree(self.root())?;
        self.catalog().record_artifacts(&rows)?;
        Ok(rows.len())
    }
}
