//! File-system primitives that every publish, activation and collection is built from.
//!
//! The rules they encode (see DESIGN.md, "Invariants"):
//! - publishing is stage → write → fsync → rename → fsync the parent directory;
//! - a content-addressed name is never replaced: [`rename_noreplace`] reports "someone else won";
//! - readers open first and inspect the handle ([`open_existing`]), so a vanished file is a miss;
//! - staging lives on the same file system as its destination, and leftovers from a crashed
//!   process are found by their released lock and swept ([`StagingArea::sweep`]).
//!
//! Errors are `io::Error`s whose message names the operation and the path(s) (through `fs-err`
//! or [`annotate`]) and whose [`io::ErrorKind`] is kept, so callers can still tell "already
//! exists" or "disk full" apart.

use std::ffi::OsString;
use std::fs::{File, Metadata, OpenOptions, Permissions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use fs_err as fs;

/// Wraps an `io::Error` with the operation and path, keeping its kind.
pub fn annotate(err: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("failed to {op} `{}`: {err}", path.display()))
}

/// Like [`annotate`], for operations with a source and a destination.
pub fn annotate2(err: io::Error, op: &str, from: &Path, to: &Path) -> io::Error {
    io::Error::new(
        err.kind(),
        format!("failed to {op} `{}` to `{}`: {err}", from.display(), to.display()),
    )
}

/// Creates a directory and its parents, then makes the new entry durable in its parent.
pub fn create_dir_all_durable(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(path)?;
    fsync_parent(path)
}

/// Makes a directory's entries (names created, renamed or removed in it) durable.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let dir = File::open(path).map_err(|e| annotate(e, "open directory", path))?;
        dir.sync_all().map_err(|e| annotate(e, "fsync directory", path))
    }
    #[cfg(not(unix))]
    {
        // Windows has no directory fsync; NTFS journals metadata (renames) itself.
        let _ = path;
        Ok(())
    }
}

/// Makes every file below `path` durable with as few system calls as the platform allows.
///
/// On Linux one `syncfs` flushes the whole file system that holds `path`: for a tree of tens of
/// thousands of files this is far cheaper than one `fsync` per file, and just as durable for the
/// files we wrote. Elsewhere each file and directory is fsynced.
pub fn sync_tree(path: &Path) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let dir = File::open(path).map_err(|e| annotate(e, "open", path))?;
        rustix::fs::syncfs(&dir).map_err(|e| annotate(e.into(), "syncfs", path))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        sync_tree_each(path)
    }
}

/// Fsyncs every regular file and directory below `path` (the portable form of [`sync_tree`]).
pub fn sync_tree_each(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            sync_tree_each(&entry?.path())?;
        }
        fsync_dir(path)
    } else if meta.is_file() {
        let file = File::open(path).map_err(|e| annotate(e, "open", path))?;
        file.sync_all().map_err(|e| annotate(e, "fsync", path))
    } else {
        Ok(())
    }
}

/// Renames `from` to `to` unless `to` already exists.
///
/// Returns `Ok(true)` when renamed and `Ok(false)` when `to` was already there, in which case
/// `from` is left in place for the caller to discard. For content-addressed names this is how two
/// writers of the same content race harmlessly: the loser keeps the winner's copy.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<bool> {
    match sys::rename_noreplace(from, to) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        // A directory rename onto a non-empty directory reports "not empty" on some systems.
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(false),
        Err(e) => Err(annotate2(e, "rename", from, to)),
    }
}

/// Atomically swaps two paths (files or directories), so that each name always refers to a whole
/// object. Fails with `ErrorKind::Unsupported` where the platform or file system cannot do it.
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    sys::exchange(a, b).map_err(|e| annotate2(e, "exchange", a, b))
}

/// Renames `from` over `to`, replacing it atomically, then makes the rename durable.
pub fn rename_replace_durable(from: &Path, to: &Path) -> io::Result<()> {
    rename_with_retry(from, to)?;
    fsync_parent(to)
}

