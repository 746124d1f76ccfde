//! Where everything lives under a cache root.
//!
//! ```text
//! ROOT/
//!   CACHEDIR.TAG                 tells backup tools this is a cache
//!   v1/                          the layout version: a new layout gets a new directory
//!     objects/ab/<id>/           one published artifact (immutable, named by its digest)
//!       manifest.json            what the content is (versioned)
//!       content                  the file, or the root of the tree
//!     staging/                   private work areas, same file system as objects/
//!     quarantine/                damaged artifacts moved aside by `verify`
//!     trash/                     artifacts being deleted by `gc`
//!     locks/                     the root lock and per-entry build locks
//!     catalog.sqlite             entries, failures, leases (SQLite, WAL)
//!     snapshot-stat/<h>          what `snapshot` last read of one DIR for one URL (a stat cache)
//!     reserve                    1 MiB that `gc` deletes first, so it can work on a full disk
//! ```

use std::io;
use std::path::{Path, PathBuf};

use crate::fs::{annotate, create_dir_all_durable, write_atomic};
use crate::ids::{ArtifactId, EntryName};

/// The layout version directory name. Bump it (and keep reading nothing from the old one) when
/// the meaning of anything below it changes incompatibly.
pub const LAYOUT_VERSION: &str = "v1";

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by warmcache.\n\
# For information about cache directory tags see https://bford.info/cachedir/\n";

/// The smallest reserve worth keeping: the catalog's WAL index and a few pages of WAL.
const MIN_RESERVE_BYTES: usize = 48 << 10;

/// The largest size of [`Layout::reserve`]: room for the catalog writes of a collection batch.
const RESERVE_BYTES: usize = 1 << 20;

/// Paths of one cache root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    base: PathBuf,
}

