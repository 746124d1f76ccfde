//! Link modes: how a cached file is placed elsewhere (reflink, hard link, copy or symlink).

use std::io;
use std::path::Path;

use fs_err as fs;

use super::perms::{is_executable, mode_permissions, set_permissions};
use super::{annotate2, sys};

/// How a file is placed from the cache to somewhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    /// Reflink, else copy: the cheapest private copy. Never a hard link, so writing to DEST can
    /// never change the cache.
    Auto,
    /// Copy-on-write clone (Btrfs, XFS, APFS); fails where unsupported.
    Reflink,
    /// A hard link to the (read-only) cached file; needs the same file system. DEST is then
    /// read-only: it *is* the cached file, and a write to it (after a chmod) damages the cache.
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