/// `std::fs::rename` with the retries Windows needs when another process briefly holds the file
/// (antivirus, indexers); elsewhere a single attempt.
pub fn rename_with_retry(from: &Path, to: &Path) -> io::Result<()> {
    let mut attempt = 0;
    loop {
        match std::fs::rename(from, to) {
            Ok(()) => return Ok(()),
            Err(e) if cfg!(windows) && e.kind() == io::ErrorKind::PermissionDenied && attempt < 10 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(10 << attempt.min(5)));
            }
            Err(e) => return Err(annotate2(e, "rename", from, to)),
        }
    }
}

/// Fsyncs the directory that contains `path`.
pub fn fsync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(parent),
        _ => fsync_dir(Path::new(".")),
    }
}

/// Writes `contents` to `path` atomically and durably: a temporary file in the same directory,
/// fsync, rename over `path`, fsync the directory. Readers see the old or the new bytes, never a
/// mix.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(parent)
        .map_err(|e| annotate(e, "create a temporary file in", parent))?;
    tmp.write_all(contents)
        .map_err(|e| annotate(e, "write", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| annotate(e, "fsync", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| annotate(e.error, "rename into place", path))?;
    fsync_dir(parent)
}

/// Opens an existing file for reading and returns it with the metadata of the opened handle.
///
/// `Ok(None)` means it does not exist (a cache miss). The metadata comes from the handle, not the
/// path, so a concurrent rename or deletion cannot make the two disagree.
pub fn open_existing(path: &Path) -> io::Result<Option<(File, Metadata)>> {
    match File::open(path) {
        Ok(file) => {
            let meta = file.metadata().map_err(|e| annotate(e, "inspect", path))?;
            Ok(Some((file, meta)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(annotate(e, "open", path)),
    }
}

/// Reads a whole (small) file, treating "not found" as `None`.
pub fn read_if_exists(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(annotate(e, "read", path)),
    }
}

/// Whether a file's mode has any executable bit.
pub fn is_executable(meta: &Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        false
    }
}

/// The permissions a published file gets: read-only, executable if it was, never setuid, setgid
/// or sticky.
pub fn published_file_permissions(executable: bool) -> Permissions {
    mode_permissions(if executable { 0o555 } else { 0o444 })
}

/// Permissions from a Unix mode (on Windows only the read-only flag is kept).
pub fn mode_permissions(mode: u32) -> Permissions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        Permissions::from_mode(mode & 0o777)
    }
    #[cfg(not(unix))]
    {
        let mut perms = std::fs::metadata(".")
            .map(|m| m.permissions())
            .unwrap_or_else(|_| unreachable_perms());
        perms.set_readonly(mode & 0o222 == 0);
        perms
    }
}

#[cfg(not(unix))]
fn unreachable_perms() -> Permissions {
    // Only reached if the current directory cannot be inspected; a temporary file gives us a
    // Permissions value to start from.
    tempfile::tempfile()
        .and_then(|f| f.metadata())
        .map(|m| m.permissions())
        .expect("a temporary file")
}

/// Sets permissions without following a symlink (symlinks keep theirs).
pub fn set_permissions(path: &Path, perms: Permissions) -> io::Result<()> {
    fs::set_permissions(path, perms)
}

/// Makes a published tree read-only: files lose their write bits (keeping executable bits),
/// directories become `r-x`. Children first, so the walk can still write while it goes.
pub fn make_tree_read_only(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            make_tree_read_only(&entry?.path())?;
        }
        set_permissions(path, mode_permissions(0o555))
    } else if meta.is_file() {
        set_permissions(path, published_file_permissions(is_executable(&meta)))
    } else {
        Ok(())
    }
}

