//! Activating an artifact of the cache at a path outside it: resolve the entry or id (checking it
//! for damage like any hit) and lease it in one step under the operation lock, recording a gc root
//! for a symlink activation, then hand the artifact to [`crate::activate`], which stages (checking
//! every digest it copies), runs hooks and swaps without any lock held. A damaged artifact is
//! quarantined and DEST left as it was (docs/DESIGN.md, "Corruption is never served",
//! "GC roots").

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Cache, CacheError};
use crate::activate::{ActivateError, ActivateOptions, Activation, ExpectedDigests, LinkMode};
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
        let (artifact, content, expected, _lease) = {
            let op = self.operation()?;
            // Checks the artifact like any hit (docs/DESIGN.md, "Corruption is never served").
            let artifact = self.resolve(&op, source).map_err(|e| match e {
                CacheError::Damaged {
                    artifact,
                    problem,
                    quarantined_to,
                    advice,
                } => CacheError::Damaged {
                    artifact,
                    problem,
                    quarantined_to,
                    advice: format!("`{}` was left unchanged; {advice}", dest.display()),
                },
                other => other,
            })?;
            // Held while the content is copied out, without holding collection off.
            let lease = self.lease_locked(&op, &artifact, ACTIVATION_LEASE)?;
            let content = self.store().content_path(&artifact);
            let expected = self
                .store()
                .read_manifest(&artifact)?
                .map(|(manifest, _)| expected_digests(manifest));
            if options.link == LinkMode::Symlink {
                // Recorded before the swap, while the lease protects the artifact: once the
                // swap is done, DEST keeps it alive for as long as it points at it. A root the
                // swap never made true is forgotten by the next collection.
                let root = std::path::absolute(dest).map_err(|err| ActivateError::Dest {
                    dest: dest.to_path_buf(),
                    err,
                })?;
                self.catalog().add_root(&root, &artifact, self.now_ms())?;
            }
            (artifact, content, expected, lease)
        };
        match crate::activate::activate_verified(&content, dest, options, expected.as_ref()) {
            Ok(activation) => Ok(Activated {
                artifact,
                source: content,
                activation,
            }),
            Err(ActivateError::Damaged { entry, problem, .. }) => {
                let problem = if entry.is_empty() {
                    problem
                } else {
                    format!("`{entry}`: {problem}")
                };
                let op = self.operation()?;
                let quarantined = self.quarantine_damaged(&op, &artifact, problem)?;
                Err(quarantined.into_error(format!(
                    "`{}` was left unchanged; run `warmcache ensure` for its entry, or import it again",
                    dest.display()
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Refuses a destination inside the cache root: by path (after resolving symlinks of the
    /// deepest existing ancestor), and, on Unix, by identity, so the same directories reached
    /// another way (a bind mount, a container volume, `/proc/PID/root`) are caught too: no
    /// existing ancestor of DEST, as given or resolved, may be the root, a directory of its
    /// layout, an object shard, an artifact's directory or its content directory.
    fn refuse_inside_root(&self, dest: &Path) -> Result<(), CacheError> {
        if self.layout().holds(dest) {
            return Err(ActivateError::InsideCache {
                dest: dest.to_path_buf(),
                root: self.root().to_path_buf(),
            }
            .into());
        }
        Ok(())
    }
}

/// The digests every regular file of an artifact must have, from its manifest.
fn expected_digests(manifest: crate::store::Manifest) -> ExpectedDigests {
    ExpectedDigests::new(
        manifest
            .entries
            .into_iter()
            .filter(|e| e.kind == crate::store::EntryKind::File)
            .filter_map(|e| e.digest.map(|digest| (e.path, digest))),
    )
}
