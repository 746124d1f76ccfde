//! An artifact's stat identity: a digest of what `stat` says about its content (for every file,
//! directory and symlink: path, type and mode, size, inode and ctime), recorded when the artifact
//! is published and compared on every hit (docs/DESIGN.md, "Corruption is never served").
//!
//! ctime is the key: the kernel sets it to "now" on every write, truncate, chmod, rename and
//! link, and no user can set it back, so content that was changed after publication cannot keep
//! its identity. The converse does not hold: a changed identity only means something touched the
//! content (a hard-link activation adds a link; a copied or restored cache root has new inodes),
//! so a mismatch is checked by re-hashing, never taken as damage by itself.
//!
//! A file artifact costs one `fstat` of the handle the hit opens anyway. A tree costs one
//! `lstat` per entry plus a `readdir` per directory: O(files) per hit (measured in
//! BENCHMARKS.md, "Hit check").

use std::fs::{File, Metadata};
use std::io;
use std::path::Path;

use crate::fs::annotate;

/// Feeds one entry's stat data into the digest.
fn add(hasher: &mut blake3::Hasher, rel: &[u8], meta: &Metadata) {
    hasher.update(&(rel.len() as u64).to_le_bytes());
    hasher.update(rel);
    for n in stat_numbers(meta) {
        hasher.update(&n.to_le_bytes());
    }
}

#[cfg(unix)]
fn stat_numbers(meta: &Metadata) -> [u64; 5] {
    use std::os::unix::fs::MetadataExt;
    [
        u64::from(meta.mode()),
        meta.size(),
        meta.ino(),
        meta.ctime() as u64,
        meta.ctime_nsec() as u64,
    ]
}

/// Without ctime and inode numbers, size, kind, read-only bit and mtime are what there is.
#[cfg(not(unix))]
fn stat_numbers(meta: &Metadata) -> [u64; 5] {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    [
        u64::from(meta.is_dir()),
        meta.len(),
        u64::from(meta.permissions().readonly()),
        mtime,
        0,
    ]
}

/// The identity of the content at `content`, given its opened handle and that handle's metadata
/// (so a single-file artifact costs no more than the `fstat` already done).
pub(super) fn of_opened(content: &Path, meta: &Metadata, file: &File) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"warmcache identity v1\0");
    add(&mut hasher, b"", meta);
    if meta.is_dir() {
        add_tree(&mut hasher, content, file)?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Every entry below the opened directory, in name order, stat'ed relative to its directory's
/// descriptor: no path is resolved twice, which makes this about twice as fast as `lstat` on
/// full paths (the walk is the whole cost of a tree's hit check).
#[cfg(unix)]
fn add_tree(hasher: &mut blake3::Hasher, content: &Path, dir: &File) -> io::Result<()> {
    let mut rel = Vec::new();
    add_dir(hasher, content, std::os::fd::AsFd::as_fd(dir), &mut rel)
}

#[cfg(unix)]
fn add_dir(
    hasher: &mut blake3::Hasher,
    content: &Path,
    dir: std::os::fd::BorrowedFd<'_>,
    rel: &mut Vec<u8>,
) -> io::Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let err = |e: rustix::io::Errno, rel: &[u8]| {
        let path = content.join(std::ffi::OsStr::from_bytes(rel));
        annotate(e.into(), "inspect", &path)
    };
    use std::os::unix::ffi::OsStrExt;
    let mut names = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(dir).map_err(|e| err(e, rel))?;
    while let Some(entry) = entries.read() {
        let name = entry.map_err(|e| err(e, rel))?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    names.sort();
    for name in names {
        let len = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        let st =
            rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW).map_err(|e| err(e, rel))?;
        hasher.update(&(rel.len() as u64).to_le_bytes());
        hasher.update(rel);
        for n in [
            u64::from(st.st_mode),
            st.st_size as u64,
            st.st_ino,
            st.st_ctime as u64,
            st.st_ctime_nsec as u64,
        ] {
            hasher.update(&n.to_le_bytes());
        }
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let sub = rustix::fs::openat(
                dir,
                name.as_c_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| err(e, rel))?;
            add_dir(hasher, content, std::os::fd::AsFd::as_fd(&sub), rel)?;
        }
        rel.truncate(len);
    }
    Ok(())
}

#[cfg(not(unix))]
fn add_tree(hasher: &mut blake3::Hasher, content: &Path, _dir: &File) -> io::Result<()> {
    for (rel, _) in crate::fs::walk_sorted(content)? {
        let path = content.join(&rel);
        let entry = std::fs::symlink_metadata(&path).map_err(|e| annotate(e, "inspect", &path))?;
        add(hasher, rel.as_os_str().as_encoded_bytes(), &entry);
    }
    Ok(())
}