/// Makes a private tree writable by its owner again (files and directories), so that hooks can
/// modify a staged copy before it is sealed and published. Never follows symlinks.
pub fn make_tree_writable(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let exec = is_executable(&meta);
    let mode = if meta.is_dir() || exec { 0o755 } else { 0o644 };
    set_permissions(path, mode_permissions(mode))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            make_tree_writable(&entry?.path())?;
        }
    }
    Ok(())
}

/// Removes a file or a whole tree, restoring write permission on directories first (published
/// trees are read-only). Never follows symlinks. A path that is already gone is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(annotate(e, "inspect", path)),
    };
    if meta.is_dir() {
        make_dirs_writable(path)?;
        match std::fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(annotate(e, "remove directory", path)),
        }
    } else {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(annotate(e, "remove", path)),
        }
    }
}

fn make_dirs_writable(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(annotate(e, "inspect", path)),
    };
    if !meta.is_dir() {
        return Ok(());
    }
    if meta.permissions().readonly() || !owner_writable(&meta) {
        std::fs::set_permissions(path, mode_permissions(0o755))
            .map_err(|e| annotate(e, "make writable", path))?;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(annotate(e, "read directory", path)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| annotate(e, "read directory", path))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            make_dirs_writable(&entry.path())?;
        }
    }
    Ok(())
}

fn owner_writable(meta: &Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o200 != 0
    }
    #[cfg(not(unix))]
    {
        !meta.permissions().readonly()
    }
}

/// How a file is placed from the cache to somewhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    /// Reflink, then hardlink, then copy: the cheapest that works.
    Auto,
    /// Copy-on-write clone (Btrfs, XFS, APFS); fails where unsupported.
    Reflink,
    /// A hard link to the (read-only) cached file; needs the same file system.
    Hardlink,
    /// A full byte copy.
    Copy,
    /// A symbolic link to the cached path.
    Symlink,
}

impl LinkMode {
    /// The lowercase name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkMode::Auto => "auto",
            LinkMode::Reflink => "reflink",
            LinkMode::Hardlink => "hardlink",
            LinkMode::Copy => "copy",
            LinkMode::Symlink => "symlink",
        }
    }
}

/// Places one file from `src` at the new path `dst` (which must not exist) using `mode`, and
/// returns the mode actually used (`Auto` resolves to one of the others).
pub fn link_file(src: &Path, dst: &Path, mode: LinkMode) -> io::Result<LinkMode> {
    match mode {
        LinkMode::Reflink => reflink(src, dst).map(|()| LinkMode::Reflink),
        LinkMode::Hardlink => fs::hard_link(src, dst).map(|()| LinkMode::Hardlink),
        LinkMode::Copy => copy_file(src, dst).map(|()| LinkMode::Copy),
        LinkMode::Symlink => symlink(src, dst).map(|()| LinkMode::Symlink),
        LinkMode::Auto => {
            if reflink(src, dst).is_ok() {
                return Ok(LinkMode::Reflink);
            }
            if std::fs::hard_link(src, dst).is_ok() {
                return Ok(LinkMode::Hardlink);
            }
            copy_file(src, dst).map(|()| LinkMode::Copy)
        }
    }
}

/// Copies bytes and the executable bit (not ownership, not special bits).
pub fn copy_file(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = fs::metadata(src)?;
    std::fs::copy(src, dst).map_err(|e| annotate2(e, "copy", src, dst))?;
    set_permissions(
        dst,
        mode_permissions(if is_executable(&meta) { 0o755 } else { 0o644 }),
    )
}

/// Creates a symbolic link at `dst` pointing to `target`.
pub fn symlink(target: &Path, dst: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(target, dst).map_err(|e| annotate2(e, "symlink", dst, target))
    }
    #[cfg(windows)]
    {
        let res = if target.is_dir() {
            std::os::windows::fs::symlink_dir(target, dst)
        } else {
            std::os::windows::fs::symlink_file(target, dst)
        };
        res.map_err(|e| annotate2(e, "symlink", dst, target))
    }
}

