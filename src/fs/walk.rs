//! Walking trees: a stable sorted listing, and the space a tree really takes on disk.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use fs_err as fs;

use super::annotate;

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
