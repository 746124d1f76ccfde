//! The content-addressed store: immutable artifacts (files and trees) named by the digest of
//! their manifest.
//!
//! Publishing follows docs/DESIGN.md ("No torn reads"): the content is written into a private staging directory, hashed
//! and made read-only there, made durable (one `syncfs` for a tree), then renamed without replace
//! into `objects/ab/<id>` and the parent directory fsynced. Losing that rename to another writer
//! means the same content is already published: ours is discarded.

mod identity;
mod manifest;
pub mod rule;
mod tree;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use fs_err as fs;

pub use manifest::{ArtifactKind, EntryKind, Manifest, ManifestEntry, ManifestHasher};
pub use tree::{Progress, hash_file};

use crate::fs::{
    Staged, StagingArea, SweepReport, annotate, create_dir_all_durable, fsync_dir, rename_noreplace,
    sync_tree, sync_tree_each,
};
use crate::ids::ArtifactId;
use crate::layout::Layout;
use crate::lock::OpGuard;

/// Trees with more entries than this are made durable with one `syncfs` instead of one fsync per
/// file and directory.
const SYNCFS_ABOVE_ENTRIES: usize = 64;
const MANIFEST_FILE: &str = "manifest.json";
const CONTENT: &str = "content";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing to import does not exist.
    #[error("`{path}` does not exist; give the path of a file or directory to import")]
    SourceMissing {
        /// The missing path.
        path: PathBuf,
    },
    /// The top of what is imported or published is neither a regular file nor a directory.
    #[error(
        "`{path}` is a {kind}, but the top of an artifact must be a regular file or a directory \
         (symlinks, FIFOs, sockets and devices cannot be an artifact themselves; symlinks are \
         kept inside a directory)"
    )]
    Unsupported {
        /// The offending path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// An entry of a tree that no tree may hold (docs/DESIGN.md, "What one side writes, the other reads").
    #[error("`{}` cannot be stored: {refused}", root.display())]
    Refused {
        /// The top of the tree.
        root: PathBuf,
        /// The entry (relative to `root`) and why.
        refused: rule::Refused,
    },
    /// Disk full while writing into the cache.
    #[error("no space left while writing `{path}` into the cache; free space or run `warmcache gc`")]
    DiskFull {
        /// What was being written.
        path: PathBuf,
    },
    /// The cache root cannot be written.
    #[error("cannot write to the cache at `{path}` ({source}); choose a writable --root or WARMCACHE_ROOT")]
    ReadOnly {
        /// The path that could not be written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Content that was expected to be a given artifact is not (a download that an index
    /// described wrongly); it was not published.
    #[error(
        "the content staged at `{path}` is artifact {actual}, not the expected {expected}; it was \
         discarded, nothing was published"
    )]
    IdMismatch {
        /// The staging directory.
        path: PathBuf,
        /// The id the content was supposed to have.
        expected: String,
        /// The id its manifest hashes to.
        actual: String,
    },
    /// Any other I/O error (the message names the path and operation).
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl StoreError {
    /// Classifies an I/O error that happened while writing into the cache.
    pub(crate) fn writing(err: io::Error, path: &Path) -> Self {
        match err.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StoreError::DiskFull {
                path: path.to_path_buf(),
            },
            io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied => StoreError::ReadOnly {
                path: path.to_path_buf(),
                source: err,
            },
            _ => StoreError::Io(err),
        }
    }
}

/// A published artifact.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Published {
    /// The artifact id (BLAKE3 of the manifest).
    pub id: ArtifactId,
    /// The path of the content (a file or a directory).
    pub path: PathBuf,
    /// File or tree.
    pub kind: ArtifactKind,
    /// Total bytes of its files.
    pub size: u64,
    /// Number of regular files.
    pub files: u64,
    /// Space the artifact takes on disk (blocks; hard-linked data once).
    pub disk_usage: u64,
    /// False when identical content was already published (nothing new was stored).
    pub created: bool,
    /// The content's stat identity, taken right after its content was hashed (or, for content
    /// already published, re-hashed), so it describes intact content; `None` when this
    /// description did not come from a publish (the catalog then keeps what it has).
    pub identity: Option<String>,
}

/// One problem found by [`Store::verify`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Damage {
    /// The path inside the content (empty for the artifact itself).
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

