//! Listing keys of a [`Remote`] under a prefix (bounded).

use futures::StreamExt;
use object_store::ObjectStore;

use super::client::{ObjectMeta, ObjectVersion, Remote};
use super::error::RemoteError;

impl Remote {
    /// The objects whose keys start with `prefix/` (the whole bucket when `prefix` is empty: a
    /// key at the bucket's root), at most `limit` of them (in the store's order, which S3 defines
    /// as by key). Bounded in time like every operation, and in memory
    /// by `limit`: callers use it to look for a few small objects, never to walk a bucket.
    pub fn list(&self, prefix: &str, limit: usize) -> Result<Vec<ObjectMeta>, RemoteError> {
        let path = match prefix {
            "" => None,
            _ => Some(self.path(prefix)?),
        };
        let target = self.describe(prefix);
        let store = &self.inner.store;
        self.run("list", &target, self.deadline(), async {
            let mut stream = store.list(path.as_ref());
            let mut out = Vec::new();
            while out.len() < limit
                && let Some(item) = stream.next().await
            {
                let meta = item.map_err(|e| RemoteError::from_store(e, &target, "list"))?;
                out.push(ObjectMeta {
                    key: meta.location.to_string(),
                    size: meta.size,
                    last_modified: meta.last_modified.into(),
                    version: ObjectVersion {
                        e_tag: meta.e_tag,
                        version: meta.version,
                    },
                });
            }
            Ok(out)
        })
    }
}
