//! Copying, hashing and verifying the content of an artifact, one pass per file.

use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use fs_err as fs;

use super::manifest::{ArtifactKind, EntryKind, Manifest, ManifestEntry};
use super::rule::{self, EntryType};
use super::{Damage, StoreError};
use crate::fs::{annotate, is_executable, published_file_permissions, walk_sorted};

pub use crate::progress::Progress;

const BUFFER: usize = 256 * 1024;

/// What a non-regular file is, for error messages.
pub(crate) fn describe(meta: &Metadata) -> &'static str {
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_file() {
        "file"
    } else {
        rule::other_kind(file_type)
    }
}

/// Hashes a whole file (BLAKE3, hex) from an open handle.
pub fn hash_file(mut file: &File, path: &Path) -> io::Result<(u64, String)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; BUFFER];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| annotate(e, "read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher.finalize().to_hex().to_string()))
}

/// Copies `src` to the new file `dst` while hashing it, in one pass; `dst` ends read-only.
fn copy_and_hash(src: &Path, dst: &Path, progress: &Progress) -> Result<(bool, u64, String), StoreError> {
    let mut from = fs::File::open(src)?;
    let meta = from.metadata()?;
    let exec = is_executable(&meta);
    let mut to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|e| StoreError::writing(e, dst))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; BUFFER.min(meta.len() as usize + 1).max(4096)];
    let mut size = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(|e| StoreError::writing(e, dst))?;
        size += n as u64;
    }
    // Keep the modification time, as `cp -a` does: tools such as Python compare it with caches.
    if let Ok(modified) = meta.modified() {
        let _ = to.file().set_modified(modified);
    }
    to.file()
        .set_permissions(published_file_permissions(exec))
        .map_err(|e| StoreError::writing(e, dst))?;
    progress.advance(size, 1);
    Ok((exec, size, hasher.finalize().to_hex().to_string()))
}

/// Hashes a file in place and makes it read-only.
fn hash_in_place(path: &Path, progress: &Progress) -> Result<(bool, u64, String), StoreError> {
    let (file, exec, size, digest) = hash_read_only(path, progress)?;
    file.set_permissions(published_file_permissions(exec))
        .map_err(|e| StoreError::writing(e, path))?;
    Ok((exec, size, digest))
}

/// Hashes a file without changing anything about it; returns the open handle too.
fn hash_read_only(path: &Path, progress: &Progress) -> Result<(File, bool, u64, String), StoreError> {
    let file = File::open(path).map_err(|e| annotate(e, "open", path))?;
    let meta = file.metadata().map_err(|e| annotate(e, "inspect", path))?;
    let exec = is_executable(&meta);
    let (size, digest) = hash_file(&file, path)?;
    progress.advance(size, 1);
    Ok((file, exec, size, digest))
}

/// Copies one file into the store.
pub(crate) fn copy_one_file(
    src: &Path,
    dst: &Path,
    progress: &Progress,
) -> Result<ManifestEntry, StoreError> {
    let (exec, size, digest) = copy_and_hash(src, dst, progress)?;
    Ok(ManifestEntry::file(String::new(), exec, size, digest))
}

/// Hashes a single staged file.
pub(crate) fn hash_one_file(path: &Path, progress: &Progress) -> Result<ManifestEntry, StoreError> {
    let (exec, size, digest) = hash_in_place(path, progress)?;
    Ok(ManifestEntry::file(String::new(), exec, size, digest))
}

/// Copies the tree at `src` to the new directory `dst` (files on several threads), returning
/// its manifest entries. Symlinks are copied verbatim, never followed.
pub(crate) fn copy_tree(
    src: &Path,
    dst: &Path,
    progress: &Progress,
) -> Result<Vec<ManifestEntry>, StoreError> {
    fs::create_dir(dst).map_err(|e| StoreError::writing(e, dst))?;
    process_tree(src, Pass::Copy(dst), progress)
}

/// Hashes a staged tree in place, returning its manifest entries.
pub(crate) fn hash_tree(root: &Path, progress: &Progress) -> Result<Vec<ManifestEntry>, StoreError> {
    process_tree(root, Pass::Seal, progress)
}

/// Hashes a tree that is not ours (a user's directory) without changing anything in it,
/// returning its manifest entries.
pub(crate) fn describe_tree(root: &Path, progress: &Progress) -> Result<Vec<ManifestEntry>, StoreError> {
    process_tree(root, Pass::ReadOnly, progress)
}

/// What one pass over a tree does besides hashing.
#[derive(Clone, Copy)]
enum Pass<'a> {
    /// Copies into this new directory.
    Copy(&'a Path),
    /// Makes each file read-only (a staged tree about to be published).
    Seal,
    /// Nothing: the tree is only read.
    ReadOnly,
}