/// The content-addressed store of one cache root.
#[derive(Debug, Clone)]
pub struct Store {
    layout: Layout,
    staging: StagingArea,
    /// Set once this store swept the staging leftovers of dead processes (see [`Store::stage`]).
    swept: Arc<Once>,
}

impl Store {
    /// The store of a (created) layout.
    pub fn new(layout: &Layout) -> io::Result<Self> {
        let staging = StagingArea::new(layout.staging_dir())?;
        Ok(Self {
            layout: layout.clone(),
            staging,
            swept: Arc::new(Once::new()),
        })
    }

    /// The staging area (same file system as the objects).
    pub fn staging(&self) -> &StagingArea {
        &self.staging
    }

    /// A fresh staging directory for content that will be published with
    /// [`Store::publish_staged`]; write the content at [`content_path_in`].
    ///
    /// The first call of a process sweeps the staging leftovers of dead processes: the moment a
    /// process is about to fill staging is when their space matters, and a cache hit, which
    /// stages nothing, does not pay for listing the directory (docs/DESIGN.md, "Staging and lock
    /// files").
    pub fn stage(&self, purpose: &str) -> Result<Staged, StoreError> {
        self.swept.call_once(|| {
            self.sweep_staging();
        });
        self.staging
            .create_dir(purpose)
            .map_err(|e| StoreError::writing(e, self.staging.dir()))
    }

    /// Removes the staging leftovers of dead processes, logging what it did; a failure is only
    /// logged (on a read-only cache the leftovers wait for a writable one; anything else shows
    /// again when staging is written).
    pub fn sweep_staging(&self) -> SweepReport {
        match self.staging.sweep() {
            Ok(swept) => {
                if swept.removed > 0 {
                    tracing::info!("swept {} staging leftover(s) of dead processes", swept.removed);
                }
                swept
            }
            Err(e) => {
                tracing::debug!("staging leftovers not swept: {e}");
                SweepReport::default()
            }
        }
    }

    /// The path of an artifact's content (which may or may not exist).
    pub fn content_path(&self, id: &ArtifactId) -> PathBuf {
        self.layout.object_dir(id).join(CONTENT)
    }

    /// Whether an artifact's content is there. Opens rather than stats, so the answer describes
    /// a handle that existed; a reader must still treat a later failure to open as a miss.
    pub fn is_present(&self, id: &ArtifactId) -> bool {
        crate::fs::open_existing(&self.content_path(id)).is_ok_and(|opened| opened.is_some())
    }