/// Copy-on-write clone of `src` at the new path `dst`.
pub fn reflink(src: &Path, dst: &Path) -> io::Result<()> {
    sys::reflink(src, dst).map_err(|e| annotate2(e, "reflink", src, dst))
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A name unlikely to collide with any other process's: pid, time and a counter.
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}{}-{:x}-{n}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

/// A directory of private staging locations, on the same file system as what they publish into.
///
/// Each staging location `NAME` (a file or directory) is owned through `NAME.lock`, which its
/// creator holds locked for as long as it lives. The lock file appears under its final name only
/// once it is locked (it is locked under a temporary name, then renamed), so a sweeper that can
/// lock `NAME.lock` knows the owner is gone.
#[derive(Debug, Clone)]
pub struct StagingArea {
    dir: PathBuf,
}

/// What [`StagingArea::sweep`] removed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SweepReport {
    /// Staging locations of dead processes that were removed.
    pub removed: u64,
    /// Live staging locations left alone.
    pub live: u64,
}

const LOCK_SUFFIX: &str = ".lock";
const PENDING_PREFIX: &str = ".pending-";
/// A lock file still under its temporary name after this long belongs to a crashed process.
const PENDING_GRACE: Duration = Duration::from_secs(600);

impl StagingArea {
    /// A staging area rooted at `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// The directory holding the staging locations.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reserves a fresh staging path (nothing is created at it yet), locked for this process.
    pub fn reserve(&self, purpose: &str) -> io::Result<Staged> {
        let name = unique_name(&format!("{purpose}-"));
        let pending = self.dir.join(format!("{PENDING_PREFIX}{name}"));
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&pending)
            .map_err(|e| annotate(e, "create staging lock", &pending))?;
        lock.lock().map_err(|e| annotate(e, "lock", &pending))?;
        let lock_path = self.dir.join(format!("{name}{LOCK_SUFFIX}"));
        fs::rename(&pending, &lock_path)?;
        Ok(Staged {
            path: self.dir.join(name),
            lock_path,
            lock: Some(lock),
            keep: false,
        })
    }

    /// Reserves a staging directory and creates it.
    pub fn create_dir(&self, purpose: &str) -> io::Result<Staged> {
        let staged = self.reserve(purpose)?;
        fs::create_dir(&staged.path)?;
        Ok(staged)
    }

    /// Removes staging locations whose owner is gone (its lock can be taken), leaving live ones.
    pub fn sweep(&self) -> io::Result<SweepReport> {
        let mut report = SweepReport::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(annotate(e, "read staging directory", &self.dir)),
        };
        let mut names: Vec<OsString> = Vec::new();
        for entry in entries {
            names.push(
                entry
                    .map_err(|e| annotate(e, "read staging directory", &self.dir))?
                    .file_name(),
            );
        }
        for name in &names {
            let name_str = name.to_string_lossy();
            let path = self.dir.join(name);
            if let Some(base) = name_str.strip_suffix(LOCK_SUFFIX) {
                if base.starts_with(PENDING_PREFIX) {
                    continue;
                }
                // A lock file: if we can lock it, its owner died; remove what it guarded.
                let Ok(file) = OpenOptions::new().write(true).open(&path) else {
                    continue;
                };
                match file.try_lock() {
                    Ok(()) => {
                        remove_tree(&self.dir.join(base))?;
                        remove_tree(&path)?;
                        report.removed += 1;
                    }
                    Err(_) => report.live += 1,
                }
            } else if name_str.starts_with(PENDING_PREFIX) {
                let old = std::fs::symlink_metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > PENDING_GRACE);
                if old {
                    remove_tree(&path)?;
                }
            } else {
                // A staging location whose lock file is gone: the owner always creates the lock
                // first and a sweeper removes it last, so nobody owns this one.
                let lock = self.dir.join(format!("{name_str}{LOCK_SUFFIX}"));
                // Already removed above through its lock file, earlier in this listing.
                let still_there = std::fs::symlink_metadata(&path).is_ok();
                if still_there && !lock.exists() {
                    remove_tree(&path)?;
                    report.removed += 1;
                }
            }
        }
        Ok(report)
    }
}