impl Layout {
    /// The layout of `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let base = root.join(LAYOUT_VERSION);
        Self { root, base }
    }

    /// Creates the directories and the cache tag if missing, and sets the gc reserve aside in a
    /// new root (an existing root gets it back after each collection, never on open: `gc` may
    /// have just released it to work on a full disk).
    pub fn create(&self) -> io::Result<()> {
        let new_root = !self.catalog().exists();
        create_dir_all_durable(&self.root)?;
        let tag = self.root.join("CACHEDIR.TAG");
        if !tag.exists() {
            write_atomic(&tag, CACHEDIR_TAG.as_bytes())?;
        }
        for dir in [
            self.objects_dir(),
            self.staging_dir(),
            self.quarantine_dir(),
            self.trash_dir(),
            self.entry_locks_dir(),
        ] {
            create_dir_all_durable(&dir).map_err(|e| annotate(e, "create cache directory", &dir))?;
        }
        if new_root {
            self.restore_reserve();
        }
        Ok(())
    }

    /// The root and every fixed directory under it (not the per-artifact ones).
    pub fn fixed_dirs(&self) -> Vec<PathBuf> {
        vec![
            self.root.clone(),
            self.base.clone(),
            self.objects_dir(),
            self.staging_dir(),
            self.quarantine_dir(),
            self.trash_dir(),
            self.base.join("locks"),
            self.entry_locks_dir(),
            self.stats_dir(),
        ]
    }

    /// Whether `path` (which need not exist) is inside this root: by path (after resolving
    /// symlinks of its deepest existing ancestor), and, on Unix, by identity, so the same
    /// directories reached another way (a bind mount, a container volume, `/proc/PID/root`) are
    /// caught too. A place no command may write a tree into, since the store's artifacts never
    /// change: `activate` refuses such a destination, and `restore` such a directory.
    pub fn holds(&self, path: &Path) -> bool {
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

    /// Whether this root lies inside `dir` (which need not exist): by path, after resolving
    /// symlinks, and on Unix by identity (`dir` is the root or one of its ancestors reached
    /// another way). `restore` replaces DIR wholesale and `snapshot` uploads it, so neither may
    /// take a directory holding the live cache (a home directory holding `~/.cache/warmcache`).
    pub fn lies_within(&self, dir: &Path) -> bool {
        let root = crate::fs::resolve_existing_prefix(self.root());
        let dir_resolved = crate::fs::resolve_existing_prefix(dir);
        if root.starts_with(&dir_resolved) {
            return true;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let identity = |path: &Path| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
            if let Some(id) = identity(dir) {
                return root.ancestors().any(|a| identity(a) == Some(id));
            }
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
        let mut inside: HashSet<(u64, u64)> = self.fixed_dirs().iter().filter_map(|d| identity(d)).collect();
        for shard in std::fs::read_dir(self.objects_dir())
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

    /// The cache root as given.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Published artifacts.
    pub fn objects_dir(&self) -> PathBuf {
        self.base.join("objects")
    }

    /// The directory of one artifact (`objects/ab/<id>`); the two-character shard keeps
    /// directories small.
    pub fn object_dir(&self, id: &ArtifactId) -> PathBuf {
        let id = id.as_str();
        // Ids are 64 hex digits, so the shard always exists.
        let shard = id.get(..2).unwrap_or("__");
        self.objects_dir().join(shard).join(id)
    }

    /// Private staging locations.
    pub fn staging_dir(&self) -> PathBuf {
        self.base.join("staging")
    }

    /// Damaged artifacts moved aside by `verify`.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.base.join("quarantine")
    }

    /// Artifacts being deleted by garbage collection.
    pub fn trash_dir(&self) -> PathBuf {
        self.base.join("trash")
    }

    /// The lock every operation holds shared and garbage collection holds exclusive.
    pub fn root_lock(&self) -> PathBuf {
        self.base.join("locks").join("root.lock")
    }

    /// Per-entry build locks.
    pub fn entry_locks_dir(&self) -> PathBuf {
        self.base.join("locks").join("entries")
    }

    /// The build lock of an entry: named by a digest of the name, so any name maps to a safe,
    /// fixed-length file name.
    pub fn entry_lock(&self, name: &EntryName) -> PathBuf {
        self.keyed_lock(name.as_str())
    }

    /// The run record beside an entry's build lock: the token of the build running under it
    /// (`shell::RunRecord`), so the lock's next holder can end a build whose holder was killed.
    pub fn entry_run_record(&self, name: &EntryName) -> PathBuf {
        let mut path = self.entry_lock(name).into_os_string();
        path.push(".run");
        PathBuf::from(path)
    }

    /// The report of the last background build of an entry (stale-while-revalidate): the
    /// detached `warmcache` that runs it writes its stderr there, beside the entry's build lock.
    pub fn entry_revalidation_log(&self, name: &EntryName) -> PathBuf {
        let mut path = self.entry_lock(name).into_os_string();
        path.push(".log");
        PathBuf::from(path)
    }

    /// The lock of an import source (an archive's digest with the import options), so that
    /// concurrent importers of one archive extract it once.
    pub fn source_lock(&self, key: &str) -> PathBuf {
        self.keyed_lock(key)
    }

    fn keyed_lock(&self, key: &str) -> PathBuf {
        let digest = blake3::hash(key.as_bytes()).to_hex();
        self.entry_locks_dir().join(format!("{}.lock", &digest[..32]))
    }

    /// The lock that keeps garbage collections from running at once.
    pub fn gc_lock(&self) -> PathBuf {
        self.base.join("locks").join("gc.lock")
    }

    /// The stat cache of `snapshot` for the directory `dir` (canonical) snapshotted to `url`:
    /// `v1/snapshot-stat/<first 32 hex digits of the BLAKE3 of dir NUL url>`. One file per
    /// pair, so two trees or two remotes never share (or fight over) one.
    pub fn snapshot_stat(&self, dir: &Path, url: &str) -> PathBuf {
        let mut key = blake3::Hasher::new();
        key.update(dir.as_os_str().as_encoded_bytes());
        key.update(b"\0");
        key.update(url.as_bytes());
        self.base
            .join("snapshot-stat")
            .join(&key.finalize().to_hex()[..32])
    }

    /// The per-process counter journals, folded into the catalog by the next writer
    /// (docs/DESIGN.md, "Counting hits without writing"); created when first needed.
    pub fn stats_dir(&self) -> PathBuf {
        self.base.join("stats")
    }

    /// The SQLite catalog.
    pub fn catalog(&self) -> PathBuf {
        self.base.join("catalog.sqlite")
    }

    /// Space set aside for garbage collection: on a full disk, deleting it lets `gc` write the
    /// catalog (which it must, before it may delete any artifact).
    pub fn reserve(&self) -> PathBuf {
        self.base.join("reserve")
    }

    /// Releases the space of [`Layout::reserve`]; nothing when it is not there.
    pub fn release_reserve(&self) -> io::Result<()> {
        match std::fs::remove_file(self.reserve()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(annotate(e, "remove", &self.reserve())),
            _ => Ok(()),
        }
    }

    /// Sets [`Layout::reserve`] aside again when space allows (best effort: without it a full
    /// disk only needs space freed by hand before `gc` can run).
    pub fn restore_reserve(&self) {
        let path = self.reserve();
        if path.exists() {
            return;
        }
        // A hundredth of the volume at most, so a small volume is not half reserve.
        #[cfg(unix)]
        let size = rustix::fs::statvfs(&self.base)
            .map(|fs| (fs.f_blocks.saturating_mul(fs.f_frsize) / 100) as usize)
            .map_or(RESERVE_BYTES, |hundredth| {
                hundredth.clamp(256 << 10, RESERVE_BYTES)
            });
        #[cfg(not(unix))]
        let size = RESERVE_BYTES;
        // What fits: a collection that freed nothing must still leave some reserve behind it.
        let mut size = size;
        while let Err(e) = write_atomic(&path, &vec![0u8; size]) {
            size /= 2;
            if size < MIN_RESERVE_BYTES {
                tracing::debug!("no space set aside for gc at `{}`: {e}", path.display());
                return;
            }
        }
    }
}
