//! Permissions: executable bits, read-only published trees, and removing such trees.

use std::fs::{Metadata, Permissions};
use std::io;
use std::path::Path;

use fs_err as fs;

use super::annotate;

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
/// directories become `r-x`. Children first, so the walk can still write while it goes. (The
/// store seals trees as it hashes them; tests use this to build read-only trees by hand.)
#[cfg(test)]
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

#[cfg(test)]
mod tests {
    use super::*;

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