/// A reserved staging path. Dropping it removes whatever is at the path and releases the lock,
/// unless [`Staged::keep`] was called (the content was moved away by a successful publish).
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    lock_path: PathBuf,
    lock: Option<File>,
    keep: bool,
}

impl Staged {
    /// The staging path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the staging content as moved away; only the lock is cleaned up on drop.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = remove_tree(&self.path)
        {
            tracing::warn!("could not remove staging leftover: {e}");
        }
        let _ = std::fs::remove_file(&self.lock_path);
        drop(self.lock.take());
    }
}

/// The space a file or tree really takes on disk: allocated blocks, each hard-linked inode counted
/// once, symlinks and directories included. Never follows symlinks. Elsewhere than Unix, the
/// apparent size of files.
pub fn disk_usage(path: &Path) -> io::Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(annotate(e, "inspect", &p)),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            if meta.nlink() <= 1 || meta.is_dir() || seen.insert((meta.dev(), meta.ino())) {
                total += meta.blocks() * 512;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = &mut seen;
            total += meta.len();
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&p)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(total)
}

/// Walks a directory tree without following symlinks, yielding paths relative to `root` in a
/// stable (sorted) order, parents before children.
pub fn walk_sorted(root: &Path) -> io::Result<Vec<(PathBuf, std::fs::FileType)>> {
    let mut out = Vec::new();
    walk_into(root, Path::new(""), &mut out)?;
    Ok(out)
}

fn walk_into(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, std::fs::FileType)>) -> io::Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<(OsString, std::fs::FileType)> = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let file_type = entry
            .file_type()
            .map_err(|e| annotate(e, "inspect", &entry.path()))?;
        entries.push((entry.file_name(), file_type));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, file_type) in entries {
        let child = rel.join(&name);
        out.push((child.clone(), file_type));
        if file_type.is_dir() {
            walk_into(root, &child, out)?;
        }
    }
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod sys {
    use std::fs::File;
    use std::io;
    use std::path::Path;

    use rustix::fs::{CWD, RenameFlags, renameat_with};

    pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            // File systems without RENAME_NOREPLACE (some network and FUSE file systems).
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
                super::portable_noreplace(from, to)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
        match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the file system cannot exchange paths atomically",
            )),
            Err(e) => Err(e.into()),
        }
    }

    pub fn reflink(src: &Path, dst: &Path) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let from = File::open(src)?;
        let to = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dst)?;
        // FICLONE: there is no reflink in std or rustix's safe API; this is the kernel's one call.
        const FICLONE: libc::c_ulong = 0x4004_9409;
        // SAFETY: both descriptors are open for the duration of the call; FICLONE takes an fd.
        let rc = unsafe { libc::ioctl(to.as_raw_fd(), FICLONE as _, from.as_raw_fd()) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            drop(to);
            let _ = std::fs::remove_file(dst);
            return Err(err);
        }
        let meta = from.metadata()?;
        to.set_permissions(meta.permissions())?;
        Ok(())
    }
}

