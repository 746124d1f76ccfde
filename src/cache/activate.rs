//! Activating an artifact of the cache at a path outside it: resolve the entry or id and lease it
//! in one step under the operation lock, then hand the artifact to [`crate::activate`], which
//! stages, runs hooks and swaps without any lock held.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Cache, CacheError};
use crate::activate::{ActivateError, ActivateOptions, Activation};
use crate::ids::ArtifactId;

/// How long an activation holds its artifact against garbage collection; the lease is released
/// as soon as the activation returns.
const ACTIVATION_LEASE: Duration = Duration::from_secs(3600);

/// The result of [`Cache::activate`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Activated {
    /// The artifact activated.
    pub artifact: ArtifactId,
    /// Its content path in the cache.
    pub source: PathBuf,
    /// What was done at the destination.
    pub activation: Activation,
}

impl Cache {
    /// Places the artifact named by `source` (an entry name or an artifact id) at `dest`
    /// atomically. A `dest` inside the cache root is refused: the store is immutable.
    pub fn activate(
        &self,
        source: &str,
        dest: &Path,
        options: &ActivateOptions,
    ) -> Result<Activated, CacheError> {
        self.refuse_inside_root(dest)?;
        let (artifact, content, _lease) = {
            let op = self.operation()?;
            let artifact = self.resolve(&op, source)?;
            // Held while the content is copied out, without holding collection off.
            let lease = self.lease_locked(&op, &artifact, ACTIVATION_LEASE)?;
            let content = self.store().content_path(&artifact);
            (artifact, content, lease)
        };
        let activation = crate::activate::activate(&content, dest, options)?;
        Ok(Activated {
            artifact,
            source: content,
            activation,
        })
    }

    /// Refuses a destination inside the cache root (compared after resolving symlinks of the
    /// deepest existing ancestor, so a link into the root is caught too).
    fn refuse_inside_root(&self, dest: &Path) -> Result<(), CacheError> {
        let root = crate::fs::resolve_existing_prefix(self.root());
        let resolved = crate::fs::resolve_existing_prefix(dest);
        if resolved.starts_with(&root) {
            return Err(ActivateError::InsideCache {
                dest: dest.to_path_buf(),
                root: self.root().to_path_buf(),
            }
            .into());
        }
        Ok(())
    }
}
