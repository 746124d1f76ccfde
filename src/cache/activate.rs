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
        if self.holds_path(dest) {
            return Err(ActivateError::InsideCache {
                dest: dest.to_path_buf(),
                root: self.root().to_path_buf(),
            }
            .into());
        }
        Ok(())
    }

    /// Whether `path` (which need not exist) is inside this cache's root, by path or reached
    /// another way (see `refuse_inside_root`): a place no command may write a tree into, since
    /// the store's artifacts never change. `activate` refuses such a destination, and so does
    /// `warmcache restore`.
    pub fn holds_path(&self, path: &Path) -> bool {
        let root = crate::fs::resolve_existing_prefix(self.root());
        let resolved = crate::fs::resolve_existing_prefix(path);
        if resolved.starts_with(&root) {
            return true;
        }
        #[cfg(unix)]
        if self.reached_by_identity(path, &resolved) {
            return true;
        }
        false
    }

    /// Whether an existing ancestor of `dest` (as given, made absolute, and as resolved) is a
    /// directory of the store, compared by device and inode. Only when some ancestor is on the
    /// root's device does this list the store's directories (a stat per artifact): an
    /// activation onto another file system pays one stat per ancestor.
    #[cfg(unix)]
    fn reached_by_identity(&self, dest: &Path, resolved: &Path) -> bool {
        use std::collections::HashSet;
        use std::os::unix::fs::MetadataExt;
        let identity = |path: &Path| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        let given = std::path::absolute(dest).unwrap_or_else(|_| dest.to_path_buf());
        let ancestors: HashSet<(u64, u64)> = given
            .ancestors()
            .chain(resolved.ancestors())
            .filter_map(identity)
            .collect();
        let Some((root_dev, _)) = identity(self.root()) else {
            return false;
        };
        if !ancestors.iter().any(|(dev, _)| *dev == root_dev) {
            return false;
        }
        let mut inside: HashSet<(u64, u64)> = self
            .layout()
            .fixed_dirs()
            .iter()
            .filter_map(|d| identity(d))
            .collect();
        for shard in std::fs::read_dir(self.layout().objects_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            inside.extend(identity(&shard.path()));
            for artifact in std::fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                inside.extend(identity(&artifact.path()));
                inside.extend(identity(&artifact.path().join("content")));
            }
        }
        ancestors.iter().any(|id| inside.contains(id))
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
