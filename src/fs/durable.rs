//! Durability: making files, directories and whole trees reach the disk.

use std::fs::File;
use std::io;
use std::path::Path;

use fs_err as fs;

use super::annotate;

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

/// Fsyncs the directory that contains `path`.
pub fn fsync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(parent),
        _ => fsync_dir(Path::new(".")),
    }
}