fn process_tree(src: &Path, pass: Pass<'_>, progress: &Progress) -> Result<Vec<ManifestEntry>, StoreError> {
    let dst = match pass {
        Pass::Copy(dst) => Some(dst),
        Pass::Seal | Pass::ReadOnly => None,
    };
    let mut entries = Vec::new();
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for (rel, file_type) in walk_sorted(src)? {
        let from = src.join(&rel);
        // One rule for every tree (docs/DESIGN.md, "What one side writes, the other reads"): checked before
        // anything of this entry is written.
        let target = if file_type.is_symlink() {
            Some(fs::read_link(&from)?)
        } else {
            None
        };
        let entry = rule::entry_type(file_type, target.as_deref().map(Path::as_os_str));
        let rel_str = rule::check(&rel, entry).map_err(|refused| StoreError::Refused {
            root: src.to_path_buf(),
            refused,
        })?;
        match entry {
            EntryType::Dir => {
                if let Some(dst) = dst {
                    let to = dst.join(&rel);
                    fs::create_dir(&to).map_err(|e| StoreError::writing(e, &to))?;
                }
                entries.push(ManifestEntry {
                    path: rel_str,
                    kind: EntryKind::Dir,
                    exec: false,
                    size: 0,
                    digest: None,
                    target: None,
                });
            }
            EntryType::Symlink(target) => {
                if let Some(dst) = dst {
                    // Kept as written, never followed.
                    crate::fs::symlink(Path::new(target), &dst.join(&rel))
                        .map_err(|e| StoreError::writing(e, &dst.join(&rel)))?;
                }
                entries.push(ManifestEntry {
                    path: rel_str,
                    kind: EntryKind::Symlink,
                    exec: false,
                    size: 0,
                    digest: None,
                    // The rule checked that the target is UTF-8.
                    target: Some(target.to_string_lossy().into_owned()),
                });
            }
            EntryType::File => files.push((rel_str, rel)),
            // The rule refused these above.
            EntryType::Other(_) => {}
        }
    }
    let hashed = crate::parallel::map(&files, |(_, rel)| match pass {
        Pass::Copy(dst) => copy_and_hash(&src.join(rel), &dst.join(rel), progress),
        Pass::Seal => hash_in_place(&src.join(rel), progress),
        Pass::ReadOnly => {
            hash_read_only(&src.join(rel), progress).map(|(_, exec, size, digest)| (exec, size, digest))
        }
    })?;
    for ((rel_str, _), (exec, size, digest)) in files.into_iter().zip(hashed) {
        entries.push(ManifestEntry::file(rel_str, exec, size, digest));
    }
    Ok(entries)
}

/// Makes the directories of a staged tree read-only, children before parents (files were made
/// read-only when they were written or hashed).
pub(crate) fn seal_dirs(content: &Path, manifest: &Manifest) -> io::Result<()> {
    if manifest.kind != ArtifactKind::Dir {
        return Ok(());
    }
    let sealed = crate::fs::mode_permissions(0o555);
    for entry in manifest.entries.iter().rev().filter(|e| e.kind == EntryKind::Dir) {
        crate::fs::set_permissions(&content.join(&entry.path), sealed.clone())?;
    }
    crate::fs::set_permissions(content, sealed)
}

/// Compares content on disk with its manifest: missing, extra or changed entries.
pub(crate) fn verify_content(content: &Path, manifest: &Manifest) -> io::Result<Vec<Damage>> {
    let damage = |path: &str, problem: &str| Damage {
        path: path.to_string(),
        problem: problem.to_string(),
    };
    let root_meta = match std::fs::symlink_metadata(content) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![damage("", "content is missing")]),
        Err(e) => return Err(annotate(e, "inspect", content)),
    };
    match manifest.kind {
        ArtifactKind::File => {
            let Some(expected) = manifest.entries.first() else {
                return Ok(vec![damage("", "manifest lists no file")]);
            };
            if !root_meta.is_file() {
                return Ok(vec![damage("", "content is not a regular file")]);
            }
            Ok(check_file(content, "", expected)?.into_iter().collect())
        }
        ArtifactKind::Dir => {
            if !root_meta.is_dir() {
                return Ok(vec![damage("", "content is not a directory")]);
            }
            let mut actual: BTreeMap<String, std::fs::FileType> = BTreeMap::new();
            for (rel, file_type) in walk_sorted(content)? {
                let key = rel.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/");
                actual.insert(key, file_type);
            }
            let mut problems = Vec::new();
            let mut to_hash = Vec::new();
            for expected in &manifest.entries {
                let Some(file_type) = actual.remove(&expected.path) else {
                    problems.push(damage(&expected.path, "missing"));
                    continue;
                };
                let path = content.join(&expected.path);
                match expected.kind {
                    EntryKind::Dir if !file_type.is_dir() => {
                        problems.push(damage(&expected.path, "not a directory"))
                    }
                    EntryKind::Symlink if !file_type.is_symlink() => {
                        problems.push(damage(&expected.path, "not a symlink"))
                    }
                    EntryKind::Symlink => {
                        let target =
                            std::fs::read_link(&path).map_err(|e| annotate(e, "read link", &path))?;
                        if target.to_str() != expected.target.as_deref() {
                            problems.push(damage(&expected.path, "symlink target changed"));
                        }
                    }
                    EntryKind::File if !file_type.is_file() => {
                        problems.push(damage(&expected.path, "not a regular file"))
                    }
                    EntryKind::File => to_hash.push((path, expected)),
                    EntryKind::Dir => {}
                }
            }
            for extra in actual.keys() {
                problems.push(damage(extra, "not in the manifest"));
            }
            let hashed = crate::parallel::map(&to_hash, |(path, expected)| {
                check_file(path, &expected.path, expected)
            })?;
            problems.extend(hashed.into_iter().flatten());
            Ok(problems)
        }
    }
}

fn check_file(path: &Path, rel: &str, expected: &ManifestEntry) -> io::Result<Option<Damage>> {
    let damage = |problem: &str| {
        Some(Damage {
            path: rel.to_string(),
            problem: problem.to_string(),
        })
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(damage("missing")),
        Err(e) => return Err(annotate(e, "open", path)),
    };
    let meta = file.metadata().map_err(|e| annotate(e, "inspect", path))?;
    if is_executable(&meta) != expected.exec {
        return Ok(damage("executable bit changed"));
    }
    if meta.len() != expected.size {
        return Ok(damage("size changed"));
    }
    let (_, digest) = hash_file(&file, path)?;
    if Some(digest.as_str()) != expected.digest.as_deref() {
        return Ok(damage("content changed (digest mismatch)"));
    }
    Ok(None)
}