#[cfg(target_os = "macos")]
mod sys {
    use std::ffi::CString;
    use std::io;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    fn c(path: &Path) -> io::Result<CString> {
        CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        let (a, b) = (c(from)?, c(to)?);
        // SAFETY: valid NUL-terminated paths.
        let rc = unsafe { libc::renamex_np(a.as_ptr(), b.as_ptr(), libc::RENAME_EXCL) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn exchange(from: &Path, to: &Path) -> io::Result<()> {
        let (a, b) = (c(from)?, c(to)?);
        // SAFETY: valid NUL-terminated paths.
        let rc = unsafe { libc::renamex_np(a.as_ptr(), b.as_ptr(), libc::RENAME_SWAP) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn reflink(src: &Path, dst: &Path) -> io::Result<()> {
        let (a, b) = (c(src)?, c(dst)?);
        // SAFETY: valid NUL-terminated paths.
        let rc = unsafe { libc::clonefile(a.as_ptr(), b.as_ptr(), 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos")))]
mod sys {
    use std::io;
    use std::path::Path;

    pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        super::portable_noreplace(from, to)
    }

    pub fn exchange(_: &Path, _: &Path) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "atomic exchange is not available on this platform",
        ))
    }

    pub fn reflink(_: &Path, _: &Path) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "reflinks are not available on this platform",
        ))
    }
}

/// Rename-without-replace where the kernel has no flag for it: a hard link fails if the name
/// exists (files); a directory rename fails onto a non-empty directory, and our published
/// directories are never empty (they hold a manifest).
#[allow(dead_code)]
fn portable_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_dir() {
        if std::fs::symlink_metadata(to).is_ok() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        std::fs::rename(from, to)
    } else {
        std::fs::hard_link(from, to)?;
        std::fs::remove_file(from)
    }
}

/// `path` made absolute with its deepest existing ancestor's symlinks resolved (the rest
/// appended as given), for asking whether a path that may not exist yet lies inside a directory.
pub fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(resolved) = std::fs::canonicalize(existing) {
            return rest
                .iter()
                .rev()
                .fold(resolved, |acc: PathBuf, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_noreplace_keeps_the_first_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, dst) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("dst"));
        std::fs::write(&a, b"first").unwrap();
        std::fs::write(&b, b"second").unwrap();
        assert!(rename_noreplace(&a, &dst).unwrap());
        assert!(!rename_noreplace(&b, &dst).unwrap());
        assert_eq!(std::fs::read(&dst).unwrap(), b"first");
        assert!(b.exists(), "the loser's copy stays for the caller to discard");
    }

    #[test]
    fn rename_noreplace_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, dst) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("dst"));
        for d in [&a, &b] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("f"), d.to_string_lossy().as_bytes()).unwrap();
        }
        assert!(rename_noreplace(&a, &dst).unwrap());
        assert!(!rename_noreplace(&b, &dst).unwrap());
        assert_eq!(
            std::fs::read(dst.join("f")).unwrap(),
            a.to_string_lossy().as_bytes()
        );
    }

    #[test]
    fn exchange_swaps_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::write(&b, b"file").unwrap();
        exchange(&a, &b).unwrap();
        assert!(a.is_file());
        assert!(b.is_dir());
    }

    #[test]
    fn staging_sweep_spares_live_and_removes_dead() {
        let tmp = tempfile::tempdir().unwrap();
        let area = StagingArea::new(tmp.path().join("staging")).unwrap();
        let live = area.create_dir("live").unwrap();
        std::fs::write(live.path().join("x"), b"x").unwrap();
        // A dead owner: the staging dir and its lock file exist but nobody holds the lock.
        let mut dead = area.create_dir("dead").unwrap();
        let dead_path = dead.path().to_path_buf();
        dead.keep();
        let dead_lock = dead.lock_path.clone();
        let lock_file = dead.lock.take();
        dead.lock_path = PathBuf::from("/nonexistent/none");
        drop(dead);
        drop(lock_file);
        assert!(dead_path.exists() && dead_lock.exists());
        let report = area.sweep().unwrap();
        assert_eq!(report.removed, 1);
        assert_eq!(report.live, 1);
        assert!(!dead_path.exists() && !dead_lock.exists());
        assert!(live.path().join("x").exists());
        drop(live);
        assert_eq!(std::fs::read_dir(area.dir()).unwrap().count(), 0);
    }

    #[test]
    fn open_existing_reports_a_miss() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(open_existing(&tmp.path().join("missing")).unwrap().is_none());
    }

    #[test]
    fn remove_tree_handles_read_only_trees() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path().join("t");
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        std::fs::write(t.join("a/b/f"), b"x").unwrap();
        make_tree_read_only(&t).unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
    }
}