    /// The artifact's current stat identity (see `store/identity.rs`), from one open and `fstat`
    /// for a file and one `lstat` per entry for a tree; `None` when the content is gone (a miss).
    pub fn identity(&self, id: &ArtifactId) -> io::Result<Option<String>> {
        let path = self.content_path(id);
        let Some((file, meta)) = crate::fs::open_existing(&path)? else {
            return Ok(None);
        };
        match identity::of_opened(&path, &meta, &file) {
            Ok(identity) => Ok(Some(identity)),
            // Collected while being walked: as gone as if the open had failed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Copies a file or directory into the cache and publishes it (under the operation lock, so
    /// garbage collection cannot take it before the caller records it).
    pub fn import_path(
        &self,
        op: &OpGuard,
        source: &Path,
        progress: &Progress,
    ) -> Result<Published, StoreError> {
        let meta = match std::fs::symlink_metadata(source) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::SourceMissing {
                    path: source.to_path_buf(),
                });
            }
            Err(e) => return Err(annotate(e, "inspect", source).into()),
        };
        // Follow a symlink given on the command line (the user named it), never inside a tree.
        let meta = if meta.file_type().is_symlink() {
            fs::metadata(source)?
        } else {
            meta
        };
        let staged = self.stage("import")?;
        let dest = content_path_in(&staged);
        let (kind, entries) = if meta.is_dir() {
            (ArtifactKind::Dir, tree::copy_tree(source, &dest, progress)?)
        } else if meta.is_file() {
            (
                ArtifactKind::File,
                vec![tree::copy_one_file(source, &dest, progress)?],
            )
        } else {
            return Err(StoreError::Unsupported {
                path: source.to_path_buf(),
                kind: tree::describe(&meta),
            });
        };
        self.publish(op, staged, Manifest::new(kind, entries))
    }

    /// Copies a file or directory into a fresh staging directory (at [`content_path_in`]), left
    /// writable so that permission rules and hooks can change it before
    /// [`Store::publish_staged`].
    pub fn stage_copy(&self, source: &Path, progress: &Progress) -> Result<Staged, StoreError> {
        let meta = fs::metadata(source).map_err(|_| StoreError::SourceMissing {
            path: source.to_path_buf(),
        })?;
        let staged = self.stage("import")?;
        let dest = content_path_in(&staged);
        if meta.is_dir() {
            tree::copy_tree(source, &dest, progress)?;
        } else if meta.is_file() {
            tree::copy_one_file(source, &dest, progress)?;
        } else {
            return Err(StoreError::Unsupported {
                path: source.to_path_buf(),
                kind: tree::describe(&meta),
            });
        }
        crate::fs::make_tree_writable(&dest).map_err(|e| StoreError::writing(e, &dest))?;
        Ok(staged)
    }

    /// Publishes content already written at [`content_path_in`] of a staging directory (an
    /// extracted archive, a build output): hashes it, makes it read-only and durable, publishes.
    pub fn publish_staged(
        &self,
        op: &OpGuard,
        staged: Staged,
        progress: &Progress,
    ) -> Result<Published, StoreError> {
        let manifest = self.staged_manifest(&staged, progress)?;
        self.publish(op, staged, manifest)
    }

    /// Like [`Store::publish_staged`], but only when the content is artifact `expected`: content
    /// that hashes to anything else (a download some remote index described wrongly) is discarded
    /// with [`StoreError::IdMismatch`] before it becomes visible, so the store never holds what
    /// could not be verified against the id it was fetched for.
    pub fn publish_staged_as(
        &self,
        op: &OpGuard,
        staged: Staged,
        expected: &ArtifactId,
        progress: &Progress,
    ) -> Result<Published, StoreError> {
        let manifest = self.staged_manifest(&staged, progress)?;
        let actual = manifest.id()?;
        if &actual != expected {
            return Err(StoreError::IdMismatch {
                path: staged.path().to_path_buf(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        self.publish(op, staged, manifest)
    }

    /// Hashes the content of a staging directory into its manifest.
    fn staged_manifest(&self, staged: &Staged, progress: &Progress) -> Result<Manifest, StoreError> {
        let content = content_path_in(staged);
        let meta = match std::fs::symlink_metadata(&content) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::SourceMissing { path: content });
            }
            Err(e) => return Err(annotate(e, "inspect", &content).into()),
        };
        let (kind, entries) = if meta.is_dir() {
            (ArtifactKind::Dir, tree::hash_tree(&content, progress)?)
        } else if meta.is_file() {
            (ArtifactKind::File, vec![tree::hash_one_file(&content, progress)?])
        } else {
            return Err(StoreError::Unsupported {
                path: content,
                kind: tree::describe(&meta),
            });
        };
        Ok(Manifest::new(kind, entries))
    }

    fn publish(&self, op: &OpGuard, mut staged: Staged, manifest: Manifest) -> Result<Published, StoreError> {
        let bytes = manifest.to_bytes()?;
        let id = manifest::id_of_bytes(&bytes);
        let stage_dir = staged.path().to_path_buf();
        let manifest_path = stage_dir.join(MANIFEST_FILE);
        {
            let write = || -> io::Result<()> {
                let mut file = fs::File::create(&manifest_path)?;
                io::Write::write_all(&mut file, &bytes)?;
                Ok(())
            };
            write().map_err(|e| StoreError::writing(e, &manifest_path))?;
        }
        // Content is read-only before it becomes visible, so no reader ever sees it change.
        let content = stage_dir.join(CONTENT);
        tree::seal_dirs(&content, &manifest).map_err(|e| StoreError::writing(e, &content))?;
        match manifest.kind {
            // One syncfs covers every file and directory of a large tree; a small one is cheaper to
            // fsync file by file than to flush everything else dirty on the file system.
            ArtifactKind::Dir if manifest.entries.len() > SYNCFS_ABOVE_ENTRIES => {
                sync_tree(&stage_dir).map_err(|e| StoreError::writing(e, &stage_dir))?
            }
            ArtifactKind::Dir => {
                sync_tree_each(&stage_dir).map_err(|e| StoreError::writing(e, &stage_dir))?
            }
            ArtifactKind::File => {
                for path in [&content, &manifest_path] {
                    let file = fs::File::open(path)?;
                    file.sync_all()
                        .map_err(|e| StoreError::writing(annotate(e, "fsync", path), path))?;
                }
                fsync_dir(&stage_dir)?;
            }
        }
        let target = self.layout.object_dir(&id);
        let shard = target.parent().unwrap_or(&target).to_path_buf();
        create_dir_all_durable(&shard).map_err(|e| StoreError::writing(e, &shard))?;
        let mut created =
            rename_noreplace(&stage_dir, &target).map_err(|e| StoreError::writing(e, &target))?;
        // The name is taken. Before trusting that copy (and recording its identity as intact),
        // re-hash it: a damaged or half-deleted copy is moved aside and ours published in its
        // place, which also repairs it.
        if !created && (!self.is_present(&id) || !self.verify(&id)?.is_empty()) {
            self.quarantine(op, &id)?;
            created = rename_noreplace(&stage_dir, &target).map_err(|e| StoreError::writing(e, &target))?;
        }
        if created {
            staged.keep();
            fsync_dir(&shard)?;
        }
        drop(staged);
        let disk_usage = crate::fs::disk_usage(&target)?;
        let identity = self.identity(&id)?;
        Ok(Published {
            disk_usage,
            path: target.join(CONTENT),
            id,
            kind: manifest.kind,
            size: manifest.size,
            files: manifest.files,
            created,
            identity,
        })
    }

    /// Writes a single-file artifact in the store's format without fsyncing it (the caller makes
    /// the whole store durable afterwards): for benchmark fills only (feature `internals`).
    #[cfg(feature = "internals")]
    pub fn write_file_unsynced(&self, _op: &OpGuard, bytes: &[u8]) -> Result<Published, StoreError> {
        use crate::store::EntryKind;
        let manifest = Manifest::new(
            ArtifactKind::File,
            vec![manifest::ManifestEntry {
                path: String::new(),
                kind: EntryKind::File,
                exec: false,
                size: bytes.len() as u64,
                digest: Some(blake3::hash(bytes).to_hex().to_string()),
                target: None,
            }],
        );
        let encoded = manifest.to_bytes()?;
        let id = manifest::id_of_bytes(&encoded);
        let dir = self.layout.object_dir(&id);
        fs::create_dir_all(&dir)?;
        let path = dir.join(CONTENT);
        fs::write(&path, bytes)?;
        crate::fs::set_permissions(&path, crate::fs::published_file_permissions(false))?;
        fs::write(dir.join(MANIFEST_FILE), &encoded)?;
        Ok(Published {
            identity: self.identity(&id)?,
            disk_usage: crate::fs::disk_usage(&dir)?,
            id,
            path,
            kind: ArtifactKind::File,
            size: bytes.len() as u64,
            files: 1,
            created: true,
        })
    }

    /// Reads an artifact's manifest; `None` when missing or undecodable (both are misses).
    pub fn read_manifest(&self, id: &ArtifactId) -> io::Result<Option<(Manifest, Vec<u8>)>> {
        let path = self.layout.object_dir(id).join(MANIFEST_FILE);
        Ok(crate::fs::read_if_exists(&path)?
            .and_then(|bytes| Manifest::from_bytes(&bytes).map(|manifest| (manifest, bytes))))
    }

    /// The ids of all published artifacts.
    pub fn list(&self) -> io::Result<Vec<ArtifactId>> {
        let mut ids = Vec::new();
        let objects = self.layout.objects_dir();
        for shard in fs::read_dir(&objects)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let name = entry?.file_name();
                if let Some(id) = name.to_str().and_then(|n| ArtifactId::new(n).ok()) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Re-hashes an artifact against its manifest and the manifest against the id. An empty
    /// result means intact.
    pub fn verify(&self, id: &ArtifactId) -> io::Result<Vec<Damage>> {
        let damage = |path: &str, problem: String| Damage {
            path: path.to_string(),
            problem,
        };
        let Some((manifest, bytes)) = self.read_manifest(id)? else {
            return Ok(vec![damage("", "manifest missing or undecodable".into())]);
        };
        if &manifest::id_of_bytes(&bytes) != id {
            return Ok(vec![damage("", "manifest does not match the artifact id".into())]);
        }
        tree::verify_content(&self.content_path(id), &manifest)
    }

    /// Moves an artifact out of `objects/` so it is never served again. Returns where it went.
    pub fn quarantine(&self, _op: &OpGuard, id: &ArtifactId) -> io::Result<PathBuf> {
        let from = self.layout.object_dir(id);
        let to = self
            .layout
            .quarantine_dir()
            .join(crate::fs::unique_name(&format!("{id}.")));
        fs::rename(&from, &to)?;
        fsync_dir(&self.layout.quarantine_dir())?;
        crate::fs::fsync_parent(&from)?;
        Ok(to)
    }
}

/// The files of the published artifacts under `layout` that `want(digest, size)` asks for, as
/// `(digest, path, size)`, read from the artifacts' manifests without creating, locking or
/// changing anything: how a restore finds content this machine already holds (docs/DESIGN.md,
/// "Restore"). An artifact collected meanwhile is simply missing; whoever reads a returned path
/// must check its bytes against the digest.
pub fn published_files(
    layout: &Layout,
    want: &dyn Fn(&str, u64) -> bool,
) -> io::Result<Vec<(String, PathBuf, u64)>> {
    let mut found = Vec::new();
    for shard in fs::read_dir(layout.objects_dir())? {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        for object in fs::read_dir(shard.path())? {
            let object = object?.path();
            let Ok(Some(bytes)) = crate::fs::read_if_exists(&object.join(MANIFEST_FILE)) else {
                continue;
            };
            let Some(manifest) = Manifest::from_bytes(&bytes) else {
                continue;
            };
            let content = object.join(CONTENT);
            for entry in manifest.entries {
                let Some(digest) = entry.digest else { continue };
                if entry.kind != EntryKind::File || !want(&digest, entry.size) {
                    continue;
                }
                let path = match manifest.kind {
                    ArtifactKind::File => content.clone(),
                    ArtifactKind::Dir => content.join(&entry.path),
                };
                found.push((digest, path, entry.size));
            }
        }
    }
    Ok(found)
}

/// Describes the directory tree at `root` as a manifest (paths, kinds, executable bits, sizes,
/// content digests, symlink targets) without writing anything in it: no permission changes, no
/// new files. [`Manifest::id`] of the result is the tree's content digest, the same one the tree
/// would get as an artifact. Fails like an import would on entries a manifest cannot hold
/// (sockets, devices, names that are not UTF-8).
pub fn describe_tree(root: &Path, progress: &Progress) -> Result<DescribedTree, StoreError> {
    let manifest = Manifest::new(ArtifactKind::Dir, tree::describe_tree(root, progress)?);
    let id = manifest.id()?;
    Ok(DescribedTree { manifest, id })
}

/// A tree described by [`describe_tree`]: its manifest and the digest that names it.
#[derive(Debug, Clone)]
pub struct DescribedTree {
    /// What the tree holds.
    pub manifest: Manifest,
    /// The digest of the manifest: the id the tree would have as an artifact.
    pub id: ArtifactId,
}

impl std::ops::Deref for DescribedTree {
    type Target = Manifest;

    fn deref(&self) -> &Manifest {
        &self.manifest
    }
}

/// Where content goes inside a staging directory from [`Store::stage`].
pub fn content_path_in(staged: &Staged) -> PathBuf {
    staged.path().join(CONTENT)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn modes(root: &Path) -> Vec<(PathBuf, u32)> {
        crate::fs::walk_sorted(root)
            .unwrap()
            .into_iter()
            .map(|(rel, _)| {
                let mode = std::fs::symlink_metadata(root.join(&rel))
                    .unwrap()
                    .permissions()
                    .mode();
                (rel, mode)
            })
            .collect()
    }

    #[test]
    fn describe_tree_changes_nothing_and_matches_the_artifact_digest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir_all(root.join("a/empty")).unwrap();
        std::fs::write(root.join("a/data.txt"), "data").unwrap();
        std::fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o775)).unwrap();
        std::os::unix::fs::symlink("a/data.txt", root.join("link")).unwrap();
        let before = modes(&root);

        let described = describe_tree(&root, &Progress::none()).unwrap();
        let described_id = described.id.clone();
        assert_eq!(modes(&root), before, "describing a tree must not chmod it");
        assert_eq!(described.files, 2);
        assert_eq!(described.size, 14);

        let copy = dir.path().join("copy");
        let entries = tree::copy_tree(&root, &copy, &Progress::none()).unwrap();
        assert_eq!(
            Manifest::new(ArtifactKind::Dir, entries).id().unwrap(),
            described_id
        );
    }
}
