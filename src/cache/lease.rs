//! Leases: holds on artifacts against garbage collection, for readers that keep using a path
//! after the call that handed it out has returned.

use std::time::Duration;

use super::{Cache, CacheError};
use crate::ids::ArtifactId;
use crate::lock::OpGuard;

/// A hold on an artifact against garbage collection, released on drop unless kept.
#[derive(Debug)]
pub struct Lease<'a> {
    cache: &'a Cache,
    /// The catalog row; none on a read-only cache, where nothing can collect.
    id: Option<i64>,
    expires_at: i64,
    keep: bool,
}

impl Lease<'_> {
    /// When the lease ends by itself (unix ms).
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// Keeps the lease after this guard is dropped, until it expires (for a command-line caller
    /// that reads the path after the process has exited).
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(id) = self.id.filter(|_| !self.keep) else {
            return;
        };
        if let Err(e) = self.cache.catalog().release_lease(id) {
            tracing::warn!("could not release lease {id}: {e}");
        }
    }
}

impl Cache {
    /// Holds `artifact` against garbage collection for `duration` (see [`Lease`]). Fails with a
    /// miss when the artifact is no longer present: a lease never protects what is gone.
    pub fn lease(&self, artifact: &ArtifactId, duration: Duration) -> Result<Lease<'_>, CacheError> {
        let op = self.operation()?;
        if !self.store().is_present(artifact) {
            return Err(CacheError::Unknown {
                source_name: artifact.to_string(),
                root: self.root().to_path_buf(),
            });
        }
        self.lease_locked(&op, artifact, duration)
    }

    /// Takes a lease under the caller's operation guard: whoever resolved `artifact` under the
    /// same guard knows a collection cannot have removed it in between.
    pub(crate) fn lease_locked(
        &self,
        _op: &OpGuard,
        artifact: &ArtifactId,
        duration: Duration,
    ) -> Result<Lease<'_>, CacheError> {
        let expires_at = self
            .now_ms()
            .saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX));
        let holder = format!("pid {}", std::process::id());
        let mut catalog = self.catalog();
        if catalog.read_only().is_some() {
            // Nothing can collect on a cache that can only be read: the lease holds by itself.
            return Ok(Lease {
                cache: self,
                id: None,
                expires_at,
                keep: true,
            });
        }
        let id = Some(catalog.add_lease(artifact, &holder, expires_at)?);
        drop(catalog);
        Ok(Lease {
            cache: self,
            id,
            expires_at,
            keep: false,
        })
    }
}
